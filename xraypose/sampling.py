"""Random C-arm poses around an isocenter pose (training data and synthetic benchmarks).

Two distributions:

* ``"diffpose"`` (default): DiffPose's offsets, expressed in our frames.  A
  rotation ω ~ N(0, σ_rot) (rad, about the camera axes x = columns, y = rows,
  z = principal ray of the isocenter pose) turns the C-arm **about the
  isocenter**; then a translation δ ~ N(μ_t, σ_t) (mm, camera frame) moves the
  camera.  DiffPose's numbers: log-rotation N(0, 0.2), N(0, 0.1), N(0, 0.25) rad;
  translation N(10, 70), N(250, 90), N(5, 50) mm, whose 250 mm mean is the
  depth offset of DiffPose's own isocenter pose: here the isocenter pose
  already sits at the source-to-isocenter distance, so the depth mean is 0.
  Our defaults: σ_rot = (0.2, 0.25, 0.1) about (x, y, z) — the largest about the
  image rows' axis (head–feet in an AP view, the LAO/RAO swing); μ_t = (10, 5, 0),
  σ_t = (70, 50, 90) mm along (x, y, z).  :meth:`PoseSampler.for_volume` scales
  the translations to the CT's size.
* ``"uniform"``: Euler angles (ZYX about the same axes) and translations drawn
  uniformly in ranges.

Pose = C(ω) · T_iso · D(δ), with C(ω) the rotation about the isocenter and D(δ)
the camera-frame translation.  Units: mm, radians.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from xraypose.camera import carm_pose
from xraypose.errors import InputError
from xraypose.geometry import make_transform, rotation_to_matrix, so3_exp

if TYPE_CHECKING:
    from xraypose.volume import Volume

__all__ = ["PoseSampler"]

REFERENCE_EXTENT_MM = 350.0  # a DeepFluoro pelvis CT is about this wide


@dataclass
class PoseSampler:
    """Random poses around ``isocenter_pose`` (camera_to_world, (4, 4)).

    Args:
        isocenter_pose: (4, 4) pose whose principal ray passes through ``isocenter``.
        isocenter: (3,) world mm, the centre of the C-arm's rotations.
        distribution: "diffpose" (normal offsets) or "uniform".
        rot_std, trans_mean, trans_std: normal parameters (rad, mm), camera axes (x, y, z).
        rot_range, trans_range: half-widths of the uniform ranges (rad, mm).
    """

    isocenter_pose: torch.Tensor
    isocenter: torch.Tensor
    distribution: str = "diffpose"
    rot_std: tuple = (0.2, 0.25, 0.1)
    trans_mean: tuple = (10.0, 5.0, 0.0)
    trans_std: tuple = (70.0, 50.0, 90.0)
    rot_range: tuple = (0.35, 0.45, 0.2)
    trans_range: tuple = (100.0, 80.0, 120.0)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.distribution not in ("diffpose", "uniform"):
            raise InputError(f"unknown pose distribution {self.distribution!r}; choose diffpose or uniform")
        self.isocenter_pose = torch.as_tensor(self.isocenter_pose, dtype=torch.float64).reshape(4, 4)
        self.isocenter = torch.as_tensor(self.isocenter, dtype=torch.float64).reshape(3)
        for name in ("rot_std", "trans_std", "rot_range", "trans_range", "trans_mean"):
            v = tuple(float(x) for x in getattr(self, name))
            if len(v) != 3 or any(not torch.isfinite(torch.tensor(x)) for x in v):
                raise InputError(f"{name} needs 3 finite numbers, got {getattr(self, name)!r}")
            if name != "trans_mean" and any(x < 0 for x in v):
                raise InputError(f"{name} must be >= 0, got {v}")
            setattr(self, name, v)

    @classmethod
    def for_volume(cls, volume: Volume, sod: float, primary: float = 0.0, secondary: float = 0.0,
                   scale: float | None = None, **kwargs) -> "PoseSampler":
        """Around the C-arm view (primary, secondary, degrees) of ``volume``'s isocenter.

        Translations (mean and spread) are scaled by ``scale``, default
        min(1, smallest CT extent / 350 mm), so a small CT is not left behind.
        """
        iso = torch.as_tensor(volume.get_isocenter(), dtype=torch.float64)
        T = carm_pose(primary, secondary, sod=sod, isocenter=iso)
        if scale is None:
            scale = min(1.0, float(volume.extent_mm.min()) / REFERENCE_EXTENT_MM)
        s = cls(T, iso, **kwargs)
        return replace(s, trans_mean=tuple(scale * x for x in s.trans_mean), trans_std=tuple(scale * x for x in s.trans_std))

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32, device=None) -> torch.Tensor:
        """(n, 4, 4) camera_to_world poses."""
        if n < 1:
            raise InputError(f"number of poses must be >= 1, got {n}")
        g = generator
        if self.distribution == "diffpose":
            omega = torch.randn(n, 3, generator=g, dtype=torch.float64) * torch.tensor(self.rot_std, dtype=torch.float64)
            delta = torch.tensor(self.trans_mean, dtype=torch.float64) + torch.randn(
                n, 3, generator=g, dtype=torch.float64) * torch.tensor(self.trans_std, dtype=torch.float64)
            R_cam = so3_exp(omega)
        else:
            u = 2 * torch.rand(n, 6, generator=g, dtype=torch.float64) - 1
            angles = u[:, :3] * torch.tensor(self.rot_range, dtype=torch.float64)
            delta = u[:, 3:] * torch.tensor(self.trans_range, dtype=torch.float64)
            # ZYX intrinsic about the camera's z, y, x axes
            R_cam = rotation_to_matrix(angles.flip(-1), "euler_angles", convention="ZYX")
        return self.compose(R_cam, delta).to(dtype=dtype, device=device)

    def compose(self, R_cam: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Pose from a rotation about the isocenter (camera-frame axes) and a camera-frame translation."""
        Ri = self.isocenter_pose[:3, :3]
        R_world = Ri @ R_cam @ Ri.T  # same rotation, axes expressed in world
        iso = self.isocenter
        C = make_transform(R_world, iso - R_world @ iso)
        D = make_transform(torch.eye(3, dtype=torch.float64).expand(len(delta), 3, 3), delta)
        return C @ self.isocenter_pose @ D
