"""Registration on a raw X-ray's photon counts (xraypose.register.counts): the model's chart derivatives,
a closed loop, the gain's irrelevance, bad input."""

import dataclasses

import pytest
import torch

from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.metrics import pose_errors
from xraypose.register.cases import CaseMaker, perturb_pose
from xraypose.register.counts import CountsModel, counts_basis, refine_on_counts
from xraypose.volume import load_sample_ct

F64 = torch.float64
PX = 40


@pytest.fixture(scope="module")
def scene():
    vol = load_sample_ct()
    cam = Camera(sdd=1020.0, height=PX, width=PX, delx=280.0 / PX)
    T, fid = CaseMaker(vol, camera=cam, collimator_px=0, n_fiducials=10).true_pose(1)
    basis = counts_basis(vol)
    keep = torch.ones(PX, PX, dtype=torch.bool)
    keep[:2], keep[-2:], keep[:, :2], keep[:, -2:] = False, False, False, False
    a = torch.tensor([0.06, -0.01, 0.004], dtype=F64)  # a bilinear μ: its slope above water lower
    return {"vol": vol, "cam": cam, "T": T.to(F64), "fid": fid, "basis": basis, "keep": keep, "a": a,
            "iso": vol.get_isocenter()}


def _counts(scene, model: CountsModel, photons: float = 3000.0, a=None) -> torch.Tensor:
    """(PX, PX) noiseless counts of the model at the scene's true pose (zero outside ``keep``); ``a``: the
    coefficients (default the scene's)."""
    m, _ = model(scene["T"], scene["a"] if a is None else a)
    y = torch.zeros(PX, PX, dtype=F64)
    y[scene["keep"]] = photons * m
    return y


def test_counts_basis_is_a_bilinear_mu():
    """μ = w·(HU+1000) for HU ≤ 0 and another slope above, written on the hinges with the knots' weights."""
    vol = load_sample_ct()
    b = counts_basis(vol).double()
    hu = vol.data.double()
    top = float((hu + 1000).clamp_min(0).max())
    mu = torch.where(hu <= 0, 2e-5 * (hu + 1000), 2e-5 * 1000 + 1.2e-5 * hu).clamp_min(0)
    fit = (2e-5 * b[0] + (1.2e-5 - 2e-5) * b[1]) * top
    assert torch.allclose(fit, mu, atol=1e-6 * float(mu.max()))
    assert b.shape[0] == 3 and float(b[0].max()) == pytest.approx(1.0)


def test_the_counts_blur_is_the_detectors():
    """The counts model blurs as the simulator's detector does (one function: _kernels.replicate_blur)."""
    from xraypose._kernels import replicate_blur
    from xraypose.appearance.detector import gaussian_blur

    x = torch.rand(2, 17, 23, dtype=F64, generator=torch.Generator().manual_seed(0))
    out = replicate_blur(x, 0.8)
    for i in range(2):
        assert torch.allclose(out[i], gaussian_blur(x[i], 0.8), atol=1e-12)
        assert abs(float(out[i].sum() - x[i].sum())) < 0.05 * float(x[i].sum())  # a blur, not a scaling
    assert torch.equal(replicate_blur(x, 0.0), x)


def test_chart_derivatives_match_differences(scene):
    """∂m/∂ξ (the chart's six directions, analytic from the trilinear kernel) and ∂m/∂a against central
    differences of the model."""
    model = CountsModel(scene["basis"], scene["vol"].affine, scene["cam"], scene["keep"], scene["iso"], 0.7, 2,
                        "trilinear")
    T, a = scene["T"], scene["a"]
    m, dm = model(T, a, derivatives=True)
    assert dm.shape == (6 + 3, int(scene["keep"].sum()))
    for k in range(6):
        h = 2e-3 if k < 3 else 0.1
        e = torch.zeros(6, dtype=F64)
        e[k] = h
        fd = (model(model.moved(T, e), a)[0] - model(model.moved(T, -e), a)[0]) / (2 * h)
        scale = float(fd.abs().max())
        assert scale > 0
        assert float((dm[k] - fd).abs().max()) < 0.05 * scale, k
    for k in range(3):
        e = torch.zeros(3, dtype=F64)
        e[k] = 1e-4
        fd = (model(T, a + e)[0] - model(T, a - e)[0]) / 2e-4
        assert torch.allclose(dm[6 + k], fd, rtol=1e-4, atol=1e-6 * float(fd.abs().max()))


def test_refine_returns_to_the_pose_that_formed_the_counts(scene):
    """Noiseless counts of the model itself: from 3°/8 mm off, the pose and the coefficients come back; the
    gain does not change the path."""
    model = CountsModel(scene["basis"], scene["vol"].affine, scene["cam"], scene["keep"], scene["iso"], 0.7, 2)
    y = _counts(scene, model)
    start = perturb_pose(scene["T"], scene["iso"].to(F64), 3.0, 8.0, torch.Generator().manual_seed(3))[0]
    kw = dict(isocenter=scene["iso"], keep=scene["keep"], blur_px=0.7, supersample=2, max_iterations=40)
    fit = refine_on_counts(scene["basis"], scene["vol"].affine, scene["cam"], y, start, **kw)
    err0 = float(pose_errors(start, scene["T"], scene["fid"], scene["cam"])["mtre"])
    err = float(pose_errors(fit.pose, scene["T"], scene["fid"], scene["cam"])["mtre"])
    assert err0 > 3.0
    assert err < 0.02, (err0, err, fit)
    assert fit.converged and fit.nll < fit.nll_start
    assert torch.allclose(fit.coefficients, scene["a"], rtol=2e-3, atol=2e-5)
    assert fit.scale == pytest.approx(3000.0, rel=2e-3)
    fit37 = refine_on_counts(scene["basis"], scene["vol"].affine, scene["cam"], 37.0 * y, start, **kw)
    assert torch.allclose(fit37.pose, fit.pose, atol=1e-6)
    assert fit37.scale == pytest.approx(37.0 * fit.scale, rel=1e-6)


@pytest.fixture
def model_calls(monkeypatch):
    """The ``derivatives`` flag of every :class:`CountsModel` evaluation (each one render, or Siddon's seven)."""
    calls = []
    call = CountsModel.__call__

    def spy(self, P, a, derivatives=False):
        calls.append(bool(derivatives))
        return call(self, P, a, derivatives)

    monkeypatch.setattr(CountsModel, "__call__", spy)
    return calls


@pytest.mark.parametrize("renderer,supersample", [("trilinear", 2), ("siddon", 1)])
def test_a_fit_started_at_its_optimum_stops_at_its_first_trial(scene, model_calls, renderer, supersample):
    """Noiseless counts, started at the pose and coefficients that formed them: the first trial step moves less
    than the tolerance, so accepted or not it ends the fit (until stop 69 a rejected one was followed by eleven
    ever shorter trials, each a render: 13 in all)."""
    model = CountsModel(scene["basis"], scene["vol"].affine, scene["cam"], scene["keep"], scene["iso"], 0.7,
                        supersample, renderer)
    y = _counts(scene, model)
    model_calls.clear()
    fit = refine_on_counts(scene["basis"], scene["vol"].affine, scene["cam"], y, scene["T"], isocenter=scene["iso"],
                           keep=scene["keep"], blur_px=0.7, supersample=supersample, renderer=renderer,
                           coefficients=scene["a"])
    assert fit.converged and fit.iterations <= 1
    assert len(model_calls) == 2, model_calls
    assert float(pose_errors(fit.pose, scene["T"], scene["fid"], scene["cam"])["mtre"]) < 1e-3


