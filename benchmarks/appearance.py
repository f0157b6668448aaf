"""Appearance benchmark: registration on X-rays formed in ways registration's model did not.

For each CT (the bundled pelvis; ../shared's abdomen when present; or --ct), each appearance family of
:mod:`xraypose.appearance` (an independent renderer, polychromatic physics, scatter, display processing,
low dose, focal blur, a narrow DeepFluoro-like field of view, implants, a displaced femur, a clinical mix)
and each start — the truth (``truth``: how far the optimum sits from it, the "drift"), a fixed
perturbation (``10,40``: turned 10° about a random axis through the isocenter and shifted 40 mm), the
trained pose regressor (``model``, ``--model CT=PATH``) — every case is registered and scored at 20 bone
fiducials in view.

    python benchmarks/appearance.py --json OUT.json [--ct pelvis --ct abdomen] [--families A B ...]
        [--cases N] [--starts truth 10,40 model] [--model pelvis=P.pt] [--set FIELD=VALUE] [--levels 16,32,..]

Cases are the same true poses in every family (case i of a CT uses pose i), formed once and cached
(``--cache``; each file holds only tensors and a camera dict, so an older xraypose can register them:
run with ``--register-only`` and PYTHONPATH pointing at another checkout to measure "before").  Each case
is registered with its preprocessing's mask (a saturated plateau, a collimator's shadow: 0 where the
X-ray cannot be trusted), as ``xraypose register`` does; until 2026-12-03 (stop 32) the benchmark dropped
it (``--ignore-masks`` registers so again), and cases cached before then are completed once by forming
them again (the same generator: the same X-ray, checked).
Writes ``{"machine", "command", "config", "groups": {ct/family/start: summary}, "cases": [...]}``
and prints a table: success < 1 / < 2 mm, median and p90 mTRE, the fraction converged (status
"converged"/"recovered", and the mean fraction of levels that ended by their own test), the median
optimisation time.  ``--hypotheses``: register as ``xraypose register`` does
(:func:`xraypose.register.register_xray` with the confidence check and, when the verdict is not
``ok``, the hypotheses); each case then records its verdict, ``p_success``, which start was kept and
the whole call's time (``opt_s``), and each group the verdict counts and the ``ok`` results above 2 mm.
``--form-detector N``: each X-ray formed on N² pixels over the same 280 mm field with the same dose per mm²
(the families' ``dose_scale`` = (detector / N)²; families that set their photons through the shared detector
chain — not ``ours``) and preprocessed to ``--detector`` rows as ``xraypose register --size`` does, its
resize in ``--resample-domain`` (cached per setting; each case and row records the order used).  Delete a
``-rsauto`` cache after ``"auto"``'s rule changes (2026-12-05: the log of each pixel where half a photon is
added).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path and "PYTHONPATH" not in os.environ:
    sys.path.insert(0, str(ROOT))

from xraypose.camera import Camera  # noqa: E402
from xraypose.io import atomic_write_json  # noqa: E402
from xraypose.metrics import format_table  # noqa: E402
from xraypose.register import Registrar, RegistrationConfig  # noqa: E402
from xraypose.register.api import registration_metrics  # noqa: E402

SHARED_ABDOMEN = ROOT.parent / "shared" / "data" / "ct" / "abdomen_pancreas_ct_cbct_001" / "Pancreas-CT-CB_001_CT.nii.gz"
F64 = torch.float64
DEFAULT_FAMILIES = ("ours", "diffdrr", "polychromatic", "scatter", "display", "lowdose", "focal", "narrow_fov",
                    "implants", "femur", "clinical")


def machine() -> dict:
    cpu = ""
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                    .stdout.splitlines() if ln.startswith("Model name")), "")
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "python": platform.python_version(),
            "torch": torch.__version__, "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "load_avg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None}


def start_report(settings: dict) -> dict:
    """A benchmark report's header, taken when the run starts (the load is the start's): the machine,
    the command line and the ``settings``."""
    return {"machine": machine(), "command": " ".join([sys.executable, *sys.argv]), "settings": settings}


def write_report(path, report: dict, lines=()) -> None:
    """Write ``report`` (atomically), print ``lines``, then where it went with the CPU and the load at start."""
    atomic_write_json(path, report)
    print()
    for line in lines:
        print(line)
    m = report["machine"]
    print(f"\nwrote {path}  ({m['cpu']}, load at start {m['load_avg_at_start']})")


def load_ct(spec: str):
    from xraypose.volume import load_sample_ct, read_volume

    if spec == "pelvis":
        return "pelvis", load_sample_ct()
    if spec == "abdomen":
        return "abdomen", read_volume(SHARED_ABDOMEN)
    return Path(spec).name.split(".")[0], read_volume(spec)


def photon_offset_arg(text: str):
    """argparse type of the benchmarks' ``--photon-offset``: "auto" or a number of photons."""
    return text if text == "auto" else float(text)


