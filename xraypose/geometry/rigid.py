"""Rigid 4×4 transforms: build, split, compose, invert, apply, validate.

A rigid transform is ``T = [[R, t], [0, 0, 0, 1]]`` with ``R ∈ SO(3)`` and
``t`` in mm.  Poses in xraypose are ``camera_to_world`` transforms, so ``t`` is
the camera (X-ray source) position in world (CT RAS mm) coordinates.
All functions broadcast over leading dimensions ``(...)`` and keep dtype and
device.
"""

from __future__ import annotations

from functools import reduce

import numpy as np
import torch

from ..errors import InputError
from ._numerics import check_last_dim, check_matrix

__all__ = [
    "make_transform",
    "split_transform",
    "compose",
    "invert",
    "apply",
    "apply_rotation",
    "as_transform",
    "check_rigid",
]


def make_transform(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Assemble ``[[R, t], [0, 0, 0, 1]]``.

    Args:
        R: ``(..., 3, 3)`` rotation.
        t: ``(..., 3)`` translation (mm).  Leading dims broadcast with ``R``'s.
    Returns:
        ``(..., 4, 4)``.
    """
    check_matrix(R, 3, "R")
    check_last_dim(t, 3, "t")
    dtype = torch.result_type(R, t)
    batch = R.shape[:-2] if R.shape[:-2] == t.shape[:-1] else torch.broadcast_shapes(R.shape[:-2], t.shape[:-1])
    T = torch.zeros(tuple(batch) + (4, 4), dtype=dtype, device=R.device)  # written in place: few operations
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def split_transform(T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``T (..., 4, 4)`` into ``R (..., 3, 3)`` and ``t (..., 3)`` (views)."""
    check_matrix(T, 4, "T")
    return T[..., :3, :3], T[..., :3, 3]


def compose(*Ts: torch.Tensor) -> torch.Tensor:
    """Matrix product left to right: ``compose(A, B, C) == A @ B @ C``.

    So ``apply(compose(A, B), p) == apply(A, apply(B, p))`` (B acts first).
    Leading dims broadcast.
    """
    if not Ts:
        raise InputError("compose() needs at least one transform")
    for i, T in enumerate(Ts):
        check_matrix(T, 4, f"transform {i}")
    return reduce(torch.matmul, Ts)


def invert(T: torch.Tensor) -> torch.Tensor:
    """Inverse of a rigid transform in closed form: ``[[Rᵀ, -Rᵀt], [0, 1]]``.

    Args:
        T: ``(..., 4, 4)`` rigid transform (rigidity is assumed, not checked).
    Returns:
        ``(..., 4, 4)``.
    """
    R, t = split_transform(T)
    Rt = R.transpose(-1, -2)
    return make_transform(Rt, -(Rt @ t[..., None])[..., 0])


def _check_points(points: torch.Tensor, name: str) -> None:
    if not isinstance(points, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(points).__name__}")
    if points.ndim < 2 or points.shape[-1] != 3:
        raise InputError(f"{name} must have shape (..., N, 3), got {tuple(points.shape)}")


def apply(T: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Transform points: ``R p + t``.

    Args:
        T: ``(..., 4, 4)``; broadcast over the ``N`` points.
        points: ``(..., N, 3)`` (mm).
    Returns:
        ``(..., N, 3)`` with leading dims broadcast between ``T`` and ``points``.
    """
    _check_points(points, "points")
    R, t = split_transform(T)
    return points @ R.transpose(-1, -2) + t[..., None, :]


def apply_rotation(T: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Rotate direction vectors by the rotation part of ``T`` (no translation).

    Args:
        T: ``(..., 4, 4)``.
        vectors: ``(..., N, 3)``.
    Returns:
        ``(..., N, 3)``.
    """
    _check_points(vectors, "vectors")
    R, _ = split_transform(T)
    return vectors @ R.transpose(-1, -2)


def _where(batch_shape: tuple[int, ...], bad: torch.Tensor) -> str:
    """`` (pose i)`` naming the first failing pose in a batch, or ``""``."""
    if len(batch_shape) == 0 or int(np.prod(batch_shape)) == 1:
        return ""
    flat = int(torch.nonzero(bad.reshape(-1))[0, 0])
    index = np.unravel_index(flat, batch_shape)
    index = index[0] if len(index) == 1 else tuple(int(i) for i in index)
    return f" (pose {index})"


def check_rigid(T, atol: float = 1e-4) -> None:
    """Raise :class:`~xraypose.errors.InputError` unless ``T`` holds rigid transforms.

    Checks, in order: shape ``(..., 4, 4)``, finite entries, last row
    ``[0, 0, 0, 1]``, ``RᵀR = I`` (max abs error ``<= atol``) and
    ``det(R) = +1`` (no reflection).  The message names the first failure and,
    for batches, the index of the first offending pose.

    Args:
        T: tensor / array-like ``(..., 4, 4)``.
        atol: absolute tolerance for the last row and for ``RᵀR - I``.
    """
    if not isinstance(T, torch.Tensor):
        try:
            T = torch.as_tensor(np.asarray(T, dtype=np.float64))
        except (TypeError, ValueError):
            raise InputError("not a rigid transform: not a rectangular numeric array") from None
    if T.ndim < 2 or tuple(T.shape[-2:]) != (4, 4):
        raise InputError(
            f"not a rigid transform: expected shape (..., 4, 4), got {tuple(T.shape)}"
        )
    if T.is_complex() or T.dtype == torch.bool:
        raise InputError(f"not a rigid transform: dtype {T.dtype} is not real")
    batch = tuple(T.shape[:-2])
    if T.numel() == 0:
        return
    T = T.detach().to(torch.float64)

    bad = ~torch.isfinite(T).all(dim=-1).all(dim=-1)
    if bool(bad.any()):
        raise InputError(f"not a rigid transform: contains NaN or inf{_where(batch, bad)}")

    last = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=T.dtype, device=T.device)
    row_err = (T[..., 3, :] - last).abs().amax(-1)
    bad = row_err > atol
    if bool(bad.any()):
        i = int(torch.nonzero(bad.reshape(-1))[0, 0])
        got = [round(float(v), 6) for v in T[..., 3, :].reshape(-1, 4)[i]]
        raise InputError(
            f"not a rigid transform: last row is {got}, expected [0, 0, 0, 1]"
            f"{_where(batch, bad)}"
        )

    R = T[..., :3, :3]
    eye = torch.eye(3, dtype=T.dtype, device=T.device)
    orth_err = (R.transpose(-1, -2) @ R - eye).abs().amax(-1).amax(-1)
    bad = orth_err > atol
    if bool(bad.any()):
        err = float(orth_err.reshape(-1)[bad.reshape(-1)][0])
        raise InputError(
            "not a rigid transform: rotation part is not orthonormal "
            f"(max error {err:.3g}){_where(batch, bad)}"
        )

    det = torch.linalg.det(R)
    bad = det < 0
    if bool(bad.any()):
        d = float(det.reshape(-1)[bad.reshape(-1)][0])
        raise InputError(
            f"not a rigid transform: rotation part is a reflection (det = {d:.3g})"
            f"{_where(batch, bad)}"
        )


def as_transform(x, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """Convert and validate pose(s) to a ``(B, 4, 4)`` tensor.

    Accepts a torch tensor, numpy array or nested lists of shape ``(4, 4)``
    (returned as ``B = 1``) or ``(B, 4, 4)``; validates with :func:`check_rigid`.

    Args:
        x: the pose(s).
        dtype: output dtype.  ``None`` keeps a floating input dtype (tensors and
            numpy arrays) and otherwise uses ``torch.get_default_dtype()``.
        device: output device (default: the input tensor's, else CPU).
    Returns:
        ``(B, 4, 4)`` tensor.
    """
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError):
            raise InputError("pose is not a rectangular numeric array") from None
        if arr.dtype.kind not in "biuf":
            raise InputError(f"pose is not a numeric array (got dtype {arr.dtype})")
        t = torch.as_tensor(arr)
    if t.is_complex() or t.dtype == torch.bool:
        raise InputError(f"pose must be real numbers, got dtype {t.dtype}")
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or tuple(t.shape[-2:]) != (4, 4):
        raise InputError(f"pose must have shape (4, 4) or (B, 4, 4), got {tuple(np.shape(x))}")
    if dtype is None:
        dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
    check_rigid(t)
    return t.to(device=device if device is not None else t.device, dtype=dtype)
