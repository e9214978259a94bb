"""Small builders for test data in the program's tables (plain SQL inserts)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, select
from typer.testing import CliRunner

from campaigns.app.cli import app as cli_app
from campaigns.store.models import balances, deliveries, members, point_expirations

UTC = UTC


MEMBER_DEFAULTS: dict[str, Any] = {
    "first_name": "Member",
    "locale": "ru",
    "timezone": "Europe/Moscow",
    "tier": "basic",
    "email": None,
    "phone": None,
    "telegram_chat_id": None,
    "email_consent": False,
    "sms_consent": False,
    "telegram_consent": False,
    "viber_consent": False,
    "whatsapp_consent": False,
    "last_purchase_at": datetime(2026, 1, 1, tzinfo=UTC),
}
"""A member's columns when a test does not say otherwise."""


def add_member(engine: Engine, member_id: int, *, points: float = 500, **fields: Any) -> None:
    row = {**MEMBER_DEFAULTS, "id": member_id, "first_name": f"Member{member_id}", **fields}
    with engine.begin() as conn:
        conn.execute(insert(members), [row])
        conn.execute(insert(balances), [{"member_id": member_id, "points": points}])


def add_expiration(engine: Engine, member_id: int, points: float, expires_at: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(insert(point_expirations), [{"member_id": member_id, "points": points, "expires_at": expires_at}])


def ledger(engine: Engine, run_id: int | None = None) -> dict[int, tuple[str | None, str, str]]:
    """``{member_id: (channel, status, reason)}`` of one run (or of every row)."""
    query = select(deliveries.c.member_id, deliveries.c.channel, deliveries.c.status, deliveries.c.reason)
    if run_id is not None:
        query = query.where(deliveries.c.run_id == run_id)
    with engine.connect() as conn:
        return {row.member_id: (row.channel, row.status, row.reason) for row in conn.execute(query)}


def cli(config: Any, *args: str, exit_code: int = 0) -> Any:
    """Invoke the loyalcast CLI in this process; fail the test on another exit code."""
    result = CliRunner().invoke(cli_app, ["--config", str(config), *args], catch_exceptions=False)
    assert result.exit_code == exit_code, result.output
    return result


def run_json(config: Any, campaign: str, *extra: str, exit_code: int = 0) -> dict[str, Any]:
    output = cli(config, "run", campaign, "--json", *extra, exit_code=exit_code).stdout
    return json.loads(output[output.index("{") :])


def add_members(engine: Engine, rows: list[dict[str, Any]], *, points: float = 500) -> None:
    """Bulk insert of members (each dict as for ``add_member``) with the same balance."""
    defaults = MEMBER_DEFAULTS
    with engine.begin() as conn:
        conn.execute(insert(members), [{**defaults, **row} for row in rows])
        conn.execute(insert(balances), [{"member_id": row["id"], "points": points} for row in rows])


def decided(engine: Engine, run_id: int) -> dict[int, Any]:
    """``{member_id: row}`` of a run's ledger rows, with every column."""
    with engine.connect() as conn:
        return {row.member_id: row for row in conn.execute(select(deliveries).where(deliveries.c.run_id == run_id))}


def subprocess_env(config: Any = None) -> dict[str, str]:
    """This process's environment without loyalcast's variables, plus ``LOYALCAST_CONFIG``."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALCAST_")}
    if config is not None:
        env["LOYALCAST_CONFIG"] = str(config)
    return env


def fake_channels(providers: dict[str, Any], **extra: dict[str, Any]) -> dict[str, Any]:
    """``[channels]`` sections pointing the real transports at the fakes in ``providers``
    (the Telegram token comes from ``LC_TG_TOKEN``); ``extra`` merges into a channel's."""
    smtp, sms, telegram = providers["smtp"], providers["sms"], providers["telegram"]
    sections: dict[str, dict[str, Any]] = {
        "email": {
            "transport": "smtp",
            "host": smtp.address[0],
            "port": smtp.address[1],
            "security": "none",
            "from_address": "Ромашка Бонус <bonus@example.com>",
        },
        "sms": {"transport": "http_sms", "url": f"{sms.url}/send", "sender": "ROMASHKA"},
        "telegram": {"transport": "telegram", "token_env": "LC_TG_TOKEN", "base_url": f"{telegram.url}/bot"},
    }
    for channel, changes in extra.items():
        sections[channel] = {**sections[channel], **changes}
    return sections


def loyalcast_process(config: Any, *args: str, timeout: float = 120) -> Any:
    """Run the loyalcast CLI as a process of its own; fail the test on a non-zero exit."""
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run(
        [sys.executable, "-m", "campaigns.app.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=timeout,
        env=subprocess_env(config),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def members_a_third_per_channel(count: int) -> list[dict[str, Any]]:
    """Members 1..count (for ``add_members``), each reachable on one channel in turn:
    Telegram chat ``10000 + id``, email ``m<id>@example.com``, phone ``+7916<id>``."""
    contacts = (
        lambda i: {"telegram_chat_id": 10_000 + i, "telegram_consent": True},
        lambda i: {"email": f"m{i}@example.com", "email_consent": True},
        lambda i: {"phone": f"+7916{i:07d}", "sms_consent": True},
    )
    return [{"id": i, **contacts[i % 3](i)} for i in range(1, count + 1)]


def fake_providers(faults: Any) -> Iterator[dict[str, Any]]:
    """Start the fake SMTP server, SMS gateway and Bot API sharing ``faults``; yield them
    (and ``faults``) by name, stop them afterwards. For a fixture to ``yield from``."""
    from channels.fakes import FakeSmsGateway, FakeSmtpServer, FakeTelegramApi

    servers = {
        "smtp": FakeSmtpServer(faults=faults).start(),
        "sms": FakeSmsGateway(faults=faults).start(),
        "telegram": FakeTelegramApi(faults=faults).start(),
    }
    try:
        yield {**servers, "faults": faults}
    finally:
        for server in servers.values():
            server.stop()


def eventually(read: Any, expected: Any, timeout: float = 10.0) -> Any:
    """``read()`` once it returns ``expected`` (the web service applies providers'
    events to the ledger moments after it has kept them); the last value otherwise,
    for the test's assertion to show."""
    import time

    deadline = time.monotonic() + timeout
    value = read()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value
