"""Commands that measure what campaigns did: ``lift`` and ``control``."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from typing import Annotated, Optional

import typer
from rich.table import Table

from campaigns.app.cli.common import app, configured_app, out, parse_now, require_schema
from campaigns.config.values import format_duration, parse_duration
from campaigns.errors import LoyalcastError
from campaigns.planning import control
from campaigns.tools.lift import WINDOW, Lift, campaign_lift, global_lift


def _window(value: str) -> timedelta:
    try:
        window = parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--window") from None
    if window <= timedelta(0):
        raise typer.BadParameter("must be longer than zero, e.g. 14d", param_hint="--window")
    return window


@app.command("lift")
def lift(
    campaign: Annotated[Optional[str], typer.Argument(help="Campaign name (omit with --global).")] = None,
    occasion: Annotated[Optional[str], typer.Option(help="One occasion (default: every occasion, together).")] = None,
    window: Annotated[str, typer.Option(help="How long after each occasion behaviour counts, e.g. 14d.")] = format_duration(
        WINDOW
    ),
    global_group: Annotated[
        bool, typer.Option("--global", help="All marketing against the global control group ([control]).")
    ] = False,
    now: Annotated[Optional[str], typer.Option(help="Measure as of this ISO-8601 instant (default: now).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Did it work? Members targeted against members held out: redemption, breakage,
    purchases after the occasion, each difference with its 95% confidence interval."""
    application = configured_app()
    require_schema(application)
    at = parse_now(now, application.settings.program.timezone)
    if global_group:
        result = global_lift(application.engine, application.settings, now=at)
    elif campaign is None:
        raise LoyalcastError("name a campaign, or pass --global for the global control group")
    else:
        result = campaign_lift(
            application.engine, application.settings, campaign, occasion=occasion, window=_window(window), now=at
        )
    if as_json:
        out.print_json(json.dumps(result.as_json(), ensure_ascii=False))
        return
    print_lift(result)


def print_lift(result: Lift) -> None:
    over = ", ".join(result.occasions) if len(result.occasions) <= 3 else f"{len(result.occasions)} occasions"
    out.print(
        f"{result.subject} ({over}), {format_duration(result.window)} after each: "
        f"{result.targeted:,} targeted ({result.messaged:,} messaged), {result.held_out:,} held out"
    )
    if result.open_until:
        out.print(f"the window is still open: measured up to now, complete {result.open_until:%Y-%m-%d %H:%M} UTC")
    if result.metrics:
        table = Table()
        for column in ("measure", "targeted", "held out", "difference", "95% CI", "p"):
            table.add_column(column, justify="left" if column == "measure" else "right")
        for metric in result.metrics:
            table.add_row(
                metric.label,
                metric.level(metric.targeted),
                metric.level(metric.held_out),
                metric.signed(metric.difference) + (" *" if metric.significant else ""),
                f"{metric.signed(metric.low)} .. {metric.signed(metric.high)}",
                metric.p_text,
            )
        out.print(table)
        out.print("* the 95% confidence interval excludes zero")
    if result.note:
        out.print(result.note)


@app.command("control")
def control_report(
    now: Annotated[Optional[str], typer.Option(help="The period containing this ISO-8601 instant (default: now).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The global control group of a period: its size and share per stratum."""
    application = configured_app()
    require_schema(application)
    settings = application.settings
    at = parse_now(now, settings.program.timezone)
    with application.engine.connect() as conn:
        report = control.group_report(conn, settings, at)
    if report is None:
        raise LoyalcastError("the global control group is off: set [control] share (e.g. 0.05) in the settings")
    draw, period, strata, turnover = report.draw, report.period, report.strata, report.turnover
    if as_json:
        document = {
            "period": period.label,
            "starts": period.start.isoformat(),
            "ends": period.end.isoformat(),
            "share": settings.control.share,
            "strata": [{"stratum": s.stratum, "members": s.members, "held": s.held} for s in strata],
            "previous": {"period": turnover.period, "held": turnover.held, "still_held": turnover.still_held},
        }
        out.print_json(json.dumps(document, ensure_ascii=False))
        return
    out.print(f"{draw.label}: {period.start:%Y-%m-%d} to {period.end:%Y-%m-%d} (UTC)")
    table = Table()
    for column in ("stratum", "members drawn", "held out", "share"):
        table.add_column(column, justify="left" if column == "stratum" else "right")
    for s in strata:
        table.add_row(s.stratum, f"{s.members:,}", f"{s.held:,}", f"{s.share:.1%}")
    out.print(table)
    if not strata:
        out.print("no member drawn yet: the group is drawn as marketing campaigns plan this period")
    if turnover.held:
        out.print(
            f"turnover: of the {turnover.held:,} members held out in {turnover.period}, "
            f"{turnover.still_held:,} are held out again ({turnover.still_held / turnover.held:.0%})"
        )
    out.print("its effect: loyalcast lift --global")


console_app = typer.Typer(help="The marketers' console of loyalcast web.", no_args_is_help=True)
app.add_typer(console_app, name="console")


@console_app.command("passwd")
def console_passwd(
    name: Annotated[str, typer.Argument(help="The operator's name (letters, digits, _ . @ -).")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input instead of asking.")
    ] = False,
) -> None:
    """Print an operator's entry for the console (`name:scrypt$...`): add it to the
    environment variable [web] console_users_env names (LOYALCAST_CONSOLE_USERS)."""
    from campaigns.web.console.auth import hash_password, parse_operators

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(password) < 10:
        raise LoyalcastError("the password is too short: use at least 10 characters")
    entry = f"{name}:{hash_password(password)}"
    try:
        parse_operators(entry, "the entry")
    except ValueError:
        raise LoyalcastError(f"{name!r} cannot be an operator's name: use 1 to 64 letters, digits, _ . @ or -") from None
    print(entry)
