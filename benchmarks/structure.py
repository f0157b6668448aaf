"""One structure at a time on simulated X-rays: a part of a CT (a piece of its bone) registered against
X-rays of the whole CT, as ``xraypose register --structure`` does it and with variants of its settings.

The part is the CT's bone (> ``--bone-hu`` HU) within ``--radius`` mm of a point (``--at X,Y,Z``; default:
the bone voxel nearest the centroid of the CT's bone — on the abdominal CT, a vertebral body); the
X-rays are xraypose's simulator's (realistic raw detector images of the *whole* CT: soft tissue, the
other bones, noise); the truth is the CT's pose (the part does not move in it); the error is the mTRE
at 20 of the part's own bone voxels.  Each X-ray is registered as ``xraypose register --structure``
does it (:func:`xraypose.structure.prepare_ct`, the window and weights where the part projects at the
start, :func:`xraypose.structure.part_settings`), from a start ``--rot``° / ``--trans`` mm off,
with each ``--modes``:

* ``part``: :func:`xraypose.structure.part_settings` on the default schedule (what ``register
  --structure`` does);
* ``fits``: the same with the levels' fits of the body's intensity model left on (bone multiplier,
  tissue channel, monotone curve: as before 2026-12-04);
* ``part-from32``: ``part`` without the default schedule's 16-row level;
* ``part-fast``: ``part`` on the fast schedule (``--fast``: 24 and 48 rows, 8 and 4 mm);
* ``part-noshift``: ``part`` without the shift search of the first level's starts;
* ``part-steps8``: ``part`` captured once, at an eighth of the whole CT's steps (``capture_steps=(1/8,)``;
  tried 2026-12-06 as the levels' learning rates scaled directly, not kept: the simulated pelvis's
  runaways went, the real wrist's tracks lost frames; docs/registration.md);
* ``part-128``: ``part`` ending at 128 rows (the default schedule's last level; a part's ends at
  :data:`xraypose.structure.PART_LAST_ROWS` since 2026-12-06);
* ``part-1capture``: ``part`` captured once, with the whole CT's steps (a part's single view is captured
  with :data:`xraypose.structure.PART_CAPTURE_STEPS` since 2026-12-06).

``--rewindow``: a result that moved more than ``REWINDOW_MM`` from its start is registered once more
from itself, windowed and weighted there, with the fine levels only (:func:`fine_changes`) — what ``xraypose track
--structure`` does for a frame; tried for ``xraypose register --structure`` at stop 61 and not kept (docs/benchmarks.md).

    python benchmarks/structure.py --ct ../shared/data/ct/abdomen_pancreas_ct_cbct_001/Pancreas-CT-CB_001_CT.nii.gz \
        --radius 25 --cases 12 --json out.json

Prints a table (success < 1 / < 2 mm, median and p90 mTRE, median time per X-ray) and the CPU model.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

F64 = torch.float64
MODES = ("part", "fits", "part-from32", "part-fast", "part-noshift", "part-steps8", "part-128", "part-1capture")


def cpu_model() -> str:
    """The CPU's model name (``lscpu``)."""
    from benchmarks.appearance import machine

    return machine()["cpu"] or "unknown"


def part_mask(vol, radius: float | None, at=None, bone_hu: float = 200.0, seed: int = 0):
    """((I, J, K) bool, (3,) centre world mm, (20, 3) fiducials world mm): the CT's bone within ``radius``
    of ``at`` (default: the bone voxel nearest the bone's centroid), or (``radius`` None) the connected
    piece of bone (6-connected voxels > ``bone_hu``) holding the bone voxel nearest ``at``."""
    bone = vol.data > bone_hu
    idx = torch.nonzero(bone).to(F64)
    w = vol.voxel_to_world(idx)
    c = torch.as_tensor(at, dtype=F64) if at is not None else w[(w - w.mean(0)).norm(dim=1).argmin()]
    if radius is None:
        import scipy.ndimage as nd

        lab, _ = nd.label(bone.numpy())
        k = tuple(idx[(w - c).norm(dim=1).argmin()].long().tolist())
        near = torch.from_numpy(lab[tuple(idx.long().T.numpy())] == lab[k])
    else:
        near = (w - c).norm(dim=1) <= radius
    m = torch.zeros(vol.shape, dtype=torch.bool)
    sel = idx[near].long()
    m[sel[:, 0], sel[:, 1], sel[:, 2]] = True
    g = torch.Generator().manual_seed(seed)
    pts = w[near]
    fid = pts[torch.randperm(pts.shape[0], generator=g)[:20]]
    return m, c, fid


#: Near misses of a good result (``--moved``): (kind, mm or degrees).
MOVES = (("across", 3.0), ("across", 6.0), ("turn", 2.0))


