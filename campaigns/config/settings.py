"""Loading and validating ``settings.toml``.

``load_settings(path)`` returns a validated :class:`Settings` or raises
:class:`~campaigns.errors.ConfigError` carrying one line per problem, each naming the
key path (``campaigns.balance_reminder.channels[1]: unknown channel 'sms2'``). Every
check runs before anything else does: a campaign never starts on a half-valid file.

Which file: an explicit path (``--config``), else ``$LOYALCAST_CONFIG``, else
``./settings.toml``. Relative paths inside the file (database file, templates, outbox)
resolve against the folder that holds the file, not the current directory.

Secrets never live in the file: a key ending in ``_env`` names the environment variable
that holds the value (``database.url_env = "LOYALCAST_DATABASE_URL"``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from croniter import croniter
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from campaigns.errors import ConfigError, UnknownCampaign

CONFIG_ENV = "LOYALCAST_CONFIG"
DEFAULT_CONFIG = "settings.toml"

CHANNELS: tuple[str, ...] = ("telegram", "email", "sms")
"""Every channel loyalcast knows, in no particular order of preference."""

TEMPLATE_PARTS: dict[str, tuple[tuple[str, ...], ...]] = {
    # channel -> groups of files; each group needs at least one present
    "email": (("email.subject",), ("email.txt", "email.html")),
    "sms": (("sms.txt",),),
    "telegram": (("telegram.html",),),
}

_DURATION = re.compile(r"^\s*(\d+)\s*(w|d|h|m|s)\s*$")
_DURATION_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_duration(value: Any) -> timedelta:
    """``"30d"``, ``"2w"``, ``"12h"``, ``"90m"``, ``"45s"`` (or a timedelta) -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like '30d' or '12h', got {value!r}")
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"invalid duration {value!r}: use a number and one of w, d, h, m, s (e.g. '30d')")
    amount, unit = int(match.group(1)), match.group(2)
    return timedelta(**{_DURATION_UNITS[unit]: amount})


def _positive_duration(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("duration must be longer than zero")
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration), AfterValidator(_positive_duration)]


def _known_channel(value: str) -> str:
    if value not in CHANNELS:
        raise ValueError(f"unknown channel {value!r} (known: {', '.join(sorted(CHANNELS))})")
    return value


ChannelName = Annotated[str, AfterValidator(_known_channel)]


def _time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use an IANA name such as 'Europe/Moscow')") from None
    return value


TimeZoneName = Annotated[str, AfterValidator(_time_zone)]


def _locale(value: str) -> str:
    try:
        Locale.parse(value)
    except (UnknownLocaleError, ValueError):
        raise ValueError(f"unknown locale {value!r}") from None
    return value


LocaleName = Annotated[str, AfterValidator(_locale)]


class _Section(BaseModel):
    # A misspelt key is a mistake the marketer wants to hear about, not a silent default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class PluralWords(_Section):
    """Word forms of "point" per CLDR plural category (``one``, ``few``, ``many``, ``other``)."""

    one: str | None = None
    two: str | None = None
    few: str | None = None
    many: str | None = None
    zero: str | None = None
    other: str

    def form(self, category: str) -> str:
        return getattr(self, category, None) or self.other


class ProgramSettings(_Section):
    name: str
    timezone: TimeZoneName = "Europe/Moscow"
    default_locale: LocaleName = "ru"
    locales: list[LocaleName] = Field(default_factory=lambda: ["ru", "en"], min_length=1)
    currency: str = "RUB"
    """ISO 4217 code for the ``money`` filter and SMS cost estimates."""
    site_url: str = "https://example.com"
    unsubscribe_url: str = "https://example.com/unsubscribe?member={member_id}"
    """One-click unsubscribe link; placeholders ``{member_id}``, ``{channel}``, ``{signature}``."""
    unsubscribe_secret_env: str | None = None
    """Environment variable holding the key that signs ``{signature}`` (HMAC-SHA256)."""
    points_word: dict[str, PluralWords] = Field(default_factory=dict)


