"""What the commands share: option ranges checked when the line is parsed, the options several
commands take (one definition, one help text), and the parsers of option values.

**Ranges.** Every numeric option of every command (``render``, ``register``, ``train``,
``evaluate``, ``demo``, ``info``, ``track``, ``datasets …``) has its range in :data:`NUMERIC`;
options holding comma-separated numbers (``--pose``, ``--angles``, ``--isocenter``,
``--perturb``, ``--levels``, ``--specimens``, ``--subjects``) have theirs in :data:`LISTS`.  The ranges are the
quantities of :mod:`xraypose.schema`, the same a sidecar or ``case.json``
value must satisfy.  :class:`CheckedCommand` (the class of every command,
set in :mod:`xraypose.cli`) checks the parsed values, from the command line
or a ``--config`` file alike, before the command runs: NaN, infinity and
out-of-range values are refused naming the option::

    xraypose: error: --blur must be a number in [0, 100] pixels, got nan
    xraypose: error: --threads must be a whole number in [1, 1024], got -1 (from the config file reg.toml)

A test checks that every numeric option of every command has an entry here.

**Shared options.** The options that several commands take are defined here once, most of them in
groups (:class:`Group`, :func:`with_groups`): a function whose parameters are the options and which
gives what they mean to the library: :func:`registration_options` (``register``, ``evaluate``; the
defaults are :class:`~xraypose.register.RegistrationConfig`'s), :func:`start_options`,
:func:`intrinsics_options`, :func:`preprocessing_options` and :func:`structure_options` (``register``,
``track``); and the CT argument, :data:`SEED`, :data:`THREADS`, :data:`MODEL`, ….

**Parsers.** :func:`option_numbers` (comma-separated numbers), :func:`levels_config`
(``--levels`` / ``--fast``), :func:`check_init` (``--init``), :func:`read_pose_json`,
:func:`read_fiducials`.  A CT argument is read with :func:`xraypose.volume.load_ct`.
"""

from __future__ import annotations

import functools
import inspect
import math
from pathlib import Path
from typing import Optional

import typer
import typer.core

from xraypose.errors import InputError
from xraypose.register.config import DEFAULT_LEVELS, MATCH_CURVED, SHIFT_GAIN, RegistrationConfig
from xraypose.schema import (OFFSET_MM, PIXEL_MM, POSITION_MM, PRIMARY_DEG, SDD_MM, SECONDARY_DEG, SOD_MM, Integer,
                             Number)

__all__ = ["NUMERIC", "LISTS", "CheckedCommand", "option_numbers", "check_params", "option_flag", "levels_config",
           "check_init", "read_pose_json", "read_fiducials", "INITS", "EXIT_FAILED"]

_SIZE = Integer(16, 8192, "pixels", "rows to register: at least 16")

#: Range of each numeric option, by its Python name; ``(command, name)`` entries win.
NUMERIC: dict = {
    "sdd": SDD_MM, "sod": SOD_MM, "delx": PIXEL_MM, "dely": PIXEL_MM, "x0": OFFSET_MM, "y0": OFFSET_MM,
    "height": Integer(1, 16384, "pixels", "detector rows; 0 is a zero-size image"),
    "width": Integer(1, 16384, "pixels", "detector columns; 0 is a zero-size image"),
    "samples": Integer(1, 100_000, name="samples per ray"), "step": Number(0, 1000, lo_open=True, unit="mm"),
    "bone_multiplier": Number(0, 100, name="bone attenuation multiplier"),
    "i0": Number(0, 1e12, lo_open=True, name="unattenuated intensity"),
    "crop": Integer(0, 100_000, "pixels", "collimator border"), "blur": Number(0, 100, unit="pixels", name="σ"),
    "size": _SIZE, "lr_rot": Number(0, 10, lo_open=True), "lr_trans": Number(0, 10_000, lo_open=True, unit="mm"),
    "threads": Integer(1, 1024), "seed": Integer(0, 2**32 - 1),
    "specimen": Integer(1, 10, name="a DeepFluoro specimen 1-6 or a Ljubljana subject 1-10"),
    "capture_starts": Integer(1, 64, name="capture starts"),
    "blur_coefficient": Number(-10, 0, name="blur coefficient (<= 0, per pixel²)"),
    "blur_turn": Number(0, 180, unit="degrees", name="turn before the blur is predicted again (0: once)"),
    "air_floor": Number(-1024, -500, unit="HU", name="the air floor"),
    "counts_blur": Number(0, 20, unit="pixels", name="the detector's intensity blur σ"),
    "counts_supersample": Integer(1, 8, name="DRR pixels per frame pixel per side"),
    "counts_every": Integer(1, 1_000_000, name="frames per refined frame"),
    "counts_max_side": Integer(8, 16384, "pixels", "the counts' longest side after summing"),
    "counts_air_hu": Number(-1100, -1, unit="HU", name="the air knot (where attenuation starts)"),
    "counts_scatter_mm": Number(0, 1000, unit="mm", name="the scatter's width σ (0: none)"),
    "train_seconds": Number(0, 1e7, lo_open=True, unit="s"), "cases": Integer(1, 100_000),
    "minutes": Number(0, 1e6, lo_open=True, unit="minutes"), "steps": Integer(1, 10**12),
    "batch_size": Integer(1, 4096), "projections": Integer(1, 10_000, name="X-rays per specimen"),
    ("train", "size"): Integer(8, 1024, "pixels"),  # camera.height's range in the training config
}

