"""The user's JSON files, read and checked against small schemas: one reader, one checker, one message style.

Every JSON file xraypose reads (an X-ray's sidecar, a case folder's
``case.json`` and ``poses.json``, pose files, fiducials) goes through
:func:`read_json` and :func:`check`, so every problem is the same kind of
one-line :class:`~xraypose.errors.InputError` naming the file, the key, what
was expected and the value found::

    case/case.json: key 'isocenter' must be 3 numbers in [-1e+06, 1e+06] (world RAS mm), got a list [1, 2]
    xray.json: key 'reverse_x_axis' must be true or false, got the text 'false'
    xray.json: unknown key 'sdd' (known keys: delx_mm, dely_mm, height, ...)

A schema is a tree of small specs (:class:`Number`, :class:`Bool`,
:class:`Text`, :class:`Vector`, :class:`Matrix4`, :class:`Object`,
:class:`MapOf`, :class:`OneOf`).  The named quantities (:data:`SDD_MM`,
:data:`PIXEL_MM`, ...) are shared with the command-line options
(:mod:`xraypose.cli.options`), so a value means the same, and has the same
range, whether it comes from a file or from an option.

Numbers are refused when they are booleans (JSON ``true`` is not 1), NaN or
infinite (Python's JSON reader accepts ``NaN`` and ``Infinity``), or out of
their range; a key given twice in one object is refused (JSON readers
silently keep the last one).  (A JSON-Schema library would validate the
structure but gives neither these messages nor these numeric rules; the
specs here are a few dozen lines.)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from xraypose.errors import InputError
from xraypose.io import read_input_bytes

__all__ = ["read_json", "check", "read_checked", "shown", "Number", "Integer", "Bool", "Text", "Vector", "Matrix4",
           "Matrix", "Object", "MapOf", "OneOf", "SIDECAR", "CASE_JSON", "POSES_JSON", "POSE_FILE", "FIDUCIALS_JSON",
           "SDD_MM", "SOD_MM", "PIXEL_MM", "OFFSET_MM", "PRIMARY_DEG", "SECONDARY_DEG", "POSITION_MM", "PIXELS",
           "MAX_POSITION_MM"]

#: Largest coordinate accepted anywhere (mm): 1 km.  Beyond it a value is a typo, and sums of
#: such values overflow float32.
MAX_POSITION_MM = 1e6


# --------------------------------------------------------------------------
# Showing values
# --------------------------------------------------------------------------


def shown(v, limit: int = 60) -> str:
    """A value as the user wrote it (JSON spelling), with its kind for text and containers."""
    if isinstance(v, str):
        text = f"the text {v!r}"
    elif isinstance(v, bool) or v is None:
        text = json.dumps(v)
    elif isinstance(v, float):
        text = "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity") if math.isinf(v) else f"{v:g}"
    elif isinstance(v, (list, tuple)):
        text = "a list " + _dumps(v)
    elif isinstance(v, dict):
        text = "an object " + _dumps(v)
    else:
        text = str(v)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _dumps(v) -> str:
    try:
        return json.dumps(v)
    except (TypeError, ValueError):
        return str(v)


class _Bad(Exception):
    """A spec's complaint: ``path`` (keys / list indices inside the document) and the text after it."""

    def __init__(self, path: tuple, text: str, unknown: bool = False) -> None:
        super().__init__(text)
        self.path, self.text, self.unknown = path, text, unknown


