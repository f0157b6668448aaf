"""Where an X-ray holds evidence: a collimator's shadow, a round field's outside and its penumbra, a saturated plateau.

Each finds, in one image, pixels where the detector saw nothing of the patient — a collimator blade (whole rows
and columns flat at the maximum attenuation), the outside of an image intensifier's circle or an iris
collimator, the soft ring inside such an edge, a detector or display clipped at its maximum — so that
:func:`xraypose.preprocess.preprocess` can leave them out of registration (its ``mask``), or refuse an X-ray
whose field leaves less than :data:`MIN_FIELD_FRACTION` of the detector (:func:`check_field`).

Images are ``(H, W)``; "line integrals" means more attenuation = larger (the registration's form), "raw
intensities" bright = more photons.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from xraypose._arrays import as_image
from xraypose._kernels import max_filter
from xraypose.errors import InputError

__all__ = ["CollimatorEdges", "flat_at_maximum", "collimator_edges", "saturation_mask", "field_shadow",
           "field_penumbra", "check_field", "SATURATION_MIN_FRACTION", "MIN_FIELD_FRACTION",
           "FIELD_SHADOW_MIN_FRACTION", "FIELD_PENUMBRA_MAX_FRACTION", "FIELD_PENUMBRA_QUANTILE"]

#: A saturated plateau: at least this share of the pixels exactly at the image's maximum intensity.
SATURATION_MIN_FRACTION = 0.01

#: The smallest share of the detector a collimator may leave (:func:`collimator_edges`): below
#: it, registration would rest on a few centimetres of anatomy, and :func:`~xraypose.preprocess.preprocess`
#: refuses.
MIN_FIELD_FRACTION = 0.25
#: :func:`field_shadow` counts a round field's shadow covering at least this share of the image.
FIELD_SHADOW_MIN_FRACTION = 0.02
#: How far inward from a round field's shadow its penumbra is followed (:func:`field_penumbra`), as a
#: fraction of the image's larger side: an image intensifier's edge falls from the shadow's level to the
#: field's over 3–5 % of the frame on the real wrist radiographs (1024 rows: 30–50 px).
FIELD_PENUMBRA_MAX_FRACTION = 0.06
#: A penumbra pixel is above this quantile of the field's inside (the pixels farther from the shadow).
FIELD_PENUMBRA_QUANTILE = 0.99


class CollimatorEdges(NamedTuple):
    """Pixels of a collimator's shadow at each edge of an image (:func:`collimator_edges`)."""

    top: int
    bottom: int
    left: int
    right: int


