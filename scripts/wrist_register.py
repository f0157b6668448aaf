"""The radius in the real biplane wrist radiographs (issue 14, item 4): each view alone and both jointly.

Data: ../shared/data/autoscoper_wrist (xraypose.datasets.AutoscoperWrist: 2 calibrated cameras 110°
apart, frames 0002, 0099, 0158, the radius as a 16-bit TIFF bone volume).  There is no ground truth:
what this measures is whether registration works on real radiographs (overlays that align) and how
far a single view's result lies from the joint one.

Per frame:

1. **Start.**  Frame 0002: the radius's axis from two points picked by eye in each view (the centre
   of its distal articular end and of its shaft ~70 mm proximal, :data:`START_PIXELS`), triangulated
   with the calibration; the volume's own axis (principal axis of its bone voxels, the distal end the
   heavier one) put on it, turned about it in 12 steps of 30° (:func:`axis_starts`).  Later frames:
   the previous frame's joint result turned about the radius's own axis in the same 12 steps
   (:func:`rolled`).
2. **Views.**  Each radiograph (``transfer="log"``, resized to ``--size``), blurred (5×5, σ = 1 px),
   cropped to where the radius projects at the first start (+ 25 mm), weighted by the image
   intensifier's field and the radius's footprint there (+ 10 mm) (:mod:`xraypose.structure`).
3. **Registration** with :data:`WRIST_LEVELS` (the default schedule with the volume averaged to
   3/2/1/0.6 mm instead of 12/8/4/2 mm — the radius is 20–30 mm wide — and a last Levenberg–Marquardt
   level at 256 rows on the volume as it is (0.4 × 0.4 × 0.6 mm)) and :func:`wrist_config` (raw
   density, gradient NCC, no bone/tissue fits, no intensity matching: the part settings of
   ``xraypose register --structure``): jointly (one rig_to_world,
   :func:`xraypose.register.multiview.register_rig`) and each view alone
   (:func:`xraypose.register.api.register_xray`, no hypotheses), each from every start to the end, the
   best final similarity kept, then once more from that result on views windowed and weighted where
   the radius projects there (:func:`register_frame`).
4. **Agreement.**  The radius's pose in the calibration frame, ``bone_to_cal = rig_to_world⁻¹``
   (joint) and ``camera_to_rig_i · camera_to_world_i⁻¹`` (view i alone): the distance between the
   radius's centre in the two (mm; also its part along view i's beam, the depth a single view
   sees only as magnification) and the angle of the relative rotation (degrees).

5. **Each view alone from the joint result** (:func:`alone_from_joint`): each view registered alone once more,
   started at the frame's joint result (windowed there).  If it stays, the view's own optimum agrees with the
   joint one and a single view's disagreement in 4. is its search's; if it leaves, it is its optimum's.
   ``--alone-from JSON`` does only this, from another run's joint results.

``--bone mc2_mc3 --part mc3`` (the third metacarpal, docs/wrist.md): the second and third metacarpals' volume — it
holds the third's voxel for voxel (:func:`part_origin`) — started on the third's picked axis, then each frame's
third metacarpal registered alone from where the pair's joint result puts it (the rows' ``part``).
``--start-poses JSON`` starts the frames it names at given poses (rolled as above): the hand turns 47–57° between
frames, beyond the previous frame's rolls; its skin markers' rigid motion gives those starts
(``benchmarks/results/wrist/hand-beads-2026-12-06.py.txt``).

``--exclude BONE JSON`` takes another bone's projection (at its joint result per frame in JSON, this script's
output for that bone, e.g. the ulna beside the radius) out of every view's weights.

Writes ``--json`` (every pose, verdict, similarity, own spread and difference) and, with ``--figures``,
``wrist_radius.png``: per frame and view the radiograph's window, the DRR at the joint result and at
the view's own result blended over it (``--replot`` draws it again from the JSON).

    python scripts/wrist_register.py --json wrist.json --figures docs/img [--size 1024] [--frames 0002 0099]
    python scripts/wrist_register.py --json wrist.json --figures docs/img --replot
    python scripts/wrist_register.py --json alone.json --alone-from wrist.json [--exclude uln ulna.json]
    python scripts/wrist_register.py --bone mc2_mc3 --part mc3 --both-directions --json mc.json --figures docs/img
        --start-poses benchmarks/results/wrist/hand-beads-2026-12-06.json     # (one line)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xraypose.register.config import DEFAULT_LEVELS  # noqa: E402

F64 = torch.float64

#: Picked by eye on frame 0002's full-size (1760²) radiographs: the centre of the radius's distal
#: articular end and of its shaft about 70 mm proximal (u, v pixels).  Their rays meet within 4 and
#: 2 mm: the same points in both views, to the precision of a start.
START_PIXELS = {"cam01": [(880.0, 1225.0), (875.0, 1650.0)], "cam02": [(650.0, 1215.0), (610.0, 1650.0)]}
#: The third metacarpal's head (the metacarpophalangeal joint) and base (at the carpus), frame 0002: picked in
#: cam02 (the dorsal-palmar view: the middle one of the four finger metacarpals, the thumb's side on the
#: left), then in cam01 (lateral: the metacarpals overlap) on those points' epipolar lines.  Their rays meet
#: within 1.1 and 0.3 mm, 60 mm apart.  Which end the volume's axis calls distal is not known for this
#: bone (its base is as broad as its head): both directions are started (``--both-directions``).
MC3_START_PIXELS = {"cam01": [(1285.0, 785.0), (1040.0, 1055.0)], "cam02": [(470.0, 760.0), (560.0, 1050.0)]}
#: The ulna's distal end (the head, beside the radius's) and its shaft ~70 mm proximal, frame 0002: picked in cam02
#: (dorsal-palmar: the bone on the little finger's side), then put in cam01 (lateral: radius and ulna overlap, the
#: ulna cannot be told apart there) on those points' epipolar lines at the radius's depth along cam02's rays
#: (1076 mm; side by side in cam02's view, the two bones lie at about one depth from its source).
ULNA_START_PIXELS = {"cam01": [(838.5, 1214.5), (831.7, 1606.4)], "cam02": [(745.0, 1245.0), (742.0, 1650.0)]}
BONE_START_PIXELS = {"rad": START_PIXELS, "mc3": MC3_START_PIXELS, "uln": ULNA_START_PIXELS,
                     "mc2_mc3": MC3_START_PIXELS}
#: A volume whose start axis is one of its bones': the second and third metacarpals' volume holds the third's
#: volume voxel for voxel (``part_origin``), and the third's head and base are what was picked.
AXIS_BONE = {"mc2_mc3": "mc3"}
#: Figure file per bone.
BONE_FIGURE = {"rad": "wrist_radius.png", "mc3": "wrist_mc3.png", "uln": "wrist_ulna.png",
               "mc2_mc3": "wrist_mc2_mc3.png"}
#: Rolls of the start about the radius's axis, degrees.
ROLLS_DEG = tuple(range(0, 360, 30))
#: The default schedule with the volume averaged for a 20–30 mm wide bone; bone only: no bone, tissue or curve
#: fits (the part settings, xraypose.structure.PART_LEVEL_OFF).
WRIST_LEVELS = tuple(dataclasses.replace(lv, volume_mm=mm, fit_bone=False, fit_tissue=False, fit_curve=False,
                                         similarity="gncc")
                     for lv, mm in zip(DEFAULT_LEVELS, (3.0, 2.0, 1.0, 0.6))) + (
    dataclasses.replace(DEFAULT_LEVELS[-1], size=256, volume_mm=None, fit_bone=False, fit_tissue=False,
                        fit_curve=False),)
WINDOW_MARGIN_MM = 25.0
#: The bone volumes' stored value of water: they read like HU + 1024 (12 bits, cortex saturating at
#: 4095; marrow and the partial-volume rim 700–1300; 0 outside the segmented bone).
WATER_VALUE = 1024.0


def wrist_config(threads: int = 1, sets=()) -> dict:
    """RegistrationConfig keywords: :data:`WRIST_LEVELS`, raw density, and — a part of the body (the
    radius) against X-rays of the whole wrist — the settings ``xraypose register --structure`` uses
    (:func:`xraypose.structure.part_settings`: gradient NCC, no intensity matching: the X-ray's
    quantile map onto a DRR of the radius alone is no intensity relationship; matched, this script's
    frame 0002 ended at a similarity of 0.15–0.23 instead of 0.27–0.56, docs/wrist.md).  ``sets``:
    ``FIELD=VALUE`` overrides (JSON values)."""
    from xraypose.structure import part_settings

    cfg = part_settings({"levels": WRIST_LEVELS, "density": "raw", "similarity": "gncc", "drr_blur": 1.0,
                         "record_trajectory": False, "num_threads": threads}, "raw")
    cfg.update((k, json.loads(v)) for k, v in (kv.split("=", 1) for kv in sets))
    return cfg


def above_water(vol, water: float = WATER_VALUE):
    """The volume as the attenuation it adds to an X-ray of the wrist: ``max(value − water, 0)`` (a bone
    inside soft tissue adds what it attenuates more than water; rendered whole, with 0 around it, its
    segmented outline would be an edge the radiograph does not have: xraypose.structure)."""
    from xraypose.volume import Volume

    return Volume(data=(vol.data - water).clamp_min(0.0), affine=vol.affine, isocenter=vol.isocenter,
                  source=f"{vol.source}, max(value - {water:g}, 0)")


def volume_axis(vol) -> tuple[torch.Tensor, torch.Tensor]:
    """(distal end point, unit axis distal → proximal) of a long bone volume, world mm: the principal
    axis of its bone voxels (> half the maximum); the distal end is the heavier one (the flare)."""
    d = vol.data
    idx = torch.nonzero(d > 0.5 * float(d.max())).to(F64)
    w = vol.voxel_to_world(idx)
    c = w.mean(0)
    _, _, V = torch.linalg.svd(w - c, full_matrices=False)
    a = V[0]
    s = (w - c) @ a
    n_lo, n_hi = int((s < s.quantile(0.2)).sum()), int((s > s.quantile(0.8)).sum())
    # the flared end holds more bone per length: compare the spread of each end
    r_lo = ((w[s < s.quantile(0.15)] - c) - s[s < s.quantile(0.15), None] * a).norm(dim=-1).mean()
    r_hi = ((w[s > s.quantile(0.85)] - c) - s[s > s.quantile(0.85), None] * a).norm(dim=-1).mean()
    if r_hi > r_lo:  # the distal end at the low side
        a = -a
    del n_lo, n_hi
    s = (w - c) @ a
    distal = c + a * float(s.quantile(0.02))
    return distal, a


def rotation_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(3, 3) rotation taking unit vector a to unit vector b (the shortest)."""
    from xraypose.geometry import so3_exp

    v = torch.linalg.cross(a, b)
    s, c = float(v.norm()), float(a @ b)
    if s < 1e-12:
        return torch.eye(3, dtype=F64) if c > 0 else so3_exp(torch.tensor([math.pi, 0.0, 0.0], dtype=F64))
    return so3_exp(v / s * math.atan2(s, c))