def _key(path: tuple) -> str:
    """'xrays/a.npy/sdd', 'fiducials[2]', '[2]'."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f"/{p}" if out else str(p))
    return out


def _message(where, e: _Bad) -> str:
    if e.unknown:
        return f"{where}: unknown key {_key(e.path)!r} {e.text}"
    if not e.path:
        return f"{where}: the file {e.text}"
    if all(isinstance(p, int) for p in e.path):
        return f"{where}: entry {_key(e.path)} {e.text}"
    return f"{where}: key {_key(e.path)!r} {e.text}"


# --------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    """A finite number (not a boolean) in ``[lo, hi]`` (``lo_open``: ``> lo``); ``integer``: whole."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    integer: bool = False
    unit: str = ""
    name: str = ""  # what the number is (for messages about command-line options)

    kinds = ("number",)

    def _num(self, x: float) -> str:
        return str(int(x)) if self.integer else f"{x:g}"

    @property
    def expected(self) -> str:
        what = "a whole number" if self.integer else "a number"
        lo = None if self.lo is None else f"{'>' if self.lo_open else '>='} {self._num(self.lo)}"
        hi = None if self.hi is None else f"<= {self._num(self.hi)}"
        rng = " and ".join(x for x in (lo, hi) if x)
        if self.lo is not None and self.hi is not None and not self.lo_open:
            rng = f"in [{self._num(self.lo)}, {self._num(self.hi)}]"
        return " ".join(x for x in (what, rng, self.unit) if x)

    def problem(self, v) -> str | None:
        """None when ``v`` fits, else what is wrong (for a message ending in ``got …``)."""
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"must be {self.expected}"
        if not math.isfinite(v):
            return f"must be finite ({self.expected})"
        if self.integer and not float(v).is_integer():
            return f"must be {self.expected}"
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return f"must be {self.expected}"
        if self.hi is not None and v > self.hi:
            return f"must be {self.expected}"
        return None

    def validate(self, v, path: tuple):
        p = self.problem(v)
        if p:
            raise _Bad(path, f"{p}, got {shown(v)}")
        return int(v) if self.integer else float(v)


def Integer(lo: float | None = None, hi: float | None = None, unit: str = "", name: str = "") -> Number:
    """A whole :class:`Number`."""
    return Number(lo=lo, hi=hi, integer=True, unit=unit, name=name)


@dataclass(frozen=True)
class Bool:
    kinds = ("bool",)
    expected = "true or false"

    def validate(self, v, path: tuple):
        if not isinstance(v, bool):
            hint = " (without quotes)" if isinstance(v, str) and v.strip().lower() in ("true", "false") else ""
            raise _Bad(path, f"must be true or false{hint}, got {shown(v)}")
        return v


@dataclass(frozen=True)
class Text:
    """A string, optionally one of ``choices``."""

    choices: tuple = ()
    kinds = ("text",)

    @property
    def expected(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices) if self.choices else "text"

    def validate(self, v, path: tuple):
        if not isinstance(v, str) or (self.choices and v not in self.choices):
            raise _Bad(path, f"must be {self.expected}, got {shown(v)}")
        return v


def _numbers(v, n: int | None, path: tuple, what: str, item: Number) -> list:
    if not isinstance(v, list) or (n is not None and len(v) != n):
        raise _Bad(path, f"must be {what}, got {shown(v)}")
    out = []
    for i, x in enumerate(v):
        p = item.problem(x)
        if p:
            raise _Bad(path, f"must be {what}; its entry {i} {p}, got {shown(x)}")
        out.append(float(x))
    return out


@dataclass(frozen=True)
class Vector:
    """A list of ``n`` numbers, each fitting ``item``."""

    n: int = 3
    item: Number = Number(-MAX_POSITION_MM, MAX_POSITION_MM)
    unit: str = ""
    kinds = ("list",)

    @property
    def expected(self) -> str:
        rng = "" if self.item.lo is None or self.item.hi is None else f" in [{self.item.lo:g}, {self.item.hi:g}]"
        return f"{self.n} numbers{rng}" + (f" ({self.unit})" if self.unit else "")

    def validate(self, v, path: tuple):
        return _numbers(v, self.n, path, self.expected, self.item)


