"""The log of a few photons without its bias: the expected ``log(n + offset)`` of a Poisson count, inverted.

A raw X-ray's pixel holds ``n ~ Poisson(λ)`` photons; registration compares line integrals ``log λ₀ − log λ``.
Taken pixel by pixel, ``log(n + ½)`` (preprocess's half photon, which keeps ``n = 0`` finite) is nearly
unbiased only while λ ≳ 3: its expectation :func:`expected_log` is ``log λ + 0.17`` at λ = 1 and tends to
``log ½`` as λ → 0, a compression of the darkest (thickest) paths.  On low-dose abdominal fluoroscopy (median
pixel ~3 photons) that compression is what the fine level's closed-form tissue fit absorbs, and it moved the
tracked depth toward the source (docs/registration.md, "A depth bias the fine level's fits carry on low-dose
raw frames").  :func:`unbiased_log` maps a mean of such logs back through the expectation's inverse, so that
its value is ``log λ`` on average wherever λ is above its floor.

No library offers this inverse (it is a one-dimensional table), hence here; the table is summed exactly
over the Poisson probabilities, in float64, once per offset.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

__all__ = ["expected_log", "unbiased_log", "LOG_TABLE_RANGE"]

#: (first, last, step) of the table's ``t = log λ`` grid (λ in photons).  Above ``last`` (λ ≈ 1100) the log's
#: bias is below 1e-6 and the inverse is the identity; below ``first`` nothing is left to tell apart.
LOG_TABLE_RANGE = (-8.0, 7.0, 0.005)


@lru_cache(maxsize=4)
def _table(offset: float) -> tuple[np.ndarray, np.ndarray]:
    """(t, g): ``g[i] = E[log(n + offset)]`` for ``n ~ Poisson(exp(t[i]))``, both (K,) float64, g increasing."""
    first, last, step = LOG_TABLE_RANGE
    t = np.arange(first, last + step / 2, step)
    g = np.empty_like(t)
    for i, ti in enumerate(t):
        lam = math.exp(ti)
        hi = int(lam + 15.0 * math.sqrt(lam) + 40.0)
        lo = max(0, int(lam - 15.0 * math.sqrt(lam) - 40.0))
        n = np.arange(lo, hi + 1, dtype=np.float64)
        logp = n * ti - lam - torch.lgamma(torch.from_numpy(n + 1.0)).numpy()
        p = np.exp(logp)
        g[i] = float((p * np.log(n + offset)).sum() / p.sum())
    return t, g


def expected_log(lam, offset: float = 0.5) -> torch.Tensor:
    """``E[log(n + offset)]`` for ``n ~ Poisson(lam)``: ``lam`` (...) photons (> 0), returns (...) float64.
    Above the table (λ > e⁷) ``log λ`` (the bias there is below 1e-6)."""
    t_grid, g = _table(float(offset))
    t = torch.log(torch.as_tensor(lam, dtype=torch.float64))
    inside = np.interp(t.clamp(max=t_grid[-1]).numpy(), t_grid, g)
    return torch.where(t > t_grid[-1], t, torch.as_tensor(np.asarray(inside), dtype=torch.float64))


def unbiased_log(v: torch.Tensor, offset: float = 0.5, pixels: float = 1.0) -> torch.Tensor:
    """``log λ`` estimated from ``v``, (...) means of ``log(n + offset)`` over ``pixels`` Poisson counts each
    of mean λ: the inverse of :func:`expected_log` (its expectation is ``log λ`` up to the mean's curvature,
    a second-order term).  Where ``v`` lies at or below what λ = ``offset / pixels`` photons would give
    (every count of the mean 0, or nearly) the estimate is that floor, ``log(offset / pixels)``: the half
    photon per pixel that ``log(n + ½)`` stands for, shared by the pixels the mean was taken over.  Returns
    (...) in ``v``'s dtype."""
    t_grid, g = _table(float(offset))
    floor = math.log(offset / pixels)
    x = v.detach().to(torch.float64).cpu().numpy()
    inside = np.interp(np.minimum(x, g[-1]), g, t_grid)
    t = np.where(x > g[-1], x, inside)
    return torch.as_tensor(np.maximum(t, floor)).to(v.dtype).to(v.device)
