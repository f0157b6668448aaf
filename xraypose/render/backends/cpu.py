"""Fused CPU backend: one C++/OpenMP pass over the rays, analytic backward.

The kernels (``cpu_kernels.cpp``, beside this file) use no Python or torch
headers and no OpenMP runtime (their own std::thread pool, sized by
``torch.get_num_threads()``).  On first use they are compiled by the system C++ compiler (``$CXX``,
else ``g++``/``c++``/``clang++``) into a shared library cached under
``$XRAYPOSE_CACHE_DIR`` (default ``~/.cache/xraypose``), keyed by the source,
the compiler and the CPU, and loaded with :mod:`ctypes`.  Later processes load
the cached library in milliseconds.  If no compiler works, :func:`available`
is False and :func:`xraypose.render.render` falls back to the reference
backend with a warning.

Two paths, same numbers as the reference backend:

* float32 poses, trilinear (:func:`render_trilinear_fused`): ray generation from
  the pose, slab clipping, sampling and accumulation in one kernel, rays traced
  in a cache-friendly order; the forward also sums each ray's sample gradients,
  so the pose gradient needs no second pass over the volume.
* otherwise (float64 poses, Siddon, volume gradients): rays and clipping in
  PyTorch (autograd for the chain rule to the pose), per-ray sampling and the
  per-ray gradients in the kernel (:func:`integrate_trilinear`,
  :func:`integrate_siddon`).

Per CPU: the AVX2 path reads a sample's 8 corners with gathers or, where the
layout allows, with plain loads of corners adjacent in memory (the same values:
bit-identical images); which is faster depends on the microarchitecture (AVX2
gathers are slow on several AMD generations), so a short self-timing picks it
when the library is first loaded on a CPU model and caches the choice beside the
library (:func:`kernel_info`; ``$XRAYPOSE_CPU_CORNER_LOADS`` = gather | pairs forces it).
Every trilinear path skips empty space (:func:`occupancy`) except for volume gradients.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from xraypose.errors import InputError
from xraypose.render.rays import clip_to_box
from xraypose.render.trilinear import support_box

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
ABI_VERSION = 10
GEO = 14  # doubles per ray in the fused path's geometry buffer (cpu_kernels.cpp)
RENDERERS = ("trilinear", "siddon")

_lock = threading.RLock()  # re-entrant: tuning the loaded library renders through it
_lib = None
_error: str | None = None
_tuning: dict | None = None

#: Corner loads of the AVX2 path (cpu_kernels.cpp LOADS_*): a mask; 0 = gathers everywhere.
LOADS_PAIRS, LOADS_QUADS = 1, 2
#: ``$XRAYPOSE_CPU_CORNER_LOADS``: gather | pairs (both gather-free layouts) | auto (timed once per CPU; default).
CORNER_LOADS_ENV = "XRAYPOSE_CPU_CORNER_LOADS"
_FORCED_LOADS = {"gather": 0, "pairs": LOADS_PAIRS | LOADS_QUADS}


def cache_dir() -> Path:
    env = os.environ.get("XRAYPOSE_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xraypose"


def _compilers() -> list[str]:
    names = [os.environ["CXX"]] if os.environ.get("CXX") else []
    names += ["g++", "c++", "clang++"]
    return [p for p in (shutil.which(n) for n in names) if p]


def _cpu_signature() -> str:
    """Identifies the instruction set the library is tuned for (-march=native)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _flag_sets(cxx: str) -> list[list[str]]:
    base = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fno-math-errno", "-pthread"]
    simd = ["-fopenmp-simd"]  # `omp simd` hints only: no OpenMP runtime is linked
    # Fall back step by step: tuned for this CPU, then portable, then without the simd hints.
    return [base + ["-march=native"] + simd, base + simd, base]


def build(verbose: bool = False) -> Path:
    """Compile the kernels (if not cached) and return the library's path; raises RuntimeError on failure."""
    src = SOURCE.read_bytes()
    errors = []
    for cxx in _compilers():
        try:
            version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as e:
            errors.append(f"{cxx}: {e}")
            continue
        for flags in _flag_sets(cxx):
            key = hashlib.sha256(
                b"\0".join([src, version.encode(), " ".join(flags).encode(), _cpu_signature().encode()])
            ).hexdigest()[:20]
            d = cache_dir()
            lib = d / f"cpu_kernels-{key}.so"
            if lib.exists():
                return lib
            try:
                d.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=lib.stem + ".", suffix=".tmp.so", dir=d)
                os.close(fd)
            except OSError as e:
                raise RuntimeError(f"cannot write the kernel cache {d}: {e}") from e
            cmd = [cxx, str(SOURCE), "-o", tmp, *flags]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.SubprocessError) as e:
                errors.append(f"{' '.join(cmd)}: {e}")
                os.unlink(tmp)
                continue
            if out.returncode == 0:
                os.replace(tmp, lib)  # atomic: concurrent builders never see a half-written library
                if verbose:
                    print(f"built {lib}", file=sys.stderr)
                return lib
            os.unlink(tmp)
            errors.append(f"{' '.join(cmd)}:\n{out.stderr.strip()[-2000:]}")
    if not errors:
        errors.append("no C++ compiler found (set $CXX, or install g++)")
    raise RuntimeError("could not build the fused CPU kernels:\n" + "\n".join(errors))