#: Options holding comma-separated numbers: name → (one spec per number, or one spec for any count; format).
LISTS: dict = {
    "pose": ((PRIMARY_DEG, SECONDARY_DEG), "PRIMARY,SECONDARY (degrees)"),
    "angles": ((PRIMARY_DEG, SECONDARY_DEG), "PRIMARY,SECONDARY (degrees)"),
    "isocenter": ((POSITION_MM,) * 3, "X,Y,Z (world RAS mm)"),
    "perturb": ((Number(0, 180, unit="degrees"), Number(0, 10_000, unit="mm")), "DEGREES,MM"),
    "levels": (Integer(4, 4096, "pixels"), "increasing detector sizes, e.g. 16,32,64,96"),
    "specimens": (Integer(1, 6, name="DeepFluoro specimen"), "DeepFluoro specimens 1-6, e.g. 1,2"),
    "subjects": (Integer(1, 10, name="Ljubljana subject"), "Ljubljana subjects 1-10, e.g. 1,2"),
}


def _choices_structure() -> tuple:
    from xraypose.datasets.deepfluoro import STRUCTURES

    return tuple(STRUCTURES)


#: Text options whose choices the library checks only on some paths (checked here on all); ``(command, name)``
#: entries, as in :data:`NUMERIC` (``register --structure`` is a mask file, ``evaluate --structure`` a bone).
CHOICES: dict = {("evaluate", "structure"): _choices_structure,
                 "resample_domain": lambda: ("auto", "intensity", "line-integral")}


def option_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else repr(v) if isinstance(v, str) else str(v)


def option_numbers(name: str, text: str, source: str = "") -> list:
    """The numbers of the comma-separated option ``name`` (see :data:`LISTS`), checked.

    Raises :class:`InputError` naming the option when a number is missing, extra,
    not a number, NaN/infinite or out of range.
    """
    specs, fmt = LISTS[name]
    flag = option_flag(name)
    if not isinstance(text, str):
        raise InputError(f"{flag} must be text '{fmt}', got {_fmt(text)}{source}")
    parts = [x for x in text.replace(" ", "").split(",") if x != ""]
    if isinstance(specs, tuple) and len(parts) != len(specs):
        raise InputError(f"{flag} needs {len(specs)} comma-separated numbers '{fmt}', got {len(parts)} in "
                         f"{text!r}{source}")
    if not parts:
        raise InputError(f"{flag} needs comma-separated numbers ({fmt}), got {text!r}{source}")
    out = []
    for i, part in enumerate(parts):
        spec = specs[i] if isinstance(specs, tuple) else specs
        try:
            v = float(part)
        except ValueError:
            raise InputError(f"{flag} must be comma-separated numbers '{fmt}', got {part!r} in {text!r}{source}") \
                from None
        problem = spec.problem(v)
        if problem:
            raise InputError(f"{flag}: number {i + 1} of {text!r} {problem}, got {_fmt(v)}{source}")
        out.append(int(v) if spec.integer else v)
    return out


