"""streamq on a real redis-server: lease-owned partitions, takeover, fencing, restarts.

Each test starts its own redis-server on a free port (AOF with ``appendfsync always`` unless
the point is a Redis that forgets everything), so it may kill and restart it.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

import streamq
from streamq.brokers import connect
from tests.conftest import RedisServer, free_port

from .helpers import (
    Scrape,
    app_env,
    duplicates,
    ledger_app,
    produce_keyed,
    read_ledger,
    redis_group_state,
    start_worker,
    unique,
    wait_until,
)

pytestmark = [pytest.mark.redis, pytest.mark.timeout(240)]

LEASES = {"lease_ttl": 3}  # RELIABILITY.md's test size: 3 s leases, renewed every second


def new_topic(url: str, partitions: int = 4) -> str:
    topic = unique("orders")
    connect(url).admin().create_topic(topic, partitions)
    return topic


def test_sigkill_a_member_and_the_survivor_reclaims_its_entries(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url
    topic = new_topic(url)
    produce_keyed(url, topic, 4000)
    group, ledger = unique("kill"), tmp_path / "ledger"
    spec = ledger_app(extra=LEASES)
    env = app_env(url, topic, group, ledger, HANDLER_SLEEP="0.003")
    victim = start_worker(tmp_path, spec, env)
    survivor = start_worker(tmp_path, spec, env, "--until-idle", "3")
    wait_until(lambda: {victim.pid, survivor.pid} <= {e.pid for e in read_ledger(ledger)}, 60,
               "both members to handle records")  # fmt: skip
    victim.proc.kill()
    victim.proc.wait(10)
    code, err = survivor.finish(180)
    assert code == 0, err
    entries = read_ledger(ledger)
    assert sorted({e.id for e in entries}) == list(range(4000)), "records lost"
    victim_partitions = {e.partition for e in entries if e.pid == victim.pid}
    taken_over = {e.partition for e in entries if e.pid == survivor.pid}
    assert victim_partitions <= taken_over, "the survivor never took over the dead member's work"
    # duplicates only where the victim was killed mid-handler, or handled but not yet acked
    assert set(duplicates(entries)) <= {
        e.id for e in read_ledger(ledger, "S") if e.pid == victim.pid
    }
    assert all(s["pending"] == 0 for s in redis_group_state(url, group, topic, 4))


def test_a_frozen_lease_holder_is_fenced_when_it_wakes(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """SIGSTOP the owner past its lease, let another take over, SIGCONT: the old owner must
    start no handler for records the new owner handles, and its acknowledgements are refused."""
    url = redis_server.url
    topic = new_topic(url, 2)
    produce_keyed(url, topic, 600)
    group, ledger = unique("zombie"), tmp_path / "ledger"
    spec = ledger_app(extra=LEASES)
    env = app_env(url, topic, group, ledger, HANDLER_SLEEP="0.02")
    zombie = start_worker(tmp_path, spec, env)
    wait_until(lambda: len(read_ledger(ledger)) > 30, 60, "the first owner to be busy")
    zombie.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic_ns()
    heir = start_worker(tmp_path, spec, env, "--until-idle", "3")
    wait_until(lambda: any(e.pid == heir.pid for e in read_ledger(ledger, "S")), 60,
               "the new owner to start handling")  # fmt: skip
    woke_at = time.monotonic_ns()
    zombie.send_signal(signal.SIGCONT)
    code, err = heir.finish(180)
    assert code == 0, err
    zombie.send_signal(signal.SIGTERM)
    zcode, zerr = zombie.finish(60)
    starts = read_ledger(ledger, "S")
    assert any(e.pid == zombie.pid and e.mono_ns < frozen_at for e in starts)
    assert "lost" in zerr, "the zombie never noticed it lost its leases"
    by_heir = {e.id for e in read_ledger(ledger) if e.pid == heir.pid}
    zombie_after_wake = {e.id for e in starts if e.pid == zombie.pid and e.mono_ns > woke_at}
    assert not (zombie_after_wake & by_heir), "the zombie started handlers the heir also ran"
    assert sorted({e.id for e in read_ledger(ledger)}) == list(range(600)), "records lost"
    assert zcode == 0, zerr


def _group_snapshot(url: str, group: str, topic: str, partitions: int) -> dict:
    """Per partition: the group's last-delivered ID and its PEL as (entry ID, consumer)."""
    client = redis.Redis.from_url(url)
    try:
        out = {}
        for p in range(partitions):
            key = f"{topic}:{p}"
            info = next(g for g in client.xinfo_groups(key) if g["name"] == group.encode())
            pel = client.xpending_range(key, group, "-", "+", 100_000)
            out[p] = (info["last-delivered-id"],
                      sorted((e["message_id"], e["consumer"]) for e in pel))  # fmt: skip
        return out
    finally:
        client.close()


