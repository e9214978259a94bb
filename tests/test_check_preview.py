"""`loyalcast check`, `preview` and the SMS budget, through the command line."""

from __future__ import annotations

import shutil
from datetime import UTC
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import REPO
from helpers import add_expiration, add_member, cli, ledger, run_json
from typer.testing import CliRunner

from campaigns.app import runtime
from campaigns.app.cli import app as cli_app
from campaigns.store import schema


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    copy = tmp_path / "templates"
    shutil.copytree(REPO / "templates", copy)
    return copy


@pytest.fixture
def checked(write_settings, templates):
    """Settings on a private copy of the templates, schema created; returns (config, templates)."""
    config = write_settings({"templates_dir": str(templates)})
    schema.upgrade(runtime.configure(config).engine)
    yield config, templates
    runtime.reset()


def check_output(config: Path) -> tuple[int, list[str]]:
    result = CliRunner().invoke(cli_app, ["--config", str(config), "check"], catch_exceptions=False)
    return result.exit_code, [line for line in result.stdout.splitlines() if line]


def test_shipped_templates_pass(checked) -> None:
    config, _ = checked
    add_member(runtime.app().engine, 1, first_name="Анна", email="a@example.com", email_consent=True)
    code, lines = check_output(config)
    assert code == 0, lines


def test_check_catches_an_undefined_variable_with_file_and_line(checked) -> None:
    config, templates = checked
    (templates / "balance_reminder/en/telegram.html").write_text("Hello\n{{ member.first_name }}\n{{ member.nickname }}\n")
    code, lines = check_output(config)
    assert code == 1
    assert any(
        line.startswith("error: balance_reminder/en/telegram.html:3: undefined variable") and "nickname" in line for line in lines
    ), lines


def test_check_catches_a_syntax_error_with_its_line(checked) -> None:
    config, templates = checked
    (templates / "win_back/ru/email.txt").write_text("Здравствуйте!\n\n{% if balance %}\nбез конца\n")
    code, lines = check_output(config)
    assert code == 1
    assert any(line.startswith("error: win_back/ru/email.txt:") and "syntax error" in line for line in lines), lines


def test_check_catches_an_sms_over_budget(checked) -> None:
    config, templates = checked
    (templates / "balance_reminder/ru/sms.txt").write_text(
        "{{ member.first_name }}, на вашем бонусном счёте {{ balance|points }}. Баллами можно оплатить "
        "до половины покупки в любом из наших магазинов и на сайте {{ program.site_url }}. Ждём вас!"
    )
    code, lines = check_output(config)
    assert code == 1
    assert any(line.startswith("sms_budget: balance_reminder/ru/sms.txt: SMS is 3 segments (UCS-2") for line in lines), lines


def test_check_reports_a_missing_locale_variant(checked) -> None:
    config, templates = checked
    (templates / "win_back/en/telegram.html").unlink()
    code, lines = check_output(config)
    assert code == 1
    assert "missing_locale: win_back/en/telegram.html: missing; en members get win_back/ru/telegram.html" in lines


def test_an_sms_over_budget_fails_before_the_provider_and_frees_its_slot(checked) -> None:
    config, templates = checked
    (templates / "balance_reminder/ru/sms.txt").write_text("ж" * 135)  # 3 UCS-2 segments
    add_member(runtime.app().engine, 1, phone="+79160000001", sms_consent=True)
    # (sms is the campaign's last channel: nothing to reroute to, and the run delivered nothing: exit 1)
    report = run_json(config, "balance_reminder", "--now", "2026-11-23T12:00+03:00", exit_code=1)
    channel, status, reason = ledger(runtime.app().engine, report["run_id"])[1]
    assert (channel, status) == ("sms", "failed")
    assert reason == "SMS is 3 segments (UCS-2, 135 characters); the campaign allows 2"
    assert not list((Path(config).parent / "outbox").rglob("*.json"))


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.sections: dict[str, str] = {}
        self.current: str | None = None
        self.errors: list[str] = []

    VOID = {"meta", "br", "img", "hr", "link", "input"}

    def handle_starttag(self, tag, attrs) -> None:
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "section":
            self.current = dict(attrs)["id"]
            self.sections[self.current] = ""
        if tag == "iframe" and self.current:
            self.sections[self.current] += dict(attrs).get("srcdoc", "")

    def handle_endtag(self, tag) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unbalanced </{tag}>")
        if tag == "section":
            self.current = None

    def handle_data(self, data) -> None:
        if self.current:
            self.sections[self.current] += data


