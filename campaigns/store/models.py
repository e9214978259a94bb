"""SQLAlchemy tables: the loyalty program's (read only) and loyalcast's own.

The program owns ``members``, ``balances``, ``point_expirations`` and
``segment_members``, and optionally ``point_movements`` and ``purchases`` (what
``loyalcast lift`` measures campaigns by); loyalcast only reads them (an integrator whose schema differs
creates views with these names and columns, see ``docs/data.md``).

loyalcast owns ``campaign_runs``, ``deliveries`` (the ledger), ``suppressions``,
``cap_locks``, and what comes back through the web service: ``preferences`` (members'
unsubscribes), ``contacts`` (addresses members linked, such as a Telegram chat),
``conversations`` (when a member last wrote to us, on channels with a session window) and
``provider_events`` (delivery reports as received), and the control groups it drew
(``control_draws``, ``control_strata``), and changes them only through Alembic migrations
(``campaigns/migrations``).

Every timestamp is stored in UTC. :class:`UTCDateTime` makes that hold on SQLite too,
which has no time zone type: values go in converted to UTC and come out UTC-aware.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Computed,
    Date,
    DateTime,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

# SQLite only auto-increments INTEGER PRIMARY KEY, not BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Points = Numeric(14, 2, asdecimal=False)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC; naive input is rejected rather than guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: loyalcast stores aware UTC timestamps only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# --- the program's tables (read only) ---------------------------------------------

members = Table(
    "members",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=False),
    Column("first_name", String(100), nullable=False, server_default=""),
    Column("locale", String(16), nullable=True, comment="ru, en, ...; NULL: program default"),
    Column("timezone", String(64), nullable=True, comment="IANA name; NULL: program time zone"),
    Column("tier", String(32), nullable=False, server_default="basic"),
    Column("email", String(320), nullable=True),
    Column("phone", String(20), nullable=True, comment="E.164, e.g. +79161234567"),
    Column("telegram_chat_id", BigInteger, nullable=True),
    Column("email_consent", Boolean, nullable=False, server_default=text("false")),
    Column("sms_consent", Boolean, nullable=False, server_default=text("false")),
    Column("telegram_consent", Boolean, nullable=False, server_default=text("false")),
    Column("viber_consent", Boolean, nullable=False, server_default=text("false")),
    Column("whatsapp_consent", Boolean, nullable=False, server_default=text("false")),
    Column("last_purchase_at", UTCDateTime, nullable=True),
)

balances = Table(
    "balances",
    metadata,
    Column("member_id", BigId, primary_key=True, autoincrement=False),
    Column("points", Points, nullable=False),
)

point_expirations = Table(
    "point_expirations",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("member_id", BigId, nullable=False, index=True),
    Column("points", Points, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_point_expirations_expires_at_member_id", "expires_at", "member_id"),
)

segment_members = Table(
    "segment_members",
    metadata,
    Column("segment", String(100), primary_key=True),
    Column("member_id", BigId, primary_key=True, autoincrement=False),
)

point_movements = Table(
    "point_movements",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("member_id", BigId, nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("kind", String(16), nullable=False, comment="earn, redeem or expire"),
    Column("points", Points, nullable=False, comment="positive; kind says which way"),
    Index("ix_point_movements_member_id_occurred_at", "member_id", "occurred_at"),
    comment="optional: the program's point movements, read by `loyalcast lift`",
)

purchases = Table(
    "purchases",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("member_id", BigId, nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("amount", Points, nullable=False, comment="in the program's currency"),
    Index("ix_purchases_member_id_occurred_at", "member_id", "occurred_at"),
    comment="optional: the program's purchases, read by `loyalcast lift`",
)

SOURCE_TABLES = (members, balances, point_expirations, segment_members, point_movements, purchases)

# --- loyalcast's own tables -----------------------------------------------------------

campaign_runs = Table(
    "campaign_runs",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("campaign", String(100), nullable=False),
    Column("occasion", String(100), nullable=False, comment="fire time or program-local date"),
    Column("as_of", UTCDateTime, nullable=False, comment="the instant the plan was evaluated at"),
    Column("started_at", UTCDateTime, nullable=False),
    Column("started_by", String(100), nullable=False),
    Column("dry_run", Boolean, nullable=False, server_default=text("false")),
    Column("state", String(16), nullable=False, comment="planning, planned, skipped"),
    Column("considered", Integer, nullable=False, server_default="0"),
    Column("finished_planning_at", UTCDateTime, nullable=True),
    Column("note", String(500), nullable=False, server_default="", comment="why skipped, or caught up late"),
    Column("lease_until", UTCDateTime, nullable=True, comment="the planner's lease expires at"),
    UniqueConstraint("campaign", "occasion"),
)

OPEN_STATUSES = ("queued", "sending")
"""A row in one of these statuses is still on its way (``deliveries.is_open``)."""

deliveries = Table(
    "deliveries",
    metadata,
    # On PostgreSQL the table is partitioned by month of created_at (migration 0010):
    # its primary key there is (id, created_at), and every unique index holds created_at.
    Column("id", BigId, primary_key=True),
    # No foreign key to campaign_runs: see migration 0002 (a check per planned row).
    Column("run_id", BigId, nullable=True),
    Column("member_id", BigId, nullable=False),
    Column("channel", String(16), nullable=True, comment="NULL when no channel was reachable"),
    Column("category", String(50), nullable=False),
    Column("template", String(100), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", String(500), nullable=False, server_default=""),
    Column(
        "reason_code",
        String(32),
        nullable=False,
        server_default="legacy",
        comment="closed set: campaigns.store.ledger.ReasonCode",
    ),
    Column("cap_rule", String(200), nullable=True, comment="the cap rule that capped or deferred the row"),
    Column("address", String(320), nullable=True, comment="email, E.164 phone or chat id used"),
    Column("holds_slot", Boolean, nullable=False, server_default=text("false"), comment="counts against frequency caps"),
    Column("send_at", UTCDateTime, nullable=False, comment="when the message is due"),
    Column("deferred_from", UTCDateTime, nullable=True, comment="when it would have been due had a cap not deferred it"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime, nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("provider_message_id", String(200), nullable=True),
    Column("lease_owner", String(100), nullable=True, comment="worker holding the claim"),
    Column("lease_until", UTCDateTime, nullable=True, comment="the claim expires at"),
    Column("claimed_at", UTCDateTime, nullable=True, comment="latest claim by a worker"),
    Column("last_error", String(500), nullable=True, comment="latest failed attempt"),
    Column("idempotency_key", String(200), nullable=True, comment="triggered messages: the caller's key"),
    Column("data", JSON, nullable=True, comment="triggered messages: the caller's template data"),
    # Derived from status, so that no index reads status itself: a claim (queued to
    # sending) and a delivery report (sent to delivered) leave every indexed column as
    # it was and are HOT updates, written in place without new index entries.
    Column(
        "is_open",
        Boolean,
        Computed(f"status IN ({', '.join(repr(s) for s in OPEN_STATUSES)})", persisted=True),
        comment="queued or sending: still on its way",
    ),
    # A run's rows share its created_at (the run's start), so this is (run_id, member_id)
    # unique, and PostgreSQL can enforce it on every partition.
    UniqueConstraint("run_id", "member_id", "created_at"),
    Index(
        "ix_deliveries_idempotency_key",
        "idempotency_key",
        postgresql_where=text("idempotency_key IS NOT NULL"),
        sqlite_where=text("idempotency_key IS NOT NULL"),
    ),
    # The rows still on their way: batches, leases and the reconciler read only these.
    Index(
        "ix_deliveries_open",
        "run_id",
        "send_at",
        postgresql_where=text("is_open"),
        sqlite_where=text("is_open = 1"),  # as SQLAlchemy writes the condition, so SQLite uses it
    ),
    # A member's history (`why`) and cap counts (holds_slot rows in a window): one index.
    # Delivery reports name the provider's id of a message.
    Index(
        "ix_deliveries_provider_message_id",
        "provider_message_id",
        postgresql_where=text("provider_message_id IS NOT NULL"),
        sqlite_where=text("provider_message_id IS NOT NULL"),
    ),
    Index(
        "ix_deliveries_member_caps",
        "member_id",
        "channel",
        "category",
        "send_at",
        postgresql_include=["holds_slot"],
    ),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("channel", String(16), primary_key=True),
    Column("address", String(320), primary_key=True),
    Column("reason", String(500), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

ladder_marks = Table(
    "ladder_marks",
    metadata,
    Column("campaign", String(100), primary_key=True),
    Column("member_id", BigId, primary_key=True, autoincrement=False),
    Column("expires_on", Date, primary_key=True, comment="expiry date on the member's clock"),
    Column("stage", Integer, primary_key=True, comment="days before expiry"),
    # No foreign key: deliveries rows expire with their month (``[ledger] retention``).
    Column("delivery_id", BigId, nullable=False),
    comment="expiring-points reminders already given: at most one per (expiry date, stage)",
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key", String(200), primary_key=True, comment="the caller's idempotency key of a triggered message"),
    Column("delivery_id", BigId, nullable=True, comment="the ledger row the key decided (NULL while deciding)"),
    Column("created_at", UTCDateTime, nullable=False),
    comment="every idempotency key used, unique across the ledger's partitions; kept as long as the ledger",
)

cap_locks = Table(
    "cap_locks",
    metadata,
    Column("member_id", BigId, primary_key=True, autoincrement=False),
    comment="one row per member ever planned; planners lock these rows in member_id order",
)

# --- what comes back (the web service) --------------------------------------------------

preferences = Table(
    "preferences",
    metadata,
    Column("member_id", BigId, primary_key=True, autoincrement=False),
    Column("channel", String(16), primary_key=True, comment="a channel, or * for every channel"),
    Column("category", String(50), primary_key=True, comment="a marketing category, or * for every one"),
    Column("subscribed", Boolean, nullable=False),
    Column("source", String(32), nullable=False, comment="link, one-click, preferences, telegram, complaint"),
    Column("changed_at", UTCDateTime, nullable=False),
    comment="members' own choices; the most specific row for a (channel, category) decides",
)

contacts = Table(
    "contacts",
    metadata,
    Column("member_id", BigId, primary_key=True, autoincrement=False),
    Column("channel", String(16), primary_key=True),
    Column("address", String(320), nullable=False, comment="e.g. the Telegram chat id the member linked"),
    Column("consent", Boolean, nullable=False, comment="marketing consent given with the link"),
    Column("source", String(32), nullable=False),
    Column("linked_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_contacts_channel_address", "channel", "address"),
    comment="addresses loyalcast collected itself; used where the program's members row has none",
)

quota_days = Table(
    "quota_days",
    metadata,
    Column("channel", String(16), primary_key=True),
    Column("day", Date, primary_key=True, comment="the provider's day (its quota_zone's calendar)"),
    Column("used", Integer, nullable=False, comment="messages workers took from the day's quota"),
    Column("updated_at", UTCDateTime, nullable=False),
    comment="providers' daily quotas as used: workers reserve blocks of a day's quota here",
)

conversations = Table(
    "conversations",
    metadata,
    Column("channel", String(16), primary_key=True),
    Column("address", String(320), primary_key=True, comment="the member's address on the channel (E.164 phone)"),
    Column("last_inbound_at", UTCDateTime, nullable=False, comment="when the member last wrote to us"),
    comment="members' own messages on channels with a session window: free text may follow within it",
)

provider_events = Table(
    "provider_events",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("provider", String(32), nullable=False, comment="the channel whose webhook or mailbox received it"),
    Column("event_key", String(200), nullable=False, comment="the provider's id of the event: a retry repeats it"),
    Column("event", String(16), nullable=True, comment="closed set: channels.base.EventKind; NULL: not an outcome"),
    Column("provider_message_id", String(200), nullable=True),
    Column("recipient", String(320), nullable=True),
    Column("reason", String(500), nullable=False, server_default=""),
    Column("occurred_at", UTCDateTime, nullable=True),
    Column("received_at", UTCDateTime, nullable=False),
    Column("delivery_id", BigId, nullable=True, comment="the ledger row it was matched to"),
    Column("applied_at", UTCDateTime, nullable=True, comment="NULL: no ledger row matched yet"),
    Column("raw", Text, nullable=False, comment="the payload as received, for audit"),
    UniqueConstraint("provider", "event_key"),
    Index(
        "ix_provider_events_unmatched",
        "provider_message_id",
        postgresql_where=text("applied_at IS NULL"),
        sqlite_where=text("applied_at IS NULL"),
    ),
    Index("ix_provider_events_received_at", "received_at"),
    comment="delivery reports, bounces and complaints as providers sent them",
)

# --- the console's snapshots ------------------------------------------------------------

run_summaries = Table(
    "run_summaries",
    metadata,
    Column("run_id", BigId, primary_key=True, autoincrement=False),
    Column("computed_at", UTCDateTime, nullable=False),
    Column("body", JSON, nullable=False, comment="counts, sends per hour, top reasons, SMS estimate"),
    comment="the console's snapshot of a run's ledger rows, derived and replaceable (the ledger is the truth)",
)

# --- control groups (campaign holdouts and the global control group) ---------------------

control_draws = Table(
    "control_draws",
    metadata,
    Column("draw", String(200), primary_key=True, comment="campaign:<salt> or global:<salt>:<period>"),
    Column("member_id", BigId, primary_key=True, autoincrement=False),
    Column("stratum", String(200), nullable=False, comment="the member's tier (and extra column) when drawn"),
    Column("held", Boolean, nullable=False, comment="in the control group"),
    Column("drawn_at", UTCDateTime, nullable=False),
    comment="each member's place in a control group, drawn once and kept",
)

control_strata = Table(
    "control_strata",
    metadata,
    Column("draw", String(200), primary_key=True),
    Column("stratum", String(200), primary_key=True),
    Column("members", BigInteger, nullable=False, comment="members drawn in the stratum so far"),
    Column("held", BigInteger, nullable=False, comment="of them, held out"),
    comment="running counts per stratum: the next members drawn keep its held share exact",
)
