"""The errors xraypose raises on purpose, each with a one-line message naming the problem.

* :class:`XrayposeError` — the common base: ``except XrayposeError`` catches every one of them (the
  command line prints its message on one line and exits with status 2).
* :class:`InputError` — bad input given by the user: a missing file, a wrong format, a NaN volume,
  impossible geometry, a value out of range.  It subclasses :class:`ValueError` too, so generic
  handlers still work.
* :class:`RunError` — a run that failed for a reason other than its input (a :class:`RuntimeError`
  too): :class:`xraypose.train.TrainingDiverged`.
* :class:`xraypose.io.OutputError` — an output that cannot be written (a read-only folder, a full disk);
  an :class:`OSError` too.
"""

from __future__ import annotations

__all__ = ["XrayposeError", "InputError", "RunError"]


class XrayposeError(Exception):
    """Base of the errors xraypose raises on purpose; the message is one line."""


class InputError(XrayposeError, ValueError):
    """Bad input given by the user (file, value, shape, geometry)."""


class RunError(XrayposeError, RuntimeError):
    """A run failed for a reason that is not bad input (e.g. training diverged)."""
