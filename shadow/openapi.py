"""The OpenAPI 3.0 description of the HTTP API, served at ``/openapi.json``.

It documents exactly the routes in :func:`shadow.routes.routes` (a test compares them) and is
what the schemathesis fuzz test drives.
"""

from __future__ import annotations

from typing import Any

from shadow.model import MAX_DEPTH, MAX_ID_LENGTH, TASK_TYPE_PATTERN, Handling
from shadow.review import BLIND_VERDICTS, MAX_NOTE
from shadow.review_policy import VERDICTS

__all__ = ["openapi_spec"]


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _resp(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = _json(schema)
    return out


_ERR = _ref("Error")
_TASK = {"name": "task_type", "in": "path", "required": True, "schema": {"type": "string"}}
_ADMIN: list[dict[str, list[str]]] = [{"admin": []}]
_WRITE_ERRORS = {
    "400": _resp("bad request body, or an actor that is not the credential's name", _ERR),
    "401": _resp("no or an unknown token", _ERR),
    "403": _resp(
        "the credential lacks the role or the task type, a two-person move's second "
        "approval from the same credential, or writes disabled (no credential configured)",
        _ERR,
    ),
    "404": _resp("unknown task type", _ERR),
    "409": _resp("the ladder refuses the change", _ERR),
}


def _ingest(kind: str, schema: str) -> dict[str, Any]:
    array = {"type": "array", "items": _ref(schema), "minItems": 1}
    body_schema = {"oneOf": [_ref(schema), array]}
    return {
        "summary": f"Ingest {kind}: one JSON object, a JSON array, or NDJSON lines",
        "description": "The body may be sent with Content-Encoding gzip or deflate; a "
        "compressed stream that does not end properly is refused whole (400).",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": body_schema},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
        },
        "responses": {
            "202": _resp("stored durably (per-record errors listed)", _ref("IngestResult")),
            "400": _resp(
                "malformed body (a compressed stream that does not end included) or no valid "
                "record",
                _ERR,
            ),
            "401": _resp("no or a wrong ingest token, or a bad signature", _ERR),
            "408": _resp("the body did not arrive within body_timeout", _ERR),
            "409": _resp("every record conflicts with a stored one", _ERR),
            "413": _resp("body (as sent or decompressed) or batch too large", _ERR),
            "415": _resp("unsupported content type, charset or content encoding", _ERR),
            "422": _resp("unknown task type", _ERR),
        },
    }


def _mirror() -> dict[str, Any]:
    return {
        "summary": "The mirror target: a copy of one of the host's own requests",
        "description": "Answered as soon as the body has arrived, before it is parsed or "
        "stored; the policy's mirror rules turn it into a work event or an outcome, and "
        "what they cannot is dead-lettered (docs/mirroring.md).",
        "responses": {
            "202": _resp(
                "received (queued: false when the queue was full and the copy dropped)",
                {"type": "object", "properties": {"queued": {"type": "boolean"}}},
            ),
            "401": _resp("no or a wrong ingest token, or a bad signature", _ERR),
            "408": _resp("the body did not arrive within body_timeout", _ERR),
            "413": _resp("body larger than max_body_bytes", _ERR),
        },
    }


def _write(summary: str, body: dict[str, Any] | None, *, required: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "security": _ADMIN,
        "responses": {"200": _resp("done", {"type": "object"}), **_WRITE_ERRORS},
    }
    if body is not None:
        op["requestBody"] = {"required": required, "content": _json(body)}
    return op


