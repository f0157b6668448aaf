"""Calibrated X-ray cameras from XMALab's "MayaCam 2.0" text files, and rays that should meet.

A MayaCam 2.0 file (written by XMALab, read by Autoscoper) holds four sections::

    image size          height,width                     (pixels)
    camera matrix       3 rows "fx,0,cx" / "0,fy,cy" / "0,0,1"   (pixels)
    rotation            3 rows of 3 numbers
    translation         3 lines of one number            (mm)

The convention, established from data (docs/conventions.md, "MayaCam 2.0";
``scripts/wrist_calibration_check.py``): ``rotation`` R and ``translation`` t
are **world → camera** in the OpenCV sense, ``X_cam = R·X_world + t``, with
the camera frame +x along image columns, +y along image rows, +z from the
source toward the detector — xraypose's camera frame exactly.  So::

    camera_to_world = [[Rᵀ, −Rᵀ·t], [0, 0, 0, 1]]      (the source sits at −Rᵀ·t)

On the Autoscoper wrist trial, rays through the same bead in the two views
pass within 0.05 mm of each other (median, 13 beads, frame 0002) with this
reading; every other reading tried (R as camera → world, the source at −R·t
as Autoscoper's documentation writes, at ±t, a Maya camera looking down −z,
the rows counted from the bottom) leaves most beads without a partner ray
closer than 1 mm.

K is in pixels.  A :class:`~xraypose.camera.Camera` also wants a pixel
spacing in mm (only to express the source-to-detector distance in mm): a
calibration does not know it, so :data:`NOMINAL_PIXEL_MM` is used unless
another is given, and ``dely`` is chosen so that both focal lengths of K are
kept exactly (``delx = pixel_mm``, ``dely = pixel_mm·fx/fy``,
``sdd = fx·pixel_mm``).  Every ray and every projection depends on K alone,
so the nominal value changes no geometry.

Units: mm, radians; pixels (u, v) = (column, row), centres at integers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xraypose.camera import Camera, CameraPose, camera_from_K
from xraypose.errors import InputError
from xraypose.io import read_input_bytes

__all__ = ["MayaCam", "read_mayacam", "mayacam_camera", "read_mayacam_camera", "write_mayacam",
           "mayacam_to_camera_to_world", "closest_approach", "triangulate", "NOMINAL_PIXEL_MM",
           "MAYACAM_ROTATION_TOL"]

#: Pixel spacing (mm) given to a camera whose calibration is in pixels only: a typical
#: image-intensifier / flat-panel value.  Only ``sdd`` (= fx·pixel_mm) depends on it.
NOMINAL_PIXEL_MM: float = 0.2

#: A MayaCam rotation must be orthonormal to this (max |RᵀR − I|) with det +1; it is then
#: projected onto the nearest rotation (SVD), a change below this tolerance.
MAYACAM_ROTATION_TOL: float = 1e-5

_SECTIONS = ("image size", "camera matrix", "rotation", "translation")
_F64 = torch.float64


@dataclass(frozen=True)
class MayaCam:
    """The numbers of a MayaCam 2.0 file, as written.

    Attributes:
        height, width: image size in pixels.
        K: (3, 3) float64 intrinsic matrix, pixels.
        rotation: (3, 3) float64 R (world → camera, projected onto SO(3)).
        translation: (3,) float64 t, mm (world → camera: X_cam = R·X + t).
        source: the file's path.
    """

    height: int
    width: int
    K: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    source: str = ""

    @property
    def camera_to_world(self) -> torch.Tensor:
        """(4, 4) float64 camera_to_world in xraypose's convention (module docstring)."""
        return mayacam_to_camera_to_world(self.rotation, self.translation)

    @property
    def source_position(self) -> np.ndarray:
        """(3,) the X-ray source in the calibration's world frame, mm: −Rᵀ·t."""
        return -self.rotation.T @ self.translation


