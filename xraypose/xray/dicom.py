"""Reading DICOM X-rays: the file, its pixels, and the header's sections, one function each.

:func:`read_dicom_xray` reads the pixels (frames chosen or reduced), then the header in the order
the module docstring of :mod:`xraypose.xray` lists the tags: modality rescale (:func:`_rescale`),
photometric interpretation (:func:`_photometric`), pixel kind (:func:`_pixel_kind`), intrinsics
(:func:`_header_intrinsics`) and C-arm angles with PatientOrientation (:func:`_header_angles`); every
value used is recorded with its keyword and tag.  :mod:`xraypose.xray.resolve` turns them into the
:class:`~xraypose.xray.XRay`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from xraypose._checks import one_line
from xraypose.errors import InputError
from xraypose.xray.frames import check_fits_float32, grey_of_rgb, inverted_to_bright, reduce_frames
from xraypose.xray.overrides import XRayOverrides
from xraypose.xray.record import IMAGE_EXTENSIONS, Provenance, XRay
from xraypose.xray.resolve import finish_xray

__all__ = ["read_dicom_xray"]


def read_dicom_xray(p, overrides: XRayOverrides | dict | None = None, **kw) -> XRay:
    """Read a DICOM X-ray; ``overrides`` (an :class:`XRayOverrides` or a dict) and the keywords are those of
    :func:`xraypose.xray.read_xray`."""
    ov = XRayOverrides.of(overrides, **kw)
    p = Path(p)
    ds = _load_dicom(p)
    hdr = Provenance()
    arr = _dicom_pixels(ds, p)
    pixels = _pixel_element(ds)
    hdr.set("pixel_type", str(arr.dtype), f"{pixels} {_PIXEL_ELEMENTS[pixels]}")  # a sequence's frames must agree
    src = str(p)
    # "max", "sum", "mean" of the frames' values, not of the stored numbers: after the rescale (a sum's intercept
    # once per frame), the modality LUT and MONOCHROME1's inversion (its max would be the darkest frame's)
    later = arr.ndim == 3 and isinstance(ov.frames, str) and ov.frames.lower() in ("max", "sum", "mean")
    img, nframes = _frames(ds, arr, hdr, "all" if later else ov.frames, src)
    img, stored_range = _rescale(ds, img, hdr, src)
    img, inverted = _photometric(ds, img, hdr, src, stored_range)
    if later:
        img = reduce_frames(img, ov.frames, hdr, src, "NumberOfFrames (0028,0008)")
    kind = _pixel_kind(ds, hdr, ov.kind, inverted)
    hv: dict = {}
    ermf = _header_intrinsics(ds, hdr, hv, ov, src)
    _header_angles(ds, hdr, hv, nframes, src, ov)
    return finish_xray(img.astype(np.float32), hv, hdr, kind, src, ov, ermf=ermf)


def _frames(ds, arr: np.ndarray, hdr: Provenance, frames, src: str) -> tuple[np.ndarray, int]:
    """Rows, Columns, NumberOfFrames recorded; the frame(s) chosen (:func:`reduce_frames`) and the frame count."""
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    hdr.set("Rows", rows, "Rows (0028,0010)")
    hdr.set("Columns", cols, "Columns (0028,0011)")
    if nframes > 1:
        hdr.set("NumberOfFrames", nframes, "NumberOfFrames (0028,0008)")
    if arr.ndim == 3 and nframes == 1 and arr.shape[0] != rows:
        nframes = arr.shape[0]
    return reduce_frames(arr, frames, hdr, src, "NumberOfFrames (0028,0008)"), nframes


def _rescale(ds, img: np.ndarray, hdr: Provenance, src: str) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The modality transform (float64): a ModalityLUTSequence's table (:func:`_modality_lut`), else the rescale
    ``v·slope + intercept``; returns the image and the values BitsStored's range maps to (None when the stored
    values are signed or BitsStored is not given: MONOCHROME1 is then inverted over the image's range)."""
    bits = int(ds.get("BitsStored", 0) or 0)
    unsigned = bits > 0 and int(ds.get("PixelRepresentation", 0) or 0) == 0
    if ds.get("ModalityLUTSequence"):
        return _modality_lut(ds, img, hdr, src, unsigned)
    img = img.astype(np.float64)
    slope = _dicom_number(ds, "RescaleSlope", "(0028,1053)", path=src)
    inter = _dicom_number(ds, "RescaleIntercept", "(0028,1052)", path=src)
    s = 1.0 if slope is None else slope
    b = 0.0 if inter is None else inter
    if slope is not None:
        hdr.set("RescaleSlope", s, "RescaleSlope (0028,1053)")
    if inter is not None:
        hdr.set("RescaleIntercept", b, "RescaleIntercept (0028,1052)")
    if s == 0:
        raise InputError(f"{src}: RescaleSlope (0028,1053) is 0 (every pixel would be equal)")
    stored_range = (b, (2 ** bits - 1) * s + b) if unsigned else None
    return (img if slope is None and inter is None else img * s + b), stored_range


