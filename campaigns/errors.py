"""Errors raised by loyalcast's campaign side.

One flat module, one tree::

    LoyalcastError
     ├── ConfigError          settings.toml (or a file it names) is invalid; carries
     │                        every problem as "key.path: what is wrong"
     ├── TemplateError        a template is missing, does not parse, or fails to render;
     │                        names the template file and line
     │    └── RenderBudgetExceeded  a template ran longer, or wrote more, than
     │                             ``[rendering]`` allows (or recursed too deep)
     ├── ServiceUnavailable   the database or the broker cannot be reached; names the
     │                        settings key and the URL (its password masked)
     ├── UnknownCampaign      a command named a campaign settings.toml does not define
     └── InvalidLink          a member's signed link is malformed, altered or truncated

Channel (provider) errors have their own tree in ``channels.errors``: they describe a
delivery attempt, not a mistake in loyalcast's input.
"""

from __future__ import annotations


class LoyalcastError(Exception):
    """Base of every error loyalcast raises on purpose."""


class ConfigError(LoyalcastError):
    """The settings are invalid.

    ``problems`` holds one line per problem, each starting with the key path
    (``campaigns.balance_reminder.channels[1]: unknown channel 'sms2'``).
    """

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(self.problems))


class TemplateError(LoyalcastError):
    """A template could not be found, parsed or rendered.

    ``file`` is the template path relative to the templates folder and ``line``
    the 1-based line number where Jinja2 located the problem, when it did.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        self.file = file
        self.line = line
        self.message = message
        where = file or "<template>"
        if line:
            where += f":{line}"
        super().__init__(f"{where}: {message}")


class RenderBudgetExceeded(TemplateError):
    """A template ran longer, wrote more, or recursed deeper than ``[rendering]`` allows."""


class UnknownCampaign(LoyalcastError):
    """No campaign of that name is defined in the settings."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        listing = ", ".join(sorted(known)) or "none"
        super().__init__(f"unknown campaign {name!r} (settings define: {listing})")


class ServiceUnavailable(LoyalcastError):
    """The database or the broker cannot be reached.

    ``key`` is the settings key that chose the service (``database.url``, or
    ``broker.url_env (LOYALCAST_BROKER_URL)``), ``url`` its URL with the password
    masked, ``detail`` the driver's first line, ``consequence`` what it left behind.
    """

    def __init__(self, key: str, url: str, detail: str, consequence: str = "") -> None:
        self.key = key
        self.url = url
        self.detail = detail
        self.consequence = consequence
        tail = f"; {consequence}" if consequence else ""
        super().__init__(f"{key}: cannot reach {url}: {detail}{tail}")


class InvalidLink(LoyalcastError):
    """A member's link (unsubscribe, preferences, opt-in) is malformed, altered,
    truncated or signed by a key no longer accepted; nothing was changed."""
