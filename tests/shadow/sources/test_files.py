from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from shadow.config import Settings
from shadow.errors import ConfigError, Reason
from shadow.ingest import RAW_LIMIT, clip_raw
from shadow.metrics import Metrics
from shadow.model import Outcome, WorkEvent
from shadow.pipeline import Pipeline
from shadow.policy import parse_policy
from shadow.sources import FileReport, FileSource, Sink, parse_source_spec
from shadow.store import DeadLetter
from tests.conftest import FakeClock, StoreFactory, cells_holding, wait_for
from tests.shadow.conftest import SidecarFactory, metric


def event(n: int, **extra: object) -> dict[str, object]:
    return {
        "kind": "event",
        "event_id": f"e-{n}",
        "task_type": "refund_request",
        "payload": {"n": n},
        **extra,
    }


def outcome(n: int) -> dict[str, object]:
    return {"kind": "outcome", "event_id": f"e-{n}", "decision": {"action": "approve"}}


Line = str | bytes | dict[str, object]


def encode(line: Line) -> bytes:
    if isinstance(line, dict):
        return json.dumps(line).encode()
    return line.encode() if isinstance(line, str) else line


def write(path: Path, lines: Iterable[Line], *, newline: bytes = b"\n") -> Path:
    with path.open("wb") as f:
        for line in lines:
            f.write(encode(line) + newline)
    return path


class RecordingSink:
    """A real sink that keeps what it is given, and the size and kind of every call."""

    def __init__(self) -> None:
        self.events: list[WorkEvent] = []
        self.outcomes: list[Outcome] = []
        self.dead: list[DeadLetter] = []
        self.calls: list[tuple[str, int]] = []
        self.sources: set[str] = set()

    @property
    def max_call(self) -> int:
        return max((n for _, n in self.calls), default=0)

    async def submit_events(
        self, events: Sequence[WorkEvent], *, source: str, origins: Sequence[str | None]
    ) -> list[object]:
        assert len(origins) == len(events)
        self.sources.add(source)
        self.calls.append(("events", len(events)))
        self.events.extend(events)
        return [None] * len(events)

    async def submit_outcomes(
        self, outcomes: Sequence[Outcome], *, source: str, origins: Sequence[str | None]
    ) -> list[object]:
        assert len(origins) == len(outcomes)
        self.sources.add(source)
        self.calls.append(("outcomes", len(outcomes)))
        self.outcomes.extend(outcomes)
        return [None] * len(outcomes)

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        self.calls.append(("dead", len(letters)))
        self.dead.extend(letters)


