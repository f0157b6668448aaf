"""A raw X-ray's photons, read from its own noise, and the half photon added before its log where they are few.

A detector's raw image is proportional to the photons each pixel counted; their Poisson noise gives the gain
(intensity units per photon) and so the photons themselves (:func:`detected_photons`, a photon-transfer
estimate).  Where the darkest pixels hold few photons (below :data:`LOG_MIN_PHOTONS`), the log of each pixel is
biased and that of zero undefined: :func:`xraypose.preprocess.preprocess` then adds half a photon before the log
(:func:`photons_to_add`), or bins the intensities first.
"""

from __future__ import annotations

import math

import torch

from xraypose._arrays import as_image
from xraypose.errors import InputError

__all__ = ["detected_photons", "photons_to_add", "check_photon_offset", "LOG_MIN_PHOTONS", "PHOTON_MIN_QUANTA"]

#: Photons below which the darkest 1 % of the field counts as few (estimated from the image's own noise,
#: :func:`detected_photons`): ``photon_offset="auto"`` adds half a photon before the log there, and
#: ``resample_domain="auto"`` bins raw intensities before their log where it cannot (no offset).  Between
#: the two doses measured (docs/registration.md, "Shrinking raw intensities"): ~1 photon there at
#: fluoroscopic dose, where the bare log of each pixel ruined the frames, and ~135 at a radiograph's, where
#: the log of each pixel kept registration at 0.16 mm and binning moved its depth (a bin is an
#: intensity-domain blur).
LOG_MIN_PHOTONS = 30.0


def detected_photons(image, mask=None, offset: float = 0.0, block: int = 4) -> dict | None:
    """How many photons a raw image's pixels hold, from its own Poisson noise (a photon-transfer estimate).

    ``image``: (H, W) raw intensities (proportional to detected photons: a detector's linear output);
    ``mask``: (H, W) weights, blocks with a weight < 1 left out.  In ``block``×``block`` blocks the
    pixels' variance over their mean is the gain (intensity units per photon) where the block is flat,
    more where it holds structure; the median over blocks is taken.  Returns ``{"per_photon": gain,
    "photons_p1": photons of the darkest 1 % of the positive pixels (a shutter or blade stored as 0 is
    not photon statistics; where photons are few, 1-count pixels come with the 0-count ones), "photons_median":
    of the median pixel}`` — the photons infinite for a noiseless image (gain 0) — or None when fewer than
    16 blocks are left.
    """
    img = as_image(image).to(torch.float64) + float(offset)
    nh, nw = img.shape[0] // block, img.shape[1] // block
    blocks = img[:nh * block, :nw * block].reshape(nh, block, nw, block).transpose(1, 2).reshape(nh, nw, -1)
    m, v = blocks.mean(-1), blocks.var(-1)
    ok = m > 0
    if mask is not None:
        mb = as_image(mask)[:nh * block, :nw * block].reshape(nh, block, nw, block).transpose(1, 2)
        ok &= mb.reshape(nh, nw, -1).amin(-1) >= 1.0
    if int(ok.sum()) < 16:
        return None
    gain = float((v[ok] / m[ok]).median())
    if gain <= 0.0:
        return {"per_photon": 0.0, "photons_p1": math.inf, "photons_median": math.inf}
    vals = blocks[ok].reshape(-1)
    pos = vals[vals > 0]  # a shutter stored as 0 is not photon statistics; few photons leave 1-count pixels too
    p1 = float(torch.kthvalue(pos, max(1, math.ceil(0.01 * pos.numel()))).values) if pos.numel() else 0.0
    return {"per_photon": gain, "photons_p1": p1 / gain, "photons_median": float(vals.median()) / gain}


#: ``photon_offset="auto"`` reads an integer image's noise as photons only where one photon is at
#: least this many grey levels (a raw 16-bit detector image: tens to thousands).
PHOTON_MIN_QUANTA = 2.0


def check_photon_offset(value) -> None:
    """Refuse a ``photon_offset`` (:func:`xraypose.preprocess.preprocess`'s) that is neither ``"auto"`` nor a
    number of photons >= 0."""
    if value != "auto" and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                and math.isfinite(value) and value >= 0):
        raise InputError(f"photon_offset must be 'auto' or a number of photons >= 0, got {value!r}")


def photons_to_add(value, est: dict | None, quantum: float, top: float) -> float:
    """Step 4's photon offset (:func:`~xraypose.preprocess.preprocess`'s checked ``photon_offset``): photons to
    add per pixel of the image the log is taken of (0: none), given ``est`` (:func:`detected_photons` of the raw
    intensities; None: not raw intensities, or unknown).  "auto" adds none to an integer image
    (``quantum`` 1) where a photon is under :data:`PHOTON_MIN_QUANTA` grey levels or whose maximum
    ``top`` fits in 8 bits: its variance is then its grey levels' (a display image's), not photons', and
    its darkest levels are dequantised instead (step 3)."""
    if est is None or not est["per_photon"] > 0:
        return 0.0
    if value != "auto":
        return float(value)
    counted = est["per_photon"] >= PHOTON_MIN_QUANTA * quantum and not (quantum and top <= 255)
    return 0.5 if counted and est["photons_p1"] < LOG_MIN_PHOTONS else 0.0
