"""Serving configuration: pydantic-settings with an `NLPSUITE_` env prefix plus an optional YAML file.

Precedence, highest first: constructor arguments, environment variables (nested with `__`, e.g.
`NLPSUITE_SENTIMENT__PORT=50061`), the YAML file (`--config` or `NLPSUITE_CONFIG`), then the defaults here.
"""
from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

ENV_PREFIX = "NLPSUITE_"
_yaml_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("nlpsuite_yaml_path", default=None)


class ConfigError(ValueError):
    """Configuration that cannot be used; the message says which setting and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSettings(_Strict):
    name: str
    repository: Path = Path("models")
    version: str | None = None  # None: the newest published version
    variant: Literal["int8", "fp16", "fp32"] | None = None  # None: int8 on CPU, fp16 on GPU
    provider: Literal["auto", "tensorrt", "cuda", "cpu"] = Field("auto", description="auto: TensorRT where its "
                                                                 "libraries load, else CUDA, else the CPU")
    device_id: int = Field(0, ge=0, description="the GPU to run on (CUDA device index)")
    engine_cache_dir: Path | None = Field(None, description="writable folder for TensorRT engines and its timing "
                                          "cache, one subfolder per model version (None: $XDG_CACHE_HOME/nlpsuite/"
                                          "tensorrt, else ~/.cache/nlpsuite/tensorrt); never the model repository")
    self_test: bool = Field(True, description="at every load and hot reload, run the version's golden texts on "
                            "the provider it got and refuse a variant that drifts past its bound")
    intra_threads: int = Field(1, ge=0, description="ONNX Runtime threads per batch run (0: runtime default)")
    solo_threads: int | None = Field(None, ge=0, description="ONNX Runtime threads for a batch that runs while no "
                                     "other does (lower latency at light load; CPU only). None: the cores this "
                                     "process may use (affinity and cgroup CPU limit); 0 or <= intra_threads: off")
    reload_interval_s: float = Field(10.0, ge=0, description="poll for a newer published version when version "
                                     "is None, and switch to it without dropping requests (0: never)")
    response_cache: int = Field(0, ge=0, description="results kept for repeated texts (syndicated headlines): an LRU "
                                "of this many entries keyed by model version and text (whitespace runs collapsed), so "
                                "a new version never serves an old one's result (0: off)")

    def engine_cache(self) -> Path:
        if self.engine_cache_dir is not None:
            return self.engine_cache_dir
        root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(root) / "nlpsuite" / "tensorrt"


# Batch limits when not configured. On the CPU a batch's cost per text grows with its padded size (padding, and
# activations that spill out of cache): MiniLM int8 with one thread per batch ran ~64-token texts at 146 texts/s
# one by one and 118 in batches of 32; served at 128 clients, a 512-token budget gave 146-149 texts/s against
# 132-136 with 4096 (~32-token texts: 278-282 against 268; ~128-token texts: 77 against 69-72). A GPU wants
# large batches to be busy: 128 texts of up to 128 tokens (not yet measured on a GPU).
CPU_BATCH_SIZE, CPU_BATCH_TOKENS = 32, 512
GPU_BATCH_SIZE, GPU_BATCH_TOKENS = 128, 16384


class BatchSettings(_Strict):
    workers: int = Field(2, ge=1, description="batches run concurrently (each on its own thread)")
    max_batch_size: int | None = Field(None, ge=1, description=f"most texts per batch (None: {CPU_BATCH_SIZE} on "
                                       f"the CPU, {GPU_BATCH_SIZE} on a GPU)")
    max_batch_tokens: int | None = Field(None, ge=1, description="budget of padded tokens (size x longest) per batch "
                                         f"(None: {CPU_BATCH_TOKENS} on the CPU, where smaller batches run faster "
                                         f"per text; {GPU_BATCH_TOKENS} on a GPU)")
    max_delay_ms: float = Field(0.0, ge=0, description="longest wait for company once a request is queued, when "
                                "a worker is free (0: run at once; under load batches form while workers are busy)")
    queue_capacity: int = Field(1024, ge=1, description="queued texts per priority lane (interactive, bulk); beyond "
                                "this, RESOURCE_EXHAUSTED")
    bulk_share: float = Field(0.1, ge=0, le=1, description="share of the batches the bulk lane gets while both lanes "
                              "wait (interactive work runs first; bulk takes the capacity left, and this share "
                              "so that it is never starved)")
    bulk_max_batch_tokens: int | None = Field(None, ge=1, description="padded-token budget of a bulk batch (None: a "
                                              "quarter of max_batch_tokens). A running batch cannot be interrupted, "
                                              "so this bounds how long an interactive text waits behind bulk work")
    pin_workers: bool = Field(True, description="pin worker thread i to CPU core i when the process owns its cores "
                              "(an affinity mask and no smaller cgroup CPU limit; otherwise never pinned)")

    def limits(self, on_gpu: bool) -> tuple[int, int]:
        """(most texts, most padded tokens) per batch on this device."""
        size = self.max_batch_size or (GPU_BATCH_SIZE if on_gpu else CPU_BATCH_SIZE)
        tokens = self.max_batch_tokens or (GPU_BATCH_TOKENS if on_gpu else CPU_BATCH_TOKENS)
        return size, tokens

    def bulk_tokens(self, on_gpu: bool) -> int:
        # A quarter on the CPU: medium texts in an interactive p99 at 8 clients went from 2.2x its p99 without bulk
        # load to 1.4x (half: 1.9x), while bulk work still ran at 128 texts/s (AVX512-VNNI, benchmarks/priority_lanes.py).
        return self.bulk_max_batch_tokens or max(1, self.limits(on_gpu)[1] // 4)


def read_file(path: Path, what: str) -> bytes:
    """A file named in the settings (a certificate, a key, a mounted Secret), read when it is used: settings
    load where those files are not mounted (CI, a laptop rendering the manifests), the service starts where
    they are. ConfigError names the setting when it is missing."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None


