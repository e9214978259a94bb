"""What a member would receive now: the marketer's ``preview``, ``check`` and the
segment cost estimate of ``plan`` all build messages through the same path as a real
delivery (``MessageBuilder``), so a preview is exactly the message.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select

from campaigns.config.sections import CampaignSettings
from campaigns.config.settings import Settings
from campaigns.config.values import is_marketing
from campaigns.config.zones import member_zone, zone_info
from campaigns.delivery.message import Lots, MessageBuilder, Steps
from campaigns.delivery.rendering import Rendered
from campaigns.delivery.rows import Recipient
from campaigns.delivery.transports import Transports
from campaigns.errors import LoyalcastError, TemplateError
from campaigns.planning import ladder
from campaigns.planning.dry_run import DryRun
from campaigns.store.models import balances, members, point_expirations, suppressions
from channels.base import OutgoingMessage
from channels.errors import InvalidRecipient, MissingSecret, PermanentError
from channels.smstext import SmsLength
from channels.specs import CHANNELS, channel_spec


@dataclass(frozen=True)
class ChannelPreview:
    channel: str
    reachable: str
    """``"yes"`` or why not (``"no consent"``, ``"no contact"``, ``"suppressed (...)"``)."""
    rendered: Rendered | None
    error: TemplateError | None
    length: SmsLength | None = None
    """Billing length, on channels billed per segment."""
    over_budget: str | None = None
    nothing_due: str | None = None
    """Why nothing would be sent now although the template renders (a ladder campaign
    with no reminder due for the member)."""

    @property
    def problem(self) -> str | None:
        """What stops this message, in one line (None: it would go out)."""
        return self.nothing_due or (str(self.error) if self.error else None)


@dataclass(frozen=True)
class Member:
    """A member as a preview shows them: the recipient, and their contacts and consents."""

    recipient: Recipient
    contacts: dict[str, str | None]
    consents: dict[str, bool]


def members_by_id(engine: Engine, member_ids: list[int], campaign: str | None, as_of: datetime) -> dict[int, Member]:
    """The members as a delivery sees them, in one query (unknown ids are left out)."""
    with engine.connect() as conn:
        found = conn.execute(
            select(members, func.coalesce(balances.c.points, 0).label("balance"))
            .select_from(members.outerjoin(balances, balances.c.member_id == members.c.id))
            .where(members.c.id.in_(member_ids))
        ).all()
    return {
        row.id: Member(
            Recipient.from_row(row, member_id=row.id, campaign=campaign, occasion="preview", as_of=as_of),
            contacts={spec.name: _text(row._mapping[spec.contact]) for spec in CHANNELS.values()},
            consents={spec.name: bool(row._mapping[spec.consent]) for spec in CHANNELS.values()},
        )
        for row in found
    }


def member_by_id(engine: Engine, member_id: int, campaign: str | None, as_of: datetime) -> Member:
    """One member as a delivery sees them, or LoyalcastError if unknown."""
    member = members_by_id(engine, [member_id], campaign, as_of).get(member_id)
    if member is None:
        raise LoyalcastError(f"no member {member_id} in the members table")
    return member


def lots_by_member(engine: Engine, member_ids: list[int], as_of: datetime) -> dict[int, Lots]:
    """Point lots expiring after ``as_of`` of these members, in one query."""
    found: dict[int, Lots] = {member_id: [] for member_id in member_ids}
    with engine.connect() as conn:
        for lot in conn.execute(
            select(point_expirations.c.member_id, point_expirations.c.expires_at, point_expirations.c.points)
            .where(
                point_expirations.c.member_id.in_(member_ids),
                point_expirations.c.expires_at > as_of,
                point_expirations.c.points > 0,
            )
            .order_by(point_expirations.c.member_id, point_expirations.c.expires_at)
        ):
            found[lot.member_id].append((lot.expires_at, float(lot.points)))
    return found


def member_lots(engine: Engine, member_id: int, as_of: datetime) -> Lots:
    return lots_by_member(engine, [member_id], as_of)[member_id]


def ladder_steps(settings: Settings, recipient: Recipient, lots: Lots) -> Steps | None:
    """For an expiring-points ladder campaign, the (date, stage) pairs due for the member
    now, as if none had been given yet; None for other campaigns."""
    campaign = settings.campaigns.get(recipient.campaign or "")
    if campaign is None or campaign.kind != "expiring_ladder":
        return None
    zone = zone_info(member_zone(recipient.timezone, settings.program.timezone))
    merge = ladder.merge_days(settings, campaign)
    return [(step.expires_on, step.stage) for step in ladder.due_steps(lots, zone, recipient.as_of, campaign, set(), merge)]


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
    messages: MessageBuilder,
    recipient: Recipient,
    lots: Lots,
    template: str,
    channel: str,
    data: dict[str, Any] | None = None,
) -> ChannelPreview:
    """Render one channel for a recipient; errors become part of the preview. A
    recipient without a campaign renders with ``data``, else the template's ``sample.json``."""
    steps = ladder_steps(messages.settings, recipient, lots)
    if steps == []:
        return ChannelPreview(
            channel, "", None, None, nothing_due=f"no reminder of {recipient.campaign} is due for this member now"
        )
    try:
        if data is None and not recipient.campaign:
            data = sample_data(messages.settings, template)
        rendered = messages.render(template, channel, messages.context(recipient, channel, lots, steps, data))
    except TemplateError as exc:
        return ChannelPreview(channel, "", None, exc)
    measure = channel_spec(channel).measure
    length = measure(rendered.text or "") if measure else None
    over = messages.over_budget(recipient.campaign, channel, rendered.text)
    return ChannelPreview(channel, "", rendered, None, length, over)


