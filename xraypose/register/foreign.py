"""Metal steps in the X-ray: find them and set them aside before registering.

Implants and tools that are not in the CT (K-wires, screws, plates, a retractor blade) are the
strongest edges of an X-ray: a 1.5 mm steel blade adds ~1.4 to the line integral over a sharp,
straight border, while bone's edges in a projection are ramps several times weaker.  Far from the
optimum the similarity cannot tell such pixels from bone (registration's robust weights only work
near it), so the capture levels followed the metal: on the appearance benchmark's ``implants``
family, from 10°/40 mm starts, 40 % (pelvis) and 50 % (abdomen) of X-rays registered below 1 mm,
the rest 3–300 mm off.

:func:`set_aside_steps` works on the preprocessed X-ray alone (line-integral-like, any scale),
before any level:

1. **Strong edges**: the gradient magnitude (Sobel of the image smoothed by σ = 0.7 px) above
   ``ratio`` times its median over the image — a scale-free threshold (display scaling, gain and
   the image's rescale cancel).  On the benchmark's X-rays without metal the strongest edges
   reach 4–13 times the median; metal edges 10–60 times.  The edges are grown by ``grow_px`` into
   bands.
2. **Regions**: what the edges leave splits into connected regions.  A region smaller than
   ``small`` of the image and enclosed by bands (the inside of a screw or a wire; not one at the
   image's rim) gets weight 0.
3. **Levelling**: a plate or blade covers a large region with a uniform extra line integral: its
   region is *levelled* — shifted by the median step measured across its border (pixel pairs on
   either side of each edge pixel, along the gradient) so that it joins the region it borders.
   The step is where most pairs agree (the centre of the shortest half of their steps: pairs that
   also straddle a bone's ramp scatter to one side), and it is taken as metal's only when it is
   uniform along the border (that half's half-width below ``uniform`` times the step) and large (at
   least ``MIN_STEP_PX`` pixels' worth of an edge at the threshold): a body's edge against air steps
   by the body's varying thickness and is left as it is, and so are the two sides of a wire or rod.
   Regions across whose border there is no step at all (``SAME_SURFACE``: one surface cut in two by
   a wire's band) are joined at one level, so a plate's step found from either levels both.
4. **Metal's bands**: a band (a connected piece) gets weight 0 when there is evidence it is metal's:
   it borders a levelled step, touches a region it encloses, or is a ridge (a quarter of its edge
   pixels face an edge of opposite gradient within 12 px: a wire's or rod's two sides).  A lone
   step that is none of these — the body's outline against air, steepened by a display gamma (on
   fresh benchmark cases masking it moved a screw X-ray's result from 0.65 to 3.3 mm) — keeps its
   weights: the DRR has it.
5. **Not metal at all**: strong edges on more than ``MAX_EDGE_SHARE`` of the pixels, or bands that
   would take more than ``MAX_MASKED_SHARE`` of the image, are the image's content (a subtracted
   angiogram's vessels): nothing is set aside.

The result is the levelled image and the pixel weights; :class:`~xraypose.register.Registrar`
applies it to every X-ray it registers when ``RegistrationConfig.foreign_steps`` is a ratio
(default 12; ``None``: off), and the confidence check to the X-ray it judges.  Written by hand:
the threshold, the region graph and the uniform-step test are specific to metal in X-rays; the
labelling is SimpleITK's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

#: Edges stronger than this many times the image's median gradient are taken as metal (default).
STEP_RATIO = 12.0
#: The edges' band is grown by this many pixels (the focal blur and the preprocessing's blur).
GROW_PX = 3
#: Regions enclosed by strong edges and smaller than this share of the image get weight 0.
SMALL_REGION = 0.02
#: A border's step is metal's when the pairs' spread (half the shortest half's width) is below this share of it.
UNIFORM_STEP = 0.35
#: A levelled step is at least an edge at the threshold spread over this many pixels (``ratio`` × median
#: gradient × this): measured steps of plates and blades were 60–280 median gradients, display-processed ones
#: 40–75; steps read across a rod or wire (whose two sides are not offset) up to 28.
MIN_STEP_PX = 3.0
#: Regions whose border reads as no step at all (|step| + spread within this many pixels' worth of an edge at the
#: threshold) are one surface that a wire's or rod's band cut in two: they are joined at the same level, so that a
#: plate's step found from either of them levels both (read across wires: 2–9 median gradients against 12 for one
#: pixel at the threshold; before, a cut-off piece kept its own level beside a levelled neighbour).
SAME_SURFACE = 1.0
#: Above this share of strong-edge pixels the strong edges are the image's content, not metal: nothing is set
#: aside.  A subtracted angiogram's vessels are all of its content and as sharp as wires (the Ljubljana-layout
#: fixture: 21 %); the appearance benchmark's X-rays with 1–6 metal objects: at most 10 %.
MAX_EDGE_SHARE = 0.15
#: Nor when it would take more than this share of the image (angiogram 39 %; metal X-rays at most 23 %).
MAX_MASKED_SHARE = 0.35


@dataclass
class SteppedXray:
    """What :func:`set_aside_steps` found in one X-ray.

    Attributes:
        image: (H, W) the X-ray with metal-covered regions levelled (same dtype as given).
        weights: (H, W) float32 pixel weights in [0, 1]: 0 on the metal's edges and enclosed parts,
            the given mask's weights elsewhere.
        edge_share: share of pixels above the edge threshold.
        masked_share: share of pixels with weight 0 that had weight > 0 before.
        levelled: per levelled region its step (image units) and its size (share of the image).
        note: why nothing was set aside ("" when something was, or nothing was found).
    """

    image: torch.Tensor
    weights: torch.Tensor
    edge_share: float = 0.0
    masked_share: float = 0.0
    levelled: list = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict:
        return {"edge_share": round(self.edge_share, 4), "masked_share": round(self.masked_share, 4),
                "levelled": [{k: round(v, 4) for k, v in d.items()} for d in self.levelled], "note": self.note}


def _gradient(img: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(gx, gy) (H, W) float64: the slope per pixel along columns and rows of ``img`` smoothed by a
    Gaussian of σ px — registration's blur (:func:`~xraypose.register.objective.separable_blur`) and
    the similarity's Sobel kernel (:func:`xraypose.similarity.gradient_ncc`), replicated borders."""
    from xraypose._kernels import gaussian_kernel1d, three_sigma_radius
    from xraypose.register.objective import separable_blur
    from xraypose.similarity import _sobel

    x = separable_blur(img[None, None].to(torch.float64), gaussian_kernel1d(sigma, three_sigma_radius(sigma)), True)
    g = -_sobel(F.pad(x, (1, 1, 1, 1), mode="replicate"))[0] / 8  # the kernel takes left − right: uphill is −
    return g[0], g[1]


