from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shadow.errors import PolicyError
from shadow.model import Level
from shadow.policy import (
    REDACTED,
    ActionsOrder,
    AutonomyMode,
    FieldRule,
    MatchKind,
    ToolRule,
    load_policy,
    parse_policy,
)

DESIGN_EXAMPLE = """
defaults:
  unknown_task_types: reject        # or: default policy
task_types:
  refund_request:
    sample_rate: 1.0
    redact: [payload.customer.email]
    compare:
      fields:
        action: {match: exact, critical: true}
        amount: {match: number, abs: 0.01}
        reason: {match: text}
        tags:   {match: set}
        queue:  {match: exact, equivalent: [[billing, payments]]}
        note:   {match: ignore}
      unlisted: exact
    autonomy:
      start: L0
      ceiling: L3
      mode: propose
      alpha: 0.05
      gates:
        L1: {agreement: 0.90, min_samples: 100}
        L2: {agreement: 0.95, min_samples: 300}
        L3: {agreement: 0.98, min_samples: 1000, max_critical: 0}
      audit_rate: 0.05
"""


def test_design_example_parses_exactly() -> None:
    policy = parse_policy(DESIGN_EXAMPLE, source="policy.yaml")
    task = policy.task_types["refund_request"]
    assert task.sample_rate == 1.0
    assert task.redact == ("payload.customer.email",)
    fields = task.compare.fields
    assert fields["action"].match is MatchKind.EXACT
    assert fields["action"].critical
    assert fields["amount"].match is MatchKind.NUMBER
    assert fields["amount"].abs == 0.01
    assert fields["queue"].equivalent == (("billing", "payments"),)
    assert fields["note"].match is MatchKind.IGNORE
    assert task.compare.unlisted is MatchKind.EXACT
    auto = task.autonomy
    assert (auto.start, auto.ceiling, auto.mode) == (Level.L0, Level.L3, AutonomyMode.PROPOSE)
    assert auto.gates[Level.L3].max_critical == 0
    assert auto.gates[Level.L2].min_samples == 300
    assert auto.gates[Level.L1].max_critical is None
    assert policy.for_task("refund_request") is task
    assert policy.for_task("unknown") is None
    assert len(task.hash) == 32


def test_hash_changes_with_rules_not_with_formatting() -> None:
    a = parse_policy(DESIGN_EXAMPLE).task_types["refund_request"]
    reformatted = DESIGN_EXAMPLE.replace("{match: text}", "\n          match: text")
    b = parse_policy(reformatted).task_types["refund_request"]
    c = parse_policy(DESIGN_EXAMPLE.replace("abs: 0.01", "abs: 0.02")).task_types["refund_request"]
    assert a.hash == b.hash
    assert a.hash != c.hash


def test_default_policy_for_unknown_task_types() -> None:
    text = """
defaults:
  unknown_task_types: default
  policy:
    compare: {unlisted: ignore}
task_types:
  t1: {}
"""
    policy = parse_policy(text)
    fallback = policy.for_task("anything")
    assert fallback is not None
    assert fallback.compare.unlisted is MatchKind.IGNORE
    assert fallback.autonomy.ceiling is Level.L0


def test_redact_payload_removes_nested_paths_without_touching_input() -> None:
    task = parse_policy(DESIGN_EXAMPLE).task_types["refund_request"]
    payload = {"customer": {"email": "a@b.c", "tier": "gold"}, "amount": 1}
    assert task.redact_payload(payload) == {"customer": {"tier": "gold"}, "amount": 1}
    assert payload["customer"] == {"email": "a@b.c", "tier": "gold"}
    assert task.redact_payload({"customer": "not an object"}) == {"customer": "not an object"}


def test_redact_payload_reaches_into_lists_at_any_depth() -> None:
    task = parse_policy(
        """
task_types:
  refund:
    redact: [payload.customer.email, payload.orders.card.number]
"""
    ).task_types["refund"]
    payload: dict[str, Any] = {
        "customer": [
            {"email": "a@b.c", "tier": "gold"},
            [{"email": "d@e.f"}, [{"email": "g@h.i", "name": "x"}]],  # lists of lists
            "a@b.c as a plain string is not at the path",
            None,
        ],
        "orders": [{"card": [{"number": "4111", "brand": "visa"}]}, {"card": {"number": "5500"}}],
        "amount": 1,
    }
    assert task.redact_payload(payload) == {
        "customer": [
            {"tier": "gold"},
            [{}, [{"name": "x"}]],
            "a@b.c as a plain string is not at the path",
            None,
        ],
        "orders": [{"card": [{"brand": "visa"}]}, {"card": {}}],
        "amount": 1,
    }
    assert payload["customer"][0] == {"email": "a@b.c", "tier": "gold"}  # input untouched
    # The last step may be a list too: every object in it loses the key.
    assert task.redact_payload({"customer": {"email": ["a@b.c"], "id": 1}}) == {
        "customer": {"id": 1}
    }


