"""Sending decided ledger rows: claim, build the message, render, send, record."""
