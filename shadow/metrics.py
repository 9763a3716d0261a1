"""Every Prometheus metric the sidecar exports, defined once on an injected registry.

Names follow ``shadow_<what>_<unit>``. Label values are bounded: task types outside the
policy are reported as ``other``, field paths outside the task's rules as ``other``, record
kinds outside :data:`KINDS` as ``unknown``, and the reasons of dead letters and rejections
are the fixed vocabulary :class:`shadow.errors.Reason` (a code carried with the error, never
read from its message), so a hostile stream cannot explode the series count.

Gauges describing evidence and autonomy are *set* from the store after each evaluation (the
store is the source of truth: reversals and restarts stay exact); counters count what this
process did since it started.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from shadow.budgets import BUDGET_NAMES, BudgetEvidence, judge, judged_gate, projected_daily_cost
from shadow.errors import Reason
from shadow.join_health import JoinHealth
from shadow.model import Comparison, Evidence, Handling, ShadowDecision
from shadow.noise import NoiseFloor
from shadow.policy import OTHER_SEGMENT, Policy
from shadow.promotion import LadderState, Move, Step
from shadow.stats import lower_bound, upper_bound

__all__ = [
    "DEAD_LETTER_REASONS",
    "KINDS",
    "OTHER",
    "REPEAT_SKIPS",
    "UNSTORABLE_TABLES",
    "Metrics",
    "TraceCounters",
    "auth_refusals",
    "trace_counters",
]

OTHER = "other"
KINDS = ("event", "outcome", "comparison", "autonomy")
"""Record kinds a rejection is counted under; anything else is ``unknown``."""
DEAD_LETTER_REASONS = (
    Reason.CONFLICT,
    Reason.MALFORMED,
    Reason.ENCODING,
    Reason.TOO_LARGE,
    Reason.UNKNOWN_TASK_TYPE,
    Reason.BAD_KIND,
    Reason.INVALID,
    Reason.UNMATCHED,
    Reason.UNSUPPORTED_MEDIA_TYPE,
    Reason.UNAUTHORIZED,
    Reason.BAD_SIGNATURE,
)
"""The reasons a record can be dead-lettered for (each exported at 0 from start-up)."""
UNSTORABLE_TABLES = ("events", "outcomes", "decisions", "comparisons", "tool_calls", "handling")
"""The tables whose batch writers set aside rows they cannot hold (anything else: ``other``)."""
REPEAT_SKIPS = ("queue_full", "not_stored")
"""Why a repeated case's extra tries are missing (``shadow_repeats_skipped_total``)."""
_TOOL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0, 300.0)
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def auth_refusals(registry: CollectorRegistry) -> Counter:
    """Requests refused for their credential, by the role asked for and the status (401: no
    or an unknown token; 403: a token without the role or the task type; 400: an actor that
    is not the token's name). Built with the app, before the store opens."""
    return Counter(
        "shadow_auth_refusals",
        "Requests refused for their credential (401 unknown, 403 role or task type missing, "
        "400 another actor named), by role and status",
        ["role", "status"],
        registry=registry,
    )


@dataclass(frozen=True, slots=True)
class TraceCounters:
    """Spans exported and dropped (shadow.tracing). Built with the app, before the store
    opens (the tracer is made with the agent's transport, which sends its ``traceparent``)."""

    exported: Counter
    dropped: Counter


def trace_counters(registry: CollectorRegistry) -> TraceCounters:
    """The tracing exporter's counters: spans a backend took, and spans dropped by reason
    (``queue_full``, ``export_failed``, ``shutdown``; all exported at 0 from the start)."""
    dropped = Counter(
        "shadow_trace_spans_dropped",
        "Trace spans dropped instead of exported (queue_full, export_failed, shutdown); the "
        "pipeline never waits for the tracing backend",
        ["reason"],
        registry=registry,
    )
    for reason in ("queue_full", "export_failed", "shutdown"):
        dropped.labels(reason)
    return TraceCounters(
        Counter(
            "shadow_trace_spans_exported",
            "Trace spans the OTLP backend accepted",
            registry=registry,
        ),
        dropped,
    )