def _load():
    global _lib, _error
    with _lock:
        if _lib is not None or _error is not None:
            return _lib
        if os.environ.get("XRAYPOSE_DISABLE_CPU_KERNELS"):
            _error = "disabled by XRAYPOSE_DISABLE_CPU_KERNELS"
            return None
        try:
            lib = ctypes.CDLL(str(build()))
            if lib.xrp_abi_version() != ABI_VERSION:
                raise RuntimeError("stale kernel library (ABI version mismatch)")
            _declare(lib)
            _declare_fused(lib)
            _lib = lib
        except Exception as e:  # any failure: report once, use the reference backend
            _error = f"{type(e).__name__}: {e}"
            return _lib
        global _tuning
        _tuning = _choose_corner_loads(lib, lib_path=Path(lib._name))
        return _lib


def _declare(lib) -> None:
    P, I64, INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for g in ("f32", "f64"):
        for v in ("f32", "f64"):
            f = getattr(lib, f"xrp_tri_fwd_{g}_{v}")
            f.argtypes = [P, P, P, P, P, P, P, I64, I64, I64, P, P, P, P, INT]
            f.restype = INT
            f = getattr(lib, f"xrp_tri_bwd_{g}_{v}")
            f.argtypes = [P, P, P, P, P, P, P, I64, I64, I64, P, P, P, P, P, P, P, P, INT]
            f.restype = None
            f = getattr(lib, f"xrp_sid_fwd_{g}_{v}")
            f.argtypes = [P, P, P, P, P, P, P, I64, I64, P, INT]
            f.restype = None
            f = getattr(lib, f"xrp_sid_bwd_{g}_{v}")
            f.argtypes = [P, P, P, P, P, P, P, I64, I64, P, P, P, P, P, P, INT]
            f.restype = None


def _declare_fused(lib) -> None:
    P, I64, INT, D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    lib.xrp_rays_f32.argtypes = [P, P, P, D, P, I64, P, I64, I64, D, P, P, P, INT]
    lib.xrp_rays_f32.restype = None
    for v in ("f32", "f64"):
        f = getattr(lib, f"xrp_tri_fused_fwd_f32_{v}")
        f.argtypes = [P, P, P, P, P, I64, I64, I64, P, P, P, P, P, INT]
        f.restype = INT
    lib.xrp_tri_fused_bwd_f32.argtypes = [P, P, I64, I64, I64, I64, P, P, P, P, INT]
    lib.xrp_tri_fused_bwd_f32.restype = None
    lib.xrp_set_corner_loads.argtypes = [INT]
    lib.xrp_set_corner_loads.restype = INT
    lib.xrp_has_avx2.argtypes = []
    lib.xrp_has_avx2.restype = INT


def _cpu_model() -> str:
    """The CPU's vendor and model name (the corner-load choice is cached per model)."""
    vendor = model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id") and not vendor:
                    vendor = line.split(":", 1)[1].strip()
                elif line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{vendor} {model}".strip() or platform.processor() or platform.machine()


def _choose_corner_loads(lib, lib_path: Path) -> dict:
    """Set how the AVX2 path reads corners (gathers or gather-free pair loads) and say why.

    ``$XRAYPOSE_CPU_CORNER_LOADS`` = gather | pairs forces it; otherwise the choice is read from
    ``<library>.<cpu>.tune.json`` beside the cached library, or timed (:func:`time_corner_loads`,
    ≈ 0.3 s, once per CPU model and library) and written there.  Both give the same images."""
    if not lib.xrp_has_avx2():
        return {"corner_loads": "gather", "mask": 0, "source": "no AVX2 path in this build"}
    forced = os.environ.get(CORNER_LOADS_ENV, "auto").strip().lower()
    if forced in _FORCED_LOADS:
        lib.xrp_set_corner_loads(_FORCED_LOADS[forced])
        return {"corner_loads": forced, "mask": _FORCED_LOADS[forced], "source": f"${CORNER_LOADS_ENV}"}
    if forced not in ("", "auto"):
        import warnings

        warnings.warn(f"${CORNER_LOADS_ENV}={forced!r} is not gather, pairs or auto; choosing by timing")
    model = _cpu_model()
    tag = hashlib.sha256(model.encode()).hexdigest()[:8]
    path = lib_path.with_name(f"{lib_path.stem}.{tag}.tune.json")
    try:
        got = json.loads(path.read_text(encoding="utf-8"))
        if got.get("cpu") == model and isinstance(got.get("mask"), int):
            lib.xrp_set_corner_loads(got["mask"])
            return {**got, "source": str(path)}
    except (OSError, ValueError):
        pass
    timings = time_corner_loads(lib)
    mask = 0
    for layout, bit in (("channels_first", LOADS_PAIRS), ("channels_last", LOADS_QUADS)):
        t = timings[layout]
        if t["pairs"] < 0.97 * t["gather"]:  # a clear win only: the gathers stay otherwise
            mask |= bit
    lib.xrp_set_corner_loads(mask)
    names = {0: "gather", LOADS_PAIRS: "pairs (channels-first)", LOADS_QUADS: "pairs (channels-last)",
             LOADS_PAIRS | LOADS_QUADS: "pairs"}
    record = {"cpu": model, "corner_loads": names[mask], "mask": mask, "timings_ms": timings}
    try:  # atomically; a read-only cache just times again next time
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass
    return {**record, "source": "timed now"}