def check_params(ctx, command: str) -> None:
    """Check the parsed values of ``ctx`` (a command's context) against :data:`NUMERIC`,
    :data:`LISTS` and :data:`CHOICES`; raise :class:`InputError` naming the first bad option."""
    for p in ctx.command.params:
        v = ctx.params.get(p.name)
        if v is None or getattr(p, "param_type_name", "option") != "option":
            continue
        source = ""
        if getattr(ctx.get_parameter_source(p.name), "name", "") == "DEFAULT_MAP":
            cfg = ctx.params.get("config")
            source = f" (from the config file {getattr(cfg, 'name', cfg)})"
        flag = option_flag(p.name)
        ann = getattr(getattr(p, "type_descriptor", None), "annotation", None)
        if ann in (int, float) and not isinstance(v, bool):
            spec = NUMERIC.get((command, p.name)) or NUMERIC.get(p.name)
            if spec is None:
                if not math.isfinite(v):
                    raise InputError(f"{flag} must be a finite number, got {_fmt(v)}{source}")
                continue
            problem = spec.problem(v)
            if problem:
                what = f" ({spec.name})" if spec.name else ""
                raise InputError(f"{flag}{what} {problem}, got {_fmt(v)}{source}")
        elif p.name in LISTS:
            option_numbers(p.name, v, source)
        elif (choices := CHOICES.get((command, p.name)) or CHOICES.get(p.name)) is not None and v not in choices():
            raise InputError(f"unknown {flag} {v!r}; choose one of {', '.join(choices())}{source}")


def _conversion_problem(command: str, param, msg) -> str:
    """What is wrong with an option's text the parser could not convert: a numeric option's range (as
    :func:`check_params` says it: ``--specimen (…) must be a whole number in [1, 10]``), not the parser's
    wording (``Input should be a valid integer, unable to parse string as an integer``)."""
    flag = option_flag(param.name)
    ann = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    spec = NUMERIC.get((command, param.name)) or NUMERIC.get(param.name)
    if spec is not None:
        return f"{flag}{f' ({spec.name})' if spec.name else ''} must be {spec.expected}"
    if ann in (int, float):
        return f"{flag} must be {'a whole number' if ann is int else 'a number'}"
    return f"invalid value for {flag}: {msg}"


class CheckedCommand(typer.core.TyperCommand):
    """A typer command whose option values are checked (:func:`check_params`) right after parsing."""

    def parse_args(self, ctx, args):
        try:
            rest = super().parse_args(ctx, args)
        except Exception as e:  # the parser's conversion error: name the value too
            errors = getattr(e.__cause__, "errors", None)
            param = getattr(e, "param", None)
            if param is None or not callable(errors):
                raise
            first = (errors() or [{}])[0]
            if "input" not in first:
                raise
            raise InputError(f"{_conversion_problem(self.name, param, first.get('msg', e))}, "
                             f"got {first['input']!r}") from None
        if not ctx.resilient_parsing:
            check_params(ctx, self.name)
        return rest


# --------------------------------------------------------------------------------------------- option groups
class Group:
    """``name: dict = Group(fn)`` in a command's signature (a command decorated with :func:`with_groups`): the
    parameters of ``fn`` (typer options) stand in its place, and the command receives ``fn(**their values)`` as
    ``name`` (as FastAPI's ``Depends``).  Options that several commands take are so defined once, in one
    function of this module, with what they mean to the library (e.g. RegistrationConfig keywords)."""

    def __init__(self, fn, params: list | None = None):
        self.fn = fn
        #: the options (``inspect.Parameter``): ``fn``'s parameters, unless given (``fn`` then takes ``**values``)
        self.params = list(inspect.signature(fn, eval_str=True).parameters.values()) if params is None else params


def with_groups(command):
    """``command`` with each :class:`Group` parameter replaced by the group's options, in its place (so in that
    order in ``--help``); typer reads the options from the signature, the command gets the groups' values."""
    sig = inspect.signature(command, eval_str=True)
    groups = {p.name: p.default for p in sig.parameters.values() if isinstance(p.default, Group)}
    params = [q for p in sig.parameters.values() for q in (groups[p.name].params if p.name in groups else [p])]

    @functools.wraps(command)
    def run(**values):
        for name, group in groups.items():
            values[name] = group.fn(**{p.name: values.pop(p.name) for p in group.params})
        return command(**values)

    run.__signature__ = sig.replace(parameters=params)
    return run


# --------------------------------------------------------------------------------------------- shared options
CT = typer.Argument(..., help="CT file (NIfTI, NRRD, MHA, DICOM folder) or 'sample' for the bundled pelvis CT.")

