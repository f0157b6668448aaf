"""Which reading of the MayaCam 2.0 calibration is right?  Rays through the same bead must meet.

The Autoscoper wrist trial (../shared/data/autoscoper_wrist) shows tantalum beads (small dark
discs, about 5 pixels across) in both cameras' radiographs.  For each frame this script

1. finds the beads in each view: local maxima of the smaller Hessian eigenvalue of the image
   smoothed at σ = 1.5 px (a dark disc is a minimum along every direction; a bone edge only
   across itself), stronger than 8× the image's robust noise level, whose half-maximum blob is
   small and isolated (the lead letters and bone edges are not);
2. for every reading of the file's ``rotation`` R and ``translation`` t tried (R or Rᵀ as the
   camera's axes, the source at −Rᵀt, −Rt, t or −t, a camera looking down +z or −z as Maya's
   does, image rows counted from the top or from the bottom), casts a ray from each view's
   source through each bead and measures, for every bead of camera 1, the distance to the
   nearest ray of camera 2 (no matching needed), and the mutual nearest pairs;
3. prints, for the reading xraypose uses (:mod:`xraypose.calibration`: world → camera
   ``X_cam = R·X + t``, OpenCV axes), every matched bead: its pixels in both views, the
   closest-approach distance of the two rays (mm), how far from each source they meet, and the
   next-nearest ray (a pair is ambiguous when beads lie side by side along an epipolar line);
4. fits the bead clusters triangulated in one frame rigidly onto those of another: beads in one
   bone keep their layout, so small residuals say the triangulation is consistent and metric.

Run:  python scripts/wrist_calibration_check.py [--data ../shared/data/autoscoper_wrist] [--json out.json]
Needs scipy (pip install -e ".[test]").  Takes a few seconds per frame.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

from xraypose.calibration import read_mayacam, read_mayacam_camera, triangulate

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "autoscoper_wrist"
CAMERAS = ("cam01", "cam02")

#: Bead detector settings (pixels of the 1760 × 1760 radiographs).
HESSIAN_SIGMA_PX = 1.5
STRENGTH_NOISE = 8.0
MAX_BLOB_AREA_PX = 60
#: A bead pair is unambiguous when no other ray passes within this of either bead's ray (mm).
AMBIGUOUS_MM = 0.5


def detect_beads(img: np.ndarray) -> np.ndarray:
    """(N, 3): bead centres (u, v) in pixels and strength (multiples of the noise), strongest first."""
    from scipy import ndimage as ndi

    img = np.asarray(img, dtype=np.float64)
    s = HESSIAN_SIGMA_PX
    field = ndi.binary_erosion(img > 30, iterations=20)  # inside the image-intensifier circle
    hxx = ndi.gaussian_filter(img, s, order=(0, 2))
    hyy = ndi.gaussian_filter(img, s, order=(2, 0))
    hxy = ndi.gaussian_filter(img, s, order=(1, 1))
    lmin = ((hxx + hyy) / 2 - np.sqrt((hxx - hyy) ** 2 / 4 + hxy ** 2)) * s * s
    lmin[~field] = 0.0
    r = lmin[field & (img < 250)]  # noise of the unsaturated field
    noise = max(1.4826 * float(np.median(np.abs(r - np.median(r)))), 0.05)
    peaks = (lmin == ndi.maximum_filter(lmin, size=7)) & (lmin > STRENGTH_NOISE * noise)
    dog = ndi.gaussian_filter(img, 4 * s) - ndi.gaussian_filter(img, s / 1.5)  # dark blob → positive
    out = []
    h = 7
    for y, x in zip(*np.nonzero(peaks)):
        if not (h <= y < img.shape[0] - h and h <= x < img.shape[1] - h):
            continue
        w = dog[y - h: y + h + 1, x - h: x + h + 1]
        lab, _ = ndi.label(w > 0.5 * dog[y, x])
        m = lab == lab[h, h]
        if m.sum() > MAX_BLOB_AREA_PX or m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any():
            continue  # large or elongated: a letter or an edge, not a bead
        cy, cx = ndi.center_of_mass(np.where(m, w, 0.0))
        out.append((x - h + cx, y - h + cy, lmin[y, x] / noise))
    out = np.array(out, dtype=np.float64).reshape(-1, 3)
    return out[np.argsort(-out[:, 2])]


# --------------------------------------------------------------------------
# Readings of (R, t)
# --------------------------------------------------------------------------

ROTATIONS = ("R^T", "R")  # which matrix holds the camera axes (as columns) in world
SOURCES = ("-R^T t", "-R t", "t", "-t")  # where the source is
LOOKS = ("+z", "-z (Maya)")  # the camera looks down +z (OpenCV) or -z with +y up (Maya)
ROWS = ("top", "bottom")  # image rows counted from the top (stored order) or from the bottom
XRAYPOSE_READING = ("R^T", "-R^T t", "+z", "top")


def readings():
    return list(itertools.product(ROTATIONS, SOURCES, LOOKS, ROWS))


def rays(uv: np.ndarray, cal, reading, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Source (3,) and unit directions (N, 3) of the rays through pixels ``uv`` under ``reading``."""
    rot, src, look, rows = reading
    R, t, K = cal.rotation, cal.translation, cal.K
    axes = R.T if rot == "R^T" else R
    origin = {"-R^T t": -R.T @ t, "-R t": -R @ t, "t": t, "-t": -t}[src]
    uv = np.array(uv, dtype=np.float64)
    if rows == "bottom":
        uv[:, 1] = height - 1 - uv[:, 1]
    d = np.c_[uv, np.ones(len(uv))] @ np.linalg.inv(K).T
    if look != "+z":
        d = d @ np.diag([1.0, -1.0, -1.0])
    d = d @ axes.T
    return origin, d / np.linalg.norm(d, axis=1, keepdims=True)