def test_a_trilinear_fit_keeps_its_accepted_trials_derivatives(scene, model_calls):
    """Trilinear derivatives cost one render: each trial step renders them, and an accepted one is the next
    step's start without a second render at its pose (until stop 69: a plain trial, then the same pose again
    with derivatives — from 3°/8 mm, 12 renders for 6 steps; now 7 for 6)."""
    model = CountsModel(scene["basis"], scene["vol"].affine, scene["cam"], scene["keep"], scene["iso"], 0.7, 2,
                        "trilinear")
    y = _counts(scene, model)
    start = perturb_pose(scene["T"], scene["iso"].to(F64), 3.0, 8.0, torch.Generator().manual_seed(3))[0]
    model_calls.clear()
    fit = refine_on_counts(scene["basis"], scene["vol"].affine, scene["cam"], y, start, isocenter=scene["iso"],
                           keep=scene["keep"], blur_px=0.7, supersample=2, max_iterations=40, renderer="trilinear")
    assert fit.converged and fit.iterations >= 3
    assert False not in model_calls  # no plain render
    assert len(model_calls) <= fit.iterations + 2, (model_calls, fit.iterations)
    assert float(pose_errors(fit.pose, scene["T"], scene["fid"], scene["cam"])["mtre"]) < 0.02


@pytest.mark.parametrize("renderer,supersample,offset", [("trilinear", 2, (3.0, 8.0)), ("siddon", 1, (1.0, 3.0))])
def test_a_fit_renders_no_pose_twice(scene, monkeypatch, renderer, supersample, offset):
    """Every pose a fit renders (plain, with its derivatives, or as Siddon's base of forward differences) is
    rendered once: an accepted trial's image is not rendered again for its derivatives (until stop 69 both
    renderers rendered it twice)."""
    import xraypose.register.counts as counts_module

    seen = []

    def spy(fn):
        def wrapped(density, affine, camera, T, *args, **kw):
            seen.extend((camera.height, tuple(p.flatten().tolist())) for p in T)
            return fn(density, affine, camera, T, *args, **kw)
        return wrapped

    monkeypatch.setattr(counts_module, "render", spy(counts_module.render))
    monkeypatch.setattr(counts_module, "render_with_tangents", spy(counts_module.render_with_tangents))
    model = CountsModel(scene["basis"], scene["vol"].affine, scene["cam"], scene["keep"], scene["iso"], 0.7,
                        supersample, renderer)
    y = _counts(scene, model)
    start = perturb_pose(scene["T"], scene["iso"].to(F64), *offset, torch.Generator().manual_seed(5))[0]
    seen.clear()
    fit = refine_on_counts(scene["basis"], scene["vol"].affine, scene["cam"], y, start, isocenter=scene["iso"],
                           keep=scene["keep"], blur_px=0.7, supersample=supersample, renderer=renderer,
                           coefficients=scene["a"], max_iterations=40)
    assert fit.iterations >= 2
    assert len(seen) == len(set(seen)), f"{len(seen) - len(set(seen))} poses rendered twice"


def test_refine_with_siddon_returns_to_the_pose(scene):
    """The Siddon model (derivatives by central differences along the chart) on its own noiseless counts."""
    model = CountsModel(scene["basis"], scene["vol"].affine, scene["cam"], scene["keep"], scene["iso"], 0.7, 1,
                        "siddon")
    y = _counts(scene, model)
    start = perturb_pose(scene["T"], scene["iso"].to(F64), 1.0, 3.0, torch.Generator().manual_seed(5))[0]
    fit = refine_on_counts(scene["basis"], scene["vol"].affine, scene["cam"], y, start, isocenter=scene["iso"],
                           keep=scene["keep"], blur_px=0.7, supersample=1, renderer="siddon", max_iterations=40)
    err = float(pose_errors(fit.pose, scene["T"], scene["fid"], scene["cam"])["mtre"])
    assert float(pose_errors(start, scene["T"], scene["fid"], scene["cam"])["mtre"]) > 1.0
    assert err < 0.05, (err, fit)


def test_refine_without_the_intensity_blur_in_the_model_is_biased(scene):
    """The counts formed with a 1.2 px intensity blur, fitted without it: the optimum moves (the blur is
    what puts one view's depth off); with it, it does not."""
    model = CountsModel(scene["basis"], scene["vol"].affine, scene["cam"], scene["keep"], scene["iso"], 1.2, 2)
    y = _counts(scene, model, photons=1e6)
    kw = dict(isocenter=scene["iso"], keep=scene["keep"], supersample=2, max_iterations=40)
    right = refine_on_counts(scene["basis"], scene["vol"].affine, scene["cam"], y, scene["T"], blur_px=1.2, **kw)
    wrong = refine_on_counts(scene["basis"], scene["vol"].affine, scene["cam"], y, scene["T"], blur_px=0.0, **kw)
    e_right = float(pose_errors(right.pose, scene["T"], scene["fid"], scene["cam"])["mtre"])
    e_wrong = float(pose_errors(wrong.pose, scene["T"], scene["fid"], scene["cam"])["mtre"])
    assert e_right < 0.01
    assert e_wrong > 5 * e_right + 0.02


def test_bad_input_is_refused(scene):
    b, A, cam, T, iso = scene["basis"], scene["vol"].affine, scene["cam"], scene["T"], scene["iso"]
    y = torch.full((PX, PX), 100.0, dtype=F64)
    with pytest.raises(InputError, match="pixels but its camera"):
        refine_on_counts(b, A, cam, y[:-1], T, isocenter=iso)
    with pytest.raises(InputError, match="negative"):
        refine_on_counts(b, A, cam, y - 200.0, T, isocenter=iso)
    with pytest.raises(InputError, match="mask"):
        refine_on_counts(b, A, cam, y, T, isocenter=iso, keep=torch.ones(PX, PX + 1))
    with pytest.raises(InputError, match="fewer than 64"):
        refine_on_counts(b, A, cam, y, T, isocenter=iso, keep=torch.zeros(PX, PX))
    with pytest.raises(InputError, match="no counts"):
        refine_on_counts(b, A, cam, 0 * y, T, isocenter=iso)
    with pytest.raises(InputError, match="supersample"):
        refine_on_counts(b, A, cam, y, T, isocenter=iso, supersample=0)
    with pytest.raises(InputError, match="blur"):
        refine_on_counts(b, A, cam, y, T, isocenter=iso, blur_px=float("nan"))
    with pytest.raises(InputError, match="renderer"):
        refine_on_counts(b, A, cam, y, T, isocenter=iso, renderer="nearest")
    for tol in (0.0, -1.0, float("nan")):
        with pytest.raises(InputError, match="tol_mm"):
            refine_on_counts(b, A, cam, y, T, isocenter=iso, tol_mm=tol)


def test_chi2_per_pixel_reads_the_photon_noise_and_what_the_model_cannot_explain(scene):
    """Pearson's χ² a kept pixel at the end of a fit: about 1 on Poisson counts of the model itself (photons), the
    gain on counts in other units (four per photon: 4), far above COUNTS_EXPLAINED_CHI2 where the X-ray holds what
    the model lacks (a plate halving the counts over 200 pixels) — what ``register --counts`` admits a failed
    verdict's refined pose on."""
    from xraypose.register.counts import COUNTS_EXPLAINED_CHI2

    model = CountsModel(scene["basis"], scene["vol"].affine, scene["cam"], scene["keep"], scene["iso"], 0.7, 2)
    y = torch.poisson(_counts(scene, model, 3000.0), generator=torch.Generator().manual_seed(5))
    kw = dict(isocenter=scene["iso"], keep=scene["keep"], blur_px=0.7, supersample=2, max_iterations=20)
    fit = refine_on_counts(scene["basis"], scene["vol"].affine, scene["cam"], y, scene["T"], **kw)
    assert 0.85 < fit.chi2_per_pixel < 1.15, fit.chi2_per_pixel
    assert fit.to_dict()["chi2_per_pixel"] == fit.chi2_per_pixel
    assert fit.explained and not dataclasses.replace(fit, chi2_per_pixel=None).explained  # an older record's fit
    fit4 = refine_on_counts(scene["basis"], scene["vol"].affine, scene["cam"], 4.0 * y, scene["T"], **kw)
    assert fit4.chi2_per_pixel == pytest.approx(4.0 * fit.chi2_per_pixel, rel=1e-4)
    plate = y.clone()
    plate[10:20, 10:30] *= 0.5
    fitp = refine_on_counts(scene["basis"], scene["vol"].affine, scene["cam"], plate, scene["T"], **kw)
    assert fitp.chi2_per_pixel > 2 * COUNTS_EXPLAINED_CHI2, fitp.chi2_per_pixel  # 3.9: the fit moves to absorb some


