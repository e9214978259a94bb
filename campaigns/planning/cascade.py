"""Cascade after the fact: a campaign's ``fallback`` sends once more, on another channel,
to members whose message was not delivered in time.

``[campaigns.<name>.fallback] on = "viber", to = "sms", after = "3h"``: a row of the
campaign on ``on`` falls back when

- it is still ``sent`` ``after`` its send (no delivery report came: the absence is the
  signal), or
- it ``failed`` at the provider or by a report (undelivered, bounced, invalid number,
  refused, given up): at once.

A row ``delivered`` in time never falls back; rows that did not reach a provider for
reasons of their own (template error, over budget, withdrawn, stale) do not either.

The fallback is decided the way a triggered message is (``campaigns.planning.triggered``)
on ``to`` only: ``to``'s consent, suppressions, preferences, quiet hours and caps apply,
under the member lock. It is its own ledger row (no run: it does not count in the
occasion's figures or its lift), its idempotency key ``fallback:<first row's id>``,
unique in the ledger, so each decision falls back at most once however many
reconcilers race. Its reason names the first row, and ``loyalcast why`` shows the chain.

Driven by the reconciler each pass (``loyalcast scheduler``/``serve``/``reconcile``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, String, and_, cast, exists, literal, or_, select, update
from sqlalchemy.orm import aliased

from campaigns.config.settings import Settings
from campaigns.planning import triggered
from campaigns.store.ledger import ReasonCode, Status
from campaigns.store.models import campaign_runs, deliveries

KEY_PREFIX = "fallback:"
LOOKBACK = timedelta(days=7)
"""How far past ``after`` a row is still considered: older ones are left alone (a
reconciler that was down for longer does not send week-old reminders)."""
NOT_THE_PROVIDERS = (
    ReasonCode.TEMPLATE_ERROR.value,
    ReasonCode.OVER_BUDGET.value,
    ReasonCode.WITHDRAWN.value,
    ReasonCode.STALE.value,
    ReasonCode.INTERNAL_ERROR.value,
    ReasonCode.MEMBER_MISSING.value,
)
"""Failures that say nothing about the channel: another channel would fail the same way,
or the member should not get the message at all."""
BATCH = 500
"""Rows considered per campaign and pass."""


@dataclass(frozen=True)
class Fallback:
    """One fallback decided: the first row, the new one, and when the new one is due."""

    first: int
    delivery_id: int
    status: str
    send_at: datetime


def key(delivery_id: int) -> str:
    """The idempotency key of ``delivery_id``'s fallback."""
    return f"{KEY_PREFIX}{delivery_id}"


def fall_back(engine: Engine, settings: Settings, now: datetime) -> list[Fallback]:
    """Decide the fallbacks that are due as of ``now``, for every campaign with a rule."""
    decided: list[Fallback] = []
    for name, campaign in settings.campaigns.items():
        rule = campaign.fallback
        if rule is None:
            continue
        fallback = aliased(deliveries)
        query = (
            select(
                deliveries.c.id,
                deliveries.c.member_id,
                deliveries.c.template,
                deliveries.c.category,
                deliveries.c.status,
                deliveries.c.reason,
            )
            .select_from(deliveries.join(campaign_runs, campaign_runs.c.id == deliveries.c.run_id))
            .where(
                campaign_runs.c.campaign == name,
                deliveries.c.channel == rule.on,
                # Sent by now - after, and decided at most hold_slack before that.
                deliveries.c.created_at >= now - rule.after - LOOKBACK - settings.hold_slack,
                or_(
                    and_(
                        deliveries.c.status == Status.SENT.value,
                        deliveries.c.sent_at <= now - rule.after,
                        deliveries.c.sent_at > now - rule.after - LOOKBACK,
                    ),
                    and_(
                        deliveries.c.status == Status.FAILED.value,
                        deliveries.c.reason_code.not_in(NOT_THE_PROVIDERS),
                        deliveries.c.updated_at > now - rule.after - LOOKBACK,
                    ),
                ),
                ~exists().where(fallback.c.idempotency_key == literal(KEY_PREFIX, String) + cast(deliveries.c.id, String)),
            )
            .order_by(deliveries.c.id)
            .limit(BATCH)
        )
        with engine.connect() as conn:
            candidates = conn.execute(query).all()
        for row in candidates:
            what = "no delivery report" if row.status == Status.SENT.value else f"failed: {row.reason}"
            why = f"fallback for delivery {row.id} ({rule.on} not delivered within {_span(rule.after)}: {what})"
            new = triggered.decide(
                engine,
                settings,
                row.member_id,
                row.template,
                dict(campaign.data),
                key(row.id),
                row.category,
                now,
                channels=[rule.to],
            )
            with engine.begin() as conn:
                conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id == new.delivery_id)
                    .values(reason=f"{why}; {new.reason}"[:500], updated_at=now)
                )
            decided.append(Fallback(row.id, new.delivery_id, new.status, new.send_at))
    return decided


def _span(value: timedelta) -> str:
    hours, rest = divmod(int(value.total_seconds()), 3600)
    if rest == 0 and hours % 24 == 0:
        return f"{hours // 24}d"
    return f"{hours}h" if rest == 0 else f"{int(value.total_seconds() // 60)}m"
