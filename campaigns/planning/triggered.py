"""Triggered messages: one member, one template, the caller's data and idempotency key.

``decide`` writes the message's ledger row through the same rules as a campaign (the
same member lock and the same decision SQL, so consent, suppressions, quiet hours and
caps all apply; ``service`` is exempt from marketing caps unless a rule names it):

- the idempotency key is unique (``idempotency_keys``, kept as long as the ledger): a key
  seen before adds a ``duplicate`` row pointing at the first delivery and sends nothing;
- an unknown member or template, or data that is not a JSON object, adds a ``failed``
  row with that reason instead of crashing the worker;
- data a template needs but the caller did not send fails at render time, also as a
  ``failed`` row naming the template file, line and variable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.engine import Connection

from campaigns.config.sections import CampaignSettings, SegmentSettings
from campaigns.config.settings import Settings
from campaigns.config.templates import template_channels
from campaigns.planning.context import make_context
from campaigns.planning.decisions import decide_chunk
from campaigns.planning.locks import lock_members
from campaigns.store import partitions
from campaigns.store.engine import upsert_insert
from campaigns.store.ledger import ReasonCode, Status
from campaigns.store.models import deliveries, idempotency_keys, members

log = logging.getLogger(__name__)

MAX_KEY_LENGTH = 200


@dataclass(frozen=True)
class Decided:
    delivery_id: int
    status: str
    reason: str
    send_at: datetime


def triggered_channels(settings: Settings, template: str) -> list[str]:
    """The triggered channel priority, less the channels the template has no text for."""
    available = set(template_channels(settings.templates_path, template, settings.program.locales))
    return [channel for channel in settings.triggered.channels if channel in available]


def problem(
    settings: Settings, conn: Connection, member_id: int, template: str, data: Any, channels: list[str] | None = None
) -> tuple[ReasonCode, str] | None:
    """Why the message cannot be sent at all (code and text), or None."""
    if not isinstance(data, dict):
        return ReasonCode.BAD_DATA, f"data must be a JSON object, got {type(data).__name__}"
    if not (settings.templates_path / template).is_dir() or not (channels or triggered_channels(settings, template)):
        return ReasonCode.UNKNOWN_TEMPLATE, f"unknown template {template!r} (no texts in {settings.templates_path / template})"
    if conn.execute(select(members.c.id).where(members.c.id == member_id)).first() is None:
        return ReasonCode.UNKNOWN_MEMBER, f"unknown member {member_id}"
    return None


def decide(
    engine: Engine,
    settings: Settings,
    member_id: int,
    template: str,
    data: Any,
    idempotency_key: str,
    category: str | None = None,
    now: datetime | None = None,
    channels: list[str] | None = None,
) -> Decided:
    """Write the ledger row of one triggered message (atomically, under the member lock);
    ``channels`` replaces the ``[triggered]`` priority (a campaign's fallback)."""
    now = now or datetime.now(UTC)
    category = category or settings.triggered.category
    key = str(idempotency_key)[:MAX_KEY_LENGTH]
    partitions.ensure_for(engine, now)
    with engine.begin() as conn:
        lock_members(conn, (member_id, member_id))
        # The key is taken here or was before: a concurrent use of it (for another
        # member too) waits for this transaction, then finds it taken.
        taken = conn.execute(
            upsert_insert(conn, idempotency_keys)
            .values(key=key, delivery_id=None, created_at=now)
            .on_conflict_do_nothing()
            .returning(idempotency_keys.c.key)
        ).first()
        if taken is None:
            return _duplicate(conn, member_id, template, category, now, key, _first_use(conn, key))
        decided = _decide(conn, settings, member_id, template, data, key, category, now, channels)
        conn.execute(update(idempotency_keys).where(idempotency_keys.c.key == key).values(delivery_id=decided.delivery_id))
        return decided


def _first_use(conn: Connection, key: str) -> Any:
    """The delivery that used ``key`` first: its id and status."""
    used = conn.execute(select(idempotency_keys).where(idempotency_keys.c.key == key)).one()
    first = conn.execute(
        select(deliveries.c.id, deliveries.c.status).where(
            deliveries.c.id == used.delivery_id, deliveries.c.created_at == used.created_at
        )
    ).first()
    return first or SimpleNamespace(id=used.delivery_id, status="no longer in the ledger")


def _decide(
    conn: Connection,
    settings: Settings,
    member_id: int,
    template: str,
    data: Any,
    key: str,
    category: str,
    now: datetime,
    channels: list[str] | None = None,
) -> Decided:
    why_not = problem(settings, conn, member_id, template, data, channels)
    if why_not is not None:
        code, text = why_not
        log.warning("triggered %s for member %s not sent: %s", template, member_id, text)
        return _plain_row(conn, member_id, template, category, now, Status.FAILED, code, text, key)
    member_zone = conn.execute(select(members.c.timezone).where(members.c.id == member_id)).scalar()
    campaign = CampaignSettings(
        segment="(every member)",
        template=template,
        category=category,
        channels=channels or triggered_channels(settings, template),
    )
    ctx = make_context(
        settings,
        None,
        f"triggered:{template}",
        campaign,
        SegmentSettings(),
        now,
        member_zones(member_zone, settings.program.timezone),
        idempotency_key=key,
        data=data,
        decided_at=now,
    )
    decide_chunk(conn, settings, ctx, (member_id, member_id))
    row = conn.execute(
        select(deliveries.c.id, deliveries.c.status, deliveries.c.reason, deliveries.c.send_at).where(
            deliveries.c.idempotency_key == key, deliveries.c.created_at == now
        )
    ).one()
    return Decided(row.id, row.status, row.reason, row.send_at)


def member_zones(member_zone: str | None, program_zone: str) -> tuple[str, ...]:
    """The zones a one-member decision needs: the program's, and the member's when known."""
    zones = {program_zone}
    if member_zone:
        try:
            ZoneInfo(member_zone)
            zones.add(member_zone)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return tuple(sorted(zones))


def _duplicate(conn: Connection, member_id: int, template: str, category: str, now: datetime, key: str, first: Any) -> Decided:
    """A ``duplicate`` row pointing at ``first``, the delivery that used ``key``."""
    reason = f"idempotency key {key!r} was used by delivery {first.id} ({first.status})"
    return _plain_row(conn, member_id, template, category, now, Status.DUPLICATE, ReasonCode.DUPLICATE_KEY, reason, None)


def _plain_row(
    conn: Connection,
    member_id: int,
    template: str,
    category: str,
    now: datetime,
    status: Status,
    code: ReasonCode,
    reason: str,
    key: str | None,
) -> Decided:
    delivery_id: int = conn.execute(
        insert(deliveries)
        .values(
            run_id=None,
            member_id=member_id,
            channel=None,
            category=category,
            template=template[:100],
            status=status.value,
            reason=reason[:500],
            reason_code=code.value,
            holds_slot=False,
            send_at=now,
            created_at=now,
            updated_at=now,
            attempts=0,
            idempotency_key=key,
        )
        .returning(deliveries.c.id)
    ).scalar_one()
    return Decided(delivery_id, status.value, reason, now)
