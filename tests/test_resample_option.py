"""``--resample-domain`` of register and track: the order in which ``--size`` shrinks raw intensities reaches
preprocessing (recorded in pose.json's resize step), and an unknown order is one line naming the option."""

import json

import numpy as np
import pytest

from xraypose.cli import main


def _counts_xray(tmp_path):
    """A 64 × 64 raw-intensity X-ray of Poisson counts (≈ 20 photons per pixel) with its intrinsics in a sidecar."""
    rng = np.random.default_rng(0)
    v, u = np.mgrid[:64, :64]
    lam = 20.0 * np.exp(-1.5 * np.exp(-((u - 30) ** 2 + (v - 34) ** 2) / 300.0))
    np.save(tmp_path / "x.npy", rng.poisson(lam).astype(np.float32) * 50.0)
    (tmp_path / "x.json").write_text(json.dumps({"sdd_mm": 1020.0, "delx_mm": 4.0, "dely_mm": 4.0,
                                                 "kind": "intensity"}))
    return tmp_path / "x.npy"


@pytest.mark.parametrize("domain", ["intensity", "line-integral"])
def test_register_shrinks_in_the_order_asked(tmp_path, domain):
    x = _counts_xray(tmp_path)
    out = tmp_path / "out"
    code = main(["register", "sample", str(x), "-o", str(out), "--init", "ap", "--fast", "--no-hypotheses",
                 "--no-trajectory", "--size", "32", "--resample-domain", domain])
    assert code in (0, 3)
    steps = json.loads((out / "pose.json").read_text())["xray"]["steps"]
    resize = next(s for s in steps if s["step"] == "resize")
    assert resize["domain"] == domain and resize["to"][0] == 32


@pytest.mark.parametrize("command", ["register", "track"])
def test_an_unknown_order_is_named(tmp_path, capsys, command):
    x = _counts_xray(tmp_path)
    extra = ["--init", "ap"] if command == "register" else []
    assert main([command, "sample", str(x), "-o", str(tmp_path / "o"), *extra, "--resample-domain", "bins"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--resample-domain" in err and "'bins'" in err and "line-integral" in err and "\n" not in err


@pytest.fixture(scope="module")
def example_case(tmp_path_factory):
    from xraypose.datasets import make_example_case

    return make_example_case(tmp_path_factory.mktemp("cases") / "example")


def test_evaluate_shrinks_a_case_folders_raw_xrays_in_the_order_asked(example_case, tmp_path, capsys):
    import torch

    from xraypose.evaluate import load_eval_set

    sets = {d: load_eval_set(example_case, size=40, resample_domain=d) for d in ("intensity", "line-integral")}
    a, b = (s.cases[0] for s in sets.values())
    assert a.image.shape == b.image.shape and a.image.shape[0] == 40 and a.camera == b.camera
    assert not torch.allclose(a.image, b.image, atol=1e-4)  # binned before the log vs resampled after it
    assert main(["evaluate", str(example_case), "-o", str(tmp_path / "e"), "--resample-domain", "bins"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--resample-domain" in err and "'bins'" in err and "\n" not in err


@pytest.mark.parametrize("domain", ["intensity", "line-integral"])
def test_track_shrinks_the_frames_in_the_order_asked_and_records_it(tmp_path, domain):
    x = _counts_xray(tmp_path)
    frames = np.stack([np.load(x), np.load(x)[:, ::-1].copy()])  # two frames of counts
    np.save(tmp_path / "seq.npy", frames)
    (tmp_path / "seq.json").write_text((tmp_path / "x.json").read_text())
    out = tmp_path / "out"
    code = main(["track", "sample", str(tmp_path / "seq.npy"), "-o", str(out), "--init", "ap", "--fast",
                 "--size", "32", "--resample-domain", domain])
    assert code in (0, 3)
    doc = json.loads((out / "trajectory.json").read_text())
    (view,) = doc["preprocessing"]
    resize = next(s for s in view["first_frame_steps"] if s["step"] == "resize")
    assert resize["domain"] == domain and resize["to"][0] == 32
