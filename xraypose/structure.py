"""One structure at a time: register a bone given as a labelmap label or a mask, and CTs already
cropped to one bone (issue 14, item 3).

    from xraypose.structure import structure_mask, prepare_ct, structure_window
    mask = structure_mask(ct, label_map="labels.nii.gz", label=3)       # or mask="radius.nii.gz"
    part = prepare_ct(ct, density="linear", mask=mask)                   # a Volume of that structure only
    part.volume, part.isocenter, part.notes
    top, left, h, w = structure_window(camera, start_pose, part.box)     # where it projects (+ a margin)

* **Rendering only the structure** (:func:`prepare_ct`): the CT outside the structure's mask,
  grown by ``dilate_mm`` (default :data:`DILATE_MM`: the cortex's partial-volume rim), is made
  non-attenuating and the volume is cropped to the grown mask's bounding box.  The structure is
  rendered as its **attenuation above water**, ``max(HU, 0)`` (with the ``"raw"`` density model):
  in an X-ray, a bone inside the body adds what it attenuates more than the soft tissue it
  displaces; rendered with its full attenuation (HU + 1000) and air around it, the mask's outline
  would be an edge the X-ray does not have (measured on the bundled pelvis, all its bone as the
  structure, 64² px, two cases, from the true pose: the "linear" model drifted 16–44 mm, the excess
  over water 2–8 mm with gradient NCC).  Registration's isocenter becomes the structure's centre.
  A volume of raw values (``density="raw"``) keeps its values inside the mask, 0 outside.
* **Weighing the similarity where it projects** (:func:`structure_window`): each X-ray is cropped
  to the box the structure's grown bounding box projects to at the start pose, plus
  ``margin_mm`` (default :data:`MARGIN_MM`) at the structure's depth, so the other anatomy is
  mostly left out; the crop is fixed for the whole registration (its camera follows: the pose
  found is the X-ray's).  A structure that projects outside an X-ray at the start is refused.
* **A sequence** (``xraypose track``): every frame of a view is cropped to one window, where the
  structure projects at the first frame's start plus :data:`MARGIN_MM` + :data:`TRACK_MARGIN_MM`
  (the structure moves), and each registration weighs its frame by the structure's footprint at
  that registration's own start (:class:`FootprintWeights`: the weights follow the pose).
* **A CT already cropped to one bone** (its surroundings a constant, typically 0): a constant
  that fills at least :data:`PADDING_FACE_SHARE` of the volume's six faces and is not air
  (> −500 HU; for ``"raw"``: not 0) is *padding* (:func:`padding_value`); every voxel of exactly
  that value is made non-attenuating (a CT's own voxels are almost never exactly that value;
  inside a cropped bone, enclosed padding is padding too) and the rest rendered as a structure
  is.  Otherwise a zero-padded HU volume renders its box as a block of water (0 HU) and its edges
  dominate the similarity.  A volume whose outside is 0 and whose values are not HU (the
  Autoscoper wrist bones, 0…4095) is rendered with ``density="raw"``, where 0 already attenuates
  nothing.
* **The similarity**: a structure's DRR lacks the rest of the body, which an X-ray's low
  frequencies are mostly made of; the command line therefore registers one structure with
  gradient NCC at every level (``--similarity gncc``) unless another measure is asked for, and
  never matches the X-ray's intensities to the DRR's (``match_intensity=None``: the X-ray shows
  the whole body, the DRR the part).  Both are :func:`part_settings`, which the command line
  applies; from Python use it too, or :meth:`PreparedCT.registration_config` (a script that built
  its own settings registered the real wrist's radius *with* the map once it became the default:
  its joint similarity fell 0.56 → 0.15; docs/wrist.md).  The levels' fits of the body's intensity
  model (bone multiplier, tissue channel, monotone curve: :data:`PART_LEVEL_OFF`) are turned off
  too: the part's DRR holds none of the body they describe.  With no schedule given, a part's last level
  runs at :data:`PART_LAST_ROWS` rows (at most the X-ray's own), not 128 (:func:`part_default_levels`): one
  view holds a part's depth less firmly than the whole CT's.  A single view is captured twice
  (:data:`PART_CAPTURE_STEPS`: the whole CT's steps and an eighth of them), the first fine level keeping
  the better: a part's coarse similarity peaks far from the truth.

Units: mm; world = CT RAS mm.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from xraypose._kernels import max_filter
from xraypose.camera import Camera
from xraypose.errors import InputError

if TYPE_CHECKING:
    from xraypose.volume import Volume

__all__ = ["structure_mask", "prepare_ct", "PreparedCT", "part_settings", "padding_value", "structure_window",
           "window_image", "structure_weights", "DILATE_MM", "MARGIN_MM", "FOOTPRINT_MARGIN_MM", "PADDING_FACE_SHARE",
           "PART_LEVEL_OFF", "PART_LAST_ROWS", "PART_CAPTURE_STEPS", "PART_SCHEDULE_HYPOTHESES", "part_levels",
           "part_default_levels", "FootprintWeights", "MIN_FOOTPRINT_SHARE", "TRACK_MARGIN_MM"]

F64 = torch.float64

#: The structure's mask is grown by this much (mm) before the CT outside it is cleared.
DILATE_MM: float = 3.0
#: The X-ray window around the structure's projection is grown by this much (mm at the structure's depth).
MARGIN_MM: float = 20.0
#: A constant filling at least this share of the volume's faces is padding (a CT cropped to one bone).
PADDING_FACE_SHARE: float = 0.9
#: The structure's footprint on the X-ray is grown by this much (mm at its depth) into the pixel weights.
FOOTPRINT_MARGIN_MM: float = 10.0
#: The level settings :func:`part_settings` turns off for a part of a CT: the body's intensity model.
PART_LEVEL_OFF: dict = {"fit_bone": False, "fit_tissue": False, "fit_curve": False}
#: Rows of the last level of a part's default schedule (:func:`part_default_levels`; a level never exceeds the
#: X-ray's own rows, so at most the X-ray's own resolution): the whole CT's default schedule ends at 128.
PART_LAST_ROWS: int = 256
#: A part's single view is captured twice (``RegistrationConfig.capture_steps``): with the whole CT's steps and with
#: an eighth of them; the first fine level keeps the better.  A part's coarse similarity peaks far from the truth
#: (the simulated pelvis's bone), and the whole CT's steps jump there; the small steps alone lost the real wrist's
#: rolled starts (docs/registration.md).
PART_CAPTURE_STEPS: tuple = (1.0, 0.125)
#: The schedule hypotheses a part's registration may try (``RegistrationConfig.schedule_hypotheses``): not the scatter
#: model — a part's DRR lacks the body, whose low frequencies a smooth additive term then stands for (on simulated
#: parts its result was kept 5 times, 4 of them worse, 3 from below 1 mm to 1.9–4.1 mm; docs/registration.md).
PART_SCHEDULE_HYPOTHESES: tuple = ("metal schedule",)
#: :class:`FootprintWeights` gives a frame's own mask instead where the footprint covers less than this share.
MIN_FOOTPRINT_SHARE: float = 0.05
#: A sequence's frames are windowed where the structure projects at the first frame's start plus
#: :data:`MARGIN_MM` and this much more (mm at its depth): the structure moves during the sequence.
TRACK_MARGIN_MM: float = 30.0
#: The smallest X-ray window (pixels per side; the registration needs at least 16).
MIN_WINDOW_PX: int = 16


@dataclass
class PreparedCT:
    """A CT ready to register one structure (or a cropped bone).

    Attributes:
        volume: the CT, outside the structure (or its padding) non-attenuating, cropped to it.
        isocenter: (3,) float64 world mm: the structure's centre (the mask's centroid), or the
            volume's own isocenter without a mask.
        box: (8, 3) float64 world mm: the corners of the rendered part (the grown mask's box).
        notes: one-line remarks (padding found and cleared, voxels kept, ...).
        density: the density model to render ``volume`` with ("raw" for a part of a CT).
    """

    volume: Volume
    isocenter: torch.Tensor
    box: torch.Tensor
    notes: list = field(default_factory=list)
    density: str = "linear"

    def registrar(self, config=None, *, isocenter=None, **keywords):
        """A :class:`~xraypose.register.Registrar` of this part — with ``config`` (a
        :class:`~xraypose.register.RegistrationConfig` built with :func:`part_settings`), else
        :meth:`registration_config` of ``keywords`` — about ``isocenter`` (default :attr:`isocenter`),
        its results judged by the part model (:func:`xraypose.register.confidence.part_model`)."""
        from xraypose.register import Registrar
        from xraypose.register.confidence import part_model

        cfg = self.registration_config(**keywords) if config is None else config
        reg = Registrar(self.volume, cfg, isocenter=self.isocenter if isocenter is None else isocenter)
        reg.confidence_model = part_model()
        return reg

    def registration_config(self, **config):
        """A :class:`~xraypose.register.RegistrationConfig` for this part: ``config`` (its keywords) with
        :func:`part_settings` applied."""
        from xraypose.register import RegistrationConfig

        return RegistrationConfig(**part_settings(config, self.density))


def part_settings(config: dict, density: str) -> dict:
    """RegistrationConfig keywords (``config``, a dict) for registering a part of a CT rendered with
    ``density``: that density; gradient NCC in place of the default mncc (a part's DRR lacks the body's
    low frequencies; another measure asked for is kept); no intensity matching (``match_intensity=None``,
    ``match_capture=False``): the X-ray shows the whole body, the DRR only the part, so their quantile
    map is no intensity relationship (matched, the part's registration ran 5 mm off in
    tests/test_structure.py's cases, and the real wrist's radius fell from 0.56 to 0.15); and the
    schedule's levels (``config["levels"]``; none given: :func:`part_default_levels`) as
    :func:`part_levels` makes them; a single view captured with two step sizes (:data:`PART_CAPTURE_STEPS`,
    unless ``config`` gives ``capture_steps``); no scatter model among the hypotheses
    (:data:`PART_SCHEDULE_HYPOTHESES`, unless ``config`` gives ``schedule_hypotheses``)."""
    def given(key, default):  # absent or None: the part's default
        return default if config.get(key) is None else config[key]

    sim = config.get("similarity", "mncc")
    return {**config, "density": density, "similarity": "gncc" if sim == "mncc" else sim,
            "match_intensity": None, "match_capture": False,
            "capture_steps": given("capture_steps", PART_CAPTURE_STEPS),
            "schedule_hypotheses": given("schedule_hypotheses", PART_SCHEDULE_HYPOTHESES),
            "levels": part_default_levels() if config.get("levels") is None else part_levels(config["levels"])}


def part_default_levels() -> tuple:
    """A part's schedule when none is given: :data:`~xraypose.register.DEFAULT_LEVELS` as :func:`part_levels`
    makes them, the last level at :data:`PART_LAST_ROWS` rows instead of 128 (capped, as every level, by the
    X-ray's own rows).  A part's single view holds its depth less firmly than the whole CT's (the part's
    DRR lacks the body the X-ray shows): started at the truth, the abdomen's spine and ribs ended 0.6–2.9 mm
    along the beam at 128 rows (≤ 0.3 mm across it); at the X-ray's 244 rows 7 → 10 of 12 ended below 1 mm
    (``benchmarks/structure.py``, docs/registration.md).  A schedule given (``--levels``, ``--fast``,
    ``--metal``, a config file) is kept as it is."""
    import dataclasses

    from xraypose.register import DEFAULT_LEVELS

    levels = part_levels(DEFAULT_LEVELS)
    return levels[:-1] + (dataclasses.replace(levels[-1], size=max(levels[-1].size, PART_LAST_ROWS)),)


def part_levels(levels) -> tuple:
    """A schedule (``levels``: :class:`~xraypose.register.config.Level` or their dicts) for a part of a CT:
    the same levels without the fits of the body's intensity model (:data:`PART_LEVEL_OFF`: the bone
    multiplier, the tissue channel, the monotone curve).  They describe how the whole body's soft tissue
    and bone make the X-ray, which a DRR of the part alone does not hold (with them, started at the
    truth, the part ran 14–205 mm away on simulated X-rays: ``benchmarks/structure.py``,
    docs/registration.md).  The levels' volume resolution is kept: averaged finer in proportion to a
    small part (the wrist's radius: 12 → 3.2 mm at the first level), the radius tracked from 5°/5 mm
    off lost frame 0002 in 3 of 3 starts (12–16 mm) that the schedule as it is brought back to within
    0.11 mm (scripts/wrist_track.py, docs/wrist.md)."""
    import dataclasses

    from xraypose.register.config import _level

    return tuple(dataclasses.replace(lv, **PART_LEVEL_OFF) for lv in map(_level, levels))


def structure_mask(volume: Volume, *, mask=None, label_map=None, label=None) -> torch.Tensor:
    """(I, J, K) bool: the structure's voxels.

    Args:
        volume: the CT.
        mask: a mask on the CT's grid: a file (NIfTI, NRRD, MHA, …; nonzero = the structure) or an
            (I, J, K) array/tensor.
        label_map, label: a labelmap on the CT's grid (file or array) and the label id (or name, with
            the volume's ``label_names``) of the structure.
    Raises:
        InputError: neither or both given, a file not on the CT's grid, an empty mask, a label
            that is not in the labelmap (naming the labels present).
    """
    from xraypose.volume import Volume

    if (mask is None) == (label_map is None):
        raise InputError("give the structure as a mask (--structure MASK) or as a labelmap and a label "
                         "(--label-map FILE --label N), one of them")
    if label_map is not None and label is None:
        raise InputError("--label-map needs --label N (the structure's label id)")
    if mask is not None and label is not None:
        raise InputError("--label goes with --label-map, not with --structure (a mask is its nonzero voxels)")
    src = mask if mask is not None else label_map
    what = "structure mask" if mask is not None else "labelmap"
    if isinstance(src, (str, bytes)) or hasattr(src, "__fspath__"):
        lab = _read_on_grid(volume, src, what, mask=mask is not None)
    else:
        lab = torch.as_tensor(src)
        if tuple(lab.shape) != tuple(volume.shape):
            raise InputError(f"the {what} has shape {tuple(lab.shape)} but the CT has {tuple(volume.shape)}")
    name = str(src) if not hasattr(src, "shape") else f"the {what}"
    if mask is not None:
        if lab.is_floating_point() and not bool(torch.isfinite(lab).all()):
            raise InputError(f"{name}: the structure mask holds NaN or infinite values; give a mask of 0 outside "
                             "the structure and nonzero inside")
        m = lab != 0  # whatever its type: 0/1, 0/255, a float mask of 0/0.7 (not a label id)
        if not bool(m.any()):
            raise InputError(f"{name}: the structure mask is empty (no nonzero voxel)")
        return m
    v = Volume(data=volume.data, affine=volume.affine, labels=lab.to(torch.int64),
               label_names=getattr(volume, "label_names", None), source=volume.source)
    try:
        lid = int(label) if not isinstance(label, str) or label.strip().lstrip("-").isdigit() else label
    except ValueError:
        lid = label
    if isinstance(lid, int) and lid == 0:  # every voxel of no structure: the body, the table, the air
        raise InputError(f"{name}: label 0 is the labelmap's background (the voxels of no structure), not a "
                         "structure; give a structure's id (present: "
                         f"{', '.join(str(i) for i in torch.unique(v.labels).tolist()[:50] if i != 0) or 'none'})")
    m = v.structure_mask(lid)  # an absent label: InputError naming the labels present
    if not bool(m.any()):
        raise InputError(f"{name}: label {label} is empty")
    return m


def _read_on_grid(volume: Volume, path, what: str, *, mask: bool = False) -> torch.Tensor:
    """A labelmap's (I, J, K) int64 label ids, or with ``mask`` a mask file's (I, J, K) bool nonzero voxels (any
    numeric type: a float mask of 0 / 0.7 too; NaN/inf refused), the file read once and checked to lie on the
    CT's voxel grid (same shape, voxel centres within ``LABEL_ALIGN_TOL_MM``) — against ``volume.affine``
    directly, without reading the CT again."""
    from pathlib import Path

    import numpy as np

    from xraypose._checks import is_numeric_dtype
    from xraypose.volume import LABEL_ALIGN_TOL_MM, _as_3d, _as_label_tensor, _grid_distance_mm, _read_image

    p = Path(path).expanduser()
    arr, aff, _ = _read_image(p, what)  # refuses a missing or special file, a folder of no DICOM, ...
    arr = np.asarray(arr)
    if not is_numeric_dtype(arr.dtype) or arr.dtype.kind == "c":
        raise InputError(f"the {what} {p} holds {arr.dtype} values; give "
                         + ("a mask of numbers (0 outside the structure, nonzero inside)" if mask else
                            "integer label ids"))
    arr = _as_3d(arr, f"the {what} {p}")
    if tuple(arr.shape) != tuple(volume.shape):
        raise InputError(f"the {what} {p} has shape {tuple(arr.shape)} but the CT has {tuple(volume.shape)}")
    err = _grid_distance_mm(volume.affine.detach().cpu().numpy().astype(np.float64), aff, arr.shape)
    if err > LABEL_ALIGN_TOL_MM:
        raise InputError(f"the {what} {p} is not on the CT's voxel grid (voxel positions differ by up to "
                         f"{err:.4g} mm, tolerance {LABEL_ALIGN_TOL_MM:g} mm)")
    if mask:
        if arr.dtype.kind == "f" and not bool(np.isfinite(arr).all()):
            raise InputError(f"{p}: the structure mask holds NaN or infinite values; give a mask of 0 outside "
                             "the structure and nonzero inside")
        return torch.from_numpy(np.ascontiguousarray(arr != 0))
    return _as_label_tensor(arr, arr.shape, f"the {what} {p}")


def _faces(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x[0].reshape(-1), x[-1].reshape(-1), x[:, 0].reshape(-1), x[:, -1].reshape(-1),
                      x[:, :, 0].reshape(-1), x[:, :, -1].reshape(-1)])


def padding_value(volume: Volume, density: str = "linear") -> float | None:
    """The constant a cropped CT is padded with, or None (module docstring): a value filling at least
    :data:`PADDING_FACE_SHARE` of the six faces that would attenuate (> −500 HU for the HU models,
    not 0 for ``"raw"``)."""
    f = _faces(volume.data)
    vals, counts = torch.unique(f, return_counts=True)
    k = int(torch.argmax(counts))
    if float(counts[k]) < PADDING_FACE_SHARE * f.numel():
        return None
    v = float(vals[k])
    if density == "raw":
        return v if v != 0 else None
    return v if v > -500.0 else None


def _dilate(mask: torch.Tensor, spacing, mm: float) -> torch.Tensor:
    """``mask`` grown by ``mm`` (a box of ⌈mm / spacing⌉ voxels per axis)."""
    r = [max(0, int(math.ceil(mm / float(s) - 1e-9))) for s in spacing]
    if not any(r):
        return mask.clone()
    x = mask.float()[None, None]
    x = F.max_pool3d(x, kernel_size=[2 * a + 1 for a in r], stride=1, padding=r)
    return x[0, 0] > 0


def prepare_ct(volume: Volume, density: str = "linear", mask=None, dilate_mm: float = DILATE_MM,
               crop: bool = True) -> PreparedCT:
    """The CT as registration should render it (module docstring): only the structure ``mask``
    (grown by ``dilate_mm``) when given, its padding cleared when it is a cropped CT; a part of an
    HU CT is rendered as its attenuation above water (:attr:`PreparedCT.density` = "raw").

    Args:
        volume: the CT (HU, or raw values with ``density="raw"``).
        density: the registration's density model.
        mask: (I, J, K) bool (:func:`structure_mask`) or None.
        dilate_mm: growth of the mask, mm (>= 0).
        crop: crop the volume to the grown mask's bounding box.
    Returns:
        :class:`PreparedCT`.
    """
    from xraypose.volume import Volume

    if not (isinstance(dilate_mm, (int, float)) and math.isfinite(dilate_mm) and dilate_mm >= 0):
        raise InputError(f"dilate_mm must be a finite number >= 0, got {dilate_mm!r}")
    data = volume.data
    notes = []
    keep = torch.ones(volume.shape, dtype=torch.bool)
    pad = padding_value(volume, density)
    if pad is not None:
        padded = data == pad
        keep &= ~padded
        notes.append(f"the CT's surroundings hold the constant {pad:g} ({float(padded.float().mean()):.0%} of its "
                     "voxels): taken for padding of a cropped CT, rendered as nothing")
        if not bool(keep.any()):
            raise InputError("the CT holds nothing but its padding value")
    iso = volume.get_isocenter().to(F64)
    if mask is not None:
        m = torch.as_tensor(mask, dtype=torch.bool)
        if tuple(m.shape) != tuple(volume.shape):
            raise InputError(f"the structure mask has shape {tuple(m.shape)} but the CT has {tuple(volume.shape)}")
        if not bool(m.any()):
            raise InputError("the structure mask is empty")
        idx = torch.nonzero(m).to(F64)
        iso = volume.voxel_to_world(idx.mean(0))
        grown = _dilate(m, volume.spacing, dilate_mm)
        keep &= grown
        notes.append(f"rendering the structure only: {int(m.sum())} voxels, grown by {dilate_mm:g} mm "
                     f"({int(grown.sum())} voxels)")
    if bool(keep.all()):
        return PreparedCT(volume=volume, isocenter=volume.get_isocenter().to(F64), box=volume.corners.to(F64),
                          notes=notes, density=density)
    if density == "raw":
        new = torch.where(keep, data, torch.zeros_like(data))
    else:  # a part of the body: its attenuation above water (what it adds to an X-ray of the whole body)
        new = torch.where(keep, data.clamp_min(0.0), torch.zeros_like(data))
        notes.append("the part of the CT kept is rendered as its attenuation above water, max(HU, 0) (density "
                     "'raw'): the surroundings missing from the CT leave no edges")
    affine = volume.affine.to(F64)
    if crop and mask is not None:
        nz = torch.nonzero(keep)
        lo = [max(0, int(nz[:, a].min()) - 1) for a in range(3)]
        hi = [min(volume.shape[a], int(nz[:, a].max()) + 2) for a in range(3)]
        for a in range(3):  # at least 4 voxels per axis (registration's minimum)
            while hi[a] - lo[a] < 4:
                lo[a], hi[a] = max(0, lo[a] - 1), min(volume.shape[a], hi[a] + 1)
        new = new[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].contiguous()
        shift = torch.eye(4, dtype=F64)
        shift[:3, 3] = torch.tensor(lo, dtype=F64)
        affine = affine @ shift
    if not float(new.max()) > 0:
        raise InputError("nothing of the CT is left to render (the structure holds no tissue denser than water)")
    out = Volume(data=new, affine=affine, isocenter=iso, source=f"{volume.source} (prepared for registration)")
    return PreparedCT(volume=out, isocenter=iso, box=out.corners.to(F64), notes=notes, density="raw")


def structure_window(camera: Camera, camera_to_world, box, margin_mm: float = MARGIN_MM,
                     min_px: int = MIN_WINDOW_PX):
    """(top, left, height, width) pixels of ``camera``'s image around the projection of ``box``
    ((N, 3) world mm, e.g. :attr:`PreparedCT.box`) at ``camera_to_world``, grown by ``margin_mm``
    at the box's depth, clipped to the image, at least ``min_px`` per side; None when the box
    projects outside the image (or lies behind the source)."""
    T = torch.as_tensor(camera_to_world, dtype=F64).reshape(4, 4)
    pts = torch.as_tensor(box, dtype=F64).reshape(-1, 3)
    z = camera.depth(pts, T).reshape(-1)
    if not bool((z > 0).all()):
        return None
    uv = camera.project(pts, T).reshape(-1, 2)
    mpx = margin_mm * camera.sdd / float(z.mean())
    mu, mv = mpx / camera.delx, mpx / camera.dely
    u0, u1 = float(uv[:, 0].min()) - mu, float(uv[:, 0].max()) + mu
    v0, v1 = float(uv[:, 1].min()) - mv, float(uv[:, 1].max()) + mv
    H, W = camera.height, camera.width
    left, right = max(0, math.floor(u0)), min(W, math.ceil(u1) + 1)
    top, bottom = max(0, math.floor(v0)), min(H, math.ceil(v1) + 1)
    if right - left < min(min_px, W) // 2 or bottom - top < min(min_px, H) // 2:
        return None
    w, h = max(right - left, min(min_px, W)), max(bottom - top, min(min_px, H))
    left, top = min(left, W - w), min(top, H - h)
    return int(top), int(left), int(h), int(w)


def structure_weights(volume: Volume, camera: Camera, camera_to_world, density: str = "linear",
                      margin_mm: float = FOOTPRINT_MARGIN_MM) -> torch.Tensor:
    """(H, W) float32 pixel weights in {0, 1}: where the structure (``volume``, e.g.
    :attr:`PreparedCT.volume`: nothing else attenuates) projects at ``camera_to_world``, grown by
    ``margin_mm`` at its depth (the start's error: the structure must stay inside while it moves).
    Registration weighs its similarity and intensity fits with them (``masks=``)."""
    from xraypose.evaluate import PictureRenderer

    T = torch.as_tensor(camera_to_world, dtype=F64).reshape(1, 4, 4)
    drr = PictureRenderer(volume, density=density, n_samples=192)(camera, T)[0]
    top = float(drr.max())
    if not top > 0:
        return torch.zeros(camera.height, camera.width)
    foot = (drr > 0.02 * top).float()
    z = float(camera.depth(volume.get_isocenter().to(F64)[None], T)[0, 0])
    r = int(math.ceil(margin_mm * camera.sdd / max(z, 1e-6) / min(camera.delx, camera.dely)))
    return max_filter(foot, r)


class FootprintWeights:
    """Pixel weights that follow the pose (a sequence's frames: the structure moves): ``weights(f,
    camera_to_world)`` is :func:`structure_weights` of ``volume`` at that pose on ``camera``'s
    (H, W) image, times frame ``f``'s own mask (``masks``: (F, 1, H, W) or None; preprocessing's, a
    saturated plateau, a collimator's shadow).  Where the footprint covers less than
    :data:`MIN_FOOTPRINT_SHARE` of the image (the structure left the view at that pose) the frame's own
    mask (or ones) is given instead: the registration then sees the whole frame, and its verdict says
    what became of it.  The last few poses are remembered (the check reads the frame again)."""

    def __init__(self, volume: "Volume", camera: Camera, density: str = "raw", masks=None,
                 margin_mm: float = FOOTPRINT_MARGIN_MM):
        self.volume, self.camera, self.density, self.margin_mm = volume, camera, density, float(margin_mm)
        self.masks = None if masks is None else torch.as_tensor(masks, dtype=torch.float32)
        self._memo: dict = {}
        self._lock = threading.Lock()  # tracking checks a frame on a second thread while it registers the next

    def __call__(self, f: int, camera_to_world) -> torch.Tensor:
        T = torch.as_tensor(camera_to_world, dtype=F64).reshape(4, 4)
        key = (int(f), tuple(T.flatten().tolist()))
        with self._lock:
            return self._weights(f, T, key)

    def _weights(self, f: int, T: torch.Tensor, key) -> torch.Tensor:
        if key not in self._memo:
            H, W = self.camera.height, self.camera.width
            own = torch.ones(H, W) if self.masks is None else self.masks[int(f)].reshape(H, W)
            w = structure_weights(self.volume, self.camera, T, density=self.density, margin_mm=self.margin_mm)
            w = w * own
            if float(w.mean()) < MIN_FOOTPRINT_SHARE:
                w = own
            if len(self._memo) >= 8:
                self._memo.pop(next(iter(self._memo)))
            self._memo[key] = w
        return self._memo[key]


def window_image(image, camera: Camera, window):
    """(image, camera) cropped to ``window`` = (top, left, height, width)."""
    from xraypose.preprocess import crop

    top, left, h, w = window
    img, cam, _ = crop(image, camera, top, left, h, w)
    return torch.as_tensor(img, dtype=torch.float32), cam
