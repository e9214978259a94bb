"""Members' links: signed tokens, the unsubscribe page in a real browser, RFC 8058
one-click, the preference centre, and the planner and deliverer honouring choices."""

from __future__ import annotations

import email
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import add_member, cli, ledger, run_json
from sqlalchemy import func, select

from campaigns.config.links import LinkSigner
from campaigns.errors import InvalidLink
from campaigns.store.models import deliveries, preferences
from campaigns.store.preferences import Choice, is_subscribed, member_choices

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
NOON = "2026-11-24T12:00+03:00"


def test_tokens_verify_only_unaltered_and_for_their_purpose() -> None:
    # Given a signer and a member's unsubscribe token
    signer = LinkSigner(KEY)
    token = signer.sign("u", 2, "email", "marketing")

    # Then it verifies to what was signed
    claim = signer.verify(token, "u")
    assert (claim.member_id, claim.channel, claim.category) == (2, "email", "marketing")

    # And any altered, truncated or extended token, or one for another purpose, is refused
    altered = token[:5] + ("A" if token[5] != "A" else "B") + token[6:]
    for bad in (altered, token[:-1], token[:-22], token + "A", "", "u2.email.marketing", token.replace("-", "+")):
        with pytest.raises(InvalidLink):
            signer.verify(bad, "u")
    with pytest.raises(InvalidLink):
        signer.verify(token, "t")

    # And a token that names another member with the original tag is refused
    forged = LinkSigner(KEY).sign("u", 3, "email", "marketing")[:-22] + token[-22:]
    with pytest.raises(InvalidLink):
        signer.verify(forged, "u")


def test_rotation_accepts_the_previous_key_and_signs_with_the_new_one() -> None:
    # Given a link signed with the old key
    old_link = LinkSigner(OTHER_KEY).sign("u", 7, "sms", "marketing")

    # When the key is rotated (new key current, old key previous)
    rotating = LinkSigner(KEY, previous=OTHER_KEY)

    # Then the old link still works, new links are signed with the new key
    assert rotating.verify(old_link, "u").member_id == 7
    assert LinkSigner(KEY).verify(rotating.sign("u", 7, "sms", "marketing"), "u").member_id == 7

    # And once the old key is dropped, its links stop working
    with pytest.raises(InvalidLink):
        LinkSigner(KEY).verify(old_link, "u")

    # And keys shorter than 32 bytes are refused
    with pytest.raises(ValueError, match="32"):
        LinkSigner(b"short")


def test_the_most_specific_choice_decides() -> None:
    when = datetime(2026, 12, 1, tzinfo=UTC)
    choices = [
        Choice("*", "*", False, "link", when),
        Choice("email", "marketing", True, "preferences", when),
    ]
    assert is_subscribed(choices, "email", "marketing")
    assert not is_subscribed(choices, "email", "expiry")
    assert not is_subscribed(choices, "sms", "marketing")
    assert is_subscribed([], "sms", "marketing")


