"""The registration loop's parts: residual measures, density bases, the Levenberg–Marquardt stepper."""

import math

import pytest
import torch

from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.metrics import pose_errors
from xraypose.register import Level, Registrar, RegistrationConfig
from xraypose.register.cases import CaseMaker
from xraypose.register.measures import MEASURES, residual, score_from_residual
from xraypose.render.density import DENSITY_MODELS, density_basis, registration_basis
from xraypose.similarity import gradient_ncc, multiscale_ncc, ncc
from xraypose.volume import Volume, load_sample_ct

F64 = torch.float64


def _images(seed=0, n=3, h=40, w=36):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, h, w, generator=g, dtype=F64).cumsum(-1)  # some structure
    y = 0.7 * x + 0.3 * torch.randn(n, 1, h, w, generator=g, dtype=F64) + 5.0
    return x, y


@pytest.mark.parametrize("name,reference", [
    ("ncc", lambda x, y: ncc(x, y)),
    ("mncc", lambda x, y: multiscale_ncc(x, y, (None, 13), (0.5, 0.5))),
    ("gncc", lambda x, y: gradient_ncc(x, y)),
    ("mixed", lambda x, y: 0.5 * multiscale_ncc(x, y) + 0.5 * gradient_ncc(x, y)),
])
def test_residual_scores_equal_the_similarity_functions(name, reference):
    x, y = _images()
    s = score_from_residual(residual(name, x, y))
    assert torch.allclose(s, reference(x, y), atol=1e-6)
    # perfect match = 1, and an affine intensity change does not matter
    assert torch.allclose(score_from_residual(residual(name, x, 3 * x - 2)), torch.ones(3, dtype=F64), atol=1e-6)


def test_residual_gradients_match_the_score():
    x, y = _images(1, n=1)
    x.requires_grad_(True)
    score_from_residual(residual("mncc", x, y)).sum().backward()
    g1 = x.grad.clone()
    x.grad = None
    multiscale_ncc(x, y).sum().backward()
    assert torch.allclose(g1, x.grad, atol=1e-6, rtol=1e-4)


def test_sparse_patches_measure_per_patch():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 9, 9, generator=g, dtype=F64)
    y = x.clone()
    y[:, 0] = 4 * y[:, 0] + 1  # one patch rescaled: local NCC still 1, the whole-image NCC not
    s_local = score_from_residual(residual("mncc", x, y, sparse=True, weights=(0.0, 1.0)))
    s_whole = score_from_residual(residual("ncc", x, y, sparse=True))
    assert torch.allclose(s_local, torch.ones(2, dtype=F64), atol=1e-6)
    assert bool((s_whole < 0.99).all())
    assert torch.isfinite(score_from_residual(residual("gncc", x, y, sparse=True))).all()


def test_residual_bad_input():
    x, y = _images()
    with pytest.raises(InputError, match="unknown similarity"):
        residual("nope", x, y)
    with pytest.raises(InputError, match="different shapes"):
        residual("ncc", x, y[..., :-1])
    assert set(MEASURES) >= {"ncc", "mncc", "gncc", "mixed"}


def test_linear_density_basis_and_registration_basis():
    hu = torch.tensor([-1000.0, -500.0, 0.0, 300.0, 400.0, 1500.0]).reshape(1, 2, 3)
    vol = Volume(hu, torch.eye(4, dtype=F64))
    (A, B), norm = density_basis(vol, "linear")
    m = 1.7
    expected = (hu + 1000).clamp_min(0) + (m - 1) * torch.where(hu > 350, hu, torch.zeros_like(hu))
    assert torch.allclose(A + m * B, expected)
    assert float(norm(torch.tensor(m))) == 1.0
    R = registration_basis(vol, "linear", m)
    assert torch.allclose(R[0], expected / expected.max()) and torch.allclose(R[1], B / expected.max())
    for model in DENSITY_MODELS:
        if model != "raw":
            assert registration_basis(vol, model).shape == (3, 1, 2, 3)
    with pytest.raises(InputError, match="constant"):
        registration_basis(Volume(torch.full((2, 2, 2), -1000.0), torch.eye(4, dtype=F64)), "linear")


