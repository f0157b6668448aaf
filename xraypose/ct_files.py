"""A CT on disk: its files read (NIfTI, NRRD / MetaImage, a DICOM series folder, a TIFF stack) and what any CT
array and affine must pass, read or built.

Readers (:func:`_read_image`, what :func:`xraypose.volume.read_volume` calls): NIfTI (``.nii``, ``.nii.gz``) with
nibabel, its affine (sform, else qform) RAS already; NRRD / MetaImage (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``)
and DICOM series (a folder of slices; the series with the most files) with SimpleITK, whose physical frame is LPS:
the affine built from origin, spacing and direction and turned to RAS by ``diag(-1, -1, 1)``
(:data:`xraypose.geometry.LPS_TO_RAS`).  Each file's header is checked first (units, sform/qform, a detached data
file, the slices of one series agreeing), so that a bad file says what is wrong in one line
(:class:`~xraypose.errors.InputError`) rather than as the library's trace.

Checks (:func:`check_voxel_values`, ``_check_affine``, ``_check_position``): finite voxel values within
:data:`MAX_ABS_VOXEL`, a voxel size within [:data:`MIN_SPACING_MM`, :data:`MAX_SPACING_MM`] mm, an invertible affine,
a box within a kilometre of the world's origin.

Split from :mod:`xraypose.volume` (stop 66), which keeps the :class:`~xraypose.volume.Volume`, its density models
and the public ``read_volume`` / ``volume_from_array`` / ``load_ct``; every name here is also importable from there.
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Union

import numpy as np

from xraypose._checks import is_numeric_dtype, one_line
from xraypose.errors import InputError
from xraypose.geometry.frames import LPS_TO_RAS as GEOMETRY_LPS_TO_RAS
from xraypose.io import check_input_path

__all__ = ["LPS_TO_RAS", "MIN_SPACING_MM", "MAX_SPACING_MM", "MAX_ABS_VOXEL", "SUPPORTED_EXTENSIONS", "PROJECTION_MODALITIES",
           "PROJECTION_SOP_CLASSES", "check_voxel_values"]

PathLike = Union[str, os.PathLike]

#: (4, 4) float64 matrix converting LPS world coordinates to RAS (its own inverse): a NumPy copy of
#: :data:`xraypose.geometry.LPS_TO_RAS`.
LPS_TO_RAS: np.ndarray = GEOMETRY_LPS_TO_RAS.numpy().copy()

#: Voxel spacings (mm, per axis) outside [MIN_SPACING_MM, MAX_SPACING_MM] are refused when a volume is read
#: or built: no CT has them, a header in m or µm does (and a DRR's step or a registration's pyramid sized
#: for such voxels would not fit memory).
MIN_SPACING_MM: float = 0.01
MAX_SPACING_MM: float = 100.0

_NIFTI_EXTS = (".nii", ".nii.gz")
_ITK_EXTS = (".nrrd", ".nhdr", ".mha", ".mhd")
#: File name endings read by :func:`read_volume` (a DICOM series is a folder).
SUPPORTED_EXTENSIONS: tuple[str, ...] = _NIFTI_EXTS + _ITK_EXTS
_SUPPORTED_TEXT = (", ".join(SUPPORTED_EXTENSIONS) + ", a folder holding one DICOM series, or a multi-page TIFF "
                   "stack (.tif, .tiff, with spacing=)")


#: Voxel values beyond ± this are refused when a CT is read: not HU nor an attenuation (a damaged
#: file or wrong units), and sums of such values overflow float32 in a DRR.
MAX_ABS_VOXEL: float = 1e6


def check_voxel_values(arr: np.ndarray, source: str, max_abs: float = MAX_ABS_VOXEL) -> None:
    """Refuse NaN / infinite voxels and values beyond ``±max_abs`` (naming the first such value and
    its voxel index), before the values are converted to float32.

    Raises:
        InputError: ``"{source}: voxel value 1e+300 at (6, 6, 6) …"``.
    """
    _check_finite(arr, source)
    if arr.size == 0 or arr.dtype == bool or arr.dtype.kind not in "iuf":
        return
    lo, hi = arr.min(), arr.max()
    if max(abs(float(lo)), abs(float(hi))) <= max_abs:
        return
    v = hi if abs(float(hi)) >= abs(float(lo)) else lo
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(arr == v)), arr.shape))
    if abs(float(v)) > float(np.finfo(np.float32).max):
        raise InputError(f"{source}: voxel value {float(v):g} at {idx} does not fit float32 (at most "
                         f"{float(np.finfo(np.float32).max):.3g}): not CT values")
    raise InputError(f"{source}: voxel value {float(v):g} at {idx} is beyond ±{max_abs:g}: not CT values (HU) "
                     "nor attenuations (a damaged file or wrong units?)")


def _check_finite(arr: np.ndarray, source: str) -> None:
    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise InputError(f"{source}: {bad} of {arr.size} voxels are NaN or infinite")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(f"{source}: complex voxel values are not supported")


def _check_affine(aff: np.ndarray, source: str, plausible_spacing: bool = True) -> None:
    """A (4, 4) finite, invertible voxel-index → world affine with last row [0, 0, 0, 1]; with
    ``plausible_spacing`` (a CT's) its voxel sizes within :data:`MIN_SPACING_MM` … :data:`MAX_SPACING_MM`."""
    if aff.shape != (4, 4):
        raise InputError(f"{source}: affine must be 4x4, got shape {aff.shape}")
    if not np.all(np.isfinite(aff)):
        raise InputError(f"{source}: affine has NaN or infinite entries: {aff.tolist()}")
    if not np.allclose(aff[3], [0.0, 0.0, 0.0, 1.0]):
        raise InputError(f"{source}: affine's last row must be [0, 0, 0, 1], got {aff[3].tolist()}")
    m = aff[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing <= 0):
        axes = ", ".join("ijk"[a] for a in np.flatnonzero(spacing <= 0))
        raise InputError(
            f"{source}: zero voxel spacing along axis {axes} (spacing {spacing.tolist()} mm; singular affine)"
        )
    odd = np.flatnonzero((spacing < MIN_SPACING_MM) | (spacing > MAX_SPACING_MM))
    if plausible_spacing and odd.size:
        a = int(odd[0])
        raise InputError(
            f"{source}: voxel spacing {spacing[a]:.3g} mm (axis {'ijk'[a]}) is implausible for a CT (expected "
            f"{MIN_SPACING_MM:g} to {MAX_SPACING_MM:g} mm) — check the header's units"
        )
    if abs(np.linalg.det(m)) <= 1e-6 * float(np.prod(spacing)):
        raise InputError(f"{source}: singular affine (voxel axes are collinear): {m.tolist()}")


def _check_position(aff: np.ndarray, shape: tuple[int, ...], source: str) -> None:
    """The CT's voxel box within ±:data:`xraypose.schema.MAX_POSITION_MM` of the world origin, as every
    coordinate xraypose takes: farther, float32 rays lose the CT (a DRR of zeros or shifted, silently)."""
    from xraypose.schema import MAX_POSITION_MM

    ijk = np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in shape[:3]])), dtype=np.float64)
    far = float(np.abs(ijk @ aff[:3, :3].T + aff[:3, 3]).max())
    if far > MAX_POSITION_MM:
        raise InputError(f"{source}: the CT reaches {far:.3g} mm from the world origin (its origin is "
                         f"{[round(float(v), 3) for v in aff[:3, 3]]} mm); coordinates must be within "
                         f"±{MAX_POSITION_MM:g} mm (1 km): check the header's origin and units")