@dataclass(frozen=True)
class Matrix:
    """A ``rows × cols`` matrix of finite numbers (a list of rows)."""

    rows: int = 3
    cols: int = 3
    item: Number = Number(-MAX_POSITION_MM, MAX_POSITION_MM)
    kinds = ("list",)

    @property
    def expected(self) -> str:
        return f"a {self.rows}×{self.cols} matrix of numbers (a list of {self.rows} rows of {self.cols})"

    def validate(self, v, path: tuple):
        if not isinstance(v, list) or len(v) != self.rows or not all(isinstance(r, list) for r in v) \
                or any(len(r) != self.cols for r in v):
            raise _Bad(path, f"must be {self.expected}, got {shown(v)}")
        out = []
        for i, row in enumerate(v):
            for j, x in enumerate(row):
                p = self.item.problem(x)
                if p:
                    raise _Bad(path, f"entry [{i}][{j}] {p}, got {shown(x)}")
            out.append([float(x) for x in row])
        return out


@dataclass(frozen=True)
class Matrix4(Matrix):
    """A rigid 4×4 transform: finite entries (translation within :data:`MAX_POSITION_MM`), last row
    [0, 0, 0, 1], orthonormal rotation (within ``tol``) without reflection."""

    rows: int = 4
    cols: int = 4
    tol: float = 1e-3

    def validate(self, v, path: tuple):
        rows = Matrix.validate(self, v, path)
        import torch

        from xraypose.geometry import check_rigid

        try:
            check_rigid(torch.tensor(rows, dtype=torch.float64), atol=self.tol)
        except InputError as e:
            raise _Bad(path, f"is {e}") from None
        return rows


class _ObjectSpec:
    """What the specs of a JSON object share: ``kinds``, ``expected`` (their ``what``) and the
    refusal of a value that is not an object."""

    kinds = ("object",)
    what: str

    @property
    def expected(self) -> str:
        return self.what

    def _check_object(self, v, path: tuple) -> None:
        if not isinstance(v, dict):
            raise _Bad(path, f"must be {self.what}, got {shown(v)}")


@dataclass(frozen=True)
class Object(_ObjectSpec):
    """A JSON object with the given ``fields`` ({key: spec}); ``required`` keys must be there;
    unknown keys are errors unless ``open``."""

    fields: dict = field(default_factory=dict)
    required: tuple = ()
    open: bool = False
    what: str = "an object"

    def validate(self, v, path: tuple):
        self._check_object(v, path)
        for k in self.required:
            if k not in v:
                raise _Bad(path, f"lacks the key {k!r}" if path else f"lacks the key {k!r}")
        out = {}
        for k, x in v.items():
            spec = self.fields.get(k)
            if spec is None:
                if self.open:
                    out[k] = x
                    continue
                known = ", ".join(sorted(self.fields)) or "none"
                raise _Bad(path + (k,), f"(known keys: {known})", unknown=True)
            out[k] = spec.validate(x, path + (k,))
        return out


@dataclass(frozen=True)
class MapOf(_ObjectSpec):
    """An object whose keys are free (names), each value fitting ``value``."""

    value: object
    what: str = "an object {name: value}"

    def validate(self, v, path: tuple):
        self._check_object(v, path)
        return {k: self.value.validate(x, path + (k,)) for k, x in v.items()}


@dataclass(frozen=True)
class OneOf:
    """The first of ``specs`` made for the value's JSON kind (number, text, bool, list, object)."""

    specs: tuple

    @property
    def expected(self) -> str:
        return " or ".join(s.expected for s in self.specs)

    def validate(self, v, path: tuple):
        kind = ("bool" if isinstance(v, bool) else "number" if isinstance(v, (int, float)) else
                "text" if isinstance(v, str) else "list" if isinstance(v, list) else
                "object" if isinstance(v, dict) else "null")
        for s in self.specs:
            if kind in s.kinds:
                return s.validate(v, path)
        raise _Bad(path, f"must be {self.expected}, got {shown(v)}")


