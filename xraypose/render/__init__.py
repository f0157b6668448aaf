"""Differentiable DRR rendering: trilinear ray marching and Siddon, behind one :func:`render`."""

from xraypose.render.core import BACKENDS, RENDERERS, analytic_tangents, default_step, render, render_with_tangents
from xraypose.render.drr import DENSITY_MODELS, DRR, density_basis
from xraypose.render.sparse import mask_pixels, patch_pixels

__all__ = [
    "BACKENDS", "RENDERERS", "DENSITY_MODELS", "DRR", "default_step", "density_basis", "mask_pixels",
    "patch_pixels", "render", "render_with_tangents", "analytic_tangents",
]