# --------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------


def _read_image(path: PathLike, what: str, spacing=None) -> tuple[np.ndarray, np.ndarray, str]:
    """Read one 3D image: ``(I, J, K)`` array (native dtype), ``(4, 4)`` RAS affine, source text.
    ``spacing`` (mm): a TIFF stack's voxel size (xraypose.tiff_stack); refused for other files."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"{what} path must be a string or path; got {type(path).__name__}")
    p = Path(path).expanduser()
    check_input_path(p, what, f"{what} file not found: {p}")
    source = str(p)
    is_tiff = p.is_file() and p.name.lower().endswith((".tif", ".tiff"))
    if spacing is not None and not is_tiff:
        raise InputError(f"spacing= is only for TIFF stacks; {p} carries its own voxel size")
    if is_tiff:
        from xraypose.tiff_stack import read_tiff_array

        arr, aff = read_tiff_array(p, spacing, what)
    elif p.is_dir():
        arr, aff, source = _read_dicom_dir(p, what)
    else:
        lname = p.name.lower()
        if lname.endswith(_NIFTI_EXTS):
            arr, aff = _read_nifti(p, what)
        elif lname.endswith(_ITK_EXTS):
            arr, aff = _read_itk_file(p, what)
        else:
            ext = "".join(p.suffixes[-2:]) if p.suffixes else "(none)"
            dicom_like = lname.endswith((".dcm", ".ima")) or not p.suffixes
            hint = " (for DICOM pass the folder holding the series)" if dicom_like else ""
            raise InputError(
                f"Unsupported {what} file extension {ext!r} for {p}; supported: {_SUPPORTED_TEXT}{hint}"
            )
    if not is_numeric_dtype(arr.dtype):
        raise InputError(
            f"{source}: voxel type {arr.dtype} is not a scalar number "
            "(RGB/structured images are not supported)"
        )
    arr = _as_3d(arr, source)
    check_voxel_values(arr, source)
    _check_affine(aff, source)
    _check_position(aff, arr.shape, source)
    return arr, aff, source


def _read_nifti(p: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    with _nibabel_quiet():  # nibabel logs the header fixes it makes ("setting 0 dims to 1") to stderr
        try:
            img = nib.load(str(p))
        except Exception as exc:  # nibabel raises many types for corrupt files
            raise _nifti_unreadable(p, what, exc) from exc
        _check_nifti_header(img, p, what)
        try:
            arr = np.asanyarray(img.dataobj)
            aff = np.array(img.affine, dtype=np.float64)
            unit = img.header.get_xyzt_units()[0]
        except Exception as exc:  # noqa: BLE001
            raise _nifti_unreadable(p, what, exc) from exc
    # the header's spatial unit (xyzt_units): nibabel gives the affine in it, ITK (Slicer) in mm; a micro-CT's
    # 20 µm voxels were read as 20 mm
    aff[:3, :] *= _NIFTI_UNIT_MM.get(unit, 1.0)
    arr = np.array(arr)  # detach from a possible memmap
    return arr, aff


#: Millimetres per NIfTI spatial unit (xyzt_units) other than mm; "unknown" is taken as mm.
_NIFTI_UNIT_MM = {"meter": 1000.0, "micron": 1e-3}


#: Bytes of a NIfTI-1 header (NIfTI-2: 540); its first 4 bytes hold this number.
_NIFTI_HEADER_BYTES = {348: "NIfTI-1", 540: "NIfTI-2"}


def _nifti_unreadable(p: Path, what: str, exc: Exception) -> InputError:
    """Why nibabel could not read the NIfTI file ``p`` (it says "Cannot work out file type" both of a file cut
    short and of one that is no NIfTI): empty, truncated (shorter than its header, or a gzip stream that
    ends early), not a NIfTI file, or nibabel's own reason."""
    import gzip
    import zlib

    gz = p.name.lower().endswith(".gz")
    size = p.stat().st_size
    if size == 0:
        return InputError(f"Could not read {what} NIfTI file {p}: it is empty (0 bytes)")
    try:
        with (gzip.open(p, "rb") if gz else open(p, "rb")) as fh:
            head = fh.read(max(_NIFTI_HEADER_BYTES))
            while gz and fh.read(1 << 20):  # a gzip stream cut short fails only where it ends
                pass
    except EOFError:
        return InputError(f"Could not read {what} NIfTI file {p}: it is truncated, its gzip stream ends early "
                          f"({size} bytes; an incomplete copy or download?)")
    except gzip.BadGzipFile:
        return InputError(f"Could not read {what} NIfTI file {p}: it is not gzip-compressed, as its ending .gz says "
                          "(a plain NIfTI ends in .nii)")
    except (OSError, zlib.error) as e:
        return InputError(f"Could not read {what} NIfTI file {p}: {one_line(e)}")
    kinds = {int.from_bytes(head[:4], order) for order in ("little", "big")} if len(head) >= 4 else set()
    kind = next((_NIFTI_HEADER_BYTES[k] for k in kinds if k in _NIFTI_HEADER_BYTES), None)
    if kind is None:
        if not gz and head[:2] == b"\x1f\x8b":
            return InputError(f"Could not read {what} NIfTI file {p}: it is gzip-compressed: name it .nii.gz")
        return InputError(f"Could not read {what} NIfTI file {p}: it is not a NIfTI file (its first bytes are no "
                          "NIfTI header)")
    need = min(k for k, v in _NIFTI_HEADER_BYTES.items() if v == kind)
    if len(head) < need:
        held = f"{len(head)} bytes" + (" once decompressed" if gz else "")
        return InputError(f"Could not read {what} NIfTI file {p}: it is truncated, it holds {held}, less than its "
                          f"{need}-byte {kind} header")
    return InputError(f"Could not read {what} NIfTI file {p}: {one_line(exc)}")


