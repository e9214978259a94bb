"""What a member would receive now: the marketer's ``preview``, ``check`` and the SMS
cost estimate of ``plan`` all render through the same path as a real delivery
(``Deliverer.context`` and ``Renderer``), so a preview is exactly the message.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, select

from campaigns.planning import ladder
from campaigns.delivery.deliverer import Deliverer
from campaigns.errors import LoyalcastError, TemplateError
from campaigns.store.models import balances, members, point_expirations, suppressions
from campaigns.delivery.rendering import Rendered
from campaigns.config.settings import CampaignSettings, Settings
from channels.smstext import SmsLength, measure

CONTACT_COLUMN = {"email": "email", "sms": "phone", "telegram": "telegram_chat_id"}


@dataclass(frozen=True)
class ChannelPreview:
    channel: str
    reachable: str
    """``"yes"`` or why not (``"no consent"``, ``"no contact"``, ``"suppressed"``)."""
    rendered: Rendered | None
    error: str | None
    sms: SmsLength | None = None
    over_budget: str | None = None


def member_rows(deliverer: Deliverer, member_ids: list[int], campaign: str | None, as_of: datetime) -> dict[int, Any]:
    """The members as a delivery sees them, in one query (unknown ids are left out)."""
    with deliverer.engine.connect() as conn:
        found = conn.execute(
            select(members, func.coalesce(balances.c.points, 0).label("balance"))
            .select_from(members.outerjoin(balances, balances.c.member_id == members.c.id))
            .where(members.c.id.in_(member_ids))
        ).all()
    return {
        row.id: SimpleNamespace(**row._mapping, member_id=row.id, campaign=campaign, occasion="preview", as_of=as_of)
        for row in found
    }


def member_row(deliverer: Deliverer, member_id: int, campaign: str | None, as_of: datetime) -> Any:
    """One member as a delivery sees them, or LoyalcastError if unknown."""
    row = member_rows(deliverer, [member_id], campaign, as_of).get(member_id)
    if row is None:
        raise LoyalcastError(f"no member {member_id} in the members table")
    return row


def lots_by_member(deliverer: Deliverer, member_ids: list[int], as_of: datetime) -> dict[int, list[tuple[datetime, float]]]:
    """Point lots expiring after ``as_of`` of these members, in one query."""
    found: dict[int, list[tuple[datetime, float]]] = {member_id: [] for member_id in member_ids}
    with deliverer.engine.connect() as conn:
        for member_id, expires_at, points in conn.execute(
            select(point_expirations.c.member_id, point_expirations.c.expires_at, point_expirations.c.points)
            .where(point_expirations.c.member_id.in_(member_ids), point_expirations.c.expires_at > as_of)
            .order_by(point_expirations.c.member_id, point_expirations.c.expires_at)
        ):
            found[member_id].append((expires_at, float(points)))
    return found


def member_lots(deliverer: Deliverer, member_id: int, as_of: datetime) -> list[tuple[datetime, float]]:
    return lots_by_member(deliverer, [member_id], as_of)[member_id]


def ladder_steps(settings: Settings, row: Any, lots: list[tuple[datetime, float]], as_of: datetime) -> list | None:
    """For an expiring-points ladder campaign, the (date, stage) pairs due for the member
    now, as if none had been given yet; None for other campaigns."""
    campaign = settings.campaigns.get(row.campaign or "")
    if campaign is None or campaign.kind != "expiring_ladder":
        return None
    try:
        zone = ZoneInfo(row.timezone or settings.program.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo(settings.program.timezone)
    return [(step.expires_on, step.stage) for step in ladder.due_steps(lots, zone, as_of, campaign, set())]


def sample_data(settings: Settings, template: str) -> dict[str, Any] | None:
    """``templates/<name>/sample.json``: example ``data`` of a triggered template, used by
    ``check`` and ``preview`` (and the contract a developer's ``data`` must meet)."""
    path = settings.templates_path / template / "sample.json"
    if not path.is_file():
        return None
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TemplateError(f"not valid JSON: {exc.msg}", file=f"{template}/sample.json", line=exc.lineno) from None
    if not isinstance(loaded, dict):
        raise TemplateError("must hold a JSON object", file=f"{template}/sample.json")
    return loaded


def render_channel(
    deliverer: Deliverer, row: Any, lots: list[tuple[datetime, float]], template: str, channel: str,
    data: dict[str, Any] | None = None,
) -> ChannelPreview:
    """Render one channel for a member row; errors become part of the preview. A row
    without a campaign renders with ``data``, else the template's ``sample.json``."""
    row = SimpleNamespace(**{**vars(row), "channel": channel})
    steps = ladder_steps(deliverer.settings, row, lots, row.as_of)
    if steps == []:
        return ChannelPreview(channel, "", None, f"no reminder of {row.campaign} is due for this member now")
    try:
        if data is None and not row.campaign:
            data = sample_data(deliverer.settings, template)
        rendered = deliverer.renderer.render(template, channel, deliverer.context(row, lots, steps, data))
    except TemplateError as exc:
        return ChannelPreview(channel, "", None, str(exc))
    sms = measure(rendered.text or "") if channel == "sms" else None
    over = deliverer.sms_over_budget(row.campaign, channel, rendered.text)
    return ChannelPreview(channel, "", rendered, None, sms, over)


def reachability(deliverer: Deliverer, row: Any, channel: str) -> str:
    address = getattr(row, CONTACT_COLUMN[channel])
    if address in (None, ""):
        return "no contact"
    if not getattr(row, f"{channel}_consent"):
        return "no consent"
    with deliverer.engine.connect() as conn:
        suppressed = conn.execute(
            select(suppressions.c.reason).where(suppressions.c.channel == channel, suppressions.c.address == str(address))
        ).scalar()
    return f"suppressed ({suppressed})" if suppressed else "yes"


def preview_member(
    deliverer: Deliverer, settings: Settings, campaign_name: str, member_id: int, as_of: datetime,
    channels: list[str] | None = None,
) -> list[ChannelPreview]:
    """Every channel of the campaign (or ``channels``), rendered for the member as of ``as_of``."""
    campaign: CampaignSettings = settings.campaigns[campaign_name]
    row = member_row(deliverer, member_id, campaign_name, as_of)
    lots = member_lots(deliverer, member_id, as_of)
    previews = []
    for channel in channels or campaign.channels:
        preview = render_channel(deliverer, row, lots, campaign.template, channel)
        previews.append(ChannelPreview(channel, reachability(deliverer, row, channel), preview.rendered,
                                       preview.error, preview.sms, preview.over_budget))
    return previews


@dataclass(frozen=True)
class SmsEstimate:
    recipients: int
    sampled: int
    segments: int
    """Estimated segments for all recipients (exact when every recipient was sampled)."""
    cost: float
    currency: str


def estimate_sms(
    deliverer: Deliverer, settings: Settings, campaign_name: str, member_ids: list[int], recipients: int, as_of: datetime
) -> SmsEstimate:
    """Render the SMS for ``member_ids`` (a sample of ``recipients``) and extrapolate."""
    campaign = settings.campaigns[campaign_name]
    rows = member_rows(deliverer, member_ids, campaign_name, as_of)
    lots = lots_by_member(deliverer, list(rows), as_of)
    total = 0
    for member_id, row in rows.items():
        preview = render_channel(deliverer, row, lots[member_id], campaign.template, "sms")
        total += preview.sms.segments if preview.sms else 0
    sampled = len(member_ids)
    segments = round(total * recipients / sampled) if sampled else 0
    price = settings.channel("sms").price_per_segment
    return SmsEstimate(recipients, sampled, segments, round(segments * price, 2), settings.program.currency)


def preview_page(member_id: int, campaign: str, previews: list[ChannelPreview]) -> str:
    """One HTML page with the email as it renders, the SMS and the Telegram message side by side."""
    e = html.escape
    cards = []
    for preview in previews:
        body: str
        if preview.error:
            body = f'<p class="error">{e(preview.error)}</p>'
        elif preview.channel == "email" and preview.rendered:
            inner = preview.rendered.html or f"<pre>{e(preview.rendered.text or '')}</pre>"
            body = (f'<p class="subject">{e(preview.rendered.subject or "")}</p>'
                    f'<iframe title="email" sandbox="" srcdoc="{e(inner, quote=True)}"></iframe>')
            if preview.rendered.text:
                body += f"<details><summary>text part</summary><pre>{e(preview.rendered.text)}</pre></details>"
        elif preview.channel == "sms" and preview.rendered and preview.sms:
            note = (f"{preview.sms.segments} segment(s), {preview.sms.encoding}, {preview.sms.characters} characters")
            body = f'<div class="bubble">{e(preview.rendered.text or "")}</div><p class="meta">{e(note)}</p>'
            if preview.over_budget:
                body += f'<p class="error">{e(preview.over_budget)}</p>'
        elif preview.rendered:
            # Telegram's HTML subset is already escaped where it holds member data.
            body = f'<div class="bubble telegram">{preview.rendered.text or ""}</div>'
        else:
            body = ""
        cards.append(
            f'<section class="channel" id="{e(preview.channel)}"><h2>{e(preview.channel)}</h2>'
            f'<p class="meta">reachable: {e(preview.reachable)}</p>{body}</section>'
        )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>loyalcast preview: {e(campaign)} for member {member_id}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; background: #f4f4f4; }}
main {{ display: flex; gap: 1rem; align-items: flex-start; }}
.channel {{ background: #fff; border-radius: 8px; padding: 1rem; flex: 1; min-width: 0; }}
iframe {{ width: 100%; height: 420px; border: 1px solid #ddd; }}
.bubble {{ background: #e7f3ff; border-radius: 12px; padding: .75rem; white-space: pre-wrap; }}
.telegram {{ background: #effdde; }}
.meta {{ color: #666; font-size: .85rem; }}
.error {{ color: #b00020; }}
.subject {{ font-weight: bold; }}
</style>
</head>
<body>
<h1>{e(campaign)} for member {member_id}</h1>
<main>
{"".join(cards)}
</main>
</body>
</html>
"""
