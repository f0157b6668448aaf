"""Ljubljana 3D-2D-GS-CA (Pernuš et al.): 10 cerebral 3D-DSA volumes with calibrated AP and LAT 2D-DSA.

File: ``ljubljana.h5`` (layout in ``docs/datasets.md``)::

    subject = LjubljanaDataset(3, filename="ljubljana.h5")
    image, pose = subject[0]              # AP view;  subject[1] or subject["lat"]: lateral
    image, pose = subject["ap-max"]       # the maximum-intensity versions
    subject.get_camera("lat"), subject.get_2d_groundtruth("lat", size=256)

Frames.  Each view stores a negative-focal ``intrinsic`` (camera +z toward
the source) and an ``extrinsic`` (world → camera).  World here is the
file's world: the volume's voxel ``pixels[i, j, k]`` sits at
``origin + spacing * (i, j, k)`` mm and ``points`` are in the same frame.
Whether that frame is RAS or LPS is not recorded in the file; xraypose uses
it as the world as it is (volume, poses and fiducials agree with each other;
anatomical directions may be mirrored pairs of R/L and A/P).

Preprocessing (``preprocess=True``): ``L = log(max) − log(I + 1)``, rescale
to [0, 1]; ``preprocess={"background": "mode"}`` also subtracts the most
frequent value (the DSA background) as diffdrrdata does.
"""

from __future__ import annotations

import numpy as np
import torch

from xraypose.camera import Camera
from xraypose.converters import pose_from_negative_focal
from xraypose.errors import InputError
from xraypose.preprocess import GeometryPlan, plan_geometry, preprocess as _preprocess
from xraypose.datasets._h5 import (H5Backed, check_camera_ranges, check_rigid_pose, check_shape, need, read_array,
                                   group_keys, naming, read_numbers, read_scalar)

__all__ = ["LjubljanaDataset", "LJUBLJANA_VIEWS", "LJUBLJANA_FILENAME"]

#: Views stored per subject; indices 0 and 1 are "ap" and "lat".
LJUBLJANA_VIEWS = ("ap", "lat", "ap-max", "lat-max")
LJUBLJANA_FILENAME = "ljubljana.h5"
_ENV = "XRAYPOSE_LJUBLJANA"