@pytest.fixture(scope="module")
def volume():
    return load_sample_ct()


@pytest.fixture(scope="module")
def case(volume):
    mk = CaseMaker(volume, camera=Camera(sdd=1020.0, height=96, width=96, delx=280.0 / 96), collimator_px=3,
                   n_fiducials=10)
    return mk.case(2)


def _mtre(T, c):
    return float(pose_errors(T, c.true_pose, c.fiducials, c.camera)["mtre"].max())


def test_lm_level_converges_by_its_test_near_the_truth(volume, case):
    """From a 3 mm / 1° start, one LM level reaches the optimum in a few iterations and says 'converged'."""
    from xraypose.register.cases import perturb_pose

    T0 = perturb_pose(case.true_pose, volume.get_isocenter(), 1.0, 3.0, torch.Generator().manual_seed(5))[0]
    assert _mtre(T0, case) > 2.0
    lv = Level(size=64, iterations=40, volume_mm=3.0, fit_bone=True, optimizer="lm", similarity="gncc")
    res = Registrar(volume, RegistrationConfig(levels=(lv,), drr_blur=1.0)).register(case.image, case.camera, T0)
    assert res.status == ["converged"] and res.levels[0][0]["ended"] == "converged"
    assert int(res.iterations[0]) < 25
    assert _mtre(res.poses[0], case) < 1.0
    # the similarity only ever went up between accepted steps; the result is the best seen
    sims = [r["similarity"] for r in res.trajectories[0]]
    assert float(res.similarity[0]) == pytest.approx(max(sims))
    assert res.level_stats[0]["optimizer"] == "lm" and res.level_stats[0]["converged"] == 1


def test_lm_trust_region_bounds_each_step(volume, case):
    """No accepted LM step moves the CT by more than lm_max_step_px pixels (at the isocenter, r = 100 mm)."""
    from xraypose.register.cases import perturb_pose
    from xraypose.geometry import so3_log

    T0 = perturb_pose(case.true_pose, volume.get_isocenter(), 2.0, 10.0, torch.Generator().manual_seed(6))[0]
    lv = Level(size=32, iterations=15, volume_mm=6.0, optimizer="lm")
    cfg = RegistrationConfig(levels=(lv,), drr_blur=1.0, lm_max_step_px=0.5)
    res = Registrar(volume, cfg).register(case.image, case.camera, T0)
    poses = [torch.tensor(r["camera_to_world"], dtype=F64) for r in res.trajectories[0]]
    cam = case.camera.resize(32, 32)
    iso = volume.get_isocenter().to(F64)
    for a, b in zip(poses, poses[1:]):
        d = b @ torch.linalg.inv(a)
        angle = float(so3_log(d[:3, :3]).norm())
        shift = float((d[:3, :3] @ iso + d[:3, 3] - iso).norm())
        z = float(cam.depth(iso[None], a[None])[0, 0])
        pix = min(cam.delx, cam.dely) * z / cam.sdd
        assert angle * cfg.motion_radius_mm + shift <= 0.5 * pix * 1.05 + 1e-6


def test_level_optimizer_and_similarity_are_validated():
    with pytest.raises(InputError, match="optimizer"):
        RegistrationConfig(levels=(Level(size=16, optimizer="newton"),))
    with pytest.raises(InputError, match="similarity"):
        RegistrationConfig(levels=(Level(size=16, similarity="mi"),))
    cfg = RegistrationConfig(levels=(Level(size=16, similarity="gncc"), Level(size=32)))
    assert [cfg.level_similarity(lv) for lv in cfg.levels] == ["gncc", "mncc"]
    assert math.isfinite(cfg.lm_tol_px)


