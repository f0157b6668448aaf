"""Synthetic registration cases from a CT, shared by tests, benchmarks and demos.

A case is: a true pose drawn around an AP view (DiffPose's distribution,
:class:`~xraypose.sampling.PoseSampler`), a realistic raw X-ray of it
(:class:`~xraypose.synthetic.XraySimulator`: Siddon at twice the resolution,
area-averaged, physical μ, blur, Poisson noise, 16-bit, collimator border —
unlike registration's trilinear "hu" DRRs), the real-X-ray preprocessing
(collimator crop, 5×5 blur, Beer–Lambert, rescale), bone fiducials in the field
of view, and seeded starting poses perturbed by a fixed rotation angle about the
isocenter and a fixed translation length in random directions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.fiducials import bone_points, select_fiducials
from xraypose.geometry import make_transform, so3_exp
from xraypose.preprocess import preprocess
from xraypose.sampling import PoseSampler
from xraypose.synthetic import XraySimulator

if TYPE_CHECKING:
    from xraypose.volume import Volume

__all__ = ["SyntheticCase", "CaseMaker", "perturb_pose"]

F64 = torch.float64


@dataclass
class SyntheticCase:
    raw: torch.Tensor  # (H, W) raw 16-bit-like detector image
    raw_camera: Camera
    image: torch.Tensor  # (h, w) preprocessed (what registration sees)
    camera: Camera  # camera of ``image``
    true_pose: torch.Tensor  # (4, 4) float64 camera_to_world of ``image``
    fiducials: torch.Tensor  # (N, 3) world mm
    index: int
    preprocessing: list


def _unit_vectors(n: int, g: torch.Generator) -> torch.Tensor:
    v = torch.randn(n, 3, generator=g, dtype=F64)
    return v / v.norm(dim=-1, keepdim=True)


def perturb_pose(T: torch.Tensor, isocenter, angle_deg: float, translation_mm: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Poses (B, 4, 4) turned by exactly ``angle_deg`` about a random axis through ``isocenter``
    and then shifted by exactly ``translation_mm`` in a random direction (world frame)."""
    T = torch.as_tensor(T, dtype=F64).reshape(-1, 4, 4)
    B = T.shape[0]
    g = generator or torch.Generator().manual_seed(0)
    axes = _unit_vectors(B, g)
    dirs = _unit_vectors(B, g)
    R = so3_exp(axes * math.radians(angle_deg))
    iso = torch.as_tensor(isocenter, dtype=F64).reshape(3)
    C = make_transform(R, iso - R @ iso + dirs * translation_mm)
    return C @ T


class CaseMaker:
    """Makes synthetic cases of one CT.

    Args:
        volume: the CT.
        camera: the raw detector (default: 128×128, 280 mm wide, sdd 1020 mm).
        sod: source-to-isocenter distance, mm.
        collimator_px: dark border of the raw X-ray (cropped by the preprocessing, + 2 px).
        n_fiducials: bone fiducials per case (in the field of view of the true pose).
        seed: seeds poses, noise and fiducials (case i uses seed + i).
    """

    def __init__(self, volume: Volume, camera: Camera | None = None, sod: float = 612.0, collimator_px: int = 4,
                 n_fiducials: int = 20, seed: int = 0, photons: float = 1e5, sampler: PoseSampler | None = None):
        self.volume = volume
        self.raw_camera = camera or Camera(sdd=1020.0, height=128, width=128, delx=280.0 / 128)
        self.sod = float(sod)
        self.collimator_px = int(collimator_px)
        self.n_fiducials = int(n_fiducials)
        self.seed = int(seed)
        self.sampler = sampler or PoseSampler.for_volume(volume, sod=self.sod)
        self._bone = None
        self.simulator = XraySimulator(volume, self.raw_camera, supersample=2, photons=photons, blur_px=0.7,
                                       collimator_px=self.collimator_px)

    def true_pose(self, i: int) -> torch.Tensor:
        if self._bone is None:
            self._bone = bone_points(self.volume)
        g = torch.Generator().manual_seed(self.seed * 100003 + i)
        for _ in range(50):  # resample poses that would not see the CT's bone
            T = self.sampler.sample(1, generator=g, dtype=F64)[0]
            try:
                f = select_fiducials(self._bone, n=self.n_fiducials, seed=self.seed + i, camera=self.raw_camera,
                                     poses=T, margin_px=self.collimator_px + 4)
            except InputError:
                continue
            if f.shape[0] == self.n_fiducials:
                return T, f
        raise InputError("could not draw a pose whose X-ray sees the CT's bone")

    def case(self, i: int) -> SyntheticCase:
        T, fid = self.true_pose(i)
        g = torch.Generator().manual_seed(self.seed * 100003 + i + 7)
        sim = self.simulator(T, generator=g)
        raw = sim.raw[0, 0]
        pre = preprocess(raw, self.raw_camera, crop=self.collimator_px + 2, blur=(5, 1.0), log=True, i0=sim.i0,
                         rescale=True)
        return SyntheticCase(raw=raw, raw_camera=self.raw_camera, image=pre.image, camera=pre.camera,
                             true_pose=pre.transform_pose(T), fiducials=fid, index=i, preprocessing=pre.steps)

    def starts(self, case: SyntheticCase, angle_deg: float, translation_mm: float) -> torch.Tensor:
        """(4, 4) start of ``case`` perturbed by a fixed angle and translation (seeded per case)."""
        g = torch.Generator().manual_seed(self.seed * 7919 + case.index * 31 + int(angle_deg * 10))
        return perturb_pose(case.true_pose, self.volume.get_isocenter(), angle_deg, translation_mm, g)[0]
