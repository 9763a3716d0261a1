"""Log lines on stderr for the long-running commands (``shadow run``, ``shadow proxy``,
``shadow demo --serve``), configured once at the entry point with :func:`logging_to_stderr`.

Knobs (shadow.config): ``log_level`` (``SHADOW_LOG_LEVEL``: debug, info, warning, error;
default info) is the lowest level written; ``log_format`` (``SHADOW_LOG_FORMAT``) is ``text``,
one line ``<ts> <LEVEL> <logger>: <message>`` (a traceback follows on the next lines), or
``json``, one object per line with ``ts``, ``level``, ``logger``, ``message`` and, when there is
one, ``exc`` (the traceback text) for log pipelines. ``ts`` is UTC, ISO 8601 with
milliseconds. ``log_access`` (``SHADOW_LOG_ACCESS``) turns on aiohttp's access log (one line
per request, at INFO, so not at warning or error); it is off otherwise.

Libraries (aiohttp, the MCP SDK, httpx) write their warnings and errors; their INFO and
DEBUG lines only at ``debug``. aiokafka writes only at ``debug``: its errors (a broker that
cannot be reached, a lost connection) are the Kafka source's own lines and its readiness,
said once in the sidecar's words, where aiokafka repeats them at every retry. Every line
passes through ``scrub`` (the capability redaction of :func:`shadow.server.redact`) as it is
written, so no handler-level path gets around the redaction filters on the loggers.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["LEVELS", "JsonFormatter", "TextFormatter", "logging_to_stderr"]

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
ACCESS_LOGGER = "aiohttp.access"
OWN_LOGGER = "shadow"
QUIET_LOGGERS = ("aiokafka",)  # translated by the sidecar's own lines (see above)

Scrub = Callable[[str], str]


def _same(text: str) -> str:
    return text


def _timestamp(record: logging.LogRecord) -> str:
    at = datetime.fromtimestamp(record.created, UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def _exc_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    """The traceback (and stack) of ``record``, as :class:`logging.Formatter` writes it."""
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    parts = [p for p in (record.exc_text, record.stack_info) if p]
    return "\n".join(parts) if parts else None


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger>: <message>``, then the traceback if any; ``scrub`` applied."""

    def __init__(self, scrub: Scrub = _same) -> None:
        super().__init__()
        self._scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        exc = _exc_text(self, record)
        return self._scrub(line if exc is None else f"{line}\n{exc}")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, and ``exc`` when
    the record carries a traceback. ``scrub`` is applied to each value (before encoding, so
    it cannot break an escape)."""

    def __init__(self, scrub: Scrub = _same) -> None:
        super().__init__()
        self._scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": self._scrub(record.getMessage()),
        }
        exc = _exc_text(self, record)
        if exc is not None:
            doc["exc"] = self._scrub(exc)
        return json.dumps(doc, ensure_ascii=True)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to ``sys.stderr`` as it is at each line (not as it was when configured), so a
    live display that redirects stderr (rich's progress bar) keeps the lines above it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always sys.stderr


@contextmanager
def logging_to_stderr(
    level: str = "info", fmt: str = "text", *, access: bool = False, scrub: Scrub = _same
) -> Iterator[logging.Handler]:
    """Write log lines of ``level`` and above to stderr in ``fmt`` (``text`` or ``json``)
    while the block runs; everything is as it was afterwards (what a test calling the entry
    point in process relies on)."""
    number = LEVELS[level]
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter(scrub) if fmt == "json" else TextFormatter(scrub))
    root, own, access_log = (
        logging.getLogger(),
        logging.getLogger(OWN_LOGGER),
        logging.getLogger(ACCESS_LOGGER),
    )
    quiet = [logging.getLogger(name) for name in QUIET_LOGGERS]
    saved = [(logger, logger.level) for logger in (root, own, access_log, *quiet)]
    # Libraries speak up from WARNING (or at debug); the access log only when asked for.
    root.setLevel(number if number == logging.DEBUG else max(number, logging.WARNING))
    own.setLevel(number)
    access_log.setLevel(max(number, logging.INFO) if access else logging.CRITICAL + 1)
    for logger in quiet:
        logger.setLevel(number if number == logging.DEBUG else logging.CRITICAL + 1)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for logger, was in saved:
            logger.setLevel(was)
        handler.close()
