"""A display's unsharp masking explained by the fine levels' intensity fit (``Level.fit_unsharp``,
``--edge-enhanced``)."""

import json

import pytest
import torch

from xraypose.appearance.detector import gaussian_blur
from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.register import Level, Registrar, RegistrationConfig
from xraypose.register.cases import CaseMaker
from xraypose.register.objective import LevelObjective, level_channels

F64 = torch.float64
ROWS = 96
DELX = 280.0 / ROWS  # mm per pixel


@pytest.fixture(scope="module")
def view(sample_ct):
    """(registrar, camera, true pose, the DRR there (ROWS, ROWS) float64) of a pelvis view."""
    cam = Camera(sdd=1020.0, height=ROWS, width=ROWS, delx=DELX)
    T, _ = CaseMaker(sample_ct, camera=cam, collimator_px=3, seed=2).true_pose(1)
    reg = Registrar(sample_ct, RegistrationConfig(drr_blur=1.0))
    lv = Level(size=ROWS, volume_mm=2.0, fit_bone=True, optimizer="lm")
    dens, aff = reg.volume_level(lv.volume_mm, level_channels(lv))
    ob = LevelObjective(lv, reg.config, dens, aff, torch.zeros(1, 1, ROWS, ROWS), cam, torch.Generator())
    with torch.no_grad():
        drr = ob.render(T[None].float(), torch.zeros(1, dtype=torch.long))[0, 0].double()
    return reg, cam, T.to(F64), drr


def _score(reg, cam, T, target, **fit) -> float:
    """The similarity (1 − ½‖r‖²) at ``T`` of a level at the X-ray's size with ``fit`` (Level fields)."""
    lv = Level(size=ROWS, volume_mm=2.0, fit_bone=True, optimizer="lm", **fit)
    dens, aff = reg.volume_level(lv.volume_mm, level_channels(lv))
    ob = LevelObjective(lv, reg.config, dens, aff, target[None, None].float(), cam, torch.Generator())
    with torch.no_grad():
        r, _, _ = ob.residual(T[None].float(), torch.zeros(1, dtype=torch.long))
    return float(1 - 0.5 * r.double().pow(2).sum())


def _depth_peak(reg, cam, T, target, deltas, **fit) -> float:
    """The shift (mm) along the principal ray at which that level's similarity peaks (a parabola
    through the best shift and its neighbours)."""
    s = []
    for d in deltas:
        P = T.clone()
        P[:3, 3] += float(d) * T[:3, 2]
        s.append(_score(reg, cam, P, target, **fit))
    s = torch.tensor(s, dtype=F64)
    i = min(max(int(s.argmax()), 1), len(s) - 2)
    a, b, c = float(s[i - 1]), float(s[i]), float(s[i + 1])
    step = float(deltas[1] - deltas[0])
    return float(deltas[i]) + (0.5 * (a - c) / (a - 2 * b + c) * step if a - 2 * b + c < 0 else 0.0)


def test_unsharp_masking_is_explained_and_the_optimum_stays(view):
    """A DRR through a display's unsharp masking (amount 1.5, σ 3 pixels): with the blurred copies in the
    fit the X-ray is explained at its true pose, and the depth's optimum stays there; without, both not."""
    reg, cam, T, drr = view
    sigma_px = 3.0
    target = drr + 1.5 * (drr - gaussian_blur(drr, sigma_px))
    widths = (sigma_px * DELX,)  # the blur's σ on the detector, mm
    plain, fitted = _score(reg, cam, T, target), _score(reg, cam, T, target, fit_unsharp=widths)
    # (not 1: the bone multiplier is fitted first, then the blurred copies)
    assert fitted > 0.995 > 0.98 > plain, (plain, fitted)
    # widths that miss the display's (one narrower, one wider) still explain most of it
    assert _score(reg, cam, T, target, fit_unsharp=(0.5 * widths[0], 3.0 * widths[0])) > 0.99
    deltas = torch.linspace(-12.0, 12.0, 9, dtype=F64)
    plain_mm = _depth_peak(reg, cam, T, target, deltas)
    fitted_mm = _depth_peak(reg, cam, T, target, deltas, fit_unsharp=widths)
    assert abs(fitted_mm) < 0.5 < 0.7 < abs(plain_mm), (plain_mm, fitted_mm)  # measured 0.31 and 1.01 mm


def test_the_unsharp_fit_leaves_an_unprocessed_xray_alone(view):
    reg, cam, T, drr = view
    assert _score(reg, cam, T, drr, fit_unsharp=(3.0, 9.0, 27.0)) == pytest.approx(_score(reg, cam, T, drr), abs=2e-4)


@pytest.mark.parametrize("bad", [(-1.0,), (float("nan"),), (0.0,), ("3",), (True,), 3.0])
def test_fit_unsharp_must_be_blur_widths(bad):
    with pytest.raises(InputError, match="fit_unsharp"):
        RegistrationConfig(levels=(Level(size=16, fit_unsharp=bad),))


def test_a_config_read_back_from_json_keeps_its_fits():
    cfg = RegistrationConfig(levels=(Level(size=16, fit_unsharp=(3.0, 9.0)),))
    again = RegistrationConfig(**json.loads(json.dumps(cfg.to_dict())))
    assert again.levels == cfg.levels
    # a list given directly is taken as the tuple
    assert RegistrationConfig(levels=(Level(size=16, fit_unsharp=[3.0, 9.0]),)).levels == cfg.levels


def test_edge_enhanced_schedules_fit_the_unsharp_at_their_fine_levels_only():
    from xraypose.cli.options import levels_config
    from xraypose.cli.track import _later_levels
    from xraypose.register.config import DEFAULT_LEVELS, FAST_LEVELS, UNSHARP_MM
    from xraypose.register.tracking import TRACKING_LEVELS

    for args, base in (((None, False), DEFAULT_LEVELS), ((None, True), FAST_LEVELS), (("16,64", False), None)):
        lv = levels_config(*args, False, True)["levels"]
        assert [x.fit_unsharp for x in lv] == [UNSHARP_MM if x.optimizer == "lm" else () for x in lv]
        assert any(x.fit_unsharp for x in lv) and any(not x.fit_unsharp for x in lv)
        if base is not None:
            assert [x.size for x in lv] == [x.size for x in base]
    metal = levels_config(None, False, True, True)["levels"]
    assert all(x.robust for x in metal) and metal[-1].fit_unsharp == UNSHARP_MM
    assert levels_config(None, False) == {}  # off by default
    assert all(x.fit_unsharp == UNSHARP_MM for x in _later_levels(False, True))
    assert _later_levels(False) == TRACKING_LEVELS and all(x.robust for x in _later_levels(True, True))
