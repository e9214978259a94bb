"""The ledger's vocabulary and its writers: statuses, reason codes, outcomes.

Every member a campaign considers ends with exactly one row in ``deliveries`` carrying
one of the statuses below, a reason *code* from the closed :class:`ReasonCode` set and
a human-readable reason. Code decides on ``status``, ``reason_code`` and ``cap_rule``;
the text is for people (``why``, reports) and is never parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import String, bindparam, func, text, update
from sqlalchemy.engine import Connection

from campaigns.store.engine import upsert_insert
from campaigns.store.models import deliveries, suppressions


class Status(StrEnum):
    # on the way
    QUEUED = "queued"  # decided to send, cap slot reserved, waiting for a worker
    SENDING = "sending"  # claimed by a worker; outcome not yet recorded
    # outcomes
    SENT = "sent"  # accepted by the provider (or written to the outbox)
    DELIVERED = "delivered"  # the provider confirmed delivery
    FAILED = "failed"  # gave up; reason carries the last error
    # decisions not to send
    HELD_OUT = "held_out"  # control group
    CAPPED = "capped"  # a frequency cap rule said no; reason names the rule
    NO_CONSENT = "no_consent"  # a contact exists but the member did not consent
    NO_CONTACT = "no_contact"  # no address on any of the campaign's channels
    SUPPRESSED = "suppressed"  # every reachable address is on the suppression list
    DUPLICATE = "duplicate"  # the same idempotency key was already used
    STALE = "stale"  # the reminder was no longer true at send time


class ReasonCode(StrEnum):
    """Why a row has its status (``deliveries.reason_code``; a closed set)."""

    # decisions
    ELIGIBLE = "eligible"  # queued on the first reachable channel
    HELD_OUT = "held_out"  # in the campaign's control group
    CAPPED = "capped"  # cap_rule is full; skipped
    CAP_DEFERRED = "cap_deferred"  # cap_rule is full; due when its window opens
    CAP_NO_WINDOW = "cap_no_window"  # deferred, but no window opens within the search horizon
    NO_CONTACT = "no_contact"
    NO_CONSENT = "no_consent"
    SUPPRESSED = "suppressed"
    DUPLICATE_KEY = "duplicate_key"  # triggered: the idempotency key was used before
    UNKNOWN_MEMBER = "unknown_member"  # triggered: no such member
    UNKNOWN_TEMPLATE = "unknown_template"  # triggered: no such template
    BAD_DATA = "bad_data"  # triggered: data is not a JSON object
    # outcomes
    STALE = "stale"  # re-validation at send time: the reminder is no longer true
    TEMPLATE_ERROR = "template_error"  # the member's message did not render
    OVER_BUDGET = "over_budget"  # longer than the campaign's max_segments
    INVALID_RECIPIENT = "invalid_recipient"
    RECIPIENT_BLOCKED = "recipient_blocked"
    REJECTED = "rejected"  # the provider refused this message
    OUTCOME_UNKNOWN = "outcome_unknown"  # the request left, no answer came; not resent
    RETRYING = "retrying"  # a transient failure; another attempt is due
    GAVE_UP = "gave_up"  # transient failures until max_attempts
    CHANNEL_ERROR = "channel_error"  # a transport raised outside the error tree
    INTERNAL_ERROR = "internal_error"  # loyalcast failed on this row (traceback in the log)
    MEMBER_MISSING = "member_missing"  # the member row vanished since planning
    LEGACY = "legacy"  # written before reason codes existed


@dataclass
class Outcome:
    """What happened to one claimed row; ``reason`` None keeps the row's reason and code
    (why this channel was chosen)."""

    id: int
    status: Status
    code: ReasonCode
    reason: str | None
    holds_slot: bool
    sent_at: datetime | None = None
    provider_message_id: str | None = None


# PostgreSQL: the outcomes of a flush in one statement (arrays unnested into rows)
# instead of one UPDATE per delivery.
_OUTCOMES_FROM_ARRAYS = text("""
    UPDATE deliveries AS d
    SET status = o.status, reason = coalesce(o.reason, d.reason), reason_code = coalesce(o.code, d.reason_code),
        holds_slot = o.holds_slot,
        sent_at = o.sent_at, provider_message_id = o.provider_message_id, updated_at = :now
    FROM unnest(CAST(:ids AS bigint[]), CAST(:statuses AS varchar[]), CAST(:reasons AS varchar[]),
                CAST(:codes AS varchar[]), CAST(:holds AS boolean[]), CAST(:sent AS timestamptz[]),
                CAST(:provider_ids AS varchar[]))
         AS o(id, status, reason, code, holds_slot, sent_at, provider_message_id)
    WHERE d.id = o.id
""")


def record_outcomes(conn: Connection, outcomes: list[Outcome], now: datetime) -> None:
    """Write each outcome's status, reason and code (None keeps the row's), slot, sent
    time and provider id to its ledger row."""
    reasons = [None if o.reason is None else o.reason[:500] for o in outcomes]
    codes = [None if o.reason is None else o.code.value for o in outcomes]
    if conn.dialect.name == "postgresql":
        conn.execute(
            _OUTCOMES_FROM_ARRAYS,
            {
                "ids": [o.id for o in outcomes],
                "statuses": [o.status.value for o in outcomes],
                "reasons": reasons,
                "codes": codes,
                "holds": [o.holds_slot for o in outcomes],
                "sent": [o.sent_at for o in outcomes],
                "provider_ids": [o.provider_message_id for o in outcomes],
                "now": now,
            },
        )
        return
    conn.execute(
        update(deliveries)
        .where(deliveries.c.id == bindparam("b_id"))
        .values(
            status=bindparam("b_status"),
            reason=func.coalesce(bindparam("b_reason", type_=String), deliveries.c.reason),
            reason_code=func.coalesce(bindparam("b_code", type_=String), deliveries.c.reason_code),
            holds_slot=bindparam("b_holds_slot"),
            sent_at=bindparam("b_sent_at"),
            provider_message_id=bindparam("b_provider_message_id"),
            updated_at=now,
        ),
        [
            {
                "b_id": o.id,
                "b_status": o.status.value,
                "b_reason": reason,
                "b_code": code,
                "b_holds_slot": o.holds_slot,
                "b_sent_at": o.sent_at,
                "b_provider_message_id": o.provider_message_id,
            }
            for o, reason, code in zip(outcomes, reasons, codes, strict=True)
        ],
    )


def add_suppressions(conn: Connection, entries: list[dict[str, Any]], now: datetime) -> None:
    """Insert ``(channel, address, reason)`` entries; existing ones keep their first reason."""
    conn.execute(
        upsert_insert(conn, suppressions).on_conflict_do_nothing(),
        [{**entry, "reason": entry["reason"][:500], "created_at": now} for entry in entries],
    )
