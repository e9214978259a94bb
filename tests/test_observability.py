"""Metrics and logs: Prometheus counters after a run; no personal data in log lines."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from conftest import REPO
from helpers import add_member
from typer.testing import CliRunner

from campaigns import logs
from campaigns.app import runtime
from campaigns.app.cli import app as cli_app
from campaigns.logs import mask


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_metrics_endpoint_answers_with_our_counters(write_settings, pg_url, redis_url, tmp_path) -> None:
    # Given a worker process exporting metrics on a free port
    port = free_port()
    config = write_settings(
        {
            "database": {"url": pg_url},
            "broker": {"url": redis_url},
            "metrics": {"enabled": True, "port": port},
            "quiet_hours": {"default": "off", "telegram": "off"},
        }
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOYALCAST_", "dramatiq_prom"))}
    env["LOYALCAST_CONFIG"] = str(config)
    env["dramatiq_prom_db"] = str(tmp_path / "prometheus")

    def loyalcast(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "campaigns.app.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    loyalcast("db", "upgrade")
    loyalcast("demo", "seed", "--members", "60")
    worker = subprocess.Popen(
        [sys.executable, "-m", "campaigns.app.cli", "worker", "-p", "1", "-t", "2"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # When a campaign runs through it
        loyalcast("run", "balance_reminder", "--wait")
        # Then the metrics endpoint answers with Dramatiq's and loyalcast's counters
        body = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "loyalcast_delivery_outcomes_total" not in body:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                time.sleep(0.5)
        assert 'loyalcast_decisions_total{campaign="balance_reminder"' in body, body[:2000]
        assert 'loyalcast_delivery_outcomes_total{channel="email",status="sent"}' in body
        assert "loyalcast_provider_latency_seconds_bucket" in body
        assert "dramatiq_messages_total" in body
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)


def test_log_lines_never_hold_a_full_address(configured) -> None:
    # Given JSON logs and members whose addresses (one of them broken) appear in sends
    application = configured({"quiet_hours": {"default": "off", "telegram": "off"}})
    config = runtime.config_file()
    add_member(application.engine, 1, email="anna.petrova@example.com", email_consent=True)
    add_member(application.engine, 2, email="broken-address", email_consent=True, phone="+79161234567")
    add_member(application.engine, 3, phone="+79161234568", sms_consent=True)
    try:
        result = CliRunner().invoke(
            cli_app,
            ["--config", str(config), "--log-json", "--verbose", "run", "balance_reminder", "--now", "2026-11-23T12:00+03:00"],
        )
    finally:
        logs.configure("text", "WARNING")
    assert result.exit_code == 0, result.output
    raw = result.stderr
    lines = [json.loads(line) for line in raw.splitlines() if line.startswith("{")]
    sends = [line for line in lines if "delivery_id" in line]
    # Then every send has a line with its outcome, and no line holds an address or a text
    assert {line["status"] for line in sends} == {"sent", "failed"}
    assert {line["to"] for line in sends} == {"a***@e***.com", "+791*******68", "broken-address"}
    for secret in ("anna.petrova@example.com", "79161234567", "79161234568", "баллов"):
        assert secret not in raw


def test_mask() -> None:
    assert mask("to anna.petrova@mail.ru and +79161234567") == "to a***@m***.ru and +791*******67"
    assert mask("delivery 123456 of run 42") == "delivery 123456 of run 42"


def test_the_bot_token_never_reaches_the_logs(tmp_path) -> None:
    # Given INFO logging and a Telegram send (HTTP clients log request URLs at INFO, and
    # a Bot API URL carries the token)
    import io
    import os

    from channels import build_transport
    from channels.base import OutgoingMessage
    from channels.fakes import FakeTelegramApi

    stream = io.StringIO()
    server = FakeTelegramApi().start()
    os.environ["LC_TOKEN_UNDER_TEST"] = "987654:SECRET-TOKEN"
    try:
        logs.configure("json", "INFO", stream)
        transport = build_transport(
            "telegram",
            "telegram",
            outbox_dir=tmp_path,
            options={"token_env": "LC_TOKEN_UNDER_TEST", "base_url": f"{server.url}/bot"},
        )
        transport.send(OutgoingMessage(channel="telegram", reference=1, to="42", text="hi"))
    finally:
        logs.configure("text", "WARNING")
        server.stop()
    assert len(server.messages) == 1
    assert "SECRET-TOKEN" not in stream.getvalue()
