"""The naive design the benchmark compares against: one Dramatiq message per member, the
member loaded by a query per message, the cap checked with a single-row query per
message, one ledger insert and one update per message. Same transports, same sinks,
same templates as loyalcast. Run by ``bench/run.py``; not part of loyalcast."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import func, insert, select, update

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)

_state = threading.local()  # transports are per thread, as in loyalcast's batches


def _app():  # type: ignore[no-untyped-def]
    if not hasattr(_state, "app"):
        from campaigns.app import runtime
        from channels import build_transport

        app = runtime.app()
        _state.app = app
        _state.transports = {
            channel: build_transport(channel, section.transport, outbox_dir=app.settings.outbox_path, options=section)
            for channel, section in app.settings.channels.items()
        }
    return _state


@dramatiq.actor(queue_name="naive", max_retries=0)
def naive_send(member_id: int, run_id: int) -> None:
    from campaigns.delivery.rows import Recipient
    from campaigns.store.models import balances, deliveries, members
    from channels.base import OutgoingMessage
    from channels.errors import ChannelError

    state = _app()
    app, transports = state.app, state.transports
    now = datetime.now(UTC)
    with app.engine.begin() as conn:
        member = conn.execute(
            select(members, func.coalesce(balances.c.points, 0).label("balance"))
            .select_from(members.outerjoin(balances, balances.c.member_id == members.c.id))
            .where(members.c.id == member_id)
        ).one()
        channel, address = next(
            (
                (c, a)
                for c, a, ok in (
                    ("telegram", member.telegram_chat_id, member.telegram_consent),
                    ("email", member.email, member.email_consent),
                    ("sms", member.phone, member.sms_consent),
                )
                if a and ok
            ),
            (None, None),
        )
        if channel is None:
            return
        window = timedelta(days=30 if channel == "sms" else 14)
        used = conn.execute(
            select(func.count())
            .select_from(deliveries)
            .where(
                deliveries.c.member_id == member_id,
                deliveries.c.channel == channel,
                deliveries.c.holds_slot,
                deliveries.c.send_at > now - window,
            )
        ).scalar_one()
        if used and channel != "telegram":
            return
        delivery_id = conn.execute(
            insert(deliveries)
            .values(
                run_id=run_id,
                member_id=member_id,
                channel=channel,
                category="marketing",
                template="balance_reminder",
                status="sending",
                reason="naive",
                address=str(address),
                holds_slot=True,
                send_at=now,
                created_at=now,
                updated_at=now,
                attempts=1,
            )
            .returning(deliveries.c.id)
        ).scalar_one()
    recipient = Recipient.from_row(member, member_id=member_id, campaign=None, occasion="naive", as_of=now)
    context = app.messages.context(recipient, channel, [])
    rendered = app.renderer.render("balance_reminder", channel, context)
    status = "sent"
    try:
        transports[channel].send(
            OutgoingMessage(
                channel=channel,
                reference=delivery_id,
                to=str(address),
                text=rendered.text,
                subject=rendered.subject,
                html=rendered.html,
                to_name=member.first_name,
            )
        )
    except ChannelError:
        status = "failed"
    with app.engine.begin() as conn:
        conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(status=status, sent_at=now))