# The model's own limits (shadow/model.py), so a body valid per this document is accepted.
_ID = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_ID_LENGTH,
    "pattern": "^[^\\u0000-\\u001f\\u007f]+$",
    "description": "no control characters",
}
_DEPTH_NOTE = f"any JSON object nested at most {MAX_DEPTH} levels deep"
_LEVEL = {"type": "string", "enum": ["L0", "L1", "L2", "L3", "L4"]}
HANDLED_BY = [h.value for h in Handling]
_ACTOR = {"type": "string", "description": "clipped to 200 characters"}
_REASON = {"type": "string", "description": "clipped to 1000 characters"}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}, "errors": {"type": "array"}},
    },
    "WorkEvent": {
        "type": "object",
        "required": ["event_id", "task_type", "payload"],
        "additionalProperties": False,
        "properties": {
            "kind": {"type": "string", "enum": ["event"]},
            "event_id": _ID,
            "task_type": {"type": "string", "pattern": TASK_TYPE_PATTERN},
            "payload": {"type": "object", "description": _DEPTH_NOTE},
            "occurred_at": {"type": "string", "format": "date-time"},
            "segment": {**_ID, "minLength": 0, "pattern": "^[^\\u0000-\\u001f\\u007f]*$"},
        },
    },
    "Outcome": {
        "type": "object",
        "required": ["event_id", "decision"],
        "additionalProperties": False,
        "properties": {
            "kind": {"type": "string", "enum": ["outcome"]},
            "event_id": _ID,
            "decision": {"type": "object", "description": _DEPTH_NOTE},
            "actions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["tool"],
                    "additionalProperties": False,
                    "properties": {
                        "tool": _ID,
                        "args": {"type": "object"},
                    },
                },
            },
            "decided_by": {**_ID, "minLength": 0, "pattern": "^[^\\u0000-\\u001f\\u007f]*$"},
            "decided_at": {"type": "string", "format": "date-time"},
            "handled_by": {"type": "string", "enum": HANDLED_BY},
            "second_opinion": {
                "description": "An independent second human decision (the human ceiling), or "
                "true: this record is the event's second opinion, never an outcome revision",
                "oneOf": [
                    {"type": "boolean"},
                    {
                        "type": "object",
                        "required": ["decision"],
                        "additionalProperties": False,
                        "properties": {
                            "decision": {"type": "object", "description": _DEPTH_NOTE},
                            "actions": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["tool"],
                                    "additionalProperties": False,
                                    "properties": {"tool": _ID, "args": {"type": "object"}},
                                },
                            },
                            "decided_by": {
                                **_ID,
                                "minLength": 0,
                                "pattern": "^[^\\u0000-\\u001f\\u007f]*$",
                            },
                        },
                    },
                ],
            },
        },
    },
    "IngestResult": {
        "type": "object",
        "required": ["accepted", "results", "errors"],
        "properties": {
            "accepted": {"type": "integer"},
            "results": {"type": "object", "additionalProperties": {"type": "integer"}},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "line": {"type": "integer"},
                        "path": {"type": "string"},
                        "message": {"type": "string"},
                    },
                },
            },
        },
    },
    "Agreement": {
        "type": "object",
        "required": ["frozen", "task_types"],
        "properties": {
            "frozen": {"type": "boolean"},
            "task_types": {"type": "object", "additionalProperties": {"type": "object"}},
        },
    },
    "Route": {
        "type": "object",
        "required": ["handler", "level", "audit", "handled_by"],
        "properties": {
            "handler": {"type": "string", "enum": ["agent", "human"]},
            "level": {"type": "string", "enum": ["L0", "L1", "L2", "L3", "L4"]},
            "audit": {"type": "boolean"},
            "approval_required": {"type": "boolean"},
            "suggestion": {"type": "boolean"},
            "handled_by": {"type": "string", "enum": HANDLED_BY},
        },
    },
    "AuditEntry": {
        "type": "object",
        "description": "one audit log row as stored, with its hash chain (docs/operating.md)",
        "required": [
            "id",
            "recorded_at",
            "task_type",
            "actor",
            "action",
            "from_level",
            "to_level",
            "reason",
            "evidence",
            "policy_hash",
            "prev_hash",
            "entry_hash",
        ],
        "properties": {
            "id": {"type": "integer"},
            "recorded_at": {"type": "string", "format": "date-time"},
            "task_type": {"type": "string"},
            "actor": {"type": "string"},
            "action": {"type": "string"},
            "from_level": {"type": "string", "nullable": True},
            "to_level": {"type": "string", "nullable": True},
            "reason": {"type": "string"},
            "evidence": {"nullable": True, "description": "the stored JSON"},
            "policy_hash": {"type": "string", "nullable": True},
            "prev_hash": {"type": "string", "nullable": True},
            "entry_hash": {"type": "string", "nullable": True},
        },
    },
    "ChainState": {
        "type": "object",
        "required": ["ok", "entries", "head", "first_bad"],
        "properties": {
            "ok": {"type": "boolean"},
            "entries": {"type": "integer", "minimum": 0},
            "head": {
                "type": "string",
                "nullable": True,
                "description": "the newest entry's hash (64 zeros for an empty log)",
            },
            "first_bad": {
                "type": "object",
                "nullable": True,
                "required": ["id", "kind", "why"],
                "properties": {
                    "id": {"type": "integer"},
                    "kind": {"type": "string", "enum": ["missing", "edited", "unlinked"]},
                    "why": {"type": "string"},
                },
            },
        },
    },
    "WriteBody": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"actor": _ACTOR, "reason": _REASON},
    },
    "SetLevel": {
        "type": "object",
        "required": ["level"],
        "additionalProperties": False,
        "properties": {"level": _LEVEL, "actor": _ACTOR, "reason": _REASON},
    },
    "Answer": {
        "type": "object",
        "description": "names the proposal answered: proposal_id, or to (and optionally from)",
        "additionalProperties": False,
        "properties": {
            "proposal_id": {"type": "string"},
            "from": _LEVEL,
            "to": _LEVEL,
            "actor": _ACTOR,
            "reason": _REASON,
        },
    },
}


