"""The command line for several views and sequences (issue 14).

* ``xraypose register CT X1 X2 … --rig rig.json -o OUT``: the X-rays of one moment, tied by a rig,
  registered together (:mod:`xraypose.register.multiview`); ``register_command`` hands over here
  when it is given several X-rays or ``--rig``.
* ``xraypose track CT FRAMES… -o OUT``: a pose per frame of a sequence
  (:func:`xraypose.register.tracking.track_sequence`), registered as ``xraypose.cli`` registers it.

Starts are those of ``register`` (a model's estimate from one view, C-arm angles, a pose file, an AP
view), given for the start view (``--start-view``, default the first X-ray); a pose file holding
``rig_to_world`` (a rig result's ``pose.json``) is used as it is.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer

from xraypose.cli.config import config_option
from xraypose.errors import InputError

#: ``--rig`` value that builds the rig from the X-rays' own C-arm angles (DICOM headers, sidecars).
RIG_FROM_ANGLES = "angles"


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
    from xraypose.register.initializers import pose_from_json
    from xraypose.schema import Matrix4, Object, read_checked

    data = read_checked(Path(path), Object({"rig_to_world": Matrix4()}, open=True), "pose file")
    if "rig_to_world" in data:
        return "rig_to_world", torch.tensor(data["rig_to_world"], dtype=F64)
    return "camera_to_world", pose_from_json(path).reshape(4, 4)


def preprocess_settings(shape, crop: int, blur: float, size: int, i0) -> dict:
    """``XRay.preprocess`` keywords as ``xraypose register`` uses them (crop, 5×5 blur, i0, rescale,
    at most ``size`` rows)."""
    pre = {"crop": crop or None, "blur": (5, float(blur)) if blur > 0 else None, "i0": i0, "rescale": True}
    if shape[0] - 2 * crop > size:
        pre["size"] = (size, max(1, round((shape[1] - 2 * crop) * size / (shape[0] - 2 * crop))))
    return pre


STRUCTURE = typer.Option(None, "--structure", help="Register one structure given as a mask on the CT's grid "
                         "(nonzero voxels; NIfTI, NRRD, ...): only it is rendered, the X-ray is cropped to where it "
                         "projects at the start.")
LABEL_MAP = typer.Option(None, "--label-map", help="A labelmap on the CT's grid; with --label N: register that "
                         "structure only (as --structure).")
LABEL = typer.Option(None, "--label", help="The structure's label id in --label-map.")


def prepare_structure(vol, density: str, structure, label_map, label):
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


def load_rig(rig: str, xrays, read_kw: dict):
    """(Rig, [XRay] in the X-rays' order, [RigView]) for ``--rig FILE`` or ``--rig angles``."""
    from xraypose.rig import read_rig, rig_from_xrays
    from xraypose.xray import read_xray

    names = [str(x) for x in xrays]
    xrs = [read_xray(x, require_intrinsics=False, **read_kw) for x in xrays]
    if rig == RIG_FROM_ANGLES:
        for n, xr in zip(names, xrs):
            if not xr.angles or xr.angles.get("sod") is None:
                raise InputError(f"--rig angles: the X-ray {n} holds no C-arm angles and source-to-isocenter "
                                 "distance; give a rig.json")
            if xr.camera is None:
                raise InputError(f"--rig angles: the X-ray {n} has no intrinsics; give them in a sidecar or a rig.json")
        the_rig = rig_from_xrays(dict(zip(names, xrs)))
    else:
        the_rig = read_rig(rig)
    views = the_rig.match(names)
    cams = the_rig.cameras(views, [xr.shape for xr in xrs], [xr.camera for xr in xrs])
    xrs = [replace(xr, camera=c) for xr, c in zip(xrs, cams)]
    return the_rig, xrs, views


def start_pose(init: str, *, px, camera_to_rig, view: str, model, vol, pose_json, angles, sod, iso,
               allow_other_ct: bool):
    """(start, info): the start of a rig registration or a sequence — a ``rig_to_world`` (4, 4), or
    (``--model``) an initialiser giving the start view's camera_to_world, ``init(image (1, 1, H, W),
    camera) -> (1, 4, 4)`` — from ``--init`` model | pose | angles | ap, given for the view ``px`` (a
    preprocessed XRay) whose camera_to_rig is ``camera_to_rig``."""
    from xraypose.camera import carm_pose
    from xraypose.cli.options import option_numbers
    from xraypose.register.initializers import ModelInitializer
    from xraypose.register.multiview import rig_start

    if init == "model":
        est = ModelInitializer.from_checkpoint(model, vol, allow_other_ct=allow_other_ct)
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
    d = sod if sod is not None else 0.6 * px.camera.sdd
    return (rig_start(carm_pose(0.0, 0.0, sod=d, isocenter=iso), camera_to_rig),
            {"kind": "ap", "sod_mm": d, "view": view})


def run_register_rig(*, ct: str, xrays, rig: str, output: Path, start_view: str | None, init: str | None, model,
                     pose_json, angles, sod, isocenter, true_pose, fiducials, read_kw: dict, crop: int, blur: float,
                     size: int, i0, cfg_kw: dict, no_trajectory: bool, allow_other_ct: bool, structure=None,
                     label_map=None, label=None) -> int:
    """``xraypose register CT X1 X2 … --rig rig.json -o OUT`` (arguments: those of ``register``).
    Returns the exit code (3 when the combined verdict is failed)."""
    import torch

    F64 = torch.float64
    from xraypose.cli.options import option_numbers
    from xraypose.cli.register import EXIT_FAILED, read_fiducials
    from xraypose.io import OutputError, check_output_folder
    from xraypose.limits import check_registrable_ct, check_registrable_xray
    from xraypose.register import Registrar, RegistrationConfig
    from xraypose.register.multiview import ViewImage, register_rig, rig_start, write_rig_registration
    from xraypose.volume import load_sample_ct, read_volume

    if init is None:
        init = "model" if model is not None else "pose" if pose_json is not None else "angles"
    check_output_folder(output)
    the_rig, xrs, views = load_rig(rig, xrays, read_kw)
    names = [str(x) for x in xrays]
    r = 0
    if start_view is not None:
        hits = [i for i, (n, v) in enumerate(zip(names, views)) if start_view in (n, v.name, Path(n).name)]
        if not hits:
            raise InputError(f"--start-view {start_view!r} is none of the views ({', '.join(v.name for v in views)})")
        r = hits[0]
    vol = load_sample_ct() if ct == "sample" else read_volume(ct)
    check_registrable_ct(vol)
    iso = torch.tensor(option_numbers("isocenter", isocenter), dtype=F64) if isocenter else vol.get_isocenter()
    prep = prepare_structure(vol, cfg_kw.get("density", "linear"), structure, label_map, label)
    one = prep.volume is not vol  # a part of the CT: gradient NCC, the X-rays windowed and weighted
    if one:
        cfg_kw = {**cfg_kw, "density": prep.density,
                  "similarity": "gncc" if cfg_kw.get("similarity", "mncc") == "mncc" else cfg_kw["similarity"]}
    pxs = []
    for n, xr in zip(names, xrs):
        if xr.camera is None:
            raise InputError(f"{n}: no intrinsics (give them in rig.json, the file, or --sdd and --delx)")
        check_registrable_xray(xr.shape, n, crop)
        px = xr.preprocess(**preprocess_settings(xr.shape, crop, blur, size, i0))
        pxs.append(px)
    Cs = [v.camera_to_rig.to(F64) @ pose_transform_of(px.steps[len(xr.steps):]) for v, px, xr in zip(views, pxs, xrs)]
    scale = pxs[0].shape[0] / max(1, xrs[0].shape[0] - 2 * crop)
    cfg = RegistrationConfig(drr_blur=float(blur) * scale if blur > 0 else None, **cfg_kw)
    reg = Registrar(prep.volume, cfg, isocenter=iso if isocenter or not one else prep.isocenter)

    start, info = start_pose(init, px=pxs[r], camera_to_rig=Cs[r], view=views[r].name, model=model, vol=vol,
                             pose_json=pose_json, angles=angles, sod=sod, iso=iso, allow_other_ct=allow_other_ct)
    if one:  # the X-rays cropped to where the structure projects at the start
        if callable(start):
            start = rig_start(start(pxs[r].image[None, None], pxs[r].camera)[0], Cs[r])
        pxs, masks = window_views(pxs, [start @ C for C in Cs], prep, [v.name for v in views])
    else:
        masks = [px.mask for px in pxs]  # the preprocessing's (saturation, a collimator), or None
    images = [px.image for px in pxs]
    truth = fid = None
    if true_pose is not None:
        kind, T = read_start_file(true_pose)
        truth = T if kind == "rig_to_world" else rig_start(T, Cs[r])
    if fiducials is not None:
        if truth is None:
            raise InputError("--fiducials needs --true-pose (they only serve the metrics)")
        fid = read_fiducials(fiducials)
    vims = [ViewImage(v.name, px.image, px.camera, C, source=n, mask=m)
            for v, px, C, n, m in zip(views, pxs, Cs, names, masks)]
    out = register_rig(vol, vims, start, registrar=reg, start_view=r, true_rig_to_world=truth, fiducials=fid)
    extra = {"ct": ct, "rig": {"source": the_rig.source, "description": the_rig.description},
             "xrays": [px.to_dict() for px in pxs], "init": info, "ct_notes": prep.notes}
    if structure is not None or label_map is not None:
        extra["structure"] = {"mask": str(structure) if structure else None,
                              "label_map": str(label_map) if label_map else None, "label": label}
    try:
        write_rig_registration(output, out, images=images, volume=prep.volume, extra=extra,
                               trajectory=not no_trajectory)
    except OutputError as e:
        typer.echo(json.dumps({"rig_to_world": out.rig_to_world.tolist()}))
        raise OutputError(f"{e} (the registered rig_to_world is printed on stdout)") from None
    msg = (f"wrote {output}/pose.json and views.png: {len(vims)} views, similarity {out.similarity:.4f} (mean), "
           f"{out.status}, {out.iterations} iterations, optimisation {out.opt_s:.2f} s")
    if out.metrics is not None:
        msg += f"; mTRE {out.metrics['mtre']:.3f} mm (start {out.initial_metrics['mtre']:.2f} mm)"
    typer.echo(msg)
    for v in out.views:
        typer.echo(f"  view {v.name}: {v.verdict} (P {v.p_success:.2f}): {v.reason}")
    typer.echo(f"verdict: {out.verdict} (P(mTRE < 2 mm) = {out.p_success:.2f}, the least trusted view's): {out.reason}")
    return EXIT_FAILED if out.verdict == "failed" else 0


# --------------------------------------------------------------------------------------------- track
#: The files of a tracked sequence; a re-run into the same folder replaces them all.
TRACK_FILES = ("trajectory.csv", "trajectory.json", "overlay.gif")
#: Rows of the overlay animation's frames (each view; smaller frames are enlarged to about this).
GIF_ROWS = 128


def read_sequences(frames, rig: str | None, read_kw: dict):
    """(names, sequences, cameras, camera_to_rig per view, Rig or None) for ``track``'s FRAMES.

    Without a rig, FRAMES is one sequence (one multi-frame file, a folder, or several files, one
    frame each); with a rig, each FRAMES argument is one view's sequence (a folder or a
    multi-frame file), matched to the rig's views by name (the folder's name: ``cam01/``)."""
    import torch

    F64 = torch.float64
    from xraypose.rig import read_rig
    from xraypose.sequence import read_sequence

    if rig is None:
        seq = read_sequence([str(f) for f in frames] if len(frames) > 1 else frames[0], **read_kw)
        if seq.camera is None:
            raise InputError(f"{seq.source}: no intrinsics; give --sdd and --delx (or a sidecar JSON)")
        return ["frames"], [seq], [seq.camera], [torch.eye(4, dtype=F64)], None
    if rig == RIG_FROM_ANGLES:
        raise InputError("track takes --rig rig.json (the views' camera_to_rig); --rig angles is for register")
    the_rig = read_rig(rig)
    names = [str(f) for f in frames]
    seqs = [read_sequence(f, require_intrinsics=False, **read_kw) for f in frames]
    views = the_rig.match(names)
    counts = {len(s) for s in seqs}
    if len(counts) > 1:
        detail = ", ".join(f"{v.name}: {len(s)}" for v, s in zip(views, seqs))
        raise InputError(f"the views' sequences hold different numbers of frames ({detail}); a biplane sequence "
                         "needs one frame per view at every moment")
    cams = the_rig.cameras(views, [s.shape for s in seqs], [s.camera for s in seqs])
    return [v.name for v in views], seqs, cams, [v.camera_to_rig.to(F64) for v in views], the_rig


def _overlay_gif(volume, density: str, frames_views, results, rel) -> bytes:
    """An animated GIF: per frame, every view's frame (at most :data:`GIF_ROWS` rows) with the edges of the
    DRR at its tracked pose in orange, the views side by side."""
    import imageio.v3 as iio
    import numpy as np

    from xraypose.evaluate import PictureRenderer
    from xraypose.preprocess import resize
    from xraypose.viz import edges, normalise

    renderer = PictureRenderer(volume, density=density, n_samples=192)
    small = []
    for imgs, cam in frames_views:
        h = min(GIF_ROWS, cam.height)
        w = max(1, round(cam.width * h / cam.height))
        small.append((h, w, cam.resize(h, w) if (h, w) != (cam.height, cam.width) else cam))
    out = []
    for fr in results:
        panels = []
        for i, ((imgs, cam), (h, w, scam)) in enumerate(zip(frames_views, small)):
            x = imgs[fr.index, 0]
            if (h, w) != tuple(x.shape):
                x = resize(x, cam, h, w)[0]
            T = fr.camera_to_world @ rel[i]
            d = renderer(scam, T[None])[0]
            g = normalise(x)
            rgb = np.stack([g, g, g], -1)
            rgb[edges(d)] = [1.0, 0.3, 0.0]
            panels.append((255 * rgb).astype(np.uint8))
        H = max(p.shape[0] for p in panels)
        panels = [np.pad(p, ((0, H - p.shape[0]), (0, 2), (0, 0))) for p in panels]
        out.append(np.concatenate(panels, axis=1))
    arr = np.stack(out)
    k = max(1, -(-GIF_ROWS // arr.shape[1]))
    if k > 1:  # small detectors: enlarged (nearest) so that the animation is readable
        arr = arr.repeat(k, axis=1).repeat(k, axis=2)
    return iio.imwrite("<bytes>", arr, extension=".gif", duration=0.25, loop=0)


def track_rows(results, times, names, rel_to_rig, pose_name: str) -> tuple[list, list]:
    """(CSV rows, JSON frames) of a tracked sequence; poses in the rig's (or camera's) frame."""
    rows, frames = [], []
    for fr in results:
        T = fr.camera_to_world
        t = None if times is None else float(times[fr.index])
        row = {"frame": fr.index, "time_s": "" if t is None else f"{t:.6g}", "verdict": fr.verdict or "",
               "p_success": "" if fr.p_success is None else f"{fr.p_success:.4f}", "similarity": f"{fr.similarity:.6f}",
               "status": fr.status, "reinitialised": int(fr.reinitialised), "seconds": f"{fr.seconds:.4f}"}
        for a in range(3):
            for b in range(4):
                row[f"m{a}{b}"] = f"{float(T[a, b]):.9g}"
        row["reason"] = fr.reason or ""
        rows.append(row)
        d = fr.to_dict()
        d[pose_name] = d.pop("camera_to_world")
        d["predicted_" + pose_name] = d.pop("predicted")
        d["time_s"] = t
        if len(names) > 1 or pose_name == "rig_to_world":
            d["views"] = {n: (T @ C).tolist() for n, C in zip(names, rel_to_rig)}
        frames.append(d)
    return rows, frames


def _csv_bytes(rows) -> bytes:
    import csv
    import io

    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue().encode()


def track_command(
    ct: str = typer.Argument(..., help="CT file (NIfTI, NRRD, MHA, DICOM folder) or 'sample' for the bundled pelvis CT."),
    frames: List[Path] = typer.Argument(..., metavar="FRAMES...", help="The sequence: a multi-frame DICOM (XA/RF cine), "
                                        "a folder of frames, a multi-page TIFF, or several files (one frame each). "
                                        "With --rig: one sequence per view (e.g. the folders cam01/ cam02/)."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder: trajectory.csv, trajectory.json, overlay.gif "
                                "(an earlier sequence's are replaced)."),
    rig: Optional[str] = typer.Option(None, "--rig", help="rig.json tying the views (biplane sequences): each FRAMES "
                                      "argument is one view's sequence; the poses are rig_to_world."),
    start_view: Optional[str] = typer.Option(None, "--start-view", help="With --rig: the view the start is for "
                                             "(default: the first)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Trained pose regressor: start from its estimate on the first frame."),
    init: Optional[str] = typer.Option(None, "--init", help="Start of the first frame: model | angles | pose | ap "
                                       "(default: model with --model, pose with --pose-json, else angles)."),
    pose_json: Optional[Path] = typer.Option(None, "--pose-json", help="Start pose of the first frame (camera_to_world, "
                                             "or a rig result's rig_to_world)."),
    angles: Optional[str] = typer.Option(None, "--angles", help="C-arm angles 'PRIMARY,SECONDARY' (degrees) of the first frame."),
    sod: Optional[float] = typer.Option(None, "--sod", help="Source-to-isocenter distance, mm (angles/ap starts)."),
    isocenter: Optional[str] = typer.Option(None, "--isocenter", help="'X,Y,Z' world RAS mm (default: the CT's centre)."),
    sdd: Optional[float] = typer.Option(None, "--sdd", help="Source-to-detector distance, mm (overrides the files)."),
    delx: Optional[float] = typer.Option(None, "--delx", help="Pixel spacing along columns, mm."),
    dely: Optional[float] = typer.Option(None, "--dely", help="Pixel spacing along rows, mm."),
    x0: Optional[float] = typer.Option(None, "--x0", help="Principal-point offset along +u, mm."),
    y0: Optional[float] = typer.Option(None, "--y0", help="Principal-point offset along +v, mm."),
    kind: Optional[str] = typer.Option(None, "--kind", help="Pixel values: intensity | log-intensity | attenuation."),
    i0: Optional[float] = typer.Option(None, "--i0", help="Unattenuated intensity for the log (default: each frame's maximum)."),
    crop: int = typer.Option(0, "--crop", help="Collimator border to remove, pixels per edge."),
    blur: float = typer.Option(1.0, "--blur", help="Gaussian blur σ (pixels, 5×5) of every frame; the DRRs get the same."),
    size: int = typer.Option(256, "--size", help="Resample the frames to at most this many rows first."),
    density: str = typer.Option("linear", "--density", help="linear | hu | physical | raw (a TIFF bone volume: raw)."),
    levels: Optional[str] = typer.Option(None, "--levels", help="Schedule of the first frame (and re-initialisations)."),
    fast: bool = typer.Option(False, "--fast", help="A cheaper schedule for the first frame (previews)."),
    confidence: bool = typer.Option(True, "--confidence/--no-confidence", help="Check every frame (the verdict decides "
                                    "re-initialisations); without it a similarity drop does."),
    seed: int = typer.Option(0, "--seed", help="Seed of any sparse patch draws."),
    threads: int = typer.Option(1, "--threads", help="CPU threads."),
    allow_other_ct: bool = typer.Option(False, "--allow-other-ct", help="Use a --model trained on another CT."),
    structure: Optional[Path] = typer.Option(None, "--structure", help="Track one structure given as a mask on the "
                                             "CT's grid (nonzero voxels): only it is rendered."),
    label_map: Optional[Path] = LABEL_MAP,
    label: Optional[str] = LABEL,
    config: Optional[Path] = config_option("track"),
) -> None:
    """Track a sequence (fluoroscopy, cine, biplane video): a pose per frame, each from the previous ones.

    Frame 0 is registered with the whole schedule; every later frame from a constant-velocity
    prediction with the finest level only; a frame whose verdict is failed is registered again
    from the last good pose. Prints a line per frame; exits with code 3 when a frame's verdict
    is failed (everything is still written).

    Examples:

    xraypose track ct.nii.gz run.dcm --pose-json start.json -o track/

    xraypose track ct.nii.gz cam01/ cam02/ --rig rig.json --pose-json start.json -o track/
    """
    import torch

    F64 = torch.float64
    from xraypose.cli.register import EXIT_FAILED, INITS, _levels
    from xraypose.io import atomic_write_files, check_output_folder, json_bytes
    from xraypose.limits import check_registrable_ct, check_registrable_xray
    from xraypose.register import Registrar, RegistrationConfig
    from xraypose.register.multiview import rig_start
    from xraypose.register.tracking import track_sequence
    from xraypose.cli.options import option_numbers
    from xraypose.volume import load_sample_ct, read_volume

    if init is not None and init not in INITS:
        raise InputError(f"unknown --init {init!r}; choose one of {', '.join(INITS)}")
    if init is None:
        init = "model" if model is not None else "pose" if pose_json is not None else "angles"
    if init == "model" and model is None:
        raise InputError("--init model needs --model FILE")
    if init == "pose" and pose_json is None:
        raise InputError("--init pose needs --pose-json FILE")
    if start_view is not None and rig is None:
        raise InputError("--start-view needs --rig")
    cfg_kw = {"density": density, "seed": seed, "num_threads": threads, "record_trajectory": False,
              **_levels(levels, fast)}
    check_output_folder(output)
    read_kw = dict(sdd=sdd, delx=delx, dely=dely, x0=x0, y0=y0, kind=kind)
    names, seqs, cams, Cs, the_rig = read_sequences(frames, rig, read_kw)
    r = 0
    if start_view is not None:
        hits = [i for i, (n, f) in enumerate(zip(names, frames)) if start_view in (n, str(f), Path(f).name)]
        if not hits:
            raise InputError(f"--start-view {start_view!r} is none of the views ({', '.join(names)})")
        r = hits[0]
    vol = load_sample_ct() if ct == "sample" else read_volume(ct)
    check_registrable_ct(vol)
    iso = torch.tensor(option_numbers("isocenter", isocenter), dtype=F64) if isocenter else vol.get_isocenter()
    prep = prepare_structure(vol, density, structure, label_map, label)
    one = prep.volume is not vol  # a part of the CT (one structure, a cropped CT)
    if one:
        density = prep.density
        cfg_kw = {**cfg_kw, "density": density, "similarity": "gncc"}
    views, first = [], []
    for n, seq, cam, C in zip(names, seqs, cams, Cs):
        check_registrable_xray(seq.shape, seq.source, crop)
        pre = preprocess_settings(seq.shape, crop, blur, size, i0)
        pxs = [replace(fr, camera=cam).preprocess(**pre) for fr in seq.frames]
        imgs = torch.stack([px.image for px in pxs])[:, None].to(torch.float32)
        views.append((imgs, pxs[0].camera, C @ pose_transform_of(pxs[0].steps[len(seq.frames[0].steps):])))
        first.append(pxs[0])
    scale = first[0].shape[0] / max(1, seqs[0].shape[0] - 2 * crop)
    reg = Registrar(prep.volume, RegistrationConfig(drr_blur=float(blur) * scale if blur > 0 else None, **cfg_kw),
                    isocenter=iso if isocenter or not one else prep.isocenter)
    start, info = start_pose(init, px=first[r], camera_to_rig=views[r][2], view=names[r], model=model, vol=vol,
                             pose_json=pose_json, angles=angles, sod=sod, iso=iso, allow_other_ct=allow_other_ct)
    if callable(start):
        start = rig_start(start(views[r][0][:1], views[r][1])[0], views[r][2])
    # track in the start view's camera frame (its axes are the optimiser's), give rig poses back
    Cr = views[r][2]
    Cr_inv = torch.linalg.inv(Cr)
    rel = [Cr_inv @ v[2] for v in views]
    F = len(seqs[0])
    typer.echo(f"tracking {F} frames of {len(views)} view{'s' if len(views) > 1 else ''} "
               f"({', '.join(s.source for s in seqs)})")

    def progress(fr):
        p = "" if fr.p_success is None else f" (P {fr.p_success:.2f})"
        typer.echo(f"frame {fr.index + 1}/{F}: {fr.verdict or 'unchecked'}{p}, similarity {fr.similarity:.4f}, "
                   f"{fr.seconds:.2f} s{', re-initialised' if fr.reinitialised else ''}")

    if the_rig is None:
        res = track_sequence(reg, views[0][0], views[0][1], start, confidence=confidence, progress=progress)
        pose_name, to_rig = "camera_to_world", [torch.eye(4, dtype=F64)]
    else:
        res = track_sequence(reg, None, start=start @ Cr, views=[(v[0], v[1], C) for v, C in zip(views, rel)],
                             confidence=confidence, progress=progress)
        for fr in res:  # back to the rig's frame
            fr.camera_to_world = fr.camera_to_world @ Cr_inv
            fr.predicted = fr.predicted @ Cr_inv
        pose_name, to_rig = "rig_to_world", [v[2] for v in views]
    times = seqs[0].times
    rows, jframes = track_rows(res, times, names, to_rig, pose_name)
    counts = {v: sum(fr.verdict == v for fr in res) for v in ("ok", "uncertain", "failed")}
    doc = {"ct": ct, "pose": pose_name,
           "frames_note": f"per frame: {pose_name} (world = CT RAS mm), the verdict of its check, the seconds it took, "
                          "the sequence time (time_s, from the file; null when unknown), re-initialised or not",
           "sequences": [{"view": n, "source": s.source, "frames": len(s), "notes": s.notes} for n, s in zip(names, seqs)],
           "views": [{"name": n, "camera_to_rig": v[2].tolist(), "intrinsics": v[1].to_dict()}
                     for n, v in zip(names, views)] if the_rig is not None else None,
           "intrinsics": views[0][1].to_dict(), "init": info, "start": start.tolist(), "ct_notes": prep.notes,
           "summary": {"frames": F, "verdicts": counts, "reinitialised": sum(fr.reinitialised for fr in res),
                       "median_seconds": float(torch.tensor([fr.seconds for fr in res]).median())},
           "config": reg.config.to_dict(), "frames": jframes}
    files = {"trajectory.csv": _csv_bytes(rows), "trajectory.json": json_bytes(doc),
             "overlay.gif": _overlay_gif(prep.volume, density, [(v[0], v[1]) for v in views], res,
                                         to_rig)}
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_files(output, files, remove=TRACK_FILES)
    typer.echo(f"wrote {output}/trajectory.csv, trajectory.json, overlay.gif: {counts['ok']} ok, "
               f"{counts['uncertain']} uncertain, {counts['failed']} failed, "
               f"{doc['summary']['reinitialised']} re-initialised")
    if counts["failed"]:
        raise SystemExit(EXIT_FAILED)