DEAD_LETTER_POLICY = """
defaults:
  unknown_task_types: reject
task_types:
  refund:
    redact: [payload.customer.email]
  card:
    redact: [payload.card]
  plain: {}
"""


def test_a_dead_letter_record_gets_its_task_types_paths_or_every_path() -> None:
    policy = parse_policy(DEAD_LETTER_POLICY)
    assert policy.redacts
    assert not parse_policy("task_types: {plain: {}}").redacts
    secret = {"customer": [{"email": "S"}], "card": "C", "n": 1}
    # A known task type: its own paths only.
    assert policy.redact_record({"task_type": "refund", "payload": secret})["payload"] == {
        "customer": [{}],
        "card": "C",
        "n": 1,
    }
    assert policy.redact_record({"task_type": "plain", "payload": secret})["payload"] == secret
    # Unknown, missing or not a string: it could be any task type, so every path applies.
    everything = {"customer": [{}], "n": 1}
    for record in (
        {"task_type": "nope", "payload": secret},
        {"payload": secret},
        {"task_type": ["refund"], "payload": secret},
        {"kind": "outcome", "event_id": "x", "decision": {}, "payload": secret},
    ):
        assert policy.redact_record(record)["payload"] == everything
    # A payload a path cannot be found in is replaced whole; one with no path applying is kept.
    assert policy.redact_record({"task_type": "refund", "payload": "S"})["payload"] == REDACTED
    assert policy.redact_record({"task_type": "plain", "payload": "S"})["payload"] == "S"
    # Records without a payload (outcomes, comparisons) come back as they were.
    outcome = {"event_id": "x", "decision": {"customer": {"email": "d"}}}
    assert policy.redact_record(outcome) == outcome
    assert secret == {"customer": [{"email": "S"}], "card": "C", "n": 1}  # input untouched


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        # Parsed records come back redacted (compact JSON), or as they were when nothing
        # in them is redacted.
        (
            '{"task_type": "refund", "payload": {"customer": [{"email": "S"}, [{"email": "S"}]]}}',
            '{"task_type":"refund","payload":{"customer":[{},[{}]]}}',
        ),
        ('{"task_type": "plain",  "payload": {"card": "S"}}', None),
        ('{"event_id": "x", "decision": {"card": "S"}}', None),
        # A repeated key is ambiguous: every path, and only one copy of each key.
        (
            '{"task_type": "refund", "payload": {"card": "S"}, "task_type": "plain"}',
            '{"task_type":"plain","payload":{}}',
        ),
        (
            '{"task_type": "refund", "payload": {"customer": {"email": "S"}}, "payload": {}}',
            '{"task_type":"refund","payload":{}}',
        ),
        # What does not parse as one object is not kept (the prefix is 0 here).
        ("not json S", ""),
        ('{"task_type": "refund", "payload": {"customer": {"email": "S"}', ""),
        ('[{"task_type": "refund", "payload": {"card": "S"}}]', ""),
        ('"{\\"payload\\": {\\"card\\": \\"S\\"}}"', ""),
        ('{"a": 1} {"payload": {"card": "S"}}', ""),
        ('{"payload": {"card": "\\xffS"}}', ""),  # non-UTF-8 bytes shown as \\xff
        ('{"payload": ' + "[" * 5000 + "]" * 5000 + "}", ""),
        ('{"task_type": "refund", "payload": {"n": 1' + "0" * 5000 + "}}", ""),
    ],
)
def test_redact_raw_keeps_only_redacted_records(text: str, kept: str | None) -> None:
    policy = parse_policy(DEAD_LETTER_POLICY)
    got = policy.redact_raw(text, unparsed=0)
    if kept is None:
        assert got == text
    elif kept == "":
        assert got is None
    else:
        assert got == kept
        assert json.loads(got)  # still a record