_TOKEN_ERRORS = {
    "401": _resp("no or an unknown token", _ERR),
    "403": _resp("the credential lacks the role or the task type", _ERR),
}
_RPC = {"type": "object", "description": "a JSON-RPC 2.0 message (docs/gateway.md)"}


def _gateway_paths() -> dict[str, Any]:
    """The tool gateway's routes (shadow.gateway): the MCP endpoint, sessions, approvals."""
    token = {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}
    approval = {"name": "approval_id", "in": "path", "required": True, "schema": {"type": "string"}}
    decide_body = {
        "required": False,
        "content": _json(
            {
                "type": "object",
                "properties": {"actor": {"type": "string"}, "reason": {"type": "string"}},
                "additionalProperties": False,
            }
        ),
    }
    decided = {
        "200": _resp("decided", {"type": "object"}),
        "400": _resp("bad body", _ERR),
        **_TOKEN_ERRORS,
        "404": _resp("no such approval", _ERR),
        "409": _resp("not pending, frozen, or the level no longer allows it", _ERR),
    }
    tools_url: dict[str, Any] = {
        "parameters": [token],
        "post": {
            "summary": "MCP Streamable HTTP endpoint of one case's tools URL",
            "requestBody": {"required": True, "content": _json(_RPC)},
            "responses": {
                "200": _resp("JSON-RPC response", _RPC),
                "202": _resp("notification acknowledged (ignored)"),
                "400": _resp("invalid JSON-RPC message or envelope", _RPC),
                "404": _resp("unknown, expired or closed tools URL or session", _RPC),
                "413": _resp("body larger than 1 MiB", {"type": "object"}),
                "415": _resp("compressed body", _RPC),
                "503": _resp("too many open sessions", _RPC),
            },
        },
        "get": {
            "summary": "No server-to-client stream is offered",
            "responses": {"405": _resp("use POST", _ERR)},
        },
        "delete": {
            "summary": "End a handshake-era session (Mcp-Session-Id); 200 also when the "
            "case has settled (its sessions ended with it)",
            "responses": {"200": _resp("ended"), "404": _resp("no such session", _RPC)},
        },
    }
    # The same endpoint with a trailing slash, and with /mcp appended (docs/gateway.md).
    return {
        **dict.fromkeys(("/mcp/{token}", "/mcp/{token}/", "/mcp/{token}/mcp"), tools_url),
        "/v1/sessions": {
            "post": {
                "summary": "A live session's tools URL for one case",
                "security": _ADMIN,
                "requestBody": {
                    "required": True,
                    "content": _json(
                        {
                            "type": "object",
                            "required": ["task_type", "event_id"],
                            "properties": {
                                "task_type": {"type": "string"},
                                "event_id": {"type": "string"},
                            },
                            "additionalProperties": False,
                        }
                    ),
                },
                "responses": {
                    "200": _resp(
                        "the session",
                        {
                            "type": "object",
                            "required": ["tools_url", "level", "expires_at"],
                            "properties": {
                                "tools_url": {"type": "string"},
                                "level": {"type": "string"},
                                "expires_at": {"type": "string"},
                            },
                        },
                    ),
                    "400": _resp("bad body", _ERR),
                    **_TOKEN_ERRORS,
                    "404": _resp("unknown task type", _ERR),
                    "409": _resp("the task type has no tools policy", _ERR),
                },
            }
        },
        "/v1/approvals": {
            "get": {
                "summary": "Tool writes held for approval (status=pending by default, or all)",
                "security": _ADMIN,
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _resp("the approvals", {"type": "object"}),
                    "400": _resp("unknown status", _ERR),
                    **_TOKEN_ERRORS,
                },
            }
        },
        "/v1/approvals/{approval_id}": {
            "parameters": [approval],
            "get": {
                "summary": "One approval and its outcome",
                "security": _ADMIN,
                "responses": {
                    "200": _resp("the approval", {"type": "object"}),
                    **_TOKEN_ERRORS,
                    "404": _resp("no such approval", _ERR),
                },
            },
        },
        "/v1/approvals/{approval_id}/approve": {
            "parameters": [approval],
            "post": {
                "summary": "Approve a held write: it is forwarded once",
                "security": _ADMIN,
                "requestBody": decide_body,
                "responses": decided,
            },
        },
        "/v1/approvals/{approval_id}/reject": {
            "parameters": [approval],
            "post": {
                "summary": "Reject a held write (reason required): it is never forwarded",
                "security": _ADMIN,
                "requestBody": decide_body,
                "responses": decided,
            },
        },
    }


