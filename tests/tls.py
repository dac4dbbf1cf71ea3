"""A throwaway certificate authority for TLS tests: CA, server and client certificates.

Made with the ``openssl`` command (present wherever Python's ssl module was built), valid for
127.0.0.1 and a day, in a test's tmp dir.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

P12_PASSWORD = "keystore-pass"  # the server's PKCS#12 keystore (Kafka); not a tested secret


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    server_p12: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(where: Path) -> Certs:
    where.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", "-days", "1", "-subj", "/CN=streamq test CA", cwd=where)  # fmt: skip
    (where / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", f"/CN={name}", cwd=where)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile", "san.ext",
                 cwd=where)  # fmt: skip
    _openssl("pkcs12", "-export", "-in", "server.crt", "-inkey", "server.key", "-out",
             "server.p12", "-name", "kafka", "-passout", f"pass:{P12_PASSWORD}",
             cwd=where)  # fmt: skip
    return Certs(
        ca=where / "ca.crt",
        server_cert=where / "server.crt",
        server_key=where / "server.key",
        server_p12=where / "server.p12",
        client_cert=where / "client.crt",
        client_key=where / "client.key",
    )
