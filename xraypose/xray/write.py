"""Writing DICOM X-rays (examples, tests, converting other formats) that :func:`xraypose.xray.read_xray`
reads back, and the PatientOrientation letters of a camera at a pose."""

from __future__ import annotations

import numpy as np
import torch

from xraypose.camera import Camera
from xraypose.errors import InputError

__all__ = ["write_dicom_xray", "orientation_letters"]

F64 = torch.float64


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

    from xraypose.io import atomic_write_bytes

    a = np.asarray(pixels)
    if a.ndim not in (2, 3):
        raise InputError(f"DICOM pixels must be (H, W) or (frames, H, W), got shape {a.shape}")
    if np.any(a < 0) or np.any(a > 65535) or not np.all(np.equal(np.round(a), a)):
        raise InputError("DICOM pixels must be whole numbers in [0, 65535]")
    a = a.astype(np.uint16)
    ds = _image_dataset(a, modality, photometric)
    if rescale is not None:
        ds.RescaleSlope = f"{float(rescale[0]):.10g}"
        ds.RescaleIntercept = f"{float(rescale[1]):.10g}"
    if intensity_relationship is not None:
        ds.PixelIntensityRelationship = intensity_relationship
        ds.PixelIntensityRelationshipSign = 1
    if camera is not None:
        _write_camera(ds, camera, use_pixel_spacing, magnification)
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


def _image_dataset(a: np.ndarray, modality: str, photometric: str):
    """A new X-ray angiography dataset (fresh UIDs) for 16-bit pixels ``a`` ``(H, W)`` or ``(F, H, W)``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, XRayAngiographicImageStorage, generate_uid

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
    return ds


def _write_camera(ds, camera: Camera, use_pixel_spacing: bool, magnification: float | None) -> None:
    """DistanceSourceToDetector, the pixel spacing (at the detector, or at the patient with a magnification)
    and DetectorActiveOrigin (row, column mm, as displayed) of ``camera``."""
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
