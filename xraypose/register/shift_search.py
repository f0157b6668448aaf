"""An in-plane shift search before the capture: where in a wider DRR does the X-ray fit?

A start 10°/40 mm from the truth shows the anatomy a third of the field away from where the X-ray
has it; the capture (Adam on multiscale NCC at 16 and 32 rows) climbs the similarity from there and
some such starts end on another optimum 20–200 mm off — in every appearance family alike, the
simulator's own X-rays included (docs/registration.md, "The shift search").  The in-plane part of
that offset is found without any descent: render the start's DRR over a detector about twice as wide and
high (the same pixels, the same principal point), slide the X-ray over it and take the offset of
the largest normalised cross-correlation (a template match; every offset at once, a few
convolutions at ``rows`` rows).  The start is then moved *across* the beam — along its own detector
axes, at the isocenter's depth, ``Δ = offset · pixel · z_iso / sdd`` — so that the X-ray's anatomy
is where the DRR shows it; rotation and depth are left to the capture.

Moved only when the best offset's NCC beats the start's own by ``gain`` (a start near the truth
stays: its own offset is the best or within noise of it).

Units: offsets in pixels of the search's detector (``rows`` rows), the move in mm (world frame =
CT RAS mm), NCC in [−1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xraypose.camera import Camera
from xraypose.render import render

__all__ = ["ShiftFound", "ncc_offsets", "search_view", "search_shift", "SHIFT_ROWS"]

F64 = torch.float64

#: Rows of the search's X-ray (its DRR has twice as many): 32 rows of a 280 mm detector are 8.8 mm
#: pixels on the detector, ~5 mm at the isocenter — the capture's first level is 16 rows.
SHIFT_ROWS = 32


@dataclass(frozen=True)
class ShiftFound:
    """One start's search.

    Attributes:
        pose: (4, 4) float64 camera_to_world, the start moved (or the start itself when not moved).
        moved: whether the start was moved.
        offset_px: (du, dv) the best offset, pixels of the search's detector (+u columns, +v rows).
        shift_mm: the move across the beam, mm (0 when not moved).
        ncc_start, ncc_best: the X-ray's NCC with the DRR at the start's own offset and at the best.
    """

    pose: torch.Tensor
    moved: bool
    offset_px: tuple
    shift_mm: float
    ncc_start: float
    ncc_best: float

    def to_dict(self) -> dict:
        return {"moved": self.moved, "offset_px": list(self.offset_px), "shift_mm": self.shift_mm,
                "ncc_start": self.ncc_start, "ncc_best": self.ncc_best}


def ncc_offsets(big: torch.Tensor, template: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted normalised cross-correlation of ``template`` (h, w) with every h×w window of ``big``
    (H, W): an (H − h + 1, W − w + 1) map in [−1, 1] (window at row i, column j → entry [i, j]).

    ``weights`` (h, w) >= 0 weigh the template's pixels (0: left out, e.g. masked); both the
    template's and each window's mean and variance are weighted.  A flat window scores 0."""
    big = big.to(F64)[None, None]
    t = template.to(F64)
    w = torch.ones_like(t) if weights is None else weights.to(F64)
    sw = w.sum()
    tc = w * (t - (w * t).sum() / sw)
    tn = (tc * (t - (w * t).sum() / sw)).sum().sqrt()
    s1 = F.conv2d(big, w[None, None])[0, 0]
    s2 = F.conv2d(big ** 2, w[None, None])[0, 0]
    num = F.conv2d(big, tc[None, None])[0, 0]  # Σ w (t − t̄) D: the window's mean drops out (Σ tc = 0)
    var = (s2 - s1 ** 2 / sw).clamp_min(0)
    den = (var.sqrt() * tn).clamp_min(1e-12)
    out = num / den
    return torch.where(var > 1e-12 * float(s2.abs().max().clamp_min(1e-30)), out, torch.zeros_like(out))


def search_view(registrar, images: torch.Tensor, camera: Camera, masks: torch.Tensor | None = None):
    """The search's view of B X-rays (B, 1, H, W): a :class:`~xraypose.register.objective.LevelObjective` at
    :data:`SHIFT_ROWS` rows (the X-rays and their pixel weights resampled as a registration level does), the
    CT's density and bone channels averaged and sampled as for the registrar's capture (Adam) level nearest in
    size (its first level when it has none)."""
    import math

    from xraypose.register.config import Level
    from xraypose.register.objective import LevelObjective, level_channels

    levels = registrar.config.levels
    near = min([lv for lv in levels if lv.optimizer == "adam"] or levels[:1],
               key=lambda lv: abs(math.log(lv.size / SHIFT_ROWS)))
    lv = Level(size=SHIFT_ROWS, volume_mm=near.volume_mm, n_samples=near.n_samples, step_mm=near.step_mm, fit_bone=True)
    dens, aff = registrar.volume_level(lv.volume_mm, level_channels(lv))
    return LevelObjective(lv, registrar.config, dens, aff, images, camera, torch.Generator().manual_seed(0),
                          masks=masks)


def search_shift(view, b: int, pose: torch.Tensor, isocenter, *, bone: float = 1.0,
                 gain: float = 0.02) -> ShiftFound:
    """Search the in-plane shift of one start of X-ray ``b`` of ``view`` (:func:`search_view`; module docstring).

    Args:
        view: the search's view of the X-rays (its ``target``, ``mask``, ``camera``, CT channels and sampling).
        b: which X-ray.
        pose: (4, 4) the start, camera_to_world (world mm).
        isocenter: (3,) world mm: the depth at which the move is measured.
        bone: the bone multiplier of the DRR (density + bone · bone channel).
        gain: the NCC the best offset must beat the start's own by for the start to move.
    Returns:
        :class:`ShiftFound`.
    """
    x = view.target[b, 0]
    m = None if view.mask is None else view.mask[b, 0]
    cam = view.camera
    r, c = x.shape
    i0, j0 = r // 2, c // 2  # the wide detector's centre window is the X-ray's own field (same principal point)
    wide = Camera(sdd=cam.sdd, height=r + 2 * i0, width=c + 2 * j0, delx=cam.delx, dely=cam.dely, x0=cam.x0,
                  y0=cam.y0, reverse_x_axis=cam.reverse_x_axis)
    T = torch.as_tensor(pose, dtype=F64).reshape(4, 4)
    drr = render(view.density, view.affine, wide, T[None].to(torch.float32), n_samples=view.n_samples,
                 step=view.step)[0].to(F64)
    drr = drr[0] + (bone * drr[1] if drr.shape[0] > 1 else 0.0)
    ncc = ncc_offsets(drr, x, m)
    k = int(ncc.argmax())
    i, j = divmod(k, ncc.shape[1])
    best, own = float(ncc[i, j]), float(ncc[i0, j0])
    du, dv = j - j0, i - i0
    if cam.reverse_x_axis:  # stored columns run against the camera's +x
        du = -du
    if not best > own + gain or (du == 0 and dv == 0):
        return ShiftFound(T.clone(), False, (j - j0, i - i0), 0.0, own, best)
    iso = torch.as_tensor(isocenter, dtype=F64).reshape(3)
    z = float((T[:3, :3].T @ (iso - T[:3, 3]))[2])
    move = torch.tensor([du * cam.delx, dv * cam.dely, 0.0], dtype=F64) * z / cam.sdd
    out = T.clone()
    out[:3, 3] = T[:3, 3] + T[:3, :3] @ move
    return ShiftFound(out, True, (j - j0, i - i0), float(move.norm()), own, best)