def test_biplane_rig_registration_recovers_the_rig_pose(volume):
    """Two views 90° apart tied by a known rig: one rig_to_world is found; both views fit, depth included."""
    from xraypose.camera import carm_pose
    from xraypose.register.cases import perturb_pose
    from xraypose.synthetic import XraySimulator
    from xraypose.preprocess import preprocess

    iso = volume.get_isocenter().to(F64)
    cam = Camera(sdd=1020.0, height=64, width=64, delx=280.0 / 64)
    # rig frame = a frame at the isocenter; camera_to_rig of an AP and a lateral C-arm shot
    rig_frame = torch.eye(4, dtype=F64)
    rig_frame[:3, 3] = iso
    C = torch.stack([torch.linalg.inv(rig_frame) @ carm_pose(a, 0.0, sod=612.0, isocenter=iso) for a in (0.0, 90.0)])
    X_true = perturb_pose(rig_frame, iso, 3.0, 8.0, torch.Generator().manual_seed(1))[0]
    views = []
    for i in range(2):
        sim = XraySimulator(volume, cam, supersample=1, photons=0, blur_px=0.0)
        raw = sim(X_true @ C[i]).raw[0, 0]
        pre = preprocess(raw, cam, blur=(5, 1.0), log=True, i0=sim.i0, rescale=True)
        views.append((pre.image, pre.camera, C[i]))
    X0 = perturb_pose(X_true, iso, 2.0, 6.0, torch.Generator().manual_seed(2))[0]
    lv = (Level(size=32, iterations=30, volume_mm=6.0, optimizer="lm"),
          Level(size=64, iterations=30, volume_mm=3.0, fit_bone=True, optimizer="lm", similarity="gncc"))
    reg = Registrar(volume, RegistrationConfig(levels=lv, drr_blur=1.0))
    res = reg.register_views(views, X0)
    fid = volume.get_isocenter().to(F64)[None] + torch.tensor([[30.0, 0, 0], [0, 30, 0], [0, 0, 30], [-30, -30, 0]],
                                                                dtype=F64)
    err = lambda X: float(pose_errors(X, X_true, fid, sdr=510.0)["mtre"])  # noqa: E731
    assert err(X0) > 3.0
    assert err(res.poses[0]) < 0.5 * err(X0) and err(res.poses[0]) < 1.0
    # bad input: a non-rigid camera_to_rig, views of different case counts
    bad = views[1][2].clone()
    bad[:3, :3] *= 1.1
    with pytest.raises(InputError, match="rigid"):
        reg.register_views([views[0], (views[1][0], views[1][1], bad)], X0)
    with pytest.raises(InputError, match="numbers of X-rays"):
        reg.register_views([views[0], (torch.stack([views[1][0]] * 2)[:, None], views[1][1], views[1][2])], X0)


def test_lm_curvature_from_the_linearised_drr_matches_finite_differences(volume, case):
    """The Gauss–Newton curvature from one render and the kernel's pose derivatives agrees with the
    one from six extra renders (finite differences), and both registrations reach the optimum."""
    import xraypose.register.steppers as steppers
    from xraypose.register.cases import perturb_pose

    T0 = perturb_pose(case.true_pose, volume.get_isocenter(), 1.0, 3.0, torch.Generator().manual_seed(5))[0]
    lv = Level(size=64, iterations=40, volume_mm=3.0, fit_bone=True, optimizer="lm", similarity="gncc",
               robust=True, fit_tissue=True, fit_curve=True)
    seen, renders = {}, {}
    original = steppers.LMStepper._curvature
    calls = {"n": 0}

    def spy(self, tracks):
        before = calls["n"]
        original(self, tracks)
        seen.setdefault(self.config.lm_linearised, tracks[0].work["H"].clone())
        renders.setdefault(self.config.lm_linearised, calls["n"] - before)

    import xraypose.register.objective as objective
    render0 = objective.render

    def counting(*a, **k):
        calls["n"] += 1
        return render0(*a, **k)

    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(steppers.LMStepper, "_curvature", spy)
        mp.setattr(objective, "render", counting)
        for lin in (False, True):
            cfg = RegistrationConfig(levels=(lv,), drr_blur=1.0, lm_linearised=lin)
            results[lin] = Registrar(volume, cfg).register(case.image, case.camera, T0)
    Hfd, Hlin = seen[False], seen[True]
    assert float((Hfd - Hlin).norm() / Hfd.norm()) < 0.1  # 4.5 % apart (both re-fit each neighbour)
    assert renders[False] == 1 and renders[True] == 0  # the base and six poses in one batch, against none
    for lin in (False, True):
        assert _mtre(results[lin].poses[0], case) < 1.0


