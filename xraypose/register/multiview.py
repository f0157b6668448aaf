"""Several X-rays tied by a rig, registered together: one ``rig_to_world``, every view's pose.

    from xraypose.register.multiview import ViewImage, register_rig, write_rig_registration
    views = [ViewImage("cam01", image1, camera1, camera_to_rig1), ViewImage("cam02", image2, camera2, C2)]
    out = register_rig(volume, views, start_rig_to_world, registrar=Registrar(volume, config))
    out.rig_to_world                  # (4, 4) float64: rig frame -> CT world (RAS mm)
    out.views[i].camera_to_world      # rig_to_world @ camera_to_rig_i
    out.verdict, out.p_success, out.reason
    write_rig_registration("result/", out, images=[v.image for v in views])

* **The objective** (:meth:`xraypose.register.Registrar.register_views`): every view's similarity
  at the view's pose ``rig_to_world · camera_to_rig_i``, combined by their **mean** — each view
  counts the same whatever its size (the residuals are concatenated, each divided by √N, so
  ``score = 1 − ½‖r‖² = mean_i score_i``).
* **Parameter frame.**  The optimiser moves the rig about the isocenter along the axes of the
  *start view* (``start_view``, default the first): the views are re-expressed relative to that
  view's camera (``camera_to_rig'_i = camera_to_rig_r⁻¹ · camera_to_rig_i``), so the coarse levels'
  depth handling is that of a single-view registration of the start view, and the rig's own
  frame (a calibration's world, arbitrary) does not matter.  The result is given back in the
  rig's frame.
* **Starts**: a (4, 4) ``rig_to_world`` (or (K, 4, 4): several, the best at the first level goes
  on); or an initialiser ``init(image (1, 1, H, W), camera) -> (1, 4, 4)`` (e.g. a trained
  model's :class:`~xraypose.register.initializers.ModelInitializer`) run on the start view,
  whose estimate ``T`` gives ``rig_to_world = T · camera_to_rig_r⁻¹``; :func:`rig_start` does
  the same for any pose of one view (C-arm angles, a pose file).
* **The verdict** (:func:`combine_confidences`): each view is checked at its pose
  (:func:`xraypose.register.confidence.assess`: its DRR against its X-ray, the sharpness of its
  optimum), and the joint result is trusted as far as its *least trusted view*: ``p_success`` =
  the smallest of the views', verdict ``failed`` when any view's is, ``ok`` when every view's
  is, else ``uncertain``; the reason names the view.  A wrong joint pose shows in some view (a
  depth error along one beam is an in-plane shift in another view), so one view's failure is
  the joint result's.  This is conservative: a single view's check sees its depth as weakly
  constrained (``flat_mm`` along its beam), which the other views pin down in a joint
  registration; the model was fitted on single-view registrations.
* **Hypotheses** (``hypotheses=True``, the default when checked): when the joint verdict is not
  ``ok``, the alternatives of a single view (:mod:`xraypose.register.hypotheses`: the start view
  seen from the other side, two restarts turned 10° and shifted 40 mm from the result) are
  registered jointly too and the one with the highest combined ``p_success`` is kept if it beats
  the given start's by :data:`~xraypose.register.hypotheses.MARGIN` (``kept`` and ``hypotheses``
  in pose.json); then, unless one is already ``ok``, the given start with the metal schedule
  (:func:`~xraypose.register.config.metal_levels`: every level robust), as for one view.

Units: mm, radians; poses are camera_to_world / rig_to_world (world = CT RAS mm).
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.preprocess import as_real_tensor
from xraypose.register.api import RegistrationOutcome, _check_fiducials_near_ct
from xraypose.register.confidence import Judgement
from xraypose.register.hypotheses import parallel_choice
from xraypose.register.optimizer import Registrar, RegistrationConfig
from xraypose.volume import Volume

__all__ = ["ViewImage", "ViewResult", "RigRegistration", "register_rig", "rig_start", "combine_confidences",
           "write_rig_registration", "views_picture", "result_picture", "RIG_RESULT_FILES"]

F64 = torch.float64

#: The files of a rig registration; re-running into the same folder replaces them all (and a
#: single-view result's).
RIG_RESULT_FILES = ("pose.json", "metrics.json", "trajectory.json", "views.png")


@dataclass
class ViewImage:
    """One view to register: ``image`` (H, W) preprocessed (line integrals, bone bright), its
    ``camera`` and its ``camera_to_rig`` (4, 4) float64 mm; ``name`` (e.g. the X-ray's file name);
    ``mask``: optional (H, W) pixel weights in [0, 1] (the similarity and the intensity fits are
    weighted by them: an image intensifier's field, one structure's footprint)."""

    name: str
    image: torch.Tensor
    camera: Camera
    camera_to_rig: torch.Tensor
    source: str = ""
    mask: torch.Tensor | None = None


@dataclass
class ViewResult:
    """One view of a rig registration.

    Attributes:
        name, camera, camera_to_rig: as given.
        camera_to_world: (4, 4) float64 ``rig_to_world · camera_to_rig``.
        p_success, verdict, reason, confidence: this view's check (None when not checked).
        metrics, initial_metrics: this view's errors (mm, degrees) when the truth is known.
        spread: the rig pose's own standard deviations seen from this view — along its beam, across it
            (mm, at the CT's isocenter) and of the rotation — from the joint registration's curvature
            (:func:`~xraypose.register.api.registration_spread`'s, over every view's pixels); None without one.
    """

    name: str
    camera: Camera
    camera_to_rig: torch.Tensor
    camera_to_world: torch.Tensor
    p_success: float | None = None
    verdict: str | None = None
    reason: str | None = None
    confidence: dict = field(default_factory=dict)
    metrics: dict | None = None
    initial_metrics: dict | None = None
    source: str = ""
    spread: dict | None = None

    def to_dict(self) -> dict:
        d = {"name": self.name, "source": self.source, "camera_to_rig": self.camera_to_rig.tolist(),
             "camera_to_world": self.camera_to_world.tolist(),
             "world_to_camera": torch.linalg.inv(self.camera_to_world).tolist(),
             "intrinsics": self.camera.to_dict(), "p_success": self.p_success, "verdict": self.verdict,
             "reason": self.reason, "confidence": self.confidence, "spread": self.spread}
        if self.metrics is not None:
            d["metrics"] = self.metrics
            d["initial_metrics"] = self.initial_metrics
        return d


@dataclass(kw_only=True)
class RigRegistration(RegistrationOutcome):
    """N views registered together (keywords only; the shared attributes:
    :class:`~xraypose.register.api.RegistrationOutcome`).

    Attributes:
        rig_to_world: (4, 4) float64, the registered rig pose (world = CT RAS mm).
        initial_rig_to_world: (4, 4) the start actually used.
        views: one :class:`ViewResult` per view, in the order given.
        start_view: index of the view the start was given for.
        similarity: the mean of the views' similarities at the last level; status, iterations: the
            optimiser's (:class:`~xraypose.register.RegistrationResult`).
        p_success, verdict, reason: the combined check (:func:`combine_confidences`).
        kept, hypotheses: which start's result this is ("given start", or an alternative's name) and
            every start tried (start, p_success, verdict, similarity); None / empty when none was tried.
        init_s, opt_s, cpu_s: seconds (initialiser, optimisation wall-clock, CPU).
        metrics, initial_metrics: errors with the truth: ``mtre`` (the same in every view: the rig
            is rigid), the other entries the first view's; every view's in ``views[i].metrics``.
    """

    rig_to_world: torch.Tensor
    initial_rig_to_world: torch.Tensor
    views: list
    start_view: int = 0
    kept: str | None = None
    hypotheses: list = field(default_factory=list)

    def pose_json(self) -> dict:
        """The result as JSON: the rig pose, every view's pose and intrinsics, the verdicts, timings."""
        from xraypose.register.api import _with_metrics

        d = {
            "rig_to_world": self.rig_to_world.tolist(),
            "world_to_rig": torch.linalg.inv(self.rig_to_world).tolist(),
            "views": [v.to_dict() for v in self.views],
            "frames": "rig_to_world maps the rig's frame (that of camera_to_rig) to the CT's world frame (RAS mm); "
                      "view i's camera_to_world = rig_to_world · camera_to_rig_i (camera: origin at the X-ray "
                      "source, +z toward the detector, +x columns, +y rows); docs/conventions.md",
            "p_success": self.p_success,
            "verdict": self.verdict,
            "reason": self.reason,
            "verdict_rule": "the least trusted view's: p_success = min over views, failed if any view failed, ok if "
                            "every view is ok (docs/registration.md)",
            "similarity": self.similarity,
            "similarity_rule": "mean of the views' similarities",
            "status": self.status,
            "iterations": self.iterations,
            "bone_multiplier": self.bone_multiplier,
            "initial_rig_to_world": self.initial_rig_to_world.tolist(),
            "start_view": self.views[self.start_view].name,
            "timing": {"init_s": self.init_s, "opt_s": self.opt_s, "cpu_s": self.cpu_s},
            **({"kept": self.kept, "hypotheses": self.hypotheses} if self.hypotheses else {}),
            "levels": self.level_stats,
            "config": self.config,
        }
        return _with_metrics(d, self.metrics, self.extra)


def rig_start(camera_to_world, camera_to_rig) -> torch.Tensor:
    """``rig_to_world`` (4, 4) placing a view whose ``camera_to_rig`` is given at ``camera_to_world``
    (a start for that one view: C-arm angles, a model's estimate, a pose file)."""
    T = torch.as_tensor(camera_to_world, dtype=F64).reshape(-1, 4, 4)
    C = torch.as_tensor(camera_to_rig, dtype=F64).reshape(4, 4)
    out = T @ torch.linalg.inv(C)
    return out[0] if out.shape[0] == 1 else out


def combine_confidences(names, confidences) -> Judgement:
    """(p_success, verdict, reason) of a joint result from its views' checks (module docstring).

    Args:
        names: the views' names; confidences: their :class:`~xraypose.register.confidence.Confidence`.
    """
    if not confidences:
        raise InputError("no view to combine")
    ps = [float(c.p_success) for c in confidences]
    rank = {"failed": 0, "uncertain": 1}  # the reason is the least trusted view's: worst verdict, then lowest P
    order = sorted(range(len(ps)), key=lambda i: (rank.get(confidences[i].verdict, 2), ps[i]))
    worst = order[0]
    verdicts = [c.verdict for c in confidences]
    if "failed" in verdicts:
        verdict = "failed"
    elif all(v == "ok" for v in verdicts):
        verdict = "ok"
    else:
        verdict = "uncertain"
    if verdict == "ok":
        reason = "every view's DRR matches its X-ray closely and its optimum is sharp"
    else:
        reason = f"view {names[worst]}: {confidences[worst].reason}"
    return Judgement(min(ps), verdict, reason)


def _rigid(T, name: str) -> torch.Tensor:
    """(4, 4) float64 ``T`` checked rigid (:data:`xraypose.rig.RIG_RIGID_TOL`), naming the view."""
    from xraypose.rig import RIG_RIGID_TOL

    C = torch.as_tensor(T, dtype=F64)
    if C.shape != (4, 4) or not bool(torch.isfinite(C).all()):
        raise InputError(f"view {name}: camera_to_rig must be a finite 4×4 matrix, got shape {tuple(C.shape)}")
    R = C[:3, :3]
    err = float((R.T @ R - torch.eye(3, dtype=F64)).abs().max())
    last = float((C[3] - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=F64)).abs().max())
    if err > RIG_RIGID_TOL or last > RIG_RIGID_TOL or float(torch.det(R)) < 0:
        raise InputError(f"view {name}: camera_to_rig is not a rigid transform (rotation off by {err:.2g}, "
                         f"det {float(torch.det(R)):.3g}, last row {C[3].tolist()})")
    return C


