"""Telegram opt-in: a signed /start deep link rendered in an email, the bot's updates by
webhook (secret token verified) and by long polling, through the fake Bot API; the next
run delivers on the linked chat, and /stop opts out."""

from __future__ import annotations

import email
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import add_member, cli, fake_channels, fake_providers, ledger, run_json
from sqlalchemy import select

from campaigns.store.models import contacts, deliveries
from channels.fakes import Faults

NOON = "2026-11-24T12:00+03:00"
SECRET = "hook-secret_1"


@pytest.fixture
def providers() -> Iterator[dict[str, Any]]:
    yield from fake_providers(Faults(seed=5))


@pytest.fixture
def telegram_app(configured, providers, web_port, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LC_TG_TOKEN", "123:fake")
    monkeypatch.setenv("LC_TG_HOOK", SECRET)
    base = f"http://127.0.0.1:{web_port}"
    telegram = fake_channels(providers, telegram={"bot_username": "romashka_bonus_bot", "webhook_secret_env": "LC_TG_HOOK"})
    application = configured(
        {
            "web": {"port": web_port, "public_url": base},
            "channels": {"telegram": telegram["telegram"]},
            "quiet_hours": {"default": "off", "telegram": "off"},
        }
    )
    add_member(application.engine, 5, first_name="Анна", email="anna@example.com", email_consent=True, locale="ru")
    return application


def _start_token(outbox: Path) -> str:
    message = email.message_from_bytes(next((outbox / "email").glob("*.eml")).read_bytes())
    text = next(part for part in message.walk() if part.get_content_type() == "text/plain").get_payload(decode=True).decode()
    found = re.search(r"https://t\.me/romashka_bonus_bot\?start=([A-Za-z0-9_-]+)", text)
    assert found is not None, text
    return found.group(1)


def test_start_by_webhook_links_the_chat_and_the_next_run_delivers_on_telegram(
    telegram_app, providers, web_server, tmp_path
) -> None:
    config = telegram_app.settings.source
    bot = providers["telegram"]
    # Given an email carrying the member's Telegram opt-in link (the member has no chat id)
    first = run_json(config, "balance_reminder", "--now", NOON)
    assert ledger(telegram_app.engine, first["run_id"])[5][0] == "email"
    token = _start_token(tmp_path / "outbox")
    assert len(token) <= 64

    # And the bot's webhook registered with its secret token
    base = web_server(telegram_app.settings)
    assert "webhook set" in cli(config, "telegram", "webhook").stdout
    assert bot.webhook == (f"{base}/webhooks/telegram", SECRET)

    # When the member presses Start in Telegram
    assert bot.member_sends(777, f"/start {token}", language="en") == 200

    # Then the chat is linked with consent, and the bot answered in the member's language (ru)
    with telegram_app.engine.connect() as conn:
        link = conn.execute(select(contacts)).one()
    assert (link.member_id, link.channel, link.address, link.consent) == (5, "telegram", "777", True)
    assert bot.messages[-1]["chat_id"] == "777" and bot.messages[-1]["text"].startswith("Готово")

    # And the next run delivers on Telegram to that chat
    second = run_json(config, "balance_reminder", "--now", NOON, "--occasion", "second")
    assert ledger(telegram_app.engine, second["run_id"])[5][:2] == ("telegram", "sent")
    assert bot.messages[-1]["chat_id"] == "777" and "Анна" in bot.messages[-1]["text"]

    # When the member sends /stop
    assert bot.member_sends(777, "/stop") == 200
    assert "больше не будет" in bot.messages[-1]["text"]

    # Then the next run does not use Telegram, and why says so
    third = run_json(config, "balance_reminder", "--now", NOON, "--occasion", "third")
    assert "telegram: no consent" in ledger(telegram_app.engine, third["run_id"])[5][2]  # the consent /start gave is withdrawn
    why = cli(config, "why", "5").stdout
    assert "unsubscribed from everything on telegram" in why and "via telegram /stop" in why


def test_the_webhook_refuses_updates_without_the_secret_token(telegram_app, web_server) -> None:
    base = web_server(telegram_app.settings)
    update = {"update_id": 1, "message": {"message_id": 1, "date": 0, "chat": {"id": 9, "type": "private"}, "text": "/stop"}}
    for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"}):
        answer = httpx.post(f"{base}/webhooks/telegram", json=update, headers=headers)
        assert answer.status_code == 403
        assert answer.json()["field"] == "header X-Telegram-Bot-Api-Secret-Token"
    answer = httpx.post(f"{base}/webhooks/telegram", json={"no": "update"}, headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})
    assert answer.status_code == 400 and answer.json()["field"] == "body.update_id"


def test_long_polling_links_the_chat_without_a_webhook(telegram_app, providers, tmp_path) -> None:
    config = telegram_app.settings.source
    bot = providers["telegram"]
    # Given the member's link, and a member who pressed Start while no webhook is set
    run_json(config, "balance_reminder", "--now", NOON)
    token = _start_token(tmp_path / "outbox")
    bot.member_sends(888, f"/start {token}")
    bot.member_sends(889, "/start not-a-valid-token-at-all-000000")

    # When `loyalcast telegram poll --once` runs
    assert "2 updates answered" in cli(config, "telegram", "poll", "--once").stdout

    # Then the valid link is linked and answered, the invalid one is told so
    with telegram_app.engine.connect() as conn:
        assert [(r.member_id, r.address) for r in conn.execute(select(contacts))] == [(5, "888")]
    replies = {m["chat_id"]: m["text"] for m in bot.messages}
    assert replies["888"].startswith("Готово") and "не работает" in replies["889"]
    # And the updates were acknowledged: polling again answers nothing
    assert "0 updates answered" in cli(config, "telegram", "poll", "--once").stdout
    with telegram_app.engine.connect() as conn:
        assert conn.execute(select(deliveries.c.channel)).scalars().all() == ["email"]
