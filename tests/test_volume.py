"""Tests for xraypose.volume: readers, world geometry (RAS mm), density models, errors."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xraypose.errors import InputError
from xraypose.volume import (
    HU_BONE_REF,
    MU_BONE_PER_MM,
    MU_WATER_PER_MM,
    SAMPLE_CT_ATTRIBUTION,
    Volume,
    load_sample_ct,
    read_volume,
    volume_from_array,
)

SHARED_DICOM = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "pelvis_totalsegmentator" / "example_ct_dicom"

# --------------------------------------------------------------------------
# A small synthetic CT with a non-trivial geometry:
#   anisotropic spacing (0.7, 1.1, 2.5) mm, axes permuted and flipped:
#   i -> posterior (-y), j -> left (-x), k -> superior (+z), in RAS.
# Voxel values are unique, so a value identifies its voxel.
# --------------------------------------------------------------------------
SHAPE = (6, 5, 4)
AFFINE_RAS = np.array(
    [
        [0.0, -1.1, 0.0, 12.5],
        [-0.7, 0.0, 0.0, -30.25],
        [0.0, 0.0, 2.5, 40.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
# World RAS mm of voxel (1, 2, 3), worked out by hand:
# (12.5, -30.25, 40) + 1*(0, -0.7, 0) + 2*(-1.1, 0, 0) + 3*(0, 0, 2.5)
VOXEL_123_RAS = np.array([10.3, -30.95, 47.5])


def _synthetic_array() -> np.ndarray:
    rng = np.random.default_rng(0)
    n = int(np.prod(SHAPE))
    return (rng.permutation(n) - n // 2).astype(np.int16).reshape(SHAPE)


def _ras_to_sitk(arr: np.ndarray, affine_ras: np.ndarray) -> sitk.Image:
    """Independent LPS conversion for the writers: SimpleITK stores LPS."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    img.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
    return img