def _as_image(img) -> torch.Tensor:
    x = torch.as_tensor(img, dtype=torch.float32)
    if x.dim() == 4 and x.shape[:2] == (1, 1):
        x = x[0, 0]
    if x.dim() != 2:
        raise InputError(f"a view's image must be (H, W), got shape {tuple(x.shape)}")
    return x


def _rig_views(views, start_view) -> tuple[list, int]:
    """The views as :class:`ViewImage` (tuples converted) and ``start_view`` as an index into them."""
    vs = [v if isinstance(v, ViewImage) else ViewImage(*v) for v in views]
    if not vs:
        raise InputError("no X-ray to register")
    if not 0 <= int(start_view) < len(vs):
        raise InputError(f"start_view must be a view index in [0, {len(vs) - 1}], got {start_view}")
    return vs, int(start_view)


def _rig_starts(init, image, camera: Camera, camera_to_rig) -> tuple[torch.Tensor, float]:
    """(K, 4, 4) float64 start ``rig_to_world`` from ``init`` (a pose or poses, or an initialiser
    run on the start view's ``image`` (H, W) and ``camera``; ``camera_to_rig`` (4, 4) that view's),
    and the initialiser's seconds (0 for a given pose)."""
    t0 = time.perf_counter()
    if callable(init) and not isinstance(init, torch.Tensor):
        T = torch.as_tensor(init(image[None, None], camera), dtype=F64).reshape(-1, 4, 4)[0]
        return rig_start(T, camera_to_rig).reshape(1, 4, 4), time.perf_counter() - t0
    return torch.as_tensor(init, dtype=F64).reshape(-1, 4, 4), 0.0


