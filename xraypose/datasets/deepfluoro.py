"""DeepFluoro (Grupp et al., IPCAI 2020): 6 cadaver pelves, 366 fluoroscopy images with ground-truth poses.

File: ``ipcai_2020_full_res_data.h5`` (layout in ``docs/datasets.md``).  The
interface is the one DiffPose users know::

    specimen = DeepFluoroDataset(1, filename="ipcai_2020_full_res_data.h5")
    image, pose = specimen[0]          # (1, 1, H, W) float32, (1, 4, 4) float32
    specimen.volume                    # xraypose Volume (RAS mm, labels from vol-seg)
    specimen.get_camera(0)             # Camera of that image (after crop / rotation)
    specimen.get_2d_groundtruth(0)     # (14, 2) fiducials at the true pose, pixels of image

Frames.  The file stores LPS volumes, a negative-focal intrinsic (camera +z
toward the source), an ``extrinsic`` (C-arm isocenter world → camera) and per
image ``cam-to-pelvis-vol`` (isocenter world → LPS volume).  Everything this
class returns is in xraypose's frames: world = the CT's RAS mm, poses are
camera_to_world, camera +z toward the detector (a mirrored camera,
``reverse_x_axis=True``, expresses the negative focal length); see
:func:`xraypose.converters.pose_from_deepfluoro`.

``rot-180-for-up``: images flagged 1 are returned rotated by 180° (patient
up), with their camera (principal point moved) and pose (turned 180° about
the principal ray) to match, and landmarks moved with them.

Preprocessing (``preprocess=True``, DiffPose's): remove the collimator border
(50 px per edge on the 1536² detector: 1436² left; scaled for other sizes),
5×5 Gaussian blur σ = 1 px, ``L = log(65487) − log(I)``, rescale to [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch

from xraypose.camera import Camera
from xraypose.converters import LPS_TO_RAS, deepfluoro_camera, pose_from_deepfluoro
from xraypose.errors import InputError
from xraypose.limits import MAX_XRAY_PIXELS
from xraypose.preprocess import GeometryPlan, plan_geometry, preprocess as _preprocess
from xraypose.datasets._h5 import (H5Backed, check_camera_ranges, check_rigid_pose, check_shape, need, read_array,
                                   group_keys, naming, read_numbers, read_scalar, read_string, read_whole)

__all__ = ["DeepFluoroDataset", "SPECIMEN_IDS", "LANDMARK_NAMES", "LABEL_NAMES", "DEEPFLUORO_I0",
           "DEEPFLUORO_FILENAME", "STRUCTURES", "deepfluoro_volume"]

#: Specimen groups for specimens 1..6, in the paper's order (the file lists them alphabetically).
SPECIMEN_IDS = ("17-1882", "18-1109", "18-0725", "18-2799", "18-2800", "17-1905")
#: The 14 landmarks of ``vol-landmarks`` / ``gt-landmarks``.
LANDMARK_NAMES = ("ASIS-l", "ASIS-r", "FH-l", "FH-r", "GSN-l", "GSN-r", "IOF-l", "IOF-r", "IPS-l", "IPS-r",
                  "MOF-l", "MOF-r", "SPS-l", "SPS-r")
#: ``vol-seg/labels-def``.
LABEL_NAMES = {1: "left-hemipelvis", 2: "right-hemipelvis", 3: "vertebrae", 4: "upper-sacrum", 5: "left-femur",
               6: "right-femur", 7: "lower-sacrum"}
#: Unattenuated intensity used by DiffPose's preprocessing.
DEEPFLUORO_I0 = 65487.0
DEEPFLUORO_FILENAME = "ipcai_2020_full_res_data.h5"
#: Structures with a ground-truth pose: name → ``gt-poses`` dataset.
STRUCTURES = {"pelvis": "cam-to-pelvis-vol", "left-femur": "cam-to-left-femur-vol",
              "right-femur": "cam-to-right-femur-vol"}
_COLLIMATOR_PX_1536 = 50
_ENV = "XRAYPOSE_DEEPFLUORO"


def deepfluoro_volume(group, where: str, labels: bool = True):
    """An xraypose Volume (RAS) from a DeepFluoro ``vol`` group (+ ``vol-seg`` when ``labels``)."""
    from xraypose.volume import _as_label_tensor, check_voxel_values, volume_from_array

    vol = need(group, "vol", where)
    pix = need(vol, "pixels", where)
    if pix.ndim != 3:
        raise InputError(f"{where}: '{pix.name}' must be a 3D (Z, Y, X) volume, got shape {pix.shape}")
    raw = read_numbers(pix, where)
    check_voxel_values(raw, f"{where}: '{pix.name}'")  # before float32 turns 1e300 into inf
    data = raw.astype(np.float32).transpose(2, 1, 0)  # (Z,Y,X) -> (X,Y,Z) = (i,j,k)
    spacing = check_shape(read_array(vol, "spacing", where).reshape(-1), (3,), f"{vol.name}/spacing", where)
    origin = check_shape(read_array(vol, "origin", where).reshape(-1), (3,), f"{vol.name}/origin", where)
    dirm = check_shape(read_array(vol, "dir-mat", where), (3, 3), f"{vol.name}/dir-mat", where)
    if np.any(spacing <= 0):
        raise InputError(f"{where}: '{vol.name}/spacing' must be > 0 mm, got {spacing.tolist()}")
    if np.abs(dirm.T @ dirm - np.eye(3)).max() > 1e-3:  # a scale here would multiply the spacing unseen
        raise InputError(f"{where}: '{vol.name}/dir-mat' must hold orthonormal direction cosines (|RᵀR − I| ≤ 0.001), "
                         f"got {np.round(dirm, 6).tolist()}")
    A = np.eye(4)
    A[:3, :3] = dirm @ np.diag(spacing)
    A[:3, 3] = origin
    aff = LPS_TO_RAS.numpy() @ A
    lab = names = None
    if labels and "vol-seg" in group:
        seg = need(group, "vol-seg/image/pixels", where)
        lab = read_numbers(seg, where).transpose(2, 1, 0)
        if lab.shape != data.shape:
            raise InputError(f"{where}: segmentation shape {lab.shape[::-1]} differs from the volume's {data.shape[::-1]}")
        lab = _as_label_tensor(lab, data.shape, f"{where}: '{seg.name}'")  # 0.5 or NaN: not cast to int unseen
        names = {}
        if "vol-seg/labels-def" in group:
            for k in group_keys(group["vol-seg/labels-def"], where):
                try:
                    names[int(k)] = read_string(group, f"vol-seg/labels-def/{k}", where)
                except ValueError:
                    continue
    # volume_from_array: a singular dir-mat, a spacing in m or µm, an origin km away refused as any CT's are
    return volume_from_array(data, affine=aff, labels=lab, label_names=names or None, source=f"{where}: '{vol.name}'"), spacing


class DeepFluoroDataset(H5Backed, torch.utils.data.Dataset):
    """One DeepFluoro specimen: X-rays with ground-truth poses, CT, landmarks.

    Args:
        id_number: specimen 1–6 (paper order; see :data:`SPECIMEN_IDS`).
        filename: path of ``ipcai_2020_full_res_data.h5`` (or a folder holding
            it); default ``$XRAYPOSE_DEEPFLUORO``.
        preprocess: True — DiffPose's preprocessing (see module docstring);
            False — raw intensities (rotation for ``rot-180-for-up`` still
            applied); or a dict of :func:`xraypose.preprocess.preprocess`
            keywords replacing the defaults (e.g. ``{"blur": None}``).
        size: resize returned images to this h or (h, w) (cameras and
            landmarks follow).
        labels: load ``vol-seg`` as the volume's labelmap.

    Attributes:
        volume: :class:`xraypose.volume.Volume`, RAS mm (HU), labels 1–7.
        spacing: (3,) voxel size, mm.
        focal_len: source-to-detector distance, mm.
        x0, y0: principal-point offset of the raw full-size camera, mm
            (:class:`Camera` convention).
        camera: the raw full-size camera (before crop / rotation).
        isocenter_pose: (1, 4, 4) an AP view (C-arm angles 0, 0) with the
            source ``focal_len / 2`` from the volume centre (DiffPose's).
        fiducials: (1, 14, 3) world RAS mm (``vol-landmarks``);
            :attr:`fiducial_names` their names.
        intrinsic, extrinsic: the file's matrices (numpy).
    """

    H5_WHAT = "DeepFluoro"  # names the file in its errors

    def __init__(
        self,
        id_number: int,
        filename=None,
        preprocess: bool | dict = True,
        *,
        size=None,
        labels: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(id_number, bool) or not isinstance(id_number, (int, np.integer)) or not 1 <= int(id_number) <= 6:
            raise InputError(f"DeepFluoro specimen must be 1..6, got {id_number!r}")
        self.id_number = int(id_number)
        self.specimen_id = SPECIMEN_IDS[self.id_number - 1]
        self.size = size
        self._labels = labels
        self._open_and_load(filename, _ENV, DEEPFLUORO_FILENAME, preprocess)

    def _load(self, preprocess) -> None:
        f = self._file
        pp = need(f, "proj-params", self._where)
        self.intrinsic = check_shape(read_array(pp, "intrinsic", self._where), (3, 3), "proj-params/intrinsic", self._where)
        self.extrinsic = check_shape(read_array(pp, "extrinsic", self._where), (4, 4), "proj-params/extrinsic", self._where)
        # every gt-pose goes through it: a scaled one was blamed on the first cam-to-pelvis-vol read
        check_rigid_pose(torch.from_numpy(self.extrinsic), "proj-params/extrinsic", self._where)
        self.height = read_whole(pp, "num-rows", self._where, 1, MAX_XRAY_PIXELS)
        self.width = read_whole(pp, "num-cols", self._where, 1, MAX_XRAY_PIXELS)
        self.delx = read_scalar(pp, "pixel-col-spacing", self._where)
        self.dely = read_scalar(pp, "pixel-row-spacing", self._where)
        if not (self.delx > 0 and self.dely > 0):
            raise InputError(f"{self._where}: pixel spacing must be > 0 mm, got {self.delx}, {self.dely}")
        with naming("/proj-params/intrinsic", self._where):
            self.camera, self._flip = deepfluoro_camera(self.intrinsic, self.height, self.width, self.delx, self.dely)
        from xraypose.rig import _check_principal_point  # a K for another image size: named, as a rig.json's

        _check_principal_point(self.camera, self._where, "/proj-params/intrinsic")
        check_camera_ranges(self.camera, "/proj-params/pixel-col-spacing, pixel-row-spacing", "/proj-params/intrinsic",
                            self._where)
        self.focal_len = self.camera.sdd
        self.x0, self.y0 = self.camera.x0, self.camera.y0
        if self.specimen_id not in f:
            raise InputError(
                f"{self._where}: specimen {self.id_number} (HDF5 group '/{self.specimen_id}') is missing; "
                f"the file holds {', '.join(k for k in group_keys(f, self._where) if k != 'proj-params') or 'no specimen'}"
            )
        g = f[self.specimen_id]
        self.volume, self.spacing = deepfluoro_volume(g, self._where, labels=self._labels)
        lm = need(g, "vol-landmarks", self._where)
        self.fiducial_names = sorted(group_keys(lm, self._where))
        if not self.fiducial_names:
            raise InputError(f"{self._where}: '{lm.name}' holds no landmark (expected {', '.join(LANDMARK_NAMES)})")
        pts = [check_shape(read_array(lm, n, self._where).reshape(-1), (3,), f"{lm.name}/{n}", self._where)
               for n in self.fiducial_names]
        lps = np.array(pts, dtype=np.float64).reshape(-1, 3)
        self._fiducials_lps = lps
        ras = lps * np.array([-1.0, -1.0, 1.0])
        self.fiducials = torch.from_numpy(ras).unsqueeze(0)
        from xraypose.sequence import natural_key

        # "0" … "10" in number order ("10" sorted before "2": image-002 was projection 10); the real "000" … alike
        self._proj_keys = sorted(group_keys(need(g, "projections", self._where), self._where), key=natural_key)
        if not self._proj_keys:
            raise InputError(f"{self._where}: '/{self.specimen_id}/projections' holds no projection")
        from xraypose.camera import carm_pose

        self.isocenter_pose = carm_pose(0.0, 0.0, sod=self.focal_len / 2, isocenter=self.volume.center).unsqueeze(0)
        self._set_preprocess(preprocess, self.default_preprocessing())
        if isinstance(preprocess, dict):
            self.preprocess.pop("rotate_180", None)

    def default_preprocessing(self) -> dict:
        """DiffPose's preprocessing, with the collimator border scaled to this detector."""
        border = int(round(_COLLIMATOR_PX_1536 * min(self.height, self.width) / 1536))
        return {"crop": border, "blur": (5, 1.0), "log": "intensity", "i0": DEEPFLUORO_I0, "rescale": True}

    # ------------------------------------------------------------------ per image
    def __len__(self) -> int:
        return len(self._proj_keys)

    def _proj(self, idx: int):
        if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)):
            raise InputError(f"projection index must be an integer, got {idx!r}")
        n = len(self._proj_keys)
        if not -n <= int(idx) < n:
            raise InputError(f"specimen {self.id_number} has {n} projections; index {idx} does not exist")
        key = self._proj_keys[int(idx)]
        return need(self._file[self.specimen_id], f"projections/{key}", self._where), key

    def rot_180_for_up(self, idx: int) -> bool:
        """The file's ``rot-180-for-up`` flag of image ``idx``."""
        g, _ = self._proj(idx)
        return bool(read_whole(g, "rot-180-for-up", self._where, 0, 1)) if "rot-180-for-up" in g else False

    def raw_image(self, idx: int) -> torch.Tensor:
        """(H, W) float32 raw intensities as stored (no rotation)."""
        g, key = self._proj(idx)
        pix = need(g, "image/pixels", self._where)
        a = read_numbers(pix, self._where).astype(np.float32)
        if a.shape != (self.height, self.width):
            raise InputError(
                f"{self._where}: projection {key} is {a.shape[0]}×{a.shape[1]} pixels but proj-params describe a "
                f"{self.height}×{self.width} detector (sizes differ)"
            )
        bad = int(np.count_nonzero(~np.isfinite(a)))
        if bad:  # named here: preprocessing's message does not know the projection
            raise InputError(f"{self._where}: projection {key} has {bad} NaN or infinite pixel{'s' if bad > 1 else ''}")
        return torch.from_numpy(a)

    def _plan(self, idx: int, size=None) -> GeometryPlan:
        pre = self.preprocess
        size = self.size if size is None else size
        return plan_geometry(self.height, self.width, self.camera, rotate_180=self.rot_180_for_up(idx),
                             flip=pre.get("flip"), crop=pre.get("crop"), center_crop=pre.get("center_crop"),
                             size=size)

    def get_camera(self, idx: int, size=None) -> Camera:
        """Camera of the image ``self[idx]`` returns (or of it resized to ``size``)."""
        return self._plan(idx, size).camera

    def get_pose(self, idx: int, structure: str = "pelvis", dtype=torch.float64, raw: bool = False) -> torch.Tensor:
        """(4, 4) camera_to_world ground truth of ``structure`` ("pelvis", "left-femur", "right-femur")
        for the image ``self[idx]`` returns (``raw=True``: for the stored, unrotated image)."""
        if structure not in STRUCTURES:
            raise InputError(f"unknown structure {structure!r}; choose one of {', '.join(STRUCTURES)}")
        g, key = self._proj(idx)
        M = check_shape(read_array(g, f"gt-poses/{STRUCTURES[structure]}", self._where), (4, 4),
                        f"{key}/gt-poses/{STRUCTURES[structure]}", self._where)
        with naming(f"/{self.specimen_id}/projections/{key}/gt-poses/{STRUCTURES[structure]}", self._where):
            T = pose_from_deepfluoro(M, self.extrinsic, self._flip)
        T = check_rigid_pose(T, f"{key}/gt-poses/{STRUCTURES[structure]}", self._where)
        if not raw:
            T = T @ self._plan(idx).pose_transform
        return T.to(dtype)

    def femur_good_fov(self, idx: int, side: str) -> bool:
        """The file's ``{side}-femur-good-fov`` flag (side "left" or "right")."""
        if side not in ("left", "right"):
            raise InputError(f"femur side must be 'left' or 'right', got {side!r}")
        g, _ = self._proj(idx)
        return bool(read_whole(g, f"gt-poses/{side}-femur-good-fov", self._where, 0, 1))

    def __getitem__(self, idx: int):
        """(image (1, 1, H, W) float32, pose (1, 4, 4) float32 camera_to_world of the pelvis)."""
        raw = self.raw_image(idx)
        pre = dict(self.preprocess)
        res = _preprocess(raw, self.camera, rotate_180=self.rot_180_for_up(idx), size=self.size,
                          rescale=pre.pop("rescale", False), **pre)
        pose = self.get_pose(idx, raw=True) @ res.pose_transform
        return res.image[None, None], pose.to(torch.float32)[None]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    # ------------------------------------------------------------------ landmarks
    def stored_2d_landmarks(self, idx: int, size=None) -> torch.Tensor:
        """(14, 2) the file's ``gt-landmarks`` (col, row) moved to the pixels of ``self[idx]``
        (or of it resized to ``size``); same order as :attr:`fiducial_names`."""
        g, key = self._proj(idx)
        lm = need(g, "gt-landmarks", self._where)
        pts = []
        for n in self.fiducial_names:
            pts.append(check_shape(read_array(lm, n, self._where).reshape(-1), (2,), f"{key}/gt-landmarks/{n}",
                                   self._where))
        uv = torch.tensor(np.array(pts), dtype=torch.float64)
        return self._plan(idx, size).pixel_map.apply(uv)

    def get_2d_groundtruth(self, idx: int, size=None) -> torch.Tensor:
        """(14, 2) the 3D fiducials projected at the ground-truth pose, in (col, row) pixels of
        the image ``self[idx]`` returns — or of that image resized to ``size`` (h or (h, w)).
        Points may fall outside the image."""
        plan = self._plan(idx, size)
        pose = self.get_pose(idx, raw=True) @ plan.pose_transform
        return plan.camera.project(self.fiducials[0], pose)

    def get_2d_fiducials(self, idx: int, pose, size=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(true, predicted) projected fiducials (14, 2) for a predicted camera_to_world ``pose``
        (of the image ``self[idx]``), as DiffPose's ``get_2d_fiducials``."""
        plan = self._plan(idx, size)
        P = torch.as_tensor(pose, dtype=torch.float64).reshape(4, 4)
        return self.get_2d_groundtruth(idx, size), plan.camera.project(self.fiducials[0], P)

    def __repr__(self) -> str:
        return (f"DeepFluoroDataset(specimen {self.id_number} = {self.specimen_id}, {len(self)} X-rays, "
                f"{self.height}×{self.width} detector, file={str(self.filename)!r})")
