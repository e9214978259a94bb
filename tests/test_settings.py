"""Settings: every problem is reported with its key path, before anything runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SHIPPED_SETTINGS

from campaigns.config.loading import load_settings
from campaigns.config.values import parse_duration
from campaigns.errors import ConfigError


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return caught.value.problems


def test_shipped_settings_are_valid() -> None:
    # Given the settings file in the repository
    settings = load_settings(SHIPPED_SETTINGS)
    # Then it is the embedded default: SQLite next to it, memory broker, outbox transports
    assert settings.database_url.startswith("sqlite:///") and settings.database_url.endswith("var/loyalcast.db")
    assert settings.broker_url == "memory://"
    assert {settings.channel(c).transport for c in ("email", "sms", "telegram")} == {"outbox"}
    assert [r.name for r in settings.caps] == [
        "sms/marketing: 1 per 30d",
        "email/marketing: 1 per 14d",
        "telegram/marketing: 1 per 7d",
        "email/content: 1 per 7d",
        "sms/expiry: at least 3d apart",
    ]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"campaigns": {"balance_reminder": {"channels": ["telegram", "sms2"]}}},
            "campaigns.balance_reminder.channels[1]: unknown channel 'sms2' (known: email, sms, telegram, viber, whatsapp)",
        ),
        (
            {"campaigns": {"balance_reminder": {"schedule": "61 * * * *"}}},
            "campaigns.balance_reminder.schedule: invalid cron expression '61 * * * *'",
        ),
        (
            {"campaigns": {"balance_reminder": {"segment": "vip"}}},
            "campaigns.balance_reminder.segment: unknown segment 'vip' (known: has_balance, has_points, sleeping)",
        ),
        (
            {"campaigns": {"balance_reminder": {"template": "no_such_template"}}},
            "campaigns.balance_reminder.template: template 'no_such_template' does not exist",
        ),
        (
            {"campaigns": {"win_back": {"channels": ["sms"]}}},
            "campaigns.win_back.channels[0]: template 'win_back' has no sms.txt for channel 'sms'",
        ),
        ({"caps": [{"channel": "sms", "max": 0, "per": "30d"}]}, "caps[0].max: Input should be greater than or equal to 1"),
        ({"caps": [{"channel": "sms", "max": 1, "per": "-3d"}]}, "caps[0].per: invalid duration '-3d'"),
        ({"program": {"timezone": "Mars/Olympus"}}, "program.timezone: unknown time zone 'Mars/Olympus'"),
        ({"segments": {"has_balance": {"min_balanse": 5}}}, "segments.has_balance.min_balanse: unknown key"),
    ],
)
def test_each_bad_key_is_named_on_one_line(write_settings, changes, expected) -> None:
    # Given settings with exactly one mistake
    path = write_settings(changes)
    # When they are loaded
    problems = problems_of(path)
    # Then the only problem starts with the key path and says what is wrong
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems


def test_all_problems_are_reported_at_once(write_settings) -> None:
    path = write_settings(
        {
            "campaigns": {
                "balance_reminder": {"channels": ["pigeon"], "schedule": "every day"},
                "win_back": {"segment": "nobody"},
            }
        }
    )
    problems = problems_of(path)
    assert len(problems) == 3
    assert {p.split(":")[0] for p in problems} == {
        "campaigns.balance_reminder.channels[0]",
        "campaigns.balance_reminder.schedule",
        "campaigns.win_back.segment",
    }


def test_secrets_come_from_the_environment_variable_the_file_names(write_settings, monkeypatch) -> None:
    # Given a database URL that only an environment variable holds
    path = write_settings({"database": {"url_env": "LC_TEST_DB"}})
    text = path.read_text().replace('url = "sqlite', 'unused = "sqlite')
    path.write_text(text.replace("unused = ", "# "))
    # When the variable is missing, the key naming it is the problem
    monkeypatch.delenv("LC_TEST_DB", raising=False)
    assert problems_of(path) == ["database.url_env: environment variable LC_TEST_DB is not set"]
    # When it is set, it is the URL
    monkeypatch.setenv("LC_TEST_DB", "postgresql+psycopg://app@db.internal/loyalty")
    assert load_settings(path).database_url == "postgresql+psycopg://app@db.internal/loyalty"


def test_a_password_in_the_file_is_refused(write_settings) -> None:
    path = write_settings({"database": {"url": "postgresql+psycopg://app:s3cret@db/loyalty"}})
    assert problems_of(path)[0].startswith("database.url: contains a password")


def test_missing_file_and_broken_toml(tmp_path) -> None:
    assert problems_of(tmp_path / "absent.toml")[0].startswith("<file>: settings file")
    broken = tmp_path / "broken.toml"
    broken.write_text("[program\nname = 1\n")
    assert problems_of(broken)[0].startswith("<file>: not valid TOML")


@pytest.mark.parametrize(("text", "days", "seconds"), [("30d", 30, 0), ("2w", 14, 0), ("12h", 0, 43200), ("90m", 0, 5400)])
def test_durations(text, days, seconds) -> None:
    parsed = parse_duration(text)
    assert (parsed.days, parsed.seconds) == (days, seconds)


def test_cli_exits_2_with_one_line_per_problem_and_no_traceback(write_settings) -> None:
    # Given a settings file with an unknown channel
    path = write_settings({"campaigns": {"balance_reminder": {"channels": ["email", "sms2"]}}})
    # When any command runs with it
    env = {k: v for k, v in os.environ.items() if k != "LOYALCAST_CONFIG"}
    done = subprocess.run(
        [sys.executable, "-m", "campaigns.app.cli", "--config", str(path), "report"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    # Then it exits 2 and prints exactly one line naming the key, and no traceback
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    known = "email, sms, telegram, viber, whatsapp"
    assert lines == [f"{path}: campaigns.balance_reminder.channels[1]: unknown channel 'sms2' (known: {known})"]
    assert "Traceback" not in done.stderr


def test_config_file_from_environment_variable(write_settings, monkeypatch) -> None:
    path = write_settings({"program": {"name": "Env Program"}})
    monkeypatch.setenv("LOYALCAST_CONFIG", str(path))
    assert load_settings().program.name == "Env Program"
