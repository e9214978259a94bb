"""The ``loyalcast`` command line.

Exit codes: 0 success; 1 a command failed (unknown campaign, unknown run, failed
delivery run); 2 the settings are invalid (one line per problem on stderr, no traceback).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Optional
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import inspect as sa_inspect, select

from campaigns import logs

from campaigns.app import runtime
from campaigns.errors import ConfigError, LoyalcastError
from campaigns.tools.report import RunReport, due_in_flight, latest_run_id, member_history, run_report

app = typer.Typer(
    name="loyalcast",
    help="Balance and expiring-points reminders over email, SMS and Telegram, within frequency caps.",
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


def _app() -> runtime.App:
    return runtime.configure(_config_path)


def _parse_now(value: str | None, program_zone: str) -> datetime:
    if value is None:
        return datetime.now(timezone.utc)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"not an ISO-8601 time: {value!r} (e.g. 2026-12-01T10:00+03:00)", param_hint="--now")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ZoneInfo(program_zone))
    return parsed.astimezone(timezone.utc)


def _require_schema(application: runtime.App) -> None:
    if not sa_inspect(application.engine).has_table("deliveries"):
        raise LoyalcastError("the database has no loyalcast tables yet: run `loyalcast db upgrade` first")


# --- db -------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate loyalcast's tables (and the program's, where absent)."""
    from campaigns.store import schema

    application = _app()
    schema.upgrade(application.engine)
    out.print(f"database at revision {schema.current_revision(application.engine)}")


# --- demo -----------------------------------------------------------------------------


@demo_app.command("seed")
def demo_seed(
    members: Annotated[int, typer.Option("--members", "-n", min=1, help="How many members to create.")] = 500,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same members.")] = 42,
    force: Annotated[bool, typer.Option("--force", help="Replace existing members.")] = False,
) -> None:
    """Fill the program's tables with deterministic demo members."""
    from campaigns.tools import demo

    application = _app()
    _require_schema(application)
    result = demo.seed(application.engine, members, seed_value=seed, force=force)
    if result.skipped:
        out.print(f"the database already has {result.members} members; nothing seeded (use --force to replace)")
        return
    out.print(
        f"seeded {result.members} members, {result.expirations} expiring point lots, "
        f"{result.segment_rows} segment memberships, {result.suppressions} suppressed addresses"
    )


# --- run ------------------------------------------------------------------------------


