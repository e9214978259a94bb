"""Checks of a parsed settings file that span several keys or look outside the file
(environment variables, templates, transports), and the wording of every problem."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from babel import Locale
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from campaigns.config.links import MIN_KEY_BYTES
from campaigns.config.settings import Settings
from campaigns.config.templates import missing_parts
from campaigns.config.values import format_duration
from channels import TRANSPORTS
from channels.errors import ChannelConfigError, MissingSecret
from channels.specs import channel_spec


def format_key_path(loc: tuple[Any, ...]) -> str:
    """``('campaigns', 'x', 'channels', 1)`` -> ``campaigns.x.channels[1]``."""
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for an invalid key of a table; the path already names it
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = str(part)
    return out or "<root>"


def pydantic_problems(error: ValidationError) -> list[str]:
    """One ``key.path: problem`` line per pydantic error."""
    problems = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        message = item["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            message = message.removeprefix(prefix)
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling)"
        elif item["type"] == "missing":
            message = "required key is missing"
        if loc[:1] == ("channels",) and len(loc) >= 2:
            # A channel section is validated by its transport's model: pydantic puts the
            # union's tag (the transport name) into the path, which the file does not have.
            if item["type"] == "unknown_transport":
                loc = (*loc, "transport")
                message = f"{message} (got {transport_name(item['input'])!r})"
            elif len(loc) >= 3 and loc[2] in TRANSPORTS:
                loc = loc[:2] + loc[3:]
        problems.append(f"{format_key_path(loc)}: {message}")
    return problems


def transport_name(section: Any) -> str:
    return str(section.get("transport")) if isinstance(section, dict) else repr(section)


def semantic_problems(settings: Settings) -> tuple[list[str], list[str]]:
    """Checks that span several keys or look outside the file (env, templates): the
    problems, and apart from them the provider secrets missing from the environment
    (only commands that contact providers need those)."""
    problems: list[str] = []
    for key, env_name, value in (
        ("database", settings.database.url_env, settings.database.url),
        ("broker", settings.broker.url_env, settings.broker.url),
    ):
        if env_name and not os.environ.get(env_name) and not value:
            problems.append(f"{key}.url_env: environment variable {env_name} is not set")
        if not env_name and not value:
            problems.append(f"{key}.url: give url, or url_env naming an environment variable")
    if settings.database.url and _has_password(settings.database.url):
        problems.append("database.url: contains a password; put the URL in an environment variable named by database.url_env")
    db_url = settings.database_url
    if db_url and not (db_url.startswith("sqlite") or db_url.startswith("postgresql")):
        problems.append(
            f"database.url: unsupported database {db_url.split(':', 1)[0]!r} (use sqlite:/// or postgresql+psycopg://)"
        )
    broker_url = settings.broker_url
    if not (broker_url == "memory://" or broker_url.startswith(("redis://", "rediss://", "unix://"))):
        problems.append(f"broker.url: unsupported broker {broker_url!r} (use memory:// or redis://)")

    program = settings.program
    if program.default_locale not in program.locales:
        problems.append(f"program.default_locale: {program.default_locale!r} is not in program.locales")
    for locale_name in program.locales:
        words = program.points_word.get(locale_name)
        if words is None:
            problems.append(f"program.points_word.{locale_name}: missing (word forms of 'point' for this locale)")
            continue
        for category in sorted(Locale.parse(locale_name).plural_form.tags):
            if getattr(words, category, None) is None:
                problems.append(f"program.points_word.{locale_name}.{category}: missing ({locale_name} needs this plural form)")

    web = settings.web
    for where, env_name in (("web.key_env", web.key_env), ("web.previous_key_env", web.previous_key_env)):
        secret_value = os.environ.get(env_name, "").encode() if env_name else b""
        if secret_value and len(secret_value) < MIN_KEY_BYTES:
            problems.append(f"{where}: {env_name} holds {len(secret_value)} bytes; a link key needs at least {MIN_KEY_BYTES}")

    seen_rules: dict[tuple[str, str, str, str], int] = {}
    for index, rule in enumerate(settings.caps):
        for key, problem in rule.window_problems():
            problems.append(f"caps[{index}].{key}: {problem}")
        for tier in rule.tiers or [""]:
            scope = (rule.channel, rule.category, rule.window, tier)
            if scope in seen_rules:
                who = f" for tier {tier!r}" if tier else ""
                problems.append(
                    f"caps[{index}]: contradicts caps[{seen_rules[scope]}] (two {rule.window} rules for "
                    f"{rule.channel}/{rule.category}{who})"
                )
            seen_rules.setdefault(scope, index)
    for name, windows in settings.quiet_hours.windows().items():
        if windows is not None and windows[0] == windows[1]:
            problems.append(f'quiet_hours.{name}: start and end are equal (use "off" for no quiet hours)')

    for name, segment in settings.segments.items():
        if segment.min_balance is not None and segment.max_balance is not None and segment.min_balance > segment.max_balance:
            problems.append(f"segments.{name}.max_balance: smaller than min_balance")
        if segment.min_expiring_points is not None and segment.expiring_within_days is None:
            problems.append(f"segments.{name}.min_expiring_points: needs expiring_within_days")
        if (
            segment.min_days_since_purchase is not None
            and segment.max_days_since_purchase is not None
            and segment.min_days_since_purchase > segment.max_days_since_purchase
        ):
            problems.append(f"segments.{name}.max_days_since_purchase: smaller than min_days_since_purchase")

    transport_problems, missing_secrets = _transport_problems(settings)
    if not os.environ.get(web.key_env) and not web.key_file:
        missing_secrets.append(
            f"web.key_env: environment variable {web.key_env} is not set (a key of at least {MIN_KEY_BYTES} bytes "
            "signs members' links; make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    problems += transport_problems
    problems += _lease_problems(settings)
    problems += _retention_problems(settings)

    templates = settings.templates_path
    if not templates.is_dir():
        problems.append(f"templates_dir: folder {str(templates)!r} does not exist")
    # Without the folder, or with a default locale the program does not have, every
    # template would look incomplete: the one line above says what to fix.
    look_inside = templates.is_dir() and program.default_locale in program.locales
    for name, campaign in settings.campaigns.items():
        prefix = f"campaigns.{name}"
        for index, channel in enumerate(campaign.channels):
            if channel in campaign.channels[:index]:
                problems.append(f"{prefix}.channels[{index}]: {channel!r} is listed twice")
        if campaign.kind == "expiring_ladder" and not campaign.stages:
            problems.append(f"{prefix}.stages: required for an expiring_ladder campaign (e.g. [30, 7, 1])")
        if campaign.kind == "standard" and campaign.stages is not None:
            problems.append(f'{prefix}.stages: means nothing without kind = "expiring_ladder"')
        template_dir = templates / campaign.template
        if campaign.fallback is not None:
            fallback, where = campaign.fallback, f"{prefix}.fallback"
            if fallback.on not in campaign.channels:
                problems.append(
                    f"{where}.on: {fallback.on!r} is not one of the campaign's channels ({', '.join(campaign.channels)})"
                )
            if fallback.to == fallback.on:
                problems.append(f"{where}.to: falls back to the channel it falls back from")
            for group in missing_parts(template_dir, channel_spec(fallback.to), program.default_locale) if look_inside else []:
                problems.append(
                    f"{where}.to: template {campaign.template!r} has no {' or '.join(group)} for channel {fallback.to!r}"
                )
        for index, channel in enumerate(campaign.channels if look_inside else []):
            for group in missing_parts(template_dir, channel_spec(channel), program.default_locale):
                problems.append(
                    f"{prefix}.channels[{index}]: template {campaign.template!r} has no {' or '.join(group)} "
                    f"for channel {channel!r}"
                )
    return problems, missing_secrets


def _transport_problems(settings: Settings) -> tuple[list[str], list[str]]:
    """Build every configured transport once (no network), so a missing host or field
    fails at start-up with its key, not at the first send. Missing secrets come back
    apart: ``(problems, missing secrets)``."""
    problems, missing = [], []
    for channel in settings.channels:
        try:
            transport = settings.transport(channel)
        except MissingSecret as exc:
            missing.append(f"{exc.key}: {exc.problem}")
            continue
        except ChannelConfigError as exc:
            problems.append(f"{exc.key}: {exc.problem}")
            continue
        transport.close()
    return problems, missing


def _lease_problems(settings: Settings) -> list[str]:
    """A claim must outlast the slowest provider call, and a batch its claims."""
    delivery = settings.delivery
    slowest = settings.slowest_timeout
    problems = []
    if delivery.lease < 2 * slowest:
        problems.append(
            f"delivery.lease: {_seconds(delivery.lease)} is shorter than twice the slowest channel timeout "
            f"({_seconds(slowest)}); a call in flight would lose its claim"
        )
    if delivery.batch_time_limit <= delivery.lease:
        problems.append(f"delivery.batch_time_limit: must be longer than delivery.lease ({_seconds(delivery.lease)})")
    if delivery.max_backoff < delivery.min_backoff:
        problems.append(f"delivery.max_backoff: shorter than delivery.min_backoff ({_seconds(delivery.min_backoff)})")
    return problems


def _retention_problems(settings: Settings) -> list[str]:
    """The ledger may forget a decision only once no cap window, waiting message or report needs it."""
    ledger = settings.ledger
    needed = settings.longest_cap_window + settings.hold_slack + ledger.reporting_horizon
    if ledger.retention >= needed:
        return []
    return [
        f"ledger.retention: {format_duration(ledger.retention)} is shorter than the longest cap window "
        f"({format_duration(settings.longest_cap_window)}), the longest a decided message may wait "
        f"({format_duration(settings.hold_slack)}) and ledger.reporting_horizon "
        f"({format_duration(ledger.reporting_horizon)}) together: at least {format_duration(needed)}"
    ]


def _seconds(value: timedelta) -> str:
    return f"{value.total_seconds():g} s"


def _has_password(url: str) -> bool:
    try:
        return make_url(url).password is not None
    except ArgumentError:
        return False
