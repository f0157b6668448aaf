"""The training data: the CT and camera of a config, poses to learn, DRR bases, and the replay buffer.

Every step draws from its own generator, seeded by (seed, rank, step, micro-batch)
(:func:`step_generator`), so the data of a step do not depend on the history and resuming is exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from xraypose.camera import Camera, default_sod
from xraypose.errors import InputError
from xraypose.train.config import CameraConfig, RenderConfig, TrainConfig

if TYPE_CHECKING:
    from xraypose.volume import Volume

__all__ = ["mix_seed", "step_generator", "make_camera", "load_volume", "make_sampler", "check_geometry",
           "render_basis", "ReplayBuffer"]


def mix_seed(*parts: int) -> int:
    """A 63-bit seed mixed from whole numbers (splitmix64 steps): nearby inputs give unrelated seeds."""
    h = 0x9E3779B97F4A7C15
    for x in parts:
        h = (h ^ (int(x) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def step_generator(seed: int, rank: int, step: int, stream: int = 0) -> torch.Generator:
    """The generator of one step's data (``stream``: the micro-batch)."""
    return torch.Generator().manual_seed(mix_seed(seed, rank, step, stream))


def make_camera(cfg: CameraConfig) -> Camera:
    """The training detector: ``height`` × ``width`` pixels, ``delx = fov_mm / width`` mm unless given."""
    W = cfg.width or cfg.height
    delx = cfg.delx if cfg.delx is not None else cfg.fov_mm / W
    return Camera(sdd=cfg.sdd, height=int(cfg.height), width=int(W), delx=delx, dely=cfg.dely, x0=cfg.x0, y0=cfg.y0,
                  reverse_x_axis=bool(cfg.reverse_x_axis))


def load_volume(ct):
    """A :class:`~xraypose.volume.Volume` from a Volume, a CT path or ``"sample"``; refuses CTs too small to learn."""
    from xraypose.limits import check_registrable_ct
    from xraypose.volume import Volume, load_ct

    vol = ct if isinstance(ct, Volume) else load_ct(ct)
    check_registrable_ct(vol)  # a 1×1×2 CT has no poses to learn
    return vol


def make_sampler(volume: Volume, cfg: TrainConfig):
    """``(PoseSampler, sod)``: the training poses about the volume's (or ``sampler.isocenter``'s) isocenter;
    ``sod`` (mm) is ``sampler.sod`` or :func:`~xraypose.camera.default_sod` (0.6·``camera.sdd``)."""
    from xraypose.sampling import PoseSampler

    s = cfg.sampler
    sod = s.sod if s.sod is not None else default_sod(cfg.camera.sdd)
    kw = dict(distribution=s.distribution, rot_std=tuple(s.rot_std), trans_mean=tuple(s.trans_mean),
              trans_std=tuple(s.trans_std), rot_range=tuple(s.rot_range), trans_range=tuple(s.trans_range))
    if s.isocenter is not None:
        vol = _WithIsocenter(volume, s.isocenter)
    else:
        vol = volume
    return PoseSampler.for_volume(vol, sod=sod, primary=s.primary, secondary=s.secondary, scale=s.scale, **kw), sod


class _WithIsocenter:
    """The volume as :meth:`PoseSampler.for_volume` reads it, with another isocenter (world mm)."""

    def __init__(self, volume: Volume, iso):
        self.v, self.iso = volume, torch.as_tensor(iso, dtype=torch.float64)

    def get_isocenter(self):
        return self.iso

    @property
    def extent_mm(self):
        return self.v.extent_mm


#: The detector's field at the isocenter must span at least this many of the CT's (largest) voxels.
MIN_FIELD_VOXELS = 2


