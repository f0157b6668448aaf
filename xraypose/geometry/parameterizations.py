"""Rotation / pose parameterizations (DiffPose / DiffDRR names).

=====================  ====  ===================================================
name                   size  meaning
=====================  ====  ===================================================
axis_angle             3     rotation vector, axis × angle (rad)
euler_angles           3     three angles about a ``convention`` axis sequence
quaternion             4     ``(w, x, y, z)``; normalised on input, ``w >= 0`` out
rotation_6d            6     first two *rows* of R, ``R[..., :2, :]`` flattened
                             (Zhou et al. 2019, PyTorch3D layout); Gram–Schmidt in
rotation_10d           10    upper triangle of symmetric ``A (4×4)``; the
                             quaternion is A's eigenvector of the *smallest*
                             eigenvalue (Peretroukhin et al. 2021); out:
                             ``A = I - q qᵀ``
quaternion_adjugate    10    upper triangle of symmetric ``M ≈ q qᵀ`` (Klee et al.
                             2023); the quaternion is M's column with the largest
                             norm, normalised; out: ``M = q qᵀ``
matrix                 9     R row-major; projected onto SO(3) by SVD on input
se3_log_map            3     ``omega`` of the SE(3) twist ``(omega, rho)``; only in
                             :func:`pose_from_params` / :func:`pose_to_params`
=====================  ====  ===================================================

The 10 numbers of a symmetric 4×4 matrix are its upper triangle in row-major
order: ``(0,0), (0,1), (0,2), (0,3), (1,1), (1,2), (1,3), (2,2), (2,3), (3,3)``
(quaternion components ordered ``w, x, y, z``).

Euler conventions: uppercase sequences are *intrinsic*,
``"XYZ" -> R = R_X(θ1) @ R_Y(θ2) @ R_Z(θ3)`` (PyTorch3D / DiffDRR); lowercase
sequences are *extrinsic* (rotations about the fixed axes, first angle applied
first), ``"xyz" -> R = R_Z(θ3) @ R_Y(θ2) @ R_X(θ1)``.  Both match
``scipy.spatial.transform.Rotation.from_euler(seq, angles)``.  Output ranges
(like scipy): first and third angle in ``[-π, π)``, middle angle in
``[-π/2, π/2]`` (Tait–Bryan) or ``[0, π]`` (proper Euler).  At gimbal lock the
third angle (intrinsic) / first angle (extrinsic) is set to 0.

Poses: for every parameterization except ``se3_log_map`` a pose is
``[[R(rotation), translation], [0, 1]]`` — for ``camera_to_world`` poses the
translation is the camera position in world mm.  For ``se3_log_map`` the pose
is ``se3_exp(cat(rotation, translation))`` (rotation = omega, translation = rho).

Gradients: ``rotation_10d`` (eigh) and ``matrix`` (SVD) are differentiable only
where the eigenvalues / singular values are distinct, i.e. not exactly at the
values produced by :func:`matrix_to_rotation`; generic network outputs are fine.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._checks import check_flag
from ..errors import InputError
from ._numerics import check_last_dim, check_matrix, safe_sqrt
from .rigid import make_transform, split_transform
from .se3 import se3_exp, se3_log
from .so3 import matrix_to_quaternion, quaternion_to_matrix, so3_exp, so3_log
from ..names import EULER_CONVENTIONS, ROTATION_PARAMETERIZATIONS, is_euler_convention  # torch-free: configs read them

__all__ = [
    "ROTATION_PARAMETERIZATIONS",
    "EULER_CONVENTIONS",
    "rotation_to_matrix",
    "matrix_to_rotation",
    "pose_from_params",
    "pose_to_params",
]

_AXIS = {"X": 0, "Y": 1, "Z": 2}


# --- argument checks -----------------------------------------------------------

def _check_parameterization(parameterization: str) -> None:
    if not isinstance(parameterization, str) or parameterization not in ROTATION_PARAMETERIZATIONS:
        raise InputError(
            f"unknown parameterization {parameterization!r}; choose one of: "
            + ", ".join(ROTATION_PARAMETERIZATIONS)
        )


def _check_convention(convention) -> None:
    choices = ", ".join(EULER_CONVENTIONS)
    if convention is None:
        raise InputError(
            f"euler_angles needs a convention; choose one of: {choices} "
            "(uppercase = intrinsic, lowercase = extrinsic)"
        )
    if not is_euler_convention(convention):
        raise InputError(
            f"unknown Euler convention {convention!r}; choose one of: {choices} "
            "(uppercase = intrinsic, lowercase = extrinsic)"
        )


def _check_args(parameterization: str, convention, degrees: bool, rotation_only: bool = False) -> None:
    """The parameterization, its Euler convention and ``degrees``; ``rotation_only``: refuse ``se3_log_map``
    (it parameterizes whole poses)."""
    _check_parameterization(parameterization)
    check_flag("degrees", degrees, prefix="")  # a text 'no' was true: the angles read as degrees
    if parameterization == "euler_angles":
        _check_convention(convention)
    elif degrees:
        raise InputError(
            f"degrees=True only applies to euler_angles, not {parameterization!r}"
        )
    if rotation_only and parameterization == "se3_log_map":
        raise InputError(
            "se3_log_map couples rotation and translation; use pose_from_params/pose_to_params"
        )


def _check_params(params, parameterization: str) -> None:
    n = ROTATION_PARAMETERIZATIONS[parameterization]
    if not isinstance(params, torch.Tensor):
        raise InputError(f"rotation parameters must be a torch.Tensor, got {type(params).__name__}")
    if params.ndim < 1 or params.shape[-1] != n:
        raise InputError(
            f"parameterization {parameterization!r} expects rotation parameters of "
            f"shape (..., {n}), got {tuple(params.shape)}"
        )
    if not params.is_floating_point():  # torch's "expected scalar type Float but found Long"
        raise InputError(f"rotation parameters must be a floating-point tensor, got {params.dtype}")


# --- Euler angles ----------------------------------------------------------------

def _axis_rotation(axis: int, angle: torch.Tensor) -> torch.Tensor:
    """Rotation by ``angle (...)`` rad about coordinate axis ``axis`` -> ``(..., 3, 3)``."""
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    j, k = (axis + 1) % 3, (axis + 2) % 3
    m = [[zero] * 3 for _ in range(3)]
    m[axis][axis] = one
    m[j][j], m[k][k] = c, c
    m[j][k], m[k][j] = -s, s
    return torch.stack([e for row in m for e in row], dim=-1).reshape(*angle.shape, 3, 3)


def _euler_to_matrix(angles: torch.Tensor, convention: str) -> torch.Tensor:
    seq = convention
    if seq.islower():  # extrinsic abc (θ1, θ2, θ3) == intrinsic CBA (θ3, θ2, θ1)
        seq, angles = seq.upper()[::-1], angles.flip(-1)
    a, b, c = (_axis_rotation(_AXIS[ax], angles[..., n]) for n, ax in enumerate(seq))
    return a @ b @ c


def _wrap(x: torch.Tensor) -> torch.Tensor:
    """Wrap angles to ``[-π, π)``."""
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


def _matrix_to_euler(R: torch.Tensor, convention: str) -> torch.Tensor:
    """Euler angles from the quaternion (half-angle sums/differences).

    Intrinsic ``R = R_i(α) R_j(β) R_k(γ)``.  Writing the quaternion product
    ``q_i(α) q_j(β) q_k(γ)`` out shows that four linear combinations
    ``(A, B, C, D)`` of its components satisfy ``A + iB ∝ cos(·) e^{iU}`` and
    ``C + iD ∝ sin(·) e^{iV}``, where the middle angle follows from the ratio
    of moduli and ``α, γ`` from ``U ± V``.  At gimbal lock one of ``U, V`` is
    undefined; it is replaced by the other (sets the third angle to 0).  The
    ill-conditioned angle only enters the matrix multiplied by the vanishing
    modulus, so the result round-trips to full precision.
    """
    extrinsic = convention.islower()
    seq = convention.upper()[::-1] if extrinsic else convention
    i, j, k = (_AXIS[ax] for ax in seq)
    s = 1.0 if (j - i) % 3 == 1 else -1.0  # e_i × e_j = s · e_third
    q = matrix_to_quaternion(R)
    w, x = q[..., 0], q[..., 1:]
    if i == k:  # proper Euler: i, j, m
        m = 3 - i - j
        A, B, C, D = w, x[..., i], x[..., j], s * x[..., m]
        third_sign, middle_offset = 1.0, 0.0
    else:  # Tait–Bryan, middle angle shifted by π/2 to the proper-Euler form
        A, B = w - x[..., j], x[..., i] - s * x[..., k]
        C, D = w + x[..., j], x[..., i] + s * x[..., k]
        third_sign, middle_offset = -s, -0.5 * math.pi

    tol = 8.0 * torch.finfo(q.dtype).eps
    nab2, ncd2 = A * A + B * B, C * C + D * D
    deg_ab, deg_cd = nab2 <= tol * tol, ncd2 <= tol * tol
    one, zero = torch.ones_like(A), torch.zeros_like(A)
    U = torch.atan2(torch.where(deg_ab, zero, B), torch.where(deg_ab, one, A))
    V = torch.atan2(torch.where(deg_cd, zero, D), torch.where(deg_cd, one, C))
    U, V = torch.where(deg_ab, V, U), torch.where(deg_cd, U, V)

    first = _wrap(U + V)
    third = _wrap(third_sign * (U - V))
    middle = 2.0 * torch.atan2(safe_sqrt(ncd2), safe_sqrt(nab2)) + middle_offset
    angles = torch.stack([first, middle, third], dim=-1)
    return angles.flip(-1) if extrinsic else angles


# --- symmetric 4×4 <-> 10 numbers ------------------------------------------------

_SYM_INDEX = (0, 1, 2, 3, 1, 4, 5, 6, 2, 5, 7, 8, 3, 6, 8, 9)


def _sym_from_upper(p: torch.Tensor) -> torch.Tensor:
    idx = torch.tensor(_SYM_INDEX, device=p.device)
    return p[..., idx].reshape(*p.shape[:-1], 4, 4)


def _upper_from_sym(A: torch.Tensor) -> torch.Tensor:
    r, c = torch.triu_indices(4, 4, device=A.device)
    return A[..., r, c]


# --- individual conversions ------------------------------------------------------

def _rotation_6d_to_matrix(p: torch.Tensor) -> torch.Tensor:
    b1 = F.normalize(p[..., :3], dim=-1)
    a2 = p[..., 3:]
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-2)


def _rotation_10d_to_matrix(p: torch.Tensor) -> torch.Tensor:
    _, vecs = torch.linalg.eigh(_sym_from_upper(p))  # eigenvalues ascending
    return quaternion_to_matrix(vecs[..., :, 0])


def _adjugate_to_matrix(p: torch.Tensor) -> torch.Tensor:
    M = _sym_from_upper(p)
    norms = torch.linalg.vector_norm(M, dim=-2)  # column norms (...,4)
    idx = norms.argmax(-1)[..., None, None].expand(*M.shape[:-2], 4, 1)
    q = torch.gather(M, -1, idx)[..., 0]
    return quaternion_to_matrix(q)  # normalises


def _matrix9_to_matrix(p: torch.Tensor) -> torch.Tensor:
    M = p.reshape(*p.shape[:-1], 3, 3)
    U, _, Vh = torch.linalg.svd(M)
    d = torch.linalg.det(U @ Vh)
    ones = torch.ones_like(d)
    D = torch.stack([ones, ones, d], dim=-1)
    return U @ (D[..., :, None] * Vh)


def _outer(q: torch.Tensor) -> torch.Tensor:
    return q[..., :, None] * q[..., None, :]


# --- public API ------------------------------------------------------------------

def rotation_to_matrix(params: torch.Tensor, parameterization: str, convention: str | None = None,
                       degrees: bool = False) -> torch.Tensor:
    """Rotation matrices from rotation parameters.

    Args:
        params: ``(..., n)`` with ``n = ROTATION_PARAMETERIZATIONS[parameterization]``.
        parameterization: any key of :data:`ROTATION_PARAMETERIZATIONS` except
            ``se3_log_map``.
        convention: Euler axis sequence (only for ``euler_angles``; ignored otherwise).
        degrees: Euler angles in degrees (only valid for ``euler_angles``).
    Returns:
        ``(..., 3, 3)`` rotation matrices.
    """
    _check_args(parameterization, convention, degrees, rotation_only=True)
    _check_params(params, parameterization)
    if parameterization == "axis_angle":
        return so3_exp(params)
    if parameterization == "euler_angles":
        angles = params * (math.pi / 180.0) if degrees else params
        return _euler_to_matrix(angles, convention)
    if parameterization == "quaternion":
        return quaternion_to_matrix(params)
    if parameterization == "rotation_6d":
        return _rotation_6d_to_matrix(params)
    if parameterization == "rotation_10d":
        return _rotation_10d_to_matrix(params)
    if parameterization == "quaternion_adjugate":
        return _adjugate_to_matrix(params)
    return _matrix9_to_matrix(params)  # "matrix"


def matrix_to_rotation(R: torch.Tensor, parameterization: str, convention: str | None = None,
                       degrees: bool = False) -> torch.Tensor:
    """Rotation parameters of rotation matrices (inverse of :func:`rotation_to_matrix`).

    Args:
        R: ``(..., 3, 3)`` rotation matrices.
        parameterization, convention, degrees: as in :func:`rotation_to_matrix`.
    Returns:
        ``(..., n)``.
    """
    _check_args(parameterization, convention, degrees, rotation_only=True)
    check_matrix(R, 3, "R")
    if parameterization == "axis_angle":
        return so3_log(R)
    if parameterization == "euler_angles":
        angles = _matrix_to_euler(R, convention)
        return angles * (180.0 / math.pi) if degrees else angles
    if parameterization == "quaternion":
        return matrix_to_quaternion(R)
    if parameterization == "rotation_6d":
        return R[..., :2, :].reshape(*R.shape[:-2], 6)
    if parameterization == "rotation_10d":
        q = matrix_to_quaternion(R)
        return _upper_from_sym(torch.eye(4, dtype=q.dtype, device=q.device) - _outer(q))
    if parameterization == "quaternion_adjugate":
        return _upper_from_sym(_outer(matrix_to_quaternion(R)))
    return R.reshape(*R.shape[:-2], 9)  # "matrix"


def pose_from_params(rotation: torch.Tensor, translation: torch.Tensor, parameterization: str,
                     convention: str | None = None, degrees: bool = False) -> torch.Tensor:
    """Rigid 4×4 poses from (rotation, translation) parameters.

    Args:
        rotation: ``(..., n)`` rotation parameters (for ``se3_log_map``: omega).
        translation: ``(..., 3)`` translation t in mm (for ``se3_log_map``: rho).
            Leading dims broadcast with ``rotation``'s.
        parameterization, convention, degrees: as in :func:`rotation_to_matrix`.
    Returns:
        ``(..., 4, 4)``.
    """
    _check_args(parameterization, convention, degrees)
    _check_params(rotation, parameterization)
    check_last_dim(translation, 3, "translation")
    if not translation.is_floating_point():
        raise InputError(f"translation must be a floating-point tensor, got {translation.dtype}")
    try:  # (torch's "The size of tensor a (2) must match the size of tensor b (3)")
        torch.broadcast_shapes(rotation.shape[:-1], translation.shape[:-1])
    except RuntimeError:
        raise InputError(f"rotation {tuple(rotation.shape)} and translation {tuple(translation.shape)} parameters "
                         "must be of one batch (their leading dimensions broadcast)") from None
    if parameterization == "se3_log_map":
        omega, rho = torch.broadcast_tensors(rotation, translation)
        return se3_exp(torch.cat([omega, rho], dim=-1))
    R = rotation_to_matrix(rotation, parameterization, convention, degrees)
    return make_transform(R, translation)


def pose_to_params(T: torch.Tensor, parameterization: str, convention: str | None = None,
                   degrees: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(rotation, translation) parameters of rigid poses; inverse of :func:`pose_from_params`.

    Args:
        T: ``(..., 4, 4)`` rigid transforms.
        parameterization, convention, degrees: as in :func:`rotation_to_matrix`.
    Returns:
        ``rotation (..., n)`` and ``translation (..., 3)`` (mm; rho for ``se3_log_map``).
    """
    _check_args(parameterization, convention, degrees)
    check_matrix(T, 4, "T")
    if parameterization == "se3_log_map":
        xi = se3_log(T)
        return xi[..., :3], xi[..., 3:]
    R, t = split_transform(T)
    return matrix_to_rotation(R, parameterization, convention, degrees), t.clone()
