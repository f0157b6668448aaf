"""Registration error metrics, shared by the benchmarks, the datasets and training evaluation.

Every metric compares an estimated pose with the true one, both ``camera_to_world``
(``(4, 4)`` or ``(B, 4, 4)``, CT RAS mm, docs/conventions.md), and returns one
value per pose, in mm:

=========  ==================================================================
``mtre``   3D mean target registration error: the fiducials expressed in the
           camera frame of each pose, ``Rᵀ(X − t)``, mean distance between the
           two.  Equivalently the mean displacement of the fiducials by the
           rigid error ``T_true · T_est⁻¹``.
``mpe``    mean projection error: the fiducials projected by each pose onto the
           detector, mean distance between the two projections in mm on the
           detector (pixel differences scaled by the pixel spacing ``delx``,
           ``dely``; independent of how the detector is resampled).
``mrpe``   DiffPose's mean reprojection error: each pose's projections are
           lifted back to its own detector plane in world coordinates (z = sdd),
           mean 3D distance between the two sets of points.
``rot_mm``, ``trans_mm``, ``dgeo``
           the double geodesic (:func:`xraypose.geometry.double_geodesic`):
           ``sdr·θ`` (θ the angle of ``R_estᵀ R_true``), the distance between the
           source positions, and ``√(rot_mm² + trans_mm²)``.  The radius ``sdr``
           defaults to half the source-to-detector distance (DiffPose/DiffDRR's
           "source-to-detector radius").
=========  ==================================================================

Also: success rates (mTRE below 1 mm and 2 mm by default), percentiles and the
times of initialisation and optimisation, summarised by :func:`summarize`.

A NaN or infinite pose is never turned into a NaN metric: it raises
:class:`~xraypose.errors.InputError` naming the pose.  A finite pose never
raises: when a fiducial lies at or behind the X-ray source of either pose, its
projection is undefined and that pose's ``mpe`` and ``mrpe`` are ``inf`` (a
failed case; ``mtre`` and the geodesics stay finite).  Summaries count such
values (``n_inf``) and keep them in the percentiles (a median over cases with
some infinite errors is the honest one); JSON writers store them as ``null``
listed under ``"non_finite"`` (:func:`xraypose.io.jsonable`).
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from xraypose.camera import Camera, world_to_camera_points
from xraypose.errors import InputError
from xraypose.geometry import geodesic_rotation, geodesic_translation

__all__ = [
    "METRIC_NAMES",
    "target_registration_error",
    "moved_near_isocenter",
    "projection_error",
    "reprojection_error",
    "double_geodesic_error",
    "DoubleGeodesic",
    "pose_errors",
    "success_rate",
    "summarize",
    "format_table",
]

#: Per-pose metrics returned by :func:`pose_errors`, in this order.
METRIC_NAMES = ("mtre", "mpe", "mrpe", "rot_mm", "trans_mm", "dgeo", "rot_deg")

# Keys of a summary's percentiles.
_PERCENTILES = (5, 25, 50, 75, 95)


# --------------------------------------------------------------------------- inputs
def _poses(T, what: str) -> torch.Tensor:
    from xraypose.geometry.rigid import check_rigid
    from xraypose.preprocess import as_real_tensor

    # a text raised torch's TypeError, a complex pose lost its imaginary part
    t = as_real_tensor(T.detach() if isinstance(T, torch.Tensor) else T, what, torch.float64)
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or tuple(t.shape[-2:]) != (4, 4):
        raise InputError(f"{what} must be (4, 4) or (B, 4, 4), got shape {tuple(t.shape)}")
    bad = ~torch.isfinite(t).reshape(t.shape[0], -1).all(-1)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0, 0])
        raise InputError(f"{what} {i} has NaN or infinite entries; its errors are undefined")
    try:  # a scaled or mirrored pose's errors were numbers, silently (its geodesic one of no rotation)
        check_rigid(t, atol=1e-3)
    except InputError as e:
        raise InputError(f"{what}: {e}") from None
    return t


def _pair(pred, true) -> tuple[torch.Tensor, torch.Tensor]:
    p, t = _poses(pred, "estimated pose"), _poses(true, "true pose")
    if p.shape[0] != t.shape[0]:
        if p.shape[0] == 1:
            p = p.expand_as(t)
        elif t.shape[0] == 1:
            t = t.expand_as(p)
        else:
            raise InputError(f"{p.shape[0]} estimated poses but {t.shape[0]} true poses")
    return p, t


def _fiducials(fiducials, B: int) -> torch.Tensor:
    f = torch.as_tensor(fiducials, dtype=torch.float64) if not isinstance(fiducials, torch.Tensor) else (
        fiducials.detach().to(torch.float64))
    if f.dim() == 2:
        f = f.unsqueeze(0)
    if f.dim() != 3 or f.shape[-1] != 3:
        raise InputError(f"fiducials must be (N, 3) or (B, N, 3) world mm, got shape {tuple(f.shape)}")
    if f.shape[1] == 0:
        raise InputError("no fiducials: the registration errors need at least one 3D point")
    if not bool(torch.isfinite(f).all()):
        raise InputError("fiducials have NaN or infinite coordinates")
    if f.shape[0] not in (1, B):
        raise InputError(f"{f.shape[0]} fiducial sets for {B} poses")
    return f.expand(B, -1, -1)


# --------------------------------------------------------------------------- metrics
def target_registration_error(pred, true, fiducials, reduce: bool = True) -> torch.Tensor:
    """3D target registration error (mm).

    Args:
        pred, true: estimated and true camera_to_world poses, (4, 4) or (B, 4, 4).
        fiducials: (N, 3) or (B, N, 3) world points (mm), e.g. landmarks on bone.
        reduce: mean over the fiducials (mTRE, (B,)) or not ((B, N)).
    """
    p, t = _pair(pred, true)
    f = _fiducials(fiducials, p.shape[0])
    d = (world_to_camera_points(f, p) - world_to_camera_points(f, t)).norm(dim=-1)
    return d.mean(-1) if reduce else d


def moved_near_isocenter(A, B, isocenter, radius_mm: float = 50.0) -> float:
    """mm: how far pose ``B`` is from pose ``A`` (each (4, 4) camera_to_world) at the anatomy — the mTRE of one
    against the other (:func:`target_registration_error`) at the six points ``radius_mm`` from the
    ``isocenter`` (3,) along the world's axes.  A preprocessing's pose transform applied to both leaves it
    unchanged.  Used where two results of one X-ray are compared without a truth (the counts' refinement,
    :attr:`xraypose.register.counts.CountsFit.moved_mm`; the hypotheses' rivals,
    :func:`xraypose.register.hypotheses.rival_verdict`)."""
    iso = torch.as_tensor(isocenter, dtype=torch.float64).reshape(3)
    eye = torch.eye(3, dtype=torch.float64)
    points = torch.cat([iso + radius_mm * eye, iso - radius_mm * eye])
    return float(target_registration_error(torch.as_tensor(B, dtype=torch.float64),
                                           torch.as_tensor(A, dtype=torch.float64), points)[0])


def _projections(camera: Camera, poses: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels (B, N, 2), behind (B, N) bool): fiducials at or behind the source have no projection."""
    behind = camera.depth(f, poses) <= 0
    return camera.project(f, poses), behind


