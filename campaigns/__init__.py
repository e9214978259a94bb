"""loyalcast's campaign side: configuration, data access, planning, caps, ledger,
rendering and the command line. Channels live in the sibling package ``channels``."""

__version__ = "0.1.0"
