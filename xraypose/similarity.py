"""Image similarity between DRRs and X-rays: NCC, patch NCC, multiscale NCC, gradient NCC.

All functions take images (B, C, H, W) and return one score per batch element
(B,), 1 for identical images up to an affine intensity change.  A constant
image has no defined NCC: its score is 0 (the ``eps`` in the denominators),
and :func:`check_image` turns such an input into a clear error before an
optimisation starts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xraypose._checks import check_number
from xraypose.errors import InputError

__all__ = [
    "ncc", "patch_ncc", "multiscale_ncc", "gradient_ncc", "MultiscaleNCC", "GradientNCC", "check_image",
    "SIMILARITIES", "make_similarity",
]

_EPS = 1e-8


def _standardise(x: torch.Tensor, dims) -> torch.Tensor:
    x = x - x.mean(dim=dims, keepdim=True)
    return x / (x.pow(2).mean(dim=dims, keepdim=True) + _EPS).sqrt()


def ncc(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Zero-normalised cross-correlation over (C, H, W); (B,) in [−1, 1]."""
    _check_pair(x, y)
    dims = tuple(range(1, x.dim()))
    return (_standardise(x, dims) * _standardise(y, dims)).mean(dim=dims)


def patch_ncc(x: torch.Tensor, y: torch.Tensor, patch_size: int = 13) -> torch.Tensor:
    """Mean NCC over non-overlapping ``patch_size``² patches (the border that does not fill a patch is dropped)."""
    _check_pair(x, y)
    check_number("patch_size", patch_size, lo=1, integer=True, prefix="")  # 0 or 2.5: torch's unfold errors
    patch_size = int(patch_size)
    B, C, H, W = x.shape
    if patch_size > min(H, W):
        return ncc(x, y)
    px = F.unfold(x, patch_size, stride=patch_size)  # (B, C·p², L)
    py = F.unfold(y, patch_size, stride=patch_size)
    return (_standardise(px, (1,)) * _standardise(py, (1,))).mean(dim=1).mean(dim=-1)


def multiscale_ncc(x, y, patch_sizes=(None, 13), weights=(0.5, 0.5)) -> torch.Tensor:
    """Weighted sum of whole-image NCC (patch size None) and patch NCCs (DiffPose's mNCC)."""
    if len(patch_sizes) != len(weights):
        raise InputError(f"{len(patch_sizes)} patch sizes but {len(weights)} weights")
    total = 0.0
    for p, w in zip(patch_sizes, weights):
        total = total + w * (ncc(x, y) if p is None else patch_ncc(x, y, int(p)))
    return total


def _sobel(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, 2C, H−2, W−2) Sobel derivatives along u and v."""
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=x.dtype, device=x.device)
    C = x.shape[1]
    weight = torch.stack([k, k.T]).unsqueeze(1).repeat(C, 1, 1, 1)  # (2C, 1, 3, 3)
    return F.conv2d(x, weight, groups=C)


def gradient_ncc(x: torch.Tensor, y: torch.Tensor, patch_size: int | None = None) -> torch.Tensor:
    """NCC of the Sobel gradient images (both directions), optionally per patch."""
    _check_pair(x, y)
    if min(x.shape[-2:]) < 3:  # torch's "Kernel size can't be greater than actual input size"
        raise InputError(f"gradient NCC needs images of at least 3 × 3 pixels (its Sobel filter's), got "
                         f"{x.shape[-2]} × {x.shape[-1]}")
    gx, gy = _sobel(x), _sobel(y)
    if patch_size is None:
        return ncc(gx, gy)
    return patch_ncc(gx, gy, patch_size)


class MultiscaleNCC(torch.nn.Module):
    """Callable mNCC with fixed patch sizes and weights (default: whole image + 13×13, 0.5/0.5)."""

    def __init__(self, patch_sizes=(None, 13), weights=(0.5, 0.5)):
        super().__init__()
        self.patch_sizes, self.weights = tuple(patch_sizes), tuple(weights)

    def forward(self, x, y):
        return multiscale_ncc(x, y, self.patch_sizes, self.weights)


class GradientNCC(torch.nn.Module):
    def __init__(self, patch_size: int | None = None):
        super().__init__()
        self.patch_size = patch_size

    def forward(self, x, y):
        return gradient_ncc(x, y, self.patch_size)


class MixedNCC(torch.nn.Module):
    """``alpha``·mNCC + (1 − alpha)·gradient NCC."""

    def __init__(self, alpha: float = 0.5, patch_sizes=(None, 13), weights=(0.5, 0.5)):
        super().__init__()
        self.alpha = float(alpha)
        self.mncc = MultiscaleNCC(patch_sizes, weights)

    def forward(self, x, y):
        return self.alpha * self.mncc(x, y) + (1 - self.alpha) * gradient_ncc(x, y)


SIMILARITIES = ("mncc", "ncc", "gncc", "mixed")


def make_similarity(name: str = "mncc", **kwargs) -> torch.nn.Module:
    """Similarity module by name: mncc (default), ncc, gncc, mixed."""
    if name == "mncc":
        return MultiscaleNCC(**kwargs)
    if name == "ncc":
        return MultiscaleNCC(patch_sizes=(None,), weights=(1.0,))
    if name == "gncc":
        return GradientNCC(**kwargs)
    if name == "mixed":
        return MixedNCC(**kwargs)
    raise InputError(f"unknown similarity {name!r}; choose one of: {', '.join(SIMILARITIES)}")


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    for name, v in (("x", x), ("y", y)):  # an array raised AttributeError ('dim'), an integer tensor torch's mean()
        if not (isinstance(v, torch.Tensor) and v.is_floating_point()):
            got = f"a tensor of {v.dtype}" if isinstance(v, torch.Tensor) else type(v).__name__
            raise InputError(f"images to compare must be floating-point tensors (B, C, H, W), got {got} for {name}")
    if x.shape != y.shape:
        raise InputError(f"images to compare have different shapes: {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() != 4:
        raise InputError(f"images must be (B, C, H, W), got shape {tuple(x.shape)}")


def check_image(img: torch.Tensor, what: str = "X-ray") -> None:
    """Raise InputError for an image that similarity cannot use: empty, NaN/inf, or constant."""
    if img.numel() == 0 or min(img.shape[-2:]) == 0:
        raise InputError(f"{what} is empty (zero-size image {tuple(img.shape)})")
    n_bad = int((~torch.isfinite(img)).sum())
    if n_bad:
        raise InputError(f"{what} has {n_bad} NaN or infinite pixels")
    flat = img.reshape(*img.shape[:-2], -1) if img.dim() > 2 else img.reshape(1, -1)
    if bool((flat.amax(-1) == flat.amin(-1)).any()):
        v = float(flat.reshape(-1)[0])
        raise InputError(f"{what} is constant (every pixel = {v:g}); its normalised cross-correlation is undefined")