def time_corner_loads(lib=None, repeats: int = 7) -> dict:
    """Milliseconds (median CPU time of one thread) of a small fused render with gathers and with pair
    loads, for a two-channel volume stored channels-first and channels-last:
    ``{layout: {"gather": ms, "pairs": ms}}``.  The volume (2 × 96 × 96 × 64, smooth, 8 MiB) is
    viewed along j by 64 × 64 rays of 192 samples, forward with the pose-gradient sums (as
    registration renders).  Leaves the library's corner-load mode as it found it."""
    import statistics

    lib = lib or _load()
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand((1, 2, 12, 12, 8), generator=g)
    vol = torch.nn.functional.interpolate(coarse, size=(96, 96, 64), mode="trilinear", align_corners=False)[0]
    vol[:, :8] = 0.0  # some air
    H = W = 64
    R, N = H * W, 192
    pose = torch.tensor([[1, 0, 0, 47.5], [0, 0, 1, -150.0], [0, -1, 0, 31.5], [0, 0, 0, 1]],
                        dtype=torch.float32)[None]  # camera +z along +j, 150 voxels before the volume
    sdd = 400.0
    kinv = torch.linalg.inv(torch.tensor([[sdd / 3, 0, (W - 1) / 2], [0, sdd / 3, (H - 1) / 2], [0, 0, 1]],
                                         dtype=torch.float64)).contiguous()
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    uv = torch.stack([u, v], -1).reshape(1, R, 2).contiguous()
    w2i = torch.eye(4, dtype=torch.float64)[:3].contiguous()
    box = torch.tensor([-0.5, -0.5, -0.5, 95.5, 95.5, 63.5], dtype=torch.float64)
    geo = torch.empty((1, R, GEO), dtype=torch.float64)
    origin = torch.empty((1, 3), dtype=torch.float64)
    order = torch.empty((1, R), dtype=torch.int64)
    lib.xrp_rays_f32(_ptr(pose), _ptr(w2i), _ptr(kinv), sdd, _ptr(uv), 0, _ptr(box), 1, R,
                     float(torch.finfo(torch.float32).tiny ** 0.5), _ptr(geo), _ptr(origin), _ptr(order), 1)
    out, raw = torch.empty((1, 2, R)), torch.empty((1, 2, R))
    jac = torch.empty((1, 2, R, 6))
    before = lib.xrp_set_corner_loads(-1)
    result = {}
    try:
        for layout, d in (("channels_first", vol.contiguous()), ("channels_last", channels_last(vol))):
            vs = _shape_strides(d)
            times = {"gather": [], "pairs": []}
            for _ in range(repeats):
                for name, mask in (("gather", 0), ("pairs", LOADS_PAIRS | LOADS_QUADS)):
                    lib.xrp_set_corner_loads(mask)
                    t = time.thread_time()
                    lib.xrp_tri_fused_fwd_f32_f32(_ptr(d), _ptr(vs), _ptr(order), _ptr(geo), _ptr(origin), 1, R, N,
                                                  _ptr(out), _ptr(raw), _ptr(jac), None, None, 1)
                    times[name].append(1e3 * (time.thread_time() - t))
            result[layout] = {k: round(statistics.median(x), 3) for k, x in times.items()}
    finally:
        lib.xrp_set_corner_loads(before)
    return result


def kernel_info() -> dict:
    """What the CPU kernels run with: library, CPU, corner loads and how they were chosen (or why unavailable)."""
    lib = _load()
    if lib is None:
        return {"available": False, "reason": _error}
    return {"available": True, "library": lib._name, "cpu": _cpu_model(), **(_tuning or {})}


def available() -> bool:
    return _load() is not None


