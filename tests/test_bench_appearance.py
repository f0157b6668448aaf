"""benchmarks/appearance.py registers each case as ``xraypose register`` does: with the preprocessing's mask
(a saturated plateau, a collimator's shadow).  Until 2026-12-03 (stop 32) it dropped the mask; cases cached
before then are completed once by forming them again."""

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_appearance", ROOT / "benchmarks" / "appearance.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _masked_case(bench, volume, tmp_path):
    """The first display case of the sample CT at a 64-pixel detector whose preprocessing masks pixels."""
    maker = bench._case_maker(volume, 64, 0)
    for i in range(12):
        c = bench.make_case(volume, maker, "display", i, 0)
        if c["mask"] is not None:
            return maker, c
    pytest.skip("no display case with a mask among 12")  # pragma: no cover


def test_cases_keep_the_preprocessings_mask_and_old_caches_are_completed(bench, sample_ct, tmp_path):
    from xraypose.appearance import form_xray
    from xraypose.preprocess import preprocess

    maker, c = _masked_case(bench, sample_ct, tmp_path)
    i = c["index"]
    T, _ = maker.true_pose(i)
    g = torch.Generator().manual_seed(0 * 1_000_003 + i * 101 + sum(map(ord, "display")))
    fx = form_xray(sample_ct, maker.raw_camera, T, family="display", generator=g)
    pre = preprocess(fx.raw, fx.camera, **fx.preprocess, blur_domain="line-integral", photon_offset="auto")
    assert torch.equal(c["mask"], pre.mask.to(torch.float32)) and float((c["mask"] < 0.5).float().mean()) > 0

    # a case cached without its mask (before stop 32) is formed again for it, and the cache file rewritten
    folder = tmp_path / "cache" / bench.case_folder("sample", 64, 0) / "display"
    folder.mkdir(parents=True)
    for k in range(i + 1):
        old = {key: v for key, v in bench.make_case(sample_ct, maker, "display", k, 0).items() if key != "mask"}
        torch.save(old, folder / f"case{k:04d}.pt")
    logged = []
    cases = bench.cached_cases("sample", sample_ct, "display", i + 1, 64, 0, tmp_path / "cache", logged.append,
                               make=False)
    assert torch.equal(cases[i]["mask"], c["mask"]) and torch.equal(cases[i]["image"], c["image"])
    assert "mask" in torch.load(folder / f"case{i:04d}.pt", weights_only=False)
    assert any("mask added" in s for s in logged)

    # --counts: a case cached without its raw X-ray (before stop 44) is completed the same way
    lean = {key: v for key, v in c.items() if key not in ("raw", "raw_camera", "raw_kind", "raw_crop", "pose_transform")}
    torch.save(lean, folder / f"case{i:04d}.pt")
    cases = bench.cached_cases("sample", sample_ct, "display", i + 1, 64, 0, tmp_path / "cache", logged.append,
                               make=False, raw=True)
    assert torch.equal(cases[i]["raw"], fx.raw.to(torch.float32)) and cases[i]["raw_kind"] == "display"
    assert "raw" in torch.load(folder / f"case{i:04d}.pt", weights_only=False)

    # one whose image another xraypose formed is refused, not silently given another X-ray's mask
    other = {key: v for key, v in c.items() if key != "mask"}
    other["image"] = other["image"] + 0.01
    with pytest.raises(SystemExit, match="differs from its cached image"):
        bench.with_mask(other, lambda: bench.make_case(sample_ct, maker, "display", i, 0), tmp_path / "other.pt")


def test_the_benchmark_gives_registration_the_cases_mask(bench, sample_ct, tmp_path):
    _, c = _masked_case(bench, sample_ct, tmp_path)
    seen = []

    class Recorder:  # stands for a Registrar: records what it is given, then fails the case
        def register(self, images, camera, poses, masks=None):
            seen.append(masks)
            raise RuntimeError("recorded")

    for use in (True, False):
        rows = bench.run_group("sample", "display", "truth", [c], Recorder(), None, sample_ct, 0, lambda s: None,
                               use_masks=use)
        assert rows[0]["status"] == "error"
    assert seen[0].shape == (1, 1, *c["image"].shape) and torch.equal(seen[0][0, 0], c["mask"])
    assert seen[1] is None  # --ignore-masks: as the benchmark registered until stop 32
    assert bench.case_weights({"mask": None}) is None and bench.case_weights({}) is None