# Registration options shared by `register`, `evaluate` and `track` (one definition, one help text); their
# defaults are RegistrationConfig's (one source of truth: a test compares them).
#: RegistrationConfig's defaults: those of the registration options.
REGISTRATION_DEFAULTS = RegistrationConfig()
_REG = REGISTRATION_DEFAULTS  # a short name for the lines below
SIMILARITY = typer.Option(_REG.similarity, "--similarity", help="mncc | gncc | mixed | ncc")
LR_ROT = typer.Option(_REG.lr_rot, "--lr-rot", help="Adam learning rate of the rotation parameters.")
LR_TRANS = typer.Option(_REG.lr_trans, "--lr-trans", help="Adam learning rate of the translation parameters (mm).")
SCHEDULE = typer.Option(_REG.schedule, "--schedule", help=f"plateau (early stopping) | step (×{_REG.step_gamma:g} "
                        f"every {_REG.step_every}).")
DENSITY = typer.Option(_REG.density, "--density", help="linear | hu (DiffPose) | physical | raw")
BONE_MULTIPLIER = typer.Option(_REG.bone_multiplier, "--bone-multiplier",
                               help="Bone attenuation multiplier (fitted from it at fine levels).")
PARAMETERIZATION = typer.Option(_REG.parameterization, "--parameterization", help="Pose parameterization optimised.")
LEVELS = typer.Option(None, "--levels", help="Coarse-to-fine detector sizes, e.g. "
                      f"'{','.join(str(level.size) for level in DEFAULT_LEVELS)}' (the default); each level's other "
                      "settings from the nearest default level.")
FAST = typer.Option(False, "--fast", help="A cheaper, less accurate schedule (previews).")
METAL = typer.Option(False, "--metal", help="The X-ray shows metal that is not in the CT (retractors, K-wires, "
                     "screws, plates): weigh pixels robustly on every level, the capture too.  Worse on X-rays "
                     "without metal (docs/registration.md).")
EDGE_ENHANCED = typer.Option(False, "--edge-enhanced", help="The X-ray went through a display's edge enhancement "
                             "(unsharp masking, as processed fluoroscopy and most stored radiographs): the fine "
                             "levels explain it by blurred copies of the DRR.  Off by default: it helped where the "
                             "display curve is mild and harmed under a strong gamma (docs/registration.md).")
SCATTER = typer.Option(False, "--scatter", help="The X-ray is a raw detector image with much scatter (no or a weak "
                       "anti-scatter grid, a thick patient): every level adds to the DRR the smooth scatter that best "
                       "explains the X-ray.  Off by default: about 1.35x the time, and it lost some display-processed "
                       "X-rays (docs/registration.md).")
METAL_STEPS = typer.Option(True, "--metal-steps/--no-metal-steps", help="Before registering, set aside the X-ray's "
                           "metal steps (edges far stronger than bone's: their pixels get weight 0; a region behind "
                           "a uniform step, e.g. a retractor blade, is levelled).  Off: the X-ray as given.")
CAPTURE_STARTS = typer.Option(_REG.capture_starts, "--capture-starts", help="Capture from the start and this many "
                              "minus one more about it (5°/20 mm away); the best after the first level goes on.  1: "
                              "the given start only (faster, loses more far starts).")
SHIFT_SEARCH = typer.Option(True, "--shift-search/--no-shift-search", help="Before the capture, find where the "
                            "X-ray's anatomy lies in a DRR twice as wide (a template match) and capture from the start "
                            "moved across the beam there as well; the better capture goes on (docs/registration.md, "
                            "\"The shift search\").  Off: the given start only.")
MATCH_INTENSITY = typer.Option("fine", "--match-intensity", help="Map the X-ray's intensities onto the DRR's by "
                               "their quantiles (a display curve undone): fine — at a finer level where that map "
                               "is clearly curved (the default); all — at every capture level too (display-processed "
                               "X-rays: a linear LUT shown bone bright, a strong gamma; tried as a hypothesis when "
                               "the verdict is not ok); off — never, nor "
                               "as a hypothesis (also when --structure or a cropped CT registers a part of the CT).")
MATCH_MODES = ("fine", "all", "off")
SEED = typer.Option(_REG.seed, "--seed", help="Seed of the random draws (sparse patches; evaluate: the "
                    "perturbations too).")
THREADS = typer.Option(_REG.num_threads, "--threads", help="CPU threads (1 is fastest for these small images on a "
                       "busy machine).")