class DatabaseSettings(_Section):
    url: str | None = None
    url_env: str | None = None
    pool_size: int = Field(default=10, ge=1, le=200)
    """Connections each process keeps open (PostgreSQL): at least a worker's threads,
    plus ``delivery.plan_connections`` for the one planning."""


class BrokerSettings(_Section):
    url: str | None = "memory://"
    url_env: str | None = None


class OutboxSettings(_Section):
    dir: str = "var/outbox"


class ChannelSettings(_Section):
    """One channel's transport and its options (each transport reads its own keys and
    names the key at fault when one is wrong; see docs/settings.md)."""

    transport: Literal["outbox", "smtp", "http_sms", "telegram", "null"] = "outbox"
    rate_per_second: float | None = Field(default=None, gt=0)
    """Provider throughput shared by all workers (through Redis); None: unlimited."""
    timeout: Duration = timedelta(seconds=10)
    # email
    from_address: str | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["none", "starttls", "ssl"] = "starttls"
    username_env: str | None = None
    password_env: str | None = None
    unsubscribe_mailto: str | None = None
    # sms
    sender: str | None = None
    price_per_segment: float = Field(default=0.0, ge=0)
    """SMS: what the operator charges per segment, in ``program.currency``."""
    style: Literal["json", "twilio"] = "json"
    url: str | None = None
    auth_header: str = "Authorization"
    auth_env: str | None = None
    fields: dict[str, str] = Field(default_factory=dict)
    """JSON gateway field names: ``to``, ``text``, ``sender``, ``reference``."""
    default_region: str = "RU"
    account_sid_env: str | None = None
    auth_token_env: str | None = None
    # telegram (and twilio)
    base_url: str | None = None
    token_env: str | None = None


class DeliverySettings(_Section):
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


ANY_CHANNEL = "*"


def _cap_channel(value: str) -> str:
    return value if value == ANY_CHANNEL else _known_channel(value)


class CapRule(_Section):
    """A frequency cap: how often a member may get messages of ``category`` on ``channel``.

    Window kinds (every count is of messages holding a cap slot):

    - ``rolling``: at most ``max`` in any window of length ``per``;
    - ``calendar``: at most ``max`` per calendar ``period`` (``week`` starting Monday, or
      ``month``) in the member's time zone;
    - ``min_gap``: at least ``gap`` between two messages.

    ``channel = "*"`` counts every channel together (a cross-channel rule). ``tiers``
    makes the rule an override: for members of those tiers it replaces the rules of the
    same channel and category that name no tiers. ``action`` says what happens over the
    cap: ``skip`` (ledger status ``capped``) or ``defer`` (sent when the window opens).
    """

    channel: Annotated[str, AfterValidator(_cap_channel)]
    category: str = "marketing"
    window: Literal["rolling", "calendar", "min_gap"] = "rolling"
    max: int | None = Field(default=None, ge=1)
    per: Duration | None = None
    period: Literal["week", "month"] | None = None
    gap: Duration | None = None
    action: Literal["skip", "defer"] = "skip"
    tiers: list[str] | None = Field(default=None, min_length=1)

    @property
    def limit(self) -> int:
        """Messages allowed per window."""
        return 1 if self.window == "min_gap" else (self.max or 1)

    @property
    def span(self) -> timedelta:
        """Half-width of the window around a send time (rolling and min_gap)."""
        return (self.gap if self.window == "min_gap" else self.per) or timedelta(0)

    @property
    def name(self) -> str:
        if self.window == "rolling":
            what = f"{self.limit} per {_format_duration(self.span)}"
        elif self.window == "calendar":
            what = f"{self.limit} per calendar {self.period}"
        else:
            what = f"at least {_format_duration(self.span)} apart"
        scope = f"{'any channel' if self.channel == ANY_CHANNEL else self.channel}/{self.category}"
        tiers = f" for {', '.join(self.tiers)}" if self.tiers else ""
        return f"{scope}{tiers}: {what}"

    def window_problems(self) -> list[tuple[str, str]]:
        """``(key, problem)`` pairs for keys that are missing or meaningless for the window kind."""
        needed = {"rolling": {"max", "per"}, "calendar": {"max", "period"}, "min_gap": {"gap"}}[self.window]
        problems = []
        for key in ("max", "per", "period", "gap"):
            given = getattr(self, key) is not None
            if key in needed and not given and key != "max":  # max defaults to 1
                problems.append((key, f"required for a {self.window} window"))
            elif key not in needed and given:
                problems.append((key, f"means nothing for a {self.window} window (it uses {', '.join(sorted(needed))})"))
        return problems


