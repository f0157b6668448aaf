"""DeepFluoro / Ljubljana loaders on layout-exact fixtures generated from the bundled CT, and case folders.

The fixtures are written in the datasets' own conventions (LPS volumes, negative-focal K,
extrinsic, cam-to-pelvis-vol, rot-180-for-up) by xraypose.datasets.fixtures with formulas
written independently of the loaders; the stored 2D landmarks use the files' own projection
formula.  So a loader that gets a convention wrong fails these tests.
"""

import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from xraypose.datasets import (
    DeepFluoroDataset, LjubljanaDataset, load_case, make_example_case, write_deepfluoro_fixture,
    write_ljubljana_fixture,
)
from xraypose.errors import InputError
from xraypose.preprocess import ncc
from xraypose.render import render

F64 = torch.float64
ROT180 = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=F64))


@pytest.fixture(scope="session")
def deepfluoro(tmp_path_factory):
    path = tmp_path_factory.mktemp("deepfluoro") / "ipcai_2020_full_res_data.h5"
    truth = write_deepfluoro_fixture(path, detector=128, specimens=(1, 2), n_projections=3)
    return path, truth


@pytest.fixture(scope="session")
def ljubljana(tmp_path_factory):
    path = tmp_path_factory.mktemp("ljubljana") / "ljubljana.h5"
    truth = write_ljubljana_fixture(path, subjects=(1, 2))
    return path, truth


@pytest.fixture(scope="session")
def example_case(tmp_path_factory):
    return make_example_case(tmp_path_factory.mktemp("cases") / "example")


def _drr(volume, camera, pose, step=1.0):
    with torch.no_grad():
        return render(volume.density("physical"), volume.affine, camera, torch.as_tensor(pose).reshape(1, 4, 4).float(),
                      step=step)[0, 0]


# ---------------------------------------------------------------- DeepFluoro


def test_deepfluoro_poses_volume_and_fiducials_round_trip(deepfluoro):
    path, truth = deepfluoro
    sp = DeepFluoroDataset(1, filename=path)
    t = truth["specimens"][1]
    assert len(sp) == 3 and sp.specimen_id == "17-1882"
    assert sp.focal_len == pytest.approx(1020.0, rel=1e-5)
    assert sp.camera.reverse_x_axis  # negative focal length → mirrored detector in our frame
    torch.testing.assert_close(sp.fiducials[0], torch.tensor(t["fiducials_ras"], dtype=F64))
    for i, p in enumerate(t["projections"]):
        T = torch.tensor(p["pose"], dtype=F64)
        torch.testing.assert_close(sp.get_pose(i, raw=True), T, atol=1e-9, rtol=0)
        assert sp.rot_180_for_up(i) == p["rot180"]
        # the returned pose is the pose of the returned (rotated, cropped) image
        expect = T @ ROT180 if p["rot180"] else T
        torch.testing.assert_close(sp.get_pose(i), expect, atol=1e-9, rtol=0)
        img, pose = sp[i]
        assert img.shape == (1, 1, 120, 120) and img.dtype == torch.float32
        assert pose.shape == (1, 4, 4) and pose.dtype == torch.float32
        torch.testing.assert_close(pose[0].double(), expect, atol=1e-3, rtol=0)
        for side in ("left", "right"):
            torch.testing.assert_close(sp.get_pose(i, f"{side}-femur", raw=True),
                                       torch.tensor(p[f"{side}_femur_pose"], dtype=F64), atol=1e-9, rtol=0)
        assert sp.femur_good_fov(i, "left") is True
    # the volume is the LPS grid seen in RAS: voxel (i, j, k) of pixels[k, j, i]
    with h5py.File(path) as f:
        origin = f["17-1882/vol/origin"][()].reshape(3)
        pix = f["17-1882/vol/pixels"]
        assert pix.shape == tuple(reversed(sp.volume.shape))
        v = float(pix[5, 7, 9])
    assert float(sp.volume.data[9, 7, 5]) == v
    torch.testing.assert_close(sp.volume.voxel_to_world([9.0, 7.0, 5.0]),
                               torch.tensor([-(origin[0] + 9), -(origin[1] + 7), origin[2] + 5], dtype=F64))
    assert sp.volume.label_names[1] == "left-hemipelvis" and int(sp.volume.labels.max()) <= 7
    assert sp.isocenter_pose.shape == (1, 4, 4)
    torch.testing.assert_close(sp.isocenter_pose[0, :3, 3] + 510.0 * sp.isocenter_pose[0, :3, 2], sp.volume.center,
                               atol=1e-2, rtol=0)


def test_deepfluoro_landmarks_follow_the_image(deepfluoro):
    """Fiducials projected with the loader's pose and camera land on the stored 2D landmarks (< 0.5 px),
    at the returned size and after resizing; the stored landmarks follow crop and rotation."""
    path, truth = deepfluoro
    sp = DeepFluoroDataset(1, filename=path)
    W = 128
    for i, p in enumerate(truth["specimens"][1]["projections"]):
        file_uv = torch.tensor(p["landmarks"], dtype=F64)
        # independent bookkeeping: rotate (u' = W-1-u) then remove the 4-px border
        uv = torch.stack([W - 1 - file_uv[:, 0], W - 1 - file_uv[:, 1]], 1) if p["rot180"] else file_uv
        uv = uv - 4.0
        torch.testing.assert_close(sp.stored_2d_landmarks(i), uv, atol=1e-4, rtol=0)
        for size in (None, 256, 64, (50, 70)):
            gt = sp.get_2d_groundtruth(i, size=size)
            stored = sp.stored_2d_landmarks(i, size=size)
            assert float((gt - stored).norm(dim=1).max()) < 0.5, (i, size)
        true, pred = sp.get_2d_fiducials(i, sp.get_pose(i))
        torch.testing.assert_close(true, pred)
        inside = ((sp.get_2d_groundtruth(i) >= 0) & (sp.get_2d_groundtruth(i) <= 119)).all(1)
        assert int(inside.sum()) >= 8  # most landmarks are in view


