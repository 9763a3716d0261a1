"""The noise floor in a replay (replay/noise.py): the human ceiling of a history's second
opinions, exact and bounded by the live functions, in JSONL and in a sidecar file; the
candidate's repeated tries, marked like live repeats, answered and cached per try, never in
``n``; ``--no-repeats``; malformed second opinions reported like other bad records.

The history: 20 ``claim`` cases ``cl-000`` .. ``cl-019``, the human's code ``A`` for odd
``i`` and ``B`` for even. Second opinions on ``i`` 0..9: alike for 0..6, the other code for
7, 8, 9 (7 of 10 alike); 0..4 carried in the outcome, 5..9 as records of their own
(``"second_opinion": true``). ``cl-010``'s outcome was decided with the agent's answer shown
(``assisted``): its second opinion (a different code) is not the humans' own noise.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from replay.cache import CachedAgent
from replay.document import build_document, deterministic_view
from replay.errors import HistoryError
from replay.history import History, ResponseCache
from replay.model import Selection
from replay.runner import ReplayRunner
from shadow.agent import AgentRunner, HttpAgent
from shadow.cli import main
from shadow.model import Outcome, WorkEvent
from shadow.noise import Bounded
from shadow.policy import Policy, parse_policy
from shadow.store import Store
from tests.shadow.conftest import AgentServer, AgentServerFactory, Reply

N = 20
NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
POLICY = """
task_types:
  claim:
    repeat_rate: {rate}
    repeats: 2
    compare:
      fields:
        code: {{match: exact}}
        note: {{match: text}}
      unlisted: ignore
    autonomy:
      start: L0
      ceiling: L1
      gates:
        L1: {{agreement: 0.6, min_samples: 10}}
