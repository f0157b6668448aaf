"""Trilinear ray marching (reference backend, plain PyTorch).

The volume is the trilinear interpolant of the voxel values inside the volume
box (index ∈ [−½, n−½] along each axis, the same box Siddon's voxels fill; in
the outer half voxel the edge value is held), zero outside.  Each ray is
clipped to the box and integrated with the midpoint rule: N samples per ray,
the same N for every ray of the call, spread over each ray's own chord.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from xraypose.render.rays import clip_to_box


def support_box(shape, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    n = torch.tensor(shape, dtype=dtype, device=device)
    return torch.full_like(n, -0.5), n - 0.5


def n_samples_for_step(s_near, s_far, length, step_mm: float) -> int:
    """Samples per ray so that no ray's step exceeds ``step_mm``."""
    chord = ((s_far - s_near).clamp_min(0) * length).max()
    return max(1, int(math.ceil(float(chord) / step_mm)))


def integrate_trilinear(
    density: torch.Tensor,
    origin: torch.Tensor,
    direction: torch.Tensor,
    length: torch.Tensor,
    n_samples: int | None = None,
    step_mm: float | None = None,
) -> torch.Tensor:
    """Line integrals of the trilinear interpolant.

    Args:
        density: (C, I, J, K) attenuation per mm.
        origin: (B, 1, 3), direction: (B, R, 3) in voxel-index units (ray = o + s·d).
        length: (B, R) ray length in mm (s = 0 → 1).
        n_samples: samples per ray; or ``step_mm``: the largest step along any ray.
    Returns:
        (B, C, R) line integrals ∫ μ dl (dl in mm).
    """
    C, I, J, K = density.shape
    B, R, _ = direction.shape
    lo, hi = support_box((I, J, K), direction.dtype, direction.device)
    s_near, s_far = clip_to_box(origin, direction, lo, hi)
    span = (s_far - s_near).clamp_min(0.0)  # (B, R)
    if n_samples is None:
        n_samples = n_samples_for_step(s_near.detach(), s_far.detach(), length.detach(), step_mm)
    frac = (torch.arange(n_samples, dtype=direction.dtype, device=direction.device) + 0.5) / n_samples
    s = s_near.unsqueeze(-1) + span.unsqueeze(-1) * frac  # (B, R, N)
    pts = origin.unsqueeze(2) + s.unsqueeze(-1) * direction.unsqueeze(2)  # (B, R, N, 3) index (i, j, k)
    # grid_sample wants (x, y, z) = (k, j, i), normalised with align_corners=False.
    sizes = torch.tensor([K, J, I], dtype=pts.dtype, device=pts.device)
    grid = (2.0 * pts.flip(-1) + 1.0) / sizes - 1.0
    vol = density.to(pts.dtype).unsqueeze(0)  # (1, C, I, J, K)
    samples = F.grid_sample(
        vol, grid.reshape(1, B * R, n_samples, 1, 3), mode="bilinear", padding_mode="border", align_corners=False
    )  # (1, C, B*R, N, 1)
    sums = samples.reshape(C, B, R, n_samples).sum(-1)  # (C, B, R)
    return (sums * (span * length / n_samples)).permute(1, 0, 2)