def _view_triples(vs: list, imgs: list, rel: list) -> list:
    """The views as :meth:`Registrar.register_views` takes them: ``(image (1, 1, H, W), camera,
    camera_to_rig' (4, 4))``, with a fourth entry, the (1, 1, H, W) mask, where the view has one."""
    return [(imgs[i][None, None], vs[i].camera, rel[i]) if vs[i].mask is None else
            (imgs[i][None, None], vs[i].camera, rel[i], _as_image(vs[i].mask)[None, None])
            for i in range(len(vs))]


def _rig_registration(res, reg: Registrar, vs: list, Cs: list, Cr_inv, r: int, init_s: float) -> RigRegistration:
    """The :class:`RigRegistration` of a one-element result ``res`` of the start view's frame
    (its poses times ``Cr_inv`` (4, 4), the start view's ``rig_to_camera``, are rig poses;
    ``Cs``: the views' (4, 4) camera_to_rig), unchecked and without metrics."""
    from xraypose.register.motion import NOISE_SCALE, pose_spread, result_covariance

    X = res.poses[0] @ Cr_inv
    X0 = res.initial_poses[0] @ Cr_inv
    # the joint pose's covariance (world axes at the isocenter: every view's camera moves with it), seen along each
    # view's beam; a second view fixes what the first sees only as magnification
    C = result_covariance(res, 0, [tuple(_as_image(v.image).shape[-2:]) for v in vs], NOISE_SCALE)
    outs = [ViewResult(name=v.name, camera=v.camera, camera_to_rig=Cs[i], camera_to_world=X @ Cs[i],
                       source=v.source) for i, v in enumerate(vs)]
    if C is not None:
        for o in outs:
            o.spread = {**pose_spread(C, o.camera_to_world), "noise_scale": NOISE_SCALE}
    traj = res.trajectories[0]
    for rec in traj:  # the optimiser's poses are the start view's cameras: give rig poses
        rec["rig_to_world"] = (torch.tensor(rec.pop("camera_to_world"), dtype=F64) @ Cr_inv).tolist()
    return RigRegistration(
        rig_to_world=X, initial_rig_to_world=X0, views=outs, similarity=float(res.similarity[0]),
        status=res.status[0], iterations=int(res.iterations[0]),
        bone_multiplier=float(res.bone_multiplier[0]) if res.bone_multiplier is not None else
        float(reg.config.bone_multiplier),
        init_s=init_s, opt_s=res.opt_s, cpu_s=res.cpu_s, start_view=r, trajectory=traj,
        level_stats=res.level_stats, config=reg.config.to_dict())