def axis_starts(vol, P_dist, P_prox, rolls_deg=ROLLS_DEG, both_directions: bool = False,
                axis_vol=None) -> torch.Tensor:
    """(K, 4, 4) rig_to_world starts: the volume's axis on the triangulated one, turned by each roll;
    ``both_directions``: also the volume's axis reversed (its other end on ``P_dist``), 2K starts.
    ``axis_vol``: take the axis from this volume instead (a bone of ``vol``, in ``vol``'s world frame)."""
    from xraypose.geometry import make_transform

    axis = vol if axis_vol is None else axis_vol
    d_vol, a_vol = volume_axis(axis)
    want = (P_prox - P_dist) / (P_prox - P_dist).norm()
    R0 = rotation_between(a_vol, want)
    out = [rolled(make_transform(R0, P_dist - R0 @ d_vol), axis, rolls_deg)]
    if both_directions:  # the volume's proximal end (its axis's far end) on P_dist
        length = float((P_prox - P_dist).norm())
        p_vol = d_vol + a_vol * length
        R1 = rotation_between(-a_vol, want)
        out.append(rolled(make_transform(R1, P_dist - R1 @ p_vol), axis, rolls_deg))
    return torch.cat(out)


def agreement(bone_to_cal_joint, bone_to_cal_single, centre, beam_dir) -> dict:
    """Difference of the radius's pose in the calibration frame: centre distance (mm), its part along
    the view's beam (mm), the rest (in the image plane, mm), and the rotation angle (degrees)."""
    pj = bone_to_cal_joint[:3, :3] @ centre + bone_to_cal_joint[:3, 3]
    ps = bone_to_cal_single[:3, :3] @ centre + bone_to_cal_single[:3, 3]
    d = ps - pj
    along = float(d @ beam_dir)
    from xraypose.geometry.so3 import rotation_angle

    ang = math.degrees(float(rotation_angle(bone_to_cal_single[:3, :3] @ bone_to_cal_joint[:3, :3].T)))
    return {"centre_mm": float(d.norm()), "along_beam_mm": along,
            "in_plane_mm": float((d - along * beam_dir).norm()), "rotation_deg": ang}