def mayacam_to_camera_to_world(rotation, translation) -> torch.Tensor:
    """camera_to_world (4, 4) float64 from MayaCam's world → camera R (3, 3) and t (3,) (mm)."""
    R = torch.as_tensor(np.asarray(rotation, dtype=np.float64))
    t = torch.as_tensor(np.asarray(translation, dtype=np.float64)).reshape(3)
    T = torch.eye(4, dtype=_F64)
    T[:3, :3] = R.T
    T[:3, 3] = -R.T @ t
    return T


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def _numbers(line: str, n: int, where: str) -> list[float]:
    parts = [p for p in re.split(r"[,\s;]+", line.strip()) if p]
    if len(parts) != n:
        raise InputError(f"{where} must hold {n} number{'s' if n > 1 else ''}, got {line.strip()!r}")
    out = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise InputError(f"{where}: {p!r} is not a number (line {line.strip()!r})") from None
        if not math.isfinite(v):
            raise InputError(f"{where}: {p!r} is not finite")
        out.append(v)
    return out


def read_mayacam(path) -> MayaCam:
    """Read a MayaCam 2.0 calibration (XMALab / Autoscoper text) and check it.

    Section names are matched without regard to case or surrounding blanks;
    numbers may be separated by commas, blanks or semicolons.

    Raises:
        InputError (one line naming the file and the section): missing file,
        not text, a missing or repeated section, a wrong count of numbers, a
        value that is not a finite number, an image size that is not whole
        positive pixels, a K that is not [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]
        with non-zero focal lengths of one sign, a rotation that is not
        orthonormal or is a reflection (tolerance :data:`MAYACAM_ROTATION_TOL`).
    """
    p = Path(path).expanduser()
    lines = _text_lines(p)
    heads = _section_heads(p, lines)

    def body(name: str, n_lines: int) -> list[str]:
        return _section_body(p, lines, heads, name, n_lines)

    H, W = _image_size(p, body("image size", 1)[0])
    K = np.array([_numbers(r, 3, f"{p}: section 'camera matrix' row {j + 1}")
                  for j, r in enumerate(body("camera matrix", 3))])
    R = np.array([_numbers(r, 3, f"{p}: section 'rotation' row {j + 1}")
                  for j, r in enumerate(body("rotation", 3))])
    t = _translation(p, body("translation", 3))
    _check_K(p, K)
    return MayaCam(height=H, width=W, K=K, rotation=_checked_rotation(p, R), translation=t, source=str(p))


def _text_lines(p: Path) -> list[str]:
    """The file's non-blank lines, stripped; refuses a missing file, a folder, unreadable or non-text bytes."""
    raw = read_input_bytes(p, "MayaCam calibration")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{p}: not a MayaCam 2.0 text file (not UTF-8 / ASCII text)") from None
    lines = [ln.strip() for ln in text.splitlines()]
    return [ln for ln in lines if ln]


def _section_key(line: str) -> str:
    return " ".join(line.lower().split())


def _section_heads(p: Path, lines: list[str]) -> dict[str, int]:
    """{section name: its line}; refuses a repeated or missing section (or a file with none)."""
    heads: dict[str, int] = {}
    for i, ln in enumerate(lines):
        key = _section_key(ln)
        if key in _SECTIONS:
            if key in heads:
                raise InputError(f"{p}: section {key!r} is given twice")
            heads[key] = i
    missing = [s for s in _SECTIONS if s not in heads]
    if missing:
        if not heads:
            raise InputError(f"{p}: not a MayaCam 2.0 file (no 'image size', 'camera matrix', 'rotation', "
                             "'translation' sections; MayaCam 1.0 and other layouts are not read)")
        raise InputError(f"{p}: MayaCam 2.0 section {missing[0]!r} is missing")
    return heads


def _section_body(p: Path, lines: list[str], heads: dict[str, int], name: str, n_lines: int) -> list[str]:
    """The ``n_lines`` lines after the section's name (refused when the next section comes sooner)."""
    i = heads[name]
    rows = lines[i + 1: i + 1 + n_lines]
    for j, r in enumerate(rows):
        if _section_key(r) in _SECTIONS:
            rows = rows[:j]
            break
    if len(rows) != n_lines:
        raise InputError(f"{p}: section {name!r} must have {n_lines} line{'s' if n_lines > 1 else ''} of "
                         f"numbers, got {len(rows)}")
    return rows


def _image_size(p: Path, line: str) -> tuple[int, int]:
    """(height, width) in whole pixels from the 'image size' line."""
    size = _numbers(line, 2, f"{p}: section 'image size' (height,width)")
    if not all(v.is_integer() and 1 <= v <= 100_000 for v in size):
        raise InputError(f"{p}: section 'image size' must be two whole numbers of pixels (height,width) in "
                         f"[1, 100000], got {size}")
    return int(size[0]), int(size[1])


