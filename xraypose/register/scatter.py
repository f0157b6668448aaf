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


def _model(dn: torch.Tensor, k: torch.Tensor, s: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """(n, 1, h, w) DRR scaled to [0, 1] → (n, K·S, h, w) models for ranges ``k`` (K,), fractions ``s``
    (S,) and a kernel of σ ``sigma_px`` pixels (at most a third of the image's larger side)."""
    P = torch.exp(-dn * k.to(dn.dtype).view(1, -1, 1, 1))  # (n, K, h, w)
    G = _smooth(P, sigma_px)
    out = -torch.log(P[:, :, None] + s.to(dn.dtype).view(1, 1, -1, 1, 1) * G[:, :, None])
    return out.reshape(dn.shape[0], -1, *dn.shape[-2:])


def _pooled(x: torch.Tensor, rows: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h <= rows:
        return x
    return F.adaptive_avg_pool2d(x, (rows, max(1, round(w * rows / h))))


def _smooth(P: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """``P`` (n, C, h, w) blurred by a Gaussian of σ ``sigma_px`` pixels (at most a third of the larger
    side); done at most :data:`CHOICE_ROWS` rows and resized back (bilinear) — the blur is wide, so
    the coarse grid loses nothing the scatter has, and a wide kernel on a fine image costs much."""
    from xraypose.register.objective import gaussian_kernel, separable_blur

    h, w = P.shape[-2:]
    Q = _pooled(P, CHOICE_ROWS)
    scale = Q.shape[-2] / h
    kernel = gaussian_kernel(min(max(0.3, sigma_px * scale), max(Q.shape[-2:]) / 3.0))
    G = separable_blur(Q, kernel, same=True)
    return G if Q.shape[-2:] == P.shape[-2:] else F.interpolate(G, size=(h, w), mode="bilinear", align_corners=False)


def _chosen_model(dn: torch.Tensor, k: torch.Tensor, s: torch.Tensor, g: torch.Tensor, sigmas_px) -> torch.Tensor:
    """(n, 1, h, w) scaled DRRs → their models at per-image range ``k`` (n,), fraction ``s`` (n,) and
    width index ``g`` (n,) into ``sigmas_px`` (one blur per width used)."""
    shape = (-1, 1, 1, 1)
    P = torch.exp(-dn * k.to(dn.dtype).view(shape))
    G = torch.zeros_like(P)
    for i, sig in enumerate(sigmas_px):
        sel = g == i
        if bool(sel.any()):
            G = torch.where(sel.view(shape), _smooth(P, float(sig)), G)
    return -torch.log(P + s.to(dn.dtype).view(shape) * G)


def scatter_drr(drr: torch.Tensor, tgt: torch.Tensor, sigmas_px, w: torch.Tensor | None = None,
                ranges=SCATTER_RANGES, fractions=SCATTER_FRACTIONS, group: int = 1):
    """The DRR with the scatter that best explains the X-ray.

    Args:
        drr: (n, 1, h, w) DRRs (line integrals in any units, thicker brighter), gradients flowing.
        tgt: (n, 1, h, w) the X-rays they are compared with.
        sigmas_px: the scatter widths tried (Gaussian σ in pixels of ``drr``).
        w: optional (n, 1, h, w) pixel weights of the comparison (the X-rays' masks).
        ranges, fractions: the grid of ``k`` and ``s`` (see the module).
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
    nk = len(ranges) * len(fractions)
    with torch.no_grad():
        d0, t0 = drr.detach()[::group], tgt.detach()[::group].to(drr.dtype)
        m = d0.shape[0]
        flat = d0.reshape(m, -1)
        lo, hi = flat.amin(-1).view(m, 1, 1, 1), flat.amax(-1).view(m, 1, 1, 1)
        dn0 = _pooled((d0 - lo) / (hi - lo).clamp_min(1e-12), CHOICE_ROWS)
        scale = dn0.shape[-2] / drr.shape[-2]
        wp = None
        if w is not None:  # the X-ray averaged over its weighted pixels; a pixel mostly masked drops out
            wd = w.detach()[::group].to(drr.dtype)
            wp = _pooled(wd, CHOICE_ROWS)
            tp = _pooled(wd * t0, CHOICE_ROWS) / wp.clamp_min(1e-12)
            wp = torch.where(wp >= 0.5, wp, torch.zeros_like(wp)).reshape(m, 1, -1)
        else:
            tp = _pooled(t0, CHOICE_ROWS)
        t = unit_standardise(tp.reshape(m, 1, -1), wp)
        scores = []
        for sig in sigmas_px:
            mod = _model(dn0, k, s, float(sig) * scale).reshape(m, nk, -1)
            scores.append((unit_standardise(mod, None if wp is None else wp.expand_as(mod)) * t).sum(-1))
        scores = torch.stack(scores, 1).nan_to_num(-2.0)  # (m, widths, K·S) weighted NCC
        best = scores.reshape(m, -1).argmax(-1).repeat_interleave(group)
        gi, rest = best // nk, best % nk
        ri, fi = rest // len(fractions), rest % len(fractions)
    lo, hi = drr.reshape(n, -1).amin(-1).view(n, 1, 1, 1), drr.reshape(n, -1).amax(-1).view(n, 1, 1, 1)
    dn = (drr - lo) / (hi - lo).clamp_min(1e-12)  # the scaling differentiated too: the model is a function of drr
    chosen = torch.stack([k[ri], s[fi], gi.to(torch.float64)], 1)
    return _chosen_model(dn, k[ri], s[fi], gi, sigmas_px), chosen