def json_sets(sets) -> dict:
    """``{FIELD: value}`` of the benchmarks' ``--set`` / ``--lm-set`` strings "FIELD=JSON"; a value that is not
    JSON ends the run naming it."""
    out = {}
    for a in sets:
        k, _, v = a.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            raise SystemExit(f"{a}: the value is not JSON (e.g. 3, 0.02, null, true, \"gncc\", [3, 9])") from None
    return out


def with_lm_fields(levels, sets) -> tuple:
    """``levels`` with ``sets`` ("FIELD=JSON" strings, the benchmarks' ``--lm-set``) applied to every
    Levenberg–Marquardt level (the fine levels)."""
    import dataclasses

    changes = json_sets(sets)
    return tuple(dataclasses.replace(lv, **changes) if lv.optimizer == "lm" else lv for lv in levels)


def case_folder(name: str, detector: int, seed: int, blur_domain: str = "line-integral",
                photon_offset="auto", *, form_detector: int | None = None, resample_domain: str = "auto") -> str:
    """The cache folder of a CT's cases.  Cases are stored preprocessed: those blurred before the log
    (preprocess's ``blur_domain="intensity"``, its order until 2026-12-02) keep the old name; those formed
    on a finer detector name it and the resize's order."""
    return (f"{name}-d{detector}-s{seed}" + ("" if blur_domain == "intensity" else "-blurlog")
            + ("" if photon_offset == "auto" else f"-po{photon_offset:g}")
            + ("" if form_detector is None else f"-f{form_detector}-rs{resample_domain}"))


def fine_camera(detector: int, form_detector: int) -> Camera:
    """The ``--form-detector`` camera: the benchmark's 280 mm field at sdd 1020 mm on ``form_detector``² pixels."""
    if form_detector % detector:
        raise SystemExit(f"--form-detector {form_detector} must be a multiple of --detector {detector}")
    return Camera(sdd=1020.0, height=form_detector, width=form_detector, delx=280.0 / form_detector)


def fine_preprocessing(fx, detector: int) -> tuple[dict, float | None]:
    """(``preprocess`` keywords, the DRRs' blur σ in registered pixels) of an X-ray formed on a finer
    detector, as ``xraypose register --size DETECTOR`` preprocesses it: the family's crop and 5×5 σ = 1 px
    blur in the file's pixels, then at most ``detector`` rows (:func:`xraypose.cli.steps.preprocess_settings`),
    the DRRs' blur scaled with the image (:func:`xraypose.cli.steps.drr_blur`)."""
    from xraypose.cli.steps import drr_blur, preprocess_settings

    crop = int(fx.preprocess.get("crop", 0) or 0)
    blur = fx.preprocess.get("blur")
    sigma = 0.0 if blur is None else float(blur[1])
    pre = preprocess_settings((fx.camera.height, fx.camera.width), crop, sigma, detector, fx.preprocess.get("i0"))
    extra = {k: v for k, v in fx.preprocess.items() if k not in ("crop", "blur", "i0", "rescale", "size")}
    rows = pre["size"][0] if "size" in pre else fx.camera.height - 2 * crop
    return {**pre, **extra}, drr_blur(sigma, rows, fx.camera.height, crop)


def form_case(volume, maker, family: str, i: int, seed: int, blur_domain: str = "line-integral",
              photon_offset="auto", *, form_detector: int | None = None, resample_domain: str = "auto"):
    """(formed X-ray, preprocessed X-ray, the DRRs' blur σ in registered pixels or None) of case ``i``: the
    maker's true pose ``i``, its X-ray formed by ``family`` (seeded by seed, case and family) and preprocessed
    as the family says; with ``form_detector``, formed on that many rows over the same field with the same
    dose per mm² (``dose_scale``) and brought to the maker's rows as ``xraypose register --size`` does
    (:func:`fine_preprocessing`), its resize in ``resample_domain``."""
    from xraypose.appearance import form_xray
    from xraypose.preprocess import preprocess

    T, _ = maker.true_pose(i)
    g = torch.Generator().manual_seed(seed * 1_000_003 + i * 101 + sum(map(ord, family)))
    if form_detector is None:
        fx = form_xray(volume, maker.raw_camera, T, family=family, generator=g)
        prep, blur = dict(fx.preprocess), (1.0 if fx.preprocess.get("blur") else None)
    else:
        rows = maker.raw_camera.height
        fx = form_xray(volume, fine_camera(rows, form_detector), T, family=family, generator=g,
                       dose_scale=(rows / form_detector) ** 2)
        prep, blur = fine_preprocessing(fx, rows)
        prep["resample_domain"] = resample_domain
    return fx, preprocess(fx.raw, fx.camera, **prep, blur_domain=blur_domain, photon_offset=photon_offset), blur