DEFAULT_CAPS = (
    {"channel": "sms", "category": "marketing", "max": 1, "per": "30d"},
    {"channel": "email", "category": "marketing", "max": 1, "per": "14d"},
)


_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_clock(value: str) -> tuple[int, int]:
    match = _CLOCK.match(value.strip())
    if not match:
        raise ValueError(f"invalid time of day {value!r} (use HH:MM, e.g. '09:00')")
    return int(match.group(1)), int(match.group(2))


def _quiet_window(value: str) -> str:
    if value.strip().lower() == "off":
        return "off"
    parts = value.split("-")
    if len(parts) != 2:
        raise ValueError(f"invalid quiet hours {value!r} (use 'HH:MM-HH:MM', e.g. '21:00-09:00', or 'off')")
    for part in parts:
        parse_clock(part)
    return value.strip()


QuietWindow = Annotated[str, AfterValidator(_quiet_window)]
Clock = tuple[int, int]


class QuietHoursSettings(_Section):
    """Local times when members are not messaged; a message due inside waits for the end.

    Each value is ``"HH:MM-HH:MM"`` (may wrap midnight) or ``"off"``. A channel without
    its own value uses ``default``.
    """

    default: QuietWindow = "off"
    email: QuietWindow | None = None
    sms: QuietWindow | None = None
    telegram: QuietWindow | None = None
    ignore_for_categories: list[str] = Field(default_factory=lambda: ["service"])

    def windows(self) -> dict[str, tuple[Clock, Clock] | None]:
        """``{"default"|channel: ((start_h, start_m), (end_h, end_m)) or None}``."""
        out: dict[str, tuple[Clock, Clock] | None] = {}
        for key in ("default", *CHANNELS):
            value = getattr(self, key)
            if value is None:
                continue
            if value == "off":
                out[key] = None
            else:
                start, end = value.split("-")
                out[key] = (parse_clock(start), parse_clock(end))
        return out

    def window_for(self, channel: str, category: str) -> tuple[Clock, Clock] | None:
        if category in self.ignore_for_categories:
            return None
        windows = self.windows()
        return windows[channel] if channel in windows else windows.get("default")


class SegmentSettings(_Section):
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


class CampaignSettings(_Section):
    segment: str
    template: str
    channels: list[ChannelName] = Field(min_length=1)
    category: str = "marketing"
    schedule: str | None = None
    description: str = ""
    max_segments: int = Field(default=2, ge=1, le=10)
    """Longest SMS the campaign may send, in segments; a longer one fails before sending."""
    holdout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Share of eligible members kept as a control group (recorded ``held_out``)."""
    holdout_salt: str | None = None
    """Changing the salt draws a new control group (default: the campaign name)."""
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
        templates = (info.context or {}).get("templates")
        if templates is not None and templates.is_dir() and not (templates / value).is_dir():
            raise ValueError(f"template {value!r} does not exist (no folder {str(templates / value)!r})")
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"invalid cron expression {value!r} (minute hour day-of-month month day-of-week)")
        return value


class TriggeredSettings(_Section):
    """Messages developers send one at a time (``send_triggered``)."""

    channels: list[ChannelName] = Field(default_factory=lambda: ["telegram", "email", "sms"], min_length=1)
    """Priority list; channels the template has no text for are left out."""
    category: str = "service"
    """Category when the caller names none (``service`` is exempt from marketing caps)."""


class MetricsSettings(_Section):
    """Prometheus exposition of worker processes (Redis broker only)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9191, ge=1, le=65535)


