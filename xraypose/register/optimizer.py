"""Test-time registration: gradient ascent on the pose to make the DRR look like the X-ray.

DiffPose's second stage, built for a CPU budget:

* **Pose parameters.**  ``pose = A · pose_from_params(rotation, translation) · Bm``
  in one of two frames (``RegistrationConfig.frame``):

  - ``"isocentric"`` (default): the parameters move the *starting* pose
    ``T0``: ``A = F``, ``Bm = F⁻¹ T0`` with ``F`` the frame at the isocenter
    whose axes are ``T0``'s camera axes.  With ``se3_log_map`` the rotation
    turns the C-arm about the isocenter (about its columns, rows and principal
    ray) and the translation moves it along its own axes, so the depth
    (magnification) is one coordinate, in-plane shifts two others.  Adam's
    per-coordinate steps suit this far better than a world frame, where the
    weakly-seen depth direction is a mix of all six (measured:
    docs/registration.md).
  - ``"world"``: DiffPose's choice, the pose itself in the CT frame re-centred
    at the isocenter (``A = C``, ``Bm = I``).

  Default parameterization ``se3_log_map`` (ω, ρ); any of
  :data:`xraypose.geometry.ROTATION_PARAMETERIZATIONS` may be chosen.
* **Optimiser.**  Adam with one learning rate for the rotation parameters and
  one for the translation parameters (DiffPose: 7.5e-3 and 7.5), written out
  here per batch element (so every X-ray has its own step count, its own
  schedule and its own early stop).  Schedules: ``"step"`` (×``step_gamma``
  every ``step_every`` iterations, DiffPose) or ``"plateau"`` (×``plateau_factor``
  after ``patience`` iterations without an improvement of the similarity; a
  level ends after ``max_reductions`` reductions: early stopping).
* **Coarse to fine.**  :class:`Level`\\ s: detector size, samples per ray,
  the CT averaged to a coarser voxel, whole image or ``patches`` sparse
  patches.  At each level's end every X-ray keeps its best pose of that level.
* **Sparse rendering.**  At a patch level, ``patches`` patch centres are drawn
  (seeded, without replacement) with probability proportional to the X-ray's
  smoothed gradient magnitude plus a floor (feature-weighted, DiffPose's
  SparseRegistration idea), once per level; only those rays are traced.
* **Similarity.**  ``mncc`` (whole image + 13×13 patches, 0.5/0.5), ``gncc``,
  ``mixed``, ``ncc``; on a patch level "whole image" means all rendered pixels.
* **Batches.**  B X-rays of one detector are registered together; elements that
  stopped are no longer rendered.
* **Safety.**  A step that makes the pose non-finite, puts the isocenter
  behind the source or far outside the detector, makes the DRR constant or the
  similarity non-finite is undone (back to the best pose, learning rates
  halved); after ``max_recoveries`` such events the element stops with status
  ``"diverged"`` and keeps its best finite pose.  A result is never NaN.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.geometry import ROTATION_PARAMETERIZATIONS, pose_from_params, pose_to_params
from xraypose.preprocess import resize as resize_image
from xraypose.render import render
from xraypose.render.sparse import patch_pixels
from xraypose.similarity import SIMILARITIES, gradient_ncc, ncc

__all__ = ["Level", "RegistrationConfig", "RegistrationResult", "Registrar", "DEFAULT_LEVELS", "FAST_LEVELS",
           "levels_for_sizes"]

F64 = torch.float64


@dataclass(frozen=True)
class Level:
    """One resolution level of the coarse-to-fine schedule.

    Args:
        size: detector rows at this level (columns follow the aspect ratio;
            never more than the X-ray's own size).
        iterations: most iterations at this level.
        n_samples: trilinear samples per ray (None: from ``step_mm``).
        volume_mm: average the CT to voxels of about this size (mm) for this
            level (None: the CT as it is).  Keeps coarse sampling from aliasing.
        step_mm: ray-marching step when ``n_samples`` is None (None: the
            larger of ``volume_mm`` and the level's smallest voxel size).
        patches: number of sparse patches (None: the whole detector).
        patch_size: side of a sparse patch, pixels.
        lr_scale: multiplies both learning rates at this level.
        depth_lr_scale: multiplies the learning rate of the depth (translation
            along the principal ray; the last translation parameter in the
            isocentric frame) at this level: the depth is barely observable on a
            small detector and wanders there.
        fit_bone: render soft tissue and bone as two channels and fit the bone
            multiplier to the X-ray at every iteration (closed form; costs a
            second channel).
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


#: Default schedule (chosen by benchmarks/register.py measurements, docs/registration.md).
DEFAULT_LEVELS = (
    Level(size=16, iterations=60, volume_mm=12.0, lr_scale=1.0, depth_lr_scale=0.2),
    Level(size=32, iterations=80, volume_mm=8.0, lr_scale=1.0, depth_lr_scale=0.2),
    Level(size=64, iterations=80, volume_mm=4.0, lr_scale=0.3, fit_bone=True),
    # The finest level: the whole 96-row image, not 24 sparse 13×13 patches at 128 rows.  From the
    # 10-minute models' starts (100 cases each): abdomen 95 % → 100 % success, median mTRE
    # 0.368 → 0.207 mm, 2.43 → 2.41 s; pelvis 99 % → 100 %, 0.296 → 0.187 mm, 1.60 → 1.59 s.
    Level(size=96, iterations=60, volume_mm=2.0, lr_scale=0.1, fit_bone=True),
)

#: A cheap schedule for tests and previews.
FAST_LEVELS = (
    Level(size=24, iterations=60, n_samples=32, volume_mm=8.0, lr_scale=1.0, depth_lr_scale=0.2),
    Level(size=48, iterations=60, n_samples=64, volume_mm=4.0, lr_scale=0.3, fit_bone=True),
)


def levels_for_sizes(sizes, base=DEFAULT_LEVELS) -> tuple:
    """Coarse-to-fine levels at the given detector sizes (rows, increasing); each takes the other
    settings (iterations, volume resolution, learning-rate scale, patches) of the ``base`` level
    nearest in size."""
    sizes = [int(s) for s in sizes]
    if not sizes or any(s < 4 for s in sizes) or sorted(sizes) != sizes or len(set(sizes)) != len(sizes):
        raise InputError(f"levels must be increasing detector sizes >= 4 pixels, got {sizes}")
    out = []
    for s in sizes:
        near = min(base, key=lambda lv: abs(math.log(lv.size / s)))
        out.append(dataclasses.replace(near, size=s))
    return tuple(out)


@dataclass
class RegistrationConfig:
    """Everything that decides how a registration runs (all recorded in the results).

    Learning rates are per iteration, in the parameterization's units: rad-ish
    for the rotation parameters, mm for the translation parameters.

    ``num_threads``: torch threads during the registration (restored after);
    None leaves torch's setting.  Default 1: the per-iteration tensors are small,
    and on the shared 2-core development machine 2 threads made a registration
    ~8× slower (6.7 s vs 0.86 s median) through thread contention.
    """

    parameterization: str = "se3_log_map"
    convention: str | None = None
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

    def __post_init__(self):
        if self.parameterization not in ROTATION_PARAMETERIZATIONS:
            raise InputError(f"unknown parameterization {self.parameterization!r}; choose one of "
                             f"{', '.join(ROTATION_PARAMETERIZATIONS)}")
        if self.parameterization == "euler_angles" and self.convention is None:
            self.convention = "ZXY"
        if self.frame not in ("isocentric", "world"):
            raise InputError(f"unknown parameter frame {self.frame!r}; choose isocentric or world")
        if self.similarity not in SIMILARITIES:
            raise InputError(f"unknown similarity {self.similarity!r}; choose one of {', '.join(SIMILARITIES)}")
        if self.density not in REGISTRATION_DENSITIES:
            raise InputError(f"unknown density model {self.density!r}; choose one of "
                             f"{', '.join(REGISTRATION_DENSITIES)}")
        if self.schedule not in ("plateau", "step"):
            raise InputError(f"unknown schedule {self.schedule!r}; choose plateau or step")
        for name in ("lr_rot", "lr_trans", "bone_multiplier"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise InputError(f"{name} must be a positive number, got {v!r}")
        self.levels = tuple(lv if isinstance(lv, Level) else Level(**lv) for lv in self.levels)
        if not self.levels:
            raise InputError("a registration needs at least one level")
        for lv in self.levels:
            if lv.size < 4 or lv.iterations < 0:
                raise InputError(f"bad level {lv}: size must be >= 4 pixels and iterations >= 0")
            if lv.patches is not None and (lv.patches < 1 or lv.patch_size < 3):
                raise InputError(f"bad level {lv}: patches must be >= 1 and patch_size >= 3")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["levels"] = [asdict(lv) for lv in self.levels]
        return d


@dataclass
class RegistrationResult:
    """Outcome of registering B X-rays.

    Attributes:
        poses: (B, 4, 4) float64 camera_to_world, finite.
        initial_poses: (B, 4, 4) the starts actually used (after any antipodal choice).
        similarity: (B,) similarity of ``poses`` at the finest level (1 = perfect).
        status: per element: "converged" (early stop at the last level),
            "max_iterations", "recovered" (converged after undoing a divergent step)
            or "diverged" (stopped; best finite pose kept).
        iterations: (B,) iterations over all levels.
        opt_s: wall-clock seconds of the whole batch's optimisation.
        cpu_s: CPU seconds of the process during it (all threads).
        trajectories: per element, a list of ``{"level", "iteration", "similarity",
            "lr_rot", "lr_trans", "camera_to_world"}`` (empty when not recorded).
        chosen_start: per element, the index of the start kept (several starts, e.g. antipodal).
        bone_multiplier: (B,) the bone multiplier of the final DRR (fitted where a level fits it).
        level_stats: per level: size, channels, patches, iterations (all elements) and seconds.
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

    def __len__(self) -> int:
        return self.poses.shape[0]


# ---------------------------------------------------------------------------- helpers
def _pool_volume(density: torch.Tensor, affine: torch.Tensor, factors) -> tuple[torch.Tensor, torch.Tensor]:
    """Average ``density`` (C, I, J, K) over blocks of ``factors`` voxels; the affine follows."""
    f = [int(x) for x in factors]
    if f == [1, 1, 1]:
        return density, affine
    I, J, K = density.shape[-3:]
    pad = [(-n) % k for n, k in zip((I, J, K), f)]
    x = density[None]
    if any(pad):
        x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
    x = F.avg_pool3d(x, kernel_size=f, stride=f)[0].contiguous()
    S = torch.eye(4, dtype=F64)
    for a in range(3):
        S[a, a] = f[a]
        S[a, 3] = (f[a] - 1) / 2
    return x, affine.to(F64) @ S


def _patch_weights(img: torch.Tensor, half: int) -> torch.Tensor:
    """(B, H, W) sampling weights: smoothed gradient magnitude + a floor, zero within ``half`` of the edges."""
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=img.dtype)
    w = torch.stack([k, k.T]).unsqueeze(1)
    g = F.conv2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), w).pow(2).sum(1, keepdim=True).sqrt()
    g = F.avg_pool2d(F.pad(g, (2, 2, 2, 2), mode="replicate"), 5, stride=1)[:, 0]
    g = g / g.mean(dim=(-1, -2), keepdim=True).clamp_min(1e-12)
    g = g + 0.1
    valid = torch.zeros_like(g, dtype=torch.bool)
    H, W = g.shape[-2:]
    valid[:, half:H - half, half:W - half] = True
    return torch.where(valid, g, torch.zeros_like(g))


def _sparse_similarity(drr: torch.Tensor, tgt: torch.Tensor, name: str, alpha: float, weights=(0.5, 0.5),
                       patch: int = 13) -> torch.Tensor:
    """Similarity of (B, P, S, S) patch stacks: whole = all rendered pixels, local = per patch."""
    B, P, S, _ = drr.shape

    def mncc():
        whole = ncc(drr.reshape(B, 1, P * S, S), tgt.reshape(B, 1, P * S, S))
        local = ncc(drr.reshape(B * P, 1, S, S), tgt.reshape(B * P, 1, S, S)).reshape(B, P).mean(-1)
        return weights[0] * whole + weights[1] * local

    def gn():
        return gradient_ncc(drr.reshape(B * P, 1, S, S), tgt.reshape(B * P, 1, S, S)).reshape(B, P).mean(-1)

    if name == "mncc":
        return mncc()
    if name == "ncc":
        return ncc(drr.reshape(B, 1, P * S, S), tgt.reshape(B, 1, P * S, S))
    if name == "gncc":
        return gn()
    return alpha * mncc() + (1 - alpha) * gn()


def _dense_similarity(drr: torch.Tensor, tgt: torch.Tensor, name: str, alpha: float, weights=(0.5, 0.5),
                      patch: int = 13) -> torch.Tensor:
    from xraypose.similarity import multiscale_ncc

    def mncc():
        return multiscale_ncc(drr, tgt, patch_sizes=(None, patch), weights=tuple(weights))

    if name == "mncc":
        return mncc()
    if name == "ncc":
        return ncc(drr, tgt)
    if name == "gncc":
        return gradient_ncc(drr, tgt)
    return alpha * mncc() + (1 - alpha) * gradient_ncc(drr, tgt)


#: Density models for registration: those of :meth:`Volume.density` and "linear".
REGISTRATION_DENSITIES = ("linear", "hu", "physical", "raw")


def registration_density(volume, model: str = "linear", bone_multiplier: float = 1.0) -> torch.Tensor:
    """(2, I, J, K) float32: the attenuation of every voxel as registration renders it
    (channel 0, arbitrary units: NCC ignores the scale) and its derivative with
    respect to the bone multiplier (channel 1), both divided by channel 0's maximum.

    ``"linear"``: water-equivalent, ``μ ∝ max(HU + 1000, 0)`` (air 0, water 1000),
    with the bone voxels' (HU > 350) part ``HU`` multiplied by ``bone_multiplier``.
    The other names are :meth:`Volume.density`'s models ("hu" is DiffPose's).
    """
    if model not in REGISTRATION_DENSITIES:
        raise InputError(f"unknown density model {model!r}; choose one of {', '.join(REGISTRATION_DENSITIES)}")
    from xraypose.volume import HU_BONE_MIN

    if model == "linear":
        x = volume.data.to(torch.float32)
        bone = torch.where(x > HU_BONE_MIN, x, torch.zeros_like(x))
        d = (x + 1000.0).clamp_min(0.0) + (bone_multiplier - 1.0) * bone
    else:
        d = volume.density(model, bone_attenuation_multiplier=bone_multiplier).to(torch.float32)
        bone = volume.density(model, bone_attenuation_multiplier=bone_multiplier + 1.0).to(torch.float32) - d
    top = float(d.max())
    if not math.isfinite(top) or top <= 0 or float(d.min()) == top:
        raise InputError("the CT is constant (or all air) after the density mapping; nothing to register to")
    return torch.stack([d / top, bone / top]).contiguous()


def _fit_bone(L: torch.Tensor, y: torch.Tensor, base: float, lo: float = 0.2, hi: float = 5.0) -> torch.Tensor:
    """Per element, the m maximising corr(L0 + m·L1, y): least squares of y on (L0, L1), m = w1/w0.

    L: (n, 2, R), y: (n, R).  The total multiplier ``base + m`` is kept in [lo, hi].
    """
    L = L.detach().to(F64)
    y = y.detach().to(F64)
    a = L[:, 0] - L[:, 0].mean(-1, keepdim=True)
    b = L[:, 1] - L[:, 1].mean(-1, keepdim=True)
    yc = y - y.mean(-1, keepdim=True)
    aa, ab, bb = (a * a).sum(-1), (a * b).sum(-1), (b * b).sum(-1)
    ay, by = (a * yc).sum(-1), (b * yc).sum(-1)
    det = aa * bb - ab * ab
    ok = det > 1e-12 * (aa * bb).clamp_min(1e-30)
    w0 = torch.where(ok, (bb * ay - ab * by) / det.clamp_min(1e-30), torch.ones_like(det))
    w1 = torch.where(ok, (aa * by - ab * ay) / det.clamp_min(1e-30), torch.zeros_like(det))
    m = torch.where(w0 > 0, w1 / w0.clamp_min(1e-30), torch.zeros_like(w0))
    return m.clamp(lo - base, hi - base)


def _gaussian(sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur(x: torch.Tensor, k: torch.Tensor, same: bool) -> torch.Tensor:
    """Separable blur of (N, C, H, W); ``same``: replicate-padded, else 'valid' (shrinks by 2r)."""
    N, C, H, W = x.shape
    r = (k.numel() - 1) // 2
    y = x.reshape(N * C, 1, H, W)
    if same:
        y = F.pad(y, (r, r, r, r), mode="replicate")
    k = k.to(y.dtype)
    y = F.conv2d(F.conv2d(y, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    return y.reshape(N, C, y.shape[-2], y.shape[-1])


class _Adam:
    """Adam over the rows of a (B, D) tensor with per-element, per-column learning rates."""

    def __init__(self, B: int, D: int, betas, eps: float = 1e-8):
        self.m = torch.zeros(B, D, dtype=F64)
        self.v = torch.zeros(B, D, dtype=F64)
        self.t = torch.zeros(B, dtype=F64)
        self.b1, self.b2 = betas
        self.eps = eps

    def reset(self, idx: torch.Tensor) -> None:
        self.m[idx] = 0
        self.v[idx] = 0
        self.t[idx] = 0

    def step(self, idx: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """The update (to subtract) for elements ``idx`` given their gradients (len(idx), D)."""
        self.t[idx] += 1
        m = self.b1 * self.m[idx] + (1 - self.b1) * grad
        v = self.b2 * self.v[idx] + (1 - self.b2) * grad * grad
        self.m[idx], self.v[idx] = m, v
        t = self.t[idx].unsqueeze(-1)
        mhat = m / (1 - self.b1 ** t)
        vhat = v / (1 - self.b2 ** t)
        return lr * mhat / (vhat.sqrt() + self.eps)


# ---------------------------------------------------------------------------- registrar
class Registrar:
    """Registers X-rays to one CT.  Build once per CT (it caches the density pyramid).

    Args:
        volume: the CT (:class:`~xraypose.volume.Volume`, HU).
        config: a :class:`RegistrationConfig` (default: DiffPose's choices, CPU schedule).
        isocenter: (3,) world mm about which the parameters are centred
            (default: the volume's isocenter).
    """

    def __init__(self, volume, config: RegistrationConfig | None = None, isocenter=None):
        self.config = config or RegistrationConfig()
        self.volume = volume
        iso = volume.get_isocenter() if isocenter is None else isocenter
        self.isocenter = torch.as_tensor(iso, dtype=F64).reshape(3)
        self.center = torch.eye(4, dtype=F64)
        self.center[:3, 3] = self.isocenter
        self.center_inv = torch.linalg.inv(self.center)
        dens = registration_density(volume, self.config.density, self.config.bone_multiplier)
        self._density = dens  # (2, I, J, K): density and its bone part
        self._affine = volume.affine.to(F64)
        self._pyramid: dict = {}
        self._n_rot = ROTATION_PARAMETERIZATIONS[self.config.parameterization]

    # ------------------------------------------------------------ building blocks
    def volume_level(self, volume_mm: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(density, affine) of the CT averaged to voxels of about ``volume_mm``."""
        spacing = self._affine[:3, :3].norm(dim=0)
        if volume_mm is None:
            factors = (1, 1, 1)
        else:
            factors = tuple(max(1, int(math.floor(volume_mm / float(s) + 0.5))) for s in spacing)
        if factors not in self._pyramid:
            self._pyramid[factors] = _pool_volume(self._density, self._affine, factors)
        return self._pyramid[factors]

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
        X = pose_from_params(p[..., : self._n_rot], p[..., self._n_rot:], c.parameterization, c.convention)
        return A @ X @ Bm

    def _sane(self, T: torch.Tensor, camera: Camera) -> torch.Tensor:
        """(B,) True where a pose still looks at the CT (finite, isocenter in front and near the detector)."""
        ok = torch.isfinite(T).reshape(T.shape[0], -1).all(-1)
        Tf = torch.where(ok[:, None, None], T, torch.eye(4, dtype=T.dtype).expand_as(T))
        z = camera.depth(self.isocenter[None].to(T.dtype), Tf)[:, 0]
        uv = camera.project(self.isocenter[None].to(T.dtype), Tf)[:, 0]
        H, W = camera.height, camera.width
        inside = (uv[:, 0] > -W) & (uv[:, 0] < 2 * W) & (uv[:, 1] > -H) & (uv[:, 1] < 2 * H)
        return ok & (z > 0) & inside

    # ------------------------------------------------------------ the optimisation
    def register(self, images: torch.Tensor, camera: Camera, initial_poses: torch.Tensor) -> RegistrationResult:
        """Register X-rays.

        Args:
            images: (B, 1, H, W) or (H, W) preprocessed X-rays (line integrals,
                bone bright; any affine intensity scale), all seen by ``camera``.
            camera: their intrinsics (H × W must match).
            initial_poses: (B, 4, 4) starts, or (B, K, 4, 4) K starts per X-ray
                (e.g. a pose and its antipodal flip): all K are optimised at the
                first level and the one with the best similarity goes on.
        Returns:
            :class:`RegistrationResult`.
        """
        from xraypose.similarity import check_image

        c = self.config
        imgs = torch.as_tensor(images)
        if imgs.dim() == 2:
            imgs = imgs[None, None]
        if imgs.dim() == 3:
            imgs = imgs[:, None]
        if imgs.dim() != 4 or imgs.shape[1] != 1:
            raise InputError(f"X-rays must be (B, 1, H, W) or (H, W), got shape {tuple(imgs.shape)}")
        B, _, H, W = imgs.shape
        if (H, W) != (camera.height, camera.width):
            raise InputError(f"X-ray is {H}×{W} pixels but its intrinsics describe a {camera.height}×{camera.width} "
                             "detector (sizes differ)")
        for b in range(B):
            check_image(imgs[b], what=f"X-ray {b}" if B > 1 else "X-ray")
        imgs = imgs.to(torch.float32)
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
        flatT = T0.reshape(B * K, 4, 4)
        sane = self._sane(flatT, camera)
        none_ok = ~sane.reshape(B, K).any(dim=1)
        if bool(none_ok.any()):
            b = int(torch.nonzero(none_ok)[0, 0])
            raise InputError(f"the initial pose{'' if B == 1 else f' of X-ray {b}'} does not see the CT (its "
                             "isocenter is behind the source or far outside the detector); check the pose and the CT")
        threads = torch.get_num_threads()
        if c.num_threads:
            torch.set_num_threads(int(c.num_threads))
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            out = self._optimise(imgs, camera, T0, sane.reshape(B, K))
            out.opt_s = time.perf_counter() - t0
            out.cpu_s = time.process_time() - c0
        finally:
            torch.set_num_threads(threads)
        return out

    def _optimise(self, imgs, camera, T0, sane0) -> RegistrationResult:
        c = self.config
        B, K = T0.shape[:2]
        g = torch.Generator().manual_seed(int(c.seed))
        # elements: X-ray b, start k -> row b*K + k; after level 0 only the chosen start per X-ray remains
        owner = torch.arange(B).repeat_interleave(K)
        A, Bm = self.frames(T0.reshape(B * K, 4, 4))
        params = self.params_from_pose(T0.reshape(B * K, 4, 4), A, Bm)
        n = params.shape[0]
        D = params.shape[1]
        nr = self._n_rot
        lr_base = torch.cat([torch.full((nr,), c.lr_rot, dtype=F64), torch.full((D - nr,), c.lr_trans, dtype=F64)])
        status = ["max_iterations"] * n
        recoveries = [0] * n
        dead = ~sane0.reshape(-1)  # starts that do not see the CT are never optimised
        for i in torch.nonzero(dead).reshape(-1).tolist():
            status[i] = "invalid start"
        iters = torch.zeros(n, dtype=torch.long)
        traj: list[list] = [[] for _ in range(n)]
        best_sim = torch.full((n,), -math.inf, dtype=F64)
        bone_fit = torch.full((n,), float(c.bone_multiplier), dtype=F64)
        chosen = [0] * B

        level_stats = []
        for li, lv in enumerate(c.levels):
            t_level = time.perf_counter()
            it_level = int(iters.sum())
            h = min(lv.size, camera.height)
            w = max(4, min(camera.width, int(round(camera.width * h / camera.height))))
            tgt = torch.stack([resize_image(imgs[o, 0], camera, h, w)[0] for o in owner.tolist()])[:, None]
            cam_l = camera.resize(h, w)
            dens, aff = self.volume_level(lv.volume_mm)
            if not lv.fit_bone:
                dens = dens[:1]
            step = lv.step_mm
            if lv.n_samples is None and step is None:
                step = max(float(lv.volume_mm or 0.0), float(aff[:3, :3].norm(dim=0).min()))
            uv = None
            kernel, r = None, 0
            if c.drr_blur:
                sigma_l = float(c.drr_blur) * h / camera.height
                if sigma_l >= 0.2:
                    kernel = _gaussian(sigma_l)
                    r = (kernel.numel() - 1) // 2
            if lv.patches is not None:
                S = min(lv.patch_size, h, w)
                S -= (S + 1) % 2  # odd
                half = S // 2
                P = min(lv.patches, max(1, (h - 2 * half) * (w - 2 * half)))
                wts = _patch_weights(tgt, half).reshape(tgt.shape[0], -1)
                cidx = torch.multinomial(wts, P, replacement=False, generator=g)  # (n, P)
                centres = torch.stack([cidx % w, cidx // w], dim=-1).to(F64)  # (u, v)
                uv_t = patch_pixels(centres, S)  # (n, P·S², 2)
                flat = (uv_t[..., 1] * w + uv_t[..., 0]).long()
                tgt_sparse = torch.gather(tgt.reshape(tgt.shape[0], -1), 1, flat).reshape(-1, P, S, S)
                uv = patch_pixels(centres, S + 2 * r)  # rendered with a halo when the DRR is blurred
            adam = _Adam(n, D, c.adam_betas)
            lr = (lr_base * lv.lr_scale).expand(n, D).clone()
            if c.frame == "isocentric":
                lr[:, -1] *= lv.depth_lr_scale
            wait = torch.zeros(n, dtype=torch.long)
            reductions = torch.zeros(n, dtype=torch.long)
            level_best = torch.full((n,), -math.inf, dtype=F64)
            level_best_params = params.clone()
            active = ~dead.clone()
            for it in range(lv.iterations + 1):  # the last pass only evaluates
                idx = torch.nonzero(active).reshape(-1)
                if idx.numel() == 0:
                    break
                p = params[idx].clone().requires_grad_(True)
                T = self.pose_from_params(p, A[idx], Bm[idx])
                ok = self._sane(T.detach(), cam_l)
                img_ok = ok.clone()
                if bool(ok.any()):
                    sel = torch.nonzero(ok).reshape(-1)
                    Tr = T[sel].to(torch.float32)
                    kw = dict(n_samples=lv.n_samples, step=None if lv.n_samples else step, backend="auto")
                    if uv is None:
                        drr = render(dens, aff, cam_l, Tr, **kw)  # (s, C, h, w)
                        t_sel = tgt[idx[sel]]
                    else:
                        drr = render(dens, aff, cam_l, Tr, uv=uv[idx[sel]].to(torch.float32), **kw)  # (s, C, R)
                        t_sel = tgt_sparse[idx[sel]]
                    if kernel is not None:
                        if uv is None:
                            drr = _blur(drr, kernel, same=True)
                        else:
                            Sh = S + 2 * r
                            Cc = drr.shape[1]
                            q = drr.reshape(len(sel), Cc, P, Sh, Sh).transpose(1, 2).reshape(len(sel) * P, Cc, Sh, Sh)
                            q = _blur(q, kernel, same=False)  # (s·P, C, S, S)
                            drr = q.reshape(len(sel), P, Cc, S * S).transpose(1, 2).reshape(len(sel), Cc, P * S * S)
                    if lv.fit_bone:
                        m = _fit_bone(drr.reshape(len(sel), 2, -1), t_sel.reshape(len(sel), -1), c.bone_multiplier)
                        bone_fit[idx[sel]] = m + c.bone_multiplier
                        drr = drr[:, :1] + m.to(drr.dtype).reshape(-1, 1, *([1] * (drr.dim() - 2))) * drr[:, 1:2]
                    if uv is None:
                        sim_sel = _dense_similarity(drr, t_sel, c.similarity, c.mix_alpha, c.ncc_weights, c.ncc_patch)
                    else:
                        sim_sel = _sparse_similarity(drr.reshape(len(sel), P, S, S), t_sel, c.similarity,
                                                     c.mix_alpha, c.ncc_weights)
                    flat_drr = drr.reshape(len(sel), -1)
                    constant = (flat_drr.detach().amax(-1) - flat_drr.detach().amin(-1)) <= 1e-6 * (
                        flat_drr.detach().abs().amax(-1) + 1e-12)
                    good = torch.isfinite(sim_sel.detach()) & ~constant
                    img_ok[sel] = good
                    sim = torch.full((len(idx),), -math.inf, dtype=F64)
                    sim[sel] = sim_sel.detach().to(F64)
                    loss = -(sim_sel[good]).sum()
                    if bool(good.any()):
                        loss.backward()
                    grad = p.grad if p.grad is not None else torch.zeros_like(p)
                else:
                    sim = torch.full((len(idx),), -math.inf, dtype=F64)
                    grad = torch.zeros_like(p)
                grad = torch.nan_to_num(grad.detach(), nan=0.0, posinf=0.0, neginf=0.0)
                bad = ~img_ok
                # ---- undo divergent steps: back to the level's best pose, halve the rates
                for j in torch.nonzero(bad).reshape(-1).tolist():
                    e = int(idx[j])
                    recoveries[e] += 1
                    if recoveries[e] > c.max_recoveries or not math.isfinite(float(level_best[e])):
                        status[e] = "diverged"
                        active[e] = False
                        dead[e] = True
                        if math.isfinite(float(level_best[e])):
                            params[e] = level_best_params[e]
                        continue
                    params[e] = level_best_params[e]
                    lr[e] *= 0.5
                    adam.reset(torch.tensor([e]))
                # ---- bookkeeping of the good ones
                good_j = torch.nonzero(~bad).reshape(-1)
                if good_j.numel():
                    ge = idx[good_j]
                    s = sim[good_j]
                    improved = s > level_best[ge] + c.rel_tol * level_best[ge].abs().clamp_min(1e-3)
                    improved |= ~torch.isfinite(level_best[ge])
                    upd = ge[improved]
                    level_best[upd] = s[improved]
                    level_best_params[upd] = params[upd]
                    wait[ge] = torch.where(improved, torch.zeros_like(wait[ge]), wait[ge] + 1)
                    if c.record_trajectory:
                        Ts = T.detach()[good_j]
                        for q, e in enumerate(ge.tolist()):
                            traj[e].append({"level": li, "iteration": it, "similarity": float(s[q]),
                                            "lr_rot": float(lr[e, 0]), "lr_trans": float(lr[e, -1]),
                                            "camera_to_world": Ts[q]})
                    if it == lv.iterations:
                        break
                    # ---- schedules and early stopping
                    if c.schedule == "plateau":
                        red = ge[wait[ge] >= c.patience]
                        if red.numel():
                            lr[red] *= c.plateau_factor
                            reductions[red] += 1
                            wait[red] = 0
                            params[red] = level_best_params[red]
                            adam.reset(red)
                            done = red[reductions[red] > c.max_reductions]
                            active[done] = False
                            for e in done.tolist():
                                status[e] = "recovered" if recoveries[e] else "converged"
                        step_e = ge[active[ge]]
                        step_e = step_e[~torch.isin(step_e, red)]
                    else:
                        if it > 0 and it % c.step_every == 0:
                            lr[ge] *= c.step_gamma
                        step_e = ge
                    if step_e.numel():
                        pos = torch.searchsorted(idx, step_e)
                        upd = adam.step(step_e, grad[pos], lr[step_e])  # grad of the loss = −similarity
                        params[step_e] = params[step_e] - upd
                        iters[step_e] += 1
                elif it == lv.iterations:
                    break
            level_stats.append({"level": li, "height": h, "width": w, "channels": int(dens.shape[0]),
                                "patches": lv.patches, "iterations": int(iters.sum()) - it_level,
                                "seconds": time.perf_counter() - t_level})
            # end of level: every element keeps its best pose of the level
            have = torch.isfinite(level_best)
            params[have] = level_best_params[have]
            best_sim[have] = level_best[have]
            if li < len(c.levels) - 1:
                for e in range(n):
                    if status[e] == "converged" or status[e] == "recovered":
                        status[e] = "max_iterations"  # decided at the last level
            if li == 0 and K > 1:
                sims = best_sim.reshape(B, K)
                chosen = sims.argmax(dim=1).tolist()
                keep = torch.tensor([b * K + k for b, k in enumerate(chosen)])
                params, best_sim, iters, bone_fit = params[keep], best_sim[keep], iters[keep], bone_fit[keep]
                A, Bm = A[keep], Bm[keep]
                dead = dead[keep]
                status = [status[i] for i in keep.tolist()]
                recoveries = [recoveries[i] for i in keep.tolist()]
                traj = [traj[i] for i in keep.tolist()]
                owner = torch.arange(B)
                n, K = B, 1
                T0 = T0[torch.arange(B), torch.tensor(chosen)][:, None]
        poses = self.pose_from_params(params, A, Bm).detach()
        if not bool(torch.isfinite(poses).all()):  # cannot happen (params only take finite values), but never NaN
            raise InputError("registration produced a non-finite pose")
        if c.record_trajectory:
            for tr in traj:
                for rec in tr:
                    rec["camera_to_world"] = rec["camera_to_world"].tolist()
        return RegistrationResult(
            poses=poses, initial_poses=T0[:, 0].clone(), similarity=best_sim.clone(), status=status,
            iterations=iters, opt_s=0.0, cpu_s=0.0, trajectories=traj, chosen_start=chosen, config=c,
            recoveries=recoveries, bone_multiplier=bone_fit, level_stats=level_stats,
        )
