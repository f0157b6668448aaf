"""DRR rendering benchmark: forward, forward+backward (pose), batch of 8; time and peak memory.

Protocol (issue "Foundation", DESIGN.md §5): a 512×512×~130 CT
(../shared/data/ct/abdomen_pancreas_ct_cbct_001, or --ct), source-to-detector
distance 1020 mm, a 400 mm field of view on the detector, 500 samples per ray
(trilinear), an AP view through the volume centre (source-to-isocenter 612 mm).
Peak memory is the resident-set high-water mark above what the process held
once the CT was loaded (Linux: /proc/self/clear_refs + VmHWM), in MiB.

Each measurement runs in its own subprocess so peaks do not mix.

    python benchmarks/render.py [--ct PATH] [--sizes 64 128 256] [--repeats 5] [--json OUT.json]

Writes one JSON row per measurement:
{"impl": "xraypose-<backend>-<renderer>", "mode": "fwd"|"fwdbwd"|"batch8", "size": 128, "median_s": …, "peak_mib": …}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CT = ROOT.parent / "shared" / "data" / "ct" / "abdomen_pancreas_ct_cbct_001" / "Pancreas-CT-CB_001_CT.nii.gz"


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(args) -> dict:
    """Run one measurement in this process; returns a row."""
    import torch

    from xraypose.camera import Camera, carm_pose
    from xraypose.geometry import se3_exp
    from xraypose.render import DRR
    from xraypose.volume import load_sample_ct, read_volume

    torch.set_num_threads(args.threads)
    vol = load_sample_ct() if args.ct == "sample" else read_volume(args.ct)
    size = args.size
    cam = Camera(sdd=1020.0, height=size, width=size, delx=400.0 / size)
    T0 = carm_pose(0.0, 0.0, sod=612.0, isocenter=vol.get_isocenter()).float()
    renderer = args.renderer
    drr = DRR(vol, cam, renderer=renderer, n_samples=args.samples if renderer == "trilinear" else None,
              backend=args.backend)
    B = 8 if args.mode == "batch8" else 1
    xi = (0.02 * torch.randn(B, 6)).float()

    def once():
        if args.mode == "fwdbwd":
            x = xi.clone().requires_grad_()
            img = drr(T0 @ se3_exp(x))
            img.sum().backward()
        else:
            with torch.no_grad():
                drr(T0 @ se3_exp(xi))

    once()  # warm-up
    base = _rss_kib("VmRSS")
    ok = _reset_peak()
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    peak = (_rss_kib("VmHWM") - base) / 1024 if ok else float("nan")
    return {
        "impl": f"xraypose-{args.backend}-{renderer}",
        "mode": args.mode,
        "size": size,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "peak_mib": max(0.0, peak),
        "samples": args.samples if renderer == "trilinear" else None,
        "threads": args.threads,
        "volume_shape": list(vol.shape),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ct", default=str(DEFAULT_CT) if DEFAULT_CT.exists() else "sample")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--renderers", nargs="+", default=["trilinear", "siddon"])
    p.add_argument("--backend", default="reference")
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", type=Path)
    p.add_argument("--_one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--renderer", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._one:
        print(json.dumps(measure(args)))
        return

    plan = []
    for r in args.renderers:
        plan += [("fwd", s, r) for s in args.sizes]
        plan += [("fwdbwd", 128, r), ("batch8", 128, r)]
    rows = []
    print(f"CT: {args.ct}\nsdd 1020 mm, 400 mm FOV, {args.samples} samples/ray (trilinear), {args.threads} threads")
    print(f"{'impl':32s} {'mode':7s} {'size':>5s} {'median s':>10s} {'peak MiB':>9s}")
    for mode, size, r in plan:
        cmd = [sys.executable, __file__, "--_one", "--ct", args.ct, "--size", str(size), "--mode", mode,
               "--renderer", r, "--backend", args.backend, "--samples", str(args.samples),
               "--repeats", str(args.repeats), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{'xraypose-' + args.backend + '-' + r:32s} {mode:7s} {size:5d}  FAILED: {out.stderr.strip().splitlines()[-1:]}")
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{row['impl']:32s} {mode:7s} {size:5d} {row['median_s']:10.3f} {row['peak_mib']:9.0f}")
    if args.json:
        from xraypose.io import atomic_write_json

        atomic_write_json(args.json, rows)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
