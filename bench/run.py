"""loyalcast's benchmark: a real campaign over N members through Redis and real
transports, next to the transport ceiling and a naive design, on the same machine at the
same moment. See bench/README.md for how to read the figures.

    python bench/run.py --members 100000 [--processes 2] [--threads 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import psutil
import redis
import tomli_w
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from campaigns.tools import demo  # noqa: E402

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
DATABASE = "loyalcast_bench"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
REFERENCE_CAP = 20_000
"""The references run on at most this many members: their throughput does not depend on N."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- database ------------------------------------------------------------------------------


BENCH_URL = PG_ADMIN.rsplit("/", 1)[0] + "/" + DATABASE
"""The benchmark database's URL."""


def fresh_database() -> str:
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{DATABASE}"'))
    admin.dispose()
    return BENCH_URL


def seed(url: str, members: int) -> float:
    """Demo members with COPY (not ORM inserts); returns seconds."""
    import psycopg

    started = time.perf_counter()
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    member_columns = [
        "id",
        "first_name",
        "locale",
        "timezone",
        "tier",
        "email",
        "phone",
        "telegram_chat_id",
        "email_consent",
        "sms_consent",
        "telegram_consent",
        "last_purchase_at",
    ]
    # One COPY at a time per connection: three connections, fed from one generator.
    with psycopg.connect(dsn) as member_conn, psycopg.connect(dsn) as balance_conn, psycopg.connect(dsn) as lot_conn:
        with (
            member_conn.cursor().copy(f"COPY members ({', '.join(member_columns)}) FROM STDIN") as members_copy,
            balance_conn.cursor().copy("COPY balances (member_id, points) FROM STDIN") as balance_copy,
            lot_conn.cursor().copy("COPY point_expirations (member_id, points, expires_at) FROM STDIN") as lot_copy,
        ):
            for member, balance, member_lots, _segments in demo.generate(members, now=NOW):
                members_copy.write_row([member[c] for c in member_columns])
                balance_copy.write_row([balance["member_id"], balance["points"]])
                for lot in member_lots:
                    lot_copy.write_row([lot["member_id"], lot["points"], lot["expires_at"]])
    # A program's tables are long-lived: vacuumed (hint bits set, visibility map built)
    # and checkpointed. Freshly copied rows are neither, and the first statements to read
    # them would pay for writing every page again, and for the checkpoint the COPY's WAL
    # triggers, in the middle of whatever is measured next.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
        conn.execute("CHECKPOINT")
    return time.perf_counter() - started


# --- processes -------------------------------------------------------------------------------


class Sampler:
    """Peak RSS per worker process and CPU (user+sys) of the whole process tree."""

    def __init__(self, root: psutil.Process) -> None:
        self.root = root
        self.peak_rss: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _run(self) -> None:
        while not self.stopped.is_set():
            self.sample()
            time.sleep(0.25)

    def sample(self) -> None:
        for process in self._tree():
            try:
                with process.oneshot():
                    rss = process.memory_info().rss
                    times = process.cpu_times()
            except psutil.Error:
                continue
            self.peak_rss[process.pid] = max(self.peak_rss.get(process.pid, 0), rss)
            self.cpu[process.pid] = times.user + times.system

    def start(self) -> Sampler:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.sample()
        self.stopped.set()
        self.thread.join()