def _obj(required: list[str], nullable: bool = False, **props: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "required": required, "properties": props}
    if nullable:
        out["nullable"] = True
    return out


def _class_property() -> dict[str, Any]:
    """``class`` (a keyword in Python, so not a keyword argument)."""
    return {"class": {"type": "string", "enum": ["read", "write"], "nullable": True}}


def _dead_letters() -> dict[str, Any]:
    """The answer of ``GET /v1/dead-letters`` (docs/api.md, Dead letters)."""
    maybe = {"type": "string", "nullable": True}
    letter = {
        "type": "object",
        "required": [
            "id",
            "recorded_at",
            "source",
            "kind",
            "reason",
            "event_id",
            "location",
            "raw",
        ],
        "properties": {
            "id": {"type": "integer"},
            "recorded_at": {"type": "string", "format": "date-time"},
            "source": {"type": "string"},
            "kind": {"type": "string"},
            "reason": {"type": "string"},
            "event_id": maybe,
            "location": maybe,
            "raw": maybe,
        },
    }
    return {
        "type": "object",
        "required": ["dead_letters", "total", "next"],
        "properties": {
            "dead_letters": {"type": "array", "items": letter},
            "total": {"type": "integer", "minimum": 0},
            "next": {"type": "integer", "nullable": True},
        },
    }