def _check_rig(rr: RigRegistration, reg: Registrar, imgs: list, Cs: list, masks: list | None = None) -> None:
    """Check every view of ``rr`` at its pose (images (H, W), ``Cs`` (4, 4) camera_to_rig, ``masks``
    the views' pixel masks (H, W) or None, read as registration weighed them) and combine the
    checks (:func:`combine_confidences`), in place."""
    from xraypose.register.confidence import assess_rig

    confs = assess_rig(reg, [(imgs[i][None, None], o.camera, o.camera_to_world, rr.initial_rig_to_world @ Cs[i],
                              None if masks is None or masks[i] is None else _as_image(masks[i])[None, None])
                             for i, o in enumerate(rr.views)])
    for o, c in zip(rr.views, confs):
        o.p_success, o.verdict, o.reason, o.confidence = float(c.p_success), c.verdict, c.reason, c.to_dict()
    rr.p_success, rr.verdict, rr.reason = combine_confidences([o.name for o in rr.views], confs)


def _try_rig_hypotheses(rr: RigRegistration, res, reg: Registrar, vs, imgs, Cs, triples, Cr_inv, r: int,
                        init_s: float, parallel: bool = False) -> RigRegistration:
    """Register the alternatives of the start view's start (:func:`~xraypose.register.hypotheses.alternative_starts`,
    in the start view's camera frame: its camera_to_world) jointly, check each, and give back the
    most trusted result (the given one unless an alternative beats it by ``MARGIN``), with ``kept``
    and ``hypotheses`` filled in; the metal schedule from the given start last, unless an
    alternative is ``ok``.  Then, as for one view: a kept result that is not ``ok`` gives way to an ``ok``
    one within ``AGREE_MM`` (:func:`~xraypose.register.hypotheses.agreeing_ok`), and an ``ok`` with a
    plausible rival beyond ``RIVAL_MM`` is ``uncertain`` (:func:`~xraypose.register.hypotheses.rival_verdict`).
    ``parallel``: the registrations on two threads (:func:`~xraypose.register.hypotheses.run_in_order`; the same
    results)."""
    from xraypose.register.hypotheses import (METAL_HYPOTHESIS, best_hypothesis, cancellable, final_verdict,
                                              kept_reason, run_in_order, schedule_levels, settle_kept,
                                              viable_alternatives)

    names, alts = viable_alternatives(res.initial_poses[0], res.poses[0], vs[r].camera, reg.isocenter,
                                      seed=reg.config.seed)
    tried = [{"start": "given start", "p_success": rr.p_success, "verdict": rr.verdict, "similarity": rr.similarity}]
    outs = [rr]  # each tried result
    t0 = time.perf_counter()

    def joint(registrar, start):
        out = _rig_registration(registrar.register_views(triples, start[None]), reg, vs, Cs, Cr_inv, r, init_s)
        _check_rig(out, reg, imgs, Cs, [v.mask for v in vs])
        return out

    cancel = threading.Event() if parallel else None
    jobs = [(name, partial(joint, cancellable(reg, cancel), alt)) for name, alt in zip(names, alts)]
    metal = schedule_levels(METAL_HYPOTHESIS, reg.config, [])  # unless an alternative is ok (below)
    if metal is not None:
        jobs.append((METAL_HYPOTHESIS, partial(joint, cancellable(reg.derive(levels=metal), cancel),
                                               res.initial_poses[0])))

    def wanted(name):
        return name != METAL_HYPOTHESIS or schedule_levels(name, reg.config, [t["verdict"] for t in tried]) is not None

    for name, out in run_in_order(jobs, wanted, parallel, reg.config.num_threads, cancel):
        tried.append({"start": name, "p_success": out.p_success, "verdict": out.verdict, "similarity": out.similarity})
        outs.append(out)
    k = best_hypothesis(rr.p_success, [o.p_success for o in outs[1:1 + len(names)]])
    b = 0 if k is None else 1 + k  # the index in tried of the result kept
    if len(outs) > 1 + len(names) and best_hypothesis(outs[b].p_success, [outs[-1].p_success]) is not None:
        b = len(outs) - 1  # the metal schedule's

    # rig poses: their distance in the rig frame is the world's
    b = settle_kept(tried, [o.rig_to_world for o in outs], b, reg.isocenter, pose_key="rig_to_world")
    best, kept = outs[b], tried[b]["start"]
    best.reason = kept_reason(best.reason, kept, rr.p_success)
    best.verdict, why, _ = final_verdict(best.verdict, best.p_success, kept, tried, one_view=False)
    if why is not None:
        best.reason = f"{why} (P {best.p_success:.2f}; {best.reason})"
    best.initial_rig_to_world = rr.initial_rig_to_world  # the start the user gave
    best.kept, best.hypotheses = kept, tried
    best.extra = {**(best.extra or {}), "hypotheses_s": time.perf_counter() - t0}
    return best