def _undefined_to_inf(d: torch.Tensor, behind: torch.Tensor) -> torch.Tensor:
    """Per-fiducial distances (B, N): inf where a projection is undefined."""
    return torch.where(behind, torch.full_like(d, math.inf), d)


def projection_error(pred, true, fiducials, camera: Camera, reduce: bool = True) -> torch.Tensor:
    """Mean projection error (mPE): distance between the fiducials' projections, mm on the detector.

    A fiducial at or behind the source of either pose has no projection: its error is ``inf``
    (and so is the pose's mean).  Arguments as :func:`target_registration_error`'s (and the detector
    ``camera``); returns (B,) mm, or (B, N) without ``reduce``."""
    p, t = _pair(pred, true)
    f = _fiducials(fiducials, p.shape[0])
    (uv_p, bp), (uv_t, bt) = _projections(camera, p, f), _projections(camera, t, f)
    spacing = torch.tensor([camera.delx, camera.dely], dtype=torch.float64)
    d = _undefined_to_inf(((uv_p - uv_t) * spacing).norm(dim=-1), bp | bt)
    return d.mean(-1) if reduce else d


def reprojection_error(pred, true, fiducials, camera: Camera, reduce: bool = True) -> torch.Tensor:
    """DiffPose's mean reprojection error (mRPE), mm.

    The projections of the fiducials under each pose are back-projected onto
    that pose's own detector plane (world points at depth ``sdd``); the metric
    is the mean distance between the two sets of world points (``inf`` when a
    fiducial is at or behind the source of either pose).  Arguments as
    :func:`projection_error`'s; returns (B,) mm, or (B, N) without ``reduce``.
    """
    p, t = _pair(pred, true)
    f = _fiducials(fiducials, p.shape[0])
    (uv_p, bp), (uv_t, bt) = _projections(camera, p, f), _projections(camera, t, f)
    xp = camera.backproject(uv_p, p)
    xt = camera.backproject(uv_t, t)
    d = _undefined_to_inf((xp - xt).norm(dim=-1), bp | bt)
    return d.mean(-1) if reduce else d


