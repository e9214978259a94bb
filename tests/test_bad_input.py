"""Bad input never hurts: broken settings, hostile templates and corrupted member rows
each give one clear line (or a recorded reason), and everything else goes on."""

from __future__ import annotations

import email
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import REPO, SHIPPED_SETTINGS
from corpus.settings_cases import CASES as SETTINGS_CASES
from corpus.template_cases import CASES as TEMPLATE_CASES
from helpers import MEMBER_DEFAULTS, cli, subprocess_env
from sqlalchemy import insert, select

from campaigns.app import runtime
from campaigns.config.loading import load_settings
from campaigns.config.sections import RenderingSettings
from campaigns.delivery.rendering import Renderer
from campaigns.errors import ConfigError, TemplateError
from campaigns.store import schema
from campaigns.store.models import UTCDateTime, balances, deliveries, members, point_expirations, suppressions
from channels.smstext import measure

# --- settings ---------------------------------------------------------------------------


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return caught.value.problems


@pytest.fixture
def settings_folder(tmp_path: Path) -> Path:
    (tmp_path / "templates").symlink_to(REPO / "templates")
    return tmp_path


def test_the_settings_corpus_is_large() -> None:
    assert len(SETTINGS_CASES) >= 100
    assert len({name for name, *_ in SETTINGS_CASES}) == len(SETTINGS_CASES)


@pytest.mark.parametrize(("name", "old", "new", "expected"), SETTINGS_CASES, ids=[case[0] for case in SETTINGS_CASES])
def test_each_broken_settings_file_gives_one_line(settings_folder: Path, name: str, old: str, new: str, expected: str) -> None:
    # Given the shipped settings with one mistake
    shipped = SHIPPED_SETTINGS.read_text(encoding="utf-8")
    assert old in shipped, f"{name}: the shipped settings no longer contain {old!r}"
    path = settings_folder / "settings.toml"
    path.write_text(shipped.replace(old, new, 1), encoding="utf-8")
    # When they are loaded, Then exactly one line names the place and the problem
    assert _problems(path) == [expected.replace("{dir}", str(settings_folder))]


def test_unreadable_settings_files_give_one_line(tmp_path: Path) -> None:
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\x00\x9f\x92\x96 not text")
    assert _problems(binary) == ["<file>: not UTF-8 text (byte 0x9f at offset 1)"]
    assert _problems(tmp_path) == [f"<file>: {str(tmp_path)!r} is a folder, not a settings file"]
    missing = tmp_path / "nope.toml"
    assert _problems(missing) == [f"<file>: settings file {str(missing)!r} not found (use --config or LOYALCAST_CONFIG)"]


def _loyalcast(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (``main``: its exit codes and one-line errors) in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "campaigns.app.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**subprocess_env(), **(env or {})},
        cwd=REPO,
    )


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_broken_settings_file_exits_2_with_one_line_and_no_traceback(settings_folder: Path) -> None:
    path = settings_folder / "settings.toml"
    path.write_text(SHIPPED_SETTINGS.read_text().replace('per = "30d"', 'per = "99999999999d"', 1), encoding="utf-8")
    result = _loyalcast(path, "check")
    assert result.returncode == 2
    assert _one_line(result) == f"{path}: caps[0].per: duration '99999999999d' is too long (at most 3660d)"


def test_an_unreachable_database_is_one_line_with_its_key_and_a_masked_password(write_settings) -> None:
    # Given a database URL (in the environment variable the shipped settings name) that nothing answers
    path = write_settings({"database": {"url_env": "LOYALCAST_DATABASE_URL"}})
    url = "postgresql+psycopg://loyalcast:s3cret@127.0.0.1:1/loyalcast"
    # When any command needs it
    result = _loyalcast(path, "report", env={"LOYALCAST_DATABASE_URL": url})
    # Then one line names the key and the URL, never the password
    assert result.returncode == 2
    key = "database.url_env (LOYALCAST_DATABASE_URL)"
    assert _one_line(result).startswith(f"error: {key}: cannot reach postgresql+psycopg://loyalcast:***@127.0.0.1:1/loyalcast: ")
    assert "s3cret" not in result.stderr + result.stdout