class _nibabel_quiet:
    """nibabel's header log ('nibabel.global') silenced: what matters is refused by xraypose, in one line."""

    def __enter__(self):
        import logging

        self._log = logging.getLogger("nibabel.global")
        self._level = self._log.level
        self._log.setLevel(logging.CRITICAL + 1)
        return self

    def __exit__(self, *exc):
        self._log.setLevel(self._level)
        return False


def _check_nifti_header(img, p: Path, what: str) -> None:
    """Before reading the voxels: the declared size fits memory (and, uncompressed, the file), and
    the voxel size is known (no sform/qform and a zero pixdim: nibabel would guess 1 mm)."""
    from xraypose.limits import check_allocation, dims, human_bytes

    hdr = img.header
    shape = tuple(int(n) for n in img.shape)
    if any(n < 0 for n in shape):  # nibabel would fail on its memory map ("length must be positive"); 0: below
        raise InputError(f"{what} file {p}: the header declares a size of {' × '.join(map(str, shape))} voxels "
                         "(a negative size: a damaged header?)")
    itemsize = np.dtype(hdr.get_data_dtype()).itemsize
    check_allocation(shape, itemsize + 4, f"{what} file {p}")  # the file's values and a float32 copy
    if not p.name.lower().endswith(".gz"):
        need = int(hdr.get("vox_offset", 0)) + int(np.prod(shape)) * itemsize
        have = p.stat().st_size
        if have < need:
            raise InputError(f"{what} file {p} is truncated: the header declares {dims(shape)} voxels of "
                             f"{np.dtype(hdr.get_data_dtype()).name} ({human_bytes(need)} with the header), the file "
                             f"holds {human_bytes(have)}")
    if "sform_code" not in hdr:
        return
    from nibabel.openers import ImageOpener

    with ImageOpener(str(p)) as fh:  # the header as written: nibabel's loaded one has 0 voxel sizes set to 1
        raw = type(hdr).from_fileobj(fh, check=False)
    _check_sform_qform(raw, shape, p, what)
    if [int(raw["sform_code"]), int(raw["qform_code"])] == [0, 0]:
        pixdim = [float(v) for v in raw["pixdim"][1:4]]
        if not all(math.isfinite(v) and v > 0 for v in pixdim):
            raise InputError(f"{what} file {p} has no sform/qform and pixdim {pixdim} holds a zero, negative or "
                             "non-finite voxel size: its spacing is unknown (xraypose does not guess 1 mm); "
                             "write the voxel size or an affine into the file")


