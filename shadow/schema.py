"""The store's schema as ordered migrations (plain SQL; applied by :mod:`shadow.store`).

Append a new ``(version, statements)`` pair to change the schema; never edit a released
one. Each migration runs in one transaction together with its ``schema_version`` row.
"""

from __future__ import annotations

__all__ = ["AUDIT_CHAIN_VERSION", "MIGRATIONS", "SCHEMA_VERSION"]

_V1 = [
    """
    CREATE TABLE events (
        event_id     VARCHAR PRIMARY KEY,
        task_type    VARCHAR NOT NULL,
        payload      JSON NOT NULL,           -- after redaction
        occurred_at  VARCHAR,
        segment      VARCHAR,
        content_hash VARCHAR NOT NULL,
        source       VARCHAR NOT NULL,
        received_at  TIMESTAMPTZ NOT NULL,
        needs_agent  BOOLEAN NOT NULL,        -- sampled and not answered yet
        expired      BOOLEAN NOT NULL DEFAULT false
    )
    """,
    """
    CREATE TABLE outcomes (
        event_id       VARCHAR NOT NULL,
        revision       INTEGER NOT NULL,      -- 1, 2, ... in arrival order
        is_current     BOOLEAN NOT NULL,      -- the latest decided_at wins
        decision       JSON NOT NULL,
        actions        JSON NOT NULL,
        decided_by     VARCHAR,
        decided_at     VARCHAR,
        decided_at_ts  TIMESTAMPTZ,
        content_hash   VARCHAR NOT NULL,
        source         VARCHAR NOT NULL,
        received_at    TIMESTAMPTZ NOT NULL,
        expired        BOOLEAN NOT NULL DEFAULT false,   -- no event before the TTL
        PRIMARY KEY (event_id, revision)
    )
    """,
    "CREATE SEQUENCE decision_seq",
    """
    CREATE TABLE decisions (
        event_id      VARCHAR NOT NULL,
        agent_version VARCHAR NOT NULL,
        task_type     VARCHAR NOT NULL,
        seq           BIGINT NOT NULL DEFAULT nextval('decision_seq'),
        body          JSON NOT NULL,
        content_hash  VARCHAR NOT NULL,
        error         VARCHAR,
        latency_ms    DOUBLE,
        input_tokens  BIGINT NOT NULL,
        output_tokens BIGINT NOT NULL,
        cost_usd      DOUBLE NOT NULL,
        received_at   TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (event_id, agent_version)
    )
    """,
    """
    CREATE TABLE comparisons (
        event_id      VARCHAR NOT NULL,
        agent_version VARCHAR NOT NULL,
        task_type     VARCHAR NOT NULL,
        verdict       VARCHAR NOT NULL,       -- agree | disagree | agent_error | expired
        critical      BOOLEAN NOT NULL,
        fields        JSON NOT NULL,          -- per-field results with reasons
        outcome_hash  VARCHAR,                -- which outcome revision it compared against
        compared_at   TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (event_id, agent_version)
    )
    """,
    """
    CREATE TABLE autonomy (
        task_type     VARCHAR PRIMARY KEY,
        level         INTEGER NOT NULL,
        agent_version VARCHAR,
        proposal      JSON,
        updated_at    TIMESTAMPTZ
    )
    """,
    "CREATE TABLE sidecar_state (key VARCHAR PRIMARY KEY, value JSON NOT NULL)",
    "CREATE SEQUENCE audit_seq",
    """
    CREATE TABLE audit_log (
        id          BIGINT PRIMARY KEY DEFAULT nextval('audit_seq'),
        recorded_at TIMESTAMPTZ NOT NULL,
        task_type   VARCHAR NOT NULL,
        actor       VARCHAR NOT NULL,
        action      VARCHAR NOT NULL,
        from_level  VARCHAR,
        to_level    VARCHAR,
        reason      VARCHAR NOT NULL,
        evidence    JSON NOT NULL,
        policy_hash VARCHAR
    )
    """,
    "CREATE SEQUENCE dead_letter_seq",
    """
    CREATE TABLE dead_letters (
        id        BIGINT PRIMARY KEY DEFAULT nextval('dead_letter_seq'),
        recorded_at TIMESTAMPTZ NOT NULL,
        source    VARCHAR NOT NULL,
        kind      VARCHAR NOT NULL,           -- event | outcome | decision | unknown
        reason    VARCHAR NOT NULL,
        event_id  VARCHAR,
        location  VARCHAR,                    -- line number, offset, request id
        raw       VARCHAR
    )
    """,
    # The agreement view is a query: evidence per task type x agent version.
    """
    CREATE VIEW agreement AS
    SELECT task_type, agent_version,
           count(*) FILTER (WHERE verdict IN ('agree', 'disagree', 'agent_error')) AS n,
           count(*) FILTER (WHERE verdict = 'agree') AS agree,
           count(*) FILTER (WHERE critical) AS critical,
           count(*) FILTER (WHERE verdict = 'agent_error') AS errors,
           count(*) FILTER (WHERE verdict = 'expired') AS expired
    FROM comparisons
    GROUP BY task_type, agent_version
    """,
]