def _noiseless_rig(volume, second_deg: float):
    """(isocenter, true poses [P0, P1], views): two noiseless 64² X-rays of ``volume`` from C-arm angles 0°
    and ``second_deg`` about the isocenter, preprocessed; views as ``register_views`` takes them, the rig
    frame being view 0's camera (its ``camera_to_rig`` None)."""
    from xraypose.camera import carm_pose
    from xraypose.preprocess import preprocess
    from xraypose.synthetic import XraySimulator

    iso = volume.get_isocenter().to(F64)
    cam = Camera(sdd=1020.0, height=64, width=64, delx=280.0 / 64)
    P = [carm_pose(a, 0.0, sod=612.0, isocenter=iso) for a in (0.0, second_deg)]
    views = []
    for i, C in enumerate((None, torch.linalg.inv(P[0]) @ P[1])):
        sim = XraySimulator(volume, cam, supersample=1, photons=0, blur_px=0.0)
        pre = preprocess(sim(P[i]).raw[0, 0], cam, blur=(5, 1.0), log=True, i0=sim.i0, rescale=True)
        views.append((pre.image, pre.camera, C))
    return iso, P, views


@pytest.mark.parametrize("mode", ["start-view", "both"])
def test_rig_capture_on_the_start_view_then_every_view(volume, mode):
    """rig_capture="start-view": the capture (Adam) levels see the start view only, the later levels
    both views; "both": the joint capture too, the better goes on; one result with every level's
    record; an unknown setting is refused."""
    from xraypose.register.cases import perturb_pose

    iso, P, views = _noiseless_rig(volume, 80.0)  # rig frame = the first view's camera
    X0 = perturb_pose(P[0], iso, 4.0, 12.0, torch.Generator().manual_seed(3))[0]
    lv = (Level(size=32, iterations=40, volume_mm=6.0, depth_lr_scale=0.2),
          Level(size=64, iterations=30, volume_mm=3.0, fit_bone=True, optimizer="lm", similarity="gncc"))
    seen = []
    original = Registrar.register_views

    def spy(self, v, *a, **k):
        seen.append((len(v), len(self.config.levels)))
        return original(self, v, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Registrar, "register_views", spy)
        res = Registrar(volume, RegistrationConfig(levels=lv, drr_blur=1.0, rig_capture=mode)).register_views(
            views, X0)
    # the call, the capture on the start view, (the joint capture,) the rest on both views
    assert seen == ([(2, 2), (1, 1), (2, 1)] if mode == "start-view" else [(2, 2), (1, 1), (2, 1), (2, 1)])
    assert res.chosen_start[0] in ((0,) if mode == "start-view" else (0, 1))
    fid = iso[None] + torch.tensor([[30.0, 0, 0], [0, 30, 0], [0, 0, 30], [-30, -30, 0]], dtype=F64)
    err = lambda X: float(pose_errors(X, P[0], fid, sdr=510.0)["mtre"])  # noqa: E731
    assert err(X0) > 5.0 and err(res.poses[0]) < 1.0
    assert [s["level"] for s in res.level_stats] == [0, 1] and [x["level"] for x in res.levels[0]] == [0, 1]
    assert {r["level"] for r in res.trajectories[0]} == {0, 1} and sorted(res.curvature[0]) == [1]
    assert torch.equal(res.initial_poses[0], X0)
    with pytest.raises(InputError, match="rig_capture"):
        RegistrationConfig(rig_capture="every")


