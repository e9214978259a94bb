"""Commands an operator runs: db, demo, fakes, scheduler, worker."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from datetime import datetime, timedelta
from typing import Annotated, Optional

import typer

from campaigns.app import runtime
from campaigns.app.cli.common import (
    app,
    configured_app,
    db_app,
    demo_app,
    err,
    out,
    parse_now,
    require_schema,
)
from campaigns.errors import LoyalcastError

# --- db -------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate loyalcast's tables (and the program's, where absent)."""
    from campaigns.store import schema

    application = configured_app()
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

    application = configured_app()
    require_schema(application)
    result = demo.seed(application.engine, members, seed_value=seed, force=force)
    if result.skipped:
        out.print(f"the database already has {result.members} members; nothing seeded (use --force to replace)")
        return
    out.print(
        f"seeded {result.members} members, {result.expirations} expiring point lots, "
        f"{result.segment_rows} segment memberships, {result.suppressions} suppressed addresses, "
        f"{result.movements} point movements"
    )


@demo_app.command("outcomes")
def demo_outcomes(
    seed: Annotated[int, typer.Option(help="Random seed: the same seed and ledger give the same outcomes.")] = 42,
) -> None:
    """What demo members did after each occasion that ran (messaged members redeem a
    little more): point movements and purchases for `loyalcast lift` to measure."""
    from campaigns.tools.demo_effect import outcomes

    application = configured_app()
    require_schema(application)
    result = outcomes(application.engine, seed=seed)
    out.print(
        f"{result.member_occasions} member-occasions of {result.occasions} occasions: "
        f"{result.movements} point movements, {result.purchases} purchases"
    )


# --- fakes ------------------------------------------------------------------------------


@app.command("fakes")
def fakes(
    smtp_port: Annotated[int, typer.Option(help="SMTP port.")] = 2525,
    sms_port: Annotated[int, typer.Option(help="SMS gateway port.")] = 8025,
    telegram_port: Annotated[int, typer.Option(help="Telegram Bot API port.")] = 8081,
    viber_port: Annotated[int, typer.Option(help="Infobip (Viber Business Messages) API port.")] = 8082,
    whatsapp_port: Annotated[int, typer.Option(help="WhatsApp Business Cloud API port.")] = 8083,
    whatsapp_webhook: Annotated[
        Optional[str],
        typer.Option(help="Where the WhatsApp fake posts statuses and members' messages (loyalcast web's /webhooks/whatsapp)."),
    ] = None,
    transient_rate: Annotated[float, typer.Option(help="Share of requests failing transiently (0-1).")] = 0.0,
    rate_limit_rate: Annotated[float, typer.Option(help="Share answered 'slow down' (429, retry after).")] = 0.0,
    slow_seconds: Annotated[float, typer.Option(help="Delay every answer by this long.")] = 0.0,
    reject: Annotated[Optional[list[str]], typer.Option(help="Address, number or chat id to refuse as invalid (repeat).")] = None,
    block: Annotated[Optional[list[str]], typer.Option(help="Telegram chat id that blocked the bot (repeat).")] = None,
    answer: Annotated[
        Optional[list[str]],
        typer.Option(
            help="NUMBER=ERROR: the SMS gateway answers this number with its provider's own error body "
            "(invalid, blocked, no_funds, auth, sender, duplicate, prohibited, quota; repeat)."
        ),
    ] = None,
) -> None:
    """Run fake SMTP, SMS gateway, Telegram Bot API, Infobip (Viber) and WhatsApp Cloud API
    servers on loopback until Ctrl-C (try real transports with examples/settings.fakes.toml)."""
    from channels.fakes import FakeInfobip, FakeSmsGateway, FakeSmtpServer, FakeTelegramApi, FakeWhatsApp, Faults

    faults = Faults(
        transient_rate=transient_rate,
        rate_limit_rate=rate_limit_rate,
        slow_seconds=slow_seconds,
        rejected=set(reject or []),
        blocked=set(block or []),
        errors=dict(_pair(item) for item in answer or []),
    )
    smtp = FakeSmtpServer(smtp_port, faults).start()
    sms = FakeSmsGateway(sms_port, faults).start()
    telegram = FakeTelegramApi(telegram_port, faults).start()
    viber = FakeInfobip(viber_port, faults).start()
    whatsapp = FakeWhatsApp(whatsapp_port, faults, webhook=whatsapp_webhook)
    whatsapp.start()
    out.print(f"smtp      {smtp.address[0]}:{smtp.address[1]}  (no TLS)")
    out.print(f"sms       {sms.url}/send  (JSON)   {sms.url}/2010-04-01/Accounts/<sid>/Messages.json  (Twilio)")
    out.print(f"          {sms.url}/sms/send  (SMS.ru)   {sms.url}/sys/send.php  (SMSC)   {sms.url}/v2/sms/send  (SMS Aero)")
    out.print(f"          base_url = {sms.url!r} for smsru and smsc, {sms.url + '/v2'!r} for smsaero")
    out.print(f"telegram  {telegram.url}/bot<token>/sendMessage")
    out.print(f"viber     {viber.url}/viber/2/messages  (Infobip)")
    out.print(f"whatsapp  {whatsapp.url}/v21.0/<phone_number_id>/messages  (Cloud API; app secret {whatsapp.app_secret!r})")
    out.print("Ctrl-C stops them.")
    try:
        while True:
            time.sleep(5)
            counts = f"{len(smtp.messages)} emails, {len(sms.messages)} SMS, {len(telegram.messages)} Telegram"
            out.print(f"accepted: {counts}, {len(viber.messages)} Viber, {len(whatsapp.messages)} WhatsApp")
    except KeyboardInterrupt:
        pass
    finally:
        smtp.stop()
        sms.stop()
        telegram.stop()
        viber.stop()
        whatsapp.stop()