def test_the_confidence_benchmark_registers_and_checks_with_the_cases_mask(bench, sample_ct, tmp_path):
    """benchmarks/confidence.py registered and measured the check's signals without the preprocessing's mask
    (its cases come from this benchmark's cache or its own); cases cached without one are completed."""
    import sys

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("bench_confidence", ROOT / "benchmarks" / "confidence.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    maker, c = _masked_case(bench, sample_ct, tmp_path)
    make = lambda: bench.make_case(sample_ct, maker, "display", c["index"], 0)  # noqa: E731
    f = tmp_path / "case.pt"
    torch.save({k: v for k, v in c.items() if k != "mask"}, f)
    got = conf.cached_case((f,), make)
    assert torch.equal(got["mask"], c["mask"]) and "mask" in torch.load(f, weights_only=False)
    w = conf.case_weights(got, n=3)
    assert w.shape == (3, 1, *c["image"].shape) and torch.equal(w[2, 0], c["mask"])
    assert conf.case_weights({"mask": None}) is None
    torch.save({**{k: v for k, v in c.items() if k != "mask"}, "image": c["image"] + 0.01}, f)
    with pytest.raises(SystemExit, match="differs from its cached image"):
        conf.cached_case((f,), make)


def test_cases_formed_on_a_finer_detector_are_preprocessed_as_register_does(bench, sample_ct):
    """--form-detector: the X-ray formed on 4× the rows with ¹⁄₁₆ of the photons per pixel (the same dose per
    mm²), brought to the maker's rows by preprocess's resize in the order asked, the DRRs' blur scaled with it."""
    from xraypose.cli.steps import preprocess_settings

    maker = bench._case_maker(sample_ct, 32, 0)
    coarse = bench.make_case(sample_ct, maker, "lowdose", 0, 0)
    c = {d: bench.make_case(sample_ct, maker, "lowdose", 0, 0, form_detector=128, resample_domain=d)
         for d in ("intensity", "line-integral")}
    for d, case in c.items():
        assert case["resize"]["domain"] == d and case["info"]["dose_scale"] == 1 / 16
        assert case["info"]["photons"] == coarse["info"]["photons"]  # the same draw per coarse pixel
        crop = case["raw_crop"]
        assert case["raw"].shape == (128, 128) and crop > coarse["raw_crop"]
        assert tuple(case["image"].shape) == preprocess_settings((128, 128), crop, 1.0, 32, None)["size"]
        assert case["drr_blur"] == pytest.approx(case["image"].shape[0] / (128 - 2 * crop))
        folder = bench.case_folder("s", 32, 0, form_detector=128, resample_domain=d)
        assert Path(folder).name == f"s-d32-s0-blurlog-f128-rs{d}"
    assert not torch.equal(c["intensity"]["image"], c["line-integral"]["image"])
    with pytest.raises(SystemExit, match="multiple"):
        bench.make_case(sample_ct, maker, "lowdose", 0, 0, form_detector=100)


def test_the_benchmarks_counts_follow_register_counts_on_a_failed_verdict(bench, monkeypatch):
    """``--counts`` rows as ``xraypose register --counts`` gives them (stop 72): a failed verdict is refined; its
    refined pose is the row's result only where the fit converged and explains the counts (χ² ≤
    COUNTS_EXPLAINED_CHI2), else the registration's stands (``counts_fit_mtre`` kept beside it)."""
    from types import SimpleNamespace

    import xraypose.register.counts as counts_mod
    from xraypose.camera import Camera
    from xraypose.register.counts import COUNTS_EXPLAINED_CHI2, CountsFit, CountsFormation, CountsRefinement

    F64 = torch.float64
    cam = Camera(sdd=1000.0, height=8, width=8, delx=2.0)
    truth = torch.eye(4, dtype=F64)
    truth[2, 3] = -600.0
    registered = truth.clone()
    registered[0, 3] += 5.0  # 5 mm off; the fit comes back to the truth
    state = {}

    def fake(volume, camera, raw, pose, **kw):
        fit = CountsFit(pose=truth.clone(), coefficients=torch.zeros(3, dtype=F64), scale=1.0, nll=0.0, nll_start=1.0,
                        iterations=4, converged=True, moved_mm=5.0, chi2_per_pixel=state["chi2"])
        return CountsRefinement(fit=fit, formation=CountsFormation("siddon", -1000.0, 0.5), bin=1, camera=cam,
                                per_photon=1.0, tried=[], seconds=0.1)

    monkeypatch.setattr(counts_mod, "refine_xray_on_counts", fake)
    c = {"raw_kind": "intensity", "pose_transform": torch.eye(4), "raw_camera": cam.to_dict(), "raw": None,
         "raw_crop": 0, "true_pose": truth, "fiducials": torch.tensor([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]])}
    vol = SimpleNamespace(get_isocenter=lambda: torch.zeros(3))
    rows = []
    for verdict, chi2 in (("ok", 3.0), ("failed", 0.9), ("failed", COUNTS_EXPLAINED_CHI2 + 0.5)):
        state["chi2"] = chi2
        row = {"mtre": 5.0, "verdict": verdict, **bench.counts_entries(c, registered, vol, cam, verdict)}
        rows.append(row)
    ok, admitted, left = rows
    assert ok["counts"] == "refined" and ok["counts_mtre"] < 1e-6 and "counts_admitted" not in ok
    assert admitted["counts"] == "refined" and admitted["counts_admitted"] and admitted["counts_mtre"] < 1e-6
    assert left["counts"] == "refined, failed: not admitted" and not left["counts_admitted"]
    assert "counts_mtre" not in left and left["counts_fit_mtre"] < 1e-6 and left["counts_chi2"] == chi2
    s = bench.counts_summary(rows)
    assert s["counts_refined"] == 3 and s["counts_sr_1mm"] == pytest.approx(2 / 3)