def line_distances(o1, d1, o2, d2):
    """(N1, N2) closest-approach distances between all lines, and the line parameters (s, t)."""
    w = o1 - o2
    b = d1 @ d2.T
    dd = (d1 @ w)[:, None]
    e = (d2 @ w)[None, :]
    den = 1.0 - b * b
    s = (b * e - dd) / den
    t = (e - b * dd) / den
    p1 = o1 + s[..., None] * d1[:, None]
    p2 = o2 + t[..., None] * d2[None]
    return np.linalg.norm(p1 - p2, axis=-1), s, t


def evaluate(beads1, beads2, cals, reading, height) -> dict:
    o1, d1 = rays(beads1[:, :2], cals[0], reading, height)
    o2, d2 = rays(beads2[:, :2], cals[1], reading, height)
    dist, s, t = line_distances(o1, d1, o2, d2)
    nearest = dist.min(axis=1)
    j = dist.argmin(axis=1)
    i2 = dist.argmin(axis=0)
    pairs = [(i, int(j[i])) for i in range(len(beads1)) if i2[j[i]] == i]
    md = np.array([dist[i, k] for i, k in pairs])
    # the next-nearest ray to either bead's ray: beads side by side along an epipolar line make a pairing ambiguous
    second = [float(min(np.partition(dist[i], 1)[1] if dist.shape[1] > 1 else np.inf,
                        np.partition(dist[:, k], 1)[1] if dist.shape[0] > 1 else np.inf)) for i, k in pairs]
    front = np.array([s[i, k] > 0 and t[i, k] > 0 for i, k in pairs])
    return {"reading": list(reading), "median_nearest_mm": float(np.median(nearest)),
            "pairs": len(pairs), "pairs_under_1mm": int((md < 1).sum()),
            "pairs_in_front": int(front.sum()), "median_pair_mm": float(np.median(md)) if len(md) else None,
            "pair_index": pairs, "pair_second_mm": second}


def load_frame(data: Path, cam: str, frame: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(data / "radiographs" / cam / f"xr_rad_uln_{cam}_UND.{frame}.tif"))


def frames_of(data: Path) -> list[str]:
    names = sorted(p.name.split(".")[-2] for p in (data / "radiographs" / CAMERAS[0]).glob("*.tif"))
    return names