class ServerCPU:
    """CPU seconds (user+sys) used so far by PostgreSQL (the postmaster, its live
    backends, and the backends that already exited) and by Redis on this machine.

    Read before and after a run: the difference is what the servers spent on it (plus
    anything else that used them meanwhile, which in the benchmark is nothing).
    """

    def __init__(self) -> None:
        self.postmaster = self.redis = None
        for process in psutil.process_iter(["name", "ppid"]):
            if process.info["name"] == "postgres" and process.info["ppid"] == 1:
                self.postmaster = process
            elif process.info["name"] == "redis-server":
                self.redis = process

    def read(self) -> dict[str, float]:
        figures = {"postgresql": 0.0, "redis": 0.0}
        try:
            if self.postmaster is not None:
                own = self.postmaster.cpu_times()
                figures["postgresql"] = own.user + own.system + own.children_user + own.children_system
                for child in self.postmaster.children():
                    try:
                        times = child.cpu_times()
                    except psutil.Error:
                        continue  # exited between the listing and the read: now in children_*
                    figures["postgresql"] += times.user + times.system
            if self.redis is not None:
                times = self.redis.cpu_times()
                figures["redis"] = times.user + times.system
        except psutil.Error:
            pass
        return figures


def settings_file(folder: Path, url: str, sinks: dict, transport: str, batch_size: int) -> Path:
    shipped = __import__("tomllib").loads((REPO / "settings.toml").read_text())
    shipped.update(templates_dir=str(REPO / "templates"), outbox={"dir": str(folder / "outbox")})
    shipped["database"] = {"url": url}
    shipped["broker"] = {"url": REDIS_URL}
    shipped["quiet_hours"] = {"default": "off", "telegram": "off"}
    shipped["metrics"] = {"enabled": False}
    shipped["logging"] = {"format": "text", "level": "warning"}
    shipped["delivery"] = {"batch_size": batch_size}
    if transport == "null":
        shipped["channels"] = {c: {"transport": "null"} for c in ("email", "sms", "telegram")}
    else:
        host, port = sinks["smtp"]
        shipped["channels"] = {
            "email": {
                "transport": "smtp",
                "host": host,
                "port": port,
                "security": "none",
                "from_address": "Ромашка Бонус <bonus@example.com>",
            },
            "sms": {"transport": "http_sms", "url": f"{sinks['sms']}/send", "sender": "ROMASHKA"},
            "telegram": {"transport": "telegram", "token_env": "BENCH_TELEGRAM_TOKEN", "base_url": f"{sinks['telegram']}/bot"},
        }
    path = folder / f"settings-{transport}.toml"
    path.write_text(tomli_w.dumps(shipped))
    return path


def environment(config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALCAST_")}
    env.update(LOYALCAST_CONFIG=str(config), BENCH_TELEGRAM_TOKEN="123:bench", BENCH_REDIS_URL=REDIS_URL)
    return env


def loyalcast(config: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "campaigns.app.cli", *args],
        cwd=REPO,
        env=environment(config),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"loyalcast {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def reset_ledger(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE ladder_marks, deliveries, campaign_runs, cap_locks, suppressions RESTART IDENTITY CASCADE"))
    engine.dispose()
    redis.Redis.from_url(REDIS_URL).flushdb()


def wait_until_delivered(url: str, started: float, expected: int | None = None, limit_s: float = 3600) -> float:
    """Seconds from ``started`` until every run is planned and none of its deliveries is
    ``queued`` or ``sending`` (or, with ``expected``, until that many rows are done).

    Counts go through the index of rows on their way (on ``is_open`` from migration 0010,
    on ``status`` before) and are taken once a second (ten times near the end), so the
    poll does not steal a core from the workers.
    """
    engine = create_engine(url)
    open_rows = None
    with engine.connect() as conn:
        generated = conn.execute(
            text("SELECT count(*) FROM information_schema.columns WHERE table_name = 'deliveries' AND column_name = 'is_open'")
        ).scalar_one()
    on_its_way = "is_open" if generated else "status IN ('queued', 'sending')"
    try:
        while True:
            if time.perf_counter() - started > limit_s:
                raise RuntimeError(f"not delivered within {limit_s:.0f} s")
            with engine.connect() as conn:
                # The partial index of open rows, whatever stale statistics would choose.
                conn.execute(text("SET enable_seqscan = off"))
                runs = conn.execute(text("SELECT id, state FROM campaign_runs")).all()
                ids = [run_id for run_id, _ in runs]
                if runs and all(state == "planned" for _, state in runs):
                    open_rows = conn.execute(
                        text(f"SELECT count(*) FROM deliveries WHERE run_id = ANY(:ids) AND {on_its_way}"),
                        {"ids": ids},
                    ).scalar_one()
                    if expected is not None:
                        done = conn.execute(
                            text(f"SELECT count(*) FROM deliveries WHERE run_id = ANY(:ids) AND NOT ({on_its_way})"),
                            {"ids": ids},
                        ).scalar_one()
                        if done >= expected and open_rows == 0:
                            return time.perf_counter() - started
                    elif open_rows == 0:
                        return time.perf_counter() - started
            time.sleep(0.1 if open_rows is not None and open_rows < 5_000 else 1.0)
    finally:
        engine.dispose()


