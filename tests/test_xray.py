"""Reading X-rays: DICOM (single/multi-frame, MONOCHROME1, rescale, intrinsics, angles, PatientOrientation),
PNG / TIFF / NPY with user intrinsics, the header report and overrides, and bad input."""

import json

import numpy as np
import pytest
import torch
from conftest import requires_shared, shared_path

from xraypose.camera import Camera, carm_pose
from xraypose.errors import InputError
from xraypose.xray import (
    _main, orientation_letters, patient_orientation_vectors, read_xray, write_dicom_xray,
)

F64 = torch.float64


def _pixels(h=24, w=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(100, 60000, size=(h, w)).astype(np.uint16)


def test_single_frame_dicom_intrinsics_and_report(tmp_path):
    cam = Camera(sdd=1020.0, height=24, width=32, delx=0.3, dely=0.25, x0=1.5, y0=-0.75)
    px = _pixels()
    f = tmp_path / "a.dcm"
    write_dicom_xray(f, px, camera=cam, intensity_relationship="LIN")
    xr = read_xray(f)
    assert xr.camera == cam
    assert xr.kind == "intensity"
    assert xr.image.dtype == torch.float32 and torch.equal(xr.image, torch.from_numpy(px.astype(np.float32)))
    h = xr.header
    assert h["sdd"] == {"value": 1020.0, "from": "DistanceSourceToDetector (0018,1110)"}
    assert h["delx"]["value"] == 0.3 and "ImagerPixelSpacing" in h["delx"]["from"]
    assert h["dely"]["value"] == 0.25
    assert h["pp_col"]["value"] == 1.5 and "DetectorActiveOrigin" in h["pp_col"]["from"]
    rep = xr.report()
    for word in ("DistanceSourceToDetector (0018,1110)", "ImagerPixelSpacing", "DetectorActiveOrigin", "1020"):
        assert word in rep
    d = xr.to_dict()
    json.dumps(d)
    assert d["camera"]["sdd_mm"] == 1020.0
    assert xr.pose is None  # no angles


def test_overrides_win_and_are_reported(tmp_path):
    cam = Camera(sdd=1020.0, height=24, width=32, delx=0.3)
    f = tmp_path / "a.dcm"
    write_dicom_xray(f, _pixels(), camera=cam, primary=10.0, secondary=5.0, sod=600.0)
    xr = read_xray(f, sdd=1100.0, delx=0.5, dely=0.5, x0=2.0, primary=-20.0, kind="attenuation")
    assert xr.camera.sdd == 1100.0 and xr.camera.delx == 0.5 and xr.camera.x0 == 2.0
    assert xr.header["sdd"]["from"].startswith("user (the file says 1020")
    assert xr.angles["primary"] == -20.0 and xr.angles["secondary"] == 5.0
    assert xr.kind == "attenuation" and xr.header["kind"]["from"] == "user"
    given = Camera(sdd=900.0, height=24, width=32, delx=1.0)
    assert read_xray(f, camera=given).camera == given
    with pytest.raises(InputError, match="sizes differ"):
        read_xray(f, camera=Camera(sdd=900.0, height=32, width=24, delx=1.0))



def test_typed_overrides_and_the_older_dict_form_read_alike(tmp_path):
    from xraypose.xray import XRayOverrides, read_dicom_xray, read_image_xray

    cam = Camera(sdd=1020.0, height=24, width=32, delx=0.3)
    f = tmp_path / "a.dcm"
    write_dicom_xray(f, _pixels(), camera=cam, primary=10.0, secondary=5.0, sod=600.0)
    by_keywords = read_xray(f, sdd=1100.0, primary=-20.0, frames=0).to_dict()
    typed = XRayOverrides(sdd=1100.0, primary=-20.0)
    assert read_xray(f, overrides=typed).to_dict() == by_keywords
    assert read_dicom_xray(f, typed).to_dict() == by_keywords
    assert read_dicom_xray(f, {"sdd": 1100.0, "primary": -20.0}).to_dict() == by_keywords  # the older dict form
    assert read_dicom_xray(f, sdd=1100.0, primary=-20.0).to_dict() == by_keywords
    # a keyword given with a value other than its default wins over the overrides
    assert read_xray(f, overrides=typed, sdd=1200.0).camera.sdd == 1200.0
    assert read_xray(f, overrides=typed, sdd=1200.0).angles["primary"] == -20.0
    with pytest.raises(InputError, match="unknown X-ray setting 'sdd_mm'"):
        read_dicom_xray(f, {"sdd_mm": 1100.0})
    with pytest.raises(InputError, match="unknown pixel kind"):
        read_xray(f, overrides={"kind": "bright"})
    npy = tmp_path / "a.npy"
    np.save(npy, _pixels().astype(np.float32))
    assert read_image_xray(npy, {"sdd": 1000.0, "delx": 0.5}).camera == read_xray(npy, sdd=1000.0, delx=0.5).camera

def test_multiframe_reduction(tmp_path):
    stack = np.stack([_pixels(seed=s) for s in range(3)])
    f = tmp_path / "m.dcm"
    write_dicom_xray(f, stack, camera=Camera(sdd=1000.0, height=24, width=32, delx=0.3))
    xr = read_xray(f)
    assert torch.equal(xr.image, torch.from_numpy(stack[0].astype(np.float32)))
    assert any("frame 0 used" in n for n in xr.notes)
    from xraypose.xray.record import notes_to_show  # register prints it (not only pose.json's record)

    assert [n for n in notes_to_show(xr.notes) if "frame 0 used" in n]
    assert torch.equal(read_xray(f, frames=2).image, torch.from_numpy(stack[2].astype(np.float32)))
    assert torch.equal(read_xray(f, frames="max").image, torch.from_numpy(stack.max(0).astype(np.float32)))
    torch.testing.assert_close(read_xray(f, frames="sum").image, torch.from_numpy(stack.sum(0).astype(np.float32)))
    with pytest.raises(InputError, match="frame 5 does not exist"):
        read_xray(f, frames=5)
    with pytest.raises(InputError, match="frames must be"):
        read_xray(f, frames="median")
    for bad in (True, 1.5):  # int() took them: frame 1
        with pytest.raises(InputError, match="frames must be"):
            read_xray(f, frames=bad)


@pytest.mark.parametrize("frames", ["max", "sum", "mean"])
def test_frames_are_reduced_after_the_rescale_and_monochrome1(tmp_path, frames):
    """A reduction is of the frames' values: the stored numbers were reduced first, so a MONOCHROME1 file's "max"
    was its darkest frame's, and a "sum" got the intercept once and was inverted over one frame's range (negative)."""
    stack = np.stack([_pixels(seed=s) for s in range(3)])
    f = tmp_path / "m1.dcm"
    write_dicom_xray(f, stack, camera=Camera(sdd=1000.0, height=24, width=32, delx=0.3), photometric="MONOCHROME1",
                     rescale=(2.0, -100.0))
    lo, hi = -100.0, 65535 * 2.0 - 100.0
    values = hi + lo - (stack.astype(np.float64) * 2.0 - 100.0)  # each frame as read alone
    np.testing.assert_allclose(read_xray(f, frames=1).image.numpy(), values[1], rtol=1e-6)
    np.testing.assert_allclose(read_xray(f, frames=frames).image.numpy(), getattr(values, frames)(0), rtol=1e-6)
    assert read_xray(f, frames=frames).header["frames"]["value"] == f"{frames} of 3"


def test_frames_of_an_xray_of_one_frame_are_checked_too(tmp_path):
    """``frames`` was passed over on a one-frame X-ray: case.json's ``{"frames": 5}`` or a misspelt
    reduction read the image without a word."""
    one = tmp_path / "one.dcm"
    write_dicom_xray(one, _pixels(), camera=Camera(sdd=1000.0, height=24, width=32, delx=0.3))
    for ok in (0, -1, "max", "mean"):
        assert read_xray(one, frames=ok).image.shape == (24, 32)
    assert read_xray(one, frames="all").image.shape == (1, 24, 32)
    with pytest.raises(InputError, match=r"one.dcm: frame 5 does not exist \(1 frame\)"):
        read_xray(one, frames=5)
    for bad in ("median", True, 0.5):
        with pytest.raises(InputError, match="frames must be"):
            read_xray(one, frames=bad)


def test_monochrome1_and_rescale(tmp_path):
    cam = Camera(sdd=1000.0, height=24, width=32, delx=0.3)
    px = _pixels()
    f = tmp_path / "m1.dcm"
    write_dicom_xray(f, px, camera=cam, photometric="MONOCHROME1", rescale=(2.0, -100.0))
    xr = read_xray(f)
    v = px.astype(np.float64) * 2.0 - 100.0
    lo, hi = -100.0, 65535 * 2.0 - 100.0
    np.testing.assert_allclose(xr.image.numpy(), (hi + lo - v).astype(np.float32), rtol=1e-6)
    assert xr.header["RescaleSlope"]["value"] == 2.0 and xr.header["RescaleIntercept"]["value"] == -100.0
    assert any("MONOCHROME1 inverted" in n for n in xr.notes)
    # order preserved but reversed: the brightest stored pixel is now the darkest
    assert int(torch.argmin(xr.image)) == int(np.argmax(px))


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_a_modality_lut_sequence_is_applied(tmp_path, photometric):
    """A ModalityLUTSequence maps the stored values (it was ignored: the stored values were read as they are); a
    RescaleSlope beside it is not used; MONOCHROME1 is inverted over the table's range."""
    import pydicom
    from pydicom.dataset import Dataset

    cam = Camera(sdd=1000.0, height=24, width=32, delx=0.3)
    px = _pixels() % 4096
    f = tmp_path / "lut.dcm"
    write_dicom_xray(f, px, camera=cam, photometric=photometric, rescale=(2.0, -100.0))
    ds = pydicom.dcmread(f)
    item = Dataset()
    item.LUTDescriptor = [4000, 50, 16]  # 4000 entries for stored values 50 ... 4049
    item.ModalityLUTType = "US"
    table = (np.arange(4000) * 7 % 60000 + 10).astype(np.uint16)
    item.LUTData = table.tobytes()
    item["LUTData"].VR = "OW"
    ds.ModalityLUTSequence = [item]
    ds.save_as(f)
    xr = read_xray(f)
    v = table[np.clip(px.astype(np.int64) - 50, 0, 3999)].astype(np.float64)
    if photometric == "MONOCHROME1":
        v = float(table.min()) + float(table.max()) - v
    np.testing.assert_array_equal(xr.image.numpy(), v.astype(np.float32))
    assert "4000 entries" in xr.header["ModalityLUTSequence"]["value"]
    assert any("RescaleSlope/RescaleIntercept not used" in n for n in xr.notes)
    item.LUTDescriptor = [4000, 50, 12]  # no 12-bit table exists (8 or 16)
    ds.save_as(f)
    with pytest.raises(InputError, match=r"ModalityLUTSequence \(0028,3000\) cannot be applied"):
        read_xray(f)


def test_pixel_spacing_with_magnification(tmp_path):
    cam = Camera(sdd=1000.0, height=24, width=32, delx=0.3, dely=0.2)
    f = tmp_path / "ps.dcm"
    write_dicom_xray(f, _pixels(), camera=cam, use_pixel_spacing=True, magnification=1.5, primary=0.0)
    xr = read_xray(f)
    assert xr.camera.delx == pytest.approx(0.3) and xr.camera.dely == pytest.approx(0.2)
    assert "EstimatedRadiographicMagnificationFactor" in xr.header["delx"]["from"]
    # no DistanceSourceToPatient: sod = sdd / magnification
    assert xr.angles["sod"] == pytest.approx(1000.0 / 1.5)
    f2 = tmp_path / "ps2.dcm"
    write_dicom_xray(f2, _pixels(), camera=cam, use_pixel_spacing=True)
    xr2 = read_xray(f2)
    assert xr2.camera.delx == pytest.approx(0.3) and any("PixelSpacing used" in n for n in xr2.notes)


@pytest.mark.parametrize("mirror,roll", [(False, False), (True, False), (True, True), (False, True)])
def test_angles_give_the_pose_and_patient_orientation_sets_mirror_and_roll(tmp_path, mirror, roll):
    iso = torch.tensor([3.0, 160.0, 250.0], dtype=F64)
    cam = Camera(sdd=1020.0, height=24, width=32, delx=0.3, x0=2.0, y0=-1.0, reverse_x_axis=mirror)
    T = carm_pose(25.0, -10.0, 640.0, iso)
    if roll:
        T = T @ torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=F64))
    po = orientation_letters(cam, T)
    f = tmp_path / "p.dcm"
    write_dicom_xray(f, _pixels(), camera=cam, primary=25.0, secondary=-10.0, sod=640.0, patient_orientation=po)
    xr = read_xray(f, isocenter=iso)
    assert xr.camera == cam  # mirror and principal point recovered
    torch.testing.assert_close(xr.pose, T)
    X = torch.randn(10, 3, dtype=F64) * 30 + iso
    torch.testing.assert_close(xr.camera.project(X, xr.pose), cam.project(X, T))
    assert xr.header["primary"]["from"] == "PositionerPrimaryAngle (0018,1510)"
    assert xr.header["sod"]["from"] == "DistanceSourceToPatient (0018,1111)"
    # without PatientOrientation, the default (no mirror, no roll) is used
    xr2 = read_xray(f, isocenter=iso, use_patient_orientation=False)
    torch.testing.assert_close(xr2.pose, carm_pose(25.0, -10.0, 640.0, iso))
    assert xr2.camera.reverse_x_axis is False


