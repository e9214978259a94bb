"""Benchmark of loyalcast web (see bench/README.md, "The web service").

1. Delivery-report ingestion: a separate load process (asyncio + aiohttp, N connections)
   posts the JSON SMS gateway's signed reports for messages in the ledger, one report per
   request (as Twilio does) and in lists of 10 (as batching gateways do), each with a
   unique event id; events/s counted over the accepted (200) answers.
2. The same load while PostgreSQL restarts: every event whose post was answered 200 must
   be in ``provider_events`` afterwards (answers are given only after the commit; during
   the restart the service answers 503, which providers retry).
3. The unsubscribe page: 100 concurrent clients GET members' links for 10 s; p50/p99.
4. The web process's peak RSS (psutil), sampled throughout.

Results print as a table and go to bench/results/web.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import multiprocessing
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import tomli_w
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DATABASE = "loyalcast_bench_web"
URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DATABASE}"
REPORT_KEY = "bench-report-key-" + "x" * 20
LINK_KEY = "bench-link-key-" + "y" * 30


def sh(*args: str) -> None:
    subprocess.run(args, check=True)


def prepare(workdir: Path, messages: int, members: int, port: int, workers: int) -> Path:
    """A fresh database with ``messages`` sent SMS rows and ``members`` members; settings."""
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{DATABASE}"'))
    admin.dispose()
    settings = tomllib_load(REPO / "settings.toml")
    settings["templates_dir"] = str(REPO / "templates")
    settings["database"] = {"url": URL, "pool_size": 20}
    settings["outbox"] = {"dir": str(workdir / "outbox")}
    settings["metrics"] = {"enabled": True}
    settings["web"] = {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}", "workers": workers}
    settings["channels"] = {
        "sms": {"transport": "http_sms", "url": "http://127.0.0.1:9/send", "report_secret_env": "BENCH_REPORT_KEY"}
    }
    path = workdir / "settings.toml"
    path.write_text(tomli_w.dumps(settings))
    env = {**os.environ, "BENCH_REPORT_KEY": REPORT_KEY, "LOYALCAST_LINK_KEY": LINK_KEY}
    subprocess.run([sys.executable, "-m", "campaigns.app.cli", "--config", str(path), "db", "upgrade"], check=True, env=env)
    engine = create_engine(URL)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO members (id, first_name, locale, tier, email, email_consent, phone, sms_consent) "
                "SELECT g, 'Member' || g, CASE WHEN g % 2 = 0 THEN 'ru' ELSE 'en' END, 'basic', "
                "'m' || g || '@example.com', true, '+7916' || lpad(g::text, 7, '0'), true FROM generate_series(1, :n) g"
            ),
            {"n": members},
        )
        conn.execute(
            text(
                "INSERT INTO deliveries (run_id, member_id, channel, category, template, status, reason, reason_code, "
                "address, holds_slot, send_at, created_at, updated_at, sent_at, attempts, provider_message_id) "
                "SELECT NULL, (g % :members) + 1, 'sms', 'marketing', 'balance_reminder', 'sent', 'eligible on sms', "
                "'eligible', '+7916' || lpad(((g % :members) + 1)::text, 7, '0'), true, now(), now(), now(), now(), 1, "
                "'gw-' || g FROM generate_series(1, :n) g"
            ),
            {"n": messages, "members": members},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE)"))
        conn.execute(text("CHECKPOINT"))
    engine.dispose()
    return path


def tomllib_load(path: Path) -> dict:
    import tomllib

    return tomllib.loads(path.read_text())


class WebProcess:
    """``loyalcast web`` in a process of its own, with its peak RSS sampled (children too)."""

    def __init__(self, config: Path, port: int) -> None:
        env = {**os.environ, "BENCH_REPORT_KEY": REPORT_KEY, "LOYALCAST_LINK_KEY": LINK_KEY}
        self.log = config.parent / "web.log"  # its access log, one line per request (a pipe would fill and block it)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "campaigns.app.cli", "--config", str(config), "web"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.port, self.peak_rss = port, 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> WebProcess:
        import urllib.request

        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("loyalcast web did not start: " + self.log.read_text()[-2000:])
        self._sampler.start()
        return self

    def _sample(self) -> None:
        root = psutil.Process(self.process.pid)
        while not self._stop.is_set():
            try:
                processes = [root, *root.children(recursive=True)]
                self.peak_rss = max(self.peak_rss, max(p.memory_info().rss for p in processes))
            except psutil.Error:
                pass
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            print("loyalcast web did not stop within 30 s of SIGTERM; killed", flush=True)
            self.process.kill()
            self.process.wait()


# --- the load process -----------------------------------------------------------------------


def _bodies(messages: int, per_request: int, requests: int, seed: int) -> list[tuple[bytes, str, list[str]]]:
    rng = random.Random(seed)
    prepared = []
    for number in range(requests):
        reports = []
        for item in range(per_request):
            event_id = f"s{seed}-r{number}-{item}"
            reports.append({"id": f"gw-{rng.randint(1, messages)}", "status": "delivered", "event_id": event_id})
        document = reports[0] if per_request == 1 else reports
        body = json.dumps(document).encode()
        signature = "sha256=" + hmac.new(REPORT_KEY.encode(), body, hashlib.sha256).hexdigest()
        prepared.append((body, signature, [r["event_id"] for r in reports]))
    return prepared


async def _ingest(url: str, bodies: list, connections: int, duration: float, out: dict) -> None:
    import aiohttp

    accepted: list[str] = []
    statuses: dict[str, int] = {}
    position = 0
    deadline = time.perf_counter() + duration
    started = time.perf_counter()

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal position
        while time.perf_counter() < deadline and position < len(bodies):
            body, signature, ids = bodies[position]
            position += 1
            try:
                async with session.post(
                    url, data=body, headers={"Content-Type": "application/json", "X-Signature": signature}
                ) as answer:
                    await answer.read()
                    statuses[str(answer.status)] = statuses.get(str(answer.status), 0) + 1
                    if answer.status == 200:
                        accepted.extend(ids)
            except (TimeoutError, aiohttp.ClientError) as exc:
                statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
                await asyncio.sleep(0.05)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(*(client(session) for _ in range(connections)))
    out["seconds"] = time.perf_counter() - started
    out["accepted"] = accepted
    out["statuses"] = statuses


def load_process(
    url: str, messages: int, per_request: int, requests: int, connections: int, duration: float, seed: int, queue
) -> None:
    bodies = _bodies(messages, per_request, requests, seed)
    out: dict = {}
    asyncio.run(_ingest(url, bodies, connections, duration, out))
    queue.put(out)


def run_load(url: str, messages: int, per_request: int, connections: int, duration: float, seed: int, during=None) -> dict:  # type: ignore[no-untyped-def]
    requests = int(12_000 * duration / per_request) + 1000
    queue: multiprocessing.Queue = multiprocessing.Queue()
    worker = multiprocessing.Process(
        target=load_process, args=(url, messages, per_request, requests, connections, duration, seed, queue)
    )
    worker.start()
    if during is not None:
        during()
    out = queue.get()
    worker.join()
    return out


async def _pages(urls: list[str], clients: int, duration: float, out: dict, think: float = 0.0) -> None:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + duration

    async def client(session: aiohttp.ClientSession, rng: random.Random) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with session.get(rng.choice(urls)) as answer:
                await answer.read()
                statuses[answer.status] = statuses.get(answer.status, 0) + 1
            latencies.append(time.perf_counter() - started)
            if think:
                await asyncio.sleep(rng.uniform(0.5 * think, 1.5 * think))

    async def staggered(session: aiohttp.ClientSession, n: int) -> None:
        rng = random.Random(n)
        await asyncio.sleep(rng.uniform(0, think))  # clients arrive spread over the first pause
        await client(session, rng)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(staggered(session, n) for n in range(clients)))
    latencies.sort()
    out.update(
        requests=len(latencies),
        per_second=len(latencies) / duration,
        p50_ms=latencies[len(latencies) // 2] * 1000,
        p99_ms=latencies[int(len(latencies) * 0.99)] * 1000,
        mean_ms=statistics.fmean(latencies) * 1000,
        statuses=statuses,
    )


def pages_process(urls: list[str], clients: int, duration: float, think: float, queue) -> None:  # type: ignore[no-untyped-def]
    out: dict = {}
    asyncio.run(_pages(urls, clients, duration, out, think))
    queue.put(out)


def member_urls(config: Path, members: int) -> list[str]:
    os.environ["LOYALCAST_LINK_KEY"] = LINK_KEY
    os.environ["BENCH_REPORT_KEY"] = REPORT_KEY
    sys.path.insert(0, str(REPO))
    from campaigns.config.loading import load_settings

    settings = load_settings(config)
    return [settings.unsubscribe_url(m, "email", "marketing") for m in random.Random(1).sample(range(1, members + 1), 2000)]


def caught_up(timeout: float = 300.0) -> float:
    """Seconds until every kept event is applied to the ledger (all name existing rows)."""
    engine = create_engine(URL)
    started = time.perf_counter()
    with engine.connect() as conn:
        while conn.execute(text("SELECT count(*) FROM provider_events WHERE applied_at IS NULL")).scalar_one():
            if time.perf_counter() - started > timeout:
                break
            time.sleep(0.1)
            conn.rollback()
    engine.dispose()
    return time.perf_counter() - started


def stored(ids: list[str]) -> int:
    if not ids:
        return 0
    engine = create_engine(URL)
    with engine.connect() as conn:
        conn.execute(text("CREATE TEMP TABLE accepted (event_key text)"))
        conn.execute(text("INSERT INTO accepted VALUES (:k)"), [{"k": k} for k in ids])
        found = conn.execute(
            text("SELECT count(*) FROM accepted a JOIN provider_events e ON e.provider = 'sms' AND e.event_key = a.event_key")
        ).scalar_one()
    engine.dispose()
    return int(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--think", type=float, default=1.0, help="seconds a page client reads before the next page")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes of loyalcast web")
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--skip-restart", action="store_true")
    args = parser.parse_args()
    workdir = Path("/tmp/loyalcast-bench-web")
    workdir.mkdir(exist_ok=True)
    print(f"seeding {args.messages:,} sent messages and {args.members:,} members ...", flush=True)
    config = prepare(workdir, args.messages, args.members, args.port, args.workers)
    web = WebProcess(config, args.port).start()
    url = f"http://127.0.0.1:{args.port}/webhooks/sms"
    results: dict = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "workers": args.workers,
        "connections": args.connections,
    }
    try:
        run_load(url, args.messages, 1, args.connections, 2.0, seed=99)  # warm-up
        for per_request in (1, 10):
            out = run_load(url, args.messages, per_request, args.connections, args.seconds, seed=per_request)
            events = len(out["accepted"])
            lag = caught_up()
            results[f"ingest_{per_request}_per_request"] = {
                "events_per_second": round(events / out["seconds"]),
                "requests_per_second": round(out["statuses"].get("200", 0) / out["seconds"]),
                "accepted_events": events,
                "stored_of_accepted": stored(out["accepted"]),
                "ledger_caught_up_seconds_after": round(lag, 2),
                "applied_per_second": round(events / (out["seconds"] + lag)),
                "statuses": out["statuses"],
            }
            print(
                f"ingestion, {per_request} per request: {events / out['seconds']:,.0f} events/s accepted; "
                f"ledger caught up {lag:.1f} s after the load ({events / (out['seconds'] + lag):,.0f} events/s applied)",
                flush=True,
            )
        if not args.skip_restart:
            cluster = sorted(os.listdir("/etc/postgresql"))[-1]

            def restart() -> None:
                time.sleep(args.seconds / 3)
                sh("pg_ctlcluster", "--skip-systemctl-redirect", cluster, "main", "restart")

            out = run_load(url, args.messages, 1, args.connections, args.seconds, seed=7, during=restart)
            results["ingest_during_database_restart"] = {
                "accepted_events": len(out["accepted"]),
                "stored_of_accepted": stored(out["accepted"]),
                "statuses": out["statuses"],
            }
            print(
                f"during a PostgreSQL restart: {len(out['accepted']):,} accepted, "
                f"{results['ingest_during_database_restart']['stored_of_accepted']:,} stored; {out['statuses']}",
                flush=True,
            )
        urls = member_urls(config, args.members)

        def pages(clients: int, seconds: float, think: float) -> dict:
            queue: multiprocessing.Queue = multiprocessing.Queue()
            process = multiprocessing.Process(target=pages_process, args=(urls, clients, seconds, think, queue))
            process.start()
            found = queue.get()
            process.join()
            return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in found.items()}

        pages(args.clients, 3.0, 0.0)  # warm-up
        # People: each client opens a page, reads it for about a second, opens the next.
        people = pages(args.clients, args.seconds, args.think)
        results["unsubscribe_page"] = {**people, "clients": args.clients, "think_seconds": args.think}
        print(
            f"unsubscribe page, {args.clients} clients reading ~{args.think:g} s per page: p50 {people['p50_ms']} ms, "
            f"p99 {people['p99_ms']} ms, {people['per_second']:,.0f}/s",
            flush=True,
        )
        # Saturation: the same clients with no pause at all (a load test, not people).
        flat = pages(args.clients, args.seconds, 0.0)
        results["unsubscribe_page_saturated"] = {**flat, "clients": args.clients, "think_seconds": 0}
        print(
            f"unsubscribe page, {args.clients} clients without pauses: p50 {flat['p50_ms']} ms, p99 {flat['p99_ms']} ms, "
            f"{flat['per_second']:,.0f}/s",
            flush=True,
        )
    finally:
        web.stop()
    results["web_peak_rss_mb"] = round(web.peak_rss / 2**20, 1)
    print(f"web process peak RSS: {results['web_peak_rss_mb']} MB")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "web.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {RESULTS / 'web.json'}")


if __name__ == "__main__":
    main()
