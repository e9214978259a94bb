"""The ledger's benchmark: planning against its floor, over a month of history, and at
ten times the size; retention; partition pruning. See bench/README.md ("The ledger").

    python bench/ledger.py --members 1000000                 # floor, empty, history, retention
    python bench/ledger.py --members 10000000 --skip-history # the 10M plan and its RSS

Every figure is measured in one run on one database (``loyalcast_bench``), so the ratios
compare like with like:

- **floor**: the decisions of the plan over an empty ledger, inserted bare by one
  ``INSERT ... SELECT`` into a table made ``LIKE deliveries INCLUDING ALL`` (the same
  columns and indexes): what writing those rows costs PostgreSQL at least;
- **plan (empty ledger)**: ``plan_run`` of the balance reminder over the seeded members;
- **plan (history)**: the same campaign's next occasion over ``--history-days`` daily
  occasions of history before it (each of the first plan's decisions again, a day
  apart, sent where the channel's cap would have let it go: every 7th day on Telegram,
  14th on email, 30th on SMS, capped otherwise), vacuumed and analyzed as a live ledger is;
- **retention**: the ledger's size, month by month, before and after ``[ledger] retention``
  is enforced as of the day the oldest month of history expires (the shortest retention
  the caps allow: every month older than it goes whole);
- **pruning**: ``EXPLAIN`` of a member's cap lookup as the planner writes it, showing the
  months it reads.

The campaign is planned without a holdout, as the first benchmark's figures were (a
holdout's first occasion also draws every member's place: see "The console" in
bench/README.md).

Results go to ``bench/results/ledger-<size>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median

import psutil
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from run import NOW, _server_version, fresh_database, log, loyalcast, seed, settings_file  # noqa: E402

CAP_PERIOD_DAYS = {"telegram": 7, "email": 14, "sms": 30}
"""How often a daily campaign gets through each channel's marketing cap (the shipped caps)."""