def test_the_covariance_is_the_inverse_information_of_the_photons(scene):
    """Ten times the photons, a tenth of the covariance (the Fisher information is linear in them)."""
    model = CountsModel(scene["basis"], scene["vol"].affine, scene["cam"], scene["keep"], scene["iso"], 0.7, 1)
    kw = dict(isocenter=scene["iso"], keep=scene["keep"], blur_px=0.7, max_iterations=0,
              coefficients=scene["a"])
    lo = refine_on_counts(scene["basis"], scene["vol"].affine, scene["cam"], _counts(scene, model, 1e3), scene["T"], **kw)
    hi = refine_on_counts(scene["basis"], scene["vol"].affine, scene["cam"], _counts(scene, model, 1e4), scene["T"], **kw)
    assert torch.allclose(lo.covariance, 10 * hi.covariance, rtol=1e-6, atol=1e-12)
    ev = torch.linalg.eigvalsh(0.5 * (lo.covariance + lo.covariance.T))
    assert bool((ev > 0).all())
    # world axes (the motion model's chart): the translation's worst direction is the beam, the camera's +z
    w, V = torch.linalg.eigh(lo.covariance[3:, 3:])
    beam = scene["T"][:3, 2] / scene["T"][:3, 2].norm()
    assert abs(float(V[:, -1] @ beam)) > 0.9


def test_raw_keep_and_photons():
    from xraypose.register.counts import photons_of, raw_keep

    g = torch.Generator().manual_seed(0)
    lam = torch.full((64, 64), 400.0, dtype=F64)
    lam[20:40, 20:40] = 100.0
    raw = 3.0 * torch.poisson(lam, generator=g)  # a gain of 3 grey levels per photon
    raw[:, :4] = 0.0  # a blade stored as 0
    raw[60:, :] = float(raw.max()) + 50  # a clipped plateau (the top value in 4 rows)
    keep = raw_keep(raw, crop=2)
    assert not bool(keep[:2].any()) and not bool(keep[:, :4].any()) and not bool(keep[60:].any())
    assert bool(keep[10:50, 10:50].all())
    y, per = photons_of(raw, keep)
    assert per == pytest.approx(3.0, rel=0.1) and torch.allclose(y, raw / per)
    with pytest.raises(InputError, match="photon counts"):
        photons_of(torch.full((64, 64), 500.0), torch.ones(64, 64, dtype=torch.bool))
    with pytest.raises(InputError, match="crop"):
        raw_keep(raw, crop=32)


def test_refine_sequence_holds_one_blur_and_leaves_frames_without_a_pose(scene):
    from xraypose.register.counts import refine_sequence

    model = CountsModel(scene["basis"], scene["vol"].affine, scene["cam"], scene["keep"], scene["iso"], 0.5, 1)
    g = torch.Generator().manual_seed(1)
    raws = [torch.poisson(_counts(scene, model, 5e4), generator=g) for _ in range(2)]
    calls = []
    form, fits = refine_sequence(scene["vol"], scene["cam"], raws, [None, scene["T"]], isocenter=scene["iso"],
                                 crop=2, supersample=1, renderer="siddon", air_hu=-1000, scatter_px=0.0,  # as formed
                                 progress=lambda i, f: calls.append((i, f)))
    assert fits[0] is None and fits[1] is not None and [i for i, _ in calls] == [0, 1]
    assert form.blur_px in (0.3, 0.5, 0.7)  # the grid's neighbours of the true 0.5
    assert (form.renderer, form.air_hu, form.scatter_px) == ("siddon", -1000, 0.0)
    # 40² pixels of 7 mm: the likelihood's optimum itself lies 0.33 mm from the truth (the search's warm
    # starts reach it; cold starts stopped at 0.27 mm, at a higher NLL)
    assert float(pose_errors(fits[1].pose, scene["T"], scene["fid"], scene["cam"])["mtre"]) < 0.4
    with pytest.raises(InputError, match="2 frames but 1 poses"):
        refine_sequence(scene["vol"], scene["cam"], raws, [scene["T"]], isocenter=scene["iso"])


def test_refine_sequence_bins_large_frames_as_one_xray_is_binned(scene, monkeypatch):
    """A fluoroscope's frames (here 80², max side 40) are refined on their counts summed 2×2, with the binned
    camera — as ``register --counts`` bins one X-ray (unbinned, a 512² frame's refinement took minutes); the
    poses stay the raw camera's; ``bin=1`` leaves them as they are.  The DRR's rays per binned pixel: 2, and
    where more than 2×2 pixels are summed the first frame is fitted again at the bin's rays (``denser_rays``),
    kept for every frame only when that lowers its NLL by more than 10 (4×4 binned at 2 a side, low-dose pelvis
    frames went ~1 mm off along the beam); a given value is used as it is."""
    from xraypose.register import counts as C

    seen, gain = [], {"nll": 0.0}

    def spy_estimate(volume, camera, y, pose, **kw):
        seen.append((tuple(y.shape), camera.height, float(camera.delx), tuple(kw["keep"].shape), kw["supersample"]))
        form = C.CountsFormation("siddon", -1000.0, 0.5, 0.0, kw["supersample"])  # as the search records it
        return form, C.CountsFit(pose, torch.zeros(3, dtype=F64), 1.0, 0.0, 0.0, 0, True, 0.0), []

    def spy_refine(basis, affine, camera, y, pose, **kw):
        seen.append((tuple(y.shape), camera.height, float(camera.delx), tuple(kw["keep"].shape), kw["supersample"]))
        nll = gain["nll"] if kw["supersample"] == 4 else 0.0
        return C.CountsFit(pose, torch.zeros(3, dtype=F64), 1.0, nll, 0.0, 0, True, 0.0)

    monkeypatch.setattr(C, "estimate_counts_formation", spy_estimate)
    monkeypatch.setattr(C, "refine_on_counts", spy_refine)
    cam = Camera(sdd=1020.0, height=80, width=80, delx=140.0 / 80)
    g = torch.Generator().manual_seed(0)
    raws = [torch.poisson(torch.full((80, 80), 400.0, dtype=F64), generator=g) for _ in range(2)]
    form, fits = C.refine_sequence(scene["vol"], cam, raws, [scene["T"], scene["T"]], isocenter=scene["iso"],
                                   max_side=40)
    assert seen == [((40, 40), 40, pytest.approx(3.5), (40, 40), 2)] * 2 and form.supersample == 2  # bin 2: 2
    assert all(torch.equal(f.pose, scene["T"]) for f in fits)
    seen.clear()
    C.refine_sequence(scene["vol"], cam, raws, [scene["T"], None], isocenter=scene["iso"], bin=1)
    assert seen == [((80, 80), 80, pytest.approx(1.75), (80, 80), 2)]
    binned = ((20, 20), 20, pytest.approx(7.0), (20, 20))
    for nll, kept in ((-5.0, 2), (-50.0, 4)):  # 4×4 binned: 4 rays tried on frame 0, kept where the NLL drops > 10
        seen.clear()
        gain["nll"] = nll
        form, fits = C.refine_sequence(scene["vol"], cam, raws, [scene["T"], scene["T"]], isocenter=scene["iso"],
                                       max_side=20)
        assert seen == [(*binned, 2), (*binned, 4), (*binned, kept)] and form.supersample == kept
        assert fits[0].nll == (nll if kept == 4 else 0.0)  # frame 0's fit: the one kept
    seen.clear()
    form, _ = C.refine_sequence(scene["vol"], cam, raws, [scene["T"], scene["T"]], isocenter=scene["iso"],
                                max_side=20, supersample=3)
    assert seen == [(*binned, 3)] * 2 and form.supersample == 3  # given: used for every frame, nothing tried
    assert [C.counts_supersample_for(b) for b in (1, 2, 3, 4, 8)] == [2, 2, 3, 4, 8]


