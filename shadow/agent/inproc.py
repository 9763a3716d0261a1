"""The in-process transport: a ``module:callable`` agent (sync or async), with its request
and answer copied so neither side can mutate the other's data."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import orjson

from shadow.agent.base import _check_timeout, _kind, describe
from shadow.errors import AgentError, ConfigError
from shadow.fastjson import STRICT


class CallableAgent:
    """An in-process agent named ``package.module:callable`` (dotted attributes allowed).

    It receives a fresh JSON copy of the request dict and returns the answer dict, which is
    copied through JSON too (so it must be JSON-serialisable, and neither side can mutate
    the other's data). Async callables are awaited; sync ones run in a worker thread
    (``asyncio.to_thread``). ``timeout`` applies to both; a sync agent that overruns cannot be
    interrupted, so its thread runs on until it returns, but the runner stops waiting.
    :meth:`AgentRunner.decide_batch` runs the same steps (:meth:`fresh_copies`,
    :meth:`invoke_async` / :meth:`invoke_sync`, :meth:`answers`) a batch at a time.
    """

    def __init__(self, spec: str, *, timeout: float) -> None:
        self.spec = spec
        self._fn = _resolve(spec)
        self._is_async = inspect.iscoroutinefunction(self._fn) or inspect.iscoroutinefunction(
            type(self._fn).__call__  # an instance with an async __call__
        )
        self._timeout = _check_timeout(timeout)
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True

    @property
    def is_async(self) -> bool:
        return self._is_async

    async def call(self, request: Mapping[str, Any]) -> Mapping[str, Any]:
        fresh = self.fresh_copies([request])[0]
        if isinstance(fresh, AgentError):
            raise fresh
        return await self.invoke(fresh)

    def fresh_copies(self, requests: Sequence[Mapping[str, Any]]) -> list[Any]:
        """A fresh JSON copy of each request (one JSON round trip for the whole list), or the
        :class:`AgentError` saying why that request is not JSON."""
        if self._closed:
            raise AgentError("agent is closed")
        dicts = [dict(r) for r in requests]
        copies: list[Any] | None = _fast_copy(dicts)
        if copies is not None:
            return copies
        try:
            copies = json.loads(_REQUEST_JSON.encode(dicts))
        except (TypeError, ValueError):
            copies = []
            for r in requests:  # find which ones are not JSON
                try:
                    copies.append(json.loads(_REQUEST_JSON.encode(dict(r))))
                except (TypeError, ValueError) as exc:
                    copies.append(AgentError(f"request is not JSON: {exc}"))
        return copies

    async def invoke(self, fresh: dict[str, Any]) -> Mapping[str, Any]:
        """Call the agent with a request it may keep or mutate (a fresh copy)."""
        deadline = asyncio.timeout(self._timeout)
        try:
            async with deadline:
                if self._is_async:
                    result = await self._fn(fresh)
                else:
                    result = await asyncio.to_thread(self._fn, fresh)
                    if inspect.isawaitable(result):
                        result = await result
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                raise AgentError(f"timeout after {self._timeout} s") from None
            raise _raised(exc) from None
        return self.answer(result)

    async def invoke_async(self, fresh: dict[str, Any]) -> object:
        """Await an async agent under the timeout; what it returned, unchecked.

        The coroutine is stepped once right away: an agent that answers without waiting on
        anything (nothing a timeout could interrupt) needs no timer. One that waits runs on
        under a deadline counted from the start of the call."""
        start = asyncio.get_running_loop().time()
        coro = self._fn(fresh)
        try:
            first = coro.send(None)
        except StopIteration as done:
            return done.value
        except Exception as exc:
            raise _raised(exc) from None
        deadline = asyncio.timeout_at(start + self._timeout)
        try:
            async with deadline:
                return await _Resumed(coro, first)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                raise AgentError(f"timeout after {self._timeout} s") from None
            raise _raised(exc) from None

    def answers(self, results: Sequence[object]) -> list[Any]:
        """:meth:`answer` for many results with one JSON round trip: a checked copy of each
        dict, the :class:`AgentError` saying why not, or ``None`` for ``None``, an
        :class:`AgentError` (passed through) or an awaitable (see :meth:`finish`)."""
        out: list[Any] = [None] * len(results)
        dicts: list[int] = []
        maps: list[dict[str, Any]] = []
        for i, r in enumerate(results):
            if r is None or inspect.isawaitable(r):
                continue
            if isinstance(r, AgentError):
                out[i] = r
            elif not isinstance(r, Mapping):
                out[i] = AgentError(f"agent returned {_kind(r)}, expected a dict")
            else:
                dicts.append(i)
                maps.append(r if type(r) is dict else dict(r))
        try:
            copies = _fast_copy(maps)
            if copies is None:
                copies = json.loads(json.dumps(maps))
        except (TypeError, ValueError, RecursionError):
            for i in dicts:  # find which ones are not JSON
                try:
                    out[i] = self.answer(results[i])
                except AgentError as exc:
                    out[i] = exc
                except RecursionError as exc:
                    out[i] = AgentError(f"agent transport raised RecursionError: {exc}")
            return out
        for i, copy in zip(dicts, copies, strict=True):
            out[i] = copy
        return out

    def invoke_sync(self, fresh: dict[str, Any]) -> object:
        """Call a sync agent on the current (worker) thread; see
        :meth:`AgentRunner.decide_batch`. Returns what it returned, unchecked (an awaitable
        is then awaited by :meth:`finish`). The timeout is checked after the call returns: a
        sync call cannot be interrupted."""
        start = time.monotonic()
        try:
            result = self._fn(fresh)
        except Exception as exc:
            raise _raised(exc) from None
        if not inspect.isawaitable(result) and time.monotonic() - start > self._timeout:
            raise AgentError(f"timeout after {self._timeout} s")
        return result

    async def finish(self, result: object) -> Mapping[str, Any]:
        """:meth:`answer` of a result :meth:`invoke_sync` returned, awaiting it first (under
        the timeout) when the sync callable handed back an awaitable."""
        if inspect.isawaitable(result):
            deadline = asyncio.timeout(self._timeout)
            try:
                async with deadline:
                    result = await result
            except Exception as exc:
                if isinstance(exc, TimeoutError) and deadline.expired():
                    raise AgentError(f"timeout after {self._timeout} s") from None
                raise _raised(exc) from None
        return self.answer(result)

    def answer(self, result: object) -> Mapping[str, Any]:
        """The agent's return value, checked and copied through JSON."""
        if not isinstance(result, Mapping):
            raise AgentError(f"agent returned {_kind(result)}, expected a dict")
        try:
            text = json.dumps(result if type(result) is dict else dict(result))
        except (TypeError, ValueError) as exc:
            raise AgentError(f"agent returned a value that is not JSON: {exc}") from None
        try:
            value: dict[str, Any] = json.loads(text)
        except RecursionError:
            raise AgentError("invalid JSON: nested too deeply") from None
        return value


_REQUEST_JSON = json.JSONEncoder(allow_nan=False)


def _fast_copy(values: list[dict[str, Any]]) -> list[Any] | None:
    """A JSON round-trip copy of ``values`` by orjson, or ``None`` when it would not be
    exactly the stdlib's copy: then the caller runs the stdlib round trip, with its errors.

    orjson refuses (-> ``None``) non-string keys, integers beyond 64 bits, lone surrogates,
    nesting deeper than 255, dict/list/str/int subclasses, dataclasses and datetimes. What
    it accepts but the stdlib would copy differently or refuse (``NaN``/``Infinity``
    written as ``null``, tuples, enums, UUIDs) makes the copy differ from the original, so
    the copy is only used when it equals ``values``: an equal copy is the stdlib's copy
    (both spell the same JSON values)."""
    try:
        copies: list[Any] = orjson.loads(orjson.dumps(values, option=STRICT))
    except orjson.JSONEncodeError:
        return None
    except orjson.JSONDecodeError:  # pragma: no cover - orjson reads what it writes
        return None
    return copies if copies == values else None


class _Resumed:
    """Awaits the rest of a coroutine that was stepped once (``yield from`` by hand): what
    it yielded goes to the task driving us, what the task sends or throws goes back."""

    def __init__(self, coro: Any, first: Any) -> None:
        self._coro = coro
        self._next = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self._coro, self._next
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    value = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as done:
                    return done.value


def _raised(exc: Exception) -> AgentError:
    """``agent raised ValueError: ...``; an exception group (an agent's ``TaskGroup``) is
    unwrapped to its first leaf (:func:`~shadow.agent.base.describe`)."""
    return AgentError(f"agent raised {describe(exc)}")


def _resolve(spec: str) -> Callable[..., Any]:
    module_name, colon, attr = spec.partition(":")
    if (
        not colon
        or not all(p.isidentifier() for p in module_name.split("."))
        or not all(p.isidentifier() for p in attr.split("."))
    ):
        raise ConfigError(f"agent {spec!r} is not module:callable, e.g. mypkg.agents:decide")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name + ".").startswith(exc.name + "."):
            raise ConfigError(
                f"agent module {module_name!r} not found; is it installed or on PYTHONPATH?"
            ) from None
        raise ConfigError(f"importing agent module {module_name!r} failed: {exc}") from None
    except Exception as exc:
        raise ConfigError(
            f"importing agent module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"agent module {module_name!r} has no attribute {attr!r}") from None
    if not callable(target):
        raise ConfigError(f"agent {spec!r} is not callable (it is {_kind(target)})")
    return target  # type: ignore[no-any-return]
