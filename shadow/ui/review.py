"""The review queue in the console: a reviewer works it blind, keyboard first.

``GET /ui/review[?task_type=T]`` claims a case through :class:`shadow.review.ReviewQueue`
(as ``GET /v1/review/next`` does) and shows the two decisions as A and B, in the queue's
random order, with nothing that names the agent, the human, the version or the event id.
``POST /ui/review/{claim}`` answers it (as ``POST /v1/review/{claim}``) and the page after
says which side was the agent, with the other reviewers' verdicts; ``n`` goes on to the next
case. Keys (``static/review.js``; the form works without it): ``1``-``4`` or ``a``, ``b``,
``e``, ``u`` pick a verdict, ``r`` the reason, Enter sends, ``n`` the next case.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from shadow.keys import LADDER, REVIEW
from shadow.review import ReviewInputError
from shadow.store import ReviewConflict, ReviewRefused
from shadow.ui.guard import Context, action, allowed, page, see_other
from shadow.ui.render import error_page, render

__all__ = ["VERDICTS", "answer", "queue"]

# (value, key, second key, label): the four verdicts in the order of their keys.
VERDICTS = (
    ("a_right", "1", "a", "A is right"),
    ("b_right", "2", "b", "B is right"),
    ("both_acceptable", "3", "e", "Either is acceptable"),
    ("unclear", "4", "u", "Unclear"),
)


def _asked(request: web.Request, ctx: Context) -> tuple[list[str], str]:
    """The task types to draw from (the query's, else every one the credential acts on)
    and the query's ``task_type`` (``""`` for all)."""
    policy = request.app[LADDER].policy
    asked = request.query.get("task_type", "")
    if asked:
        if asked not in policy.task_types:
            raise web.HTTPNotFound(text=f"unknown task type {asked[:100]!r}")
        return [asked], asked
    return [t for t in policy.task_types if ctx.credential.acts_on(t)], ""


def _here(asked: str, **more: str) -> str:
    query = {**({"task_type": asked} if asked else {}), **more}
    return "/ui/review" + (f"?{urlencode(query)}" if query else "")


@page("review", role="reviewer")
async def queue(request: web.Request, ctx: Context) -> web.StreamResponse:
    """The next case to review (or the answer just given, with ``?after=answer``)."""
    names, asked = _asked(request, ctx)
    if asked:
        refusal = allowed(request, ctx, "reviewer", asked)
        if refusal is not None:
            return refusal
    reviewer = ctx.credential.name
    queue_ = request.app[REVIEW]
    stats = await queue_.stats(names, reviewer)
    last = ctx.session.last_review if request.query.get("after") == "answer" else None
    shown: dict[str, Any] | None = None
    if last is None:
        shown = await queue_.next(names, reviewer)
    policy = request.app[LADDER].policy
    return render(
        "review.html",
        **ctx.page(
            "review",
            task_types=list(policy.task_types),
            asked=asked,
            stats=stats["task_types"],
            shown=shown,
            last=last,
            verdicts=VERDICTS,
            next_url=_here(asked),
        ),
    )


@action("reviewer", ("verdict", "reason", "note", "task_type"))
async def answer(request: web.Request, ctx: Context, form: dict[str, str]) -> web.StreamResponse:
    """The reviewer's verdict on their claim; then the page that reveals A and B."""
    claim = request.match_info["claim"]
    asked = form.get("task_type", "")
    if asked and asked not in request.app[LADDER].policy.task_types:
        asked = ""
    try:
        result = await request.app[REVIEW].answer(
            claim,
            ctx.credential.name,
            form.get("verdict"),
            form.get("reason"),
            form.get("note", ""),
        )
    except ReviewInputError as exc:
        return error_page(400, f"{exc.path}: {exc.message}", context=ctx.page("review"))
    except ReviewRefused as exc:
        return error_page(exc.status, str(exc), context=ctx.page("review"))
    except ReviewConflict as exc:
        return error_page(409, str(exc), context=ctx.page("review"))
    ctx.session.last_review = result
    return see_other(_here(asked, after="answer"))