LEDGER_WRITES = text(
    "SELECT pg_current_wal_lsn(), coalesce(sum(n_tup_ins), 0), coalesce(sum(n_tup_upd), 0), coalesce(sum(n_tup_hot_upd), 0) "
    "FROM pg_stat_user_tables WHERE relname = 'deliveries' OR relname LIKE 'deliveries\\_p%'"
)


def ledger_writes(url: str) -> tuple[str, int, int, int]:
    """WAL position and the ledger's inserted, updated and HOT-updated rows so far."""
    engine = create_engine(url)
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_stat_force_next_flush()"))
        lsn, inserted, updated, hot = conn.execute(LEDGER_WRITES).one()
    engine.dispose()
    return str(lsn), int(inserted), int(updated), int(hot)


def write_figures(url: str, before: tuple[str, int, int, int], after: tuple[str, int, int, int], sent: int) -> dict:
    """What the run wrote to PostgreSQL per message sent: WAL bytes, ledger row updates,
    and how many of those were HOT (in place, no new index entries)."""
    engine = create_engine(url)
    with engine.connect() as conn:
        wal = conn.execute(text("SELECT pg_wal_lsn_diff(:a, :b)"), {"a": after[0], "b": before[0]}).scalar_one()
    engine.dispose()
    updated, hot = after[2] - before[2], after[3] - before[3]
    return {
        "wal_bytes_per_message": round(float(wal) / max(sent, 1)),
        "row_updates_per_message": round(updated / max(sent, 1), 2),
        "non_hot_updates_per_message": round((updated - hot) / max(sent, 1), 2),
        "hot_share": round(hot / updated, 2) if updated else None,
    }


def loyalcast_run(url: str, config: Path, processes: int, threads: int, profile: str | None = None) -> dict:
    """The real pipeline: plan (set-based) and deliver (batches) through Redis.

    ``profile`` (a file name stem) records every worker process with py-spy while it
    delivers and writes ``bench/results/profiles/<stem>.txt``.
    """
    reset_ledger(url)
    # Worker logs go to a file: an undrained pipe would block the workers once full.
    worker = subprocess.Popen(
        [sys.executable, "-m", "campaigns.app.cli", "worker", "-p", str(processes), "-t", str(threads)],
        cwd=REPO,
        env=environment(config),
        stdout=subprocess.DEVNULL,
        stderr=open(config.parent / "worker.log", "ab"),
    )
    sampler = Sampler(psutil.Process(worker.pid)).start()
    time.sleep(3)  # let the worker processes boot before the clock starts
    cpu_before = sum(sampler.cpu.values())
    servers = ServerCPU()
    servers_before = servers.read()
    writes_before = ledger_writes(url)
    started = time.perf_counter()
    loyalcast(config, "run", "balance_reminder", "--now", NOW.isoformat())
    spies = start_profiles(worker, config.parent, profile) if profile else []
    seconds = wait_until_delivered(url, started)
    servers_after = servers.read()
    time.sleep(1)  # the backends' statistics reach the shared counters within a second
    writes_after = ledger_writes(url)
    if profile:
        write_profile(spies, profile)
    sampler.stop()
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)
    engine = create_engine(url)
    with engine.connect() as conn:
        plan_seconds = conn.execute(
            text("SELECT extract(epoch FROM finished_planning_at - started_at) FROM campaign_runs")
        ).scalar_one()
        counts = dict(conn.execute(text("SELECT status, count(*) FROM deliveries GROUP BY status")).all())
    engine.dispose()
    sent = counts.get("sent", 0)
    # The master process only supervises; the children (worker processes) do the work.
    workers = [rss for pid, rss in sampler.peak_rss.items() if pid != worker.pid]
    return {
        "plan_seconds": round(float(plan_seconds), 2),
        "end_to_end_seconds": round(seconds, 2),
        "messages": sent,
        "decisions": sum(counts.values()),
        "messages_per_second": round(sent / seconds, 1),
        "cpu_seconds_per_1000": round((sum(sampler.cpu.values()) - cpu_before) / max(sent, 1) * 1000, 3),
        # Planning included: the servers' CPU from `loyalcast run` until the last delivery.
        "server_cpu_seconds_per_1000": {
            name: round((servers_after[name] - servers_before[name]) / max(sent, 1) * 1000, 3) for name in servers_after
        },
        "peak_rss_mb_per_worker": round(max(workers or [0]) / 2**20, 1),
        # Planning included, like the servers' CPU.
        "postgresql_writes": write_figures(url, writes_before, writes_after, sent),
        "counts": counts,
    }


