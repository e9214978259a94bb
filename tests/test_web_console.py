"""The marketers' console: a real headless Chromium walking every page behind the
login, and the guards (login, sessions, CSRF) tested over plain HTTP."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from helpers import cli, eventually
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from sqlalchemy import func, select

from campaigns.store.models import campaign_runs, deliveries, members
from campaigns.tools import demo, demo_effect
from campaigns.web.console.auth import Guard, check_password, hash_password, parse_operators

PASSWORD = "correct horse battery"
RUN_AT = datetime.now(UTC).replace(hour=8, minute=0, second=0, microsecond=0) - timedelta(days=15)
"""15 days back at 08:00 UTC (daytime from Kaliningrad to Vladivostok): the window is over."""


@pytest.fixture(scope="module")
def operator_entry() -> str:
    return f"marketer:{hash_password(PASSWORD)}"


@pytest.fixture
def console(configured, web_port, web_server, monkeypatch, operator_entry) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A demo program with a run of the balance reminder (20% held out) 15 days ago,
    what members did since, and the web service with one operator."""
    monkeypatch.setenv("LOYALCAST_CONSOLE_USERS", operator_entry)
    application = configured(
        {
            "web": {"port": web_port, "public_url": f"http://127.0.0.1:{web_port}"},
            "campaigns": {"balance_reminder": {"holdout": 0.2}},
        }
    )
    demo.seed(application.engine, 600)
    config = application.settings.source
    cli(config, "run", "balance_reminder", "--now", RUN_AT.isoformat())
    demo_effect.outcomes(application.engine, seed=7)
    with application.engine.connect() as conn:
        run_id = conn.execute(select(func.max(campaign_runs.c.id))).scalar_one()
        sms_member = conn.execute(
            select(func.min(deliveries.c.member_id)).where(deliveries.c.channel == "sms", deliveries.c.status == "sent")
        ).scalar_one()
    return {"app": application, "base": web_server(application.settings), "run_id": run_id, "sms_member": sms_member}


def sign_in(browser: Any, base: str, password: str = PASSWORD) -> None:
    browser.find_element(By.NAME, "name").send_keys("marketer")
    browser.find_element(By.NAME, "password").send_keys(password)
    submitted(browser, "#login button", lambda driver: True)


def text_of(browser: Any, css: str) -> str:
    return str(browser.find_element(By.CSS_SELECTOR, css).text)


def submitted(browser: Any, css: str, until: Any) -> None:
    """Click the form's button and wait for the page it leads to (a click does not wait)."""
    old = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.CSS_SELECTOR, css).click()
    WebDriverWait(browser, 15).until(lambda driver: not _alive(old) and until(driver))


def _alive(element: Any) -> bool:
    try:
        element.tag_name  # noqa: B018  # raises once the page it belonged to is gone
    except Exception:
        return False
    return True


