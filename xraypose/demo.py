"""``xraypose demo``: the whole job on the bundled pelvis CT, on a CPU, in minutes.

1. trains a small patient-specific pose regressor on DRRs of the CT (time-budgeted);
2. makes realistic synthetic X-rays at poses the model has never seen (rendered
   unlike registration renders: Siddon ×2 supersampled, physical μ, blur,
   Poisson noise, 16-bit, collimator; then preprocessed as real X-rays);
3. registers them, starting from the model's estimate;
4. writes ``xraypose-demo/``: ``report.html`` (self-contained but for the
   registration GIFs, which it shows from ``cases/NNN/``), per-case pose
   JSONs, Slicer transforms, landmark CSVs and pictures, ``metrics.csv`` and
   ``summary.json``; and prints a short summary (success, mTRE, the results' own spread, verdicts, time).

Running the demo again into the same folder replaces the earlier demo's files
(model, per-case files, report...; other files are left alone; the results as one set, all-or-nothing:
:func:`_write_results`) — but not its training when that
training is of the same settings (preset, image size, detector, seed, time budget): a training that a
kill or Ctrl-C interrupted is resumed from its ``model.last.pt`` (bit-identically, as
``xraypose train --resume``), and a finished one is reused; one line says which.  A training of other
settings (another ``--seed``, ``--train-seconds``, ``--fast``), or one killed before its first
checkpoint, is trained again from scratch.

This is automatic, with no ``--resume``: ``train`` and ``evaluate`` refuse an existing output without
``--resume`` (continue) or ``--overwrite`` (start again) because their outputs are the user's work that a
mistyped ``-o`` would destroy; the demo has neither option, its re-run is the README's one command, it
has always replaced its own earlier files in place, and its model is its own intermediate, made with the
settings it checks before reusing it.  Starting the training again from scratch therefore only needs
another ``-o`` (or the folder's ``model.last.pt`` deleted).
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from xraypose.camera import DEFAULT_SDD_MM, Camera, default_sod
from xraypose.io import atomic_write_json

if TYPE_CHECKING:
    from xraypose.volume import Volume

__all__ = ["DemoSettings", "run_demo"]


@dataclass
class DemoSettings:
    train_seconds: float = 360.0  # training budget (wall clock, setup included)
    train_size: int = 48  # training image size (pixels per side)
    preset: str = "cpu-fast"  # training preset (xraypose.train.PRESETS): the best measured on a CPU budget
    cases: int = 12  # synthetic X-rays to register
    xray_size: int = 256  # raw detector pixels per side (as the registration benchmark's)
    detector_mm: float = 280.0  # detector width: the X-rays' and (known in advance, as for a real C-arm) training's
    seed: int = 0

    @classmethod
    def fast(cls) -> "DemoSettings":
        return cls(train_seconds=40.0, cases=3)


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


def run_demo(outdir="xraypose-demo", settings: DemoSettings | None = None, quiet: bool = False) -> dict:
    """Run the demo; returns the summary dict (also in ``outdir/summary.json``).

    ``outdir`` is locked meanwhile (:func:`xraypose.output_lock.output_lock`, joining the calling command's lock).
    Its results (report, summary, metrics.csv, pictures, every case's files) are made in a temporary folder and
    written into ``outdir`` as one set (:func:`_write_results`); the training writes its model there as it goes."""
    from xraypose.output_lock import output_lock
    from xraypose.volume import load_sample_ct

    s = settings or DemoSettings()
    with output_lock(outdir, join=True):
        out, earlier = _prepare_output(outdir, s.cases)
        t_all = time.perf_counter()
        ct = load_sample_ct()
        _say(f"xraypose demo: bundled pelvis CT {tuple(ct.shape)} at {float(ct.spacing[0]):g} mm → {out}/", quiet)
        t_train = time.perf_counter()
        tr, train_s = _train_model(ct, out, s, quiet)
        train_now_s = time.perf_counter() - t_train  # less than train_s where an earlier training was resumed/reused
        cases = _simulate_xrays(ct, s, quiet)
        regs = _register(ct, out, cases, s, quiet)
        with tempfile.TemporaryDirectory(prefix="xraypose-demo-") as tmp:
            stage = Path(tmp)
            rows, sections = _write_case_files(ct, stage, cases, regs, tr)
            summary = _summary(rows, tr, train_s, t_all)
            atomic_write_json(stage / "summary.json", summary)
            _write_demo_report(stage, summary, rows, sections, s, tr, train_s)
            _write_results(out, stage, s.cases, earlier)
        _print_summary(out, summary, s, train_s, len(rows), quiet, train_now_s=train_now_s)
    return summary


def _write_results(out: Path, stage: Path, cases: int, earlier: list) -> None:
    """The demo's results, made in ``stage``, written into ``out`` as one set (:func:`xraypose.io.atomic_write_files`,
    replacing the earlier demo's, ``earlier`` (:func:`_prepare_output`'s): its results this one lacks, cases beyond
    its count, are deleted).  They were
    written one by one, after the earlier demo's had been deleted: a kill between two left a summary and cases
    without their report, or the cases of one run beside the report of another; now a kill leaves the earlier
    demo's results whole or, finished by the next command there, this one's.  The model's files (its training's,
    written as it trained) stay, listed in the manifest beside them."""
    from xraypose.io import atomic_write_files
    from xraypose.train.outputs import output_paths

    files = {p.relative_to(stage).as_posix(): p.read_bytes() for p in sorted(stage.rglob("*")) if p.is_file()}
    for name in files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
    model = [p.name for p in output_paths("model.pt").values()]
    remove = [n for n in dict.fromkeys([*_demo_files(cases), *earlier]) if n not in model]
    atomic_write_files(out, files, remove=remove, keep=model)
    for d in (out / "cases").iterdir():  # an earlier demo's cases beyond this one's count
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def _demo_files(cases: int) -> list[str]:
    """The names (relative to the output folder) of the files a demo of ``cases`` X-rays writes."""
    from xraypose.evaluate import CASE_FILES, RUN_FILE, TOP_FILES
    from xraypose.train.outputs import output_paths

    model = [p.name for p in output_paths("model.pt").values()]  # model.crash.pt too: training writes it on a NaN loss
    top = [n for n in TOP_FILES if n != RUN_FILE]  # evaluate's settings record: the demo writes none
    return [*top, *model, *(f"cases/{i:03d}/{n}" for i in range(int(cases)) for n in CASE_FILES)]


def _demo_before_manifests(out: Path) -> bool:
    """Whether ``out`` is a demo folder written before demos kept a manifest (2026-12-05): no manifest, the
    demo's training log and curves, and its summary.json with the model's start error.  Its
    files are the demo's: running the demo again there (the README's command) replaces them as it always did."""
    import json

    from xraypose.io import MANIFEST

    if (out / MANIFEST).exists() or not all((out / n).is_file() for n in ("model.log.jsonl", "training.png")):
        return False
    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and "median_start_mtre_mm" in summary


def _prepare_output(outdir, cases: int) -> tuple[Path, list[str]]:
    """The output folder, checked and created, with ``cases/``; its manifest lists the files this demo writes and
    the earlier demo's it will replace (an earlier demo's results stay until :func:`_write_results` replaces them).
    Returns the folder and those earlier results' names (relative to it; a ``run.json`` the user made not among them).

    Only files an earlier demo wrote there (listed in the folder's manifest) are replaced or deleted: a
    user's own ``report.html`` or ``model.pt`` there is refused before anything is written (it was
    deleted or overwritten)."""
    from xraypose.evaluate import RUN_FILE, previous_results
    from xraypose.io import (MANIFEST, OutputError, atomic_write_json, check_output_folder, remove_stale_temp_files,
                             written_here)

    out = check_output_folder(outdir)  # (a write of its results a kill interrupted: finished)
    names = _demo_files(cases)
    # a run.json no xraypose result wrote there (the demo writes none) is the user's: neither refused nor deleted
    keep = [RUN_FILE] if out.is_dir() and RUN_FILE not in written_here(out) else []
    earlier = [n for f in previous_results(out) if (n := f.relative_to(out).as_posix()) not in keep]
    if out.is_dir() and not _demo_before_manifests(out):  # every file it would replace must be an earlier demo's
        check_output_folder(out, replaces=[*earlier, *names])
    try:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(out, recursive=True)  # a killed write's, in case folders too
        atomic_write_json(out / MANIFEST, {"written_by": "xraypose",  # before any of them (the model's first)
                                           "files": sorted(written_here(out) | set(names) | set(earlier))})
        (out / "cases").mkdir(exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write the demo's output folder {out}: {e.strerror or e}") from None
    return out, earlier


def _train_config(s: DemoSettings, quiet: bool):
    """The demo's training configuration (a :class:`~xraypose.train.TrainConfig`) for the settings ``s``."""
    from xraypose.train import TrainConfig

    return TrainConfig.from_dict({
        "preset": s.preset,
        "camera": {"height": s.train_size, "fov_mm": s.detector_mm},
        "run": {"time_budget_s": s.train_seconds, "max_steps": 10**9, "seed": s.seed, "progress": not quiet},
    })