def write_nifti(path: Path, arr: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


def write_itk(path: Path, arr: np.ndarray, affine: np.ndarray) -> Path:
    sitk.WriteImage(_ras_to_sitk(arr, affine), str(path))
    return path


def write_dicom_series(folder: Path, arr: np.ndarray, affine: np.ndarray) -> Path:
    """One CT slice per file (SimpleITK/GDCM), with position/orientation tags."""
    folder.mkdir(parents=True, exist_ok=True)
    img = _ras_to_sitk(arr.astype(np.int16), affine)
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    iop = "\\".join(f"{v:.6f}" for v in [*direction[:, 0], *direction[:, 1]])
    uid = "1.2.826.0.1.3680043.2.1125.7"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(arr.shape[2]):
        sl = img[:, :, k]
        ipp = "\\".join(f"{v:.6f}" for v in img.TransformIndexToPhysicalPoint((0, 0, k)))
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
            "0008|0018": f"{uid}.3.{k + 1}",
            "0008|0060": "CT",
            "0020|000d": f"{uid}.1",
            "0020|000e": f"{uid}.2",
            "0020|0013": str(k + 1),
            "0020|0032": ipp,
            "0020|0037": iop,
            "0018|0050": f"{np.linalg.norm(affine[:3, 2]):.6f}",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(sl)
    return folder


def _write(fmt: str, tmp_path: Path, arr: np.ndarray, affine: np.ndarray = AFFINE_RAS) -> Path:
    if fmt == "dicom":
        return write_dicom_series(tmp_path / "dicom", arr, affine)
    if fmt.startswith("nii"):
        return write_nifti(tmp_path / f"ct.{fmt}", arr, affine)
    return write_itk(tmp_path / f"ct.{fmt}", arr, affine)


def _world_of_value(vol: Volume, value: float) -> np.ndarray:
    hits = torch.nonzero(vol.data == value)
    assert hits.shape[0] == 1, f"value {value} found {hits.shape[0]} times"
    return vol.voxel_to_world(hits[0].to(torch.float64)).numpy()


# --------------------------------------------------------------------------
# Readers: the same voxel lands on the same RAS point whatever the format
# --------------------------------------------------------------------------
FORMATS = ["nii.gz", "nii", "nrrd", "nhdr", "mha", "mhd", "dicom"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_roundtrip_world_coordinates(fmt, tmp_path):
    arr = _synthetic_array()
    vol = read_volume(_write(fmt, tmp_path, arr))
    assert vol.data.dtype == torch.float32 and vol.affine.dtype == torch.float64
    assert sorted(vol.shape) == sorted(SHAPE)
    # The voxel holding arr[1, 2, 3] sits at the hand-computed RAS point.
    np.testing.assert_allclose(_world_of_value(vol, arr[1, 2, 3]), VOXEL_123_RAS, atol=1e-3)
    # And every voxel: original world point -> index in the read volume -> same value.
    idx = np.array(list(itertools.product(*[range(n) for n in SHAPE])), dtype=np.float64)
    world = idx @ AFFINE_RAS[:3, :3].T + AFFINE_RAS[:3, 3]
    back = vol.world_to_voxel(torch.from_numpy(world)).numpy()
    np.testing.assert_allclose(back, np.round(back), atol=1e-3)
    b = np.round(back).astype(int)
    got = vol.data[b[:, 0], b[:, 1], b[:, 2]].numpy()
    want = arr[tuple(idx.astype(int).T)]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(sorted(vol.spacing.tolist()), [0.7, 1.1, 2.5], atol=1e-5)
    if fmt != "dicom":  # DICOM re-sorts slices along the slice normal
        np.testing.assert_allclose(vol.affine.numpy(), AFFINE_RAS, atol=1e-5)
        np.testing.assert_array_equal(vol.data.numpy(), arr.astype(np.float32))


def test_dicom_slices_resorted_along_normal(tmp_path):
    # Row x column cosines give a slice normal pointing inferior here, so the
    # reader orders k the other way; the affine must follow.
    arr = _synthetic_array()
    vol = read_volume(write_dicom_series(tmp_path / "d", arr, AFFINE_RAS))
    expected = AFFINE_RAS.copy()
    expected[:3, 2] *= -1
    expected[:3, 3] = AFFINE_RAS[:3, :3] @ [0, 0, SHAPE[2] - 1] + AFFINE_RAS[:3, 3]
    np.testing.assert_allclose(vol.affine.numpy(), expected, atol=1e-4)
    np.testing.assert_array_equal(vol.data.numpy(), arr[:, :, ::-1].astype(np.float32))
    assert "DICOM series" in vol.source


def test_all_formats_agree(tmp_path):
    arr = _synthetic_array()
    points = {}
    for fmt in FORMATS:
        sub = tmp_path / fmt.replace(".", "_")
        sub.mkdir()
        vol = read_volume(_write(fmt, sub, arr))
        points[fmt] = np.stack([_world_of_value(vol, arr[v]) for v in [(0, 0, 0), (5, 4, 3), (1, 2, 3)]])
    ref = points["nii.gz"]
    for fmt, pts in points.items():
        np.testing.assert_allclose(pts, ref, atol=1e-3, err_msg=fmt)


def test_4d_singleton_is_squeezed(tmp_path):
    arr = _synthetic_array()[..., None]
    vol = read_volume(write_nifti(tmp_path / "ct4.nii.gz", arr, AFFINE_RAS))
    assert vol.shape == SHAPE


@pytest.mark.skipif(not SHARED_DICOM.is_dir(), reason="shared DICOM example not available")
def test_real_dicom_series_matches_headers():
    pydicom = pytest.importorskip("pydicom")
    vol = read_volume(SHARED_DICOM)
    assert vol.shape == (512, 512, 20)
    np.testing.assert_allclose(vol.spacing.numpy(), [0.9765625, 0.9765625, 2.0], atol=1e-4)
    # Independent geometry from the headers: RAS = flip(IPP + i*dc*row_cos + j*dr*col_cos).
    slices = [(f, pydicom.dcmread(f, stop_before_pixels=True)) for f in SHARED_DICOM.iterdir()]
    slices.sort(key=lambda fh: float(fh[1].ImagePositionPatient[2]))  # axial series, normal +z (LPS)
    first_file, first = slices[0]
    ipp = np.array(first.ImagePositionPatient, dtype=float)
    iop = np.array(first.ImageOrientationPatient, dtype=float)
    drow, dcol = (float(v) for v in first.PixelSpacing)  # between rows, between columns
    i, j = 7, 300
    ras = (ipp + i * dcol * iop[:3] + j * drow * iop[3:]) * [-1, -1, 1]
    # k = 0 is the lowest slice, k = 19 the highest.
    np.testing.assert_allclose(vol.voxel_to_world([i, j, 0]).numpy(), ras, atol=1e-3)
    ipp_last = np.array(slices[-1][1].ImagePositionPatient, dtype=float) * [-1, -1, 1]
    np.testing.assert_allclose(vol.voxel_to_world([0, 0, 19]).numpy(), ipp_last, atol=1e-3)
    # HU: values after RescaleSlope/Intercept.
    assert -1100 < float(vol.data.min()) <= -1000 and float(vol.data.max()) > 1000
    try:
        ds = pydicom.dcmread(first_file)
        hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    except Exception:  # no decoder here for the compressed transfer syntax
        pytest.skip("pydicom cannot decode the example's pixel data; geometry checked")
    # pixel_array is (rows, columns) = (j, i)
    np.testing.assert_array_equal(vol.data[:, :, 0].numpy().T, hu.astype(np.float32))


# --------------------------------------------------------------------------
# Sample CT and geometry
# --------------------------------------------------------------------------
def test_sample_ct():
    vol = load_sample_ct()
    assert vol.shape == (122, 101, 112)
    np.testing.assert_allclose(vol.spacing.numpy(), [3.0, 3.0, 3.0], atol=1e-6)
    assert nib.aff2axcodes(vol.affine.numpy()) == ("R", "A", "S")
    assert float(vol.data.min()) < -900 and float(vol.data.max()) > 1000  # HU
    assert torch.equal(vol.get_isocenter(), vol.center)
    assert "TotalSegmentator" in SAMPLE_CT_ATTRIBUTION and "Apache-2.0" in SAMPLE_CT_ATTRIBUTION
    assert "sample" in vol.source
    np.testing.assert_allclose(vol.extent_mm.numpy(), [366.0, 303.0, 336.0])


def test_geometry_properties():
    vol = volume_from_array(np.zeros((4, 3, 2)), spacing=(2.0, 1.0, 0.5), origin=(10.0, -5.0, 1.0))
    assert vol.shape == (4, 3, 2)
    np.testing.assert_allclose(vol.spacing.numpy(), [2.0, 1.0, 0.5])
    np.testing.assert_allclose(vol.extent_mm.numpy(), [8.0, 3.0, 1.0])
    np.testing.assert_allclose(vol.center.numpy(), [10.0 + 3.0, -5.0 + 1.0, 1.0 + 0.25])
    c = vol.corners.numpy()
    assert c.shape == (8, 3)
    np.testing.assert_allclose(c[0], [9.0, -5.5, 0.75])
    np.testing.assert_allclose(c[7], [17.0, -2.5, 1.75])
    np.testing.assert_allclose(c.mean(axis=0), vol.center.numpy())
    np.testing.assert_allclose(c.max(axis=0) - c.min(axis=0), vol.extent_mm.numpy())
    # Flipped/permuted affine: box still centred, extent along voxel axes.
    flipped = volume_from_array(_synthetic_array(), affine=AFFINE_RAS)
    np.testing.assert_allclose(flipped.corners.numpy().mean(axis=0), flipped.center.numpy())
    np.testing.assert_allclose(flipped.extent_mm.numpy(), [6 * 0.7, 5 * 1.1, 4 * 2.5])
    np.testing.assert_allclose(flipped.voxel_to_world([1, 2, 3]).numpy(), VOXEL_123_RAS)
    iso = volume_from_array(np.zeros((2, 2, 2)), isocenter=(1.0, 2.0, 3.0))
    assert iso.get_isocenter().tolist() == [1.0, 2.0, 3.0]
    assert iso.get_isocenter().dtype == torch.float64


def test_to_dtype_and_repr():
    labels = np.zeros((3, 3, 3), dtype=np.uint8)
    labels[1, 1, 1] = 2
    vol = volume_from_array(np.arange(27.0).reshape(3, 3, 3), labels=labels, label_names={2: "x"})
    v64 = vol.to(dtype=torch.float64)
    assert v64.data.dtype == torch.float64 and v64.affine.dtype == torch.float64
    assert v64.labels.dtype == torch.int64 and v64.label_names == {2: "x"}
    assert v64.density("raw").dtype == torch.float64
    with pytest.raises(InputError):
        vol.to(dtype=torch.int32)
    assert "shape=(3, 3, 3)" in repr(vol)


# --------------------------------------------------------------------------
# Density models
# --------------------------------------------------------------------------
def _hu_phantom() -> Volume:
    # air, lung-ish, fat, water, muscle, bone, dense bone
    values = np.array([-1000.0, -900.0, -100.0, 0.0, 50.0, 700.0, 1500.0, -1000.0], dtype=np.float32)
    return volume_from_array(values.reshape(2, 2, 2))


def test_density_hu_range_and_air():
    vol = _hu_phantom()
    d = vol.density("hu")
    assert d.shape == vol.shape and d.dtype == torch.float32
    assert float(d.min()) == 0.0 and float(d.max()) == pytest.approx(1.0)
    flat = d.flatten()
    assert flat[0] == 0.0 and flat[1] == 0.0 and flat[7] == 0.0  # air -> soft-tissue min -> 0
    assert flat[2] == 0.0  # -100 is the soft-tissue minimum
    # soft tissue keeps its order and linear spacing: (0 - -100) / (1500 - -100)
    assert float(flat[3]) == pytest.approx(100.0 / 1600.0)
    assert torch.all(flat[3:7].diff() > 0)


def test_density_hu_matches_reference_on_sample_ct():
    vol = load_sample_ct()
    x = vol.data.numpy().astype(np.float64)
    for mult in (1.0, 2.5):
        ref = x.copy()
        soft = (x > -800) & (x <= 350)
        ref[x <= -800] = x[soft].min()
        ref[x > 350] = x[x > 350] * mult
        ref = (ref - ref.min()) / (ref.max() - ref.min())
        np.testing.assert_allclose(vol.density("hu", mult).numpy(), ref, atol=1e-6)


def test_bone_multiplier_increases_bone_relative_to_soft_tissue():
    vol = _hu_phantom()
    ratios = []
    for mult in (1.0, 2.0, 4.0):
        d = vol.density("hu", bone_attenuation_multiplier=mult).flatten()
        ratios.append(float(d[5] / d[4]))  # bone 700 vs muscle 50
    assert ratios[0] < ratios[1] < ratios[2]
    p1 = vol.density("physical", 1.0).flatten()
    p2 = vol.density("physical", 2.0).flatten()
    assert float(p2[5] / p2[4]) > float(p1[5] / p1[4])
    torch.testing.assert_close(p2[:5], p1[:5])  # below 350 HU unchanged
    slope = (MU_BONE_PER_MM - MU_WATER_PER_MM) / HU_BONE_REF
    assert float(p2[5]) == pytest.approx(MU_WATER_PER_MM + 2.0 * 700.0 * slope, rel=1e-5)


def test_density_physical_values():
    hu = np.array([-2000.0, -1000.0, -500.0, 0.0, 1900.0, 950.0, 100.0, 3000.0], dtype=np.float32)
    mu = volume_from_array(hu.reshape(2, 2, 2)).density("physical").flatten().double()
    assert mu[0] == 0.0 and float(mu[1]) == pytest.approx(0.0, abs=1e-9)
    assert float(mu[2]) == pytest.approx(0.0193 / 2, rel=1e-5)
    assert float(mu[3]) == pytest.approx(0.0193, rel=1e-6)
    assert float(mu[4]) == pytest.approx(0.0500, rel=1e-5)
    assert float(mu[5]) == pytest.approx((0.0193 + 0.0500) / 2, rel=1e-5)
    custom = volume_from_array(hu.reshape(2, 2, 2)).density(
        "physical", mu_water=0.02, mu_bone=0.06, hu_bone=2000.0
    )
    assert float(custom.flatten()[3]) == pytest.approx(0.02, rel=1e-6)
    with pytest.raises(InputError, match="mu_bone"):
        volume_from_array(hu.reshape(2, 2, 2)).density("physical", mu_bone=0.01)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-3000, 4000, allow_nan=False, width=32), min_size=2, max_size=64))
