"""Registration benchmark: accuracy and time of test-time registration.

Cases are made from real CTs (the bundled pelvis; ../shared's abdomen when
present; or --ct): true poses around an AP view (DiffPose's distribution),
targets rendered *unlike* registration renders them (Siddon at twice the
resolution, area-averaged, physical μ model, blurred focal spot, Poisson noise,
16-bit quantisation, collimator border), then preprocessed as real X-rays
(collimator crop, 5×5 blur σ = 1, Beer–Lambert, rescale); 20 bone fiducials per
case in the field of view.  Starts:

* ``5,20`` / ``10,40``: the true pose turned by exactly 5° (10°) about a random
  axis through the isocenter and shifted by exactly 20 mm (40 mm) in a random
  direction (fixed per case and seed);
* ``model``: the trained pose regressor (``--model M``, one checkpoint per CT
  with ``--model CT_NAME=PATH``).  A model is used only with the CT it was
  trained on (:func:`xraypose.model.check_training_volume`): a bare ``--model M``
  gives model starts to the CTs it fits and none to the others (a log line says
  so); ``CT_NAME=PATH`` for another CT is an error; ``--allow-other-ct`` uses it
  anyway (a warning).

A case whose metrics are infinite (an estimate with a fiducial behind its X-ray
source: mPE/mRPE inf) is a failed case, not a crash; a case whose registration
raises an input error is recorded as failed (mTRE NaN, ``status`` "error: ...")
and the run goes on.

Also end to end on the DeepFluoro-layout fixture (``--deepfluoro``): the fixture
file is written, read back by :class:`xraypose.datasets.DeepFluoroDataset`,
registered from 5°/20 mm starts and scored at its 14 landmarks.

    python benchmarks/register.py --json OUT.json [--ct PATH ...] [--cases N] [--model M]
        [--starts 5,20 10,40] [--threads T] [--batch B] [--deepfluoro] [--cache DIR]

Writes ``{"machine", "command", "config", "summary", "groups": {name: summary},
"cases": [per-case rows]}``; ``summary`` pools the groups (``sr_1mm``,
``sr_2mm``, ``median_mtre_mm``, ``median_opt_s``, ...).  Times are wall-clock
seconds of this process; ``opt_s`` is the optimisation alone (a batch's time
divided by its size), ``init_s`` the initialiser's.  Simulated cases are cached
(``--cache``, default ``~/.cache/xraypose/bench-register``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.appearance import json_sets  # noqa: E402
from xraypose.camera import Camera  # noqa: E402
from xraypose.errors import InputError  # noqa: E402
from xraypose.io import atomic_write_json  # noqa: E402
from xraypose.metrics import format_table, summarize  # noqa: E402
from xraypose.register import FAST_LEVELS, Registrar, RegistrationConfig  # noqa: E402
from xraypose.register.api import registration_metrics  # noqa: E402
from xraypose.register.cases import CaseMaker, SyntheticCase  # noqa: E402

SHARED_ABDOMEN = ROOT.parent / "shared" / "data" / "ct" / "abdomen_pancreas_ct_cbct_001" / "Pancreas-CT-CB_001_CT.nii.gz"
F64 = torch.float64


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "load_avg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None}


def load_ct(spec: str):
    from xraypose.volume import load_sample_ct, read_volume

    if spec == "pelvis":
        return "pelvis", load_sample_ct()
    if spec == "abdomen":
        return "abdomen", read_volume(SHARED_ABDOMEN)
    name = Path(spec).name.split(".")[0]
    return name, read_volume(spec)


def cached_cases(name: str, volume, n: int, detector: int, seed: int, cache: Path, log) -> list[SyntheticCase]:
    cam = Camera(sdd=1020.0, height=detector, width=detector, delx=280.0 / detector)
    collimator = max(2, detector // 32)
    maker = None
    out = []
    folder = cache / f"{name}-d{detector}-s{seed}-blurlog"  # cases are stored preprocessed (blur after the log)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i in range(n):
        f = folder / f"case{i:04d}.pt"
        if f.exists():
            d = torch.load(f, weights_only=False)
            out.append(SyntheticCase(**d))
            continue
        if maker is None:
            maker = CaseMaker(volume, camera=cam, collimator_px=collimator, seed=seed)
        c = maker.case(i)
        tmp = f.with_suffix(".tmp")
        torch.save(c.__dict__, tmp)
        os.replace(tmp, f)
        out.append(c)
        if (i + 1) % 10 == 0:
            log(f"  {name}: {i + 1}/{n} cases simulated ({time.perf_counter() - t0:.0f} s)")
    return out


def start_pose(case: SyntheticCase, volume, kind: str, seed: int) -> torch.Tensor:
    from xraypose.register.cases import perturb_pose

    a, t = (float(x) for x in kind.split(","))
    g = torch.Generator().manual_seed(seed * 7919 + case.index * 31 + int(a * 10))
    return perturb_pose(case.true_pose, volume.get_isocenter(), a, t, g)[0]


def run_group(name, volume, cases, start, registrar, batch, seed, model_init=None, log=print) -> list[dict]:
    rows = []
    for b0 in range(0, len(cases), batch):
        chunk = cases[b0:b0 + batch]
        imgs = torch.stack([c.image for c in chunk])[:, None]
        cam = chunk[0].camera
        if any(c.camera != cam for c in chunk):
            raise SystemExit("cases of one batch must share a camera")
        t0 = time.perf_counter()
        try:
            if start == "model":
                T0 = model_init(imgs, cam)
                init_s = (time.perf_counter() - t0) / len(chunk)
            else:
                T0 = torch.stack([start_pose(c, volume, start, seed) for c in chunk])
                init_s = 0.0
            res = registrar.register(imgs, cam, T0)
        except InputError as e:  # one failed batch is recorded, not the end of a 500-case run
            for c in chunk:
                rows.append({"ct": name, "start": start, "case": c.index, "mtre": float("nan"),
                             "status": f"error: {e}", "init_s": 0.0, "opt_s": 0.0, "batch": len(chunk)})
            log(f"  {name} {start} cases {chunk[0].index}-{chunk[-1].index}: error: {e}")
            continue
        for j, c in enumerate(chunk):
            m = registration_metrics(res.poses[j], c.true_pose, c.fiducials, c.camera)
            m0 = registration_metrics(T0[j], c.true_pose, c.fiducials, c.camera)
            rows.append({"ct": name, "start": start, "case": c.index, **m,
                         **{f"start_{k}": v for k, v in m0.items() if k in ("mtre", "mpe", "rot_deg", "trans_mm")},
                         "init_s": init_s, "opt_s": res.opt_s / len(chunk), "cpu_s": res.cpu_s / len(chunk),
                         "batch": len(chunk), "iterations": int(res.iterations[j]), "status": res.status[j],
                         "similarity": float(res.similarity[j]), "bone_multiplier": float(res.bone_multiplier[j]),
                         "level_iterations": [d["iterations"] for d in res.level_stats] if len(chunk) == 1 else None})
        last = rows[-1]
        undefined = " (a fiducial behind the source: mPE inf)" if last["mpe"] == float("inf") else ""
        log(f"  {name} {start} case {last['case']:3d}: mTRE {last['start_mtre']:6.2f} -> {last['mtre']:7.3f} mm, "
            f"opt {last['opt_s']:.2f} s, {last['status']}{undefined}")
    return rows


def deepfluoro_end_to_end(registrar_config, cache: Path, n_proj: int, seed: int, log) -> list[dict]:
    """Fixture file → DeepFluoroDataset → register from 5°/20 mm → metrics at the 14 landmarks."""
    from xraypose.datasets import DeepFluoroDataset, write_deepfluoro_fixture
    from xraypose.register.cases import perturb_pose

    path = cache / f"deepfluoro-fixture-{n_proj}.h5"
    if not path.exists():
        tmp = path.with_suffix(".tmp.h5")
        write_deepfluoro_fixture(tmp, detector=256, specimens=(1, 2), n_projections=n_proj, seed=seed)
        os.replace(tmp, path)
    rows = []
    for sid in (1, 2):
        ds = DeepFluoroDataset(sid, filename=path)
        reg = Registrar(ds.volume, registrar_config)
        for i in range(len(ds)):
            img, pose = ds[i]
            cam = ds.get_camera(i)
            T = pose[0].to(F64)
            g = torch.Generator().manual_seed(seed * 7919 + sid * 1000 + i)
            T0 = perturb_pose(T, ds.volume.get_isocenter(), 5.0, 20.0, g)[0]
            res = reg.register(img, cam, T0)
            m = registration_metrics(res.poses[0], T, ds.fiducials[0], cam)
            m0 = registration_metrics(T0, T, ds.fiducials[0], cam)
            rows.append({"ct": f"deepfluoro-fixture-{sid}", "start": "5,20", "case": i, **m,
                         "start_mtre": m0["mtre"], "init_s": 0.0, "opt_s": res.opt_s, "cpu_s": res.cpu_s,
                         "batch": 1, "iterations": int(res.iterations[0]), "status": res.status[0],
                         "similarity": float(res.similarity[0]), "bone_multiplier": float(res.bone_multiplier[0]),
                         "image": list(img.shape[-2:])})
            log(f"  deepfluoro specimen {sid} image {i}: mTRE {m0['mtre']:.2f} -> {m['mtre']:.3f} mm, "
                f"opt {res.opt_s:.2f} s")
        ds.close()
    return rows


def model_for(name: str, spec: str, volume, models: dict, allow_other_ct: bool, log):
    """The ModelInitializer for this CT, or None: a bare --model only for the CT it was trained on."""
    from xraypose.register.initializers import ModelInitializer

    explicit = models.get(name) or models.get(spec)
    path = explicit or models.get("*")
    if not path:
        return None
    try:
        return ModelInitializer.from_checkpoint(path, volume, allow_other_ct=allow_other_ct)
    except InputError as e:
        if explicit:
            raise SystemExit(f"register.py: --model {name}={path}: {e}") from None
        log(f"  {name}: no model start ({e})")
        return None


KEYS = ("mtre", "mpe", "mrpe", "rot_mm", "trans_mm", "dgeo", "rot_deg", "init_s", "opt_s", "cpu_s", "iterations")
COLUMNS = ["group", "n_cases", "sr_1mm", "sr_2mm", "median_mtre_mm", "p95_mtre_mm", "median_mpe_mm",
           "median_mrpe_mm", "median_dgeo_mm", "median_init_s", "median_opt_s", "p95_opt_s", "median_cpu_s"]


def table_row(name: str, s: dict) -> dict:
    st = s["stats"]
    return {"group": name, "n_cases": s["n_cases"], "sr_1mm": s.get("sr_1mm"), "sr_2mm": s.get("sr_2mm"),
            "median_mtre_mm": s.get("median_mtre_mm"), "p95_mtre_mm": st.get("mtre", {}).get("p95"),
            "median_mpe_mm": s.get("median_mpe_mm"), "median_mrpe_mm": s.get("median_mrpe_mm"),
            "median_dgeo_mm": s.get("median_dgeo_mm"), "median_init_s": s.get("median_init_s"),
            "median_opt_s": s.get("median_opt_s"), "p95_opt_s": st.get("opt_s", {}).get("p95"),
            "median_cpu_s": st.get("cpu_s", {}).get("median")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True, help="output JSON file")
    ap.add_argument("--ct", action="append", help="CT file, or 'pelvis' / 'abdomen' (default: both)")
    ap.add_argument("--cases", type=int, default=100, help="cases per CT")
    ap.add_argument("--starts", nargs="*", default=["5,20", "10,40"], help="perturbation starts DEG,MM (none: only --model)")
    ap.add_argument("--model", action="append", default=[], help="checkpoint (or CT_NAME=PATH) for model starts; "
                    "a bare checkpoint serves only the CT it was trained on")
    ap.add_argument("--allow-other-ct", action="store_true", help="use --model with CTs it was not trained on")
    ap.add_argument("--detector", type=int, default=256, help="raw detector pixels (280 mm wide)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--batch", type=int, default=1, help="X-rays registered together")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fast", action="store_true", help="the cheap FAST_LEVELS schedule")
    ap.add_argument("--levels", default=None, help="coarse-to-fine detector sizes, e.g. 16,32,64,128 (levels_for_sizes)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a RegistrationConfig field (JSON value), e.g. --set patience=10")
    ap.add_argument("--deepfluoro", action="store_true", help="also end to end on the DeepFluoro-layout fixture")
    ap.add_argument("--deepfluoro-only", action="store_true", help="only the DeepFluoro-layout part")
    ap.add_argument("--deepfluoro-projections", type=int, default=5)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/xraypose/bench-register"))
    ap.add_argument("--summarize-only", action="store_true",
                    help="recompute the summaries and the table from the rows already in --json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    out = Path(args.json)
    log = lambda s: print(s, flush=True)  # noqa: E731

    kw = dict(drr_blur=1.0, seed=args.seed, record_trajectory=False)
    if args.levels:
        from xraypose.register import levels_for_sizes

        kw["levels"] = levels_for_sizes([int(x) for x in args.levels.split(",")])
    if args.fast:
        kw["levels"] = FAST_LEVELS
    kw.update(json_sets(args.set))  # --set FIELD=VALUE
    cfg = RegistrationConfig(**kw)
    cts = args.ct or (["pelvis"] + (["abdomen"] if SHARED_ABDOMEN.exists() else []))
    models = {}
    for m in args.model:
        k, _, v = m.rpartition("=")
        models[k or "*"] = v
    rows: list[dict] = []
    report = {"machine": machine(), "command": " ".join([sys.executable, *sys.argv]), "config": cfg.to_dict(),
              "protocol": {"detector_px": args.detector, "detector_mm": 280.0, "sdd_mm": 1020.0, "sod_mm": 612.0,
                           "simulator": "Siddon 2x, area-averaged, physical mu, blur 0.7 px, Poisson 1e5 photons, "
                                        "16-bit, collimator", "preprocessing": "crop collimator+2, 5x5 blur s=1, "
                                        "log(I0/I), rescale [0,1]", "fiducials": "20 on bone (250-2000 HU) in view",
                           "starts": args.starts + (["model"] if models else [])}}

    def save():
        groups = {}
        for key in dict.fromkeys((r["ct"], r["start"]) for r in rows):
            groups[f"{key[0]}/{key[1]}"] = summarize([r for r in rows if (r["ct"], r["start"]) == key], keys=KEYS)
        report["groups"] = groups
        report["summary"] = summarize(rows, keys=KEYS) if rows else {}
        report["cases"] = rows
        atomic_write_json(out, report)
        return groups

    if args.summarize_only:
        old = json.loads(out.read_text())
        report.update({k: v for k, v in old.items() if k not in ("groups", "summary", "cases")})
        rows.extend(old["cases"])
    elif not args.deepfluoro_only:
        for spec in cts:
            name, vol = load_ct(spec)
            log(f"{name}: {tuple(vol.shape)} voxels, {[round(float(s), 3) for s in vol.spacing]} mm")
            cases = cached_cases(name, vol, args.cases, args.detector, args.seed, cache, log)
            registrar = Registrar(vol, cfg)
            starts = list(args.starts)
            model_init = model_for(name, spec, vol, models, args.allow_other_ct, log)
            if model_init is not None:
                starts.append("model")
            for start in starts:
                init = model_init if start == "model" else None
                rows.extend(run_group(name, vol, cases, start, registrar, args.batch, args.seed, init, log))
                save()
    if (args.deepfluoro or args.deepfluoro_only) and not args.summarize_only:
        rows.extend(deepfluoro_end_to_end(cfg, cache, args.deepfluoro_projections, args.seed, log))
    groups = save()
    table = [table_row(k, v) for k, v in groups.items()] + [table_row("ALL", report["summary"])]
    print()
    print(format_table(table, COLUMNS))
    print(f"\nwrote {out}  (machine: {report['machine']['cpus']} CPUs, {report['machine']['threads']} threads, "
          f"load at start {report['machine']['load_avg_at_start']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
