"""DRR rendering benchmark: ours (each backend) vs DiffDRR and nanodrr, side by side in one run.

Protocol: a 512×512×~134 CT
(../shared/data/ct/abdomen_pancreas_ct_cbct_001, or --ct), source-to-detector
distance 1020 mm, a 400 mm field of view on the detector (delx = 400/size), 500
samples per ray (trilinear), an AP view through the volume centre (source 612
mm from it) nudged by a fixed small random SE(3) offset: the same camera-to-world
matrices for every implementation (converted to DiffDRR's frame with
xraypose.converters; nanodrr's camera frame is ours).

Modes: "fwd" (no grad) at each --sizes; "fwdbwd" (forward + backward to the 6
pose parameters) at 128² (--fwdbwd-sizes); "batch8" (8 poses, forward) at 128².
On a GPU: python benchmarks/render.py --device cuda --impls xraypose-triton nanodrr --fwdbwd-sizes 128 200

Peak memory: resident-set high-water mark above what the process held once the
CT was loaded and one warm-up call made (Linux: /proc/self/clear_refs + VmHWM),
in MiB; on CUDA, torch.cuda.max_memory_allocated above the allocation after warm-up.

Implementations (each skipped when not importable or not applicable):
  xraypose-<backend>          our trilinear renderer, backend reference | cpu | triton
  xraypose-<backend>-siddon   our Siddon renderer (reference | cpu)
  nanodrr                     nanodrr.render (torch path on CPU, its Triton kernel on CUDA)
  diffdrr-trilinear           diffdrr.drr.DRR(renderer="trilinear"), n_points = samples
  diffdrr-siddon              diffdrr.drr.DRR(renderer="siddon")
DiffDRR and nanodrr are optional: install them without touching torch, e.g. in
a separate venv that sees the project's packages:
    pip install diffdrr nanodrr torch==<the installed version> && pip install -e . torch==<same>

Each measurement runs in its own subprocess so peaks do not mix.

    python benchmarks/render.py [--ct PATH] [--impls ...] [--sizes 64 128 256] [--repeats 5] [--json OUT.json]

Writes one JSON row per measurement:
{"impl": "xraypose-cpu", "mode": "fwd"|"fwdbwd"|"batch8", "size": 128, "median_s": …, "peak_mib": …, …}
(extra keys: min_s; cpu_s, the median CPU time of the process per call, all threads
together, less sensitive than wall time to other jobs on a shared machine; samples,
threads, device, load_avg (1-minute load average after the run), ncc_vs_reference, kernel (xraypose-cpu:
the CPU and the corner loads chosen)). --rounds R runs the whole plan R times, interleaved, and prints the
medians over the rounds with every implementation's wall and CPU time over xraypose-cpu's.
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DEFAULT_CT = ROOT.parent / "shared" / "data" / "ct" / "abdomen_pancreas_ct_cbct_001" / "Pancreas-CT-CB_001_CT.nii.gz"
ALL_IMPLS = ["xraypose-reference", "xraypose-cpu", "xraypose-triton", "xraypose-reference-siddon",
             "xraypose-cpu-siddon", "nanodrr", "diffdrr-trilinear", "diffdrr-siddon"]
DEFAULT_IMPLS = ["xraypose-cpu", "xraypose-triton", "xraypose-cpu-siddon", "nanodrr", "diffdrr-trilinear",
                 "diffdrr-siddon"]
SOD = 612.0
SDD = 1020.0
FOV = 400.0


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


def _available(impl: str, device: str) -> str | None:
    """None if ``impl`` can run here, else why not."""
    import importlib.util

    if impl.startswith("xraypose-"):
        backend = impl.split("-")[1]
        if backend == "triton":
            if device != "cuda":
                return "needs CUDA"
            if importlib.util.find_spec("triton") is None:
                return "triton not installed"
        if backend == "cpu" and device != "cpu":
            return "CPU only"
        if backend == "cpu":
            from xraypose.render.backends import cpu

            if not cpu.available():
                return cpu.unavailable_reason()
        return None
    mod = impl.split("-")[0]
    if importlib.util.find_spec(mod) is None:
        return f"{mod} not installed"
    return None


def _poses(B: int, iso, dtype, device):
    import torch

    from xraypose.camera import carm_pose

    T0 = carm_pose(0.0, 0.0, sod=SOD, isocenter=iso).to(dtype=dtype, device=device)
    g = torch.Generator().manual_seed(0)
    xi = (0.02 * torch.randn(8, 6, generator=g))[:B].to(dtype=dtype, device=device)
    return T0, xi


def _make_renderer(impl: str, args, vol, size: int, device: str):
    """Returns fn(camera_to_world (B, 4, 4)) -> images (B, 1, H, W), for impl."""
    import torch

    from xraypose.camera import Camera

    cam = Camera(sdd=SDD, height=size, width=size, delx=FOV / size)
    if impl.startswith("xraypose-"):
        from xraypose.render import DRR

        parts = impl.split("-")
        backend = parts[1]
        renderer = parts[2] if len(parts) > 2 else "trilinear"
        drr = DRR(vol, cam, renderer=renderer, n_samples=args.samples if renderer == "trilinear" else None,
                  backend=backend).to(device)
        return lambda T: drr(T)
    if impl == "nanodrr":
        from nanodrr.camera import make_k_inv
        from nanodrr.data import Subject
        from nanodrr.drr import render as nano_render

        subject = Subject.from_filepath(args.ct).to(device)
        k_inv = make_k_inv(SDD, FOV / size, FOV / size, 0.0, 0.0, size, size, dtype=torch.float32, device=device)
        sdd = torch.tensor([SDD], dtype=torch.float32, device=device)

        def nano(T):
            B = T.shape[0]
            return nano_render(subject, k_inv.expand(B, -1, -1), T, sdd.expand(B), size, size,
                               n_samples=args.samples)

        return nano
    if impl.startswith("diffdrr-"):
        from diffdrr.data import read
        from diffdrr.drr import DRR as DiffDRR
        from diffdrr.pose import RigidTransform

        from xraypose.converters import DIFFDRR_TO_OURS

        renderer = impl.split("-")[1]
        subject = read(args.ct, orientation=None, center_volume=False)
        # Our camera (reverse_x_axis=False) is DiffDRR's with reverse_x_axis=True (see converters.camera_from_diffdrr).
        drr = DiffDRR(subject, sdd=SDD, height=size, delx=FOV / size, renderer=renderer,
                      reverse_x_axis=True).to(device)
        to_diffdrr = torch.linalg.inv(DIFFDRR_TO_OURS).to(dtype=torch.float32, device=device)
        kw = dict(n_points=args.samples) if renderer == "trilinear" else {}

        def diff(T):
            return drr(RigidTransform(T @ to_diffdrr), **kw)

        return diff
    raise ValueError(impl)


def _kernel_info(impl: str):
    """How our CPU kernel runs (corner loads, CPU), for the xraypose-cpu rows."""
    if not impl.startswith("xraypose-cpu"):
        return None
    from xraypose.render.backends import cpu

    info = cpu.kernel_info()
    return {k: info.get(k) for k in ("cpu", "corner_loads", "source")}


def measure(args) -> dict:
    """Run one measurement in this process; returns a row."""
    import torch

    from xraypose.geometry import se3_exp
    from xraypose.volume import load_ct

    torch.set_num_threads(args.threads)
    device = args.device
    cuda = device == "cuda"
    vol = load_ct(args.ct)
    size = args.size
    fn = _make_renderer(args.impl, args, vol, size, device)
    B = 8 if args.mode == "batch8" else 1
    T0, xi = _poses(B, vol.get_isocenter(), torch.float32, device)

    def once():
        if args.mode == "fwdbwd":
            x = xi.clone().requires_grad_()
            img = fn(T0 @ se3_exp(x))
            img.sum().backward()
            return img.detach()
        with torch.no_grad():
            return fn(T0 @ se3_exp(xi))

    def sync():
        if cuda:
            torch.cuda.synchronize()

    img = once()  # warm-up (compiles kernels, builds caches)
    sync()
    ncc = None
    if args.impl != "xraypose-reference" and args.mode != "batch8" and size <= 256:
        # Same geometry? Correlate with our reference renderer's image of the same pose.
        from xraypose.camera import Camera
        from xraypose.render import DRR

        ren = "siddon" if "siddon" in args.impl else "trilinear"
        ref = DRR(vol, Camera(sdd=SDD, height=size, width=size, delx=FOV / size), renderer=ren,
                  n_samples=args.samples if ren == "trilinear" else None, backend="reference")
        with torch.no_grad():
            r = ref(T0.cpu() @ se3_exp(xi.cpu())).double().flatten()
        a = img.double().cpu().flatten()
        a, r = a - a.mean(), r - r.mean()
        ncc = float((a * r).sum() / (a.norm() * r.norm()).clamp_min(1e-30))
        del ref
    base = _rss_kib("VmRSS")
    ok = _reset_peak()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        cbase = torch.cuda.memory_allocated()
    times, cpu = [], []
    for _ in range(args.repeats):
        sync()
        t, c = time.perf_counter(), time.process_time()
        once()
        sync()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - cbase) / 2**20
    else:
        peak = (_rss_kib("VmHWM") - base) / 1024 if ok else float("nan")
    return {
        "impl": args.impl,
        "mode": args.mode,
        "size": size,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "cpu_s": statistics.median(cpu),
        "peak_mib": max(0.0, peak),
        "samples": None if "siddon" in args.impl else args.samples,
        "threads": args.threads,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "volume_shape": list(vol.shape),
        "load_avg": os.getloadavg()[0],
        "kernel": _kernel_info(args.impl),
        "ncc_vs_reference": ncc,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ct", default=str(DEFAULT_CT) if DEFAULT_CT.exists() else "sample")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="detector sizes for fwd")
    p.add_argument("--fwdbwd-sizes", type=int, nargs="+", default=[128],
                   help="sizes for fwdbwd (the GPU target is stated at 200)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128], help="sizes for batch8")
    p.add_argument("--impls", nargs="+", default=DEFAULT_IMPLS, choices=ALL_IMPLS)
    p.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd", "batch8"], choices=["fwd", "fwdbwd", "batch8"])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1, help="run the whole plan this many times, interleaved")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    p.add_argument("--json", type=Path)
    p.add_argument("--_one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args._one:
        print(json.dumps(measure(args)))
        return

    tmp_ct = None
    if args.ct == "sample":  # nanodrr and DiffDRR read files: the bundled CT written as a NIfTI first
        tmp_ct = _sample_as_nifti()
        args.ct = str(tmp_ct)
    try:
        _run_plan(args)
    finally:
        if tmp_ct is not None:
            import shutil

            shutil.rmtree(tmp_ct.parent, ignore_errors=True)


def _sample_as_nifti() -> Path:
    """The bundled sample CT (as :func:`xraypose.volume.load_sample_ct` reads it) in a temporary NIfTI."""
    import tempfile

    import nibabel as nib

    from xraypose.volume import load_sample_ct

    vol = load_sample_ct()
    path = Path(tempfile.mkdtemp(prefix="xrp-bench-render-")) / "sample_ct.nii.gz"
    nib.Nifti1Image(vol.data.float().numpy(), vol.affine.double().numpy()).to_filename(str(path))
    return path


def _run_plan(args) -> None:
    plan = []
    for _ in range(args.rounds):  # rounds interleave the implementations: a load change hits them all
        for mode in args.modes:
            sizes = {"fwd": args.sizes, "fwdbwd": args.fwdbwd_sizes, "batch8": args.batch_sizes}[mode]
            for size in sizes:
                for impl in args.impls:
                    plan.append((impl, mode, size))
    rows = []
    print(f"CT: {args.ct}\nsdd {SDD:.0f} mm, {FOV:.0f} mm FOV, {args.samples} samples/ray (trilinear), "
          f"{args.threads} threads, device {args.device}")
    print(f"{'impl':28s} {'mode':7s} {'size':>5s} {'median s':>10s} {'CPU s':>8s} {'peak MiB':>9s} {'NCC':>7s} {'load':>5s}")
    skipped = {}
    for impl, mode, size in plan:
        why = skipped.get(impl) or _available(impl, args.device)
        if why:
            if impl not in skipped:
                print(f"{impl:28s} skipped: {why}")
            skipped[impl] = why
            continue
        cmd = [sys.executable, __file__, "--_one", "--ct", args.ct, "--size", str(size), "--mode", mode,
               "--impl", impl, "--samples", str(args.samples), "--repeats", str(args.repeats),
               "--threads", str(args.threads), "--device", args.device]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"{impl:28s} {mode:7s} {size:5d}  TIMED OUT after {args.timeout:.0f} s")
            continue
        if out.returncode != 0:
            print(f"{impl:28s} {mode:7s} {size:5d}  FAILED: {out.stderr.strip().splitlines()[-1:]}")
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        ncc = "" if row["ncc_vs_reference"] is None else f"{row['ncc_vs_reference']:.4f}"
        print(f"{row['impl']:28s} {mode:7s} {size:5d} {row['median_s']:10.3f} {row.get('cpu_s', float('nan')):8.3f} "
              f"{row['peak_mib']:9.0f} {ncc:>7s} {row['load_avg']:5.1f}", flush=True)
    _ratios(rows, args.rounds)
    if args.json:
        from xraypose.io import atomic_write_json

        atomic_write_json(args.json, rows)
        print(f"wrote {args.json}")


def _ratios(rows: list, rounds: int) -> None:
    """Medians over the rounds, and every implementation's times over xraypose-cpu's (same mode and size)."""
    groups = {}
    for r in rows:
        groups.setdefault((r["impl"], r["mode"], r["size"]), []).append(r)
    med = {k: (statistics.median(x["median_s"] for x in v), statistics.median(x["cpu_s"] for x in v), len(v))
           for k, v in groups.items()}
    print(f"\nmedians over {rounds} round(s); ratio = other / xraypose-cpu (wall, CPU)")
    for (impl, mode, size), (wall, cpu_s, n) in med.items():
        ours = med.get(("xraypose-cpu", mode, size))
        ratio = "" if ours is None or impl == "xraypose-cpu" else f"  {wall / ours[0]:5.1f}x  {cpu_s / ours[1]:5.1f}x"
        print(f"{impl:28s} {mode:7s} {size:5d} {wall:10.4f} {cpu_s:8.4f}  (n={n}){ratio}")


if __name__ == "__main__":
    main()
