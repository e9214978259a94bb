"""Running the web service: ``loyalcast web`` (uvicorn in the foreground) and the one
``loyalcast serve`` starts in a thread beside scheduler and worker.

uvicorn's own access log is off (it prints paths, and a path carries a member's token);
``campaigns.web.app`` logs each request by route template instead, through loyalcast's
logging (``--log-json`` for JSON lines).
"""

from __future__ import annotations

import os
import threading
import time

import uvicorn
from fastapi import FastAPI

from campaigns.config.loading import CONFIG_ENV, load_settings
from campaigns.config.settings import Settings
from campaigns.errors import LoyalcastError
from campaigns.web.app import create_app


def _config(app: FastAPI | str, settings: Settings, **extra: object) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.web.host,
        port=settings.web.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        server_header=False,
        **extra,  # type: ignore[arg-type]
    )


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; ``[web] workers`` processes (each loads the settings
    file again, from ``$LOYALCAST_CONFIG``)."""
    if settings.web.workers > 1:
        os.environ[CONFIG_ENV] = settings.source
        uvicorn.Server(
            _config("campaigns.web.server:app_from_environment", settings, factory=True, workers=settings.web.workers)
        ).run()
        return
    uvicorn.Server(_config(create_app(settings), settings)).run()


def app_from_environment() -> FastAPI:
    """The application of a uvicorn worker process (settings from ``$LOYALCAST_CONFIG``)."""
    return create_app(load_settings(os.environ.get(CONFIG_ENV)))


class Background:
    """The service on a thread of this process (``serve``): ``start``, then ``stop``."""

    def __init__(self, settings: Settings) -> None:
        self.server = uvicorn.Server(_config(create_app(settings), settings))
        self.thread = threading.Thread(target=self.server.run, name="loyalcast-web", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        """Start and wait until it listens; LoyalcastError naming ``web.port`` when it
        cannot (the port is taken), so ``serve`` does not run without its links."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                config = self.server.config
                raise LoyalcastError(f"web.port: loyalcast web cannot listen on {config.host}:{config.port} (is it in use?)")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
