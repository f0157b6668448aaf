"""Exports of a registered pose: JSON, a transform file for 3D Slicer / ITK, landmarks as CSV.

* **Pose JSON** — ``camera_to_world`` and ``world_to_camera`` (4×4, mm, world =
  the CT's RAS), the intrinsics (``Camera.to_dict()`` with K) and the units.
* **Slicer/ITK transform** (``.tfm``/``.h5``/``.txt``, written with SimpleITK).
  ITK files are in LPS and store the *resampling* direction (from the parent
  frame to the child frame); 3D Slicer inverts it on loading to get the
  "to parent" transform.  We write ``P · world_to_camera · P`` with
  P = diag(−1, −1, 1, 1), so that in Slicer the transform node is
  ``camera_to_world`` in RAS: a model made in the camera frame (source at the
  origin, detector at z = sdd) placed under it lands where the C-arm was.
* **Landmarks CSV** — one row per landmark: name, world x, y, z (mm, RAS) and
  its projection u, v (pixels of the X-ray as registered).
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.geometry.frames import LPS_TO_RAS
from xraypose.io import atomic_write_bytes, atomic_write_json

LPS_RAS = LPS_TO_RAS.numpy().copy()  # LPS <-> RAS (Slicer's transforms are LPS)


def _one_pose(camera_to_world) -> np.ndarray:
    """``camera_to_world`` (4, 4) or (1, 4, 4) as a float64 (4, 4) array; :class:`InputError` for another shape
    (torch's reshape error), or a matrix that is no rigid transform within the tolerance pose files are read with
    (:class:`xraypose.schema.Matrix4`): a scaled, mirrored or NaN pose was written, and refused on reading."""
    from xraypose.geometry.rigid import check_rigid
    from xraypose.preprocess import as_real_tensor
    from xraypose.schema import Matrix4

    T = as_real_tensor(camera_to_world, "camera_to_world", torch.float64)
    if tuple(T.shape) not in ((4, 4), (1, 4, 4)):
        raise InputError(f"camera_to_world must be one pose (4, 4), got shape {tuple(T.shape)}")
    try:
        check_rigid(T, atol=Matrix4.tol)
    except InputError as e:
        raise InputError(f"camera_to_world: {e}") from None
    return np.asarray(T.reshape(4, 4))


def pose_dict(camera_to_world, camera: Camera | None = None, **extra) -> dict:
    T = _one_pose(camera_to_world)
    d = {
        "camera_to_world": T.tolist(),
        "world_to_camera": np.linalg.inv(T).tolist(),
        "units": {"length": "mm", "world": "CT RAS+ (x Right, y Anterior, z Superior)",
                  "camera": "origin at the X-ray source, +z toward the detector, +x columns, +y rows"},
    }
    if camera is not None:
        d["intrinsics"] = camera.to_dict()
    d.update(extra)
    return d


def write_pose_json(path, camera_to_world, camera: Camera | None = None, **extra) -> Path:
    atomic_write_json(path, pose_dict(camera_to_world, camera, **extra))
    return Path(path)


def slicer_matrix(camera_to_world) -> np.ndarray:
    """The 4×4 (LPS, resampling direction) that an ITK file must hold for Slicer to show camera_to_world."""
    T = _one_pose(camera_to_world)
    return LPS_RAS @ np.linalg.inv(T) @ LPS_RAS


def write_slicer_transform(path, camera_to_world) -> Path:
    """Write an ITK transform file (.tfm, .txt, .h5) that 3D Slicer loads as camera_to_world."""
    import SimpleITK as sitk

    path = Path(path)
    if path.suffix.lower() not in (".tfm", ".txt", ".h5", ".hdf5", ".mat"):
        raise InputError(f"transform file must end in .tfm, .txt, .h5 or .mat, got {path.name!r}")
    M = slicer_matrix(camera_to_world)
    tr = sitk.AffineTransform(3)
    tr.SetMatrix(M[:3, :3].ravel().tolist())
    tr.SetTranslation(M[:3, 3].tolist())
    if not path.parent.exists():
        raise InputError(f"output folder does not exist: {path.parent}")
    fd, tmp = tempfile.mkstemp(suffix=path.suffix)  # SimpleITK writes by name: in the system's temp folder
    os.close(fd)
    try:
        sitk.WriteTransform(tr, tmp)
        data = Path(tmp).read_bytes()
    finally:
        os.unlink(tmp)
    atomic_write_bytes(path, data)
    return path


def read_slicer_transform(path) -> torch.Tensor:
    """Inverse of :func:`write_slicer_transform`: the camera_to_world (4, 4) float64 it encodes."""
    import SimpleITK as sitk

    tr = sitk.ReadTransform(str(path))
    M = np.eye(4)
    M[:3, :3] = np.asarray(tr.GetParameters()[:9]).reshape(3, 3)
    M[:3, 3] = tr.GetParameters()[9:12]
    c = np.asarray(tr.GetFixedParameters()[:3]) if tr.GetFixedParameters() else np.zeros(3)
    M[:3, 3] += c - M[:3, :3] @ c  # ITK centre of rotation
    return torch.from_numpy(np.linalg.inv(LPS_RAS @ M @ LPS_RAS))


def write_landmarks_csv(path, names, world_mm, uv) -> Path:
    """CSV of landmarks: name, x_mm, y_mm, z_mm (world RAS), u_px, v_px (image pixels)."""
    world_mm = np.asarray(torch.as_tensor(world_mm, dtype=torch.float64)).reshape(-1, 3)
    uv = np.asarray(torch.as_tensor(uv, dtype=torch.float64)).reshape(-1, 2)
    names = list(names) if names is not None else [f"L{i}" for i in range(len(world_mm))]
    if not (len(names) == len(world_mm) == len(uv)):
        raise InputError(f"{len(names)} names, {len(world_mm)} world points and {len(uv)} pixels: counts differ")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["name", "x_mm", "y_mm", "z_mm", "u_px", "v_px"])
    for n, p, q in zip(names, world_mm, uv):
        w.writerow([n, *(f"{x:.4f}" for x in p), *(f"{x:.3f}" for x in q)])
    atomic_write_bytes(path, buf.getvalue().encode())
    return Path(path)
