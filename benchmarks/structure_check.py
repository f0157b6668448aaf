"""The confidence check of a part of a CT's registrations: fit its model on ``benchmarks/structure.py
--check`` runs, test it across CTs, and write ``xraypose/register/confidence_weights_part.json``.

A part's DRR lacks the body (soft tissue, the other bones) that its X-ray shows, so the shipped model's
appearance signals (NCC, local NCC, the difference image's structure) call every result of a part
poor: on the pelvis's bone from the truth, 10 of 10 results below 1 mm were ``failed``.  The same
signals still rank a part's results against each other, and how far a registration travelled tells a
runaway (50–200 mm) from a refinement; this fits a logistic model of P(mTRE < 2 mm) on them.

    python benchmarks/structure.py --ct sample --bone-hu 200 --cases 24 --seed 2 \\
        --starts 0/0 2/5 3/10 5/20 10/40 --modes part --allow-cut --check --json pelvis.json   # and the abdomen
    python benchmarks/structure_check.py pelvis.json abdomen.json [--write-weights] [--json OUT]

Reports, fitted on one CT and tested on the other (and the reverse): AUROC for mTRE > 2 mm, the
verdict counts by error band, the precision of ``ok``.  ``--write-weights`` fits on all runs and
writes the shipped model (thresholds :data:`THRESHOLDS`).  Needs scikit-learn (``.[bench]``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.confidence import logistic  # noqa: E402
from xraypose.register.confidence import PART_WEIGHTS_FILE, ConfidenceModel  # noqa: E402

#: The part model's signals: the shipped model's without the bone multiplier (a part holds bone only),
#: and the travel from the start (a part's runaways travel 50–200 mm).
FEATURES = ("ncc:neglog1m", "gncc:neglog1m", "local_ncc", "explained", "residual_lowfreq", "flat_mm:log",
            "gn_step_mm:log", "coverage", "foreign", "travel_mm:log")
#: ``ok`` from this P(mTRE < 2 mm), ``failed`` below the other; between: ``uncertain``.
THRESHOLDS = {"ok": 0.95, "failed": 0.2}


def records(path: Path, mode: str = "part", moved: bool = True) -> list:
    """The registrations of one ``structure.py --check`` JSON: {"signals", "mtre", "ct", "case", "start",
    "moved"}, with (``moved``) its near misses (``--moved``: good results moved 3 / 6 mm across the beam,
    turned 2°), which a registration's own results rarely are: without them the fit never learns where
    ``ok`` must stop."""
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    ct = d["args"]["ct"]
    out = []
    for r in d["cases"]:
        res = r.get(mode, {})
        if not res.get("signals"):
            continue
        out.append({"signals": res["signals"], "mtre": res["mtre"], "ct": ct, "case": r["case"],
                    "start": r.get("start"), "moved": None})
        for m in res.get("moved", []) if moved else []:
            out.append({"signals": m["signals"], "mtre": m["mtre"], "ct": ct, "case": r["case"],
                        "start": r.get("start"), "moved": m["moved"]})
    return out


#: ``ok`` only where every signal of the model lies within these quantiles of the successful training
#: results' (else ``uncertain``): a part unlike the simulated ones (the real wrist's radius) is not
#: judged by a model that never saw its kind.
GUARD_QUANTILES = (0.01, 0.99)


def guards(recs: list) -> dict:
    """{signal: [lo, hi]}: the :data:`GUARD_QUANTILES` of each model signal over the results below 2 mm."""
    import numpy as np

    out = {}
    for f in FEATURES:
        sig = f.partition(":")[0]
        x = np.array([float(r["signals"][sig]) for r in recs if r["mtre"] < 2.0 and r["signals"].get(sig) is not None])
        x = x[np.isfinite(x)]
        if x.size:
            out[sig] = [float(np.quantile(x, GUARD_QUANTILES[0])), float(np.quantile(x, GUARD_QUANTILES[1]))]
    return out


def fit(recs: list, C: float = 1.0) -> dict:
    """The weights-file dict (thresholds :data:`THRESHOLDS`) of a logistic model fitted on ``recs``
    (:func:`benchmarks.confidence.logistic`), its guards the successes' ranges (:func:`guards`)."""
    spec, used, _ = logistic(recs, FEATURES, C)
    return {**spec, "guards": guards(recs), "guard_reason": "range", "failed_below": {"coverage": 0.05},
            "thresholds": dict(THRESHOLDS),
            "fit": {"by": "benchmarks/structure_check.py", "n": len(used), "successes": sum(r["mtre"] < 2.0 for r in used),
                    "cts": sorted({r["ct"] for r in recs})}}