class LoggingSettings(_Section):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class SchedulerSettings(_Section):
    tick: Duration = timedelta(seconds=30)
    """How often the scheduler looks at the clock."""
    grace: Duration = timedelta(minutes=2)
    """An occasion started within this long after its fire time is on time, not a catch-up."""


class Settings(_Section):
    program: ProgramSettings
    database: DatabaseSettings = DatabaseSettings(url="sqlite:///var/loyalcast.db")
    broker: BrokerSettings = BrokerSettings()
    outbox: OutboxSettings = OutboxSettings()
    templates_dir: str = "templates"
    channels: dict[ChannelName, ChannelSettings] = Field(default_factory=dict)
    delivery: DeliverySettings = DeliverySettings()
    quiet_hours: QuietHoursSettings = QuietHoursSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    triggered: TriggeredSettings = TriggeredSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    caps: list[CapRule] = Field(default_factory=lambda: [CapRule(**rule) for rule in DEFAULT_CAPS])
    segments: dict[str, SegmentSettings] = Field(default_factory=dict)
    campaigns: dict[str, CampaignSettings] = Field(default_factory=dict)

    _base_dir: Path = PrivateAttr(default=Path("."))
    _source: str = PrivateAttr(default="<settings>")

    @property
    def base_dir(self) -> Path:
        """Folder of the settings file; relative paths in it resolve from here."""
        return self._base_dir

    @property
    def source(self) -> str:
        return self._source

    def path(self, relative: str) -> Path:
        candidate = Path(relative)
        return candidate if candidate.is_absolute() else (self._base_dir / candidate)

    @property
    def templates_path(self) -> Path:
        return self.path(self.templates_dir)

    @property
    def outbox_path(self) -> Path:
        return self.path(self.outbox.dir)

    @property
    def database_url(self) -> str:
        return _resolve_database_url(self._secret(self.database.url, self.database.url_env) or "", self._base_dir)

    @property
    def broker_url(self) -> str:
        return self._secret(self.broker.url, self.broker.url_env) or "memory://"

    def campaign(self, name: str) -> CampaignSettings:
        """The campaign called ``name``; UnknownCampaign when the settings define none."""
        try:
            return self.campaigns[name]
        except KeyError:
            raise UnknownCampaign(name, list(self.campaigns)) from None

    def channel(self, name: str) -> ChannelSettings:
        return self.channels.get(name) or ChannelSettings()

    def unsubscribe_url(self, member_id: int, channel: str) -> str:
        """The member's one-click unsubscribe link, signed when the URL asks for it."""
        signature = ""
        if "{signature}" in self.program.unsubscribe_url:
            key = os.environ[self.program.unsubscribe_secret_env or ""].encode()
            signature = hmac.new(key, f"{member_id}:{channel}".encode(), hashlib.sha256).hexdigest()[:32]
        return self.program.unsubscribe_url.format(member_id=member_id, channel=channel, signature=signature)

    def caps_for(self, channel: str, category: str, tier: str | None = None) -> list[CapRule]:
        """Rules that limit ``category`` on ``channel`` for a member of ``tier``.

        Per scope (the channel itself, and ``*``): the rules naming the tier if there
        are any, else the rules naming no tiers.
        """
        chosen: list[CapRule] = []
        for scope in (channel, ANY_CHANNEL):
            rules = [r for r in self.caps if r.channel == scope and r.category == category]
            for_tier = [r for r in rules if r.tiers and tier in r.tiers]
            chosen += for_tier or [r for r in rules if not r.tiers]
        return chosen

    def override_tiers(self, channel: str, category: str) -> list[str]:
        """Tiers named by override rules that can apply to ``category`` on ``channel``."""
        return sorted({t for r in self.caps if r.tiers and r.category == category
                       and r.channel in (channel, ANY_CHANNEL) for t in r.tiers})

    @staticmethod
    def _secret(value: str | None, env_name: str | None) -> str | None:
        if env_name and os.environ.get(env_name):
            return os.environ[env_name]
        return value