def _check_sform_qform(raw, shape: tuple[int, ...], p: Path, what: str) -> None:
    """A NIfTI header with both an sform and a qform (codes > 0) that place the CT differently (a corner half its
    smallest voxel or more apart) is refused: nibabel, so xraypose, uses the sform, ITK-based tools (Slicer,
    SimpleITK) the qform; which the file means is unknown."""
    sc, qc = int(raw["sform_code"]), int(raw["qform_code"])
    if sc <= 0 or qc <= 0:
        return
    try:
        s_aff, q_aff = np.asarray(raw.get_sform(), np.float64), np.asarray(raw.get_qform(), np.float64)
    except Exception:  # noqa: BLE001 - a damaged quaternion: the sform is read, as nibabel does
        return
    n = [max(int(v), 1) - 1 for v in (list(shape) + [1, 1, 1])[:3]]
    corners = np.array([[i, j, k, 1.0] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])])
    apart = float(np.linalg.norm((corners @ (s_aff - q_aff).T)[:, :3], axis=1).max())
    s_vox, q_vox = np.linalg.norm(s_aff[:3, :3], axis=0), np.linalg.norm(q_aff[:3, :3], axis=0)
    if not (apart < 0.5 * min(float(s_vox.min()), float(q_vox.min()))):
        raise InputError(f"{what} file {p}: its sform (code {sc}) and qform (code {qc}) place the CT differently "
                         f"(corners up to {apart:.3g} mm apart; voxel sizes {np.round(s_vox, 4).tolist()} and "
                         f"{np.round(q_vox, 4).tolist()} mm): xraypose would use the sform, ITK-based tools (Slicer) "
                         "the qform; make them agree, or set the code of the wrong one to 0")


