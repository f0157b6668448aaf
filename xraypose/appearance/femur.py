"""A bone that moved between the CT and the X-ray: femur masks of an unlabelled CT, rigid displacement.

:func:`femur_mask` finds the proximal femurs of a CT that reaches below the
acetabulum (as the bundled pelvis CT does), without labels:

1. bone = HU > 150, eroded by a ~3 mm ball: the thin cortex of the pelvis
   (acetabulum, ischium, pubis) disappears, the thick femoral heads and necks
   remain as separate components;
2. femur seeds = components of at least 5 cm³ that reach to within 10 mm of
   the CT's inferior face (a femur leaves the CT through its bottom) and lie
   more than 40 mm lateral to the body's midline (the spine and sacrum are
   central); a CT with none (e.g. an abdominal CT ending at the iliac crests)
   has no femur, and :func:`femur_mask` raises :class:`InputError`;
3. a marker-controlled watershed on −HU (smoothed, σ 1.5 mm) floods the bone
   from the femur seeds, from the pelvis (bone 15 mm and more above the
   highest seed) and from soft tissue (HU < 50): femur and acetabulum meet
   along the joint space, the darkest path between them;
4. each femur = the largest connected component of its basin's bone voxels
   (HU > 150), holes filled.

If the CT carries labels whose names contain "femur" (TotalSegmentator's
``femur_left`` / ``femur_right``), those are used instead.

:func:`split_structure` cuts a mask out of a CT (its voxels set to a filler
HU) and returns it as a second, cropped volume; giving that volume the affine
``T @ affine`` moves it rigidly by the world transform ``T``.
"""

from __future__ import annotations

import numpy as np
import torch

from xraypose.errors import InputError
from xraypose.volume import Volume

__all__ = ["femur_mask", "hip_centre", "split_structure", "filler_hu"]

F64 = torch.float64
BONE_HU = 150.0


def _sitk():
    import SimpleITK as sitk

    return sitk


def _to_img(a: np.ndarray, spacing):
    sitk = _sitk()
    img = sitk.GetImageFromArray(np.ascontiguousarray(a.transpose(2, 1, 0)))  # SimpleITK's x is our i
    img.SetSpacing([float(s) for s in spacing])
    return img


def _to_arr(img) -> np.ndarray:
    return _sitk().GetArrayFromImage(img).transpose(2, 1, 0)


def _world_z(volume: Volume, shape) -> np.ndarray:
    """(I, J, K) world z (superior) of every voxel centre, without building all coordinates at once."""
    A = volume.affine.numpy()
    i, j, k = (np.arange(n, dtype=np.float64) for n in shape)
    return A[2, 0] * i[:, None, None] + A[2, 1] * j[None, :, None] + A[2, 2] * k[None, None, :] + A[2, 3]


def _labelled_femurs(volume: Volume):
    if volume.labels is None or not volume.label_names:
        return None
    ids = [i for i, n in volume.label_names.items() if "femur" in n.lower()]
    if not ids:
        return None
    out = torch.zeros(volume.shape, dtype=torch.int8)
    for n, i in enumerate(sorted(ids)[:2]):
        out[volume.labels == i] = n + 1
    return out


