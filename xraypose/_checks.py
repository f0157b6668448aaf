"""Guards shared across xraypose (internal).

The configuration guards each raise :class:`xraypose.errors.InputError` with one line that names
the setting, the value and what it must be: ``config: optim.lr = -1.0 must be a finite number in (0, 1.0]``.
The training configuration's sections (:mod:`xraypose.train.config`), :class:`xraypose.augment.AugmentConfig`,
:class:`xraypose.register.RegistrationConfig` and its :class:`~xraypose.register.Level` check their fields
with them, beside the fields; :func:`finite_float` reads one number of an
argument (not a text or a bool).  :func:`one_line` quotes another library's exception in such a message; :func:`is_numeric_dtype` is the test every array reader makes.
"""

from __future__ import annotations

import math
import numbers
from typing import NoReturn

import numpy as np

from xraypose.errors import InputError

__all__ = ["config_error", "check_number", "check_vector", "check_choice", "check_flag", "check_instance", "finite_float", "one_line",
           "is_numeric_dtype", "check_not_meta"]


def config_error(name: str, value, why: str, prefix: str = "config: ") -> NoReturn:
    """Raise ``InputError("config: NAME = VALUE WHY")`` (``prefix`` in place of ``config: ``: ``""`` for a
    function's argument)."""
    raise InputError(f"{prefix}{name} = {value!r} {why}")


def check_number(name: str, v, lo=None, hi=None, lo_open: bool = False, integer: bool = False,
                 allow_none: bool = False, hi_open: bool = False, prefix: str = "config: ") -> None:
    """A finite number (not a bool or a text; NumPy's numbers too) in ``[lo, hi]`` (``(lo, …`` with ``lo_open``,
    ``…, hi)`` with ``hi_open``); a whole one with ``integer``; None passes with ``allow_none``.  The message states
    the whole expectation: ``config: mix_alpha = nan must be a finite number in [0, 1]`` (``prefix=""`` for a
    function's argument: ``step = '1' must be None or a finite number > 0``)."""
    if v is None and allow_none:
        return
    ok = (isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
          and (isinstance(v, numbers.Integral) or math.isfinite(v))
          and (not integer or isinstance(v, numbers.Integral) or float(v).is_integer())
          and (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi)))
    if not ok:
        expect = "a whole number" if integer else "a finite number"
        if lo is not None and hi is not None:
            expect += f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        elif lo is not None:
            expect += f" {'>' if lo_open else '>='} {lo}"
        elif hi is not None:
            expect += f" {'<' if hi_open else '<='} {hi}"
        config_error(name, v, "must be " + ("None or " if allow_none else "") + expect, prefix)


def check_vector(name: str, v, n: int = 3, lo=None) -> None:
    """A list or tuple of ``n`` finite numbers, each ``>= lo`` when ``lo`` is given."""
    if not isinstance(v, (list, tuple)) or len(v) != n:
        config_error(name, v, f"must be a list of {n} numbers")
    for x in v:
        check_number(name, x, lo=lo)


def check_choice(name: str, v, options) -> None:
    """One of ``options``."""
    if v not in options:
        config_error(name, v, f"is not one of: {', '.join(map(str, options))}")


def check_flag(name: str, v, prefix: str = "config: ") -> bool:
    """``v`` as a bool: True or False (NumPy's too); anything else — a text 'no', a 1, None, which Python
    would take as true or false — is refused (``config: NAME = 'no' must be true or false``; ``prefix`` as
    :func:`config_error`'s)."""
    if not isinstance(v, (bool, np.bool_)):
        config_error(name, v, "must be true or false", prefix)
    return bool(v)


def check_instance(name: str, v, cls: type, hint: str = "") -> None:
    """``v`` an instance of xraypose's ``cls`` (a Camera, a Volume): else ``NAME must be an xraypose CLS{hint},
    got TYPE`` — an array for a volume or None for a camera would fail deep inside with an AttributeError."""
    if not isinstance(v, cls):
        raise InputError(f"{name} must be an xraypose {cls.__name__}{hint}, got {type(v).__name__}")


def finite_float(value, what: str, kind: str = "a number") -> float:
    """``float(value)`` of a function's argument; :class:`InputError` naming ``what`` when it is no number
    (``what must be KIND, got …``) or not finite (``what must be finite, got nan``).  A text (``'2'``,
    which ``float`` would read) and a bool (``float(True)`` is 1.0) are no numbers here: every caller takes
    a Python argument (a Camera's principal-point offset, the physical density's μ, an appearance family's
    parameter); where a Camera is built from a file (a sidecar, rig.json, a checkpoint's meta) its values
    are JSON numbers, those a user writes checked by :mod:`xraypose.schema` first.  NumPy's and torch's
    scalars are numbers."""
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise InputError(f"{what} must be {kind}, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be {kind}, got {value!r}") from None
    if not math.isfinite(v):
        raise InputError(f"{what} must be finite, got {v!r}")
    return v


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's text on one line (white space folded), at most ``limit`` characters; its type's name
    when it has no text — for messages that quote what a library raised."""
    text = " ".join(str(e).split())
    return text[:limit] or type(e).__name__


def is_numeric_dtype(dtype) -> bool:
    """Whether a NumPy dtype holds plain numbers (integers, floats, complex or bool) — not objects, text or
    records."""
    dtype = np.dtype(dtype)
    return not dtype.hasobject and (np.issubdtype(dtype, np.number) or dtype == bool)


def check_not_meta(name: str, t) -> None:
    """Refuse a tensor on PyTorch's ``meta`` device (a shape without values), where an argument enters the API (a
    volume, an image, a pose): torch's own ``Tensor.item() cannot be called on meta tensors`` came from deep inside.
    Anything else passes (an array, a list, a tensor on any device that holds values)."""
    if getattr(t, "is_meta", False):
        raise InputError(f"{name} is a tensor on PyTorch's 'meta' device (a shape without values): "
                         "give one that holds values (e.g. on 'cpu')")
