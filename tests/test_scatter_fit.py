"""Scatter modelled on the DRR (``Level.fit_scatter``, :mod:`xraypose.register.scatter`)."""

import pytest
import torch

from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.register import Level, Registrar, RegistrationConfig
from xraypose.register.cases import CaseMaker
from xraypose.register.measures import unit_standardise
from xraypose.register.objective import LevelObjective, gaussian_kernel, level_channels, separable_blur
from xraypose.register.scatter import CHOICE_ROWS, SCATTER_FRACTIONS, SCATTER_RANGES, scatter_drr

F64 = torch.float64
ROWS = 48
DELX = 280.0 / ROWS


def _ncc(a, b):
    return float((unit_standardise(a.reshape(1, -1)) * unit_standardise(b.reshape(1, -1))).sum())


def _scattered(drr, k, s, sigma_px):
    """``drr`` (n, 1, h, w) → the X-ray −log(P + s·G*P), P = exp(−k·d̂) (the module's model)."""
    lo = drr.amin((-1, -2), keepdim=True)
    hi = drr.amax((-1, -2), keepdim=True)
    P = torch.exp(-k * (drr - lo) / (hi - lo))
    return -torch.log(P + s * separable_blur(P, gaussian_kernel(sigma_px), same=True))


def _phantom(size: int) -> torch.Tensor:
    """(1, 1, size, size) float64 a smooth synthetic DRR: a body with a dense blob."""
    c = torch.arange(float(size)) * 40.0 / size
    v, u = torch.meshgrid(c, c, indexing="ij")
    body = torch.clamp(1 - ((u - 20) / 17) ** 2 - ((v - 20) / 19) ** 2, min=0).sqrt()
    blob = torch.exp(-((u - 24) ** 2 + (v - 15) ** 2) / 18.0)
    return (3.0 * body + 2.0 * blob)[None, None].to(F64)


@pytest.fixture(scope="module")
def drr():
    """(1, 1, 32, 32): at most CHOICE_ROWS, so the choice and the model are made at its own size."""
    return _phantom(CHOICE_ROWS)


def test_the_grids_hold_no_scatter_and_a_wide_range():
    assert SCATTER_FRACTIONS[0] == 0.0 and max(SCATTER_FRACTIONS) >= 1.0
    assert min(SCATTER_RANGES) <= 0.5 and max(SCATTER_RANGES) >= 8.0


def test_a_scattered_xray_is_explained_by_its_own_scatter(drr):
    """An X-ray formed by the model at a grid point (k 8, s 0.6, σ 6 px) is explained exactly, and
    the values chosen are the ones it was formed with; the plain DRR explains it much worse."""
    tgt = _scattered(drr, 8.0, 0.6, 6.0)
    out, chosen = scatter_drr(drr, tgt, [2.0, 6.0])
    assert _ncc(out, tgt) > 0.99999
    assert chosen[0].tolist() == [8.0, 0.6, 1.0]
    assert _ncc(drr, tgt) < 0.985, _ncc(drr, tgt)  # measured 0.981


def test_a_larger_image_is_chosen_for_on_a_coarser_grid():
    """96 rows: the choice and the scatter's blur are made at CHOICE_ROWS; the values found are still
    the X-ray's, and the model explains it nearly exactly."""
    big = _phantom(96)
    tgt = _scattered(big, 8.0, 0.6, 18.0)
    out, chosen = scatter_drr(big, tgt, [6.0, 18.0])
    assert chosen[0].tolist() == [8.0, 0.6, 1.0]
    assert _ncc(out, tgt) > 0.9999 > 0.985 > _ncc(big, tgt)  # plain: measured 0.981


def test_a_pose_and_its_neighbours_share_the_choice(drr):
    """``group``: the DRRs of a pose and its linearised neighbours get the pose's choice, even where a
    neighbour alone would choose otherwise; groups do not share."""
    scattered, plain = _scattered(drr, 8.0, 0.6, 6.0), 2.0 * drr + 1.0
    stack = drr.expand(6, -1, -1, -1)
    tgts = torch.cat([scattered, plain, plain, plain, plain, plain])
    _, alone = scatter_drr(stack, tgts, [6.0])
    assert alone[0, :2].tolist() == [8.0, 0.6] and alone[1:, 1].tolist() == [0.0] * 5
    _, grouped = scatter_drr(stack, tgts, [6.0], group=3)
    assert grouped[:3, :2].tolist() == [[8.0, 0.6]] * 3
    assert grouped[3:, 1].tolist() == [0.0] * 3
    with pytest.raises(ValueError, match="groups of 4"):
        scatter_drr(stack, tgts, [6.0], group=4)


