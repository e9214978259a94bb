"""loyalcast web for operators: health, metrics, the OpenAPI schema, 4xx JSON naming the
field, logs without personal data, and no 5xx for any generated input (schemathesis)."""

from __future__ import annotations

import logging

import httpx
import pytest
import schemathesis
from helpers import add_member
from hypothesis import HealthCheck, given, settings

from campaigns.config.loading import load_settings
from campaigns.errors import ConfigError

NOON = "2026-11-24T12:00+03:00"


@pytest.fixture
def web(configured, web_port, web_server):  # type: ignore[no-untyped-def]
    application = configured(
        {"web": {"port": web_port, "public_url": f"http://127.0.0.1:{web_port}"}, "metrics": {"enabled": True}}
    )
    add_member(application.engine, 2, email="irina@example.com", email_consent=True)
    return application, web_server(application.settings)


def test_health_metrics_and_openapi(web) -> None:
    _, base = web
    health = httpx.get(f"{base}/healthz")
    assert health.status_code == 200 and health.json()["database"] == "ok"
    httpx.get(f"{base}/u/not-a-token-at-all-0000000000")
    metrics = httpx.get(f"{base}/metrics").text
    assert 'loyalcast_web_request_seconds_count{route="/u/{token}",status="4xx"}' in metrics
    assert "loyalcast_invalid_links_total" in metrics
    schema = httpx.get(f"{base}/openapi.json").json()
    assert {"/u/{token}", "/webhooks/{channel}", "/healthz", "/metrics"} <= set(schema["paths"])


def test_errors_are_json_naming_the_field(web) -> None:
    _, base = web
    unknown = httpx.post(f"{base}/webhooks/fax", content=b"{}")
    assert unknown.status_code == 404 and unknown.json()["field"] == "path.channel"
    unconfigured = httpx.post(f"{base}/webhooks/email", content=b"{}")  # the outbox: no webhook secret set
    assert unconfigured.status_code == 404 and "webhook_secret_env" in unconfigured.json()["error"]
    nowhere = httpx.get(f"{base}/nowhere")
    assert nowhere.status_code == 404 and nowhere.json() == {"error": "Not Found", "field": None}
    wrong_method = httpx.delete(f"{base}/healthz")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    big = httpx.post(f"{base}/webhooks/sms", content=b"x" * 1_000_001)
    assert big.status_code in (404, 413)


def test_access_logs_carry_the_route_never_the_token(web, caplog) -> None:
    application, base = web
    url = application.settings.unsubscribe_url(2, "email", "marketing")
    token = url.rsplit("/", 1)[1]
    with caplog.at_level(logging.INFO, logger="campaigns.web.access"):
        assert httpx.get(url).status_code == 200
        assert httpx.post(url, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    lines = [record.getMessage() for record in caplog.records if record.name == "campaigns.web.access"]
    assert lines and all("/u/{token}" in line for line in lines)
    assert not any(token in record.getMessage() or "irina" in record.getMessage() for record in caplog.records)


def test_a_short_or_missing_link_key_is_refused_before_anything_runs(write_settings, monkeypatch) -> None:
    # Given a link key of 10 bytes in the environment
    monkeypatch.setenv("LOYALCAST_LINK_KEY", "0123456789")
    path = write_settings()
    # Then the settings are refused, naming the key
    with pytest.raises(ConfigError) as problem:
        load_settings(path)
    assert problem.value.problems == ["web.key_env: LOYALCAST_LINK_KEY holds 10 bytes; a link key needs at least 32"]

    # And without any key (no key file), commands that send say which variable to set
    monkeypatch.delenv("LOYALCAST_LINK_KEY")
    settings_path = write_settings({"web": {"key_file": ""}}, name="nokey.toml")
    text = settings_path.read_text().replace('key_file = ""\n', "")
    settings_path.write_text(text)
    loaded = load_settings(settings_path)
    with pytest.raises(ConfigError, match="web.key_env: environment variable LOYALCAST_LINK_KEY is not set"):
        loaded.require_secrets()


def test_no_generated_request_gets_a_server_error(web) -> None:
    # Given the service's own OpenAPI schema
    _, base = web
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5

    # When schemathesis generates requests for every operation (path, query, headers, bodies)
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        def no_server_error(case) -> None:  # type: ignore[no-untyped-def]
            # Then no answer is a 5xx
            response = case.call(base_url=base)
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])

        no_server_error()
