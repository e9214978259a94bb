"""Rules that decide when a member may be messaged: frequency caps and quiet hours."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, Field, create_model

from campaigns.config.values import (
    ANY_CHANNEL,
    SERVICE,
    Category,
    Clock,
    Duration,
    QuietWindow,
    Section,
    format_duration,
    known_channel,
    parse_clock,
)
from channels.specs import CHANNELS, channel_spec


def _cap_channel(value: str) -> str:
    return value if value == ANY_CHANNEL else known_channel(value)


class CapRule(Section):
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
    category: Category = "marketing"
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
            what = f"{self.limit} per {format_duration(self.span)}"
        elif self.window == "calendar":
            what = f"{self.limit} per calendar {self.period}"
        else:
            what = f"at least {format_duration(self.span)} apart"
        scope = f"{'any channel' if self.channel == ANY_CHANNEL else self.channel}/{self.category}"
        tiers = f" for {', '.join(self.tiers)}" if self.tiers else ""
        return f"{scope}{tiers}: {what}"

    def window_problems(self) -> list[tuple[str, str]]:
        """``(key, problem)`` pairs for keys that are missing or meaningless for the window kind."""
        needed = {"rolling": {"max", "per"}, "calendar": {"max", "period"}, "min_gap": {"gap"}}[self.window]
        problems: list[tuple[str, str]] = []
        keys: tuple[str, ...] = ("max", "per", "period", "gap")
        for key in keys:
            given = getattr(self, key) is not None
            if key in needed and not given and key != "max":  # max defaults to 1
                problems.append((key, f"required for a {self.window} window"))
            elif key not in needed and given:
                problems.append((key, f"means nothing for a {self.window} window (it uses {', '.join(sorted(needed))})"))
        return problems


def default_caps() -> list[CapRule]:
    """The program's defaults when settings give no ``[[caps]]``: each channel's
    ``marketing_cap`` (``channels.specs``) as a rolling rule of one marketing message."""
    return [
        CapRule(channel=spec.name, category="marketing", max=1, per=spec.marketing_cap)
        for spec in CHANNELS.values()
        if spec.marketing_cap is not None
    ]


class QuietHoursSettings(Section):
    """Local times when members are not messaged; a message due inside waits for the end.

    Each value is ``"HH:MM-HH:MM"`` (may wrap midnight) or ``"off"``. A channel without
    its own value (the key its spec names, e.g. ``quiet_hours.<channel>``) uses
    ``default``. The per-channel keys are added from ``channels.specs`` (``QuietHours``).
    """

    default: QuietWindow = "off"
    ignore_for_categories: list[Category] = Field(default_factory=lambda: [SERVICE])

    def windows(self) -> dict[str, tuple[Clock, Clock] | None]:
        """``{"default"|channel: ((start_h, start_m), (end_h, end_m)) or None}``."""
        out: dict[str, tuple[Clock, Clock] | None] = {}
        for key in ("default", *(spec.quiet_hours_key for spec in CHANNELS.values())):
            value = getattr(self, key, None)
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
        key = channel_spec(channel).quiet_hours_key
        return windows[key] if key in windows else windows.get("default")


def _with_channel_keys() -> type[QuietHoursSettings]:
    fields: dict[str, object] = {spec.quiet_hours_key: (QuietWindow | None, None) for spec in CHANNELS.values()}
    return create_model(  # type: ignore[call-overload, no-any-return]  # pydantic's field tuples are untyped
        "QuietHoursSettings", __base__=QuietHoursSettings, __doc__=QuietHoursSettings.__doc__, **fields
    )


if TYPE_CHECKING:
    QuietHours = QuietHoursSettings
else:
    QuietHours = _with_channel_keys()
    """``[quiet_hours]`` with one optional key per channel spec."""
