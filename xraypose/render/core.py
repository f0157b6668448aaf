"""One entry point for every renderer and backend: :func:`render`."""

from __future__ import annotations

import functools

import numpy as np
import torch

from xraypose._checks import check_number
from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.render.rays import to_index_space, world_rays
from xraypose.render.siddon import integrate_siddon
from xraypose.render.trilinear import integrate_trilinear, n_samples_for_step, support_box
from xraypose.render.backends import resolve
from xraypose.render.rays import clip_to_box

RENDERERS = ("trilinear", "siddon")
BACKENDS = ("auto", "reference", "cpu", "triton")

# Rays are traced in chunks so that no intermediate holds more than about this
# many samples (trilinear) or plane crossings (Siddon).
_CHUNK_ELEMENTS = 1 << 23


def _check_pose(camera_to_world: torch.Tensor) -> torch.Tensor:
    if not isinstance(camera_to_world, torch.Tensor):
        camera_to_world = torch.as_tensor(camera_to_world, dtype=torch.float32)
    if camera_to_world.dim() == 2:
        camera_to_world = camera_to_world.unsqueeze(0)
    if camera_to_world.dim() != 3 or camera_to_world.shape[-2:] != (4, 4):
        raise InputError(f"pose must be (4, 4) or (B, 4, 4), got shape {tuple(camera_to_world.shape)}")
    if not torch.isfinite(camera_to_world).all():
        raise InputError("pose has NaN or infinite entries")
    if not camera_to_world.is_floating_point():
        raise InputError(f"pose must be a floating-point tensor, got {camera_to_world.dtype}")
    return camera_to_world


def check_rigid_pose(camera_to_world: torch.Tensor) -> None:
    """InputError unless the (B, 4, 4) poses are rigid transforms (:func:`~xraypose.geometry.rigid.check_rigid`,
    1e-3): a scaled, sheared or mirrored pose renders a DRR no C-arm takes, silently.  Run by the public entry
    points (:class:`~xraypose.render.DRR`, :func:`~xraypose.render_drr`), not by :func:`render` itself: the
    check costs about a 16-row render, and registration renders poses that are rigid by construction."""
    from xraypose.geometry.rigid import check_rigid

    try:
        check_rigid(camera_to_world, atol=1e-3)
    except InputError as e:
        raise InputError(f"pose: {e}") from None


def _render_fast(which, renderer, density, origin, direction, length, n_samples):
    """Fused backends: no tensor of samples or crossings, so no chunking."""
    if which == "cpu":
        from xraypose.render.backends import cpu

        if renderer == "trilinear":
            return cpu.integrate_trilinear(density, origin, direction, length, n_samples)
        return cpu.integrate_siddon(density, origin, direction, length)
    from xraypose.render.backends import triton_backend

    return triton_backend.integrate_trilinear(density, origin, direction, length, n_samples)


def default_step(affine: torch.Tensor) -> float:
    """Default ray-marching step: half the smallest voxel spacing, mm."""
    spacing = affine[:3, :3].double().norm(dim=0)
    return 0.5 * float(spacing.min())


