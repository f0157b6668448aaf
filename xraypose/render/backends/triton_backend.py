"""Fused GPU backend in Triton: trilinear ray marching with analytic backward.

Same contract and numbers as the reference (``trilinear.py``): rays clipped
to the volume box in PyTorch, then one kernel samples N midpoints per ray,
interpolates trilinearly with the edge value held (grid_sample's "border"),
and sums along the ray, never materialising the samples.  The backward kernel
recomputes the samples and gives, per ray, the gradients with respect to the
ray's origin, direction, entry point and span (and, when asked, scatters the
volume gradient with atomics).

Volumes may be float16, bfloat16, float32 or float64; geometry and
accumulation are float32 for float32 poses (float64 for float64 poses).
Offsets are 32-bit unless the volume has 2³¹ elements or more, then 64-bit.

Runs on CUDA tensors; with ``TRITON_INTERPRET=1`` Triton's interpreter runs it
on CPU tensors (slowly: for tests of small problems).
"""

from __future__ import annotations

import os

import torch

from xraypose.errors import InputError
from xraypose.render.rays import clip_to_box
from xraypose.render.trilinear import support_box

import triton  # noqa: E402  (ImportError → backend unavailable, see backends/__init__.py)
import triton.language as tl  # noqa: E402

VOLUME_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BLOCK_R = 32
BLOCK_S = 32
FORCE_WIDE = False  # tests: take the 64-bit offset path on small volumes


_self_check: str | None | bool = False  # False: not run yet


def unavailable_reason() -> str | None:
    """None when the kernels can run here, else why not.

    On the first call with a GPU the kernels are compiled and checked once against the
    reference on a tiny problem (forward and pose-side gradients); any failure makes the
    backend unavailable (``render`` then warns once and uses the reference) instead of
    breaking rendering.
    """
    global _self_check
    if os.environ.get("TRITON_INTERPRET", "") == "1":
        return None
    if not torch.cuda.is_available():
        return "no CUDA device"
    if _self_check is False:
        try:
            _self_check = _check_against_reference("cuda")
        except Exception as e:  # compile or launch failure
            _self_check = f"self-check failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return _self_check


def _check_against_reference(device) -> str | None:
    from xraypose.render.trilinear import integrate_trilinear as reference

    g = torch.Generator().manual_seed(0)
    vol = torch.rand(2, 6, 5, 4, generator=g, dtype=torch.float64)
    o = torch.tensor([[[2.5, -10.0, 1.5]]], dtype=torch.float64)
    d = torch.tensor([[[0.0, 22.0, 0.0]]], dtype=torch.float64) + 4 * torch.randn(1, 40, 3, generator=g,
                                                                                   dtype=torch.float64)
    L = 500 + 100 * torch.rand(1, 40, generator=g, dtype=torch.float64)
    outs = []
    # Gradients on even when the first render runs under torch.no_grad() (inference, a benchmark's
    # forward): without this the check itself failed there and the backend was lost for the process.
    with torch.enable_grad():
        for fn, dev, dt in ((reference, "cpu", torch.float64), (integrate_trilinear, device, torch.float32)):
            args = [t.to(dev, dt).requires_grad_() for t in (o, d, L)]
            y = fn(vol.to(dev, dt), *args, n_samples=23)
            grads = torch.autograd.grad((y * y).sum(), args)
            outs.append([y.detach().double().cpu()] + [x.double().cpu() for x in grads])
    for name, a, b in zip(("image", "d/origin", "d/direction", "d/length"), *outs):
        err = float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))
        if not err < 1e-4:
            return f"self-check: {name} differs from the reference by {err:.2g}"
    return None


@triton.jit
def _axis(x, m, n, WIDE: tl.constexpr):
    """Clamp a coordinate to [0, n-1] (border padding); return base index, weight, gradient mask."""
    inside = (x > 0) & (x < m)
    xc = tl.minimum(tl.maximum(x, 0.0), m)
    f = tl.floor(xc)
    f = tl.minimum(f, tl.maximum(m - 1.0, 0.0))
    w = xc - f
    if WIDE:
        i = f.to(tl.int64)
    else:
        i = f.to(tl.int32)
    return i, w, inside


