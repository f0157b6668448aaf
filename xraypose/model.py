"""Patient-specific pose regression: the network, its input contract, checkpoints, prediction.

A :class:`PoseRegressor` maps an X-ray (line integrals, resampled to the
*training camera*) to the C-arm pose ``camera_to_world`` (4×4, CT RAS mm).

Output pose.  The heads predict an *offset* from the isocenter pose ``T_iso``
(the mean view of training), in a rotation parameterization of
:mod:`xraypose.geometry` and a translation (mm)::

    T = T_iso · P · T_off · P⁻¹,    T_off = pose_from_params(rotation, translation, parameterization)
    P = translation by (0, 0, pivot_mm) in the camera frame of T_iso

With ``pivot_mm = 0`` this is DiffPose's ``T_iso ∘ T_off``.  With ``pivot_mm =
sod`` (our default) the offset rotates the C-arm about the isocenter and
translates it along the camera axes, so rotation and translation are
decoupled: a tilt of the C-arm does not show up as a 100 mm translation.  The
raw head outputs are affinely rescaled (``output_mean + output_std · head``,
fitted from the training pose distribution) so the network regresses
unit-scale numbers from its first step, whatever the parameterization.

Input contract (identical in training and prediction, written once here):

1. the image lives on the training camera's detector grid (``meta["camera"]``,
   ``meta["image_size"]``); :func:`resample_to_camera` moves any X-ray there by
   the physical detector geometry (pixels outside the X-ray's detector are
   *invalid*);
2. :func:`normalize_images`: min–max to [0, 1] over the valid pixels, invalid
   pixels set to 0, then ``(x − mean) / std`` with the dataset statistics
   stored in ``meta["normalization"]``.

Checkpoints (``torch.save`` of plain dicts, tensors and numbers) load with
``weights_only=True``; they are written atomically (temporary file, fsync,
rename), so a kill mid-write leaves the previous file intact.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.io import check_input_file
from xraypose.geometry import ROTATION_PARAMETERIZATIONS, pose_from_params, pose_to_params

if TYPE_CHECKING:
    from xraypose.volume import Volume

__all__ = [
    "PoseRegressor", "CHECKPOINT_FORMAT", "NORMS", "load_checkpoint", "predict_pose", "read_checkpoint",
    "save_checkpoint", "resample_to_camera", "normalize_images", "build_model", "architecture_of",
    "check_compatible", "checkpoint_dict", "volume_record", "training_volume_mismatch", "check_training_volume",
    "OtherCTWarning", "check_finite_weights",
]

CHECKPOINT_FORMAT = "xraypose.pose_regressor"
CHECKPOINT_VERSION = 1
NORMS = ("batch", "group")


# --------------------------------------------------------------------------- network
def _group_count(channels: int, max_groups: int = 32) -> int:
    for g in (max_groups, 16, 8, 4, 2, 1):
        if channels % g == 0 and g <= channels:
            return g
    return 1


def _batchnorm_to_groupnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by a GroupNorm over the same channels (any timm model)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            c = child.num_features
            setattr(module, name, nn.GroupNorm(_group_count(c), c, eps=child.eps, affine=child.affine))
        else:
            _batchnorm_to_groupnorm(child)
    return module


def _load_local_weights(backbone: nn.Module, path) -> None:
    """Load a local weights file into the backbone (3-channel first convs are summed to 1 channel)."""
    p = Path(path)
    check_input_file(p, "backbone weights file", "a file of weights")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user error
        raise InputError(f"cannot read backbone weights {p}: {_unreadable_reason(p, e)}") from None
    if isinstance(sd, dict):
        for key in ("state_dict", "model"):
            if key in sd and isinstance(sd[key], dict):
                sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(f"backbone weights {p} are not a state dict of tensors")
    own = backbone.state_dict()
    usable = {}
    for k, v in sd.items():
        if k not in own:
            continue
        if v.shape == own[k].shape:
            usable[k] = v
        elif v.dim() == 4 and own[k].dim() == 4 and own[k].shape[1] == 1 and v.shape[0] == own[k].shape[0] \
                and v.shape[2:] == own[k].shape[2:]:
            usable[k] = v.sum(dim=1, keepdim=True)  # RGB stem → one channel
    if len(usable) < 0.5 * len(own):
        raise InputError(
            f"backbone weights {p} match only {len(usable)} of the backbone's {len(own)} tensors; "
            "were they made for another architecture?"
        )
    backbone.load_state_dict(usable, strict=False)


class PoseRegressor(nn.Module):
    """CNN (timm backbone) → C-arm pose ``camera_to_world`` (B, 4, 4).

    Args:
        backbone: a timm model name (``resnet18`` default; any timm CNN works).
        parameterization: rotation parameterization of :mod:`xraypose.geometry`
            (``se3_log_map`` default; all of ``ROTATION_PARAMETERIZATIONS``).
        convention: Euler axis sequence for ``euler_angles`` (default ``"ZYX"``); with another
            parameterization it must be None (an InputError naming both: it would be ignored).
        norm: ``"batch"`` (the backbone's own) or ``"group"`` (every BatchNorm
            replaced by GroupNorm: batch-size independent, DDP-friendly).
        pool_grid: 1 = global average pooling; k > 1 = adaptive average pooling
            to k×k cells, flattened, so the heads see *where* features are.
        pretrained: timm's pretrained weights (needs a network download; off).
        weights: path to a local weights file for the backbone, or None.
        isocenter_pose: (4, 4) camera_to_world of the mean view (default identity).
        pivot_mm: see the module docstring (0 = DiffPose's composition).
    Call: ``model(images (B, 1, H, W) normalized) -> (B, 4, 4)`` float32 camera_to_world.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        parameterization: str = "se3_log_map",
        convention: str | None = None,
        norm: str = "batch",
        pool_grid: int = 1,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        isocenter_pose: torch.Tensor | None = None,
        pivot_mm: float = 0.0,
    ) -> None:
        super().__init__()
        import timm

        if parameterization not in ROTATION_PARAMETERIZATIONS:
            raise InputError(
                f"unknown parameterization {parameterization!r}; choose one of: {', '.join(ROTATION_PARAMETERIZATIONS)}"
            )
        if parameterization == "euler_angles" and convention is None:
            convention = "ZYX"
        if parameterization != "euler_angles" and convention is not None:  # (it was ignored without a word)
            raise InputError(f"convention {convention!r} is the axis sequence of Euler angles, but the "
                             f"parameterization is {parameterization!r} (it would be ignored): leave convention "
                             "unset, or use parameterization 'euler_angles'")
        if convention is not None:
            from xraypose.names import EULER_CONVENTIONS, is_euler_convention

            if not is_euler_convention(convention):  # (it failed at the first forward pass, deep in the geometry)
                raise InputError(f"convention {convention!r} is not an Euler axis sequence: one of "
                                 f"{', '.join(EULER_CONVENTIONS)} (lowercase: extrinsic)")
        if norm not in NORMS:
            raise InputError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
        if int(pool_grid) < 1:
            raise InputError(f"pool_grid must be >= 1, got {pool_grid}")
        if not math.isfinite(float(pivot_mm)):
            raise InputError(f"pivot_mm must be finite, got {pivot_mm}")
        self.backbone_name = str(backbone)
        self.parameterization = parameterization
        self.convention = convention
        self.norm = norm
        self.pool_grid = int(pool_grid)
        if not timm.is_model(self.backbone_name):
            raise InputError(f"unknown timm backbone {backbone!r} (see timm.list_models())")
        try:
            self.backbone = timm.create_model(self.backbone_name, pretrained=bool(pretrained), in_chans=1,
                                              num_classes=0, global_pool="")
        except RuntimeError as e:  # e.g. pretrained weights without a network
            raise InputError(f"cannot build backbone {backbone!r}: {e}") from None
        if weights is not None:
            _load_local_weights(self.backbone, weights)
        if norm == "group":
            _batchnorm_to_groupnorm(self.backbone)
        n_feat = int(self.backbone.num_features) * self.pool_grid**2
        self.n_rot = ROTATION_PARAMETERIZATIONS[parameterization]
        self.rotation_head = nn.Linear(n_feat, self.n_rot)
        self.translation_head = nn.Linear(n_feat, 3)
        for head in (self.rotation_head, self.translation_head):
            nn.init.normal_(head.weight, std=1e-3)
            nn.init.zeros_(head.bias)
        T0 = torch.eye(4, dtype=torch.float64) if isocenter_pose is None else torch.as_tensor(
            isocenter_pose, dtype=torch.float64).reshape(4, 4)
        self.register_buffer("isocenter_pose", T0.float().clone())
        self.register_buffer("pivot", torch.tensor([0.0, 0.0, float(pivot_mm)]))
        rot0, _ = pose_to_params(torch.eye(4, dtype=torch.float64), parameterization, convention)
        self.register_buffer("rotation_mean", rot0.float().clone())
        self.register_buffer("rotation_std", torch.ones(self.n_rot))
        self.register_buffer("translation_mean", torch.zeros(3))
        self.register_buffer("translation_std", torch.full((3,), 100.0))

    # ------------------------------------------------------------------ pieces
    def architecture(self) -> dict:
        return {"backbone": self.backbone_name, "parameterization": self.parameterization,
                "convention": self.convention, "norm": self.norm, "pool_grid": self.pool_grid, "in_chans": 1}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        if self.pool_grid == 1:
            f = f.mean(dim=(-2, -1))
        else:
            f = F.adaptive_avg_pool2d(f, self.pool_grid).flatten(1)
        return f.float()

    def params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Offset parameters (rotation (B, n), translation (B, 3) mm) of the images.

        The backbone may run under autocast (mixed precision); the heads and all
        geometry run in float32.
        """
        f = self.features(x)
        with torch.autocast(device_type=f.device.type, enabled=False):
            rot = self.rotation_mean + self.rotation_std * self.rotation_head(f)
            trans = self.translation_mean + self.translation_std * self.translation_head(f)
        return rot, trans

    def offset_to_pose(self, offset: torch.Tensor) -> torch.Tensor:
        """``T_iso · P · offset · P⁻¹`` for offsets (B, 4, 4)."""
        P = torch.eye(4, dtype=offset.dtype, device=offset.device).repeat(2, 1, 1)
        P[0, :3, 3] = self.pivot.to(offset.dtype)
        P[1, :3, 3] = -self.pivot.to(offset.dtype)
        return self.isocenter_pose.to(offset.dtype) @ P[0] @ offset @ P[1]

    def pose_to_offset(self, camera_to_world: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`offset_to_pose`."""
        T = camera_to_world
        P = torch.eye(4, dtype=T.dtype, device=T.device).repeat(2, 1, 1)
        P[0, :3, 3] = self.pivot.to(T.dtype)
        P[1, :3, 3] = -self.pivot.to(T.dtype)
        return P[1] @ torch.linalg.inv(self.isocenter_pose.to(T.dtype)) @ T @ P[0]

    def params_to_pose(self, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
        offset = pose_from_params(rotation.float(), translation.float(), self.parameterization, self.convention)
        return self.offset_to_pose(offset)

    def pose_to_params(self, camera_to_world: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Offset parameters of poses (the regression targets)."""
        return pose_to_params(self.pose_to_offset(camera_to_world), self.parameterization, self.convention)

    @torch.no_grad()
    def fit_output_scaling(self, poses: torch.Tensor, min_rotation_std: float = 0.02,
                           min_translation_std: float = 1.0) -> None:
        """Set the heads' affine output scaling from sample poses of the training distribution."""
        rot, trans = self.pose_to_params(poses.to(torch.float64))
        self.rotation_mean.copy_(rot.mean(0).float())
        self.rotation_std.copy_(rot.std(0).clamp_min(min_rotation_std).float())
        self.translation_mean.copy_(trans.mean(0).float())
        self.translation_std.copy_(trans.std(0).clamp_min(min_translation_std).float())

    def forward(self, x: torch.Tensor, return_params: bool = False):
        """Poses (B, 4, 4); with ``return_params`` also the offset parameters (rotation, translation)."""
        rot, trans = self.params(x)
        with torch.autocast(device_type=rot.device.type, enabled=False):
            T = self.params_to_pose(rot, trans)
        return (T, rot, trans) if return_params else T

    def whiten(self, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
        """(B, n + 3) offset parameters in units of the training distribution's spread."""
        return torch.cat([(rotation - self.rotation_mean) / self.rotation_std,
                          (translation - self.translation_mean) / self.translation_std], -1)


#: The keys of an architecture (:meth:`PoseRegressor.architecture`): what a checkpoint's must hold, and what two
#: architectures are compared on (:func:`check_compatible`).
_ARCHITECTURE_KEYS = ("backbone", "parameterization", "convention", "norm", "pool_grid", "in_chans")


def build_model(architecture: dict, **kwargs) -> PoseRegressor:
    """A :class:`PoseRegressor` from a checkpoint's ``meta["architecture"]`` (:meth:`PoseRegressor.architecture`).

    Raises:
        InputError: ``architecture`` is not a dict, has keys other than :meth:`PoseRegressor.architecture`'s,
            or values the network cannot be built from.
    """
    if not isinstance(architecture, dict):
        raise InputError(f"the architecture must be a dict ({', '.join(_ARCHITECTURE_KEYS)}), "
                         f"got {type(architecture).__name__}")
    unknown = sorted(str(k) for k in architecture if k not in _ARCHITECTURE_KEYS)
    if unknown:
        raise InputError(f"unknown architecture key(s) {', '.join(unknown)}; known: {', '.join(_ARCHITECTURE_KEYS)}")
    a = dict(architecture)
    a.pop("in_chans", None)
    try:
        return PoseRegressor(**a, **kwargs)
    except InputError:
        raise
    except (TypeError, ValueError) as e:  # e.g. pool_grid "two": int() fails inside
        raise InputError(f"cannot build the network from the architecture {a}: {e}") from None


def architecture_of(model: nn.Module) -> dict:
    m = model.module if hasattr(model, "module") else model
    return m.architecture()


def check_compatible(expected: dict, found: dict, what: str) -> None:
    """Raise a clear InputError when two architectures differ (backbone, parameterization, ...)."""
    diffs = [f"{k}: {found.get(k)!r} (expected {expected.get(k)!r})"
             for k in _ARCHITECTURE_KEYS if expected.get(k) != found.get(k)]
    if diffs:
        raise InputError(f"{what} was made for another architecture or parameterization — " + "; ".join(diffs))


# --------------------------------------------------------------------------- checkpoints
def checkpoint_dict(model: nn.Module, meta: dict, **training_state) -> dict:
    """The dict written to a checkpoint: format tag, model weights, meta, and any training state."""
    m = model.module if hasattr(model, "module") else model
    meta = dict(meta)
    meta["architecture"] = m.architecture()
    meta["parameterization"] = m.parameterization
    meta["convention"] = m.convention
    state = {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": state, "meta": meta,
            **training_state}


def save_checkpoint(path, state: dict) -> None:
    """Atomically write a checkpoint dict (temporary file in the same folder, fsync, rename)."""
    from xraypose.io import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_checkpoint(path, map_location="cpu") -> dict:
    """Read and validate a checkpoint file (``weights_only=True``)."""
    p = Path(path)
    check_input_file(p, "checkpoint", "a checkpoint file")  # a folder was "checkpoint not found"
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated / foreign / unsafe files are user errors
        raise InputError(f"{p} is not a readable xraypose checkpoint: {_unreadable_reason(p, e)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{p} is not an xraypose pose-regressor checkpoint")
    version = ckpt.get("version", -1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise InputError(f"checkpoint {p}: its version must be a whole number, got {version!r}")
    if version > CHECKPOINT_VERSION:
        raise InputError(f"{p} was written by a newer xraypose (checkpoint version {version})")
    for key in ("model", "meta"):
        if key not in ckpt:
            raise InputError(f"checkpoint {p} lacks its {key!r} entry")
    if not isinstance(ckpt["meta"], dict):
        raise InputError(f"checkpoint {p}: its 'meta' entry must be a dict, got {type(ckpt['meta']).__name__}")
    state = ckpt["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"checkpoint {p}: its 'model' entry must be a dict of tensors (the weights), "
                         f"got {type(state).__name__}")
    return ckpt


def _unreadable_reason(p: Path, exc: Exception) -> str:
    """Why ``torch.load`` could not read ``p``, in the user's terms (PyTorch's own messages tell them to
    re-run ``torch.load`` with ``weights_only=False``, name miniz, or hold terminal escape codes)."""
    import pickle
    import re
    import zipfile

    from xraypose._checks import one_line

    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
        size = p.stat().st_size
    except OSError as e:
        return f"cannot read it ({one_line(e)})"
    if size == 0:
        return "the file is empty (0 bytes)"
    kind = next((name for magic, name in _OTHER_FORMATS if head.startswith(magic)), None)
    if kind is not None:
        return f"it is {kind}, not a PyTorch file (the zip archive torch.save writes)"
    is_zip = head.startswith(b"PK\x03\x04")  # torch.save's format; before PyTorch 1.6 a pickle
    if is_zip and not zipfile.is_zipfile(p):
        return (f"the file is truncated or damaged (its zip archive has no end; {size} bytes: an interrupted copy "
                "or download?)")
    if isinstance(exc, pickle.UnpicklingError):
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            return (f"it holds Python objects ({found.group(1)}) besides tensors and plain values, which xraypose "
                    "does not load (they could run code)")
    if not is_zip and not head.startswith(b"\x80"):
        return "it is not a PyTorch file (the zip archive torch.save writes)"
    reason = re.sub(r"\x1b\[[0-9;]*m", "", one_line(exc))
    return f"it is damaged ({type(exc).__name__}: {reason[:160]})"


#: First bytes of files given for a model by mistake → what they are.
_OTHER_FORMATS = ((b"\x1f\x8b", "gzip-compressed data (a .nii.gz CT?)"), (b"\x89PNG", "a PNG image"),
                  (b"\x93NUMPY", "a NumPy .npy array"), (b"\x89HDF", "an HDF5 file"), (b"II*\x00", "a TIFF image"),
                  (b"MM\x00*", "a TIFF image"), (b"{", "text (JSON?)"))


def _check_meta(p, meta: dict) -> None:
    """Refuse a checkpoint whose meta lacks what :func:`predict_pose` needs (the training camera and
    normalisation), so a bad file is named when it is loaded, not halfway through a registration."""
    missing = [k for k in ("camera", "normalization") if k not in meta]
    if missing:
        raise InputError(f"checkpoint {p}: its meta lacks {', '.join(map(repr, missing))} "
                         "(a model file written by `xraypose train` holds them)")
    try:
        Camera.from_dict(meta["camera"])
    except (TypeError, ValueError, AttributeError) as e:  # InputError is a ValueError
        raise InputError(f"checkpoint {p}: its training camera is unusable ({e})") from None
    nrm = meta["normalization"]
    ok = isinstance(nrm, dict) and all(
        isinstance(nrm.get(k), (int, float)) and not isinstance(nrm.get(k), bool) and math.isfinite(nrm[k])
        for k in ("mean", "std"))
    if not ok or not nrm["std"] > 0:
        raise InputError(f"checkpoint {p}: its normalization must hold a finite 'mean' and a positive 'std', "
                         f"got {nrm!r}")


def _state_mismatch(model: nn.Module, state: dict) -> str:
    """One line on how the tensors of ``state`` differ from ``model``'s: counts and the first names."""
    own = model.state_dict()

    def first(names: list[str]) -> str:
        return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

    missing = [str(k) for k in own if k not in state]
    unexpected = [str(k) for k in state if k not in own]
    resized = [f"{k} {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the network"
               for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    parts = [f"{len(names)} {what} ({first(names)})" for what, names in
             (("missing", missing), ("unexpected", unexpected), ("of another shape", resized)) if names]
    return "; ".join(parts) or "the tensors do not load"


def load_checkpoint(path, map_location="cpu") -> tuple[PoseRegressor, dict]:
    """Load a trained regressor for inference: ``(model in eval mode, meta)``.

    ``meta`` holds what is needed to use the model on a new X-ray:
    ``camera`` (training Camera as ``Camera.to_dict()``, at the training image size),
    ``image_size`` [H, W], ``isocenter_pose`` (4×4 camera_to_world), ``isocenter``
    (3,), ``sod_mm``, ``parameterization``, ``convention``, ``architecture``,
    ``normalization`` {"mean", "std", "fill"}, ``density``, ``volume`` (the training
    CT's shape, spacing, affine, source and content fingerprint: :func:`volume_record`;
    :func:`check_training_volume` refuses another CT) and ``training`` (steps, images, config).

    Raises:
        InputError: one line naming the file: not a checkpoint, a bad version, meta or weights entry,
            an architecture that cannot be built, weights that do not fit it (the first names), or a
            meta without a usable ``camera`` / ``normalization``.
    """
    ckpt = read_checkpoint(path, map_location)
    meta = ckpt["meta"]
    if "architecture" not in meta:
        raise InputError(f"checkpoint {path}: its meta lacks 'architecture' (a model file written by "
                         "`xraypose train` holds it)")
    try:
        model = build_model(meta["architecture"])
    except InputError as e:
        raise InputError(f"checkpoint {path}: {e}") from None
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError:  # torch's message spans many lines: summarise it on one
        raise InputError(f"checkpoint {path}: the weights do not fit its own architecture "
                         f"({meta['architecture'].get('backbone')}): {_state_mismatch(model, ckpt['model'])}") from None
    _check_meta(path, meta)
    check_finite_weights(ckpt, path)
    model.to(map_location if map_location is not None else "cpu")
    model.eval()
    return model, meta


def check_finite_weights(ckpt: dict, path) -> None:
    """InputError naming the file and the first tensors when a checkpoint's (:func:`read_checkpoint`'s dict) weights
    hold NaN or infinite values: every pose the model predicts would be NaN ("the model predicted a pose with NaN"
    named no file nor cause; a ``train --finetune`` from it trained on, to a validation of NaN poses)."""
    bad = [str(k) for k, v in ckpt["model"].items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise InputError(f"checkpoint {path}: its weights hold NaN or infinite values ({', '.join(bad[:3])}"
                         f"{', ...' if len(bad) > 3 else ''}): a training that diverged? Use an earlier checkpoint")


# --------------------------------------------------------------------------- the training CT
class OtherCTWarning(UserWarning):
    """A model is used with a CT other than the one it was trained on (allowed explicitly), or cannot be checked."""


_BLOCKS = 4  # the content fingerprint: means of 4×4×4 blocks of voxels


def volume_record(volume: Volume) -> dict:
    """What a checkpoint's ``meta["volume"]`` records of the training CT.

    ``{"source", "shape" [I, J, K], "spacing" [3] mm, "affine" 4×4 (voxel → world RAS mm),
    "block_means" [64]}``: the last is a cheap content fingerprint, the mean voxel value
    (e.g. HU) of each of 4×4×4 blocks, robust to the rounding of a re-saved file.
    """
    data = torch.as_tensor(volume.data).detach().to("cpu", torch.float32)
    blocks = F.adaptive_avg_pool3d(data[None, None], (_BLOCKS,) * 3).reshape(-1)
    return {"source": str(getattr(volume, "source", "")), "shape": [int(n) for n in volume.shape],
            "spacing": [float(x) for x in volume.spacing], "affine": volume.affine.tolist(),
            "block_means": [float(f"{float(x):.6g}") for x in blocks]}


def _fmt_shape(rec) -> str:
    sh = "×".join(str(int(n)) for n in rec["shape"])
    sp = rec.get("spacing")
    return sh + (f" voxels of {'×'.join(f'{float(x):.3g}' for x in sp)} mm" if sp else " voxels")


def training_volume_mismatch(meta: dict, volume: Volume) -> str | None:
    """How ``volume`` differs from the CT the checkpoint (its ``meta``) was trained on, or None.

    Compared: the shape, the voxel → world affine (0.01 mm, 1e-4 in the rotation), and the
    content fingerprint (block means within 0.2 % of their range) when the checkpoint has one.
    Raises nothing; a checkpoint without the record gives None (see :func:`check_training_volume`).
    """
    rec = meta.get("volume") if isinstance(meta, dict) else None
    if not isinstance(rec, dict) or "shape" not in rec:
        return None
    now = volume_record(volume)
    if [int(n) for n in rec["shape"]] != now["shape"]:
        return f"it was trained on a CT of {_fmt_shape(rec)}, this CT has {_fmt_shape(now)}"
    if "affine" in rec:
        a, b = torch.tensor(rec["affine"], dtype=torch.float64), volume.affine.to(torch.float64)
        if tuple(a.shape) != (4, 4) or not (torch.allclose(a[:3, :3], b[:3, :3], atol=1e-4 * float(b[:3, :3].abs().max()))
                                            and torch.allclose(a[:3, 3], b[:3, 3], atol=1e-2)):
            return (f"it was trained on a CT placed elsewhere in the world (voxel → world affine: origin "
                    f"{[round(float(x), 1) for x in a[:3, 3]]} mm, this CT's {[round(float(x), 1) for x in b[:3, 3]]} mm)")
    if "block_means" in rec:
        a, b = torch.tensor(rec["block_means"], dtype=torch.float64), torch.tensor(now["block_means"], dtype=torch.float64)
        span = float(torch.cat([a, b]).max() - torch.cat([a, b]).min())
        diff = float((a - b).abs().max()) if a.shape == b.shape else math.inf
        if diff > 2e-3 * max(span, 1e-6):
            return (f"it was trained on a CT of the same size and place but other voxel values (block means differ "
                    f"by up to {diff:.3g})")
    return None


def check_training_volume(meta: dict, volume: Volume, *, allow_other_ct: bool = False, what: str = "the model") -> None:
    """Refuse to use a model with a CT other than the one it was trained on.

    Args:
        meta: the checkpoint's meta (:func:`load_checkpoint`).
        volume: the CT the model is about to be used with.
        allow_other_ct: use it anyway, with an :class:`OtherCTWarning`.
        what: the model's name in messages (e.g. its file).
    Raises:
        InputError: ``volume`` is not the training CT (shape, affine or content differ).
    A checkpoint without a record of its CT (written before xraypose recorded it) gives an
    :class:`OtherCTWarning` that it cannot be checked, and is used.
    """
    import warnings

    rec = meta.get("volume") if isinstance(meta, dict) else None
    if not isinstance(rec, dict) or "shape" not in rec:
        warnings.warn(f"{what} does not record the CT it was trained on (an older checkpoint): "
                      "it cannot be checked against this CT", OtherCTWarning, stacklevel=2)
        return
    why = training_volume_mismatch(meta, volume)
    if why is None:
        return
    if allow_other_ct:
        warnings.warn(f"{what} was trained on another CT ({why}); using it anyway (--allow-other-ct)",
                      OtherCTWarning, stacklevel=2)
        return
    raise InputError(f"{what} was trained on another CT: {why}; use the CT it was trained on, "
                     "or allow another CT explicitly (--allow-other-ct)")


# --------------------------------------------------------------------------- input contract
def _shrink_factor(src: Camera, dst: Camera) -> tuple[float, float]:
    """Source pixels per destination pixel along (v, u) (the rays' angular pixel pitch ratio)."""
    return dst.dely / dst.sdd / (src.dely / src.sdd), dst.delx / dst.sdd / (src.delx / src.sdd)


def resample_to_camera(image: torch.Tensor, camera: Camera, target: Camera) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample images taken with ``camera`` onto the detector grid of ``target`` (the model's input).

    (Not :func:`xraypose.register.initializers.resample_pinhole`, which prefilters with a Gaussian, fills
    outside rays with a constant and returns the image alone.)

    Both cameras have their source at the origin of the camera frame, so the
    same pose sees the same rays; a pixel ``p`` of ``target`` looks along
    ``K_t⁻¹ p`` and meets ``camera``'s detector at ``K_c K_t⁻¹ p``.  This handles
    any difference in sdd, pixel spacing, detector size, principal point and
    mirroring.  When ``camera``'s rays are finer than ``target``'s, the image is
    first shrunk with antialiasing over its own physical detector
    (:meth:`Camera.resize`), then sampled bilinearly.

    Args:
        image: (B, 1, H, W) with (H, W) = (camera.height, camera.width).
    Returns:
        (B, 1, h, w) resampled image and (1, 1, h, w) bool mask of the target
        pixels that fall on ``camera``'s detector.
    """
    if image.dim() != 4 or image.shape[1] != 1:
        raise InputError(f"X-ray must be (B, 1, H, W), got shape {tuple(image.shape)}")
    if tuple(image.shape[-2:]) != (camera.height, camera.width):
        raise InputError(
            f"X-ray image is {image.shape[-2]}×{image.shape[-1]} pixels but its camera describes a "
            f"{camera.height}×{camera.width} detector"
        )
    img = image.float()
    sv, su = _shrink_factor(camera, target)
    if sv > 1.0 + 1e-6 or su > 1.0 + 1e-6:
        h2 = max(1, round(camera.height / max(sv, 1.0)))
        w2 = max(1, round(camera.width / max(su, 1.0)))
        if (h2, w2) != (camera.height, camera.width):
            img = F.interpolate(img, size=(h2, w2), mode="bilinear", antialias=True, align_corners=False)
            camera = camera.resize(h2, w2)
    H, W = camera.height, camera.width
    M = camera.K(torch.float64) @ target.K_inv(torch.float64)
    uv = target.pixel_grid(dtype=torch.float64)
    p = torch.cat([uv, torch.ones_like(uv[:, :1])], -1) @ M.T
    src = p[:, :2] / p[:, 2:3]
    valid = (src[:, 0] >= -0.5) & (src[:, 0] <= W - 0.5) & (src[:, 1] >= -0.5) & (src[:, 1] <= H - 0.5)
    grid = torch.stack([(2 * src[:, 0] + 1) / W - 1, (2 * src[:, 1] + 1) / H - 1], -1).float()
    grid = grid.reshape(1, target.height, target.width, 2).expand(img.shape[0], -1, -1, -1).to(img.device)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mask = valid.reshape(1, 1, target.height, target.width).to(img.device)
    return out * mask, mask


def normalize_images(images: torch.Tensor, valid: torch.Tensor | None, mean: float, std: float,
                     fill: float = 0.0) -> torch.Tensor:
    """Min–max to [0, 1] over the valid pixels of each image, ``fill`` elsewhere, then ``(x − mean)/std``."""
    x = images.float()
    B = x.shape[0]
    if valid is None:
        flat = x.reshape(B, -1)
        lo, hi = flat.amin(1), flat.amax(1)
    else:
        v = valid.expand_as(x).reshape(B, -1)
        flat = x.reshape(B, -1)
        inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
        lo = torch.where(v, flat, inf).amin(1)
        hi = torch.where(v, flat, -inf).amax(1)
    scale = (hi - lo)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    y = (x - lo.view(B, 1, 1, 1)) / scale.view(B, 1, 1, 1)
    if valid is not None:
        y = torch.where(valid.expand_as(y), y, torch.full_like(y, float(fill)))
    return (y - float(mean)) / float(std)


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def predict_pose(model: nn.Module, meta: dict, image: torch.Tensor, camera: Camera) -> torch.Tensor:
    """Pose of X-rays from a trained regressor.

    Args:
        model, meta: from :func:`load_checkpoint`.
        image: (B, 1, H, W) or (H, W) X-ray in line-integral form (bone bright:
            ``log I0 − log I``, collimator border already cropped), on ``camera``.
        camera: the X-ray's intrinsics (any detector size, spacing, sdd,
            principal point or mirror: the image is resampled to the training
            detector by the physical geometry, :func:`resample_to_camera`).
    Returns:
        (B, 4, 4) float64 ``camera_to_world``.  It is the pose of ``camera``
        itself: both cameras have their source at the camera-frame origin, so
        no correction is needed.
    """
    from xraypose.similarity import check_image

    img = torch.as_tensor(image)
    if img.dim() == 2:
        img = img[None, None]
    check_image(img, "X-ray")
    train_cam = Camera.from_dict(meta["camera"])
    x, valid = resample_to_camera(img.float().cpu(), camera, train_cam)
    if not bool(valid.any()):
        raise InputError("the X-ray's detector does not overlap the training field of view; check its intrinsics")
    frac = float(valid.float().mean())
    if frac < 0.25:
        raise InputError(
            f"the X-ray covers only {100 * frac:.0f}% of the training field of view; "
            "train with a camera like the X-ray's"
        )
    nrm = meta["normalization"]
    x = normalize_images(x, valid, nrm["mean"], nrm["std"], nrm.get("fill", 0.0))
    was_training = model.training
    model.eval()
    try:
        T = model(x.to(_model_device(model)))
    finally:
        model.train(was_training)
    return T.detach().to("cpu", torch.float64)
