"""The tables of ``settings.toml`` other than caps, quiet hours and channels: program,
database, broker, delivery, segments, campaigns, triggered messages, scheduler,
metrics and logging."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from babel.numbers import list_currencies
from croniter import CroniterBadDateError, croniter
from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from campaigns.config.values import (
    SERVICE,
    Category,
    ChannelName,
    Duration,
    LocaleName,
    Name,
    Section,
    TimeZoneName,
    parse_clock,
)
from channels.specs import CHANNELS


def _currency(value: str) -> str:
    if value not in list_currencies():
        raise ValueError(f"unknown currency {value!r} (use an ISO 4217 code such as 'RUB', 'EUR')")
    return value


Currency = Annotated[str, AfterValidator(_currency)]


class PluralWords(Section):
    """Word forms of "point" per CLDR plural category (``one``, ``few``, ``many``, ``other``)."""

    one: str | None = None
    two: str | None = None
    few: str | None = None
    many: str | None = None
    zero: str | None = None
    other: str

    def form(self, category: str) -> str:
        return getattr(self, category, None) or self.other


class ProgramSettings(Section):
    name: Name
    timezone: TimeZoneName = "Europe/Moscow"
    default_locale: LocaleName = "ru"
    locales: list[LocaleName] = Field(default_factory=lambda: ["ru", "en"], min_length=1)
    currency: Currency = "RUB"
    """ISO 4217 code for the ``money`` filter and SMS cost estimates."""
    site_url: str = "https://example.com"
    points_word: dict[str, PluralWords] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("unsubscribe_url", "unsubscribe_secret_env"):
                if key in data:
                    raise ValueError(
                        f"{key} is gone: unsubscribe links are always signed and served by loyalcast web "
                        "(set [web] public_url and key_env; see docs/operations.md)"
                    )
        return data


class DatabaseSettings(Section):
    url: str | None = None
    url_env: str | None = None
    pool_size: int = Field(default=10, ge=1, le=200)
    """Connections each process keeps open (PostgreSQL): at least a worker's threads,
    plus ``delivery.plan_connections`` for the one planning."""


class BrokerSettings(Section):
    url: str | None = "memory://"
    url_env: str | None = None


class OutboxSettings(Section):
    dir: str = "var/outbox"


class DeliverySettings(Section):
    batch_size: int = Field(default=500, ge=1, le=10_000)
    """Deliveries per ``deliver_batch`` message."""
    plan_chunk_size: int = Field(default=20_000, ge=100, le=100_000)
    """Members per planning transaction (each chunk locks its members in id order)."""
    plan_connections: int = Field(default=2, ge=1, le=16)
    """Chunks planned at once, each on its own database connection (PostgreSQL; SQLite
    has one writer and always plans one chunk at a time)."""
    memory_worker_threads: int = Field(default=2, ge=1, le=32)
    """Threads of the in-process worker used with the ``memory://`` broker."""
    max_attempts: int = Field(default=8, ge=1, le=50)
    """Attempts per delivery before a transient failure becomes ``failed``."""
    min_backoff: Duration = timedelta(seconds=15)
    max_backoff: Duration = timedelta(minutes=10)
    expiring_horizon_days: int = Field(default=60, ge=1, le=3660)
    """How far ahead templates see expiring points when the segment sets no horizon."""
    lease: Duration = timedelta(seconds=60)
    """How long a worker's claim on the row it is calling a provider for holds; after
    it, the reconciler ends the row ``unknown`` (the worker stopped or hung)."""
    batch_time_limit: Duration = timedelta(minutes=10)
    """Longest a ``deliver_batch`` message may run: a batch hands back what it has not
    reached before then, and Dramatiq's time limit is set to it."""
    plan_lease: Duration = timedelta(minutes=2)
    """How long a planner's claim on a run holds without progress (renewed per chunk)."""


TEMPLATE_NAME = re.compile(r"(?!\.)[A-Za-z0-9_.-]{1,100}")
"""A template is a folder directly under ``templates_dir``."""


class SegmentSettings(Section):
    """Filters that together (AND) select members. Every filter is optional."""

    min_balance: float | None = Field(default=None, ge=0)
    max_balance: float | None = Field(default=None, ge=0)
    expiring_within_days: int | None = Field(default=None, ge=1, le=3660)
    min_expiring_points: float | None = Field(default=None, ge=0)
    tiers: list[str] | None = None
    min_days_since_purchase: int | None = Field(default=None, ge=0)
    max_days_since_purchase: int | None = Field(default=None, ge=0)
    in_segment: str | None = None
    locales: list[LocaleName] | None = None


STRATUM_COLUMNS = ("locale", "timezone", *sorted(spec.consent for spec in CHANNELS.values()))
"""Columns of ``members`` a control group may be stratified by beside ``tier``: the
locale, the time zone and every channel's consent (from the specs, so a new channel's
consent is one without a change here)."""