HYPOTHESES = typer.Option(True, "--hypotheses/--no-hypotheses", help="When the verdict is not ok (or ok below P "
                          "0.75: verified, and kept ok only if another start reaches the same pose), also try the "
                          "antipodal start, two restarts about the result and the given start with intensities "
                          "matched, captured from five starts and with the --metal and --scatter schedules; keep the "
                          "most confident, ranked also by the check with scatter modelled (the result says which "
                          "and lists every result tried); an ok with another plausible result > 2 mm away is "
                          "uncertain (views.png draws it beside).  With two CPUs and --threads 1 they run on two "
                          "threads (the same results).")
MODEL = typer.Option(None, "--model", help="Trained pose regressor (xraypose train) to start from (a sequence: "
                     "its estimate on the first frame).")
ALLOW_OTHER_CT = typer.Option(False, "--allow-other-ct", help="Use a --model trained on another CT (refused "
                              "otherwise: it knows the poses of its own CT only); a warning is printed.")


def registration_options(similarity: str = SIMILARITY, lr_rot: float = LR_ROT, lr_trans: float = LR_TRANS,
                         schedule: str = SCHEDULE, density: str = DENSITY, bone_multiplier: float = BONE_MULTIPLIER,
                         levels: Optional[str] = LEVELS, fast: bool = FAST, metal: bool = METAL,
                         metal_steps: bool = METAL_STEPS, capture_starts: int = CAPTURE_STARTS,
                         shift_search: bool = SHIFT_SEARCH,
                         match_intensity: str = MATCH_INTENSITY, edge_enhanced: bool = EDGE_ENHANCED,
                         scatter: bool = SCATTER, seed: int = SEED, threads: int = THREADS) -> dict:
    """The registration options of ``register`` and ``evaluate``: their RegistrationConfig keywords."""
    return dict(similarity=similarity, lr_rot=lr_rot, lr_trans=lr_trans, schedule=schedule, density=density,
                bone_multiplier=bone_multiplier, seed=seed, num_threads=threads, capture_starts=capture_starts,
                shift_search=SHIFT_GAIN if shift_search else None,
                **appearance_settings(metal_steps, match_intensity),
                **levels_config(levels, fast, metal, edge_enhanced, scatter))


def appearance_settings(metal_steps: bool, match_intensity: str) -> dict:
    """RegistrationConfig keywords of ``--metal-steps/--no-metal-steps`` and ``--match-intensity
    fine|all|off`` (``register``, ``evaluate``, ``track``)."""
    if match_intensity not in MATCH_MODES:
        raise InputError(f"--match-intensity must be one of {', '.join(MATCH_MODES)}, got {match_intensity!r}")
    return dict(foreign_steps=_REG.foreign_steps if metal_steps else None,
                match_intensity=None if match_intensity == "off" else MATCH_CURVED,
                match_capture=match_intensity == "all")


# Options of `register` and `track`: the start, the X-ray's intrinsics, its preprocessing, a structure.
INIT = typer.Option(None, "--init", help="Start: model | angles (the X-ray's C-arm angles or --angles) | pose "
                    "(--pose-json: a pose or a previous result, to restart) | ap (an AP view of the isocenter). "
                    "Default: model with --model, pose with --pose-json, else angles. A sequence: the first "
                    "frame's start.")
POSE_JSON = typer.Option(None, "--pose-json", help='Start pose: {"camera_to_world": 4×4}, a previous pose.json or '
                         "(--rig, track) a rig result's rig_to_world.")
ANGLES = typer.Option(None, "--angles",
                      help="C-arm angles 'PRIMARY,SECONDARY' in degrees (LAO+/RAO−, CRAN+/CAUD−).")
SOD = typer.Option(None, "--sod", help="Source-to-isocenter distance, mm (angles/ap starts).")
ISOCENTER = typer.Option(None, "--isocenter", help="'X,Y,Z' world RAS mm (default: the CT's centre).")


def start_options(model: Optional[Path] = MODEL, init: Optional[str] = INIT, pose_json: Optional[Path] = POSE_JSON,
                  angles: Optional[str] = ANGLES, sod: Optional[float] = SOD,
                  isocenter: Optional[str] = ISOCENTER) -> dict:
    """The start options of ``register`` and ``track``, ``init`` resolved and checked (:func:`check_init`)."""
    return dict(init=check_init(init, model, pose_json), model=model, pose_json=pose_json, angles=angles, sod=sod,
                isocenter=isocenter)