def femur_mask(volume: Volume) -> torch.Tensor:
    """(I, J, K) int8: 0 elsewhere, 1, 2 on each femur found (1 = the one toward world +x, the patient's right).

    Raises:
        InputError: the CT shows no femur (see the module docstring for the criteria).
    """
    labelled = _labelled_femurs(volume)
    if labelled is not None:
        return labelled
    sitk = _sitk()
    hu = volume.data.detach().cpu().numpy().astype(np.float32)
    sp = volume.spacing.numpy()
    voxel_cc = float(np.prod(sp)) / 1000.0
    bone = hu > BONE_HU
    radius = [max(1, int(round(3.0 / s))) for s in sp]
    eroded = _to_arr(sitk.BinaryErode(_to_img(bone.astype(np.uint8), sp), radius))
    comps = _to_arr(sitk.RelabelComponent(sitk.ConnectedComponent(_to_img(eroded, sp)),
                                          minimumObjectSize=int(np.ceil(5.0 / voxel_cc))))
    if comps.max() == 0:
        raise InputError("no femur in this CT: no thick bone (femoral head/neck) found")
    z = _world_z(volume, hu.shape)
    z_bottom = float(volume.corners[:, 2].min())
    body = np.argwhere(hu[::2, ::2, ::2] > -300).astype(np.float64) * 2
    if body.shape[0] == 0:
        raise InputError("no femur in this CT: it shows no body (no voxel above -300 HU)")
    mid_x = float(np.median(volume.voxel_to_world(torch.from_numpy(body[::7])).numpy()[:, 0]))
    A = volume.affine.numpy()
    seeds = []
    for lab in range(1, int(comps.max()) + 1):
        idx = np.argwhere(comps == lab)
        wz = z[idx[:, 0], idx[:, 1], idx[:, 2]]
        wx = idx.astype(np.float64) @ A[0, :3] + A[0, 3]
        if wz.min() - z_bottom <= 10.0 and abs(float(wx.mean()) - mid_x) > 40.0:
            seeds.append((lab, float(wx.mean()), float(wz.max())))
    if not seeds:
        raise InputError("no femur in this CT: no thick lateral bone reaches its inferior face "
                         "(it does not extend below the hip joints)")
    seeds = sorted(seeds, key=lambda s: -s[1])[:2]  # toward +x (patient's right) first
    top = max(s[2] for s in seeds)
    markers = np.zeros(hu.shape, dtype=np.uint8)
    markers[hu < 50] = 1
    markers[bone & (z > top + 15.0)] = 2
    for n, (lab, _, _) in enumerate(seeds):
        markers[comps == lab] = 3 + n
    smooth = sitk.SmoothingRecursiveGaussian(_to_img(np.clip(hu, -1000, 2000), sp), [1.5] * 3)
    basins = _to_arr(sitk.MorphologicalWatershedFromMarkers(sitk.Cast(-smooth, sitk.sitkFloat32),
                                                            _to_img(markers, sp), markWatershedLine=False,
                                                            fullyConnected=True))
    out = np.zeros(hu.shape, dtype=np.int8)
    for n in range(len(seeds)):
        m = (basins == 3 + n) & bone
        cc = _to_arr(sitk.RelabelComponent(sitk.ConnectedComponent(_to_img(m.astype(np.uint8), sp))))
        filled = _to_arr(sitk.BinaryFillhole(_to_img((cc == 1).astype(np.uint8), sp)))
        out[(filled > 0) & (out == 0)] = n + 1
    return torch.from_numpy(out)


def hip_centre(volume: Volume, mask: torch.Tensor) -> torch.Tensor:
    """(3,) world mm: centroid of the top 30 mm of a femur mask (mostly the femoral head), the rotation centre."""
    idx = torch.nonzero(mask).to(F64)
    if idx.shape[0] == 0:
        raise InputError("the femur mask is empty")
    w = volume.voxel_to_world(idx)
    top = w[:, 2] >= w[:, 2].max() - 30.0
    return w[top].mean(0)


def filler_hu(volume: Volume, mask: torch.Tensor) -> float:
    """Median HU of the soft tissue (−200…150 HU) within 6 mm of the mask: what fills the hole."""
    sitk = _sitk()
    sp = volume.spacing.numpy()
    r = [max(1, int(round(6.0 / s))) for s in sp]
    m = mask.numpy().astype(np.uint8)
    shell = (_to_arr(sitk.BinaryDilate(_to_img(m, sp), r)) > 0) & (m == 0)
    hu = volume.data.numpy()[shell]
    hu = hu[(hu > -200) & (hu < BONE_HU)]
    return float(np.median(hu)) if hu.size else 40.0


def split_structure(volume: Volume, mask: torch.Tensor, fill_hu: float) -> tuple[Volume, Volume]:
    """Cut ``mask`` out of ``volume``.

    Returns:
        ``rest``: the CT with the mask's voxels set to ``fill_hu`` (every other
        voxel unchanged); ``part``: the mask's bounding box (+1 voxel) as its
        own volume (HU of the mask's voxels, ``fill_hu`` elsewhere) with the
        matching affine.  ``rest`` + (``part`` − ``fill_hu``) is the CT again;
        ``Volume(part.data, T @ part.affine)`` is the part moved by the world
        transform ``T``.
    """
    m = torch.as_tensor(mask).bool()
    if tuple(m.shape) != volume.shape:
        raise InputError(f"mask of shape {tuple(m.shape)} does not match the CT's {volume.shape}")
    idx = torch.nonzero(m)
    if idx.shape[0] == 0:
        raise InputError("the structure mask is empty")
    lo = (idx.min(0).values - 1).clamp_min(0)
    hi = torch.minimum(idx.max(0).values + 2, torch.tensor(volume.shape))
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    rest = volume.data.clone()
    rest[m] = float(fill_hu)
    part = torch.where(m[sl], volume.data[sl], torch.full_like(volume.data[sl], float(fill_hu)))
    shift = torch.eye(4, dtype=F64)
    shift[:3, 3] = lo.to(F64)
    return (Volume(data=rest, affine=volume.affine.clone(), isocenter=volume.isocenter, source=volume.source),
            Volume(data=part.contiguous(), affine=volume.affine @ shift, source=volume.source + " (cut structure)"))
