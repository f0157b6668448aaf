"""Metal that is not in the CT: K-wires, screws, a retractor blade; exact chord lengths per ray.

Shapes are solid primitives in world mm:

* :class:`Cylinder` — a finite right circular cylinder (a K-wire, a screw's
  shaft or head);
* :class:`Box` — an oriented box (a retractor blade: a thin metal plate).

:func:`chord_lengths` intersects rays (source → detector pixel) with each
shape in closed form — ray–cylinder: the quadratic of the distance to the
axis, clipped by the two end planes; ray–box: the slab method in the box's
frame — and sums, per material, the length of every ray inside metal (mm).
The metal is added on top of the CT's tissue along the chord (the few mm of
tissue it displaces, ≤ 2 % of its attenuation, are ignored).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from xraypose.errors import InputError

__all__ = ["Cylinder", "Box", "chord_lengths", "cylinder_chords", "box_chords", "shape_to_dict", "kwire", "screw",
           "plate"]

F64 = torch.float64


@dataclass
class Cylinder:
    """Solid cylinder: axis from ``start`` along unit ``axis`` for ``length`` mm, radius ``radius`` mm."""

    start: torch.Tensor  # (3,) world mm
    axis: torch.Tensor  # (3,) unit
    length: float
    radius: float
    material: str
    kind: str = "cylinder"


@dataclass
class Box:
    """Solid box centred at ``centre`` with edge directions the columns of ``axes`` and half-sizes ``half`` (mm)."""

    centre: torch.Tensor  # (3,) world mm
    axes: torch.Tensor  # (3, 3) orthonormal columns
    half: torch.Tensor  # (3,) mm
    material: str
    kind: str = "box"


def shape_to_dict(s) -> dict:
    """JSON-able description of a shape."""
    if isinstance(s, Cylinder):
        return {"shape": "cylinder", "part": s.kind, "start_mm": s.start.tolist(), "axis": s.axis.tolist(),
                "length_mm": float(s.length), "radius_mm": float(s.radius), "material": s.material}
    return {"shape": "box", "part": s.kind, "centre_mm": s.centre.tolist(), "axes": s.axes.T.tolist(),
            "half_mm": s.half.tolist(), "material": s.material}


def _rays(source: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The segments source (3,) → targets (R, 3), world mm, float64: (source (1, 3), unit directions
    (R, 3), lengths (R,) mm)."""
    src = source.to(F64).reshape(1, 3)
    d = targets.to(F64) - src
    ray_len = d.norm(dim=-1)
    return src, d / ray_len.clamp_min(1e-12)[:, None], ray_len


def _interval_length(lo: torch.Tensor, hi: torch.Tensor, ray_len: torch.Tensor) -> torch.Tensor:
    lo = lo.clamp_min(0.0)
    hi = torch.minimum(hi, ray_len)
    return (hi - lo).clamp_min(0.0)


