"""Commands a marketer runs: run, plan, preview, check, and send (a triggered message)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from campaigns.app import runtime
from campaigns.app.cli.common import (
    app,
    configured_app,
    err,
    iso,
    out,
    parse_now,
    print_report,
    require_schema,
    when,
)
from campaigns.app.outages import BROKER_OUTAGES, unreachable
from campaigns.errors import LoyalcastError
from campaigns.tools.report import due_in_flight, run_report
from channels.specs import channel_spec


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

    application = configured_app()
    application.settings.require_secrets()
    require_schema(application)
    as_of = parse_now(now, application.settings.program.timezone)
    claimed = claim_run(application.engine, application.settings, campaign, as_of=as_of, occasion=occasion, started_by="cli")
    if not claimed.created:
        err.print(f"occasion {claimed.occasion!r} of {campaign} was started before (run {claimed.id}): nothing new is decided")

    from campaigns.app import actors

    broker = actors.use_broker(runtime.build_broker(application.settings))
    try:
        actors.plan_campaign.send(claimed.id, as_of.isoformat())
    except BROKER_OUTAGES as exc:
        raise unreachable(
            exc,
            application.settings,
            f"run {claimed.id} stays planning: the reconciler (`loyalcast scheduler`) plans it once the broker is back",
        ) from None
    if application.in_memory:
        runtime.drain_in_process(broker, threads=application.settings.delivery.memory_worker_threads)
        later, first = waiting(application.engine, claimed.id, as_of)
        if later:
            err.print(
                f"{later} deliveries are due later (quiet hours, send_at_local or deferred by a cap), "
                f"the first at {when(first)}; they wait in the ledger: `loyalcast serve` sends each when it is due "
                f"(with Redis, `loyalcast worker` and `loyalcast scheduler` do)"
            )
    elif wait:
        _follow(application, claimed.id, as_of)
    else:
        err.print(
            f"run {claimed.id} enqueued on {application.settings.broker_url.split('@')[-1]}; "
            f"follow it with `loyalcast report --run {claimed.id}`"
        )
    report = run_report(application.engine, claimed.id, application.settings.reconciler.overdue)
    assert report is not None
    print_report(report, as_json)
    if (application.in_memory or wait) and report.nothing_delivered:
        err.print(f"run {claimed.id}: nothing was delivered; `loyalcast why` shows each row's reason")
        raise typer.Exit(1)


@app.command("plan")
def plan(
    campaign: Annotated[str, typer.Argument(help="Campaign name from settings.toml.")],
    now: Annotated[Optional[str], typer.Option(help="Evaluate as of this ISO-8601 instant.")] = None,
    occasion: Annotated[Optional[str], typer.Option(help="Occasion key (default: program-local date).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show what `run` would decide now, per decision and channel, without reserving anything."""
    from campaigns.planning.dry_run import dry_run

    application = configured_app()
    require_schema(application)
    _preview_links(application)
    as_of = parse_now(now, application.settings.program.timezone)
    result = dry_run(application.engine, application.settings, campaign, as_of=as_of, occasion=occasion)
    from campaigns.tools.preview import plan_estimates

    estimates = plan_estimates(application.engine, application.messages, result, as_of)
    if as_json:
        document: dict[str, object] = {
            "campaign": result.campaign,
            "occasion": result.occasion,
            "as_of": as_of.isoformat(),
            "already_run": result.already_run,
            "counts": result.counts,
            "lines": [
                {
                    "status": line.status,
                    "channel": line.channel,
                    "detail": line.detail,
                    "members": line.members,
                    "first_due": iso(line.first_due),
                    "last_due": iso(line.last_due),
                }
                for line in result.lines
            ],
        }
        # One key per channel billed per segment (e.g. "sms"), null when nothing goes there.
        for channel in result.samples:
            estimate = estimates.get(channel)
            document[channel] = (
                None
                if estimate is None
                else {
                    "recipients": estimate.recipients,
                    "sampled": estimate.sampled,
                    "sendable": estimate.sendable,
                    "failing": estimate.failing,
                    "segments": estimate.segments,
                    "cost": estimate.cost,
                    "currency": estimate.currency,
                }
            )
        out.print_json(json.dumps(document, ensure_ascii=False))
        return
    if result.already_run is not None:
        out.print(
            f"occasion {result.occasion!r} of {campaign} was decided by run {result.already_run}: "
            f"a run would decide nothing new (see `loyalcast report --run {result.already_run}`)"
        )
        return
    table = Table(title=f"plan: {campaign} · occasion {result.occasion} · as of {when(as_of)} (nothing reserved)")
    for column in ("decision", "channel", "members", "detail", "due"):
        table.add_column(column, justify="right" if column == "members" else "left")
    for line in result.lines:
        due = ""
        if line.status == "queued" and line.first_due and line.first_due > as_of:
            due = when(line.first_due) + ("" if line.first_due == line.last_due else f" … {when(line.last_due)}")
        table.add_row(line.status, line.channel, str(line.members), line.detail, due)
    table.add_row("all", "", str(sum(line.members for line in result.lines)), "", "", style="bold")
    out.print(table)
    for channel, estimate in estimates.items():
        how = (
            "rendered for every recipient"
            if estimate.sampled == estimate.recipients
            else f"estimated from {estimate.sampled} rendered"
        )
        out.print(
            f"{channel_spec(channel).label}: {estimate.sendable} messages, {estimate.segments} segments, "
            f"about {estimate.cost:,.2f} {estimate.currency} ({how})",
            markup=False,
            highlight=False,
        )
        for reason, count in estimate.failing.items():
            out.print(f"  {count} of the {estimate.recipients} would not go out: {reason}", markup=False, highlight=False)