def _train_model(ct: Volume, out: Path, s: DemoSettings, quiet: bool):
    """Step 1: ``(TrainResult, seconds of the whole training)`` of ``out/model.pt``: trained for ``s.train_seconds``,
    or an earlier demo's training of the same settings resumed or reused (module docstring)."""
    import sys

    from xraypose.train import train

    cfg = _train_config(s, quiet)
    model = out / "model.pt"
    how, note, done = _earlier_training(model, cfg)
    if how == "reuse":
        _say(f"[1/3] training: reusing {model.name}, the finished training of an earlier demo with these settings "
             f"({done.steps} steps, {done.elapsed_s:.0f} s)", quiet)
        return done, done.elapsed_s
    if how == "resume":
        _say(f"[1/3] training: resuming the interrupted training of an earlier demo from {note}", quiet)
    else:
        _say(f"[1/3] training a patient-specific pose regressor for {s.train_seconds:.0f} s "
             f"({s.train_size}² DRRs, from scratch{'; ' + note if note else ''})", quiet)
    try:
        tr = train(ct, model, cfg, quiet=quiet, **({"resume": True} if how == "resume" else {"overwrite": True}))
    except KeyboardInterrupt:
        print(f"xraypose demo: the same command again (-o {out}) continues this training (the demo takes no "
              "--resume)", file=sys.stderr, flush=True)
        raise
    return tr, tr.elapsed_s  # the whole training's, resumed sessions included