def _rig_metrics(rr: RigRegistration, volume: Volume, true_rig_to_world, fiducials, Cs: list) -> None:
    """Every view's errors (mm, degrees) against the truth ``true_rig_to_world`` (4, 4) at the
    ``fiducials`` (N, 3) world mm (default: bone points picked in the first view at the truth), in
    place; the rig's are the first view's."""
    from xraypose.register.api import registration_metrics

    outs, X0 = rr.views, rr.initial_rig_to_world
    truth = torch.as_tensor(true_rig_to_world, dtype=F64).reshape(4, 4)
    if fiducials is None:
        from xraypose.fiducials import pick_bone_fiducials

        fid = pick_bone_fiducials(volume, n=20, camera=outs[0].camera, poses=truth @ Cs[0])
    else:
        fid = torch.as_tensor(fiducials, dtype=F64).reshape(-1, 3)
    for i, o in enumerate(outs):
        o.metrics = registration_metrics(o.camera_to_world, truth @ Cs[i], fid, o.camera)
        o.initial_metrics = registration_metrics(X0 @ Cs[i], truth @ Cs[i], fid, o.camera)
    rr.metrics = dict(outs[0].metrics)
    rr.initial_metrics = dict(outs[0].initial_metrics)
    rr.extra["true_rig_to_world"] = truth.tolist()
    rr.extra["fiducials"] = fid.tolist()