@app.command("preview")
def preview(
    campaign: Annotated[str, typer.Argument(help="Campaign name from settings.toml.")],
    member: Annotated[int, typer.Option("--member", "-m", help="Member id.")],
    channel: Annotated[Optional[str], typer.Option(help="Only this channel.")] = None,
    now: Annotated[Optional[str], typer.Option(help="Render as of this ISO-8601 instant.")] = None,
    html_file: Annotated[Optional[str], typer.Option("--html", help="Write a page with every channel side by side.")] = None,
) -> None:
    """Show exactly what a member would receive now, on every channel the campaign could use."""
    from campaigns.tools.preview import preview_member
    from campaigns.tools.preview_page import preview_page

    application = configured_app()
    require_schema(application)
    _preview_links(application)
    spec = application.settings.campaign(campaign)
    if channel is not None and channel not in spec.channels:
        raise LoyalcastError(f"campaign {campaign} does not use channel {channel!r} (it uses {', '.join(spec.channels)})")
    as_of = parse_now(now, application.settings.program.timezone)
    previews = preview_member(application.engine, application.messages, campaign, member, as_of, [channel] if channel else None)
    for item in previews:
        out.rule(f"{item.channel} · reachable: {item.reachable}")
        if item.problem:
            out.print(f"[red]{item.problem}[/red]", highlight=False)
            continue
        assert item.rendered is not None
        if item.rendered.subject is not None:
            out.print(f"Subject: {item.rendered.subject}", markup=False, highlight=False)
        out.print(item.rendered.shown, markup=False, highlight=False)
        if item.length:
            out.print(f"({item.length.segments} segment(s), {item.length.encoding}, {item.length.characters} characters)")
        if item.over_budget:
            out.print(f"[red]{item.over_budget}[/red]", highlight=False)
    if html_file:
        Path(html_file).write_text(preview_page(member, campaign, previews), encoding="utf-8")
        err.print(f"wrote {html_file}")
    if previews and all(item.problem or item.rendered is None for item in previews):
        raise typer.Exit(1)


@app.command("check")
def check() -> None:
    """Render every template for every locale and channel; exit 1 on any problem."""
    from campaigns.tools.check import check_templates

    application = configured_app()
    require_schema(application)
    _preview_links(application)
    findings = check_templates(application.engine, application.messages, datetime.now(UTC))
    for finding in findings:
        print(f"{finding.kind}: {finding}")
    if findings:
        raise typer.Exit(1)
    out.print("templates: every locale and channel renders, every text fits its segment budget")


def _preview_links(application: runtime.App) -> None:
    if application.settings.preview_links():
        err.print(f"note: {application.settings.web.key_env} is not set: links in these texts are signed with a throwaway key")


def _follow(application: runtime.App, run_id: int, as_of: datetime, poll_s: float = 0.5) -> None:
    """Show progress until every delivery due so far is finished.

    "So far" runs on the run's clock: ``as_of`` plus the time spent following, so a
    trial with ``--now`` waits for what its workers were asked to send now, not for
    deliveries that quiet hours or caps put hours or days later.
    """
    started = time.monotonic()
    with Progress(
        TextColumn("[bold]run {task.fields[run]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
    ) as progress:
        task = progress.add_task("planning", total=None, run=run_id)
        while True:
            report = run_report(application.engine, run_id, application.settings.reconciler.overdue)
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


# --- triggered ------------------------------------------------------------------------


@app.command("send")
def send(
    member_id: Annotated[int, typer.Argument(help="Member id.")],
    template: Annotated[str, typer.Argument(help="Template folder, e.g. points_credited.")],
    data: Annotated[str, typer.Option(help="Template data as a JSON object.")] = "{}",
    key: Annotated[str, typer.Option(help="Idempotency key: the same key sends once.")] = ...,  # type: ignore[assignment]  # Typer's spelling of a required option
    category: Annotated[Optional[str], typer.Option(help="Message category (default: triggered.category).")] = None,
) -> None:
    """Send one triggered message (what another service does with send_triggered)."""
    from campaigns.planning.triggered import triggered_channels
    from campaigns.tools.preview import member_by_id, member_lots, render_channel
    from campaigns.tools.report import member_history

    application = configured_app()
    application.settings.require_secrets()
    require_schema(application)
    try:
        values = json.loads(data)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--data") from None
    if not isinstance(values, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--data")
    channels = triggered_channels(application.settings, template)
    if not channels:
        raise LoyalcastError(f"unknown template {template!r}: no texts under {application.settings.templates_path / template}")
    now = datetime.now(UTC)
    member = member_by_id(application.engine, member_id, None, now)  # LoyalcastError for an unknown member
    lots = member_lots(application.engine, member_id, now)
    for channel in channels:
        rendered = render_channel(application.messages, member.recipient, lots, template, channel, values)
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
    later = ""
    if last["status"] == "queued" and last["send_at"] > datetime.now(UTC):
        later = f"; due at {when(last['send_at'])}, `loyalcast serve` sends it then"
    out.print(
        f"member {member_id}: {last['status']} on {last['channel'] or '-'} ({last['reason']}){later}",
        markup=False,
        highlight=False,
    )
