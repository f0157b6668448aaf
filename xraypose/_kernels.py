"""The Gaussian kernel, written once (internal).

:func:`gaussian_weights` is ``exp(−x²/2σ²)`` at the whole-pixel offsets ``x = −radius … radius``;
:func:`gaussian_kernel1d` normalises it to sum 1.  ``sigma`` (pixels) is a number, or a tensor
``(B, 1)`` for one kernel per row ``(B, 2·radius + 1)``.  The weights are computed in ``dtype``, so a
caller that blurred in float32 keeps its float32 rounding.  :func:`three_sigma_radius` is the radius
most blurs use, ``max(1, ⌈3σ⌉)`` pixels.

Users: the registration's DRR blur (:mod:`xraypose.register.objective`), the confidence check's
residual blur, the initialiser's anti-alias prefilter, :func:`xraypose.preprocess.gaussian_blur`
(a kernel size given in pixels), the simulator's focal spot (radius ``round(3σ)``), the appearance
detector and the training blur augmentation.
"""

from __future__ import annotations

import math

import torch

__all__ = ["gaussian_weights", "gaussian_kernel1d", "three_sigma_radius"]


def three_sigma_radius(sigma: float) -> int:
    """``max(1, ⌈3σ⌉)`` pixels for ``sigma`` in pixels: the kernel radius of most blurs here."""
    return max(1, int(math.ceil(3 * sigma)))


def gaussian_weights(sigma, radius: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``exp(−x²/2σ²)`` for ``x = −radius … radius`` pixels: ``(2·radius + 1,)``, or ``(B, 2·radius + 1)`` when
    ``sigma`` is a ``(B, 1)`` tensor; not normalised."""
    x = torch.arange(-radius, radius + 1, dtype=dtype)
    return torch.exp(-0.5 * (x / sigma) ** 2)


def gaussian_kernel1d(sigma, radius: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """:func:`gaussian_weights` normalised to sum 1 along the last dimension."""
    w = gaussian_weights(sigma, radius, dtype)
    return w / w.sum(-1, keepdim=True)