def register_rig(volume: Volume, views, init, *, registrar: Registrar | None = None, config: RegistrationConfig | None = None,
                 start_view: int = 0, true_rig_to_world=None, fiducials=None,
                 confidence: bool = True, hypotheses: bool = True,
                 parallel_hypotheses: bool | None = None) -> RigRegistration:
    """Register N views tied by a rig to a CT (module docstring).

    Args:
        volume: the CT.
        views: N :class:`ViewImage` (or tuples ``(name, image, camera, camera_to_rig)``).
        init: start ``rig_to_world`` (4, 4) or (K, 4, 4), or an initialiser run on ``start_view``.
        registrar / config: how to register (a :class:`Registrar` caches the CT's pyramid).
        start_view: index of the view whose camera axes the optimiser moves along (and that an
            initialiser sees).
        true_rig_to_world: (4, 4) the truth, for metrics; fiducials: (N, 3) world mm (default:
            bone points picked in the first view's field of view at the truth).
        confidence: check every view at its pose and combine (:func:`combine_confidences`).
        hypotheses: with the check, register the alternative starts when the verdict is not ``ok``
            and keep the most trusted (module docstring).
        parallel_hypotheses: those registrations on two threads (the same results); None:
            :func:`~xraypose.register.hypotheses.parallel_default`.
    Returns:
        :class:`RigRegistration`.
    Raises:
        InputError: no view, a non-rigid camera_to_rig, an image that does not match its camera,
            a start that no view sees the CT from, ...
    """
    vs, r = _rig_views(views, start_view)
    parallel = parallel_choice(parallel_hypotheses, registrar.config if registrar is not None else config)
    if fiducials is not None:  # before the registration (as register_xray): metres gave a meaningless mTRE
        fiducials = as_real_tensor(fiducials, "fiducials", F64)
        _check_fiducials_near_ct(fiducials, volume)
    reg = registrar or Registrar(volume, config)
    imgs = [_as_image(v.image) for v in vs]
    Cs = [_rigid(v.camera_to_rig, v.name) for v in vs]
    start, init_s = _rig_starts(init, imgs[r], vs[r].camera, Cs[r])
    Cr = Cs[r]
    Cr_inv = torch.linalg.inv(Cr)
    # register in the start view's camera frame: X' = rig_to_world · C_r, views C'_i = C_r⁻¹ · C_i
    rel = [Cr_inv @ C for C in Cs]
    triples = _view_triples(vs, imgs, rel)
    res = reg.register_views(triples, (start @ Cr)[None])
    rr = _rig_registration(res, reg, vs, Cs, Cr_inv, r, init_s)
    if confidence:
        _check_rig(rr, reg, imgs, Cs, [v.mask for v in vs])
        if hypotheses and rr.verdict != "ok":
            rr = _try_rig_hypotheses(rr, res, reg, vs, imgs, Cs, triples, Cr_inv, r, init_s, parallel)
    if true_rig_to_world is not None:
        _rig_metrics(rr, volume, true_rig_to_world, fiducials, Cs)
    return rr


