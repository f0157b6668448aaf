"""Private numerical helpers: safe square roots / norms and small-angle series.

The Lie-group formulas contain coefficients such as ``sin(θ)/θ`` that are
0/0 at θ = 0.  Each coefficient is evaluated from ``θ²`` with a Taylor series
below a dtype-dependent threshold and with its closed form above it.  The two
branches are merged with :func:`torch.where`, and the branch that is *not*
used is always fed a harmless value, so neither values nor gradients become
NaN/inf at θ = 0.
"""

from __future__ import annotations

from fractions import Fraction
from math import factorial

import torch

from ..errors import InputError


def check_last_dim(x: torch.Tensor, size: int, name: str) -> None:
    """Raise InputError unless ``x`` is a tensor of shape ``(..., size)``."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[-1] != size:
        raise InputError(f"{name} must have shape (..., {size}), got {tuple(x.shape)}")


def check_matrix(x: torch.Tensor, size: int, name: str) -> None:
    """Raise InputError unless ``x`` is a tensor of shape ``(..., size, size)``."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2 or tuple(x.shape[-2:]) != (size, size):
        raise InputError(
            f"{name} must have shape (..., {size}, {size}), got {tuple(x.shape)}"
        )


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` for ``x >= 0`` whose gradient at ``x == 0`` is 0 (not inf)."""
    positive = x > 0
    root = torch.sqrt(torch.where(positive, x, torch.ones_like(x)))
    return torch.where(positive, root, torch.zeros_like(x))


def safe_norm(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Euclidean norm over ``dim`` with a zero (sub)gradient at the origin."""
    return safe_sqrt((x * x).sum(dim))


def eye_like(x: torch.Tensor, n: int = 3) -> torch.Tensor:
    """``(n, n)`` identity with ``x``'s dtype and device (broadcastable)."""
    return torch.eye(n, dtype=x.dtype, device=x.device)


# --- small-angle series --------------------------------------------------------

def _threshold(dtype: torch.dtype) -> float:
    """Angle (rad) below which the Taylor series replaces the closed form.

    The series below are accurate to machine precision up to these angles
    (float64: 0.5 rad, lower precisions: 1 rad) while the closed forms lose
    relative accuracy like ``eps / θ²`` through cancellation, so the switch
    keeps both values and autograd gradients accurate.
    """
    return 0.5 if dtype == torch.float64 else 1.0


def _horner(t: torch.Tensor, coeffs: tuple[float, ...]) -> torch.Tensor:
    out = torch.full_like(t, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        out = out * t + c
    return out


_N_TERMS = 9
# sin(θ)/θ = Σ (-1)^k θ^{2k} / (2k+1)!
_SINC = tuple((-1) ** k / factorial(2 * k + 1) for k in range(_N_TERMS))
# (1 - cos θ)/θ² = Σ (-1)^k θ^{2k} / (2k+2)!
_ONE_MINUS_COS = tuple((-1) ** k / factorial(2 * k + 2) for k in range(_N_TERMS))
# (θ - sin θ)/θ³ = Σ (-1)^k θ^{2k} / (2k+3)!
_THETA_MINUS_SIN = tuple((-1) ** k / factorial(2 * k + 3) for k in range(_N_TERMS))
# (1 - (θ/2) cot(θ/2)) / θ² = -Σ_{n>=1} (-1)^n B_{2n} θ^{2n-2} / (2n)!   (Bernoulli B)
_BERNOULLI_EVEN = (
    Fraction(1, 6), Fraction(-1, 30), Fraction(1, 42), Fraction(-1, 30),
    Fraction(5, 66), Fraction(-691, 2730), Fraction(7, 6), Fraction(-3617, 510),
    Fraction(43867, 798),
)
_JINV = tuple(
    float(-((-1) ** n) * b / factorial(2 * n))
    for n, b in enumerate(_BERNOULLI_EVEN, start=1)
)


def _coefficient(theta2: torch.Tensor, coeffs, closed_form) -> torch.Tensor:
    thr = _threshold(theta2.dtype)
    small = theta2 < thr * thr
    # Feed each branch only values where it is well defined.
    t_small = torch.where(small, theta2, torch.zeros_like(theta2))
    t_large = torch.where(small, torch.full_like(theta2, thr * thr), theta2)
    theta = torch.sqrt(t_large)
    return torch.where(small, _horner(t_small, coeffs), closed_form(theta, t_large))


def exp_coefficients(theta2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sin θ/θ, (1 − cos θ)/θ², (θ − sin θ)/θ³)`` from ``θ² (...)``, the coefficients of the SO(3)
    and SE(3) exponentials, in one pass: each a Taylor series below :func:`_threshold` and its closed
    form above (``(1 − cos θ)/θ²`` as ``2 sin²(θ/2)/θ²``), blended by the mask so that neither
    branch is fed a value where it is not defined; the three series share one Horner loop (the
    exponential maps run on every iteration of a registration)."""
    thr = _threshold(theta2.dtype)
    m = (theta2 < thr * thr).to(theta2.dtype)  # 1 where the series holds: blends, cheaper than where
    t_small = (theta2 * m)[..., None]          # each branch fed only values where it is defined
    t_large = theta2 + m * (thr * thr - theta2)
    rows = _series_rows(theta2.dtype, theta2.device)  # per power of θ², the three coefficients
    series = rows[-1].expand(t_small.shape[:-1] + (3,))
    for row in rows[-2::-1]:
        series = series * t_small + row
    theta = torch.sqrt(t_large)
    sin = torch.sin(theta)
    closed = torch.stack([sin / theta, 2.0 * torch.sin(0.5 * theta) ** 2 / t_large, (theta - sin) / (t_large * theta)], -1)
    out = closed + m[..., None] * (series - closed)
    return out[..., 0], out[..., 1], out[..., 2]


_ROWS: dict = {}


def _series_rows(dtype: torch.dtype, device) -> list:
    key = (dtype, str(device))
    if key not in _ROWS:
        table = torch.tensor([_SINC, _ONE_MINUS_COS, _THETA_MINUS_SIN], dtype=dtype, device=device)
        _ROWS[key] = list(table.T.contiguous().unbind(0))
    return _ROWS[key]


def left_jacobian_inv_coef(theta2: torch.Tensor) -> torch.Tensor:
    """``(1 - (θ/2) cot(θ/2)) / θ²`` from ``θ² (...)``; valid for θ < 2π."""

    def closed(th, t2):
        half = 0.5 * th
        return (1.0 - half * torch.cos(half) / torch.sin(half)) / t2

    return _coefficient(theta2, _JINV, closed)


def atan_ratio_coef(x2: torch.Tensor) -> torch.Tensor:
    """Series for ``atan(x)/x`` in ``x²`` (valid for small ``x``; no closed form)."""
    return _horner(x2, tuple((-1) ** k / (2 * k + 1) for k in range(_N_TERMS)))
