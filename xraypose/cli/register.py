"""``xraypose register CT XRAY [--model M | --init ...] -o OUTDIR``: the CLI layer over :mod:`xraypose.register`.

Registered in ``xraypose/cli.py`` with ``app.command("register")(register_command)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from xraypose.cli.config import config_option
from xraypose.cli.options import option_numbers
from xraypose.cli.track import LABEL, LABEL_MAP, STRUCTURE
from xraypose.errors import InputError
from xraypose.limits import check_registrable_ct, check_registrable_xray

INITS = ("model", "angles", "pose", "ap")
#: Exit code of `register` when the verdict is "failed" (the flagged result is written).
EXIT_FAILED = 3


# Registration options shared by `register` and `evaluate` (one definition, one help text).
SIMILARITY = typer.Option("mncc", "--similarity", help="mncc | gncc | mixed | ncc")
LR_ROT = typer.Option(7.5e-3, "--lr-rot", help="Adam learning rate of the rotation parameters.")
LR_TRANS = typer.Option(7.5, "--lr-trans", help="Adam learning rate of the translation parameters (mm).")
SCHEDULE = typer.Option("plateau", "--schedule", help="plateau (early stopping) | step (×0.9 every 25).")
DENSITY = typer.Option("linear", "--density", help="linear | hu (DiffPose) | physical | raw")
BONE_MULTIPLIER = typer.Option(1.0, "--bone-multiplier",
                               help="Bone attenuation multiplier (fitted from it at fine levels).")
LEVELS = typer.Option(None, "--levels", help="Coarse-to-fine detector sizes, e.g. '16,32,64,96' (the default); "
                      "each level's other settings from the nearest default level.")
FAST = typer.Option(False, "--fast", help="A cheaper, less accurate schedule (previews).")
HYPOTHESES = typer.Option(True, "--hypotheses/--no-hypotheses", help="When the verdict is not ok, also try the "
                          "antipodal start and two restarts about the result; keep the most confident (the result "
                          "says which).")
ALLOW_OTHER_CT = typer.Option(False, "--allow-other-ct", help="Use a --model trained on another CT (refused "
                              "otherwise: it knows the poses of its own CT only); a warning is printed.")


def _levels(text: str | None, fast: bool) -> dict:
    """RegistrationConfig keywords for --levels / --fast."""
    from xraypose.register import FAST_LEVELS, levels_for_sizes

    if text is not None:
        if fast:
            raise InputError("give --levels or --fast, not both")
        return {"levels": levels_for_sizes(option_numbers("levels", text))}
    return {"levels": FAST_LEVELS} if fast else {}


def read_fiducials(path: Path):
    """(N, 3) float64 world mm points: :func:`xraypose.fiducials.read_fiducials_file`."""
    from xraypose.fiducials import read_fiducials_file

    return read_fiducials_file(path)[1]


def register_command(
    ct: str = typer.Argument(..., help="CT file (NIfTI, NRRD, MHA, DICOM folder) or 'sample' for the bundled pelvis CT."),
    xrays: List[Path] = typer.Argument(..., metavar="XRAY...", help="X-ray: DICOM, or PNG/TIFF/NPY with intrinsics "
                                       "(options or a sidecar JSON). Several X-rays of one moment: with --rig."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder: pose.json, metrics.json (with --true-pose), trajectory.json "
                                "(and views.png with --rig); an earlier result there is replaced (its files this run does not write "
                                "are removed)."),
    rig: Optional[str] = typer.Option(None, "--rig", help="rig.json tying several X-rays (camera_to_rig per X-ray; "
                                      "docs/datasets.md §8.3), or 'angles' (the X-rays' own C-arm angles): one "
                                      "rig_to_world is registered for all views."),
    start_view: Optional[str] = typer.Option(None, "--start-view", help="With --rig: the view the start (model, "
                                             "angles, --pose-json camera_to_world, ap) is for (default: the first X-ray)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Trained pose regressor (xraypose train) to initialise from."),
    init: Optional[str] = typer.Option(
        None, "--init",
        help="Start: model | angles (the X-ray's C-arm angles or --angles) | pose (--pose-json: a pose or a "
             "previous result, to restart) | ap (an AP view of the isocenter). Default: model with --model, "
             "pose with --pose-json, else angles."),
    pose_json: Optional[Path] = typer.Option(None, "--pose-json", help='Start pose: {"camera_to_world": 4×4} or a previous pose.json.'),
    angles: Optional[str] = typer.Option(None, "--angles", help="C-arm angles 'PRIMARY,SECONDARY' in degrees (LAO+/RAO−, CRAN+/CAUD−)."),
    sod: Optional[float] = typer.Option(None, "--sod", help="Source-to-isocenter distance, mm (angles/ap starts)."),
    isocenter: Optional[str] = typer.Option(None, "--isocenter", help="'X,Y,Z' world RAS mm (default: the CT's centre)."),
    antipodal: bool = typer.Option(False, "--antipodal", help="Also try the start seen from the other side (AP/PA confusion)."),
    hypotheses: bool = HYPOTHESES,
    true_pose: Optional[Path] = typer.Option(None, "--true-pose", help="Ground-truth pose JSON: write metrics.json."),
    fiducials: Optional[Path] = typer.Option(None, "--fiducials", help="3D fiducials (world mm; .json/.npy/.csv) for the metrics (default: 20 picked on bone)."),
    sdd: Optional[float] = typer.Option(None, "--sdd", help="X-ray source-to-detector distance, mm (overrides the file)."),
    delx: Optional[float] = typer.Option(None, "--delx", help="Pixel spacing along columns, mm."),
    dely: Optional[float] = typer.Option(None, "--dely", help="Pixel spacing along rows, mm."),
    x0: Optional[float] = typer.Option(None, "--x0", help="Principal-point offset along +u, mm."),
    y0: Optional[float] = typer.Option(None, "--y0", help="Principal-point offset along +v, mm."),
    reverse_x_axis: Optional[bool] = typer.Option(None, "--reverse-x-axis/--no-reverse-x-axis", help="Mirrored detector columns."),
    kind: Optional[str] = typer.Option(None, "--kind", help="Pixel values: intensity | log-intensity | attenuation (default: from the file)."),
    i0: Optional[float] = typer.Option(None, "--i0", help="Unattenuated intensity for the log (default: the image maximum)."),
    crop: int = typer.Option(0, "--crop", help="Collimator border to remove, pixels per edge."),
    blur: float = typer.Option(1.0, "--blur", help="Gaussian blur σ (pixels, 5×5) before registering; 0 for none. The DRRs get the same blur."),
    size: int = typer.Option(256, "--size", help="Resample the preprocessed X-ray to at most this many rows first."),
    similarity: str = SIMILARITY,
    parameterization: str = typer.Option("se3_log_map", "--parameterization", help="Pose parameterization optimised."),
    lr_rot: float = LR_ROT,
    lr_trans: float = LR_TRANS,
    schedule: str = SCHEDULE,
    density: str = DENSITY,
    bone_multiplier: float = BONE_MULTIPLIER,
    levels: Optional[str] = LEVELS,
    fast: bool = FAST,
    seed: int = typer.Option(0, "--seed", help="Seed of the sparse patch draws."),
    threads: int = typer.Option(1, "--threads", help="CPU threads (1 is fastest for these small images on a busy machine)."),
    no_trajectory: bool = typer.Option(False, "--no-trajectory", help="Do not record/write the trajectory."),
    allow_other_ct: bool = ALLOW_OTHER_CT,
    structure: Optional[Path] = STRUCTURE,
    label_map: Optional[Path] = LABEL_MAP,
    label: Optional[str] = LABEL,
    config: Optional[Path] = config_option("register"),
) -> None:
    """Find the C-arm pose of an X-ray by registering it to a CT (several X-rays tied by a rig: --rig).

    Prints the verdict (ok | uncertain | failed), P(mTRE < 2 mm) and the reason; exits with code 3
    when the verdict is failed (the flagged result is still written).

    Examples:

    xraypose register ct.nii.gz xray.dcm --model model.pt -o result/

    xraypose register ct.nii.gz cam01.tif cam02.tif --rig rig.json --pose-json start.json -o result/
    """
    import torch

    from xraypose.camera import carm_pose
    from xraypose.io import OutputError, check_output_folder
    from xraypose.register import Registrar, RegistrationConfig
    from xraypose.register.api import register_xray, write_registration
    from xraypose.register.initializers import ModelInitializer, pose_from_json
    from xraypose.volume import load_sample_ct, read_volume
    from xraypose.xray import read_xray

    if init is not None and init not in INITS:
        raise InputError(f"unknown --init {init!r}; choose one of {', '.join(INITS)}")
    if init is None:
        init = "model" if model is not None else "pose" if pose_json is not None else "angles"
    if init == "model" and model is None:
        raise InputError("--init model needs --model FILE")
    if init == "pose" and pose_json is None:
        raise InputError("--init pose needs --pose-json FILE")
    if rig is not None or len(xrays) > 1:
        if rig is None:
            raise InputError(f"{len(xrays)} X-rays given: tie them with --rig rig.json (or --rig angles), or "
                             "register them one at a time")
        if antipodal:
            raise InputError("--antipodal is not available with --rig")
        from xraypose.cli.track import run_register_rig

        code = run_register_rig(
            ct=ct, xrays=xrays, rig=rig, output=output, start_view=start_view, init=init, model=model,
            pose_json=pose_json, angles=angles, sod=sod, isocenter=isocenter, true_pose=true_pose,
            fiducials=fiducials, crop=crop, blur=blur, size=size, i0=i0, no_trajectory=no_trajectory,
            allow_other_ct=allow_other_ct, structure=structure, label_map=label_map, label=label,
            read_kw=dict(sdd=sdd, delx=delx, dely=dely, x0=x0, y0=y0, reverse_x_axis=reverse_x_axis, kind=kind),
            cfg_kw=dict(parameterization=parameterization, similarity=similarity, lr_rot=lr_rot, lr_trans=lr_trans,
                        schedule=schedule, density=density, bone_multiplier=bone_multiplier, seed=seed,
                        num_threads=threads, record_trajectory=not no_trajectory, **_levels(levels, fast)))
        if code:
            raise SystemExit(code)
        return
    if start_view is not None:
        raise InputError("--start-view needs --rig (several X-rays)")
    xray = xrays[0]
    check_output_folder(output)  # before any computation (a re-run replaces the folder's earlier result)

    vol = load_sample_ct() if ct == "sample" else read_volume(ct)
    check_registrable_ct(vol)
    iso = torch.tensor(option_numbers("isocenter", isocenter), dtype=torch.float64) if isocenter else vol.get_isocenter()
    from xraypose.cli.track import prepare_structure, window_views

    prep = prepare_structure(vol, density, structure, label_map, label)  # one structure; a cropped CT's padding
    one = prep.volume is not vol  # a part of the CT is registered: gradient NCC, the X-ray windowed and weighted
    if one:
        density = prep.density
        similarity = "gncc" if similarity == "mncc" else similarity
    prim = sec = None
    if angles is not None:
        prim, sec = option_numbers("angles", angles)
    xr = read_xray(xray, sdd=sdd, delx=delx, dely=dely, x0=x0, y0=y0, reverse_x_axis=reverse_x_axis,
                   primary=prim, secondary=sec, sod=sod, kind=kind)
    if xr.camera is None:
        raise InputError(f"{xray}: no intrinsics; give --sdd and --delx")
    check_registrable_xray(xr.shape, str(xray), crop)
    if init == "model":
        start = ModelInitializer.from_checkpoint(model, vol, allow_other_ct=allow_other_ct)
        init_info = {"kind": "model", "model": str(model)}
    elif init == "pose":
        start = pose_from_json(pose_json)
        init_info = {"kind": "pose", "file": str(pose_json)}
    elif init == "angles":
        if not xr.angles:
            raise InputError(f"{xray} holds no C-arm angles: give --angles PRIMARY,SECONDARY and --sod, "
                             "--pose-json, or --model")
        if xr.angles.get("sod") is None:
            raise InputError(f"{xray}: C-arm angles but no source-to-isocenter distance (DistanceSourceToPatient): "
                             "give --sod MM")
        start = xr.initial_pose(iso).reshape(1, 4, 4)  # crop / blur / log / resize do not move the camera
        init_info = {"kind": "angles", "angles": xr.angles}
    else:
        d = sod if sod is not None else 0.6 * xr.camera.sdd
        start = carm_pose(0.0, 0.0, sod=d, isocenter=iso).reshape(1, 4, 4)
        init_info = {"kind": "ap", "sod_mm": d}

    pre = {"crop": crop or None, "blur": (5, float(blur)) if blur > 0 else None, "i0": i0, "rescale": True}
    if xr.shape[0] - 2 * crop > size:
        h = size
        w = max(1, round((xr.shape[1] - 2 * crop) * size / (xr.shape[0] - 2 * crop)))
        pre["size"] = (h, w)
    px = xr.preprocess(**pre)
    scale = px.shape[0] / max(1, xr.shape[0] - 2 * crop)
    drr_blur = float(blur) * scale if blur > 0 else None

    cfg = RegistrationConfig(
        parameterization=parameterization, similarity=similarity, lr_rot=lr_rot, lr_trans=lr_trans,
        schedule=schedule, density=density, bone_multiplier=bone_multiplier, seed=seed, num_threads=threads,
        drr_blur=drr_blur, record_trajectory=not no_trajectory,
        **_levels(levels, fast),
    )
    truth = fid = None
    if true_pose is not None:
        truth = pose_from_json(true_pose)  # crop / blur / log / resize do not move the camera
    if fiducials is not None:
        if truth is None:
            raise InputError("--fiducials needs --true-pose (they only serve the metrics)")
        fid = read_fiducials(fiducials)
    reg = Registrar(prep.volume, cfg, isocenter=iso if isocenter or not one else prep.isocenter)
    weights = px.mask  # the preprocessing's (a saturated plateau, a collimator's shadow), or None
    if one:  # the X-ray cropped to where the part projects at the start, weighted there
        if callable(start):
            start = start(px.image[None, None], px.camera)
        pxw, ws = window_views([px], [torch.as_tensor(start, dtype=torch.float64).reshape(-1, 4, 4)[0]], prep,
                               [str(xray)])
        px, weights = pxw[0], ws[0]
    out = register_xray(vol, px.image, px.camera, start, registrar=reg, antipodal=antipodal, true_pose=truth,
                        fiducials=fid, hypotheses=hypotheses, masks=weights)[0]
    extra = {"ct": ct, "xray": px.to_dict(), "init": init_info}
    if prep.notes:
        extra["ct_notes"] = prep.notes
    if structure is not None or label_map is not None:
        extra["structure"] = {"mask": str(structure) if structure else None,
                              "label_map": str(label_map) if label_map else None, "label": label}
    try:
        write_registration(output, out, extra=extra, trajectory=not no_trajectory)
    except OutputError as e:  # e.g. a full disk: the pose computed is not lost
        typer.echo(json.dumps({"camera_to_world": out.camera_to_world.tolist()}))
        raise OutputError(f"{e} (the registered camera_to_world is printed on stdout)") from None
    msg = (f"wrote {output}/pose.json: similarity {out.similarity:.4f}, {out.status}, {out.iterations} iterations, "
           f"init {out.init_s:.2f} s, optimisation {out.opt_s:.2f} s")
    if out.metrics is not None:
        msg += f"; mTRE {out.metrics['mtre']:.3f} mm (start {out.initial_metrics['mtre']:.2f} mm)"
    typer.echo(msg)
    typer.echo(f"verdict: {out.verdict} (P(mTRE < 2 mm) = {out.p_success:.2f}): {out.reason}")
    if out.verdict == "failed":
        raise SystemExit(EXIT_FAILED)