def test_redact_raw_keeps_a_prefix_of_what_does_not_parse_when_asked() -> None:
    policy = parse_policy(DEAD_LETTER_POLICY)
    assert policy.redact_raw("not json at all", unparsed=3) == "not…[12 more characters]"
    assert policy.redact_raw("short", unparsed=10) == "short"
    assert policy.redact_raw("short", unparsed=0) is None
    # A policy that redacts nothing keeps every record as it came, even an ambiguous one.
    repeated = '{"task_type": "plain", "payload": {"card": "S"}, "task_type": "refund"}'
    assert parse_policy("task_types: {plain: {}}").redact_raw(repeated, unparsed=0) == repeated


def test_redact_reason_withholds_what_lies_inside_a_redacted_field() -> None:
    policy = parse_policy(DEAD_LETTER_POLICY)
    inside = "payload.customer[2].email.S-key[0][0]: nested deeper than 32 levels; occurred_at: bad"
    assert policy.redact_reason(inside) == (
        "payload.customer[2].email…: (withheld: inside a redacted field)"
    )
    assert "S-key" not in policy.redact_reason("payload.card.S-key: numbers must be finite")
    for fine in (
        "payload.customer.email: key appears more than once in one JSON object",
        "payload.customer.emails.x: nested deeper than 32 levels",
        "event_id: required; expected a non-empty string",
    ):
        assert policy.redact_reason(fine) == fine
    assert parse_policy("task_types: {plain: {}}").redact_reason(inside) == inside


def test_load_policy_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(DESIGN_EXAMPLE)
    assert load_policy(path).source == str(path)
    with pytest.raises(PolicyError, match="cannot read file"):
        load_policy(tmp_path / "missing.yaml")
    path.write_bytes(b"\xff\xfe bad")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(path)


def _task(body: str) -> str:
    return "task_types:\n  refund:\n" + "\n".join("    " + line for line in body.splitlines())


