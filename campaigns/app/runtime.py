"""The process-wide application: settings, database engine, renderer, broker.

Dramatiq binds actors to the broker that is global when they are declared, so the broker
must exist before ``workers`` is imported. ``configure(path)`` (the CLI calls it with
``--config``) records which settings file to use and exports it as ``$LOYALCAST_CONFIG``
for ``dramatiq`` worker processes; ``install_broker()`` builds and installs the broker
the settings name; ``app()`` builds everything else lazily, after any fork.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import Engine

from campaigns import metrics
from campaigns.config.loading import CONFIG_ENV, config_path, load_settings
from campaigns.config.settings import Settings
from campaigns.delivery.deliverer import CALL_MARGIN, Deliverer
from campaigns.delivery.message import MessageBuilder
from campaigns.delivery.rendering import Renderer
from campaigns.store.engine import make_engine

_lock = threading.Lock()
_app: App | None = None


@dataclass
class App:
    settings: Settings
    serving: bool = False
    """True inside ``loyalcast serve``: the in-memory broker then outlives the command."""
    stopping: threading.Event = field(default_factory=threading.Event)
    """Set when this process's worker is shutting down: batches hand back what they have not reached."""

    def __post_init__(self) -> None:
        metrics.set_enabled(self.settings.metrics.enabled)

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.database_url, pool_size=self.settings.database.pool_size)

    @cached_property
    def renderer(self) -> Renderer:
        return Renderer(self.settings.templates_path, self.settings.program, self.settings.rendering)

    @cached_property
    def messages(self) -> MessageBuilder:
        return MessageBuilder(self.settings, self.renderer)

    @cached_property
    def deliverer(self) -> Deliverer:
        """What sends; ConfigError while a provider secret is missing (nothing is claimed)."""
        self.settings.require_secrets()
        return Deliverer(self.settings, self.engine, self.messages, self.stopping)

    @property
    def in_memory(self) -> bool:
        return self.settings.broker_url == "memory://"

    @property
    def keeps_delayed(self) -> bool:
        """Whether a delayed message will still be there when due (Redis, or ``serve``)."""
        return not self.in_memory or self.serving


def configure(path: str | os.PathLike[str] | None = None, settings: Settings | None = None) -> App:
    """Select the settings for this process (and the worker processes it starts)."""
    global _app
    with _lock:
        if settings is None:
            settings = load_settings(path)
            os.environ[CONFIG_ENV] = str(Path(config_path(path)).resolve())
        if _app is not None and "engine" in _app.__dict__:
            _app.engine.dispose()
        _app = App(settings)
        return _app


def app() -> App:
    """The configured application; loads ``$LOYALCAST_CONFIG`` (or ./settings.toml) on first use."""
    global _app
    with _lock:
        if _app is None:
            _app = App(load_settings(None))
        return _app


class GracefulStop(dramatiq.Middleware):
    """Tells running batches that their worker is shutting down (SIGTERM, Ctrl-C): each
    finishes its provider call in flight, records it and hands back the rest."""

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        app().stopping.clear()  # an in-process worker started again (tests, `run` after `run`)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        app().stopping.set()


def build_broker(settings: Settings) -> dramatiq.Broker:
    url = settings.broker_url
    broker: dramatiq.Broker = StubBroker() if url == "memory://" else RedisBroker(url=url)
    broker.add_middleware(GracefulStop())
    if settings.metrics.enabled and isinstance(broker, RedisBroker):
        broker.add_middleware(_prometheus(settings))
    return broker


def _prometheus(settings: Settings) -> dramatiq.Middleware:
    from dramatiq.middleware import prometheus

    configure_prometheus(settings)
    return prometheus.Prometheus()


def configure_prometheus(settings: Settings) -> None:
    """Point Dramatiq's Prometheus exposition at ``[metrics]`` host and port.

    Dramatiq's middleware reads its address and database folder from environment
    variables when its module is first imported, which ``import dramatiq`` did before
    the settings were read; so the module's values are set directly. The exposition
    server is forked from the ``dramatiq`` master process, which never reads our
    settings: ``loyalcast worker`` calls this there too.
    """
    from dramatiq.middleware import prometheus

    metrics = settings.metrics
    folder = os.environ.get("dramatiq_prom_db") or os.path.join(tempfile.gettempdir(), f"loyalcast-prometheus-{metrics.port}")
    os.makedirs(folder, exist_ok=True)
    os.environ.update(dramatiq_prom_host=metrics.host, dramatiq_prom_port=str(metrics.port), dramatiq_prom_db=folder)
    prometheus.HTTP_HOST, prometheus.HTTP_PORT, prometheus.DB_PATH = metrics.host, metrics.port, folder


def install_broker() -> dramatiq.Broker:
    """Build the broker the settings name and make it Dramatiq's global broker."""
    broker = build_broker(app().settings)
    dramatiq.set_broker(broker)
    return broker


def drain_in_process(broker: dramatiq.Broker, *, threads: int, timeout_s: float | None = None) -> None:
    """Process every message on ``broker`` (a StubBroker) with an in-process worker.

    Returns when all queues, delayed messages included, are empty; re-raises the error
    of a message that ran out of retries.
    """
    assert isinstance(broker, StubBroker), "in-process draining is for the memory:// broker"
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=50)
    worker.start()
    timeout_ms = int(timeout_s * 1000) if timeout_s else None
    try:
        # Joining one queue can fill another (plans -> batches): repeat until a full
        # pass finds every queue idle.
        while True:
            for queue_name in sorted(broker.get_declared_queues()):
                broker.join(queue_name, timeout=timeout_ms, fail_fast=True)
            if all(broker.queues[name].unfinished_tasks == 0 for name in broker.queues):
                break
    finally:
        worker.stop()


def current() -> App | None:
    """The configured application, or None before any command configured one."""
    return _app


def reset() -> None:
    """Forget the configured application (tests switch settings within one process)."""
    global _app
    with _lock:
        if _app is not None and "engine" in _app.__dict__:
            _app.engine.dispose()
        _app = None
        os.environ.pop(CONFIG_ENV, None)


def config_file() -> str | None:
    """The settings file the configured process (and its workers) use."""
    return os.environ.get(CONFIG_ENV)


def running_under_dramatiq() -> bool:
    """Whether this process is a worker started by ``dramatiq`` (or ``loyalcast worker``)."""
    import sys

    program = sys.argv[0] if sys.argv else ""
    return os.path.basename(program) == "dramatiq" or program.endswith(os.path.join("dramatiq", "__main__.py"))


def stop_timeout(settings: Settings) -> float:
    """Seconds a graceful stop of a worker may take: each batch finishes its provider call
    in flight (at most the slowest channel's timeout), records it and hands back the
    rest. ``loyalcast worker`` passes it to Dramatiq as ``--worker-shutdown-timeout``."""
    return settings.slowest_timeout.total_seconds() + CALL_MARGIN + STOP_MARGIN


STOP_MARGIN = 10.0
"""Seconds for handing back and closing connections after the last call."""
