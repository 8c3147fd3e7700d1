"""Monitor configuration: pydantic-settings with the env prefix NLPSUITE_MONITOR_ (nested with `__`).

Kafka defaults are the production-safe ones (they suit a real Apache Kafka cluster). The `local()` profile
tunes group timing for the loopback test broker only; never ship it to production (real Kafka rejects
session timeouts under 6000 ms by default).
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from nlpsuite.shared.config import ClientTlsSettings, ConfigError, describe_errors, one_of, secret_from


SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaSettings(BaseModel):
    """How to reach the cluster. Everything kafka-python needs for TLS and SASL comes from here.

    Secrets (the SASL password, the key's password) are SecretStr, given inline or as `*_file` paths (a mounted
    Kubernetes Secret), read when the client arguments are built. Combinations that cannot work are refused
    when the settings are made (ConfigError through `load_monitor_settings`)."""

    bootstrap_servers: str = "localhost:9092"
    client_id: str = "nlpsuite-monitor"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: Path | None = None  # None: the system's trusted CAs
    ssl_certfile: Path | None = None  # client certificate (mutual TLS), with ssl_keyfile
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None  # of an encrypted ssl_keyfile
    ssl_password_file: Path | None = None
    ssl_check_hostname: bool = True
    sasl_mechanism: SaslMechanism | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    sasl_plain_password_file: Path | None = None
    # Group and fetch timing: kafka-python's production defaults.
    session_timeout_ms: int = 45000
    heartbeat_interval_ms: int = 3000
    max_poll_interval_ms: int = 300000
    fetch_max_wait_ms: int = 500
    request_timeout_ms: int = 30000
    producer_linger_ms: int = 5
    producer_acks: Literal["all", "1", "0"] = "all"

    @property
    def confirm_timeout_s(self) -> float:
        """How long a producer waits for the broker's acks of what it sent: a request's timeout plus slack."""
        return self.request_timeout_ms / 1000 + 5

    @model_validator(mode="after")
    def _check_security(self) -> "KafkaSettings":
        one_of(self.ssl_password, self.ssl_password_file, "ssl_password")
        one_of(self.sasl_plain_password, self.sasl_plain_password_file, "sasl_plain_password")
        protocol = self.security_protocol
        tls, sasl = protocol in ("SSL", "SASL_SSL"), protocol.startswith("SASL")
        ssl_set = [n for n in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_password_file")
                   if getattr(self, n) is not None]
        if ssl_set and not tls:
            raise ValueError(f"{', '.join(ssl_set)} set but security_protocol is {protocol} (use SSL or SASL_SSL)")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together (a client certificate needs its key)")
        if (self.ssl_password is not None or self.ssl_password_file is not None) and self.ssl_keyfile is None:
            raise ValueError("ssl_password is the password of ssl_keyfile, which is not set")
        password = self.sasl_plain_password is not None or self.sasl_plain_password_file is not None
        sasl_set = [n for n in ("sasl_mechanism", "sasl_plain_username") if getattr(self, n)]
        sasl_set += ["sasl_plain_password"] if password else []
        if sasl_set and not sasl:
            raise ValueError(f"{', '.join(sasl_set)} set but security_protocol is {protocol} "
                             "(use SASL_SSL, or SASL_PLAINTEXT)")
        if sasl:
            if self.sasl_mechanism is None:
                raise ValueError(f"security_protocol {protocol} needs sasl_mechanism (PLAIN, SCRAM-SHA-256, "
                                 "SCRAM-SHA-512)")
            if not self.sasl_plain_username or not password:
                raise ValueError(f"sasl_mechanism {self.sasl_mechanism} needs sasl_plain_username and "
                                 "sasl_plain_password (or sasl_plain_password_file)")
        return self

    def common(self) -> dict[str, Any]:
        """Connection settings shared by consumers, producers and the admin client. Reads the password files
        and checks the certificate files (ConfigError naming the setting when one is missing)."""
        out: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()],
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            out["ssl_check_hostname"] = self.ssl_check_hostname
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                path = getattr(self, name)
                if path is not None:
                    if not path.is_file():
                        raise ConfigError(f"kafka.{name} {path} does not exist")
                    out[name] = str(path)
            password = secret_from(self.ssl_password, self.ssl_password_file, "kafka.ssl_password")
            if password is not None:
                out["ssl_password"] = password.get_secret_value()
        if self.security_protocol.startswith("SASL"):
            password = secret_from(self.sasl_plain_password, self.sasl_plain_password_file,
                                   "kafka.sasl_plain_password")
            assert password is not None  # _check_security
            out["sasl_mechanism"] = self.sasl_mechanism
            out["sasl_plain_username"] = self.sasl_plain_username
            out["sasl_plain_password"] = password.get_secret_value()
        return out

    def consumer(self, group_id: str | None, **extra: Any) -> dict[str, Any]:
        out = self.common() | {
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "allow_auto_create_topics": False,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_poll_interval_ms": self.max_poll_interval_ms,
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
            # Records of aborted transactions are never scored or counted (Apache Kafka filters them for
            # read_committed readers; the local Tansu broker does not, so tests can only check this setting).
            "isolation_level": "read_committed",
        }
        return out | extra

    def producer(self, **extra: Any) -> dict[str, Any]:
        acks: Any = self.producer_acks if self.producer_acks == "all" else int(self.producer_acks)
        return self.common() | {"acks": acks, "linger_ms": self.producer_linger_ms, "retries": 5,
                                "allow_auto_create_topics": False} | extra

    def local(self) -> "KafkaSettings":
        """Fast group joins and low fetch latency for a loopback test broker only."""
        return self.model_copy(update={"session_timeout_ms": 2000, "heartbeat_interval_ms": 500,
                                       "fetch_max_wait_ms": 20, "request_timeout_ms": 10000,
                                       "max_poll_interval_ms": 60000})


class Topics(BaseModel):
    news: str = "news"
    scored: str = "news.scored"
    alerts: str = "alerts"
    dlq: str = "news.dlq"

    def all(self) -> list[str]:
        return [self.news, self.scored, self.alerts, self.dlq]


class SurgeRule(BaseModel):
    """When a window is a surge. All of: negatives >= min_negatives, negative share >= min_share, and
    negatives / max(baseline, baseline_floor) >= min_ratio, where baseline is the mean negatives per
    window length over the `baseline_windows` window lengths before the window starts."""

    name: str = "negative-surge"
    min_negatives: int = 5
    min_share: float = 0.5
    min_ratio: float = 3.0
    baseline_floor: float = 0.5
    cooldown_s: float = 3600.0  # event time; one alert per key per cooldown


class WindowSettings(BaseModel):
    length_s: int = 1800
    slide_s: int = 300
    allowed_lateness_s: int = 600
    baseline_windows: int = 6
    top_headlines: int = 5

    @model_validator(mode="after")
    def _check(self) -> "WindowSettings":
        if self.length_s <= 0 or self.slide_s <= 0 or self.length_s % self.slide_s:
            raise ValueError("window length must be a positive multiple of the slide")
        if self.allowed_lateness_s < 0 or self.baseline_windows < 0:
            raise ValueError("allowed lateness and baseline windows must not be negative")
        return self


class MonitorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NLPSUITE_MONITOR_", env_nested_delimiter="__", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: Topics = Field(default_factory=Topics)
    group_id: str = "nlpsuite-monitor"  # stage 1 uses this; stage 2 uses f"{group_id}.aggregate"
    sentiment_target: str = "localhost:50051"  # `nlpsuite serve sentiment` default port
    sentiment_tls: ClientTlsSettings | None = None  # None: plaintext; see docs/security.md
    sentiment_token: SecretStr | None = None  # the sentiment service's auth token, if it has one
    sentiment_token_file: Path | None = None
    sentiment_timeout_s: float = 10.0
    # The service runs interactive calls first; a news burst rides in the bulk lane so it never delays a person.
    sentiment_priority: Literal["interactive", "bulk"] = "bulk"
    # OpenTelemetry (the tracing extra): a span per scored batch, trace context read from `news` record headers,
    # sent with the sentiment call and written onto `news.scored` and `alerts` records. OTLP per OTEL_* variables.
    tracing: bool = False
    sentiment_text: Literal["headline", "headline_body"] = "headline"
    retry_initial_s: float = 0.2
    retry_max_s: float = 5.0
    shutdown_grace_s: float = 10.0  # on SIGTERM during an outage: keep retrying this long, then leave uncommitted
    batch_max: int = 256
    align_s: float = 60.0  # event-time skew allowed between news partitions with a backlog (0: off)
    max_inflight: int = 2  # sentiment calls in flight (batches are still committed strictly in order)
    buffer_max: int = 2048  # per news partition: polled records held for the event-time merge
    poll_timeout_ms: int = 1000
    max_message_bytes: int = 64 * 1024
    dlq_max_value_bytes: int = Field(256 * 1024, ge=0, le=512 * 1024, description="bytes of a dead-lettered "
                                     "value kept in its news.dlq record (base64 adds a third); a longer one is kept "
                                     "cut, with its length and SHA-256, so the record fits Kafka's ~1 MB limit")
    max_headline_chars: int = 1000
    max_future_s: float = 86400.0  # published_at more than this after the record's timestamp is dead-lettered
    earliest_published_at: datetime = datetime(1990, 1, 1, tzinfo=timezone.utc)  # before it: dead-lettered
    dedupe_ids: int = 100_000  # per scorer instance (all its partitions): ids kept to catch one reused with new content
    watchlist: Path | None = None  # optional: maps message tickers to canonical company names
    windows: WindowSettings = Field(default_factory=WindowSettings)
    entity_rule: SurgeRule = Field(default_factory=SurgeRule)
    topic_rule: SurgeRule = Field(default_factory=lambda: SurgeRule(name="topic-negative-surge", min_negatives=8,
                                                                     min_share=0.6, min_ratio=4.0))
    watch_topics: bool = True
    metrics_port: int = 0  # 0: no HTTP endpoint
    webhook_url: str | None = None
    webhook_retries: int = 5
    webhook_timeout_s: float = 5.0
    webhook_queue: int = Field(10_000, ge=1)  # alerts waiting to be posted; beyond it they are counted and dropped
    rebuild_max_records: int = 1_000_000  # per partition; bounds how far back state is rebuilt

    @model_validator(mode="after")
    def _token(self) -> "MonitorSettings":
        one_of(self.sentiment_token, self.sentiment_token_file, "sentiment_token")
        return self

    def sentiment_secret(self) -> SecretStr | None:
        """The sentiment service's token (read from sentiment_token_file when that is set)."""
        return secret_from(self.sentiment_token, self.sentiment_token_file, "sentiment_token")


def load_monitor_settings(**overrides: Any) -> MonitorSettings:
    """MonitorSettings from NLPSUITE_MONITOR_* variables (and overrides); ConfigError names the bad fields."""
    try:
        return MonitorSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"invalid monitor configuration (NLPSUITE_MONITOR_* variables):\n"
                          f"{describe_errors(exc)}") from None
