"""The registration API: start poses in, poses + metrics + trajectories out, written atomically.

    from xraypose.register import Registrar, register_xray, write_registration
    outs = register_xray(volume, image, camera, init=T0)            # a given start
    outs = register_xray(volume, image, camera, init=ModelInitializer.from_checkpoint("model.pt"))
    write_registration("result/", outs[0])

``image`` is a preprocessed X-ray (line integrals, bone bright; e.g.
``read_xray(path).preprocess(crop=..., blur=(5, 1.0))``) of shape (H, W) or
(B, 1, H, W), all seen through ``camera``.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from xraypose.camera import Camera
from xraypose._checks import check_flag, check_instance
from xraypose.errors import InputError
from xraypose.geometry import check_rigid
from xraypose.preprocess import as_real_tensor, check_not_channels_last
from xraypose.register.hypotheses import parallel_choice
from xraypose.register.initializers import with_antipodal
from xraypose.register.optimizer import Registrar, RegistrationConfig
from xraypose.volume import Volume

__all__ = ["RegistrationOutcome", "Registration", "register_xray", "write_registration", "registration_metrics",
           "registration_spread"]

F64 = torch.float64


@dataclass(kw_only=True)
class RegistrationOutcome:
    """What every registration result reports besides its poses: :class:`Registration` (one X-ray)
    and :class:`~xraypose.register.multiview.RigRegistration` (X-rays tied by a rig) extend it.
    Constructed with keywords only.

    Attributes:
        similarity, status, iterations, bone_multiplier: see :class:`RegistrationResult` (a rig: the
            mean of its views' similarities).
        init_s: seconds spent by the initialiser (0 for a given pose).
        opt_s: seconds of optimisation (a batch of X-rays: the batch's time divided by its size).
        cpu_s: CPU seconds (all threads) of this result's share.
        trajectory: the optimisation's records (see :class:`RegistrationResult`).
        level_stats: per level of the schedule, its settings and what it did.
        config: the :class:`RegistrationConfig` used, as a dict.
        metrics, initial_metrics: errors of the result and of the start (mm) when the true pose is known.
        extra: further entries of ``pose.json`` (the inputs, the start, ...).
        p_success: calibrated probability that the 3D mTRE is below 2 mm
            (:mod:`xraypose.register.confidence`); None when the check was not run.
        verdict: "ok", "uncertain" or "failed" (None when not checked); ``status`` only says how
            the optimiser stopped, the verdict whether to trust the pose.
        reason: one line saying why.
    """

    similarity: float
    status: str
    iterations: int
    bone_multiplier: float
    init_s: float
    opt_s: float
    cpu_s: float
    trajectory: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    level_stats: list = field(default_factory=list)
    metrics: dict | None = None
    initial_metrics: dict | None = None
    extra: dict = field(default_factory=dict)
    p_success: float | None = None
    verdict: str | None = None
    reason: str | None = None


@dataclass(kw_only=True)
class Registration(RegistrationOutcome):
    """One X-ray's registration (keywords only; the shared attributes: :class:`RegistrationOutcome`).

    Attributes:
        camera_to_world: (4, 4) float64, the registered pose (world = CT RAS mm).
        camera: the intrinsics the pose belongs to (those of the registered image).
        initial_pose: (4, 4) the start actually used.
        batch_opt_s, batch_size: the batch's wall-clock time and size.
        chosen_start: index of the start that was kept (several starts: antipodal, hypotheses).
        confidence: the check's signals and seconds, and the hypotheses tried (if any).
        foreign: what was set aside in the X-ray before registering (metal's steps:
            :mod:`xraypose.register.foreign`), or None when that was off.
        shift_search: what the in-plane shift search found for each given start (moved or not, the
            offset, the move in mm, the NCCs: :mod:`xraypose.register.shift_search`), or None when it did
            not run (off, or a result of a hypothesis).
        spread: the pose's own uncertainty — ``{"along_beam_mm", "across_beam_mm", "rotation_deg"}``,
            standard deviations of the X-ray's noise at the optimum (:func:`registration_spread`), or
            None without one.  The scatter the noise predicts, not a bound: a bias (an X-ray formed
            unlike the DRR) is not in it; whether to trust the pose at all is the ``verdict``'s.
    """

    camera_to_world: torch.Tensor
    camera: Camera
    initial_pose: torch.Tensor
    batch_opt_s: float
    batch_size: int
    chosen_start: int = 0
    confidence: dict = field(default_factory=dict)
    foreign: dict | None = None
    shift_search: list | None = None
    spread: dict | None = None

    @property
    def world_to_camera(self) -> torch.Tensor:
        return torch.linalg.inv(self.camera_to_world)

    def pose_json(self) -> dict:
        """The result as JSON: pose, intrinsics, how it was obtained, timings (and metrics)."""
        d = {
            "camera_to_world": self.camera_to_world.tolist(),
            "world_to_camera": self.world_to_camera.tolist(),
            "intrinsics": self.camera.to_dict(),
            "frames": "camera_to_world maps camera coordinates (origin at the X-ray source, +z toward the "
                      "detector, +x columns, +y rows) to the CT's world frame (RAS mm); docs/conventions.md",
            "p_success": self.p_success,
            "verdict": self.verdict,
            "reason": self.reason,
            "spread": self.spread,
            "similarity": self.similarity,
            "status": self.status,
            "iterations": self.iterations,
            "bone_multiplier": self.bone_multiplier,
            "initial_pose": self.initial_pose.tolist(),
            "chosen_start": self.chosen_start,
            "timing": {"init_s": self.init_s, "opt_s": self.opt_s, "batch_opt_s": self.batch_opt_s,
                       "batch_size": self.batch_size, "cpu_s": self.cpu_s},
            "levels": self.level_stats,
            "confidence": self.confidence,
            "foreign": self.foreign,
            "shift_search": self.shift_search,
            "config": self.config,
        }
        return _with_metrics(d, self.metrics, self.extra)


def _with_metrics(d: dict, metrics: dict | None, extra: dict) -> dict:
    """A result's pose.json document ``d`` with its ``metrics`` (when the truth is known) and its
    ``extra`` entries added, in place; ``d``."""
    if metrics is not None:
        d["metrics"] = metrics
    d.update(extra)
    return d


def registration_metrics(pose, true_pose, fiducials, camera: Camera) -> dict:
    """``{mtre, mpe, mrpe, rot_mm, trans_mm, dgeo, rot_deg}`` (floats, mm / degrees) of one pose."""
    from xraypose.metrics import pose_errors

    e = pose_errors(pose, true_pose, fiducials, camera)
    return {k: float(v.reshape(-1)[0]) for k, v in e.items()}


def register_xray(
    volume: Volume,
    image,
    camera: Camera,
    init,
    *,
    config: RegistrationConfig | None = None,
    registrar: Registrar | None = None,
    antipodal: bool = False,
    true_pose=None,
    fiducials=None,
    confidence: bool = True,
    hypotheses: bool = True,
    masks=None,
    parallel_hypotheses: bool | None = None,
) -> list[Registration]:
    """Register X-rays (one detector) to a CT.

    Args:
        volume: the CT.
        image: (H, W) or (B, 1, H, W) preprocessed X-rays.
        camera: their intrinsics.
        init: start poses ((4, 4), (B, 4, 4) or (B, K, 4, 4) several starts
            each), or an initialiser ``init(images (B, 1, H, W), camera) ->
            (B, 4, 4)`` (e.g. :class:`ModelInitializer`), timed separately.
        config / registrar: how to register (a :class:`Registrar` caches the CT's pyramid).
        antipodal: also start from each pose's antipodal flip (AP/PA confusion).
        true_pose, fiducials: (4, 4)/(B, 4, 4) true poses and (N, 3)/(B, N, 3)
            world points: errors of the start and of the result go in ``metrics``.
            Without fiducials, bone fiducials are picked from the CT in the field
            of view of the true pose.
        confidence: check each result (:func:`xraypose.register.confidence.assess`): ``p_success``,
            ``verdict``, ``reason`` (≈ 5 % of a registration's time).
        hypotheses: when a result's verdict is not ``ok`` — or is ``ok`` below ``p_success``
            :data:`~xraypose.register.hypotheses.VERIFY_P` (0.75: verified) —, also register the
            alternatives of :mod:`xraypose.register.hypotheses` (the antipodal start, two restarts about
            the result; one batch; then the given start captured from five starts about it, and with
            every level robust, for metal that is not in the CT) and keep the most likely (a single
            view's antipodal result is ``ok`` only from P 0.9; an ``ok`` with another plausible result
            more than 2 mm away is ``uncertain``); the result says which (``confidence["kept"]``,
            ``confidence["hypotheses"]``).  Costs nothing when the verdict is ``ok`` at P ≥ 0.75.
            Needs ``confidence``.
        masks: optional (H, W) or (B, 1, H, W) pixel weights in [0, 1] (0: not to be trusted, e.g.
            the saturated pixels of :attr:`~xraypose.preprocess.Preprocessed.mask`).
        parallel_hypotheses: the hypotheses on two threads (the same results; on two cores 12–47 % less of
            their time, docs/registration.md "On two threads"); None:
            :func:`~xraypose.register.hypotheses.parallel_default` (two CPUs or more, a registration on one thread).
    Returns:
        one :class:`Registration` per X-ray.
    """
    check_instance("camera", camera, Camera)
    if not isinstance(image, (torch.Tensor, np.ndarray, list, tuple)):
        hint = ": pass its .image" if isinstance(getattr(image, "image", None), torch.Tensor) else ""
        raise InputError(f"image must be an array or tensor (H, W), (B, H, W) or (B, 1, H, W), got "
                         f"{type(image).__name__}{hint}")
    imgs = as_real_tensor(image, "image")
    check_not_channels_last(imgs, camera)
    for flag, value in (("antipodal", antipodal), ("confidence", confidence), ("hypotheses", hypotheses)):
        check_flag(flag, value, prefix="")  # a text 'no' was taken as true
    if registrar is not None:
        check_instance("registrar", registrar, Registrar)
    parallel = parallel_choice(parallel_hypotheses, registrar.config if registrar is not None else config)
    reg = registrar or Registrar(volume, config)
    if imgs.dim() == 2:
        imgs = imgs[None, None]
    elif imgs.dim() == 3:
        imgs = imgs[:, None]
    B = imgs.shape[0]
    truth = None
    if true_pose is not None:
        truth = as_real_tensor(true_pose, "true_pose", F64)
        if truth.dim() not in (2, 3) or truth.shape[-2:] != (4, 4) or truth.dim() == 3 and truth.shape[0] not in (1, B):
            raise InputError(f"true_pose must be (4, 4) or (B, 4, 4) for B = {B} X-rays, got {tuple(truth.shape)}")
        try:  # a NaN one said 'no bone of the CT projects into the detector'
            check_rigid(truth, atol=1e-3)
        except InputError as e:
            raise InputError(f"true_pose: {e}") from None
        truth = truth.reshape(-1, 4, 4).expand(B, 4, 4)
    if fiducials is not None:  # before the registration, not after it
        fiducials = as_real_tensor(fiducials, "fiducials", F64)
        if fiducials.dim() not in (1, 2, 3) or fiducials.shape[-1] != 3 or (
                fiducials.dim() == 3 and fiducials.shape[0] not in (1, B)):  # (N, 2) raised torch's reshape error
            raise InputError(f"fiducials must be (N, 3) or (B, N, 3) world points for B = {B} X-rays, got "
                             f"{tuple(fiducials.shape)}")
        _check_fiducials_near_ct(fiducials, volume)
    starts, init_s = _starts(reg, imgs, camera, init, antipodal)
    if masks is not None:
        masks = as_real_tensor(masks, "masks", torch.float32)
        masks = masks.reshape(1, 1, *masks.shape) if masks.dim() == 2 else masks
    res = reg.register(imgs, camera, starts, masks=masks)
    picks = [(res, b) for b in range(B)]  # where each X-ray's result comes from
    checks: list = [None] * B
    if confidence:
        picks, checks = _check_results(reg, imgs, camera, res, hypotheses, masks, parallel)
    outs = []
    for b in range(B):
        src, k = picks[b]
        r = Registration(
            camera_to_world=src.poses[k].clone(), camera=camera, initial_pose=src.initial_poses[k].clone(),
            similarity=float(src.similarity[k]), status=src.status[k], iterations=int(src.iterations[k]),
            bone_multiplier=float(src.bone_multiplier[k]) if src.bone_multiplier is not None else
            float(reg.config.bone_multiplier),
            init_s=init_s, opt_s=res.opt_s / B, batch_opt_s=res.opt_s, batch_size=B, cpu_s=res.cpu_s / B,
            trajectory=src.trajectories[k], config=reg.config.to_dict(), level_stats=src.level_stats,
            chosen_start=src.chosen_start[k] if src is res else 0,
            foreign=src.foreign[k][0] if src.foreign else None,
            shift_search=src.shift_search[k] if src is res and src.shift_search else None,
            spread=registration_spread(src, k, tuple(imgs.shape[-2:])),
        )
        if checks[b] is not None:
            c = checks[b]["conf"]
            r.p_success, r.verdict, r.reason, r.confidence = float(c.p_success), c.verdict, c.reason, checks[b]["info"]
        if truth is not None:
            _add_truth(r, volume, camera, truth[b], fiducials, b)
        outs.append(r)
    return outs


def registration_spread(res, k: int, size: tuple[int, int], scale: float | None = None) -> dict | None:
    """The registered pose's own uncertainty: standard deviations along the beam, across it (mm, at the
    isocenter) and of the rotation (degrees) — ``{"along_beam_mm", "across_beam_mm", "rotation_deg",
    "noise_scale"}`` — of element ``k`` of a :class:`RegistrationResult` on an X-ray of ``size`` (H, W).

    :func:`~xraypose.register.motion.result_covariance` (the last Levenberg–Marquardt level's Gauss–Newton
    curvature at the pose, its residual, its pixels) with the standard deviations × ``scale`` (default
    :data:`~xraypose.register.motion.NOISE_SCALE`: the scatter measured on low-dose frames, as ``track``
    weighs each frame).  None without a Levenberg–Marquardt level."""
    from xraypose.register.motion import NOISE_SCALE, pose_spread, result_covariance

    scale = NOISE_SCALE if scale is None else float(scale)
    C = result_covariance(res, k, [size], scale)
    sp = pose_spread(C, res.poses[k]) if C is not None else None
    return None if sp is None else {**sp, "noise_scale": scale}


def _starts(reg, imgs: torch.Tensor, camera: Camera, init, antipodal: bool):
    """(starts (B, 4, 4) or (B, K, 4, 4) float64, initialiser seconds per X-ray) of :func:`register_xray`."""
    B = imgs.shape[0]
    t0 = time.perf_counter()
    if callable(init) and not isinstance(init, torch.Tensor):
        starts = init(imgs, camera)
        init_s = (time.perf_counter() - t0) / B
    else:
        starts = init
        init_s = 0.0
    starts = as_real_tensor(starts, "init (start poses (4, 4), (B, 4, 4) or (B, K, 4, 4), or an initialiser)", F64)
    if starts.dim() == 2:
        starts = starts[None]
    if antipodal:
        if starts.dim() != 3:
            raise InputError("antipodal starts need one start pose per X-ray")
        starts = with_antipodal(starts, reg.isocenter)
    return starts, init_s


def _check_results(reg, imgs: torch.Tensor, camera: Camera, res, hypotheses: bool, masks, parallel: bool = False):
    """Each result's confidence (and its hypotheses when not ``ok``, or ``ok`` below
    :data:`~xraypose.register.hypotheses.VERIFY_P`; on two threads with ``parallel``): (picks, checks) per X-ray."""
    from xraypose.register.confidence import assess
    from xraypose.register.hypotheses import to_verify

    B = imgs.shape[0]
    picks = [(res, b) for b in range(B)]
    checks: list = assess(reg, imgs, camera, res.poses, starts=res.initial_poses, masks=masks)
    for b in range(B):
        c = checks[b]
        checks[b] = {"conf": c, "info": {**c.to_dict(), "kept": "given start"}}
        if hypotheses and to_verify(c.verdict, c.p_success):  # not ok, or an ok to verify
            mb = None if masks is None else masks[min(b, masks.shape[0] - 1):][:1]
            picks[b], checks[b] = _try_hypotheses(reg, imgs[b:b + 1], camera, res, b, c, mb, parallel)
    return picks, checks


#: How far outside the CT's box (mm) the nearest fiducial may lie before the fiducials are refused.
FIDUCIAL_MARGIN_MM = 50.0
#: Fiducials (two or more, not all one point) spread over less than this (mm, the largest distance between two)
#: in a CT of more than :data:`FIDUCIAL_MARGIN_MM` are refused as metres: inside a box holding the origin the
#: margin test passes them.  A real study's landmarks lie tens of mm apart; metres put them within 0.3 "mm".
FIDUCIAL_MIN_SPREAD_MM = 1.0


def _check_fiducials_near_ct(fiducials: torch.Tensor, volume: Volume) -> None:
    """InputError when no fiducial lies within :data:`FIDUCIAL_MARGIN_MM` of the CT's box, or they span less
    than :data:`FIDUCIAL_MIN_SPREAD_MM`: points in metres (or in another frame) gave a silent, meaningless mTRE."""
    pts = fiducials.reshape(-1, 3)
    if pts.shape[0] == 0:
        return
    box = volume.corners.to(pts)
    lo, hi = box.min(0).values, box.max(0).values
    gap = (torch.clamp(lo - pts, min=0) + torch.clamp(pts - hi, min=0)).norm(dim=-1)  # 0 inside the box
    spread = float(torch.cdist(pts, pts).max())
    extent = float((hi - lo).max())
    if 1e-3 < spread < FIDUCIAL_MIN_SPREAD_MM and extent > FIDUCIAL_MARGIN_MM:  # 1 µm: one point, rounded apart
        raise InputError(
            f"fiducials: the {pts.shape[0]} points span {spread:.3g} mm in a CT of {extent:.0f} mm (landmarks lie "
            f"tens of mm apart); fiducials are world RAS millimetres, the CT's frame (metres? multiply by 1000)")
    if float(gap.min()) > FIDUCIAL_MARGIN_MM:
        i = int(gap.argmin())
        raise InputError(
            f"fiducials: none of the {pts.shape[0]} points lies in the CT (the nearest, "
            f"({', '.join(f'{float(v):g}' for v in pts[i])}), is {float(gap[i]):.0f} mm outside its box "
            f"x {float(lo[0]):.0f}…{float(hi[0]):.0f}, y {float(lo[1]):.0f}…{float(hi[1]):.0f}, z {float(lo[2]):.0f}…"
            f"{float(hi[2]):.0f} mm); fiducials are world RAS millimetres, the CT's frame (metres? multiply by 1000)")


def _add_truth(r: Registration, volume: Volume, camera: Camera, truth: torch.Tensor, fiducials, b: int) -> None:
    """The errors of ``r``'s start and result against ``truth`` (4, 4) at the fiducials (or bone points)."""
    fid = fiducials  # a float64 tensor (register_xray's as_real_tensor) or None
    if fid is not None:
        if fid.dim() == 3:
            fid = fid[b if fid.shape[0] > 1 else 0]
    else:
        from xraypose.fiducials import pick_bone_fiducials

        fid = pick_bone_fiducials(volume, n=20, camera=camera, poses=truth)
    r.metrics = registration_metrics(r.camera_to_world, truth, fid, camera)
    r.initial_metrics = registration_metrics(r.initial_pose, truth, fid, camera)
    r.extra["true_pose"] = truth.tolist()
    r.extra["fiducials"] = fid.tolist()


def _given_start_plans(config, verdicts) -> list:
    """[(name, ``derive`` changes)] of the hypotheses "the given start registered another way", in the order they
    are tried — intensities matched, five capture starts, then the schedules (metal, scatter) —, those that
    ``config`` and the verdicts so far (``verdicts``: :func:`~xraypose.register.hypotheses.gate_verdicts`) let
    run; with no verdicts, every one that could run at all."""
    from xraypose.register.hypotheses import (CAPTURE_HYPOTHESIS, MATCH_HYPOTHESIS, SCHEDULE_HYPOTHESES,
                                              capture_hypothesis_config, match_hypothesis_config, schedule_levels)

    plans = [(MATCH_HYPOTHESIS, match_hypothesis_config(config, verdicts)),
             (CAPTURE_HYPOTHESIS, capture_hypothesis_config(config, verdicts))]
    for name in SCHEDULE_HYPOTHESES:
        levels = schedule_levels(name, config, verdicts)
        plans.append((name, None if levels is None else {"levels": levels}))
    return [(name, changes) for name, changes in plans if changes is not None]


def _try_hypotheses(reg, image, camera: Camera, res, b: int, conf, mask=None, parallel: bool = False) -> tuple:
    """Register the alternatives of X-ray ``b`` (image (1, 1, H, W)) and keep the most likely: the highest
    ``p_ranked`` — the larger of the check's ``p_success`` and its P with scatter modelled on the DRR
    (``p_scatter``, :func:`~xraypose.register.confidence.scatter_aware_p`) —, the given start's result
    unless beaten by ``MARGIN``; its verdict is the shipped check's.

    ``parallel``: the alternatives' batch and the given start's other registrations (:func:`_given_start_plans`,
    each of which runs only while no result so far is ``ok``) start at once on two threads
    (:func:`~xraypose.register.hypotheses.run_in_order`): the results of trying them one after the other.

    Returns ((result, index) of the kept registration, {"conf": its Confidence, "info": JSON-ready
    check with ``kept`` and ``hypotheses`` (each alternative's start, p_success, verdict, similarity,
    ``p_scatter``, ``p_ranked``, its result ``camera_to_world`` and its distance ``from_kept_mm`` from the
    kept one) and ``hypotheses_s``}).
    """
    from xraypose.register.confidence import assess, scatter_aware_p
    from xraypose.register.hypotheses import (best_hypothesis, cancellable, final_verdict, gate_verdicts, kept_reason,
                                              run_in_order, scatter_note, settle_kept, viable_alternatives)

    names, alts = viable_alternatives(res.initial_poses[b], res.poses[b], camera, reg.isocenter,
                                      seed=reg.config.seed + b)
    tried = [{"start": "given start", "p_success": conf.p_success, "verdict": conf.verdict,
              "similarity": float(res.similarity[b])}]
    found = [((res, b), conf)]  # per tried entry: (result, index) and its Confidence
    t0 = time.perf_counter()

    def add(name, r, k, c):
        tried.append({"start": name, "p_success": c.p_success, "verdict": c.verdict,
                      "similarity": float(r.similarity[k])})
        found.append(((r, k), c))

    def registered(registrar, starts):  # [(result, index, Confidence)] of starts (K, 4, 4) registered in one batch
        K = starts.shape[0]
        imgs, masks = image.expand(K, -1, -1, -1), None if mask is None else mask.expand(K, -1, -1, -1)
        r = registrar.register(imgs, camera, starts, masks=masks)
        return [(r, k, c) for k, c in enumerate(assess(reg, imgs, camera, r.poses, starts=starts, masks=masks))]

    # the alternatives in one batch; then the given start registered other ways — intensities matched to the DRR's
    # (a display curve), captured from several starts about it, every level robust (metal), scatter modelled on the
    # DRR —, each while no result so far is ok
    cancel = threading.Event() if parallel else None
    batch = "alternatives"
    jobs = [(batch, partial(registered, cancellable(reg, cancel), alts))] if len(names) else []
    jobs += [(name, partial(registered, cancellable(reg.derive(**changes), cancel), res.initial_poses[b:b + 1]))
             for name, changes in _given_start_plans(reg.config, [])]

    def wanted(name):
        return name == batch or name in dict(_given_start_plans(reg.config, gate_verdicts(tried)))

    for name, results in run_in_order(jobs, wanted, parallel, reg.config.num_threads, cancel):
        for k, (r, i, c) in enumerate(results):
            add(names[k] if name == batch else name, r, i, c)

    # the kept result: the most likely by the check as shipped or with scatter modelled on its DRR, whichever
    # is higher (ranking only: the verdict is the shipped check's), replacing the given start's only when
    # higher by MARGIN
    n, poses = len(found), [r.poses[k] for (r, k), _ in found]
    p_scatter = scatter_aware_p(reg, image.expand(n, -1, -1, -1), camera, torch.stack(poses),
                                masks=None if mask is None else mask.expand(n, -1, -1, -1))
    ranks = [max(c.p_success, q) for (_, c), q in zip(found, p_scatter)]
    for t, q, p in zip(tried, p_scatter, ranks):
        t["p_scatter"], t["p_ranked"] = q, p
    k = best_hypothesis(ranks[0], ranks[1:])
    best = settle_kept(tried, poses, 0 if k is None else 1 + k, reg.isocenter)
    pick, c = found[best]
    kept = tried[best]["start"]
    c.reason = kept_reason(c.reason, kept, conf.p_success)
    c.verdict, why, note = final_verdict(c.verdict, c.p_success, kept, tried)
    if why is not None:
        c.reason = f"{why} (P {c.p_success:.2f}; {c.reason})"
    if note:
        c.reason = f"{c.reason}; {note}"
    note = scatter_note(c.verdict, c.p_success, tried[best].get("p_scatter"))
    if note is not None:
        c.reason = f"{c.reason}; {note}"
    info = {**c.to_dict(), "kept": kept, "hypotheses": tried, "hypotheses_s": time.perf_counter() - t0}
    return pick, {"conf": c, "info": info}


#: The files of a registration result; re-running into the same folder replaces them all.
RESULT_FILES = ("pose.json", "metrics.json", "trajectory.json", "views.png")


def write_registration(outdir, reg: Registration, extra: dict | None = None, trajectory: bool = True, *,
                       image=None, volume: Volume | None = None, mask=None, name: str = "X-ray",
                       renderer=None) -> list[Path]:
    """Write ``pose.json`` (pose, intrinsics, timings, config), ``metrics.json`` (when the
    truth is known) and ``trajectory.json`` into ``outdir`` (created); given the registered
    ``image`` ((H, W), as registered: preprocessed, windowed) and the ``volume``, also ``views.png``:
    the X-ray, the DRR at the result and its edges on the X-ray — and the same for a rival result beside it
    (:func:`rival_view`) —, the verdict above (as a rig's
    result draws every view: :func:`xraypose.register.multiview.views_picture`; ``mask``, the
    X-ray's trusted pixels, sets its display window).

    The files are written together (:func:`xraypose.io.atomic_write_files`): a write error
    (read-only folder, full disk) leaves an earlier result in ``outdir`` as it was; otherwise
    the earlier result's files that this one does not have (e.g. its ``metrics.json``) are
    removed, so the folder holds this result only.  Metrics that are infinite (a fiducial
    behind the X-ray source) are written as ``null`` and listed under ``"non_finite"``.
    ``outdir`` is locked while it is written (:func:`xraypose.output_lock.output_lock`, joining a lock the
    calling command holds there): a write into a folder another xraypose run is using is refused
    (:class:`~xraypose.output_lock.OutputInUse`).
    """
    from xraypose.io import atomic_write_files, json_bytes, make_output_folder
    from xraypose.output_lock import output_lock

    pose = reg.pose_json()
    if extra:
        pose.update(extra)
    _check_finite({k: v for k, v in pose.items() if k != "metrics"})
    for what, m in (("metrics", reg.metrics), ("initial metrics", reg.initial_metrics)):
        _check_finite(m or {}, what, allow_inf=True)  # inf: a fiducial behind the source (a failed case)
    files = {"pose.json": json_bytes(pose)}
    if reg.metrics is not None:
        files["metrics.json"] = json_bytes({"final": reg.metrics, "initial": reg.initial_metrics,
                                            "success_1mm": reg.metrics["mtre"] < 1.0,
                                            "success_2mm": reg.metrics["mtre"] < 2.0,
                                            "init_s": reg.init_s, "opt_s": reg.opt_s})
    if trajectory:
        files["trajectory.json"] = json_bytes({"records": reg.trajectory, "levels": reg.level_stats})
    if image is not None and volume is not None:
        from xraypose.register.multiview import result_picture

        views, names = [reg], [name]
        rival = rival_view(reg)
        if rival is not None:  # a second answer the check did not reject: drawn beside, to compare
            views.append(rival)
            names.append(f"{name}, rival: {rival.start}, {rival.from_kept_mm:.0f} mm away")
        png = picture_or_warning(lambda: result_picture(
            volume, [image] * len(views), views, names, reg.config, reg.verdict, reg.p_success,
            None if mask is None else [mask] * len(views), renderer))
        if png is not None:
            files["views.png"] = png
    with output_lock(outdir, join=True):  # a command's lock on it joined, else one of its own: another run's refused
        return atomic_write_files(make_output_folder(outdir), files, remove=RESULT_FILES)


def picture_or_warning(draw) -> bytes | None:
    """``draw()``'s PNG bytes, or None with a warning when drawing fails: a result's picture is never worth
    its pose (a 1200 × 40 X-ray registered at 32 × 1 pixels once crashed in the edge filter after the
    registration, and the result was lost)."""
    import warnings

    try:
        return draw()
    except (ValueError, IndexError, RuntimeError, TypeError, ZeroDivisionError) as e:
        warnings.warn(f"views.png not drawn ({type(e).__name__}: {e}); the result's other files are written",
                      RuntimeWarning, stacklevel=3)
        return None


def rival_view(reg: Registration):
    """The most likely of ``reg``'s other hypotheses' results that the check did not reject (``ok`` or
    ``uncertain``) and that lies more than :data:`~xraypose.register.hypotheses.RIVAL_MM` from the kept one
    (``views.png`` draws it beside the result), as an object with ``camera``, ``camera_to_world``, ``verdict``,
    ``p_success``, ``start``, ``from_kept_mm``; None when there is none."""
    from types import SimpleNamespace

    from xraypose.register.hypotheses import rivals

    conf = reg.confidence or {}
    drawable = [h for h in rivals(conf.get("hypotheses") or [], conf.get("kept"))
                if h.get("camera_to_world") is not None]  # (a pose that is not finite is not drawn)
    if not drawable:
        return None
    h = max(drawable, key=lambda t: t["p_success"])
    return SimpleNamespace(camera=reg.camera, camera_to_world=torch.tensor(h["camera_to_world"], dtype=F64),
                           verdict=h["verdict"], p_success=h["p_success"], start=h["start"],
                           from_kept_mm=float(h["from_kept_mm"]))


def _check_finite(obj, where: str = "result", allow_inf: bool = False) -> None:
    """Never write a NaN: raise if any number in ``obj`` is not finite (``allow_inf``: NaN only)."""
    if isinstance(obj, float):
        if math.isnan(obj) or (not allow_inf and not math.isfinite(obj)):
            raise InputError(f"{where} holds a non-finite number; refusing to write it")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, f"{where}.{k}", allow_inf)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_finite(v, where, allow_inf)
