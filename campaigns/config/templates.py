"""Where a template's texts live: ``templates/<name>/[<locale>/]<part>``.

The parts of each channel come from its spec (``channels.specs``); a locale folder
overrides the unlocalized file, and the program's default locale is the fallback.
"""

from __future__ import annotations

from pathlib import Path

from channels.specs import CHANNELS, ChannelSpec


def template_channels(templates_dir: Path, name: str, locales: list[str]) -> list[str]:
    """Channels the template has at least one file for, unlocalized or in a locale
    folder, in the order of ``channels.specs``."""
    folders = [templates_dir / name, *(templates_dir / name / locale for locale in locales)]
    return [
        spec.name for spec in CHANNELS.values() if any((folder / part).is_file() for folder in folders for part in spec.parts)
    ]


def missing_parts(template_dir: Path, spec: ChannelSpec, default_locale: str) -> list[tuple[str, ...]]:
    """The groups of ``spec.required_parts`` of which the template has no file, neither
    unlocalized nor in the default locale."""
    return [
        group
        for group in spec.required_parts
        if not any((template_dir / part).is_file() or (template_dir / default_locale / part).is_file() for part in group)
    ]
