"""Deciding who hears what, on which channel and when: one ledger row per member."""
