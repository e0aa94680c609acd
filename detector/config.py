"""Process settings, read once from DETECTOR_* environment variables."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from detector.errors import ConfigError
from detector.schemas import Severity


class Settings(BaseSettings):
    """Everything a process needs to know about its surroundings; policy lives in rules.yaml."""

    model_config = SettingsConfigDict(env_prefix="DETECTOR_", frozen=True, extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The URL names one node of a Redis Cluster, or several (`redis://a:7000,b:7000/0`) so that
    # a process can start while one is down; the client learns the others from them.
    redis_cluster: bool = False
    rules: Path = Path("rules.yaml")
    topic_prefix: str = Field(default="", max_length=100)
    consumer_group: str = "llm-spend-detector"
    topic_partitions: int = Field(default=4, ge=1, le=1024)
    data_dir: Path = Path(".detector-data")
    prices_file: Path | None = None  # LiteLLM-format override of the packaged price table

    # Event time: how far in the future an event may claim to be, and how late it may arrive
    # and still update the short windows.
    max_future_skew_s: int = Field(default=300, ge=0)
    allowed_lateness_s: int = Field(default=3600, ge=0)
    dedup_horizon_s: int = Field(default=48 * 3600, ge=60)

    # Hot path batching: at most this many events, or this long, per Redis round trip.
    batch_max_events: int = Field(default=10_000, ge=1, le=100_000)
    batch_max_wait_ms: int = Field(default=200, ge=1, le=10_000)
    batches_in_flight: int = Field(default=2, ge=1, le=8)
    # While a batch is in flight, the next one starts once this many events are collected (so
    # that Python prepares it while Redis works on the other), or when it is full.
    batch_overlap_events: int = Field(default=3000, ge=1, le=100_000)

    slack_webhook_url: SecretStr | None = None
    slack_bot_token: SecretStr | None = None
    slack_channel: str | None = None
    slack_base_url: str | None = None
    # Bot mode only: per-severity channels ("critical=#oncall,warning=#spend"; others go to
    # slack_channel), and where high-severity alerts still unresolved after a delay go.
    slack_channels: str = Field(default="", max_length=2000)
    slack_escalation_channel: str | None = None
    slack_escalation_delay_s: int = Field(default=900, ge=1)
    # One rule firing for this many entities of a tenant within the burst window is posted as
    # one summary message (updated as more arrive) instead of one message each.
    slack_burst_min: int = Field(default=5, ge=2)
    slack_burst_window_s: int = Field(default=60, ge=1)
    # How often the notifier looks for ended decisions (resolved replies) and due escalations.
    slack_scan_interval_s: float = Field(default=2.0, gt=0, le=600)

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65535)
    api_tokens: SecretStr | None = None
    fail_open: bool = True
    # Tenants answered `block` when Redis is unreachable even though fail_open is true.
    fail_closed_tenants: str = Field(default="", max_length=10_000)
    # Lookup API decision cache: entries are dropped on every announced change and at most this
    # old otherwise; 0 turns the cache off.
    api_cache_max_age_s: float = Field(default=10.0, ge=0, le=3600)
    api_cache_max_entries: int = Field(default=500_000, ge=1000)

    # Reports: the plans file of the unit-economics report, and the Slack digests the worker
    # sends once per period (`daily`, `weekly` or both; none unless asked for), this long after
    # the period ends so that late events are in.
    plans_file: Path | None = None
    digests: str = ""
    digest_delay_s: int = Field(default=900, ge=0, le=86_400)
    digest_check_s: float = Field(default=60.0, gt=0, le=3600)

    log_level: str = "INFO"

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for part in value.split(","):
            host, sep, port = part.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError("expected host:port[,host:port...]")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected redis://host:port/db")
        return value

    @field_validator("redis_cluster")
    @classmethod
    def _check_redis_cluster(cls, value: bool, info: ValidationInfo) -> bool:
        url = info.data.get("redis_url")
        if url is None:  # a bad URL has its own message
            return value
        seeds = redis_seed_urls(url)
        if not value:
            if len(seeds) > 1:
                raise ValueError(
                    f"DETECTOR_REDIS_URL={url!r} names several nodes, which only a Redis "
                    "Cluster has: set DETECTOR_REDIS_CLUSTER=true, or name one server"
                )
            return value
        if url.startswith("unix://"):
            raise ValueError(
                f"a Redis Cluster is reached over TCP; DETECTOR_REDIS_URL={url!r} is a unix socket"
            )
        for seed in map(urlsplit, seeds):
            try:
                seed.port  # noqa: B018 (parsing it is the check)
            except ValueError:
                raise ValueError(
                    f"expected host:port for each node of DETECTOR_REDIS_URL={url!r}, "
                    f"got {seed.netloc!r}"
                ) from None
        db = redis_db(url)
        if db != 0:
            raise ValueError(
                f"a Redis Cluster has only database 0; DETECTOR_REDIS_URL={url!r} names "
                f"database {db}"
            )
        return value

    @field_validator("digests")
    @classmethod
    def _check_digests(cls, value: str) -> str:
        kinds = [part.strip() for part in value.split(",") if part.strip()]
        unknown = [kind for kind in kinds if kind not in ("daily", "weekly")]
        if unknown:
            raise ValueError(f"expected daily, weekly or both, comma-separated; got {unknown[0]!r}")
        return ",".join(kinds)

    @field_validator("slack_channels")
    @classmethod
    def _check_slack_channels(cls, value: str) -> str:
        parse_channel_routes(value)
        return value

    @field_validator("slack_base_url")
    @classmethod
    def _check_slack_base_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
        return level

    def fails_closed(self, tenant: str) -> bool:
        """Whether a lookup for `tenant` answers block when Redis cannot be reached.

        >>> Settings(fail_closed_tenants="acme, bank").fails_closed("bank")
        True
        """
        if not self.fail_open:
            return True
        return tenant in {t.strip() for t in self.fail_closed_tenants.split(",") if t.strip()}

    def topic(self, name: str) -> str:
        """Full topic name for one of keys.TOPIC_* (a prefix lets tests isolate themselves)."""
        return f"{self.topic_prefix}{name}"


def redis_seed_urls(url: str) -> list[str]:
    """One URL per node of a URL whose host part lists several, comma-separated.

    >>> redis_seed_urls("redis://:pw@a:7000,b:7001/0?protocol=3")
    ['redis://:pw@a:7000/0?protocol=3', 'redis://:pw@b:7001/0?protocol=3']
    >>> redis_seed_urls("redis://a:7000")
    ['redis://a:7000']
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme == "unix":
        return [url]
    ends = [i for i in (rest.find("/"), rest.find("?")) if i >= 0]
    netloc, tail = rest[: min(ends, default=len(rest))], rest[min(ends, default=len(rest)) :]
    auth, at, hosts = netloc.rpartition("@")
    return [f"{scheme}://{auth}{at}{host.strip()}{tail}" for host in hosts.split(",")]


