"""Compare an agent's decision with the human's, field by field. Pure: no I/O, no clock.

``diff(rules, agent, human, agent_actions, human_actions)`` returns a :class:`DiffResult`
with one :class:`~shadow.model.FieldResult` per compared field. ``agree`` means every result
matched; ``critical_miss`` means a critical one did not. The verdict is symmetric: swapping
agent and human never changes ``agree`` or ``critical_miss`` (only reasons name a side).

Paths
    A listed field (``rules.fields``) is a dotted path walked through nested objects (list
    items are not addressable). Missing on both sides matches; present on one side only is a
    mismatch ("missing on the human side"). A path to an object or list compares the whole
    subtree under its rule, minus any listed descendant paths (the more specific rule wins,
    also when that rule is ``ignore``).
Unlisted fields
    With ``unlisted: exact`` every other leaf is compared exactly (result match ``exact``,
    never critical); objects are recursed, lists, scalars and empty objects are leaves. An
    object that leads to a listed path is always recursed; a non-object at such a position
    (e.g. ``refund: "none"`` while ``refund.amount`` is listed) is compared as a leaf, without
    the listed parts of the other side, so a shape change is not silently agreed. Where one
    side has an object and the other a non-object, that position is one leaf, not its parts.
Match kinds
    ``exact``: JSON equality, deep and type-strict: ``true`` is not ``1``, ``1`` is not
    ``"1"``, ``1`` equals ``1.0``. ``number``: both numbers (not booleans) and
    ``|a-b| <= max(abs, rel * max(|a|, |b|))``. ``text``: both strings, equal after
    :func:`normalize_text`. ``set``: both arrays, equal as sets (order and duplicates do not
    count; elements compared as ``exact``). ``ignore``: not compared and not reported.
    Equivalence classes map a scalar value (for ``set`` each element; for ``text`` after
    normalising both value and class members) to its class before comparing. Under every
    kind, values that are exactly equal match, so a decision always agrees with itself;
    otherwise a value of the wrong type is a mismatch whose reason names both types.
Actions
    Compared only when ``rules.actions`` is set, as multisets: each action is reduced to its
    tool and the listed argument paths (other arguments are ignored; a listed argument missing
    on exactly one side does not match), and the lists agree iff a one-to-one pairing of
    matching actions covers both (a real bipartite matching, since tolerances are not
    transitive). One result, path ``actions``, match ``multiset``.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

from shadow.model import Action, FieldResult
from shadow.policy import CompareRules, FieldRule, MatchKind

__all__ = ["DiffResult", "Differ", "diff", "normalize_text"]


@dataclass(frozen=True, slots=True)
class DiffResult:
    """The comparison of one agent answer with one human outcome."""

    agree: bool
    fields: tuple[FieldResult, ...]  # compared fields, then "actions"; ignored ones omitted
    critical_miss: bool


def diff(
    rules: CompareRules,
    agent: Mapping[str, Any],
    human: Mapping[str, Any],
    agent_actions: Sequence[Action] = (),
    human_actions: Sequence[Action] = (),
) -> DiffResult:
    """Compare two ``decision`` objects (and action lists) under ``rules``.

    Compiles ``rules`` on every call; hot paths hold a :class:`Differ` per task type."""
    return Differ(rules)(agent, human, agent_actions, human_actions)


class Differ:
    """``rules`` compiled once; calling it is :func:`diff` without the compile step."""

    __slots__ = ("_compiled", "rules")

    def __init__(self, rules: CompareRules) -> None:
        self.rules = rules
        self._compiled = _Compiled(rules)

    def __call__(
        self,
        agent: Mapping[str, Any],
        human: Mapping[str, Any],
        agent_actions: Sequence[Action] = (),
        human_actions: Sequence[Action] = (),
    ) -> DiffResult:
        return self._compiled.run(agent, human, agent_actions, human_actions)


def normalize_text(value: str) -> str:
    """The ``text`` match's view of a string: NFKC, casefolded, whitespace runs collapsed to
    one space and stripped (``"  \\uff26ull\\tWIDTH "`` -> ``"full width"``)."""
    if value.isascii():
        return " ".join(value.lower().split())
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold())
    return " ".join(folded.split())


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()
_SHOW_MAX: Final = 60
_ARTICLE: Final = {
    "null": "null",
    "boolean": "a boolean",
    "number": "a number",
    "string": "a string",
    "object": "an object",
    "array": "an array",
}


def _kind(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, Mapping):
        return "object"
    if isinstance(v, list | tuple):
        return "array"
    return type(v).__name__


def _article(kind: str) -> str:
    return _ARTICLE.get(kind, f"a {kind}")


def _key(v: object) -> Hashable:
    """A hashable key equal for exactly-equal JSON values (``1`` and ``1.0`` alike)."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, int | float):
        return ("n", v) if v == v else ("nan",)
    if isinstance(v, Mapping):
        return ("o", frozenset((k, _key(x)) for k, x in v.items()))
    if isinstance(v, list | tuple):
        return ("a", tuple(_key(x) for x in v))
    return ("?", repr(v))