def _shaping_differences(old: dict, new: dict) -> list[str]:
    """The settings in which two training configurations differ (outside ``[run]``: :func:`training_differences`;
    in ``[run]``: all but ``progress``, which only shows a bar): whether the earlier training is this demo's."""
    from xraypose.train.config import training_differences

    o, n = old.get("run") or {}, new.get("run") or {}
    run = [f"run.{k}" for k in dict.fromkeys([*o, *n]) if k != "progress" and o.get(k) != n.get(k)]
    return [*training_differences(old, new), *run]


def _earlier_training(model: Path, cfg) -> tuple[str, str, object]:
    """What an earlier demo left of its training at ``model``: ``("reuse", "", TrainResult)`` when it finished
    with these settings, ``("resume", "what", None)`` when it was interrupted after a checkpoint, else
    ``("scratch", "why, or empty", None)``."""
    from xraypose.errors import InputError
    from xraypose.train import output_paths
    from xraypose.train.run import read_training_state

    paths = output_paths(model)
    if not paths["last"].is_file():
        earlier = any(q.exists() for q in paths.values())
        return "scratch", "the earlier demo's training stopped before its first checkpoint" if earlier else "", None
    try:
        state = read_training_state(paths["last"])
    except InputError:
        return "scratch", f"the earlier demo's {paths['last'].name} cannot be resumed", None
    diffs = _shaping_differences(state["config"], cfg.to_dict())
    if diffs:
        return "scratch", f"the earlier demo's training had other settings: {', '.join(diffs[:3])}", None
    end = _log_end(paths["log"])
    if end is not None and end.get("step") == state["step"] and paths["best"].is_file():
        from xraypose.train import TrainResult

        best = end.get("best") if isinstance(end.get("best"), dict) else {}
        final = end.get("final_validation") if isinstance(end.get("final_validation"), dict) else None
        return "reuse", "", TrainResult(
            model_path=paths["best"], last_path=paths["last"], log_path=paths["log"], steps=int(state["step"]),
            images_seen=int(state["images_seen"]), renders=int(state["renders"]),
            elapsed_s=float(state.get("elapsed_s", 0.0)), images_per_s=float(end.get("images_per_s") or 0.0),
            best_val={"step": best.get("step"), **final} if final else None)
    budget = cfg.run.time_budget_s
    return "resume", (f"{paths['last'].name} at step {state['step']} ({float(state.get('elapsed_s', 0.0)):.0f} s"
                      + (f" of {budget:.0f} s" if budget else "") + " trained)"), None


def _log_end(log: Path) -> dict | None:
    """The training log's last row when it is the ``"end"`` row of a finished training (else None)."""
    try:
        lines = [x for x in log.read_text(encoding="utf-8").splitlines() if x.strip()]
        row = json.loads(lines[-1]) if lines else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return row if isinstance(row, dict) and row.get("event") == "end" else None