def _read_itk_file(p: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    from xraypose.limits import check_allocation, itemsize_from_text

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    with _itk_quiet():
        try:
            _check_detached_data_file(p, what)
            _check_nrrd_space_units(p, what)
            reader.ReadImageInformation()  # the header only
            size = tuple(int(n) for n in reader.GetSize())
            item = itemsize_from_text(sitk.GetPixelIDValueAsString(reader.GetPixelID()))
            check_allocation(size, item * max(1, reader.GetNumberOfComponents()) + 4, f"{what} file {p}")
            img = reader.Execute()
        except RuntimeError as exc:
            msg = str(exc)
            if "zero-valued spacing" in msg.lower():
                raise InputError(f"{what} file {p} has zero voxel spacing in its header") from exc
            raise InputError(f"Could not read {what} file {p}: {_itk_reason(msg)}") from exc
    return _sitk_to_array_affine(img, str(p))


def _check_nrrd_space_units(p: Path, what: str) -> None:
    """A NRRD header's ``space units`` other than mm refused: ITK ignores them and reads mm, so a header in
    cm or m placed the CT 10 or 1000 times too small, without a word."""
    if not p.name.lower().endswith((".nrrd", ".nhdr")):
        return
    try:
        text = _header_fields(p, ":").get("space units", "")
    except OSError:
        return  # ITK's reading names the problem
    units = [u.strip().strip('"') for u in text.split('"') if u.strip().strip('"')] if text else []
    other = [u for u in units if u.lower() != "mm"]
    if other:
        raise InputError(f"{what} file {p}: its space units are {' '.join(units)} (NRRD 'space units'); xraypose, as "
                         "ITK, reads NRRD coordinates as mm: convert the file to mm")


class _itk_quiet:
    """ITK's warnings off while reading (they go straight to stderr, around xraypose's one-line errors)."""

    def __enter__(self):
        import SimpleITK as sitk

        self._old = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        return self

    def __exit__(self, *exc):
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalWarningDisplay(self._old)
        return False


def _header_fields(p: Path, sep: str) -> dict:
    """{lower-case key: value} of a text header (MetaImage ``Key = value``, NRRD ``key: value``)."""
    out = {}
    with open(p, "rb") as fh:
        head = fh.read(65536)
    for line in head.split(b"\n"):
        text = line.decode("latin-1").strip()
        if not text and sep == ":":  # the blank line ending a NRRD header
            break
        if sep in text:
            k, v = text.split(sep, 1)
            out[k.strip().lower()] = v.strip()
    return out


def _check_detached_data_file(p: Path, what: str) -> None:
    """A ``.mhd`` / ``.nhdr`` header names its voxel file: refuse, naming it, when it is missing or
    shorter than the header declares (uncompressed)."""
    from xraypose.limits import dims, human_bytes, itemsize_from_text

    name = p.name.lower()  # (MetaImage and NRRD type names → bytes per value; 0: unknown, size not checked)
    if name.endswith(".mhd"):
        f = _header_fields(p, "=")
        data, key = f.get("elementdatafile"), "ElementDataFile"
        size = f.get("dimsize", "")
        met = {"char": 1, "uchar": 1, "short": 2, "ushort": 2, "int": 4, "uint": 4, "long": 8, "ulong": 8,
               "long_long": 8, "ulong_long": 8, "float": 4, "double": 8}
        item = met.get(f.get("elementtype", "").lower().replace("met_", ""), 0)
        try:
            item *= int(f.get("elementnumberofchannels", "1") or 1)
        except ValueError:
            item = 0
        compressed = f.get("compresseddata", "false").lower() == "true"
    elif name.endswith(".nhdr"):
        f = _header_fields(p, ":")
        data, key = f.get("data file") or f.get("datafile"), "data file"
        size = f.get("sizes", "")
        nrrd = {"char": 1, "uchar": 1, "signed char": 1, "unsigned char": 1, "short": 2, "ushort": 2,
                "signed short": 2, "unsigned short": 2, "short int": 2, "int": 4, "uint": 4, "signed int": 4,
                "unsigned int": 4, "float": 4, "double": 8}
        item = itemsize_from_text(f.get("type", ""), 0) or nrrd.get(f.get("type", "").lower(), 0)
        compressed = f.get("encoding", "raw").lower() not in ("raw",)
    else:
        return
    if not data or data.upper() in ("LOCAL", "LIST") or data.upper().startswith("LIST") or "%" in data:
        return
    target = (p.parent / data.split()[0]) if not Path(data).is_absolute() else Path(data)
    missing = f"{what} file {p} names its voxel file {target.name} ({key}), which is missing: {target}"
    check_input_path(target, f"{what} voxel file", missing)
    if not target.is_file():
        raise InputError(missing)
    try:
        shape = [int(float(v)) for v in size.split()]
    except ValueError:
        return
    need = int(np.prod(shape)) * item if shape and item else 0
    have = target.stat().st_size
    if not compressed and need and have < need:
        raise InputError(f"{what} voxel file {target.name} (named by {p.name}) is truncated: {dims(shape)} voxels "
                         f"need {human_bytes(need)}, the file holds {human_bytes(have)}")


def _read_dicom_dir(d: Path, what: str) -> tuple[np.ndarray, np.ndarray, str]:
    import SimpleITK as sitk

    entries = list(d.iterdir())
    files = [e for e in entries if e.is_file()]
    if not files:
        sub = " (it holds only sub-folders; pass the folder of one series)" if entries else ""
        from xraypose.info import CT_SUFFIXES, XRAY_SUFFIXES  # the endings of the files xraypose reads

        endings = [x for x in CT_SUFFIXES + XRAY_SUFFIXES if d.name.lower().endswith(x)]
        if not entries and endings:  # `mkdir ct.nii.gz`, a copy gone wrong
            sub = f" (a folder named like a {max(endings, key=len)} file: give the file itself)"
        raise InputError(f"DICOM folder is empty: {d}{sub}")
    try:
        with _itk_quiet():
            series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d))
    except RuntimeError as exc:
        raise InputError(f"Could not scan DICOM folder {d}: {_itk_reason(str(exc))}") from exc
    if not series_ids:
        raise InputError(
            f"No DICOM image series found in folder {d} ({len(files)} files; sub-folders are not searched)"
        )
    by_count = []
    for sid in series_ids:
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(d), sid)
        by_count.append((len(names), sid, names))
    by_count.sort(key=lambda t: -t[0])
    count, sid, names = by_count[0]
    if count < 2:
        raise InputError(f"DICOM series in {d} has only {count} slice; a 3D series needs at least 2"
                         f"{_one_file_series_hint(names[0])}")

    _check_dicom_series_size(names, d, what)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(names))
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        with _itk_quiet():
            img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"Could not read DICOM series in {d}: {_series_reason(names, str(exc))}") from exc

    named = f"DICOM series {sid!r}" if sid.strip() else "a DICOM series without a SeriesInstanceUID"
    source = f"{d} ({named}, {count} files" + (
        f"; {len(series_ids)} series in folder, read the largest)" if len(series_ids) > 1 else ")")
    _check_dicom_series_headers(reader, count, source)
    if _slice_rescales_vary(reader, count) and img.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        reader.SetOutputPixelType(sitk.sitkFloat32)  # GDCM typed the volume by the first slice's rescale
        with _itk_quiet():
            img = reader.Execute()
    _check_dicom_slice_spacing(reader, img, count, source)
    arr, aff = _sitk_to_array_affine(img, source)
    return arr, aff, source


