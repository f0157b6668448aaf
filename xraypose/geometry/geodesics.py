"""Distances between rigid poses (rotation angle, translation, SE(3), double geodesic).

All functions take poses ``T1, T2 (..., 4, 4)`` (leading dims broadcast) and
return ``(...)``.  Angles in radians, distances in mm.  Gradients are finite
everywhere, including at ``T1 == T2`` (zero subgradient there).
"""

from __future__ import annotations

import math

import torch

from ..errors import InputError
from ._numerics import check_matrix, safe_norm, safe_sqrt
from .rigid import invert
from .se3 import se3_log
from .so3 import rotation_angle

__all__ = [
    "geodesic_rotation",
    "geodesic_translation",
    "geodesic_se3",
    "double_geodesic",
    "DoubleGeodesic",
]


def _check_pair(T1: torch.Tensor, T2: torch.Tensor) -> None:
    check_matrix(T1, 4, "T1")
    check_matrix(T2, 4, "T2")


def geodesic_rotation(T1: torch.Tensor, T2: torch.Tensor) -> torch.Tensor:
    """Angle of ``R1ᵀ R2`` in ``[0, π]`` rad (the SO(3) geodesic distance); T1, T2 (..., 4, 4) → (...)."""
    _check_pair(T1, T2)
    R1, R2 = T1[..., :3, :3], T2[..., :3, :3]
    return rotation_angle(R1.transpose(-1, -2) @ R2)


def geodesic_translation(T1: torch.Tensor, T2: torch.Tensor) -> torch.Tensor:
    """Euclidean distance ``|t1 - t2|`` (mm) between the translations; T1, T2 (..., 4, 4) → (...)."""
    _check_pair(T1, T2)
    return safe_norm(T1[..., :3, 3] - T2[..., :3, 3])


def geodesic_se3(T1: torch.Tensor, T2: torch.Tensor) -> torch.Tensor:
    """Norm of the twist ``se3_log(invert(T1) @ T2)`` (mixes rad and mm); T1, T2 (..., 4, 4) → (...)."""
    _check_pair(T1, T2)
    return safe_norm(se3_log(invert(T1) @ T2))


def _check_sdr(sdr) -> None:
    if isinstance(sdr, torch.Tensor):
        if sdr.numel() == 1:
            sdr = float(sdr)
        else:
            return  # per-sample radii: trusted
    try:
        ok = math.isfinite(float(sdr)) and float(sdr) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"sdr (source-to-detector radius, mm) must be a positive number, got {sdr!r}")


def double_geodesic(T1: torch.Tensor, T2: torch.Tensor, sdr) -> torch.Tensor:
    """DiffPose's double geodesic ``sqrt((sdr·θ)² + |t1 - t2|²)`` in mm.

    Args:
        T1, T2: ``(..., 4, 4)`` poses.
        sdr: radius (mm) that turns the angle θ (rad) into mm of arc — the
            source-to-detector radius (DiffPose uses the source-to-isocenter
            distance); a positive float or a tensor broadcastable to ``(...)``.
    Returns:
        ``(...)``.
    """
    _check_sdr(sdr)
    rot = sdr * geodesic_rotation(T1, T2)
    trans = geodesic_translation(T1, T2)
    return safe_sqrt(rot * rot + trans * trans)


class DoubleGeodesic:
    """Callable loss helper: ``DoubleGeodesic(sdr)(T1, T2) -> (rot_mm, trans_mm, double_mm)``.

    ``rot_mm = sdr · geodesic_rotation``, ``trans_mm = geodesic_translation``,
    ``double_mm = sqrt(rot_mm² + trans_mm²)``; each of shape ``(...)``.
    """

    def __init__(self, sdr) -> None:
        _check_sdr(sdr)
        self.sdr = sdr

    def __call__(self, T1: torch.Tensor, T2: torch.Tensor):
        rot = self.sdr * geodesic_rotation(T1, T2)
        trans = geodesic_translation(T1, T2)
        return rot, trans, safe_sqrt(rot * rot + trans * trans)

    def __repr__(self) -> str:
        return f"DoubleGeodesic(sdr={self.sdr!r})"