def _translation(p: Path, rows: list[str]) -> np.ndarray:
    """(3,) t in mm from the section's 3 lines of one number each."""
    if len(rows) == 3 and all(len([x for x in re.split(r"[,\s;]+", r) if x]) == 1 for r in rows):
        return np.array([_numbers(r, 1, f"{p}: section 'translation' line {j + 1}")[0] for j, r in enumerate(rows)])
    raise InputError(f"{p}: section 'translation' must be 3 lines of one number (mm), got {rows!r}")


def _check_K(p: Path, K: np.ndarray) -> None:
    """K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with non-zero focal lengths of one sign."""
    if K[2].tolist() != [0.0, 0.0, 1.0] or K[1, 0] != 0.0 or abs(K[0, 1]) > 1e-9 * max(abs(K[0, 0]), 1.0):
        raise InputError(f"{p}: section 'camera matrix' must be [[fx,0,cx],[0,fy,cy],[0,0,1]] (no skew), "
                         f"got {K.tolist()}")
    if K[0, 0] == 0 or K[1, 1] == 0 or (K[0, 0] > 0) != (K[1, 1] > 0):
        raise InputError(f"{p}: section 'camera matrix' has focal lengths fx={K[0, 0]:g}, fy={K[1, 1]:g} "
                         "(must be non-zero and of one sign)")


def _checked_rotation(p: Path, R: np.ndarray) -> np.ndarray:
    """R checked orthonormal (:data:`MAYACAM_ROTATION_TOL`) with det +1, then projected onto SO(3) (SVD)."""
    err = float(np.abs(R.T @ R - np.eye(3)).max())
    if err > MAYACAM_ROTATION_TOL:
        raise InputError(f"{p}: section 'rotation' is not a rotation: max |RᵀR − I| = {err:.3g} "
                         f"(tolerance {MAYACAM_ROTATION_TOL:g})")
    if np.linalg.det(R) < 0:
        raise InputError(f"{p}: section 'rotation' is a reflection (determinant −1), not a rotation")
    U, _, Vt = np.linalg.svd(R)
    return U @ Vt


def mayacam_camera(cal: MayaCam, pixel_mm: float = NOMINAL_PIXEL_MM) -> CameraPose:
    """(Camera, camera_to_world (4, 4) float64) of a calibration.

    ``pixel_mm``: the pixel spacing along columns (mm); rows get
    ``pixel_mm·fx/fy`` so that K is kept exactly (module docstring).
    A K with negative focal lengths (camera +z toward the source) is turned
    into ours by :func:`~xraypose.camera.camera_from_K` (mirrored camera,
    pose right-multiplied by its flip).
    """
    if isinstance(pixel_mm, bool) or not isinstance(pixel_mm, (int, float)) or not math.isfinite(pixel_mm) \
            or pixel_mm <= 0:
        raise InputError(f"pixel_mm must be a finite positive number (mm), got {pixel_mm!r}")
    fx, fy = float(cal.K[0, 0]), float(cal.K[1, 1])
    camera, flip = camera_from_K(cal.K, cal.height, cal.width, delx=float(pixel_mm),
                                 dely=float(pixel_mm) * abs(fx) / abs(fy))
    return CameraPose(camera, cal.camera_to_world @ flip)


def read_mayacam_camera(path, pixel_mm: float = NOMINAL_PIXEL_MM) -> CameraPose:
    """:func:`read_mayacam` then :func:`mayacam_camera`: (Camera, camera_to_world)."""
    return mayacam_camera(read_mayacam(path), pixel_mm)


