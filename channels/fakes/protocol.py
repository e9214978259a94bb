"""What an SMS protocol of the fake gateway implements (``channels.fakes.sms``): reading
its provider's request, answering in its provider's shape, posting its reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class ReportTo:
    """Where an account's delivery reports go (the URL registered with the provider) and
    the key they are signed with, where the protocol signs them."""

    url: str | None
    key: str = ""


Answer = tuple[int, dict[str, str], Any]
"""HTTP status, headers, and the JSON document of an answer."""


class Protocol:
    """One provider's request and answer shapes. ``path`` is the URL path it serves
    (a prefix for Twilio's)."""

    name: ClassVar[str]
    path: ClassVar[str]

    def read(self, path: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        """The request as a message record: ``to``, ``text``, ``sender``, ``reference``
        and what the protocol needs later (credentials, callback URL)."""
        raise NotImplementedError

    def transient(self) -> Answer:
        return 503, {}, {"message": "gateway overloaded"}

    def error(self, name: str, to: str) -> Answer | None:
        """The provider's answer for the named error (``Faults.errors``), None if it has none."""
        return None

    def rejected(self, to: str) -> Answer:
        """The answer for a number the provider refuses as invalid."""
        answer = self.error("invalid", to)
        assert answer is not None
        return answer

    def accepted(self, message: dict[str, Any], number: int) -> tuple[str, Answer]:
        """The provider's message id and its answer for an accepted message."""
        raise NotImplementedError

    def report(self, to: ReportTo, message: dict[str, Any], status: str, error_code: str | None) -> int | None:
        """Post the provider's delivery report of ``message``; the HTTP status, or None
        when this protocol has nowhere to post."""
        return None
