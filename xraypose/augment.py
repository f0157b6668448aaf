"""Training-image transforms: bone contrast, exact pose warps, collimator, gamma, blur, noise.

Everything is batched with per-image random parameters drawn from an explicit
``torch.Generator`` (so a training step is reproducible from its seed).

Order used by training (:class:`Augmenter`):

1. **bone contrast**: a DRR basis ``(A, B)`` (rendered once) gives the DRR for
   any ``bone_attenuation_multiplier`` m: ``A + m·B`` (the density model's
   normalising divisor is irrelevant after min–max), m ~ U(lo, hi) per image;
2. **rotation about the source** (exact): turning the C-arm about its X-ray
   source by R keeps every ray, so the DRR at pose ``T·R`` is the DRR at ``T``
   resampled by the homography ``K R K⁻¹`` — a new training pose for free
   (pixels whose rays were not rendered become invalid);
3. **collimator**: random borders marked invalid;
4. min–max to [0, 1] over the valid pixels (:func:`xraypose.model.normalize_images`'s rule);
5. **gamma**, **blur**, **noise** in [0, 1] (each switchable);
6. invalid pixels set to the fill value and ``(x − mean)/std``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

from xraypose._checks import check_number, check_vector, config_error
from xraypose._kernels import gaussian_weights, three_sigma_radius
from xraypose.camera import Camera
from xraypose.geometry import so3_exp

__all__ = [
    "combine_basis", "draw_multipliers", "warp_about_source", "collimator_mask", "minmax_valid", "random_gamma", "random_blur",
    "random_noise", "AugmentConfig", "Augmenter", "Augmented",
]


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float32)


def draw_multipliers(n: int, bounds, log: bool, g: torch.Generator) -> torch.Tensor:
    """``n`` bone multipliers, uniform (or log-uniform) in ``bounds``."""
    lo, hi = float(bounds[0]), float(bounds[1])
    if log:
        return torch.exp(_uniform(n, math.log(lo), math.log(hi), g))
    return _uniform(n, lo, hi, g)


def combine_basis(basis: torch.Tensor, multiplier: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) basis line integrals (C = 1 or 2) → (B, 1, H, W) ``A + m·B``."""
    if basis.shape[1] == 1:
        return basis
    return basis[:, :1] + multiplier.to(basis).view(-1, 1, 1, 1) * basis[:, 1:2]