def _regions(free: torch.Tensor) -> torch.Tensor:
    """(H, W) int64 labels of the 4-connected regions of ``free`` (bool), 1 = the largest; 0 outside."""
    import numpy as np
    import SimpleITK as sitk

    lab = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(free.numpy().astype(np.uint8))))
    return torch.from_numpy(sitk.GetArrayFromImage(lab).astype(np.int64))


def set_aside_steps(image: torch.Tensor, mask: torch.Tensor | None = None, *, ratio: float = STEP_RATIO,
                    grow_px: int = GROW_PX, small: float = SMALL_REGION, uniform: float = UNIFORM_STEP,
                    sigma_px: float = 0.7) -> SteppedXray:
    """Find metal's steps in one preprocessed X-ray and set them aside (module docstring).

    Args:
        image: (H, W) preprocessed X-ray (line-integral-like: attenuation bright; any scale).
        mask: optional (H, W) pixel weights in [0, 1] already known (0: not to be used).
        ratio: edge threshold in multiples of the median gradient magnitude.
        grow_px: pixels the edge band is grown by.
        small: regions enclosed by edges below this share of the image get weight 0.
        uniform: a border is levelled when its steps' spread (half the shortest half's width) is below
            ``uniform`` × the step.
        sigma_px: the smoothing before the gradient (px).
    Returns:
        :class:`SteppedXray`; an image without strong edges comes back unchanged with the given
        weights (all ones without a mask).
    """
    img = torch.as_tensor(image)
    H, W = img.shape
    w0 = torch.ones(H, W, dtype=torch.float32) if mask is None else torch.as_tensor(mask, dtype=torch.float32)
    plain = SteppedXray(img, w0.clone())
    valid = w0 > 0
    if H < 16 or W < 16 or int(valid.sum()) < 64:
        plain.note = "image too small to look for metal"
        return plain
    gx, gy = _gradient(img, sigma_px)
    g = torch.hypot(gx, gy)
    scale = float(g[valid].median())
    if not (math.isfinite(scale) and scale > 0):
        plain.note = "no gradient to measure edges against"
        return plain
    edge = (g > ratio * scale) & valid
    plain.edge_share = float(edge.float().mean())
    if not bool(edge.any()):
        return plain
    if plain.edge_share > MAX_EDGE_SHARE:
        plain.note = (f"{plain.edge_share:.0%} of the pixels are strong edges: the image's content (e.g. an "
                      "angiogram's vessels), not metal; nothing set aside")
        return plain
    band = F.max_pool2d(edge.double()[None, None], 2 * grow_px + 1, 1, grow_px)[0, 0] > 0
    lab = _regions(valid & ~band)
    sizes = torch.bincount(lab.reshape(-1), minlength=int(lab.max()) + 1)
    big = [k for k in range(1, sizes.numel()) if int(sizes[k]) >= small * H * W]
    rim = torch.unique(torch.cat([lab[0], lab[-1], lab[:, 0], lab[:, -1]])).tolist()
    keep = torch.zeros(H, W, dtype=torch.bool)
    for k in set(big) | {k for k in rim if k > 0}:  # a small region at the image's rim is not enclosed
        keep |= lab == k
    out = img.to(torch.float64).clone()
    levelled = []
    accepted: set = set()
    pixels = None
    if len(big) > 1:
        steps, pixels = _border_steps(out, lab, edge, gx, gy, g, grow_px)
        level, accepted = _level_regions(big, steps, MIN_STEP_PX * ratio * scale, uniform, SAME_SURFACE * ratio * scale)
        for k, step in level.items():
            if step != 0.0:
                out[lab == k] -= step
                levelled.append({"step": step, "share": float(sizes[k]) / (H * W)})
    metal = _metal_bands(band, edge, gx, gy, g, valid & ~band & ~keep, accepted, pixels)
    weights = torch.where(keep | (band & ~metal), w0, torch.zeros_like(w0))
    masked = float(((w0 > 0) & (weights == 0)).float().mean())
    if masked > MAX_MASKED_SHARE:
        plain.note = f"strong edges would take {masked:.0%} of the image: its content, not metal; nothing set aside"
        return plain
    return SteppedXray(out.to(img.dtype), weights, plain.edge_share, masked, levelled)


