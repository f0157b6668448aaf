"""Draw docs/img/conventions.png: the world (CT RAS) frame, the camera frame and the detector.

Run: python scripts/conventions_figure.py [-o docs/img/conventions.png]
Everything drawn comes from the library's own functions (carm_pose, Camera.backproject),
so the picture shows what the code does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from xraypose.camera import Camera, carm_pose  # noqa: E402


def draw(out: Path) -> None:
    iso = torch.zeros(3, dtype=torch.float64)
    cam = Camera(sdd=1000.0, height=300, width=400, delx=1.0, reverse_x_axis=False)
    T = carm_pose(25.0, 0.0, sod=600.0, isocenter=iso)
    src = T[:3, 3]
    corners_uv = torch.tensor([[0.0, 0.0], [399.0, 0.0], [399.0, 299.0], [0.0, 299.0]], dtype=torch.float64)
    det = cam.backproject(corners_uv, T)
    centre = cam.backproject(torch.tensor([[199.5, 149.5]], dtype=torch.float64), T)[0]

    fig = plt.figure(figsize=(11, 5.2))
    ax = fig.add_subplot(1, 2, 1, projection="3d")
    # CT box around the isocenter
    b = torch.tensor([120.0, 90.0, 160.0])
    for sx in (-1, 1):
        for sy in (-1, 1):
            ax.plot([sx * b[0]] * 2, [sy * b[1]] * 2, [-b[2], b[2]], color="0.6", lw=0.8)
            ax.plot([sx * b[0]] * 2, [-b[1], b[1]], [sy * b[2]] * 2, color="0.6", lw=0.8)
            ax.plot([-b[0], b[0]], [sx * b[1]] * 2, [sy * b[2]] * 2, color="0.6", lw=0.8)
    L = 200
    for v, name, c in ((torch.tensor([1.0, 0, 0]), "+x Right", "tab:red"), (torch.tensor([0, 1.0, 0]), "+y Anterior", "tab:green"),
                       (torch.tensor([0, 0, 1.0]), "+z Superior", "tab:blue")):
        ax.quiver(0, 0, 0, *(L * v).tolist(), color=c, lw=2, arrow_length_ratio=0.1)
        ax.text(*(1.1 * L * v).tolist(), name, color=c, fontsize=8)
    d = torch.cat([det, det[:1]])
    ax.plot(d[:, 0], d[:, 1], d[:, 2], color="k", lw=1.5)
    ax.scatter(*det[0].tolist(), color="k", s=20)
    ax.text(*det[0].tolist(), " pixel (0,0)", fontsize=8)
    ax.scatter(*src.tolist(), color="orange", s=60)
    ax.text(*src.tolist(), "  X-ray source\n  (camera origin)", fontsize=8)
    ax.plot(*torch.stack([src, centre]).T.tolist(), color="orange", ls="--", lw=1)
    R = T[:3, :3]
    for i, (name, c) in enumerate((("+x cam (u, columns)", "tab:purple"), ("+y cam (v, rows)", "tab:brown"), ("+z cam (to detector)", "tab:orange"))):
        ax.quiver(*src.tolist(), *(150 * R[:, i]).tolist(), color=c, lw=2, arrow_length_ratio=0.15)
        ax.text(*(src + 170 * R[:, i]).tolist(), name, color=c, fontsize=8)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.set_zlabel("z (mm)")
    ax.set_title("World = CT RAS mm; camera_to_world of a 25° LAO view", fontsize=10)
    ax.view_init(elev=20, azim=-145)
    lim = 700
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_zlim(-lim, lim)

    ax2 = fig.add_subplot(1, 2, 2)
    ax2.set_xlim(-0.5, 399.5)
    ax2.set_ylim(299.5, -0.5)
    ax2.set_aspect("equal")
    ax2.add_patch(plt.Rectangle((-0.5, -0.5), 400, 300, fill=False))
    ax2.annotate("", xy=(120, 12), xytext=(5, 12), arrowprops=dict(arrowstyle="->", color="tab:purple", lw=2))
    ax2.text(125, 15, "+u (column) = +x cam", color="tab:purple", fontsize=9)
    ax2.annotate("", xy=(12, 120), xytext=(12, 5), arrowprops=dict(arrowstyle="->", color="tab:brown", lw=2))
    ax2.text(16, 130, "+v (row) = +y cam", color="tab:brown", fontsize=9)
    ax2.plot(199.5, 149.5, "x", color="orange", ms=10)
    ax2.text(205, 145, "principal point\n(cu, cv) = ((W−1)/2 + x0/Δx,\n (H−1)/2 + y0/Δy)", fontsize=8)
    ax2.text(3, 290, "pixel centres at integers; (u, v) = (column, row)\n"
             "K = [[sdd/Δx, 0, cu], [0, sdd/Δy, cv], [0, 0, 1]]\n"
             "x_pix ~ K · Rᵀ (X − t),  pose = camera_to_world = [R t; 0 1]", fontsize=8, va="bottom")
    ax2.set_title("Detector seen from the source (reverse_x_axis=False)", fontsize=10)
    ax2.set_xlabel("u (columns)")
    ax2.set_ylabel("v (rows)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-o", "--output", type=Path, default=Path(__file__).resolve().parents[1] / "docs/img/conventions.png")
    draw(p.parse_args().output)
