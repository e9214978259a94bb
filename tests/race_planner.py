"""One racing process for tests/test_cap_races.py: several threads plan overlapping
occasions of two campaigns over the same members, each occasion twice (as a
redelivered Dramatiq message would). Usage: python race_planner.py SETTINGS SEED THREADS"""

from __future__ import annotations

import random
import sys
import threading
from datetime import datetime, timedelta, timezone

from campaigns.db import make_engine
from campaigns.planner import claim_run, plan_run
from campaigns.settings import load_settings

BASE = datetime(2026, 6, 1, 9, 0, tzinfo=timezone.utc)
JOBS = [(campaign, f"o{k}", BASE + timedelta(minutes=17 * k)) for campaign in ("sms_first", "email_first") for k in range(3)]


def main(config: str, seed: int, threads: int) -> int:
    settings = load_settings(config)
    engine = make_engine(settings.database_url)
    failures: list[BaseException] = []

    def work(number: int) -> None:
        order = JOBS * 2
        random.Random(seed * 1000 + number).shuffle(order)
        try:
            for campaign, occasion, as_of in order:
                run = claim_run(engine, settings, campaign, as_of=as_of, occasion=occasion, started_by=f"race-{seed}")
                plan_run(engine, settings, run.id)
        except BaseException as exc:  # reported through the exit code
            failures.append(exc)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    for failure in failures:
        print(f"{type(failure).__name__}: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
