"""The registry of appearance families and :func:`form_xray`, the one entry point that dispatches through it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from xraypose.appearance.params import Params
from xraypose.camera import Camera
from xraypose._checks import check_instance
from xraypose.errors import InputError

if TYPE_CHECKING:
    from xraypose.volume import Volume

__all__ = ["FormedXray", "Family", "FAMILIES", "Context", "register_family", "form_xray"]

F64 = torch.float64


@dataclass
class FormedXray:
    """A target X-ray and what a user of it needs.

    Attributes:
        raw: (H, W) float32 detector image as a file would store it (raw
            counts, or a display image).
        camera: the camera of ``raw`` (the input camera unless the family
            changes the geometry, e.g. "narrow_fov").
        pose: (4, 4) float64 camera_to_world of ``raw`` (world = CT RAS mm).
        preprocess: keyword arguments for ``xraypose.preprocess.preprocess(raw,
            camera, **preprocess)`` that make it line-integral-like, bone bright.
        info: JSON-able record: the family and every parameter used.
        foreign: (H, W) bool of pixels whose content is not in the CT
            (implants, displaced bone), or None.
        parameters: the names in ``info`` that are parameters (each can be fixed:
            ``form_xray(..., **{name: info[name]})`` forms the same X-ray's kind again);
            the others are values derived from them (e.g. ``effective_kev``).
    """

    raw: torch.Tensor
    camera: Camera
    pose: torch.Tensor
    preprocess: dict
    info: dict
    foreign: torch.Tensor | None = None
    parameters: tuple = ()


class Family(str):
    """A family's short description (a ``str``) carrying its builder ``build(ctx) -> FormedXray``."""

    build: Callable

    def __new__(cls, description: str, build: Callable):
        obj = str.__new__(cls, description)
        obj.build = build
        return obj


#: name → short description (a :class:`Family`); :func:`form_xray` dispatches through it.
FAMILIES: dict[str, Family] = {}


def register_family(name: str, description: str):
    """Decorator registering ``build(ctx)`` as the family ``name``."""

    def deco(fn):
        FAMILIES[name] = Family(description, fn)
        return fn

    return deco


@dataclass
class Context:
    """What a family's builder gets: the CT, the camera and pose asked for, the parameter drawer."""

    volume: Volume
    camera: Camera
    pose: torch.Tensor  # (4, 4) float64
    p: Params
    generator: torch.Generator


def _as_pose(T) -> torch.Tensor:
    T = torch.as_tensor(T).detach().to(F64).cpu()
    if T.dim() == 3 and T.shape[0] == 1:
        T = T[0]
    if tuple(T.shape) != (4, 4):
        raise InputError(f"camera_to_world must be one (4, 4) pose, got shape {tuple(T.shape)}")
    if not bool(torch.isfinite(T).all()):
        raise InputError("camera_to_world has NaN or infinite entries")
    return T


def form_xray(volume: Volume, camera: Camera, camera_to_world, family: str = "ours",
              generator: torch.Generator | None = None, **overrides) -> FormedXray:
    """Form a target X-ray of ``volume`` seen by ``camera`` from ``camera_to_world`` (4, 4), one family's way.

    Args:
        volume: the CT (:class:`xraypose.volume.Volume`, HU).
        camera: the detector asked for.
        camera_to_world: (4, 4) pose, world = CT RAS mm.
        family: a key of :data:`FAMILIES`.
        generator: draws the family's parameters, then the noise (seeded →
            reproducible); None: a generator seeded with 0.
        **overrides: fix any parameter by its name in ``info`` (an unknown
            name raises :class:`InputError`).
    """
    if family not in FAMILIES:
        raise InputError(f"unknown appearance family {family!r}; choose one of: {', '.join(FAMILIES)}")
    check_instance("camera", camera, Camera)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    p = Params(family, g, overrides)
    ctx = Context(volume=volume, camera=camera, pose=_as_pose(camera_to_world), p=p, generator=g)
    fx = FAMILIES[family].build(ctx)
    fx.info = {"family": family, **p.finish()}
    fx.parameters = tuple(p.names)
    fx.raw = fx.raw.detach().to(torch.float32).cpu()
    fx.pose = fx.pose.to(F64).cpu()
    return fx