def _one_file_series_hint(name: str) -> str:
    """What a series of one file is when that file holds several frames: an enhanced (multi-frame) CT or a
    segmentation (SEG) — not read as a CT volume here; "" otherwise."""
    import pydicom

    try:
        ds = pydicom.dcmread(name, stop_before_pixels=True, force=True)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception:  # noqa: BLE001 - unreadable: the count says enough
        return ""
    if frames < 2:
        return ""
    modality = str(ds.get("Modality", "") or "").strip() or "no Modality"
    return (f" ({Path(name).name} is one multi-frame file of {frames} frames, {modality}: an enhanced CT or a "
            "segmentation is not read as a CT; convert a CT to NIfTI first, e.g. dcm2niix)")


#: DICOM Modality values of projection radiographs (one 2-D view each, not slices of a volume).
PROJECTION_MODALITIES = ("CR", "DX", "XA", "RF", "MG")
#: SOP Class UIDs of projection radiographs: CR, DX (presentation, processing), mammography, intra-oral,
#: X-ray angiography and radiofluoroscopy (and their enhanced and bi-plane forms).
PROJECTION_SOP_CLASSES = frozenset(
    "1.2.840.10008.5.1.4.1.1." + s
    for s in ("1", "1.1", "1.1.1", "1.2", "1.2.1", "1.3", "1.3.1", "12.1", "12.1.1", "12.2", "12.2.1", "12.3")
)


