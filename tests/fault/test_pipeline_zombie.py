"""Issue 18: a zombie producer cannot commit its outputs, on both brokers (exactly once).

The pipeline app (tests/apps/pipeline.py) runs in one worker that commits every 2 s, so it
holds outputs of inputs it handled. It is frozen (SIGSTOP) with such outputs held
(asserted: handled, and invisible to a reader), past its session (Kafka: the 6 s of
``FAST_GROUP``, or the broker's under KIP-848) or lease (Redis: ``lease_ttl`` 3 s). A second
worker takes over and publishes the outputs of the zombie's held inputs itself (asserted).
Then the zombie wakes (SIGCONT, asserted by the line it logs on finding its partitions or
lease gone, or its transaction refused) and has time for the commit it was due: Kafka's
coordinator must refuse its transaction (KIP-447, the stale group metadata), Redis's commit
script its lease token. Every output topic must still hold every order exactly once.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.integration.helpers import KIP848, app_spec, start_worker, wait_until

from .observer import observe
from .test_pipeline_exactly_once import PARTITIONS, STAGES, Chain, check_chain

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]

# what a woken zombie logs when it finds it was fenced, whichever way it learns it first
FENCED = ("lost", "transaction aborted", "fenced", "is gone", "no longer owns")
HOLDING = 5  # orders handled and not published when the zombie freezes, at least


def test_a_zombie_producer_cannot_commit_its_outputs(broker, tmp_path: Path) -> None:
    chain = Chain.create(broker, tmp_path, "eos-zombie")
    expected = chain.produce(600)
    timeout = 6.0 if broker.kind == "kafka" else 3.0  # session.timeout.ms / lease_ttl
    zombie_spec = app_spec("pipeline", extra={"max_poll_records": 50, "commit_interval": 2})
    spec = app_spec("pipeline", extra={"max_poll_records": 50})
    env = chain.env("exactly_once", HANDLER_SLEEP="0.02")
    with observe(broker, chain.topics["orders"], chain.group, PARTITIONS) as observer:
        zombie = start_worker(tmp_path, zombie_spec, env)
        wait_until(lambda: len(chain.visible("invoices")) >= 50, 60, "the first commits")
        tries = 0
        while True:  # freeze it while it holds several outputs: thaw it and retry if not
            tries += 1
            zombie.send_signal(signal.SIGSTOP)
            frozen_at = time.monotonic()
            time.sleep(0.2)  # a ledger line in the middle of os.write shows up in full
            held = chain.unpublished(zombie.pid)
            if len(held["orders"]) >= HOLDING or tries == 20:
                break
            zombie.send_signal(signal.SIGCONT)
            time.sleep(0.3)
        assert len(held["orders"]) >= HOLDING, f"the zombie never held {HOLDING} outputs"

        heir = start_worker(tmp_path, spec, env)
        nxt = dict(zip(STAGES, (*STAGES[1:], "sent"), strict=True))
        wait_until(lambda: all(held[s] <= chain.visible(nxt[s]) for s in STAGES), 90,
                   "the heir to publish the outputs of the zombie's held inputs")  # fmt: skip
        frozen_for = time.monotonic() - frozen_at
        assert frozen_for > timeout, "the heir took over before the zombie's session ended"

        zombie.send_signal(signal.SIGCONT)
        wait_until(lambda: any(line in zombie.output() for line in FENCED), 30,
                   "the woken zombie to find it was fenced")  # fmt: skip
        time.sleep(3)  # past its commit interval: the commit it was due has been tried
        wait_until(lambda: expected <= chain.visible("sent"), 120, "the chain to drain")
        for worker in (zombie, heir):
            worker.send_signal(signal.SIGTERM)
        zcode, zout = zombie.finish(60)
        code, out = heir.finish(60)
        assert code == 0, out[-3000:]
        assert "Traceback" not in zout, zout[-3000:]

    redone = {s: held[s] & chain.handled(s, heir.pid) for s in STAGES}
    assert redone["orders"], "the heir did not handle the zombie's held orders"
    # the zombie's running handler spans the freeze, while the heir owns its partition
    dupes = check_chain(chain, expected, observer.samples, overlap_ok={zombie.pid})
    told = [line for line in FENCED if line in zout]
    sizes = ({s: len(h) for s, h in held.items()}, {s: len(d) for s, d in dupes.items()})
    print(f"\n{broker.kind}{' KIP-848' if KIP848 else ''}: frozen {frozen_for:.1f}s (try "
          f"{tries}) holding {sizes[0]} unpublished; redone {sizes[1]}; the zombie logged "
          f"{told}, exit {zcode}")  # fmt: skip