def _simulate_xrays(ct: Volume, s: DemoSettings, quiet: bool) -> list:
    """Step 2: ``s.cases`` realistic synthetic X-rays (:class:`~xraypose.register.cases.CaseMaker`)."""
    from xraypose.register.cases import CaseMaker

    _say(f"[2/3] simulating {s.cases} realistic X-rays at unseen poses", quiet)
    raw_cam = Camera(sdd=DEFAULT_SDD_MM, height=s.xray_size, width=s.xray_size, delx=s.detector_mm / s.xray_size)
    maker = CaseMaker(ct, camera=raw_cam, sod=default_sod(DEFAULT_SDD_MM), seed=1000 + s.seed)  # 612 mm
    return [maker.case(i) for i in range(s.cases)]


def _register(ct: Volume, out: Path, cases: list, s: DemoSettings, quiet: bool) -> list:
    """Step 3: each case registered from the model's estimate; one :class:`Registration` per case."""
    from xraypose.progress import progress
    from xraypose.register import Registrar, RegistrationConfig
    from xraypose.register.api import register_xray
    from xraypose.register.initializers import ModelInitializer

    _say("[3/3] registering them, starting from the model's estimate", quiet)
    init = ModelInitializer.from_checkpoint(out / "model.pt", ct)
    regs = []
    it = progress(cases, desc="registering", unit="X-ray", disable=quiet)
    # The cases' preprocessing blurred them (5×5, σ = 1 px): the DRRs get the same blur.
    registrar = Registrar(ct, RegistrationConfig(drr_blur=1.0, seed=s.seed))
    for c in it:
        r = register_xray(ct, c.image, c.camera, init, registrar=registrar, true_pose=c.true_pose,
                          fiducials=c.fiducials)[0]
        regs.append(r)
    return regs


def _write_case_files(ct: Volume, out: Path, cases: list, regs: list, tr) -> tuple[list, list]:
    """Every case's files (as ``xraypose evaluate`` writes them), the scene, the training curves and
    ``metrics.csv``; returns the table's rows and the report's case sections."""
    from xraypose import viz
    from xraypose.evaluate import ROW_COLUMNS, PictureRenderer, write_case_outputs, write_csv

    rows = []
    sections = []
    pictures = PictureRenderer(ct)
    for c, r in zip(cases, regs):
        row, section = write_case_outputs(out / "cases" / f"{c.index:03d}", ct, c.image, c.camera, r,
                                          name=str(c.index), fiducials=c.fiducials, true_pose=c.true_pose,
                                          renderer=pictures)
        rows.append(row)
        sections.append(section)
    viz.save_scene(out / "scene.png", ct, cases[0].camera, regs[0].camera_to_world, xray=cases[0].image)
    train_curves = _training_curves(tr.log_path)
    if train_curves:
        viz.save_curves(out / "training.png", train_curves, xlabel="step", log_y=set(train_curves))
    write_csv(out / "metrics.csv", rows, ROW_COLUMNS)
    return rows, sections


def _summary(rows: list, tr, train_s: float, t_all: float) -> dict:
    """Success rates (mTRE < 1 / 2 mm), medians (mm, s), the training's seconds and speed, the machine,
    the verdicts."""
    from xraypose.evaluate import verdict_summary

    mtre = [r["mTRE (mm)"] for r in rows]
    opt = [r["opt (s)"] for r in rows]
    init_s = [r["init (s)"] for r in rows]
    return {
        "cases": len(rows),
        "success_rate_1mm": sum(x < 1.0 for x in mtre) / len(rows),
        "success_rate_2mm": sum(x < 2.0 for x in mtre) / len(rows),
        "median_mtre_mm": statistics.median(mtre),
        "median_start_mtre_mm": statistics.median(r["start mTRE (mm)"] for r in rows),
        "median_opt_s": statistics.median(opt),
        "median_init_s": statistics.median(init_s),
        "train_s": train_s,
        "train_images_per_s": tr.images_per_s,
        "total_s": time.perf_counter() - t_all,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        **verdict_summary(rows),
        **({"median_sd_along_beam_mm": statistics.median(sd)}
           if (sd := [r["sd along beam (mm)"] for r in rows if r.get("sd along beam (mm)") is not None]) else {}),
    }