# Version 2: the Kafka outbox. Which comparison (verdict and outcome revision) was last
# published to the comparisons topic, so a crash between store and publish re-publishes.
_V2 = [
    """
    CREATE TABLE published_comparisons (
        event_id      VARCHAR NOT NULL,
        agent_version VARCHAR NOT NULL,
        verdict       VARCHAR NOT NULL,
        outcome_hash  VARCHAR,
        published_at  TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (event_id, agent_version)
    )
    """,
]

# Version 3: replay evidence (``shadow replay --record-evidence``). Kept in its own table, apart
# from the comparisons behind the live ``agreement`` view, so it never moves a gate.
_V3 = [
    "CREATE SEQUENCE replay_evidence_seq",
    """
    CREATE TABLE replay_evidence (
        id            BIGINT PRIMARY KEY DEFAULT nextval('replay_evidence_seq'),
        run_id        VARCHAR NOT NULL,
        recorded_at   TIMESTAMPTZ NOT NULL,
        task_type     VARCHAR NOT NULL,
        agent_version VARCHAR NOT NULL,
        n             BIGINT NOT NULL,
        agree         BIGINT NOT NULL,
        critical      BIGINT NOT NULL,
        errors        BIGINT NOT NULL,
        lower         DOUBLE NOT NULL,
        upper         DOUBLE NOT NULL,
        policy_hash   VARCHAR,
        history       VARCHAR NOT NULL,       -- the replayed history file
        report        JSON NOT NULL,          -- the task type's replay report entry
        UNIQUE (run_id, task_type)
    )
    """,
]

# Version 4: where each Kafka record came from (topic, partition, offset -> event_id), so a
# partition is committed only up to its oldest open join (shadow.store.positions) and the
# next owner of the partition re-reads every record whose join is still open. Rows of
# closed joins are deleted as the committed offset moves past them.
_V4 = [
    """
    CREATE TABLE source_positions (
        topic           VARCHAR NOT NULL,
        kafka_partition INTEGER NOT NULL,
        kafka_offset    BIGINT NOT NULL,
        event_id        VARCHAR NOT NULL,
        PRIMARY KEY (topic, kafka_partition, kafka_offset)
    )
    """,
]

# Version 5: positions are keyed by their source, not the bare topic name (the ``topic``
# column now holds ``BOOTSTRAP/GROUP/TOPIC``): two sources whose clusters have topics of the
# same name no longer share rows. Rows keyed the old way are dropped: every one of them is
# at or after its partition's committed offset (rows below it are deleted), so the source
# reads those records again when it starts and records their positions anew.
_V5 = ["DELETE FROM source_positions"]

# Version 6: the operator's last answer to a proposal (approved or rejected, by whom, at
# which evidence count), so a retried approval is a no-op and a rejected proposal is held
# back until the evidence grows (shadow.moves); and a drift demotion's hold (the evidence
# totals then), so the lost level is re-earned on evidence gathered since (shadow.promotion).
_V6 = [
    "ALTER TABLE autonomy ADD COLUMN decided JSON",
    "ALTER TABLE autonomy ADD COLUMN hold JSON",
]