def _case() -> dict[str, Any]:
    """The answer of ``GET /v1/cases/{event_id}`` (docs/api.md, One case)."""
    text, maybe = {"type": "string"}, {"type": "string", "nullable": True}
    at, number = {"type": "string", "format": "date-time"}, {"type": "number", "nullable": True}
    flag = {"type": "boolean"}
    actions = {"type": "array", "items": {"type": "object", "required": ["tool", "args"]}}
    handled = {"type": "string", "enum": HANDLED_BY}
    trace = {"type": "string", "nullable": True, "pattern": "^[0-9a-f]{32}$"}
    fields = _obj(
        ["path", "match", "matched", "critical", "reason"],
        path=text,
        match=text,
        matched=flag,
        critical=flag,
        reason=text,
        distance={"type": "integer"},
    )
    return _obj(
        [
            "event_id",
            "task_type",
            "event",
            "decisions",
            "outcomes",
            "comparisons",
            "handling",
            "tool_calls",
            "tool_calls_total",
            "adjudications",
            "trace_id",
            "trace_url",
        ],
        event_id=text,
        task_type=maybe,
        event=_obj(
            [
                "event_id",
                "task_type",
                "payload",
                "occurred_at",
                "segment",
                "source",
                "received_at",
                "awaiting_agent",
                "expired",
            ],
            nullable=True,
            event_id=text,
            task_type=text,
            payload={"type": "object"},
            occurred_at=maybe,
            segment=maybe,
            source=text,
            received_at=at,
            awaiting_agent=flag,
            expired=flag,
        ),
        decisions={
            "type": "array",
            "items": _obj(
                [
                    "agent_version",
                    "task_type",
                    "decision",
                    "actions",
                    "declared_actions",
                    "actions_captured",
                    "confidence",
                    "error",
                    "latency_ms",
                    "usage",
                    "received_at",
                ],
                agent_version=text,
                task_type=text,
                decision={"type": "object", "nullable": True},
                actions=actions,
                declared_actions={**actions, "nullable": True},
                actions_captured=flag,
                confidence=number,
                error=maybe,
                latency_ms=number,
                usage=_obj(
                    ["input_tokens", "output_tokens", "cost_usd"],
                    input_tokens={"type": "integer"},
                    output_tokens={"type": "integer"},
                    cost_usd={"type": "number"},
                ),
                received_at=at,
            ),
        },
        outcomes={
            "type": "array",
            "items": _obj(
                [
                    "revision",
                    "current",
                    "decision",
                    "actions",
                    "decided_by",
                    "decided_at",
                    "handled_by",
                    "source",
                    "received_at",
                    "expired",
                ],
                revision={"type": "integer", "minimum": 1},
                current=flag,
                decision={"type": "object"},
                actions=actions,
                decided_by=maybe,
                decided_at=maybe,
                handled_by={**handled, "nullable": True},
                source=text,
                received_at=at,
                expired=flag,
            ),
        },
        comparisons={
            "type": "array",
            "items": _obj(
                [
                    "agent_version",
                    "task_type",
                    "verdict",
                    "critical",
                    "handled_by",
                    "outcome_revision",
                    "compared_at",
                    "fields",
                    "trace_id",
                ],
                agent_version=text,
                task_type=text,
                verdict={"type": "string", "enum": ["agree", "disagree", "agent_error", "expired"]},
                critical=flag,
                handled_by=handled,
                outcome_revision={"type": "integer", "nullable": True},
                compared_at=at,
                fields={"type": "array", "items": fields},
                trace_id={**trace, "description": "the case's trace when tracing was on"},
            ),
        },
        handling=_obj(
            ["task_type", "handled_by", "level", "routed_at"],
            nullable=True,
            task_type=text,
            handled_by=handled,
            level=text,
            routed_at=at,
        ),
        tool_calls={
            "type": "array",
            "items": _obj(
                [
                    "id",
                    "called_at",
                    "task_type",
                    "shadow",
                    "level",
                    "tool",
                    "upstream",
                    "class",
                    "outcome",
                    "latency_ms",
                    "error",
                    "args",
                    "approval_id",
                ],
                id={"type": "integer"},
                called_at=at,
                task_type=text,
                shadow=flag,
                level=text,
                tool=text,
                upstream=maybe,
                outcome=text,
                latency_ms={"type": "number"},
                error=maybe,
                args={"type": "object"},
                approval_id=maybe,
                **_class_property(),
            ),
        },
        tool_calls_total={"type": "integer", "minimum": 0},
        adjudications={"type": "array", "items": _adjudication()},
        trace_id={
            **trace,
            "description": "the case's OpenTelemetry trace: its newest comparison's, else the "
            "one being written while tracing is on; null without one",
        },
        trace_url={
            "type": "string",
            "nullable": True,
            "description": "SHADOW_TRACE_URL with the trace id filled in",
        },
        adjudications_hidden={
            "type": "integer",
            "minimum": 0,
            "description": "a reviewer who has not judged the case yet sees none of the "
            "others' verdicts, only how many there are",
        },
    )


