"""The steps of ``benchmarks/gpu_check.py``, each run in its own child process.

A step is ``step_NAME(ctx, part)``: ``ctx`` holds the check's options (a dict:
``device`` "cuda" or "cpu", ``dry_run``, sizes, samples, ...) and ``part`` is a
:class:`Part`, the step's result dict, written atomically to a JSON file after
every item so that a step killed at its time budget still leaves what it had
measured.  ``ctx["deadline"]`` (``time.time()`` seconds) is when the parent will
kill the step; loops stop taking new items once too little time is left.

Units: seconds (``*_s``), milliseconds (``*_ms``), MiB; errors are relative to
the largest magnitude of the reference (``max |got - ref| / max |ref|``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: import name -> (distribution name as in a wheel's file name, who needs it)
MODULES = {
    "torch": ("torch", "xraypose"),
    "torchvision": ("torchvision", "xraypose"),
    "timm": ("timm", "xraypose"),
    "numpy": ("numpy", "xraypose"),
    "SimpleITK": ("simpleitk", "xraypose (CT reading), torchio"),
    "nibabel": ("nibabel", "xraypose (NIfTI), torchio"),
    "pydicom": ("pydicom", "xraypose (DICOM X-rays)"),
    "h5py": ("h5py", "xraypose (datasets)"),
    "matplotlib": ("matplotlib", "xraypose (figures)"),
    "PIL": ("pillow", "xraypose (images)"),
    "typer": ("typer", "xraypose (CLI), torchio"),
    "tqdm": ("tqdm", "xraypose, torchio"),
    "imageio": ("imageio", "xraypose (GIFs)"),
    "pytest": ("pytest", "tests"),
    "hypothesis": ("hypothesis", "tests"),
    "scipy": ("scipy", "tests, torchio"),
    "triton": ("triton", "xraypose triton backend, nanodrr"),
    "nanodrr": ("nanodrr", "render benchmark peer"),
    "roma": ("roma", "nanodrr"),
    "torchio": ("torchio", "nanodrr"),
    "jaxtyping": ("jaxtyping", "nanodrr, torchio"),
    "platformdirs": ("platformdirs", "nanodrr"),
    "deprecated": ("deprecated", "torchio"),
    "einops": ("einops", "torchio"),
    "humanize": ("humanize", "torchio"),
    "rich": ("rich", "torchio"),
}


# ----------------------------------------------------------------------------- results
def jsonable(obj):
    """``obj`` with non-finite floats as None and tuples/paths/tensors made JSON-friendly."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return jsonable(obj.tolist())
    return str(obj)


def write_json_atomic(path, obj) -> None:
    """Write strict JSON (no NaN tokens) to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Part:
    """A step's result dict, saved to ``path`` after every change."""

    def __init__(self, path):
        self.path = Path(path)
        self.data: dict = {}

    def set(self, key: str, value) -> None:
        self.data[key] = value
        write_json_atomic(self.path, self.data)

    def append(self, key: str, value) -> None:
        self.data.setdefault(key, []).append(value)
        write_json_atomic(self.path, self.data)


def one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:500]


def time_left(ctx) -> float:
    return ctx["deadline"] - time.time()


# ----------------------------------------------------------------------------- timing
def time_calls(fn, cuda: bool, warmup: int, repeats: int, max_s: float) -> dict:
    """Median time of ``fn()`` after ``warmup`` calls: CUDA events on a GPU (synchronised before
    and after each call), else the wall clock; at most ``repeats`` calls or ``max_s`` seconds (at
    least min(3, repeats) calls)."""
    import torch

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    sync()
    events, wall = [], []
    stop = time.perf_counter() + max_s
    for i in range(repeats):
        sync()
        t = time.perf_counter()
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            sync()
            events.append(a.elapsed_time(b) / 1e3)
        else:
            fn()
        wall.append(time.perf_counter() - t)
        if i >= min(2, repeats - 1) and time.perf_counter() > stop:
            break
    times = events or wall
    return {"median_s": statistics.median(times), "min_s": min(times), "wall_median_s": statistics.median(wall),
            "repeats": len(times), "timer": "cuda-events" if events else "wall-clock"}