def test_an_unreachable_broker_during_run_is_one_line_and_leaves_the_run_for_the_reconciler(write_settings) -> None:
    # Given a database with members and a Redis URL nothing answers
    path = write_settings({"broker": {"url": "redis://:pw@127.0.0.1:1/0"}})
    assert _loyalcast(path, "db", "upgrade").returncode == 0
    assert _loyalcast(path, "demo", "seed", "--members", "20").returncode == 0
    # When a campaign is run
    result = _loyalcast(path, "run", "balance_reminder")
    # Then one line says what is unreachable and what became of the run
    assert result.returncode == 2
    assert _one_line(result).startswith("error: broker.url: cannot reach redis://:***@127.0.0.1:1/0: ")
    assert result.stderr.strip().endswith(
        "run 1 stays planning: the reconciler (`loyalcast scheduler`) plans it once the broker is back"
    )


def test_commands_that_contact_no_provider_need_no_secrets(write_settings) -> None:
    # Given Telegram and SMS through real providers whose secrets are not in the environment
    path = write_settings(
        {
            "channels": {
                "telegram": {"transport": "telegram", "token_env": "LC_UNSET_TOKEN"},
                "sms": {"transport": "http_sms", "url": "http://127.0.0.1:1/send", "auth_env": "LC_UNSET_AUTH"},
            }
        }
    )
    # When a marketer prepares and checks
    for args in (("db", "upgrade"), ("demo", "seed", "--members", "20"), ("check",), ("plan", "balance_reminder"), ("report",)):
        result = _loyalcast(path, *args)
        assert result.returncode in (0, 1), result.stderr  # report: "no campaign has run yet"
        assert "LC_UNSET" not in result.stderr and "Traceback" not in result.stderr
    # Then only sending asks for them, naming each key
    result = _loyalcast(path, "run", "balance_reminder")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"{path}: channels.sms.auth_env: environment variable LC_UNSET_AUTH is not set",
        f"{path}: channels.telegram.token_env: environment variable LC_UNSET_TOKEN is not set",
    ]


def test_the_fakes_example_works_exactly_as_written(tmp_path: Path) -> None:
    # Given the commands examples/settings.fakes.toml lists, run from a copy of the repository's layout
    example = REPO / "examples" / "settings.fakes.toml"
    lines = [line.removeprefix("#").strip() for line in example.read_text().splitlines() if line.startswith("#   ")]
    commands: list[str] = []
    for line in lines:
        if commands and commands[-1].endswith("\\"):
            commands[-1] = commands[-1][:-1] + " " + line
        else:
            commands.append(line)
    assert commands[0] == ".venv/bin/loyalcast fakes"
    work = tmp_path / "repo"
    (work / "examples").mkdir(parents=True)
    (work / "examples" / "settings.fakes.toml").write_text(example.read_text())
    (work / "templates").symlink_to(REPO / "templates")
    (work / ".venv").symlink_to(REPO / ".venv")
    env = {**subprocess_env(), "PATH": os.environ.get("PATH", "")}
    fakes = subprocess.Popen(
        commands[0], shell=True, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        _wait_for_port(8081)
        # When each of the other commands runs as written
        for command in commands[1:]:
            result = subprocess.run(command, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=180)
            # Then each succeeds
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        report = result.stdout
    finally:
        os.killpg(fakes.pid, signal.SIGTERM)  # the shell and the fakes it started
        fakes.wait(timeout=20)
    assert "sent" in report
    engine = sa.create_engine(f"sqlite:///{work / 'var-fakes' / 'loyalcast.db'}")
    with engine.connect() as conn:
        statuses = set(conn.execute(select(deliveries.c.status)).scalars())
    engine.dispose()
    assert "sent" in statuses and "failed" not in statuses


def _wait_for_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}")


# --- templates --------------------------------------------------------------------------


def test_the_template_corpus_is_large() -> None:
    assert len(TEMPLATE_CASES) >= 25


