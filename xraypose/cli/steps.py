"""The steps that ``register`` (one X-ray, :mod:`xraypose.cli.register`; a rig, :mod:`xraypose.cli.rig`)
and ``track`` (:mod:`xraypose.cli.track`) share: the CT and its structure, the X-rays' preprocessing
and windows, the start, the metrics' ground truth, and a result written or, failing that, printed.

Starts are those of ``register`` (a model's estimate from one view, C-arm angles, a pose file, an AP
view), given for the start view (``--start-view``, default the first X-ray); a pose file holding
``rig_to_world`` (a rig result's ``pose.json``) is used as it is.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import typer

from xraypose.errors import InputError

if TYPE_CHECKING:
    import torch

    from xraypose.volume import Volume


class RegistrationCT(NamedTuple):
    """The CT side of a registration from the command line (:func:`load_registration_ct`)."""

    volume: Volume  #: the CT as read
    isocenter: Any  #: (3,) float64 world RAS mm: ``--isocenter``, else the CT's centre
    prepared: Any  #: :class:`xraypose.structure.PreparedCT`: what is registered
    given_isocenter: bool  #: ``--isocenter`` was given

    @property
    def part(self) -> bool:
        """A part of the CT is registered (one structure, a cropped CT's padding cleared)."""
        return self.prepared.volume is not self.volume

    @property
    def registrar_isocenter(self):
        """(3,) the registrar's isocenter: ``--isocenter`` or the CT's centre, a part's own centre."""
        return self.isocenter if self.given_isocenter or not self.part else self.prepared.isocenter

    def settings(self, cfg_kw: dict) -> dict:
        """RegistrationConfig keywords for what is registered: a part's (:func:`xraypose.structure.part_settings`:
        its density, gradient NCC, no intensity matching, no fits of the body's intensity model), else ``cfg_kw``."""
        from xraypose.structure import part_settings

        return part_settings(cfg_kw, self.prepared.density) if self.part else cfg_kw

    def registrar(self, config):
        """The :class:`~xraypose.register.Registrar` of what is registered, with ``config``; a part's
        (:meth:`xraypose.structure.PreparedCT.registrar`: judged by the part model)."""
        from xraypose.register import Registrar

        if self.part:
            return self.prepared.registrar(config, isocenter=self.registrar_isocenter)
        return Registrar(self.volume, config, isocenter=self.registrar_isocenter)


def load_registration_ct(ct: str, isocenter: str | None, density: str, structure=None, label_map=None,
                         label=None) -> RegistrationCT:
    """The CT (a file or 'sample'), checked to be registrable, its isocenter and what of it is registered
    (:func:`prepare_structure`)."""
    import torch

    from xraypose.cli.options import option_numbers
    from xraypose.limits import check_registrable_ct
    from xraypose.volume import load_ct

    vol = load_ct(ct)
    check_registrable_ct(vol)
    given = bool(isocenter)
    iso = torch.tensor(option_numbers("isocenter", isocenter), dtype=torch.float64) if given else vol.get_isocenter()
    if given:
        check_isocenter_in_ct(vol, iso)
    prep = prepare_structure(vol, density, structure, label_map, label)
    return RegistrationCT(vol, iso, prep, given)


def check_isocenter_in_ct(vol: Volume, iso) -> None:
    """Refuse an ``--isocenter`` (3,) world RAS mm far outside the CT's box (its voxels' outer faces, grown by
    the box's largest side on every side): every start from angles or an AP view looks at it, and the
    registration takes a pose that sees it for a pose that sees the CT — one 5 m away ran to its end on
    empty DRRs and failed only when writing ("result.similarity holds a non-finite number").  Near the box is
    allowed: a CT cropped to one bone may lie beside the C-arm's isocenter."""
    import torch

    lo, hi = vol.corners.min(0).values, vol.corners.max(0).values
    outside = float(torch.maximum(lo - iso, iso - hi).clamp_min(0).norm())  # mm from the box (0 inside)
    if outside > float((hi - lo).max()):
        box = ", ".join(f"{a} {lo[k]:.4g} … {hi[k]:.4g}" for k, a in enumerate("xyz"))
        raise InputError(f"--isocenter {','.join(f'{float(v):g}' for v in iso)} lies {outside:.0f} mm outside the CT "
                         f"(its box spans {box} mm, world RAS): the isocenter is the point of the CT the C-arm turns "
                         "about")


def structure_record(structure, label_map, label) -> dict | None:
    """What a result records of ``--structure`` / ``--label-map --label`` (None when neither was given)."""
    if structure is None and label_map is None:
        return None
    return {"mask": str(structure) if structure else None, "label_map": str(label_map) if label_map else None,
            "label": label}


def pose_transform_of(steps) -> torch.Tensor:
    """(4, 4) float64: the product of the ``pose_transform`` of preprocessing ``steps`` (identity for
    crops, blurs and resizes; a rotation for a 180° turn or a mirror)."""
    import torch

    F64 = torch.float64
    T = torch.eye(4, dtype=F64)
    for s in steps:
        if isinstance(s, dict) and "pose_transform" in s:
            T = T @ torch.tensor(s["pose_transform"], dtype=F64)
    return T


def read_start_file(path) -> tuple[str, torch.Tensor]:
    """("rig_to_world" | "camera_to_world", (4, 4)) from a pose file: a rig result (``rig_to_world``)
    or any pose file :func:`~xraypose.register.initializers.pose_from_json` reads."""
    import torch

    F64 = torch.float64
    from xraypose.io import finish_before_reading
    from xraypose.register.initializers import pose_from_json
    from xraypose.schema import Matrix4, Object, read_checked

    finish_before_reading(path)  # a result's write a kill interrupted: its new pose
    data = read_checked(Path(path), Object({"rig_to_world": Matrix4()}, open=True), "pose file")
    if "rig_to_world" in data:
        return "rig_to_world", torch.tensor(data["rig_to_world"], dtype=F64)
    return "camera_to_world", pose_from_json(path).reshape(4, 4)


def preprocess_settings(shape, crop: int, blur: float, size: int, i0, resample_domain: str = "auto") -> dict:
    """``XRay.preprocess`` keywords as ``xraypose register`` uses them (crop, 5×5 blur, i0, rescale,
    at most ``size`` rows, shrunk in ``resample_domain``: see :func:`xraypose.preprocess.preprocess`)."""
    import math

    from xraypose.limits import MIN_REGISTER_PIXELS

    pre = {"crop": crop or None, "blur": (5, float(blur)) if blur > 0 else None, "i0": i0, "rescale": True,
           "resample_domain": resample_domain}
    h, w = shape[0] - 2 * crop, shape[1] - 2 * crop
    if h > size:
        cols = max(1, round(w * size / h))
        if cols < MIN_REGISTER_PIXELS:  # a tall, narrow X-ray: refused before registering, not at its picture
            need = math.ceil(MIN_REGISTER_PIXELS * h / w)
            raise InputError(f"--size {size} would register the {h} × {w}-pixel X-ray at {size} × {cols} pixels; "
                             f"at least {MIN_REGISTER_PIXELS} × {MIN_REGISTER_PIXELS} are needed: "
                             + (f"give --size {need} or more" if need <= h else "it is too narrow to register"))
        pre["size"] = (size, cols)
    return pre


def drr_blur(blur: float, rows: int, raw_rows: int, crop: int) -> float | None:
    """The DRRs' blur σ (pixels of the preprocessed X-ray, ``rows`` rows): the X-ray's ``blur`` (pixels of
    the file, ``raw_rows`` rows less the ``crop`` border) rescaled with the image; None for no blur."""
    scale = rows / max(1, raw_rows - 2 * crop)
    return float(blur) * scale if blur > 0 else None


def prepare_structure(vol: Volume, density: str, structure, label_map, label):
    """:class:`xraypose.structure.PreparedCT` for the CLI: the structure of ``--structure`` /
    ``--label-map --label`` only, and a cropped CT's padding cleared (its notes printed)."""
    from xraypose.structure import prepare_ct, structure_mask

    if label is not None and label_map is None and structure is None:
        raise InputError("--label needs --label-map FILE")
    mask = None
    if structure is not None or label_map is not None:
        mask = structure_mask(vol, mask=structure, label_map=label_map, label=label)
    prep = prepare_ct(vol, density=density, mask=mask)
    for n in prep.notes:
        typer.echo(f"note: {n}")
    return prep


def window_views(pxs, poses, prep, names):
    """(X-rays, pixel weights): each preprocessed X-ray cropped to where the structure (``prep``, a
    :class:`~xraypose.structure.PreparedCT`) projects at its start pose
    (:func:`xraypose.structure.structure_window`), and its weights there
    (:func:`xraypose.structure.structure_weights`); refused when it projects outside one."""
    from xraypose.structure import MARGIN_MM, structure_weights, structure_window, window_image

    box = prep.box
    wins = [structure_window(px.camera, T, box) for px, T in zip(pxs, poses)]
    if all(w is None for w in wins):
        where = "the X-ray" if len(pxs) == 1 else "every view"
        raise InputError(f"the structure projects outside {where} at the start pose (its box does not reach the "
                         "detector, or lies behind the source); check the mask and the start")
    bad = [n for n, w in zip(names, wins) if w is None]
    if bad:
        raise InputError(f"the structure projects outside the view {bad[0]} at the start pose; give a start that "
                         "sees it there, or leave that X-ray out")
    out, weights = [], []
    for px, w, T in zip(pxs, wins, poses):
        img, cam = window_image(px.image, px.camera, w)
        m = None if px.mask is None else px.mask[w[0]:w[0] + w[2], w[1]:w[1] + w[3]]  # saturation, collimator
        out.append(replace(px, image=img, camera=cam, mask=m, steps=px.steps + [
            {"step": "structure window", "top": w[0], "left": w[1], "height": w[2], "width": w[3],
             "margin_mm": MARGIN_MM}]))
        sw = structure_weights(prep.volume, cam, T, density=prep.density)
        weights.append(sw if m is None else sw * m.to(sw.dtype).reshape(sw.shape))
    return out, weights


def start_pose(init: str, *, px, camera_to_rig, view: str, model, vol: Volume, pose_json, angles, sod, iso,
               allow_other_ct: bool, foreign_steps: float | None = 12.0):
    """(start, info): the start of a rig registration or a sequence — a ``rig_to_world`` (4, 4), or
    (``--model``) an initialiser giving the start view's camera_to_world, ``init(image (1, 1, H, W),
    camera) -> (1, 4, 4)`` — from ``--init`` model | pose | angles | ap, given for the view ``px`` (a
    preprocessed XRay) whose camera_to_rig is ``camera_to_rig``.  ``foreign_steps``: the model's
    X-ray has metal's steps set aside at this threshold (None: ``--no-metal-steps``)."""
    from xraypose.cli.options import option_numbers
    from xraypose.register.initializers import ModelInitializer
    from xraypose.register.multiview import rig_start
    from xraypose.register.starts import ap_pose

    if init == "model":
        est = ModelInitializer.from_checkpoint(model, vol, allow_other_ct=allow_other_ct, foreign_steps=foreign_steps)
        return est, {"kind": "model", "model": str(model), "view": view}
    if init == "pose":
        kind, T = read_start_file(pose_json)
        return (T if kind == "rig_to_world" else rig_start(T, camera_to_rig),
                {"kind": "pose", "file": str(pose_json), "as": kind, "view": view})
    if init == "angles":
        if angles is not None:
            a, b = option_numbers("angles", angles)
            px = replace(px, angles={**(px.angles or {}), "primary": a, "secondary": b,
                                     **({"sod": sod} if sod is not None else {})})
        if not px.angles or px.angles.get("sod") is None:
            raise InputError(f"the start view {view} holds no C-arm angles and source-to-isocenter distance: give "
                             "--angles PRIMARY,SECONDARY and --sod, --pose-json, or --model")
        return rig_start(px.initial_pose(iso), camera_to_rig), {"kind": "angles", "angles": px.angles, "view": view}
    T, d = ap_pose(iso, px.camera.sdd, sod, f"the view {view}'s")
    return rig_start(T, camera_to_rig), {"kind": "ap", "sod_mm": d, "view": view}


def metric_fiducials(path: Path | None, truth):
    """(N, 3) world mm fiducials of ``--fiducials`` for the metrics, or None; refused without ``--true-pose``."""
    from xraypose.cli.options import read_fiducials

    if path is None:
        return None
    if truth is None:
        raise InputError("--fiducials needs --true-pose (they only serve the metrics)")
    return read_fiducials(path)


def check_output_beside_xrays(output: Path, files) -> None:
    """Refuse, before computing, an output folder ``output`` holding an X-ray file (or one of a name an X-ray may
    have) whose sidecar ``<stem>.json`` would be one of the result's ``files``: every later run read the result as
    that X-ray's sidecar (``pose.npy`` beside the result's pose.json: "unknown key 'camera_to_world'")."""
    from xraypose.io import OutputError
    from xraypose.sequence import FRAME_EXTENSIONS

    out = Path(output).expanduser()
    stems = {Path(n).stem for n in files if n.endswith(".json")}
    if not stems or not out.is_dir():
        return
    clash = sorted(x.name for x in out.iterdir()
                   if x.stem in stems and x.name not in files and not x.name.startswith(".")
                   and (x.suffix.lower() in FRAME_EXTENSIONS or not x.suffix) and x.is_file())
    if clash:
        side = Path(clash[0]).stem + ".json"
        raise OutputError(f"the output folder {output} holds {clash[0]}: read as an X-ray, it would take the result's "
                          f"{side} as its sidecar; choose another output folder")


def write_or_print(write, name: str, pose) -> None:
    """Run ``write()`` (a result's files); when writing fails (e.g. a full disk) print the registered pose
    ``name`` (``camera_to_world`` | ``rig_to_world``, (4, 4)) on stdout so that it is not lost, and raise."""
    from xraypose.io import OutputError

    try:
        write()
    except OutputError as e:
        typer.echo(json.dumps({name: pose.tolist()}))
        raise OutputError(f"{e} (the registered {name} is printed on stdout)") from None


def spread_line(spread: dict, beam: str = "the beam") -> str:
    """One line of a pose's own uncertainty (``Registration.spread``, a rig view's): what the noise leaves."""
    src = "its counts' Cramér–Rao bound" if spread.get("source") == "counts" else \
        f"the noise at the optimum, ×{spread.get('noise_scale', 1):g}"
    return (f"spread (1 sd): {spread['along_beam_mm']:.2f} mm along {beam}, {spread['across_beam_mm']:.2f} mm "
            f"across it, {spread['rotation_deg']:.2f}° ({src}; a bias of an X-ray formed unlike the DRR is not in it)")