# Each bad policy: (yaml, key path in the error, words of the fix)
BAD = [
    ("task_types: {}", "task_types", "add at least one task type"),
    ("[1, 2]", "", "expected a mapping"),
    ("task_types:\n  t: {}\nextra: 1", "extra", "unknown key"),
    (
        "defaults: {unknown_task_types: maybe}\ntask_types: {t: {}}",
        "defaults.unknown_task_types",
        "use reject or default",
    ),
    (_task("sample_rate: 1.5"), "task_types.refund.sample_rate", "[0.0, 1.0]"),
    (_task("samplerate: 1"), "task_types.refund.samplerate", "unknown key"),
    (_task("redact: [customer.email]"), "task_types.refund.redact[0]", "under payload"),
    (
        _task("compare: {fields: {amount: {match: fuzzy}}}"),
        "task_types.refund.compare.fields.amount.match",
        "unknown match kind 'fuzzy'",
    ),
    (
        _task("compare: {fields: {amount: {match: number, abs: -0.5}}}"),
        "task_types.refund.compare.fields.amount.abs",
        "negative",
    ),
    (
        _task("compare: {fields: {amount: {match: number, rel: -1}}}"),
        "task_types.refund.compare.fields.amount.rel",
        "negative",
    ),
    (
        _task("compare: {fields: {amount: {match: exact, abs: 1}}}"),
        "task_types.refund.compare.fields.amount.abs",
        "only to match: number",
    ),
    (
        _task("compare: {fields: {q: {match: number, equivalent: [[a, b]]}}}"),
        "task_types.refund.compare.fields.q.equivalent",
        "not number",
    ),
    (
        _task("compare: {fields: {q: {equivalent: [[a]]}}}"),
        "task_types.refund.compare.fields.q.equivalent[0]",
        "at least two",
    ),
    (
        _task("compare: {fields: {q: {equivalent: [[a, b], [b, c]]}}}"),
        "task_types.refund.compare.fields.q.equivalent[1]",
        "more than one class",
    ),
    (
        _task("compare: {fields: {q: {critical: yes please}}}"),
        "task_types.refund.compare.fields.q.critical",
        "true or false",
    ),
    (_task("compare: {unlisted: fuzzy}"), "task_types.refund.compare.unlisted", "exact or ignore"),
    (
        _task("compare: {actions: {args: {amount: {match: number, abs: -1}}}}"),
        "task_types.refund.compare.actions.args.amount.abs",
        "negative",
    ),
    (
        _task("compare: {actions: {order: sorted}}"),
        "task_types.refund.compare.actions.order",
        "use multiset or sequence",
    ),
    (
        _task("compare: {actions: {order: [sequence]}}"),
        "task_types.refund.compare.actions.order",
        "use multiset or sequence",
    ),
    (
        _task("compare: {actions: {ordered: true}}"),
        "task_types.refund.compare.actions.ordered",
        "unknown key; allowed here: args, critical, order, tools",
    ),
    (
        _task("compare: {actions: {tools: [issue_refund]}}"),
        "task_types.refund.compare.actions.tools",
        "mapping of tool name",
    ),
    (
        _task("compare: {actions: {tools: {issue_refund: [amount]}}}"),
        "task_types.refund.compare.actions.tools.issue_refund",
        "expected a mapping of keys",
    ),
    (
        _task("compare: {actions: {tools: {issue_refund: {match: number}}}}"),
        "task_types.refund.compare.actions.tools.issue_refund.match",
        "unknown key; allowed here: args, critical",
    ),
    (
        _task("compare: {actions: {tools: {issue_refund: {critical: maybe}}}}"),
        "task_types.refund.compare.actions.tools.issue_refund.critical",
        "true or false",
    ),
    (
        _task("compare: {actions: {tools: {7: {critical: true}}}}"),
        "task_types.refund.compare.actions.tools.7",
        "non-empty strings",
    ),
    (
        _task("compare: {actions: {tools: {issue_refund: {args: [amount]}}}}"),
        "task_types.refund.compare.actions.tools.issue_refund.args",
        "mapping of argument path",
    ),
    (
        _task("compare: {actions: {tools: {t: {args: {amount: {critical: true}}}}}}"),
        "task_types.refund.compare.actions.tools.t.args.amount.critical",
        "unknown key; allowed here: abs, equivalent, match, rel",
    ),
    (
        _task("compare: {actions: {tools: {t: {args: {amount: {match: fuzzy}}}}}}"),
        "task_types.refund.compare.actions.tools.t.args.amount.match",
        "unknown match kind 'fuzzy'",
    ),
    (
        _task("compare: {actions: {tools: {t: {args: {a: {match: text, abs: 1}}}}}}"),
        "task_types.refund.compare.actions.tools.t.args.a.abs",
        "only to match: number",
    ),
    (_task("autonomy: {start: L9}"), "task_types.refund.autonomy.start", "unknown level"),
    (_task("autonomy: {ceiling: top}"), "task_types.refund.autonomy.ceiling", "unknown level"),
    (
        _task("autonomy: {start: L2, ceiling: L1, gates: {L1: {agreement: 0.9}}}"),
        "task_types.refund.autonomy.ceiling",
        "below start",
    ),
    (_task("autonomy: {mode: yolo}"), "task_types.refund.autonomy.mode", "auto or propose"),
    (_task("autonomy: {alpha: 0}"), "task_types.refund.autonomy.alpha", "(0.0, 1.0)"),
    (_task("autonomy: {alpha: 1.0}"), "task_types.refund.autonomy.alpha", "(0.0, 1.0)"),
    (_task("autonomy: {audit_rate: 1.2}"), "task_types.refund.autonomy.audit_rate", "[0.0, 1.0]"),
    (
        _task("autonomy: {gates: {L7: {agreement: 0.9}}}"),
        "task_types.refund.autonomy.gates.L7",
        "unknown level",
    ),
    (
        _task("autonomy: {gates: {L0: {agreement: 0.9}}}"),
        "task_types.refund.autonomy.gates.L0",
        "gates begin at L1",
    ),
    (
        _task("autonomy: {gates: {L1: {min_samples: 5}}}"),
        "task_types.refund.autonomy.gates.L1.agreement",
        "required",
    ),
    (
        _task("autonomy: {gates: {L1: {agreement: 0.9, min_samples: -3}}}"),
        "task_types.refund.autonomy.gates.L1.min_samples",
        "whole number",
    ),
    (
        _task("autonomy: {gates: {L1: {agreement: 0.95}, L2: {agreement: 0.9}}}"),
        "task_types.refund.autonomy.gates.L2.agreement",
        "must not get easier",
    ),
    (
        _task(
            "autonomy: {gates: {L1: {agreement: 0.9, min_samples: 300}, "
            "L2: {agreement: 0.95, min_samples: 100}}}"
        ),
        "task_types.refund.autonomy.gates.L2.min_samples",
        "must not get easier",
    ),
    (
        _task("autonomy: {ceiling: L2, gates: {L1: {agreement: 0.9}}}"),
        "task_types.refund.autonomy.gates",
        "no gate for L2",
    ),
    (
        _task("autonomy: {gates: {L1: {agreement: 0.9, floor: 1}}}"),
        "task_types.refund.autonomy.gates.L1.floor",
        "unknown key",
    ),
]