def _modality_lut(ds, img: np.ndarray, hdr: Provenance, src: str, unsigned: bool):
    """The ModalityLUTSequence's first table applied (pydicom's ``apply_modality_lut``: stored values below its
    first mapped value take its first entry, those beyond its end its last); a RescaleSlope/Intercept beside it
    is not used (the standard allows one or the other).  The range for MONOCHROME1 is the table's."""
    from pydicom.pixels import apply_modality_lut

    try:
        item = ds.ModalityLUTSequence[0]
        n, first, depth = (int(v) for v in item.LUTDescriptor)
        out = apply_modality_lut(img, ds).astype(np.float64)
        table = np.asarray(apply_modality_lut(np.arange(first, first + (n or 2 ** 16)), ds), dtype=np.float64)
    except Exception as e:  # noqa: BLE001 - a damaged item: KeyError, ValueError, TypeError, struct.error...
        raise InputError(f"{src}: ModalityLUTSequence (0028,3000) cannot be applied ({one_line(e)})") from None
    hdr.set("ModalityLUTSequence", f"{n or 2 ** 16} entries of {depth} bits from stored value {first}",
            "ModalityLUTSequence (0028,3000) [LUTDescriptor, LUTData]")
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        hdr.note("RescaleSlope/RescaleIntercept not used: the ModalityLUTSequence is the modality transform")
    return out, ((float(table.min()), float(table.max())) if unsigned else None)


def _photometric(ds, img: np.ndarray, hdr: Provenance, src: str,
                 stored_range: tuple[float, float] | None) -> tuple[np.ndarray, bool]:
    """MONOCHROME1 inverted so that high values are bright (over ``stored_range``, BitsStored's range after the
    modality transform, when known, else the image's); returns the image and whether it was inverted."""
    photo = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    hdr.set("PhotometricInterpretation", photo, "PhotometricInterpretation (0028,0004)")
    if photo == "MONOCHROME2":
        return img, False
    if photo in _COLOUR and int(ds.get("SamplesPerPixel", 1) or 1) == 3:  # (its channels equal: _dicom_pixels)
        hdr.note(f"{photo} image of equal colour channels read as greyscale")
        return img, False
    if photo != "MONOCHROME1":
        raise InputError(f"{src}: PhotometricInterpretation {photo!r} is not a greyscale X-ray (MONOCHROME1/2)")
    if stored_range is not None:
        hdr.set("BitsStored", int(ds.BitsStored), "BitsStored (0028,0101)")
    img, how = inverted_to_bright(img, stored_range, "BitsStored")
    hdr.note(f"MONOCHROME1 inverted so that high values are bright: {how}")
    return img, True


def _pixel_kind(ds, hdr: Provenance, kind: str | None, inverted: bool) -> str:
    """The given kind, else PixelIntensityRelationship (+Sign, flipped by a MONOCHROME1 inversion): LIN →
    "intensity", LOG → "log-intensity", a negative sign or anything else → "attenuation"."""
    rel = str(ds.get("PixelIntensityRelationship", "") or "").strip().upper()
    sign = ds.get("PixelIntensityRelationshipSign", None)
    if rel:
        hdr.set("PixelIntensityRelationship", rel, "PixelIntensityRelationship (0028,1040)")
    if sign is not None and sign != "":
        sign = int(sign)
        hdr.set("PixelIntensityRelationshipSign", sign, "PixelIntensityRelationshipSign (0028,1041)")
    else:
        sign = 1
    if kind is not None:
        hdr.set("kind", kind, "user")
        return kind
    eff = -sign if inverted else sign
    if rel == "LIN" and eff > 0:
        kind, why = "intensity", "LIN: values proportional to the X-ray intensity"
    elif rel == "LOG" and eff > 0:
        kind, why = "log-intensity", "LOG: values proportional to log intensity"
    elif rel in ("LIN", "LOG"):
        kind, why = "attenuation", f"{rel} with negative sign: high values = less X-ray (bone bright)"
    else:
        kind, why = "attenuation", "no PixelIntensityRelationship LIN/LOG: display values assumed (bone bright)"
    hdr.set("kind", kind, f"derived: {why}")
    return kind


