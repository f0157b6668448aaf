"""The rotation group SO(3): hat/vee, exp/log, quaternions, rotation angle.

All functions are batched over arbitrary leading dimensions ``(...)``, keep the
input's dtype and device, and are differentiable with finite gradients at the
identity.  Angles are in radians.  Quaternions are scalar-first ``(w, x, y, z)``.
"""

from __future__ import annotations

import torch

from ._numerics import (
    atan_ratio_coef,
    check_last_dim,
    check_matrix,
    exp_coefficients,
    eye_like,
    safe_norm,
)

__all__ = [
    "hat",
    "vee",
    "so3_exp",
    "so3_log",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "rotation_angle",
]


def hat(w: torch.Tensor) -> torch.Tensor:
    """Skew-symmetric matrix of a vector: ``hat(w) @ v == cross(w, v)``.

    Args:
        w: ``(..., 3)``.
    Returns:
        ``(..., 3, 3)``.
    """
    check_last_dim(w, 3, "w")
    x, y, z = w.unbind(-1)
    o = torch.zeros_like(x)
    rows = torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1)
    return rows.reshape(*w.shape[:-1], 3, 3)


def vee(W: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`hat`: the axial vector of the skew part of ``W``.

    Uses ``(W - Wᵀ)/2``, so for skew-symmetric input ``vee(hat(w)) == w``.

    Args:
        W: ``(..., 3, 3)``.
    Returns:
        ``(..., 3)``.
    """
    check_matrix(W, 3, "W")
    return 0.5 * torch.stack(
        [
            W[..., 2, 1] - W[..., 1, 2],
            W[..., 0, 2] - W[..., 2, 0],
            W[..., 1, 0] - W[..., 0, 1],
        ],
        dim=-1,
    )


def so3_exp(omega: torch.Tensor) -> torch.Tensor:
    """Rotation matrix of a rotation vector (Rodrigues' formula).

    ``R = I + sin(θ)/θ · Ω + (1 - cos θ)/θ² · Ω²`` with ``Ω = hat(omega)`` and
    ``θ = |omega|``; Taylor series are used for small ``θ``.

    Args:
        omega: ``(..., 3)`` rotation vector, axis × angle (rad).
    Returns:
        ``(..., 3, 3)`` rotation matrix.
    """
    check_last_dim(omega, 3, "omega")
    theta2 = (omega * omega).sum(-1)[..., None, None]
    W = hat(omega)
    A, B, _ = exp_coefficients(theta2)
    return eye_like(omega) + A * W + B * (W @ W)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Unit quaternion ``(w, x, y, z)`` with ``w >= 0`` of a rotation matrix.

    Shepperd's method: the four quantities ``4w², 4x², 4y², 4z²`` are read off
    the diagonal, the largest one is used as the pivot (it is always ``>= 1``)
    and the other components come from the off-diagonal sums/differences
    divided by it.  Accurate for every angle, including θ = π.

    Args:
        R: ``(..., 3, 3)`` rotation matrix.
    Returns:
        ``(..., 4)`` unit quaternion, ``w >= 0``.
    """
    check_matrix(R, 3, "R")
    m = R
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # 4 q qᵀ written in terms of the matrix entries (exact for rotations).
    d = torch.stack(
        [
            1 + m00 + m11 + m22,
            1 + m00 - m11 - m22,
            1 - m00 + m11 - m22,
            1 - m00 - m11 + m22,
        ],
        dim=-1,
    )
    a, b, c = m21 - m12, m02 - m20, m10 - m01  # 4wx, 4wy, 4wz
    e, f, g = m01 + m10, m02 + m20, m12 + m21  # 4xy, 4xz, 4yz
    outer = torch.stack(
        [
            torch.stack([d[..., 0], a, b, c], -1),
            torch.stack([a, d[..., 1], e, f], -1),
            torch.stack([b, e, d[..., 2], g], -1),
            torch.stack([c, f, g, d[..., 3]], -1),
        ],
        dim=-2,
    )
    # Row k of 4qqᵀ divided by 4|q_k| is ±q.  The clamp only affects rows
    # that are not selected (the selected pivot is >= 1).
    candidates = outer / (2.0 * torch.sqrt(d.clamp(min=0.1)))[..., None]
    pivot = d.argmax(-1)[..., None, None].expand(*d.shape[:-1], 1, 4)
    q = torch.gather(candidates, -2, pivot)[..., 0, :]
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)  # norm >= 1/2 here
    sign = torch.where(q[..., :1] < 0, -torch.ones_like(q[..., :1]), torch.ones_like(q[..., :1]))
    return q * sign


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrix of a quaternion ``(w, x, y, z)``.

    The quaternion is normalised implicitly (any non-zero scale is allowed);
    ``q`` and ``-q`` give the same matrix.  A zero quaternion gives NaN.

    Args:
        q: ``(..., 4)`` scalar-first quaternion.
    Returns:
        ``(..., 3, 3)`` rotation matrix.
    """
    check_last_dim(q, 4, "q")
    w, x, y, z = q.unbind(-1)
    s = 2.0 / (q * q).sum(-1)
    entries = [
        1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
        s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
        s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y),
    ]
    return torch.stack(entries, dim=-1).reshape(*q.shape[:-1], 3, 3)


def so3_log(R: torch.Tensor) -> torch.Tensor:
    """Rotation vector (axis × angle) of a rotation matrix; inverse of :func:`so3_exp`.

    Goes through :func:`matrix_to_quaternion` (``w >= 0``), then
    ``omega = 2·atan2(|v|, w) · v/|v|``, with a series for small ``|v|``.
    Stable near θ = 0 and θ = π.  The returned angle ``|omega|`` lies in
    ``[0, π]``; at exactly θ = π the sign of the axis is arbitrary.

    Args:
        R: ``(..., 3, 3)`` rotation matrix.
    Returns:
        ``(..., 3)`` rotation vector (rad).
    """
    q = matrix_to_quaternion(R)
    w, v = q[..., :1], q[..., 1:]
    n2 = (v * v).sum(-1, keepdim=True)
    thr = 0.05 if q.dtype == torch.float64 else 0.2
    small = n2 < thr * thr  # then w >= sqrt(1 - thr²) > 0.97
    w_small = torch.where(small, w, torch.ones_like(w))
    x2 = torch.where(small, n2 / (w_small * w_small), torch.zeros_like(n2))
    factor_small = 2.0 * atan_ratio_coef(x2) / w_small
    n = torch.sqrt(torch.where(small, torch.ones_like(n2), n2))
    factor_large = 2.0 * torch.atan2(n, w) / n
    return torch.where(small, factor_small, factor_large) * v


def rotation_angle(R: torch.Tensor) -> torch.Tensor:
    """Rotation angle θ ∈ [0, π] of a rotation matrix (rad).

    ``θ = atan2(|vee(R)|, (trace(R) - 1)/2)`` — accurate near 0 and near π,
    unlike ``acos``.  The gradient at θ = 0 is the zero subgradient.

    Args:
        R: ``(..., 3, 3)``.
    Returns:
        ``(...)``.
    """
    check_matrix(R, 3, "R")
    sin_theta = safe_norm(vee(R))
    cos_theta = 0.5 * (R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0)
    return torch.atan2(sin_theta, cos_theta)
