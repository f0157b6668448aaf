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
3. **tools** (off by default; ``tools = true``): wires, screws and blade edges of metal drawn in
   (:func:`draw_tools`);
4. **collimator**: random borders marked invalid;
5. min–max to [0, 1] over the valid pixels (:func:`xraypose.model.normalize_images`'s rule);
6. **gamma**, **blur**, **noise** in [0, 1] (each switchable);
7. invalid pixels set to the fill value and ``(x − mean)/std``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

from xraypose._checks import check_flag, check_number, check_vector, config_error
from xraypose._kernels import gaussian_weights, three_sigma_radius
from xraypose.camera import Camera
from xraypose.geometry import so3_exp

__all__ = [
    "combine_basis", "draw_multipliers", "warp_about_source", "collimator_mask", "minmax_valid", "random_gamma", "random_blur",
    "random_noise", "draw_tools", "AugmentConfig", "Augmenter", "Augmented",
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


def draw_tools(img: torch.Tensor, prob: float, max_objects: int, g: torch.Generator) -> torch.Tensor:
    """Metal that is not in the CT drawn into line-integral images (B, 1, H, W): for a fraction ``prob``
    of the images, 1 to ``max_objects`` objects, each a wire or screw (a segment 0.25–1 image across,
    a cylinder's chord profile of radius 0.5–4 px at 256 rows, scaled with the size) or, one time in
    four, a retractor blade's edge (a half-plane with a one-pixel ramp).  Their attenuation is
    0.3–1.5 (wires) or 0.2–1.0 (blades) of the image's range, added: metal only ever attenuates.
    Teaches a pose regressor that such shapes are not anatomy (one trained without them starts
    72–331 mm off on the appearance benchmark's implant X-rays)."""
    B, _, H, W = img.shape
    if prob <= 0 or max_objects < 1:
        return img
    use = torch.rand(B, generator=g) < prob
    counts = torch.randint(1, max_objects + 1, (B,), generator=g)
    span = (img.amax(dim=(1, 2, 3)) - img.amin(dim=(1, 2, 3))).to(torch.float32)
    scale = max(H, W) / 256.0
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                            indexing="ij")
    out = img.clone()
    for b in torch.nonzero(use).reshape(-1).tolist():
        add = torch.zeros(H, W, dtype=torch.float32)
        for _ in range(int(counts[b])):
            u = torch.rand(6, generator=g).tolist()
            cx, cy = u[0] * (W - 1), u[1] * (H - 1)
            t = u[2] * math.pi
            dx, dy = math.cos(t), math.sin(t)
            if u[3] < 0.25:  # a blade's edge: a half-plane
                sd = (xx - cx) * dy - (yy - cy) * dx
                add += (0.2 + 0.8 * u[4]) * float(span[b]) * (sd + 0.5).clamp(0, 1)
                continue
            half = 0.5 * (0.25 + 0.75 * u[4]) * max(H, W)
            true_radius = (0.5 + 3.5 * u[5]) * scale
            radius = max(true_radius, 0.75)  # thinner than a pixel: its attenuation spread over one
            along = ((xx - cx) * dx + (yy - cy) * dy).clamp(-half, half)
            d2 = (xx - cx - along * dx) ** 2 + (yy - cy - along * dy) ** 2
            amp = (0.3 + 1.2 * float(torch.rand(1, generator=g))) * float(span[b]) * true_radius / radius
            add += amp * (1 - d2 / radius ** 2).clamp_min(0).sqrt()
        out[b, 0] += add.to(out)
    return out


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
    tools: bool = False  # metal not in the CT drawn in (draw_tools)
    tools_prob: float = 0.3
    tools_max: int = 3

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """InputError naming the first setting out of its range (``config: augment.gamma_max = ...``)."""
        for k in ("enabled", "bone_multiplier_log", "source_rotation", "collimator", "gamma", "blur", "noise",
                  "tools"):  # a switch given as the text "false" would be true: that augmentation on
            check_flag(f"augment.{k}", getattr(self, k))
        check_vector("augment.bone_multiplier", self.bone_multiplier, n=2, lo=0)
        if not 0 < self.bone_multiplier[0] <= self.bone_multiplier[1]:
            config_error("augment.bone_multiplier", self.bone_multiplier, "must be [lo, hi] with 0 < lo <= hi")
        check_vector("augment.source_rotation_std", self.source_rotation_std, lo=0)
        if max(self.source_rotation_std) > 0.3:
            config_error("augment.source_rotation_std", self.source_rotation_std, "must be <= 0.3 rad")
        for k in ("collimator_prob", "gamma_prob", "blur_prob", "noise_prob", "tools_prob"):
            check_number(f"augment.{k}", getattr(self, k), lo=0, hi=1)
        check_number("augment.collimator_max_frac", self.collimator_max_frac, lo=0, hi=0.4)
        check_number("augment.gamma_max", self.gamma_max, lo=1, hi=4)
        check_number("augment.blur_max_sigma_px", self.blur_max_sigma_px, lo=0, hi=10)
        check_number("augment.noise_max_std", self.noise_max_std, lo=0, hi=1)
        if isinstance(self.tools_max, bool) or not isinstance(self.tools_max, int) or not 1 <= self.tools_max <= 10:
            config_error("augment.tools_max", self.tools_max, "must be a whole number from 1 to 10")


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
        if self.enabled and s.tools:
            img = draw_tools(img, s.tools_prob, s.tools_max, g)
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