class DoubleGeodesic(NamedTuple):
    """The double geodesic error of poses (:func:`double_geodesic_error`), each (B,) float64 mm."""

    rot_mm: torch.Tensor  #: ``sdr·θ``, the rotation angle θ (radians) scaled by the radius sdr
    trans_mm: torch.Tensor  #: the distance between the two X-ray sources
    dgeo: torch.Tensor  #: their root-sum-square


def double_geodesic_error(pred, true, sdr: float) -> DoubleGeodesic:
    """(rot_mm, trans_mm, dgeo), each (B,) mm: ``sdr·θ``, source distance, and their root-sum-square."""
    if not (isinstance(sdr, (int, float)) and math.isfinite(sdr) and sdr > 0):
        raise InputError(f"sdr must be a positive number of mm, got {sdr!r}")
    p, t = _pair(pred, true)
    rot = sdr * geodesic_rotation(p, t)
    trans = geodesic_translation(p, t)
    return DoubleGeodesic(rot, trans, (rot * rot + trans * trans).sqrt())


def pose_errors(pred, true, fiducials=None, camera: Camera | None = None, sdr: float | None = None) -> dict:
    """Every metric of every pose: ``{name: (B,) float64 tensor}``.

    Args:
        pred, true: camera_to_world poses, (4, 4) or (B, 4, 4).
        fiducials: (N, 3) or (B, N, 3) world mm; without them only the geodesics are given.
        camera: the detector (for mPE / mRPE, and the default ``sdr``).
        sdr: double-geodesic radius, mm; default ``camera.sdd / 2`` (DiffPose),
            else required.
    Returns:
        dict with the keys of :data:`METRIC_NAMES` that could be computed
        (``mpe``/``mrpe`` need a camera, ``mtre``/``mpe``/``mrpe`` fiducials).
    """
    p, t = _pair(pred, true)
    if sdr is None:
        if camera is None:
            raise InputError("give a camera or a double-geodesic radius sdr (mm)")
        sdr = camera.sdd / 2
    out: dict[str, torch.Tensor] = {}
    if fiducials is not None:
        out["mtre"] = target_registration_error(p, t, fiducials)
        if camera is not None:
            out["mpe"] = projection_error(p, t, fiducials, camera)
            out["mrpe"] = reprojection_error(p, t, fiducials, camera)
    rot, trans, dgeo = double_geodesic_error(p, t, float(sdr))
    out["rot_mm"], out["trans_mm"], out["dgeo"] = rot, trans, dgeo
    out["rot_deg"] = torch.rad2deg(geodesic_rotation(p, t))
    return out


