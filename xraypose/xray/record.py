"""The :class:`XRay` record (image, camera, pose, pixel kind) and the provenance of its values."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from xraypose.camera import Camera, check_sod
from xraypose.converters import pose_from_carm_angles
from xraypose.errors import InputError
from xraypose.preprocess import PixelMap, Preprocessed, preprocess

__all__ = ["XRay", "Provenance", "KINDS", "IMAGE_EXTENSIONS", "IGNORED_IMAGE_NOTES", "format_value", "notes_to_show"]

#: Pixel kinds (see :mod:`xraypose.xray`).
KINDS = ("intensity", "log-intensity", "attenuation")
#: File endings read by :func:`xraypose.xray.read_image_xray`.
IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".npy")

F64 = torch.float64


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
        kind: "intensity", "log-intensity" or "attenuation" (see :mod:`xraypose.xray`).
        header: ``{name: {"value": v, "from": where}}`` for every value used
            (``from`` names the DICOM keyword and tag, or "user", "sidecar
            JSON", "derived: ...", "default").
        notes: one-line remarks (assumptions made, values ignored).
        angles: ``{"primary", "secondary", "sod", "roll180"}`` (degrees, mm)
            when known — :meth:`initial_pose` turns them into a pose.
        pixel_map: file pixel (u, v) → pixel of :attr:`image`.
        steps: preprocessing steps done so far.
        mask: ``(H, W)`` float32 pixel weights of :attr:`image` in [0, 1] from preprocessing (0 at a
            saturated plateau or a collimator's shadow; see :func:`xraypose.preprocess.preprocess`),
            or None: every pixel counts.  Give it to registration (``masks=``).
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
    mask: torch.Tensor | None = None
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
        if self.camera is not None:  # angles changed after reading (a start's --angles/--sod) are checked here
            check_sod(a["sod"], self.camera.sdd, what=self.source or "X-ray")
        T = pose_from_carm_angles(a["primary"], a["secondary"], sod=a["sod"], isocenter=isocenter,
                                  roll180=bool(a.get("roll180")))
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
        A problem with the pixels (all zeros, constant, NaN) names :attr:`source`, the file (a frame of a
        multi-frame file as ``FILE#i``): in a sequence it says which frame.
        """
        kwargs.setdefault("log", self.kind)
        try:
            res: Preprocessed = preprocess(self.image, self.camera, **kwargs)
        except InputError as e:
            if not self.source or self.source in str(e):
                raise
            raise InputError(f"{self.source}: {e}") from None
        steps = [dict(s) for s in res.steps]
        if not torch.equal(res.pose_transform, torch.eye(4, dtype=F64)):
            steps.append({"step": "pose_transform", "pose_transform": res.pose_transform.tolist()})
        pose = None if self.pose is None else res.transform_pose(self.pose)
        mask = res.mask
        if self.mask is not None:  # an earlier preprocessing's mask: it follows no new geometry
            if tuple(self.mask.shape) != tuple(res.image.shape) or not res.pixel_map.is_identity():
                raise InputError("this X-ray was preprocessed with a mask already; preprocess the original once, "
                                 "with every step, instead of twice")
            mask = self.mask if mask is None else self.mask * mask
        return replace(
            self, image=res.image, camera=res.camera, pose=pose,
            kind="attenuation" if kwargs.get("log") not in (False, None, "attenuation") else self.kind,
            pixel_map=self.pixel_map.then(res.pixel_map), steps=self.steps + steps,
            header=dict(self.header), notes=list(self.notes), mask=mask,
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
            lines.append(f"  {k:<28} = {format_value(v['value']):<30} from {v['from']}")
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


def format_value(v) -> str:
    """A header value as the report shows it (floats to 6 significant digits)."""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    return str(v)


#: How the notes begin that say part of the file's image was not used (one frame of several, an alpha channel):
#: the command line prints these (:func:`notes_to_show`), the others stay in pose.json's record.
IGNORED_IMAGE_NOTES = ("multi-frame image", "alpha channel ignored")


def notes_to_show(notes) -> list:
    """The ``notes`` (``XRay.notes``) a user must see where they look, not only in pose.json:
    :data:`IGNORED_IMAGE_NOTES`."""
    return [n for n in notes if n.startswith(IGNORED_IMAGE_NOTES)]


class Provenance:
    """Collects the values used and where each came from (``XRay.header`` and ``XRay.notes``)."""

    def __init__(self) -> None:
        self.values: dict = {}
        self.notes: list = []

    def set(self, name: str, value, where: str):
        self.values[name] = {"value": value, "from": where}
        return value

    def note(self, text: str) -> None:
        self.notes.append(text)
