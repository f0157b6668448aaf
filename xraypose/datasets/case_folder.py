"""A case folder: the user's own CT, X-rays, and optionally fiducials and ground-truth poses.

Layout (documented in docs/datasets.md)::

    my_case/
      ct.nii.gz            the CT: ct.nii / ct.nii.gz / ct.nrrd / ct.mha / ct.mhd, or ct/ (a DICOM series)
      labels.nii.gz        optional labelmap aligned with the CT (same grid)
      xrays/               one or more X-rays, read in name order:
        view1.dcm            DICOM (intrinsics and C-arm angles from the header)
        view2.npy            PNG / TIFF / NPY ...
        view2.json           ... with a sidecar giving intrinsics: {"sdd_mm", "delx_mm", "dely_mm", "x0_mm",
                             "y0_mm", "reverse_x_axis", "kind", "primary_deg", "secondary_deg", "sod_mm"}
      fiducials.csv        optional: header "name,x,y,z", one point per line, world (CT RAS) mm
      poses.json           optional ground truth: {"view1.dcm": [[4×4 camera_to_world]], ...}
                           (or {"view1.dcm": {"camera_to_world": [[...]]}})
      case.json            optional settings: {"isocenter": [x, y, z],
                           "xrays": {"view1.dcm": {read_xray keywords, e.g. "sdd": 1000}}}
      rig.json             optional: the X-rays are views of one rig (xraypose.rig): each view's
                           camera_to_rig and, where given, its intrinsics (an X-ray whose intrinsics
                           rig.json gives needs no sidecar)

``load_case(folder)`` reads it all; ``case[i]`` gives (image, pose) like the
dataset classes.  ``make_example_case(folder)`` writes a complete example
made from the bundled CT (a DICOM with C-arm angles and an NPY with a
sidecar, fiducials and true poses).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from xraypose.camera import DEFAULT_SDD_MM, Camera
from xraypose.errors import InputError
from xraypose.fiducials import read_fiducials_csv
from xraypose.xray import IMAGE_EXTENSIONS, read_xray

if TYPE_CHECKING:
    from xraypose.rig import Rig
    from xraypose.volume import Volume

__all__ = ["Case", "load_case", "make_example_case", "read_fiducials_csv", "CT_NAMES"]

#: Names tried for the CT, in order.
CT_NAMES = ("ct.nii.gz", "ct.nii", "ct.nrrd", "ct.nhdr", "ct.mha", "ct.mhd", "ct")
_LABEL_NAMES = ("labels.nii.gz", "labels.nii", "labels.nrrd", "labels.mha")


@dataclass
class Case:
    """A loaded case folder.

    Attributes:
        root: the folder.
        volume: the CT (:class:`xraypose.volume.Volume`, RAS mm).
        names: X-ray file names (in ``xrays/``), in order.
        xrays: the X-rays as read (:class:`xraypose.xray.XRay`, with camera and
            the initial pose from C-arm angles when the file has them).
        processed: the same after :meth:`XRay.preprocess` (log by pixel kind,
            rescale to [0, 1]) — what ``case[i]`` returns.
        fiducials: (N, 3) world mm or None; ``fiducial_names``.
        poses: ``{name: (4, 4) camera_to_world}`` ground truth (may be empty).
        isocenter: (3,) world mm used for initial poses.
        rig: the folder's ``rig.json`` (:class:`xraypose.rig.Rig`), or None; its intrinsics are
            already the X-rays' cameras (a view's own first, then the file's, then the rig's shared).
    """

    root: Path
    volume: Volume
    names: list
    xrays: list
    processed: list
    fiducials: torch.Tensor | None = None
    fiducial_names: list = field(default_factory=list)
    poses: dict = field(default_factory=dict)
    isocenter: torch.Tensor | None = None
    rig: Rig | None = None

    def __len__(self) -> int:
        return len(self.names)

    def _index(self, idx) -> int:
        if isinstance(idx, str):
            if idx not in self.names:
                raise InputError(f"case {self.root}: no X-ray named {idx!r}; X-rays: {', '.join(self.names)}")
            return self.names.index(idx)
        if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)) or not -len(self) <= int(idx) < len(self):
            raise InputError(f"case {self.root} has {len(self)} X-rays; index {idx!r} does not exist")
        return int(idx) % len(self)

    def __getitem__(self, idx):
        """(image (1, 1, H, W) float32, pose (1, 4, 4) float32 or None): the preprocessed X-ray and
        its ground-truth pose (None when poses.json does not give one)."""
        i = self._index(idx)
        xr = self.processed[i]
        pose = self.get_pose(i)
        return xr.image[None, None], None if pose is None else pose.to(torch.float32)[None]

    def get_camera(self, idx) -> Camera | None:
        """Camera of the image ``case[idx]`` returns."""
        return self.processed[self._index(idx)].camera

    def get_pose(self, idx, dtype=torch.float64) -> torch.Tensor | None:
        """Ground-truth camera_to_world of the image ``case[idx]`` returns (poses.json), or None."""
        i = self._index(idx)
        T = self.poses.get(self.names[i])
        if T is None:
            return None
        return (T @ self.processed[i]._pose_transform()).to(dtype)

    def initial_pose(self, idx) -> torch.Tensor | None:
        """camera_to_world from the X-ray's C-arm angles about :attr:`isocenter`, or None."""
        return self.processed[self._index(idx)].pose

    def get_2d_groundtruth(self, idx, size=None) -> torch.Tensor:
        """(N, 2) fiducials projected at the ground-truth pose, pixels of ``case[idx]``'s image
        (or of it resized to ``size``)."""
        i = self._index(idx)
        if self.fiducials is None:
            raise InputError(f"case {self.root}: no fiducials.csv")
        T = self.get_pose(i)
        if T is None:
            raise InputError(f"case {self.root}: poses.json gives no pose for {self.names[i]!r}")
        cam = self.get_camera(i)
        if cam is None:
            raise InputError(f"case {self.root}: X-ray {self.names[i]!r} has no intrinsics")
        if size is not None:
            h, w = (size, size) if isinstance(size, (int, np.integer)) else size
            cam = cam.resize(int(h), int(w))
        return cam.project(self.fiducials, T)


