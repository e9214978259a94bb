"""The whole of ``settings.toml`` as one validated model, :class:`Settings`, with the
lookups the rest of loyalcast asks of it (a campaign, a channel's options, the caps for
a channel and category, the database and broker URLs, the unsubscribe link).

Reading a file and checking it lives in ``campaigns.config.loading``. Secrets never live
in the file: a key ending in ``_env`` names the environment variable that holds the
value (``database.url_env = "LOYALCAST_DATABASE_URL"``).
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path

from pydantic import Field, PrivateAttr

from campaigns.config.channels import ChannelOptions, default_options
from campaigns.config.links import MIN_KEY_BYTES, TELEGRAM_START, UNSUBSCRIBE, LinkSigner, load_signer
from campaigns.config.rules import CapRule, QuietHours, default_caps
from campaigns.config.sections import (
    BrokerSettings,
    CampaignSettings,
    ControlSettings,
    DatabaseSettings,
    DeliverySettings,
    LedgerSettings,
    LoggingSettings,
    MetricsSettings,
    OutboxSettings,
    ProgramSettings,
    ReconcilerSettings,
    RenderingSettings,
    SchedulerSettings,
    SegmentSettings,
    TriggeredSettings,
    WebSettings,
)
from campaigns.config.values import ANY, ANY_CHANNEL, ChannelName, Section
from campaigns.errors import ConfigError, UnknownCampaign
from channels import Transport, TransportOptions, build_transport
from channels.specs import CHANNELS

CALENDAR_SPAN = {"week": timedelta(days=7), "month": timedelta(days=31)}
"""The longest a calendar cap window lasts."""


class Settings(Section):
    program: ProgramSettings
    database: DatabaseSettings = DatabaseSettings(url="sqlite:///var/loyalcast.db")
    broker: BrokerSettings = BrokerSettings()
    outbox: OutboxSettings = OutboxSettings()
    templates_dir: str = "templates"
    channels: dict[ChannelName, ChannelOptions] = Field(default_factory=dict)
    delivery: DeliverySettings = DeliverySettings()
    quiet_hours: QuietHours = Field(default_factory=QuietHours)
    scheduler: SchedulerSettings = SchedulerSettings()
    reconciler: ReconcilerSettings = ReconcilerSettings()
    rendering: RenderingSettings = RenderingSettings()
    triggered: TriggeredSettings = TriggeredSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    web: WebSettings = WebSettings()
    ledger: LedgerSettings = LedgerSettings()
    control: ControlSettings = ControlSettings()
    caps: list[CapRule] = Field(default_factory=default_caps)
    segments: dict[str, SegmentSettings] = Field(default_factory=dict)
    campaigns: dict[str, CampaignSettings] = Field(default_factory=dict)

    _base_dir: Path = PrivateAttr(default=Path("."))
    _source: str = PrivateAttr(default="<settings>")
    _missing_secrets: list[str] = PrivateAttr(default_factory=list)
    _signer: LinkSigner | None = PrivateAttr(default=None)

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

    def require_secrets(self) -> None:
        """Raise ConfigError naming each provider secret missing from the environment.
        Commands that contact providers (``run``, ``send``, ``serve``, workers) call it;
        the others work without the secrets."""
        if self._missing_secrets:
            raise ConfigError(self._missing_secrets, self._source)

    def campaign(self, name: str) -> CampaignSettings:
        """The campaign called ``name``; UnknownCampaign when the settings define none."""
        try:
            return self.campaigns[name]
        except KeyError:
            raise UnknownCampaign(name, list(self.campaigns)) from None

    def channel(self, name: str) -> TransportOptions:
        """The options of channel ``name``'s transport (the outbox's when unset)."""
        return self.channels.get(name) or default_options()

    def transport(self, name: str) -> Transport:
        """Channel ``name``'s transport, built from its section (no network yet);
        ChannelConfigError (MissingSecret) names the key at fault."""
        section = self.channel(name)
        return build_transport(name, section.transport, outbox_dir=self.outbox_path, options=section)

    @property
    def slowest_timeout(self) -> timedelta:
        """The longest ``timeout`` of the configured channels' transports: how long one
        provider call may take. A channel without a section goes to the outbox (a file
        written at once), so its default timeout does not count while any channel has one."""
        configured = [self.channel(name).timeout for name in CHANNELS if name in self.channels]
        return max(configured) if configured else max(self.channel(name).timeout for name in CHANNELS)

    def link_signer(self) -> LinkSigner:
        """The signer of members' links (``[web]`` keys); ConfigError when no key is set.
        Loaded once per Settings."""
        if self._signer is None:
            key_file = self.path(self.web.key_file) if self.web.key_file else None
            self._signer = load_signer(self.web.key_env, self.web.previous_key_env, key_file)
        return self._signer

    def preview_links(self) -> bool:
        """For commands that render without sending (``check``, ``preview``, ``plan``):
        when no link key is available, sign this process's links with a random key, so
        texts render without the secret; those links will not verify. True if so."""
        try:
            self.link_signer()
        except ConfigError:
            self._signer = LinkSigner(secrets.token_bytes(MIN_KEY_BYTES))
            return True
        return False

    def unsubscribe_url(self, member_id: int, channel: str, category: str) -> str:
        """The member's signed link to stop ``category`` messages on ``channel`` (GET
        shows a page, an RFC 8058 one-click POST unsubscribes at once)."""
        return f"{self.web.public_url}/u/{self.link_signer().sign(UNSUBSCRIBE, member_id, channel, category)}"

    def preferences_url(self, member_id: int) -> str:
        """The member's signed link to the preference centre."""
        return f"{self.web.public_url}/u/{self.link_signer().sign(UNSUBSCRIBE, member_id, ANY, ANY)}"

    def opt_in_links(self, member_id: int) -> OptInLinks:
        """Per channel, the member's signed opt-in link where its transport offers one
        (Telegram: a ``t.me`` deep link that links the chat on ``/start``), else None;
        signed when a text first reads one."""
        return OptInLinks(self, member_id)

    @property
    def longest_cap_window(self) -> timedelta:
        """The widest reach of any cap rule on either side of a send: a rolling rule's
        ``per``, a minimum gap, a calendar week (7 days) or month (31 days)."""
        spans = [CALENDAR_SPAN[rule.period or "month"] if rule.window == "calendar" else rule.span for rule in self.caps]
        return max(spans, default=timedelta(0))

    @property
    def hold_slack(self) -> timedelta:
        """The longest a message holding a cap slot may become due after it was decided:
        a cap's deferral or a quota's postponement (at most one cap window, plus a day),
        quiet hours or ``send_at_local`` (a day), and every retry's backoff. Deferrals
        search no further, and cap lookups read ledger rows decided no earlier than a
        window's start less this (on PostgreSQL, only those months' partitions)."""
        retries = self.delivery.max_backoff * self.delivery.max_attempts
        return self.longest_cap_window + timedelta(days=2 + math.ceil(retries / timedelta(days=1)))

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
        return sorted(
            {t for r in self.caps if r.tiers and r.category == category and r.channel in (channel, ANY_CHANNEL) for t in r.tiers}
        )

    @staticmethod
    def _secret(value: str | None, env_name: str | None) -> str | None:
        if env_name and os.environ.get(env_name):
            return os.environ[env_name]
        return value


def _resolve_database_url(url: str, base_dir: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite:///:memory:":
        return prefix + str((base_dir / url[len(prefix) :]).resolve())
    return url


class OptInLinks(Mapping[str, str | None]):
    """A member's opt-in links per channel (``Settings.opt_in_links``), signed when first
    read: most texts show none, and signing and asking every channel for its link on
    every message took 4% of a worker's time (``bench/results/profiles``)."""

    def __init__(self, settings: Settings, member_id: int) -> None:
        self._settings = settings
        self._member_id = member_id
        self._links: dict[str, str | None] | None = None

    def _signed(self) -> dict[str, str | None]:
        if self._links is None:
            token = self._settings.link_signer().sign(TELEGRAM_START, self._member_id)
            self._links = {name: self._settings.channel(name).opt_in_url(token) for name in CHANNELS}
        return self._links

    def __getitem__(self, channel: str) -> str | None:
        return self._signed()[channel]

    def __iter__(self) -> Iterator[str]:
        return iter(CHANNELS)

    def __len__(self) -> int:
        return len(CHANNELS)
