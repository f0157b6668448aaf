"""Where a registration starts: the trained model, a fixed pose, C-arm angles, a previous result, an antipodal flip.

Every initialiser gives ``camera_to_world`` poses (B, 4, 4) float64 in the CT's
world frame (docs/conventions.md); :func:`with_antipodal` adds, per X-ray, the
pose seen from the other side so the optimiser can escape AP/PA confusion
(both are optimised at the first level, the better one goes on).

The trained model is reached through a small protocol, :class:`PosePredictor`:
a callable taking a preprocessed X-ray **already resampled to the model's
training intrinsics** ``(B, 1, h, w)`` and that :class:`Camera`, returning
``(B, 4, 4)`` camera_to_world.  :class:`ModelInitializer` does the resampling
(:func:`resample_pinhole`: an exact pinhole resampling, since an image is a
function of ray directions only) and the model's own intensity normalisation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import torch
import torch.nn.functional as F

from xraypose._kernels import gaussian_kernel1d, three_sigma_radius
from xraypose.camera import Camera, carm_pose
from xraypose.errors import InputError
from xraypose.geometry import as_transform, make_transform, so3_exp
from xraypose.preprocess import image_batch

if TYPE_CHECKING:
    from xraypose.volume import Volume

__all__ = [
    "PosePredictor", "ModelInitializer", "resample_pinhole", "fixed_pose", "carm_angles_pose",
    "pose_from_json", "antipodal", "with_antipodal",
]

F64 = torch.float64


class PosePredictor(Protocol):
    """``predictor(image (B, 1, h, w), camera) -> camera_to_world (B, 4, 4)``.

    ``image`` is the preprocessed X-ray (line integrals, bone bright) resampled
    to ``camera`` (the model's training intrinsics) and normalised as the model
    was trained.
    """

    def __call__(self, image: torch.Tensor, camera: Camera) -> torch.Tensor: ...


def resample_pinhole(image, camera: Camera, target: Camera, fill: float = 0.0) -> torch.Tensor:
    """Resample an X-ray seen through ``camera`` to what ``target`` (same source, same pose) would see.

    (Not :func:`xraypose.model.resample_to_camera`, the trained model's own resampling: that one shrinks
    with antialiasing, pads with the border and returns a validity mask as well.)

    A pixel of ``target`` looks along ``K_t⁻¹ (u, v, 1)``; the same ray hits
    ``camera``'s detector at ``K_c K_t⁻¹ (u, v, 1)`` (an axis-aligned affine map;
    mirrors included), whatever the two source-to-detector distances.  Bilinear
    sampling, with a Gaussian pre-filter when ``target`` pixels are coarser;
    rays outside ``camera``'s detector get ``fill``.

    Args:
        image: (H, W) or (B, 1, H, W) with H×W = camera's size.
    Returns:
        (B, 1, target.height, target.width) float32.
    """
    img = image_batch(image).to(torch.float32)
    if tuple(img.shape[-2:]) != (camera.height, camera.width):
        raise InputError(f"X-ray is {img.shape[-2]}×{img.shape[-1]} pixels but its intrinsics describe a "
                         f"{camera.height}×{camera.width} detector (sizes differ)")
    M = camera.K(F64) @ target.K_inv(F64)  # target pixel -> camera pixel
    su, sv = abs(float(M[0, 0])), abs(float(M[1, 1]))  # camera pixels per target pixel
    if max(su, sv) > 1.0:
        sig_u, sig_v = 0.5 * math.sqrt(max(su * su - 1, 0)), 0.5 * math.sqrt(max(sv * sv - 1, 0))
        img = _gauss2d(img, sig_u, sig_v)
    uv = target.pixel_grid(dtype=F64)  # (h·w, 2)
    src = uv @ M[:2, :2].T + M[:2, 2]
    gx = 2 * src[:, 0] / max(camera.width - 1, 1) - 1
    gy = 2 * src[:, 1] / max(camera.height - 1, 1) - 1
    grid = torch.stack([gx, gy], -1).to(torch.float32).reshape(1, target.height, target.width, 2)
    grid = grid.expand(img.shape[0], -1, -1, -1)
    out = F.grid_sample(img - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=True) + fill
    return out


def _gauss2d(img: torch.Tensor, su: float, sv: float) -> torch.Tensor:
    for axis, s in ((-1, su), (-2, sv)):
        if s < 0.3:
            continue
        r = three_sigma_radius(s)
        k = gaussian_kernel1d(s, r, torch.float32)
        if axis == -1:
            img = F.conv2d(F.pad(img, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        else:
            img = F.conv2d(F.pad(img, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return img


class ModelInitializer:
    """The trained pose regressor as an initialiser.

    Args:
        predictor: a :class:`PosePredictor`.
        camera: the model's training intrinsics: the X-ray is resampled to them
            (:func:`resample_pinhole`) and normalised (``normalize``, default
            min–max to [0, 1]) before ``predictor(image, camera)``.  None: the
            predictor takes the X-ray as it is, with its own camera, and does its
            own resampling and normalisation (as :func:`xraypose.model.predict_pose`).
        normalize: the model's image normalisation (with ``camera``).
        foreign_steps: metal's steps are set aside first (:mod:`xraypose.register.foreign`, this
            edge ratio; None: off) and the pixels they cover filled from their surroundings: the
            model was trained on DRRs without metal (a retractor blade sent its estimates 70–330 mm
            off on the appearance benchmark's implants X-rays).
    Call: ``init(image, camera) -> (B, 4, 4)`` for preprocessed X-rays seen through ``camera``.
    """

    def __init__(self, predictor: PosePredictor, camera: Camera | None = None, normalize: Callable | None = None,
                 foreign_steps: float | None = 12.0):
        self.predictor = predictor
        self.camera = camera
        self.normalize = normalize or _minmax
        self.foreign_steps = foreign_steps

    def __call__(self, image, camera: Camera) -> torch.Tensor:
        img = image_batch(image).to(torch.float32)
        if self.foreign_steps is not None:
            from xraypose.register.foreign import fill_set_aside, set_aside_steps

            found = [set_aside_steps(img[b, 0], ratio=float(self.foreign_steps)) for b in range(img.shape[0])]
            img = torch.stack([fill_set_aside(f.image, f.weights) for f in found])[:, None].to(torch.float32)
        if self.camera is not None:
            img = self.normalize(resample_pinhole(img, camera, self.camera))
            cam = self.camera
        else:
            cam = camera
        with torch.no_grad():
            T = self.predictor(img, cam)
        T = torch.as_tensor(T).detach().to(F64).reshape(-1, 4, 4)
        if not bool(torch.isfinite(T).all()):
            raise InputError("the model predicted a pose with NaN or infinite entries")
        return T

    @classmethod
    def from_checkpoint(cls, path, volume: Volume | None = None, *, allow_other_ct: bool = False,
                        foreign_steps: float | None = 12.0) -> "ModelInitializer":
        """A checkpoint written by ``xraypose train``, through :func:`xraypose.model.load_checkpoint`
        and :func:`xraypose.model.predict_pose` (which resample the X-ray to the training
        detector and normalise it as in training).

        Args:
            path: the checkpoint.
            volume: the CT the X-rays will be registered to: a model trained on another CT
                (shape, affine or voxel values differ) is refused with an InputError
                (:func:`xraypose.model.check_training_volume`).  Give it: a model only knows
                the poses of its own CT.  None skips the check.
            allow_other_ct: use the model with another CT anyway (a warning).
            foreign_steps: see the class (None: the model sees the X-ray as given).
        """
        p = Path(path)
        from xraypose.io import check_input_path

        check_input_path(p, "model file", f"model file not found: {p}")
        from xraypose.model import check_training_volume, load_checkpoint, predict_pose

        net, meta = load_checkpoint(p)
        if volume is not None:
            check_training_volume(meta, volume, allow_other_ct=allow_other_ct, what=f"the model {p}")
        init = cls(lambda img, cam: predict_pose(net, meta, img, cam), camera=None, foreign_steps=foreign_steps)
        init.meta = meta
        return init


def _minmax(img: torch.Tensor) -> torch.Tensor:
    flat = img.reshape(img.shape[0], -1)
    lo, hi = flat.amin(-1), flat.amax(-1)
    span = (hi - lo).clamp_min(1e-12)
    return (img - lo.view(-1, 1, 1, 1)) / span.view(-1, 1, 1, 1)


def fixed_pose(T) -> torch.Tensor:
    """A given camera_to_world pose, checked: (B, 4, 4) float64."""
    return as_transform(T, dtype=F64)


def carm_angles_pose(primary: float, secondary: float, sod: float, isocenter) -> torch.Tensor:
    """(1, 4, 4) pose from C-arm angles in degrees (LAO+/RAO−, CRAN+/CAUD−) about ``isocenter``."""
    return carm_pose(primary, secondary, sod=sod, isocenter=isocenter).reshape(1, 4, 4)


def check_inverse_pair(c2w, w2c, where: str) -> torch.Tensor:
    """(4, 4) float64 camera_to_world: ``c2w`` (None: the inverse of ``w2c``), refused naming ``where`` when a
    ``w2c`` given beside it is not its inverse (both rigid: checked by the schema)."""
    inv = torch.linalg.inv(torch.as_tensor(w2c, dtype=F64))  # rigid (checked), so invertible
    if c2w is None:
        return inv
    T = torch.as_tensor(c2w, dtype=F64)
    err_r = float((T[:3, :3] - inv[:3, :3]).abs().max())
    err_t = float((T[:3, 3] - inv[:3, 3]).abs().max())
    if err_r > 1e-3 or err_t > 1e-2 + 1e-6 * float(T[:3, 3].abs().max()):
        raise InputError(f"{where}: camera_to_world and world_to_camera are not each other's inverse "
                         f"(rotations differ by up to {err_r:.3g}, translations by {err_t:.3g} mm)")
    return T


def pose_from_json(path) -> torch.Tensor:
    """(1, 4, 4) float64 camera_to_world from a pose file.

    The file (checked against :data:`xraypose.schema.POSE_FILE`) holds
    ``{"camera_to_world": 4×4}``, ``{"world_to_camera": 4×4}`` (inverted here),
    or is a registration result (``pose.json``: restart from it).  When both
    matrices are given they must be each other's inverse.

    Raises:
        InputError: naming the file and the key: a missing file or a folder,
            not UTF-8 / not JSON, a matrix that is not 4×4 numbers, not finite,
            beyond 1 km, not rigid, or two matrices that disagree.
    """
    from xraypose.io import finish_before_reading
    from xraypose.schema import POSE_FILE, read_checked

    p = Path(path)
    finish_before_reading(p)  # a registration's pose.json a kill left half-replaced: its new one
    data = read_checked(p, POSE_FILE, "pose file")
    c2w, w2c = data.get("camera_to_world"), data.get("world_to_camera")
    if c2w is None and w2c is None and isinstance(data.get("pose"), dict):
        c2w = data["pose"]["camera_to_world"]
    if c2w is None and w2c is None:
        keys = ", ".join(sorted(data)) or "none"
        raise InputError(f"pose file {p} must hold {{\"camera_to_world\": 4×4}} (or world_to_camera); "
                         f"its keys: {keys}")
    T = None if c2w is None else torch.tensor(c2w, dtype=F64)
    if w2c is not None:
        T = check_inverse_pair(T, w2c, f"pose file {p}")
    try:
        return as_transform(T, dtype=F64)
    except InputError as e:
        raise InputError(f"pose file {p}: {e}") from None


def antipodal(T, isocenter) -> torch.Tensor:
    """The pose turned by 180° about the axis through ``isocenter`` along the camera's rows (+v) axis.

    The source goes to the other side of the patient (AP ↔ PA) and the image
    is mirrored left–right: the pose a regressor confuses with ``T``.

    ``T``: camera_to_world (4, 4) or (B, 4, 4); ``isocenter``: (3,) world mm.  Returns (B, 4, 4) float64.
    """
    T = torch.as_tensor(T, dtype=F64).reshape(-1, 4, 4)
    axis = T[:, :3, 1]
    R = so3_exp(axis * math.pi)
    iso = torch.as_tensor(isocenter, dtype=F64).reshape(3)
    C = make_transform(R, iso - (R @ iso[:, None])[..., 0])
    return C @ T


def with_antipodal(T, isocenter) -> torch.Tensor:
    """(B, 2, 4, 4): each pose and its :func:`antipodal` flip, as starts for :meth:`Registrar.register`."""
    T = torch.as_tensor(T, dtype=F64).reshape(-1, 4, 4)
    return torch.stack([T, antipodal(T, isocenter)], dim=1)