def _show(v: object) -> str:
    text = json.dumps(v, ensure_ascii=False, default=repr)
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 1] + "…"


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _exact_reason(a: Any, b: Any, where: str = "") -> str | None:
    """``None`` when ``a`` and ``b`` are the same JSON value, else the first difference."""
    ka, kb = _kind(a), _kind(b)
    at = f"at {where}: " if where else ""
    if ka != kb:
        return f"{at}type mismatch: agent has {_article(ka)}, human has {_article(kb)}"
    if ka == "object":
        for k, x in a.items():
            if k not in b:
                return f"at {_join(where, k)}: missing on the human side"
            found = _exact_reason(x, b[k], _join(where, k))
            if found:
                return found
        for k in b:
            if k not in a:
                return f"at {_join(where, k)}: missing on the agent side"
        return None
    if ka == "array" and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _exact_reason(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    if ka != "array" and (a == b or (ka == "number" and a != a and b != b)):
        return None
    return f"{at}agent has {_show(a)}, human has {_show(b)}"


def _fmt(x: float | Fraction) -> str:
    try:
        return f"{float(x):.6g}"
    except OverflowError:
        return "a huge number"


class _Matcher:
    """One compiled :class:`FieldRule`: ``reason(a, b)`` is ``None`` when they match."""

    __slots__ = ("_abs", "_classes", "_kind", "_rel")

    def __init__(self, rule: FieldRule) -> None:
        self._kind = rule.match
        self._abs = rule.abs
        self._rel = rule.rel
        self._classes: dict[Hashable, int] = {}
        for i, members in enumerate(rule.equivalent):
            for m in members:
                if rule.match is MatchKind.TEXT:
                    if isinstance(m, str):
                        self._classes[normalize_text(m)] = i
                else:
                    self._classes[_key(m)] = i

    def reason(self, a: Any, b: Any) -> str | None:
        kind = self._kind
        if kind is MatchKind.EXACT:
            ca = self._class(a)
            if ca is not None and ca == self._class(b):
                return None
            return _exact_reason(a, b)
        if kind is MatchKind.NUMBER:
            if _kind(a) == "number" and _kind(b) == "number":
                return self._number(a, b)
            return self._type_reason(a, b, "numbers")
        if kind is MatchKind.TEXT:
            if isinstance(a, str) and isinstance(b, str):
                return self._text(a, b)
            return self._type_reason(a, b, "strings")
        if kind is MatchKind.SET:
            if isinstance(a, list | tuple) and isinstance(b, list | tuple):
                return self._set(a, b)
            return self._type_reason(a, b, "arrays")
        return None  # IGNORE

    def _class(self, v: object) -> int | None:
        if not self._classes or isinstance(v, Mapping | list | tuple):
            return None
        return self._classes.get(_key(v))

    def _type_reason(self, a: Any, b: Any, needs: str) -> str | None:
        if _exact_reason(a, b) is None:
            return None
        ka, kb = _kind(a), _kind(b)
        if ka != kb:
            return f"type mismatch: agent has {_article(ka)}, human has {_article(kb)}"
        return f"type mismatch: {self._kind.value} match needs {needs}, both sides have {ka}s"

    def _number(self, a: float, b: float) -> str | None:
        if a == b or (a != a and b != b):
            return None
        if any(isinstance(x, float) and not math.isfinite(x) for x in (a, b)):
            return f"agent has {_show(a)}, human has {_show(b)}"
        diff: float | Fraction
        tol: float | Fraction
        try:
            diff = abs(a - b)
            tol = max(self._abs, self._rel * max(abs(a), abs(b))) if self._rel else self._abs
        except OverflowError:  # an integer beyond float range: compute exactly instead
            fa, fb = Fraction(a), Fraction(b)
            diff = abs(fa - fb)
            tol = max(Fraction(self._abs), Fraction(self._rel) * max(abs(fa), abs(fb)))
        if diff <= tol:
            return None
        shown_diff, shown_tol = _fmt(diff), _fmt(tol)
        if shown_diff == shown_tol and isinstance(diff, float):
            shown_diff = repr(diff)
        return (
            f"agent has {_show(a)}, human has {_show(b)}: "
            f"differs by {shown_diff}, tolerance {shown_tol}"
        )

    def _text(self, a: str, b: str) -> str | None:
        na, nb = normalize_text(a), normalize_text(b)
        if na == nb:
            return None
        ca = self._classes.get(na)
        if ca is not None and ca == self._classes.get(nb):
            return None
        return f"agent has {_show(a)}, human has {_show(b)}"

    def _set_keys(self, items: Sequence[Any]) -> dict[Hashable, Any]:
        out: dict[Hashable, Any] = {}
        for x in items:
            k = _key(x)
            cls = self._classes.get(k) if self._classes else None
            out.setdefault(k if cls is None else ("class", cls), x)
        return out

    def _set(self, a: Sequence[Any], b: Sequence[Any]) -> str | None:
        ka, kb = self._set_keys(a), self._set_keys(b)
        if ka.keys() == kb.keys():
            return None
        parts = []
        for side, mine, theirs in (("agent", ka, kb), ("human", kb, ka)):
            only = [_show(v) for k, v in mine.items() if k not in theirs]
            if only:
                listed = ", ".join(only)
                if len(listed) > _SHOW_MAX:
                    listed = listed[: _SHOW_MAX - 1] + "…"
                parts.append(f"only on the {side} side: {listed}")
        return "; ".join(parts)


def _resolve(obj: Any, parts: tuple[str, ...]) -> Any:
    for p in parts:
        if not isinstance(obj, Mapping):
            return _MISSING
        obj = obj.get(p, _MISSING)
        if obj is _MISSING:
            return obj
    return obj


def _without(value: Any, excludes: tuple[tuple[str, ...], ...]) -> Any:
    """``value`` minus the relative paths in ``excludes`` (copies only what changes)."""
    for parts in excludes:
        value = _without_one(value, parts)
    return value


def _without_one(value: Any, parts: tuple[str, ...]) -> Any:
    if not isinstance(value, Mapping) or parts[0] not in value:
        return value
    head = parts[0]
    if len(parts) == 1:
        return {k: v for k, v in value.items() if k != head}
    return {**value, head: _without_one(value[head], parts[1:])}


def _nonempty(v: Any) -> bool:
    return v is not _MISSING and len(v) > 0


def _missing_reason(a: Any, b: Any) -> str:
    if a is _MISSING:
        return f"missing on the agent side; human has {_show(b)}"
    return f"missing on the human side; agent has {_show(a)}"


class _Node:
    """Trie of listed paths, guiding the walk over unlisted fields."""

    __slots__ = ("children", "excludes", "listed")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.listed = False
        self.excludes: tuple[tuple[str, ...], ...] = ()  # listed paths below, relative


@dataclass(frozen=True, slots=True)
class _Listed:
    path: str
    parts: tuple[str, ...]
    rule: FieldRule
    matcher: _Matcher
    excludes: tuple[tuple[str, ...], ...]


class _Compiled:
    __slots__ = ("_actions", "_actions_critical", "_listed", "_root", "_unlisted")

    def __init__(self, rules: CompareRules) -> None:
        all_parts = [tuple(p.split(".")) for p in rules.fields]
        self._listed = [
            _Listed(path, parts, rule, _Matcher(rule), _below(parts, all_parts))
            for (path, rule), parts in zip(rules.fields.items(), all_parts, strict=True)
            if rule.match is not MatchKind.IGNORE
        ]
        self._unlisted = rules.unlisted is not MatchKind.IGNORE
        self._root = _Node()
        for parts in all_parts:
            node = self._root
            for i, p in enumerate(parts):
                node = node.children.setdefault(p, _Node())
                node.excludes = _below(parts[: i + 1], all_parts)
            node.listed = True
        self._actions: list[tuple[str, tuple[str, ...], _Matcher]] | None = None
        self._actions_critical = False
        if rules.actions is not None:
            self._actions = [
                (path, tuple(path.split(".")), _Matcher(rule))
                for path, rule in rules.actions.args.items()
                if rule.match is not MatchKind.IGNORE
            ]
            self._actions_critical = rules.actions.critical

    def run(
        self,
        agent: Mapping[str, Any],
        human: Mapping[str, Any],
        agent_actions: Sequence[Action],
        human_actions: Sequence[Action],
    ) -> DiffResult:
        out: list[FieldResult] = []
        for f in self._listed:
            a = _without(_resolve(agent, f.parts), f.excludes)
            b = _without(_resolve(human, f.parts), f.excludes)
            if a is _MISSING and b is _MISSING:
                reason = None
            elif a is _MISSING or b is _MISSING:
                reason = _missing_reason(a, b)
            else:
                reason = f.matcher.reason(a, b)
            out.append(
                FieldResult(f.path, f.rule.match.value, not reason, f.rule.critical, reason or "")
            )
        if self._unlisted:
            self._walk(agent, human, self._root, "", out)
        if self._actions is not None:
            reason = self._compare_actions(agent_actions, human_actions)
            out.append(
                FieldResult("actions", "multiset", not reason, self._actions_critical, reason)
            )
        agree = all(r.matched for r in out)
        critical = not agree and any(r.critical and not r.matched for r in out)
        return DiffResult(agree, tuple(out), critical)

    def _walk(self, a: Any, b: Any, node: _Node | None, path: str, out: list[FieldResult]) -> None:
        a_obj = a is _MISSING or isinstance(a, Mapping)
        b_obj = b is _MISSING or isinstance(b, Mapping)
        if a_obj and b_obj and (node is not None or _nonempty(a) or _nonempty(b)):
            a_map: Mapping[str, Any] = {} if a is _MISSING else a
            b_map: Mapping[str, Any] = {} if b is _MISSING else b
            for keys, other in ((a_map, None), (b_map, a_map)):
                for k in keys:
                    if other is not None and k in other:
                        continue
                    child = node.children.get(k) if node is not None else None
                    if child is not None and child.listed:
                        continue
                    x, y = a_map.get(k, _MISSING), b_map.get(k, _MISSING)
                    self._walk(x, y, child, _join(path, k), out)
            return
        if node is not None:
            a, b = _without(a, node.excludes), _without(b, node.excludes)
        if a is _MISSING or b is _MISSING:
            reason: str | None = _missing_reason(a, b)
        else:
            reason = _exact_reason(a, b)
        out.append(FieldResult(path, "exact", not reason, False, reason or ""))

    def _reduce(self, action: Action) -> tuple[str, list[Any]]:
        assert self._actions is not None
        return action.tool, [_resolve(action.args, parts) for _, parts, _ in self._actions]

    def _pairs(self, x: tuple[str, list[Any]], y: tuple[str, list[Any]]) -> bool:
        assert self._actions is not None
        for (_, _, matcher), a, b in zip(self._actions, x[1], y[1], strict=True):
            if a is _MISSING or b is _MISSING:
                if a is not b:
                    return False
            elif matcher.reason(a, b) is not None:
                return False
        return True

    def _compare_actions(self, agent: Sequence[Action], human: Sequence[Action]) -> str:
        ra = [self._reduce(x) for x in agent]
        rh = [self._reduce(y) for y in human]
        by_tool: dict[str, list[int]] = {}
        for j, y in enumerate(rh):
            by_tool.setdefault(y[0], []).append(j)
        adj = [[j for j in by_tool.get(x[0], ()) if self._pairs(x, rh[j])] for x in ra]
        match_a, match_h = _max_matching(adj, len(rh))
        problems = [
            f"agent proposed {self._describe(x)} with no human counterpart"
            for x, j in zip(ra, match_a, strict=True)
            if j < 0
        ] + [
            f"human performed {self._describe(y)} with no agent counterpart"
            for y, i in zip(rh, match_h, strict=True)
            if i < 0
        ]
        if len(problems) > 3:
            problems[3:] = [f"and {len(problems) - 3} more unmatched"]
        return "; ".join(problems)

    def _describe(self, x: tuple[str, list[Any]]) -> str:
        assert self._actions is not None
        args = ", ".join(
            f"{path}={json.dumps(v, ensure_ascii=False, default=repr)}"
            for (path, _, _), v in zip(self._actions, x[1], strict=True)
            if v is not _MISSING
        )
        text = f"{x[0]}({args})"
        return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 2] + "…)"


def _below(parts: tuple[str, ...], all_parts: list[tuple[str, ...]]) -> tuple[tuple[str, ...], ...]:
    n = len(parts)
    return tuple(q[n:] for q in all_parts if len(q) > n and q[:n] == parts)


def _max_matching(adj: list[list[int]], n_right: int) -> tuple[list[int], list[int]]:
    """Maximum bipartite matching by augmenting paths (BFS, no recursion); returns each
    left node's partner and each right node's partner, ``-1`` for none."""
    match_l = [-1] * len(adj)
    match_r = [-1] * n_right
    for root in range(len(adj)):
        prev: dict[int, int] = {}  # right node -> left node it was reached from
        queue = deque([root])
        end = -1
        while queue and end < 0:
            i = queue.popleft()
            for j in adj[i]:
                if j in prev:
                    continue
                prev[j] = i
                if match_r[j] < 0:
                    end = j
                    break
                queue.append(match_r[j])
        while end >= 0:
            i = prev[end]
            match_l[i], match_r[end], end = end, i, match_l[i]
    return match_l, match_r