@pytest.mark.parametrize(("text", "path", "fix"), BAD)
def test_bad_policy_names_file_key_path_and_fix(text: str, path: str, fix: str) -> None:
    with pytest.raises(PolicyError) as exc:
        parse_policy(text, source="policy.yaml")
    lines = str(exc.value).splitlines()
    expected = f"policy.yaml: {path}: " if path else "policy.yaml: "
    matching = [line for line in lines if line.startswith(expected) and fix in line]
    assert matching, f"no line for {path!r} with {fix!r} in:\n{exc.value}"


def test_every_problem_is_reported_at_once() -> None:
    text = _task("sample_rate: 3\nautonomy: {alpha: 2, mode: yolo}")
    with pytest.raises(PolicyError) as exc:
        parse_policy(text, source="p.yaml")
    assert {p.path for p in exc.value.problems} == {
        "task_types.refund.sample_rate",
        "task_types.refund.autonomy.alpha",
        "task_types.refund.autonomy.mode",
    }


def test_invalid_yaml_and_duplicate_keys_say_where() -> None:
    with pytest.raises(PolicyError, match=r"invalid YAML: line 2"):
        parse_policy("task_types:\n  t: {a: [1, 2}\n", source="p.yaml")
    with pytest.raises(PolicyError, match="duplicate key 't'"):
        parse_policy("task_types:\n  t: {}\n  t: {}\n", source="p.yaml")


def test_sampling_and_audit_are_stable_and_close_to_the_rate() -> None:
    text = _task("sample_rate: 0.3\nautonomy: {audit_rate: 0.1}")
    task = parse_policy(text).task_types["refund"]
    ids = [f"e{i}" for i in range(20_000)]
    sampled = [task.sampled(i) for i in ids]
    assert sampled == [task.sampled(i) for i in ids]
    assert 0.28 < sum(sampled) / len(ids) < 0.32
    audited = sum(task.audited(i) for i in ids) / len(ids)
    assert 0.085 < audited < 0.115
    everything = parse_policy(_task("sample_rate: 1.0")).task_types["refund"]
    assert all(everything.sampled(i) for i in ids[:100])
    nothing = parse_policy(_task("sample_rate: 0")).task_types["refund"]
    assert not any(nothing.sampled(i) for i in ids[:1000])


def test_actions_order_and_per_tool_rules_parse() -> None:
    policy = parse_policy(
        _task(
            "compare:\n"
            "  actions:\n"
            "    order: sequence\n"
            "    args: {amount: {match: number, abs: 0.01}, note: {match: text}}\n"
            "    tools:\n"
            "      issue_refund:\n"
            "        critical: true\n"
            "        args: {amount: {match: number, rel: 0.1}, note: {match: ignore}}\n"
            "      send_email: {args: {to: {match: exact}}}\n"
            "      close_ticket: {}\n"
        )
    )
    actions = policy.task_types["refund"].compare.actions
    assert actions is not None
    assert actions.order is ActionsOrder.SEQUENCE
    assert not actions.critical
    assert set(actions.tools) == {"issue_refund", "send_email", "close_ticket"}
    refund = actions.args_for("issue_refund")
    assert refund["amount"] == FieldRule(MatchKind.NUMBER, rel=0.1)
    assert refund["note"].match is MatchKind.IGNORE
    assert actions.tools["issue_refund"].critical
    email = actions.args_for("send_email")
    assert set(email) == {"amount", "note", "to"}  # the global paths, plus its own
    assert actions.args_for("close_ticket") == actions.args
    assert actions.args_for("unlisted_tool") == actions.args
    assert actions.tools["close_ticket"] == ToolRule()
    default = parse_policy(_task("compare: {actions: {}}")).task_types["refund"].compare.actions
    assert default is not None
    assert (default.order, dict(default.tools)) == (ActionsOrder.MULTISET, {})


def test_actions_order_changes_the_compare_hash() -> None:
    base = parse_policy(_task("compare: {actions: {}}")).task_types["refund"]
    ordered = parse_policy(_task("compare: {actions: {order: sequence}}")).task_types["refund"]
    per_tool = parse_policy(_task("compare: {actions: {tools: {t: {critical: true}}}}")).task_types[
        "refund"
    ]
    assert len({base.compare_hash, ordered.compare_hash, per_tool.compare_hash}) == 3


def review_policy_of(review: Any) -> Any:
    body: dict[str, Any] = {"task_types": {"t": {"review": review}}}
    return parse_policy(json.dumps(body)).task_types["t"].review