def view_agreement(bone_to_cal_joint, view: dict, camera_to_world, centre) -> dict:
    """:func:`agreement` of one view's own result (its ``camera_to_world``; ``view``: :func:`prepare_views`'s) with
    the joint pose ``bone_to_cal_joint``, along that view's beam (its camera's +z in the calibration frame)."""
    C = view["camera_to_rig"].to(F64)
    return agreement(bone_to_cal_joint, C @ torch.linalg.inv(camera_to_world), centre, C[:3, 2] / C[:3, 2].norm())


def prepare_views(ds, frame: str, rig, start, vol, cams=None, exclude=()):
    """Per camera (name, image, camera, camera_to_rig, weights) of one frame, windowed at ``start``;
    ``cams``: only these cameras (default all); ``exclude``: (volume, rig_to_world) of other bones whose
    projection (no margin) is taken out of the weights — a neighbour the DRR does not hold."""
    from xraypose.preprocess import gaussian_blur
    from xraypose.structure import structure_weights, structure_window, window_image

    out = []
    for cam in cams or ds.cameras:
        v = ds.view(frame, cam)
        img = torch.as_tensor(gaussian_blur(v.image, 5, 1.0), dtype=torch.float32).reshape(v.image.shape)
        C = rig[cam].camera_to_rig.to(F64)
        T = start @ C
        win = structure_window(v.camera, T, vol.corners.to(F64), margin_mm=WINDOW_MARGIN_MM)
        if win is None:
            raise SystemExit(f"the bone projects outside {cam} at the start")
        wimg, wcam = window_image(img, v.camera, win)
        field, _ = window_image(v.mask.float(), v.camera, win)
        foot = structure_weights(vol, wcam, T, density="raw")
        for other, S in exclude:
            foot = foot * (1.0 - structure_weights(other, wcam, S.to(F64) @ C, density="raw", margin_mm=0.0))
        out.append({"name": cam, "image": wimg, "camera": wcam, "camera_to_rig": C, "weights": field * foot,
                    "window": win, "field": field})
    return out