# ----------------------------------------------------------------------------------------- pictures
def views_picture(images, drrs, names, verdicts=None, p_success=None, title: str | None = None,
                  masks=None) -> bytes:
    """PNG bytes: every view side by side — the X-ray, the DRR at the result, the DRR's edges on the
    X-ray (one column per view; the column's title gives the view's verdict).

    Args:
        images, drrs: per view (H_i, W_i) images (tensors or arrays); names: per view text.
        verdicts, p_success: per view (optional).
        masks: per view (H_i, W_i) trusted pixels or None (preprocessing's masks): each X-ray's
            display window is taken inside its mask (:func:`xraypose.viz.normalise`).
    """
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from xraypose.viz import VERDICT_COLORS, edges, normalise

    n = len(images)
    fig, ax = plt.subplots(3, n, figsize=(3.2 * n, 9.4), dpi=100, squeeze=False)
    for i in range(n):
        x = normalise(images[i], None if masks is None else masks[i])
        d = normalise(drrs[i])
        rgb = np.stack([x, x, x], -1)
        rgb[edges(d)] = [1.0, 0.3, 0.0]
        wrap = lambda text: textwrap.fill(text, 40)  # noqa: E731 — a column is 3.2 inches wide
        for row, (im, cmap, t) in enumerate(((x, "gray", "X-ray"), (d, "gray", "DRR at the result"),
                                             (rgb, None, "DRR edges on the X-ray"))):
            ax[row, i].imshow(im, cmap=cmap)
            ax[row, i].axis("off")
            ax[row, i].set_title(wrap(f"{names[i]}: {t}" if row else f"{names[i]}"), fontsize=9)
        if verdicts is not None and verdicts[i] is not None:
            p = "" if p_success is None else f" (P {p_success[i]:.2f})"
            ax[0, i].set_title(wrap(f"{names[i]}: {verdicts[i]}{p}"), fontsize=9,
                               color=VERDICT_COLORS.get(verdicts[i], "#222222"))
    if title:
        fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def result_picture(volume: Volume, images, views, names, config: dict, verdict=None, p_success=None,
                   masks=None, renderer=None) -> bytes:
    """``views.png`` of a registered result (a rig's views, or one X-ray's registration): per view the
    X-ray, the DRR at its ``camera_to_world`` (the registration's density model) and its edges on the
    X-ray (:func:`views_picture`), the overall verdict above.

    Args:
        images: per view (H, W) the X-ray as registered; views: per view an object with ``camera``,
            ``camera_to_world``, ``verdict``, ``p_success`` (a :class:`ViewResult`, a Registration);
        names: per view text; config: the registration's config dict (its ``density``).
        verdict, p_success: the result's (the title); masks: per view trusted pixels or None.
    """
    if renderer is None:
        from xraypose.evaluate import PictureRenderer

        renderer = PictureRenderer(volume, density=config.get("density", "linear"))
    drrs = [renderer(v.camera, torch.as_tensor(v.camera_to_world, dtype=torch.float64)[None])[0] for v in views]
    images = [torch.as_tensor(x).reshape(d.shape) for x, d in zip(images, drrs)]
    masks = None if masks is None else [None if m is None else torch.as_tensor(m).reshape(d.shape)
                                        for m, d in zip(masks, drrs)]
    title = None if verdict is None else f"verdict: {verdict} (P(mTRE < 2 mm) = {p_success:.2f})"
    return views_picture(images, drrs, names, [v.verdict for v in views],
                         [v.p_success for v in views] if p_success is not None else None, title=title, masks=masks)