def near_misses(reg, px, w, T, T0, case, fid, centre, seed: int = 0) -> list:
    """Verdicts of ``T`` (4, 4) moved by each of :data:`MOVES` — across the view's beam in a seeded
    direction, or turned about a seeded axis through ``centre`` — checked with ``reg``'s model as
    registration's own check is (start ``T0``): [{"moved", "mtre", "verdict", "p_success", "signals"}]."""
    from benchmarks.confidence import moved_pose
    from xraypose.metrics import pose_errors
    from xraypose.register.confidence import assess

    g = torch.Generator().manual_seed(seed)
    theta = float(torch.rand(1, generator=g)) * 2 * math.pi
    axis = torch.randn(3, generator=g, dtype=F64)
    out = []
    for kind, amount in MOVES:
        Q = moved_pose(T, kind, amount, theta, axis, centre)
        chk = assess(reg, px.image[None, None], px.camera, Q[None], starts=T0[None], masks=w[None, None])[0]
        out.append({"moved": f"{kind}{amount:g}", "mtre": float(pose_errors(Q, case.true_pose, fid, case.camera)["mtre"]),
                    "verdict": chk.verdict, "p_success": float(chk.p_success),
                    "signals": {k: v for k, v in chk.to_dict()["signals"].items()}})
    return out


def mode_settings(mode: str, base: dict, density: str) -> dict:
    """RegistrationConfig keywords of one of :data:`MODES`."""
    from xraypose.register import DEFAULT_LEVELS, FAST_LEVELS
    from xraypose.structure import part_settings

    if mode == "fits":
        return {**part_settings(base, density), "levels": DEFAULT_LEVELS}
    if mode == "part-from32":
        return part_settings({**base, "levels": tuple(lv for lv in DEFAULT_LEVELS if lv.size >= 32)}, density)
    if mode == "part-noshift":
        return part_settings({**base, "shift_search": None}, density)
    if mode == "part-fast":
        return part_settings({**base, "levels": FAST_LEVELS}, density)
    if mode == "part-steps8":
        return part_settings({**base, "capture_steps": (0.125,)}, density)
    if mode == "part-1capture":
        return part_settings({**base, "capture_steps": (1.0,)}, density)
    if mode == "part-128":
        from xraypose.register import DEFAULT_LEVELS

        return part_settings({**base, "levels": DEFAULT_LEVELS}, density)
    return part_settings(base, density)


def family_case(vol, maker, c, family: str, seed: int):
    """(case, preprocessed X-ray): case ``c``'s true pose, its X-ray formed by the appearance ``family``
    (benchmarks/appearance.py's :func:`form_case`); the case's ``true_pose`` is the formed X-ray's, preprocessed."""
    import dataclasses

    from benchmarks.appearance import form_case

    fx, pre, _ = form_case(vol, maker, family, c.index, seed)
    return dataclasses.replace(c, true_pose=pre.transform_pose(fx.pose), image=pre.image, camera=pre.camera), pre


