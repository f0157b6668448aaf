"""The training configuration: nine sections (the TOML tables), each checking its own fields.

:class:`TrainConfig` holds one of each section (``[model]``, ``[camera]``, ``[render]``, ``[sampler]``,
``[augment]``, ``[loss]``, ``[optim]``, ``[data]``, ``[run]``).  A section checks its fields when it is
made and again in :meth:`TrainConfig.validate` (settings may be assigned after construction, as
:meth:`TrainConfig.from_dict` does); :meth:`TrainConfig.validate` adds the rules that tie two sections
together (``sampler.sod < camera.sdd``, ``data.buffer_size >= optim.batch_size``).  A bad value is an
:class:`~xraypose.errors.InputError` naming the setting: ``config: optim.lr = -1.0 must be > 0``.
Distances are mm, angles of the sampler radians (``primary``/``secondary`` degrees), times seconds.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from xraypose._checks import check_choice, check_flag, check_number, check_vector, config_error
from xraypose.augment import AugmentConfig
from xraypose.camera import DEFAULT_SDD_MM
from xraypose.errors import InputError
from xraypose.geometry import ROTATION_PARAMETERIZATIONS
from xraypose.names import EULER_CONVENTIONS, is_euler_convention

__all__ = [
    "TrainConfig", "training_differences", "ModelConfig", "CameraConfig", "RenderConfig", "SamplerConfig", "AugmentConfig", "LossConfig",
    "OptimConfig", "DataConfig", "RunConfig", "PRESETS", "SECTIONS", "load_config",
]


class _Section:
    """A config section: :meth:`check` runs when it is made (``__post_init__``)."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:  # pragma: no cover - every section overrides it
        raise NotImplementedError


@dataclass
class ModelConfig(_Section):
    backbone: str = "resnet18"
    parameterization: str = "se3_log_map"
    convention: str | None = None
    norm: str = "batch"  # batch | group
    pool_grid: int = 1  # 1 = global average pooling; k = k×k cells flattened
    pretrained: bool = False  # timm's pretrained weights need a download: off
    weights: str | None = None  # a local backbone weights file
    pivot: str | float = "isocenter"  # offsets rotate about the isocenter ("isocenter" = sod mm), 0 = DiffPose

    def check(self) -> None:
        if not isinstance(self.backbone, str) or not self.backbone:
            config_error("model.backbone", self.backbone, "must be a timm model name")
        check_choice("model.parameterization", self.parameterization, list(ROTATION_PARAMETERIZATIONS))
        if self.convention is not None and not is_euler_convention(self.convention):  # (it failed once training began)
            config_error("model.convention", self.convention, f"is not one of: {', '.join(EULER_CONVENTIONS)} "
                         "(the Euler axis sequence of parameterization 'euler_angles'; lowercase = extrinsic)")
        if self.convention is not None and self.parameterization != "euler_angles":  # (it was ignored unsaid)
            config_error("model.convention", self.convention, "is the axis sequence of Euler angles, but "
                         f"model.parameterization = {self.parameterization!r} (it would be ignored): remove "
                         "model.convention, or set model.parameterization = 'euler_angles'")
        check_choice("model.norm", self.norm, ["batch", "group"])
        check_number("model.pool_grid", self.pool_grid, lo=1, hi=8, integer=True)
        check_flag("model.pretrained", self.pretrained)  # a text "no" would be true: a download attempted
        if self.weights is not None and (not isinstance(self.weights, str) or not self.weights):  # 5: a TypeError
            config_error("model.weights", self.weights, "must be the path of a local backbone weights file")
        if self.pivot != "isocenter":
            check_number("model.pivot", self.pivot)


@dataclass
class CameraConfig(_Section):
    """The training detector (images are rendered at this size)."""

    sdd: float = DEFAULT_SDD_MM
    height: int = 64
    width: int | None = None  # default: height
    fov_mm: float = 400.0  # detector width in mm (sets delx unless given)
    delx: float | None = None
    dely: float | None = None
    x0: float = 0.0
    y0: float = 0.0
    reverse_x_axis: bool = False

    def check(self) -> None:
        from xraypose.schema import OFFSET_MM, PIXEL_MM, SDD_MM

        # the ranges of --sdd, --delx, --x0 and a sidecar's (a value beyond them is a unit error; unbounded, an
        # sdd of 1e300 was refused later as "the CT is too small for the field of view")
        check_number("camera.sdd", self.sdd, lo=0, lo_open=True, hi=int(SDD_MM.hi))
        check_number("camera.height", self.height, lo=8, hi=1024, integer=True)
        check_number("camera.width", self.width, lo=8, hi=1024, integer=True, allow_none=True)
        # the pixel spacing's least value too (1e-300 was refused only as "the DRR of the isocenter view is
        # constant"); a field of view that sets delx (no delx given) must give pixels of at least that
        columns = self.width or self.height
        fov_lo = PIXEL_MM.lo * columns if self.delx is None else 0
        check_number("camera.fov_mm", self.fov_mm, lo=round(fov_lo, 9), lo_open=not fov_lo, hi=int(SDD_MM.hi))
        check_number("camera.delx", self.delx, lo=PIXEL_MM.lo, hi=int(PIXEL_MM.hi), allow_none=True)
        check_number("camera.dely", self.dely, lo=PIXEL_MM.lo, hi=int(PIXEL_MM.hi), allow_none=True)
        check_number("camera.x0", self.x0, lo=int(OFFSET_MM.lo), hi=int(OFFSET_MM.hi))
        check_number("camera.y0", self.y0, lo=int(OFFSET_MM.lo), hi=int(OFFSET_MM.hi))
        check_flag("camera.reverse_x_axis", self.reverse_x_axis)


