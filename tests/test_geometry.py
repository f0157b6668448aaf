"""Tests for xraypose.geometry (rigid transforms, SO(3)/SE(3), parameterizations, geodesics)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from xraypose.errors import InputError
from xraypose.geometry import (
    EULER_CONVENTIONS,
    ROTATION_PARAMETERIZATIONS,
    DoubleGeodesic,
    apply,
    apply_rotation,
    as_transform,
    check_rigid,
    compose,
    double_geodesic,
    geodesic_rotation,
    geodesic_se3,
    geodesic_translation,
    hat,
    invert,
    make_transform,
    matrix_to_quaternion,
    matrix_to_rotation,
    pose_from_params,
    pose_to_params,
    quaternion_to_matrix,
    rotation_angle,
    rotation_to_matrix,
    se3_exp,
    se3_log,
    so3_exp,
    so3_log,
    split_transform,
    vee,
)

F64 = torch.float64
PI = math.pi
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ALL_CONVENTIONS = list(EULER_CONVENTIONS) + [c.lower() for c in EULER_CONVENTIONS]
ROTATION_ONLY = [p for p in ROTATION_PARAMETERIZATIONS if p != "se3_log_map"]
# angles at which the small-angle / near-pi branches switch or are delicate
EDGE_ANGLES = [0.0, 1e-12, 1e-8, 1e-7, 1e-4, 0.05, 0.2, 0.4999999, 0.5, 0.5000001,
               0.9999999, 1.0000001, 2.0, PI - 1e-3, PI - 1e-7, PI]


# --- strategies -----------------------------------------------------------------

_unit = st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False)


@st.composite
def unit_vectors(draw):
    v = np.array([draw(_unit), draw(_unit), draw(_unit)])
    assume(np.linalg.norm(v) > 0.1)
    return v / np.linalg.norm(v)


@st.composite
def rotvecs(draw, max_angle=PI, edges=True):
    angle_st = st.floats(0.0, max_angle)
    if edges:
        angle_st = st.one_of(angle_st, st.sampled_from([a for a in EDGE_ANGLES if a <= max_angle]))
    return draw(unit_vectors()) * draw(angle_st)


def batches(element, max_size=6):
    return st.lists(element, min_size=1, max_size=max_size).map(
        lambda xs: torch.tensor(np.stack(xs), dtype=F64)
    )


translations = st.lists(st.floats(-500.0, 500.0), min_size=3, max_size=3).map(np.array)


@st.composite
def twists(draw, max_angle=PI, edges=True):
    return np.concatenate([draw(rotvecs(max_angle, edges)), draw(translations)])


@st.composite
def poses(draw):
    return se3_exp(torch.tensor(draw(twists()), dtype=F64))


@st.composite
def quaternions(draw):
    q = np.array([draw(_unit) for _ in range(4)])
    assume(np.linalg.norm(q) > 0.1)
    return q


def rotmats(max_size=6):
    return batches(rotvecs(), max_size).map(so3_exp)


def to_scipy(R: torch.Tensor) -> Rotation:
    return Rotation.from_matrix(R.detach().cpu().numpy().reshape(-1, 3, 3))


def assert_close(a, b, atol=1e-6):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b).abs().max().item() if a.numel() else 0.0
    assert err <= atol, f"max abs error {err:.3g} > {atol}"


def assert_rotation(R, atol=1e-6):
    eye = torch.eye(3, dtype=R.dtype)
    assert_close(R.transpose(-1, -2) @ R, eye.expand_as(R), atol)
    assert torch.all(torch.linalg.det(R) > 0)


# --- SO(3) ------------------------------------------------------------------------

@SETTINGS
@given(batches(rotvecs()))
def test_so3_exp_matches_scipy(w):
    R = so3_exp(w)
    assert R.shape == (*w.shape[:-1], 3, 3) and R.dtype == F64
    assert_close(R, torch.tensor(Rotation.from_rotvec(w.numpy()).as_matrix()), 1e-12)


@SETTINGS
@given(rotmats())
def test_so3_exp_log_round_trip(R):
    assert_close(so3_exp(so3_log(R)), R, 1e-10)


@SETTINGS
@given(batches(rotvecs(max_angle=PI - 1e-3)))
def test_so3_log_exp_round_trip(w):
    assert_close(so3_log(so3_exp(w)), w, 1e-9)


@pytest.mark.parametrize("angle", EDGE_ANGLES)
def test_so3_edge_angles(angle):
    axes = torch.nn.functional.normalize(torch.randn(20, 3, dtype=F64, generator=torch.Generator().manual_seed(0)), dim=-1)
    R = so3_exp(axes * angle)
    w = so3_log(R)
    assert_close(so3_exp(w), R, 1e-12)
    assert_close(w.norm(dim=-1), torch.full((20,), angle, dtype=F64), 1e-9)
    assert_close(rotation_angle(R), torch.full((20,), angle, dtype=F64), 1e-9)
    if angle < PI - 1e-4:  # the axis sign is ambiguous only at pi
        assert_close(w, axes * angle, 1e-9)
    # float32 stays accurate too
    R32 = so3_exp((axes * angle).float())
    assert R32.dtype == torch.float32
    assert_close(R32.double(), R, 1e-6)
    assert_close(so3_exp(so3_log(R32)).double(), R, 1e-5)


def test_so3_log_near_pi_from_exact_matrices():
    # exact rotations by pi (diagonal with two -1) and a generic axis at pi
    for d in ([1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]):
        R = torch.diag(torch.tensor(d, dtype=F64))
        w = so3_log(R)
        assert abs(w.norm().item() - PI) < 1e-12
        assert_close(so3_exp(w), R, 1e-12)
    n = torch.tensor([1.0, 2.0, -2.0], dtype=F64) / 3
    R = 2 * torch.outer(n, n) - torch.eye(3, dtype=F64)  # exact pi rotation about n
    assert_close(so3_exp(so3_log(R)), R, 1e-12)


@SETTINGS
@given(batches(rotvecs()))
def test_hat_vee(w):
    W = hat(w)
    assert_close(W, -W.transpose(-1, -2), 0.0)
    assert_close(vee(W), w, 0.0)
    v = torch.ones_like(w)
    assert_close((W @ v[..., None])[..., 0], torch.linalg.cross(w, v, dim=-1), 1e-12)


@SETTINGS
@given(batches(quaternions()))
def test_quaternion_round_trip_and_scipy(q):
    R = quaternion_to_matrix(q)
    assert_rotation(R, 1e-12)
    assert_close(quaternion_to_matrix(-3.0 * q), R, 1e-12)  # scale- and sign-invariant
    qs = torch.tensor(Rotation.from_matrix(R.numpy()).as_quat())[:, [3, 0, 1, 2]]
    assert_close(R, torch.tensor(Rotation.from_quat(qs[:, [1, 2, 3, 0]].numpy()).as_matrix()), 1e-12)
    q2 = matrix_to_quaternion(R)
    assert torch.all(q2[..., 0] >= 0)
    assert_close(q2.norm(dim=-1), torch.ones(q.shape[0], dtype=F64), 1e-12)
    qn = q / q.norm(dim=-1, keepdim=True)
    sign = torch.where(qn[:, :1] < 0, -1.0, 1.0).to(F64)
    # unique up to sign when w == 0
    err = torch.minimum((q2 - qn * sign).abs().amax(-1), (q2 + qn * sign).abs().amax(-1))
    assert err.max() < 1e-9


def test_rotation_angle_known():
    for angle in [0.0, 1e-9, 0.3, 1.0, 2.5, PI - 1e-9, PI]:
        R = so3_exp(torch.tensor([0.0, angle, 0.0], dtype=F64))
        assert abs(rotation_angle(R).item() - angle) < 1e-12
    R = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    assert abs(rotation_angle(R).item() - PI / 2) < 1e-15


# --- SE(3) ------------------------------------------------------------------------

def _twist_matrix(xi):
    top = torch.cat([hat(xi[..., :3]), xi[..., 3:, None]], dim=-1)
    return torch.cat([top, torch.zeros_like(top[..., :1, :])], dim=-2)


@SETTINGS
@given(batches(twists()))
def test_se3_exp_matches_matrix_exponential(xi):
    T = se3_exp(xi)
    assert T.shape == (xi.shape[0], 4, 4)
    assert_close(T, torch.linalg.matrix_exp(_twist_matrix(xi)), 1e-9)
    check_rigid(T)


@SETTINGS
@given(batches(twists()))
def test_se3_exp_log_round_trip(xi):
    T = se3_exp(xi)
    assert_close(se3_exp(se3_log(T)), T, 1e-9)


@SETTINGS
@given(batches(twists(max_angle=PI - 1e-3)))
def test_se3_log_exp_round_trip(xi):
    assert_close(se3_log(se3_exp(xi)), xi, 1e-8)


@pytest.mark.parametrize("angle", EDGE_ANGLES)
def test_se3_edge_angles(angle):
    g = torch.Generator().manual_seed(1)
    axes = torch.nn.functional.normalize(torch.randn(20, 3, dtype=F64, generator=g), dim=-1)
    xi = torch.cat([axes * angle, 100 * torch.randn(20, 3, dtype=F64, generator=g)], dim=-1)
    T = se3_exp(xi)
    assert_close(T, torch.linalg.matrix_exp(_twist_matrix(xi)), 1e-9)
    assert_close(se3_exp(se3_log(T)), T, 1e-9)
    if angle < PI - 1e-4:
        assert_close(se3_log(T), xi, 1e-8)


def test_se3_order_rotation_first():
    xi = torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0, 3.0], dtype=F64)
    T = se3_exp(xi)
    assert_close(T[:3, :3], torch.eye(3, dtype=F64), 0.0)
    assert_close(T[:3, 3], xi[3:], 0.0)
    xi = torch.tensor([0.0, 0.0, PI / 2, 0.0, 0.0, 0.0], dtype=F64)
    assert_close(se3_exp(xi)[:3, :3], rotation_to_matrix(torch.tensor([0.0, 0.0, 90.0], dtype=F64), "euler_angles", "XYZ", degrees=True), 1e-12)


# --- gradients --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_gradients_finite_at_identity(dtype):
    for fn, n in [(so3_exp, 3), (se3_exp, 6), (lambda w: so3_log(so3_exp(w)), 3),
                  (lambda x: se3_log(se3_exp(x)), 6)]:
        for scale in [0.0, 1e-12, 1e-6]:
            x = torch.full((n,), scale, dtype=dtype, requires_grad=True)
            (fn(x) * torch.arange(1, fn(x).numel() + 1, dtype=dtype).reshape(fn(x).shape)).sum().backward()
            assert torch.isfinite(x.grad).all(), (fn, scale, x.grad)
    # log of an exact identity matrix, and geodesics between equal poses
    R = torch.eye(3, dtype=dtype, requires_grad=True)
    so3_log(R).sum().backward()
    assert torch.isfinite(R.grad).all()
    T = torch.eye(4, dtype=dtype).repeat(2, 1, 1).requires_grad_()
    loss = (geodesic_rotation(T, T.detach()) + geodesic_translation(T, T.detach())
            + geodesic_se3(T, T.detach()) + double_geodesic(T, T.detach(), 1000.0)).sum()
    loss.backward()
    assert torch.isfinite(T.grad).all()


def test_gradients_at_identity_are_correct():
    # d so3_exp(w)/dw at 0 is hat(e_i); d so3_log(exp(w))/dw at 0 is the identity
    w = torch.zeros(3, dtype=F64, requires_grad=True)
    J = torch.autograd.functional.jacobian(lambda w: so3_log(so3_exp(w)), w)
    assert_close(J, torch.eye(3, dtype=F64), 1e-12)
    J = torch.autograd.functional.jacobian(so3_exp, w)
    for i in range(3):
        assert_close(J[..., i], hat(torch.eye(3, dtype=F64)[i]), 1e-12)


@pytest.mark.parametrize("angle", [1e-4, 1e-3, 1e-2, 0.1, 0.7])
def test_small_angle_gradients_accurate_in_float32(angle):
    # catches closed forms used where they cancel catastrophically (autograd
    # through (θ - sin θ)/θ³ etc. loses ~eps/θ⁴)
    g = torch.Generator().manual_seed(4)
    axis = torch.nn.functional.normalize(torch.randn(3, dtype=F64, generator=g), dim=0)
    xi = torch.cat([axis * angle, 100 * torch.randn(3, dtype=F64, generator=g)])
    for fn, x in [(so3_exp, xi[:3]), (se3_exp, xi), (lambda w: so3_log(so3_exp(w)), xi[:3]),
                  (lambda v: se3_log(se3_exp(v)), xi)]:
        J64 = torch.autograd.functional.jacobian(fn, x)
        J32 = torch.autograd.functional.jacobian(fn, x.float())
        assert J32.dtype == torch.float32
        scale = J64.abs().max().item()
        assert (J32.double() - J64).abs().max().item() < 1e-4 * scale


def test_gradcheck_random_points():
    g = torch.Generator().manual_seed(2)
    omega = torch.nn.functional.normalize(torch.randn(5, 3, dtype=F64, generator=g), dim=-1)
    omega = omega * torch.tensor([1e-5, 0.3, 0.9, 2.0, 3.0], dtype=F64)[:, None]
    xi = torch.cat([omega, 50 * torch.randn(5, 3, dtype=F64, generator=g)], dim=-1)
    assert torch.autograd.gradcheck(se3_exp, (xi.clone().requires_grad_(),))
    assert torch.autograd.gradcheck(so3_log, (so3_exp(omega).requires_grad_(),))
    assert torch.autograd.gradcheck(se3_log, (se3_exp(xi).requires_grad_(),))


@pytest.mark.parametrize("parameterization", list(ROTATION_PARAMETERIZATIONS))
def test_pose_from_params_gradients_finite(parameterization):
    g = torch.Generator().manual_seed(3)
    n = ROTATION_PARAMETERIZATIONS[parameterization]
    rot = torch.randn(4, n, dtype=F64, generator=g).requires_grad_()
    trans = torch.randn(4, 3, dtype=F64, generator=g).requires_grad_()
    conv = "ZXY" if parameterization == "euler_angles" else None
    T = pose_from_params(rot, trans, parameterization, conv)
    check_rigid(T)
    double_geodesic(T, torch.eye(4, dtype=F64), 1020.0).sum().backward()
    assert torch.isfinite(rot.grad).all() and torch.isfinite(trans.grad).all()


# --- parameterizations ------------------------------------------------------------

def test_parameterization_table():
    assert ROTATION_PARAMETERIZATIONS == {
        "axis_angle": 3, "euler_angles": 3, "quaternion": 4, "rotation_6d": 6,
        "rotation_10d": 10, "quaternion_adjugate": 10, "matrix": 9, "se3_log_map": 3,
    }
    assert len(EULER_CONVENTIONS) == 12 and len(set(EULER_CONVENTIONS)) == 12


@pytest.mark.parametrize("parameterization", ROTATION_ONLY)
@FEW
@given(R=rotmats())
def test_rotation_round_trip(parameterization, R):
    conv = "ZXY" if parameterization == "euler_angles" else None
    p = matrix_to_rotation(R, parameterization, conv)
    assert p.shape == (R.shape[0], ROTATION_PARAMETERIZATIONS[parameterization])
    assert_close(rotation_to_matrix(p, parameterization, conv), R, 1e-6)
    # float32 keeps its dtype and is accurate to float32 precision
    R32 = R.float()
    p32 = matrix_to_rotation(R32, parameterization, conv)
    assert p32.dtype == torch.float32
    out32 = rotation_to_matrix(p32, parameterization, conv)
    assert out32.dtype == torch.float32
    assert_close(out32.double(), R, 5e-5)


@pytest.mark.parametrize("parameterization", ROTATION_ONLY)
@FEW
@given(raw=batches(st.lists(st.floats(-3.0, 3.0), min_size=10, max_size=10).map(np.array)))
def test_arbitrary_params_give_rotations(parameterization, raw):
    n = ROTATION_PARAMETERIZATIONS[parameterization]
    p = raw[:, :n]
    if parameterization in ("quaternion", "rotation_6d", "quaternion_adjugate"):
        assume(bool((p.abs().amax(-1) > 0.1).all()))
    if parameterization == "rotation_6d":  # rows must be non-zero and not parallel
        a, b = p[:, :3].norm(dim=-1), p[:, 3:].norm(dim=-1)
        c = torch.linalg.cross(p[:, :3], p[:, 3:], dim=-1).norm(dim=-1)
        assume(bool(((a > 0.1) & (b > 0.1) & (c > 1e-3 * a * b)).all()))
    if parameterization == "matrix":
        assume(bool((torch.linalg.svdvals(p.reshape(-1, 3, 3))[:, -1] > 1e-3).all()))
    conv = "zyz" if parameterization == "euler_angles" else None
    assert_rotation(rotation_to_matrix(p, parameterization, conv), 1e-10)


def test_parameterization_definitions():
    q = torch.tensor([0.5, 0.5, -0.5, 0.5], dtype=F64)
    R = quaternion_to_matrix(q)
    assert_close(matrix_to_rotation(R, "rotation_6d"), R[:2, :].reshape(6), 0.0)  # rows
    assert_close(matrix_to_rotation(R, "matrix"), R.reshape(9), 0.0)  # row-major
    iu = torch.triu_indices(4, 4)
    A = matrix_to_rotation(R, "rotation_10d")
    assert_close(A, (torch.eye(4, dtype=F64) - torch.outer(q, q))[iu[0], iu[1]], 1e-12)
    M = matrix_to_rotation(R, "quaternion_adjugate")
    assert_close(M, torch.outer(q, q)[iu[0], iu[1]], 1e-12)
    assert_close(matrix_to_rotation(R, "quaternion"), q, 1e-12)
    # the 10d eigenvector of the smallest eigenvalue is used, not the largest
    A_rev = torch.outer(q, q)[iu[0], iu[1]]  # q is now the LARGEST eigenvector
    assert (rotation_to_matrix(A_rev, "rotation_10d") - R).abs().max() > 1e-3
    # the matrix parameterization is projected onto SO(3) (with det correction)
    noisy = (R + 0.01 * torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.4, -0.3], [0.2, 0.1, 0.0]], dtype=F64))
    assert_rotation(rotation_to_matrix(noisy.reshape(9), "matrix"), 1e-12)
    reflected = -R
    assert_rotation(rotation_to_matrix(reflected.reshape(9), "matrix"), 1e-12)


@pytest.mark.parametrize("parameterization", list(ROTATION_PARAMETERIZATIONS))
@FEW
@given(T=batches(twists()).map(se3_exp))
def test_pose_round_trip(parameterization, T):
    conv = "yxz" if parameterization == "euler_angles" else None
    rot, trans = pose_to_params(T, parameterization, conv)
    assert rot.shape == (T.shape[0], ROTATION_PARAMETERIZATIONS[parameterization])
    assert trans.shape == (T.shape[0], 3)
    if parameterization != "se3_log_map":
        assert_close(trans, T[:, :3, 3], 0.0)
    assert_close(pose_from_params(rot, trans, parameterization, conv), T, 1e-6)


def test_pose_from_params_se3_log_map_and_broadcast():
    xi = torch.tensor([0.1, -0.2, 0.3, 10.0, 20.0, -5.0], dtype=F64)
    T = pose_from_params(xi[:3], xi[3:], "se3_log_map")
    assert_close(T, se3_exp(xi), 0.0)
    T = pose_from_params(torch.zeros(5, 3, dtype=F64), torch.tensor([1.0, 2.0, 3.0], dtype=F64), "axis_angle")
    assert T.shape == (5, 4, 4)
    assert_close(T[:, :3, 3], torch.tensor([[1.0, 2.0, 3.0]] * 5, dtype=F64), 0.0)


angles3 = st.lists(st.floats(-2 * PI, 2 * PI), min_size=3, max_size=3)


@pytest.mark.parametrize("convention", ALL_CONVENTIONS)
@FEW
@given(angles=st.lists(angles3, min_size=1, max_size=5).map(lambda a: np.array(a)))
def test_euler_to_matrix_matches_scipy(convention, angles):
    expected = torch.tensor(Rotation.from_euler(convention, angles).as_matrix())
    ours = rotation_to_matrix(torch.tensor(angles), "euler_angles", convention)
    assert_close(ours, expected, 1e-12)
    deg = np.degrees(angles)
    ours_deg = rotation_to_matrix(torch.tensor(deg), "euler_angles", convention, degrees=True)
    assert_close(ours_deg, expected, 1e-12)
    assert_close(torch.tensor(Rotation.from_euler(convention, deg, degrees=True).as_matrix()), expected, 1e-12)


def _wrapped_diff(a, b):
    d = torch.remainder(a - b + PI, 2 * PI) - PI
    return d.abs()


@pytest.mark.parametrize("convention", ALL_CONVENTIONS)
@FEW
@given(R=rotmats())
def test_matrix_to_euler_matches_scipy(convention, R):
    for degrees in (False, True):
        angles = matrix_to_rotation(R, "euler_angles", convention, degrees=degrees)
        assert torch.isfinite(angles).all()
        assert_close(rotation_to_matrix(angles, "euler_angles", convention, degrees=degrees), R, 1e-9)
        assert_close(torch.tensor(Rotation.from_euler(convention, angles.numpy(), degrees=degrees).as_matrix()), R, 1e-9)
    rad = matrix_to_rotation(R, "euler_angles", convention)
    proper = convention[0].upper() == convention[2].upper()
    mid = rad[:, 1]
    if proper:
        assert torch.all((mid >= 0) & (mid <= PI))
        far_from_lock = torch.sin(mid).abs() > 1e-4
    else:
        assert torch.all(mid.abs() <= PI / 2 + 1e-12)
        far_from_lock = torch.cos(mid).abs() > 1e-4
    assert torch.all(rad.abs() <= PI + 1e-12)
    if far_from_lock.any():  # the decomposition is unique there: same angles as scipy
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = torch.tensor(to_scipy(R[far_from_lock]).as_euler(convention))
        assert _wrapped_diff(rad[far_from_lock], ref).max() < 1e-8


@pytest.mark.parametrize("convention", ALL_CONVENTIONS)
def test_euler_gimbal_lock(convention):
    proper = convention[0].upper() == convention[2].upper()
    mids = [0.0, PI] if proper else [PI / 2, -PI / 2]
    for mid in mids:
        for eps in [0.0, 1e-15, -1e-12, 1e-9, -1e-7]:
            m = min(max(mid + eps, 0.0), PI) if proper else mid + eps
            angles = torch.tensor([[0.4, m, -1.3], [-2.9, m, 2.2], [0.0, m, 0.0]], dtype=F64)
            R = rotation_to_matrix(angles, "euler_angles", convention).requires_grad_()
            out = matrix_to_rotation(R, "euler_angles", convention)
            assert torch.isfinite(out).all()
            out.sum().backward()
            assert torch.isfinite(R.grad).all()
            assert_close(rotation_to_matrix(out.detach(), "euler_angles", convention), R.detach(), 1e-9)
            if eps == 0.0:  # canonical: the angle applied last about its axis is 0
                zero_idx = 0 if convention.islower() else 2
                assert out[:, zero_idx].abs().max() < 1e-12


# --- rigid transforms -------------------------------------------------------------

@SETTINGS
@given(A=poses(), B=poses(), C=poses(), pts=batches(translations))
def test_compose_invert_apply(A, B, C, pts):
    eye = torch.eye(4, dtype=F64)
    assert_close(compose(A, invert(A)), eye, 1e-9)
    assert_close(compose(invert(A), A), eye, 1e-9)
    assert_close(invert(compose(A, B)), compose(invert(B), invert(A)), 1e-9)
    assert_close(invert(A), torch.linalg.inv(A), 1e-9)
    assert_close(compose(A, B, C), A @ B @ C, 1e-9)
    assert_close(compose(A, B), A @ B, 0.0)
    assert_close(apply(compose(A, B), pts), apply(A, apply(B, pts)), 1e-8)
    assert_close(apply(invert(A), apply(A, pts)), pts, 1e-8)
    homog = torch.cat([pts, torch.ones_like(pts[:, :1])], dim=-1)
    assert_close(apply(A, pts), (homog @ A.T)[:, :3], 1e-9)
    assert_close(apply_rotation(A, pts), pts @ A[:3, :3].T, 1e-12)
    R, t = split_transform(A)
    assert_close(make_transform(R, t), A, 0.0)


def test_apply_broadcasting_and_dtype():
    T = se3_exp(torch.randn(2, 5, 6)).float()
    pts = torch.randn(7, 3)
    out = apply(T, pts)  # T (2,5,4,4) broadcast over the 7 points
    assert out.shape == (2, 5, 7, 3) and out.dtype == torch.float32
    assert_close(out[1, 3], apply(T[1, 3], pts), 1e-6)
    assert apply(T, pts.expand(2, 5, 7, 3)).shape == (2, 5, 7, 3)
    assert apply_rotation(T, pts).shape == (2, 5, 7, 3)
    assert apply(T[0, 0], pts).shape == (7, 3)
    assert make_transform(torch.eye(3), torch.zeros(4, 3)).shape == (4, 4, 4)
    assert invert(T).shape == (2, 5, 4, 4) and invert(T).dtype == torch.float32


def test_as_transform():
    T = se3_exp(torch.tensor([0.1, 0.2, 0.3, 1.0, 2.0, 3.0], dtype=F64))
    out = as_transform(T.numpy())
    assert out.shape == (1, 4, 4) and out.dtype == F64
    out = as_transform(T.tolist(), dtype=torch.float32)
    assert out.shape == (1, 4, 4) and out.dtype == torch.float32
    assert as_transform(np.eye(4, dtype=np.int64)).dtype == torch.get_default_dtype()
    out = as_transform(torch.stack([T, T, T]).float())
    assert out.shape == (3, 4, 4) and out.dtype == torch.float32
    assert_close(out.double(), torch.stack([T, T, T]), 1e-6)
    for bad in [np.eye(3), np.zeros((2, 2, 4, 4)), "pose", [[1.0, 0.0], [0.0]], 2.0 * np.eye(4)]:
        with pytest.raises(InputError):
            as_transform(bad)


def _shear():
    T = np.eye(4)
    T[0, 1] = 0.3
    return T


@pytest.mark.parametrize(
    "T, words",
    [
        (np.diag([2.0, 2.0, 2.0, 1.0]), "not orthonormal"),
        (_shear(), "not orthonormal"),
        (np.diag([1.0, 1.0, -1.0, 1.0]), "reflection"),
        (np.diag([-1.0, -1.0, -1.0, 1.0]), "reflection"),
        (np.full((4, 4), np.nan), "NaN"),
        (np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0.5, 1]]), "last row"),
        (np.eye(3), "shape"),
        (np.eye(4)[:3], "shape"),
        (np.eye(5), "shape"),
    ],
)
def test_check_rigid_errors(T, words):
    with pytest.raises(InputError, match=words):
        check_rigid(T)
    with pytest.raises(InputError, match=words):
        check_rigid(torch.tensor(T))
    with pytest.raises(InputError, match=words):
        as_transform(T)


def test_check_rigid_accepts_and_names_bad_pose():
    T = se3_exp(torch.randn(8, 6, dtype=F64))
    check_rigid(T)
    check_rigid(T.float())
    check_rigid(T + 1e-6 * torch.randn(8, 4, 4, dtype=F64) * torch.tensor([1, 1, 1, 0], dtype=F64)[:, None])
    T[5, 0, 0] = 1.5
    with pytest.raises(InputError, match=r"not orthonormal \(max error .*\) \(pose 5\)"):
        check_rigid(T)
    T[5, 0, 0] = float("inf")
    with pytest.raises(InputError, match="NaN or inf"):
        check_rigid(T)


# --- geodesics --------------------------------------------------------------------

@SETTINGS
@given(A=poses(), B=poses(), C=poses())
def test_geodesics_symmetric_zero_invariant(A, B, C):
    for fn in (geodesic_rotation, geodesic_translation, geodesic_se3,
               lambda x, y: double_geodesic(x, y, 1020.0)):
        assert abs(fn(A, B).item() - fn(B, A).item()) < 1e-7
        assert fn(A, A).item() < 1e-7
        assert fn(A, B).item() >= 0
    # rotation and se3 geodesics are left-invariant
    assert abs(geodesic_rotation(C @ A, C @ B).item() - geodesic_rotation(A, B).item()) < 1e-7
    assert abs(geodesic_se3(C @ A, C @ B).item() - geodesic_se3(A, B).item()) < 1e-6


@SETTINGS
@given(xi=twists(max_angle=PI - 1e-3), base=poses())
def test_geodesic_values(xi, base):
    xi = torch.tensor(xi, dtype=F64)
    T = base @ se3_exp(xi)
    theta = xi[:3].norm().item()
    assert abs(geodesic_rotation(base, T).item() - theta) < 1e-8
    assert abs(geodesic_se3(base, T).item() - xi.norm().item()) < 1e-6
    d = (base[:3, 3] - T[:3, 3]).norm().item()
    assert abs(geodesic_translation(base, T).item() - d) < 1e-9
    sdr = 1020.0
    expected = math.sqrt((sdr * theta) ** 2 + d**2)
    assert abs(double_geodesic(base, T, sdr).item() - expected) < 1e-6
    rot, trans, double = DoubleGeodesic(sdr)(base, T)
    assert abs(rot.item() - sdr * theta) < 1e-5
    assert abs(trans.item() - d) < 1e-9
    assert abs(double.item() - expected) < 1e-6


def test_geodesic_rotation_constructed():
    A = make_transform(torch.eye(3, dtype=F64), torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    R = torch.tensor(Rotation.from_euler("x", 37, degrees=True).as_matrix())
    B = make_transform(R, torch.tensor([4.0, 6.0, 3.0], dtype=F64))
    assert abs(geodesic_rotation(A, B).item() - math.radians(37)) < 1e-12
    assert abs(geodesic_translation(A, B).item() - 5.0) < 1e-12
    batch = torch.stack([A, B, A])
    assert geodesic_rotation(batch, B).shape == (3,)
    assert double_geodesic(batch, batch, torch.tensor([1.0, 2.0, 3.0], dtype=F64)).shape == (3,)


# --- input errors -----------------------------------------------------------------

def test_input_errors():
    x3 = torch.zeros(3)
    with pytest.raises(InputError, match=r"unknown parameterization 'foo'; choose one of: axis_angle, euler_angles"):
        rotation_to_matrix(x3, "foo")
    with pytest.raises(InputError, match="unknown parameterization"):
        pose_from_params(x3, x3, "eulerangles")
    with pytest.raises(InputError, match="unknown parameterization"):
        pose_to_params(torch.eye(4), "Quaternion")
    for conv in ["XYW", "Xyz", "XXY", "xyzx", "", 3]:
        with pytest.raises(InputError, match="unknown Euler convention.*ZYZ"):
            rotation_to_matrix(x3, "euler_angles", conv)
        with pytest.raises(InputError, match="unknown Euler convention"):
            matrix_to_rotation(torch.eye(3), "euler_angles", conv)
    with pytest.raises(InputError, match="needs a convention"):
        rotation_to_matrix(x3, "euler_angles")
    for name, n in ROTATION_PARAMETERIZATIONS.items():
        with pytest.raises(InputError, match=rf"'{name}' expects .*\(\.\.\., {n}\), got \(2, {n + 1}\)"):
            pose_from_params(torch.zeros(2, n + 1), torch.zeros(2, 3), name, "XYZ")
    with pytest.raises(InputError, match="se3_log_map"):
        rotation_to_matrix(x3, "se3_log_map")
    with pytest.raises(InputError, match="degrees"):
        rotation_to_matrix(x3, "axis_angle", degrees=True)
    with pytest.raises(InputError, match="translation"):
        pose_from_params(x3, torch.zeros(2), "axis_angle")
    with pytest.raises(InputError):
        matrix_to_rotation(torch.eye(4), "quaternion")
    with pytest.raises(InputError):
        so3_exp(torch.zeros(4))
    with pytest.raises(InputError):
        se3_exp(torch.zeros(3))
    with pytest.raises(InputError):
        se3_log(torch.eye(3))
    with pytest.raises(InputError):
        compose()
    with pytest.raises(InputError):
        apply(torch.eye(4), torch.zeros(3))
    for sdr in [0.0, -5.0, float("nan"), "far"]:
        with pytest.raises(InputError, match="sdr"):
            DoubleGeodesic(sdr)
        with pytest.raises(InputError, match="sdr"):
            double_geodesic(torch.eye(4), torch.eye(4), sdr)
    assert issubclass(InputError, ValueError)
