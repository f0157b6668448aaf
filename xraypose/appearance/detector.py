"""What happens to X-ray intensity between the patient and the stored image.

Every function works on one ``(H, W)`` float64 tensor of intensities relative
to an unattenuated pixel (1 = no attenuation), or on its stored form:

* :func:`area_average` — a supersampled detector integrated over each pixel;
* :func:`gaussian_blur` — focal-spot (and detector) blur, σ in pixels;
* :func:`add_scatter` — a smooth scatter field: the primary convolved with a
  wide Gaussian kernel (σ in mm on the detector), scaled so that
  scatter / primary = ``spr`` on a flat field;
* :func:`collimate` — a border of ``px`` pixels per edge where a collimator
  lets through 2 % of the photons;
* :func:`poisson` — photon counting noise at ``photons`` per unattenuated pixel;
* :func:`store16` — a linear 16-bit image (bone dark), as raw detector files are;
* :func:`vignetting`, :func:`display` — the display processing of clinical
  systems (vignetting, a log or linear LUT, gamma, unsharp masking, 8 or 12 bits).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from xraypose._kernels import normalized_blur, replicate_blur
from xraypose.errors import InputError

__all__ = [
    "area_average", "gaussian_blur", "smooth_normalized", "add_scatter", "collimate", "border_mask", "poisson",
    "store16", "vignetting", "display", "LUTS", "POLARITIES",
]

F64 = torch.float64
#: Display look-up tables: "log" (values ∝ −log I: line-integral-like) or "linear" (∝ I).
LUTS = ("log", "linear")
#: "bone_bright" (MONOCHROME2 radiograph look) or "bone_dark" (fluoroscopy look, as raw intensities).
POLARITIES = ("bone_bright", "bone_dark")
#: Fraction of the photons a collimator blade lets through.
COLLIMATOR_TRANSMISSION = 0.02


def area_average(img: torch.Tensor, factor: int) -> torch.Tensor:
    """(H·f, W·f) → (H, W): mean over each f×f block (a pixel integrates what falls on it)."""
    if factor == 1:
        return img
    return F.avg_pool2d(img[None, None], int(factor))[0, 0]


def gaussian_blur(img: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur, σ in pixels (0: unchanged); replicated borders."""
    return replicate_blur(img[None], sigma_px)[0]


def smooth_normalized(img: torch.Tensor, sigma_rows_px: float, sigma_cols_px: float) -> torch.Tensor:
    """Normalised Gaussian convolution: ``(G * img) / (G * 1)`` within the image.

    A flat image stays exactly flat (no darkening at the borders), whatever
    the kernel's width relative to the image (:func:`xraypose._kernels.normalized_blur`).
    """
    return normalized_blur(img, sigma_rows_px, sigma_cols_px)


def add_scatter(primary: torch.Tensor, spr: float, sigma_mm: float, delx: float, dely: float) -> torch.Tensor:
    """Primary + scatter, scatter = ``spr`` · (primary smoothed by a Gaussian of σ = ``sigma_mm`` on the detector).

    On a flat field scatter / primary is exactly ``spr``; behind bone it is
    higher (scatter comes from the surroundings).  ``delx``/``dely``: pixel
    spacing, mm.
    """
    if spr < 0 or not math.isfinite(spr):
        raise InputError(f"scatter-to-primary ratio must be >= 0, got {spr!r}")
    if not (sigma_mm > 0 and math.isfinite(sigma_mm)):
        raise InputError(f"scatter kernel width must be > 0 mm, got {sigma_mm!r}")
    if spr == 0:
        return primary
    return primary + spr * smooth_normalized(primary, sigma_mm / dely, sigma_mm / delx)


def border_mask(shape, px: int, device=None) -> torch.Tensor:
    """(H, W) bool, True in a border of ``px`` pixels per edge."""
    H, W = shape
    m = torch.ones(H, W, dtype=torch.bool, device=device)
    m[px:H - px, px:W - px] = False
    if px == 0:
        m[:] = False
    return m


def collimate(img: torch.Tensor, px: int) -> torch.Tensor:
    """Collimator blades over a border of ``px`` pixels per edge (they pass 2 % of the photons)."""
    if px <= 0:
        return img
    return torch.where(border_mask(img.shape, px, img.device), img * COLLIMATOR_TRANSMISSION, img)


