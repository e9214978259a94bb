"""Loading and validating ``settings.toml``.

``load_settings(path)`` returns a validated :class:`Settings` or raises
:class:`~campaigns.errors.ConfigError` carrying one line per problem, each naming the
key path (``campaigns.balance_reminder.channels[1]: unknown channel 'sms2'``). Every
check runs before anything else does: a campaign never starts on a half-valid file.

Which file: an explicit path (``--config``), else ``$LOYALCAST_CONFIG``, else
``./settings.toml``. Relative paths inside the file (database file, templates, outbox)
resolve against the folder that holds the file, not the current directory.

Secrets never live in the file: a key ending in ``_env`` names the environment variable
that holds the value (``database.url_env = "LOYALCAST_DATABASE_URL"``).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from campaigns.config.settings import Settings
from campaigns.config.validation import pydantic_problems, semantic_problems
from campaigns.errors import ConfigError

CONFIG_ENV = "LOYALCAST_CONFIG"
DEFAULT_CONFIG = "settings.toml"


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The settings file to use: explicit path, else ``$LOYALCAST_CONFIG``, else ``./settings.toml``."""
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read, parse and validate the settings file; raise ConfigError listing every problem."""
    file = config_path(path)
    source = str(file)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"<file>: settings file {source!r} not found (use --config or {CONFIG_ENV})"], source) from None
    except IsADirectoryError:
        raise ConfigError([f"<file>: {source!r} is a folder, not a settings file"], source) from None
    except PermissionError:
        raise ConfigError([f"<file>: no permission to read {source!r}"], source) from None
    except OSError as exc:
        raise ConfigError([f"<file>: cannot read {source!r}: {exc.strerror or exc}"], source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"<file>: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"], source
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"<file>: not valid TOML: {exc}"], source) from None
    return settings_from_dict(raw, base_dir=file.resolve().parent, source=source)


def settings_from_dict(raw: dict[str, Any], *, base_dir: Path, source: str = "<settings>") -> Settings:
    """Validate an already parsed settings mapping (what tests and ``load_settings`` use)."""
    templates_dir = raw.get("templates_dir", "templates")
    context = {
        "segments": set(raw.get("segments") or {}) if isinstance(raw.get("segments", {}), dict) else None,
        "templates": (base_dir / templates_dir) if isinstance(templates_dir, str) else None,
    }
    try:
        settings = Settings.model_validate(raw, context=context)
    except ValidationError as exc:
        raise ConfigError(pydantic_problems(exc), source) from None
    settings._base_dir = base_dir
    settings._source = source
    problems, missing_secrets = semantic_problems(settings)
    if problems:
        raise ConfigError(problems, source)
    settings._missing_secrets = missing_secrets
    return settings
