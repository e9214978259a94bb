"""Prometheus metrics of loyalcast, next to Dramatiq's own.

Worker processes started by ``loyalcast worker`` (or ``dramatiq workers``) with
``[metrics] enabled`` export Dramatiq's middleware metrics and these on
``http://host:port/metrics``; Prometheus' multiprocess mode gathers every process's
values. The collectors are created on first use, after the worker process has booted,
because the multiprocess directory must be known before ``prometheus_client`` is used.
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_collectors: dict[str, Any] = {}
_enabled = True


def set_enabled(enabled: bool) -> None:
    """``[metrics] enabled``: when off, the functions below do nothing (they cost a few
    per cent of a delivery worker's time otherwise)."""
    global _enabled
    _enabled = enabled


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _get(name: str) -> Any:
    if _collectors:  # filled once, all at a time (below): no lock on the hot path
        return _collectors[name]
    with _lock:
        if not _collectors:
            from prometheus_client import Counter, Histogram

            _collectors.update(
                {
                    "decisions": Counter(
                        "loyalcast_decisions_total",
                        "Ledger decisions made, by campaign, channel and status",
                        ["campaign", "channel", "status"],
                    ),
                    "outcomes": Counter(
                        "loyalcast_delivery_outcomes_total",
                        "Delivery attempts' outcomes, by channel and status",
                        ["channel", "status"],
                    ),
                    "retries": Counter(
                        "loyalcast_delivery_retries_total",
                        "Transient failures put back for another attempt, by channel",
                        ["channel"],
                    ),
                    "throttled": Histogram(
                        "loyalcast_throughput_wait_seconds",
                        "Time a send waited for its provider's throughput limit",
                        ["channel"],
                        buckets=LATENCY_BUCKETS,
                    ),
                    "web_requests": Histogram(
                        "loyalcast_web_request_seconds",
                        "Requests loyalcast web answered, by route and status class",
                        ["route", "status"],
                        buckets=LATENCY_BUCKETS,
                    ),
                    "events": Counter(
                        "loyalcast_provider_events_total",
                        "Providers' events received at webhooks or from the bounce mailbox, by channel and whether new",
                        ["channel", "outcome"],
                    ),
                    "preferences": Counter(
                        "loyalcast_preference_changes_total",
                        "Members' choices recorded, by action (one-click, this, all, save, resubscribe, telegram)",
                        ["action"],
                    ),
                    "invalid_links": Counter(
                        "loyalcast_invalid_links_total", "Member links refused: malformed, altered or from an old key"
                    ),
                    "alerts": Counter(
                        "loyalcast_provider_alerts_total",
                        "Sends refused because the provider account needs the operator (balance, credentials, sender name)",
                        ["channel", "transport"],
                    ),
                    "quota": Counter(
                        "loyalcast_quota_deferred_total",
                        "Deliveries moved to the next day because the provider's daily quota was used up",
                        ["channel"],
                    ),
                    "latency": Histogram(
                        "loyalcast_provider_latency_seconds",
                        "Time a transport took to send one message",
                        ["channel", "transport"],
                        buckets=LATENCY_BUCKETS,
                    ),
                }
            )
        return _collectors[name]


def decisions(campaign: str, counts: dict[tuple[str, str], int]) -> None:
    """``counts`` maps (status, channel) to how many new ledger rows got them."""
    if not _enabled:
        return
    counter = _get("decisions")
    for (status, channel), n in counts.items():
        counter.labels(campaign, channel or "-", status).inc(n)


def outcome(channel: str | None, status: str) -> None:
    if _enabled:
        _get("outcomes").labels(channel or "-", status).inc()


def retry(channel: str | None) -> None:
    if _enabled:
        _get("retries").labels(channel or "-").inc()


def provider_latency(channel: str, transport: str, seconds: float) -> None:
    if _enabled:
        _get("latency").labels(channel, transport).observe(seconds)


def quota_deferred(channel: str, count: int) -> None:
    if _enabled:
        _get("quota").labels(channel).inc(count)


def provider_alert(channel: str, transport: str) -> None:
    if _enabled:
        _get("alerts").labels(channel, transport).inc()


def throughput_wait(channel: str, seconds: float) -> None:
    if _enabled:
        _get("throttled").labels(channel).observe(seconds)


# --- the reconciler's gauges (scheduler and serve processes) ---------------------------

_reconciler: dict[str, Any] = {}


def _reconciler_metrics() -> dict[str, Any]:
    with _lock:
        if not _reconciler:
            from prometheus_client import CollectorRegistry, Counter, Gauge

            registry = CollectorRegistry()
            _reconciler.update(
                {
                    "registry": registry,
                    "overdue": Gauge(
                        "loyalcast_overdue_deliveries",
                        "Queued deliveries due for longer than reconciler.overdue, at the last pass",
                        registry=registry,
                    ),
                    "stalled": Gauge(
                        "loyalcast_stalled_runs",
                        "Runs still planning whose planner lease lapsed, at the last pass",
                        registry=registry,
                    ),
                    "unknown": Counter(
                        "loyalcast_lost_calls_total",
                        "Deliveries ended unknown because their worker was lost during the provider call",
                        registry=registry,
                    ),
                }
            )
        return _reconciler


def reconciled(overdue: int, stalled: int, unknown: int) -> None:
    """One reconciler pass's findings."""
    if not _enabled:
        return
    found = _reconciler_metrics()
    found["overdue"].set(overdue)
    found["stalled"].set(stalled)
    found["unknown"].inc(unknown)


def serve_reconciler_metrics(host: str, port: int) -> None:
    """Expose the reconciler's metrics on ``http://host:port/metrics`` (a daemon thread)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host, registry=_reconciler_metrics()["registry"])


# --- loyalcast web ------------------------------------------------------------------------


def web_request(route: str, status: int, seconds: float) -> None:
    if _enabled:
        _get("web_requests").labels(route, f"{status // 100}xx").observe(seconds)


def provider_events(channel: str, new: int, duplicate: int) -> None:
    if _enabled:
        if new:
            _get("events").labels(channel, "new").inc(new)
        if duplicate:
            _get("events").labels(channel, "duplicate").inc(duplicate)


def preference_changed(action: str) -> None:
    if _enabled:
        _get("preferences").labels(action).inc()


def invalid_link() -> None:
    if _enabled:
        _get("invalid_links").inc()
