"""The render budget: how long one template may run and how much it may write.

A template is code a marketer wrote. Without a budget, ``{% for i in range(100000) %}``
nested twice hangs a worker, ``'x' * 10**8`` writes 100 MB and a macro calling itself
overflows the stack. :class:`Watchdog` enforces the time: a rendering thread arms it
with a deadline, and past that deadline the watchdog raises :class:`RenderTimeout` in
the thread (Dramatiq's own time limits use the same CPython mechanism, an asynchronous
exception, which interrupts any Python code but not a single long C call; the size
checks in ``rendering`` keep those short).
"""

from __future__ import annotations

import ctypes
import itertools
import threading
import time

from dramatiq.middleware.threading import raise_thread_exception


class RenderTimeout(BaseException):
    """Raised inside a rendering thread whose deadline passed. A BaseException, like
    Dramatiq's interrupts, so that no ``except Exception`` in a template's call chain
    swallows it."""


class Watchdog:
    """Interrupts renders that outlive their deadline. Thread-safe; one per process.

    ``arm`` before rendering, ``disarm`` after (in ``finally``); ``disarm`` says whether
    the deadline passed, and then makes sure no interrupt is left pending for the
    thread's next statement.
    """

    POLL_S = 0.1
    """Longest sleep while renders are armed (a deadline is enforced within this)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, int]] = {}  # token -> (deadline, thread id)
        self._fired: set[int] = set()
        self._tokens = itertools.count(1)
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> int:
        """Start the clock for the calling thread; return the token for ``disarm``."""
        token = next(self._tokens)
        with self._cond:
            self._armed[token] = (time.monotonic() + seconds, threading.get_ident())
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._watch, name="loyalcast-render-watchdog", daemon=True)
                self._thread.start()
            elif len(self._armed) == 1:
                self._cond.notify()
        return token

    def disarm(self, token: int) -> bool:
        """Stop the clock; True when the deadline had passed (an interrupt was raised)."""
        with self._cond:
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
            with self._cond:
                now = time.monotonic()
                for token, (deadline, thread_id) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[token]
                        self._fired.add(token)
                        raise_thread_exception(thread_id, RenderTimeout)  # type: ignore[no-untyped-call]
                if self._armed:
                    earliest = min(deadline for deadline, _ in self._armed.values())
                    self._cond.wait(min(max(earliest - now, 0.001), self.POLL_S))
                else:
                    self._cond.wait()


WATCHDOG = Watchdog()
"""The process's watchdog (its thread starts with the first render)."""
