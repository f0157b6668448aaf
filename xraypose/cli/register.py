"""``xraypose register CT XRAY [--model M | --init ...] -o OUTDIR``: the CLI layer over :mod:`xraypose.register`.

One X-ray is registered here; several tied by a rig (``--rig``) in :mod:`xraypose.cli.rig`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from xraypose.cli.config import config_option
from xraypose.cli.options import (ALLOW_OTHER_CT, CT, EXIT_FAILED, HYPOTHESES, PARAMETERIZATION, Group,
                                  check_counts_input, counts_options, intrinsics_options, option_numbers,
                                  preprocessing_options, registration_options, start_options, structure_options,
                                  with_groups)
from xraypose.cli.steps import (check_output_beside_xrays, drr_blur, load_registration_ct, metric_fiducials,
                                preprocess_settings, spread_line, structure_record, window_views, write_or_print)
from xraypose.errors import InputError

if TYPE_CHECKING:
    from xraypose.volume import Volume

XRAYS = typer.Argument(..., metavar="XRAY...", help="X-ray: DICOM, or PNG/TIFF/NPY with intrinsics (options or a "
                       "sidecar JSON). Several X-rays of one moment: with --rig.")
OUTPUT = typer.Option(..., "-o", "--output", help="Output folder: pose.json, metrics.json (with --true-pose), "
                      "trajectory.json and views.png (each X-ray, the DRR at the result, its edges on the X-ray, "
                      "the verdict); an earlier result there is replaced (its files this run does not write are "
                      "removed).")
RIG = typer.Option(None, "--rig", help="rig.json tying several X-rays (camera_to_rig per X-ray; docs/datasets.md "
                   "§8.3), or 'angles' (the X-rays' own C-arm angles): one rig_to_world is registered for all views.")
START_VIEW = typer.Option(None, "--start-view", help="With --rig: the view the start (model, angles, --pose-json "
                          "camera_to_world, ap) is for (default: the first X-ray).")
ANTIPODAL = typer.Option(False, "--antipodal", help="Also try the start seen from the other side (AP/PA confusion).")
TRUE_POSE = typer.Option(None, "--true-pose", help="Ground-truth pose JSON: write metrics.json.")
FIDUCIALS = typer.Option(None, "--fiducials", help="3D fiducials (world mm; .json/.npy/.csv) for the metrics "
                         "(default: 20 picked on bone).")
REVERSE_X_AXIS = typer.Option(None, "--reverse-x-axis/--no-reverse-x-axis", help="Mirrored detector columns.")
NO_TRAJECTORY = typer.Option(False, "--no-trajectory", help="Do not record/write the trajectory.")


@with_groups
def register_command(
    ct: str = CT,
    xrays: List[Path] = XRAYS,
    output: Path = OUTPUT,
    rig: Optional[str] = RIG,
    start_view: Optional[str] = START_VIEW,
    start_kw: dict = Group(start_options),
    antipodal: bool = ANTIPODAL,
    hypotheses: bool = HYPOTHESES,
    true_pose: Optional[Path] = TRUE_POSE,
    fiducials: Optional[Path] = FIDUCIALS,
    read_kw: dict = Group(intrinsics_options),
    reverse_x_axis: Optional[bool] = REVERSE_X_AXIS,
    prep: dict = Group(preprocessing_options),
    parameterization: str = PARAMETERIZATION,
    cfg_kw: dict = Group(registration_options),
    no_trajectory: bool = NO_TRAJECTORY,
    allow_other_ct: bool = ALLOW_OTHER_CT,
    structure_kw: dict = Group(structure_options),
    counts_kw: dict = Group(counts_options),
    config: Optional[Path] = config_option("register"),
) -> None:
    """Find the C-arm pose of an X-ray by registering it to a CT (several X-rays tied by a rig: --rig).

    Prints the verdict (ok | uncertain | failed), P(mTRE < 2 mm) and the reason; exits with code 3
    when the verdict is failed (the flagged result is still written).

    Examples:

    xraypose register ct.nii.gz xray.dcm --model model.pt -o result/

    xraypose register ct.nii.gz cam01.tif cam02.tif --rig rig.json --pose-json start.json -o result/
    """
    common = dict(ct=ct, output=output, **start_kw, true_pose=true_pose, fiducials=fiducials, **prep,
                  no_trajectory=no_trajectory, allow_other_ct=allow_other_ct, **structure_kw,
                  read_kw={**read_kw, "reverse_x_axis": reverse_x_axis})
    cfg_kw = {**cfg_kw, "parameterization": parameterization, "record_trajectory": not no_trajectory}
    if counts_kw["on"]:  # before anything is read
        check_counts_input(None, rig is not None or len(xrays) > 1, structure_kw)
    if rig is not None or len(xrays) > 1:
        _register_views(xrays, rig, start_view, antipodal, cfg_kw, common)
    else:
        if start_view is not None:
            raise InputError("--start-view needs --rig (several X-rays)")
        _register_one(xrays[0], antipodal=antipodal, hypotheses=hypotheses, cfg_kw=cfg_kw, counts_kw=counts_kw,
                      **common)


def _register_views(xrays, rig, start_view, antipodal: bool, cfg_kw: dict, common: dict) -> None:
    """Several X-rays tied by ``--rig``: :func:`xraypose.cli.rig.run_register_rig`; exits with its code."""
    if rig is None:
        raise InputError(f"{len(xrays)} X-rays given: tie them with --rig rig.json (or --rig angles), or "
                         "register them one at a time")
    if antipodal:
        raise InputError("--antipodal is not available with --rig")
    from xraypose.cli.rig import run_register_rig

    code = run_register_rig(xrays=xrays, rig=rig, start_view=start_view, cfg_kw=cfg_kw, **common)
    if code:
        raise SystemExit(code)


def _register_one(xray: Path, *, ct: str, output: Path, init: str, model, pose_json, angles, sod, isocenter,
                  antipodal: bool, hypotheses: bool, true_pose, fiducials, read_kw: dict, crop: int, blur: float,
                  size: int, i0, resample_domain: str, cfg_kw: dict, no_trajectory: bool, allow_other_ct: bool,
                  structure, label_map, label, counts_kw: dict | None = None) -> None:
    """One X-ray: read, start, preprocess, register (a structure's window and weights), refine on its counts
    (``--counts``), write, print."""
    from xraypose.io import check_output_folder
    from xraypose.register import RegistrationConfig
    from xraypose.register.api import RESULT_FILES, register_xray

    check_output_folder(output, replaces=RESULT_FILES)  # before computing: a re-run replaces its earlier result only
    check_output_beside_xrays(output, RESULT_FILES)
    cts = load_registration_ct(ct, isocenter, cfg_kw["density"], structure, label_map, label)
    cfg_kw = cts.settings(cfg_kw)  # a part of the CT: its settings (the X-rays windowed and weighted below)
    xr = _read_xray(xray, angles, sod, read_kw, crop)
    counts_kw = counts_kw or {"on": False}
    if counts_kw["on"]:
        check_counts_input(xr.kind, False, {})
    start, init_info = _start(init, xr, xray, model=model, vol=cts.volume, pose_json=pose_json, sod=sod,
                              iso=cts.isocenter, allow_other_ct=allow_other_ct,
                              foreign_steps=cfg_kw.get("foreign_steps", 12.0))
    px = xr.preprocess(**preprocess_settings(xr.shape, crop, blur, size, i0, resample_domain))
    cfg = RegistrationConfig(drr_blur=drr_blur(blur, px.shape[0], xr.shape[0], crop), **cfg_kw)
    truth = _true_pose(true_pose)
    fid = metric_fiducials(fiducials, truth)
    reg = cts.registrar(cfg)
    px, weights, start = _window(px, start, cts, xray)
    out = register_xray(cts.volume, px.image, px.camera, start, registrar=reg, antipodal=antipodal, true_pose=truth,
                        fiducials=fid, hypotheses=hypotheses, masks=weights)[0]
    extra = {"ct": ct, "xray": px.to_dict(), "init": init_info}
    if counts_kw["on"]:
        extra["counts"] = _refine_on_counts(out, xr, px, cts, crop, counts_kw)
    if cts.prepared.notes:
        extra["ct_notes"] = cts.prepared.notes
    if (record := structure_record(structure, label_map, label)) is not None:
        extra["structure"] = record
    _write(output, out, extra, no_trajectory, picture=dict(image=px.image, volume=cts.prepared.volume,
                                                             mask=px.mask, name=xray.name))
    _print_result(output, out)


#: ``register --counts``: a refinement that moves the registered pose further than this (mm:
#: :attr:`~xraypose.register.counts.CountsFit.moved_mm`, an mTRE between the two poses at six points 50 mm
#: from the isocenter) turns an ``ok`` verdict ``uncertain``: the counts and the similarity disagree by more than the
#: verdict's own 2 mm.
COUNTS_MOVED_UNCERTAIN_MM = 2.0


def _refine_on_counts(out, xr, px, cts, crop: int, counts_kw: dict) -> dict:
    """``--counts``: the registered pose ``out`` (of the preprocessed ``px``) refined on the raw X-ray ``xr``'s
    counts (:func:`~xraypose.register.counts.refine_xray_on_counts`; the raw camera's pose is the registered
    one through preprocessing's pose transform).  ``out``'s pose (and metrics) replaced in place, the
    registered pose kept in the record; an ``ok`` moved further than :data:`COUNTS_MOVED_UNCERTAIN_MM` becomes
    ``uncertain``.  A ``failed`` result is refined too (the check renders no scatter, so a scattered X-ray's
    right pose can read failed) and takes its refined pose only where the fit converged and explains the counts
    down to their photon noise (:data:`~xraypose.register.counts.COUNTS_EXPLAINED_CHI2`): then ``uncertain``
    (never ``ok``: an explained image does not pin the depth, a fit 3 mm off along the beam can explain it
    too); else it stays ``failed`` with its registered pose, the fit recorded (``admitted`` false).  Returns the
    record for pose.json."""
    import torch

    from xraypose.cli.steps import pose_transform_of
    from xraypose.register.api import registration_metrics
    from xraypose.register.counts import COUNTS_EXPLAINED_CHI2, admit_failed, refine_xray_on_counts
    from xraypose.register.motion import pose_spread

    to_view = pose_transform_of(px.steps)
    registered = out.camera_to_world.to(torch.float64)
    scatter = counts_kw["scatter_mm"]
    r = refine_xray_on_counts(cts.volume, xr.camera, xr.image, registered @ torch.linalg.inv(to_view),
                              isocenter=cts.isocenter, crop=crop, renderer=counts_kw["renderer"],
                              air_hu=counts_kw["air_hu"], blur_px=counts_kw["blur"], scatter_mm=scatter,
                              supersample=counts_kw["supersample"], max_side=counts_kw["max_side"])
    chi2 = r.fit.chi2_per_pixel
    typer.echo(f"counts: moved {r.fit.moved_mm:.2f} mm in {r.fit.iterations} steps, {r.seconds:.0f} s "
               f"(formation {r.formation.describe(r.camera.delx)}; {r.bin}×{r.bin} pixels binned"
               + (f", the formation chosen at {r.search_bin}×{r.search_bin}" if r.search_bin not in (None, r.bin) else "")
               + ("" if chi2 is None else f"; χ² {chi2:.2f} a pixel") + ")")
    base = {"refined": True, **r.to_dict(), "registered_camera_to_world": registered.tolist(),
            "explained": r.fit.explained,
            "chosen": {k: counts_kw[k] is None for k in ("renderer", "air_hu", "blur", "scatter_mm")}}
    if out.verdict != "failed" and not r.fit.explained and chi2 is not None:
        typer.echo(f"note: the counts' model leaves more than photon noise (χ² {chi2:.2f} a pixel > "
                   f"{COUNTS_EXPLAINED_CHI2:g}): the X-ray holds what it lacks (a formation, content not in the CT) "
                   "— the refined pose rests on a model that does not fit it; look at the overlay")
    if out.verdict == "failed":
        if not admit_failed(r.fit):
            why = ("did not converge" if not r.fit.converged else "measured no χ²" if chi2 is None else
                   f"does not explain the counts (χ² {chi2:.2f} a pixel > {COUNTS_EXPLAINED_CHI2:g})")
            typer.echo(f"counts: the verdict stays failed, the registered pose stands (the counts' fit {why})")
            return {**base, "admitted": False, "camera_to_world": out.camera_to_world.tolist(),  # the registered
                    "refined_camera_to_world": (r.fit.pose @ to_view).tolist()}  # the fit's, not taken
        out.verdict = "uncertain"
        out.reason = (f"the check alone said failed ({out.reason}); refined on its counts, the model explains the "
                      f"X-ray down to its photon noise (χ² {chi2:.2f} a pixel ≤ {COUNTS_EXPLAINED_CHI2:g})")
        base["admitted"] = True
    out.camera_to_world = (r.fit.pose @ to_view).to(out.camera_to_world.dtype)
    # the refined pose's own uncertainty: its counts' inverse Fisher information (the Cramér–Rao bound), unscaled
    sp = pose_spread(r.fit.covariance, r.fit.pose) if r.fit.covariance is not None else None
    out.spread = None if sp is None else {**sp, "noise_scale": 1.0, "source": "counts"}
    registered_metrics = out.metrics
    if out.metrics is not None:  # the truth known: the same fiducials as the registration's metrics
        fid = torch.tensor(out.extra["fiducials"], dtype=torch.float64)
        out.metrics = registration_metrics(out.camera_to_world, torch.tensor(out.extra["true_pose"]), fid, out.camera)
    moved = r.fit.moved_mm  # from the registered pose, at the anatomy (the pose transform does not change it)
    if out.verdict == "ok" and moved > COUNTS_MOVED_UNCERTAIN_MM:
        out.verdict = "uncertain"
        out.reason = (f"the counts moved the registered pose {moved:.1f} mm (> {COUNTS_MOVED_UNCERTAIN_MM:g}); "
                      f"registered: {out.reason}")
    return {**base, "camera_to_world": out.camera_to_world.tolist(),  # pose.json's camera
            **({"registered_metrics": registered_metrics} if registered_metrics is not None else {})}


def _read_xray(xray: Path, angles: str | None, sod, read_kw: dict, crop: int):
    """The X-ray (:func:`xraypose.xray.read_xray`, ``--angles`` and ``--sod`` over its header), with
    intrinsics and registrable once cropped."""
    from xraypose.limits import check_registrable_xray
    from xraypose.xray import read_xray

    prim = sec = None
    if angles is not None:
        prim, sec = option_numbers("angles", angles)
    xr = read_xray(xray, **read_kw, primary=prim, secondary=sec, sod=sod)
    if xr.camera is None:
        raise InputError(f"{xray}: no intrinsics; give --sdd and --delx")
    check_registrable_xray(xr.shape, str(xray), crop)
    from xraypose.xray.record import notes_to_show

    for n in notes_to_show(xr.notes):  # part of the image not used: said where the user looks, not only in pose.json
        typer.echo(f"note: {xray}: {n}")
    return xr


def _start(init: str, xr, xray: Path, *, model, vol: Volume, pose_json, sod, iso, allow_other_ct: bool,
           foreign_steps: float | None = 12.0):
    """(start, what the result records of it): a (1, 4, 4) camera_to_world, or (``--init model``) an
    initialiser ``init(image (1, 1, H, W), camera) -> (1, 4, 4)``."""
    from xraypose.register.initializers import ModelInitializer, pose_from_json
    from xraypose.register.starts import ap_pose

    if init == "model":
        return (ModelInitializer.from_checkpoint(model, vol, allow_other_ct=allow_other_ct, foreign_steps=foreign_steps),
                {"kind": "model", "model": str(model)})
    if init == "pose":
        return pose_from_json(pose_json), {"kind": "pose", "file": str(pose_json)}
    if init == "angles":
        if not xr.angles:
            raise InputError(f"{xray} holds no C-arm angles: give --angles PRIMARY,SECONDARY and --sod, "
                             "--pose-json, or --model")
        if xr.angles.get("sod") is None:
            raise InputError(f"{xray}: C-arm angles but no source-to-isocenter distance (DistanceSourceToPatient): "
                             "give --sod MM")
        # crop / blur / log / resize do not move the camera
        return xr.initial_pose(iso).reshape(1, 4, 4), {"kind": "angles", "angles": xr.angles}
    T, d = ap_pose(iso, xr.camera.sdd, sod, "the X-ray's", str(xray))
    return T.reshape(1, 4, 4), {"kind": "ap", "sod_mm": d}


def _true_pose(true_pose: Path | None):
    """(1, 4, 4) the ``--true-pose`` camera_to_world (crop / blur / log / resize do not move the camera), or None."""
    from xraypose.register.initializers import pose_from_json

    return None if true_pose is None else pose_from_json(true_pose)


def _window(px, start, cts, xray: Path):
    """(X-ray, pixel weights, start): a part of the CT crops the X-ray to where it projects at the start
    (a model's start is evaluated for that) and weights it there; else the preprocessing's mask (a
    saturated plateau, a collimator's shadow) or None."""
    import torch

    if not cts.part:
        return px, px.mask, start
    if callable(start):
        start = start(px.image[None, None], px.camera)
    pxw, ws = window_views([px], [torch.as_tensor(start, dtype=torch.float64).reshape(-1, 4, 4)[0]], cts.prepared,
                           [str(xray)])
    return pxw[0], ws[0], start


def _write(output: Path, out, extra: dict, no_trajectory: bool, picture: dict | None = None) -> None:
    from xraypose.register.api import write_registration

    write_or_print(lambda: write_registration(output, out, extra=extra, trajectory=not no_trajectory,
                                              **(picture or {})),
                   "camera_to_world", out.camera_to_world)


def _print_result(output: Path, out) -> None:
    """Print what was written and the verdict; exit with :data:`~xraypose.cli.options.EXIT_FAILED` when it failed."""
    msg = (f"wrote {output}/pose.json: similarity {out.similarity:.4f}, {out.status}, {out.iterations} iterations, "
           f"init {out.init_s:.2f} s, optimisation {out.opt_s:.2f} s")
    if out.metrics is not None:
        msg += f"; mTRE {out.metrics['mtre']:.3f} mm (start {out.initial_metrics['mtre']:.2f} mm)"
    typer.echo(msg)
    typer.echo(f"verdict: {out.verdict} (P(mTRE < 2 mm) = {out.p_success:.2f}): {out.reason}")
    if out.spread:
        typer.echo(spread_line(out.spread))
    if out.verdict == "failed":
        raise SystemExit(EXIT_FAILED)