def test_review_keys_have_defaults_and_parse() -> None:
    default = review_policy_of(None)
    assert "human_error" in default.reason_codes
    assert default.not_against_agent == frozenset()
    assert (default.claim_ttl, default.agreement_share, default.reviews_per_case) == (900, 0.05, 1)
    custom = review_policy_of(
        {
            "reason_codes": ["wrong", "changed"],
            "not_against_agent": ["changed"],
            "claim_ttl": "90s",
            "agreement_share": 0.2,
            "reviews_per_case": 3,
        }
    )
    assert custom.reason_codes == ("wrong", "changed")
    assert custom.acceptable("human_right", "changed")
    assert not custom.acceptable("human_right", "wrong")
    assert custom.acceptable("both_acceptable", "wrong")
    assert not custom.acceptable("unclear", "changed")
    assert (custom.claim_ttl, custom.agreement_share, custom.reviews_per_case) == (90, 0.2, 3)
    assert review_policy_of({"claim_ttl": "1h"}).claim_ttl == 3600
    assert review_policy_of({"claim_ttl": 30}).claim_ttl == 30


@pytest.mark.parametrize(
    ("review", "path", "says"),
    [
        ({"reason": []}, "task_types.t.review.reason", "unknown key"),
        ({"reason_codes": []}, "task_types.t.review.reason_codes", "non-empty list"),
        ({"reason_codes": ["a b"]}, "task_types.t.review.reason_codes[0]", "is not a code"),
        ({"reason_codes": ["x", "x"]}, "task_types.t.review.reason_codes[1]", "listed twice"),
        ({"not_against_agent": ["nope"]}, "task_types.t.review.not_against_agent[0]", "not one"),
        ({"not_against_agent": "other"}, "task_types.t.review.not_against_agent", "list"),
        ({"claim_ttl": "15 minutes"}, "task_types.t.review.claim_ttl", "duration"),
        ({"claim_ttl": 0}, "task_types.t.review.claim_ttl", "duration"),
        ({"claim_ttl": True}, "task_types.t.review.claim_ttl", "duration"),
        ({"agreement_share": 1.5}, "task_types.t.review.agreement_share", "[0, 1]"),
        ({"reviews_per_case": 0}, "task_types.t.review.reviews_per_case", "1 to 5"),
        ({"reviews_per_case": 2.0}, "task_types.t.review.reviews_per_case", "1 to 5"),
        ([1], "task_types.t.review", "mapping"),
    ],
)
def test_a_wrong_review_key_is_named(review: Any, path: str, says: str) -> None:
    with pytest.raises(PolicyError) as exc:
        review_policy_of(review)
    found = {p.path: p.message for p in exc.value.problems}
    assert path in found, found
    assert says in found[path]


def test_a_gate_judges_agreement_or_the_adjudicated_estimate() -> None:
    def gate(**extra: Any) -> Any:
        gates = {"L1": {"agreement": 0.9, "min_samples": 10, **extra}}
        body = {"task_types": {"t": {"autonomy": {"gates": gates}}}}
        return parse_policy(json.dumps(body)).task_types["t"].autonomy.gates[Level.L1]

    assert gate().evidence == "agreement"
    assert gate(evidence="adjudicated").evidence == "adjudicated"
    with pytest.raises(PolicyError, match=r"gates.L1.evidence: unknown evidence 'reviewed'"):
        gate(evidence="reviewed")


def test_min_outcome_coverage_is_off_unless_set_and_within_0_and_1() -> None:
    def coverage(**extra: Any) -> float | None:
        body = {"task_types": {"t": {"compare": {"unlisted": "exact"}, **extra}}}
        return parse_policy(json.dumps(body)).task_types["t"].min_outcome_coverage

    assert coverage() is None
    assert coverage(min_outcome_coverage=0.8) == 0.8
    assert coverage(min_outcome_coverage=0) == 0.0
    assert coverage(min_outcome_coverage=1) == 1.0
    for bad, says in ((1.5, "out of range"), (-0.1, "out of range"), ("high", "expected a number")):
        with pytest.raises(PolicyError, match=rf"task_types.t.min_outcome_coverage: .*{says}"):
            coverage(min_outcome_coverage=bad)
    # The key is part of the task type's rules: the policy hash changes with it.
    body: dict[str, Any] = {"task_types": {"t": {}}}
    plain = parse_policy(json.dumps(body)).task_types["t"].hash
    body["task_types"]["t"]["min_outcome_coverage"] = 0.8
    assert parse_policy(json.dumps(body)).task_types["t"].hash != plain
