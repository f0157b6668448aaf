"""``xraypose register CT X1 X2 … --rig rig.json -o OUT``: the X-rays of one moment, tied by a rig,
registered together (:mod:`xraypose.register.multiview`); ``register_command``
(:mod:`xraypose.cli.register`) hands over here when it is given several X-rays or ``--rig``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from xraypose.cli.options import EXIT_FAILED
from xraypose.cli.steps import (check_output_beside_xrays, drr_blur, load_registration_ct, metric_fiducials,
                                pose_transform_of, preprocess_settings, read_start_file, start_pose, structure_record,
                                spread_line, window_views, write_or_print)
from xraypose.errors import InputError

if TYPE_CHECKING:
    from xraypose.volume import Volume

#: ``--rig`` value that builds the rig from the X-rays' own C-arm angles (DICOM headers, sidecars).
RIG_FROM_ANGLES = "angles"


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


def run_register_rig(*, ct: str, xrays, rig: str, output: Path, start_view: str | None, init: str, model,
                     pose_json, angles, sod, isocenter, true_pose, fiducials, read_kw: dict, crop: int, blur: float,
                     size: int, i0, cfg_kw: dict, no_trajectory: bool, allow_other_ct: bool,
                     resample_domain: str = "auto", structure=None,
                     label_map=None, label=None) -> int:
    """``xraypose register CT X1 X2 … --rig rig.json -o OUT`` (arguments: those of ``register``; ``init``
    resolved by :func:`xraypose.cli.options.check_init`). Returns the exit code (3 when the combined
    verdict is failed)."""
    from xraypose.io import check_output_folder
    from xraypose.register import RegistrationConfig
    from xraypose.register.multiview import ViewImage, register_rig

    from xraypose.register.api import RESULT_FILES
    from xraypose.register.multiview import RIG_RESULT_FILES

    check_output_folder(output, replaces=RIG_RESULT_FILES + RESULT_FILES)  # a re-run replaces its result
    check_output_beside_xrays(output, RIG_RESULT_FILES + RESULT_FILES)
    the_rig, xrs, views = load_rig(rig, xrays, read_kw)
    names = [str(x) for x in xrays]
    r = _start_view_index(start_view, names, views)
    cts = load_registration_ct(ct, isocenter, cfg_kw.get("density", "linear"), structure, label_map, label)
    cfg_kw = cts.settings(cfg_kw)  # a part of the CT: its settings (the X-rays windowed and weighted below)
    pxs, Cs = _preprocess_views(names, xrs, views, crop, blur, size, i0, resample_domain)
    cfg = RegistrationConfig(drr_blur=drr_blur(blur, pxs[0].shape[0], xrs[0].shape[0], crop), **cfg_kw)
    reg = cts.registrar(cfg)
    start, info = start_pose(init, px=pxs[r], camera_to_rig=Cs[r], view=views[r].name, model=model, vol=cts.volume,
                             pose_json=pose_json, angles=angles, sod=sod, iso=cts.isocenter,
                             allow_other_ct=allow_other_ct, foreign_steps=cfg_kw.get("foreign_steps", 12.0))
    start, pxs, masks = _windows(start, pxs, Cs, r, cts, views)
    truth = _true_rig_to_world(true_pose, Cs[r])
    fid = metric_fiducials(fiducials, truth)
    vims = [ViewImage(v.name, px.image, px.camera, C, source=n, mask=m)
            for v, px, C, n, m in zip(views, pxs, Cs, names, masks)]
    out = register_rig(cts.volume, vims, start, registrar=reg, start_view=r, true_rig_to_world=truth, fiducials=fid)
    extra = {"ct": ct, "rig": {"source": the_rig.source, "description": the_rig.description},
             "xrays": [px.to_dict() for px in pxs], "init": info, "ct_notes": cts.prepared.notes}
    if (record := structure_record(structure, label_map, label)) is not None:
        extra["structure"] = record
    _write(output, out, [px.image for px in pxs], cts.prepared.volume, extra, no_trajectory, [px.mask for px in pxs])
    return _print_result(output, out, len(vims))


def _start_view_index(start_view: str | None, names: list[str], views) -> int:
    """Index of the ``--start-view`` (an X-ray's path, file name or rig view name; default: the first)."""
    if start_view is None:
        return 0
    hits = [i for i, (n, v) in enumerate(zip(names, views)) if start_view in (n, v.name, Path(n).name)]
    if not hits:
        raise InputError(f"--start-view {start_view!r} is none of the views ({', '.join(v.name for v in views)})")
    return hits[0]


def _preprocess_views(names, xrs, views, crop: int, blur: float, size: int, i0, resample_domain: str = "auto"):
    """(preprocessed X-rays, camera_to_rig (4, 4) float64 of each, after the preprocessing's turns/mirrors)."""
    import torch

    from xraypose.limits import check_registrable_xray

    pxs = []
    for n, xr in zip(names, xrs):
        if xr.camera is None:
            raise InputError(f"{n}: no intrinsics (give them in rig.json, the file, or --sdd and --delx)")
        check_registrable_xray(xr.shape, n, crop)
        px = xr.preprocess(**preprocess_settings(xr.shape, crop, blur, size, i0, resample_domain))
        pxs.append(px)
    Cs = [v.camera_to_rig.to(torch.float64) @ pose_transform_of(px.steps[len(xr.steps):])
          for v, px, xr in zip(views, pxs, xrs)]
    return pxs, Cs


def _windows(start, pxs, Cs, r: int, cts, views):
    """(start rig_to_world, X-rays, pixel weights): a part of the CT crops the X-rays to where it projects at
    the start (a model's start is evaluated for that); else the preprocessing's masks (saturation, a
    collimator) or None."""
    from xraypose.register.multiview import rig_start

    if not cts.part:
        return start, pxs, [px.mask for px in pxs]
    if callable(start):
        start = rig_start(start(pxs[r].image[None, None], pxs[r].camera)[0], Cs[r])
    pxs, masks = window_views(pxs, [start @ C for C in Cs], cts.prepared, [v.name for v in views])
    return start, pxs, masks


def _true_rig_to_world(true_pose: Path | None, C):
    """(4, 4) the true rig_to_world of ``--true-pose`` (a rig result, or the start view's camera_to_world
    whose camera_to_rig is ``C``), or None."""
    from xraypose.register.multiview import rig_start

    if true_pose is None:
        return None
    kind, T = read_start_file(true_pose)
    return T if kind == "rig_to_world" else rig_start(T, C)


def _write(output: Path, out, images, volume: Volume, extra: dict, no_trajectory: bool, masks=None) -> None:
    from xraypose.register.multiview import write_rig_registration

    write_or_print(lambda: write_rig_registration(output, out, images=images, volume=volume, extra=extra,
                                                  trajectory=not no_trajectory, masks=masks),
                   "rig_to_world", out.rig_to_world)


def _print_result(output: Path, out, n_views: int) -> int:
    """Print what was written and each view's verdict; the exit code (3 when the combined verdict is failed)."""
    msg = (f"wrote {output}/pose.json and views.png: {n_views} views, similarity {out.similarity:.4f} (mean), "
           f"{out.status}, {out.iterations} iterations, optimisation {out.opt_s:.2f} s")
    if out.metrics is not None:
        msg += f"; mTRE {out.metrics['mtre']:.3f} mm (start {out.initial_metrics['mtre']:.2f} mm)"
    typer.echo(msg)
    for v in out.views:
        typer.echo(f"  view {v.name}: {v.verdict} (P {v.p_success:.2f}): {v.reason}")
        if v.spread:
            typer.echo("    " + spread_line(v.spread, beam="this view's beam"))
    typer.echo(f"verdict: {out.verdict} (P(mTRE < 2 mm) = {out.p_success:.2f}, the least trusted view's): {out.reason}")
    return EXIT_FAILED if out.verdict == "failed" else 0