def unavailable_reason() -> str | None:
    _load()
    return _error


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def _threads() -> int:
    return max(1, torch.get_num_threads())


class _TrilinearSums(torch.autograd.Function):
    """F[b, c, r] = Σ_k f_c(o_b + (a + span·(k+½)/N)·d_br); analytic backward for every input."""

    @staticmethod
    def forward(ctx, density, origin, direction, s_near, span, n_samples, order=None, occ=None):
        lib = _load()
        C = density.shape[0]
        B, R, _ = direction.shape
        out = torch.empty((B, C, R), dtype=direction.dtype)
        fn = getattr(lib, f"xrp_tri_fwd_{_SUFFIX[direction.dtype]}_{_SUFFIX[density.dtype]}")
        vs = _shape_strides(density)
        # Pose gradients wanted: the float32 kernel also sums the samples' gradients (jac), so the
        # backward needs no second pass over the volume.
        geo = any(ctx.needs_input_grad[1:5])
        jac = torch.empty((B, C, R, 6), dtype=direction.dtype) if geo else None
        occ_grid, occ_shape = occ if occ is not None else (None, None)
        got = fn(_ptr(density), _ptr(vs), _ptr(order), _ptr(origin), _ptr(direction), _ptr(s_near), _ptr(span), B, R,
                 n_samples, _ptr(out), _ptr(jac), _ptr(occ_grid), _ptr(occ_shape), _threads())
        ctx.jac = jac if got else None
        ctx.save_for_backward(density, origin, direction, s_near, span)
        ctx.n_samples = n_samples
        ctx.order = order
        ctx.occ = occ
        return out

    @staticmethod
    def backward(ctx, grad):
        density, origin, direction, s_near, span = ctx.saved_tensors
        need_vol, need_o, need_d, need_a, need_s = ctx.needs_input_grad[:5]
        geo = need_o or need_d or need_a or need_s
        if not (geo or need_vol):
            return None, None, None, None, None, None, None, None
        if ctx.jac is not None and not need_vol:
            return (None, *_from_jacobian(ctx.jac, grad, direction, s_near, span, ctx.needs_input_grad), None, None,
                    None)
        lib = _load()
        order = ctx.order
        B, R, _ = direction.shape
        grad = grad.contiguous().to(direction.dtype)
        g = dict(dtype=direction.dtype)
        gO = torch.empty((B, R, 3), **g) if geo else None
        gD = torch.empty((B, R, 3), **g) if geo else None
        gA = torch.empty((B, R), **g) if geo else None
        gS = torch.empty((B, R), **g) if geo else None
        gV = torch.empty_strided(density.shape, density.stride(), dtype=density.dtype).zero_() if need_vol else None
        vs = _shape_strides(density)
        fn = getattr(lib, f"xrp_tri_bwd_{_SUFFIX[direction.dtype]}_{_SUFFIX[density.dtype]}")
        occ_grid, occ_shape = ctx.occ if ctx.occ is not None else (None, None)  # the kernel skips only without gV
        fn(_ptr(density), _ptr(vs), _ptr(order), _ptr(origin), _ptr(direction), _ptr(s_near), _ptr(span), B, R, ctx.n_samples,
           _ptr(grad), _ptr(gO), _ptr(gD), _ptr(gA), _ptr(gS), _ptr(gV), _ptr(occ_grid), _ptr(occ_shape), _threads())
        return (
            gV,
            gO.sum(1) if need_o else None,
            gD if need_d else None,
            gA if need_a else None,
            gS if need_s else None,
            None,
            None,
            None,
        )


def _from_jacobian(jac, grad, direction, s_near, span, needs):
    """Pose-side gradients from the forward's per-ray sums of sample gradients (see tri_fwd_f32)."""
    G = torch.einsum("bcr,bcrj->brj", grad.to(jac.dtype), jac)  # (B, R, 6)
    g1, g2 = G[..., :3], G[..., 3:]
    return (
        g1.sum(1) if needs[1] else None,
        s_near.unsqueeze(-1) * g1 + span.unsqueeze(-1) * g2 if needs[2] else None,
        (g1 * direction).sum(-1) if needs[3] else None,
        (g2 * direction).sum(-1) if needs[4] else None,
    )


