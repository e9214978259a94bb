"""Commands that read and amend the ledger: report, why, suppressions, ledger prune|months."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from sqlalchemy import select

from campaigns.app.cli.common import (
    app,
    configured_app,
    json_default,
    known_channel,
    out,
    print_report,
    require_schema,
    suppressions_app,
    when,
)
from campaigns.config.values import format_duration
from campaigns.errors import LoyalcastError
from campaigns.planning.cascade import KEY_PREFIX
from campaigns.store.models import deliveries
from campaigns.tools.report import latest_run_id, member_choices_and_links, member_history, run_report
from channels.specs import CHANNELS


@app.command("report")
def report_command(
    run_id: Annotated[Optional[int], typer.Option("--run", help="Run id (default: the latest run).")] = None,
    campaign: Annotated[Optional[str], typer.Option(help="Latest run of this campaign.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: run_id, campaign, counts {status: {channel: n}}.")] = False,
) -> None:
    """Counts per status and channel of a campaign run."""
    application = configured_app()
    require_schema(application)
    if run_id is None:
        run_id = latest_run_id(application.engine, campaign)
        if run_id is None:
            raise LoyalcastError("no campaign has run yet")
    report = run_report(application.engine, run_id, application.settings.reconciler.overdue)
    if report is None:
        raise LoyalcastError(f"no run {run_id}")
    print_report(report, as_json)


@app.command("why")
def why(
    member_id: Annotated[int, typer.Argument(help="Member id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every decision loyalcast made about one member, with its reason."""
    application = configured_app()
    require_schema(application)
    rows = member_history(application.engine, member_id)
    chosen = member_choices_and_links(application.engine, member_id)
    if as_json:
        document = {"member_id": member_id, "deliveries": rows, **chosen}
        out.print_json(json.dumps(document, default=json_default, ensure_ascii=False))
        return
    for choice in chosen["preferences"]:
        out.print(f"member {member_id}: {choice['text']}")
    for link in chosen["linked"]:
        consent = "with consent" if link["consent"] else "consent withdrawn"
        out.print(f"member {member_id}: {link['channel']} {link['address']} linked {when(link['linked_at'])} ({consent})")
    if not rows:
        out.print(f"member {member_id}: no campaign has considered this member yet")
        return
    fallbacks = fallbacks_of(application.engine, member_id)
    table = Table(title=f"member {member_id}")
    for column in ("campaign", "occasion", "channel", "status", "reason", "lifecycle"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["campaign"] or f"{row['template']} (triggered)",
            row["occasion"] or "",
            row["channel"] or "-",
            row["status"],
            row["reason"]
            + "".join(f"\nreminds of points expiring {m['expires_on']}: the {m['stage']}-day reminder" for m in row["reminds"]),
            lifecycle(row) + fallbacks.get(row["id"], ""),
        )
    out.print(table)


def fallbacks_of(engine: Any, member_id: int) -> dict[int, str]:
    """For each of the member's rows that fell back, the lifecycle line naming its fallback."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(deliveries.c.id, deliveries.c.channel, deliveries.c.status, deliveries.c.idempotency_key).where(
                deliveries.c.member_id == member_id, deliveries.c.idempotency_key.startswith(KEY_PREFIX)
            )
        ).all()
    lines = {}
    for row in rows:
        first = row.idempotency_key[len(KEY_PREFIX) :]
        if first.isdigit():
            lines[int(first)] = f"\nfell back to {row.channel or 'no channel'}: delivery {row.id} ({row.status})"
    return lines


def lifecycle(row: dict[str, Any]) -> str:
    """A ledger row's way from decision to outcome, one step per line."""
    steps = [f"decided {when(row['created_at'])}"]
    if row["channel"] is not None and row["status"] not in (
        "held_out",
        "capped",
        "no_consent",
        "no_contact",
        "suppressed",
        "unsubscribed",
    ):
        steps.append(f"due {when(row['send_at'])}")
    if row["claimed_at"] is not None:
        owner = str(row["lease_owner"] or "?").rsplit("/", 1)[0]  # host/pid/thread, without the claim token
        steps.append(f"claimed {when(row['claimed_at'])} by {owner}")
    if row["attempts"]:
        calls = f"{row['attempts']} provider call{'s' if row['attempts'] != 1 else ''}"
        steps.append(calls + (f", last error: {row['last_error']}" if row["last_error"] else ""))
    if row["sent_at"] is not None:
        steps.append(f"accepted by the provider {when(row['sent_at'])}")
    for event in row.get("events", []):
        steps.append(
            f"{event['event'] or 'reported'} {when(event['received_at'])}" + (f": {event['reason']}" if event["reason"] else "")
        )
    return "\n".join(steps)


