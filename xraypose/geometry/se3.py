"""The rigid-motion group SE(3): exponential and logarithm maps.

Twist order is **rotation first**: ``xi = (omega, rho)`` with ``omega (3)``
the rotation vector (rad) and ``rho (3)`` the translational part (mm), and

    se3_exp(xi) = [[so3_exp(omega), V(omega) @ rho], [0, 0, 0, 1]]

where ``V`` is the left Jacobian of SO(3).  Note ``rho`` is *not* the
translation ``t`` unless ``omega = 0``.
"""

from __future__ import annotations

import torch

from ._numerics import (
    check_last_dim,
    check_matrix,
    exp_coefficients,
    eye_like,
    left_jacobian_inv_coef,
)
from .rigid import make_transform, split_transform
from .so3 import hat, so3_log

__all__ = ["se3_exp", "se3_hat", "se3_log"]


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """Rigid transform of a twist ``xi = (omega, rho)``.

    ``R = I + A Ω + B Ω²``, ``V = I + B Ω + C Ω²`` with ``A = sin θ/θ``,
    ``B = (1 - cos θ)/θ²``, ``C = (θ - sin θ)/θ³`` (Taylor series near 0).

    Args:
        xi: ``(..., 6)``; ``[..., :3]`` rotation vector (rad), ``[..., 3:]`` rho (mm).
    Returns:
        ``(..., 4, 4)``.
    """
    check_last_dim(xi, 6, "xi")
    omega, rho = xi[..., :3], xi[..., 3:]
    theta2 = (omega * omega).sum(-1)[..., None, None]
    W = hat(omega)
    W2 = W @ W
    I = eye_like(xi)
    A, B, C = exp_coefficients(theta2)
    R = I + A * W + B * W2
    V = I + B * W + C * W2
    return make_transform(R, (V @ rho[..., None])[..., 0])


def se3_hat(xi: torch.Tensor) -> torch.Tensor:
    """The twist's 4×4 matrix ``[[hat(omega), rho], [0, 0]]``: ``se3_exp(ε·xi) = I + ε·se3_hat(xi) + O(ε²)``.

    Args:
        xi: ``(..., 6)`` = (omega, rho).
    Returns:
        ``(..., 4, 4)``; ``se3_hat(torch.eye(6))`` are the six generators of se(3) in twist order.
    """
    check_last_dim(xi, 6, "xi")
    out = torch.zeros(xi.shape[:-1] + (4, 4), dtype=xi.dtype, device=xi.device)
    out[..., :3, :3] = hat(xi[..., :3])
    out[..., :3, 3] = xi[..., 3:]
    return out


def se3_log(T: torch.Tensor) -> torch.Tensor:
    """Twist ``(omega, rho)`` of a rigid transform; inverse of :func:`se3_exp`.

    ``omega = so3_log(R)`` (angle in ``[0, π]``) and ``rho = V⁻¹ t`` with
    ``V⁻¹ = I - Ω/2 + D Ω²``, ``D = (1 - (θ/2) cot(θ/2))/θ²`` (Taylor series
    near 0; the closed form is well behaved up to and including θ = π).

    Args:
        T: ``(..., 4, 4)`` rigid transform.
    Returns:
        ``(..., 6)``.
    """
    check_matrix(T, 4, "T")
    R, t = split_transform(T)
    omega = so3_log(R)
    theta2 = (omega * omega).sum(-1)[..., None, None]
    W = hat(omega)
    V_inv = eye_like(T) - 0.5 * W + left_jacobian_inv_coef(theta2) * (W @ W)
    rho = (V_inv @ t[..., None])[..., 0]
    return torch.cat([omega, rho], dim=-1)