@triton.jit(do_not_specialize=["C", "I", "J", "K", "JK", "R", "N", "sx", "sy", "sz"])
def _tri_fwd_kernel(
    vol_ptr, o_ptr, d_ptr, a_ptr, s_ptr, out_ptr,
    C, I, J, K, JK, R, N,
    mI, mJ, mK,  # n - 1 per axis, as floats
    sx, sy, sz,  # offsets of the "+1" neighbour along i, j, k (0 for size-1 axes)
    ACC_F64: tl.constexpr, WIDE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    if ACC_F64:
        acc_t: tl.constexpr = tl.float64
    else:
        acc_t: tl.constexpr = tl.float32
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < R
    if WIDE:
        ray = b.to(tl.int64) * R + r
    else:
        ray = b * R + r
    ox = tl.load(o_ptr + b * 3 + 0).to(acc_t)
    oy = tl.load(o_ptr + b * 3 + 1).to(acc_t)
    oz = tl.load(o_ptr + b * 3 + 2).to(acc_t)
    dx = tl.load(d_ptr + ray * 3 + 0, mask=rmask, other=0.0).to(acc_t)
    dy = tl.load(d_ptr + ray * 3 + 1, mask=rmask, other=0.0).to(acc_t)
    dz = tl.load(d_ptr + ray * 3 + 2, mask=rmask, other=0.0).to(acc_t)
    s0 = tl.load(a_ptr + ray, mask=rmask, other=0.0).to(acc_t)
    sp = tl.load(s_ptr + ray, mask=rmask, other=0.0).to(acc_t)
    mI = tl.full((), 0.0, acc_t) + mI
    mJ = tl.full((), 0.0, acc_t) + mJ
    mK = tl.full((), 0.0, acc_t) + mK
    if WIDE:
        JK = JK.to(tl.int64)
        b = b.to(tl.int64)
    IJK = JK * I
    for c in range(0, C):
        acc = tl.zeros((BLOCK_R,), dtype=acc_t)
        for k0 in range(0, N, BLOCK_S):
            k = k0 + tl.arange(0, BLOCK_S)
            kmask = k < N
            t = (k.to(acc_t) + 0.5) / N
            s = s0[:, None] + sp[:, None] * t[None, :]
            x = ox + s * dx[:, None]
            y = oy + s * dy[:, None]
            z = oz + s * dz[:, None]
            ix, wx, _gx = _axis(x, mI, I, WIDE)
            iy, wy, _gy = _axis(y, mJ, J, WIDE)
            iz, wz, _gz = _axis(z, mK, K, WIDE)
            m = rmask[:, None] & kmask[None, :]
            p = vol_ptr + c * IJK + ix * JK + iy * K + iz
            v000 = tl.load(p, mask=m, other=0.0).to(acc_t)
            v001 = tl.load(p + sz, mask=m, other=0.0).to(acc_t)
            v010 = tl.load(p + sy, mask=m, other=0.0).to(acc_t)
            v011 = tl.load(p + sy + sz, mask=m, other=0.0).to(acc_t)
            v100 = tl.load(p + sx, mask=m, other=0.0).to(acc_t)
            v101 = tl.load(p + sx + sz, mask=m, other=0.0).to(acc_t)
            v110 = tl.load(p + sx + sy, mask=m, other=0.0).to(acc_t)
            v111 = tl.load(p + sx + sy + sz, mask=m, other=0.0).to(acc_t)
            c00 = v000 + wz * (v001 - v000)
            c01 = v010 + wz * (v011 - v010)
            c10 = v100 + wz * (v101 - v100)
            c11 = v110 + wz * (v111 - v110)
            c0 = c00 + wy * (c01 - c00)
            c1 = c10 + wy * (c11 - c10)
            val = c0 + wx * (c1 - c0)
            acc += tl.sum(tl.where(m, val, 0.0), axis=1)
        tl.store(out_ptr + (b * C + c) * R + r, acc.to(out_ptr.dtype.element_ty), mask=rmask)


@triton.jit(do_not_specialize=["C", "I", "J", "K", "JK", "R", "N", "sx", "sy", "sz"])
def _tri_bwd_kernel(
    vol_ptr, o_ptr, d_ptr, a_ptr, s_ptr, g_ptr,
    gO_ptr, gD_ptr, gA_ptr, gS_ptr, gV_ptr,
    C, I, J, K, JK, R, N,
    mI, mJ, mK,
    sx, sy, sz,
    ACC_F64: tl.constexpr, WIDE: tl.constexpr, GEO: tl.constexpr, VOL: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    if ACC_F64:
        acc_t: tl.constexpr = tl.float64
    else:
        acc_t: tl.constexpr = tl.float32
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < R
    if WIDE:
        ray = b.to(tl.int64) * R + r
    else:
        ray = b * R + r
    ox = tl.load(o_ptr + b * 3 + 0).to(acc_t)
    oy = tl.load(o_ptr + b * 3 + 1).to(acc_t)
    oz = tl.load(o_ptr + b * 3 + 2).to(acc_t)
    dx = tl.load(d_ptr + ray * 3 + 0, mask=rmask, other=0.0).to(acc_t)
    dy = tl.load(d_ptr + ray * 3 + 1, mask=rmask, other=0.0).to(acc_t)
    dz = tl.load(d_ptr + ray * 3 + 2, mask=rmask, other=0.0).to(acc_t)
    s0 = tl.load(a_ptr + ray, mask=rmask, other=0.0).to(acc_t)
    sp = tl.load(s_ptr + ray, mask=rmask, other=0.0).to(acc_t)
    mI = tl.full((), 0.0, acc_t) + mI
    mJ = tl.full((), 0.0, acc_t) + mJ
    mK = tl.full((), 0.0, acc_t) + mK
    if WIDE:
        JK = JK.to(tl.int64)
        b = b.to(tl.int64)
    IJK = JK * I
    sumx = tl.zeros((BLOCK_R,), dtype=acc_t)
    sumy = tl.zeros((BLOCK_R,), dtype=acc_t)
    sumz = tl.zeros((BLOCK_R,), dtype=acc_t)
    tx = tl.zeros((BLOCK_R,), dtype=acc_t)
    ty = tl.zeros((BLOCK_R,), dtype=acc_t)
    tz = tl.zeros((BLOCK_R,), dtype=acc_t)
    for k0 in range(0, N, BLOCK_S):
        k = k0 + tl.arange(0, BLOCK_S)
        kmask = k < N
        t = (k.to(acc_t) + 0.5) / N
        s = s0[:, None] + sp[:, None] * t[None, :]
        x = ox + s * dx[:, None]
        y = oy + s * dy[:, None]
        z = oz + s * dz[:, None]
        ix, wx, inx = _axis(x, mI, I, WIDE)
        iy, wy, iny = _axis(y, mJ, J, WIDE)
        iz, wz, inz = _axis(z, mK, K, WIDE)
        ux = 1.0 - wx
        uy = 1.0 - wy
        uz = 1.0 - wz
        m = rmask[:, None] & kmask[None, :]
        base = ix * JK + iy * K + iz
        v000 = tl.zeros((BLOCK_R, BLOCK_S), dtype=acc_t)
        v001 = tl.zeros((BLOCK_R, BLOCK_S), dtype=acc_t)
        v010 = tl.zeros((BLOCK_R, BLOCK_S), dtype=acc_t)
        v011 = tl.zeros((BLOCK_R, BLOCK_S), dtype=acc_t)
        v100 = tl.zeros((BLOCK_R, BLOCK_S), dtype=acc_t)
        v101 = tl.zeros((BLOCK_R, BLOCK_S), dtype=acc_t)
        v110 = tl.zeros((BLOCK_R, BLOCK_S), dtype=acc_t)
        v111 = tl.zeros((BLOCK_R, BLOCK_S), dtype=acc_t)
        for c in range(0, C):
            g = tl.load(g_ptr + (b * C + c) * R + r, mask=rmask, other=0.0).to(acc_t)[:, None]
            if GEO:
                p = vol_ptr + c * IJK + base
                v000 += g * tl.load(p, mask=m, other=0.0).to(acc_t)
                v001 += g * tl.load(p + sz, mask=m, other=0.0).to(acc_t)
                v010 += g * tl.load(p + sy, mask=m, other=0.0).to(acc_t)
                v011 += g * tl.load(p + sy + sz, mask=m, other=0.0).to(acc_t)
                v100 += g * tl.load(p + sx, mask=m, other=0.0).to(acc_t)
                v101 += g * tl.load(p + sx + sz, mask=m, other=0.0).to(acc_t)
                v110 += g * tl.load(p + sx + sy, mask=m, other=0.0).to(acc_t)
                v111 += g * tl.load(p + sx + sy + sz, mask=m, other=0.0).to(acc_t)
            if VOL:
                q = gV_ptr + c * IJK + base
                ty_ = gV_ptr.dtype.element_ty
                tl.atomic_add(q, (g * ux * uy * uz).to(ty_), mask=m)
                tl.atomic_add(q + sz, (g * ux * uy * wz).to(ty_), mask=m)
                tl.atomic_add(q + sy, (g * ux * wy * uz).to(ty_), mask=m)
                tl.atomic_add(q + sy + sz, (g * ux * wy * wz).to(ty_), mask=m)
                tl.atomic_add(q + sx, (g * wx * uy * uz).to(ty_), mask=m)
                tl.atomic_add(q + sx + sz, (g * wx * uy * wz).to(ty_), mask=m)
                tl.atomic_add(q + sx + sy, (g * wx * wy * uz).to(ty_), mask=m)
                tl.atomic_add(q + sx + sy + sz, (g * wx * wy * wz).to(ty_), mask=m)
        if GEO:
            gx = uy * uz * (v100 - v000) + uy * wz * (v101 - v001) + wy * uz * (v110 - v010) + wy * wz * (v111 - v011)
            gy = ux * uz * (v010 - v000) + ux * wz * (v011 - v001) + wx * uz * (v110 - v100) + wx * wz * (v111 - v101)
            gz = ux * uy * (v001 - v000) + ux * wy * (v011 - v010) + wx * uy * (v101 - v100) + wx * wy * (v111 - v110)
            gx = tl.where(m & inx, gx, 0.0)
            gy = tl.where(m & iny, gy, 0.0)
            gz = tl.where(m & inz, gz, 0.0)
            sumx += tl.sum(gx, axis=1)
            sumy += tl.sum(gy, axis=1)
            sumz += tl.sum(gz, axis=1)
            tx += tl.sum(gx * t[None, :], axis=1)
            ty += tl.sum(gy * t[None, :], axis=1)
            tz += tl.sum(gz * t[None, :], axis=1)
    if GEO:
        ot = gO_ptr.dtype.element_ty
        tl.store(gO_ptr + ray * 3 + 0, sumx.to(ot), mask=rmask)
        tl.store(gO_ptr + ray * 3 + 1, sumy.to(ot), mask=rmask)
        tl.store(gO_ptr + ray * 3 + 2, sumz.to(ot), mask=rmask)
        tl.store(gD_ptr + ray * 3 + 0, (s0 * sumx + sp * tx).to(ot), mask=rmask)
        tl.store(gD_ptr + ray * 3 + 1, (s0 * sumy + sp * ty).to(ot), mask=rmask)
        tl.store(gD_ptr + ray * 3 + 2, (s0 * sumz + sp * tz).to(ot), mask=rmask)
        tl.store(gA_ptr + ray, (sumx * dx + sumy * dy + sumz * dz).to(ot), mask=rmask)
        tl.store(gS_ptr + ray, (tx * dx + ty * dy + tz * dz).to(ot), mask=rmask)


def _launch_args(density, direction):
    """Scalar arguments; WIDE (64-bit offsets) when any flat index may pass 2³¹."""
    C, I, J, K = density.shape
    B, R, _ = direction.shape
    wide = FORCE_WIDE or max(density.numel() + J * K + K + 2, B * R * max(C, 3)) >= 2**31 - 1
    sx, sy, sz = (J * K if I > 1 else 0), (K if J > 1 else 0), (1 if K > 1 else 0)
    return (C, I, J, K, J * K, R), (float(I - 1), float(J - 1), float(K - 1), sx, sy, sz), wide


class _TrilinearSums(torch.autograd.Function):
    @staticmethod
    def forward(ctx, density, origin, direction, s_near, span, n_samples):
        ints, rest, wide = _launch_args(density, direction)
        C, R = ints[0], ints[-1]
        B = direction.shape[0]
        out = torch.empty((B, C, R), dtype=direction.dtype, device=direction.device)
        grid = (triton.cdiv(R, BLOCK_R), B)
        _tri_fwd_kernel[grid](
            density, origin, direction, s_near, span, out, *ints, n_samples, *rest,
            ACC_F64=direction.dtype == torch.float64, WIDE=wide, BLOCK_R=BLOCK_R, BLOCK_S=BLOCK_S,
        )
        ctx.save_for_backward(density, origin, direction, s_near, span)
        ctx.n_samples = n_samples
        return out

    @staticmethod
    def backward(ctx, grad):
        density, origin, direction, s_near, span = ctx.saved_tensors
        need_vol = ctx.needs_input_grad[0]
        geo = any(ctx.needs_input_grad[1:5])
        if not (geo or need_vol):
            return None, None, None, None, None, None
        ints, rest, wide = _launch_args(density, direction)
        B, R, _ = direction.shape
        grad = grad.contiguous().to(direction.dtype)
        kw = dict(dtype=direction.dtype, device=direction.device)
        gO = torch.empty((B, R, 3), **kw)
        gD = torch.empty((B, R, 3), **kw)
        gA = torch.empty((B, R), **kw)
        gS = torch.empty((B, R), **kw)
        # Volume gradients accumulate in float32 at least (atomics on half are lossy and slow).
        gV = torch.zeros(density.shape, dtype=torch.promote_types(density.dtype, torch.float32),
                         device=density.device) if need_vol else gO
        grid = (triton.cdiv(R, BLOCK_R), B)
        _tri_bwd_kernel[grid](
            density, origin, direction, s_near, span, grad, gO, gD, gA, gS, gV,
            *ints, ctx.n_samples, *rest,
            ACC_F64=direction.dtype == torch.float64, WIDE=wide, GEO=geo, VOL=need_vol,
            BLOCK_R=BLOCK_R, BLOCK_S=BLOCK_S,
        )
        n = ctx.needs_input_grad
        return (
            gV.to(density.dtype) if need_vol else None,
            gO.sum(1) if n[1] else None,
            gD if n[2] else None,
            gA if n[3] else None,
            gS if n[4] else None,
            None,
        )


def integrate_trilinear(density, origin, direction, length, n_samples: int):
    """Same contract and numbers as :func:`xraypose.render.trilinear.integrate_trilinear` (fixed N)."""
    C, I, J, K = density.shape
    dt = direction.dtype
    if dt not in (torch.float32, torch.float64):
        raise InputError(f"the triton backend computes geometry in float32 or float64, got {dt}")
    if density.dtype not in VOLUME_DTYPES:
        density = density.to(dt)
    density = density.contiguous()
    lo, hi = support_box((I, J, K), dt, direction.device)
    s_near, s_far = clip_to_box(origin, direction, lo, hi)
    span = (s_far - s_near).clamp_min(0.0)
    B = direction.shape[0]
    sums = _TrilinearSums.apply(density, origin.reshape(B, 3).contiguous(), direction.contiguous(),
                                s_near.contiguous(), span.contiguous(), int(n_samples))
    return sums * (span * length / n_samples).unsqueeze(1)