def _stratum_column(value: str) -> str:
    if value not in STRATUM_COLUMNS:
        raise ValueError(f"cannot stratify by {value!r} (one of: {', '.join(STRATUM_COLUMNS)}; tier always is)")
    return value


StratumColumn = Annotated[str, AfterValidator(_stratum_column)]


class ControlSettings(Section):
    """The global control group: a share of members no marketing reaches for a period.

    Each period (a calendar month, quarter or year in the program's time zone) draws a
    new group, stratified by tier like a campaign holdout; ``loyalcast lift --global``
    compares it with everyone else. Service messages still reach its members.
    """

    share: float = Field(default=0.0, ge=0.0, le=0.5)
    """Share of members held out of all marketing; 0 turns the group off."""
    rotation: Literal["month", "quarter", "year"] = "quarter"
    salt: str = Field(default="global", min_length=1, max_length=100)
    """Changing it draws a new group at once."""
    by: StratumColumn | None = None
    """A column of ``members`` the group is stratified by beside ``tier``."""


class FallbackSettings(Section):
    """``[campaigns.<name>.fallback]``: when the message on ``on`` is not delivered within
    ``after`` (no delivery report, or a report that it failed), send it once on ``to``."""

    on: ChannelName
    to: ChannelName
    after: Duration


class CampaignSettings(Section):
    segment: str
    template: str
    channels: list[ChannelName] = Field(min_length=1)
    category: Category = "marketing"
    schedule: str | None = None
    description: str = ""
    max_segments: int = Field(default=2, ge=1, le=10)
    """Longest SMS the campaign may send, in segments; a longer one fails before sending."""
    holdout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Share of eligible members kept as a control group (recorded ``held_out``)."""
    holdout_salt: str | None = None
    """Changing the salt draws a new control group (default: the campaign name)."""
    holdout_by: StratumColumn | None = None
    """A column of ``members`` the holdout is stratified by beside ``tier``: every
    (tier, value) is held out in the same share."""
    send_at_local: str | None = None
    """``"HH:MM"``: deliver at the next such time in each member's own time zone."""
    kind: Literal["standard", "expiring_ladder"] = "standard"
    """``expiring_ladder``: remind of points expiring at several lead times (``stages``)."""
    stages: list[int] | None = None
    """Ladder lead times in days before the expiry date, e.g. ``[30, 7, 1]``."""
    min_points: float = Field(default=1, ge=0)
    """Ladder: points expiring on one date below which no reminder goes."""
    data: dict[str, Any] = Field(default_factory=dict)
    """Free values the campaign's templates see as ``data`` (a promo code, a deadline)."""
    catch_up: Literal["latest", "skip"] = "latest"
    """After scheduler downtime: run the latest missed occasion (if younger than
    ``catch_up_max_age``) or skip it; either way the decision is recorded."""
    catch_up_max_age: Duration = timedelta(hours=6)
    fallback: FallbackSettings | None = None
    """A cascade after the fact: one more message on another channel when the first is
    not delivered in time (``campaigns.planning.cascade``)."""

    @field_validator("stages")
    @classmethod
    def _stages(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value or any(stage < 0 or stage > 366 for stage in value):
            raise ValueError("stages are days before expiry, each from 0 to 366, e.g. [30, 7, 1]")
        if len(set(value)) != len(value):
            raise ValueError(f"stages {value} list a day twice")
        return sorted(value, reverse=True)

    @field_validator("send_at_local")
    @classmethod
    def _clock(cls, value: str | None) -> str | None:
        if value is not None:
            parse_clock(value)
        return value

    # References to other keys are checked here, with the raw file as context, so that
    # they are reported together with every other problem of the file.
    @field_validator("segment")
    @classmethod
    def _segment_exists(cls, value: str, info: ValidationInfo) -> str:
        known = (info.context or {}).get("segments")
        if known is not None and value not in known:
            raise ValueError(f"unknown segment {value!r} (known: {', '.join(sorted(known)) or 'none defined'})")
        return value

    @field_validator("template")
    @classmethod
    def _template_exists(cls, value: str, info: ValidationInfo) -> str:
        if not TEMPLATE_NAME.fullmatch(value):
            raise ValueError(f"template {value!r} is not a folder name (letters, digits, '_', '-', '.'; no '/' or '..')")
        templates = (info.context or {}).get("templates")
        if templates is not None and templates.is_dir() and not (templates / value).is_dir():
            raise ValueError(f"template {value!r} does not exist (no folder {str(templates / value)!r})")
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not croniter.is_valid(value):
            raise ValueError(f"invalid cron expression {value!r} (minute hour day-of-month month day-of-week)")
        try:
            croniter(value, datetime(2000, 1, 1)).get_next(datetime)
        except CroniterBadDateError:
            raise ValueError(f"cron expression {value!r} never fires (no such date)") from None
        return value


class TriggeredSettings(Section):
    """Messages developers send one at a time (``send_triggered``)."""

    channels: list[ChannelName] = Field(default_factory=lambda: list(CHANNELS), min_length=1)
    """Priority list; channels the template has no text for are left out."""
    category: Category = SERVICE
    """Category when the caller names none (``service`` is exempt from marketing caps)."""


class MetricsSettings(Section):
    """Prometheus exposition of worker processes (Redis broker only)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9191, ge=1, le=65535)
    reconciler_port: int = Field(default=9192, ge=1, le=65535)
    """Where ``loyalcast scheduler`` and ``serve`` expose the reconciler's gauges."""


class LoggingSettings(Section):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class ReconcilerSettings(Section):
    """The reconciler (inside ``loyalcast scheduler`` and ``serve``; ``loyalcast reconcile``)."""

    interval: Duration = timedelta(seconds=15)
    """How often it looks for work no message carries."""
    overdue: Duration = timedelta(seconds=60)
    """A queued row due this long, with no worker on its run and nothing waiting in the
    queue, has lost its message and is sent again."""


class RenderingSettings(Section):
    """The budget of one template render (``run``, ``send``, ``check``, ``preview``, ``plan``)."""

    time_limit: Duration = timedelta(seconds=2)
    """Longest one part of a message (subject, text, HTML) may take to render; a
    template still running then is interrupted and the row fails ``template_error``."""
    max_output: int = Field(default=100_000, ge=1_000, le=10_000_000)
    """Most characters one part may write (and any string a template builds)."""

    @field_validator("time_limit")
    @classmethod
    def _at_most_a_minute(cls, value: timedelta) -> timedelta:
        if value > timedelta(minutes=1):
            raise ValueError("at most 1m: a render longer than that is a template bug, and it holds a worker thread")
        return value


def _public_url(value: str) -> str:
    if not value.startswith(("https://", "http://")) or "?" in value or "#" in value:
        raise ValueError(f"must be an http(s) URL without query or fragment, got {value!r}")
    return value.rstrip("/")


class WebSettings(Section):
    """``loyalcast web`` (and the one in ``serve``): members' links, providers' webhooks."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    public_url: Annotated[str, AfterValidator(_public_url)] = "http://127.0.0.1:8080"
    """Where members and providers reach the service (the reverse proxy's address in
    production): links in messages and webhook signatures are built on it."""
    key_env: str = "LOYALCAST_LINK_KEY"
    """Environment variable holding the key (at least 32 bytes) that signs members' links."""
    previous_key_env: str | None = "LOYALCAST_LINK_KEY_PREVIOUS"
    """Environment variable holding the key being rotated out: links it signed still work."""
    key_file: str | None = None
    """Embedded default only: where a random key is created and kept when ``key_env``
    is unset (relative to the settings file)."""
    events_retention: Duration = timedelta(days=180)
    """How long providers' raw events are kept for audit (``loyalcast events prune``,
    and the reconciler once a day)."""
    workers: int = Field(default=1, ge=1, le=32)
    """uvicorn worker processes of ``loyalcast web``."""
    console_users_env: str = "LOYALCAST_CONSOLE_USERS"
    """Environment variable listing the console's operators, ``name:scrypt$...`` entries
    separated by commas or new lines (``loyalcast console passwd NAME`` makes one)."""
    console_session: Duration = timedelta(hours=12)
    """How long an operator stays signed in to the console."""
    console_refresh: Duration = timedelta(seconds=30)
    """A run page older than this is served and replaced in the background by a fresh
    read of the run's ledger rows."""


class LedgerSettings(Section):
    """``[ledger]``: how long the ledger keeps what it decided."""

    retention: Duration = timedelta(days=400)
    """How long a decision is kept, counted from when it was decided. On PostgreSQL whole
    months expire at once (``deliveries`` is partitioned by month), so a row lives up to a
    month longer; on SQLite older rows are deleted. Never shorter than the longest cap
    window, the longest a decided message may wait, and ``reporting_horizon`` together."""
    reporting_horizon: Duration = timedelta(days=90)
    """How far back reports, ``lift`` and the console must still find every decision."""
    archive: bool = False
    """PostgreSQL: detach an expired month and keep it as the table
    ``archived_deliveries_pYYYYMM`` (to dump and drop at leisure) instead of dropping it."""


class SchedulerSettings(Section):
    tick: Duration = timedelta(seconds=30)
    """How often the scheduler looks at the clock."""
    grace: Duration = timedelta(minutes=2)
    """An occasion started within this long after its fire time is on time, not a catch-up."""
