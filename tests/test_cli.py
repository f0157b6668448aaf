"""`xraypose render` end to end, and its user-error paths (one line, exit 2)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from xraypose.camera import Camera, carm_pose
from xraypose.cli import main
from xraypose.render import render
from xraypose.volume import load_sample_ct


def _pose_file(tmp_path, T):
    p = tmp_path / "pose.json"
    p.write_text(json.dumps({"camera_to_world": T.tolist()}))
    return p


def test_render_npy_holds_line_integrals(tmp_path):
    ct = load_sample_ct()
    T = carm_pose(20.0, -5.0, sod=620.0, isocenter=ct.get_isocenter())
    out = tmp_path / "drr.npy"
    rc = main(["render", "sample", "-o", str(out), "--pose-json", str(_pose_file(tmp_path, T)), "--sdd", "1020",
               "--height", "24", "--width", "32", "--delx", "10", "--x0", "5", "--renderer", "siddon"])
    assert rc == 0
    img = np.load(out)
    assert img.shape == (24, 32) and img.dtype == np.float32
    cam = Camera(sdd=1020.0, height=24, width=32, delx=10.0, x0=5.0)
    ref = render(ct.density("hu"), ct.affine, cam, T.float(), renderer="siddon")[0, 0].numpy()
    np.testing.assert_allclose(img, ref, rtol=1e-4, atol=1e-3)


def test_render_png_with_carm_angles(tmp_path):
    from PIL import Image

    out = tmp_path / "drr.png"
    rc = main(["render", "sample", "-o", str(out), "--pose", "30,-10", "--height", "20", "--delx", "15",
               "--samples", "50", "--density", "physical", "--bone-multiplier", "2"])
    assert rc == 0
    im = np.asarray(Image.open(out))
    assert im.shape == (20, 20) and im.dtype == np.uint8 and im.max() == 255


def test_render_keeps_one_pixel_rows_and_columns(tmp_path):
    """A 1 × 5, 5 × 1 or 1 × 1 detector is an image of that shape (not squeezed to (5,) or ())."""
    for h, w, ext in ((1, 5, "npy"), (5, 1, "npy"), (1, 1, "png")):
        out = tmp_path / f"drr_{h}x{w}.{ext}"
        assert main(["render", "sample", "-o", str(out), "--pose", "0,0", "--height", str(h), "--width", str(w),
                     "--delx", "40"]) == 0
        if ext == "npy":
            assert np.load(out).shape == (h, w)


@pytest.mark.parametrize(
    "args, message",
    [
        (["render", "missing.nii.gz", "-o", "x.npy", "--pose", "0,0"], "not found"),
        (["render", "sample", "-o", "x.jpg", "--pose", "0,0"], ".npy or .png"),
        (["render", "sample", "-o", "x.npy"], "exactly one of"),
        (["render", "sample", "-o", "x.npy", "--pose", "0"], "2 comma-separated"),
        (["render", "sample", "-o", "x.npy", "--pose", "0,0", "--sdd=-3"], "source-to-detector"),
        (["render", "sample", "-o", "x.npy", "--pose", "0,0", "--height", "0"], "zero-size"),
        (["render", "sample", "-o", "x.npy", "--pose", "0,0", "--renderer", "joseph"], "renderer"),
        (["render", "sample", "-o", "x.npy", "--pose", "0,0", "--density", "magic"], "density"),
        (["render", "sample", "-o", "x.npy", "--pose", "0,0", "--samples", "5", "--step", "1"], "not both"),
        (["render", "sample", "-o", "no/such/dir/x.npy", "--pose", "0,0", "--height", "4"], "folder"),
        (["render", "sample", "-o", "x.npy", "--pose", "0,0", "--bogus"], "bogus"),
        (["render", "sample", "-o", "x.npy", "--pose", "0,0", "--height", "8", "--step", "1e-9"],
         "a step of 1e-09 mm takes 5.82e+11 samples"),
        (["render", "sample", "-o", "x.npy", "--pose", "0,0", "--sod", "2000", "--sdd", "1020"],
         "source-to-isocenter distance 2000 mm (--sod) is more than the source-to-detector distance 1020 mm (--sdd)"),
        (["render", "sample", "-o", "x.npy", "--pose", "0,0", "--height", "8", "--isocenter", "5000,0,0"],
         "the pose does not see the CT: it lies outside the detector's field of view"),
        (["render", "sample", "-o", "x.npy", "--pose", "0,0", "--height", "8", "--x0", "99999"],
         "does not see the CT"),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("xraypose: error:"), err
    assert message in err
    assert "Traceback" not in err


def test_a_pose_that_does_not_see_the_ct_is_refused_and_one_that_sees_an_edge_renders():
    """A DRR without the CT in it (all zeros, exit 0 before) is refused; a CT box that reaches into the view,
    or that straddles the source's plane, is not."""
    from xraypose.api import check_ct_in_view, render_drr
    from xraypose.errors import InputError

    ct = load_sample_ct()
    cam = Camera(sdd=1020.0, height=8, width=8, delx=5.0)  # 8 × 8 × 5 mm: 24 mm wide at the isocenter
    iso = ct.get_isocenter()
    half = float(ct.extent_mm[0]) / 2  # the CT's half width along x (columns at an AP view)
    edge = carm_pose(0.0, 0.0, sod=612.0, isocenter=iso + torch.tensor([half + 10.0, 0.0, 0.0], dtype=torch.float64))
    assert render_drr(ct, cam, edge).shape == (8, 8)  # the box's edge 10 mm inside the view's 12 mm half width
    away = carm_pose(0.0, 0.0, sod=612.0, isocenter=iso + torch.tensor([half + 40.0, 0.0, 0.0], dtype=torch.float64))
    with pytest.raises(InputError, match="outside the detector's field of view"):
        check_ct_in_view(ct, cam, away)
    with pytest.raises(InputError, match="behind the X-ray source"):
        # the source 1000 mm anterior of the CT, looking anterior
        check_ct_in_view(ct, cam, carm_pose(0.0, 0.0, sod=1000.0, isocenter=iso + torch.tensor([0.0, 2000.0, 0.0],
                                                                                               dtype=torch.float64)))
    with pytest.raises(InputError, match="beyond the detector"):
        check_ct_in_view(ct, cam, carm_pose(0.0, 0.0, sod=2000.0, isocenter=iso))
    check_ct_in_view(ct, cam, carm_pose(0.0, 0.0, sod=1.0, isocenter=iso))  # the source inside the CT


