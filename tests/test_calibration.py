"""MayaCam 2.0 calibrations: the convention (X_cam = R·X + t, OpenCV axes), exact K, bad files, rays that meet."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import requires_shared, shared_path
from xraypose.calibration import (NOMINAL_PIXEL_MM, closest_approach, mayacam_camera, read_mayacam,
                                  read_mayacam_camera, triangulate, write_mayacam)
from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.geometry import check_rigid

ROOT_DIR = Path(__file__).resolve().parents[1]

# A calibration as XMALab writes it (numbers of the wrist trial's camera 2, rounded).
K = np.array([[6361.48, 0.0, 904.48], [0.0, 6376.68, 894.24], [0.0, 0.0, 1.0]])
R = np.array([[0.297213956838, -0.11345236371, 0.948046636527],
              [0.0319169359626, 0.993541206889, 0.108890676428],
              [-0.954277304068, -0.0021050850164, 0.298915365208]])
T = np.array([-135.747285386, -87.5774698666, 1152.28037649])


def mayacam_text(K=K, R=R, t=T, size="1760,1760"):
    rows = lambda M: "\n".join(",".join(repr(float(v)) for v in r) for r in M)  # noqa: E731
    return (f"image size\n{size}\n\ncamera matrix\n{rows(K)}\n\nrotation\n{rows(R)}\n\ntranslation\n"
            + "\n".join(repr(float(v)) for v in t) + "\n")


def write(tmp_path, text, name="cam.txt"):
    f = tmp_path / name
    f.write_text(text)
    return f


def test_projection_follows_the_opencv_reading(tmp_path):
    """Our camera at the returned pose projects a world point exactly as K·(R·X + t) (OpenCV) does."""
    cam, pose = read_mayacam_camera(write(tmp_path, mayacam_text()))
    check_rigid(pose)
    X = np.array([[10.0, -20.0, 30.0], [-50.0, 40.0, 5.0], [0.0, 0.0, 0.0]])
    x = (X @ R.T + T) @ K.T
    expected = x[:, :2] / x[:, 2:]
    got = cam.project(torch.tensor(X), pose).numpy()
    assert np.abs(got - expected).max() < 1e-9
    # the source is at −Rᵀt and the principal ray (camera +z) is R's third row
    assert np.allclose(pose[:3, 3].numpy(), -R.T @ T)
    assert np.allclose(pose[:3, 2].numpy(), R[2] / np.linalg.norm(R[2]), atol=1e-9)
    assert (cam.depth(torch.tensor(X), pose) > 0).all()  # the world origin is in front of the source


def test_K_is_kept_exactly_and_pixel_mm_only_sets_sdd(tmp_path):
    f = write(tmp_path, mayacam_text())
    cam, _ = read_mayacam_camera(f)
    assert np.abs(cam.K().numpy() - K).max() < 1e-9
    assert cam.sdd == pytest.approx(K[0, 0] * NOMINAL_PIXEL_MM)
    cam2, _ = read_mayacam_camera(f, pixel_mm=0.5)
    assert np.abs(cam2.K().numpy() - K).max() < 1e-9 and cam2.sdd == pytest.approx(K[0, 0] * 0.5)
    assert (cam.height, cam.width) == (1760, 1760) and not cam.reverse_x_axis


def test_write_read_round_trip(tmp_path):
    cam = Camera(sdd=1100.0, height=300, width=400, delx=0.3, dely=0.31, x0=4.0, y0=-2.0)
    pose = torch.tensor([[0.0, 0.0, 1.0, -800.0], [1.0, 0.0, 0.0, 10.0], [0.0, 1.0, 0.0, 20.0], [0, 0, 0, 1.0]],
                        dtype=torch.float64)
    f = tmp_path / "out.txt"
    write_mayacam(f, cam, pose)
    cal = read_mayacam(f)
    assert (cal.height, cal.width) == (300, 400)
    cam2, pose2 = mayacam_camera(cal, pixel_mm=0.3)
    assert torch.allclose(cam2.K(), cam.K(), atol=1e-9) and torch.allclose(pose2, pose, atol=1e-12)
    with pytest.raises(InputError, match="mirrored camera"):
        write_mayacam(f, Camera(sdd=1000.0, height=10, width=10, delx=1.0, reverse_x_axis=True), pose)


@pytest.mark.parametrize("text, words", [
    (mayacam_text().replace("rotation", "rotashun"), "section 'rotation' is missing"),
    ("hello\nworld\n", "not a MayaCam 2.0 file"),
    (mayacam_text() + "\nrotation\n1,0,0\n0,1,0\n0,0,1\n", "given twice"),
    (mayacam_text(size="1760"), "image size.*must hold 2 numbers"),
    (mayacam_text(size="1760.5,1760"), "whole numbers of pixels"),
    (mayacam_text(K=np.array([[1000, 2, 5], [0, 1000, 5], [0, 0, 1.0]])), "no skew"),
    (mayacam_text(K=np.array([[1000, 0, 5], [0, -1000, 5], [0, 0, 1.0]])), "one sign"),
    (mayacam_text(R=R * 1.01), "not a rotation"),
    (mayacam_text(R=R @ np.diag([1, 1, -1.0])), "reflection"),
    (mayacam_text().replace("-135.747285386", "abc"), "'abc' is not a number"),
    (mayacam_text().replace("-135.747285386", "nan"), "not finite"),
    (mayacam_text().rsplit("\n", 2)[0] + "\n", "must have 3 lines"),
])
def test_bad_calibrations(tmp_path, text, words):
    f = write(tmp_path, text)
    with pytest.raises(InputError, match=words) as e:
        read_mayacam(f)
    assert "\n" not in str(e.value) and str(f) in str(e.value)


def test_missing_file_and_bad_pixel_size(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_mayacam(tmp_path / "none.txt")
    f = write(tmp_path, mayacam_text())
    for bad in (0, -0.2, float("nan"), True):
        with pytest.raises(InputError, match="pixel_mm"):
            read_mayacam_camera(f, pixel_mm=bad)


def test_closest_approach():
    r = closest_approach(torch.tensor([0.0, 0, 0]), torch.tensor([1.0, 0, 0]),
                         torch.tensor([5.0, 2, 3]), torch.tensor([0.0, 0, 2]))
    assert float(r["distance"]) == pytest.approx(2.0)
    assert torch.allclose(r["midpoint"], torch.tensor([5.0, 1.0, 0.0], dtype=torch.float64))
    assert float(r["s"]) == pytest.approx(5.0) and float(r["t"]) == pytest.approx(-1.5)
    par = closest_approach(torch.tensor([0.0, 0, 0]), torch.tensor([1.0, 0, 0]),
                           torch.tensor([0.0, 3, 4]), torch.tensor([2.0, 0, 0]))
    assert float(par["distance"]) == pytest.approx(5.0)


def test_triangulate_two_views():
    from xraypose.camera import carm_pose

    cam = Camera(sdd=1000.0, height=200, width=200, delx=1.0)
    T1 = carm_pose(0.0, 0.0, sod=600.0, isocenter=torch.zeros(3))
    T2 = carm_pose(90.0, 10.0, sod=650.0, isocenter=torch.tensor([5.0, 0, 0]))
    X = torch.tensor([[10.0, 5.0, -3.0], [-20.0, 0.0, 15.0], [0.0, 30.0, 0.0]], dtype=torch.float64)
    r = triangulate(cam.project(X, T1), cam, T1, cam.project(X, T2), cam, T2)
    assert r["distance"].max() < 1e-9 and torch.allclose(r["point"], X, atol=1e-9)
    assert (r["depth1"] > 0).all() and (r["depth2"] > 0).all()
    # a calibration 2 mm off moves the rays apart
    T2b = T2.clone()
    T2b[:3, 3] += torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64)
    assert triangulate(cam.project(X, T1), cam, T1, cam.project(X, T2), cam, T2b)["distance"].min() > 0.5


def _check_script():
    spec = importlib.util.spec_from_file_location("wrist_calibration_check",
                                                  ROOT_DIR / "scripts" / "wrist_calibration_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@requires_shared
def test_wrist_beads_meet_with_this_reading_only():
    """Rays through the same bead in the two real views meet (median < 0.1 mm) with xraypose's reading;
    every other reading leaves a cam01 bead's ray > 0.5 mm (median) from every cam02 ray."""
    pytest.importorskip("scipy")
    mod = _check_script()
    r = mod.check_frame(shared_path("autoscoper_wrist"), "0002")
    assert len(r["beads"]) >= 8 and r["unambiguous"] >= 4, r["beads_detected"]
    assert r["median_distance_mm"] < 0.1 and r["max_distance_mm"] < 0.5 and r["median_unambiguous_mm"] < 0.15
    assert all(b["depth_cam01_mm"] > 500 and b["depth_cam02_mm"] > 500 for b in r["beads"])
    best, *others = r["readings"]
    assert tuple(best["reading"]) == mod.XRAYPOSE_READING
    assert min(o["median_nearest_mm"] for o in others) > 0.5


@requires_shared
@pytest.mark.slow
def test_wrist_bead_clusters_are_rigid_across_frames():
    """A bone's beads triangulated in two frames fit rigidly onto each other within 0.2 mm RMS."""
    pytest.importorskip("scipy")
    mod = _check_script()
    data = shared_path("autoscoper_wrist")
    results = [mod.check_frame(data, f) for f in ("0099", "0158")]
    fits = mod.rigid_consistency(results)
    assert fits and fits[0]["beads"] >= 5 and fits[0]["rms_mm"] < 0.2, fits[:3]
