"""Tracking benchmark (issue 14): simulated fluoroscopy, a pose per frame.

A sequence of ``--frames`` X-rays of one CT at a smoothly moving pose (up to ``--step-mm`` and
``--step-deg`` per frame, the velocity itself changing smoothly), with one abrupt jump
(``--jump-mm`` and ``--jump-deg`` at frame ``--jump-at``), formed by an appearance family
(default "lowdose": low-dose fluoroscopy noise) on a ``--detector``² detector, then tracked with
:func:`xraypose.register.tracking.track_sequence` from a start ``--start-deg``/``--start-mm`` off the
first frame's truth.

    python benchmarks/tracking.py --json OUT.json [--ct pelvis] [--frames 100] [--detector 128]

Reports the share of frames below 1 mm (3D mTRE at 20 bone fiducials), how many frames after the
jump were needed to get back below 1 mm, the per-frame time (median, and frames per second
without frame 0), and per frame: mTRE, verdict, re-initialised, seconds — for the frames' poses as
``--motion`` gives them (default: the smoother's) and for each frame's registration alone
(``registered_*``), with the rms error along the beam (``rms_depth_error_mm``), and how well the
estimates' own standard deviation along the beam covers it (``depth_within_2sd``: ~95 % if calibrated).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xraypose.camera import Camera  # noqa: E402
from xraypose.geometry import make_transform, so3_exp  # noqa: E402

F64 = torch.float64


def trajectory(T0, iso, n, step_mm, step_deg, jump_at, jump_mm, jump_deg, seed) -> list:
    """True poses: a smooth random walk of the velocity (bounded per frame), one jump."""
    g = torch.Generator().manual_seed(seed)
    poses = [T0.clone()]
    w = torch.zeros(3, dtype=F64)
    v = torch.zeros(3, dtype=F64)
    for f in range(1, n):
        w = 0.8 * w + 0.2 * torch.randn(3, generator=g, dtype=F64)
        v = 0.8 * v + 0.2 * torch.randn(3, generator=g, dtype=F64)
        wf = w / max(1.0, float(w.norm())) * math.radians(step_deg)
        vf = v / max(1.0, float(v.norm())) * step_mm
        if f == jump_at:
            a = torch.randn(3, generator=g, dtype=F64)
            b = torch.randn(3, generator=g, dtype=F64)
            wf = a / a.norm() * math.radians(jump_deg)
            vf = b / b.norm() * jump_mm
        R = so3_exp(wf)
        D = make_transform(R, iso - R @ iso + vf)
        poses.append(D @ poses[-1])
    return poses


def benchmark_trajectory(vol, seed: int, frames: int, detector: int = 128, step_mm: float = 2.0,
                         step_deg: float = 1.0, jump_at: int = 50, jump_mm: float = 15.0, jump_deg: float = 5.0):
    """(camera, true poses): the benchmark's detector (``detector``² over 280 mm, sdd 1020 mm) and its
    trajectory of ``frames`` (4, 4) poses for ``seed`` (this script's defaults: 2 mm and 1° per frame,
    a 15 mm / 5° jump at frame 50), from the CT ``vol``'s case ``seed``."""
    from xraypose.camera import Camera
    from xraypose.register.cases import CaseMaker

    cam = Camera(sdd=1020.0, height=detector, width=detector, delx=280.0 / detector)
    T0, _ = CaseMaker(vol, camera=cam, collimator_px=max(2, detector // 32), seed=seed).true_pose(0)
    iso = vol.get_isocenter().to(F64)
    return cam, trajectory(T0, iso, frames, step_mm, step_deg, jump_at, jump_mm, jump_deg, seed)


def _variants():
    from dataclasses import replace

    from xraypose.register.config import Level
    from xraypose.register.tracking import TRACKING_LEVELS

    fits = dict(fit_bone=True, optimizer="lm", robust=True, fit_tissue=True, fit_curve=True)
    return {
        "default": lambda: TRACKING_LEVELS,
        "fitblur": lambda: tuple(replace(lv, fit_blur=True) for lv in TRACKING_LEVELS),
        "mncc128": lambda: (Level(size=128, iterations=20, volume_mm=2.0, **fits),),
        "gncc128": lambda: (Level(size=128, iterations=20, volume_mm=2.0, similarity="gncc", **fits),),
        "mncc64+gncc128": lambda: (Level(size=64, iterations=20, volume_mm=4.0, **fits),
                                   Level(size=128, iterations=20, volume_mm=2.0, similarity="gncc", **fits)),
        # a third level at 256 rows (frames of 256+ rows: what `xraypose track` registers a fluoroscope's at)
        "+gncc256": lambda: (*TRACKING_LEVELS,
                             Level(size=256, iterations=20, volume_mm=2.0, similarity="gncc", **fits)),
        # the display curve's and tissue's closed-form fits left out of the finest level / of both levels
        "nofits128": lambda: (TRACKING_LEVELS[0], replace(TRACKING_LEVELS[1], fit_curve=False, fit_tissue=False)),
        "nofits": lambda: tuple(replace(lv, fit_curve=False, fit_tissue=False) for lv in TRACKING_LEVELS),
    }


TRACKING_VARIANTS = _variants()


def tracking_levels(args) -> tuple:
    """The later frames' schedule: the ``--tracking`` variant, its fine levels changed by ``--lm-set``."""
    from appearance import with_lm_fields

    return with_lm_fields(TRACKING_VARIANTS[args.tracking](), args.lm_set)


def depth_error(T, T_true, fid) -> float:
    """Signed error (mm) of the fiducials' centroid along the true camera's beam (+z: toward the
    detector): the component one view sees only as magnification."""
    T, T_true = T.to(F64), T_true.to(F64)
    X = torch.cat([fid.to(F64), torch.ones(len(fid), 1, dtype=F64)], 1)
    moved = (T @ torch.linalg.inv(T_true) @ X.T).T[:, :3]
    return float(T_true[:3, :3].T[2] @ (moved - fid.to(F64)).mean(0))


def turned_camera(T0: torch.Tensor, iso: torch.Tensor, deg: float) -> torch.Tensor:
    """(4, 4) camera_to_rig of a second camera: the camera ``T0`` (camera_to_world, 4, 4) turned ``deg``
    degrees about the CT's isocenter ``iso`` (3,) around its own image-vertical (+y, v) axis, the rig frame
    being ``T0``'s camera (docs/conventions.md, "Camera frame")."""
    p = (torch.linalg.inv(T0.to(F64)) @ torch.cat([iso.to(F64), torch.ones(1, dtype=F64)]))[:3]  # iso, camera axes
    R = so3_exp(torch.tensor([0.0, math.radians(deg), 0.0], dtype=F64))
    return make_transform(R, p - R @ p)


def biplane_blur(reg, vol, cam, T0, start, fid, args, prep: dict, report: dict) -> float:
    """The detector's blur coefficient as ``--blur biplane`` calibrates it (see ``--blur``): two spot
    images of the moment of frame 0 (true camera_to_world ``T0`` (4, 4) of the tracked view ``cam``; the
    second view turned 90° about the CT's isocenter around the tracked view's image-vertical axis),
    registered jointly with ``reg``'s schedule from ``start`` (4, 4); the coefficient measured on the
    tracked view's spot image at the joint pose (``fid``: the fiducials its depth error is measured
    at).  Records ``report["blur_calibration"]``."""
    from xraypose.appearance import form_xray
    from xraypose.preprocess import preprocess

    C2 = turned_camera(T0, vol.get_isocenter(), 90.0)  # camera 2 in camera 1's (the rig's) frame
    views, truths = [], []
    for i, C in enumerate((None, C2)):
        T = T0.to(F64) if C is None else T0.to(F64) @ C
        g = torch.Generator().manual_seed(args.seed * 7919 + 17 + i)
        fx = form_xray(vol, cam, T, family=args.family, generator=g, photons=args.spot_photons)
        pre = preprocess(fx.raw, fx.camera, **prep, blur_domain=args.blur_domain,
                         resample_domain=args.resample_domain)
        views.append((pre.image[None, None].float(), pre.camera, C, None if pre.mask is None else pre.mask[None, None]))
        truths.append(pre.transform_pose(fx.pose).to(F64))
    # registered jointly, the blur measured at the joint pose, and again with that blur held (rounds);
    # with --spot-fit-blur the pair is registered with the blur fitted per DRR (Level.fit_blur) first
    from dataclasses import replace

    tracker = reg.derive(levels=tracking_levels(args))
    first = reg.derive(levels=tuple(replace(lv, fit_blur=True) for lv in reg.config.levels)) if args.spot_fit_blur \
        else reg
    res = first.register_views(views, start.to(F64)[None])
    rounds = []
    for k in range(max(1, args.spot_rounds)):
        if k:
            res = reg.derive(blur_coefficient=float(c[0]), levels=reg.config.levels[-2:]).register_views(
                views, P[None])
        P = res.poses[0].to(F64)
        c, se = tracker.measure_blur(views[0][0], views[0][1], P[None], views[0][3], with_error=True)
        rounds.append({"coefficient": float(c[0]), "joint_depth_error_mm": depth_error(P, truths[0], fid)})
        print(f"  biplane blur round {len(rounds)}: {rounds[-1]}", flush=True)
    c_true = float(tracker.measure_blur(views[0][0], views[0][1], truths[0][None], views[0][3])[0])
    out = {"spot_photons": args.spot_photons, "spot_fit_blur": args.spot_fit_blur, "joint_status": res.status[0],
           "coefficient": float(c[0]),
           "standard_error": float(se[0]), "coefficient_at_truth": c_true,
           "joint_depth_error_mm": depth_error(P, truths[0], fid), "rounds": rounds}
    report["blur_calibration"] = out
    print(f"blur from a biplane pair at {args.spot_photons:g} photons: {out}", flush=True)
    return float(c[0])


def _parse_param(text: str) -> tuple:
    """``NAME=VALUE`` -> (name, value as JSON when it parses, else the string)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--param takes NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


#: What forms the frames: the settings a ``--frames-cache`` file is keyed by.
FORMATION_ARGS = ("ct", "family", "frames", "detector", "form_detector", "step_mm", "step_deg", "jump_at", "jump_mm",
                  "jump_deg", "seed", "param", "same_params")


def frames_cache_path(args, fine: int):
    """``--frames-cache DIR``: the file holding the formed frames of these settings (:data:`FORMATION_ARGS`
    and the formed detector's rows), or None without the option.  Formed once (a 512² abdominal trajectory
    takes ~30 min on the 2-core CPU), read by the runs that only change how the frames are tracked.  The key
    does not cover xraypose's simulator itself: clear the folder when ``xraypose.appearance`` changes."""
    if not args.frames_cache:
        return None
    key = json.dumps({**{k: getattr(args, k) for k in FORMATION_ARGS}, "fine": fine}, sort_keys=True)
    name = f"frames-{args.ct}-{args.family}-s{args.seed}-{fine}px-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
    return Path(args.frames_cache) / name


def sequence_weights(masks: list, noise: list):
    """(F, 1, H, W) the frames' pixel weights for ``track_sequence``: each frame's preprocessing mask (a
    saturated plateau, a collimator's shadow; None: every pixel) as ``xraypose track`` passes them, times
    the ``--noise-weight`` experiment's weights when given — or None when neither has any.  Until
    2026-12-03 (stop 32) this benchmark dropped the masks (``--ignore-masks``)."""
    if all(m is None for m in masks) and not noise:
        return None
    shape = next(m for m in (noise or masks) if m is not None).shape
    out = [(noise[f].float() if noise else torch.ones(shape)) * (1.0 if m is None else m.float())
           for f, m in enumerate(masks)]
    return torch.stack(out)[:, None]


def frame_preprocessing(fx, fine: int, detector: int) -> dict:
    """``preprocess`` keywords for a frame formed on a ``fine``-row detector and registered at ``detector``
    rows: the family's own, with the collimator crop scaled back to ``detector``'s pixels, then resampled,
    and the family's blur in registered pixels, as the DRRs' (drr_blur=1)."""
    prep = dict(fx.preprocess)
    if fine != detector:
        prep["size"] = detector - 2 * int(round(prep.get("crop", 0) * detector / fine))
        if prep.get("blur") is not None:
            k = fine // detector
            prep["blur"] = (2 * (prep["blur"][0] // 2) * k + 1, prep["blur"][1] * k)
    return prep


def preprocessed_frame(fx, prep: dict, args):
    """A formed frame preprocessed as the benchmark registers it: ``prep`` (:func:`frame_preprocessing`),
    ``--blur-domain``, ``--resample-domain``, ``--photon-offset``."""
    from xraypose.preprocess import preprocess

    return preprocess(fx.raw, fx.camera, **prep, blur_domain=args.blur_domain, resample_domain=args.resample_domain,
                      photon_offset=args.photon_offset)


def refine_counts(vol, rows: list, out: list, raws: list, poses: list, fid, pcam, args) -> dict:
    """``--counts``: the tracked estimates refined on the frames' raw counts as ``xraypose track --counts``
    does it (``refine_sequence``: counts in photons read from each frame's own noise, pixels inside the
    collimator crop, the blur estimated on the first refined frame unless ``--counts-blur`` gives it; every
    ``--counts-every``-th frame).  A ``failed`` frame is refined and counts where the motion model expects its fit
    (``--counts-failed gated``, as the command runs it since 2026-12-06, later: ``admit_doubtful``); else it takes
    the smoother's pose between refined frames, or outside them is left as tracked (its ``mtre_counts_pooled``
    the tracked one).  ``leave``: never refined (the command's rule
    until then); ``refine``: pooled like any other frame (this benchmark's rule until 2026-12-06).  The raw camera's pose is the preprocessed one times the inverse of preprocessing's
    ``pose_transform``.  Adds ``mtre_counts``, ``depth_error_counts_mm``, ``counts`` to the rows; returns the
    summary."""
    from xraypose.metrics import pose_errors
    from xraypose.register.counts import counts_bin_for, frames_to_refine, refine_sequence, registrations_to_pool

    # as xraypose track --counts-every: frames 0, K, 2K, …, the last and the doubted ones
    pick, doubted = frames_to_refine([fr.verdict for fr in out], args.counts_every)
    picked = [fr for fr, p in zip(out, pick) if p]
    raw0, cam, _, crop, family_blur = raws[picked[0].index]
    b = counts_bin_for(tuple(raw0.shape), args.counts_max_side)  # as xraypose track --counts (max side 128)
    blur = {"family": family_blur / b, "estimate": None}.get(args.counts_blur)
    blur = float(args.counts_blur) if blur is None and args.counts_blur != "estimate" else blur
    failed = failed_picked = [fr.verdict == "failed" for fr in picked]
    gated = args.counts_failed == "gated"
    left = [args.counts_failed == "leave" and f for f in failed]
    starts = [None if skip else fr.camera_to_world.to(F64) @ torch.linalg.inv(raws[fr.index][2])
              for fr, skip in zip(picked, left)]
    t0, times = time.perf_counter(), []

    def progress(i, fit):
        nonlocal t0
        fr, row = picked[i], rows[picked[i].index]
        if fit is None:  # a failed frame, left as tracked
            row["mtre_counts"], row["depth_error_counts_mm"] = row["mtre"], row["depth_error_mm"]
            print(f"  frame {fr.index:3d}: failed, left as tracked ({row['mtre']:6.3f} mm)", flush=True)
            t0 = time.perf_counter()
            return
        T = fit.pose @ raws[fr.index][2]
        row["mtre_counts"] = float(pose_errors(T, poses[fr.index], fid, pcam)["mtre"])
        row["depth_error_counts_mm"] = depth_error(T, poses[fr.index], fid)
        row["counts"] = {**fit.to_dict(), "seconds": time.perf_counter() - t0,
                         "camera_to_world": T.tolist(), "true_camera_to_world": poses[fr.index].tolist()}
        times.append(row["counts"]["seconds"])
        print(f"  frame {fr.index:3d}: tracked {row['mtre']:6.3f} mm -> counts {row['mtre_counts']:6.3f} mm "
              f"(depth {row['depth_error_mm']:+.2f} -> {row['depth_error_counts_mm']:+.2f}), {fit.iterations} "
              f"steps, {times[-1]:.2f} s", flush=True)
        t0 = time.perf_counter()

    air = None if args.counts_air == "estimate" else float(args.counts_air)
    form, fits = refine_sequence(vol, cam, [raws[fr.index][0] for fr in picked], starts,
                                 isocenter=vol.get_isocenter(), crop=crop, blur_px=blur, air_hu=air,
                                 renderer=None if args.counts == "auto" else args.counts,
                                 supersample=args.counts_supersample, bin=b, progress=progress,
                                 doubtful=failed if gated else None)
    print(f"  counts formation: {form.to_dict()}", flush=True)
    done = [rows[fr.index] for fr in picked]
    pooled = {}
    if args.counts_every == 1 or out.measurements is not None:
        # the refined poses pooled by the motion model (xraypose track --counts); every K-th frame's
        # (--counts-every K) with every frame's tracked registration, under the tracker's model (as the command)
        from xraypose.register.counts import admit_doubtful, pool_fits

        full, flags = [None] * len(out), [False] * len(out)
        for fr, fit, f in zip(picked, fits, failed):
            full[fr.index], flags[fr.index] = fit, f
        fits, failed = full, flags
        kw = {}
        if args.counts_every > 1:
            kw = {"model": out.motion_model, "tracked": registrations_to_pool(
                out.measurements, doubted, [torch.linalg.inv(r[2]) for r in raws])}
        if gated:  # a failed frame's fit counts where the motion model expects it
            fits = admit_doubtful(fits, failed, vol.get_isocenter(), "smooth", **kw)
        pooled_poses = pool_fits(fits, vol.get_isocenter(), "smooth", **kw)
        if gated:  # one not admitted: the smoother's pose between refined frames (pool_fits), as the command
            left = [fit is None and T is None for p, fit, T in zip(pick, fits, pooled_poses) if p]
        all_rows = [rows[fr.index] for fr in out]
        for fr, row, T, fit in zip(out, all_rows, pooled_poses, fits):
            if T is None or (fit is None and not gated and not kw):  # as tracked, as the command leaves it
                row["mtre_counts_pooled"], row["depth_error_counts_pooled_mm"] = row["mtre"], row["depth_error_mm"]
                continue
            row["mtre_counts_pooled"] = float(pose_errors(T @ raws[fr.index][2], poses[fr.index], fid, pcam)["mtre"])
            row["depth_error_counts_pooled_mm"] = depth_error(T @ raws[fr.index][2], poses[fr.index], fid)
        mp = torch.tensor([r["mtre_counts_pooled"] for r in all_rows])
        pooled = {"pooled_share_below_1mm": float((mp < 1).double().mean()),
                  "pooled_median_mtre_mm": float(mp.median()),
                  "pooled_p90_mtre_mm": float(mp.quantile(0.9)),
                  "pooled_rms_depth_error_mm": float(torch.tensor([r["depth_error_counts_pooled_mm"] for r in all_rows])
                                                     .pow(2).mean().sqrt()),
                  "pooled_frames": len(all_rows), "pooled_with_registrations": bool(kw)}
        failed = failed_picked
    mt = torch.tensor([r["mtre_counts"] for r in done])
    before = torch.tensor([r["mtre"] for r in done])
    return {"renderer": args.counts, "supersample": form.supersample, "bin": b,
            "blur": args.counts_blur, "air": args.counts_air, "formation": form.to_dict(), "blur_px": form.blur_px,
            "frames": len(done), "failed_frames": args.counts_failed, "failed": sum(failed),
            "left_as_tracked": sum(left),
            "share_below_1mm": float((mt < 1).double().mean()),
            "tracked_share_below_1mm_same_frames": float((before < 1).double().mean()),
            "median_mtre_mm": float(mt.median()), "p90_mtre_mm": float(mt.quantile(0.9)),
            "rms_depth_error_mm": float(torch.tensor([r["depth_error_counts_mm"] for r in done]).pow(2).mean().sqrt()),
            "median_seconds_first_excluded": float(torch.tensor(times[1:] or times).median()), **pooled,
            "fiducials": fid.tolist(), "camera": pcam.to_dict(), "isocenter": vol.get_isocenter().tolist()}


def second_view(vol, form_cam, truth: list, poses: list, fixed: dict, args) -> dict:
    """A biplane sequence's second view (``--biplane DEG``): camera 2 is camera 1 turned ``DEG``° about the
    CT's isocenter around camera 1's image-vertical (+y) axis, rigidly tied to it; frame f formed by the
    family at ``truth[f] @ C`` with its own noise draw (the draw's other parameters as view 0's with
    ``--same-params``), preprocessed as view 0's (a frame registered at ``--detector`` rows).  Returns
    images, masks (lists of (H, W) / None), the preprocessed camera and ``C``: camera 2's camera_to_rig,
    the rig being view 0's preprocessed camera (the tracked rig_to_world is view 0's camera_to_world)."""
    from xraypose.appearance import form_xray

    C_raw = turned_camera(truth[0], vol.get_isocenter(), args.biplane)  # camera 2 in camera 1's (raw) frame
    images, masks, cam, C = [], [], None, None
    for f, T in enumerate(truth):
        g = torch.Generator().manual_seed(args.seed * 7 + f + 100_003)
        fx = form_xray(vol, form_cam, T.to(F64) @ C_raw, family=args.family, generator=g, **fixed)
        pre = preprocessed_frame(fx, frame_preprocessing(fx, form_cam.height, args.detector), args)
        images.append(pre.image)
        masks.append(None if args.ignore_masks else pre.mask)
        if f == 0:
            cam = pre.camera
            C = torch.linalg.inv(poses[0].to(F64)) @ pre.transform_pose(fx.pose).to(F64)
    return {"images": images, "masks": masks, "camera": cam, "C": C}


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from appearance import photon_offset_arg  # noqa: E402

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--ct", default="pelvis")
    ap.add_argument("--family", default="lowdose")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--detector", type=int, default=128, help="the frames' rows as registered (pixels over 280 mm)")
    ap.add_argument("--form-detector", type=int, default=None,
                    help="form the frames on a finer detector (rows over the same 280 mm, e.g. 512: 0.55 mm "
                         "pixels, as a fluoroscope's) and resample them to --detector rows as "
                         "`xraypose track` does; the low-dose family's photons per pixel are scaled by the pixels' "
                         "area so the dose per mm² is the same; the family's detector blur stays 0.7 of the "
                         "formed pixels (a finer detector blurs less), and the preprocessing's σ is scaled by "
                         "their size, so the frames are blurred by 1 registered pixel as the DRRs are "
                         "(default: formed at --detector)")
    ap.add_argument("--resample-domain", default="auto", choices=["auto", "line-integral", "intensity"],
                    help="with --form-detector: preprocess's shrink of the frames (`xraypose track "
                         "--resample-domain`): auto (the default: after the log where half a photon is added, as "
                         "on these frames — since 2026-12-05; from 2026-12-02 to then it binned the intensities "
                         "before the log where photons were few), intensity (before the log) or line-integral "
                         "(after it)")
    ap.add_argument("--blur-domain", default="line-integral", choices=["line-integral", "intensity"],
                    help="preprocess's blur after the log (default) or before it (the order until 2026-12-02)")
    ap.add_argument("--step-mm", type=float, default=2.0)
    ap.add_argument("--step-deg", type=float, default=1.0)
    ap.add_argument("--jump-at", type=int, default=50)
    ap.add_argument("--jump-mm", type=float, default=15.0)
    ap.add_argument("--jump-deg", type=float, default=5.0)
    ap.add_argument("--start-deg", type=float, default=5.0)
    ap.add_argument("--start-mm", type=float, default=20.0)
    ap.add_argument("--no-confidence", action="store_true")
    ap.add_argument("--ignore-masks", action="store_true", help="track without the frames' preprocessing masks "
                    "(as this benchmark did until 2026-12-03, stop 32); `xraypose track` always uses them")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames-cache", default=None,
                    help="a folder: the formed frames are read from it when an earlier run of the same formation "
                         "settings left them there, else formed and written there (frames_cache_path)")
    ap.add_argument("--save-poses", action="store_true",
                    help="keep each frame's poses in the JSON (camera_to_world as tracked, registered, predicted and "
                         "the truth, (4, 4) in the preprocessed camera's frame) for probes of single frames")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--motion", default="smooth", choices=["none", "filter", "smooth"],
                    help="the motion model (xraypose.register.motion): the frames' registrations alone, the "
                         "Kalman filter's estimates, or the smoother's")
    ap.add_argument("--motion-noise-scale", type=float, default=None,
                    help="the motion model's noise_scale (MotionModel; default its own)")
    ap.add_argument("--fit-motion", action=argparse.BooleanOptionalAction, default=True,
                    help="the smoother's noise fitted to the sequence's innovations (track_sequence's fit_motion, "
                         "motion.fit_noise; the default since 2026-12-06, stop 63): the summary's motion_fit says "
                         "what was chosen; --no-fit-motion: the model as given (the behaviour until then)")
    ap.add_argument("--tracking-tol", type=float, default=None,
                    help="the later frames' Levenberg-Marquardt convergence test, pixels (default: track_sequence's)")
    ap.add_argument("--air-floor", type=float, default=None,
                    help="track_sequence's air_floor_hu, HU: the frames after the first render the CT's air as "
                         "nothing (xraypose track --air-floor; e.g. -975, AIR_FLOOR_HU; default none)")
    ap.add_argument("--no-vouch", action="store_true",
                    help="re-initialise every frame the check calls failed (track_sequence's vouch_failed=False: "
                         "the rule until 2026-12-05)")
    ap.add_argument("--no-overlap", action="store_true",
                    help="check each frame before registering the next (default: the check beside the next "
                         "frame's registration on a second thread, track_sequence's overlap_check)")
    ap.add_argument("--same-params", action="store_true",
                    help="draw the family's parameters once (frame 0's) and keep them for every frame, as a "
                         "fluoroscopy system's processing is; only the noise is drawn anew per frame")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="fix a family parameter for every frame (e.g. photons=3000; repeatable)")
    ap.add_argument("--blur", default="none",
                    help="track_sequence's blur (the detector's intensity-domain blur held fixed): 'none' (default), a "
                         "coefficient, or 'calibrated': measured as a user would on a calibration, where the pose is "
                         "known and the dose high — the median of Registrar.measure_blur on frames 0, F/3 and 2F/3 "
                         "formed without noise, at their true poses; or 'biplane': as a user could at the start of a "
                         "procedure — two spot images of frame 0's moment (the tracked view and one turned 90 degrees "
                         "about the isocenter, --spot-photons each) registered jointly from the tracking start, the "
                         "blur measured on the tracked view's spot image at the joint pose; or 'simulated': "
                         "predicted without the frames — xraypose's own simulator (the lowdose chain, noiseless, "
                         "the frames' detector and preprocessing) at the tracking start, measured there")
    ap.add_argument("--simulate-at", default="start", choices=["start", "registered"],
                    help="--blur simulated: the pose the simulator is run at — the tracking start, or frame 0 "
                         "registered from it with the whole schedule")
    ap.add_argument("--blur-criterion", default="fit", choices=["fit", "depth", "difference"],
                    help="--blur simulated: what the predicted coefficient matches on the simulated X-ray "
                         "(predict_blur_coefficient's criterion)")
    ap.add_argument("--photon-offset", default="auto", type=photon_offset_arg,
                    help="preprocess's photon_offset for the frames: 'auto' (default since 2026-12-03: half a "
                         "photon before the log where photons are few) or a number of photons (0: none, the "
                         "frames' preprocessing until then)")
    ap.add_argument("--noise-weight", type=float, default=0.0,
                    help="experiment: weigh each frame's pixels by min(1, exp(-P (L - median L))) (L: its line "
                         "integrals; the counts' information falls as exp(-L)), passed as track_sequence's masks")
    ap.add_argument("--blur-turn", type=float, default=0.0,
                    help="--blur simulated --simulate-at registered: predict again whenever the view has turned by "
                         "this many degrees (track_sequence's blur_turn_deg; default 0: once, at frame 0)")
    ap.add_argument("--spot-photons", type=float, default=1e5,
                    help="--blur biplane: photons per unattenuated pixel of the two spot images (default 1e5, a "
                         "radiograph's; the frames' are the family's)")
    ap.add_argument("--spot-rounds", type=int, default=3,
                    help="--blur biplane: rounds of measuring the blur at the joint pose and registering the pair "
                         "again (its two finest levels) with it held")
    ap.add_argument("--spot-fit-blur", action="store_true",
                    help="--blur biplane: register the pair with the blur fitted per DRR before measuring it")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a RegistrationConfig field (JSON value) of the tracking registrar, e.g. "
                         "--set match_capture=true (the later frames then map their intensities too)")
    ap.add_argument("--lm-set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a Level field (JSON value) on the Levenberg-Marquardt levels of both schedules "
                         "(frame 0's and the later frames'), e.g. --lm-set fit_unsharp='[3, 9, 27]'")
    ap.add_argument("--biplane", type=float, default=None, metavar="DEG",
                    help="a biplane sequence: a second view, the first turned DEG degrees about the CT's "
                         "isocenter around its image-vertical axis, filmed at the same moments (its own "
                         "noise draws), both tracked jointly (xraypose track's rig form); the errors are "
                         "the rig's, in view 0's camera")
    ap.add_argument("--counts", default="none", choices=["none", "auto", "trilinear", "siddon"],
                    help="after tracking, refine every frame's estimate on its raw counts by their Poisson "
                         "likelihood (xraypose.register.counts.refine_on_counts) with this renderer ('auto': "
                         "chosen by the first refined frame's likelihood, as xraypose track --counts does); "
                         "reported beside the tracked results, and pooled (every frame refined)")
    ap.add_argument("--counts-supersample", type=int, default=None,
                    help="the DRR's rays per counts pixel per side (default: as xraypose track --counts, chosen "
                         "on frame 0 by the likelihood between 2 and the bin — denser_rays, since 2026-12-06; 2 "
                         "until then)")
    ap.add_argument("--counts-blur", default="estimate",
                    help="the counts model's detector blur, px: 'estimate' (on the first refined frame, held: what "
                         "xraypose track --counts does), 'family' (the formed frames' own) or a number")
    ap.add_argument("--counts-air", default="estimate",
                    help="counts_basis's air knot, HU: 'estimate' (chosen on the first refined frame with the "
                         "renderer and the blur: xraypose track --counts) or a number (-1000: the model until "
                         "stop 43)")
    ap.add_argument("--counts-every", type=int, default=1,
                    help="refine every k-th frame (and the last, and those the check doubted) only, pooled with the "
                         "other frames' tracked registrations as xraypose track --counts-every pools them")
    ap.add_argument("--counts-failed", choices=("gated", "leave", "refine"), default="gated",
                    help="a frame the check judged failed: refined, counted where the motion model expects its "
                         "fit (gated: as xraypose track --counts runs it, since 2026-12-06, later), never "
                         "refined (leave: the command's rule until then) or pooled like any other (refine: "
                         "this benchmark's rule until 2026-12-06)")
    ap.add_argument("--counts-max-side", type=int, default=128,
                    help="the frames' counts summed over k×k pixels until at most this many a side, as xraypose "
                         "track --counts does (128; until 2026-12-06 unbinned: the formed detector's pixels)")
    ap.add_argument("--tracking", default="default", choices=sorted(TRACKING_VARIANTS),
                    help="the schedule of frames after the first (variants measured against each other)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from appearance import json_sets, load_ct, start_report, with_lm_fields, write_report  # noqa: E402

    from xraypose.appearance import form_xray
    from xraypose.appearance.families import LOWDOSE_PHOTONS
    from xraypose.fiducials import bone_points, select_fiducials
    from xraypose.metrics import pose_errors
    from xraypose.preprocess import preprocess
    from xraypose.register import Registrar, RegistrationConfig
    from xraypose.register.blur_prediction import predict_blur_coefficient
    from xraypose.register.cases import perturb_pose
    from xraypose.register.motion import MotionModel
    from xraypose.register.tracking import track_sequence

    report = start_report(vars(args))
    name, vol = load_ct(args.ct)
    iso = vol.get_isocenter().to(F64)
    cam, truth = benchmark_trajectory(vol, args.seed, args.frames, args.detector, args.step_mm, args.step_deg,
                                      args.jump_at, args.jump_mm, args.jump_deg)
    fine = args.form_detector or args.detector
    if fine % args.detector:
        raise SystemExit("--form-detector must be a multiple of --detector")
    form_cam = Camera(sdd=1020.0, height=fine, width=fine, delx=280.0 / fine)
    area = (args.detector / fine) ** 2  # a formed pixel's area over a registered one's
    t0 = time.perf_counter()
    images, poses, formed, weights, masks, raws = [], [], [], [], [], []
    fixed = dict(_parse_param(kv) for kv in args.param)
    cache = frames_cache_path(args, fine)
    if cache is not None and cache.exists():
        fxs, fixed = torch.load(cache, weights_only=False)
        print(f"frames read from {cache} (formed by an earlier run of the same settings)", flush=True)
    else:
        fxs = []
        for f, T in enumerate(truth):
            g = torch.Generator().manual_seed(args.seed * 7 + f)
            extra = {}
            if fine != args.detector and args.family == "lowdose" and "photons" not in fixed:
                # the family's draw per registered pixel, spread over the finer pixels
                lo, hi = (math.log(x) for x in LOWDOSE_PHOTONS)
                u = float(torch.rand((), generator=torch.Generator().manual_seed(args.seed * 7919 + f), dtype=F64))
                extra["photons"] = math.exp(lo + u * (hi - lo)) * area
            fxs.append(form_xray(vol, form_cam, T, family=args.family, generator=g, **{**fixed, **extra}))
            if f == 0 and args.same_params:
                fixed = {k: fxs[0].info[k] for k in fxs[0].parameters}  # not the derived values (effective_kev, …)
        if cache is not None:
            from xraypose.io import atomic_write_bytes

            cache.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            torch.save((fxs, fixed), buf)
            atomic_write_bytes(cache, buf.getvalue())
    for f, fx in enumerate(fxs):
        formed.append(fx.info)
        prep = frame_preprocessing(fx, fine, args.detector)
        pre = preprocessed_frame(fx, prep, args)
        images.append(pre.image)
        if args.counts != "none":
            raws.append((fx.raw.reshape(fx.camera.height, fx.camera.width), fx.camera, pre.pose_transform,
                         int(fx.preprocess.get("crop", 0)), float(fx.info.get("blur_px", 0.0))))
        masks.append(None if args.ignore_masks else pre.mask)
        if args.noise_weight:  # experiment: pixels weighted by their counts' information, capped at 1
            st = next(s for s in pre.steps if s["step"] == "rescale01")
            L = pre.image.double() * (st["max"] - st["min"]) + st["min"]
            weights.append(torch.exp(-args.noise_weight * (L - L.median())).clamp(max=1.0).float())
        poses.append(pre.transform_pose(fx.pose))
        pcam = pre.camera
        if f == 0:  # the order preprocessing chose for the frames; noiseless calibration frames get the same
            rs = next((s for s in pre.steps if s["step"] == "resize"), {})
            domain = rs.get("domain", "line-integral") if args.resample_domain == "auto" else args.resample_domain
    second = None
    if args.biplane is not None:  # the second view's frames: the same moments, turned about the isocenter
        if args.form_detector or args.blur != "none" or args.noise_weight:
            raise SystemExit("--biplane tracks the frames as formed: not with --form-detector, --blur or "
                             "--noise-weight")
        second = second_view(vol, form_cam, truth, poses, fixed, args)
    print(f"{args.frames} frames formed ({args.family}{'' if second is None else ', two views'}) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    fid = select_fiducials(bone_points(vol), n=20, seed=args.seed, camera=pcam, poses=poses[0], margin_px=2)
    frames = torch.stack(images)[:, None].to(torch.float32)
    frame_weights = sequence_weights(masks, weights)
    report["masked_frames"] = sum(m is not None for m in masks)
    start = perturb_pose(poses[0], iso, args.start_deg, args.start_mm, torch.Generator().manual_seed(args.seed))[0]
    reg = Registrar(vol, RegistrationConfig(drr_blur=1.0, record_trajectory=False, num_threads=args.threads,
                                            **json_sets(args.set)))
    if args.lm_set:
        reg = reg.derive(levels=with_lm_fields(reg.config.levels, args.lm_set))
    blur = None if args.blur in ("none", "calibrated", "biplane", "simulated") else float(args.blur)
    predictions = []  # --blur simulated: each prediction's coefficient (and where it was made)
    if args.blur == "calibrated":
        calib = []
        for f in (0, args.frames // 3, 2 * args.frames // 3):
            g = torch.Generator().manual_seed(args.seed * 7 + f)
            fx = form_xray(vol, form_cam, truth[f], family=args.family, generator=g, **{**fixed, "photons": 0})
            pre = preprocess(fx.raw, fx.camera, **prep, blur_domain=args.blur_domain, resample_domain=domain)
            tracker = reg.derive(levels=tracking_levels(args))
            calib.append(float(tracker.measure_blur(pre.image[None, None], pre.camera,
                                                    pre.transform_pose(fx.pose)[None], pre.mask)[0]))
        blur = float(torch.tensor(calib).median())
        report["blur_calibration"] = {"frames": [0, args.frames // 3, 2 * args.frames // 3], "measured": calib,
                                      "coefficient": blur}
        print(f"blur calibrated on noiseless frames at their true poses: {calib} -> {blur:.4f}", flush=True)
    elif args.blur == "simulated":
        # predicted, not measured on the frames: xraypose's own simulator (the lowdose chain: Siddon,
        # physical mu, its 0.7 px intensity blur on the formed detector, the frames' binning), noiseless,
        # at the tracking start or at frame 0 registered from it (--simulate-at; not the truth), the
        # coefficient measured on that image at that pose
        tracker = reg.derive(levels=tracking_levels(args))

        sim_prep = {**frame_preprocessing(fx, fine, args.detector), "blur_domain": args.blur_domain,
                    "resample_domain": domain}

        def simulated_blur(at):  # what `xraypose track --predict-blur` runs (frames' pose = raw camera's pose)
            c = predict_blur_coefficient(tracker, vol, form_cam, at, sim_prep, criterion=args.blur_criterion)
            predictions.append({"coefficient": c, "pose": at.clone()})
            print(f"blur predicted on xraypose's simulator ({len(predictions)}): {c:.4f}", flush=True)
            return c

        if args.simulate_at == "registered":  # track_sequence predicts it at frame 0 registered, then as the view turns
            blur = simulated_blur
        else:
            blur = simulated_blur(start)
        report["blur_calibration"] = {"simulated_at": args.simulate_at, "predictions": predictions,
                                      "turn_deg": args.blur_turn or None,
                                      "criterion": args.blur_criterion}
    elif args.blur == "biplane":
        blur = biplane_blur(reg, vol, form_cam, truth[0], start, fid, args, prep, report)
    rows = []

    def err(T, f):
        return float(pose_errors(T, poses[f], fid, pcam)["mtre"])

    def progress(fr):
        e, e_reg = err(fr.camera_to_world, fr.index), err(fr.registered, fr.index)
        print(f"  frame {fr.index:3d}: mTRE {e:7.3f} mm (registration alone {e_reg:7.3f}), {fr.seconds:.3f} s, "
              f"{fr.status}, verdict {fr.verdict}{' (re-initialised)' if fr.reinitialised else ''}", flush=True)

    if second is not None:
        m1 = sequence_weights(second["masks"], [])
        track_views = [(frames, pcam, None, frame_weights),
                       (torch.stack(second["images"])[:, None].to(torch.float32), second["camera"], second["C"], m1)]
        report["biplane"] = {"turn_deg": args.biplane, "camera_to_rig_1": second["C"].tolist()}
        frames_arg, cam_arg, frame_weights = None, None, None
    else:
        track_views, frames_arg, cam_arg = None, frames, pcam
    out = track_sequence(reg, frames_arg, cam_arg, start, views=track_views, confidence=not args.no_confidence,
                         progress=progress,
                         tracking_levels=tracking_levels(args), motion=args.motion, vouch_failed=not args.no_vouch,
                         air_floor_hu=args.air_floor,
                         motion_model=(None if args.motion_noise_scale is None
                                       else MotionModel(noise_scale=args.motion_noise_scale)),
                         fit_motion=args.fit_motion,
                         overlap_check=False if args.no_overlap else None, blur=blur,
                         blur_turn_deg=args.blur_turn or None,
                         masks=frame_weights,
                         **({} if args.tracking_tol is None else {"tracking_tol_px": args.tracking_tol}))
    for p in predictions:  # where along the trajectory each prediction was made: the nearest true pose
        at = p.pop("pose")
        errs = [float(pose_errors(at, T, fid, pcam)["mtre"]) for T in poses]
        p["nearest_frame"] = min(range(len(errs)), key=errs.__getitem__)
        p["pose_mtre_mm"] = errs[p["nearest_frame"]]
    for fr in out:  # the smoother's estimates are known only at the end
        rows.append({**{k: v for k, v in fr.to_dict().items()
                        if k not in ("camera_to_world", "predicted", "registered", "covariance")},
                     "mtre": err(fr.camera_to_world, fr.index), "mtre_registered": err(fr.registered, fr.index),
                     "depth_error_mm": depth_error(fr.camera_to_world, poses[fr.index], fid),
                     "depth_error_registered_mm": depth_error(fr.registered, poses[fr.index], fid)})
        if args.save_poses:
            rows[-1]["poses"] = {"tracked": fr.camera_to_world.tolist(), "registered": fr.registered.tolist(),
                                 "predicted": None if fr.predicted is None else fr.predicted.tolist(),
                                 "truth": poses[fr.index].tolist()}
    if args.counts != "none":
        report["counts"] = refine_counts(vol, rows, out, raws, poses, fid, pcam, args)
    mt = torch.tensor([r["mtre"] for r in rows])
    mt_reg = torch.tensor([r["mtre_registered"] for r in rows])
    dz = torch.tensor([r["depth_error_mm"] for r in rows])
    dz_reg = torch.tensor([r["depth_error_registered_mm"] for r in rows])
    sd = [r["spread"]["along_beam_mm"] for r in rows if r["spread"]]  # the estimate's own spread
    secs = torch.tensor([r["seconds"] for r in rows[1:]])
    after = [r["mtre"] for r in rows[args.jump_at:]] if 0 < args.jump_at < args.frames else []
    recovered = next((i for i, e in enumerate(after) if e < 1.0), None)
    summary = {"frames": args.frames, "share_below_1mm": float((mt < 1).double().mean()),
               "share_below_1mm_without_frame0": float((mt[1:] < 1).double().mean()),
               "median_mtre_mm": float(mt.median()), "p90_mtre_mm": float(mt.quantile(0.9)),
               "registered_share_below_1mm": float((mt_reg < 1).double().mean()),
               "registered_median_mtre_mm": float(mt_reg.median()),
               "rms_depth_error_mm": float(dz.pow(2).mean().sqrt()),
               "median_sd_along_beam_mm": float(torch.tensor(sd).median()) if sd else None,
               "depth_within_2sd": (sum(abs(r["depth_error_mm"]) <= 2 * r["spread"]["along_beam_mm"]
                                        for r in rows if r["spread"]) / len(sd)) if sd else None,
               "registered_rms_depth_error_mm": float(dz_reg.pow(2).mean().sqrt()),
               "jump_recovered_after_frames": recovered, "median_frame_s": float(secs.median()),
               "frames_per_s": float(1.0 / secs.mean()), "reinitialised": sum(r["reinitialised"] for r in rows),
               "vouched": sum(bool(r.get("vouched")) for r in rows),
               "motion_fit": out.motion_fit,
               "verdicts": {v: sum(r["verdict"] == v for r in rows) for v in ("ok", "uncertain", "failed", None)}}
    report.update(summary=summary, frames=rows, formed=formed)
    write_report(args.json, report, [f"{k:32s} {v}" for k, v in {**summary, **{
        f"counts: {k}": v for k, v in report.get("counts", {}).items()}}.items()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