def check_frame(data: Path, frame: str) -> dict:
    """Everything measured on one frame (see the module docstring)."""
    cals = [read_mayacam(data / "calibration" / f"xr_calib_wrist_{c}.txt") for c in CAMERAS]
    beads = [detect_beads(load_frame(data, c, frame)) for c in CAMERAS]
    height = cals[0].height
    table = sorted((evaluate(beads[0], beads[1], cals, r, height) for r in readings()),
                   key=lambda r: r["median_nearest_mm"])
    ours = next(r for r in table if tuple(r["reading"]) == XRAYPOSE_READING)
    # the matched beads through the library itself (xraypose.calibration.triangulate)
    cams = [read_mayacam_camera(data / "calibration" / f"xr_calib_wrist_{c}.txt") for c in CAMERAS]
    idx = ours["pair_index"]
    uv1 = torch.tensor(beads[0][[i for i, _ in idx], :2])
    uv2 = torch.tensor(beads[1][[k for _, k in idx], :2])
    tri = triangulate(uv1, cams[0][0], cams[0][1], uv2, cams[1][0], cams[1][1])
    beads_out = [{"uv_cam01": [round(float(a), 2) for a in uv1[n]], "uv_cam02": [round(float(a), 2) for a in uv2[n]],
                  "distance_mm": float(tri["distance"][n]), "point_mm": [round(float(a), 3) for a in tri["point"][n]],
                  "depth_cam01_mm": float(tri["depth1"][n]), "depth_cam02_mm": float(tri["depth2"][n]),
                  "next_ray_mm": ours["pair_second_mm"][n],
                  "unambiguous": ours["pair_second_mm"][n] >= AMBIGUOUS_MM}
                 for n in range(len(idx))]
    d = tri["distance"].numpy()
    du = np.array([b["distance_mm"] for b in beads_out if b["unambiguous"]])
    return {"frame": frame, "beads_detected": [len(b) for b in beads], "beads": beads_out,
            "median_distance_mm": float(np.median(d)) if len(d) else None,
            "max_distance_mm": float(d.max()) if len(d) else None,
            "unambiguous": len(du), "median_unambiguous_mm": float(np.median(du)) if len(du) else None,
            "readings": [{k: v for k, v in r.items() if k != "pair_index"} for r in table]}


def clusters(points: np.ndarray, link_mm: float = 12.0) -> list[list[int]]:
    """Beads grouped by single linkage (closer than ``link_mm``): beads of one bone, roughly."""
    n = len(points)
    label = list(range(n))
    for i in range(n):
        for j in range(i + 1, n):
            if np.linalg.norm(points[i] - points[j]) < link_mm:
                a, b = label[i], label[j]
                label = [a if x == b else x for x in label]
    groups: dict = {}
    for i, g in enumerate(label):
        groups.setdefault(g, []).append(i)
    return [g for g in groups.values() if len(g) >= 3]


def rigid_rms(a: np.ndarray, b: np.ndarray) -> float:
    """RMS residual (mm) of the best rigid fit of points ``a`` onto ``b`` (same order; Kabsch)."""
    ca, cb = a - a.mean(0), b - b.mean(0)
    U, _, Vt = np.linalg.svd(ca.T @ cb)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = (U @ D @ Vt).T
    return float(np.sqrt(((ca @ R.T - cb) ** 2).sum(1).mean()))


