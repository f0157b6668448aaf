"""Test-time registration: move the pose until the DRR looks like the X-ray.

DiffPose's second stage, built for a CPU budget and for X-rays we did not make:

* **Pose parameters** (Adam levels).  ``pose = A · pose_from_params(rotation, translation) · Bm``
  in one of two frames (``RegistrationConfig.frame``):

  - ``"isocentric"`` (default): the parameters move the *starting* pose ``T0``: ``A = F``,
    ``Bm = F⁻¹ T0`` with ``F`` the frame at the isocenter whose axes are ``T0``'s camera axes.
    With ``se3_log_map`` the rotation turns the C-arm about the isocenter (about its columns,
    rows and principal ray) and the translation moves it along its own axes, so the depth
    (magnification) is one coordinate, in-plane shifts two others.  Adam's per-coordinate steps
    suit this far better than a world frame (docs/registration.md).
  - ``"world"``: DiffPose's choice, the pose itself in the CT frame re-centred at the isocenter.

  Levenberg–Marquardt levels always work in a local se(3) chart at the isocenter
  (:mod:`xraypose.register.steppers`).
* **Coarse to fine.**  :class:`Level`\\ s (:mod:`xraypose.register.config`): detector size,
  samples per ray, the CT averaged to a coarser voxel, whole image or sparse patches, the
  optimiser ("adam" for capture, "lm" for the optimum) and the similarity measure.  Every X-ray
  keeps its best pose of each level.
* **One loop, named steps.**  Per level: :class:`~xraypose.register.objective.LevelObjective`
  prepares the level (X-rays resampled, CT averaged, patches drawn); per iteration the stepper
  (:mod:`xraypose.register.steppers`) asks :meth:`Registrar.evaluate` for the similarity of its
  tracks' poses, recovers the tracks whose step left the CT, and schedules and takes the next
  steps.  One :class:`~xraypose.register.steppers.Track` per start of each X-ray holds all its state.
* **Batches.**  B X-rays of one detector are registered together (one batched DRR per
  iteration); tracks that stopped are no longer rendered.
* **Safety.**  A step that makes the pose non-finite, puts the isocenter behind the source or
  far outside the detector, makes the DRR constant or the similarity non-finite is undone (back
  to the best pose, smaller steps); after ``max_recoveries`` such events the track stops with
  status ``"diverged"`` and keeps its best finite pose.  A result is never NaN.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

from xraypose.camera import Camera
from xraypose._checks import check_instance
from xraypose.errors import InputError
from xraypose.geometry import ROTATION_PARAMETERIZATIONS, check_rigid, pose_from_params, pose_to_params
from xraypose.register.config import (  # noqa: F401 (re-exported)
    DEFAULT_LEVELS,
    FAST_LEVELS,
    OPTIMIZERS,
    Level,
    RegistrationConfig,
    levels_for_sizes,
    torch_threads,
)
from xraypose.register.measures import constant_rows
from xraypose.register.objective import LevelObjective, ViewSet, level_channels
from xraypose.register.steppers import Track, make_stepper, pose_motion_mm
from xraypose.render import render
from xraypose.render.density import DENSITY_MODELS, registration_basis
from xraypose.render.backends.cpu import channels_last

if TYPE_CHECKING:
    from xraypose.volume import Volume

__all__ = ["Level", "RegistrationConfig", "RegistrationResult", "RegistrationCancelled", "Registrar", "DEFAULT_LEVELS", "FAST_LEVELS",
           "levels_for_sizes", "registration_density", "REGISTRATION_DENSITIES", "VolumeLevel"]

F64 = torch.float64

#: Density models registration can render (one list: :data:`xraypose.render.density.DENSITY_MODELS`).
REGISTRATION_DENSITIES = DENSITY_MODELS


def registration_density(volume: Volume, model: str = "linear", bone_multiplier: float = 1.0) -> torch.Tensor:
    """(2, I, J, K) float32: the density registration renders and its bone part
    (:func:`xraypose.render.density.registration_basis`)."""
    return registration_basis(volume, model, bone_multiplier)


#: The last level's revisit weighs the registration's start against the current pose when the start lies
#: within this many of the level's pixels of it, or (:data:`LAST_REVISIT_GAP`) when it scored nearly as well
#: at the previous revisit (see :meth:`Registrar._revisit`).
LAST_REVISIT_PX = 10.0

#: ... the similarity by which the start may trail the best candidate at the previous revisit and still be
#: weighed at the last level, however far away (appearance benchmark: starts at the truth whose capture
#: walked away trailed by ≤ 0.01 at 64 rows, 10°/40 mm starts by ≥ 0.09).
LAST_REVISIT_GAP = 0.05

#: Intensity matching takes its quantiles of images area-averaged to at most this many rows (noise
#: averaged out; see :func:`xraypose.register.matching.quantile_map`).
MATCH_ROWS = 32


class RegistrationCancelled(Exception):
    """A registration stopped because its registrar's ``cancel`` event was set (:attr:`Registrar.cancel`)."""


@dataclass
class RegistrationResult:
    """Outcome of registering B X-rays.

    Attributes:
        poses: (B, 4, 4) float64 camera_to_world, finite.
        initial_poses: (B, 4, 4) the starts actually used (after any antipodal choice); with
            ``capture_starts`` the given start (the extra capture starts are the registration's own), and
            for a start moved by the shift search the start it was moved from.
        similarity: (B,) similarity of ``poses`` at the finest level (1 = perfect).
        status: per element: "converged" (the last level stopped by its convergence test; this
            says the optimiser stopped, not that the pose is right), "max_iterations" (a level's
            cap), "recovered" (converged after undoing a divergent step), "diverged" (stopped;
            best finite pose kept) or "invalid start".
        iterations: (B,) iterations over all levels.
        opt_s: wall-clock seconds of the whole batch's optimisation.
        cpu_s: CPU seconds of the process during it (all threads).
        trajectories: per element, a list of ``{"level", "iteration", "similarity",
            "camera_to_world", ...}`` (empty when not recorded).
        chosen_start: per element, the index of the start kept (several starts, e.g. antipodal; with
            ``capture_starts``: 0 the given start, 1… the capture's extra starts; with ``shift_search``
            the K given (and capture) starts come first, then one shifted start per given start).
        bone_multiplier: (B,) the bone multiplier of the final DRR (fitted where a level fits it).
        level_stats: per level: size, channels, patches, optimiser, iterations (all elements),
            seconds, how many tracks converged and how many X-rays' intensities were matched
            (``match_intensity``).
        levels: per element, per level ``{"level", "iterations", "ended", "similarity"}``.
        curvature: per element, {Levenberg–Marquardt level index: its last JᵀJ (6, 6)}.
        foreign: per element, per view what :mod:`xraypose.register.foreign` set aside
            (``SteppedXray.to_dict()``; empty when ``config.foreign_steps`` is None).
        shift_search: per element, per given start what the in-plane shift search found
            (:meth:`ShiftFound.to_dict() <xraypose.register.shift_search.ShiftFound.to_dict>`; empty when
            ``config.shift_search`` is None or the registration has no single-view capture level).
        config: the configuration used.
    """

    poses: torch.Tensor
    initial_poses: torch.Tensor
    similarity: torch.Tensor
    status: list
    iterations: torch.Tensor
    opt_s: float
    cpu_s: float
    trajectories: list
    chosen_start: list
    config: RegistrationConfig
    recoveries: list = field(default_factory=list)
    bone_multiplier: torch.Tensor | None = None
    level_stats: list = field(default_factory=list)
    levels: list = field(default_factory=list)
    curvature: list = field(default_factory=list)
    foreign: list = field(default_factory=list)
    shift_search: list = field(default_factory=list)

    def __len__(self) -> int:
        return self.poses.shape[0]

    @property
    def levels_converged(self) -> list:
        """Per element, the fraction of levels that ended by their convergence test."""
        return [sum(d["ended"] == "converged" for d in lv) / max(1, len(lv)) for lv in self.levels]


