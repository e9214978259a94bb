"""What happened: counts per run and the story of one member, read from the ledger."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from campaigns.store import contacts
from campaigns.store.events import events_of
from campaigns.store.ledger import LEFT, Status
from campaigns.store.models import campaign_runs, deliveries, ladder_marks
from campaigns.store.preferences import member_choices
from campaigns.store.runs import of_run

IN_FLIGHT = (Status.QUEUED.value, Status.SENDING.value)
"""Rows still on their way (``unknown`` is an outcome: it is not waited for)."""
NO_CHANNEL = "-"


@dataclass
class RunReport:
    run_id: int
    campaign: str
    occasion: str
    as_of: datetime
    state: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """``{status: {channel: n}}``; members no channel could reach are under ``"-"``."""
    overdue: int = 0
    """Queued rows due for longer than the reconciler's ``overdue`` (their message may be lost)."""
    expired: int = 0
    """Rows in a provider call whose worker's lease has expired (the worker is gone)."""
    stalled: bool = False
    """Still planning, with the planner's lease lapsed."""

    def warnings(self) -> list[str]:
        """What an operator should hear about this run, one line each."""
        found = []
        if self.overdue:
            found.append(
                f"{self.overdue} queued deliveries are overdue: no message carries them any more, or no worker runs; "
                f"the reconciler (loyalcast scheduler, serve, or `loyalcast reconcile`) enqueues them again"
            )
        if self.expired:
            found.append(
                f"{self.expired} deliveries were in a provider call when their worker stopped; "
                f"the reconciler ends them unknown (not resent)"
            )
        if self.stalled:
            found.append("the run is stuck in planning (its planner stopped); the reconciler plans it again")
        return found

    @property
    def total(self) -> int:
        return sum(n for per_channel in self.counts.values() for n in per_channel.values())

    @property
    def nothing_delivered(self) -> bool:
        """Rows failed and not one was sent, delivered or possibly delivered (``unknown``)."""
        done = sum(sum(self.counts.get(status, {}).values()) for status in LEFT)
        return sum(self.counts.get(Status.FAILED.value, {}).values()) > 0 and done == 0

    @property
    def in_flight(self) -> int:
        return sum(sum(self.counts.get(status, {}).values()) for status in IN_FLIGHT)

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "campaign": self.campaign,
            "occasion": self.occasion,
            "as_of": self.as_of.isoformat(),
            "state": self.state,
            "total": self.total,
            "counts": self.counts,
            "warnings": self.warnings(),
        }


def latest_run_id(engine: Engine, campaign: str | None = None) -> int | None:
    query = select(campaign_runs.c.id).order_by(campaign_runs.c.started_at.desc(), campaign_runs.c.id.desc()).limit(1)
    if campaign:
        query = query.where(campaign_runs.c.campaign == campaign)
    with engine.connect() as conn:
        return conn.execute(query).scalar()


def run_report(engine: Engine, run_id: int, overdue_after: timedelta = timedelta(seconds=60)) -> RunReport | None:
    """Counts per status and channel of the run, and what is stuck in it: queued rows
    due for longer than ``overdue_after``, calls whose lease expired, a stalled plan."""
    now = datetime.now(UTC)
    with engine.connect() as conn:
        run = conn.execute(select(campaign_runs).where(campaign_runs.c.id == run_id)).first()
        if run is None:
            return None
        rows = conn.execute(
            select(deliveries.c.status, deliveries.c.channel, func.count())
            .where(of_run(run.id, run.started_at))
            .group_by(deliveries.c.status, deliveries.c.channel)
        ).all()
        stuck = conn.execute(
            select(
                func.count().filter(deliveries.c.status == Status.QUEUED.value, deliveries.c.send_at < now - overdue_after),
                func.count().filter(deliveries.c.status == Status.SENDING.value, deliveries.c.lease_until < now),
            ).where(of_run(run.id, run.started_at), deliveries.c.is_open)
        ).one()
    report = RunReport(run.id, run.campaign, run.occasion, run.as_of, run.state, overdue=stuck[0], expired=stuck[1])
    report.stalled = run.state == "planning" and run.lease_until is not None and run.lease_until < now
    for row in rows:
        report.counts.setdefault(row.status, {})[row.channel or NO_CHANNEL] = row[2]
    return report