# --------------------------------------------------------------------------- summaries
def success_rate(mtre, threshold_mm: float = 1.0) -> float:
    """Fraction of cases with mTRE strictly below ``threshold_mm`` (NaN / failed cases count as failures)."""
    if isinstance(mtre, torch.Tensor):
        mtre = mtre.detach().cpu().to(torch.float64).numpy()
    a = np.asarray(mtre, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise InputError("no cases to compute a success rate over")
    return float(np.mean(np.where(np.isfinite(a), a < threshold_mm, False)))


def _stats(values: Sequence[float]) -> dict:
    """n, mean, std, min, max, percentiles of the values that are not NaN; ``n_inf`` of them are
    infinite (kept: the percentiles above the finite values are inf, and so are the mean and std)."""
    a = np.asarray(values, dtype=np.float64)
    a = a[~np.isnan(a)]
    if a.size == 0:
        return {"n": 0}
    n_inf = int(np.isinf(a).sum())
    with np.errstate(invalid="ignore", over="ignore"):
        q = np.percentile(a, _PERCENTILES)
        mean, std = float(a.mean()), float(a.std())
    q = np.where(np.isnan(q), np.inf, q)  # inf − inf in the interpolation between two infinite values
    if n_inf:
        std = math.inf  # numpy gives NaN (inf − inf)
    d = {"n": int(a.size), "n_inf": n_inf, "mean": mean, "std": std, "min": float(a.min()), "max": float(a.max())}
    for qq, v in zip(_PERCENTILES, q):
        d[f"p{qq}"] = float(v)
    d["median"] = d["p50"]
    return d


def summarize(rows: Iterable[Mapping], thresholds_mm: Sequence[float] = (1.0, 2.0),
              keys: Sequence[str] = METRIC_NAMES + ("init_s", "opt_s")) -> dict:
    """Summary of per-case results.

    Args:
        rows: one mapping per case with (some of) ``mtre``, ``mpe``, ``mrpe``,
            ``rot_mm``, ``trans_mm``, ``dgeo``, ``rot_deg`` (mm / degrees),
            ``init_s`` and ``opt_s`` (seconds) as numbers; a case whose
            registration failed has ``mtre`` None/NaN (counted as a failure).
    Returns:
        ``{"n_cases", "sr_1mm", "sr_2mm", "median_mtre_mm", "median_opt_s",
        "median_init_s", ..., "stats": {key: {n, mean, std, min, max, p5, p25,
        median, p75, p95}}}``.
    """
    rows = list(rows)
    if not rows:
        raise InputError("no cases to summarise")
    out: dict = {"n_cases": len(rows)}
    stats = {}
    for k in keys:
        vals = [float("nan") if r.get(k) is None else float(r[k]) for r in rows if k in r]
        if vals:
            stats[k] = _stats(vals)
    if any("mtre" in r for r in rows):
        mtre = [float("nan") if r.get("mtre") is None else float(r["mtre"]) for r in rows]
        for th in thresholds_mm:
            out[f"sr_{th:g}mm"] = success_rate(mtre, th)
        out["n_failed"] = int(sum(not math.isfinite(v) for v in mtre))
    for k, name in (("mtre", "median_mtre_mm"), ("mpe", "median_mpe_mm"), ("mrpe", "median_mrpe_mm"),
                    ("dgeo", "median_dgeo_mm"), ("opt_s", "median_opt_s"), ("init_s", "median_init_s")):
        if k in stats and stats[k].get("n"):
            out[name] = stats[k]["median"]
    out["stats"] = stats
    return out


def format_table(rows: Sequence[Mapping], columns: Sequence[str], floatfmt: str = ".3g") -> str:
    """A plain-text table of ``rows`` (dicts) with the given columns."""
    def fmt(v):
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.rjust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(x.rjust(w) for x, w in zip(row, widths)) for row in cells]
    return "\n".join([line, sep, *body])
