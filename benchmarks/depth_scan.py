"""Where a low-dose frame's depth information is lost: objectives scanned along the beam.

For frames of the tracking benchmark's trajectory (`benchmarks/tracking.py`: ``--ct``, ``--seed``,
family "lowdose", 128²), the depth of the fiducials' centroid is moved over ±``--range`` mm (the five
other pose parameters held at the truth; ``depth_bound.pose_motion``) and each objective's best depth
is recorded (as ``tracking.depth_error`` signs it: − toward the source).  The rms of the best depths
over the frames says how much of the frame's information the objective uses (``depth_bound.py``'s
Fisher information gives the 1-D bound, printed per frame):

* ``poisson``: the likelihood of the raw counts under the exact formation model (Siddon physical μ at
  2×, exp, area-averaged, the frame's intensity-domain detector blur, Poisson at its photons);
* ``wls`` / ``ls``: least squares of the line integrals −log(counts/N0) against the exact model's,
  weighted by the expected counts / unweighted;
* ``ncc_pre``: NCC of the *preprocessed* X-ray (its 5×5, σ = 1 px blur after the log) with the exact
  model's line integrals blurred alike; ``ncc_pre_no_detector_blur``: the same model without its detector blur;
* ``reg:NAME[:P]``: registration's own 128-row objective (:class:`LevelObjective`) of the tracking
  schedule's last level — ``gncc`` as shipped, ``gncc_fitblur`` with ``fit_blur``, ``mncc`` — with
  pixels weighted by ``exp(−P·(L − min L))`` (L: the X-ray's line integrals from preprocessing's
  record; P = 0: unweighted); ``reg:gncc_blur:0``: ``gncc`` with ``--blur-coefficient`` held
  (``RegistrationConfig.blur_coefficient``; default: the median of the coefficients measured at the
  scanned frames' true poses on noiseless copies, ``Registrar.measure_blur``).

``--registration-only`` leaves out the exact-model rows (the expensive ones); ``--photons N`` forms
the frames at N photons per unattenuated pixel (0: without noise — the objectives' bias alone).

    python benchmarks/depth_scan.py --json OUT.json [--ct pelvis] [--seed 1] [--frames 0 20 40 60 80]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

F64 = torch.float64


def main(argv=None) -> int:
    from appearance import photon_offset_arg

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--ct", default="pelvis")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--frames", type=int, nargs="*", default=[0, 20, 40, 60, 80])
    ap.add_argument("--range", type=float, default=2.0, help="± mm along the beam")
    ap.add_argument("--step", type=float, default=0.2, help="mm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--registration-only", action="store_true", help="only the registration objectives' rows")
    ap.add_argument("--photons", type=float, default=None,
                    help="photons per unattenuated pixel of every frame (0: no noise; default: the family's draw)")
    ap.add_argument("--blur-coefficient", type=float, default=None,
                    help="the coefficient the reg:gncc_blur row holds (default: calibrated on noiseless frames)")
    ap.add_argument("--photon-offset", default="auto", type=photon_offset_arg,
                    help="preprocess's photon_offset for the scanned frames: 'auto' (the default since "
                         "2026-12-03) or a number of photons (0: none)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from appearance import load_ct, start_report, write_report
    from depth_bound import ExactFrames, fisher, pose_motion
    from tracking import TRACKING_VARIANTS

    from xraypose.preprocess import gaussian_blur, ncc, preprocess
    from xraypose.register import Registrar, RegistrationConfig
    from xraypose.register.objective import LevelObjective, level_channels

    report = start_report(vars(args))
    name, vol = load_ct(args.ct)
    frames = ExactFrames(vol, args.seed, max(args.frames) + 1)
    D = frames.D
    cfg = RegistrationConfig(drr_blur=1.0, record_trajectory=False, num_threads=args.threads)
    reg = Registrar(vol, cfg)
    last = TRACKING_VARIANTS["default"]()[-1]
    levels = {"gncc": last, "gncc_fitblur": replace(last, fit_blur=True), "mncc": replace(last, similarity="mncc")}
    reg_variants = [("gncc", 0.0), ("gncc_fitblur", 0.0), ("gncc_fitblur", 0.5), ("mncc", 1.0), ("gncc_blur", 0.0)]
    levels["gncc_blur"] = last
    blur = args.blur_coefficient
    if blur is None:  # calibrated: at the scanned frames' true poses, without noise
        tracker = reg.derive(levels=TRACKING_VARIANTS["default"]())
        measured = []
        for f in args.frames:
            fx = frames.form(f, photons=0)
            pre = preprocess(fx.raw, fx.camera, **fx.preprocess)
            measured.append(float(tracker.measure_blur(pre.image[None, None], pre.camera,
                                                       pre.transform_pose(fx.pose)[None], pre.mask)[0]))
        blur = float(torch.tensor(measured).median())
        report["blur_calibration"] = {"measured": measured, "coefficient": blur}
        print(f"blur coefficient calibrated on noiseless frames at their true poses: {blur:.4f} "
              f"(each: {', '.join(f'{c:.4f}' for c in measured)})", flush=True)
    cfg_blur = RegistrationConfig(drr_blur=1.0, record_trajectory=False, num_threads=args.threads,
                                  blur_coefficient=blur)
    deltas = torch.arange(-args.range, args.range + 1e-9, args.step, dtype=F64)
    centre = frames.fiducials().mean(0)

    rows, t0 = [], time.perf_counter()
    for f in args.frames:
        fx = frames.form(f, **({} if args.photons is None else {"photons": args.photons}))
        N0, blur, crop = float(fx.info["photons"]), float(fx.info["blur_px"]), int(fx.preprocess["crop"])
        keep = frames.kept(crop)
        inner = (slice(crop, D - crop), slice(crop, D - crop))
        T = fx.pose.to(F64)
        exact = not args.registration_only and N0 > 0  # the counts' rows need counts
        if exact:
            counts = torch.where(fx.raw.reshape(D, D) <= 1, 0.0, fx.raw.double().reshape(D, D) / fx.info["i0"] * N0)
            L_meas = -torch.log(counts.clamp_min(0.5) / N0)
        pre = preprocess(fx.raw, fx.camera, **fx.preprocess, photon_offset=args.photon_offset)
        st = {s["step"]: s for s in pre.steps}
        L_pre = pre.image.double() * (st["rescale01"]["max"] - st["rescale01"]["min"]) + st["rescale01"]["min"]
        b = fx.preprocess["blur"]  # the model blurred as preprocessing blurred the X-ray's line integrals
        bound_1d = float(fisher(lambda P: frames.transmission(P, blur), T, centre, N0, keep)[2, 2].rsqrt()) \
            if exact else None
        poses = [pose_motion(T, centre, torch.tensor([0, 0, float(d), 0, 0, 0], dtype=F64)) for d in deltas]
        scores: dict = {k: [] for k in ("poisson", "wls", "ls", "ncc_pre", "ncc_pre_no_detector_blur")} if exact else {}
        for P in (poses if exact else []):
            t = frames.transmission(P, blur)
            lam, L_model = N0 * t, -torch.log(t)
            scores["poisson"].append(float((counts * torch.log(lam) - lam)[keep].sum()))
            scores["wls"].append(-float((lam * (L_meas - L_model) ** 2)[keep].sum()))
            scores["ls"].append(-float(((L_meas - L_model) ** 2)[keep].sum()))
            scores["ncc_pre"].append(ncc(pre.image, gaussian_blur(L_model, *b)[inner]))
            L_sharp = -torch.log(frames.transmission(P, 0.0))
            scores["ncc_pre_no_detector_blur"].append(ncc(pre.image, gaussian_blur(L_sharp, *b)[inner]))
        Ps = torch.stack(poses).float()
        for lv_name, p in reg_variants:
            lv = levels[lv_name]
            dens, aff = reg.volume_level(lv.volume_mm, level_channels(lv))
            m = None if p == 0 else torch.exp(-p * (L_pre - L_pre.min())).float()[None, None]
            ob = LevelObjective(lv, cfg_blur if lv_name == "gncc_blur" else cfg, dens, aff,
                                pre.image[None, None].float(), pre.camera,
                                torch.Generator().manual_seed(0), masks=m)
            with torch.no_grad():
                r, _, _ = ob.residual(Ps, torch.zeros(len(Ps), dtype=torch.long))
            scores[f"reg:{lv_name}:{p:g}"] = (1 - 0.5 * r.double().pow(2).sum(-1)).tolist()
        # the best pose's error along the beam as tracking.depth_error signs it (− toward the source)
        best = {k: -float(deltas[torch.tensor(v).argmax()]) for k, v in scores.items()}
        rows.append({"frame": f, "photons": N0, "bound_1d_sd_mm": bound_1d, "best_depth_mm": best})
        print(f"frame {f:3d}: {N0:6.0f} photons, 1-D bound "
              f"{'-' if bound_1d is None else f'{bound_1d:.3f} mm'} | "
              + " ".join(f"{k} {v:+.1f}" for k, v in best.items()), flush=True)
    names = list(rows[0]["best_depth_mm"])
    rms = {k: float(torch.tensor([r["best_depth_mm"][k] for r in rows]).pow(2).mean().sqrt()) for k in names}
    report.update(rows=rows, rms_best_depth_mm=rms, seconds=time.perf_counter() - t0)
    write_report(args.json, report, [f"{k:32s} rms best depth {v:.2f} mm" for k, v in rms.items()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