@dataclass
class Evaluation:
    """Similarity of n poses: ``ok`` (n,) bool; ``score``/``cost`` (n,) float64 detached (−inf /
    inf where not ok); ``score_t``/``cost_t`` (n,) with gradients; ``bone`` (n,) fitted multipliers."""

    ok: torch.Tensor
    score: torch.Tensor
    cost: torch.Tensor
    score_t: torch.Tensor
    cost_t: torch.Tensor
    bone: torch.Tensor


class VolumeLevel(NamedTuple):
    """The CT's registration basis at one level's voxel size (:meth:`Registrar.volume_level`)."""

    density: torch.Tensor  #: (C, I, J, K) float32, the channels asked for
    affine: torch.Tensor  #: (4, 4) float64 voxel index → world mm


def _pool_volume(density: torch.Tensor, affine: torch.Tensor, factors) -> VolumeLevel:
    """Average ``density`` (C, I, J, K) over blocks of ``factors`` voxels; the affine follows."""
    f = [int(x) for x in factors]
    if f == [1, 1, 1]:
        return VolumeLevel(density, affine)
    I, J, K = density.shape[-3:]
    pad = [(-n) % k for n, k in zip((I, J, K), f)]
    x = density[None]
    if any(pad):
        x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))  # zeros: outside the CT renders as nothing
    x = F.avg_pool3d(x, kernel_size=f, stride=f)[0].contiguous()
    S = torch.eye(4, dtype=F64)
    for a in range(3):
        S[a, a] = f[a]
        S[a, 3] = (f[a] - 1) / 2
    return VolumeLevel(x, affine.to(F64) @ S)


def _floored(density: torch.Tensor, hu: torch.Tensor, factors, floor: float) -> torch.Tensor:
    """A copy of the pooled ``density`` (C, I', J', K') with every channel 0 where the CT ``hu``
    (I, J, K), averaged over the same blocks of ``factors`` voxels, reads at most ``floor`` HU
    (:attr:`RegistrationConfig.air_floor_hu`).  The average, not each voxel: a CT's air noise
    averages out, so more blocks are exactly zero for the kernel to skip (−975 HU on the abdomen's
    2 mm level: 35 % of its bricks against 4 % unfloored)."""
    air = _pool_volume(hu.to(torch.float32)[None], torch.eye(4, dtype=F64), factors).density[0] <= floor
    out = density.clone()
    out[:, air] = 0.0
    return out


#: The fewest rows :meth:`Registrar.measure_blur` measures on (fewer when the X-ray has fewer).
MEASURE_BLUR_ROWS = 128


