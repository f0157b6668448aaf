"""A sequence's counts fits pooled by the motion model: ``xraypose track --counts`` (every frame refined) and
``--counts-every K`` (every K-th frame and the doubted ones, fused with the other frames' tracked registrations).

The fits are :class:`~xraypose.register.counts.CountsFit` (one frame's pose refined on its photon counts, with its
covariance, the inverse Fisher information); the motion model and its chart are
:mod:`xraypose.register.motion`'s.  Which frames ``--counts-every`` refines and which registrations it pools:
:func:`frames_to_refine`, :func:`registrations_to_pool`; whether a doubtful frame's fit counts:
:func:`admit_doubtful`; the pooled poses: :func:`pool_fits`.
"""
from __future__ import annotations

import torch

from xraypose.errors import InputError

F64 = torch.float64

__all__ = ["pool_fits", "admit_doubtful", "frames_to_refine", "registrations_to_pool", "DOUBTED_VERDICTS", "ADMIT_SD"]


def pool_fits(fits: list, isocenter, motion: str = "smooth", model=None, tracked=None) -> list:
    """The frames' counts-refined poses pooled by the motion model (:mod:`xraypose.register.motion`),
    each a measurement with its own :attr:`~xraypose.register.counts.CountsFit.covariance` (the inverse Fisher information: the
    counts say how well they hold each direction — one view's depth least); frames without a fit
    (None) are coasted over (:func:`admit_doubtful` first drops a ``failed`` frame's fit the sequence does not
    vouch for).  ``motion``: "smooth" (the smoother over the whole sequence), "filter" (causal) or "none" (the
    fits as they are).  ``model``: the :class:`~xraypose.register.motion.MotionModel` (default: its defaults).

    ``tracked`` (optional, F entries): the frames' tracked registrations, each ``(pose (4, 4), R (6, 6))`` or
    None (a frame the tracker coasted over) — :attr:`~xraypose.register.tracking.TrackedFrames.measurements`.
    Given, they are measurements too: a frame with a fit and a registration is the two fused
    (:func:`~xraypose.register.motion.fuse_measurements`), a frame with a registration alone is that
    registration (``track --counts-every K``: the fits of every K-th frame carry the depth the registrations
    are biased in, the registrations the frames between; docs/benchmarks.md, stop 66).
    Returns a (4, 4) pose per frame: a frame without a measurement gets the smoother's interpolation where measured
    frames lie on both sides of it in one segment (:func:`~xraypose.register.motion.bracketed_steps`), else
    None (an extrapolation — stop 54 measured such poses 5–13 mm off; the causal filter's and "none" always
    None; with "none" a frame without a fit is None, its registration being what the caller has)."""
    from xraypose.register.motion import bracketed_steps, smooth

    doubtful = _doubtful_flags(fits, None, motion)
    tracked = _tracked_measurements(tracked, len(fits))
    if motion == "none":
        return [None if f is None else f.pose.clone() for f in fits]
    filt, kept, out, idx = _causal_pass(fits, doubtful, isocenter, model, tracked)
    inside = bracketed_steps(filt.steps) if motion == "smooth" else [False] * len(filt.steps)
    for i, T, between in zip(idx, smooth(filt) if motion == "smooth" else [out[i] for i in idx], inside):
        out[i] = T if kept[i] is not None or tracked[i] is not None or between else None
    return out


#: The check's verdicts ``track --counts-every`` refines whatever K (:func:`frames_to_refine`).
DOUBTED_VERDICTS = ("uncertain", "failed")


def frames_to_refine(verdicts, every: int) -> tuple[list, list]:
    """``track --counts-every K``: ``(picked, doubted)``, a flag per frame — picked: frames 0, K, 2K, …, the last
    (without it the frames after the last fit keep the registrations' bias) and every doubted one; doubted: the
    check called it ``uncertain`` or ``failed`` (:data:`DOUBTED_VERDICTS`: its registration is left out of the
    pooling, its fit stands for it — :func:`registrations_to_pool`).  K = 1: every frame."""
    verdicts = list(verdicts)
    doubted = [v in DOUBTED_VERDICTS for v in verdicts]
    picked = [i % every == 0 or i == len(verdicts) - 1 or q for i, q in enumerate(doubted)]
    return picked, doubted


def registrations_to_pool(measurements, doubted, camera_change) -> list:
    """The tracked registrations :func:`pool_fits` takes as ``tracked``: per frame ``(pose @ camera_change, R)``
    (``camera_change``: the tracked camera → the counts' camera, one (4, 4) or a list of one per frame) from
    :attr:`~xraypose.register.tracking.TrackedFrames.measurements`, None for a frame without one or a doubted
    one (:func:`frames_to_refine`)."""
    changes = camera_change if isinstance(camera_change, (list, tuple)) else [camera_change] * len(doubted)
    return [None if m is None or q else (m[0] @ c, m[1]) for m, q, c in zip(measurements, doubted, changes)]


