"""``[channels.<name>]``: each section is the options model of the transport it names.

The accepted shapes are built from the transport registry (``channels.TRANSPORTS``):
every transport owns its keys (``Transport.Options``), the way each django-anymail
backend reads its own settings, and a section without ``transport`` is the outbox's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Discriminator, Tag

from channels import DEFAULT_TRANSPORT, TRANSPORTS, TransportOptions


def transport_of(section: Any) -> str:
    """The transport a raw or validated section names (the union's discriminator)."""
    if isinstance(section, dict):
        return str(section.get("transport", DEFAULT_TRANSPORT))
    return str(getattr(section, "transport", DEFAULT_TRANSPORT))


def _options_union() -> Any:
    members = tuple(Annotated[cls.Options, Tag(name)] for name, cls in TRANSPORTS.items())
    return Annotated[
        Union[members],  # noqa: UP007  # a union of a runtime tuple has no `|` spelling
        Discriminator(
            transport_of,
            custom_error_type="unknown_transport",
            custom_error_message=f"unknown transport (known: {', '.join(sorted(TRANSPORTS))})",
        ),
    ]


if TYPE_CHECKING:
    ChannelOptions = TransportOptions
else:
    ChannelOptions = _options_union()
    """One channel section: the options of whichever transport it names."""


def default_options() -> TransportOptions:
    """The options of a channel the settings do not mention."""
    return TRANSPORTS[DEFAULT_TRANSPORT].Options(transport=DEFAULT_TRANSPORT)