def _check_dicom_series_headers(reader, count: int, source: str) -> None:
    """Refuse a series that is no CT volume: projection radiographs (Modality or SOP class; GDCM stacks them
    with an invented 1 mm spacing), slices of differing ImageOrientationPatient (a localizer mixed in: the
    volume's axes would be the first slice's), a RescaleSlope of 0 or not finite (a slice of one value)."""
    def tag(i, key):
        return reader.GetMetaData(i, key).strip() if reader.HasMetaDataKey(i, key) else ""

    modality, sop = tag(0, "0008|0060").upper(), tag(0, "0008|0016").rstrip("\0 ")
    if modality in PROJECTION_MODALITIES or sop in PROJECTION_SOP_CLASSES:
        what = f"Modality {modality}" if modality in PROJECTION_MODALITIES else f"SOP class {sop}"
        raise InputError(f"DICOM series {source} holds projection radiographs ({what}), not CT slices: "
                         "give a CT series as the CT, and X-rays as X-rays")
    names = reader.GetFileNames()
    first = None
    first_ps = None
    for i in range(count):
        name = Path(names[i]).name if i < len(names) else f"slice {i + 1}"
        first_ps = _check_slice_pixel_spacing(tag(i, "0028|0030"), first_ps, name, source)
        try:
            iop = [float(v) for v in tag(i, "0020|0037").split("\\")] if tag(i, "0020|0037") else None
            slope = float(tag(i, "0028|1053")) if tag(i, "0028|1053") else None
        except ValueError:
            continue  # unreadable: SimpleITK's reading stands
        if iop is not None and len(iop) == 6:
            if first is None:
                first = iop
            elif max(abs(a - b) for a, b in zip(iop, first)) > 1e-4:
                raise InputError(f"DICOM series {source}: {name} has ImageOrientationPatient {iop}, the first slice "
                                 f"{first}: slices of different orientations (a localizer mixed in?)")
        if slope is not None and not (math.isfinite(slope) and slope != 0):
            raise InputError(f"DICOM series {source}: {name} has RescaleSlope (0028,1053) {slope:g} (every voxel of "
                             "the slice would be equal)")


def _slice_rescales_vary(reader, count: int) -> bool:
    """Whether the slices' RescaleSlope/Intercept (0028,1053/1052) differ, or one is fractional: GDCM gives the
    volume the first slice's pixel type (int16 for slope 1, intercept −1024), so another slice's fractional values
    were truncated (4.5 read as 4)."""
    seen = set()
    for i in range(count):
        pair = []
        for key in ("0028|1053", "0028|1052"):
            text = reader.GetMetaData(i, key).strip() if reader.HasMetaDataKey(i, key) else ""
            try:
                pair.append(float(text) if text else None)
            except ValueError:
                pair.append(None)
        if any(v is not None and not float(v).is_integer() for v in pair):
            return True
        seen.add(tuple(pair))
    return len(seen) > 1


def _check_slice_pixel_spacing(text: str, first: list | None, name: str, source: str) -> list:
    """A slice's PixelSpacing (0028,0030): 2 positive numbers (GDCM would invent 1 mm without them), the
    first slice's within 0.1 % (the volume gets the first slice's pixel size: two reconstructions mixed?)."""
    try:
        ps = [float(v) for v in text.split("\\")] if text else []
    except ValueError:
        ps = []
    if len(ps) != 2 or not all(math.isfinite(v) and v > 0 for v in ps):
        found = f"{text!r}" if text else "none"
        raise InputError(f"DICOM series {source}: {name} has no usable PixelSpacing (0028,0030) (2 numbers > 0, mm; "
                         f"found {found}): the voxel size is unknown (xraypose does not guess 1 mm)")
    if first is not None and any(abs(a - b) > 1e-3 * b for a, b in zip(ps, first)):
        raise InputError(f"DICOM series {source}: {name} has PixelSpacing {ps} mm, the first slice {first} mm: "
                         "slices of different pixel sizes (two reconstructions in one folder?)")
    return first if first is not None else ps


def _check_dicom_series_size(names, d: Path, what: str) -> None:
    """The series' size (first slice's rows × columns × number of slices) fits memory, before reading it."""
    import SimpleITK as sitk

    from xraypose.limits import check_allocation, itemsize_from_text

    r = sitk.ImageFileReader()
    r.SetFileName(str(names[0]))
    try:
        with _itk_quiet():
            r.ReadImageInformation()
    except RuntimeError:
        return  # the series reader will say what is wrong
    size = list(r.GetSize())[:2] + [len(names)]
    item = itemsize_from_text(sitk.GetPixelIDValueAsString(r.GetPixelID()))
    check_allocation(size, item + 4, f"{what} DICOM series in {d}")