def _read_poses(p: Path) -> dict:
    """{x-ray name: (4, 4) float64 camera_to_world} from poses.json (schema :data:`xraypose.schema.POSES_JSON`)."""
    from xraypose.converters import orthonormalize
    from xraypose.register.initializers import check_inverse_pair
    from xraypose.schema import POSES_JSON, read_checked

    data = read_checked(p, POSES_JSON, "poses file")
    out = {}
    for k, v in data.items():
        if isinstance(v, dict):  # an evaluation's pose.json pasted in holds both: they must agree
            if "world_to_camera" in v:
                check_inverse_pair(v["camera_to_world"], v["world_to_camera"], f"{p} pose of {k!r}")
            v = v["camera_to_world"]
        out[k] = orthonormalize(v, f"{p.name} pose of {k!r}")
    return out


def load_case(folder, preprocess: bool | dict = True, isocenter=None) -> Case:
    """Read a case folder (see the module docstring for the layout).

    Args:
        folder: the case folder.
        preprocess: True — each X-ray's :meth:`XRay.preprocess` with its
            defaults (line integrals by pixel kind, rescale to [0, 1]); False —
            as read; or a dict of preprocess keywords (e.g. ``{"crop": 20, "size": 256}``).
        isocenter: (3,) world mm for initial poses from C-arm angles; default
            ``case.json``'s, else the CT's isocenter.
    """
    from xraypose.volume import read_volume

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"{root} is a file, not a case folder (a folder holding ct.nii.gz, xrays/, poses.json)"
                         if root.exists() else f"case folder not found: {root}")
    found = [root / n for n in CT_NAMES if (root / n).exists()]
    if len(found) > 1:  # which one the user meant is not ours to guess
        raise InputError(f"case folder {root} holds {len(found)} CTs ({', '.join(p.name for p in found)}); keep one")
    ct_path = found[0] if found else None
    if ct_path is None:
        raise InputError(f"case folder {root} has no CT (expected one of: {', '.join(CT_NAMES)})")
    settings = {}
    if (root / "case.json").exists():
        from xraypose.schema import CASE_JSON, read_checked

        settings = read_checked(root / "case.json", CASE_JSON, "case settings file")
    lab = next((root / n for n in _LABEL_NAMES if (root / n).exists()), None)
    volume = read_volume(ct_path, labels=lab)
    if isocenter is not None:
        from xraypose.volume import _as_point

        iso_t = _as_point(isocenter, "isocenter")
    elif settings.get("isocenter") is not None:
        iso_t = torch.tensor(settings["isocenter"], dtype=torch.float64)
    else:
        iso_t = volume.get_isocenter()
    xdir = root / "xrays"
    if not xdir.is_dir():
        raise InputError(f"case folder {root} has no xrays/ folder")
    files = sorted(p for p in xdir.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() != ".json"
                   and p.suffix.lower() not in (".txt", ".md", ".csv"))
    if not files:
        raise InputError(f"{xdir} holds no X-ray (DICOM or {', '.join(IMAGE_EXTENSIONS)})")
    per = settings.get("xrays", {})
    unknown = sorted(set(per) - {p.name for p in files})
    if unknown:
        raise InputError(f"{root / 'case.json'}: settings for X-rays not in xrays/: {', '.join(unknown)}")
    rig = None
    if (root / "rig.json").exists():  # views of one rig (a folder of that name: refused by read_rig)
        from xraypose.rig import read_rig

        rig = read_rig(root / "rig.json")
    names = [p.name for p in files]
    xrays = []
    for p in files:
        kw = dict(per.get(p.name, {}))
        if rig is not None:  # the rig may give the intrinsics; Rig.cameras names any view left without
            kw.setdefault("require_intrinsics", False)
        xrays.append(read_xray(p, isocenter=iso_t, **kw))
    if rig is not None:  # as `register --rig` takes them: the view's own, the file's, the rig's shared
        from dataclasses import replace

        cams = rig.cameras(rig.match(names), [xr.shape for xr in xrays], [xr.camera for xr in xrays])
        xrays = [replace(xr, camera=c) for xr, c in zip(xrays, cams)]
    if preprocess is False or preprocess is None:
        processed = list(xrays)
    else:
        processed = [xr.preprocess(**(preprocess if isinstance(preprocess, dict) else {})) for xr in xrays]
    fid_names, fids = [], None
    if (root / "fiducials.csv").exists():  # a folder of that name is refused, not passed over (no metrics)
        fid_names, fids = read_fiducials_csv(root / "fiducials.csv")
    poses = {}
    if (root / "poses.json").exists():  # a folder of that name is refused, not passed over (no ground truth)
        poses = _read_poses(root / "poses.json")
        unknown = sorted(set(poses) - set(names))
        if unknown:
            raise InputError(f"{root / 'poses.json'}: poses for X-rays not in xrays/: {', '.join(unknown)}")
    return Case(root=root, volume=volume, names=names, xrays=xrays, processed=processed, fiducials=fids,
                fiducial_names=fid_names, poses=poses, isocenter=iso_t, rig=rig)