def test_patient_orientation_letters():
    u, v = patient_orientation_vectors("L\\F")
    np.testing.assert_allclose(u, [-1, 0, 0])
    np.testing.assert_allclose(v, [0, 0, -1])
    u, v = patient_orientation_vectors(["AR", "H"])
    np.testing.assert_allclose(u, np.array([1, 1, 0]) / np.sqrt(2))
    with pytest.raises(InputError, match="letter"):
        patient_orientation_vectors(["X", "F"])


def test_angles_without_isocenter_and_initial_pose(tmp_path):
    f = tmp_path / "a.dcm"
    write_dicom_xray(f, _pixels(), camera=Camera(sdd=1000.0, height=24, width=32, delx=0.3), primary=40.0, sod=700.0)
    xr = read_xray(f)
    assert xr.pose is None and xr.angles["secondary"] == 0.0
    assert "default" in xr.header["secondary"]["from"]
    torch.testing.assert_close(xr.initial_pose([0.0, 0.0, 0.0]), carm_pose(40.0, 0.0, 700.0, torch.zeros(3, dtype=F64)))
    f2 = tmp_path / "b.dcm"
    write_dicom_xray(f2, _pixels(), camera=Camera(sdd=1000.0, height=24, width=32, delx=0.3))
    with pytest.raises(InputError, match="no C-arm angles"):
        read_xray(f2).initial_pose([0, 0, 0])