def rigid_consistency(results: list[dict]) -> list[dict]:
    """Bead clusters triangulated in two frames, fitted rigidly onto each other (every assignment of
    the smaller cluster's beads to the larger's tried): a rigid bone keeps its beads' layout, so the
    residual is small only if the calibration triangulates consistently (and at the right scale)."""
    pts = {r["frame"]: np.array([b["point_mm"] for b in r["beads"]]) for r in results}
    out = []
    frames = list(pts)
    for f, g in itertools.combinations(frames, 2):
        for ca in clusters(pts[f]):
            for cb in clusters(pts[g]):
                small, big, fs, fb = (ca, cb, f, g) if len(ca) <= len(cb) else (cb, ca, g, f)
                if len(big) > 7:
                    continue
                best = min(rigid_rms(pts[fs][small], pts[fb][list(perm)])
                           for perm in itertools.permutations(big, len(small)))
                out.append({"frames": [fs, fb], "beads": len(small), "rms_mm": best})
    return sorted(out, key=lambda c: c["rms_mm"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the autoscoper_wrist folder")
    ap.add_argument("--json", type=Path, help="also write every number to this JSON file")
    args = ap.parse_args(argv)
    if not (args.data / "calibration").is_dir():
        print(f"no wrist data at {args.data} (pass --data)", file=sys.stderr)
        return 2
    results = []
    for frame in frames_of(args.data):
        r = check_frame(args.data, frame)
        results.append(r)
        print(f"\nframe {frame}: beads found {r['beads_detected'][0]} (cam01), {r['beads_detected'][1]} (cam02); "
              f"matched {len(r['beads'])}")
        print("  xraypose's reading (X_cam = R·X + t): rays through each matched bead")
        print(f"  {'cam01 (u, v) px':>20} {'cam02 (u, v) px':>20} {'gap mm':>8} {'from src1':>10} {'from src2':>10} "
              f"{'next ray':>9}")
        for b in r["beads"]:
            print(f"  {str(tuple(b['uv_cam01'])):>20} {str(tuple(b['uv_cam02'])):>20} {b['distance_mm']:8.3f} "
                  f"{b['depth_cam01_mm']:10.1f} {b['depth_cam02_mm']:10.1f} {b['next_ray_mm']:9.2f}"
                  f"{'' if b['unambiguous'] else '  (ambiguous)'}")
        print(f"  median {r['median_distance_mm']:.3f} mm, max {r['max_distance_mm']:.3f} mm, {len(r['beads'])} beads; "
              f"{r['unambiguous']} unambiguous (no other ray within {AMBIGUOUS_MM} mm): median "
              f"{r['median_unambiguous_mm']:.3f} mm")
        print("  every reading (sorted): median distance from a cam01 bead's ray to the nearest cam02 ray; "
              "mutual pairs (< 1 mm, in front of both sources)")
        for rd in r["readings"]:
            mark = "  <- xraypose" if tuple(rd["reading"]) == XRAYPOSE_READING else ""
            axes, src, look, rows = rd["reading"]
            print(f"    axes {axes:>3}, source {src:>6}, looks {look:>10}, rows from {rows:>6}: "
                  f"{rd['median_nearest_mm']:8.3f} mm; pairs {rd['pairs']:2d} ({rd['pairs_under_1mm']:2d} < 1 mm, "
                  f"{rd['pairs_in_front']:2d} in front){mark}")
    allb = np.array([b["distance_mm"] for r in results for b in r["beads"]])
    unb = np.array([b["distance_mm"] for r in results for b in r["beads"] if b["unambiguous"]])
    print(f"\nall frames, xraypose's reading: {len(allb)} bead pairs, median {np.median(allb):.3f} mm, "
          f"max {allb.max():.3f} mm; {len(unb)} unambiguous pairs, median {np.median(unb):.3f} mm, "
          f"max {unb.max():.3f} mm")
    rigid = rigid_consistency(results)
    print("bead clusters (>= 3 beads closer than 12 mm) of two frames fitted rigidly onto each other, best first "
          "(the same cluster on one bone fits within a few tenths of a mm; different clusters do not):")
    for c in rigid[:8]:
        print(f"  frames {c['frames'][0]} and {c['frames'][1]}: {c['beads']} beads, RMS residual {c['rms_mm']:.3f} mm")
    if args.json:
        args.json.write_text(json.dumps({"frames": results, "rigid_clusters": rigid, "all_pairs": len(allb),
                                         "unambiguous_pairs": len(unb), "median_unambiguous_mm": float(np.median(unb)),
                                         "median_distance_mm": float(np.median(allb)),
                                         "max_distance_mm": float(allb.max())}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
