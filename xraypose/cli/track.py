"""``xraypose track CT FRAMES… -o OUT``: a pose per frame of a sequence
(:func:`xraypose.register.tracking.track_sequence`), one view or several tied by a rig (biplane), started
as ``register`` starts (:mod:`xraypose.cli.steps`).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from xraypose.cli.config import config_option
from xraypose.cli.options import (ALLOW_OTHER_CT, COUNTS_EVERY, CT, EDGE_ENHANCED, EXIT_FAILED, MATCH_INTENSITY,
                                  METAL, METAL_STEPS, REGISTRATION_DEFAULTS, SCATTER, SEED, Group, appearance_settings,
                                  intrinsics_options, check_counts_input, counts_options, levels_config, preprocessing_options,
                                  start_options, structure_options, with_groups)
from xraypose.cli.rig import RIG_FROM_ANGLES
from xraypose.cli.steps import (check_output_beside_xrays, drr_blur, load_registration_ct, pose_transform_of,
                                preprocess_settings, start_pose)
from xraypose.errors import InputError

if TYPE_CHECKING:
    from xraypose.volume import Volume

#: The files of a tracked sequence; a re-run into the same folder replaces them all.
TRACK_FILES = ("trajectory.csv", "trajectory.json", "overlay.gif")
#: Frames with fewer rows than this get a warning: the confidence check was fitted on 256-row
#: registrations, and on 128-row frames it called frames 2–5 mm off along the beam `ok`
#: (docs/benchmarks.md, "Multi-view and tracking").
CHECK_ROWS = 192
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
        folders = [str(f) for f in frames if Path(f).is_dir()]
        if len(frames) > 1 and folders:  # several sequences (one per view) are a rig's
            raise InputError(f"{folders[0]} is a folder (a sequence) among {len(frames)} arguments: several "
                             "sequences are a rig's views — give --rig rig.json — and one sequence is one folder, "
                             "one multi-frame file or several single-frame files")
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
    _check_view_times(views, seqs)
    cams = the_rig.cameras(views, [s.shape for s in seqs], [s.camera for s in seqs])
    return [v.name for v in views], seqs, cams, [v.camera_to_rig.to(F64) for v in views], the_rig


def _check_view_times(views, seqs) -> None:
    """Refuse a rig's sequences whose frame times (from each view's first frame) part by half a frame interval or
    more (cines of other frame rates: their frames n are not one moment, yet were tracked as one, and only the
    first view's times were written)."""
    timed = [(v, s) for v, s in zip(views, seqs) if s.times is not None and len(s) > 1]
    if len(timed) < 2:
        return
    (v0, s0) = timed[0]
    for v, s in timed[1:]:
        gap = (s.times - s0.times).abs()
        f = int(gap.argmax())
        if float(gap[f]) > 0.5 * s0.frame_interval_s:
            raise InputError(f"the views' frame times disagree: frame {f} is at {float(s0.times[f]):.4g} s in "
                             f"{v0.name} but {float(s.times[f]):.4g} s in {v.name} (frame intervals "
                             f"{1000 * s0.frame_interval_s:.4g} and {1000 * s.frame_interval_s:.4g} ms); a biplane "
                             "sequence needs one frame per view at every moment")


def _overlay_gif(volume: Volume, density: str, frames_views, results, rel) -> bytes:
    """An animated GIF: per frame, every view's frame (at most :data:`GIF_ROWS` rows) with the edges of the
    DRR at its tracked pose in orange, the views side by side.  ``frames_views``: per view (frames (F, 1, H, W),
    camera, preprocessing's (F, 1, H, W) masks or None); each frame's display window is taken inside its mask."""
    import imageio.v3 as iio
    import numpy as np
    import torch

    from xraypose.evaluate import PictureRenderer
    from xraypose.preprocess import resize
    from xraypose.viz import edges, normalise

    renderer = PictureRenderer(volume, density=density, n_samples=192)
    small = []
    for _imgs, cam, _masks in frames_views:
        h = min(GIF_ROWS, cam.height)
        w = max(1, round(cam.width * h / cam.height))
        small.append((h, w, cam.resize(h, w) if (h, w) != (cam.height, cam.width) else cam))
    out = []
    for fr in results:
        panels = []
        for i, ((imgs, cam, masks), (h, w, scam)) in enumerate(zip(frames_views, small)):
            x = imgs[fr.index, 0]
            m = None if masks is None else masks[min(fr.index, masks.shape[0] - 1), 0].to(torch.float32)
            if (h, w) != tuple(x.shape):
                x = resize(x, cam, h, w)[0]
                if m is not None:  # nearest: a pixel is trusted or not
                    m = torch.nn.functional.interpolate(m[None, None], size=(h, w), mode="nearest")[0, 0]
            T = fr.camera_to_world @ rel[i]
            d = renderer(scam, T[None])[0]
            g = normalise(x, m)  # the display window inside the frame's mask (a round field's shadow out)
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
        sp = fr.spread or {}
        for k in ("along_beam_mm", "across_beam_mm", "rotation_deg"):
            row[f"sd_{k}"] = "" if k not in sp else f"{sp[k]:.4g}"
        row["reason"] = fr.reason or ""
        row["vouched"] = int(fr.vouched)  # last: the columns before it keep their places (since 2026-12-05)
        rows.append(row)
        d = fr.to_dict()
        d[pose_name] = d.pop("camera_to_world")
        d["predicted_" + pose_name] = d.pop("predicted")
        d["registered_" + pose_name] = d.pop("registered")
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


FRAMES = typer.Argument(..., metavar="FRAMES...", help="The sequence: a multi-frame DICOM (XA/RF cine), a folder of "
                        "frames, a multi-page TIFF, or several files (one frame each). With --rig: one sequence per "
                        "view (e.g. the folders cam01/ cam02/).")
OUTPUT = typer.Option(..., "-o", "--output", help="Output folder: trajectory.csv, trajectory.json, overlay.gif (an "
                      "earlier sequence's are replaced).")
RIG = typer.Option(None, "--rig", help="rig.json tying the views (biplane sequences): each FRAMES argument is one "
                   "view's sequence; the poses are rig_to_world.")
START_VIEW = typer.Option(None, "--start-view", help="With --rig: the view the start is for (default: the first).")
DENSITY = typer.Option(REGISTRATION_DEFAULTS.density, "--density",
                       help="linear | hu | physical | raw (a TIFF bone volume: raw).")
LEVELS = typer.Option(None, "--levels", help="Schedule of the first frame (and re-initialisations).")
FAST = typer.Option(False, "--fast", help="A cheaper schedule for the first frame (previews).")
MOTION = typer.Option("smooth", "--motion", help="smooth | filter | none: each frame's pose pooled with the "
                      "others' by a constant-velocity motion model (the Kalman smoother over the whole sequence — its "
                      "noise fitted to the sequence, trajectory.json's summary motion_fit —, the causal filter), or "
                      "each frame's registration alone (recorded beside it in trajectory.json either way).")
BLUR_COEFFICIENT = typer.Option(None, "--blur-coefficient", help="The detector's intensity-domain blur held fixed "
                                "for every frame: a number <= 0 per pixel² of the preprocessed frames "
                                "(RegistrationConfig.blur_coefficient), calibrated where the pose is known "
                                "(Registrar.measure_blur). Off by default: a sequence cannot measure it on itself "
                                "(docs/registration.md, \"The detector's blur\").")
PREDICT_BLUR = typer.Option(False, "--predict-blur", help="Predict the detector's blur coefficient instead: frame 0 "
                            "of the start view registered from the start, a noiseless X-ray formed by xraypose's "
                            "simulator at that pose on the frames' detector (0.7 px intensity blur, the frames' "
                            "preprocessing and binning), and the coefficient read on it at that pose "
                            "(xraypose.register.blur_prediction; recorded in trajectory.json); predicted again "
                            "whenever a trusted frame's view has turned by --blur-turn degrees. Not with "
                            "--blur-coefficient.")
BLUR_TURN = typer.Option(None, "--blur-turn", help="With --predict-blur: the turn of the view (degrees, > 0) after "
                         "which the blur coefficient is predicted again (default 5; 0: once, at frame 0).")
AIR_FLOOR = typer.Option(None, "--air-floor", help="HU: the frames after the first render the CT's air as nothing "
                         "where the CT, averaged to a level's voxels, reads at most this (e.g. -975): the renderer "
                         "skips it — on a 512×512×134 abdomen the frames took 13 % less time, and 1–7 points fewer "
                         "lay below 1 mm on seven of eleven benchmark trajectories. Off by default.")
TRACK_THREADS = typer.Option(None, "--threads", help="CPU threads (default: 2 on a machine with two CPUs or more, "
                             "else 1: each frame's check runs beside the next frame's registration, and with two "
                             "threads a 512×512×134 abdomen's frames took 0.19 s instead of 0.26 s, the bundled "
                             "pelvis's as long). 1: one thread for everything, the check after each frame.")


def track_threads(threads: int | None) -> int:
    """``xraypose track``'s threads: ``threads`` when given, else 2 where the machine has two CPUs or more, else 1
    (docs/cli.md, ``track``).  With 1 the check does not run beside the next frame (a second thread): everything
    track runs is one thread."""
    import os

    return threads if threads is not None else min(2, os.cpu_count() or 1)


RESUME = typer.Option(False, "--resume", help="Go on from the frames an earlier run left in the output folder "
                      "(trajectory.partial.jsonl: a crash, a kill, Ctrl-C): they are kept as they are, the motion "
                      "model rebuilt from them, the rest tracked. The inputs and the options that change results must "
                      "be those of that run (a difference is refused, naming it).")
CONFIDENCE = typer.Option(True, "--confidence/--no-confidence", help="Check every frame (the verdict decides "
                          "re-initialisations); without it a similarity drop does.")


@with_groups
def track_command(
    ct: str = CT,
    frames: List[Path] = FRAMES,
    output: Path = OUTPUT,
    rig: Optional[str] = RIG,
    start_view: Optional[str] = START_VIEW,
    start_kw: dict = Group(start_options),
    read_kw: dict = Group(intrinsics_options),
    prep: dict = Group(preprocessing_options),
    density: str = DENSITY,
    levels: Optional[str] = LEVELS,
    fast: bool = FAST,
    metal: bool = METAL,
    metal_steps: bool = METAL_STEPS,
    match_intensity: str = MATCH_INTENSITY,
    edge_enhanced: bool = EDGE_ENHANCED,
    scatter: bool = SCATTER,
    motion: str = MOTION,
    blur_coefficient: Optional[float] = BLUR_COEFFICIENT,
    predict_blur: bool = PREDICT_BLUR,
    blur_turn: Optional[float] = BLUR_TURN,
    air_floor: Optional[float] = AIR_FLOOR,
    counts_kw: dict = Group(counts_options),
    counts_every: int = COUNTS_EVERY,
    confidence: bool = CONFIDENCE,
    resume: bool = RESUME,
    seed: int = SEED,
    threads: Optional[int] = TRACK_THREADS,
    allow_other_ct: bool = ALLOW_OTHER_CT,
    structure_kw: dict = Group(structure_options),
    config: Optional[Path] = config_option("track"),
) -> None:
    """Track a sequence (fluoroscopy, cine, biplane video): a pose per frame, each from the previous ones.

    Frame 0 is registered with the whole schedule; every later frame from a constant-velocity
    prediction with the finest levels only; a frame whose verdict is failed is registered again
    from the last good pose. Each frame's pose is then pooled with the others' by a motion model
    (--motion; one view sees depth only as magnification, and the frames' own depths scatter).
    Prints a line per frame; exits with code 3 when a frame's verdict is failed (everything is
    still written).

    Examples:

    xraypose track ct.nii.gz run.dcm --pose-json start.json -o track/

    xraypose track ct.nii.gz cam01/ cam02/ --rig rig.json --pose-json start.json -o track/
    """
    from xraypose.io import check_output_folder
    from xraypose.register import RegistrationConfig
    from xraypose.register.multiview import rig_start

    _check_track_options(rig, start_view, predict_blur, blur_coefficient, blur_turn, motion, counts_kw["on"],
                         counts_every)
    cfg_kw = {"density": density, "seed": seed, "num_threads": track_threads(threads), "record_trajectory": False,
              "blur_coefficient": blur_coefficient,
              **appearance_settings(metal_steps, match_intensity),
              **levels_config(levels, fast, metal, edge_enhanced, scatter)}
    counts = counts_kw["on"]
    check_output_folder(output, replaces=TRACK_FILES)  # a re-run replaces its result, never a user's file
    check_output_beside_xrays(output, TRACK_FILES)
    earlier = _earlier_run(output, resume)
    names, seqs, cams, Cs, the_rig = read_sequences(frames, rig, read_kw)
    if counts:
        check_counts_input(seqs[0].frames[0].kind, the_rig is not None, structure_kw, "frame")
    r = _start_view_index(start_view, names, frames)
    cts = load_registration_ct(ct, start_kw["isocenter"], density, **structure_kw)
    cfg_kw = cts.settings(cfg_kw)  # a part of the CT: its settings (the X-rays windowed and weighted below)
    views, first = _preprocess_sequences(names, seqs, cams, Cs, **prep)
    cfg = RegistrationConfig(drr_blur=drr_blur(prep["blur"], first[0].shape[0], seqs[0].shape[0], prep["crop"]),
                             **cfg_kw)
    reg = cts.registrar(cfg)
    # what a resume must find unchanged (checked before the start is computed)
    from xraypose.cli.track_partial import PARTIAL, PartialFile, check_resumable, inputs_identity, partial_header

    n_frames = len(seqs[0])
    settings = {"registration": reg.config.to_dict(), "--rig": _file_id(rig), "--start-view": start_view,
                **_start_settings(start_kw), **_named(read_kw), **_named(prep),
                "--metal": metal, "--edge-enhanced": edge_enhanced, "--scatter": scatter, "--motion": motion,
                "--confidence": confidence, "--predict-blur": predict_blur, "--blur-turn": blur_turn,
                "--air-floor": air_floor, **_named(counts_kw, "counts"), "--counts-every": counts_every,
                "--structure": _file_id(structure_kw["structure"]), "--label-map": _file_id(structure_kw["label_map"]),
                "--label": structure_kw["label"]}
    header = partial_header(n_frames, "camera_to_world" if the_rig is None else f"camera_to_world of view {names[r]}",
                            inputs_identity(ct, frames), settings)
    kept = []
    if earlier is not None:
        check_resumable(output, earlier[0], header)
        kept = earlier[1][:n_frames]
        typer.echo(f"resuming {output}: {len(kept)} of {n_frames} frames kept from its {PARTIAL}")
    s = start_kw
    start, info = start_pose(s["init"], px=first[r], camera_to_rig=views[r][2], view=names[r], model=s["model"],
                             vol=cts.volume, pose_json=s["pose_json"], angles=s["angles"], sod=s["sod"],
                             iso=cts.isocenter, allow_other_ct=allow_other_ct,
                             foreign_steps=cfg_kw["foreign_steps"])
    if callable(start):
        start = rig_start(start(views[r][0][:1], views[r][1])[0], views[r][2])
    windows = None
    if cts.part:  # the frames windowed where the part projects, weighed by its footprint at every start
        views, windows = _structure_views(views, start, cts.prepared, names)
    blur = blur_prediction = None
    if predict_blur:
        from xraypose.register.tracking import BLUR_TURN_DEG

        turn = BLUR_TURN_DEG if blur_turn is None else blur_turn
        blur, blur_prediction = _blur_predictor(reg.derive(levels=_later_levels(metal, edge_enhanced, scatter)), cts.volume, cams[r], seqs[r],
                                                first[r], prep, turn)
    if blur_prediction is not None and kept:
        blur_prediction["predictions"] = _kept_predictions(kept)
    from xraypose._interrupt import stop_requests
    from xraypose.io import make_output_folder

    partial = PartialFile(make_output_folder(output), header, kept)
    with stop_requests() as stop:  # Ctrl-C: the frame under way ends, the frames tracked are written (exit 130)
        # the check beside the next frame is a second thread: only with two threads or more (--threads 1 ran it
        # beside the registration all the same wherever the machine had two CPUs)
        res, pose_name, to_rig = _track(reg, views, r, start, the_rig is not None, confidence, seqs, metal, motion,
                                        edge_enhanced, scatter=scatter, part=cts.part,
                                        overlap_check=track_threads(threads) >= 2,
                                        blur=blur, blur_turn_deg=(blur_prediction or {}).get("turn_deg"),
                                        air_floor_hu=air_floor, should_stop=lambda: stop.requested,
                                        checkpoint=partial.append, resume=kept)
    interrupted = stop.requested and len(res) < n_frames
    if stop.requested and not res:
        raise KeyboardInterrupt  # nothing tracked: nothing to write
    record_counts = None
    if counts and not interrupted:
        record_counts = _refine_on_counts(res, seqs[0], cams[0], views[0][2], cts, prep["crop"], counts_kw, motion,
                                          counts_every)
    doc = _trajectory_document(ct, pose_name, names, seqs, views, the_rig is not None, info, start, cts, res, reg,
                               metal, motion)
    _add_run_records(doc, res, names, first, counts=record_counts,
                     interrupted_of=n_frames if interrupted else None, blur_prediction=blur_prediction,
                     windows=windows)
    times = next((sq.times for sq in seqs if sq.times is not None), None)  # the views' agree (_check_view_times)
    try:
        _write(output, res, times, names, to_rig, pose_name, doc, cts.prepared.volume, cfg_kw["density"], views,
               done=None if interrupted else partial.remove)
    except SystemExit:  # a failed frame's exit code: an interruption's (130) says more
        if not interrupted:
            raise
    if interrupted:
        typer.echo(f"interrupted after {len(res)} of {n_frames} frames: the trajectory so far is written to {output} "
                   "(trajectory.json's \"interrupted\" says so)", err=True)
        raise KeyboardInterrupt


def _check_track_options(rig, start_view, predict_blur: bool, blur_coefficient, blur_turn, motion: str,
                         counts: bool = False, counts_every: int = 1) -> None:
    """``xraypose track``'s options that contradict each other, or an unknown ``--motion``: a one-line error."""
    from xraypose.register.motion import MOTIONS

    if counts_every != 1 and not counts:
        raise InputError("--counts-every says which frames --counts refines: give --counts too")

    if start_view is not None and rig is None:
        raise InputError("--start-view needs --rig")
    if predict_blur and blur_coefficient is not None:
        raise InputError("--predict-blur predicts the blur coefficient: give it or --blur-coefficient, not both")
    if blur_turn is not None and not predict_blur:
        raise InputError("--blur-turn says when --predict-blur predicts again: give --predict-blur too")
    if motion not in MOTIONS:
        raise InputError(f"--motion must be one of {', '.join(MOTIONS)}, got {motion!r}")


def _add_run_records(doc: dict, res, names, first, *, counts: dict | None, interrupted_of: int | None,
                     blur_prediction: dict | None, windows) -> None:
    """Into trajectory.json's ``doc``: how each view's frames were preprocessed (the ``first`` frame's steps:
    crop, the log and its half photon, the resize and its order, the blur; every frame of a view gets the same
    settings), and where they apply the ``--counts`` record, the interruption (after ``len(res)`` of
    ``interrupted_of`` frames), the blur's predictions (dated by the frames ``res``) and a structure's windows."""
    doc["preprocessing"] = [{"view": n, "first_frame_steps": px.steps} for n, px in zip(names, first)]
    if counts is not None:
        doc["counts"] = counts
    if interrupted_of is not None:
        doc["interrupted"] = {"frames_tracked": len(res), "frames": interrupted_of}
    if blur_prediction is not None:
        _date_predictions(blur_prediction, res)
        doc["blur_prediction"] = blur_prediction
    if windows is not None:
        doc["structure_windows"] = windows


def _earlier_run(output: Path, resume: bool):
    """With ``resume``: (header, frame records) of the partial file an earlier run left in ``output``
    (:mod:`xraypose.cli.track_partial`; none there: refused, saying what the folder holds instead).  Without it:
    None, and a note where such a file is there (tracking from frame 0 replaces it)."""
    from xraypose.cli.track_partial import PARTIAL, nothing_to_resume, read_partial

    if resume:
        earlier = read_partial(output) if Path(output).is_dir() else None
        if earlier is None:
            raise nothing_to_resume(output)
        return earlier
    if (Path(output) / PARTIAL).is_file():
        typer.echo(f"note: {output} holds the frames of an unfinished run ({PARTIAL}); tracking from frame 0 "
                   "replaces them (--resume goes on from them)")
    return None


def _file_id(path) -> str | None:
    """An input file named by its absolute path and content hash (``evaluate``'s: a resume with another file is
    refused); None for an option not given."""
    from xraypose.cli.evaluate import file_id

    return None if path is None else file_id(Path(path))


def _start_settings(start_kw: dict) -> dict:
    """The start options as a partial file records them (checked on a resume): the files by their content."""
    return {"--init": start_kw["init"], "--model": _file_id(start_kw["model"]),
            "--pose-json": _file_id(start_kw["pose_json"]), "--angles": start_kw["angles"], "--sod": start_kw["sod"],
            "--isocenter": start_kw["isocenter"]}


def _named(group: dict, prefix: str | None = None) -> dict:
    """An option group's values under their options' names (``{"resample_domain": v}`` → ``{"--resample-domain":
    v}``; with ``prefix`` "counts", ``on`` → ``--counts`` and ``blur`` → ``--counts-blur``)."""
    def name(k: str) -> str:
        if prefix and k == "on":
            return f"--{prefix}"
        return "--" + (f"{prefix}-" if prefix else "") + k.replace("_", "-")

    return {name(k): v for k, v in group.items()}


def _kept_predictions(records: list) -> list:
    """The blur predictions (``{"coefficient", "pose"}``, as :func:`_blur_predictor` records them) held by the
    frames a resume keeps: one per pose the coefficient was predicted at, in order."""
    out = []
    for rec in records:
        b = rec.get("blur") or {}
        if b.get("predicted_at") is not None and (not out or out[-1]["pose"] != b["predicted_at"]):
            out.append({"coefficient": b["coefficient"], "pose": b["predicted_at"]})
    return out


def _refine_on_counts(res, seq, camera, camera_to_view, cts, crop: int, counts_kw: dict, motion: str,
                      every: int = 1) -> dict:
    """``--counts``: every frame (``every`` K > 1: frames 0, K, 2K, …, the last and each one the check called
    ``uncertain`` or ``failed``) refined on its raw counts from its tracked
    pose (poses of the preprocessed frames' camera ↔ the raw camera's through preprocessing's
    ``camera_to_view``), then pooled by the motion model (``motion``: ``pool_fits``, each fit with its counts'
    covariance; with K > 1 every frame's tracked registration but a doubted frame's is a measurement too, fused
    with the fit where a frame has both, under the tracker's motion model — ``res.measurements``,
    ``res.motion_model``); the frames'
    ``camera_to_world`` replaced, the tracked pose, the fit and the frame's own refined pose in ``extra``.
    A ``failed`` frame is refined too (never the one the formation is chosen on; its coefficients start no other)
    and counts only where its fit pins the pose and lands where the frames before it lead (``admit_doubtful``:
    converged, within ``ADMIT_SD``, the motion model's gate); then it is
    ``uncertain`` (the check alone said failed), else it stays ``failed``, its fit recorded (``admitted``
    false), its pose the smoother's between refined frames (``pool_fits``) or, outside them, the tracked one.
    Returns the record."""
    import time

    import torch

    from xraypose.register.counts import (admit_doubtful, counts_bin_for, frames_to_refine, pool_fits,
                                          refine_sequence, registrations_to_pool)

    # as register --counts: a 512² frame refined at 128² (--counts-max-side 64: 64²)
    b = counts_bin_for((camera.height, camera.width), counts_kw["max_side"])
    pixel_mm = float(camera.delx) * b  # the counts' (binned) pixels: --counts-blur's unit
    to_view = camera_to_view.to(torch.float64)
    to_raw = torch.linalg.inv(to_view)
    blur, air_hu, scatter_mm, renderer = (counts_kw[k] for k in ("blur", "air_hu", "scatter_mm", "renderer"))
    supersample = counts_kw["supersample"]  # None: chosen on the first frame (denser_rays)
    picked, doubted = frames_to_refine([fr.verdict for fr in res], every)
    starts = [fr.camera_to_world.to(torch.float64) @ to_raw if p else None for fr, p in zip(res, picked)]
    doubtful = [fr.verdict == "failed" and p for fr, p in zip(res, picked)]
    n_picked, rank = sum(picked), list(itertools.accumulate(map(int, picked)))
    t0 = time.perf_counter()

    def progress(i, fit):
        if not picked[i]:
            return
        k = rank[i]
        if fit is None:
            typer.echo(f"counts, frame {i + 1} ({k}/{n_picked} refined): failed, not refined (its counts not "
                       "readable, or no frame to choose the formation on): left as tracked")
        else:
            typer.echo(f"counts, frame {i + 1} ({k}/{n_picked} refined): moved {fit.moved_mm:.2f} mm in "
                       f"{fit.iterations} steps{'' if fit.converged else ' (not converged)'}"
                       f"{' (a failed frame)' if doubtful[i] else ''}")

    form, fits = refine_sequence(cts.volume, camera, [fr.image for fr in seq.frames], starts,
                                 isocenter=cts.isocenter, crop=crop, blur_px=blur, air_hu=air_hu,
                                 renderer=renderer, supersample=supersample, bin=b,
                                 scatter_px=None if scatter_mm is None else scatter_mm / pixel_mm,
                                 doubtful=doubtful, progress=progress)
    chosen = None in (blur, air_hu, scatter_mm, renderer)
    if not any(f is not None for f in fits):
        typer.echo("counts: no frame refined (every frame failed): the tracked poses stand")
    else:
        typer.echo(f"counts: formation {form.describe(pixel_mm)}{' (chosen on the first frame)' if chosen else ''}"
                   f"{f', counts of {b}×{b} pixels summed' if b > 1 else ''}")
    pool_kw = {}
    if every > 1 and res.measurements is not None:  # the registrations between the fits (the raw camera's poses);
        # a doubted frame's left out: its fit stands for it
        pool_kw = {"model": res.motion_model, "tracked": registrations_to_pool(res.measurements, doubted, to_raw)}
    kept = admit_doubtful(fits, doubtful, cts.isocenter, motion, **pool_kw)  # a failed frame's fit where it leads
    pooled = pool_fits(kept, cts.isocenter, motion, **pool_kw)  # each fit a measurement, its Fisher covariance
    for fr, fit, used, T, d in zip(res, fits, kept, pooled, doubtful):
        if fit is None and (T is None or not pool_kw):  # not refined: as tracked (K > 1: pooled where it can be)
            continue
        if fit is not None:
            fr.extra["counts"] = {**fit.to_dict(), "camera_to_world": (fit.pose @ to_view).tolist(),
                                  **({"admitted": used is not None} if d else {})}
        if fit is not None and used is None:  # a failed frame whose fit the sequence does not vouch for
            where = "left as tracked" if T is None else "its pose the smoother's between the refined frames"
            typer.echo(f"counts, frame {fr.index + 1}: failed, its counts' fit not where the motion model "
                       f"expects it: {where}")
        if T is None:
            continue
        fr.extra["tracked_camera_to_world"] = fr.camera_to_world.tolist()
        fr.camera_to_world = T @ to_view
        if d and used is not None:
            fr.verdict = "uncertain"
            fr.reason = (f"the check alone said failed ({fr.reason}); refined on its counts, the frame's pose is "
                         "pinned and lands where the motion model expects it")
    return {"blur_px": form.blur_px, "blur_estimated": blur is None, "renderer": form.renderer,
            "renderer_chosen": renderer is None, "air_hu": form.air_hu, "air_chosen": air_hu is None,
            "scatter_mm": form.scatter_px * pixel_mm, "scatter_chosen": scatter_mm is None,
            "supersample": form.supersample, "supersample_chosen": supersample is None, "bin": b, "pooled": motion,
            "every": every, "pooled_with_registrations": bool(pool_kw),
            "refined": sum(f is not None for f in fits),
            "failed_admitted": sum(d and k is not None for d, k in zip(doubtful, kept)),
            "failed_left": sum(d and k is None for d, k in zip(doubtful, kept)), "seconds": time.perf_counter() - t0}


def _later_levels(metal: bool, edge_enhanced: bool = False, scatter: bool = False) -> tuple:
    """The schedule of the frames after the first (with ``metal``, every level robust too; with
    ``edge_enhanced``, the unsharp fit at every level; with ``scatter``, scatter modelled at every level)."""
    from xraypose.register.config import edge_enhanced_levels, metal_levels, scatter_levels
    from xraypose.register.tracking import TRACKING_LEVELS

    levels = metal_levels(TRACKING_LEVELS) if metal else TRACKING_LEVELS
    levels = edge_enhanced_levels(levels) if edge_enhanced else levels
    return scatter_levels(levels) if scatter else levels


def _blur_predictor(reg, volume, raw_camera, seq, first, prep: dict, turn_deg: float):
    """(a blur predictor for :func:`~xraypose.register.tracking.track_sequence`, its record for
    trajectory.json): ``predictor(T)`` runs
    :func:`~xraypose.register.blur_prediction.predict_blur_coefficient` with ``reg`` (the tracking
    schedule: the coefficient is the one its levels hold) at ``T`` (4, 4, the start view's
    camera_to_world, preprocessed frame) on the view's raw detector ``raw_camera``, preprocessed as its frames
    were (their resize's order), prints it and adds it to the record's ``predictions``.  ``turn_deg`` 0:
    predicted once."""
    import torch

    from xraypose.cli.steps import pose_transform_of, preprocess_settings
    from xraypose.register.blur_prediction import DETECTOR_BLUR_PX, predict_blur_coefficient

    P_inv = torch.linalg.inv(pose_transform_of(first.steps[len(seq.frames[0].steps):]))  # preprocessed → raw
    pre = preprocess_settings(seq.shape, prep["crop"], prep["blur"], prep["size"], prep["i0"],
                              prep["resample_domain"])
    rs = next((s for s in first.steps if s.get("step") == "resize"), {})
    domain = rs.get("domain", "line-integral")
    again = f", and again after every {turn_deg:g} degrees of turn" if turn_deg else ""
    record = {"at": "frame 0 registered" + again,
              "turn_deg": turn_deg or None, "detector_blur_px": DETECTOR_BLUR_PX, "resample_domain": domain,
              "predictions": []}

    def predictor(T):
        T = torch.as_tensor(T, dtype=torch.float64)
        c = min(0.0, predict_blur_coefficient(reg, volume, raw_camera, T @ P_inv, {**pre, "resample_domain": domain}))
        record["predictions"].append({"coefficient": c, "pose": T.tolist()})
        typer.echo(f"blur coefficient predicted ({len(record['predictions'])}): {c:.4f} per pixel²")
        return c

    return predictor, record


def _date_predictions(record: dict, res) -> None:
    """Each of the ``record``'s blur predictions gets the first frame that held it (``from_frame``), and the
    record the first one's coefficient (``coefficient``)."""
    f = 0
    for p in record["predictions"]:
        while f < len(res) and res[f].blur_coefficient != p["coefficient"]:
            f += 1
        p["from_frame"] = f if f < len(res) else None
    if record["predictions"]:
        record["coefficient"] = record["predictions"][0]["coefficient"]


def _start_view_index(start_view: str | None, names: list[str], frames) -> int:
    """Index of the ``--start-view`` (a view's name, a FRAMES argument or its file name; default: the first)."""
    if start_view is None:
        return 0
    hits = [i for i, (n, f) in enumerate(zip(names, frames)) if start_view in (n, str(f), Path(f).name)]
    if not hits:
        raise InputError(f"--start-view {start_view!r} is none of the views ({', '.join(names)})")
    return hits[0]


def _structure_views(views, start, prep, names):
    """(views, windows): each view's frames cropped to the window where the structure (``prep``, a
    :class:`~xraypose.structure.PreparedCT`) projects at the start (``start`` @ the view's
    camera_to_rig) plus ``MARGIN_MM`` + ``TRACK_MARGIN_MM``, and its masks made
    :class:`~xraypose.structure.FootprintWeights` (the structure's footprint at each registration's
    start times the frame's own mask); windows as {view: {"top", "left", "height", "width",
    "margin_mm"}}.  A structure that projects outside a view at the start is refused."""
    import torch

    from xraypose.structure import MARGIN_MM, TRACK_MARGIN_MM, FootprintWeights, structure_window, window_image

    margin = MARGIN_MM + TRACK_MARGIN_MM
    out, windows = [], {}
    for n, (imgs, cam, C, masks) in zip(names, views):
        T = torch.as_tensor(start, dtype=torch.float64) @ torch.as_tensor(C, dtype=torch.float64)
        w = structure_window(cam, T, prep.box, margin_mm=margin)
        if w is None:
            raise InputError(f"the structure projects outside {'the frames' if len(views) == 1 else f'the view {n}'} "
                             "at the start pose; give a start that sees it there")
        top, left, h, wd = w
        _, cam_w = window_image(imgs[0, 0], cam, w)
        imgs_w = imgs[..., top:top + h, left:left + wd].contiguous()
        masks_w = None if masks is None else masks[..., top:top + h, left:left + wd].contiguous()
        out.append((imgs_w, cam_w, C, FootprintWeights(prep.volume, cam_w, prep.density, masks_w)))
        windows[n] = {"top": top, "left": left, "height": h, "width": wd, "margin_mm": margin}
    return out, windows


def _preprocess_sequences(names, seqs, cams, Cs, crop: int, blur: float, size: int, i0,
                          resample_domain: str = "auto"):
    """(views, first frames): per view ((F, 1, H, W) float32 preprocessed frames, their camera, camera_to_rig
    after the preprocessing's turns/mirrors, (F, 1, H, W) pixel masks or None), and each view's first
    preprocessed frame (an XRay).  A frame's mask is preprocessing's (a saturated plateau, a collimator's
    shadow: 0 there); frames without one get ones, and a view none of whose frames has one gets None."""
    import torch

    from xraypose.limits import check_registrable_xray

    views, first = [], []
    for n, seq, cam, C in zip(names, seqs, cams, Cs):
        check_registrable_xray(seq.shape, seq.source, crop)
        pre = preprocess_settings(seq.shape, crop, blur, size, i0, resample_domain)
        pxs = [replace(fr, camera=cam).preprocess(**pre) for fr in seq.frames]
        imgs = torch.stack([px.image for px in pxs])[:, None].to(torch.float32)
        masks = None
        if any(px.mask is not None for px in pxs):
            masks = torch.stack([torch.ones(imgs.shape[-2:]) if px.mask is None else px.mask.to(torch.float32)
                                 for px in pxs])[:, None]
        views.append((imgs, pxs[0].camera, C @ pose_transform_of(pxs[0].steps[len(seq.frames[0].steps):]), masks))
        first.append(pxs[0])
    return views, first


def _track(reg, views, r: int, start, rigged: bool, confidence: bool, seqs, metal: bool = False,
           motion: str = "smooth", edge_enhanced: bool = False, scatter: bool = False, part: bool = False, **kw):
    """(frame results, pose name, camera_to_rig per view): the sequence tracked (a line printed per frame),
    in the start view's camera frame (its axes are the optimiser's); a rig's poses given back as
    rig_to_world.  ``metal``, ``edge_enhanced``, ``scatter``: the later frames' schedule (:func:`_later_levels`); ``motion``: the motion model
    (:func:`~xraypose.register.tracking.track_sequence`); ``part``: a part of the CT is tracked (its later
    levels as :func:`xraypose.structure.part_levels` makes them); ``kw``: its ``blur``, ``blur_turn_deg``,
    ``air_floor_hu`` and ``overlap_check``."""
    import torch

    from xraypose.register.tracking import track_sequence
    from xraypose.sequence import sequence_notes_to_show

    later = _later_levels(metal, edge_enhanced, scatter)
    if part:  # a part of the CT: its levels (xraypose.structure.part_levels)
        from xraypose.structure import part_levels

        later = part_levels(later)

    Cr = views[r][2]
    Cr_inv = torch.linalg.inv(Cr)
    rel = [Cr_inv @ v[2] for v in views]
    F = len(seqs[0])
    typer.echo(f"tracking {F} frame{'s' if F != 1 else ''} of {len(views)} view{'s' if len(views) > 1 else ''} "
               f"({', '.join(s.source for s in seqs)})")
    for seq in seqs:  # how the frames were read (their order, files left out): said where the user looks
        for n in sequence_notes_to_show(seq.notes):
            typer.echo(f"note: {seq.source}: {n}")
    rows = min(int(v[0].shape[-2]) for v in views)
    if confidence and rows < CHECK_ROWS:
        typer.echo(f"note: frames of {rows} rows — the check was calibrated on 256-row X-rays and misses depth "
                   f"errors of several mm at this size (one view sees depth only as magnification); read `ok` "
                   f"as the frame's in-plane fit, and prefer frames of {CHECK_ROWS}+ rows or a rig")

    def progress(fr):
        p = "" if fr.p_success is None else f" (P {fr.p_success:.2f})"
        typer.echo(f"frame {fr.index + 1}/{F}: {fr.verdict or 'unchecked'}{p}, similarity {fr.similarity:.4f}, "
                   f"{fr.seconds:.2f} s{', re-initialised' if fr.reinitialised else ''}"
                   f"{', failed by the check, vouched for by the sequence' if fr.vouched else ''}")

    if not rigged:
        res = track_sequence(reg, views[0][0], views[0][1], start, confidence=confidence, progress=progress,
                             tracking_levels=later, motion=motion, masks=views[0][3], **kw)
        return res, "camera_to_world", [torch.eye(4, dtype=torch.float64)]
    res = track_sequence(reg, None, start=start @ Cr, views=[(v[0], v[1], C, v[3]) for v, C in zip(views, rel)],
                         confidence=confidence, progress=progress, tracking_levels=later, motion=motion, **kw)
    for fr in res:  # back to the rig's frame
        fr.camera_to_world = fr.camera_to_world @ Cr_inv
        fr.predicted = fr.predicted @ Cr_inv
        fr.registered = fr.registered @ Cr_inv
    return res, "rig_to_world", [v[2] for v in views]


def _verdict_counts(res) -> dict:
    return {v: sum(fr.verdict == v for fr in res) for v in ("ok", "uncertain", "failed")}


def _trajectory_document(ct: str, pose_name: str, names, seqs, views, rigged: bool, info: dict, start, cts, res,
                         reg, metal: bool = False, motion: str = "smooth") -> dict:
    """``trajectory.json`` without its frames: the inputs, the start, a summary and the registration's config."""
    import torch

    F = len(seqs[0])
    seconds = sum(fr.seconds for fr in res)
    return {"ct": ct, "pose": pose_name,
            "frames_note": f"per frame: {pose_name} (world = CT RAS mm; the motion model's estimate), "
                           f"registered_{pose_name} (the frame's registration alone), covariance and spread (the "
                           "estimate's: 6x6 in world axes at the isocenter, rad and mm; standard deviations along "
                           "the beam, across it, of the rotation), the verdict of its check, the "
                           "seconds it took, the sequence time (time_s, from the file; null when unknown), "
                           "re-initialised or not",
            "motion": motion,
            "sequences": [{"view": n, "source": s.source, "frames": len(s), "notes": s.notes}
                          for n, s in zip(names, seqs)],
            "views": [{"name": n, "camera_to_rig": v[2].tolist(), "intrinsics": v[1].to_dict()}
                      for n, v in zip(names, views)] if rigged else None,
            "intrinsics": views[0][1].to_dict(), "init": info, "start": start.tolist(),
            "ct_notes": cts.prepared.notes,
            "summary": {"frames": F, "verdicts": _verdict_counts(res),
                        "reinitialised": sum(fr.reinitialised for fr in res),
                        "vouched": sum(fr.vouched for fr in res),
                        # the smoother's noise fitted to this sequence (motion.fit_noise); None: the model as given
                        "motion_fit": res.motion_fit,
                        "median_seconds": float(torch.tensor([fr.seconds for fr in res]).median()),
                        # the frames' wall-clock time (frame 0's whole registration included) and its rate
                        "seconds": seconds, "frames_per_second": F / max(seconds, 1e-9)},
            "config": reg.config.to_dict(), "metal": metal}


def _pixel_masks(weights):
    """A view's preprocessing masks ((F, 1, H, W) or None) from what tracking weighs it with: those masks, or a
    structure's :class:`~xraypose.structure.FootprintWeights` (which hold them)."""
    from xraypose.structure import FootprintWeights

    return weights.masks if isinstance(weights, FootprintWeights) else weights


def _write(output: Path, res, times, names, to_rig, pose_name: str, doc: dict, volume: Volume, density: str,
           views, done=None) -> None:
    """Write trajectory.csv, trajectory.json and overlay.gif (replacing an earlier sequence's; the trajectory
    without the overlay, and a warning, where the overlay cannot be made: out of memory on a long sequence), call
    ``done()`` once they are written (the partial file removed), print a summary; exit with
    :data:`~xraypose.cli.options.EXIT_FAILED` when a frame's verdict is failed.  When they
    cannot be written (a full disk, the folder gone), trajectory.csv is printed on stdout: the tracked poses
    are not lost (as ``register`` prints its pose), and the partial file stays (``--resume``)."""
    from xraypose._checks import one_line
    from xraypose.io import OutputError, atomic_write_files, json_bytes, make_output_folder

    rows, jframes = track_rows(res, times, names, to_rig, pose_name)
    doc = {**doc, "frames": jframes}
    files = {"trajectory.csv": _csv_bytes(rows), "trajectory.json": json_bytes(doc)}
    try:  # a picture: the trajectory, hours of work on a long sequence, is written without it if need be
        files["overlay.gif"] = _overlay_gif(volume, density, [(v[0], v[1], _pixel_masks(v[3])) for v in views],
                                            res, to_rig)
    except (MemoryError, RuntimeError, ValueError, OSError) as e:  # (out of memory: torch's and numpy's too)
        typer.echo(f"warning: overlay.gif not written ({type(e).__name__}: {one_line(e)}); the trajectory is "
                   "written without it", err=True)
    try:
        atomic_write_files(make_output_folder(output), files, remove=TRACK_FILES)
    except OutputError as e:
        typer.echo(files["trajectory.csv"].decode(), nl=False)
        raise OutputError(f"{e} (the trajectory is printed on stdout, as trajectory.csv)") from None
    if done is not None:
        done()
    counts = doc["summary"]["verdicts"]
    typer.echo(f"wrote {output}/{', '.join(files)}: {counts['ok']} ok, "
               f"{counts['uncertain']} uncertain, {counts['failed']} failed, "
               f"{doc['summary']['reinitialised']} re-initialised; {len(res)} frame{'s' if len(res) != 1 else ''} in "
               f"{doc['summary']['seconds']:.1f} s ({doc['summary']['frames_per_second']:.1f} frames/s, median "
               f"{doc['summary']['median_seconds']:.2f} s a frame)")
    if counts["failed"]:
        raise SystemExit(EXIT_FAILED)
