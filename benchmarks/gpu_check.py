"""One GPU check, ready to run in one go on a lent machine.

On a bare GPU machine (Python 3.12, PyTorch and Triton preinstalled, no network)
this runs, each step in its own child process with its own time budget (a step
that fails, hangs or crashes the CUDA context loses only itself):

1. ``env``: GPU, driver, CUDA, torch and triton versions; modules missing and
   installed from ``--wheels DIR`` (made here by ``benchmarks/gpu_wheels.sh``);
   whether the Triton backend passes its start-up self-check;
2. ``tests``: ``pytest tests/test_backends.py`` and every test named for
   cuda/gpu/triton, per-test outcomes;
3. ``accuracy``: the Triton backend against the reference (image and pose-gradient
   max relative error; float32, bfloat16 and float16 volumes; volume gradient);
4. ``render``: ours against nanodrr's Triton kernel at 128² and 200² (fwd,
   fwd+bwd, batch of 8), CUDA events, warm-up, medians, on the bundled pelvis and
   on it resampled to a realistic 366×303×336;
5. ``train``: a 60-second :func:`xraypose.train.train` run with bfloat16 autocast
   (images/s);
6. ``register``: registration timing on the bundled pelvis (a few simulated
   X-rays, median seconds).

It writes ONE JSON (atomically, after every step) and prints a table at the end.
``--dry-run`` runs every step on the CPU at tiny sizes (the Triton kernels under
``TRITON_INTERPRET=1``) in about a minute or two: the proof here that the check
itself works.

    python benchmarks/gpu_check.py [--dry-run] [--wheels DIR] [--out FILE] [--steps ...] [--budget S]

Default output: ``$OUT/gpu_check.json`` when ``$OUT`` is set, else ``./gpu_check.json``;
beside it ``gpu_check.steps.log`` (every step's output); nothing else (the device tool
brings back at most 8 files).
The device-tool command is in docs/benchmarks.md ("GPU check").
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu_steps import MODULES, STEPS, render_ratios, run_child, write_json_atomic  # noqa: E402

SCHEMA = "xraypose-gpu-check/1"
#: per-step time budgets, seconds: on the GPU machine, and for --dry-run here
BUDGETS = {"env": 90, "tests": 150, "accuracy": 60, "render": 150, "train": 100, "register": 90}
BUDGETS_DRY = {"env": 90, "tests": 120, "accuracy": 90, "render": 120, "train": 90, "register": 90}  # a busy 2-core box
MIN_STEP_S = 25.0  # kept in reserve for each later step when the total budget runs short
TEST_K = "test_backends or ((cuda or gpu or triton) and not gpu_check)"


def default_context(dry: bool) -> dict:
    """The check's settings (sizes, samples, training config, ...) for the GPU or for the dry run."""
    if not dry:
        return {
            "device": "cuda", "dry_run": False, "threads": None, "check_modules": list(MODULES),
            "test_args": ["tests", "-k", TEST_K],
            "accuracy_size": 128, "accuracy_samples": 300,
            "sizes": [128, 200], "modes": ["fwd", "fwdbwd", "batch"], "batch": 8, "samples": 500,
            "impls": ["xraypose-triton", "nanodrr-triton", "xraypose-triton-bfloat16"],
            "warmup": 3, "repeats": 20, "max_s_per_measurement": 3.0, "large_factor": 3.0,
            "train_preset": "diffpose",
            "train_set": {"camera.height": 128, "optim.batch_size": 128, "data.reuse": 1, "run.device": "cuda",
                          "run.time_budget_s": 60.0, "run.max_steps": 1_000_000, "run.val_size": 0,
                          "run.progress": False, "run.checkpoint_every_s": 1e9, "optim.amp": True},
            "register_cases": 5, "register_detector": 256, "register_fast": False,
        }
    return {
        "device": "cpu", "dry_run": True, "threads": 2, "check_modules": list(MODULES),
        "test_args": ["tests/test_backends.py", "-k", "interpreter or wrong_device or auto_picks"],
        "accuracy_size": 12, "accuracy_samples": 24,
        "sizes": [8, 12], "modes": ["fwd", "fwdbwd", "batch"], "batch": 2, "samples": 32,
        "impls": ["xraypose-triton", "nanodrr-torch", "xraypose-cpu"],
        "warmup": 0, "repeats": 2, "max_s_per_measurement": 1.0, "large_factor": 1.25,
        "train_preset": "cpu-fast",
        "train_set": {"camera.height": 32, "optim.batch_size": 4, "data.reuse": 1, "run.device": "cpu",
                      "render.n_samples": 16, "run.time_budget_s": 40.0, "run.max_steps": 4,
                      "run.val_size": 0, "run.progress": False, "run.checkpoint_every_s": 1e9, "run.threads": 2},
        "register_cases": 2, "register_detector": 64, "register_fast": True,
    }


