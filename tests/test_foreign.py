"""Metal steps set aside before registering (xraypose/register/foreign.py)."""

import pytest
import torch

from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.register import RegistrationConfig
from xraypose.register.foreign import set_aside_batch, set_aside_steps

F64 = torch.float64


def _anatomy(n: int = 128) -> torch.Tensor:
    """A smooth line-integral-like image: a body's slab plus blurred 'bones' (no strong edge)."""
    y, x = torch.meshgrid(torch.arange(n, dtype=F64), torch.arange(n, dtype=F64), indexing="ij")
    img = 1.0 + 0.3 * torch.exp(-((x - 0.5 * n) / (0.6 * n)) ** 2)
    for cx, cy, r, a in ((0.3, 0.4, 0.08, 0.25), (0.65, 0.55, 0.12, 0.2), (0.5, 0.8, 0.06, 0.3)):
        d = torch.hypot(x - cx * n, y - cy * n) / (r * n)
        img = img + a * torch.sigmoid((1 - d) * 4.0)  # a soft-edged bone: ramps over several pixels
    g = torch.Generator().manual_seed(0)
    return img + 0.002 * torch.randn(n, n, generator=g, dtype=F64)


def _with_metal(img: torch.Tensor, step: float = 0.4):
    """(X-ray, blade region, wire pixels): a half-plane plate of uniform extra attenuation ``step`` whose
    straight edge crosses the image, and a thin bright wire."""
    n = img.shape[0]
    y, x = torch.meshgrid(torch.arange(n, dtype=F64), torch.arange(n, dtype=F64), indexing="ij")
    blade = (x + 0.3 * y) > 0.7 * n
    wire = ((y - 0.5 * x - 10).abs() < 1.0) & (x > 10) & (x < 70)
    out = img + step * blade + 0.8 * wire
    return out, blade, wire


def test_an_x_ray_without_metal_is_left_as_it_is():
    img = _anatomy()
    r = set_aside_steps(img)
    assert torch.equal(r.image, img) and bool((r.weights == 1).all())
    assert r.levelled == [] and r.masked_share == 0.0


def test_a_plate_is_levelled_and_its_edges_and_a_wire_get_weight_zero():
    clean = _anatomy()
    img, blade, wire = _with_metal(clean, step=0.4)
    r = set_aside_steps(img)
    assert len(r.levelled) == 1 and abs(abs(r.levelled[0]["step"]) - 0.4) < 0.02, r.levelled
    kept = r.weights > 0
    assert not bool(kept[wire].any())  # the wire is masked
    # away from the masked band, the levelled image is the anatomy up to one constant
    diff = (r.image - clean)[kept]
    assert float((diff - diff.median()).abs().max()) < 0.03
    # without levelling the plate's region would be 0.4 off: the test above would fail
    assert float(((img - clean)[kept] - (img - clean)[kept].median()).abs().max()) > 0.35
    assert 0.0 < r.masked_share < 0.3 and kept.float().mean() > 0.6