class Registrar:
    """Registers X-rays to one CT.  Build once per CT (it caches the density pyramid).

    Args:
        volume: the CT (:class:`~xraypose.volume.Volume`, HU).
        config: a :class:`RegistrationConfig` (default: DiffPose's choices, CPU schedule).
        isocenter: (3,) world mm about which the parameters are centred
            (default: the volume's isocenter).
    """

    def __init__(self, volume: Volume, config: RegistrationConfig | None = None, isocenter=None):
        from xraypose.volume import Volume, _as_point

        check_instance("volume", volume, Volume, " (volume_from_array makes one of an array)")
        if config is not None and not isinstance(config, RegistrationConfig):
            raise InputError(f"config must be a RegistrationConfig (RegistrationConfig(**settings) makes one of a "
                             f"dict), got {type(config).__name__}")
        if config is not None:  # its fields checked again: one set after construction (cfg.levels = []) was used
            config.__post_init__()  # unchecked (no level: the start returned as the registered pose)
        self.config = config or RegistrationConfig()
        self.volume = volume
        self.isocenter = volume.get_isocenter().to(F64) if isocenter is None else _as_point(isocenter, "isocenter")
        self.center = torch.eye(4, dtype=F64)
        self.center[:3, 3] = self.isocenter
        self._density = registration_basis(volume, self.config.density, self.config.bone_multiplier)
        self._affine = volume.affine.to(F64)
        self._pyramid: dict = {}
        self.n_rot = ROTATION_PARAMETERIZATIONS[self.config.parameterization]
        #: The confidence check's model of this registrar's results (None: the shipped one; a part of a
        #: CT: :func:`xraypose.register.confidence.part_model`); :meth:`derive` keeps it.
        self.confidence_model = None
        #: A ``threading.Event`` (None: none): once set, a registration of this registrar (or of one :meth:`derive`
        #: made from it) raises :class:`RegistrationCancelled` at its next iteration — work started ahead on another
        #: thread that is no longer wanted (:func:`xraypose.register.hypotheses.run_in_order`).
        self.cancel = None

    def derive(self, **changes) -> "Registrar":
        """A registrar of the same CT with some configuration fields changed (e.g. ``levels``),
        sharing this one's density pyramid (the density model and bone multiplier must not change)."""
        import copy
        import dataclasses

        if {"density", "bone_multiplier"} & set(changes):
            raise InputError("derive() cannot change the density model or the bone multiplier; build a new Registrar")
        other = copy.copy(self)
        other.config = dataclasses.replace(self.config, **changes)
        other.n_rot = ROTATION_PARAMETERIZATIONS[other.config.parameterization]
        return other

    def measure_blur(self, images, camera: Camera, poses: torch.Tensor, masks=None, with_error: bool = False):
        """(B,) float64 each X-ray's intensity-domain blur measured at ``poses`` (B, 4, 4): the
        coefficient of ``|∇DRR|²`` per X-ray pixel² that best explains it on the configuration's
        finest dense level, at :data:`MEASURE_BLUR_ROWS` rows at least (its closed-form intensity fits
        first; masked pixels left out) — the value :attr:`RegistrationConfig.blur_coefficient` holds
        fixed.  Measure it where the pose is known (a phantom, a calibration): misaligned, the fit
        takes the misalignment for blur, and a registered pose is not enough (on low-dose pelvis frames
        1 mm along the beam moved it by a sixth; docs/registration.md, "The detector's blur").

        images: (B, 1, H, W) preprocessed X-rays; masks: optional pixel weights of their shape;
        ``with_error``: (coefficients, their standard errors (B,)) — a low-dose frame's coefficient is
        noisy (pelvis, one view, 6 noise draws: sd 0.04 at 1600 photons, 0.015 at 5000, 0.01 at 20000,
        about a coefficient of −0.04)."""
        imgs, camera, _, m = self._check_view(0, 1, images, camera, None, masks)
        dense = [lv for lv in self.config.levels if lv.patches is None]
        if not dense:
            raise InputError("measuring the blur needs a dense level (the schedule has only sparse ones)")
        # at 128 rows at least (or the X-ray's own): the blur is a fraction of a pixel, and a coarse level's
        # coefficient, scaled to X-ray pixels, multiplies its noise by the square of the scale
        lv = max(dense, key=lambda v: v.size)
        lv = dataclasses.replace(lv, size=max(lv.size, MEASURE_BLUR_ROWS))
        T = torch.as_tensor(poses).reshape(-1, 4, 4)
        if T.shape[0] != imgs.shape[0]:
            raise InputError(f"measuring the blur: {imgs.shape[0]} X-rays but {T.shape[0]} poses")
        dens, aff = self.volume_level(lv.volume_mm, level_channels(lv))
        obj = LevelObjective(lv, self.config, dens, aff, imgs, camera, torch.Generator().manual_seed(0), masks=m)
        return obj.blur_coefficient_at(T, torch.arange(T.shape[0]), with_error=with_error)

    # ------------------------------------------------------------ building blocks
    def volume_level(self, volume_mm: float | None, channels=(0, 1, 2)) -> VolumeLevel:
        """(density (len(channels), I, J, K), affine (4, 4)) of the CT's registration basis averaged to
        voxels of about ``volume_mm`` (cached per size and channels)."""
        spacing = self._affine[:3, :3].norm(dim=0)
        if volume_mm is None:
            factors = (1, 1, 1)
        else:
            # at most the axis's voxel count: a larger block only adds zero padding (a CT of 6e-4 mm voxels
            # asked for blocks of 10⁴ voxels, a padded grid of 96 TB)
            factors = tuple(max(1, min(n, int(math.floor(volume_mm / float(s) + 0.5))))
                            for s, n in zip(spacing.tolist(), self._density.shape[-3:]))
        channels = tuple(channels)
        floor = self.config.air_floor_hu
        floor = None if floor is None else float(floor)
        key = (factors, channels, floor)
        if key not in self._pyramid:
            base = (factors, "pooled", floor)  # every channel, as pooled (channels-first): what subsets are cut from
            if base not in self._pyramid:
                pooled = _pool_volume(self._density, self._affine, factors)
                if floor is not None:
                    pooled = VolumeLevel(_floored(pooled.density, self.volume.data, factors, floor), pooled.affine)
                self._pyramid[base] = pooled
            d, a = self._pyramid[base]
            d = d[list(channels)].contiguous() if channels != (0, 1, 2) else d
            if d.shape[0] in (2, 3):  # channels-last: the fused CPU kernel reads a corner's channels at once
                d = channels_last(d)  # (measured 136 vs 179 ms at 116² for two; 30 vs 36 ms at 128² for three)
            self._pyramid[key] = VolumeLevel(d, a)
        return self._pyramid[key]

    def frames(self, T_ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, Bm), each (n, 4, 4), with ``pose = A @ X(params) @ Bm`` (see :attr:`RegistrationConfig.frame`)."""
        T_ref = T_ref.to(F64).reshape(-1, 4, 4)
        n = T_ref.shape[0]
        if self.config.frame == "world":
            return self.center.expand(n, 4, 4).clone(), torch.eye(4, dtype=F64).expand(n, 4, 4).clone()
        Fr = T_ref.clone()
        Fr[:, :3, 3] = self.isocenter
        return Fr, torch.linalg.inv(Fr) @ T_ref

    def params_from_pose(self, T: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor) -> torch.Tensor:
        """(n, D) parameters of camera_to_world poses (n, 4, 4) in the frames (A, Bm)."""
        c = self.config
        X = torch.linalg.inv(A) @ T.to(F64) @ torch.linalg.inv(Bm)
        rot, trans = pose_to_params(X, c.parameterization, c.convention)
        return torch.cat([rot, trans], dim=-1)

    def pose_from_params(self, p: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor) -> torch.Tensor:
        c = self.config
        X = pose_from_params(p[..., : self.n_rot], p[..., self.n_rot:], c.parameterization, c.convention)
        return A @ X @ Bm

    def pose_and_jacobian(self, p: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor):
        """Poses (n, 4, 4) of parameters ``p`` (n, D) and their derivatives ``dT/dp`` (n, D, 4, 4), float64.

        By central differences of :meth:`pose_from_params` (steps 1e-6 rad / 1e-5 mm: relative
        error ~1e-10), all 2D + 1 maps in one batched call and no autograd graph: the pose maps'
        hundred-odd small tensor operations are then paid once per iteration instead of twice
        (forward and backward), which was ~40 % of an iteration at the coarse levels."""
        n, D = p.shape
        with torch.no_grad():
            eps = torch.full((D,), 1e-5, dtype=F64)
            eps[: self.n_rot] = 1e-6
            steps = torch.diag(eps)  # (D, D)
            P = torch.cat([p[:, None], p[:, None] + steps, p[:, None] - steps], 1)  # (n, 2D + 1, D)
            rep = lambda x: x.repeat_interleave(2 * D + 1, 0)  # noqa: E731
            T = self.pose_from_params(P.reshape(-1, D), rep(A), rep(Bm)).reshape(n, 2 * D + 1, 4, 4)
            dT = (T[:, 1:D + 1] - T[:, D + 1:]) / (2 * eps)[None, :, None, None]
        return T[:, 0], dT

    def _sane(self, T: torch.Tensor, camera: Camera) -> torch.Tensor:
        """(B,) True where a pose still looks at the CT (finite, isocenter in front and near the detector).

        In plain floats, pose by pose (a few poses per iteration: tensor operations would cost more
        than the arithmetic): the isocenter in the camera frame ``Rᵀ(iso − t)``, then projected by
        the camera's ``K`` (:meth:`Camera.project`'s arithmetic)."""
        (fx, _, cu), (_, fy, cv), _ = camera.K().tolist()
        H, W = camera.height, camera.width
        iso = self.isocenter.tolist()
        out = []
        for M in T.detach().to(F64).tolist():
            flat = [x for row in M for x in row]
            if not all(math.isfinite(x) for x in flat):
                out.append(False)
                continue
            d = [iso[k] - M[k][3] for k in range(3)]
            x, y, z = (sum(M[k][j] * d[k] for k in range(3)) for j in range(3))  # Rᵀ(iso − t)
            if not z > 0:
                out.append(False)
                continue
            u, v = (fx * x + cu * z) / z, (fy * y + cv * z) / z  # Camera.project
            out.append(-W < u < 2 * W and -H < v < 2 * H)
        return torch.tensor(out, dtype=torch.bool)

    def evaluate(self, objective: ViewSet, T: torch.Tensor, tracks) -> Evaluation:
        """The similarity of poses ``T`` (n, 4, 4) of ``tracks`` (n) at one level; poses that do not
        see the CT, constant DRRs and non-finite similarities are not ok."""
        n = T.shape[0]
        ok = objective.sane(T.detach(), self._sane)
        score = torch.full((n,), -math.inf, dtype=F64)
        cost = torch.full((n,), math.inf, dtype=F64)
        score_t = torch.zeros(n, dtype=F64)
        cost_t = torch.zeros(n, dtype=F64)
        bone = torch.full((n,), float(self.config.bone_multiplier), dtype=F64)
        if bool(ok.any()):
            sel = torch.nonzero(ok).reshape(-1)
            rows = torch.tensor([tracks[i].xray for i in sel.tolist()])
            r, b, constant = objective.residual(T[sel], rows)
            c_sel = r.to(F64).pow(2).sum(-1)
            s_sel = 1.0 - 0.5 * c_sel
            good = torch.isfinite(s_sel.detach()) & ~constant
            ok[sel] = good
            score_t = score_t.index_put((sel,), s_sel)
            cost_t = cost_t.index_put((sel,), c_sel)
            score[sel] = torch.where(good, s_sel.detach(), torch.full_like(s_sel.detach(), -math.inf))
            cost[sel] = torch.where(good, c_sel.detach(), torch.full_like(c_sel.detach(), math.inf))
            bone[sel] = b
        return Evaluation(ok=ok, score=score, cost=cost, score_t=score_t, cost_t=cost_t, bone=bone)

    def _match_intensity(self, objective: ViewSet, tracks, always: bool, xrays=None) -> set:
        """Each X-ray of this level's objective (of ``xrays``, indices, when given) mapped by its
        quantiles onto a DRR at its best pose so far (:mod:`xraypose.register.matching`); unless
        ``always`` (a capture level with ``match_capture``), only where the map departs from a
        straight line by more than the config's ``match_intensity``.  A level of sparse patches keeps
        its X-rays as given.  Returns the (view, X-ray) pairs that were mapped."""
        from xraypose.register.matching import quantile_map

        mapped = set()
        best = {}
        for t in tracks:
            if t.alive and (xrays is None or t.xray in xrays) and (t.xray not in best or t.score > best[t.xray].score):
                best[t.xray] = t
        if not best:
            return mapped
        rows = torch.tensor(list(best))
        poses = torch.stack([t.pose for t in best.values()])
        with torch.no_grad():
            for i, view in enumerate(objective.views):
                if view.uv is not None:
                    continue
                drrs = self._map_drrs(view, objective.view_poses(poses, i))  # one render of every X-ray's pose
                for b, drr in zip(rows.tolist(), drrs):
                    m = None if view.mask is None else view.mask[b, 0]
                    qmap = quantile_map(view.target[b, 0], drr, m, size=MATCH_ROWS)
                    if qmap is not None and (always or qmap.nonlinearity > float(self.config.match_intensity)):
                        view.target[b, 0] = qmap.apply(view.target[b, 0])
                        mapped.add((i, b))
        return mapped

    def _map_drrs(self, view: LevelObjective, poses: torch.Tensor) -> torch.Tensor:
        """(n, h, w) the density channel's DRRs at ``poses`` (n, 4, 4) on the pixels that the
        intensity map compares (:func:`~xraypose.register.matching.quantile_map` area-averages the
        X-ray to at most :data:`MATCH_ROWS` rows): rendered at twice those rows and area-averaged
        to them, from the level's volume averaged as much coarser as the render's pixels are (the
        level's ``volume_mm`` suits its pixels: a 128-row level's 2 mm become 4 mm at 64 rows).  At
        the level's own size and volume this render cost as much as a step of the level (three
        channels, for quantiles of 32 rows: 6 % of an abdominal registration, now 2 %); the map's
        knots agree with it to 1 % of the DRR's range (tests/test_matching.py)."""
        h, w = view.height, view.width
        if h <= MATCH_ROWS:  # the map takes every pixel of such a level: its own DRR
            return view.render(poses, torch.zeros(poses.shape[0], dtype=torch.long))[:, 0]
        ph, pw = MATCH_ROWS, max(1, round(w * MATCH_ROWS / h))  # the map's pooled shape
        rh, rw = min(2 * ph, h), min(2 * pw, w)
        vol_mm = None if view.level.volume_mm is None else float(view.level.volume_mm) * h / rh
        dens, aff = self.volume_level(vol_mm, (0,))
        step = None if view.step is None else max(float(view.step), float(aff[:3, :3].norm(dim=0).min()))
        drr = render(dens, aff, view.camera.resize(rh, rw), poses.to(torch.float32), step=step,
                     n_samples=view.n_samples, backend="auto")
        return F.adaptive_avg_pool2d(drr.to(torch.float32), (ph, pw))[:, 0]

    def _revisit(self, objective: ViewSet, tracks, last: bool = False) -> set:
        """Each track goes on from the best, at this (finer) level, of its start and the results of
        its earlier levels: a coarse level whose optimum sits away from the truth (appearance it
        cannot model at its resolution) cannot drag a good start away.  The last level weighs only
        the registration's start against the current pose: an earlier coarse level's result never
        won there (0 of 60 pelvis registrations of five appearance families, from the truth and from
        10°/40 mm), while the start won 19 times (a start at the truth, which registration leaves
        by about a pixel at most).  Each candidate costs a render at the finest size, so the start
        is weighed there only when it lies within :data:`LAST_REVISIT_PX` pixels of the current pose
        (at the isocenter, within ``motion_radius_mm``) or scored within :data:`LAST_REVISIT_GAP` of
        the best candidate at the previous revisit (``Track.start_gap``): a capture that walked 100 mm
        away from a start at the truth on a scatter or clinical X-ray left a start that scored as high
        at 64 rows (gap ≤ 0.01) and far higher at the last level; a 10°/40 mm start scores ≥ 0.09 lower
        at 64 rows (docs/registration.md, "The start weighed at the last level").  Returns the X-rays
        (indices) whose pose changed."""
        live = [t for t in tracks if t.alive and t.history]
        if not live:
            return set()
        cands = []
        pix = objective.pixel_mm(torch.stack([t.pose for t in live]), self.isocenter) if last else None
        for q, t in enumerate(live):
            cs = [t.pose]
            for h in (t.history[:1] if last else t.history):
                if any(torch.equal(h, c) for c in cs):  # a level that did not move adds nothing
                    continue
                if last and t.start_gap > LAST_REVISIT_GAP and pose_motion_mm(
                        t.pose, h, self.isocenter, self.config.motion_radius_mm) > LAST_REVISIT_PX * float(pix[q]):
                    continue  # a start far from where the coarser levels led, and clearly worse there
                cs.append(h)
            cands.append(cs)
        if not last:  # the gap the last level reads (there a far start may have been left out: no gap)
            for t, cs in zip(live, cands):
                if len(cs) == 1:
                    t.start_gap = 0.0  # no earlier level moved the pose: it is the start
        live, cands = [t for t, cs in zip(live, cands) if len(cs) > 1], [cs for cs in cands if len(cs) > 1]
        if not live:  # one candidate each: nothing to weigh (the level's first step evaluates the pose)
            return set()
        poses = torch.stack([p for cs in cands for p in cs])
        owners = [t for t, cs in zip(live, cands) for _ in cs]
        with torch.no_grad():
            ev = self.evaluate(objective, poses, owners)
        k, moved = 0, set()
        for t, cs in zip(live, cands):
            scores = ev.score[k:k + len(cs)]
            best = int(torch.argmax(scores))
            if not last:
                start = next((j for j, c in enumerate(cs) if torch.equal(c, t.history[0])), 0)  # 0: the pose is it
                t.start_gap = float(scores[best] - scores[start]) if bool(torch.isfinite(scores[best])) else math.inf
            if best > 0 and bool(torch.isfinite(scores[best])) and float(scores[best]) > float(scores[0]):
                t.pose = cs[best].clone()
                moved.add(t.xray)
            k += len(cs)
        return moved

    # ------------------------------------------------------------ the optimisation
    def register(self, images: torch.Tensor, camera: Camera, initial_poses: torch.Tensor,
                 masks: torch.Tensor | None = None) -> RegistrationResult:
        """Register X-rays.

        Args:
            images: (B, 1, H, W) or (H, W) preprocessed X-rays (line integrals,
                bone bright; any affine intensity scale), all seen by ``camera``.
            camera: their intrinsics (H × W must match).
            initial_poses: (B, 4, 4) starts, or (B, K, 4, 4) K starts per X-ray
                (e.g. a pose and its antipodal flip): all K are optimised at the
                first level and the one with the best similarity goes on.
            masks: optional (B, 1, H, W) or (H, W) pixel weights in [0, 1] (0: a pixel the X-ray
                cannot be trusted at, e.g. saturated; :attr:`Preprocessed.mask`), applied at every
                level to the similarity and to the closed-form intensity fits.
        Returns:
            :class:`RegistrationResult`.
        """
        return self.register_views([(images, camera, None, masks)], initial_poses)

    def register_views(self, views, initial_poses: torch.Tensor, curvature=None, origins=None) -> RegistrationResult:
        """Register B cases of N views tied by a rig: one unknown ``rig_to_world`` per case.

        Args:
            views: N tuples ``(images, camera, camera_to_rig)`` or ``(images, camera,
                camera_to_rig, masks)``: images (B, 1, H, W) or (H, W) of that view (case b of every
                view is one moment), their intrinsics, the view's (4, 4) camera_to_rig (None: the
                identity, a single-view registration) and optional pixel weights of the images'
                shape (see :meth:`register`).
            initial_poses: (B, 4, 4) or (B, K, 4, 4) starts of ``rig_to_world``.
            curvature: optional, per case a dict {level index: (6, 6) JᵀJ} to start the
                Levenberg–Marquardt levels with (e.g. the previous frame's ``result.curvature``).
            origins: optional (B, 4, 4): where the registration began when these levels go on from
                an earlier stage's results (a rig's captures, given as ``initial_poses``): the revisits
                weigh it as the start (:meth:`_revisit`; the last level always, even when it is the
                only one) — a capture that walked off cannot take the given start's place; and while an
                X-ray's captures still compete, its intensities are not mapped (:meth:`_optimise`).
        Returns:
            :class:`RegistrationResult` whose ``poses`` are ``rig_to_world``; view i's
            camera_to_world is ``poses @ camera_to_rig_i``.
        """
        c = self.config
        if not isinstance(views, (list, tuple)):  # a tensor of images: 'Boolean value of Tensor … is ambiguous'
            raise InputError(f"views must be a list of (images, camera, camera_to_rig) or (images, camera, "
                             f"camera_to_rig, masks) tuples, got {type(views).__name__}")
        if not views:
            raise InputError("no X-ray to register")
        for i, v in enumerate(views):
            if not isinstance(v, (list, tuple)) or len(v) not in (3, 4):
                got = f"{len(v)} elements" if isinstance(v, (list, tuple)) else type(v).__name__
                raise InputError(f"view {i} must be (images, camera, camera_to_rig) or (images, camera, camera_to_rig, "
                                 f"masks), got {got}")
        n_capture = next((i for i, lv in enumerate(c.levels) if lv.optimizer != "adam"), len(c.levels))
        if len(views) > 1 and c.rig_capture != "joint" and 0 < n_capture < len(c.levels):
            return self._capture_then_joint(views, initial_poses, curvature, n_capture)
        if len(views) == 1 and c.capture_steps != (1.0,) and 0 < n_capture < len(c.levels):
            return self._captures_then_fine(views, initial_poses, curvature, n_capture)
        prepared = [self._check_view(i, len(views), *v) for i, v in enumerate(views)]
        found = []
        if c.foreign_steps is not None:  # metal's steps set aside before any level
            from xraypose.register.foreign import set_aside_batch

            for i, (imgs, cam, Ci, m) in enumerate(prepared):
                imgs, m, f = set_aside_batch(imgs, m, ratio=float(c.foreign_steps))
                prepared[i] = (imgs, cam, Ci, m)
                found.append(f)
        B = prepared[0][0].shape[0]
        if any(p[0].shape[0] != B for p in prepared):
            raise InputError(f"the views hold different numbers of X-rays: {[p[0].shape[0] for p in prepared]}")
        C = torch.stack([p[2] for p in prepared])
        T0 = torch.as_tensor(initial_poses, dtype=F64)
        if T0.dim() == 2:
            T0 = T0[None]
        if T0.dim() == 3:
            T0 = T0[:, None]
        if T0.dim() != 4 or T0.shape[-2:] != (4, 4) or T0.shape[0] not in (1, B):
            raise InputError(f"initial poses must be (B, 4, 4) or (B, K, 4, 4) for B = {B} X-rays, got "
                             f"{tuple(T0.shape)}")
        T0 = T0.expand(B, -1, -1, -1)
        K = T0.shape[1]
        if not bool(torch.isfinite(T0).all()):
            raise InputError("initial pose has NaN or infinite entries")
        try:  # a reflected or scaled start would be optimised as it is: the result not a pose either
            check_rigid(T0, atol=1e-3)
        except InputError as e:
            raise InputError(f"initial pose: {e}") from None
        searched, shifted, moved = [], None, None
        capture = len(views) == 1 and bool(c.levels) and c.levels[0].optimizer == "adam"
        if capture and c.shift_search is not None:
            shifted, moved, searched = self._shift_starts(prepared[0], T0)
        given = None
        if capture and K == 1 and c.capture_starts > 1:
            given, T0 = T0[:, 0].clone(), self._capture_starts(T0[:, 0])
            K = T0.shape[1]
        n_given = T0.shape[1]
        if shifted is not None:  # the moved starts join as starts of their own; the first fine level keeps the best
            T0 = torch.cat([T0, shifted], dim=1)
            K = T0.shape[1]
        if origins is not None:
            origins = torch.as_tensor(origins, dtype=F64)
            if origins.shape != (B, 4, 4) or not bool(torch.isfinite(origins).all()):
                raise InputError(f"origins must be (B, 4, 4) finite poses for B = {B} X-rays, got "
                                 f"{tuple(origins.shape)}")
        from xraypose.api import check_ct_footprint

        # pixels of metres, or a detector nearer the source than the whole CT (a rig's K with a nominal pixel
        # spacing): every DRR zeros or one pixel
        for i, (_, cam, Ci, _m) in enumerate(prepared):
            check_ct_footprint(self.volume, cam, T0[0, 0] @ Ci, "the X-ray" if len(prepared) == 1 else f"view {i}")
        flatT = T0.reshape(B * K, 4, 4)
        sane = torch.ones(B * K, dtype=torch.bool)
        for (_, cam, Ci, _m) in prepared:
            sane &= self._sane(flatT @ Ci, cam)
        if moved is not None:  # a start the search did not move is not optimised twice
            sane &= torch.cat([torch.ones(B, K - moved.shape[1], dtype=torch.bool), moved], dim=1).reshape(-1)
        none_ok = ~sane.reshape(B, K).any(dim=1)
        if bool(none_ok.any()):
            b = int(torch.nonzero(none_ok)[0, 0])
            views_txt = "" if len(prepared) == 1 else " in every view"
            raise InputError(f"the initial pose{'' if B == 1 else f' of X-ray {b}'} does not see the CT{views_txt} "
                             "(its isocenter is behind the source or far outside the detector); check the pose and "
                             "the CT")
        with torch_threads(c.num_threads):
            t0, c0 = time.perf_counter(), time.process_time()
            out = self._optimise([(p[0], p[1], p[3]) for p in prepared], C, T0, sane.reshape(B, K), curvature,
                                 n_given=n_given, origins=origins)
            if shifted is not None:  # a shifted start is the registration's own: its start is the one it was moved from
                out.initial_poses = torch.stack([T0[b, j if j < n_given else j - n_given]
                                                 for b, j in enumerate(out.chosen_start)])
            if given is not None:  # the capture's extra starts are the registration's own: the start is the given one
                out.initial_poses = given
            out.foreign = [[f[b].to_dict() for f in found] for b in range(B)] if found else []
            out.shift_search = searched
            out.opt_s = time.perf_counter() - t0
            out.cpu_s = time.process_time() - c0
        return out

    def _check_views_footprint(self, views, initial_poses) -> None:
        """:func:`~xraypose.api.check_ct_footprint` of every view at the first start, naming the view (the
        capture that registers the start view alone would call it "the X-ray"); what is malformed is left to
        :meth:`register_views`' own checks."""
        from xraypose.api import check_ct_footprint

        T = torch.as_tensor(initial_poses, dtype=F64)
        if T.dim() < 2 or tuple(T.shape[-2:]) != (4, 4) or T.numel() == 0 or not bool(torch.isfinite(T).all()):
            return
        T = T.reshape(-1, 4, 4)[0]
        for i, v in enumerate(views):
            C = torch.eye(4, dtype=F64) if v[2] is None else torch.as_tensor(v[2], dtype=F64)
            if isinstance(v[1], Camera) and tuple(C.shape) == (4, 4):
                check_ct_footprint(self.volume, v[1], T @ C, f"view {i}")

    def _capture_then_joint(self, views, initial_poses, curvature, n_capture: int) -> RegistrationResult:
        """A rig registration whose capture levels (the leading Adam levels) see only the start view
        (the view whose ``camera_to_rig`` is the identity, else the first) — ``rig_capture`` "start-view"
        — or run twice, on the start view and on every view ("both"), the levels after them seeing every
        view (from both captures: the first of them keeps the better, as with several starts; the last
        weighs the given start too, as a single view's last level does: ``origins``); one result
        as :meth:`register_views` gives (levels, trajectories and times of the stages; ``chosen_start``
        says which capture went on, 0 = the start view's, 1 = the joint one)."""
        def identity(v) -> bool:
            return v[2] is None or bool(torch.equal(torch.as_tensor(v[2], dtype=F64), torch.eye(4, dtype=F64)))

        r = next((i for i, v in enumerate(views) if identity(v)), 0)
        self._check_views_footprint(views, initial_poses)  # named by view: the capture sees one
        c = self.config
        capture = self.derive(levels=c.levels[:n_capture], rig_capture="joint")
        firsts = [capture.register_views([views[r]], initial_poses)]
        if c.rig_capture == "both":
            firsts.append(capture.register_views(views, initial_poses))
        return self._fine_from_captures(views, firsts, curvature, n_capture, rig_capture="joint")

    def _captures_then_fine(self, views, initial_poses, curvature, n_capture: int) -> RegistrationResult:
        """A single view captured once per ``capture_steps`` factor (the capture levels' learning rates
        multiplied by it), the later levels from every capture (:meth:`_fine_from_captures`): one result as
        :meth:`register_views` gives, its ``initial_poses`` and ``chosen_start`` those of the capture that
        went on (the given start it kept: several given starts, e.g. the antipodal one)."""
        import dataclasses

        c = self.config
        firsts = [self.derive(levels=tuple(dataclasses.replace(lv, lr_scale=lv.lr_scale * f)
                                           for lv in c.levels[:n_capture]), capture_steps=(1.0,))
                  .register_views(views, initial_poses) for f in c.capture_steps]
        out = self._fine_from_captures(views, firsts, curvature, n_capture, capture_steps=(1.0,))
        won = list(out.chosen_start)  # per X-ray, the capture that went on
        out.initial_poses = torch.stack([firsts[k].initial_poses[b] for b, k in enumerate(won)])
        out.chosen_start = [firsts[k].chosen_start[b] for b, k in enumerate(won)]
        return out

    def _fine_from_captures(self, views, firsts: list, curvature, n_capture: int, **changes) -> RegistrationResult:
        """The levels after the first ``n_capture`` (this registrar's config with ``changes``) from each
        capture's result (``firsts``: RegistrationResults of those levels, the first from the given start):
        the first of them keeps the better, as with several starts; the last weighs the given start too
        (``origins``).  One result as :meth:`register_views` gives (levels, trajectories and times of the
        stages; ``chosen_start``: which capture went on)."""
        import dataclasses

        c = self.config
        starts = torch.stack([f.poses for f in firsts], dim=1)  # (B, captures, 4, 4)
        second = self.derive(levels=c.levels[n_capture:], **changes).register_views(
            views, starts,
            curvature=None if curvature is None else [{k - n_capture: H for k, H in cv.items() if k >= n_capture}
                                                      for cv in curvature],
            origins=firsts[0].initial_poses)  # the given start the first capture went on from
        shift = lambda recs, key: [{**x, key: x[key] + n_capture} for x in recs]  # noqa: E731
        won = [firsts[k] for k in second.chosen_start]  # per case, the capture that went on
        return dataclasses.replace(
            second, initial_poses=firsts[0].initial_poses, chosen_start=list(second.chosen_start),
            iterations=sum(f.iterations for f in firsts) + second.iterations,
            opt_s=sum(f.opt_s for f in firsts) + second.opt_s, cpu_s=sum(f.cpu_s for f in firsts) + second.cpu_s,
            trajectories=[w.trajectories[b] + shift(second.trajectories[b], "level") for b, w in enumerate(won)],
            level_stats=firsts[0].level_stats + shift(second.level_stats, "level"),
            levels=[w.levels[b] + shift(second.levels[b], "level") for b, w in enumerate(won)],
            curvature=[{k + n_capture: H for k, H in cv.items()} for cv in second.curvature],
            recoveries=[sum(f.recoveries[b] for f in firsts) + second.recoveries[b] for b in range(len(won))],
            foreign=second.foreign, config=c)

    def _shift_starts(self, view, T0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Each start (B, K, 4, 4) of a single view moved across the beam to where the in-plane shift
        search (:mod:`xraypose.register.shift_search`) puts the X-ray's anatomy.  Returns the moved
        starts (B, K, 4, 4; a start not moved: itself), whether each moved (B, K) bool (not when the
        search gained too little, or the start or its move does not see the CT) and per X-ray the
        searches' records (None for a start that does not see the CT)."""
        from xraypose.register.shift_search import search_shift, search_view

        imgs, cam, Ci, masks = view
        Ci_inv = torch.linalg.inv(Ci)
        c = self.config
        sv = search_view(self, imgs, cam, masks)  # the X-rays resampled once, for every start
        out, moved, records = T0.clone(), torch.zeros(T0.shape[:2], dtype=torch.bool), []
        for b in range(T0.shape[0]):
            rec = []
            for k in range(T0.shape[1]):
                T = T0[b, k] @ Ci  # the view's camera_to_world (a rig's start view: Ci the identity)
                if not bool(self._sane(T[None], cam)[0]):
                    rec.append(None)
                    continue
                found = search_shift(sv, b, T, self.isocenter, bone=float(c.bone_multiplier),
                                     gain=float(c.shift_search))
                ok = found.moved and bool(self._sane(found.pose[None], cam)[0])
                out[b, k], moved[b, k] = found.pose @ Ci_inv, ok
                rec.append({**found.to_dict(), "moved": ok})
            records.append(rec)
        return out, moved, records

    def _capture_starts(self, T: torch.Tensor) -> torch.Tensor:
        """(B, capture_starts, 4, 4): each given start (B, 4, 4) first, then ``capture_starts − 1`` starts
        about it (``capture_spread``: degrees about a random axis through the isocenter, mm in a random
        direction; seeded by ``config.seed``: the same turns and shifts for every X-ray and call)."""
        from xraypose.register.cases import perturb_pose

        c = self.config
        deg, mm = c.capture_spread
        n = c.capture_starts - 1
        # the same turns and shifts about every X-ray's start: an X-ray's result does not depend on its batch
        extra = torch.stack([perturb_pose(T[b].expand(n, 4, 4), self.isocenter, deg, mm,
                                          torch.Generator().manual_seed(int(c.seed) * 7907 + 11))
                             for b in range(T.shape[0])])
        return torch.cat([T[:, None], extra], dim=1)

    @staticmethod
    def _keep_best(tracks: list, B: int, chosen: list, among=lambda t: True) -> list:
        """Of each X-ray's tracks that ``among`` selects, the one with the best score (``chosen[b]`` its
        start); the tracks it does not select stay."""
        kept = []
        for b in range(B):
            mine = [t for t in tracks if t.xray == b and among(t)]
            top = max(mine, key=lambda t: t.score if t.alive or math.isfinite(t.score) else -math.inf)
            chosen[b] = top.start
            kept += [top] + [t for t in tracks if t.xray == b and not among(t)]
        return kept

    @staticmethod
    def _check_view(i: int, n: int, images, camera: Camera, camera_to_rig, masks=None):
        """(images (B, 1, H, W) float32, camera, camera_to_rig (4, 4) float64, masks (B, 1, H, W)
        float32 or None) of one view, checked."""
        from xraypose.preprocess import check_not_channels_last, image_batch
        from xraypose.similarity import check_image

        what = "X-ray" if n == 1 else f"view {i}"
        check_instance("camera", camera, Camera)  # None raised AttributeError ('height')
        if hasattr(images, "shape"):  # a tensor or an array
            check_not_channels_last(torch.as_tensor(images), camera, f"{what}: image")
        imgs = image_batch(images, f"{what}: X-rays").to(torch.float32)  # (uint16: torch has no amax of it)
        B, _, H, W = imgs.shape
        if (H, W) != (camera.height, camera.width):
            raise InputError(f"{what}: X-ray is {H}×{W} pixels but its intrinsics describe a "
                             f"{camera.height}×{camera.width} detector (sizes differ)")
        for b in range(B):
            check_image(imgs[b], what=(f"X-ray {b}" if B > 1 else "X-ray") + ("" if n == 1 else f" of view {i}"))
        if camera_to_rig is None:
            Ci = torch.eye(4, dtype=F64)
        else:
            Ci = torch.as_tensor(camera_to_rig, dtype=F64)
            if Ci.shape != (4, 4) or not bool(torch.isfinite(Ci).all()):
                raise InputError(f"{what}: camera_to_rig must be a finite 4×4 matrix, got shape {tuple(Ci.shape)}")
            R = Ci[:3, :3]
            err = float((R.T @ R - torch.eye(3, dtype=F64)).abs().max())
            if err > 1e-4 or float(torch.det(R)) < 0 or not torch.allclose(
                    Ci[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=F64)):
                raise InputError(f"{what}: camera_to_rig is not a rigid transform (rotation off by {err:.2g}, "
                                 f"det {float(torch.det(R)):.3g}, last row {Ci[3].tolist()})")
        if masks is not None:
            m = image_batch(masks, f"{what}: the pixel mask").to(torch.float32)
            if m.shape[-2:] != (H, W) or m.shape[0] not in (1, B):
                raise InputError(f"{what}: the pixel mask must have the X-rays' shape {(B, 1, H, W)}, got "
                                 f"{tuple(torch.as_tensor(masks).shape)}")
            if not bool(torch.isfinite(m).all()) or float(m.min()) < 0 or float(m.max()) > 1:
                raise InputError(f"{what}: the pixel mask must hold weights in [0, 1]")
            m = m.expand(B, 1, H, W)
            if bool((m.reshape(B, -1).mean(-1) < 0.05).any()):
                raise InputError(f"{what}: the pixel mask leaves less than 5% of an X-ray to register")
            flat = constant_rows(imgs.reshape(B, -1), m.reshape(B, -1) > 0)
            if bool(flat.any()):
                b = int(flat.nonzero()[0, 0])
                v = float(imgs[b].reshape(-1)[m[b].reshape(-1) > 0][0])
                raise InputError(f"{what}: {'X-ray %d' % b if B > 1 else 'the X-ray'} is constant ({v:g}) wherever "
                                 f"the pixel mask weighs it: nothing to register there")
            masks = m.contiguous()
        return imgs, camera, Ci, masks

    def _optimise(self, views, camera_to_rig, T0, sane0, curvature=None, n_given: int | None = None,
                  origins=None) -> RegistrationResult:
        """The levels.  ``T0`` (B, K, 4, 4): K starts per X-ray, the first ``n_given`` given (or the capture's),
        the rest shifted by the shift search.  The first level keeps each X-ray's best given start and its
        shifted ones; the first fine level (the first after the leading Adam levels; the last level when there
        is none) keeps the best of those: at 16 and 32 rows a lost capture can score as high as the right one,
        at the first fine level, intensities fitted, it scores clearly lower (docs/registration.md, "The shift
        search").  ``origins`` (B, 4, 4), optional: each X-ray's pose before an earlier stage (a rig's
        captures), put first in every track's history so that the revisits weigh it as the start; and
        while an X-ray's captures still compete (two live tracks) its intensities are not mapped — a
        map is drawn at the best track's pose, and a wrong capture leading would map the X-ray for both."""
        c = self.config
        n_given = T0.shape[1] if n_given is None else n_given
        first_fine = next((i for i, lv in enumerate(c.levels) if lv.optimizer != "adam"), len(c.levels))
        choose_at = min(first_fine, len(c.levels) - 1)  # the first fine level, else the last level
        B, K = T0.shape[:2]
        g = torch.Generator().manual_seed(int(c.seed))
        A, Bm = self.frames(T0.reshape(B * K, 4, 4))
        tracks = [Track(xray=b, start=k, A=A[b * K + k], Bm=Bm[b * K + k], pose=T0[b, k].clone(),
                        bone=float(c.bone_multiplier)) for b in range(B) for k in range(K)]
        for t in tracks:
            if origins is not None:
                t.history.append(torch.as_tensor(origins[t.xray], dtype=F64).clone())
            if curvature is not None and curvature[t.xray]:
                t.curvature = {int(k): torch.as_tensor(v, dtype=F64) for k, v in curvature[t.xray].items()}
            if not bool(sane0[t.xray, t.start]):
                t.alive, t.status = False, "invalid start"  # a start that does not see the CT is never optimised
        chosen = [0] * B
        level_stats = []
        for li, lv in enumerate(c.levels):
            t_level = time.perf_counter()
            dens, aff = self.volume_level(lv.volume_mm, level_channels(lv))
            objective = ViewSet([LevelObjective(lv, c, dens, aff, imgs, cam, g, masks=m) for imgs, cam, m in views],
                                camera_to_rig)
            capture = lv.optimizer == "adam"
            match = c.match_intensity is not None and (not capture or c.match_capture)
            alone = None
            if origins is not None:  # a rig's later levels: not while an X-ray's captures still compete
                live = [t.xray for t in tracks if t.alive]
                alone = {b for b in set(live) if live.count(b) == 1}
            matched = self._match_intensity(objective, tracks, always=capture, xrays=alone) if match else set()
            last = li == len(c.levels) - 1
            if (li > 0 or (last and origins is not None)) and c.revisit:
                moved = self._revisit(objective, tracks, last=last)
                again = {p for p in matched if p[1] in moved}  # mapped at a pose the revisit left
                if again:  # those X-rays mapped again at their new pose, from the X-rays as given
                    rows = sorted({b for _, b in again})
                    for i in {v for v, _ in again}:
                        imgs, cam, _m = views[i]
                        view = objective.views[i]
                        view.target[rows] = LevelObjective.resized(imgs[rows], cam, view.height, view.width)
                    matched = (matched - again) | self._match_intensity(objective, tracks, always=capture,
                                                                        xrays=set(rows))
            stepper = make_stepper(self, li, objective)
            stepper.begin(tracks)
            for it in range(lv.iterations + 1):  # the last pass only evaluates
                if not any(t.active for t in tracks):
                    break
                if self.cancel is not None and self.cancel.is_set():
                    raise RegistrationCancelled("the registration was cancelled: its result is no longer wanted")
                stepper.iterate(tracks, last=it == lv.iterations)
            for t in tracks:
                t.history.append(t.pose.clone())  # the pose this level started from
            stepper.end(tracks)
            level_stats.append({"level": li, "height": objective.height, "width": objective.width,
                                "channels": objective.channels, "patches": lv.patches, "optimizer": lv.optimizer,
                                "similarity": objective.measure, "matched": len(matched),
                                "iterations": sum(t.levels[-1]["iterations"] for t in tracks),
                                "converged": sum(t.levels[-1]["ended"] == "converged" for t in tracks),
                                "seconds": time.perf_counter() - t_level})
            if li == 0 and n_given > 1:  # keep each X-ray's best given start (and its shifted ones)
                tracks = self._keep_best(tracks, B, chosen, lambda t: t.start < n_given)
            if li == choose_at and len(tracks) > B:  # keep each X-ray's best start
                tracks = self._keep_best(tracks, B, chosen)
        for t in tracks:
            if t.status not in ("diverged", "invalid start"):
                last = t.levels[-1]["ended"] if t.levels else "max_iterations"
                t.status = ("recovered" if t.recoveries else "converged") if last == "converged" else "max_iterations"
        poses = torch.stack([t.pose for t in tracks]).detach()
        if not bool(torch.isfinite(poses).all()):  # cannot happen (only finite poses are kept), but never NaN
            raise InputError("registration produced a non-finite pose")
        trajectories = []
        for t in tracks:
            for rec in t.trajectory:
                rec["camera_to_world"] = rec["camera_to_world"].tolist()
            trajectories.append(t.trajectory)
        return RegistrationResult(
            poses=poses, initial_poses=T0[torch.arange(B), torch.tensor(chosen)].clone(),
            similarity=torch.tensor([t.score for t in tracks], dtype=F64), status=[t.status for t in tracks],
            iterations=torch.tensor([t.iterations for t in tracks], dtype=torch.long), opt_s=0.0, cpu_s=0.0,
            trajectories=trajectories, chosen_start=chosen, config=c, recoveries=[t.recoveries for t in tracks],
            bone_multiplier=torch.tensor([t.bone for t in tracks], dtype=F64), level_stats=level_stats,
            levels=[t.levels for t in tracks], curvature=[t.curvature for t in tracks],
        )