@app.command("run")
def run(
    campaign: Annotated[str, typer.Argument(help="Campaign name from settings.toml.")],
    now: Annotated[Optional[str], typer.Option(help="Evaluate as of this ISO-8601 instant (backfills, trials).")] = None,
    occasion: Annotated[Optional[str], typer.Option(help="Occasion key (default: program-local date).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="With Redis: follow progress until delivered.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Plan and deliver one occasion of a campaign."""
    from campaigns.planning.batches import waiting
    from campaigns.store.runs import claim_run

    application = _app()
    _require_schema(application)
    as_of = _parse_now(now, application.settings.program.timezone)
    claimed = claim_run(application.engine, application.settings, campaign, as_of=as_of, occasion=occasion, started_by="cli")
    if not claimed.created:
        err.print(f"occasion {claimed.occasion!r} of {campaign} was started before (run {claimed.id}): nothing new is decided")

    from campaigns.app import actors

    broker = actors.use_broker(runtime.build_broker(application.settings))
    actors.plan_campaign.send(claimed.id, as_of.isoformat())
    if application.in_memory:
        runtime.drain_in_process(broker, threads=application.settings.delivery.memory_worker_threads)
        later, first = waiting(application.engine, claimed.id, as_of)
        if later:
            err.print(f"{later} deliveries are due later (quiet hours, send_at_local or deferred by a cap), "
                      f"the first at {_when(first)}; they wait in the ledger: run this occasion again after that, "
                      f"or use a Redis broker with `loyalcast worker`")
    elif wait:
        _follow(application, claimed.id, as_of)
    else:
        err.print(f"run {claimed.id} enqueued on {application.settings.broker_url.split('@')[-1]}; "
                  f"follow it with `loyalcast report --run {claimed.id}`")
    report = run_report(application.engine, claimed.id)
    assert report is not None
    _print_report(report, as_json)


@app.command("plan")
def plan(
    campaign: Annotated[str, typer.Argument(help="Campaign name from settings.toml.")],
    now: Annotated[Optional[str], typer.Option(help="Evaluate as of this ISO-8601 instant.")] = None,
    occasion: Annotated[Optional[str], typer.Option(help="Occasion key (default: program-local date).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show what `run` would decide now, per decision and channel, without reserving anything."""
    from campaigns.planning.dry_run import dry_run

    application = _app()
    _require_schema(application)
    as_of = _parse_now(now, application.settings.program.timezone)
    result = dry_run(application.engine, application.settings, campaign, as_of=as_of, occasion=occasion)
    sms = None
    recipients = sum(n for status, per in result.counts.items() if status == "queued" for ch, n in per.items() if ch == "sms")
    if recipients:
        from campaigns.tools.preview import estimate_sms

        sms = estimate_sms(application.deliverer, application.settings, campaign, result.sms_sample, recipients, as_of)
    if as_json:
        document = {
            "campaign": result.campaign, "occasion": result.occasion, "as_of": as_of.isoformat(),
            "already_run": result.already_run, "counts": result.counts,
            "sms": None if sms is None else {"recipients": sms.recipients, "sampled": sms.sampled,
                                            "segments": sms.segments, "cost": sms.cost, "currency": sms.currency},
            "lines": [{"status": line.status, "channel": line.channel, "detail": line.detail, "members": line.members,
                       "first_due": _iso(line.first_due), "last_due": _iso(line.last_due)} for line in result.lines],
        }
        out.print_json(json.dumps(document, ensure_ascii=False))
        return
    if result.already_run is not None:
        out.print(f"occasion {result.occasion!r} of {campaign} was decided by run {result.already_run}: "
                  f"a run would decide nothing new (see `loyalcast report --run {result.already_run}`)")
        return
    table = Table(title=f"plan: {campaign} · occasion {result.occasion} · as of {_when(as_of)} (nothing reserved)")
    for column in ("decision", "channel", "members", "detail", "due"):
        table.add_column(column, justify="right" if column == "members" else "left")
    for line in result.lines:
        due = ""
        if line.status == "queued" and line.first_due and line.first_due > as_of:
            due = _when(line.first_due) + ("" if line.first_due == line.last_due else f" … {_when(line.last_due)}")
        table.add_row(line.status, line.channel, str(line.members), line.detail, due)
    table.add_row("all", "", str(sum(line.members for line in result.lines)), "", "", style="bold")
    out.print(table)
    if sms is not None:
        how = "rendered for every recipient" if sms.sampled == sms.recipients else f"estimated from {sms.sampled} rendered"
        out.print(f"SMS: {sms.recipients} messages, {sms.segments} segments, about {sms.cost:,.2f} {sms.currency} ({how})")


@app.command("preview")
def preview(
    campaign: Annotated[str, typer.Argument(help="Campaign name from settings.toml.")],
    member: Annotated[int, typer.Option("--member", "-m", help="Member id.")],
    channel: Annotated[Optional[str], typer.Option(help="Only this channel.")] = None,
    now: Annotated[Optional[str], typer.Option(help="Render as of this ISO-8601 instant.")] = None,
    html_file: Annotated[Optional[str], typer.Option("--html", help="Write a page with every channel side by side.")] = None,
) -> None:
    """Show exactly what a member would receive now, on every channel the campaign could use."""
    from campaigns.tools.preview import preview_member, preview_page

    application = _app()
    _require_schema(application)
    spec = application.settings.campaign(campaign)
    if channel is not None and channel not in spec.channels:
        raise LoyalcastError(f"campaign {campaign} does not use channel {channel!r} (it uses {', '.join(spec.channels)})")
    as_of = _parse_now(now, application.settings.program.timezone)
    previews = preview_member(application.deliverer, application.settings, campaign, member, as_of,
                              [channel] if channel else None)
    for item in previews:
        out.rule(f"{item.channel} · reachable: {item.reachable}")
        if item.error:
            out.print(f"[red]{item.error}[/red]", highlight=False)
            continue
        assert item.rendered is not None
        if item.rendered.subject is not None:
            out.print(f"Subject: {item.rendered.subject}", markup=False, highlight=False)
        out.print(item.rendered.text or item.rendered.html or "", markup=False, highlight=False)
        if item.sms:
            out.print(f"({item.sms.segments} segment(s), {item.sms.encoding}, {item.sms.characters} characters)")
        if item.over_budget:
            out.print(f"[red]{item.over_budget}[/red]", highlight=False)
    if html_file:
        Path(html_file).write_text(preview_page(member, campaign, previews), encoding="utf-8")
        err.print(f"wrote {html_file}")


@app.command("check")
def check() -> None:
    """Render every template for every locale and channel; exit 1 on any problem."""
    from campaigns.tools.check import check_templates

    application = _app()
    _require_schema(application)
    findings = check_templates(application.deliverer, application.settings, datetime.now(timezone.utc))
    for finding in findings:
        print(f"{finding.kind}: {finding}")
    if findings:
        raise typer.Exit(1)
    out.print("templates: every locale and channel renders, every SMS fits its budget")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _follow(application: runtime.App, run_id: int, as_of: datetime, poll_s: float = 0.5) -> None:
    """Show progress until every delivery due so far is finished.

    "So far" runs on the run's clock: ``as_of`` plus the time spent following, so a
    trial with ``--now`` waits for what its workers were asked to send now, not for
    deliveries that quiet hours or caps put hours or days later.
    """
    started = time.monotonic()
    with Progress(TextColumn("[bold]run {task.fields[run]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=err) as progress:
        task = progress.add_task("planning", total=None, run=run_id)
        while True:
            report = run_report(application.engine, run_id)
            assert report is not None
            done = report.total - report.in_flight
            if report.state == "planned":
                progress.update(task, total=report.total, completed=done, description="delivering")
                due_by = as_of + timedelta(seconds=time.monotonic() - started)
                if due_in_flight(application.engine, run_id, due_by) == 0:
                    break
            else:
                progress.update(task, completed=done, description="planning")
            time.sleep(poll_s)


def _print_report(report: RunReport, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(report.as_json(), ensure_ascii=False))
        return
    channels = sorted({channel for per in report.counts.values() for channel in per})
    table = Table(title=f"{report.campaign} · occasion {report.occasion} · run {report.run_id} ({report.state})")
    table.add_column("status")
    for channel in channels:
        table.add_column(channel, justify="right")
    table.add_column("total", justify="right", style="bold")
    for status in sorted(report.counts, key=_status_order):
        per = report.counts[status]
        table.add_row(status, *(str(per.get(c, "")) for c in channels), str(sum(per.values())))
    table.add_row("all", *(str(sum(report.counts[s].get(c, 0) for s in report.counts)) for c in channels),
                  str(report.total), style="bold")
    out.print(table)


def _status_order(status: str) -> int:
    from campaigns.store.ledger import Status

    order = [s.value for s in Status]
    return order.index(status) if status in order else len(order)


# --- report, why ----------------------------------------------------------------------


@app.command("report")
def report_command(
    run_id: Annotated[Optional[int], typer.Option("--run", help="Run id (default: the latest run).")] = None,
    campaign: Annotated[Optional[str], typer.Option(help="Latest run of this campaign.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: run_id, campaign, counts {status: {channel: n}}.")] = False,
) -> None:
    """Counts per status and channel of a campaign run."""
    application = _app()
    _require_schema(application)
    if run_id is None:
        run_id = latest_run_id(application.engine, campaign)
        if run_id is None:
            raise LoyalcastError("no campaign has run yet")
    report = run_report(application.engine, run_id)
    if report is None:
        raise LoyalcastError(f"no run {run_id}")
    _print_report(report, as_json)


@app.command("why")
def why(
    member_id: Annotated[int, typer.Argument(help="Member id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every decision loyalcast made about one member, with its reason."""
    application = _app()
    _require_schema(application)
    rows = member_history(application.engine, member_id)
    if as_json:
        out.print_json(json.dumps({"member_id": member_id, "deliveries": rows}, default=_json_default, ensure_ascii=False))
        return
    if not rows:
        out.print(f"member {member_id}: no campaign has considered this member yet")
        return
    table = Table(title=f"member {member_id}")
    for column in ("campaign", "occasion", "channel", "status", "reason", "send at", "sent at", "attempts"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["campaign"] or f"{row['template']} (triggered)", row["occasion"] or "", row["channel"] or "-", row["status"],
            row["reason"], _when(row["send_at"]), _when(row["sent_at"]), str(row["attempts"]),
        )
    out.print(table)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else ""


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


# --- triggered ------------------------------------------------------------------------


@app.command("send")
def send(
    member_id: Annotated[int, typer.Argument(help="Member id.")],
    template: Annotated[str, typer.Argument(help="Template folder, e.g. points_credited.")],
    data: Annotated[str, typer.Option(help="Template data as a JSON object.")] = "{}",
    key: Annotated[str, typer.Option(help="Idempotency key: the same key sends once.")] = ...,  # type: ignore[assignment]
    category: Annotated[Optional[str], typer.Option(help="Message category (default: triggered.category).")] = None,
) -> None:
    """Send one triggered message (what another service does with send_triggered)."""
    from campaigns.tools.preview import member_lots, member_row, render_channel
    from campaigns.tools.report import member_history
    from campaigns.planning.triggered import triggered_channels

    application = _app()
    _require_schema(application)
    try:
        values = json.loads(data)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--data") from None
    if not isinstance(values, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--data")
    channels = triggered_channels(application.settings, template)
    if not channels:
        raise LoyalcastError(f"unknown template {template!r}: no texts under {application.settings.templates_path / template}")
    now = datetime.now(timezone.utc)
    row = member_row(application.deliverer, member_id, None, now)  # LoyalcastError for an unknown member
    lots = member_lots(application.deliverer, member_id, now)
    for channel in channels:
        rendered = render_channel(application.deliverer, row, lots, template, channel, values)
        if rendered.error:
            raise LoyalcastError(f"the data does not fit the template: {rendered.error}")

    from campaigns.app import actors

    broker = actors.use_broker(runtime.build_broker(application.settings))
    actors.send_triggered.send(member_id, template, values, key, category)
    if not application.in_memory:
        out.print(f"enqueued send_triggered for member {member_id} ({template}, key {key!r})")
        return
    runtime.drain_in_process(broker, threads=1)
    last = [r for r in member_history(application.engine, member_id) if r["template"] == template][-1]
    out.print(f"member {member_id}: {last['status']} on {last['channel'] or '-'} ({last['reason']})",
              markup=False, highlight=False)


# --- suppressions -----------------------------------------------------------------------

suppressions_app = typer.Typer(help="Addresses that must not be contacted.", no_args_is_help=True)
app.add_typer(suppressions_app, name="suppressions")


@suppressions_app.command("list")
def suppressions_list(
    channel: Annotated[Optional[str], typer.Option(help="Only this channel.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List suppressed addresses with their reasons."""
    from campaigns.store.models import suppressions

    application = _app()
    _require_schema(application)
    query = select(suppressions).order_by(suppressions.c.channel, suppressions.c.address)
    if channel:
        query = query.where(suppressions.c.channel == channel)
    with application.engine.connect() as conn:
        rows = [dict(row._mapping) for row in conn.execute(query)]
    if as_json:
        out.print_json(json.dumps(rows, default=_json_default, ensure_ascii=False))
        return
    table = Table(title=f"suppressions ({len(rows)})")
    for column in ("channel", "address", "reason", "since"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["channel"], row["address"], row["reason"], _when(row["created_at"]))
    out.print(table)


@suppressions_app.command("add")
def suppressions_add(
    channel: Annotated[str, typer.Argument(help="email, sms or telegram.")],
    address: Annotated[str, typer.Argument(help="Email address, E.164 phone number or Telegram chat id.")],
    reason: Annotated[str, typer.Option(help="Why (kept with the entry).")] = "added by hand",
) -> None:
    """Never contact this address on this channel again (e.g. after a complaint)."""
    from campaigns.delivery.deliverer import add_suppressions

    application = _app()
    _require_schema(application)
    channel = _known_channel(channel)
    with application.engine.begin() as conn:
        add_suppressions(conn, [{"channel": channel, "address": address, "reason": reason}], datetime.now(timezone.utc))
    out.print(f"suppressed {channel} {address}", markup=False, highlight=False)


@suppressions_app.command("remove")
def suppressions_remove(
    channel: Annotated[str, typer.Argument(help="email, sms or telegram.")],
    address: Annotated[str, typer.Argument(help="The suppressed address.")],
) -> None:
    """Allow this address again (the member consented anew, the number was fixed)."""
    from sqlalchemy import delete

    from campaigns.store.models import suppressions

    application = _app()
    _require_schema(application)
    channel = _known_channel(channel)
    with application.engine.begin() as conn:
        removed = conn.execute(
            delete(suppressions).where(suppressions.c.channel == channel, suppressions.c.address == address)
        ).rowcount
    if not removed:
        raise LoyalcastError(f"{channel} {address} is not suppressed")
    out.print(f"removed {channel} {address}", markup=False, highlight=False)


def _known_channel(channel: str) -> str:
    from campaigns.config.settings import CHANNELS

    if channel not in CHANNELS:
        raise typer.BadParameter(f"unknown channel {channel!r} (known: {', '.join(sorted(CHANNELS))})", param_hint="CHANNEL")
    return channel


# --- fakes ------------------------------------------------------------------------------


@app.command("fakes")
def fakes(
    smtp_port: Annotated[int, typer.Option(help="SMTP port.")] = 2525,
    sms_port: Annotated[int, typer.Option(help="SMS gateway port.")] = 8025,
    telegram_port: Annotated[int, typer.Option(help="Telegram Bot API port.")] = 8081,
    transient_rate: Annotated[float, typer.Option(help="Share of requests failing transiently (0-1).")] = 0.0,
    rate_limit_rate: Annotated[float, typer.Option(help="Share answered 'slow down' (429, retry after).")] = 0.0,
    slow_seconds: Annotated[float, typer.Option(help="Delay every answer by this long.")] = 0.0,
    reject: Annotated[Optional[list[str]], typer.Option(help="Address, number or chat id to refuse as invalid (repeat).")] = None,
    block: Annotated[Optional[list[str]], typer.Option(help="Telegram chat id that blocked the bot (repeat).")] = None,
) -> None:
    """Run fake SMTP, SMS gateway and Telegram Bot API servers on loopback until Ctrl-C
    (try real transports with examples/settings.fakes.toml)."""
    from channels.fakes import FakeSmsGateway, FakeSmtpServer, FakeTelegramApi, Faults

    faults = Faults(transient_rate=transient_rate, rate_limit_rate=rate_limit_rate, slow_seconds=slow_seconds,
                    rejected=set(reject or []), blocked=set(block or []))
    smtp = FakeSmtpServer(smtp_port, faults).start()
    sms = FakeSmsGateway(sms_port, faults).start()
    telegram = FakeTelegramApi(telegram_port, faults).start()
    out.print(f"smtp      {smtp.address[0]}:{smtp.address[1]}  (no TLS)")
    out.print(f"sms       {sms.url}/send  (JSON)   {sms.url}/2010-04-01/Accounts/<sid>/Messages.json  (Twilio)")
    out.print(f"telegram  {telegram.url}/bot<token>/sendMessage")
    out.print("Ctrl-C stops them.")
    try:
        while True:
            time.sleep(5)
            out.print(f"accepted: {len(smtp.messages)} emails, {len(sms.messages)} SMS, {len(telegram.messages)} Telegram")
    except KeyboardInterrupt:
        pass
    finally:
        smtp.stop(); sms.stop(); telegram.stop()  # noqa: E702


# --- scheduler ------------------------------------------------------------------------


@app.command("scheduler")
def scheduler(
    name: Annotated[str, typer.Option(help="Name recorded as started_by (default: scheduler@host).")] = "",
    replay_from: Annotated[Optional[str], typer.Option(help="Replay a simulated timeline from this ISO instant ...")] = None,
    replay_until: Annotated[Optional[str], typer.Option(help="... until this one, as fast as possible.")] = None,
    step: Annotated[int, typer.Option(help="Replay step in seconds.")] = 30,
) -> None:
    """Start campaign occasions when their cron schedules fire (run one or more; each
    occasion starts once)."""
    import socket

    from campaigns.app.scheduler import Scheduler

    application = _app()
    _require_schema(application)
    from campaigns.app import actors

    broker = actors.use_broker(runtime.build_broker(application.settings))

    def start(run_id: int, now: datetime) -> None:
        actors.plan_campaign.send(run_id, now.isoformat())
        if application.in_memory:
            runtime.drain_in_process(broker, threads=application.settings.delivery.memory_worker_threads)

    runner = Scheduler(application.settings, application.engine, start, name or f"scheduler@{socket.gethostname()}")
    if replay_from is None:
        runner.run_forever()
        return
    zone = application.settings.program.timezone
    start_at = _parse_now(replay_from, zone)
    until = _parse_now(replay_until, zone) if replay_until else start_at
    for decisions in runner.replay(start_at, until, timedelta(seconds=step)):
        for decision in decisions:
            out.print(f"{decision.action} {decision.campaign} {decision.occasion} run {decision.run_id}"
                      + (f" ({decision.reason})" if decision.reason else ""), markup=False, highlight=False)


# --- worker ---------------------------------------------------------------------------


@app.command("worker", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(
    ctx: typer.Context,
    processes: Annotated[int, typer.Option("--processes", "-p", min=1, help="Worker processes (default: 2 per core).")] = 2 * (os.cpu_count() or 1),
    threads: Annotated[int, typer.Option("--threads", "-t", min=1, help="Threads per process.")] = 4,
    queues: Annotated[Optional[list[str]], typer.Option("--queue", "-Q", help="Serve only this queue (repeat for more): triggered, plans, batches.")] = None,
) -> None:
    """Run Dramatiq worker processes for loyalcast's actors (extra options go to `dramatiq`)."""
    from dramatiq.cli import main as dramatiq_main

    application = _app()
    if application.in_memory:
        raise LoyalcastError("the memory:// broker has no separate workers: `loyalcast run` processes in-process")
    if application.settings.metrics.enabled:
        runtime.configure_prometheus(application.settings)
    from campaigns.app.actors import QUEUES

    known = set(QUEUES)
    for queue in queues or []:
        if queue not in known:
            raise typer.BadParameter(f"unknown queue {queue!r} (known: {', '.join(sorted(known))})", param_hint="--queue")
    sys.argv = ["dramatiq", "workers", "--processes", str(processes), "--threads", str(threads), *ctx.args]
    if queues:
        sys.argv += ["--queues", *queues]
    raise SystemExit(dramatiq_main())


def main() -> None:
    """Console entry point: turns loyalcast's errors into messages and exit codes."""
    try:
        app()
    except ConfigError as exc:
        # Plain writes: one problem per line, never wrapped to the terminal's width.
        for problem in exc.problems:
            print(f"{exc.source}: {problem}" if exc.source else problem, file=sys.stderr)
        raise SystemExit(2) from None
    except LoyalcastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