def test_pose_motion_is_the_rotation_at_the_radius_plus_the_isocenters_travel():
    """The Adam levels' "the best pose stayed put" test: angle(T2·T1⁻¹)·radius + |D·iso − iso|,
    here in plain floats, against so3_log, at angles from 1e-7 rad to nearly π."""
    from xraypose.geometry import se3_exp, so3_log
    from xraypose.register.steppers import pose_motion_mm

    g = torch.Generator().manual_seed(0)
    for s in (1e-7, 1e-3, 0.3, 2.0, 3.1):
        for _ in range(10):
            T1 = se3_exp(torch.randn(6, generator=g, dtype=F64) * torch.tensor([1, 1, 1, 50, 50, 50.0], dtype=F64))
            T2 = se3_exp(torch.randn(6, generator=g, dtype=F64) * s) @ T1
            iso = torch.randn(3, generator=g, dtype=F64) * 30
            D = T2 @ torch.linalg.inv(T1)
            want = float(so3_log(D[:3, :3]).norm()) * 100.0 + float((D[:3, :3] @ iso + D[:3, 3] - iso).norm())
            assert pose_motion_mm(T1, T2, iso, 100.0) == pytest.approx(want, rel=1e-7, abs=1e-9)
    T = se3_exp(torch.randn(6, generator=g, dtype=F64))
    assert pose_motion_mm(T, T, torch.zeros(3, dtype=F64), 100.0) == pytest.approx(0.0, abs=1e-9)


def test_a_rejected_lm_step_is_retried_shorter_never_by_rendering_the_best_pose_again(volume, case):
    """After a rejected step, Levenberg–Marquardt tries a shorter step from the best pose (damping
    ×10) with the gradient and curvature found there; it never evaluates a pose twice (it did: every
    rejection re-rendered the best pose, which could not be accepted, until the damping ran out)."""
    from xraypose.register.cases import perturb_pose

    T0 = perturb_pose(case.true_pose, volume.get_isocenter(), 2.0, 5.0, torch.Generator().manual_seed(3))[0]
    lv = Level(size=48, iterations=25, volume_mm=3.0, fit_bone=True, optimizer="lm")
    res = Registrar(volume, RegistrationConfig(levels=(lv,), drr_blur=1.0, lm_tol_px=1e-4,
                                               lm_reject_tol_px=0.0)).register(case.image, case.camera, T0)
    traj = [torch.tensor(r["camera_to_world"], dtype=F64) for r in res.trajectories[0]]
    damping = [r["damping"] for r in res.trajectories[0]]
    assert any(b > a for a, b in zip(damping, damping[1:]))  # there were rejections (tight tolerance)
    for i in range(len(traj)):
        for j in range(i):
            assert not torch.equal(traj[i], traj[j]), (i, j)
    assert _mtre(res.poses[0], case) < min(2.5, 0.5 * _mtre(T0, case))  # one 48-row level: pixels of ~3.5 mm


def test_a_rejected_lm_step_is_retried_with_enough_damping_to_shorten_it(volume, case):
    """A rejection raises the damping ×10 and to at least ``lm_reject_damping`` (1: the step about
    halves).  ×10 alone, from the small damping of a run of accepted steps (1e-3 / 3 per accepted
    step), left the retried step as long as the rejected one: a render per near-copy (2.9 of 6.4
    evaluations of a tracked frame's fine level).  Both ways reach the same optimum here; the default
    in fewer evaluations; a negative or non-numeric value is refused."""
    from xraypose.register.cases import perturb_pose

    T0 = perturb_pose(case.true_pose, volume.get_isocenter(), 2.0, 5.0, torch.Generator().manual_seed(3))[0]
    lv = Level(size=48, iterations=40, volume_mm=3.0, fit_bone=True, optimizer="lm")
    runs = {}
    for floor in (1.0, 0.0):
        cfg = RegistrationConfig(levels=(lv,), drr_blur=1.0, lm_tol_px=1e-4, lm_reject_tol_px=0.0,
                                 lm_reject_damping=floor)
        runs[floor] = Registrar(volume, cfg).register(case.image, case.camera, T0)
    rises = {f: [(a, b) for a, b in zip(d, d[1:]) if b > a]
             for f, d in ((f, [r["damping"] for r in res.trajectories[0]]) for f, res in runs.items())}
    assert rises[1.0] and rises[0.0]  # both saw rejections (tight tolerance)
    assert all(b >= 1.0 and b >= 10 * a * (1 - 1e-9) for a, b in rises[1.0])
    assert any(a < 0.1 for a, _ in rises[1.0])  # a rejection after accepted steps: the floor acted
    assert all(b == pytest.approx(10 * a) for a, b in rises[0.0])  # 0: ×10 alone, as before
    assert len(runs[1.0].trajectories[0]) < len(runs[0.0].trajectories[0])
    for res in runs.values():
        assert _mtre(res.poses[0], case) < min(2.5, 0.5 * _mtre(T0, case))
    assert _mtre(runs[1.0].poses[0], case) == pytest.approx(_mtre(runs[0.0].poses[0], case), abs=0.1)
    for bad in (-1.0, math.nan, True, "1"):
        with pytest.raises(InputError, match="lm_reject_damping"):
            RegistrationConfig(lm_reject_damping=bad)


