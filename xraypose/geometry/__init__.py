"""Geometry: rigid transforms, SO(3)/SE(3) maps, rotation parameterizations, geodesics.

Conventions (see the module docstrings for details):

* Poses are ``(..., 4, 4)`` rigid ``camera_to_world`` transforms, world = CT
  RAS mm; angles in radians, lengths in mm.
* Quaternions are scalar-first ``(w, x, y, z)``; returned with ``w >= 0``.
* SE(3) twists are ``xi = (omega, rho)``: rotation part first.
* ``compose(A, B) == A @ B`` (B is applied first).
* Euler conventions: uppercase = intrinsic (``"XYZ" -> R_X @ R_Y @ R_Z``),
  lowercase = extrinsic, both exactly as scipy's ``Rotation.from_euler``.

Everything is pure PyTorch, batched over leading dims, dtype/device preserving
and differentiable.
"""

from .frames import LPS_TO_RAS, ROLL_180
from .geodesics import (
    DoubleGeodesic,
    double_geodesic,
    geodesic_rotation,
    geodesic_se3,
    geodesic_translation,
)
from .parameterizations import (
    EULER_CONVENTIONS,
    ROTATION_PARAMETERIZATIONS,
    matrix_to_rotation,
    pose_from_params,
    pose_to_params,
    rotation_to_matrix,
)
from .rigid import (
    apply,
    apply_rotation,
    as_transform,
    check_rigid,
    compose,
    invert,
    make_transform,
    split_transform,
)
from .se3 import se3_exp, se3_hat, se3_log
from .so3 import (
    hat,
    matrix_to_quaternion,
    quaternion_to_matrix,
    rotation_angle,
    so3_exp,
    so3_log,
    vee,
)

__all__ = [
    # rigid
    "make_transform", "split_transform", "compose", "invert", "apply",
    "apply_rotation", "as_transform", "check_rigid",
    # so3 / se3
    "hat", "vee", "so3_exp", "so3_log", "quaternion_to_matrix",
    "matrix_to_quaternion", "rotation_angle", "se3_exp", "se3_hat", "se3_log",
    # parameterizations
    "ROTATION_PARAMETERIZATIONS", "EULER_CONVENTIONS", "rotation_to_matrix",
    "matrix_to_rotation", "pose_from_params", "pose_to_params",
    # geodesics
    "geodesic_rotation", "geodesic_translation", "geodesic_se3",
    "double_geodesic", "DoubleGeodesic",
    # frames
    "LPS_TO_RAS", "ROLL_180",
]
