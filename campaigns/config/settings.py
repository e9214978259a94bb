"""The whole of ``settings.toml`` as one validated model, :class:`Settings`, with the
lookups the rest of loyalcast asks of it (a campaign, a channel's options, the caps for
a channel and category, the database and broker URLs, the unsubscribe link).

Reading a file and checking it lives in ``campaigns.config.loading``. Secrets never live
in the file: a key ending in ``_env`` names the environment variable that holds the
value (``database.url_env = "LOYALCAST_DATABASE_URL"``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from datetime import timedelta
from pathlib import Path

from pydantic import Field, PrivateAttr

from campaigns.config.channels import ChannelOptions, default_options
from campaigns.config.rules import CapRule, QuietHours, default_caps
from campaigns.config.sections import (
    BrokerSettings,
    CampaignSettings,
    DatabaseSettings,
    DeliverySettings,
    LoggingSettings,
    MetricsSettings,
    OutboxSettings,
    ProgramSettings,
    ReconcilerSettings,
    RenderingSettings,
    SchedulerSettings,
    SegmentSettings,
    TriggeredSettings,
)
from campaigns.config.values import ANY_CHANNEL, ChannelName, Section
from campaigns.errors import ConfigError, UnknownCampaign
from channels import TransportOptions
from channels.specs import CHANNELS


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
    caps: list[CapRule] = Field(default_factory=default_caps)
    segments: dict[str, SegmentSettings] = Field(default_factory=dict)
    campaigns: dict[str, CampaignSettings] = Field(default_factory=dict)

    _base_dir: Path = PrivateAttr(default=Path("."))
    _source: str = PrivateAttr(default="<settings>")
    _missing_secrets: list[str] = PrivateAttr(default_factory=list)

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

    @property
    def slowest_timeout(self) -> timedelta:
        """The longest ``timeout`` of any channel's transport: how long one provider call may take."""
        return max(self.channel(name).timeout for name in CHANNELS)

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
