"""The ``loyalcast`` command line, one module per group of commands.

Exit codes: 0 success; 1 a command failed (unknown campaign, unknown run, failed
delivery run); 2 the settings are invalid (one line per problem on stderr, no traceback).
"""

from __future__ import annotations

import sys

from campaigns.app.cli import campaigns, ledger, operations  # noqa: F401  # they register their commands
from campaigns.app.cli.common import app
from campaigns.errors import ConfigError, LoyalcastError

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point: turns loyalcast's errors into messages and exit codes."""
    try:
        app()
    except ConfigError as exc:
        # Plain writes: one problem per line, never wrapped to the terminal's width.
        for problem in exc.problems:
            print(f"{exc.source}: {problem}" if exc.source else problem, file=sys.stderr)
        raise SystemExit(2) from None
    except LoyalcastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