@dataclass
class RenderConfig(_Section):
    renderer: str = "trilinear"
    n_samples: int | None = 64
    step: float | None = None
    density: str = "hu"
    backend: str = "auto"

    def check(self) -> None:
        from xraypose.render import BACKENDS, DENSITY_MODELS, RENDERERS

        check_choice("render.renderer", self.renderer, list(RENDERERS))
        check_choice("render.backend", self.backend, list(BACKENDS))
        check_choice("render.density", self.density, list(DENSITY_MODELS))
        check_number("render.n_samples", self.n_samples, lo=1, hi=4096, integer=True, allow_none=True)
        check_number("render.step", self.step, lo=0, lo_open=True, allow_none=True)
        if self.n_samples is not None and self.step is not None:
            raise InputError("config: give render.n_samples or render.step, not both")


@dataclass
class SamplerConfig(_Section):
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

    def check(self) -> None:
        check_choice("sampler.distribution", self.distribution, ["diffpose", "uniform"])
        check_number("sampler.sod", self.sod, lo=0, lo_open=True, allow_none=True)
        check_number("sampler.primary", self.primary, lo=-180, hi=180)
        check_number("sampler.secondary", self.secondary, lo=-89, hi=89)
        for k in ("rot_std", "trans_std", "rot_range", "trans_range"):
            check_vector(f"sampler.{k}", getattr(self, k), lo=0)
        check_vector("sampler.trans_mean", self.trans_mean)
        if max(self.rot_std) > 1.5 or max(self.rot_range) > math.pi / 2:
            raise InputError("config: sampler rotations above ~85° leave the CT out of view; reduce rot_std / rot_range")
        check_number("sampler.scale", self.scale, lo=0, lo_open=True, allow_none=True)
        if self.isocenter is not None:
            check_vector("sampler.isocenter", self.isocenter)


@dataclass
class LossConfig(_Section):
    mode: str = "geodesic"  # geodesic | full
    geodesic_weight: float = 1e-2
    param_weight: float = 0.0  # + weight × mean squared error of the whitened offset parameters
    ncc_patch: int = 13

    def check(self) -> None:
        check_choice("loss.mode", self.mode, ["geodesic", "full"])
        check_number("loss.geodesic_weight", self.geodesic_weight, lo=0)
        check_number("loss.param_weight", self.param_weight, lo=0)
        check_number("loss.ncc_patch", self.ncc_patch, lo=3, integer=True)


@dataclass
class OptimConfig(_Section):
    batch_size: int = 32  # per process
    lr: float = 1e-3
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.0
    weight_decay: float = 0.0
    agc_clip: float = 0.1  # adaptive gradient clipping factor; 0 disables
    accumulate: int = 1
    amp: bool = True  # bfloat16 autocast on GPU (ignored on CPU)

    def check(self) -> None:
        check_number("optim.batch_size", self.batch_size, lo=1, hi=4096, integer=True)
        check_number("optim.lr", self.lr, lo=0, lo_open=True, hi=1.0)
        check_number("optim.warmup_frac", self.warmup_frac, lo=0, hi=0.9)
        check_number("optim.min_lr_frac", self.min_lr_frac, lo=0, hi=1)
        check_number("optim.weight_decay", self.weight_decay, lo=0)
        check_number("optim.agc_clip", self.agc_clip, lo=0)
        check_number("optim.accumulate", self.accumulate, lo=1, hi=1024, integer=True)
        check_flag("optim.amp", self.amp)


@dataclass
class DataConfig(_Section):
    reuse: int = 4  # training samples drawn per render (1 = every sample freshly rendered)
    buffer_size: int = 1024  # renders kept for reuse

    def check(self) -> None:
        check_number("data.reuse", self.reuse, lo=1, hi=1024, integer=True)
        check_number("data.buffer_size", self.buffer_size, lo=1, integer=True)