def _adjudication() -> dict[str, Any]:
    """One reviewer's verdict on a case (docs/api.md, Review)."""
    text, maybe = {"type": "string"}, {"type": "string", "nullable": True}
    return _obj(
        [
            "id",
            "event_id",
            "task_type",
            "agent_version",
            "reviewer",
            "verdict",
            "reason",
            "note",
            "blind",
            "stratum",
            "acceptable",
            "at",
        ],
        id={"type": "integer"},
        event_id=text,
        task_type=text,
        agent_version=text,
        reviewer=text,
        verdict={"type": "string", "enum": list(VERDICTS)},
        reason=text,
        note=text,
        blind={"type": "boolean"},
        stratum=maybe,
        acceptable={"type": "boolean"},
        at={"type": "string", "format": "date-time"},
    )


def _review_paths() -> dict[str, Any]:
    """The review queue's routes (shadow.review_api)."""
    decision = _obj(
        ["decision", "actions"],
        decision={"type": "object", "nullable": True},
        actions={"type": "array", "items": {"type": "object"}},
    )
    task = {
        "name": "task_type",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "pattern": TASK_TYPE_PATTERN},
    }
    note = {"type": "string", "maxLength": MAX_NOTE}
    answered = _obj(
        ["adjudication", "others"],
        adjudication=_adjudication(),
        others={"type": "array", "items": _adjudication()},
        a_was={"type": "string", "enum": ["agent", "human"]},
    )
    refusals = {
        "400": _resp("a bad verdict, reason or note (nothing stored)", _ERR),
        **_TOKEN_ERRORS,
        "409": _resp("you already gave another verdict on this case", _ERR),
    }
    return {
        "/v1/review/next": {
            "get": {
                "summary": "Claim a case to review, blind: the two decisions as a and b in "
                "random order; nothing names the agent, the human or the agent version",
                "description": "Asking again while holding an open claim answers the same "
                "claim. Needs the reviewer role (on task_type when given).",
                "security": _ADMIN,
                "parameters": [task],
                "responses": {
                    "200": _resp(
                        "a claimed case",
                        _obj(
                            ["claim", "expires_at", "event", "a", "b"],
                            claim={"type": "string"},
                            expires_at={"type": "string", "format": "date-time"},
                            task_type={"type": "string"},
                            event={"type": "object"},
                            a=decision,
                            b=decision,
                            reason_codes={"type": "array", "items": {"type": "string"}},
                            remaining={"type": "integer", "minimum": 0},
                        ),
                    ),
                    "204": {"description": "nothing is left to review"},
                    "400": _resp("task_type with control characters or too long", _ERR),
                    **_TOKEN_ERRORS,
                    "404": _resp("unknown task type", _ERR),
                },
            }
        },
        "/v1/review/stats": {
            "get": {
                "summary": "Per task type: open claims, cases left for the caller, and the "
                "adjudicated estimate",
                "security": _ADMIN,
                "parameters": [task],
                "responses": {
                    "200": _resp("ok", {"type": "object", "required": ["task_types"]}),
                    "400": _resp("task_type with control characters or too long", _ERR),
                    **_TOKEN_ERRORS,
                    "404": _resp("unknown task type", _ERR),
                },
            }
        },
        "/v1/review/{claim}": {
            "parameters": [{"name": "claim", "in": "path", "required": True, "schema": _ID}],
            "post": {
                "summary": "Answer a claim: which of a and b was right; the server maps it "
                "back to agent and human (the same answer again is answered again)",
                "security": _ADMIN,
                "requestBody": {
                    "required": True,
                    "content": _json(
                        _obj(
                            ["verdict", "reason"],
                            verdict={"type": "string", "enum": list(BLIND_VERDICTS)},
                            reason={"type": "string"},
                            note=note,
                        )
                    ),
                },
                "responses": {
                    "200": _resp("stored (or the same answer again)", answered),
                    **refusals,
                    "404": _resp("unknown claim, or another reviewer's", _ERR),
                    "410": _resp("the claim expired before it was answered", _ERR),
                },
            },
        },
        "/v1/cases/{event_id}/adjudication": {
            "parameters": [{"name": "event_id", "in": "path", "required": True, "schema": _ID}],
            "post": {
                "summary": "A direct (not blind) verdict on a case: shown on the case, never "
                "evidence (it is not a random sample)",
                "security": _ADMIN,
                "requestBody": {
                    "required": True,
                    "content": _json(
                        _obj(
                            ["verdict", "reason"],
                            verdict={"type": "string", "enum": list(VERDICTS)},
                            reason={"type": "string"},
                            note=note,
                            agent_version={"type": "string"},
                        )
                    ),
                },
                "responses": {
                    "200": _resp("the same verdict again", answered),
                    "201": _resp("stored", answered),
                    **refusals,
                    "404": _resp("the store holds nothing about this event id", _ERR),
                },
            },
        },
    }


