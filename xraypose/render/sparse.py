"""Pixel lists for sparse rendering: masks and square patches."""

from __future__ import annotations

import torch

from xraypose.camera import Camera
from xraypose.errors import InputError


def mask_pixels(mask: torch.Tensor, camera: Camera) -> torch.Tensor:
    """(H, W) boolean mask → (R, 2) pixel coordinates (u, v) of its True pixels, row-major."""
    if mask.shape != (camera.height, camera.width):
        raise InputError(
            f"mask is {tuple(mask.shape)} but the detector is {camera.height}×{camera.width}"
        )
    v, u = torch.nonzero(mask.bool(), as_tuple=True)
    return torch.stack([u, v], dim=-1)


def patch_pixels(centers: torch.Tensor, size: int) -> torch.Tensor:
    """Square patches of ``size``×``size`` pixels around integer centres.

    Args:
        centers: (P, 2) or (B, P, 2) pixel centres (u, v); for even sizes the
            centre is the pixel just after the middle.
        size: patch side in pixels (>= 1).
    Returns:
        (..., P·size·size, 2) pixel coordinates (u, v), patch-major, then row-major.
    """
    if size < 1:
        raise InputError(f"patch size must be >= 1 pixel, got {size}")
    off = torch.arange(size, device=centers.device) - size // 2
    dv, du = torch.meshgrid(off, off, indexing="ij")
    offsets = torch.stack([du.reshape(-1), dv.reshape(-1)], dim=-1).to(centers.dtype)  # (S², 2)
    pts = centers.round().unsqueeze(-2) + offsets  # (..., P, S², 2)
    return pts.reshape(*centers.shape[:-2], -1, 2)
