"""Tracking a sequence (fluoroscopy): a pose per frame, each started from the previous frames.

    from xraypose.register.tracking import track_sequence
    frames = track_sequence(registrar, images (F, 1, H, W), camera, start_pose)

* **Frame 0** is registered with the registrar's whole schedule from the given start.
* **Frame f > 0** starts from a constant-velocity prediction, ``P_f = Δ · T_{f−1}`` with
  ``Δ = T_{f−1} · T_{f−2}⁻¹`` (the last motion repeated; no motion after a failed or a
  re-initialised frame: the motion into a jump is not the motion after it), and is
  registered with the *tracking* schedule only (:data:`TRACKING_LEVELS`: the default schedule's two
  Levenberg–Marquardt levels, 64 rows on mNCC then 128 on gradient NCC, 20 iterations each; on
  low-dose frames the smoother 64-row level first took the share of frames below 1 mm from 47 % to
  63 % against the 128-row level alone, benchmarks/tracking.py, 30 frames),
  starting from the previous frame's Gauss–Newton curvature (the optimum's shape changes little
  between frames: no finite differences until the curvature is renewed), without the last level's
  revisit (``RegistrationConfig.revisit``: weighing the prediction against the 64-row result cost a
  two-pose render per frame, 12–18 % of a frame's time; 100 low-dose frames, pelvis and abdomen, two
  trajectories each: 86 → 84 %, 8 → 8 %, 80 → 87 %, 0 → 0 % of frames below 1 mm).
* **A verdict per frame.**  With the confidence check (:func:`xraypose.register.confidence.assess`,
  when available) a frame whose verdict is ``failed`` — or, without it, whose registration is
  improbable under the motion model (its gate; with ``motion="none"``, a similarity far below the
  sequence's, :func:`similarity_drop`) — is **re-initialised**: registered with the
  whole schedule from the last good pose; the better result (by the check, then by similarity)
  is kept and the frame says so (``reinitialised``).  A frame is never dropped.  A checked frame
  the check passed is re-initialised too when its similarity lies far below the sequence's
  (:func:`similarity_drop`) and it did not converge or the motion model finds it improbable
  (:func:`_suspect`): the check reads one X-ray and misses depth errors at small sizes; the
  sequence knows how well its frames match (a 64-row jump frame 22 mm off in depth, similarity
  0.87 against 0.99, not converged, verdict ``ok`` at P 0.55 — its re-initialisation found it, P 0.99).
* **The check beside the next frame** (``overlap_check``; on by default with two CPUs or more):
  frame f's check runs on a second thread while frame f + 1 is registered from the prediction that
  assumes frame f stands; a ``failed`` verdict rolls the motion model back (its frames are only
  ever appended) and frame f is re-initialised and f + 1 registered again, in order — the results
  are those of checking first (tests/test_tracking.py).

* **A motion model** (``motion``; :mod:`xraypose.register.motion`).  With ``"filter"`` or
  ``"smooth"`` (the default) each registration is a measurement of the pose with the covariance its
  own optimum gives, fused with a constant-velocity Kalman filter; the filter's prediction is the
  next frame's start (instead of the repeated last motion), and with ``"smooth"`` the
  Rauch–Tung–Striebel smoother then pools the later frames too.  A frame's ``camera_to_world`` is
  the filter's (``progress`` sees these) or, at the end, the smoother's estimate; ``registered`` keeps
  the frame's registration alone.  A re-initialised frame, or one whose registration is improbable
  under the model (a jump), restarts the filter; the filter coasts over a ``failed`` frame, which with
  ``"smooth"`` reports the smoother's estimate (and its spread) where trusted measured frames of its segment lie on
  both sides (:func:`~xraypose.register.motion.bracketed_steps`: interpolated), else its own registration (a failed run ending at a restart
  would be extrapolated: stop 54 measured frames carried 5–13 mm off so; a failed first frame, from which the
  model starts all the same, holds no side: stop 64).  ``"none"``: the registrations as
  they are.

* **Checkpoints and resuming** (``checkpoint``, ``resume``).  Once a frame stands it can be handed out as a
  JSON-able record (:func:`_checkpoint_record`: the frame, the motion model's step, the curvature the next frame
  starts from); given back as ``resume``, the records rebuild the tracker's state — the filter by replaying the
  same updates — and the sequence goes on from the next frame as if it had not stopped (``xraypose track``'s
  partial file and ``--resume``: a crash loses no frame done).

Rigs work the same way (``views``: every frame is a set of views tied by a rig; the poses are
then ``rig_to_world``); each view is checked and the frame's verdict is the least trusted view's
(:func:`xraypose.register.multiview.combine_confidences`).  Units: mm, radians; poses are
camera_to_world (world = CT RAS mm).
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import torch

from xraypose.errors import InputError
from xraypose.geometry.geodesics import geodesic_rotation
from xraypose.preprocess import as_real_tensor, image_batch
from xraypose.register.config import Level
from xraypose.register.steppers import pose_motion_mm
from xraypose.register.motion import (MOTIONS, MotionFilter, MotionModel, bracketed_steps, fit_noise, pose_spread,
                                      result_covariance, smooth)

__all__ = ["AIR_FLOOR_HU", "BLUR_TURN_DEG", "FrameResult", "TrackedFrames", "REWINDOW_MM", "TRACKING_LEVELS", "TRACKING_LM_TOL_PX",
           "needs_rewindow", "track_sequence", "predict_pose", "similarity_drop"]

F64 = torch.float64

#: Levenberg–Marquardt's convergence test on frames after the first (pixels; the registration's
#: default is 0.02): a frame's registration is a measurement whose own scatter along the beam is
#: 1–1.4 mm on 128² low-dose frames, so steps below a tenth of a pixel are not worth their renders
#: (pelvis frames from 0.5°/1.5 mm: 9.3 -> 6.4 renders per frame, the same errors).
TRACKING_LM_TOL_PX = 0.1

#: With a blur predictor (``track_sequence``'s callable ``blur``): the turn of the view (degrees) after
#: which the blur coefficient is predicted again.
BLUR_TURN_DEG = 5.0

#: A floor for the CT's air on frames after the first (``track_sequence(..., air_floor_hu=...)``,
#: ``xraypose track --air-floor``; :attr:`RegistrationConfig.air_floor_hu`): the level's voxels that
#: average at most −975 HU render as nothing, so the kernel skips them — the abdomen's frames 13 % faster
#: (0.275 → 0.238 s median, one thread), the pelvis's not; opt-in since it cost 1–7 points of frames below
#: 1 mm on seven of eleven trajectories (docs/benchmarks.md, stop 48).
AIR_FLOOR_HU = -975.0

#: Weights that follow the pose (a structure's footprint, ``masks(f, camera_to_world)``) are drawn at a frame's
#: start; a frame whose registration moved the structure more than this (mm, the largest motion of a point
#: within the registrar's ``motion_radius_mm`` of its isocenter) from there is registered once more from its
#: result with the weights drawn there.  A bone that moved between frames leaves the weights of its start: on
#: the real wrist (the radius moved 15 mm between two frames) `xraypose track` from one start a frame had 7 of
#: 12 frames within 2 mm / 2° of the joint registrations, 12 of 12 with this (docs/wrist.md, stop 59).
REWINDOW_MM = 3.0

#: The schedule of frames after the first: the finest levels only, from the predicted pose.
TRACKING_LEVELS = (
    Level(size=64, iterations=20, volume_mm=4.0, fit_bone=True, optimizer="lm", robust=True, fit_tissue=True,
          fit_curve=True),
    Level(size=128, iterations=20, volume_mm=2.0, fit_bone=True, optimizer="lm", similarity="gncc", robust=True,
          fit_tissue=True, fit_curve=True),
)


@dataclass
class FrameResult:
    """One frame of a tracked sequence.

    Attributes:
        index: frame number.
        camera_to_world: (4, 4) float64 result (``rig_to_world`` for a rig).
        predicted: (4, 4) the start the motion model gave.
        similarity, status: of the kept registration (:class:`~xraypose.register.RegistrationResult`).
        verdict, p_success, reason: the confidence check's (None without it).
        reinitialised: the frame failed from the prediction and was registered again with the
            whole schedule from the last good pose.
        seconds: wall-clock time of this frame (registration, check, re-initialisation); with the
            check overlapped, the pipeline's period (the frames' times still add up to the whole).
        registered: (4, 4) the frame's registration alone (``camera_to_world`` is the motion model's
            estimate unless the motion is "none" or the frame failed).
        covariance: (6, 6) of ``camera_to_world`` in the motion model's chart (world axes at the
            isocenter: rad, mm; :mod:`xraypose.register.motion`) — the smoother's, the filter's, or
            (motion "none") the registration's own; for a failed frame the smoother's where it interpolates
            (:func:`~xraypose.register.motion.bracketed_steps`), else None; None without a curvature.
        spread: its standard deviations (:func:`~xraypose.register.motion.pose_spread`: along the
            beam of the frame's camera — a rig's start view —, across it, rotation), or None.
        blur_coefficient: the detector's intensity-domain blur the kept registration held fixed
            (``RegistrationConfig.blur_coefficient``; None: none).
        vouched: the check called the frame ``failed`` and the sequence vouched for it (:func:`_vouched`):
            its verdict is ``uncertain``, it was not re-initialised and is a measurement of the motion model.
    """

    index: int
    camera_to_world: torch.Tensor
    predicted: torch.Tensor
    similarity: float
    status: str
    verdict: str | None = None
    p_success: float | None = None
    reason: str | None = None
    reinitialised: bool = False
    seconds: float = 0.0
    registered: torch.Tensor | None = None
    covariance: torch.Tensor | None = None
    spread: dict | None = None
    blur_coefficient: float | None = None
    vouched: bool = False
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"frame": self.index, "camera_to_world": self.camera_to_world.tolist(),
                "predicted": self.predicted.tolist(), "similarity": self.similarity, "status": self.status,
                "verdict": self.verdict, "p_success": self.p_success, "reason": self.reason,
                "reinitialised": self.reinitialised, "seconds": self.seconds,
                "registered": None if self.registered is None else self.registered.tolist(),
                "covariance": None if self.covariance is None else self.covariance.tolist(),
                "spread": self.spread, "blur_coefficient": self.blur_coefficient, "vouched": self.vouched,
                **self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> FrameResult:
        """The frame :meth:`to_dict` wrote (poses and covariance back as float64 tensors; keys it does not know
        into ``extra``)."""
        def pose(v):
            return None if v is None else torch.tensor(v, dtype=F64)

        known = {"frame", "camera_to_world", "predicted", "similarity", "status", "verdict", "p_success", "reason",
                 "reinitialised", "seconds", "registered", "covariance", "spread", "blur_coefficient", "vouched"}
        return cls(index=int(d["frame"]), camera_to_world=pose(d["camera_to_world"]), predicted=pose(d["predicted"]),
                   similarity=float(d["similarity"]), status=str(d["status"]), verdict=d["verdict"],
                   p_success=d["p_success"], reason=d["reason"], reinitialised=bool(d["reinitialised"]),
                   seconds=float(d["seconds"]), registered=pose(d["registered"]), covariance=pose(d["covariance"]),
                   spread=d["spread"], blur_coefficient=d["blur_coefficient"], vouched=bool(d["vouched"]),
                   extra={k: v for k, v in d.items() if k not in known})


def predict_pose(history: list) -> torch.Tensor:
    """Constant-velocity prediction from the last good poses (newest last): ``Δ·T_last`` with
    ``Δ = T_last·T_prev⁻¹``; the last pose itself when only one is known."""
    if not history:
        raise InputError("no pose to predict from")
    last = history[-1].to(F64)
    if len(history) < 2:
        return last.clone()
    prev = history[-2].to(F64)
    return (last @ torch.linalg.inv(prev)) @ last


def similarity_drop(similarity: float, accepted: list, floor: float = 0.02, k: float = 5.0) -> bool:
    """True when ``similarity`` lies far below the accepted frames' (their median minus the larger
    of ``floor`` and ``k`` median absolute deviations): the rule used without a confidence check."""
    if not accepted:
        return False
    s = torch.tensor(accepted[-20:], dtype=F64)
    med = float(s.median())
    mad = float((s - med).abs().median())
    return similarity < med - max(floor, k * mad)


def _check(registrar, images, camera, poses, starts, masks=None):
    try:
        from xraypose.register.confidence import assess
    except ImportError:  # pragma: no cover - the check is part of the package
        return None
    return assess(registrar, images, camera, poses, starts=starts, masks=masks)


def _check_views(registrar, views, rig_to_world, start):
    """The check of a rig's frame: every view at its pose, judged on the rig's optimum
    (:func:`~xraypose.register.confidence.assess_rig`) and combined as
    :func:`xraypose.register.multiview.combine_confidences` does (the least trusted view's)."""
    from xraypose.register.confidence import Confidence, assess_rig
    from xraypose.register.multiview import combine_confidences

    Cs = [torch.eye(4, dtype=F64) if v[2] is None else torch.as_tensor(v[2], dtype=F64) for v in views]
    confs = assess_rig(registrar, [(torch.as_tensor(v[0]), v[1], rig_to_world @ C, start @ C, v[3])
                                   for v, C in zip(views, Cs)])
    p, verdict, reason = combine_confidences([f"{i}" for i in range(len(views))], confs)
    return Confidence(p, verdict, reason, {}, sum(c.seconds for c in confs))


def _sequence_views(frames, camera, views, masks=None) -> list:
    """The sequence as N views ``(frames (F, 1, H, W), camera, camera_to_rig (4, 4) or None, masks
    (F, 1, H, W) or None)``: the given ``views`` (a 4th element, the frames' pixel masks, optional),
    or the single view ``(frames, camera, None, masks)``; every view checked to have F > 0 frames and
    masks of its frames' shape."""
    if views is None:
        if frames is None or camera is None:
            raise InputError("give frames and their camera, or views")
        imgs = as_real_tensor(frames, "frames")
        if imgs.dim() == 3:
            imgs = imgs[:, None]
        if imgs.dim() != 4 or imgs.shape[1] != 1:
            raise InputError(f"frames must be (F, 1, H, W) or (F, H, W), got shape {tuple(imgs.shape)}")
        views = [(imgs, camera, None, masks)]
    elif masks is not None:
        raise InputError("give the masks of a rig's frames in its views (a 4th element per view), not as masks=")
    elif frames is not None or camera is not None:  # the frames were passed over for the views', silently
        raise InputError("give frames and their camera, or views, not both")
    n_frames = int(torch.as_tensor(views[0][0]).shape[0])
    if n_frames == 0:
        raise InputError("the sequence has no frame")
    out = []
    for i, v in enumerate(views):
        if len(v) not in (3, 4):
            raise InputError(f"view {i} must be (frames, camera, camera_to_rig) or (frames, camera, camera_to_rig, "
                             f"masks), got {len(v)} elements")
        imgs = torch.as_tensor(v[0])
        if int(imgs.shape[0]) != n_frames:
            raise InputError(f"view {i} has {int(imgs.shape[0])} frames, view 0 has {n_frames}")
        m = v[3] if len(v) == 4 else None
        if m is not None and not callable(m):
            m = image_batch(m, "the pixel masks").to(torch.float32)
            want = (n_frames, 1, *imgs.shape[-2:])
            if tuple(m.shape) != want:
                raise InputError(f"{'the' if len(views) == 1 else f'view {i}:'} pixel masks must have the frames' "
                                 f"shape {want}, got {tuple(torch.as_tensor(v[3]).shape)}")
        out.append((v[0], v[1], v[2], m))
    return out


def _frame_views(views, f: int, T0=None) -> list:
    """Frame ``f`` of every view: N tuples ``(image (1, 1, H, W), camera, camera_to_rig, mask (1, 1, H, W)
    or None)``.  A view's masks given as a callable ``masks(f, camera_to_world (4, 4)) -> (H, W)`` (weights
    that follow the start, e.g. a structure's footprint: :class:`xraypose.structure.FootprintWeights`)
    are drawn at the frame's start ``T0`` (4, 4; ``rig_to_world`` composed with the view's
    camera_to_rig for a rig)."""
    out = []
    for v in views:
        m = v[3]
        if callable(m):
            if T0 is None:
                raise InputError("a sequence's masks that follow the pose need the frame's start pose")
            T = torch.as_tensor(T0, dtype=F64).reshape(4, 4)
            w = torch.as_tensor(m(f, T if v[2] is None else T @ torch.as_tensor(v[2], dtype=F64)), dtype=torch.float32)
            m = w.reshape(1, 1, *torch.as_tensor(v[0]).shape[-2:])
        elif m is not None:
            m = m[f:f + 1]
        out.append((torch.as_tensor(v[0])[f:f + 1], v[1], v[2], m))
    return out


def needs_rewindow(reg, T0: torch.Tensor, T1: torch.Tensor) -> bool:
    """True when registrar ``reg``'s registration from ``T0`` to ``T1`` (4, 4) moved the structure more than
    :data:`REWINDOW_MM` (a point within ``motion_radius_mm`` of its isocenter): weights drawn where it was at
    ``T0`` are to be drawn again at ``T1``."""
    return pose_motion_mm(T0, T1, reg.isocenter, reg.config.motion_radius_mm) > REWINDOW_MM


def _register_frame(reg, f: int, T0, curvature=None, *, views: list, confidence: bool):
    """Register frame ``f`` of the ``views`` (:func:`_sequence_views`) with registrar ``reg`` from
    ``T0`` (4, 4) (camera_to_world, or ``rig_to_world`` for a rig), optionally from a known
    Gauss–Newton ``curvature`` (a list of one); checked when ``confidence``.  With weights that follow
    the pose, a result that moved more than :data:`REWINDOW_MM` from ``T0`` is registered once more from
    there with the weights drawn there (and is checked with them: :func:`_check_frame`).

    Returns:
        (RegistrationResult of one element, its Confidence or None when not checked).
    """
    res = reg.register_views(_frame_views(views, f, T0), T0[None], curvature=curvature)
    if any(callable(v[3]) for v in views):  # weights that follow the pose: drawn again where the result went
        T1 = res.poses[0]
        if needs_rewindow(reg, T0, T1):
            res = reg.register_views(_frame_views(views, f, T1), T1[None])
    return res, (_check_frame(reg, f, res, T0, views=views) if confidence else None)


def _check_frame(reg, f: int, res, T0, *, views: list):
    """The confidence check of frame ``f``'s registration ``res`` (started from ``T0`` (4, 4)): the
    Confidence, or None when the check is unavailable.  Weights that follow the pose are drawn where
    the registration that gave ``res`` weighed the frame — its start, ``res.initial_poses[0]``: ``T0``,
    or the first pass's result when :func:`_register_frame` registered the frame again there (judged on
    ``T0``'s, a bone that moved between frames would be judged on pixels it has left).  Reads only (the
    registrar's cached volumes, the frame), so it may run beside the next frame's registration
    (``track_sequence``'s ``overlap_check``)."""
    fv = _frame_views(views, f, res.initial_poses[0])
    if len(views) == 1 and views[0][2] is None:
        chk = _check(reg, fv[0][0], views[0][1], res.poses, T0[None], fv[0][3])
        return chk[0] if chk else None
    return _check_views(reg, fv, res.poses[0], T0)


def _bad(res, chk, unlikely=None) -> bool:
    """True when a frame's registration is not to be trusted: diverged or started outside the CT,
    else the check's verdict ``failed``, else (unchecked) ``unlikely(res)`` (a callable: the motion
    model's gate, or a similarity drop; None: trusted)."""
    if res.status[0] in ("diverged", "invalid start"):
        return True
    if chk is not None:
        return chk.verdict == "failed"
    return bool(unlikely(res)) if unlikely is not None else False


def _track_frame(register, registrar, tracker, f: int, pred, curvature: dict, fallback, unlikely, dropped,
                 vouch: bool = False):
    """Frame ``f > 0``: registered with the ``tracker``'s schedule from the prediction ``pred``
    (4, 4), from the previous frame's ``curvature``; re-initialised with the ``registrar``'s whole
    schedule from ``fallback`` (4, 4, the last good pose) when that result is bad (:func:`_bad` with
    ``unlikely``), checked but doubted (:func:`_suspect`), or the prediction left the CT, keeping
    the better of the two (:func:`_better`) — unless ``vouch`` (a motion model with history) and the
    sequence vouches for a ``failed`` frame (:func:`_vouched`): then it is kept, ``uncertain``.

    Returns:
        (RegistrationResult, Confidence or None, re-initialised: bool, vouched: bool).
    """
    try:  # the previous frame's curvature: the optimum's shape changes little between frames
        res, chk = register(tracker, f, pred, [curvature] if curvature else None)
    except InputError:  # the prediction left the CT: re-initialise below
        res, chk = None, None
    if res is not None and not _bad(res, chk, unlikely) and not (chk is not None and _suspect(res, unlikely, dropped)):
        return res, chk, False, False
    if res is not None and vouch and _vouched(res, chk, unlikely, dropped):
        return res, _vouched_confidence(chk), False, True
    return (*_reinitialise(register, registrar, f, res, chk, fallback), True, False)


def _suspect(res, unlikely, dropped) -> bool:
    """A registration the sequence doubts, whatever its check says: its similarity far below the
    accepted frames' (``dropped(res)``) *and* either not converged or improbable under the motion
    model (``unlikely(res)``).  Both, since a low-dose frame's similarity follows its photon count
    (0.72–0.98 on one 100-frame trajectory): a drop alone re-initialised 3–10 good frames per 100."""
    return dropped(res) and (res.status[0] != "converged" or bool(unlikely(res)))


def _sequence_agrees(res, unlikely, dropped) -> bool:
    """The sequence's own evidence for a frame's registration ``res``: it converged, lies within the motion
    model's gate (``unlikely(res)`` False: its pose is where the frames before it lead) and its similarity
    is not far below theirs (``dropped(res)`` False)."""
    return res.status[0] == "converged" and not bool(unlikely(res)) and not dropped(res)


def _vouched(res, chk, unlikely, dropped) -> bool:
    """A ``failed`` check the sequence contradicts (:func:`_sequence_agrees`).  Such a frame is kept
    ``uncertain`` (:func:`_vouched_confidence`) and is a measurement of the motion model, not
    re-initialised: on low-dose 128² frames of the abdomen the check's signals (gradient NCC 0.3–0.45)
    read `failed` on 29 of 100 frames of one trajectory, 17 of them below 2 mm, each re-initialised
    (1.0–4.6 s) and every one still `failed` after it (docs/registration.md, "Sequences")."""
    return chk is not None and chk.verdict == "failed" and _sequence_agrees(res, unlikely, dropped)


def _vouched_confidence(chk):
    """The check ``chk`` (``failed``) of a frame the sequence vouches for (:func:`_vouched`), made
    ``uncertain``: the same P, the reason saying both."""
    from dataclasses import replace

    return replace(chk, verdict="uncertain",
                   reason=f"the check alone says failed (P {float(chk.p_success):.2f}: {chk.reason}); the sequence "
                          "vouches for it: its pose is where the motion model expected and its similarity as the "
                          "frames' before")


def _reinitialise(register, registrar, f: int, res, chk, fallback):
    """Frame ``f`` registered again with the ``registrar``'s whole schedule from ``fallback`` (4, 4);
    the better (:func:`_better`) of that and the tracked ``res`` (None: none) with its check ``chk``.

    Returns:
        (RegistrationResult, Confidence or None).
    """
    res2, chk2 = register(registrar, f, fallback)
    if res is None or _better(res2, chk2, res, chk):
        return res2, chk2
    return res, chk


def _frame_result(f: int, pose, pred, res, chk, reinit: bool, seconds: float) -> FrameResult:
    """The :class:`FrameResult` of frame ``f``: ``pose`` and ``pred`` (4, 4), the registration
    ``res`` and its check ``chk`` (or None), ``seconds`` of wall-clock time."""
    return FrameResult(index=f, camera_to_world=pose, predicted=pred.clone(), similarity=float(res.similarity[0]),
                       status=res.status[0], verdict=chk.verdict if chk else None,
                       p_success=float(chk.p_success) if chk else None, reason=chk.reason if chk else None,
                       reinitialised=reinit, seconds=seconds, registered=pose.clone(),
                       blur_coefficient=res.config.blur_coefficient)


def _measured_covariance(res, views, scale: float):
    """(6, 6) world-axes covariance of a frame's registered pose (:func:`result_covariance`) from its last
    Levenberg–Marquardt level's curvature, score and pixels (all views); None without one."""
    return result_covariance(res, 0, [tuple(torch.as_tensor(v[0]).shape[-2:]) for v in views], scale)


def _checkpoint_record(fr: FrameResult, trusted: bool, step: dict | None, curvature: dict, blur) -> dict:
    """A frame's checkpoint (``track_sequence``'s ``checkpoint`` and ``resume``; JSON-able): the frame as it stands
    (:meth:`FrameResult.to_dict`: the filter's estimate, not yet smoothed), whether it is trusted (a pose the
    next frames go on from), its motion-model step (``{"measured": False}``: coasted; ``{"measured": True,
    "covariance": R (6, 6) or None, "restart": bool}``: an update with its registration; None without a model),
    the Gauss–Newton ``curvature`` the next frame starts from ({level: (6, 6)}) and, with a predicted blur, ``blur``
    ((coefficient held, the pose (4, 4) it was last predicted at)), else None."""
    return {"frame": fr.to_dict(), "trusted": bool(trusted), "motion": step,
            "curvature": {str(k): torch.as_tensor(v).tolist() for k, v in curvature.items()},
            "blur": None if blur is None else {"coefficient": blur[0],
                                               "predicted_at": None if blur[1] is None else blur[1].tolist()}}


def track_sequence(registrar, frames, camera=None, start=None, *, views=None, tracking_levels=TRACKING_LEVELS,
                   confidence: bool = True, progress=None, motion: str = "smooth",
                   motion_model: MotionModel | None = None,
                   tracking_tol_px: float = TRACKING_LM_TOL_PX, overlap_check: bool | None = None,
                   masks=None, blur=None, blur_turn_deg: float | None = BLUR_TURN_DEG,
                   vouch_failed: bool = True,
                   air_floor_hu: float | None = None, should_stop=None, checkpoint=None,
                   resume=None, fit_motion: bool = True) -> TrackedFrames:
    """Register every frame of a sequence, each from the previous ones.

    Args:
        registrar: the CT's :class:`~xraypose.register.Registrar` (its schedule registers frame 0
            and re-initialisations).
        frames: (F, 1, H, W) or (F, H, W) preprocessed frames seen by ``camera`` — or None with
            ``views``.
        camera: their intrinsics.
        start: (4, 4) start of frame 0 (camera_to_world; ``rig_to_world`` with ``views``).
        views: for a rig, N tuples ``(frames (F, 1, H, W), camera, camera_to_rig (4, 4))``, each with
            its frames' pixel masks as an optional 4th element (as ``masks``).
        tracking_levels: the schedule of frames after the first.
        confidence: check each frame (the verdict decides re-initialisations); without it a
            similarity drop does (:func:`similarity_drop`).
        progress: optional callable ``progress(FrameResult)`` after every frame (with the filter's
            estimate; the smoother's replaces it in the list returned).
        motion: "smooth" (default), "filter" or "none" (module docstring; :data:`MOTIONS`).
        motion_model: the filter's settings (default :class:`~xraypose.register.motion.MotionModel`).
        fit_motion: with ``motion="smooth"`` (default True since 2026-12-06), the model's process and
            measurement noise fitted to the sequence's own innovations before smoothing
            (:func:`~xraypose.register.motion.fit_noise`; the result's ``motion_fit`` says what was chosen, once
            for the sequence: :class:`TrackedFrames`; a sequence of fewer than 13 frames keeps the model as given).
        tracking_tol_px: the later frames' Levenberg–Marquardt convergence test (pixels; never below
            the registrar's own ``lm_tol_px``).
        overlap_check: run each frame's check on a second thread while the next frame is registered
            from the prediction that assumes the checked frame stands; a ``failed`` verdict rolls the
            motion model back and both frames are done again in order, so the results are those of
            the sequential loop.  None (default): when the machine has two CPUs or more and the
            check is on.  A frame's ``seconds`` is then the pipeline's period (they still add up to
            the sequence's wall-clock time).
        masks: optional (F, 1, H, W) or (F, H, W) pixel weights in [0, 1] of the frames (0: not to be
            trusted — preprocessing's ``mask``: a saturated plateau, a collimator's shadow); every
            frame's registration weighs its pixels by them, as ``register``'s ``masks`` do.  Or a
            callable ``masks(f, camera_to_world (4, 4)) -> (H, W)`` drawn at each registration's start
            (weights that follow the pose: a structure's footprint,
            :class:`xraypose.structure.FootprintWeights`); likewise a rig view's 4th element.
        blur: the detector's intensity-domain blur as ``RegistrationConfig.blur_coefficient`` (a
            number <= 0, calibrated where the pose is known:
            :meth:`~xraypose.register.Registrar.measure_blur`), held for every frame; None
            (default): the registrar's own setting.  Not measured on the frames themselves: at a
            registered pose the coefficient and the depth explain each other (docs/registration.md,
            "The detector's blur").  Or a callable ``blur(pose (4, 4)) -> coefficient`` that *predicts*
            it at a pose (camera_to_world, or ``rig_to_world`` with ``views``), as
            :func:`~xraypose.register.blur_prediction.predict_blur_coefficient` does on xraypose's
            simulator: frame 0 is registered from ``start``, the coefficient predicted at its pose
            (above 0 taken as 0) and frame 0 registered again from there with it held; it is
            predicted again at every trusted frame whose view has turned by more than
            ``blur_turn_deg`` since the last prediction (the coefficient follows the view: −0.031 …
            −0.062 over one pelvis trajectory).
        blur_turn_deg: with a callable ``blur``, the turn (degrees, > 0) after which it is predicted
            again; None: predicted once, at frame 0.
        vouch_failed: a frame the check calls ``failed`` whose registration converged where the motion
            model expected it, with a similarity like the frames' before, is kept ``uncertain`` and
            is a measurement of the motion model instead of being re-initialised (:func:`_vouched`;
            with ``motion`` "filter" or "smooth" and three measured frames since the model's last
            restart).  False: every ``failed`` frame is re-initialised (the rule until 2026-12-05).
        air_floor_hu: HU, the tracking schedule's :attr:`~xraypose.register.RegistrationConfig.air_floor_hu`
            (frames after the first render the CT's air as nothing: faster on a large CT; e.g.
            :data:`AIR_FLOOR_HU`); None (default): the registrar's own.
        should_stop: optional callable ``() -> bool`` asked before each frame; True stops there (Ctrl-C in
            ``xraypose track``): the frames done are smoothed and returned, fewer than the sequence's.
        checkpoint: optional callable ``checkpoint(record: dict)`` called once a frame stands (after
            ``progress``), with a JSON-able record of it and of what the tracker holds after it
            (:func:`_checkpoint_record`): what ``xraypose track`` appends to its partial file, so that a crash
            loses no frame done.
        resume: the records ``checkpoint`` gave for frames 0 … k − 1 (in order): those frames are kept as they are,
            the motion model, the trusted poses, the curvature and a predicted blur rebuilt from them, and the
            sequence is tracked on from frame k as if it had not stopped (the same prediction, the same
            registrations; the smoother then pools every frame).  Needs the same inputs and settings.
    Returns:
        :class:`TrackedFrames`: one :class:`FrameResult` per frame (a list), and the sequence's ``motion_fit``.
    """
    from xraypose._checks import check_flag, check_instance
    from xraypose.register.optimizer import Registrar

    check_instance("registrar", registrar, Registrar)
    if motion not in MOTIONS:
        raise InputError(f"motion must be one of {', '.join(MOTIONS)}, got {motion!r}")
    # flags: a text 'no' was taken as true
    for flag, value in (("confidence", confidence), ("vouch_failed", vouch_failed)) + (
            (("overlap_check", overlap_check),) if overlap_check is not None else ()):
        check_flag(flag, value, prefix="")
    if progress is not None and not callable(progress):  # it raised TypeError after the first frame's work
        raise InputError(f"progress must be None or a callable progress(FrameResult), got {type(progress).__name__}")
    if checkpoint is not None and not callable(checkpoint):
        raise InputError(f"checkpoint must be None or a callable checkpoint(dict), got {type(checkpoint).__name__}")
    if not isinstance(tracking_levels, (list, tuple)):
        raise InputError(f"tracking_levels must be a list of Level objects, got {type(tracking_levels).__name__}")
    views = _sequence_views(frames, camera, views, masks)
    n_frames = int(torch.as_tensor(views[0][0]).shape[0])
    if start is None:
        raise InputError("give the start pose of the first frame")
    T_start = as_real_tensor(start, "start", F64)
    if tuple(T_start.shape) not in ((4, 4), (1, 4, 4)):  # torch's reshape error, or a batch's first pose
        raise InputError(f"start must be one pose (4, 4) (of frame 0), got shape {tuple(T_start.shape)}")
    T_start = T_start.reshape(4, 4)
    overlap = bool(confidence) and ((os.cpu_count() or 1) >= 2 if overlap_check is None else bool(overlap_check))
    if not (isinstance(tracking_tol_px, (int, float)) and math.isfinite(tracking_tol_px) and tracking_tol_px > 0):
        raise InputError(f"tracking_tol_px must be a finite number > 0, got {tracking_tol_px!r}")
    predictor = blur if callable(blur) else None
    if not (blur is None or predictor is not None
            or (isinstance(blur, (int, float)) and not isinstance(blur, bool) and math.isfinite(blur) and blur <= 0)):
        raise InputError(f"blur must be None, a number <= 0 (a blur coefficient) or a callable predicting it at a "
                         f"pose, got {blur!r}")
    if not (blur_turn_deg is None or (isinstance(blur_turn_deg, (int, float)) and not isinstance(blur_turn_deg, bool)
                                      and math.isfinite(blur_turn_deg) and blur_turn_deg > 0)):
        raise InputError(f"blur_turn_deg must be None or a finite number of degrees > 0, got {blur_turn_deg!r}")
    if blur is not None and predictor is None:
        registrar = registrar.derive(blur_coefficient=float(blur))
    # later frames match intensities only when asked for every level (``--match-intensity all``): the
    # default's map costs a render per level, two more on top of ~6 per frame, for a display curve the
    # first frame has already been registered through
    # and no revisit: the 128-row level would render the prediction beside the 64-row result to go on
    # from the better (a start at the truth wins there; a prediction is mm off): a render for nothing
    c0 = registrar.config
    tracker = registrar.derive(levels=tuple(tracking_levels),
                               lm_tol_px=max(float(tracking_tol_px), c0.lm_tol_px),
                               match_intensity=c0.match_intensity if c0.match_capture else None,
                               revisit=False,
                               air_floor_hu=c0.air_floor_hu if air_floor_hu is None else air_floor_hu)
    run = _SequenceTracker(registrar, tracker, views, T_start, confidence=confidence, motion=motion,
                           model=motion_model or MotionModel(), predictor=predictor, blur_turn_deg=blur_turn_deg,
                           vouch_failed=vouch_failed, progress=progress, checkpoint=checkpoint)
    if resume:
        if not isinstance(resume, (list, tuple)) or len(resume) > n_frames:
            raise InputError(f"resume must be a list of at most the sequence's {n_frames} frames' checkpoints, got "
                             f"{len(resume) if isinstance(resume, (list, tuple)) else type(resume).__name__}")
        run.restore(list(resume))
    run.track(n_frames, overlap, should_stop)
    if motion == "smooth" and run.filt is not None:
        run.smooth(fit_motion)
    elif run.filt is not None:
        run.keep_measurements(run.filt)
    return run.out


class _SequenceTracker:
    """What :func:`track_sequence` holds while it tracks one sequence, and its steps: predict a frame's start,
    register it (:meth:`sequential`, or ahead of its check and :meth:`settle` it then), commit it into the motion
    model and the results, checkpoint it, and at the end smooth.  One per call; not thread-safe (the
    overlapped check runs on a second thread but only reads).

    State: ``registrar`` / ``tracker`` (the whole / the tracking schedule; re-derived when a blur coefficient is
    predicted), ``filt`` (the motion filter, None with ``motion="none"``), ``out`` (the frames so far),
    ``last_curvature`` (the Gauss–Newton curvature the next frame starts from), ``good_poses`` and
    ``accepted_sims`` (the trusted frames' poses and similarities), ``measured`` (this frame's results'
    covariances, by id), ``predicted_at`` (the poses a blur coefficient was predicted at), ``committed`` (frame
    -> (trusted, its motion-model step), as its checkpoint says)."""

    def __init__(self, registrar, tracker, views: list, T_start: torch.Tensor, *, confidence: bool, motion: str,
                 model: MotionModel, predictor, blur_turn_deg, vouch_failed: bool, progress, checkpoint):
        self.registrar, self.tracker, self.views, self.T_start = registrar, tracker, views, T_start
        self.register = partial(_register_frame, views=views, confidence=confidence)
        self.model = model
        self.filt = MotionFilter(registrar.isocenter.detach().to(F64).cpu(), model) if motion != "none" else None
        self.predictor, self.blur_turn_deg, self.vouch_failed = predictor, blur_turn_deg, vouch_failed
        self.progress, self.checkpoint = progress, checkpoint
        self.out = TrackedFrames()
        self.last_curvature: dict = {}
        self.good_poses: list = []
        self.accepted_sims: list = []
        self.measured: dict = {}  # id(result) -> its covariance, this frame's results only (gate, then update)
        self.predicted_at: list = []  # the poses (4, 4) the blur coefficient was predicted at (a callable ``blur``)
        self.committed: dict = {}  # frame -> (trusted, its motion-model step) as last committed: its checkpoint's

    def fallback(self) -> torch.Tensor:
        """(4, 4) where a re-initialisation starts: the last trusted pose (the start before any)."""
        return self.good_poses[-1] if self.good_poses else self.T_start

    def repredict(self, T) -> bool:
        """With a callable ``blur``: the coefficient predicted at the trusted pose ``T`` (4, 4) when none
        was yet or the view has turned by more than ``blur_turn_deg`` since, and held from the next
        registration on.  True when predicted."""
        if self.predictor is None or (self.predicted_at and (
                self.blur_turn_deg is None
                or float(geodesic_rotation(self.predicted_at[-1], T.to(F64))) <= math.radians(self.blur_turn_deg))):
            return False
        c = self.predictor(T.detach().to(F64).clone())
        if isinstance(c, torch.Tensor):
            c = c.item()
        if not (isinstance(c, (int, float)) and math.isfinite(c)):
            raise InputError(f"the blur predictor returned {c!r}, not a finite number")
        c = min(0.0, float(c))  # the coefficient's range: above 0 (no blur to speak of) is none
        self.predicted_at.append(T.detach().to(F64).clone())
        self.registrar = self.registrar.derive(blur_coefficient=c)
        self.tracker = self.tracker.derive(blur_coefficient=c)
        return True

    def covariance_of(self, res):
        if id(res) not in self.measured:
            self.measured[id(res)] = _measured_covariance(res, self.views, self.model.noise_scale)
        return self.measured[id(res)]

    def unlikely(self, res) -> bool:
        """Unchecked frames: a registration improbable under the motion model (its gate), or without
        one (or without a covariance) a similarity drop against the accepted frames'."""
        R = self.covariance_of(res) if self.filt is not None and self.filt.steps else None
        if R is not None:
            return self.filt.innovation(res.poses[0], R) > self.model.gate
        return similarity_drop(float(res.similarity[0]), self.accepted_sims)

    def dropped(self, res) -> bool:
        """A registration's similarity far below the accepted frames'."""
        return similarity_drop(float(res.similarity[0]), self.accepted_sims)

    def can_vouch(self) -> bool:
        """The sequence may vouch for a frame the check failed (:func:`_vouched`): with a motion model that
        has measured frames since its last restart (its gate is then a prediction's, not a guess)."""
        if not self.vouch_failed or self.filt is None or len(self.accepted_sims) < 3:
            return False
        since = 0  # measured frames since the model's last restart, that one included (3 are enough: a
        for step in reversed(self.filt.steps):  # long sequence's every frame would walk back over all of them)
            since += bool(step.measured)
            if since >= 3:
                return True
            if step.restart:
                return False
        return False

    def predict(self, f: int):
        if f == 0:
            return self.T_start
        if self.filt is not None:
            return self.filt.predict()
        out = self.out  # no velocity across a jump
        moving = out and out[-1].verdict != "failed" and not out[-1].reinitialised
        return predict_pose(self.good_poses[-2:] if moving else self.good_poses[-1:])

    def done(self, fr: FrameResult) -> None:
        """Frame ``fr`` stands: reported (``progress``) and checkpointed (``checkpoint``: the frame and what the
        tracker holds after it, :func:`_checkpoint_record`)."""
        if self.progress is not None:
            self.progress(fr)
        if self.checkpoint is not None:
            trusted, step = self.committed[fr.index]
            blur = None if self.predictor is None else (self.registrar.config.blur_coefficient,
                                                        self.predicted_at[-1] if self.predicted_at else None)
            self.checkpoint(_checkpoint_record(fr, trusted, step, self.last_curvature, blur))

    def restore(self, records: list) -> None:
        """The frames of ``resume`` taken as they are, and the tracker's state after the last of them rebuilt:
        the motion model's steps replayed (the same updates on the same numbers: the same filter), the
        trusted poses and similarities, the last curvature, a predicted blur coefficient."""
        filt = self.filt
        blur_state = None
        for i, rec in enumerate(records):
            try:
                fr, trusted, step = FrameResult.from_dict(rec["frame"]), bool(rec["trusted"]), rec["motion"]
                if fr.index != i:
                    raise ValueError(f"it is frame {fr.index}")
                if filt is not None:
                    if step["measured"]:
                        R = None if step["covariance"] is None else torch.tensor(step["covariance"], dtype=F64)
                        filt.update(fr.registered, R, restart=bool(step["restart"]))
                    else:
                        filt.coast()
                self.last_curvature = {int(k): torch.tensor(v, dtype=F64) for k, v in rec["curvature"].items()}
                blur_state = rec.get("blur")
            except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, InputError) as e:
                raise InputError(f"resume: record {i} is not a frame's checkpoint ({e})") from None
            if trusted:
                self.good_poses.append(fr.camera_to_world.clone())
                self.accepted_sims.append(fr.similarity)
            elif not self.good_poses:
                self.good_poses.append(fr.registered.clone())
            self.committed[i] = (trusted, step)
            self.out.append(fr)
        if self.predictor is not None and blur_state and blur_state.get("coefficient") is not None:
            # (with the check overlapped, the first frame after a resume holds the coefficient predicted at the
            # frame before it, where the uninterrupted pipeline had registered it with the one before that)
            c = float(blur_state["coefficient"])
            self.registrar = self.registrar.derive(blur_coefficient=c)
            self.tracker = self.tracker.derive(blur_coefficient=c)
            if blur_state.get("predicted_at") is not None:
                self.predicted_at.append(torch.tensor(blur_state["predicted_at"], dtype=F64))

    def commit(self, f: int, pred, res, chk, reinit: bool, seconds: float, bad: bool | None = None,
               provisional: bool = False) -> FrameResult:
        """Frame ``f``'s registration into the motion model and the results (``bad`` None: judged
        by :func:`_bad`); a trusted frame may have the blur predicted again at its pose (:meth:`repredict`)
        unless ``provisional`` (committed ahead of its check: :meth:`settle` does it then)."""
        filt = self.filt
        pose = res.poses[0].clone()
        if res.config.levels == self.tracker.config.levels:
            self.last_curvature = res.curvature[0]
        # unchecked, a re-initialised frame is the best there is (with a motion model it restarts it)
        if bad is None:
            bad = _bad(res, chk, None if reinit and filt is not None else self.unlikely)
        estimate, R = pose, self.covariance_of(res)
        cov = None if bad or R is None else R
        step = None
        if filt is not None:
            if bad and filt.steps:
                filt.coast()
                step = {"measured": False}
            else:
                # a re-initialisation restarts the motion model only where it lands outside the model's
                # gate (a jump: update() restarts there itself); one that agrees with the model (the
                # check failed a good frame, or the tracked result was kept) keeps its history
                estimate = filt.update(pose, R, restart=f == 0)
                cov = None if R is None else filt.steps[-1].P[:6, :6].clone()
                step = {"measured": True, "covariance": None if R is None else R.tolist(), "restart": f == 0}
        self.committed[f] = (not bad, step)
        fr = _frame_result(f, pose, pred, res, chk, reinit, seconds)
        fr.camera_to_world = estimate.clone()
        fr.covariance, fr.spread = cov, pose_spread(cov, estimate)
        if not bad:
            self.good_poses.append(estimate.clone())
            self.accepted_sims.append(fr.similarity)
            if not provisional and f > 0:
                self.repredict(estimate)
        elif not self.good_poses:
            self.good_poses.append(pose)  # nothing better to go on from
        self.out.append(fr)
        return fr

    def sequential(self, f: int, t0: float) -> None:
        """Frame ``f`` registered, checked (and re-initialised if need be) in order, then committed."""
        self.measured.clear()
        pred = self.predict(f)
        if f == 0:
            res, chk = self.register(self.registrar, f, pred)
            if self.predictor is not None and not _bad(res, chk) and self.repredict(res.poses[0]):
                res, chk = self.register(self.registrar, f, res.poses[0])  # again, with the predicted blur held
            reinit = vouched = False
        else:
            res, chk, reinit, vouched = _track_frame(self.register, self.registrar, self.tracker, f, pred,
                                                     self.last_curvature, self.fallback(), self.unlikely,
                                                     self.dropped, vouch=self.can_vouch())
        fr = self.commit(f, pred, res, chk, reinit, time.perf_counter() - t0)
        fr.vouched = vouched
        self.done(fr)

    def ahead(self, f: int, t0: float, pool: ThreadPoolExecutor, pending: dict | None) -> dict | None:
        """Frame ``f`` registered from its prediction while the check of the frame before (``pending``) runs;
        that frame settled (:meth:`settle`), then frame ``f`` committed ahead of its own check, which is
        submitted to ``pool``.  Returns what :meth:`settle` needs for frame ``f``, or None where frame ``f``
        went in order instead (the frame before was done again, or the prediction left the CT)."""
        pred = self.predict(f)
        try:  # the tracked registration alone; its check goes to the second thread below
            res, _ = _register_frame(self.tracker, f, pred, [self.last_curvature] if self.last_curvature else None,
                                     views=self.views, confidence=False)
        except InputError:  # the prediction left the CT
            res = None
        if pending is not None and not self.settle(pending):
            self.sequential(f, t0)  # frame f - 1 was done again: so is frame f, from its new prediction
            return None
        if res is None or res.status[0] in ("diverged", "invalid start"):
            self.sequential(f, t0)  # rare: the in-order path (it registers the frame again, then re-initialises)
            return None
        self.measured.clear()
        doubted = _suspect(res, self.unlikely, self.dropped)  # against the motion model and frames before it
        vouched = self.can_vouch() and _sequence_agrees(res, self.unlikely, self.dropped)  # judged before the commit
        check = pool.submit(_check_frame, self.tracker, f, res, pred, views=self.views)
        before = (len(self.filt.steps) if self.filt is not None else 0, len(self.good_poses), len(self.accepted_sims),
                  self.last_curvature)
        fr = self.commit(f, pred, res, None, False, time.perf_counter() - t0, bad=False, provisional=True)
        return {"check": check, "frame": fr, "result": res, "before": before, "doubted": doubted, "vouched": vouched}

    def settle(self, p: dict) -> bool:
        """Wait for the check of a frame committed ahead of it (``p``); True when the frame stands,
        False when its verdict was ``failed`` or the sequence doubted it (:func:`_suspect`, judged
        before it was committed; then the motion model and the results are rolled back to before it
        and the frame is re-initialised as without the overlap)."""
        t0 = time.perf_counter()
        chk = p["check"].result()
        fr = p["frame"]
        if chk is not None and chk.verdict == "failed" and p["vouched"] and not p["doubted"]:
            chk = _vouched_confidence(chk)
            fr.vouched = True
        if chk is None or (chk.verdict != "failed" and not p["doubted"]):
            if chk is not None:
                fr.verdict, fr.p_success, fr.reason = chk.verdict, float(chk.p_success), chk.reason
            self.repredict(fr.camera_to_world)
            fr.seconds += time.perf_counter() - t0
            self.done(fr)
            return True
        n_steps, n_good, n_sims, self.last_curvature = p["before"]
        if self.filt is not None:  # the filter only appends: its frames after n_steps are dropped
            del self.filt.steps[n_steps:]
        self.out.pop()
        del self.good_poses[n_good:], self.accepted_sims[n_sims:]
        self.measured.clear()
        f = fr.index
        res, chk = _reinitialise(self.register, self.registrar, f, p["result"], chk, self.fallback())
        fr = self.commit(f, fr.predicted, res, chk, True, fr.seconds + time.perf_counter() - t0)
        self.done(fr)
        return False

    def track(self, n_frames: int, overlap: bool, should_stop=None) -> None:
        """Frames ``len(out)`` … ``n_frames`` − 1, in order or (``overlap``) each registered while the check of the
        frame before runs on a second thread (:meth:`ahead`, :meth:`settle`); ``should_stop()`` asked before each frame
        (True: stop there)."""
        pool = ThreadPoolExecutor(max_workers=1) if overlap else None
        pending = None
        try:
            for f in range(len(self.out), n_frames):
                if should_stop is not None and should_stop():  # (Ctrl-C) the frames done are kept: smoothed, returned
                    break
                t0 = time.perf_counter()
                if pool is None or f == 0:
                    self.sequential(f, t0)
                    continue
                pending = self.ahead(f, t0, pool, pending)
            if pending is not None:
                self.settle(pending)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)

    def keep_measurements(self, filt: MotionFilter) -> None:
        """``out.motion_model`` and ``out.measurements`` (:class:`TrackedFrames`) from the filter's steps: a trusted
        frame's registration and its covariance (an untrusted one measured all the same — a failed first frame —
        is None, as a coasted one)."""
        self.out.motion_model = filt.model
        self.out.measurements = [(st.measurement.clone(), st.R.clone()) if self.committed[f][0] and st.measured
                                 and st.measurement is not None and st.R is not None else None
                                 for f, st in enumerate(filt.steps)]

    def smooth(self, fit_motion: bool) -> None:
        """The smoother's estimates into the frames (``motion="smooth"``): measured frames, and failed ones between
        trusted measured frames (:func:`~xraypose.register.motion.bracketed_steps`); with ``fit_motion`` the
        model's noise fitted to the sequence's innovations first (``out.motion_fit``)."""
        filt = self.filt
        if fit_motion:
            filt, self.out.motion_fit = fit_noise(filt)
        self.keep_measurements(filt)
        poses, covs = smooth(filt, covariances=True)
        bracketed = bracketed_steps(filt.steps, trusted=[self.committed[f][0] for f in range(len(self.out))])
        for fr, step, T, C, inside in zip(self.out, filt.steps, poses, covs, bracketed):
            if step.measured or inside:  # inside: a failed frame between measured ones, the smoother's estimate
                fr.camera_to_world = T
                if fr.covariance is not None or inside:  # (a failed frame's spread: the smoother's own)
                    fr.covariance, fr.spread = C, pose_spread(C, T)


