"""One racing process for tests/test_cap_races.py: several threads plan overlapping
occasions of two campaigns over the same members, each occasion twice (as a
redelivered Dramatiq message would), while one more thread sends triggered marketing
messages to random members. Usage: python race_planner.py SETTINGS SEED THREADS"""

from __future__ import annotations

import random
import sys
import threading
from datetime import UTC, datetime, timedelta

from campaigns.config.loading import load_settings
from campaigns.planning import triggered
from campaigns.planning.planner import plan_run
from campaigns.store.engine import make_engine
from campaigns.store.runs import claim_run

BASE = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
MEMBERS = 2000
TRIGGERED_PER_PROCESS = 150
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

    def trigger() -> None:
        rng = random.Random(seed)
        try:
            for n in range(TRIGGERED_PER_PROCESS):
                member_id = rng.randint(1, MEMBERS)
                triggered.decide(
                    engine,
                    settings,
                    member_id,
                    "tier_upgraded",
                    {"tier_name": "Gold"},
                    f"race-{seed}-{n}",
                    "marketing",
                    now=BASE + timedelta(minutes=rng.randint(0, 60)),
                )
        except BaseException as exc:
            failures.append(exc)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)] + [threading.Thread(target=trigger)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    for failure in failures:
        print(f"{type(failure).__name__}: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
