"""``DRR``: a volume and a camera that render digitally reconstructed radiographs."""

from __future__ import annotations

import torch
from torch import nn

from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.render.core import render
from xraypose.render.sparse import mask_pixels, patch_pixels

from xraypose.volume import DENSITY_MODELS, HU_AIR_MAX, HU_BONE_MIN


def density_basis(volume, model: str = "hu", structures=None) -> tuple[torch.Tensor, callable]:
    """Write a density model as (A + m·B) / norm(m), m = bone_attenuation_multiplier.

    Every density model of :meth:`Volume.density` is affine in the bone
    multiplier up to a scalar normalisation, so rendering the two channels A
    and B once gives the DRR for any multiplier, per batch element:
    ``drr(m) = (L_A + m·L_B) / norm(m)``.  (tests/test_drr.py checks this
    against rendering ``Volume.density(model, m)`` directly.)

    Returns:
        basis (2, I, J, K) float32 [A, B] (B may be all zero) and ``norm(m)``
        taking a tensor of multipliers to the divisor (same shape).  For the
        "hu" model, ``norm`` raises InputError for a multiplier so small that
        bone would fall below the soft-tissue minimum (never the case for
        m > 0 on a CT whose soft tissue reaches below 0 HU).
    """
    if model not in DENSITY_MODELS:
        raise InputError(f"unknown density model {model!r}; choose one of: {', '.join(DENSITY_MODELS)}")
    if model == "hu":
        volume.density("hu", bone_attenuation_multiplier=1.0)  # validates (constant volume, ...)
        hu = volume.data.to(torch.float32)
        bone = hu > HU_BONE_MIN
        air = hu <= HU_AIR_MAX
        soft = ~air & ~bone
        if not (soft.any() or air.any()):
            raise InputError("the CT has only bone-density voxels (> 350 HU); the 'hu' density model is undefined")
        c = float(hu[soft].min()) if soft.any() else float(HU_AIR_MAX)
        nonbone_max = float(hu[soft].max()) if soft.any() else c
        bmin = float(hu[bone].min()) if bone.any() else None
        bmax = float(hu[bone].max()) if bone.any() else None
        # v(m) = A0 + m·B with A0 = c (air), hu (soft), 0 (bone); density = (v − min) / (max − min).
        # min = c whenever m·bmin >= c, so fold −c into A: A = A0 − c (and −c on bone voxels).
        A = torch.where(bone, torch.full_like(hu, -c), torch.where(soft, hu - c, torch.zeros_like(hu)))
        Bc = torch.where(bone, hu, torch.zeros_like(hu))
        if structures is not None:
            sel = volume.structure_mask(structures).to(hu.device)
            A, Bc = A * sel, Bc * sel

        def norm(m: torch.Tensor) -> torch.Tensor:
            if bmin is not None and bool((m * bmin < c).any()):
                raise InputError(
                    f"bone_attenuation_multiplier {float(m.min()):g} is so small that bone falls below the "
                    f"soft-tissue minimum ({c:g} HU); use a larger multiplier"
                )
            mx = torch.full_like(m, nonbone_max)
            if bmax is not None:
                mx = torch.maximum(mx, m * bmax)
            return (mx - c).clamp_min(1e-12)

        return torch.stack([A, Bc]), norm
    d1 = volume.density(model, bone_attenuation_multiplier=1.0, structures=structures)
    d2 = volume.density(model, bone_attenuation_multiplier=2.0, structures=structures)
    Bc = d2 - d1
    A = d1 - Bc
    return torch.stack([A, Bc]), lambda m: torch.ones_like(m)


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
        volume,
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
        self.camera = camera
        self.renderer = renderer
        self.n_samples = n_samples
        self.step = step
        self.backend = backend
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
            # Channels-last storage: the fused CPU kernel reads all channels of a voxel at once.
            self.register_buffer("basis", basis.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2))
            self._norm = norm

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        t = self.density if self.volume_requires_grad else self.basis
        return tuple(t.shape[-3:])

    def _multipliers(self, m, B: int, device, dtype) -> torch.Tensor:
        if m is None:
            m = self.default_multiplier
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
        shape = (B,) + (1,) * (img.dim() - 1)
        out = img[:, :1]
        if img.shape[1] == 2:
            out = out + m.reshape(shape) * img[:, 1:2]
        return out / self._norm(m).reshape(shape)

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
            (B, 1, H, W); with ``mask`` (H, W) the same image, zero where the
            mask is False and only masked rays traced; with ``patches`` (P, 2)
            or (B, P, 2) centres (u, v): (B, P, patch_size, patch_size).
        """
        if camera_to_world is None:
            if rotation is None or translation is None:
                raise InputError("give a camera_to_world pose, or both rotation and translation")
            from xraypose.geometry import pose_from_params

            camera_to_world = pose_from_params(rotation, translation, parameterization, convention, degrees)
        if camera_to_world.dim() == 2:
            camera_to_world = camera_to_world.unsqueeze(0)
        B = camera_to_world.shape[0]
        H, W = self.camera.height, self.camera.width
        m = bone_attenuation_multiplier
        if mask is not None and patches is not None:
            raise InputError("give a mask or patches, not both")
        if mask is not None:
            uv = mask_pixels(mask.to(camera_to_world.device), self.camera)
            vals = self.render_pixels(camera_to_world, uv, m)  # (B, 1, R)
            img = vals.new_zeros(B, 1, H * W)
            flat = (uv[:, 1] * W + uv[:, 0]).long()
            img = img.index_copy(2, flat, vals)
            return img.reshape(B, 1, H, W)
        if patches is not None:
            uv = patch_pixels(patches.to(camera_to_world.device), patch_size)
            vals = self.render_pixels(camera_to_world, uv, m)  # (B, 1, P·S²)
            return vals.reshape(B, -1, patch_size, patch_size)
        return self.render_pixels(camera_to_world, None, m)
