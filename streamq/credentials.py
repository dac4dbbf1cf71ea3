"""Credentials: where streamq takes them from, and how it keeps them out of everything it prints.

A password reaches streamq in a broker or store URL (``redis://user:secret@host``), in the
librdkafka passthrough (``sasl.password``, ``ssl.key.password``), or from the environment
(``STREAMQ_REDIS_PASSWORD``, ``STREAMQ_KAFKA``, files under ``STREAMQ_SECRETS_DIR``). Every
output streamq produces (log lines, errors, CLI messages, DLQ headers, ``repr``) goes through
this module on its way out:

- ``redact_url`` and ``redact_mapping`` hide the secret parts of a URL or a settings mapping
  where streamq formats one itself;
- ``scrub`` is the safety net for text streamq did not compose (a client library's error, a
  handler's exception message, a traceback): it hides URL passwords and secret query
  parameters by shape, and every secret this process was given, by value.

So a secret is ``remember``-ed wherever it enters (URL parsing, settings), and never has to be
recognised by shape alone. Nothing here runs per record: only error paths and log lines pay.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

__all__ = [
    "MASK",
    "Scrub",
    "redact_mapping",
    "redact_url",
    "redis_client",
    "remember",
    "scrub",
]

MASK = "***"

# Setting and query-parameter names whose values are secrets: librdkafka's sasl.password,
# ssl.key.password, ssl.key.pem, sasl.oauthbearer.client.secret, ssl.keystore.password, and the
# usual spellings elsewhere. Matching too much costs a masked harmless value; too little, a leak.
_SECRET_NAME = re.compile(r"pass(word|wd)?|secret|token|credential|jaas|pem$|api.?key", re.I)

# scheme://user:password@host -> scheme://user:***@host, even inside a longer text.
_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s'\"]*:)[^@\s'\"/]*@", re.I)
# ?password=... / &sasl.password=... inside a text.
_QUERY = re.compile(r"([?&;][\w.-]*(?:pass(?:word|wd)?|secret|token)[\w.-]*=)[^&\s'\"]*", re.I)

# Shorter values would mask ordinary words in every line; such passwords are still masked
# wherever they sit in a URL or under a secret-looking name, by shape.
_MIN_REMEMBERED = 4

_known: set[str] = set()
_lock = threading.Lock()


def remember(*values: object) -> None:
    """Note secrets this process holds, so ``scrub`` masks them wherever they turn up."""
    for value in values:
        if isinstance(value, str) and len(value) >= _MIN_REMEMBERED:
            with _lock:
                _known.add(value)
                quoted = value.replace("%", "%25").replace("@", "%40").replace(":", "%3A")
                if quoted != value:
                    _known.add(quoted)  # as it appears in a URL


def remember_url(url: str) -> None:
    """Note the password in ``url`` and any secret query parameters."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return
    if password:
        remember(password, unquote(password))
    remember(*(v for k, v in parse_qsl(parts.query) if _SECRET_NAME.search(k)))


def remember_mapping(options: Mapping[str, Any]) -> None:
    """Note the values of secret-looking keys in a settings mapping."""
    remember(*(str(v) for k, v in options.items() if _SECRET_NAME.search(str(k))))


def redact_url(url: str) -> str:
    """``url`` with its password and secret query parameters replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return scrub(url)
    netloc = parts.netloc
    if password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_NAME.search(k) for k, _ in pairs):
            masked = [(k, MASK if _SECRET_NAME.search(k) else v) for k, v in pairs]
            query = urlencode(masked, safe="*")
    return scrub(urlunsplit(parts._replace(netloc=netloc, query=query)))


def redact_mapping(options: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``options`` with the values of secret-looking keys replaced by ``***``."""
    return {k: MASK if _SECRET_NAME.search(str(k)) else v for k, v in options.items()}


def scrub(text: str) -> str:
    """``text`` with URL passwords, secret query parameters and remembered secrets masked."""
    if "://" in text:
        text = _USERINFO.sub(rf"\1{MASK}@", text)
    if "=" in text:
        text = _QUERY.sub(rf"\1{MASK}", text)
    if _known:
        with _lock:
            known = sorted(_known, key=len, reverse=True)  # a secret containing another
        for secret in known:
            if secret in text:
                text = text.replace(secret, MASK)
    return text


LINE_LIMIT = 16384  # characters of one log line's message (tracebacks are apart)


class Scrub(logging.Filter):
    """Masks secrets in a log line, its arguments and its traceback before any handler sees it.

    Attached to every streamq logger (so it works when streamq is embedded) and to the handler
    the CLI installs (so client libraries' lines are covered too). Since it renders the line
    anyway, it also cuts one longer than ``LINE_LIMIT``: a handler's exception text is logged
    on every retry, and a 300 KB one would flood the log at each attempt.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_streamq_scrubbed", False):
            return True
        message = record.getMessage()
        clean = scrub(message)
        if len(clean) > LINE_LIMIT:
            cut = len(clean) - LINE_LIMIT
            clean = f"{clean[:LINE_LIMIT]}...[{cut} characters cut]"
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = scrub(_FORMATTER.formatException(record.exc_info))
        record._streamq_scrubbed = True
        return True


_FORMATTER = logging.Formatter()


def redis_client(url: str, password: str | None = None, **options: Any) -> Any:
    """A redis-py client for ``url``; ``password`` applies when the URL carries none.

    ``password`` comes from the ``redis_password`` setting (``STREAMQ_REDIS_PASSWORD`` or a
    file under ``STREAMQ_SECRETS_DIR``), so no secret has to sit in a URL, a process list or a
    shell history.
    """
    import redis

    remember_url(url)
    if password is not None and not urlsplit(url).password:
        remember(password)
        options["password"] = password
    return redis.Redis.from_url(url, **options)


def secrets_dir() -> Path | None:
    """The directory of secret files (one per setting, named ``streamq_<setting>``), if set."""
    where = os.environ.get("STREAMQ_SECRETS_DIR")
    return Path(where) if where else None


def remember_all(urls: Iterable[str | None], options: Mapping[str, Any]) -> None:
    """Note every secret in a set of URLs and a passthrough mapping."""
    for url in urls:
        if url:
            remember_url(url)
    remember_mapping(options)