def test_regions_cut_apart_by_a_wire_are_levelled_with_the_surface_they_belong_to():
    """The region graph of a benchmark X-ray (pelvis implants case 2, its X-ray blurred after the log): a
    blade (region 1, the largest) over part of the field, another (5), K-wires cutting the uncovered
    surface into pieces 2, 4, 6, 7 with no step between them.  Every uncovered piece must end at one level
    and each covered region one blade's step above it; before, only piece 4 (reached across a blade's
    step) was levelled and 2, 6, 7 kept their own levels, 0.4 off: registered from the truth the X-ray
    then went 196 mm away."""
    from xraypose.register.foreign import _level_regions

    def border(step, n=100, spread=0.01):
        return step + spread * torch.linspace(-1.0, 1.0, n, dtype=F64)

    steps = {(1, 4): border(-0.405), (2, 1): border(0.416), (4, 2): border(-0.035), (2, 7): border(0.008),
             (4, 5): border(0.606), (4, 6): border(0.0), (7, 3): border(0.586), (6, 1): border(0.425)}
    level, accepted = _level_regions([1, 2, 3, 4, 5, 6, 7], steps, min_step=0.12, uniform=0.35, same=0.048)
    uncovered = [level[k] for k in (2, 4, 6, 7)]
    assert max(uncovered) - min(uncovered) < 1e-9, level
    assert abs(level[1] - level[4] - 0.405) < 0.02 and abs(level[5] - level[4] - 0.606) < 0.02
    assert abs(level[3] - level[7] - 0.586) < 0.02
    assert (4, 2) not in accepted and (1, 4) in accepted  # a wire's no-step border is not metal's step
    # a border that steps, but too little to be a blade's and too much to be one surface: not joined
    level, _ = _level_regions([1, 2], {(1, 2): border(0.08)}, min_step=0.12, uniform=0.35, same=0.048)
    assert level == {1: 0.0, 2: 0.0}


def test_a_non_uniform_step_is_not_levelled():
    """A body's edge against air steps by the body's varying thickness: masked at most, never shifted."""
    clean = _anatomy()
    n = clean.shape[0]
    y, x = torch.meshgrid(torch.arange(n, dtype=F64), torch.arange(n, dtype=F64), indexing="ij")
    air = x > 0.75 * n
    img = torch.where(air, torch.zeros_like(clean), clean * (0.5 + y / n))  # the step grows 3× along the edge
    r = set_aside_steps(img)
    assert r.levelled == []
    kept = r.weights > 0
    assert torch.equal(r.image[kept], img[kept])


def test_a_rod_across_the_image_is_masked_and_its_two_sides_are_not_shifted():
    """A thick rod (a screw's shaft, 8 px) splits the image in two: the regions either side are not offset,
    so nothing is levelled (the step read across the rod is the anatomy's)."""
    clean = _anatomy()
    n = clean.shape[0]
    y, x = torch.meshgrid(torch.arange(n, dtype=F64), torch.arange(n, dtype=F64), indexing="ij")
    rod = (y - 0.4 * x - 30).abs() < 4.0
    r = set_aside_steps(clean + 0.8 * rod)
    assert r.levelled == [], r.levelled
    assert not bool((r.weights[rod] > 0).any())
    kept = r.weights > 0
    assert torch.equal(r.image[kept], (clean + 0.8 * rod)[kept])


def test_noise_or_an_all_edge_image_sets_nothing_aside():
    g = torch.Generator().manual_seed(1)
    for img in (torch.rand(64, 64, generator=g), torch.zeros(64, 64), (torch.rand(64, 64, generator=g) > 0.5).float()):
        r = set_aside_steps(img)
        assert torch.equal(r.image, img) and bool((r.weights == 1).all()), r.to_dict()


def test_a_given_mask_is_kept_and_combined():
    img, _, wire = _with_metal(_anatomy())
    mask = torch.ones_like(img, dtype=torch.float32)
    mask[:, :10] = 0.0  # e.g. saturation
    r = set_aside_steps(img, mask)
    assert bool((r.weights[:, :10] == 0).all()) and not bool((r.weights[wire] > 0).any())
    imgs, w, found = set_aside_batch(img[None, None].float(), mask[None, None])
    assert w is not None and w.shape == (1, 1, 128, 128) and found[0].masked_share > 0


def test_filled_pixels_come_from_their_surroundings():
    from xraypose.register.foreign import fill_set_aside

    clean = _anatomy()
    img, blade, wire = _with_metal(clean)
    r = set_aside_steps(img)
    f = fill_set_aside(r.image, r.weights)
    kept = r.weights > 0
    assert torch.equal(f[kept], r.image[kept]) and bool(torch.isfinite(f).all())
    off = f - clean
    off = off - off[kept].median()
    assert float(off[wire].abs().max()) < 0.1  # the wire (0.8 bright) is gone


