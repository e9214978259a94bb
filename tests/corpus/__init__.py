"""Corpora of bad input kept in the suite (issue 14): broken settings files, hostile
templates, corrupted member rows. Each case states the exact line a user reads."""