def test_each_hostile_template_gives_one_line_within_its_budget(tmp_path: Path) -> None:
    # Given hostile templates (runaway loops, huge strings, recursion, sandbox escapes, errors)
    for name, body, _ in TEMPLATE_CASES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "sms.txt").write_text(body, encoding="utf-8")
    settings = load_settings(SHIPPED_SETTINGS)
    renderer = Renderer(tmp_path, settings.program, RenderingSettings(time_limit="1s"))
    context = {
        "locale": "ru",
        "timezone": "Europe/Moscow",
        "now": datetime.now(UTC),
        "member": {"first_name": "A"},
        "balance": 5,
        "expiring": {"nearest_date": None},
    }
    for name, _, expected in TEMPLATE_CASES:
        started = time.monotonic()
        # When each renders
        with pytest.raises(TemplateError) as caught:
            renderer.render(name, "sms", context)
        # Then it fails with its one line, naming file (and line), within the time limit
        assert str(caught.value) == expected.replace("{name}", name).replace("{dir}", str(tmp_path)), name
        assert time.monotonic() - started < 3, name


def _hostile(write_settings, database_url: str, template_dir: Path, sms: str, locale: str = "en") -> runtime.App:
    """Settings whose balance_reminder SMS is ``sms`` for members of ``locale`` (the
    others keep the shipped text), over SMS only."""
    for item in (REPO / "templates" / "balance_reminder").rglob("*"):
        target = template_dir / "balance_reminder" / item.relative_to(REPO / "templates" / "balance_reminder")
        if item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(item.read_bytes())
    for other in ("points_expiring", "win_back", "points_credited", "tier_upgraded"):
        (template_dir / other).symlink_to(REPO / "templates" / other)
    (template_dir / "balance_reminder" / locale / "sms.txt").write_text(sms, encoding="utf-8")
    path = write_settings(
        {
            "templates_dir": str(template_dir),
            "database": {"url": database_url},
            "rendering": {"time_limit": "1s"},
            "quiet_hours": {"default": "off"},
            "campaigns": {"balance_reminder": {"channels": ["sms"]}},
        },
        name=f"settings-{template_dir.name}.toml",
    )
    application = runtime.configure(path)
    schema.upgrade(application.engine)
    return application


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "(rendering.time_limit"),
        ("{{ 'x' * 10**8 }}", "'*' would make 100,000,000 characters"),
        ("{% macro f(n) %}{{ f(n+1) }}{% endmacro %}{{ f(0) }}", "recursion too deep"),
    ],
    ids=["hang", "huge", "recursion"],
)
def test_a_hostile_template_fails_its_rows_and_the_batch_goes_on(write_settings, database_url, tmp_path, body, message) -> None:
    # Given 6 English and 6 Russian members on SMS, and an English SMS text that hangs,
    # explodes or recurses
    application = _hostile(write_settings, database_url, tmp_path / "templates", body)
    for member_id in range(1, 13):
        _add(
            application.engine,
            member_id,
            locale="en" if member_id <= 6 else "ru",
            phone=f"+7916000{member_id:04d}",
            sms_consent=True,
        )
    # When the campaign runs (in one process, one batch)
    started = time.monotonic()
    report = json.loads(_json_of(cli(runtime.config_file(), "run", "balance_reminder", "--json").stdout))
    # Then the English rows fail with the template's file and the budget, the Russian ones are sent
    with application.engine.connect() as conn:
        rows = conn.execute(
            select(deliveries.c.member_id, deliveries.c.status, deliveries.c.reason_code, deliveries.c.reason)
        ).all()
    assert {(r.member_id, r.status, r.reason_code) for r in rows if r.member_id <= 6} == {
        (m, "failed", "template_error") for m in range(1, 7)
    }
    assert all(message in r.reason and "balance_reminder/en/sms.txt" in r.reason for r in rows if r.member_id <= 6)
    assert {(r.member_id, r.status) for r in rows if r.member_id > 6} == {(m, "sent") for m in range(7, 13)}
    assert report["counts"] == {"failed": {"sms": 6}, "sent": {"sms": 6}}
    # And a hanging template costs its time limit three times, then fails at once
    assert time.monotonic() - started < 20