def test_render_step_is_bounded_and_the_suggested_one_renders(tmp_path, capsys):
    """--step 1e-9 never finished (5.8e11 samples a ray); refused naming the least step, which renders."""
    out = tmp_path / "x.npy"
    assert main(["render", "sample", "-o", str(out), "--pose", "0,0", "--height", "4", "--step", "1e-4"]) == 2
    err = capsys.readouterr().err
    assert "at most 100,000 are allowed: use a step of at least 0.0059 mm" in err and len(err.splitlines()) == 1
    assert main(["render", "sample", "-o", str(out), "--pose", "0,0", "--height", "4", "--step", "0.0059"]) == 0


def test_render_too_large_for_memory_is_one_line(tmp_path, monkeypatch, capsys):
    """16384² (in --height/--width's range) asked 30 GB of one allocation: refused up front saying how much,
    and an allocation that fails anyway is one line too."""
    import xraypose.api
    import xraypose.limits

    out = tmp_path / "x.npy"
    monkeypatch.setattr(xraypose.limits, "memory_bytes", lambda: 1 << 30)
    assert main(["render", "sample", "-o", str(out), "--pose", "0,0", "--height", "4096"]) == 2
    err = capsys.readouterr().err
    assert "a 4096 × 4096 DRR needs about 2.5 GiB of memory to render; this machine has 1 GiB" in err
    assert len(err.splitlines()) == 1

    def fails(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 30064771072 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(xraypose.api, "render_drr", fails)
    assert main(["render", "sample", "-o", str(out), "--pose", "0,0", "--height", "16"]) == 2
    err = capsys.readouterr().err
    assert err == "xraypose: error: rendering a 16 × 16 DRR ran out of memory (an allocation of 28 GiB failed): " \
                  "render fewer pixels\n"
    assert not out.exists()


@pytest.mark.parametrize(
    "payload, message",
    [
        ("{not json", "not valid JSON"),
        ('{"pose": 1}', "camera_to_world"),
        (json.dumps({"camera_to_world": (2 * torch.eye(4)).tolist()}), "rigid"),
        (json.dumps({"camera_to_world": [[1, 0], [0, 1]]}), "4"),
    ],
)
def test_bad_pose_files(tmp_path, capsys, payload, message):
    p = tmp_path / "pose.json"
    p.write_text(payload)
    assert main(["render", "sample", "-o", str(tmp_path / "x.npy"), "--pose-json", str(p), "--height", "4"]) == 2
    assert message in capsys.readouterr().err


def test_console_script_runs(tmp_path):
    exe = [sys.executable, "-m", "xraypose.cli"]
    text = {"text": True, "encoding": "utf-8"}  # not the locale's: GDCM's DICOM writer (other tests) leaves C
    out = subprocess.run(exe + ["render", "--help"], capture_output=True, **text)
    assert out.returncode == 0 and "--pose-json" in out.stdout
    bad = subprocess.run(exe + ["render", "nope.nii", "-o", str(tmp_path / "a.npy"), "--pose", "0,0"],
                         capture_output=True, **text)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_ctrl_c_exits_130_and_says_interrupted(tmp_path, monkeypatch, capsys):
    """Ctrl-C mid-command is status 130 and one line (typer returned its Exit(130): the run exited 0, silently)."""
    import xraypose.datasets.case_folder as case_folder

    def interrupted(out):
        raise KeyboardInterrupt

    monkeypatch.setattr(case_folder, "make_example_case", interrupted)
    assert main(["datasets", "example", str(tmp_path / "case")]) == 130
    assert capsys.readouterr().err.strip() == "xraypose: interrupted"


def test_info_on_ct_xray_and_errors(tmp_path, capsys):
    assert main(["info", "sample", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["what"] == "CT" and d["shape"] == [122, 101, 112] and d["spacing_mm"] == [3.0, 3.0, 3.0]
    img = tmp_path / "x.npy"
    np.save(img, np.random.default_rng(0).random((12, 10)).astype(np.float32))
    assert main(["info", str(img)]) == 0
    out = capsys.readouterr().out
    assert "X-ray" in out and "[12, 10]" in out
    assert main(["info", str(tmp_path / "none.dcm")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["info", str(tmp_path / "notes.txt")]) == 2
    assert "cannot tell" in capsys.readouterr().err


def test_info_shows_an_xrays_header_overridden_as_register_reads_it(tmp_path, capsys):
    """The geometry advice `info` prints names --sdd/--delx/--dely/--kind: `info` takes them (register's and
    track's header overrides) and shows what those commands would read; a CT or a model refuses them."""
    img = tmp_path / "x.npy"
    np.save(img, np.random.default_rng(0).random((12, 10)).astype(np.float32))
    assert main(["info", str(img), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["camera"] is None and any("pass --sdd" in n for n in plain["notes"])
    assert main(["info", str(img), "--json", "--sdd", "1020", "--delx", "0.3", "--dely", "0.3", "--kind",
                 "intensity"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["camera"]["sdd_mm"] == 1020.0 and d["camera"]["delx_mm"] == 0.3 and d["kind"] == "intensity"
    assert d["header"]["sdd"]["from"] == "user"
    assert main(["info", "sample", "--sdd", "1000"]) == 2
    assert "--sdd applies to an X-ray; sample is a CT" in capsys.readouterr().err
    assert main(["info", str(img), "--delx", "-1"]) == 2
    assert "--delx" in capsys.readouterr().err


def test_evaluate_summary_says_x_ray_for_one(tmp_path, capsys):
    """One case is "1 X-ray: …", not "1 X-rays"."""
    from xraypose.cli.evaluate import _print_summary

    _print_summary({"n_cases": 1, "median_opt_s": 0.5}, tmp_path)
    _print_summary({"n_cases": 1, "sr_1mm": 1.0, "sr_2mm": 1.0, "median_mtre_mm": 0.1, "median_opt_s": 0.5}, tmp_path)
    _print_summary({"n_cases": 2, "median_opt_s": 0.5}, tmp_path)
    out = capsys.readouterr().out
    assert "1 X-ray registered" in out and "1 X-ray: success" in out and "2 X-rays registered" in out


def test_the_demos_summary_prints_each_results_own_spread(tmp_path, capsys):
    """The demo's summary says how far each result may lie along the beam (its median spread), when known."""
    from xraypose.demo import DemoSettings, _print_summary

    summary = {"success_rate_1mm": 1.0, "median_mtre_mm": 0.1, "median_start_mtre_mm": 20.0, "median_opt_s": 0.5,
               "median_init_s": 0.1, "total_s": 60.0, "median_sd_along_beam_mm": 0.234}
    _print_summary(tmp_path, summary, DemoSettings(), 300.0, 12, quiet=False)
    assert "median 0.23 mm (1 sd) along the beam" in capsys.readouterr().out
    del summary["median_sd_along_beam_mm"]
    _print_summary(tmp_path, summary, DemoSettings(), 300.0, 12, quiet=False)
    assert "along the beam" not in capsys.readouterr().out


def test_the_demos_summary_says_how_much_of_a_resumed_training_this_run_spent(tmp_path, capsys):
    """A demo re-run that reused (or resumed) an earlier run's training printed "training 5.9 min, total 3.1 min":
    the training longer than the whole run.  It says how much of the training this run spent; a fresh training
    keeps the plain line (the README's demo output)."""
    from xraypose.demo import DemoSettings, _print_summary

    summary = {"success_rate_1mm": 1.0, "median_mtre_mm": 0.1, "median_start_mtre_mm": 20.0, "median_opt_s": 0.5,
               "median_init_s": 0.1, "total_s": 186.0}
    _print_summary(tmp_path, summary, DemoSettings(), 354.0, 12, quiet=False, train_now_s=0.2)
    assert "(training 5.9 min, 0.0 min of it in this run; this run 3.1 min)" in capsys.readouterr().out
    _print_summary(tmp_path, {**summary, "total_s": 420.0}, DemoSettings(), 354.0, 12, quiet=False, train_now_s=356.0)
    assert "(training 5.9 min, total 7.0 min)" in capsys.readouterr().out