def test_volume_levels_come_channels_last_whatever_was_asked_first(volume):
    """Two and three channels are stored channels-last (the fused kernel's fast layout) even when a
    subset at the same voxel size was cached first (it once returned the pooled channels-first stack)."""
    from xraypose.render.backends.cpu import is_channels_last

    reg = Registrar(volume, RegistrationConfig())
    one = reg.volume_level(6.0, (0,))
    three = reg.volume_level(6.0, (0, 1, 2))
    two = reg.volume_level(6.0, (0, 1))
    assert one.density.shape[0] == 1 and one.density.is_contiguous()
    for lv, C in ((three, 3), (two, 2)):
        assert lv.density.shape[0] == C and lv.density.stride()[0] == 1 and is_channels_last(lv.density)
    assert torch.equal(three.density[0], one.density[0]) and torch.equal(two.density, three.density[:2])


def _capture_walks_away(monkeypatch, mm: float = 60.0, xrays=None):
    """Make every registration's first level, when it is a capture (Adam) level, end ``mm`` across the
    beam from where it would (for the X-rays ``xrays``, indices, when given): a capture that walks away
    from a good start (as on some scatter and display X-rays, whose 16-row similarity prefers a pose
    50-110 mm off)."""
    import xraypose.register.optimizer as optimizer

    original = optimizer.make_stepper

    def make(registrar, li, objective):
        stepper = original(registrar, li, objective)
        if li == 0 and registrar.config.levels[0].optimizer == "adam":
            end = stepper.end

            def walked(tracks):
                end(tracks)
                for t in tracks:
                    if xrays is not None and t.xray not in xrays:
                        continue
                    t.pose = t.pose.clone()
                    t.pose[:3, 3] += mm * t.pose[:3, 0]  # along the camera's x axis
            stepper.end = walked
        return stepper

    monkeypatch.setattr(optimizer, "make_stepper", make)


_TWO_LEVELS = (Level(size=16, iterations=30, volume_mm=8.0, lr_scale=1.0, depth_lr_scale=0.2),
               Level(size=48, iterations=10, volume_mm=3.0, fit_bone=True, optimizer="lm"))


def test_the_last_level_weighs_the_start_however_far_the_capture_went(volume, case, monkeypatch):
    """Started at the truth, a capture that ends 60 mm away cannot lose the start: the last level weighs
    the registration's start against the capture's result, however far apart (one render), and goes on
    from the start, which scores far higher there.  (Until 2026-12-03 a start more than 10 pixels away
    was not rendered: this registration ended tens of mm off.)"""
    _capture_walks_away(monkeypatch)
    reg = Registrar(volume, RegistrationConfig(levels=_TWO_LEVELS, drr_blur=1.0, shift_search=None))
    r = reg.register(case.image, case.camera, case.true_pose)
    walked = reg.derive(revisit=False).register(case.image, case.camera, case.true_pose)
    monkeypatch.undo()
    kept = reg.register(case.image, case.camera, case.true_pose)  # no walk: where this schedule ends
    assert _mtre(walked.poses[0], case) > 20.0  # what the capture alone leaves
    assert abs(_mtre(r.poses[0], case) - _mtre(kept.poses[0], case)) < 0.05, (_mtre(r.poses[0], case),
                                                                            _mtre(kept.poses[0], case))