def check_geometry(volume: Volume, camera: Camera, sampler, sod: float, drr) -> None:
    """Refuse set-ups that cannot train: source inside the CT, a field at the isocenter of a few voxels (a pixel
    size in the wrong unit), a CT that barely fills the view, a flat DRR."""
    from xraypose.render import render
    from xraypose.similarity import check_image

    T0 = sampler.isocenter_pose
    src = T0[:3, 3]
    idx = volume.world_to_voxel(src)
    n = torch.tensor(volume.shape, dtype=torch.float64)
    if bool(((idx >= -0.5) & (idx <= n - 0.5)).all()):
        raise InputError(
            f"the X-ray source ({sod:g} mm from the isocenter) lies inside the CT box "
            f"({' × '.join(f'{x:.0f}' for x in volume.extent_mm.tolist())} mm); increase sampler.sod"
        )
    fov = camera.detector_size_mm  # (rows, columns) mm
    seen = [float(x) * sod / camera.sdd for x in fov]  # mm at the isocenter
    voxel = float(volume.spacing.max())
    if min(seen) < MIN_FIELD_VOXELS * voxel:
        raise InputError(
            f"the detector ({fov[1]:.3g} × {fov[0]:.3g} mm) sees {seen[1]:.3g} × {seen[0]:.3g} mm at the isocenter, "
            f"less than {MIN_FIELD_VOXELS} of the CT's {voxel:g} mm voxels: its DRRs would be nearly uniform; "
            "check camera.delx / camera.dely / camera.fov_mm (mm, not m or µm)"
        )
    small = camera.resize(min(32, camera.height), min(32, camera.width))
    # Which rays of the isocenter view cross the CT box: render a box of ones with the CT's affine.
    box_affine = volume.affine.clone()
    box_affine[:3, :3] = volume.affine[:3, :3] * (n / 2).view(1, 3)
    box_affine[:3, 3] = volume.voxel_to_world(n / 4 - 0.5)
    ones = torch.ones(2, 2, 2)
    L = render(ones, box_affine, small, T0.unsqueeze(0), n_samples=8, backend="reference")
    frac = float((L > 1e-6).float().mean())
    if frac < 0.5:
        ext = " × ".join(f"{x:.0f}" for x in volume.extent_mm.tolist())
        iso = volume.world_to_voxel(sampler.isocenter.to(torch.float64))
        if not bool(((iso >= -0.5) & (iso <= n - 0.5)).all()):  # was "the CT is too small for the field of view"
            box = [[round(float(x), 1) for x in f(volume.corners, 0).values] for f in (torch.min, torch.max)]
            raise InputError(
                f"config: sampler.isocenter = {[round(float(x), 1) for x in sampler.isocenter]} lies outside the CT "
                f"(world RAS mm, {box[0]} to {box[1]}), which covers {100 * frac:.0f}% of the detector at the "
                "isocenter view; give a point inside it"
            )
        fov = camera.detector_size_mm
        raise InputError(
            f"the CT ({ext} mm) is too small for the field of view: it covers {100 * frac:.0f}% of the "
            f"{fov[1]:.0f} × {fov[0]:.0f} mm detector at the isocenter view; use a smaller camera.fov_mm "
            "or a larger CT"
        )
    # The sampled poses must see it too: translations of 10⁵ mm trained on blank DRRs without a word
    draws = sampler.sample(64, torch.Generator().manual_seed(0), dtype=torch.float64)
    cover = (render(ones, box_affine, camera.resize(16, 16), draws, n_samples=8, backend="reference") > 1e-6)
    seen = int((cover.flatten(1).float().mean(1) >= 0.05).sum())
    if seen < 32:
        raise InputError(
            f"config: the sampler's poses leave the CT out of view: {64 - seen} of 64 drawn show less than 5% of it; "
            "check sampler.trans_mean / trans_std / trans_range (mm) and rot_std / rot_range (radians)"
        )
    with torch.no_grad():
        img = drr(T0.float().unsqueeze(0).to(drr.basis.device))
    check_image(img, "the DRR of the isocenter view")


def render_basis(drr, camera: Camera, poses: torch.Tensor, cfg: RenderConfig) -> torch.Tensor:
    """The DRR basis ``(B, C, H, W)`` of ``drr`` at ``poses`` ``(B, 4, 4)`` camera_to_world, without gradients."""
    from xraypose.render import render

    with torch.no_grad():
        return render(drr.basis, drr.affine, camera, poses.to(drr.basis.device, torch.float32), renderer=cfg.renderer,
                      n_samples=cfg.n_samples, step=cfg.step, backend=cfg.backend)


class ReplayBuffer:
    """Ring buffer of rendered DRR bases ``(capacity, C, H, W)`` and their poses ``(capacity, 4, 4)``."""

    def __init__(self, capacity: int, channels: int, H: int, W: int, device):
        self.images = torch.zeros(capacity, channels, H, W, device=device)
        self.poses = torch.zeros(capacity, 4, 4, device=device)
        self.filled, self.pos = 0, 0

    def push(self, images: torch.Tensor, poses: torch.Tensor) -> None:
        n, cap = images.shape[0], self.images.shape[0]
        idx = (self.pos + torch.arange(n)) % cap
        self.images[idx.to(self.images.device)] = images
        self.poses[idx.to(self.poses.device)] = poses.to(self.poses)
        self.pos = int((self.pos + n) % cap)
        self.filled = min(cap, self.filled + n)

    def sample(self, n: int, g: torch.Generator, newest: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` entries: the ``newest`` pushed last, the rest uniformly at random among the filled slots."""
        cap = self.images.shape[0]
        fresh = (self.pos - 1 - torch.arange(min(newest, n, self.filled))) % cap
        rest = torch.randint(self.filled, (n - fresh.numel(),), generator=g)  # slots 0..filled-1 are the filled ones
        idx = torch.cat([fresh, rest]).to(self.images.device)
        return self.images[idx], self.poses[idx]

    def state_dict(self) -> dict:
        return {"images": self.images.cpu(), "poses": self.poses.cpu(), "filled": self.filled, "pos": self.pos}

    def load_state_dict(self, d: dict) -> None:
        if tuple(d["images"].shape) != tuple(self.images.shape):
            raise InputError("the checkpoint's replay buffer does not fit this configuration")
        self.images.copy_(d["images"])
        self.poses.copy_(d["poses"])
        self.filled, self.pos = int(d["filled"]), int(d["pos"])
