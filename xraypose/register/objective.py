"""One level's objective: what a pose's DRR is compared with, and how.

:class:`LevelObjective` holds, for one resolution level, the X-rays resampled to that level,
the CT averaged to the level's voxel size, the ray-marching step, the DRR blur, the sparse
patches (if any) and the similarity measure; :meth:`LevelObjective.residual` takes poses to
the measure's residual (``score = 1 − ½‖r‖²``, :mod:`xraypose.register.measures`).

Per evaluation, each DRR is fitted to its X-ray in closed form where the level asks for it
(``fit_bone``): the bone multiplier ``m`` maximising the correlation of ``L_soft + m·L_bone``
with the X-ray (least squares of the X-ray on the two rendered channels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xraypose._kernels import gaussian_kernel1d, three_sigma_radius
from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.preprocess import resize as resize_image
from xraypose.register.config import Level, RegistrationConfig
from xraypose.register.measures import OFF_PIXEL, constant_rows
from xraypose.register.measures import residual as measure_residual
from xraypose.register.scatter import scatter_drr
from xraypose.render import render, render_with_tangents
from xraypose.render.sparse import patch_pixels

__all__ = ["LevelObjective", "ViewSet", "level_channels", "fit_bone", "fit_channels", "fit_intensity_blur", "blur_coefficient", "squared_gradient", "robust_weights", "with_fitted_terms", "weighted_affine_fit", "gaussian_kernel", "separable_blur"]

F64 = torch.float64


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """1-D normalised Gaussian of σ pixels, radius ⌈3σ⌉ (≥ 1), float32 (:mod:`xraypose._kernels`)."""
    return gaussian_kernel1d(sigma, three_sigma_radius(sigma), torch.float32)


def separable_blur(x: torch.Tensor, k: torch.Tensor, same: bool) -> torch.Tensor:
    """Separable blur of (N, C, H, W); ``same``: replicate-padded, else 'valid' (shrinks by 2r)."""
    N, C, H, W = x.shape
    r = (k.numel() - 1) // 2
    y = x.reshape(N * C, 1, H, W)
    if same:
        y = F.pad(y, (r, r, r, r), mode="replicate")
    k = k.to(y.dtype)
    y = F.conv2d(F.conv2d(y, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    return y.reshape(N, C, y.shape[-2], y.shape[-1])


def fit_bone(L: torch.Tensor, y: torch.Tensor, base: float, lo: float = 0.2, hi: float = 5.0) -> torch.Tensor:
    """Per element, the m maximising corr(L0 + m·L1, y): least squares of y on (L0, L1), m = w1/w0.

    L: (n, 2, R), y: (n, R) (detached).  The total multiplier ``base + m`` is kept in [lo, hi].
    Returns (n,) float64.
    """
    L = L.detach().to(F64)
    y = y.detach().to(F64)
    return _second_over_first(L[:, 0], L[:, 1], y).clamp(lo - base, hi - base)


def _second_over_first(a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None,
                       with_error: bool = False):
    """Least squares of ``y`` on ``(a, b)`` and a constant, per row of (n, R) float64 (weighted by
    ``w`` (n, R) >= 0 when given): ``w1 / w0``, the weight of ``b`` in units of ``a``'s (0 where the
    fit is singular or ``w0 <= 0``); ``with_error``: and its standard error (inf there), from the
    fit's residual as if the pixels' noise were independent."""
    if w is None:
        a = a - a.mean(-1, keepdim=True)
        b = b - b.mean(-1, keepdim=True)
        yc = y - y.mean(-1, keepdim=True)
        aa, ab, bb = (a * a).sum(-1), (a * b).sum(-1), (b * b).sum(-1)
        ay, by = (a * yc).sum(-1), (b * yc).sum(-1)
    else:
        sw = w.sum(-1, keepdim=True).clamp_min(1e-12)
        a = a - (w * a).sum(-1, keepdim=True) / sw
        b = b - (w * b).sum(-1, keepdim=True) / sw
        yc = y - (w * y).sum(-1, keepdim=True) / sw
        aa, ab, bb = (w * a * a).sum(-1), (w * a * b).sum(-1), (w * b * b).sum(-1)
        ay, by = (w * a * yc).sum(-1), (w * b * yc).sum(-1)
    det = aa * bb - ab * ab
    ok = det > 1e-12 * (aa * bb).clamp_min(1e-30)
    w0 = torch.where(ok, (bb * ay - ab * by) / det.clamp_min(1e-30), torch.ones_like(det))
    w1 = torch.where(ok, (aa * by - ab * ay) / det.clamp_min(1e-30), torch.zeros_like(det))
    ratio = torch.where(w0 > 0, w1 / w0.clamp_min(1e-30), torch.zeros_like(w0))
    if not with_error:
        return ratio
    r = yc - w0[:, None] * a - w1[:, None] * b
    ww = torch.ones_like(r) if w is None else w
    s2 = (ww * r * r).sum(-1) / (ww.sum(-1) - 3).clamp_min(1.0)
    d = det.clamp_min(1e-30)  # cov(w0, w1) = s2 · [[bb, −ab], [−ab, aa]] / det
    var = s2 * (aa + 2 * ratio * ab + ratio ** 2 * bb) / d / w0.clamp_min(1e-30) ** 2
    good = ok & (w0 > 0)
    return ratio, torch.where(good, var.sqrt(), torch.full_like(var, float("inf")))


def fit_channels(L: torch.Tensor, y: torch.Tensor, base: float, kinds, lo: float = 0.2,
                 hi: float = 5.0, w: torch.Tensor | None = None) -> torch.Tensor:
    """Per element, the coefficients ``c`` making ``L0 + Σ_k c_k·L_k`` correlate best with ``y``:
    least squares of y on all channels (and a constant), divided by L0's weight.

    L: (n, C, R) channels, y: (n, R); ``kinds`` (C − 1): per extra channel "bone" (the total
    multiplier ``base + c`` kept in [lo, hi]), "free" (any sign) or "positive" (>= 0: an
    attenuating material, e.g. the CT box's air in a renderer that gives air a density).
    ``w``: optional (n, R) pixel weights (weighted least squares).
    Returns (n, C − 1) float64, detached.
    """
    L = L.detach().to(F64)
    y = y.detach().to(F64)
    n, C, _ = L.shape
    if w is None:
        w = torch.ones_like(y)
    w = w.detach().to(F64).reshape(n, 1, -1)
    sw = w.sum(-1).clamp_min(1e-30)  # (n, 1)
    Lc = L - (w * L).sum(-1, keepdim=True) / sw[..., None]
    yc = y - (w[:, 0] * y).sum(-1, keepdim=True) / sw
    scale = (w * Lc.pow(2)).sum(-1).div(sw).sqrt().clamp_min(1e-30)  # (n, C): conditioning
    Z = Lc / scale[..., None]
    Zw = Z * w
    A = Zw @ Z.transpose(1, 2) / sw[..., None] + 1e-9 * torch.eye(C, dtype=F64)
    b = (Zw @ yc[..., None])[..., 0] / sw
    w = torch.linalg.solve(A, b) / scale  # (n, C)
    ok = torch.isfinite(w).all(-1) & (w[:, 0] > 0)
    coef = torch.where(ok[:, None], w[:, 1:] / w[:, :1].clamp_min(1e-30), torch.zeros_like(w[:, 1:]))
    for k, kind in enumerate(kinds):
        if kind == "bone":
            coef[:, k] = coef[:, k].clamp(lo - base, hi - base)
        elif kind == "positive":
            coef[:, k] = coef[:, k].clamp_min(0.0)
    return coef


def fit_intensity_blur(drr: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """The DRR corrected for blur that happened to intensities, not to line integrals.

    A detector (focal spot, pixel area, scatter) and the usual preprocessing (a Gaussian blur
    before the log) blur the *intensities* ``exp(−L)``; the log of a blurred intensity is, to
    second order in the blur σ, ``G∗L − (σ²/2)·|∇L|²``: high-contrast edges shift toward their
    bright side, which a DRR blurred as line integrals does not reproduce (the optimum moves,
    mostly in depth).  The coefficient of ``|∇D|²`` is fitted per DRR in closed form (least
    squares of the X-ray on ``[D, |∇D|²]``, detached), like the bone multiplier.

    drr, tgt: (n, 1, h, w).  Returns (n, 1, h, w), gradients flowing through ``drr``.
    """
    g2 = squared_gradient(drr)
    c = blur_coefficient(drr, tgt, g2)
    return drr + c.to(drr.dtype).reshape(-1, 1, 1, 1) * g2


def squared_gradient(drr: torch.Tensor) -> torch.Tensor:
    """``|∇D|²`` (pixels⁻²) of (n, 1, h, w) images by central differences (0 on the border rows
    and columns where a difference is missing), gradients flowing."""
    gx = torch.zeros_like(drr)
    gy = torch.zeros_like(drr)
    gx[..., :, 1:-1] = 0.5 * (drr[..., :, 2:] - drr[..., :, :-2])
    gy[..., 1:-1, :] = 0.5 * (drr[..., 2:, :] - drr[..., :-2, :])
    return gx * gx + gy * gy


def blur_coefficient(drr: torch.Tensor, tgt: torch.Tensor, g2: torch.Tensor | None = None,
                     w: torch.Tensor | None = None, with_error: bool = False):
    """(n,) float64 the coefficient ``c <= 0`` of ``|∇D|²`` that best explains the X-rays ``tgt``
    (least squares of the X-ray on ``[D, |∇D|²]`` and a constant, weighted by the pixel weights
    ``w`` of the images' shape when given; detached), in the DRR's units per pixel² of these images
    (:func:`fit_intensity_blur`).  ``with_error``: also (n,) its standard error, from the fit's
    residual as if the pixels' noise were independent (a preprocessed X-ray's is not: on low-dose
    pelvis frames the coefficients' spread over noise draws was 2–3× this)."""
    g2 = squared_gradient(drr) if g2 is None else g2
    n = drr.shape[0]
    a = drr.detach().reshape(n, -1).to(F64)
    b = g2.detach().reshape(n, -1).to(F64)
    y = tgt.detach().reshape(n, -1).to(F64)
    wf = None if w is None else w.detach().reshape(n, -1).to(F64)
    if not with_error:
        return _second_over_first(a, b, y, wf).clamp_max(0.0)  # edges shift, never sharpen
    c, se = _second_over_first(a, b, y, wf, with_error=True)
    return c.clamp_max(0.0), se


def weighted_affine_fit(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted least squares of ``y`` on ``x`` and a constant, per row of (n, R) float64 with weights
    ``w`` (n, R) >= 0: the fitted values ``my + a·(x − mx)`` (n, R)."""
    sw = w.sum(-1, keepdim=True).clamp_min(1e-12)
    mx, my = (w * x).sum(-1, keepdim=True) / sw, (w * y).sum(-1, keepdim=True) / sw
    a = (w * (x - mx) * (y - my)).sum(-1, keepdim=True) / (w * (x - mx) ** 2).sum(-1, keepdim=True).clamp_min(1e-30)
    return my + a * (x - mx)


def with_fitted_terms(drr: torch.Tensor, terms: list, tgt: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """``drr`` (n, ...) plus ``terms`` (each like ``drr``) weighted by their least-squares coefficients
    in units of ``drr``'s (:func:`fit_channels`, any sign, detached) against ``tgt`` (n, ...) with pixel
    weights ``w``: a DRR's closed-form extra terms (a display curve's square, unsharp masking's blurs)."""
    n = drr.shape[0]
    stack = torch.stack([drr.reshape(n, -1)] + [t.reshape(n, -1) for t in terms], 1)
    c = fit_channels(stack, tgt.reshape(n, -1), 0.0, ["free"] * len(terms), w=None if w is None else w.reshape(n, -1))
    shape = (-1,) + (1,) * (drr.dim() - 1)
    return drr + sum(c[:, k].to(drr.dtype).reshape(shape) * t for k, t in enumerate(terms))


def robust_weights(drr: torch.Tensor, tgt: torch.Tensor, c: float = 4.685, iterations: int = 3,
                   prior: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel weights that leave out what the CT cannot explain (implants, tools, saturation).

    The X-ray is fitted as an affine function of the DRR by iteratively reweighted least squares
    with Tukey's biweight (``c`` robust standard deviations, the scale from the median absolute
    deviation of the residuals); pixels the fit cannot explain get weight 0.  Detached: the
    weights are constants of each evaluation.

    drr, tgt: (n, ...) of one shape; ``prior``: optional weights of that shape (a pixel mask: the
    fit and the result leave out what it leaves out).  Returns weights of that shape in [0, 1].
    """
    n = drr.shape[0]
    x = drr.detach().reshape(n, -1).to(F64)
    y = tgt.detach().reshape(n, -1).to(F64)
    p = torch.ones_like(x) if prior is None else prior.detach().reshape(n, -1).to(F64)
    w = p.clone()
    for _ in range(iterations):
        e = y - weighted_affine_fit(x, y, w)
        if prior is None:
            med = e.median(-1, keepdim=True).values
            s = 1.4826 * (e - med).abs().median(-1, keepdim=True).values
        else:  # medians over the pixels the mask keeps
            em = torch.where(p > 0.5, e, torch.full_like(e, float("nan")))
            med = em.nanmedian(-1, keepdim=True).values
            s = 1.4826 * (em - med).abs().nanmedian(-1, keepdim=True).values
        s = torch.maximum(s, 1e-6 * y.std(-1, keepdim=True).clamp_min(1e-12))
        u = (e - med) / (c * s)
        w = p * torch.where(u.abs() < 1, (1 - u * u) ** 2, torch.zeros_like(u))
    return w.reshape(drr.shape).to(drr.dtype)


def _patch_weights(img: torch.Tensor, half: int) -> torch.Tensor:
    """(B, H, W) sampling weights: smoothed gradient magnitude + a floor, zero within ``half`` of the edges."""
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=img.dtype)
    w = torch.stack([k, k.T]).unsqueeze(1)
    g = F.conv2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), w).pow(2).sum(1, keepdim=True).sqrt()
    g = F.avg_pool2d(F.pad(g, (2, 2, 2, 2), mode="replicate"), 5, stride=1)[:, 0]
    g = g / g.mean(dim=(-1, -2), keepdim=True).clamp_min(1e-12)
    g = g + 0.1
    valid = torch.zeros_like(g, dtype=torch.bool)
    H, W = g.shape[-2:]
    valid[:, half:H - half, half:W - half] = True
    return torch.where(valid, g, torch.zeros_like(g))


def level_channels(level: Level) -> tuple:
    """Which channels of the registration basis (:func:`~xraypose.render.density.registration_basis`)
    a level renders: the density, then the bone part (``fit_bone``), then tissue (``fit_tissue``)."""
    return (0,) + ((1,) if level.fit_bone else ()) + ((2,) if level.fit_tissue else ())


class LevelObjective:
    """The objective of one level for B X-rays.

    Args:
        level, config: the level and the registration's configuration.
        density, affine: (C, I, J, K) the channels :func:`level_channels` of the CT's registration
            basis averaged for this level, and its voxel → world affine.
        images: (B, 1, H, W) float32 preprocessed X-rays; camera: their intrinsics.
        generator: draws the sparse patches (once per level and X-ray).
        masks: optional (B, 1, H, W) pixel weights in [0, 1] of the X-rays (area-averaged to
            this level): they weigh the similarity and the closed-form intensity fits.

    Attributes:
        camera: (h × w) intrinsics of this level; target: (B, 1, h, w) the X-rays at this level.
        measure: the similarity's name.
    """

    def __init__(self, level: Level, config: RegistrationConfig, density: torch.Tensor, affine: torch.Tensor,
                 images: torch.Tensor, camera: Camera, generator: torch.Generator, masks: torch.Tensor | None = None):
        self.level, self.config = level, config
        h = min(level.size, camera.height)
        w = max(4, min(camera.width, int(round(camera.width * h / camera.height))))
        self.height, self.width = h, w
        self.camera = camera.resize(h, w)
        self.px2 = (h / camera.height) ** 2  # (this level's pixels per X-ray pixel)²: a pixel² unit's scale
        self.target = self.resized(images, camera, h, w)
        self.mask, self._off = None, None
        if masks is not None:
            self.mask = F.adaptive_avg_pool2d(masks.to(torch.float32), (h, w)) if (h, w) != tuple(
                masks.shape[-2:]) else masks.to(torch.float32)
            self.mask = torch.where(self.mask > 0.99, torch.ones_like(self.mask), self.mask)
        want = level_channels(level)
        if density.shape[0] != len(want):  # the whole basis given: take this level's channels
            density = density[list(want)].contiguous()
        self.density = density
        self.affine = affine
        self.n_samples = level.n_samples
        step = level.step_mm
        if level.n_samples is None and step is None:
            step = max(float(level.volume_mm or 0.0), float(affine[:3, :3].norm(dim=0).min()))
        self.step = None if level.n_samples else step
        self.measure = config.level_similarity(level)
        self.kernel, self.r = None, 0
        if config.drr_blur:
            sigma = float(config.drr_blur) * h / camera.height
            if sigma >= 0.2:
                self.kernel = gaussian_kernel(sigma)
                self.r = (self.kernel.numel() - 1) // 2
        # the X-ray's intensity-domain blur, held fixed: c per X-ray pixel² -> per pixel² of this level
        self.blur_c = None if config.blur_coefficient is None else float(config.blur_coefficient) * self.px2
        # a display's unsharp masking: blurred copies of the fitted DRR (σ per level pixel, ≥ 0.3)
        self.unsharp = [gaussian_kernel(max(0.3, float(mm) / self.camera.delx)) for mm in level.fit_unsharp]
        # scatter widths, σ per level pixel
        self.scatter = [float(mm) / self.camera.delx for mm in level.fit_scatter]
        self.uv = None
        if level.patches is not None:
            S = min(level.patch_size, h, w)
            S -= (S + 1) % 2  # odd
            half = S // 2
            P = min(level.patches, max(1, (h - 2 * half) * (w - 2 * half)))
            wts = _patch_weights(self.target, half).reshape(self.target.shape[0], -1)
            cidx = torch.multinomial(wts, P, replacement=False, generator=generator)  # (B, P)
            centres = torch.stack([cidx % w, cidx // w], dim=-1).to(F64)  # (u, v)
            flat = (patch_pixels(centres, S)[..., 1] * w + patch_pixels(centres, S)[..., 0]).long()
            self.target_sparse = torch.gather(self.target.reshape(self.target.shape[0], -1), 1, flat)
            self.target_sparse = self.target_sparse.reshape(-1, P, S, S)
            if self.mask is not None:
                self.mask_sparse = torch.gather(self.mask.reshape(self.mask.shape[0], -1), 1, flat).reshape(-1, P, S, S)
            self.uv = patch_pixels(centres, S + 2 * self.r).to(torch.float32)  # a halo when the DRR is blurred
            self.uv_core = patch_pixels(centres, S)
            self.P, self.S = P, S

    def _off_mask(self, rows: torch.Tensor) -> torch.Tensor | None:
        """(n, N) of X-rays ``rows``: 0 on the pixels their mask weighs, :data:`OFF_PIXEL` elsewhere
        (:func:`~xraypose.register.measures.constant_rows`'s penalty; made once), or None without a mask."""
        if self.mask is None:
            return None
        if self._off is None:
            m = self.mask if self.uv is None else self.mask_sparse
            self._off = (m <= 0).reshape(m.shape[0], -1).to(torch.float32) * OFF_PIXEL
        return self._off[rows]

    @staticmethod
    def resized(images: torch.Tensor, camera: Camera, h: int, w: int) -> torch.Tensor:
        """(B, 1, h, w) X-rays ``images`` (B, 1, H, W) on ``camera`` resampled to a level's h × w pixels
        (a level's ``target`` before any intensity map)."""
        return torch.stack([resize_image(img[0], camera, h, w)[0] for img in images])[:, None]

    @property
    def channels(self) -> int:
        return int(self.density.shape[0])

    def box_chord(self, poses: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(n, R) length (mm) of each rendered ray inside the CT's box (its voxels' outer faces),
        at this level's pixels (the sparse patches' own pixels at a patch level)."""
        from xraypose.render.rays import clip_to_box, to_index_space, world_rays

        if self.uv is None:
            v, u = torch.meshgrid(torch.arange(self.height), torch.arange(self.width), indexing="ij")
            uv = torch.stack([u.reshape(-1), v.reshape(-1)], -1).to(poses.dtype)
        else:
            uv = self.uv_core[rows].to(poses.dtype)
        src, tgt = world_rays(self.camera, poses, uv)
        o, d, length = to_index_space(torch.linalg.inv(self.affine).to(poses.dtype), src, tgt)
        shape = torch.tensor(self.density.shape[-3:], dtype=poses.dtype)
        s0, s1 = clip_to_box(o, d, torch.full((3,), -0.5, dtype=poses.dtype), shape - 0.5)
        return (s1 - s0).clamp_min(0.0) * length

    def pixel_mm(self, poses: torch.Tensor, isocenter: torch.Tensor) -> torch.Tensor:
        """(n,) size (mm) of one of this level's pixels at the isocenter's depth, for poses (n, 4, 4)."""
        z = self.camera.depth(isocenter[None].to(poses.dtype), poses)[:, 0]
        return min(self.camera.delx, self.camera.dely) * z / self.camera.sdd

    def render(self, poses: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(n, C, h, w) — or (n, C, P, S, S) at a sparse level — blurred DRR channels of ``poses``
        (n, 4, 4) compared with X-rays ``rows`` (n,)."""
        kw = dict(n_samples=self.n_samples, step=self.step, backend="auto")
        T = poses.to(torch.float32)
        uv = None if self.uv is None else self.uv[rows]
        return self._finish_drr(render(self.density, self.affine, self.camera, T, uv=uv, **kw))

    def _finish_drr(self, drr: torch.Tensor) -> torch.Tensor:
        """A rendered stack (n, C, h, w), or (n, C, R) at a sparse level, blurred (and cut into its
        (n, C, P, S, S) patches at a sparse level)."""
        if self.uv is None:
            return separable_blur(drr, self.kernel, same=True) if self.kernel is not None else drr
        n, C = drr.shape[:2]
        Sh, P, S = self.S + 2 * self.r, self.P, self.S
        q = drr.reshape(n, C, P, Sh, Sh)
        if self.kernel is not None:
            q = q.transpose(1, 2).reshape(n * P, C, Sh, Sh)
            q = separable_blur(q, self.kernel, same=False).reshape(n, P, C, S, S).transpose(1, 2)
        return q

    def render_along(self, poses: torch.Tensor, rows: torch.Tensor, tangents: torch.Tensor,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(n·(K + 1), C, h, w) blurred DRR channels as :meth:`render` gives them, at ``poses`` (n, 4, 4) (X-rays
        ``rows`` (n,)) and linearised along each of their ``tangents`` (n, K, 4, 4) — ``drr + ∂drr·tangent_k``,
        the pose's first, then its K neighbours — from one render with pose derivatives
        (:func:`~xraypose.render.render_with_tangents`); summed in ``dtype``."""
        n, K = tangents.shape[:2]
        uv = None if self.uv is None else self.uv[rows]
        with torch.no_grad():
            drr, d = render_with_tangents(self.density, self.affine, self.camera, poses.to(torch.float32),
                                          tangents.to(torch.float32), uv=uv, n_samples=self.n_samples,
                                          step=self.step)
            drr = drr.to(dtype)[:, None]
            stack = torch.cat([drr, drr + d.to(dtype)], 1).reshape(n * (K + 1), *drr.shape[2:])
            return self._finish_drr(stack)

    def residual_along(self, poses: torch.Tensor, rows: torch.Tensor, tangents: torch.Tensor):
        """Residuals at ``poses`` and at their first-order neighbours, from one render.

        Args:
            poses: (n, 4, 4); rows: (n,) their X-rays; tangents: (n, K, 4, 4) pose displacements
                (the derivative of a curve of poses times the curve's step).
        Returns:
            (n, K + 1, M): the residual of ``poses``, then of the DRRs ``drr + ∂drr·tangent_k``
            (the linearised DRR at ``pose + tangent_k``; every later step — blur, intensity fits,
            robust weights, the measure — exactly as :meth:`residual`); None where this level's
            residual has a term the linearisation leaves out (``fit_air``'s ray chords).
        """
        if self.level.fit_air:
            return None
        n, K = tangents.shape[:2]
        rep = lambda x: x.repeat_interleave(K + 1, 0)  # noqa: E731
        with torch.no_grad():
            r, _, _ = self._residual_of(self.render_along(poses, rows, tangents), rep(poses), rep(rows), group=K + 1,
                                        judge=False)
        return r.reshape(n, K + 1, -1)

    def residual(self, poses: torch.Tensor, rows: torch.Tensor):
        """The measure's residual of ``poses`` (n, 4, 4) against X-rays ``rows`` (n,).

        Returns:
            r: (n, M) residual (``score = 1 − ½‖r‖²``), gradients flowing to ``poses``;
            bone: (n,) float64 the fitted bone multiplier (the config's where not fitted);
            constant: (n,) bool, DRRs that are constant where the pixel mask weighs the X-ray (everywhere
                without one): no usable similarity (:func:`~xraypose.register.measures.constant_rows`).
        """
        return self._residual_of(self.render(poses, rows), poses, rows)

    def blur_coefficient_at(self, poses: torch.Tensor, rows: torch.Tensor, with_error: bool = False):
        """(n,) float64 the X-rays' intensity-domain blur measured at ``poses`` (n, 4, 4): the
        coefficient of ``|∇D|²`` that best explains X-rays ``rows`` (n,) beside the DRR as this level
        fits it (:func:`blur_coefficient`), per X-ray pixel² (``RegistrationConfig.blur_coefficient``'s
        unit); ``with_error``: and its standard error.  A dense level only."""
        if self.uv is not None:
            raise InputError("the blur coefficient is measured on a dense level, not on sparse patches")
        with torch.no_grad():
            drr, tgt, m, _ = self._fitted(self.render(poses, rows), poses, rows)
        if not with_error:
            return blur_coefficient(drr, tgt, w=m) / self.px2
        c, se = blur_coefficient(drr, tgt, w=m, with_error=True)
        return c / self.px2, se / self.px2

    def _fitted(self, drr: torch.Tensor, poses: torch.Tensor, rows: torch.Tensor):
        """Rendered, blurred DRR channels ``drr`` (as :meth:`render` gives) → (the one-channel DRR
        after this level's closed-form intensity fits, but before the blur term — (n, 1, h, w) or
        (n, P, S, S) —, its X-rays, their masks or None, (n,) float64 the bone multipliers)."""
        n = drr.shape[0]
        tgt = self.target[rows] if self.uv is None else self.target_sparse[rows]
        m = None if self.mask is None else (self.mask[rows] if self.uv is None else self.mask_sparse[rows])
        base = float(self.config.bone_multiplier)
        bone = torch.full((n,), base, dtype=F64)
        if self.level.fit_air:
            chord = self.box_chord(poses, rows).to(drr.dtype).reshape(n, 1, *drr.shape[2:])
            drr = torch.cat([drr, chord], 1)
        if drr.shape[1] > 1:
            kinds = (["bone"] if self.level.fit_bone else []) + (["free"] if self.level.fit_tissue else []) + (
                ["positive"] if self.level.fit_air else [])
            coef = fit_channels(drr.reshape(n, drr.shape[1], -1), tgt.reshape(n, -1), base, kinds,
                                w=None if m is None else m.reshape(n, -1))
            if self.level.fit_bone:
                bone = coef[:, 0] + base
            shape = (-1,) + (1,) * (drr.dim() - 1)
            one = drr[:, :1] + sum(coef[:, k].to(drr.dtype).reshape(shape) * drr[:, k + 1:k + 2]
                                   for k in range(drr.shape[1] - 1))
            drr = one
        drr = drr[:, 0] if self.uv is not None else drr  # (n, P, S, S) or (n, 1, h, w)
        return drr, tgt, m, bone

    def _residual_of(self, drr: torch.Tensor, poses: torch.Tensor, rows: torch.Tensor, group: int = 1,
                     judge: bool = True):
        """:meth:`residual` of rendered, blurred DRR channels ``drr`` (as :meth:`render` gives);
        ``group``: they come in groups of a pose and its linearised neighbours (the scatter's choice is
        then the pose's for all of them).  ``judge``: whether to say which DRRs are constant (False, for a
        pose's linearised neighbours, whose flag nobody reads: None)."""
        n = drr.shape[0]
        drr, tgt, m, bone = self._fitted(drr, poses, rows)
        if self.blur_c is not None and self.uv is None:
            drr = drr + self.blur_c * squared_gradient(drr)
        elif self.level.fit_blur and self.uv is None:
            drr = fit_intensity_blur(drr, tgt)
        if self.scatter and self.uv is None:  # smooth additive scatter, its strength fitted
            drr, _ = scatter_drr(drr, tgt, self.scatter, m, group=group)
        if self.level.fit_curve:  # a display curve
            drr = with_fitted_terms(drr, [drr * drr], tgt, m)
        if self.unsharp and self.uv is None:  # a display's unsharp masking y + a(y − G*y) = (1 + a)y − a·G*y
            drr = with_fitted_terms(drr, [separable_blur(drr, k, same=True) for k in self.unsharp], tgt, m)
        if self.level.robust:
            w = robust_weights(drr, tgt, c=self.level.robust_c,
                               prior=None if m is None else m.reshape(drr.shape))
        else:
            w = None if m is None else m.reshape(drr.shape).to(drr.dtype)
        # constant where the X-ray's pixels are weighed (the structure left them): no similarity there
        constant = constant_rows(drr.reshape(n, -1), penalty=self._off_mask(rows)) if judge else None
        c = self.config
        r = measure_residual(self.measure, drr, tgt.to(drr.dtype), sparse=self.uv is not None,
                             weights=c.ncc_weights, patch=c.ncc_patch, alpha=c.mix_alpha, w=w)
        return r, bone, constant


class ViewSet:
    """The objective of one level over several views tied by a rig (one view: an ordinary registration).

    A registration's pose is then ``rig_to_world``; view ``i`` sees the CT at
    ``camera_to_world_i = rig_to_world · camera_to_rig_i``.  The views' similarities are combined
    by their mean (each view counts the same whatever its size): the residuals are concatenated,
    each divided by √N, so ``score = 1 − ½‖r‖² = mean_i score_i``.

    Args:
        objectives: one :class:`LevelObjective` per view (their X-rays in the same order).
        camera_to_rig: (N, 4, 4) float64.
    """

    def __init__(self, objectives: list, camera_to_rig: torch.Tensor):
        self.views = list(objectives)
        self.camera_to_rig = torch.as_tensor(camera_to_rig, dtype=F64).reshape(len(self.views), 4, 4)
        self.identity = len(self.views) == 1 and bool(torch.equal(self.camera_to_rig[0], torch.eye(4, dtype=F64)))
        first = self.views[0]
        self.level, self.camera, self.measure = first.level, first.camera, first.measure
        self.height, self.width, self.channels = first.height, first.width, first.channels

    def view_poses(self, poses: torch.Tensor, i: int) -> torch.Tensor:
        """(n, 4, 4) camera_to_world of view ``i`` for rig poses (n, 4, 4)."""
        return poses if self.identity else poses @ self.camera_to_rig[i].to(poses.dtype)

    def sane(self, poses: torch.Tensor, check) -> torch.Tensor:
        """(n,) True where every view sees the CT (``check(poses, camera)`` per view)."""
        ok = torch.ones(poses.shape[0], dtype=torch.bool)
        for i, v in enumerate(self.views):
            ok &= check(self.view_poses(poses, i), v.camera)
        return ok

    def pixel_mm(self, poses: torch.Tensor, isocenter: torch.Tensor) -> torch.Tensor:
        """(n,) the smallest of the views' pixel sizes at the isocenter (mm)."""
        return torch.stack([v.pixel_mm(self.view_poses(poses, i), isocenter)
                            for i, v in enumerate(self.views)]).amin(0)

    def residual_along(self, poses: torch.Tensor, rows: torch.Tensor, tangents: torch.Tensor):
        """As :meth:`LevelObjective.residual_along`, for rig poses and their tangents (n, K, 4, 4);
        the views' residuals concatenated as in :meth:`residual`."""
        out = []
        N = len(self.views)
        for i, v in enumerate(self.views):
            r = v.residual_along(self.view_poses(poses, i), rows,
                                 tangents if self.identity else tangents @ self.camera_to_rig[i].to(tangents.dtype))
            if r is None:
                return None
            out.append(r / N ** 0.5 if N > 1 else r)
        return torch.cat(out, -1)

    def residual(self, poses: torch.Tensor, rows: torch.Tensor):
        """As :meth:`LevelObjective.residual`, for rig poses; ``bone`` is the first view's fit and
        ``constant`` is True where any view's DRR is constant."""
        if len(self.views) == 1:
            return self.views[0].residual(self.view_poses(poses, 0), rows)
        rs, bone, const = [], None, None
        N = len(self.views)
        for i, v in enumerate(self.views):
            r, b, c = v.residual(self.view_poses(poses, i), rows)
            rs.append(r / N ** 0.5)
            bone = b if bone is None else bone
            const = c if const is None else const | c
        return torch.cat(rs, -1), bone, const