# Version 7: the autonomy topic's outbox and a replica's place in it. Every ladder change this
# sidecar decides gets a row here, written in the transaction that applies and audits it,
# keyed by that audit row's id; the publisher sends the rows in id order and marks each one
# once the broker acknowledged it, so no change is skipped or lost while the broker is away.
# A replica remembers, per task type, the promoter's audit id it last applied, so it applies
# each published change once and in order.
_V7 = [
    """
    CREATE TABLE autonomy_outbox (
        audit_id     BIGINT PRIMARY KEY,      -- the audit_log row that recorded the change
        task_type    VARCHAR NOT NULL,
        record       JSON NOT NULL,           -- the autonomy topic's value for the change
        published_at TIMESTAMPTZ              -- null until the broker acknowledged it
    )
    """,
    """
    CREATE TABLE autonomy_followed (
        task_type   VARCHAR PRIMARY KEY,
        audit_id    BIGINT NOT NULL           -- the promoter's audit id last applied here
    )
    """,
]

# Version 8: independent evidence. How each item was handled (``handling``: the sidecar's own
# record of the routing answer it gave, the least independent answer when routed twice, with
# an outbox mark for the handling topic), what the outcome stated (``outcomes.handled_by``)
# and what each comparison was judged as (``comparisons.handled_by``). Only blind comparisons
# are evidence: the ``agreement`` view counts those, ``acceptance`` the others. Comparisons
# stored before version 8 were all made at L0 or without routing records: blind.
_V8 = [
    """
    CREATE TABLE handling (
        event_id     VARCHAR PRIMARY KEY,
        task_type    VARCHAR NOT NULL,
        handled_by   VARCHAR NOT NULL,        -- agent | assisted | blind
        level        VARCHAR NOT NULL,        -- the level the routing answer was given at
        routed_at    TIMESTAMPTZ NOT NULL,
        published_at TIMESTAMPTZ              -- on the handling topic (null: not yet / none)
    )
    """,
    "ALTER TABLE outcomes ADD COLUMN handled_by VARCHAR",
    "ALTER TABLE comparisons ADD COLUMN handled_by VARCHAR NOT NULL DEFAULT 'blind'",
    "DROP VIEW agreement",
    """
    CREATE VIEW agreement AS
    SELECT task_type, agent_version,
           count(*) FILTER (WHERE verdict IN ('agree', 'disagree', 'agent_error')) AS n,
           count(*) FILTER (WHERE verdict = 'agree') AS agree,
           count(*) FILTER (WHERE critical) AS critical,
           count(*) FILTER (WHERE verdict = 'agent_error') AS errors,
           count(*) FILTER (WHERE verdict = 'expired') AS expired
    FROM comparisons
    WHERE handled_by = 'blind'
    GROUP BY task_type, agent_version
    """,
    """
    CREATE VIEW acceptance AS
    SELECT task_type, agent_version, handled_by,
           count(*) FILTER (WHERE verdict IN ('agree', 'disagree', 'agent_error')) AS n,
           count(*) FILTER (WHERE verdict = 'agree') AS agree,
           count(*) FILTER (WHERE critical) AS critical
    FROM comparisons
    WHERE handled_by <> 'blind'
    GROUP BY task_type, agent_version, handled_by
    """,
]

# Version 9: the tool gateway (shadow.gateway). ``tool_calls`` has one row per tool call an
# agent made through it (written in batches, see shadow.store.gateway); ``tool_approvals``
# holds each write waiting for a human (L2, and L3 audit items) and what became of it. An
# approval moves pending -> forwarding (committed before the upstream is called) ->
# forwarded | failed, or pending -> rejected | expired | refused; a row found in
# ``forwarding`` at start-up is failed, never forwarded again (at most once).
_V9 = [
    "CREATE SEQUENCE tool_call_seq",
    """
    CREATE TABLE tool_calls (
        id          BIGINT PRIMARY KEY DEFAULT nextval('tool_call_seq'),
        called_at   TIMESTAMPTZ NOT NULL,
        task_type   VARCHAR NOT NULL,
        event_id    VARCHAR NOT NULL,
        shadow      BOOLEAN NOT NULL,
        level       VARCHAR NOT NULL,
        tool        VARCHAR NOT NULL,         -- as the agent named it
        upstream    VARCHAR,                  -- null when no upstream owns the name
        class       VARCHAR,                  -- read | write; null when refused unclassified
        outcome     VARCHAR NOT NULL,         -- forwarded|captured|refused|held|approved|...
        latency_ms  DOUBLE NOT NULL,
        error       VARCHAR,                  -- the refusal or the upstream's error
        args        JSON NOT NULL,
        approval_id VARCHAR
    )
    """,
    """
    CREATE TABLE tool_approvals (
        id            VARCHAR PRIMARY KEY,
        created_at    TIMESTAMPTZ NOT NULL,
        expires_at    TIMESTAMPTZ NOT NULL,
        task_type     VARCHAR NOT NULL,
        event_id      VARCHAR NOT NULL,
        level         VARCHAR NOT NULL,
        tool          VARCHAR NOT NULL,
        upstream      VARCHAR NOT NULL,
        upstream_tool VARCHAR NOT NULL,
        args          JSON NOT NULL,
        status        VARCHAR NOT NULL,
        decided_by    VARCHAR,
        decided_at    TIMESTAMPTZ,
        reason        VARCHAR,
        result        JSON,
        error         VARCHAR
    )
    """,
]