def test_density_physical_monotone(values):
    hu = np.sort(np.asarray(values, dtype=np.float32))
    mu = volume_from_array(hu.reshape(-1, 1, 1)).density("physical").flatten()
    assert torch.all(mu.diff() >= 0) and torch.all(mu >= 0)


def test_density_raw_and_unknown_model():
    vol = _hu_phantom()
    raw = vol.density("raw")
    assert torch.equal(raw, vol.data) and raw.data_ptr() != vol.data.data_ptr()
    with pytest.raises(InputError, match="Unknown density model 'linear'"):
        vol.density("linear")
    with pytest.raises(InputError, match="bone_attenuation_multiplier"):
        vol.density("hu", bone_attenuation_multiplier=-1.0)
    with pytest.raises(InputError, match="bone_attenuation_multiplier"):
        vol.density("hu", bone_attenuation_multiplier=float("nan"))


@pytest.mark.parametrize("model", ["hu", "physical", "raw"])
@pytest.mark.parametrize("mult", ["2", True, False, None, 0, 0.0, -1.0, float("nan"), float("inf"), np.bool_(True)])
def test_density_refuses_a_multiplier_that_is_no_positive_number(model, mult):
    """A text '2' (float() would read it), a bool, 0 (bone darker than soft tissue) or NaN/inf: one line
    naming the argument and the value, as the DRR words it."""
    vol = _hu_phantom()
    with pytest.raises(InputError) as e:
        vol.density(model, bone_attenuation_multiplier=mult)
    assert str(e.value) == f"bone_attenuation_multiplier = {mult!r} must be a finite number > 0"


