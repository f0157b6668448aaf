"""Preprocessing: geometry bookkeeping (camera, pose, pixels follow every crop/flip/resize),
Beer–Lambert inversion, blur, background, rescale, and recovery of rendered line integrals."""

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xraypose.camera import Camera, carm_pose
from xraypose.errors import InputError
from xraypose.preprocess import (
    PixelMap, beer_lambert, center_crop, crop, crop_edges, flip_columns, flip_rows, gaussian_blur, ncc,
    plan_geometry, preprocess, rescale01, resize, rotate180, subtract_background,
)

F64 = torch.float64


def _points():
    g = torch.Generator().manual_seed(3)
    return torch.randn(25, 3, generator=g, dtype=F64) * 40.0


def _check_follows(cam, pose, cam2, pose2, pmap):
    """Projecting with the new camera/pose = moving the old projections by the pixel map."""
    X = _points()
    uv = cam.project(X, pose)
    uv2 = cam2.project(X, pose2)
    torch.testing.assert_close(uv2, pmap.apply(uv), atol=1e-9, rtol=0)


@pytest.mark.parametrize("mirror", [False, True])
def test_each_geometric_step_keeps_camera_pose_and_pixels_consistent(mirror):
    cam = Camera(sdd=1000.0, height=40, width=50, delx=1.1, dely=0.9, x0=3.0, y0=-2.0, reverse_x_axis=mirror)
    pose = carm_pose(20.0, 10.0, 600.0, torch.zeros(3, dtype=F64))
    img = torch.arange(40 * 50, dtype=torch.float32).reshape(40, 50)
    eye = torch.eye(4, dtype=F64)
    for name, out in [
        ("crop", (*crop(img, cam, 3, 5, 30, 40), eye)),
        ("crop_edges", (*crop_edges(img, cam, (1, 2, 3, 4)), eye)),
        ("center_crop", (*center_crop(img, cam, (31, 20)), eye)),
        ("resize", (*resize(img, cam, 20, 17), eye)),
        ("rotate180", rotate180(img, cam)),
        ("flip_columns", (*flip_columns(img, cam), eye)),
        ("flip_rows", flip_rows(img, cam)),
    ]:
        im2, cam2, pmap, T = out
        assert (cam2.height, cam2.width) == tuple(im2.shape), name
        _check_follows(cam, pose, cam2, pose @ T, pmap)
    # the pixels move as the map says (integer maps: exact)
    im2, _, pmap, _ = rotate180(img, cam)
    assert im2[0, 0] == img[39, 49] and torch.equal(pmap.apply(torch.tensor([[49.0, 39.0]])), torch.tensor([[0.0, 0.0]]))
    im2, _, pmap = crop(img, cam, 3, 5, 30, 40)
    assert im2[0, 0] == img[3, 5]
    im2, _, _ = flip_columns(img, cam)
    assert im2[7, 0] == img[7, 49]
    im2, _, _, _ = flip_rows(img, cam)
    assert im2[0, 7] == img[39, 7]


@settings(max_examples=40, deadline=None)
@given(
    st.booleans(), st.sampled_from([None, "columns", "rows", "both"]), st.integers(0, 6),
    st.integers(5, 40), st.integers(5, 40), st.booleans(),
)
def test_any_chain_of_steps_is_consistent(mirror, flip, border, h, w, rot):
    cam = Camera(sdd=900.0, height=48, width=60, delx=1.0, dely=1.2, x0=-4.0, y0=1.5, reverse_x_axis=mirror)
    pose = carm_pose(-30.0, 15.0, 500.0, torch.tensor([5.0, 0.0, -3.0], dtype=F64))
    img = torch.rand(48, 60) + 0.5
    res = preprocess(img, cam, rotate_180=rot, flip=flip, crop=border, size=(h, w), rescale=False)
    assert tuple(res.image.shape) == (h, w) == (res.camera.height, res.camera.width)
    _check_follows(cam, pose, res.camera, res.transform_pose(pose), res.pixel_map)
    plan = plan_geometry(48, 60, cam, rotate_180=rot, flip=flip, crop=border, size=(h, w))
    assert plan.camera == res.camera and plan.pixel_map == res.pixel_map
    assert torch.equal(plan.pose_transform, res.pose_transform)


