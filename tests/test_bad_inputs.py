"""Every bad input is a clear error: the project's bad-input corpus.

Each case builds its inputs in ``tmp_path/in`` (tiny CTs, so the module runs in
seconds), runs the CLI in-process (:func:`xraypose.cli.main`) and asserts

* exit code 2,
* one line ``xraypose: error: …`` naming the problem (the case's key words), and
  no other output (a Python warning the user would see counts as a line),
* no traceback,
* nothing the user made changed (every input file's bytes and mtime).

The cases cover CTs, X-rays, sidecar JSON, case folders, pose files,
fiducials, TOML configs, command-line options and HDF5 datasets.  Fault cases
(outputs, kills, checkpoints) live in ``tests/test_faults.py``.
"""

from __future__ import annotations

import gzip
import json
import locale
import logging
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from xraypose.cli import main

# --------------------------------------------------------------------------
# Tiny valid inputs
# --------------------------------------------------------------------------

CT_SHAPE = (12, 12, 12)
CT_SPACING = 10.0


def _ct_array(shape=CT_SHAPE) -> np.ndarray:
    """HU: air outside, soft tissue inside, a bone block in the middle (int16)."""
    a = np.full(shape, -1000, np.int16)
    s = [slice(max(0, n // 6), max(1, n - n // 6)) for n in shape]
    a[tuple(s)] = 40
    b = [slice(n // 3, max(n // 3 + 1, 2 * n // 3)) for n in shape]
    a[tuple(b)] = 1200
    return a


def _affine(spacing=CT_SPACING, shape=CT_SHAPE) -> np.ndarray:
    A = np.diag([spacing, spacing, spacing, 1.0])
    A[:3, 3] = [-spacing * (n - 1) / 2 for n in shape]
    return A


def nifti(path: Path, arr=None, affine=None) -> Path:
    import nibabel as nib

    arr = _ct_array() if arr is None else arr
    nib.save(nib.Nifti1Image(arr, _affine(shape=arr.shape[:3]) if affine is None else affine), str(path))
    return path


def ct(d: Path) -> Path:
    return nifti(d / "ct.nii.gz")


def xray_npy_pixels() -> np.ndarray:
    """The 32×32 raw intensities of :func:`xray_npy`'s X-ray."""
    rng = np.random.default_rng(0)
    return (1000 + 500 * rng.random((32, 32))).astype(np.float32)


def xray_npy(d: Path, name="xray.npy", sidecar: dict | None | str | bytes = "default", arr=None) -> Path:
    """A 32×32 raw-intensity X-ray with its sidecar (``sidecar``: a dict, raw text/bytes, or None)."""
    p = d / name
    if arr is None:
        arr = xray_npy_pixels()
    np.save(p, arr)
    side = p.with_suffix(".json")
    if sidecar == "default":
        sidecar = {"sdd_mm": 1000.0, "delx_mm": 4.0, "dely_mm": 4.0, "kind": "intensity"}
    if isinstance(sidecar, dict):
        side.write_text(json.dumps(sidecar))
    elif isinstance(sidecar, str):
        side.write_text(sidecar)
    elif isinstance(sidecar, bytes):
        side.write_bytes(sidecar)
    return p


def good_pose() -> list:
    from xraypose.camera import carm_pose

    return carm_pose(0.0, 0.0, sod=600.0, isocenter=[0.0, 0.0, 0.0]).tolist()


def pose_file(d: Path, content, name="pose.json") -> Path:
    p = d / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    elif isinstance(content, str):
        p.write_text(content)
    else:
        p.write_text(json.dumps(content))
    return p


def case_folder(d: Path, *, case_json=None, poses="default", fiducials="default", sidecar="default",
                ct_file: Callable | None = None) -> Path:
    """A complete tiny case folder; each part can be replaced."""
    root = d / "case"
    (root / "xrays").mkdir(parents=True)
    (ct_file or (lambda r: nifti(r / "ct.nii.gz")))(root)
    xray_npy(root / "xrays", "a.npy", sidecar=sidecar)
    if poses == "default":
        poses = {"a.npy": good_pose()}
    if poses is not None:
        pose_file(root, poses, "poses.json")
    if fiducials == "default":
        fiducials = "name,x,y,z\np1,0,0,0\np2,10,0,0\np3,0,10,5\n"
    if fiducials is not None:
        (root / "fiducials.csv").write_bytes(fiducials if isinstance(fiducials, bytes) else fiducials.encode())
    if case_json is not None:
        p = root / "case.json"
        if isinstance(case_json, bytes):
            p.write_bytes(case_json)
        elif isinstance(case_json, str):
            p.write_text(case_json)
        else:
            p.write_text(json.dumps(case_json))
    return root


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width × height`` pixels (the data is a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def tiff_declaring(path: Path, width: int, height: int) -> Path:
    """A little-endian TIFF whose first IFD declares ``width × height`` 8-bit pixels."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8 + 2 + 12 * 8 + 4), (278, 4, 1, height), (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, typ, n, v) if typ == 4 else struct.pack("<HHIHH", tag, typ, n, v, 0)
        for tag, typ, n, v in entries) + struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0" * 16)
    return path


def npy_declaring(path: Path, shape, descr="<f4") -> Path:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
        f.write(b"\0" * 64)
    return path


def nifti_declaring(path: Path, shape, gz=False, pixdim=None, codes=(1, 1)) -> Path:
    """A NIfTI-1 header declaring ``shape`` (float32) followed by a few bytes of data."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    hdr.set_sform(np.eye(4), code=codes[0])
    hdr.set_qform(np.eye(4), code=codes[1])
    if pixdim is not None:
        hdr["pixdim"][1:4] = pixdim
    raw = hdr.binaryblock + b"\0" * 4 + b"\0" * 64
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def dicom_xray(d: Path, name="xray.dcm", edit: Callable | None = None, **kw) -> Path:
    """A 32×32 DICOM X-ray with intrinsics; ``edit(ds)`` changes the dataset before it is saved."""
    import pydicom

    from xraypose.camera import Camera
    from xraypose.xray import write_dicom_xray

    p = d / name
    rng = np.random.default_rng(1)
    px = np.round(1000 + 500 * rng.random((32, 32)))
    write_dicom_xray(p, px, camera=Camera(sdd=1000.0, height=32, width=32, delx=4.0), **kw)
    if edit is not None:
        ds = pydicom.dcmread(str(p))
        edit(ds)
        ds.save_as(str(p), enforce_file_format=True)
    return p


_H5_BYTES: dict = {}  # a valid file of each layout, written once per session, copied for each case


def _h5_file(kind: str, path: Path, edit: Callable | None) -> Path:
    import h5py

    if kind not in _H5_BYTES:
        from xraypose.datasets import write_deepfluoro_fixture, write_ljubljana_fixture
        from xraypose.volume import volume_from_array

        a = _ct_array()
        if kind == "df":
            write_deepfluoro_fixture(path, volume=volume_from_array(a, affine=_affine()), detector=16,
                                     specimens=(1,), n_projections=1, region_mm=(100, 100, 100),
                                     center_ras=(0, 0, 0), spacing_mm=10, step=5)
        else:
            a[5, 5, 5], a[6, 6, 6], a[4, 4, 4] = 3000, 2900, 2800  # bright points for the landmarks
            write_ljubljana_fixture(path, volume=volume_from_array(a, affine=_affine()), subjects=(1,), height=16,
                                    width=16, region_mm=(100, 100, 100), center_ras=(0, 0, 0), spacing_mm=10,
                                    step=5, n_points=3)
        Path(str(path) + ".truth.json").unlink(missing_ok=True)
        _H5_BYTES[kind] = path.read_bytes()
    path.write_bytes(_H5_BYTES[kind])
    if edit is not None:
        with h5py.File(path, "r+") as f:
            edit(f)
    return path


def deepfluoro_h5(path: Path, edit: Callable | None = None) -> Path:
    """A tiny DeepFluoro-layout file (one specimen, one 16×16 X-ray); ``edit(h5file)`` breaks it."""
    return _h5_file("df", path, edit)


def ljubljana_h5(path: Path, edit: Callable | None = None) -> Path:
    """A tiny Ljubljana-layout file (subject 1, 16×16 views); ``edit(h5file)`` breaks it."""
    return _h5_file("lj", path, edit)


def _replace(f, path, value):
    del f[path]
    f[path] = value


def toml(d: Path, text: str | bytes, name="config.toml") -> Path:
    p = d / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


# --------------------------------------------------------------------------
# Command lines around the inputs
# --------------------------------------------------------------------------


def render_args(d: Path, out: Path, ct_path=None, *extra) -> list[str]:
    ctp = ct_path if ct_path is not None else ct(d)
    return ["render", str(ctp), "-o", str(out / "drr.npy"), "--height", "8", "--delx", "20", *extra]


def render_pose(d, out, *extra):
    return render_args(d, out, None, "--pose", "0,0", *extra)


def register_args(d: Path, out: Path, xray=None, ct_path=None, *extra) -> list[str]:
    ctp = ct_path if ct_path is not None else ct(d)
    xp = xray if xray is not None else xray_npy(d)
    return ["register", str(ctp), str(xp), "-o", str(out / "result"), "--init", "ap", "--fast", *extra]


def evaluate_args(case: Path, out: Path, *extra) -> list[str]:
    return ["evaluate", str(case), "-o", str(out / "eval"), "--start", "ap", "--fast", "--no-pictures", "--quiet",
            *extra]


def train_args(d: Path, out: Path, ct_path=None, *extra) -> list[str]:
    ctp = ct_path if ct_path is not None else ct(d)
    return ["train", str(ctp), "-o", str(out / "model.pt"), "--steps", "1", "--quiet", *extra]


def with_pose(d, out, content, option="--pose-json", name="pose.json"):
    p = pose_file(d, content, name)
    if option == "render":
        return render_args(d, out, None, "--pose-json", str(p))
    if option == "--true-pose":
        return register_args(d, out, None, None, "--true-pose", str(p))
    if option == "evaluate":
        return evaluate_args(case_folder(d), out, "--start", "pose", "--pose-json", str(p))
    return register_args(d, out, None, None, "--init", "pose", "--pose-json", str(p))


def with_fiducials(d, out, name, content):
    p = d / name
    if isinstance(content, np.ndarray):
        np.save(p, content)
    elif isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content if isinstance(content, str) else json.dumps(content))
    t = pose_file(d, {"camera_to_world": good_pose()}, "truth.json")
    return register_args(d, out, None, None, "--true-pose", str(t), "--fiducials", str(p))


def with_sidecar(d, out, sidecar, command="register"):
    x = xray_npy(d, sidecar=sidecar)
    if command == "info":
        return ["info", str(x)]
    return register_args(d, out, x)


def with_case(d, out, *extra, **parts):
    return evaluate_args(case_folder(d, **parts), out, *extra)


def with_config(d, out, command, text, *extra):
    c = toml(d, text)
    if command == "register":
        return register_args(d, out, None, None, "--config", str(c), *extra)
    if command == "render":
        return render_pose(d, out, "--config", str(c), *extra)
    if command == "evaluate":
        return evaluate_args(case_folder(d), out, "--config", str(c), *extra)
    if command == "demo":
        return ["demo", "-o", str(out / "demo"), "--fast", "--config", str(c), *extra]
    return train_args(d, out, None, "--config", str(c), *extra)


def mhd(d: Path, header: str, raw: bytes | None = None, name="ct.mhd") -> Path:
    p = d / name
    p.write_text(header)
    if raw is not None:
        (d / "ct.raw").write_bytes(raw)
    return p


def mha(d: Path, header: str, data: bytes | None = None) -> Path:
    """A MetaImage with its voxels in the same file (``data`` default: a valid 12³ int16 block)."""
    p = d / "ct.mha"
    body = _ct_array().astype("<i2").tobytes(order="F") if data is None else data
    p.write_bytes(header.replace("ct.raw", "LOCAL").encode() + body)
    return p


MHD_OK = ("ObjectType = Image\nNDims = 3\nDimSize = 12 12 12\nElementSpacing = 10 10 10\n"
          "ElementType = MET_SHORT\nElementDataFile = ct.raw\n")


def dicom_series(d: Path, n_slices: int, gaps=None) -> Path:
    """A CT series (GDCM via SimpleITK), ``n_slices`` slices, optional per-slice z positions."""
    import SimpleITK as sitk

    folder = d / "series"
    folder.mkdir()
    arr = _ct_array((12, 12, max(1, n_slices)))
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    img.SetSpacing((10.0, 10.0, 10.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.9"
    zs = gaps if gaps is not None else [10.0 * k for k in range(n_slices)]
    saved = locale.setlocale(locale.LC_ALL)  # GDCM's writer leaves the process in the "C" locale
    try:
        _write_slices(writer, img, folder, uid, zs, n_slices)
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    return folder


def _write_slices(writer, img, folder, uid, zs, n_slices):
    for k in range(n_slices):
        sl = img[:, :, k]
        for tag, value in {"0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{uid}.3.{k + 1}",
                           "0008|0060": "CT", "0020|000d": f"{uid}.1", "0020|000e": f"{uid}.2",
                           "0020|0013": str(k + 1), "0020|0032": f"0\\0\\{zs[k]}",
                           "0020|0037": "1\\0\\0\\0\\1\\0"}.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"s{k:03d}.dcm"))
        writer.Execute(sl)


# --------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    make: Callable[[Path, Path], list]  # (input folder, output folder) -> argv
    words: tuple  # key words the message must hold (case-insensitive)


CASES: list[Case] = []


def case(id_: str, *words: str):
    def deco(fn):
        CASES.append(Case(id_, fn, words))
        return fn
    return deco


def add(id_: str, words, make):
    CASES.append(Case(id_, make, (words,) if isinstance(words, str) else tuple(words)))


# ---- CTs ---------------------------------------------------------------------------------------------------
add("ct-missing", "not found", lambda d, o: render_args(d, o, d / "nope.nii.gz", "--pose", "0,0"))
add("ct-unknown-extension", "extension", lambda d, o: render_args(
    d, o, (d / "ct.png").write_bytes(b"x") and d / "ct.png", "--pose", "0,0"))
add("ct-garbage-nii-gz", "could not read", lambda d, o: render_args(
    d, o, (d / "ct.nii.gz").write_bytes(b"junk" * 100) and d / "ct.nii.gz", "--pose", "0,0"))
add("ct-garbage-nrrd", "could not read", lambda d, o: render_args(
    d, o, (d / "ct.nrrd").write_bytes(b"junk" * 100) and d / "ct.nrrd", "--pose", "0,0"))
add("ct-garbage-mha", "could not read", lambda d, o: render_args(
    d, o, (d / "ct.mha").write_bytes(b"junk" * 100) and d / "ct.mha", "--pose", "0,0"))
add("ct-empty-nii", "could not read", lambda d, o: render_args(
    d, o, (d / "ct.nii").write_bytes(b"") or d / "ct.nii", "--pose", "0,0"))
add("ct-2d", "3d", lambda d, o: render_args(d, o, nifti(d / "ct.nii.gz", np.zeros((5, 6), np.float32),
                                                         np.eye(4)), "--pose", "0,0"))
add("ct-4d", "3d", lambda d, o: render_args(d, o, nifti(d / "ct.nii.gz", np.zeros((4, 4, 4, 2), np.float32),
                                                         np.eye(4)), "--pose", "0,0"))


def _ct_with(value, dtype=np.float32, at=(6, 6, 6)):
    def make(d, o, command="render"):
        a = _ct_array().astype(dtype)
        a[at] = value
        p = nifti(d / "ct.nii.gz", a)
        if command == "register":
            return register_args(d, o, None, p)
        return render_args(d, o, p, "--pose", "0,0")
    return make


add("ct-nan-voxel", "nan", _ct_with(np.nan))
add("ct-inf-voxel", "infinite", _ct_with(np.inf))
add("ct-float64-1e300", ("1e+300", "float32"), _ct_with(1e300, np.float64))
add("ct-float64-1e300-register", ("1e+300",), lambda d, o: _ct_with(1e300, np.float64)(d, o, "register"))
add("ct-float32-1e30", ("1e+30",), _ct_with(1e30))
add("ct-negative-1e20", ("-1e+20",), _ct_with(-1e20, np.float64))
add("ct-complex", "complex", lambda d, o: render_args(
    d, o, nifti(d / "ct.nii.gz", _ct_array().astype(np.complex64)), "--pose", "0,0"))
add("ct-zero-size", "zero-size", lambda d, o: render_args(
    d, o, nifti(d / "ct.nii.gz", np.zeros((0, 3, 3), np.float32), np.eye(4)), "--pose", "0,0"))
add("ct-zero-pixdim-no-sform", ("pixdim", "sform"), lambda d, o: render_args(
    d, o, _nifti_codes(d / "ct.nii", (0.0, 0.0, 0.0)), "--pose", "0,0"))
add("ct-negative-pixdim-no-sform", ("pixdim",), lambda d, o: render_args(
    d, o, _nifti_codes(d / "ct.nii", (-1.0, 1.0, 1.0)), "--pose", "0,0"))
add("ct-zero-pixdim-register", ("pixdim",), lambda d, o: register_args(d, o, None, _nifti_codes(d / "ct.nii",
                                                                                               (0, 0, 0))))


def _nifti_codes(path: Path, pixdim) -> Path:
    """A NIfTI with sform and qform codes 0 and the given pixdim (a valid 12³ CT otherwise)."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(CT_SHAPE)
    hdr.set_data_dtype(np.int16)
    hdr.set_sform(None, code=0)
    hdr.set_qform(None, code=0)
    hdr["pixdim"][1:4] = pixdim
    img = nib.Nifti1Image(_ct_array(), None, header=hdr)
    img.header["pixdim"][1:4] = pixdim
    img.header.set_sform(None, code=0)
    img.header.set_qform(None, code=0)
    raw = img.header.binaryblock + b"\0" * 4 + _ct_array().astype("<i2").tobytes(order="F")
    path.write_bytes(raw)
    return path


def _sform(path, M):
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(CT_SHAPE)
    hdr.set_data_dtype(np.int16)
    hdr.set_sform(np.asarray(M, dtype=float), code=1)
    hdr.set_qform(None, code=0)
    nib.save(nib.Nifti1Image(_ct_array(), None, header=hdr), str(path))
    return path


add("ct-zero-sform-column", "zero voxel spacing", lambda d, o: render_args(
    d, o, _sform(d / "ct.nii.gz", np.diag([10.0, 0.0, 10.0, 1.0])), "--pose", "0,0"))
add("ct-singular-affine", "singular", lambda d, o: render_args(
    d, o, _sform(d / "ct.nii.gz", [[10, 10, 0, 0], [0, 0, 0, 0], [0, 0, 10, 0], [0, 0, 0, 1]]), "--pose", "0,0"))
add("ct-spacing-6e-4-register", ("0.0006 mm", "implausible", "units"), lambda d, o: register_args(
    d, o, None, nifti(d / "ct.nii.gz", affine=_affine(6e-4))))
add("ct-spacing-6000-render", ("6e+03 mm", "implausible"), lambda d, o: render_args(
    d, o, nifti(d / "ct.nii.gz", affine=_affine(6000.0)), "--pose", "0,0"))
add("ct-origin-10-km-render", ("ct.nii.gz", "1e+07 mm", "within ±1e+06 mm"), lambda d, o: render_args(
    d, o, nifti(d / "ct.nii.gz", affine=_affine() + np.pad(np.full((3, 1), 1e7), ((0, 1), (3, 0)))),
    "--pose", "0,0"))  # rendered in float32: a 1 mm CT there came out wrong, without a word
add("ct-huge-nii", ("20000 × 20000 × 20000",), lambda d, o: render_args(
    d, o, nifti_declaring(d / "ct.nii", (20000, 20000, 20000)), "--pose", "0,0"))
add("ct-huge-nii-gz", ("20000 × 20000 × 20000",), lambda d, o: render_args(
    d, o, nifti_declaring(d / "ct.nii.gz", (20000, 20000, 20000), gz=True), "--pose", "0,0"))
add("ct-huge-nii-info", ("20000 × 20000 × 20000",), lambda d, o: [
    "info", str(nifti_declaring(d / "ct.nii", (20000, 20000, 20000)))])
add("ct-truncated-nii", ("12 × 12 × 12", "truncated"), lambda d, o: render_args(
    d, o, nifti_declaring(d / "ct.nii", CT_SHAPE), "--pose", "0,0"))
add("ct-nii-empty", ("ct.nii", "empty (0 bytes)"), lambda d, o: register_args(
    d, o, None, (d / "ct.nii").write_bytes(b"") or d / "ct.nii"))
add("ct-nii-shorter-than-header", ("ct.nii", "truncated", "100 bytes", "348-byte nifti-1 header"), lambda d, o: [
    "info", str(_cut(nifti(d / "ct.nii"), 100))])
add("ct-nii-gz-cut", ("ct.nii.gz", "truncated", "gzip stream ends early"), lambda d, o: register_args(
    d, o, None, _cut(nifti(d / "ct.nii.gz"), 100)))
add("ct-nii-text", ("ct.nii", "not a nifti file"), lambda d, o: render_args(
    d, o, (d / "ct.nii").write_text("not a nifti\n" * 40) and d / "ct.nii", "--pose", "0,0"))
add("ct-nii-gz-not-gzip", ("ct.nii.gz", "not gzip-compressed"), lambda d, o: [
    "info", str((d / "ct.nii.gz").write_text("not a nifti\n" * 40) and d / "ct.nii.gz")])
add("ct-nii-gzipped-as-nii", ("ct.nii", "gzip-compressed", ".nii.gz"), lambda d, o: [
    "info", str(_renamed(nifti(d / "ct.nii.gz"), d / "ct.nii"))])
add("ct-huge-mha", ("100000 × 100000 × 100000",), lambda d, o: render_args(
    d, o, mha(d, MHD_OK.replace("12 12 12", "100000 100000 100000"), b"\0" * 64), "--pose", "0,0"))
add("ct-huge-nrrd", ("100000 × 100000 × 100000",), lambda d, o: render_args(
    d, o, (d / "ct.nrrd").write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 100000 100000 100000\n"
                                      b"spacings: 1 1 1\nencoding: raw\nendian: little\n\n" + b"\0" * 64)
    and d / "ct.nrrd", "--pose", "0,0"))
add("ct-mhd-missing-raw", ("ct.raw", "missing"), lambda d, o: render_args(d, o, mhd(d, MHD_OK), "--pose", "0,0"))
add("ct-mhd-short-raw", ("ct.raw", "truncated"), lambda d, o: render_args(
    d, o, mhd(d, MHD_OK, b"\0" * 100), "--pose", "0,0"))
add("ct-mha-zero-spacing", "spacing", lambda d, o: render_args(
    d, o, mha(d, MHD_OK.replace("10 10 10", "10 0 10")), "--pose", "0,0"))
add("ct-nrrd-vector", "components", lambda d, o: render_args(d, o, _vector_nrrd(d), "--pose", "0,0"))
add("ct-1x1x2-register", ("too small", "1 × 1 × 2"), lambda d, o: register_args(
    d, o, None, nifti(d / "ct.nii.gz", np.array([[[0, 1000]]], np.int16), np.eye(4))))
add("ct-1x1x2-train", ("too small",), lambda d, o: train_args(
    d, o, nifti(d / "ct.nii.gz", np.array([[[0, 1000]]], np.int16), np.eye(4))))
add("ct-2x40x40-register", ("too small",), lambda d, o: register_args(
    d, o, None, nifti(d / "ct.nii.gz", _ct_array((2, 40, 40)), np.eye(4))))
add("ct-constant-render", "constant", lambda d, o: render_args(
    d, o, nifti(d / "ct.nii.gz", np.full(CT_SHAPE, 7, np.int16)), "--pose", "0,0"))
add("ct-empty-dicom-folder", "empty", lambda d, o: render_args(
    d, o, (d / "dcm").mkdir() or d / "dcm", "--pose", "0,0"))
add("ct-empty-folder-named-like-a-file", ("empty", "a folder named like a .nii.gz file: give the file itself"),
    lambda d, o: render_args(d, o, (d / "ct.nii.gz").mkdir() or d / "ct.nii.gz", "--pose", "0,0"))
add("ct-folder-without-dicom", "no dicom", lambda d, o: render_args(
    d, o, ((d / "dcm").mkdir(), (d / "dcm" / "a.txt").write_text("hi"))[1] and d / "dcm", "--pose", "0,0"))
add("ct-dicom-one-slice", "slice", lambda d, o: render_args(d, o, dicom_series(d, 1), "--pose", "0,0"))
add("ct-dicom-uneven-slices", "uneven", lambda d, o: render_args(
    d, o, dicom_series(d, 4, gaps=[0.0, 10.0, 30.0, 40.0]), "--pose", "0,0"))
add("ct-dicom-radiographs", ("projection radiographs", "modality xa"), lambda d, o: render_args(
    d, o, _retagged(dicom_series(d, 4), Modality="XA", SOPClassUID="1.2.840.10008.5.1.4.1.1.12.1"), "--pose", "0,0"))
add("ct-dicom-slices-of-two-sizes", ("differ in size", "8 × 8", "one ct series"), lambda d, o: render_args(
    d, o, _one_slice_cropped(dicom_series(d, 4)), "--pose", "0,0"))
add("ct-dicom-without-series-uid", ("without a seriesinstanceuid", "uneven"), lambda d, o: render_args(
    d, o, _retagged(dicom_series(d, 4, gaps=[0.0, 10.0, 30.0, 40.0]), SeriesInstanceUID=None), "--pose", "0,0"))
add("ct-dicom-last-slice-without-position", ("s003.dcm", "imagepositionpatient", "found none"), lambda d, o: render_args(
    d, o, _slice_retagged(dicom_series(d, 4), 3, ImagePositionPatient=...), "--pose", "0,0"))  # GDCM: 1 mm, silently
add("ct-dicom-without-positions", ("s000.dcm", "imagepositionpatient", "does not guess"), lambda d, o: [
    "info", str(_retagged(dicom_series(d, 4), ImagePositionPatient=...))])
add("ct-dicom-slice-of-another-pixel-spacing", ("s002.dcm", "pixelspacing [5.0, 5.0]", "[10.0, 10.0]"),
    lambda d, o: render_args(d, o, _slice_retagged(dicom_series(d, 4), 2, PixelSpacing=[5, 5]), "--pose", "0,0"))
add("ct-dicom-without-pixel-spacing", ("pixelspacing", "found none", "does not guess 1 mm"), lambda d, o: [
    "info", str(_retagged(dicom_series(d, 4), PixelSpacing=...))])  # GDCM: 1 mm, silently
add("ct-in-case-folder-nan", ("nan",), lambda d, o: with_case(
    d, o, ct_file=lambda r: nifti(r / "ct.nii.gz", _ct_with_nan())))


def _cut(path: Path, n: int) -> Path:
    """``path`` cut to its first ``n`` bytes (an incomplete copy)."""
    path.write_bytes(path.read_bytes()[:n])
    return path


def _renamed(path: Path, to: Path) -> Path:
    path.rename(to)
    return to


def _retagged(folder: Path, **tags) -> Path:
    """Every DICOM file of ``folder`` with the given tags (pydicom keywords) set (``...``: removed)."""
    import pydicom

    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        for k, v in tags.items():
            delattr(ds, k) if v is ... else setattr(ds, k, v)
        ds.save_as(f)
    return folder


def _slice_retagged(folder: Path, index: int, **tags) -> Path:
    """The series with the given tags set (``...``: removed) on its slice ``index`` (in name order) only."""
    import pydicom

    f = sorted(folder.iterdir())[index]
    ds = pydicom.dcmread(f)
    for k, v in tags.items():
        delattr(ds, k) if v is ... else setattr(ds, k, v)
    ds.save_as(f)
    return folder


def _one_slice_cropped(folder: Path) -> Path:
    """The series with its last slice cut to 8 × 8 pixels (ITK's series reader: "Size mismatch!")."""
    import pydicom

    f = sorted(folder.iterdir())[-1]
    ds = pydicom.dcmread(f)
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[:8, :8]).tobytes()
    ds.Rows, ds.Columns = 8, 8
    ds.save_as(f)
    return folder


def _ct_with_nan():
    a = _ct_array().astype(np.float32)
    a[1, 2, 3] = np.nan
    return a


def _vector_nrrd(d: Path) -> Path:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.zeros((12, 12, 12, 3), np.float32), isVector=True)
    sitk.WriteImage(img, str(d / "ct.nrrd"))
    return d / "ct.nrrd"


# ---- X-ray files ---------------------------------------------------------------------------------------------
add("xray-missing", "not found", lambda d, o: register_args(d, o, d / "nope.npy"))
add("xray-folder", "folder", lambda d, o: register_args(d, o, (d / "x").mkdir() or d / "x"))
add("xray-png-bomb", ("100000 × 100000",), lambda d, o: register_args(d, o, png_declaring(d / "x.png", 100000, 100000)))
add("xray-png-bomb-info", ("100000 × 100000",), lambda d, o: ["info", str(png_declaring(d / "x.png", 100000,
                                                                                           100000))])
add("xray-png-large", ("30000 × 20000",), lambda d, o: register_args(d, o, png_declaring(d / "x.png", 20000, 30000)))
add("xray-tiff-huge", ("100000 × 100000",), lambda d, o: register_args(d, o, tiff_declaring(d / "x.tif", 100000,
                                                                                           100000)))
add("xray-npy-huge", ("100000 × 100000",), lambda d, o: register_args(d, o, npy_declaring(d / "x.npy",
                                                                                          (100000, 100000))))
add("xray-npy-huge-info", ("100000 × 100000",), lambda d, o: ["info", str(npy_declaring(d / "x.npy",
                                                                                        (100000, 100000)))])
add("xray-npy-truncated", ("truncated",), lambda d, o: register_args(d, o, npy_declaring(d / "x.npy", (64, 64))))
add("xray-npy-rgb", ("(128, 128, 3)", "colour"), lambda d, o: register_args(d, o, xray_npy(
    d, arr=np.random.default_rng(0).random((128, 128, 3)).astype(np.float32))))
add("xray-npy-rgba", ("(128, 128, 4)", "colour"), lambda d, o: register_args(d, o, xray_npy(
    d, arr=np.random.default_rng(0).random((128, 128, 4)).astype(np.float32))))
add("xray-npy-object", "not numeric", lambda d, o: register_args(d, o, _npy_object(d)))
add("xray-npy-4d", "2d", lambda d, o: register_args(d, o, xray_npy(d, arr=np.ones((2, 3, 32, 32), np.float32))))
add("xray-npy-1d", "2d", lambda d, o: register_args(d, o, xray_npy(d, arr=np.ones(32, np.float32))))
add("xray-npy-empty", "empty", lambda d, o: register_args(d, o, xray_npy(d, arr=np.ones((0, 32), np.float32))))
add("xray-npy-nan", "nan", lambda d, o: register_args(d, o, xray_npy(d, arr=_img_with(np.nan))))
add("xray-npy-inf", "infinite", lambda d, o: register_args(d, o, xray_npy(d, arr=_img_with(np.inf))))
add("xray-npy-complex", "complex", lambda d, o: register_args(d, o, xray_npy(
    d, arr=(np.ones((32, 32)) + 1j).astype(np.complex64))))
add("xray-npy-bool", "booleans", lambda d, o: register_args(d, o, xray_npy(d, arr=np.ones((32, 32), bool))))
add("xray-npy-string", "not numeric", lambda d, o: register_args(d, o, xray_npy(d, arr=np.full((4, 4), "a"))))
add("xray-npy-garbage", "cannot read", lambda d, o: register_args(
    d, o, (d / "x.npy").write_bytes(b"junk" * 20) and d / "x.npy"))
add("xray-npy-1x1", "too small", lambda d, o: register_args(d, o, xray_npy(d, arr=np.ones((1, 1), np.float32))))
add("xray-npy-3x3", "too small", lambda d, o: register_args(d, o, xray_npy(d, arr=np.ones((3, 3), np.float32))))
add("xray-npy-constant", ("every pixel is 5;", "constant"), lambda d, o: register_args(d, o, xray_npy(
    d, arr=np.full((32, 32), 5.0, np.float32))))  # the file's value, not the log's (-3e-16)
add("xray-npy-no-intrinsics", ("sdd",), lambda d, o: register_args(d, o, xray_npy(d, sidecar=None)))
add("xray-png-garbage", "not a readable", lambda d, o: register_args(
    d, o, (d / "x.png").write_bytes(b"junk" * 20) and d / "x.png"))
add("xray-png-truncated", ("truncated",), lambda d, o: register_args(d, o, _png_truncated(d)))
add("xray-tiff-first-100-bytes", ("x.tif", "truncated or corrupt"), lambda d, o: register_args(
    d, o, _cut(_tiff(d / "x.tif"), 100)))  # PIL warns "Corrupt EXIF data" twice: not beside the error
add("xray-png-colour", "colour", lambda d, o: register_args(d, o, _png_colour(d)))
add("xray-tiff-garbage", "not a readable", lambda d, o: register_args(
    d, o, (d / "x.tif").write_bytes(b"junk" * 20) and d / "x.tif"))
add("xray-dcm-garbage", "not a dicom", lambda d, o: register_args(
    d, o, (d / "x.dcm").write_bytes(b"junk" * 50) and d / "x.dcm"))
add("xray-jpg", "not a dicom", lambda d, o: register_args(
    d, o, (d / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"junk" * 50) and d / "x.jpg"))
add("xray-dcm-no-pixels", "no pixel data", lambda d, o: register_args(
    d, o, dicom_xray(d, edit=lambda ds: delattr(ds, "PixelData"))))
add("xray-dcm-zero-spacing", "pixel spacing", lambda d, o: register_args(
    d, o, dicom_xray(d, edit=lambda ds: setattr(ds, "ImagerPixelSpacing", ["0", "0"]))))
add("xray-dcm-sdd-text", ("distancesourcetodetector", "not a number"), lambda d, o: register_args(
    d, o, dicom_xray(d, edit=lambda ds: ds.__setitem__(0x00181110, _elem(0x00181110, "LO", "far")))))
add("xray-dcm-no-sdd", "source-to-detector", lambda d, o: register_args(
    d, o, dicom_xray(d, edit=lambda ds: delattr(ds, "DistanceSourceToDetector"))))
add("xray-dcm-slope-zero", "rescaleslope", lambda d, o: register_args(
    d, o, dicom_xray(d, rescale=(0.0, 0.0))))
add("xray-dcm-rgb-photometric", "greyscale", lambda d, o: register_args(
    d, o, dicom_xray(d, photometric="YBR_FULL")))
add("xray-dcm-bad-orientation", "patientorientation", lambda d, o: register_args(
    d, o, dicom_xray(d, primary=0, secondary=0, sod=600, patient_orientation=("Q", "F"))))
add("xray-dcm-huge-rows", ("60000 × 60000",), lambda d, o: register_args(
    d, o, dicom_xray(d, edit=lambda ds: (setattr(ds, "Rows", 60000), setattr(ds, "Columns", 60000)))))
add("xray-dcm-huge-frames", ("truncated",), lambda d, o: register_args(  # 10⁸ pixels of 32² frames: a cine's size
    d, o, dicom_xray(d, edit=lambda ds: setattr(ds, "NumberOfFrames", 100000))))
add("xray-dcm-frames-beyond-memory", ("1000000000 × 32 × 32 pixels", "of memory"), lambda d, o: register_args(
    d, o, dicom_xray(d, edit=lambda ds: setattr(ds, "NumberOfFrames", 10**9))))
add("xray-dcm-rows-fewer-than-the-data", ("xray.dcm", "(20 × 32 × 1 pixels", "rows (0028,0010)", "cut or sheared"),
    lambda d, o: register_args(d, o, dicom_xray(d, edit=lambda ds: setattr(ds, "Rows", 20))))  # pydicom: a warning
add("xray-dcm-columns-fewer-than-the-data", ("xray.dcm", "384 more", "does not match the data"), lambda d, o: [
    "info", str(dicom_xray(d, edit=lambda ds: setattr(ds, "Columns", 26)))])  # of "excess padding", then a sheared image
add("xray-dcm-truncated-pixels", ("truncated",), lambda d, o: register_args(
    d, o, dicom_xray(d, edit=lambda ds: setattr(ds, "PixelData", ds.PixelData[:100]))))
add("xray-dcm-primary-720", ("positionerprimaryangle", "[-180, 180]", "720"), lambda d, o: register_args(
    d, o, dicom_xray(d, primary=0, secondary=0, sod=600, edit=lambda ds: setattr(ds, "PositionerPrimaryAngle", "720")),
    None, "--init", "angles"))
add("xray-dcm-secondary-120", ("positionersecondaryangle", "[-90, 90]", "120"), lambda d, o: register_args(
    d, o, dicom_xray(d, primary=0, secondary=0, sod=600,
                     edit=lambda ds: setattr(ds, "PositionerSecondaryAngle", "120")), None, "--init", "angles"))
add("xray-dcm-sod-beyond-sdd", ("2000 mm (distancesourcetopatient", "1000 mm (distancesourcetodetector"),
    lambda d, o: register_args(d, o, dicom_xray(d, primary=0, secondary=0, sod=2000), None, "--init", "angles"))
add("register-ap-sod-beyond-sdd", ("1500 mm (--sod)", "1000 mm"), lambda d, o: register_args(
    d, o, None, None, "--sod", "1500"))
# an isocenter off the CT: the AP start looked at it, the registration ran on empty DRRs and failed only when
# writing ("result.similarity holds a non-finite number"); now refused before reading the X-ray
add("register-isocenter-outside-ct", ("--isocenter 5000,0,0", "outside the ct", "box spans"), lambda d, o: register_args(
    d, o, None, None, "--isocenter", "5000,0,0"))
add("xray-dcm-angles-no-sod", ("--sod",), lambda d, o: [
    "register", str(ct(d)), str(dicom_xray(d, primary=10, secondary=0)), "-o", str(o / "r"), "--fast"])


def _elem(tag, vr, value):
    from pydicom.dataelem import DataElement

    return DataElement(tag, vr, value)


def _img_with(v):
    a = np.ones((32, 32), np.float32) * 100
    a[3, 4] = v
    return a


def _npy_object(d):
    p = d / "x.npy"
    np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    (d / "x.json").write_text(json.dumps({"sdd_mm": 1000, "delx_mm": 1}))
    return p


def _png_colour(d):
    from PIL import Image

    a = np.random.default_rng(0).integers(0, 255, (32, 32, 3)).astype(np.uint8)
    Image.fromarray(a).save(d / "x.png")
    (d / "x.json").write_text(json.dumps({"sdd_mm": 1000, "delx_mm": 1}))
    return d / "x.png"


def _tiff(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8)).save(path)
    path.with_suffix(".json").write_text(json.dumps({"sdd_mm": 1000, "delx_mm": 1}))
    return path


def _png_truncated(d):
    from PIL import Image

    a = np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8)
    Image.fromarray(a).save(d / "full.png")
    data = (d / "full.png").read_bytes()
    (d / "full.png").unlink()
    (d / "x.png").write_bytes(data[: len(data) // 2])
    (d / "x.json").write_text(json.dumps({"sdd_mm": 1000, "delx_mm": 1}))
    return d / "x.png"


# ---- sidecar JSON -------------------------------------------------------------------------------------------
_SIDE = {"sdd_mm": 1000.0, "delx_mm": 4.0, "dely_mm": 4.0, "kind": "intensity"}


def side(**kw):
    out = dict(_SIDE)
    for k, v in kw.items():
        if v is ...:
            out.pop(k, None)
        else:
            out[k] = v
    return out


for _id, _side, _words in [
    ("height-abc", side(height="abc"), ("height", "abc", "whole number")),
    ("height-float", side(height=32.5), ("height", "32.5")),
    ("height-mismatch", side(height=999), ("height", "999", "sizes differ")),
    ("width-negative", side(width=-1), ("width", "-1")),
    ("width-bool", side(width=True), ("width", "true")),
    ("sdd-text", side(sdd_mm="abc"), ("sdd_mm", "abc", "number")),
    ("sdd-negative", side(sdd_mm=-5), ("sdd_mm", "-5")),
    ("sdd-zero", side(sdd_mm=0), ("sdd_mm", "0")),
    ("sdd-1e308", side(sdd_mm=1e308), ("sdd_mm", "1e+308")),
    ("sdd-null-and-missing", side(sdd_mm=None), ("sdd_mm", "null")),
    ("delx-zero", side(delx_mm=0), ("delx_mm",)),
    ("delx-1e-300", side(delx_mm=1e-300), ("delx_mm", "[0.001, 1000]")),
    ("delx-bool", side(delx_mm=True), ("delx_mm", "true")),
    ("delx-list", side(delx_mm=[1, 2]), ("delx_mm", "[1, 2]")),
    ("dely-negative", side(dely_mm=-0.2), ("dely_mm", "-0.2")),
    ("x0-text", side(x0_mm="left"), ("x0_mm", "left")),
    ("y0-1e308", side(y0_mm=1e308), ("y0_mm",)),
    ("reverse-string-false", side(reverse_x_axis="false"), ("reverse_x_axis", "'false'", "true or false")),
    ("reverse-one", side(reverse_x_axis=1), ("reverse_x_axis", "1")),
    ("kind-unknown", side(kind="xray"), ("kind", "xray")),
    ("kind-number", side(kind=5), ("kind", "5")),
    ("primary-text", side(primary_deg="LAO", sod_mm=600), ("primary_deg", "lao")),
    ("primary-1e308", side(primary_deg=1e308, sod_mm=600), ("primary_deg",)),
    ("secondary-200", side(secondary_deg=200, sod_mm=600), ("secondary_deg", "200")),
    ("sod-zero", side(primary_deg=0, sod_mm=0), ("sod_mm",)),
    ("unknown-key-sdd", side(sdd=1000), ("unknown key", "'sdd'")),
    ("unknown-key-spacing", side(pixel_spacing=[1, 1]), ("unknown key", "pixel_spacing")),
    ("orientation-number", side(patient_orientation=5), ("patient_orientation", "5")),
    ("orientation-one", side(patient_orientation=["L"]), ("patient_orientation",)),
]:
    add(f"sidecar-{_id}", _words, lambda d, o, s=_side: with_sidecar(d, o, s))

add("sidecar-nan-literal", ("sdd_mm", "nan"), lambda d, o: with_sidecar(
    d, o, '{"sdd_mm": NaN, "delx_mm": 4, "kind": "intensity"}'))
add("sidecar-infinity-literal", ("delx_mm", "inf"), lambda d, o: with_sidecar(
    d, o, '{"sdd_mm": 1000, "delx_mm": Infinity}'))
add("sidecar-list", ("object", "list"), lambda d, o: with_sidecar(d, o, "[1000, 4]"))
add("sidecar-invalid-json", ("not valid json",), lambda d, o: with_sidecar(d, o, '{"sdd_mm": 1000,'))
add("sidecar-empty", ("not valid json",), lambda d, o: with_sidecar(d, o, ""))
add("sidecar-not-utf8", ("utf-8",), lambda d, o: with_sidecar(d, o, b'{"sdd_mm": 1000, "kind": "\xff\xfe"}'))
add("sidecar-duplicate-key", ("sdd_mm", "twice"), lambda d, o: with_sidecar(
    d, o, '{"sdd_mm": 1000, "delx_mm": 4, "sdd_mm": 500}'))
add("sidecar-height-abc-info", ("height", "abc"), lambda d, o: with_sidecar(d, o, side(height="abc"), "info"))
add("sidecar-reverse-string-info", ("reverse_x_axis",), lambda d, o: with_sidecar(
    d, o, side(reverse_x_axis="false"), "info"))
add("sidecar-not-utf8-info", ("utf-8",), lambda d, o: with_sidecar(d, o, b"\xff\xfe\x00{", "info"))

# ---- case folders ---------------------------------------------------------------------------------------------
add("case-missing", "not found", lambda d, o: evaluate_args(d / "nope", o))
add("case-no-ct", "no ct", lambda d, o: evaluate_args(
    (case_folder(d) / "ct.nii.gz").unlink() or d / "case", o))
add("case-no-xrays-folder", "xrays/", lambda d, o: evaluate_args(_rm_tree(case_folder(d) / "xrays"), o))
add("case-empty-xrays", "holds no x-ray", lambda d, o: evaluate_args(_empty_xrays(case_folder(d)), o))
for _id, _cj, _words in [
    ("isocenter-two", {"isocenter": [1, 2]}, ("isocenter", "3 numbers", "[1, 2]")),
    ("isocenter-text", {"isocenter": "middle"}, ("isocenter", "middle")),
    ("isocenter-nan", '{"isocenter": [NaN, 0, 0]}', ("isocenter", "nan")),
    ("isocenter-1e308", {"isocenter": [1e308, 0, 0]}, ("isocenter", "1e+308")),
    ("isocenter-nested", {"isocenter": [[1, 2, 3]]}, ("isocenter",)),
    ("unknown-top-key", {"isocentre": [0, 0, 0]}, ("unknown key", "isocentre")),
    ("xray-unknown-keyword", {"xrays": {"a.npy": {"sdd_mm": 1000}}}, ("unknown key", "sdd_mm", "a.npy")),
    ("xray-unknown-keyword2", {"xrays": {"a.npy": {"focal": 1000}}}, ("unknown key", "focal")),
    ("xray-entry-number", {"xrays": {"a.npy": 5}}, ("a.npy", "object", "5")),
    ("xray-entry-list", {"xrays": {"a.npy": [1000]}}, ("a.npy", "object")),
    ("xrays-list", {"xrays": ["a.npy"]}, ("xrays", "object")),
    ("xray-entry-missing-file", {"xrays": {"b.npy": {"sdd": 1000}}}, ("b.npy", "not in")),
    ("xray-sdd-text", {"xrays": {"a.npy": {"sdd": "far"}}}, ("sdd", "far")),
    ("xray-reverse-string", {"xrays": {"a.npy": {"reverse_x_axis": "false"}}}, ("reverse_x_axis", "'false'")),
    ("xray-frames-all", {"xrays": {"a.npy": {"frames": "all"}}}, ("frames", "all")),
    ("xray-kind-bad", {"xrays": {"a.npy": {"kind": "fluoro"}}}, ("kind", "fluoro")),
    ("xray-delx-nan", '{"xrays": {"a.npy": {"delx": NaN}}}', ("delx", "nan")),
    ("list", [1, 2, 3], ("case.json", "object")),
    ("invalid-json", "{'isocenter': 1}", ("case.json", "not valid json")),
    ("not-utf8", b'{"description": "\xe9t\xe9"}', ("case.json", "utf-8")),
    ("description-number", {"description": 5}, ("description", "text")),
]:
    add(f"case-json-{_id}", _words, lambda d, o, c=_cj: with_case(d, o, case_json=c))

for _id, _poses, _words in [
    ("list", [good_pose()], ("poses.json", "object")),
    ("entry-string", {"a.npy": "identity"}, ("a.npy", "identity")),
    ("entry-no-c2w", {"a.npy": {"pose": good_pose()}}, ("a.npy", "camera_to_world")),
    ("entry-ragged", {"a.npy": [[1, 0, 0, 0], [0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}, ("a.npy", "4×4")),
    ("entry-scaled", {"a.npy": (2 * np.eye(4)).tolist()}, ("a.npy", "rigid", "[0, 0, 0, 1]")),
    ("entry-stretched", {"a.npy": np.diag([2.0, 1, 1, 1]).tolist()}, ("a.npy", "orthonormal")),
    ("entry-reflection", {"a.npy": np.diag([-1.0, 1, 1, 1]).tolist()}, ("a.npy", "reflection")),
    ("entry-1e308", {"a.npy": [[1, 0, 0, 1e308], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}, ("a.npy", "1e+308")),
    ("unknown-xray", {"a.npy": good_pose(), "b.npy": good_pose()}, ("b.npy",)),
    # an evaluation's pose.json pasted in holds both matrices: one edited, the other was used without a word
    ("entry-c2w-w2c-disagree", {"a.npy": {"camera_to_world": good_pose(), "world_to_camera": good_pose()}},
     ("poses.json pose of 'a.npy'", "not each other's inverse")),
    ("entry-w2c-text", {"a.npy": {"camera_to_world": good_pose(), "world_to_camera": "identity"}},
     ("a.npy/world_to_camera", "identity")),
    ("invalid-json", "{", ("poses.json", "not valid json")),
    ("not-utf8", b"\xff\xfe{}", ("poses.json", "utf-8")),
]:
    add(f"case-poses-{_id}", _words, lambda d, o, p=_poses: with_case(d, o, poses=p))
# a ground truth in other units (the source km away) was scored as a failed registration, not refused
def _far_pose(factor: float = 100.0) -> list:
    """good_pose() with the source ``factor`` times farther from the isocenter (the origin): 60 m, not 600 mm."""
    T = np.asarray(good_pose())
    T[:3, 3] *= factor
    return T.tolist()


add("case-poses-truth-out-of-view", ("ground-truth pose of x-ray 'a.npy'", "does not see the ct"),
    lambda d, o: with_case(d, o, poses={"a.npy": _far_pose()}))
add("case-poses-nan", ("a.npy", "nan"), lambda d, o: with_case(
    d, o, poses='{"a.npy": [[NaN, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}'))

for _id, _fid, _words in [
    ("text", "name,x,y,z\np1,a,b,c\n", ("fiducials.csv", "numbers")),
    ("two-columns", "p1,1\n", ("fiducials.csv", "name,x,y,z")),
    ("nan", "p1,nan,0,0\n", ("fiducials.csv", "finite")),
    ("huge", "p1,1e308,0,0\n", ("fiducials.csv", "1e+308")),
    ("empty", "", ("fiducials.csv", "no fiducial point")),
    ("not-utf8", b"p1,0,0,0\n\xff\xfe,1,2,3\n", ("fiducials.csv", "utf-8")),
]:
    add(f"case-fiducials-{_id}", _words, lambda d, o, f=_fid: with_case(d, o, fiducials=f))
add("case-sidecar-reverse-string", ("reverse_x_axis",), lambda d, o: with_case(
    d, o, sidecar=side(reverse_x_axis="false")))
add("case-sidecar-height-abc", ("height", "abc"), lambda d, o: with_case(d, o, sidecar=side(height="abc")))
add("case-specimen-given", "--specimen", lambda d, o: evaluate_args(case_folder(d), o, "--specimen", "1"))
for _name in ("fiducials.csv", "poses.json", "rig.json"):  # a folder of that name was passed over: no metrics, no
    # ground truth, no rig, silently
    add(f"case-{_name.split('.')[0]}-folder", (_name, "folder"), lambda d, o, n=_name: evaluate_args(
        _folder_named(case_folder(d), n), o))
add("case-rig-camera-other-size", ("rig.json", "64 × 64", "32 × 32"), lambda d, o: evaluate_args(_with_rig(
    case_folder(d), {"views": {"a.npy": {"camera_to_rig": np.eye(4).tolist(), "camera": {
        "sdd_mm": 1000.0, "delx_mm": 2.0, "height": 64, "width": 64}}}}), o))  # rig.json's intrinsics were ignored


def _folder_named(root: Path, name: str) -> Path:
    (root / name).unlink(missing_ok=True)
    (root / name).mkdir()
    return root


def _with_rig(root: Path, doc: dict) -> Path:
    (root / "rig.json").write_text(json.dumps(doc))
    return root


def _rm_tree(p: Path) -> Path:
    import shutil

    shutil.rmtree(p)
    return p.parent


def _empty_xrays(root: Path) -> Path:
    for f in (root / "xrays").iterdir():
        f.unlink()
    return root


# ---- pose files ---------------------------------------------------------------------------------------------
_W2C_ZEROS = {"world_to_camera": np.zeros((4, 4)).tolist()}
for _id, _content, _where, _words in [
    ("missing-key", {"pose": 1}, "--pose-json", ("camera_to_world",)),
    ("list", [good_pose()], "--pose-json", ("pose.json", "object")),
    ("c2w-string", {"camera_to_world": "identity"}, "--pose-json", ("camera_to_world", "identity")),
    ("c2w-ragged", {"camera_to_world": [[1, 0, 0, 0], [0, 1], [0, 0, 1, 0], [0, 0, 0, 1]]}, "--pose-json",
     ("camera_to_world", "4×4")),
    ("c2w-3x3", {"camera_to_world": np.eye(3).tolist()}, "--pose-json", ("camera_to_world", "4×4")),
    ("c2w-scaled", {"camera_to_world": (2 * np.eye(4)).tolist()}, "--pose-json", ("camera_to_world", "rigid")),
    ("c2w-sheared", {"camera_to_world": [[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}, "--pose-json",
     ("camera_to_world", "orthonormal")),
    ("c2w-reflection", {"camera_to_world": np.diag([1.0, -1, 1, 1]).tolist()}, "--pose-json",
     ("camera_to_world", "reflection")),
    ("c2w-last-row", {"camera_to_world": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]]}, "--pose-json",
     ("camera_to_world", "[0, 0, 0, 1]")),
    ("c2w-1e308-translation", {"camera_to_world": [[1, 0, 0, 1e308], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]},
     "--pose-json", ("camera_to_world", "1e+308")),
    ("c2w-1e308-rotation", {"camera_to_world": [[1e308, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]},
     "--pose-json", ("camera_to_world", "1e+308")),
    ("c2w-bools", {"camera_to_world": np.eye(4, dtype=bool).tolist()}, "--pose-json", ("camera_to_world", "true")),
    ("c2w-nested-nulls", {"camera_to_world": [[None] * 4] * 4}, "--pose-json", ("camera_to_world", "null")),
    ("w2c-zeros", _W2C_ZEROS, "--pose-json", ("world_to_camera",)),
    ("w2c-ragged", {"world_to_camera": [[1, 0, 0], [0, 1, 0, 0]]}, "--pose-json", ("world_to_camera", "4×4")),
    ("w2c-string", {"world_to_camera": "abc"}, "--pose-json", ("world_to_camera", "abc")),
    ("w2c-scaled", {"world_to_camera": np.diag([3.0, 3, 3, 1]).tolist()}, "--pose-json",
     ("world_to_camera", "orthonormal")),
    ("both-disagree", {"camera_to_world": good_pose(), "world_to_camera": np.eye(4).tolist()}, "--pose-json",
     ("camera_to_world", "world_to_camera", "inverse")),
    ("result-pose-bad", {"pose": {"camera_to_world": "x"}}, "--pose-json", ("camera_to_world",)),
    ("render-w2c-zeros", _W2C_ZEROS, "render", ("world_to_camera",)),
    ("render-ragged", {"camera_to_world": [[1, 2], [3]]}, "render", ("camera_to_world", "4×4")),
    ("render-string", {"camera_to_world": "abc"}, "render", ("camera_to_world", "abc")),
    ("true-pose-zeros", _W2C_ZEROS, "--true-pose", ("world_to_camera",)),
    ("true-pose-scaled", {"camera_to_world": np.diag([2.0, 2, 2, 1]).tolist()}, "--true-pose", ("orthonormal",)),
    ("evaluate-w2c-zeros", _W2C_ZEROS, "evaluate", ("world_to_camera",)),
]:
    add(f"pose-{_id}", _words, lambda d, o, c=_content, w=_where: with_pose(d, o, c, w))

add("pose-nan-literal", ("camera_to_world", "nan"), lambda d, o: with_pose(
    d, o, '{"camera_to_world": [[NaN, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}'))
add("pose-invalid-json", ("not valid json",), lambda d, o: with_pose(d, o, "{camera_to_world: 1}"))
add("pose-empty-file", ("not valid json",), lambda d, o: with_pose(d, o, ""))
add("pose-not-utf8", ("utf-8",), lambda d, o: with_pose(d, o, b'{"camera_to_world": "\xff"}'))
add("pose-not-utf8-render", ("utf-8",), lambda d, o: with_pose(d, o, b"\xfe\xff", "render"))
add("pose-missing-file", "not found", lambda d, o: register_args(d, o, None, None, "--init", "pose",
                                                                 "--pose-json", str(d / "nope.json")))
add("pose-json-folder", ("folder",), lambda d, o: register_args(d, o, None, None, "--init", "pose",
                                                               "--pose-json", str(_mkdir(d / "poses"))))
add("pose-json-folder-render", ("folder",), lambda d, o: render_args(d, o, None, "--pose-json",
                                                                    str(_mkdir(d / "poses"))))
add("pose-json-folder-evaluate", ("folder",), lambda d, o: evaluate_args(
    case_folder(d), o, "--start", "pose", "--pose-json", str(_mkdir(d / "poses"))))
add("pose-true-pose-folder", ("folder",), lambda d, o: register_args(d, o, None, None, "--true-pose",
                                                                    str(_mkdir(d / "poses"))))


def _mkdir(p: Path) -> Path:
    p.mkdir()
    return p


# ---- fiducials ----------------------------------------------------------------------------------------------
for _id, _name, _content, _words in [
    ("csv-text", "f.csv", "1,2,a\n", ("f.csv", "3d points")),
    ("csv-nan", "f.csv", "1,2,nan\n", ("f.csv", "finite")),
    ("csv-1e308", "f.csv", "1,2,1e308\n", ("f.csv", "1e+308")),
    ("csv-two-columns", "f.csv", "1,2\n3,4\n", ("f.csv", "n×3")),
    ("csv-empty", "f.csv", "", ("f.csv", "no fiducial point")),
    ("csv-not-utf8", "f.csv", b"1,2,3\n\xff,2,3\n", ("f.csv", "utf-8")),
    ("json-dict", "f.json", {"points": "many"}, ("f.json", "many")),
    ("json-ragged", "f.json", [[1, 2, 3], [1, 2]], ("f.json", "entry [1]", "[x, y, z]")),
    ("json-nan", "f.json", "[[1, 2, NaN]]", ("f.json", "finite")),
    ("json-invalid", "f.json", "[[1, 2, 3]", ("f.json", "not valid json")),
    ("json-not-utf8", "f.json", b"[[1,2,3]]\xff", ("f.json", "utf-8")),
    ("npy-shape", "f.npy", np.zeros((4, 2)), ("f.npy", "n×3")),
    ("npy-nan", "f.npy", np.full((2, 3), np.nan), ("f.npy", "finite")),
    ("npy-garbage", "f.npy", b"junk", ("f.npy", "cannot read")),
    # none of them in (or near) the CT: in metres, or another frame: a silent, meaningless mTRE
    ("csv-outside-ct", "f.csv", "x,y,z\n600,400,-700\n610,400,-700\n", ("fiducials", "outside its box", "metres")),
    # in metres about a CT whose box holds the origin: inside the box, but spread over 0.09 mm of a 120 mm CT
    ("csv-metres-ct-about-origin", "f.csv", "x,y,z\n0.03,0.02,-0.04\n-0.02,0.01,0.03\n0.01,-0.03,0.0\n",
     ("fiducials", "span 0.0", "metres")),
]:
    add(f"fiducials-{_id}", _words, lambda d, o, n=_name, c=_content: with_fiducials(d, o, n, c))
add("fiducials-missing", "not found", lambda d, o: register_args(
    d, o, None, None, "--true-pose", str(pose_file(d, {"camera_to_world": good_pose()})), "--fiducials",
    str(d / "nope.csv")))
add("fiducials-folder", "folder", lambda d, o: register_args(
    d, o, None, None, "--true-pose", str(pose_file(d, {"camera_to_world": good_pose()})), "--fiducials",
    str(_mkdir(d / "fids"))))
add("fiducials-without-truth", "--true-pose", lambda d, o: register_args(
    d, o, None, None, "--fiducials", str((d / "f.csv").write_text("1,2,3\n") and d / "f.csv")))

# ---- command-line options -----------------------------------------------------------------------------------
for _opt, _val, _words in [
    ("--sdd", "nan", ("--sdd", "nan")), ("--sdd", "inf", ("--sdd", "inf")), ("--sdd", "0", ("--sdd", "> 0")),
    ("--sdd", "-3", ("--sdd", "-3")), ("--sdd", "1e308", ("--sdd", "1e+308")),
    ("--height", "0", ("--height", "got 0")), ("--height", "-5", ("--height", "-5")),
    ("--height", "1000000", ("--height", "1000000")), ("--width", "0", ("--width",)),
    ("--delx", "0", ("--delx",)), ("--delx", "nan", ("--delx", "nan")), ("--delx", "1e-300", ("--delx", "0.001")), ("--dely", "-1", ("--dely",)),
    ("--x0", "nan", ("--x0", "nan")), ("--y0", "inf", ("--y0", "inf")), ("--samples", "0", ("--samples",)),
    ("--step", "0", ("--step",)), ("--step", "nan", ("--step", "nan")),
    ("--bone-multiplier", "-1", ("--bone-multiplier", "-1")), ("--bone-multiplier", "nan", ("--bone-multiplier",)),
    ("--sod", "0", ("--sod",)), ("--sod", "nan", ("--sod", "nan")),
    ("--isocenter", "nan,0,0", ("--isocenter", "nan")), ("--isocenter", "1,2", ("--isocenter", "3")),
    ("--isocenter", "1e308,0,0", ("--isocenter", "1e+308")), ("--isocenter", "a,b,c", ("--isocenter",)),
    ("--height", "abc", ("--height", "abc")), ("--renderer", "joseph", ("renderer", "joseph")),
    ("--density", "magic", ("density", "magic")),
]:
    add(f"render-{_opt.strip('-')}-{_val}", _words, lambda d, o, a=_opt, v=_val: render_pose(d, o, f"{a}={v}"))
for _val, _words in [("1e308,0", ("--pose", "1e+308")), ("nan,0", ("--pose", "nan")), ("0", ("--pose", "2")),
                     ("a,b", ("--pose", "a,b")), ("0,inf", ("--pose", "inf")), ("0,400", ("--pose", "400"))]:
    add(f"render-pose-{_val}", _words, lambda d, o, v=_val: render_args(d, o, None, f"--pose={v}"))
add("render-isocenter-out-of-view", ("does not see the ct", "field of view"), lambda d, o: render_pose(
    d, o, "--isocenter", "5000,0,0"))
add("render-x0-out-of-view", ("does not see the ct",), lambda d, o: render_pose(d, o, "--x0", "99999"))
# pixels of metres (a spacing in the wrong unit): the CT fell between the rays — render wrote all zeros,
# register ran on empty DRRs and failed only when writing ("result.similarity holds a non-finite number")
add("render-delx-metres", ("would cover", "pixels of the drr", "1000 ×"), lambda d, o: render_args(
    d, o, None, "--pose", "0,0", "--delx", "1000"))
add("register-delx-metres", ("would cover", "pixels of the x-ray", "1000 ×", "pixel spacing"), lambda d, o: register_args(
    d, o, None, None, "--delx", "1000", "--dely", "1000"))
add("render-sod-beyond-sdd", ("2000 mm (--sod)", "1020 mm (--sdd)", "beyond the detector"), lambda d, o: render_pose(
    d, o, "--sod", "2000", "--sdd", "1020"))
add("render-output-jpg", ".npy or .png", lambda d, o: ["render", str(ct(d)), "-o", str(o / "x.jpg"), "--pose", "0,0"])


def _rig_k_without_pixel_mm(d: Path, out: Path) -> list[str]:
    """Two views about the tiny CT, view b given by its K (250 px focal length) without 'pixel_mm': the nominal
    0.2 mm pixels make its sdd 50 mm, and the CT, 500+ mm from the source, lies wholly beyond its detector."""
    from xraypose.rig import rig_from_carm

    rig = rig_from_carm({"a": (0.0, 0.0), "b": (90.0, 0.0)}, sod=600.0)
    views = {n: {"camera_to_rig": rig[n].camera_to_rig.tolist()} for n in rig.names}
    views["b"].update(K=[[250.0, 0.0, 16.0], [0.0, 250.0, 16.0], [0.0, 0.0, 1.0]], height=32, width=32)
    (d / "rig.json").write_text(json.dumps({"views": views}))
    xa, xb = xray_npy(d, "a.npy"), xray_npy(d, "b.npy", sidecar=None)
    pose_file(d, {"rig_to_world": np.eye(4).tolist()}, "start.json")
    return ["register", str(ct(d)), str(xa), str(xb), "--rig", str(d / "rig.json"), "--pose-json",
            str(d / "start.json"), "-o", str(out / "result"), "--fast", "--no-hypotheses"]


# was registered on DRRs of zeros and refused only when writing: "result.similarity holds a non-finite number"
add("register-rig-k-sdd-short-of-the-ct", ("view 1", "beyond the detector", "sdd = 50 mm", "pixel_mm"),
    _rig_k_without_pixel_mm)
# a DRR no X-ray could be (was written: zeros, or negative line integrals)
add("render-ct-of-air-physical", ("all zeros", "'physical'"), lambda d, o: render_args(
    d, o, nifti(d / "ct.nii.gz", np.full(CT_SHAPE, -1000, np.int16)), "--pose", "0,0", "--density", "physical"))
add("render-hu-ct-raw-density", ("negative line integrals", "'raw'"), lambda d, o: render_args(
    d, o, None, "--pose", "0,0", "--density", "raw"))
add("render-tiff-stack-of-zeros-raw", ("all zeros", "'raw'"), lambda d, o: render_args(
    d, o, _tiff_stack(d / "bone.tif", np.zeros((4, 12, 12), np.uint16)), "--pose", "0,0", "--density", "raw"))


def _tiff_stack(path: Path, pages: np.ndarray, spacing=(10.0, 10.0, 10.0)) -> Path:
    """A multi-page TIFF CT (one page per slice) with its sidecar's voxel size."""
    from PIL import Image

    ims = [Image.fromarray(p) for p in pages]
    ims[0].save(path, save_all=True, append_images=ims[1:])
    path.with_suffix(".json").write_text(json.dumps({"spacing_mm": list(spacing)}))
    return path


for _opt, _val, _words in [
    ("--blur", "nan", ("--blur", "nan")), ("--blur", "-1", ("--blur", "-1")), ("--blur", "inf", ("--blur", "inf")),
    ("--threads", "-1", ("--threads", "-1")), ("--threads", "0", ("--threads", "0")),
    ("--size", "0", ("--size",)), ("--size", "8", ("--size", "16")), ("--crop", "-1", ("--crop", "-1")),
    ("--crop", "16", ("--crop", "16")),
    ("--lr-rot", "nan", ("--lr-rot", "nan")), ("--lr-rot", "0", ("--lr-rot",)), ("--lr-trans", "-1", ("--lr-trans",)),
    ("--i0", "0", ("--i0",)), ("--i0", "nan", ("--i0", "nan")), ("--seed", "-1", ("--seed", "-1")),
    ("--angles", "1e308,0", ("--angles", "1e+308")), ("--angles", "nan,0", ("--angles", "nan")),
    ("--angles", "10", ("--angles", "2")), ("--sod", "-1", ("--sod", "-1")), ("--sdd", "nan", ("--sdd", "nan")),
    ("--delx", "0", ("--delx",)), ("--x0", "1e308", ("--x0",)), ("--isocenter", "nan,nan,nan", ("--isocenter", "nan")),
    ("--levels", "0,16", ("--levels", "0")), ("--levels", "a", ("--levels", "a")),
    ("--levels", "16,nan", ("--levels", "nan")),
    ("--similarity", "foo", ("similarity", "foo")), ("--init", "foo", ("--init", "foo")),
    ("--kind", "foo", ("kind", "foo")), ("--parameterization", "foo", ("parameterization", "foo")),
    ("--schedule", "foo", ("schedule", "foo")), ("--density", "foo", ("density", "foo")),
    ("--bone-multiplier", "inf", ("--bone-multiplier", "inf")),
]:
    add(f"register-{_opt.strip('-')}-{_val}", _words,
        lambda d, o, a=_opt, v=_val: register_args(d, o, None, None, f"{a}={v}"))
add("register-output-is-file", ("exists", "not a folder"), lambda d, o: [
    str((d / "r.txt").write_text("x") and d / "r.txt") if a == str(o / "result") else a
    for a in map(str, register_args(d, o))])
add("register-init-model-no-model", "--model", lambda d, o: register_args(d, o, None, None, "--init", "model"))
add("register-model-missing", "not found", lambda d, o: register_args(
    d, o, None, None, "--init", "model", "--model", str(d / "nope.pt")))

for _opt, _val, _words in [
    ("--minutes", "nan", ("--minutes", "nan")), ("--minutes", "0", ("--minutes",)),
    ("--minutes", "-1", ("--minutes", "-1")), ("--minutes", "inf", ("--minutes", "inf")),
    ("--steps", "0", ("--steps",)), ("--size", "0", ("--size",)), ("--size", "100000", ("--size", "100000")),
    ("--batch-size", "0", ("--batch-size",)), ("--seed", "-1", ("--seed", "-1")),
    ("--preset", "foo", ("preset", "foo")), ("--device", "foo", ("device", "foo")),
    ("--parameterization", "foo", ("parameterization", "foo")),
]:
    add(f"train-{_opt.strip('-')}-{_val}", _words, lambda d, o, a=_opt, v=_val: train_args(d, o, None, f"{a}={v}"))

for _opt, _val, _words in [
    ("--perturb", "nan,40", ("--perturb", "nan")), ("--perturb", "10", ("--perturb", "2")),
    ("--perturb", "1e308,0", ("--perturb", "1e+308")), ("--perturb", "10,-5", ("--perturb", "-5")),
    ("--perturb", "400,0", ("--perturb", "400")),
    ("--size", "0", ("--size",)), ("--threads", "-1", ("--threads", "-1")),
    # the valid ids named (DeepFluoro 1-6, Ljubljana 1-10), and a text in the option's words, not the parser's
    # ("Input should be a valid integer, unable to parse string as an integer")
    ("--specimen", "0", ("--specimen", "0", "DeepFluoro specimen 1-6", "Ljubljana subject 1-10")),
    ("--specimen", "abc", ("--specimen", "'abc'", "whole number", "DeepFluoro specimen 1-6")),
    ("--seed", "abc", ("--seed", "must be a whole number", "'abc'")),
    ("--sod", "nan", ("--sod", "nan")), ("--start", "foo", ("--start", "foo")), ("--lr-rot", "nan", ("--lr-rot",)),
    ("--seed", "-3", ("--seed", "-3")), ("--structure", "skull", ("structure", "skull")),
]:
    add(f"evaluate-{_opt.strip('-')}-{_val}", _words,
        lambda d, o, a=_opt, v=_val: evaluate_args(case_folder(d), o, f"{a}={v}"))

for _opt, _val, _words in [
    ("--train-seconds", "nan", ("--train-seconds", "nan")), ("--train-seconds", "0", ("--train-seconds",)),
    ("--train-seconds", "inf", ("--train-seconds", "inf")), ("--cases", "0", ("--cases",)),
    ("--cases", "-1", ("--cases", "-1")), ("--seed", "-1", ("--seed", "-1")),
]:
    add(f"demo-{_opt.strip('-')}-{_val}", _words, lambda d, o, a=_opt, v=_val: ["demo", "-o", str(o / "demo"),
                                                                             "--fast", f"{a}={v}"])
add("info-missing", "not found", lambda d, o: ["info", str(d / "nope.nii.gz")])
add("info-unknown-type", "cannot tell", lambda d, o: ["info", str((d / "x.docx").write_text("x") and d / "x.docx")])


def _link(p: Path, target: str) -> Path:
    p.symlink_to(target)
    return p


def _link_loop(d: Path) -> Path:
    """``l1`` → ``l2`` → ``l1`` (was reported as "file not found")."""
    _link(d / "l2", "l1")
    return _link(d / "l1", "l2")


add("info-symlink-loop", ("l1", "symbolic link loop"), lambda d, o: ["info", str(_link_loop(d))])
add("info-broken-symlink", ("l1 is a symbolic link to missing-target", "does not exist"),
    lambda d, o: ["info", str(_link(d / "l1", "missing-target"))])
add("ct-symlink-loop", ("CT", "symbolic link loop"), lambda d, o: render_args(d, o, _link_loop(d), "--pose", "0,0"))
add("xray-broken-symlink", ("X-ray", "symbolic link to nope.npy", "does not exist"),
    lambda d, o: register_args(d, o, _link(d / "xray.npy", "nope.npy")))
add("pose-symlink-loop", ("pose", "symbolic link loop"), lambda d, o: render_args(
    d, o, None, "--pose-json", str(_link_loop(d))))
add("unknown-option", "--bogus", lambda d, o: render_pose(d, o, "--bogus"))


# ---- model checkpoints: the right format tag, bad contents ------------------------------------------------------
def checkpoint(d: Path, edit: Callable) -> Path:
    """``d/model.pt``: a loadable checkpoint of timm's tiny test network, with ``edit`` applied to its dict."""
    import torch

    from xraypose.camera import Camera
    from xraypose.model import PoseRegressor, checkpoint_dict

    meta = {"camera": Camera(sdd=1000, height=32, width=32, delx=10).to_dict(),
            "normalization": {"mean": 0.3, "std": 0.2, "fill": 0.0}}
    ck = checkpoint_dict(PoseRegressor("test_resnet"), meta)
    edit(ck)
    torch.save(ck, d / "model.pt")
    return d / "model.pt"


def _set(path: str, value):
    """An edit of a checkpoint dict: ``path`` "a/b" sets ck["a"]["b"] (a value of ... deletes it)."""
    def edit(ck):
        *parents, last = path.split("/")
        for k in parents:
            ck = ck[k]
        if value is ...:
            del ck[last]
        else:
            ck[last] = value(ck[last]) if callable(value) else value
    return edit


for _name, _edit, _words in [
    ("meta-empty", _set("meta", {}), ("model.pt", "lacks 'architecture'")),
    ("version-text", _set("version", "abc"), ("model.pt", "version", "'abc'")),
    ("version-none", _set("version", None), ("model.pt", "version", "none")),
    ("meta-list", _set("meta", [1]), ("model.pt", "'meta'", "list")),
    ("architecture-text", _set("meta/architecture", "resnet18"), ("model.pt", "architecture", "dict", "str")),
    ("architecture-extra-key", _set("meta/architecture", lambda a: {**a, "foo": 1}),
     ("model.pt", "unknown architecture key", "foo")),
    ("architecture-pool-text", _set("meta/architecture", lambda a: {**a, "pool_grid": "two"}),
     ("model.pt", "architecture", "two")),
    ("weights-none", _set("model", None), ("model.pt", "'model'", "tensors", "nonetype")),
    ("weights-missing", _set("model/rotation_head.weight", ...), ("model.pt", "1 missing", "rotation_head.weight")),
    ("weights-other-shape", _set("model/translation_head.bias", lambda t: t[:2]),
     ("model.pt", "1 of another shape", "translation_head.bias", "(2,)", "(3,)")),
    ("no-camera", _set("meta/camera", ...), ("model.pt", "lacks 'camera'")),
    ("camera-incomplete", _set("meta/camera", {"sdd_mm": 1000}), ("model.pt", "camera", "height")),
    ("normalization-nan", _set("meta/normalization", {"mean": float("nan"), "std": 0.2}),
     ("model.pt", "normalization", "nan")),
]:
    add(f"register-model-{_name}", _words, lambda d, o, e=_edit: register_args(
        d, o, None, None, "--init", "model", "--model", str(checkpoint(d, e))))
    add(f"info-model-{_name}", _words, lambda d, o, e=_edit: ["info", str(checkpoint(d, e))])



def _resume_from_a_model_file(d: Path, o: Path) -> list:
    """``train --resume`` where NAME.last.pt is a model file (copied over it): ``KeyError: 'config'`` escaped."""
    model = checkpoint(d, lambda ck: None)
    (d / "model.last.pt").write_bytes(model.read_bytes())
    return ["train", str(ct(d)), "-o", str(model), "--resume", "--steps", "1", "--quiet"]  # the files in d: unchanged


add("train-resume-a-model-file", ("model.last.pt", "no training state to resume"), _resume_from_a_model_file)


def _resume_a_newer_state(d: Path, o: Path) -> list:
    """``train --resume`` of a state whose configuration holds a setting this version lacks (a newer xraypose's):
    "config: unknown setting augment.future_setting" named no file, for a config the user had not given."""
    from xraypose.train import TrainConfig

    config = TrainConfig().to_dict()
    config["augment"]["future_setting"] = True
    state = {"optimizer": {}, "scheduler": {}, "step": 0, "images_seen": 0, "renders": 0, "buffer": {}, "rng": {}}
    checkpoint(d, lambda ck: ck.update(state, config=config)).rename(d / "model.last.pt")
    return ["train", str(ct(d)), "-o", str(d / "model.pt"), "--resume", "--steps", "1", "--quiet"]


def _resume_a_crash_dump(d: Path, o: Path) -> list:
    """``train --resume`` of a crash dump copied over NAME.last.pt (it holds an optimiser and a configuration, but
    no schedule, buffer or random state): ``KeyError: 'scheduler'`` escaped once the CT was set up."""
    from xraypose.train import TrainConfig

    config = TrainConfig.from_dict({"model": {"backbone": "test_resnet"},
                                    "camera": {"height": 32, "fov_mm": 100.0}}).to_dict()
    checkpoint(d, lambda ck: ck.update(optimizer={}, config=config, step=3)).rename(d / "model.last.pt")
    return ["train", str(ct(d)), "-o", str(d / "model.pt"), "--resume", "--steps", "1", "--quiet"]


add("train-resume-a-crash-dump", ("model.last.pt", "lacks scheduler", "crash dump"), _resume_a_crash_dump)
add("train-resume-a-newer-state", ("model.last.pt", "augment.future_setting", "another version"),
    _resume_a_newer_state)

# -o naming an input: with --overwrite the model replaced the CT (without, the CT was called "an earlier training")
_TRAINABLE = '[model]\nbackbone = "test_resnet"\n[camera]\nheight = 32\nfov_mm = 100.0\n'  # it would train
add("train-output-is-the-ct", ("output", "ct.nii.gz", "is the ct", "would replace it"), lambda d, o: [
    "train", str(ct(d)), "-o", str(d / "ct.nii.gz"), "--overwrite", "--config", str(toml(d, _TRAINABLE)),
    "--steps", "1", "--quiet"])
add("train-output-is-the-config", ("output", "config.toml", "--config file", "would replace it"), lambda d, o: [
    "train", str(ct(d)), "-o", str(d / "config.toml"), "--overwrite", "--config", str(toml(d, _TRAINABLE)),
    "--steps", "1", "--quiet"])
add("train-output-is-a-users-file", ("output", "model.pt", "not a model xraypose wrote", "text (json?)"),
    lambda d, o: ["train", str(ct(d)), "-o", str((d / "model.pt").write_text('{"mine": 1}') and d / "model.pt"),
                  "--overwrite", "--config", str(toml(d, _TRAINABLE)), "--steps", "1", "--quiet"])
add("train-log-is-a-folder", ("model.log.jsonl", "is a folder"), lambda d, o: train_args(
    d, o, None, "--overwrite") if (o / "model.log.jsonl").mkdir() is None else [])
add("train-state-is-a-folder-at-resume", ("model.last.pt", "is a folder"), lambda d, o: train_args(
    d, o, None, "--resume") if (o / "model.last.pt").mkdir() is None else [])
# -o named as a model's companion: `-o model.last.pt` trained and wrote model.last.last.pt beside it
add("train-output-named-as-a-state", ("output", "model.last.pt", "model.last.last.pt", "-o", "model.pt"), lambda d, o: [
    "train", str(ct(d)), "-o", str(o / "model.last.pt"), "--config", str(toml(d, _TRAINABLE)), "--steps", "1",
    "--quiet"])
add("train-output-named-as-a-crash-dump", ("output", "model.crash.pt", "model.crash.crash.pt"), lambda d, o: [
    "train", str(ct(d)), "-o", str(o / "model.crash.pt"), "--config", str(toml(d, _TRAINABLE)), "--steps", "1",
    "--quiet"])
add("register-model-nan-weights", ("model.pt", "weights hold nan", "translation_head.bias"), lambda d, o: register_args(
    d, o, None, None, "--init", "model", "--model", str(checkpoint(d, lambda ck: ck["model"]["translation_head.bias"]
                                                                  .fill_(float("nan"))))))
add("train-finetune-nan-weights", ("checkpoint", "model.pt", "weights hold nan", "translation_head.bias"),
    lambda d, o: train_args(d, o, None, "--config", str(toml(d, _TRAINABLE)), "--finetune", str(checkpoint(
        d, lambda ck: ck["model"]["translation_head.bias"].fill_(float("nan"))))))
add("register-model-is-a-folder", ("checkpoint", "model.pt", "is a folder"), lambda d, o: register_args(
    d, o, None, None, "--init", "model", "--model", str(_mkdir(d / "model.pt"))))
add("train-output-is-the-finetune-model", ("output", "model.pt", "--finetune checkpoint", "would replace it"),
    lambda d, o: ["train", str(ct(d)), "-o", str(checkpoint(d, lambda ck: None)), "--overwrite", "--finetune",
                  str(d / "model.pt"), "--steps", "1", "--quiet"])


def _objects_pickled(d: Path) -> Path:
    """A torch.save file holding a pathlib.Path (weights_only=True refuses it with several lines and escape codes)."""
    import torch

    torch.save({"path": Path("x")}, d / "model.pt")
    return d / "model.pt"


# torch.load's own messages: miniz, several lines, terminal escape codes, advice to load with weights_only=False
add("register-model-truncated", ("model.pt", "truncated or damaged"), lambda d, o: register_args(
    d, o, None, None, "--init", "model", "--model", str(_cut(checkpoint(d, lambda ck: None), 4000))))
add("register-model-is-a-ct", ("ct.nii.gz", "gzip-compressed", "not a pytorch file"), lambda d, o: register_args(
    d, o, None, None, "--init", "model", "--model", str(ct(d))))
add("info-model-empty", ("model.pt", "empty (0 bytes)"), lambda d, o: [
    "info", str((d / "model.pt").write_bytes(b"") or d / "model.pt")])
add("info-model-holds-objects", ("model.pt", "python objects (pathlib.posixpath)"), lambda d, o: [
    "info", str(_objects_pickled(d))])
add("config-train-backbone-weights-hold-objects", ("backbone weights", "python objects"), lambda d, o: with_config(
    d, o, "train", f'[model]\nbackbone = "test_resnet"\nweights = "{_objects_pickled(d).as_posix()}"\n'
    '[camera]\nheight = 32\nfov_mm = 100.0\n'))

# ---- TOML configs ---------------------------------------------------------------------------------------------
_SMALL_CAMERA = "[camera]\nheight = 32\nfov_mm = 100.0\n"  # the tiny CT fills it: a config accepted would train
for _name, _cmd, _text, _words in [
    ("blur-nan", "register", "blur = nan\n", ("blur", "nan", "config")),
    ("blur-inf", "register", "blur = inf\n", ("blur", "inf")),
    ("threads-negative", "register", "threads = -1\n", ("threads", "-1")),
    ("unknown-key", "register", "blurr = 1.0\n", ("blurr", "not an option")),
    ("blur-text", "register", 'blur = "abc"\n', ("blur", "abc")),
    ("blur-bool", "register", "blur = true\n", ("blur", "true")),
    ("similarity-number", "register", "similarity = 5\n", ("similarity", "5")),
    ("flag-number", "register", "fast = 1\n", ("fast", "1")),
    ("blur-list", "register", "blur = [1, 2]\n", ("blur", "[1, 2]")),
    ("table-blur-negative", "register", "[register]\nblur = -2\n", ("blur", "-2")),
    ("table-beside-register", "register", "[register]\nsize = 32\n[bogus]\nx = 1\n",
     ("unknown table [bogus]", "[register]", "[evaluate]")),
    ("table-typo", "evaluate", "[register]\nsize = 32\n[evaluat]\nstart = \"ap\"\n", ("unknown table [evaluat]",)),
    ("invalid-toml", "register", "blur = \n", ("not valid toml",)),
    ("not-utf8", "register", b"blur = 1.0 # \xff\xfe\n", ("utf-8",)),
    ("width-zero", "render", "width = 0\n", ("width", "0", "config")),
    ("sdd-1e308", "render", "sdd = 1e308\n", ("sdd", "1e+308")),
    ("pose-number", "render", "pose = 5\n", ("pose", "5")),
    ("perturb-number", "evaluate", "perturb = 5\n", ("perturb", "5")),
    ("perturb-nan", "evaluate", 'perturb = "nan,3"\n', ("perturb", "nan")),
    ("cases-zero", "demo", "cases = 0\n", ("cases", "0")),
    ("lr-nan", "train", "[optim]\nlr = nan\n", ("optim.lr", "finite")),
    ("lr-too-large", "train", "[optim]\nlr = 5.0\n", ("optim.lr", "= 5.0", "in (0, 1.0]")),
    ("batch-size-zero", "train", "[optim]\nbatch_size = 0\n", ("optim.batch_size",)),
    ("camera-height-zero", "train", "[camera]\nheight = 0\n", ("camera.height",)),
    ("camera-sdd-text", "train", '[camera]\nsdd = "far"\n', ("camera.sdd", "number")),
    ("unknown-table", "train", "[foo]\nx = 1\n", ("unknown table", "foo")),
    ("unknown-setting", "train", "[optim]\nlearning_rate = 1\n", ("unknown setting", "learning_rate")),
    ("unknown-preset", "train", 'preset = "fastest"\n', ("preset", "fastest")),
    ("invalid-toml", "train", "[optim\n", ("not valid toml",)),
    ("not-utf8", "train", b"[optim]\nlr = 0.1 # \xff\n", ("utf-8",)),
    ("section-not-table", "train", "optim = 5\n", ("optim", "table")),
    ("rot-std-two", "train", "[sampler]\nrot_std = [0.1, 0.1]\n", ("sampler.rot_std", "3 numbers")),
    # a switch given as a text: "false" is a true string (noise on, a download tried), so it is refused
    ("augment-noise-text", "train", '[augment]\nnoise = "false"\n' + _SMALL_CAMERA,
     ("augment.noise", "'false'", "true or false")),
    ("pretrained-text", "train", '[model]\npretrained = "no"\n' + _SMALL_CAMERA, ("model.pretrained", "true or false")),
    ("amp-number", "train", "[optim]\namp = 0\n" + _SMALL_CAMERA, ("optim.amp", "true or false")),
    # a value of another type: Python's TypeError escaped ("unhashable type: 'list'", "expected str ... not int")
    # a setting above the tables (TOML puts every key after [run] into [run]; one before any table is top-level)
    ("setting-above-the-tables", "train", "max_steps = 10\n" + _SMALL_CAMERA, ("max_steps", "put it under [run]")),
    # poses that do not see the CT (a shift of 100 m): trained on blank DRRs without a word
    ("trans-mean-off-the-ct", "train", "[sampler]\ntrans_mean = [100000.0, 0.0, 0.0]\n" + _SMALL_CAMERA,
     ("sampler's poses", "out of view", "sampler.trans_mean")),
    ("isocenter-off-the-ct", "train", "[sampler]\nisocenter = [100000.0, 0.0, 0.0]\n" + _SMALL_CAMERA,
     ("sampler.isocenter", "outside the ct")),  # was "the CT is too small for the field of view"
    # more than this machine's memory: PyTorch's "can't allocate memory" traceback
    ("buffer-size-huge", "train", "[data]\nbuffer_size = 1000000000\n" + _SMALL_CAMERA,
     ("data.buffer_size", "1000000000", "memory")),
    ("val-size-huge", "train", "[run]\nval_size = 1000000000000\n" + _SMALL_CAMERA,
     ("run.val_size", "1000000000000", "memory")),
    ("preset-list", "train", 'preset = ["cpu-fast"]\n', ("unknown preset", "cpu-fast", "choose one of")),
    ("weights-number", "train", "[model]\nweights = 5\n" + _SMALL_CAMERA, ("model.weights", "= 5", "weights file")),
    ("weights-empty", "train", '[model]\nweights = ""\n' + _SMALL_CAMERA, ("model.weights", "weights file")),
    # the detector's distances get the ranges of --sdd, --delx, --x0 (were unbounded: "the CT is too small for
    # the field of view", or a 300-digit field of view)
    ("camera-sdd-1e300", "train", "[camera]\nsdd = 1e300\n", ("camera.sdd", "1e+300", "(0, 100000]")),
    ("camera-fov-1e300", "train", "[camera]\nfov_mm = 1e300\n", ("camera.fov_mm", "1e+300")),
    ("camera-delx-metres", "train", "[camera]\ndelx = 5000.0\n", ("camera.delx", "5000.0")),
    # and the least pixel spacing (1e-300 was refused as "the DRR of the isocenter view is constant")
    ("camera-delx-1e-300", "train", "[camera]\ndelx = 1e-300\n", ("camera.delx", "1e-300", "[0.001, 1000]")),
    ("camera-dely-1e-300", "train", "[camera]\ndely = 1e-300\n", ("camera.dely", "1e-300", "[0.001, 1000]")),
    ("camera-fov-1e-300", "train", "[camera]\nfov_mm = 1e-300\n", ("camera.fov_mm", "1e-300", "[0.064,")),
    # within the ranges, yet a detector of micrometres (0.064 mm over 64 px) trained on near-uniform DRRs
    ("camera-delx-micrometres", "train", "[camera]\ndelx = 0.001\n", ("sees", "at the isocenter", "camera.delx")),
]:
    add(f"config-{_cmd}-{_name}", _words, lambda d, o, c=_cmd, t=_text: with_config(d, o, c, t))
add("config-missing", "not found", lambda d, o: register_args(d, o, None, None, "--config", str(d / "no.toml")))
add("config-folder", ("folder",), lambda d, o: register_args(d, o, None, None, "--config", str(_mkdir(d / "c"))))
add("config-train-missing", "not found", lambda d, o: train_args(d, o, None, "--config", str(d / "no.toml")))

# ---- HDF5 datasets --------------------------------------------------------------------------------------------


def _h5(kind, edit=None, specimen="1"):
    def make(d, o):
        p = (deepfluoro_h5 if kind == "df" else ljubljana_h5)(d / "data.h5", edit)
        return ["evaluate", str(p), "--specimen", specimen, "-o", str(o / "eval"), "--fast", "--no-pictures",
                "--quiet", "--start", "ap"]
    return make


add("h5-garbage", "hdf5", lambda d, o: evaluate_args((d / "x.h5").write_bytes(b"junk" * 100) and d / "x.h5", o))
add("h5-empty", ("neither",), lambda d, o: evaluate_args(_empty_h5(d / "x.h5"), o, "--specimen", "1"))
add("h5-wrong-suffix", (".h5",), lambda d, o: evaluate_args((d / "x.txt").write_text("x") and d / "x.txt", o))
add("h5-no-specimen-option", "--specimen", lambda d, o: [a for i, a in enumerate(_h5("df")(d, o)) if i not in (2, 3)])
add("h5-df-specimen-7", ("specimen", "7"), _h5("df", specimen="7"))
add("h5-df-specimen-missing", ("specimen 2", "missing"), _h5("df", specimen="2"))
add("h5-df-no-proj-params", ("proj-params", "missing"), _h5("df", lambda f: f.__delitem__("proj-params")))
add("h5-df-intrinsic-shape", ("intrinsic", "shape"), _h5("df", lambda f: _replace(f, "proj-params/intrinsic",
                                                                                 np.eye(4))))
add("h5-df-pixel-spacing-zero", ("pixel spacing",), _h5("df", lambda f: _replace(
    f, "proj-params/pixel-col-spacing", np.float32(0))))
add("h5-df-spacing-nan", ("spacing", "nan"), _h5("df", lambda f: _replace(
    f, "17-1882/vol/spacing", np.array([[np.nan], [1], [1]], np.float32))))
add("h5-df-vol-2d", ("3d",), _h5("df", lambda f: _replace(f, "17-1882/vol/pixels", np.zeros((4, 4), np.float32))))
add("h5-df-vol-nan", ("nan",), _h5("df", lambda f: _replace(
    f, "17-1882/vol/pixels", np.full((10, 10, 10), np.nan, np.float32))))
add("h5-df-vol-1e300", ("1e+300",), _h5("df", lambda f: _replace(
    f, "17-1882/vol/pixels", np.where(np.arange(1000).reshape(10, 10, 10) == 5, 1e300, 0.0))))
add("h5-df-no-projections", ("projection",), _h5("df", lambda f: f.__delitem__("17-1882/projections/000")))
add("h5-df-num-rows-text", ("num-rows",), _h5("df", lambda f: _replace(f, "proj-params/num-rows", b"many")))
add("h5-df-landmark-shape", ("asis-l",), _h5("df", lambda f: _replace(f, "17-1882/vol-landmarks/ASIS-l",
                                                                      np.zeros(2))))
add("h5-df-extrinsic-nan", ("extrinsic", "nan"), _h5("df", lambda f: _replace(
    f, "proj-params/extrinsic", np.full((4, 4), np.nan))))
add("h5-lj-subject-missing", ("subject",), _h5("lj", specimen="2"))


def _extrinsics_in_metres_as_mm(f, factor=1000.0):
    for v in ("ap", "lat", "ap-max", "lat-max"):
        E = np.array(f[f"subject01/proj-{v}/extrinsic"][()])
        E[:3, 3] *= factor
        _replace(f, f"subject01/proj-{v}/extrinsic", E)


add("h5-lj-extrinsic-translation-x1000", ("data.h5", "ground-truth pose of x-ray 'ap'", "does not see the ct"),
    _h5("lj", _extrinsics_in_metres_as_mm))
add("h5-lj-subject-11", ("11",), _h5("lj", specimen="11"))
add("h5-lj-no-volume", ("volume", "missing"), _h5("lj", lambda f: f.__delitem__("subject01/volume")))
add("h5-lj-intrinsic-shape", ("intrinsic",), _h5("lj", lambda f: _replace(f, "subject01/proj-ap/intrinsic",
                                                                          np.eye(2))))
add("h5-lj-spacing-negative", ("spacing",), _h5("lj", lambda f: _replace(f, "subject01/volume/spacing",
                                                                         np.array([-1.0, 1, 1]))))
add("h5-lj-pixels-nan", ("nan",), _h5("lj", lambda f: _replace(f, "subject01/proj-ap/pixels",
                                                               np.full((16, 16), np.nan, np.float32))))
# a group that is a dataset, pixels that are text: h5py's / numpy's ValueError escaped
add("h5-df-specimen-a-dataset", ("'/17-1882'", "dataset, not a group"), _h5("df", lambda f: _replace(
    f, "17-1882", np.zeros(3))))
add("h5-lj-subject-a-dataset", ("'/subject01'", "dataset, not a group"), _h5("lj", lambda f: _replace(
    f, "subject01", np.zeros(3))))
add("h5-df-projection-text", ("projections/000/image/pixels", "not a numeric dataset"), _h5("df", lambda f: _replace(
    f, "17-1882/projections/000/image/pixels", np.full((16, 16), b"a", "S1"))))
add("h5-lj-volume-text", ("subject01/volume/pixels", "not a numeric dataset"), _h5("lj", lambda f: _replace(
    f, "subject01/volume/pixels", np.full((4, 4, 4), b"a", "S1"))))


# ---- sequences (xraypose track) ------------------------------------------------------------------------------
def track_args(d: Path, out: Path, *frames, extra=()) -> list[str]:
    return ["track", str(ct(d)), *map(str, frames), "-o", str(out / "track"), "--init", "ap", "--fast", *extra]


def _frames(d: Path, arrays: dict) -> Path:
    """A folder of NPY frames (``name: array``, None for a valid one), each with its sidecar."""
    folder = d / "frames"
    folder.mkdir()
    for name, arr in arrays.items():
        xray_npy(folder, name, arr=arr)
    return folder


# a frame of a sequence whose pixels are refused names that frame (was "X-ray image is all zeros": which one?)
add("track-all-black-frame-mid-sequence", ("f1.npy", "all zeros"), lambda d, o: track_args(
    d, o, _frames(d, {"f0.npy": None, "f1.npy": np.zeros((32, 32), np.float32), "f2.npy": None})))
add("track-constant-frame-of-a-stack", ("run.npy#1", "every pixel is 5"), lambda d, o: track_args(
    d, o, xray_npy(d, "run.npy", sidecar={"sdd_mm": 1000.0, "delx_mm": 4.0, "kind": "intensity"},
                   arr=np.stack([xray_npy_pixels(), np.full((32, 32), 5.0, np.float32), xray_npy_pixels()]))))
add("xray-npy-all-zeros-named", ("xray.npy", "all zeros"), lambda d, o: register_args(d, o, xray_npy(
    d, arr=np.zeros((32, 32), np.float32))))


def _empty_h5(p: Path) -> Path:
    import h5py

    with h5py.File(p, "w"):
        pass
    return p


# --------------------------------------------------------------------------
# Running a case
# --------------------------------------------------------------------------


def snapshot(folder: Path) -> dict:
    """{relative path: (bytes, mtime_ns)} of every file under ``folder``."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(folder))] = (p.read_bytes(), st.st_mtime_ns)
    return out


def run_case(c: Case, tmp: Path, capsys) -> tuple[int | None, str, BaseException | None]:
    """Build the inputs, run the CLI; (exit code or None when an exception escaped, everything the user
    would see: output, warnings and log records, the exception that escaped)."""
    d, o = tmp / "in", tmp / "out"
    d.mkdir()
    o.mkdir()
    argv = [str(a) for a in c.make(d, o)]
    capsys.readouterr()
    logged = _Records(logging.WARNING)  # a log record of WARNING+ reaches the user's stderr
    logging.getLogger().addHandler(logged)
    with warnings.catch_warnings(record=True) as caught:
        # Python's default filters: what a user of the console script sees
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        try:
            rc = main(argv)
            exc = None
        except BaseException as e:  # noqa: BLE001 - an escaped exception is what we count
            rc, exc = None, e
    logging.getLogger().removeHandler(logged)
    cap = capsys.readouterr()
    shown = "".join(f"xraypose: warning: {w.message}\n" for w in caught)
    shown += "".join(f"log {r.name}: {r.getMessage()}\n" for r in logged.records)
    return rc, cap.out + cap.err + shown, exc


class _Records(logging.Handler):
    def __init__(self, level):
        super().__init__(level)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_corpus_is_large_and_names_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    assert len(CASES) >= 150
    kinds = {c.id.split("-")[0] for c in CASES}
    assert {"ct", "xray", "sidecar", "case", "pose", "fiducials", "config", "h5", "render", "register", "train",
            "evaluate", "demo", "info"} <= kinds


@pytest.fixture(autouse=True)
def _no_long_runs(monkeypatch):
    """A bad input that slipped through would start the demo's 7-minute run: fail at once instead."""
    import xraypose.demo

    def reached(*a, **k):
        raise AssertionError("the bad input reached the demo's computation")

    monkeypatch.setattr(xraypose.demo, "run_demo", reached)


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line(c: Case, tmp_path, capfd):
    """(``capfd``: what libraries write straight to the file descriptors, e.g. ITK, counts too.)"""
    d = tmp_path / "in"
    rc, text, exc = None, "", None
    before_files: dict = {}

    def make(din, dout):
        argv = c.make(din, dout)
        before_files.update(snapshot(din))
        return argv

    rc, text, exc = run_case(Case(c.id, make, c.words), tmp_path, capfd)
    assert exc is None, f"exception escaped: {type(exc).__name__}: {exc}"
    assert "Traceback" not in text, text
    assert rc == 2, f"exit code {rc} (bad input accepted?): {text}"
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("xraypose: error: "), text
    low = lines[0].lower()
    for w in c.words:
        assert w.lower() in low, f"{w!r} not in: {lines[0]}"
    assert snapshot(d) == before_files, "an input file was changed"


def _fifo(p: Path) -> Path:
    import os

    os.mkfifo(p)
    return p


# A named pipe (FIFO) as an input: opening it waits for a writer forever, so each command runs in a subprocess
# with a timeout (a regression fails instead of hanging the suite).
FIFO_CASES = {
    "info-xray": (("x.npy", "named pipe"), lambda d, o: ["info", str(_fifo(d / "x.npy"))]),
    "info-model": (("model.pt", "named pipe"), lambda d, o: ["info", str(_fifo(d / "model.pt"))]),
    "render-ct": (("CT", "named pipe"), lambda d, o: render_args(d, o, _fifo(d / "ct.nii.gz"), "--pose", "0,0")),
    "render-pose-json": (("pose", "named pipe"), lambda d, o: render_args(
        d, o, None, "--pose-json", str(_fifo(d / "pose.json")))),
    "register-xray": (("X-ray", "named pipe"), lambda d, o: register_args(d, o, _fifo(d / "xray.npy"))),
    "register-sidecar": (("sidecar", "xray.json", "named pipe"), lambda d, o: register_args(
        d, o, _fifo(d / "xray.json") and xray_npy(d, sidecar=None))),
    "register-model": (("model", "named pipe"), lambda d, o: register_args(
        d, o, None, None, "--init", "model", "--model", str(_fifo(d / "model.pt")))),
    "train-config": (("config", "named pipe"), lambda d, o: train_args(
        d, o, None, "--config", str(_fifo(d / "config.toml")))),
}


@pytest.fixture(scope="module")
def fifo_runs(tmp_path_factory):
    """Every FIFO case's command started at once, each in its own process (its inputs in its own folder): the
    eight start-ups (Python, torch) overlap instead of running one after the other.  ``name`` → (Popen, argv)."""
    import os
    import subprocess
    import sys

    import xraypose

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(xraypose.__file__).parents[1])] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    runs = {}
    try:
        for name, (_, make) in FIFO_CASES.items():
            base = tmp_path_factory.mktemp(f"fifo-{name}")
            d, o = base / "in", base / "out"
            d.mkdir()
            o.mkdir()
            argv = [str(a) for a in make(d, o)]
            runs[name] = (subprocess.Popen([sys.executable, "-m", "xraypose.cli", *argv], stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True, encoding="utf-8", env=env,
                                           stdin=subprocess.DEVNULL), argv)
        yield runs
    finally:
        for proc, _ in runs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.mark.parametrize("name", list(FIFO_CASES))
def test_fifo_input_is_refused_not_read(name, fifo_runs):
    """A named pipe given as any input (CT, X-ray, sidecar, model, JSON, TOML) is refused as not a regular
    file before it is opened (``info x.npy`` on a FIFO hung forever)."""
    import subprocess

    words = FIFO_CASES[name][0]
    proc, argv = fifo_runs[name]
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"xraypose {' '.join(argv[:1])} hung on a named pipe (killed after 60 s)")
    lines = [ln for ln in (stdout + stderr).strip().splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("xraypose: error: "), lines
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]


def test_a_file_whose_name_starts_with_a_dash_is_named_with_how_to_give_it(tmp_path, monkeypatch, capfd):
    """``register ct.nii.gz "-röntgen 1.png"``: the parser reads the file as options ("No such option: -r",
    naming no file); the line now names the file and how to give it (./NAME or after --)."""
    d = tmp_path / "in"
    d.mkdir()
    ct(d)
    xray_npy(d, name="-röntgen #1.npy")
    monkeypatch.chdir(d)
    before = snapshot(d)
    rc = main(["register", "ct.nii.gz", "-röntgen #1.npy", "-o", str(tmp_path / "out"), "--fast"])
    out, err = capfd.readouterr()
    lines = [ln for ln in (out + err).splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("xraypose: error: No such option: -r"), lines
    assert "'-röntgen #1.npy' is a file" in lines[0] and "./-röntgen #1.npy" in lines[0] and "--" in lines[0]
    assert snapshot(d) == before
    assert main(["register", "--bogus"]) == 2 and "is a file" not in capfd.readouterr().err  # no file: as before