def reachability(engine: Engine, member: Member, channel: str, category: str) -> str:
    """``"yes"``, or why the campaign could not reach the member on ``channel`` (consent
    is marketing consent: a service message does not need it)."""
    address = member.contacts[channel]
    if address in (None, ""):
        return "no contact"
    if is_marketing(category) and not member.consents[channel]:
        return "no consent"
    with engine.connect() as conn:
        suppressed = conn.execute(
            select(suppressions.c.reason).where(suppressions.c.channel == channel, suppressions.c.address == address)
        ).scalar()
    return f"suppressed ({suppressed})" if suppressed else "yes"


def preview_member(
    engine: Engine,
    messages: MessageBuilder,
    campaign_name: str,
    member_id: int,
    as_of: datetime,
    channels: list[str] | None = None,
) -> list[ChannelPreview]:
    """Every channel of the campaign (or ``channels``), rendered for the member as of ``as_of``."""
    campaign: CampaignSettings = messages.settings.campaign(campaign_name)
    member = member_by_id(engine, member_id, campaign_name, as_of)
    lots = member_lots(engine, member_id, as_of)
    previews = []
    for channel in channels or campaign.channels:
        preview = render_channel(messages, member.recipient, lots, campaign.template, channel)
        previews.append(replace(preview, reachable=reachability(engine, member, channel, campaign.category)))
    return previews


@dataclass(frozen=True)
class SegmentEstimate:
    """Billed segments and cost of one channel's messages in a plan: only the texts that
    would go out; what would not is counted apart, by reason."""

    channel: str
    recipients: int
    """Rows the plan queues on the channel."""
    sampled: int
    sendable: int
    """Estimated messages that would go out (exact when every recipient was sampled)."""
    segments: int
    """Estimated segments of those messages."""
    cost: float
    currency: str
    failing: dict[str, int] = field(default_factory=dict)
    """Estimated rows that would not go out on this channel, by reason."""


def estimate_segments(
    engine: Engine,
    messages: MessageBuilder,
    campaign_name: str,
    channel: str,
    member_ids: list[int],
    recipients: int,
    as_of: datetime,
) -> SegmentEstimate:
    """Render ``channel``'s message for ``member_ids`` (a sample of ``recipients``),
    check each address as its transport would, and extrapolate."""
    settings = messages.settings
    campaign = settings.campaign(campaign_name)
    found = members_by_id(engine, member_ids, campaign_name, as_of)
    lots = lots_by_member(engine, list(found), as_of)
    transports = Transports(settings)
    total, sendable = 0, 0
    failing: Counter[str] = Counter()
    try:
        for member_id, member in found.items():
            preview = render_channel(messages, member.recipient, lots[member_id], campaign.template, channel)
            problem = _would_fail(transports, preview, channel, member.contacts.get(channel) or "")
            if problem:
                failing[problem] += 1
                continue
            sendable += 1
            total += preview.length.segments if preview.length else 0
    finally:
        transports.close()
    sampled = len(member_ids)
    scale = recipients / sampled if sampled else 0
    price = settings.channel(channel).price_per_segment
    segments = round(total * scale)
    return SegmentEstimate(
        channel,
        recipients,
        sampled,
        round(sendable * scale),
        segments,
        round(segments * price, 2),
        settings.program.currency,
        {reason: round(n * scale) for reason, n in failing.most_common()},
    )


def plan_estimates(engine: Engine, messages: MessageBuilder, plan: DryRun, as_of: datetime) -> dict[str, SegmentEstimate]:
    """Segments and cost per channel billed per segment that the plan would send on,
    from its sample of members (``{channel: estimate}``; none for a channel nothing goes to)."""
    estimates = {}
    for channel, sample in plan.samples.items():
        recipients = plan.counts.get("queued", {}).get(channel, 0)
        if recipients:
            estimates[channel] = estimate_segments(engine, messages, plan.campaign, channel, sample, recipients, as_of)
    return estimates


def _would_fail(transports: Transports, preview: ChannelPreview, channel: str, address: str) -> str | None:
    """Why this member's message would not go out on ``channel`` (None: it would)."""
    if preview.nothing_due:
        return "no reminder due (stale)"
    if preview.error is not None:
        return f"template error: {preview.error}"
    if preview.over_budget:
        return "over the segment budget: decided again on the next channel"
    assert preview.rendered is not None
    try:
        transports.check(OutgoingMessage(channel=channel, reference=0, to=address, text=preview.rendered.text))
    except MissingSecret:
        return None  # the transport cannot be built without its secret: its address check is skipped
    except InvalidRecipient as exc:
        return f"invalid address: {exc.detail.split(':')[0]}"
    except PermanentError as exc:
        return f"refused: {exc.detail}"
    return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