def test_an_operator_walks_every_console_page_in_chromium(console, browser) -> None:
    base, run_id = console["base"], console["run_id"]

    # Given the console, When a page is opened without signing in, Then the login page shows
    browser.get(f"{base}/console/runs/{run_id}")
    assert "/console/login" in browser.current_url
    browser.shot("login")
    # And a wrong password is refused in the program's language (Russian)
    sign_in(browser, base, password="wrong password")
    assert "Неверное имя оператора или пароль" in text_of(browser, "#problem")

    # When the operator signs in, Then the page first asked for opens
    sign_in(browser, base)
    assert browser.current_url.endswith(f"/console/runs/{run_id}")

    # And the campaigns page shows schedule, next fire times, segment, channels, caps, last runs
    browser.get(f"{base}/console/campaigns")
    card = text_of(browser, "#campaign-balance_reminder")
    assert "has_balance" in card and "telegram → email → sms" in card and "0 11 1 * *" in card
    fires = text_of(browser, "#campaign-balance_reminder .fires")
    assert len(re.findall(r"\d{4}-\d{2}-01 11:00", fires)) == 3
    assert "sms/marketing: 1 per 30d" in card and "20%" in card
    assert f"#{run_id}" in card
    browser.shot("campaigns")

    # When the run is opened from there
    submitted(browser, f'#campaign-balance_reminder a[href="/console/runs/{run_id}"]', lambda d: d.find_elements(By.ID, "counts"))
    # Then it shows counts per status and channel, a chart, SMS segments and cost, reasons
    counts = text_of(browser, "#counts")
    assert "sent" in counts and "held_out" in counts and "no_consent" in counts
    assert browser.find_elements(By.CSS_SELECTOR, "#sends svg.chart rect")
    assert re.search(r"sms: \d+ сообщений, около \d+ сегментов", text_of(browser, "#sms"))
    reasons = text_of(browser, "#reasons")
    assert "held_out" in reasons and "no_consent" in reasons
    browser.shot("run")

    # When a member is looked up by the form
    member_id = console["sms_member"]
    browser.get(f"{base}/console/members")
    browser.find_element(By.NAME, "member_id").send_keys(str(member_id))
    submitted(browser, "#find-member button", lambda driver: driver.find_elements(By.ID, "decisions"))
    # Then every decision shows with its reason, and preferences and suppressions
    assert browser.current_url.endswith(f"/console/members/{member_id}")
    decisions = text_of(browser, "#decisions")
    assert "balance_reminder" in decisions and "sms" in decisions
    assert text_of(browser, "#preferences") and text_of(browser, "#suppressions")
    browser.shot("member")

    # When the preview is asked for that member
    browser.get(f"{base}/console/preview")
    Select(browser.find_element(By.NAME, "campaign")).select_by_visible_text("balance_reminder")
    browser.find_element(By.NAME, "member_id").send_keys(str(member_id))
    submitted(browser, "#preview-form button", lambda driver: driver.find_elements(By.ID, "preview-sms"))
    # Then the SMS shows with its segments, and every channel of the campaign has its card
    assert re.search(r"\d сегм\., (GSM-7|UCS-2)", text_of(browser, "#preview-sms"))
    assert browser.find_elements(By.CSS_SELECTOR, "#preview-email, #preview-telegram")
    browser.shot("preview")

    # When a plan is asked for as of a chosen date
    browser.get(f"{base}/console/plan")
    Select(browser.find_element(By.NAME, "campaign")).select_by_visible_text("balance_reminder")
    field = browser.find_element(By.NAME, "as_of")
    browser.execute_script("arguments[0].value = arguments[1]", field, "2027-02-01T11:00")
    submitted(browser, "#plan-form button", lambda driver: driver.find_elements(By.ID, "plan"))
    # Then the decisions it would take are counted, and nothing was kept
    plan = text_of(browser, "#plan")
    assert "2027-02-01" in plan and "queued" in plan
    browser.shot("plan")
    with console["app"].engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(campaign_runs)).scalar_one() == 1

    # When the campaign's lift is opened
    browser.get(f"{base}/console/lift/balance_reminder")
    # Then each measure has its difference and interval, drawn as a chart
    redeemed = text_of(browser, "#metric-redeemed")
    assert re.search(r"[+-]\d+\.\d% \.\. [+-]\d+\.\d%", redeemed)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#lift svg.chart circle")) == 5
    assert "потрачено баллов на участника" in text_of(browser, "#metric-points_redeemed")
    browser.shot("lift")
    # And one occasion with another window can be chosen
    browser.find_element(By.NAME, "window").clear()
    browser.find_element(By.NAME, "window").send_keys("7d")
    submitted(browser, "#lift-form button", lambda driver: driver.find_elements(By.ID, "lift"))
    assert "окно 7d" in text_of(browser, "#lift")

    # And the global control group page says it is off
    browser.get(f"{base}/console/control")
    assert "выключена" in browser.page_source

    # When the operator signs out, Then pages lead to the login again
    submitted(browser, "header form button", lambda driver: "/console/login" in driver.current_url)
    browser.get(f"{base}/console/campaigns")
    assert "/console/login" in browser.current_url


PAGES = ["/console/campaigns", "/console/runs/1", "/console/members", "/console/members/1", "/console/preview"]
PAGES += ["/console/plan", "/console/lift/balance_reminder", "/console/control"]
FORMS = ["/console/members", "/console/preview", "/console/plan", "/console/lift/balance_reminder", "/console/logout"]