# --------------------------------------------------------------------------
# The example case
# --------------------------------------------------------------------------


def make_example_case(folder, *, size: int = 160, overwrite: bool = False, seed: int = 0) -> Path:
    """Write an example case folder made from the bundled CT and return its path.

    Contents: ``ct.nii.gz`` (the bundled CT), ``xrays/lao20_caud10.dcm`` (a
    DICOM with DistanceSourceToDetector, ImagerPixelSpacing, C-arm angles,
    DistanceSourceToPatient and PatientOrientation; raw 16-bit intensities,
    PixelIntensityRelationship LIN), ``xrays/lateral.npy`` + ``lateral.json``
    (raw intensities, intrinsics in the sidecar), ``fiducials.csv`` (points on
    bone), ``poses.json`` (the true poses: the DICOM's angles are the
    C-arm's nominal ones, a few mm and degrees off the truth, as in practice).
    """
    from importlib import resources

    from xraypose.io import atomic_write_bytes, atomic_write_json, check_output_folder
    from xraypose.output_lock import LOCK_NAME
    from xraypose.volume import SAMPLE_CT_FILENAME, load_sample_ct

    root = check_output_folder(folder)  # a file, or a folder under one: named (was the OS's "Not a directory")
    if root.exists() and any(p.name != LOCK_NAME for p in root.iterdir()) and not overwrite:  # the command's lock
        # the command line has no --overwrite: writing over a user's folder could replace their files
        raise InputError(f"{root} exists and is not empty; choose a new or empty folder "
                         "(in Python, overwrite=True writes over the example's files there)")
    (root / "xrays").mkdir(parents=True, exist_ok=True)
    ref = resources.files("xraypose").joinpath("data").joinpath(SAMPLE_CT_FILENAME)
    atomic_write_bytes(root / "ct.nii.gz", ref.read_bytes())
    ct = load_sample_ct()
    iso = ct.get_isocenter()
    rng = np.random.default_rng(seed)
    poses = _write_example_xrays(root / "xrays", ct, iso, size, rng)
    atomic_write_json(root / "poses.json", poses)
    atomic_write_bytes(root / "fiducials.csv", _example_fiducials_csv(ct, iso, rng))
    atomic_write_json(root / "case.json", {
        "description": "Example case made by xraypose.datasets.make_example_case from the bundled CT",
        "isocenter": iso.tolist(),
    })
    return root