@suppressions_app.command("list")
def suppressions_list(
    channel: Annotated[Optional[str], typer.Option(help="Only this channel.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List suppressed addresses with their reasons."""
    from campaigns.store.models import suppressions

    application = configured_app()
    require_schema(application)
    query = select(suppressions).order_by(suppressions.c.channel, suppressions.c.address)
    if channel:
        query = query.where(suppressions.c.channel == channel)
    with application.engine.connect() as conn:
        rows = [dict(row._mapping) for row in conn.execute(query)]
    if as_json:
        out.print_json(json.dumps(rows, default=json_default, ensure_ascii=False))
        return
    table = Table(title=f"suppressions ({len(rows)})")
    for column in ("channel", "address", "reason", "since"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["channel"], row["address"], row["reason"], when(row["created_at"]))
    out.print(table)


@suppressions_app.command("add")
def suppressions_add(
    channel: Annotated[str, typer.Argument(help=f"One of {', '.join(CHANNELS)}.")],
    address: Annotated[str, typer.Argument(help="The address as the channel writes it (as in the members table).")],
    reason: Annotated[str, typer.Option(help="Why (kept with the entry).")] = "added by hand",
) -> None:
    """Never contact this address on this channel again (e.g. after a complaint)."""
    from campaigns.store.ledger import add_suppressions

    application = configured_app()
    require_schema(application)
    channel = known_channel(channel)
    with application.engine.begin() as conn:
        add_suppressions(conn, [{"channel": channel, "address": address, "reason": reason}], datetime.now(UTC))
    out.print(f"suppressed {channel} {address}", markup=False, highlight=False)


@suppressions_app.command("remove")
def suppressions_remove(
    channel: Annotated[str, typer.Argument(help=f"One of {', '.join(CHANNELS)}.")],
    address: Annotated[str, typer.Argument(help="The suppressed address.")],
) -> None:
    """Allow this address again (the member consented anew, the number was fixed)."""
    from sqlalchemy import delete

    from campaigns.store.models import suppressions

    application = configured_app()
    require_schema(application)
    channel = known_channel(channel)
    with application.engine.begin() as conn:
        removed = conn.execute(
            delete(suppressions).where(suppressions.c.channel == channel, suppressions.c.address == address)
        ).rowcount
    if not removed:
        raise LoyalcastError(f"{channel} {address} is not suppressed")
    out.print(f"removed {channel} {address}", markup=False, highlight=False)


ledger_app = typer.Typer(help="The ledger's months and its retention ([ledger] retention).", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")


@ledger_app.command("prune")
def ledger_prune(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be removed.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Remove what is older than [ledger] retention: whole months on PostgreSQL (dropped,
    or detached with [ledger] archive), rows on SQLite; the scheduler does it once a day."""
    from campaigns.store import retention

    application = configured_app()
    require_schema(application)
    expired = retention.enforce(application.engine, application.settings, dry_run=dry_run)
    if as_json:
        out.print_json(json.dumps(dataclasses.asdict(expired), default=json_default))
        return
    verb = "would remove" if dry_run else "removed"
    out.print(f"retention {format_duration(application.settings.ledger.retention)}, cutoff {when(expired.cutoff)}: ", end="")
    out.print(f"{verb} {expired.describe()}" if dry_run else expired.describe(), markup=False, highlight=False)


@ledger_app.command("months")
def ledger_months(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The ledger's monthly partitions (PostgreSQL): rows (as the statistics estimate them) and size on disk."""
    from campaigns.store import retention

    application = configured_app()
    require_schema(application)
    sizes = retention.month_sizes(application.engine)
    if as_json:
        out.print_json(json.dumps(sizes))
        return
    table = Table("partition", "month", "rows", "size")
    for item in sizes:
        size = item["bytes"]
        table.add_row(
            str(item["partition"]),
            str(item["month"] or "-"),
            f"{item['rows']:,}",
            "-" if not isinstance(size, int) else f"{size / 2**20:,.1f} MB",
        )
    out.print(table)