def _resolve_database_url(url: str, base_dir: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite:///:memory:":
        return prefix + str((base_dir / url[len(prefix):]).resolve())
    return url


def _format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def format_key_path(loc: tuple[Any, ...]) -> str:
    """``('campaigns', 'x', 'channels', 1)`` -> ``campaigns.x.channels[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = str(part)
    return out or "<root>"


def _pydantic_problems(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors(include_url=False):
        message = item["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            if message.startswith(prefix):
                message = message[len(prefix):]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling)"
        elif item["type"] == "missing":
            message = "required key is missing"
        problems.append(f"{format_key_path(tuple(item['loc']))}: {message}")
    return problems


def _semantic_problems(settings: Settings) -> list[str]:
    """Checks that span several keys or look outside the file (env, templates)."""
    problems: list[str] = []
    for key, env_name, value in (
        ("database", settings.database.url_env, settings.database.url),
        ("broker", settings.broker.url_env, settings.broker.url),
    ):
        if env_name and not os.environ.get(env_name) and not value:
            problems.append(f"{key}.url_env: environment variable {env_name} is not set")
        if not env_name and not value:
            problems.append(f"{key}.url: give url, or url_env naming an environment variable")
    if settings.database.url and _has_password(settings.database.url):
        problems.append("database.url: contains a password; put the URL in an environment variable named by database.url_env")
    db_url = settings.database_url
    if db_url and not (db_url.startswith("sqlite") or db_url.startswith("postgresql")):
        problems.append(f"database.url: unsupported database {db_url.split(':', 1)[0]!r} (use sqlite:/// or postgresql+psycopg://)")
    broker_url = settings.broker_url
    if not (broker_url == "memory://" or broker_url.startswith(("redis://", "rediss://", "unix://"))):
        problems.append(f"broker.url: unsupported broker {broker_url!r} (use memory:// or redis://)")

    program = settings.program
    if program.default_locale not in program.locales:
        problems.append(f"program.default_locale: {program.default_locale!r} is not in program.locales")
    for locale_name in program.locales:
        words = program.points_word.get(locale_name)
        if words is None:
            problems.append(f"program.points_word.{locale_name}: missing (word forms of 'point' for this locale)")
            continue
        for category in sorted(Locale.parse(locale_name).plural_form.tags):
            if getattr(words, category, None) is None:
                problems.append(f"program.points_word.{locale_name}.{category}: missing ({locale_name} needs this plural form)")

    try:
        program.unsubscribe_url.format(member_id=1, channel="email", signature="")
    except (KeyError, IndexError, ValueError) as exc:
        problems.append(f"program.unsubscribe_url: unknown placeholder {exc} (use {{member_id}}, {{channel}}, {{signature}})")
    if "{signature}" in program.unsubscribe_url:
        if not program.unsubscribe_secret_env:
            problems.append("program.unsubscribe_secret_env: required when unsubscribe_url uses {signature}")
        elif not os.environ.get(program.unsubscribe_secret_env):
            problems.append(f"program.unsubscribe_secret_env: environment variable {program.unsubscribe_secret_env} is not set")

    seen_rules: dict[tuple[str, str, str, str], int] = {}
    for index, rule in enumerate(settings.caps):
        for key, problem in rule.window_problems():
            problems.append(f"caps[{index}].{key}: {problem}")
        for tier in rule.tiers or [""]:
            scope = (rule.channel, rule.category, rule.window, tier)
            if scope in seen_rules:
                who = f" for tier {tier!r}" if tier else ""
                problems.append(
                    f"caps[{index}]: contradicts caps[{seen_rules[scope]}] (two {rule.window} rules for "
                    f"{rule.channel}/{rule.category}{who})"
                )
            seen_rules.setdefault(scope, index)
    for name, windows in (settings.quiet_hours.windows().items()):
        if windows is not None and windows[0] == windows[1]:
            problems.append(f"quiet_hours.{name}: start and end are equal (use \"off\" for no quiet hours)")

    for name, segment in settings.segments.items():
        if segment.min_balance is not None and segment.max_balance is not None and segment.min_balance > segment.max_balance:
            problems.append(f"segments.{name}.max_balance: smaller than min_balance")
        if segment.min_expiring_points is not None and segment.expiring_within_days is None:
            problems.append(f"segments.{name}.min_expiring_points: needs expiring_within_days")
        if (
            segment.min_days_since_purchase is not None
            and segment.max_days_since_purchase is not None
            and segment.min_days_since_purchase > segment.max_days_since_purchase
        ):
            problems.append(f"segments.{name}.max_days_since_purchase: smaller than min_days_since_purchase")

    problems += _transport_problems(settings)

    templates = settings.templates_path
    if not templates.is_dir():
        problems.append(f"templates_dir: folder {str(templates)!r} does not exist")
    for name, campaign in settings.campaigns.items():
        prefix = f"campaigns.{name}"
        for index, channel in enumerate(campaign.channels):
            if channel in campaign.channels[:index]:
                problems.append(f"{prefix}.channels[{index}]: {channel!r} is listed twice")
        if campaign.kind == "expiring_ladder" and not campaign.stages:
            problems.append(f"{prefix}.stages: required for an expiring_ladder campaign (e.g. [30, 7, 1])")
        if campaign.kind == "standard" and campaign.stages is not None:
            problems.append(f"{prefix}.stages: means nothing without kind = \"expiring_ladder\"")
        template_dir = templates / campaign.template
        for index, channel in enumerate(campaign.channels):
            for group in TEMPLATE_PARTS[channel]:
                if not _template_part_exists(template_dir, group, program.default_locale):
                    problems.append(
                        f"{prefix}.channels[{index}]: template {campaign.template!r} has no {' or '.join(group)} "
                        f"for channel {channel!r}"
                    )
    return problems


def _transport_problems(settings: Settings) -> list[str]:
    """Build every configured transport once (no network), so a missing host, secret or
    field fails at start-up with its key, not at the first send."""
    from channels import build_transport
    from channels.errors import ChannelConfigError

    problems = []
    for channel, section in settings.channels.items():
        try:
            transport = build_transport(channel, section.transport, outbox_dir=settings.outbox_path,
                                        options=section.model_dump())
        except ChannelConfigError as exc:
            problems.append(f"{exc.key}: {exc.problem}")
            continue
        transport.close()
    return problems


def _has_password(url: str) -> bool:
    try:
        return make_url(url).password is not None
    except ArgumentError:
        return False


def _template_part_exists(template_dir: Path, names: tuple[str, ...], default_locale: str) -> bool:
    return any((template_dir / name).is_file() or (template_dir / default_locale / name).is_file() for name in names)


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The settings file to use: explicit path, else ``$LOYALCAST_CONFIG``, else ``./settings.toml``."""
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read, parse and validate the settings file; raise ConfigError listing every problem."""
    file = config_path(path)
    source = str(file)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"<file>: settings file {source!r} not found (use --config or {CONFIG_ENV})"], source) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"<file>: not valid TOML: {exc}"], source) from None
    return settings_from_dict(raw, base_dir=file.resolve().parent, source=source)


def settings_from_dict(raw: dict[str, Any], *, base_dir: Path, source: str = "<settings>") -> Settings:
    """Validate an already parsed settings mapping (what tests and ``load_settings`` use)."""
    templates_dir = raw.get("templates_dir", "templates")
    context = {
        "segments": set(raw.get("segments") or {}) if isinstance(raw.get("segments", {}), dict) else None,
        "templates": (base_dir / templates_dir) if isinstance(templates_dir, str) else None,
    }
    try:
        settings = Settings.model_validate(raw, context=context)
    except ValidationError as exc:
        raise ConfigError(_pydantic_problems(exc), source) from None
    settings._base_dir = base_dir
    settings._source = source
    problems = _semantic_problems(settings)
    if problems:
        raise ConfigError(problems, source)
    return settings