@pytest.mark.parametrize("air_hu", [-1000.0, -800.0])
def test_the_air_knot_is_the_one_the_frame_was_formed_with(scene, air_hu):
    """Counts formed with attenuation starting at ``air_hu`` (another renderer's air: DiffDRR's is −800 HU):
    the likelihood picks that knot out of the grid, and the frame's fit stays at the truth."""
    from xraypose.register.counts import estimate_counts_formation

    basis = counts_basis(scene["vol"], air_hu=air_hu)
    model = CountsModel(basis, scene["vol"].affine, scene["cam"], scene["keep"], scene["iso"], 0.5, 1)
    y = _counts(scene, model, 5e4)
    form, fit, tried = estimate_counts_formation(scene["vol"], scene["cam"], y, scene["T"], isocenter=scene["iso"],
                                                 keep=scene["keep"], renderer="siddon", blur_px=0.5, supersample=1,
                                                 scatter_px=0.0, air_grid=(-1000.0, -900.0, -800.0))
    assert form.air_hu == air_hu and form.renderer == "siddon" and form.blur_px == 0.5 and form.supersample == 1
    # the grid walked from −1000 HU while the NLL falls: −800 reached when formed there, not tried otherwise
    assert sorted({t["air_hu"] for t in tried}) == ([-1000.0, -900.0, -800.0] if air_hu == -800.0 else [-1000.0, -900.0])
    assert fit.nll <= min(t["nll"] for t in tried)  # the chosen candidate, refined further
    assert float(pose_errors(fit.pose, scene["T"], scene["fid"], scene["cam"])["mtre"]) < 0.05


@pytest.mark.parametrize("renderer", ["siddon", "trilinear"])
def test_the_renderer_is_the_one_the_frame_was_formed_with(scene, renderer):
    """Counts formed by Siddon (the CT as boxes) or trilinear interpolation (a voxel's blur of the line
    integrals): the likelihood tells them apart."""
    from xraypose.register.counts import estimate_counts_formation

    model = CountsModel(scene["basis"], scene["vol"].affine, scene["cam"], scene["keep"], scene["iso"], 0.0, 1,
                        renderer)
    y = _counts(scene, model, 5e4)
    form, _, tried = estimate_counts_formation(scene["vol"], scene["cam"], y, scene["T"], isocenter=scene["iso"],
                                               keep=scene["keep"], air_hu=-1000.0, blur_grid=(0.0, 0.5),
                                               scatter_px=0.0, supersample=1)
    assert form.renderer == renderer and form.blur_px == 0.0
    assert {t["renderer"] for t in tried} == {"siddon", "trilinear"}


def test_siddon_values_with_trilinear_derivatives(scene):
    """``jacobian="trilinear"`` with Siddon: the values are Siddon's own (bit for bit), the channels' derivatives
    trilinear's analytic ones (one Siddon and one trilinear render instead of seven Siddon ones); Siddon's
    forward differences follow each voxel box's kinks, these the interpolated CT (per axis only 0.3–0.8 alike in
    direction here), and a fit stepping with them on Siddon's noiseless counts still returns to the pose — its
    steps accepted only where Siddon's likelihood rises."""
    args = (scene["basis"], scene["vol"].affine, scene["cam"], scene["keep"], scene["iso"], 0.7, 1)
    sid, tri = CountsModel(*args, "siddon"), CountsModel(*args, "trilinear")
    hyb = CountsModel(*args, "siddon", jacobian="trilinear")
    T, a = scene["T"], scene["a"]
    assert torch.equal(hyb(T, a)[0], sid(T, a)[0])
    assert torch.equal(hyb.channels(T, True)[1], tri.channels(T, True)[1])
    assert torch.equal(hyb.channels(T, True)[0], sid.channels(T, False)[0])
    y = _counts(scene, sid)
    start = perturb_pose(scene["T"], scene["iso"].to(F64), 1.0, 3.0, torch.Generator().manual_seed(5))[0]
    fit = refine_on_counts(scene["basis"], scene["vol"].affine, scene["cam"], y, start, isocenter=scene["iso"],
                           keep=scene["keep"], blur_px=0.7, supersample=1, renderer="siddon", max_iterations=40,
                           jacobian="trilinear")
    assert float(pose_errors(fit.pose, scene["T"], scene["fid"], scene["cam"])["mtre"]) < 0.05
    assert CountsModel(*args, "trilinear", jacobian="trilinear").jacobian == "exact"  # trilinear's own already
    with pytest.raises(InputError, match="jacobian"):
        CountsModel(*args, "siddon", jacobian="exact-ish")


def test_the_search_with_trilinear_steps_chooses_alike_and_ends_as_likely(scene, monkeypatch):
    """The formation search's Siddon candidates step with trilinear's Jacobian (COUNTS_SEARCH_JACOBIAN); the chosen
    one is refined with Siddon's own: the same formation chosen, the fit ending at least as likely as the exact
    search's, with fewer Siddon renders."""
    import xraypose.register.counts as C
    from xraypose.register.counts import estimate_counts_formation

    model = CountsModel(scene["basis"], scene["vol"].affine, scene["cam"], scene["keep"], scene["iso"], 0.5, 1)
    y = torch.poisson(_counts(scene, model, 5e3), generator=torch.Generator().manual_seed(2))
    start = perturb_pose(scene["T"], scene["iso"].to(F64), 1.0, 3.0, torch.Generator().manual_seed(4))[0]
    poses = []
    real_render = C.render

    def counting(density, affine, camera, T, **kw):
        poses.append(T.shape[0])
        return real_render(density, affine, camera, T, **kw)

    monkeypatch.setattr(C, "render", counting)
    out = {}
    for jac in ("exact", "trilinear"):
        poses.clear()
        out[jac] = estimate_counts_formation(scene["vol"], scene["cam"], y, start, isocenter=scene["iso"],
                                             keep=scene["keep"], renderer="siddon", air_hu=-1000.0,
                                             blur_grid=(0.3, 0.5, 0.7), scatter_px=0.0, supersample=1,
                                             search_jacobian=jac) + (sum(poses),)
    (fe, ex, _, ne), (ft, tr, _, nt) = out["exact"], out["trilinear"]
    assert fe == ft and fe.blur_px == 0.5
    # at least as likely as the exact search's end (here 23 nats more: Siddon's differences stopped at a kink's
    # local minimum 1.1 mm away; both 0.8–0.9 mm from the truth, the depth of 40² counts)
    assert tr.nll <= ex.nll + 1.0 and tr.converged
    assert nt < 0.7 * ne, (nt, ne)  # Siddon poses rendered
    with pytest.raises(InputError, match="search_jacobian must be one of exact, trilinear"):
        estimate_counts_formation(scene["vol"], scene["cam"], y, start, isocenter=scene["iso"], keep=scene["keep"],
                                  search_jacobian="numerical")