def _write_example_xrays(folder: Path, ct: Volume, iso: torch.Tensor, size: int, rng: np.random.Generator) -> dict:
    """The example's two X-rays (raw 16-bit-like counts ``I0·exp(−L)`` at poses a few mm and degrees off
    the nominal C-arm ones): a DICOM (LAO 20 / CAUD 10, mirrored columns) and an NPY lateral with a JSON
    sidecar; returns ``{file name: true camera_to_world as lists}``."""
    from xraypose.camera import carm_pose
    from xraypose.geometry import se3_exp
    from xraypose.io import atomic_write_bytes, atomic_write_json
    from xraypose.render import render
    from xraypose.xray import orientation_letters, write_dicom_xray

    density = ct.density("physical")
    i0 = 60000.0

    def small_offset():
        xi = torch.tensor([*rng.normal(0, 0.03, 3), *rng.normal(0, 4.0, 3)], dtype=torch.float64)
        return se3_exp(xi)

    def counts(cam, T):
        with torch.no_grad():
            L = render(density, ct.affine, cam, T.to(torch.float32)[None], step=1.5)[0, 0].double()
        return torch.round(i0 * torch.exp(-L)).clamp(1, 65535).numpy()

    poses = {}
    # 1. DICOM, LAO 20 / CAUD 10, radiological display (mirrored columns)
    cam1 = Camera(sdd=DEFAULT_SDD_MM, height=size, width=size, delx=1.6 * 256 / size, reverse_x_axis=True)
    nominal = carm_pose(20.0, -10.0, sod=620.0, isocenter=iso)
    true1 = nominal @ small_offset()
    po = orientation_letters(cam1, nominal)
    write_dicom_xray(folder / "lao20_caud10.dcm", counts(cam1, true1), camera=cam1, primary=20.0,
                     secondary=-10.0, sod=620.0, patient_orientation=po, intensity_relationship="LIN")
    poses["lao20_caud10.dcm"] = true1.tolist()
    # 2. NPY lateral with a sidecar
    cam2 = Camera(sdd=1000.0, height=size, width=size + 16, delx=1.5 * 256 / size, x0=6.0, y0=-4.0)
    true2 = carm_pose(90.0, 0.0, sod=600.0, isocenter=iso) @ small_offset()
    buf = __import__("io").BytesIO()
    np.save(buf, counts(cam2, true2).astype(np.float32))
    atomic_write_bytes(folder / "lateral.npy", buf.getvalue())
    atomic_write_json(folder / "lateral.json", {
        "sdd_mm": cam2.sdd, "delx_mm": cam2.delx, "dely_mm": cam2.dely, "x0_mm": cam2.x0, "y0_mm": cam2.y0,
        "reverse_x_axis": cam2.reverse_x_axis, "kind": "intensity",
    })
    poses["lateral.npy"] = true2.tolist()
    return poses


