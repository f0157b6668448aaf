"""Ctrl-C as a request to stop at the next safe point, keeping what is done.

A long command (tracking a sequence: minutes to hours) interrupted where the interpreter happens to be
loses everything computed so far.  :func:`stop_requests` turns the first SIGINT into a flag the work
checks at its own boundaries (a frame's end); a second SIGINT raises :class:`KeyboardInterrupt` at
once, as before.  Outside the main thread (signal handlers cannot be set there) it is a no-op flag.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import dataclass

__all__ = ["StopRequest", "stop_requests"]


@dataclass
class StopRequest:
    """``requested``: True once Ctrl-C was pressed (the work stops at its next boundary)."""

    requested: bool = False


@contextlib.contextmanager
def stop_requests():
    """Within the block, the first SIGINT sets the yielded :class:`StopRequest`'s ``requested``; a second
    one restores the handler before it and raises KeyboardInterrupt.  The handler before it is put back
    on leaving."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    before = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if stop.requested:  # the second Ctrl-C: at once
            signal.signal(signal.SIGINT, before)
            raise KeyboardInterrupt
        stop.requested = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, before)