def flat_at_maximum(image, tol: float = 0.02) -> torch.Tensor | None:
    """(H, W) bool, True where ``image`` (line integrals: more attenuation = larger) lies within ``tol``
    of its robust range (its 1st–99.5th percentiles) below its maximum — where nothing reached the
    detector (a collimator's blade, the outside of a round field) — or None for an image smaller than
    2 × 2, without finite pixels or without a range."""
    img = as_image(image).detach().to(torch.float64)
    H, W = img.shape
    finite = img[torch.isfinite(img)]
    if H < 2 or W < 2 or finite.numel() == 0:
        return None
    q = torch.quantile(finite[:: max(1, finite.numel() // 200_000)], torch.tensor([0.01, 0.995], dtype=img.dtype))
    lo, hi = float(q[0]), float(q[1])
    if not hi > lo:
        return None
    return img >= hi - tol * (hi - lo)


def collimator_edges(image, tol: float = 0.02, flat: torch.Tensor | None = None) -> CollimatorEdges:
    """Rows/columns of a collimator's shadow at each edge: (top, bottom, left, right) pixels.

    ``image`` (H, W) in the registration's form (line integrals: more attenuation = larger).  A
    collimator blade stops the beam: its shadow is a flat band at the image's *maximum*
    attenuation (:func:`flat_at_maximum`; or give its ``flat``).  From each edge, whole rows
    (columns) count while every pixel is flat.  A flat band at the *minimum* (air around a small
    CT, a saturated direct beam) is not a collimator.
    """
    flat = flat_at_maximum(image, tol) if flat is None else flat
    if flat is None:
        return CollimatorEdges(0, 0, 0, 0)

    def run(lines: torch.Tensor) -> int:  # the length of the run of True from the start
        return int(torch.cumprod(lines.to(torch.uint8), 0).sum())

    rows, cols = flat.all(1), flat.all(0)
    top, bottom = run(rows), run(rows.flip(0))
    left, right = run(cols), run(cols.flip(0))
    return CollimatorEdges(top, bottom, left, right)


def saturation_mask(image) -> torch.Tensor | None:
    """(H, W) bool, True at the pixels of a saturated plateau — or None when there is none.

    ``image``: raw intensities (bright = more photons).  A detector or its display clips at a
    maximum: every clipped pixel holds exactly the image's maximum, a plateau no noisy pixel
    makes.  At least :data:`SATURATION_MIN_FRACTION` of the pixels must share that value.
    """
    img = as_image(image)
    finite = torch.isfinite(img)
    if not bool(finite.any()):
        return None
    top = img[finite].max()
    if bool(top == img[finite].min()):
        return None  # a constant image: not saturation (later steps say what is wrong with it)
    sat = img == top
    n = int(sat.sum())
    if n < max(10, SATURATION_MIN_FRACTION * img.numel()):
        return None
    return sat


def field_shadow(image, tol: float = 0.02, flat: torch.Tensor | None = None) -> torch.Tensor | None:
    """(H, W) bool, True outside a round (or any convex) field — an image intensifier's circle, an iris
    collimator — or None when there is none.

    ``image`` (H, W) in the registration's form (line integrals: more attenuation = larger).  Outside
    the field nothing reaches the detector: a flat plateau at the image's maximum attenuation
    (:func:`flat_at_maximum`; or give its ``flat``).  Outside a convex field every row (column) holds it
    as a run from each of its ends, so the shadow is the union of the runs from the four edges.  It
    counts only where it covers at least :data:`FIELD_SHADOW_MIN_FRACTION` of the image and three of its
    four corners (a bone or a tool at the image's edge does not); whole rows and columns are
    :func:`collimator_edges`' already.
    """
    flat = flat_at_maximum(image, tol) if flat is None else flat
    if flat is None:
        return None
    H, W = flat.shape
    if sum(bool(flat[i, j]) for i in (0, H - 1) for j in (0, W - 1)) < 3:
        return None

    def runs(f: torch.Tensor) -> torch.Tensor:  # (n, m): True on each row's run of True from its start
        return torch.cumprod(f.to(torch.uint8), dim=1).bool()

    out = runs(flat) | runs(flat.flip(1)).flip(1) | runs(flat.T).T | runs(flat.T.flip(1)).flip(1).T
    return out if float(out.double().mean()) >= FIELD_SHADOW_MIN_FRACTION else None


def field_penumbra(image, shadow: torch.Tensor, max_px: int | None = None,
                   quantile: float = FIELD_PENUMBRA_QUANTILE) -> torch.Tensor:
    """(H, W) bool: a round field's ``shadow`` grown through its penumbra.

    Inside an image intensifier's (or an iris collimator's) edge the attenuation does not drop at once
    from the shadow's level to the anatomy's: a soft edge, vignetting and the display's processing leave
    a ring whose line integrals are neither (on the real wrist radiographs 0.2–0.6 of the shadow's level,
    30–50 px wide at 1024 rows, against a field whose 99th percentile is 0.10–0.13).  Registration would
    read that ring as anatomy.  The penumbra is taken as the pixels connected to the shadow, within
    ``max_px`` of it (default :data:`FIELD_PENUMBRA_MAX_FRACTION` of the larger side; above 384 rows
    worked on blocks, so up to a block more), whose value is above the ``quantile`` of the field's inside
    (the pixels beyond that reach).
    Only pixels are added; a hard edge (a simulated field) adds at most a pixel or two of blurred rim.

    Args:
        image: (H, W) line integrals (more attenuation = larger).
        shadow: (H, W) bool, :func:`field_shadow`'s.
    Returns:
        (H, W) bool, ``shadow`` or a superset of it.
    """
    img = torch.as_tensor(image, dtype=torch.float32)
    H, W = img.shape
    n = int(max_px if max_px is not None else round(FIELD_PENUMBRA_MAX_FRACTION * max(H, W)))
    if n < 1:
        return shadow
    # On a grid of at most ~256 rows (k × k blocks; a block is set where any of its pixels is): the reach
    # and the geodesic growth below cost k³ ≈ 64× less than at 1024 rows (0.95 s a frame there); the reach
    # is then up to a block wider, and a gap narrower than a block is bridged.
    k = max(1, round(max(H, W) / 256))
    Hc, Wc = -(-H // k), -(-W // k)

    def coarse(m: torch.Tensor) -> torch.Tensor:
        pad = torch.zeros(Hc * k, Wc * k, dtype=torch.float32)
        pad[:H, :W] = m.float()
        return F.max_pool2d(pad[None, None], k)[0, 0] > 0

    def full(m: torch.Tensor) -> torch.Tensor:
        return m.repeat_interleave(k, 0).repeat_interleave(k, 1)[:H, :W]

    steps = -(-n // k)
    start = coarse(shadow)
    near = full(max_filter(start.float(), steps) > 0) | shadow
    inside = ~near
    if int(inside.sum()) < 0.05 * H * W:  # too little field left to say what the anatomy's level is
        return shadow
    thr = torch.quantile(img[inside][:: max(1, int(inside.sum()) // 200_000)], quantile)
    allowed = ((img > thr) & near) | shadow
    ok, grown = coarse(allowed), start
    for _ in range(steps):  # geodesic growth from the shadow through the allowed blocks, one block per step
        g = (max_filter(grown.float(), 1) > 0) & ok
        if torch.equal(g, grown):
            break
        grown = g
    return (full(grown) & allowed) | shadow


def check_field(img: torch.Tensor, steps: list, grow: int = 0) -> torch.Tensor | None:
    """:func:`xraypose.preprocess.preprocess`'s step 6 check: a collimator's shadow left in the image ``img``
    (H, W) (whole rows and columns: :func:`collimator_edges`; the outside of a round field: :func:`field_shadow`):
    recorded in ``steps``, refused when it leaves < 25 % of the image, else returned as an (H, W) float32 mask (0
    in the shadow grown by ``grow`` px)."""
    flat = flat_at_maximum(img)
    t, b, l, r = collimator_edges(img, flat=flat)
    H, W = img.shape
    g = int(grow)
    keep = None
    if t or b or l or r:
        h, w = max(0, H - t - b), max(0, W - l - r)
        frac = h * w / float(H * W)
        steps.append({"step": "collimator_check", "edges": [t, b, l, r], "field_fraction": frac})
        if frac < MIN_FIELD_FRACTION:
            raise InputError(
                f"the collimator leaves {100 * frac:.0f}% of the X-ray (flat borders of {t}, {b}, {l}, {r} px at the "
                f"top, bottom, left, right); at least {100 * MIN_FIELD_FRACTION:.0f}% is needed to register — is "
                "this the right image?")
        keep = torch.zeros(H, W, dtype=torch.float32)
        keep[(t + g if t else 0):H - (b + g if b else 0), (l + g if l else 0):W - (r + g if r else 0)] = 1.0
    shadow = field_shadow(img, flat=flat)
    if shadow is not None:
        shadow_frac = float(shadow.double().mean())
        # the penumbra of a round edge only: a collimator's straight blades (whole rows and columns, masked
        # above) make field_shadow's runs too, and their edge needs no more than the blur's growth
        blades = torch.ones_like(shadow)
        blades[t:H - b, l:W - r] = False  # (no collimator: all False)
        round_part = shadow & ~blades
        ring = field_penumbra(img, shadow) if float(round_part.double().mean()) >= FIELD_SHADOW_MIN_FRACTION \
            else shadow
        penumbra = float((ring & ~shadow).double().mean())
        shadow = ring
        field = 1.0 - max_filter(shadow.float(), g)
        frac = float(field.mean()) if keep is None else float((field * keep).mean())
        steps.append({"step": "field_check", "shadow_fraction": shadow_frac, "penumbra_fraction": penumbra,
                      "field_fraction": frac})
        if frac < MIN_FIELD_FRACTION:
            raise InputError(
                f"the round field leaves {100 * frac:.0f}% of the X-ray (the rest is flat at its maximum attenuation: "
                f"nothing reached the detector there); at least {100 * MIN_FIELD_FRACTION:.0f}% is needed to "
                "register — is this the right image?")
        keep = field if keep is None else keep * field
    return keep
