"""Choosing the CPU thread count of the training loop while it runs."""

from __future__ import annotations

import math

__all__ = ["ThreadTuner"]


class ThreadTuner:
    """Picks the CPU thread count that gives the fastest steps, and re-checks it.

    On a machine shared with other jobs, two threads can be several times
    *slower* than one (threads wait for each other whenever one of them is
    descheduled); on an idle machine they are faster.  So the tuner times a few
    steps with each candidate count, keeps the fastest, and probes again after
    ``hold_s`` seconds of steps, or at once when the last ``window`` steps got
    ``slack``× slower than the probe measured (the load changed).  (Thread counts
    may change float rounding; give ``run.threads`` for bit-reproducible runs.)
    """

    def __init__(self, candidates, probe: int = 4, hold_s: float = 60.0, window: int = 5, slack: float = 1.6):
        self.candidates = sorted(set(int(c) for c in candidates if c >= 1))
        self.probe, self.hold_s, self.window, self.slack = probe, hold_s, window, slack
        self.best = self.candidates[-1]
        self.best_time = math.inf
        self._start_probe()

    def _start_probe(self):
        self.times: dict[int, list[float]] = {c: [] for c in self.candidates}
        self.queue = [c for c in self.candidates for _ in range(self.probe + 1)]
        self.recent: list[float] = []
        self.held = 0.0

    def next_threads(self) -> int:
        return self.queue[0] if self.queue else self.best

    def record(self, threads: int, seconds: float) -> None:
        if self.queue:
            self.times[self.queue.pop(0)].append(seconds)  # the first of each block is a warm-up
            if not self.queue:
                med = {c: sorted(t[1:])[len(t[1:]) // 2] for c, t in self.times.items() if len(t) > 1}
                self.best = min(med, key=med.get)
                self.best_time = med[self.best]
            return
        self.held += seconds
        self.recent = (self.recent + [seconds])[-self.window:]
        slow = len(self.recent) == self.window and sorted(self.recent)[self.window // 2] > self.slack * self.best_time
        if len(self.candidates) > 1 and (self.held >= self.hold_s or slow):
            self._start_probe()