def _check_dicom_slice_spacing(reader, img, count: int, source: str) -> None:
    """Raise if a slice lacks a usable ImagePositionPatient (GDCM would then invent a 1 mm spacing or
    misplace the slice) or the slice positions along the slice normal are not evenly spaced."""
    positions = []
    names = reader.GetFileNames()
    for i in range(count):
        text = reader.GetMetaData(i, "0020|0032").strip() if reader.HasMetaDataKey(i, "0020|0032") else ""
        try:
            xyz = [float(v) for v in text.split("\\")] if text else []
        except ValueError:
            xyz = []
        if len(xyz) != 3 or not all(math.isfinite(v) for v in xyz):
            name = Path(names[i]).name if i < len(names) else f"slice {i + 1}"
            found = f"{text!r}" if text else "none"
            raise InputError(
                f"DICOM series {source}: {name} has no usable ImagePositionPatient (0020,0032) (3 numbers, mm; "
                f"found {found}): the slices' spacing and order are unknown (xraypose does not guess them)"
            )
        positions.append(xyz)
    pos = np.asarray(positions, dtype=np.float64)
    normal = np.asarray(img.GetDirection(), dtype=np.float64).reshape(img.GetDimension(), -1)[:3, 2]
    gaps = np.diff(pos @ normal)
    med = float(np.median(gaps))
    if abs(med) < 1e-6 or np.any(np.abs(gaps - med) > max(1e-2, 0.01 * abs(med))):
        raise InputError(
            f"DICOM series {source} has uneven slice positions (gaps {gaps.min():.4g} to "
            f"{gaps.max():.4g} mm): missing or duplicate slices?"
        )
    along = np.outer((pos - pos[0]) @ normal, normal)
    drift = np.linalg.norm(pos - pos[0] - along, axis=1)  # within the slices' planes: GDCM stacks them straight
    if drift.max() > max(1e-2, 0.01 * abs(med)):
        k = int(np.argmax(drift))
        raise InputError(
            f"DICOM series {source}: slice {k + 1}'s ImagePositionPatient lies {drift[k]:.3g} mm beside the line "
            "through the first slice along the slices' normal (a gantry-tilted acquisition?); it would be read as a "
            "straight stack, each slice misplaced: resample it first (e.g. dcm2niix, which corrects gantry tilt)"
        )


def _sitk_to_array_affine(img, source: str) -> tuple[np.ndarray, np.ndarray]:
    """SimpleITK image → ``(I, J, K)`` array and ``(4, 4)`` RAS affine."""
    import SimpleITK as sitk

    ncomp = img.GetNumberOfComponentsPerPixel()
    if ncomp != 1:
        raise InputError(f"{source}: expected a scalar image, got {ncomp} components per voxel")
    size = list(img.GetSize())
    dim = img.GetDimension()
    if dim == 4 and size[3] == 1:
        img = sitk.Extract(img, size[:3] + [0], [0, 0, 0, 0])
        dim = 3
    if dim != 3:
        raise InputError(f"{source}: expected a 3D volume, got a {dim}D image of size {tuple(size)}")
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    if np.any(~np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(f"{source}: voxel spacing must be > 0 mm; header says {spacing.tolist()}")
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)
    aff_lps = np.eye(4)
    aff_lps[:3, :3] = direction * spacing[None, :]
    aff_lps[:3, 3] = origin
    # ITK arrays are indexed [k, j, i]; ITK index (i, j, k) = (x, y, z).
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    return arr, LPS_TO_RAS @ aff_lps


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------


def _as_3d(arr: np.ndarray, source: str) -> np.ndarray:
    shape = tuple(int(n) for n in arr.shape)
    if 0 in shape:
        raise InputError(f"{source}: volume has a zero-size dimension, shape {shape}")
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        extra = " (several volumes / time points: extract one first)" if arr.ndim > 3 else ""
        raise InputError(f"{source}: expected a 3D volume, got shape {shape}{extra}")
    return arr



def _series_reason(names, msg: str) -> str:
    """Why ITK's series reader failed on the files ``names``: slices of different sizes in one series
    (ITK says "Size mismatch!" or "ImageIO returns IO region that does not fully contain the requested
    region", by which file comes first) become "its slices differ in size: A is 512 × 512, B is 160 × 160
    pixels (…)" — each file's header read only now, after the failure; anything else as
    :func:`_itk_reason` keeps it."""
    import SimpleITK as sitk

    sizes = {}
    for n in names:
        r = sitk.ImageFileReader()
        r.SetFileName(str(n))
        try:
            with _itk_quiet():
                r.ReadImageInformation()
        except RuntimeError:
            continue
        sizes.setdefault(tuple(r.GetSize()[:2]), Path(n).name)
    if len(sizes) < 2:
        return _itk_reason(msg)
    shown = ", ".join(f"{name} is {w} × {h}" for (w, h), name in list(sizes.items())[:3])
    return f"its slices differ in size: {shown} pixels (one folder should hold the slices of one CT series)"


def _itk_reason(msg: str) -> str:
    """Keep the informative tail of an ITK exception message, on one line."""
    lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "ERROR" in ln or "Unable" in ln or "error" in ln:
            return one_line(Exception(ln.split("ERROR:")[-1]))
    return one_line(Exception(lines[-1] if lines else msg))
