"""What every command shares: the Typer apps, consoles, ``--config``, time parsing
and the printing of reports."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Annotated, Any, Optional
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import inspect as sa_inspect

from campaigns import logs
from campaigns.app import runtime
from campaigns.config.values import parse_duration
from campaigns.errors import LoyalcastError
from campaigns.tools.report import RunReport
from channels.specs import CHANNELS

app = typer.Typer(
    name="loyalcast",
    help=f"Balance and expiring-points reminders over {', '.join(s.label for s in CHANNELS.values())}, within frequency caps.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
demo_app = typer.Typer(help="Demo data for the embedded database.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(demo_app, name="demo")

# Piped output (CI logs, `| less`) is not squeezed into 80 columns.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)
_config_path: str | None = None


@app.callback()
def _main(
    config: Annotated[
        Optional[str],
        typer.Option("--config", "-c", help="Settings file (default: $LOYALCAST_CONFIG, else ./settings.toml)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress to stderr.")] = False,
    log_json: Annotated[bool, typer.Option("--log-json", help="Log one JSON object per line.")] = False,
) -> None:
    global _config_path
    _config_path = config
    logs.configure("json" if log_json else "text", logging.INFO if verbose else logging.WARNING)


def configured_app() -> runtime.App:
    """The application for the settings ``--config`` named (or the default file)."""
    return runtime.configure(_config_path)


def parse_now(value: str | None, program_zone: str) -> datetime:
    """``--now``: an ISO-8601 instant (local to the program's zone when it names no
    offset), or a duration ago such as ``-15d``."""
    if value is None:
        return datetime.now(UTC)
    if value.startswith("-"):  # no ISO-8601 instant starts with one
        try:
            return datetime.now(UTC) - parse_duration(value[1:])
        except ValueError:
            pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"not an ISO-8601 time: {value!r} (e.g. 2026-12-01T10:00+03:00, or -15d for 15 days ago)", param_hint="--now"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ZoneInfo(program_zone))
    return parsed.astimezone(UTC)


def require_schema(application: runtime.App) -> None:
    """Refuse to work on a database without loyalcast's tables, or at an older revision
    than this version's (its SQL reads the newer tables)."""
    from campaigns.store import schema

    if not sa_inspect(application.engine).has_table("deliveries"):
        raise LoyalcastError("the database has no loyalcast tables yet: run `loyalcast db upgrade` first")
    current, head = schema.current_revision(application.engine), schema.HEAD
    if current != head:
        raise LoyalcastError(
            f"the database schema is at revision {current}, this loyalcast needs {head}: run `loyalcast db upgrade`"
        )


suppressions_app = typer.Typer(help="Addresses that must not be contacted.", no_args_is_help=True)
app.add_typer(suppressions_app, name="suppressions")


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def print_report(report: RunReport, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(report.as_json(), ensure_ascii=False))
        return
    channels = sorted({channel for per in report.counts.values() for channel in per})
    table = Table(title=f"{report.campaign} · occasion {report.occasion} · run {report.run_id} ({report.state})")
    table.add_column("status")
    for channel in channels:
        table.add_column(channel, justify="right")
    table.add_column("total", justify="right", style="bold")
    for status in sorted(report.counts, key=status_order):
        per = report.counts[status]
        table.add_row(status, *(str(per.get(c, "")) for c in channels), str(sum(per.values())))
    table.add_row(
        "all", *(str(sum(report.counts[s].get(c, 0) for s in report.counts)) for c in channels), str(report.total), style="bold"
    )
    out.print(table)
    for warning in report.warnings():
        err.print(f"warning: {warning}", markup=False, highlight=False)


def status_order(status: str) -> int:
    from campaigns.store.ledger import Status

    order = [s.value for s in Status]
    return order.index(status) if status in order else len(order)


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else ""


def json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def known_channel(channel: str) -> str:
    from channels.specs import CHANNELS

    if channel not in CHANNELS:
        raise typer.BadParameter(f"unknown channel {channel!r} (known: {', '.join(sorted(CHANNELS))})", param_hint="CHANNEL")
    return channel
