"""Training a patient-specific pose regressor from one CT (DiffPose's training stage).

Data are made on the fly: poses from :class:`xraypose.sampling.PoseSampler`,
DRRs from :class:`xraypose.render.DRR` at the training size, rendered once as
the two-channel bone basis so every use of a render draws a fresh
``bone_attenuation_multiplier`` ~ U(1, 10) for free.  Rendering costs far more
than a training step on a CPU, so a replay buffer (``data.reuse``) lets each
render serve several steps; every reuse draws a new bone contrast, a new exact
rotation about the X-ray source (a new pose, :mod:`xraypose.augment`) and new
image augmentations.

Loss (``loss.mode``):

* ``"full"`` (DiffPose): ``1 − mNCC(DRR(T̂), DRR(T)) + w·(‖log(T̂⁻¹T)‖ + dgeo(T̂, T; sod))``,
  ``w = 1e-2``; needs a differentiable second render per step;
* ``"geodesic"``: the geodesic terms only (no second render; the fast default on CPU).

Optimisation: Adam (lr 1e-3), linear warm-up then cosine decay, adaptive
gradient clipping (AGC), gradient accumulation, bfloat16 autocast on GPU.
A time budget (``run.time_budget_s``) fixes the schedule's length from the
measured step rate and stops in time.

Checkpoints (written atomically, load with ``weights_only=True``):

* ``OUTPUT`` (e.g. ``model.pt``): the best model by validation (weights + meta),
  what :func:`xraypose.model.load_checkpoint` reads;
* ``OUTPUT.last.pt`` (``model.last.pt``): the full training state — model,
  optimiser, scheduler, step, random state, replay buffer — for ``resume``;
* ``OUTPUT.log.jsonl``: one JSON line of metrics per step;
* ``OUTPUT.crash.pt``: written when the loss becomes NaN/inf (then training stops).

Randomness: every step draws from a generator seeded by (seed, rank, step),
so the data of a step do not depend on the history and resuming is exact.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) training is data-parallel
(DDP; gloo on CPU, NCCL on GPU); ``optim.batch_size`` is per process; rank 0
validates and writes files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from xraypose.augment import AugmentConfig
from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.model import (
    PoseRegressor,
    check_compatible,
    checkpoint_dict,
    check_training_volume,
    read_checkpoint,
    save_checkpoint,
    volume_record,
)

__all__ = [
    "TrainConfig", "ModelConfig", "CameraConfig", "RenderConfig", "SamplerConfig", "AugmentConfig", "LossConfig",
    "OptimConfig", "DataConfig", "RunConfig", "TrainResult", "TrainingDiverged", "WarmupCosine", "train",
    "load_config", "output_paths", "PRESETS",
]


# =========================================================================== configuration
@dataclass
class ModelConfig:
    backbone: str = "resnet18"
    parameterization: str = "se3_log_map"
    convention: str | None = None
    norm: str = "batch"  # batch | group
    pool_grid: int = 1  # 1 = global average pooling; k = k×k cells flattened
    pretrained: bool = False  # timm's pretrained weights need a download: off
    weights: str | None = None  # a local backbone weights file
    pivot: str | float = "isocenter"  # offsets rotate about the isocenter ("isocenter" = sod mm), 0 = DiffPose


@dataclass
class CameraConfig:
    """The training detector (images are rendered at this size)."""

    sdd: float = 1020.0
    height: int = 64
    width: int | None = None  # default: height
    fov_mm: float = 400.0  # detector width in mm (sets delx unless given)
    delx: float | None = None
    dely: float | None = None
    x0: float = 0.0
    y0: float = 0.0
    reverse_x_axis: bool = False


@dataclass
class RenderConfig:
    renderer: str = "trilinear"
    n_samples: int | None = 64
    step: float | None = None
    density: str = "hu"
    backend: str = "auto"


@dataclass
class SamplerConfig:
    distribution: str = "diffpose"  # diffpose | uniform
    sod: float | None = None  # source-to-isocenter distance, default 0.6·sdd
    primary: float = 0.0  # the isocenter view's C-arm angles, degrees
    secondary: float = 0.0
    rot_std: list = field(default_factory=lambda: [0.2, 0.25, 0.1])
    trans_mean: list = field(default_factory=lambda: [10.0, 5.0, 0.0])
    trans_std: list = field(default_factory=lambda: [70.0, 50.0, 90.0])
    rot_range: list = field(default_factory=lambda: [0.35, 0.45, 0.2])
    trans_range: list = field(default_factory=lambda: [100.0, 80.0, 120.0])
    scale: float | None = None  # translation scale; default min(1, smallest CT extent / 350 mm)
    isocenter: list | None = None  # world mm; default the volume's isocenter


@dataclass
class LossConfig:
    mode: str = "geodesic"  # geodesic | full
    geodesic_weight: float = 1e-2
    param_weight: float = 0.0  # + weight × mean squared error of the whitened offset parameters
    ncc_patch: int = 13


@dataclass
class OptimConfig:
    batch_size: int = 32  # per process
    lr: float = 1e-3
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.0
    weight_decay: float = 0.0
    agc_clip: float = 0.1  # adaptive gradient clipping factor; 0 disables
    accumulate: int = 1
    amp: bool = True  # bfloat16 autocast on GPU (ignored on CPU)


@dataclass
class DataConfig:
    reuse: int = 4  # training samples drawn per render (1 = every sample freshly rendered)
    buffer_size: int = 1024  # renders kept for reuse


@dataclass
class RunConfig:
    max_steps: int = 2000
    time_budget_s: float | None = None  # wall-clock budget of the whole run (setup included)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # None: CPU threads tuned while training (ThreadTuner); set it for bit-reproducible runs
    steps_per_epoch: int = 100
    checkpoint_every_s: float = 120.0
    first_checkpoint_s: float = 10.0  # the first checkpoint after this many seconds of steps, then 2×, 4×... up to checkpoint_every_s
    checkpoint_every_steps: int | None = None
    val_size: int = 64
    val_every_steps: int = 200
    capture_mtre_mm: float = 20.0
    progress: bool = True


#: Named starting points; a config's top-level ``preset = "NAME"`` (or ``--preset``) applies one
#: before its own tables.  "diffpose": the defaults (DiffPose's recipe: resnet18, U(1, 10) bone
#: contrast, geodesic losses).  "cpu-fast": what measured best under a 10-minute CPU budget
#: (docs/training.md): a lighter backbone at 48², bone contrast log-uniform in [0.3, 10] (covers the
#: physical-μ look of real X-rays, m ≈ 0.3–0.6 in the "hu" model), whitened-parameter loss.
PRESETS: dict[str, dict] = {
    "diffpose": {},
    "cpu-fast": {
        "model": {"backbone": "resnet10t"},
        "camera": {"height": 48},
        "optim": {"lr": 2e-3},
        "augment": {"bone_multiplier": [0.3, 10.0], "bone_multiplier_log": True},
        "loss": {"mode": "geodesic", "geodesic_weight": 0.0, "param_weight": 1.0},
    },
}

SECTIONS = {
    "model": ModelConfig, "camera": CameraConfig, "render": RenderConfig, "sampler": SamplerConfig,
    "augment": AugmentConfig, "loss": LossConfig, "optim": OptimConfig, "data": DataConfig, "run": RunConfig,
}


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None, base: "TrainConfig | None" = None) -> "TrainConfig":
        """Config from nested tables ``{section: {key: value}}``; unknown names are errors."""
        d = dict(d or {})
        preset = d.pop("preset", None)
        if preset is not None:
            if preset not in PRESETS:
                raise InputError(f"config: unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
            base = cls.from_dict(PRESETS[preset], base)
        cfg = dataclasses.replace(base) if base is not None else cls()
        cfg = cls(**{name: dataclasses.replace(getattr(cfg, name)) for name in SECTIONS})
        for section, values in d.items():
            if section not in SECTIONS:
                raise InputError(f"config: unknown table [{section}]; known: {', '.join(SECTIONS)}")
            if not isinstance(values, dict):
                raise InputError(f"config: [{section}] must be a table of settings")
            sub = getattr(cfg, section)
            names = {f.name for f in dataclasses.fields(sub)}
            for key, value in values.items():
                if key not in names:
                    raise InputError(f"config: unknown setting {section}.{key}; known: {', '.join(sorted(names))}")
                setattr(sub, key, value)
        cfg.validate()
        return cfg

    def validate(self) -> None:  # noqa: C901 - a flat list of checks reads best
        from xraypose.geometry import ROTATION_PARAMETERIZATIONS
        from xraypose.render import BACKENDS, DENSITY_MODELS, RENDERERS

        def bad(name, value, why):
            raise InputError(f"config: {name} = {value!r} {why}")

        def num(name, v, lo=None, hi=None, lo_open=False, integer=False, allow_none=False):
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not float(v).is_integer()):
                bad(name, v, "must be " + ("a whole number" if integer else "a number"))
            if not math.isfinite(float(v)):
                bad(name, v, "must be finite")
            if lo is not None and (v <= lo if lo_open else v < lo):
                bad(name, v, f"must be {'>' if lo_open else '>='} {lo}")
            if hi is not None and v > hi:
                bad(name, v, f"must be <= {hi}")

        def vec(name, v, n=3, lo=None):
            if not isinstance(v, (list, tuple)) or len(v) != n:
                bad(name, v, f"must be a list of {n} numbers")
            for x in v:
                num(name, x, lo=lo)

        def choice(name, v, options):
            if v not in options:
                bad(name, v, f"is not one of: {', '.join(map(str, options))}")

        m, c, r, s, a, lo, o, d, run = (self.model, self.camera, self.render, self.sampler, self.augment, self.loss,
                                        self.optim, self.data, self.run)
        if not isinstance(m.backbone, str) or not m.backbone:
            bad("model.backbone", m.backbone, "must be a timm model name")
        choice("model.parameterization", m.parameterization, list(ROTATION_PARAMETERIZATIONS))
        choice("model.norm", m.norm, ["batch", "group"])
        num("model.pool_grid", m.pool_grid, lo=1, hi=8, integer=True)
        if m.pivot != "isocenter":
            num("model.pivot", m.pivot)
        num("camera.sdd", c.sdd, lo=0, lo_open=True)
        num("camera.height", c.height, lo=8, hi=1024, integer=True)
        num("camera.width", c.width, lo=8, hi=1024, integer=True, allow_none=True)
        num("camera.fov_mm", c.fov_mm, lo=0, lo_open=True)
        num("camera.delx", c.delx, lo=0, lo_open=True, allow_none=True)
        num("camera.dely", c.dely, lo=0, lo_open=True, allow_none=True)
        num("camera.x0", c.x0)
        num("camera.y0", c.y0)
        choice("render.renderer", r.renderer, list(RENDERERS))
        choice("render.backend", r.backend, list(BACKENDS))
        choice("render.density", r.density, list(DENSITY_MODELS))
        num("render.n_samples", r.n_samples, lo=1, hi=4096, integer=True, allow_none=True)
        num("render.step", r.step, lo=0, lo_open=True, allow_none=True)
        if r.n_samples is not None and r.step is not None:
            raise InputError("config: give render.n_samples or render.step, not both")
        choice("sampler.distribution", s.distribution, ["diffpose", "uniform"])
        num("sampler.sod", s.sod, lo=0, lo_open=True, allow_none=True)
        if s.sod is not None and s.sod >= c.sdd:
            bad("sampler.sod", s.sod, f"must be smaller than camera.sdd ({c.sdd})")
        num("sampler.primary", s.primary, lo=-180, hi=180)
        num("sampler.secondary", s.secondary, lo=-89, hi=89)
        for k in ("rot_std", "trans_std", "rot_range", "trans_range"):
            vec(f"sampler.{k}", getattr(s, k), lo=0)
        vec("sampler.trans_mean", s.trans_mean)
        if max(s.rot_std) > 1.5 or max(s.rot_range) > math.pi / 2:
            raise InputError("config: sampler rotations above ~85° leave the CT out of view; reduce rot_std / rot_range")
        num("sampler.scale", s.scale, lo=0, lo_open=True, allow_none=True)
        if s.isocenter is not None:
            vec("sampler.isocenter", s.isocenter)
        vec("augment.bone_multiplier", a.bone_multiplier, n=2, lo=0)
        if not 0 < a.bone_multiplier[0] <= a.bone_multiplier[1]:
            bad("augment.bone_multiplier", a.bone_multiplier, "must be [lo, hi] with 0 < lo <= hi")
        vec("augment.source_rotation_std", a.source_rotation_std, lo=0)
        if max(a.source_rotation_std) > 0.3:
            bad("augment.source_rotation_std", a.source_rotation_std, "must be <= 0.3 rad")
        for k in ("collimator_prob", "gamma_prob", "blur_prob", "noise_prob"):
            num(f"augment.{k}", getattr(a, k), lo=0, hi=1)
        num("augment.collimator_max_frac", a.collimator_max_frac, lo=0, hi=0.4)
        num("augment.gamma_max", a.gamma_max, lo=1, hi=4)
        num("augment.blur_max_sigma_px", a.blur_max_sigma_px, lo=0, hi=10)
        num("augment.noise_max_std", a.noise_max_std, lo=0, hi=1)
        choice("loss.mode", lo.mode, ["geodesic", "full"])
        num("loss.geodesic_weight", lo.geodesic_weight, lo=0)
        num("loss.param_weight", lo.param_weight, lo=0)
        num("loss.ncc_patch", lo.ncc_patch, lo=3, integer=True)
        num("optim.batch_size", o.batch_size, lo=1, hi=4096, integer=True)
        num("optim.lr", o.lr, lo=0, lo_open=True, hi=1.0)
        num("optim.warmup_frac", o.warmup_frac, lo=0, hi=0.9)
        num("optim.min_lr_frac", o.min_lr_frac, lo=0, hi=1)
        num("optim.weight_decay", o.weight_decay, lo=0)
        num("optim.agc_clip", o.agc_clip, lo=0)
        num("optim.accumulate", o.accumulate, lo=1, hi=1024, integer=True)
        num("data.reuse", d.reuse, lo=1, hi=1024, integer=True)
        num("data.buffer_size", d.buffer_size, lo=1, integer=True)
        if d.buffer_size < o.batch_size:
            bad("data.buffer_size", d.buffer_size, f"must hold at least a batch ({o.batch_size})")
        num("run.max_steps", run.max_steps, lo=1, integer=True)
        num("run.time_budget_s", run.time_budget_s, lo=0, lo_open=True, allow_none=True)
        num("run.seed", run.seed, lo=0, integer=True)
        choice("run.device", run.device, ["auto", "cpu", "cuda"])
        num("run.threads", run.threads, lo=1, integer=True, allow_none=True)
        num("run.steps_per_epoch", run.steps_per_epoch, lo=1, integer=True)
        num("run.checkpoint_every_s", run.checkpoint_every_s, lo=0, lo_open=True)
        num("run.first_checkpoint_s", run.first_checkpoint_s, lo=0, lo_open=True)
        num("run.checkpoint_every_steps", run.checkpoint_every_steps, lo=1, integer=True, allow_none=True)
        num("run.val_size", run.val_size, lo=0, integer=True)
        num("run.val_every_steps", run.val_every_steps, lo=1, integer=True)
        num("run.capture_mtre_mm", run.capture_mtre_mm, lo=0, lo_open=True)


def load_config(path, base: TrainConfig | None = None) -> TrainConfig:
    """Read a TOML config (tables mirror :class:`TrainConfig`: [model], [camera], [render], ...;
    an optional top-level ``preset = "NAME"``), on top of ``base`` (default: the defaults)."""
    from xraypose.io import read_toml

    return TrainConfig.from_dict(read_toml(path), base)


def _as_config(config) -> TrainConfig:
    if config is None:
        return TrainConfig()
    if isinstance(config, TrainConfig):
        config.validate()
        return config
    if isinstance(config, dict):
        return TrainConfig.from_dict(config)
    return load_config(config)


# =========================================================================== schedule
class WarmupCosine:
    """Linear warm-up over ``warmup_frac`` of the steps, then cosine decay to ``min_lr_frac``·lr.

    ``total_steps`` may be re-estimated during a time-budgeted run
    (:meth:`set_total`); the state (a few numbers) is checkpointed.
    """

    def __init__(self, optimizer, lr: float, total_steps: int, warmup_frac: float = 0.05, min_lr_frac: float = 0.0):
        self.optimizer, self.lr, self.warmup_frac, self.min_lr_frac = optimizer, float(lr), warmup_frac, min_lr_frac
        self.total_steps = max(1, int(total_steps))

    def set_total(self, total_steps: int) -> None:
        self.total_steps = max(1, int(total_steps))

    def lr_at(self, step: int) -> float:
        warm = max(1, int(round(self.warmup_frac * self.total_steps)))
        if step < warm:
            return self.lr * (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, self.total_steps - warm))
        lo = self.min_lr_frac
        return self.lr * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t)))

    def apply(self, step: int) -> float:
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"lr": self.lr, "total_steps": self.total_steps, "warmup_frac": self.warmup_frac,
                "min_lr_frac": self.min_lr_frac}

    def load_state_dict(self, d: dict) -> None:
        self.lr, self.total_steps = float(d["lr"]), int(d["total_steps"])
        self.warmup_frac, self.min_lr_frac = float(d["warmup_frac"]), float(d["min_lr_frac"])


def adaptive_clip_(parameters, clip: float, eps: float = 1e-3) -> None:
    """Adaptive gradient clipping (Brock et al. 2021): per output unit, ‖g‖ ≤ clip·max(‖w‖, eps)."""
    for p in parameters:
        if p.grad is None:
            continue
        w, g = p.detach(), p.grad.detach()
        dims = tuple(range(1, w.dim())) if w.dim() > 1 else None
        wn = torch.linalg.vector_norm(w, dim=dims, keepdim=True).clamp_min(eps)
        gn = torch.linalg.vector_norm(g, dim=dims, keepdim=True).clamp_min(1e-6)
        limit = clip * wn
        g.mul_(torch.where(gn > limit, limit / gn, torch.ones_like(gn)))


# =========================================================================== helpers
class ThreadTuner:
    """Picks the CPU thread count that gives the fastest steps, and re-checks it.

    On a machine shared with other jobs, two threads can be several times
    *slower* than one (threads wait for each other whenever one of them is
    descheduled); on an idle machine they are faster.  So the tuner times a few
    steps with each candidate count, keeps the fastest, and probes again after
    ``hold_s`` seconds of steps, or at once when the last ``window`` steps got
    ``slack``× slower than the probe measured (the load changed).  (Thread counts
    may change float rounding; give ``run.threads`` for bit-reproducible runs.)
    """

    def __init__(self, candidates, probe: int = 4, hold_s: float = 60.0, window: int = 5, slack: float = 1.6):
        self.candidates = sorted(set(int(c) for c in candidates if c >= 1))
        self.probe, self.hold_s, self.window, self.slack = probe, hold_s, window, slack
        self.best = self.candidates[-1]
        self.best_time = math.inf
        self._start_probe()

    def _start_probe(self):
        self.times: dict[int, list[float]] = {c: [] for c in self.candidates}
        self.queue = [c for c in self.candidates for _ in range(self.probe + 1)]
        self.recent: list[float] = []
        self.held = 0.0

    def next_threads(self) -> int:
        return self.queue[0] if self.queue else self.best

    def record(self, threads: int, seconds: float) -> None:
        if self.queue:
            self.times[self.queue.pop(0)].append(seconds)  # the first of each block is a warm-up
            if not self.queue:
                med = {c: sorted(t[1:])[len(t[1:]) // 2] for c, t in self.times.items() if len(t) > 1}
                self.best = min(med, key=med.get)
                self.best_time = med[self.best]
            return
        self.held += seconds
        self.recent = (self.recent + [seconds])[-self.window:]
        slow = len(self.recent) == self.window and sorted(self.recent)[self.window // 2] > self.slack * self.best_time
        if len(self.candidates) > 1 and (self.held >= self.hold_s or slow):
            self._start_probe()


class TrainingDiverged(InputError):
    """The loss became NaN or infinite (a crash dump was written)."""


@dataclass
class TrainResult:
    model_path: Path
    last_path: Path
    log_path: Path
    steps: int
    images_seen: int
    renders: int
    elapsed_s: float
    images_per_s: float
    best_val: dict | None


def output_paths(output) -> dict:
    """Files written for ``output``: best model, last state, metrics log, crash dump."""
    p = Path(output)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return {"best": p, "last": p.with_name(stem + ".last.pt"), "log": p.with_name(stem + ".log.jsonl"),
            "crash": p.with_name(stem + ".crash.pt")}


def _check_writable(output) -> None:
    p = Path(output)
    if p.exists() and p.is_dir():
        raise InputError(f"output {p} is a folder; give a file name such as {p / 'model.pt'}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise InputError(f"output folder does not exist: {parent}")
    if not parent.is_dir():
        raise InputError(f"output folder {parent} is not a folder")
    from xraypose.io import check_output_file

    check_output_file(p)  # a probe file (named as the package's temporary files) in the folder
    for q in output_paths(p).values():
        if q.exists() and not os.access(q, os.W_OK):
            raise InputError(f"cannot overwrite {q} (not writable)")


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log's rows up to ``step`` (those of a resumed checkpoint); drop later and partial rows."""
    if not path.exists():
        return
    from xraypose.io import atomic_write_bytes

    keep = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a row cut by a kill
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step:
            continue
        if isinstance(row, dict) and row.get("event") == "end":
            continue  # the run goes on
        keep.append(line)
    atomic_write_bytes(path, "".join(x + "\n" for x in keep).encode())


