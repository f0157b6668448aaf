"""Robust pixel weights: the biweight's cut-off per level, and registration through metal that is not in the CT."""

import dataclasses

import pytest
import torch

from xraypose.appearance import form_xray
from xraypose.camera import Camera
from xraypose.cli.options import levels_config
from xraypose.errors import InputError
from xraypose.fiducials import bone_points, select_fiducials
from xraypose.preprocess import preprocess
from xraypose.register import Level, Registrar, RegistrationConfig
from xraypose.register.api import registration_metrics
from xraypose.register.cases import CaseMaker, perturb_pose
from xraypose.register.config import DEFAULT_LEVELS, METAL_LEVELS
from xraypose.register.objective import robust_weights
from xraypose.render import DRR

F64 = torch.float64


def _line_with_outlier(k: float):
    """An X-ray that is an affine function of the DRR plus small noise, one pixel ``k`` noise deviations out."""
    g = torch.Generator().manual_seed(0)
    drr = torch.linspace(0, 1, 4000, dtype=F64)[None]
    noise = 0.01 * torch.randn(1, 4000, generator=g, dtype=F64)
    tgt = 2.0 * drr + 0.5 + noise
    tgt[0, 1234] = 2.0 * drr[0, 1234] + 0.5 + k * 0.01  # exactly k deviations off the line
    return drr, tgt


@pytest.mark.parametrize("c,kept", [(2.0, False), (3.0, False), (4.685, True)])
def test_biweight_cutoff_decides_which_pixels_drop_out(c, kept):
    drr, tgt = _line_with_outlier(3.5)  # 3.5 deviations out: in at 4.685, out at 3 and 2
    w = robust_weights(drr, tgt, c=c)
    assert (w[0, 1234] > 0) == kept
    # most ordinary pixels keep a weight; a smaller cut keeps fewer
    assert (w > 0).double().mean() > (0.9 if c >= 3 else 0.6)


def test_robust_c_is_validated():
    for bad in (0.0, -1.0, float("nan"), float("inf"), "2"):
        with pytest.raises(InputError, match="robust_c"):
            RegistrationConfig(levels=(Level(size=16, robust=True, robust_c=bad),))


def test_metal_levels_are_robust_and_cut_harder_while_capturing():
    capture = [lv for lv in METAL_LEVELS if lv.optimizer == "adam"]
    fine = [lv for lv in METAL_LEVELS if lv.optimizer == "lm"]
    assert capture and fine and all(lv.robust for lv in METAL_LEVELS)
    assert max(lv.robust_c for lv in capture) < min(lv.robust_c for lv in fine) < 4.685
    # otherwise the default schedule
    assert [dataclasses.replace(lv, robust=False, robust_c=4.685) for lv in METAL_LEVELS] == \
        [dataclasses.replace(lv, robust=False, robust_c=4.685) for lv in DEFAULT_LEVELS]


def test_cli_metal_schedule():
    assert levels_config(None, False, True) == {"levels": METAL_LEVELS}
    assert levels_config(None, False, False) == {}
    lv = levels_config("16,48,128", False, True)["levels"]
    assert [x.size for x in lv] == [16, 48, 128] and all(x.robust for x in lv)
    assert not levels_config("16,48,128", False, False)["levels"][0].robust
    for text, metal in ((None, True), ("16,32", False)):
        with pytest.raises(InputError, match="--fast"):
            levels_config(text, True, metal)


def test_level_robust_c_reaches_the_weights(sample_ct, monkeypatch):
    """The objective passes each level's cut-off to the biweight (not the function's default)."""
    import xraypose.register.objective as objective

    seen = []
    real = objective.robust_weights

    def spy(drr, tgt, c=4.685, iterations=3, prior=None):
        seen.append(c)
        return real(drr, tgt, c=c, iterations=iterations, prior=prior)

    monkeypatch.setattr(objective, "robust_weights", spy)
    cam = Camera(sdd=1020.0, height=24, width=24, delx=280.0 / 24)
    T, _ = CaseMaker(sample_ct, camera=cam, seed=0).true_pose(0)
    reg = Registrar(sample_ct, RegistrationConfig(levels=(Level(size=16, iterations=2, n_samples=16, volume_mm=12.0,
                                                                    robust=True, robust_c=1.7),),
                                                  record_trajectory=False, seed=0))
    img = DRR(sample_ct, cam)(T[None].to(F64)).detach()
    reg.register(img, cam, T[None])
    assert seen and set(seen) == {1.7}


def test_registers_through_a_retractor_k_wire_and_screw(sample_ct):
    """An X-ray with a retractor blade's edge, a K-wire and a screw drawn in (not in the CT), started
    10°/40 mm away: the metal schedule ends below 1 mm.  The default schedule (no robust weights while
    capturing) ended 118 mm away when the X-ray's metal steps were not set aside (tests/test_foreign.py):
    the metal's half-plane pulled the capture."""
    registers_through_metal(sample_ct, METAL_LEVELS)


