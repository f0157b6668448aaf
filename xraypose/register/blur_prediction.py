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


def noiseless_xray(volume, camera: Camera, camera_to_world, *, detector_blur_px: float = DETECTOR_BLUR_PX,
                   supersample: int = 2) -> tuple[torch.Tensor, float]:
    """((H, W) raw 16-bit-scale intensities, their I0): the X-ray a detector would store without noise —
    the appearance families' own chain (:func:`xraypose.appearance.form_xray`, family "lowdose" without
    photons or collimator): Siddon line integrals of the physical μ on a ``supersample``× finer detector,
    their transmissions area-averaged to ``camera``'s pixels (a pixel integrates the photons that reach
    it), the detector's blur σ ``detector_blur_px`` (pixels of ``camera``) on the intensities, 16 bit.
    (``XraySimulator`` averages the line integrals instead, which on 2.2 mm pixels predicted the
    pelvis's coefficient 10 % smaller: −0.0275 against −0.0310.)"""
    from xraypose.appearance import form_xray

    fx = form_xray(volume, camera, torch.as_tensor(camera_to_world, dtype=torch.float64), family="lowdose",
                   generator=torch.Generator().manual_seed(0), photons=0, collimator_px=0,
                   blur_px=float(detector_blur_px), supersample=supersample)
    return fx.raw, float(fx.info["i0"])


#: What the prediction matches (``predict_blur_coefficient``'s ``criterion``).
CRITERIA = ("fit", "depth", "difference")


def predict_blur_coefficient(registrar, volume, camera: Camera, camera_to_world, preprocessing: dict, *,
                             detector_blur_px: float = DETECTOR_BLUR_PX, supersample: int | None = None,
                             criterion: str = "fit") -> float:
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
        supersample: the simulated detector's area average per pixel; None (default): 2, or 1 where
            preprocessing shrinks the image 4× or more (its bin averages the intensities anyway: on the
            pelvis at 512² and 1024², binned to 128 rows, 1 gave the coefficient within 2 % of 2's in a
            quarter of the time — 0.5 s against 2.1 s, 1.8 s against 7.7 s, Intel Xeon, 2 threads; binned
            2×, 5 % off on the sample CT).
        criterion: "fit": the coefficient that best explains the simulated X-ray at the pose
            (:meth:`Registrar.measure_blur`); "depth": the one at which the ``registrar``'s schedule,
            started at the pose, keeps the simulated X-ray's depth — the registration of the simulated
            X-ray from the pose with no coefficient and with the fit's, and the line through the two
            depths (of the registrar's isocenter, along the beam) taken to zero; limited to [2·fit, 0].
            The fit's coefficient also takes up edge mismatch that does not move the depth: on one
            pelvis trajectory's views the fit's −0.058 … −0.063 left the depth 0.1–0.2 mm off,
            the depth's −0.049 … −0.059 brought it to the truth.
            "difference": the fit's coefficient less the fit's on the same simulated X-ray without its
            intensity-domain blurs (``detector_blur_px`` 0, and shrunk after the log): the part the
            intensities' blur adds, without what the fit also takes up of the simulator's other
            mismatch with registration's DRR (its physical μ against the DRR's density model, Siddon
            against trilinear).  On the tracking benchmark's abdomen views (512² → 256 rows) the fit read
            −0.12 … −0.24 with the blur and −0.12 … −0.23 without it: almost all of it mismatch, which on
            real X-rays is not the simulator's (docs/benchmarks.md, stop 52).  Two simulations: twice the time.

    Returns: the coefficient (≤ 0 normally), per pixel² of the preprocessed X-ray.
    """
    from xraypose.preprocess import preprocess

    T = torch.as_tensor(camera_to_world, dtype=torch.float64).reshape(4, 4)
    if not bool(torch.isfinite(T).all()):
        raise InputError("predicting the blur: the pose holds NaN or infinite values")
    if not (float(detector_blur_px) >= 0):
        raise InputError(f"predicting the blur: detector_blur_px must be >= 0, got {detector_blur_px!r}")
    if criterion not in CRITERIA:
        raise InputError(f"predicting the blur: criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    if supersample is None:
        size = preprocessing.get("size")
        rows = None if size is None else (size if isinstance(size, int) else size[0])
        supersample = 1 if rows and camera.height >= 4 * rows else 2
    kw = {k: v for k, v in preprocessing.items() if k not in ("log", "i0")}

    def fitted(blur_px: float, **changes):
        raw, i0 = noiseless_xray(volume, camera, T, detector_blur_px=blur_px, supersample=supersample)
        pre = preprocess(raw, camera, log=True, i0=i0, **{**kw, **changes})
        mask = None if pre.mask is None else pre.mask[None, None]
        P = pre.transform_pose(T).to(torch.float64)
        return float(registrar.measure_blur(pre.image[None, None], pre.camera, P[None], mask)[0]), pre, mask, P

    c, pre, mask, P = fitted(float(detector_blur_px))
    if criterion == "difference":  # the same X-ray without an intensity-domain blur: what the blur adds
        sharp = fitted(0.0, **({"resample_domain": "line-integral"} if "size" in kw else {}))[0]
        return c - sharp
    if criterion == "fit" or not c < 0:
        return c
    iso = torch.cat([registrar.isocenter.detach().to(torch.float64).cpu(), torch.ones(1, dtype=torch.float64)])
    z_true = float(torch.linalg.solve(P, iso)[2])

    def depth(coefficient: float) -> float:  # the isocenter's depth in the camera that registration finds
        res = registrar.derive(blur_coefficient=coefficient).register(pre.image[None, None], pre.camera, P[None],
                                                                      masks=mask)
        return float(torch.linalg.solve(res.poses[0].to(torch.float64), iso)[2]) - z_true

    d0, d1 = depth(0.0), depth(c)
    if not (abs(d0 - d1) > 1e-6):  # the coefficient does not move the depth: nothing to match
        return c
    return float(min(0.0, max(2.0 * c, c * d0 / (d0 - d1))))
