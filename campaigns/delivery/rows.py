"""Typed rows: the member a message is built for, and a claimed ledger row.

Built from one query's rows (``Deliverer`` loads a batch; preview and check load the
members they show); everything downstream reads attributes, never ``Any``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Recipient:
    """One member as a message sees them, and the occasion the message speaks for."""

    member_id: int
    first_name: str | None
    locale: str | None
    """The member's locale as the program's table has it (None: the program default)."""
    timezone: str | None
    """IANA name as the program's table has it (None or unknown: the program zone)."""
    tier: str | None
    balance: float
    campaign: str | None
    """The campaign's name; None for a triggered message."""
    occasion: str | None
    as_of: datetime
    """The instant the message speaks for: when it is due (UTC)."""

    @classmethod
    def from_row(cls, row: Any, *, member_id: int, campaign: str | None, occasion: str | None, as_of: datetime) -> Recipient:
        """From a row that has the members columns and ``balance`` (a query's result)."""
        return cls(
            member_id=member_id,
            first_name=row.first_name,
            locale=row.locale,
            timezone=row.timezone,
            tier=row.tier,
            balance=float(row.balance),
            campaign=campaign,
            occasion=occasion,
            as_of=as_of,
        )


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """A queued ledger row a worker is about to claim, with its member."""

    id: int
    channel: str
    category: str
    template: str
    address: str
    attempts: int
    """Provider calls made for this row so far (before the next one)."""
    data: dict[str, Any] | None
    """A triggered message's data (None for campaign rows: the campaign's ``data``)."""
    withdrawn: str | None
    """``suppressed`` or ``unsubscribed`` when the address was suppressed or the member
    unsubscribed after the decision (checked as the batch loads); None: still wanted."""
    recipient: Recipient
    last_inbound_at: datetime | None = None
    """When the member last wrote to us at this address on this channel (channels with
    a session window; ``conversations``)."""

    @property
    def member_id(self) -> int:
        return self.recipient.member_id

    @property
    def send_at(self) -> datetime:
        """When the row is due (UTC)."""
        return self.recipient.as_of

    @property
    def triggered(self) -> bool:
        return self.recipient.campaign is None