def _level_regions(big: list, steps: dict, min_step: float, uniform: float, same: float) -> tuple[dict, set]:
    """({region: level}, {accepted metal borders (a, b) both ways}): the regions ``big`` (largest first)
    joined breadth-first from each not yet reached, across the borders ``steps`` ({(a, b): steps b − a}
    as :func:`_border_steps` read them): a uniform step of at least ``min_step`` (metal's: the level
    changes by it), or no step at all (|step| + spread ≤ ``same``: one surface cut by a wire's band,
    same level)."""
    level: dict = {}
    accepted: set = set()
    borders = [(p, q, *_shorth(s)) for (p, q), s in sorted(steps.items()) if s.numel() >= 10 and q in big]
    for root in big:  # largest first: each group of regions joined by uniform (or no) steps joins its largest
        if root in level:
            continue
        level[root] = 0.0
        todo = [root]
        while todo:  # breadth-first across uniform steps
            a = todo.pop(0)
            for p, q, step, spread in borders:
                if p != a or q in level:
                    continue
                if abs(step) >= min_step and spread < uniform * abs(step):
                    level[q] = level[a] + step
                    accepted |= {(a, q), (q, a)}
                    todo.append(q)
                elif abs(step) + spread <= same:
                    level[q] = level[a]  # one surface cut by a wire's band: joined, not stepped
                    todo.append(q)
    return level, accepted


