"""The response cache: each successful agent answer under ``(agent_key, request_hash)``
(see :mod:`replay.cache` for what the key means)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import duckdb

from replay.errors import HistoryError
from replay.history.reader import _json_column
from replay.history.worker import _Worker
from shadow.fastjson import dumps
from shadow.model import ShadowDecision

_CACHE_DDL = """
CREATE TABLE IF NOT EXISTS replay_answers (
    agent_key     VARCHAR NOT NULL,   -- see replay.cache: declared version or agent spec
    request_hash  VARCHAR NOT NULL,   -- content hash of the request sent to the agent
    agent_version VARCHAR NOT NULL,   -- the version that answered
    answer        JSON NOT NULL,      -- ShadowDecision.to_json()
    recorded_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (agent_key, request_hash)
)
"""


def encode_answers(
    answers: Sequence[tuple[str, ShadowDecision]],
) -> tuple[list[str], list[str], str]:
    """Hashes, versions and one JSON array of the answers (``ShadowDecision.to_json``, with
    ``usage.cost_source`` when the cost was not reported: an answer with tokens and no cost
    read back is priced again, never taken for a reported cost of 0)."""
    return (
        [h for h, _ in answers],
        [d.agent_version for _, d in answers],
        dumps([_body(d) for _, d in answers]),
    )


def _body(d: ShadowDecision) -> dict[str, Any]:
    body = d.to_json()
    if d.usage.cost_source != "reported":
        body["usage"] = {**d.usage.to_json(), "cost_source": d.usage.cost_source}
    return body


def _answer(body: dict[str, Any]) -> ShadowDecision:
    d = ShadowDecision.from_stored(body)
    source = (body.get("usage") or {}).get("cost_source")
    if source in ("unknown", "priced"):
        d = replace(d, usage=replace(d.usage, cost_source=source))
    return d


def decode_answers(rows: Sequence[tuple[str, str]]) -> dict[str, ShadowDecision]:
    """Inverse of :func:`encode_answers` for rows read back: ``{request_hash: answer}``."""
    bodies = _json_column([body for _, body in rows])
    return {h: _answer(b) for (h, _), b in zip(rows, bodies, strict=True)}


class ResponseCache:
    """Successful agent answers on disk (a DuckDB file; ``":memory:"`` for none).

    ``put`` is one transaction: when it returns the answers survive ``kill -9``. Opening a
    cache held by another replay fails with a clear :class:`HistoryError`."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._worker = _Worker("replay-cache")

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> Self:
        self._worker.start()
        try:
            await self._worker.run(self._open)
        except BaseException:
            await self.close()
            raise
        return self

    def _open(self) -> None:
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            con = duckdb.connect(self.path)
            con.execute("SET TimeZone = 'UTC'")
            con.execute(_CACHE_DDL)
        except (duckdb.Error, OSError) as exc:
            text = str(exc).splitlines()[0]
            hint = " (is another replay using it?)" if "lock" in text.lower() else ""
            raise HistoryError(f"cannot open replay cache {self.path}{hint}: {text}") from None
        self._worker.con = con

    async def close(self) -> None:
        """Idempotent."""
        await self._worker.close()

    @property
    def _con(self) -> duckdb.DuckDBPyConnection:
        if self._worker.con is None:
            raise HistoryError(f"replay cache {self.path} is closed")
        return self._worker.con

    async def get(self, agent_key: str, hashes: Sequence[str]) -> dict[str, ShadowDecision]:
        return decode_answers(await self.get_texts(agent_key, hashes))

    async def get_texts(self, agent_key: str, hashes: Sequence[str]) -> list[tuple[str, str]]:
        """``(request_hash, answer JSON)`` of the cached ones among ``hashes``."""

        def q() -> list[tuple[str, str]]:
            return self._con.execute(
                "SELECT request_hash, CAST(answer AS VARCHAR) FROM replay_answers "
                "WHERE agent_key = ? AND request_hash IN (SELECT unnest(?::VARCHAR[]))",
                [agent_key, list(hashes)],
            ).fetchall()

        return await self._worker.run(q)

    async def put(
        self,
        agent_key: str,
        answers: Sequence[tuple[str, ShadowDecision]],
        *,
        now: datetime,
        replace: bool = True,
    ) -> None:
        """Store answers (one transaction). ``replace=False``: the caller knows none of them
        is cached yet (it looked them up), which spares DuckDB the conflict check."""
        if answers:
            await self.put_texts(agent_key, *encode_answers(answers), now=now, replace=replace)

    async def put_texts(
        self,
        agent_key: str,
        hashes: Sequence[str],
        versions: Sequence[str],
        answers: str,
        *,
        now: datetime,
        replace: bool = True,
    ) -> None:
        """Store answers given as :func:`encode_answers` gives them, in one transaction."""
        verb = "INSERT OR REPLACE" if replace else "INSERT"

        def write() -> None:
            try:
                # The answers travel as one JSON array (one encoder call per batch), split
                # into rows by DuckDB.
                self._con.execute(
                    f"{verb} INTO replay_answers SELECT ?, unnest(?::VARCHAR[]), "
                    "unnest(?::VARCHAR[]), unnest(CAST(? AS JSON[])), ?::TIMESTAMPTZ",
                    [agent_key, list(hashes), list(versions), answers, now],
                )
            except duckdb.Error as exc:
                raise HistoryError(f"writing replay cache {self.path} failed: {exc}") from None

        if hashes:
            await self._worker.run(write)

    async def versions(self, agent_key: str) -> Counter[str]:
        """How many cached answers each observed agent version gave under ``agent_key``."""

        def q() -> Counter[str]:
            rows = self._con.execute(
                "SELECT agent_version, count(*) FROM replay_answers WHERE agent_key = ? GROUP BY 1",
                [agent_key],
            ).fetchall()
            return Counter({str(v): int(n) for v, n in rows})

        return await self._worker.run(q)

    async def count(self) -> int:
        def q() -> int:
            row = self._con.execute("SELECT count(*) FROM replay_answers").fetchone()
            return int(row[0]) if row else 0

        return await self._worker.run(q)
