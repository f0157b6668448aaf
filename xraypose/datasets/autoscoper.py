"""The Autoscoper wrist trial: real biplane radiographs, MayaCam calibrations, CT bone volumes.

Layout (../shared/data/autoscoper_wrist, see its README.md)::

    calibration/xr_calib_wrist_cam01.txt, …cam02.txt      MayaCam 2.0 (xraypose.calibration)
    radiographs/cam01/xr_rad_uln_cam01_UND.0002.tif, …    8-bit display images, 1760 × 1760
    volumes/rad_dcm_cropped.tif, uln_…, mc3_…, mc2_mc3_…  16-bit TIFF stacks, 0.39625 × 0.39625 × 0.625 mm

What :class:`AutoscoperWrist` gives, per frame and camera (:meth:`AutoscoperWrist.view`):

* ``image``: the radiograph made line-integral-like — the display images show bone
  dark on a bright field; ``transfer="log"`` (default) takes the display value I
  for an intensity, ``L = log(I0 + 1) − log(I + 1)`` with I0 = 255 (the
  unattenuated, saturated level); ``transfer="linear"`` takes it for a log
  image already, ``L = I0 − I``.  Which is closer to the system's response is not
  known (display images; no flat field); both are monotone, bone bright.  Then
  rescaled to [0, 1] inside the field, 0 outside.
* ``mask``: the image intensifier's circular field, found from the camera's
  frames (the circle through the edges of the bright field, least squares) and
  shrunk by ``margin_px`` (its darkened rim).  Outside it the image is set to 0
  (no attenuation) rather than cropped: the circle fills the square image, so a
  crop would remove nothing, and the camera stays the calibration's.  Pass
  ``mask`` to a similarity that takes one.
* ``camera`` and ``camera_to_world``: the calibration, read with
  :func:`xraypose.calibration.read_mayacam_camera` (world = the calibration
  object's frame, mm).  The volumes' place in that frame is unknown: that is
  what registration finds.

The bone volumes (:meth:`AutoscoperWrist.volume`) hold 0 outside the bone and
0…4095 inside (not HU): render them with ``density="raw"`` (the voxel values,
linear), never with the HU models ("linear" would give the zeros outside the
bone the density of water and draw the crop box).

There is no ground truth pose in this data (README).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from xraypose._kernels import max_filter
from xraypose.camera import Camera, CameraPose
from xraypose.errors import InputError
from xraypose.preprocess import PixelMap

__all__ = ["AutoscoperWrist", "WristView", "field_of_view", "FieldCircle", "WRIST_VOXEL_MM", "WRIST_BONES",
           "default_wrist_root", "FIELD_MARGIN_PX", "FIELD_THRESHOLD", "TRANSFERS"]

#: Voxel size of the wrist volumes (columns, rows, pages), mm — Autoscoper's wrist trial configuration.
WRIST_VOXEL_MM: tuple = (0.39625, 0.39625, 0.625)
#: Bone volumes: file prefix → name.
WRIST_BONES: dict = {"rad": "radius", "uln": "ulna", "mc3": "third metacarpal",
                     "mc2_mc3": "second and third metacarpals"}
#: The image intensifier's darkened rim left out of the mask, pixels of the full-size image (the field
#: darkens over its last ~40 px on the wrist radiographs).
FIELD_MARGIN_PX: float = 40.0
#: Pixels brighter than this (of 255) in some frame are the image intensifier's field.
FIELD_THRESHOLD: float = 20.0
#: Display value → line integral: "log" (value = intensity) or "linear" (value = log intensity).
TRANSFERS: tuple = ("log", "linear")
_CAMERAS = ("cam01", "cam02")


def default_wrist_root() -> Path:
    """``$XRAYPOSE_AUTOSCOPER_WRIST``, else ``../shared/data/autoscoper_wrist`` beside the repository."""
    env = os.environ.get("XRAYPOSE_AUTOSCOPER_WRIST")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "autoscoper_wrist"


# --------------------------------------------------------------------------
# The circular field of an image intensifier
# --------------------------------------------------------------------------


def _fit_circle(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares circle (algebraic fit): centre (cx, cy), radius."""
    A = np.c_[x, y, np.ones_like(x)]
    b = -(x * x + y * y)
    (D, E, F), *_ = np.linalg.lstsq(A, b, rcond=None)
    cx, cy = -D / 2, -E / 2
    return float(cx), float(cy), float(math.sqrt(max(cx * cx + cy * cy - F, 0.0)))


