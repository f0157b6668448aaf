"""The X-ray's intensity-domain blur held fixed (``RegistrationConfig.blur_coefficient``): measured on an
X-ray at its pose (``Registrar.measure_blur``), it puts the depth's optimum back at the truth."""

from dataclasses import replace

import pytest
import torch

from xraypose.appearance import form_xray
from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.preprocess import preprocess
from xraypose.register import Registrar, RegistrationConfig
from xraypose.register.cases import CaseMaker
from xraypose.register.objective import LevelObjective, blur_coefficient, level_channels, squared_gradient
from xraypose.register.tracking import TRACKING_LEVELS

F64 = torch.float64


def _edges(n=2, h=48, w=40, seed=0):
    """(n, 1, h, w) smooth images with edges: blurred random discs."""
    g = torch.Generator().manual_seed(seed)
    v, u = torch.meshgrid(torch.arange(h, dtype=F64), torch.arange(w, dtype=F64), indexing="ij")
    out = torch.zeros(n, 1, h, w, dtype=F64)
    for i in range(n):
        for _ in range(6):
            cu, cv, r, a = torch.rand(4, generator=g, dtype=F64) * torch.tensor([w, h, 12, 3], dtype=F64)
            out[i, 0] += a / (1 + torch.exp(((u - cu) ** 2 + (v - cv) ** 2).sqrt() - r - 3))
    return out


def test_blur_coefficient_recovers_the_coefficient_and_leaves_masked_pixels_out():
    D = _edges()
    c = torch.tensor([-0.3, -0.05], dtype=F64)
    tgt = 2.5 * (D + c.reshape(-1, 1, 1, 1) * squared_gradient(D)) + 0.7
    assert torch.allclose(blur_coefficient(D, tgt), c, atol=1e-9)
    spoiled = tgt.clone()
    spoiled[..., :10, :] = 5.0  # a saturated band
    w = torch.ones_like(tgt)
    w[..., :10, :] = 0.0
    assert not torch.allclose(blur_coefficient(D, spoiled), c, atol=1e-3)
    assert torch.allclose(blur_coefficient(D, spoiled, w=w), c, atol=1e-9)
    # a sharpened X-ray is no blur: never a positive coefficient
    sharp = D + 0.2 * squared_gradient(D)
    assert float(blur_coefficient(D, sharp).max()) == 0.0


@pytest.mark.parametrize("bad", [0.1, float("nan"), float("inf"), True, "x"])
def test_blur_coefficient_must_be_a_number_at_most_zero(bad):
    with pytest.raises(InputError, match="blur_coefficient must be None"):
        RegistrationConfig(blur_coefficient=bad)


@pytest.fixture(scope="module")
def blurred_views(sample_ct):
    """Noiseless 128² X-rays of one pose with their intensities blurred by 1 px (a detector's blur) and
    without blur: {blur_px: (image (1, 1, H, W), camera, pose (4, 4), mask)}."""
    cam = Camera(sdd=1020.0, height=128, width=128, delx=280.0 / 128)
    T, _ = CaseMaker(sample_ct, camera=cam, collimator_px=4, seed=1).true_pose(0)
    out = {}
    for blur in (0.0, 1.0):
        fx = form_xray(sample_ct, cam, T, family="focal", generator=torch.Generator().manual_seed(0),
                       blur_px=blur, photons=0)
        pre = preprocess(fx.raw, fx.camera, **fx.preprocess)
        out[blur] = (pre.image[None, None].float(), pre.camera, pre.transform_pose(fx.pose).to(F64), pre.mask)
    return out


def test_measure_blur_sees_a_detectors_blur(sample_ct, blurred_views):
    reg = Registrar(sample_ct, RegistrationConfig(drr_blur=1.0, levels=TRACKING_LEVELS))
    c = {b: float(reg.measure_blur(img, cam, T[None], m)[0]) for b, (img, cam, T, m) in blurred_views.items()}
    assert c[1.0] < -0.02, c
    assert abs(c[0.0]) < 0.3 * abs(c[1.0]), c
    # on a 64-row schedule it is still measured at 128 rows (on that level's 4 mm CT): about the same
    coarse = reg.derive(levels=TRACKING_LEVELS[:1])
    img, cam, T, m = blurred_views[1.0]
    assert float(coarse.measure_blur(img, cam, T[None], m)[0]) == pytest.approx(c[1.0], rel=0.05)


def _best_depth(reg, level, img, cam, T, mask, deltas):
    """The camera's shift (mm) along its principal ray at which ``level``'s similarity peaks (the
    parabola through the best step and its neighbours)."""
    dens, aff = reg.volume_level(level.volume_mm, level_channels(level))
    ob = LevelObjective(level, reg.config, dens, aff, img, cam, torch.Generator().manual_seed(0), masks=mask)
    poses = T.repeat(len(deltas), 1, 1)
    poses[:, :3, 3] += deltas[:, None] * T[:3, 2]
    with torch.no_grad():
        r, _, _ = ob.residual(poses.float(), torch.zeros(len(deltas), dtype=torch.long))
    s = 1 - 0.5 * r.double().pow(2).sum(-1)
    i = min(max(int(s.argmax()), 1), len(s) - 2)
    a, b, c = float(s[i - 1]), float(s[i]), float(s[i + 1])
    step = float(deltas[1] - deltas[0])
    return float(deltas[i]) + (0.5 * (a - c) / (a - 2 * b + c) * step if a - 2 * b + c < 0 else 0.0)


def test_the_measured_blur_puts_the_depths_optimum_back_at_the_truth(sample_ct, blurred_views):
    """Blurred intensities shift high-contrast edges toward their bright side; a DRR blurred as line
    integrals does not, and the optimum along the beam (what one view sees only as magnification)
    moves off the truth.  With the coefficient measured at the pose it comes back."""
    img, cam, T, m = blurred_views[1.0]
    reg = Registrar(sample_ct, RegistrationConfig(drr_blur=1.0, levels=TRACKING_LEVELS))
    c = float(reg.measure_blur(img, cam, T[None], m)[0])
    last = replace(TRACKING_LEVELS[-1], robust=False)
    deltas = torch.arange(-4.0, 4.01, 0.5, dtype=F64)
    off = _best_depth(reg, last, img, cam, T, m, deltas)
    on = _best_depth(reg.derive(blur_coefficient=c), last, img, cam, T, m, deltas)
    assert abs(off) > 0.8 and abs(on) < 0.5 * abs(off) and abs(on) < 0.5, (off, on, c)


def test_measure_blur_names_bad_input(sample_ct, blurred_views):
    img, cam, T, m = blurred_views[1.0]
    reg = Registrar(sample_ct, RegistrationConfig(drr_blur=1.0, levels=TRACKING_LEVELS))
    with pytest.raises(InputError, match="2 X-rays but 1 poses"):
        reg.measure_blur(img.repeat(2, 1, 1, 1), cam, T[None])
    with pytest.raises(InputError, match="pixel mask must have the X-rays' shape"):
        reg.measure_blur(img, cam, T[None], torch.ones(1, 1, 8, 8))
    sparse = reg.derive(levels=(replace(TRACKING_LEVELS[-1], patches=16),))
    with pytest.raises(InputError, match="needs a dense level"):
        sparse.measure_blur(img, cam, T[None])
    c, se = reg.measure_blur(img, cam, T[None], m, with_error=True)
    assert c.shape == se.shape == (1,) and 0 < float(se[0]) < abs(float(c[0]))
