"""Rays from the X-ray source to detector pixels, in world and in voxel-index space."""

from __future__ import annotations

import torch

from xraypose.camera import Camera


def world_rays(camera: Camera, camera_to_world: torch.Tensor, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Source and detector-pixel positions in world mm.

    Args:
        camera: intrinsics.
        camera_to_world: (B, 4, 4) poses.
        uv: (R, 2) or (B, R, 2) pixel coordinates (u, v).
    Returns:
        source (B, 3) and target (B, R, 3), world mm; ray point = source + s·(target − source), s ∈ [0, 1].
    """
    if uv.dim() == 2:
        uv = uv.unsqueeze(0).expand(camera_to_world.shape[0], -1, -1)
    target = camera.backproject(uv.to(camera_to_world.dtype), camera_to_world)
    return camera_to_world[:, :3, 3], target


def to_index_space(
    world_to_index: torch.Tensor, source: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Express rays in continuous voxel-index coordinates (i, j, k).

    Args:
        world_to_index: (4, 4) inverse of the volume's affine.
        source: (B, 3) world mm.  target: (B, R, 3) world mm.
    Returns:
        origin (B, 1, 3) and direction (B, R, 3) in index units per unit of s
        (ray = origin + s·direction, s ∈ [0, 1]), and the ray length (B, R) in mm
        (so a step ds along s is ds·length mm).
    """
    A = world_to_index[:3, :3].to(source.dtype)
    b = world_to_index[:3, 3].to(source.dtype)
    o = source @ A.T + b  # (B, 3)
    p = target @ A.T + b  # (B, R, 3)
    direction = p - o.unsqueeze(1)
    length = (target - source.unsqueeze(1)).norm(dim=-1)
    return o.unsqueeze(1), direction, length


def clip_to_box(
    origin: torch.Tensor, direction: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slab-method intersection of rays with an axis-aligned box (in index space).

    Args:
        origin: (B, 1, 3); direction: (B, R, 3); lo, hi: (3,) box corners.
    Returns:
        s_near, s_far: (B, R), clamped to [0, 1]; s_far <= s_near means the ray misses.
    """
    eps = torch.finfo(direction.dtype).tiny ** 0.5
    small = direction.abs() < eps
    d = torch.where(small, torch.full_like(direction, eps), direction)
    t1 = (lo - origin) / d
    t2 = (hi - origin) / d
    tmin = torch.minimum(t1, t2)
    tmax = torch.maximum(t1, t2)
    # A ray parallel to a slab: inside it → no constraint; outside → miss.
    inside = ((origin >= lo) & (origin <= hi)).expand_as(direction)
    big = torch.full_like(tmin, float("inf"))
    tmin = torch.where(small, torch.where(inside, -big, big), tmin)
    tmax = torch.where(small, torch.where(inside, big, -big), tmax)
    s_near = tmin.amax(dim=-1).clamp(0.0, 1.0)
    s_far = tmax.amin(dim=-1).clamp(0.0, 1.0)
    return s_near, s_far
