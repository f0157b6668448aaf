"""Progress display: a tqdm bar on a terminal, a plain line every few seconds otherwise.

A progress bar redraws itself with carriage returns several times a second:
on a terminal that is what one wants, in a log file (``xraypose demo > log``)
it is thousands of updates.  :func:`progress` gives a tqdm bar when its stream
is a terminal and a :class:`LineProgress` otherwise, which writes one plain
line (``epoch 3: 45/100 steps (45 %), 12 s, 3.8 steps/s; loss=0.41``) at most
every ``every_s`` seconds, and one when it closes (``leave``).  Both offer the
part of tqdm's interface the package uses: iteration, ``update``,
``set_postfix`` and ``close``.
"""

from __future__ import annotations

import sys
import time

__all__ = ["progress", "LineProgress", "LINE_EVERY_S"]

#: Seconds between two lines of a :class:`LineProgress` (all of them together).
LINE_EVERY_S = 10.0


class LineProgress:
    """tqdm's small interface, writing a plain line at most every ``every_s`` seconds (see the module)."""

    _last_line_t = -float("inf")  # shared by all instances: one line per interval in all

    def __init__(self, iterable=None, total=None, desc: str = "", unit: str = "it", leave: bool = True,
                 file=None, every_s: float = LINE_EVERY_S, disable: bool = False):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit, self.leave = total, desc, unit, leave
        self.file = file if file is not None else sys.stderr
        self.every_s, self.disable = float(every_s), disable
        self.n, self.postfix = 0, {}
        self.t0 = time.perf_counter()
        self._printed_n = 0
        self.closed = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self):
        return self.total or 0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if not self.disable and now - LineProgress._last_line_t >= self.every_s:
            self._line(now)

    def set_postfix(self, postfix=None, refresh: bool = True, **kwargs) -> None:
        self.postfix = {**(postfix or {}), **kwargs}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.disable and self.leave and self.n > self._printed_n:
            self._line(time.perf_counter())

    def _line(self, now: float) -> None:
        LineProgress._last_line_t = now
        self._printed_n = self.n
        dt = now - self.t0
        head = f"{self.desc}: " if self.desc else ""
        count = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        pct = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        rate = f", {self.n / dt:.3g} {self.unit}/s" if dt > 0 and self.n else ""
        post = "; " + ", ".join(f"{k}={v}" for k, v in self.postfix.items()) if self.postfix else ""
        print(f"{head}{count}{pct}, {dt:.0f} s{rate}{post}", file=self.file, flush=True)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress(iterable=None, *, total=None, desc: str = "", unit: str = "it", leave: bool = True,
             disable: bool = False, file=None, **tqdm_kwargs):
    """A progress display over ``iterable`` (or updated by hand): tqdm on a terminal, lines otherwise.

    Args:
        iterable, total, desc, unit, leave, disable: as tqdm's.
        file: the stream (default ``sys.stderr``).
        tqdm_kwargs: more tqdm options (a terminal only).
    """
    file = file if file is not None else sys.stderr
    if _is_terminal(file):
        try:
            from tqdm import tqdm

            return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=disable, file=file,
                        **tqdm_kwargs)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            pass
    return LineProgress(iterable, total=total, desc=desc, unit=unit, leave=leave, file=file, disable=disable)
