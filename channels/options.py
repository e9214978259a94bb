"""Reading a transport's options: secrets from environment variables, durations."""

from __future__ import annotations

import os
from typing import Any

from channels.errors import ChannelConfigError


def secret(env_name: str | None, key: str, *, required: bool = False) -> str | None:
    """The value of the environment variable ``env_name`` names; ``key`` is the settings
    key naming it, for the error when it is unset."""
    if not env_name:
        if required:
            raise ChannelConfigError(key, "required: the name of the environment variable holding it")
        return None
    value = os.environ.get(env_name)
    if not value:
        raise ChannelConfigError(key, f"environment variable {env_name} is not set")
    return value


def seconds(value: Any, default: float = 10.0) -> float:
    """A duration option (timedelta or number of seconds) in seconds."""
    if value is None:
        return default
    return value.total_seconds() if hasattr(value, "total_seconds") else float(value)