def openapi_spec() -> dict[str, Any]:
    """The API description (a fresh dict each call)."""
    ok_obj = _resp("ok", {"type": "object"})
    not_found = _resp("unknown task type", _ERR)
    return {
        "openapi": "3.0.3",
        "info": {"title": "shadow sidecar", "version": "0.1.0"},
        "paths": {
            "/v1/mirror/{host_path}": {
                "parameters": [
                    {
                        "name": "host_path",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "the host's own path (with its query string)",
                    }
                ],
                **{m: _mirror() for m in ("get", "post", "put", "patch", "delete")},
            },
            "/v1/events": {"post": _ingest("work events", "WorkEvent")},
            "/v1/outcomes": {"post": _ingest("human outcomes", "Outcome")},
            "/v1/agreement": {
                "get": {
                    "summary": "Evidence of the current agent version per task type",
                    "responses": {"200": _resp("ok", _ref("Agreement"))},
                }
            },
            "/v1/autonomy": {
                "get": {"summary": "Autonomy level per task type", "responses": {"200": ok_obj}}
            },
            "/v1/autonomy/{task_type}": {
                "parameters": [_TASK],
                "get": {
                    "summary": "One task type's level and evidence",
                    "responses": {"200": ok_obj, "404": not_found},
                },
                "put": _write(
                    "Set the level (never above the ceiling)", _ref("SetLevel"), required=True
                ),
            },
            "/v1/autonomy/{task_type}/approve": {
                "parameters": [_TASK],
                "post": _write(
                    "Approve the pending promotion the body names (a retry is a no-op)",
                    _ref("Answer"),
                    required=True,
                ),
            },
            "/v1/autonomy/{task_type}/reject": {
                "parameters": [_TASK],
                "post": _write(
                    "Reject the pending promotion the body names (reason required)",
                    _ref("Answer"),
                    required=True,
                ),
            },
            "/v1/autonomy/{task_type}/reconsider": {
                "parameters": [_TASK],
                "post": _write("Lift a rejection's hold on new proposals", _ref("WriteBody")),
            },
            "/v1/autonomy/{task_type}/history": {
                "parameters": [_TASK],
                "get": {
                    "summary": "Audit log of one task type, newest first",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                        }
                    ],
                    "responses": {"200": ok_obj, "400": _resp("bad limit", _ERR), "404": not_found},
                },
            },
            "/v1/audit": {
                "get": {
                    "summary": "The whole audit log with its hash chain, oldest first, a page "
                    "at a time (pass next as after for the next page; null on the last)",
                    "parameters": [
                        {
                            "name": "after",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                        },
                    ],
                    "responses": {
                        "200": _resp(
                            "entries with ids above after",
                            {
                                "type": "object",
                                "required": ["entries", "next"],
                                "properties": {
                                    "entries": {"type": "array", "items": _ref("AuditEntry")},
                                    "next": {"type": "integer", "nullable": True},
                                },
                            },
                        ),
                        "400": _resp("bad after or limit", _ERR),
                    },
                },
            },
            "/v1/audit/verify": {
                "get": {
                    "summary": "The server's own walk of the audit log's hash chain",
                    "responses": {"200": _resp("the chain's state", _ref("ChainState"))},
                },
            },
            "/v1/cases/{event_id}": {
                "parameters": [{"name": "event_id", "in": "path", "required": True, "schema": _ID}],
                "get": {
                    "summary": "Everything about one case: the event (redacted), each agent "
                    "version's decision with latency and cost, every outcome revision, the "
                    "per-field diff, how it was handled, the gateway's tool calls",
                    "description": "Needs the viewer role; in the simple mode the admin token (a "
                    "case shows payloads and tool call arguments). A reviewer who has not "
                    "judged the case sees adjudications_hidden instead of the others' verdicts.",
                    "security": _ADMIN,
                    "responses": {
                        "200": _resp("the case (docs/api.md, One case)", _case()),
                        "400": _resp(
                            "event_id over 256 characters or with control characters", _ERR
                        ),
                        **_TOKEN_ERRORS,
                        "404": _resp("the store holds nothing about this event id", _ERR),
                    },
                },
            },
            "/v1/dead-letters": {
                "get": {
                    "summary": "The dead letters, newest first, a page at a time (pass next "
                    "as before for the next page; null on the last)",
                    "description": "Records that could not be taken, with why. Needs the "
                    "viewer role; in the simple mode the admin token (a dead letter keeps "
                    "what the refused record held, redacted as the policy says).",
                    "security": _ADMIN,
                    "parameters": [
                        {
                            "name": "before",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                    ],
                    "responses": {
                        "200": _resp("dead letters with ids below before", _dead_letters()),
                        "400": _resp("bad before or limit", _ERR),
                        **_TOKEN_ERRORS,
                    },
                },
            },
            "/v1/freeze": {"post": _write("Send every task type to L0", _ref("WriteBody"))},
            "/v1/unfreeze": {"post": _write("Lift the freeze", _ref("WriteBody"))},
            "/v1/route/{task_type}": {
                "parameters": [_TASK],
                "get": {
                    "summary": (
                        "Who handles this item, and how (handled_by: only blind outcomes "
                        "are evidence; the blind audit sample from L1 up)"
                    ),
                    "description": (
                        "The answer is the sidecar's record of how the item is handled and is "
                        "given only once that record is durable (503 otherwise); a route asked "
                        "after the item's outcome arrived does not change how it counts. "
                        "HEAD answers the same and records nothing. With the admin token or "
                        "ingest tokens configured it needs 'Authorization: Bearer' with either "
                        "(an ingest token also as X-Shadow-Ingest-Token); with none, it is open."
                    ),
                    "security": [{"admin": []}, {}],
                    "parameters": [
                        {
                            "name": "event_id",
                            "in": "query",
                            "required": True,
                            "schema": _ID,
                        },
                        {
                            "name": "segment",
                            "in": "query",
                            "required": False,
                            "description": "the item's segment: a segment a per_segment: "
                            "route gate sends to humans is routed to humans (segment_routed)",
                            "schema": _ID,
                        },
                    ],
                    "responses": {
                        "200": _resp("ok, and recorded", _ref("Route")),
                        "400": _resp("event_id missing, too long or with control characters", _ERR),
                        "401": _resp(
                            "tokens are configured and none was sent (or a wrong one)", _ERR
                        ),
                        "404": not_found,
                        "503": _resp("the record could not be stored: no route given", _ERR),
                    },
                },
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": ok_obj}}},
            "/readyz": {
                "get": {
                    "summary": "Readiness",
                    "responses": {"200": ok_obj, "503": _resp("not ready", _ERR)},
                }
            },
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": ok_obj}}},
            **_gateway_paths(),
            **_review_paths(),
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
        },
    }
