"""Worker settings: keyword arguments to ``App``, else ``STREAMQ_*`` environment variables.

Precedence is pydantic-settings' own: ``App(..., key=value)`` beats the environment, and
``streamq run --broker`` beats both. Every problem is reported at once as a ``ConfigError``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import credentials
from .errors import ConfigError

__all__ = ["Settings", "load_settings"]


class Settings(BaseSettings):
    """Tuning for one worker process; the handler decorator keeps the cross-broker semantics."""

    model_config = SettingsConfigDict(env_prefix="STREAMQ_", extra="forbid", frozen=True)

    broker: str = "memory://default"
    """Broker URL: memory://NAME[?partitions=P], kafka://host:port[,...], redis://host:port/db."""

    poll_timeout: float = Field(0.1, gt=0, le=10)
    """Seconds one poll waits for records; bounds how late completions are noticed."""

    max_poll_records: int = Field(500, ge=1)
    """Records fetched per poll, across partitions."""

    commit_interval: float = Field(1.0, gt=0)
    """Seconds between steady-state (asynchronous) commits."""

    guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    """What handlers that produce (``streamq.Out``) promise. At least once: an input is
    committed only after all its outputs are acknowledged; a crash may produce them again.
    Exactly once: outputs, DLQ records and input offsets are committed together, once per
    commit (a Kafka transaction; one fenced script on Redis), and nothing of an input that
    was not committed is ever visible (to Kafka readers with read_committed)."""

    commit_every: int = Field(10_000, ge=1)
    """Commit early once this many records completed since the last commit. A caught-up
    Redis member commits after 1,000 at most: each acknowledged entry costs Redis and the poll
    thread time, and one commit per interval of all of them delayed every record read
    meanwhile (``Backend.commit_records_cap``)."""

    max_in_flight: int = Field(50_000, ge=1)
    """Per partition: fetched but unfinished records before the partition is paused (and
    resumed at half). Pausing makes librdkafka drop its prefetched records for the partition
    and fetch them again on resume: at 10,000, a fast drain spent a third of its time
    re-fetching (``streamq bench``, Kafka; librdkafka#5343). The byte caps bound memory
    either way."""

    max_in_flight_bytes: int = Field(16 << 20, ge=1)
    """Per partition: fetched but unfinished payload bytes before the partition is paused."""

    worker_max_in_flight: int = Field(100_000, ge=1)
    """Per worker: unfinished records before every partition is paused."""

    worker_max_in_flight_bytes: int = Field(64 << 20, ge=1)
    """Per worker: unfinished payload bytes before every partition is paused."""

    shutdown_timeout: float = Field(30.0, gt=0)
    """Seconds a graceful stop waits for running handlers before giving up on them."""

    revoke_timeout: float = Field(5.0, gt=0)
    """Seconds a revoke waits for the revoked partitions' handlers before dropping them."""

    poll_ttl: float = Field(60.0, gt=0)
    """Liveness (``/healthz``) fails when a worker's poll loop has not turned for this long."""

    consuming_ttl: float = Field(300.0, gt=0)
    """Liveness fails when a partition with work has not advanced for this long: a handler
    hangs. Keep it above your slowest handler plus its retry backoff."""

    tracing: bool = False
    """OpenTelemetry spans per handler call, with ``traceparent`` propagated from
    ``Producer.send`` through the handler to the DLQ (``streamq.tracing``; needs the
    ``otel`` extra)."""

    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where a group with no committed offset starts. Earliest: nothing is skipped."""

    key_lanes: int = Field(256, ge=1, le=4096)
    """Lanes per partition for ``ordering="key"`` handlers: keys are hashed onto them, so this
    bounds how many records of one partition run at once (and how often two keys share a
    lane and wait for each other)."""

    threads: int = Field(32, ge=1, le=1024)
    """Threads of the worker's pool for ``executor="threads"`` handlers."""

    processes: int | None = Field(None, ge=1, le=256)
    """Processes of the worker's pool for ``executor="processes"`` handlers; default one per
    CPU."""

    dlq_suffix: str = Field(".dlq", min_length=1)
    """``dlq=True`` dead-letters to ``<topic><dlq_suffix>``."""

    delay_topic: str = Field("streamq.delays", min_length=1)
    """Where delayed records wait (``Producer.send(delay=)``, ``Out(delay=)``, ``retry=
    "later"``); every worker joins the group of the same name once the topic exists, and its
    members move each record to its topic when due. Apps that share a broker may share it."""

    delay_partitions: int = Field(4, ge=1, le=1024)
    """Partitions of the delay topic when streamq creates it: how many members share it."""

    move_delays: bool = True
    """Whether this app's workers move delayed records (join the delay topic's group once
    it exists). Off: some other app's workers must."""

    traceback_limit: int = Field(8192, ge=256)
    """Bytes of traceback kept in a DLQ header, so the DLQ record still fits."""

    broker_timeout: float = Field(30.0, gt=0)
    """Seconds a starting worker (or a CLI command) retries an unreachable broker, then exits."""

    kafka: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """librdkafka settings passed through to every client (SASL, SSL, timeouts, ...).

    From the environment as JSON: ``STREAMQ_KAFKA='{"security.protocol": "SASL_SSL"}'``.
    Settings that would break commit-after-processing are refused.
    """

    instance_id: str | None = None
    """Static membership (``group.instance.id``): a restart within the session timeout keeps
    the assignment without a rebalance. With ``--workers N`` each worker appends its index."""

    group_protocol: Literal["classic", "consumer"] = "classic"
    """Kafka group protocol; ``consumer`` opts in to KIP-848 (broker must support it)."""

    lease_ttl: float = Field(10.0, ge=1.0)
    """Redis: seconds a partition lease lives unless renewed (every third of it). A member
    that stops renewing stops its partitions at once; a dead one's move after this long."""

    visibility_timeout: float = Field(30.0, ge=0.5)
    """Redis share groups: seconds a record taken by a member stays its own unacknowledged;
    then another member may claim it (it died, or its handler ran longer: a duplicate). On
    Kafka the broker's ``group.share.record.lock.duration.ms`` plays this part."""

    redis_maxlen: int | None = Field(None, ge=1)
    """Redis: trim each partition stream to about this many entries on produce (``MAXLEN ~``).
    Risky: trimming can delete entries still pending, which are then reported as lost."""

    dedup_max_keys: int = Field(100_000, ge=1)
    """``dedup="memory"``: keys remembered per handler (least recently used go first)."""

    dedup_ttl: float = Field(7 * 86400.0, gt=0)
    """``dedup="redis://..."``: seconds a key is remembered."""

    crash_limit: int = Field(2, ge=0)
    """A record being handled alone when this many workers died goes to the DLQ as
    ``WorkerLost`` (``streamq.crashes``); 0 turns the crash counter off."""

    crash_store: str | None = None
    """Redis URL of the crash counter. Default: the broker when it is Redis, else the first
    ``dedup="redis://..."`` store of the group; with neither, crashes are not counted."""

    redis_password: SecretStr | None = None
    """Password for every Redis connection whose URL carries none (broker, dedup store, crash
    counter), so the secret need not sit in a URL: ``STREAMQ_REDIS_PASSWORD``, or the file
    ``streamq_redis_password`` under ``STREAMQ_SECRETS_DIR``. An ACL user goes in the URL
    (``redis://alice@host:6379``)."""

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if self.worker_max_in_flight < self.max_in_flight:
            raise ValueError("worker_max_in_flight must be >= max_in_flight")
        if self.crash_store is not None and not self.crash_store.startswith(
            ("redis://", "rediss://")
        ):
            raise ValueError("crash_store must be a redis:// or rediss:// URL")
        credentials.remember_all([self.broker, self.crash_store], self.kafka)
        if self.redis_password is not None:
            credentials.remember(self.redis_password.get_secret_value())
        return self

    @property
    def redis_secret(self) -> str | None:
        """The ``redis_password`` in clear, for the one call that opens a connection."""
        return None if self.redis_password is None else self.redis_password.get_secret_value()

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name in ("broker", "crash_store") and isinstance(value, str):
                value = credentials.redact_url(value)
            elif name == "kafka":
                value = credentials.redact_mapping(value)
            yield name, value


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning pydantic's errors into one ConfigError naming every key."""
    where = credentials.secrets_dir()
    if where is not None:
        overrides.setdefault("_secrets_dir", where)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = ".".join(str(p) for p in err["loc"]) or "settings"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown setting"
            problems.append(f"{loc}: {msg}")
        raise ConfigError(problems) from None
