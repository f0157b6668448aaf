"""Blur before or after the log: how the order moves a registration's depth (docs/registration.md).

One tracking benchmark frame (`benchmarks/tracking.py`'s trajectory, ``--seed``, ``--frames``) on a
``--detector``² detector (2.2 mm pixels at 128), formed without noise in several ways that differ
only in where the blur acts, each registered from its *true* pose with the tracking schedule.  The
result's error along the beam (the fiducials' centroid, mm; − toward the source) is the bias the
formation gives the similarity's optimum:

* ``lines_log_blur``: exact (Siddon) line integrals of the physical μ at 2×, area-averaged, blurred
  (σ ``--sigma`` px) — blurred as registration blurs its DRR;
* ``lines_intensity_blur``: the same line integrals through exp, blurred as intensities, then the log;
* ``simulator_blur_before_log`` / ``simulator_blur_after_log``: xraypose's simulator (``ours``,
  noiseless, its 0.7 px detector blur), preprocessed with the standard 5×5 σ = 1 blur before the
  log (DiffPose's order; xraypose's until 2026-12-02) or after it (today's default).

    python benchmarks/blur_order.py --json OUT.json [--ct pelvis] [--seed 1] [--frames 0 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

F64 = torch.float64


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--ct", default="pelvis")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--frames", type=int, nargs="*", default=[0, 20])
    ap.add_argument("--detector", type=int, default=128)
    ap.add_argument("--sigma", type=float, default=1.22, help="the blur of the line-integral targets (px): "
                    "the simulator's 0.7 px and preprocessing's 1 px combined")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tracking", default="default", help="the schedule (benchmarks/tracking.py's variants)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from appearance import load_ct, start_report, write_report
    from tracking import TRACKING_VARIANTS, benchmark_trajectory, depth_error
    if args.tracking not in TRACKING_VARIANTS:
        ap.error(f"--tracking must be one of {sorted(TRACKING_VARIANTS)}")

    from xraypose.appearance import detector as det
    from xraypose.appearance import form_xray
    from xraypose.appearance.families import _physical_mu
    from xraypose.fiducials import bone_points, select_fiducials
    from xraypose.metrics import pose_errors
    from xraypose.preprocess import preprocess
    from xraypose.register import Registrar, RegistrationConfig
    from xraypose.register.objective import gaussian_kernel, separable_blur
    from xraypose.render.core import render

    report = start_report(vars(args))
    name, vol = load_ct(args.ct)
    D = args.detector
    cam, truth = benchmark_trajectory(vol, args.seed, max(args.frames) + 1, D)
    reg = Registrar(vol, RegistrationConfig(drr_blur=1.0, record_trajectory=False, num_threads=args.threads))
    reg = reg.derive(levels=TRACKING_VARIANTS[args.tracking]())
    mu = _physical_mu(vol).to(F64)
    aff = vol.affine.to(F64)

    def blur(x, s):
        return separable_blur(x[None, None].float(), gaussian_kernel(s), same=True)[0, 0].double()

    rows = []
    t0 = time.perf_counter()
    for f in args.frames:
        fx = form_xray(vol, cam, truth[f], family="ours", generator=torch.Generator().manual_seed(f),
                       photons=0, supersample=1)
        before = preprocess(fx.raw, fx.camera, **fx.preprocess, blur_domain="intensity")
        after = preprocess(fx.raw, fx.camera, **fx.preprocess)
        T, pcam = after.transform_pose(fx.pose), after.camera
        fid = select_fiducials(bone_points(vol), n=20, seed=args.seed, camera=pcam, poses=T, margin_px=2)
        fine = pcam.resize(2 * pcam.height, 2 * pcam.width)
        with torch.no_grad():
            L = render(mu, aff, fine, T, renderer="siddon", backend="reference")[0, 0]
        targets = {
            "lines_log_blur": blur(det.area_average(L, 2), args.sigma),
            "lines_intensity_blur": -torch.log(blur(det.area_average(torch.exp(-L), 2), args.sigma)),
            "simulator_blur_before_log": before.image.double(),
            "simulator_blur_after_log": after.image.double(),
        }
        for kind, img in targets.items():
            r = reg.register(img.float()[None, None], pcam, T[None].float())
            P = r.poses[0].to(F64)
            row = {"frame": f, "target": kind, "mtre_mm": float(pose_errors(P, T, fid, pcam)["mtre"]),
                   "depth_error_mm": depth_error(P, T, fid)}
            rows.append(row)
            print(f"frame {f:3d} {kind:28s} mTRE {row['mtre_mm']:.3f} mm, along the beam {row['depth_error_mm']:+.3f} mm",
                  flush=True)
    report.update(rows=rows, seconds=time.perf_counter() - t0)
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