def test_preview_page_shows_three_channels(checked, tmp_path) -> None:
    # Given a member reachable everywhere with points expiring
    config, _ = checked
    engine = runtime.app().engine
    add_member(
        engine,
        7,
        first_name="Ольга",
        points=1250,
        email="olga@example.com",
        email_consent=True,
        phone="+79160000007",
        sms_consent=True,
        telegram_chat_id=77,
        telegram_consent=True,
    )
    from datetime import datetime

    add_expiration(engine, 7, 300, datetime(2026, 11, 30, 12, tzinfo=UTC))
    page = tmp_path / "preview.html"
    # When the marketer previews the campaign for the member
    result = cli(config, "preview", "balance_reminder", "--member", "7", "--now", "2026-11-23T12:00+03:00", "--html", str(page))
    # Then the terminal shows every channel and the page holds all three renderings
    assert "Ольга" in result.stdout and "segment" in result.stdout
    parser = _Page()
    parser.feed(page.read_text(encoding="utf-8"))
    parser.close()
    assert parser.errors == [] and parser.stack == []
    assert set(parser.sections) == {"email", "sms", "telegram"}
    assert "1 250 баллов" in parser.sections["email"].replace("\xa0", " ")
    assert "30 ноября" in parser.sections["email"]
    assert "1 segment(s), UCS-2" in parser.sections["sms"]
    assert "Ольга" in parser.sections["telegram"]


def test_preview_of_an_unknown_member_is_a_clear_error(checked) -> None:
    config, _ = checked
    result = CliRunner().invoke(cli_app, ["--config", str(config), "preview", "balance_reminder", "--member", "999"])
    assert result.exit_code != 0 and "no member 999" in str(result.exception)


def test_plan_estimates_sms_segments_and_cost(write_settings, templates) -> None:
    import json

    config = write_settings({"templates_dir": str(templates), "channels": {"sms": {"price_per_segment": 3.5}}})
    schema.upgrade(runtime.configure(config).engine)
    (templates / "balance_reminder/ru/sms.txt").write_text("{{ member.first_name }}: " + "ж" * 70)  # 2 segments
    for member_id in (1, 2, 3):
        add_member(runtime.app().engine, member_id, phone=f"+7916000000{member_id}", sms_consent=True)
    output = cli(config, "plan", "balance_reminder", "--now", "2026-11-23T12:00+03:00", "--json").stdout
    plan = json.loads(output[output.index("{") :])
    assert plan["sms"] == {
        "recipients": 3,
        "sampled": 3,
        "sendable": 3,
        "failing": {},
        "segments": 6,
        "cost": 21.0,
        "currency": "RUB",
    }
    runtime.reset()


def test_check_renders_triggered_templates_with_their_sample_data(checked) -> None:
    config, templates = checked
    (templates / "points_credited/en/telegram.html").write_text(
        "<b>{{ data.points|points }}</b> for order {{ data.order_number }}"
    )
    code, lines = check_output(config)
    assert code == 1
    assert any(
        line.startswith("error: points_credited/en/telegram.html:1: undefined variable") and "order_number" in line
        for line in lines
    ), lines


def test_an_sms_over_budget_is_decided_again_on_the_next_channel(write_settings, templates) -> None:
    # Given a campaign over SMS then email, and an SMS text of 3 segments
    config = write_settings(
        {
            "templates_dir": str(templates),
            "quiet_hours": {"default": "off"},
            "campaigns": {"balance_reminder": {"channels": ["sms", "email"]}},
        }
    )
    schema.upgrade(runtime.configure(config).engine)
    (templates / "balance_reminder/ru/sms.txt").write_text("ж" * 135)
    engine = runtime.app().engine
    add_member(engine, 1, phone="+79160000001", sms_consent=True, email="one@example.com", email_consent=True)
    add_member(engine, 2, phone="+79160000002", sms_consent=True)  # no email to fall back to
    # When the campaign runs
    report = run_json(config, "balance_reminder", "--now", "2026-11-23T12:00+03:00")
    # Then member 1 gets the email instead, and the ledger says why; member 2 fails over budget
    rows = ledger(engine, report["run_id"])
    assert rows[1][:2] == ("email", "sent")
    assert rows[1][2] == (
        "rerouted from sms (SMS is 3 segments (UCS-2, 135 characters); the campaign allows 2); eligible on email"
    )
    assert rows[2] == ("sms", "failed", "SMS is 3 segments (UCS-2, 135 characters); the campaign allows 2")
    assert report["counts"] == {"sent": {"email": 1}, "failed": {"sms": 1}}


def test_plan_counts_only_the_sms_that_would_go_out(write_settings, templates) -> None:
    import json

    # Given three SMS members, one with a number that cannot work
    config = write_settings({"templates_dir": str(templates), "channels": {"sms": {"price_per_segment": 2.0}}})
    schema.upgrade(runtime.configure(config).engine)
    for member_id, phone in ((1, "+79160000001"), (2, "+79160000002"), (3, "12345")):
        add_member(runtime.app().engine, member_id, phone=phone, sms_consent=True)
    # When the plan is shown
    output = cli(config, "plan", "balance_reminder", "--now", "2026-11-23T12:00+03:00", "--json").stdout
    sms = json.loads(output[output.index("{") :])["sms"]
    # Then two messages are counted and the third is listed with why
    assert (sms["recipients"], sms["sendable"]) == (3, 2)
    assert sms["failing"] == {"invalid address: not a valid phone number": 1}
    assert sms["cost"] == sms["segments"] * 2.0