class Peak:
    """The largest resident set of this process while a block runs (sampled every 0.1 s)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, me.memory_info().rss)
            time.sleep(0.1)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mb(self) -> float:
        return round(self.peak / 2**20, 1)


def planning_settings(folder: Path, url: str) -> Path:
    """Settings for planning the balance reminder without a holdout (the null transport;
    no provider is called while planning)."""
    import tomllib

    import tomli_w

    unreachable = {"smtp": ["127.0.0.1", 1], "sms": "http://127.0.0.1:1", "telegram": "http://127.0.0.1:1"}
    config = settings_file(folder, url, unreachable, "null", 500)
    data = tomllib.loads(config.read_text())
    data["campaigns"]["balance_reminder"]["holdout"] = 0.0
    config.write_text(tomli_w.dumps(data))
    return config


def plan(config: Path, occasion: str, as_of: datetime) -> dict:
    """Plan the balance reminder's ``occasion`` as of ``as_of`` in this process; seconds,
    decisions, the run's id and the process's peak RSS."""
    os.environ["BENCH_TELEGRAM_TOKEN"] = "123:bench"
    from campaigns.config.loading import load_settings
    from campaigns.planning.planner import plan_run
    from campaigns.store.engine import make_engine
    from campaigns.store.runs import claim_run

    settings = load_settings(config)
    engine = make_engine(settings.database_url)
    run = claim_run(engine, settings, "balance_reminder", as_of=as_of, occasion=occasion)
    with Peak() as peak:
        started = time.perf_counter()
        decided = plan_run(engine, settings, run.id)
        seconds = time.perf_counter() - started
    engine.dispose()
    figures = {"plan_seconds": round(seconds, 2), "decisions": decided, "run_id": run.id, "peak_rss_mb": peak.mb}
    log(f"plan {occasion}: {figures}")
    return figures


def settle(url: str) -> None:
    """What a live database would have done by now: hint bits, statistics, a checkpoint."""
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) deliveries")
        conn.execute("CHECKPOINT")


def floor(url: str, run_id: int) -> dict:
    """The bare INSERT ... SELECT of the run's decisions into an identically indexed table
    (the ledger's columns, indexes and generated column; its partitions' fill factor)."""
    from campaigns.store.partitions import FILLFACTOR

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS floor_deliveries"))
        conn.execute(text(f"CREATE TABLE floor_deliveries (LIKE deliveries INCLUDING ALL) WITH (fillfactor = {FILLFACTOR})"))
        columns = list(
            conn.execute(
                text(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = 'floor_deliveries' "
                    "AND is_generated = 'NEVER' ORDER BY ordinal_position"
                )
            ).scalars()
        )
    settle(url)
    listed = ", ".join(columns)
    with engine.begin() as conn:
        started = time.perf_counter()
        inserted = conn.execute(
            text(f"INSERT INTO floor_deliveries ({listed}) SELECT {listed} FROM deliveries WHERE run_id = :run"), {"run": run_id}
        ).rowcount
        seconds = time.perf_counter() - started
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE floor_deliveries"))
    engine.dispose()
    figures = {"seconds": round(seconds, 2), "rows": inserted}
    log(f"floor: {figures}")
    return figures


def make_history(url: str, template_run: int, days: int, as_of: datetime) -> dict:
    """``days`` daily occasions before ``as_of``, each a copy of ``template_run``'s
    decisions a day apart, sent where the channel's cap would have let it through."""
    from campaigns.store import partitions

    engine = create_engine(url)
    started = time.perf_counter()
    for day in range(days + 1):
        partitions.ensure_for(engine, as_of - timedelta(days=day))
    period = "CASE d.channel " + " ".join(f"WHEN '{c}' THEN {p}" for c, p in CAP_PERIOD_DAYS.items()) + " ELSE 1 END"
    with engine.begin() as conn:
        runs = [
            conn.execute(
                text(
                    "INSERT INTO campaign_runs (campaign, occasion, as_of, started_at, started_by, dry_run, state, "
                    "considered, finished_planning_at, note) "
                    "VALUES ('balance_reminder', :occasion, :at, :at, 'bench', false, 'planned', 0, :at, '') RETURNING id"
                ),
                {"occasion": f"history-{day}", "at": as_of - timedelta(days=day)},
            ).scalar_one()
            for day in range(1, days + 1)
        ]
    for day, run_id in zip(range(1, days + 1), runs, strict=True):
        at = as_of - timedelta(days=day)
        through = f"(d.member_id + {day}) % ({period}) = 0"
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO deliveries (run_id, member_id, channel, category, template, status, reason, reason_code, "
                    "cap_rule, address, holds_slot, send_at, created_at, updated_at, sent_at, attempts, provider_message_id) "
                    "SELECT :run, d.member_id, d.channel, d.category, d.template, "
                    f"CASE WHEN d.status <> 'queued' THEN d.status WHEN {through} THEN 'delivered' ELSE 'capped' END, "
                    f"CASE WHEN d.status <> 'queued' THEN d.reason WHEN {through} THEN d.reason "
                    "ELSE 'cap ' || d.channel || '/marketing' END, "
                    f"CASE WHEN d.status <> 'queued' THEN d.reason_code WHEN {through} THEN 'eligible' ELSE 'capped' END, "
                    f"CASE WHEN d.status = 'queued' AND NOT {through} THEN d.channel || '/marketing' END, "
                    f"d.address, d.status = 'queued' AND {through}, :at, :at, :at, "
                    f"CASE WHEN d.status = 'queued' AND {through} THEN CAST(:at AS timestamptz) END, "
                    f"CASE WHEN d.status = 'queued' AND {through} THEN 1 ELSE 0 END, "
                    f"CASE WHEN d.status = 'queued' AND {through} THEN 'h' || :run || '-' || d.member_id END "
                    "FROM deliveries d WHERE d.run_id = :template"
                ),
                {"run": run_id, "at": at, "template": template_run},
            )
        log(f"history: day {day} of {days}")
    with engine.begin() as conn:
        rows = conn.execute(text("SELECT count(*) FROM deliveries")).scalar_one()
    engine.dispose()
    settle(url)
    figures = {"days": days, "rows": rows, "seconds": round(time.perf_counter() - started, 1)}
    log(f"history: {figures}")
    return figures


def months(url: str) -> list[dict]:
    """The ledger's months: partition, estimated rows, bytes on disk."""
    from campaigns.store.retention import month_sizes

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE deliveries"))
    found = month_sizes(engine)
    engine.dispose()
    return found


def enforce_retention(config: Path, url: str, as_of: datetime) -> dict:
    """The shortest retention the caps allow, enforced as of ``as_of``; the months before and after."""
    import tomllib

    from campaigns.config.loading import load_settings
    from campaigns.store import retention

    data = tomllib.loads(config.read_text())
    data["ledger"] = {"retention": "64d", "reporting_horizon": "1d"}
    short = config.with_name("settings-retention.toml")
    short.write_text(__import__("tomli_w").dumps(data))
    settings = load_settings(short)
    before = months(url)
    engine = create_engine(url)
    started = time.perf_counter()
    expired = retention.enforce(engine, settings, as_of)
    seconds = time.perf_counter() - started
    engine.dispose()
    after = months(url)
    figures = {
        "retention": "64d",
        "as_of": as_of.isoformat(),
        "dropped": expired.dropped,
        "rows_removed": expired.rows,
        "seconds": round(seconds, 2),
        "months_before": before,
        "months_after": after,
        "bytes_before": sum(m["bytes"] or 0 for m in before),
        "bytes_after": sum(m["bytes"] or 0 for m in after),
    }
    log(f"retention: dropped {expired.dropped} in {seconds:.2f} s")
    return figures


