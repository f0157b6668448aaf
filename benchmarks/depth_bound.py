"""How well can one low-dose frame fix the pose at all?  The Cramér–Rao bound of the tracking frames.

For frames of the tracking benchmark's trajectory (`benchmarks/tracking.py`: same CT, seed, detector,
family "lowdose"), the Fisher information of the six pose parameters is computed from the *exact*
formation model of those frames — Siddon line integrals of the physical μ at 2×, exp, area-averaged
to the detector's pixels, the family's Gaussian detector blur on the intensities, Poisson counts with
the frame's own photons per unattenuated pixel — over the pixels preprocessing keeps (inside the crop):

    F = N0 · Σ_i ∂t_i/∂θ ∂t_i/∂θᵀ / t_i        (t_i: pixel i's mean transmission)

θ: translations along the camera's axes (mm; z along the beam) and rotations about the camera's
axes through the fiducials' centroid (radians), so the bound's z variance is the variance of the
centroid's depth — what ``tracking.py``'s ``depth_error`` measures.  Derivatives are central
differences of the float64 renderer.  ``F⁻¹`` bounds the covariance of any unbiased pose estimate
from that one frame, however it is computed (registration included, which does not even know the
physics); sampling errors from N(0, F⁻¹) gives the mTRE that an *efficient* estimator would have,
and its share of frames below 1 mm.

With ``--tracking-json`` (a tracking.py run on the same CT/seed/detector) the registration's own
per-frame errors (registration alone, before the motion model) are printed beside the bound.

    python benchmarks/depth_bound.py --json OUT.json [--ct pelvis] [--seed 1] [--every 5]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

F64 = torch.float64


def pose_motion(T: torch.Tensor, centre: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The camera pose (4, 4) that sees the CT moved by ``theta`` (6,): translation (mm) along the
    camera axes of ``T`` and rotation (rad) about those axes through ``centre`` (3,).  The axes are
    docs/conventions.md's camera frame: +z along the principal ray, toward the detector, so
    ``theta[2] > 0`` moves the CT away from the source — and, taken as an estimate of ``T``, the
    pose has ``tracking.depth_error`` = −``theta[2]`` (it puts the CT that much toward the source)."""
    from xraypose.geometry import make_transform, so3_exp

    Rc = T[:3, :3]
    R = Rc @ so3_exp(theta[3:]) @ Rc.T
    A = make_transform(R, centre - R @ centre + Rc @ theta[:3])
    return torch.linalg.inv(A) @ T


class ExactFrames:
    """The tracking benchmark's low-dose frames (``tracking.py``'s trajectory, formation and fiducials)
    of CT ``vol`` for ``seed`` on a ``detector``² detector, and their exact formation model."""

    def __init__(self, vol, seed: int, n_frames: int, detector: int = 128):
        from tracking import benchmark_trajectory

        from xraypose.appearance.families import _physical_mu

        self.vol, self.seed, self.D = vol, seed, detector
        self.camera, self.truth = benchmark_trajectory(vol, seed, n_frames, detector)
        self.mu, self.affine = _physical_mu(vol).to(F64), vol.affine.to(F64)
        self.fine = self.camera.resize(2 * detector, 2 * detector)
        self._fiducials = None

    def form(self, f: int, **params):
        """Frame ``f`` as ``tracking.py`` forms it (its generator, the family "lowdose"): a FormedXray."""
        from xraypose.appearance import form_xray

        return form_xray(self.vol, self.camera, self.truth[f], family="lowdose",
                         generator=torch.Generator().manual_seed(self.seed * 7 + f), **params)

    def transmission(self, T: torch.Tensor, blur_px: float) -> torch.Tensor:
        """(D, D) float64 mean transmission at camera pose ``T``: Siddon line integrals of the physical
        μ at 2×, exp, area-averaged, the detector's ``blur_px`` on the intensities (the family's chain)."""
        from xraypose.appearance import detector as det
        from xraypose.render.core import render

        with torch.no_grad():
            L = render(self.mu, self.affine, self.fine, T[None], renderer="siddon", backend="reference")[0, 0]
        return det.gaussian_blur(det.area_average(torch.exp(-L.to(F64)), 2), blur_px)

    def fiducials(self) -> torch.Tensor:
        """(20, 3) float64 ``tracking.py``'s fiducials (chosen on frame 0's preprocessed view)."""
        if self._fiducials is None:
            from xraypose.fiducials import bone_points, select_fiducials
            from xraypose.preprocess import preprocess

            fx = self.form(0)
            pre = preprocess(fx.raw, fx.camera, **fx.preprocess)
            self._fiducials = select_fiducials(bone_points(self.vol), n=20, seed=self.seed, camera=pre.camera,
                                               poses=pre.transform_pose(fx.pose), margin_px=2).to(F64)
        return self._fiducials

    def kept(self, crop: int) -> torch.Tensor:
        """(D, D) bool: the pixels preprocessing keeps inside a ``crop``-pixel border."""
        keep = torch.zeros(self.D, self.D, dtype=torch.bool)
        keep[crop:self.D - crop, crop:self.D - crop] = True
        return keep