def test_density_takes_a_positive_multiplier_of_any_number_type():
    vol = _hu_phantom()
    ref = vol.density("hu", bone_attenuation_multiplier=2.0)
    for m in (2, np.float32(2.0), np.int64(2)):
        assert torch.equal(vol.density("hu", bone_attenuation_multiplier=m), ref)


def test_constant_volume_loads_but_hu_density_raises(tmp_path):
    path = write_nifti(tmp_path / "const.nii.gz", np.full((3, 4, 5), 40, np.int16), np.eye(4))
    vol = read_volume(path)
    assert vol.shape == (3, 4, 5)
    with pytest.raises(InputError, match="constant"):
        vol.density("hu")
    assert torch.all(vol.density("physical") > 0)  # other models still work
    # Only air and one soft value: constant after mapping air to the soft minimum.
    two = volume_from_array(np.array([-1000.0, -500.0]).reshape(2, 1, 1))
    with pytest.raises(InputError, match="constant"):
        two.density("hu")


def test_hu_without_soft_tissue():
    vol = volume_from_array(np.array([-1000.0, 1000.0]).reshape(2, 1, 1))
    d = vol.density("hu").flatten()
    assert d.tolist() == [0.0, 1.0]


@pytest.mark.slow
def test_density_speed_on_clinical_size():
    x = torch.randint(-1024, 3000, (512, 512, 134)).float()
    vol = volume_from_array(x)
    for model in ("hu", "physical"):
        vol.density(model)
        t0 = time.perf_counter()
        vol.density(model)
        assert time.perf_counter() - t0 < 0.3, model


# --------------------------------------------------------------------------
# Labels / structures
# --------------------------------------------------------------------------
def _labelled() -> Volume:
    data = np.full((4, 4, 4), 100.0, dtype=np.float32)
    data[0] = -1000.0
    data[3] = 1000.0
    labels = np.zeros((4, 4, 4), dtype=np.int16)
    labels[1] = 1
    labels[2] = 2
    labels[3] = 5
    return volume_from_array(data, labels=labels, label_names={1: "liver", 2: "kidney", 5: "femur_left"})


