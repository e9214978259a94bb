"""Rendering: plural forms, dates in the member's zone, strict variables, escaping."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from conftest import REPO, SHIPPED_SETTINGS

from campaigns.config.loading import load_settings
from campaigns.delivery.rendering import Renderer
from campaigns.errors import TemplateError


@pytest.fixture
def program():
    return load_settings(SHIPPED_SETTINGS).program


def context(locale: str = "ru", zone: str = "Europe/Moscow", **extra):
    base = {
        "member": {"id": 1, "first_name": "Анна", "tier": "basic", "locale": locale},
        "balance": 1250,
        "expiring": {"total": 0, "nearest_date": None, "dates": []},
        "program": {"name": "Ромашка Бонус", "site_url": "https://bonus.example.com"},
        "unsubscribe_url": "https://bonus.example.com/u/dTEuZW1haWwubWFya2V0aW5n0123456789abcdefghijkl",
        "preferences_url": "https://bonus.example.com/u/dTEuKi4q0123456789abcdefghijkl",
        "opt_in": {"telegram": "https://t.me/romashka_bonus_bot?start=dDE0123456789abcdefghijkl", "email": None, "sms": None},
        "campaign": {"name": "t", "occasion": "x"},
        "now": datetime(2026, 11, 23, 9, 0, tzinfo=UTC),
        "locale": locale,
        "timezone": zone,
    }
    base.update(extra)
    return base


def make_template(root: Path, name: str, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / name / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


RU_PLURALS = {
    0: "баллов",
    1: "балл",
    2: "балла",
    5: "баллов",
    11: "баллов",
    12: "баллов",
    21: "балл",
    22: "балла",
    25: "баллов",
    101: "балл",
    111: "баллов",
}
EN_PLURALS = {
    0: "points",
    1: "point",
    2: "points",
    5: "points",
    11: "points",
    12: "points",
    21: "points",
    22: "points",
    25: "points",
    101: "points",
    111: "points",
}


@pytest.mark.parametrize(
    ("locale", "amount", "expected"),
    [("ru", n, f"{n} {word}") for n, word in RU_PLURALS.items()]
    + [("en", n, f"{n} {word}") for n, word in EN_PLURALS.items()]
    + [
        ("ru", 1.5, "1,5 балла"),
        ("ru", 1250, "1\xa0250 баллов"),
        ("ru", 1_000_001, "1\xa0000\xa0001 балл"),
        ("en", 1250, "1,250 points"),
        ("en", 0.5, "0.5 points"),
    ],
)
def test_points_read_right(tmp_path, program, locale, amount, expected) -> None:
    make_template(tmp_path, "t", {"sms.txt": "{{ balance|points }}"})
    rendered = Renderer(tmp_path, program).render("t", "sms", context(locale, balance=amount))
    assert rendered.text == expected


def test_dates_are_shown_in_the_members_zone(tmp_path, program) -> None:
    # Given points that expire at 22:30 UTC on 29 November: already 30 November in Vladivostok
    make_template(tmp_path, "t", {"sms.txt": "{{ when|date }}"})
    when = datetime(2026, 11, 29, 22, 30, tzinfo=UTC)
    renderer = Renderer(tmp_path, program)
    assert renderer.render("t", "sms", context("ru", "Europe/Kaliningrad", when=when)).text == "30 ноября"
    assert renderer.render("t", "sms", context("ru", "Europe/London", when=when)).text == "29 ноября"
    assert renderer.render("t", "sms", context("en", "Asia/Vladivostok", when=when)).text == "November 30"
    assert renderer.render("t", "sms", context("en", when=date(2026, 12, 1))).text == "December 1"


@pytest.mark.parametrize(
    ("zone", "when", "locale", "expected"),
    [
        # 23 November, 09:00 UTC is "now"; the member's today depends on the zone
        ("Europe/Moscow", datetime(2026, 11, 24, 6, tzinfo=UTC), "ru", "завтра"),
        ("Europe/Moscow", datetime(2026, 11, 23, 20, 59, tzinfo=UTC), "ru", "сегодня"),  # 23:59 Moscow
        ("Europe/Moscow", datetime(2026, 11, 23, 21, 0, tzinfo=UTC), "ru", "завтра"),  # 00:00 Moscow
        ("Asia/Vladivostok", datetime(2026, 11, 23, 14, 0, tzinfo=UTC), "ru", "завтра"),  # 00:00 on the 24th
        ("Asia/Vladivostok", datetime(2026, 11, 23, 13, 59, tzinfo=UTC), "ru", "сегодня"),
        ("Europe/Moscow", datetime(2026, 11, 26, 12, tzinfo=UTC), "ru", "через 3 дня"),
        ("Europe/Moscow", datetime(2026, 11, 28, 12, tzinfo=UTC), "ru", "через 5 дней"),
        ("Europe/Moscow", datetime(2026, 12, 14, 12, tzinfo=UTC), "ru", "через 21 день"),
        ("Europe/Moscow", datetime(2026, 11, 25, 12, tzinfo=UTC), "ru", "послезавтра"),
        ("America/New_York", datetime(2026, 11, 24, 4, 59, tzinfo=UTC), "en", "today"),  # 23:59 in New York
        ("America/New_York", datetime(2026, 11, 24, 5, 0, tzinfo=UTC), "en", "tomorrow"),
        ("Europe/London", datetime(2026, 11, 26, 12, tzinfo=UTC), "en", "in 3 days"),
    ],
)
def test_relative_dates_around_midnight(tmp_path, program, zone, when, locale, expected) -> None:
    make_template(tmp_path, "t", {"sms.txt": "{{ when|relative_date }}"})
    assert Renderer(tmp_path, program).render("t", "sms", context(locale, zone, when=when)).text == expected


@pytest.mark.parametrize(("locale", "expected"), [("ru", "1\xa0500,50\xa0₽"), ("en", "RUB1,500.50")])
def test_money(tmp_path, program, locale, expected) -> None:
    make_template(tmp_path, "t", {"sms.txt": "{{ 1500.5|money }}"})
    assert Renderer(tmp_path, program).render("t", "sms", context(locale)).text == expected


def test_locale_variant_then_default_locale_then_plain_file(tmp_path, program) -> None:
    make_template(tmp_path, "t", {"ru/sms.txt": "по-русски", "telegram.html": "plain"})
    renderer = Renderer(tmp_path, program)
    assert renderer.render("t", "sms", context("en")).text == "по-русски"  # en missing -> default ru
    assert renderer.render("t", "telegram", context("en")).text == "plain"


def test_unknown_variable_names_file_and_line(tmp_path, program) -> None:
    make_template(tmp_path, "t", {"ru/telegram.html": "Привет\n{{ member.first_name }}\n{{ member.surname }}\n"})
    with pytest.raises(TemplateError) as caught:
        Renderer(tmp_path, program).render("t", "telegram", context())
    assert (caught.value.file, caught.value.line) == ("t/ru/telegram.html", 3)
    assert "surname" in str(caught.value)


def test_syntax_error_names_file_and_line(tmp_path, program) -> None:
    make_template(tmp_path, "t", {"sms.txt": "ok\n{% if balance %}\nno end\n"})
    with pytest.raises(TemplateError) as caught:
        Renderer(tmp_path, program).render("t", "sms", context())
    assert caught.value.file == "t/sms.txt" and caught.value.line is not None
    assert "syntax error" in str(caught.value)


def test_html_parts_escape_member_data(tmp_path, program) -> None:
    make_template(tmp_path, "t", {"telegram.html": "<b>{{ member.first_name }}</b>", "sms.txt": "{{ member.first_name }}"})
    hostile = context(member={"id": 1, "first_name": "<a href='x'>Ann</a>", "tier": "basic", "locale": "ru"})
    renderer = Renderer(tmp_path, program)
    assert renderer.render("t", "telegram", hostile).text == "<b>&lt;a href=&#39;x&#39;&gt;Ann&lt;/a&gt;</b>"
    assert renderer.render("t", "sms", hostile).text == "<a href='x'>Ann</a>"


def test_the_sandbox_blocks_python_internals(tmp_path, program) -> None:
    make_template(tmp_path, "t", {"sms.txt": "{{ balance.__class__.__mro__ }}"})
    with pytest.raises(TemplateError):
        Renderer(tmp_path, program).render("t", "sms", context())


@pytest.mark.parametrize("name", ["balance_reminder", "points_expiring", "win_back"])
@pytest.mark.parametrize("locale", ["ru", "en"])
def test_shipped_templates_render(program, name, locale) -> None:
    when = datetime(2026, 12, 1, 12, tzinfo=UTC)
    expiring = {"total": 300, "nearest_date": when.date(), "dates": [{"date": when.date(), "points": 300}]}
    reminder = {"total": 300, "stage": 7, "dates": [{"date": when.date(), "points": 300, "stage": 7, "days_left": 7}]}
    renderer = Renderer(REPO / "templates", program)
    channels = ["email", "telegram"] + (["sms"] if name != "win_back" else [])
    for channel in channels:
        rendered = renderer.render(name, channel, context(locale, expiring=expiring, reminder=reminder))
        assert rendered.text or rendered.html
        assert "{{" not in (rendered.text or "") + (rendered.html or "")