def test_an_unscattered_xray_keeps_the_plain_drr(drr):
    """An affine copy of the DRR: the model chosen explains it as well as the DRR does (s = 0 is in the
    grid), so the fit never scores a DRR below the plain one."""
    tgt = 2.0 * drr + 1.0
    out, chosen = scatter_drr(drr, tgt, [4.0])
    assert _ncc(out, tgt) == pytest.approx(1.0, abs=1e-7)
    assert float(chosen[0, 1]) == 0.0
    noisy = tgt + 0.05 * torch.randn(tgt.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    out, _ = scatter_drr(drr, noisy, [4.0])
    assert _ncc(out, noisy) >= _ncc(drr, noisy) - 1e-12


def test_the_mask_decides_what_is_explained(drr):
    """Pixels with weight 0 (a saturated plateau) do not count in the choice, nor in the averages of
    the images the choice is made on."""
    tgt = _scattered(drr, 4.5, 0.35, 6.0)
    spoilt = tgt.clone()
    spoilt[..., :, :12] = 50.0
    w = torch.ones_like(tgt)
    w[..., :, :12] = 0.0
    _, chosen = scatter_drr(drr, spoilt, [6.0], w=w)
    assert chosen[0, :2].tolist() == [4.5, 0.35]


def test_the_gradient_flows_to_the_drr(drr):
    """The model at the chosen values is differentiable in the DRR (float64 gradcheck)."""
    tgt = _scattered(drr, 3.0, 0.2, 4.0)
    kern = [4.0]
    x = drr[..., 10:22, 10:22].clone().requires_grad_(True)
    t = tgt[..., 10:22, 10:22]
    assert torch.autograd.gradcheck(lambda d: scatter_drr(d, t, kern)[0], (x,), eps=1e-6, atol=1e-5)


def test_a_level_with_scatter_explains_a_scattered_xray(sample_ct):
    """On the pelvis: an X-ray made by scatter on the level's own DRR scores ≈ 1 at its pose with
    ``fit_scatter``, clearly less without, and a pose 20 mm off scores below the truth."""
    cam = Camera(sdd=1020.0, height=ROWS, width=ROWS, delx=DELX)
    T, _ = CaseMaker(sample_ct, camera=cam, collimator_px=2, seed=2).true_pose(1)
    reg = Registrar(sample_ct, RegistrationConfig())

    def objective(**fit):
        lv = Level(size=ROWS, volume_mm=4.0, **fit)
        dens, aff = reg.volume_level(lv.volume_mm, level_channels(lv))
        return lv, dens, aff

    lv, dens, aff = objective()
    ob = LevelObjective(lv, reg.config, dens, aff, torch.zeros(1, 1, ROWS, ROWS), cam, torch.Generator())
    rows = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        d = ob.render(T[None].float(), rows).double()
    xray = _scattered(d, 6.0, 0.6, 50.0 / DELX)[0, 0].float()
    off = T.clone()
    off[:3, 3] += 20.0 * T[:3, 0]

    def scores(**fit):
        lv, dens, aff = objective(**fit)
        o = LevelObjective(lv, reg.config, dens, aff, xray[None, None], cam, torch.Generator())
        with torch.no_grad():
            r, _, _ = o.residual(torch.stack([T, off]).float(), torch.zeros(2, dtype=torch.long))
        return (1 - 0.5 * r.double().pow(2).sum(-1)).tolist()

    plain, fitted = scores(), scores(fit_scatter=(50.0,))
    assert fitted[0] > 0.999 and plain[0] < fitted[0] - 0.005, (plain, fitted)
    assert fitted[1] < fitted[0] - 0.01, fitted


@pytest.mark.parametrize("bad", [(-5.0,), (0.0,), (float("nan"),), ("wide",), (True,)])
def test_bad_scatter_widths_are_refused(bad):
    with pytest.raises(InputError, match="fit_scatter"):
        RegistrationConfig(levels=(Level(size=16, fit_scatter=bad),))


def test_the_scatter_schedule_and_the_command_line_flag():
    from xraypose.cli.options import levels_config
    from xraypose.register.config import DEFAULT_LEVELS, FAST_LEVELS, SCATTER_MM, scatter_levels

    assert all(lv.fit_scatter == () for lv in DEFAULT_LEVELS)  # off by default
    assert [lv.fit_scatter for lv in scatter_levels(DEFAULT_LEVELS)] == [SCATTER_MM] * len(DEFAULT_LEVELS)
    assert [lv.fit_scatter for lv in levels_config(None, False, scatter=True)["levels"]] == [SCATTER_MM] * 4
    fast = levels_config(None, True, scatter=True)["levels"]
    assert [lv.size for lv in fast] == [lv.size for lv in FAST_LEVELS] and all(lv.fit_scatter for lv in fast)
    assert levels_config(None, False) == {}
    metal = levels_config(None, False, True, False, True)["levels"]  # --metal --scatter: both
    assert all(lv.robust and lv.fit_scatter == SCATTER_MM for lv in metal)


def test_track_models_scatter_on_the_later_frames_too():
    from typer.testing import CliRunner

    from xraypose.cli import app
    from xraypose.cli.track import _later_levels
    from xraypose.register.config import SCATTER_MM
    from xraypose.register.tracking import TRACKING_LEVELS

    later = _later_levels(False, False, True)
    assert [lv.size for lv in later] == [lv.size for lv in TRACKING_LEVELS]
    assert all(lv.fit_scatter == SCATTER_MM for lv in later)
    assert all(lv.fit_scatter == () for lv in _later_levels(False))
    both = _later_levels(True, True, True)
    assert all(lv.robust and lv.fit_scatter for lv in both) and any(lv.fit_unsharp for lv in both)
    for command in ("track", "register", "evaluate"):
        assert "--scatter" in CliRunner().invoke(app, [command, "--help"], terminal_width=200).output


def test_a_recorded_config_keeps_its_scatter_widths():
    cfg = RegistrationConfig(levels=(Level(size=16, fit_scatter=[25, 60]),))
    assert cfg.levels[0].fit_scatter == (25, 60)
    again = RegistrationConfig(levels=tuple(cfg.to_dict()["levels"]))
    assert again.levels == cfg.levels


def test_the_scatter_hypothesis_is_tried_only_when_nothing_is_ok_yet():
    from xraypose.register.config import DEFAULT_LEVELS, scatter_levels
    from xraypose.register.hypotheses import METAL_HYPOTHESIS, SCATTER_HYPOTHESIS, SCHEDULE_HYPOTHESES, schedule_levels

    assert list(SCHEDULE_HYPOTHESES) == [METAL_HYPOTHESIS, SCATTER_HYPOTHESIS]  # scatter last
    cfg = RegistrationConfig()
    assert schedule_levels(SCATTER_HYPOTHESIS, cfg, ["failed", "uncertain"]) == scatter_levels(DEFAULT_LEVELS)
    assert schedule_levels(SCATTER_HYPOTHESIS, cfg, ["failed", "ok"]) is None
    assert schedule_levels(SCATTER_HYPOTHESIS, RegistrationConfig(levels=scatter_levels(DEFAULT_LEVELS)),
                           ["failed"]) is None  # `--scatter` given
    # left out by the configuration (a part of a CT)
    assert schedule_levels(SCATTER_HYPOTHESIS, RegistrationConfig(schedule_hypotheses=("metal schedule",)),
                           ["failed"]) is None


class _FakeResult:
    def __init__(self, poses, initial, similarity):
        self.poses, self.initial_poses, self.similarity = poses, initial, similarity


class _FakeRegistrar:
    """Registers to a pose that says which schedule made it: +1 mm along x per level with scatter."""

    def __init__(self, config):
        self.config, self.isocenter = config, torch.zeros(3, dtype=F64)

    def derive(self, **changes):
        import dataclasses

        return _FakeRegistrar(dataclasses.replace(self.config, **changes))

    def register(self, images, camera, starts, masks=None):
        poses = starts.clone().to(F64)
        poses[:, 0, 3] += sum(1.0 for lv in self.config.levels if lv.fit_scatter)
        return _FakeResult(poses, starts, torch.zeros(len(starts)))


def test_a_failed_registration_tries_scatter_last_and_keeps_it_when_better(monkeypatch):
    """``register``'s hypotheses (the control flow, on a stand-in registrar): after the others, the given
    start is registered with scatter modelled on every level; its result is kept when the check trusts it
    more, and it is not tried once a result is ``ok`` or when the schedule models scatter already."""
    import xraypose.register.confidence as confidence
    import xraypose.register.hypotheses as hyp
    from xraypose.register.api import _try_hypotheses
    from xraypose.register.config import DEFAULT_LEVELS, scatter_levels
    from xraypose.register.confidence import Confidence

    monkeypatch.setattr(hyp, "HYPOTHESES", ())
    monkeypatch.setattr(hyp.alternative_starts, "__defaults__", (0, ()))
    metal_verdict = {"v": "failed"}

    def judge(registrar, images, camera, poses, starts=None, masks=None, model=None):
        out = []
        for T in poses:
            shift = float(T[0, 3])
            if shift >= 3.5:  # the scatter schedule's result: trusted
                out.append(Confidence(0.9, "ok", "scatter"))
            elif shift == 0.0 and metal_verdict["v"] == "ok":
                out.append(Confidence(0.8, "ok", "fine"))
            else:
                out.append(Confidence(0.1, "failed", "off"))
        return out

    monkeypatch.setattr(confidence, "assess", judge)
    monkeypatch.setattr(confidence, "scatter_aware_p",  # the ranking: the same scripted P
                        lambda registrar, images, camera, poses, **kw: [c.p_success for c in judge(
                            registrar, images, camera, poses)])
    reg = _FakeRegistrar(RegistrationConfig(levels=DEFAULT_LEVELS))
    start = torch.eye(4, dtype=F64)[None]
    res = _FakeResult(start.clone(), start, torch.zeros(1))
    cam = Camera(sdd=1020.0, height=16, width=16, delx=2.0)
    (pick, k), out = _try_hypotheses(reg, torch.zeros(1, 1, 16, 16), cam, res, 0, Confidence(0.1, "failed", "off"))
    tried = [h["start"] for h in out["info"]["hypotheses"]]
    assert tried[-1] == hyp.SCATTER_HYPOTHESIS and hyp.METAL_HYPOTHESIS in tried
    assert out["info"]["kept"] == hyp.SCATTER_HYPOTHESIS and float(pick.poses[k][0, 3]) == 4.0
    # a result judged ok before it: not tried
    metal_verdict["v"] = "ok"
    _, out = _try_hypotheses(reg, torch.zeros(1, 1, 16, 16), cam, res, 0, Confidence(0.8, "ok", "fine"))
    assert hyp.SCATTER_HYPOTHESIS not in [h["start"] for h in out["info"]["hypotheses"]]
    # `--scatter` given: the schedule models scatter already, nothing more to try
    metal_verdict["v"] = "failed"
    reg2 = _FakeRegistrar(RegistrationConfig(levels=scatter_levels(DEFAULT_LEVELS)))
    _, out = _try_hypotheses(reg2, torch.zeros(1, 1, 16, 16), cam, res, 0, Confidence(0.1, "failed", "off"))
    assert hyp.SCATTER_HYPOTHESIS not in [h["start"] for h in out["info"]["hypotheses"]]


def test_the_scatter_aware_check_ranks_a_scattered_xrays_truth_above_a_near_miss(sample_ct):
    """scatter_aware_p (ranking the hypotheses' results): on a scattered X-ray (the appearance benchmark's
    scatter family) the check with scatter modelled on its DRR rates the true pose above one 3 mm / 2° off,
    and above the shipped check's own P there; on an X-ray without scatter it chooses none and equals the
    shipped check."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_capture_starts import appearance_case
    from xraypose.register import Registrar
    from xraypose.register.cases import perturb_pose
    from xraypose.register.confidence import assess, scatter_aware_p

    iso = sample_ct.get_isocenter()
    image, camera, truth, _, _, blur = appearance_case(sample_ct, "scatter", 0, seed=0)
    reg = Registrar(sample_ct, RegistrationConfig(drr_blur=blur))
    near = perturb_pose(truth, iso, 2.0, 3.0, torch.Generator().manual_seed(1))[0]
    poses = torch.stack([truth, near])
    imgs = image.expand(2, -1, -1, -1)
    ps = scatter_aware_p(reg, imgs, camera, poses)
    plain = [c.p_success for c in assess(reg, imgs, camera, poses)]
    assert ps[0] > ps[1] and ps[0] > plain[0], (ps, plain)
    image, camera, truth, _, _, blur = appearance_case(sample_ct, "lowdose", 0, seed=0)
    reg = Registrar(sample_ct, RegistrationConfig(drr_blur=blur))
    ps = scatter_aware_p(reg, image, camera, truth[None])
    plain = assess(reg, image, camera, truth[None])[0].p_success
    assert ps[0] == pytest.approx(plain, abs=0.02), (ps, plain)