def poisson(img: torch.Tensor, photons: float, generator: torch.Generator | None) -> torch.Tensor:
    """Counting noise: ``Poisson(img·photons) / photons`` (0 photons: unchanged)."""
    if photons <= 0:
        return img
    return torch.poisson(img * photons, generator=generator) / photons


def store16(img: torch.Tensor, i0: float) -> torch.Tensor:
    """The linear 16-bit image a detector file holds: ``clamp(round(img·i0), 1, 65535)`` (bone dark)."""
    return torch.clamp(torch.round(img * i0), 1, 65535)


def vignetting(shape, strength: float, dtype=F64, device=None) -> torch.Tensor:
    """(H, W) gain falling off quadratically from 1 at the centre to ``1 − strength`` at the corners."""
    H, W = shape
    v = torch.arange(H, dtype=dtype, device=device) - (H - 1) / 2
    u = torch.arange(W, dtype=dtype, device=device) - (W - 1) / 2
    r2 = (v[:, None] ** 2 + u[None, :] ** 2) / ((H - 1) ** 2 / 4 + (W - 1) ** 2 / 4 + 1e-12)
    return 1.0 - strength * r2


def _window(values: torch.Tensor, inside: torch.Tensor, lo_q: float = 0.005, hi_q: float = 0.995):
    v = values[inside]
    lo, hi = float(torch.quantile(v, lo_q)), float(torch.quantile(v, hi_q))
    if hi <= lo:
        hi = lo + 1e-6
    return lo, hi


def display(img: torch.Tensor, *, lut: str, polarity: str, gamma: float, unsharp_amount: float,
            unsharp_radius_px: float, vignette: float, bits: int, collimator_px: int, floor: float) -> torch.Tensor:
    """The image a clinical system stores for display, from relative intensities ``img``.

    Steps: vignetting (gain falloff ``vignette`` at the corners); the LUT —
    "log": ``−log I`` windowed to its 0.5–99.5 % range inside the collimated
    field (bright = attenuating), "linear": ``I`` windowed to [0, its 99.5 %];
    ``polarity`` "bone_dark" inverts the log image / keeps the linear one,
    "bone_bright" keeps the log image / inverts the linear one; ``y ← y^gamma``;
    unsharp masking ``y ← y + amount·(y − G_radius * y)``; the collimated
    border set to 0 (an electronic shutter); quantised to ``bits`` bits.
    ``floor``: the smallest intensity (one photon), for the log.

    Returns:
        (H, W) float64 holding integers in [0, 2^bits − 1].
    """
    if lut not in LUTS:
        raise InputError(f"unknown display LUT {lut!r}; choose one of: {', '.join(LUTS)}")
    if polarity not in POLARITIES:
        raise InputError(f"unknown polarity {polarity!r}; choose one of: {', '.join(POLARITIES)}")
    if bits not in (8, 10, 12, 14, 16):
        raise InputError(f"display images are stored with 8–16 bits, got {bits!r}")
    if not (gamma > 0 and math.isfinite(gamma)):
        raise InputError(f"gamma must be > 0, got {gamma!r}")
    if not 0 <= vignette < 1:
        raise InputError(f"vignetting must be in [0, 1), got {vignette!r}")
    inside = ~border_mask(img.shape, collimator_px, img.device)
    x = img * vignetting(img.shape, vignette, img.dtype, img.device)
    if lut == "log":
        y = -torch.log(x.clamp_min(floor))
        lo, hi = _window(y, inside)
        y = ((y - lo) / (hi - lo)).clamp(0, 1)
        if polarity == "bone_dark":
            y = 1 - y
    else:
        _, hi = _window(x, inside)
        y = (x / hi).clamp(0, 1)
        if polarity == "bone_bright":
            y = 1 - y
    y = y**gamma
    if unsharp_amount > 0:
        y = (y + unsharp_amount * (y - gaussian_blur(y, unsharp_radius_px))).clamp(0, 1)
    y = torch.where(inside, y, torch.zeros_like(y))
    top = float(2**bits - 1)
    return torch.round(y * top)
