"""From the values a file gave to an :class:`~xraypose.xray.XRay`: overrides, angles, orientation, camera.

Each reader collects what its file says as ``hv = {name: (value, where)}`` (``where`` names the DICOM
keyword and tag, or the sidecar JSON key) and calls :func:`finish_xray`, which

1. resolves the intrinsics (:func:`resolve_intrinsics`: sdd, pixel spacing, principal point; an
   override wins and the header records what the file said),
2. resolves the C-arm angles (:func:`resolve_angles`: primary, secondary, source-to-isocenter distance),
3. resolves the orientation (:func:`resolve_orientation`: PatientOrientation chooses the camera
   mirror and a 180° roll about the beam so that the image axes agree with the pose),
4. builds the camera (:func:`build_camera`), and the initial pose when an isocenter is given.

Distances are mm, angles degrees; every value used lands in the header with its source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from xraypose.camera import Camera, carm_pose, check_sod
from xraypose._checks import check_instance
from xraypose.errors import InputError
from xraypose.xray.overrides import XRayOverrides
from xraypose.xray.record import Provenance, XRay, format_value

__all__ = ["finish_xray", "patient_orientation_vectors", "resolve_intrinsics", "resolve_angles",
           "resolve_orientation", "build_camera"]

F64 = torch.float64

_LETTERS = {"R": (1.0, 0.0, 0.0), "L": (-1.0, 0.0, 0.0), "A": (0.0, 1.0, 0.0), "P": (0.0, -1.0, 0.0),
            "H": (0.0, 0.0, 1.0), "S": (0.0, 0.0, 1.0), "F": (0.0, 0.0, -1.0), "I": (0.0, 0.0, -1.0)}


def patient_orientation_vectors(po) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Unit vectors in world RAS of DICOM PatientOrientation's two entries.

    The first entry is the direction of increasing column index (+u), the
    second of increasing row index (+v); letters R/L/A/P/H(S)/F(I), combined
    letters (e.g. "LP") add up.  An empty entry gives None.
    """
    if isinstance(po, str):
        po = po.split("\\")
    vals = [str(x).strip().upper() for x in po]
    if len(vals) != 2:
        raise InputError(f"PatientOrientation must have two entries (columns, rows), got {po!r}")
    out = []
    for s in vals:
        if not s:
            out.append(None)
            continue
        v = np.zeros(3)
        for ch in s:
            if ch not in _LETTERS:
                raise InputError(f"PatientOrientation letter {ch!r} is not one of R, L, A, P, H, F")
            v += np.array(_LETTERS[ch])
        n = np.linalg.norm(v)
        out.append(v / n if n > 0 else None)
    return out[0], out[1]


class _Taker:
    """A value by name: the override when given (the header says "user", and what the file said), else the
    file's (the header says where from), else None (nothing recorded)."""

    def __init__(self, hv: dict, hdr: Provenance, ov: XRayOverrides):
        self.hv, self.hdr, self.ov = hv, hdr, ov

    def __call__(self, name: str):
        user = getattr(self.ov, name, None)  # pp_row / pp_col have no override
        if user is not None:
            if name in self.hv:
                v, where = self.hv[name]
                return self.hdr.set(name, user, f"user (the file says {format_value(v)} in {where})")
            return self.hdr.set(name, user, "user")
        if name in self.hv:
            v, where = self.hv[name]
            return self.hdr.set(name, v, where)
        return None


@dataclass
class _Intrinsics:
    """sdd and pixel spacing (mm), the principal point's (row, column) offset from the image centre (mm)."""

    sdd: float | None
    delx: float | None
    dely: float | None
    pp_row: float | None
    pp_col: float | None


@dataclass
class _CArm:
    """C-arm angles (degrees), source-to-isocenter distance (mm), mirror and PatientOrientation, as given."""

    primary: float | None
    secondary: float | None
    sod: float | None
    reverse_x_axis: bool | None
    patient_orientation: object