def _mix_seed(*parts: int) -> int:
    h = 0x9E3779B97F4A7C15
    for x in parts:
        h = (h ^ (int(x) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def _step_generator(seed: int, rank: int, step: int, stream: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(_mix_seed(seed, rank, step, stream))


def _camera(cfg: CameraConfig) -> Camera:
    W = cfg.width or cfg.height
    delx = cfg.delx if cfg.delx is not None else cfg.fov_mm / W
    return Camera(sdd=cfg.sdd, height=int(cfg.height), width=int(W), delx=delx, dely=cfg.dely, x0=cfg.x0, y0=cfg.y0,
                  reverse_x_axis=bool(cfg.reverse_x_axis))


def _load_volume(ct):
    from xraypose.limits import check_registrable_ct
    from xraypose.volume import Volume, load_sample_ct, read_volume

    vol = ct if isinstance(ct, Volume) else load_sample_ct() if str(ct) == "sample" else read_volume(ct)
    check_registrable_ct(vol)  # a 1×1×2 CT has no poses to learn
    return vol


def make_sampler(volume, cfg: TrainConfig):
    from xraypose.sampling import PoseSampler

    s = cfg.sampler
    sod = s.sod if s.sod is not None else 0.6 * cfg.camera.sdd
    kw = dict(distribution=s.distribution, rot_std=tuple(s.rot_std), trans_mean=tuple(s.trans_mean),
              trans_std=tuple(s.trans_std), rot_range=tuple(s.rot_range), trans_range=tuple(s.trans_range))
    if s.isocenter is not None:
        vol = _WithIsocenter(volume, s.isocenter)
    else:
        vol = volume
    return PoseSampler.for_volume(vol, sod=sod, primary=s.primary, secondary=s.secondary, scale=s.scale, **kw), sod


class _WithIsocenter:
    def __init__(self, volume, iso):
        self.v, self.iso = volume, torch.as_tensor(iso, dtype=torch.float64)

    def get_isocenter(self):
        return self.iso

    @property
    def extent_mm(self):
        return self.v.extent_mm


def check_geometry(volume, camera: Camera, sampler, sod: float, drr) -> None:
    """Refuse set-ups that cannot train: source inside the CT, a CT that barely fills the view, a flat DRR."""
    from xraypose.render import render
    from xraypose.similarity import check_image

    T0 = sampler.isocenter_pose
    src = T0[:3, 3]
    idx = volume.world_to_voxel(src)
    n = torch.tensor(volume.shape, dtype=torch.float64)
    if bool(((idx >= -0.5) & (idx <= n - 0.5)).all()):
        raise InputError(
            f"the X-ray source ({sod:g} mm from the isocenter) lies inside the CT box "
            f"({' × '.join(f'{x:.0f}' for x in volume.extent_mm.tolist())} mm); increase sampler.sod"
        )
    small = camera.resize(min(32, camera.height), min(32, camera.width))
    # Which rays of the isocenter view cross the CT box: render a box of ones with the CT's affine.
    box_affine = volume.affine.clone()
    box_affine[:3, :3] = volume.affine[:3, :3] * (n / 2).view(1, 3)
    box_affine[:3, 3] = volume.voxel_to_world(n / 4 - 0.5)
    ones = torch.ones(2, 2, 2)
    L = render(ones, box_affine, small, T0.unsqueeze(0), n_samples=8, backend="reference")
    frac = float((L > 1e-6).float().mean())
    if frac < 0.5:
        ext = " × ".join(f"{x:.0f}" for x in volume.extent_mm.tolist())
        fov = camera.detector_size_mm
        raise InputError(
            f"the CT ({ext} mm) is too small for the field of view: it covers {100 * frac:.0f}% of the "
            f"{fov[1]:.0f} × {fov[0]:.0f} mm detector at the isocenter view; use a smaller camera.fov_mm "
            "or a larger CT"
        )
    with torch.no_grad():
        img = drr(T0.float().unsqueeze(0).to(drr.basis.device))
    check_image(img, "the DRR of the isocenter view")


def _render_basis(drr, camera: Camera, poses: torch.Tensor, cfg: RenderConfig) -> torch.Tensor:
    from xraypose.render import render

    with torch.no_grad():
        return render(drr.basis, drr.affine, camera, poses.to(drr.basis.device, torch.float32), renderer=cfg.renderer,
                      n_samples=cfg.n_samples, step=cfg.step, backend=cfg.backend)


class ReplayBuffer:
    """Ring buffer of rendered DRR bases and their poses."""

    def __init__(self, capacity: int, channels: int, H: int, W: int, device):
        self.images = torch.zeros(capacity, channels, H, W, device=device)
        self.poses = torch.zeros(capacity, 4, 4, device=device)
        self.filled, self.pos = 0, 0

    def push(self, images: torch.Tensor, poses: torch.Tensor) -> None:
        n, cap = images.shape[0], self.images.shape[0]
        idx = (self.pos + torch.arange(n)) % cap
        self.images[idx.to(self.images.device)] = images
        self.poses[idx.to(self.poses.device)] = poses.to(self.poses)
        self.pos = int((self.pos + n) % cap)
        self.filled = min(cap, self.filled + n)

    def sample(self, n: int, g: torch.Generator, newest: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` entries: the ``newest`` pushed last, the rest uniformly at random."""
        cap = self.images.shape[0]
        fresh = (self.pos - 1 - torch.arange(min(newest, n, self.filled))) % cap
        rest = torch.randint(self.filled, (n - fresh.numel(),), generator=g)
        if self.filled < cap:
            rest = rest  # slots 0..filled-1 are the filled ones
        idx = torch.cat([fresh, rest]).to(self.images.device)
        return self.images[idx], self.poses[idx]

    def state_dict(self) -> dict:
        return {"images": self.images.cpu(), "poses": self.poses.cpu(), "filled": self.filled, "pos": self.pos}

    def load_state_dict(self, d: dict) -> None:
        if tuple(d["images"].shape) != tuple(self.images.shape):
            raise InputError("the checkpoint's replay buffer does not fit this configuration")
        self.images.copy_(d["images"])
        self.poses.copy_(d["poses"])
        self.filled, self.pos = int(d["filled"]), int(d["pos"])


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def _pose_errors(pred: torch.Tensor, true: torch.Tensor, sod: float) -> dict:
    from xraypose.geometry import geodesic_rotation, geodesic_se3, geodesic_translation

    p, t = pred.double(), true.double()
    rot = geodesic_rotation(p, t)
    trans = geodesic_translation(p, t)
    return {"rot_deg": torch.rad2deg(rot), "trans_mm": trans, "dgeo_mm": torch.sqrt((sod * rot) ** 2 + trans**2),
            "se3": geodesic_se3(p, t)}


# =========================================================================== the training run
def train(ct, output, config=None, *, resume: bool = False, overwrite: bool = False, finetune=None, callback=None,
          quiet: bool = False) -> TrainResult:
    """Train a pose regressor on DRRs of ``ct`` and write ``output`` (best model) and its companions.

    Args:
        ct: a :class:`~xraypose.volume.Volume`, a CT path, or ``"sample"``.
        output: model file to write (e.g. ``model.pt``); see the module docstring for the companions.
        config: a :class:`TrainConfig`, a dict of tables, a TOML path, or None (defaults).
        resume: continue from ``output``'s ``.last.pt`` (model, optimiser, scheduler, step,
            random state, replay buffer); the checkpoint's configuration is used, except the
            ``[run]`` table, which may change (e.g. more steps).  ``run.time_budget_s`` is the
            budget of the whole training, resumes included (the time used is in the checkpoint);
            the log keeps one row per step (rows written after the checkpoint are dropped).
        overwrite: replace an earlier training's files at ``output`` (model, state, log, crash
            dump; removed before training starts).  Without it (or ``resume``), an existing
            ``output`` or companion is an InputError: a trained model is never overwritten silently.
        finetune: start from the weights of another checkpoint (same architecture and
            parameterization); the pose frame and output scaling follow this CT and config.
        callback: called as ``callback(event, info)`` with event "step", "checkpoint" or "validation".
        quiet: no progress bar.
    """
    t_start = time.perf_counter()
    cfg = _as_config(config)
    paths = output_paths(output)
    world, rank, local_rank = _dist_info()
    if rank == 0:
        _check_writable(output)
    if resume and overwrite:
        raise InputError("give --resume (continue the training) or --overwrite (start again), not both")
    existing = [q for q in paths.values() if q.exists()]
    if existing and not resume and not overwrite:
        raise InputError(f"{existing[0]} already exists (an earlier training); give --resume to continue it "
                         "or --overwrite to replace it")
    state = None
    if resume:
        if not paths["last"].exists():
            raise InputError(f"nothing to resume: {paths['last']} does not exist")
        state = read_checkpoint(paths["last"])
        if "optimizer" not in state:
            raise InputError(f"{paths['last']} holds no training state to resume")
        saved = TrainConfig.from_dict(state["config"])
        if config is not None:
            new = cfg.to_dict()
            old = saved.to_dict()
            diffs = [f"{s}.{k}" for s in SECTIONS if s != "run" for k in old[s] if old[s][k] != new[s][k]]
            if diffs:
                raise InputError("cannot resume with a different configuration: " + ", ".join(diffs[:6]) +
                                 " differ from the checkpoint's (only [run] may change)")
            saved.run = cfg.run
        cfg = saved
        if int(state.get("world_size", 1)) != world:
            raise InputError(f"{paths['last']} was written by {state.get('world_size')} processes; "
                             f"resume with the same number (got {world})")
    if finetune is not None and resume:
        raise InputError("give resume or finetune, not both")
    if rank == 0:
        from xraypose.io import remove_stale_temp_files

        remove_stale_temp_files(paths["best"].parent)  # left by a run killed mid-write
    if overwrite and finetune is not None and Path(finetune).resolve() in {q.resolve() for q in existing}:
        raise InputError(f"--finetune reads {finetune}, which --overwrite would replace; write to another file")
    replace = existing if overwrite and rank == 0 else []

    # ----------------------------------------------------------------- devices, processes
    want = cfg.run.device
    if want == "cuda" and not torch.cuda.is_available():
        raise InputError("config: run.device = 'cuda' but no CUDA GPU is available")
    use_cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    threads_before = torch.get_num_threads()
    if cfg.run.threads is not None:
        torch.set_num_threads(int(cfg.run.threads))
    elif world > 1 and not use_cuda:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    ddp = world > 1
    if ddp and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        return _train(cfg, paths, state, finetune, callback, quiet or rank != 0, device, world, rank, ct, t_start,
                      replace)
    finally:
        torch.set_num_threads(threads_before)
        if ddp and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg, paths, state, finetune, callback, quiet, device, world, rank, ct, t_start, replace=()):  # noqa: C901
    from torch.nn.parallel import DistributedDataParallel

    from xraypose.augment import Augmenter, minmax_valid
    from xraypose.geometry import double_geodesic, geodesic_se3
    from xraypose.render import DRR
    from xraypose.similarity import MultiscaleNCC

    ddp = world > 1
    seed = int(cfg.run.seed)
    torch.manual_seed(seed)
    volume = _load_volume(ct)
    camera = _camera(cfg.camera)
    sampler, sod = make_sampler(volume, cfg)
    drr = DRR(volume, camera, density=cfg.render.density, renderer=cfg.render.renderer,
              n_samples=cfg.render.n_samples, step=cfg.render.step, backend=cfg.render.backend).to(device)
    check_geometry(volume, camera, sampler, sod, drr)
    H, W = camera.height, camera.width

    # ----------------------------------------------------------------- model
    pivot = sod if cfg.model.pivot == "isocenter" else float(cfg.model.pivot)
    model = PoseRegressor(cfg.model.backbone, cfg.model.parameterization, cfg.model.convention, cfg.model.norm,
                          cfg.model.pool_grid, cfg.model.pretrained, cfg.model.weights,
                          isocenter_pose=sampler.isocenter_pose, pivot_mm=pivot)
    model.fit_output_scaling(sampler.sample(4096, torch.Generator().manual_seed(_mix_seed(seed, 99)),
                                            dtype=torch.float64))
    if finetune is not None:
        src = read_checkpoint(finetune)
        check_compatible(model.architecture(), src["meta"].get("architecture", {}), f"checkpoint {finetune}")
        pose_frame = {"isocenter_pose", "pivot", "rotation_mean", "rotation_std", "translation_mean",
                      "translation_std"}
        weights = {k: v for k, v in src["model"].items() if k not in pose_frame}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or set(missing) - pose_frame:
            raise InputError(f"checkpoint {finetune} does not fit the model ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected tensors)")
    if state is not None:
        check_compatible(model.architecture(), state["meta"]["architecture"], f"checkpoint {paths['last']}")
        check_training_volume(state["meta"], volume, what=f"the training state {paths['last']}")
        model.load_state_dict(state["model"])
    model.to(device)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if ddp \
        else model
    try:  # the fused kernel (one pass over all parameters) is much faster on CPU than the per-tensor loop
        opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    sched = WarmupCosine(opt, cfg.optim.lr, cfg.run.max_steps, cfg.optim.warmup_frac, cfg.optim.min_lr_frac)
    heads = {id(p) for p in list(model.rotation_head.parameters()) + list(model.translation_head.parameters())}
    agc_params = [p for p in model.parameters() if id(p) not in heads]  # AGC skips the output layers (Brock et al.)
    amp = device.type == "cuda" and cfg.optim.amp

    # ----------------------------------------------------------------- validation set and image statistics
    gval = torch.Generator().manual_seed(_mix_seed(seed, 12345))
    n_stats = max(cfg.run.val_size, 16)
    val_poses = sampler.sample(n_stats, gval, dtype=torch.float32)
    from xraypose.augment import combine_basis, draw_multipliers

    val_m = draw_multipliers(n_stats, cfg.augment.bone_multiplier, cfg.augment.bone_multiplier_log, gval)

    val_basis = torch.cat([_render_basis(drr, camera, val_poses[i:i + 32], cfg.render)
                           for i in range(0, n_stats, 32)])
    val_img01 = minmax_valid(combine_basis(val_basis, val_m.to(val_basis.device)), None)
    if state is not None:
        mean, std = state["meta"]["normalization"]["mean"], state["meta"]["normalization"]["std"]
    else:
        mean, std = float(val_img01.mean()), float(val_img01.std().clamp_min(1e-3))
    val_x = (val_img01 - mean) / std
    val_poses, val_x = val_poses[: cfg.run.val_size], val_x[: cfg.run.val_size]
    fiducials = None
    if rank == 0 and cfg.run.val_size > 0:
        try:
            from xraypose.fiducials import pick_bone_fiducials

            fiducials = pick_bone_fiducials(volume, n=20, seed=seed)
        except InputError:
            fiducials = None  # no bone: validate by the double geodesic alone

    augmenter = Augmenter(cfg.augment, camera, mean, std)

    meta = {
        "camera": camera.to_dict(), "image_size": [H, W],
        "isocenter_pose": sampler.isocenter_pose.tolist(), "isocenter": sampler.isocenter.tolist(),
        "sod_mm": float(sod), "pivot_mm": float(pivot),
        "normalization": {"mean": float(mean), "std": float(std), "fill": 0.0,
                          "rule": "min-max over valid pixels, invalid = fill, then (x - mean) / std"},
        "density": cfg.render.density, "renderer": cfg.render.renderer, "n_samples": cfg.render.n_samples,
        "volume": volume_record(volume),
        "sampler": {"distribution": sampler.distribution, "rot_std": list(sampler.rot_std),
                    "trans_mean": list(sampler.trans_mean), "trans_std": list(sampler.trans_std),
                    "rot_range": list(sampler.rot_range), "trans_range": list(sampler.trans_range)},
    }

    # ----------------------------------------------------------------- buffer, loss
    B = int(cfg.optim.batch_size)
    fresh_n = max(1, math.ceil(B / cfg.data.reuse))
    channels = int(drr.basis.shape[0])
    cap = max(int(cfg.data.buffer_size), B)
    buffer = ReplayBuffer(cap, channels, H, W, device)
    similarity = MultiscaleNCC(patch_sizes=(None, int(cfg.loss.ncc_patch)), weights=(0.5, 0.5))
    w_geo = float(cfg.loss.geodesic_weight)
    w_par = float(cfg.loss.param_weight)

    step, images_seen, renders, elapsed_before = 0, 0, 0, 0.0
    best = {"score": math.inf, "step": -1}
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, images_seen, renders = int(state["step"]), int(state["images_seen"]), int(state["renders"])
        elapsed_before = float(state.get("elapsed_s", 0.0))
        best = dict(state.get("best", best))
        bufs = state["buffer"]
        buffer.load_state_dict({k: v[rank] for k, v in bufs.items()})
        torch.set_rng_state(state["rng"]["torch"][rank])
        if cfg.run.time_budget_s is None:
            sched.set_total(cfg.run.max_steps)
    else:
        sched.set_total(cfg.run.max_steps)

    # ----------------------------------------------------------------- files and logging
    for q in replace:  # --overwrite: the earlier training's files go once this one is set up
        q.unlink(missing_ok=True)
    if rank == 0 and state is not None:
        _truncate_log(paths["log"], step)  # steps logged after the checkpoint are done again
    log = open(paths["log"], "a" if state is not None else "w") if rank == 0 else None
    if log is not None and state is not None:
        log.write(json.dumps({"event": "resume", "step": step, "elapsed_s": round(elapsed_before, 3)}) + "\n")

    def gather_state() -> dict:
        bstate = buffer.state_dict()
        rng = torch.get_rng_state()
        if ddp:
            imgs = [torch.zeros_like(bstate["images"]) for _ in range(world)]
            poses = [torch.zeros_like(bstate["poses"]) for _ in range(world)]
            rngs = [torch.zeros_like(rng) for _ in range(world)]
            meta_t = torch.tensor([bstate["filled"], bstate["pos"]])
            metas = [torch.zeros_like(meta_t) for _ in range(world)]
            for src_t, dst in ((bstate["images"], imgs), (bstate["poses"], poses), (rng, rngs), (meta_t, metas)):
                dist.all_gather(dst, src_t.to(device) if device.type == "cuda" else src_t)
            return {"images": torch.stack([x.cpu() for x in imgs]), "poses": torch.stack([x.cpu() for x in poses]),
                    "filled": [int(x[0]) for x in metas], "pos": [int(x[1]) for x in metas]}, \
                [x.cpu() for x in rngs]
        return {"images": bstate["images"][None], "poses": bstate["poses"][None], "filled": [bstate["filled"]],
                "pos": [bstate["pos"]]}, [rng]

    def training_meta(extra=None) -> dict:
        mm = dict(meta)
        mm["training"] = {"step": step, "images_seen": images_seen, "renders": renders, "world_size": world,
                          "elapsed_s": elapsed_before + time.perf_counter() - t_start,
                          "config": cfg.to_dict(), **(extra or {})}
        return mm

    def write_last():
        bufstate, rngs = gather_state()  # collective: every rank calls it
        if rank != 0:
            return
        ck = checkpoint_dict(model, training_meta(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                             step=step, images_seen=images_seen, renders=renders, best=best,
                             rng={"torch": rngs, "seed": seed}, buffer=bufstate, config=cfg.to_dict(),
                             world_size=world, elapsed_s=elapsed_before + time.perf_counter() - t_start)
        save_checkpoint(paths["last"], ck)
        if callback:
            callback("checkpoint", {"step": step, "path": paths["last"]})

    def validate() -> dict | None:
        if rank != 0 or cfg.run.val_size == 0:
            return None
        model.eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            pred = torch.cat([model(val_x[i:i + 64].to(device)) for i in range(0, val_x.shape[0], 64)])
        model.train()
        e = _pose_errors(pred.cpu(), val_poses, sod)
        res = {"val_median_rot_deg": float(e["rot_deg"].median()), "val_median_trans_mm": float(e["trans_mm"].median()),
               "val_mean_dgeo_mm": float(e["dgeo_mm"].mean())}
        if fiducials is not None:
            from xraypose.metrics import target_registration_error

            mtre = target_registration_error(pred.cpu().double(), val_poses.double(), fiducials)
            res.update(val_median_mtre_mm=float(mtre.median()), val_mean_mtre_mm=float(mtre.mean()),
                       val_frac_in_capture=float((mtre < cfg.run.capture_mtre_mm).float().mean()))
            res["score"] = res["val_mean_mtre_mm"]
        else:
            res["score"] = res["val_mean_dgeo_mm"]
        return res

    def write_best(res):
        if rank != 0:
            return
        extra = {"validation": {k: v for k, v in res.items()}} if res else {}
        save_checkpoint(paths["best"], checkpoint_dict(model, training_meta(extra), step=step))

    # ----------------------------------------------------------------- the loop
    budget = cfg.run.time_budget_s
    total = cfg.run.max_steps
    step_times: list[float] = []
    val_cost = 0.0
    last_ckpt_t = time.perf_counter()
    # Time-based checkpoints: the first soon (a kill loses little), then at doubling intervals up to every_s.
    ckpt_interval = min(float(cfg.run.first_checkpoint_s), float(cfg.run.checkpoint_every_s))
    accumulate = int(cfg.optim.accumulate)
    pbar = None
    ema = {}
    t_loop = time.perf_counter()
    seen_at_loop, step_at_loop = images_seen, step
    model.train()
    # The budget is that of the whole training: a resumed run has what its earlier sessions left
    # (none: no step; the 3 s are the loop's reserve for the final validation and checkpoints).
    stop = state is not None and budget is not None and elapsed_before + time.perf_counter() - t_start + 3.0 >= budget
    tuner = None
    if cfg.run.threads is None and device.type == "cpu" and not ddp and torch.get_num_threads() > 1:
        tuner = ThreadTuner([1, torch.get_num_threads()])
    while step < total and not stop:
        if tuner is not None:
            n_threads = tuner.next_threads()
            torch.set_num_threads(n_threads)
        epoch = step // cfg.run.steps_per_epoch
        if pbar is None and not quiet and cfg.run.progress:
            from xraypose.progress import progress

            n_ep = min(cfg.run.steps_per_epoch - step % cfg.run.steps_per_epoch, total - step)
            # a bar per epoch on a terminal; in a log, a line every few seconds (none at each epoch's end)
            pbar = progress(total=n_ep, desc=f"epoch {epoch}", unit="steps", leave=sys.stderr.isatty(),
                            file=sys.stderr, dynamic_ncols=True)
        t_step = time.perf_counter()
        lr = sched.apply(step)
        opt.zero_grad(set_to_none=True)
        parts_sum = {}
        for micro in range(accumulate):
            g = _step_generator(seed, rank, step, micro)
            poses_new = sampler.sample(fresh_n, g, dtype=torch.float32)
            buffer.push(_render_basis(drr, camera, poses_new, cfg.render), poses_new.to(device))
            renders += fresh_n
            basis, poses = buffer.sample(B, g, newest=fresh_n)
            x, clean, valid, poses, m = augmenter(basis, poses, g)
            poses = poses.to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                pred, p_rot, p_trans = net(x, return_params=True)
            pred = pred.float()
            geo = geodesic_se3(pred, poses)
            dg = double_geodesic(pred, poses, sod)
            loss = w_geo * (geo + dg)
            if w_par > 0:
                with torch.no_grad():
                    t_rot, t_trans = model.pose_to_params(poses.double())
                    target = model.whiten(t_rot.float(), t_trans.float())
                loss = loss + w_par * (model.whiten(p_rot.float(), p_trans.float()) - target).pow(2).mean(-1)
            ncc_v = None
            if cfg.loss.mode == "full":
                img_pred = drr(pred, bone_attenuation_multiplier=m.to(device))
                vm = valid.to(img_pred.dtype)
                ncc_v = similarity(img_pred * vm, clean * vm)
                loss = loss + (1 - ncc_v)
            loss = loss.mean()
            (loss / accumulate).backward()
            with torch.no_grad():
                e = _pose_errors(pred.detach().cpu(), poses.detach().cpu(), sod)
                parts = {"loss": float(loss), "rot_deg": float(e["rot_deg"].mean()),
                         "trans_mm": float(e["trans_mm"].mean()), "dgeo_mm": float(e["dgeo_mm"].mean()),
                         "se3": float(e["se3"].mean())}
                if ncc_v is not None:
                    parts["ncc"] = float(ncc_v.mean())
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v / accumulate
        finite = torch.tensor([1.0 if math.isfinite(parts_sum["loss"]) else 0.0], device=device)
        if ddp:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if float(finite) < 1:
            dump = paths["crash"]
            if rank == 0:
                save_checkpoint(dump, checkpoint_dict(model, training_meta(), optimizer=opt.state_dict(), step=step,
                                                      poses=poses.detach().cpu(), pred=pred.detach().cpu(),
                                                      images=x.detach().cpu(), loss_parts=parts_sum,
                                                      config=cfg.to_dict()))
            if log is not None:
                log.write(json.dumps({"event": "diverged", "step": step, **_jsonable(parts_sum)}) + "\n")
                log.close()
            raise TrainingDiverged(
                f"training diverged at step {step}: the loss is {parts_sum['loss']} (crash dump: {dump}); "
                "try a lower optim.lr or a smaller optim.agc_clip"
            )
        if cfg.optim.agc_clip > 0:
            adaptive_clip_(agc_params, cfg.optim.agc_clip)
        opt.step()
        step += 1
        images_seen += B * accumulate * world
        dt = time.perf_counter() - t_step
        step_times.append(dt)
        if tuner is not None:
            tuner.record(n_threads, dt)
        for k, v in parts_sum.items():
            ema[k] = v if k not in ema else 0.9 * ema[k] + 0.1 * v

        # --------------------------------------------------------- validation, checkpoints, budget
        val = None
        now = time.perf_counter()
        if cfg.run.val_size and (step % cfg.run.val_every_steps == 0):
            tv = time.perf_counter()
            val = validate()
            if val is not None and val["score"] < best["score"]:
                best = {"score": val["score"], "step": step}
                write_best(val)
            val_cost = time.perf_counter() - tv
            if callback and val is not None:
                callback("validation", {"step": step, **val})
        due = (cfg.run.checkpoint_every_steps is not None and step % cfg.run.checkpoint_every_steps == 0) or \
            (cfg.run.checkpoint_every_steps is None and now - last_ckpt_t > ckpt_interval)
        if ddp:
            flag = torch.tensor([1.0 if due else 0.0], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            due = bool(flag > 0)
        if due:
            write_last()
            last_ckpt_t = time.perf_counter()
            ckpt_interval = min(2 * ckpt_interval, float(cfg.run.checkpoint_every_s))
        if budget is not None:
            elapsed = elapsed_before + time.perf_counter() - t_start
            recent = step_times[-20:]
            per_step = sorted(recent)[len(recent) // 2] * 1.05 + val_cost / cfg.run.val_every_steps
            reserve = 2 * val_cost + 3.0  # final validation and checkpoints
            remaining = budget - elapsed - reserve
            est = torch.tensor([float(step + max(0, int(remaining / max(per_step, 1e-6)))),
                                1.0 if remaining < per_step else 0.0], device=device)
            if ddp:
                dist.broadcast(est, 0)
            if step in (5, 10, 20) or step % 50 == 0:
                total = max(step + 1, min(cfg.run.max_steps, int(est[0])))
                sched.set_total(total)
            if float(est[1]) > 0:
                stop = True
        rec = {"step": step, "epoch": epoch, "lr": lr, **{k: round(v, 6) for k, v in parts_sum.items()},
               "images_seen": images_seen, "renders": renders, "step_s": round(dt, 4),
               "threads": torch.get_num_threads(),
               "elapsed_s": round(elapsed_before + time.perf_counter() - t_start, 3)}
        if val is not None:
            rec.update({k: v for k, v in val.items() if k != "score"})
        if log is not None:
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if callback:
            callback("step", rec)
        if pbar is not None:
            pbar.update(1)
            post = {"rot°": f"{ema['rot_deg']:.2f}", "trans": f"{ema['trans_mm']:.1f}",
                    "dgeo": f"{ema['dgeo_mm']:.1f}", "se3": f"{ema['se3']:.1f}", "loss": f"{ema['loss']:.3f}"}
            if "ncc" in ema:
                post["ncc"] = f"{ema['ncc']:.3f}"
            pbar.set_postfix(post, refresh=False)
            if step % cfg.run.steps_per_epoch == 0 or step >= total or stop:
                pbar.close()
                pbar = None
    if pbar is not None:
        pbar.close()

    # ----------------------------------------------------------------- the end
    loop_s = time.perf_counter() - t_loop
    final_val = validate()
    if final_val is not None and final_val["score"] < best["score"]:
        best = {"score": final_val["score"], "step": step}
        write_best(final_val)
    if cfg.run.val_size == 0 or not paths["best"].exists():
        write_best(final_val)
    write_last()
    elapsed = elapsed_before + time.perf_counter() - t_start
    ips = (images_seen - seen_at_loop) / loop_s if step > step_at_loop else 0.0
    if log is not None:
        log.write(json.dumps({"event": "end", "step": step, "images_seen": images_seen, "renders": renders,
                              "elapsed_s": round(elapsed, 3), "images_per_s": round(ips, 3),
                              "final_validation": final_val, "best": best}) + "\n")
        log.close()
    return TrainResult(model_path=paths["best"], last_path=paths["last"], log_path=paths["log"], steps=step,
                       images_seen=images_seen, renders=renders, elapsed_s=elapsed, images_per_s=ips,
                       best_val={"step": best["step"], **(final_val or {})} if final_val else None)


def _jsonable(d: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str)) and (not isinstance(v, float) or math.isfinite(v)) else str(v))
            for k, v in d.items()}