def cache_order(origin: torch.Tensor, direction: torch.Tensor, s_near: torch.Tensor, span: torch.Tensor):
    """A ray order (B, R) that makes neighbouring rays touch the same cache lines.

    Rays are bucketed 2 voxels wide across the image plane, along the axis
    perpendicular to both the mean ray and the volume's contiguous (k) axis,
    and sorted along k within a bucket: consecutive rays then read the same
    rows of the volume (measured: 2× faster than row-major pixels on an AP view
    of a 512×512×134 CT).
    """
    with torch.no_grad():
        d = direction.detach()
        mid = origin.detach() + (s_near.detach() + 0.5 * span.detach()).unsqueeze(-1) * d  # (B, R, 3)
        mean = d.mean(1)  # (B, 3)
        mean = mean / mean.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        k = torch.zeros_like(mean)
        k[:, 2] = 1.0
        e1 = k - (k * mean).sum(-1, keepdim=True) * mean
        bad = e1.norm(dim=-1, keepdim=True) < 0.1  # looking along k: any in-plane axis will do
        j = torch.zeros_like(mean)
        j[:, 1] = 1.0
        e1 = torch.where(bad, j - (j * mean).sum(-1, keepdim=True) * mean, e1)
        e1 = e1 / e1.norm(dim=-1, keepdim=True)
        e2 = torch.linalg.cross(mean, e1)
        a1 = (mid * e1.unsqueeze(1)).sum(-1).double()
        a2 = torch.floor((mid * e2.unsqueeze(1)).sum(-1).double() / 2.0)
        a1 = a1 - a1.amin(1, keepdim=True)
        key = a2 * (a1.amax(1, keepdim=True) + 1.0) + a1
        return torch.argsort(key, dim=1).contiguous()


def integrate_trilinear(density, origin, direction, length, n_samples: int, reorder: bool = True):
    """Same contract and numbers as :func:`xraypose.render.trilinear.integrate_trilinear` (fixed N).

    Empty-space skipping (:func:`occupancy`) for a volume that lives across calls (not a per-call
    copy); the volume gradient, when asked for, is computed from every sample."""
    given = density
    density = _prepare(density, direction)
    occ = occupancy(density) if density is given else None
    C, I, J, K = density.shape
    dt = direction.dtype
    lo, hi = support_box((I, J, K), dt, direction.device)
    s_near, s_far = clip_to_box(origin, direction, lo, hi)
    span = (s_far - s_near).clamp_min(0.0)
    B, R, _ = direction.shape
    order = cache_order(origin, direction, s_near, span) if reorder and R >= 64 else None
    sums = _TrilinearSums.apply(density, origin.reshape(B, 3).contiguous(), direction.contiguous(),
                                s_near.contiguous(), span.contiguous(), int(n_samples), order, occ)
    return sums * (span * length / n_samples).unsqueeze(1)


class _SiddonSums(torch.autograd.Function):
    """S[b, c, r] = Σ over the ray's pieces in each voxel of μ_c(voxel)·(piece length in s)."""

    @staticmethod
    def forward(ctx, density, origin, direction, s_near, s_far, order=None):
        lib = _load()
        C = density.shape[0]
        B, R, _ = direction.shape
        out = torch.empty((B, C, R), dtype=direction.dtype)
        vs = _shape_strides(density)
        fn = getattr(lib, f"xrp_sid_fwd_{_SUFFIX[direction.dtype]}_{_SUFFIX[density.dtype]}")
        fn(_ptr(density), _ptr(vs), _ptr(order), _ptr(origin), _ptr(direction), _ptr(s_near), _ptr(s_far), B, R, _ptr(out),
           _threads())
        ctx.save_for_backward(density, origin, direction, s_near, s_far)
        ctx.order = order
        return out

    @staticmethod
    def backward(ctx, grad):
        density, origin, direction, s_near, s_far = ctx.saved_tensors
        need_vol = ctx.needs_input_grad[0]
        geo = any(ctx.needs_input_grad[1:5])
        if not (geo or need_vol):
            return None, None, None, None, None, None
        lib = _load()
        order = ctx.order
        B, R, _ = direction.shape
        grad = grad.contiguous().to(direction.dtype)
        g = dict(dtype=direction.dtype)
        gO = torch.empty((B, R, 3), **g) if geo else None
        gD = torch.empty((B, R, 3), **g) if geo else None
        gN = torch.empty((B, R), **g) if geo else None
        gF = torch.empty((B, R), **g) if geo else None
        gV = torch.empty_strided(density.shape, density.stride(), dtype=density.dtype).zero_() if need_vol else None
        vs = _shape_strides(density)
        fn = getattr(lib, f"xrp_sid_bwd_{_SUFFIX[direction.dtype]}_{_SUFFIX[density.dtype]}")
        fn(_ptr(density), _ptr(vs), _ptr(order), _ptr(origin), _ptr(direction), _ptr(s_near), _ptr(s_far), B, R, _ptr(grad),
           _ptr(gO), _ptr(gD), _ptr(gN), _ptr(gF), _ptr(gV), _threads())
        n = ctx.needs_input_grad
        return (
            gV,
            gO.sum(1) if n[1] else None,
            gD if n[2] else None,
            gN if n[3] else None,
            gF if n[4] else None,
            None,
        )


def _shape_strides(density: torch.Tensor) -> torch.Tensor:
    return torch.tensor(list(density.shape) + list(density.stride()), dtype=torch.int64)


