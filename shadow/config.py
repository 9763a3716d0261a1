"""Settings: built once at the entry point, passed down as one object.

Precedence, highest first: command-line flags (passed as keyword arguments), environment
variables ``SHADOW_<OPTION>`` (``SHADOW_DB``, ``SHADOW_AGENT``, ``SHADOW_SOURCE``...), an
optional YAML settings file (``--settings``/``SHADOW_SETTINGS``), then the defaults named
here. List options accept JSON (``["file:a.jsonl"]``) or a comma-separated string in the
environment.

Every duration is in seconds, finite (``inf`` and ``nan`` are refused) and at most the
maximum named here (``MAX_*``); a value out of bounds is refused at start-up, naming the
setting.

Nothing below the entry point reads ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from shadow.errors import ConfigError

__all__ = [
    "DEFAULT_BODY_TIMEOUT_S",
    "DEFAULT_DB",
    "DEFAULT_DEAD_LETTER_RAW_PREFIX",
    "DEFAULT_HEADER_TIMEOUT_S",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "MAX_JOIN_TTL_S",
    "MAX_SESSION_TTL_S",
    "MIN_GATEWAY_SECRET_CHARS",
    "ClientSettings",
    "Settings",
    "load_client_settings",
    "load_settings",
]

DEFAULT_DB = "shadow.duckdb"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8750
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_RECORDS = 10_000
DEFAULT_HEADER_TIMEOUT_S = 75.0
"""Seconds for a complete request head; longer than the 60 s for which proxies such as nginx
keep idle upstream connections, since the same timer closes idle keep-alive connections."""
DEFAULT_BODY_TIMEOUT_S = 60.0
"""Seconds for a whole ingest body: 10 MiB (the default ``max_body_bytes``) at 175 KB/s."""
DEFAULT_JOIN_TTL_S = 7 * 24 * 3600.0
DEFAULT_KAFKA_MAX_MESSAGE_BYTES = 1_048_576
DEFAULT_DEAD_LETTER_RAW_PREFIX = 256
DEFAULT_MIRROR_QUEUE = 10_000
DEFAULT_MIRROR_QUEUE_BYTES = 64 * 1024 * 1024
DEFAULT_PROXY_LISTEN = "127.0.0.1:8760"

HOUR = 3600.0
DAY = 24 * HOUR
MAX_JOIN_TTL_S = 30 * DAY
"""A human outcome later than a month is not joined; a longer TTL only grows the store."""
MAX_SESSION_TTL_S = DAY
"""Tools URLs and held writes are credentials and pending work: a day at most."""
MAX_TIMEOUT_S = HOUR
"""Any single wait on a connection, an agent or an upstream."""
MIN_GATEWAY_SECRET_CHARS = 16
LogLevel = Literal["debug", "info", "warning", "error"]
_S = TypeVar("_S", bound=BaseSettings)


class Settings(BaseSettings):
    """Every knob of ``shadow run`` (and the embedded ``shadow demo``)."""

    model_config = SettingsConfigDict(
        env_prefix="SHADOW_",
        extra="forbid",
        validate_default=True,
        frozen=True,
        allow_inf_nan=False,
    )

    config: Path | None = Field(None, description="policy YAML (required for run)")
    settings: Path | None = Field(None, description="optional YAML file with these settings")
    db: str = Field(DEFAULT_DB, description="DuckDB file (':memory:' for throwaway runs)")
    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    agent: str | None = Field(None, description="agent URL or module:callable")
    source: Annotated[list[str], NoDecode] = Field(default_factory=list)
    admin_token: SecretStr | None = Field(
        None, description="bearer token for API writes (simple mode: one admin credential)"
    )
    tokens_file: Path | None = Field(
        None,
        description="YAML file of named credentials and their roles (shadow.roles); with "
        "it, reads need a viewer and the audit actor is the credential's name",
    )
    metrics_open: bool = Field(
        False, description="serve /metrics without a credential even with a tokens file"
    )

    log_level: LogLevel = Field(
        "info", description="lowest level of the log lines written to stderr (shadow.logs)"
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text: '<ts> <LEVEL> <logger>: <message>'; json: one object per line "
        "(ts, level, logger, message, exc)",
    )
    log_access: bool = Field(
        False, description="also log one line per HTTP request (aiohttp's access log, redacted)"
    )

    max_body_bytes: int = Field(
        DEFAULT_MAX_BODY_BYTES, ge=1024, description="largest body, as sent and decompressed"
    )
    max_records: int = Field(DEFAULT_MAX_RECORDS, ge=1)
    header_timeout: float = Field(
        DEFAULT_HEADER_TIMEOUT_S,
        gt=0,
        le=MAX_TIMEOUT_S,
        description="seconds a connection may take to send a complete request line and "
        "headers, from connecting or from its previous answer; a slower one is disconnected, "
        "and an idle keep-alive connection closes after the same time",
    )
    body_timeout: float = Field(
        DEFAULT_BODY_TIMEOUT_S,
        gt=0,
        le=MAX_TIMEOUT_S,
        description="seconds an ingest body may take to arrive in full (408 beyond)",
    )

    public_url: str | None = Field(
        None,
        description="base URL agents reach this sidecar at, for tools URLs: http(s)://HOST"
        "[:PORT][/PATH], no query or fragment (default: the address it listens on)",
    )
    trace_url: str | None = Field(
        None,
        description="a link to a case's trace in the tracing backend, with {trace_id} where "
        "its id goes (Phoenix, Grafana Tempo, Langfuse...): shown in GET /v1/cases/... and "
        "the replay report; tracing itself is configured by the OTEL_* variables",
    )
    gateway_secret: SecretStr | None = Field(
        None,
        description="HMAC key of tools URL capabilities, at least "
        f"{MIN_GATEWAY_SECRET_CHARS} characters; share it between replicas so a "
        "capability survives a restart (default: a random key per process)",
    )
    gateway_session_ttl: float = Field(
        900.0, gt=0, le=MAX_SESSION_TTL_S, description="seconds a tools URL works (1 day at most)"
    )
    gateway_approval_wait: float = Field(
        30.0,
        ge=0,
        le=MAX_TIMEOUT_S,
        description="seconds a held call waits for a decision before answering pending (1 h at "
        "most; a wait past gateway_approval_timeout ends with the write's expiry)",
    )
    gateway_approval_timeout: float = Field(
        3600.0,
        gt=0,
        le=MAX_SESSION_TTL_S,
        description="seconds a held write waits for approval before it expires (1 day at most)",
    )
    gateway_upstream_timeout: float = Field(
        30.0, gt=0, le=MAX_TIMEOUT_S, description="seconds per upstream call"
    )
    gateway_class_ttl: float = Field(
        1.0,
        ge=0,
        le=MAX_TIMEOUT_S,
        description="seconds an upstream's tool list is reused: the catalog every session "
        "lists, and the readOnlyHint of an upstream with trust_read_only_hint (0: listed "
        "again at every use)",
    )
    gateway_max_result_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="largest upstream tool result (JSON bytes) passed to an agent or stored; "
        "a larger one is an error answer",
    )
    agent_timeout: float = Field(10.0, gt=0, le=MAX_TIMEOUT_S)
    agent_concurrency: int = Field(8, ge=1, le=1024)
    agent_retries: int = Field(2, ge=0, le=10)
    agent_backoff: float = Field(0.2, ge=0, le=60.0)
    agent_version: str = Field("unknown", description="version for errors before any answer")
    breaker_failures: int = Field(5, ge=1)
    breaker_reset: float = Field(30.0, gt=0, le=MAX_TIMEOUT_S)

    join_ttl: float = Field(
        DEFAULT_JOIN_TTL_S,
        gt=0,
        le=MAX_JOIN_TTL_S,
        description="seconds a join stays open (30 days at most)",
    )
    expire_interval: float = Field(
        60.0, gt=0, le=DAY, description="seconds between expiry (and retention) passes"
    )
    retention: float = Field(
        0.0,
        ge=0,
        description="seconds closed cases (event, outcomes, decisions) and dead letters are "
        "kept; longer than join_ttl; 0 keeps everything (comparisons are always kept)",
    )
    batch_size: int = Field(2000, ge=1, le=100_000)
    dead_letter_raw_prefix: int | None = Field(
        None,
        ge=0,
        description="characters kept of a dead-lettered record that cannot be parsed (not "
        "UTF-8, not one JSON object, overlong), in the store and on the dead-letter topic; 0 "
        "keeps none; unset: 0 when the policy redacts any field, else "
        f"{DEFAULT_DEAD_LETTER_RAW_PREFIX}",
    )

    # Ingest credentials (shadow.ingest_auth; separate from the admin token).
    ingest_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="tokens that may write events, outcomes and mirrored requests (comma-"
        "separated in the environment); none: ingest needs no token",
    )
    ingest_signature_secret: SecretStr | None = Field(
        None,
        description="HMAC-SHA256 key every ingest request must be signed with (its method, "
        "path, query, rule-read headers and body; docs/mirroring.md)",
    )
    ingest_signature_secret_file: Path | None = Field(
        None, description="file holding that key (wins over ingest_signature_secret)"
    )
    ingest_signature_header: str = Field(
        "X-Shadow-Signature", min_length=1, description="header carrying sha256=<hex>"
    )

    # Mirroring (docs/mirroring.md): the mirror target, its listener and the proxy.
    mirror_port: int | None = Field(
        None, ge=0, le=65535, description="extra listener where every path is the host's path"
    )
    mirror_host: str | None = Field(None, description="its address (default: host)")
    mirror_queue: int = Field(
        DEFAULT_MIRROR_QUEUE, ge=1, description="mirrored requests waiting to be stored, at most"
    )
    mirror_queue_bytes: int = Field(
        DEFAULT_MIRROR_QUEUE_BYTES, ge=1024, description="their bodies' bytes, at most"
    )
    proxy_upstream: str | None = Field(
        None, description="run the mirroring proxy in front of this URL (http://HOST:PORT)"
    )
    proxy_listen: str = Field(DEFAULT_PROXY_LISTEN, description="the proxy's HOST:PORT")
    proxy_connect_timeout: float = Field(
        5.0, gt=0, le=MAX_TIMEOUT_S, description="seconds to reach the upstream"
    )
    proxy_read_timeout: float = Field(
        300.0,
        gt=0,
        le=MAX_TIMEOUT_S,
        description="seconds the upstream may be silent while answering",
    )

    # Kafka (kafka:// sources; see docs/kafka.md). Broker, topics and group are in the URL.
    kafka_client_id: str = Field("shadow-sidecar", min_length=1)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle for SSL/SASL_SSL")
    kafka_ssl_certfile: Path | None = Field(None, description="client certificate (mTLS)")
    kafka_ssl_keyfile: Path | None = Field(None, description="client key (mTLS)")
    kafka_start: Literal["earliest", "latest"] = Field(
        "earliest", description="where a group with no committed offset starts"
    )
    kafka_dead_letter_topic: str | None = Field(None, description="poison copies (+ reason)")
    kafka_comparisons_topic: str | None = Field(None, description="one record per comparison")
    kafka_autonomy_topic: str | None = Field(None, description="compacted; key = task type")
    kafka_max_message_bytes: int = Field(DEFAULT_KAFKA_MAX_MESSAGE_BYTES, ge=1024)
    kafka_pause_backlog: int = Field(
        5_000, ge=1, description="pause partitions at this many stored events awaiting the agent"
    )
    kafka_resume_backlog: int = Field(1_000, ge=0, description="resume at or below this many")
    kafka_role: Literal["standalone", "replica", "promoter"] = Field(
        "standalone",
        description="standalone: one sidecar owns its ladder; replica: publish comparisons, "
        "never promote; promoter: also fold every replica's comparisons into the ladder",
    )
    kafka_health_interval: float = Field(
        1.0, gt=0, le=300.0, description="seconds between broker probes"
    )
    kafka_commit_interval: float = Field(
        1.0,
        ge=0,
        le=60.0,
        description="seconds between offset commits while records flow (0: after every "
        "batch); revocation and shutdown always commit",
    )
    kafka_session_timeout: float = Field(
        10.0, ge=1.0, le=300.0, description="seconds before a silent group member is dropped"
    )
    kafka_shutdown_timeout: float = Field(
        5.0,
        gt=0,
        le=60.0,
        description="seconds a shutdown waits for the broker to acknowledge what is still "
        "being sent, then for each Kafka client to stop; unacknowledged records stay in "
        "the outboxes (and uncommitted offsets are read again) at the next start",
    )
    kafka_group_instance_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="static group membership: a restart with the same id takes back its "
        "partitions at once (even after a crash), but a member that stops for good keeps "
        "them until kafka_session_timeout; unset: leave the group on shutdown",
    )

    @field_validator("retention")
    @classmethod
    def _retention_outlives_joins(cls, value: float, info: ValidationInfo) -> float:
        ttl = info.data.get("join_ttl")
        if value and ttl is not None and value <= ttl:
            raise ValueError(
                f"retention ({value:g} s) must be longer than join_ttl ({ttl:g} s), or 0 to "
                "keep everything: a case is purged only after its joins had their full TTL"
            )
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @field_validator("trace_url")
    @classmethod
    def _trace_template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "{trace_id}" not in value:
            raise ValueError(
                f"{value[:100]!r}: a link template needs {{trace_id}} where the trace id goes, "
                "e.g. http://phoenix:6006/projects/shadow/traces/{trace_id}"
            )
        _http_url(value.replace("{trace_id}", "0").split("?")[0].split("#")[0])
        return value

    @field_validator("gateway_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_GATEWAY_SECRET_CHARS:
            raise ValueError(
                f"too short: at least {MIN_GATEWAY_SECRET_CHARS} characters (a capability is "
                "only as hard to forge as this key is to guess); e.g. openssl rand -hex 32"
            )
        return value

    @field_validator("proxy_upstream")
    @classmethod
    def _upstream_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r}: expected http://HOST:PORT or https://HOST:PORT")
        return value.rstrip("/") if value is not None else None

    @field_validator("proxy_listen")
    @classmethod
    def _listen_is_host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r}: expected HOST:PORT, e.g. 0.0.0.0:8760")
        return value

    @field_validator("source", "ingest_tokens", mode="before")
    @classmethod
    def _split_sources(cls, value: Any, info: ValidationInfo) -> Any:
        given = value
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                value = json.loads(text)
            else:
                value = [s.strip() for s in text.split(",") if s.strip()]
        if info.field_name == "ingest_tokens":
            _check_tokens(given, value)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _settings_file(init_settings, env_settings)
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)


def _http_url(value: str) -> str:
    """``value`` as a base URL: http or https, a host, no query or fragment; without its
    trailing ``/``."""
    shown = value if len(value) <= 100 else value[:100] + "…"
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError as exc:
        raise ValueError(f"{shown!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{shown!r}: expected http://HOST[:PORT][/PATH] or https://...")
    if parts.query or parts.fragment or value.rstrip().endswith(("?", "#")):
        raise ValueError(f"{shown!r}: a base URL has no query (?) or fragment (#)")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{shown!r}: a base URL has no user or password")
    return value.strip().rstrip("/")


class ClientSettings(BaseSettings):
    """What the commands that talk to a running sidecar (``status``, ``autonomy``,
    ``approvals``) read from the environment when ``--url`` is not given."""

    model_config = SettingsConfigDict(env_prefix="SHADOW_", extra="ignore", frozen=True)

    url: str | None = Field(None, description="a running sidecar's API (default: 127.0.0.1)")
    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="its port when url is unset")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @property
    def base_url(self) -> str:
        return self.url or f"http://127.0.0.1:{self.port}"


def _check_tokens(given: Any, tokens: Any) -> None:
    """An ingest token list that is set but holds no token (``SHADOW_INGEST_TOKENS=""`` or
    ``" , "``), or holds an empty one, would leave ingest open without a word: refused."""
    if not isinstance(tokens, list):
        return
    values = [t.get_secret_value() if isinstance(t, SecretStr) else t for t in tokens]
    if isinstance(given, str) and not values:
        raise ValueError(
            "set but holds no token; list tokens (comma-separated) or unset it to leave ingest open"
        )
    if any(isinstance(v, str) and not v.strip() for v in values):
        raise ValueError("holds an empty token; remove it")


def _settings_file(*sources: PydanticBaseSettingsSource) -> Path | None:
    for source in sources:
        value = source().get("settings")
        if value:
            path = Path(value)
            if not path.is_file():
                raise ConfigError(f"settings file {path} does not exist")
            return path
    return None


def load_settings(**flags: Any) -> Settings:
    """Settings from flags (``None`` means "not given"), environment and YAML.

    Raises :class:`ConfigError` with one line per problem, naming the option."""
    given = {k: v for k, v in flags.items() if v is not None}
    return _load(Settings, given)


def load_client_settings() -> ClientSettings:
    """:class:`ClientSettings` from the environment; :class:`ConfigError` names the setting."""
    return _load(ClientSettings, {})


def _load(cls: type[_S], given: dict[str, Any]) -> _S:
    try:
        return cls(**given)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            lines.append(f"{where} (SHADOW_{where.upper()}): {err['msg']}")
        raise ConfigError("; ".join(lines)) from None
    except ValueError as exc:  # a malformed JSON list in the environment
        raise ConfigError(str(exc)) from None
