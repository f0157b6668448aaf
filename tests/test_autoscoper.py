"""The Autoscoper wrist dataset: a synthetic trial of the same layout (always), the real one (with ../shared)."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import requires_shared, shared_path
from xraypose.calibration import read_mayacam_camera, write_mayacam
from xraypose.camera import Camera, carm_pose
from xraypose.datasets.autoscoper import WRIST_VOXEL_MM, AutoscoperWrist, field_of_view
from xraypose.errors import InputError

N = 96
CENTRE = (50.0, 46.0)
RADIUS = 44.0


def radiograph(bone_at=(48, 40), value=230):
    """An 8-bit display image: a bright circular field (I = value), dark outside, a dark bone disc inside."""
    v, u = np.mgrid[0:N, 0:N].astype(np.float64)
    img = np.where((u - CENTRE[0]) ** 2 + (v - CENTRE[1]) ** 2 <= RADIUS ** 2, value, 0.0)
    img[(u - bone_at[0]) ** 2 + (v - bone_at[1]) ** 2 <= 36] = 60.0  # bone: dark
    img[20:24, 30:34] = 145.0  # a grey patch
    return img.astype(np.uint8)


def make_trial(root):
    cams = {"cam01": carm_pose(0, 0, sod=800.0, isocenter=torch.zeros(3)),
            "cam02": carm_pose(100, 0, sod=820.0, isocenter=torch.zeros(3))}
    (root / "calibration").mkdir(parents=True)
    for c, T in cams.items():
        write_mayacam(root / "calibration" / f"xr_calib_wrist_{c}.txt",
                      Camera(sdd=1100.0, height=N, width=N, delx=2.0, x0=1.0), T)
        d = root / "radiographs" / c
        d.mkdir(parents=True)
        for frame, bone in (("0010", (30, 50)), ("0002", (48, 40)), ("0099", (60, 60))):
            Image.fromarray(radiograph(bone)).save(str(d / f"xr_rad_uln_{c}_UND.{frame}.tif"))
    (root / "volumes").mkdir()
    pages = [np.full((5, 4), 100 * k, np.uint16) for k in range(3)]
    ims = [Image.fromarray(p) for p in pages]
    ims[0].save(str(root / "volumes" / "rad_dcm_cropped.tif"), save_all=True, append_images=ims[1:])
    return cams


def test_field_of_view_finds_the_circle():
    cu, cv, r = field_of_view(radiograph())
    assert abs(cu - CENTRE[0]) < 0.5 and abs(cv - CENTRE[1]) < 0.5 and abs(r - RADIUS) < 0.7
    # a circle cut by the image border: the border points are not taken for the circle's
    big = np.zeros((N, N), np.uint8)
    v, u = np.mgrid[0:N, 0:N]
    big[(u - 48) ** 2 + (v - 70) ** 2 <= 40 ** 2] = 200
    cu, cv, r = field_of_view(big)
    assert abs(cu - 48) < 0.5 and abs(cv - 70) < 0.5 and abs(r - 40) < 0.7
    with pytest.raises(InputError, match="no circular field"):
        field_of_view(np.zeros((N, N)))


def test_synthetic_trial(tmp_path):
    cams = make_trial(tmp_path)
    ds = AutoscoperWrist(tmp_path, margin_px=3)
    assert ds.frames == ("0002", "0010", "0099") and len(ds) == 3
    views = ds[0]
    v = views["cam01"]
    cam, pose = read_mayacam_camera(tmp_path / "calibration" / "xr_calib_wrist_cam01.txt")
    assert v.camera == cam and torch.allclose(v.camera_to_world, pose) and torch.allclose(pose, cams["cam01"])
    img = v.image
    assert img.shape == (N, N) and float(img.min()) == 0.0 and float(img.max()) == pytest.approx(1.0)
    # bone bright, open field dark, outside the field 0 and masked
    assert float(img[40, 48]) == pytest.approx(1.0) and float(img[20, 50]) == pytest.approx(0.0, abs=1e-6)
    assert not bool(v.mask[0, 0]) and float(img[0, 0]) == 0.0 and bool(v.mask[46, 50])
    assert float(img[v.mask].min()) == pytest.approx(0.0, abs=1e-6)
    # log transfer: L = log 256 − log(I + 1), rescaled between the field (I = 230) and the bone (I = 60)
    lo, hi = np.log(256 / 231), np.log(256 / 61)
    assert float(img[22, 32]) == pytest.approx((np.log(256 / 146) - lo) / (hi - lo), abs=1e-5)
    lin = AutoscoperWrist(tmp_path, margin_px=3, transfer="linear").view("0002", "cam01").image
    assert float(lin[40, 48]) == pytest.approx(1.0) and float(lin[22, 32]) == pytest.approx(0.5, abs=1e-5)
    # the rig is the calibration's
    rig = ds.rig()
    assert rig.names == ["cam01", "cam02"] and torch.allclose(rig["cam02"].camera_to_rig, cams["cam02"])


def test_synthetic_trial_resized(tmp_path):
    make_trial(tmp_path)
    full = AutoscoperWrist(tmp_path, margin_px=3).view("0099", "cam02")
    small = AutoscoperWrist(tmp_path, margin_px=3, size=48).view("0099", "cam02")
    assert small.image.shape == (48, 48) and small.mask.shape == (48, 48)
    assert small.camera == full.camera.resize(48)
    # the same world point lands on corresponding pixels of both
    X = torch.tensor([[5.0, -3.0, 8.0]], dtype=torch.float64)
    uv_full = full.camera.project(X, full.camera_to_world)
    uv_small = small.camera.project(X, small.camera_to_world)
    assert torch.allclose(torch.as_tensor(small.pixel_map.apply(uv_full)), uv_small, atol=1e-9)
    assert float(small.image[~small.mask].abs().max()) == 0.0


def test_volume_and_bad_requests(tmp_path):
    make_trial(tmp_path)
    ds = AutoscoperWrist(tmp_path)
    vol = ds.volume("rad")
    assert vol.shape == (4, 5, 3) and torch.allclose(vol.spacing, torch.tensor(WRIST_VOXEL_MM, dtype=torch.float64))
    assert torch.allclose(vol.center, torch.zeros(3, dtype=torch.float64))  # origin="center" here
    assert float(vol.data[0, 0, 2]) == 200.0
    with pytest.raises(InputError, match="unknown bone"):
        ds.volume("femur")
    with pytest.raises(InputError, match="unknown camera"):
        ds.view("0002", "cam03")
    with pytest.raises(InputError, match="unknown frame"):
        ds.view("0003", "cam01")
    with pytest.raises(InputError, match="transfer"):
        AutoscoperWrist(tmp_path, transfer="gamma")
    with pytest.raises(InputError, match="not found"):
        AutoscoperWrist(tmp_path / "none")
    (tmp_path / "radiographs" / "cam02" / "xr_rad_uln_cam02_UND.0099.tif").unlink()
    with pytest.raises(InputError, match="frame 0099 has no radiograph from cam02"):
        AutoscoperWrist(tmp_path)


@requires_shared
def test_real_wrist_trial():
    ds = AutoscoperWrist(shared_path("autoscoper_wrist"), size=220)
    assert ds.frames == ("0002", "0099", "0158")
    for cam in ds.cameras:
        cu, cv, r = ds.field(cam)
        assert abs(cu - 880) < 40 and abs(cv - 880) < 40 and 850 < r < 920, (cam, cu, cv, r)
    views = ds[0]
    for cam, v in views.items():
        assert v.image.shape == (220, 220) and 0.6 < float(v.mask.float().mean()) < 0.8
        assert float(v.image[~v.mask].abs().max()) == 0.0
        # bone bright: the forearm (lower middle of the image) is brighter than the open field
        assert float(v.image[170:200, 90:130].mean()) > float(v.image[v.mask].median()), cam
    vol = ds.volume("rad")
    assert vol.shape == (68, 86, 128) and float(vol.data.max()) == 4095.0