def test_check_and_preview_report_a_hanging_template_in_one_line(write_settings, tmp_path) -> None:
    application = _hostile(
        write_settings,
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        tmp_path / "templates",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    )
    _add(application.engine, 1, locale="en", phone="+79160000001", sms_consent=True)
    config = runtime.config_file()
    started = time.monotonic()
    result = _loyalcast(Path(config), "check")
    assert result.returncode == 1
    assert "error: balance_reminder/en/sms.txt:1: still rendering after 1 s (rendering.time_limit)" in result.stdout
    result = _loyalcast(Path(config), "preview", "balance_reminder", "--member", "1")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "balance_reminder/en/sms.txt:1: still rendering after 1 s" in result.stdout
    assert time.monotonic() - started < 60


# --- member rows ----------------------------------------------------------------------

# A members table as an integrator's view may present it: every column nullable, text
# where loyalcast's demo schema has short strings.
_permissive = sa.MetaData()
PERMISSIVE_MEMBERS = sa.Table(
    "members",
    _permissive,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=False),
    sa.Column("first_name", sa.Text, nullable=True),
    sa.Column("locale", sa.Text, nullable=True),
    sa.Column("timezone", sa.Text, nullable=True),
    sa.Column("tier", sa.Text, nullable=True),
    sa.Column("email", sa.Text, nullable=True),
    sa.Column("phone", sa.Text, nullable=True),
    sa.Column("telegram_chat_id", sa.BigInteger, nullable=True),
    sa.Column("email_consent", sa.Boolean, nullable=True),
    sa.Column("sms_consent", sa.Boolean, nullable=True),
    sa.Column("telegram_consent", sa.Boolean, nullable=True),
    sa.Column("last_purchase_at", UTCDateTime, nullable=True),
)
PERMISSIVE_LOTS = sa.Table(
    "point_expirations",
    _permissive,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("member_id", sa.BigInteger, nullable=True),
    sa.Column("points", sa.Numeric(14, 2), nullable=True),
    sa.Column("expires_at", UTCDateTime, nullable=True),
)

TG, MAIL, SMS = (
    {"telegram_consent": True},
    {"email_consent": True},
    {"sms_consent": True},
)
LONG_EMAIL = "x" * 400 + "@example.com"

# (member id, columns, balance (None: no balances row), expected (channel, status, code))
MEMBER_CASES: list[tuple[int, dict[str, Any], float | None, tuple[str | None, str, str]]] = [
    (1, {"first_name": None, "telegram_chat_id": 1001, **TG}, 500, ("telegram", "sent", "eligible")),
    (2, {"first_name": "", "telegram_chat_id": 1002, **TG}, 500, ("telegram", "sent", "eligible")),
    (3, {"first_name": " \t\n ", "telegram_chat_id": 1003, **TG}, 500, ("telegram", "sent", "eligible")),
    (4, {"first_name": "Я" * 100_000, "email": "four@example.com", **MAIL}, 500, ("email", "sent", "eligible")),
    (5, {"first_name": "Б" * 5_000, "phone": "+79160000005", **SMS}, 500, ("sms", "sent", "eligible")),
    (6, {"first_name": "Ann\r\nBcc: evil@example.com", "email": "six@example.com", **MAIL}, 500, ("email", "sent", "eligible")),
    (7, {"first_name": "<b>Ann</b>", "telegram_chat_id": 1007, **TG}, 500, ("telegram", "sent", "eligible")),
    (8, {"first_name": "Ann\x07\x1b[31m", "phone": "+79160000008", **SMS}, 500, ("sms", "sent", "eligible")),
    (9, {"first_name": "🎉Аня", "phone": "+79160000009", **SMS}, 500, ("sms", "sent", "eligible")),
    (10, {"telegram_chat_id": 1010, **TG}, -500, ("telegram", "sent", "eligible")),
    (11, {"telegram_chat_id": 1011, **TG}, None, ("telegram", "sent", "eligible")),
    (12, {"telegram_chat_id": 1012, **TG}, 99_999_999_999, ("telegram", "sent", "eligible")),
    (13, {"locale": None, "telegram_chat_id": 1013, **TG}, 500, ("telegram", "sent", "eligible")),
    (14, {"locale": "xx", "telegram_chat_id": 1014, **TG}, 500, ("telegram", "sent", "eligible")),
    (15, {"timezone": None, "phone": "+79160000015", **SMS}, 500, ("sms", "sent", "eligible")),
    (16, {"timezone": "Mars/Base", "phone": "+79160000016", **SMS}, 500, ("sms", "sent", "eligible")),
    (17, {"tier": None, "telegram_chat_id": 1017, **TG}, 500, ("telegram", "sent", "eligible")),
    (18, {"email": "not-an-email", **MAIL}, 500, ("email", "failed", "invalid_recipient")),
    (19, {"email": "a b@example.com", **MAIL}, 500, ("email", "failed", "invalid_recipient")),
    (20, {"email": "@example.com", **MAIL}, 500, ("email", "failed", "invalid_recipient")),
    (21, {"email": LONG_EMAIL, **MAIL}, 500, ("email", "failed", "invalid_recipient")),
    (22, {"email": "иван@пример.рф", **MAIL}, 500, ("email", "sent", "eligible")),
    (23, {"phone": "12345", **SMS}, 500, ("sms", "failed", "invalid_recipient")),
    (24, {"phone": "8 (916) 123-45-67", **SMS}, 500, ("sms", "sent", "eligible")),
    (25, {"phone": "+7 916 12", **SMS}, 500, ("sms", "failed", "invalid_recipient")),
    (26, {"telegram_chat_id": 0, **TG}, 500, ("telegram", "failed", "invalid_recipient")),
    (27, {"telegram_chat_id": -1001234567890, **TG}, 500, ("telegram", "sent", "eligible")),
    (28, {"telegram_chat_id": 2**63 - 1, **TG}, 500, ("telegram", "sent", "eligible")),
    (29, {"telegram_chat_id": 1029, "telegram_consent": None}, 500, (None, "no_consent", "no_consent")),
    (30, {"email": "", "phone": "+79160000030", **MAIL, **SMS}, 500, ("sms", "sent", "eligible")),
    (31, {"email": None, "phone": None, "telegram_chat_id": None}, 500, (None, "no_contact", "no_contact")),
    (
        32,
        {"last_purchase_at": None, "first_name": "12345", "telegram_chat_id": 1032, **TG},
        500,
        ("telegram", "sent", "eligible"),
    ),
]