def one_of(value: SecretStr | None, file: Path | None, what: str) -> None:
    if value is not None and file is not None:
        raise ValueError(f"set {what} or {what}_file, not both")
    if value is not None and not value.get_secret_value().strip():
        raise ValueError(f"{what} is empty")


def secret_from(value: SecretStr | None, file: Path | None, what: str) -> SecretStr | None:
    """The secret given inline, or read from `file` (surrounding whitespace stripped); ConfigError if unreadable
    or empty."""
    if file is None:
        return value
    text = read_file(file, f"{what}_file").decode("utf-8", "replace").strip()
    if not text:
        raise ConfigError(f"{what}_file {file} is empty")
    return SecretStr(text)


class TlsSettings(_Strict):
    """Server TLS (PEM files). cert_file and key_file turn TLS on; client_ca_file also requires client
    certificates signed by that CA (mutual TLS). None of them: plaintext. Read at start."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @model_validator(mode="after")
    def _check(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (TLS needs both)")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file (mutual TLS) needs cert_file and key_file")
        return self


class AuthSettings(_Strict):
    """A shared bearer token every call must carry (`authorization: Bearer <token>` metadata); off when
    neither token nor token_file is set. Health checks are always open (probes)."""

    token: SecretStr | None = None
    token_file: Path | None = Field(None, description="file holding the token (read once at start)")
    open_reflection: bool = Field(False, description="let reflection through without the token")

    @model_validator(mode="after")
    def _check(self) -> AuthSettings:
        one_of(self.token, self.token_file, "token")
        return self

    @property
    def enabled(self) -> bool:
        return self.token is not None or self.token_file is not None

    def secret(self) -> SecretStr | None:
        return secret_from(self.token, self.token_file, "auth.token")


class ClientTlsSettings(_Strict):
    """How a client reaches a TLS server: ca_file (None: the system roots), and for mutual TLS a client
    cert_file and key_file; server_name overrides the name checked in the server's certificate."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    @model_validator(mode="after")
    def _check(self) -> ClientTlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (a client certificate needs its key)")
        return self


# Bytes one item adds to a request besides its text's characters: field tags and lengths, a candidate's id and a
# few features. Non-ASCII text takes up to 4 bytes a character, so for it max_message_bytes may bind first.
ITEM_OVERHEAD_BYTES = 256


