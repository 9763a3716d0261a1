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
    Compared only when ``rules.actions`` is set. Each action is reduced to its tool and the
    argument paths listed for that tool (``actions.args``, each path overridden by the
    tool's own ``actions.tools.<tool>.args``; other arguments are ignored; a listed argument
    missing on exactly one side does not match); two actions are *equal* when their tools
    are and every listed argument matches. ``order: multiset``: the lists agree iff a
    one-to-one pairing of equal actions covers both (a real bipartite matching, since
    tolerances are not transitive). ``order: sequence``: they agree iff they are equal
    position by position; the result carries the edit distance (Levenshtein: insert, delete
    or substitute one action; a swap of two neighbours counts 2) in ``distance``. One
    result, path ``actions``, match ``multiset`` or ``sequence``; critical when
    ``actions.critical`` is set, or when a ``critical`` tool's actions alone (in order, under
    ``sequence``) do not agree. Reasons are bounded in length.
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
from shadow.policy import ActionsOrder, ActionsRule, CompareRules, FieldRule, MatchKind

__all__ = ["MAX_EDIT_CELLS", "DiffResult", "Differ", "diff", "normalize_text"]


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
_LIST_MAX: Final = 100  # a side's tool list in a sequence reason
_NAME_MAX: Final = 40  # one tool name in such a list
# The most action pairs an edit distance compares (after dropping the common prefix and
# suffix), so that a hostile or runaway list cannot hold the event loop: beyond it, the lists
# still disagree but the distance is not computed (``None``).
MAX_EDIT_CELLS: Final = 250_000
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
    __slots__ = ("_actions", "_listed", "_root", "_unlisted")

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
        self._actions = None if rules.actions is None else _Actions(rules.actions)

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
            out.append(self._actions.compare(agent_actions, human_actions))
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


_ArgRule = tuple[str, tuple[str, ...], _Matcher]


def _arg_rules(args: Mapping[str, FieldRule]) -> tuple[_ArgRule, ...]:
    return tuple(
        (path, tuple(path.split(".")), _Matcher(rule))
        for path, rule in args.items()
        if rule.match is not MatchKind.IGNORE
    )


@dataclass(frozen=True, slots=True)
class _Reduced:
    """An action reduced to its tool and the values of its tool's listed argument paths."""

    tool: str
    values: tuple[Any, ...]
    rules: tuple[_ArgRule, ...]  # the rules of ``tool``, aligned with ``values``


def _equal(x: _Reduced, y: _Reduced) -> bool:
    if x.tool != y.tool:
        return False
    for (_, _, matcher), a, b in zip(x.rules, x.values, y.values, strict=True):
        if a is _MISSING or b is _MISSING:
            if a is not b:
                return False
        elif matcher.reason(a, b) is not None:
            return False
    return True


