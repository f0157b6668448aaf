"""Display processing, one draw at a time: does the intensity map keep registration at the truth?

Each draw of the ``display`` appearance family (a LUT, a polarity, a gamma, unsharp masking,
vignetting, a bit depth: xraypose/appearance/families.py) is applied, unchanged, to X-rays of a few
nearby poses (``--frames``: the poses of benchmarks/tracking.py's trajectory), as a fluoroscopy
system's processing is to a run; each X-ray is registered **from its true pose**, with the
intensity map off and at the default threshold, at each ``--detector`` size (128 rows: the
tracking schedule, as ``xraypose track``'s later frames; more: the default schedule).  Reports the
end point's mTRE per draw, frame and setting (JSON + a table).

    python benchmarks/display_draws.py --json OUT.json [--ct pelvis|abdomen] [--draws 6] [--detector 128 256]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from xraypose.camera import Camera  # noqa: E402

F64 = torch.float64


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--ct", default="pelvis")
    ap.add_argument("--draws", type=int, default=6)
    ap.add_argument("--first-draw", type=int, default=1000, help="the first draw's generator seed")
    ap.add_argument("--frames", type=int, nargs="+", default=[1, 3, 5], help="poses of the trajectory")
    ap.add_argument("--detector", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="fix a display parameter in every draw (e.g. vignetting=0.1; repeatable)")
    ap.add_argument("--lm-set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a Level field (JSON value) on the Levenberg-Marquardt levels")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from appearance import load_ct, start_report, with_lm_fields, write_report
    from tracking import _parse_param, trajectory

    from xraypose.appearance import form_xray
    from xraypose.fiducials import bone_points, select_fiducials
    from xraypose.metrics import pose_errors
    from xraypose.preprocess import preprocess
    from xraypose.register import Registrar, RegistrationConfig
    from xraypose.register.cases import CaseMaker
    from xraypose.register.config import DEFAULT_LEVELS
    from xraypose.register.tracking import TRACKING_LEVELS

    name, vol = load_ct(args.ct)
    iso = vol.get_isocenter().to(F64)
    rows, report = [], start_report(vars(args))
    for det in args.detector:
        cam = Camera(sdd=1020.0, height=det, width=det, delx=280.0 / det)
        T0, _ = CaseMaker(vol, camera=cam, collimator_px=max(2, det // 32), seed=0).true_pose(0)
        truth = trajectory(T0, iso, max(args.frames) + 1, 2.0, 1.0, 10**6, 0.0, 0.0, 0)
        levels = {"levels": with_lm_fields(TRACKING_LEVELS if det <= 128 else DEFAULT_LEVELS, args.lm_set)}
        regs = {k: Registrar(vol, RegistrationConfig(drr_blur=1.0, record_trajectory=False, num_threads=args.threads,
                                                     **levels, **kw))
                for k, kw in (("map off", {"match_intensity": None}), ("map default", {}))}
        for draw in range(args.draws):
            fixed = dict(_parse_param(kv) for kv in args.param)
            for i, f in enumerate(args.frames):
                g = torch.Generator().manual_seed(args.first_draw + draw)
                fx = form_xray(vol, cam, truth[f], family="display", generator=g, **fixed)
                if i == 0:  # the draw's processing, kept for its other frames
                    fixed = {k: v for k, v in fx.info.items() if k != "family"}
                pre = preprocess(fx.raw, fx.camera, **fx.preprocess)
                pose, pcam = pre.transform_pose(fx.pose), pre.camera
                fid = select_fiducials(bone_points(vol), n=20, seed=0, camera=pcam, poses=pose, margin_px=2)
                row = {"detector": det, "draw": draw, "frame": f, "display": fixed}
                for k, reg in regs.items():
                    t = time.perf_counter()
                    r = reg.register(pre.image[None, None].float(), pcam, pose[None])
                    row[k] = float(pose_errors(r.poses[0], pose, fid, pcam)["mtre"])
                    row[k + " matched levels"] = [s["matched"] for s in r.level_stats]
                    row[k + " seconds"] = time.perf_counter() - t
                rows.append(row)
            mine = [r for r in rows if r["detector"] == det and r["draw"] == draw]
            print(f"{name} {det} px draw {draw} ({fixed['lut']}, {fixed['polarity']}, gamma {fixed['gamma']:.2f}, "
                  f"unsharp {fixed['unsharp_amount']:.1f}, vignetting {fixed['vignetting']:.2f}, {fixed['bits']} bit): "
                  f"from the truth, map off {[round(r['map off'], 2) for r in mine]}, "
                  f"default {[round(r['map default'], 2) for r in mine]} mm", flush=True)
    summary = {}
    for det in args.detector:
        mine = [r for r in rows if r["detector"] == det]
        summary[str(det)] = {k: {"median_mm": statistics.median(r[k] for r in mine),
                                 "below_1mm": sum(r[k] < 1.0 for r in mine) / len(mine)}
                             for k in ("map off", "map default")}
        summary[str(det)]["map worse by > 0.1 mm"] = sum(r["map default"] > r["map off"] + 0.1 for r in mine)
        summary[str(det)]["map better by > 0.1 mm"] = sum(r["map default"] < r["map off"] - 0.1 for r in mine)
        summary[str(det)]["n"] = len(mine)
    report.update(summary=summary, rows=rows)
    write_report(args.json, report, [f"{det} px: {s}" for det, s in summary.items()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