SDD = typer.Option(None, "--sdd", help="Source-to-detector distance, mm (overrides the file).")
DELX = typer.Option(None, "--delx", help="Pixel spacing along columns, mm.")
DELY = typer.Option(None, "--dely", help="Pixel spacing along rows, mm.")
X0 = typer.Option(None, "--x0", help="Principal-point offset along +u, mm.")
Y0 = typer.Option(None, "--y0", help="Principal-point offset along +v, mm.")
KIND = typer.Option(None, "--kind", help="Pixel values: intensity | log-intensity | attenuation (default: from the "
                    "file).")


def intrinsics_options(sdd: Optional[float] = SDD, delx: Optional[float] = DELX, dely: Optional[float] = DELY,
                       x0: Optional[float] = X0, y0: Optional[float] = Y0, kind: Optional[str] = KIND) -> dict:
    """The X-ray's header overrides of ``register`` and ``track``: :func:`xraypose.xray.read_xray` keywords."""
    return dict(sdd=sdd, delx=delx, dely=dely, x0=x0, y0=y0, kind=kind)


I0 = typer.Option(None, "--i0", help="Unattenuated intensity for the log (default: the image's maximum; a "
                  "sequence: each frame's).")
CROP = typer.Option(0, "--crop", help="Collimator border to remove, pixels per edge.")
BLUR = typer.Option(1.0, "--blur", help="Gaussian blur σ (pixels of the file, 5×5) of the X-ray (every frame) "
                    "before registering, on its line integrals (after the log), scaled with the image where --size "
                    "shrinks it; 0 for none. The DRRs get the same blur.")
#: Rows the X-rays are resampled to at most before registering (``--size`` of register, track, evaluate).
SIZE_DEFAULT = 256
SIZE = typer.Option(SIZE_DEFAULT, "--size", help="Resample the X-ray (the frames) to at most this many rows first, "
                    "after the log (raw intensities with few photons get half a photon added first); see "
                    "--resample-domain for binning raw intensities before it.")


RESAMPLE_DOMAIN = typer.Option("auto", "--resample-domain", help="How --size shrinks raw intensities (kind "
                               "'intensity'): 'intensity' averages them over each new pixel before their log (a "
                               "binned detector), 'line-integral' resamples after the log, 'auto' (default) after "
                               "the log unless photons are few and none can be added before it (read from the "
                               "X-ray's own noise). Other kinds are resampled after the log.")


def preprocessing_options(i0: Optional[float] = I0, crop: int = CROP, blur: float = BLUR,
                          size: int = SIZE, resample_domain: str = RESAMPLE_DOMAIN) -> dict:
    """The preprocessing options of ``register`` and ``track`` (see :func:`xraypose.cli.steps.preprocess_settings`)."""
    return dict(crop=crop, blur=blur, size=size, i0=i0, resample_domain=resample_domain)


STRUCTURE = typer.Option(None, "--structure", help="One structure given as a mask on the CT's grid (its nonzero "
                         "voxels, whatever the type: 0/1, 0/255, floats; threshold a probability map first; NIfTI, "
                         "NRRD, ...): only it is rendered; register also crops the X-ray to where it "
                         "projects at the start.")
LABEL_MAP = typer.Option(None, "--label-map", help="A labelmap on the CT's grid; with --label N: that structure "
                         "only (as --structure).")
LABEL = typer.Option(None, "--label", help="The structure's label id in --label-map.")


def structure_options(structure: Optional[Path] = STRUCTURE, label_map: Optional[Path] = LABEL_MAP,
                      label: Optional[str] = LABEL) -> dict:
    """The structure options of ``register`` and ``track`` (:func:`xraypose.cli.steps.load_registration_ct`)."""
    return dict(structure=structure, label_map=label_map, label=label)


COUNTS = typer.Option(False, "--counts", help="Then refine the pose on the raw counts by their Poisson "
                      "likelihood (xraypose.register.counts: the DRR formed as a detector forms an image — exp, "
                      "area average, an intensity blur, scatter — against the counts, each pixel weighed by its "
                      "photons). For raw detector X-rays (kind 'intensity') with photon noise; one view, the whole "
                      "CT; not for a failed verdict. How the X-ray was formed (the renderer, where air ends, the "
                      "detector's blur, scatter) is chosen by the counts' likelihood (track: on the first frame, "
                      "then held; its refined poses pooled by --motion). Minutes per X-ray on a CPU (track: the first "
                      "frame, then 7-60 s a frame). Experimental: measured on simulated X-rays only "
                      "(docs/benchmarks.md, stops 42-44, 56). The registered pose is "
                      "kept in the result.")
