"""Errors a channel raises when a send does not succeed.

Every error carries the provider's context: ``provider`` (transport name), ``status``
(the provider's code: SMTP reply code, HTTP status, Bot API error code; None when the
request never got an answer) and ``detail`` (the provider's text)::

    ChannelError
     ├── TransientError          worth retrying later, with backoff
     │    ├── ProviderUnavailable    connection refused or reset, 5xx, timeout before sending
     │    │    └── AccountProblem    the provider refuses every message until the operator
     │    │                          acts (balance exhausted, credentials refused, sender
     │    │                          name not approved): retried, and raised as an alert
     │    └── RateLimited            the provider said "slow down"; retry_after in seconds
     ├── PermanentError          retrying will not help
     │    ├── InvalidRecipient       the address can never work (bad number, no such mailbox)
     │    ├── RecipientBlocked       the member blocked us (Telegram bot blocked, unsubscribed)
     │    ├── AddressUnsupported     a valid address this provider cannot carry (an
     │    │                          internationalized mailbox without SMTPUTF8); not suppressed
     │    └── MessageRejected        the provider refused this message (content, length)
     └── OutcomeUnknown          the request left but no answer came back: the message may
          │                      have been sent; it keeps its cap slot and is not resent blindly
          └── DuplicateRequest   the provider refused the request as a repeat of one it
                                 already has: most likely sent by that one; not resent

    WebhookRejected             what comes back: a provider's callback loyalcast refuses
     ├── WebhookUnsupported      this transport receives no callbacks (HTTP 404)
     ├── InvalidSignature        the signature or shared secret does not match (HTTP 403)
     └── MalformedWebhook        the payload is not what the provider sends; ``field``
                                 names the part (HTTP 400)

    ChannelConfigError           outside the tree: the transport is misconfigured; raised at
     │                           start-up, names the settings key
     └── MissingSecret           the environment variable holding a secret is not set
                                 (only commands that contact the provider need it)

``PermanentError.suppress`` says whether the address should go on the suppression list;
``reached_provider`` says whether the provider saw the message at all (a cap slot is
given back only when it did not).
"""

from __future__ import annotations


class ChannelError(Exception):
    """A send failed. ``provider``, ``status`` and ``detail`` say what the provider said."""

    def __init__(self, detail: str, *, provider: str = "", status: int | str | None = None) -> None:
        self.detail = detail
        self.provider = provider
        self.status = status
        super().__init__(self.describe())

    def describe(self) -> str:
        code = f" {self.status}" if self.status is not None else ""
        who = f"{self.provider}{code}: " if self.provider or code else ""
        return f"{who}{self.detail}"


class TransientError(ChannelError):
    """Try again later."""


class ProviderUnavailable(TransientError):
    """The provider could not take the message now (network, 5xx, 4xx SMTP)."""


class AccountProblem(ProviderUnavailable):
    """The provider refuses every message on this account until the operator acts: the
    balance is exhausted, the credentials are refused, the sender name is not approved.
    Retried with backoff like any transient failure (nothing is lost while someone tops
    up the balance), and an alert: the deliverer logs it at ERROR and counts it in
    ``loyalcast_provider_alerts_total``."""


class RateLimited(TransientError):
    """The provider asked us to slow down for ``retry_after`` seconds."""

    def __init__(self, detail: str, *, retry_after: float, provider: str = "", status: int | str | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(detail, provider=provider, status=status)


class PermanentError(ChannelError):
    """Do not retry."""

    suppress = False
    reached_provider = True


class InvalidRecipient(PermanentError):
    """The address can never receive messages (invalid number, no such mailbox)."""

    suppress = True

    def __init__(
        self, detail: str, *, provider: str = "", status: int | str | None = None, reached_provider: bool = True
    ) -> None:
        self.reached_provider = reached_provider
        super().__init__(detail, provider=provider, status=status)


class RecipientBlocked(PermanentError):
    """The member blocked or unsubscribed from this sender."""

    suppress = True


class AddressUnsupported(PermanentError):
    """The address is valid but this provider cannot carry it (an internationalized
    mailbox, ``иван@пример.рф``, on a server without SMTPUTF8). The address is not
    suppressed: another provider, or the same one upgraded, can reach it."""

    suppress = False
    reached_provider = False


class MessageRejected(PermanentError):
    """The provider refused this particular message."""


class OutcomeUnknown(ChannelError):
    """The request was sent but no answer arrived: it may or may not have been delivered."""


class DuplicateRequest(OutcomeUnknown):
    """The provider refused the request as a repeat of one it received moments before
    (SMSC's error 9, SMS.ru's "same text to this number" limits): that earlier request
    most likely carried the message, so this one is recorded as unknown and not resent."""


class ChannelConfigError(Exception):
    """A transport is misconfigured. ``key`` is the settings key path at fault."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")


class MissingSecret(ChannelConfigError):
    """The environment variable a ``*_env`` key names is not set. Settings load without
    it; commands that contact the provider refuse to start."""


class WebhookRejected(Exception):
    """A callback (delivery report, bounce, bot update) loyalcast refuses; nothing was
    recorded. ``status`` is the HTTP status to answer, ``field`` the part at fault."""

    status = 400

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        self.detail = detail
        self.field = field
        super().__init__(f"{field}: {detail}" if field else detail)


class WebhookUnsupported(WebhookRejected):
    status = 404


class InvalidSignature(WebhookRejected):
    status = 403


class MalformedWebhook(WebhookRejected):
    status = 400