"""


def policy(rate: float = 0.5) -> Policy:
    return parse_policy(POLICY.format(rate=rate))


def code(i: int) -> str:
    return "A" if i % 2 else "B"


def other(c: str) -> str:
    return "B" if c == "A" else "A"


def _i(event_id: str) -> int:
    return int(event_id.split("-")[1])


def records() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(N):
        eid = f"cl-{i:03d}"
        out.append(
            {
                "kind": "event",
                "event_id": eid,
                "task_type": "claim",
                "payload": {"i": i},
                "occurred_at": "2026-11-19T10:00:00Z",
            }
        )
        outcome: dict[str, Any] = {
            "kind": "outcome",
            "event_id": eid,
            "decision": {"code": code(i), "note": "ok"},
            "decided_at": "2026-11-19T11:00:00Z",
        }
        second = {"code": code(i) if i < 7 else other(code(i)), "note": "ok"}
        if i < 5:
            outcome["second_opinion"] = {"decision": second, "decided_by": "rev-2"}
        if i == 10:
            outcome["handled_by"] = "assisted"
            outcome["second_opinion"] = {"decision": {"code": other(code(i)), "note": "ok"}}
        out.append(outcome)
        if 5 <= i < 10:
            out.append(
                {
                    "kind": "outcome",
                    "event_id": eid,
                    "decision": second,
                    "decided_by": "rev-2",
                    "decided_at": "2026-11-19T12:00:00Z",
                    "second_opinion": True,
                }
            )
    return out


def write_jsonl(path: Path, items: list[dict[str, Any]] | None = None) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in (items or records())))
    return path


async def write_sidecar(path: Path) -> Path:
    """The history through the real store, as the live sidecar ingests it (second
    opinions into their own table)."""
    recs = records()
    events = [WorkEvent.from_json(r) for r in recs if r["kind"] == "event"]
    outcomes = [Outcome.from_json(r) for r in recs if r["kind"] == "outcome"]
    async with Store(path) as store:
        await store.put_events(events, source="test", now=NOW, needs_agent=[False] * len(events))
        await store.put_outcomes(outcomes, source="test", now=NOW)
    return path


def human_answer(body: dict[str, Any]) -> Reply:
    i = _i(body["event_id"])
    return Reply(200, {"decision": {"code": code(i), "note": "ok"}, "agent_version": "v1"})


def unstable_answer(body: dict[str, Any]) -> Reply:
    """Like the human on first answers; on try 1 of every third case the other code."""
    i = _i(body["event_id"])
    c = other(code(i)) if body.get("repeat") == 1 and i % 3 == 0 else code(i)
    return Reply(200, {"decision": {"code": c, "note": "ok"}, "agent_version": "v1"})


async def replay(
    history: Path,
    server: AgentServer,
    cache: str,
    *,
    rules: Policy,
    repeats: bool = True,
) -> tuple[dict[str, Any], CachedAgent]:
    async with (
        History(history, batch=7) as h,
        ResponseCache(cache) as c,
        AgentRunner(HttpAgent(server.url, timeout=5.0), concurrency=4, retries=0) as r,
    ):
        # One spec for every server of a test (their ports differ): one cache key.
        source = CachedAgent(
            r, c, spec="claim-agent", clock=time.monotonic, now=lambda: datetime.now(UTC)
        )
        await source.start()
        result = await ReplayRunner(h, rules, source, repeats=repeats).run()
    doc = build_document(
        result,
        policy=rules,
        agent={"spec": "claim-agent"},
        history=str(history),
        selection=Selection(),
        alpha=0.05,
        run={},
    )
    return doc, source


def repeated_ids(rules: Policy) -> list[str]:
    task = rules.task_types["claim"]
    return [f"cl-{i:03d}" for i in range(N) if task.repeated(f"cl-{i:03d}")]


# -- the human ceiling ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "duckdb"])
async def test_the_human_ceiling_is_exact_and_bounded_like_live(
    fmt: str, agent_server: AgentServerFactory, tmp_path: Path
) -> None:
    if fmt == "jsonl":
        history = write_jsonl(tmp_path / "h.jsonl")
    else:
        history = await write_sidecar(tmp_path / "h.duckdb")
    server = await agent_server(human_answer)
    rules = policy(0.0)
    doc, _ = await replay(history, server, ":memory:", rules=rules)
    entry = doc["task_types"]["claim"]
    # 7 of the 10 blind cases' second opinions alike; cl-010 (assisted) is not counted.
    assert entry["human_ceiling"] == Bounded.of(7, 10, 0.05).to_json()
    assert entry["human_ceiling"]["agreement"] == 0.7
    # A second opinion is never evidence, nor an outcome: 19 blind cases, all agreeing.
    assert (entry["n"], entry["agree"]) == (19, 19)
    assert entry["acceptance"]["assisted"]["n"] == 1
    assert doc["history"]["outcomes"] == N
    assert doc["history"]["second_opinions"] == 11
    # Fewer than 20 cases with both: no field can be flagged noisy yet.
    assert entry["noisy_fields"] == []
    assert entry["self_consistency"] == Bounded.of(0, 0, 0.05).to_json()
    assert entry["repeats"] == {
        "repeat_rate": 0.0,
        "repeats": 2,
        "enabled": False,
        "cases": 0,
        "tries": 0,
    }


async def test_a_field_humans_disagree_on_as_often_as_the_agent_is_noisy(
    agent_server: AgentServerFactory, tmp_path: Path
) -> None:
    """40 cases, each with a second opinion differing on ``note`` for every fourth case; the
    agent differs from the first outcome on ``note`` for every fifth: humans 10, agent 8 of
    40, so ``note`` is noisy; ``code`` (no human disagreement) is not."""
    recs: list[dict[str, Any]] = []
    for i in range(40):
        eid = f"cl-{i:03d}"
        recs.append({"kind": "event", "event_id": eid, "task_type": "claim", "payload": {}})
        note = "other" if i % 4 == 0 else "ok"
        recs.append(
            {
                "kind": "outcome",
                "event_id": eid,
                "decision": {"code": code(i), "note": "ok"},
                "second_opinion": {"decision": {"code": code(i), "note": note}},
            }
        )
    history = write_jsonl(tmp_path / "h.jsonl", recs)

    def answer(body: dict[str, Any]) -> Reply:
        i = _i(body["event_id"])
        note = "agent" if i % 5 == 0 else "ok"
        return Reply(200, {"decision": {"code": code(i), "note": note}, "agent_version": "v1"})

    server = await agent_server(answer)
    doc, _ = await replay(history, server, ":memory:", rules=policy(0.0))
    entry = doc["task_types"]["claim"]
    assert entry["human_ceiling"] == Bounded.of(30, 40, 0.05).to_json()
    assert entry["noisy_fields"] == [
        {"field": "note", "n": 40, "human_disagree": 10, "agent_disagree": 8}
    ]


# -- repeated tries ---------------------------------------------------------------------------


async def test_repeats_are_marked_answered_per_try_and_never_inflate_n(
    agent_server: AgentServerFactory, tmp_path: Path
) -> None:
    history = write_jsonl(tmp_path / "h.jsonl")
    rules = policy(0.5)
    again = repeated_ids(rules)
    assert 0 < len(again) < N  # the live stable hash picks some cases, not all
    server = await agent_server(human_answer)
    doc, source = await replay(history, server, ":memory:", rules=rules)
    entry = doc["task_types"]["claim"]
    # Each case's first request is unmarked; each repeated case then gets try 1 and try 2,
    # in that order, marked in the body and the header.
    seen: dict[str, list[Any]] = {}
    for r in server.requests:
        body = r.body
        seen.setdefault(body["event_id"], []).append(body.get("repeat"))
        assert r.headers.get("X-Shadow-Repeat") == (
            None if body.get("repeat") is None else str(body["repeat"])
        )
        assert body["shadow"] is True
    for i in range(N):
        eid = f"cl-{i:03d}"
        assert seen[eid] == ([None, 1, 2] if eid in again else [None])
    assert source.stats.calls == N + 2 * len(again)
    # The evidence is that of a run without repeats.
    plain, _ = await replay(history, await agent_server(human_answer), ":memory:", rules=rules,
                            repeats=False)  # fmt: skip
    base = plain["task_types"]["claim"]
    for key in ("n", "agree", "lower", "upper", "cases", "usage", "fields", "acceptance"):
        assert entry[key] == base[key], key
    assert (entry["n"], entry["agree"]) == (19, 19)
    k = len(again)
    assert entry["self_consistency"] == Bounded.of(k, k, 0.05).to_json()
    assert entry["stable"] == Bounded.of(k, k, 0.05).to_json("stable", "rate")
    assert entry["repeats"] == {
        "repeat_rate": 0.5,
        "repeats": 2,
        "enabled": True,
        "cases": k,
        "tries": 2 * k,
    }
    assert base["repeats"]["enabled"] is False
    assert base["repeats"]["cases"] == 0


async def test_an_unstable_candidate_and_a_rerun_served_per_try_from_the_cache(
    agent_server: AgentServerFactory, tmp_path: Path
) -> None:
    history = write_jsonl(tmp_path / "h.jsonl")
    rules = policy(0.5)
    again = repeated_ids(rules)
    flaky = [e for e in again if _i(e) % 3 == 0]
    assert flaky
    assert len(flaky) < len(again)
    cache = str(tmp_path / "cache.duckdb")
    # A first run without repeats caches the first answers only.
    server = await agent_server(unstable_answer)
    await replay(history, server, cache, rules=rules, repeats=False)
    assert len(server.requests) == N
    # With repeats, every try is asked for: never answered from the first answer's entry.
    server = await agent_server(unstable_answer)
    doc, source = await replay(history, server, cache, rules=rules)
    assert source.stats.hits == N
    assert len(server.requests) == 2 * len(again)
    assert all(r.body.get("repeat") in (1, 2) for r in server.requests)
    entry = doc["task_types"]["claim"]
    k, bad = len(again), len(flaky)
    assert entry["self_consistency"] == Bounded.of(k - bad, k, 0.05).to_json()
    assert entry["self_consistency"]["agreement"] < 1
    assert entry["stable"] == Bounded.of(k - bad, k, 0.05).to_json("stable", "rate")
    assert (entry["n"], entry["agree"]) == (19, 19)
    # A re-run: every first answer and every try from the cache, the same report.
    server = await agent_server(unstable_answer)
    rerun, source = await replay(history, server, cache, rules=rules)
    assert server.requests == []
    assert source.stats.hits == N + 2 * k
    assert deterministic_view(rerun) == deterministic_view(doc)


async def test_a_repeat_that_fails_makes_the_case_unstable_not_inconsistent(
    agent_server: AgentServerFactory, tmp_path: Path
) -> None:
    """A try that errors: the case counts in ``stable`` (every try recorded) and is not
    stable; it is not in ``self_consistency`` (answered on every try), as live."""
    history = write_jsonl(tmp_path / "h.jsonl")
    rules = policy(0.5)
    again = repeated_ids(rules)
    broken = again[0]

    def answer(body: dict[str, Any]) -> Reply:
        if body["event_id"] == broken and body.get("repeat") == 2:
            return Reply(500, {"error": "boom"})
        return human_answer(body)

    server = await agent_server(answer)
    doc, _ = await replay(history, server, ":memory:", rules=rules)
    entry = doc["task_types"]["claim"]
    k = len(again)
    assert entry["self_consistency"] == Bounded.of(k - 1, k - 1, 0.05).to_json()
    assert entry["stable"] == Bounded.of(k - 1, k, 0.05).to_json("stable", "rate")
    assert entry["errors"] == 0
    assert entry["n"] == 19


# -- the command line -------------------------------------------------------------------------

CALLS: list[dict[str, Any]] = []


def recording_agent(request: dict[str, Any]) -> dict[str, Any]:
    """An in-process agent (``module:callable``) that keeps every request it gets."""
    CALLS.append(dict(request))
    i = _i(request["event_id"])
    return {"decision": {"code": code(i), "note": "ok"}, "agent_version": "v1"}


@pytest.mark.parametrize("off", [False, True])
def test_no_repeats_makes_no_repeat_call(
    off: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history = write_jsonl(tmp_path / "h.jsonl")
    config = tmp_path / "p.yaml"
    config.write_text(POLICY.format(rate=0.5))
    out, html = tmp_path / "r.json", tmp_path / "r.html"
    CALLS.clear()
    argv = [
        "replay", "--history", str(history), "--agent",
        "tests.replay.test_noise_floor:recording_agent", "--config", str(config),
        "--no-progress", "--no-cache", "--json", str(out), "--html", str(html),
    ]  # fmt: skip
    assert main(argv + (["--no-repeats"] if off else [])) == 0
    k = len(repeated_ids(policy(0.5)))
    marked = [c for c in CALLS if "repeat" in c]
    entry = json.loads(out.read_text())["task_types"]["claim"]
    text = " ".join(capsys.readouterr().out.split())
    if off:
        assert marked == []
        assert len(CALLS) == N
        assert entry["self_consistency"]["n"] == 0
        assert entry["repeats"]["enabled"] is False
        assert "self-consistency: off (--no-repeats)" in text
    else:
        assert sorted(c["repeat"] for c in marked) == [1] * k + [2] * k
        assert entry["self_consistency"]["n"] == k
        assert "self-consistency" in text
        assert f"1.0000 [0.6169, 1.0000] of {k}" in text  # Bounded.of(9, 9, 0.05)
    assert "claim: noise floor: human ceiling 0.7000 [0.2821, 0.9629] of 10" in text
    page = html.read_text()
    assert "Noise floor (not evidence): human ceiling 0.7000 [0.2821, 0.9629] of 10" in page


# -- bad history ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ("yes", "second_opinion: expected an object {decision, actions?, decided_by?} or true"),
        ({"decision": 3}, "second_opinion.decision"),
        ({"decision": {}, "why": "x"}, "second_opinion.why"),
    ],
)
async def test_a_malformed_second_opinion_is_reported_with_its_line(
    second: Any, message: str, tmp_path: Path
) -> None:
    recs = records()
    bad = next(
        k for k, r in enumerate(recs) if r["kind"] == "outcome" and r["event_id"] == "cl-012"
    )
    recs[bad] = {**recs[bad], "second_opinion": second}
    history = write_jsonl(tmp_path / "h.jsonl", recs)
    with pytest.raises(HistoryError) as err:
        async with History(history):
            pass
    assert f"{history}:{bad + 1}: " in str(err.value)
    assert message in str(err.value)


def test_a_sharded_run_gives_the_noise_floor_of_one_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history = write_jsonl(tmp_path / "h.jsonl")
    config = tmp_path / "p.yaml"
    config.write_text(POLICY.format(rate=0.5))
    docs = []
    for workers in ("1", "2"):
        out = tmp_path / f"r{workers}.json"
        argv = [
            "replay", "--history", str(history), "--agent",
            "tests.replay.test_noise_floor:unstable_agent", "--config", str(config),
            "--no-progress", "--no-cache", "--json", str(out), "--workers", workers,
        ]  # fmt: skip
        assert main(argv) == 0
        docs.append(json.loads(out.read_text()))
    capsys.readouterr()
    keys = ("human_ceiling", "self_consistency", "stable", "noisy_fields", "repeats", "n")
    one, two = (d["task_types"]["claim"] for d in docs)
    assert {k: one[k] for k in keys} == {k: two[k] for k in keys}
    assert one["self_consistency"]["agreement"] < 1
    assert docs[0]["history"]["second_opinions"] == docs[1]["history"]["second_opinions"] == 11


def unstable_agent(request: dict[str, Any]) -> dict[str, Any]:
    """:func:`unstable_answer` in process (``module:callable``)."""
    reply = unstable_answer(request)
    assert isinstance(reply.body, dict)
    return reply.body


async def test_parquet_reads_the_second_opinion_object_and_refuses_a_record(
    agent_server: AgentServerFactory, tmp_path: Path
) -> None:
    from tests.replay.conftest import write_parquet

    rows: list[dict[str, Any]] = []
    for r in records():
        if r.get("second_opinion") is True:  # as the outcome's object instead
            outcome = next(
                o for o in rows if o["kind"] == "outcome" and o["event_id"] == r["event_id"]
            )
            outcome["second_opinion"] = json.dumps({"decision": r["decision"]})
            continue
        row = dict(r)
        if isinstance(row.get("second_opinion"), dict):
            row["second_opinion"] = json.dumps(row["second_opinion"])
        rows.append(row)
    history = write_parquet(tmp_path / "h.parquet", rows, extra=("handled_by", "second_opinion"))
    server = await agent_server(human_answer)
    doc, _ = await replay(history, server, ":memory:", rules=policy(0.0))
    assert doc["task_types"]["claim"]["human_ceiling"] == Bounded.of(7, 10, 0.05).to_json()
    # A second opinion record of its own (true) is refused, naming the row.
    rows[1] = {**rows[1], "second_opinion": "true"}
    bad = write_parquet(tmp_path / "bad.parquet", rows, extra=("handled_by", "second_opinion"))
    with pytest.raises(HistoryError, match=r"row 2, column second_opinion: a second opinion"):
        async with History(bad) as h:
            [c async for b in h.batches() for c in b]
