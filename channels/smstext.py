"""How long an SMS is: encoding, billing units and segments (3GPP TS 23.038 / 23.040).

- GSM-7: the GSM 03.38 default alphabet. One SMS holds 160 septets; a longer message is
  split into parts of 153 (the rest carries the concatenation header). Characters of the
  extension table (``^ { } \\ [ ~ ] | €`` and form feed) take two septets (escape +
  character) and are never split across parts.
- UCS-2 (UTF-16 on the wire): used as soon as one character is outside GSM-7, which is
  always the case for Cyrillic. One SMS holds 70 code units, a part of a longer one 67.
  Characters outside the Basic Multilingual Plane (most emoji) take two units and are
  never split across parts.

Operators bill per segment, so this is what a campaign's ``max_segments`` and the cost
estimate count.
"""

from __future__ import annotations

from dataclasses import dataclass

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67


@dataclass(frozen=True)
class SmsLength:
    encoding: str
    """``"GSM-7"`` or ``"UCS-2"``."""
    characters: int
    units: int
    """Septets (GSM-7) or UTF-16 code units (UCS-2)."""
    segments: int


def is_gsm7(text: str) -> bool:
    return all(char in GSM7_BASIC or char in GSM7_EXTENSION for char in text)


def _segments(widths: list[int], single: int, part: int) -> int:
    total = sum(widths)
    if total <= single:
        return 1 if total else 0
    segments, used = 1, 0
    for width in widths:
        if used + width > part:  # a two-unit character never straddles two parts
            segments += 1
            used = 0
        used += width
    return segments


def measure(text: str) -> SmsLength:
    """Encoding, units and segments of ``text`` as an SMS."""
    if is_gsm7(text):
        widths = [2 if char in GSM7_EXTENSION else 1 for char in text]
        return SmsLength("GSM-7", len(text), sum(widths), _segments(widths, GSM7_SINGLE, GSM7_PART))
    widths = [2 if ord(char) > 0xFFFF else 1 for char in text]
    return SmsLength("UCS-2", len(text), sum(widths), _segments(widths, UCS2_SINGLE, UCS2_PART))