def start_profiles(worker: subprocess.Popen, folder: Path, stem: str) -> list[tuple[subprocess.Popen, Path]]:
    """py-spy on each worker process (the children of the ``dramatiq`` master)."""
    spies = []
    for child in psutil.Process(worker.pid).children():
        out = folder / f"{stem}-{child.pid}.collapsed"
        spy = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(child.pid),
                "--rate",
                "50",
                "--gil",
                "--format",
                "raw",
                "--output",
                str(out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        spies.append((spy, out))
    return spies


def write_profile(spies: list[tuple[subprocess.Popen, Path]], stem: str, top: int = 40) -> Path:
    """Stop the profilers; write the functions with the most samples (own and total)."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for spy, out in spies:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
        if not out.exists():
            continue
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
            if not frames or not count.isdigit():
                continue
            n = int(count)
            samples += n
            own[frames[-1]] = own.get(frames[-1], 0) + n
            for frame in set(frames):
                total[frame] = total.get(frame, 0) + n
    lines = [
        f"py-spy --gil, {samples} samples of the worker processes ({len(spies)}) while delivering",
        "",
        "own time (%)  function",
    ]
    lines += [f"{100 * n / max(samples, 1):6.1f}  {name}" for name, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    lines += ["", "total time (%)  function (with what it calls)"]
    lines += [f"{100 * n / max(samples, 1):6.1f}  {name}" for name, n in sorted(total.items(), key=lambda kv: -kv[1])[:top]]
    path = REPO / "bench" / "results" / "profiles" / f"{stem}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    log(f"profile written to {path.relative_to(REPO)}")
    return path


def naive_run(url: str, config: Path, members: int, processes: int, threads: int) -> dict:
    """One Dramatiq message per member: the design loyalcast's batches replace."""
    from dramatiq import Message
    from dramatiq.brokers.redis import RedisBroker

    reset_ledger(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        run_id = conn.execute(
            text(
                "INSERT INTO campaign_runs (campaign, occasion, as_of, started_at, started_by, dry_run, state) "
                "VALUES ('naive', 'bench', now(), now(), 'bench', false, 'planned') RETURNING id"
            )
        ).scalar_one()
        reachable = conn.execute(
            text(
                "SELECT count(*) FROM members m JOIN balances b ON b.member_id = m.id WHERE m.id <= :n AND b.points >= 100 AND "
                "((m.telegram_chat_id IS NOT NULL AND m.telegram_consent) OR (m.email IS NOT NULL AND m.email_consent) "
                "OR (m.phone IS NOT NULL AND m.sms_consent))"
            ),
            {"n": members},
        ).scalar_one()
        ids = (
            conn.execute(
                text(
                    "SELECT m.id FROM members m JOIN balances b ON b.member_id = m.id WHERE m.id <= :n AND b.points >= 100 "
                    "ORDER BY m.id"
                ),
                {"n": members},
            )
            .scalars()
            .all()
        )
    engine.dispose()
    env = environment(config)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dramatiq",
            "naive_workers",
            "--path",
            str(REPO / "bench"),
            "-p",
            str(processes),
            "-t",
            str(threads),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(config.parent / "naive.log", "ab"),
    )
    sampler = Sampler(psutil.Process(worker.pid)).start()
    time.sleep(3)
    cpu_before = sum(sampler.cpu.values())
    broker = RedisBroker(url=REDIS_URL)
    broker.declare_queue("naive")
    started = time.perf_counter()
    for member_id in ids:
        broker.enqueue(Message(queue_name="naive", actor_name="naive_send", args=(member_id, run_id), kwargs={}, options={}))
    seconds = wait_until_delivered(url, started, expected=reachable, limit_s=900)
    sampler.stop()
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)
    return {
        "members": len(ids),
        "messages": reachable,
        "end_to_end_seconds": round(seconds, 2),
        "messages_per_second": round(reachable / seconds, 1),
        "cpu_seconds_per_1000": round((sum(sampler.cpu.values()) - cpu_before) / max(reachable, 1) * 1000, 3),
    }