def _tracked_measurements(tracked, n: int) -> list:
    """``tracked`` (None, or n entries of None or (pose, R)) as n entries of None or float64 ``(pose (4, 4),
    R (6, 6))``; an entry without a covariance is None (a measurement taken as exact would restart the model)."""
    if tracked is None:
        return [None] * n
    tracked = list(tracked)
    if len(tracked) != n:
        raise InputError(f"{n} fits but {len(tracked)} tracked measurements")
    out = []
    for t in tracked:
        if t is None or t[1] is None:
            out.append(None)
            continue
        T, R = (torch.as_tensor(x, dtype=F64) for x in t)
        if T.shape != (4, 4) or R.shape != (6, 6):
            raise InputError(f"a tracked measurement must be a (4, 4) pose and a (6, 6) covariance, got "
                             f"{tuple(T.shape)} and {tuple(R.shape)}")
        out.append((T, R))
    return out


def _doubtful_flags(fits: list, doubtful, motion: str) -> list:
    """``doubtful`` as F bools (None: none), checked against the fits and ``motion``."""
    from xraypose.register.motion import MOTIONS

    if motion not in MOTIONS:
        raise InputError(f"motion must be one of {', '.join(MOTIONS)}, got {motion!r}")
    flags = [False] * len(fits) if doubtful is None else [bool(d) for d in doubtful]
    if len(flags) != len(fits):
        raise InputError(f"{len(fits)} fits but {len(flags)} doubtful flags")
    return flags


def _causal_pass(fits: list, doubtful: list, isocenter, model, tracked: list):
    """The causal filter over the fits, a doubtful one taken only where :func:`admit_doubtful` says (else coasted,
    never a restart), each fused with its frame's tracked registration where ``tracked`` has one (and a frame
    without a fit measured by its registration alone): ``(filter, kept fits or None, filtered poses (None before
    the first), their frames)``."""
    from xraypose.register.motion import MotionFilter, MotionModel

    filt = MotionFilter(torch.as_tensor(isocenter, dtype=F64).reshape(3), model or MotionModel())
    kept, out, idx = [], [], []
    for i, (f, d, t) in enumerate(zip(fits, doubtful, tracked)):
        m = None if f is None and t is None else _measurement(f, t, filt)
        if f is not None and d and (not _pins_the_pose(f) or filt.innovation(*m) > filt.model.gate):
            f, m = None, t
        kept.append(f)
        out.append(filt.update(*m) if m is not None else filt.coast() if filt.steps else None)
        if out[-1] is not None:
            idx.append(i)
    return filt, kept, out, idx


def _measurement(fit, tracked, filt) -> tuple:
    """A frame's measurement ``(pose, R)``: its counts fit, its tracked registration, or the two fused."""
    from xraypose.register.motion import fuse_measurements

    if tracked is None:
        return fit.pose, fit.covariance
    if fit is None:
        return tracked
    return fuse_measurements(*tracked, fit.pose, fit.covariance, filt.isocenter)


#: What a doubtful frame's counts fit must pin to be admitted (:func:`admit_doubtful`): its own standard
#: deviations (:func:`~xraypose.register.motion.pose_spread`) at most this many mm along and across the beam and
#: degrees of rotation.  A frame without anatomy has no information on the pose: its covariance is so large that
#: any pose passes the gate.  The success threshold (1 mm): a fit that cannot hold the depth to it vouches for
#: nothing.  The failed frames of the low-dose abdomen s2 trajectory (about a photon a pixel behind the body) held
#: 0.66–0.82 mm along the beam, 0.11–0.15 mm across it, 0.06–0.07°; a frame of flat photon noise among 64² frames
#: of the pelvis 5.7 mm, 1.1 mm and 1.3° (its neighbours 0.07–0.21 mm along the beam).
ADMIT_SD = 1.0


def _pins_the_pose(f) -> bool:
    """A counts fit that converged and whose spread is within :data:`ADMIT_SD` (mm, mm, degrees)."""
    from xraypose.register.motion import pose_spread

    sp = pose_spread(f.covariance, f.pose)
    return bool(f.converged) and sp is not None and max(sp.values()) <= ADMIT_SD


def admit_doubtful(fits: list, doubtful, isocenter, motion: str = "smooth", model=None, tracked=None) -> list:
    """The fits that count: a ``doubtful`` frame's (``track --counts``: one the check called ``failed``,
    refined from its tracked pose) only where it pins the pose — converged, its own standard deviations within
    :data:`ADMIT_SD` (a frame without anatomy passes any gate with its huge covariance) — and the motion model
    expects it: its innovation against the prediction of the frames before it
    (:meth:`~xraypose.register.motion.MotionFilter.innovation`, its counts' covariance) within the model's gate;
    else None, coasted over as :func:`pool_fits` does.  A doubtful fit never restarts the model: a lost frame
    refined where it was lost stays out of the others' estimate.  With ``motion`` "none" nothing can vouch for a
    doubtful fit: all are None.  ``model``, ``tracked``: as :func:`pool_fits` (the prediction from the fits and
    the registrations before the frame; a doubtful frame's innovation is its fit fused with its registration
    where it has one).  Returns a new list (fits or None)."""
    doubtful = _doubtful_flags(fits, doubtful, motion)
    if motion == "none":
        return [None if d else f for f, d in zip(fits, doubtful)]
    return _causal_pass(fits, doubtful, isocenter, model, _tracked_measurements(tracked, len(fits)))[1]