def test_batch_without_metal_gives_no_mask():
    imgs = torch.stack([_anatomy(64), _anatomy(64)])[:, None].float()
    out, w, found = set_aside_batch(imgs)
    assert w is None and torch.equal(out, imgs) and len(found) == 2


def test_foreign_steps_setting_is_validated():
    for bad in (0.5, 1.0, -3.0, float("nan"), float("inf"), "12"):
        with pytest.raises(InputError, match="foreign_steps"):
            RegistrationConfig(foreign_steps=bad)
    assert RegistrationConfig(foreign_steps=None).foreign_steps is None
    assert RegistrationConfig().foreign_steps == 12.0


def test_registers_through_a_retractor_with_metal_steps_set_aside(sample_ct):
    """The appearance benchmark's pelvis implants case 1 (a retractor blade, a K-wire, a screw; not in the
    CT), started 10°/40 mm away, with the default schedule: below 1 mm with the steps set aside, and the
    same registration without them ends far away (the blade's half-plane pulls the capture)."""
    from test_register_robust import metal_case

    from xraypose.register import Registrar
    from xraypose.register.api import registration_metrics

    image, camera, truth, fid, start, blur = metal_case(sample_ct)
    errs = {}
    for steps in (12.0, None):
        reg = Registrar(sample_ct, RegistrationConfig(drr_blur=blur, record_trajectory=False, seed=0, num_threads=1,
                                                      foreign_steps=steps))
        r = reg.register(image, camera, start[None])
        errs[steps] = registration_metrics(r.poses[0], truth, fid, camera)["mtre"]
        if steps is not None:
            assert r.foreign and r.foreign[0][0]["levelled"], r.foreign  # the blade was found and levelled
    assert errs[12.0] < 1.0 and errs[None] > 10.0, errs


def test_the_model_initialiser_sees_the_x_ray_without_its_metal():
    """ModelInitializer hands the pose regressor the X-ray with metal's steps set aside and filled (the
    model never saw metal); foreign_steps=None hands it over as given."""
    from xraypose.camera import Camera
    from xraypose.register.initializers import ModelInitializer

    clean = _anatomy(96)
    img, blade, wire = _with_metal(clean)
    seen = []

    def predictor(x, cam):
        seen.append(x.clone())
        return torch.eye(4, dtype=F64)[None].expand(x.shape[0], 4, 4)

    cam = Camera(sdd=1020.0, height=96, width=96, delx=3.0)
    for steps in (12.0, None):
        ModelInitializer(predictor, foreign_steps=steps)(img.float(), cam)
    with_steps, as_given = seen[0][0, 0].double(), seen[1][0, 0].double()
    assert torch.equal(as_given, img.float().double())
    err = lambda x: float(((x - clean) - (x - clean).median()).abs().mean())  # noqa: E731
    assert err(with_steps) < 0.3 * err(as_given)


def test_one_x_ray_expanded_over_a_batch_is_looked_at_once(monkeypatch):
    """The hypotheses register one X-ray expanded over their alternatives: its steps are found once, and so
    through the registrar's view check (which must not copy the expanded batch)."""
    import xraypose.register.foreign as foreign
    from xraypose.register import Registrar

    calls = []
    real = foreign.set_aside_steps
    monkeypatch.setattr(foreign, "set_aside_steps", lambda *a, **k: calls.append(1) or real(*a, **k))
    img, _, _ = _with_metal(_anatomy(64))
    batch = img.float()[None, None].expand(3, -1, -1, -1)
    out, w, found = set_aside_batch(batch)
    assert len(calls) == 1 and len(found) == 3 and w.shape == (3, 1, 64, 64) and torch.equal(out[0], out[2])
    calls.clear()
    imgs = Registrar._check_view(0, 1, batch, Camera(sdd=1020.0, height=64, width=64, delx=4.0), None)[0]
    set_aside_batch(imgs)
    assert len(calls) == 1
