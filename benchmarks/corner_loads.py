"""Gathers against gather-free corner loads in the fused CPU kernel, in one process.

The AVX2 path reads a trilinear sample's 8 corners either with one ``vgatherdps``
per corner or, where the layout allows, with plain loads of corners that are
adjacent in memory (``cpu_kernels.cpp``, ``LOADS_*``): the same values, the same
arithmetic after, bit-identical images.  Which is faster depends on the CPU
(gathers are slow on several AMD generations); ``xraypose.render.backends.cpu``
picks one by a short self-timing cached per CPU model.  This script measures both
on ``benchmarks/render.py``'s geometry (AP view, 1020 mm, 400 mm field of view,
500 samples per ray) for the two layouts the package renders:

* ``drr``: ``xraypose.render.DRR``'s density basis, 2 channels stored channels-last (quad loads);
* ``registration``: the (C, I, J, K) channels-first basis registration renders (pair loads; C = 3 today),
  at a coarse level (the CT pooled to 4 mm voxels, 64² rays) and at the CT's full resolution.

Modes ``fwd`` (no gradient) and ``fwdbwd`` (gradient to the 6 pose parameters).  The modes
alternate call by call within each round, so a load change hits both; reported are the medians
over the rounds of the per-round minimum of 3 calls: CPU time of the process with 1 thread (less
sensitive to other jobs than wall time) and wall time with 2 threads.  Also the 1-minute load average.

    python benchmarks/corner_loads.py [--ct PATH] [--rounds 15] [--size 128] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DEFAULT_CT = ROOT.parent / "shared" / "data" / "ct" / "abdomen_pancreas_ct_cbct_001" / "Pancreas-CT-CB_001_CT.nii.gz"
MODES = {"gather": 0, "pairs": 3}


def main() -> None:
    import torch

    from xraypose.camera import Camera, carm_pose
    from xraypose.geometry import se3_exp
    from xraypose.render import DRR, render
    from xraypose.render.backends import cpu
    from xraypose.render.density import registration_basis
    from xraypose.volume import load_sample_ct, read_volume

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ct", default=str(DEFAULT_CT) if DEFAULT_CT.exists() else "sample")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    lib = cpu._load()
    if lib is None or not lib.xrp_has_avx2():
        raise SystemExit(f"no AVX2 kernel here ({cpu.unavailable_reason() or 'portable build'}): nothing to compare")
    vol = load_sample_ct() if args.ct == "sample" else read_volume(args.ct)
    iso = vol.get_isocenter()
    T0 = carm_pose(0.0, 0.0, sod=612.0, isocenter=iso).float()
    xi = 0.02 * torch.randn(1, 6, generator=torch.Generator().manual_seed(0))
    cam = Camera(sdd=1020.0, height=args.size, width=args.size, delx=400.0 / args.size)
    drr = DRR(vol, cam, n_samples=args.samples, backend="cpu")
    basis = registration_basis(vol)  # (C, I, J, K) channels-first
    pooled = torch.nn.functional.avg_pool3d(basis[None], 4, ceil_mode=True)[0].contiguous()
    aff4 = vol.affine.clone()
    aff4[:3, :3] *= 4
    aff4[:3, 3] += vol.affine[:3, :3] @ torch.full((3,), 1.5, dtype=vol.affine.dtype)
    cam64 = Camera(sdd=1020.0, height=64, width=64, delx=400.0 / 64)
    cases = {
        "drr": lambda T: drr(T),
        "registration-full": lambda T: render(basis, vol.affine, cam, T, n_samples=args.samples, backend="cpu"),
        "registration-4mm": lambda T: render(pooled, aff4, cam64, T, n_samples=args.samples // 4, backend="cpu"),
    }

    def call(fn, mode):
        if mode == "fwd":
            with torch.no_grad():
                return fn(T0 @ se3_exp(xi))
        x = xi.clone().requires_grad_()
        img = fn(T0 @ se3_exp(x))
        img.sum().backward()
        return x.grad

    before = lib.xrp_set_corner_loads(-1)
    rows = {}
    images = {}
    try:
        for case, fn in cases.items():
            for mode in ("fwd", "fwdbwd"):
                for name, mask in MODES.items():  # warm-up; the occupancy grid is built on the second call
                    lib.xrp_set_corner_loads(mask)
                    call(fn, mode)
                    images[(case, mode, name)] = call(fn, mode)
                per = {(name, threads): [] for name in MODES for threads in (1, 2)}
                for _ in range(args.rounds):
                    for threads in (1, 2):
                        torch.set_num_threads(threads)
                        for name, mask in MODES.items():
                            lib.xrp_set_corner_loads(mask)
                            best = []
                            for _ in range(3):
                                t, c = time.perf_counter(), time.process_time()
                                call(fn, mode)
                                best.append((time.process_time() - c) if threads == 1 else (time.perf_counter() - t))
                            per[(name, threads)].append(min(best))
                row = {f"{name}_{'cpu1' if threads == 1 else 'wall2'}_ms": round(1e3 * statistics.median(v), 2)
                       for (name, threads), v in per.items()}
                row["same_bits"] = bool(torch.equal(images[(case, mode, "gather")], images[(case, mode, "pairs")]))
                row["load_avg"] = round(os.getloadavg()[0], 2)
                rows[f"{case} {mode}"] = row
                print(f"{case:18s} {mode:7s} gather {row['gather_cpu1_ms']:7.1f} ms, pairs {row['pairs_cpu1_ms']:7.1f} "
                      f"ms CPU (1 thread): {row['gather_cpu1_ms'] / row['pairs_cpu1_ms']:.2f}x;  wall (2 threads) "
                      f"{row['gather_wall2_ms']:6.1f} vs {row['pairs_wall2_ms']:6.1f} ms;  same bits {row['same_bits']}; "
                      f"load {row['load_avg']}", flush=True)
    finally:
        lib.xrp_set_corner_loads(before)
    out = {"cpu": cpu.kernel_info(), "ct": args.ct, "volume_shape": list(vol.shape), "size": args.size,
           "samples": args.samples, "rounds": args.rounds, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
