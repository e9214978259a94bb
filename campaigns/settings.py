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

from campaigns.errors import ConfigError

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
    site_url: str = "https://example.com"
    unsubscribe_url: str = "https://example.com/unsubscribe?member={member_id}"
    points_word: dict[str, PluralWords] = Field(default_factory=dict)


class DatabaseSettings(_Section):
    url: str | None = None
    url_env: str | None = None


class BrokerSettings(_Section):
    url: str | None = "memory://"
    url_env: str | None = None


class OutboxSettings(_Section):
    dir: str = "var/outbox"


class ChannelSettings(_Section):
    """One channel's transport. Only the keys its transport reads are allowed to matter."""

    transport: Literal["outbox"] = "outbox"
    enabled: bool = True
    from_address: str | None = None
    sender: str | None = None


class DeliverySettings(_Section):
    batch_size: int = Field(default=500, ge=1, le=10_000)
    """Deliveries per ``deliver_batch`` message."""
    plan_chunk_size: int = Field(default=5_000, ge=100, le=100_000)
    """Members per planning transaction (each chunk locks its members in id order)."""
    memory_worker_threads: int = Field(default=2, ge=1, le=32)
    """Threads of the in-process worker used with the ``memory://`` broker."""
    max_attempts: int = Field(default=8, ge=1, le=50)
    """Attempts per delivery before a transient failure becomes ``failed``."""
    min_backoff: Duration = timedelta(seconds=15)
    max_backoff: Duration = timedelta(minutes=10)
    expiring_horizon_days: int = Field(default=60, ge=1, le=3660)
    """How far ahead templates see expiring points when the segment sets no horizon."""


class CapRule(_Section):
    """At most ``max`` messages of ``category`` on ``channel`` per ``per`` (rolling window)."""

    channel: ChannelName
    category: str = "marketing"
    window: Literal["rolling"] = "rolling"
    max: int = Field(default=1, ge=1)
    per: Duration

    @property
    def name(self) -> str:
        return f"{self.channel}/{self.category}: {self.max} per {_format_duration(self.per)}"


DEFAULT_CAPS = (
    {"channel": "sms", "category": "marketing", "max": 1, "per": "30d"},
    {"channel": "email", "category": "marketing", "max": 1, "per": "14d"},
)


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


class Settings(_Section):
    program: ProgramSettings
    database: DatabaseSettings = DatabaseSettings(url="sqlite:///var/loyalcast.db")
    broker: BrokerSettings = BrokerSettings()
    outbox: OutboxSettings = OutboxSettings()
    templates_dir: str = "templates"
    channels: dict[ChannelName, ChannelSettings] = Field(default_factory=dict)
    delivery: DeliverySettings = DeliverySettings()
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

    def channel(self, name: str) -> ChannelSettings:
        return self.channels.get(name) or ChannelSettings()

    def caps_for(self, channel: str, category: str) -> list[CapRule]:
        return [rule for rule in self.caps if rule.channel == channel and rule.category == category]

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
        program.unsubscribe_url.format(member_id=1, channel="email")
    except (KeyError, IndexError, ValueError) as exc:
        problems.append(f"program.unsubscribe_url: unknown placeholder {exc} (use {{member_id}} and {{channel}})")

    seen_rules: set[tuple[str, str]] = set()
    for index, rule in enumerate(settings.caps):
        key = (rule.channel, rule.category)
        if key in seen_rules:
            problems.append(f"caps[{index}]: a second rule for {rule.channel}/{rule.category} (one rule per channel and category)")
        seen_rules.add(key)

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

    templates = settings.templates_path
    if not templates.is_dir():
        problems.append(f"templates_dir: folder {str(templates)!r} does not exist")
    for name, campaign in settings.campaigns.items():
        prefix = f"campaigns.{name}"
        for index, channel in enumerate(campaign.channels):
            if channel in campaign.channels[:index]:
                problems.append(f"{prefix}.channels[{index}]: {channel!r} is listed twice")
        template_dir = templates / campaign.template
        for index, channel in enumerate(campaign.channels):
            for group in TEMPLATE_PARTS[channel]:
                if not _template_part_exists(template_dir, group, program.default_locale):
                    problems.append(
                        f"{prefix}.channels[{index}]: template {campaign.template!r} has no {' or '.join(group)} "
                        f"for channel {channel!r}"
                    )
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