def write_rig_registration(outdir, rr: RigRegistration, *, images=None, volume: Volume | None = None,
                           extra: dict | None = None, trajectory: bool = True, renderer=None,
                           masks=None) -> list[Path]:
    """Write ``pose.json`` (:meth:`RigRegistration.pose_json`), ``metrics.json`` (with the truth),
    ``trajectory.json`` and, given the views' ``images`` and the ``volume``, ``views.png`` (every
    view side by side: :func:`views_picture`) into ``outdir`` (created), together and atomically
    (:func:`xraypose.io.atomic_write_files`; an earlier result's files this one does not have are
    removed; ``outdir`` locked meanwhile, as :func:`xraypose.register.api.write_registration` locks it).  A NaN is
    never written."""
    from xraypose.io import atomic_write_files, json_bytes, make_output_folder
    from xraypose.output_lock import output_lock
    from xraypose.register.api import RESULT_FILES, _check_finite, picture_or_warning

    pose = rr.pose_json()
    if extra:
        pose.update(extra)
    _check_finite({k: v for k, v in pose.items() if k not in ("metrics", "views")})
    for v in rr.views:
        _check_finite({k: x for k, x in v.to_dict().items() if k not in ("metrics", "initial_metrics")})
    files = {"pose.json": json_bytes(pose)}
    if rr.metrics is not None:
        files["metrics.json"] = json_bytes({
            "final": rr.metrics, "initial": rr.initial_metrics, "success_1mm": rr.metrics["mtre"] < 1.0,
            "success_2mm": rr.metrics["mtre"] < 2.0, "init_s": rr.init_s, "opt_s": rr.opt_s,
            "views": {v.name: {"final": v.metrics, "initial": v.initial_metrics} for v in rr.views}})
    if trajectory:
        files["trajectory.json"] = json_bytes({"records": rr.trajectory, "levels": rr.level_stats})
    if images is not None and volume is not None:
        png = picture_or_warning(lambda: result_picture(volume, images, rr.views, [v.name for v in rr.views],
                                                        rr.config, rr.verdict, rr.p_success, masks, renderer))
        if png is not None:
            files["views.png"] = png
    with output_lock(outdir, join=True):  # (xraypose.output_lock)
        return atomic_write_files(make_output_folder(outdir), files,
                                  remove=tuple(dict.fromkeys(RIG_RESULT_FILES + RESULT_FILES)))