def test_structures_selection():
    vol = _labelled()
    full = vol.density("hu")
    femur = vol.density("hu", structures=["femur_left"])
    assert torch.equal(femur[3], full[3]) and torch.all(femur[:3] == 0)
    mixed = vol.density("raw", structures=[1, "kidney"])
    assert torch.all(mixed[1:3] == 100.0) and torch.all(mixed[0] == 0) and torch.all(mixed[3] == 0)
    assert torch.equal(vol.density("raw", structures=5), vol.density("raw", structures="FEMUR_LEFT"))
    assert vol.structure_mask([1, 2]).sum() == 32


def test_structures_errors():
    vol = _labelled()
    with pytest.raises(InputError, match="no labelmap"):
        volume_from_array(np.zeros((2, 2, 2))).density("raw", structures=[1])
    with pytest.raises(InputError, match="unknown structure name 'spleen'.*liver"):
        vol.density("raw", structures=["spleen"])
    with pytest.raises(InputError, match=r"label id 7 is not present.*femur_left"):
        vol.density("raw", structures=[7])
    with pytest.raises(InputError, match="empty"):
        vol.density("raw", structures=[])
    no_names = volume_from_array(np.zeros((2, 2, 2)), labels=np.ones((2, 2, 2), int))
    with pytest.raises(InputError, match="no label_names"):
        no_names.density("raw", structures=["liver"])
    # a number that is not a whole id ("3.0" from a command line) was called a name the volume lacks
    for bad in ("3.0", "1e0", "nan", ""):
        with pytest.raises(InputError, match=rf"label '{bad}' is neither a label id \(a whole number"):
            no_names.density("raw", structures=[bad])
    with pytest.raises(InputError, match=r"nor a structure name \(known names: femur_left, kidney, liver\)"):
        vol.density("raw", structures=["2.5"])


def test_labels_from_files(tmp_path):
    arr = _synthetic_array()
    ct = write_nifti(tmp_path / "ct.nii.gz", arr, AFFINE_RAS)
    lab = (arr > 0).astype(np.uint8) * 3
    lab_path = write_itk(tmp_path / "seg.nrrd", lab, AFFINE_RAS)  # other format, same grid
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"0": "background", "3": "positive"}))
    vol = read_volume(ct, labels=lab_path, label_names=names, isocenter=[1, 2, 3])
    assert vol.labels.dtype == torch.int64
    assert torch.equal(vol.labels, torch.from_numpy(lab.astype(np.int64)))
    assert vol.label_names == {0: "background", 3: "positive"}
    assert vol.get_isocenter().tolist() == [1.0, 2.0, 3.0]
    sel = vol.density("raw", structures=["positive"])
    assert torch.all(sel[torch.from_numpy(arr <= 0)] == 0) and torch.all(sel[torch.from_numpy(arr > 0)] > 0)
    # labels given as a tensor
    vol2 = read_volume(ct, labels=torch.from_numpy(lab), label_names={3: "positive"})
    assert torch.equal(vol2.labels, vol.labels)


def test_labels_misaligned_or_wrong_shape(tmp_path):
    arr = _synthetic_array()
    ct = write_nifti(tmp_path / "ct.nii.gz", arr, AFFINE_RAS)
    shifted = AFFINE_RAS.copy()
    shifted[0, 3] += 0.01
    bad = write_nifti(tmp_path / "seg_shift.nii.gz", np.zeros(SHAPE, np.uint8), shifted)
    with pytest.raises(InputError, match="not aligned"):
        read_volume(ct, labels=bad)
    small = write_nifti(tmp_path / "seg_small.nii.gz", np.zeros((6, 5, 3), np.uint8), AFFINE_RAS)
    with pytest.raises(InputError, match="shape"):
        read_volume(ct, labels=small)
    with pytest.raises(InputError, match="shape"):
        read_volume(ct, labels=np.zeros((2, 2, 2), int))
    with pytest.raises(InputError, match="non-integer"):
        read_volume(ct, labels=np.full(SHAPE, 0.5))
    with pytest.raises(InputError, match="Labelmap file not found"):
        read_volume(ct, labels=tmp_path / "nope.nii.gz")
    (tmp_path / "names.json").write_text("{not json")
    with pytest.raises(InputError, match="names.json"):
        read_volume(ct, label_names=tmp_path / "names.json")
    with pytest.raises(InputError, match="integers"):
        read_volume(ct, label_names={"liver": 1})


# --------------------------------------------------------------------------
# InputError cases
# --------------------------------------------------------------------------
def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="CT file not found: .*missing.nii.gz"):
        read_volume(tmp_path / "missing.nii.gz")


def test_unknown_extension(tmp_path):
    p = tmp_path / "ct.png"
    p.write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match=r"'\.png'.*\.nii\.gz.*\.nrrd.*\.mha.*DICOM"):
        read_volume(p)


@pytest.mark.parametrize("name", ["bad.nii.gz", "bad.nii", "bad.mha", "bad.nrrd"])
def test_unreadable_file(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"this is not an image" * 20)
    with pytest.raises(InputError, match=f"Could not read CT .*{name}"):
        read_volume(p)