def _metal_bands(band, edge, gx, gy, g, enclosed, accepted: set, pixels, reach: int = 12) -> torch.Tensor:
    """(H, W) bool: the pixels of the edge bands that are metal's, by evidence — a band (one connected
    piece of ``band``) is metal's when it borders a levelled step (``accepted`` region pairs read at its
    edge pixels), touches a region it encloses (``enclosed``: inside a screw or wire), or is a ridge (a
    quarter or more of its edge pixels face an edge of opposite gradient within ``reach`` px uphill: the
    two sides of a wire or rod).  A lone step that is none of these — the body's outline against air,
    steepened by a display gamma; a step too uneven to level — is anatomy the DRR has: not set aside."""
    H, W = band.shape
    comp = _regions(band)
    n = int(comp.max())
    if n == 0:
        return band
    hit = torch.zeros(n + 1, dtype=torch.bool)
    if pixels is not None and accepted:
        ys, xs, lp, lq = pixels
        on = torch.tensor([(int(a), int(b)) in accepted for a, b in zip(lp.tolist(), lq.tolist())], dtype=torch.bool)
        hit[comp[ys[on], xs[on]]] = True
    near = F.max_pool2d(enclosed.double()[None, None], 3, 1, 1)[0, 0] > 0
    hit[comp[near & band]] = True
    ys, xs = torch.nonzero(edge, as_tuple=True)
    nx, ny = gx[ys, xs] / g[ys, xs], gy[ys, xs] / g[ys, xs]
    ridge = torch.zeros(len(ys), dtype=torch.bool)
    for d in range(2, reach + 1):
        y = (ys + d * ny).round().long().clamp(0, H - 1)
        x = (xs + d * nx).round().long().clamp(0, W - 1)
        facing = edge[y, x] & ((gx[y, x] * nx + gy[y, x] * ny) < -0.5 * g[y, x])
        ridge |= facing
    c = comp[ys, xs]
    total = torch.bincount(c, minlength=n + 1).to(torch.float64)
    ridged = torch.bincount(c[ridge], minlength=n + 1).to(torch.float64)
    hit |= ridged >= 0.25 * total.clamp_min(1)
    hit[0] = False
    return hit[comp]


