"""What the caller says about an X-ray, over what its file says: :class:`XRayOverrides`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from xraypose.camera import Camera
from xraypose.errors import InputError

__all__ = ["XRayOverrides"]


@dataclass(frozen=True)
class XRayOverrides:
    """Values that replace the file's (the keywords of :func:`xraypose.xray.read_xray`).

    None means "what the file (or its sidecar JSON) says".  Intrinsics in mm, angles in degrees,
    the isocenter in world RAS mm.

    Attributes:
        camera: full intrinsics (its size must match the image).
        sdd, delx, dely, x0, y0, reverse_x_axis: single intrinsic values (x0/y0 in
            :class:`~xraypose.camera.Camera`'s convention).
        primary, secondary: C-arm angles (LAO+/CRAN+).
        sod: source-to-isocenter distance.
        isocenter: (3,) point about which the C-arm angles give ``xray.pose``.
        frames: a frame index, "max", "sum", "mean" or "all" (multi-frame files).
        kind: "intensity", "log-intensity" or "attenuation".
        patient_orientation: PatientOrientation's two entries (e.g. "L\\\\F" or ("L", "F")).
        use_patient_orientation: let PatientOrientation choose the mirror and the roll.
        require_intrinsics: an InputError when sdd or the pixel spacing is missing or zero
            (otherwise the camera is None).
    """

    camera: Camera | None = None
    sdd: float | None = None
    delx: float | None = None
    dely: float | None = None
    x0: float | None = None
    y0: float | None = None
    reverse_x_axis: bool | None = None
    primary: float | None = None
    secondary: float | None = None
    sod: float | None = None
    isocenter: Any = None
    frames: int | str = 0
    kind: str | None = None
    patient_orientation: Any = None
    use_patient_orientation: bool = True
    require_intrinsics: bool = True

    @classmethod
    def of(cls, overrides: "XRayOverrides | dict | None" = None, **changes) -> "XRayOverrides":
        """Overrides from an :class:`XRayOverrides`, a dict of keywords (the older form) or None,
        with ``changes`` on top; an unknown name is an InputError listing the known ones."""
        if overrides is None:
            base = cls()
        elif isinstance(overrides, cls):
            base = overrides
        elif isinstance(overrides, dict):
            base = cls()
            changes = {**overrides, **changes}
        else:
            raise InputError(f"X-ray overrides must be an XRayOverrides or a dict, got {type(overrides).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise InputError(f"unknown X-ray setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(base, **changes) if changes else base