def _add(engine: sa.Engine, member_id: int, balance: float | None = 500, **columns: Any) -> None:
    row = {**MEMBER_DEFAULTS, "id": member_id, "first_name": f"Member{member_id}", **columns}
    with engine.begin() as conn:
        conn.execute(insert(members), [row])
        if balance is not None:
            conn.execute(insert(balances), [{"member_id": member_id, "points": balance}])


def _json_of(output: str) -> str:
    return output[output.index("{") :]


def test_bad_member_rows_get_a_recorded_reason_and_the_others_are_delivered(write_settings, database_url) -> None:
    # Given the program's tables as an integrator's view may have them (every column
    # nullable) and a campaign over every member, on the first reachable channel
    engine = sa.create_engine(database_url)
    _permissive.create_all(engine)
    engine.dispose()
    path = write_settings(
        {
            "database": {"url": database_url},
            "quiet_hours": {"default": "off", "telegram": "off"},
            "segments": {"everyone": {}},
            "campaigns": {
                "corpus": {
                    "segment": "everyone",
                    "template": "balance_reminder",
                    "channels": ["telegram", "email", "sms"],
                    "category": "marketing",
                }
            },
        }
    )
    application = runtime.configure(path)
    schema.upgrade(application.engine)
    engine = application.engine
    for member_id, columns, balance, _ in MEMBER_CASES:
        defaults = {"first_name": f"Member{member_id}", "locale": "ru", "timezone": "Europe/Moscow", "tier": "basic"}
        defaults.update({"email": None, "phone": None, "telegram_chat_id": None})
        defaults.update({"email_consent": False, "sms_consent": False, "telegram_consent": False})
        with engine.begin() as conn:
            conn.execute(insert(PERMISSIVE_MEMBERS), [{**defaults, "id": member_id, **columns}])
            if balance is not None:
                conn.execute(insert(balances), [{"member_id": member_id, "points": balance}])
    with engine.begin() as conn:  # a negative correction and a NULL lot: never news, never a crash
        soon = datetime(2026, 12, 10, tzinfo=UTC)
        conn.execute(insert(point_expirations), [{"member_id": 12, "points": -300, "expires_at": soon}])
        conn.execute(insert(PERMISSIVE_LOTS), [{"member_id": 12, "points": None, "expires_at": soon}])

    # When the campaign runs
    report = json.loads(_json_of(cli(runtime.config_file(), "run", "corpus", "--json").stdout))

    # Then every member has the expected recorded decision or outcome
    with engine.connect() as conn:
        rows = {
            row.member_id: row
            for row in conn.execute(
                select(
                    deliveries.c.id, deliveries.c.member_id, deliveries.c.channel, deliveries.c.status, deliveries.c.reason_code
                )
            )
        }
        suppressed = set(conn.execute(select(suppressions.c.address)).scalars())
    assert {m: (r.channel, r.status, r.reason_code) for m, r in rows.items()} == {m: e for m, _, _, e in MEMBER_CASES}
    assert sum(report["counts"]["sent"].values()) == sum(1 for *_, e in MEMBER_CASES if e[1] == "sent")
    assert "иван@пример.рф" not in suppressed

    # And what went out reads well
    outbox = application.settings.outbox_path

    def text(member_id: int) -> str:
        row = rows[member_id]
        return str(json.loads((outbox / row.channel / f"{row.id}.json").read_text())["text"])

    def letter(member_id: int) -> bytes:
        return (outbox / "email" / f"{rows[member_id].id}.eml").read_bytes()

    for member_id in (1, 2, 3):
        assert text(member_id).startswith("На вашем бонусном счёте"), text(member_id)
    assert all("None" not in text(m) for m in (1, 2, 3, 17))
    big = letter(4)
    assert max(len(line) for line in big.splitlines()) <= 998
    to = str(make_header(decode_header(email.message_from_bytes(big)["To"])))  # RFC 2047: adjacent encoded words join
    assert to == "Я" * 39 + "… <four@example.com>"
    assert measure(text(5)).segments <= 2
    injected = email.message_from_bytes(letter(6), policy=policy.default)
    assert injected["Bcc"] is None and "evil@example.com" not in str(injected["To"]).split("<")[-1]
    assert "&lt;b&gt;Ann&lt;/b&gt;" in text(7)
    assert "\x07" not in text(8) and "\x1b" not in text(8)
    assert "0 баллов" in text(10) and "-500" not in text(10)
    assert "0 баллов" in text(11)
    assert "99 999 999 999 баллов" in text(12).replace("\xa0", " ")
    assert "<иван@xn--e1afmkfd.xn--p1ai>" in letter(22).decode("utf-8")  # the mailbox as written, the domain in IDNA


