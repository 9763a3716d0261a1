"""The one thread each DuckDB-backed object of replay runs its calls on (never the event
loop)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import duckdb

from replay.errors import HistoryError

P = ParamSpec("P")
T = TypeVar("T")


class _Worker:
    """One DuckDB connection on one thread; ``run`` hops there from the event loop."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self.con: duckdb.DuckDBPyConnection | None = None

    def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._executor is None:
            raise HistoryError(f"{self._name} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_con)
        finally:
            executor.shutdown(wait=True)

    def _close_con(self) -> None:
        con, self.con = self.con, None
        if con is not None:
            con.close()