def test_a_rig_whose_captures_walked_away_goes_back_to_its_start(volume, monkeypatch):
    """A rig registration captures on the start view and on both views (separate registrations), then
    goes on from the better capture on both views; its last level weighs the rig's *given* start as a
    single view's does.  Started at the truth with both captures walking 60 mm away, it ends where this
    schedule ends without the walk.  (Until stop 36 the later levels knew only the captures: biplane
    clinical and scatter pairs started at their truth ended 13-28 mm off.)"""
    iso, P, views = _noiseless_rig(volume, 80.0)
    fid = iso[None] + torch.tensor([[30.0, 0, 0], [0, 30, 0], [0, 0, 30], [-30, -30, 0]], dtype=F64)
    err = lambda X: float(pose_errors(X, P[0], fid, sdr=510.0)["mtre"])  # noqa: E731
    reg = Registrar(volume, RegistrationConfig(levels=_TWO_LEVELS, drr_blur=1.0, shift_search=None))
    kept = reg.register_views(views, P[0])  # no walk: where this schedule ends
    _capture_walks_away(monkeypatch)
    r = reg.register_views(views, P[0])
    monkeypatch.setattr(Registrar, "_revisit", lambda self, objective, tracks, last=False: set())
    walked = reg.register_views(views, P[0])
    assert err(walked.poses[0]) > 20.0  # what the captures alone leave
    assert err(kept.poses[0]) < 0.5 and abs(err(r.poses[0]) - err(kept.poses[0])) < 0.05, (err(r.poses[0]),
                                                                                          err(kept.poses[0]))


def test_a_rigs_later_levels_map_intensities_only_once_its_captures_are_chosen(volume, monkeypatch):
    """A rig's later levels (``origins`` given: the stage after its captures) run both captures until the
    first of them chooses; an X-ray's intensity map is drawn at its best track's pose, which while the
    captures compete may be the wrong one (a low-dose two-shot pair: mapped at a capture 10 mm off, the
    pair ended 3.1 mm off instead of 0.10 mm), so those levels map no X-ray that still has two live
    tracks; after the choice they map as usual."""
    from xraypose.register.cases import perturb_pose

    iso, P, views = _noiseless_rig(volume, 30.0)
    far = perturb_pose(P[0], iso, 6.0, 20.0, torch.Generator().manual_seed(1))[0]
    starts = torch.stack([far, P[0]])[None]  # (1, 2, 4, 4): two captures' results
    levels = (Level(size=32, iterations=5, volume_mm=4.0, fit_bone=True, optimizer="lm"),
              Level(size=48, iterations=5, volume_mm=3.0, fit_bone=True, optimizer="lm"))
    seen = []
    original = Registrar._match_intensity

    def spy(self, objective, tracks, always, xrays=None):
        seen.append((sum(t.alive for t in tracks), None if xrays is None else sorted(xrays)))
        return original(self, objective, tracks, always, xrays=xrays)

    monkeypatch.setattr(Registrar, "_match_intensity", spy)
    reg = Registrar(volume, RegistrationConfig(levels=levels, drr_blur=1.0, match_intensity=0.0))
    reg.register_views(views, starts, origins=P[0][None])
    assert seen == [(2, []), (1, [0])]  # competing: no X-ray mapped; chosen: mapped as usual
    seen.clear()
    reg.register_views(views, starts)  # a plain registration with two starts maps as before
    assert seen == [(2, None), (1, None)]


