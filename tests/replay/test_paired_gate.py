"""The regression gate end to end on a paired history (tests/replay/paired.py): the paired
test finds a regression the unpaired one misses on the same cases, the critical-miss and
per-segment gates fail with their reasons, the cases only one side scored are reported, and
the exit codes stay 0 / 1 / 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from scipy import stats as sps

from replay.html import render_html
from shadow.cli import main
from tests.replay import paired

MODULE = "tests.replay.paired"


class Run:
    """``shadow replay`` on the paired history, in this process (in-process agents)."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.dir = tmp_path
        self.capsys = capsys
        self.history, self.policy = paired.write(tmp_path)

    def __call__(self, agent: str, *extra: str) -> tuple[int, str, str]:
        code = main(
            [
                "replay",
                "--history",
                str(self.history),
                "--agent",
                f"{MODULE}:{agent}",
                "--config",
                str(self.policy),
                "--no-progress",
                "--no-cache",
                *extra,
            ]
        )
        out = self.capsys.readouterr()
        return code, out.out, out.err

    def baseline(self, *extra: str) -> Path:
        path = self.dir / "base.json"
        code, _, err = self("baseline", "--json", str(path), *extra)
        assert code == 0, err
        return path

    def candidate(self, agent: str, baseline: Path, *extra: str) -> tuple[int, str, Any]:
        path = self.dir / f"{agent}.json"
        code, out, err = self(
            agent, "--baseline", str(baseline), "--fail-if-worse", "--json", str(path), *extra
        )
        assert code in (0, 1), err
        return code, out, json.loads(path.read_text())


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(tmp_path, capsys)


def unpaired_copy(report: Path) -> Path:
    """The same report without its per-case results (as written before they existed)."""
    doc = json.loads(report.read_text())
    for entry in doc["task_types"].values():
        del entry["cases"], entry["case_segments"]
    out = report.with_name("unpaired-" + report.name)
    out.write_text(json.dumps(doc))
    return out


def test_the_report_keeps_each_case_result_and_segment(run: Run) -> None:
    entry = json.loads(run.baseline().read_text())["task_types"]["claim"]
    cases = entry["cases"]
    assert len(cases) == entry["n"] == paired.N
    assert list(cases) == sorted(cases)
    assert {k for k, v in cases.items() if v != "a"} == {
        f"pc-{i:03d}" for i in paired.BASELINE_WRONG
    }
    assert set(cases.values()) == {"a", "d"}
    assert entry["case_segments"]["eu"] == [f"pc-{i:03d}" for i in range(0, paired.N, 2)]
    counts = ("n", "agree", "agreement", "critical", "errors")  # and bounds: test_segment_display
    assert {seg: {k: f[k] for k in counts} for seg, f in entry["segments"].items()} == {
        "eu": {"n": 100, "agree": 80, "agreement": 0.8, "critical": 0, "errors": 0},
        "us": {"n": 100, "agree": 80, "agreement": 0.8, "critical": 0, "errors": 0},
    }


def test_paired_test_finds_the_regression_the_unpaired_test_misses(run: Run) -> None:
    base = run.baseline()
    code, out, doc = run.candidate("flips", base)
    entry = doc["task_types"]["claim"]
    b = entry["baseline"]
    # The same history, the same answers: 153/200 against 160/200.
    assert (entry["agree"], entry["n"], b["agree"], b["n"]) == (153, 200, 160, 200)
    # Unpaired (reported either way): nowhere near significant.
    pooled = (153 + 160) / 400
    ref_z = (153 / 200 - 160 / 200) / (pooled * (1 - pooled) * (2 / 200)) ** 0.5
    assert b["p_worse"] == pytest.approx(float(sps.norm.cdf(ref_z)), rel=1e-9)
    assert b["p_worse"] == pytest.approx(0.1981, abs=1e-4)
    # Paired: 7 right -> wrong, 0 wrong -> right, mid-p = 1/2 P(X = 7), X ~ Bin(7, 1/2).
    assert b["test"] == "paired"
    assert b["paired"]["pairs"] == 200
    assert (b["paired"]["worse"], b["paired"]["better"]) == (7, 0)
    assert b["paired"]["p_worse"] == 1 / 256
    assert b["paired"]["p_worse"] == pytest.approx(
        float(sps.binom.sf(7, 7, 0.5) + 0.5 * sps.binom.pmf(7, 7, 0.5)), rel=1e-12
    )
    assert b["paired"]["only_in_candidate"] == {"n": 0, "first": []}
    assert b["significantly_worse"]
    assert code == 1
    assert doc["regression"]["paired"] == ["claim"]
    assert [f["gate"] for f in doc["regression"]["failures"]] == ["agreement"]
    reason = doc["regression"]["failures"][0]["reason"]
    assert reason == (
        "claim: agreement 0.7650 vs 0.8000 (-3.50 pp): significantly worse (paired on 200 "
        "cases: 7 right -> wrong, 0 wrong -> right, one-sided mid-p = 0.003906, level "
        "0.05/1 = 0.05; unpaired z = -0.85, p = 0.1981)"
    )
    assert "REGRESSION vs baseline on: claim" in out
    assert "  - claim: agreement 0.7650 vs 0.8000 (-3.50 pp): significantly worse" in out
    # Neither segment alone (4 and 3 flips) is below 0.05/2.
    segments = b["segments"]
    assert {s: (e["worse"], e["p_worse"]) for s, e in segments.items()} == {
        "eu": (4, 1 / 32),
        "us": (3, 1 / 16),
    }
    assert not any(e["significantly_worse"] for e in segments.values())
    assert not b["critical_miss"]["significantly_worse"]

    # The same candidate against the same baseline without its per-case results: the
    # unpaired test cannot see it, and CI passes.
    code, out, doc = run.candidate("flips", unpaired_copy(base))
    assert code == 0
    b = doc["task_types"]["claim"]["baseline"]
    assert b["test"] == "unpaired"
    assert b["paired"] is None
    assert not b["significantly_worse"]
    assert doc["regression"] == {
        **doc["regression"],
        "paired": [],
        "failures": [],
        "regression": False,
    }
    assert "no significant regression" in out


