"""The motion model of sequences (issue 14): constant-velocity Kalman filter on SE(3), its smoother,
the measurement covariance of a registration, and track_sequence's use of them."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies

from xraypose.errors import InputError
from xraypose.geometry import make_transform, se3_exp, so3_exp
from xraypose.register.motion import MotionFilter, MotionModel, measurement_covariance, pose_spread, smooth

F64 = torch.float64
ISO = torch.tensor([10.0, -20.0, 30.0], dtype=F64)


def _about_iso(xi: torch.Tensor) -> torch.Tensor:
    """F·exp(ξ)·F⁻¹ with F the translation to ISO."""
    F = torch.eye(4, dtype=F64)
    F[:3, 3] = ISO
    return F @ se3_exp(xi) @ torch.linalg.inv(F)


def _trajectory(n: int, seed: int = 0):
    """True poses: a smooth motion (velocity changing slowly), a pose looking along world -y."""
    g = torch.Generator().manual_seed(seed)
    R0 = so3_exp(torch.tensor([math.pi / 2, 0.0, 0.0], dtype=F64))
    T = make_transform(R0, torch.tensor([0.0, -700.0, 0.0], dtype=F64))
    v = torch.zeros(6, dtype=F64)
    out = []
    for _ in range(n):
        out.append(T)
        v = 0.9 * v + 0.1 * torch.randn(6, generator=g, dtype=F64) * torch.tensor([0.01] * 3 + [1.0] * 3, dtype=F64)
        T = _about_iso(v) @ T
    return out


def _noisy(T: torch.Tensor, R: torch.Tensor, g) -> torch.Tensor:
    """T moved by a draw of covariance R (world-axes chart at ISO)."""
    L = torch.linalg.cholesky(R)
    return _about_iso(L @ torch.randn(6, generator=g, dtype=F64)) @ T


def _err(A: torch.Tensor, B: torch.Tensor) -> float:
    """Distance (mm) between where the two poses put ISO plus 100 mm × the angle between them."""
    D = A @ torch.linalg.inv(B)
    R = D[:3, :3]
    # the angle from sin and cos together: acos of the trace alone turns a rounding of 1e-16 near the
    # identity into 1.5e-8 rad (the same prediction computed twice read 2e-6 apart on an Intel Xeon)
    s = 0.5 * float(torch.stack([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]).norm())
    ang = math.atan2(s, (float(torch.trace(R)) - 1) / 2)
    return float((D[:3, :3] @ ISO + D[:3, 3] - ISO).norm()) + 100 * ang


# a measurement noise like one view's: 1.5 mm along the beam (world y here), 0.2 mm across, small turns
R_MEAS = torch.diag(torch.tensor([2e-4, 2e-4, 2e-4, 0.2, 1.5, 0.2], dtype=F64) ** 2)


def test_filter_and_smoother_reduce_the_error_of_noisy_measurements():
    truth = _trajectory(60)
    g = torch.Generator().manual_seed(3)
    meas = [_noisy(T, R_MEAS, g) for T in truth]
    filt = MotionFilter(ISO, MotionModel(accel_mm=0.3, accel_deg=0.2))
    est = [filt.update(m, R_MEAS) for m in meas]
    sm = smooth(filt)
    rms = lambda xs: math.sqrt(sum(_err(a, b) ** 2 for a, b in zip(xs[5:], truth[5:])) / len(xs[5:]))  # noqa: E731
    raw, f, s = rms(meas), rms(est), rms(sm)
    assert f < 0.8 * raw, (raw, f)
    assert s < 0.8 * f, (f, s)
    assert sum(st.restart for st in filt.steps) == 1  # only the first frame


def test_exact_measurements_pass_through_and_first_frame_is_taken_as_is():
    truth = _trajectory(10)
    filt = MotionFilter(ISO)
    tiny = torch.eye(6, dtype=F64) * 1e-12
    for T in truth:
        out = filt.update(T, tiny)
        assert _err(out, T) < 1e-4
    for a, b in zip(smooth(filt), truth):
        assert _err(a, b) < 1e-4


def test_prediction_is_constant_velocity():
    filt = MotionFilter(ISO)
    xi = torch.tensor([0.01, -0.02, 0.005, 1.0, 2.0, -0.5], dtype=F64)
    T0 = _trajectory(1)[0]
    tiny = torch.eye(6, dtype=F64) * 1e-12
    T1 = _about_iso(xi) @ T0
    filt.update(T0, tiny)
    filt.update(T1, tiny)
    assert _err(filt.predict(), _about_iso(xi) @ T1) < 1e-3


def test_a_jump_restarts_the_filter_and_is_not_smoothed_across():
    truth = _trajectory(20)
    jump = _about_iso(torch.tensor([0.0, 0.1, 0.0, 25.0, 0.0, 10.0], dtype=F64))
    truth = truth[:10] + [jump @ T for T in truth[10:]]
    g = torch.Generator().manual_seed(5)
    meas = [_noisy(T, R_MEAS, g) for T in truth]
    filt = MotionFilter(ISO)
    est = [filt.update(m, R_MEAS) for m in meas]
    assert filt.steps[10].restart and not any(st.restart for st in filt.steps[1:10])
    assert _err(est[10], meas[10]) < 1e-9  # taken as it is
    sm = smooth(filt)
    assert all(_err(a, b) < 5.0 for a, b in zip(sm, truth))  # nothing dragged 27 mm across the jump
    # frames before the jump are smoothed by the frames before it only
    filt2 = MotionFilter(ISO)
    for m in meas[:10]:
        filt2.update(m, R_MEAS)
    for a, b in zip(sm[:10], smooth(filt2)):
        assert _err(a, b) < 1e-6


def test_restart_when_asked_or_without_covariance():
    truth = _trajectory(5)
    filt = MotionFilter(ISO)
    filt.update(truth[0], R_MEAS)
    filt.update(truth[1], R_MEAS)
    filt.update(truth[2], None)
    filt.update(truth[3], R_MEAS, restart=True)
    assert [st.restart for st in filt.steps] == [True, False, True, True]


def test_coast_predicts_and_grows_uncertainty():
    truth = _trajectory(6)
    filt = MotionFilter(ISO)
    for T in truth[:4]:
        filt.update(T, R_MEAS)
    p = filt.predict()
    out = filt.coast()
    assert _err(out, p) < 1e-12
    assert not filt.steps[-1].measured
    assert float(torch.trace(filt.steps[-1].P)) > float(torch.trace(filt.steps[-2].P))
    filt.update(truth[5], R_MEAS)
    assert len(smooth(filt)) == 6


def test_filter_without_frames_refuses_to_predict():
    with pytest.raises(InputError, match="no frame"):
        MotionFilter(ISO).predict()
    with pytest.raises(InputError, match="no frame"):
        MotionFilter(ISO).coast()
    assert smooth(MotionFilter(ISO)) == []


@pytest.mark.parametrize("bad", [{"accel_mm": 0.0}, {"accel_deg": -1.0}, {"noise_scale": float("nan")},
                                 {"gate": float("inf")}, {"accel_mm": "1"}])
def test_motion_model_settings_are_checked(bad):
    name = next(iter(bad))
    with pytest.raises(InputError, match=name):
        MotionModel(**bad)


def test_measurement_covariance_is_inverse_curvature_scaled_and_turned_to_world_axes():
    H = torch.diag(torch.tensor([4e6, 4e6, 1e6, 400.0, 400.0, 4.0], dtype=F64))
    R = so3_exp(torch.tensor([0.3, -0.2, 0.9], dtype=F64))
    pose = make_transform(R, torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    C = measurement_covariance(H, similarity=0.9, n_pixels=1000, pose=pose, scale=2.0)
    var = 2 * (1 - 0.9) / 1000 * 4.0
    A = torch.block_diag(R, R)
    back = A.T @ C @ A  # in the pose's own axes again
    assert torch.allclose(back, torch.linalg.inv(H) * var, rtol=1e-9, atol=1e-18)
    # the depth (pose axis z) is the weak direction: its world direction is R's third column
    w, V = torch.linalg.eigh(C[3:, 3:])
    assert abs(float(V[:, -1] @ R[:, 2])) > 0.999


@pytest.mark.parametrize("H", [None, torch.full((6, 6), float("nan"), dtype=F64), -torch.eye(6, dtype=F64),
                               torch.zeros(6, 6, dtype=F64), torch.eye(3, dtype=F64)])
def test_measurement_covariance_without_a_usable_curvature_is_none(H):
    assert measurement_covariance(H, 0.9, 100, torch.eye(4, dtype=F64)) is None


def test_smoother_covariances_are_positive_and_below_the_filters():
    truth = _trajectory(30)
    g = torch.Generator().manual_seed(7)
    filt = MotionFilter(ISO)
    for T in truth:
        filt.update(_noisy(T, R_MEAS, g), R_MEAS)
    poses, covs = smooth(filt, covariances=True)
    assert len(poses) == len(covs) == 30
    for f, (C, st) in enumerate(zip(covs, filt.steps)):
        assert torch.allclose(C, C.T, atol=1e-12) and float(torch.linalg.eigvalsh(C).min()) > 0
        if 0 < f < 29:  # later frames pool in: smaller than the filter's (the last is the filter's)
            assert float(torch.trace(C)) < float(torch.trace(st.P[:6, :6]))
    assert torch.allclose(covs[-1], filt.steps[-1].P[:6, :6])
    # the depth (world y here, the camera's z) is the least certain translation, as measured
    sp = pose_spread(covs[15], truth[15])
    assert sp["along_beam_mm"] > 2 * sp["across_beam_mm"] > 0 and sp["rotation_deg"] > 0


def test_pose_spread_reads_the_covariance_along_the_cameras_axis():
    C = torch.diag(torch.tensor([1e-4, 4e-4, 9e-4, 1.0, 4.0, 9.0], dtype=F64))
    assert pose_spread(C, torch.eye(4, dtype=F64)) == pytest.approx(
        {"along_beam_mm": 3.0, "across_beam_mm": math.sqrt(2.5), "rotation_deg": math.degrees(math.sqrt(14e-4 / 3))})
    R = so3_exp(torch.tensor([math.pi / 2, 0.0, 0.0], dtype=F64))  # camera z along world -y
    assert pose_spread(C, make_transform(R, torch.zeros(3, dtype=F64)))["along_beam_mm"] == pytest.approx(2.0)
    assert pose_spread(None, torch.eye(4, dtype=F64)) is None


def _fast_trajectory(n: int, accel_mm: float, accel_deg: float, seed: int = 0):
    """True poses whose velocity changes by white noise of ``accel_mm`` / ``accel_deg`` per axis each frame."""
    g = torch.Generator().manual_seed(seed)
    R0 = so3_exp(torch.tensor([math.pi / 2, 0.0, 0.0], dtype=F64))
    T = make_transform(R0, torch.tensor([0.0, -700.0, 0.0], dtype=F64))
    v = torch.zeros(6, dtype=F64)
    sd = torch.tensor([math.radians(accel_deg)] * 3 + [accel_mm] * 3, dtype=F64)
    out = []
    for _ in range(n):
        out.append(T)
        v = v + sd * torch.randn(6, generator=g, dtype=F64)
        T = _about_iso(v) @ T
    return out


def _filtered(truth, model, R_true, R_told, seed=1, restart_at=()):
    g = torch.Generator().manual_seed(seed)
    f = MotionFilter(ISO, model)
    for k, T in enumerate(truth):
        f.update(_noisy(T, R_true, g), R_told, restart=k in restart_at)
    return f


def test_replay_with_the_same_model_repeats_the_filter():
    """The measurements kept by each step, run again through the same model, give the same poses, velocities
    and covariances (restarts and a coasted frame included)."""
    from xraypose.register.motion import replay

    truth = _trajectory(30)
    g = torch.Generator().manual_seed(5)
    f = MotionFilter(ISO, MotionModel())
    for k, T in enumerate(truth):
        if k == 12:
            f.coast()
        else:
            f.update(_noisy(T, R_MEAS, g), R_MEAS, restart=k == 20)
    again, ll, n = replay(f, f.model)
    assert n == len(truth) - 3  # every frame but the first, the restart and the coasted one
    assert math.isfinite(ll)
    for a, b in zip(f.steps, again.steps):
        assert a.restart == b.restart and a.measured == b.measured
        assert torch.allclose(a.pose, b.pose, atol=1e-9) and torch.allclose(a.P, b.P, atol=1e-12)
        assert torch.allclose(a.velocity, b.velocity, atol=1e-12)


@pytest.mark.parametrize("k, seed, want", [(1.5, 1, "faster"), (0.35, 3, "slower")])
def test_fit_noise_follows_the_sequences_own_motion_and_smooths_it_better(k, seed, want):
    """A sequence whose velocity changes k× as fast as the model says: the fit moves the process noise that way
    (k = 1.5: a factor ≥ 1.41; k = 0.35: ≤ 0.71), and the smoother's poses come nearer the truth than with the
    model as it was."""
    from xraypose.register.motion import fit_noise

    model = MotionModel(accel_mm=0.3, accel_deg=0.2, noise_scale=1.0)
    truth = _fast_trajectory(100, accel_mm=0.3 * k, accel_deg=0.2 * k, seed=seed)
    f = _filtered(truth, model, R_MEAS, R_MEAS)
    fitted, info = fit_noise(f)
    assert info is not None and info["innovations"] >= 90
    assert info["accel_factor"] >= 1.41 if want == "faster" else info["accel_factor"] <= 0.71
    before = sum(_err(P, T) for P, T in zip(smooth(f), truth))
    after = sum(_err(P, T) for P, T in zip(smooth(fitted), truth))
    assert after < (0.97 if want == "faster" else 0.9) * before


def test_fit_noise_reads_measurements_told_too_precise():
    """Measurements 2× noisier than their covariance says, on a slow sequence: the fit scales the
    measurements' noise up (factor ≥ 1.41), not the motion's."""
    from xraypose.register.motion import fit_noise

    truth = _trajectory(100)
    f = _filtered(truth, MotionModel(noise_scale=1.0), R_MEAS * 4.0, R_MEAS)
    _, info = fit_noise(f)
    assert info["noise_factor"] >= 1.41 and info["accel_factor"] <= 1.0


def test_fit_noise_leaves_a_short_sequence_alone():
    from xraypose.register.motion import FIT_MIN_INNOVATIONS, fit_noise

    truth = _trajectory(FIT_MIN_INNOVATIONS)  # one innovation short (the first frame has none)
    f = _filtered(truth, MotionModel(), R_MEAS, R_MEAS)
    same, info = fit_noise(f)
    assert same is f and info is None


def test_the_batched_likelihoods_are_each_replays():
    """replay_likelihoods: for every (accel, noise) factor pair the log-likelihood and count of one replay of that
    model (a restart and a coasted frame in the sequence)."""
    from xraypose.register.motion import replay, replay_likelihoods

    truth = _fast_trajectory(40, accel_mm=0.45, accel_deg=0.3, seed=2)
    g = torch.Generator().manual_seed(9)
    f = MotionFilter(ISO, MotionModel(noise_scale=1.0))
    for k, T in enumerate(truth):
        if k == 15:
            f.coast()
        else:
            f.update(_noisy(T, R_MEAS, g), R_MEAS, restart=k == 30)
    pairs = [(0.5, 0.71), (1.0, 1.0), (2.0, 1.41)]
    ll, n = replay_likelihoods(f, pairs)
    for (a, r), got in zip(pairs, ll):
        m = MotionModel(accel_mm=0.3 * a, accel_deg=0.2 * a, noise_scale=1.0 * r)
        _, want, n1 = replay(f, m, r)
        assert n == n1 and float(got) == pytest.approx(want, rel=1e-9, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(strategies.lists(strategies.floats(-5.0, 5.0), min_size=3, max_size=3),
       strategies.lists(strategies.floats(0.05, 3.0), min_size=6, max_size=6),
       strategies.lists(strategies.floats(0.05, 3.0), min_size=6, max_size=6))
def test_fuse_measurements_is_the_information_weighted_mean(offset, sd_a, sd_b):
    """Two measurements of one pose that differ by a translation, diagonal covariances: the fused translation is
    each axis's inverse-variance mean, its variance the harmonic sum, and the order does not matter."""
    from xraypose.register.motion import fuse_measurements

    iso = torch.tensor([10.0, -20.0, 30.0], dtype=F64)
    R0 = so3_exp(torch.tensor([0.2, -0.1, 0.3], dtype=F64))
    A = make_transform(R0, torch.tensor([5.0, 6.0, 700.0], dtype=F64))
    B = A.clone()
    d = torch.tensor(offset, dtype=F64)
    B[:3, 3] += d
    va, vb = torch.tensor(sd_a, dtype=F64) ** 2, torch.tensor(sd_b, dtype=F64) ** 2
    T, R = fuse_measurements(A, torch.diag(va), B, torch.diag(vb), iso)
    w = (1 / vb[3:]) / (1 / va[3:] + 1 / vb[3:])
    assert torch.allclose(T[:3, 3], A[:3, 3] + w * d, atol=1e-9)
    assert torch.allclose(T[:3, :3], R0, atol=1e-12)
    assert torch.allclose(R, torch.diag(1 / (1 / va + 1 / vb)), atol=1e-12)
    T2, R2 = fuse_measurements(B, torch.diag(vb), A, torch.diag(va), iso)
    assert torch.allclose(T2, T, atol=1e-9) and torch.allclose(R2, R, atol=1e-12)


