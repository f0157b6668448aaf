"""Errors raised for bad user input.

Every user-facing problem (missing file, wrong format, NaN volume, impossible
geometry, ...) raises :class:`InputError` with a one-line message naming the
problem.  It subclasses :class:`ValueError` so generic handlers still work.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input given by the user (file, value, shape, geometry)."""