def test_cases_only_one_side_scored_are_reported_and_the_rest_paired(run: Run) -> None:
    base = run.baseline("--limit", "190")  # pc-000 .. pc-189
    _, _, doc = run.candidate("flips", base)
    p = doc["task_types"]["claim"]["baseline"]["paired"]
    assert p["pairs"] == 190
    assert (p["worse"], p["better"]) == (7, 0)
    assert p["only_in_candidate"] == {
        "n": 10,
        "first": ["pc-190", "pc-191", "pc-192", "pc-193", "pc-194"],
    }
    assert p["only_in_baseline"] == {"n": 0, "first": []}
    assert (
        "10 cases scored by the candidate only, 0 by the baseline only"
        in (doc["task_types"]["claim"]["baseline"]["statement"])
    )


def test_a_segment_regression_fails_with_its_reason(run: Run) -> None:
    base = run.baseline()
    code, out, doc = run.candidate("segment_shift", base)
    b = doc["task_types"]["claim"]["baseline"]
    assert (b["paired"]["worse"], b["paired"]["better"]) == (10, 10)
    assert not b["significantly_worse"]  # overall nothing changed: 160 of 200 each
    us = b["segments"]["us"]
    assert (us["worse"], us["better"], us["p_worse"]) == (10, 0, 1 / 2048)
    assert us["significantly_worse"]
    assert not b["segments"]["eu"]["significantly_worse"]
    assert doc["regression"]["segments"] == {"min_cases": 30, "tested": 2, "level": 0.025}
    assert code == 1
    assert doc["regression"]["worse"] == ["claim"]
    assert doc["regression"]["failures"] == [
        {
            "task_type": "claim",
            "gate": "segment",
            "segment": "us",
            "reason": (
                "claim segment us: agreement 0.7000 vs 0.8000 (-10.00 pp): significantly "
                "worse (paired on 100 cases: 10 right -> wrong, 0 wrong -> right, one-sided "
                "mid-p = 0.0004883, level 0.05/2 segments = 0.025)"
            ),
        }
    ]
    assert "claim segment us: agreement 0.7000 vs 0.8000" in out
    html = render_html(doc)
    assert "claim segment us: agreement 0.7000 vs 0.8000 (-10.00 pp)" in html
    # The unpaired test of the segment (70/100 vs 80/100) would not have found it.
    code, _, doc = run.candidate("segment_shift", unpaired_copy(base))
    us = doc["task_types"]["claim"]["baseline"]["segments"]["us"]
    assert us["test"] == "unpaired"
    assert 0.025 < us["p_worse"] < 0.06
    assert code == 0
    # Segments with fewer cases than --segment-min-cases are not tested.
    code, _, doc = run.candidate("segment_shift", base, "--segment-min-cases", "101")
    assert code == 0
    assert doc["regression"]["segments"]["tested"] == 0
    assert doc["task_types"]["claim"]["baseline"]["segments"]["us"]["statement"] == (
        "not tested: 100 paired cases, fewer than 101"
    )


def test_more_critical_misses_fail_the_gate_at_equal_agreement(run: Run) -> None:
    code, _, doc = run.candidate("critical", run.baseline())
    entry = doc["task_types"]["claim"]
    b = entry["baseline"]
    assert entry["agree"] == b["agree"] == 160
    assert not b["significantly_worse"]
    crit = b["critical_miss"]
    assert crit["test"] == "paired"
    assert (crit["worse"], crit["better"], crit["p_worse"]) == (10, 0, 1 / 2048)
    assert (crit["candidate_rate"], crit["baseline_rate"]) == (0.05, 0.0)
    assert code == 1
    assert [(f["gate"], f["segment"]) for f in doc["regression"]["failures"]] == [
        ("critical_miss", None)
    ]
    assert doc["regression"]["failures"][0]["reason"] == (
        "claim: critical-miss rate 0.0500 vs 0.0000 (+5.00 pp): significantly worse (paired "
        "on 200 cases: 10 critical misses only in the candidate, 0 only in the baseline, "
        "one-sided mid-p = 0.0004883, level 0.05/1 = 0.05)"
    )


def test_exit_codes(run: Run) -> None:
    base = run.baseline()
    assert run.candidate("baseline", base)[0] == 0  # against itself
    assert run("flips", "--baseline", str(base))[0] == 0  # reported, not gated
    assert run.candidate("flips", base)[0] == 1
    code, _, err = run("flips", "--segment-min-cases", "0")
    assert code == 2
    assert "--segment-min-cases: 0 is out of range" in err
    doc = json.loads(base.read_text())
    doc["task_types"]["claim"]["cases"]["pc-000"] = "agree"
    bad = run.dir / "bad.json"
    bad.write_text(json.dumps(doc))
    code, _, err = run("flips", "--baseline", str(bad))
    assert code == 2
    assert "task_types.claim.cases.pc-000: expected one of acde, got 'agree'" in err
