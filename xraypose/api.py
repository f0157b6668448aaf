"""The library's high-level functions (what each CLI command calls)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from xraypose.camera import Camera

if TYPE_CHECKING:
    from xraypose.volume import Volume


def render_drr(
    volume: Volume,
    camera: Camera,
    camera_to_world: torch.Tensor,
    renderer: str = "trilinear",
    n_samples: int | None = None,
    step: float | None = None,
    density: str = "hu",
    bone_attenuation_multiplier: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Render one DRR (H, W) of line integrals at a camera_to_world pose (4, 4).

    Raises :class:`~xraypose.errors.InputError`, before rendering, when the DRR would not fit memory or a
    trilinear step would take more than :data:`~xraypose.limits.MAX_SAMPLES_PER_RAY` samples along a ray."""
    from xraypose.limits import check_drr_size, check_drr_step
    from xraypose.render import DRR
    from xraypose.render.core import default_step

    check_drr_size(camera.height, camera.width)
    if renderer == "trilinear" and n_samples is None:
        check_drr_step(default_step(volume.affine) if step is None else step, volume)
    T = torch.as_tensor(camera_to_world, dtype=dtype).reshape(-1, 4, 4)
    drr = DRR(volume, camera, density=density, renderer=renderer, n_samples=n_samples, step=step,
              bone_attenuation_multiplier=bone_attenuation_multiplier)
    with torch.no_grad():
        img = drr(T)
    return img[0, 0]
