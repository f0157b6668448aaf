"""Sharded evaluation benchmark: ``xraypose evaluate`` on 1 process vs N under torchrun.

The case folder: the example case made from the bundled pelvis CT
(``python -m xraypose.datasets example``: a DICOM and an NPY view) with its
views copied until it holds ``--xrays`` X-rays (each copy starts from its own
perturbation of the truth, so each is a registration of its own), or ``--case``.
Both runs use the same command (``--start perturb --perturb 10,40 --threads 1
--no-pictures`` and ``--size``), the same environment (``OMP_NUM_THREADS=1``:
one core per process) and fresh output folders; the sharded one is

    python -m torch.distributed.run --nproc_per_node N -m xraypose.cli -- evaluate CASE -o OUT ...

Reported: wall time of each whole command (start-up, CT and X-ray loading,
registration, report) and the throughput ratio; the same for the evaluation
proper (``summary.json``'s ``total_s``: rank 0 from the output check to the
report, so without the ~2-6 s of imports and loading each process and torchrun's
launcher pay first); CPU model and the 1-minute load average before and after
each run; the diff of the two metrics.csv (every column but the times ``init
(s)`` and ``opt (s)``, compared as text).

    python benchmarks/evaluate_shards.py [--xrays 20] [--procs 2] [--size 128] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("init (s)", "opt (s)")


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_case(root: Path, n: int) -> Path:
    """The example case folder with its views copied up to ``n`` X-rays."""
    sys.path.insert(0, str(ROOT))
    from xraypose.datasets import make_example_case

    case = make_example_case(root / "case")
    poses = json.loads((case / "poses.json").read_text())
    views = sorted(p for p in (case / "xrays").iterdir() if p.suffix in (".dcm", ".npy"))
    k = 0
    while len(poses) < n:
        src = views[k % len(views)]
        name = f"{src.stem}-{k // len(views) + 1}{src.suffix}"
        shutil.copy(src, case / "xrays" / name)
        if src.with_suffix(".json").is_file():
            shutil.copy(src.with_suffix(".json"), (case / "xrays" / name).with_suffix(".json"))
        poses[name] = poses[src.name]
        k += 1
    (case / "poses.json").write_text(json.dumps(poses))
    return case


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run(cmd: list[str], env: dict) -> dict:
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return {"wall_s": wall, "load_before": load0, "load_after": os.getloadavg()[0], "stdout": p.stdout.strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--xrays", type=int, default=20)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--case", type=Path, default=None, help="a case folder (default: the example case, copied)")
    ap.add_argument("--perturb", default="10,40")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xrp-shards-"))
    try:
        case = args.case or make_case(work, args.xrays)
        common = ["evaluate", str(case), "--start", "perturb", "--perturb", args.perturb, "--size", str(args.size),
                  "--threads", "1", "--no-pictures", "--quiet"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        one = run([sys.executable, "-m", "xraypose.cli", *common, "-o", str(work / "one")], env)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        many = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.procs),
                    "--master_port", str(port), "-m", "xraypose.cli", "--", *common, "-o", str(work / "many")], env)
        a, b = rows(work / "one" / "metrics.csv"), rows(work / "many" / "metrics.csv")
        for r, d in ((one, "one"), (many, "many")):
            r["evaluate_s"] = json.loads((work / d / "summary.json").read_text())["total_s"]
        differing = [(ra["case"], k, ra[k], rb.get(k)) for ra, rb in zip(a, b) for k in ra
                     if k not in TIMING and ra[k] != rb.get(k)]
        result = {
            "cpu": cpu_model(), "cores": os.cpu_count(), "xrays": len(a), "procs": args.procs, "size": args.size,
            "one": one, "sharded": many, "speedup": one["wall_s"] / many["wall_s"],
            "speedup_evaluate": one["evaluate_s"] / many["evaluate_s"],
            "metrics_rows": [len(a), len(b)], "metrics_same_order": [r["case"] for r in a] == [r["case"] for r in b],
            "metrics_cells_differing": len(differing), "differences": differing[:20],
            "median_opt_s": [sorted(float(r["opt (s)"]) for r in x)[len(x) // 2] for x in (a, b)],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{result['cpu']}, {result['cores']} cores; {result['xrays']} X-rays at {args.size} rows, --threads 1")
    print(f"1 process:   {one['wall_s']:7.1f} s  (load {one['load_before']:.2f} -> {one['load_after']:.2f})")
    print(f"{args.procs} processes: {many['wall_s']:7.1f} s  (load {many['load_before']:.2f} -> "
          f"{many['load_after']:.2f})  -> {result['speedup']:.2f}x the throughput")
    print(f"evaluation proper (summary.json total_s): {one['evaluate_s']:.1f} s vs {many['evaluate_s']:.1f} s -> "
          f"{result['speedup_evaluate']:.2f}x")
    print(f"metrics.csv: {len(a)} vs {len(b)} rows, same order: {result['metrics_same_order']}, "
          f"{len(differing)} cells differ outside the time columns")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