def fisher(transmission, T: torch.Tensor, centre: torch.Tensor, photons: float, keep, h=(0.05, 0.0005)):
    """(6, 6) Fisher information of ``theta`` (``pose_motion``) at 0 for Poisson counts of mean
    ``photons · transmission(pose)`` over the pixels ``keep`` (bool, H×W)."""
    t0 = transmission(T)[keep]
    grads = []
    for k in range(6):
        step = h[0] if k < 3 else h[1]
        e = torch.zeros(6, dtype=F64)
        e[k] = step
        d = (transmission(pose_motion(T, centre, e)) - transmission(pose_motion(T, centre, -e)))[keep] / (2 * step)
        grads.append(d)
    G = torch.stack(grads)  # (6, M)
    return photons * (G / t0.clamp_min(1e-300)) @ G.T


def efficient_errors(cov: torch.Tensor, q: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """mTRE (n,) of poses drawn from N(0, cov) over fiducials at ``q`` (K, 3) (camera axes, from the
    rotation centre): the linearised displacement ω × q + τ."""
    Lc = torch.linalg.cholesky(cov)
    d = torch.randn(n, 6, dtype=F64, generator=generator) @ Lc.T
    disp = torch.cross(d[:, None, 3:].expand(-1, len(q), -1), q[None].expand(n, -1, -1), dim=-1) + d[:, None, :3]
    return disp.norm(dim=-1).mean(-1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--ct", default="pelvis")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--every", type=int, default=5, help="bound every N-th frame")
    ap.add_argument("--detector", type=int, default=128)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--tracking-json", default=None, help="a tracking.py result to compare with")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from appearance import load_ct, start_report, write_report

    report = start_report(vars(args))
    name, vol = load_ct(args.ct)
    frames = ExactFrames(vol, args.seed, args.frames, args.detector)
    fid = frames.fiducials()
    tracked = None
    if args.tracking_json:
        tracked = {r["frame"]: r for r in json.loads(Path(args.tracking_json).read_text())["frames"]}

    rows, t_start = [], time.perf_counter()
    for f in range(0, args.frames, args.every):
        fx = frames.form(f)  # the frame as tracking.py forms it: the draw of its photons, its blur, its crop
        photons, blur = float(fx.info["photons"]), float(fx.info["blur_px"])
        keep = frames.kept(int(fx.preprocess["crop"]))
        T = fx.pose.to(F64)
        centre = fid.mean(0)
        Fi = fisher(lambda P: frames.transmission(P, blur), T, centre, photons, keep)
        cov = torch.linalg.inv(Fi)
        q = (fid - centre) @ T[:3, :3]  # fiducials in camera axes, from the centre
        m = efficient_errors(cov, q, args.samples, torch.Generator().manual_seed(f))
        row = {"frame": f, "photons": photons, "blur_px": blur,
               "sd_depth_mm": float(cov[2, 2].sqrt()), "sd_lateral_mm": [float(cov[0, 0].sqrt()), float(cov[1, 1].sqrt())],
               "sd_rotation_deg": [math.degrees(float(cov[k, k].sqrt())) for k in (3, 4, 5)],
               "efficient_median_mtre_mm": float(m.median()), "efficient_share_below_1mm": float((m < 1).double().mean())}
        if tracked is not None and f in tracked:
            row["registered_mtre_mm"] = tracked[f]["mtre_registered"]
            row["registered_depth_error_mm"] = tracked[f]["depth_error_registered_mm"]
        rows.append(row)
        extra = (f", registration alone {row['registered_mtre_mm']:.2f} mm (depth {row['registered_depth_error_mm']:+.2f})"
                 if "registered_mtre_mm" in row else "")
        print(f"frame {f:3d}: {photons:6.0f} photons, bound sd depth {row['sd_depth_mm']:.2f} mm, lateral "
              f"{row['sd_lateral_mm'][0]:.3f}/{row['sd_lateral_mm'][1]:.3f} mm; efficient mTRE median "
              f"{row['efficient_median_mtre_mm']:.2f} mm, {100 * row['efficient_share_below_1mm']:.0f} % < 1 mm{extra}",
              flush=True)
    sd = torch.tensor([r["sd_depth_mm"] for r in rows])
    share = torch.tensor([r["efficient_share_below_1mm"] for r in rows])
    summary = {"frames_bounded": len(rows), "median_sd_depth_mm": float(sd.median()),
               "efficient_share_below_1mm": float(share.mean()),
               "efficient_median_mtre_mm": float(torch.tensor([r["efficient_median_mtre_mm"] for r in rows]).median())}
    if tracked is not None:
        reg = [r for r in rows if "registered_mtre_mm" in r]
        e = torch.tensor([r["registered_mtre_mm"] for r in reg])
        dz = torch.tensor([r["registered_depth_error_mm"] for r in reg])
        summary.update(registered_share_below_1mm=float((e < 1).double().mean()),
                       registered_rms_depth_mm=float(dz.pow(2).mean().sqrt()),
                       bound_rms_depth_mm=float(torch.tensor([r["sd_depth_mm"] for r in reg]).pow(2).mean().sqrt()))
    report.update(summary=summary, rows=rows, seconds=time.perf_counter() - t_start)
    write_report(args.json, report, [f"{k:32s} {v}" for k, v in summary.items()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