def test_redis_killed_and_restarted_with_aof(redis_server: RedisServer, tmp_path: Path) -> None:
    """C5: the kill lands while the worker has entries pending. The worker is frozen from the
    snapshot before the kill to the snapshot after the restart, so the two must match exactly
    (AOF with fsync always: no XACK or delivery acknowledged before the kill is lost), and
    between the kill and the restart it runs against the dead server. Records handled twice
    must all have been pending at the kill."""
    from streamq.brokers.redis.entries import id_to_offset

    url = redis_server.url
    topic = new_topic(url)
    produce_keyed(url, topic, 3000)
    group, ledger = unique("aof"), tmp_path / "ledger"
    spec = ledger_app(extra=LEASES)
    env = app_env(url, topic, group, ledger, HANDLER_SLEEP="0.002")
    worker = start_worker(tmp_path, spec, env, "--until-idle", "3")
    wait_until(lambda: len(read_ledger(ledger)) > 300, 60, "records to be handled")
    worker.send_signal(signal.SIGSTOP)
    before = _group_snapshot(url, group, topic, 4)
    redis_server.kill()
    worker.send_signal(signal.SIGCONT)
    time.sleep(2)
    worker.send_signal(signal.SIGSTOP)
    redis_server.start()
    after = _group_snapshot(url, group, topic, 4)
    worker.send_signal(signal.SIGCONT)
    pending = {(p, id_to_offset(i)) for p, (_, pel) in before.items() for i, _ in pel}
    assert pending, "the kill did not land mid-run: nothing was pending"
    assert after == before, "the AOF lost deliveries or acknowledgements"

    code, err = worker.finish(180)
    assert code == 0, err
    assert "redis" in err.lower() and "Traceback" not in err
    entries = read_ledger(ledger)
    assert sorted({e.id for e in entries}) == list(range(3000)), "records lost"
    assert all(s["pending"] == 0 for s in redis_group_state(url, group, topic, 4))
    again = [e for e in entries if e.id in set(duplicates(entries))]
    outside = {(e.partition, e.offset) for e in again} - pending
    assert not outside, f"handled twice though acknowledged before the kill: {sorted(outside)[:5]}"
    print(f"\n{len(pending)} entries pending at the kill, restored; "
          f"{len(duplicates(entries))} handled twice, all of them among those")  # fmt: skip