class ServiceSettings(_Strict):
    @model_validator(mode="before")
    @classmethod
    def _model_overrides_keep_defaults(cls, data: Any) -> Any:
        """A partial model section (e.g. only `NLPSUITE_SENTIMENT__MODEL__REPOSITORY`, or only `repository:` in
        YAML) overrides the section's default model instead of replacing it, so `name` is kept."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for key, field in cls.model_fields.items():
            value = data.get(key)
            if isinstance(value, dict) and field.default_factory is not None:
                default = field.get_default(call_default_factory=True)
                if isinstance(default, (ModelSettings, BatchSettings)):
                    merged[key] = default.model_dump(exclude_unset=True) | value
        return merged

    host: str = "0.0.0.0"
    port: int = Field(50051, ge=0, le=65535)
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus /metrics; None: off")
    health_port: int | None = Field(None, ge=0, le=65535,
                                    description="plaintext port serving only grpc.health.v1, for probes that "
                                                "cannot speak TLS; None: off")
    max_tokens: int = Field(128, ge=8, description="token limit per text, special tokens included")
    reject_overlong: bool = False
    max_items: int = Field(256, ge=1, description="most texts (or candidates) in one request")
    max_text_chars: int = Field(20_000, ge=1)
    max_message_bytes: int = Field(6 * 1024 * 1024, ge=1024, description="largest request; the default fits "
                                   "max_items texts of max_text_chars ASCII characters (non-ASCII characters take up "
                                   "to 4 bytes, so this limit may bind first: INVALID_ARGUMENT naming it)")
    max_concurrent_streams: int = Field(1000, ge=1, description="calls open at once on one client connection "
                                        "(HTTP/2 MAX_CONCURRENT_STREAMS); a client past it gets UNAVAILABLE for the "
                                        "excess. Bounds what one connection can make the server hold")
    grace_s: float = Field(10.0, ge=0, description="time in-flight requests get to finish on shutdown")
    reflection: bool = Field(True, description="serve gRPC reflection (service discovery for grpcurl etc.)")
    tracing: bool = Field(False, description="OpenTelemetry spans per request (tokenize, queue, inference), trace "
                          "context taken from the call's metadata; exported over OTLP as the standard OTEL_* "
                          "variables say. Needs the tracing extra")
    batch: BatchSettings = Field(default_factory=BatchSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)

    def texts_per_request(self) -> tuple[int, str]:
        """Most texts one request can queue for a model, and how that number is made (for error messages)."""
        return self.max_items, f"max_items ({self.max_items})"

    @model_validator(mode="after")
    def _limits_meet(self) -> ServiceSettings:
        """The largest request the limits allow must be answerable on an idle server: otherwise it is refused
        every time, and clients that retry RESOURCE_EXHAUSTED loop forever. The one owner of these rules."""
        texts, made_of = self.texts_per_request()
        if texts > self.batch.queue_capacity:
            raise ValueError(f"{made_of} = {texts} texts in one request, over batch.queue_capacity "
                             f"({self.batch.queue_capacity}): such a request would be refused even by an idle "
                             "server; raise batch.queue_capacity or lower the item limits")
        return self

    def byte_limit_binds(self) -> str | None:
        """Why max_message_bytes refuses requests within the item and character limits, or None. Not an error:
        those requests get INVALID_ARGUMENT naming max_message_bytes, which clients do not retry, and a small
        byte limit can be a deliberate choice. The server logs it at start."""
        texts, made_of = self.texts_per_request()
        largest = texts * (self.max_text_chars + ITEM_OVERHEAD_BYTES)  # ASCII text: a byte per character
        if largest <= self.max_message_bytes:
            return None
        return (f"{made_of} = {texts} texts of max_text_chars ({self.max_text_chars}) make a request of about "
                f"{largest} bytes, over max_message_bytes ({self.max_message_bytes}): such requests get "
                "INVALID_ARGUMENT")


class SentimentSettings(ServiceSettings):
    port: int = Field(50051, ge=0, le=65535)
    model: ModelSettings = Field(default_factory=lambda: ModelSettings(name="sentiment"))
    watchlist: Path | None = None  # None: the shipped examples/watchlist.yaml
    stream_window: int = Field(128, ge=1, description="items of one AnalyzeStream the server holds at once (being "
                               "scored, or answered and not yet taken by the client's HTTP/2 flow control); a client "
                               "that stops reading stops its stream there")


class ChatSettings(ServiceSettings):
    port: int = Field(50052, ge=0, le=65535)
    intent_model: ModelSettings = Field(default_factory=lambda: ModelSettings(name="intent"))
    embedder: ModelSettings = Field(default_factory=lambda: ModelSettings(name="embedder"))
    knowledge_base: Path | None = None  # None: the shipped examples/knowledge_base.yaml
    routing: Path | None = Field(None, description="calibrated routing (`nlpsuite evaluate --task chat --calibrate`); "
                                 "None: chat-routing.json in the intent model's repository, else uncalibrated "
                                 "defaults")
    handoff_intents: list[str] = Field(default_factory=lambda: ["speak_to_human"])
    context_turns: int = Field(5, ge=1)
    context_ttl_s: float = Field(1800.0, gt=0)
    max_conversations: int = Field(10_000, ge=1)
    max_conversation_id_chars: int = Field(128, ge=1)
    context_memory_bytes: int = Field(256 * 1024 * 1024, ge=64 * 1024, description="memory the conversation "
                                      "context may hold; past it the least recently used conversations are dropped. "
                                      "Only each conversation's last message is kept, its first max_tokens x 8 "
                                      "characters (what a follow-up read with it can use)")
    top_k: int = Field(3, ge=1)

    def texts_per_request(self) -> tuple[int, str]:
        # Reply reads a follow-up together with the previous message: two texts.
        return max(self.max_items, 2), f"max(max_items ({self.max_items}), 2 for a follow-up Reply)"


class RecommendSettings(ServiceSettings):
    port: int = Field(50053, ge=0, le=65535)
    embedder: ModelSettings = Field(default_factory=lambda: ModelSettings(name="embedder"))
    ranker: ModelSettings | None = Field(
        default_factory=lambda: ModelSettings(name="recommender"),
        description="weights from `nlpsuite build --task recommend`; None: text match only",
    )
    max_items: int = Field(1000, ge=1)
    max_history: int = Field(500, ge=1)
    max_text_chars: int = Field(2_000, ge=1, description="per item, history item and profile (a text is cut to "
                                "max_tokens anyway: ~2,000 characters of English are ~450 tokens)")
    batch: BatchSettings = Field(default_factory=lambda: BatchSettings(queue_capacity=4096),
                                 description="the queue holds two of the largest requests (1,501 texts each)")
    cache_size: int = Field(100_000, ge=1, description="item embeddings kept (LRU by id and text hash)")

    def texts_per_request(self) -> tuple[int, str]:
        texts = self.max_items + self.max_history + 1
        return texts, f"max_items ({self.max_items}) + max_history ({self.max_history}) + the profile (1)"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    sentiment: SentimentSettings = Field(default_factory=SentimentSettings)
    chat: ChatSettings = Field(default_factory=ChatSettings)
    recommend: RecommendSettings = Field(default_factory=RecommendSettings)

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        used: dict[int, str] = {}
        for name in ("sentiment", "chat", "recommend"):
            section: ServiceSettings = getattr(self, name)
            for kind, port in (("port", section.port), ("metrics_port", section.metrics_port),
                               ("health_port", section.health_port)):
                if port:  # 0 = any free port
                    if port in used:
                        raise ValueError(f"{name}.{kind} {port} is also {used[port]}")
                    used[port] = f"{name}.{kind}"
        return self

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _yaml_path.get()
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)


def describe_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def load_settings(config: Path | str | None = None, **overrides: Any) -> Settings:
    """Settings from env and the YAML file (`config`, else $NLPSUITE_CONFIG); ConfigError names bad fields."""
    path = config or os.environ.get(f"{ENV_PREFIX}CONFIG")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
    token = _yaml_path.set(path)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        source = f" (from {path} and {ENV_PREFIX}* environment variables)" if path else ""
        raise ConfigError(f"invalid configuration{source}:\n{describe_errors(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. YAML syntax errors
        raise ConfigError(f"invalid configuration file {path}: {exc}") from None
    finally:
        _yaml_path.reset(token)