def registers_through_metal(volume, levels, case: int = 1):
    image, camera, truth, fid, start, blur = metal_case(volume, case)
    reg = Registrar(volume, RegistrationConfig(levels=levels, drr_blur=blur, record_trajectory=False, seed=0,
                                               num_threads=1))
    r = reg.register(image, camera, start[None])
    m = registration_metrics(r.poses[0], truth, fid, camera)
    assert m["mtre"] < 1.0, m["mtre"]


def test_resume_accepts_a_run_recorded_before_robust_c_existed():
    """run.json of an evaluation started before ``Level.robust_c`` existed has levels without it; resuming
    with the same schedule is not "other settings", while another cut-off (--metal) is named."""
    from xraypose.run_record import settings_differences

    now = RegistrationConfig().to_dict()
    old = {**now, "levels": [{k: v for k, v in lv.items() if k != "robust_c"} for lv in now["levels"]]}
    assert settings_differences({"registration": old}, {"registration": now}) == []
    metal = RegistrationConfig(levels=METAL_LEVELS).to_dict()
    diffs = settings_differences({"registration": old}, {"registration": metal})
    assert len(diffs) == 1 and diffs[0].startswith("--levels/--fast/--metal"), diffs



def test_a_failed_verdict_tries_the_metal_schedule_and_keeps_it(sample_ct, monkeypatch):
    """register_xray (as `xraypose register` runs it), metal steps not set aside: the default schedule ends
    ~120 mm off on the retractor / K-wire / screw X-ray and is judged failed; the hypotheses then register the given start
    with every level robust (metal_levels), which lands below 1 mm, and that result is kept and named.
    (The other alternatives, the intensity, the capture and the scatter hypotheses are left out here to keep the test
    short.)"""
    import xraypose.register.hypotheses as hyp
    from xraypose.register import register_xray
    from xraypose.register.config import metal_levels
    from xraypose.register.hypotheses import METAL_HYPOTHESIS

    monkeypatch.setattr(hyp, "HYPOTHESES", ())
    monkeypatch.setattr(hyp, "capture_hypothesis_config", lambda config, verdicts: None)
    monkeypatch.setattr(hyp, "match_hypothesis_config", lambda config, verdicts: None)
    monkeypatch.setattr(hyp, "SCHEDULE_HYPOTHESES", {hyp.METAL_HYPOTHESIS: hyp.SCHEDULE_HYPOTHESES[hyp.METAL_HYPOTHESIS]})
    monkeypatch.setattr(hyp.alternative_starts, "__defaults__", (0, ()))
    image, camera, truth, fid, start, blur = metal_case(sample_ct)
    # the X-ray as given (no steps set aside), one capture start (with five, the metal schedule's result is 1.23 mm)
    cfg = RegistrationConfig(drr_blur=blur, seed=0, foreign_steps=None, capture_starts=1)
    out = register_xray(sample_ct, image, camera, start[None], config=cfg, hypotheses=True)[0]
    conf = out.confidence
    assert [h["start"] for h in conf["hypotheses"]] == ["given start", METAL_HYPOTHESIS]
    assert conf["hypotheses"][0]["verdict"] == "failed"
    assert conf["kept"] == METAL_HYPOTHESIS and METAL_HYPOTHESIS in out.reason
    assert registration_metrics(out.camera_to_world, truth, fid, camera)["mtre"] < 1.0
    assert metal_levels(METAL_LEVELS) == METAL_LEVELS  # already robust: nothing more to try


def metal_case(volume, case: int = 1):
    """(image (1, 1, H, W), camera, truth (4, 4), fiducials (20, 3), start 10°/40 mm off (4, 4), DRR blur) of
    the appearance benchmark's pelvis implants case ``case``."""
    det = 256
    maker = CaseMaker(volume, camera=Camera(sdd=1020.0, height=det, width=det, delx=280.0 / det),
                      collimator_px=det // 32, seed=0)
    T, _ = maker.true_pose(case)
    g = torch.Generator().manual_seed(case * 101 + sum(map(ord, "implants")))
    fx = form_xray(volume, maker.raw_camera, T, family="implants", generator=g)
    pre = preprocess(fx.raw, fx.camera, **fx.preprocess)
    truth = pre.transform_pose(fx.pose).to(F64)
    fid = select_fiducials(bone_points(volume), n=20, seed=case, camera=pre.camera, poses=truth, margin_px=4)
    start = perturb_pose(truth, volume.get_isocenter(), 10.0, 40.0, torch.Generator().manual_seed(case * 31 + 100))[0]
    return (pre.image.to(torch.float32)[None, None], pre.camera, truth, fid, start,
            1.0 if fx.preprocess.get("blur") else None)