def part_origin(outer, inner) -> torch.Tensor:
    """(3,) world position (mm, in ``outer``'s frame) of voxel (0, 0, 0) of ``inner``, a volume cut from the same
    CT as ``outer`` that ``outer`` holds voxel for voxel (the wrist's ``mc3`` inside ``mc2_mc3``): the offset
    where ``outer``'s values equal ``inner``'s on every voxel ``inner`` keeps (> 0).  Read ``inner`` with
    ``origin=`` this and the two volumes share one world frame: a pose of one is a pose of the other."""
    a, b = inner.data, outer.data
    if any(a.shape[k] > b.shape[k] for k in range(3)):
        raise SystemExit(f"a volume of {tuple(a.shape)} voxels cannot lie inside one of {tuple(b.shape)}")
    keep = a > 0
    best, at = None, None
    for i in range(b.shape[0] - a.shape[0] + 1):
        for j in range(b.shape[1] - a.shape[1] + 1):
            for k in range(b.shape[2] - a.shape[2] + 1):
                sub = b[i:i + a.shape[0], j:j + a.shape[1], k:k + a.shape[2]]
                d = float((sub[keep] - a[keep]).abs().max())
                if best is None or d < best:
                    best, at = d, (i, j, k)
    if best > 0:
        raise SystemExit(f"the inner volume is not a part of the outer one (closest offset {at} differs by {best:g})")
    return (outer.affine.to(F64) @ torch.tensor([*at, 1.0], dtype=F64))[:3]


def part_volume(ds, whole: str, part: str, water: float = WATER_VALUE):
    """Bone ``part``'s volume (e.g. ``mc3``) read in the world frame of ``whole``'s (``mc2_mc3``), which holds it
    (:func:`part_origin`), as rendered (:func:`above_water`): a pose of the one is a pose of the other."""
    return above_water(ds.volume(part, origin=part_origin(ds.volume(whole), ds.volume(part)).tolist()), water)


def rolled(bone_to_cal_start: torch.Tensor, vol, rolls_deg=ROLLS_DEG) -> torch.Tensor:
    """(K, 4, 4) rig_to_world starts: a pose of the radius (``bone_to_cal``, (4, 4)) turned about its own
    long axis (through its distal end) by each roll — the later frames' starts around the last result."""
    from xraypose.geometry import make_transform, so3_exp

    d_vol, a_vol = volume_axis(vol)
    R0, t0 = bone_to_cal_start[:3, :3], bone_to_cal_start[:3, 3]
    p, a = R0 @ d_vol + t0, R0 @ a_vol
    out = []
    for r in rolls_deg:
        Rr = so3_exp(a * math.radians(r))
        out.append(torch.linalg.inv(make_transform(Rr @ R0, Rr @ (t0 - p) + p)))
    return torch.stack(out)


def frame_starts(given, prev, vol, P_dist, P_prox, both_directions: bool = False, axis_vol=None) -> torch.Tensor:
    """(K, 4, 4) rig_to_world starts of one frame: a ``given`` rig_to_world (``--start-poses``) turned about the
    bone's axis in the 12 rolls; else, on the first frame (``prev`` None), the bone's axis on the picked one
    (:func:`axis_starts`); else the previous frame's joint result ``prev`` rolled.  ``axis_vol``: the volume whose
    axis is the bone's (:data:`AXIS_BONE`)."""
    axis = vol if axis_vol is None else axis_vol
    if given is not None:
        return rolled(torch.linalg.inv(torch.as_tensor(given, dtype=F64)), axis)
    if prev is None:
        return axis_starts(vol, P_dist, P_prox, both_directions=both_directions, axis_vol=axis_vol)
    return rolled(torch.linalg.inv(prev), axis)


