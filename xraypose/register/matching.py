"""An X-ray's intensities mapped onto a DRR's by their quantiles (a monotone display curve undone).

Clinical systems store X-rays through a display curve — a log or linear LUT, a gamma, a window —
that the DRR's line integrals do not share; normalised cross-correlation only forgives an affine
relation.  :func:`match_quantiles` maps each X-ray value onto the DRR value of the same quantile
(histogram matching): any monotone increasing curve is undone, whatever its form, as far as the
two images show the same anatomy.  The DRR is rendered at the registration's current pose, so the
map is only as good as that pose: by default the finer levels use it where the map is clearly
curved, the capture levels only with ``match_capture`` (see
:attr:`xraypose.register.config.RegistrationConfig.match_intensity`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["QuantileMap", "quantile_map", "match_quantiles", "area_pooled", "KNOTS"]

#: Quantile knots of the map (equally spaced in probability, the ends included).
KNOTS = 33


@dataclass
class QuantileMap:
    """A monotone piecewise-linear map of X-ray values onto DRR values.

    Attributes:
        x: (k,) increasing knots in the X-ray's values; y: (k,) their DRR values (non-decreasing).
        nonlinearity: how far the map departs from a straight line: the largest distance of an
            inner knot (the two outermost at each end left out) from the least-squares line
            through all knots, both axes standardised (0: affine, which NCC forgives anyway).
    """

    x: torch.Tensor
    y: torch.Tensor
    nonlinearity: float

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` (any shape) mapped; same dtype.  Beyond the end knots: a line of the map's
        overall slope (values the quantiles did not reach: a pooled image's extremes)."""
        return _interp(image.detach().to(torch.float64), self.x, self.y).to(image.dtype)


def quantile_map(target: torch.Tensor, drr: torch.Tensor, weights: torch.Tensor | None = None,
                 knots: int = KNOTS, size: int | None = None) -> QuantileMap | None:
    """The map taking ``target``'s values to the DRR's value of the same quantile.

    Args:
        target: (h, w) an X-ray (bone bright, as registration compares it).
        drr: (h', w') a DRR of the same anatomy: of the same pixels as ``target`` (then the
            same pixels count in both), or of any size (then only its values count).
        weights: optional (h, w) pixel weights of ``target``; pixels with weight < 0.5 do not
            count in its quantiles (nor in the DRR's, when it has ``target``'s shape): a masked
            plateau must not be matched to the anatomy the DRR shows there.
        knots: quantiles of the piecewise-linear map (equally spaced, 0 and 1 included).
        size: when given, the quantiles are taken of both images area-averaged to at most this
            many rows (noise, which widens an X-ray's histogram but not the DRR's, averages out).
    Returns:
        The map, or None when either image has fewer finite (weighted) pixels than ``knots`` or
        ``target`` is constant.  Values shared by several knots (a plateau: saturation, a
        shutter) map to the mean of their DRR values.
    """
    x = target.detach().to(torch.float64)
    wq = None if weights is None else weights.detach().reshape(x.shape).to(torch.float64)
    dq = drr.detach().to(torch.float64)
    if size is not None:
        x, wq, dq = area_pooled(x, size), None if wq is None else area_pooled(wq, size), area_pooled(dq, size)
    keep = torch.isfinite(x)
    if wq is not None:
        keep &= wq >= 0.5
    xs = x[keep]
    d = dq[keep & torch.isfinite(dq)] if dq.shape == x.shape else dq.reshape(-1)[torch.isfinite(dq.reshape(-1))]
    if xs.numel() < knots or d.numel() < knots:
        return None
    p = torch.linspace(0.0, 1.0, knots, dtype=torch.float64)
    qx, qd = torch.quantile(xs, p), torch.quantile(d, p)
    ux, inv = torch.unique(qx, return_inverse=True)
    if ux.numel() < 2:
        return None
    ud = torch.zeros_like(ux).index_add_(0, inv, qd) / torch.zeros_like(ux).index_add_(0, inv, torch.ones_like(qd))
    return QuantileMap(ux, ud, _nonlinearity(qx, qd))


def match_quantiles(target: torch.Tensor, drr: torch.Tensor, weights: torch.Tensor | None = None,
                    knots: int = KNOTS, size: int | None = None) -> torch.Tensor:
    """``target`` (h, w) mapped monotonically so that its histogram is the DRR's
    (:func:`quantile_map`, then :meth:`QuantileMap.apply`); ``target`` itself where no map can
    be made.  Every pixel is mapped, weighted or not."""
    m = quantile_map(target, drr, weights, knots, size)
    return target if m is None else m.apply(target)


def _nonlinearity(qx: torch.Tensor, qd: torch.Tensor) -> float:
    sx, sd = qx.std(), qd.std()
    if not (float(sx) > 0 and float(sd) > 0) or qx.numel() < 6:
        return 0.0
    a, b = (qx - qx.mean()) / sx, (qd - qd.mean()) / sd
    A = torch.stack([a, torch.ones_like(a)], 1)
    fit = A @ torch.linalg.lstsq(A, b[:, None]).solution
    return float((b - fit[:, 0])[2:-2].abs().max())


def area_pooled(img: torch.Tensor, size: int) -> torch.Tensor:
    """``img`` (..., h, w) area-averaged to at most ``size`` rows (columns in proportion); as it is when
    it has no more rows."""
    h, w = img.shape[-2:]
    if h <= size:
        return img
    s = (size, max(1, round(w * size / h)))
    return torch.nn.functional.adaptive_avg_pool2d(img.reshape(-1, 1, h, w), s).reshape(*img.shape[:-2], *s)


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear through (xp, fp), ``xp`` increasing; beyond the ends a straight line of the
    map's overall slope (values the quantiles did not reach: a pooled image's extremes)."""
    xc = x.clamp(xp[0], xp[-1])
    i = torch.searchsorted(xp, xc.contiguous()).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    t = ((xc - x0) / (x1 - x0)).clamp(0, 1)
    slope = (fp[-1] - fp[0]) / (xp[-1] - xp[0])
    return f0 + t * (f1 - f0) + slope * (x - xc)