class LjubljanaDataset(H5Backed, torch.utils.data.Dataset):
    """One Ljubljana subject: the AP and LAT 2D-DSA with their calibrated poses.

    Args:
        id_number: subject 1–10.
        filename: path of ``ljubljana.h5`` (or a folder holding it); default ``$XRAYPOSE_LJUBLJANA``.
        preprocess: True (log with +1 offset, rescale), False (raw), or a dict of
            :func:`xraypose.preprocess.preprocess` keywords replacing the defaults.
        size: resize returned images to h or (h, w) (cameras and landmarks follow).

    Attributes:
        volume: :class:`xraypose.volume.Volume` (3D-DSA intensities; world = the file's world).
        spacing: (3,) mm.  fiducials: (1, N, 3) vessel points, world mm.
        focal_len: source-to-detector distance of the AP view, mm.
    """

    H5_WHAT = "Ljubljana"  # names the file in its errors

    def __init__(self, id_number: int, filename=None, preprocess: bool | dict = True, *, size=None) -> None:
        super().__init__()
        if isinstance(id_number, bool) or not isinstance(id_number, (int, np.integer)) or not 1 <= int(id_number) <= 10:
            raise InputError(f"Ljubljana subject must be 1..10, got {id_number!r}")
        self.id_number = int(id_number)
        self.subject_id = f"subject{self.id_number:02d}"
        self.size = size
        self._open_and_load(filename, _ENV, LJUBLJANA_FILENAME, preprocess)

    def _load(self, preprocess) -> None:
        f = self._file
        if self.subject_id not in f:
            raise InputError(
                f"{self._where}: subject {self.id_number} (HDF5 group '/{self.subject_id}') is missing; "
                f"the file holds {', '.join(group_keys(f, self._where)) or 'nothing'}"
            )
        g = f[self.subject_id]
        self.volume, self.spacing = self._read_volume(g)
        pts = read_array(g, "points", self._where)
        if pts.ndim != 2 or pts.shape[1] != 3 or not len(pts):
            raise InputError(f"{self._where}: '/{self.subject_id}/points' must be (N, 3) with N >= 1, got {pts.shape}")
        pts = check_shape(pts, pts.shape, f"/{self.subject_id}/points", self._where)  # NaN: not left to the mTRE
        self.fiducials = torch.from_numpy(pts.astype(np.float64)).unsqueeze(0)
        self.views = [v for v in LJUBLJANA_VIEWS if f"proj-{v}" in g]
        for v in ("ap", "lat"):
            if v not in self.views:
                need(g, f"proj-{v}", self._where)
        self._geo = {v: self._read_geometry(g, v) for v in self.views}
        self.focal_len = self._geo["ap"][0].sdd
        self._set_preprocess(preprocess, {"log": "intensity", "offset": 1.0, "rescale": True})

    def _read_volume(self, g):
        from xraypose.volume import check_voxel_values, volume_from_array

        pix = need(g, "volume/pixels", self._where)
        if pix.ndim != 3:
            raise InputError(f"{self._where}: '{pix.name}' must be 3D, got shape {pix.shape}")
        raw = read_numbers(pix, self._where)
        check_voxel_values(raw, f"{self._where}: '{pix.name}'")  # before float32 turns 1e300 into inf
        data = raw.astype(np.float32)
        sp = check_shape(read_array(g, "volume/spacing", self._where).reshape(-1), (3,), "volume/spacing", self._where)
        org = check_shape(read_array(g, "volume/origin", self._where).reshape(-1), (3,), "volume/origin", self._where)
        if np.any(sp <= 0):
            raise InputError(f"{self._where}: '/{self.subject_id}/volume/spacing' must be > 0 mm, got {sp.tolist()}")
        aff = np.diag([*sp, 1.0])
        aff[:3, 3] = org
        # volume_from_array: a spacing in m or µm, an origin km away refused as any CT's are
        return volume_from_array(data, affine=aff, source=f"{self._where}: '/{self.subject_id}/volume'"), sp

    def _read_geometry(self, g, view: str):
        grp = need(g, f"proj-{view}", self._where)
        pix = need(grp, "pixels", self._where)
        if pix.ndim != 2:
            raise InputError(f"{self._where}: '{pix.name}' must be a 2D image, got shape {pix.shape}")
        H, W = pix.shape
        K = check_shape(read_array(grp, "intrinsic", self._where), (3, 3), f"proj-{view}/intrinsic", self._where)
        E = check_shape(read_array(grp, "extrinsic", self._where), (4, 4), f"proj-{view}/extrinsic", self._where)
        delx = read_scalar(grp, "col-spacing", self._where)
        dely = read_scalar(grp, "row-spacing", self._where)
        if not (delx > 0 and dely > 0):
            raise InputError(f"{self._where}: proj-{view} pixel spacing must be > 0 mm, got {delx}, {dely}")
        with naming(f"/{self.subject_id}/proj-{view}", self._where):  # its intrinsic or extrinsic (the text says)
            cam, pose = pose_from_negative_focal(K, E, H, W, delx, dely)
        from xraypose.rig import _check_principal_point  # a K for another image size: named, as a rig.json's

        _check_principal_point(cam, self._where, f"/{self.subject_id}/proj-{view}/intrinsic")
        check_camera_ranges(cam, f"/{self.subject_id}/proj-{view}/col-spacing, row-spacing",
                            f"/{self.subject_id}/proj-{view}/intrinsic", self._where)
        return cam, check_rigid_pose(pose, f"proj-{view}/extrinsic", self._where)

    def _view(self, idx) -> str:
        if isinstance(idx, str):
            if idx not in LJUBLJANA_VIEWS:
                raise InputError(f"unknown Ljubljana view {idx!r}; views are {', '.join(LJUBLJANA_VIEWS)}")
            if idx not in self.views:
                raise InputError(f"{self._where}: '/{self.subject_id}/proj-{idx}' is missing (view {idx!r})")
            return idx
        if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)) or int(idx) not in (0, 1, -1, -2):
            raise InputError(f"Ljubljana view index must be 0 (AP) or 1 (LAT) or a view name, got {idx!r}")
        return ("ap", "lat")[int(idx)]

    def __len__(self) -> int:
        return 2

    def raw_image(self, idx) -> torch.Tensor:
        v = self._view(idx)
        a = read_numbers(need(self._file[self.subject_id], f"proj-{v}/pixels", self._where), self._where)
        a = a.astype(np.float32)
        return torch.from_numpy(a)

    def _plan(self, idx, size=None) -> GeometryPlan:
        v = self._view(idx)
        cam = self._geo[v][0]
        pre = self.preprocess
        return plan_geometry(cam.height, cam.width, cam, flip=pre.get("flip"), crop=pre.get("crop"),
                             center_crop=pre.get("center_crop"), size=self.size if size is None else size)

    def get_camera(self, idx, size=None) -> Camera:
        """Camera of the image ``self[idx]`` returns (or of it resized to ``size``)."""
        return self._plan(idx, size).camera

    def get_pose(self, idx, dtype=torch.float64) -> torch.Tensor:
        """(4, 4) ground-truth camera_to_world of the image ``self[idx]`` returns."""
        v = self._view(idx)
        return (self._geo[v][1] @ self._plan(idx).pose_transform).to(dtype)

    def __getitem__(self, idx):
        """(image (1, 1, H, W) float32, pose (1, 4, 4) float32) of view ``idx`` (0 = AP, 1 = LAT, or a name)."""
        v = self._view(idx)
        raw = self.raw_image(v)
        pre = dict(self.preprocess)
        res = _preprocess(raw, self._geo[v][0], size=self.size, rescale=pre.pop("rescale", False), **pre)
        pose = self._geo[v][1] @ res.pose_transform
        return res.image[None, None], pose.to(torch.float32)[None]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def get_2d_groundtruth(self, idx, size=None) -> torch.Tensor:
        """(N, 2) the fiducials projected at the true pose, (col, row) pixels of the image
        ``self[idx]`` returns, or of it resized to ``size``."""
        v = self._view(idx)
        plan = self._plan(v, size)
        return plan.camera.project(self.fiducials[0], self._geo[v][1] @ plan.pose_transform)

    def get_2d_fiducials(self, idx, pose, size=None):
        """(true, predicted) projected fiducials for a predicted camera_to_world ``pose``."""
        plan = self._plan(idx, size)
        P = torch.as_tensor(pose, dtype=torch.float64).reshape(4, 4)
        return self.get_2d_groundtruth(idx, size), plan.camera.project(self.fiducials[0], P)

    def __repr__(self) -> str:
        return f"LjubljanaDataset({self.subject_id}, views={self.views}, file={str(self.filename)!r})"