def test_redis_restarted_empty_recreates_the_group_without_spinning(tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path, durable=False)
    server.start()
    try:
        url = server.url
        topic = new_topic(url)
        produce_keyed(url, topic, 100)
        group, ledger = unique("empty"), tmp_path / "ledger"
        spec = ledger_app(extra=LEASES)
        port = free_port()
        worker = start_worker(tmp_path, spec, app_env(url, topic, group, ledger),
                              "--metrics-port", str(port))  # fmt: skip
        wait_until(lambda: len(read_ledger(ledger)) == 100, 60, "the first records")
        server.kill()
        server.start()  # no persistence: streams, groups and leases are gone
        connect(url).admin().create_topic(topic, 4)
        produce_later = list(range(100, 200))
        with streamq.Producer(url) as producer:
            for i in produce_later:
                producer.send(topic, {"i": i, "k": f"k{i % 50}"}, key=f"k{i % 50}")
        wait_until(lambda: len({e.id for e in read_ledger(ledger)}) == 200, 90,
                   "records produced after the restart")  # fmt: skip
        cpu_before = _cpu_seconds(worker.pid)
        time.sleep(2)
        spent = _cpu_seconds(worker.pid) - cpu_before
        wait_until(lambda: Scrape(port).total("streamq_stream_resets_total") >= 1, 10,
                   "the stream reset metric")  # fmt: skip
        worker.send_signal(signal.SIGTERM)
        code, err = worker.finish(60)
        assert code == 0, err
        assert "consumer group on" in err and "is gone" in err  # detected and reported
        assert err.count("is gone") <= 40, "NOGROUP was hit in a loop"
        assert spent < 1.0, f"{spent:.2f}s of CPU in 2s while idle: a hot loop"  # spin detector
    finally:
        server.kill()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def test_lag_and_pending_per_partition(redis_server: RedisServer) -> None:
    url = redis_server.url
    topic = new_topic(url, 2)
    admin = connect(url).admin()
    group = unique("lag")
    client = redis.Redis.from_url(url)
    for p in range(2):
        client.xgroup_create(f"{topic}:{p}", group, id="0", mkstream=True)
    counts = Counter(m.partition for m in produce_keyed(url, topic, 20))
    client.xreadgroup(group, "c", {f"{topic}:0": ">"}, count=3)
    client.close()
    lag = admin.lag(group, topic)
    tp0, tp1 = streamq.TopicPartition(topic, 0), streamq.TopicPartition(topic, 1)
    assert lag[tp0] == (counts[0] - 3, 3)
    assert lag[tp1] == (counts[1], 0)