def test_isocenter_beyond_the_detector_is_refused_when_read(tmp_path):
    """DistanceSourceToPatient 2000 > DistanceSourceToDetector 1020 registered to its end, then failed on a
    non-finite similarity; refused when read, naming both values; an override (sod=) that fits is read."""
    f = tmp_path / "a.dcm"
    write_dicom_xray(f, _pixels(), camera=Camera(sdd=1020.0, height=24, width=32, delx=0.3), primary=0.0, sod=2000.0)
    with pytest.raises(InputError, match=r"source-to-isocenter distance 2000 mm \(DistanceSourceToPatient "
                                         r"\(0018,1111\)\) is more than the source-to-detector distance 1020 mm "
                                         r"\(DistanceSourceToDetector \(0018,1110\)\)"):
        read_xray(f)
    assert read_xray(f, sod=600.0).angles["sod"] == 600.0
    xr = read_xray(f, sod=600.0)
    xr.angles["sod"] = 1500.0  # changed after reading (a start's --sod): the pose is refused
    with pytest.raises(InputError, match="1500 mm is more than the source-to-detector distance 1020 mm"):
        xr.initial_pose([0.0, 0.0, 0.0])


def test_header_angles_out_of_range_are_refused_unless_overridden(tmp_path):
    """PositionerPrimaryAngle 720° and PositionerSecondaryAngle 120° were read silently while --angles refuses
    them: the header's values get --angles' ranges, naming the tag; given angles win over them."""
    import pydicom

    cam = Camera(sdd=1000.0, height=24, width=32, delx=0.3)
    for keyword, value, match in (("PositionerPrimaryAngle", "720", r"PositionerPrimaryAngle \(0018,1510\) must be "
                                                                    r"a number in \[-180, 180\] degrees, got 720"),
                                  ("PositionerSecondaryAngle", "120", r"PositionerSecondaryAngle \(0018,1511\) "
                                                                      r"must be a number in \[-90, 90\] degrees")):
        f = tmp_path / f"{keyword}.dcm"
        write_dicom_xray(f, _pixels(), camera=cam, primary=10.0, secondary=5.0, sod=600.0)
        ds = pydicom.dcmread(f)
        setattr(ds, keyword, value)
        ds.save_as(f)
        with pytest.raises(InputError, match=match):
            read_xray(f)
        assert read_xray(f, primary=10.0, secondary=5.0).angles["primary"] == 10.0
    f = tmp_path / "edge.dcm"  # the ranges' ends are read
    write_dicom_xray(f, _pixels(), camera=cam, primary=-180.0, secondary=90.0, sod=600.0)
    assert (read_xray(f).angles["primary"], read_xray(f).angles["secondary"]) == (-180.0, 90.0)


