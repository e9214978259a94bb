"""The console's benchmark: pages over a ledger of a million rows, and lift over a
million-member occasion. See bench/README.md ("The console").

    python bench/console.py --members 1000000 [--repeat 7]

Seeds the demo program into a fresh PostgreSQL database (``loyalcast_bench``), plans the
balance reminder (10% held out) and the points ladder as of 15 days ago, marks every
queued row sent over the following six hours, writes what members did since (the demo's
outcomes, set-based), starts ``loyalcast web`` with one operator and times each page
from a signed-in client: the first request (a run page's first read of its rows into
its snapshot), then ``--repeat`` requests, median and slowest; the run page again after
its snapshot has gone stale (served stale, refreshed in the background).
Writes bench/results/console.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import REPO, environment, fresh_database, log, seed, settings_file  # noqa: E402

PAGE_TARGET_MS = 300
LIFT_TARGET_S = 5
REFRESH_S = 5
PASSWORD = "bench password 1"
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
RUN_AT = NOW.replace(hour=8) - timedelta(days=15)


def plan(config: Path) -> dict[str, int]:
    """Plan the balance reminder and the ladder as of RUN_AT; ``{campaign: run id}``."""
    os.environ["BENCH_TELEGRAM_TOKEN"] = "123:bench"
    from campaigns.config.loading import load_settings
    from campaigns.planning.planner import plan_run
    from campaigns.store.engine import make_engine
    from campaigns.store.runs import claim_run

    settings = load_settings(config)
    engine = make_engine(settings.database_url)
    runs = {}
    for campaign in ("balance_reminder", "points_expiring"):
        run = claim_run(engine, settings, campaign, as_of=RUN_AT)
        started = time.perf_counter()
        decided = plan_run(engine, settings, run.id)
        log(f"planned {campaign}: {decided:,} rows in {time.perf_counter() - started:.1f} s")
        runs[campaign] = run.id
    engine.dispose()
    return runs


def deliver_and_behave(url: str) -> dict[str, int]:
    """Every queued row sent within six hours of its run; members' point movements in
    the 14 days after (messaged members redeem more), all in set SQL."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE deliveries SET status = 'sent', attempts = 1, "
                "sent_at = send_at + (random() * interval '6 hours'), updated_at = now() WHERE status = 'queued'"
            )
        )
        conn.execute(
            text(
                """
                INSERT INTO point_movements (member_id, occurred_at, kind, points)
                SELECT d.member_id, r.as_of + (random() * interval '13 days'), k.kind, round((20 + random() * 400)::numeric)
                FROM deliveries d JOIN campaign_runs r ON r.id = d.run_id
                CROSS JOIN (VALUES ('redeem', 0.24, 0.16), ('expire', 0.08, 0.12), ('earn', 0.5, 0.5)) AS k(kind, messaged, held)
                WHERE r.campaign = 'balance_reminder' AND d.channel IS NOT NULL
                  AND random() < CASE WHEN d.status = 'sent' THEN k.messaged ELSE k.held END
                """
            )
        )
        conn.execute(text("ANALYZE"))
        counts = {
            "ledger_rows": conn.execute(text("SELECT count(*) FROM deliveries")).scalar_one(),
            "point_movements": conn.execute(text("SELECT count(*) FROM point_movements")).scalar_one(),
        }
    engine.dispose()
    return counts


def start_web(config: Path, port: int) -> subprocess.Popen[bytes]:
    from campaigns.web.console.auth import hash_password

    env = environment(config)
    env["LOYALCAST_CONSOLE_USERS"] = f"bench:{hash_password(PASSWORD)}"
    web = subprocess.Popen([sys.executable, "-m", "campaigns.app.cli", "web"], cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return web
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    web.kill()
    raise RuntimeError("loyalcast web did not start")


def signed_in(base: str) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=base, timeout=120)
    page = client.get("/console/login").text
    token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    answer = client.post("/console/login", data={"csrf": token, "name": "bench", "password": PASSWORD})
    assert answer.status_code == 303, answer.text
    preview = client.get("/console/preview").text
    return client, preview.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def timed(client: httpx.Client, method: str, path: str, data: dict[str, str] | None, repeat: int) -> dict[str, float]:
    def once() -> float:
        started = time.perf_counter()
        answer = client.request(method, path, data=data)
        elapsed = time.perf_counter() - started
        if answer.status_code != 200:
            raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text[:300]}")
        return elapsed * 1000

    # The first request imports what the page needs (statsmodels for lift) and, for a
    # run, reads its million rows into the snapshot the later requests answer from.
    first = once()
    samples = [once() for _ in range(repeat)]
    return {"first_ms": round(first, 1), "median_ms": round(statistics.median(samples), 1), "max_ms": round(max(samples), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--port", type=int, default=8391)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="loyalcast-bench-console-"))
    url = fresh_database()
    config = settings_file(folder, url, {}, "null", 500)
    settings = __import__("tomllib").loads(config.read_text())
    settings["web"] = {
        **settings.get("web", {}),
        "port": args.port,
        "public_url": f"http://127.0.0.1:{args.port}",
        "console_refresh": f"{REFRESH_S}s",
    }
    config.write_text(__import__("tomli_w").dumps(settings))
    subprocess.run([sys.executable, "-m", "campaigns.app.cli", "db", "upgrade"], cwd=REPO, env=environment(config), check=True)
    log(f"seeding {args.members:,} members")
    seed(url, args.members)
    runs = plan(config)
    counts = deliver_and_behave(url)
    log(f"ledger: {counts}")

    web = start_web(config, args.port)
    try:
        client, csrf = signed_in(f"http://127.0.0.1:{args.port}")
        reminder = runs["balance_reminder"]
        member = 2
        pages = {
            "campaigns": ("GET", "/console/campaigns", None),
            f"run ({reminder}: the balance reminder)": ("GET", f"/console/runs/{reminder}", None),
            "member": ("GET", f"/console/members/{member}", None),
            "preview": ("POST", "/console/preview", {"csrf": csrf, "campaign": "balance_reminder", "member_id": str(member)}),
            "control group": ("GET", "/console/control", None),
        }
        figures = {name: timed(client, method, path, data, args.repeat) for name, (method, path, data) in pages.items()}
        for name, figure in figures.items():
            log(f"{name}: {figure}")
        lift = timed(client, "GET", "/console/lift/balance_reminder", None, max(3, args.repeat // 2))
        log(f"lift page: {lift}")
        time.sleep(REFRESH_S + 0.5)
        stale = timed(client, "GET", f"/console/runs/{reminder}", None, args.repeat)
        log(f"run page with a stale snapshot: {stale}")
    finally:
        web.terminate()
        web.wait(30)

    report = {
        "members": args.members,
        **counts,
        "pages": figures,
        "page_target_ms": PAGE_TARGET_MS,
        "pages_within_target": all(f["max_ms"] < PAGE_TARGET_MS for f in figures.values()),
        "run_page_stale_snapshot": stale,
        "lift_page": lift,
        "lift_target_s": LIFT_TARGET_S,
        "lift_within_target": lift["max_ms"] < LIFT_TARGET_S * 1000,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out = REPO / "bench" / "results" / "console.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if report["pages_within_target"] and report["lift_within_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
