"""Line integrals from an independent renderer: DiffDRR (optional dependency, ``pip install -e ".[bench]"``).

DiffDRR renders *our* CT: its subject is built in memory from our Volume's
voxels and affine (``read(ScalarImage(tensor, affine), orientation=None,
center_volume=False)``, so its world is our world), with its own HU → density
model (air ≤ −800 HU → the soft-tissue minimum, bone > 350 HU, rescaled to
[0, 1]) and its own trilinear renderer.  Our pose and detector are converted
exactly with :func:`xraypose.converters.pose_to_diffdrr` and
:func:`~xraypose.converters.camera_to_diffdrr`.

Its trilinear renderer samples ``n_points`` points uniformly in the fraction
α ∈ [α_min, α_max] of each source → pixel segment; we give it the α range
that covers the CT box for every ray (from the box corners' depths) and
enough points that no step exceeds half the smallest voxel spacing, and we
render in chunks of rays (its ``patch_size``) to bound memory.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from xraypose.camera import Camera
from xraypose.converters import camera_to_diffdrr, pose_to_diffdrr
from xraypose.errors import InputError

if TYPE_CHECKING:
    from xraypose.volume import Volume

__all__ = ["diffdrr_available", "DiffDRRRenderer", "diffdrr_line_integrals", "diffdrr_scale_per_mm"]

F64 = torch.float64
_MAX_SAMPLES = 1 << 22  # samples per chunk of rays


def diffdrr_available() -> bool:
    try:
        import diffdrr.drr  # noqa: F401
    except Exception:
        return False
    return True


def _require():
    try:
        from diffdrr.data import read, transform_hu_to_density
        from diffdrr.drr import DRR
        from diffdrr.pose import RigidTransform
        from torchio import ScalarImage
    except Exception as e:  # missing, or broken by an incompatible torch
        raise InputError("the 'diffdrr' appearance family needs DiffDRR: pip install -e \".[bench]\" "
                         f"(import failed: {type(e).__name__}: {e})") from None
    return read, transform_hu_to_density, DRR, RigidTransform, ScalarImage


def diffdrr_scale_per_mm(volume: Volume) -> float:
    """μ per unit of DiffDRR's density in this CT: mean physical μ over mean DiffDRR density in the body.

    DiffDRR's density is in arbitrary units (rescaled by the CT's own minimum
    and maximum); this scale gives its line integrals the physical model's
    overall attenuation, so both families have comparable counts.
    """
    _, to_density, *_ = _require()
    hu = volume.data.detach().float().cpu()
    body = hu > -800.0
    if not bool(body.any()):
        raise InputError("the CT has no voxel above -800 HU (no body) to calibrate DiffDRR's density against")
    d = to_density(hu, 1.0)
    mu = volume.density("physical").detach().float().cpu()
    return float(mu[body].double().mean() / d[body].double().mean().clamp_min(1e-12))


def _alpha_range(corners: torch.Tensor, camera: Camera, pose: torch.Tensor) -> tuple[float, float]:
    T = pose.to(F64)
    depth = (corners.to(F64) - T[:3, 3]) @ T[:3, 2]  # z in the camera frame
    lo = max(0.0, float(depth.min()) / camera.sdd)
    hi = min(1.0, float(depth.max()) / camera.sdd)
    if hi <= lo:
        raise InputError("the CT lies behind the X-ray source or beyond the detector in this pose")
    return lo, hi


class DiffDRRRenderer:
    """DiffDRR's DRR module for one CT and one detector, built once; call it with our (4, 4) pose.

    Returns (H, W) float64 line integrals of DiffDRR's density (density · mm).
    """

    def __init__(self, volume: Volume, camera: Camera):
        read, _, DRR, self._rigid, ScalarImage = _require()
        data = volume.data.detach().float().cpu()[None]
        subject = read(ScalarImage(tensor=data, affine=volume.affine.numpy()), orientation=None,
                       center_volume=False)
        self.corners, self.camera = volume.corners.clone(), camera  # (no reference to the volume: cached per volume)
        # the longest ray reaches a detector corner
        K = camera.K(F64)
        corners = torch.tensor([[0.0, 0.0], [camera.width - 1.0, 0.0], [0.0, camera.height - 1.0],
                                [camera.width - 1.0, camera.height - 1.0]], dtype=F64)
        xy = (corners - K[:2, 2]) / torch.stack([K[0, 0], K[1, 1]])
        self._longest = camera.sdd * float(torch.sqrt(1 + (xy**2).sum(-1)).max())
        self._step = 0.5 * float(volume.spacing.min())
        rays = camera.height * camera.width
        # chunks of rays (DiffDRR's patch_size) sized for the longest ray through the CT's diagonal
        diag = float(volume.extent_mm.norm())
        n_max = int(math.ceil(diag / self._step)) + 1
        patch = max(1, int(math.sqrt(max(1, _MAX_SAMPLES // n_max))))
        patch = min(patch, int(math.sqrt(rays)))
        self.drr = DRR(subject, renderer="trilinear", patch_size=patch, **camera_to_diffdrr(camera))

    def __call__(self, pose: torch.Tensor, step_mm: float | None = None) -> torch.Tensor:
        """Render at ``pose``; ``step_mm`` bounds the sampling step along every ray (default half the
        smallest voxel spacing)."""
        step = self._step if step_mm is None else float(step_mm)
        if not (step > 0 and math.isfinite(step)):
            raise InputError(f"DiffDRR's sampling step must be > 0 mm, got {step_mm!r}")
        a0, a1 = _alpha_range(self.corners, self.camera, pose)
        n_points = int(math.ceil((a1 - a0) * self._longest / step)) + 1
        M = pose_to_diffdrr(pose.to(F64)).to(torch.float32)[None]
        with torch.no_grad():
            img = self.drr(self._rigid(M), n_points=n_points, alphamin=a0, alphamax=a1)
        return img[0, 0].to(F64)


def diffdrr_line_integrals(volume: Volume, camera: Camera, pose: torch.Tensor) -> torch.Tensor:
    """(H, W) float64: DiffDRR's trilinear line integrals of its density (density · mm) on ``camera``."""
    return DiffDRRRenderer(volume, camera)(pose)
