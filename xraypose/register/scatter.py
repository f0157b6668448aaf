"""Scatter in the DRR: the X-ray's smooth additive scatter modelled on the DRR, its strength fitted per DRR.

An X-ray's detector counts are primary plus scatter, ``I = P + S``; scatter is a smooth image of the
primary, ``S ≈ s · G_σ * P`` (scatter kernel superposition: each pencil beam spreads a wide, weak halo;
σ of several centimetres on the detector).  After the log the X-ray is ``−log(P + S)``: behind thick
anatomy, where ``P`` is small, scatter dominates and the X-ray shows the halo's smooth slope instead of
the bone.  No affine map of the DRR's line integrals explains that, and on such X-rays the capture's
similarity preferred poses 76–108 mm from the truth (scatter-to-primary 0.23–0.42, σ 44–55 mm).

:func:`scatter_drr` puts the same process on the DRR: the DRR ``d`` (line integrals, any units) is
scaled to ``k·d̂`` (``d̂`` the DRR from 0 at its thinnest pixel to 1 at its thickest, ``k`` the
field's range of line integrals, which the DRR's units do not give), turned into a primary
``P = exp(−k·d̂)`` and its scatter ``s·G_σ*P`` added::

    D(k, s, σ) = −log(P + s · G_σ * P)

``(k, s, σ)`` is chosen per DRR from a small grid (:data:`SCATTER_RANGES`, :data:`SCATTER_FRACTIONS`,
the level's widths) by the weighted NCC with the X-ray, without gradient; the pose's gradient then
flows through ``D`` at the chosen values.  ``s = 0`` is in the grid and gives ``k·d̂``, the DRR itself
up to an affine map (which NCC forgives), so the model never scores a DRR below the plain one.

Hand-written because no library fits a scatter model inside a differentiable registration; the
kernel model is the standard first-order one (e.g. Ohnesorge et al., Eur Radiol 1999; Sun and
Star-Lack, Phys Med Biol 2010).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xraypose.register.matching import area_pooled
from xraypose.register.measures import unit_standardise

__all__ = ["scatter_drr", "SCATTER_RANGES", "SCATTER_FRACTIONS", "CHOICE_ROWS"]

#: The field's range of line integrals tried, ``k`` (thinnest to thickest pixel, in units of
#: ln(I0/I)): from a limb (0.5) to a lateral pelvis (8).
SCATTER_RANGES = (0.5, 1.0, 2.0, 3.0, 4.5, 6.0, 8.0)

#: Scatter relative to the thinnest pixel's primary, ``s``: 0 (none) to 1 (a scatter-to-primary
#: ratio above 1 behind thick anatomy).
SCATTER_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.35, 0.6, 1.0)


#: The choice of ``(k, s, σ)`` is made on the DRR and X-ray area-averaged to at most this many rows:
#: scatter is smooth, and the grid then costs little at the fine levels.
CHOICE_ROWS = 32


def _smooth(P: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """``P`` (n, C, h, w) blurred by a Gaussian of σ ``sigma_px`` pixels (at most a third of the larger
    side); done at most :data:`CHOICE_ROWS` rows and resized back (bilinear) — the blur is wide, so
    the coarse grid loses nothing the scatter has, and a wide kernel on a fine image costs much."""
    from xraypose.register.objective import gaussian_kernel, separable_blur

    h, w = P.shape[-2:]
    Q = area_pooled(P, CHOICE_ROWS)
    kernel = gaussian_kernel(min(max(0.3, sigma_px * Q.shape[-2] / h), max(Q.shape[-2:]) / 3.0))
    G = separable_blur(Q, kernel, same=True)
    return G if Q.shape[-2:] == P.shape[-2:] else F.interpolate(G, size=(h, w), mode="bilinear", align_corners=False)


def _forward(dn: torch.Tensor, k: torch.Tensor, s: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """The model ``−log(P + s·G_σ*P)``, ``P = exp(−k·d̂)``, of scaled DRRs ``dn`` (n, 1, h, w) for ranges
    ``k`` (n or 1, K, 1, 1) and fractions ``s`` (n or 1, K or 1, S, 1, 1): (n, K, S, h, w); one blur
    per range."""
    P = torch.exp(-dn * k.to(dn.dtype))  # (n, K, h, w)
    return -torch.log(P[:, :, None] + s.to(dn.dtype) * _smooth(P, sigma_px)[:, :, None])


def scatter_drr(drr: torch.Tensor, tgt: torch.Tensor, sigmas_px, w: torch.Tensor | None = None,
                ranges=SCATTER_RANGES, fractions=SCATTER_FRACTIONS, group: int = 1):
    """The DRR with the scatter that best explains the X-ray.

    Args:
        drr: (n, 1, h, w) DRRs (line integrals in any units, thicker brighter), gradients flowing.
        tgt: (n, 1, h, w) the X-rays they are compared with.
        sigmas_px: the scatter widths tried (Gaussian σ in pixels of ``drr``).
        w: optional (n, 1, h, w) pixel weights of the comparison (the X-rays' masks).
        ranges, fractions: the grid of ``k`` and ``s`` (see the module; ``fractions[0]`` must be 0).
        group: the DRRs come in consecutive groups of this many (a pose, then its linearised
            neighbours: :meth:`~xraypose.register.objective.LevelObjective.residual_along`); the
            choice is made on each group's first and held for the rest, so that a neighbour's
            residual differs from its pose's by the pose's change only (a choice switching between
            neighbours would break the finite differences Levenberg–Marquardt builds on).
    Returns:
        (model (n, 1, h, w) with gradients through ``drr``, (n, 3) float64 the chosen ``k``, ``s``
        and index into ``sigmas_px`` per DRR).  The choice is made at most :data:`CHOICE_ROWS` rows
        (both images area-averaged, σ scaled alike; an X-ray pixel mostly masked drops out), the
        model returned at ``drr``'s size.
    """
    n = drr.shape[0]
    if group < 1 or n % group:
        raise ValueError(f"{n} DRRs do not come in groups of {group}")
    k = torch.tensor(ranges, dtype=torch.float64)
    s = torch.tensor(fractions, dtype=torch.float64)
    K, S = len(ranges), len(fractions)
    flat = drr.reshape(n, -1)
    lo, hi = flat.amin(-1).view(n, 1, 1, 1), flat.amax(-1).view(n, 1, 1, 1)
    dn = (drr - lo) / (hi - lo).clamp_min(1e-12)  # the scaling differentiated too: the model is a function of drr
    with torch.no_grad():
        dn0 = area_pooled(dn.detach()[::group], CHOICE_ROWS)
        m, scale = dn0.shape[0], dn0.shape[-2] / drr.shape[-2]
        t0 = tgt.detach()[::group].to(drr.dtype)
        wp = None
        if w is not None:  # the X-ray averaged over its weighted pixels; a pixel mostly masked drops out
            wd = w.detach()[::group].to(drr.dtype)
            wp = area_pooled(wd, CHOICE_ROWS)
            tp = area_pooled(wd * t0, CHOICE_ROWS) / wp.clamp_min(1e-12)
            wp = torch.where(wp >= 0.5, wp, torch.zeros_like(wp)).reshape(m, 1, -1)
        else:
            tp = area_pooled(t0, CHOICE_ROWS)
        t = unit_standardise(tp.reshape(m, 1, -1), wp)
        scores = []
        for sig in sigmas_px:
            mod = _forward(dn0, k.view(1, K, 1, 1), s.view(1, 1, S, 1, 1), float(sig) * scale).reshape(m, K * S, -1)
            scores.append((unit_standardise(mod, None if wp is None else wp.expand_as(mod)) * t).sum(-1))
        best = torch.stack(scores, 1).nan_to_num(-2.0).reshape(m, -1).argmax(-1)  # weighted NCC, (m, widths·K·S)
        best = best.repeat_interleave(group)
        gi, ri, fi = best // (K * S), best % (K * S) // S, best % S
    parts, order = [], []
    for i, sig in enumerate(sigmas_px):  # each DRR blurred at its own width only
        idx = (gi == i).nonzero()[:, 0]
        if idx.numel():
            q = _forward(dn[idx], k[ri[idx]].view(-1, 1, 1, 1), s[fi[idx]].view(-1, 1, 1, 1, 1), float(sig))
            parts.append(q[:, :, 0])
            order.append(idx)
    out = torch.cat(parts)[torch.argsort(torch.cat(order))]
    return out, torch.stack([k[ri], s[fi], gi.to(torch.float64)], 1)
