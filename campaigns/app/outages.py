"""The database or the broker being out of reach: which exceptions say so, and the one
line that tells an operator which setting points at the service (the URL's password
masked)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import dramatiq
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from campaigns.config.settings import Settings
from campaigns.errors import ServiceUnavailable

BROKER_OUTAGES: tuple[type[BaseException], ...] = (RedisError, dramatiq.errors.BrokerError)
"""Errors of a broker that is down or unreachable."""
OUTAGES: tuple[type[BaseException], ...] = (DBAPIError, *BROKER_OUTAGES)
"""Errors a long-running process (scheduler, reconciler) waits out with backoff."""
UNREACHABLE: tuple[type[BaseException], ...] = (OperationalError, InterfaceError, *BROKER_OUTAGES)
"""Errors a command turns into :class:`ServiceUnavailable` (a lost or refused connection,
not a mistake in a statement)."""


def service(exc: BaseException) -> str:
    """``"the database"`` or ``"the broker"``: which service ``exc`` is about."""
    return "the database" if isinstance(exc, DBAPIError) else "the broker"


def brief(exc: BaseException) -> str:
    """The first line of what the driver said, at most 200 characters."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def masked(url: str) -> str:
    """``url`` with its password, if any, written ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}{port}", parts.path, parts.query, parts.fragment))


def unreachable(exc: BaseException, settings: Settings, doing: str = "") -> ServiceUnavailable:
    """The one-line error for ``exc`` (one of :data:`UNREACHABLE`): the settings key that
    chose the service, its URL, and what the driver said."""
    if isinstance(exc, DBAPIError):
        key = _key("database", settings.database.url_env)
        url = settings.database_url
    else:
        key = _key("broker", settings.broker.url_env)
        url = settings.broker_url
    return ServiceUnavailable(key, masked(url), brief(exc), doing)


def _key(section: str, env_name: str | None) -> str:
    if env_name and os.environ.get(env_name):
        return f"{section}.url_env ({env_name})"
    return f"{section}.url"
