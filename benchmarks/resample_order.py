"""Low-dose frames formed on a fine detector: resampled after the log (as `xraypose track` does) or
binned as intensities first.

For frames of the tracking benchmark's trajectory (`benchmarks/tracking.py`: ``--ct``, ``--seed``,
family "lowdose"), each X-ray is formed on a ``--fine``² detector (280 mm) with the family's photons
per registered pixel spread over the finer pixels (the same dose per mm²), then brought to the
registered 128 rows three ways, and the tracking schedule's 128-row objective is read at the true
pose (1 − ½‖r‖²: 1 for a perfect match).  Every path is blurred alike in registered pixels (the
family's σ = 1 px of the 128-row image, as the DRRs are): σ = 1 px at 128 rows, k px at the fine size:

* ``after_log``: ``preprocess(..., size=..., resample_domain="line-integral")`` — the log of each fine
  pixel, then resampled (preprocess's only order until 2026-12-02);
* ``binned``: ``preprocess(..., size=..., resample_domain="intensity")`` — the fine pixels' intensities
  averaged over each registered pixel (a binned detector), then their log (what ``"auto"``, the default,
  does for raw intensities);
* ``formed_128``: the same moment formed on the 128² detector directly (the tracking benchmark's frames).

``--dose-scale K`` multiplies the photons (K = 100: high-dose frames, where the log's noise no longer
decides and the order's other difference — the log of a mean is not the mean of the logs at an edge —
would show).

    python benchmarks/resample_order.py --json OUT.json [--ct pelvis] [--seed 1] [--frames 0 10 20 30 40]
        [--dose-scale 1]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--ct", default="pelvis")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--frames", type=int, nargs="*", default=[0, 10, 20, 30, 40])
    ap.add_argument("--fine", type=int, default=512, help="rows of the fine detector (a multiple of 128)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dose-scale", type=float, default=1.0, help="multiply the family's photons by this")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.fine % 128:
        raise SystemExit("--fine must be a multiple of 128")

    from appearance import load_ct, start_report, write_report
    from tracking import benchmark_trajectory, frame_preprocessing

    from xraypose.appearance import form_xray
    from xraypose.appearance.families import LOWDOSE_PHOTONS
    from xraypose.camera import Camera
    from xraypose.preprocess import preprocess
    from xraypose.register import Registrar, RegistrationConfig
    from xraypose.register.objective import LevelObjective, level_channels
    from xraypose.register.tracking import TRACKING_LEVELS

    report = start_report(vars(args))
    name, vol = load_ct(args.ct)
    cam, truth = benchmark_trajectory(vol, args.seed, max(args.frames) + 1)
    k = args.fine // 128
    fine = Camera(sdd=1020.0, height=args.fine, width=args.fine, delx=280.0 / args.fine)
    reg = Registrar(vol, RegistrationConfig(drr_blur=1.0))
    lv = TRACKING_LEVELS[-1]
    dens, aff = reg.volume_level(lv.volume_mm, level_channels(lv))

    def score(pre, T) -> float:
        m = None if pre.mask is None else pre.mask[None, None]
        ob = LevelObjective(lv, reg.config, dens, aff, pre.image[None, None].float(), pre.camera,
                            torch.Generator().manual_seed(0), masks=m)
        with torch.no_grad():
            r, _, _ = ob.residual(pre.transform_pose(T).float()[None], torch.zeros(1, dtype=torch.long))
        return float(1 - 0.5 * r.double().pow(2).sum())

    rows = []
    lo, hi = (math.log(x) for x in LOWDOSE_PHOTONS)
    for f in args.frames:  # the tracking benchmark's draw of photons per registered pixel
        u = float(torch.rand((), generator=torch.Generator().manual_seed(args.seed * 7919 + f), dtype=torch.float64))
        photons = math.exp(lo + u * (hi - lo)) * args.dose_scale
        g = torch.Generator().manual_seed(args.seed * 7 + f)
        fx = form_xray(vol, fine, truth[f], family="lowdose", generator=g, photons=photons / k ** 2)
        prep = frame_preprocessing(fx, args.fine, 128)  # as benchmarks/tracking.py --form-detector
        after_log = preprocess(fx.raw, fx.camera, **prep, resample_domain="line-integral")
        binned = preprocess(fx.raw, fx.camera, **prep, resample_domain="intensity")
        g = torch.Generator().manual_seed(args.seed * 7 + f)
        fx128 = form_xray(vol, cam, truth[f], family="lowdose", generator=g, photons=photons)
        formed = preprocess(fx128.raw, fx128.camera, **fx128.preprocess)
        row = {"frame": f, "photons_per_registered_pixel": photons, "after_log": score(after_log, truth[f]),
               "binned": score(binned, truth[f]), "formed_128": score(formed, truth[f])}
        rows.append(row)
        print(f"frame {f:3d}: {photons:6.0f} photons per 128-row pixel | after the log {row['after_log']:.4f}, "
              f"binned {row['binned']:.4f}, formed at 128 {row['formed_128']:.4f}", flush=True)
    med = {k2: float(torch.tensor([r[k2] for r in rows]).median()) for k2 in ("after_log", "binned", "formed_128")}
    report.update(rows=rows, median_similarity_at_truth=med)
    write_report(args.json, report, [f"{k2:12s} median similarity at the truth {v:.4f}" for k2, v in med.items()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