def test_the_formations_bad_input(scene):
    from xraypose.register.counts import estimate_counts_formation

    with pytest.raises(InputError, match="air knot"):
        counts_basis(scene["vol"], air_hu=0.0)
    with pytest.raises(InputError, match="air knot"):
        counts_basis(scene["vol"], air_hu=float("nan"))
    with pytest.raises(InputError, match="renderer"):
        estimate_counts_formation(scene["vol"], scene["cam"], torch.ones(PX, PX), scene["T"], isocenter=scene["iso"],
                                  renderer="raycast")
    with pytest.raises(InputError, match="grid is empty"):
        estimate_counts_formation(scene["vol"], scene["cam"], torch.ones(PX, PX), scene["T"], isocenter=scene["iso"],
                                  air_grid=())


def test_pool_fits_pools_the_frames_by_their_covariances():
    """Frames moving 1 mm a frame, each fit's depth (world z here) off by noise of the size its covariance
    says: the smoother's poses are nearer the truth than the fits; a frame without a fit is coasted over
    and gets the smoother's pose between fitted frames, None after the last one or with the causal filter;
    "none" gives the fits back."""
    from xraypose.geometry import make_transform
    from xraypose.register.counts import CountsFit, pool_fits

    g = torch.Generator().manual_seed(0)
    iso = torch.zeros(3, dtype=F64)
    cov = torch.diag(torch.tensor([1e-6, 1e-6, 1e-6, 0.05 ** 2, 0.05 ** 2, 1.0], dtype=F64))
    truth, fits = [], []
    for f in range(40):
        T = make_transform(torch.eye(3, dtype=F64), torch.tensor([1.0 * f, 0.0, 500.0], dtype=F64))
        noise = torch.randn(3, generator=g, dtype=F64) * torch.tensor([0.05, 0.05, 1.0], dtype=F64)
        P = T.clone()
        P[:3, 3] += noise
        truth.append(T)
        fits.append(CountsFit(P, torch.ones(1), 1.0, 0.0, 0.0, 1, True, 0.0, cov))
    fits[20] = fits[39] = None
    pooled = pool_fits(fits, iso, "smooth")
    assert pooled[39] is None  # after the last fit: an extrapolation, not given
    assert pool_fits(fits, iso, "filter")[20] is None and pool_fits(fits, iso, "filter")[19] is not None
    err = lambda poses: torch.stack([(P[:3, 3] - T[:3, 3]).norm() for P, T, f in zip(poses, truth, fits)  # noqa: E731
                                     if f is not None]).pow(2).mean().sqrt()
    alone = err([f.pose if f is not None else None for f in fits])
    assert float(err(pooled)) < 0.5 * float(alone)
    assert pooled[20] is not None and float((pooled[20][:3, 3] - truth[20][:3, 3]).norm()) < 1.0
    assert all(torch.equal(a, f.pose) for a, f in zip(pool_fits(fits, iso, "none"), fits) if f is not None)
    with pytest.raises(InputError, match="motion"):
        pool_fits(fits, iso, "kalman")


def test_a_doubtful_fit_counts_only_where_the_motion_model_expects_it():
    """``admit_doubtful`` (a ``failed`` frame's counts fit, ``track --counts``): frames moving 1 mm a frame; a
    doubtful fit 0.2 mm off is kept, one 30 mm off is dropped (None) and does not restart the model — the pooled
    frames after it are as if it had no fit; one whose covariance pins nothing (a frame without anatomy passes
    any gate) or that did not converge is dropped; the others are untouched; "none" keeps no doubtful fit."""
    from xraypose.geometry import make_transform
    from xraypose.register.counts import CountsFit, admit_doubtful, pool_fits

    iso = torch.zeros(3, dtype=F64)
    cov = torch.diag(torch.tensor([1e-6, 1e-6, 1e-6, 0.05 ** 2, 0.05 ** 2, 0.3 ** 2], dtype=F64))
    truth = [make_transform(torch.eye(3, dtype=F64), torch.tensor([1.0 * f, 0.0, 500.0], dtype=F64)) for f in range(20)]

    def fit(T, dz=0.0, C=cov, converged=True):
        P = T.clone()
        P[2, 3] += dz
        return CountsFit(P, torch.ones(1), 1.0, 0.0, 0.0, 1, converged, 0.0, C)

    fits = [fit(T) for T in truth]
    doubtful = [f in (5, 8, 11, 14) for f in range(20)]
    fits[8], fits[14] = fit(truth[8], 0.2), fit(truth[14], 30.0)
    fits[5] = fit(truth[5], 3.0, cov * 1e4)  # no anatomy: it pins nothing (sd 30 mm), though inside any gate
    fits[11] = fit(truth[11], 0.1, converged=False)
    kept = admit_doubtful(fits, doubtful, iso)
    assert kept[8] is fits[8] and kept[14] is None and kept[5] is None and kept[11] is None
    assert all(k is f for i, (k, f) in enumerate(zip(kept, fits)) if i not in (5, 8, 11, 14))
    fits[5], fits[11] = fit(truth[5]), fit(truth[11])  # (as good frames, for what follows)
    lost = pool_fits(fits, iso, "smooth")  # pooled as any frame, the lost fit restarts the model there
    assert float((lost[14][:3, 3] - truth[14][:3, 3]).norm()) > 20.0
    pooled = pool_fits(kept, iso, "smooth")
    assert all(float((P[:3, 3] - T[:3, 3]).norm()) < 0.3 for P, T in zip(pooled, truth))
    assert all(k is None for k, d in zip(admit_doubtful(fits, doubtful, iso, "none"), doubtful) if d)
    with pytest.raises(InputError, match="20 fits but 3 doubtful"):
        admit_doubtful(fits, [True] * 3, iso)
    with pytest.raises(InputError, match="motion"):
        admit_doubtful(fits, doubtful, iso, "kalman")