def _shorth(s: torch.Tensor) -> tuple[float, float]:
    """(centre, half-width) of the shortest interval holding half of ``s``: the step where most pairs agree
    (pairs that straddle a bone's ramp as well as the metal's edge scatter to one side and are ignored);
    the half-width is the median absolute deviation's counterpart (equal for a normal distribution)."""
    v = torch.sort(s.to(torch.float64)).values
    n = v.numel()
    k = max(1, n // 2)
    widths = v[k:] - v[:n - k]
    i = int(torch.argmin(widths))
    return float(v[i:i + k + 1].median()), float(widths[i]) / 2


def _border_steps(img, lab, edge, gx, gy, g, grow_px, reach: int = 4) -> tuple[dict, tuple]:
    """({(region a, region b): (n,) steps b − a} measured across the border at each edge pixel,
    (rows, columns, region below, region above) of the edge pixels: 0 where none was met).

    Walking from the edge pixel along ± the gradient, the first pixel of a region (within
    4·grow + 8 px) and the one ``reach`` pixels further give the region's value extrapolated
    linearly back to the edge pixel: a step on sloping anatomy is measured without its slope."""
    H, W = img.shape
    ys, xs = torch.nonzero(edge, as_tuple=True)
    nx, ny = gx[ys, xs] / g[ys, xs], gy[ys, xs] / g[ys, xs]
    side = {}
    for sign in (-1.0, 1.0):
        lab_ = torch.zeros_like(ys)
        val = torch.zeros(len(ys), dtype=img.dtype)
        for d in range(1, 4 * grow_px + 8):
            y1 = (ys + sign * d * ny).round().long().clamp(0, H - 1)
            x1 = (xs + sign * d * nx).round().long().clamp(0, W - 1)
            y2 = (ys + sign * (d + reach) * ny).round().long().clamp(0, H - 1)
            x2 = (xs + sign * (d + reach) * nx).round().long().clamp(0, W - 1)
            hit = (lab_ == 0) & (lab[y1, x1] > 0)
            v1, v2 = img[y1, x1], img[y2, x2]
            far = lab[y2, x2] == lab[y1, x1]
            est = torch.where(far, v1 + (v1 - v2) * (d / reach), v1)
            lab_[hit] = lab[y1, x1][hit]
            val[hit] = est[hit]
        side[sign] = (lab_, val)
    (lp, vp), (lq, vq) = side[-1.0], side[1.0]
    ok = (lp > 0) & (lq > 0) & (lp != lq)
    out: dict = {}
    if not bool(ok.any()):
        return out, (ys, xs, lp, lq)
    a, b, s = lp[ok], lq[ok], (vq - vp)[ok]
    for p, q in set(zip(a.tolist(), b.tolist())):
        sel = (a == p) & (b == q)
        rev = (a == q) & (b == p)
        out[(p, q)] = torch.cat([s[sel], -s[rev]])
    return out, (ys, xs, lp, lq)


def fill_set_aside(image: torch.Tensor, weights: torch.Tensor, sigma_px: float = 2.0) -> torch.Tensor:
    """(H, W) ``image`` with its weight-0 pixels filled from their surroundings (normalised convolution
    at growing scales: σ, 2σ, 4σ … until every pixel is reached), for consumers that cannot take pixel
    weights (the pose regressor).  Pixels with weight > 0 are unchanged."""
    img = torch.as_tensor(image).to(torch.float64)
    w = (torch.as_tensor(weights) > 0).to(torch.float64)
    if bool(w.all()) or not bool(w.any()):
        return torch.as_tensor(image)
    from xraypose._kernels import gaussian_kernel1d, three_sigma_radius
    from xraypose.register.objective import separable_blur

    out = img.clone()
    todo = w == 0
    sigma = sigma_px
    while bool(todo.any()) and sigma <= 4 * max(img.shape):
        k = gaussian_kernel1d(sigma, three_sigma_radius(sigma))
        num, den = (separable_blur(v[None, None], k, True)[0, 0] for v in (img * w, w))
        reach = todo & (den > 1e-3)
        out[reach] = (num / den.clamp_min(1e-300))[reach]
        todo &= ~reach
        sigma *= 2
    return out.to(torch.as_tensor(image).dtype)


def set_aside_batch(images: torch.Tensor, masks: torch.Tensor | None = None, ratio: float = STEP_RATIO
                    ) -> tuple[torch.Tensor, torch.Tensor | None, list[SteppedXray]]:
    """:func:`set_aside_steps` on each of (B, 1, H, W) X-rays with optional (B, 1, H, W) masks:
    (levelled images, weights (None when nothing was set aside and no mask was given), per X-ray
    its :class:`SteppedXray`)."""
    B = images.shape[0]
    found, seen = [], {}
    for b in range(B):  # the same X-ray expanded over a batch (the hypotheses' alternatives) is looked at once
        img, m = images[b, 0], None if masks is None else masks[b, 0]
        key = (img.data_ptr(), img.stride(), None if m is None else (m.data_ptr(), m.stride()))
        if key not in seen:
            seen[key] = set_aside_steps(img, m, ratio=ratio)
        found.append(seen[key])
    imgs = torch.stack([f.image for f in found])[:, None].to(images.dtype)
    if masks is None and not any(f.masked_share > 0 for f in found):
        return imgs, None, found
    return imgs, torch.stack([f.weights for f in found])[:, None].contiguous(), found