def redis_db(url: str) -> int | None:
    """The database a redis:// URL names (0 when it names none); None when it is not a number.

    >>> redis_db("redis://10.0.0.5:7000"), redis_db("redis://h:1/3"), redis_db("redis://h:1/x")
    (0, 3, None)
    """
    path = url.split("://", 1)[-1].partition("?")[0].partition("/")[2].strip("/")
    if not path:
        return 0
    return int(path) if path.isdigit() else None


def parse_channel_routes(text: str) -> dict[Severity, str]:
    """`critical=#oncall,warning=#spend` as a map; raises ValueError naming the bad part.

    >>> parse_channel_routes("critical=#oncall, warning=C0123")
    {<Severity.critical: 'critical'>: '#oncall', <Severity.warning: 'warning'>: 'C0123'}
    """
    routes: dict[Severity, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, channel = part.partition("=")
        if not sep or not channel.strip():
            raise ValueError(f"expected severity=channel, got {part!r}")
        try:
            severity = Severity(name.strip())
        except ValueError:
            raise ValueError(
                f"unknown severity {name.strip()!r} (expected info, warning or critical)"
            ) from None
        routes[severity] = channel.strip()
    return routes


def load_settings(**overrides: object) -> Settings:
    """Build Settings from the environment, turning validation errors into one clear line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            value = err.get("input")
            message = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"DETECTOR_{field.upper()}={value!r}: {message}")
        raise ConfigError("bad setting: " + "; ".join(problems)) from exc