def test_refine_sequence_chooses_the_formation_on_a_frame_that_is_not_doubtful(scene, monkeypatch):
    """A doubtful frame (a ``failed`` one) is refined with the formation chosen on the first frame that is not
    doubtful, which goes first; a doubtful frame's coefficients start no other frame; with every frame doubtful
    none is refined; a doubtful frame whose counts cannot be read is left (None) where another frame's error stops
    the sequence."""
    from xraypose.register import counts as C

    order = []

    def spy_estimate(volume, camera, y, pose, **kw):
        order.append(("search", int(pose[0, 3])))
        form = C.CountsFormation("siddon", -1000.0, 0.5, 0.0, kw["supersample"])
        return form, C.CountsFit(pose, torch.zeros(3, dtype=F64), 1.0, 0.0, 0.0, 0, True, 0.0), []

    def spy_refine(basis, affine, camera, y, pose, **kw):
        order.append(("refine", int(pose[0, 3])))
        starts.append(float(kw["coefficients"][0]))  # the coefficients it starts from: a frame's number
        return C.CountsFit(pose, torch.full((3,), float(pose[0, 3]), dtype=F64), 1.0, 0.0, 0.0, 0, True, 0.0)

    starts = []
    monkeypatch.setattr(C, "estimate_counts_formation", spy_estimate)
    monkeypatch.setattr(C, "refine_on_counts", spy_refine)
    poses = []
    for f in range(4):
        T = scene["T"].clone()
        T[0, 3] = f  # the frame's number, to see the order
        poses.append(T)
    g = torch.Generator().manual_seed(0)
    raws = [torch.poisson(torch.full((40, 40), 400.0, dtype=F64), generator=g) for _ in range(4)]
    calls = []
    form, fits = C.refine_sequence(scene["vol"], scene["cam"], raws, poses, isocenter=scene["iso"], supersample=2,
                                   doubtful=[True, False, True, False], progress=lambda i, f: calls.append(i))
    assert order == [("search", 1), ("refine", 0), ("refine", 2), ("refine", 3)] and calls == [1, 0, 2, 3]
    # frame 1's search fit has coefficients 0; no doubtful frame's (0, 2) start another: frame 3 starts from 1's
    assert starts == [0.0, 0.0, 0.0]
    assert all(f is not None for f in fits) and form.renderer == "siddon"
    order.clear()
    _, fits = C.refine_sequence(scene["vol"], scene["cam"], raws, poses, isocenter=scene["iso"], supersample=2,
                                doubtful=[True] * 4)
    assert order == [] and fits == [None] * 4
    with pytest.raises(InputError, match="4 frames but 2 doubtful"):
        C.refine_sequence(scene["vol"], scene["cam"], raws, poses, isocenter=scene["iso"], doubtful=[True, False])
    flat = [raws[0], torch.full((40, 40), 400.0, dtype=F64), raws[2], raws[3]]  # no photon noise to read
    order.clear()
    _, fits = C.refine_sequence(scene["vol"], scene["cam"], flat, poses, isocenter=scene["iso"], supersample=2,
                                doubtful=[False, True, False, False])
    assert fits[1] is None and order == [("search", 0), ("refine", 2), ("refine", 3)]  # a doubtful one: left
    with pytest.raises(InputError, match="photon counts"):  # any other frame's: the error
        C.refine_sequence(scene["vol"], scene["cam"], flat, poses, isocenter=scene["iso"], supersample=2)


def test_scatter_derivatives_match_differences(scene):
    """With scatter modelled (m + c·G_w∗m), ∂m/∂ξ and ∂m/∂c against central differences."""
    model = CountsModel(scene["basis"], scene["vol"].affine, scene["cam"], scene["keep"], scene["iso"], 0.7, 1,
                        "trilinear", scatter_px=5.0)
    T, a = scene["T"], torch.cat([scene["a"], torch.tensor([0.3], dtype=F64)])
    assert model.n_coefficients == 4
    m, dm = model(T, a, derivatives=True)
    assert dm.shape == (6 + 4, int(scene["keep"].sum()))
    for k in (2, 3, 5):
        h = 2e-3 if k < 3 else 0.1
        e = torch.zeros(6, dtype=F64)
        e[k] = h
        fd = (model(model.moved(T, e), a)[0] - model(model.moved(T, -e), a)[0]) / (2 * h)
        assert float((dm[k] - fd).abs().max()) < 0.05 * float(fd.abs().max()), k
    for k in (6, 9):  # a channel's coefficient, the scatter's
        da = torch.zeros(4, dtype=F64)
        da[k - 6] = 1e-3
        fd = (model(T, a + da)[0] - model(T, a - da)[0]) / 2e-3
        assert torch.allclose(dm[k], fd, rtol=1e-3, atol=1e-6 * float(fd.abs().max())), k


@pytest.mark.parametrize("spr", [0.0, 0.4])
def test_scatter_is_modelled_when_the_frame_has_it(scene, spr):
    """A frame with scatter (the primary blurred by a wide Gaussian, 40 % of it) gets the scatter term and its
    fit stays at the truth; one without does not get it (a parameter it does not need)."""
    from xraypose.register.counts import estimate_counts_formation

    w = 40.0 / float(scene["cam"].delx)
    model = CountsModel(scene["basis"], scene["vol"].affine, scene["cam"], scene["keep"], scene["iso"], 0.5, 1,
                        "siddon", scatter_px=w)
    y = _counts(scene, model, 5e4, torch.cat([scene["a"], torch.tensor([spr], dtype=F64)]))
    form, fit, tried = estimate_counts_formation(scene["vol"], scene["cam"], y, scene["T"], isocenter=scene["iso"],
                                                 keep=scene["keep"], renderer="siddon", air_hu=-1000.0, blur_px=0.5,
                                                 supersample=1, scatter_grid_mm=(20.0, 40.0))
    assert len(tried) == 3
    if spr > 0:
        assert form.scatter_px == pytest.approx(w) and fit.coefficients[-1] == pytest.approx(spr, rel=0.05)
        assert float(pose_errors(fit.pose, scene["T"], scene["fid"], scene["cam"])["mtre"]) < 0.05
    else:
        assert form.scatter_px == 0.0 and len(fit.coefficients) == 3


def test_scatter_is_decided_before_the_blur(scene):
    """A frame with 40 % scatter and a 0.5 px blur: the blur is chosen with the scatter modelled (scatter
    left out passes for blur), and both come out right."""
    from xraypose.register.counts import estimate_counts_formation

    w = 40.0 / float(scene["cam"].delx)
    model = CountsModel(scene["basis"], scene["vol"].affine, scene["cam"], scene["keep"], scene["iso"], 0.5, 1,
                        "siddon", scatter_px=w)
    y = _counts(scene, model, 5e4, torch.cat([scene["a"], torch.tensor([0.4], dtype=F64)]))
    form, fit, tried = estimate_counts_formation(scene["vol"], scene["cam"], y, scene["T"], isocenter=scene["iso"],
                                                 keep=scene["keep"], renderer="siddon", air_hu=-1000.0,
                                                 blur_grid=(0.0, 0.5, 1.2), supersample=1,
                                                 scatter_grid_mm=(20.0, 40.0))
    assert form.blur_px == 0.5 and form.scatter_px == pytest.approx(w)
    assert float(pose_errors(fit.pose, scene["T"], scene["fid"], scene["cam"])["mtre"]) < 0.05
    held = estimate_counts_formation(scene["vol"], scene["cam"], y, scene["T"], isocenter=scene["iso"],
                                     keep=scene["keep"], renderer="siddon", air_hu=-1000.0, blur_px=0.5,
                                     scatter_px=w, supersample=1)[0]
    assert held.scatter_px == pytest.approx(w)  # a scatter given is held


def test_a_scatter_width_between_the_grids_is_found(scene):
    """A frame whose scatter is 55 mm wide, searched on a grid of 25, 40 and 80 mm: the grid's best (40 mm)
    lies between two others, so the width is refined between them (a parabola of the NLL in the width's log)
    to within 10 % of 55 mm; at the grid's end (grid 25, 40) it is not."""
    from xraypose.register.counts import COUNTS_SCATTER_REFINE_STEPS, estimate_counts_formation

    mm = float(scene["cam"].delx)
    model = CountsModel(scene["basis"], scene["vol"].affine, scene["cam"], scene["keep"], scene["iso"], 0.5, 1,
                        "siddon", scatter_px=55.0 / mm)
    y = _counts(scene, model, 5e4, torch.cat([scene["a"], torch.tensor([0.4], dtype=F64)]))
    kw = dict(isocenter=scene["iso"], keep=scene["keep"], renderer="siddon", air_hu=-1000.0, blur_px=0.5,
              supersample=1)
    form, fit, tried = estimate_counts_formation(scene["vol"], scene["cam"], y, scene["T"],
                                                 scatter_grid_mm=(25.0, 40.0, 80.0), **kw)
    grid = {25.0 / mm, 40.0 / mm, 80.0 / mm}
    extra = [t for t in tried if t["scatter_px"] > 0 and not any(abs(t["scatter_px"] - g) < 1e-9 for g in grid)]
    assert 1 <= len(extra) <= COUNTS_SCATTER_REFINE_STEPS
    assert form.scatter_px * mm == pytest.approx(55.0, rel=0.1)
    assert float(pose_errors(fit.pose, scene["T"], scene["fid"], scene["cam"])["mtre"]) < 0.05
    assert "scatter σ 5" in form.describe(mm)  # about 55 mm, three digits at most
    end = estimate_counts_formation(scene["vol"], scene["cam"], y, scene["T"], scatter_grid_mm=(25.0, 40.0), **kw)
    assert end[0].scatter_px * mm == pytest.approx(40.0) and len(end[2]) == 3  # the grid's end: not refined