# ----------------------------------------------------------------------------- wheels
def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_index(wheel_dir) -> dict:
    """{normalised distribution name: wheel path} of the ``*.whl`` files in ``wheel_dir``."""
    out = {}
    for p in sorted(Path(wheel_dir).glob("*.whl")):
        out[_norm(p.name.split("-")[0])] = p
    return out


def missing_modules(names) -> list:
    """The import names of ``names`` that this interpreter cannot find (nothing is imported)."""
    miss = []
    for n in names:
        try:
            if importlib.util.find_spec(n) is None:
                miss.append(n)
        except (ImportError, ValueError):
            miss.append(n)
    return miss


def install_missing(wheel_dir, site, modules: dict = MODULES, timeout: float = 120.0) -> dict:
    """Install, from the wheels in ``wheel_dir`` only, the distributions of the modules of ``modules``
    ({import name: (distribution, needed by)}) that cannot be imported, into the folder ``site``
    (``pip install --no-index --find-links DIR --no-deps --target SITE``: the machine's own packages
    are never replaced).  ``site`` is put on ``sys.path``; callers pass it to children in PYTHONPATH.

    Returns {"missing_before", "installed" (wheel files), "no_wheel" (modules without one),
    "pip_exit", "pip_tail", "missing_after"}.
    """
    site = Path(site)
    site.mkdir(parents=True, exist_ok=True)
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    before = missing_modules(modules)
    res = {"wheel_dir": str(wheel_dir), "site": str(site), "missing_before": before, "installed": [],
           "no_wheel": [], "pip_exit": None, "pip_tail": ""}
    if before:
        index = wheel_index(wheel_dir) if wheel_dir and Path(wheel_dir).is_dir() else {}
        files = []
        for m in before:
            w = index.get(_norm(modules[m][0]))
            if w is None:
                res["no_wheel"].append(m)
            elif w not in files:
                files.append(w)
        if files:
            cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheel_dir),
                   "--no-deps", "--no-compile", "--no-cache-dir", "--disable-pip-version-check", "--upgrade",
                   "--target", str(site)] + [str(f) for f in files]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
                res["pip_exit"], res["pip_tail"] = out.returncode, (out.stdout + out.stderr)[-2000:]
            except subprocess.TimeoutExpired:
                res["pip_exit"], res["pip_tail"] = None, f"pip ran past {timeout:.0f} s"
            if res["pip_exit"] == 0:
                res["installed"] = [f.name for f in files]
    importlib.invalidate_caches()
    res["missing_after"] = missing_modules(modules)
    return res


