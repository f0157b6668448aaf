"""The confidence check of a rig's joint result (issue 14): the views' normal equations pooled in world
axes (``rig_signals``), the merged verdict (``merge_judgements``), and ``assess_rig`` on a real pair."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xraypose.camera import Camera
from xraypose.geometry import so3_exp
from xraypose.register import Registrar, RegistrationConfig
from xraypose.register.confidence import Judgement, Normal, assess_rig, merge_judgements, rig_signals
from xraypose.rig import rig_from_carm
from xraypose.volume import load_sample_ct

F64 = torch.float64


def _rotation(g: torch.Generator) -> torch.Tensor:
    return so3_exp(torch.randn(3, generator=g, dtype=F64) * 2.0)


def _views_from_world(g: torch.Generator, n_views: int, m: int = 40):
    """Per view: a camera rotation R, a world-axes Jacobian Jw (m, 6) and residual r (m,), and the
    signals a check would give (its normal equations in its own chart: ξ_view = blockdiag(Rᵀ, Rᵀ) ξ_world)."""
    out = []
    for _ in range(n_views):
        R = _rotation(g)
        Jw = torch.randn(m, 6, generator=g, dtype=F64)
        r = torch.randn(m, generator=g, dtype=F64)
        A = torch.zeros(6, 6, dtype=F64)
        A[:3, :3] = R.T
        A[3:, 3:] = R.T
        J = Jw @ A.T  # r ≈ J ξ_view = J A ξ_world = Jw ξ_world
        nrm = Normal(J.T @ J, J.T @ r, float(r @ r))
        sig = {"flat_mm": 99.0, "gn_step_mm": 9.0, "ncc": 0.9, "_problem": None,
               "_normal": {"fine": nrm, "coarse": nrm}}
        out.append((R, Jw, r, sig))
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_views=st.integers(2, 4))
def test_rig_signals_pool_the_views_normal_equations_in_world_axes(seed, n_views):
    g = torch.Generator().manual_seed(seed)
    views = _views_from_world(g, n_views)
    poses = torch.eye(4, dtype=F64).repeat(n_views, 1, 1)
    for i, (R, *_rest) in enumerate(views):
        poses[i, :3, :3] = R
        poses[i, :3, 3] = torch.randn(3, generator=g, dtype=F64) * 500  # translation: irrelevant
    H = sum(Jw.T @ Jw for _, Jw, _, _ in views)
    gw = sum(Jw.T @ r for _, Jw, r, _ in views)
    cost = sum(float(r @ r) for _, _, r, _ in views)
    step = torch.linalg.solve(H, gw)
    evals, evecs = torch.linalg.eigh(H)
    sigs = [v[3] for v in views]
    out = rig_signals(sigs, poses)
    assert len(out) == n_views
    for (R, _, _, s), o in zip(views, out):
        assert o["gn_step_mm"] == pytest.approx(float(step.norm()), rel=1e-4)
        assert o["flat_mm"] == pytest.approx(math.sqrt(cost / float(evals[0])), rel=1e-6)
        assert o["sharp_mm"] == pytest.approx(math.sqrt(cost / float(evals[-1])), rel=1e-6)
        beam = R[:, 2]  # the view's beam in world axes: the weakest direction's share along it
        assert o["weak_depth"] == pytest.approx(float(evecs[3:, 0] @ beam) ** 2, abs=1e-6)
        assert o["view_flat_mm"] == 99.0 and o["view_gn_step_mm"] == 9.0 and o["ncc"] == 0.9
        assert s["gn_step_mm"] == 9.0  # the input is not modified


def test_rig_signals_leave_views_alone_when_one_cannot_be_pooled():
    g = torch.Generator().manual_seed(0)
    views = _views_from_world(g, 2)
    poses = torch.eye(4, dtype=F64).repeat(2, 1, 1)
    sigs = [views[0][3], dict(views[1][3], _problem="the DRR at the result is empty")]
    out = rig_signals(sigs, poses)
    assert [o["gn_step_mm"] for o in out] == [9.0, 9.0]
    assert rig_signals([views[0][3]], poses[:1])[0]["gn_step_mm"] == 9.0  # one view: nothing to pool
    with pytest.raises(ValueError, match="2 views' signals but 3 poses"):
        rig_signals(sigs, torch.eye(4, dtype=F64).repeat(3, 1, 1))


@pytest.mark.parametrize("alone, rig, verdict", [
    ("ok", "ok", "ok"), ("failed", "failed", "failed"), ("uncertain", "uncertain", "uncertain"),
    ("failed", "ok", "uncertain"), ("ok", "failed", "uncertain"), ("ok", "uncertain", "uncertain"),
    ("failed", "uncertain", "uncertain"), ("uncertain", "failed", "uncertain")])
def test_a_rig_views_verdict_is_what_both_checks_say_else_uncertain(alone, rig, verdict):
    pa, pr = {"ok": 0.9, "uncertain": 0.6, "failed": 0.2}[alone], {"ok": 0.95, "uncertain": 0.55, "failed": 0.1}[rig]
    out = merge_judgements(Judgement(pa, alone, "alone says so"), Judgement(pr, rig, "the rig says so"))
    assert out.verdict == verdict
    assert out.p_success == min(pa, pr)
    if alone != rig and "ok" in (alone, rig):
        assert "alone" in out.reason and "holding its depth" in out.reason


@pytest.fixture(scope="module")
def pair():
    """A noiseless-ish AP + lateral pair of the bundled pelvis (64² px), its rig and true rig pose."""
    from xraypose.preprocess import preprocess
    from xraypose.synthetic import XraySimulator

    vol = load_sample_ct()
    iso = vol.get_isocenter().to(F64)
    cam = Camera(sdd=1020.0, height=64, width=64, delx=280.0 / 64)
    rig = rig_from_carm({"ap": (0.0, 0.0), "lat": (90.0, 0.0)}, sod=612.0, cameras={"ap": cam, "lat": cam})
    truth = torch.eye(4, dtype=F64)
    truth[:3, 3] = iso
    sim = XraySimulator(vol, cam, supersample=1, photons=1e5, blur_px=0.5)
    imgs = []
    for i, n in enumerate(rig.names):
        raw = sim(truth @ rig[n].camera_to_rig, generator=torch.Generator().manual_seed(i)).raw[0, 0]
        imgs.append(preprocess(raw, cam, blur=(5, 1.0), log=True, i0=sim.i0, rescale=True))
    reg = Registrar(vol, RegistrationConfig(drr_blur=1.0))
    return {"reg": reg, "rig": rig, "truth": truth, "imgs": imgs}


def _check(pair, rig_to_world):
    rig = pair["rig"]
    return assess_rig(pair["reg"], [(p.image, p.camera, rig_to_world @ rig[n].camera_to_rig, None, None)
                                    for p, n in zip(pair["imgs"], rig.names)])


def test_assess_rig_trusts_the_true_pose_and_not_one_6mm_off(pair):
    right = _check(pair, pair["truth"])
    assert [c.verdict for c in right] == ["ok", "ok"]
    assert all("view_gn_step_mm" in c.signals for c in right)
    off = pair["truth"].clone()
    off[:3, 3] += 6.0 * pair["rig"]["ap"].camera_to_rig[:3, 0]  # 6 mm across the AP beam: along the lateral's
    wrong = _check(pair, off)
    assert "ok" not in [c.verdict for c in wrong]


def test_a_right_low_dose_pair_is_not_failed_for_noise_along_one_views_beam():
    """At the truth of a low-dose 128² AP + lateral pair, the lateral view checked alone reads
    ``failed`` (its Gauss–Newton step, 1.6 mm, lies along its own beam, where noise moves it); the
    rig's check, whose AP view holds that direction, does not fail the pair."""
    from xraypose.preprocess import preprocess
    from xraypose.register.cases import perturb_pose
    from xraypose.register.confidence import assess
    from xraypose.register.multiview import combine_confidences
    from xraypose.synthetic import XraySimulator

    vol = load_sample_ct()
    iso = vol.get_isocenter().to(F64)
    cam = Camera(sdd=1020.0, height=128, width=128, delx=280.0 / 128)
    rig = rig_from_carm({"ap": (0.0, 0.0), "lat": (90.0, 0.0)}, sod=612.0, cameras={"ap": cam, "lat": cam})
    reg = Registrar(vol, RegistrationConfig(drr_blur=1.0))
    sim = XraySimulator(vol, cam, supersample=1, photons=3000.0, blur_px=0.7)
    frame = torch.eye(4, dtype=F64)
    frame[:3, 3] = iso
    truth = perturb_pose(frame, iso, 3.0, 6.0, torch.Generator().manual_seed(1))[0]
    views = []
    for i, n in enumerate(rig.names):
        raw = sim(truth @ rig[n].camera_to_rig, generator=torch.Generator().manual_seed(10 + i)).raw[0, 0]
        pre = preprocess(raw, cam, blur=(5, 1.0), log=True, i0=sim.i0, rescale=True)
        views.append((pre.image, pre.camera, truth @ rig[n].camera_to_rig, None, None))
    alone = [assess(reg, v[0], v[1], v[2][None])[0] for v in views]
    assert [c.verdict for c in alone] == ["ok", "failed"] and alone[1].signals["gn_step_mm"] > 1.2
    joint = assess_rig(reg, views)
    assert joint[0].verdict == "ok" and joint[1].verdict == "uncertain"
    assert "holding its depth it reads ok" in joint[1].reason
    assert joint[1].signals["gn_step_mm"] < 0.5 and joint[1].signals["view_gn_step_mm"] > 1.2
    assert combine_confidences(["ap", "lat"], joint).verdict == "uncertain"
