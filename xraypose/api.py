"""The library's high-level functions (what each CLI command calls)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from xraypose.camera import Camera

if TYPE_CHECKING:
    from xraypose.volume import Volume


def render_drr(
    volume: Volume,
    camera: Camera,
    camera_to_world: torch.Tensor,
    renderer: str = "trilinear",
    n_samples: int | None = None,
    step: float | None = None,
    density: str = "hu",
    bone_attenuation_multiplier: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Render one DRR (H, W) of line integrals at a camera_to_world pose (4, 4).

    Raises :class:`~xraypose.errors.InputError`, before rendering, when the pose is no rigid transform
    (:func:`~xraypose.geometry.rigid.check_rigid`: scaled, sheared, mirrored), when the DRR would not fit memory, when a
    trilinear step would take more than :data:`~xraypose.limits.MAX_SAMPLES_PER_RAY` samples along a ray, or
    when the pose does not see the CT (:func:`check_ct_in_view`); after rendering, when the DRR holds negative
    line integrals or is all zeros from a CT in which nothing attenuates (:func:`_check_drr_values`)."""
    from xraypose._checks import check_instance
    from xraypose.errors import InputError
    from xraypose.geometry.rigid import check_rigid
    from xraypose.limits import check_drr_size, check_drr_step
    from xraypose.preprocess import as_real_tensor
    from xraypose.render import DRR
    from xraypose.render.core import checked_sampling, default_step

    check_instance("camera", camera, Camera)
    checked_sampling(n_samples, step)  # a text '1' (before check_drr_step compares it)
    check_drr_size(camera.height, camera.width)
    if renderer == "trilinear" and n_samples is None:
        check_drr_step(default_step(volume.affine) if step is None else step, volume)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InputError(f"dtype must be a floating torch dtype (e.g. torch.float32), got {dtype!r}")
    T = as_real_tensor(camera_to_world, "camera_to_world")  # a complex pose lost its imaginary part, silently
    if tuple(T.shape) not in ((4, 4), (1, 4, 4)):  # a batch rendered its first pose only, silently
        raise InputError(f"camera_to_world must be one pose (4, 4), got shape {tuple(T.shape)} (a batch of poses: "
                         "use xraypose.render.DRR)")
    if bool(torch.isfinite(T).all()):  # (a NaN pose: render() names it)
        try:  # a scaled, sheared or mirrored pose rendered a DRR no C-arm takes, silently
            check_rigid(T.to(torch.float64), atol=1e-3)
        except InputError as e:
            raise InputError(f"camera_to_world: {e}") from None
    T = T.to(dtype).reshape(1, 4, 4)
    check_ct_in_view(volume, camera, T[0])
    drr = DRR(volume, camera, density=density, renderer=renderer, n_samples=n_samples, step=step,
              bone_attenuation_multiplier=bone_attenuation_multiplier)
    with torch.no_grad():
        img = drr(T)
    _check_drr_values(img, drr, density)
    return img[0, 0]


def _check_drr_values(img: torch.Tensor, drr, density: str) -> None:
    """Refuse a DRR that no X-ray could be: holding negative line integrals (the "raw" density of a CT with
    negative values, e.g. HU), or all zeros because nothing in the CT attenuates (a CT of air only, or of zeros
    with the "raw" density).  A view that sees only the CT's air renders its zeros."""
    from xraypose.errors import InputError

    lo, hi = (float(v) for v in torch.aminmax(img))
    if lo < -0.01 * max(hi, 0.0):  # (a μ map's slightly negative noise in air passes)
        raise InputError(f"the DRR holds negative line integrals (down to {lo:.3g}): the density {density!r} takes "
                         "the voxel values as attenuations and this CT holds negative ones (HU?); render it with "
                         "the density 'hu' or 'physical'")
    if hi == 0 and not bool((drr.basis != 0).any()):
        raise InputError(f"the DRR is all zeros: no voxel of the CT attenuates under the density {density!r} (a CT "
                         "of air only, or of zeros); check the CT and the density")


