"""How far to trust a registration: signals at the result, a calibrated ``p_success``, a verdict.

A registration's status says how the optimiser stopped ("converged" = its test was met), never
whether the pose is right.  This module looks at the *result*:

1. :func:`measure_signals` renders the DRR at the registered pose on a fixed check level
   (:data:`CHECK_LEVEL`: 96 rows, the CT averaged to 2 mm, the bone multiplier fitted to the
   X-ray) and at six poses a quarter pixel away from it (the DRR linearised there, from the same render's
   pose derivatives: :func:`_render_about`), and measures (:data:`SIGNALS`): how well
   the DRR matches the X-ray globally and locally (NCC, gradient NCC, patch NCC), how much of the
   X-ray's edges the DRR explains, the structure left in the difference image, the sharpness of
   the optimum (the Gauss–Newton curvature JᵀJ of the similarity's residual in a local se(3)
   chart at the isocenter, in mm: its weakest direction and how far the residual is from its
   minimum), the fitted bone multiplier, the share of the detector the CT covers, the
   magnification, and (given the start) how far the pose moved.
2. :class:`ConfidenceModel` combines them by a small logistic model fitted on simulated
   registrations (``benchmarks/confidence.py`` writes the shipped weights,
   ``confidence_weights.json`` beside this module: JSON, no pickle; scikit-learn is only
   needed to fit it) into ``p_success`` = P(3D mTRE < 2 mm) and a verdict:

   * ``ok``: ``p_success ≥ thresholds["ok"]`` and every guard passed;
   * ``failed``: ``p_success < thresholds["failed"]``, or a guard failed (a DRR that is constant
     or empty at the result, or constant where a pixel mask weighs the X-ray, a pose that sees none
     of the CT, a non-finite signal);
   * ``uncertain``: in between.

   The ``reason`` is one line naming the signal that most lowered ``p_success``.

:func:`assess` does both for a batch of registered poses; :func:`assess_rig` for the views of one
joint (rig) result, each judged alone and on the rig's pooled optimum (:func:`rig_signals`), the two
verdicts merged (:func:`merge_judgements`).  Nothing here raises on a bad result:
whatever cannot be measured makes the verdict ``failed`` with the reason.

Units: mm, radians; poses are camera_to_world (world = CT RAS mm).
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from xraypose._kernels import gaussian_kernel1d, three_sigma_radius
from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.geometry import make_transform, so3_exp
from xraypose.preprocess import image_batch
from xraypose.render import analytic_tangents
from xraypose.register.config import SCATTER_MM, Level, torch_threads
from xraypose.register.measures import constant_rows
from xraypose.register.objective import LevelObjective, fit_bone, level_channels, robust_weights, weighted_affine_fit

__all__ = ["CHECK_LEVEL", "SIGNALS", "VERDICTS", "Confidence", "Judgement", "ConfidenceModel", "measure_signals",
           "PART_WEIGHTS_FILE", "part_model", "registrar_model", "assess", "assess_rig", "rig_signals", "merge_judgements", "WEIGHTS_FILE", "failed_confidence", "sees_ct", "default_model",
           "scatter_aware_p"]

F64 = torch.float64

#: Where the check renders: 96 detector rows (fewer if the X-ray has fewer), the CT averaged to ~2 mm,
#: the bone multiplier fitted to the X-ray, the whole image.  Fixed, so that the signals (and the
#: fitted model) do not depend on the registration's own schedule or similarity measure.
CHECK_LEVEL = Level(size=96, iterations=0, volume_mm=2.0, fit_bone=True)

#: Motion of a point this far (mm) from the isocenter measures a rotation in mm.
RADIUS_MM = 100.0

#: A rig's pooled Gauss–Newton step (:func:`rig_signals`) is taken on the check's DRRs and X-rays
#: blurred by a Gaussian of this many check pixels: its linear range then covers the few-mm near misses
#: that the unblurred step underestimates (docs/registration.md, "Several views tied by a rig").
RIG_STEP_BLUR_PX = 2.0

#: The shipped model (written by ``benchmarks/confidence.py``).
WEIGHTS_FILE = Path(__file__).with_name("confidence_weights.json")
#: The model of a part of a CT's registrations (:func:`part_model`; ``benchmarks/structure_check.py``).
PART_WEIGHTS_FILE = Path(__file__).with_name("confidence_weights_part.json")

VERDICTS = ("ok", "uncertain", "failed")

#: The signals measured at a result (all floats; NaN where not measurable).
SIGNALS = {
    "ncc": "NCC of the DRR (bone fitted) and the X-ray, whole image at the check level",
    "gncc": "NCC of their Sobel gradients",
    "local_ncc": "mean NCC of 12×12-pixel patches, weighted by the X-ray's contrast in each",
    "local_share": "share of the X-ray's contrast in patches whose NCC exceeds 0.5",
    "local_low": "NCC of the worst-matching patches: the contrast-weighted 10 % quantile of the patch NCCs",
    "explained": "share of the X-ray's edge energy within a pixel of a DRR edge",
    "residual_lowfreq": "share of the difference image's energy left after a σ = 2 px blur (structure, not noise)",
    "residual_edges": "correlation of the difference image's gradient magnitude with the DRR's (misaligned edges)",
    "flat_mm": "motion (mm, points 100 mm from the isocenter) along the optimum's weakest direction that doubles "
               "the residual: large = flat optimum",
    "sharp_mm": "the same along its strongest direction",
    "weak_depth": "share of the weakest direction along the beam (depth), in [0, 1]",
    "gn_step_mm": "motion (mm) of the Gauss–Newton step from the result: how far from the residual's minimum",
    "bone_multiplier": "bone attenuation multiplier fitted to the X-ray at the result (registration's model: 1)",
    "coverage": "share of the detector whose rays cross the CT's body at the result",
    "magnification": "source-to-detector over source-to-isocenter distance at the result",
    "travel_mm": "mean motion (mm) of points within 100 mm of the isocenter from the start to the result",
    "foreign": "share of the X-ray's pixels the DRR cannot explain (robust weight 0: metal, tools, saturation); "
               "the image signals are measured with them replaced by the DRR's affine fit",
}


class Judgement(NamedTuple):
    """A result's verdict (:meth:`ConfidenceModel.judge`, :func:`~xraypose.register.multiview.combine_confidences`)."""

    p_success: float  #: calibrated P(mTRE < 2 mm)
    verdict: str  #: one of :data:`VERDICTS`
    reason: str  #: one line saying why