def test_a_fit_whose_pose_is_right_goes_on_while_its_coefficients_are_not(scene):
    """A fit started at a pose already near its optimum but with the scatter's coefficient at 0 (truth 0.4): its
    first steps barely move the pose, yet it must not stop there (the NLL still falls by thousands) — it ends
    at the coefficient and the NLL of a fit started at the truth."""
    mm = float(scene["cam"].delx)
    w = 55.0 / mm
    model = CountsModel(scene["basis"], scene["vol"].affine, scene["cam"], scene["keep"], scene["iso"], 0.5, 1,
                        "siddon", scatter_px=w)
    a = torch.cat([scene["a"], torch.tensor([0.4], dtype=F64)])
    y = _counts(scene, model, 5e4, a)
    kw = dict(isocenter=scene["iso"], keep=scene["keep"], blur_px=0.5, renderer="siddon", supersample=1, tol_mm=0.05)
    near = refine_on_counts(scene["basis"], scene["vol"].affine, scene["cam"], y, scene["T"], scatter_px=40.0 / mm,
                            **kw)  # another width's optimum: the pose ~right, its scatter coefficient another
    best = refine_on_counts(scene["basis"], scene["vol"].affine, scene["cam"], y, scene["T"], scatter_px=w,
                            coefficients=a, **kw)
    f = refine_on_counts(scene["basis"], scene["vol"].affine, scene["cam"], y, near.pose, scatter_px=w,
                         coefficients=torch.cat([near.coefficients[:3], torch.zeros(1, dtype=F64)]), **kw)
    assert float(f.coefficients[-1]) == pytest.approx(0.4, abs=0.01)
    assert f.nll - best.nll < 1.0 and f.iterations >= 2


def test_binned_counts_keep_their_sum_and_their_geometry():
    """bin_counts: a bin's counts are its pixels' sum (a sum of Poisson counts is Poisson), a bin is kept only
    when all its pixels are, the rows past the last whole bin dropped with the camera cropped to match: a
    world point projects to the binned pixel (u + 0.5)/f − 0.5 of its full-resolution pixel."""
    from xraypose.camera import carm_pose
    from xraypose.register.counts import bin_counts, counts_bin_for

    cam = Camera(sdd=1000.0, height=41, width=38, delx=0.5, x0=1.2, y0=-0.7)
    y = torch.rand(41, 38, dtype=F64, generator=torch.Generator().manual_seed(3)) * 100
    keep = torch.ones(41, 38, dtype=torch.bool)
    keep[5, 7] = False
    yb, cb, kb = bin_counts(y, cam, keep, 2)
    assert yb.shape == (20, 19) and (cb.height, cb.width) == (20, 19) and cb.delx == pytest.approx(1.0)
    assert float(yb[0, 0]) == pytest.approx(float(y[:2, :2].sum()))
    assert not bool(kb[2, 3]) and int((~kb).sum()) == 1
    T = carm_pose(20.0, -10.0, sod=600.0, isocenter=torch.zeros(3, dtype=F64))
    X = torch.tensor([[10.0, -5.0, 3.0]], dtype=F64)
    uv, uvb = cam.project(X, T)[0], cb.project(X, T)[0]
    assert torch.allclose(uvb, (uv + 0.5) / 2 - 0.5, atol=1e-9)
    assert bin_counts(y, cam, keep, 1)[1] is cam
    assert counts_bin_for((256, 256)) == 2 and counts_bin_for((128, 100)) == 1 and counts_bin_for((300, 90)) == 3
    assert counts_bin_for((512, 512), None) == 4 and counts_bin_for((512, 512), 64) == 8  # None: the default 128
    with pytest.raises(InputError, match="whole number"):
        bin_counts(y, cam, keep, 0)
    with pytest.raises(InputError, match="at least 8×8"):
        bin_counts(y, cam, keep, 6)


def test_moved_near_isocenter_is_an_mtre_between_poses():
    """The mean displacement of six points 50 mm from the isocenter: a shift's length; a turn θ about an axis
    through the isocenter moves four of them by 100·sin(θ/2)."""
    import math

    from xraypose.geometry import make_transform, so3_exp
    from xraypose.register.counts import moved_near_isocenter

    iso = torch.tensor([5.0, -3.0, 40.0], dtype=F64)
    A = make_transform(so3_exp(torch.tensor([0.2, -0.1, 0.3], dtype=F64)), torch.tensor([1.0, 2.0, -700.0], dtype=F64))
    B = A.clone()
    B[:3, 3] += torch.tensor([0.3, 0.0, 0.4], dtype=F64)
    assert moved_near_isocenter(A, A, iso) == pytest.approx(0.0, abs=1e-9)
    assert moved_near_isocenter(A, B, iso) == pytest.approx(0.5, abs=1e-9)
    th = 0.02
    turn = make_transform(so3_exp(torch.tensor([0.0, 0.0, th], dtype=F64)), torch.zeros(3, dtype=F64))
    about = torch.eye(4, dtype=F64)
    about[:3, 3] = iso
    D = about @ turn @ torch.linalg.inv(about)  # a turn about z through the isocenter, in the world
    assert moved_near_isocenter(A, D @ A, iso) == pytest.approx(4 / 6 * 100 * math.sin(th / 2), rel=1e-9)


def test_pool_fits_with_the_tracked_registrations_carries_the_fits_depth_between_them():
    """``track --counts-every``: frames moving 1 mm a frame; every frame's tracked registration is biased 1.2 mm in
    depth (world z here) with a covariance that says 0.5 mm, a fit every fourth frame and on the last is unbiased
    and holds depth to 0.1 mm: pooled with both, every frame's depth error falls below half the registrations'
    bias (the registrations alone keep it); a frame with neither (a failed one) between measured frames gets the
    smoother's pose; a list of another length or shape is refused."""
    from xraypose.geometry import make_transform
    from xraypose.register.counts import CountsFit, admit_doubtful, pool_fits

    iso = torch.zeros(3, dtype=F64)
    R_t = torch.diag(torch.tensor([1e-6, 1e-6, 1e-6, 0.05 ** 2, 0.05 ** 2, 0.5 ** 2], dtype=F64))
    R_c = torch.diag(torch.tensor([1e-6, 1e-6, 1e-6, 0.05 ** 2, 0.05 ** 2, 0.1 ** 2], dtype=F64))
    truth = [make_transform(torch.eye(3, dtype=F64), torch.tensor([1.0 * f, 0.0, 500.0], dtype=F64))
             for f in range(24)]
    tracked, fits = [], []
    for f, T in enumerate(truth):
        P = T.clone()
        P[2, 3] += 1.2
        tracked.append((P, R_t))
        fits.append(CountsFit(T.clone(), torch.ones(1), 1.0, 0.0, 0.0, 1, True, 0.0, R_c)
                    if f % 4 == 0 or f == 23 else None)
    tracked[10] = None  # a failed frame: no registration, no fit
    depth = lambda poses: [round(abs(float(P[2, 3] - T[2, 3])), 2) for P, T in zip(poses, truth)]  # noqa: E731
    pooled = pool_fits(fits, iso, "smooth", tracked=tracked)
    assert all(P is not None for P in pooled) and max(depth(pooled)) < 0.6, depth(pooled)
    tracked_only = pool_fits([None] * 24, iso, "smooth", tracked=tracked)
    assert min(depth(tracked_only)) > 1.0  # the registrations alone keep their bias
    assert admit_doubtful(fits, [False] * 24, iso, tracked=tracked) == fits
    with pytest.raises(InputError, match="24 fits but 3 tracked"):
        pool_fits(fits, iso, "smooth", tracked=tracked[:3])
    with pytest.raises(InputError, match="a tracked measurement must be"):
        pool_fits(fits, iso, "smooth", tracked=[(torch.eye(3), R_t)] * 24)


