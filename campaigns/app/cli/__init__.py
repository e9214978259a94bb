"""The ``loyalcast`` command line, one module per group of commands.

Exit codes: 0 success; 1 a command failed (unknown campaign, unknown run, a run that
delivered nothing, a preview that rendered nothing); 2 the settings are invalid, or a
service they name (database, broker) cannot be reached: one line per problem on
stderr, naming the key, no traceback.
"""

from __future__ import annotations

import sys

from campaigns.app import runtime
from campaigns.app.cli import campaigns, effect, inbound, ledger, operations  # noqa: F401  # they register their commands
from campaigns.app.cli.common import app
from campaigns.app.outages import UNREACHABLE, unreachable
from campaigns.errors import ConfigError, LoyalcastError, ServiceUnavailable

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
    except ServiceUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except UNREACHABLE as exc:
        configured = runtime.current()
        if configured is None:
            raise
        print(f"error: {unreachable(exc, configured.settings)}", file=sys.stderr)
        raise SystemExit(2) from None
    except LoyalcastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
