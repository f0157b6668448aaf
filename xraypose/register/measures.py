"""Similarity measures written as residual vectors, for registration.

Every measure here is a weighted sum of normalised cross-correlations (NCC) of some
transform of the images, ``score = Σ_k w_k · NCC_k`` with ``Σ_k w_k = 1``.  An NCC is
``⟨x̂, ŷ⟩`` of the zero-mean, unit-norm images, and ``⟨x̂, ŷ⟩ = 1 − ½‖x̂ − ŷ‖²``, so::

    score = 1 − ½ ‖r‖²,      r = concat_k( √w_k · (x̂_k − ŷ_k) )

One residual serves both optimisers: Adam ascends ``score`` (its gradient by autograd)
and Levenberg–Marquardt minimises ``‖r‖²`` (Gauss–Newton curvature from the residual's
Jacobian).  (A constant image has x̂ = 0 and scores 0.5 here, not 0: registration treats
a DRR that is constant where the X-ray's pixels are weighed as a failed step before scoring it,
:func:`constant_rows` — a pose that moved the structure off its weighted pixels would otherwise
score 0.5, more than a true alignment of a weak similarity.)

Images come as dense ``(n, 1, h, w)`` stacks or as sparse patch stacks ``(n, P, S, S)``
(P patches of S×S pixels each); for the latter "the whole image" means all rendered
pixels and gradients are taken inside each patch.

Measures (:data:`MEASURES`, one registry):

* ``"ncc"`` — NCC of the whole image.
* ``"mncc"`` — DiffPose's multiscale NCC: ``w0``·NCC(whole) + ``w1``·mean NCC of
  non-overlapping ``patch``² patches (default 0.5/0.5, 13 px).
* ``"gncc"`` — gradient NCC: NCC of the Sobel derivatives along u and v (both
  together).  Insensitive to smooth intensity changes (scatter, vignetting, heel
  effect) and to the soft-tissue level; measured the least biased on X-rays formed
  unlike the DRR (docs/registration.md).
* ``"mixed"`` — ``alpha``·mncc + (1 − ``alpha``)·gncc.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from xraypose.errors import InputError
from xraypose.names import SIMILARITY_MEASURES

__all__ = ["MEASURES", "Measure", "OFF_PIXEL", "constant_rows", "residual", "score_from_residual", "unit_standardise"]

_EPS = 1e-8


def unit_standardise(x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """Zero mean, unit norm along the last axis (``(..., N)``): the population standardisation of
    :func:`xraypose.similarity.ncc` divided by √N, so that ⟨x̂, ŷ⟩ is the NCC.  With weights ``w``
    (same shape, >= 0): the weighted mean and norm, and ``x̂ = √w·(x − mean)/norm`` so that
    ⟨x̂, ŷ⟩ is the weighted NCC."""
    if w is None:
        x = x - x.mean(-1, keepdim=True)
        n = x.shape[-1]
        return x / ((x.pow(2).mean(-1, keepdim=True) + _EPS).sqrt() * n ** 0.5)
    w = w.to(x.dtype)
    sw = w.sum(-1, keepdim=True).clamp_min(1e-12)
    x = x - (w * x).sum(-1, keepdim=True) / sw
    x = w.sqrt() * x
    return x / ((x.pow(2).sum(-1, keepdim=True) / sw + _EPS).sqrt() * sw.sqrt())


def _sobel(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) → (N, 2C, H−2, W−2) Sobel derivatives along u and v (as
    :func:`xraypose.similarity.gradient_ncc`)."""
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=x.dtype, device=x.device)
    C = x.shape[1]
    weight = torch.stack([k, k.T]).unsqueeze(1).repeat(C, 1, 1, 1)
    return F.conv2d(x, weight, groups=C)