def _write_demo_report(out: Path, summary: dict, rows: list, sections: list, s: DemoSettings, tr,
                       train_s: float) -> None:
    """``report.html``: the summary cards, what happened, the table, the scene and curves, every case."""
    from xraypose.evaluate import ROW_COLUMNS
    from xraypose.report import table_html, write_report

    write_report(
        out / "report.html", "xraypose demo: where was each X-ray taken from?",
        {"success (mTRE < 1 mm)": f"{100 * summary['success_rate_1mm']:.0f} %",
         "median mTRE": f"{summary['median_mtre_mm']:.2f} mm",
         "median start mTRE (model)": f"{summary['median_start_mtre_mm']:.1f} mm",
         "median registration time": f"{summary['median_opt_s']:.2f} s",
         **({"verdicts: ok / uncertain / failed": _verdict_counts(summary)} if "verdicts" in summary else {}),
         "training": f"{train_s / 60:.1f} min"},
        [{"heading": "What happened",
          "text": (f"A pose regressor was trained for {train_s:.0f} s on DRRs of the bundled pelvis CT alone "
                   f"({tr.images_seen} images at {s.train_size}²). {len(rows)} realistic X-rays were then simulated "
                   "at new poses (Siddon ×2 supersampled, physical attenuation, blur, Poisson noise, 16-bit, "
                   "collimator — not the way registration renders) and registered starting from the model's "
                   "estimate. mTRE is the mean 3D distance at bone fiducials between the true and the registered "
                   "pose. The verdict (ok / uncertain / failed) and p_success, the probability that the mTRE is "
                   "below 2 mm, are the registration's own check, made without the truth. "
                   f"Machine: {summary['machine']}."),
          "table": table_html(rows, [c for c in ROW_COLUMNS if c in rows[0]], good=lambda r: r["mTRE (mm)"] < 1.0),
          "figures": [(out / "scene.png", "the CT's bone, the source, the frustum and the detector (case 0)"),
                      (out / "training.png", "training curves")]},
         *sections],
        subtitle="Poses are camera_to_world in the CT's RAS mm (docs/conventions.md). Per-case files in cases/.",
    )


def _print_summary(out: Path, summary: dict, s: DemoSettings, train_s: float, n: int, quiet: bool,
                   train_now_s: float | None = None) -> None:
    """The summary on stdout (nothing when ``quiet``); ``train_now_s``: the seconds this run spent on the training
    (``train_s`` is the whole training's, earlier runs' included when it was resumed or reused)."""
    _say("", quiet)
    _say(f"report: {(out / 'report.html').resolve()}", quiet)
    _say(f"success rate (mTRE < 1 mm): {100 * summary['success_rate_1mm']:.0f} % of {n} X-rays", quiet)
    _say(f"median mTRE: {summary['median_mtre_mm']:.2f} mm (from {summary['median_start_mtre_mm']:.1f} mm at the "
         "model's estimate)", quiet)
    if "median_sd_along_beam_mm" in summary:  # one view's depth is its least certain axis (registration.md)
        _say(f"each result's own spread: median {summary['median_sd_along_beam_mm']:.2f} mm (1 sd) along the beam, "
             "the direction one view fixes least", quiet)
    if "verdicts" in summary:
        v = summary["verdicts"]
        _say(f"verdicts: {v['ok']} ok, {v['uncertain']} uncertain, {v['failed']} failed"
             + (f" (of the ok: {100 * summary['ok_below_2mm']:.0f} % below 2 mm)" if "ok_below_2mm" in summary else ""),
             quiet)
    _say(f"median time: {summary['median_opt_s']:.2f} s registration + {summary['median_init_s']:.2f} s model per X-ray "
         + (f"(training {train_s / 60:.1f} min, total {summary['total_s'] / 60:.1f} min)"
            if train_now_s is None or train_s - train_now_s < 1.0 else
            f"(training {train_s / 60:.1f} min, {train_now_s / 60:.1f} min of it in this run; this run "
            f"{summary['total_s'] / 60:.1f} min)"), quiet)
    if s.train_seconds < 120:
        _say(f"(a model trained for {s.train_seconds:.0f} s starts far from the truth and registration often fails "
             "from there: this is the pipeline's quick check. `xraypose demo` trains for 6 minutes.)", quiet)


def _verdict_counts(summary: dict) -> str:
    v = summary["verdicts"]
    return f"{v['ok']} / {v['uncertain']} / {v['failed']}"


def _training_curves(log_path) -> dict:
    p = Path(log_path)
    if not p.exists():
        return {}
    rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip().startswith("{")]
    out = {}
    for key in ("loss", "rot_deg", "trans_mm", "dgeo_sod_mm"):
        ys = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if len(ys) > 1:
            out[key] = ys
    return out
