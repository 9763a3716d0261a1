"""Tests for shadow.diff: every match kind and reason by example, the verdict's invariants by
property (self-agreement, symmetry, monotonicity in ignore and tolerance)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadow.diff import MAX_EDIT_CELLS, DiffResult, diff, normalize_text
from shadow.model import Action, FieldResult
from shadow.policy import ActionsOrder, ActionsRule, CompareRules, FieldRule, MatchKind, ToolRule

EXACT, NUMBER, TEXT, SET, IGNORE = (
    MatchKind.EXACT,
    MatchKind.NUMBER,
    MatchKind.TEXT,
    MatchKind.SET,
    MatchKind.IGNORE,
)
SEQUENCE = ActionsOrder.SEQUENCE
ABSENT = object()  # leave the field out of the decision


def compare_one(rule: FieldRule, agent: object, human: object) -> FieldResult:
    """The single result of comparing field ``f`` under ``rule`` (unlisted fields ignored)."""
    a = {} if agent is ABSENT else {"f": agent}
    h = {} if human is ABSENT else {"f": human}
    result = diff(CompareRules({"f": rule}, IGNORE), a, h)
    (field,) = result.fields
    assert field.path == "f"
    assert field.match == rule.match.value
    assert result.agree == field.matched
    swapped = diff(CompareRules({"f": rule}, IGNORE), h, a)
    assert swapped.agree == result.agree
    return field


def by_path(result: DiffResult) -> dict[str, FieldResult]:
    return {f.path: f for f in result.fields}


# -- exact -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "human"),
    [
        ("approve", "approve"),
        (1, 1.0),
        (0, -0.0),
        (None, None),
        ([1, {"a": True}], [1.0, {"a": True}]),
        ({"x": 1, "y": [2]}, {"y": [2.0], "x": 1}),
    ],
)
def test_exact_matches_equal_json(agent: object, human: object) -> None:
    assert compare_one(FieldRule(EXACT), agent, human).matched


@pytest.mark.parametrize(
    ("agent", "human", "reason"),
    [
        (True, 1, "type mismatch: agent has a boolean, human has a number"),
        (1, "1", "type mismatch: agent has a number, human has a string"),
        (None, 0, "type mismatch: agent has null, human has a number"),
        (False, 0.0, "type mismatch: agent has a boolean, human has a number"),
        ("approve", "deny", 'agent has "approve", human has "deny"'),
        ([1, 2], [2, 1], "at [0]: agent has 1, human has 2"),
        ([1, 2], [1], "agent has [1, 2], human has [1]"),
        ({"a": 1}, {"a": True}, "at a: type mismatch: agent has a number, human has a boolean"),
        ({"a": {"b": 1}}, {"a": {}}, "at a.b: missing on the human side"),
        ({}, {"c": 1}, "at c: missing on the agent side"),
        ("Approve", "approve", 'agent has "Approve", human has "approve"'),
    ],
)
def test_exact_mismatch_reasons(agent: object, human: object, reason: str) -> None:
    result = compare_one(FieldRule(EXACT), agent, human)
    assert not result.matched
    assert result.reason == reason


def test_exact_equivalence_classes() -> None:
    rule = FieldRule(EXACT, equivalent=(("billing", "payments"), (1, "one")))
    assert compare_one(rule, "billing", "payments").matched
    assert compare_one(rule, "payments", "payments").matched
    assert compare_one(rule, 1.0, "one").matched
    assert not compare_one(rule, "billing", "refunds").matched
    assert not compare_one(rule, "billing", "one").matched
    assert not compare_one(rule, True, "one").matched  # a boolean is not the number 1
    assert not compare_one(rule, "Billing", "payments").matched  # exact stays case-sensitive


# -- number ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "agent", "human", "matched"),
    [
        (FieldRule(NUMBER), 3, 3.0, True),
        (FieldRule(NUMBER), 3, 3.5, False),
        (FieldRule(NUMBER, abs=0.5), 1.0, 1.5, True),
        (FieldRule(NUMBER, abs=0.25), 1.0, 1.5, False),
        (FieldRule(NUMBER, abs=0.01), 42.5, 42.51, True),
        (FieldRule(NUMBER, rel=0.1), 100, 109, True),
        (FieldRule(NUMBER, rel=0.1), 100, 111, True),  # 0.1 * the larger side (111)
        (FieldRule(NUMBER, rel=0.1), 111, 100, True),
        (FieldRule(NUMBER, rel=0.1), 100, 112, False),
        (FieldRule(NUMBER, abs=5, rel=0.01), 1, 5, True),  # abs dominates near zero
        (FieldRule(NUMBER, abs=5, rel=0.01), 1000, 1008, True),  # rel dominates when large
        (FieldRule(NUMBER, abs=5, rel=0.01), 1000, 1011, False),
        (FieldRule(NUMBER, rel=0.1), -100, -109, True),
        (FieldRule(NUMBER, abs=1.5), -1, 1, False),
        (FieldRule(NUMBER, abs=2), -1, 1, True),
        (FieldRule(NUMBER, rel=0.5), -1, 1, False),
        (FieldRule(NUMBER, rel=0.01), 10**400, 10**400 + 1, True),  # beyond float range
        (FieldRule(NUMBER), 10**400, 10**400 + 1, False),
        (FieldRule(NUMBER, abs=1), 10**400, 1.5, False),
    ],
)
def test_number_tolerance(rule: FieldRule, agent: float, human: float, matched: bool) -> None:
    assert compare_one(rule, agent, human).matched is matched


def test_number_reason_gives_difference_and_tolerance() -> None:
    result = compare_one(FieldRule(NUMBER, abs=0.01), 40, 40.5)
    assert result.reason == "agent has 40, human has 40.5: differs by 0.5, tolerance 0.01"
    result = compare_one(FieldRule(NUMBER, abs=1, rel=0.1), 100, 120)
    assert result.reason == "agent has 100, human has 120: differs by 20, tolerance 12"


@pytest.mark.parametrize(
    ("agent", "human", "reason"),
    [
        (1, "1", "type mismatch: agent has a number, human has a string"),
        (True, 1, "type mismatch: agent has a boolean, human has a number"),
        (None, 0, "type mismatch: agent has null, human has a number"),
        ("1", "2", "type mismatch: number match needs numbers, both sides have strings"),
    ],
)
def test_number_type_mismatch(agent: object, human: object, reason: str) -> None:
    result = compare_one(FieldRule(NUMBER, abs=10), agent, human)
    assert not result.matched
    assert result.reason == reason


def test_number_rule_matches_identical_non_numbers() -> None:
    assert compare_one(FieldRule(NUMBER), "n/a", "n/a").matched
    assert compare_one(FieldRule(NUMBER), True, True).matched


# -- text ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "human"),
    [
        ("Refund approved", "refund APPROVED"),
        ("  refund\t\napproved ", "refund approved"),
        ("\uff46\uff55\uff4c\uff4c width", "FULL WIDTH"),  # fullwidth letters (NFKC)
        ("e\u0301", "\u00e9"),  # combining accent vs precomposed
        ("stra\u00dfe", "STRASSE"),  # casefold, not lower
        ("a\u00a0b", "a b"),  # no-break space
    ],
)
def test_text_normalises(agent: str, human: str) -> None:
    assert compare_one(FieldRule(TEXT), agent, human).matched


def test_text_mismatch_and_type() -> None:
    result = compare_one(FieldRule(TEXT), "approved", "denied")
    assert not result.matched
    assert result.reason == 'agent has "approved", human has "denied"'
    result = compare_one(FieldRule(TEXT), 1, "1")
    assert result.reason == "type mismatch: agent has a number, human has a string"
    result = compare_one(FieldRule(TEXT), ["a"], ["a "])
    assert result.reason == "type mismatch: text match needs strings, both sides have arrays"


def test_text_equivalence_classes_are_normalised() -> None:
    rule = FieldRule(TEXT, equivalent=(("Approve", "ACCEPT  it"),))
    assert compare_one(rule, " approve", "Accept\tIt").matched
    assert not compare_one(rule, "approve", "deny").matched


def test_normalize_text() -> None:
    assert normalize_text("  \uff26ull\tWIDTH ") == "full width"
    assert normalize_text("E\u0301") == "\u00e9"
    assert normalize_text("") == ""
    assert normalize_text("A  b\n") == "a b"


# -- set -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "human"),
    [
        (["a", "b", "c"], ["c", "a", "b"]),
        (["a", "a", "b"], ["b", "a"]),
        ([1, 2], [2.0, 1.0, 1]),
        ([{"a": 1}, [1, 2]], [[1.0, 2], {"a": 1}]),
        ([], []),
    ],
)
def test_set_ignores_order_and_duplicates(agent: object, human: object) -> None:
    assert compare_one(FieldRule(SET), agent, human).matched


def test_set_mismatch_reasons() -> None:
    result = compare_one(FieldRule(SET), ["a", "b"], ["b", "c", "d"])
    assert result.reason == 'only on the agent side: "a"; only on the human side: "c", "d"'
    assert compare_one(FieldRule(SET), [1], []).reason == "only on the agent side: 1"
    assert compare_one(FieldRule(SET), [], [True]).reason == "only on the human side: true"
    assert not compare_one(FieldRule(SET), [True], [1]).matched
    assert not compare_one(FieldRule(SET), [[1, 2]], [[2, 1]]).matched  # elements are exact
    result = compare_one(FieldRule(SET), "a", ["a"])
    assert result.reason == "type mismatch: agent has a string, human has an array"


def test_set_equivalence_classes_apply_to_elements() -> None:
    rule = FieldRule(SET, equivalent=(("billing", "payments"),))
    assert compare_one(rule, ["billing", "vip"], ["vip", "payments"]).matched
    assert compare_one(rule, ["billing", "payments"], ["payments"]).matched
    assert not compare_one(rule, ["billing"], ["refunds"]).matched


# -- ignore, presence, paths -----------------------------------------------------------------


def test_ignored_field_is_not_compared_or_reported() -> None:
    rules = CompareRules({"note": FieldRule(IGNORE), "action": FieldRule()})
    result = diff(rules, {"action": "ok", "note": "x"}, {"action": "ok", "note": 5})
    assert result.agree
    assert [f.path for f in result.fields] == ["action"]
    assert diff(rules, {"action": "ok", "note": "x"}, {"action": "ok"}).agree


@pytest.mark.parametrize("kind", [EXACT, NUMBER, TEXT, SET])
def test_present_versus_missing_both_directions(kind: MatchKind) -> None:
    rule = FieldRule(kind)
    result = compare_one(rule, 1, ABSENT)
    assert not result.matched
    assert result.reason == "missing on the human side; agent has 1"
    result = compare_one(rule, ABSENT, None)
    assert not result.matched
    assert result.reason == "missing on the agent side; human has null"
    both = compare_one(rule, ABSENT, ABSENT)
    assert both.matched
    assert both.reason == ""


def test_dotted_paths_reach_nested_fields() -> None:
    rules = CompareRules(
        {"customer.tier": FieldRule(TEXT), "order.total.amount": FieldRule(NUMBER, abs=1)}
    )
    agent = {"customer": {"tier": "Gold"}, "order": {"total": {"amount": 10}}}
    human = {"customer": {"tier": "gold "}, "order": {"total": {"amount": 10.5}}}
    result = diff(rules, agent, human)
    assert result.agree
    assert [f.path for f in result.fields] == ["customer.tier", "order.total.amount"]

    human["order"] = {"total": 10.5}  # the path now stops at a number: amount is missing
    fields = by_path(diff(rules, agent, human))
    assert fields["order.total.amount"].reason == "missing on the human side; agent has 10"
    assert fields["order.total"].reason == "type mismatch: agent has an object, human has a number"


def test_listed_path_to_a_subtree_compares_it_whole() -> None:
    rules = CompareRules({"customer": FieldRule(EXACT)}, IGNORE)
    agent = {"customer": {"tier": "gold", "tags": [1, 2]}}
    assert diff(rules, agent, copy.deepcopy(agent)).agree
    human = {"customer": {"tier": "gold", "tags": [2, 1]}}
    (field,) = diff(rules, agent, human).fields
    assert field.path == "customer"
    assert field.reason == "at tags[0]: agent has 1, human has 2"

    rules = CompareRules({"tags": FieldRule(SET)}, IGNORE)
    assert diff(rules, {"tags": [[1], [2]]}, {"tags": [[2], [1], [1]]}).agree


def test_more_specific_listed_path_wins_inside_a_subtree() -> None:
    rules = CompareRules(
        {
            "order": FieldRule(EXACT),
            "order.amount": FieldRule(NUMBER, abs=1),
            "order.note": FieldRule(IGNORE),
        }
    )
    agent = {"order": {"id": "o1", "amount": 10, "note": "a"}}
    human = {"order": {"id": "o1", "amount": 10.5, "note": "b"}}
    result = diff(rules, agent, human)
    assert result.agree
    assert [f.path for f in result.fields] == ["order", "order.amount"]
    human["order"]["id"] = "o2"
    assert (
        by_path(diff(rules, agent, human))["order"].reason
        == 'at id: agent has "o1", human has "o2"'
    )


def test_unlisted_exact_compares_every_other_leaf() -> None:
    rules = CompareRules({"action": FieldRule()})
    agent = {"action": "approve", "meta": {"queue": "q1", "tags": ["a"]}, "empty": {}}
    human = {"action": "approve", "meta": {"queue": "q2", "tags": ["a"]}, "empty": {}}
    result = diff(rules, agent, human)
    assert not result.agree
    assert not result.critical_miss
    fields = by_path(result)
    assert set(fields) == {"action", "meta.queue", "meta.tags", "empty"}
    assert fields["meta.queue"] == FieldResult(
        "meta.queue", "exact", False, False, 'agent has "q1", human has "q2"'
    )
    assert fields["meta.tags"].matched
    assert fields["empty"].matched


def test_unlisted_presence_and_shapes() -> None:
    rules = CompareRules()
    fields = by_path(diff(rules, {"a": 1, "e": {}}, {"b": {"c": 2}}))
    assert fields["a"].reason == "missing on the human side; agent has 1"
    assert fields["b.c"].reason == "missing on the agent side; human has 2"
    assert fields["e"].reason == "missing on the human side; agent has {}"
    fields = by_path(diff(rules, {"x": {"y": 1}}, {"x": 5}))
    assert list(fields) == ["x"]  # one leaf for a shape change, not one per part
    assert fields["x"].reason == "type mismatch: agent has an object, human has a number"
    assert by_path(diff(rules, {"x": {"y": 1}}, {"x": {}}))["x.y"].reason == (
        "missing on the human side; agent has 1"
    )


def test_unlisted_ignore_skips_everything_not_listed() -> None:
    rules = CompareRules({"action": FieldRule()}, IGNORE)
    result = diff(rules, {"action": "a", "x": 1, "y": {"z": 1}}, {"action": "a", "x": 2})
    assert result.agree
    assert [f.path for f in result.fields] == ["action"]
    assert diff(CompareRules(unlisted=IGNORE), {"x": 1}, {"y": 2}) == DiffResult(True, (), False)


def test_a_scalar_where_a_listed_path_expects_an_object_is_still_compared() -> None:
    rules = CompareRules({"refund.amount": FieldRule(NUMBER, abs=1)})
    result = diff(rules, {"refund": "none"}, {"refund": "full"})
    assert not result.agree
    assert by_path(result)["refund.amount"].matched  # missing on both sides
    assert by_path(result)["refund"].reason == 'agent has "none", human has "full"'
    result = diff(rules, {"refund": {"amount": 5, "to": "card"}}, {"refund": {"amount": 5.5}})
    assert [(f.path, f.matched) for f in result.fields] == [
        ("refund.amount", True),
        ("refund.to", False),
    ]
    assert diff(rules, {"refund": {}}, {}).agree  # an empty object on the way is no leaf
    result = diff(rules, {"refund": {"amount": 5}}, {"refund": "none"})
    assert by_path(result)["refund"].reason == (
        "type mismatch: agent has an object, human has a string"
    )


def test_empty_decisions_agree() -> None:
    assert diff(CompareRules(), {}, {}) == DiffResult(True, (), False)


# -- critical --------------------------------------------------------------------------------


def test_critical_miss() -> None:
    rules = CompareRules({"action": FieldRule(critical=True), "amount": FieldRule(NUMBER)})
    miss = diff(rules, {"action": "approve", "amount": 1}, {"action": "deny", "amount": 1})
    assert (miss.agree, miss.critical_miss) == (False, True)
    assert by_path(miss)["action"].critical
    minor = diff(rules, {"action": "approve", "amount": 1}, {"action": "approve", "amount": 2})
    assert (minor.agree, minor.critical_miss) == (False, False)
    missing = diff(rules, {"amount": 1}, {"action": "approve", "amount": 1})
    assert (missing.agree, missing.critical_miss) == (False, True)
    ok = diff(rules, {"action": "approve", "amount": 1}, {"action": "approve", "amount": 1})
    assert (ok.agree, ok.critical_miss) == (True, False)


# -- actions ---------------------------------------------------------------------------------


def refunds(*amounts: float) -> list[Action]:
    return [Action("issue_refund", {"amount": a}) for a in amounts]


def actions_result(
    rule: ActionsRule, agent: Sequence[Action], human: Sequence[Action]
) -> FieldResult:
    rules = CompareRules(actions=rule)
    result = diff(rules, {}, {}, agent, human)
    assert diff(rules, {}, {}, human, agent).agree == result.agree
    (field,) = result.fields
    assert (field.path, field.match) == ("actions", "multiset")
    return field


AMOUNT_WITHIN_1 = ActionsRule({"amount": FieldRule(NUMBER, abs=1)})


def test_actions_are_compared_as_multisets() -> None:
    assert actions_result(AMOUNT_WITHIN_1, refunds(1, 2, 3), refunds(3, 1, 2)).matched
    assert actions_result(AMOUNT_WITHIN_1, [], []).matched
    result = actions_result(AMOUNT_WITHIN_1, refunds(40), [])
    assert result.reason == "agent proposed issue_refund(amount=40) with no human counterpart"
    result = actions_result(AMOUNT_WITHIN_1, [], refunds(40))
    assert result.reason == "human performed issue_refund(amount=40) with no agent counterpart"


def test_actions_duplicates_count() -> None:
    result = actions_result(AMOUNT_WITHIN_1, refunds(10, 10), refunds(10))
    assert not result.matched
    assert result.reason == "agent proposed issue_refund(amount=10) with no human counterpart"
    assert not actions_result(AMOUNT_WITHIN_1, refunds(10, 10, 20), refunds(10, 20, 20)).matched


def test_actions_matching_is_not_greedy() -> None:
    # 11 is close to both 10.9 and 11.9, 10 only to 10.9: pairing 11 with 10.9 first fails,
    # but 11-11.9 and 10-10.9 is a perfect pairing.
    assert actions_result(AMOUNT_WITHIN_1, refunds(11, 10), refunds(10.9, 11.9)).matched
    assert actions_result(AMOUNT_WITHIN_1, refunds(10, 11), refunds(11.9, 10.9)).matched
    assert not actions_result(AMOUNT_WITHIN_1, refunds(11, 10), refunds(11.9, 12.5)).matched


def test_actions_tools_must_match() -> None:
    result = actions_result(ActionsRule(), [Action("issue_refund")], [Action("send_email")])
    assert result.reason == (
        "agent proposed issue_refund() with no human counterpart; "
        "human performed send_email() with no agent counterpart"
    )


def test_actions_unlisted_args_are_ignored() -> None:
    agent = [Action("issue_refund", {"amount": 10, "note": "sorry", "meta": {"x": 1}})]
    human = [Action("issue_refund", {"amount": 10.4, "note": "ok"})]
    assert actions_result(AMOUNT_WITHIN_1, agent, human).matched
    nested = ActionsRule({"meta.x": FieldRule(), "note": FieldRule(IGNORE)})
    assert not actions_result(nested, agent, human).matched
    human[0].args["meta"] = {"x": 1.0}
    assert actions_result(nested, agent, human).matched


def test_actions_missing_arg() -> None:
    assert not actions_result(AMOUNT_WITHIN_1, refunds(10), [Action("issue_refund")]).matched
    assert actions_result(
        AMOUNT_WITHIN_1, [Action("issue_refund")], [Action("issue_refund")]
    ).matched


def test_actions_critical_and_not_compared_without_rule() -> None:
    rules = CompareRules(actions=ActionsRule(critical=True))
    result = diff(rules, {}, {}, [Action("a")], [])
    assert (result.agree, result.critical_miss) == (False, True)
    assert result.fields[0].critical
    result = diff(CompareRules(), {}, {}, [Action("a")], [])
    assert result == DiffResult(True, (), False)


def test_actions_reason_lists_at_most_three() -> None:
    result = actions_result(AMOUNT_WITHIN_1, refunds(1, 2, 3, 4, 5), [])
    assert result.reason.endswith("; and 2 more unmatched")
    assert result.reason.count("no human counterpart") == 3


# -- actions in order and per tool ------------------------------------------------------------


def seq_result(
    agent: Sequence[Action], human: Sequence[Action], rule: ActionsRule | None = None
) -> FieldResult:
    """The ``actions`` result under ``order: sequence``; checks it is symmetric."""
    rule = dataclasses.replace(rule or AMOUNT_WITHIN_1, order=SEQUENCE)
    rules = CompareRules(actions=rule)
    result = diff(rules, {}, {}, agent, human)
    (field,) = result.fields
    (back,) = diff(rules, {}, {}, human, agent).fields
    assert (field.path, field.match) == ("actions", "sequence")
    assert (back.matched, back.distance, back.critical) == (
        field.matched,
        field.distance,
        field.critical,
    )
    assert result.agree == field.matched
    return field


def calls(*names: str) -> list[Action]:
    """Actions named ``"tool"`` or ``"tool=amount"``."""
    out = []
    for name in names:
        tool, _, amount = name.partition("=")
        out.append(Action(tool, {"amount": float(amount)} if amount else {}))
    return out


def test_sequence_and_multiset_differ_on_the_same_lists() -> None:
    agent, human = calls("lookup", "refund=10", "email"), calls("lookup", "email", "refund=10")
    assert actions_result(AMOUNT_WITHIN_1, agent, human).matched
    result = seq_result(agent, human)
    assert not result.matched
    assert result.distance == 2
    assert result.reason == (
        "actions differ in order: edit distance 2 (agent: lookup, refund, email; "
        "human: lookup, email, refund); first at #2: agent has refund(amount=10.0), "
        "human has email()"
    )
    same = seq_result(agent, copy.deepcopy(agent))
    assert (same.matched, same.distance, same.reason) == (True, 0, "")
    # Tolerances apply position by position.
    assert seq_result(calls("refund=10", "refund=20"), calls("refund=10.5", "refund=19.5")).matched
    # A multiset result carries no distance, and its JSON keeps its five keys.
    multiset = actions_result(AMOUNT_WITHIN_1, agent, human)
    assert multiset.distance is None
    assert set(multiset.to_json()) == {"path", "match", "matched", "critical", "reason"}


@pytest.mark.parametrize(
    ("agent", "human", "distance"),
    [
        ((), (), 0),
        (("a",), (), 1),
        ((), ("a", "b", "c"), 3),
        (("a", "b", "c"), ("a", "c"), 1),  # delete
        (("a", "c"), ("a", "b", "c"), 1),  # insert
        (("a", "b", "c"), ("a", "x", "c"), 1),  # substitute a tool
        (("a", "refund=10", "c"), ("a", "refund=12", "c"), 1),  # substitute by an argument
        (("a", "refund=10", "c"), ("a", "refund=10.9", "c"), 0),  # within the tolerance
        (("a", "b"), ("b", "a"), 2),  # a transposition counts 2
        (("a", "b", "c", "d"), ("b", "a", "d", "c"), 3),
        (("a", "b", "c"), ("c", "b", "a"), 2),
        (("k", "i", "t", "t", "e", "n"), ("s", "i", "t", "t", "i", "n", "g"), 3),
        (("a", "a", "a"), ("a",), 2),
        (("x", "y", "z"), ("p", "q"), 3),
    ],
)
def test_sequence_edit_distance(
    agent: tuple[str, ...], human: tuple[str, ...], distance: int
) -> None:
    result = seq_result(calls(*agent), calls(*human))
    assert result.distance == distance
    assert result.matched == (distance == 0)
    assert bool(result.reason) == (distance > 0)
    if distance:
        assert f"edit distance {distance} " in result.reason


def test_sequence_reason_wording_and_bounds() -> None:
    result = seq_result(calls("a", "b", "c"), calls("a", "c"))
    assert result.reason == (
        "actions differ: edit distance 1 (agent: a, b, c; human: a, c); "
        "first at #2: agent has b(), human has c()"
    )
    result = seq_result(calls("a"), calls("a", "b"))
    assert result.reason.endswith("first at #2: agent has nothing, human has b()")
    result = seq_result([], calls("a"))
    assert "(agent: none; human: a)" in result.reason
    # Long lists, long tool names and long arguments stay short.
    many = calls(*(f"tool_{i}" for i in range(400)))
    result = seq_result(many, list(reversed(many)))
    assert result.distance == 400  # no two positions hold the same tool
    assert "… (400 in all)" in result.reason
    assert len(result.reason) < 400


def test_sequence_distance_is_not_computed_past_the_bound() -> None:
    side = int(MAX_EDIT_CELLS**0.5) + 1
    agent = calls(*(f"a{i}" for i in range(side)))
    human = calls(*(f"h{i}" for i in range(side)))
    result = seq_result(agent, human)
    assert (result.matched, result.distance) == (False, None)
    assert f"edit distance not computed for lists this long ({side} and {side})" in result.reason
    assert "distance" not in result.to_json()
    # Equal ends are dropped first, so long lists that differ in a few places still get one.
    common = calls(*(f"c{i}" for i in range(2 * side)))
    result = seq_result([*common, *calls("x"), *common], [*common, *calls("y", "z"), *common])
    assert result.distance == 2
    assert seq_result(common + common, copy.deepcopy(common + common)).distance == 0
    huge = [Action("t" * 10_000, {"amount": "x" * 10_000})]
    result = seq_result(huge, [])
    assert result.distance == 1
    assert len(result.reason) < 300


def test_per_tool_args_override_the_global_ones() -> None:
    rule = ActionsRule(
        {"amount": FieldRule(NUMBER, abs=1), "note": FieldRule()},
        tools={
            "refund": ToolRule({"amount": FieldRule(NUMBER, abs=0.01), "note": FieldRule(IGNORE)}),
            "email": ToolRule({"to": FieldRule(TEXT)}),
        },
    )
    # refund: amount within 0.01 only, note ignored.
    agent = [Action("refund", {"amount": 10.0, "note": "a"})]
    assert actions_result(rule, agent, [Action("refund", {"amount": 10.005, "note": "b"})]).matched
    result = actions_result(rule, agent, [Action("refund", {"amount": 10.5, "note": "a"})])
    assert not result.matched
    assert result.reason.startswith("agent proposed refund(amount=10.0) with no human")
    # Other tools keep the global rules: amount within 1, note exact.
    other = [Action("credit", {"amount": 10.0, "note": "a"})]
    assert actions_result(rule, other, [Action("credit", {"amount": 10.5, "note": "a"})]).matched
    assert not actions_result(rule, other, [Action("credit", {"amount": 10, "note": "b"})]).matched
    # email: its own path on top of the global ones.
    mail = [Action("email", {"to": "Jane@Example.com", "amount": 1, "note": "n"})]
    twin = [Action("email", {"to": " jane@example.com", "amount": 1.5, "note": "n"})]
    assert actions_result(rule, mail, twin).matched
    bob = [Action("email", {"to": "bob", "amount": 1, "note": "n"})]
    assert not actions_result(rule, mail, bob).matched
    # The same holds in order.
    assert seq_result(agent + mail, [Action("refund", {"amount": 10.001}), *twin], rule).matched


def test_per_tool_critical() -> None:
    rule = ActionsRule(tools={"refund": ToolRule(critical=True)}, args={"amount": FieldRule()})
    rules = CompareRules(actions=rule)
    # A mismatch on another tool is not critical.
    minor = diff(rules, {}, {}, calls("refund=10", "email"), calls("refund=10"))
    assert (minor.agree, minor.critical_miss) == (False, False)
    assert not minor.fields[0].critical
    # One on the critical tool is, on either side, and the reason says so.
    for agent, human in ((calls("refund=10"), calls("refund=11")), (calls(), calls("refund=1"))):
        for a, h in ((agent, human), (human, agent)):
            miss = diff(rules, {}, {}, a, h)
            assert (miss.agree, miss.critical_miss) == (False, True)
            assert miss.fields[0].critical
            assert miss.fields[0].reason.endswith("; critical: refund differ")
    # Agreement is never critical.
    ok = diff(rules, {}, {}, calls("email", "refund=3"), calls("refund=3", "email"))
    assert (ok.agree, ok.critical_miss) == (True, False)
    # In order: the refunds alone must agree in order; moving them past another tool is
    # a mismatch, but not a critical one.
    ordered = CompareRules(actions=dataclasses.replace(rule, order=SEQUENCE))
    moved = diff(ordered, {}, {}, calls("refund=1", "email"), calls("email", "refund=1"))
    assert (moved.agree, moved.critical_miss, moved.fields[0].distance) == (False, False, 2)
    swapped = diff(ordered, {}, {}, calls("refund=1", "refund=2"), calls("refund=2", "refund=1"))
    assert (swapped.agree, swapped.critical_miss) == (False, True)
    assert actions_result(
        rule, calls("refund=1", "refund=2"), calls("refund=2", "refund=1")
    ).matched


# -- reasons ---------------------------------------------------------------------------------


def test_long_values_are_truncated_in_reasons() -> None:
    long_a, long_b = "a" * 500, "b" * 500
    for rule in (FieldRule(EXACT), FieldRule(TEXT), FieldRule(SET)):
        a, b = (long_a, long_b) if rule.match is not SET else ([long_a], [long_b])
        result = compare_one(rule, a, b)
        assert not result.matched
        assert len(result.reason) < 200
        assert "…" in result.reason
    result = actions_result(AMOUNT_WITHIN_1, [Action("t", {"amount": long_a})], [])
    assert len(result.reason) < 120


def test_same_rules_object_reused_and_equal_rules_agree() -> None:
    rules = CompareRules({"a": FieldRule(NUMBER, abs=1)})
    for _ in range(3):
        assert diff(rules, {"a": 1}, {"a": 1.5}).agree
    twin = CompareRules({"a": FieldRule(NUMBER, abs=0)})
    assert not diff(twin, {"a": 1}, {"a": 1.5}).agree


# -- properties ------------------------------------------------------------------------------

KEYS = ("a", "b", "c")
ARG_KEYS = ("amount", "note", "x")
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from([0.5, 1.0, -1.5, 100.0]),
    st.sampled_from(["x", "X", " x ", "y", "billing", "payments", "e\u0301", "\u00e9"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)
    ),
    max_leaves=8,
)
decisions = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=3)
field_rules = st.builds(
    FieldRule,
    match=st.sampled_from(MatchKind),
    critical=st.booleans(),
    abs=st.sampled_from([0.0, 0.01, 0.5, 2.0]),
    rel=st.sampled_from([0.0, 0.01, 0.1]),
    equivalent=st.sampled_from([(), (("billing", "payments"),), (("x", "y"), (1, "one"))]),
)
paths = st.lists(st.sampled_from(KEYS), min_size=1, max_size=3).map(".".join)
compare_rules = st.builds(
    CompareRules,
    fields=st.dictionaries(paths, field_rules, max_size=4),
    unlisted=st.sampled_from([EXACT, IGNORE]),
    actions=st.none()
    | st.builds(
        ActionsRule,
        args=st.dictionaries(st.sampled_from(["amount", "note", "x.a"]), field_rules, max_size=3),
        critical=st.booleans(),
        order=st.sampled_from(ActionsOrder),
        tools=st.dictionaries(
            st.sampled_from(["refund", "email"]),
            st.builds(
                ToolRule,
                args=st.dictionaries(st.sampled_from(["amount", "note"]), field_rules, max_size=2),
                critical=st.booleans(),
            ),
            max_size=2,
        ),
    ),
)
actions = st.lists(
    st.builds(
        Action,
        tool=st.sampled_from(["refund", "email"]),
        args=st.dictionaries(st.sampled_from(ARG_KEYS), json_values, max_size=3),
    ),
    max_size=4,
)
PROPERTY = settings(max_examples=200, deadline=None)


def mutate(draw: st.DrawFn, value: Any) -> Any:
    """A value near ``value``: small numeric nudges, case/space changes, reorders, edits."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(json_values)
    if isinstance(value, dict):
        out = {k: mutate(draw, v) for k, v in value.items()}
        if choice == 1 and out:
            out.pop(draw(st.sampled_from(sorted(out))))
        return out
    if isinstance(value, list):
        items = [mutate(draw, v) for v in value]
        return draw(st.permutations(items)) if choice <= 3 else items
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return value + draw(st.sampled_from([0.001, -0.004, 0.3, 1, -2])) if choice <= 4 else value
    if isinstance(value, str) and choice <= 4:
        return draw(st.sampled_from([value.upper(), f" {value}  ", value + value]))
    return value