COUNTS_EVERY = typer.Option(1, "--counts-every", help="track --counts: refine every K-th frame (frames 0, K, 2K, …, "
                            "the last and each frame the check called uncertain or failed) and pool those fits with "
                            "the other frames' tracked registrations by the motion model (the fits carry the depth "
                            "the registrations are biased in): about K times less time. Default 1: every frame "
                            "refined, pooled by their fits alone (docs/benchmarks.md, stop 66).")
COUNTS_BLUR = typer.Option(None, "--counts-blur", help="With --counts: the detector's intensity blur σ in the counts' "
                           "pixels (an X-ray's pixels summed until it is at most 128 a side: a 512² frame's 4×4; "
                           "default: chosen by the likelihood).")
COUNTS_SUPERSAMPLE = typer.Option(None, "--counts-supersample", help="With --counts: DRR pixels per counts pixel "
                                  "per side, area-averaged as a detector's pixel integrates intensity (default: 2, "
                                  "or the bin where the X-ray's pixels are summed more than 2×2 — a 512² frame's 4 — "
                                  "when that raises the likelihood clearly; 1: 4× faster, biased on X-rays formed "
                                  "finer).")
COUNTS_RENDERER = typer.Option("auto", "--counts-renderer", help="With --counts: auto (the one under which the "
                               "counts are most likely), siddon (the CT's voxels as constant boxes; the sharpest "
                               "model, the blur fitted on top) or trilinear (interpolated: faster; its own blur of "
                               "the line integrals).")
COUNTS_AIR_HU = typer.Option(None, "--counts-air-hu", help="With --counts: where attenuation starts, HU (the "
                             "counts model's air knot; default: chosen by the likelihood among -1000/-900/-800/-700).")
COUNTS_SCATTER_MM = typer.Option(None, "--counts-scatter-mm", help="With --counts: scatter modelled as the image "
                                 "blurred by a Gaussian of this σ (mm on the detector) times a fitted share; 0: none "
                                 "(default: chosen by the likelihood among none, 15, 25, 40, 60 and 90 mm).")

COUNTS_MAX_SIDE = typer.Option(None, "--counts-max-side", help="With --counts: the X-ray's counts summed over k×k "
                               "pixels until at most this many a side (a sum of Poisson counts is Poisson: the "
                               "likelihood stays exact, the detail inside a bin is lost; default 128: a 512² frame's "
                               "4×4). 64: 8×8 — with --counts-renderer trilinear and --counts-supersample 2, "
                               "2.3-2.6 s instead of 7.6-46 s a refined low-dose abdominal frame, the same accuracy on "
                               "sequences; less "
                               "accurate on single X-rays (docs/benchmarks.md, stop 68). register: above 128 (256: "
                               "a 256² X-ray's every pixel), the formation is still chosen on 128 a side and the pose "
                               "then fitted at this side: the pelvis's low-dose 256² X-rays 93 → 100 % below 1 mm, "
                               "~1.5 min each on 2 cores (docs/benchmarks.md, stop 70). At least 8.")

def counts_options(counts: bool = COUNTS, counts_blur: Optional[float] = COUNTS_BLUR,
                   counts_supersample: Optional[int] = COUNTS_SUPERSAMPLE, counts_renderer: str = COUNTS_RENDERER,
                   counts_air_hu: Optional[float] = COUNTS_AIR_HU,
                   counts_scatter_mm: Optional[float] = COUNTS_SCATTER_MM,
                   counts_max_side: Optional[int] = COUNTS_MAX_SIDE) -> dict:
    """The counts options of ``register`` and ``track`` (:mod:`xraypose.register.counts`): ``{"on": bool, "blur",
    "supersample", "renderer" (None: chosen), "air_hu", "scatter_mm", "max_side" (None: the default,
    :data:`~xraypose.register.counts.COUNTS_MAX_SIDE`)}``; the refinement's settings without ``--counts``, or an
    unknown renderer are refused (a side below 8: :data:`NUMERIC`'s range)."""
    from xraypose.register.counts import COUNTS_RENDERERS

    if not counts and (counts_blur is not None or counts_supersample is not None or counts_renderer != "auto"
                       or counts_air_hu is not None or counts_scatter_mm is not None or counts_max_side is not None):
        raise InputError("--counts-blur, --counts-supersample, --counts-renderer, --counts-air-hu, "
                         "--counts-scatter-mm and --counts-max-side go with --counts")
    if counts_renderer != "auto" and counts_renderer not in COUNTS_RENDERERS:
        raise InputError(f"--counts-renderer must be auto or one of {', '.join(COUNTS_RENDERERS)}, "
                         f"got {counts_renderer!r}")
    return {"on": counts, "blur": counts_blur, "supersample": counts_supersample,
            "renderer": None if counts_renderer == "auto" else counts_renderer, "air_hu": counts_air_hu,
            "scatter_mm": counts_scatter_mm, "max_side": counts_max_side}