def resolve_intrinsics(take: _Taker, hdr: Provenance) -> _Intrinsics:
    """sdd, delx, dely (one spacing alone means square pixels) and the principal point offset."""
    sdd = take("sdd")
    delx = take("delx")
    dely = take("dely")
    if delx is not None and dely is None:
        dely = hdr.set("dely", delx, "derived: square pixels (dely = delx)")
    if dely is not None and delx is None:
        delx = hdr.set("delx", dely, "derived: square pixels (delx = dely)")
    return _Intrinsics(sdd, delx, dely, take("pp_row"), take("pp_col"))


def _take_carm(take: _Taker, hdr: Provenance, hv: dict, ov: XRayOverrides) -> _CArm:
    primary = take("primary")
    secondary = take("secondary")
    sod = take("sod")
    rev = take("reverse_x_axis")
    po = ov.patient_orientation
    if po is not None:
        hdr.set("patient_orientation", po, "user")
    elif "patient_orientation" in hv:
        po = take("patient_orientation")
    return _CArm(primary, secondary, sod, rev, po)


def resolve_angles(carm: _CArm, sdd: float | None, hdr: Provenance, src: str, ermf: float | None) -> dict | None:
    """``{"primary", "secondary", "sod", "roll180"}`` (degrees, mm) when the file or the caller gave an angle
    (the other defaults to 0; sod may come from sdd / the magnification factor), else None."""
    primary, secondary, sod = carm.primary, carm.secondary, carm.sod
    if primary is None and secondary is None:
        return None
    if primary is None:
        primary = hdr.set("primary", 0.0, "default (PositionerPrimaryAngle absent)")
    if secondary is None:
        secondary = hdr.set("secondary", 0.0, "default (PositionerSecondaryAngle absent)")
    if sod is None and sdd is not None and ermf:
        sod = hdr.set("sod", sdd / ermf, "derived: DistanceSourceToDetector / EstimatedRadiographicMagnificationFactor")
    if sod is not None and not sod > 0:
        raise InputError(f"{src}: source-to-isocenter distance must be > 0 mm, got {sod}")
    angles = {"primary": float(primary), "secondary": float(secondary),
              "sod": None if sod is None else float(sod), "roll180": False}
    if sod is None:
        hdr.note("C-arm angles found but no DistanceSourceToPatient: pass --sod (in Python sod=) to get a pose")
    return angles


def resolve_orientation(carm: _CArm, angles: dict | None, hdr: Provenance, ov: XRayOverrides) -> bool:
    """The camera mirror (``reverse_x_axis``): as given, else what PatientOrientation's columns say against
    the C-arm angles; sets ``angles["roll180"]`` when its rows run opposite to the C-arm convention."""
    rev, po = carm.reverse_x_axis, carm.patient_orientation
    mirror = bool(rev) if rev is not None else False
    if po is None or not ov.use_patient_orientation:
        return mirror
    pu, pv = patient_orientation_vectors(po)
    if angles is None:
        hdr.note("PatientOrientation given but no C-arm angles: it cannot be related to a pose (not used)")
        return mirror
    R = carm_pose(angles["primary"], angles["secondary"], sod=1.0, isocenter=torch.zeros(3, dtype=F64))[:3, :3].numpy()
    xw, yw = R[:, 0], R[:, 1]
    roll = False
    if pv is not None:
        d = float(yw @ pv)
        if abs(d) < 0.3:
            hdr.note(f"PatientOrientation rows {po!r} are nearly along the beam: roll not decided")
        elif d < 0:
            roll = True
    if roll:
        xw = -xw
        hdr.note("PatientOrientation: rows run opposite to the C-arm convention → pose turned 180° about the beam")
    if pu is not None:
        d = float(xw @ pu)
        want = d < 0
        if abs(d) < 0.3:
            hdr.note(f"PatientOrientation columns {po!r} are nearly along the beam: mirror not decided")
        elif rev is not None and want != mirror:
            hdr.note(f"PatientOrientation suggests reverse_x_axis={want} but {mirror} was given; keeping {mirror}")
        elif rev is None:
            mirror = want
            hdr.set("reverse_x_axis", mirror, "derived: PatientOrientation columns vs the C-arm angles")
    angles["roll180"] = roll
    return mirror


