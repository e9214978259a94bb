"""``loyalcast check``: render every template for every locale and channel before a
campaign does it at 3 a.m.

Sample members: for each locale, a real member from the database when it has one (the
one with the longest name, the same member on SQLite and PostgreSQL), and always two
synthetic ones: a worst case (a long name, a six-digit balance, three expiry dates),
because a segment budget is broken by the longest text, not the typical one; and a
member with no name, no tier and a negative balance, because source columns may be NULL.

Findings are plain lines naming the template file (and line, for template errors).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import Engine, func, select

from campaigns.config.settings import Settings
from campaigns.config.templates import template_channels
from campaigns.delivery.message import Lots, MessageBuilder
from campaigns.delivery.rows import Recipient
from campaigns.planning.segments import segment_query
from campaigns.store.models import balances, members
from campaigns.tools.preview import member_lots, render_channel
from channels.specs import channel_spec

SYNTHETIC_NAMES = {"ru": "Александра-Виктория", "en": "Alexandra-Victoria"}


@dataclass(frozen=True)
class Finding:
    kind: str
    """``error``, ``missing_locale``, or ``<channel>_budget`` (a text over the
    campaign's segment budget)."""
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def template_names(settings: Settings) -> list[str]:
    root = settings.templates_path
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def sample_recipients(
    engine: Engine, settings: Settings, locale: str, as_of: datetime, campaign: str | None
) -> list[tuple[Recipient, Lots | None]]:
    """``(recipient, lots)`` pairs to render for ``locale``: a real member if any (from
    the campaign's segment when there is a campaign), and a synthetic one. The real
    member's lots are None (``check`` loads them)."""
    program = settings.program
    samples: list[tuple[Recipient, Lots | None]] = []
    if campaign is not None:
        segment = settings.segments[settings.campaign(campaign).segment]
        source = segment_query(segment, as_of=as_of, default_locale=program.default_locale).subquery()
        query = select(source).where(func.coalesce(source.c.locale, program.default_locale) == locale)
        # NULLS LAST: PostgreSQL sorts NULL first in a descending order, SQLite last.
        longest = func.length(source.c.first_name).desc().nulls_last()
        order = (longest, source.c.id)
    else:
        query = (
            select(members, func.coalesce(balances.c.points, 0).label("balance"))
            .select_from(members.outerjoin(balances, balances.c.member_id == members.c.id))
            .where(func.coalesce(members.c.locale, program.default_locale) == locale)
        )
        order = (func.length(members.c.first_name).desc().nulls_last(), members.c.id)
    with engine.connect() as conn:
        found = conn.execute(query.order_by(*order).limit(1)).first()
    if found is not None:
        real = Recipient.from_row(found, member_id=found.id, campaign=campaign, occasion="check", as_of=as_of)
        samples.append((replace(real, locale=locale), None))
    synthetic = Recipient(
        member_id=0,
        first_name=SYNTHETIC_NAMES.get(locale, "Alexandra-Victoria"),
        locale=locale,
        timezone=program.timezone,
        tier="gold",
        balance=123_456.5,
        campaign=campaign,
        occasion="check",
        as_of=as_of,
    )
    lots: Lots = [(as_of + timedelta(days=d), points) for d, points in ((3, 1_250), (17, 12_345), (29, 101))]
    samples.append((synthetic, lots))
    nameless = replace(synthetic, member_id=-1, first_name=None, tier=None, balance=-500.0)
    samples.append((nameless, lots))
    return samples


def check_templates(engine: Engine, messages: MessageBuilder, as_of: datetime) -> list[Finding]:
    """Every problem found rendering every template, locale and channel."""
    settings = messages.settings
    root = settings.templates_path
    program = settings.program
    findings: list[Finding] = []
    users: dict[str, list[str]] = {}
    for campaign_name, campaign in settings.campaigns.items():
        users.setdefault(campaign.template, []).append(campaign_name)
    for name in template_names(settings):
        channels = template_channels(root, name, program.locales)
        for locale in program.locales:
            for channel in channels:
                for part in channel_spec(channel).parts:
                    localized = root / name / locale / part
                    fallback = root / name / program.default_locale / part
                    if locale != program.default_locale and not localized.is_file() and fallback.is_file():
                        findings.append(
                            Finding(
                                "missing_locale",
                                f"{name}/{locale}/{part}",
                                f"missing; {locale} members get {name}/{program.default_locale}/{part}",
                            )
                        )
            using: list[str | None] = list(users.get(name, [])) or [None]
            for user in using:
                for recipient, lots in sample_recipients(engine, settings, locale, as_of, user):
                    if lots is None:
                        lots = member_lots(engine, recipient.member_id, as_of)
                    findings += _render_findings(messages, recipient, lots, name, channels, locale)
    return _unique(findings)


def _render_findings(
    messages: MessageBuilder, recipient: Recipient, lots: Lots, name: str, channels: list[str], locale: str
) -> list[Finding]:
    root = messages.settings.templates_path
    who = {0: "synthetic member", -1: "synthetic member without a name"}.get(recipient.member_id, f"member {recipient.member_id}")
    findings = []
    for channel in channels:
        preview = render_channel(messages, recipient, lots, name, channel)
        if preview.nothing_due:
            continue  # a real member with nothing due; the synthetic one covers the template
        if preview.error:
            where = preview.error.file or name
            if preview.error.line:
                where += f":{preview.error.line}"
            findings.append(Finding("error", where, f"{preview.error.message} ({locale}, {who})"))
        elif preview.over_budget:
            part = channel_spec(channel).parts[0]
            localized = root / name / locale / part
            where = f"{name}/{locale}/{part}" if localized.is_file() else f"{name}/{part}"
            findings.append(
                Finding(f"{channel}_budget", where, f"{preview.over_budget} ({recipient.campaign or 'no campaign'}, {who})")
            )
    return findings


def _unique(findings: list[Finding]) -> list[Finding]:
    seen, out = set(), []
    for finding in findings:
        key = (finding.kind, finding.where, finding.message)
        if key not in seen:
            seen.add(key)
            out.append(finding)
    return out
