"""Building one member's message: the template context, re-validation, rendering, the
segment budget. Shared by delivery and by the tools that show a message (preview,
check, plan's cost estimate), so what they show is exactly what is sent.
"""

from __future__ import annotations

import logging
import unicodedata
from collections import defaultdict
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any

from campaigns.config.settings import Settings
from campaigns.config.zones import member_zone, zone_info
from campaigns.delivery.rendering import Rendered, Renderer, short
from campaigns.delivery.rows import Recipient
from campaigns.planning import ladder
from channels.specs import channel_spec

log = logging.getLogger(__name__)

Lots = list[tuple[datetime, float]]
"""A member's point lots: ``(expires_at UTC, points)``, oldest first."""

Steps = list[tuple[date, int]]
"""The ``(expiry date, stage)`` pairs an expiring-points ladder reminder is about."""


class MessageBuilder:
    """Turns a recipient and their point lots into a rendered message. Thread-safe."""

    def __init__(self, settings: Settings, renderer: Renderer) -> None:
        self.settings = settings
        self.renderer = renderer

    def horizon_days(self, campaign: str | None) -> int:
        """How far ahead a campaign's messages look at expiring points: a ladder's
        longest stage, the segment's ``expiring_within_days``, else
        ``delivery.expiring_horizon_days``."""
        spec = self.settings.campaigns.get(campaign or "")
        if spec is not None and spec.stages:
            return ladder.horizon_days(self.settings, spec)
        segment = self.settings.segments.get(spec.segment) if spec else None
        if segment is not None and segment.expiring_within_days:
            return segment.expiring_within_days
        return self.settings.delivery.expiring_horizon_days

    def is_ladder(self, campaign: str | None) -> bool:
        spec = self.settings.campaigns.get(campaign or "")
        return spec is not None and spec.kind == "expiring_ladder"

    def render(self, template: str, channel: str, context: dict[str, Any]) -> Rendered:
        """Render ``template`` for ``channel``; TemplateError names the file and line."""
        return self.renderer.render(template, channel, context)

    def context(
        self,
        recipient: Recipient,
        channel: str,
        lots: Lots,
        steps: Steps | None = None,
        data: dict[str, Any] | None = None,
        category: str | None = None,
    ) -> dict[str, Any]:
        """What a template sees for one member (documented in docs/templates.md).

        ``steps`` become ``reminder``, with the points as they are now. ``data``
        defaults to the campaign's ``data`` table. ``category`` (the ledger row's) is
        what the unsubscribe link stops; it defaults to the campaign's, else the
        triggered default.
        """
        if category is None:
            spec = self.settings.campaigns.get(recipient.campaign or "")
            category = spec.category if spec else self.settings.triggered.category
        program = self.settings.program
        locale = recipient.locale if recipient.locale in program.locales else program.default_locale
        zone = member_zone(recipient.timezone, program.timezone)
        as_of = recipient.as_of
        horizon = as_of + timedelta(days=self.horizon_days(recipient.campaign))
        per_date: dict[date, float] = defaultdict(float)
        for expires_at, points in lots:
            if points <= 0 or not as_of < expires_at <= horizon:  # a negative lot is a correction, never news
                continue
            per_date[expires_at.astimezone(zone_info(zone)).date()] += points
        dates: list[dict[str, Any]] = [{"date": day, "points": tidy(points)} for day, points in sorted(per_date.items())]
        reminder = None
        if steps is not None:
            spec = self.settings.campaigns.get(recipient.campaign or "")
            minimum = spec.min_points if spec else 0
            today = as_of.astimezone(zone_info(zone)).date()
            now_by_date = ladder.points_by_date(lots, zone_info(zone), as_of)
            due: list[dict[str, Any]] = [
                {"date": day, "points": tidy(now_by_date.get(day, 0)), "stage": stage, "days_left": (day - today).days}
                for day, stage in steps
                if now_by_date.get(day, 0) >= max(minimum, 0.01)
            ]
            reminder = {
                "dates": due,
                "total": tidy(sum(item["points"] for item in due)),
                "stage": min((item["stage"] for item in due), default=None),
                "planned": [day.isoformat() for day, _ in steps],
            }
        return {
            "member": {
                "id": recipient.member_id,
                "first_name": display_name(recipient.first_name),
                "tier": recipient.tier or "",
                "locale": locale,
            },
            # A negative balance (a refund clawed back) is shown as 0: a reminder never says "-500 points".
            "balance": tidy(max(float(recipient.balance or 0), 0.0)),
            "expiring": {
                "total": tidy(sum(item["points"] for item in dates)),
                "nearest_date": dates[0]["date"] if dates else None,
                "dates": dates,
            },
            "program": {"name": program.name, "site_url": program.site_url},
            # Signed links to loyalcast web: stop this kind of message on this channel
            # (also the List-Unsubscribe header), every choice, and opting in elsewhere.
            "unsubscribe_url": self.settings.unsubscribe_url(recipient.member_id, channel, category),
            "preferences_url": self.settings.preferences_url(recipient.member_id),
            "opt_in": self.settings.opt_in_links(recipient.member_id),
            "campaign": {"name": recipient.campaign, "occasion": recipient.occasion},
            "reminder": reminder,
            "data": data if data is not None else self._campaign_data(recipient.campaign),
            "now": as_of,
            "locale": locale,
            "timezone": zone,
        }

    def stale_reason(self, campaign: str | None, context: dict[str, Any]) -> str | None:
        """Why the reminder is no longer true (balance and expiring points were just
        reloaded), judged by the campaign's segment; None when it still holds."""
        spec = self.settings.campaigns.get(campaign or "")
        segment = self.settings.segments.get(spec.segment) if spec else None
        if spec is None or segment is None:
            return None
        reminder = context["reminder"]
        if reminder is not None and not reminder["dates"]:
            return (
                f"the points this reminder is about ({', '.join(reminder['planned'])}) are now below "
                f"the campaign's minimum {spec.min_points:g}"
            )
        balance, expiring = context["balance"], context["expiring"]["total"]
        if segment.min_balance is not None and balance < segment.min_balance:
            return f"balance is now {balance}, below the segment's minimum {segment.min_balance:g}"
        if segment.max_balance is not None and balance > segment.max_balance:
            return f"balance is now {balance}, above the segment's maximum {segment.max_balance:g}"
        if segment.expiring_within_days is not None:
            needed = segment.min_expiring_points or 0.01
            if expiring < needed:
                return f"{expiring} points now expire within {segment.expiring_within_days} days (the segment needs {needed:g})"
        return None

    def over_budget(self, campaign: str | None, channel: str, text: str | None) -> str | None:
        """Why a text may not go out (more segments than the campaign's ``max_segments``,
        on a channel billed per segment), else None."""
        channel_kind = channel_spec(channel)
        measure = channel_kind.measure
        if measure is None or text is None:
            return None
        spec = self.settings.campaigns.get(campaign or "")
        limit = spec.max_segments if spec else 2
        length = measure(text)
        if length.segments <= limit:
            return None
        return (
            f"{channel_kind.label} is {length.segments} segments ({length.encoding}, {length.characters} characters); "
            f"the campaign allows {limit}"
        )

    def _campaign_data(self, campaign: str | None) -> dict[str, Any]:
        spec = self.settings.campaigns.get(campaign or "")
        return dict(spec.data) if spec else {}


NAME_MAX = 40
"""Longest first name a template sees, in characters (longer ones are cut with "…")."""


@lru_cache(maxsize=16_384)
def display_name(raw: str | None) -> str:
    """The member's first name as templates see it: ``""`` when there is none, white
    space runs and control characters collapsed to one space, at most
    :data:`NAME_MAX` characters (cut at a word, ended with "…")."""
    if not raw:
        return ""
    text = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in str(raw))
    return short(text, NAME_MAX)


def tidy(value: float) -> float | int:
    """Whole numbers as ``int`` (templates print ``500``, not ``500.0``), others to cents."""
    return int(value) if float(value).is_integer() else round(value, 2)
