"""X-ray preprocessing: crops, flips, resizing, blur, Beer–Lambert inversion, normalisation.

Every geometric step keeps the image, its :class:`~xraypose.camera.Camera`
and its pose consistent, and is recorded as a :class:`PixelMap` (how pixel
coordinates of the input map to pixel coordinates of the output), so 2D
landmarks can follow the image through any chain of steps.

Every intensity step is optional and written to the ``steps`` record of the
result, with the numbers it used (I0, background value, ...).

The DiffPose/DeepFluoro pipeline is::

    preprocess(img, cam, crop=50, blur=(5, 1.0), log=True, i0=65487, rescale=True)

i.e. remove a 50-pixel collimator border, 5×5 Gaussian blur (σ = 1 px),
line integrals ``L = log I0 − log I`` and rescale to [0, 1].

Conventions (docs/conventions.md): pixels (u, v) = (column, row) with
centres at integers; images are ``(H, W)`` = (rows, columns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from xraypose._arrays import as_image, as_real_tensor, image_batch
from xraypose._checks import check_flag, check_instance, check_number, config_error
from xraypose._kernels import gaussian_kernel1d
from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.field import (FIELD_PENUMBRA_MAX_FRACTION, FIELD_SHADOW_MIN_FRACTION, MIN_FIELD_FRACTION,
                            CollimatorEdges, check_field, collimator_edges, field_penumbra, field_shadow,
                            flat_at_maximum, saturation_mask)
from xraypose.photons import LOG_MIN_PHOTONS, check_photon_offset, detected_photons, photons_to_add
from xraypose.geometry.frames import ROLL_180

__all__ = [
    "PixelMap",
    "Preprocessed",
    "as_image",
    "image_batch",
    "CollimatorEdges",
    "crop",
    "crop_edges",
    "center_crop",
    "resize",
    "GeometryPlan",
    "plan_geometry",
    "rotate180",
    "flip_columns",
    "flip_rows",
    "ROT180",
    "gaussian_blur",
    "beer_lambert",
    "subtract_background",
    "rescale01",
    "preprocess",
    "detected_photons",
    "ncc",
    "collimator_edges",
    "flat_at_maximum",
    "saturation_mask",
    "MIN_FIELD_FRACTION",
    "FIELD_SHADOW_MIN_FRACTION",
    "field_shadow",
    # re-exported from where they live now (xraypose._arrays, xraypose.field, xraypose.photons), imported from here
    "as_real_tensor",
    "field_penumbra",
    "FIELD_PENUMBRA_MAX_FRACTION",
    "LOG_MIN_PHOTONS",
]

#: Right-multiply a camera_to_world pose by this to turn the camera 180° about
#: its principal axis (what a 180° rotation of the image does to the pose):
#: :data:`xraypose.geometry.ROLL_180` (the same tensor; do not change it in place).
ROT180 = ROLL_180


# --------------------------------------------------------------------------
# Pixel coordinate bookkeeping
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelMap:
    """An axis-aligned affine map of pixel coordinates: ``u' = su·u + bu``, ``v' = sv·v + bv``.

    Crops, 180° rotations, flips and resizes are all of this form, so any
    chain of them is one :class:`PixelMap` (compose with :meth:`then`).
    """

    su: float = 1.0
    bu: float = 0.0
    sv: float = 1.0
    bv: float = 0.0

    def then(self, other: "PixelMap") -> "PixelMap":
        """The map that applies ``self`` first, then ``other``."""
        return PixelMap(
            su=other.su * self.su, bu=other.su * self.bu + other.bu,
            sv=other.sv * self.sv, bv=other.sv * self.bv + other.bv,
        )

    def inverse(self) -> "PixelMap":
        return PixelMap(su=1.0 / self.su, bu=-self.bu / self.su, sv=1.0 / self.sv, bv=-self.bv / self.sv)

    def apply(self, uv):
        """Map ``(..., 2)`` pixel coordinates (u, v); returns the same type (tensor or array)."""
        if isinstance(uv, torch.Tensor):
            scale = torch.tensor([self.su, self.sv], dtype=uv.dtype, device=uv.device)
            shift = torch.tensor([self.bu, self.bv], dtype=uv.dtype, device=uv.device)
            return uv * scale + shift
        a = np.asarray(uv, dtype=np.float64)
        return a * np.array([self.su, self.sv]) + np.array([self.bu, self.bv])

    @property
    def is_identity(self) -> bool:
        return self == PixelMap()

    def to_dict(self) -> dict:
        return {"su": self.su, "bu": self.bu, "sv": self.sv, "bv": self.bv}


@dataclass
class Preprocessed:
    """Result of :func:`preprocess`.

    Attributes:
        image: ``(H, W)`` float32 tensor.
        camera: the camera of ``image`` (None when none was given).
        pixel_map: input pixel (u, v) → output pixel (u', v').
        pose_transform: ``(4, 4)`` float64; the pose of ``image`` is
            ``pose_of_input @ pose_transform`` (the identity unless the image
            was rotated by 180° or its rows flipped).
        steps: what was done, in order, each a dict with ``"step"`` and its numbers.
        mask: ``(H, W)`` float32 pixel weights in [0, 1] — 0 where the X-ray cannot be trusted
            (a saturated plateau, a collimator's shadow: see :func:`preprocess`), fractional where a resize averaged
            both — or None when every pixel can (give it to registration: ``masks=``).
    """

    image: torch.Tensor
    camera: Camera | None
    pixel_map: PixelMap = field(default_factory=PixelMap)
    pose_transform: torch.Tensor = field(default_factory=lambda: torch.eye(4, dtype=torch.float64))
    steps: list = field(default_factory=list)
    mask: torch.Tensor | None = None

    def transform_pose(self, pose: torch.Tensor) -> torch.Tensor:
        """The pose of :attr:`image` given the pose of the input image."""
        pose = torch.as_tensor(pose)
        return pose @ self.pose_transform.to(pose.dtype)


def check_not_channels_last(image: torch.Tensor, camera: Camera, what: str = "image") -> None:
    """Refuse an (H, W, 1) or (B, H, W, 1) image (an image library's layout) for a detector wider than one
    pixel, and an (H, W, 3) or (H, W, 4) colour one (RGB, RGBA) of the detector's size: read as (B, H, W) or
    (B, 1, H, W) it is H×1 (H×3) pixels, and the size error said only that."""
    if image.dim() in (3, 4) and image.shape[-1] == 1 and camera.width != 1:
        layout = "(H, W, 1)" if image.dim() == 3 else "(B, H, W, 1)"
        raise InputError(f"{what} of shape {tuple(image.shape)} looks channels-last {layout}: pass (H, W) or "
                         "(B, 1, H, W), e.g. image[..., 0]")
    c = image.shape[-1] if image.dim() in (3, 4) else 0  # an RGB(A) image: 'X-ray is H×3 pixels' said only that
    if c in (3, 4) and tuple(image.shape[-3:-1]) == (camera.height, camera.width) and camera.width != c:
        layout = ("(H, W, " if image.dim() == 3 else "(B, H, W, ") + ("3)" if c == 3 else "4)")
        raise InputError(f"{what} of shape {tuple(image.shape)} looks like a colour image {layout}: pass one grey "
                         "channel (H, W) or (B, 1, H, W), e.g. image[..., 0]")


def _check_camera(image: torch.Tensor, camera: Camera | None, what: str = "X-ray") -> None:
    if camera is None:
        return
    check_instance("camera", camera, Camera, " or None")
    H, W = image.shape[-2:]
    if (camera.height, camera.width) != (H, W):
        raise InputError(
            f"{what} image is {H}×{W} pixels but its intrinsics describe a "
            f"{camera.height}×{camera.width} detector (sizes differ)"
        )


# --------------------------------------------------------------------------
# Geometric steps.  Each is computed twice over from the same code: on the
# geometry alone (sizes, camera, PixelMap, pose transform: ``_g_*``) and on
# the pixels (``_apply_op``), so plans and images never disagree.
# --------------------------------------------------------------------------


def _int_pixels(name: str, v) -> int:
    if isinstance(v, bool) or int(v) != v:
        raise InputError(f"{name} must be a whole number of pixels, got {v!r}")
    return int(v)


def _g_crop(H, W, cam, top, left, height, width):
    top, left = _int_pixels("crop top", top), _int_pixels("crop left", left)
    height, width = _int_pixels("crop height", height), _int_pixels("crop width", width)
    if height < 1 or width < 1:
        raise InputError(f"crop of {height}×{width} pixels is empty")
    if top < 0 or left < 0 or top + height > H or left + width > W:
        raise InputError(f"crop rows {top}:{top + height}, cols {left}:{left + width} exceeds the {H}×{W} image")
    cam = None if cam is None else cam.crop(top, left, height, width)
    return ("crop", top, left, height, width), height, width, cam, PixelMap(bu=-float(left), bv=-float(top)), None


def _g_rot180(H, W, cam):
    cam = None if cam is None else replace(cam, x0=-cam.x0, y0=-cam.y0)
    return ("rot180",), H, W, cam, PixelMap(su=-1.0, bu=W - 1.0, sv=-1.0, bv=H - 1.0), ROT180.clone()


def _g_flipc(H, W, cam):
    cam = None if cam is None else replace(cam, reverse_x_axis=not cam.reverse_x_axis)
    return ("flip_columns",), H, W, cam, PixelMap(su=-1.0, bu=W - 1.0), None


def _g_resize(H, W, cam, height, width):
    height, width = _int_pixels("resize height", height), _int_pixels("resize width", width)
    if height < 1 or width < 1:
        raise InputError(f"cannot resize the image to {height}×{width} pixels")
    cam = None if cam is None else cam.resize(height, width)
    su, sv = width / W, height / H
    return ("resize", height, width), height, width, cam, PixelMap(su=su, bu=0.5 * su - 0.5, sv=sv, bv=0.5 * sv - 0.5), None


def _edges(edges):
    if isinstance(edges, (int, np.integer)) or (isinstance(edges, float) and float(edges).is_integer()):
        t = b = l = r = int(edges)
    else:
        try:
            t, b, l, r = (int(e) for e in edges)
        except (TypeError, ValueError):
            raise InputError(f"crop must be a number of pixels or (top, bottom, left, right), got {edges!r}") from None
    if min(t, b, l, r) < 0:
        raise InputError(f"crop border must be >= 0 pixels, got {edges!r}")
    return t, b, l, r


def _g_crop_edges(H, W, cam, edges):
    t, b, l, r = _edges(edges)
    if t + b >= H or l + r >= W:
        raise InputError(f"crop border {edges!r} removes the whole {H}×{W} image")
    return _g_crop(H, W, cam, t, l, H - t - b, W - l - r)


def _hw(size, what: str):
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        return int(size), int(size)
    try:
        h, w = size
        return _int_pixels(f"{what} height", h), _int_pixels(f"{what} width", w)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number of pixels or (height, width), got {size!r}") from None


def _g_center_crop(H, W, cam, size):
    h, w = _hw(size, "centre crop")
    if h > H or w > W or h < 1 or w < 1:
        raise InputError(f"centre crop of {h}×{w} pixels does not fit the {H}×{W} image")
    return _g_crop(H, W, cam, int(round((H - h) / 2.0)), int(round((W - w) / 2.0)), h, w)


def _apply_op(img: torch.Tensor, op: tuple) -> torch.Tensor:
    kind = op[0]
    if kind == "crop":
        _, t, l, h, w = op
        return img[t : t + h, l : l + w]
    if kind == "rot180":
        return torch.flip(img, dims=(0, 1))
    if kind == "flip_columns":
        return torch.flip(img, dims=(1,))
    if kind == "resize":
        _, h, w = op
        H, W = img.shape
        if (h, w) == (H, W):
            return img
        work = img.to(torch.float64 if img.dtype == torch.float64 else torch.float32)[None, None]
        return F.interpolate(work, size=(h, w), mode="bilinear", align_corners=False,
                             antialias=(h < H or w < W))[0, 0]
    raise AssertionError(op)


def _bin_intensities(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(h, w) from an (H, W) image of raw intensities (h ≤ H, w ≤ W), each output pixel the mean of the
    input pixels it covers (area weights; whole bins for whole factors): what a detector with larger
    pixels would have counted."""
    out = F.interpolate(img.to(torch.float64)[None, None], size=(h, w), mode="area")[0, 0]
    return out.to(img.dtype if img.is_floating_point() else torch.float32)


@dataclass
class GeometryPlan:
    """The geometric part of a preprocessing: what happens to sizes, camera and pixels.

    Attributes:
        ops: pixel operations in order (applied by :meth:`apply`).
        shape: (H, W) of the result.
        camera: camera of the result (None if none was given).
        pixel_map: input pixel → output pixel.
        pose_transform: output pose = input pose @ pose_transform.
        steps: records of the steps.
    """

    ops: list
    shape: tuple
    camera: Camera | None
    pixel_map: PixelMap
    pose_transform: torch.Tensor
    steps: list

    def apply(self, image) -> torch.Tensor:
        img = as_image(image)
        for op in self.ops:
            img = _apply_op(img, op)
        return img


def _plan(H, W, cam, items) -> GeometryPlan:
    ops, steps = [], []
    pmap, T = PixelMap(), torch.eye(4, dtype=torch.float64)
    for fn, args, record in items:
        op, H2, W2, cam, m, R = fn(H, W, cam, *args)
        ops.append(op)
        pmap = pmap.then(m)
        if R is not None:
            T = T @ R
        if record is not None:
            steps.append({**record, "from": (H, W), "to": (H2, W2)} if op[0] in ("crop", "resize") else record)
        H, W = H2, W2
    return GeometryPlan(ops=ops, shape=(H, W), camera=cam, pixel_map=pmap, pose_transform=T, steps=steps)


def plan_geometry(
    height: int,
    width: int,
    camera: Camera | None = None,
    *,
    rotate_180: bool = False,
    flip: str | None = None,
    crop=None,
    center_crop=None,
    size=None,
) -> GeometryPlan:
    """The geometry of :func:`preprocess` without touching pixels (same arguments, same order)."""
    H, W = _int_pixels("image height", height), _int_pixels("image width", width)
    check_flag("rotate_180", rotate_180, prefix="")
    if camera is not None and (camera.height, camera.width) != (H, W):
        raise InputError(
            f"X-ray image is {H}×{W} pixels but its intrinsics describe a "
            f"{camera.height}×{camera.width} detector (sizes differ)"
        )
    items = []
    if rotate_180:
        items.append((_g_rot180, (), {"step": "rotate_180"}))
    if flip is not None:
        if flip == "both":
            items.append((_g_rot180, (), {"step": "flip", "which": "both"}))
        elif flip == "columns":
            items.append((_g_flipc, (), {"step": "flip", "which": "columns"}))
        elif flip == "rows":
            items.append((_g_rot180, (), None))
            items.append((_g_flipc, (), {"step": "flip", "which": "rows"}))
        else:
            raise InputError(f"flip must be 'columns', 'rows' or 'both', got {flip!r}")
    if crop is not None and center_crop is not None:
        raise InputError("give crop (a border) or center_crop (a size), not both")
    if crop is not None:
        items.append((_g_crop_edges, (crop,), {"step": "crop", "border": crop}))
    if center_crop is not None:
        items.append((_g_center_crop, (center_crop,), {"step": "center_crop", "size": center_crop}))
    if size is not None:
        h, w = _hw(size, "size")
        items.append((_g_resize, (h, w), {"step": "resize"}))
    return _plan(H, W, camera, items)


def _single(image, camera, fn, *args):
    img = as_image(image)
    _check_camera(img, camera)
    H, W = img.shape
    plan = _plan(H, W, camera, [(fn, args, None)])
    return plan.apply(img), plan.camera, plan.pixel_map, plan.pose_transform


def crop(image, camera: Camera | None, top: int, left: int, height: int, width: int):
    """``image[top:top+height, left:left+width]`` and the camera of that sub-image.

    Returns (image, camera, PixelMap).
    """
    return _single(image, camera, _g_crop, top, left, height, width)[:3]


def crop_edges(image, camera: Camera | None, edges):
    """Remove a border: ``edges`` = n (every side) or (top, bottom, left, right) pixels."""
    return _single(image, camera, _g_crop_edges, edges)[:3]


def center_crop(image, camera: Camera | None, size):
    """Central ``size`` = h or (h, w) pixels; the offset is ``round((H − h) / 2)`` (torchvision's rule)."""
    return _single(image, camera, _g_center_crop, size)[:3]


def resize(image, camera: Camera | None, height: int, width: int | None = None):
    """Resample to ``height × width`` pixels covering the same detector.

    Bilinear with antialiasing when shrinking; pixel (u, v) goes to
    ``((u + 0.5)·W'/W − 0.5, (v + 0.5)·H'/H − 0.5)``, exactly how
    :meth:`Camera.resize` moves the intrinsics.  Returns (image, camera, PixelMap).
    """
    return _single(image, camera, _g_resize, height, height if width is None else width)[:3]


def rotate180(image, camera: Camera | None):
    """Rotate the image by 180° (u → W−1−u, v → H−1−v).

    The camera keeps its intrinsics up to the principal point, which moves to
    the rotated place (x0 → −x0, y0 → −y0); the pose becomes
    ``pose @ ROT180`` (the C-arm turned 180° about its principal axis).
    Returns (image, camera, PixelMap, pose_transform).
    """
    return _single(image, camera, _g_rot180)


def flip_columns(image, camera: Camera | None):
    """Mirror the columns (u → W−1−u); the camera's ``reverse_x_axis`` toggles, the pose stays.

    Returns (image, camera, PixelMap).
    """
    return _single(image, camera, _g_flipc)[:3]


def flip_rows(image, camera: Camera | None):
    """Mirror the rows (v → H−1−v).

    A camera cannot mirror rows by itself, so this is a 180° rotation and a
    column mirror: the camera's x0, y0 change sign, ``reverse_x_axis``
    toggles, and the pose becomes ``pose @ ROT180``.
    Returns (image, camera, PixelMap, pose_transform).
    """
    img = as_image(image)
    _check_camera(img, camera)
    H, W = img.shape
    plan = _plan(H, W, camera, [(_g_rot180, (), None), (_g_flipc, (), None)])
    return plan.apply(img), plan.camera, plan.pixel_map, plan.pose_transform


# --------------------------------------------------------------------------
# Intensity steps
# --------------------------------------------------------------------------


def gaussian_blur(image, kernel_size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """Separable Gaussian blur with reflected borders (as torchvision's ``gaussian_blur``)."""
    img = as_image(image)
    k = int(kernel_size)
    if k < 1 or k % 2 == 0:
        raise InputError(f"blur kernel size must be an odd number of pixels, got {kernel_size!r}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise InputError(f"blur sigma must be > 0 pixels, got {sigma!r}")
    if k == 1:
        return img.clone()
    dtype = img.dtype
    g = gaussian_kernel1d(sigma, k // 2, torch.float64).to(dtype)
    pad = k // 2
    H, W = img.shape
    mode = "reflect" if (H > pad and W > pad) else "replicate"
    work = F.pad(img[None, None], (pad, pad, pad, pad), mode=mode)
    work = F.conv2d(work, g.reshape(1, 1, 1, k))
    work = F.conv2d(work, g.reshape(1, 1, k, 1))
    return work[0, 0]


def beer_lambert(image, i0: float | None = None, offset: float = 0.0):
    """Line integrals from raw intensities: ``L = log I0 − log(I + offset)``.

    Args:
        image: raw detector intensities (bright = more photons, bone dark).
        i0: unattenuated intensity; default the image maximum (after ``offset``).
        offset: added to every pixel first (Ljubljana's loaders add 1).
    Returns:
        (L, info) with info = {"i0": ..., "offset": ..., "clamped_pixels": n}.
        Pixels that are still <= 0 are clamped to the smallest positive pixel
        (their count is reported); an image with no positive pixel raises.
    """
    img = as_image(image).to(torch.float64)
    if not bool(torch.isfinite(img).all()):
        n = int((~torch.isfinite(img)).sum())
        raise InputError(f"X-ray has {n} NaN or infinite pixels; cannot take its log")
    img = img + float(offset)
    pos = img > 0
    if not bool(pos.any()):
        if float(img.abs().max()) == 0.0:
            raise InputError("X-ray image is all zeros: the log of the intensity is undefined (nothing to invert)")
        raise InputError("X-ray image has no positive pixel: the log of the intensity is undefined")
    n_bad = int((~pos).sum())
    if n_bad:
        img = torch.where(pos, img, img[pos].min())
    top = float(img.max()) if i0 is None else float(i0)
    if not (math.isfinite(top) and top > 0):
        raise InputError(f"I0 must be a positive number, got {i0!r}")
    L = math.log(top) - torch.log(img)
    return L.to(torch.float32), {"i0": top, "offset": float(offset), "clamped_pixels": n_bad}


def subtract_background(image, background="mode", clamp: bool = True):
    """Subtract a background level: a number, ``"min"``, ``"mode"`` (most frequent value,
    on a 1024-bin histogram) or ``("percentile", p)`` (p a number in [0, 100]); negatives clamp to 0 when
    ``clamp``.  A bool, another text or a text number is refused.

    Returns (image, value).
    """
    img = as_image(image)
    check_flag("clamp", clamp, prefix="")
    if isinstance(background, str):
        if background == "min":
            value = float(img.min())
        elif background == "mode":
            a = img.detach().to(torch.float64).flatten().cpu().numpy()
            lo, hi = float(a.min()), float(a.max())
            if hi == lo:
                value = lo
            else:
                hist, edges = np.histogram(a, bins=1024, range=(lo, hi))
                i = int(np.argmax(hist))
                value = float(0.5 * (edges[i] + edges[i + 1]))
        else:
            raise InputError(f"unknown background {background!r}; use a number, 'min', 'mode' or ('percentile', p)")
    elif isinstance(background, (tuple, list)) and len(background) == 2 and background[0] == "percentile":
        check_number("background percentile", background[1], lo=0, hi=100, prefix="")
        value = float(np.percentile(img.detach().cpu().numpy(), float(background[1])))
    else:  # a real number: not a bool (True was taken as 1.0), NumPy's too
        try:
            check_number("background", background, prefix="")
        except InputError:
            config_error("background", background, "must be a finite number, 'min', 'mode' or ('percentile', p)",
                         prefix="")
        value = float(background)
    out = img - value
    if clamp:
        out = out.clamp_min(0.0)
    return out, value


def rescale01(image):
    """Min–max rescale to [0, 1]; returns (image, (min, max)). A constant image raises."""
    img = as_image(image)
    lo, hi = float(img.min()), float(img.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError("X-ray has NaN or infinite pixels; cannot rescale it")
    if hi <= lo:
        raise InputError(f"X-ray image is constant (every pixel = {lo:g}); cannot rescale it to [0, 1]")
    return (img - lo) / (hi - lo), (lo, hi)


# --------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------


#: What :func:`preprocess`'s ``blur`` may be (its refusal's words).
BLUR_FORMS = ("None, True, a sigma >= 0 (pixels; 0: none) or a (kernel size, sigma) pair: an odd whole kernel "
              "size >= 1 and a finite sigma >= 0")


def _blur_args(blur):
    """Step 3's ``blur`` as (kernel size, σ), or None for no blur: None, False or a σ of 0; True (5×5,
    σ = 1 px); a σ (5×5); a (kernel size, σ) pair of numbers (a list, as JSON gives it).  Anything else
    — a text ('12' was iterated as kernel 1, σ 2), a bool or a text in the pair, an even or fractional
    kernel size, another length — is refused in one line naming the value."""
    if blur is None or isinstance(blur, (bool, np.bool_)):
        return (5, 1.0) if blur else None
    pair = isinstance(blur, (tuple, list)) and len(blur) == 2
    try:
        if pair:
            check_number("blur", blur[0], lo=1, integer=True, prefix="")
        check_number("blur", blur[1] if pair else blur, lo=0, prefix="")
        ok = not pair or int(blur[0]) % 2 == 1
    except InputError:
        ok = False
    if not ok:
        config_error("blur", blur, "must be " + BLUR_FORMS, prefix="")
    k, s = (int(blur[0]), float(blur[1])) if pair else (5, float(blur))
    return (k, s) if s > 0 else None


def preprocess(
    image,
    camera: Camera | None = None,
    *,
    rotate_180: bool = False,
    flip: str | None = None,
    crop: int | tuple | None = None,
    center_crop: int | tuple | None = None,
    blur=None,
    blur_domain: str = "line-integral",
    log: str | bool = False,
    i0: float | None = None,
    offset: float = 0.0,
    background=None,
    rescale: bool = True,
    size: int | tuple | None = None,
    resample_domain: str = "auto",
    photon_offset: float | str = "auto",
) -> Preprocessed:
    """Turn an X-ray into the image registration compares with DRRs.

    Steps, in this order, each optional and recorded in ``result.steps``:

    1. ``rotate_180`` — rotate by 180° (DeepFluoro's ``rot-180-for-up``);
       ``flip`` = "columns" / "rows" / "both" — mirror the image.
    2. ``crop`` — remove a border: n pixels per edge or (top, bottom, left,
       right); ``center_crop`` — keep the central h or (h, w) pixels.
    3. ``blur`` — Gaussian blur: True (5×5, σ = 1 px), a σ (5×5), or a (kernel, σ) pair of numbers (an
       odd whole kernel size; σ 0, None or False: no blur; a text or another form is refused), applied to the line
       integrals, after step 4 (``blur_domain`` "line-integral", the default: registration blurs its
       DRR's line integrals, so the two images are blurred alike), or to the raw intensities before
       the log (``blur_domain`` "intensity": DiffPose's order).  The order matters at strong edges
       (the body's outline against air): the log of a blurred intensity is not the blurred log, and
       at 2 mm pixels that difference moved a registration's depth by ~1 mm
       (docs/registration.md, "Blur after the log").  Within :data:`DEQUANTISE_LEVELS` grey levels
       of zero of an integer-valued image (an 8-bit display image's darkest levels, whose log is
       their quantisation's) the blur goes before the log, blended in by the blurred intensity.
       With ``log`` "intensity" / "log-intensity", a saturated plateau of the raw image
       (:func:`saturation_mask`), grown by the blur's radius, is left out: ``result.mask`` is 0
       there (registration weighs its pixels by it).
    4. ``log`` — turn intensities into line integrals:
       ``True``/"intensity": ``L = log I0 − log(I + offset)`` with ``I0 = i0``
       or the image maximum; "log-intensity": ``L = max − v`` (values already
       proportional to log I); ``False``/"attenuation" (or None): unchanged.  Any other value (a 1, a
       text "yes") is refused.  Raw intensities that hold few
       photons get ``photon_offset`` photons added to every pixel first (of the image the log is taken
       of: binned, its pixels' sum), converted to intensity by the photons' gain read from the image's
       own noise (:func:`detected_photons`): the log of a Poisson count is biased toward −∞ by about
       1/(2n) and that of zero is undefined, ``log(n + ½)`` is nearly unbiased down to n ≈ 1.  "auto"
       (the default): ½ where the darkest 1 % of the field holds fewer than :data:`LOG_MIN_PHOTONS`
       photons, else 0 (a noiseless image: 0); a number: that many photons; recorded in the
       ``beer_lambert`` step (``photon_offset``, ``per_photon``).
    5. ``background`` — subtract a level (see :func:`subtract_background`).
    6. ``rescale`` — min–max to [0, 1].  A collimator's shadow left in the image (flat borders
       at the maximum attenuation, :func:`collimator_edges`) is recorded and left out
       (``result.mask`` 0 there, grown by the blur's radius + 1); one that leaves less than
       :data:`MIN_FIELD_FRACTION` of the image is refused.
    7. ``size`` — resize to h or (h, w) pixels (antialiased), after step 6 (``resample_domain``
       "line-integral"); or, for raw intensities (``log`` True / "intensity") that are shrunk,
       before step 3 (``resample_domain`` "intensity"): the intensities are averaged over each output
       pixel's area, as a detector with larger pixels would count them, and the log is taken of the
       averages.  "auto" (the default) does that only when the darkest 1 % of the field's pixels hold
       fewer than :data:`LOG_MIN_PHOTONS` photons, estimated from the image's own noise
       (:func:`detected_photons`; recorded in the resize step), *and* step 4 adds no photons before
       the log (``photon_offset`` 0, or an image whose photons cannot be read as counts): the log of
       a few photons is biased and heavy-tailed (of zero, undefined), but ``log(n + ½)`` is nearly
       unbiased, while a bin is itself a blur of the intensities, whose log moves high-contrast edges
       (the depth of one view with them).  Tracked low-dose frames formed at 512² (their darkest
       pixels 0–1 photons) and shrunk to 128 / 256 rows (the pelvis, seed 1): binned first 34 % / 31 %
       of frames below 1 mm, the log of each pixel (with its half photon) 92 % / 100 %; registered
       from 512² and 1024² to 256 rows, 134 against 144 of 150 (docs/registration.md,
       "Shrinking raw intensities").  Step 3's blur
       then acts at the output size, its σ and kernel radius scaled by output rows / input rows
       (the blur step records the σ and kernel used, the resize step ``blur_scaled_by``; the radius
       at least 1), as the CLI scales registration's DRR blur (``drr_blur``).

    The camera (if given) follows every geometric step; ``result.pixel_map``
    maps input pixels to output pixels and ``result.pose_transform`` gives the
    output pose (``pose @ pose_transform``).

    Raises:
        InputError: image and camera of different sizes, impossible crops, an
            all-zero image with ``log``, a constant image with ``rescale``, ...
    """
    img = as_image(image)
    _check_camera(img, camera)
    check_flag("rescale", rescale, prefix="")
    H0, W0 = img.shape
    geo = plan_geometry(H0, W0, camera, rotate_180=rotate_180, flip=flip, crop=crop, center_crop=center_crop,
                        size=size)
    before = [op for op in geo.ops if op[0] != "resize"]
    after = [op for op in geo.ops if op[0] == "resize"]
    mode = _log_mode(log)
    _check_resample_domain(resample_domain, mode)
    sat = saturation_mask(img) if mode in ("intensity", "log-intensity") else None
    mask = None if sat is None else (~sat).to(torch.float32)
    for op in before:
        img = _apply_op(img, op)
        mask = None if mask is None else _apply_op(mask, op)
    steps: list[dict] = [s for s in geo.steps if s["step"] != "resize"]
    _check_finite(img)
    b = _blur_args(blur)
    if blur_domain not in ("line-integral", "intensity"):
        raise InputError(f"blur_domain must be 'line-integral' or 'intensity', got {blur_domain!r}")
    check_photon_offset(photon_offset)
    est = detected_photons(img, mask, offset) if mode == "intensity" and (
        resample_domain == "auto" or photon_offset != 0) else None
    photons = photons_to_add(photon_offset, est, _quantum(img + float(offset)), float(img.max()) + float(offset))
    binned, how = _resample_before_log(resample_domain, mode, geo, est, photons)
    pixels_in = img.numel()
    if binned and b is not None:  # the blur's kernel and σ follow the image to its new size
        f = geo.shape[0] / img.shape[0]
        b, how["blur_scaled_by"] = (2 * max(1, math.ceil((b[0] // 2) * f - 1e-9)) + 1, b[1] * f), f
    resized = [{**s, **how} for s in geo.steps if s["step"] == "resize"]
    if binned:
        img, mask = _resize(img, mask, after, True)
        steps += resized
        after, resized = [], []
    if blur_domain == "intensity":
        img, mask = _blur_step(img, mask, b, steps, blur_domain)
    raw = img
    # per pixel of the image the log is taken of: a bin's mean holds its pixels' sum
    added = photons * est["per_photon"] * img.numel() / pixels_in if photons else 0.0
    total = offset + added
    img = _log_step(img, mode, i0, total, steps)
    if photons:  # (the step's "offset": the given offset + these photons' intensity)
        steps[-1]["photon_offset"] = {"photons": photons, "per_photon": est["per_photon"], "intensity": added}
    if blur_domain == "line-integral":
        img, mask = _blur_step(img, mask, b, steps, blur_domain)
        if mode == "intensity" and b is not None:
            img = _dequantise(raw, img, b, total, steps)  # (half a photon added: no quantum left to undo)
    if mask is not None:
        _record_saturation(mask, float(as_image(image)[sat].flatten()[0]), int(sat.sum()), steps)
    img = _level_steps(img, background, rescale, steps)
    shadow = check_field(img, steps, grow=0 if b is None else b[0] // 2 + 1)
    if shadow is not None:
        mask = shadow if mask is None else mask * shadow
    img, mask = _resize(img, mask, after, False)
    steps += resized
    img = img.to(torch.float32)
    return Preprocessed(image=img, camera=geo.camera, pixel_map=geo.pixel_map, pose_transform=geo.pose_transform,
                        steps=steps, mask=mask)


def _resize(img: torch.Tensor, mask, ops: list, intensities: bool):
    """Step 7 of :func:`preprocess`: ``ops`` (resizes) applied to the image — its intensities binned
    (:func:`_bin_intensities`) or its values resampled (:func:`_apply_op`) — and to the mask."""
    for op in ops:
        img = _bin_intensities(img, op[1], op[2]) if intensities else _apply_op(img, op)
        mask = None if mask is None else _apply_op(mask, op).clamp(0.0, 1.0)
    return img, mask


def _check_resample_domain(domain: str, mode: str) -> None:
    if domain not in ("auto", "intensity", "line-integral"):
        raise InputError(f"resample_domain must be 'auto', 'intensity' or 'line-integral', got {domain!r}")
    if domain == "intensity" and mode != "intensity":
        raise InputError(f"resample_domain 'intensity' averages raw intensities before their log: it needs "
                         f"log=True / 'intensity', got log={mode!r}")


def _resample_before_log(domain: str, mode: str, geo, est: dict | None, photons: float) -> tuple[bool, dict]:
    """(whether :func:`preprocess` shrinks the raw image — after the crops — before the log, the record
    added to the resize step) for step 7's ``resample_domain``; ``est``: :func:`detected_photons` of
    that image (None: unknown); ``photons``: the photons step 4 adds before the log (:func:`~xraypose.photons.photons_to_add`)."""
    rec = next((s for s in geo.steps if s["step"] == "resize"), None)
    if rec is None:
        return False, {}
    (H, W), (h, w) = rec["from"], rec["to"]
    if domain == "line-integral" or mode != "intensity" or h > H or w > W:  # nothing to bin in an enlargement
        return False, {"domain": "line-integral"}
    if domain == "intensity":
        return True, {"domain": "intensity", "how": "area mean"}
    low = est is not None and est["photons_p1"] < LOG_MIN_PHOTONS and not photons
    rec = {"photons": None if est is None else {k: (None if math.isinf(x) else x) for k, x in est.items()},
           "log_min_photons": LOG_MIN_PHOTONS, "photon_offset": photons}
    return low, {"domain": "intensity", "how": "area mean", **rec} if low else {"domain": "line-integral", **rec}


def _blur_step(img: torch.Tensor, mask, b, steps: list, domain: str):
    """Step 3 of :func:`preprocess`: blur, and grow the mask's holes by the kernel's radius."""
    if b is None:
        return img, mask
    img = gaussian_blur(img, *b)
    steps.append({"step": "blur", "kernel_size": b[0], "sigma": b[1], "domain": domain})
    if mask is not None:  # blurred pixels next to the plateau are not to be trusted either
        r = b[0] // 2
        mask = -F.max_pool2d(-mask[None, None], 2 * r + 1, stride=1, padding=r)[0, 0]
    return img, mask


#: Below this many quanta of the raw image (one grey level of an integer-valued image, e.g. an 8-bit
#: display image) the log of a pixel is its quantisation's: there the blur goes before the log (below).
DEQUANTISE_LEVELS = 16.0


def _quantum(img: torch.Tensor) -> float:
    """The raw image's quantum: 1 for an integer-valued image (a stored detector or display image's grey
    levels), 0 for one with fractional values (no quantisation known)."""
    v = img[torch.isfinite(img)]
    return 1.0 if v.numel() and bool((v == torch.round(v)).all()) else 0.0


def _dequantise(raw: torch.Tensor, L: torch.Tensor, b, offset: float, steps: list) -> torch.Tensor:
    """Step 3's blur after the log (``L``, the blurred line integrals of ``raw``), undone within
    :data:`DEQUANTISE_LEVELS` quanta of zero intensity of an integer-valued ``raw`` image, where a
    pixel's log is its quantisation's (an 8-bit display image's darkest grey levels 1, 2, 3: log steps
    of 0.7 and 0.4): there ``log I0 − log(G * I)``, blended in by ``w = clamp(G*I / (levels·quantum),
    0, 1)``.  Raw detector images (16-bit, thousands of levels above their quantum) and images with
    fractional values are left as they are.  Records ``quantum`` and ``dequantised_share`` in the
    blur's step."""
    blur = steps[-1]
    blur["quantum"], blur["dequantised_share"] = _quantum(raw + float(offset)), 0.0
    if blur["quantum"] == 0.0:
        return L
    blurred = gaussian_blur(raw.to(torch.float64) + float(offset), *b)
    w = (blurred / (DEQUANTISE_LEVELS * blur["quantum"])).clamp(0.0, 1.0)
    low = w < 1
    if not bool(low.any()):
        return L
    i0 = next(s["i0"] for s in reversed(steps) if s["step"] == "beer_lambert")
    Lq = beer_lambert(blurred, i0=i0)[0].to(torch.float64)
    blur["dequantised_share"] = float(low.double().mean())
    return torch.where(low, w * L.to(torch.float64) + (1 - w) * Lq, L.to(torch.float64)).to(L.dtype)


def _check_finite(img: torch.Tensor) -> None:
    """NaN/infinite pixels, and a constant image, refused with the pixels as given (after the crop): a constant
    image said so only after its log, as "every pixel = -3.05e-16"."""
    bad = ~torch.isfinite(img)
    if bool(bad.any()):
        r, c = (int(x) for x in torch.nonzero(bad)[0])
        raise InputError(f"X-ray has {int(bad.sum())} NaN or infinite pixels (the first at row {r}, column {c} after "
                         "the crop); replace them (e.g. from a dead-pixel map) or crop them away")
    lo, hi = (float(v) for v in torch.aminmax(img))
    if lo == hi:
        raise InputError("X-ray image is all zeros: an empty image has nothing to register" if lo == 0 else
                         f"X-ray is constant: every pixel is {lo:g}; a constant image has nothing to register")


def _record_saturation(mask: torch.Tensor, value: float, pixels: int, steps: list) -> None:
    # never refused here: a hand or a phantom leaves most of the detector in the (clipped) direct
    # beam, which is air in the CT as well; registration refuses a mask that leaves < 5 %.
    steps.append({"step": "saturation_mask", "value": value, "pixels": pixels, "weight": float(mask.mean())})


#: ``preprocess``'s ``log`` modes, by name (True is "intensity", False and None "attenuation").
LOG_MODES = ("intensity", "log-intensity", "attenuation")


def _log_mode(log) -> str:
    """``preprocess``'s ``log`` as one of :data:`LOG_MODES`, checked before any pixel is touched: a flag
    must be a bool (:func:`check_flag`: a 1, 0 or 1.0 would pass for True or False), a text one of the
    modes."""
    if log is None:
        return "attenuation"
    if not isinstance(log, str):
        return "intensity" if check_flag("log", log, prefix="") else "attenuation"
    if log not in LOG_MODES:
        config_error("log", log, "must be true, false or one of: " + ", ".join(LOG_MODES), prefix="")
    return log


def _log_step(img, mode: str, i0, offset, steps: list) -> torch.Tensor:
    """Step 4 of :func:`preprocess` (intensities → line integrals), recorded in ``steps``."""
    if mode == "intensity":
        img, info = beer_lambert(img, i0=i0, offset=offset)
        steps.append({"step": "beer_lambert", "formula": "log(I0) - log(I + offset)", **info})
    elif mode == "log-intensity":
        top = float(img.max()) if i0 is None else float(i0)
        img = top - img
        steps.append({"step": "negate_log", "formula": "max - v", "max": top})
    return img


def _level_steps(img, background, rescale: bool, steps: list) -> torch.Tensor:
    """Steps 5–6 of :func:`preprocess` (background, rescale), each recorded in ``steps``."""
    if background is not None:
        img, value = subtract_background(img, background)
        steps.append({"step": "background", "value": value,
                      "how": background if isinstance(background, (str, tuple, list)) else "given"})
    if rescale:
        img, (lo, hi) = rescale01(img)
        steps.append({"step": "rescale01", "min": lo, "max": hi})
    return img


def ncc(a, b, mask=None) -> float:
    """Normalised cross-correlation of two images (in [-1, 1])."""
    a = torch.as_tensor(a, dtype=torch.float64).flatten()
    b = torch.as_tensor(b, dtype=torch.float64).flatten()
    if a.shape != b.shape:
        raise InputError(f"images of different sizes: {a.numel()} and {b.numel()} pixels")
    if mask is not None:
        m = torch.as_tensor(mask).flatten().bool()
        a, b = a[m], b[m]
    a = a - a.mean()
    b = b - b.mean()
    den = float(a.norm() * b.norm())
    if den == 0:
        raise InputError("NCC of a constant image is undefined")
    return float((a * b).sum()) / den