def _header_intrinsics(ds, hdr: Provenance, hv: dict, ov: XRayOverrides, src: str) -> float | None:
    """sdd, pixel spacing (ImagerPixelSpacing, else PixelSpacing × the magnification factor when given) and
    DetectorActiveOrigin into ``hv``; returns EstimatedRadiographicMagnificationFactor (or None)."""
    v = _dicom_number(ds, "DistanceSourceToDetector", "(0018,1110)", path=src)
    if v is not None:
        hv["sdd"] = (v, "DistanceSourceToDetector (0018,1110)")
    ips = _dicom_number(ds, "ImagerPixelSpacing", "(0018,1164)", 2, path=src)
    ps = _dicom_number(ds, "PixelSpacing", "(0028,0030)", 2, path=src)
    ermf = _dicom_number(ds, "EstimatedRadiographicMagnificationFactor", "(0018,1114)", path=src)
    if ermf is not None:
        hdr.set("EstimatedRadiographicMagnificationFactor", ermf, "EstimatedRadiographicMagnificationFactor (0018,1114)")
        if ermf <= 0:
            raise InputError(f"{src}: EstimatedRadiographicMagnificationFactor (0018,1114) must be > 0, got {ermf}")
    if ips is not None:
        hv["dely"] = (ips[0], "ImagerPixelSpacing (0018,1164) [row spacing]")
        hv["delx"] = (ips[1], "ImagerPixelSpacing (0018,1164) [column spacing]")
        if ps is not None:
            hdr.set("PixelSpacing", ps, "PixelSpacing (0028,0030) (not used: ImagerPixelSpacing is at the detector)")
    elif ps is not None:
        if ermf is not None:
            hv["dely"] = (ps[0] * ermf, "PixelSpacing (0028,0030) [row] × EstimatedRadiographicMagnificationFactor")
            hv["delx"] = (ps[1] * ermf, "PixelSpacing (0028,0030) [column] × EstimatedRadiographicMagnificationFactor")
        else:
            hv["dely"] = (ps[0], "PixelSpacing (0028,0030) [row spacing]")
            hv["delx"] = (ps[1], "PixelSpacing (0028,0030) [column spacing]")
            if ov.delx is None or ov.dely is None:
                hdr.note("PixelSpacing used as the detector pixel spacing (no ImagerPixelSpacing nor magnification factor)")
    dao = _dicom_number(ds, "DetectorActiveOrigin", "(0018,7028)", 2, path=src)
    if dao is not None:
        hv["pp_row"] = (dao[0], "DetectorActiveOrigin (0018,7028) [row]")
        hv["pp_col"] = (dao[1], "DetectorActiveOrigin (0018,7028) [column]")
        hdr.note("DetectorActiveOrigin read as the principal point's offset (row, column mm) from the image centre")
    return ermf


