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

import torch

from xraypose.errors import InputError

F64 = torch.float64

#: ``--rig`` value that builds the rig from the X-rays' own C-arm angles (DICOM headers, sidecars).
RIG_FROM_ANGLES = "angles"


def pose_transform_of(steps) -> torch.Tensor:
    """(4, 4) float64: the product of the ``pose_transform`` of preprocessing ``steps`` (identity for
    crops, blurs and resizes; a rotation for a 180° turn or a mirror)."""
    T = torch.eye(4, dtype=F64)
    for s in steps:
        if isinstance(s, dict) and "pose_transform" in s:
            T = T @ torch.tensor(s["pose_transform"], dtype=F64)
    return T


def read_start_file(path) -> tuple[str, torch.Tensor]:
    """("rig_to_world" | "camera_to_world", (4, 4)) from a pose file: a rig result (``rig_to_world``)
    or any pose file :func:`~xraypose.register.initializers.pose_from_json` reads."""
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


def run_register_rig(*, ct: str, xrays, rig: str, output: Path, start_view: str | None, init: str | None, model,
                     pose_json, angles, sod, isocenter, true_pose, fiducials, read_kw: dict, crop: int, blur: float,
                     size: int, i0, cfg_kw: dict, no_trajectory: bool, allow_other_ct: bool) -> int:
    """``xraypose register CT X1 X2 … --rig rig.json -o OUT`` (arguments: those of ``register``).
    Returns the exit code (3 when the combined verdict is failed)."""
    import typer

    from xraypose.camera import carm_pose
    from xraypose.cli_options import option_numbers
    from xraypose.cli_register import EXIT_FAILED, read_fiducials
    from xraypose.io import OutputError, check_output_folder
    from xraypose.limits import check_registrable_ct, check_registrable_xray
    from xraypose.register import Registrar, RegistrationConfig
    from xraypose.register.initializers import ModelInitializer
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
    pxs, images = [], []
    for n, xr in zip(names, xrs):
        if xr.camera is None:
            raise InputError(f"{n}: no intrinsics (give them in rig.json, the file, or --sdd and --delx)")
        check_registrable_xray(xr.shape, n, crop)
        px = xr.preprocess(**preprocess_settings(xr.shape, crop, blur, size, i0))
        pxs.append(px)
    Cs = [v.camera_to_rig.to(F64) @ pose_transform_of(px.steps[len(xr.steps):]) for v, px, xr in zip(views, pxs, xrs)]
    images = [px.image for px in pxs]
    scale = pxs[0].shape[0] / max(1, xrs[0].shape[0] - 2 * crop)
    cfg = RegistrationConfig(drr_blur=float(blur) * scale if blur > 0 else None, **cfg_kw)
    reg = Registrar(vol, cfg, isocenter=iso)

    if init == "model":
        start = ModelInitializer.from_checkpoint(model, vol, allow_other_ct=allow_other_ct)
        info = {"kind": "model", "model": str(model), "view": views[r].name}
    elif init == "pose":
        kind, T = read_start_file(pose_json)
        start = T if kind == "rig_to_world" else rig_start(T, Cs[r])
        info = {"kind": "pose", "file": str(pose_json), "as": kind, "view": views[r].name}
    elif init == "angles":
        px = pxs[r]
        if angles is not None:
            a, b = option_numbers("angles", angles)
            px = replace(px, angles={**(px.angles or {}), "primary": a, "secondary": b,
                                     **({"sod": sod} if sod is not None else {})})
        if not px.angles or px.angles.get("sod") is None:
            raise InputError(f"the start view {names[r]} holds no C-arm angles and source-to-isocenter distance: give "
                             "--angles PRIMARY,SECONDARY and --sod, --pose-json, or --model")
        start = rig_start(px.initial_pose(iso), Cs[r])
        info = {"kind": "angles", "angles": px.angles, "view": views[r].name}
    else:
        d = sod if sod is not None else 0.6 * pxs[r].camera.sdd
        start = rig_start(carm_pose(0.0, 0.0, sod=d, isocenter=iso), Cs[r])
        info = {"kind": "ap", "sod_mm": d, "view": views[r].name}
    truth = fid = None
    if true_pose is not None:
        kind, T = read_start_file(true_pose)
        truth = T if kind == "rig_to_world" else rig_start(T, Cs[r])
    if fiducials is not None:
        if truth is None:
            raise InputError("--fiducials needs --true-pose (they only serve the metrics)")
        fid = read_fiducials(fiducials)
    vims = [ViewImage(v.name, px.image, px.camera, C, source=n) for v, px, C, n in zip(views, pxs, Cs, names)]
    out = register_rig(vol, vims, start, registrar=reg, start_view=r, true_rig_to_world=truth, fiducials=fid)
    extra = {"ct": ct, "rig": {"source": the_rig.source, "description": the_rig.description},
             "xrays": [px.to_dict() for px in pxs], "init": info}
    try:
        write_rig_registration(output, out, images=images, volume=vol, extra=extra, trajectory=not no_trajectory)
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
