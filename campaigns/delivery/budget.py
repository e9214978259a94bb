"""The render budget: how long one template may run and how much it may write.

A template is code a marketer wrote. Without a budget, ``{% for i in range(100000) %}``
nested twice hangs a worker, ``'x' * 10**8`` writes 100 MB and a macro calling itself
overflows the stack. :class:`Watchdog` enforces the time: a rendering thread arms it
with a deadline, and past that deadline the watchdog raises :class:`RenderTimeout` in
the thread (Dramatiq's own time limits use the same CPython mechanism, an asynchronous
exception, which interrupts any Python code but not a single long C call).
:class:`BudgetedSandbox` enforces the size, and keeps those C calls short: it refuses to
build a string longer than ``max_output`` before building it.
"""

from __future__ import annotations

import ctypes
import itertools
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from dramatiq.middleware.threading import raise_thread_exception
from jinja2 import pass_context
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from campaigns.errors import RenderBudgetExceeded


class RenderTimeout(BaseException):
    """Raised inside a rendering thread whose deadline passed. A BaseException, like
    Dramatiq's interrupts, so that no ``except Exception`` in a template's call chain
    swallows it."""


class Watchdog:
    """Interrupts renders that outlive their deadline. Thread-safe; one per process.

    ``arm`` before rendering, ``disarm`` after (in ``finally``); ``disarm`` says whether
    the deadline passed, and then makes sure no interrupt is left pending for the
    thread's next statement.

    The watchdog's thread looks at the armed renders every :attr:`POLL_S` (sooner when a
    deadline is nearer) and is never woken by ``arm``: waking it for each render (a
    condition notified whenever the first of a batch's renders was armed) cost a thread
    switch per message, 17% of a worker's time with the null transport
    (``bench/results/profiles/null-5-issue18-null.txt``).
    """

    POLL_S = 0.1
    """Longest sleep between two looks at the armed renders (a deadline is enforced within this)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[int, tuple[float, int]] = {}  # token -> (deadline, thread id)
        self._fired: set[int] = set()
        self._tokens = itertools.count(1)
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> int:
        """Start the clock for the calling thread; return the token for ``disarm``."""
        token = next(self._tokens)
        with self._lock:
            self._armed[token] = (time.monotonic() + seconds, threading.get_ident())
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._watch, name="loyalcast-render-watchdog", daemon=True)
                self._thread.start()
        return token

    def disarm(self, token: int) -> bool:
        """Stop the clock; True when the deadline had passed (an interrupt was raised)."""
        with self._lock:
            self._armed.pop(token, None)
            if token not in self._fired:
                return False
            self._fired.discard(token)
            # The interrupt may still be pending (not yet delivered): clear it, so it
            # cannot hit whatever this thread runs next.
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(threading.get_ident()), ctypes.c_long(0))
            return True

    def _watch(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                for token, (deadline, thread_id) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[token]
                        self._fired.add(token)
                        raise_thread_exception(thread_id, RenderTimeout)  # type: ignore[no-untyped-call]
                earliest = min((deadline for deadline, _ in self._armed.values()), default=now + self.POLL_S)
            time.sleep(min(max(earliest - now, 0.001), self.POLL_S))


WATCHDOG = Watchdog()
"""The process's watchdog (its thread starts with the first render)."""


class BudgetedSandbox(SandboxedEnvironment):
    """Jinja's sandbox, refusing to build a string (or list) longer than ``max_output``
    before it is built: the operators and filters that can multiply a size."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, max_output: int, **options: Any) -> None:
        super().__init__(**options)
        self.max_output = max_output

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, str | list | tuple) and isinstance(times, int):
                    self._check_size(len(sequence) * max(times, 0), "'*'")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
                if right * abs(left).bit_length() > 4096:
                    raise RenderBudgetExceeded(f"{left} ** {right} is too big a number")
        elif operator == "%" and isinstance(left, str):
            self._check_widths(left)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``'{:>99999999}'.format(x)``: check the widths before Jinja's safe formatter runs."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        owner = getattr(value, "__self__", "")
        self._check_widths(str(owner))
        return wrapped

    def guard_filters(self) -> None:
        """Wrap the built-in filters whose output size is an argument."""
        center, indent, replace, format_ = (self.filters[name] for name in ("center", "indent", "replace", "format"))

        def guarded_center(value: Any, width: int = 80) -> Any:
            self._check_size(width, "center")
            return center(value, width)

        def guarded_indent(value: Any, width: int | str = 4, *args: Any, **kwargs: Any) -> Any:
            self._check_size(
                len(str(value)) + (len(width) if isinstance(width, str) else width) * (str(value).count("\n") + 1), "indent"
            )
            return indent(value, width, *args, **kwargs)

        @pass_context
        def guarded_replace(context: Context, value: Any, old: str, new: str, count: int | None = None) -> Any:
            text = str(value)
            occurrences = text.count(old) if old else len(text) + 1
            if count is not None:
                occurrences = min(occurrences, max(count, 0))
            self._check_size(len(text) + occurrences * max(len(new) - len(old), 0), "replace")
            return replace(context.eval_ctx, value, old, new, count)

        def guarded_format(value: str, *args: Any, **kwargs: Any) -> str:
            self._check_widths(value)
            return str(format_(value, *args, **kwargs))

        self.filters.update(center=guarded_center, indent=guarded_indent, replace=guarded_replace, format=guarded_format)

    def _check_size(self, size: int, what: str) -> None:
        if size > self.max_output:
            raise RenderBudgetExceeded(f"{what} would make {size:,} characters (rendering.max_output is {self.max_output:,})")

    def _check_widths(self, fmt: str) -> None:
        for width in _WIDTHS.findall(fmt):
            self._check_size(int(width), "a format width")


_WIDTHS = re.compile(r"(\d{4,})")
"""Numbers of four digits or more in a format string: the widths that could be huge."""