def is_channels_last(density: torch.Tensor) -> bool:
    """(C, I, J, K) stored as a contiguous (I, J, K, C) — or, for three channels, as the first three
    channels of a contiguous (I, J, K, 4) (:func:`channels_last`'s padded pitch): a voxel's channels
    side by side."""
    if density.dim() != 4:
        return False
    if density.permute(1, 2, 3, 0).is_contiguous():
        return True
    C, I, J, K = density.shape
    if C != 3 or density.stride() != (1, J * K * 4, K * 4, 4):
        return False
    end = density.storage_offset() + I * J * K * 4  # the pad of the last voxel is read too
    return density.untyped_storage().nbytes() >= end * density.element_size()


def channels_last(density: torch.Tensor) -> torch.Tensor:
    """A (C, I, J, K) view of a contiguous (I, J, K, C) copy: the layout the kernels read fastest for C > 1.

    Three channels are stored in a pitch of four floats (a zero pad per voxel: 33 % more memory), so
    that the AVX2 path reads every channel of a corner with one 16-byte load (AMD EPYC, the pelvis's
    three-channel registration basis at 2 mm, one 128² render: 35.8 ms channels-first, 29.7 ms padded
    channels-last, 19.9 ms for one channel; bit-identical images)."""
    if density.dim() == 4 and density.shape[0] == 3:
        C, I, J, K = density.shape
        out = torch.zeros((I, J, K, 4), dtype=density.dtype, device=density.device)
        out[..., :3] = density.permute(1, 2, 3, 0)
        return out.permute(3, 0, 1, 2)[:3]
    return density.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)


def _prepare(density, direction):
    """A float32/float64 volume in a layout the kernels read in place (else a contiguous copy)."""
    dt = direction.dtype
    if dt not in _SUFFIX:
        raise InputError(f"the fused CPU backend computes in float32 or float64, got {dt}")
    if density.dtype not in _SUFFIX:
        density = density.to(dt)
    if density.is_contiguous() or is_channels_last(density):
        return density
    return density.contiguous()


def integrate_siddon(density, origin, direction, length, reorder: bool = True):
    """Same contract and numbers as :func:`xraypose.render.siddon.integrate_siddon`."""
    density = _prepare(density, direction)
    C, I, J, K = density.shape
    dt = direction.dtype
    shape = torch.tensor([I, J, K], dtype=dt)
    s_near, s_far = clip_to_box(origin, direction, torch.full_like(shape, -0.5), shape - 0.5)
    s_far = torch.maximum(s_far, s_near)
    B, R, _ = direction.shape
    order = cache_order(origin, direction, s_near, s_far - s_near) if reorder and R >= 64 else None
    sums = _SiddonSums.apply(density, origin.reshape(B, 3).contiguous(), direction.contiguous(),
                             s_near.contiguous(), s_far.contiguous(), order)
    return sums * length.unsqueeze(1)


OCC_BRICK = 8  # voxels per brick side (the kernel's OCC_SHIFT)