def test_frames_to_refine_picks_every_kth_the_last_and_the_doubted():
    """``track --counts-every``'s rule, one place for the command and the benchmark: frames 0, K, 2K, …, the last
    and every frame the check called uncertain or failed; K = 1 every frame."""
    from xraypose.register.counts import frames_to_refine, registrations_to_pool

    verdicts = ["ok", "uncertain", "ok", "ok", "failed", "ok", "ok"]
    picked, doubted = frames_to_refine(verdicts, 3)
    assert picked == [True, True, False, True, True, False, True]
    assert doubted == [False, True, False, False, True, False, False]
    assert all(frames_to_refine(verdicts, 1)[0])
    I, C = torch.eye(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64)
    C[0, 3] = 2.0
    meas = [(I, torch.eye(6)), (I, torch.eye(6)), None, (I, torch.eye(6)), (I, torch.eye(6)), None, (I, torch.eye(6))]
    out = registrations_to_pool(meas, doubted, C)
    assert [m is None for m in out] == [False, True, True, False, True, True, False]
    assert torch.equal(out[0][0], C)
    per_frame = registrations_to_pool(meas, doubted, [C * 0 + torch.eye(4, dtype=torch.float64)] * 7)
    assert torch.equal(per_frame[3][0], I)


def test_one_xray_searched_on_coarser_counts_is_fitted_on_its_finer_ones(scene, monkeypatch):
    """refine_xray_on_counts with ``max_side`` finer than ``search_max_side``: the formation chosen on the counts
    summed to the search's side (40² of 80²), then one fit on the finer counts (80², bin 1) from the search's pose
    and coefficients, σ and the scatter's width rescaled to the finer pixels, 2 rays a side; the result in the
    finer pixels (its ``moved_mm`` from the refinement's start).  The same sides: one stage, as before."""
    from xraypose.register import counts as C

    seen = []
    searched = scene["T"].clone()
    searched[:3, 3] += torch.tensor([0.0, 0.0, 0.3], dtype=F64)
    coef = torch.tensor([0.05, -0.01, 0.0, 0.2], dtype=F64)

    def spy_estimate(volume, camera, y, pose, **kw):
        seen.append(("search", tuple(y.shape), camera.height, kw["blur_px"], kw["supersample"]))
        form = C.CountsFormation("siddon", -900.0, 0.4, 3.0, kw["supersample"])
        return form, C.CountsFit(searched, coef, 1.0, -5.0, 0.0, 4, True, 0.3), [{"nll": -5.0}]

    def spy_refine(basis, affine, camera, y, pose, **kw):
        seen.append(("fit", tuple(y.shape), camera.height, kw["blur_px"], kw["supersample"], kw["scatter_px"],
                     kw["renderer"], torch.equal(pose, searched), torch.equal(kw["coefficients"], coef)))
        P = pose.clone()
        P[:3, 3] += torch.tensor([0.0, 0.0, 0.1], dtype=F64)
        return C.CountsFit(P, coef, 1.0, -7.0, -6.0, 2, True, 0.1)

    monkeypatch.setattr(C, "estimate_counts_formation", spy_estimate)
    monkeypatch.setattr(C, "refine_on_counts", spy_refine)
    cam = Camera(sdd=1020.0, height=80, width=80, delx=140.0 / 80)
    raw = 3.0 * torch.poisson(torch.full((80, 80), 400.0, dtype=F64), generator=torch.Generator().manual_seed(0))
    r = C.refine_xray_on_counts(scene["vol"], cam, raw, scene["T"], isocenter=scene["iso"], max_side=80,
                                search_max_side=40, supersample=None)
    assert seen == [("search", (40, 40), 40, None, 2), ("fit", (80, 80), 80, 0.8, 2, 6.0, "siddon", True, True)]
    assert (r.bin, r.search_bin, r.camera.height) == (1, 2, 80)
    assert (r.formation.blur_px, r.formation.scatter_px, r.formation.air_hu) == (0.8, 6.0, -900.0)
    assert r.fit.iterations == 6 and r.fit.nll == -7.0 and r.to_dict()["search_bin"] == 2
    assert r.fit.moved_mm == pytest.approx(0.4, abs=1e-6)  # 0.3 + 0.1 mm along z from the start
    seen.clear()
    r = C.refine_xray_on_counts(scene["vol"], cam, raw, scene["T"], isocenter=scene["iso"], max_side=80,
                                search_max_side=40, blur_px=0.6, supersample=3)
    assert seen == [("search", (40, 40), 40, 0.3, 3), ("fit", (80, 80), 80, 0.8, 3, 6.0, "siddon", True, True)]
    seen.clear()
    r = C.refine_xray_on_counts(scene["vol"], cam, raw, scene["T"], isocenter=scene["iso"], max_side=40,
                                search_max_side=40, supersample=2)
    assert seen == [("search", (40, 40), 40, None, 2)] and (r.bin, r.search_bin) == (2, 2)
    seen.clear()
    C.refine_xray_on_counts(scene["vol"], cam, raw, scene["T"], isocenter=scene["iso"], max_side=40,
                            search_max_side=80, supersample=2)  # a search finer than the fit: at the fit's bin
    assert seen == [("search", (40, 40), 40, None, 2)]


def test_the_finer_fit_returns_to_the_pose_that_formed_the_counts(scene):
    """End to end on Siddon-formed counts of 2 rays a side at 80² (σ 0.7 px): searched at 40² with
    the formation given, then fitted at 80² — the pose the counts were formed at, within 0.1 mm, from 1 mm off
    (2·10⁶ photons: the depth's sd ~0.02 mm; at 2·10⁴ it is 0.19 mm, and one draw ends 0.23 mm off)."""
    from xraypose.register.counts import refine_xray_on_counts

    cam = Camera(sdd=1020.0, height=80, width=80, delx=280.0 / 80)
    keep = torch.ones(80, 80, dtype=torch.bool)
    model = CountsModel(scene["basis"], scene["vol"].affine, cam, keep, scene["iso"], 0.7, 2, "siddon")
    m, _ = model(scene["T"], scene["a"])
    raw = 2.0 * torch.poisson(2e6 * m.reshape(80, 80), generator=torch.Generator().manual_seed(1))
    start = scene["T"].clone()
    start[:3, 3] += 1.0 * start[:3, 2]  # 1 mm along the beam
    r = refine_xray_on_counts(scene["vol"], cam, raw, start, isocenter=scene["iso"], max_side=80, search_max_side=40,
                              renderer="siddon", air_hu=-1000.0, blur_px=0.7, scatter_mm=0.0, supersample=2)
    assert (r.bin, r.search_bin, r.formation.blur_px) == (1, 2, pytest.approx(0.7))
    err0 = float(pose_errors(start, scene["T"], scene["fid"], cam)["mtre"])
    err = float(pose_errors(r.fit.pose, scene["T"], scene["fid"], cam)["mtre"])
    assert err0 > 0.9 and err < 0.1, (err0, err)