def _confirmation(browser, expected: str) -> str:  # type: ignore[no-untyped-def]
    """The confirmation the page shows after a submit, once it says ``expected``."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(driver):  # type: ignore[no-untyped-def]
        found = driver.find_elements(By.ID, "done")
        text = found[0].text if found else ""
        return text if expected in text else False

    # The page being replaced may drop an element between finding and reading it: stale,
    # or (Chromium 156) "Node with given id does not belong to the document".
    ignored = (StaleElementReferenceException, WebDriverException)
    return str(WebDriverWait(browser, 10, ignored_exceptions=ignored).until(shown))


def _one_member_settings(configured, web_port, **web):  # type: ignore[no-untyped-def]
    application = configured(
        {
            "web": {"port": web_port, "public_url": f"http://127.0.0.1:{web_port}", **web},
            "quiet_hours": {"default": "off", "telegram": "off"},
        }
    )
    add_member(
        application.engine,
        2,
        first_name="Ирина",
        email="irina@example.com",
        email_consent=True,
        phone="+79161234567",
        sms_consent=True,
    )
    return application


def _outbox_links(outbox: Path, member_email: str) -> tuple[str, str]:
    """(List-Unsubscribe URL, the body's unsubscribe link) of the member's email in the outbox."""
    for path in sorted((outbox / "email").glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes())
        if member_email in str(message["To"]):
            header = re.search(r"<(http[^>]+)>", " ".join(str(message["List-Unsubscribe"]).split()))
            assert header is not None
            body = next(part for part in message.walk() if part.get_content_type() == "text/html").get_payload(decode=True)
            href = re.search(rb'href="(http[^"]+/u/[^"]+)"', body)
            assert href is not None
            return header.group(1), href.group(1).decode()
    raise AssertionError(f"no email to {member_email} in {outbox}")


def test_unsubscribe_from_a_real_email_in_chromium_then_the_next_run_skips_the_member(
    configured, web_port, web_server, browser, tmp_path
) -> None:
    # Given a member who got a marketing email through the outbox
    application = _one_member_settings(configured, web_port)
    config = application.settings.source
    cli(config, "run", "balance_reminder", "--now", NOON)
    header_url, body_url = _outbox_links(tmp_path / "outbox", "irina@example.com")
    assert header_url == body_url

    # When they open the email's link in a browser: the page shows their choices and changes nothing
    base = web_server(application.settings)
    assert body_url.startswith(base)
    browser.get(body_url)
    assert "Ирина" in browser.page_source
    assert browser.find_element("id", "keep-email-marketing").is_selected()
    browser.shot("page")
    with application.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(preferences)).scalar_one() == 0

    # And press "stop this"
    browser.find_element("id", "stop-this").click()
    _confirmation(browser, "больше не придут")
    browser.shot("done")
    assert not browser.find_element("id", "keep-email-marketing").is_selected()
    assert browser.find_element("id", "keep-sms-marketing").is_selected()

    # Then the next run does not email the member, and says why
    report = run_json(config, "balance_reminder", "--now", NOON, "--occasion", "next")
    row = ledger(application.engine, report["run_id"])[2]
    assert row[0] == "sms" and "email: unsubscribed" in row[2]
    why = cli(config, "why", "2").stdout
    assert "unsubscribed from marketing on email on " in why and "via link" in why

    # And a campaign on email only records the member as unsubscribed
    with application.engine.connect() as conn:
        choices = member_choices(conn, 2)
    assert [(c.channel, c.category, c.subscribed, c.source) for c in choices] == [("email", "marketing", False, "link")]


def test_one_click_post_unsubscribes_at_once_and_a_replay_is_harmless(configured, web_port, web_server, tmp_path) -> None:
    # Given a member's email with its List-Unsubscribe link
    application = _one_member_settings(configured, web_port)
    cli(application.settings.source, "run", "balance_reminder", "--now", NOON)
    url, _ = _outbox_links(tmp_path / "outbox", "irina@example.com")
    web_server(application.settings)

    # When the mail provider posts the RFC 8058 body, twice
    for _ in range(2):
        answer = httpx.post(url, data={"List-Unsubscribe": "One-Click"})
        assert answer.status_code == 200

    # Then the member is unsubscribed from that category on that channel, recorded once
    with application.engine.connect() as conn:
        rows = list(conn.execute(select(preferences)))
    assert [(r.channel, r.category, r.subscribed, r.source) for r in rows] == [("email", "marketing", False, "one-click")]


def test_forged_altered_and_truncated_links_get_a_clear_page_and_change_nothing(
    configured, web_port, web_server, tmp_path
) -> None:
    # Given a member's real link
    application = _one_member_settings(configured, web_port)
    cli(application.settings.source, "run", "balance_reminder", "--now", NOON)
    url, _ = _outbox_links(tmp_path / "outbox", "irina@example.com")
    base = web_server(application.settings)
    token = url.rsplit("/", 1)[1]
    forged = LinkSigner(OTHER_KEY).sign("u", 2, "email", "marketing")
    altered = token[:3] + ("x" if token[3] != "x" else "y") + token[4:]

    # When any of them is opened or posted
    for bad in (forged, altered, token[:-3], token[:10]):
        page = httpx.get(f"{base}/u/{bad}")
        post = httpx.post(f"{base}/u/{bad}", data={"List-Unsubscribe": "One-Click"})
        # Then a 400 page says so in the program's language
        assert page.status_code == post.status_code == 400
        assert "Ссылка не работает" in page.text and "Ничего не изменилось" in page.text

    # And a form with an unknown action is refused too
    assert httpx.post(url, data={"action": "delete-everything"}).status_code == 400

    # And nothing was recorded
    with application.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(preferences)).scalar_one() == 0


def test_preference_centre_stops_everything_then_resubscribes_one(configured, web_port, web_server, browser, tmp_path) -> None:
    # Given a member on the preference page of their email
    application = _one_member_settings(configured, web_port)
    config = application.settings.source
    cli(config, "run", "balance_reminder", "--now", NOON)
    url, _ = _outbox_links(tmp_path / "outbox", "irina@example.com")
    web_server(application.settings)
    browser.get(url)

    # When they stop everything, then tick email "offers and news" back and save
    browser.find_element("id", "stop-all").click()
    _confirmation(browser, "ни одной рассылки")
    assert not browser.find_element("id", "keep-sms-marketing").is_selected()
    browser.find_element("id", "keep-email-marketing").click()
    browser.find_element("id", "save").click()
    _confirmation(browser, "сохранён")
    browser.shot("saved")

    # Then email marketing is wanted again, SMS marketing is not, and the planner agrees
    with application.engine.connect() as conn:
        choices = member_choices(conn, 2)
    assert is_subscribed(choices, "email", "marketing") and not is_subscribed(choices, "sms", "marketing")
    report = run_json(config, "balance_reminder", "--now", NOON, "--occasion", "after-save")
    channel, status, reason = ledger(application.engine, report["run_id"])[2]
    assert (channel, status) == ("email", "capped")  # wanted again, and this week's email cap is used
    assert "telegram: no contact" in reason


def test_a_member_who_unsubscribes_after_the_decision_is_not_sent_the_queued_message(configured, web_port) -> None:
    # Given a marketing email decided for tonight (queued: the worker has not sent it yet)
    application = _one_member_settings(configured, web_port)
    application = configured({"campaigns": {"balance_reminder": {"send_at_local": "21:00"}}})
    cli(application.settings.source, "run", "balance_reminder", "--now", NOON)
    with application.engine.begin() as conn:
        row = conn.execute(select(deliveries.c.id, deliveries.c.status, deliveries.c.channel)).one()
        assert (row.status, row.channel) == ("queued", "email")
        # When the member unsubscribes from email marketing before it is sent
        from campaigns.store.preferences import choose

        choose(conn, 2, "email", "marketing", subscribed=False, source="link", now=datetime.now(UTC))

    # Then the worker does not send it, and records why
    application.deliverer.deliver([row.id])
    with application.engine.connect() as conn:
        after = conn.execute(select(deliveries).where(deliveries.c.id == row.id)).one()
    assert (after.status, after.reason_code, after.holds_slot) == ("unsubscribed", "withdrawn", False)
    assert after.attempts == 0


def test_service_messages_are_not_stopped_by_an_unsubscribe(configured, web_port) -> None:
    # Given a member who stopped everything
    application = _one_member_settings(configured, web_port)
    from campaigns.store.preferences import choose

    with application.engine.begin() as conn:
        choose(conn, 2, "*", "*", subscribed=False, source="link", now=datetime.now(UTC))
    # When a service message is sent to them (triggered, category service)
    cli(application.settings.source, "send", "2", "balance_reminder", "--key", "svc-1")
    # Then it is decided on a channel (service needs no marketing consent, and no unsubscribe stops it)
    with application.engine.connect() as conn:
        status = conn.execute(select(deliveries.c.status).where(deliveries.c.idempotency_key == "svc-1")).scalar_one()
    assert status == "sent"


def test_a_triggered_marketing_message_honours_the_unsubscribe(configured, web_port) -> None:
    # Given a member who stopped marketing on every channel
    application = _one_member_settings(configured, web_port)
    from campaigns.store.preferences import choose

    with application.engine.begin() as conn:
        choose(conn, 2, "*", "marketing", subscribed=False, source="preferences", now=datetime.now(UTC))
    # When another service sends them a marketing message
    cli(
        application.settings.source,
        "send",
        "2",
        "points_credited",
        "--data",
        '{"points": 50}',
        "--key",
        "mk-1",
        "--category",
        "marketing",
    )
    # Then it is not sent, and the reason names every channel's state
    with application.engine.connect() as conn:
        row = conn.execute(select(deliveries).where(deliveries.c.idempotency_key == "mk-1")).one()
    assert (row.status, row.reason_code) == ("unsubscribed", "unsubscribed")
    assert "email: unsubscribed" in row.reason and "sms: unsubscribed" in row.reason


def _key_of(path: str, found: Any) -> None:
    from campaigns.config.links import _key_from_file

    found.put(_key_from_file(Path(path)))


def test_processes_starting_together_agree_on_the_embedded_key(tmp_path) -> None:
    # Given no key file yet, and sixteen processes starting at once (workers of `serve`, a run)
    import multiprocessing

    found: Any = multiprocessing.Queue()
    path = tmp_path / "var" / "link.key"
    processes = [multiprocessing.Process(target=_key_of, args=(str(path), found)) for _ in range(16)]
    for process in processes:
        process.start()
    keys = {found.get(timeout=30) for _ in processes}
    for process in processes:
        process.join()
    # Then they all read one whole key of at least 32 bytes, kept private
    assert len(keys) == 1 and len(next(iter(keys))) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["link.key"]
