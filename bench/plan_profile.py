"""Where a plan's time goes: the planner's steps timed over one whole plan, and the
planning process's own CPU (the profiles of "Planning" in bench/results/profiles/).

    python bench/plan_profile.py --label before    # on the members bench/ledger.py seeded

Plans the balance reminder (no holdout, as bench/ledger.py does) over the members of the
benchmark database (``loyalcast_bench``) and drops the run afterwards. Each step is timed
by wrapping the function that does it (seconds summed over the planning threads, so
the sum of a step run by two connections at once exceeds the wall time); the process's
user and system CPU say how much of the machine's two cores the planner itself took from
the database. The figures go to ``bench/results/profiles/plan-<label>.txt``.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ledger import drop_run, planning_settings, settle  # noqa: E402
from run import BENCH_URL, NOW  # noqa: E402

STEPS = {
    "campaigns.planning.planner": [
        "member_chunks",
        "run_context",
        "_plan_chunk",
        "lock_members",
        "decide_chunk",
        "renew_plan_lease",
    ],
    "campaigns.planning.decisions": [
        "_decided_before",
        "chunk_insert",
        "decision_insert",
        "_insert_then_count",
        "_count_inserted",
    ],
    "campaigns.store.partitions": ["refresh_statistics"],
}
"""The steps timed, by module: where the planner looks each of them up."""


class Steps:
    """Seconds and calls per wrapped function, summed over threads."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def wrap(self, module: Any, name: str) -> None:
        original: Callable[..., Any] = getattr(module, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[name] += time.perf_counter() - started
                    self.calls[name] += 1

        setattr(module, name, timed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="Names the output file (plan-<label>.txt).")
    args = parser.parse_args()

    url = BENCH_URL
    with create_engine(url).connect() as conn:
        members = conn.execute(text("SELECT count(*) FROM members")).scalar_one()
    if not members:
        print("no members in the benchmark database: run bench/ledger.py first", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="loyalcast-plan-profile-"))
    config = planning_settings(folder, url)
    os.environ["BENCH_TELEGRAM_TOKEN"] = "123:bench"

    import importlib

    from campaigns.config.loading import load_settings
    from campaigns.planning.planner import plan_run
    from campaigns.store.engine import make_engine
    from campaigns.store.runs import claim_run

    steps = Steps()
    for module_name, names in STEPS.items():
        module = importlib.import_module(module_name)
        for name in names:
            if hasattr(module, name):  # an earlier commit, profiled for a "before", may lack a step
                steps.wrap(module, name)
    settings = load_settings(config)
    engine = make_engine(settings.database_url)
    settle(url)
    run = claim_run(engine, settings, "balance_reminder", as_of=NOW + timedelta(days=1), occasion=f"profile-{args.label}")
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    decided = plan_run(engine, settings, run.id)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    engine.dispose()
    drop_run(url, run.id)

    lines = [
        f"plan of {members:,} members: {decided:,} decisions in {wall:.2f} s "
        f"({settings.delivery.plan_connections} connections, chunks of {settings.delivery.plan_chunk_size:,})",
        f"planner process CPU: user {after.ru_utime - before.ru_utime:.2f} s, system {after.ru_stime - before.ru_stime:.2f} s",
        "",
        "seconds (summed over threads)  calls  step",
    ]
    for name, seconds in sorted(steps.seconds.items(), key=lambda item: -item[1]):
        lines.append(f"{seconds:29.3f}  {steps.calls[name]:5d}  {name}")
    report = "\n".join(lines) + "\n"
    out = REPO / "bench" / "results" / "profiles" / f"plan-{args.label}.txt"
    out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