def make_case(volume, maker, family: str, i: int, seed: int, blur_domain: str = "line-integral",
              photon_offset="auto", **fine) -> dict:
    """One case: the true pose i of the CT, its X-ray formed by ``family``, preprocessed (the blur in
    ``blur_domain``, ``photon_offset`` photons before the log; ``fine``: :func:`form_case`'s
    ``form_detector``, ``resample_domain``), fiducials in view."""
    from xraypose.fiducials import bone_points, select_fiducials

    fx, pre, blur = form_case(volume, maker, family, i, seed, blur_domain, photon_offset, **fine)
    if not hasattr(maker, "_points"):
        maker._points = bone_points(volume)
    true_pose = pre.transform_pose(fx.pose)
    fid = select_fiducials(maker._points, n=20, seed=seed + i, camera=pre.camera, poses=true_pose, margin_px=4)
    return {"image": pre.image.to(torch.float32), "camera": pre.camera.to_dict(), "true_pose": true_pose.to(F64),
            "fiducials": fid.to(F64), "index": i, "family": family, "drr_blur": blur or 0.0,
            "mask": None if pre.mask is None else pre.mask.to(torch.float32),
            "info": json.loads(json.dumps(fx.info, default=str)), **raw_entries(fx, pre),
            **({"resize": json.loads(json.dumps(rs, default=str))}
               if (rs := next((s for s in pre.steps if s["step"] == "resize"), None)) else {})}


def raw_entries(fx, pre) -> dict:
    """The case's raw X-ray as formed (for ``--counts``): ``raw`` (H, W) float32, its camera, its kind
    (``display`` when a display's LUT processed it — the display and clinical families; else ``intensity``:
    raw detector values, whose log preprocessing takes), the
    preprocessing's crop and ``pose_transform`` (pose of the registered image = raw pose @ it)."""
    return {"raw": torch.as_tensor(fx.raw).to(torch.float32), "raw_camera": fx.camera.to_dict(),
            "raw_kind": "display" if "lut" in fx.info else "intensity",
            "raw_crop": int(fx.preprocess.get("crop", 0) or 0), "pose_transform": pre.pose_transform.to(F64)}