def test_preprocess_follows_kind_and_geometry(tmp_path):
    cam = Camera(sdd=1000.0, height=24, width=32, delx=0.3, x0=1.0)
    L = np.random.default_rng(1).random((24, 32)) * 2
    px = np.round(50000 * np.exp(-L))
    f = tmp_path / "lin.dcm"
    write_dicom_xray(f, px, camera=cam, intensity_relationship="LIN", primary=10.0, sod=600.0)
    xr = read_xray(f, isocenter=[0.0, 0.0, 0.0])
    out = xr.preprocess(crop=2, size=(10, 14))
    assert out.kind == "attenuation" and tuple(out.image.shape) == (10, 14)
    assert out.camera == cam.crop(2, 2, 20, 28).resize(10, 14)
    # a scene random from pixel to pixel reads as noise (few photons): half a photon added before the log of
    # each pixel, then resized (binned before the log only where no photon can be added: photon_offset=0)
    assert [s["step"] for s in out.steps] == ["crop", "beer_lambert", "rescale01", "resize"]
    assert out.steps[1]["photon_offset"]["photons"] == 0.5
    binned = xr.preprocess(crop=2, size=(10, 14), photon_offset=0)
    assert [s["step"] for s in binned.steps] == ["crop", "resize", "beer_lambert", "rescale01"]
    torch.testing.assert_close(out.to_image_pixels(torch.tensor([[2.0, 2.0]], dtype=F64)),
                               torch.tensor([[0.5 * 14 / 28 - 0.5, 0.5 * 10 / 20 - 0.5]], dtype=F64))
    rot = xr.preprocess(rotate_180=True)
    torch.testing.assert_close(rot.pose, xr.pose @ torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=F64)))
    torch.testing.assert_close(rot.initial_pose([0.0, 0.0, 0.0]), rot.pose)
    full = xr.preprocess(photon_offset=0)  # kind "intensity": log(max) - log(I), then [0, 1] (its random
    # scene reads as few photons: "auto" would add half a photon first)
    expect = np.log(px.max()) - np.log(px)
    np.testing.assert_allclose(full.image.numpy(), (expect - expect.min()) / np.ptp(expect), atol=1e-5)


