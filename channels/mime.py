"""Building RFC 5322 email from an :class:`OutgoingMessage` (shared by SMTP and outbox).

Member data never becomes a header line of its own: display names and subjects are
flattened to one line (CR, LF and other control characters become spaces) before the
``email`` package encodes them, so ``"Ann\\r\\nBcc: x@y"`` stays text inside the To name.
"""

from __future__ import annotations

import re
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from datetime import datetime, timezone

from channels.base import OutgoingMessage
from channels.errors import InvalidRecipient

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def one_line(value: str) -> str:
    """Collapse control characters and runs of spaces into single spaces."""
    return " ".join(_CONTROL.sub(" ", value).split())


def parse_sender(value: str) -> Address:
    """``"Ромашка <bonus@example.com>"`` -> Address with display name and address."""
    name, addr = parseaddr(value)
    if "@" not in addr:
        raise ValueError(f"not an email address: {value!r}")
    username, domain = addr.rsplit("@", 1)
    return Address(display_name=one_line(name), username=username, domain=domain)


def build_email(message: OutgoingMessage, *, sender: Address, provider: str, mailto_unsubscribe: str | None = None) -> EmailMessage:
    """The MIME message for ``message``: text and/or HTML alternatives and list headers."""
    if message.to.count("@") != 1 or _CONTROL.search(message.to):
        raise InvalidRecipient(f"not an email address: {message.to!r}", provider=provider, reached_provider=False)
    username, domain = message.to.rsplit("@", 1)
    email = EmailMessage()
    email["From"] = sender
    email["To"] = Address(display_name=one_line(message.to_name or ""), username=username, domain=domain)
    email["Subject"] = one_line(message.subject or "")
    email["Date"] = format_datetime(datetime.now(timezone.utc))
    email["Message-ID"] = make_msgid(idstring=f"lc{message.reference}", domain=sender.domain)
    email["X-Loyalcast-Reference"] = str(message.reference)
    if message.marketing and message.unsubscribe_url:
        targets = [f"<{one_line(message.unsubscribe_url)}>"]
        if mailto_unsubscribe:
            targets.append(f"<mailto:{mailto_unsubscribe}?subject=unsubscribe>")
        email["List-Unsubscribe"] = ", ".join(targets)
        email["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    for name, value in message.headers.items():
        email[one_line(name)] = one_line(value)
    if message.text is not None:
        email.set_content(message.text, subtype="plain", charset="utf-8")
        if message.html is not None:
            email.add_alternative(message.html, subtype="html", charset="utf-8")
    elif message.html is not None:
        email.set_content(message.html, subtype="html", charset="utf-8")
    else:
        email.set_content("", subtype="plain", charset="utf-8")
    return email