def test_the_last_level_renders_a_far_start_only_when_it_scored_near_the_best(volume, case, monkeypatch):
    """What the last level's revisit renders (a render at the finest size per candidate): a start 10°/40 mm
    off, which scored far below the best candidate at the previous revisit, is not rendered (one candidate:
    nothing at all); a start at the truth is; with no earlier revisit (two levels) even the far start is."""
    import xraypose.register.optimizer as optimizer
    from xraypose.register.cases import perturb_pose

    seen = []
    original = optimizer.Registrar._revisit

    def spy(self, objective, tracks, last=False):
        calls = []
        evaluate = self.evaluate
        monkeypatch.setattr(self, "evaluate", lambda obj, poses, owners: calls.append(len(poses)) or
                            evaluate(obj, poses, owners))
        out = original(self, objective, tracks, last=last)
        monkeypatch.delattr(self, "evaluate")
        if last:
            seen.append(calls[0] if calls else 0)
        return out

    monkeypatch.setattr(optimizer.Registrar, "_revisit", spy)
    three = (_TWO_LEVELS[0], Level(size=32, iterations=10, volume_mm=4.0, fit_bone=True, optimizer="lm"),
             _TWO_LEVELS[1])
    far = perturb_pose(case.true_pose, volume.get_isocenter(), 10.0, 40.0, torch.Generator().manual_seed(2))[0]
    for levels in (three, _TWO_LEVELS):
        reg = Registrar(volume, RegistrationConfig(levels=levels, drr_blur=1.0, shift_search=None))
        reg.register(case.image, case.camera, far)
        reg.register(case.image, case.camera, case.true_pose)
    assert seen == [0, 2, 2, 2]


def test_a_revisit_that_moves_the_pose_maps_the_intensities_again(volume, case, monkeypatch):
    """Two X-rays whose display curve is matched at a fine level (each map taken at the current pose,
    then the revisit weighs the earlier poses): the one whose pose the revisit moves is mapped again at
    its new pose, of the X-ray as given (not of the X-ray already mapped); the other keeps its map."""
    import dataclasses

    import xraypose.register.optimizer as optimizer
    from xraypose.register.objective import LevelObjective

    _capture_walks_away(monkeypatch, xrays={0})
    calls = []
    original = optimizer.Registrar._match_intensity

    def spy(self, objective, tracks, always, xrays=None):
        view = objective.views[0]
        fresh = LevelObjective.resized(images, case.camera, view.height, view.width)
        before = view.target.clone()
        out = original(self, objective, tracks, always, xrays=xrays)
        calls.append({"rows": view.height, "xrays": xrays, "given": [torch.equal(before[b], fresh[b]) for b in range(2)],
                      "changed": [not torch.equal(before[b], view.target[b]) for b in range(2)],
                      "pose0": tracks[0].pose.clone(), "mapped": out})
        return out

    monkeypatch.setattr(optimizer.Registrar, "_match_intensity", spy)
    image = case.image.clamp_min(0) ** 0.35  # a strong gamma: the map is curved
    images = torch.stack([image, image])[:, None]
    still = (dataclasses.replace(_TWO_LEVELS[0], iterations=0),) + _TWO_LEVELS[1:]  # only the walk moves a pose
    reg = Registrar(volume, RegistrationConfig(levels=still, drr_blur=1.0, shift_search=None))
    r = reg.register(images, case.camera, case.true_pose[None].expand(2, 4, 4))
    first, again = [c for c in calls if c["rows"] == 48]  # at the walked pose, then again at the start
    assert first["xrays"] is None and first["mapped"] == {(0, 0), (0, 1)} and first["given"] == [True, True]
    assert again["xrays"] == {0} and again["given"] == [True, False]  # X-ray 0 as given, X-ray 1 as mapped
    assert again["changed"] == [True, False] and again["mapped"] == {(0, 0)}
    assert _mtre(first["pose0"], case) > 20.0 and _mtre(again["pose0"], case) < 1e-6
    assert r.level_stats[1]["matched"] == 2


@pytest.mark.parametrize("bad", [float("nan"), -0.1, float("inf"), "0.1"])
def test_lm_reject_tolerance_must_be_a_finite_number_at_least_zero(bad):
    with pytest.raises(InputError, match=r"config: lm_reject_tol_px = .* must be a finite number >= 0"):
        RegistrationConfig(lm_reject_tol_px=bad)
    assert RegistrationConfig(lm_reject_tol_px=0).lm_reject_tol_px == 0  # 0: the test is off