def occupancy_grid(density: torch.Tensor) -> torch.Tensor:
    """(OI, OJ, OK) uint8, OI = ceil(I / 8): 0 where every voxel of every channel within the brick
    dilated by one brick (voxel indices [8b − 8, 8b + 16) per axis) is exactly 0 (NaN counts as
    non-zero).  The fused kernel skips blocks of samples centred in such bricks: they add exactly 0.
    Built slab by slab (a few MiB of temporaries, whatever the volume's size)."""
    C, I, J, K = density.shape
    b = OCC_BRICK
    OI, OJ, OK = -(-I // b), -(-J // b), -(-K // b)
    bricks = torch.zeros((OI, OJ, OK), dtype=torch.bool)
    with torch.no_grad():
        for oi in range(OI):
            slab = (density[:, oi * b:(oi + 1) * b] != 0).any(0).any(0)  # (J, K)
            slab = torch.nn.functional.pad(slab, (0, OK * b - K, 0, OJ * b - J))
            bricks[oi] = slab.reshape(OJ, b, OK, b).any(3).any(1)
        dil = torch.nn.functional.max_pool3d(bricks[None, None].float(), 3, stride=1, padding=1)[0, 0]
    return (dil > 0).to(torch.uint8).contiguous()


def occupancy(density: torch.Tensor):
    """The volume's (occupancy grid, its shape) for the fused kernel, built on the second render of
    the same tensor and in-place version and cached on the tensor; None on the first render, or
    when skipping is turned off (``XRAYPOSE_NO_SKIP=1``)."""
    if os.environ.get("XRAYPOSE_NO_SKIP"):
        return None
    cached = getattr(density, "_xrp_occupancy", None)
    if cached is None or cached[0] != density._version:  # first sight of this tensor (or version):
        try:  # a one-off render pays nothing; the grid (≈ 0.4 s for a 512×512×134 CT) is built next time
            density._xrp_occupancy = (density._version, None)
        except (AttributeError, RuntimeError):  # pragma: no cover
            pass
        return None
    if cached[1] is not None:
        return cached[1]
    grid = occupancy_grid(density)
    value = (grid, torch.tensor(list(grid.shape), dtype=torch.int64))
    try:
        density._xrp_occupancy = (density._version, value)
    except (AttributeError, RuntimeError):  # pragma: no cover - tensors normally take attributes
        pass
    return value


def fits_fast_path(density: torch.Tensor) -> bool:
    """Every element offset of the (C, I, J, K) volume below 2³¹ (the kernels' 32-bit fast path)."""
    top = sum((n - 1) * st for n, st in zip(density.shape, density.stride()))
    return all(st >= 0 for st in density.stride()) and top < 2**31 - 1


def _fused_forward(density, pose, uv, w2i, kinv, sdd, box, n_samples, step, occ, need_jacobian: bool):
    """The fused kernel's forward: ``(out (B, C, R), geo, raw, jac, n_samples)``; ``raw`` and ``jac``
    (what the pose gradient needs) only when ``need_jacobian``, else None."""
    lib = _load()
    B, R = pose.shape[0], uv.shape[1]
    C = density.shape[0]
    geo = torch.empty((B, R, GEO), dtype=torch.float64)
    origin = torch.empty((B, 3), dtype=torch.float64)
    order = torch.empty((B, R), dtype=torch.int64) if R >= 64 else None
    eps = torch.finfo(torch.float32).tiny ** 0.5  # clip_to_box's "parallel to a slab" threshold
    uv_bstride = 0 if uv.shape[0] == 1 else R * 2
    lib.xrp_rays_f32(_ptr(pose), _ptr(w2i), _ptr(kinv), float(sdd), _ptr(uv), uv_bstride, _ptr(box), B, R, eps,
                     _ptr(geo), _ptr(origin), _ptr(order), _threads())
    if n_samples is None:  # trilinear.n_samples_for_step on the same chords
        chord = ((geo[..., 5] - geo[..., 4]).clamp_min(0) * geo[..., 3]).max()
        n_samples = max(1, int(math.ceil(float(chord) / step)))
    out = torch.empty((B, C, R), dtype=torch.float32)
    raw = torch.empty((B, C, R), dtype=torch.float32) if need_jacobian else None
    jac = torch.empty((B, C, R, 6), dtype=torch.float32) if need_jacobian else None
    fn = getattr(lib, f"xrp_tri_fused_fwd_f32_{_SUFFIX[density.dtype]}")
    vs = _shape_strides(density)  # keep a reference: the kernel reads it
    occ_grid, occ_shape = occ if occ is not None else (None, None)
    if not fn(_ptr(density), _ptr(vs), _ptr(order), _ptr(geo), _ptr(origin), B, R,
              n_samples, _ptr(out), _ptr(raw), _ptr(jac), _ptr(occ_grid), _ptr(occ_shape), _threads()):
        raise RuntimeError("volume too large for the fused kernel's 32-bit offsets (caller must check)")
    return out, geo, raw, jac, n_samples


def _per_ray_pose_grad(geo, w2i, raw, jac, n_samples: int, gout: torch.Tensor) -> torch.Tensor:
    """(B, R, 12) float64: each ray's ``Σ_c gout[b, c, r] · ∂I_c,r / ∂pose`` with respect to the
    float32 pose's entries ``pose[:3, :3]`` (row-major, 9) and ``pose[:3, 3]`` (3)."""
    lib = _load()
    B, C, R = raw.shape
    gout = gout.contiguous().to(torch.float32)
    per_ray = torch.empty((B, R, 12), dtype=torch.float64)
    lib.xrp_tri_fused_bwd_f32(_ptr(geo), _ptr(w2i), B, R, C, n_samples, _ptr(gout), _ptr(raw), _ptr(jac),
                              _ptr(per_ray), _threads())
    return per_ray


class _FusedTrilinear(torch.autograd.Function):
    """Rays from float32 poses, clipping, sampling and accumulation in one kernel; pose gradient analytic.

    Same numbers as render(..., backend="reference") (rays.py, clip_to_box, trilinear.py) up to float32
    rounding of the samples; geometry in float64 inside the kernel.
    """

    @staticmethod
    def forward(ctx, density, pose, uv, w2i, kinv, sdd, box, n_samples, step, occ):
        out, geo, raw, jac, n_samples = _fused_forward(density, pose, uv, w2i, kinv, sdd, box, n_samples, step, occ,
                                                       need_jacobian=ctx.needs_input_grad[1])
        ctx.save_for_backward(geo, w2i, raw, jac)
        ctx.n_samples = n_samples
        return out

    @staticmethod
    def backward(ctx, gout):
        geo, w2i, raw, jac = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return (None,) * 10
        B = raw.shape[0]
        g = _per_ray_pose_grad(geo, w2i, raw, jac, ctx.n_samples, gout).sum(1)
        gpose = torch.zeros((B, 4, 4), dtype=torch.float64)
        gpose[:, :3, :3] = g[:, :9].reshape(B, 3, 3)
        gpose[:, :3, 3] = g[:, 9:]
        return None, gpose.to(torch.float32), None, None, None, None, None, None, None, None


def _fused_arguments(density, affine, camera, camera_to_world, uv, n_samples, step):
    """The fused kernel's arguments ``(density, pose, uv, w2i, kinv, sdd, box, n_samples, step, occ)``."""
    given = density
    if density.dtype not in _SUFFIX:
        density = density.to(torch.float32)
    if not (density.is_contiguous() or is_channels_last(density)):
        density = density.contiguous()
    # empty-space skipping, for volumes that live across calls (a DRR's basis), not per-call copies
    occ = occupancy(density) if density is given else None
    w2i = _world_to_index(affine)
    kinv = camera.K_inv(torch.float64).contiguous()
    n = density.shape[1:]
    box = torch.tensor([-0.5, -0.5, -0.5] + [k - 0.5 for k in n], dtype=torch.float64)  # trilinear.support_box
    if uv.shape[0] > 1 and uv.stride(0) == 0:  # one pixel list shared by every pose
        uv = uv[:1]
    uv = uv.to(torch.float32).contiguous()
    return density, camera_to_world.contiguous(), uv, w2i, kinv, camera.sdd, box, n_samples, step, occ


def _world_to_index(affine: torch.Tensor) -> torch.Tensor:
    """(3, 4) float64 rows of ``affine``'s inverse, cached on the tensor (per in-place version): a
    registration renders with the same affine hundreds of times."""
    cached = getattr(affine, "_xrp_w2i", None)
    if cached is not None and cached[0] == affine._version:
        return cached[1]
    w2i = torch.linalg.inv(affine.detach().double().cpu())[:3].contiguous()
    try:
        affine._xrp_w2i = (affine._version, w2i)
    except (AttributeError, RuntimeError):  # pragma: no cover - tensors normally take attributes
        pass
    return w2i


def render_trilinear_fused(density, affine, camera, camera_to_world, uv, n_samples, step):
    """(B, C, R) line integrals for float32 poses: render()'s trilinear path in one kernel.

    ``uv`` (B or 1, R, 2) pixel coordinates; ``n_samples`` or, when None, ``step`` (mm).
    The caller checks: CPU tensors, float32 poses, no volume gradient, :func:`fits_fast_path`.
    """
    return _FusedTrilinear.apply(*_fused_arguments(density, affine, camera, camera_to_world, uv, n_samples, step))


def render_trilinear_fused_tangents(density, affine, camera, camera_to_world, uv, n_samples, step,
                                    tangents: torch.Tensor):
    """Line integrals and their directional derivatives along pose tangents, in one forward pass.

    Args: as :func:`render_trilinear_fused`, plus ``tangents`` (B, K, 4, 4): directions in the space
        of 4×4 poses (e.g. ``F·G·F⁻¹·pose`` for a Lie-algebra generator ``G``).
    Returns:
        ``(img (B, C, R), dimg (B, K, C, R))`` float32, ``dimg[b, k] = Σ_ij ∂img[b]/∂pose_ij · tangents[b, k, i, j]``:
        the kernel's per-ray pose derivatives (the same numbers its backward sums), one backward pass
        per channel, no autograd.
    """
    args = _fused_arguments(density, affine, camera, camera_to_world, uv, n_samples, step)
    img, geo, raw, jac, n_used = _fused_forward(*args, need_jacobian=True)
    B, C, R = img.shape
    T = tangents.to(torch.float64)
    t12 = torch.cat([T[:, :, :3, :3].reshape(B, -1, 9), T[:, :, :3, 3]], -1)  # (B, K, 12)
    dimg = torch.empty((B, T.shape[1], C, R), dtype=torch.float32)
    for c in range(C):
        gout = torch.zeros((B, C, R), dtype=torch.float32)
        gout[:, c] = 1.0
        per_ray = _per_ray_pose_grad(geo, args[3], raw, jac, n_used, gout)  # (B, R, 12)
        dimg[:, :, c] = torch.einsum("brm,bkm->bkr", per_ray, t12).to(torch.float32)
    return img, dimg


if __name__ == "__main__":  # python -m xraypose.render.backends.cpu: build ahead of time, say where
    try:
        print(build(verbose=True))
    except RuntimeError as e:
        print(e, file=sys.stderr)
        sys.exit(1)
    print(json.dumps(kernel_info(), indent=1))
