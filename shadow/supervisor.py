"""Every background task of one sidecar, started through one owner that sees it die.

A component asks for a :class:`TaskGroup` (:meth:`Supervisor.group`) and spawns its loops in
it; the group stops them (idempotent, never re-raising what a task raised), and the
supervisor watches every one of them:

- a task that raises is logged **once**, with its traceback (``background task <name>
  failed ...``), counted in ``shadow_task_failures_total{task}``, and reported by
  :meth:`Supervisor.not_ready` (so ``/readyz`` answers 503 naming the task and the cause)
  while it is down;
- ``restart=True`` (loops that keep their work in the store, so a fresh start loses nothing):
  it is started again after a backoff (``base`` seconds, doubled for each failure in a row up
  to ``ceiling``; a run that lasted longer than ``ceiling`` starts the count again), and is
  ready again when it restarts;
- ``restart=False``: a task that cannot safely start again; its failure is fatal: the
  supervisor stays not ready, and :meth:`Supervisor.wait_fatal` returns, on which ``shadow
  run`` shuts down and exits 1.

A task that returns (a file source that read its file) is done and never restarted.

A loop that must not lose the batch it holds (the decision writer, the joiner, expiry, the
gateway's row writer and approval expiry, the mirror consumer) catches its own error and
retries the batch; it reports it with :meth:`TaskGroup.retrying` (the same line, count and
readiness as a failed task) and :meth:`TaskGroup.recovered` once a round succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from aiohttp import web

__all__ = ["SUPERVISOR", "Supervisor", "TaskGroup"]

log = logging.getLogger("shadow.supervisor")

Run = Callable[[], Coroutine[Any, Any, None]]


class FailureCounter(Protocol):
    def task_failure(self, task: str) -> None: ...


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text if len(text) <= 300 else text[:300] + "..."
    return f"{type(exc).__name__}: {text}"


class Supervisor:
    """See the module docstring. ``counter`` counts failures (the sidecar's Metrics)."""

    def __init__(
        self,
        counter: FailureCounter | None = None,
        *,
        base: float = 0.5,
        ceiling: float = 30.0,
    ) -> None:
        self._counter = counter
        self._base = base
        self._ceiling = ceiling
        self._down: dict[str, str] = {}  # task name -> why it is not running
        self._fatal: str | None = None
        self._fatal_event = asyncio.Event()

    def group(self, owner: str) -> TaskGroup:
        """A group of tasks one component owns (and stops)."""
        return TaskGroup(self, owner)

    def not_ready(self) -> str | None:
        """Why the sidecar is not ready because of its background work, or ``None``."""
        if self._fatal is not None:
            return self._fatal
        if not self._down:
            return None
        return "; ".join(self._down[name] for name in sorted(self._down))

    @property
    def fatal(self) -> str | None:
        """Why a task that cannot restart failed (then the process must exit), or ``None``."""
        return self._fatal

    async def wait_fatal(self) -> str:
        await self._fatal_event.wait()
        assert self._fatal is not None
        return self._fatal

    async def _supervise(self, task: str, name: str, run: Run, restart: bool) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            started = loop.time()
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                why = _one_line(exc)
                if self._counter is not None:
                    self._counter.task_failure(task)
                if not restart:
                    self._fatal = f"background task {name} failed and cannot restart: {why}"
                    log.error("%s; the sidecar stops", self._fatal, exc_info=exc)
                    self._fatal_event.set()
                    return
                if loop.time() - started > self._ceiling:
                    failures = 0
                delay = min(self._base * 2**failures, self._ceiling)
                failures += 1
                self._down[name] = f"background task {name} failed ({why}); restarting"
                log.error(
                    "background task %s failed; restarting in %.1f s: %s",
                    name,
                    delay,
                    why,
                    exc_info=exc,
                )
            try:
                await asyncio.sleep(delay)
            finally:
                self._down.pop(name, None)

    def retrying(
        self, task: str, name: str, exc: Exception, retry_in: float, note: str = ""
    ) -> None:
        """A loop that keeps its work and retries it by itself (a failed batch stays queued)
        hit ``exc``: seen as a failed task is (one ERROR line with its traceback, counted,
        not ready naming it) until :meth:`recovered`; it is not restarted."""
        why = _one_line(exc)
        if self._counter is not None:
            self._counter.task_failure(task)
        self._down[name] = f"background task {name} failed ({why}); retrying"
        log.error(
            "background task %s failed; retrying in %.1f s: %s%s",
            name,
            retry_in,
            why,
            f"; {note}" if note else "",
            exc_info=exc,
        )

    def recovered(self, name: str) -> None:
        """The loop that :meth:`retrying` reported did its work again."""
        self._down.pop(name, None)


SUPERVISOR = web.AppKey("supervisor", Supervisor)
"""The sidecar's supervisor on its application (set when its resources start)."""


class TaskGroup:
    """The tasks one component started through the supervisor."""

    def __init__(self, supervisor: Supervisor, owner: str) -> None:
        self._supervisor = supervisor
        self.owner = owner
        self._tasks: list[asyncio.Task[None]] = []

    def spawn(self, task: str, run: Run, *, name: str | None = None, restart: bool = True) -> None:
        """Run ``run()`` under supervision. ``task`` is the metric's label (a small fixed
        vocabulary); ``name`` tells instances apart in logs and readiness (default: task)."""
        shown = name or task
        self._tasks.append(
            asyncio.get_running_loop().create_task(
                self._supervisor._supervise(task, shown, run, restart), name=f"shadow-{shown}"
            )
        )

    def retrying(
        self,
        task: str,
        exc: Exception,
        *,
        retry_in: float,
        name: str | None = None,
        note: str = "",
    ) -> None:
        """Report that the loop ``task`` (``name``) failed and retries by itself (``note``:
        what became of the batch, when not kept); see :meth:`Supervisor.retrying`."""
        self._supervisor.retrying(task, name or task, exc, retry_in, note)

    def recovered(self, task: str, *, name: str | None = None) -> None:
        """The loop reported by :meth:`retrying` works again."""
        self._supervisor.recovered(name or task)

    async def stop(self) -> None:
        """Cancel and await every task of the group; idempotent, never raises what a task
        raised (the supervisor logged it)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