class Metrics:
    """The sidecar's metrics. ``registry`` is injected (tests use their own)."""

    def __init__(self, registry: CollectorRegistry, policy: Policy) -> None:
        self.registry = registry
        self.policy = policy
        self._mirror_rules = frozenset(rule.name for rule in policy.mirror)
        r = registry
        self.events = Counter(
            "shadow_events",
            "Work events received, by task type, source and result",
            ["task_type", "source", "result"],
            registry=r,
        )
        self.outcomes = Counter(
            "shadow_outcomes",
            "Human outcomes received, by source and result",
            ["source", "result"],
            registry=r,
        )
        self.comparisons = Counter(
            "shadow_comparisons",
            "Comparisons made (re-comparisons after reversals included)",
            ["task_type", "agent_version", "verdict"],
            registry=r,
        )
        self.reversals = Counter(
            "shadow_outcome_reversals",
            "Outcomes reversed after a comparison was made",
            ["task_type"],
            registry=r,
        )
        self.field_mismatches = Counter(
            "shadow_field_mismatches",
            "Field-level disagreements, by field",
            ["task_type", "field"],
            registry=r,
        )
        self.critical_misses = Counter(
            "shadow_critical_misses",
            "Comparisons with a critical field mismatch",
            ["task_type", "agent_version"],
            registry=r,
        )
        self.agreement = Gauge(
            "shadow_agreement_ratio",
            "Observed agreement of the evidence",
            ["task_type", "agent_version"],
            registry=r,
        )
        self.lower = Gauge(
            "shadow_agreement_lower_ratio",
            "Anytime-valid lower bound of agreement",
            ["task_type", "agent_version"],
            registry=r,
        )
        self.upper = Gauge(
            "shadow_agreement_upper_ratio",
            "Anytime-valid upper bound of agreement",
            ["task_type", "agent_version"],
            registry=r,
        )
        self.evidence_n = Gauge(
            "shadow_evidence_comparisons",
            "Comparisons counted as evidence (n)",
            ["task_type", "agent_version"],
            registry=r,
        )
        self.evidence_agree = Gauge(
            "shadow_evidence_agreements",
            "Agreeing comparisons in the evidence",
            ["task_type", "agent_version"],
            registry=r,
        )
        self.evidence_critical = Gauge(
            "shadow_evidence_critical_misses",
            "Critical misses in the evidence",
            ["task_type", "agent_version"],
            registry=r,
        )
        # Per segment label: a task type's declared segments and "other", so a flood of
        # undeclared segment names never adds a series (shadow.segments).
        self.segment_n = Gauge(
            "shadow_segment_comparisons",
            "Evidence comparisons per segment (the current agent version)",
            ["task_type", "segment"],
            registry=r,
        )
        self.segment_agreement = Gauge(
            "shadow_segment_agreement_ratio",
            "Observed agreement per segment (the current agent version)",
            ["task_type", "segment"],
            registry=r,
        )
        self.segment_lower = Gauge(
            "shadow_segment_agreement_lower_ratio",
            "Anytime-valid lower bound of agreement per segment",
            ["task_type", "segment"],
            registry=r,
        )
        self.segment_routed = Gauge(
            "shadow_segment_routed",
            "1 while a per_segment: route gate sends the segment's items to humans",
            ["task_type", "segment"],
            registry=r,
        )
        # Budgets (shadow.budgets), per task type and budget name (cost_usd_per_decision,
        # latency_ms_p95, error_rate): bounded labels. The gate judged is the next one (the
        # promotion's), else the current level's; exceeded is judged at the current level's.
        self.budget_limit = Gauge(
            "shadow_budget_limit",
            "A budget of the gate judged (USD per decision, p95 ms, or error rate)",
            ["task_type", "budget"],
            registry=r,
        )
        self.budget_upper = Gauge(
            "shadow_budget_upper",
            "Upper confidence bound judged against the budget (mean USD; error rate; for "
            "latency_ms_p95 the share of decisions slower than the limit, met at <= 0.05)",
            ["task_type", "budget"],
            registry=r,
        )
        self.budget_burn = Gauge(
            "shadow_budget_burn_ratio",
            "Upper confidence bound over the budget (>= 1: not met)",
            ["task_type", "budget"],
            registry=r,
        )
        self.budget_exceeded = Gauge(
            "shadow_budget_exceeded",
            "1 while a budget of the current level's gate is clearly exceeded (its lower bound "
            "above it)",
            ["task_type", "budget"],
            registry=r,
        )
        self.projected_cost = Gauge(
            "shadow_projected_daily_cost_usd",
            "Events of the last 24 h times the cost per decision (agent: its mean known cost; "
            "human: human_cost_usd_per_decision)",
            ["task_type", "who"],
            registry=r,
        )
        self.level = Gauge(
            "shadow_autonomy_level", "Current autonomy level (0-4)", ["task_type"], registry=r
        )
        self.acceptance_n = Gauge(
            "shadow_acceptance_comparisons",
            "Comparisons of items the agent handled or a human decided with its proposal shown "
            "(not evidence)",
            ["task_type", "agent_version", "handled_by"],
            registry=r,
        )
        self.acceptance_agree = Gauge(
            "shadow_acceptance_agreements",
            "Agreeing comparisons among the acceptance comparisons",
            ["task_type", "agent_version", "handled_by"],
            registry=r,
        )
        self.routes = Counter(
            "shadow_routes",
            "Routing answers given (GET /v1/route), by how the item is handled",
            ["task_type", "handled_by"],
            registry=r,
        )
        self.handling_conflicts = Counter(
            "shadow_handling_conflicts",
            "Outcomes whose handled_by contradicts the sidecar's routing record (the record wins)",
            ["task_type"],
            registry=r,
        )
        self.proposal = Gauge(
            "shadow_autonomy_proposal_level",
            "Level proposed and awaiting approval (0: none)",
            ["task_type"],
            registry=r,
        )
        self.changes = Counter(
            "shadow_autonomy_changes",
            "Autonomy changes, by move",
            ["task_type", "move"],
            registry=r,
        )
        self.frozen = Gauge("shadow_frozen", "1 while the sidecar is frozen", registry=r)
        self.gate_agreement = Gauge(
            "shadow_gate_agreement_ratio",
            "Agreement a level's gate requires",
            ["task_type", "level"],
            registry=r,
        )
        self.gate_min_samples = Gauge(
            "shadow_gate_min_samples",
            "Minimum comparisons a level's gate requires",
            ["task_type", "level"],
            registry=r,
        )
        self.outcome_coverage = Gauge(
            "shadow_outcome_coverage_ratio",
            "Share of the latest sampled events past their join TTL whose outcome arrived "
            "within it (no series until one is judged)",
            ["task_type"],
            registry=r,
        )
        self.coverage_events = Gauge(
            "shadow_outcome_coverage_events",
            "Sampled events of the join-health window, by state: covered, missing (no "
            "outcome within the join TTL), pending (still inside it)",
            ["task_type", "state"],
            registry=r,
        )
        self.unknown_outcomes = Gauge(
            "shadow_unknown_outcomes",
            "Of the latest outcomes past their join TTL, those whose event did not arrive "
            "within it",
            registry=r,
        )
        self.routed_unanswered = Gauge(
            "shadow_routed_unanswered_items",
            "Of the latest routed items past their join TTL, those with no outcome within it",
            ["task_type"],
            registry=r,
        )
        self.evidence_invalid = Gauge(
            "shadow_evidence_invalid",
            "1 while the task type's evidence is invalid (outcome coverage below "
            "min_outcome_coverage): nothing is promoted",
            ["task_type"],
            registry=r,
        )
        # The noise floor (shadow.noise), per task type; bound is estimate, lower or upper.
        self.human_ceiling = Gauge(
            "shadow_human_ceiling",
            "Human-vs-human agreement (first outcomes decided blind against their second "
            "opinions): the estimate and its anytime-valid bounds",
            ["task_type", "bound"],
            registry=r,
        )
        self.self_consistency = Gauge(
            "shadow_self_consistency",
            "The current agent version's agreement with itself on repeated cases: the "
            "estimate and its anytime-valid bounds",
            ["task_type", "bound"],
            registry=r,
        )
        self.noisy_fields = Gauge(
            "shadow_noisy_fields",
            "Compared fields flagged noisy: humans disagree on them with each other at least "
            "as often as with the agent",
            ["task_type"],
            registry=r,
        )
        self.repeats_skipped = Counter(
            "shadow_repeats_skipped",
            "Repeated cases whose extra tries were not made or not stored, by reason",
            ["task_type", "reason"],
            registry=r,
        )
        self.agent_latency = Histogram(
            "shadow_agent_latency_seconds",
            "Agent call latency (retries included)",
            ["task_type"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.agent_calls = Counter(
            "shadow_agent_calls", "Agent calls, by result", ["task_type", "result"], registry=r
        )
        self.agent_cost = Counter(
            "shadow_agent_cost_usd",
            "Agent cost reported by the agent",
            ["task_type", "agent_version"],
            registry=r,
        )
        self.agent_tokens = Counter(
            "shadow_agent_tokens",
            "Agent tokens reported by the agent",
            ["task_type", "direction"],
            registry=r,
        )
        self.breaker_open = Gauge(
            "shadow_agent_breaker_open", "1 while the agent circuit breaker is open", registry=r
        )
        self.pending = Gauge(
            "shadow_pending_joins",
            "Open joins, by what they wait for",
            ["waiting_for"],
            registry=r,
        )
        self.dead_letters = Counter(
            "shadow_dead_letters",
            "Records dead-lettered, by source and reason",
            ["source", "reason"],
            registry=r,
        )
        self.unstorable = Counter(
            "shadow_unstorable_rows",
            "Rows a store write could not hold (text with no UTF-8 form, JSON DuckDB "
            "refuses): each dead-lettered with the reason while the rest of its batch was "
            "stored, by table",
            ["table"],
            registry=r,
        )
        self.task_failures = Counter(
            "shadow_task_failures",
            "Background tasks that failed (each logged once with its traceback; restarted "
            "with backoff, or the process stops), by task",
            ["task"],
            registry=r,
        )
        self.purged = Counter(
            "shadow_purged_rows",
            "Rows deleted by retention (closed cases and dead letters older than the "
            "retention setting), by table",
            ["table"],
            registry=r,
        )
        self.ingest_rejected = Counter(
            "shadow_ingest_rejected",
            "Records (or whole bodies) refused at ingest, by kind, source and reason",
            ["kind", "source", "reason"],
            registry=r,
        )
        self.tool_calls = Counter(
            "shadow_tool_calls",
            "Tool calls through the gateway, by task type, tool (names outside the task "
            "type's catalog are 'other'), class and outcome",
            ["task_type", "tool", "class", "outcome"],
            registry=r,
        )
        self.tool_latency = Histogram(
            "shadow_tool_call_seconds",
            "Time the gateway took to answer a tool call (the upstream's time included; for "
            "an approval, how long it waited)",
            ["task_type", "outcome"],
            buckets=_TOOL_BUCKETS,
            registry=r,
        )
        self.approvals_pending = Gauge(
            "shadow_tool_approvals_pending",
            "Tool writes held for a human's approval now",
            ["task_type"],
            registry=r,
        )
        self.approval_oldest = Gauge(
            "shadow_tool_approval_oldest_seconds",
            "Age of the oldest tool write waiting for approval (0 when none waits)",
            ["task_type"],
            registry=r,
        )
        self.kafka_lag = Gauge(
            "shadow_kafka_consumer_lag_messages",
            "Messages not read yet: the partition's high watermark minus the consumer's position",
            ["topic", "partition"],
            registry=r,
        )
        self.kafka_uncommitted = Gauge(
            "shadow_kafka_uncommitted_messages",
            "Messages read and stored but not committed yet (held back by open joins, or "
            "waiting for the next commit): what a restart or rebalance reads again",
            ["topic", "partition"],
            registry=r,
        )
        self.kafka_connected = Gauge(
            "shadow_kafka_connected", "1 while the Kafka broker answers metadata probes", registry=r
        )
        self.kafka_paused = Gauge(
            "shadow_kafka_paused",
            "1 while Kafka partitions are paused for backpressure",
            registry=r,
        )
        self.kafka_published = Counter(
            "shadow_kafka_published",
            "Records published to Kafka, by stream (comparisons, handling, autonomy, dead_letters)",
            ["stream"],
            registry=r,
        )
        self.kafka_publish_errors = Counter(
            "shadow_kafka_publish_errors",
            "Failed Kafka publish attempts (retried), by stream",
            ["stream"],
            registry=r,
        )
        self.mirror_requests = Counter(
            "shadow_mirror_requests",
            "Mirrored requests (mirror target and proxy copies), by rule and result",
            ["rule", "result"],
            registry=r,
        )
        self.mirror_queued = Gauge(
            "shadow_mirror_queue_requests",
            "Mirrored requests received and waiting to be stored",
            registry=r,
        )
        self.info = Info("shadow_build", "Sidecar build information", registry=r)
        self.info.info({"version": "0.1.0", "policy_hash": policy.hash})
        self._publish_gates()
        self._initialise_counters()

    # -- label hygiene ----------------------------------------------------------------------

    def task_label(self, task_type: str) -> str:
        return task_type if task_type in self.policy.task_types else OTHER

    def field_label(self, task_type: str, path: str) -> str:
        task = self.policy.task_types.get(task_type)
        if path == "actions" or (task is not None and path in task.compare.fields):
            return path
        return OTHER

    @staticmethod
    def source_label(source: str) -> str:
        """``file:/a/b.jsonl`` -> ``file``; ``kafka://...`` -> ``kafka``; ``http`` stays."""
        return source.split(":", 1)[0] if ":" in source else source

    # -- recording --------------------------------------------------------------------------

    def _initialise_counters(self) -> None:
        """Export the known label sets of event-like counters at 0 from the start: a series
        that first appears at 1 is invisible to ``increase()``, so the first demotion or the
        first burst of dead letters would never alert (dashboards/prometheus/)."""
        for name in self.policy.task_types:
            for move in Move:
                self.changes.labels(name, move.value)
            for handling in Handling:
                self.routes.labels(name, handling.value)
            self.handling_conflicts.labels(name)
            if self.policy.task_types[name].repeat_rate > 0:
                for reason in REPEAT_SKIPS:
                    self.repeats_skipped.labels(name, reason)
        for source in ("http", "file", "kafka", "mirror", "proxy"):
            for reason in DEAD_LETTER_REASONS:
                self.dead_letters.labels(source, reason.value)
        for rule in (*(r.name for r in self.policy.mirror), OTHER):
            for result in ("accepted", "dropped"):
                self.mirror_requests.labels(rule, result)
        for table in ("events", "outcomes", "decisions", "second_opinions", "repeats"):
            self.purged.labels(table)
        self.purged.labels("dead_letters")
        for table in UNSTORABLE_TABLES:
            self.unstorable.labels(table)

    def _publish_gates(self) -> None:
        for name, task in self.policy.task_types.items():
            for level, gate in task.autonomy.gates.items():
                self.gate_agreement.labels(name, str(level)).set(gate.agreement)
                self.gate_min_samples.labels(name, str(level)).set(gate.min_samples)

    def event_results(self, task_types: Iterable[str], source: str, results: Iterable[str]) -> None:
        src = self.source_label(source)
        for task_type, result in zip(task_types, results, strict=True):
            self.events.labels(self.task_label(task_type), src, result).inc()

    def outcome_results(self, source: str, results: Iterable[str]) -> None:
        src = self.source_label(source)
        for result in results:
            self.outcomes.labels(src, result).inc()

    def decision(self, task_type: str, d: ShadowDecision) -> None:
        tt = self.task_label(task_type)
        if d.latency_ms is not None:
            self.agent_latency.labels(tt).observe(d.latency_ms / 1000.0)
        self.agent_calls.labels(tt, "error" if d.error else "ok").inc()
        if d.usage.cost_usd:
            self.agent_cost.labels(tt, d.agent_version).inc(d.usage.cost_usd)
        if d.usage.input_tokens:
            self.agent_tokens.labels(tt, "input").inc(d.usage.input_tokens)
        if d.usage.output_tokens:
            self.agent_tokens.labels(tt, "output").inc(d.usage.output_tokens)

    def comparison(self, c: Comparison) -> None:
        tt = self.task_label(c.task_type)
        self.comparisons.labels(tt, c.agent_version, c.verdict.value).inc()
        for f in c.mismatches:
            self.field_mismatches.labels(tt, self.field_label(c.task_type, f.path)).inc()
        if c.critical_miss:
            self.critical_misses.labels(tt, c.agent_version).inc()

    def reversal(self, task_type: str) -> None:
        self.reversals.labels(self.task_label(task_type)).inc()

    def dead_letter(self, source: str, code: Reason) -> None:
        self.dead_letters.labels(self.source_label(source), code.value).inc()

    def mirrored(self, rule: str | None, result: str | Reason, count: int = 1) -> None:
        """Count mirrored requests of ``rule`` (``None``: none matched; a name outside the
        policy is ``other``)."""
        label = "none" if rule is None else rule if rule in self._mirror_rules else OTHER
        self.mirror_requests.labels(label, str(result)).inc(count)

    def set_aside(self, table: str, count: int) -> None:
        """Count rows of ``table`` the store dead-lettered because it could not hold them
        (:meth:`shadow.store.Store.observe_set_aside`; called on the store's thread)."""
        self.unstorable.labels(table if table in UNSTORABLE_TABLES else OTHER).inc(count)

    def task_failure(self, task: str) -> None:
        """One background task failed (:mod:`shadow.supervisor`)."""
        self.task_failures.labels(task).inc()

    def purged_rows(self, by_table: Mapping[str, int]) -> None:
        for table, count in by_table.items():
            self.purged.labels(table).inc(count)

    def rejected(self, kind: str, source: str, code: Reason, count: int = 1) -> None:
        """Count ``count`` records (or whole bodies) of ``kind`` refused at ingest. Records,
        not their errors: one record with three bad fields is one."""
        if count > 0:
            kind = kind if kind in KINDS else "unknown"
            self.ingest_rejected.labels(kind, self.source_label(source), code.value).inc(count)

    def steps(self, steps: Iterable[Step]) -> None:
        for s in steps:
            if s.changed:
                self.changes.labels(self.task_label(s.after.task_type), s.move.value).inc()

    def evidence(self, evidence: Mapping[str, Mapping[str, Evidence]]) -> None:
        """Set the evidence gauges from the store's agreement view."""
        for task_type, versions in evidence.items():
            if task_type not in self.policy.task_types:
                continue
            task = self.policy.task_types[task_type]
            alpha = task.autonomy.alpha
            for version, ev in versions.items():
                labels = (task_type, version)
                self.evidence_n.labels(*labels).set(ev.n)
                self.evidence_agree.labels(*labels).set(ev.agree)
                self.evidence_critical.labels(*labels).set(ev.critical)
                self.agreement.labels(*labels).set(ev.agree / ev.n if ev.n else 0.0)
                self.lower.labels(*labels).set(lower_bound(ev.agree, ev.n, alpha))
                self.upper.labels(*labels).set(upper_bound(ev.agree, ev.n, alpha))

    def segments(
        self, found: Mapping[str, Mapping[str, Evidence]], routed: Mapping[str, frozenset[str]]
    ) -> None:
        """Set the per-segment gauges: ``found`` per task type, the current version's evidence
        per segment label; ``routed`` the segments sent to humans."""
        for task_type, by_label in found.items():
            task = self.policy.task_types.get(task_type)
            if task is None:
                continue
            alpha = task.autonomy.alpha
            for label in (*task.segments, OTHER_SEGMENT):
                ev = by_label.get(label)
                n, agree = (ev.n, ev.agree) if ev is not None else (0, 0)
                self.segment_n.labels(task_type, label).set(n)
                self.segment_agreement.labels(task_type, label).set(agree / n if n else 0.0)
                self.segment_lower.labels(task_type, label).set(lower_bound(agree, n, alpha))
                hot = label in routed.get(task_type, frozenset())
                self.segment_routed.labels(task_type, label).set(1 if hot else 0)

    def budgets(
        self, states: Mapping[str, LadderState], found: Mapping[str, BudgetEvidence]
    ) -> None:
        """Set the budget gauges and the projected daily cost (:mod:`shadow.budgets`) from
        each task type's state and its current version's budget evidence; a budget the gate
        judged does not state, or a cost not known, has no series."""
        for name, state in states.items():
            task = self.policy.task_types.get(name)
            if task is None:
                continue
            ev = found.get(name)
            gate = judged_gate(task, state.level)
            judged = judge(gate, task, ev) if gate is not None else None
            current = task.autonomy.gate_for(state.level)
            over = {r.name for r in judge(current, task, ev).exceeded} if current else set()
            for budget in BUDGET_NAMES:
                result = judged.get(budget) if judged is not None else None
                if result is None:
                    for gauge in (self.budget_limit, self.budget_upper, self.budget_burn):
                        with contextlib.suppress(KeyError):
                            gauge.remove(name, budget)
                else:
                    self.budget_limit.labels(name, budget).set(result.limit)
                    self.budget_upper.labels(name, budget).set(result.upper)
                    if result.burn is None:
                        with contextlib.suppress(KeyError):
                            self.budget_burn.remove(name, budget)
                    else:
                        self.budget_burn.labels(name, budget).set(result.burn)
                self.budget_exceeded.labels(name, budget).set(1 if budget in over else 0)
            projected = projected_daily_cost(task, ev)
            for who, key in (("agent", "agent_usd"), ("human", "human_usd")):
                value = projected[key]
                if value is None:
                    with contextlib.suppress(KeyError):
                        self.projected_cost.remove(name, who)
                else:
                    self.projected_cost.labels(name, who).set(value)

    def acceptance(self, rows: Iterable[tuple[str, str, str, int, int]]) -> None:
        """Set the acceptance gauges from ``(task_type, version, handled_by, n, agree)``."""
        for task_type, version, handled_by, n, agree in rows:
            if task_type not in self.policy.task_types:
                continue
            self.acceptance_n.labels(task_type, version, handled_by).set(n)
            self.acceptance_agree.labels(task_type, version, handled_by).set(agree)

    def ladder(self, states: Mapping[str, LadderState], frozen: bool) -> None:
        self.frozen.set(1 if frozen else 0)
        for name, state in states.items():
            self.level.labels(self.task_label(name)).set(int(state.level))
            proposed = state.proposal.to_level if state.proposal else 0
            self.proposal.labels(self.task_label(name)).set(int(proposed))

    def join_health(
        self, health: Mapping[str, JoinHealth], invalid: Mapping[str, str | None]
    ) -> None:
        """Set the join-health gauges (:mod:`shadow.join_health`) from each task type's
        health and why its evidence is invalid (``None``: valid)."""
        unknown = 0
        for name, h in health.items():
            if name not in self.policy.task_types:
                continue
            coverage = h.coverage
            if coverage is None:
                with contextlib.suppress(KeyError):  # not judged: no series
                    self.outcome_coverage.remove(name)
            else:
                self.outcome_coverage.labels(name).set(coverage)
            for state, count in (("covered", h.covered), ("missing", h.missing)):
                self.coverage_events.labels(name, state).set(count)
            self.coverage_events.labels(name, "pending").set(h.pending)
            self.routed_unanswered.labels(name).set(h.routed_unanswered)
            self.evidence_invalid.labels(name).set(1 if invalid.get(name) else 0)
            unknown = h.unknown_outcomes  # the sidecar's: the same for every task type
        self.unknown_outcomes.set(unknown)

    def noise_floor(self, floors: Mapping[str, NoiseFloor]) -> None:
        """Set the noise-floor gauges (:mod:`shadow.noise`) from each task type's floor:
        no human-ceiling or self-consistency series while nothing is measured (n 0)."""
        for name, floor in floors.items():
            if name not in self.policy.task_types:
                continue
            for gauge, found in (
                (self.human_ceiling, floor.human_ceiling),
                (self.self_consistency, floor.self_consistency),
            ):
                for bound, value in (
                    ("estimate", found.share),
                    ("lower", found.lower),
                    ("upper", found.upper),
                ):
                    if value is None or found.n == 0:
                        with contextlib.suppress(KeyError):
                            gauge.remove(name, bound)
                    else:
                        gauge.labels(name, bound).set(value)
            self.noisy_fields.labels(name).set(len(floor.noisy_fields))

    def repeat_skipped(self, task_type: str, reason: str) -> None:
        """A repeated case's tries not made (``queue_full``) or not stored (``not_stored``)."""
        self.repeats_skipped.labels(self.task_label(task_type), reason).inc()

    def tool_call(
        self, task_type: str, tool: str, tool_class: str, outcome: str, seconds: float
    ) -> None:
        task = self.task_label(task_type)
        self.tool_calls.labels(task, tool, tool_class, outcome).inc()
        self.tool_latency.labels(task, outcome).observe(seconds)

    def tool_approvals(self, waiting: Mapping[str, list[float]]) -> None:
        """Pending approvals per task type (``waiting``: their ages in seconds)."""
        for name in self.policy.task_types:
            ages = waiting.get(name, [])
            self.approvals_pending.labels(name).set(len(ages))
            self.approval_oldest.labels(name).set(max(ages, default=0.0))

    def pending_joins(self, pending: Mapping[str, int]) -> None:
        for key, value in pending.items():
            self.pending.labels(key).set(value)
