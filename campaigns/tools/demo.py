"""Deterministic demo data for the program's tables (``loyalcast demo seed``).

The same ``members`` count and ``seed`` always give the same people, relative to the
``now`` they were seeded at. The mix is meant to exercise every decision a campaign
makes: Russian and English members; time zones from Kaliningrad to Vladivostok and a
few abroad (some with none); gaps in email, phone and Telegram; missing consents;
zero and large balances; point lots expiring over the next 60 days; sleeping members;
a couple of unsubscribed addresses; two months of purchases and point movements
(``campaigns.tools.demo_effect``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select
from sqlalchemy.engine import Connection

from campaigns.store.engine import upsert_insert
from campaigns.store.models import (
    SOURCE_TABLES,
    balances,
    members,
    point_expirations,
    point_movements,
    purchases,
    segment_members,
    suppressions,
)
from campaigns.tools.demo_effect import history

RU_FIRST_NAMES = (
    "Анна",
    "Мария",
    "Елена",
    "Ольга",
    "Наталья",
    "Екатерина",
    "Татьяна",
    "Юлия",
    "Ирина",
    "Светлана",
    "Иван",
    "Дмитрий",
    "Сергей",
    "Алексей",
    "Андрей",
    "Михаил",
    "Павел",
    "Никита",
    "Артём",
    "Владимир",
)
EN_FIRST_NAMES = ("Emma", "Olivia", "Amelia", "Sophie", "Grace", "Oliver", "Jack", "Harry", "George", "Noah")
RU_ZONES = (
    ("Europe/Moscow", 40),
    ("Europe/Kaliningrad", 4),
    ("Europe/Samara", 6),
    ("Asia/Yekaterinburg", 10),
    ("Asia/Omsk", 4),
    ("Asia/Novosibirsk", 8),
    ("Asia/Krasnoyarsk", 6),
    ("Asia/Irkutsk", 4),
    ("Asia/Yakutsk", 2),
    ("Asia/Vladivostok", 6),
    (None, 5),
)
ABROAD_ZONES = ("Europe/Berlin", "Europe/London", "Asia/Dubai", "America/New_York", "Asia/Almaty")
TIERS = (("basic", 70), ("silver", 20), ("gold", 10))
SEGMENTS = (("rfm_champions", 0.06), ("rfm_at_risk", 0.12), ("kaism_a", 0.2))
TRANSLIT = str.maketrans(
    {
        "А": "A",
        "а": "a",
        "Б": "B",
        "б": "b",
        "В": "V",
        "в": "v",
        "Г": "G",
        "г": "g",
        "Д": "D",
        "д": "d",
        "Е": "E",
        "е": "e",
        "Ж": "Zh",
        "ж": "zh",
        "З": "Z",
        "з": "z",
        "И": "I",
        "и": "i",
        "Й": "Y",
        "й": "y",
        "К": "K",
        "к": "k",
        "Л": "L",
        "л": "l",
        "М": "M",
        "м": "m",
        "Н": "N",
        "н": "n",
        "О": "O",
        "о": "o",
        "П": "P",
        "п": "p",
        "Р": "R",
        "р": "r",
        "С": "S",
        "с": "s",
        "Т": "T",
        "т": "t",
        "У": "U",
        "у": "u",
        "Ф": "F",
        "ф": "f",
        "Х": "Kh",
        "х": "kh",
        "Ц": "Ts",
        "ц": "ts",
        "Ч": "Ch",
        "ч": "ch",
        "Ш": "Sh",
        "ш": "sh",
        "Щ": "Sch",
        "щ": "sch",
        "Ы": "Y",
        "ы": "y",
        "Э": "E",
        "э": "e",
        "Ю": "Yu",
        "ю": "yu",
        "Я": "Ya",
        "я": "ya",
        "Ь": "",
        "ь": "",
        "Ъ": "",
        "ъ": "",
        "Ё": "E",
        "ё": "e",
    }
)
INSERT_CHUNK = 5_000


@dataclass(frozen=True)
class SeedReport:
    members: int
    expirations: int
    segment_rows: int
    suppressions: int
    movements: int = 0
    skipped: bool = False


Row = dict[str, Any]
"""One row to insert into a program table."""


def _weighted(rng: random.Random, choices: tuple[tuple[Any, int], ...]) -> Any:
    values, weights = zip(*choices, strict=True)
    return rng.choices(values, weights=weights, k=1)[0]


def generate(
    count: int, *, now: datetime, seed: int = 42
) -> Iterator[tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], list[str]]]:
    """Yield ``(member, balance, expirations, segments)`` for members 1..count."""
    rng = random.Random(seed)
    for member_id in range(1, count + 1):
        english = rng.random() < 0.15
        abroad = english and rng.random() < 0.6
        name = rng.choice(EN_FIRST_NAMES if english else RU_FIRST_NAMES)
        zone = rng.choice(ABROAD_ZONES) if abroad else _weighted(rng, RU_ZONES)
        latin = name.translate(TRANSLIT).lower()
        email = f"{latin}.{member_id}@example.{'com' if english else 'ru'}" if rng.random() < 0.75 else None
        if rng.random() < 0.9:
            phone = f"+4477{rng.randrange(10**8):08d}" if abroad else f"+79{rng.randrange(10**9):09d}"
        else:
            phone = None
        chat_id = 100_000_000 + member_id * 7 if rng.random() < 0.35 else None
        days_since_purchase = _purchase_gap(rng)
        member = {
            "id": member_id,
            "first_name": name,
            "locale": "en" if english else ("ru" if rng.random() < 0.97 else None),
            "timezone": zone,
            "tier": _weighted(rng, TIERS),
            "email": email,
            "phone": phone,
            "telegram_chat_id": chat_id,
            "email_consent": email is not None and rng.random() < 0.7,
            "sms_consent": phone is not None and rng.random() < 0.6,
            "telegram_consent": chat_id is not None and rng.random() < 0.85,
            # Drawn apart from rng, so adding Viber and WhatsApp left every other demo figure as it was.
            "viber_consent": phone is not None and (member_id * 2_654_435_761) % 100 < 40,
            "whatsapp_consent": phone is not None and (member_id * 2_246_822_519) % 100 < 55,
            "last_purchase_at": None
            if days_since_purchase is None
            else now - timedelta(days=days_since_purchase, minutes=rng.randrange(1440)),
        }
        points = 0 if rng.random() < 0.1 else int(min(rng.lognormvariate(6.3, 1.0), 50_000))
        lots = []
        remaining = points
        for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
            if remaining < 50:
                break
            lot = rng.randrange(50, max(51, min(remaining, 2_000)))
            remaining -= lot
            lots.append(
                {
                    "member_id": member_id,
                    "points": lot,
                    "expires_at": now + timedelta(days=rng.randrange(1, 61), hours=rng.randrange(24)),
                }
            )
        segments = [name for name, share in SEGMENTS if rng.random() < share]
        yield member, {"member_id": member_id, "points": points}, lots, segments


def _purchase_gap(rng: random.Random) -> int | None:
    roll = rng.random()
    if roll < 0.02:
        return None  # registered, never bought
    if roll < 0.70:
        return rng.randrange(0, 60)
    if roll < 0.90:
        return rng.randrange(60, 180)
    return rng.randrange(180, 720)  # sleeping


def seed(engine: Engine, count: int, *, now: datetime | None = None, seed_value: int = 42, force: bool = False) -> SeedReport:
    """Fill the program's tables with ``count`` demo members (skips if members exist, unless ``force``)."""
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        existing = conn.execute(select(func.count()).select_from(members)).scalar_one()
        if existing and not force:
            return SeedReport(existing, 0, 0, 0, skipped=True)
        for table in SOURCE_TABLES:
            conn.execute(delete(table))
        member_rows: list[dict[str, Any]] = []
        balance_rows: list[dict[str, Any]] = []
        lot_rows: list[dict[str, Any]] = []
        segment_rows: list[dict[str, Any]] = []
        move_rows: list[dict[str, Any]] = []
        purchase_rows: list[dict[str, Any]] = []
        totals = [0, 0, 0, 0]
        unsubscribed = []
        for member, balance, lots, segments in generate(count, now=now, seed=seed_value):
            member_rows.append(member)
            balance_rows.append(balance)
            lot_rows.extend(lots)
            segment_rows.extend({"segment": name, "member_id": member["id"]} for name in segments)
            moves, bought = history(member["id"], now=now, seed=seed_value)
            move_rows.extend(moves)
            purchase_rows.extend(bought)
            if member["email"] and member["email_consent"] and member["id"] % 23 == 0:
                unsubscribed.append(
                    {"channel": "email", "address": member["email"], "reason": "unsubscribed (demo data)", "created_at": now}
                )
            if member["phone"] and member["sms_consent"] and member["id"] % 19 == 0:
                unsubscribed.append(
                    {"channel": "sms", "address": member["phone"], "reason": "complained (demo data)", "created_at": now}
                )
            if len(member_rows) >= INSERT_CHUNK:
                _flush(conn, member_rows, balance_rows, lot_rows, segment_rows, move_rows, purchase_rows, totals)
        _flush(conn, member_rows, balance_rows, lot_rows, segment_rows, move_rows, purchase_rows, totals)
        if unsubscribed:
            conn.execute(upsert_insert(conn, suppressions).on_conflict_do_nothing(), unsubscribed)
    return SeedReport(count, totals[1], totals[2], len(unsubscribed), totals[3])


def _flush(
    conn: Connection,
    member_rows: list[Row],
    balance_rows: list[Row],
    lot_rows: list[Row],
    segment_rows: list[Row],
    move_rows: list[Row],
    purchase_rows: list[Row],
    totals: list[int],
) -> None:
    for table, rows in (
        (members, member_rows),
        (balances, balance_rows),
        (point_expirations, lot_rows),
        (segment_members, segment_rows),
        (point_movements, move_rows),
        (purchases, purchase_rows),
    ):
        if rows:
            conn.execute(insert(table), rows)
    totals[0] += len(member_rows)
    totals[1] += len(lot_rows)
    totals[2] += len(segment_rows)
    totals[3] += len(move_rows)
    for rows in (member_rows, balance_rows, lot_rows, segment_rows, move_rows, purchase_rows):
        rows.clear()
