"""Shared fixtures: settings files in a temporary folder, an embedded SQLite database,
and real PostgreSQL and Redis servers on 127.0.0.1.

Tests that need PostgreSQL or Redis use the real servers. Outside CI a missing server
skips them; under ``CI=true`` it fails them.
"""

from __future__ import annotations

import copy
import os
import socket
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from sqlalchemy import create_engine, text

from campaigns.app import runtime
from campaigns.config.loading import load_settings
from campaigns.config.settings import Settings
from campaigns.store import schema

REPO = Path(__file__).resolve().parent.parent
SHIPPED_SETTINGS = REPO / "settings.toml"
IN_CI = os.environ.get("CI", "").lower() == "true"
PG_ADMIN_URL = os.environ.get("LOYALCAST_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LOYALCAST_TEST_REDIS", "redis://127.0.0.1:6379/15")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_server(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if IN_CI:
        pytest.fail(message + " (CI=true: tests that need it must run)")
    pytest.skip(message)


def shipped_settings() -> dict[str, Any]:
    return tomllib.loads(SHIPPED_SETTINGS.read_text(encoding="utf-8"))


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture
def write_settings(tmp_path: Path) -> Callable[..., Path]:
    """Write a settings file derived from the shipped one; returns its path.

    ``drop`` removes top-level keys of the shipped settings, then ``changes`` are merged
    in (tables merge, other values replace). Templates point at the repository's.
    """

    def write(changes: dict[str, Any] | None = None, *, drop: tuple[str, ...] = (), name: str = "settings.toml") -> Path:
        data = shipped_settings()
        data["templates_dir"] = str(REPO / "templates")
        data["database"] = {"url": f"sqlite:///{tmp_path / 'loyalcast.db'}"}
        data["broker"] = {"url": "memory://"}
        data["outbox"] = {"dir": str(tmp_path / "outbox")}
        data["metrics"] = {"enabled": False}  # workers of different tests must not fight over a port
        # The shipped balance reminder holds 10% out for the demo's lift; tests that count
        # who was sent want every member, and tests of control groups set their own.
        data["campaigns"]["balance_reminder"]["holdout"] = 0.0
        port = free_port()  # nor `serve`'s web services
        data["web"] = {**data["web"], "port": port, "public_url": f"http://127.0.0.1:{port}"}
        for key in drop:
            data.pop(key, None)
        data = deep_merge(data, changes or {})
        path = tmp_path / name
        path.write_text(tomli_w.dumps(data), encoding="utf-8")
        return path

    return write


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test (dropped afterwards)."""
    require_server("PostgreSQL", "127.0.0.1", 5432)
    name = f"loyalcast_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        runtime.reset()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """Redis database 15, flushed before and after the test."""
    require_server("Redis", "127.0.0.1", 6379)
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    try:
        yield REDIS_URL
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that uses it runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'loyalcast.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def configured(write_settings: Callable[..., Path], database_url: str) -> Callable[..., runtime.App]:
    """Configure the process for a settings file on ``database_url`` and create its schema."""

    def configure(changes: dict[str, Any] | None = None) -> runtime.App:
        path = write_settings(deep_merge({"database": {"url": database_url}}, changes or {}))
        application = runtime.configure(path)
        schema.upgrade(application.engine)
        return application

    yield configure
    runtime.reset()


def load(path: Path) -> Settings:
    return load_settings(path)


# --- the web service and a real browser -----------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = REPO / "tests" / "artifacts"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def web_port() -> int:
    """A free port for a test's ``loyalcast web``; settings put it in ``[web]``."""
    return free_port()


@pytest.fixture
def web_server() -> Iterator[Callable[[Settings], str]]:
    """Start the real web service (uvicorn on loopback, in a thread) for settings; its base URL."""
    from campaigns.web.server import Background

    started: list[Any] = []

    def start(settings: Settings) -> str:
        server = Background(settings)
        server.start()
        started.append(server)
        return f"http://{settings.web.host}:{settings.web.port}"

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Headless Chromium (Debian's chromium and chromium-driver, which `make test` installs);
    ``browser.shot(name)`` saves a screenshot under tests/artifacts/."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if IN_CI:
            pytest.fail("chromium and chromium-driver are not installed (make test installs them)")
        pytest.skip("chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(20)

    def shot(name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{request.node.name}-{name}.png".replace("/", "_")
        driver.save_screenshot(str(path))
        return path

    driver.shot = shot
    try:
        yield driver
    finally:
        driver.quit()