# --------------------------------------------------------------------------
# Reading and checking
# --------------------------------------------------------------------------


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _Bad((k,), "is given twice in one object (which value is meant?)")
        out[k] = v
    return out


def read_json(path, what: str = "JSON file"):
    """The document in a JSON file.

    Raises :class:`InputError` (naming ``path``) when it is missing, a folder,
    unreadable, not UTF-8 text, not valid JSON, or repeats a key.
    """
    p = Path(path).expanduser()
    raw = read_input_bytes(p, what, "a JSON file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not UTF-8 text (byte 0x{raw[e.start]:02x} at position {e.start}); "
                         "save the file as UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise InputError(f"{p}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except _Bad as e:
        raise InputError(_message(p, e)) from None
    except RecursionError:
        raise InputError(f"{p}: not valid JSON (nested too deeply)") from None


def check(doc, spec, where) -> object:
    """``doc`` checked against ``spec``; the checked value (numbers as float / int).

    Raises :class:`InputError` ``"{where}: key 'a/b' must be …, got …"``.
    """
    try:
        return spec.validate(doc, ())
    except _Bad as e:
        raise InputError(_message(where, e)) from None


def read_checked(path, spec, what: str = "JSON file"):
    """:func:`read_json` then :func:`check` (``where`` = the path)."""
    return check(read_json(path, what), spec, Path(path).expanduser())


# --------------------------------------------------------------------------
# Quantities (shared with the command-line options) and the files' schemas
# --------------------------------------------------------------------------

#: Source-to-detector / source-to-isocenter distances, mm.
SDD_MM = Number(lo=0, lo_open=True, hi=1e5, unit="mm", name="source-to-detector distance")
SOD_MM = Number(lo=0, lo_open=True, hi=1e5, unit="mm", name="source-to-isocenter distance")
#: Detector pixel spacing, mm: at least 1 µm (no X-ray detector's pixels are finer: a few µm at the finest; below
#: it a spacing in metres, 0.0002 for 0.2 mm, or a training config's ``camera.delx = 1e-300``, whose rays all
#: crossed one point and refused as "the DRR of the isocenter view is constant"), at most 1 m.
PIXEL_MM = Number(lo=1e-3, hi=1e3, unit="mm", name="pixel spacing")
#: Principal-point offsets on the detector, mm.
OFFSET_MM = Number(lo=-1e5, hi=1e5, unit="mm", name="principal-point offset")
#: C-arm angles, degrees: primary LAO+/RAO−, secondary CRAN+/CAUD−.
PRIMARY_DEG = Number(lo=-180, hi=180, unit="degrees", name="primary angle")
SECONDARY_DEG = Number(lo=-90, hi=90, unit="degrees", name="secondary angle")
#: A world coordinate, mm.
POSITION_MM = Number(lo=-MAX_POSITION_MM, hi=MAX_POSITION_MM, unit="mm", name="world coordinate")
#: An image size, pixels.
PIXELS = Integer(lo=1, hi=100_000, unit="pixels")

_KINDS = ("intensity", "log-intensity", "attenuation")  # xraypose.xray.KINDS (a test checks they agree)


@dataclass(frozen=True)
class _TextPair:
    kinds = ("list",)
    expected = "two strings of letters (columns, rows), e.g. [\"L\", \"F\"]"

    def validate(self, v, path: tuple):
        if not isinstance(v, list) or len(v) != 2 or not all(isinstance(x, str) for x in v):
            raise _Bad(path, f"must be {self.expected}, got {shown(v)}")
        return v


_ORIENTATION = OneOf((Text(), _TextPair()))

#: ``<image>.json`` beside a PNG / TIFF / NPY X-ray (also :meth:`Camera.to_dict`'s keys).
SIDECAR = Object({
    "sdd_mm": SDD_MM, "delx_mm": PIXEL_MM, "dely_mm": PIXEL_MM, "x0_mm": OFFSET_MM, "y0_mm": OFFSET_MM,
    "reverse_x_axis": Bool(), "kind": Text(_KINDS), "primary_deg": PRIMARY_DEG, "secondary_deg": SECONDARY_DEG,
    "sod_mm": SOD_MM, "height": PIXELS, "width": PIXELS, "patient_orientation": _ORIENTATION,
    "K": Matrix(3, 3, Number(-1e9, 1e9)),
}, what="an object {\"sdd_mm\": …, \"delx_mm\": …}")

#: A TIFF stack's sidecar ``NAME.json``: its voxel size (:func:`xraypose.tiff_stack.sidecar_spacing`).
TIFF_SIDECAR = Object({"spacing_mm": Vector(3, Number(lo=0, lo_open=True, hi=1e3, unit="mm"), "mm")},
                      required=("spacing_mm",), what='an object {"spacing_mm": [sx, sy, sz]}')

#: One X-ray's settings in ``case.json`` (keywords of :func:`xraypose.xray.read_xray`).
XRAY_SETTINGS = Object({
    "sdd": SDD_MM, "delx": PIXEL_MM, "dely": PIXEL_MM, "x0": OFFSET_MM, "y0": OFFSET_MM, "reverse_x_axis": Bool(),
    "primary": PRIMARY_DEG, "secondary": SECONDARY_DEG, "sod": SOD_MM,
    "frames": OneOf((Integer(-100_000, 100_000), Text(("max", "sum", "mean")))),
    "kind": Text(_KINDS), "patient_orientation": _ORIENTATION, "use_patient_orientation": Bool(),
}, what="an object of read_xray settings {\"sdd\": …}")

#: ``case.json`` of a case folder.
CASE_JSON = Object({
    "description": Text(),
    "isocenter": Vector(3, POSITION_MM, "world RAS mm"),
    "xrays": MapOf(XRAY_SETTINGS, what="an object {\"<x-ray file name>\": {settings}}"),
}, what="an object {\"isocenter\": …, \"xrays\": …}")

_RIGID = Matrix4()

#: ``poses.json`` of a case folder: {x-ray name: 4×4 camera_to_world or {"camera_to_world": 4×4}}.
POSES_JSON = MapOf(OneOf((_RIGID, Object({"camera_to_world": _RIGID, "world_to_camera": _RIGID},
                                         required=("camera_to_world",), open=True,
                                         what="an object {\"camera_to_world\": 4×4}"))),
                   what="an object {\"<x-ray file name>\": 4×4 camera_to_world}")

#: A pose file: {"camera_to_world": 4×4} or {"world_to_camera": 4×4}, or a registration result
#: (pose.json: its other keys are kept as they are).
POSE_FILE = Object({
    "camera_to_world": _RIGID, "world_to_camera": _RIGID,
    "pose": Object({"camera_to_world": _RIGID}, required=("camera_to_world",), open=True,
                   what="a registration result's pose {\"camera_to_world\": 4×4}"),
}, open=True, what="an object {\"camera_to_world\": 4×4}")



@dataclass(frozen=True)
class Points:
    """A non-empty list of [x, y, z] points, each coordinate a :data:`POSITION_MM`."""

    kinds = ("list",)
    expected = "a list of 3D points [[x, y, z], …] (world RAS mm)"

    def validate(self, v, path: tuple):
        if not isinstance(v, list) or not v:
            raise _Bad(path, f"must be {self.expected}, got {shown(v)}")
        return [_numbers(x, 3, path + (i,), "a point [x, y, z] (world RAS mm)", POSITION_MM) for i, x in enumerate(v)]


#: Fiducials as JSON: a list of [x, y, z] (world RAS mm), or {"fiducials": [...]} / {"points": [...]}.
FIDUCIALS_JSON = OneOf((Points(), Object({"fiducials": Points(), "points": Points()},
                                         what="a list of 3D points or {\"fiducials\": [[x, y, z], …]}")))