def _case_maker(volume, detector: int, seed: int):
    from xraypose.register.cases import CaseMaker

    cam = Camera(sdd=1020.0, height=detector, width=detector, delx=280.0 / detector)
    return CaseMaker(volume, camera=cam, collimator_px=max(2, detector // 32), seed=seed)


def save_case(c: dict, f: Path) -> None:
    """``c`` saved to ``f`` atomically (a temporary file, then a rename)."""
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    torch.save(c, tmp)
    os.replace(tmp, f)


def completed(c: dict, make, f: Path, keys=("mask",)) -> dict:
    """Case ``c``, loaded from ``f``, with the entries ``keys``: as it is when it has them; else (cached before
    they were: the mask before 2026-12-03, stop 32; the raw X-ray before stop 44) ``make()`` forms it again
    (the same generator, so the same X-ray), the entries ``c`` lacks are added and ``f`` is rewritten.  The
    image must come out identical, else the cache is from another xraypose and is refused."""
    if all(k in c for k in keys):
        return c
    new = make()
    if not torch.equal(new["image"], c["image"]):
        raise SystemExit(f"{f}: formed again, the case differs from its cached image (a cache from another "
                         "xraypose); remove it or use another --cache")
    c = {**new, **c}
    save_case(c, f)
    return c


def with_mask(c: dict, make, f: Path) -> dict:
    """:func:`completed` for the preprocessing's mask (used by this benchmark and benchmarks/confidence.py)."""
    return completed(c, make, f, ("mask",))


def cached_cases(name, volume, family, n, detector, seed, cache: Path, log, make: bool,
                 blur_domain: str = "line-integral", photon_offset="auto", raw: bool = False, **fine) -> list[dict]:
    """``n`` cases of ``family`` (:func:`make_case`; ``fine``: its ``form_detector``, ``resample_domain``),
    loaded from the cache or formed and cached (``make``)."""
    folder = cache / case_folder(name, detector, seed, blur_domain, photon_offset, **fine) / family
    folder.mkdir(parents=True, exist_ok=True)
    maker = None
    out = []
    t0 = time.perf_counter()
    for i in range(n):
        f = folder / f"case{i:04d}.pt"
        if f.exists():
            c = torch.load(f, weights_only=False)
            need = ("mask", "raw") if raw else ("mask",)  # the raw X-ray: for --counts
            if any(k not in c for k in need):  # cached before they were: completed once (forming is deterministic)
                maker = maker or _case_maker(volume, detector, seed)
                had_mask = "mask" in c
                c = completed(c, lambda: make_case(volume, maker, family, i, seed, blur_domain, photon_offset,
                                                   **fine), f, need)
                if not had_mask:
                    share = "none" if c["mask"] is None else f"{float((c['mask'] < 0.5).float().mean()):.1%} masked"
                    log(f"  {name}/{family} case {i}: preprocessing mask added to the cache ({share})")
            out.append(c)
            continue
        if not make:
            if i == 0 and not any(folder.glob("case*.pt")):  # e.g. "femur" on a CT without femurs
                from xraypose.errors import InputError

                raise InputError(f"no case of {family} cached for {name} (not applicable to it, or never formed)")
            raise SystemExit(f"{f} is not cached; run without --register-only first")
        maker = maker or _case_maker(volume, detector, seed)
        c = make_case(volume, maker, family, i, seed, blur_domain, photon_offset, **fine)
        save_case(c, f)
        out.append(c)
        if (i + 1) % 10 == 0:
            log(f"  {name}/{family}: {i + 1}/{n} cases formed ({time.perf_counter() - t0:.0f} s)")
    return out


def start_poses(cases, start: str, volume, seed: int, init=None) -> tuple[torch.Tensor, float]:
    if start == "truth":
        return torch.stack([c["true_pose"] for c in cases]), 0.0
    if start == "model":
        t0 = time.perf_counter()
        imgs = torch.stack([c["image"] for c in cases])[:, None]
        T = init(imgs, Camera.from_dict(cases[0]["camera"]))
        return T.to(F64), (time.perf_counter() - t0) / len(cases)
    from xraypose.register.cases import perturb_pose

    a, t = (float(x) for x in start.split(","))
    out = []
    for c in cases:
        g = torch.Generator().manual_seed(seed * 7919 + c["index"] * 31 + int(a * 10))
        out.append(perturb_pose(c["true_pose"], volume.get_isocenter(), a, t, g)[0])
    return torch.stack(out), 0.0


def case_weights(c: dict, use_masks: bool = True, n: int = 1):
    """(n, 1, H, W) the case's pixel weights as ``xraypose register`` gives them (the preprocessing's mask:
    a saturated plateau, a collimator's shadow; ``n`` copies for n starts), or None (none, or ``use_masks``
    off)."""
    m = c.get("mask") if use_masks else None
    return None if m is None else m[None, None].expand(n, 1, -1, -1)


def counts_entries(c: dict, pose, volume, cam: Camera, verdict=None, counts_kw: dict | None = None) -> dict:
    """``--counts``: the registered ``pose`` (of the preprocessed image's camera ``cam``) refined on the case's
    raw counts as ``xraypose register --counts`` does (:func:`xraypose.register.counts.refine_xray_on_counts`;
    not for a display-processed X-ray): the row's ``counts_*`` entries.  A ``failed`` verdict is refined too
    and, as the CLI does, keeps its registered pose unless the fit is admitted
    (:func:`~xraypose.register.counts.admit_failed`); one not admitted has ``counts`` ``"refined, failed: not
    admitted"``, the fit's mTRE as ``counts_fit_mtre`` and no ``counts_mtre`` (the row's result the registration's)."""
    from xraypose.register.counts import admit_failed, refine_xray_on_counts

    if c.get("raw_kind") != "intensity":
        return {"counts": "display-processed: not refined"}
    Tp = c["pose_transform"].to(F64)
    raw_pose = torch.as_tensor(pose, dtype=F64).reshape(4, 4) @ torch.linalg.inv(Tp)
    try:
        r = refine_xray_on_counts(volume, Camera.from_dict(c["raw_camera"]), c["raw"], raw_pose,
                                  isocenter=volume.get_isocenter(), crop=c["raw_crop"], **(counts_kw or {}))
    except Exception as e:  # a failed refinement is a row's entry, never the end of the run
        return {"counts": f"error: {e}"}
    P = r.fit.pose @ Tp
    m = registration_metrics(P, c["true_pose"], c["fiducials"], cam)
    row = {"counts": "refined", "counts_mtre": m["mtre"], "counts_metrics": m, "counts_s": r.seconds,
           "counts_pose": P.tolist(),
           "counts_moved_mm": r.fit.moved_mm, "counts_formation": r.to_dict()["formation"], "counts_bin": r.bin,
           "counts_iterations": r.fit.iterations, "counts_chi2": r.fit.chi2_per_pixel,
           "counts_converged": r.fit.converged}
    if verdict == "failed":
        row["counts_admitted"] = admit_failed(r.fit)
        if not row["counts_admitted"]:
            row["counts"] = "refined, failed: not admitted"
            row["counts_fit_mtre"] = row.pop("counts_mtre")
    return row


def run_group(ct, family, start, cases, registrar, init, volume, seed, log, hypotheses: bool = False,
              use_masks: bool = True, counts: bool = False, rows: list | None = None, saved=None,
              parallel_hypotheses: bool | None = None, counts_kw: dict | None = None) -> list[dict]:
    """Each case registered from ``start``: a row per case appended to ``rows`` (a new list by default),
    which is returned; with ``counts`` each row then refined on its counts (:func:`counts_entries`, with
    ``counts_kw``: refine_xray_on_counts's renderer, max_side, supersample held) and
    ``saved(row)`` called after each; ``parallel_hypotheses`` as :func:`~xraypose.register.register_xray`'s."""
    rows = [] if rows is None else rows
    for c in cases:
        rows.append(_case_row(ct, family, start, c, registrar, init, volume, seed, log, hypotheses, use_masks,
                              parallel_hypotheses))
        if counts and "error" not in rows[-1]:
            _add_counts(rows[-1], c, volume, log, saved, counts_kw)
    return rows


def _case_row(ct, family, start, c, registrar, init, volume, seed, log, hypotheses: bool, use_masks: bool,
              parallel_hypotheses: bool | None = None) -> dict:
    """One case registered from ``start`` (as ``xraypose register`` does with ``hypotheses``): its row."""
    cam = Camera.from_dict(c["camera"])
    T0, init_s = start_poses([c], start, volume, seed, init)
    w = case_weights(c, use_masks)
    try:
        if hypotheses:
            r = _checked_row(ct, family, start, c, registrar, volume, cam, T0, init_s, w, parallel_hypotheses)
            log(f"  {ct}/{family}/{start} case {c['index']:3d}: mTRE {r['start_mtre']:7.2f} -> {r['mtre']:7.3f} mm, "
                f"{r['opt_s']:.2f} s, {r['verdict']} (P {r['p_success']:.2f}, kept {r['kept']})")
            return r
        res = registrar.register(c["image"][None, None], cam, T0, masks=w)
    except Exception as e:  # a failed case is a row, never the end of the run
        log(f"  {ct}/{family}/{start} case {c['index']}: error {e}")
        return {"ct": ct, "family": family, "start": start, "case": c["index"], "error": str(e),
                "mtre": float("inf"), "status": "error", "opt_s": float("nan")}
    m = registration_metrics(res.poses[0], c["true_pose"], c["fiducials"], cam)
    m0 = registration_metrics(T0[0], c["true_pose"], c["fiducials"], cam)
    try:  # the pose's own standard deviations (xraypose.register.api.registration_spread; absent in an older one)
        from xraypose.register.api import registration_spread
        spread = registration_spread(res, 0, tuple(c["image"].shape[-2:]))
    except ImportError:
        spread = None
    lv = getattr(res, "levels", None)
    frac = (sum(d["ended"] == "converged" for d in lv[0]) / max(1, len(lv[0]))) if lv else None
    r = {"ct": ct, "family": family, "start": start, "case": c["index"], **m, "start_mtre": m0["mtre"],
         "init_s": init_s, "opt_s": res.opt_s, "cpu_s": res.cpu_s, "iterations": int(res.iterations[0]),
         "status": res.status[0], "levels_converged": frac, "similarity": float(res.similarity[0]),
         "bone_multiplier": float(res.bone_multiplier[0]) if res.bone_multiplier is not None else None,
         "pose": res.poses[0].to(F64).tolist(),
         **beam_errors(res.poses[0], c["true_pose"], volume, spread),
         **({"resized_in": c["resize"].get("domain")} if "resize" in c else {})}
    log(f"  {ct}/{family}/{start} case {c['index']:3d}: mTRE {r['start_mtre']:7.2f} -> {r['mtre']:7.3f} mm, "
        f"{r['opt_s']:.2f} s, {r['status']}")
    return r


def _add_counts(row: dict, c: dict, volume, log, saved=None, counts_kw: dict | None = None) -> None:
    """``--counts``: the row's registration refined on its case's counts (:func:`counts_entries`), logged;
    ``saved(row)`` after (the run's JSON written: a refinement takes minutes)."""
    row.update(counts_entries(c, torch.tensor(row["pose"], dtype=F64), volume, Camera.from_dict(c["camera"]),
                              row.get("verdict"), counts_kw))
    if row["counts"].startswith("refined"):
        f = row["counts_formation"]
        after = row.get("counts_mtre", row.get("counts_fit_mtre"))
        log(f"      counts: mTRE {row['mtre']:.3f} -> {after:.3f} mm, moved {row['counts_moved_mm']:.2f} mm, "
            f"{row['counts_s']:.0f} s ({f['renderer']}, air {f['air_hu']:g}, blur {f['blur_px']:g} px, "
            f"scatter {f['scatter_mm']:.0f} mm; χ² {row['counts_chi2']:.2f})"
            + ("" if "counts_mtre" in row else ": failed, not admitted, the registration's pose stands"))
    else:
        log(f"      counts: {row['counts']}")
    if saved is not None:
        saved(row)


def _checked_row(ct, family, start, c, registrar, volume, cam, T0, init_s, weights=None,
                 parallel_hypotheses: bool | None = None) -> dict:
    """One case registered as ``xraypose register`` does (check and hypotheses): its row."""
    from xraypose.register import register_xray

    t0 = time.perf_counter()
    out = register_xray(volume, c["image"][None, None], cam, T0, registrar=registrar, hypotheses=True,
                        masks=weights, parallel_hypotheses=parallel_hypotheses)[0]
    seconds = time.perf_counter() - t0
    m = registration_metrics(out.camera_to_world, c["true_pose"], c["fiducials"], cam)
    m0 = registration_metrics(T0[0], c["true_pose"], c["fiducials"], cam)
    return {"ct": ct, "family": family, "start": start, "case": c["index"], **m, "start_mtre": m0["mtre"],
            "pose": out.camera_to_world.to(F64).tolist(),
            **beam_errors(out.camera_to_world, c["true_pose"], volume, getattr(out, "spread", None)),
            "init_s": init_s, "opt_s": seconds, "status": out.status, "levels_converged": None,
            "similarity": float(out.similarity), "verdict": out.verdict, "p_success": out.p_success,
            "kept": (out.confidence or {}).get("kept"),
            # each start tried (the given one, then the hypotheses): its p_success and verdict, its distance
            # from the kept result (mm; rival_verdict) and its own mTRE (was a right answer found, and not kept?)
            "hypotheses": [{"start": h["start"], "p_success": h["p_success"], "verdict": h["verdict"],
                            "from_kept_mm": h.get("from_kept_mm"), "mtre": _hypothesis_mtre(h, c, cam),
                            "p_scatter": h.get("p_scatter"), "p_ranked": h.get("p_ranked"),
                            "camera_to_world": h.get("camera_to_world")}
                           for h in (out.confidence or {}).get("hypotheses", [])]}


def _hypothesis_mtre(h: dict, c: dict, cam) -> float | None:
    """The mTRE (mm) of one tried hypothesis's result (its ``camera_to_world``) against the case's truth."""
    if h.get("camera_to_world") is None:
        return None
    return registration_metrics(torch.tensor(h["camera_to_world"], dtype=F64), c["true_pose"], c["fiducials"],
                                cam)["mtre"]


def beam_errors(pose, true_pose, volume, spread: dict | None) -> dict:
    """The result's error at the CT's isocenter along its beam (signed mm, + away from the source) and across it
    (rms of the two other axes, mm), and its ``spread`` (the registration's own standard deviations) beside them."""
    import math

    P, T = torch.as_tensor(pose, dtype=F64), torch.as_tensor(true_pose, dtype=F64)
    iso = torch.as_tensor(volume.get_isocenter(), dtype=F64)
    D = P @ torch.linalg.inv(T)
    err = D[:3, :3] @ iso + D[:3, 3] - iso
    z = P[:3, 2]
    along = float(err @ z)
    return {"err_along_beam_mm": along, "err_across_beam_mm": float((err - along * z).norm()) / math.sqrt(2),
            "spread": spread}


def spread_summary(rows: list[dict]) -> dict:
    """How well the results' own ``spread`` covers their errors: the share whose error along the beam lies within
    1 and 2 standard deviations (rows with a spread), and the median standard deviation along the beam."""
    import numpy as np

    with_sp = [r for r in rows if r.get("spread") and "err_along_beam_mm" in r]
    if not with_sp:
        return {}
    z = np.array([abs(r["err_along_beam_mm"]) / r["spread"]["along_beam_mm"] for r in with_sp])
    return {"spread_n": len(with_sp), "spread_within_1sd": float((z <= 1).mean()),
            "spread_within_2sd": float((z <= 2).mean()),
            "median_sd_along_beam_mm": float(np.median([r["spread"]["along_beam_mm"] for r in with_sp])),
            "median_err_along_beam_mm": float(np.median([abs(r["err_along_beam_mm"]) for r in with_sp]))}


def summarise(rows: list[dict]) -> dict:
    import numpy as np

    mt = np.array([r["mtre"] for r in rows], dtype=float)
    t = np.array([r["opt_s"] for r in rows], dtype=float)
    lc = [r["levels_converged"] for r in rows if r.get("levels_converged") is not None]
    return {"n": len(rows), "sr_1mm": float((mt < 1).mean()), "sr_2mm": float((mt < 2).mean()),
            "median_mtre": float(np.median(mt)), "p90_mtre": float(np.percentile(mt, 90)),
            "converged": float(np.mean([r["status"] in ("converged", "recovered") for r in rows])),
            "levels_converged": float(np.mean(lc)) if lc else None,
            "median_opt_s": float(np.nanmedian(t)) if np.isfinite(t).any() else None,
            "median_start_mtre": float(np.median([r.get("start_mtre", float("nan")) for r in rows])),
            **({"verdicts": {v: sum(r.get("verdict") == v for r in rows) for v in ("ok", "uncertain", "failed")},
                "ok_above_2mm": sum(r.get("verdict") == "ok" and r["mtre"] >= 2 for r in rows),
                "kept_other": sum(r.get("kept") not in (None, "given start") for r in rows)}
               if any("verdict" in r for r in rows) else {}),
            **(counts_summary(rows) if any("counts" in r for r in rows) else {}),
            **spread_summary(rows)}


def counts_summary(rows: list[dict]) -> dict:
    """``--counts``: each row's result after the counts' refinement (its registration's where it was not
    refined or not taken: display processing, an error, a failed verdict the fit was not admitted for) — success,
    median, p90 — and how many were refined, the median seconds of a refinement."""
    import numpy as np

    after = np.array([r.get("counts_mtre", r["mtre"]) for r in rows], dtype=float)
    sec = [r["counts_s"] for r in rows if "counts_s" in r]
    return {"counts_refined": sum(str(r.get("counts", "")).startswith("refined") for r in rows),
            "counts_sr_1mm": float((after < 1).mean()), "counts_sr_2mm": float((after < 2).mean()),
            "counts_median_mtre": float(np.median(after)), "counts_p90_mtre": float(np.percentile(after, 90)),
            "counts_median_s": float(np.median(sec)) if sec else None}


COLUMNS = ["group", "n", "sr_1mm", "sr_2mm", "median_mtre", "p90_mtre", "converged", "levels_converged",
           "median_opt_s", "median_start_mtre"]
#: the results' own spread against their errors along the beam
SPREAD_COLUMNS = ["group", "spread_n", "median_err_along_beam_mm", "median_sd_along_beam_mm", "spread_within_1sd",
                  "spread_within_2sd"]
#: ``--counts``: the columns after the counts' refinement
COUNTS_COLUMNS = ["group", "n", "sr_1mm", "median_mtre", "counts_refined", "counts_sr_1mm", "counts_sr_2mm",
                  "counts_median_mtre", "counts_p90_mtre", "counts_median_s"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True, help="output JSON file")
    ap.add_argument("--ct", action="append", help="CT file, or 'pelvis' / 'abdomen' (default: both)")
    ap.add_argument("--families", nargs="*", default=list(DEFAULT_FAMILIES))
    ap.add_argument("--cases", type=int, default=20, help="cases per CT and family")
    ap.add_argument("--starts", nargs="*", default=["truth", "10,40"], help="truth, DEG,MM, model")
    ap.add_argument("--model", action="append", default=[], help="CT_NAME=PATH checkpoint for model starts")
    ap.add_argument("--detector", type=int, default=256, help="raw detector pixels (280 mm wide)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--levels", default=None, help="coarse-to-fine detector sizes (levels_for_sizes)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a RegistrationConfig field (JSON value), e.g. --set similarity='\"gncc\"'")
    ap.add_argument("--lm-set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a Level field (JSON value) on the Levenberg-Marquardt levels, e.g. "
                         "--lm-set fit_unsharp='[3, 9]'")
    ap.add_argument("--scatter", action="store_true", help="every dense level models scatter on the DRR "
                    "(scatter_levels; `xraypose register --scatter`)")
    ap.add_argument("--blur-domain", default="line-integral", choices=["line-integral", "intensity"],
                    help="preprocess's blur after the log (default) or before it (the order until 2026-12-02; "
                         "its cases keep the old cache folder)")
    ap.add_argument("--photon-offset", default="auto", type=photon_offset_arg,
                    help="preprocess's photon_offset: 'auto' (default since 2026-12-03) or photons (0: none, the "
                         "order until then); cases are cached per setting")
    ap.add_argument("--form-detector", type=int, default=None,
                    help="form the X-rays on this many rows (a multiple of --detector; the same field and dose per "
                         "mm²) and preprocess them to --detector rows as `xraypose register --size` does")
    ap.add_argument("--resample-domain", default="auto", choices=["auto", "line-integral", "intensity"],
                    help="with --form-detector: preprocess's resize — of the intensities before the log "
                         "('intensity'), after it ('line-integral'), or by the X-ray's photons ('auto')")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/xraypose/bench-appearance"))
    ap.add_argument("--make-only", action="store_true", help="only form and cache the cases")
    ap.add_argument("--register-only", action="store_true", help="never form cases (an older xraypose)")
    ap.add_argument("--ignore-masks", action="store_true", help="register without the preprocessing's masks "
                    "(saturated plateaus, a collimator's shadow), as this benchmark did until 2026-12-03 (stop 32); "
                    "`xraypose register` always uses them")
    ap.add_argument("--counts", action="store_true", help="refine each registration on its raw X-ray's counts "
                    "as `xraypose register --counts` does (raw families only; not a failed verdict): the rows' "
                    "counts_* entries, the groups' counts_* summaries")
    ap.add_argument("--counts-renderer", choices=("siddon", "trilinear"), default=None,
                    help="with --counts: the renderer held (default: chosen by the likelihood)")
    ap.add_argument("--counts-max-side", type=int, default=None,
                    help="with --counts: the counts summed until at most this many pixels a side (default 128)")
    ap.add_argument("--counts-supersample", type=int, default=None,
                    help="with --counts: DRR rays per counts pixel per side (default: chosen by the likelihood)")
    ap.add_argument("--hypotheses", action="store_true", help="register as `xraypose register` does: the "
                    "confidence check and, when not ok, the hypotheses (verdicts recorded)")
    ap.add_argument("--serial-hypotheses", action="store_true", help="the hypotheses one after the other on one "
                    "thread (register_xray's parallel_hypotheses=False; by default two threads with two CPUs or "
                    "more: the same results)")
    args = ap.parse_args(argv)
    counts_kw = {k: v for k, v in (("renderer", args.counts_renderer), ("max_side", args.counts_max_side),
                                   ("supersample", args.counts_supersample)) if v is not None}
    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    out = Path(args.json)
    log = lambda s: print(s, flush=True)  # noqa: E731
    kw = dict(seed=args.seed, record_trajectory=False, num_threads=args.threads)
    if args.levels:
        from xraypose.register import levels_for_sizes

        kw["levels"] = levels_for_sizes([int(x) for x in args.levels.split(",")])
    kw.update(json_sets(args.set))
    from xraypose.register.config import DEFAULT_LEVELS, scatter_levels

    if args.lm_set:
        kw["levels"] = with_lm_fields(kw.get("levels", DEFAULT_LEVELS), args.lm_set)
    if args.scatter:
        kw["levels"] = scatter_levels(kw.get("levels", DEFAULT_LEVELS))
    models = dict(m.split("=", 1) for m in args.model)
    fine = {} if args.form_detector is None else {"form_detector": args.form_detector,
                                                  "resample_domain": args.resample_domain}
    cts = args.ct or (["pelvis"] + (["abdomen"] if SHARED_ABDOMEN.exists() else []))
    # the settings as given: --levels as its sizes, --lm-set as its changes (the levels themselves are in "config")
    shown = {k: v for k, v in kw.items() if k != "levels"} | ({"levels": args.levels} if args.levels else {}) | (
        {"lm_set": args.lm_set} if args.lm_set else {}) | {"masks": not args.ignore_masks} | (
        {"scatter": True} if args.scatter else {})
    report = {**start_report(shown),
              "xraypose": str(Path(sys.modules["xraypose"].__file__).parent), "groups": {}, "cases": []}
    rows: list[dict] = []

    def save():
        groups = {}
        for key in dict.fromkeys((r["ct"], r["family"], r["start"]) for r in rows):
            groups["/".join(key)] = summarise([r for r in rows if (r["ct"], r["family"], r["start"]) == key])
        report["groups"], report["cases"] = groups, rows
        atomic_write_json(out, report)
        return groups

    for spec in cts:
        name, vol = load_ct(spec)
        log(f"{name}: {tuple(vol.shape)} voxels")
        regs: dict = {}
        init = None
        for family in args.families:
            from xraypose.errors import InputError

            try:
                cases = cached_cases(name, vol, family, args.cases, args.detector, args.seed, cache, log,
                                     make=not args.register_only, blur_domain=args.blur_domain,
                                     photon_offset=args.photon_offset, raw=args.counts, **fine)
            except InputError as e:  # e.g. "femur" on a CT without femurs
                report.setdefault("not_applicable", {})[f"{name}/{family}"] = str(e)
                log(f"  {name}/{family}: not applicable ({e})")
                continue
            if args.make_only:
                continue
            blur = cases[0]["drr_blur"] or None
            if blur not in regs:
                cfg = RegistrationConfig(**{"drr_blur": blur, **kw})
                report["config"] = cfg.to_dict()
                regs[blur] = Registrar(vol, cfg)
            for start in args.starts:
                if start == "model":
                    if name not in models:
                        log(f"  no --model {name}=PATH: model starts skipped")
                        continue
                    if init is None:
                        from xraypose.register.initializers import ModelInitializer

                        try:
                            init = ModelInitializer.from_checkpoint(models[name], vol)
                        except TypeError:  # an older xraypose
                            init = ModelInitializer.from_checkpoint(models[name])
                run_group(name, family, start, cases, regs[blur], init, vol, args.seed, log,
                          hypotheses=args.hypotheses, use_masks=not args.ignore_masks, counts=args.counts,
                          rows=rows, saved=lambda r: save(),
                          parallel_hypotheses=False if args.serial_hypotheses else None, counts_kw=counts_kw)
                save()
    if args.make_only:
        return 0
    groups = save()
    print()
    print(format_table([{"group": k, **v} for k, v in groups.items()], COLUMNS))
    if any("spread_n" in v for v in groups.values()):
        print()
        print(format_table([{"group": k, **v} for k, v in groups.items() if "spread_n" in v], SPREAD_COLUMNS))
    if args.counts:
        print()
        print(format_table([{"group": k, **v} for k, v in groups.items()], COUNTS_COLUMNS))
    print(f"\nwrote {out}  ({report['machine']['cpu']}, load at start {report['machine']['load_avg_at_start']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
