"""The detector's blur coefficient predicted on xraypose's own simulator, without a calibration image.

:attr:`RegistrationConfig.blur_coefficient` holds an intensity-domain blur fixed (a detector's, a focal
spot's, or preprocessing's binning of fine pixels: docs/registration.md, "The detector's blur").  Measured
on the X-ray itself it is confounded with the pose (a misaligned edge looks blurred).  Predicted, both
images come from one pose: a noiseless X-ray of the CT is formed by :class:`xraypose.synthetic.XraySimulator`
on the frames' own detector, with their blur and their preprocessing, at a pose near theirs (a registered
frame's), and :meth:`Registrar.measure_blur` reads the coefficient on it at that same pose.  The
coefficient depends on the view, not finely on the pose: on the tracking benchmark's pelvis trajectory
(frames formed at 512², binned to 128 rows) it was −0.0308 at frame 0 registered and −0.031 at its truth,
and tracking with it went from 29 % to 92 % of frames below 1 mm (docs/benchmarks.md, stop 28).
"""

from __future__ import annotations

import torch

from xraypose.camera import Camera
from xraypose.errors import InputError

#: The simulator's intensity-domain blur (σ, pixels of the detector as stored) unless told: its default.
DETECTOR_BLUR_PX = 0.7


def predict_blur_coefficient(registrar, volume, camera: Camera, camera_to_world, preprocessing: dict, *,
                             detector_blur_px: float = DETECTOR_BLUR_PX, supersample: int = 2) -> float:
    """The blur coefficient of X-rays like the frames', predicted at ``camera_to_world``.

    Args:
        registrar: the :class:`~xraypose.register.Registrar` that will hold it (its finest dense level
            measures it).
        volume: the CT (:class:`~xraypose.volume.Volume`, HU), as the simulator reads it.
        camera: the frames' detector as stored (their raw pixels, before any crop or resize).
        camera_to_world: (4, 4) a pose of ``camera`` near the frames' (e.g. frame 0 registered), world RAS mm.
        preprocessing: the :func:`~xraypose.preprocess.preprocess` keywords the frames got, with
            ``resample_domain`` the order they got ("intensity" when binned before the log; "auto" would
            take the log of each pixel of this noiseless image); ``log`` and ``i0`` are the simulator's.
        detector_blur_px: the detector's intensity-domain blur σ, pixels of ``camera``.
        supersample: the simulator's area average per pixel.

    Returns: the coefficient (≤ 0 normally), per pixel² of the preprocessed X-ray.
    """
    from xraypose.preprocess import preprocess
    from xraypose.synthetic import XraySimulator

    T = torch.as_tensor(camera_to_world, dtype=torch.float64).reshape(4, 4)
    if not bool(torch.isfinite(T).all()):
        raise InputError("predicting the blur: the pose holds NaN or infinite values")
    if not (float(detector_blur_px) >= 0):
        raise InputError(f"predicting the blur: detector_blur_px must be >= 0, got {detector_blur_px!r}")
    sim = XraySimulator(volume, camera, supersample=supersample, photons=0, blur_px=float(detector_blur_px))
    x = sim(T)
    kw = {k: v for k, v in preprocessing.items() if k not in ("log", "i0")}
    pre = preprocess(x.raw[0, 0], camera, log=True, i0=x.i0, **kw)
    mask = None if pre.mask is None else pre.mask[None, None]
    c = registrar.measure_blur(pre.image[None, None], pre.camera, pre.transform_pose(T)[None], mask)
    return float(c[0])
