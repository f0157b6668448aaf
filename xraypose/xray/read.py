""":func:`read_xray`: one entry point for every X-ray file kind."""

from __future__ import annotations

from pathlib import Path

from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.io import check_input_path
from xraypose.xray.dicom import read_dicom_xray
from xraypose.xray.image import read_image_xray
from xraypose.xray.overrides import XRayOverrides
from xraypose.xray.record import IMAGE_EXTENSIONS, KINDS, XRay

__all__ = ["read_xray"]


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
    overrides: XRayOverrides | dict | None = None,
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
        overrides: all of the above at once (an :class:`XRayOverrides`, or a dict of them); a keyword
            given with a value other than its default replaces the one in ``overrides``.

    Raises:
        InputError: missing/unreadable/truncated file, not an image, zero or
            missing pixel spacing (unless ``require_intrinsics=False``), image
            and intrinsics of different sizes, bad overrides.
    """
    p = Path(path).expanduser()
    check_input_path(p, "X-ray file", f"X-ray file not found: {p}")  # a FIFO, a device, a link loop too
    if p.is_dir():
        raise InputError(f"X-ray path is a folder, not a file: {p}")
    given = dict(camera=camera, sdd=sdd, delx=delx, dely=dely, x0=x0, y0=y0, reverse_x_axis=reverse_x_axis,
                 primary=primary, secondary=secondary, sod=sod, isocenter=isocenter, frames=frames, kind=kind,
                 patient_orientation=patient_orientation, use_patient_orientation=use_patient_orientation,
                 require_intrinsics=require_intrinsics)
    if overrides is None:
        ov = XRayOverrides(**given)
    else:
        default = XRayOverrides()
        ov = XRayOverrides.of(overrides, **{k: v for k, v in given.items() if not _is_default(v, getattr(default, k))})
    if ov.kind is not None and ov.kind not in KINDS:
        raise InputError(f"unknown pixel kind {ov.kind!r}; choose one of {', '.join(KINDS)}")
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return read_image_xray(p, ov)
    return read_dicom_xray(p, ov)


def _is_default(value, default) -> bool:
    """Whether a keyword was left at its default (None, ``frames=0``, True) — then ``overrides`` decides."""
    return value is default or (type(value) is type(default) and not hasattr(value, "shape") and value == default)
