"""3D fiducials on bone, picked from a CT, for measuring registration errors on synthetic cases.

Real datasets come with anatomical landmarks (DeepFluoro's 14 pelvic
landmarks); a synthetic case made from any CT needs points of its own.  We take
points *inside bone*, spread as evenly as farthest-point sampling makes them,
optionally only where the X-ray sees them:

1. bone = voxels with ``hu_min <= HU <= hu_max`` (default 250…2000 HU) that
   have at least ``min_neighbors`` (default 8) bone voxels among their 26
   neighbours (drops isolated noisy voxels but keeps thin cortical shells, which
   a one-voxel erosion would wipe out on a 3 mm CT); voxels within
   ``metal_margin_vox`` of anything brighter than ``hu_max`` (metal, contrast)
   are excluded;
2. optionally keep only points that project inside the detector, ``margin_px``
   from its edges, for every given pose (``camera`` + ``poses``);
3. farthest-point sampling of ``n`` points from a seeded random subset of the
   candidates (deterministic for a seed).

Points are world (RAS) mm, float64, at voxel centres.

The user's own fiducials are read by :func:`read_fiducials_file` (JSON, NPY,
CSV or a text table) and :func:`read_fiducials_csv` (``name,x,y,z`` lines):
every point must be three finite numbers within ±1 km.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from xraypose._checks import check_number
from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.geometry.rigid import check_rigid
from xraypose.io import check_input_file
from xraypose.volume import Volume

__all__ = ["bone_mask", "bone_points", "select_fiducials", "pick_bone_fiducials", "farthest_point_sampling",
           "read_fiducials_file", "read_fiducials_csv"]


def bone_mask(volume: Volume, hu_min: float = 250.0, hu_max: float = 2000.0, min_neighbors: int = 8,
              metal_margin_vox: int = 2) -> torch.Tensor:
    """(I, J, K) boolean mask of bone voxels (see the module docstring)."""
    if not hu_min < hu_max:
        raise InputError(f"bone HU range must have hu_min < hu_max, got {hu_min}…{hu_max}")
    hu = volume.data.to(torch.float32)
    mask = (hu >= hu_min) & (hu <= hu_max)
    if min_neighbors > 0 and bool(mask.any()):
        count = F.avg_pool3d(mask.float()[None, None], 3, stride=1, padding=1, count_include_pad=True)[0, 0] * 27
        mask = mask & (count - 1 >= min_neighbors - 0.5)
    metal = hu > hu_max
    if metal_margin_vox > 0 and bool(metal.any()):
        k = 2 * int(metal_margin_vox) + 1
        near = F.max_pool3d(metal.float()[None, None], k, stride=1, padding=int(metal_margin_vox))[0, 0] > 0.5
        mask = mask & ~near
    return mask


def bone_points(volume: Volume, hu_min: float = 250.0, hu_max: float = 2000.0) -> torch.Tensor:
    """(M, 3) world mm of the centres of the :func:`bone_mask` voxels (float64)."""
    ijk = torch.nonzero(bone_mask(volume, hu_min, hu_max)).to(torch.float64)
    if ijk.shape[0] == 0:
        raise InputError(f"the CT has no voxels in the bone range {hu_min:g}…{hu_max:g} HU to place fiducials on")
    return volume.voxel_to_world(ijk)


def farthest_point_sampling(points: torch.Tensor, n: int, first: int = 0) -> torch.Tensor:
    """Indices of ``n`` points of ``points`` (M, 3), each the farthest from those already taken."""
    M = points.shape[0]
    n = min(int(n), M)
    idx = torch.empty(n, dtype=torch.long)
    idx[0] = int(first)
    d = (points - points[first]).norm(dim=-1)
    for i in range(1, n):
        j = int(torch.argmax(d))
        idx[i] = j
        d = torch.minimum(d, (points - points[j]).norm(dim=-1))
    return idx


def select_fiducials(points: torch.Tensor, n: int = 20, seed: int = 0, camera: Camera | None = None,
                     poses: torch.Tensor | None = None, margin_px: float = 0.0,
                     max_candidates: int = 20000) -> torch.Tensor:
    """``n`` of ``points`` (M, 3) spread by farthest-point sampling, optionally only those in the
    field of view (see :func:`pick_bone_fiducials`)."""
    check_number("number of fiducials n", n, lo=1, integer=True, prefix="")  # 2.5 gave 2 points, '5' five
    check_number("seed", seed, integer=True, prefix="")
    n = int(n)
    pts = torch.as_tensor(points, dtype=torch.float64)
    if (camera is None) != (poses is None):
        raise InputError("give both camera and poses to keep fiducials in the field of view, or neither")
    if camera is not None:
        from xraypose.preprocess import as_real_tensor

        T = as_real_tensor(poses, "poses", torch.float64)
        if T.dim() not in (2, 3) or tuple(T.shape[-2:]) != (4, 4):  # (a (3, 4) raised torch's reshape error)
            raise InputError(f"poses must be (4, 4) or (B, 4, 4) camera_to_world, got shape {tuple(T.shape)}")
        try:  # a scaled pose kept the points of another field of view; a NaN one said 'no bone … projects'
            check_rigid(T, atol=1e-3)
        except InputError as e:
            raise InputError(f"poses: {e}") from None
        T = T.reshape(-1, 4, 4)
        keep = torch.ones(pts.shape[0], dtype=torch.bool)
        for Tb in T:
            uv = camera.project(pts, Tb)
            z = camera.depth(pts, Tb)
            keep &= (z > 0) & (uv[:, 0] >= margin_px) & (uv[:, 0] <= camera.width - 1 - margin_px)
            keep &= (uv[:, 1] >= margin_px) & (uv[:, 1] <= camera.height - 1 - margin_px)
        pts = pts[keep]
        if pts.shape[0] == 0:
            raise InputError("no bone of the CT projects into the detector; cannot place fiducials in the field of view")
    g = torch.Generator().manual_seed(int(seed))
    if pts.shape[0] > max_candidates:
        pts = pts[torch.randperm(pts.shape[0], generator=g)[:max_candidates]]
    first = int(torch.randint(pts.shape[0], (1,), generator=g))
    return pts[farthest_point_sampling(pts, n, first)].clone()


def pick_bone_fiducials(
    volume: Volume,
    n: int = 20,
    seed: int = 0,
    hu_min: float = 250.0,
    hu_max: float = 2000.0,
    camera: Camera | None = None,
    poses: torch.Tensor | None = None,
    margin_px: float = 0.0,
    max_candidates: int = 20000,
) -> torch.Tensor:
    """``n`` fiducials (n, 3) in bone, world mm, spread by farthest-point sampling.

    Args:
        volume: a CT :class:`~xraypose.volume.Volume` in HU.
        n: number of points (>= 1); fewer come back when fewer bone voxels are in view.
        seed: seeds the candidate subset and the first point.
        hu_min, hu_max: bone intensity range (HU).
        camera, poses: when both are given, keep only points that project into
            the detector (``margin_px`` inside its edges) for every pose
            ((4, 4) or (B, 4, 4) camera_to_world) and lie in front of the source.
        max_candidates: size of the random candidate subset fed to the sampling.
    Raises:
        InputError: no bone voxels (in the field of view), bad arguments.
    """
    return select_fiducials(bone_points(volume, hu_min, hu_max), n, seed, camera, poses, margin_px, max_candidates)


# --------------------------------------------------------------------------
# Reading the user's fiducials
# --------------------------------------------------------------------------


def _text(p: Path) -> str:
    check_input_file(p, "fiducials file")
    raw = p.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not UTF-8 text (byte 0x{raw[e.start]:02x} at position {e.start}); "
                         "save the file as UTF-8") from None


def _checked_point(p, where: str, values) -> list:
    from xraypose.schema import MAX_POSITION_MM

    try:
        xyz = [float(v) for v in values]
    except ValueError:
        raise InputError(f"{where}: coordinates must be numbers (mm), got {list(values)} (not a table of 3D points)") \
            from None
    if not all(math.isfinite(v) for v in xyz):
        raise InputError(f"{where}: coordinates must be finite, got {list(values)}")
    if max(abs(v) for v in xyz) > MAX_POSITION_MM:
        raise InputError(f"{where}: coordinates must be within ±{MAX_POSITION_MM:g} mm, got "
                         f"{', '.join(f'{v:g}' for v in xyz)}")
    return xyz


def read_fiducials_csv(path, text: str | None = None) -> tuple[list[str], torch.Tensor]:
    """Names and (N, 3) float64 points from ``name,x,y,z`` lines (world RAS mm).

    A header line ``name,x,y,z`` or ``x,y,z`` (the first line that is not empty or a ``#`` comment), empty
    lines and comments are skipped; a line of 3 values gets the name ``pN``.  ``text``: the file's text when
    already read (whitespace-separated columns are then accepted too).
    """
    p = Path(path)
    if text is None:
        rows = csv.reader(io.StringIO(_text(p), newline=""))
    else:
        rows = ([c for c in line.replace(",", " ").split()] for line in text.splitlines())
    names, pts = [], []
    first = True
    for lineno, row in enumerate(rows, 1):
        row = [c.strip() for c in row]
        if not row or not any(row) or row[0].startswith("#"):
            continue
        header, first = first and [c.lower() for c in row[-3:]] == ["x", "y", "z"] and len(row) in (3, 4), False
        if header:  # name,x,y,z or x,y,z on the first row, after any comments or blank lines (an exporter's)
            continue
        if len(row) == 3:
            row = [f"p{len(pts)}"] + row
        if len(row) != 4:
            raise InputError(f"{p}:{lineno}: expected 'name,x,y,z' or 'x,y,z' (N×3 points), got {','.join(row)!r}")
        pts.append(_checked_point(p, f"{p}:{lineno}", row[1:]))
        names.append(row[0])
    if not pts:
        raise InputError(f"{p}: no fiducial point found (expected lines 'name,x,y,z' or 'x,y,z')")
    return names, torch.tensor(pts, dtype=torch.float64)


def read_fiducials_file(path) -> tuple[list[str], torch.Tensor]:
    """Names and (N, 3) float64 fiducials (world RAS mm) from a file.

    ``.json``: a list of [x, y, z] or ``{"fiducials": [...]}`` / ``{"points": [...]}``
    (schema :data:`xraypose.schema.FIDUCIALS_JSON`); ``.npy``: an (N, 3) numeric
    array; ``.csv``: ``name,x,y,z`` or ``x,y,z`` lines; other text: the same with
    spaces or commas between the columns.

    Raises:
        InputError: naming the file: missing, a folder, not UTF-8, not N×3
            numbers, NaN/infinite or beyond ±1 km.
    """
    import numpy as np

    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if suffix == ".json":
        from xraypose.schema import FIDUCIALS_JSON, read_checked

        data = read_checked(p, FIDUCIALS_JSON, "fiducials file")
        pts = data if isinstance(data, list) else (data.get("fiducials") or data.get("points") or [])
        if not pts:
            raise InputError(f"{p}: no fiducial point found (give a list of [x, y, z] or {{\"fiducials\": [...]}})")
        return [f"p{i}" for i in range(len(pts))], torch.tensor(pts, dtype=torch.float64)
    if suffix == ".npy":
        check_input_file(p, "fiducials file")
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"{p}: cannot read the .npy file ({' '.join(str(e).split())[:200]})") from None
        if arr.dtype.kind not in "iuf" or arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] < 1:
            raise InputError(f"{p}: fiducials must be N×3 numbers (world RAS mm), got shape {arr.shape} of {arr.dtype}")
        pts = [_checked_point(p, f"{p}: row {i}", row) for i, row in enumerate(arr.tolist())]
        return [f"p{i}" for i in range(len(pts))], torch.tensor(pts, dtype=torch.float64)
    if suffix == ".csv":
        return read_fiducials_csv(p)
    return read_fiducials_csv(p, _text(p))