def best_of(results):
    """The result of the highest final similarity, and its index."""
    k = max(range(len(results)), key=lambda i: float(results[i].similarity))
    return results[k], k


def register_alone(vol, view: dict, rig_to_world: torch.Tensor, reg):
    """One view of :func:`prepare_views` registered alone from a rig pose (its camera_to_world there), with its
    weights, no hypotheses."""
    from xraypose.register.api import register_xray

    return register_xray(vol, view["image"], view["camera"], (rig_to_world @ view["camera_to_rig"])[None],
                         registrar=reg, hypotheses=False, masks=view["weights"])[0]


def register_frame(vol, ds, rig, frame: str, starts, reg, exclude=()):
    """Joint and single-view registrations of one frame.  Each is run to the end from every start (the
    rolls) on views windowed and weighted where the radius projects at the first start, the best final
    similarity kept (on frame 0002 the roll that led after the first level ended at 0.27, four of the
    twelve ended together at 0.56–0.58, 0.2 mm and 1.2° apart; docs/wrist.md); then registered once more
    from that result on views windowed and weighted where the radius projects *there* (the footprint of
    the start misses a bone that moved: 15–17 mm between frames 0002 and 0099).  Returns (joint, singles,
    the views the joint was last registered on, the start it came from, each view's start index, the
    joint similarities of every start).  ``exclude``:
    other bones' (volume, rig_to_world) taken out of every view's weights (:func:`prepare_views`)."""
    from xraypose.errors import InputError
    from xraypose.register.multiview import ViewImage, register_rig

    def images(views):
        return [ViewImage(v["name"], v["image"], v["camera"], v["camera_to_rig"], mask=v["weights"]) for v in views]

    views = prepare_views(ds, frame, rig, starts[0], vol, exclude=exclude)
    joints = [register_rig(vol, images(views), S[None], registrar=reg, hypotheses=False) for S in starts]
    first, k = best_of(joints)
    try:
        again = prepare_views(ds, frame, rig, first.rig_to_world, vol, exclude=exclude)
        joint = register_rig(vol, images(again), first.rig_to_world[None], registrar=reg, hypotheses=False)
    except (InputError, SystemExit) as e:  # the best result left a view: nothing to rewindow there
        print(f"frame {frame}: not rewindowed at the best start's result ({e})", flush=True)
        again, joint = views, first
    singles, single_starts = [], []
    for v in views:
        r, i = best_of([register_alone(vol, v, S, reg) for S in starts])
        # the view's own result, rewindowed there (its camera_to_world seen as a rig pose of this view)
        S1 = r.camera_to_world @ torch.linalg.inv(v["camera_to_rig"])
        try:
            v1 = prepare_views(ds, frame, rig, S1, vol, cams=[v["name"]], exclude=exclude)[0]
            r = register_alone(vol, v1, S1, reg)
        except (InputError, SystemExit) as e:  # e.g. the bone left the view there: keep the first result
            print(f"frame {frame} {v['name']}: not rewindowed at its result ({e})", flush=True)
        singles.append(r)
        single_starts.append(i)
    return joint, singles, again, starts[k], single_starts, [float(x.similarity) for x in joints]


def frame_row(f: str, joint, singles, views, S0, single_starts, start_sims, centre, label: str = "") -> dict:
    """One frame's JSON row of :func:`register_frame`'s results (printing each view's agreement with the joint
    result at ``centre``, the bone's centre in its volume's world; ``label`` names the bone in the lines)."""
    b_joint = torch.linalg.inv(joint.rig_to_world)
    row = {"frame": f, "start_rig_to_world": S0.tolist(), "joint": {
        "rig_to_world": joint.rig_to_world.tolist(), "similarity": joint.similarity, "verdict": joint.verdict,
        "p_success": joint.p_success, "reason": joint.reason, "status": joint.status,
        "views": {v.name: {"verdict": v.verdict, "p_success": v.p_success, "reason": v.reason, "spread": v.spread}
                  for v in joint.views}},
        "single": {}, "windows": {v["name"]: list(v["window"]) for v in views},
        "joint_similarity_per_start": start_sims}
    tag = f"frame {f}" + (f" {label}" if label else "")
    for v, s in zip(views, singles):
        agr = view_agreement(b_joint, v, s.camera_to_world, centre)
        row["single"][v["name"]] = {"camera_to_world": s.camera_to_world.tolist(), "similarity": s.similarity,
                                    "verdict": s.verdict, "p_success": s.p_success, "reason": s.reason,
                                    "status": s.status, "vs_joint": agr, "start": single_starts[len(row["single"])],
                                    "spread": s.spread}
        print(f"{tag} {v['name']} alone vs joint: centre {agr['centre_mm']:.2f} mm (along its beam "
              f"{agr['along_beam_mm']:+.2f}, in plane {agr['in_plane_mm']:.2f}), rotation "
              f"{agr['rotation_deg']:.2f}°; verdict {s.verdict} (P {s.p_success:.2f}); its own spread {s.spread}",
              flush=True)
    print(f"{tag} joint: similarity {joint.similarity:.4f}, verdict {joint.verdict} (P {joint.p_success:.2f}): "
          f"{joint.reason}", flush=True)
    return row


