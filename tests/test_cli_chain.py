"""The CLI end to end at small sizes: render → train → register → evaluate → report; config files; errors."""

import csv
import json

import numpy as np
import pytest
import torch

from xraypose.cli import main
from xraypose.datasets import make_example_case, write_deepfluoro_fixture

TRAIN_TOML = """
[model]
backbone = "test_resnet"
[camera]
height = 32
[render]
n_samples = 16
[optim]
batch_size = 4
[data]
reuse = 2
buffer_size = 8
[run]
max_steps = 2
val_size = 4
val_every_steps = 2
threads = 1
progress = false
"""


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return make_example_case(tmp_path_factory.mktemp("case") / "mycase", size=64)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    (d / "train.toml").write_text(TRAIN_TOML)
    out = d / "model.pt"
    assert main(["train", "sample", "-o", str(out), "--config", str(d / "train.toml"), "--quiet"]) == 0
    return out


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_render_train_register_evaluate_chain(tmp_path, case, model, capsys):
    # render
    assert main(["render", "sample", "-o", str(tmp_path / "drr.npy"), "--pose", "10,0", "--height", "24",
                 "--delx", "12"]) == 0
    assert np.isfinite(np.load(tmp_path / "drr.npy")).all()
    # register one DICOM from the trained model (a 2-step model: only the files are checked here)
    reg = tmp_path / "reg"
    assert main(["register", str(case / "ct.nii.gz"), str(case / "xrays" / "lao20_caud10.dcm"), "--model", str(model),
                 "-o", str(reg), "--fast", "--size", "48"]) == 0
    pose = json.loads((reg / "pose.json").read_text())
    T = torch.tensor(pose["camera_to_world"], dtype=torch.float64)
    Ti = torch.tensor(pose["world_to_camera"], dtype=torch.float64)
    torch.testing.assert_close(T @ Ti, torch.eye(4, dtype=torch.float64), atol=1e-9, rtol=0)
    # evaluate the whole case folder from perturbed true poses
    ev = tmp_path / "eval"
    capsys.readouterr()
    assert main(["evaluate", str(case), "-o", str(ev), "--start", "perturb", "--perturb", "3,10", "--fast",
                 "--size", "64", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "report:" in out and "success" in out
    rows = _rows(ev / "metrics.csv")
    assert [r["case"] for r in rows] == ["lao20_caud10.dcm", "lateral.npy"]
    for r in rows:
        mtre, start = float(r["mTRE (mm)"]), float(r["start mTRE (mm)"])
        assert np.isfinite(mtre) and mtre < start, r  # registration improved on the perturbed start
        assert float(r["opt (s)"]) > 0
        assert 0 < float(r["sd along beam (mm)"]) < 100  # each result's own spread (registration.md)
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["n_cases"] == 2 and 0.0 <= summary["sr_1mm"] <= 1.0
    assert summary["median_mtre_mm"] == pytest.approx(np.median([float(r["mTRE (mm)"]) for r in rows]))
    assert summary["median_sd_along_beam_mm"] == pytest.approx(np.median([float(r["sd along beam (mm)"]) for r in rows]))
    html = (ev / "report.html").read_text()
    assert "lao20_caud10.dcm" in html and "data:image/" in html and "mTRE" in html
    for name in ("lao20_caud10.dcm", "lateral.npy"):
        d = ev / "cases" / name
        for f in ("pose.json", "pose.tfm", "landmarks.csv", "comparison.png", "overlay.png", "fiducials.png"):
            assert (d / f).is_file(), (d, f)
        n_fid = len(_rows(case / "fiducials.csv"))
        assert len(_rows(d / "landmarks.csv")) == n_fid
    # resume: saved cases are read back, not registered again
    saved = ev / "cases" / "lateral.npy" / "result.json"
    res = json.loads(saved.read_text())
    res["row"]["status"] = "kept-by-resume"
    saved.write_text(json.dumps(res))
    assert main(["evaluate", str(case), "-o", str(ev), "--start", "perturb", "--perturb", "3,10", "--fast",
                 "--size", "64", "--quiet", "--resume"]) == 0
    assert _rows(ev / "metrics.csv")[1]["status"] == "kept-by-resume"


def test_evaluate_from_a_model_without_pictures(tmp_path, case, model):
    ev = tmp_path / "ev"
    assert main(["evaluate", str(case), "--model", str(model), "-o", str(ev), "--fast", "--size", "48",
                 "--no-pictures", "--quiet"]) == 0
    rows = _rows(ev / "metrics.csv")
    assert len(rows) == 2 and all(np.isfinite(float(r["mTRE (mm)"])) for r in rows)
    assert not (ev / "cases" / "lateral.npy" / "comparison.png").exists()
    assert "the model model.pt" in json.loads((ev / "summary.json").read_text())["start"]


def test_evaluate_a_deepfluoro_file(tmp_path):
    h5 = tmp_path / "df.h5"
    write_deepfluoro_fixture(h5, detector=128, specimens=(1,), n_projections=2)  # 2.3 mm pixels
    ev = tmp_path / "ev"
    assert main(["evaluate", str(h5), "--specimen", "1", "-o", str(ev), "--start", "perturb", "--perturb", "5,20",
                 "--no-pictures", "--quiet"]) == 0
    rows = _rows(ev / "metrics.csv")
    assert [r["case"] for r in rows] == ["image-000", "image-001"]
    assert len(_rows(ev / "cases" / "image-000" / "landmarks.csv")) == 14  # DeepFluoro's 14 landmarks
    assert all(float(r["mTRE (mm)"]) < float(r["start mTRE (mm)"]) / 3 for r in rows)  # measured 4.3 and 1.1 from 20


def test_evaluate_a_ljubljana_file_with_pictures(tmp_path):
    """A 3D-DSA volume (not HU): registration and the pictures use a density model that fits it."""
    from xraypose.datasets import write_ljubljana_fixture

    h5 = tmp_path / "lj.h5"
    write_ljubljana_fixture(h5, subjects=(1,))
    ev = tmp_path / "ev"
    assert main(["evaluate", str(h5), "--specimen", "1", "-o", str(ev), "--start", "perturb", "--perturb", "3,10",
                 "--fast", "--quiet"]) == 0
    rows = _rows(ev / "metrics.csv")
    assert len(rows) == 4 and all(float(r["mTRE (mm)"]) < float(r["start mTRE (mm)"]) for r in rows)
    assert (ev / "cases" / rows[0]["case"] / "comparison.png").stat().st_size > 1000


def test_config_files_mirror_the_options(tmp_path, case):
    cfg = tmp_path / "eval.toml"
    cfg.write_text('[evaluate]\nstart = "perturb"\nperturb = "2,5"\nfast = true\nsize = 48\npictures = false\n'
                   'quiet = true\n[render]\nheight = 99\n')
    ev = tmp_path / "ev"
    assert main(["evaluate", str(case), "-o", str(ev), "--config", str(cfg)]) == 0
    s = json.loads((ev / "summary.json").read_text())
    assert "2° and 5 mm" in s["start"]
    assert not (ev / "cases" / "lateral.npy" / "comparison.png").exists()
    # the command line wins over the file
    assert main(["evaluate", str(case), "-o", str(tmp_path / "ev2"), "--config", str(cfg), "--perturb", "4,6"]) == 0
    assert "4° and 6 mm" in json.loads((tmp_path / "ev2" / "summary.json").read_text())["start"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "nowhere", "-o", "ev"], "not found"),
        (["evaluate", "{case}", "-o", "ev", "--start", "guess"], "unknown --start"),
        (["evaluate", "{case}", "-o", "ev", "--perturb", "3"], "DEGREES,MM"),
        (["evaluate", "{case}", "-o", "ev", "--start", "model"], "--model"),
        (["evaluate", "{case}", "-o", "ev", "--specimen", "1"], "case folder"),
        (["evaluate", "{case}/ct.nii.gz", "-o", "ev"], "expected a case folder"),
        (["evaluate", "{h5}", "-o", "ev"], "--specimen"),
        (["evaluate", "{case}", "-o", "ev", "--config", "{bad_toml}"], "not an option"),
        (["evaluate", "{case}", "-o", "ev", "--config", "{broken_toml}"], "not valid TOML"),
        (["evaluate", "{case}", "-o", "ev", "--size", "4"], "at least 16"),
        (["register", "sample", "{case}/xrays/lateral.npy", "-o", "r", "--config", "{bad_toml}"], "not an option"),
        (["demo", "--config", "{bad_toml}"], "not an option"),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys, case, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text("learning_rate = 3\n")
    (tmp_path / "broken.toml").write_text("size = [\n")
    (tmp_path / "other.h5").write_bytes(b"")
    import h5py

    with h5py.File(tmp_path / "ds.h5", "w") as f:
        f.create_group("17-1882")
    fill = {"case": str(case), "bad_toml": "bad.toml", "broken_toml": "broken.toml", "h5": "ds.h5"}
    args = [a.format(**fill) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("xraypose: error:"), err
    assert message in err and "Traceback" not in err


def test_evaluate_perturb_needs_true_poses(tmp_path, case, capsys):
    import shutil

    c2 = tmp_path / "nopose"
    shutil.copytree(case, c2)
    (c2 / "poses.json").unlink()
    assert main(["evaluate", str(c2), "-o", str(tmp_path / "ev"), "--start", "perturb"]) == 2
    assert "true pose" in capsys.readouterr().err


def test_no_metal_steps_reaches_the_model_initialiser(case, model):
    """--no-metal-steps (foreign_steps None) is passed to the model initialiser too, by evaluate's start,
    register's and a rig's or a sequence's: the model then sees the X-ray as given."""
    from xraypose.cli.register import _start
    from xraypose.cli.steps import start_pose
    from xraypose.evaluate import load_eval_set
    from xraypose.register.starts import evaluation_start

    ev = load_eval_set(case)
    for steps in (12.0, None):
        _, init, _ = evaluation_start("model", ev, model=model, foreign_steps=steps)
        assert init.foreign_steps == steps
        init2, _ = _start("model", None, case, model=model, vol=ev.volume, pose_json=None, sod=None, iso=None,
                          allow_other_ct=False, foreign_steps=steps)
        assert init2.foreign_steps == steps
        # the start of a rig registration and of a sequence (register --rig, track)
        init3, _ = start_pose("model", px=None, camera_to_rig=None, view="a", model=model, vol=ev.volume,
                              pose_json=None, angles=None, sod=None, iso=None, allow_other_ct=False,
                              foreign_steps=steps)
        assert init3.foreign_steps == steps