def test_deepfluoro_image_is_the_drr_at_the_loader_pose(deepfluoro):
    """The returned image (rotated, cropped, log, rescaled) matches a DRR rendered at the returned pose
    with the returned camera; a 180°-rotated copy does not."""
    path, _ = deepfluoro
    sp = DeepFluoroDataset(2, filename=path, preprocess={"blur": None})
    blurred = DeepFluoroDataset(2, filename=path)
    small = DeepFluoroDataset(2, filename=path, size=64)
    for i in range(len(sp)):
        img, pose = sp[i]
        drr = _drr(sp.volume, sp.get_camera(i), pose)
        assert ncc(img[0, 0], drr) > 0.999
        assert ncc(img[0, 0].flip(0, 1), drr) < 0.98  # orientation matters (the blob test pins it exactly)
        assert ncc(blurred[i][0][0, 0], drr) > 0.99
        img_s, pose_s = small[i]
        assert img_s.shape == (1, 1, 64, 64)
        assert ncc(img_s[0, 0], _drr(sp.volume, small.get_camera(i), pose_s)) > 0.99
    raw = DeepFluoroDataset(2, filename=path, preprocess=False)
    img, _ = raw[1]
    assert img.shape == (1, 1, 128, 128) and float(img.max()) <= 65487.0 and float(img.min()) >= 1.0
    stored = raw.raw_image(1)
    expect = stored.flip(0, 1) if raw.rot_180_for_up(1) else stored
    assert torch.equal(img[0, 0], expect)


def test_deepfluoro_conventions_with_a_blob_phantom(tmp_path):
    """Bright blobs at known LPS points appear where DeepFluoro's own formula puts them:
    in the stored raw image, and in the loader's rotated, cropped, resized image at get_2d_groundtruth."""
    from xraypose.volume import volume_from_array

    n = 81
    centre = np.array([10.0, -20.0, 30.0])  # RAS
    ax = np.arange(n) - (n - 1) / 2
    X, Y, Z = np.meshgrid(ax, ax, ax, indexing="ij")
    blobs_ras = centre + np.array([[22.0, 8.0, -15.0], [-18.0, -12.0, 20.0], [5.0, 25.0, 12.0]])
    hu = np.full((n, n, n), -1000.0)
    for b in blobs_ras - centre:
        hu += 2500.0 * np.exp(-((X - b[0]) ** 2 + (Y - b[1]) ** 2 + (Z - b[2]) ** 2) / (2 * 2.5**2))
    vol = volume_from_array(hu, spacing=(1.0, 1.0, 1.0), origin=centre - (n - 1) / 2)
    path = tmp_path / "blobs.h5"
    truth = write_deepfluoro_fixture(path, volume=vol, detector=96, specimens=(1,), n_projections=2,
                                     region_mm=(80.0, 80.0, 80.0), center_ras=tuple(centre), principal_offset_px=(6.0, -4.0),
                                     collimator=False, step=0.5)
    K = np.array(truth["intrinsic"])
    E = np.array(truth["extrinsic"])
    blobs_lps = np.c_[blobs_ras * [-1.0, -1.0, 1.0], np.ones(3)].T
    sp_raw = DeepFluoroDataset(1, filename=path, preprocess=False)
    sp = DeepFluoroDataset(1, filename=path, preprocess={"blur": None}, size=72)
    for i, p in enumerate(truth["specimens"][1]["projections"]):
        C2V = np.array(p["cam_to_pelvis_vol"])
        uvw = K @ (E @ np.linalg.inv(C2V) @ blobs_lps)[:3]
        theirs = (uvw[:2] / uvw[2:]).T
        L = -torch.log(sp_raw.raw_image(i).double() / 65487.0)
        for uv in theirs:
            assert np.linalg.norm(_peak(L, uv) - uv) < 0.35
        img, _ = sp[i]
        # the fiducials are random blob voxels; use the blob centres through the loader's geometry
        plan_cam, plan_pose = sp.get_camera(i), sp.get_pose(i)
        uv_loader = plan_cam.project(torch.from_numpy(blobs_ras), plan_pose).numpy()
        for uv in uv_loader:
            assert np.linalg.norm(_peak(img[0, 0].double(), uv) - uv) < 0.35
        assert float((sp.get_2d_groundtruth(i) - sp.stored_2d_landmarks(i)).norm(dim=1).max()) < 0.5


def _peak(img: torch.Tensor, uv, r: int = 3) -> np.ndarray:
    """Intensity-weighted centroid (u, v) in a (2r+1)² window around uv (background removed)."""
    u0, v0 = int(round(uv[0])), int(round(uv[1]))
    H, W = img.shape
    assert r <= u0 < W - r and r <= v0 < H - r, f"blob at {uv} is off the image"
    win = img[v0 - r : v0 + r + 1, u0 - r : u0 + r + 1]
    w = (win - win.min()).numpy()
    vv, uu = np.mgrid[v0 - r : v0 + r + 1, u0 - r : u0 + r + 1]
    return np.array([(w * uu).sum() / w.sum(), (w * vv).sum() / w.sum()])