def login(base: str) -> httpx.Client:
    client = httpx.Client(base_url=base, follow_redirects=False)
    page = client.get("/console/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token is not None
    answer = client.post("/console/login", data={"csrf": token.group(1), "name": "marketer", "password": PASSWORD})
    assert answer.status_code == 303, answer.text
    return client


def csrf_of(client: httpx.Client) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get("/console/preview").text)
    assert found is not None
    return found.group(1)


def test_no_page_or_form_without_a_session_and_no_form_without_its_token(console) -> None:
    base = console["base"]
    # Given no session, When any page is opened or any form posted, Then it is a redirect to the login
    with httpx.Client(base_url=base) as anonymous:
        for path in PAGES:
            answer = anonymous.get(path)
            assert answer.status_code == 303 and answer.headers["location"].startswith("/console/login"), path
        for path in FORMS:
            answer = anonymous.post(path, data={"campaign": "balance_reminder", "member_id": "1", "as_of": "2027-01-01T10:00"})
            assert answer.status_code == 303 and answer.headers["location"].startswith("/console/login"), path
        # And a login form posted without its token (or with a made-up one) is refused
        assert anonymous.post("/console/login", data={"name": "marketer", "password": PASSWORD}).status_code == 403
        anonymous.get("/console/login")
        forged = anonymous.post("/console/login", data={"csrf": "x.y", "name": "marketer", "password": PASSWORD})
        assert forged.status_code == 403 and "loyalcast_console" not in forged.cookies

    # Given a session, When a form is posted without its token, or with another session's, Then 403
    client, other = login(base), login(base)
    for path in FORMS:
        assert client.post(path, data={"campaign": "balance_reminder", "member_id": "1"}).status_code == 403, path
        assert client.post(path, data={"csrf": csrf_of(other), "member_id": "1"}).status_code == 403, path
    # And with its own token it works
    assert client.post("/console/members", data={"csrf": csrf_of(client), "member_id": "5"}).headers["location"] == (
        "/console/members/5"
    )
    # And every page answers 200 with the session, with no-store and a script-less policy
    for path in PAGES:
        answer = client.get(path)
        assert answer.status_code == 200, path
        assert answer.headers["cache-control"] == "no-store" and "script-src" not in answer.headers["content-security-policy"]

    # When the session cookie is altered, Then it is no session
    cookie = client.cookies["loyalcast_console"]
    client.cookies.set("loyalcast_console", cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB"), path="/console")
    assert client.get("/console/campaigns").status_code == 303
    # And the login never redirects off the console
    page = httpx.get(f"{base}/console/login?next=https://evil.example/console/x")
    assert "evil" not in page.text


def test_passwords_sessions_and_tokens() -> None:
    # Given an operator entry, When passwords are checked, Then only the right one matches
    stored = hash_password(PASSWORD)
    assert check_password(PASSWORD, stored) and not check_password(PASSWORD + "!", stored)
    assert not check_password(PASSWORD, "scrypt$broken")
    operators = parse_operators(f"marketer:{stored},\n other:{hash_password('another password')}\n", "VAR")
    assert set(operators) == {"marketer", "other"}
    with pytest.raises(ValueError, match="VAR: entry 2 is not name:scrypt"):
        parse_operators(f"marketer:{stored},other:plaintext", "VAR")

    # When a session is made, Then it proves the operator until it expires
    guard = Guard(b"k" * 32, operators, lifetime_seconds=60)
    cookie = guard.login("marketer", PASSWORD)
    assert cookie is not None and guard.session(cookie).operator == "marketer"  # type: ignore[union-attr]
    assert guard.login("marketer", "wrong") is None and guard.login("nobody", PASSWORD) is None
    assert (
        Guard(b"k" * 32, operators, lifetime_seconds=-1).session(Guard(b"k" * 32, operators, -1).login("marketer", PASSWORD))
        is None
    )
    # And changing the operator's password, or another key, ends it
    changed = Guard(b"k" * 32, {**operators, "marketer": hash_password("a new password!")}, 60)
    assert changed.session(cookie) is None
    assert Guard(b"j" * 32, operators, 60).session(cookie) is None
    # And a CSRF token belongs to its session only
    assert guard.check_session_csrf(cookie, guard.csrf_for_session(cookie))
    assert not guard.check_session_csrf(cookie, guard.csrf_for_session(cookie + "x")) and not guard.check_session_csrf(
        cookie, None
    )
    nonce, token = guard.login_nonce()
    assert guard.check_login_csrf(nonce, token) and not guard.check_login_csrf(guard.login_nonce()[0], token)


def test_the_console_refuses_to_start_with_a_malformed_operator_list(configured, monkeypatch) -> None:
    # Given an operator list with a clear-text password
    monkeypatch.setenv("LOYALCAST_CONSOLE_USERS", "marketer:hunter2")
    application = configured()
    from campaigns.errors import ConfigError
    from campaigns.web.app import create_app

    # When the web service is created, Then it stops naming the settings key, never the password
    with pytest.raises(ConfigError) as raised:
        create_app(application.settings, engine=application.engine)
    assert raised.value.problems == [
        "web.console_users_env: LOYALCAST_CONSOLE_USERS: entry 1 is not name:scrypt$... "
        "(make one with: loyalcast console passwd NAME)"
    ]


def test_a_run_page_answers_from_its_snapshot_and_refreshes_it_when_stale(
    configured, web_port, web_server, monkeypatch, operator_entry
) -> None:
    # Given a run page whose figures are read again once older than a second
    monkeypatch.setenv("LOYALCAST_CONSOLE_USERS", operator_entry)
    application = configured({"web": {"port": web_port, "public_url": f"http://127.0.0.1:{web_port}", "console_refresh": "1s"}})
    demo.seed(application.engine, 200)
    report = json.loads(cli(application.settings.source, "run", "balance_reminder", "--json", "--now", RUN_AT.isoformat()).stdout)
    client = login(web_server(application.settings))
    path = f"/console/runs/{report['run_id']}"

    def sent_on_email(page: str) -> str:
        row = re.search(r"<td>sent</td>(.*?)</tr>", page, re.S)
        assert row is not None
        return re.findall(r'<td class="n">([^<]*)</td>', row.group(1))[0]

    # When it is first opened, Then the figures are the ledger's
    first = client.get(path).text
    emailed = int(sent_on_email(first))
    assert emailed == report["counts"]["sent"]["email"]

    # When the ledger changes (reports say three emails bounced)
    with application.engine.begin() as conn:
        ids = (
            conn.execute(
                select(deliveries.c.id).where(deliveries.c.run_id == report["run_id"], deliveries.c.channel == "email").limit(3)
            )
            .scalars()
            .all()
        )
        conn.execute(deliveries.update().where(deliveries.c.id.in_(ids)).values(status="bounced"))
    # Then the snapshot answers at once, and within a refresh the page shows the change
    assert int(sent_on_email(client.get(path).text)) == emailed
    time.sleep(1.1)
    assert eventually(lambda: int(sent_on_email(client.get(path).text)), emailed - 3, timeout=10) == emailed - 3


def test_the_control_group_page_shows_the_period_its_strata_and_its_lift(
    configured, web_port, web_server, monkeypatch, operator_entry
) -> None:
    # Given a 10% global control group and a marketing run this period
    monkeypatch.setenv("LOYALCAST_CONSOLE_USERS", operator_entry)
    application = configured({"web": {"port": web_port, "public_url": f"http://127.0.0.1:{web_port}"}, "control": {"share": 0.1}})
    demo.seed(application.engine, 300)
    cli(application.settings.source, "run", "balance_reminder")
    client = login(web_server(application.settings))

    # When the operator opens the control group page
    page = client.get("/console/control").text

    # Then it names the period and shows each tier's members and 10% share, and the lift's sizes
    assert re.search(r"global control group \(10%, \d{4}-Q[1-4]\)", page)
    with application.engine.connect() as conn:
        tiers = dict(conn.execute(select(members.c.tier, func.count()).group_by(members.c.tier)).all())
    rows = re.findall(r"<tr><td>(\w+)</td><td class=\"n\">([\d\s\xa0]+)</td><td class=\"n\">([\d\s\xa0]+)</td>", page)
    assert rows and {tier for tier, _, _ in rows} <= set(tiers)
    for _, drawn, held in rows:
        assert abs(int(re.sub(r"\D", "", held)) - int(re.sub(r"\D", "", drawn)) / 10) <= 1
    assert "в контрольной" in page