class GatedSink(RecordingSink):
    """Holds every call until the test opens the gate (to watch backpressure)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.waiting = 0

    async def submit_events(
        self, events: Sequence[WorkEvent], *, source: str, origins: Sequence[str | None]
    ) -> list[object]:
        self.waiting += 1
        self.entered.set()
        await self.gate.wait()
        self.waiting -= 1
        return await super().submit_events(events, source=source, origins=origins)


SourceFactory = Callable[..., FileSource]


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
async def make_source(sink: RecordingSink) -> AsyncIterator[SourceFactory]:
    """``make_source(path, sink=..., batch_size=...)``; every source made is closed after."""
    made: list[FileSource] = []

    def make(path: Path, *, to: Sink | None = None, **kwargs: int) -> FileSource:
        source = FileSource(path, to if to is not None else sink, **kwargs)
        made.append(source)
        return source

    yield make
    for source in made:
        await source.close()


def test_sink_protocol_is_met_by_the_test_sink() -> None:
    checked: Sink = RecordingSink()
    assert checked is not None


# -- the happy path -------------------------------------------------------------------------


async def test_delivers_events_and_outcomes_in_file_order(
    tmp_path: Path, sink: RecordingSink, make_source: SourceFactory
) -> None:
    path = write(tmp_path / "history.jsonl", [event(1), outcome(1), event(2), outcome(3), event(3)])
    source = make_source(path)
    assert source.name == f"file:{path}"
    report = await source.run()
    assert report == FileReport(
        lines=5, events=3, outcomes=2, dead_letters=0, blank=0, finished=True
    )
    assert [e.event_id for e in sink.events] == ["e-1", "e-2", "e-3"]
    assert [o.event_id for o in sink.outcomes] == ["e-1", "e-3"]
    assert sink.events[0] == WorkEvent.from_json(event(1))
    assert sink.calls == [("events", 3), ("outcomes", 2)]
    assert sink.sources == {f"file:{path}"}


async def test_batches_submit_events_then_outcomes_then_dead_letters(
    tmp_path: Path, sink: RecordingSink, make_source: SourceFactory
) -> None:
    lines: list[Line] = []
    for n in range(1, 8):
        lines += [outcome(n), event(n), "{bad"]
    path = write(tmp_path / "mixed.jsonl", lines)  # 21 lines, 7 of each
    report = await make_source(path, batch_size=3).run()
    assert (report.events, report.outcomes, report.dead_letters) == (7, 7, 7)
    assert sink.calls == [("events", 1), ("outcomes", 1), ("dead", 1)] * 7
    assert [d.location for d in sink.dead] == [f"line {3 * n}" for n in range(1, 8)]
    assert [e.event_id for e in sink.events] == [f"e-{n}" for n in range(1, 8)]


async def test_batch_size_bounds_every_call(
    tmp_path: Path, sink: RecordingSink, make_source: SourceFactory
) -> None:
    path = write(tmp_path / "events.jsonl", [event(n) for n in range(10)])
    await make_source(path, batch_size=4).run()
    assert sink.calls == [("events", 4), ("events", 4), ("events", 2)]


async def test_blank_lines_are_skipped_and_do_not_fill_batches(
    tmp_path: Path, sink: RecordingSink, make_source: SourceFactory
) -> None:
    path = write(tmp_path / "gaps.jsonl", [event(1), "", "   ", "\t", event(2), "", event(3)])
    report = await make_source(path, batch_size=2).run()
    assert report == FileReport(
        lines=7, events=3, outcomes=0, dead_letters=0, blank=4, finished=True
    )
    assert sink.calls == [("events", 2), ("events", 1)]
    assert sink.dead == []


async def test_crlf_bom_and_missing_final_newline(
    tmp_path: Path, sink: RecordingSink, make_source: SourceFactory
) -> None:
    path = tmp_path / "windows.jsonl"
    body = b"\xef\xbb\xbf" + encode(event(1)) + b"\r\n\r\n" + encode(outcome(1)) + b"\r\n"
    path.write_bytes(body + encode(event(2)))
    report = await make_source(path).run()
    assert report == FileReport(
        lines=4, events=2, outcomes=1, dead_letters=0, blank=1, finished=True
    )
    assert [e.event_id for e in sink.events] == ["e-1", "e-2"]


async def test_duplicates_are_passed_through(
    tmp_path: Path, sink: RecordingSink, make_source: SourceFactory
) -> None:
    path = write(tmp_path / "dups.jsonl", [event(1), event(1), outcome(1), outcome(1)])
    report = await make_source(path).run()
    assert (report.events, report.outcomes, report.dead_letters) == (2, 2, 0)
    assert sink.events == [WorkEvent.from_json(event(1))] * 2


async def test_empty_file(tmp_path: Path, sink: RecordingSink, make_source: SourceFactory) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    assert await make_source(path).run() == FileReport(finished=True)
    assert sink.calls == []


# -- bad lines ------------------------------------------------------------------------------


async def test_bad_lines_become_dead_letters_with_line_and_reason(
    tmp_path: Path, sink: RecordingSink, make_source: SourceFactory
) -> None:
    missing_payload: dict[str, object] = {
        "kind": "event",
        "event_id": "e-2",
        "task_type": "refund_request",
    }
    lines: list[Line] = [
        event(1),
        '{"kind": "event", "event_id": ',
        missing_payload,
        {**event(4), "kind": "ticket"},
        {k: v for k, v in event(5).items() if k != "kind"},
        b'{"kind": "event", "event_id": "e-\xff"}',
        "",
        "[1, 2]",
        '{"kind": "outcome", "event_id": "e-9", "event_id": "e-9", "decision": {}}',
        outcome(1),
    ]
    path = write(tmp_path / "bad.jsonl", lines)
    report = await make_source(path).run()
    assert report == FileReport(
        lines=10, events=1, outcomes=1, dead_letters=7, blank=1, finished=True
    )
    name = f"file:{path}"
    expected = [
        DeadLetter(
            name,
            "unknown",
            "invalid JSON at column 31: Expecting value",
            '{"kind": "event", "event_id": ',
            None,
            "line 2",
        ),
        DeadLetter(
            name,
            "event",
            "payload: required; expected a JSON object",
            json.dumps(missing_payload),
            "e-2",
            "line 3",
        ),
        DeadLetter(
            name,
            "unknown",
            'kind: expected "event" or "outcome", got \'ticket\'',
            json.dumps({**event(4), "kind": "ticket"}),
            "e-4",
            "line 4",
        ),
        DeadLetter(
            name,
            "unknown",
            'kind: required; expected "event" or "outcome"',
            json.dumps({k: v for k, v in event(5).items() if k != "kind"}),
            "e-5",
            "line 5",
        ),
        DeadLetter(
            name,
            "unknown",
            "line is not UTF-8 at byte 33",
            '{"kind": "event", "event_id": "e-\\xff"}',
            None,
            "line 6",
        ),
        DeadLetter(
            name,
            "unknown",
            'expected a JSON object with "kind": "event" or "outcome", got an array',
            "[1, 2]",
            None,
            "line 8",
        ),
        DeadLetter(
            name,
            "outcome",
            "event_id: key appears more than once in one JSON object; the value is ambiguous",
            encode(lines[8]).decode(),
            "e-9",
            "line 9",
        ),
    ]
    assert sink.dead == expected
    assert [e.event_id for e in sink.events] == ["e-1"]
    assert [o.event_id for o in sink.outcomes] == ["e-1"]


async def test_overlong_lines_are_dead_letters_without_holding_them(
    tmp_path: Path, sink: RecordingSink, make_source: SourceFactory
) -> None:
    fits = encode(event(1))
    huge = b'{"kind": "event", "pad": "' + b"x" * 200_000 + b'"}'
    path = tmp_path / "long.jsonl"
    path.write_bytes(fits + b"\n" + huge + b"\n" + encode(event(3)) + b"\n" + huge)
    limit = len(fits)
    report = await make_source(path, max_line_bytes=limit).run()
    assert report == FileReport(
        lines=4, events=2, outcomes=0, dead_letters=2, blank=0, finished=True
    )
    assert [e.event_id for e in sink.events] == ["e-1", "e-3"]
    reason = f"line is {len(huge)} bytes long; the limit is {limit} (max_line_bytes)"
    shown = huge[: limit + 1].decode()
    assert sink.dead == [
        DeadLetter(f"file:{path}", "unknown", reason, shown, None, "line 2"),
        DeadLetter(f"file:{path}", "unknown", reason, shown, None, "line 4"),
    ]


async def test_dead_letters_carry_the_code_of_their_problem(
    tmp_path: Path, sink: RecordingSink, make_source: SourceFactory
) -> None:
    """The code is set where the problem is found, never read from the reason's text: an
    ``event_id`` that is "too long" is an invalid record, not a line too large; a reason
    that mentions "kind" is not a bad kind."""
    lines: list[Line] = [
        event(1, event_id="x" * 300),
        "{oops",
        {**event(3), "kind": "ticket"},
        b'{"kind": "event", "event_id": "e-\xff"}',
        "[1, 2]",
        {**event(6), "event_id": 6, "payload": "not an object"},
        b'{"kind": "event", "pad": "' + b"x" * 5000 + b'"}',
    ]
    path = write(tmp_path / "codes.jsonl", lines)
    await make_source(path, max_line_bytes=4096).run()
    assert [(d.location, d.code) for d in sink.dead] == [
        ("line 1", Reason.INVALID),
        ("line 2", Reason.MALFORMED),
        ("line 3", Reason.BAD_KIND),
        ("line 4", Reason.ENCODING),
        ("line 5", Reason.INVALID),
        ("line 6", Reason.INVALID),
        ("line 7", Reason.TOO_LARGE),
    ]
    assert "too long" in sink.dead[0].reason
    assert "kind" in sink.dead[4].reason


async def test_bad_records_are_counted_once_each_under_their_code(
    tmp_path: Path, sidecar: SidecarFactory
) -> None:
    """Through the real app: a file source's refused records are counted in
    shadow_ingest_rejected_total and shadow_dead_letters_total, one per record."""
    lines: list[Line] = [
        {**event(1), "task_type": "refund"},
        {**event(2), "task_type": "refund", "event_id": 2, "payload": "x"},  # two bad fields
        {**event(3), "task_type": "refund", "event_id": "x" * 300},  # a field too long
        {**event(4), "task_type": "no_such_task"},
    ]
    path = write(tmp_path / "in.jsonl", lines)
    sc = await sidecar(source=[f"file:{path}"])

    async def done() -> bool:
        return await sc.pipeline.store.count("dead_letters") == 3

    await wait_for(done, "three dead letters")
    m = await sc.metrics()

    def count(name: str, **labels: str) -> float:
        return metric(m, name, **labels) or 0

    assert count("shadow_dead_letters_total", source="file", reason="invalid") == 2
    assert count("shadow_dead_letters_total", source="file", reason="too_large") == 0
    assert count("shadow_dead_letters_total", source="file", reason="unknown_task_type") == 1
    rejected = "shadow_ingest_rejected_total"
    assert count(rejected, kind="event", source="file", reason="invalid") == 2
    assert count(rejected, kind="event", source="file", reason="unknown_task_type") == 1
    assert await sc.pipeline.store.count("events") == 1


async def test_line_of_exactly_max_line_bytes_is_fine(
    tmp_path: Path, sink: RecordingSink, make_source: SourceFactory
) -> None:
    line = encode(event(1))
    path = write(tmp_path / "edge.jsonl", [line, line], newline=b"\r\n")
    report = await make_source(path, max_line_bytes=len(line) + 1).run()  # + 1 for the \r
    assert (report.events, report.dead_letters) == (2, 0)
    report = await make_source(path, max_line_bytes=len(line)).run()
    assert (report.events, report.dead_letters) == (0, 2)


async def test_overlong_dead_letter_keeps_at_most_raw_limit(
    tmp_path: Path, sink: RecordingSink, make_source: SourceFactory
) -> None:
    huge = "é" * 50_000
    path = write(tmp_path / "long.jsonl", [huge])
    await make_source(path, max_line_bytes=RAW_LIMIT * 3).run()
    (letter,) = sink.dead
    assert letter.raw is not None
    assert letter.raw == clip_raw(huge.encode()[:RAW_LIMIT].decode())
    assert (
        letter.reason == f"line is 100000 bytes long; the limit is {RAW_LIMIT * 3} (max_line_bytes)"
    )


async def test_a_bad_line_is_handed_on_whole_for_the_sink_to_redact(
    tmp_path: Path, sink: RecordingSink, make_source: SourceFactory
) -> None:
    """Clipping first would cut a long record short of parsing, and then it could not be
    redacted: the sink gets the whole line and clips after redacting."""
    bad = json.dumps(event(1, pad="p" * (RAW_LIMIT * 2), extra_field=True))
    path = write(tmp_path / "bad.jsonl", [bad])
    await make_source(path).run()
    (letter,) = sink.dead
    assert letter.raw == bad


SECRET = "zq7-jane.doe@example.com"
SECRET_POLICY = """
task_types:
  refund_request:
    redact: [payload.customer.email, payload.card]
  plain: {}