@st.composite
def pairs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any], list[Action], list[Action]]:
    agent = draw(decisions)
    human = draw(decisions) if draw(st.integers(0, 4)) == 0 else mutate(draw, agent)
    agent_actions = draw(actions)
    if draw(st.integers(0, 4)) == 0:
        human_actions = draw(actions)
    else:
        nudged = [Action(a.tool, mutate(draw, a.args)) for a in agent_actions]
        human_actions = list(draw(st.permutations(nudged)))
    return agent, human, agent_actions, human_actions


def verdict(result: DiffResult) -> tuple[bool, bool]:
    return result.agree, result.critical_miss


def resolve(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, Mapping) or part not in obj:
            return ABSENT
        obj = obj[part]
    return obj


def assign(obj: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        obj = obj[part]
    obj[last] = value


@pytest.mark.slow  # 200 generated cases
@PROPERTY
@given(compare_rules, decisions, actions)
def test_property_a_decision_agrees_with_itself(
    rules: CompareRules, decision: dict[str, Any], acts: list[Action]
) -> None:
    assert verdict(diff(rules, decision, decision, acts, acts)) == (True, False)
    assert diff(rules, decision, copy.deepcopy(decision), acts, copy.deepcopy(acts)).agree


@pytest.mark.slow  # 200 generated cases
@PROPERTY
@given(compare_rules, decisions, actions, st.data())
def test_property_set_fields_and_actions_ignore_order_and_duplicates(
    rules: CompareRules, decision: dict[str, Any], acts: list[Action], data: st.DataObject
) -> None:
    shuffled = copy.deepcopy(decision)
    for path, rule in rules.fields.items():
        value = resolve(shuffled, path)
        if rule.match is SET and isinstance(value, list) and value:
            extra = data.draw(st.lists(st.sampled_from(value), max_size=3))
            assign(shuffled, path, data.draw(st.permutations(value)) + extra)
    ordered = rules.actions is not None and rules.actions.order is SEQUENCE
    reordered = list(acts) if ordered else data.draw(st.permutations(acts))
    assert diff(rules, decision, shuffled, acts, reordered).agree
    assert diff(rules, shuffled, decision, reordered, acts).agree


@pytest.mark.slow  # 200 generated cases
@PROPERTY
@given(compare_rules, pairs())
def test_property_verdict_is_symmetric(rules: CompareRules, pair: tuple[Any, ...]) -> None:
    agent, human, agent_actions, human_actions = pair
    forward = diff(rules, agent, human, agent_actions, human_actions)
    backward = diff(rules, human, agent, human_actions, agent_actions)
    assert verdict(forward) == verdict(backward)
    assert [f.path for f in forward.fields if not f.matched] or forward.agree
    assert forward.agree == all(f.matched for f in forward.fields)


def with_args(acts: ActionsRule, change: Any) -> ActionsRule:
    """``acts`` with ``change(tool, path, rule)`` applied to every argument rule (``tool``
    is ``None`` for the global ones)."""
    return dataclasses.replace(
        acts,
        args={p: change(None, p, r) for p, r in acts.args.items()},
        tools={
            t: dataclasses.replace(tr, args={p: change(t, p, r) for p, r in tr.args.items()})
            for t, tr in acts.tools.items()
        },
    )


def loosened(rules: CompareRules, change: Any) -> CompareRules:
    fields = {path: change(rule) for path, rule in rules.fields.items()}
    acts = rules.actions
    if acts is not None:
        acts = with_args(acts, lambda _t, _p, r: change(r))
    return CompareRules(fields, rules.unlisted, acts)


@pytest.mark.slow  # 200 generated cases
@PROPERTY
@given(compare_rules, pairs())
def test_property_ignoring_a_field_never_breaks_agreement(
    rules: CompareRules, pair: tuple[Any, ...]
) -> None:
    before = diff(rules, *pair)
    targets: list[tuple[str, str | None, str]] = [("field", None, p) for p in rules.fields]
    if rules.actions is not None:
        targets += [("arg", None, p) for p in rules.actions.args]
        targets += [("arg", t, p) for t, tr in rules.actions.tools.items() for p in tr.args]
    for kind, tool, target in targets:
        fields = {
            p: dataclasses.replace(r, match=IGNORE) if (kind, target) == ("field", p) else r
            for p, r in rules.fields.items()
        }
        acts = rules.actions
        if acts is not None:
            acts = with_args(
                acts,
                lambda t, p, r, tool=tool, target=target, kind=kind: (
                    dataclasses.replace(r, match=IGNORE)
                    if (kind, tool, target) == ("arg", t, p)
                    else r
                ),
            )
        after = diff(CompareRules(fields, rules.unlisted, acts), *pair)
        assert after.agree or not before.agree
        assert not after.critical_miss or before.critical_miss
    unlisted_ignored = diff(dataclasses.replace(rules, unlisted=IGNORE), *pair)
    assert unlisted_ignored.agree or not before.agree
    everything_ignored = diff(
        loosened(rules, lambda r: dataclasses.replace(r, match=IGNORE)), *pair
    )
    assert everything_ignored.agree or not before.agree


@pytest.mark.slow  # 200 generated cases
@PROPERTY
@given(
    compare_rules,
    pairs(),
    st.floats(0, 10, allow_nan=False),
    st.floats(0, 1, allow_nan=False),
)
def test_property_more_tolerance_never_breaks_agreement(
    rules: CompareRules, pair: tuple[Any, ...], more_abs: float, more_rel: float
) -> None:
    before = diff(rules, *pair)
    wider = loosened(
        rules, lambda r: dataclasses.replace(r, abs=r.abs + more_abs, rel=r.rel + more_rel)
    )
    after = diff(wider, *pair)
    assert after.agree or not before.agree
    assert not after.critical_miss or before.critical_miss


def reference_distance(agent: Sequence[Action], human: Sequence[Action], rule: ActionsRule) -> int:
    """Levenshtein by plain recursion over the whole lists, each pair judged equal by the
    multiset comparison of the two single actions: independent of the implementation's
    prefix/suffix trimming and row-by-row table."""
    same = [[actions_result(rule, [x], [y]).matched for y in human] for x in agent]
    table = [[0] * (len(human) + 1) for _ in range(len(agent) + 1)]
    for i in range(len(agent) + 1):
        for j in range(len(human) + 1):
            if i == 0 or j == 0:
                table[i][j] = i + j
            else:
                table[i][j] = min(
                    table[i - 1][j] + 1,
                    table[i][j - 1] + 1,
                    table[i - 1][j - 1] + (0 if same[i - 1][j - 1] else 1),
                )
    return table[-1][-1]


action_rules = st.builds(
    ActionsRule,
    args=st.dictionaries(st.sampled_from(["amount", "note", "x.a"]), field_rules, max_size=3),
    tools=st.dictionaries(
        st.sampled_from(["refund", "email"]),
        st.builds(
            ToolRule, args=st.dictionaries(st.sampled_from(["amount"]), field_rules, max_size=1)
        ),
        max_size=2,
    ),
)


@pytest.mark.slow  # 200 generated cases
@PROPERTY
@given(action_rules, pairs())
def test_property_sequence_distance(rule: ActionsRule, pair: tuple[Any, ...]) -> None:
    _, _, agent, human = pair
    ordered = seq_result(agent, human, rule)  # symmetric: checked inside
    unordered = actions_result(rule, agent, human)
    assert ordered.distance == reference_distance(agent, human, rule)
    # Equal in order: same length, each position equal; then equal as multisets too.
    pairwise = len(agent) == len(human) and all(
        actions_result(rule, [x], [y]).matched for x, y in zip(agent, human, strict=True)
    )
    assert (ordered.distance == 0) == pairwise == ordered.matched
    if ordered.matched:
        assert unordered.matched
    assert abs(len(agent) - len(human)) <= (ordered.distance or 0) <= max(len(agent), len(human))
    assert seq_result(agent, copy.deepcopy(agent), rule).distance == 0
