"""Every channel loyalcast can use, each described once.

A :class:`ChannelSpec` says what the rest of loyalcast needs to know about a channel
without naming it: where a member's address and marketing consent live (columns of the
program's ``members`` table), which template files make its message and what kind of
message that is, which ``[quiet_hours]`` key applies, and how its texts are billed.
Settings validation, rendering, the decision SQL, previews, the outbox and the null
transport all read these specs; a channel that is not in :data:`CHANNELS` does not
exist, and asking for one raises :class:`UnknownChannel`.

Adding a channel starts here (see ``channels/README.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from channels.smstext import SmsLength, measure


class MessageKind(StrEnum):
    """The shape of a channel's message, which decides its template files.

    - ``letter``: a subject and a text and/or HTML body (``<channel>.subject``,
      ``<channel>.txt``, ``<channel>.html``); the HTML is a whole document;
    - ``text``: one plain-text body (``<channel>.txt``);
    - ``markup``: one body in a provider's HTML subset (``<channel>.html``, member data
      escaped by autoescaping), sent as the message text;
    - ``approved``: a template the provider approved beforehand, declared in
      ``<channel>.toml`` (its name and language there, and its parameters as Jinja
      expressions over the message context), plus an optional free text
      (``<channel>.txt``) the provider accepts only while the member's session is open
      (``ChannelSpec.session_window``).
    """

    LETTER = "letter"
    TEXT = "text"
    MARKUP = "markup"
    APPROVED = "approved"


@dataclass(frozen=True)
class ChannelSpec:
    name: str
    label: str
    """The channel's name for people ("SMS"), in reports and previews."""
    kind: MessageKind
    contact: str
    """Column of ``members`` holding the member's address on this channel."""
    consent: str
    """Column of ``members`` holding the member's marketing consent for this channel."""
    measure: Callable[[str], SmsLength] | None = None
    """How a text is counted for billing, where the provider bills per segment; a
    campaign's ``max_segments`` limits texts of such channels."""
    collected: bool = False
    """loyalcast collects this channel's address itself (``contacts``: the member opts in
    through a signed link), used where the ``contact`` column is empty."""
    marketing_cap: timedelta | None = None
    """The program's default frequency cap: at most one ``marketing`` message per this
    long (settings that list ``[[caps]]`` replace every default)."""
    session_window: timedelta | None = None
    """How long after a member's own message the provider takes free text from us
    (WhatsApp's customer service window); outside it only an approved template goes.
    None: the channel has no such window."""

    @property
    def quiet_hours_key(self) -> str:
        """Key under ``[quiet_hours]`` holding this channel's own window."""
        return self.name

    @property
    def parts(self) -> tuple[str, ...]:
        """Template files of one message, in the order the renderer reads them."""
        if self.kind is MessageKind.LETTER:
            return (f"{self.name}.subject", f"{self.name}.txt", f"{self.name}.html")
        if self.kind is MessageKind.TEXT:
            return (f"{self.name}.txt",)
        if self.kind is MessageKind.APPROVED:
            return (f"{self.name}.toml", f"{self.name}.txt")
        return (f"{self.name}.html",)

    @property
    def required_parts(self) -> tuple[tuple[str, ...], ...]:
        """Groups of template files of which a template needs at least one each."""
        if self.kind is MessageKind.LETTER:
            subject, text, html = self.parts
            return ((subject,), (text, html))
        if self.kind is MessageKind.APPROVED:
            return ((self.parts[0],),)  # the free text is optional: most sends are outside the window
        return (self.parts,)


CHANNELS: dict[str, ChannelSpec] = {
    spec.name: spec
    for spec in (
        ChannelSpec(
            "telegram",
            "Telegram",
            MessageKind.MARKUP,
            contact="telegram_chat_id",
            consent="telegram_consent",
            collected=True,
            marketing_cap=timedelta(days=7),
        ),
        ChannelSpec(
            "email", "Email", MessageKind.LETTER, contact="email", consent="email_consent", marketing_cap=timedelta(days=14)
        ),
        ChannelSpec(
            "sms",
            "SMS",
            MessageKind.TEXT,
            contact="phone",
            consent="sms_consent",
            measure=measure,
            marketing_cap=timedelta(days=30),
        ),
        ChannelSpec(
            "viber",
            "Viber",
            MessageKind.TEXT,
            contact="phone",
            consent="viber_consent",
            marketing_cap=timedelta(days=7),
        ),
        ChannelSpec(
            "whatsapp",
            "WhatsApp",
            MessageKind.APPROVED,
            contact="phone",
            consent="whatsapp_consent",
            marketing_cap=timedelta(days=7),
            session_window=timedelta(hours=24),
        ),
    )
}
"""Every channel, in the order ``[triggered] channels`` lists them by default."""


class UnknownChannel(KeyError):
    """A channel name no spec describes."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown channel {name!r} (known: {', '.join(sorted(CHANNELS))})")

    def __str__(self) -> str:
        return str(self.args[0])


def channel_spec(name: str) -> ChannelSpec:
    """The spec of channel ``name``; UnknownChannel when there is none."""
    try:
        return CHANNELS[name]
    except KeyError:
        raise UnknownChannel(name) from None