def _header_angles(ds, hdr: Provenance, hv: dict, nframes: int, src: str, ov: XRayOverrides) -> None:
    """PositionerPrimary/SecondaryAngle (in the ranges of ``--angles`` and a sidecar's, unless overridden),
    DistanceSourceToPatient and PatientOrientation into ``hv``; ViewPosition recorded (information only)."""
    from xraypose.schema import PRIMARY_DEG, SECONDARY_DEG

    a1 = _dicom_number(ds, "PositionerPrimaryAngle", "(0018,1510)", path=src)
    a2 = _dicom_number(ds, "PositionerSecondaryAngle", "(0018,1511)", path=src)
    for v, user, spec, name in ((a1, ov.primary, PRIMARY_DEG, "PositionerPrimaryAngle (0018,1510)"),
                                (a2, ov.secondary, SECONDARY_DEG, "PositionerSecondaryAngle (0018,1511)")):
        problem = None if v is None or user is not None else spec.problem(v)
        if problem:  # the same range as --angles: 720° is no C-arm's reading (a damaged or mis-scaled header)
            raise InputError(f"{src}: {name} {problem}, got {v:g}; pass the angles (--angles) to override it")
    dsp = _dicom_number(ds, "DistanceSourceToPatient", "(0018,1111)", path=src)
    if a1 is not None:
        hv["primary"] = (a1, "PositionerPrimaryAngle (0018,1510)")
    if a2 is not None:
        hv["secondary"] = (a2, "PositionerSecondaryAngle (0018,1511)")
    if dsp is not None:
        hv["sod"] = (dsp, "DistanceSourceToPatient (0018,1111)")
    po = ds.get("PatientOrientation", None)
    if po not in (None, ""):
        po_vals = [str(x) for x in (po if not isinstance(po, str) else po.split("\\"))]
        if po_vals and any(po_vals):
            hv["patient_orientation"] = (po_vals, "PatientOrientation (0020,0020)")
    vp = str(ds.get("ViewPosition", "") or "").strip()
    if vp:
        hdr.set("ViewPosition", vp, "ViewPosition (0018,5101) (information only)")
    if nframes > 1 and "PositionerPrimaryAngleIncrement" in ds:
        hdr.note("per-frame positioner angle increments are ignored; the first frame's angles are used")


def _dicom_number(ds, keyword: str, tag: str, n: int | None = None, path: str = ""):
    """A float (or list of n floats) from a DICOM element; None if absent or empty."""
    if keyword not in ds:
        return None
    raw = ds[keyword].value
    if raw is None or raw == "" or (hasattr(raw, "__len__") and not isinstance(raw, (str, bytes)) and len(raw) == 0):
        return None
    vals = list(raw) if (hasattr(raw, "__iter__") and not isinstance(raw, (str, bytes))) else [raw]
    try:
        out = [float(v) for v in vals]
    except (TypeError, ValueError):
        raise InputError(f"{path}: {keyword} {tag} is not a number: {raw!r}") from None
    if not all(math.isfinite(v) for v in out):
        raise InputError(f"{path}: {keyword} {tag} is not finite: {raw!r}")
    if n is None:
        return out[0]
    if len(out) != n:
        raise InputError(f"{path}: {keyword} {tag} must hold {n} numbers, got {raw!r}")
    return out


def _load_dicom(p: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(p))
    except InvalidDicomError:
        try:
            ds = pydicom.dcmread(str(p), force=True)
        except Exception as e:  # noqa: BLE001 - anything pydicom raises on garbage
            raise InputError(f"{p}: not a DICOM file ({one_line(e)})") from None
        if "PixelData" not in ds and "Rows" not in ds:
            raise InputError(
                f"{p}: not a DICOM file (no DICOM header); images must be DICOM or end in "
                f"{', '.join(IMAGE_EXTENSIONS)}"
            )
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{p}: cannot read the DICOM file, truncated or corrupt ({one_line(e)})") from None
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{p}: cannot read the DICOM file ({one_line(e)})") from None
    return ds


#: SOP classes of cross-sectional images (slices of a volume, segmentations), named: refused as X-rays.
_SLICE_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1." + k: v for k, v in (
    ("2", "CT series"), ("2.1", "enhanced CT"), ("2.2", "CT series"), ("4", "MR series"), ("4.1", "enhanced MR"),
    ("128", "PET series"), ("130", "enhanced PET"), ("20", "nuclear medicine series"), ("66.4", "segmentation (SEG)"),
    ("481.2", "RT dose volume"))}


#: Colour PhotometricInterpretations of 3 samples a pixel that pydicom decodes to RGB: read as grey when the
#: channels are equal (a grey X-ray saved in colour, as a PNG's), else refused.
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422")


#: The elements that may hold an image's pixels (pydicom decodes each): integers, 32-bit and 64-bit floats.
_PIXEL_ELEMENTS = {"PixelData": "(7FE0,0010)", "FloatPixelData": "(7FE0,0008)", "DoubleFloatPixelData": "(7FE0,0009)"}


def _pixel_element(ds) -> str | None:
    """The keyword of the element holding the pixels (:data:`_PIXEL_ELEMENTS`), or None."""
    return next((k for k in _PIXEL_ELEMENTS if k in ds), None)