def rel_err(got, ref) -> float:
    """max |got - ref| / max |ref| in float64 on the CPU (NaN anywhere gives inf)."""
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    if not bool(got.isfinite().all()):
        return float("inf")
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


# ----------------------------------------------------------------------------- step: env
def step_env(ctx, part: Part) -> None:
    """Machine, GPU, driver, CUDA, torch and triton versions, which modules import, whether the
    Triton backend passes its start-up self-check and which backend ``auto`` picks."""
    import importlib
    import importlib.metadata as md

    part.set("python", platform.python_version())
    part.set("platform", platform.platform())
    part.set("cpu_model", _cpu_model())
    part.set("cpus", os.cpu_count())
    part.set("nvidia_smi", _nvidia_smi())
    mods = {}
    for name in ctx.get("check_modules") or list(MODULES):
        dist, needed_by = MODULES.get(name, (name, "?"))
        try:
            importlib.import_module(name)
            try:
                ver = md.version(dist)
            except md.PackageNotFoundError:
                ver = "?"
            mods[name] = {"version": ver, "needed_by": needed_by}
        except Exception as e:
            mods[name] = {"version": None, "error": one_line(e), "needed_by": needed_by}
    part.set("modules", mods)
    import torch

    part.set("torch", torch.__version__)
    part.set("torch_cuda", torch.version.cuda)
    part.set("cudnn", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    part.set("cuda_available", torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        part.set("gpu", {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": p.total_memory / 2**30,
                         "multiprocessors": p.multi_processor_count, "count": torch.cuda.device_count()})
    else:
        part.set("gpu", None)
    try:
        import triton

        part.set("triton", triton.__version__)
    except Exception as e:
        part.set("triton", None)
        part.set("triton_error", one_line(e))
    from xraypose.render import backends

    t = time.perf_counter()
    part.set("xraypose_triton_status", backends.triton_status() or "ok")  # compiles + self-checks on a GPU
    part.set("triton_self_check_s", time.perf_counter() - t)
    part.set("xraypose_cpu_status", backends.cpu_status() or "ok")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        part.set("auto_backend", {"device": str(dev), "trilinear": backends.resolve("auto", "trilinear", dev)})
    part.set("source_sha256", {p: _sha(ROOT / p) for p in (
        "xraypose/render/backends/triton_backend.py", "xraypose/render/backends/cpu_kernels.cpp",
        "xraypose/render/backends/cpu.py", "xraypose/train/trainer.py", "xraypose/train/data.py",
        "xraypose/register/optimizer.py")})
    part.set("git_commit", _git_commit())


def _sha(p: Path) -> str | None:
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except Exception:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_smi() -> dict | None:
    """name, driver, CUDA version the driver supports, memory and clocks from ``nvidia-smi`` (None without it)."""
    for fields in (["name", "driver_version", "memory.total", "clocks.sm", "clocks.max.sm", "temperature.gpu",
                    "power.draw", "utilization.gpu"], ["name", "driver_version", "memory.total"]):
        try:
            out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.returncode == 0:
            break
    else:
        return {"error": (out.stderr or out.stdout).strip()[:300]}
    gpus = [dict(zip(fields, (v.strip() for v in line.split(",")))) for line in out.stdout.strip().splitlines()]
    cuda = None
    try:
        head = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
        if "CUDA Version:" in head:
            cuda = head.split("CUDA Version:")[1].split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"gpus": gpus, "driver_cuda": cuda}


# ----------------------------------------------------------------------------- step: tests
def step_tests(ctx, part: Part) -> None:
    """``pytest tests/test_backends.py`` and every test whose name says cuda/gpu/triton, with per-test
    outcomes from a JUnit XML file (``ctx["junit"]``)."""
    junit = Path(ctx["junit"])
    junit.unlink(missing_ok=True)
    # One process: the device's image has no pytest-xdist, which pyproject's addopts (-n auto) would need.
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:xdist",
           "-o", "addopts=-m 'not slow'", "--continue-on-collection-errors", f"--junitxml={junit}"]
    cmd += ctx["test_args"]
    part.set("command", " ".join(cmd[1:]))
    budget = max(5.0, time_left(ctx) - 8.0)
    t = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget)
        rc, text = out.returncode, out.stdout + out.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = None, (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    part.set("seconds", time.perf_counter() - t)
    part.set("exit_code", rc)
    part.set("timed_out", rc is None)
    part.set("output_tail", text[-3000:])
    if junit.exists():
        part.set("junit", str(junit))
        for k, v in parse_junit(junit).items():
            part.set(k, v)
    if rc not in (0, 5):  # 5: no tests collected
        raise RuntimeError(f"pytest exit code {rc}" if rc is not None else "pytest ran past its budget")


def parse_junit(path) -> dict:
    """Counts and per-test outcomes (``passed``/``failed``/``error``/``skipped`` with the message) of a JUnit XML."""
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    cases = []
    for tc in root.iter("testcase"):
        outcome, msg = "passed", None
        for child in tc:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                msg = (child.get("message") or child.text or "")[:400]
                break
        cases.append({"test": f"{tc.get('classname', '')}::{tc.get('name', '')}", "outcome": outcome,
                      "seconds": float(tc.get("time") or 0.0), "message": msg})
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    return {"counts": counts, "cases": cases}


# ----------------------------------------------------------------------------- step: accuracy
def step_accuracy(ctx, part: Part) -> None:
    """The Triton backend against the reference on the bundled pelvis: images and pose gradients of a
    batch of 3 poses for float32, bfloat16 and float16 volumes (the reference renders the same
    rounded volume in float64), the 64-bit-offset path, and the volume gradient."""
    import torch

    from xraypose.camera import Camera
    from xraypose.geometry import se3_exp
    from xraypose.render import DRR, backends, render
    from xraypose.render.backends import triton_backend
    from xraypose.volume import load_sample_ct

    from benchmarks.render import FOV, SDD, _poses

    dev = ctx["device"]
    why = backends.triton_status()
    if why is not None:  # render() would fall back to the reference: comparing it with itself proves nothing
        raise RuntimeError(f"the triton backend is unavailable here: {why}")
    size, n = ctx["accuracy_size"], ctx["accuracy_samples"]
    vol = load_sample_ct()
    cam = Camera(sdd=SDD, height=size, width=size, delx=FOV / size)
    T0, xi0 = _poses(3, vol.get_isocenter(), torch.float64, "cpu")
    T = T0 @ se3_exp(xi0)
    part.set("setup", {"ct": "bundled pelvis", "volume_shape": list(vol.shape), "detector": size, "samples": n,
                       "poses": 3, "device": dev, "tolerance_image": 1e-5, "tolerance_pose_gradient": 1e-4,
                       "tolerance_volume_gradient": 1e-4})
    drr = DRR(vol, cam, n_samples=n, backend="triton").to(dev)
    ref_drr = DRR(vol, cam, n_samples=n, backend="reference").to(dev)
    basis32 = drr.basis

    def image_and_grad(d, dtype):
        x = torch.zeros(3, 6, dtype=dtype, device=dev, requires_grad=True)
        img = d(T.to(dev, dtype) @ se3_exp(x))
        w = torch.linspace(0.5, 1.5, img.numel(), dtype=dtype, device=dev).reshape(img.shape)
        (g,) = torch.autograd.grad((img * w).sum() + 0.01 * (img ** 2).sum(), x)
        return img.detach(), g

    img32 = None
    for name, vdt, wide in (("float32", torch.float32, False), ("bfloat16", torch.bfloat16, False),
                            ("float16", torch.float16, False), ("float32-wide-offsets", torch.float32, True)):
        row = {"volume_dtype": name}
        try:
            q = basis32.to(vdt)
            ref_drr.basis = q.double()
            ref_img, ref_g = image_and_grad(ref_drr, torch.float64)
            drr.basis = q
            triton_backend.FORCE_WIDE = wide
            try:
                img, g = image_and_grad(drr, torch.float32)
            finally:
                triton_backend.FORCE_WIDE = False
            row.update(image_rel_err=rel_err(img, ref_img), pose_grad_rel_err=rel_err(g, ref_g),
                       image_max=float(ref_img.abs().max()))
            row["ok"] = row["image_rel_err"] <= 1e-5 and row["pose_grad_rel_err"] <= 1e-4
            if vdt == torch.float32 and not wide:
                img32 = img
            elif img32 is not None:
                row["rounding_effect_vs_float32_volume"] = rel_err(img, img32)
        except Exception as e:
            row.update(ok=False, error=one_line(e), traceback=traceback.format_exc()[-1500:])
        part.append("cases", row)
    drr.basis = basis32
    row = {"volume_dtype": "float32", "what": "volume gradient (atomics)"}
    try:
        cam_v = Camera(sdd=SDD, height=max(8, size // 2), width=max(8, size // 2), delx=FOV / max(8, size // 2))
        grads = []
        for be, dt in (("reference", torch.float64), ("triton", torch.float32)):
            v = basis32.to(dt).clone().requires_grad_()
            img = render(v, drr.affine, cam_v, T.to(dev, dt), n_samples=n, backend=be)
            (gv,) = torch.autograd.grad((img * img.detach()).sum() + img.sum(), v)
            grads.append(gv)
        row["volume_grad_rel_err"] = rel_err(grads[1], grads[0])
        row["ok"] = row["volume_grad_rel_err"] <= 1e-4  # float32 atomics: rounding grows with rays per voxel
    except Exception as e:
        row.update(ok=False, error=one_line(e))
    part.append("cases", row)
    part.set("all_ok", all(c.get("ok") for c in part.data["cases"]))


# ----------------------------------------------------------------------------- step: render
def make_large_ct(vol, factor: float, path: Path):
    """The CT resampled by ``factor`` per axis (trilinear, voxel centres kept in place) and written
    as an uncompressed int16 NIfTI at ``path``: a CT of realistic size (×3: 366×303×336 voxels of
    1 mm, like a 512×512×134 abdomen) without carrying one."""
    import nibabel as nib
    import numpy as np
    import torch
    import torch.nn.functional as F

    n = vol.shape
    m = tuple(max(1, int(round(s * factor))) for s in n)
    hu = F.interpolate(vol.data.float()[None, None], size=m, mode="trilinear", align_corners=False)[0, 0]
    S = torch.eye(4, dtype=torch.float64)
    for a in range(3):
        s = n[a] / m[a]  # new index i -> old (i + 0.5)·s − 0.5
        S[a, a] = s
        S[a, 3] = 0.5 * s - 0.5
    affine = vol.affine.double() @ S
    arr = hu.round().clamp(-32768, 32767).to(torch.int16).numpy()
    nib.save(nib.Nifti1Image(arr, affine.numpy().astype(np.float64)), str(path))
    return path


def _nanodrr_renderer(path, size: int, samples: int, device: str, backend: str):
    import torch
    from nanodrr.camera import make_k_inv
    from nanodrr.data import Subject
    from nanodrr.drr import render as nano_render

    from benchmarks.render import FOV, SDD

    subject = Subject.from_filepath(str(path)).to(device)
    state = {"size": size}

    def fn(T):
        s = state["size"]
        B = T.shape[0]
        k_inv = make_k_inv(SDD, FOV / s, FOV / s, 0.0, 0.0, s, s, dtype=torch.float32, device=device)
        sdd = torch.tensor([SDD], dtype=torch.float32, device=device)
        return nano_render(subject, k_inv.expand(B, -1, -1), T, sdd.expand(B), s, s, n_samples=samples,
                           backend=backend)

    return fn, state


def _xraypose_renderer(vol, size: int, samples: int, device: str, backend: str, volume_dtype=None):
    import torch

    from xraypose.camera import Camera
    from xraypose.render import DRR

    from benchmarks.render import FOV, SDD

    from xraypose.render.backends import resolve

    drr = DRR(vol, Camera(sdd=SDD, height=size, width=size, delx=FOV / size), n_samples=samples,
              backend=backend).to(device)
    if volume_dtype is not None:
        drr.basis = drr.basis.to(getattr(torch, volume_dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        used = resolve(backend, "trilinear", torch.device(device))
    if used != backend:  # a fast backend that cannot load falls back to the reference: not what is asked
        raise RuntimeError(f"backend {backend!r} is unavailable here (render() would use {used!r})")
    state = {"size": size}

    def fn(T):
        s = state["size"]
        if drr.camera.height != s:
            drr.camera = Camera(sdd=SDD, height=s, width=s, delx=FOV / s)
        return drr(T)

    return fn, state


def make_renderer(impl: str, ct: dict, size: int, samples: int, device: str):
    """``(fn(camera_to_world (B, 4, 4)) -> (B, 1, H, W), state)``; ``state["size"]`` sets the detector."""
    if impl.startswith("xraypose-"):
        parts = impl.split("-")  # xraypose-<backend>[-<volume dtype>]
        return _xraypose_renderer(ct["volume"], size, samples, device, parts[1], parts[2] if len(parts) > 2 else None)
    if impl.startswith("nanodrr"):
        backend = impl.split("-")[1] if "-" in impl else "auto"
        return _nanodrr_renderer(ct["path"], size, samples, device, backend)
    raise ValueError(f"unknown implementation {impl!r}")


def step_render(ctx, part: Part) -> None:
    """Render benchmark: ours against nanodrr on the same poses, same camera and samples (the
    protocol of benchmarks/render.py), on the bundled pelvis and on it resampled to a realistic
    size; fwd, fwdbwd (to the 6 pose parameters) and batch (``ctx["batch"]`` poses, forward) at each size."""
    from xraypose.volume import SAMPLE_CT_FILENAME, load_sample_ct, read_volume

    from benchmarks.render import FOV, SDD, SOD

    dev = ctx["device"]
    cuda = dev == "cuda"
    samples = ctx["samples"]
    part.set("setup", {"sdd_mm": SDD, "sod_mm": SOD, "fov_mm": FOV, "samples": samples, "device": dev,
                       "sizes": ctx["sizes"], "modes": ctx["modes"], "impls": ctx["impls"], "batch": ctx["batch"],
                       "warmup": ctx["warmup"], "repeats": ctx["repeats"],
                       "timer": "CUDA events around each call, synchronised, median" if cuda else "wall clock, median"})
    base = load_sample_ct()
    cts = [{"name": "pelvis", "path": ROOT / "xraypose" / "data" / SAMPLE_CT_FILENAME, "volume": base}]
    tmp = Path(tempfile.mkdtemp(prefix="xraypose-gpu-check-"))
    if ctx["large_factor"]:
        t = time.perf_counter()
        try:
            p = make_large_ct(base, ctx["large_factor"], tmp / "pelvis_large.nii")
            big = read_volume(p)
            cts.append({"name": f"pelvis-x{ctx['large_factor']:g}", "path": p, "volume": big})
            part.set("large_ct", {"shape": list(big.shape), "spacing_mm": [float(s) for s in big.spacing],
                                  "seconds": time.perf_counter() - t})
        except Exception as e:
            part.set("large_ct", {"error": one_line(e)})
    part.set("cts", [{"name": c["name"], "shape": list(c["volume"].shape)} for c in cts])
    images = {}  # (ct, size) -> (impl, fwd image) of the first implementation: NCC of the others with it
    for ct in cts:
        impls = list(ctx["impls"])
        for impl in impls:
            ran = _measure_impl(ctx, part, ct, impl, images)
            if impl == "nanodrr-triton" and not ran and "nanodrr-torch" not in impls:
                impls.append("nanodrr-torch")  # its Triton kernel failed here: time its PyTorch path instead
    part.set("ratios", render_ratios(part.data.get("rows", []), ctx["impls"][0]))
    shutil.rmtree(tmp, ignore_errors=True)


def _measure_impl(ctx, part: Part, ct: dict, impl: str, images: dict) -> bool:
    """Every (mode, size) of one implementation on one CT, a row each; True if any was timed."""
    import torch

    from xraypose.geometry import se3_exp

    from benchmarks.render import _poses

    dev = ctx["device"]
    cuda = dev == "cuda"
    if time_left(ctx) < 10:
        part.append("rows", {"ct": ct["name"], "impl": impl, "error": "not run: step budget spent"})
        return False
    try:
        t = time.perf_counter()
        fn, state = make_renderer(impl, ct, ctx["sizes"][0], ctx["samples"], dev)
        setup_s = time.perf_counter() - t
    except Exception as e:
        part.append("rows", {"ct": ct["name"], "impl": impl, "error": one_line(e),
                             "traceback": traceback.format_exc()[-1500:]})
        return False
    ran = False
    for mode in ctx["modes"]:
        for size in ctx["sizes"]:
            row = {"ct": ct["name"], "impl": impl, "mode": mode, "size": size, "setup_s": setup_s}
            if time_left(ctx) < 5:
                part.append("rows", dict(row, error="not run: step budget spent"))
                continue
            try:
                state["size"] = size
                B = ctx["batch"] if mode == "batch" else 1
                row["poses"] = B
                T0, xi = _poses(B, ct["volume"].get_isocenter(), torch.float32, dev)

                def once():
                    if mode == "fwdbwd":
                        x = xi.clone().requires_grad_()
                        img = fn(T0 @ se3_exp(x))
                        img.sum().backward()
                        return img.detach()
                    with torch.no_grad():
                        return fn(T0 @ se3_exp(xi))

                t = time.perf_counter()
                img = once()  # first call: compiles kernels, builds caches
                if cuda:
                    torch.cuda.synchronize()
                row["first_call_s"] = time.perf_counter() - t
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                    base_mem = torch.cuda.memory_allocated()
                row.update(time_calls(once, cuda, ctx["warmup"], ctx["repeats"],
                                      min(ctx["max_s_per_measurement"], max(1.0, time_left(ctx) - 5))))
                if cuda:
                    row["peak_mib"] = (torch.cuda.max_memory_allocated() - base_mem) / 2**20
                row["finite"] = bool(img.isfinite().all())
                if mode == "fwd":
                    key = (ct["name"], size)
                    if key in images:
                        row["ncc_vs_" + images[key][0]] = _ncc(img, images[key][1])
                    else:
                        images[key] = (impl, img.detach().cpu())
                ran = True
            except Exception as e:
                row.update(error=one_line(e), traceback=traceback.format_exc()[-1500:])
            part.append("rows", row)
    del fn, state
    if cuda:
        torch.cuda.empty_cache()
    return ran


def _ncc(a, b) -> float:
    a, b = a.double().cpu().flatten(), b.double().cpu().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-30))


def render_ratios(rows: list, ours: str) -> list:
    """Per (ct, mode, size): every other implementation's median time divided by ``ours``."""
    by = {(r["ct"], r["impl"], r.get("mode"), r.get("size")): r for r in rows if "median_s" in r}
    out = []
    for (ct, impl, mode, size), r in by.items():
        if impl == ours:
            continue
        o = by.get((ct, ours, mode, size))
        if o:
            out.append({"ct": ct, "mode": mode, "size": size, "other": impl, "ours": ours,
                        "other_s": r["median_s"], "ours_s": o["median_s"],
                        "other_over_ours": r["median_s"] / o["median_s"]})
    return out


# ----------------------------------------------------------------------------- step: train
def step_train(ctx, part: Part) -> None:
    """A time-budgeted run of :func:`xraypose.train.train` on the bundled pelvis (bfloat16 autocast on
    a GPU): images per second end to end (pose sampling, rendering, augmentation, forward, backward,
    optimiser)."""
    import torch

    from xraypose.train import TrainConfig, train

    d = TrainConfig.from_dict({"preset": ctx["train_preset"]}).to_dict()
    for k, v in ctx["train_set"].items():
        sec, field = k.split(".", 1)
        d[sec][field] = v
    cfg = TrainConfig.from_dict(d)  # validates
    part.set("config", cfg.to_dict())
    amp = ctx["device"] == "cuda" and cfg.optim.amp
    part.set("bf16_autocast", amp)
    from xraypose.render.backends import resolve

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        part.set("render_backend", resolve(cfg.render.backend, cfg.render.renderer, torch.device(ctx["device"])))
    out = Path(tempfile.mkdtemp(prefix="xraypose-gpu-train-")) / "model.pt"
    import timm  # noqa: F401  (imported here, its seconds of import stay out of the training budget)

    if ctx["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps = []

    def on_event(event, info):
        if event == "step":
            steps.append((info["step"], info["images_seen"], info["elapsed_s"], info["step_s"]))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = time.perf_counter()
        r = train("sample", out, cfg, quiet=True, callback=on_event)
        wall = time.perf_counter() - t
    if len(steps) >= 4:  # steady state: after the first quarter of the steps (compilation, autotuning)
        a, b = steps[len(steps) // 4], steps[-1]
        part.set("images_per_s_steady", (b[1] - a[1]) / max(b[2] - a[2], 1e-9))
        part.set("median_step_s", statistics.median(x[3] for x in steps))
    part.set("first_steps_s", [x[3] for x in steps[:5]])
    part.set("warnings", sorted({f"{w.category.__name__}: {w.message}"[:300] for w in caught}))
    part.set("wall_s", wall)
    part.set("steps", r.steps)
    part.set("images_seen", r.images_seen)
    part.set("renders", r.renders)
    part.set("elapsed_s", r.elapsed_s)
    part.set("images_per_s", r.images_per_s)
    part.set("renders_per_s", r.renders / max(r.elapsed_s, 1e-9))
    if ctx["device"] == "cuda":
        part.set("peak_gpu_mib", torch.cuda.max_memory_allocated() / 2**20)
    shutil.rmtree(out.parent, ignore_errors=True)


# ----------------------------------------------------------------------------- step: register
def step_register(ctx, part: Part) -> None:
    """Registration timing on the bundled pelvis with the registration benchmark's protocol
    (benchmarks/register.py: realistic simulated X-rays, starts 5° / 20 mm off): per X-ray seconds
    and mTRE, medians."""
    import torch

    from xraypose.register import FAST_LEVELS, Registrar, RegistrationConfig
    from xraypose.volume import load_sample_ct

    from benchmarks.register import cached_cases, run_group

    kw = dict(drr_blur=1.0, seed=0, record_trajectory=False)
    if ctx["register_fast"]:
        kw["levels"] = FAST_LEVELS
    fields = getattr(RegistrationConfig, "__dataclass_fields__", {})
    where = "cpu (RegistrationConfig has no device option)"
    if "device" in fields and ctx["device"] == "cuda":
        kw["device"] = "cuda"
        where = "cuda"
    cfg = RegistrationConfig(**kw)
    part.set("setup", {"ct": "bundled pelvis", "cases": ctx["register_cases"], "detector": ctx["register_detector"],
                       "start": "5,20", "registration_runs_on": where, "torch_threads": torch.get_num_threads(),
                       "config_threads": cfg.num_threads, "levels": [lv.size for lv in cfg.levels]})
    vol = load_sample_ct()
    t = time.perf_counter()
    cache = Path(tempfile.mkdtemp(prefix="xraypose-gpu-reg-"))
    cases = cached_cases("pelvis", vol, ctx["register_cases"], ctx["register_detector"], 0, cache, lambda s: None)
    part.set("simulate_s", time.perf_counter() - t)
    reg = Registrar(vol, cfg)
    rows = []
    for c in cases:
        if time_left(ctx) < 10:
            part.append("cases", {"case": c.index, "error": "not run: step budget spent"})
            continue
        r = run_group("pelvis", vol, [c], "5,20", reg, 1, 0, None, lambda s: None)[0]
        row = {k: r[k] for k in ("case", "start_mtre", "mtre", "opt_s", "cpu_s", "iterations", "status")}
        rows.append(row)
        part.append("cases", row)
    shutil.rmtree(cache, ignore_errors=True)
    if rows:
        part.set("median_opt_s", statistics.median(r["opt_s"] for r in rows))
        part.set("median_mtre_mm", statistics.median(r["mtre"] for r in rows))
        part.set("success_1mm", sum(r["mtre"] < 1.0 for r in rows) / len(rows))


STEPS = {"env": step_env, "tests": step_tests, "accuracy": step_accuracy, "render": step_render,
         "train": step_train, "register": step_register}


def run_child(name: str, ctx_path: str, part_path: str) -> int:
    """Entry of a step's child process: run ``STEPS[name]``, save what it got, exit 0 on success."""
    ctx = json.loads(Path(ctx_path).read_text())
    part = Part(part_path)
    if ctx.get("threads"):
        import torch

        torch.set_num_threads(int(ctx["threads"]))
    try:
        STEPS[name](ctx, part)
    except Exception as e:
        part.set("error", one_line(e))
        part.set("traceback", traceback.format_exc()[-3000:])
        print(traceback.format_exc(), file=sys.stderr)
        return 1
    return 0
