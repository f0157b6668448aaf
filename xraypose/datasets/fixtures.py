"""Layout-exact DeepFluoro and Ljubljana HDF5 files, generated from a real CT.

Tests and new users need the two dataset files, which cannot be downloaded
here.  These writers produce files with the same groups, names, shapes and
dtypes (``docs/datasets.md``), filled from a real CT (the bundled sample by
default) with X-rays rendered at known poses, so a loader reading them is a
real test of the frame conventions:

* poses are chosen in xraypose's frame (camera_to_world, world = RAS mm),
  then written in the files' own conventions — negative-focal K, LPS volumes,
  ``extrinsic`` and ``cam-to-pelvis-vol`` (DeepFluoro), world → camera
  extrinsics (Ljubljana), ``rot-180-for-up`` set on some images — with
  formulas written out here independently of :mod:`xraypose.converters`;
* the stored 2D landmarks are computed with the files' own projection
  formula (``P = extrinsic @ inv(cam-to-pelvis-vol) @ X``, ``[u, v, w] = K @ P[:3]``);
* images are raw intensities ``I0·exp(−L)``, rounded like 16-bit detector
  counts (stored as float32, as the real file does), with a dark collimator
  border on DeepFluoro images.

Each writer returns the ground truth (our poses, landmarks) as a dict and
writes it beside the file as ``<file>.truth.json``.  A file without that truth beside it is not a
fixture (the real dataset, of the same name): the writers refuse to replace it
(:func:`check_fixture_target`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from xraypose.camera import Camera, camera_from_K, carm_pose
from xraypose.errors import InputError

if TYPE_CHECKING:
    from xraypose.volume import Volume

__all__ = ["DEEPFLUORO_EXTRINSIC", "write_deepfluoro_fixture", "write_ljubljana_fixture", "resample_to_lps_grid",
           "LpsGrid", "check_fixture_target"]

F64 = torch.float64

#: The DeepFluoro ``proj-params/extrinsic`` (C-arm isocenter world → camera), as documented
#: in ../shared/data/README.md ("very probably" the real file's value).
DEEPFLUORO_EXTRINSIC = np.array(
    [
        [0.0014173902529073, 0.0000057733016248, 0.9999990957527923, -157.5822163123799555],
        [-0.9999907608500266, -0.0040758357952800, 0.0014174006256202, -2.6757496083693013],
        [0.0040758413782892, -0.9999918324063819, 0.0, -631.7764689585426368],
        [0.0, 0.0, 0.0, 1.0],
    ],
    dtype=np.float64,
)
_SPECIMENS = ("17-1882", "18-1109", "18-0725", "18-2799", "18-2800", "17-1905")
_LANDMARKS = ("ASIS-l", "ASIS-r", "FH-l", "FH-r", "GSN-l", "GSN-r", "IOF-l", "IOF-r", "IPS-l", "IPS-r",
              "MOF-l", "MOF-r", "SPS-l", "SPS-r")
_LABELS = {1: "left-hemipelvis", 2: "right-hemipelvis", 3: "vertebrae", 4: "upper-sacrum", 5: "left-femur",
           6: "right-femur", 7: "lower-sacrum"}
# Written independently of xraypose.converters on purpose (the loaders use those).
_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])       # LPS <-> RAS
_NEG_FOCAL = np.diag([-1.0, 1.0, -1.0, 1.0])     # their camera (+z to source) <-> ours (+z to detector)
_ROT180 = np.diag([-1.0, -1.0, 1.0, 1.0])        # 180° about the camera's principal axis
DEEPFLUORO_I0 = 65487.0
DEEPFLUORO_FOCAL_MM = 1020.0
DEEPFLUORO_PIXEL_MM_1536 = 0.194


# --------------------------------------------------------------------------
# Volumes
# --------------------------------------------------------------------------


def _sample_ct(volume: Volume, points_ras: torch.Tensor, fill: float) -> torch.Tensor:
    """Trilinear samples of ``volume.data`` at world RAS points (..., 3); ``fill`` outside."""
    inv = torch.linalg.inv(volume.affine)
    ijk = points_ras @ inv[:3, :3].T + inv[:3, 3]
    shape = torch.tensor(volume.shape, dtype=F64)
    grid = 2.0 * ijk / (shape - 1) - 1.0  # align_corners=True: index 0 -> -1, n-1 -> +1
    g = grid.flip(-1).to(torch.float32)  # grid_sample wants (x=k, y=j, z=i) for a (D=i, H=j, W=k) volume
    out = F.grid_sample(volume.data.to(torch.float32)[None, None], g.reshape(1, 1, 1, -1, 3), mode="bilinear",
                        padding_mode="zeros", align_corners=True).reshape(points_ras.shape[:-1])
    ones = F.grid_sample(torch.ones(1, 1, *volume.shape), g.reshape(1, 1, 1, -1, 3), mode="bilinear",
                         padding_mode="zeros", align_corners=True).reshape(points_ras.shape[:-1])
    return torch.where(ones > 0.999, out / ones.clamp_min(1e-6), torch.full_like(out, fill))


class LpsGrid(NamedTuple):
    """A CT resampled on an LPS-aligned grid (:func:`resample_to_lps_grid`): voxel ``pixels[k, j, i]`` at LPS
    ``origin + spacing * (i, j, k)``."""

    pixels: np.ndarray  #: (K, J, I) float32 HU
    origin: np.ndarray  #: (3,) LPS mm
    spacing: np.ndarray  #: (3,) mm


def resample_to_lps_grid(volume: Volume, center_ras, size_mm, spacing_mm: float = 1.0,
                         fill: float = -1024.0) -> LpsGrid:
    """Resample a CT onto a grid aligned with LPS axes (DeepFluoro's ``dir-mat`` = I).

    Returns ``(pixels_zyx float32, origin_lps (3,), spacing (3,))`` with voxel
    ``pixels[k, j, i]`` at LPS ``origin + spacing * (i, j, k)``.
    """
    n = [max(2, int(round(s / spacing_mm))) for s in size_mm]
    c_lps = np.asarray(center_ras, dtype=np.float64) * np.array([-1.0, -1.0, 1.0])
    origin = c_lps - spacing_mm * (np.array(n) - 1) / 2.0
    axes = [torch.arange(m, dtype=F64) * spacing_mm + float(o) for m, o in zip(n, origin)]
    X, Y, Z = torch.meshgrid(*axes, indexing="ij")
    ras = torch.stack([-X, -Y, Z], dim=-1)
    vals = _sample_ct(volume, ras, fill)  # (i, j, k)
    return LpsGrid(vals.permute(2, 1, 0).contiguous().numpy().astype(np.float32), origin, np.full(3, float(spacing_mm)))


def _ras_volume_from_lps_grid(pixels_zyx, origin_lps, spacing):
    """Our RAS Volume of a DeepFluoro-style LPS grid (written out here, not via the loader)."""
    from xraypose.volume import volume_from_array

    A = np.eye(4)
    A[:3, :3] = np.diag(spacing)
    A[:3, 3] = origin_lps
    return volume_from_array(np.ascontiguousarray(pixels_zyx.transpose(2, 1, 0)), affine=_LPS_RAS @ A)


def _segment(pixels_zyx, origin_lps, spacing):
    """Rough labels 1..7 on bone (HU > 250) by position: enough for a layout-exact ``vol-seg``."""
    Z, Y, X = pixels_zyx.shape
    k, j, i = np.meshgrid(np.arange(Z), np.arange(Y), np.arange(X), indexing="ij")
    x = origin_lps[0] + spacing[0] * i  # LPS x: + toward the patient's left
    z = origin_lps[2] + spacing[2] * k
    cx = origin_lps[0] + spacing[0] * (X - 1) / 2
    z0 = origin_lps[2]
    z_lo, z_hi = z0 + 0.25 * spacing[2] * (Z - 1), z0 + 0.8 * spacing[2] * (Z - 1)
    left = x > cx
    mid = np.abs(x - cx) < 20.0
    lab = np.zeros(pixels_zyx.shape, dtype=np.uint8)
    lab[left] = 1
    lab[~left] = 2
    lab[mid & (z > (z_lo + z_hi) / 2)] = 4
    lab[mid & (z <= (z_lo + z_hi) / 2)] = 7
    lab[(z < z_lo) & left] = 5
    lab[(z < z_lo) & ~left] = 6
    lab[z > z_hi] = 3
    lab[pixels_zyx <= 250] = 0
    return lab


def _spread_points(points: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points of the cloud spread out (farthest-point sampling from a random start)."""
    if len(points) < n:
        raise InputError(f"fixture volume has only {len(points)} bone voxels; need at least {n} for landmarks")
    sub = points[rng.choice(len(points), size=min(len(points), 20000), replace=False)]
    chosen = [sub[rng.integers(len(sub))]]
    d = np.linalg.norm(sub - chosen[0], axis=1)
    for _ in range(n - 1):
        chosen.append(sub[int(np.argmax(d))])
        d = np.minimum(d, np.linalg.norm(sub - chosen[-1], axis=1))
    return np.array(chosen)


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


def _render_L(volume: Volume, camera: Camera, pose: torch.Tensor, density, render_scale: int, step):
    """Line integrals (H, W) float64 at ``pose``; rendered on a coarser grid when ``render_scale`` > 1."""
    from xraypose.render import render

    cam = camera if render_scale == 1 else camera.resize(max(1, camera.height // render_scale),
                                                          max(1, camera.width // render_scale))
    with torch.no_grad():
        L = render(density, volume.affine, cam, pose.to(torch.float32)[None], step=step)[0, 0].to(F64)
    if render_scale != 1:
        L = F.interpolate(L[None, None], size=(camera.height, camera.width), mode="bilinear",
                          align_corners=False)[0, 0]
    return L


def _to_counts(L: torch.Tensor, i0: float) -> np.ndarray:
    """Raw detector counts I0·exp(−L), rounded to integers in [1, 65535] (16-bit-like), float32."""
    I = torch.round(i0 * torch.exp(-L)).clamp(1.0, 65535.0)
    return I.numpy().astype(np.float32)


def _write_image_group(g, pixels: np.ndarray, spacing_rc):
    g.create_dataset("pixels", data=pixels)
    g.create_dataset("dir-mat", data=np.eye(2, dtype=np.float32))
    g.create_dataset("origin", data=np.zeros((2, 1), dtype=np.float32))
    g.create_dataset("spacing", data=np.array([[spacing_rc[1]], [spacing_rc[0]]], dtype=np.float32))


def _write_volume_group(g, pixels_zyx, origin_lps, spacing):
    g.create_dataset("pixels", data=pixels_zyx)
    g.create_dataset("dir-mat", data=np.eye(3, dtype=np.float32))
    g.create_dataset("origin", data=np.asarray(origin_lps, dtype=np.float32).reshape(3, 1))
    g.create_dataset("spacing", data=np.asarray(spacing, dtype=np.float32).reshape(3, 1))


def _rot_about(axis, angle_deg, center) -> np.ndarray:
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    t = math.radians(angle_deg)
    Kx = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    R = np.eye(3) + math.sin(t) * Kx + (1 - math.cos(t)) * Kx @ Kx
    T = np.eye(4)
    T[:3, :3] = R
    c = np.asarray(center, dtype=np.float64)
    T[:3, 3] = c - R @ c
    return T


# --------------------------------------------------------------------------
# DeepFluoro
# --------------------------------------------------------------------------


def write_deepfluoro_fixture(
    path,
    *,
    volume: Volume | None = None,
    detector: int = 128,
    specimens=(1, 2),
    n_projections: int = 3,
    region_mm=(160.0, 120.0, 130.0),
    center_ras=(-5.0, 130.0, 170.0),
    spacing_mm: float = 1.0,
    principal_offset_px=(3.0, -2.0),
    rot180_every: int = 2,
    render_scale: int = 1,
    step: float | None = 1.0,
    collimator: bool = True,
    seed: int = 0,
) -> dict:
    """Write a DeepFluoro-layout ``ipcai_2020_full_res_data.h5``.

    Args:
        path: output file.
        volume: the CT (xraypose Volume, HU); default the bundled sample CT.
        detector: detector size in pixels (1536 is the real one); the physical
            detector keeps its size (pixel spacing 0.194·1536/detector mm) and
            the focal length is 1020 mm.
        specimens: which specimens (1..6) to write.
        n_projections: X-rays per specimen.
        region_mm, center_ras: the box of the CT resampled to the 1 mm LPS grid.
        principal_offset_px: the K's principal point minus the image centre,
            pixels (0, 0 in the real file).
        rot180_every: every n-th image (1, 1+n, ...) gets ``rot-180-for-up`` = 1
            and a pose turned 180° about the principal ray (0: none).
        render_scale: render at detector/render_scale and upsample (for full size).
        step: ray-marching step, mm.
        collimator: darken a border thinner than the 50-px (at 1536) crop.
    Returns:
        the ground truth: ``{"file", "extrinsic", "intrinsic", "specimens": {id:
        {"group", "fiducials_ras", "fiducials_lps", "projections": [{"key",
        "pose", "left_femur_pose", "right_femur_pose", "rot180",
        "landmarks"}]}}}`` (poses are our camera_to_world, RAS).
    """
    import h5py

    from xraypose.io import atomic_output
    from xraypose.volume import load_sample_ct

    specimens = checked_ids(specimens, "DeepFluoro specimens", 6)  # before any work or write
    check_fixture_target(path)
    if volume is None:
        volume = load_sample_ct()
    rng = np.random.default_rng(seed)
    scene = _deepfluoro_scene(volume, int(detector), principal_offset_px, center_ras, region_mm, spacing_mm,
                              collimator)
    scene.render_scale, scene.step, scene.rot180_every = render_scale, step, rot180_every
    path = Path(path)
    H, W = scene.camera.height, scene.camera.width
    truth = {"file": str(path), "extrinsic": scene.E.tolist(), "intrinsic": scene.K64.tolist(), "detector": [H, W],
             "pixel_spacing": scene.delta32, "specimens": {}}
    with atomic_output(path) as tmp, h5py.File(str(tmp), "w") as f:  # no half-written file on failure
        pp = f.create_group("proj-params")
        pp.create_dataset("intrinsic", data=scene.K)
        pp.create_dataset("extrinsic", data=scene.E)
        pp.create_dataset("num-rows", data=np.uint32(H))
        pp.create_dataset("num-cols", data=np.uint32(W))
        pp.create_dataset("pixel-row-spacing", data=np.float32(scene.delta))
        pp.create_dataset("pixel-col-spacing", data=np.float32(scene.delta))
        for sid in specimens:
            truth["specimens"][sid] = _write_deepfluoro_specimen(f, sid, scene, n_projections, rng)
    _write_truth(path, truth)
    return truth


@dataclass
class _DeepFluoroScene:
    """What every specimen of a DeepFluoro fixture shares: the detector (K in pixels, negative focal length,
    as the file stores it; ``camera`` ours), the extrinsic E, the CT on its LPS grid (``pixels`` z, y, x with
    ``origin``, ``spacing`` mm), its RAS volume and density, labels, bone voxels (LPS mm) and centre (RAS mm)."""

    K: np.ndarray
    K64: np.ndarray
    E: np.ndarray
    delta: float
    delta32: float
    camera: Camera
    pixels: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    vol_ras: object
    density: torch.Tensor
    labels: np.ndarray
    bone_lps: np.ndarray
    centre_ras: np.ndarray
    border: int
    render_scale: int = 1
    step: float | None = 1.0
    rot180_every: int = 2


def _deepfluoro_scene(volume: Volume, detector: int, principal_offset_px, center_ras, region_mm, spacing_mm,
                      collimator: bool) -> _DeepFluoroScene:
    """The detector (1020 mm focal length, 0.194 mm pixels at 1536) and the CT resampled to the LPS grid."""
    W = H = detector
    delta = DEEPFLUORO_PIXEL_MM_1536 * 1536 / W
    f_px = DEEPFLUORO_FOCAL_MM / delta
    K = np.array([[-f_px, 0.0, (W - 1) / 2 + principal_offset_px[0]],
                  [0.0, -f_px, (H - 1) / 2 + principal_offset_px[1]], [0.0, 0.0, 1.0]], dtype=np.float32)
    K64 = K.astype(np.float64)  # everything below uses exactly what the file stores
    delta32 = float(np.float32(delta))
    cam, _ = camera_from_K(K64, H, W, delta32, delta32)
    pixels, origin, spacing = resample_to_lps_grid(volume, center_ras, region_mm, spacing_mm)
    origin = origin.astype(np.float32).astype(np.float64)
    vol_ras = _ras_volume_from_lps_grid(pixels, origin, spacing)
    Zs, Ys, Xs = np.nonzero(pixels > 300)
    ijk = np.stack([Xs, Ys, Zs], 1)
    shape_xyz = np.array(pixels.shape[::-1])
    inner = np.all((ijk >= 0.15 * shape_xyz) & (ijk <= 0.85 * shape_xyz), axis=1)  # landmarks away from the box faces
    if inner.sum() >= 2 * len(_LANDMARKS):
        ijk = ijk[inner]
    return _DeepFluoroScene(K=K, K64=K64, E=DEEPFLUORO_EXTRINSIC.copy(), delta=delta, delta32=delta32, camera=cam,
                            pixels=pixels, origin=origin, spacing=spacing, vol_ras=vol_ras,
                            density=vol_ras.density("physical"), labels=_segment(pixels, origin, spacing),
                            bone_lps=origin + spacing * ijk, centre_ras=vol_ras.center.numpy(),
                            border=int(round(40 * W / 1536)) if collimator else 0)


def _write_deepfluoro_specimen(f, sid: int, scene: _DeepFluoroScene, n_projections: int,
                               rng: np.random.Generator) -> dict:
    """One specimen's groups (volume, labels, landmarks, projections); returns its ground truth."""
    name = _SPECIMENS[sid - 1]
    g = f.create_group(name)
    _write_volume_group(g.create_group("vol"), scene.pixels, scene.origin, scene.spacing)
    seg = g.create_group("vol-seg")
    _write_volume_group(seg.create_group("image"), scene.labels, scene.origin, scene.spacing)
    ld = seg.create_group("labels-def")
    for k, v in _LABELS.items():
        ld.create_dataset(str(k), data=np.bytes_(v))
    fid_lps = _spread_points(scene.bone_lps, len(_LANDMARKS), rng)
    vl = g.create_group("vol-landmarks")
    for n, p in zip(_LANDMARKS, fid_lps):
        vl.create_dataset(n, data=p.reshape(3, 1))
    Xh = np.concatenate([fid_lps, np.ones((len(fid_lps), 1))], 1).T  # (4, N) LPS
    spec = {"group": name, "fiducials_lps": fid_lps.tolist(),
            "fiducials_ras": (fid_lps * np.array([-1.0, -1.0, 1.0])).tolist(), "projections": []}
    projs = g.create_group("projections")
    for p_i in range(n_projections):
        spec["projections"].append(_write_deepfluoro_projection(projs, p_i, scene, Xh, rng))
    return spec


def _write_deepfluoro_projection(projs, p_i: int, scene: _DeepFluoroScene, Xh: np.ndarray,
                                 rng: np.random.Generator) -> dict:
    """Projection ``p_i`` at a random C-arm pose (our camera_to_world T, RAS): image, labels, landmarks and
    poses in the file's conventions; returns its ground truth."""
    E, K64, cam, delta = scene.E, scene.K64, scene.camera, scene.delta
    primary = float(rng.uniform(-25, 25))
    secondary = float(rng.uniform(-15, 15))
    iso = scene.centre_ras + rng.normal(0, 8, 3)
    T = carm_pose(primary, secondary, sod=float(rng.uniform(560, 700)), isocenter=iso).numpy()
    rot = scene.rot180_every > 0 and p_i % scene.rot180_every == 1
    if rot:
        T = T @ _ROT180
    # their camera -> LPS volume is C2V @ inv(E); ours = LPS_RAS @ that @ NEG_FOCAL
    C2V = _LPS_RAS @ T @ _NEG_FOCAL @ E
    femurs = {}
    for side, sign in (("left", 1.0), ("right", -1.0)):
        D = _rot_about([1.0, 0.0, 0.0], sign * float(rng.uniform(2, 6)), scene.centre_ras + [sign * -40, 0, -30])
        Tf = D @ T
        femurs[side] = (Tf, _LPS_RAS @ Tf @ _NEG_FOCAL @ E)
    P = E @ np.linalg.inv(C2V) @ Xh
    uvw = K64 @ P[:3]
    lm = (uvw[:2] / uvw[2:]).T  # (N, 2) col, row
    L = _render_L(scene.vol_ras, cam, torch.from_numpy(T), scene.density, scene.render_scale, scene.step)
    img = _to_counts(L, DEEPFLUORO_I0)
    border = scene.border
    if border:
        low = np.float32(round(DEEPFLUORO_I0 * math.exp(-9.0)))
        img[:border, :] = low
        img[-border:, :] = low
        img[:, :border] = low
        img[:, -border:] = low
    key = f"{p_i:03d}"
    pg = projs.create_group(key)
    _write_image_group(pg.create_group("image"), img, (delta, delta))
    seg_img = _project_labels(scene.vol_ras, scene.labels, cam, T, scene.step)
    _write_image_group(pg.create_group("gt-seg"), seg_img, (delta, delta))
    gl = pg.create_group("gt-landmarks")
    for n, uv in zip(_LANDMARKS, lm):
        gl.create_dataset(n, data=uv.astype(np.float32).reshape(2, 1))
    gp = pg.create_group("gt-poses")
    gp.create_dataset("cam-to-pelvis-vol", data=C2V)
    gp.create_dataset("cam-to-left-femur-vol", data=femurs["left"][1])
    gp.create_dataset("cam-to-right-femur-vol", data=femurs["right"][1])
    gp.create_dataset("left-femur-good-fov", data=np.uint8(1))
    gp.create_dataset("right-femur-good-fov", data=np.uint8(p_i % 2))
    pg.create_dataset("rot-180-for-up", data=np.uint8(1 if rot else 0))
    return {"key": key, "pose": T.tolist(), "rot180": bool(rot), "landmarks": lm.tolist(),
            "left_femur_pose": femurs["left"][0].tolist(), "right_femur_pose": femurs["right"][0].tolist(),
            "cam_to_pelvis_vol": C2V.tolist()}


def _project_labels(vol_ras, labels_zyx, cam: Camera, T: np.ndarray, step) -> np.ndarray:
    """A coarse ``gt-seg``: the label with the longest chord per pixel (rendered at 1/4 size)."""
    from xraypose.render import render

    lab = torch.from_numpy(np.ascontiguousarray(labels_zyx.transpose(2, 1, 0)).astype(np.int64))
    onehot = torch.stack([(lab == k).to(torch.float32) for k in range(1, 8)])
    small = cam.resize(max(1, cam.height // 4), max(1, cam.width // 4))
    with torch.no_grad():
        chords = render(onehot, vol_ras.affine, small, torch.from_numpy(T).to(torch.float32)[None],
                        step=2.0 if step is None else 2 * step)[0]
    best = chords.argmax(0) + 1
    best[chords.amax(0) < 1.0] = 0
    up = F.interpolate(best[None, None].to(torch.float32), size=(cam.height, cam.width), mode="nearest")[0, 0]
    return up.numpy().astype(np.uint8)


# --------------------------------------------------------------------------
# Ljubljana
# --------------------------------------------------------------------------


def write_ljubljana_fixture(
    path,
    *,
    volume: Volume | None = None,
    subjects=(1, 2),
    height: int = 96,
    width: int = 124,
    region_mm=(150.0, 150.0, 120.0),
    center_ras=(-5.0, 130.0, 170.0),
    spacing_mm: float = 2.5,
    n_points: int = 12,
    step: float | None = 2.0,
    seed: int = 1,
) -> dict:
    """Write a Ljubljana-layout ``ljubljana.h5`` (views ap, lat, ap-max, lat-max).

    The geometry follows the real calibrated C-arm (sdd ≈ 1196 / 1250 mm,
    0.154 mm pixels on a 2480×1920 detector, principal point off-centre),
    scaled to ``height × width`` pixels.  Volumes are "DSA intensities"
    (HU + 1024, ≥ 0) on a grid ``origin + spacing·(i, j, k)`` in the file's
    world (here: the CT's RAS frame).  Images are raw intensities
    ``I0·exp(−κ·∫v dl)`` (I0 = 4000) of that stored volume.
    """
    import h5py

    from xraypose.io import atomic_output
    from xraypose.volume import load_sample_ct

    subjects = checked_ids(subjects, "Ljubljana subjects", 10)  # before any work or write
    check_fixture_target(path)
    if volume is None:
        volume = load_sample_ct()
    rng = np.random.default_rng(seed)
    det_w_mm, det_h_mm = 2480 * 0.154, 1920 * 0.154
    c = np.asarray(center_ras, dtype=np.float64)
    vals, origin, vol = _ljubljana_volume(volume, c, region_mm, spacing_mm)
    sp = np.full(3, float(spacing_mm))
    kappa = 3.0 / (float(vals.mean()) * 150.0)  # about 3 along a 150 mm chord
    bright = np.argwhere(vals > np.percentile(vals, 99.5))
    pts = origin + spacing_mm * _spread_points(bright.astype(np.float64), n_points, rng)
    views = {  # name: (primary, secondary, sdd, principal point offset mm (col, row) of the displayed image)
        "ap": (0.0, 0.0, 1196.4, (-24.8, -0.8)),
        "lat": (90.0, 0.0, 1249.5, (-11.6, -1.5)),
    }
    path = Path(path)
    truth = {"file": str(path), "subjects": {}}
    with atomic_output(path) as tmp, h5py.File(str(tmp), "w") as f:  # no half-written file on failure
        for sid in subjects:
            g = f.create_group(f"subject{sid:02d}")
            vg = g.create_group("volume")
            vg.create_dataset("pixels", data=vals)
            vg.create_dataset("spacing", data=sp)
            vg.create_dataset("origin", data=origin)
            g.create_dataset("points", data=pts)
            st = {"points": pts.tolist(), "views": {}}
            for name, view in views.items():
                st["views"][name] = _write_ljubljana_view(g, name, view, vol, c, pts, kappa, height, width,
                                                          (det_w_mm / width, det_h_mm / height), step, rng)
            truth["subjects"][sid] = st
    _write_truth(path, truth)
    return truth


def _ljubljana_volume(volume: Volume, center: np.ndarray, region_mm, spacing_mm: float):
    """``(values (i, j, k) float32, origin (3,) mm, Volume)``: the CT's "DSA intensities" (HU + 1024, >= 0)
    resampled on the RAS-aligned grid ``origin + spacing·(i, j, k)`` of ``region_mm`` about ``center`` (RAS mm)."""
    from xraypose.volume import volume_from_array

    n = [max(2, int(round(s / spacing_mm))) for s in region_mm]
    origin = center - spacing_mm * (np.array(n) - 1) / 2.0
    axes = [torch.arange(m, dtype=F64) * spacing_mm + float(o) for m, o in zip(n, origin)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    vals = (_sample_ct(volume, grid, -1024.0) + 1024.0).clamp_min(0.0).numpy().astype(np.float32)
    aff = np.diag([*np.full(3, float(spacing_mm)), 1.0])
    aff[:3, 3] = origin
    return vals, origin, volume_from_array(vals, affine=aff)


def _write_ljubljana_view(g, name: str, view, vol: Volume, center: np.ndarray, pts: np.ndarray, kappa: float,
                          height: int, width: int, pixel_mm, step, rng: np.random.Generator) -> dict:
    """The groups ``proj-NAME`` and ``proj-NAME-max`` of one subject (a C-arm pose near ``view``'s angles,
    K with a negative focal length and the displayed principal point, world → camera extrinsic, images
    ``I0·exp(−κ·∫v dl)`` and ×1.3 brighter contrast); returns the view's ground truth."""
    from xraypose.render import render

    a1, a2, sdd, (oc, orow) = view
    delx, dely = pixel_mm
    i0 = 4000.0
    iso = center + rng.normal(0, 5, 3)
    T = carm_pose(a1 + rng.normal(0, 2), a2 + rng.normal(0, 2), sod=sdd * 0.62, isocenter=iso).numpy()
    # negative-focal K: columns of the displayed image, principal point (cu, cv) displayed
    cu = (width - 1) / 2 + oc / delx
    cv = (height - 1) / 2 + orow / dely
    K = np.array([[-sdd / delx, 0.0, cu], [0.0, -sdd / dely, cv], [0.0, 0.0, 1.0]])
    Ew = _NEG_FOCAL @ np.linalg.inv(T)  # world -> their camera (ours = inv(E) @ NEG_FOCAL)
    cam, _ = camera_from_K(K, height, width, delx, dely)
    with torch.no_grad():
        L = render(vol.data * kappa, vol.affine, cam, torch.from_numpy(T).to(torch.float32)[None],
                   step=step)[0, 0].to(F64)
    for suffix, scale in (("", 1.0), ("-max", 1.3)):
        I = (i0 * torch.exp(-scale * L)).numpy().astype(np.float32)
        pg = g.create_group(f"proj-{name}{suffix}")
        pg.create_dataset("pixels", data=I)
        pg.create_dataset("intrinsic", data=K)
        pg.create_dataset("extrinsic", data=Ew)
        pg.create_dataset("col-spacing", data=np.float64(delx))
        pg.create_dataset("row-spacing", data=np.float64(dely))
    Ph = Ew @ np.concatenate([pts, np.ones((len(pts), 1))], 1).T
    uvw = K @ Ph[:3]
    return {"pose": T.tolist(), "landmarks": (uvw[:2] / uvw[2:]).T.tolist(), "kappa": kappa, "i0": i0}


def check_fixture_target(path) -> None:
    """Raise :class:`~xraypose.io.OutputError` when ``path`` exists but is not a fixture (no
    ``<file>.truth.json`` beside it): the real DeepFluoro / Ljubljana file has the fixture's name, and
    writing a fixture over it would destroy it."""
    from xraypose.io import OutputError

    p = Path(path)
    if p.exists() and not p.with_name(p.name + ".truth.json").is_file():
        raise OutputError(f"{p} exists and is not an xraypose fixture (no {p.name}.truth.json beside it: the real "
                          "dataset?); write the fixtures into another folder, or move it away")


def checked_ids(ids, what: str, last: int) -> tuple[int, ...]:
    """``ids`` as whole numbers in 1..``last``, each once (a group is written once per file).

    Raises:
        InputError: naming ``what`` (e.g. "--subjects") and the bad or repeated id.
    """
    out = []
    for i in ids:
        if not 1 <= int(i) <= last:
            raise InputError(f"{what} must be 1..{last}, got {i}")
        if int(i) in out:
            raise InputError(f"{what}: {int(i)} is given twice; give each once")
        out.append(int(i))
    return tuple(out)


def _write_truth(path: Path, truth: dict) -> None:
    from xraypose.io import atomic_write_json

    atomic_write_json(path.with_name(path.name + ".truth.json"), truth)
