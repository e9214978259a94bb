"""The ledger's closed sets and the channel specs every layer reads."""

from __future__ import annotations

import ast
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from campaigns.planning.planner import plan_run
from campaigns.store.ledger import ReasonCode, Status
from campaigns.store.models import deliveries
from campaigns.store.runs import RunState, claim_run, load_run
from campaigns.tools import demo
from channels.specs import CHANNELS, UnknownChannel, channel_spec

REPO = Path(__file__).resolve().parent.parent
START = datetime(2026, 3, 2, 9, 0, tzinfo=timezone(timedelta(hours=3)))


def test_every_decision_carries_a_closed_reason_code_and_caps_name_their_rule(configured) -> None:
    # Given demo members and a campaign planned on two days in a row (the SMS and email
    # caps are full the second day for whoever got one the first)
    application = configured({"quiet_hours": {"default": "off", "telegram": "off"}})
    engine, settings = application.engine, application.settings
    demo.seed(engine, 300, now=START)
    first = claim_run(engine, settings, "balance_reminder", as_of=START)
    plan_run(engine, settings, first.id)
    with engine.begin() as conn:  # as if the first day's messages had been sent
        conn.execute(deliveries.update().where(deliveries.c.status == "queued").values(status="sent"))
    second = claim_run(engine, settings, "balance_reminder", as_of=START + timedelta(days=1))

    # When the second day is planned
    plan_run(engine, settings, second.id)

    # Then every row of both runs has a code from the closed set that fits its status,
    # and every capped row names the rule that capped it
    with engine.connect() as conn:
        rows = conn.execute(
            select(deliveries.c.run_id, deliveries.c.status, deliveries.c.reason_code, deliveries.c.cap_rule)
        ).all()
    codes = {code.value for code in ReasonCode}
    assert rows and all(row.reason_code in codes for row in rows)
    by_status = Counter((row.status, row.reason_code) for row in rows)
    assert by_status[(Status.CAPPED.value, ReasonCode.CAPPED.value)] > 0
    rule_names = {rule.name for rule in settings.caps}
    for row in rows:
        if row.status == Status.CAPPED.value:
            assert row.reason_code == ReasonCode.CAPPED.value and row.cap_rule in rule_names
        elif row.status in (Status.NO_CONTACT.value, Status.NO_CONSENT.value, Status.SUPPRESSED.value):
            assert row.reason_code == row.status and row.cap_rule is None
        elif row.status in (Status.QUEUED.value, Status.SENT.value):
            assert row.reason_code == ReasonCode.ELIGIBLE.value
    assert load_run(engine, second.id).state is RunState.PLANNED


def test_a_channel_no_spec_describes_fails_loudly() -> None:
    with pytest.raises(UnknownChannel) as caught:
        channel_spec("fax")
    assert str(caught.value) == f"unknown channel 'fax' (known: {', '.join(sorted(CHANNELS))})"


def test_every_spec_names_real_member_columns_and_distinct_template_files() -> None:
    from campaigns.store.models import members

    parts = [part for spec in CHANNELS.values() for part in spec.parts]
    assert len(parts) == len(set(parts))
    for spec in CHANNELS.values():
        assert spec.contact in members.c and spec.consent in members.c, spec.name
        assert all(part.startswith(f"{spec.name}.") for part in spec.parts)


def test_the_library_never_imports_the_worker_entry_point() -> None:
    # workers.py imports the library; the library importing it back would be a cycle
    offenders = []
    for path in [*REPO.glob("campaigns/**/*.py"), *REPO.glob("channels/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name == "workers" or name.startswith("workers.") for name in names):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
