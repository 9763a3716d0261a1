"""The review queue: reviewers say who was right, blind, on a random sample of cases.

``ReviewQueue.next`` claims a case for a reviewer, drawn uniformly at random from the task
type's current agent version's blind disagreements (and with probability
``review.agreement_share`` from its agreements, because both sides can be wrong), so the
reviewed set is an unbiased sample of each stratum (:mod:`shadow.store.review` says which
cases are eligible). The two decisions are shown as ``a`` and ``b`` in random order, and
nothing in what the reviewer sees names the agent, the human, the agent version or the
event id. ``ReviewQueue.answer`` maps the reviewer's ``a_right``/``b_right`` back to
``agent_right``/``human_right`` and stores it (with its audit entry); other reviewers'
verdicts on the case are shown only then. ``ReviewQueue.adjudicate`` is the direct,
non-blind verdict from a case's page: recorded and shown, never evidence (it is not a random
sample).

The verdicts that are evidence feed the adjudicated estimate (:mod:`shadow.adjudicated`,
``adjudicated`` in ``GET /v1/agreement``), which a gate with ``evidence: adjudicated``
judges; after each new verdict the ladder decides again.

Errors: :class:`ReviewInputError` (400, with the field's path), and the store's
:class:`~shadow.store.ReviewRefused` (404, 410) and :class:`~shadow.store.ReviewConflict`
(409).
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from shadow.checks import text_problem
from shadow.ladder import Ladder
from shadow.policy import Policy, TaskPolicy
from shadow.review_policy import VERDICTS
from shadow.store import ReviewRefused, Store
from shadow.store.review import AdjudicationRow, Drawn

__all__ = ["BLIND_VERDICTS", "MAX_NOTE", "ReviewInputError", "ReviewQueue"]

BLIND_VERDICTS = ("a_right", "b_right", "both_acceptable", "unclear")
MAX_NOTE = 2000

JSON = dict[str, Any]


class ReviewInputError(ValueError):
    """A verdict, reason or note the queue refuses (400): ``path`` names the field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class ReviewQueue:
    """The queue over the store (see the module docstring). ``rng`` draws the cases and the
    order of A and B (a seam: tests pass a seeded one); ``clock`` returns aware times."""

    def __init__(
        self,
        store: Store,
        policy: Policy,
        ladder: Ladder,
        clock: Callable[[], datetime],
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.ladder = ladder
        self.clock = clock
        self.rng = rng if rng is not None else random.SystemRandom()

    def task(self, task_type: str) -> TaskPolicy | None:
        return self.policy.task_types.get(task_type)

    def _check(self, task: TaskPolicy, verdict: object, reason: object, note: object) -> str:
        """The note, once verdict (already in the caller's terms), reason and note pass."""
        if not isinstance(reason, str) or reason not in task.review.reason_codes:
            codes = ", ".join(task.review.reason_codes)
            raise ReviewInputError("reason", f"required; one of {codes}")
        if note is None:
            note = ""
        if not isinstance(note, str):
            raise ReviewInputError("note", "expected text")
        if len(note) > MAX_NOTE:
            raise ReviewInputError("note", f"longer than {MAX_NOTE} characters")
        problem = text_problem(note, "note")
        if problem is not None:
            raise ReviewInputError(*problem)
        return note

    # -- the blind queue --------------------------------------------------------------------

    async def next(self, task_types: Sequence[str], reviewer: str) -> JSON | None:
        """Claim a case for ``reviewer`` in one of ``task_types`` (tried in random order;
        the reviewer's open claim, if any, first), or ``None`` when nothing is left."""
        order = [t for t in task_types if t in self.policy.task_types]
        self.rng.shuffle(order)
        versions = await self.store.current_versions()
        for name in order:
            version = versions.get(name)
            if version is None:
                continue
            review = self.policy.task_types[name].review
            strata = (
                ("agree", "disagree")
                if self.rng.random() < review.agreement_share
                else ("disagree", "agree")
            )
            now = self.clock()
            drawn = await self.store.draw_claim(
                task_type=name,
                agent_version=version,
                reviewer=reviewer,
                strata=strata,
                pick=self.rng.random(),
                per_case=review.reviews_per_case,
                claim_id="c-" + secrets.token_urlsafe(16),
                a_is=self.rng.choice(("agent", "human")),
                now=now,
                expires_at=now + timedelta(seconds=review.claim_ttl),
            )
            if drawn is not None:
                return self._shown(drawn)
        return None

    def _shown(self, drawn: Drawn) -> JSON:
        claim = drawn.claim
        task = self.task(claim.task_type)
        agent = {
            "decision": drawn.agent["decision"],
            "actions": self.policy.redact_actions(claim.task_type, drawn.agent["actions"]),
        }
        human = {
            "decision": drawn.human["decision"],
            "actions": self.policy.redact_actions(claim.task_type, drawn.human["actions"]),
        }
        a, b = (agent, human) if claim.a_is == "agent" else (human, agent)
        event = dict(drawn.event)
        if task is not None:
            event["payload"] = task.redact_payload(event.get("payload") or {})
        return {
            "claim": claim.claim,
            "expires_at": claim.expires_at.isoformat(),
            "task_type": claim.task_type,
            "event": event,
            "a": a,
            "b": b,
            "reason_codes": list(task.review.reason_codes) if task is not None else [],
            "remaining": drawn.remaining,
        }

    async def answer(
        self, claim: str, reviewer: str, verdict: object, reason: object, note: object
    ) -> JSON:
        """Store ``reviewer``'s verdict on ``claim`` (A/B terms): the answer of
        ``POST /v1/review/{claim}`` (docs/api.md). The same answer again is answered again."""
        if verdict not in BLIND_VERDICTS:
            raise ReviewInputError("verdict", f"required; one of {', '.join(BLIND_VERDICTS)}")
        row = await self.store.claim_row(claim)
        if row is None or row.reviewer != reviewer:
            raise ReviewRefused(404, f"unknown claim {claim!r} (or not yours)")
        task = self.task(row.task_type)
        if task is None:
            raise ReviewRefused(404, f"task type {row.task_type!r} is no longer configured")
        text = self._check(task, verdict, reason, note)
        mapped = str(verdict)
        if verdict in ("a_right", "b_right"):
            a_won = verdict == "a_right"
            mapped = "agent_right" if a_won == (row.a_is == "agent") else "human_right"
        stored, created = await self.store.answer_claim(
            claim,
            reviewer=reviewer,
            verdict=mapped,
            reason=str(reason),
            note=text,
            acceptable=task.review.acceptable(mapped, str(reason)),
            now=self.clock(),
        )
        if created:
            await self.ladder.evaluate()
        return {
            "adjudication": stored.to_json(),
            "a_was": row.a_is,
            "others": await self._others(stored),
        }

    async def _others(self, own: AdjudicationRow) -> list[JSON]:
        rows = await self.store.adjudications(own.event_id)
        return [
            r.to_json()
            for r in rows
            if r.agent_version == own.agent_version and r.reviewer != own.reviewer
        ]

    # -- direct verdicts and reads ----------------------------------------------------------

    async def adjudicate(
        self,
        event_id: str,
        task_type: str,
        agent_version: str,
        reviewer: str,
        verdict: object,
        reason: object,
        note: object,
    ) -> tuple[JSON, bool]:
        """A direct verdict (agent/human terms) on a case from its page; ``(answer,
        created)``. Not evidence: see the module docstring."""
        if verdict not in VERDICTS:
            raise ReviewInputError("verdict", f"required; one of {', '.join(VERDICTS)}")
        task = self.task(task_type)
        if task is None:
            raise ReviewInputError("event_id", f"task type {task_type!r} is not configured")
        text = self._check(task, verdict, reason, note)
        stored, created = await self.store.adjudicate(
            event_id=event_id,
            agent_version=agent_version,
            task_type=task_type,
            reviewer=reviewer,
            verdict=str(verdict),
            reason=str(reason),
            note=text,
            acceptable=task.review.acceptable(str(verdict), str(reason)),
            now=self.clock(),
        )
        return {"adjudication": stored.to_json(), "others": await self._others(stored)}, created

    async def stats(self, task_types: Sequence[str], reviewer: str) -> JSON:
        """``GET /v1/review/stats``: per task type, open claims, cases left for
        ``reviewer``, and the adjudicated block of the agreement document."""
        doc = await self.ladder.current_agreement()
        versions = await self.store.current_versions()
        out: dict[str, Any] = {}
        now = self.clock()
        for name in task_types:
            task = self.task(name)
            if task is None:
                continue
            version = versions.get(name)
            open_claims, remaining = (0, 0)
            if version is not None:
                open_claims, remaining = await self.store.queue_state(
                    task_type=name,
                    agent_version=version,
                    reviewer=reviewer,
                    per_case=task.review.reviews_per_case,
                    now=now,
                )
            body: Mapping[str, Any] = doc["task_types"].get(name, {})
            out[name] = {
                "open_claims": open_claims,
                "remaining": remaining,
                "adjudicated": body.get("adjudicated"),
            }
        return {"task_types": out}