# --- check on both databases -----------------------------------------------------------


def test_check_gives_the_same_answer_on_sqlite_and_postgresql(write_settings, pg_url, tmp_path) -> None:
    # Given the same members on both databases, as an integrator's view may have them: one
    # whose name is NULL (PostgreSQL sorts it first in a descending order) and one whose
    # long name breaks an SMS that repeats it
    findings = {}
    for url in (f"sqlite:///{tmp_path / 'check.db'}", pg_url):
        dialect = url.split(":")[0].split("+")[0]
        engine = sa.create_engine(url)
        _permissive.create_all(engine, tables=[PERMISSIVE_MEMBERS])
        with engine.begin() as conn:
            for member_id, name in ((1, None), (2, "Ж" * 100), (3, "Иван")):
                row = {
                    "id": member_id,
                    "first_name": name,
                    "locale": "ru",
                    "phone": f"+7916000000{member_id}",
                    "sms_consent": True,
                }
                conn.execute(insert(PERMISSIVE_MEMBERS), [row])
        engine.dispose()
        _hostile(write_settings, url, tmp_path / f"templates-{dialect}", "{{ member.first_name }} " * 4 + "!", locale="ru")
        with runtime.app().engine.begin() as conn:
            conn.execute(insert(balances), [{"member_id": m, "points": 500} for m in (1, 2, 3)])
        # When check runs
        result = cli(runtime.config_file(), "check", exit_code=1)
        findings[dialect] = result.stdout
        runtime.reset()
    # Then both find the same problem, with the member of the longest name
    assert findings["sqlite"] == findings["postgresql"]
    assert "(balance_reminder, member 2)" in findings["sqlite"]