def cylinder_chords(c: Cylinder, source: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(R,) length (mm) of each segment source → targets[r] inside the solid cylinder ``c``."""
    src, u, ray_len = _rays(source, targets)
    a = c.axis.to(F64)
    a = a / a.norm()
    w = (src - c.start.to(F64)).expand_as(u)
    ua = u @ a
    wa = w @ a
    up = u - ua[:, None] * a
    wp = w - wa[:, None] * a
    A = (up * up).sum(-1)
    B = 2 * (up * wp).sum(-1)
    C = (wp * wp).sum(-1) - c.radius**2
    inf = torch.full_like(A, math.inf)
    par = A < 1e-14  # ray parallel to the axis: inside the infinite cylinder everywhere or nowhere
    disc = B * B - 4 * A * C
    sq = disc.clamp_min(0).sqrt()
    A_safe = torch.where(par, torch.ones_like(A), A)
    t0 = torch.where(par, torch.where(C <= 0, -inf, inf), (-B - sq) / (2 * A_safe))
    t1 = torch.where(par, torch.where(C <= 0, inf, -inf), (-B + sq) / (2 * A_safe))
    miss = (~par) & (disc <= 0)
    t0 = torch.where(miss, inf, t0)
    t1 = torch.where(miss, -inf, t1)
    # between the end planes: 0 <= wa + t·ua <= length
    ua_safe = torch.where(ua.abs() < 1e-14, torch.full_like(ua, 1e-14), ua)
    s0 = (0.0 - wa) / ua_safe
    s1 = (c.length - wa) / ua_safe
    smin, smax = torch.minimum(s0, s1), torch.maximum(s0, s1)
    inside_slab = (wa >= 0) & (wa <= c.length)
    flat = ua.abs() < 1e-14
    smin = torch.where(flat, torch.where(inside_slab, -inf, inf), smin)
    smax = torch.where(flat, torch.where(inside_slab, inf, -inf), smax)
    return _interval_length(torch.maximum(t0, smin), torch.minimum(t1, smax), ray_len)


def box_chords(b: Box, source: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(R,) length (mm) of each segment source → targets[r] inside the solid box ``b``."""
    src, u, ray_len = _rays(source, targets)
    Rm = b.axes.to(F64)
    o = (src - b.centre.to(F64)) @ Rm  # (1, 3) in the box frame
    v = u @ Rm  # (R, 3)
    half = b.half.to(F64)
    small = v.abs() < 1e-14
    v_safe = torch.where(small, torch.full_like(v, 1e-14), v)
    t1 = (-half - o) / v_safe
    t2 = (half - o) / v_safe
    tmin, tmax = torch.minimum(t1, t2), torch.maximum(t1, t2)
    inside = (o.abs() <= half).expand_as(v)
    inf = torch.full_like(tmin, math.inf)
    tmin = torch.where(small, torch.where(inside, -inf, inf), tmin)
    tmax = torch.where(small, torch.where(inside, inf, -inf), tmax)
    return _interval_length(tmin.amax(-1), tmax.amin(-1), ray_len)


def chord_lengths(shapes, source: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per material, (R,) total chord length (mm) of the rays source → targets through ``shapes``.

    Shapes of one object must not overlap each other (a screw's head and
    shaft are adjacent cylinders), or their overlap counts twice.
    """
    out: dict[str, torch.Tensor] = {}
    for s in shapes:
        if isinstance(s, Cylinder):
            L = cylinder_chords(s, source, targets)
        elif isinstance(s, Box):
            L = box_chords(s, source, targets)
        else:
            raise InputError(f"unknown implant shape {type(s).__name__}")
        out[s.material] = out[s.material] + L if s.material in out else L
    return out


def _unit(v: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=F64).reshape(3)
    n = float(v.norm())
    if not n > 0:
        raise InputError("an implant's direction must be a non-zero vector")
    return v / n


def kwire(through, direction, diameter: float, length: float, offset: float = 0.0,
          material: str = "steel") -> list:
    """A K-wire (one cylinder) through the world point ``through``, which sits at ``offset``·length
    from the wire's middle (offset in [−0.5, 0.5])."""
    a = _unit(direction)
    p = torch.as_tensor(through, dtype=F64).reshape(3)
    start = p - (0.5 + offset) * length * a
    return [Cylinder(start, a, float(length), diameter / 2.0, material, "kwire")]


def screw(tip, direction, diameter: float, length: float, material: str = "titanium") -> list:
    """A bone screw: a shaft of ``diameter`` × ``length`` from ``tip`` along ``direction``, then a head
    1.7× as wide and 0.6 diameters tall (two adjacent cylinders)."""
    a = _unit(direction)
    tip = torch.as_tensor(tip, dtype=F64).reshape(3)
    head_start = tip + length * a
    return [Cylinder(tip, a, float(length), diameter / 2.0, material, "screw_shaft"),
            Cylinder(head_start, a, 0.6 * diameter, 0.85 * diameter, material, "screw_head")]


def plate(centre, axes, size_mm, material: str = "steel") -> list:
    """A flat plate (a retractor blade): a box of ``size_mm`` = (length, width, thickness) along ``axes``' columns."""
    half = torch.as_tensor(size_mm, dtype=F64).reshape(3) / 2
    return [Box(torch.as_tensor(centre, dtype=F64).reshape(3), torch.as_tensor(axes, dtype=F64), half, material,
                "retractor")]