def _whole(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """(n, ...) → (n, M) residual of the NCC over everything (weighted by ``w`` of x's shape)."""
    n = x.shape[0]
    wf = None if w is None else w.reshape(n, -1)
    return unit_standardise(x.reshape(n, -1), wf) - unit_standardise(y.reshape(n, -1), wf)


def _patches(x: torch.Tensor, y: torch.Tensor, patch: int, sparse: bool, w=None) -> torch.Tensor:
    """Residual of the mean NCC over patches: (n, M), scaled by 1/√(number of patches)."""
    n = x.shape[0]
    if sparse:  # (n, P, S, S): the rendered patches
        px, py = x.reshape(n, x.shape[1], -1), y.reshape(n, y.shape[1], -1)
        pw = None if w is None else w.reshape(n, w.shape[1], -1)
    else:
        H, W = x.shape[-2:]
        if patch > min(H, W):
            return _whole(x, y, w)
        px = F.unfold(x, patch, stride=patch).transpose(1, 2)  # (n, L, C·p²)
        py = F.unfold(y, patch, stride=patch).transpose(1, 2)
        pw = None if w is None else F.unfold(w, patch, stride=patch).transpose(1, 2)
    L = px.shape[1]
    return ((unit_standardise(px, pw) - unit_standardise(py, pw)) / L ** 0.5).reshape(n, -1)


def _gradients(x: torch.Tensor, sparse: bool) -> torch.Tensor:
    if sparse:  # Sobel inside each patch
        n, P, S, _ = x.shape
        return _sobel(x.reshape(n * P, 1, S, S)).reshape(n, -1)
    return _sobel(x)


def _gradient_weights(w: torch.Tensor | None, sparse: bool) -> torch.Tensor | None:
    """Pixel weights → weights of the Sobel derivatives: the smallest weight of each 3×3 stencil."""
    if w is None:
        return None
    if sparse:
        n, P, S, _ = w.shape
        m = -F.max_pool2d(-w.reshape(n * P, 1, S, S), 3, stride=1)
        return m.repeat(1, 2, 1, 1).reshape(n, -1)
    m = -F.max_pool2d(-w, 3, stride=1)  # (n, 1, h−2, w−2)
    return m.repeat(1, 2, 1, 1)


def _ncc(x, y, sparse, w=None, **_):
    return [(1.0, _whole(x, y, w))]


def _mncc(x, y, sparse, weights=(0.5, 0.5), patch=13, w=None, **_):
    return [(float(weights[0]), _whole(x, y, w)), (float(weights[1]), _patches(x, y, patch, sparse, w))]


def _gncc(x, y, sparse, w=None, **_):
    return [(1.0, _whole(_gradients(x, sparse), _gradients(y, sparse), _gradient_weights(w, sparse)))]


def _mixed(x, y, sparse, alpha=0.5, weights=(0.5, 0.5), patch=13, w=None, **_):
    a = float(alpha)
    return ([(a * wt, r) for wt, r in _mncc(x, y, sparse, weights, patch, w)]
            + [((1 - a) * wt, r) for wt, r in _gncc(x, y, sparse, w)])


@dataclass(frozen=True)
class Measure:
    """A similarity measure: ``terms(x, y, sparse, **options) -> [(weight, residual (n, M))]``."""

    name: str
    terms: Callable
    description: str


MEASURES: dict[str, Measure] = {m.name: m for m in (
    Measure("mncc", _mncc, "multiscale NCC: whole image + patches (DiffPose)"),
    Measure("ncc", _ncc, "NCC of the whole image"),
    Measure("gncc", _gncc, "NCC of the Sobel gradients"),
    Measure("mixed", _mixed, "alpha·mncc + (1 − alpha)·gncc"),
)}
if tuple(MEASURES) != SIMILARITY_MEASURES:  # configurations validate against the torch-free list
    raise AssertionError(f"xraypose.names.SIMILARITY_MEASURES {SIMILARITY_MEASURES} != MEASURES {tuple(MEASURES)}")


def residual(name: str, drr: torch.Tensor, target: torch.Tensor, *, sparse: bool = False, **options) -> torch.Tensor:
    """The measure's residual ``r`` (n, M) with ``score = 1 − ½‖r‖²`` (weights folded in).

    Args:
        name: a key of :data:`MEASURES`.
        drr, target: (n, 1, h, w) images, or (n, P, S, S) patch stacks with ``sparse=True``.
        options: ``weights`` (mncc), ``patch`` (mncc's patch side), ``alpha`` (mixed), ``w``: pixel
            weights (the images' shape, >= 0, no gradient) for a weighted measure.
    """
    if name not in MEASURES:
        raise InputError(f"unknown similarity {name!r}; choose one of {', '.join(MEASURES)}")
    if drr.shape != target.shape:
        raise InputError(f"images to compare have different shapes: {tuple(drr.shape)} and {tuple(target.shape)}")
    terms = MEASURES[name].terms(drr, target, sparse, **options)
    total = sum(w for w, _ in terms)
    return torch.cat([(w / total) ** 0.5 * r for w, r in terms if w > 0], dim=-1)


#: :func:`constant_rows`'s penalty on pixels not kept (added to the minimum, taken from the maximum).
OFF_PIXEL = 1e30


def constant_rows(x: torch.Tensor, keep: torch.Tensor | None = None, penalty: torch.Tensor | None = None,
                  rel: float = 1e-6) -> torch.Tensor:
    """(n, N) values → (n,) bool: the row is constant over its kept pixels (``keep``: (n, N) bool, e.g. a
    pixel mask > 0; None: every pixel) — its range there at most ``rel`` × the row's largest magnitude
    anywhere (a blur's faint tail outside a structure is no structure).  A row with no kept pixel is
    constant.  No similarity of such a row means anything (its standardised image is 0).

    ``penalty`` ((n, N): 0 where kept, :data:`OFF_PIXEL` elsewhere) instead of ``keep``: what a caller that
    asks for the same pixels again (registration, every evaluation) computes once; the range is then two
    plain reductions (a masked one was 2.8 ms against 0.46 ms on 7 × 256² pixels)."""
    x = x.detach()
    peak = x.abs().amax(-1)
    if penalty is None and keep is not None:
        penalty = (~keep.reshape(x.shape)).to(x.dtype) * OFF_PIXEL
    if penalty is None:
        span = x.amax(-1) - x.amin(-1)
    else:
        span = (x - penalty).amax(-1) - (x + penalty).amin(-1)  # negative when nothing is kept
    return span <= rel * (peak + 1e-12)


def score_from_residual(r: torch.Tensor) -> torch.Tensor:
    """(n, M) residual → (n,) similarity ``1 − ½‖r‖²``."""
    return 1.0 - 0.5 * r.pow(2).sum(-1)