def test_deepfluoro_bad_input(deepfluoro, tmp_path, monkeypatch):
    path, _ = deepfluoro
    with pytest.raises(InputError, match="1..6"):
        DeepFluoroDataset(7, filename=path)
    with pytest.raises(InputError, match=r"specimen 3 \(HDF5 group '/18-0725'\) is missing"):
        DeepFluoroDataset(3, filename=path)
    monkeypatch.delenv("XRAYPOSE_DEEPFLUORO", raising=False)
    with pytest.raises(InputError, match="XRAYPOSE_DEEPFLUORO"):
        DeepFluoroDataset(1)
    monkeypatch.setenv("XRAYPOSE_DEEPFLUORO", str(path))
    assert len(DeepFluoroDataset(1)) == 3
    with pytest.raises(InputError, match="not found"):
        DeepFluoroDataset(1, filename=tmp_path / "nope.h5")
    (tmp_path / "bad.h5").write_text("not hdf5")
    with pytest.raises(InputError, match="cannot open"):
        DeepFluoroDataset(1, filename=tmp_path / "bad.h5")
    sp = DeepFluoroDataset(1, filename=path)
    with pytest.raises(InputError, match="index 3 does not exist"):
        sp[3]
    with pytest.raises(InputError, match="unknown structure"):
        sp.get_pose(0, "skull")
    broken = tmp_path / "broken.h5"
    shutil.copy(path, broken)
    with h5py.File(broken, "a") as f:
        del f["proj-params/extrinsic"]
        del f["18-1109/projections/001/gt-poses/cam-to-pelvis-vol"]
        del f["18-1109/vol-landmarks"]
    with pytest.raises(InputError, match="'/proj-params/extrinsic' is missing"):
        DeepFluoroDataset(1, filename=broken)
    with h5py.File(broken, "a") as f:
        f["proj-params"].create_dataset("extrinsic", data=np.eye(4))
    with pytest.raises(InputError, match="'/18-1109/vol-landmarks' is missing"):
        DeepFluoroDataset(2, filename=broken)
    with h5py.File(broken, "a") as f:
        f["17-1882/projections/000/image/pixels"][...] = 0.0
    sp = DeepFluoroDataset(1, filename=broken)
    with pytest.raises(InputError, match="all zeros"):
        sp[0]
    sp.close()
    with h5py.File(broken, "a") as f:
        f["17-1882/projections/000/image/pixels"][3, 4] = np.nan
    with pytest.raises(InputError, match="projection 000 has 1 NaN or infinite pixel$"):
        DeepFluoroDataset(1, filename=broken)[0]
    sp.close()
    with h5py.File(broken, "a") as f:
        del f["17-1882/projections/001/image/pixels"]
        f["17-1882/projections/001/image"].create_dataset("pixels", data=np.ones((64, 64), np.float32))
    with pytest.raises(InputError, match="sizes differ"):
        DeepFluoroDataset(1, filename=broken)[1]


def test_deepfluoro_pickles_for_dataloader_workers(deepfluoro):
    path, _ = deepfluoro
    sp = DeepFluoroDataset(1, filename=path)
    img, pose = sp[0]
    sp2 = pickle.loads(pickle.dumps(sp))
    img2, pose2 = sp2[0]
    assert torch.equal(img, img2) and torch.equal(pose, pose2)
    loader = torch.utils.data.DataLoader(sp, batch_size=3)
    imgs, poses = next(iter(loader))
    assert imgs.shape == (3, 1, 1, 120, 120) and poses.shape == (3, 1, 4, 4)


# ---------------------------------------------------------------- Ljubljana


def test_ljubljana_poses_landmarks_and_images(ljubljana):
    path, truth = ljubljana
    s = LjubljanaDataset(2, filename=path)
    assert len(s) == 2 and s.views == ["ap", "lat", "ap-max", "lat-max"]
    assert s.focal_len == pytest.approx(1196.4)
    t = truth["subjects"][2]
    torch.testing.assert_close(s.fiducials[0], torch.tensor(t["points"], dtype=F64))
    for idx, view in ((0, "ap"), (1, "lat"), ("ap-max", "ap"), ("lat-max", "lat")):
        T = torch.tensor(t["views"][view]["pose"], dtype=F64)
        torch.testing.assert_close(s.get_pose(idx), T, atol=1e-9, rtol=0)
        img, pose = s[idx]
        cam = s.get_camera(idx)
        assert img.shape == (1, 1, 96, 124) and (cam.height, cam.width) == (96, 124)
        assert cam.reverse_x_axis
        stored = torch.tensor(t["views"][view]["landmarks"], dtype=F64)
        assert float((s.get_2d_groundtruth(idx) - stored).norm(dim=1).max()) < 0.5
        for size in (256, (48, 62)):
            gt = s.get_2d_groundtruth(idx, size=size)
            h, w = (size, size) if isinstance(size, int) else size
            scaled = torch.stack([(stored[:, 0] + 0.5) * w / 124 - 0.5, (stored[:, 1] + 0.5) * h / 96 - 0.5], 1)
            assert float((gt - scaled).norm(dim=1).max()) < 0.5
        with torch.no_grad():
            drr = render(s.volume.data, s.volume.affine, cam, pose, step=2.0)[0, 0]
        assert ncc(img[0, 0], drr) > 0.999
        assert ncc(img[0, 0].flip(1), drr) < 0.95
    raw = LjubljanaDataset(1, filename=path, preprocess=False)
    assert torch.equal(raw[0][0][0, 0], raw.raw_image("ap"))
    small = LjubljanaDataset(1, filename=path, size=(48, 62))
    assert small[1][0].shape == (1, 1, 48, 62) and small.get_camera(1).height == 48


def test_ljubljana_bad_input(ljubljana, tmp_path):
    path, _ = ljubljana
    with pytest.raises(InputError, match="1..10"):
        LjubljanaDataset(11, filename=path)
    with pytest.raises(InputError, match=r"subject 3 \(HDF5 group '/subject03'\) is missing"):
        LjubljanaDataset(3, filename=path)
    s = LjubljanaDataset(1, filename=path)
    with pytest.raises(InputError, match="unknown Ljubljana view"):
        s["oblique"]
    with pytest.raises(InputError, match="0 \\(AP\\) or 1 \\(LAT\\)"):
        s[2]
    broken = tmp_path / "lj.h5"
    shutil.copy(path, broken)
    with h5py.File(broken, "a") as f:
        del f["subject01/proj-lat-max"]
        del f["subject02/proj-lat"]
        del f["subject02/points"]
    s = LjubljanaDataset(1, filename=broken)
    with pytest.raises(InputError, match="'/subject01/proj-lat-max' is missing"):
        s["lat-max"]
    s.close()
    with pytest.raises(InputError, match="'/subject02/points' is missing"):
        LjubljanaDataset(2, filename=broken)
    with h5py.File(broken, "a") as f:
        f["subject02"].create_dataset("points", data=np.zeros((3, 3)))
    with pytest.raises(InputError, match="'/subject02/proj-lat' is missing"):
        LjubljanaDataset(2, filename=broken)


