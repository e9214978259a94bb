"""The ledger's vocabulary: delivery statuses and what each means.

Every member a campaign considers ends with exactly one row in ``deliveries`` carrying
one of these statuses and a human-readable reason. The set is closed: code that writes
a status takes it from here.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    # on the way
    QUEUED = "queued"          # decided to send, cap slot reserved, waiting for a worker
    SENDING = "sending"        # claimed by a worker; outcome not yet recorded
    # outcomes
    SENT = "sent"              # accepted by the provider (or written to the outbox)
    DELIVERED = "delivered"    # the provider confirmed delivery
    FAILED = "failed"          # gave up; reason carries the last error
    # decisions not to send
    HELD_OUT = "held_out"      # control group
    CAPPED = "capped"          # a frequency cap rule said no; reason names the rule
    NO_CONSENT = "no_consent"  # a contact exists but the member did not consent
    NO_CONTACT = "no_contact"  # no address on any of the campaign's channels
    SUPPRESSED = "suppressed"  # every reachable address is on the suppression list
    DUPLICATE = "duplicate"    # the same idempotency key was already used
    STALE = "stale"            # the reminder was no longer true at send time