def write_mayacam(path, camera: Camera, camera_to_world) -> None:
    """Write a camera and its pose as a MayaCam 2.0 file (the inverse of :func:`read_mayacam_camera`).

    A mirrored camera (``reverse_x_axis``) has no MayaCam form (its K would have
    focal lengths of opposite signs) and is refused.
    """
    from xraypose.geometry import check_rigid
    from xraypose.io import atomic_write_bytes

    if camera.reverse_x_axis:
        raise InputError("a mirrored camera (reverse_x_axis=True) cannot be written as MayaCam 2.0; "
                         "flip the image columns first")
    T = torch.as_tensor(camera_to_world, dtype=_F64)
    check_rigid(T)
    R = T[:3, :3].T.numpy()
    t = -R @ T[:3, 3].numpy()
    K = camera.K().numpy()
    fmt = lambda v: repr(float(v))  # noqa: E731 - shortest text that reads back exactly
    text = ["image size", f"{camera.height},{camera.width}", "", "camera matrix"]
    text += [",".join(fmt(v) for v in row) for row in K] + ["", "rotation"]
    text += [",".join(fmt(v) for v in row) for row in R] + ["", "translation"]
    text += [fmt(v) for v in t]
    atomic_write_bytes(path, ("\n".join(text) + "\n").encode())


# --------------------------------------------------------------------------
# Rays through matching pixels of two views
# --------------------------------------------------------------------------


def closest_approach(o1, d1, o2, d2) -> dict:
    """Closest approach of lines ``o1 + s·d1`` and ``o2 + t·d2`` (broadcast over leading dims).

    Args:
        o1, o2: (..., 3) points on the lines (mm).  d1, d2: (..., 3) directions (any length).
    Returns:
        dict of tensors: ``distance`` (...) mm between the lines; ``midpoint`` (..., 3) the point
        halfway between the closest points; ``s``, ``t`` (...) the line parameters in units of
        |d1|, |d2| (positive = in front of o along d).  Parallel lines give the distance
        between them and parameters of a point pair (s = 0).
    """
    o1, d1, o2, d2 = (torch.as_tensor(x, dtype=_F64) for x in (o1, d1, o2, d2))
    w = o1 - o2
    a = (d1 * d1).sum(-1)
    b = (d1 * d2).sum(-1)
    c = (d2 * d2).sum(-1)
    d = (d1 * w).sum(-1)
    e = (d2 * w).sum(-1)
    den = a * c - b * b
    par = den <= 1e-12 * a * c
    safe = torch.where(par, torch.ones_like(den), den)
    s = torch.where(par, torch.zeros_like(den), (b * e - c * d) / safe)
    t = torch.where(par, e / c, (a * e - b * d) / safe)
    p1 = o1 + s.unsqueeze(-1) * d1
    p2 = o2 + t.unsqueeze(-1) * d2
    return {"distance": (p1 - p2).norm(dim=-1), "midpoint": (p1 + p2) / 2, "s": s, "t": t}


def triangulate(uv1, camera1: Camera, pose1, uv2, camera2: Camera, pose2) -> dict:
    """Rays from two calibrated views through matching pixels, and where they meet.

    Args:
        uv1, uv2: (N, 2) pixels (u, v) of the same N points seen in view 1 and view 2.
        camera1, camera2: the views' intrinsics.  pose1, pose2: their camera_to_world (4, 4).
    Returns:
        dict of float64 tensors: ``distance`` (N,) mm between the two rays (0 for a perfect
        calibration and perfect pixels); ``point`` (N, 3) the midpoint of closest approach
        (world mm); ``depth1``, ``depth2`` (N,) the distance of that point from each source
        along its ray, mm (negative = behind the source: the rays meet on the wrong side).
    """
    uv1 = torch.as_tensor(uv1, dtype=_F64).reshape(-1, 2)
    uv2 = torch.as_tensor(uv2, dtype=_F64).reshape(-1, 2)
    if uv1.shape != uv2.shape:
        raise InputError(f"triangulate needs as many pixels in each view, got {uv1.shape[0]} and {uv2.shape[0]}")
    T1 = torch.as_tensor(pose1, dtype=_F64)
    T2 = torch.as_tensor(pose2, dtype=_F64)
    s1, s2 = camera1.source(T1), camera2.source(T2)
    d1 = camera1.backproject(uv1, T1) - s1
    d2 = camera2.backproject(uv2, T2) - s2
    d1 = d1 / d1.norm(dim=-1, keepdim=True)
    d2 = d2 / d2.norm(dim=-1, keepdim=True)
    r = closest_approach(s1.expand_as(d1), d1, s2.expand_as(d2), d2)
    return {"distance": r["distance"], "point": r["midpoint"], "depth1": r["s"], "depth2": r["t"]}