def _box_in_view(volume: Volume, camera: Camera, camera_to_world) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(the depths (8,) of the CT box's corners along the principal ray, mm; their (8, 2) pixels (u, v) when
    the whole box is in front of the source — its projection then lies within theirs — else None), or None for
    a pose that is not finite."""
    from xraypose.camera import world_to_camera_points

    T = torch.as_tensor(camera_to_world, dtype=torch.float64).reshape(4, 4)
    if not bool(torch.isfinite(T).all()):
        return None
    corners = volume.corners  # (8, 3) world mm
    z = world_to_camera_points(corners, T)[:, 2]
    return z, (camera.project(corners, T) if bool((z > 0).all()) else None)


def check_ct_in_view(volume: Volume, camera: Camera, camera_to_world: torch.Tensor) -> None:
    """Refuse (InputError) a pose (4, 4) whose DRR cannot hold any of the CT: its box wholly behind the
    source, wholly beyond the detector plane (z >= sdd), projecting wholly off the detector, or onto fewer
    than :data:`MIN_FOOTPRINT_PX` pixels (:func:`check_ct_footprint`).  A DRR of zeros is never what was
    wanted.  Conservative: a box that straddles the source's plane passes."""
    from xraypose.errors import InputError

    box = _box_in_view(volume, camera, camera_to_world)
    if box is None:
        return  # render() refuses a pose that is not finite
    z, uv = box
    where = None
    if bool((z <= 0).all()):
        where = "behind the X-ray source"
    elif bool((z >= camera.sdd).all()):
        where = f"beyond the detector (more than sdd = {camera.sdd:g} mm from the source)"
    elif uv is not None:
        lo, hi = uv.min(0).values.tolist(), uv.max(0).values.tolist()
        if hi[0] < -0.5 or lo[0] > camera.width - 0.5 or hi[1] < -0.5 or lo[1] > camera.height - 0.5:
            where = (f"outside the detector's field of view (it projects to columns {lo[0]:.4g} … {hi[0]:.4g}, "
                     f"rows {lo[1]:.4g} … {hi[1]:.4g} of a {camera.height} × {camera.width} detector)")
    if where:
        raise InputError(f"the pose does not see the CT: it lies {where}, so the DRR would be all zeros; check the "
                         "pose, the isocenter and the principal point (x0, y0)")
    _check_footprint(camera, uv, "the DRR")


#: Fewest pixels the CT's box must span along the rows and along the columns of a DRR (:func:`check_ct_footprint`).
MIN_FOOTPRINT_PX = 2.0


def check_ct_footprint(volume: Volume, camera: Camera, camera_to_world: torch.Tensor, what: str = "the DRR") -> None:
    """Refuse (InputError) a camera on which the CT's box, seen from ``camera_to_world`` (4, 4), spans fewer than
    :data:`MIN_FOOTPRINT_PX` pixels along the rows or the columns: pixels of metres (a spacing given in the wrong
    unit, e.g. ``--delx 1000``) leave the image of the CT between the rays, all zeros or one pixel.  Only a box
    wholly in front of the source is measured (else its projection is unbounded)."""
    from xraypose.errors import InputError

    box = _box_in_view(volume, camera, camera_to_world)
    if box is None:
        return
    z, uv = box
    if bool((z >= camera.sdd).all()):  # every ray stops at the detector: a K in pixels with a nominal spacing
        raise InputError(f"{what}: the whole CT lies beyond the detector at this pose (its nearest corner "
                         f"{float(z.min()):.0f} mm from the source, the detector at sdd = {float(camera.sdd):g} mm), "
                         "so every DRR would be all zeros; check the sdd (a calibration K in pixels: give the pixel "
                         "spacing, e.g. rig.json's 'pixel_mm', so that sdd = fx × pixel spacing reaches past the CT) "
                         "and the pose")
    _check_footprint(camera, uv, what)


def _check_footprint(camera: Camera, uv: torch.Tensor | None, what: str) -> None:
    """:func:`check_ct_footprint` on the box corners' pixels ``uv`` (8, 2) (None: not measurable)."""
    from xraypose.errors import InputError

    if uv is None:
        return
    cols, rows = (uv.max(0).values - uv.min(0).values).tolist()
    if cols < MIN_FOOTPRINT_PX or rows < MIN_FOOTPRINT_PX:
        raise InputError(f"the CT would cover {cols:.2g} × {rows:.2g} pixels of {what} (columns × rows): its pixels "
                         f"are {float(camera.delx):g} × {float(camera.dely):g} mm on a {camera.height} × "
                         f"{camera.width} detector at sdd {float(camera.sdd):g} mm; check the pixel spacing "
                         "(delx, dely: mm per pixel) and the sdd")