class _Actions:
    """The compiled ``compare.actions`` rule; :meth:`compare` is its one result."""

    __slots__ = ("_by_tool", "_critical", "_critical_tools", "_global", "_order")

    def __init__(self, rule: ActionsRule) -> None:
        self._order = rule.order
        self._critical = rule.critical
        self._critical_tools = tuple(sorted(t for t, r in rule.tools.items() if r.critical))
        self._global = _arg_rules(rule.args)
        self._by_tool = {tool: _arg_rules(rule.args_for(tool)) for tool in rule.tools}

    def compare(self, agent: Sequence[Action], human: Sequence[Action]) -> FieldResult:
        ra = [self._reduce(x) for x in agent]
        rh = [self._reduce(y) for y in human]
        distance: int | None = None
        if self._order is ActionsOrder.SEQUENCE:
            distance = _edit_distance(ra, rh)
            reason = "" if distance == 0 else self._sequence_reason(ra, rh, distance)
        else:
            reason = self._multiset_reason(ra, rh)
        missed = [t for t in self._critical_tools if not self._tool_agrees(t, ra, rh)]
        if missed:
            reason += f"; critical: {_names(missed)} differ"
        critical = self._critical or bool(missed)
        return FieldResult("actions", self._order.value, not reason, critical, reason, distance)

    def _reduce(self, action: Action) -> _Reduced:
        rules = self._by_tool.get(action.tool, self._global)
        values = tuple(_resolve(action.args, parts) for _, parts, _ in rules)
        return _Reduced(action.tool, values, rules)

    def _tool_agrees(self, tool: str, ra: list[_Reduced], rh: list[_Reduced]) -> bool:
        """Whether ``tool``'s actions alone agree (in order under ``sequence``)."""
        xs = [x for x in ra if x.tool == tool]
        ys = [y for y in rh if y.tool == tool]
        if len(xs) != len(ys):
            return False
        if self._order is ActionsOrder.SEQUENCE:
            return all(_equal(x, y) for x, y in zip(xs, ys, strict=True))
        adj = [[j for j, y in enumerate(ys) if _equal(x, y)] for x in xs]
        return -1 not in _max_matching(adj, len(ys))[0]

    def _multiset_reason(self, ra: list[_Reduced], rh: list[_Reduced]) -> str:
        by_tool: dict[str, list[int]] = {}
        for j, y in enumerate(rh):
            by_tool.setdefault(y.tool, []).append(j)
        adj = [[j for j in by_tool.get(x.tool, ()) if _equal(x, rh[j])] for x in ra]
        match_a, match_h = _max_matching(adj, len(rh))
        problems = [
            f"agent proposed {_describe(x)} with no human counterpart"
            for x, j in zip(ra, match_a, strict=True)
            if j < 0
        ] + [
            f"human performed {_describe(y)} with no agent counterpart"
            for y, i in zip(rh, match_h, strict=True)
            if i < 0
        ]
        if len(problems) > 3:
            problems[3:] = [f"and {len(problems) - 3} more unmatched"]
        return "; ".join(problems)

    def _sequence_reason(self, ra: list[_Reduced], rh: list[_Reduced], distance: int | None) -> str:
        first = 0
        while first < min(len(ra), len(rh)) and _equal(ra[first], rh[first]):
            first += 1
        a = _describe(ra[first]) if first < len(ra) else "nothing"
        h = _describe(rh[first]) if first < len(rh) else "nothing"
        if distance is None:
            how, size = "", f"not computed for lists this long ({len(ra)} and {len(rh)})"
        else:
            how = " in order" if not self._multiset_reason(ra, rh) else ""
            size = str(distance)
        return (
            f"actions differ{how}: edit distance {size} "
            f"(agent: {_listing(ra)}; human: {_listing(rh)}); "
            f"first at #{first + 1}: agent has {a}, human has {h}"
        )


def _describe(x: _Reduced) -> str:
    args = ", ".join(
        f"{path}={json.dumps(v, ensure_ascii=False, default=repr)}"
        for (path, _, _), v in zip(x.rules, x.values, strict=True)
        if v is not _MISSING
    )
    text = f"{x.tool}({args})"
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 2] + "…)"


def _short(name: str) -> str:
    return name if len(name) <= _NAME_MAX else name[: _NAME_MAX - 1] + "…"


def _names(names: Sequence[str], total: int | None = None) -> str:
    """Tool names, comma-separated, cut to about ``_LIST_MAX`` characters; ``total``: how
    many there are when ``names`` is only the first of them."""
    count = len(names) if total is None else total
    shown: list[str] = []
    size = 0
    for name in names:
        short = _short(name)
        if shown and size + len(short) > _LIST_MAX:
            break
        shown.append(short)
        size += len(short) + 2
    if len(shown) < count:
        shown.append(f"… ({count} in all)")
    return ", ".join(shown)


def _listing(items: Sequence[_Reduced]) -> str:
    # At most the names that can be shown are looked at: a list may be very long.
    head = [x.tool for x in items[: _LIST_MAX // 3 + 1]]
    return _names(head, len(items)) if items else "none"


def _edit_distance(a: Sequence[_Reduced], b: Sequence[_Reduced]) -> int | None:
    """Levenshtein distance under :func:`_equal` (unit insert, delete, substitute); ``None``
    when it would take more than :data:`MAX_EDIT_CELLS` comparisons (never for equal lists).

    The common prefix and suffix are dropped first: for any equality relation, transitive
    or not, matching equal first (or last) elements is part of some optimal alignment."""
    lo, hi_a, hi_b = 0, len(a), len(b)
    while lo < hi_a and lo < hi_b and _equal(a[lo], b[lo]):
        lo += 1
    while hi_a > lo and hi_b > lo and _equal(a[hi_a - 1], b[hi_b - 1]):
        hi_a -= 1
        hi_b -= 1
    xs, ys = a[lo:hi_a], b[lo:hi_b]
    if not xs or not ys:
        return len(xs) + len(ys)
    if len(xs) * len(ys) > MAX_EDIT_CELLS:
        return None
    prev = list(range(len(ys) + 1))
    for i, x in enumerate(xs, 1):
        cur = [i]
        for j, y in enumerate(ys, 1):
            cost = prev[j - 1] if _equal(x, y) else prev[j - 1] + 1
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, cost))
        prev = cur
    return prev[-1]


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