def overlay_figure(path, vol, frames_out, title: str):
    """Rows: frames; per view, the radiograph's window and the DRR at the joint result blended over it
    (orange), and, given single-view results, the DRR at the view's own result (cyan)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from xraypose.evaluate import PictureRenderer
    from xraypose.io import atomic_write_bytes
    from xraypose.viz import normalise

    rend = PictureRenderer(vol, density="raw", n_samples=384)
    n, m = len(frames_out), len(frames_out[0]["views"])
    k = 3 if frames_out[0].get("single_poses") is not None else 2
    fig, ax = plt.subplots(n, m * k, figsize=(2.6 * m * k, 3.3 * n), dpi=110, squeeze=False)
    for i, fo in enumerate(frames_out):
        for j, v in enumerate(fo["views"]):
            x = normalise(v["image"])
            panels = [("radiograph", None, None), ("joint", fo["joint"] @ v["camera_to_rig"], [1.0, 0.5, 0.0])]
            if k == 3:
                panels.append(("alone", fo["single_poses"][j], [0.0, 0.8, 1.0]))
            for q, (what, T, colour) in enumerate(panels):
                rgb = np.stack([x, x, x], -1)
                if T is not None:
                    d = rend(v["camera"], T[None])[0].numpy()
                    d = np.clip(d / max(float(np.quantile(d[d > 0], 0.99)) if (d > 0).any() else 1.0, 1e-9), 0, 1)
                    rgb = rgb * (1 - 0.6 * d[..., None]) + 0.6 * d[..., None] * np.array(colour)
                a = ax[i, j * k + q]
                a.imshow(np.clip(rgb, 0, 1))
                a.axis("off")
                a.set_title(f"{fo['frame']} {v['name']}: {what}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def alone_from_joint(vol, ds, rig, frames, joints: dict, reg, exclude_for, centre) -> list:
    """Each view registered alone, started at a given joint result (``joints``: frame → rig_to_world, e.g. an
    earlier run's JSON), on views windowed and weighted there; where it ends against that joint result
    (:func:`agreement`), its similarity and its own spread.  ``exclude_for(frame)``: the other bones'
    (volume, rig_to_world) taken out of the weights.  A view's objective that keeps the joint pose says the
    single view's disagreement is its search's; one that leaves it, its optimum's."""
    from xraypose.errors import InputError

    rows = []
    for f in frames:
        S = torch.as_tensor(joints[f], dtype=F64)
        b_joint = torch.linalg.inv(S)
        try:
            views = prepare_views(ds, f, rig, S, vol, exclude=exclude_for(f))
        except SystemExit as e:
            print(f"frame {f}: {e}", flush=True)
            continue
        for v in views:
            try:
                r = register_alone(vol, v, S, reg)
            except InputError as e:
                print(f"frame {f} {v['name']}: {e}", flush=True)
                rows.append({"frame": f, "view": v["name"], "error": str(e)})
                continue
            agr = view_agreement(b_joint, v, r.camera_to_world, centre)
            rows.append({"frame": f, "view": v["name"], "vs_joint": agr, "similarity": r.similarity,
                         "status": r.status, "verdict": r.verdict, "spread": r.spread,
                         "weights_share": float(v["weights"].mean())})
            sp = r.spread or {}
            print(f"frame {f} {v['name']} alone from the given joint result: ends {agr['centre_mm']:.2f} mm from it "
                  f"(along its beam {agr['along_beam_mm']:+.2f}, in plane {agr['in_plane_mm']:.2f}), "
                  f"{agr['rotation_deg']:.2f}°; similarity {r.similarity:.4f}; its spread along the beam "
                  f"{sp.get('along_beam_mm', float('nan')):.2f} mm; weights cover {rows[-1]['weights_share']:.1%}",
                  flush=True)
    return rows


def figures(args, ds, rig, vol, results, part_vol=None, name: str | None = None, title: str | None = None) -> None:
    """The overlay pictures of ``results`` (the JSON's frames) into ``args.figures``; with ``part_vol``, the
    rows' ``part`` results too (``--part``); ``name``/``title``: this picture's file and title."""
    figs = []
    for r in results:
        views = prepare_views(ds, r["frame"], rig, torch.tensor(r["joint"]["rig_to_world"], dtype=F64), vol)
        figs.append({"frame": r["frame"], "views": views, "joint": torch.tensor(r["joint"]["rig_to_world"], dtype=F64),
                     "single_poses": [torch.tensor(r["single"][v["name"]]["camera_to_world"], dtype=F64)
                                      for v in views]})
    out = Path(args.figures)
    out.mkdir(parents=True, exist_ok=True)
    from xraypose.datasets.autoscoper import WRIST_BONES

    name = name or BONE_FIGURE[args.bone]
    overlay_figure(out / name, vol, figs, (title or f"the {WRIST_BONES[args.bone]}") + ": radiograph; DRR at the joint "
                   "result (orange); DRR at the view's own result (cyan)")
    print(f"wrote {out}/{name}")
    if part_vol is not None and all("part" in r for r in results):
        name = f"wrist_{args.part}_from_{args.bone}.png"
        figures(args, ds, rig, part_vol, [r["part"] for r in results], name=name,
                title=f"the {WRIST_BONES[args.part]}, registered alone from the result for the {WRIST_BONES[args.bone]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="the autoscoper_wrist folder (default ../shared/data/autoscoper_wrist)")
    ap.add_argument("--json", required=True)
    ap.add_argument("--figures", default=None, help="folder for the overlay pictures")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--frames", nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--replot", action="store_true", help="draw the figures from --json (no registration)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a RegistrationConfig field (JSON value), e.g. --set shift_search=null")
    ap.add_argument("--bone", default="rad", choices=sorted(BONE_START_PIXELS),
                    help="the bone: rad (radius, default), uln (ulna), mc3 (third metacarpal) or mc2_mc3 (the second and "
                         "third metacarpals, started on the third's picked axis)")
    ap.add_argument("--part", default=None, choices=sorted(set(AXIS_BONE.values())),
                    help="after each frame, register this bone of --bone's volume alone, started where --bone's joint "
                         "result puts it (mc3 in mc2_mc3: the JSON rows' `part`)")
    ap.add_argument("--start-poses", default=None, metavar="JSON",
                    help="a JSON whose `start_poses` maps frames to a rig_to_world start (e.g. from the hand's skin "
                         "markers, benchmarks/results/wrist/hand-beads-*.py.txt): those frames start there, turned "
                         "about the bone's axis in the 12 rolls, instead of at the picked axis or the previous frame")
    ap.add_argument("--both-directions", action="store_true",
                    help="start frame 0002 with the volume's axis both ways (2 x 12 starts)")
    ap.add_argument("--transfer", default="log", choices=("log", "linear"),
                    help="how a radiograph's display values become line integrals (AutoscoperWrist's transfer; "
                         "default log)")
    ap.add_argument("--exclude", nargs=2, action="append", default=[], metavar=("BONE", "JSON"),
                    help="take another bone's projection out of the weights, at its joint result per frame in JSON "
                         "(this script's output for that bone), e.g. --exclude uln ulna.json")
    ap.add_argument("--alone-from", default=None, metavar="JSON",
                    help="only register each view alone, started at the joint results of JSON (this script's "
                         "output for this bone), and say where each ends against them")
    ap.add_argument("--water", type=float, default=WATER_VALUE,
                    help="stored value of water: the volume is rendered as max(value - water, 0)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from xraypose.calibration import triangulate
    from xraypose.datasets import AutoscoperWrist
    from xraypose.io import atomic_write_json
    from xraypose.register import Registrar, RegistrationConfig
    from xraypose.register.confidence import part_model

    full = AutoscoperWrist(args.data)
    ds = AutoscoperWrist(args.data, size=args.size, transfer=args.transfer)
    rig = ds.rig()
    vol = above_water(ds.volume(args.bone), args.water)
    start_pixels = BONE_START_PIXELS[args.bone]
    # the start axis of one of its bones (AXIS_BONE); --part's bone
    axis_vol = part_volume(ds, args.bone, AXIS_BONE[args.bone], args.water) if args.bone in AXIS_BONE else None
    part_vol = None
    if args.part:  # (mc3 in mc2_mc3 is also the axis's bone: its volume read once)
        same = args.part == AXIS_BONE.get(args.bone)
        part_vol = axis_vol if same else part_volume(ds, args.bone, args.part, args.water)
    if args.replot:
        figures(args, ds, rig, vol, json.loads(Path(args.json).read_text(encoding="utf-8"))["frames"], part_vol)
        return 0
    (c1, T1), (c2, T2) = full.camera("cam01"), full.camera("cam02")
    tri = triangulate(start_pixels["cam01"], c1, T1, start_pixels["cam02"], c2, T2)
    P_dist, P_prox = tri["point"][0], tri["point"][1]
    print(f"start axis: rays meet within {tri['distance'].tolist()} mm; axis length "
          f"{float((P_prox - P_dist).norm()):.1f} mm", flush=True)
    cfg = wrist_config(args.threads, args.set)
    reg = Registrar(vol, RegistrationConfig(**cfg))
    reg.confidence_model = part_model()  # a part of the wrist: judged as xraypose register --structure judges it
    centre = vol.get_isocenter().to(F64)
    part_reg = part_centre = None
    if part_vol is not None:
        part_reg = Registrar(part_vol, RegistrationConfig(**cfg))
        part_reg.confidence_model = reg.confidence_model
        part_centre = part_vol.get_isocenter().to(F64)
    frames = args.frames or list(ds.frames)
    others, excluded = {}, {}
    for b, path in args.exclude:
        others[b] = above_water(ds.volume(b), args.water)
        got = {r["frame"]: r["joint"]["rig_to_world"]
               for r in json.loads(Path(path).read_text(encoding="utf-8"))["frames"]}
        missing = [f for f in frames if f not in got]
        if missing:
            raise SystemExit(f"--exclude {b} {path}: no joint result for frame(s) {', '.join(missing)}")
        excluded[b] = got

    def exclude_for(f):
        return [(others[b], torch.tensor(poses[f], dtype=F64)) for b, poses in excluded.items()]

    if args.alone_from:
        given = {r["frame"]: r["joint"]["rig_to_world"]
                 for r in json.loads(Path(args.alone_from).read_text(encoding="utf-8"))["frames"]}
        rows = alone_from_joint(vol, ds, rig, [f for f in frames if f in given], given, reg, exclude_for, centre)
        atomic_write_json(args.json, {"command": " ".join([sys.executable, *sys.argv]), "size": args.size,
                                      "transfer": args.transfer, "bone": args.bone, "alone_from": args.alone_from,
                                      "excluded": {b: p for b, p in args.exclude}, "views": rows})
        print(f"wrote {args.json}")
        return 0
    given = {} if not args.start_poses else json.loads(Path(args.start_poses).read_text(encoding="utf-8"))["start_poses"]
    results = []
    prev = None
    for f in frames:
        starts = frame_starts(given.get(f), prev, vol, P_dist, P_prox, args.both_directions, axis_vol)
        joint, singles, views, S0, single_starts, start_sims = register_frame(vol, ds, rig, f, starts, reg,
                                                                              exclude_for(f))
        prev = joint.rig_to_world
        b_joint = torch.linalg.inv(joint.rig_to_world)
        row = frame_row(f, joint, singles, views, S0, single_starts, start_sims, centre)
        if part_vol is not None:  # the part, registered again alone from where the whole put it
            pj, ps, pviews, pS0, pst, psims = register_frame(part_vol, ds, rig, f, joint.rig_to_world[None], part_reg,
                                                             exclude_for(f))
            row["part"] = frame_row(f, pj, ps, pviews, pS0, pst, psims, part_centre, label=args.part)
            row["part"]["from_whole"] = agreement(b_joint, torch.linalg.inv(pj.rig_to_world), part_centre,
                                                  torch.tensor([0.0, 0.0, 1.0], dtype=F64))
            fw = row["part"]["from_whole"]
            print(f"frame {f} {args.part}: moved {fw['centre_mm']:.2f} mm, {fw['rotation_deg']:.2f}° from where the "
                  f"{args.bone} put it", flush=True)
        if results:
            pj = torch.tensor(results[-1]["joint"]["rig_to_world"], dtype=F64)
            row["motion_from_previous"] = agreement(torch.linalg.inv(pj), b_joint, centre,
                                                    torch.tensor([0.0, 0.0, 1.0], dtype=F64))
        results.append(row)
    # each view alone once more, started at the joint result: its search's disagreement or its optimum's
    alone = alone_from_joint(vol, ds, rig, frames, {r["frame"]: r["joint"]["rig_to_world"] for r in results}, reg,
                             exclude_for, centre)
    atomic_write_json(args.json, {"command": " ".join([sys.executable, *sys.argv]), "size": args.size,
                                  "transfer": args.transfer, "bone": args.bone,
                                  "excluded": {b: p for b, p in args.exclude},
                                  "config": {k: v for k, v in cfg.items() if k != "levels"},
                                  "levels": [dataclasses.asdict(lv) for lv in WRIST_LEVELS],
                                  "start_pixels": start_pixels, "start_rays_mm": tri["distance"].tolist(),
                                  "start_poses": args.start_poses,
                                  "frames": results, "alone_from_joint": alone})
    print(f"wrote {args.json}")
    if args.figures:
        figures(args, ds, rig, vol, results, part_vol)
    return 0


if __name__ == "__main__":
    sys.exit(main())