def test_pending_entries_trimmed_away_are_reported_not_fatal(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """E7: entries delivered to a member that died, then trimmed before anyone acked them."""
    url = redis_server.url
    topic = new_topic(url, 1)
    group, ledger = unique("trim"), tmp_path / "ledger"
    client = redis.Redis.from_url(url)
    client.xgroup_create(f"{topic}:0", group, id="0", mkstream=True)
    produce_keyed(url, topic, 30)
    client.xreadgroup(group, "dead-member", {f"{topic}:0": ">"}, count=10)  # 10 now pending
    client.xtrim(f"{topic}:0", maxlen=0, approximate=False)  # ...and deleted
    assert client.xpending(f"{topic}:0", group)["pending"] == 10
    produce_keyed(url, topic, 5)
    spec = ledger_app(extra=LEASES)
    port = free_port()
    worker = start_worker(tmp_path, spec, app_env(url, topic, group, ledger),
                          "--metrics-port", str(port))  # fmt: skip
    try:
        wait_until(lambda: len(read_ledger(ledger)) == 5, 60, "the 5 entries left")
        wait_until(lambda: Scrape(port).total("streamq_records_lost_to_trim_total") == 10, 10,
                   "the lost-to-trim metric")  # fmt: skip
    finally:
        worker.send_signal(signal.SIGTERM)
        code, err = worker.finish(60)
    assert code == 0, err
    assert "trimmed from the stream before they were handled" in err
    assert "Traceback" not in err
    assert sorted(e.id for e in read_ledger(ledger)) == list(range(5))  # the later 5
    assert client.xpending(f"{topic}:0", group)["pending"] == 0
    client.close()


@pytest.mark.parametrize("dedup", [True, False], ids=["redis-dedup", "control-no-dedup"])
def test_a_rewound_group_with_redis_dedup_handles_nothing_again(
    redis_server: RedisServer, dedup: bool
) -> None:
    """G1: rewind the group (XGROUP SETID 0) after a full run; with dedup, 0 handler calls."""
    url = redis_server.url
    topic = new_topic(url, 2)
    produce_keyed(url, topic, 300)
    calls: list[int] = []

    def run_once() -> None:
        app = streamq.App(unique("g1-app"), broker=url, poll_timeout=0.05, **LEASES)

        @app.handler(topic, group=group, dedup=url if dedup else None)
        def handle(value: dict) -> None:
            calls.append(value["i"])

        app.run(until_idle=1.0)

    group = unique("g1")
    run_once()
    assert sorted(calls) == list(range(300))
    client = redis.Redis.from_url(url)
    for p in range(2):
        client.xgroup_setid(f"{topic}:{p}", group, "0")
    client.close()
    run_once()
    assert len(calls) == (300 if dedup else 600)


def test_an_evicting_maxmemory_policy_is_warned_about_at_start(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """H1: eviction can delete streams with their groups; the worker says so when it starts."""
    client = redis.Redis.from_url(redis_server.url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
    topic = new_topic(redis_server.url, 2)
    produce_keyed(redis_server.url, topic, 10)
    spec = ledger_app()
    env = app_env(redis_server.url, topic, unique("h1"), tmp_path / "ledger")
    code, err = start_worker(tmp_path, spec, env, "--until-idle", "1").finish(60)
    assert code == 0, err
    assert "maxmemory-policy is allkeys-lru" in err and "set it to noeviction" in err, err
    assert len(read_ledger(tmp_path / "ledger")) == 10  # a warning, not a refusal
    client.config_set("maxmemory-policy", "noeviction")
    code, err = start_worker(tmp_path, spec, env, "--until-idle", "1").finish(60)
    assert code == 0 and "maxmemory-policy" not in err, err


def test_entries_trimmed_before_the_group_read_them_are_reported_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """H2: a trim that outran the group is a loss; it is reported (log and metric), once."""
    url = redis_server.url
    topic = new_topic(url, 1)
    group, ledger = unique("h2"), tmp_path / "ledger"
    client = redis.Redis.from_url(url)
    # as streamq creates its groups: at the start, with a valid read counter
    client.xgroup_create(f"{topic}:0", group, id="0", mkstream=True, entries_read=0)
    produce_keyed(url, topic, 100)
    client.xtrim(f"{topic}:0", maxlen=40, approximate=False)  # 60 never delivered, gone
    assert client.xlen(f"{topic}:0") == 40
    spec = ledger_app(extra=LEASES)
    port = free_port()
    env = app_env(url, topic, group, ledger)
    worker = start_worker(tmp_path, spec, env, "--metrics-port", str(port))
    try:
        wait_until(lambda: len(read_ledger(ledger)) == 40, 60, "the 40 entries left")
        wait_until(lambda: Scrape(port).total("streamq_records_trimmed_unread_total") == 60, 30,
                   "the trimmed-unread metric")  # fmt: skip
    finally:
        worker.send_signal(signal.SIGTERM)
        code, err = worker.finish(60)
    assert code == 0, err
    assert f"60 entries of {topic}[0] (between " in err, err
    assert "before the group read them" in err and "Traceback" not in err

    # Another run: only the new loss is reported (the total is kept in Redis).
    produce_keyed(url, topic, 20)
    client.xtrim(f"{topic}:0", maxlen=10, approximate=False)  # 10 of the 20 new ones unread
    code, err = start_worker(tmp_path, spec, env, "--until-idle", "2").finish(60)
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if "before the group read them" in ln]
    assert len(lines) == 1 and f"10 entries of {topic}[0]" in lines[0], err
    assert len(read_ledger(ledger)) == 50
    client.close()


def test_one_commit_acks_every_partition_and_refuses_only_the_one_it_lost(
    redis_server: RedisServer,
) -> None:
    """A commit acks all its partitions in one pipelined round trip, fenced per partition.

    The scripts are flushed first (a restarted Redis forgets them): the commit must load
    the script again, not fail. Then one partition's lease is taken away: the commit is
    refused for that partition only, and its entries stay pending for the next owner.
    """
    from streamq.brokers.redis.keys import lease_key
    from tests.contract import Member

    url = redis_server.url
    topic = new_topic(url, 3)
    counts = Counter(m.partition for m in produce_keyed(url, topic, 60))
    assert len(counts) == 3
    group = unique("acks")
    member = Member(url, group, topic, **LEASES)
    client = redis.Redis.from_url(url)
    try:
        got = member.poll_until(60)
        assert len(got) == 60
        tps = [streamq.TopicPartition(topic, p) for p in range(3)]
        ends = {tp: max(m.offset for m in got if m.partition == tp.partition) + 1 for tp in tps}
        pending = {p: client.xpending(f"{topic}:{p}", group)["pending"] for p in range(3)}
        assert pending == dict(counts)
        client.script_flush()
        assert client.script_exists(member.backend._ack.sha) == [False]  # the fault happened
        member.backend.commit({tps[0]: ends[tps[0]]}, sync=True)
        assert client.xpending(f"{topic}:0", group)["pending"] == 0
        client.set(lease_key(group, tps[1]), "someone-else")  # partition 1 is lost
        with pytest.raises(streamq.CommitFailed, match=r"no longer owns"):
            member.backend.commit({tps[1]: ends[tps[1]], tps[2]: ends[tps[2]]}, sync=True)
        after = {p: client.xpending(f"{topic}:{p}", group)["pending"] for p in range(3)}
        assert after == {0: 0, 1: counts[1], 2: 0}
    finally:
        client.close()
        member.close()


def test_commits_forget_exactly_the_entries_they_acknowledged(redis_server: RedisServer) -> None:
    """A member keeps each unacknowledged entry's offset and its ID side by side: a
    transaction (exactly once) and a plain commit each acknowledge the entries below their
    position and drop both, so a later commit acks later entries and nothing piles up."""
    from tests.contract import Member

    url = redis_server.url
    topic = new_topic(url, 1)
    produce_keyed(url, topic, 20)
    group = unique("forget")
    member = Member(url, group, topic, **LEASES)
    client = redis.Redis.from_url(url)
    try:
        got = member.poll_until(20)
        assert len(got) == 20
        tp = streamq.TopicPartition(topic, 0)
        own = member.backend._owned[tp]
        assert len(own.delivered) == len(own.ids) == 20
        member.backend.commit_transaction({tp: got[10].offset}, [])
        assert len(own.delivered) == len(own.ids) == 10
        assert client.xpending(f"{topic}:0", group)["pending"] == 10
        pending = client.xpending_range(f"{topic}:0", group, "-", "+", 20)
        assert [p["message_id"] for p in pending] == list(own.ids)  # the same ten
        member.backend.commit({tp: got[15].offset}, sync=True)
        assert len(own.delivered) == len(own.ids) == 5
        assert client.xpending(f"{topic}:0", group)["pending"] == 5
        member.backend.commit({tp: got[-1].offset + 1}, sync=True)
        assert len(own.delivered) == len(own.ids) == 0
        assert client.xpending(f"{topic}:0", group)["pending"] == 0
    finally:
        client.close()
        member.close()


def test_a_join_is_followed_between_lease_renewals(redis_server: RedisServer) -> None:
    """A member sees another join at its next short heartbeat, not at its next renewal.

    With ``lease_ttl=60`` leases are renewed every 20 s; a rebalance that waited for
    renewals took two of those (the first member's to see the join, the second's to take
    what was released). Both beats are checked not to have come: the hand-over happened in
    the short heartbeats alone.
    """
    from tests.contract import Member

    url = redis_server.url
    topic = new_topic(url, 4)
    group = unique("join")
    first = Member(url, group, topic, lease_ttl=60)
    second = None
    try:
        first.wait_owned(4, timeout=10)
        renewal_first = first.backend._next_beat
        second = Member(url, group, topic, lease_ttl=60)
        second.backend.poll_batch(1, 0.1)  # joins; its partitions are still held
        assert second.owned == set() and second.backend._waiting, "nothing was held"
        renewal_second = second.backend._next_beat
        deadline = time.monotonic() + 10
        while len(second.owned) < 2 and time.monotonic() < deadline:
            first.backend.poll_batch(1, 0.05)
            second.backend.poll_batch(1, 0.05)
        assert len(first.revoked) == 2, first.revoked
        assert second.owned == set(first.revoked)
        assert first.owned.isdisjoint(second.owned) and len(first.owned) == 2
        # no lease renewal ran meanwhile: the short heartbeats did it
        assert first.backend._next_beat == renewal_first
        assert second.backend._next_beat == renewal_second
    finally:
        first.close()
        if second is not None:
            second.close()