# v10: a held write's digest (sha256 over the tool and its canonical arguments, before any
# redaction) and the client's repeat key: an identical retried write attaches to the approval
# already held (shadow.gateway), across a restart too.
_V10 = [
    "ALTER TABLE tool_approvals ADD COLUMN digest VARCHAR",
    "ALTER TABLE tool_approvals ADD COLUMN repeat_key VARCHAR",
]

# v11: the audit log is hash-chained (shadow.audit_chain): each row keeps the hash of the row
# before it (in id order; 64 zeros for the first) and its own, sha256 over a canonical
# encoding of every stored field and prev_hash. The store chains the rows already there in
# the same transaction as this migration (shadow.store.audit.backfill_chain), so no row is
# left without hashes; a NULL hash is a break to the verifier.
_V11 = [
    "ALTER TABLE audit_log ADD COLUMN prev_hash VARCHAR",
    "ALTER TABLE audit_log ADD COLUMN entry_hash VARCHAR",
]

# v12: the review queue (shadow.review). ``review_claims``: a case drawn for one reviewer,
# which decision was shown as A (the other is B), and until when it is theirs. ``adjudications``:
# every verdict, blind (from a claim) or direct (on a case page), with the comparison's
# verdict when it was made (``stratum``), the outcome revision it judged, and whether it
# found the agent's decision acceptable under the policy then in force. One per reviewer per
# (event, agent version). Only blind ones on the still-current comparison are evidence.
_V12 = [
    """
    CREATE TABLE review_claims (
        claim         VARCHAR PRIMARY KEY,
        task_type     VARCHAR NOT NULL,
        event_id      VARCHAR NOT NULL,
        agent_version VARCHAR NOT NULL,
        outcome_hash  VARCHAR,
        stratum       VARCHAR NOT NULL,       -- agree | disagree
        reviewer      VARCHAR NOT NULL,
        a_is          VARCHAR NOT NULL,       -- agent | human
        claimed_at    TIMESTAMPTZ NOT NULL,
        expires_at    TIMESTAMPTZ NOT NULL,
        answered_at   TIMESTAMPTZ
    )
    """,
    "CREATE INDEX review_claims_case ON review_claims (event_id, agent_version)",
    "CREATE SEQUENCE adjudication_seq",
    """
    CREATE TABLE adjudications (
        id            BIGINT PRIMARY KEY DEFAULT nextval('adjudication_seq'),
        recorded_at   TIMESTAMPTZ NOT NULL,
        task_type     VARCHAR NOT NULL,
        event_id      VARCHAR NOT NULL,
        agent_version VARCHAR NOT NULL,
        outcome_hash  VARCHAR,
        reviewer      VARCHAR NOT NULL,
        verdict       VARCHAR NOT NULL,       -- agent_right|human_right|both_acceptable|unclear
        reason        VARCHAR NOT NULL,
        note          VARCHAR NOT NULL,
        blind         BOOLEAN NOT NULL,
        stratum       VARCHAR,                -- agree | disagree | agent_error | null (none yet)
        acceptable    BOOLEAN NOT NULL,
        claim         VARCHAR,
        UNIQUE (event_id, agent_version, reviewer)
    )
    """,
]

# v13: the case's OpenTelemetry trace id (shadow.tracing: 32 hex digits, derived from the
# event id) kept with each comparison made while tracing was on, so the case view and the
# replay report can link the trace; NULL for comparisons made with tracing off.
_V13 = ["ALTER TABLE comparisons ADD COLUMN trace_id VARCHAR"]