class TrackedFrames(list):
    """What :func:`track_sequence` returns: its :class:`FrameResult` per frame (a list), and what belongs to the
    whole sequence rather than to a frame — ``motion_fit``, the smoother's fitted noise
    (:func:`~xraypose.register.motion.fit_noise`'s dict; None: the model as given); with a motion model
    (``motion`` "filter" or "smooth"), ``motion_model`` (the :class:`~xraypose.register.motion.MotionModel`
    the last pass ran, fitted or given) and ``measurements``: per frame the registration the model fused,
    ``(pose (4, 4), R (6, 6) world axes at the isocenter, its noise fitted where it was)``, or None (a frame
    coasted over, one the tracker did not trust — a failed first frame is measured all the same —, or one
    without a covariance) — what ``track --counts-every`` pools its fits with."""

    motion_fit: dict | None = None
    motion_model: MotionModel | None = None
    measurements: list | None = None


def _better(res_a, chk_a, res_b, chk_b) -> bool:
    """True when registration a is to be kept over b: by p_success when both were checked, else by
    similarity."""
    if chk_a is not None and chk_b is not None and not math.isclose(chk_a.p_success, chk_b.p_success):
        return chk_a.p_success > chk_b.p_success
    return float(res_a.similarity[0]) > float(res_b.similarity[0])