class FieldCircle(NamedTuple):
    """The circular field of an image-intensifier image, in pixels (:func:`field_of_view`)."""

    cu: float  #: centre column
    cv: float  #: centre row
    radius: float


def field_of_view(image, threshold: float = 20.0) -> FieldCircle:
    """The circular field of an image-intensifier image: (cu, cv, radius) in pixels.

    The field's edge points are, on every row and column, the first and last
    pixel brighter than ``threshold`` (points on the image border are not the
    circle's and are left out); a circle is fitted to them by least squares,
    twice dropping points more than 3 px off.  Dark structures inside the field
    (bones, lead letters) do not move the extreme points.

    Raises:
        InputError: fewer than 20 edge points (no circular field).
    """
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2:
        raise InputError(f"field_of_view needs one (H, W) image, got shape {a.shape}")
    H, W = a.shape
    bright = a > threshold
    xs, ys = [], []
    for axis in (1, 0):  # rows, then columns
        m = bright if axis == 1 else bright.T
        n = m.shape[1]
        has = m.any(axis=1)
        idx = np.nonzero(has)[0]
        first = m[has].argmax(axis=1)
        last = n - 1 - m[has][:, ::-1].argmax(axis=1)
        for edge, keep in ((first - 0.5, first > 0), (last + 0.5, last < n - 1)):
            along, across = edge[keep], idx[keep]  # position along the line, index of the line
            xs.append(along if axis == 1 else across)
            ys.append(across if axis == 1 else along)
    x = np.concatenate(xs).astype(np.float64)
    y = np.concatenate(ys).astype(np.float64)
    if len(x) < 20:
        raise InputError(f"no circular field found (only {len(x)} edge points brighter than {threshold:g})")
    cx, cy, r = _fit_circle(x, y)
    for _ in range(2):
        keep = np.abs(np.hypot(x - cx, y - cy) - r) < 3.0
        if keep.sum() < 20:
            break
        x, y = x[keep], y[keep]
        cx, cy, r = _fit_circle(x, y)
    return FieldCircle(cx, cy, r)


def _circle_mask(H: int, W: int, cu: float, cv: float, r: float) -> torch.Tensor:
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    return (u - cu) ** 2 + (v - cv) ** 2 <= r * r


# --------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------


@dataclass
class WristView:
    """One radiograph of the wrist trial, ready for registration.

    Attributes:
        image: (H, W) float32 in [0, 1], line-integral-like (bone bright), 0 outside the field.
        mask: (H, W) bool, the image intensifier's field (shrunk by the margin; :meth:`AutoscoperWrist.field_mask`).
        camera: intrinsics of ``image`` (resized with it when ``size`` was asked).
        camera_to_world: (4, 4) float64, the calibration's (world = calibration frame, mm).
        frame, camera_name: e.g. "0002", "cam01".
        source: the radiograph's path.
        field: (cu, cv, radius) of the (unshrunk) field in ``image``'s pixels.
        pixel_map: file pixel → ``image`` pixel.
    """

    image: torch.Tensor
    mask: torch.Tensor
    camera: Camera
    camera_to_world: torch.Tensor
    frame: str
    camera_name: str
    source: str
    field: tuple
    pixel_map: PixelMap


_FRAME_RE = re.compile(r"^xr_rad_uln_(?P<cam>cam\d+)_UND\.(?P<frame>\d+)\.tif$", re.I)