# ----------------------------------------------------------------------------- steps
def run_step(name: str, cmd: list, env: dict, timeout: float, part_path: Path, log_path: Path | None) -> dict:
    """Run one step's child ``cmd``; kill its whole process group after ``timeout`` seconds.

    Returns {"status": ok | failed | timeout, "seconds", "budget_s", "exit_code", "result" (the
    child's part file: what it saved, even when killed), "error", "log_tail"}.
    """
    part_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    timed_out = False
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            try:
                out, _ = p.communicate(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            out = b""
    secs = time.perf_counter() - t0
    text = (out or b"").decode(errors="replace")
    if log_path is not None:
        with open(log_path, "a") as f:
            f.write(f"\n===== step {name} ({secs:.1f} s, exit {p.returncode}) =====\n{text}")
    try:
        result = json.loads(part_path.read_text())
    except (OSError, ValueError):
        result = {}
    status = "timeout" if timed_out else ("ok" if p.returncode == 0 else "failed")
    error = result.pop("error", None) if isinstance(result, dict) else None
    if timed_out:
        error = f"killed after its budget of {timeout:.0f} s" + (f" ({error})" if error else "")
    elif p.returncode != 0 and not error:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        error = f"exit code {p.returncode}: {lines[-1][:300] if lines else 'no output'}"
    return {"status": status, "seconds": round(secs, 2), "budget_s": round(timeout, 1), "exit_code": p.returncode,
            "result": result, "error": error, "log_tail": text[-4000:] if status != "ok" else text[-600:]}


def step_timeout(name: str, order: list, budgets: dict, deadline: float) -> float:
    """This step's budget, shrunk so that each later step keeps ``MIN_STEP_S`` before ``deadline``."""
    later = order[order.index(name) + 1:]
    reserve = sum(min(MIN_STEP_S, budgets[s]) for s in later)
    return min(budgets[name], deadline - time.time() - reserve)


# ----------------------------------------------------------------------------- the table
def _f(v, fmt="{:.3g}"):
    return "-" if v is None else fmt.format(v)


def step_note(name: str, rec: dict) -> str:
    """One line summing up a step's result."""
    r = rec.get("result") or {}
    try:
        if name == "env":
            smi = (r.get("nvidia_smi") or {}).get("gpus") or [{}]
            gpu = (r.get("gpu") or {}).get("name") or "no GPU"
            w = r.get("wheels") or {}
            return (f"{gpu}, driver {smi[0].get('driver_version', '-')}, CUDA {r.get('torch_cuda')}, torch "
                    f"{r.get('torch')}, triton {r.get('triton')}; triton backend: {r.get('xraypose_triton_status')}; "
                    f"wheels installed {len(w.get('installed', []))}, still missing {w.get('missing_after', [])}")
        if name == "tests":
            c = r.get("counts") or {}
            bad = [x["test"].split("::")[-1] for x in r.get("cases", []) if x["outcome"] in ("failed", "error")]
            return (f"{c.get('passed', 0)} passed, {c.get('failed', 0)} failed, {c.get('error', 0)} errors, "
                    f"{c.get('skipped', 0)} skipped" + (f"; failed: {', '.join(bad[:4])}" if bad else ""))
        if name == "accuracy":
            cs = [c for c in r.get("cases", []) if "image_rel_err" in c]
            if not cs:
                return "no case ran"
            return (f"worst image {max(c['image_rel_err'] for c in cs):.2g} (tol 1e-5), worst pose gradient "
                    f"{max(c['pose_grad_rel_err'] for c in cs):.2g} (tol 1e-4); all ok: {r.get('all_ok')}")
        if name == "render":
            rows = r.get("rows", [])
            ok = sum("median_s" in x for x in rows)
            bad = f"; {len(rows) - ok} failed or not run" if ok < len(rows) else ""
            return f"{ok} of {len(rows)} measurements{bad}"
        if name == "train":
            steady = _f(r.get("images_per_s_steady"), "{:.1f}")
            return (f"{_f(r.get('images_per_s'), '{:.1f}')} images/s, steady {steady} ({r.get('steps')} steps in "
                    f"{_f(r.get('elapsed_s'), '{:.0f}')} s), bf16 autocast: {r.get('bf16_autocast')}, "
                    f"renderer backend: {r.get('render_backend')}")
        if name == "register":
            s = r.get("setup") or {}
            return (f"median {_f(r.get('median_opt_s'))} s per X-ray, median mTRE {_f(r.get('median_mtre_mm'))} mm, "
                    f"{len(r.get('cases', []))} X-rays, on {s.get('registration_runs_on')}")
    except Exception as e:  # a summary must never lose the JSON
        return f"(no summary: {type(e).__name__})"
    return ""


def format_report(report: dict) -> str:
    lines = [f"xraypose GPU check{' (DRY RUN: CPU, tiny sizes)' if report['dry_run'] else ''} — "
             f"{report['total_s']:.0f} s, JSON {report['out']}", ""]
    lines.append(f"{'step':9s} {'status':8s} {'s':>6s} {'budget':>6s}  result")
    for name, rec in report["steps"].items():
        lines.append(f"{name:9s} {rec['status']:8s} {rec.get('seconds', 0):6.1f} {rec.get('budget_s', 0):6.0f}  "
                     f"{step_note(name, rec)}")
        if rec.get("error"):
            lines.append(f"{'':33s}error: {rec['error'][:200]}")
    acc = (report["steps"].get("accuracy") or {}).get("result") or {}
    if acc.get("cases"):
        lines += ["", "Triton vs reference (max |err| / max |ref|)", f"{'volume':22s} {'image':>9s} {'pose grad':>9s}"
                  f" {'vol grad':>9s}  ok"]
        for c in acc["cases"]:
            errs = " ".join(f"{_f(c.get(k), '{:.2g}'):>9s}" for k in ("image_rel_err", "pose_grad_rel_err",
                                                                        "volume_grad_rel_err"))
            lines.append(f"{c.get('volume_dtype', ''):22s} {errs}  {c.get('ok')}"
                         f"{'  ' + c['error'] if c.get('error') else ''}")
    ren = (report["steps"].get("render") or {}).get("result") or {}
    rows = ren.get("rows") or []
    if rows:
        impls = list(dict.fromkeys(r["impl"] for r in rows))
        ours = impls[0]
        lines += ["", f"Render, median ms ({(ren.get('setup') or {}).get('timer', '')}); ratio = other ÷ {ours}",
                  f"{'ct':14s} {'mode':7s} {'size':>5s} " + " ".join(f"{i:>24s}" for i in impls)]
        keys = list(dict.fromkeys((r["ct"], r.get("mode"), r.get("size")) for r in rows if r.get("mode")))
        by = {(r["ct"], r["impl"], r.get("mode"), r.get("size")): r for r in rows}
        for ct, mode, size in keys:
            cells = []
            base = by.get((ct, ours, mode, size), {}).get("median_s")
            for i in impls:
                r = by.get((ct, i, mode, size), {})
                if "median_s" in r:
                    ratio = f" ({r['median_s'] / base:.2f}×)" if base and i != ours else ""
                    cells.append(f"{1e3 * r['median_s']:.3f}{ratio}")
                else:
                    cells.append("error" if r.get("error") else "-")
            lines.append(f"{ct:14s} {mode:7s} {size:5d} " + " ".join(f"{c:>24s}" for c in cells))
        errs = sorted({f"{r['impl']}: {r['error'][:150]}" for r in rows if r.get("error")})
        lines += [f"  {e}" for e in errs[:6]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="See docs/benchmarks.md, 'GPU check', for the device-tool command.")
    ap.add_argument("--dry-run", action="store_true", help="every step on the CPU at tiny sizes (Triton interpreted)")
    ap.add_argument("--out", type=Path, default=None, help="the JSON (default $OUT/gpu_check.json or ./gpu_check.json)")
    ap.add_argument("--wheels", type=Path, default=None, help="folder of wheels for missing modules (gpu_wheels.sh)")
    ap.add_argument("--site", type=Path, default=Path("/tmp/xraypose-gpu-site"), help="where those wheels go")
    ap.add_argument("--steps", nargs="+", default=list(STEPS), choices=list(STEPS), help="steps to run (in order)")
    ap.add_argument("--budget", type=float, default=None,
                    help="total seconds for all steps (default 460 on the GPU, 480 for the dry run)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a setting of default_context, e.g. --set repeats=50 --set 'sizes=[128]'")
    ap.add_argument("--_step", help=argparse.SUPPRESS)
    ap.add_argument("--_ctx", help=argparse.SUPPRESS)
    ap.add_argument("--_part", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._step:  # a child: one step
        return run_child(args._step, args._ctx, args._part)
    t_start = time.time()
    dry = args.dry_run
    ctx = default_context(dry)
    for kv in args.set:
        k, _, v = kv.partition("=")
        if k not in ctx:
            print(f"error: --set {k}: no such setting (one of {', '.join(sorted(ctx))})", file=sys.stderr)
            return 2
        try:
            ctx[k] = json.loads(v)
        except ValueError:
            print(f"error: --set {k}={v}: the value is not JSON (e.g. 3, 2.5, true, \"cuda\", [128, 200])",
                  file=sys.stderr)
            return 2
    if args.wheels is not None and not args.wheels.is_dir():
        print(f"error: --wheels {args.wheels}: no such folder (make it with benchmarks/gpu_wheels.sh)", file=sys.stderr)
        return 2
    out = args.out or Path(os.environ.get("OUT") or ".") / "gpu_check.json"
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.name[:-5] if out.name.endswith(".json") else out.name
    log_path = out.with_name(stem + ".steps.log")
    log_path.write_text("")
    work = Path(tempfile.mkdtemp(prefix="xraypose-gpu-check-"))  # per-step files; $OUT keeps few files
    ctx["junit"] = str(work / "junit.xml")
    budgets = BUDGETS_DRY if dry else BUDGETS
    total = args.budget if args.budget is not None else (480.0 if dry else 460.0)
    deadline = t_start + total
    report = {"schema": SCHEMA, "dry_run": dry, "command": " ".join([sys.executable, *sys.argv]),
              "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "budget_s": total,
              "out": str(out), "context": ctx, "steps": {}, "total_s": 0.0}

    def save():
        report["total_s"] = round(time.time() - t_start, 1)
        write_json_atomic(out, report)

    save()
    if args.wheels:
        print(f"[gpu_check] installing missing modules from {args.wheels} into {args.site}", flush=True)
        wheels = install_missing(args.wheels, args.site)
    else:
        wheels = {"missing_before": missing_modules(MODULES), "installed": [], "note": "no --wheels folder given"}
    report["wheels"] = wheels
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    paths = ([str(args.site)] if args.wheels else []) + [str(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    order = list(args.steps)
    for name in order:
        tmo = step_timeout(name, order, budgets, deadline)
        gpu_missing = (not dry and name != "env" and "env" in report["steps"]
                       and not (report["steps"]["env"].get("result") or {}).get("cuda_available"))
        if gpu_missing:
            rec = {"status": "skipped", "seconds": 0.0, "budget_s": 0.0, "result": {},
                   "error": "no CUDA device (env step); use --dry-run on a machine without a GPU"}
        elif tmo < 10:
            rec = {"status": "skipped", "seconds": 0.0, "budget_s": 0.0, "result": {},
                   "error": f"the total budget of {total:.0f} s is spent"}
        else:
            print(f"[gpu_check] {name}: running (budget {tmo:.0f} s)", flush=True)
            c = dict(ctx, deadline=time.time() + tmo)
            ctx_path = work / f"{name}.ctx.json"
            write_json_atomic(ctx_path, c)
            step_env = dict(env)
            if dry and name in ("accuracy", "render"):
                step_env["TRITON_INTERPRET"] = "1"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--_step", name, "--_ctx", str(ctx_path),
                   "--_part", str(work / f"{name}.part.json")]
            rec = run_step(name, cmd, step_env, tmo, work / f"{name}.part.json", log_path)
        if name == "env":
            rec["result"]["wheels"] = wheels
        if name == "render" and rec.get("result", {}).get("rows"):
            rec["result"]["ratios"] = render_ratios(rec["result"]["rows"], ctx["impls"][0])
        report["steps"][name] = rec
        print(f"[gpu_check] {name}: {rec['status']} in {rec['seconds']:.1f} s — {step_note(name, rec)}"
              + (f" — {rec['error']}" if rec.get("error") else ""), flush=True)
        save()
    shutil.rmtree(work, ignore_errors=True)
    report["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    save()
    print()
    print(format_report(report))
    return 0 if all(r["status"] == "ok" for r in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
