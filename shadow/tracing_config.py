"""The tracing exporter's settings, read from the standard OpenTelemetry variables.

:meth:`TracingConfig.from_environ` takes the environment the composition root was given
(never ``os.environ`` itself) and answers ``None`` when tracing is off; which variables it
reads are below (and in docs/operating.md, "Tracing"). Tracing is on when
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (used as is) or ``OTEL_EXPORTER_OTLP_ENDPOINT``
(``/v1/traces`` appended) is set, unless ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none``. The variables read, all as the OpenTelemetry
specification defines them (``TRACES_`` ones win over the generic ones):

- ``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL``: ``http/protobuf`` (the default; the only one);
- ``OTEL_EXPORTER_OTLP[_TRACES]_HEADERS``: ``key=value,...``, values percent-decoded;
- ``OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT``: milliseconds per request (10000);
- ``OTEL_EXPORTER_OTLP[_TRACES]_COMPRESSION``: ``gzip`` or ``none`` (the default);
- ``OTEL_EXPORTER_OTLP[_TRACES]_CERTIFICATE``, ``..._CLIENT_CERTIFICATE``, ``..._CLIENT_KEY``;
- ``OTEL_SERVICE_NAME`` (default ``shadow-sidecar``), ``OTEL_RESOURCE_ATTRIBUTES``;
- ``OTEL_TRACES_SAMPLER`` (``always_on`` default, ``always_off``, ``traceidratio``,
  ``parentbased_*`` of those, which act the same here) and ``OTEL_TRACES_SAMPLER_ARG``;
- ``OTEL_BSP_MAX_QUEUE_SIZE`` (65536: above the specification's 2048, since the pipeline
  makes a span per case for a whole store batch at once), ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``
  (512), ``OTEL_BSP_SCHEDULE_DELAY`` (5000 ms), ``OTEL_BSP_EXPORT_TIMEOUT`` (30000 ms: one
  export with its retries).

A value out of range is a :class:`~shadow.errors.ConfigError` naming the variable (a header's
value is never repeated: it may be a credential).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from shadow.errors import ConfigError
from shadow.otlp import AttrValue

__all__ = ["DEFAULT_SERVICE_NAME", "TracingConfig"]

DEFAULT_SERVICE_NAME = "shadow-sidecar"


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """The exporter's settings, from the ``OTEL_*`` variables (:meth:`from_environ`)."""

    endpoint: str
    headers: Mapping[str, str]
    timeout: float  # seconds per request
    gzip: bool
    service_name: str
    resource: Mapping[str, AttrValue]
    ratio: float  # the share of cases traced
    max_queue: int
    batch: int
    delay: float  # seconds
    export_timeout: float  # seconds, one export with its retries
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> TracingConfig | None:
        """The configuration, or ``None`` when tracing is off (module docstring)."""
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return None
        exporters = {e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",")}
        exporters.discard("")
        if exporters == {"none"}:
            return None
        if exporters - {"otlp"}:
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER={env['OTEL_TRACES_EXPORTER']!r}: this sidecar exports "
                "traces over OTLP only ('otlp', or 'none' for no traces)"
            )
        endpoint = _endpoint(env)
        if endpoint is None:
            return None

        def pick(name: str) -> tuple[str, str] | None:
            for var in (f"OTEL_EXPORTER_OTLP_TRACES_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
                value = env.get(var, "").strip()
                if value:
                    return var, value
            return None

        protocol = pick("PROTOCOL")
        if protocol is not None and protocol[1] != "http/protobuf":
            raise ConfigError(
                f"{protocol[0]}={protocol[1]!r}: this sidecar sends OTLP over HTTP with "
                "protobuf only ('http/protobuf'); point it at the backend's OTLP/HTTP port "
                "(4318, or Phoenix's HTTP port)"
            )
        compression = pick("COMPRESSION")
        if compression is not None and compression[1] not in ("gzip", "none"):
            raise ConfigError(f"{compression[0]}={compression[1]!r}: expected gzip or none")
        timeout = pick("TIMEOUT")
        files = {k: pick(k) for k in ("CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY")}
        for found in files.values():
            if found is not None and not Path(found[1]).is_file():
                raise ConfigError(f"{found[0]}: no such file {found[1]!r}")
        if (files["CLIENT_CERTIFICATE"] is None) != (files["CLIENT_KEY"] is None):
            raise ConfigError(
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY "
                "(or their TRACES_ forms) go together"
            )
        resource = _pairs(env, "OTEL_RESOURCE_ATTRIBUTES")
        service = env.get("OTEL_SERVICE_NAME", "").strip() or resource.get("service.name", "")
        service = service or DEFAULT_SERVICE_NAME
        max_queue = _number(env, "OTEL_BSP_MAX_QUEUE_SIZE", 65536, 1, 10_000_000)
        batch = _number(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, 1, 100_000)
        if batch > max_queue:
            raise ConfigError(
                f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE ({batch}) must not exceed "
                f"OTEL_BSP_MAX_QUEUE_SIZE ({max_queue})"
            )
        headers = pick("HEADERS")
        return cls(
            endpoint=endpoint,
            headers=_pairs(env, headers[0]) if headers is not None else {},
            timeout=(_number(env, timeout[0], 10_000, 1, 3_600_000) if timeout else 10_000) / 1000,
            gzip=compression is not None and compression[1] == "gzip",
            service_name=service,
            resource={**resource, "service.name": service},
            ratio=_ratio(env),
            max_queue=max_queue,
            batch=batch,
            delay=_number(env, "OTEL_BSP_SCHEDULE_DELAY", 5000, 1, 3_600_000) / 1000,
            export_timeout=_number(env, "OTEL_BSP_EXPORT_TIMEOUT", 30_000, 1, 3_600_000) / 1000,
            ca_file=files["CERTIFICATE"][1] if files["CERTIFICATE"] else None,
            cert_file=files["CLIENT_CERTIFICATE"][1] if files["CLIENT_CERTIFICATE"] else None,
            key_file=files["CLIENT_KEY"][1] if files["CLIENT_KEY"] else None,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.ca_file is None and self.cert_file is None:
            return None
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file is not None:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"OTLP TLS files: {exc}") from None
        return context


def _endpoint(env: Mapping[str, str]) -> str | None:
    var = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    url = env.get(var, "").strip()
    if not url:
        var = "OTEL_EXPORTER_OTLP_ENDPOINT"
        base = env.get(var, "").strip()
        if not base:
            return None
        url = base.rstrip("/") + "/v1/traces"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError as exc:
        raise ConfigError(f"{var}: not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{var}={url!r}: expected http(s)://HOST[:PORT][/PATH]")
    return url


def _pairs(env: Mapping[str, str], var: str) -> dict[str, str]:
    """``key=value,key2=value2`` (values percent-decoded), as the specification's
    ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_EXPORTER_OTLP_HEADERS`` are written."""
    out: dict[str, str] = {}
    for i, item in enumerate(env.get(var, "").split(",")):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{var}: entry {i + 1} is not key=value")
        out[unquote(key.strip())] = unquote(value.strip())
    return out


def _number(env: Mapping[str, str], var: str, default: int, low: int, high: int) -> int:
    text = env.get(var, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ConfigError(f"{var}={text!r}: expected a whole number from {low} to {high}")
    return value


def _ratio(env: Mapping[str, str]) -> float:
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "always_on"
    base = name.removeprefix("parentbased_")
    if base == "always_on":
        return 1.0
    if base == "always_off":
        return 0.0
    if base != "traceidratio":
        raise ConfigError(
            f"OTEL_TRACES_SAMPLER={name!r}: expected always_on, always_off, traceidratio "
            "or their parentbased_ forms"
        )
    arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip() or "1.0"
    try:
        ratio = float(arg)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG={arg!r}: expected a ratio from 0 to 1")
    return ratio