@dataclass
class Confidence:
    """How far to trust one registration.

    Attributes:
        p_success: calibrated probability that the 3D mTRE is below 2 mm, in [0, 1].
        verdict: "ok", "uncertain" or "failed".
        reason: one line saying why.
        signals: :data:`SIGNALS` measured at the result (NaN where not measurable).
        seconds: wall-clock time of the check.
    """

    p_success: float
    verdict: str
    reason: str
    signals: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready: p_success, verdict, reason, seconds and the finite signals (others as null)."""
        sig = {k: (float(v) if v is not None and math.isfinite(float(v)) else None) for k, v in self.signals.items()}
        return {"p_success": float(self.p_success), "verdict": self.verdict, "reason": self.reason,
                "seconds": float(self.seconds), "signals": sig}


def failed_confidence(reason: str, signals: dict | None = None, seconds: float = 0.0) -> Confidence:
    """A ``failed`` verdict with ``p_success`` 0."""
    return Confidence(0.0, "failed", reason, dict(signals or {}), seconds)


# ----------------------------------------------------------------------------------------- signals
def _unit(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit norm along the last axis (x̂ with ⟨x̂, ŷ⟩ = NCC); a constant row stays 0."""
    x = x - x.mean(-1, keepdim=True)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _sobel(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, h, w) → (N, 2, h−2, w−2) Sobel derivatives along u and v."""
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=x.dtype)
    return F.conv2d(x, torch.stack([k, k.T])[:, None])


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row (..., N): Pearson correlation (0 where either is constant)."""
    return (_unit(a) * _unit(b)).sum(-1)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, 1, h, w) blurred by a Gaussian of ``sigma`` pixels (radius ⌈3σ⌉), replicated borders."""
    r = three_sigma_radius(sigma)
    k = gaussian_kernel1d(sigma, r, x.dtype)
    y = F.pad(x, (r, r, r, r), mode="replicate")
    return F.conv2d(F.conv2d(y, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))


class Normal(NamedTuple):
    """Gauss–Newton normal equations of one check in its chart (:func:`_chart_poses`, per mm):
    ``H`` (6, 6) = JᵀJ, ``g`` (6,) = Jᵀr, ``cost`` = ‖r‖²."""

    H: torch.Tensor
    g: torch.Tensor
    cost: float


def _chart_poses(poses: torch.Tensor, isocenter: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """(n, 6, 4, 4): each pose moved along the 6 generators of a chart at the isocenter in its own
    camera axes — rotations about the columns, rows and beam axes through the isocenter by
    ``h[:, :3]`` rad, then translations along them by ``h[:, 3:]`` mm (h: (n, 6))."""
    n = poses.shape[0]
    Fr = poses.clone()
    Fr[:, :3, 3] = isocenter
    Finv = torch.linalg.inv(Fr)
    out = []
    for i in range(6):
        xi = torch.zeros(n, 6, dtype=F64)
        xi[:, i] = h[:, i]
        E = make_transform(so3_exp(xi[:, :3]), xi[:, 3:])
        out.append(Fr @ E @ Finv @ poses)
    return torch.stack(out, dim=1)


def sees_ct(poses: torch.Tensor, camera: Camera, isocenter: torch.Tensor) -> torch.Tensor:
    """(n,) True where the isocenter is in front of the source and projects near the detector."""
    ok = torch.isfinite(poses).reshape(poses.shape[0], -1).all(-1)
    T = torch.where(ok[:, None, None], poses, torch.eye(4, dtype=F64).expand_as(poses))
    z = camera.depth(isocenter[None], T)[:, 0]
    uv = camera.project(isocenter[None], T)[:, 0]
    H, W = camera.height, camera.width
    inside = (uv[:, 0] > -W) & (uv[:, 0] < 2 * W) & (uv[:, 1] > -H) & (uv[:, 1] < 2 * H)
    return ok & (z > 0) & inside


def _travel(start: torch.Tensor, pose: torch.Tensor, isocenter: torch.Tensor) -> float:
    """Mean motion (mm) of the 27 points of a 200 mm cube about the isocenter from ``start`` to ``pose``."""
    from xraypose.metrics import target_registration_error

    g = torch.tensor([-RADIUS_MM, 0.0, RADIUS_MM], dtype=F64)
    pts = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) + isocenter
    return float(target_registration_error(pose, start, pts)[0])


def _image_signals(D: torch.Tensor, y: torch.Tensor, soft: torch.Tensor) -> dict:
    """Signals of one DRR ``D`` (h, w; bone fitted) against the X-ray ``y`` (h, w), float64.
    ``soft`` (h, w): the DRR at the registration's model (coverage)."""
    h, w = D.shape
    s = {"ncc": float(_corr(D.reshape(-1), y.reshape(-1)))}
    gD, gy = _sobel(D[None, None])[0], _sobel(y[None, None])[0]
    s["gncc"] = float(_corr(gD.reshape(-1), gy.reshape(-1)))
    p = 12 if min(h, w) >= 24 else max(3, min(h, w) // 2)
    pD = F.unfold(D[None, None], p, stride=p)[0].T  # (L, p²)
    py = F.unfold(y[None, None], p, stride=p)[0].T
    c = _corr(pD, py)
    wt = py.std(-1)
    tot = float(wt.sum())
    s["local_ncc"] = float((c * wt).sum()) / tot if tot > 0 else math.nan
    s["local_share"] = float((wt * (c > 0.5)).sum()) / tot if tot > 0 else math.nan
    if tot > 0:
        order = torch.argsort(c)
        cum = torch.cumsum(wt[order], 0) / tot
        k = min(int(torch.searchsorted(cum, torch.tensor(0.1, dtype=cum.dtype))), len(order) - 1)
        s["local_low"] = float(c[order][k])
    else:
        s["local_low"] = math.nan
    mD, my = gD.pow(2).sum(0).sqrt(), gy.pow(2).sum(0).sqrt()
    if float(mD.max()) > 0 and float(my.sum()) > 0:
        edge = (mD >= torch.quantile(mD.reshape(-1), 0.8)).to(F64)
        near = F.max_pool2d(edge[None, None], 3, stride=1, padding=1)[0, 0]
        s["explained"] = float((my * near).sum() / my.sum())
    else:
        s["explained"] = math.nan
    Dh, yh = _unit(D.reshape(-1)), _unit(y.reshape(-1))
    e = (yh - s["ncc"] * Dh).reshape(1, 1, h, w)
    ee = float(e.pow(2).sum())
    s["residual_lowfreq"] = float(_blur(e, 2.0).pow(2).sum()) / ee if ee > 0 else math.nan
    ge = _sobel(e)[0].pow(2).sum(0).sqrt()
    s["residual_edges"] = float(_corr(ge.reshape(-1), mD.reshape(-1)))
    top = float(soft.max())
    s["coverage"] = float((soft > 0.02 * top).to(F64).mean()) if top > 0 else 0.0
    return s


def _residual(D: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n, M): the residual of ½·NCC + ½·gradient NCC of DRRs D (n, h, w) against y (h, w)
    (score = 1 − ½‖r‖²)."""
    n = D.shape[0]
    a = _unit(D.reshape(n, -1)) - _unit(y.reshape(1, -1))
    gD = _sobel(D[:, None]).reshape(n, -1)
    gy = _sobel(y[None, None]).reshape(1, -1)
    b = _unit(gD) - _unit(gy)
    return torch.cat([a, b], dim=-1) * math.sqrt(0.5)


def _normal_equations(D7: torch.Tensor, y: torch.Tensor, h: torch.Tensor, blur_px: float = 0.0) -> Normal:
    """The Gauss–Newton normal equations of the check's residual (:func:`_residual`) from the DRRs at
    the result and at the 6 chart steps ``h`` (6,) (rad, rad, rad, mm, mm, mm) against ``y`` (h, w),
    both blurred by ``blur_px`` check pixels first (0: as rendered): J by forward differences, per
    mm of motion of points :data:`RADIUS_MM` from the isocenter."""
    if blur_px > 0:
        D7, y = _blur(D7[:, None], blur_px)[:, 0], _blur(y[None, None], blur_px)[0, 0]
    r = _residual(D7, y)  # (7, M)
    mm = torch.cat([h[:3] * RADIUS_MM, h[3:]])  # each step as mm of motion
    J = (r[1:] - r[:1]) / mm[:, None]  # (6, M): per mm
    return Normal(J @ J.T, J @ r[0], float(r[0].pow(2).sum()))


def _gn_step(H: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(6,) the (barely damped) Gauss–Newton step of normal equations ``H`` (6, 6), ``g`` (6,), mm."""
    damp = 1e-6 * float(torch.diagonal(H).mean().clamp_min(1e-30))
    return torch.linalg.solve(H + damp * torch.eye(6, dtype=F64), g)


def _sharpness(H: torch.Tensor, cost: float) -> dict:
    """``flat_mm``, ``sharp_mm``, ``weak_depth`` of a residual with curvature ``H`` (6, 6) and ``cost``."""
    evals, evecs = torch.linalg.eigh(H)
    lo, hi = float(evals[0].clamp_min(1e-30)), float(evals[-1].clamp_min(1e-30))
    v = evecs[:, 0]
    return {"flat_mm": math.sqrt(cost / lo), "sharp_mm": math.sqrt(cost / hi),
            "weak_depth": float(v[5] ** 2 / v.pow(2).sum())}


def _curvature_signals(D7: torch.Tensor, y: torch.Tensor, h: torch.Tensor) -> dict:
    """Sharpness of the optimum from the DRRs at the result and at the 6 chart steps ``h`` (6,)
    (:func:`_normal_equations`), and, under ``"_normal"``, the normal equations as rendered and
    blurred by :data:`RIG_STEP_BLUR_PX` (what :func:`rig_signals` pools over a rig's views)."""
    fine = _normal_equations(D7, y, h)
    out = _sharpness(fine.H, fine.cost) | {"gn_step_mm": float(_gn_step(fine.H, fine.g).norm())}
    out["_normal"] = {"fine": fine, "coarse": _normal_equations(D7, y, h, RIG_STEP_BLUR_PX)}
    return out


def measure_signals(registrar, images, camera: Camera, poses, *, starts=None, level: Level = CHECK_LEVEL,
                    masks=None, scatter_mm=None) -> list:
    """:func:`_measure_signals` under the registrar's thread count (:func:`~xraypose.register.config.torch_threads`):
    the check's numbers do not depend on the caller's threads (docs below)."""
    with torch_threads(getattr(registrar.config, "num_threads", None)):
        return _measure_signals(registrar, images, camera, poses, starts=starts, level=level, masks=masks,
                                scatter_mm=scatter_mm)


def _measure_signals(registrar, images, camera: Camera, poses, *, starts=None, level: Level = CHECK_LEVEL,
                     masks=None, scatter_mm=None) -> list:
    """Measure :data:`SIGNALS` at registered poses.

    Args:
        registrar: the :class:`~xraypose.register.Registrar` of the CT (its density pyramid,
            isocenter and DRR blur are used).
        images: (B, 1, H, W) or (H, W) the preprocessed X-rays that were registered.
        camera: their intrinsics.
        poses: (B, 4, 4) or (4, 4) camera_to_world results.
        starts: (B, 4, 4) the starts (for ``travel_mm``), or None.
        level: where to render (default :data:`CHECK_LEVEL`).
        masks: optional (B, 1, H, W) or (H, W) pixel weights in [0, 1] the X-rays were registered
            with (preprocessing's ``mask``: a saturated plateau, a collimator's shadow); where 0 the
            X-ray is no evidence and is treated as what the DRR cannot explain (``foreign``).
        scatter_mm: None (the shipped check), or scatter widths (σ on the detector, mm): the check's DRR
            then carries the smooth additive scatter that best explains the X-ray
            (:func:`~xraypose.register.scatter.scatter_drr`, chosen at the pose and held for its six
            neighbours) — for ranking results (:func:`scatter_aware_p`), not for verdicts.
    Returns:
        per X-ray a dict: the signals, plus ``"_problem"``: None, or a one-line reason why the
        result cannot be trusted at all (a pose that sees none of the CT, a constant DRR).
    """
    imgs = image_batch(images, "the X-rays to check").to(torch.float32)
    ratio = registrar.config.foreign_steps
    if ratio is not None:  # judge the X-ray registration saw: metal's steps set aside (register/foreign.py)
        from xraypose.register.foreign import set_aside_batch

        imgs = set_aside_batch(imgs, None, ratio=float(ratio))[0]
    T = torch.as_tensor(poses, dtype=F64).reshape(-1, 4, 4)
    B = T.shape[0]
    if imgs.shape[0] != B:
        raise InputError(f"{imgs.shape[0]} X-rays but {B} poses to check")
    iso = registrar.isocenter.to(F64)
    out, sees = _geometry_signals(T, camera, iso, starts)
    idx = [b for b in range(B) if bool(sees[b])]
    if not idx:
        return out
    m = None
    if masks is not None:
        m = image_batch(masks, "the pixel masks").to(torch.float32)
        if m.shape[-2:] != imgs.shape[-2:] or m.shape[0] not in (1, B):
            raise InputError(f"the masks' shape {tuple(m.shape)} is not the X-rays' {tuple(imgs.shape)}")
        m = m.expand(B, 1, *imgs.shape[-2:])[idx]
    obj, drr, h = _render_about(registrar, level, imgs[idx], camera, T[idx], iso, m)
    base = float(registrar.config.bone_multiplier)
    sig_px = None if not scatter_mm else [float(mm) / obj.camera.delx for mm in scatter_mm]
    for q, b in enumerate(idx):
        _drr_signals(out[b], drr[q], obj.target[q, 0].to(F64), h[q], base,
                     None if obj.mask is None else obj.mask[q, 0].to(F64), sig_px)
    return out


def _geometry_signals(T: torch.Tensor, camera: Camera, iso: torch.Tensor, starts) -> tuple[list, torch.Tensor]:
    """Per pose of ``T`` (B, 4, 4) the signals every pose has (``travel_mm`` from its start, ``magnification``),
    the others NaN, and (B,) whether it sees the CT (a pose that does not gets its ``_problem``)."""
    B = T.shape[0]
    out = [{k: math.nan for k in SIGNALS} | {"_problem": None} for _ in range(B)]
    sees = sees_ct(T, camera, iso)
    for b in range(B):
        if starts is not None:
            S = torch.as_tensor(starts, dtype=F64).reshape(-1, 4, 4)
            S = S[b if S.shape[0] == B else 0]
            if bool(torch.isfinite(S).all()) and bool(torch.isfinite(T[b]).all()):
                out[b]["travel_mm"] = _travel(S, T[b], iso)
        if not bool(sees[b]):
            out[b]["_problem"] = "the pose sees none of the CT (its isocenter is behind the source or off the detector)"
            out[b]["coverage"] = 0.0
            continue
        z = float(camera.depth(iso[None], T[b:b + 1])[0, 0])
        out[b]["magnification"] = camera.sdd / z
    return out, sees


def _render_about(registrar, level: Level, imgs: torch.Tensor, camera: Camera, Ts: torch.Tensor,
                  iso: torch.Tensor, masks: torch.Tensor | None = None):
    """``(objective, DRRs (n, 7, C, h, w) float64, steps h (n, 6))``: the DRRs at the poses ``Ts`` (n, 4, 4) and
    at a quarter of a check pixel from each along the 6 directions of :func:`_chart_poses`, on ``level``.

    The six neighbours are the DRR linearised along the chart (``D + h_k ∂D/∂ξ_k``, from one render with
    the fused CPU kernel's pose derivatives, :func:`~xraypose.render.render_with_tangents`) where that kernel
    renders the check, else rendered (seven renders).  The same verdicts: of the 265 registrations the
    shipped model was fitted on and 576 poses moved 3–6 mm / 2° from good results, every verdict the same
    either way (p_success within 0.06); the check 2.5–3.5× faster (docs/benchmarks.md, stop 49)."""
    # the level's own channels, cached by the registrar (channels-last, with its empty-space grid): a
    # subset cut here would be a fresh channels-first copy per check, rendered without skipping
    dens, aff = registrar.volume_level(level.volume_mm, level_channels(level))
    obj = LevelObjective(level, registrar.config, dens, aff, imgs, camera, torch.Generator().manual_seed(0),
                         masks=masks)
    n = Ts.shape[0]
    pix = obj.pixel_mm(Ts, iso)  # (n,) mm per check pixel at the isocenter
    h = torch.empty(n, 6, dtype=F64)
    h[:, :3] = (0.25 * pix / RADIUS_MM)[:, None]
    h[:, 3:] = (0.25 * pix)[:, None]
    if analytic_tangents(obj.density):
        from xraypose.register.steppers import chart_tangents

        Fr = Ts.clone()
        Fr[:, :3, 3] = iso
        tangents = chart_tangents(Fr, Ts, h)  # (n, 6, 4, 4): each chart step's first-order pose change
        drr = obj.render_along(Ts, torch.arange(n), tangents, dtype=F64)  # (7n, C, h, w)
    else:
        allT = torch.cat([Ts[:, None], _chart_poses(Ts, iso, h)], dim=1).reshape(n * 7, 4, 4)
        rows = torch.arange(n).repeat_interleave(7)
        with torch.no_grad():
            drr = obj.render(allT, rows).to(F64)  # (7n, C, h, w)
    return obj, drr.reshape(n, 7, *drr.shape[1:]), h


def _drr_signals(rec: dict, d2: torch.Tensor, y: torch.Tensor, h: torch.Tensor, base: float,
                 mask: torch.Tensor | None = None, scatter_px=None) -> None:
    """Into ``rec``: the image and curvature signals of one result from its 7 DRRs ``d2`` (7, C, h, w) against
    the X-ray ``y`` (h, w) (the bone fitted as registration fits it, from ``base``; ``mask`` (h, w): the
    X-ray's pixel weights, or None; ``scatter_px``: scatter widths in check pixels to model on the DRR, or
    None), or its ``_problem``."""
    if not bool(torch.isfinite(d2).all()):
        rec["_problem"] = "the DRR at the result is not finite"
        return
    soft = d2[0, 0]
    if d2.shape[1] > 1:
        m = float(fit_bone(d2[:1].reshape(1, 2, -1), y.reshape(1, -1), base)[0])
        D7 = d2[:, 0] + m * d2[:, 1]
        rec["bone_multiplier"] = base + m
    else:
        D7 = d2[:, 0]
        rec["bone_multiplier"] = base
    if scatter_px:
        from xraypose.register.scatter import scatter_drr

        D7 = scatter_drr(D7[:, None], y.expand(7, 1, *y.shape), scatter_px,
                         None if mask is None else mask.expand(7, 1, *mask.shape), group=7)[0][:, 0]
    D = D7[0]
    if bool(constant_rows(D.reshape(1, -1))[0]):
        rec["_problem"] = ("the DRR at the result is empty: the pose sees none of the CT" if float(soft.max()) <= 0
                           else "the DRR at the result is constant: the pose sees no structure of the CT")
        rec["coverage"] = 0.0 if float(soft.max()) <= 0 else rec["coverage"]
        return
    if mask is not None and bool(constant_rows(D.reshape(1, -1), mask.reshape(1, -1) > 0)[0]):
        rec["_problem"] = ("the DRR at the result is constant where the X-ray's pixels are weighed: the structure "
                           "projects outside them")
        return
    y, rec["foreign"] = _explainable(D, y, mask)
    rec.update(_image_signals(D, y, soft))
    rec.update(_curvature_signals(D7, y, h))


def _explainable(D: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """The X-ray ``y`` (h, w) with what the DRR ``D`` (h, w) cannot explain replaced by the DRR's affine fit,
    and the share of pixels replaced.  The pixels are weighed as registration's fine levels weigh them
    (:func:`~xraypose.register.objective.robust_weights`, Tukey's biweight at 4.685 robust deviations):
    metal and tools that are not in the CT then leave no structure in the difference image, and a
    correct pose under an implant is not judged by the implant.  Pixels a ``mask`` (h, w) weighs 0 (a
    saturated plateau, a collimator's shadow) are no evidence at all: replaced too, and the share is
    of the pixels the mask keeps (weighed by it) — a plateau is what preprocessing found, not what the
    DRR failed to explain (counted, a good pose under a 30 % plateau read P 0.001)."""
    w = robust_weights(D[None], y[None], prior=None if mask is None else mask[None])[0].to(F64)
    if not float(w.sum()) > 0:
        return y, 1.0
    fit = weighted_affine_fit(D.reshape(1, -1), y.reshape(1, -1), w.reshape(1, -1)).reshape(y.shape)
    out = (w <= 0).to(F64)
    share = float(out.mean()) if mask is None else float((out * mask).sum() / mask.sum().clamp_min(1e-12))
    return torch.where(w > 0, y, fit), share


# ----------------------------------------------------------------------------------------- the model
def _transform(name: str, x: float) -> float:
    """The model's input for one signal (``name`` = signal or ``signal:transform``)."""
    sig, _, how = name.partition(":")
    if not how:
        return x
    if how == "neglog1m":  # −log(1 − x): similarities near 1 spread out
        return -math.log(max(1.0 - x, 1e-4))
    if how == "log":
        return math.log(max(x, 1e-6))
    if how == "abslog":
        return abs(math.log(max(x, 1e-6)))
    raise InputError(f"unknown signal transform {how!r} in the confidence model")


# One-line reasons, by signal: what a low contribution of that signal means.
REASONS = {
    "ncc": "the DRR does not look like the X-ray (NCC {ncc:.2f}): the pose is wrong, or the X-ray does not "
           "show this CT",
    "gncc": "the DRR's edges do not match the X-ray's (gradient NCC {gncc:.2f}): the pose is wrong, or the X-ray "
            "does not show this CT",
    "local_ncc": "the DRR matches the X-ray poorly patch by patch (local NCC {local_ncc:.2f})",
    "local_share": "only {local_share:.0%} of the X-ray's contrast is matched patch by patch",
    "local_low": "part of the X-ray does not match the DRR (its worst patches: NCC {local_low:.2f}): "
                 "something moved, or is not in the CT",
    "explained": "the DRR explains only {explained:.0%} of the X-ray's edges: the X-ray may not show this CT",
    "residual_lowfreq": "the difference image keeps structure (the pose is slightly off)",
    "residual_edges": "the difference image is concentrated at the DRR's edges (misaligned edges)",
    "flat_mm": "the optimum is flat ({flat_mm:.0f} mm along its weakest direction): the pose is uncertain",
    "flat_mm+depth": "the optimum is flat along the beam ({flat_mm:.0f} mm): depth is uncertain",
    "sharp_mm": "the optimum is shallow in every direction",
    "weak_depth": "the optimum is flat along the beam: depth is uncertain",
    "gn_step_mm": "the result is not at the similarity's optimum (a step of {gn_step_mm:.1f} mm would improve it)",
    "bone_multiplier": "the fitted bone contrast is implausible (×{bone_multiplier:.2f})",
    "coverage": "the CT covers only {coverage:.0%} of the detector at this pose",
    "magnification": "the magnification is implausible ({magnification:.2f})",
    "travel_mm": "the result is {travel_mm:.0f} mm from the start",
    "foreign": "the DRR cannot explain {foreign:.0%} of the X-ray (metal, tools, or the pose is wrong)",
}


def _reason(sig: str, signals: dict) -> str:
    if sig == "flat_mm" and float(signals.get("weak_depth") or 0.0) >= 0.5:
        sig = "flat_mm+depth"
    try:
        return REASONS[sig].format(**{k: v for k, v in signals.items() if not k.startswith("_")})
    except (KeyError, ValueError, TypeError):
        return f"the signal {sig} is unlike a successful registration's"


class ConfidenceModel:
    """A logistic model of P(mTRE < 2 mm) from transformed signals, with verdict thresholds.

    The weights file (JSON) holds ``features`` (names ``signal`` or ``signal:transform``, transforms
    ``neglog1m`` = −log(1−x), ``log``, ``abslog``), ``mean`` and ``scale`` (standardisation),
    ``coef`` and ``intercept`` (logit = intercept + Σ coef·z), ``reference`` (the standardised
    features of a typical success, for the reason), ``thresholds`` ``{"ok", "failed"}`` on
    ``p_success``, ``guards`` (``{signal: [low, high]}``: outside, the verdict is at best
    ``uncertain``; ``failed_below``: ``{signal: value}`` below which it is ``failed``) and how it
    was fitted (``fit``).
    """

    def __init__(self, spec: dict):
        try:
            self.features = list(spec["features"])
            self.mean = [float(x) for x in spec["mean"]]
            self.scale = [float(x) for x in spec["scale"]]
            self.coef = [float(x) for x in spec["coef"]]
            self.intercept = float(spec["intercept"])
            self.thresholds = {"ok": float(spec["thresholds"]["ok"]), "failed": float(spec["thresholds"]["failed"])}
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"confidence model: missing or bad entry ({e})") from None
        n = len(self.features)
        if not (len(self.mean) == len(self.scale) == len(self.coef) == n) or n == 0:
            raise InputError("confidence model: features, mean, scale and coef differ in length")
        for f in self.features:
            if f.partition(":")[0] not in SIGNALS:
                raise InputError(f"confidence model: unknown signal {f!r}")
        self.reference = [float(x) for x in spec.get("reference", [0.0] * n)]
        self.guards = {k: (float(a), float(b)) for k, (a, b) in spec.get("guards", {}).items()}
        self.failed_below = {k: float(v) for k, v in spec.get("failed_below", {}).items()}
        self.spec = spec

    @classmethod
    def load(cls, path=None) -> "ConfidenceModel":
        """The model in ``path`` (default: the shipped :data:`WEIGHTS_FILE`)."""
        p = Path(path) if path is not None else WEIGHTS_FILE
        from xraypose.io import check_input_path

        check_input_path(p, "confidence model", f"confidence model not found: {p}")
        try:
            return cls(json.loads(p.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise InputError(f"confidence model not found: {p}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"confidence model {p} is not valid JSON ({e})") from None

    def inputs(self, signals: dict) -> list:
        """The model's inputs (transformed signals, not standardised); NaN where a signal is missing."""
        out = []
        for f in self.features:
            x = signals.get(f.partition(":")[0])
            x = math.nan if x is None else float(x)
            out.append(_transform(f, x) if math.isfinite(x) else math.nan)
        return out

    def logit_terms(self, signals: dict) -> list:
        """Per feature, ``coef · z`` (its contribution to the logit)."""
        return [c * (x - m) / s for c, x, m, s in zip(self.coef, self.inputs(signals), self.mean, self.scale)]

    def probability(self, signals: dict) -> float:
        """P(mTRE < 2 mm) of a result with these signals (NaN if a signal is missing)."""
        z = self.intercept + sum(self.logit_terms(signals))
        if not math.isfinite(z):
            return math.nan
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def judge(self, signals: dict) -> Judgement:
        """(p_success, verdict, reason) of one result."""
        problem = signals.get("_problem")
        if problem:
            return Judgement(0.0, "failed", problem)
        missing = [f for f, x in zip(self.features, self.inputs(signals)) if not math.isfinite(x)]
        if missing:
            what = missing[0].partition(":")[0]
            return Judgement(0.0, "failed", f"a confidence signal could not be measured ({what})")
        p = self.probability(signals)
        for sig, lim in self.failed_below.items():
            x = signals.get(sig)
            if x is not None and math.isfinite(float(x)) and float(x) < lim:
                return Judgement(p, "failed", _reason(sig, signals))
        verdict = "ok" if p >= self.thresholds["ok"] else "failed" if p < self.thresholds["failed"] else "uncertain"
        guard = None
        for sig, (lo, hi) in self.guards.items():
            x = signals.get(sig)
            if x is None or not math.isfinite(float(x)) or not lo <= float(x) <= hi:
                guard = sig
                break
        if guard is not None and verdict == "ok":
            if self.spec.get("guard_reason") == "range":  # guards drawn from the fit's own data's range
                x, (lo, hi) = signals.get(guard), self.guards[guard]
                return Judgement(p, "uncertain", f"{guard} = {float(x):.3g} lies outside the {lo:.3g}–{hi:.3g} of the "
                                 "results this check was fitted on: it cannot vouch for this one")
            return Judgement(p, "uncertain", _reason(guard, signals))
        if verdict == "ok":
            return Judgement(p, verdict, "the DRR matches the X-ray closely and the optimum is sharp")
        terms = [t - c * r for t, c, r in zip(self.logit_terms(signals), self.coef, self.reference)]
        worst = min(range(len(terms)), key=lambda i: terms[i])
        return Judgement(p, verdict, _reason(self.features[worst].partition(":")[0], signals))


@functools.lru_cache(maxsize=None)
def _loaded(path: Path) -> ConfidenceModel:
    return ConfidenceModel.load(path)


def default_model() -> ConfidenceModel:
    """The shipped model (:data:`WEIGHTS_FILE`, loaded once)."""
    return _loaded(WEIGHTS_FILE)


def part_model() -> ConfidenceModel:
    """The model fitted on registrations of a part of a CT (:data:`PART_WEIGHTS_FILE`, loaded once):
    a part's DRR lacks the body, so the shipped model's appearance signals call its every result
    poor (benchmarks/structure.py --check)."""
    return _loaded(PART_WEIGHTS_FILE)


def registrar_model(registrar) -> ConfidenceModel:
    """The model that judges ``registrar``'s results: its ``confidence_model`` (e.g. a part of a CT's:
    :func:`part_model`), else the shipped one."""
    return getattr(registrar, "confidence_model", None) or default_model()


def assess(registrar, images, camera: Camera, poses, *, starts=None, model: ConfidenceModel | None = None,
           masks=None) -> list:
    """:class:`Confidence` of each registered pose.

    Args:
        registrar: the CT's :class:`~xraypose.register.Registrar`.
        images: (B, 1, H, W) or (H, W) the registered X-rays; camera: their intrinsics.
        poses: (B, 4, 4) results; starts: (B, 4, 4) their starts (optional).
        model: a :class:`ConfidenceModel` (default: the registrar's, :func:`registrar_model`).
        masks: the pixel weights the X-rays were registered with (:func:`measure_signals`), or None.
    Returns:
        one :class:`Confidence` per X-ray; never raises on a bad result (its verdict is "failed").
    """
    model = model or registrar_model(registrar)
    t0 = time.perf_counter()
    T = torch.as_tensor(poses, dtype=F64).reshape(-1, 4, 4)
    try:
        sigs = measure_signals(registrar, images, camera, T, starts=starts, masks=masks)
    except (RuntimeError, ValueError) as e:  # a check that cannot run is a failed check, not a crash
        dt = time.perf_counter() - t0
        return [failed_confidence(f"the confidence check could not run ({str(e).splitlines()[0]})", seconds=dt)
                for _ in range(T.shape[0])]
    dt = (time.perf_counter() - t0) / max(1, len(sigs))
    out = []
    for s in sigs:
        p, verdict, reason = model.judge(s)
        p = 0.0 if not math.isfinite(p) else p
        out.append(Confidence(p, verdict, reason, {k: v for k, v in s.items() if not k.startswith("_")}, dt))
    return out


# ----------------------------------------------------------------------------------------- rigs
def scatter_aware_p(registrar, images, camera: Camera, poses, *, masks=None,
                    model: ConfidenceModel | None = None) -> list:
    """Per pose, the check's ``p_success`` with the scatter model on its DRR (:func:`measure_signals` with
    ``scatter_mm`` = the scatter schedule's widths): for *ranking* one X-ray's results, not a verdict —
    the model was fitted on plain DRRs, so these P are not calibrated (a pose 78 mm off read 0.84).

    Why.  On scattered X-rays the shipped check rates the right pose low and poses that explain the halo by
    moving higher: of 100 registrations of scattered and low-dose X-rays (appearance benchmark, seed 1), 5
    kept a result ≥ 1 mm while a tried one was < 1 mm; ranked by this P the most accurate result came first
    in 9 of the 11 scattered ones; on X-rays without scatter the fit chooses none and the P is the shipped
    one (docs/benchmarks.md, stop 45).  0.0 where a pose cannot be checked."""
    model = model or registrar_model(registrar)
    T = torch.as_tensor(poses, dtype=F64).reshape(-1, 4, 4)
    try:
        sigs = measure_signals(registrar, images, camera, T, masks=masks, scatter_mm=SCATTER_MM)
    except (RuntimeError, ValueError):
        return [0.0] * T.shape[0]
    out = []
    for s in sigs:
        p = model.judge(s)[0]
        out.append(float(p) if math.isfinite(p) else 0.0)
    return out


def _chart_to_world(R: torch.Tensor) -> torch.Tensor:
    """(6, 6) ``A`` with ξ_view = A·ξ_world: a motion about the isocenter in world axes (rotation, mm at
    :data:`RADIUS_MM`; translation, mm) in the chart of a view whose camera_to_world rotation is ``R``
    (3, 3) (:func:`_chart_poses`: the same motion in its camera axes)."""
    A = torch.zeros(6, 6, dtype=F64)
    A[:3, :3] = R.T
    A[3:, 3:] = R.T
    return A


def rig_signals(sigs: list, poses) -> list:
    """The signals of a rig's views (one joint pose seen by each) with the sharpness of the *rig's*
    optimum in place of each view's own.

    One view sees its depth only as magnification, so alone its optimum is flat along its beam
    (``flat_mm``) and noise moves its Gauss–Newton step there (``gn_step_mm``) — a right joint pose
    then reads "not at the optimum" in a view although the other views hold that direction.  Here
    the views' normal equations (:func:`measure_signals` keeps them under ``"_normal"``), turned from
    each view's chart into world axes about the isocenter, are summed as the joint similarity sums
    the views: ``flat_mm``, ``sharp_mm`` and ``weak_depth`` (the weakest direction's share along this
    view's beam) come from their curvature; ``gn_step_mm`` is their Gauss–Newton step taken on
    images blurred by :data:`RIG_STEP_BLUR_PX` check pixels (unblurred, the step underestimates an
    error of a few mm across a beam: a 3 mm near miss read 0.7 mm).  The view's own values stay as
    ``view_flat_mm`` and ``view_gn_step_mm``.  Where any view has a ``_problem`` or no normal
    equations, the signals are given back as they are.

    Args:
        sigs: per view the dict :func:`measure_signals` gives for it (not modified).
        poses: (V, 4, 4) the views' camera_to_world at the joint result (world = CT RAS mm).
    Returns:
        per view a new signals dict.
    """
    T = torch.as_tensor(poses, dtype=F64).reshape(-1, 4, 4)
    if len(sigs) != T.shape[0]:
        raise InputError(f"{len(sigs)} views' signals but {T.shape[0]} poses")
    out = [dict(s) for s in sigs]
    if len(sigs) < 2 or any(s.get("_problem") or "_normal" not in s for s in sigs):
        return out
    A = [_chart_to_world(T[i, :3, :3]) for i in range(T.shape[0])]
    pooled = {}
    for key in ("fine", "coarse"):
        H = sum(a.T @ s["_normal"][key].H.to(F64) @ a for a, s in zip(A, sigs))
        g = sum(a.T @ s["_normal"][key].g.to(F64) for a, s in zip(A, sigs))
        pooled[key] = Normal(H, g, sum(s["_normal"][key].cost for s in sigs))
    fine, coarse = pooled["fine"], pooled["coarse"]
    sharp = _sharpness(fine.H, fine.cost)
    weakest = torch.linalg.eigh(fine.H)[1][:, 0]
    step = float(_gn_step(coarse.H, coarse.g).norm())
    for a, o in zip(A, out):
        v = a @ weakest
        o["view_flat_mm"], o["view_gn_step_mm"] = o.get("flat_mm"), o.get("gn_step_mm")
        o.update(flat_mm=sharp["flat_mm"], sharp_mm=sharp["sharp_mm"],
                 weak_depth=float(v[5] ** 2 / v.pow(2).sum()), gn_step_mm=step)
    return out


def assess_rig(registrar, views, *, model: ConfidenceModel | None = None) -> list:
    """:class:`Confidence` of each view of one joint (rig) result: judged alone (its own signals) and
    on :func:`rig_signals` (the rig's optimum), the two merged by :func:`merge_judgements`; the signals
    kept are the rig's (with the view's own ``view_flat_mm``, ``view_gn_step_mm``).

    Args:
        registrar: the CT's :class:`~xraypose.register.Registrar`.
        views: per view ``(image (H, W) or (1, 1, H, W), camera, camera_to_world (4, 4), start (4, 4) or
            None, mask (H, W) or (1, 1, H, W) or None)``: the X-ray as registered, its intrinsics, its
            pose at the joint result, at the joint start, and its pixel weights.
        model: a :class:`ConfidenceModel` (default: the registrar's, :func:`registrar_model`).
    Returns:
        one :class:`Confidence` per view (never raises on a bad result: its verdict is "failed");
        combine them with :func:`xraypose.register.multiview.combine_confidences`.
    """
    model = model or registrar_model(registrar)
    t0 = time.perf_counter()
    sigs, poses = [], []
    for img, cam, pose, start, mask in views:
        T = torch.as_tensor(pose, dtype=F64).reshape(1, 4, 4)
        S = None if start is None else torch.as_tensor(start, dtype=F64).reshape(1, 4, 4)
        try:
            sigs.append(measure_signals(registrar, img, cam, T, starts=S, masks=mask)[0])
        except (RuntimeError, ValueError) as e:  # a check that cannot run is a failed check, not a crash
            dt = (time.perf_counter() - t0) / len(views)
            return [failed_confidence(f"the confidence check could not run ({str(e).splitlines()[0]})",
                                      seconds=dt) for _ in views]
        poses.append(T[0])
    dt = (time.perf_counter() - t0) / len(views)
    out = []
    for own, pooled in zip(sigs, rig_signals(sigs, torch.stack(poses))):
        p, verdict, reason = merge_judgements(model.judge(own), model.judge(pooled))
        out.append(Confidence(p, verdict, reason, {k: v for k, v in pooled.items() if not k.startswith("_")}, dt))
    return out


def merge_judgements(alone: Judgement, rig: Judgement) -> Judgement:
    """One view of a rig judged alone and with the rig's optimum (:func:`rig_signals`): the verdict
    both give, else ``uncertain``; ``p_success`` the smaller.

    Why not the rig's alone: alone, a view reads its depth as weakly held and its noise as a step
    (right biplane frames ``failed``), but the pooled step can underestimate a few-mm error across a
    beam where the check's linearisation fails (``benchmarks/check_resolution.py``: one abdominal
    pair's 3–6 mm near misses read 0.3–1.2 mm).  Where they agree the verdict stands; where they
    disagree the user is told so (docs/registration.md, "Several views tied by a rig")."""
    pa = 0.0 if not math.isfinite(alone.p_success) else float(alone.p_success)
    pr = 0.0 if not math.isfinite(rig.p_success) else float(rig.p_success)
    if alone.verdict == rig.verdict:
        return Judgement(min(pa, pr), alone.verdict, alone.reason if pa <= pr else rig.reason)
    if alone.verdict == "ok":
        why = f"alone its check reads ok, but with the other views holding its depth: {rig.reason}"
    elif rig.verdict == "ok":
        why = f"with the other views holding its depth it reads ok, but alone: {alone.reason}"
    else:
        why = alone.reason if alone.verdict == "failed" else rig.reason
    return Judgement(min(pa, pr), "uncertain", why)
