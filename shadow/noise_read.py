"""Reading the noise floor (:mod:`shadow.noise`) from the store: judge what is new, count
the rest.

:func:`read_noise_floor` first judges every human-vs-human pair and repeated try whose
verdict is missing or stale (the store's pending queries: a new second opinion, an outcome
revision, a routing record that relabels the first outcome, a new try, or compare rules
that changed since the verdict was made: a new evidence epoch), a page at a time, and
stores those verdicts; then it reads each task type's counts with aggregate queries and
bounds them. What was judged before is never read back as bodies, so the cost of a read
grows with what changed since the last one, not with the history (the counts are SQL over
the verdicts, like the agreement view over the comparisons).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from shadow.diff import Differ
from shadow.noise import NoiseCounts, NoiseFloor, floor_of, judge_human, judge_repeat
from shadow.policy import Policy
from shadow.store import Store

__all__ = ["judge_noise", "read_noise_floor"]

BATCH = 5000
"""Pairs (or tries) judged per store round trip."""


async def judge_noise(
    store: Store, policy: Policy, clock: Callable[[], datetime], *, batch: int = BATCH
) -> tuple[int, int]:
    """Judge and store every pending human-vs-human pair and repeated try of the configured
    task types; returns how many of each were judged. A read-only store (``shadow report
    --db``) is not written: its noise floor is the verdicts as the sidecar last stored them
    (it judges on every join-health read, and at start)."""
    if store.read_only:
        return 0, 0
    rules = [(name, task.compare_hash) for name, task in policy.task_types.items()]
    differs = {name: Differ(task.compare) for name, task in policy.task_types.items()}
    hashes = dict(rules)
    humans = tries = 0
    seen: set[str] = set()
    while True:
        pairs = await store.pending_human(rules, limit=batch)
        fresh = [p for p in pairs if p.event_id not in seen]
        if not fresh:  # nothing left (or only what this pass stored: never loop on it)
            break
        seen.update(p.event_id for p in fresh)
        verdicts = [judge_human(p, differs[p.task_type], hashes[p.task_type]) for p in fresh]
        await store.put_human_verdicts(verdicts, now=clock())
        humans += len(verdicts)
        if len(pairs) < batch:
            break
    done: set[tuple[str, int]] = set()
    while True:
        found = await store.pending_repeats(rules, limit=batch)
        todo = [t for t in found if (t.event_id, t.attempt) not in done]
        if not todo:
            break
        done.update((t.event_id, t.attempt) for t in todo)
        judged = [judge_repeat(t, differs[t.task_type], hashes[t.task_type]) for t in todo]
        await store.put_repeat_verdicts(judged, now=clock())
        tries += len(judged)
        if len(found) < batch:
            break
    return humans, tries


async def read_noise_floor(
    store: Store,
    policy: Policy,
    versions: Mapping[str, str | None],
    clock: Callable[[], datetime],
) -> dict[str, NoiseFloor]:
    """Every configured task type's :class:`NoiseFloor` (the agent's parts for its version
    in ``versions``), after judging what is pending (:func:`judge_noise`)."""
    await judge_noise(store, policy, clock)
    counts = await store.noise_counts(
        [(name, versions.get(name), task.repeats) for name, task in policy.task_types.items()]
    )
    return {
        name: floor_of(counts.get(name, NoiseCounts()), task.autonomy.alpha)
        for name, task in policy.task_types.items()
    }
