"""Array arguments as tensors (internal): an X-ray image, a batch of them, any array of real numbers.

Each refuses what is not one in a line naming the argument (:class:`xraypose.errors.InputError`); apart from
:mod:`xraypose._checks` because they need PyTorch, which the command line's option checks do not load.
:mod:`xraypose.preprocess` re-exports them (their public home).
"""

from __future__ import annotations

import numpy as np
import torch

from xraypose._checks import check_not_meta, is_numeric_dtype
from xraypose.errors import InputError

__all__ = ["as_image", "as_real_tensor", "image_batch"]


def as_image(img, what: str = "X-ray image") -> torch.Tensor:
    """``(H, W)`` float tensor from an array/tensor of shape (H, W), (1, H, W) or (1, 1, H, W)."""
    if isinstance(img, np.ndarray):
        if not is_numeric_dtype(img.dtype):
            raise InputError(f"{what} must be numeric, got dtype {img.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(img))
    elif isinstance(img, torch.Tensor):
        t = img.detach()
    else:
        raise InputError(f"{what} must be a numpy array or torch tensor, got {type(img).__name__}")
    shape = tuple(t.shape)
    while t.dim() > 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 2:
        raise InputError(f"{what} must be one 2D image (H, W), got shape {shape}")
    if 0 in t.shape:
        raise InputError(f"{what} is empty (shape {shape})")
    if t.is_complex():
        raise InputError(f"{what} has complex values")
    if not t.is_floating_point():
        t = t.to(torch.float64 if t.dtype in (torch.int32, torch.int64) else torch.float32)
    return t


def as_real_tensor(value, what: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.as_tensor(value, dtype)`` of an array argument (an image, a mask, poses, points); an
    :class:`InputError` naming ``what`` when it holds no numbers (a text, a file name, an object array: torch's
    TypeError) or complex ones (a cast to a real dtype dropped their imaginary part with a warning)."""
    if isinstance(value, (torch.Tensor, np.ndarray)) and (
            value.is_complex() if isinstance(value, torch.Tensor) else np.iscomplexobj(value)):
        raise InputError(f"{what} must hold real numbers, got {value.dtype}")
    try:
        t = torch.as_tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError):
        kind = f" of {value.dtype}" if isinstance(value, np.ndarray) else ""
        raise InputError(f"{what} must be an array or tensor of numbers, got {type(value).__name__}{kind}") from None
    if t.is_complex():
        raise InputError(f"{what} must hold real numbers, got {t.dtype}")
    check_not_meta(what, t)
    return t


def image_batch(image, what: str = "X-ray") -> torch.Tensor:
    """``image`` as a batch ``(B, 1, H, W)``: (H, W) → (1, 1, H, W), (B, H, W) → (B, 1, H, W), (B, 1, H, W)
    as it is (a tensor, the dtype kept); :class:`InputError` naming ``what`` for any other shape, or for
    values that are no real numbers (:func:`as_real_tensor`)."""
    img = as_real_tensor(image, what)
    if img.dim() == 2:
        img = img[None, None]
    elif img.dim() == 3:
        img = img[:, None]
    if img.dim() != 4 or img.shape[1] != 1:
        raise InputError(f"{what} must be (H, W), (B, H, W) or (B, 1, H, W), got shape {tuple(img.shape)}")
    return img