def _example_fiducials_csv(ct: Volume, iso: torch.Tensor, rng: np.random.Generator) -> bytes:
    """``fiducials.csv`` (name,x,y,z world mm): 8 points spread over the bone (HU > 400) within 90 mm of the
    isocenter (inside both X-rays' fields of view), farthest-point sampled."""
    hu = ct.data.numpy()
    idx = np.argwhere(hu > 400)
    world = ct.voxel_to_world(torch.from_numpy(idx.astype(np.float64))).numpy()
    world = world[np.linalg.norm(world - iso.numpy(), axis=1) < 90.0]  # inside both fields of view
    world = world[rng.choice(len(world), size=min(len(world), 4000), replace=False)]
    chosen = [world[0]]
    d = np.linalg.norm(world - chosen[0], axis=1)
    for _ in range(7):
        chosen.append(world[int(np.argmax(d))])
        d = np.minimum(d, np.linalg.norm(world - chosen[-1], axis=1))
    lines = ["name,x,y,z"] + [f"bone{i},{p[0]:.3f},{p[1]:.3f},{p[2]:.3f}" for i, p in enumerate(chosen)]
    return ("\n".join(lines) + "\n").encode()


# --------------------------------------------------------------------------
# checking a case (xraypose datasets check CASE)
# --------------------------------------------------------------------------


def check_case(folder, out=None) -> list[dict]:
    """Read a case and, for each X-ray with a pose (ground truth, else the initial pose from its
    C-arm angles), render a DRR and report its NCC with the preprocessed X-ray.  Writes
    ``<name>_xray.png`` / ``<name>_drr.png`` to ``out`` when given (``<name>`` the X-ray's file name without
    its ending, with it where two X-rays share a stem), all together at the end, replacing only what an
    earlier check wrote there (:func:`xraypose.io.atomic_write_files`).  Returns one dict per X-ray.

    Raises:
        OutputError: ``out`` is the case's ``xrays/`` folder (the PNGs would be read as X-rays), or it holds
            a file of one of those names that xraypose did not write — before anything is rendered.
        OutputInUse: another xraypose run is using ``out`` (its write is locked, joining the calling command's
            lock: :func:`xraypose.output_lock.output_lock`)."""
    from xraypose.io import OutputError, atomic_write_files, check_output_folder, make_output_folder, png_bytes
    from xraypose.output_lock import output_lock
    from xraypose.preprocess import ncc
    from xraypose.render import render

    case = load_case(folder)
    stems = [Path(n).stem for n in case.names]
    png = {n: (s if stems.count(s) == 1 else n) for n, s in zip(case.names, stems)}
    if out is not None:
        if Path(out).expanduser().resolve() == (Path(folder).expanduser() / "xrays").resolve():
            raise OutputError(f"--out {out} is the case's X-ray folder: the PNGs would be read as X-rays; choose "
                              "another folder")
        check_output_folder(out, replaces=[f"{png[n]}_{k}.png" for n in case.names for k in ("xray", "drr")])
    files: dict = {}
    density = case.volume.density("physical")
    rows = []
    for i, name in enumerate(case.names):
        xr = case.processed[i]
        row = {"xray": name, "shape": list(xr.shape), "kind": case.xrays[i].kind,
               "camera": None if xr.camera is None else xr.camera.to_dict(), "pose_from": None, "ncc": None}
        pose = case.get_pose(i)
        row["pose_from"] = "poses.json" if pose is not None else None
        if pose is None and xr.pose is not None:
            pose, row["pose_from"] = xr.pose, "C-arm angles in the header"
        if pose is not None and xr.camera is not None:
            with torch.no_grad():
                drr = render(density, case.volume.affine, xr.camera, pose.to(torch.float32)[None], step=1.5)[0, 0]
            row["ncc"] = ncc(xr.image, drr)
            files[f"{png[name]}_xray.png"] = png_bytes(xr.image)
            files[f"{png[name]}_drr.png"] = png_bytes(drr)
        rows.append(row)
    if out is not None and files:
        with output_lock(out, join=True):  # a command's lock joined; another run's refused
            make_output_folder(out)  # a file of that name is said so ("File exists" was all it said)
            atomic_write_files(out, files, remove=tuple(files))  # a user's file of those names: refused, not replaced
    return rows