def test_pixel_map_compose_and_inverse():
    a = PixelMap(su=2.0, bu=1.0, sv=-1.0, bv=9.0)
    b = PixelMap(su=0.5, bu=-3.0, sv=3.0, bv=0.0)
    uv = torch.tensor([[1.5, 2.0], [-4.0, 7.0]], dtype=F64)
    torch.testing.assert_close(a.then(b).apply(uv), b.apply(a.apply(uv)))
    torch.testing.assert_close(a.inverse().apply(a.apply(uv)), uv)
    np.testing.assert_allclose(a.apply(uv.numpy()), a.apply(uv).numpy())


def test_resize_moves_pixels_like_the_camera():
    """A point-like feature lands where the resized camera projects it."""
    cam = Camera(sdd=1000.0, height=64, width=64, delx=1.0)
    img = torch.zeros(64, 64)
    img[20:24, 40:44] = 1.0  # centre (41.5, 21.5)
    small, cam2, pmap = resize(img, cam, 16, 16)
    v, u = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    c = torch.stack([(small * u).sum(), (small * v).sum()]) / small.sum()
    torch.testing.assert_close(c.double(), pmap.apply(torch.tensor([41.5, 21.5], dtype=F64)), atol=0.05, rtol=0)


def test_beer_lambert_inverts_exponential_attenuation():
    L = torch.rand(30, 20, dtype=F64) * 3
    I = 1000.0 * torch.exp(-L)
    out, info = beer_lambert(I, i0=1000.0)
    torch.testing.assert_close(out.double(), L, atol=1e-5, rtol=0)
    assert info["i0"] == 1000.0 and info["clamped_pixels"] == 0
    out, info = beer_lambert(I)  # I0 = image maximum
    torch.testing.assert_close(out.double(), L - L.min(), atol=1e-5, rtol=0)
    out, info = beer_lambert(torch.tensor([[0.0, 3.0], [1.0, 7.0]]), offset=1.0)
    torch.testing.assert_close(out.double(), math.log(8.0) - torch.log(torch.tensor([[1.0, 4.0], [2.0, 8.0]], dtype=F64)),
                               atol=1e-6, rtol=0)
    out, info = beer_lambert(torch.tensor([[0.0, 4.0], [2.0, 8.0]]))
    assert info["clamped_pixels"] == 1 and float(out[0, 0]) == pytest.approx(math.log(4.0))