def fine_changes(config) -> dict:
    """``Registrar.derive`` changes for ``--rewindow``'s second pass from a registered pose: ``config``'s fine levels
    only (those after the capture (Adam) levels), no shift search, one capture."""
    fine = tuple(lv for lv in config.levels if lv.optimizer != "adam") or tuple(config.levels[-1:])
    return {"levels": fine, "shift_search": None, "capture_steps": (1.0,)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ct", default="sample")
    ap.add_argument("--radius", type=float, default=None,
                    help="the part: bone within this many mm of --at (default: the connected piece of bone at --at)")
    ap.add_argument("--at", default=None, help="X,Y,Z world RAS mm (default: the bone voxel nearest the bone centroid)")
    ap.add_argument("--bone-hu", type=float, default=200.0)
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--allow-cut", action="store_true", help="keep X-rays whose edges cut the part")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rot", type=float, default=5.0)
    ap.add_argument("--trans", type=float, default=15.0)
    ap.add_argument("--starts", nargs="*", default=None, metavar="DEG/MM",
                    help="several starts per X-ray (each registered; e.g. 0/0 3/10 10/40), in place of --rot/--trans")
    ap.add_argument("--detector", type=int, default=256)
    ap.add_argument("--modes", nargs="+", default=["part", "fits"], choices=MODES)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--check", action="store_true", help="also the confidence check's verdict of each result")
    ap.add_argument("--moved", action="store_true",
                    help="with --check: each result below 1 mm also moved 3 and 6 mm across its beam and turned 2° "
                         "about the part's centre, and checked there (near misses: where `ok` must stop)")
    ap.add_argument("--check-model", choices=("part", "whole"), default="part",
                    help="the check's model: the part model (as register --structure uses it) or the whole CT's")
    ap.add_argument("--family", default=None,
                    help="form the X-rays by this appearance family (xraypose.appearance: e.g. diffdrr, scatter, "
                         "lowdose, polychromatic, clinical) instead of the simulator registration's model shares")
    ap.add_argument("--serial-hypotheses", action="store_true",
                    help="the hypotheses one after the other on one thread (register_xray's parallel_hypotheses=False; "
                         "by default two threads with two CPUs or more: the same results)")
    ap.add_argument("--hypotheses", action="store_true",
                    help="register as the command does by default: other hypotheses when the verdict is not ok "
                         "(needs --check; register_xray's hypotheses=True)")
    ap.add_argument("--rewindow", action="store_true",
                    help="a result that moved more than tracking.REWINDOW_MM from its start registered once more "
                         "from itself, the X-ray windowed and weighted there (what `track --structure` does)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from xraypose.camera import Camera
    from xraypose.cli.steps import window_views
    from xraypose.metrics import pose_errors
    from xraypose.preprocess import preprocess
    from xraypose.register import Registrar, RegistrationConfig
    from xraypose.register.api import register_xray
    from xraypose.register.cases import CaseMaker
    from xraypose.sampling import PoseSampler
    from xraypose.structure import prepare_ct, structure_weights
    from xraypose.volume import load_ct, load_sample_ct

    vol = load_sample_ct() if a.ct == "sample" else load_ct(a.ct)
    at = None if a.at is None else [float(x) for x in a.at.split(",")]
    mask, centre, fid = part_mask(vol, a.radius, at, a.bone_hu, a.seed)
    prep = prepare_ct(vol, density="linear", mask=mask)
    b = prep.box
    sides = [round(float((b[k] - b[0]).norm()), 1) for k in (4, 2, 1)]  # Volume.corners' order
    what = "the piece of bone at" if a.radius is None else f"bone within {a.radius:g} mm of"
    print(f"CT {a.ct} {tuple(vol.shape)}; part: {int(mask.sum())} voxels, {what} "
          f"{[round(float(x), 1) for x in centre]}, box {sides} mm; CPU {cpu_model()}, {a.threads} thread(s)",
          flush=True)
    cam = Camera(sdd=1020.0, height=a.detector, width=a.detector, delx=280.0 / a.detector)
    # poses about the part (the C-arm's isocenter at its centre): X-rays of the whole CT that see the part
    maker = CaseMaker(vol, camera=cam, collimator_px=4, seed=a.seed,
                      sampler=PoseSampler.for_volume(prep.volume, sod=612.0))
    base = {"num_threads": a.threads, "record_trajectory": False}
    regs = {mode: Registrar(prep.volume, RegistrationConfig(**mode_settings(mode, base, prep.density)),
                            isocenter=prep.isocenter) for mode in a.modes}
    if a.check_model == "part":
        from xraypose.register.confidence import part_model

        for r in regs.values():
            r.confidence_model = part_model()
    # --rewindow's second pass (the same CT's pyramid and check model, derive): the fine levels only
    again_regs = {mode: r.derive(**fine_changes(r.config)) for mode, r in regs.items()} if a.rewindow else {}
    starts = [(a.rot, a.trans)] if not a.starts else [tuple(float(x) for x in st.split("/")) for st in a.starts]
    rows = []
    i = n_xrays = 0
    while n_xrays < a.cases and i < 5 * a.cases:
        c = maker.case(i)
        i += 1
        if a.family is None:
            pre = preprocess(c.raw, c.raw_camera, crop=maker.collimator_px + 2, blur=(5, 1.0), log=True,
                             i0=float(c.raw.max()), rescale=True)
        else:  # the same true pose, its X-ray formed as the family forms it and preprocessed as it says
            c, pre = family_case(vol, maker, c, a.family, a.seed)
        foot = torch.nonzero(structure_weights(prep.volume, pre.camera, c.true_pose, prep.density, margin_mm=0.0))
        cut = len(foot) and (int(foot.min()) < 2 or int(foot[:, 0].max()) > pre.camera.height - 3
                             or int(foot[:, 1].max()) > pre.camera.width - 3)
        if not len(foot) or (cut and not a.allow_cut):
            print(f"case {i - 1}: skipped (the part is not wholly inside the X-ray at the truth)", flush=True)
            continue
        n_xrays += 1
        for rot, trans in starts:
            T0 = maker.starts(c, rot, trans)
            try:
                (px,), (w,) = window_views([pre], [T0], prep, ["x"])
            except Exception as e:  # the part outside the X-ray at this start
                print(f"case {i - 1}, start {rot:g}/{trans:g}: skipped ({e})", flush=True)
                continue
            e0 = float(pose_errors(T0, c.true_pose, fid, c.camera)["mtre"])
            row = {"case": i - 1, "start": f"{rot:g}/{trans:g}", "start_mtre": e0}
            for mode in a.modes:
                t = time.perf_counter()
                out = register_xray(prep.volume, px.image, px.camera, T0, registrar=regs[mode],
                                    hypotheses=a.hypotheses and a.check, masks=w, confidence=a.check,
                                    parallel_hypotheses=False if a.serial_hypotheses else None)[0]
                first = None
                if a.rewindow:
                    from xraypose.register.tracking import needs_rewindow

                    T1 = out.camera_to_world.to(F64)
                    if needs_rewindow(regs[mode], T0, T1):
                        first = float(pose_errors(T1, c.true_pose, fid, c.camera)["mtre"])
                        (px1,), (w1,) = window_views([pre], [T1], prep, ["x"])
                        out = register_xray(prep.volume, px1.image, px1.camera, T1, registrar=again_regs[mode],
                                            hypotheses=False, masks=w1, confidence=a.check)[0]
                dt = time.perf_counter() - t
                e = float(pose_errors(out.camera_to_world, c.true_pose, fid, c.camera)["mtre"])
                row[mode] = {"mtre": e, "seconds": dt, "first_mtre": first}
                if a.check:
                    row[mode].update(verdict=out.verdict, p_success=out.p_success, reason=out.reason,
                                     signals=(out.confidence or {}).get("signals"),
                                     kept=(out.confidence or {}).get("kept"),
                                     # every start the hypotheses tried (the given one first): its verdict, P, mTRE
                                     tried=[{"start": h.get("start"), "verdict": h.get("verdict"),
                                             "p_success": h.get("p_success"),
                                             "mtre": None if h.get("camera_to_world") is None else float(pose_errors(
                                                 torch.tensor(h["camera_to_world"], dtype=F64), c.true_pose, fid,
                                                 c.camera)["mtre"])}
                                            for h in (out.confidence or {}).get("hypotheses", [])])
                if a.check and a.moved and e < 1.0:
                    row[mode]["moved"] = near_misses(regs[mode], px, w, out.camera_to_world, T0, c, fid,
                                                     prep.isocenter, seed=i)
            rows.append(row)
            print(f"case {row['case']} from {row['start']}: start {e0:.1f} mm; " + "; ".join(
                f"{m} {row[m]['mtre']:.2f} mm {row[m]['seconds']:.1f} s {row[m].get('verdict', '')}"
                for m in a.modes), flush=True)
    table = {}
    for mode in a.modes:
        es = sorted(r[mode]["mtre"] for r in rows)
        ts = [r[mode]["seconds"] for r in rows]
        n = len(es)
        table[mode] = {"n": n, "lt1": sum(e < 1 for e in es) / n, "lt2": sum(e < 2 for e in es) / n,
                       "median_mm": statistics.median(es), "p90_mm": es[min(n - 1, math.ceil(0.9 * n) - 1)],
                       "median_s": statistics.median(ts)}
    if a.check and a.moved:
        for mode in a.modes:
            ms = [m for r in rows for m in r[mode].get("moved", [])]
            for name in sorted({m["moved"] for m in ms}):
                vs = [m["verdict"] for m in ms if m["moved"] == name]
                e = sorted(m["mtre"] for m in ms if m["moved"] == name)
                print(f"{mode}: {len(vs)} good results moved {name} (median {statistics.median(e):.1f} mm): " +
                      ", ".join(f"{v} {vs.count(v)}" for v in ("ok", "uncertain", "failed")))
    if a.check:
        for mode in a.modes:
            for lo, hi in ((0, 1), (1, 2), (2, math.inf)):
                vs = [r[mode]["verdict"] for r in rows if lo <= r[mode]["mtre"] < hi]
                print(f"{mode}: {len(vs)} results {lo}-{hi} mm: " + ", ".join(
                    f"{v} {vs.count(v)}" for v in ("ok", "uncertain", "failed")))
    print("\n| mode | n | < 1 mm | < 2 mm | median | p90 | median time |\n|---|---|---|---|---|---|---|")
    for mode, t in table.items():
        print(f"| {mode} | {t['n']} | {t['lt1']:.0%} | {t['lt2']:.0%} | {t['median_mm']:.2f} mm | "
              f"{t['p90_mm']:.2f} mm | {t['median_s']:.1f} s |")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                                      "cpu": cpu_model(), "part": {"voxels": int(mask.sum()), "centre": centre.tolist(),
                                                                   "box_sides_mm": sides},
                                      "levels": {m: [vars(lv) for lv in regs[m].config.levels] for m in a.modes},
                                      "cases": rows, "table": table}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
