"""``loyalcast check``: render every template for every locale and channel before a
campaign does it at 3 a.m.

Sample members: for each locale, a real member from the database when it has one, and
always a synthetic worst case (a long name, a six-digit balance, three expiry dates),
because the SMS budget is broken by the longest text, not the typical one.

Findings are plain lines naming the template file (and line, for template errors).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import func, select

from campaigns.delivery.deliverer import Deliverer
from campaigns.store.models import balances, members
from campaigns.tools.preview import member_lots, render_channel
from campaigns.delivery.rendering import CHANNEL_PARTS, template_channels
from campaigns.planning.segments import segment_query
from campaigns.config.settings import Settings

SYNTHETIC_NAMES = {"ru": "Александра-Виктория", "en": "Alexandra-Victoria"}


@dataclass(frozen=True)
class Finding:
    kind: str
    """``error``, ``sms_budget`` or ``missing_locale``."""
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def template_names(settings: Settings) -> list[str]:
    root = settings.templates_path
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def sample_rows(
    deliverer: Deliverer, settings: Settings, locale: str, as_of: datetime, campaign: str | None
) -> list[tuple[Any, list | None]]:
    """``(row, lots)`` pairs to render for ``locale``: a real member if any (from the
    campaign's segment when there is a campaign), and a synthetic one."""
    program = settings.program
    samples: list[tuple[Any, list | None]] = []
    if campaign is not None:
        segment = settings.segments[settings.campaigns[campaign].segment]
        source = segment_query(segment, as_of=as_of, default_locale=program.default_locale).subquery()
        query = select(source).where(func.coalesce(source.c.locale, program.default_locale) == locale)
        longest = func.length(source.c.first_name).desc()
        order = (longest, source.c.id)
    else:
        query = (
            select(members, func.coalesce(balances.c.points, 0).label("balance"))
            .select_from(members.outerjoin(balances, balances.c.member_id == members.c.id))
            .where(func.coalesce(members.c.locale, program.default_locale) == locale)
        )
        order = (func.length(members.c.first_name).desc(), members.c.id)
    with deliverer.engine.connect() as conn:
        found = conn.execute(query.order_by(*order).limit(1)).first()
    if found is not None:
        data = dict(found._mapping)
        data.update(member_id=data["id"], locale=locale, as_of=as_of, occasion="check")
        samples.append((SimpleNamespace(**data), None))
    synthetic = SimpleNamespace(
        member_id=0, id=0, first_name=SYNTHETIC_NAMES.get(locale, "Alexandra-Victoria"), locale=locale,
        timezone=program.timezone, tier="gold", balance=123_456.5, as_of=as_of, occasion="check",
    )
    lots = [(as_of + timedelta(days=d), points) for d, points in ((3, 1_250), (17, 12_345), (29, 101))]
    samples.append((synthetic, lots))
    return samples


def check_templates(deliverer: Deliverer, settings: Settings, as_of: datetime) -> list[Finding]:
    """Every problem found rendering every template, locale and channel."""
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
                for part in CHANNEL_PARTS[channel]:
                    localized = root / name / locale / part
                    fallback = root / name / program.default_locale / part
                    if locale != program.default_locale and not localized.is_file() and fallback.is_file():
                        findings.append(Finding("missing_locale", f"{name}/{locale}/{part}",
                                                f"missing; {locale} members get {name}/{program.default_locale}/{part}"))
            for campaign_name in users.get(name) or [None]:
                for row, lots in sample_rows(deliverer, settings, locale, as_of, campaign_name):
                    row.campaign = campaign_name
                    if lots is None:
                        lots = member_lots(deliverer, row.member_id, as_of)
                    findings += _render_findings(deliverer, row, lots, name, channels, locale)
    return _unique(findings)


def _render_findings(deliverer: Deliverer, row: Any, lots: list, name: str, channels: list[str], locale: str) -> list[Finding]:
    root = deliverer.settings.templates_path
    who = f"member {row.member_id}" if row.member_id else "synthetic member"
    findings = []
    for channel in channels:
        preview = render_channel(deliverer, row, lots, name, channel)
        if preview.error and preview.error.startswith("no reminder of"):
            continue  # a real member with nothing due; the synthetic one covers the template
        if preview.error:
            where, _, message = preview.error.partition(": ")
            findings.append(Finding("error", where, f"{message} ({locale}, {who})"))
        elif preview.over_budget:
            localized = root / name / locale / "sms.txt"
            where = f"{name}/{locale}/sms.txt" if localized.is_file() else f"{name}/sms.txt"
            findings.append(Finding("sms_budget", where, f"{preview.over_budget} ({row.campaign or 'no campaign'}, {who})"))
    return findings


def _unique(findings: list[Finding]) -> list[Finding]:
    seen, out = set(), []
    for finding in findings:
        key = (finding.kind, finding.where, finding.message)
        if key not in seen:
            seen.add(key)
            out.append(finding)
    return out