def _dicom_pixels(ds, p: Path) -> np.ndarray:
    from xraypose.limits import check_xray_size

    pixels = _pixel_element(ds)  # FloatPixelData / DoubleFloatPixelData were called "no pixel data"
    if pixels is None:
        raise InputError(f"{p}: DICOM file has no pixel data (not an image: {ds.get('SOPClassUID', 'unknown class')})")
    meta = getattr(ds, "file_meta", None)
    sop = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else "") or "").strip()
    if sop in _SLICE_SOP_CLASSES:  # read as an X-ray of "display values" without a word
        raise InputError(f"{p}: a slice of a {_SLICE_SOP_CLASSES[sop]} (SOP class {sop}), not a projection X-ray: give "
                         "the CT as the CT (the folder of its series), and radiographs as X-rays")
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    photo = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if spp not in (1, 3) or spp == 3 and photo not in _COLOUR:
        raise InputError(f"{p}: colour DICOM image ({spp} samples per pixel, PhotometricInterpretation {photo!r}); "
                         "X-rays must be greyscale")
    if spp == 1 and photo not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(f"{p}: PhotometricInterpretation {photo!r} is not a greyscale X-ray (MONOCHROME1/2)")
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise InputError(f"{p}: Rows, Columns or NumberOfFrames is not a whole number") from None
    check_xray_size(rows, cols, str(p), frames)  # before pydicom allocates the pixels
    _check_frame_count(ds, p, rows, cols, frames, pixels)  # before pydicom warns and drops what the header leaves out
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - pydicom raises ValueError, RuntimeError, NotImplementedError...
        msg = one_line(e)
        if "length" in msg.lower() or "truncat" in msg.lower() or "expected" in msg.lower():
            raise InputError(f"{p}: DICOM pixel data is truncated or incomplete ({msg})") from None
        raise InputError(f"{p}: cannot decode the DICOM pixel data ({msg}){_decoder_hint(ds, msg)}") from None
    if spp == 3:  # (pydicom gives YBR as RGB) a grey X-ray saved in colour is read as a PNG's is
        return grey_of_rgb(np.asarray(arr), f"{p}: colour DICOM image ({photo}, its colour channels differ)")
    check_fits_float32(np.asarray(arr), str(p))  # (DoubleFloatPixelData)
    return np.asarray(arr)


def _decoder_hint(ds, msg: str) -> str:
    """Which package decodes the file's transfer syntax, when the decoders at hand do not support it (Pillow
    decodes 8-bit JPEG and JPEG 2000, not 12-bit JPEG nor JPEG lossless); "" when pydicom already names the
    packages ("missing dependencies") or the data is at fault."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None or "does not support" not in msg:
        return ""
    pkg = "pylibjpeg-openjpeg" if "2000" in ts.name else "pylibjpeg-libjpeg"
    return f"; to decode {ts.name}, install pylibjpeg and {pkg} (pip install pylibjpeg {pkg}), or python-gdcm"


def _check_frame_count(ds, p: Path, rows: int, cols: int, frames: int, pixels: str = "PixelData") -> None:
    """Refuse uncompressed pixel data holding whole frames more than ``NumberOfFrames`` says, or a whole row more
    than Rows × Columns (pydicom only warns of "excess padding" and drops them: a cine's frames lost, or an image
    cut or sheared, without a word); padding of less than a row (to an even length) is normal."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and getattr(ts, "is_compressed", False):
        return
    try:
        bits = int(ds.get("BitsAllocated", 16) or 16) * int(ds.get("SamplesPerPixel", 1) or 1)  # bits a pixel
        frame_bytes = rows * cols * bits // 8
        have = len(ds[pixels].value)
        held = have // frame_bytes if frame_bytes > 0 else 0
    except (TypeError, ValueError):
        return
    if held > frames:
        said = (f"NumberOfFrames (0028,0008) says {frames}" if "NumberOfFrames" in ds
                else "it gives no NumberOfFrames (0028,0008): one frame")
        raise InputError(f"{p}: the pixel data holds {held} frames of {rows} × {cols} pixels but {said}; the header "
                         "does not match the data (frames would be lost)")
    row_bytes = cols * bits // 8
    excess = have - frames * frame_bytes
    if frame_bytes > 0 and bits % 8 == 0 and excess > 1 and excess >= row_bytes:
        raise InputError(f"{p}: the pixel data holds {have} bytes, {excess} more than Rows × Columns × frames "
                         f"({rows} × {cols} × {frames} pixels of {bits} bits) need: the header's Rows (0028,0010) or "
                         "Columns (0028,0011) does not match the data (the image would be cut or sheared)")
