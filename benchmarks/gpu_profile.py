"""Where one DRR call's time goes on a GPU: our Triton renderer against nanodrr's, under torch.profiler.

The GPU check (benchmarks/gpu_check.py, 2026-12-04) timed our Triton DRR at 2.8 ms for one 128² forward
on an H200 against nanodrr's 1.5 ms, nearly flat from 128² to 200²: a time that does not grow with the
rays is spent outside the ray kernel.  This script says where, per call: the wall time (CUDA events),
the GPU time of the kernels it launched (their sum and how many), and the largest kernels and CPU ops.

    python benchmarks/gpu_profile.py [--device cuda] [--sizes 128 200] [--json OUT.json]

Without a GPU (``--device cpu``) it profiles the CPU backend the same way (a check of the script).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.render import _poses, _sample_as_nifti  # noqa: E402


def _renderer(impl: str, vol, ct: Path, size: int, samples: int, device: str):
    """``fn(camera_to_world) -> images``: benchmarks/render.py's renderers (impl "xraypose": ours, Triton on a
    GPU and the CPU kernel elsewhere; "nanodrr"), after checking that ours did not fall back to the reference."""
    import torch

    from benchmarks.render import _make_renderer

    if impl == "nanodrr":
        return _make_renderer("nanodrr", SimpleNamespace(ct=str(ct), samples=samples), vol, size, device)
    backend = "triton" if device == "cuda" else "cpu"
    from xraypose.render import backends

    with torch.no_grad():  # as a user's first inference render: the backend must hold there too
        used = backends.resolve(backend, "trilinear", torch.device(device))
    if used != backend:  # a fallback to the reference would time the wrong renderer
        raise RuntimeError(f"backend {backend!r} unavailable here: {backends.triton_status()}")
    return _make_renderer(f"xraypose-{backend}", SimpleNamespace(ct=str(ct), samples=samples), vol, size, device)


def profile_one(impl: str, vol, ct: Path, size: int, mode: str, samples: int, device: str) -> dict:
    """One (impl, size, mode): wall per call and what the profiler saw, per call (10 calls profiled)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from xraypose.geometry import se3_exp

    cuda = device == "cuda"
    fn = _renderer(impl, vol, ct, size, samples, device)
    B = 8 if mode == "batch" else 1
    T0, xi = _poses(B, vol.get_isocenter(), torch.float32, device)

    def once():
        if mode == "fwdbwd":
            x = xi.clone().requires_grad_()
            img = fn(T0 @ se3_exp(x))
            img.sum().backward()
            return
        with torch.no_grad():
            fn(T0 @ se3_exp(xi))

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(3):
        once()
    sync()
    walls = []
    for _ in range(20):
        sync()
        t = time.perf_counter()
        once()
        sync()
        walls.append(time.perf_counter() - t)
    calls = 10
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(calls):
            once()
        sync()
    events = prof.key_averages()
    dev_attr = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    kernels = [e for e in events if cuda and getattr(e, dev_attr, 0) > 0 and e.device_type.name == "CUDA"]
    gpu_us = sum(getattr(e, dev_attr) for e in kernels) / calls
    launches = sum(e.count for e in kernels) / calls
    top_k = sorted(kernels, key=lambda e: -getattr(e, dev_attr))[:8]
    cpu_ops = sorted([e for e in events if e.device_type.name == "CPU"], key=lambda e: -e.self_cpu_time_total)[:8]
    return {
        "impl": impl, "size": size, "mode": mode, "batch": B, "samples": samples,
        "wall_ms_median": 1e3 * statistics.median(walls),
        "gpu_kernel_ms_per_call": gpu_us / 1e3,
        "kernel_launches_per_call": launches,
        "cpu_self_ms_per_call": sum(e.self_cpu_time_total for e in events if e.device_type.name == "CPU") / 1e3 / calls,
        "top_kernels": [{"name": e.key[:90], "ms_per_call": getattr(e, dev_attr) / 1e3 / calls,
                         "count_per_call": e.count / calls} for e in top_k],
        "top_cpu_ops": [{"name": e.key[:90], "self_cpu_ms_per_call": e.self_cpu_time_total / 1e3 / calls,
                         "count_per_call": e.count / calls} for e in cpu_ops],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 200])
    ap.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd", "batch"])
    ap.add_argument("--impls", nargs="+", default=["xraypose", "nanodrr"])
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    from xraypose.volume import load_ct

    ct = _sample_as_nifti()
    vol = load_ct(ct)
    rows = []
    for impl in args.impls:
        for size in args.sizes:
            for mode in args.modes:
                try:
                    r = profile_one(impl, vol, ct, size, mode, args.samples, args.device)
                except Exception as e:  # one failing row must not lose the others
                    r = {"impl": impl, "size": size, "mode": mode, "error": f"{type(e).__name__}: {e}"[:300]}
                rows.append(r)
                if "error" in r:
                    print(f"{impl:9s} {mode:7s} {size:4d}  ERROR {r['error']}", flush=True)
                    continue
                print(f"{impl:9s} {mode:7s} {size:4d}  wall {r['wall_ms_median']:7.3f} ms  kernels "
                      f"{r['gpu_kernel_ms_per_call']:7.3f} ms in {r['kernel_launches_per_call']:5.1f} launches, "
                      f"host ops {r['cpu_self_ms_per_call']:7.3f} ms",
                      flush=True)
                for k in r["top_kernels"][:5]:
                    print(f"      gpu {k['ms_per_call']:7.3f} ms x{k['count_per_call']:.0f}  {k['name']}")
                for k in r["top_cpu_ops"][:5]:
                    print(f"      cpu {k['self_cpu_ms_per_call']:7.3f} ms x{k['count_per_call']:.0f}  {k['name']}")
    out = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
           "torch": torch.__version__, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