def warp_about_source(images: torch.Tensor, camera: Camera, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of the same source with the camera turned by ``R`` (B, 3, 3): pose ``T → T·[R 0; 0 1]``.

    A pixel p' of the new camera looks along ``K⁻¹p'`` in its frame, i.e. along
    ``R K⁻¹ p'`` in the old camera frame, where the old image holds it at
    ``p = K R K⁻¹ p'``.  Exact for line integrals (the rays are the same).
    Returns the warped images (B, C, H, W) and the valid mask (B, 1, H, W).
    """
    B, C, H, W = images.shape
    K = camera.K(torch.float64)
    Hm = K @ R.to(torch.float64) @ camera.K_inv(torch.float64)  # (B, 3, 3)
    uv = camera.pixel_grid(dtype=torch.float64)
    p = torch.cat([uv, torch.ones_like(uv[:, :1])], -1) @ Hm.transpose(-1, -2)  # (B, HW, 3)
    src = p[..., :2] / p[..., 2:3]
    valid = (p[..., 2] > 0) & (src[..., 0] >= -0.5) & (src[..., 0] <= W - 0.5) & (src[..., 1] >= -0.5) \
        & (src[..., 1] <= H - 0.5)
    grid = torch.stack([(2 * src[..., 0] + 1) / W - 1, (2 * src[..., 1] + 1) / H - 1], -1)
    grid = grid.reshape(B, H, W, 2).to(images.dtype).to(images.device)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out, valid.reshape(B, 1, H, W).to(images.device)


def collimator_mask(B: int, H: int, W: int, prob: float, max_frac: float, g: torch.Generator) -> torch.Tensor:
    """(B, 1, H, W) bool: True inside a random rectangular collimator opening (per side ≤ max_frac of the size)."""
    apply = torch.rand(B, generator=g) < prob
    f = torch.rand(B, 4, generator=g) * max_frac * apply[:, None]
    top = (f[:, 0] * H).floor().long()
    bottom = H - (f[:, 1] * H).floor().long()
    left = (f[:, 2] * W).floor().long()
    right = W - (f[:, 3] * W).floor().long()
    rows = torch.arange(H)[None, :]
    cols = torch.arange(W)[None, :]
    r_ok = (rows >= top[:, None]) & (rows < bottom[:, None])
    c_ok = (cols >= left[:, None]) & (cols < right[:, None])
    return (r_ok[:, :, None] & c_ok[:, None, :])[:, None]


def minmax_valid(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Min–max each image to [0, 1] over its valid pixels (the model's input rule); invalid pixels → 0."""
    from xraypose.model import normalize_images

    return normalize_images(x, valid, mean=0.0, std=1.0, fill=0.0)


def random_gamma(x: torch.Tensor, max_gamma: float, prob: float, g: torch.Generator) -> torch.Tensor:
    """``x^γ`` on [0, 1] images, log γ ~ U(−log max_gamma, log max_gamma), for a fraction ``prob``."""
    B = x.shape[0]
    lg = _uniform(B, -math.log(max_gamma), math.log(max_gamma), g)
    lg = torch.where(torch.rand(B, generator=g) < prob, lg, torch.zeros_like(lg))
    return x.clamp_min(0).pow(lg.exp().view(B, 1, 1, 1).to(x))


def random_blur(x: torch.Tensor, max_sigma_px: float, prob: float, g: torch.Generator) -> torch.Tensor:
    """Gaussian blur with σ ~ U(0, max_sigma_px) pixels per image (a fraction ``prob`` of the images)."""
    B, C, H, W = x.shape
    sig = _uniform(B, 0.0, max_sigma_px, g) * (torch.rand(B, generator=g) < prob)
    if float(sig.max()) < 0.05:
        return x
    r = three_sigma_radius(float(sig.max()))
    k = gaussian_weights(sig.clamp_min(1e-3)[:, None], r, torch.float32)  # (B, 2r + 1)
    centre = torch.arange(-r, r + 1) == 0
    k = torch.where(sig[:, None] < 0.05, centre[None].float(), k)
    k = (k / k.sum(1, keepdim=True)).to(x)
    y = x.reshape(1, B * C, H, W)
    kk = k.repeat_interleave(C, 0)
    y = F.pad(y, (r, r, r, r), mode="replicate")
    y = F.conv2d(y, kk.view(B * C, 1, 1, -1), groups=B * C)
    y = F.conv2d(y, kk.view(B * C, 1, -1, 1), groups=B * C)
    return y.reshape(B, C, H, W)


def random_noise(x: torch.Tensor, max_std: float, prob: float, g: torch.Generator) -> torch.Tensor:
    """Additive Gaussian noise with std ~ U(0, max_std) (image units, [0, 1] range), a fraction ``prob``."""
    B = x.shape[0]
    s = _uniform(B, 0.0, max_std, g) * (torch.rand(B, generator=g) < prob)
    return x + s.view(B, 1, 1, 1).to(x) * torch.randn(x.shape, generator=g, dtype=torch.float32).to(x)


@dataclass
class AugmentConfig:
    """Switches and ranges of the training augmentations: the ``[augment]`` table of a training
    config (:class:`xraypose.train.TrainConfig`)."""

    enabled: bool = True
    bone_multiplier: list = field(default_factory=lambda: [1.0, 10.0])
    bone_multiplier_log: bool = False  # draw m log-uniformly (equal weight to each factor of contrast)
    source_rotation: bool = True
    source_rotation_std: list = field(default_factory=lambda: [0.02, 0.02, 0.05])  # rad about camera x, y, z
    collimator: bool = True
    collimator_prob: float = 0.5
    collimator_max_frac: float = 0.12
    gamma: bool = True
    gamma_prob: float = 0.5
    gamma_max: float = 1.4
    blur: bool = True
    blur_prob: float = 0.5
    blur_max_sigma_px: float = 1.0
    noise: bool = True
    noise_prob: float = 0.5
    noise_max_std: float = 0.02

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """InputError naming the first setting out of its range (``config: augment.gamma_max = ...``)."""
        check_vector("augment.bone_multiplier", self.bone_multiplier, n=2, lo=0)
        if not 0 < self.bone_multiplier[0] <= self.bone_multiplier[1]:
            config_error("augment.bone_multiplier", self.bone_multiplier, "must be [lo, hi] with 0 < lo <= hi")
        check_vector("augment.source_rotation_std", self.source_rotation_std, lo=0)
        if max(self.source_rotation_std) > 0.3:
            config_error("augment.source_rotation_std", self.source_rotation_std, "must be <= 0.3 rad")
        for k in ("collimator_prob", "gamma_prob", "blur_prob", "noise_prob"):
            check_number(f"augment.{k}", getattr(self, k), lo=0, hi=1)
        check_number("augment.collimator_max_frac", self.collimator_max_frac, lo=0, hi=0.4)
        check_number("augment.gamma_max", self.gamma_max, lo=1, hi=4)
        check_number("augment.blur_max_sigma_px", self.blur_max_sigma_px, lo=0, hi=10)
        check_number("augment.noise_max_std", self.noise_max_std, lo=0, hi=1)


class Augmented(NamedTuple):
    """A batch made ready for the network (:class:`Augmenter`)."""

    x: torch.Tensor  #: (B, 1, H, W) the network input (augmented, normalised)
    clean: torch.Tensor  #: (B, 1, H, W) the clean image in [0, 1]
    valid: torch.Tensor  #: (B, 1, H, W) bool, the pixels that hold image (not the fill of a warp)
    poses: torch.Tensor  #: (B, 4, 4) the target camera_to_world poses (moved by a source rotation)
    m: torch.Tensor  #: (B,) the bone multipliers drawn


class Augmenter:
    """Turns rendered DRR bases and their poses into network inputs and (possibly new) target poses."""

    def __init__(self, settings: AugmentConfig, camera: Camera, mean: float, std: float):
        self.s, self.camera, self.mean, self.std = settings, camera, float(mean), float(std)
        self.enabled = settings.enabled

    def __call__(self, basis: torch.Tensor, poses: torch.Tensor, g: torch.Generator) -> Augmented:
        """Returns (network input (B,1,H,W), clean [0,1] image (B,1,H,W), valid (B,1,H,W), poses (B,4,4), m (B,))."""
        s = self.s
        B, _, H, W = basis.shape
        m = draw_multipliers(B, s.bone_multiplier, s.bone_multiplier_log, g)
        img = combine_basis(basis, m.to(basis.device))
        valid = torch.ones(B, 1, H, W, dtype=torch.bool, device=img.device)
        if self.enabled and s.source_rotation and max(s.source_rotation_std) > 0:
            omega = torch.randn(B, 3, generator=g, dtype=torch.float64) * torch.tensor(s.source_rotation_std,
                                                                                      dtype=torch.float64)
            R = so3_exp(omega)
            img, valid = warp_about_source(img, self.camera, R)
            Rh = torch.eye(4, dtype=torch.float64).repeat(B, 1, 1)
            Rh[:, :3, :3] = R
            poses = (poses.to(torch.float64) @ Rh.to(poses.device)).to(poses.dtype)
        if self.enabled and s.collimator:
            valid = valid & collimator_mask(B, H, W, s.collimator_prob, s.collimator_max_frac, g).to(valid.device)
        clean = minmax_valid(img, valid)
        x = clean
        if self.enabled and s.gamma:
            x = random_gamma(x, s.gamma_max, s.gamma_prob, g)
        if self.enabled and s.blur:
            x = random_blur(x, s.blur_max_sigma_px, s.blur_prob, g)
        if self.enabled and s.noise:
            x = random_noise(x, s.noise_max_std, s.noise_prob, g)
        x = torch.where(valid, x, torch.zeros_like(x))
        return Augmented((x - self.mean) / self.std, clean, valid, poses, m)