def build_camera(intr: _Intrinsics, mirror: bool, take: _Taker, hdr: Provenance, ov: XRayOverrides,
                 H: int, W: int, src: str) -> Camera | None:
    """The given camera (its size checked), else one from the intrinsics; None when they are missing and
    ``require_intrinsics`` is off.  The principal point's column offset flips with the mirror."""
    if ov.camera is not None:
        cam = ov.camera
        check_instance("camera", cam, Camera)
        if (cam.height, cam.width) != (H, W):
            raise InputError(
                f"{src}: image is {H}×{W} pixels but the given intrinsics describe a "
                f"{cam.height}×{cam.width} detector (sizes differ)"
            )
        hdr.set("camera", "given", "user")
        return cam
    sdd, delx, dely = intr.sdd, intr.delx, intr.dely
    missing = []
    if sdd is None:
        missing.append("source-to-detector distance (DistanceSourceToDetector; pass --sdd, in Python sdd=)")
    if delx is None or dely is None:
        missing.append("pixel spacing (ImagerPixelSpacing/PixelSpacing; pass --delx and --dely, in Python delx= "
                       "and dely=)")
    for key, name, v in (("sdd", "source-to-detector distance", sdd), ("delx", "pixel spacing delx", delx),
                         ("dely", "pixel spacing dely", dely)):
        if v is not None and not (math.isfinite(v) and v > 0):
            where = hdr.values.get(key, {}).get("from", "")
            what = "pixel spacing" if key != "sdd" else "source-to-detector distance"
            raise InputError(f"{src}: {name} is {v:g} mm (from {where}): zero or negative {what}; "
                             f"pass --{key} (in Python {key}=) to override it")
    if missing:
        if ov.require_intrinsics:
            raise InputError(f"{src}: missing {' and '.join(missing)}")
        hdr.note("no intrinsics: missing " + " and ".join(missing))
        return None
    x0 = take("x0")
    y0 = take("y0")
    if x0 is None:
        x0 = 0.0 if intr.pp_col is None else \
            hdr.set("x0", -intr.pp_col if mirror else intr.pp_col, "derived: principal point column offset")
    if y0 is None:
        y0 = 0.0 if intr.pp_row is None else hdr.set("y0", intr.pp_row, "derived: principal point row offset")
    return Camera(sdd=sdd, height=H, width=W, delx=delx, dely=dely, x0=x0, y0=y0, reverse_x_axis=mirror)


def finish_xray(img: np.ndarray, hv: dict, hdr: Provenance, kind: str, src: str, ov: XRayOverrides,
                ermf: float | None = None) -> XRay:
    """The :class:`XRay` of pixels ``img`` ``(H, W)`` (``(F, H, W)`` with ``frames="all"``) and the file's
    values ``hv``, with the overrides ``ov``; ``ermf``: DICOM's EstimatedRadiographicMagnificationFactor."""
    H, W = img.shape[-2:]
    if H < 1 or W < 1:
        raise InputError(f"{src}: image is empty ({H}×{W})")
    if not np.isfinite(img).all():
        raise InputError(f"{src}: image has {int((~np.isfinite(img)).sum())} NaN or infinite pixels")
    take = _Taker(hv, hdr, ov)
    intr = resolve_intrinsics(take, hdr)
    carm = _take_carm(take, hdr, hv, ov)
    angles = resolve_angles(carm, intr.sdd, hdr, src, ermf)
    mirror = resolve_orientation(carm, angles, hdr, ov)
    camera = build_camera(intr, mirror, take, hdr, ov, H, W, src)
    if camera is not None and angles is not None and angles["sod"] is not None:
        # refused here, where both are read: a registration ran to its end before failing on it
        where = lambda k: hdr.values.get(k, {}).get("from", "")  # noqa: E731
        check_sod(angles["sod"], camera.sdd, where("sod"), where("sdd") or ("the given camera" if ov.camera else ""),
                  src)
    xr = XRay(image=torch.from_numpy(np.ascontiguousarray(img)), camera=camera, kind=kind,
              header=hdr.values, notes=hdr.notes, angles=angles, source=src)
    if ov.isocenter is not None:
        if angles is not None and angles.get("sod") is not None:
            xr.pose = xr.initial_pose(ov.isocenter)
        else:
            xr.notes.append("isocenter given but no C-arm angles and distance: no initial pose")
    return xr