@dataclass
class RunConfig(_Section):
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

    def check(self) -> None:
        check_number("run.max_steps", self.max_steps, lo=1, integer=True)
        check_number("run.time_budget_s", self.time_budget_s, lo=0, lo_open=True, allow_none=True)
        check_number("run.seed", self.seed, lo=0, integer=True)
        check_choice("run.device", self.device, ["auto", "cpu", "cuda"])
        check_number("run.threads", self.threads, lo=1, integer=True, allow_none=True)
        check_number("run.steps_per_epoch", self.steps_per_epoch, lo=1, integer=True)
        check_number("run.checkpoint_every_s", self.checkpoint_every_s, lo=0, lo_open=True)
        check_number("run.first_checkpoint_s", self.first_checkpoint_s, lo=0, lo_open=True)
        check_number("run.checkpoint_every_steps", self.checkpoint_every_steps, lo=1, integer=True, allow_none=True)
        check_number("run.val_size", self.val_size, lo=0, integer=True)
        check_number("run.val_every_steps", self.val_every_steps, lo=1, integer=True)
        check_number("run.capture_mtre_mm", self.capture_mtre_mm, lo=0, lo_open=True)
        check_flag("run.progress", self.progress)


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

#: Table name → section class, in the order the tables are checked.
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
            if not isinstance(preset, str) or preset not in PRESETS:  # a list: "unhashable type" escaped
                raise InputError(f"config: unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
            base = cls.from_dict(PRESETS[preset], base)
        cfg = dataclasses.replace(base) if base is not None else cls()
        cfg = cls(**{name: dataclasses.replace(getattr(cfg, name)) for name in SECTIONS})
        for section, values in d.items():
            if section not in SECTIONS:
                home = [t for t, c in SECTIONS.items() if section in {f.name for f in dataclasses.fields(c)}]
                if home and not isinstance(values, dict):  # "max_steps = 10" above the tables: "unknown table"
                    raise InputError(f"config: {section} is a setting of the table [{home[0]}]; put it under "
                                     f"[{home[0]}]")
                raise InputError(f"config: unknown table [{section}]; known: {', '.join(SECTIONS)}")
            if not isinstance(values, dict):
                raise InputError(f"config: [{section}] must be a table of settings")
            sub = getattr(cfg, section)
            names = {f.name for f in dataclasses.fields(sub)}
            for key, value in values.items():
                if key not in names:
                    raise InputError(f"config: unknown setting {section}.{key}; known: {', '.join(sorted(names))}")
                setattr(sub, key, value)
            if section == "render" and "step" in values and "n_samples" not in values:
                sub.n_samples = None  # TOML has no null: a step replaces the default 64 samples ("not both" was said)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check every section (in the order of :data:`SECTIONS`), then the rules between sections."""
        for name in SECTIONS:
            getattr(self, name).check()
        s, c, d, o = self.sampler, self.camera, self.data, self.optim
        if s.sod is not None and s.sod >= c.sdd:
            config_error("sampler.sod", s.sod, f"must be smaller than camera.sdd ({c.sdd})")
        if d.buffer_size < o.batch_size:
            config_error("data.buffer_size", d.buffer_size, f"must hold at least a batch ({o.batch_size})")


def training_differences(old: dict, new: dict) -> list[str]:
    """The settings (``"section.key"``) in which two configurations (:meth:`TrainConfig.to_dict`'s dicts, ``old``
    perhaps read back from a checkpoint) differ outside ``[run]``: whether they are one training (a resume may
    change only how it runs)."""
    return [f"{s}.{k}" for s in SECTIONS if s != "run" for k in dict.fromkeys([*(old.get(s) or {}),
                                                                            *(new.get(s) or {})])
            if (old.get(s) or {}).get(k) != (new.get(s) or {}).get(k)]


def load_config(path, base: TrainConfig | None = None) -> TrainConfig:
    """Read a TOML config (tables mirror :class:`TrainConfig`: [model], [camera], [render], ...;
    an optional top-level ``preset = "NAME"``), on top of ``base`` (default: the defaults)."""
    from xraypose.io import read_toml

    return TrainConfig.from_dict(read_toml(path), base)


def as_config(config) -> TrainConfig:
    """A checked :class:`TrainConfig` from a TrainConfig, a dict of tables, a TOML path, or None (defaults)."""
    if config is None:
        return TrainConfig()
    if isinstance(config, TrainConfig):
        config.validate()
        return config
    if isinstance(config, dict):
        return TrainConfig.from_dict(config)
    return load_config(config)