class AutoscoperWrist:
    """The wrist trial: ``len(ds)`` frames; ``ds[i]`` = {camera name: :class:`WristView`}.

    Args:
        root: the ``autoscoper_wrist`` folder (default :func:`default_wrist_root`).
        pixel_mm: nominal detector pixel spacing for the cameras (only sdd depends on it).
        transfer: "log" or "linear" (module docstring).
        margin_px: the field's rim left out of the mask (pixels of the full-size image).
        size: resize the images (and cameras, masks) to ``size`` or ``(H, W)`` pixels.
    """

    def __init__(self, root=None, *, pixel_mm: float | None = None, transfer: str = "log",
                 margin_px: float = FIELD_MARGIN_PX, size: int | tuple | None = None) -> None:
        from xraypose.calibration import NOMINAL_PIXEL_MM

        self.root = Path(root).expanduser() if root is not None else default_wrist_root()
        if not self.root.is_dir():
            raise InputError(f"Autoscoper wrist data not found at {self.root} (pass root= or set "
                             "XRAYPOSE_AUTOSCOPER_WRIST)")
        if transfer not in TRANSFERS:
            raise InputError(f"transfer must be one of {', '.join(TRANSFERS)}, got {transfer!r}")
        if not (isinstance(margin_px, (int, float)) and math.isfinite(margin_px) and margin_px >= 0):
            raise InputError(f"margin_px must be a finite number >= 0, got {margin_px!r}")
        self.pixel_mm = NOMINAL_PIXEL_MM if pixel_mm is None else pixel_mm
        self.transfer = transfer
        self.margin_px = float(margin_px)
        self.size = size
        self.cameras = _CAMERAS
        files: dict = {}
        for cam in self.cameras:
            d = self.root / "radiographs" / cam
            if not d.is_dir():
                raise InputError(f"{self.root}: no radiographs/{cam} folder")
            for p in d.iterdir():
                m = _FRAME_RE.match(p.name)
                if m and m["cam"].lower() == cam:
                    files.setdefault(m["frame"], {})[cam] = p
        from xraypose.sequence import natural_key

        frames = sorted(files, key=natural_key)
        for f in frames:
            missing = [c for c in self.cameras if c not in files[f]]
            if missing:
                raise InputError(f"{self.root}: frame {f} has no radiograph from {missing[0]}")
        if not frames:
            raise InputError(f"{self.root}: no radiographs found (radiographs/camNN/xr_rad_uln_camNN_UND.NNNN.tif)")
        self.frames = tuple(frames)
        self._files = files
        self._fields: dict = {}

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict:
        return {c: self.view(self.frames[i], c) for c in self.cameras}

    # ------------------------------------------------------------- geometry
    def calibration_file(self, cam: str) -> Path:
        return self.root / "calibration" / f"xr_calib_wrist_{self._cam(cam)}.txt"

    def camera(self, cam: str) -> CameraPose:
        """(Camera of the full-size radiograph, camera_to_world) from the calibration."""
        camera, pose = _read_cal(str(self.calibration_file(cam)), float(self.pixel_mm))
        return CameraPose(camera, pose.clone())

    def rig(self):
        """The biplane rig (:class:`xraypose.rig.Rig`): views "cam01", "cam02", rig frame = the calibration's."""
        from xraypose.rig import rig_from_mayacam

        return rig_from_mayacam({c: self.calibration_file(c) for c in self.cameras}, self.pixel_mm)

    def field(self, cam: str) -> FieldCircle:
        """(cu, cv, radius) of the camera's circular field, full-size pixels (from all its frames)."""
        cam = self._cam(cam)
        if cam not in self._fields:
            brightest = np.max([self._raw(f, cam) for f in self.frames], axis=0)
            self._fields[cam] = (field_of_view(brightest, FIELD_THRESHOLD), brightest > FIELD_THRESHOLD)
        return self._fields[cam][0]

    def field_mask(self, cam: str) -> torch.Tensor:
        """(H, W) bool, full size: inside the field circle shrunk by ``margin_px``, and not within
        ``margin_px / 3`` pixels of a pixel that is dark in every frame (the camera's own dark border
        strips where the circle leaves the image)."""
        cu, cv, r = self.field(cam)
        key = ("mask", self._cam(cam))
        if key not in self._fields:
            lit = torch.from_numpy(self._fields[cam][1])
            H, W = lit.shape
            k = max(int(round(self.margin_px / 3)), 0)
            if k:  # grow the never-lit pixels by k
                lit = lit & ~(max_filter((~lit).float(), k) > 0)
            self._fields[key] = _circle_mask(H, W, cu, cv, max(r - self.margin_px, 1.0)) & lit
        return self._fields[key].clone()

    # ------------------------------------------------------------- images
    def _cam(self, cam: str) -> str:
        if cam not in self.cameras:
            raise InputError(f"unknown camera {cam!r}; the wrist trial has {', '.join(self.cameras)}")
        return cam

    def _raw(self, frame: str, cam: str) -> np.ndarray:
        from PIL import Image

        if frame not in self._files:
            raise InputError(f"unknown frame {frame!r}; the wrist trial has frames {', '.join(self.frames)}")
        p = self._files[frame][self._cam(cam)]
        with Image.open(p) as im:
            a = np.asarray(im)
        if a.ndim != 2 or a.dtype != np.uint8:
            raise InputError(f"{p}: expected an 8-bit greyscale radiograph, got {a.dtype} of shape {a.shape}")
        return a

    def view(self, frame: str, cam: str) -> WristView:
        """One preprocessed radiograph (module docstring)."""
        from xraypose.preprocess import resize

        raw = self._raw(frame, cam).astype(np.float64)
        camera, pose = self.camera(cam)
        cu, cv, r = self.field(cam)
        H, W = raw.shape
        if (H, W) != (camera.height, camera.width):
            raise InputError(f"{self._files[frame][cam]}: {H} × {W} pixels but the calibration says "
                             f"{camera.height} × {camera.width}")
        i0 = 255.0
        L = np.log(i0 + 1.0) - np.log(raw + 1.0) if self.transfer == "log" else i0 - raw
        inside = self.field_mask(cam).numpy()
        lo, hi = float(L[inside].min()), float(L[inside].max())
        img = np.where(inside, (L - lo) / max(hi - lo, 1e-12), 0.0)
        image = torch.from_numpy(img.astype(np.float32))
        mask = torch.from_numpy(inside)
        pmap = PixelMap()
        field = (cu, cv, r)
        if self.size is not None:
            h, w = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
            image, cam_out, pmap = resize(image, camera, h, w)
            mask = resize(mask.float(), None, h, w)[0] > 0.5
            image = image * mask
            camera = cam_out
            field = (cu * pmap.su + pmap.bu, cv * pmap.sv + pmap.bv, r * pmap.su)
        return WristView(image=image.to(torch.float32), mask=mask, camera=camera, camera_to_world=pose, frame=frame,
                         camera_name=cam, source=str(self._files[frame][cam]), field=field, pixel_map=pmap)

    # ------------------------------------------------------------- volumes
    def volume(self, bone: str = "rad", origin="center"):
        """A bone's CT volume (:func:`xraypose.tiff_stack.read_tiff_volume`, voxel size :data:`WRIST_VOXEL_MM`).

        Args:
            bone: "rad", "uln", "mc3" or "mc2_mc3" (:data:`WRIST_BONES`).
            origin: "center" (default here: the bone box's centre at the world origin, so poses
                found are about the bone) or (x, y, z) mm of voxel (0, 0, 0).
        Returns:
            Volume of stored values 0…4095 (render with ``density="raw"``).
        """
        from xraypose.tiff_stack import read_tiff_volume

        if bone not in WRIST_BONES:
            raise InputError(f"unknown bone {bone!r}; choose one of {', '.join(WRIST_BONES)}")
        v = read_tiff_volume(self.root / "volumes" / f"{bone}_dcm_cropped.tif", WRIST_VOXEL_MM, origin=origin)
        v.source = f"{v.source} ({WRIST_BONES[bone]})"
        return v


@lru_cache(maxsize=8)
def _read_cal(path: str, pixel_mm: float):
    from xraypose.calibration import read_mayacam_camera

    return read_mayacam_camera(path, pixel_mm)