# v14: the segment of each comparison's case (its event's ``segment``), kept with the
# comparison so per-segment evidence (shadow.segments) survives retention deleting events;
# filled from the events already stored.
_V14 = [
    "ALTER TABLE comparisons ADD COLUMN segment VARCHAR",
    "UPDATE comparisons SET segment = e.segment FROM events e "
    "WHERE comparisons.event_id = e.event_id",
]

# v15: how each decision's cost is known (shadow.budgets): ``reported`` by the agent,
# ``priced`` from the policy's price table, ``unknown`` (cost_usd is then 0 and means
# nothing: a cost budget cannot be met on it). NULL (decisions stored before): reported.
_V15 = ["ALTER TABLE decisions ADD COLUMN cost_source VARCHAR"]

# v16: the noise floor (shadow.noise). ``second_opinions``: an event's independent second
# human decision, one per event (a later decided_at, or the later arrival when either has
# none, replaces it); never an outcome revision, never evidence about the agent.
# ``repeats``: the agent's extra tries of a repeated case (``repeat_rate``), try 1, 2, ...,
# kept apart from ``decisions`` so they are never compared with an outcome or counted.
_V16 = [
    """
    CREATE TABLE second_opinions (
        event_id      VARCHAR PRIMARY KEY,
        decision      JSON NOT NULL,
        actions       JSON NOT NULL,
        decided_by    VARCHAR,
        decided_at    VARCHAR,
        decided_at_ts TIMESTAMPTZ,
        content_hash  VARCHAR NOT NULL,
        source        VARCHAR NOT NULL,
        received_at   TIMESTAMPTZ NOT NULL
    )
    """,
    """
    CREATE TABLE repeats (
        event_id      VARCHAR NOT NULL,
        attempt       INTEGER NOT NULL,       -- 1, 2, ...: the request's "repeat"
        task_type     VARCHAR NOT NULL,
        agent_version VARCHAR NOT NULL,
        body          JSON NOT NULL,          -- the decision as ShadowDecision.to_json
        error         VARCHAR,
        received_at   TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (event_id, attempt)
    )
    """,
]

# v17: the noise floor's verdicts (shadow.noise), each judged once and kept as evidence like
# comparisons: retention deletes the second opinions' and repeats' bodies with their cases,
# never these. ``human_verdicts``: an event's first outcome against its second opinion, with
# what it judged (the outcome revision, the second opinion, the compare rules, how the first
# outcome was handled: a change of any judges it again); only blind ones are the human
# ceiling. ``repeat_verdicts``: a repeated try against its case's first decision and every
# earlier try. Verdicts for what v16 stored are judged at the first read.
_V17 = [
    """
    CREATE TABLE human_verdicts (
        event_id      VARCHAR PRIMARY KEY,
        task_type     VARCHAR NOT NULL,
        alike         BOOLEAN NOT NULL,
        fields        JSON NOT NULL,          -- [{path, matched}]: human vs human per field
        outcome_hash  VARCHAR NOT NULL,       -- the outcome revision judged
        second_hash   VARCHAR NOT NULL,       -- the second opinion judged
        compare_hash  VARCHAR NOT NULL,       -- the task type's compare rules
        handled_by    VARCHAR NOT NULL,       -- the first outcome's: blind | assisted | agent
        judged_at     TIMESTAMPTZ NOT NULL
    )
    """,
    """
    CREATE TABLE repeat_verdicts (
        event_id      VARCHAR NOT NULL,
        attempt       INTEGER NOT NULL,
        task_type     VARCHAR NOT NULL,
        agent_version VARCHAR NOT NULL,
        answered      BOOLEAN NOT NULL,       -- this try and the first decision answered
        alike_first   BOOLEAN NOT NULL,       -- alike the first decision
        alike_all     BOOLEAN NOT NULL,       -- alike the first and every earlier try
        compare_hash  VARCHAR NOT NULL,
        judged_at     TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (event_id, attempt)
    )
    """,
]

MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, _V1),
    (2, _V2),
    (3, _V3),
    (4, _V4),
    (5, _V5),
    (6, _V6),
    (7, _V7),
    (8, _V8),
    (9, _V9),
    (10, _V10),
    (11, _V11),
    (12, _V12),
    (13, _V13),
    (14, _V14),
    (15, _V15),
    (16, _V16),
    (17, _V17),
]

AUDIT_CHAIN_VERSION = 11  # the migration after which the store chains the existing rows

SCHEMA_VERSION = MIGRATIONS[-1][0]