def render(
    density: torch.Tensor,
    affine: torch.Tensor,
    camera: Camera,
    camera_to_world: torch.Tensor,
    uv: torch.Tensor | None = None,
    renderer: str = "trilinear",
    n_samples: int | None = None,
    step: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Render line integrals ∫ μ dl (mm) through a volume.

    Args:
        density: (I, J, K) or (C, I, J, K) attenuation per mm (C channels are
            rendered along the same rays).
        affine: (4, 4) voxel index → world (RAS mm), finite and invertible (a tensor or a NumPy array).
        camera: detector intrinsics.
        camera_to_world: (4, 4) or (B, 4, 4) poses; their dtype (float32 or
            float64) is the computation's dtype.  Gradients flow to it.  Taken as
            rigid, not checked here (:func:`check_rigid_pose`; DRR checks a given pose).
        uv: None for the whole detector, else (R, 2) or (B, R, 2) pixel
            coordinates (u, v) of the only rays to trace (sparse rendering).
        renderer: "trilinear" (ray marching) or "siddon" (exact, piecewise constant voxels).
        n_samples: trilinear samples per ray; else ``step`` (mm, default half
            the smallest voxel spacing) bounds the step along every ray: each pose's rays take
            as many samples as its own longest chord needs (a DRR does not depend on the poses
            rendered beside it).
        backend: "reference" (plain PyTorch, any device, float64 capable: the
            ground truth), "cpu" (fused C++ kernel for CPU tensors), "triton"
            (fused GPU kernel for CUDA tensors; half-precision volumes allowed),
            or "auto": the fastest that applies.  A fast backend that cannot
            load falls back to the reference with one warning; see
            :mod:`xraypose.render.backends`.
    Returns:
        (B, C, H, W) when ``uv`` is None, else (B, C, R); C is dropped from
        neither (a 3D ``density`` gives C = 1).
    """
    density, affine, camera_to_world, n_samples, step = _checked_inputs(density, affine, camera_to_world, renderer,
                                                                        backend, n_samples, step)
    dt, dev = camera_to_world.dtype, camera_to_world.device
    full = uv is None
    B = camera_to_world.shape[0]
    if _per_pose(renderer, n_samples, B):
        return torch.cat([render(density, affine, camera, camera_to_world[b:b + 1], _pose_uv(uv, b), renderer,
                                 None, step, backend) for b in range(B)])
    uv = _pixel_list(camera, uv, B, dt, dev)

    which = resolve(backend, renderer, dev)
    if which == "cpu" and renderer == "trilinear" and dt == torch.float32 and not density.requires_grad:
        from xraypose.render.backends import cpu

        if cpu.fits_fast_path(density):  # rays, clipping and sampling in one kernel
            img = cpu.render_trilinear_fused(density, affine, camera, camera_to_world, uv, n_samples,
                                             step or default_step(affine))
            return img.reshape(B, density.shape[0], camera.height, camera.width) if full else img
    img = _integrate(which, renderer, density, affine, camera, camera_to_world, uv, n_samples, step)
    if full:
        img = img.reshape(B, density.shape[0], camera.height, camera.width)
    return img


def render_with_tangents(
    density: torch.Tensor,
    affine: torch.Tensor,
    camera: Camera,
    camera_to_world: torch.Tensor,
    tangents: torch.Tensor,
    uv: torch.Tensor | None = None,
    n_samples: int | None = None,
    step: float | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """DRRs and their directional derivatives along given pose tangents (a forward-mode Jacobian).

    Registration's Gauss–Newton curvature needs the image's derivative along the six directions
    of a pose chart; this gives all of them from one pass of the fused CPU kernel (its per-ray pose
    derivatives, which the kernel's backward otherwise sums), instead of six extra renders.

    Args:
        density, affine, camera, camera_to_world, uv, n_samples, step, backend: as :func:`render`
            (trilinear only; no gradient flows).
        tangents: (B, K, 4, 4) directions in the space of 4×4 poses, e.g. ``d/dε pose(ε)`` at
            ε = 0 for a curve of poses through ``camera_to_world``.
    Returns:
        ``(img, dimg)``: img (B, C, H, W) as :func:`render`; dimg (B, K, C, H, W), with
        ``dimg[:, k] = Σ_ij ∂img/∂pose_ij · tangents[:, k, i, j]`` (per mm of line integral per
        unit of the tangent's parameter).  (B, C, R) and (B, K, C, R) with ``uv``.  Analytic on the
        fused CPU path (float32 poses); elsewhere central differences of :func:`render`.
    """
    density, affine, camera_to_world, n_samples, step = _checked_inputs(density, affine, camera_to_world, "trilinear",
                                                                        backend, n_samples, step)
    B = camera_to_world.shape[0]
    tangents = torch.as_tensor(tangents, dtype=camera_to_world.dtype)
    if tangents.dim() != 4 or tangents.shape[0] != B or tangents.shape[-2:] != (4, 4):
        raise InputError(f"tangents must be (B, K, 4, 4) with B = {B} poses, got shape {tuple(tangents.shape)}")
    K, C = tangents.shape[1], density.shape[0]
    if _per_pose("trilinear", n_samples, B):
        parts = [render_with_tangents(density, affine, camera, camera_to_world[b:b + 1], tangents[b:b + 1],
                                      _pose_uv(uv, b), None, step, backend) for b in range(B)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    full = uv is None
    out_shape = (B, C, camera.height, camera.width) if full else None
    dt, dev = camera_to_world.dtype, camera_to_world.device
    with torch.no_grad():
        if dt == torch.float32 and analytic_tangents(density, backend):
            from xraypose.render.backends import cpu

            pix = _pixel_list(camera, uv, B, dt, dev)
            img, dimg = cpu.render_trilinear_fused_tangents(density, affine, camera, camera_to_world, pix,
                                                            n_samples, step or default_step(affine), tangents)
            if full:
                return img.reshape(out_shape), dimg.reshape(B, K, *out_shape[1:])
            return img, dimg
        img = render(density, affine, camera, camera_to_world, uv, "trilinear", n_samples, step, backend)
        # central differences; steps that move rotation entries by 1e-4 and translations by 1e-2 mm
        rot = tangents[..., :3, :3].abs().flatten(-2).amax(-1)
        tra = tangents[..., :3, 3].abs().amax(-1)
        eps = torch.minimum(1e-4 / rot.clamp_min(1e-12), 1e-2 / tra.clamp_min(1e-12))  # (B, K)
        eps = torch.where(torch.isfinite(eps), eps, torch.ones_like(eps))
        T = camera_to_world[:, None] + eps[..., None, None] * tangents  # (B, K, 4, 4)
        Tm = camera_to_world[:, None] - eps[..., None, None] * tangents
        rep = lambda x: x if uv is None or uv.dim() == 2 else x.repeat_interleave(K, 0)  # noqa: E731
        plus = render(density, affine, camera, T.reshape(B * K, 4, 4), rep(uv), "trilinear", n_samples, step, backend)
        minus = render(density, affine, camera, Tm.reshape(B * K, 4, 4), rep(uv), "trilinear", n_samples, step,
                       backend)
        d = (plus - minus).reshape(B, K, *img.shape[1:]) / (2 * eps.reshape(B, K, *([1] * (img.dim() - 1))))
    return img, d.to(img.dtype)


def analytic_tangents(density: torch.Tensor, backend: str = "auto") -> bool:
    """Whether :func:`render_with_tangents` differentiates ``density`` (C, I, J, K) analytically (the fused CPU
    kernel; float32 poses) rather than by central differences of :func:`render` (a steadier derivative for
    steps of a fraction of a pixel: the differences of float32 renders are not).  The one test both make."""
    from xraypose.render.backends import cpu

    return resolve(backend, "trilinear", density.device) == "cpu" and cpu.fits_fast_path(density)


def _per_pose(renderer: str, n_samples, B: int) -> bool:
    """Whether a batch is rendered pose by pose: trilinear sampling by a step (``n_samples`` None) takes its
    number of samples from the longest chord, and a batch's longest chord would set it for every pose in the
    batch — a DRR would then depend on the poses rendered beside it (a registration's starts, a batch of
    X-rays).  Pose by pose, each DRR is the one it is alone."""
    return renderer == "trilinear" and n_samples is None and B > 1


def _pose_uv(uv, b: int):
    """Pose ``b``'s pixel list: ``uv`` shared by every pose ((R, 2) or None), or its own row of (B, R, 2)."""
    return uv if uv is None or uv.dim() == 2 else uv[b:b + 1]


def _checked_inputs(density, affine, camera_to_world, renderer: str, backend: str, n_samples, step):
    """``(density (C, I, J, K), affine (4, 4) tensor, camera_to_world (B, 4, 4), n_samples, step)`` after the
    checks of :func:`render` (InputError)."""
    if renderer not in RENDERERS:
        raise InputError(f"unknown renderer {renderer!r}; choose one of: {', '.join(RENDERERS)}")
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if not isinstance(density, torch.Tensor):
        raise InputError(f"density must be a torch.Tensor, got {type(density).__name__}")
    if density.is_complex() or density.dtype == torch.bool:
        raise InputError(f"density must hold real numbers, got {density.dtype}")
    if density.dim() == 3:
        density = density.unsqueeze(0)
    if density.dim() != 4:
        raise InputError(f"density must be (I, J, K) or (C, I, J, K), got shape {tuple(density.shape)}")
    if min(density.shape) < 1:
        raise InputError(f"density has a zero-size dimension: {tuple(density.shape)}")
    affine = _checked_affine(affine)
    camera_to_world = _check_pose(camera_to_world)
    dev = camera_to_world.device
    if density.device != dev:
        raise InputError(f"volume is on {density.device} but the pose is on {dev}; move one of them")
    n_samples, step = checked_sampling(n_samples, step)
    return density, affine, camera_to_world, n_samples, step


def checked_sampling(n_samples, step) -> tuple[int | None, float | None]:
    """``(n_samples, step)`` of :func:`render` as an int and a float (each or None), or :class:`InputError`
    naming the one that is no whole number >= 1 / no finite number > 0 (mm) — a text '32' among them."""
    check_number("n_samples", n_samples, lo=1, integer=True, allow_none=True, prefix="")
    check_number("step", step, lo=0, lo_open=True, allow_none=True, prefix="")
    return (None if n_samples is None else int(n_samples)), (None if step is None else float(step))


def _checked_affine(affine) -> torch.Tensor:
    """``affine`` as a (4, 4) tensor (a NumPy array or nested lists converted to float64), or :class:`InputError`
    for any other shape.  A CPU affine must also be finite and invertible, with last row [0, 0, 0, 1]
    (:func:`xraypose.volume._check_affine`, any voxel size allowed), checked once per tensor and in-place
    version; an affine on an accelerator is not read back (that would wait for its queue on every render)."""
    if not isinstance(affine, torch.Tensor):
        try:
            affine = torch.from_numpy(np.asarray(affine, dtype=np.float64))
        except (TypeError, ValueError):
            raise InputError(f"affine must be a (4, 4) voxel-index → world matrix (a tensor or an array), got "
                             f"{type(affine).__name__}") from None
    if tuple(affine.shape) != (4, 4):
        raise InputError(f"affine must be a (4, 4) voxel-index → world matrix, got shape {tuple(affine.shape)}")
    if affine.device.type != "cpu":
        return affine
    try:
        version = affine._version
    except RuntimeError:  # an inference-mode tensor keeps no version counter: checked every time
        version = None
    if version is None or getattr(affine, "_xrp_affine_ok", None) != version:
        from xraypose.volume import _check_affine

        _check_affine(affine.detach().double().numpy(), "render", plausible_spacing=False)
        if version is not None:
            try:
                affine._xrp_affine_ok = version
            except (AttributeError, RuntimeError):  # pragma: no cover - tensors normally take attributes
                pass
    return affine


@functools.lru_cache(maxsize=32)
def _detector_grid(height: int, width: int, dt, dev: str) -> torch.Tensor:
    """Every pixel centre (H·W, 2) of a detector size, built once per size, dtype and device: a
    registration renders the same few sizes hundreds of times.  Shared: read, never written."""
    from xraypose.camera import pixel_grid

    return pixel_grid(height, width, dtype=dt, device=dev)


def _pixel_list(camera: Camera, uv, B: int, dt, dev) -> torch.Tensor:
    """``(B, R, 2)`` pixel coordinates (u, v) in ``dt``: every detector pixel when ``uv`` is None, else ``uv``
    ((R, 2), shared by the poses, or (B, R, 2)), checked."""
    if uv is None:
        uv = _detector_grid(camera.height, camera.width, dt, str(dev))
    uv = uv.to(dt)
    if uv.dim() == 2:
        uv = uv.unsqueeze(0).expand(B, -1, -1)
    if uv.dim() != 3 or uv.shape[-1] != 2 or uv.shape[0] != B:
        raise InputError(f"pixel list must be (R, 2) or (B, R, 2) with B = {B}, got {tuple(uv.shape)}")
    return uv


def _integrate(which: str, renderer: str, density, affine, camera: Camera, camera_to_world, uv, n_samples,
               step) -> torch.Tensor:
    """``(B, C, R)`` line integrals along the rays through ``uv`` (B, R, 2): by the fused backend ``which``, or
    by the reference in chunks of at most :data:`_CHUNK_ELEMENTS` samples (trilinear) or crossings (Siddon)."""
    dt, dev = camera_to_world.dtype, camera_to_world.device
    # inv_ex: no error check, so no wait for the device (the affine was checked when the volume was made)
    world_to_index = torch.linalg.inv_ex(affine.double()).inverse.to(device=dev)
    source, target = world_rays(camera, camera_to_world, uv)
    origin, direction, length = to_index_space(world_to_index, source, target)
    B, R = direction.shape[0], direction.shape[1]
    if renderer == "trilinear":
        if n_samples is None:
            lo, hi = support_box(density.shape[1:], dt, dev)
            with torch.no_grad():
                s_near, s_far = clip_to_box(origin, direction, lo, hi)
            n_samples = n_samples_for_step(s_near, s_far, length.detach(), step or default_step(affine))
        per_ray = n_samples
    else:
        per_ray = sum(density.shape[1:]) + 5
    if which != "reference":
        return _render_fast(which, renderer, density, origin, direction, length, n_samples)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, B * per_ray))
    outs = []
    for r0 in range(0, R, chunk):
        d = direction[:, r0 : r0 + chunk]
        L = length[:, r0 : r0 + chunk]
        if renderer == "trilinear":
            outs.append(integrate_trilinear(density, origin, d, L, n_samples=n_samples))
        else:
            outs.append(integrate_siddon(density, origin, d, L))
    return torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