def member_history(engine: Engine, member_id: int) -> list[dict[str, Any]]:
    """Every ledger row of the member, oldest first, with its campaign and occasion and
    its lifecycle: decided (``created_at``), due (``send_at``), claimed (``claimed_at``
    by ``lease_owner``), provider calls (``attempts``, ``last_error``), outcome; and
    ``reminds``, the ``(expires_on, stage)`` pairs a ladder reminder is about."""
    query = (
        select(
            deliveries.c.id,
            campaign_runs.c.campaign,
            campaign_runs.c.occasion,
            deliveries.c.channel,
            deliveries.c.category,
            deliveries.c.template,
            deliveries.c.status,
            deliveries.c.reason,
            deliveries.c.reason_code,
            deliveries.c.send_at,
            deliveries.c.sent_at,
            deliveries.c.attempts,
            deliveries.c.last_error,
            deliveries.c.claimed_at,
            deliveries.c.lease_owner,
            deliveries.c.created_at,
        )
        .select_from(deliveries.outerjoin(campaign_runs, campaign_runs.c.id == deliveries.c.run_id))
        .where(deliveries.c.member_id == member_id)
        .order_by(deliveries.c.created_at, deliveries.c.id)
    )
    with engine.connect() as conn:
        rows = [dict(row._mapping) for row in conn.execute(query)]
        reminds: dict[int, list[dict[str, Any]]] = {}
        for mark in conn.execute(
            select(ladder_marks.c.delivery_id, ladder_marks.c.expires_on, ladder_marks.c.stage)
            .where(ladder_marks.c.member_id == member_id)
            .order_by(ladder_marks.c.expires_on, ladder_marks.c.stage.desc())
        ):
            reminds.setdefault(mark.delivery_id, []).append({"expires_on": mark.expires_on.isoformat(), "stage": mark.stage})
        reported: dict[int, list[dict[str, Any]]] = {}
        for event in events_of(conn, [row["id"] for row in rows]):
            reported.setdefault(event.delivery_id, []).append(
                {"event": event.event, "reason": event.reason, "received_at": event.received_at, "provider": event.provider}
            )
    for row in rows:
        row["reminds"] = reminds.get(row["id"], [])
        row["events"] = reported.get(row["id"], [])
    return rows


def member_choices_and_links(engine: Engine, member_id: int) -> dict[str, Any]:
    """What the member chose through loyalcast web and the bot: ``preferences`` (each
    described, "unsubscribed from marketing on email on 2026-12-01 via one-click") and
    ``linked`` contacts."""
    with engine.connect() as conn:
        choices = member_choices(conn, member_id)
        links = contacts.linked(conn, member_id)
    return {
        "preferences": [
            {
                "channel": c.channel,
                "category": c.category,
                "subscribed": c.subscribed,
                "source": c.source,
                "changed_at": c.changed_at,
                "text": c.describe(),
            }
            for c in choices
        ],
        "linked": [
            {
                "channel": link.channel,
                "address": link.address,
                "consent": link.consent,
                "source": link.source,
                "linked_at": link.linked_at,
            }
            for link in links
        ],
    }


def due_in_flight(engine: Engine, run_id: int, due_by: datetime) -> int:
    """Deliveries of the run that are due by ``due_by`` and not finished yet."""
    with engine.connect() as conn:
        return conn.execute(
            select(func.count()).where(
                deliveries.c.run_id == run_id,
                deliveries.c.is_open,
                deliveries.c.send_at <= due_by,
            )
        ).scalar_one()