def test_not_3d(tmp_path):
    with pytest.raises(InputError, match=r"expected a 3D volume, got shape \(5, 6\)"):
        read_volume(write_nifti(tmp_path / "2d.nii.gz", np.zeros((5, 6), np.float32), np.eye(4)))
    with pytest.raises(InputError, match=r"expected a 3D volume, got shape \(3, 4, 5, 2\)"):
        read_volume(write_nifti(tmp_path / "4d.nii.gz", np.zeros((3, 4, 5, 2), np.float32), np.eye(4)))
    img2d = sitk.GetImageFromArray(np.zeros((4, 5), np.float32))
    sitk.WriteImage(img2d, str(tmp_path / "2d.mha"))
    with pytest.raises(InputError, match="expected a 3D volume"):
        read_volume(tmp_path / "2d.mha")
    with pytest.raises(InputError, match="3D"):
        volume_from_array(np.zeros((4, 5)))


def test_nan_and_inf_voxels(tmp_path):
    arr = np.zeros((4, 4, 4), np.float32)
    arr[0, 0, 0] = np.nan
    arr[1, 2, 3] = np.inf
    with pytest.raises(InputError, match="2 of 64 voxels are NaN or infinite"):
        read_volume(write_nifti(tmp_path / "nan.nii.gz", arr, np.eye(4)))
    with pytest.raises(InputError, match="2 of 64 voxels"):
        read_volume(write_itk(tmp_path / "nan.mha", arr, np.eye(4)))
    with pytest.raises(InputError, match="NaN"):
        volume_from_array(arr)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_volume_built_in_python_refuses_nan_and_inf_voxels(dtype):
    """The constructor refuses what the readers refuse (it rendered NaN DRRs), naming how many voxels."""
    data = torch.zeros(4, 4, 4, dtype=dtype)
    data[0, 0, 0], data[1, 2, 3], data[3, 3, 3] = float("nan"), float("inf"), -float("inf")
    with pytest.raises(InputError, match=r"^Volume data: 3 of 64 voxels are NaN or infinite$"):
        Volume(data=data, affine=torch.eye(4))
    with pytest.raises(InputError, match="1 of 64 voxels"):
        Volume(data=np.where(np.arange(64).reshape(4, 4, 4) == 5, np.nan, 0.0), affine=np.eye(4))
    assert Volume(data=torch.full((4, 4, 4), 3e4, dtype=dtype), affine=torch.eye(4)).shape == (4, 4, 4)
    assert Volume(data=torch.zeros(4, 4, 4, dtype=torch.int16), affine=torch.eye(4)).data.dtype == torch.float32


def test_zero_or_negative_spacing(tmp_path):
    # NIfTI with a singular sform (zero column); nibabel refuses to build one
    # from an affine, so write the header directly.
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((3, 3, 3))
    hdr.set_data_dtype(np.float32)
    hdr.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)
    hdr.set_qform(None, code=0)
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), None, header=hdr), str(tmp_path / "z.nii.gz"))
    with pytest.raises(InputError, match="zero voxel spacing along axis j"):
        read_volume(tmp_path / "z.nii.gz")
    # MetaImage header with ElementSpacing 0.
    header = (b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementSpacing = 1 0 1\n"
              b"ElementType = MET_SHORT\nElementDataFile = LOCAL\n")
    (tmp_path / "z.mha").write_bytes(header + np.zeros(8, np.int16).tobytes())
    with pytest.raises(InputError, match="zero voxel spacing"):
        read_volume(tmp_path / "z.mha")
    # Collinear voxel axes.
    sing = np.eye(4)
    sing[:3, 1] = [1.0, 0.0, 0.0]
    with pytest.raises(InputError, match="singular affine"):
        volume_from_array(np.zeros((2, 2, 2)), affine=sing)
    with pytest.raises(InputError, match="spacing"):
        volume_from_array(np.zeros((2, 2, 2)), spacing=(1.0, -1.0, 1.0))
    with pytest.raises(InputError, match="spacing"):
        volume_from_array(np.zeros((2, 2, 2)), spacing=(1.0, 0.0, 1.0))


def test_implausible_spacing_is_refused_naming_the_units(tmp_path):
    # 6e-4 mm (a header in m read as mm) and 6000 mm (µm read as mm) are no CT's; 0.4 … 10 mm are
    with pytest.raises(InputError, match=r"voxel spacing 0.0006 mm \(axis i\) is implausible for a CT.*units"):
        read_volume(write_nifti(tmp_path / "tiny.nii.gz", np.zeros((4, 4, 4), np.float32),
                                np.diag([6e-4, 6e-4, 6e-4, 1.0])))
    with pytest.raises(InputError, match=r"voxel spacing 6e\+03 mm \(axis k\) is implausible"):
        volume_from_array(np.zeros((2, 2, 2)), spacing=(1.0, 1.0, 6000.0))
    with pytest.raises(InputError, match="implausible"):
        volume_from_array(np.zeros((2, 2, 2)), affine=np.diag([1.0, 0.001, 1.0, 1.0]))
    for sp in ((0.4, 0.4, 0.6), (10.0, 10.0, 10.0)):
        assert volume_from_array(np.zeros((2, 2, 2)), spacing=sp).spacing.tolist() == pytest.approx(list(sp))