def test_fuse_measurements_weighs_a_turn_and_refuses_a_covariance_it_cannot_invert():
    """A turn about the isocenter fused at equal weight lands half way (the isocenter stays put); a measurement
    far more precise than the other wins; a singular or NaN covariance is refused."""
    from xraypose.register.motion import fuse_measurements

    iso = torch.tensor([0.0, 0.0, 100.0], dtype=F64)
    A = make_transform(torch.eye(3, dtype=F64), torch.tensor([0.0, 0.0, -500.0], dtype=F64))
    F = make_transform(torch.eye(3, dtype=F64), iso)
    turn = lambda deg: F @ se3_exp(torch.tensor([0.0, math.radians(deg), 0.0, 0.0, 0.0, 0.0], dtype=F64)) @ torch.linalg.inv(F)  # noqa: E731
    B = turn(4.0) @ A
    I6 = torch.eye(6, dtype=F64)
    T, R = fuse_measurements(A, I6, B, I6, iso)
    assert torch.allclose(T, turn(2.0) @ A, atol=1e-9) and torch.allclose(R, 0.5 * I6)
    T, _ = fuse_measurements(A, I6, B, 1e-8 * I6, iso)
    assert torch.allclose(T, B, atol=1e-6)
    with pytest.raises(InputError, match="positive definite"):
        fuse_measurements(A, torch.zeros(6, 6, dtype=F64), B, I6, iso)
    with pytest.raises(InputError, match="positive definite"):
        fuse_measurements(A, I6, B, torch.full((6, 6), float("nan"), dtype=F64), iso)