def test_fixture_ids_given_twice_are_refused_before_anything_is_written(tmp_path, capsys):
    from xraypose.cli import main

    with pytest.raises(InputError, match="Ljubljana subjects: 1 is given twice"):
        write_ljubljana_fixture(tmp_path / "lj.h5", subjects=(1, 1))
    with pytest.raises(InputError, match="DeepFluoro specimens: 2 is given twice"):
        write_deepfluoro_fixture(tmp_path / "df.h5", specimens=(2, 1, 2))
    assert not any(tmp_path.iterdir())
    for flags, named in ((["--subjects", "1,1"], "--subjects: 1"), (["--specimens", "1", "--subjects", "2,2"],
                                                                      "--subjects: 2")):
        assert main(["datasets", "fixtures", str(tmp_path / "fx"), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("xraypose: error: ") and named in err and "\n" not in err
        assert not (tmp_path / "fx").exists()  # not even the DeepFluoro file of a valid --specimens
    # a CT that cannot be read: named, and no empty folder left behind
    assert main(["datasets", "fixtures", str(tmp_path / "fx"), "--ct", str(tmp_path / "missing.nii.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.nii.gz" in err and "\n" not in err
    assert not (tmp_path / "fx").exists()


def test_a_fixture_write_that_fails_leaves_the_old_file_and_no_debris(tmp_path, monkeypatch):
    import xraypose.datasets.fixtures as fixtures

    old = tmp_path / "ljubljana.h5"
    old.write_bytes(b"an earlier fixture")
    (tmp_path / "ljubljana.h5.truth.json").write_text("{}")  # a fixture's (another file is refused: below)

    def fail(*a, **k):
        raise RuntimeError("disk gone")

    monkeypatch.setattr(fixtures, "_write_ljubljana_view", fail)  # the first subject's group is half-written
    with pytest.raises(RuntimeError, match="disk gone"):
        write_ljubljana_fixture(old, subjects=(1, 2))
    assert old.read_bytes() == b"an earlier fixture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ljubljana.h5", "ljubljana.h5.truth.json"]  # no debris
    assert (tmp_path / "ljubljana.h5.truth.json").read_text() == "{}"


def test_fixtures_never_replace_a_real_dataset_file_of_their_name(tmp_path, capsys):
    """`datasets fixtures data` over the real ipcai_2020_full_res_data.h5 / ljubljana.h5 (no .truth.json beside
    them) is refused, before either file is written (it replaced the real file by a fixture, silently)."""
    from xraypose.cli import main
    from xraypose.io import OutputError

    real = tmp_path / "ljubljana.h5"
    real.write_bytes(b"the real dataset")
    with pytest.raises(OutputError, match="ljubljana.h5 exists and is not an xraypose fixture"):
        write_ljubljana_fixture(real, subjects=(1,))
    with pytest.raises(OutputError, match="not an xraypose fixture"):
        write_deepfluoro_fixture(tmp_path / "ljubljana.h5", specimens=(1,))
    assert main(["datasets", "fixtures", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xraypose: error: ") and str(real) in err and "\n" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["ljubljana.h5"]  # the DeepFluoro file not written either
    assert real.read_bytes() == b"the real dataset"


def test_example_into_a_non_empty_folder_says_to_choose_another(tmp_path, capsys):
    """The command line has no --overwrite: its message must not tell the user to pass overwrite=True."""
    from xraypose.cli import main

    (tmp_path / "mine.txt").write_text("the user's")
    with pytest.raises(InputError, match="not empty; choose a new or empty folder .in Python, overwrite=True"):
        make_example_case(tmp_path)
    assert main(["datasets", "example", str(tmp_path)]) == 2
    assert "choose a new or empty folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
    capsys.readouterr()  # a file given for the folder, or a folder under a file: named (was "Not a directory: …")
    for target, words in [(tmp_path / "mine.txt", "exists and is not a folder"),
                          (tmp_path / "mine.txt" / "case", "is a file, not a folder")]:
        assert main(["datasets", "example", str(target)]) == 2
        err = capsys.readouterr().err
        assert words in err and "mine.txt" in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "mine.txt").read_text() == "the user's"


# ---------------------------------------------------------------- case folders


def test_example_case_round_trip(example_case):
    case = load_case(example_case)
    assert case.names == ["lao20_caud10.dcm", "lateral.npy"]
    assert case.fiducials.shape == (8, 3) and case.fiducial_names[0] == "bone0"
    for i in range(len(case)):
        img, pose = case[i]
        cam = case.get_camera(i)
        assert img.shape[-2:] == (cam.height, cam.width)
        assert ncc(img[0, 0], _drr(case.volume, cam, pose, step=1.5)) > 0.999
        uv = case.get_2d_groundtruth(i)
        assert bool(((uv >= 0) & (uv[:, :1] < cam.width) & (uv[:, 1:] < cam.height)).all())
        uv_small = case.get_2d_groundtruth(i, size=(80, 88))
        torch.testing.assert_close(uv_small, cam.resize(80, 88).project(case.fiducials, case.get_pose(i)))
    dcm = case.xrays[0]
    assert dcm.kind == "intensity" and dcm.camera.reverse_x_axis
    assert dcm.header["primary"]["value"] == 20.0 and dcm.header["secondary"]["value"] == -10.0
    init = case.initial_pose(0)
    true = case.get_pose(0)
    assert float((init[:3, 3] - true[:3, 3]).norm()) < 20.0  # the header's angles are close to the truth
    assert case.initial_pose(1) is None  # the NPY has no angles
    # preprocessing options flow through, and the pose follows a rotation
    rot = load_case(example_case, preprocess={"rotate_180": True, "size": 64})
    img, pose = rot[0]
    assert img.shape == (1, 1, 64, 64)
    torch.testing.assert_close(pose[0].double(), (true @ ROT180), atol=1e-3, rtol=0)
    assert ncc(img[0, 0], _drr(rot.volume, rot.get_camera(0), pose, step=1.5)) > 0.99


def test_case_folder_bad_input(example_case, tmp_path):
    bad = tmp_path / "case"
    shutil.copytree(example_case, bad)
    with pytest.raises(InputError, match="not empty"):
        make_example_case(bad)
    (bad / "ct.nrrd").write_bytes(b"another CT")  # two CTs: which one is meant is not guessed
    with pytest.raises(InputError, match=r"holds 2 CTs \(ct.nii.gz, ct.nrrd\); keep one"):
        load_case(bad)
    (bad / "ct.nrrd").unlink()
    (bad / "poses.json").write_text('{"ghost.dcm": [[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]}')
    with pytest.raises(InputError, match="ghost.dcm"):
        load_case(bad)
    (bad / "poses.json").write_text('{"lateral.npy": [[2,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]}')
    with pytest.raises(InputError, match="orthonormal"):
        load_case(bad)
    (bad / "poses.json").unlink()
    (bad / "fiducials.csv").write_text("name,x,y,z\na,1,2\n")
    with pytest.raises(InputError, match="fiducials.csv:2"):
        load_case(bad)
    (bad / "fiducials.csv").unlink()
    case = load_case(bad)
    with pytest.raises(InputError, match="no fiducials.csv"):
        case.get_2d_groundtruth(0)
    assert case[0][1] is None  # no poses.json: no ground truth
    with pytest.raises(InputError, match="no X-ray named"):
        case["nope.dcm"]
    (bad / "ct.nii.gz").unlink()
    with pytest.raises(InputError, match="has no CT"):
        load_case(bad)
    with pytest.raises(InputError, match="not found"):
        load_case(tmp_path / "missing")


# ---------------------------------------------------------------- full size (slow)


@pytest.mark.slow
def test_full_size_deepfluoro_fixture(tmp_path):
    """The real 1536² detector: landmarks within 0.5 px at full size (1436² after the crop) and at 256²."""
    path = tmp_path / "ipcai_2020_full_res_data.h5"
    write_deepfluoro_fixture(path, detector=1536, specimens=(1,), n_projections=2, principal_offset_px=(0.0, 0.0),
                                     render_scale=4)
    with h5py.File(path) as f:
        K = f["proj-params/intrinsic"][()]
        assert K.dtype == np.float32 and K[0, 0] == pytest.approx(-5257.73, rel=1e-4) and K[0, 2] == 767.5
        assert f["proj-params/num-rows"][()] == 1536
        assert f["17-1882/projections/000/image/pixels"].shape == (1536, 1536)
        assert f["17-1882/vol-landmarks/FH-l"].shape == (3, 1)
        assert f["17-1882/projections/000/gt-landmarks/FH-l"].shape == (2, 1)
        assert f["17-1882/vol-seg/labels-def/1"][()] == b"left-hemipelvis"
    sp = DeepFluoroDataset(1, filename=path)
    for i in range(2):
        img, pose = sp[i]
        assert img.shape == (1, 1, 1436, 1436)
        for size in (None, 256):
            err = (sp.get_2d_groundtruth(i, size=size) - sp.stored_2d_landmarks(i, size=size)).norm(dim=1)
            assert float(err.max()) < 0.5
        small = DeepFluoroDataset(1, filename=path, size=256)
        img_s, pose_s = small[i]
        assert ncc(img_s[0, 0], _drr(small.volume, small.get_camera(i), pose_s)) > 0.99


def test_check_pngs_never_replace_a_users_file_nor_land_among_the_xrays(example_case, tmp_path):
    """``datasets check --out``: the PNGs replaced a user's file of their name (``lateral_xray.png``), two X-rays
    of one stem (``a.dcm``, ``a.npy``) wrote over each other's, and ``--out CASE/xrays`` put the PNGs among the
    X-rays (the case no longer read).  Now: the user's file is refused before rendering, kept; each X-ray has
    its own PNGs; the X-ray folder is refused; a re-run replaces what the last check wrote."""
    import shutil

    import json
    import socket
    import subprocess

    from xraypose.datasets.case_folder import check_case
    from xraypose.io import OutputError
    from xraypose.output_lock import OutputInUse

    case = tmp_path / "case"
    shutil.copytree(example_case, case)
    with pytest.raises(OutputError, match="the case's X-ray folder"):
        check_case(case, case / "xrays")
    assert sorted(p.name for p in (case / "xrays").iterdir()) == ["lao20_caud10.dcm", "lateral.json", "lateral.npy"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "lateral_xray.png").write_text("mine")
    with pytest.raises(OutputError, match="lateral_xray.png, not written there by xraypose"):
        check_case(case, mine)
    assert (mine / "lateral_xray.png").read_text() == "mine"
    shutil.copy(case / "xrays" / "lateral.npy", case / "xrays" / "lao20_caud10.npy")  # a second X-ray of one stem
    shutil.copy(case / "xrays" / "lateral.json", case / "xrays" / "lao20_caud10.json")
    for _ in range(2):  # the second run replaces the first's PNGs
        check_case(case, tmp_path / "png")
    held = tmp_path / "held"  # a folder another live xraypose run holds: refused, nothing written
    holder = subprocess.Popen(["sleep", "30"])
    try:
        held.mkdir()
        (held / ".xraypose.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                         "command": "xraypose evaluate", "started": "2026-12-06"}))
        with pytest.raises(OutputInUse, match=f"in use by another xraypose run \\(pid {holder.pid}"):
            check_case(case, held)
    finally:
        holder.kill()
        holder.wait()
    assert [p.name for p in held.iterdir()] == [".xraypose.lock"]
    assert {"lao20_caud10.dcm_xray.png", "lao20_caud10.dcm_drr.png", "lateral_xray.png",
            "lateral_drr.png"} <= {p.name for p in (tmp_path / "png").iterdir()}


def test_command_line_check_and_example(example_case, tmp_path, capsys):
    from xraypose.datasets.__main__ import main

    assert main(["check", str(example_case), "--out", str(tmp_path / "png")]) == 0
    out = capsys.readouterr().out
    assert "DistanceSourceToDetector (0018,1110)" in out and "sidecar JSON lateral.json" in out
    assert out.count("NCC at the pose from poses.json: 1.0000") == 2
    assert (tmp_path / "png" / "lateral_drr.png").is_file()
    assert main(["example", str(example_case)]) == 2  # not empty: refuses to overwrite
    assert "not empty" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "missing")]) == 2
    assert main(["check", str(example_case / "poses.json")]) == 2  # a file: said so, not "not found"
    assert "is a file, not a case folder" in capsys.readouterr().err
    (tmp_path / "afile").write_text("mine")  # an output that is a file: said so ("File exists" was all)
    for args in (["check", str(example_case), "--out", str(tmp_path / "afile")], ["fixtures", str(tmp_path / "afile")]):
        assert main(args) == 2 and "exists and is not a folder" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "mine"


def _scaled_copy(path, tmp_path, key: str, factor: float):
    """A copy of the HDF5 file ``path`` whose (4, 4) dataset ``key`` has its rotation part scaled by ``factor``."""
    bad = tmp_path / f"scaled-{Path(path).name}"
    shutil.copy(path, bad)
    with h5py.File(bad, "a") as f:
        M = np.array(f[key][()])
        M[:3, :3] *= factor
        f[key][...] = M
    return bad


def test_a_ground_truth_pose_that_is_not_rigid_is_refused(deepfluoro, ljubljana, tmp_path):
    """A scaled ground truth (DeepFluoro's gt-poses, Ljubljana's extrinsic) would make every metric against it
    silently wrong: refused, naming the dataset path (it was accepted and evaluated)."""
    path, _ = deepfluoro
    sp = DeepFluoroDataset(1, filename=_scaled_copy(path, tmp_path, "17-1882/projections/000/gt-poses/cam-to-pelvis-vol",
                                                    2.0))
    with pytest.raises(InputError, match="'000/gt-poses/cam-to-pelvis-vol' is not a rigid transform"):
        sp.get_pose(0)
    assert torch.allclose(sp.get_pose(1), DeepFluoroDataset(1, filename=path).get_pose(1))  # the others load
    bad = _scaled_copy(ljubljana[0], tmp_path, "subject01/proj-ap/extrinsic", 1.5)
    with pytest.raises(InputError, match="'proj-ap/extrinsic' is not a rigid transform"):
        LjubljanaDataset(1, filename=bad)


def _edited_copy(path, tmp_path, edits: dict):
    """A copy of the HDF5 file ``path`` whose datasets ``{key: value}`` are replaced (any shape or dtype)."""
    bad = tmp_path / f"edited-{Path(path).name}"
    shutil.copy(path, bad)
    with h5py.File(bad, "a") as f:
        for key, value in edits.items():
            del f[key]
            f[key] = value
    return bad


@pytest.mark.parametrize("key, value, said", [
    ("proj-params/num-rows", np.float64(np.nan), "'/proj-params/num-rows' = nan must be a whole number"),
    ("proj-params/num-cols", np.float64(127.6), "'/proj-params/num-cols' = 127.6 must be a whole number"),
    ("17-1882/projections/000/rot-180-for-up", np.float32(np.nan),
     "'/17-1882/projections/000/rot-180-for-up' = nan must be a whole number in \\[0, 1\\]"),
    ("17-1882/projections/000/rot-180-for-up", np.uint8(2), "'/17-1882/projections/000/rot-180-for-up' = 2.0 must be a whole number in"),
])
def test_deepfluoro_counts_and_flags_must_be_whole_numbers(deepfluoro, tmp_path, key, value, said):
    """A NaN num-rows raised Python's bare ValueError ('cannot convert float NaN to integer'), 127.6 was cut to
    127, and a rot-180-for-up of NaN or 2 read as 1 (the image turned without a word): each is named."""
    bad = _edited_copy(deepfluoro[0], tmp_path, {key: value})
    with pytest.raises(InputError, match=f"edited-ipcai_2020_full_res_data.h5: HDF5 path {said}"):
        DeepFluoroDataset(1, filename=bad)[0]


@pytest.mark.parametrize("kind, key, value, said", [
    ("df", "17-1882/vol/dir-mat", 2 * np.eye(3), "'/17-1882/vol/dir-mat' must hold orthonormal direction cosines"),
    ("df", "17-1882/vol/dir-mat", np.zeros((3, 3)), "'/17-1882/vol/dir-mat' must hold orthonormal direction cosines"),
    ("df", "17-1882/vol/spacing", np.full((3, 1), 1000.0), "'/17-1882/vol': voxel spacing 1e\\+03 mm .* implausible"),
    ("df", "17-1882/vol/origin", np.array([[1e9], [0], [0]]), "'/17-1882/vol': the CT reaches 1e\\+09 mm"),
    ("lj", "subject01/volume/spacing", np.full(3, 1e4), "'/subject01/volume': voxel spacing 1e\\+04 mm .* implausible"),
    ("lj", "subject01/volume/origin", np.array([0, 1e9, 0]), "'/subject01/volume': the CT reaches 1e\\+09 mm"),
])
def test_dataset_volumes_get_the_checks_of_any_ct(deepfluoro, ljubljana, tmp_path, kind, key, value, said):
    """The HDF5 volumes were built without read_volume's checks: a dir-mat of 2·I doubled the voxel size, a zero one
    gave a singular affine, a spacing in µm-as-mm or an origin 1000 km away were evaluated without a word."""
    path = (deepfluoro if kind == "df" else ljubljana)[0]
    bad = _edited_copy(path, tmp_path, {key: value})
    with pytest.raises(InputError, match=f"edited-{path.name}: {said}"):
        (DeepFluoroDataset if kind == "df" else LjubljanaDataset)(1, filename=bad)


@pytest.mark.parametrize("value, said", [(0.5, "non-integer values"), (np.nan, "NaN or infinite values")])
def test_deepfluoro_segmentation_of_non_integer_ids_is_refused(deepfluoro, tmp_path, value, said):
    """vol-seg pixels of 0.5 were cast to label 0 (NaN to an arbitrary integer, with a RuntimeWarning) unseen."""
    path = deepfluoro[0]
    with h5py.File(path, "r") as f:
        shape = f["17-1882/vol-seg/image/pixels"].shape
    bad = _edited_copy(path, tmp_path, {"17-1882/vol-seg/image/pixels": np.full(shape, value, np.float32)})
    with pytest.raises(InputError, match=f"'/17-1882/vol-seg/image/pixels': labelmap has {said}"):
        DeepFluoroDataset(1, filename=bad)


def test_dataset_fiducials_that_are_nan_or_none_are_named(deepfluoro, ljubljana, tmp_path):
    """Ljubljana's points of NaN were loaded (evaluate then said only 'fiducials have NaN or infinite coordinates',
    naming no file), and a points (0, 3) or an empty vol-landmarks group gave no fiducials ('no fiducials: the
    registration errors need at least one 3D point'): each is named by its path in the file."""
    bad = _edited_copy(ljubljana[0], tmp_path, {"subject01/points": np.array([[0.0, 1, 2], [np.nan, 0, 0]])})
    with pytest.raises(InputError, match=r"edited-ljubljana.h5: '/subject01/points' has NaN or infinite values"):
        LjubljanaDataset(1, filename=bad)
    bad = _edited_copy(ljubljana[0], tmp_path, {"subject01/points": np.zeros((0, 3))})
    with pytest.raises(InputError, match=r"'/subject01/points' must be \(N, 3\) with N >= 1, got \(0, 3\)"):
        LjubljanaDataset(1, filename=bad)
    bad = tmp_path / "no-landmarks.h5"
    shutil.copy(deepfluoro[0], bad)
    with h5py.File(bad, "a") as f:
        for name in list(f["17-1882/vol-landmarks"]):
            del f[f"17-1882/vol-landmarks/{name}"]
    with pytest.raises(InputError, match="no-landmarks.h5: '/17-1882/vol-landmarks' holds no landmark"):
        DeepFluoroDataset(1, filename=bad)


def _damaged_copy(path, tmp_path, key: str, part: str):
    """A copy of ``path`` whose dataset ``key`` (rewritten gzip-compressed) has its data chunk (``part="data"``) or
    its object header (``"header"``) overwritten with zeros: what an interrupted copy or a bad disk leaves."""
    bad = tmp_path / f"damaged-{part}.h5"
    shutil.copy(path, bad)
    with h5py.File(bad, "a") as f:
        a = f[key][()]
        del f[key]
        f.create_dataset(key, data=a, chunks=a.shape, compression="gzip")
    with h5py.File(bad, "r") as f:
        if part == "data":
            info = f[key].id.get_chunk_info(0)
            start, n = info.byte_offset + 4, info.size - 8
        else:
            start, n = h5py.h5o.get_info(f[key].id).addr, 16
    b = bytearray(bad.read_bytes())
    b[start:start + n] = bytes(n)
    bad.write_bytes(bytes(b))
    return bad


@pytest.mark.parametrize("part", ["data", "header"])
def test_a_damaged_hdf5_dataset_is_named_not_missing_nor_a_traceback(deepfluoro, tmp_path, part):
    """A damaged data chunk raised h5py's OSError ('Can't synchronously read data ...') from deep inside the loader,
    naming no file; a damaged object header was reported as 'missing' though the file lists it."""
    key = "17-1882/projections/001/image/pixels" if part == "data" else "17-1882/projections/001/gt-poses/cam-to-pelvis-vol"
    sp = DeepFluoroDataset(1, filename=_damaged_copy(deepfluoro[0], tmp_path, key, part))
    with pytest.raises(InputError, match=f"damaged-{part}.h5: HDF5 path '/{key}' cannot be read .*: the file is damaged"):
        sp[1]
    sp[0]  # the other projections read
    sp.close()


@pytest.mark.parametrize("kind, key", [("df", "proj-params/intrinsic"), ("lj", "subject01/proj-lat/intrinsic")])
def test_a_principal_point_far_off_the_detector_is_refused_as_a_rigs(deepfluoro, ljubljana, tmp_path, kind, key):
    """A K for another image size (cx a whole detector width beyond the edge) was accepted: registration then started
    from a view that does not see the CT, or ran against a wrong camera. Named with cx as the file's K holds it."""
    path = (deepfluoro if kind == "df" else ljubljana)[0]
    with h5py.File(path, "r") as f:
        K = np.array(f[key][()], dtype=np.float64)
    K[0, 2] += 5000.0
    bad = _edited_copy(path, tmp_path, {key: K})
    with pytest.raises(InputError, match=f"edited-{path.name}: key '/{key}' puts the principal point at "
                                         f"\\(u, v\\) = \\({K[0, 2]:g}, {K[1, 2]:g}\\) pixels, more than one"):
        (DeepFluoroDataset if kind == "df" else LjubljanaDataset)(1, filename=bad)


@pytest.mark.parametrize("kind, edits, said", [
    # the fixture's 128-px detector has 2.328 mm pixels and |f| = 438 px: in µm read as mm, 2328 mm pixels
    ("df", {"proj-params/pixel-col-spacing": 2328.0, "proj-params/pixel-row-spacing": 2328.0},
     r"the pixel spacing '/proj-params/pixel-col-spacing, pixel-row-spacing' must be a number in \[0.001, 1000\] mm"),
    ("df", {"proj-params/pixel-col-spacing": 500.0, "proj-params/pixel-row-spacing": 500.0},  # within: sdd 219 m
     r"the source-to-detector distance \(\|focal\| of '/proj-params/intrinsic' × pixel spacing .* must be a number "
     r"> 0 and <= 100000 mm, got 219072"),
    ("lj", {"subject01/proj-lat/col-spacing": 1e-4, "subject01/proj-lat/row-spacing": 1e-4},
     r"the pixel spacing '/subject01/proj-lat/col-spacing, row-spacing' must be a number in \[0.001, 1000\] mm"),
])
def test_a_detector_in_other_units_is_refused(deepfluoro, ljubljana, tmp_path, kind, edits, said):
    """Pixel spacings in µm or m (read as mm) gave a camera of 1 km sdd or of micrometre pixels, which was
    registered and scored without a word; they get a sidecar's ranges, naming the keys."""
    path = (deepfluoro if kind == "df" else ljubljana)[0]
    bad = _edited_copy(path, tmp_path, edits)
    with pytest.raises(InputError, match=f"edited-{path.name}: {said}"):
        (DeepFluoroDataset if kind == "df" else LjubljanaDataset)(1, filename=bad)


@pytest.mark.parametrize("kind, key, value, said", [
    ("df", "proj-params/intrinsic", np.zeros((3, 3)), "'/proj-params/intrinsic': intrinsic matrix is singular"),
    ("df", "17-1882/projections/000/gt-poses/cam-to-pelvis-vol", np.eye(4) + np.array([[0.0] * 4] * 3 + [[5.0, 0, 0, 0]]),
     "'/17-1882/projections/000/gt-poses/cam-to-pelvis-vol': cam-to-pelvis-vol must end with the row"),
    ("lj", "subject01/proj-lat/intrinsic", np.array([[-50.0, 3, 60], [0, -50, 40], [0, 0, 1]]),
     r"'/subject01/proj-lat': intrinsic matrix must be \[\[fx,0,cu\],\[0,fy,cv\],\[0,0,1\]\] \(no skew\)"),
    ("lj", "subject01/proj-ap/extrinsic", np.diag([1.0, 1, 1, 1000]), "'/subject01/proj-ap': extrinsic must end with"),
])
def test_a_converters_refusal_names_the_file_and_key(deepfluoro, ljubljana, tmp_path, kind, key, value, said):
    """A singular or skewed K and a matrix whose last row is not [0, 0, 0, 1] were refused by the converters in
    words naming neither the file nor the HDF5 path ('intrinsic matrix is singular (zero focal length): ...')."""
    path = (deepfluoro if kind == "df" else ljubljana)[0]
    bad = _edited_copy(path, tmp_path, {key: value})
    with pytest.raises(InputError, match=f"edited-{path.name}: {said}"):
        (DeepFluoroDataset if kind == "df" else LjubljanaDataset)(1, filename=bad).get_pose(0)


def test_deepfluoro_projections_named_without_zero_padding_keep_their_number_order(deepfluoro, tmp_path):
    """Projection groups "8", "9", "10" (a converter's, without the real file's zero padding) were sorted as text:
    index 0 (evaluate's image-000) was projection "10"."""
    bad = tmp_path / "unpadded.h5"
    shutil.copy(deepfluoro[0], bad)
    with h5py.File(bad, "a") as f:
        for old, new in (("000", "8"), ("001", "9"), ("002", "10")):
            f.move(f"17-1882/projections/{old}", f"17-1882/projections/{new}")
    ref, sp = DeepFluoroDataset(1, filename=deepfluoro[0]), DeepFluoroDataset(1, filename=bad)
    for i in range(3):
        assert torch.equal(sp.raw_image(i), ref.raw_image(i)) and torch.equal(sp.get_pose(i), ref.get_pose(i))


def _with_damaged_group_index(path, tmp_path, group: str):
    """A copy of ``path`` in which the B-tree indexing ``group`` is damaged (its "TREE" signature overwritten):
    found by trying each signature until listing ``group`` fails."""
    raw = Path(path).read_bytes()
    bad = tmp_path / "damaged-index.h5"
    start = raw.find(b"TREE")
    while start >= 0:
        bad.write_bytes(raw[:start] + b"XXXX" + raw[start + 4:])
        with h5py.File(bad, "r") as f:
            try:
                g = f[group]
            except (KeyError, RuntimeError):  # an index above it
                g = None
            try:
                g is None or len(g)
            except RuntimeError:
                return bad
        start = raw.find(b"TREE", start + 1)
    pytest.skip(f"no B-tree of {group} found in this h5py's layout")


@pytest.mark.parametrize("group", [
    "17-1882/vol-landmarks",  # listed: h5py's RuntimeError ('wrong B-tree signature') escaped as a traceback
    "17-1882/projections/000/gt-poses",  # a dataset in it read: said to be "missing"
])
def test_a_damaged_hdf5_group_index_is_named(deepfluoro, tmp_path, group):
    bad = _with_damaged_group_index(deepfluoro[0], tmp_path, group)
    with pytest.raises(InputError, match=f"damaged-index.h5: HDF5 group '/{group}' cannot be read .*wrong B-tree "
                                         r"signature.*: the file is damaged"):
        DeepFluoroDataset(1, filename=bad).get_pose(0)


def test_a_deepfluoro_extrinsic_that_is_not_rigid_is_named_itself(deepfluoro, tmp_path):
    """A scaled proj-params/extrinsic made every ground truth non-rigid, refused as '000/gt-poses/cam-to-pelvis-vol
    is not a rigid transform' (the file's pose was fine); it is named when the file is opened."""
    bad = _scaled_copy(deepfluoro[0], tmp_path, "proj-params/extrinsic", 1.5)
    with pytest.raises(InputError, match="the pose from 'proj-params/extrinsic' is not a rigid transform"):
        DeepFluoroDataset(1, filename=bad).get_pose(0)