def _pair(item: str) -> tuple[str, str]:
    number, sep, error = item.partition("=")
    if not sep or not number or not error:
        raise typer.BadParameter(f"expected NUMBER=ERROR, got {item!r}", param_hint="--answer")
    return number.strip(), error.strip()


# --- scheduler, reconciler, serve -------------------------------------------------------


@app.command("scheduler")
def scheduler(
    name: Annotated[str, typer.Option(help="Name recorded as started_by (default: scheduler@host).")] = "",
    replay_from: Annotated[Optional[str], typer.Option(help="Replay a simulated timeline from this ISO instant ...")] = None,
    replay_until: Annotated[Optional[str], typer.Option(help="... until this one, as fast as possible.")] = None,
    step: Annotated[int, typer.Option(help="Replay step in seconds.")] = 30,
) -> None:
    """Start campaign occasions when their cron schedules fire, and run the reconciler
    (run one or more; each occasion starts once)."""
    import socket

    from campaigns.app.reconciler import Reconciler
    from campaigns.app.scheduler import Scheduler

    application = configured_app()
    require_schema(application)
    from campaigns.app import actors

    broker = actors.use_broker(runtime.build_broker(application.settings))

    def start(run_id: int, now: datetime) -> None:
        actors.plan_campaign.send(run_id, now.isoformat())
        if application.in_memory:
            runtime.drain_in_process(broker, threads=application.settings.delivery.memory_worker_threads)

    runner = Scheduler(application.settings, application.engine, start, name or f"scheduler@{socket.gethostname()}")
    if replay_from is None:
        if application.in_memory:
            raise LoyalcastError("with the memory:// broker, run `loyalcast serve` (scheduler, reconciler and worker in one)")
        if application.settings.metrics.enabled:
            metrics = application.settings.metrics
            from campaigns import metrics as metrics_module

            metrics_module.serve_reconciler_metrics(metrics.host, metrics.reconciler_port)
        stop = _stop_on_signals()
        runner.run_forever(reconcile=Reconciler(application, broker).run_once, stop=stop)
        return
    zone = application.settings.program.timezone
    start_at = parse_now(replay_from, zone)
    until = parse_now(replay_until, zone) if replay_until else start_at
    for decisions in runner.replay(start_at, until, timedelta(seconds=step)):
        for decision in decisions:
            out.print(
                f"{decision.action} {decision.campaign} {decision.occasion} run {decision.run_id}"
                + (f" ({decision.reason})" if decision.reason else ""),
                markup=False,
                highlight=False,
            )