def test_a_cut_or_mixed_multipage_tiff_is_refused(tmp_path):
    """A multi-page TIFF X-ray cut short raised PIL's TypeError ('Missing dimensions') through `xraypose info`,
    `register` and `track`; a page of another bit depth (8-bit among 16-bit) was stacked with the others on
    its own scale (a 'max' or 'sum' of the frames wrong, silently).  Both are now one line naming the file."""
    from PIL import Image

    a16 = _pixels()
    pages = [Image.fromarray(a16) for _ in range(3)]
    pages[0].save(tmp_path / "cut.tif", save_all=True, append_images=pages[1:])
    data = (tmp_path / "cut.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    for frames in (0, "all"):
        with pytest.raises(InputError, match=r"cut\.tif: image data is truncated or corrupt") as e:
            read_xray(tmp_path / "cut.tif", frames=frames, require_intrinsics=False)
        assert "\n" not in str(e.value)
    pages[1] = Image.fromarray((a16 // 256).astype(np.uint8))
    pages[0].save(tmp_path / "mixed.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(InputError, match=r"mixed\.tif: frame 1 holds uint8 pixels but frame 0 uint16"):
        read_xray(tmp_path / "mixed.tif", frames="max", require_intrinsics=False)
    pages[1] = Image.fromarray(a16)
    pages[0].save(tmp_path / "ok.tif", save_all=True, append_images=pages[1:])
    assert read_xray(tmp_path / "ok.tif", frames="all", require_intrinsics=False).image.shape == (3, 24, 32)


def test_png_tiff_npy_with_user_intrinsics(tmp_path):
    from PIL import Image

    cam = Camera(sdd=1000.0, height=24, width=32, delx=0.4)
    a16 = _pixels()
    Image.fromarray(a16).save(tmp_path / "x16.png")
    Image.fromarray((a16 // 256).astype(np.uint8)).save(tmp_path / "x8.png")
    Image.fromarray(a16.astype(np.float32) / 7).save(tmp_path / "xf.tif")
    np.save(tmp_path / "x.npy", a16.astype(np.float32))
    for name, expect in [("x16.png", a16), ("x8.png", a16 // 256), ("xf.tif", a16.astype(np.float32) / 7),
                         ("x.npy", a16)]:
        xr = read_xray(tmp_path / name, camera=cam)
        np.testing.assert_allclose(xr.image.numpy(), np.asarray(expect, dtype=np.float32), rtol=1e-6)
        assert xr.camera == cam and xr.kind == "attenuation"
        assert any("assumed 'attenuation'" in n for n in xr.notes)
    xr = read_xray(tmp_path / "x.npy", sdd=900.0, delx=0.5, kind="intensity")
    assert xr.camera == Camera(sdd=900.0, height=24, width=32, delx=0.5) and xr.kind == "intensity"
    with pytest.raises(InputError, match="missing source-to-detector distance"):
        read_xray(tmp_path / "x.npy")
    assert read_xray(tmp_path / "x.npy", require_intrinsics=False).camera is None
    # sidecar JSON
    (tmp_path / "x.json").write_text(json.dumps({"sdd_mm": 800.0, "delx_mm": 0.6, "x0_mm": 3.0, "kind": "intensity",
                                                 "primary_deg": 30.0, "sod_mm": 500.0}))
    xr = read_xray(tmp_path / "x.npy", isocenter=[0, 0, 0])
    assert xr.camera == Camera(sdd=800.0, height=24, width=32, delx=0.6, x0=3.0)
    assert xr.kind == "intensity" and xr.header["sdd"]["from"].startswith("sidecar JSON x.json")
    torch.testing.assert_close(xr.pose, carm_pose(30.0, 0.0, 500.0, torch.zeros(3, dtype=F64)))
    (tmp_path / "x.json").write_text(json.dumps({"sdd_mm": 800.0, "delx_mm": 0.6, "height": 99}))
    with pytest.raises(InputError, match="sizes differ"):
        read_xray(tmp_path / "x.npy")
    # colour
    Image.fromarray(np.stack([a16 // 256, a16 // 512, a16 // 256], -1).astype(np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(InputError, match="colour"):
        read_xray(tmp_path / "c.png", camera=cam)


def _png16(path, arr, color_type):
    """A 16-bit PNG of ``arr`` (H, W) or (H, W, C) of the given PNG colour type (0 grey, 2 RGB, 4 grey+alpha, 6 RGBA);
    Pillow writes none but the grey one."""
    import struct
    import zlib

    h, w = arr.shape[:2]
    raw = b"".join(b"\0" + arr[r].astype(">u2").tobytes() for r in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("color_type,what", [(4, "grey with alpha"), (2, "colour"), (6, "colour")])
def test_a_16_bit_png_with_alpha_or_colour_is_refused(tmp_path, color_type, what):
    """Pillow decodes 16-bit grey+alpha and colour PNGs to 8 bits a channel: the X-ray was read as its high bytes
    (0 ... 255, equal channels passing as grey) without a word."""
    px = _pixels()
    _png16(tmp_path / "g.png", px, 0)  # 16-bit grey: read exactly
    np.testing.assert_array_equal(read_xray(tmp_path / "g.png", sdd=1000, delx=0.3).image.numpy(), px)
    chans = {2: [px] * 3, 4: [px, np.full_like(px, 65535)], 6: [px] * 3 + [np.full_like(px, 65535)]}[color_type]
    _png16(tmp_path / "x.png", np.stack(chans, -1), color_type)
    with pytest.raises(InputError, match=f"16-bit {what} image .*Pillow reads only its high 8 bits"):
        read_xray(tmp_path / "x.png", sdd=1000, delx=0.3)


@pytest.mark.parametrize("mode", ["LA", "RGBA", "P"])
def test_an_8_bit_png_with_transparent_pixels_is_read_with_a_note(tmp_path, mode, capsys):
    """Its alpha was dropped without a word.  xraypose takes no mask from it (an X-ray's mask comes from
    preprocessing and follows no later crop), so the grey values are read and a note says how many pixels were
    not opaque; register prints it.  An all-opaque alpha says nothing: no note."""
    from PIL import Image

    from xraypose.cli.register import _read_xray

    g = (np.arange(40 * 48).reshape(40, 48) % 251).astype(np.uint8)
    for clear in (0, 7):
        alpha = np.full_like(g, 255)
        alpha.reshape(-1)[:clear] = np.arange(clear) * 30  # transparent and partly so
        f = tmp_path / f"{mode}{clear}.png"
        if mode == "P":  # a palette with a transparent entry (tRNS): the first `clear` pixels use it
            im = Image.fromarray(np.where(alpha < 255, 0, 1 + g % 200).astype(np.uint8), mode="P")
            im.putpalette([0, 0, 0] + [v for i in range(255) for v in (i, i, i)])
            im.save(f, transparency=0) if clear else im.save(f)
        else:
            Image.fromarray(np.dstack([g] * (3 if mode == "RGBA" else 1) + [alpha]), mode=mode).save(f)
        xr = read_xray(f, sdd=1000, delx=0.3)
        assert Image.open(f).mode == mode and xr.shape == (40, 48)
        if mode != "P":
            np.testing.assert_array_equal(xr.image.numpy(), g)
        notes = [n for n in xr.notes if "alpha" in n]
        assert notes == ([f"alpha channel ignored: {clear} of 1920 pixels are transparent or partly so (alpha < 255); "
                          "their grey values are registered as they are (xraypose takes no mask from alpha: crop them "
                          "out, or save the X-ray without alpha)"] if clear else []), notes
        _read_xray(f, None, None, {"sdd": 1000.0, "delx": 0.3}, 0)
        assert ("note: " in capsys.readouterr().out) == bool(clear)


def _rgb_dicom(path, rgb, photometric="RGB"):
    """An 8-bit colour DICOM X-ray of ``rgb`` (H, W, 3) or (F, H, W, 3), interleaved (PlanarConfiguration 0)."""
    import pydicom

    write_dicom_xray(path, np.zeros(rgb.shape[-3:-1], np.uint16), camera=Camera(sdd=1000.0, height=rgb.shape[-3],
                                                                                width=rgb.shape[-2], delx=0.3))
    ds = pydicom.dcmread(path)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, photometric, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if rgb.ndim == 4:
        ds.NumberOfFrames = rgb.shape[0]
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    ds.save_as(path)
    return path


def test_a_colour_dicom_of_equal_channels_is_grey_as_a_png_is(tmp_path):
    """An RGB DICOM whose channels are equal (a grey X-ray saved in colour) was refused while the same PNG was read;
    both now read it as grey, and both refuse one whose channels differ."""
    from PIL import Image

    g = (np.arange(24 * 32).reshape(24, 32) % 200 + 20).astype(np.uint8)
    for rgb, ok in ((np.dstack([g] * 3), True), (np.dstack([g, g // 2, g]), False)):
        Image.fromarray(rgb).save(tmp_path / "x.png")
        _rgb_dicom(tmp_path / "x.dcm", rgb)
        if ok:
            np.testing.assert_array_equal(read_xray(tmp_path / "x.png", sdd=1000, delx=0.3).image.numpy(), g)
            xr = read_xray(tmp_path / "x.dcm")
            np.testing.assert_array_equal(xr.image.numpy(), g)
            assert "RGB image of equal colour channels read as greyscale" in xr.notes
        else:
            with pytest.raises(InputError, match=r"x\.png: colour image; X-rays must be greyscale$"):
                read_xray(tmp_path / "x.png", sdd=1000, delx=0.3)
            with pytest.raises(InputError, match=r"x\.dcm: colour DICOM image \(RGB, its colour channels differ\); "
                                                 "X-rays must be greyscale$"):
                read_xray(tmp_path / "x.dcm")
    cine = _rgb_dicom(tmp_path / "cine.dcm", np.stack([np.dstack([g + i] * 3) for i in range(3)]))
    np.testing.assert_array_equal(read_xray(cine, frames="all").image.numpy(), np.stack([g + i for i in range(3)]))
    ybr = _rgb_dicom(tmp_path / "ybr.dcm", np.dstack([g, np.full_like(g, 128), np.full_like(g, 128)]), "YBR_FULL")
    np.testing.assert_array_equal(read_xray(ybr).image.numpy(), g)  # (pydicom gives it as RGB)


@pytest.mark.parametrize("keyword, dtype, bits", [("FloatPixelData", "<f4", 32), ("DoubleFloatPixelData", "<f8", 64)])
def test_a_dicom_of_float_pixel_data_is_read(tmp_path, keyword, dtype, bits):
    """FloatPixelData (7FE0,0008) and DoubleFloatPixelData (7FE0,0009) were refused as "no pixel data"; pydicom
    decodes them.  A double that does not fit float32 is named, as an NPY's is."""
    import pydicom

    g = np.linspace(-1.5, 3.25, 24 * 32).reshape(24, 32)
    f = tmp_path / "x.dcm"
    for big in (None,) if bits == 32 else (None, 1e300):
        write_dicom_xray(f, np.zeros((24, 32), np.uint16), camera=Camera(sdd=1000.0, height=24, width=32, delx=0.3))
        ds = pydicom.dcmread(f)
        for k in ("PixelData", "RescaleSlope", "RescaleIntercept", "BitsStored", "HighBit", "PixelRepresentation"):
            if k in ds:
                delattr(ds, k)
        ds.BitsAllocated = bits
        px = g.copy()
        px[3, 4] = px[3, 4] if big is None else big
        setattr(ds, keyword, px.astype(dtype).tobytes())
        ds.save_as(f)
        if big is None:
            xr = read_xray(f)
            np.testing.assert_allclose(xr.image.numpy(), g, rtol=1e-6)
            assert xr.header["pixel_type"]["from"] == f"{keyword} (7FE0,000{8 if bits == 32 else 9})"
        else:
            with pytest.raises(InputError, match=r"x\.dcm: pixel value 1e\+300 does not fit float32"):
                read_xray(f)


def test_a_white_is_zero_tiff_is_inverted_at_every_bit_depth(tmp_path):
    """A TIFF of PhotometricInterpretation 0 (WhiteIsZero, DICOM's MONOCHROME1): Pillow inverts 8-bit pages but
    gave 16-bit ones as stored, so a 16-bit WhiteIsZero X-ray was read with bone and air swapped."""
    from PIL import Image, TiffImagePlugin

    white_is_zero = TiffImagePlugin.ImageFileDirectory_v2()
    white_is_zero[262] = 0
    px = _pixels()
    Image.fromarray(px).save(tmp_path / "w16.tif", tiffinfo=white_is_zero, save_all=True,
                             append_images=[Image.fromarray(px[::-1].copy())])
    xr = read_xray(tmp_path / "w16.tif", sdd=1000, delx=0.3, frames="all")
    np.testing.assert_array_equal(xr.image.numpy(), np.stack([65535 - px, 65535 - px[::-1]]))
    assert any("WhiteIsZero) inverted" in n and "65535 − v" in n for n in xr.notes)
    p8 = (px // 256).astype(np.uint8)
    Image.fromarray(p8).save(tmp_path / "w8.tif", tiffinfo=white_is_zero)  # Pillow stores 255 − v, reads v back
    xr8 = read_xray(tmp_path / "w8.tif", sdd=1000, delx=0.3)
    np.testing.assert_array_equal(xr8.image.numpy(), p8)
    assert not any("WhiteIsZero" in n for n in xr8.notes)  # Pillow's own inversion, not a second one


def test_a_12_bit_jpeg_names_the_decoder_to_install(tmp_path):
    """12-bit JPEG (JPEG Extended, common in CR/DX archives): Pillow, the decoder at hand, does not support it; the
    error said so without naming the package that does."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGExtended12Bit

    f = tmp_path / "j12.dcm"
    write_dicom_xray(f, _pixels() % 4096, camera=Camera(sdd=1000.0, height=24, width=32, delx=0.3))
    ds = pydicom.dcmread(f)
    ds.file_meta.TransferSyntaxUID = JPEGExtended12Bit
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc1" + bytes(64)])
    ds["PixelData"].VR = "OB"
    ds.save_as(f, enforce_file_format=True)
    try:
        ds.pixel_array
    except Exception as e:  # noqa: BLE001
        if "does not support" not in str(e):
            pytest.skip(f"a 12-bit JPEG decoder is installed or Pillow is missing ({e})")
    else:
        pytest.skip("a 12-bit JPEG decoder is installed")
    with pytest.raises(InputError, match=r"cannot decode the DICOM pixel data .*; to decode JPEG Extended .*install "
                                         r"pylibjpeg and pylibjpeg-libjpeg"):
        read_xray(f)


def _tiff(path, arr, sample_format):
    """A one-page uncompressed little-endian TIFF of ``arr`` (H, W) with the given SampleFormat (1 unsigned, 2 signed,
    3 float): Pillow writes neither signed 8-bit nor unsigned 32-bit pages."""
    import struct

    h, w = arr.shape
    data = np.ascontiguousarray(arr, arr.dtype.newbyteorder("<")).tobytes()
    entries = [(256, 3, w), (257, 3, h), (258, 3, 8 * arr.dtype.itemsize), (259, 3, 1), (262, 3, 1), (273, 4, None),
               (277, 3, 1), (278, 3, h), (279, 4, len(data)), (339, 3, sample_format)]
    start = 8 + 2 + 12 * len(entries) + 4
    ifd = b"".join(struct.pack("<HHIHH", tag, typ, 1, val, 0) if typ == 3 else
                   struct.pack("<HHII", tag, typ, 1, start if val is None else val) for tag, typ, val in entries)
    path.write_bytes(b"II*\0" + struct.pack("<IH", 8, len(entries)) + ifd + struct.pack("<I", 0) + data)


@pytest.mark.parametrize("dtype,sample_format", [(np.int8, 2), (np.uint32, 1)])
def test_tiff_pages_read_with_their_sample_format(tmp_path, dtype, sample_format):
    """Pillow reads a signed 8-bit TIFF as unsigned (−59 read as 197) and an unsigned 32-bit one as signed (values
    of 2³¹ and more read negative): both were taken as they came."""
    info = np.iinfo(dtype)
    px = np.linspace(info.min, info.max, 24 * 32).reshape(24, 32).astype(dtype)
    _tiff(tmp_path / "x.tif", px, sample_format)
    xr = read_xray(tmp_path / "x.tif", sdd=1000, delx=0.3)
    np.testing.assert_allclose(xr.image.numpy(), px.astype(np.float64), rtol=1e-7)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_a_tiff_of_samples_pillow_cannot_decode_names_them(tmp_path, dtype):
    """64- and 16-bit float TIFFs: Pillow cannot identify them and gives no reason ("not a readable TIF image")."""
    _tiff(tmp_path / "x.tif", np.linspace(0, 1, 24 * 32).reshape(24, 32).astype(dtype), 3)
    bits = 8 * np.dtype(dtype).itemsize
    with pytest.raises(InputError, match=rf"not a readable TIF image \(its samples are {bits}-bit floating-point, "
                                         r"which Pillow does not decode: save it with .* float32 for floats\)"):
        read_xray(tmp_path / "x.tif", sdd=1000, delx=0.3)


@pytest.mark.parametrize("channels", [1, 2])
def test_an_npy_of_one_or_two_channels_last_is_one_image(tmp_path, channels):
    """(H, W, 1) (a channel-last array from PIL, OpenCV, torch) and (H, W, 2) (grey + alpha) were read as H frames of
    W × 1 or W × 2 pixels: frame 0, one row of the X-ray, was used."""
    px = _pixels()
    arr = np.stack([px, np.full_like(px, 65535)][:channels], -1)
    np.save(tmp_path / "x.npy", arr)
    xr = read_xray(tmp_path / "x.npy", sdd=1000, delx=0.3)
    np.testing.assert_array_equal(xr.image.numpy(), px)
    assert any("grey + alpha picture" in n for n in xr.notes) == (channels == 2)


@pytest.mark.parametrize("channels, dtype", [(2, np.uint16), (4, np.uint8), (2, np.float32)])
def test_an_npy_with_alpha_notes_its_transparent_pixels_as_a_png_does(tmp_path, capsys, channels, dtype):
    """A PNG's alpha below full opacity is noted ("alpha channel ignored"); an NPY's (H, W, 2) grey + alpha or
    (H, W, 4) RGBA had its alpha dropped without a word.  Full opacity is the type's maximum (1.0 for floats);
    an opaque alpha: no note."""
    from xraypose.cli.register import _read_xray

    full = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0
    g = (np.arange(24 * 32).reshape(24, 32) % 200 + 1).astype(dtype)
    for clear in (0, 5):
        alpha = np.full_like(g, full)
        alpha.reshape(-1)[:clear] = 0
        f = tmp_path / f"x{clear}.npy"
        np.save(f, np.stack([g] * (channels - 1) + [alpha], -1))
        xr = read_xray(f, sdd=1000, delx=0.3)
        np.testing.assert_array_equal(xr.image.numpy(), g.astype(np.float32))
        notes = [n for n in xr.notes if n.startswith("alpha channel ignored")]
        assert notes == ([f"alpha channel ignored: {clear} of 768 pixels are transparent or partly so (alpha < "
                          f"{full:g}); their grey values are registered as they are (xraypose takes no mask from "
                          "alpha: crop them out, or save the X-ray without alpha)"] if clear else []), notes
        _read_xray(f, None, None, {"sdd": 1000.0, "delx": 0.3}, 0)
        assert ("alpha channel ignored" in capsys.readouterr().out) == bool(clear)


@pytest.mark.parametrize("sop, what", [("1.2.840.10008.5.1.4.1.1.2", "CT series"),
                                       ("1.2.840.10008.5.1.4.1.1.66.4", "segmentation")])
def test_a_ct_slice_or_a_segmentation_is_refused_as_an_x_ray(tmp_path, sop, what):
    """A CT slice given as the X-ray was read as one of display values (HU, bone bright) without a word; the SOP
    class may be only in the file meta (the dataset's empty, as in the real sample series)."""
    import pydicom

    f = tmp_path / "slice.dcm"
    write_dicom_xray(f, _pixels(), camera=Camera(sdd=1000.0, height=24, width=32, delx=0.3))
    ds = pydicom.dcmread(f)
    ds.SOPClassUID = ""
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.save_as(f)
    with pytest.raises(InputError, match=rf"a slice of a {what}.*not a projection X-ray: give the CT as the CT"):
        read_xray(f)


def test_bad_files_give_clear_errors(tmp_path):
    cam = Camera(sdd=1000.0, height=24, width=32, delx=0.3)
    with pytest.raises(InputError, match="not found"):
        read_xray(tmp_path / "nope.dcm")
    (tmp_path / "text.dcm").write_text("this is not a DICOM file\n" * 20)
    with pytest.raises(InputError, match="not a DICOM file"):
        read_xray(tmp_path / "text.dcm")
    good = tmp_path / "good.dcm"
    write_dicom_xray(good, _pixels(), camera=cam)
    data = good.read_bytes()
    (tmp_path / "trunc.dcm").write_bytes(data[: len(data) - 500])
    with pytest.raises(InputError, match="truncated|incomplete|corrupt"):
        read_xray(tmp_path / "trunc.dcm")
    (tmp_path / "head.dcm").write_bytes(data[:200])
    with pytest.raises(InputError):
        read_xray(tmp_path / "head.dcm")
    # a DICOM without pixels (e.g. a structured report)
    import pydicom

    ds = pydicom.dcmread(good)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(InputError, match="no pixel data"):
        read_xray(tmp_path / "nopix.dcm")
    # zero pixel spacing
    ds = pydicom.dcmread(good)
    ds.ImagerPixelSpacing = ["0", "0"]
    ds.save_as(tmp_path / "zero.dcm")
    with pytest.raises(InputError, match="zero or negative pixel spacing"):
        read_xray(tmp_path / "zero.dcm")
    assert read_xray(tmp_path / "zero.dcm", delx=0.3, dely=0.3).camera == cam
    # missing spacing
    ds = pydicom.dcmread(good)
    del ds.ImagerPixelSpacing
    ds.save_as(tmp_path / "nospace.dcm")
    with pytest.raises(InputError, match="missing pixel spacing"):
        read_xray(tmp_path / "nospace.dcm")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InputError):
        read_xray(tmp_path / "broken.png", camera=cam)
    with pytest.raises(InputError, match="unknown pixel kind"):
        read_xray(good, kind="hounsfield")


def test_advice_names_the_command_line_option_and_the_python_keyword(tmp_path, capsys):
    """What to pass is said for both users: the CLI's option (--sdd) and read_xray's keyword (sdd=)."""
    import pydicom

    from xraypose.cli import main

    good = tmp_path / "good.dcm"
    write_dicom_xray(good, _pixels(), camera=Camera(sdd=1000.0, height=24, width=32, delx=0.3))
    ds = pydicom.dcmread(good)
    ds.ImagerPixelSpacing = ["0.3", "0"]
    ds.save_as(tmp_path / "zero.dcm")
    with pytest.raises(InputError, match=r"delx is 0 mm .*pass --delx \(in Python delx=\) to override it"):
        read_xray(tmp_path / "zero.dcm")
    np.save(tmp_path / "bare.npy", _pixels().astype(np.float32))
    with pytest.raises(InputError,
                       match=r"pass --sdd, in Python sdd=.*pass --delx and --dely, in Python delx= and dely="):
        read_xray(tmp_path / "bare.npy")
    assert main(["register", "sample", str(tmp_path / "bare.npy"), "-o", str(tmp_path / "r"), "--init", "ap"]) == 2
    assert "pass --sdd" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "bare.npy")]) == 0
    out = capsys.readouterr().out
    assert "pass --kind intensity (in Python kind='intensity'" in out and "pass --sdd" in out
    write_dicom_xray(tmp_path / "m.dcm", np.stack([_pixels(seed=s) for s in range(3)]),
                     camera=Camera(sdd=1000.0, height=24, width=32, delx=0.3), primary=10.0)
    notes = " ".join(read_xray(tmp_path / "m.dcm").notes)
    assert "set frames= (Python read_xray" in notes and "`xraypose track` reads every frame" in notes
    assert "pass --sod (in Python sod=)" in notes


def test_command_line_report(tmp_path, capsys):
    f = tmp_path / "a.dcm"
    write_dicom_xray(f, _pixels(), camera=Camera(sdd=1000.0, height=24, width=32, delx=0.3), primary=5.0, sod=600.0)
    assert _main([str(f), "--isocenter", "0,0,0"]) == 0
    out = capsys.readouterr().out
    assert "PositionerPrimaryAngle (0018,1510)" in out and "pose (camera_to_world)" in out
    assert _main([str(tmp_path / "missing.dcm")]) == 2
    assert "xraypose: error:" in capsys.readouterr().err


@requires_shared
def test_real_radiographs():
    """pydicom-data's real CR headers: RG1 has PixelSpacing 0 (clear error), RG3 has no geometry."""
    rg1 = shared_path("xray", "radiographs_pydicom_data", "RG1_UNCI.dcm")
    rg3 = shared_path("xray", "radiographs_pydicom_data", "RG3_UNCI.dcm")
    with pytest.raises(InputError, match="zero or negative pixel spacing"):
        read_xray(rg1)
    xr = read_xray(rg1, delx=0.168, dely=0.168)
    assert xr.camera.sdd == 1996.0 and xr.shape == (1955, 1841)
    assert xr.header["PhotometricInterpretation"]["value"] == "MONOCHROME1"
    assert xr.header["patient_orientation"]["value"] == ["L", "F"]
    assert xr.kind == "attenuation"
    with pytest.raises(InputError, match="missing source-to-detector distance"):
        read_xray(rg3)
    xr3 = read_xray(rg3, require_intrinsics=False)
    assert xr3.camera is None and xr3.shape == (1760, 1760)
    assert float(xr3.image.max()) <= 1023 and float(xr3.image.min()) >= 0
