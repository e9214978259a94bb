"""SMS length: encodings, units and segments at the boundaries operators bill by."""

from __future__ import annotations

import pytest

from channels.smstext import measure


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("", "GSM-7", 0, 0),
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("a" * 306, "GSM-7", 306, 2),
        ("a" * 307, "GSM-7", 307, 3),
        ("€" * 80, "GSM-7", 160, 1),  # extension characters take two septets
        ("a" * 151 + "€" + "a", "GSM-7", 154, 1),  # up to 160 septets is one SMS
        ("a" * 151 + "€" + "a" * 153, "GSM-7", 306, 2),  # the escape pair ends part one at 153
        ("a" * 152 + "€" + "a" * 152, "GSM-7", 306, 3),  # ... or moves whole into part two
        ("ж" * 70, "UCS-2", 70, 1),
        ("ж" * 71, "UCS-2", 71, 2),
        ("ж" * 134, "UCS-2", 134, 2),
        ("ж" * 135, "UCS-2", 135, 3),
        ("ж" * 201, "UCS-2", 201, 3),
        ("ж" * 268, "UCS-2", 268, 4),
        ("a" * 159 + "’", "UCS-2", 160, 3),  # one typographic apostrophe switches to UCS-2
        ("🎁" * 35, "UCS-2", 70, 1),  # emoji outside the BMP take two units
        ("ж" * 66 + "🎁" + "ж", "UCS-2", 69, 1),
        ("ж" * 66 + "🎁" + "ж" * 4, "UCS-2", 72, 2),  # the surrogate pair does not straddle parts
    ],
)
def test_segments(text, encoding, units, segments) -> None:
    length = measure(text)
    assert (length.encoding, length.units, length.segments) == (encoding, units, segments)


def test_surrogate_pair_at_a_part_boundary_moves_whole() -> None:
    # 66 units then an emoji (2 units) would cross the 67-unit part: it starts part two,
    # so 134 units need three parts, not the two that 134 / 67 suggests
    assert measure("ж" * 66 + "🎁" + "ж" * 65).segments == 2
    assert measure("ж" * 66 + "🎁" + "ж" * 66).segments == 3
    assert measure("ж" * 65 + "🎁" + "ж" * 67).segments == 2