@app.command("reconcile")
def reconcile(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One reconciler pass: end expired claims unknown, re-drive queued rows no message
    carries and runs stuck in planning (the scheduler and serve do this continuously)."""
    from campaigns.app.reconciler import Reconciler

    application = configured_app()
    require_schema(application)
    from campaigns.app import actors

    broker = actors.use_broker(runtime.build_broker(application.settings))
    result = Reconciler(application, broker).run_once()
    if application.in_memory:
        runtime.drain_in_process(broker, threads=application.settings.delivery.memory_worker_threads)
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "broker_lost": result.broker_lost,
                    "unknown": result.unknown,
                    "overdue": result.overdue,
                    "messages": result.messages,
                    "redriven_runs": result.redriven_runs,
                    "replanned": result.replanned,
                }
            )
        )
        return
    out.print(f"reconciler: {result.describe()}", markup=False, highlight=False)


@app.command("serve")
def serve(
    threads: Annotated[
        Optional[int], typer.Option("--threads", "-t", min=1, help="Worker threads (default: delivery.memory_worker_threads).")
    ] = None,
    name: Annotated[str, typer.Option(help="Name recorded as started_by (default: serve@host).")] = "",
) -> None:
    """Run scheduler, reconciler, a worker and the web service in one process until
    Ctrl-C or SIGTERM: the embedded default kept running, so messages due later go out
    when due and members' unsubscribe links work."""
    import socket

    import dramatiq

    from campaigns.app.reconciler import Reconciler
    from campaigns.app.scheduler import Scheduler

    application = configured_app()
    application.settings.require_secrets()
    require_schema(application)
    application.serving = True
    from campaigns.app import actors

    broker = actors.use_broker(runtime.build_broker(application.settings))
    worker = dramatiq.Worker(
        broker, worker_threads=threads or application.settings.delivery.memory_worker_threads, worker_timeout=100
    )
    worker.start()

    def start(run_id: int, now: datetime) -> None:
        actors.plan_campaign.send(run_id, now.isoformat())

    from campaigns.web.server import Background

    runner = Scheduler(application.settings, application.engine, start, name or f"serve@{socket.gethostname()}")
    web = Background(application.settings)
    web.start()
    stop = _stop_on_signals()
    settings = application.settings
    err.print(
        f"serving {settings.source}: scheduler, reconciler, worker, and web on http://{settings.web.host}:{settings.web.port}; "
        "Ctrl-C stops"
    )
    try:
        runner.run_forever(reconcile=Reconciler(application, broker).run_once, stop=stop)
    finally:
        web.stop()
        worker.stop(timeout=int(runtime.stop_timeout(application.settings) * 1000))


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (the loop finishes its step and returns)."""
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


# --- worker ---------------------------------------------------------------------------


@app.command("worker", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(
    ctx: typer.Context,
    processes: Annotated[int, typer.Option("--processes", "-p", min=1, help="Worker processes (default: 2 per core).")] = 2
    * (os.cpu_count() or 1),
    threads: Annotated[int, typer.Option("--threads", "-t", min=1, help="Threads per process.")] = 4,
    queues: Annotated[
        Optional[list[str]],
        typer.Option("--queue", "-Q", help="Serve only this queue (repeat for more): triggered, plans, batches."),
    ] = None,
) -> None:
    """Run Dramatiq worker processes for loyalcast's actors (extra options go to `dramatiq`)."""
    from dramatiq.cli import main as dramatiq_main

    application = configured_app()
    application.settings.require_secrets()
    if application.in_memory:
        raise LoyalcastError("the memory:// broker has no separate workers: `loyalcast run` processes in-process")
    if application.settings.metrics.enabled:
        runtime.configure_prometheus(application.settings)
    from campaigns.app.actors import QUEUES

    known = set(QUEUES)
    for queue in queues or []:
        if queue not in known:
            raise typer.BadParameter(f"unknown queue {queue!r} (known: {', '.join(sorted(known))})", param_hint="--queue")
    extra = list(ctx.args)
    if not any(arg.startswith("--worker-shutdown-timeout") for arg in extra):
        # Long enough for every batch to finish its call in flight and hand back the rest.
        extra += ["--worker-shutdown-timeout", str(int(runtime.stop_timeout(application.settings) * 1000))]
    sys.argv = ["dramatiq", "workers", "--processes", str(processes), "--threads", str(threads), *extra]
    if queues:
        sys.argv += ["--queues", *queues]
    raise SystemExit(dramatiq_main())
