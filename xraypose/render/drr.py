"""``DRR``: a volume and a camera that render digitally reconstructed radiographs."""

from __future__ import annotations

import math

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from xraypose._checks import check_instance, check_number
from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.render.core import _check_pose, check_rigid_pose, render
from xraypose.render.sparse import mask_pixels, patch_pixels

from xraypose.render.density import DENSITY_MODELS, density_basis  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from xraypose.volume import Volume


class DRR(nn.Module):
    """Holds a volume and a camera; renders the DRR of a pose.

    Args:
        volume: a :class:`xraypose.volume.Volume`.
        camera: a :class:`xraypose.camera.Camera`.
        density: "hu" (seed model), "physical" (μ in 1/mm at ~70 keV) or "raw".
        renderer: "trilinear" or "siddon".
        n_samples / step: trilinear sampling (see :func:`render`).
        bone_attenuation_multiplier: default contrast of bone (overridable per call, per batch element).
        structures: label ids or names to render (needs a labelmap), None for all.
        volume_requires_grad: keep the density as a trainable parameter
            (``self.density``); the bone multiplier is then fixed at construction.
        backend: see :func:`render`.

    Call: ``drr(camera_to_world (B,4,4)) -> (B, 1, H, W)`` line integrals in mm·μ.
    """

    def __init__(
        self,
        volume: Volume,
        camera: Camera,
        density: str = "hu",
        renderer: str = "trilinear",
        n_samples: int | None = None,
        step: float | None = None,
        bone_attenuation_multiplier: float = 1.0,
        structures=None,
        volume_requires_grad: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        from xraypose.volume import Volume

        check_instance("volume", volume, Volume, " (volume_from_array makes one of an array)")
        check_instance("camera", camera, Camera)
        self.camera = camera
        self.renderer = renderer
        self.n_samples = n_samples
        self.step = step
        self.backend = backend
        check_number("bone_attenuation_multiplier", bone_attenuation_multiplier, lo=0, lo_open=True, prefix="")
        self.default_multiplier = float(bone_attenuation_multiplier)
        self.density_model = density
        self.register_buffer("affine", volume.affine.to(torch.float64).clone())
        self.register_buffer("isocenter", torch.as_tensor(volume.get_isocenter(), dtype=torch.float64).clone())
        self.volume_requires_grad = volume_requires_grad
        if volume_requires_grad:
            d = volume.density(density, bone_attenuation_multiplier=self.default_multiplier, structures=structures)
            self.density = nn.Parameter(d.to(torch.float32).clone())
            self._norm = None
        else:
            basis, norm = density_basis(volume, density, structures)
            if not bool((basis[1] != 0).any()):
                basis = basis[:1]
            self.register_buffer("basis", _basis_layout(basis))
            self._norm = norm

    def _apply(self, fn, recurse=True):
        """Moving the module (``.to``, ``.cuda``) also re-lays its basis out for the new device."""
        out = super()._apply(fn, recurse)
        if not self.volume_requires_grad:
            self.basis = _basis_layout(self.basis)
        return out

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        t = self.density if self.volume_requires_grad else self.basis
        return tuple(t.shape[-3:])

    def _multipliers(self, m, B: int, device, dtype) -> float | torch.Tensor:
        """One number for the batch (None: the default; checked in Python — no tensor whose check would
        wait for a GPU's queue), or (B,) per pose."""
        if m is None or (isinstance(m, (int, float)) and not isinstance(m, bool)):
            m = self.default_multiplier if m is None else float(m)
            if not (math.isfinite(m) and m > 0):
                raise InputError("bone_attenuation_multiplier must be finite and > 0")
            return m
        m = torch.as_tensor(m, dtype=dtype, device=device).reshape(-1)
        if m.numel() == 1:
            m = m.expand(B)
        if m.numel() != B:
            raise InputError(f"got {m.numel()} bone multipliers for a batch of {B} poses")
        if not torch.isfinite(m).all() or (m <= 0).any():
            raise InputError("bone_attenuation_multiplier must be finite and > 0")
        return m

    def render_pixels(self, camera_to_world: torch.Tensor, uv: torch.Tensor | None, bone_attenuation_multiplier=None):
        """(B, 1, R) line integrals at pixels ``uv`` (or (B, 1, H, W) when uv is None)."""
        m = bone_attenuation_multiplier
        if m is not None and not isinstance(m, (torch.Tensor, np.ndarray, list, tuple)):  # a text '2', a bool
            check_number("bone_attenuation_multiplier", m, lo=0, lo_open=True, prefix="")
        if camera_to_world.dim() == 2:
            camera_to_world = camera_to_world.unsqueeze(0)
        B = camera_to_world.shape[0]
        kw = dict(renderer=self.renderer, n_samples=self.n_samples, step=self.step, backend=self.backend)
        if self.volume_requires_grad:
            if bone_attenuation_multiplier is not None and float(
                torch.as_tensor(bone_attenuation_multiplier).float().mean()
            ) != self.default_multiplier:
                raise InputError("the bone multiplier is fixed when the volume itself is being optimised")
            return render(self.density, self.affine, self.camera, camera_to_world, uv=uv, **kw)
        img = render(self.basis, self.affine, self.camera, camera_to_world, uv=uv, **kw)
        m = self._multipliers(bone_attenuation_multiplier, B, img.device, img.dtype)
        n = self._norm(m)
        if torch.is_tensor(m):
            shape = (B,) + (1,) * (img.dim() - 1)
            m, n = m.reshape(shape), n.reshape(shape)
        out = img[:, :1] if img.shape[1] == 1 else img[:, :1] + m * img[:, 1:2]
        return out / n

    def forward(
        self,
        camera_to_world: torch.Tensor | None = None,
        *,
        rotation: torch.Tensor | None = None,
        translation: torch.Tensor | None = None,
        parameterization: str = "se3_log_map",
        convention: str | None = None,
        degrees: bool = False,
        bone_attenuation_multiplier=None,
        mask: torch.Tensor | None = None,
        patches: torch.Tensor | None = None,
        patch_size: int = 13,
    ) -> torch.Tensor:
        """Render DRRs.

        Give either ``camera_to_world`` (B, 4, 4) or ``rotation``/``translation``
        in a parameterization of :mod:`xraypose.geometry`.

        Returns:
            (B, 1, H, W) line integrals (density · mm); with ``mask`` (H, W) the same image, zero where the
            mask is False and only masked rays traced; with ``patches`` (P, 2)
            or (B, P, 2) centres (u, v): (B, P, patch_size, patch_size).
        """
        if camera_to_world is not None and (rotation is not None or translation is not None):
            raise InputError("give a camera_to_world pose or rotation and translation parameters, not both")  # the
            # parameters were ignored, silently
        if camera_to_world is None:
            if rotation is None or translation is None:
                raise InputError("give a camera_to_world pose, or both rotation and translation")
            from xraypose.geometry import pose_from_params

            camera_to_world = pose_from_params(rotation, translation, parameterization, convention, degrees)
        else:  # a numpy pose, as render() takes it; a user's pose is checked rigid (pose_from_params' is)
            camera_to_world = _check_pose(camera_to_world)
            check_rigid_pose(camera_to_world)
        if camera_to_world.dim() == 2:
            camera_to_world = camera_to_world.unsqueeze(0)
        B = camera_to_world.shape[0]
        H, W = self.camera.height, self.camera.width
        m = bone_attenuation_multiplier
        if mask is not None and patches is not None:
            raise InputError("give a mask or patches, not both")
        if mask is not None:
            uv = mask_pixels(torch.as_tensor(mask).to(camera_to_world.device), self.camera)
            vals = self.render_pixels(camera_to_world, uv, m)  # (B, 1, R)
            img = vals.new_zeros(B, 1, H * W)
            flat = (uv[:, 1] * W + uv[:, 0]).long()
            img = img.index_copy(2, flat, vals)
            return img.reshape(B, 1, H, W)
        if patches is not None:
            from xraypose.preprocess import as_real_tensor

            check_number("patch_size", patch_size, lo=1, integer=True, prefix="")  # 2.5: a TypeError of reshape
            patch_size = int(patch_size)
            centres = as_real_tensor(patches, "patches")
            if centres.dim() not in (2, 3) or centres.shape[-1] != 2:
                raise InputError(f"patches must be (P, 2) or (B, P, 2) pixel centres (u, v), got shape "
                                 f"{tuple(centres.shape)}")
            if not bool(torch.isfinite(centres).all()):  # a NaN centre rendered a patch of NaN, silently
                raise InputError("patches: a centre has NaN or infinite coordinates")
            uv = patch_pixels(centres.to(camera_to_world.device), patch_size)
            vals = self.render_pixels(camera_to_world, uv, m)  # (B, 1, P·S²)
            return vals.reshape(B, -1, patch_size, patch_size)
        return self.render_pixels(camera_to_world, None, m)


def _basis_layout(basis: torch.Tensor) -> torch.Tensor:
    """(C, I, J, K) ``basis`` stored as its device's kernel reads it: channels-last on the CPU (the fused
    kernel reads all channels of a voxel at once), channel planes elsewhere (the Triton kernel: the
    CPU's layout was copied whole on every call, 286 MiB a call on a 366×303×336 CT on an H200)."""
    if basis.device.type == "cpu":
        return basis.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)
    return basis.contiguous()