def test_all_zero_or_bad_images_give_clear_errors():
    with pytest.raises(InputError, match="all zeros"):
        beer_lambert(torch.zeros(8, 8))
    with pytest.raises(InputError, match="all zeros"):
        preprocess(np.zeros((8, 8)), log=True)
    with pytest.raises(InputError, match="no positive pixel"):
        beer_lambert(-torch.ones(4, 4))
    with pytest.raises(InputError, match="NaN"):
        beer_lambert(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(InputError, match="constant"):
        rescale01(torch.full((5, 5), 2.0))
    with pytest.raises(InputError, match="sizes differ"):
        preprocess(torch.ones(10, 12), Camera(sdd=1000.0, height=12, width=10, delx=1.0))
    with pytest.raises(InputError, match="removes the whole"):
        crop_edges(torch.ones(10, 10), None, 5)
    with pytest.raises(InputError, match="exceeds"):
        crop(torch.ones(10, 10), None, 5, 5, 6, 2)
    with pytest.raises(InputError, match="odd"):
        gaussian_blur(torch.ones(10, 10), 4, 1.0)
    with pytest.raises(InputError, match="one 2D image"):
        preprocess(torch.ones(2, 3, 4))
    with pytest.raises(InputError, match="not both"):
        preprocess(torch.ones(9, 9), crop=1, center_crop=4)


def test_subtract_background_clamp_must_be_a_bool():
    img = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    for bad in (1, 0, "no", None):
        with pytest.raises(InputError, match="^" + re.escape(f"clamp = {bad!r} must be true or false") + "$"):
            subtract_background(img, 2.0, clamp=bad)
    assert float(subtract_background(img, 2.0, clamp=np.bool_(False))[0].min()) == -1.0
    assert float(subtract_background(img, 2.0, clamp=True)[0].min()) == 0.0


def test_blur_background_and_rescale():
    img = torch.zeros(21, 21)
    img[10, 10] = 1.0
    b = gaussian_blur(img, 5, 1.0)
    assert float(b.sum()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(b, b.flip(0), atol=1e-7, rtol=0)
    torch.testing.assert_close(b, b.T, atol=1e-7, rtol=0)
    assert float(b[10, 10]) == pytest.approx(float(b.max()))
    flat = torch.full((30, 30), 5.0)
    flat[:3, :3] = 9.0
    out, v = subtract_background(flat, "mode")
    assert v == pytest.approx(5.0, abs=0.01) and float(out.max()) == pytest.approx(4.0, abs=0.01)
    out, v = subtract_background(flat, ("percentile", 50))
    assert v == 5.0
    out, (lo, hi) = rescale01(flat)
    assert (lo, hi) == (5.0, 9.0) and float(out.min()) == 0.0 and float(out.max()) == 1.0
    with pytest.raises(InputError, match="unknown background"):
        subtract_background(flat, "median-ish")


def test_preprocessing_recovers_rendered_line_integrals():
    """Raw 16-bit counts I0·exp(−L) with a collimator border → crop, log, rescale ≈ rescaled L (NCC > 0.99)."""
    from xraypose.render import render
    from xraypose.volume import load_sample_ct

    ct = load_sample_ct()
    cam = Camera(sdd=1020.0, height=96, width=96, delx=3.1, reverse_x_axis=True)
    pose = carm_pose(15.0, -5.0, 600.0, ct.get_isocenter())
    with torch.no_grad():
        L = render(ct.density("physical"), ct.affine, cam, pose.float()[None], step=2.0)[0, 0].double()
    i0 = 65487.0
    counts = torch.round(i0 * torch.exp(-L)).clamp(1, 65535)
    counts[:4], counts[-4:], counts[:, :4], counts[:, -4:] = 7.0, 7.0, 7.0, 7.0  # collimator
    res = preprocess(counts, cam, crop=6, log=True, i0=i0, rescale=True)
    target = L[6:-6, 6:-6]
    assert ncc(res.image, target) > 0.999
    assert float(res.image.min()) == 0.0 and float(res.image.max()) == 1.0
    assert res.camera == cam.crop(6, 6, 84, 84)
    blurred = preprocess(counts, cam, crop=6, blur=True, log=True, i0=i0)
    assert ncc(blurred.image, target) > 0.99
    # without the crop the collimator border ruins the match; without the log the contrast is inverted
    assert ncc(preprocess(counts, cam, log=True, i0=i0).image[6:-6, 6:-6], target) > 0.99
    assert ncc(preprocess(counts, cam, crop=6, log=False).image, target) < 0
    assert [s["step"] for s in blurred.steps] == ["crop", "beer_lambert", "blur", "rescale01"]
    old = preprocess(counts, cam, crop=6, blur=True, blur_domain="intensity", log=True, i0=i0)
    assert [s["step"] for s in old.steps] == ["crop", "blur", "beer_lambert", "rescale01"]


def test_the_blur_acts_on_line_integrals_as_the_drrs_does():
    """A body's outline against air (line integrals 0 | 5): blurred after the log (the default) the
    X-ray is the blurred line integrals, as registration blurs its DRR; blurred before the log
    (DiffPose's order) the outline moves toward the body by most of a pixel and no pixel spacing
    or intensity scale makes up for it."""
    from xraypose.preprocess import gaussian_blur

    L = torch.zeros(40, 40, dtype=torch.float64)
    L[:, 20:] = 5.0
    counts = 60000.0 * torch.exp(-L)
    new = preprocess(counts, None, blur=(5, 1.0), log=True, i0=60000.0, rescale=False).image.double()
    old = preprocess(counts, None, blur=(5, 1.0), blur_domain="intensity", log=True, i0=60000.0,
                     rescale=False).image.double()
    want = gaussian_blur(L.float(), 5, 1.0).double()
    assert torch.allclose(new, want, atol=1e-4)
    half = lambda img: float((img[20] < 2.5).sum())  # noqa: E731  (the column where the outline crosses half)
    assert half(new) == 20 and half(old) >= 21
    with pytest.raises(InputError, match="blur_domain"):
        preprocess(counts, None, blur=True, blur_domain="log", log=True)


def test_an_integer_images_darkest_grey_levels_are_blurred_before_their_log():
    """An 8-bit image whose dark side holds grey levels 1–6: the log of single levels is their
    quantisation's, so there the blur goes before the log (as DiffPose's order); on the bright side,
    16 levels and more above zero, after it.  A 16-bit image of the same scene thousands of levels up
    is blurred after the log everywhere."""
    from xraypose.preprocess import DEQUANTISE_LEVELS, gaussian_blur

    g = torch.Generator().manual_seed(0)
    img = torch.full((40, 40), 200.0)
    img[:, 20:] = torch.randint(1, 7, (40, 20), generator=g).double()  # dark, quantised
    new = preprocess(img, None, blur=(5, 1.0), log=True, i0=255.0, rescale=False)
    old = preprocess(img, None, blur=(5, 1.0), log=True, i0=255.0, rescale=False, blur_domain="intensity")
    after = gaussian_blur((math.log(255.0) - torch.log(img)).float(), 5, 1.0)
    # dark (3.5 levels on average: weight 3.5/16 on the log-then-blur): mostly blurred, then the log
    gap = (after[:, 28:] - old.image[:, 28:]).abs().mean()
    assert gap > 0.1  # the two orders differ there by a tenth of the line integral and more
    assert (new.image[:, 28:] - old.image[:, 28:]).abs().mean() < 0.35 * gap
    assert torch.allclose(new.image[:, :12], after[:, :12], atol=1e-5)  # bright: the log, then blurred
    step = next(s for s in new.steps if s["step"] == "blur")
    assert step["quantum"] == 1.0 and 0.3 < step["dequantised_share"] < 0.7
    assert DEQUANTISE_LEVELS * 1.0 > 6  # the dark side is below the blend's floor
    raw16 = img * 1000.0
    deep = preprocess(raw16, None, blur=(5, 1.0), log=True, i0=255000.0, rescale=False)
    assert next(s for s in deep.steps if s["step"] == "blur")["dequantised_share"] == 0.0


def test_raw_intensities_are_binned_before_their_log_when_shrunk():
    """A low-dose image (3 photons per fine pixel behind 'bone', 100 unattenuated) shrunk 4× in each
    direction: binned first (the default for raw intensities) each output pixel is the log of the mean
    of 16 pixels' counts, as a detector with 4× larger pixels would count, and the line integral comes
    out within a few hundredths; shrunk after the log (the order of before), each fine pixel's log of
    0, 1, 2 … photons is averaged, and the line integral is off by more than a tenth (and undefined where
    a pixel counted 0, clamped)."""
    g = torch.Generator().manual_seed(0)
    lam = torch.full((128, 128), 100.0, dtype=F64)
    lam[:, 64:] = 3.0
    counts = torch.poisson(lam, generator=g)
    L_true = math.log(100.0 / 3.0)
    new = preprocess(counts, None, log=True, i0=100.0, rescale=False, size=32)
    old = preprocess(counts, None, log=True, i0=100.0, rescale=False, size=32, resample_domain="line-integral")
    inner = (slice(2, -2), slice(18, -2))  # the dark side away from the edge's transition
    assert abs(float(new.image[inner].double().mean()) - L_true) < 0.03
    assert abs(float(old.image[inner].double().mean()) - L_true) > 0.1
    # noiseless, whole bins: exactly log I0 − log(mean of each 4×4 block)
    clean = 1000.0 * torch.exp(-torch.rand(64, 64, generator=g, dtype=F64) * 3)
    out = preprocess(clean, None, log=True, i0=1000.0, rescale=False, size=16, resample_domain="intensity",
                     photon_offset=0).image  # (its random scene reads as few photons: no offset here)
    out = out.double()
    want = math.log(1000.0) - torch.log(torch.nn.functional.avg_pool2d(clean[None, None], 4)[0, 0])
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
    st = [s for s in new.steps if s["step"] in ("resize", "beer_lambert")]
    assert [s["step"] for s in st] == ["resize", "beer_lambert"] and st[0]["domain"] == "intensity"


def test_binning_before_the_log_keeps_camera_mask_and_scales_the_blur():
    """The camera and pixel map are the resize's whatever the order; the saturation mask is averaged
    like the image; the blur, now at the output size, has its σ scaled by output rows / input rows."""
    cam = Camera(sdd=1000.0, height=96, width=64, delx=0.5)
    g = torch.Generator().manual_seed(1)
    img = torch.poisson(torch.full((96, 64), 400.0, dtype=F64), generator=g)
    img[:8] = 5000.0  # a saturated plateau
    a = preprocess(img, cam, log=True, i0=5000.0, size=(24, 16), blur=(5, 1.0), resample_domain="intensity")
    b = preprocess(img, cam, log=True, i0=5000.0, size=(24, 16), blur=(5, 1.0), resample_domain="line-integral")
    assert a.camera == b.camera == cam.resize(24, 16)
    assert a.pixel_map.to_dict() == b.pixel_map.to_dict()
    assert a.mask is not None and float(a.mask[:2].max()) == 0.0 and float(a.mask[8:].min()) == 1.0
    blur = next(s for s in a.steps if s["step"] == "blur")
    assert blur["sigma"] == pytest.approx(0.25) and blur["kernel_size"] == 3
    assert next(s for s in a.steps if s["step"] == "resize")["blur_scaled_by"] == pytest.approx(0.25)
    assert next(s for s in b.steps if s["step"] == "blur")["sigma"] == 1.0


def test_resample_domain_choices_and_bad_values():
    """'auto' shrinks before the log only raw intensities with few photons that are shrunk: attenuation
    images, values proportional to log I, and enlargements keep the order of after the log; 'intensity'
    on anything but raw intensities, or an unknown domain, is refused in one line."""
    lam = torch.full((32, 32), 50.0, dtype=F64)
    lam[:, 16:] = 5.0
    img = torch.poisson(lam, generator=torch.Generator().manual_seed(2))
    order = lambda r: [s["step"] for s in r.steps if s["step"] in ("resize", "beer_lambert", "negate_log")]  # noqa
    assert order(preprocess(img, None, log="log-intensity", size=8)) == ["negate_log", "resize"]
    assert order(preprocess(img, None, log=True, i0=50.0, size=64)) == ["beer_lambert", "resize"]
    assert order(preprocess(img, None, log=True, i0=50.0, size=8)) == ["resize", "beer_lambert"]
    assert order(preprocess(img, None, log=False, size=8)) == ["resize"]
    with pytest.raises(InputError, match="resample_domain 'intensity' .* needs log=True"):
        preprocess(img, None, log=False, size=8, resample_domain="intensity")
    with pytest.raises(InputError, match="resample_domain must be"):
        preprocess(img, None, log=True, size=8, resample_domain="log")


def test_auto_bins_before_the_log_only_where_photons_are_few_and_no_half_photon_helps():
    """The photon count comes from the image's own noise (variance over mean in 4×4 blocks, the gain):
    a scene counted at 20 ADU per photon is estimated within 10 %; at 2·10⁴ photons per unattenuated
    pixel (~300 behind the 'bone') 'auto' keeps the log of each pixel; at 200 (~3) it keeps it too, with
    half a photon added before the log (nearly unbiased, and a bin is an intensity-domain blur that moves
    edges), and bins first only where no photon is added (``photon_offset=0``); a noiseless image has
    infinite photons (the log of each pixel)."""
    from xraypose.preprocess import LOG_MIN_PHOTONS, detected_photons

    g = torch.Generator().manual_seed(4)
    L = torch.zeros(128, 128, dtype=F64)
    L[32:96, 32:96] = 4.2  # 'bone': e^-4.2 = 1.5 % of the photons
    for photons, few in ((2e4, False), (200.0, True)):
        counts = torch.poisson(photons * torch.exp(-L), generator=g) * 20.0  # 20 ADU per photon
        est = detected_photons(counts)
        assert est["per_photon"] == pytest.approx(20.0, rel=0.1)
        if few:  # ~3 photons behind the 'bone': its darkest 1 % counted 0 or 1
            assert est["photons_p1"] < LOG_MIN_PHOTONS
        else:
            assert est["photons_p1"] == pytest.approx(photons * math.exp(-4.2), rel=0.3)
        for offset, binned in (("auto", False), (0, few)):
            out = preprocess(counts, None, log=True, i0=20.0 * photons, size=32, photon_offset=offset, rescale=False)
            rs = next(s for s in out.steps if s["step"] == "resize")
            assert (rs["domain"] == "intensity") is binned, (offset, rs)
            assert rs["log_min_photons"] == LOG_MIN_PHOTONS and rs["photons"]["per_photon"] == est["per_photon"]
            assert rs["photon_offset"] == (0.5 if few and offset == "auto" else 0.0)
            if few and offset == "auto":  # the log of each pixel + ½ photon: the bone's line integral within 0.05
                assert abs(float(out.image[12:20, 12:20].double().mean()) - 4.2) < 0.05
    clean = 1000.0 * torch.exp(-L)
    assert detected_photons(clean)["photons_p1"] == math.inf
    rs = next(s for s in preprocess(clean, None, log=True, i0=1000.0, size=32).steps if s["step"] == "resize")
    assert rs["domain"] == "line-integral" and rs["photons"]["photons_p1"] is None
    assert detected_photons(torch.ones(8, 8)) is None  # too few blocks to tell


def test_few_photons_get_half_a_photon_before_their_log():
    """photon_offset="auto": raw intensities of 4 and 8 photons per pixel (10 grey levels each; gain read
    from the image's own noise) get ½ photon before the log, which takes the log's bias from 0.08–0.15
    to a fifth of it (log(n + ½): nearly unbiased); none at 200 photons, none on a noiseless image, none
    behind a shutter stored as 0, none on 8-bit images (a display's grey levels, not photons); a number
    adds that many; a bad one is refused."""
    g = torch.Generator().manual_seed(0)
    for lam in (4.0, 8.0):
        expected = torch.full((64, 64), 200.0, dtype=F64)
        expected[:, 32:] = lam
        img = torch.poisson(expected, generator=g) * 10.0
        auto = preprocess(img, None, log=True, i0=2000.0, rescale=False)
        off = preprocess(img, None, log=True, i0=2000.0, rescale=False, photon_offset=0)
        truth = math.log(200.0 / lam)
        bias_auto = float(auto.image[:, 34:].double().mean()) - truth
        bias_off = float(off.image[:, 34:].double().mean()) - truth
        assert bias_off > 0.05 and abs(bias_auto) < 0.3 * bias_off, (lam, bias_auto, bias_off)
        rec = next(s for s in auto.steps if s["step"] == "beer_lambert")["photon_offset"]
        assert rec["photons"] == 0.5 and 8.5 < rec["per_photon"] < 11.5
        assert "photon_offset" not in next(s for s in off.steps if s["step"] == "beer_lambert")
    bright = torch.poisson(torch.full((64, 64), 200.0, dtype=F64), generator=g) * 10.0
    clean = 2000.0 * torch.exp(-torch.linspace(0, 3, 64, dtype=F64))[None].expand(64, 64)
    shut = bright.clone()
    shut[:, :12] = 0.0  # a shutter stored as 0 over a well-exposed field: not few photons
    for quiet in (bright, clean, shut):
        assert "photon_offset" not in next(s for s in preprocess(quiet, None, log=True, i0=2000.0).steps
                                           if s["step"] == "beer_lambert")
    display = torch.randint(1, 7, (64, 64), generator=g).double()  # 8-bit grey levels: not photons
    eight = (torch.poisson(torch.full((64, 64), 8.0, dtype=F64), generator=g) * 3.0).clamp(max=255.0)
    for img in (display, eight):  # (the second's "photon" is 3 grey levels, but an 8-bit image is a display's)
        assert "photon_offset" not in next(s for s in preprocess(img, None, log=True, i0=255.0).steps
                                           if s["step"] == "beer_lambert")
    two = preprocess(bright, None, log=True, i0=2000.0, rescale=False, photon_offset=2.0)
    rec = next(s for s in two.steps if s["step"] == "beer_lambert")
    assert rec["photon_offset"]["photons"] == 2.0
    assert rec["offset"] == pytest.approx(2.0 * rec["photon_offset"]["per_photon"])
    for bad in (-1.0, float("nan"), "half", True):
        with pytest.raises(InputError, match="photon_offset must be 'auto' or a number of photons >= 0"):
            preprocess(bright, None, log=True, i0=2000.0, photon_offset=bad)