def test_zero_size_dimension(tmp_path):
    with pytest.raises(InputError, match="zero-size dimension"):
        volume_from_array(np.zeros((0, 3, 3)))
    nib.save(nib.Nifti1Image(np.zeros((0, 3, 3), np.float32), np.eye(4)), str(tmp_path / "e.nii.gz"))
    with pytest.raises(InputError, match="zero-size dimension"):
        read_volume(tmp_path / "e.nii.gz")


def test_dicom_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="DICOM folder is empty"):
        read_volume(empty)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match="No DICOM image series found"):
        read_volume(junk)


def test_dicom_missing_slice(tmp_path):
    arr = np.arange(4 * 4 * 5, dtype=np.int16).reshape(4, 4, 5)
    folder = write_dicom_series(tmp_path / "d", arr, np.diag([1.0, 1.0, 2.0, 1.0]))
    (folder / "slice_002.dcm").unlink()
    with pytest.raises(InputError, match="uneven slice positions"):
        read_volume(folder)


@pytest.mark.parametrize("edit, match", [
    # 2-D radiographs were stacked as a CT with an invented 1 mm spacing
    ({"Modality": "XA", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.12.1"}, r"projection radiographs \(Modality XA\)"),
    ({"Modality": "OT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.1"}, r"\(SOP class 1.2.840.10008.5.1.4.1.1.1.1\)"),
    # one slice of another orientation, one of RescaleSlope 0: read without complaint before
    ({"ImageOrientationPatient": [0, 1, 0, 0, 0, -1], "only": 2}, r"slice_002.dcm has ImageOrientationPatient "
                                                                  r"\[0.0, 1.0, 0.0, 0.0, 0.0, -1.0\].*orientations"),
    ({"RescaleSlope": "0", "RescaleIntercept": "0", "only": 3}, r"slice_003.dcm has RescaleSlope \(0028,1053\) 0"),
])
def test_dicom_series_that_is_no_ct_volume_is_refused(tmp_path, edit, match):
    pydicom = pytest.importorskip("pydicom")
    arr = np.arange(4 * 4 * 5, dtype=np.int16).reshape(4, 4, 5)
    folder = write_dicom_series(tmp_path / "d", arr, np.diag([1.0, 1.0, 2.0, 1.0]))
    read_volume(folder)  # as written: a CT
    edit = dict(edit)
    only = edit.pop("only", None)
    for f in sorted(folder.iterdir()):
        if only is None or f.name == f"slice_{only:03d}.dcm":
            ds = pydicom.dcmread(f)
            for k, v in edit.items():
                setattr(ds, k, v)
            ds.save_as(f)
    with pytest.raises(InputError, match=match):
        read_volume(folder)


@pytest.mark.parametrize("modality", ["CT", "SEG"])
def test_a_folder_of_one_multi_frame_dicom_is_named_as_such(tmp_path, modality):
    """An enhanced CT or a segmentation (one file of many frames) was refused as a series of "only 1 slice"."""
    pydicom = pytest.importorskip("pydicom")
    arr = np.arange(4 * 4 * 5, dtype=np.int16).reshape(4, 4, 5)
    slices = sorted(write_dicom_series(tmp_path / "d", arr, np.diag([1.0, 1.0, 2.0, 1.0])).iterdir())
    ds = pydicom.dcmread(slices[0])
    ds.NumberOfFrames = len(slices)
    ds.Modality = modality
    ds.PixelData = b"".join(pydicom.dcmread(f).PixelData for f in slices)
    (tmp_path / "mf").mkdir()
    ds.save_as(tmp_path / "mf" / "enhanced.dcm")
    with pytest.raises(InputError, match=rf"only 1 slice.*enhanced.dcm is one multi-frame file of 5 frames, "
                                         rf"{modality}: an enhanced CT or a segmentation is not read as a CT"):
        read_volume(tmp_path / "mf")


def test_a_nifti_whose_sform_and_qform_disagree_is_refused(tmp_path):
    """Both set (codes > 0) and placing the CT differently: nibabel (xraypose) used the sform without a word,
    ITK-based tools (Slicer, SimpleITK) the qform; equal ones, or one of code 0, are read."""
    arr = _synthetic_array()
    img = nib.Nifti1Image(arr, AFFINE_RAS)
    img.set_sform(AFFINE_RAS, code=1)
    img.set_qform(AFFINE_RAS, code=1)
    nib.save(img, str(tmp_path / "same.nii"))
    np.testing.assert_allclose(read_volume(tmp_path / "same.nii").affine.numpy(), AFFINE_RAS, atol=1e-5)
    doubled = AFFINE_RAS.copy()
    doubled[:3, :3] *= 2
    img.set_qform(doubled, code=1)
    nib.save(img, str(tmp_path / "differ.nii"))
    with pytest.raises(InputError, match=r"sform \(code 1\) and qform \(code 1\) place the CT differently .*"
                                         r"ITK-based tools \(Slicer\) the qform"):
        read_volume(tmp_path / "differ.nii")
    img.set_qform(doubled, code=0)  # the qform not in force: the sform is the file's
    nib.save(img, str(tmp_path / "qform_off.nii"))
    np.testing.assert_allclose(read_volume(tmp_path / "qform_off.nii").affine.numpy(), AFFINE_RAS, atol=1e-5)


def test_a_gantry_tilted_dicom_series_is_refused(tmp_path):
    """Slices shifted within their planes, slice by slice (a gantry tilt): GDCM stacked them straight along the
    normal, each slice misplaced by up to the shift × slices (here 2.8 mm), without a word."""
    pydicom = pytest.importorskip("pydicom")
    arr = np.arange(4 * 4 * 5, dtype=np.int16).reshape(4, 4, 5)
    folder = write_dicom_series(tmp_path / "d", arr, np.diag([1.0, 1.0, 2.0, 1.0]))
    for k, f in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(f)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.7 * k, z]  # 19° of tilt over 2 mm slices
        ds.save_as(f)
    with pytest.raises(InputError, match=r"slice 5's ImagePositionPatient lies 2.8 mm beside the line .*gantry-tilted"):
        read_volume(folder)


@pytest.mark.parametrize("unit, mm", [("micron", 1e-3), ("meter", 1e3), ("mm", 1.0), ("unknown", 1.0)])
def test_a_nifti_affine_is_read_in_its_spatial_unit(tmp_path, unit, mm):
    """xyzt_units micron or meter: the affine is converted to mm (as ITK and Slicer do); a micro-CT's 20 µm voxels
    were read as 20 mm."""
    size = {"micron": 20.0, "meter": 0.0005}.get(unit, 1.0)
    affine = np.diag([size, size, 2 * size, 1.0])
    affine[:3, 3] = [3 * size, -size, 0.0]
    img = nib.Nifti1Image(_synthetic_array(), affine)
    img.header.set_xyzt_units(unit)
    nib.save(img, str(tmp_path / "ct.nii"))
    expect = affine.copy()
    expect[:3, :] *= mm
    np.testing.assert_allclose(read_volume(tmp_path / "ct.nii").affine.numpy(), expect, rtol=1e-6)


@pytest.mark.parametrize("units", ['"cm" "cm" "cm"', '"m" "m" "m"'])
def test_a_nrrd_in_other_space_units_than_mm_is_refused(tmp_path, units):
    """ITK ignores a NRRD's space units: a header in cm or m was read as mm (the CT 10 or 1000 times too small)."""
    raw = np.zeros(4 * 5 * 6, "<i2").tobytes()
    head = ("NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 4 5 6\n"
            "space directions: (1,0,0) (0,1,0) (0,0,2)\n{}endian: little\nencoding: raw\nspace origin: (0,0,0)\n\n")
    (tmp_path / "mm.nrrd").write_bytes(head.format('space units: "mm" "mm" "mm"\n').encode() + raw)
    assert read_volume(tmp_path / "mm.nrrd").spacing.tolist() == [1.0, 1.0, 2.0]
    (tmp_path / "ct.nrrd").write_bytes(head.format(f"space units: {units}\n").encode() + raw)
    with pytest.raises(InputError, match=rf"its space units are {units.replace(chr(34), '')} \(NRRD 'space units'\)"):
        read_volume(tmp_path / "ct.nrrd")


def test_a_dicom_series_of_per_slice_rescales_keeps_fractional_values(tmp_path):
    """GDCM typed the volume by the first slice (int16 for slope 1, intercept 0): a later slice's RescaleSlope 0.25,
    intercept −0.5 gave 4.5 read as 4, without a word."""
    pydicom = pytest.importorskip("pydicom")
    arr = np.arange(4 * 4 * 5, dtype=np.int16).reshape(4, 4, 5) * 10
    folder = write_dicom_series(tmp_path / "d", arr, np.diag([1.0, 1.0, 2.0, 1.0]))
    f = sorted(folder.iterdir())[2]
    ds = pydicom.dcmread(f)
    ds.RescaleSlope, ds.RescaleIntercept = "0.25", "-0.5"
    ds.save_as(f)
    expect = arr.astype(np.float64)
    expect[:, :, 2] = expect[:, :, 2] * 0.25 - 0.5
    np.testing.assert_array_equal(read_volume(folder).data.numpy(), expect)


def test_bad_dtype_and_isocenter(tmp_path):
    ct = write_nifti(tmp_path / "ct.nii.gz", _synthetic_array(), AFFINE_RAS)
    with pytest.raises(InputError, match="dtype"):
        read_volume(ct, dtype=torch.int16)
    with pytest.raises(InputError, match="isocenter"):
        read_volume(ct, isocenter=[1.0, 2.0])
    assert read_volume(ct, dtype=torch.float64).data.dtype == torch.float64


def test_a_nifti_header_declaring_a_negative_size_is_refused_naming_it(tmp_path):
    """dim[1] = −5 in the header: one line naming the size (nibabel said 'memory mapped length must be positive')."""
    import struct

    f = tmp_path / "ct.nii"
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 8), np.int16), np.eye(4)), str(f))
    raw = bytearray(f.read_bytes())
    raw[42:44] = struct.pack("<h", -5)  # NIfTI-1: dim[1] at byte 42
    f.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"declares a size of -5 × 7 × 8 voxels") as e:
        read_volume(f)
    assert "\n" not in str(e.value)