def check_counts_input(kind: str | None, rig: bool, structure_kw: dict, what: str = "X-ray") -> None:
    """``--counts``'s input, refused before registering: one view's raw X-ray(s) of the whole CT (``kind`` the
    X-ray's, None: not read yet; ``rig``: several views; ``structure_kw``: :func:`structure_options`'s)."""
    if rig:
        raise InputError(f"--counts refines one view's {what}s; a rig's joint counts are not modelled: drop --rig")
    if any(v is not None and v is not False for v in structure_kw.values()):
        raise InputError("--counts models the whole CT's attenuation; a structure alone does not form the X-ray")
    if kind is not None and kind != "intensity":
        raise InputError(f"--counts needs raw detector intensities (kind 'intensity'), not {kind!r} {what}s: the "
                         "counts of a log or attenuation image are gone")


#: Starts of `register` and `track` (``--init``).
INITS = ("model", "angles", "pose", "ap")
#: Exit code of `register` and `track` when the verdict is "failed" (the flagged result is written).
EXIT_FAILED = 3


# --------------------------------------------------------------------------------------------- parsers
def levels_config(text: str | None, fast: bool, metal: bool = False, edge_enhanced: bool = False,
                  scatter: bool = False) -> dict:
    """RegistrationConfig keywords for --levels / --fast / --metal / --edge-enhanced / --scatter (--levels
    takes each level's other settings from the metal schedule with --metal; --edge-enhanced adds the
    unsharp fit to the fine levels of whichever schedule, --scatter the scatter fit to its dense levels)."""
    from xraypose.register import DEFAULT_LEVELS, FAST_LEVELS, METAL_LEVELS, levels_for_sizes
    from xraypose.register.config import edge_enhanced_levels, scatter_levels

    if fast and (text is not None or metal):
        raise InputError("--fast is its own schedule: give it without --levels and --metal")
    if text is not None:
        out = {"levels": levels_for_sizes(option_numbers("levels", text), METAL_LEVELS if metal else DEFAULT_LEVELS)}
    elif metal:
        out = {"levels": METAL_LEVELS}
    else:
        out = {"levels": FAST_LEVELS} if fast else {}
    if edge_enhanced:
        out = {"levels": edge_enhanced_levels(out.get("levels", DEFAULT_LEVELS))}
    if scatter:
        out = {"levels": scatter_levels(out.get("levels", DEFAULT_LEVELS))}
    return out


def check_init(init: str | None, model: Path | None, pose_json: Path | None) -> str:
    """The start named by ``--init`` (default: model with --model, pose with --pose-json, else angles), checked
    against the files it needs."""
    if init is not None and init not in INITS:
        raise InputError(f"unknown --init {init!r}; choose one of {', '.join(INITS)}")
    if init is None:
        init = "model" if model is not None else "pose" if pose_json is not None else "angles"
    if init == "model" and model is None:
        raise InputError("--init model needs --model FILE")
    if init == "pose" and pose_json is None:
        raise InputError("--init pose needs --pose-json FILE")
    return init


def read_pose_json(path: Path):
    """(1, 4, 4) float64 camera_to_world from a pose file (:func:`xraypose.register.initializers.pose_from_json`)."""
    from xraypose.register.initializers import pose_from_json

    return pose_from_json(path)


def read_fiducials(path: Path):
    """(N, 3) float64 world mm points: :func:`xraypose.fiducials.read_fiducials_file`."""
    from xraypose.fiducials import read_fiducials_file

    return read_fiducials_file(path)[1]
