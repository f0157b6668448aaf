"""The X-ray camera: a pinhole whose pinhole is the X-ray source.

Conventions (written once here and in docs/conventions.md):

* **Camera frame**: origin at the X-ray source; +z along the principal ray,
  toward the detector; the detector plane is z = ``sdd``; +x along image
  columns (u), +y along image rows (v).  Right-handed.
* **Pixels**: (u, v) = (column, row); pixel centres at integer coordinates;
  pixel (0, 0) is the centre of the first stored pixel (top-left when shown).
* **Intrinsics**: ``K = [[sdd/delx, 0, cu], [0, sdd/dely, cv], [0, 0, 1]]`` with
  the principal point ``cu = (W-1)/2 + x0/delx``, ``cv = (H-1)/2 + y0/dely``;
  ``x0, y0`` (mm) move the principal point along +u / +v from the detector centre.
* ``reverse_x_axis=True`` mirrors the columns (u -> W-1-u) as some C-arms and
  the radiological display convention do; it is folded into ``K`` (negative fx),
  so every projection and every ray follows it.
* **Pose** = ``camera_to_world`` (4×4, mm): the camera's pose in CT (RAS mm)
  coordinates.  A world point X projects as ``K @ (R^T (X - t))``.

Units: millimetres and radians (degrees only where a name says so).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch

from xraypose._checks import check_flag, finite_float
from xraypose.errors import InputError

__all__ = ["Camera", "CameraPose", "camera_from_K", "carm_pose", "pixel_grid", "DEFAULT_SDD_MM", "DEFAULT_SOD_FRACTION",
           "default_sod", "check_sod"]

#: Source-to-detector distance (mm) of a typical C-arm: the default of the training camera, of
#: ``xraypose render``, the demo and the example case.
DEFAULT_SDD_MM = 1020.0

#: Source-to-isocenter distance as a fraction of sdd, assumed when none is known (DiffPose's
#: geometry: 612 of 1020 mm).
DEFAULT_SOD_FRACTION = 0.6


def default_sod(sdd: float) -> float:
    """The source-to-isocenter distance (mm) assumed when none is known: ``0.6 · sdd`` (sdd in mm)."""
    return DEFAULT_SOD_FRACTION * sdd


def check_sod(sod: float, sdd: float, sod_from: str = "", sdd_from: str = "", what: str = "") -> None:
    """Refuse (InputError) a source-to-isocenter distance ``sod`` (mm) beyond the source-to-detector distance
    ``sdd`` (mm): the isocenter, and the CT about it, would lie behind the detector (a DRR of nothing, a
    registration that fails only at its end).  ``sod_from`` / ``sdd_from``: where each came from, e.g.
    ``"--sod"``; ``what``: the file, for the message."""
    if sod > sdd:
        src = f"{what}: " if what else ""
        sod_txt = f" ({sod_from})" if sod_from else ""
        sdd_txt = f" ({sdd_from})" if sdd_from else ""
        raise InputError(f"{src}source-to-isocenter distance {sod:g} mm{sod_txt} is more than the source-to-detector "
                         f"distance {sdd:g} mm{sdd_txt}: the isocenter would lie beyond the detector")


def _check_points(points, k: int, what: str, camera_to_world) -> None:
    """Refuse (InputError) ``points`` that are not a (..., N, k) floating tensor or a pose that is not (..., 4, 4):
    torch's own error (a matmul's shapes, an integer dtype) names neither (a few attribute reads: cheap)."""
    for x, name, shape in ((points, what, f"(..., N, {k})"), (camera_to_world, "camera_to_world", "(..., 4, 4)")):
        if not isinstance(x, torch.Tensor):
            raise InputError(f"{name} must be a torch tensor {shape}, got {type(x).__name__}")
        if not x.is_floating_point():
            raise InputError(f"{name} must be a floating-point tensor {shape}, got {x.dtype}")
    if points.dim() < 2 or points.shape[-1] != k:
        raise InputError(f"{what} must be (..., N, {k}), got shape {tuple(points.shape)}")
    if camera_to_world.dim() < 2 or tuple(camera_to_world.shape[-2:]) != (4, 4):
        raise InputError(f"camera_to_world must be (..., 4, 4), got shape {tuple(camera_to_world.shape)}")


def _finite_positive(name: str, value: float) -> float:
    v = finite_float(value, name)  # a text '1000' or a bool is no number
    if v <= 0:
        raise InputError(f"{name} must be a finite positive number (mm), got {value!r}")
    return v


@dataclass(frozen=True)
class Camera:
    """Intrinsics of a C-arm: detector size, pixel spacing, source-to-detector distance.

    Args:
        sdd: source-to-detector distance, mm (> 0).
        height, width: detector size in pixels, H rows × W columns (>= 1).
        delx, dely: pixel spacing along columns (u) and rows (v), mm.
        x0, y0: principal-point offset from the detector centre, mm along +u / +v.
        reverse_x_axis: mirror the image columns (see module docstring).
    """

    sdd: float
    height: int
    width: int
    delx: float
    dely: float | None = None
    x0: float = 0.0
    y0: float = 0.0
    reverse_x_axis: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "sdd", _finite_positive("source-to-detector distance (sdd)", self.sdd))
        object.__setattr__(self, "delx", _finite_positive("pixel spacing delx", self.delx))
        dely = self.delx if self.dely is None else self.dely
        object.__setattr__(self, "dely", _finite_positive("pixel spacing dely", dely))
        for name in ("height", "width"):
            v = getattr(self, name)
            if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim == 0 and v.dtype not in (torch.bool, np.bool_):
                v = v.item()  # a one-number tensor, as sdd and delx take it
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) and not (
                    isinstance(v, float) and v.is_integer()):  # numpy's integers too (an array's size)
                raise InputError(f"detector {name} must be a whole number of pixels, got {v!r}")
            if int(v) < 1:
                raise InputError(f"detector {name} must be at least 1 pixel, got {v!r} (zero-size image)")
            object.__setattr__(self, name, int(v))
        for name in ("x0", "y0"):
            object.__setattr__(self, name, finite_float(getattr(self, name), f"principal-point offset {name}",
                                                        "a number (mm)"))
        # a text 'no' would mirror the columns
        object.__setattr__(self, "reverse_x_axis", check_flag("reverse_x_axis", self.reverse_x_axis, prefix=""))

    # ------------------------------------------------------------------ intrinsics
    @property
    def fx(self) -> float:
        """Focal length along u, pixels (positive; the mirror lives in ``K``)."""
        return self.sdd / self.delx

    @property
    def fy(self) -> float:
        return self.sdd / self.dely

    @property
    def principal_point(self) -> tuple[float, float]:
        """(cu, cv) in pixels of the un-mirrored detector."""
        return (self.width - 1) / 2 + self.x0 / self.delx, (self.height - 1) / 2 + self.y0 / self.dely

    def _k_entries(self) -> tuple[float, float, float, float]:
        """(fx, fy, cu, cv) of :meth:`K`, mirror included: fx < 0 and cu mirrored when ``reverse_x_axis``."""
        cu, cv = self.principal_point
        fx = self.fx
        if self.reverse_x_axis:
            fx, cu = -fx, (self.width - 1) - cu
        return fx, self.fy, cu, cv

    def K(self, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """Intrinsic matrix (3, 3), mirror included when ``reverse_x_axis``."""
        fx, fy, cu, cv = self._k_entries()
        return torch.tensor([[fx, 0.0, cu], [0.0, fy, cv], [0.0, 0.0, 1.0]], dtype=dtype, device=device)

    def K_inv(self, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """Inverse of :meth:`K` (3, 3), in closed form (K is upper triangular with a unit last row):
        no matrix inversion on the device, whose error check would stop a GPU's queue every render."""
        fx, fy, cu, cv = self._k_entries()
        return torch.tensor([[1.0 / fx, 0.0, -cu / fx], [0.0, 1.0 / fy, -cv / fy], [0.0, 0.0, 1.0]],
                            dtype=dtype, device=device)

    @property
    def detector_size_mm(self) -> tuple[float, float]:
        """(height, width) of the detector, mm."""
        return self.height * self.dely, self.width * self.delx

    # ---------------------------------------------------------------- resampling
    def resize(self, height: int, width: int | None = None) -> "Camera":
        """The same physical detector sampled with H'×W' pixels (multiscale work).

        Pixel spacing scales so the detector keeps its size; x0/y0 (mm) keep the
        principal point at the same physical place.  Pixel u maps to
        u' = (u + 0.5)·W'/W − 0.5.
        """
        width = height if width is None else width
        for v in (height, width):  # int() read a text '8', and cut 8.5 to 8
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) and not (
                    isinstance(v, float) and v.is_integer()):
                raise InputError(f"cannot resize the detector to {height!r}×{width!r} pixels "
                                 "(whole numbers of pixels)")
        if int(height) < 1 or int(width) < 1:
            raise InputError(f"cannot resize the detector to {height}×{width} pixels (zero-size image)")
        return replace(
            self,
            height=int(height),
            width=int(width),
            delx=self.delx * self.width / int(width),
            dely=self.dely * self.height / int(height),
        )

    def rescale(self, factor: float) -> "Camera":
        """Resize by ``factor`` (0.25 → a quarter of the pixels along each side)."""
        f = _finite_positive("rescale factor", factor)
        return self.resize(max(1, round(self.height * f)), max(1, round(self.width * f)))

    def crop(self, top: int, left: int, height: int, width: int) -> "Camera":
        """The camera of the sub-image ``image[top:top+height, left:left+width]``.

        ``top``/``left`` are in the stored (displayed) image, mirror included.
        """
        if height < 1 or width < 1:
            raise InputError(f"crop of {height}×{width} pixels is empty (zero-size image)")
        if top < 0 or left < 0 or top + height > self.height or left + width > self.width:
            raise InputError(
                f"crop rows {top}:{top + height}, cols {left}:{left + width} exceeds the "
                f"{self.height}×{self.width} detector"
            )
        K = self.K()
        cu_eff = float(K[0, 2]) - left
        cv = float(K[1, 2]) - top
        cu = (width - 1) - cu_eff if self.reverse_x_axis else cu_eff
        return replace(
            self,
            height=int(height),
            width=int(width),
            x0=(cu - (width - 1) / 2) * self.delx,
            y0=(cv - (height - 1) / 2) * self.dely,
        )

    # ---------------------------------------------------------------- projection
    def project(self, points: torch.Tensor, camera_to_world: torch.Tensor) -> torch.Tensor:
        """Project world points to pixels.

        Args:
            points: (..., N, 3) world mm.
            camera_to_world: (..., 4, 4) pose, broadcast against ``points``' batch dims.
        Returns:
            (..., N, 2) pixel coordinates (u, v).  Points behind the source give
            meaningless values (check ``depth`` if that can happen).
        """
        _check_points(points, 3, "points (world mm)", camera_to_world)
        p_cam = world_to_camera_points(points, camera_to_world)
        uvw = p_cam @ self.K(p_cam.dtype, p_cam.device).T
        return uvw[..., :2] / uvw[..., 2:3]

    def depth(self, points: torch.Tensor, camera_to_world: torch.Tensor) -> torch.Tensor:
        """(..., N) z of world points in the camera frame, mm (distance along the principal ray)."""
        _check_points(points, 3, "points (world mm)", camera_to_world)
        return world_to_camera_points(points, camera_to_world)[..., 2]

    def backproject(self, uv: torch.Tensor, camera_to_world: torch.Tensor) -> torch.Tensor:
        """Pixels (..., N, 2) → world points (..., N, 3) mm on the detector plane (z = sdd)."""
        _check_points(uv, 2, "pixels (u, v)", camera_to_world)
        ones = torch.ones_like(uv[..., :1])
        rays = torch.cat([uv, ones], dim=-1) @ self.K_inv(uv.dtype, uv.device).T  # z = 1
        p_cam = rays * self.sdd
        R = camera_to_world[..., :3, :3]
        t = camera_to_world[..., :3, 3]
        return p_cam @ R.transpose(-1, -2) + t.unsqueeze(-2)

    def source(self, camera_to_world: torch.Tensor) -> torch.Tensor:
        """(..., 3) world position of the X-ray source, mm."""
        return camera_to_world[..., :3, 3]

    def pixel_grid(self, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """(H·W, 2) pixel centres (u, v), row-major (index = v·W + u)."""
        return pixel_grid(self.height, self.width, dtype=dtype, device=device)

    def to_dict(self) -> dict:
        return {
            "sdd_mm": self.sdd,
            "height": self.height,
            "width": self.width,
            "delx_mm": self.delx,
            "dely_mm": self.dely,
            "x0_mm": self.x0,
            "y0_mm": self.y0,
            "reverse_x_axis": self.reverse_x_axis,
            "K": self.K().tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Camera":
        """The Camera of :meth:`to_dict`'s description (its values checked as the constructor's: a
        ``reverse_x_axis`` of ``"false"`` was ``bool("false")``, mirrored)."""
        if not isinstance(d, dict):  # a text: 'string indices must be integers'
            raise InputError(f"camera description must be a dict of intrinsics (sdd_mm, delx_mm, height, width), "
                             f"got {type(d).__name__}")
        try:
            return cls(
                sdd=d["sdd_mm"], height=d["height"], width=d["width"], delx=d["delx_mm"],
                dely=d.get("dely_mm"), x0=d.get("x0_mm", 0.0), y0=d.get("y0_mm", 0.0),
                reverse_x_axis=d.get("reverse_x_axis", False),
            )
        except KeyError as e:
            raise InputError(f"camera description lacks the key {e.args[0]!r}") from None


class CameraPose(NamedTuple):
    """A camera and where it stands: the intrinsics and their (4, 4) float64 camera_to_world (world mm)."""

    camera: Camera
    camera_to_world: torch.Tensor


def world_to_camera_points(points: torch.Tensor, camera_to_world: torch.Tensor) -> torch.Tensor:
    """World points (..., N, 3) → camera-frame points (..., N, 3): R^T (X − t)."""
    R = camera_to_world[..., :3, :3]
    t = camera_to_world[..., :3, 3]
    return (points - t.unsqueeze(-2)) @ R


def pixel_grid(height: int, width: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """(H·W, 2) pixel centres (u, v) in row-major order."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device),
        torch.arange(width, dtype=dtype, device=device),
        indexing="ij",
    )
    return torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)


# Rotation taking a negative-focal camera frame (DeepFluoro / Ljubljana style:
# +x columns, +y rows, +z toward the SOURCE, detector at z = -f) to ours.
# Ours must have +z toward the detector; flipping z alone would be a reflection,
# so x is flipped too (a 180° turn about y) and the column mirror moves into K.
NEGATIVE_FOCAL_FRAME_FLIP = torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=torch.float64))


def camera_from_K(
    K, height: int, width: int, delx: float, dely: float | None = None
) -> tuple[Camera, torch.Tensor]:
    """Build a :class:`Camera` from a 3×3 intrinsic matrix.

    The focal length in mm (= sdd) is ``|K[0,0]|·delx``.  A K with positive
    focal lengths is our convention.  A K with both focal lengths NEGATIVE (as
    DeepFluoro stores it: camera +z toward the source) is converted explicitly:
    the returned camera has ``reverse_x_axis=True`` and the returned ``flip``
    (4×4) converts poses: ``camera_to_world_ours = camera_to_world_theirs @ flip``.

    Args:
        K: (3, 3) array-like.
        height, width: image size in pixels.
        delx, dely: pixel spacing in mm (dely defaults to delx).
    Returns:
        (camera, flip) with flip the identity for a positive-focal K.
    """
    K = torch.as_tensor(K, dtype=torch.float64)
    if K.shape != (3, 3):
        raise InputError(f"intrinsic matrix must be 3×3, got shape {tuple(K.shape)}")
    if not torch.isfinite(K).all():
        raise InputError("intrinsic matrix has NaN or infinite entries")
    if abs(float(torch.linalg.det(K))) < 1e-9 or K[0, 0] == 0 or K[1, 1] == 0:
        raise InputError(f"intrinsic matrix is singular (zero focal length): {K.tolist()}")
    if abs(float(K[0, 1])) > 1e-6 * abs(float(K[0, 0])) or K[2].tolist() != [0.0, 0.0, 1.0] or K[1, 0] != 0:
        raise InputError(f"intrinsic matrix must be [[fx,0,cu],[0,fy,cv],[0,0,1]] (no skew), got {K.tolist()}")
    dely = delx if dely is None else dely
    delx = _finite_positive("pixel spacing delx", delx)
    dely = _finite_positive("pixel spacing dely", dely)
    fx, fy, cu, cv = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    if (fx > 0) != (fy > 0):
        raise InputError(
            f"intrinsic matrix has focal lengths of opposite signs (fx={fx}, fy={fy}); "
            "mirror the image or the matrix first"
        )
    sdd_x, sdd_y = abs(fx) * delx, abs(fy) * dely
    if abs(sdd_x - sdd_y) > 1e-3 * sdd_x:
        raise InputError(
            f"focal lengths disagree with the pixel spacings: |fx|·delx = {sdd_x:.3f} mm but "
            f"|fy|·dely = {sdd_y:.3f} mm"
        )
    if fx > 0:
        flip = torch.eye(4, dtype=torch.float64)
        mirror = False
    else:
        flip = NEGATIVE_FOCAL_FRAME_FLIP.clone()
        mirror = True
        cu = (width - 1) - cu  # un-mirrored principal point
    cam = Camera(
        sdd=sdd_x, height=height, width=width, delx=delx, dely=dely,
        x0=(cu - (width - 1) / 2) * delx, y0=(cv - (height - 1) / 2) * dely,
        reverse_x_axis=mirror,
    )
    return cam, flip


def carm_pose(
    primary: float | torch.Tensor,
    secondary: float | torch.Tensor,
    sod: float,
    isocenter,
    degrees: bool = True,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Camera-to-world pose of a C-arm from its angles.

    The patient lies supine in the CT's RAS+ frame: +x toward the patient's
    Right, +y Anterior, +z Superior (docs/conventions.md).

    At ``primary = secondary = 0`` (an AP view) the source is posterior, at
    ``isocenter − sod·A``; the detector is anterior; image rows (+v) run toward
    the feet; columns (+u) toward the patient's right (seen from the source;
    ``reverse_x_axis`` gives the radiological display).

    Args:
        primary: LAO (+) / RAO (−) angle: the detector swings toward the
            patient's left (LAO) about the head–feet axis (DICOM
            PositionerPrimaryAngle).
        secondary: cranial (+) / caudal (−) angle: the detector tilts toward the
            head (DICOM PositionerSecondaryAngle).
        sod: source-to-isocenter distance, mm.
        isocenter: (3,) world mm, the point the principal ray passes through.
        degrees: angles in degrees (default) or radians.
    Returns:
        (4, 4) camera_to_world, or (B, 4, 4) when the angles are tensors of shape (B,).
    """
    sod = _finite_positive("source-to-isocenter distance (sod)", sod)
    from xraypose.volume import _as_point

    try:
        a = torch.as_tensor(primary, dtype=dtype)
        b = torch.as_tensor(secondary, dtype=dtype)
        a, b = torch.broadcast_tensors(a, b)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"C-arm angles must be numbers (or tensors of one shape), got primary {primary!r} and "
                         f"secondary {secondary!r}") from None
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise InputError("C-arm angles must be finite")
    if degrees:
        a, b = torch.deg2rad(a), torch.deg2rad(b)
    iso = _as_point(isocenter, "isocenter").to(dtype)  # a NaN one made a NaN pose
    # Direction from the source to the detector (camera +z), world RAS.
    z = torch.stack([-torch.sin(a) * torch.cos(b), torch.cos(a) * torch.cos(b), torch.sin(b)], dim=-1)
    # Image rows (+v) as close to the feet (−S) as the view allows.
    feet = torch.tensor([0.0, 0.0, -1.0], dtype=dtype).expand_as(z)
    y = feet - (feet * z).sum(-1, keepdim=True) * z
    if (y.norm(dim=-1) < 1e-6).any():
        raise InputError("secondary angle of ±90° leaves the image orientation undefined")
    y = y / y.norm(dim=-1, keepdim=True)
    x = torch.linalg.cross(y, z, dim=-1)
    R = torch.stack([x, y, z], dim=-1)  # columns are the camera axes in world
    t = iso - sod * z
    T = torch.zeros(*z.shape[:-1], 4, 4, dtype=dtype)
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T