def ceiling_messages(config: Path, members: int) -> Path:
    """The messages the balance reminder sends to its first ``members`` members, rendered
    in advance for the transport ceiling: the same templates, channel choice (the
    campaign's first channel with a contact and consent; a fresh ledger has no caps) and
    sizes as loyalcast's run, so the ceiling pushes the same bytes without the database,
    the queue or the rendering. Written as JSON lines next to ``config``."""
    from campaigns.app import runtime
    from campaigns.tools.preview import lots_by_member, members_by_id, render_channel

    os.environ["BENCH_TELEGRAM_TOKEN"] = "123:bench"
    app = runtime.configure(config)
    campaign = app.settings.campaigns["balance_reminder"]
    segment = app.settings.segments[campaign.segment]
    ids = list(range(1, members + 1))
    found = members_by_id(app.engine, ids, "balance_reminder", NOW)
    lots = lots_by_member(app.engine, ids, NOW)
    out = config.parent / "ceiling-messages.jsonl"
    written = 0
    with out.open("w", encoding="utf-8") as file:
        for member_id in ids:
            member = found.get(member_id)
            if member is None or member.recipient.balance < (segment.min_balance or 0):
                continue
            channel = next((c for c in campaign.channels if member.contacts[c] and member.consents[c]), None)
            if channel is None:
                continue
            rendered = render_channel(app.messages, member.recipient, lots[member_id], campaign.template, channel).rendered
            if rendered is None:
                continue
            file.write(
                json.dumps(
                    {
                        "channel": channel,
                        "reference": member_id,
                        "to": member.contacts[channel],
                        "text": rendered.text,
                        "subject": rendered.subject,
                        "html": rendered.html,
                        "to_name": member.recipient.first_name,
                        "unsubscribe_url": app.settings.unsubscribe_url(member_id, channel, "marketing"),
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
            written += 1
    app.engine.dispose()
    log(f"transport ceiling: {written} messages rendered in advance from members 1-{members}")
    return out


def ceiling_run(config: Path, messages: Path, processes: int, threads: int) -> dict:
    """A bare client loop: pre-rendered messages (``ceiling_messages``) to the same sinks
    through the same transports, in as many processes and threads as the workers; no
    database, no queue, no rendering. Each process sends its share of the file."""
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--ceiling-worker", str(config), f"{messages}:{index}:{processes}", str(threads)],
            cwd=REPO,
            env=environment(config),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for index in range(processes)
    ]
    # Every process imports, reads its share and opens its transports first; then all
    # start together, so the span does not include one process's start-up.
    for child in children:
        if child.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
            raise RuntimeError("a transport ceiling process did not start; see the errors above")
    for child in children:
        child.stdin.write("go\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
    spans = [json.loads(child.communicate(timeout=1800)[0].strip().splitlines()[-1]) for child in children]
    seconds = max(span[1] for span in spans) - min(span[0] for span in spans)
    sent = sum(span[2] for span in spans)
    expected = sum(1 for _ in messages.open(encoding="utf-8"))
    # A message phonenumbers rejects fails before the provider, in loyalcast's run too.
    if sent < expected * 0.99:
        raise RuntimeError(f"transport ceiling: {sent} of {expected} messages sent; see the errors above")
    return {
        "messages": sent,
        "seconds": round(seconds, 2),
        "messages_per_second": round(sent / seconds, 1),
        "cpu_seconds_per_1000": round(sum(span[3] for span in spans) / sent * 1000, 3),
    }


def ceiling_worker(config: Path, share: str, threads: int) -> None:
    """One process of the transport ceiling. ``share`` is ``FILE:INDEX:PROCESSES``: this
    process sends every PROCESSES-th message of FILE starting at INDEX. Prints
    ``[start, end, sent, cpu]`` (epoch seconds, messages that reached a sink, CPU seconds
    of this process while sending)."""
    from campaigns.config.loading import load_settings
    from channels import build_transport
    from channels.base import OutgoingMessage
    from channels.errors import ChannelError

    path, index, processes = share.rsplit(":", 2)
    lines = Path(path).read_text(encoding="utf-8").splitlines()[int(index) :: int(processes)]
    outgoing = [OutgoingMessage(**json.loads(line)) for line in lines]
    settings = load_settings(config)
    counter = iter(outgoing)
    lock = threading.Lock()
    ready = threading.Barrier(threads + 1)
    sent = [0] * threads

    def work(slot: int) -> None:
        transports = {
            c: build_transport(c, s.transport, outbox_dir=settings.outbox_path, options=s.model_dump())
            for c, s in settings.channels.items()
        }
        ready.wait()
        while True:
            with lock:
                message = next(counter, None)
            if message is None:
                break
            try:
                transports[message.channel].send(message)
                sent[slot] += 1
            except ChannelError:
                pass  # counted as not sent
        for transport in transports.values():
            transport.close()

    pool = [threading.Thread(target=work, args=(slot,)) for slot in range(threads)]
    for thread in pool:
        thread.start()
    print("ready", flush=True)
    sys.stdin.readline()
    ready.wait()
    started, cpu_started = time.time(), time.process_time()
    for thread in pool:
        thread.join()
    print(json.dumps([started, time.time(), sum(sent), time.process_time() - cpu_started]), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--skip-references", action="store_true", help="Only loyalcast's runs.")
    parser.add_argument(
        "--runs",
        default="loyalcast,null,ceiling,naive",
        help="Comma-separated subset of loyalcast,null,ceiling,naive (a subset writes no JSON).",
    )
    parser.add_argument(
        "--profile",
        metavar="LABEL",
        help="Record the worker processes with py-spy during loyalcast's runs (bench/results/profiles/<LABEL>-<run>.txt).",
    )
    parser.add_argument("--plan-only", action="store_true", help="Seed and time planning only (no delivery).")
    parser.add_argument("--ceiling-worker", nargs=3, metavar=("CONFIG", "SHARE", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ceiling_worker:
        config, share, threads = args.ceiling_worker
        ceiling_worker(Path(config), share, int(threads))
        return 0
    if args.plan_only:
        return plan_only(args.members)

    folder = Path(tempfile.mkdtemp(prefix="loyalcast-bench-"))
    url = fresh_database()
    sinks_process = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "sinks.py")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        sinks = json.loads(sinks_process.stdout.readline())  # type: ignore[union-attr]
        real = settings_file(folder, url, sinks, "real", args.batch_size)
        null = settings_file(folder, url, sinks, "null", args.batch_size)
        loyalcast(real, "db", "upgrade")
        log(f"seeding {args.members} members with COPY")
        seed_seconds = seed(url, args.members)
        log(f"seeded in {seed_seconds:.1f} s; running loyalcast (real transports)")
        runs = set(args.runs.split(","))
        if args.skip_references:
            runs -= {"ceiling", "naive"}
        result: dict = {}
        label = args.profile
        reference_members = min(args.members, REFERENCE_CAP)
        if "loyalcast" in runs:
            # Planning alone, as the target counts it; in loyalcast's runs it overlaps
            # delivery (each chunk's batches are sent while the next chunks are planned).
            result["plan_alone"] = time_plans(real, ("alone",))["alone"]
            reset_ledger(url)
        ceilings = []
        messages_file = ceiling_messages(real, reference_members) if "ceiling" in runs else None
        if "ceiling" in runs:
            # Measured before and after loyalcast's runs: a 1,000,000-member run takes half
            # an hour, and what else the machine's host runs changes over that time.
            log("transport ceiling (before)")
            ceilings.append(ceiling_run(real, messages_file, args.processes, args.threads))
            log(f"transport ceiling (before): {ceilings[-1]}")
        if "loyalcast" in runs:
            result["loyalcast"] = loyalcast_run(url, real, args.processes, args.threads, profile=label and f"{label}-real")
            log(f"loyalcast: {result['loyalcast']}")
        if "null" in runs:
            log("running loyalcast (null transport)")
            result["null_transport"] = loyalcast_run(url, null, args.processes, args.threads, profile=label and f"{label}-null")
            log(f"null transport: {result['null_transport']}")
        if "ceiling" in runs:
            log("transport ceiling (after)")
            ceilings.append(ceiling_run(real, messages_file, args.processes, args.threads))
            log(f"transport ceiling (after): {ceilings[-1]}")
            result["transport_ceiling"] = {
                "before": ceilings[0],
                "after": ceilings[1],
                "messages_per_second": round(sum(c["messages_per_second"] for c in ceilings) / len(ceilings), 1),
            }
        if "naive" in runs:
            log(f"naive design over {reference_members} members")
            result["naive"] = naive_run(url, real, reference_members, args.processes, args.threads)
            log(f"naive: {result['naive']}")
    finally:
        sinks_process.terminate()
    complete = {"loyalcast", "null_transport"} <= set(result) and (
        args.skip_references or {"transport_ceiling", "naive"} <= set(result)
    )
    if not complete:
        print(json.dumps(result, indent=2))
        return 0

    ours = result["loyalcast"]["messages_per_second"]
    report = {
        "members": args.members,
        "seed_seconds": round(seed_seconds, 1),
        "processes": args.processes,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "machine": {
            "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": {
            name: version(name) for name in ("dramatiq", "SQLAlchemy", "psycopg", "redis", "python-telegram-bot", "requests")
        },
        "postgresql": _server_version(url),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **result,
    }
    if "transport_ceiling" in result:
        report["ratios"] = {
            "of_transport_ceiling": round(ours / result["transport_ceiling"]["messages_per_second"], 2),
            "times_naive": round(ours / result["naive"]["messages_per_second"], 1),
        }
    name = f"{args.members // 1000}k" if args.members < 1_000_000 else f"{args.members // 1_000_000}m"
    out = REPO / "bench" / "results" / f"bench-{name}.json"
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print_table(report)
    print(f"\nwritten to {out.relative_to(REPO)}")
    return 0


def plan_only(members: int) -> int:
    """Seed ``members`` and time planning the balance reminder (segment through ledger
    rows), in this process; writes bench/results/plan-<size>.json."""
    folder = Path(tempfile.mkdtemp(prefix="loyalcast-bench-"))
    url = fresh_database()
    config = settings_file(
        folder, url, {"smtp": ["127.0.0.1", 1], "sms": "http://127.0.0.1:1", "telegram": "http://127.0.0.1:1"}, "null", 500
    )
    loyalcast(config, "db", "upgrade")
    seed_seconds = seed(url, members)
    figures = time_plans(config, ("first", "second occasion (caps now bite)"))
    report = {
        "members": members,
        "seed_seconds": round(seed_seconds, 1),
        "plan": figures,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "postgresql": _server_version(url),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    name = f"{members // 1000}k" if members < 1_000_000 else f"{members // 1_000_000}m"
    out = REPO / "bench" / "results" / f"plan-{name}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def time_plans(config: Path, occasions: tuple[str, ...]) -> dict[str, dict]:
    """Plan the balance reminder once per occasion, in this process with nothing else
    running (segment through every ledger row, timed around ``plan_run``)."""
    os.environ["BENCH_TELEGRAM_TOKEN"] = "123:bench"
    from campaigns.config.loading import load_settings
    from campaigns.planning.planner import plan_run
    from campaigns.store.engine import make_engine
    from campaigns.store.runs import claim_run

    settings = load_settings(config)
    engine = make_engine(settings.database_url)
    figures = {}
    for occasion in occasions:
        run = claim_run(engine, settings, "balance_reminder", as_of=NOW, occasion=f"bench-{occasion}")
        started = time.perf_counter()
        decided = plan_run(engine, settings, run.id)
        figures[occasion] = {"plan_seconds": round(time.perf_counter() - started, 2), "decisions": decided}
        log(f"plan ({occasion}): {figures[occasion]}")
    engine.dispose()
    return figures


def _server_version(url: str) -> str:
    engine = create_engine(url)
    with engine.connect() as conn:
        value = conn.execute(text("SHOW server_version")).scalar_one()
    engine.dispose()
    return value


def print_table(report: dict) -> None:
    ours, null = report["loyalcast"], report["null_transport"]
    rows = [
        ("members", f"{report['members']:,}"),
        ("plan alone (segment through ledger rows)", f"{report['plan_alone']['plan_seconds']} s"),
        ("planning while delivering (wall time)", f"{ours['plan_seconds']} s"),
        (
            "end to end, real transports",
            f"{ours['end_to_end_seconds']} s, {ours['messages']:,} messages, {ours['messages_per_second']:,} msg/s",
        ),
        ("CPU per 1,000 messages (workers)", f"{ours['cpu_seconds_per_1000']} s"),
        ("CPU per 1,000 messages (PostgreSQL)", f"{ours['server_cpu_seconds_per_1000']['postgresql']} s"),
        ("peak RSS per worker process", f"{ours['peak_rss_mb_per_worker']} MB"),
        ("null transport end to end", f"{null['messages_per_second']:,} msg/s ({null['end_to_end_seconds']} s)"),
    ]
    if "transport_ceiling" in report:
        rows += [
            (
                "transport ceiling (mean)",
                f"{report['transport_ceiling']['messages_per_second']:,} msg/s "
                f"(before {report['transport_ceiling']['before']['messages_per_second']:,}, "
                f"after {report['transport_ceiling']['after']['messages_per_second']:,})",
            ),
            ("ceiling CPU per 1,000 messages", f"{report['transport_ceiling']['after']['cpu_seconds_per_1000']} s"),
            ("naive design", f"{report['naive']['messages_per_second']:,} msg/s"),
            ("loyalcast / ceiling", f"{report['ratios']['of_transport_ceiling']:.0%}"),
            ("loyalcast / naive", f"{report['ratios']['times_naive']}x"),
        ]
    width = max(len(label) for label, _ in rows)
    print(
        f"loyalcast benchmark ({report['machine']['cores']} cores, {report['processes']} processes x {report['threads']} threads)"
    )
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")


if __name__ == "__main__":
    sys.exit(main())
