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

from sqlalchemy import ColumnElement, and_
from sqlalchemy.engine import Connection

from campaigns.store.engine import upsert_insert
from campaigns.store.models import deliveries, suppressions


class Status(StrEnum):
    # on the way
    QUEUED = "queued"  # decided to send, cap slot reserved, waiting for a worker
    SENDING = "sending"  # claimed by a worker under a lease; outcome not yet recorded
    # outcomes
    SENT = "sent"  # accepted by the provider (or written to the outbox)
    DELIVERED = "delivered"  # the provider confirmed delivery
    UNKNOWN = "unknown"  # the request may have reached the provider; never resent blindly, keeps its slot
    FAILED = "failed"  # gave up; reason carries the last error
    # decisions not to send
    HELD_OUT = "held_out"  # control group
    CAPPED = "capped"  # a frequency cap rule said no; reason names the rule
    NO_CONSENT = "no_consent"  # a contact exists but the member did not consent
    NO_CONTACT = "no_contact"  # no address on any of the campaign's channels
    SUPPRESSED = "suppressed"  # every reachable address is on the suppression list
    UNSUBSCRIBED = "unsubscribed"  # the member stopped this category on the channel (preferences)
    DUPLICATE = "duplicate"  # the same idempotency key was already used
    STALE = "stale"  # the reminder was no longer true at send time
    NOT_DUE = "not_due"  # a ladder considered the member and had nothing to remind of this time


LEFT = (Status.SENT.value, Status.DELIVERED.value, Status.UNKNOWN.value)
"""Statuses of a row whose message left for the provider (``unknown``: it may have)."""


class ReasonCode(StrEnum):
    """Why a row has its status (``deliveries.reason_code``; a closed set)."""

    # decisions
    ELIGIBLE = "eligible"  # queued on the first reachable channel
    HELD_OUT = "held_out"  # in the campaign's control group
    GLOBAL_CONTROL = "global_control"  # in the global control group: no marketing this period
    CAPPED = "capped"  # cap_rule is full; skipped
    CAP_DEFERRED = "cap_deferred"  # cap_rule is full; due when its window opens
    CAP_NO_WINDOW = "cap_no_window"  # deferred, but no window opens within the search horizon
    QUOTA_DEFERRED = "quota_deferred"  # the provider's daily quota was used up; due the next day it has room
    NO_CONTACT = "no_contact"
    NO_CONSENT = "no_consent"
    SUPPRESSED = "suppressed"
    UNSUBSCRIBED = "unsubscribed"  # the member's preferences stop this category on the channel
    DUPLICATE_KEY = "duplicate_key"  # triggered: the idempotency key was used before
    UNKNOWN_MEMBER = "unknown_member"  # triggered: no such member
    UNKNOWN_TEMPLATE = "unknown_template"  # triggered: no such template
    BAD_DATA = "bad_data"  # triggered: data is not a JSON object
    BELOW_MIN_POINTS = "below_min_points"  # ladder: every expiring date is under the campaign's min_points
    ALREADY_REMINDED = "already_reminded"  # ladder: each date's current stage was reminded before
    STAGE_NOT_REACHED = "stage_not_reached"  # ladder: points expire within the horizon, before the first stage
    # outcomes
    STALE = "stale"  # re-validation at send time: the reminder is no longer true
    TEMPLATE_ERROR = "template_error"  # the member's message did not render
    OVER_BUDGET = "over_budget"  # longer than the campaign's max_segments on every channel left
    INVALID_RECIPIENT = "invalid_recipient"
    RECIPIENT_BLOCKED = "recipient_blocked"
    ADDRESS_UNSUPPORTED = "address_unsupported"  # a valid address the provider cannot carry; not suppressed
    REJECTED = "rejected"  # the provider refused this message
    BOUNCED = "bounced"  # the provider reported a permanent bounce after accepting (address suppressed)
    UNDELIVERED = "undelivered"  # the provider reported the message failed after accepting
    WITHDRAWN = "withdrawn"  # unsubscribed or suppressed between the decision and the send
    OUTCOME_UNKNOWN = "outcome_unknown"  # the request left, no answer came; not resent
    WORKER_LOST = "worker_lost"  # the worker stopped during the provider call (lease expired); not resent
    RETRYING = "retrying"  # rows written before revision 0004 only: a retry now keeps the decision's code
    GAVE_UP = "gave_up"  # transient failures until max_attempts
    CHANNEL_ERROR = "channel_error"  # a transport raised outside the error tree
    INTERNAL_ERROR = "internal_error"  # loyalcast failed on this row (traceback in the log)
    MEMBER_MISSING = "member_missing"  # the member row vanished since planning
    LEGACY = "legacy"  # written before reason codes existed


@dataclass
class Outcome:
    """What happened to one claimed row.

    ``code``/``reason`` None keep the row's (why this channel was chosen); ``error``
    None keeps ``last_error``; ``due`` moves ``send_at`` (a retry's next attempt).
    """

    id: int
    status: Status
    code: ReasonCode | None
    reason: str | None
    holds_slot: bool
    sent_at: datetime | None = None
    provider_message_id: str | None = None
    error: str | None = None
    due: datetime | None = None


def in_status(status: Status) -> ColumnElement[bool]:
    """Rows in ``status``, one of the open ones (queued, sending): through the index of
    rows on their way, which is on ``is_open``, not on ``status``."""
    assert status in (Status.QUEUED, Status.SENDING), status
    return and_(deliveries.c.is_open, deliveries.c.status == status.value)


def add_suppressions(conn: Connection, entries: list[dict[str, Any]], now: datetime) -> None:
    """Insert ``(channel, address, reason)`` entries; existing ones keep their first reason."""
    conn.execute(
        upsert_insert(conn, suppressions).on_conflict_do_nothing(),
        [{**entry, "reason": entry["reason"][:500], "created_at": now} for entry in entries],
    )