def drop_run(url: str, run_id: int) -> None:
    """Forget a plan's run: its rows deleted, and a month it leaves empty truncated, so
    the next plan writes into a table as new as the floor's (after a DELETE and VACUUM
    its inserts would fill the free space of half-empty heap and index pages instead)."""
    from campaigns.store import partitions

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM deliveries WHERE run_id = :run"), {"run": run_id})
        conn.execute(text("DELETE FROM control_draws"))
        for month in partitions.existing(conn):
            if not conn.execute(text(f"SELECT EXISTS (SELECT 1 FROM {month.name})")).scalar():
                conn.execute(text(f"TRUNCATE {month.name}"))
    engine.dispose()
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute("VACUUM deliveries")


def explain_cap_lookup(config: Path, url: str, as_of: datetime) -> list[str]:
    """``EXPLAIN`` of the SMS cap lookup the planner writes for one member: its window,
    over the months a holder in it can have been decided in (``UNION ALL`` of those
    partitions), with the planner's own settings (no sequential or bitmap scans). A rule
    of one message per window is an ``EXISTS``, which stops at the first holder."""
    from sqlalchemy import and_, exists, literal, select

    from campaigns.config.loading import load_settings
    from campaigns.planning.decisions import DECIDED_AHEAD, HOLDER_COLUMNS
    from campaigns.store import partitions

    settings = load_settings(config)
    low, high = as_of - timedelta(days=30), as_of + timedelta(days=30)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        conn.execute(text("SET LOCAL enable_bitmapscan = off"))
        rows = partitions.rows_decided_between(conn, low - settings.hold_slack, datetime.now(UTC) + DECIDED_AHEAD, HOLDER_COLUMNS)
        lookup = select(
            exists(
                select(literal(1))
                .select_from(rows)
                .where(
                    and_(
                        rows.c.member_id == 42,
                        rows.c.holds_slot,
                        rows.c.category == "marketing",
                        rows.c.channel == "sms",
                        rows.c.send_at > low,
                        rows.c.send_at < high,
                    )
                )
            )
        )
        compiled = lookup.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
        lines = list(conn.execute(text(f"EXPLAIN {compiled}")).scalars())
    engine.dispose()
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--history-days", type=int, default=30)
    parser.add_argument("--skip-history", action="store_true", help="Only the floor and the plan over an empty ledger.")
    parser.add_argument("--skip-floor", action="store_true", help="Only the plan over an empty ledger (the 10M run's).")
    parser.add_argument("--repeats", type=int, default=3, help="Plans (and floors) per figure; the median is reported.")
    args = parser.parse_args()

    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="loyalcast-bench-ledger-"))
    url = fresh_database()
    config = planning_settings(folder, url)
    loyalcast(config, "db", "upgrade")
    log(f"seeding {args.members:,} members")
    seeded = seed(url, args.members)
    settle(url)
    report: dict = {
        "members": args.members,
        "seed_seconds": round(seeded, 1),
        "machine": {
            "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
        },
        "postgresql": _server_version(url),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    # Plan and floor in turns, each after a checkpoint, so both meet the same machine.
    plans, floors = [], []
    previous = None
    for turn in range(args.repeats):
        if previous is not None:
            drop_run(url, previous)
        settle(url)
        plans.append(plan(config, f"empty-{turn}", NOW + timedelta(seconds=turn)))
        previous = plans[-1]["run_id"]
        if not args.skip_floor:
            settle(url)
            floors.append(floor(url, previous))
    report["plan_empty"] = plans
    report["ratios"] = {}
    empty_seconds = median([p["plan_seconds"] for p in plans])
    if floors:
        report["floor"] = floors
        report["ratios"]["plan_over_floor"] = round(empty_seconds / median([f["seconds"] for f in floors]), 2)
    if not args.skip_history:
        report["history"] = make_history(url, previous, args.history_days, NOW)
        drop_run(url, previous)
        over = []
        for turn in range(args.repeats):
            settle(url)
            over.append(plan(config, f"over-history-{turn}", NOW + timedelta(minutes=1, seconds=turn)))
            drop_run(url, over[-1]["run_id"])
        report["plan_history"] = over
        report["ratios"]["history_over_empty"] = round(median([p["plan_seconds"] for p in over]) / empty_seconds, 2)
        report["explain_cap_lookup"] = explain_cap_lookup(config, url, NOW)
        # The oldest month of history expires once its last day is 64 days old.
        oldest = min(NOW - timedelta(days=args.history_days), datetime.now(UTC)).replace(day=1)
        expires = (oldest + timedelta(days=32)).replace(day=1) + timedelta(days=64, hours=1)
        report["retention"] = enforce_retention(config, url, expires)
    name = f"{args.members // 1000}k" if args.members < 1_000_000 else f"{args.members // 1_000_000}m"
    out = REPO / "bench" / "results" / f"ledger-{name}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
