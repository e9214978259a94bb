"""The SQL that decides one chunk of a campaign run.

``decide_chunk`` runs inside the planner's chunk transaction, after the chunk's members
are locked. One ``INSERT ... SELECT`` writes a ledger row per segment member, built in
four layers:

1. ``reach``: per channel, the member's state (``ok``, ``no contact``, ``no consent``,
   ``unsubscribed``, ``suppressed``) and address; whether the member is in the global
   control group or the campaign's holdout (both drawn first, see ``control``);
2. ``chosen``: the first ``ok`` channel of the campaign's priority list;
3. ``capped``: when the message would be due on that channel (quiet hours,
   ``send_at_local``: one constant per time zone) and the first cap rule that is full
   at that time (a count of slot-holding ledger rows inside the rule's window);
4. the row: status, reason, whether it holds a cap slot.

Time-zone arithmetic never happens in SQL: for every zone the members have, Python
computes the send time and each rule's window once (``context``), and the SQL picks
them with a ``CASE`` on the member's zone. That keeps SQLite and PostgreSQL in
agreement. Members whose first full rule says ``defer`` go on to ``deferral``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    Integer,
    String,
    and_,
    bindparam,
    case,
    cast,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    text,
)
from sqlalchemy.engine import Connection

from campaigns.config.rules import CapRule
from campaigns.config.settings import Settings
from campaigns.config.values import ANY_CHANNEL, is_marketing
from campaigns.planning import control, ladder
from campaigns.planning.caps import (
    window_bounds,
)
from campaigns.planning.context import RunContext
from campaigns.planning.deferral import CAPPED_PREFIX, DEFERRED_PREFIX, defer_chunk
from campaigns.planning.segments import MemberRange, segment_query
from campaigns.store import partitions
from campaigns.store.engine import upsert_insert
from campaigns.store.ledger import ReasonCode, Status
from campaigns.store.models import UTCDateTime, contacts, deliveries, members, suppressions
from campaigns.store.preferences import choice_codes
from channels.specs import channel_spec

STATE_OK = "ok"
STATE_NO_CONTACT = "no contact"
STATE_NO_CONSENT = "no consent"
STATE_SUPPRESSED = "suppressed"
STATE_UNSUBSCRIBED = "unsubscribed"

DECIDED_AHEAD = timedelta(days=1)
"""No ledger row is decided later than this after the present (clocks of several machines
may differ a little; a triggered message's ``now`` is the caller's)."""

RUN_MEMBER = ["run_id", "member_id", "created_at"]
"""The conflict target of a run's decisions: one per member (a run's rows share created_at)."""

INSERTED_COLUMNS = [
    "run_id",
    "member_id",
    "channel",
    "category",
    "template",
    "status",
    "reason",
    "reason_code",
    "cap_rule",
    "address",
    "holds_slot",
    "send_at",
    "deferred_from",
    "created_at",
    "updated_at",
    "attempts",
    "idempotency_key",
    "data",
]


def _per_zone(zone: ColumnElement[str], values: dict[str, Any], program_zone: str, type_: Any) -> ColumnElement[Any]:
    """A constant per member zone: ``CASE zone WHEN 'Europe/Moscow' THEN ... END``."""
    distinct = set(values.values())
    if len(distinct) == 1:
        return literal(next(iter(distinct)), type_)
    default = values[program_zone]
    whens = [(zone == name, literal(value, type_)) for name, value in values.items() if value != default]
    return case(*whens, else_=literal(default, type_))


ADDRESS_LENGTH = 320
"""Characters of an address the ledger keeps (``deliveries.address``): no valid email,
phone or chat id is longer, so a longer value stays invalid once cut and fails its
channel's address check instead of failing the whole chunk's insert."""


def _contact(segment: Any, channel: str, linked: Any | None) -> ColumnElement[str]:
    """The member's address on ``channel`` as text: the column its spec names, else
    (for a channel loyalcast collects addresses of) the one the member linked."""
    column: ColumnElement[Any] = segment.c[channel_spec(channel).contact]
    text = column if isinstance(column.type, String) else cast(column, String)
    if linked is not None:
        text = func.coalesce(func.nullif(text, ""), linked.c.address)
    return func.substr(text, 1, ADDRESS_LENGTH)


def _consent(segment: Any, channel: str, linked: Any | None) -> ColumnElement[bool]:
    """The member's marketing consent on ``channel`` (a NULL is none): the program's
    column, or the consent given when linking a collected address."""
    given: ColumnElement[Any] = func.coalesce(segment.c[channel_spec(channel).consent], false())
    if linked is not None:
        given = or_(given, func.coalesce(linked.c.consent, false()))
    return given


def _joined(parts: list[ColumnElement[str]], separator: str) -> ColumnElement[str]:
    expr = parts[0]
    for part in parts[1:]:
        expr = expr + literal(separator, String) + part
    return expr


def decide_chunk(
    conn: Connection, settings: Settings, ctx: RunContext, member_range: tuple[int, int]
) -> Counter[tuple[str, str]]:
    """Insert the chunk's decisions (skipping members already decided); return how many
    new rows got each (status, channel).

    An expiring-points ladder considers only the members with a reminder due (see
    ``campaigns.planning.ladder``) and records the reminders it queued.
    """
    steps = None
    inserted: Counter[tuple[str, str]] = Counter()
    if conn.dialect.name == "postgresql":
        # Index scans whatever the statistics say: this month's partition is being
        # written by this very plan, and its statistics may still say it is empty, in
        # which case scanning it whole for each member looks free and is quadratic.
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        conn.execute(text("SET LOCAL enable_bitmapscan = off"))
    if ctx.campaign.kind == "expiring_ladder":
        found = ladder.candidates(conn, settings, ctx.campaign_name, ctx.as_of, member_range, ctx.zones)
        inserted += _insert_not_due(conn, ctx, found.left_out)
        steps = found.due
        if not steps:
            return inserted
    only = sorted(steps) if steps else None
    segment = _segment(settings, ctx, member_range, only)
    for draw in _draws(settings, ctx):
        control.draw_members(conn, draw, segment)
    fresh = ctx.run_id is not None and not _decided_before(conn, ctx, member_range)
    insert, params = chunk_insert(conn, settings, ctx, member_range, only=only, fresh=fresh)
    if fresh and conn.dialect.name == "postgresql":
        inserted += _insert_then_count(conn, insert, params, ctx, member_range)
    else:
        inserted += _count_inserted(conn, insert, params)
    if any(rule.action == "defer" for rule in settings.caps):
        defer_chunk(conn, settings, ctx, member_range)
    if steps:
        ladder.record(conn, ctx.campaign_name, ctx.run_id, steps)
    return inserted


def _decided_before(conn: Connection, ctx: RunContext, member_range: tuple[int, int]) -> bool:
    """Whether the run decided any member of the chunk before (a planner that stopped
    midway, a duplicate plan message). Under the chunk's member locks, so no other
    planner of the run can be writing the chunk meanwhile."""
    assert ctx.run_id is not None and ctx.decided_at is not None
    return conn.execute(select(deliveries.c.id).where(_run_rows_in(ctx, member_range)).limit(1)).first() is not None


def _run_rows_in(ctx: RunContext, member_range: tuple[int, int]) -> ColumnElement[bool]:
    """The run's ledger rows of the chunk's members (through the run's unique index)."""
    return and_(
        deliveries.c.run_id == ctx.run_id,
        deliveries.c.created_at == ctx.decided_at,
        deliveries.c.member_id.between(*member_range),
    )


def _insert_not_due(conn: Connection, ctx: RunContext, left_out: dict[int, tuple[ReasonCode, str]]) -> Counter[tuple[str, str]]:
    """A ``not_due`` row for each member the ladder considered and left out."""
    if not left_out:
        return Counter()
    now = datetime.now(ctx.as_of.tzinfo)
    rows = [
        {
            "run_id": ctx.run_id,
            "member_id": member_id,
            "channel": None,
            "category": ctx.campaign.category,
            "template": ctx.campaign.template,
            "status": Status.NOT_DUE.value,
            "reason": reason[:500],
            "reason_code": code.value,
            "holds_slot": False,
            "send_at": ctx.as_of,
            "created_at": ctx.decided_at or now,
            "updated_at": now,
            "attempts": 0,
        }
        for member_id, (code, reason) in sorted(left_out.items())
    ]
    result = conn.execute(upsert_insert(conn, deliveries).on_conflict_do_nothing(index_elements=RUN_MEMBER), rows)
    added = result.rowcount if result.rowcount is not None and result.rowcount >= 0 else len(rows)
    return Counter({(Status.NOT_DUE.value, "-"): added})


def _insert_then_count(
    conn: Connection, insert: Any, params: dict[str, Any], ctx: RunContext, member_range: tuple[int, int]
) -> Counter[tuple[str, str]]:
    """Run ``insert`` of a chunk the run had not decided before, then count its rows per
    (status, channel) from the ledger: reading them back by the run's unique index costs
    a fifth of what returning them from the insert did (measured in bench/README.md)."""
    conn.execute(insert, params)
    counted = (
        select(deliveries.c.status, deliveries.c.channel, func.count())
        .where(_run_rows_in(ctx, member_range))
        .group_by(deliveries.c.status, deliveries.c.channel)
    )
    return Counter({(row.status, row.channel or "-"): row[2] for row in conn.execute(counted)})


def _count_inserted(conn: Connection, insert: Any, params: dict[str, Any]) -> Counter[tuple[str, str]]:
    """Run ``insert``; return how many new rows got each (status, channel).

    PostgreSQL counts in the statement (a data-modifying CTE), so a chunk returns a
    handful of rows instead of one per member; SQLite cannot put an INSERT in a CTE and
    returns its rows.
    """
    if conn.dialect.name == "postgresql":
        rows = insert.returning(deliveries.c.status, deliveries.c.channel).cte("inserted")
        counted = select(rows.c.status, rows.c.channel, func.count()).group_by(rows.c.status, rows.c.channel)
        return Counter({(row.status, row.channel or "-"): row[2] for row in conn.execute(counted, params)})
    returned = conn.execute(insert.returning(deliveries.c.status, deliveries.c.channel), params)
    return Counter((row.status, row.channel or "-") for row in returned)


def _segment(settings: Settings, ctx: RunContext, member_range: MemberRange, only: list[int] | None) -> Any:
    segment_select = segment_query(
        ctx.segment,
        as_of=ctx.as_of,
        default_locale=settings.program.default_locale,
        member_range=member_range,
    )
    if only is not None:
        segment_select = segment_select.where(members.c.id.in_(only))
    return segment_select.subquery("segment")


def _global_draw(settings: Settings, ctx: RunContext) -> control.Draw | None:
    return control.global_draw(settings, ctx.campaign.category, ctx.as_of)


def _campaign_draw(ctx: RunContext) -> control.Draw | None:
    campaign = ctx.campaign
    return control.campaign_draw(ctx.campaign_name, campaign.holdout, campaign.holdout_salt, campaign.holdout_by)


def _draws(settings: Settings, ctx: RunContext) -> list[control.Draw]:
    return [draw for draw in (_global_draw(settings, ctx), _campaign_draw(ctx)) if draw is not None]


def decision_rows(
    conn: Connection,
    settings: Settings,
    ctx: RunContext,
    member_range: MemberRange,
    only: list[int] | None = None,
    *,
    now: ColumnElement[datetime] | None = None,
) -> Any:
    """The SELECT of one ledger row per segment member of ``member_range`` (columns named
    as :data:`INSERTED_COLUMNS`). The control groups' draws must have run for these
    members (``decide_chunk`` draws them); a member not drawn is not held out. ``now``:
    the rows' ``updated_at`` (a parameter in a statement built for many chunks; default
    the moment of building)."""
    campaign = ctx.campaign
    channels = campaign.channels
    segment = _segment(settings, ctx, member_range, only)

    # 1. reach: per-channel state and address, holdout draw. Linked contacts, choices and
    # suppressions are joined (by hash, once per chunk), not looked up member by member.
    zone = func.coalesce(segment.c.timezone, ctx.program_zone)
    reach_columns: list[Any] = [segment.c.id.label("member_id"), segment.c.tier.label("tier"), zone.label("zone")]
    # Consent columns are marketing consent: a service message needs only the address.
    consent_needed = is_marketing(campaign.category)
    joined: Any = segment
    linked: dict[str, Any] = {}
    for channel in channels:
        if channel_spec(channel).collected:
            linked[channel] = contacts.alias(f"linked_{channel}")
            on = and_(linked[channel].c.member_id == segment.c.id, linked[channel].c.channel == channel)
            joined = joined.outerjoin(linked[channel], on)
    choices = choice_codes(channels, campaign.category, member_range) if consent_needed else None
    if choices is not None:
        joined = joined.outerjoin(choices, choices.c.member_id == segment.c.id)
    for channel in channels:
        contact = _contact(segment, channel, linked.get(channel))
        suppressed = suppressions.alias(f"suppressed_{channel}")
        joined = joined.outerjoin(suppressed, and_(suppressed.c.channel == channel, suppressed.c.address == contact))
        whens: list[tuple[ColumnElement[bool], str]] = [(or_(contact.is_(None), contact == ""), STATE_NO_CONTACT)]
        if choices is not None:
            whens.append((not_(_consent(segment, channel, linked.get(channel))), STATE_NO_CONSENT))
            whens.append((choices.c[channel] % 2 == 0, STATE_UNSUBSCRIBED))
        whens.append((suppressed.c.address.is_not(None), STATE_SUPPRESSED))
        state = case(*whens, else_=STATE_OK)
        reach_columns += [state.label(f"state_{channel}"), contact.label(f"address_{channel}")]
    global_draw, campaign_draw = _global_draw(settings, ctx), _campaign_draw(ctx)
    in_global = control.is_held(global_draw, segment.c.id) if global_draw else false()
    in_holdout = control.is_held(campaign_draw, segment.c.id) if campaign_draw else false()
    reach_columns += [or_(in_global, in_holdout).label("held"), in_global.label("in_global")]
    # OFFSET 0 keeps PostgreSQL from pulling each layer up into the next: every layer
    # names the previous one's columns several times, and inlined that multiplies into
    # hundreds of sub-plans and seconds of planning per chunk.
    reach = select(*reach_columns).select_from(joined).offset(0).subquery("reach")

    # 2. chosen: first reachable channel, and what the earlier ones were
    states = {c: reach.c[f"state_{c}"] for c in channels}
    ok = {c: states[c] == STATE_OK for c in channels}
    skipped_whens = []
    for index, channel in enumerate(channels):
        earlier = channels[:index]
        text = (
            literal(" (", String) + _joined([literal(f"{c}: ", String) + states[c] for c in earlier], ", ") + literal(")", String)
            if earlier
            else literal("", String)
        )
        skipped_whens.append((ok[channel], text))
    chosen = (
        select(
            reach.c.member_id,
            reach.c.tier,
            reach.c.zone,
            reach.c.held,
            reach.c.in_global,
            case(*((ok[c], literal(c, String)) for c in channels), else_=None).label("channel"),
            case(*((ok[c], reach.c[f"address_{c}"]) for c in channels), else_=None).label("address"),
            case(*skipped_whens, else_=literal("", String)).label("skipped"),
            # Only a member no channel reaches has every state in the reason.
            case(
                (or_(*ok.values()), literal(None, String)),
                else_=_joined([literal(f"{c}: ", String) + states[c] for c in channels], "; "),
            ).label("states"),
            case(
                (or_(*(states[c] == STATE_UNSUBSCRIBED for c in channels)), Status.UNSUBSCRIBED.value),
                (or_(*(states[c] == STATE_SUPPRESSED for c in channels)), Status.SUPPRESSED.value),
                (or_(*(states[c] == STATE_NO_CONSENT for c in channels)), Status.NO_CONSENT.value),
                else_=Status.NO_CONTACT.value,
            ).label("unreachable"),
        )
        .offset(0)
        .subquery("chosen")
    )

    # 3. capped: due time on the chosen channel, first full cap rule there
    due = {c: _per_zone(chosen.c.zone, ctx.send_at[c], ctx.program_zone, UTCDateTime()) for c in channels}
    send_at = case(*((chosen.c.channel == c, due[c]) for c in channels), else_=literal(ctx.as_of, UTCDateTime()))
    hit_whens = []
    holders = _holders(conn)
    for channel in channels:
        hit = _first_full_rule(settings, ctx, channel, chosen, holders)
        if hit is not None:
            hit_whens.append((chosen.c.channel == channel, hit))
    cap_hit = (
        case((or_(chosen.c.held, chosen.c.channel.is_(None)), literal(None, Integer)), *hit_whens, else_=literal(None, Integer))
        if hit_whens
        else literal(None, Integer)
    )
    capped = select(*chosen.c, send_at.label("send_at"), cap_hit.label("cap_hit")).offset(0).subquery("capped")

    # 4. the ledger row
    deferring = [i for i, rule in enumerate(settings.caps) if rule.action == "defer"]
    is_deferred = capped.c.cap_hit.in_(deferring) if deferring else false()
    status = case(
        (capped.c.channel.is_(None), capped.c.unreachable),
        (capped.c.held, literal(Status.HELD_OUT.value, String)),
        (capped.c.cap_hit.is_(None), literal(Status.QUEUED.value, String)),
        (is_deferred, literal(Status.QUEUED.value, String)),
        else_=literal(Status.CAPPED.value, String),
    )
    code = case(
        (capped.c.channel.is_(None), capped.c.unreachable),
        (capped.c.in_global, literal(ReasonCode.GLOBAL_CONTROL.value, String)),
        (capped.c.held, literal(ReasonCode.HELD_OUT.value, String)),
        (capped.c.cap_hit.is_(None), literal(ReasonCode.ELIGIBLE.value, String)),
        (is_deferred, literal(ReasonCode.CAP_DEFERRED.value, String)),
        else_=literal(ReasonCode.CAPPED.value, String),
    )
    cap_rule = (
        case(
            *((capped.c.cap_hit == i, literal(rule.name, String)) for i, rule in enumerate(settings.caps)),
            else_=literal(None, String),
        )
        if settings.caps
        else literal(None, String)
    )
    rule_names = [
        (capped.c.cap_hit == i, literal((DEFERRED_PREFIX if rule.action == "defer" else CAPPED_PREFIX) + rule.name, String))
        for i, rule in enumerate(settings.caps)
    ]
    reason = case(
        (capped.c.channel.is_(None), capped.c.states),
        *(((capped.c.in_global, literal(f"{global_draw.label} on ", String) + capped.c.channel),) if global_draw else ()),
        (capped.c.held, literal(f"control group ({campaign.holdout:.0%} holdout) on ", String) + capped.c.channel),
        (capped.c.cap_hit.is_(None), literal("eligible on ", String) + capped.c.channel + capped.c.skipped),
        *((when, text + capped.c.skipped) for when, text in rule_names),
        else_=literal("", String),
    )
    if now is None:
        now = literal(datetime.now(ctx.as_of.tzinfo), UTCDateTime())
    values = (
        literal(ctx.run_id, BigInteger()),
        capped.c.member_id,
        capped.c.channel,
        literal(campaign.category, String),
        literal(campaign.template, String),
        status,
        reason,
        code,
        cap_rule,
        capped.c.address,
        status == Status.QUEUED.value,
        capped.c.send_at,
        case((is_deferred, capped.c.send_at), else_=literal(None, UTCDateTime())),
        literal(ctx.decided_at, UTCDateTime()) if ctx.decided_at else now,
        now,
        literal(0, Integer),
        literal(ctx.idempotency_key, String()),
        literal(ctx.data, deliveries.c.data.type),
    )
    # SQLite needs a WHERE before ON CONFLICT in INSERT ... SELECT
    return select(*(value.label(name) for value, name in zip(values, INSERTED_COLUMNS, strict=True))).where(
        literal(True, Boolean)
    )


CHUNK_BOUNDS = (bindparam("chunk_first", type_=BigInteger()), bindparam("chunk_last", type_=BigInteger()))
"""The member range of a statement built once per run: filled in per chunk."""

DECIDED_NOW = bindparam("decided_now", type_=UTCDateTime())
"""The rows' ``updated_at`` in a statement built once per run: filled in per chunk."""


def chunk_insert(
    conn: Connection,
    settings: Settings,
    ctx: RunContext,
    member_range: tuple[int, int],
    only: list[int] | None = None,
    *,
    fresh: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """:func:`decision_insert` for one chunk, and the parameters to execute it with.

    The statement does not depend on the chunk, so it is built once per run and kept in
    ``ctx.statements`` (with the chunk's bounds and the time as parameters); a ladder's
    chunk, which names its members, is built for itself."""
    if only is not None:
        return decision_insert(conn, settings, ctx, member_range, only, fresh=fresh), {}
    insert = ctx.statements.get(fresh)
    if insert is None:
        insert = ctx.statements[fresh] = decision_insert(conn, settings, ctx, CHUNK_BOUNDS, fresh=fresh, now=DECIDED_NOW)
    first, last = member_range
    return insert, {"chunk_first": first, "chunk_last": last, "decided_now": datetime.now(ctx.as_of.tzinfo)}


def decision_insert(
    conn: Connection,
    settings: Settings,
    ctx: RunContext,
    member_range: MemberRange,
    only: list[int] | None = None,
    *,
    fresh: bool = False,
    now: ColumnElement[datetime] | None = None,
) -> Any:
    """The INSERT of :func:`decision_rows` into the ledger, skipping members already
    decided. ``fresh``: the run has decided no member of the range yet, so the insert
    need not look for conflicts (a plain insert writes the rows in two thirds of the
    time; the unique index still refuses a duplicate)."""
    body = decision_rows(conn, settings, ctx, member_range, only, now=now)
    insert = upsert_insert(conn, deliveries).from_select(INSERTED_COLUMNS, body)
    if ctx.idempotency_key is not None or fresh:
        # A triggered message's key was claimed in idempotency_keys before (campaigns.planning.triggered).
        return insert
    return insert.on_conflict_do_nothing(index_elements=RUN_MEMBER)


def _first_full_rule(
    settings: Settings, ctx: RunContext, channel: str, chosen: Any, holders: Holders
) -> ColumnElement[Any] | None:
    """Index (in ``settings.caps``) of the first rule full for the member on ``channel``, else NULL."""
    category = ctx.campaign.category
    groups: list[tuple[str | None, list[CapRule]]] = [
        (tier, settings.caps_for(channel, category, tier)) for tier in settings.override_tiers(channel, category)
    ]
    default_rules = settings.caps_for(channel, category, None)
    if not default_rules and not any(rules for _, rules in groups):
        return None

    def first_full(rules: list[CapRule]) -> ColumnElement[Any]:
        whens = [
            (_is_full(settings, ctx, channel, rule, chosen, holders), literal(settings.caps.index(rule), Integer))
            for rule in rules
        ]
        return case(*whens, else_=literal(None, Integer)) if whens else literal(None, Integer)

    tier_whens = [(chosen.c.tier == tier, first_full(rules)) for tier, rules in groups]
    if not tier_whens:
        return first_full(default_rules)
    return case(*tier_whens, else_=first_full(default_rules))


Holders = Callable[[datetime], Any]
"""The slot-holding rows a cap lookup reads, given the earliest decision that can matter."""

HOLDER_COLUMNS = ["member_id", "channel", "category", "send_at", "holds_slot"]


def _holders(conn: Connection) -> Holders:
    """For each earliest decision a window can be reached by, the ledger rows to count:
    on PostgreSQL only the months from then until today (a backfill's rows are decided
    now for a past instant; no row is decided later than tomorrow)."""
    until = datetime.now(UTC) + DECIDED_AHEAD
    found: dict[tuple[int, int], Any] = {}

    def holders(since: datetime) -> Any:
        key = (since.year, since.month)
        if key not in found:
            found[key] = partitions.rows_decided_between(conn, since, until, HOLDER_COLUMNS)
        return found[key]

    return holders


def _is_full(
    settings: Settings, ctx: RunContext, channel: str, rule: CapRule, chosen: Any, holders: Holders
) -> ColumnElement[bool]:
    lows, highs = {}, {}
    inclusive = False
    for zone_name, due in ctx.send_at[channel].items():
        lows[zone_name], highs[zone_name], inclusive = window_bounds(rule, due, ZoneInfo(zone_name))
    low = _per_zone(chosen.c.zone, lows, ctx.program_zone, UTCDateTime())
    high = _per_zone(chosen.c.zone, highs, ctx.program_zone, UTCDateTime())
    # A holder inside the window was decided no earlier than its start less the longest
    # a message may wait after its decision (Settings.hold_slack).
    rows = holders(min(lows.values()) - settings.hold_slack)
    conditions = [
        rows.c.member_id == chosen.c.member_id,
        rows.c.holds_slot,
        rows.c.category == rule.category,
        rows.c.send_at >= low if inclusive else rows.c.send_at > low,
        rows.c.send_at < high,
    ]
    if rule.channel != ANY_CHANNEL:
        conditions.append(rows.c.channel == channel)
    if rule.limit == 1:
        # The usual rule ("1 per 30d"): the lookup may stop at the first holder, before
        # reading the next month's index, instead of counting them all.
        return exists(select(literal(1)).select_from(rows).where(and_(*conditions)))
    used = select(func.count()).select_from(rows).where(and_(*conditions)).scalar_subquery()
    return used >= rule.limit
