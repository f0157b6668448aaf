"""Realistic synthetic X-rays from a CT, rendered NOT the way registration renders.

To avoid the "inverse crime" (testing registration on images made by its own
forward model), a synthetic X-ray is made with:

1. Siddon's exact line integrals (registration uses trilinear) on a detector of
   ``supersample``× the resolution, area-averaged to the detector pixels;
2. the physical μ model (1/mm, ~70 keV; registration uses the DiffPose "hu" model);
3. a blurred focal spot (Gaussian, ``blur_px`` σ in detector pixels);
4. Beer–Lambert intensities I = I0·exp(−L) with Poisson noise at ``photons``
   per pixel (unattenuated), scaled to 16 bits and quantised;
5. a collimator border of ``collimator_px`` pixels per edge where almost no
   photons arrive.

The output is the raw detector image (float tensor of 16-bit integer values,
bone dark), as a real radiograph would be stored; the real-X-ray preprocessing
(crop, log, rescale) then turns it into what registration sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from xraypose._checks import check_instance, check_number
from xraypose._kernels import gaussian_kernel1d
from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.preprocess import as_real_tensor
from xraypose.render import DRR

if TYPE_CHECKING:
    from xraypose.volume import Volume

__all__ = ["XraySimulator", "SimulatedXray"]


@dataclass
class SimulatedXray:
    raw: torch.Tensor  # (B, 1, H, W) 16-bit-like intensities (float holding integers), bone dark
    line_integrals: torch.Tensor  # (B, 1, H, W) the noiseless, unblurred ∫μ dl (physical model)
    i0: float  # the 16-bit value of an unattenuated pixel
    collimator_px: int


class XraySimulator:
    """Makes realistic X-rays of a volume through a camera.

    Args:
        volume, camera: the CT and the detector.
        supersample: detector oversampling factor for the area average (>= 1).
        photons: unattenuated photon count per pixel (Poisson noise); 0 disables noise.
        blur_px: focal-spot blur σ, detector pixels (0 disables).
        collimator_px: dark border width, pixels per edge.
        i0: 16-bit value of an unattenuated pixel (≤ 65535).
        density: attenuation model ("physical" by default, unlike registration's "hu").
    """

    def __init__(self, volume: Volume, camera: Camera, supersample: int = 2, photons: float = 1e5, blur_px: float = 0.7,
                 collimator_px: int = 0, i0: float = 65000.0, density: str = "physical", renderer: str = "siddon"):
        check_instance("camera", camera, Camera)
        # a negative or NaN photon count or blur turned them off, a text '1e5' was read, supersample 1.5 was 1
        check_number("supersample", supersample, lo=1, integer=True, prefix="")
        check_number("photons", photons, lo=0, prefix="")
        check_number("blur_px", blur_px, lo=0, prefix="")
        check_number("collimator_px", collimator_px, lo=0, integer=True, prefix="")
        check_number("i0", i0, lo=0, lo_open=True, hi=65535, prefix="")
        if 2 * collimator_px >= min(camera.height, camera.width):
            raise InputError(f"collimator border of {collimator_px} px leaves no image on a {camera.height}×{camera.width} detector")
        self.camera, self.s = camera, int(supersample)
        self.photons, self.blur_px, self.collimator_px, self.i0 = float(photons), float(blur_px), int(collimator_px), float(i0)
        fine = camera.resize(camera.height * self.s, camera.width * self.s)
        self.drr = DRR(volume, fine, density=density, renderer=renderer)

    @torch.no_grad()
    def __call__(self, camera_to_world: torch.Tensor, generator: torch.Generator | None = None) -> SimulatedXray:
        T = as_real_tensor(camera_to_world, "camera_to_world")
        if T.dim() not in (2, 3) or tuple(T.shape[-2:]) != (4, 4):  # (torch's reshape error)
            raise InputError(f"camera_to_world must be (4, 4) or (B, 4, 4), got shape {tuple(T.shape)}")
        T = T.reshape(-1, 4, 4)
        L = self.drr(T.to(torch.float64)).float()
        L = F.avg_pool2d(L, self.s) if self.s > 1 else L  # area average to detector pixels
        clean = L.clone()
        I = torch.exp(-L)
        if self.blur_px > 0:
            r = max(1, int(3 * self.blur_px + 0.5))
            k = gaussian_kernel1d(self.blur_px, r, torch.float32)
            I = F.pad(I, (r, r, r, r), mode="replicate")
            I = F.conv2d(F.conv2d(I, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
        if self.photons > 0:
            I = torch.poisson(I * self.photons, generator=generator) / self.photons
        if self.collimator_px:
            c = self.collimator_px
            border = torch.ones_like(I, dtype=torch.bool)
            border[..., c:-c, c:-c] = False
            I = torch.where(border, I * 0.02, I)
        raw = torch.clamp(torch.round(I * self.i0), 1, 65535)
        return SimulatedXray(raw=raw, line_integrals=clean, i0=self.i0, collimator_px=self.collimator_px)
