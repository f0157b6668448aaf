"""Evaluate registration on a set of X-rays with known poses: per-case results, a metrics table, a report.

Sources (:func:`load_eval_set`):

* a **case folder** (layout in docs/datasets.md: ``ct.*``, ``xrays/``, optional
  ``fiducials.csv``, ``poses.json`` and ``rig.json``);
* a **DeepFluoro** HDF5 file (``ipcai_2020_full_res_data.h5``) with a specimen 1–6;
* a **Ljubljana** HDF5 file (``ljubljana.h5``) with a subject 1–10.

:func:`evaluate` registers every X-ray from a start (a trained model, the
X-ray's C-arm angles, a fixed pose, an AP view, or the true pose perturbed by a
fixed angle and distance), and writes::

    OUTDIR/
      report.html        self-contained: summary cards, the table, every case's pictures
      metrics.csv        one row per X-ray (mTRE, mPE, mRPE, dGeo in mm, rotation in °, times in s)
      summary.json       success rates at 1 / 2 mm, medians, percentiles (xraypose.metrics.summarize)
      cases/NAME/        pose.json (camera_to_world, world_to_camera, intrinsics), pose.tfm (Slicer/ITK),
                         landmarks.csv, result.json, comparison.png, overlay.png, fiducials.png,
                         registration.gif, curves.png

Every file is written atomically.  ``run.json`` records the run's settings
(source and its absolute path, cases, start, registration configuration, the CLI's options) and the
fingerprint of its inputs (:func:`input_fingerprint`: each file's size, modification time and, up to
64 MiB, SHA-256) before the first case.  With ``resume=True`` cases whose ``result.json`` exists are
read back, not registered again, provided the settings are those of
``run.json``: a difference is refused, naming it; so is a change of the inputs (an X-ray replaced,
added or removed, the CT or poses.json edited: the file is named), which would mix results of the old
inputs with the new.  A run.json written before the fingerprint existed resumes unchecked.  Without ``resume``, a
folder holding an earlier evaluation is refused unless ``overwrite=True``,
which removes the earlier run's files first (:func:`remove_previous_results`;
files the package does not write are left alone), so the folder holds one
run's files only.  Infinite metrics (a fiducial behind the X-ray source) are
written as ``null`` in JSON (listed under ``"non_finite"``) and ``inf`` in CSV.

The per-case outputs (:func:`write_case_outputs`) are the ones ``xraypose demo`` writes.

**A rig.**  A case folder with a ``rig.json`` (xraypose.rig: each X-ray's ``camera_to_rig``) is
registered as one rig: every X-ray together, one ``rig_to_world``
(:func:`xraypose.register.multiview.register_rig`), started from the first X-ray's start.  The
joint result goes to ``cases/rig/`` (pose.json with every view's pose, metrics.json,
trajectory.json, views.png: the views side by side); metrics.csv keeps a row per X-ray (its own
metrics; the joint verdict, similarity and time).  One process only (no torchrun).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.io import atomic_write_bytes, atomic_write_json, check_input_path
from xraypose.register.multiview import RIG_RESULT_FILES
from xraypose.register.starts import StartRule, angle_starts, perturbed_starts
from xraypose.run_record import (HASH_LIMIT, INPUTS, PREPROCESSING, input_changes,  # noqa: F401 (re-exported)
                                 input_fingerprint, settings_differences)
from xraypose.volume import Volume

__all__ = ["EvalCase", "EvalSet", "load_eval_set", "evaluate", "write_case_outputs", "perturbed_starts",
           "angle_starts", "StartRule", "PictureRenderer", "ROW_COLUMNS", "RUN_FILE", "previous_results",
           "remove_previous_results", "input_fingerprint", "input_changes", "HASH_LIMIT"]

F64 = torch.float64
_BLUR_PX = 1.0  # σ of the 5×5 Gaussian given to case-folder X-rays (pixels at their stored size)

#: The settings of an evaluation, checked by a resume.
RUN_FILE = "run.json"
#: Files an evaluation (or the demo) writes at the top of its folder, and in each cases/NAME/.
TOP_FILES = ("report.html", "metrics.csv", "summary.json", RUN_FILE, "scene.png", "training.png")
CASE_FILES = tuple(dict.fromkeys(("pose.json", "pose.tfm", "landmarks.csv", "result.json", "comparison.png",
                                   "overlay.png", "fiducials.png", "registration.gif", "curves.png")
                                  + RIG_RESULT_FILES))  # a rig's joint result (cases/rig/) too

#: Columns of metrics.csv (and the report's table), in order; metrics.csv adds "reason" (the verdict's) last.
ROW_COLUMNS = ["case", "verdict", "p_success", "mTRE (mm)", "start mTRE (mm)", "mPE (mm)", "mRPE (mm)", "dGeo (mm)", "rot (°)",
               "sd along beam (mm)", "similarity", "init (s)", "opt (s)", "iterations", "status"]


@dataclass
class EvalCase:
    """One X-ray to register.

    Attributes:
        name: its name (file name, or ``"image-003"``); also its output folder's.
        image: (H, W) float32, preprocessed (line integrals, rescaled).
        camera: intrinsics of ``image``.
        true_pose: (4, 4) float64 camera_to_world (world = CT RAS mm), or None.
        fiducials: (N, 3) world mm points for the metrics, or None (bone points picked from the CT).
        angles_pose: (4, 4) camera_to_world from the X-ray's C-arm angles, or None.
        mask: (H, W) pixel weights from the preprocessing (saturation, a collimator), or None.
        camera_to_rig: (4, 4) float64 when the X-ray belongs to a rig (a case folder's ``rig.json``):
            the set's X-rays are then registered together, one ``rig_to_world`` for all.
    """

    name: str
    image: torch.Tensor
    camera: Camera
    true_pose: torch.Tensor | None = None
    fiducials: torch.Tensor | None = None
    angles_pose: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    camera_to_rig: torch.Tensor | None = None
    steps: list | None = None  # a case folder's X-ray: its preprocessing steps (run.json records their order)


@dataclass
class EvalSet:
    """A CT and the X-rays to register to it."""

    name: str
    volume: Volume
    cases: list
    isocenter: torch.Tensor
    blur_px: float | None = None  # Gaussian σ the preprocessing gave the images, in their pixels (DRRs get the same)
    source: str | None = None  # the case folder's / file's absolute path (run.json: a resume from another is refused)
    inputs: dict | None = None  # input_fingerprint(source) when it was read (run.json: a resume of edited inputs is refused)


def _safe_name(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))
    return keep.strip("._") or "case"


def load_eval_set(source, *, specimen: int | None = None, size: int | None = 256,
                  structure: str = "pelvis", resample_domain: str = "auto") -> EvalSet:
    """Read what :func:`evaluate` needs from a case folder or a dataset file.

    Args:
        source: a case folder, or a DeepFluoro / Ljubljana HDF5 file.
        specimen: DeepFluoro specimen 1–6 or Ljubljana subject 1–10 (HDF5 only).
        size: register images resized to at most this many rows (None: as stored).
        structure: DeepFluoro structure whose pose is the truth (pelvis | left-femur | right-femur).
        resample_domain: how ``size`` shrinks a case folder's raw-intensity X-rays
            (:func:`xraypose.preprocess.preprocess`); the datasets' images are not raw intensities.
    """
    path = Path(source).expanduser()
    check_input_path(path, "evaluation source", f"evaluation source not found: {path}")
    if size is not None and size < 16:
        raise InputError(f"image size must be at least 16 pixels, got {size}")
    if path.is_dir():
        if specimen is not None:
            raise InputError(f"{path} is a case folder: --specimen is for DeepFluoro / Ljubljana HDF5 files")
        inputs = input_fingerprint(path)  # before reading: a file edited meanwhile reads as changed later
        return _with_source(_case_folder_set(path, size, resample_domain), path, inputs)
    if path.suffix.lower() not in (".h5", ".hdf5"):
        raise InputError(f"{path}: expected a case folder or a DeepFluoro / Ljubljana HDF5 file (.h5)")
    inputs = input_fingerprint(path)
    kind = _h5_kind(path)
    if specimen is None:
        raise InputError(f"{path} is a {kind} file: choose one with --specimen N "
                         f"({'1-6' if kind == 'DeepFluoro' else '1-10'})")
    if kind == "DeepFluoro":
        return _with_source(_deepfluoro_set(path, specimen, size, structure), path, inputs)
    return _with_source(_ljubljana_set(path, specimen, size), path, inputs)


def check_output_outside_xrays(source, outdir) -> None:
    """Raise :class:`~xraypose.io.OutputError` when ``outdir`` is the case folder ``source``'s ``xrays/``: the
    evaluation's ``report.html`` there was read as an X-ray by every later evaluation of the case ("not a
    DICOM file"), the case folder unusable until it was removed."""
    from xraypose.io import OutputError

    src = Path(source).expanduser()
    xdir = src / "xrays"
    if src.is_dir() and xdir.is_dir() and Path(outdir).expanduser().resolve() == xdir.resolve():
        raise OutputError(f"the output folder {outdir} is the case folder's xrays/: the evaluation's files "
                          f"would be read as X-rays by the next evaluation; choose another folder (e.g. {src / 'eval'})")


def _with_source(evalset: EvalSet, path: Path, inputs: dict) -> EvalSet:
    from xraypose.api import check_ct_in_view

    for c in evalset.cases:  # a truth in metres or km (a DeepFluoro/Ljubljana extrinsic, poses.json) was scored unseen
        if c.true_pose is not None:
            try:
                check_ct_in_view(evalset.volume, c.camera, c.true_pose)
            except InputError as e:
                raise InputError(f"{path}: the ground-truth pose of X-ray {c.name!r}: {e}") from None
    evalset.source, evalset.inputs = str(path.resolve()), inputs
    return evalset


def _h5_kind(path: Path) -> str:
    import h5py

    from xraypose.datasets.deepfluoro import SPECIMEN_IDS

    try:
        with h5py.File(path, "r") as f:
            keys = set(f.keys())
    except (OSError, RuntimeError) as e:  # RuntimeError: a damaged root group ('wrong B-tree signature')
        raise InputError(f"{path} is not a readable HDF5 file ({e})") from None
    if keys & set(SPECIMEN_IDS):
        return "DeepFluoro"
    if any(k.startswith("subject") for k in keys):
        return "Ljubljana"
    raise InputError(f"{path}: neither a DeepFluoro (groups {SPECIMEN_IDS[0]}, ...) nor a Ljubljana "
                     f"(groups subject01, ...) file; top-level groups: {', '.join(sorted(keys)[:8]) or 'none'}")


def _case_folder_set(path: Path, size: int | None, resample_domain: str = "auto") -> EvalSet:
    from xraypose.datasets import load_case

    case = load_case(path, preprocess=False)  # a rig.json's intrinsics are already the X-rays' cameras
    xrays = case.xrays
    rig = None if case.rig is None else case.rig.match(case.names)  # views of one rig: registered together
    cases, blurs = [], []
    for i, name in enumerate(case.names):
        xr = xrays[i]
        pre = {"rescale": True, "blur": (5, _BLUR_PX)}  # as `xraypose register` does by default
        if size is not None and xr.shape[0] > size:
            pre["size"] = (size, max(1, round(xr.shape[1] * size / xr.shape[0])))
            if xr.kind == "intensity":  # (other kinds are resampled after the log whatever the setting)
                pre["resample_domain"] = resample_domain
        px = xr.preprocess(**pre)
        blurs.append(_BLUR_PX * px.shape[0] / xr.shape[0])
        if px.camera is None:
            raise InputError(f"{path}/xrays/{name}: no intrinsics (give them in a sidecar JSON or case.json)")
        T = case.poses.get(name)
        true = None if T is None else (T @ px._pose_transform()).to(F64)
        C = None if rig is None else (rig[i].camera_to_rig @ px._pose_transform()).to(F64)
        cases.append(EvalCase(name=name, image=px.image.to(torch.float32), camera=px.camera, true_pose=true,
                              fiducials=case.fiducials, angles_pose=px.pose, mask=px.mask, camera_to_rig=C,
                              steps=list(px.steps)))
    return EvalSet(name=path.name, volume=case.volume, cases=cases, isocenter=case.isocenter,
                   blur_px=statistics.median(blurs))


def _deepfluoro_set(path: Path, specimen: int, size: int | None, structure: str) -> EvalSet:
    from xraypose.datasets import DeepFluoroDataset

    ds = DeepFluoroDataset(specimen, filename=path)
    try:
        cases, blurs = [], []
        blur = (ds.default_preprocessing().get("blur") or (0, 0.0))[1]
        for i in range(len(ds)):
            img, _ = ds[i]
            image, camera, scale = _fit(img[0, 0], ds.get_camera(i), size)
            blurs.append(blur * scale)
            cases.append(EvalCase(name=f"image-{i:03d}", image=image, camera=camera,
                                  true_pose=ds.get_pose(i, structure=structure), fiducials=ds.fiducials[0]))
        return EvalSet(name=f"deepfluoro-{specimen}", volume=ds.volume, cases=cases,
                       isocenter=ds.volume.get_isocenter(), blur_px=(statistics.median(blurs) or None))
    finally:
        ds.close()


def _ljubljana_set(path: Path, subject: int, size: int | None) -> EvalSet:
    from xraypose.datasets import LjubljanaDataset

    ds = LjubljanaDataset(subject, filename=path)
    try:
        cases = []
        for v in ds.views:
            img, pose = ds[v]
            image, camera, _ = _fit(img[0, 0], ds.get_camera(v), size)
            cases.append(EvalCase(name=v, image=image, camera=camera, true_pose=pose[0].to(F64),
                                  fiducials=ds.fiducials[0]))
        return EvalSet(name=f"ljubljana-{subject}", volume=ds.volume, cases=cases,
                       isocenter=ds.volume.get_isocenter())
    finally:
        if hasattr(ds, "close"):
            ds.close()


def _fit(image, camera: Camera, size: int | None):
    """Shrink (never enlarge) an image to at most ``size`` rows, its camera following; returns
    (image (H', W') float32, camera, H'/H)."""
    from xraypose.preprocess import resize

    image = torch.as_tensor(image, dtype=torch.float32)
    H, W = image.shape[-2:]
    if size is None or H <= size:
        return image, camera, 1.0
    w = max(1, round(W * size / H))
    out, cam, _ = resize(image, camera, size, w)
    return torch.as_tensor(out, dtype=torch.float32).reshape(size, w), cam, size / H


class PictureRenderer:
    """DRRs for the pictures, with registration's density model (any volume: CT in HU, DSA, ...).

    ``renderer(camera, poses (B, 4, 4)) -> (B, H, W)``; the density is computed once."""

    def __init__(self, volume: Volume, density: str = "linear", bone_multiplier: float = 1.0, n_samples: int = 256):
        from xraypose.register.optimizer import registration_density

        self.density = registration_density(volume, density, bone_multiplier)[:1]
        self.affine = volume.affine
        self.n_samples = n_samples

    def __call__(self, camera: Camera, poses) -> torch.Tensor:
        from xraypose.render import render

        with torch.no_grad():
            T = torch.as_tensor(poses, dtype=F64).reshape(-1, 4, 4).float()
            return render(self.density, self.affine, camera, T, n_samples=self.n_samples)[:, 0]


def write_case_outputs(d, volume: Volume, image, camera: Camera, reg, *, name: str, fiducials=None, true_pose=None,
                       pictures: bool = True, renderer: PictureRenderer | None = None,
                       mask=None) -> tuple[dict, dict]:
    """Write one registered X-ray's files into folder ``d``; ``result.json`` last.

    Each file is written atomically, one after the other; ``result.json`` — the case's row and report
    section, all that ``--resume`` reads back — comes last, so it marks a whole case: a crash between the
    files leaves the case without it, and a resume registers the case again (rewriting the others) rather
    than keeping a pose.json whose pictures or metrics never came.

    Args:
        d: the case's folder (created).
        volume: the CT; image: (H, W) the registered X-ray; camera: its intrinsics.
        reg: its :class:`xraypose.register.api.Registration`.
        fiducials: (N, 3) world mm for the landmarks CSV and pictures (default: bone points
            picked by the registration's metrics, or none).
        true_pose: (4, 4) camera_to_world, or None.
        renderer: DRRs for the pictures (default: a :class:`PictureRenderer` of ``volume``;
            pass one to reuse it across cases).
        mask: (H, W) the X-ray's trusted pixels (preprocessing's mask) or None: the pictures'
            display window is taken inside it (a collimator's or a round field's shadow stays out).
    Returns:
        (row for metrics.csv, report section).
    """
    from xraypose import viz
    from xraypose.export import write_landmarks_csv, write_pose_json, write_slicer_transform
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    T = reg.camera_to_world.to(F64)
    write_pose_json(d / "pose.json", T, camera, metrics=reg.metrics, initial_metrics=reg.initial_metrics,
                    true_camera_to_world=None if true_pose is None else true_pose.tolist(),
                    timing={"init_s": reg.init_s, "opt_s": reg.opt_s}, p_success=reg.p_success, verdict=reg.verdict,
                    reason=reg.reason, confidence=reg.confidence)
    write_slicer_transform(d / "pose.tfm", T)
    m, m0 = reg.metrics, reg.initial_metrics
    row = _metrics_row(name, reg, m, m0)
    uv_est = uv_true = None
    if fiducials is not None:
        fid = torch.as_tensor(fiducials, dtype=F64).reshape(-1, 3)
        uv_est = camera.project(fid, T)
        write_landmarks_csv(d / "landmarks.csv", [f"F{i}" for i in range(len(fid))], fid, uv_est)
        if true_pose is not None:
            uv_true = camera.project(fid, true_pose.to(F64))
    figures = []
    if pictures:
        renderer = renderer or PictureRenderer(volume)
        drr = lambda poses: renderer(camera, poses)  # noqa: E731
        imgs = drr(torch.stack([reg.initial_pose.to(F64), T]))
        viz.save_comparison(d / "comparison.png", image, imgs[1], titles=("X-ray", "DRR at the result"),
                            start=imgs[0], verdict=reg.verdict, p_success=reg.p_success, mask=mask)
        viz.save_overlay(d / "overlay.png", image, imgs[1], mask=mask)
        figures = [(d / "comparison.png", "X-ray, DRR at the start, DRR at the registered pose, difference"),
                   (d / "overlay.png", "DRR edges on the X-ray; checkerboard")]
        if uv_est is not None:
            viz.save_fiducials(d / "fiducials.png", image, truth=uv_true, estimate=uv_est)
            figures.append((d / "fiducials.png", "fiducials: truth (circles) and projected at the result (crosses)"))
        frames = _trajectory_frames(drr, reg)
        if frames:
            viz.save_gif(d / "registration.gif", frames, xray=image, mask=mask)
            figures.append((d / "registration.gif", "the registration, DRR edges on the X-ray"))
        curves = _curves(reg, fiducials, true_pose)
        if curves:
            viz.save_curves(d / "curves.png", curves, log_y={k for k in curves if "mm" in k})
            figures.append((d / "curves.png", "optimisation curves"))
    heading = f"{name}: similarity {reg.similarity:.4f}, {reg.status}"
    if m is not None:
        heading = f"{name}: mTRE {m['mtre']:.2f} mm" + (f" (start {m0['mtre']:.1f} mm)" if m0 else "")
    if reg.verdict is not None:
        heading += f" · {reg.verdict} (P(mTRE < 2 mm) {reg.p_success:.2f})" + (
            f": {reg.reason}" if reg.verdict != "ok" else "")
    section = {"heading": heading, "figures": figures}
    atomic_write_json(d / "result.json", {"row": row, "section": {  # the figures' names: read back in their folder
        "heading": heading, "figures": [[p.name, c] for p, c in figures]}})  # (the demo makes it elsewhere first)
    return row, section


def _metrics_row(name: str, reg, m: dict | None, m0: dict | None, spread: dict | None = None) -> dict:
    """One metrics.csv row (its column order) of a result ``reg`` (a registration, or a rig's: similarity,
    init_s, opt_s, iterations, status, verdict, p_success, reason) with the metrics ``m`` of the pose and
    ``m0`` of its start (:func:`xraypose.register.api.registration_metrics` dicts, or None); ``spread``: the
    view's own (a rig view's, along its beam), else ``reg.spread``."""
    row = {"case": name, "similarity": float(reg.similarity), "init (s)": float(reg.init_s),
           "opt (s)": float(reg.opt_s), "iterations": int(reg.iterations), "status": reg.status}
    if reg.verdict is not None:
        row.update({"verdict": reg.verdict, "p_success": float(reg.p_success), "reason": reg.reason})
    spread = spread or getattr(reg, "spread", None)  # one view's own, or a rig view's along its own beam
    if spread:
        row["sd along beam (mm)"] = float(spread["along_beam_mm"])
    if m is not None:
        row.update({"mTRE (mm)": m["mtre"], "start mTRE (mm)": m0["mtre"] if m0 else float("nan"),
                    "mPE (mm)": m["mpe"], "mRPE (mm)": m["mrpe"], "dGeo (mm)": m["dgeo"], "rot (°)": m["rot_deg"]})
    return {k: row[k] for k in [*ROW_COLUMNS, *row] if k in row}  # metrics.csv's column order


def _trajectory_frames(drr, r, n: int = 12) -> list:
    poses = [rec["camera_to_world"] for rec in r.trajectory if isinstance(rec, dict) and "camera_to_world" in rec]
    if len(poses) < 2:
        return []
    idx = sorted(set(round(i * (len(poses) - 1) / (n - 1)) for i in range(n)))
    T = torch.stack([torch.as_tensor(poses[i], dtype=F64) for i in idx])
    return list(drr(T))


def _curves(r, fiducials, true_pose) -> dict:
    """Similarity (and mTRE in mm when the truth is known) along the optimisation."""
    from xraypose.metrics import target_registration_error

    recs = [rec for rec in r.trajectory if isinstance(rec, dict) and "camera_to_world" in rec]
    if len(recs) < 2:
        return {}
    out = {"similarity": [rec["similarity"] for rec in recs]}
    if true_pose is not None and fiducials is not None:
        T = torch.stack([torch.as_tensor(rec["camera_to_world"], dtype=F64) for rec in recs])
        fid = torch.as_tensor(fiducials, dtype=F64).reshape(-1, 3)
        out["mTRE (mm)"] = target_registration_error(T, true_pose.to(F64).expand(len(T), 4, 4), fid).tolist()
    return out


def write_csv(path, rows: Sequence[dict], columns: Sequence[str] | None = None) -> None:
    """Rows as CSV (atomically); missing cells empty."""
    buf = io.StringIO()
    if rows:
        cols = list(columns or rows[0].keys())
        cols += [k for r in rows for k in r if k not in cols]
        cols = list(dict.fromkeys(cols))
        w = csv.DictWriter(buf, fieldnames=cols, restval="")
        w.writeheader()
        w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def verdict_summary(rows: Sequence[dict]) -> dict:
    """``{"verdicts": {"ok": n, "uncertain": n, "failed": n}}`` of the rows with a verdict, and with the
    truth known ``"ok_below_2mm"``: the share of the ``ok`` ones whose mTRE is below 2 mm (empty: {})."""
    checked = [r for r in rows if r.get("verdict")]
    if not checked:
        return {}
    out = {"verdicts": {v: sum(r["verdict"] == v for r in checked) for v in ("ok", "uncertain", "failed")}}
    ok = [float(r["mTRE (mm)"]) for r in checked if r["verdict"] == "ok" and r.get("mTRE (mm)") is not None]
    if ok:
        out["ok_below_2mm"] = sum(x < 2.0 for x in ok) / len(ok)
    return out


def summary_of(rows: Sequence[dict]) -> dict:
    """success rates, medians and percentiles of the per-case rows (:func:`xraypose.metrics.summarize`)."""
    from xraypose.metrics import summarize

    key = {"mTRE (mm)": "mtre", "mPE (mm)": "mpe", "mRPE (mm)": "mrpe", "dGeo (mm)": "dgeo", "rot (°)": "rot_deg",
           "init (s)": "init_s", "opt (s)": "opt_s", "start mTRE (mm)": "start_mtre",
           "sd along beam (mm)": "sd_along_beam"}
    renamed = [{key.get(k, k): v for k, v in r.items()} for r in rows]
    s = summarize(renamed, keys=("mtre", "mpe", "mrpe", "dgeo", "rot_deg", "init_s", "opt_s", "start_mtre",
                                 "sd_along_beam"))
    for k, name in (("start_mtre", "median_start_mtre_mm"), ("sd_along_beam", "median_sd_along_beam_mm")):
        st = s["stats"].get(k, {})
        if st.get("n"):
            s[name] = st["median"]
    return s


def previous_results(outdir) -> list[Path]:
    """The files of an earlier evaluation (or demo) in ``outdir``: known names at the top and in ``cases/*/``."""
    out = Path(outdir)
    found = [out / n for n in TOP_FILES if (out / n).is_file()]
    cases = out / "cases"
    if cases.is_dir():
        for d in sorted(cases.iterdir()):
            if d.is_dir():
                found += [d / n for n in CASE_FILES if (d / n).is_file()]
    return found


def remove_previous_results(outdir, keep=()) -> int:
    """Delete :func:`previous_results` (and case folders left empty, or holding only the manifest of the files
    deleted) but those named in ``keep`` (relative to ``outdir``: the demo keeps a ``run.json`` it did not write);
    other files stay. Returns the count.

    Each case's ``result.json`` goes first and ``run.json`` last, so that a kill part way (``--overwrite``
    killed) leaves what a resume can go on from: no case that ``--resume`` would keep without its other files,
    and no case files without the ``run.json`` that checks them (a resume of the same settings was refused as
    "results without run.json (an older xraypose)", or kept a case whose pose.json was gone).

    A result's write into the folder or a case's (a rig's joint ``cases/rig/``) that a kill interrupted is
    finished first (:func:`xraypose.io.finish_interrupted_write`), its files then deleted with the others: its
    journal, kept by the stale-file sweep with the files it names, outlived the deletion and, at the next write
    or read there, put the killed run's files into the new result.

    Raises:
        OutputError: such a write cannot be finished (a file put in its way since, named): nothing deleted."""
    from xraypose.io import MANIFEST, finish_interrupted_write, remove_stale_temp_files

    out = Path(outdir)
    cases = out / "cases"
    for d in [out, *(sorted(cases.iterdir()) if cases.is_dir() else [])]:
        if d.is_dir():
            finish_interrupted_write(d)
    files = [f for f in previous_results(out) if f.relative_to(out).as_posix() not in set(keep)]
    marks = [f for f in files if f.parent != out and f.name == "result.json"]
    last = [f for f in files if f.parent == out and f.name == RUN_FILE]
    for f in [*marks, *(f for f in files if f not in marks and f not in last), *last]:
        f.unlink()
    if cases.is_dir():
        remove_stale_temp_files(cases, recursive=True)
        for d in cases.iterdir():
            if d.is_dir() and {p.name for p in d.iterdir()} <= {MANIFEST}:  # (a rig's: listing the files deleted)
                (d / MANIFEST).unlink(missing_ok=True)
                d.rmdir()
    return len(files)


def preprocessing_recipe(steps: list) -> list[str]:
    """The order of an X-ray's preprocessing steps, each named with the domain it worked in where it has one
    (``"resize (intensity)"``: binned before the log): what run.json records per case folder X-ray and a resume
    compares — no pixel values, which may differ in their last bits from one CPU to another."""
    return [s["step"] + (f" ({s['domain']})" if "domain" in s else "") for s in steps]


def _binned_before_2026_12_05(steps: list) -> bool:
    """Whether ``resample_domain="auto"`` before 2026-12-05 shrank this X-ray before the log while it is shrunk
    after it now: few photons (the darkest 1 % < ``LOG_MIN_PHOTONS``) with half a photon added (the rule's one
    change; docs/registration.md, "Shrinking raw intensities").  A run.json written before its
    :data:`PREPROCESSING` record cannot say how its cases were preprocessed, only this can."""
    from xraypose.preprocess import LOG_MIN_PHOTONS

    rec = next((s for s in steps if s["step"] == "resize"), None)
    p1 = ((rec or {}).get("photons") or {}).get("photons_p1")
    return bool(rec and rec.get("domain") == "line-integral" and rec.get("photon_offset")
                and p1 is not None and p1 < LOG_MIN_PHOTONS)


def _preprocessing_differences(old: dict, new: dict, binned: list) -> list[str]:
    """Case folder X-rays preprocessed otherwise now than when the run in ``old`` began (each named with the
    two orders), or — for a run.json from before :data:`PREPROCESSING` — those the default shrank before the log
    then and after it now."""
    if not new.get(PREPROCESSING):
        return []
    if PREPROCESSING not in old:
        return [f"{n} (shrunk after the log now, before it if the run began before 2026-12-05: the default then "
                "for few photons)"
                for n in binned if n in (old.get("cases") or [])]
    then, now = old[PREPROCESSING] or {}, new[PREPROCESSING]
    return [f"{n} ({' → '.join(then.get(n) or ['none'])} then, {' → '.join(now[n])} now)"
            for n in now if n in then and then[n] != now[n]]


def _an_evaluation(out: Path, earlier: list) -> bool:
    """Whether ``earlier`` (:func:`previous_results` of ``out``) are an evaluation's files: a run.json that records
    cases, or a case's files (an evaluation of a version before run.json) — not merely the user's own files of the
    top-level names (``metrics.csv``, ``report.html``, ...), which ``--overwrite`` deleted."""
    if any(f.parent != out for f in earlier):
        return True
    try:
        record = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "cases" in record


def _prepare_output(out: Path, record: dict, resume: bool, overwrite: bool, binned: list | None = None) -> None:
    """Check the output against an earlier run (resume: same settings; else refuse or --overwrite); ``binned``:
    the case folder X-rays :func:`_binned_before_2026_12_05`."""
    from xraypose.io import restore_non_finite

    if resume and overwrite:
        raise InputError("give --resume (continue the earlier evaluation) or --overwrite (replace it), not both")
    earlier = previous_results(out)
    run_file = out / RUN_FILE
    if earlier and not _an_evaluation(out, earlier):  # the user's own metrics.csv, report.html: never replaced
        from xraypose.io import OutputError

        theirs = [f.name for f in earlier]
        named = ", ".join(theirs[:5]) + (f" and {len(theirs) - 5} more" if len(theirs) > 5 else "")
        them = "them" if len(theirs) > 1 else "it"
        raise OutputError(f"output folder {out} holds {named}, not written there by xraypose (an evaluation would "
                          f"replace {them}; it has no {RUN_FILE} and no cases/): choose another output folder, or "
                          f"move {them} away")
    if resume:
        if not earlier:
            return
        if not run_file.is_file():
            raise InputError(f"cannot resume {out}: it holds results without {RUN_FILE} (an older xraypose), so "
                             "their settings cannot be checked; evaluate into another folder or give --overwrite")
        try:
            old = restore_non_finite(json.loads(run_file.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"cannot resume {out}: {run_file} is unreadable ({e})") from None
        if not isinstance(old, dict):  # a damaged file that is JSON still: AttributeError escaped
            raise InputError(f"cannot resume {out}: {run_file} is damaged (a JSON {type(old).__name__}, not the "
                             "object of settings an evaluation writes); evaluate into another folder or give "
                             "--overwrite")
        if isinstance(old.get(INPUTS), dict) and old.get("source_path") == record.get("source_path") \
                and (changes := input_changes(old[INPUTS], record.get(INPUTS) or {})):
            raise InputError(f"cannot resume {out}: its inputs changed since the earlier run ({', '.join(changes)}), "
                             "so its results and the new ones would not belong together; re-run with --overwrite, "
                             "or evaluate into another folder")
        changed = _preprocessing_differences(old, record, binned or [])
        if changed:
            raise InputError(f"cannot resume {out}: {len(changed)} X-ray(s) would be preprocessed otherwise than in "
                             f"the earlier run ({'; '.join(changed[:3])}{'; …' if len(changed) > 3 else ''}), so its "
                             "results and the new ones would not belong together; evaluate into another folder or "
                             "give --overwrite")
        diffs = settings_differences(old, json.loads(json.dumps(record, default=str)))
        if diffs:
            raise InputError(f"cannot resume {out} with other settings: {'; '.join(diffs)}; resume with the "
                             "earlier settings, or evaluate into another folder (or --overwrite)")
        return
    if earlier:
        if not overwrite:
            raise InputError(f"{out} holds an earlier evaluation ({earlier[0].relative_to(out)}, ...); give "
                             "--resume to continue it, --overwrite to replace it, or another folder")
        remove_previous_results(out)


def evaluate(
    evalset: EvalSet,
    outdir,
    start,
    *,
    config=None,
    start_label: str = "",
    pictures: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    settings: dict | None = None,
    quiet: bool = False,
    shards=None,
) -> dict:
    """Register every X-ray of ``evalset`` and write the results (see the module docstring).

    Args:
        evalset: from :func:`load_eval_set`.
        outdir: output folder.
        start: how each registration starts: an initialiser ``init(images, camera) -> (B, 4, 4)``
            (e.g. :class:`xraypose.register.initializers.ModelInitializer`), a fixed (4, 4) pose,
            or a :class:`StartRule` (:func:`perturbed_starts`, :func:`angle_starts`).
        config: :class:`xraypose.register.RegistrationConfig` (default: the defaults, with the
            DRRs blurred as the set's preprocessing blurred the X-rays).
        start_label: how the start was chosen, for the report.
        resume: reuse the results of cases already written in ``outdir`` (refused when the settings
            differ from those in its ``run.json``, or its inputs changed since: the difference is named).
        overwrite: replace an earlier evaluation in ``outdir`` (refused without it or ``resume``).
        settings: more settings to record in ``run.json`` and check on a resume, e.g. the CLI's
            options (``{"--perturb": [10, 40]}``); the source, case names, start label, pictures and
            the registration configuration are always recorded.
        shards: this process's :class:`xraypose.shards.Shards` when several share the X-rays
            (``Shards.from_env()`` under torchrun; default: one process registers them all).
    Returns:
        the summary (also ``outdir/summary.json``; on every rank).
    Raises:
        OutputInUse: another xraypose run is using ``outdir`` (:func:`xraypose.output_lock.output_lock`: held while
            it evaluates, by rank 0 as the command's; a lock of the calling command there is joined).
    """
    from xraypose.output_lock import output_lock

    with output_lock(outdir, join=True) if shards is None or shards.rank == 0 else contextlib.nullcontext():
        return _evaluate(evalset, outdir, start, config=config, start_label=start_label, pictures=pictures,
                         resume=resume, overwrite=overwrite, settings=settings, quiet=quiet, shards=shards)


def _evaluate(evalset: EvalSet, outdir, start, *, config, start_label: str, pictures: bool, resume: bool,
              overwrite: bool, settings: dict | None, quiet: bool, shards) -> dict:
    """:func:`evaluate`'s work, under its output's lock."""
    from xraypose.io import check_output_folder
    from xraypose.shards import Shards

    if not evalset.cases:
        raise InputError(f"{evalset.name}: no X-rays to evaluate")
    out = check_output_folder(outdir)
    if evalset.source is not None:
        check_output_outside_xrays(evalset.source, out)
    t_all = time.perf_counter()
    if config is None:
        from xraypose.register import RegistrationConfig

        config = RegistrationConfig(drr_blur=evalset.blur_px)
    names = [_safe_name(c.name) for c in evalset.cases]
    if len(set(names)) != len(names):
        names = [f"{i:03d}-{n}" for i, n in enumerate(names)]
    record = {"source": evalset.name, "cases": names, "start": start_label, "pictures": bool(pictures),
              "registration": config.to_dict(), **(settings or {})}
    if evalset.source is not None:  # the name alone let a resume mix in the cases of another folder or file
        record["source_path"] = evalset.source
    if evalset.inputs is not None:  # less what this run writes into the case folder itself, if there
        base = Path(evalset.source) if evalset.source is not None else None
        here = Path(out).resolve()
        record[INPUTS] = {k: v for k, v in evalset.inputs.items()
                          if base is None or not base.is_dir() or not (base / k).resolve().is_relative_to(here)}
    if any(c.steps for c in evalset.cases):  # a resume under another preprocessing rule is refused
        record[PREPROCESSING] = {n: preprocessing_recipe(c.steps) for n, c in zip(names, evalset.cases) if c.steps}
    shards = shards or Shards()
    rigged = any(c.camera_to_rig is not None for c in evalset.cases)
    if rigged:
        if shards.distributed:
            raise InputError(f"{evalset.name}: a rig's X-rays are registered together, on one process; run this "
                             "evaluation without torchrun")
        record["rig"] = [c.camera_to_rig.tolist() for c in evalset.cases]
    binned = [n for n, c in zip(names, evalset.cases) if c.steps and _binned_before_2026_12_05(c.steps)]
    shards.prepare(out, record, lambda: _open_output(out, record, resume, overwrite, binned))
    if rigged:
        results = _register_rig(evalset, out, names, start, config, pictures, resume)
    else:
        results = _register_cases(evalset, out, names, start, config, pictures, resume, quiet, shards)
    merged = shards.merge(out, names, results, CASE_FILES)  # every case on rank 0 (None on the others)
    if merged is None:
        return shards.share()
    rows = [merged[i][0] for i in sorted(merged)]
    sections = [merged[i][1] for i in sorted(merged)]
    write_csv(out / "metrics.csv", rows, ROW_COLUMNS)
    has_truth = any("mTRE (mm)" in r for r in rows)
    summary = summary_of(rows) if has_truth else {"n_cases": len(rows)}
    summary.update(verdict_summary(rows))
    summary.setdefault("median_opt_s", statistics.median(r["opt (s)"] for r in rows))
    summary.update({"source": evalset.name, "start": start_label, "total_s": time.perf_counter() - t_all})
    atomic_write_json(out / "summary.json", summary)
    _write_evaluation_report(out, evalset.name, rows, sections, summary, start_label, has_truth)
    return shards.share(summary)


def _register_cases(evalset: EvalSet, out: Path, names: list, start, config, pictures: bool, resume: bool,
                    quiet: bool, shards) -> dict:
    """Register this process's share of the cases and write each one's files (the cases already written are
    read back on a resume); returns ``{index: (row, report section)}``.  An error on any process is raised on
    every process (after all have stopped)."""
    from xraypose.progress import progress
    from xraypose.register import Registrar
    from xraypose.register.api import register_xray

    registrar = Registrar(evalset.volume, config, isocenter=evalset.isocenter)
    pictures_renderer = PictureRenderer(evalset.volume, config.density) if pictures else None
    saved = {i: r for i, n in enumerate(names) if resume and (r := _saved_result(out / "cases" / n)) is not None}
    plan = shards.plan(len(names), saved)  # one process: every unsaved case is its own
    results = {i: saved[i] for i in plan.kept}  # index -> (row, report section)
    error = None
    try:
        it = progress(((i, evalset.cases[i]) for i in shards.claims(plan)), desc=shards.label("registering"),
                      unit="X-ray", disable=quiet, total=len(plan.mine) if not shards.distributed else None)
        for i, case in it:
            init = start(case, i) if isinstance(start, StartRule) else start
            reg = register_xray(evalset.volume, case.image, case.camera, init, registrar=registrar,
                                true_pose=case.true_pose, fiducials=case.fiducials, masks=case.mask)[0]
            results[i] = write_case_outputs(out / "cases" / names[i], evalset.volume, case.image, case.camera, reg,
                                            name=case.name, fiducials=case.fiducials if case.fiducials is not None
                                            else _picked_fiducials(reg),
                                            true_pose=case.true_pose, pictures=pictures, renderer=pictures_renderer,
                                            mask=case.mask)
    except Exception as e:  # noqa: BLE001 - raised below, on every rank
        error = e
    shards.check(error)
    return results


#: The folder (under ``cases/``) of a rig's joint result.
RIG_FOLDER = "rig"


def _register_rig(evalset: EvalSet, out: Path, names: list, start, config, pictures: bool, resume: bool) -> dict:
    """Register the set's X-rays together as the views of one rig (their ``camera_to_rig``), started from
    the first view's start; write the joint result to ``cases/rig/`` (pose.json with every view's pose,
    metrics.json, trajectory.json, views.png side by side) and each view's row and section to its own
    ``cases/NAME/result.json``; returns ``{index: (row, section)}`` (every view has the joint verdict,
    similarity and time, and its own metrics)."""
    from xraypose.register import Registrar
    from xraypose.register.multiview import ViewImage, register_rig, rig_start, write_rig_registration

    saved = {i: r for i, n in enumerate(names) if resume and (r := _saved_result(out / "cases" / n)) is not None}
    if len(saved) == len(names):
        return saved
    cases = evalset.cases
    C0 = cases[0].camera_to_rig
    init = start(cases[0], 0) if isinstance(start, StartRule) else start
    if isinstance(init, torch.Tensor) or not callable(init):  # the first view's camera_to_world start(s)
        init = rig_start(torch.as_tensor(init, dtype=F64).reshape(-1, 4, 4), C0)
    truth = None if cases[0].true_pose is None else cases[0].true_pose.to(F64) @ torch.linalg.inv(C0)
    registrar = Registrar(evalset.volume, config, isocenter=evalset.isocenter)
    views = [ViewImage(names[i], c.image, c.camera, c.camera_to_rig, mask=c.mask) for i, c in enumerate(cases)]
    rr = register_rig(evalset.volume, views, init, registrar=registrar, true_rig_to_world=truth,
                      fiducials=cases[0].fiducials)
    d = out / "cases" / RIG_FOLDER
    write_rig_registration(d, rr, images=[c.image for c in cases] if pictures else None, volume=evalset.volume,
                           masks=[c.mask for c in cases])
    heading = f"rig of {len(cases)} views: similarity {rr.similarity:.4f}, {rr.status}"
    if rr.verdict is not None:
        heading += f" · {rr.verdict} (P(mTRE < 2 mm) {rr.p_success:.2f})" + (
            f": {rr.reason}" if rr.verdict != "ok" else "")
    figures = [(d / "views.png", "every view: X-ray, DRR at the joint result, difference")] if pictures else []
    results = {}
    for i, (v, name) in enumerate(zip(rr.views, names)):
        row = _metrics_row(cases[i].name, rr, v.metrics, v.initial_metrics, spread=v.spread)
        section = ({"heading": heading, "figures": figures} if i == 0 else
                   {"heading": f"{cases[i].name}: view {i + 1} of the rig (above)", "figures": []})
        cd = out / "cases" / name
        cd.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cd / "result.json", {"row": row, "section": {
            "heading": section["heading"], "figures": [[str(p), c] for p, c in section["figures"]]}})
        results[i] = (row, section)
    return results


def _write_evaluation_report(out: Path, name: str, rows: list, sections: list, summary: dict, start_label: str,
                             has_truth: bool) -> None:
    """``report.html``: the summary cards (success rates and medians with the truth), the table, every case."""
    from xraypose.report import table_html, write_report

    cards = {"X-rays": len(rows)}
    if has_truth:
        cards.update({"success (mTRE < 1 mm)": f"{100 * summary['sr_1mm']:.0f} %",
                      "success (mTRE < 2 mm)": f"{100 * summary['sr_2mm']:.0f} %",
                      "median mTRE": f"{summary.get('median_mtre_mm', float('nan')):.2f} mm"})
        if "median_start_mtre_mm" in summary:
            cards["median start mTRE"] = f"{summary['median_start_mtre_mm']:.1f} mm"
    if "verdicts" in summary:
        cards["verdicts: ok / uncertain / failed"] = " / ".join(str(summary["verdicts"][v]) for v in
                                                                ("ok", "uncertain", "failed"))
    cards["median registration time"] = f"{summary['median_opt_s']:.2f} s"
    write_report(
        out / "report.html", f"xraypose evaluate: {name}", cards,
        [{"heading": "Results",
          "text": (f"{len(rows)} X-rays of {name} registered to the CT starting from {start_label or 'the given start'}. "
                   "mTRE is the mean 3D distance at the fiducials between the true and the registered pose; mPE "
                   "the mean distance of their projections on the detector; success means mTRE below 1 mm. The "
                   "verdict and p_success (P(mTRE < 2 mm)) are the registration's own confidence check, made without "
                   "the truth; the status only says how the optimiser stopped."
                   if has_truth else f"{len(rows)} X-rays of {name} registered (no ground truth given)."),
          "table": table_html(rows, [c for c in ROW_COLUMNS if any(c in r for r in rows)],
                              good=(lambda r: r.get("mTRE (mm)", math.inf) < 1.0) if has_truth else None)},
         *sections],
        subtitle="Poses are camera_to_world in the CT's RAS mm (docs/conventions.md). Per-case files in cases/.",
    )


def _open_output(out: Path, record: dict, resume: bool, overwrite: bool, binned: list | None = None) -> None:
    """Check the output folder (:func:`_prepare_output`), create it, clear stale temporary files, write run.json."""
    from xraypose.io import OutputError, remove_stale_temp_files

    _prepare_output(out, record, resume, overwrite, binned)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the output folder {out}: {e.strerror or e}") from None
    remove_stale_temp_files(out, recursive=True)
    atomic_write_json(out / RUN_FILE, record)


def _saved_result(d: Path):
    """(row, report section) of a case folder ``d``'s result.json, or None (absent or unreadable)."""
    from xraypose.io import restore_non_finite

    try:
        saved = restore_non_finite(json.loads((d / "result.json").read_text(encoding="utf-8")))
        return saved["row"], {"heading": saved["section"]["heading"],
                              "figures": [(d / Path(p).name, c) for p, c in saved["section"]["figures"]]}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return None


def _picked_fiducials(reg):
    """The bone fiducials the metrics used when none were given (or None)."""
    f = (getattr(reg, "extra", None) or {}).get("fiducials")
    return None if f is None else torch.as_tensor(f, dtype=F64).reshape(-1, 3)