"""


def secret_lines() -> list[Line]:
    """Every way a file line can carry the secret at a redacted path (or where no path can
    be told), each but the first ``good`` one bound for a dead letter."""
    customers = [{"email": SECRET, "tier": "gold"}, [[{"email": SECRET}]]]
    deep: object = 1
    for _ in range(40):
        deep = [deep]
    return [
        event(1, payload={"customer": customers, "card": SECRET, "amount": 1}),  # good
        outcome(1),  # good
        # fails validation for another reason while carrying the secret
        event(2, payload={"customer": customers}, occurred_at="yesterday"),
        {"kind": "event", "task_type": "refund_request", "payload": {"card": SECRET}},
        event(3, payload={"customer": customers}, surprise=True),
        # an unknown task type (dead-lettered by the pipeline), and no task type at all
        event(4, task_type="unheard_of", payload={"customer": customers, "card": SECRET}),
        {"kind": "event", "event_id": "e-5", "payload": {"card": SECRET}},
        # an unknown kind; an outcome carrying a payload
        {**event(6, payload={"card": SECRET}), "kind": "evnt"},
        {**outcome(7), "payload": {"customer": {"email": SECRET}}},
        # a repeated task_type: which one applies is ambiguous
        (
            '{"kind": "event", "event_id": "e-8", "task_type": "refund_request", '
            f'"payload": {{"card": "{SECRET}"}}, "task_type": "plain"}}'
        ),
        # NaN and a lone surrogate next to the secret; the secret as a key, nested too deep
        f'{{"kind": "event", "event_id": "e-9", "task_type": "refund_request", '
        f'"payload": {{"card": "{SECRET}", "n": NaN}}}}',
        f'{{"kind": "event", "event_id": "e-10", "task_type": "refund_request", '
        f'"payload": {{"customer": {{"email": "{SECRET}", "x": "\\ud800"}}}}}}',
        event(11, payload={"customer": {"email": {SECRET: deep}}}),
        # not JSON, JSON that is not one object, not UTF-8, overlong
        f"customer email {SECRET} was here",
        json.dumps([event(12, payload={"card": SECRET})]),
        json.dumps(event(13, payload={"card": SECRET})) + " trailing",
        b'{"kind": "event", "payload": {"card": "' + SECRET.encode() + b'", "x": "\xff"}}',
        json.dumps(event(14, payload={"card": SECRET, "pad": "p" * 5000})),
        # a conflicting duplicate of the good event
        event(1, payload={"customer": customers, "card": SECRET, "amount": 2}),
    ]


async def test_a_redacted_field_is_never_stored_from_a_file(
    tmp_path: Path, store_factory: StoreFactory, clock: FakeClock, no_shadow_env: None
) -> None:
    policy = parse_policy(SECRET_POLICY)
    store = await store_factory()
    lines = secret_lines()
    path = write(tmp_path / "secrets.jsonl", lines)
    values: dict[str, Any] = {"db": str(store.path), "config": None, "expire_interval": 3600.0}
    settings = Settings(**values)
    async with Pipeline(
        settings=settings,
        policy=policy,
        store=store,
        agent=None,
        metrics=Metrics(CollectorRegistry(), policy),
        clock=clock,
    ) as pipeline:
        report = await FileSource(path, pipeline.intake, max_line_bytes=4096).run()
    assert (report.events, report.outcomes, report.dead_letters) == (3, 1, len(lines) - 4)
    letters = await store.dead_letters(limit=100)
    # every line but the good ones: the pipeline's (unknown task type, conflict) included
    assert sorted(str(d["location"]) for d in letters) == sorted(
        f"line {n}" for n in range(3, len(lines) + 1)
    )
    reasons = " | ".join(str(d["reason"]) for d in letters)
    for says in ("unknown task type", "conflicting duplicate", "max_line_bytes", "not UTF-8"):
        assert says in reasons
    assert "withheld: inside a redacted field" in reasons
    kept = [d for d in letters if d["raw"] is not None]
    assert len(kept) >= 10  # what parsed is kept, redacted
    await store.close()
    rows, hits = cells_holding(store.path, SECRET)
    assert rows > len(lines)
    assert hits == []


# -- resources and errors -------------------------------------------------------------------


async def test_missing_file_is_a_config_error_naming_it(
    tmp_path: Path, sink: RecordingSink, make_source: SourceFactory
) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(ConfigError, match=f"source file not found: {path}"):
        await make_source(path).run()
    with pytest.raises(ConfigError, match="is a directory"):
        await make_source(tmp_path).run()
    assert sink.calls == []


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"max_line_bytes": 0}])
def test_bad_settings_are_config_errors(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match="must be at least 1"):
        FileSource(tmp_path / "x.jsonl", RecordingSink(), **kwargs)


async def test_close_is_idempotent_and_a_context_manager(
    tmp_path: Path, sink: RecordingSink
) -> None:
    path = write(tmp_path / "one.jsonl", [event(1)])
    async with FileSource(path, sink) as source:
        assert (await source.run()).events == 1
        assert (await source.run()).events == 1  # another pass over the file
    await source.close()
    await source.close()
    with pytest.raises(RuntimeError, match="closed"):
        await source.run()


async def test_source_waits_for_the_sink_and_close_stops_after_the_batch(
    tmp_path: Path, make_source: SourceFactory
) -> None:
    gated = GatedSink()
    path = write(tmp_path / "many.jsonl", [event(n) for n in range(100)])
    source = make_source(path, to=gated, batch_size=10)
    run = asyncio.create_task(source.run())
    for _ in range(50):
        await asyncio.sleep(0.005)
    assert gated.waiting == 1  # one batch handed over; nothing read ahead of the sink
    assert gated.events == []
    with pytest.raises(RuntimeError, match="already in progress"):
        await source.run()
    closing = asyncio.create_task(source.close())
    await asyncio.sleep(0.01)
    gated.gate.set()
    await closing
    report = await run
    assert report == FileReport(lines=10, events=10, finished=False)
    assert [n for _, n in gated.calls] == [10]


async def test_cancelled_run_closes_the_file(tmp_path: Path, make_source: SourceFactory) -> None:
    gated = GatedSink()
    path = write(tmp_path / "many.jsonl", [event(n) for n in range(100)])
    run = asyncio.create_task(make_source(path, to=gated, batch_size=10).run())
    await gated.entered.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    gc.collect()  # an unclosed file would warn (ResourceWarning -> error under this config)


# -- scale ----------------------------------------------------------------------------------


def big_file_lines(n: int) -> Iterator[bytes]:
    for i in range(n):
        if i % 1000 == 999:
            yield b"{not json"
        elif i % 2:
            yield encode(outcome(i - 1))
        else:
            yield encode(event(i))


@pytest.mark.slow  # a 200k-line file
async def test_a_200k_line_file_streams_one_batch_at_a_time(
    tmp_path: Path, sink: RecordingSink, make_source: SourceFactory
) -> None:
    lines = 200_000
    path = write(tmp_path / "big.jsonl", big_file_lines(lines))
    report = await make_source(path, batch_size=500).run()
    bad = lines // 1000
    assert report == FileReport(
        lines=lines,
        events=lines // 2,
        outcomes=lines // 2 - bad,
        dead_letters=bad,
        blank=0,
        finished=True,
    )
    assert len(sink.events) == lines // 2
    assert len(sink.outcomes) == lines // 2 - bad
    assert sink.events[-1].event_id == f"e-{lines - 2}"
    assert sink.dead[-1].location == f"line {lines}"
    assert sink.max_call <= 500
    # Every batch of 500 lines arrives as at most three calls (events, outcomes, dead).
    assert len(sink.calls) <= 3 * (lines // 500)


# -- source specs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("file:history.jsonl", ("file", "history.jsonl")),
        ("file:/var/lib/shadow/h.jsonl", ("file", "/var/lib/shadow/h.jsonl")),
        ("file:///var/lib/shadow/h.jsonl", ("file", "/var/lib/shadow/h.jsonl")),
        (
            "kafka://broker:9092?events=work&outcomes=done&group=shadow",
            ("kafka", "kafka://broker:9092?events=work&outcomes=done&group=shadow"),
        ),
    ],
)
def test_parse_source_spec(spec: str, parsed: tuple[str, str]) -> None:
    assert parse_source_spec(spec) == parsed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("history.jsonl", "unknown source 'history.jsonl'; use file:PATH.jsonl or kafka://"),
        ("http://x", "unknown source 'http://x'; use file:PATH.jsonl or kafka://HOST:PORT?"),
        ("file:", "source 'file:' has no path; use file:PATH.jsonl"),
        ("file://host/x.jsonl", "file URLs with a host are not supported"),
    ],
)
def test_parse_source_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_source_spec(spec)
    assert message in str(exc.value)