def evaluate(spec: dict, recs: list) -> dict:
    """AUROC (mTRE > 2 mm), verdict counts per error band, ``ok`` precision of ``spec`` on ``recs``."""
    from sklearn.metrics import roc_auc_score

    m = ConfidenceModel(spec)
    js = [m.judge(r["signals"]) for r in recs]
    y = [r["mtre"] < 2.0 for r in recs]
    bands = {"<1 mm": (0, 1), "1-2 mm": (1, 2), ">=2 mm": (2, math.inf)}
    counts = {b: {v: sum(1 for r, j in zip(recs, js) if lo <= r["mtre"] < hi and j.verdict == v)
                  for v in ("ok", "uncertain", "failed")} for b, (lo, hi) in bands.items()}
    oks = [r["mtre"] for r, j in zip(recs, js) if j.verdict == "ok"]
    auroc = roc_auc_score([not t for t in y], [-j.p_success for j in js]) if 0 < sum(y) < len(y) else math.nan
    moved = {name: {v: sum(1 for r, j in zip(recs, js) if r.get("moved") == name and j.verdict == v)
                    for v in ("ok", "uncertain", "failed")} for name in sorted({r["moved"] for r in recs if r.get("moved")})}
    return {"n": len(recs), "auroc": auroc, "verdicts": counts, "moved": moved,
            "ok_precision": (sum(e < 2 for e in oks) / len(oks)) if oks else None, "ok_above_5mm": sum(e >= 5 for e in oks)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="structure.py --check JSONs, one per CT")
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--write-weights", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)

    from xraypose.register.confidence import default_model

    per = {str(p): records(p) for p in a.runs}
    out = {"runs": list(per), "features": list(FEATURES), "thresholds": THRESHOLDS, "cross": {}, "shipped_model": {}}
    for test, recs in per.items():
        train = [r for k, v in per.items() if k != test for r in v]
        out["shipped_model"][test] = evaluate(default_model().spec, recs)
        if train:
            out["cross"][test] = evaluate(fit(train, a.C), recs)
    for name, res in (("the shipped model", out["shipped_model"]), ("the part model, fitted on the other CT", out["cross"])):
        for test, e in res.items():
            print(f"{name} on {Path(test).name}: n {e['n']}, AUROC {e['auroc']:.3f}, ok precision "
                  f"{e['ok_precision']}, ok >= 5 mm {e['ok_above_5mm']}; " +
                  "; ".join(f"{b}: " + ", ".join(f"{v} {c}" for v, c in cnt.items()) for b, cnt in e["verdicts"].items())
                  + "".join(f"; moved {m}: " + ", ".join(f"{v} {c}" for v, c in cnt.items())
                            for m, cnt in e["moved"].items()))
    if a.write_weights:
        from xraypose.io import atomic_write_json

        spec = fit([r for v in per.values() for r in v], a.C)
        atomic_write_json(PART_WEIGHTS_FILE, spec)
        out["shipped"] = evaluate(spec, [r for v in per.values() for r in v])
        print(f"wrote {PART_WEIGHTS_FILE} (n {spec['fit']['n']}; on its own data: AUROC {out['shipped']['auroc']:.3f})")
    if a.json:
        from xraypose.io import atomic_write_json

        atomic_write_json(a.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
