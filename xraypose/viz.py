"""Pictures: DRR beside the X-ray, edge overlays, checkerboards, fiducials, GIFs, curves, a 3D scene.

Every function takes tensors or arrays ((H, W) images, (N, 2) pixel (u, v)
points) and writes a PNG/GIF atomically, returning the path.  Images are shown
as stored: row 0 at the top, column 0 at the left (docs/conventions.md).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xraypose.io import atomic_write_bytes  # noqa: E402

if TYPE_CHECKING:
    from xraypose.volume import Volume

__all__ = [
    "normalise", "edges", "checkerboard", "save_comparison", "save_overlay", "save_fiducials", "save_gif",
    "save_curves", "save_scene",
]


def _np(img) -> np.ndarray:
    if hasattr(img, "detach"):
        img = img.detach().cpu().numpy()
    return np.squeeze(np.asarray(img, dtype=np.float64))


def normalise(img, mask=None) -> np.ndarray:
    """Min–max to [0, 1] (a constant image gives zeros).

    With ``mask`` ((H, W), nonzero = a pixel to trust, e.g. preprocessing's
    :attr:`~xraypose.preprocess.Preprocessed.mask`) the window is the min–max of the masked
    pixels only, and the rest is clipped into it: a collimator's or an image intensifier's
    shadow (line integrals far above the anatomy's after the log) no longer turns the field dark.
    A mask of another size, or with no pixel set, is ignored.
    """
    a = _np(img)
    m = None if mask is None else _np(mask) > 0
    if m is not None and m.shape == a.shape and m.any():
        lo, hi = np.nanmin(a[m]), np.nanmax(a[m])
        return np.zeros_like(a) if not hi > lo else np.clip((a - lo) / (hi - lo), 0.0, 1.0)
    lo, hi = np.nanmin(a), np.nanmax(a)
    return np.zeros_like(a) if not hi > lo else (a - lo) / (hi - lo)


def edges(img, quantile: float = 0.9) -> np.ndarray:
    """Boolean edge map (H, W): Sobel magnitude at or above the ``quantile`` of its nonzero values.

    Of the nonzero values: a structure's DRR (one bone, zero around it) has a zero gradient over most
    of the image, and the quantile of all pixels was then 0 — every pixel of the bone counted as an
    edge and the overlay painted it solid instead of outlining it."""
    a = normalise(img)
    p = np.pad(a, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    mag = np.hypot(gx, gy)
    nz = mag[mag > 0]
    if nz.size == 0:
        return np.zeros_like(mag, dtype=bool)
    return (mag >= np.quantile(nz, quantile)) & (mag > 0)


def checkerboard(a, b, tiles: int = 8) -> np.ndarray:
    """Alternate square tiles of two (normalised) images of the same size."""
    a, b = normalise(a), normalise(b)
    if a.shape != b.shape:
        raise ValueError(f"checkerboard needs images of one size, got {a.shape} and {b.shape}")
    H, W = a.shape
    v, u = np.meshgrid(np.arange(H) * tiles // H, np.arange(W) * tiles // W, indexing="ij")
    return np.where((u + v) % 2 == 0, a, b)


def _save(fig, path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


#: Colours of the registration verdicts in pictures (as in the HTML report).
VERDICT_COLORS = {"ok": "#11772e", "uncertain": "#9a6700", "failed": "#b3261e"}


def save_comparison(path, xray, drr, titles=("X-ray", "DRR"), start=None, start_title="DRR at the start",
                    verdict: str | None = None, p_success: float | None = None, mask=None) -> Path:
    """X-ray and DRR side by side, with their difference; with ``start`` (the DRR where the
    registration began) between them; with ``verdict`` ("ok" | "uncertain" | "failed") and
    ``p_success`` a coloured line above the panels says how far to trust the result.  ``mask``:
    the X-ray's trusted pixels, which set its display window (:func:`normalise`)."""
    x, d = normalise(xray, mask), normalise(drr)
    panels = [(x, titles[0])] + ([(normalise(start), start_title)] if start is not None else []) + \
        [(d, titles[1]), (x - d, "difference")]
    fig, ax = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.6), dpi=100)
    for a, (im, t) in zip(ax, panels):
        a.imshow(im, cmap="gray" if t != "difference" else "RdBu", vmin=None if t != "difference" else -1,
                 vmax=None if t != "difference" else 1)
        a.set_title(t)
        a.axis("off")
    if verdict is not None:
        text = f"verdict: {verdict}" + (f"  (P(mTRE < 2 mm) = {p_success:.2f})" if p_success is not None else "")
        fig.suptitle(text, color=VERDICT_COLORS.get(verdict, "#222222"), fontweight="bold")
    return _save(fig, path)


def save_overlay(path, xray, drr, tiles: int = 8, mask=None) -> Path:
    """Edges of the DRR on the X-ray (left) and a checkerboard of both (right); ``mask``: the
    X-ray's trusted pixels, which set its display window (:func:`normalise`)."""
    fig, ax = plt.subplots(1, 2, figsize=(8, 4), dpi=100)
    x = normalise(xray, mask)
    rgb = np.stack([x, x, x], -1)
    e = edges(drr)
    rgb[e] = [1.0, 0.3, 0.0]
    ax[0].imshow(rgb)
    ax[0].set_title("DRR edges on the X-ray")
    ax[1].imshow(checkerboard(x, drr, tiles), cmap="gray")
    ax[1].set_title("checkerboard X-ray / DRR")
    for a in ax:
        a.axis("off")
    return _save(fig, path)


def save_fiducials(path, image, truth=None, estimate=None, names=None) -> Path:
    """Fiducials (N, 2) pixel (u, v) of this image: truth as circles, estimate as crosses, joined."""
    img = normalise(image)
    H, W = img.shape
    fig, ax = plt.subplots(figsize=(5, 5 * H / W), dpi=100)
    ax.imshow(img, cmap="gray")
    if truth is not None:
        t = _np(truth).reshape(-1, 2)
        ax.scatter(t[:, 0], t[:, 1], s=40, facecolors="none", edgecolors="lime", label="ground truth")
    if estimate is not None:
        e = _np(estimate).reshape(-1, 2)
        ax.scatter(e[:, 0], e[:, 1], s=40, marker="x", color="red", label="estimate")
        if truth is not None:
            for a, b in zip(t, e):
                ax.plot([a[0], b[0]], [a[1], b[1]], color="yellow", lw=0.8)
    if names is not None and truth is not None:
        for (u, v), n in zip(t, names):
            ax.text(u + 3, v - 3, str(n), color="lime", fontsize=6)
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)
    ax.axis("off")
    if truth is not None or estimate is not None:
        ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


def save_gif(path, frames, xray=None, duration: float = 0.08, min_size: int = 256, mask=None) -> Path:
    """An animation of DRRs (list of (H, W)); with ``xray``, each frame is the DRR's edges on it
    (``mask``: the X-ray's trusted pixels, which set its display window)."""
    import imageio.v3 as iio

    out = []
    for f in frames:
        if xray is None:
            g = normalise(f)
            out.append((255 * np.stack([g, g, g], -1)).astype(np.uint8))
        else:
            x = normalise(xray, mask)
            rgb = np.stack([x, x, x], -1)
            rgb[edges(f)] = [1.0, 0.3, 0.0]
            out.append((255 * rgb).astype(np.uint8))
    frames_arr = np.stack(out)
    k = max(1, int(np.ceil(min_size / max(frames_arr.shape[1:3]))))
    if k > 1:  # small detectors: enlarge (nearest) so the animation is readable
        frames_arr = frames_arr.repeat(k, axis=1).repeat(k, axis=2)
    data = iio.imwrite("<bytes>", frames_arr, extension=".gif", duration=duration, loop=0)
    atomic_write_bytes(path, data)
    return Path(path)


def save_curves(path, curves: dict, xlabel: str = "iteration", log_y: set | None = None) -> Path:
    """One panel per named curve (e.g. {"loss": [...], "mTRE (mm)": [...]})."""
    n = max(1, len(curves))
    fig, ax = plt.subplots(1, n, figsize=(3.6 * n, 3), dpi=100, squeeze=False)
    for a, (name, ys) in zip(ax[0], curves.items()):
        a.plot(np.arange(len(ys)), _np(ys).reshape(-1))
        a.set_title(name)
        a.set_xlabel(xlabel)
        if log_y and name in log_y:
            a.set_yscale("log")
        a.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def save_scene(path, volume: Volume, camera, camera_to_world, xray=None, iso_hu: float = 300.0) -> Path:
    """3D scene: the CT's bone surface, the camera frustum and the detector (with the X-ray on it).

    Uses PyVista off-screen when installed (``pip install "xraypose[3d]"``: a shaded bone surface
    by marching cubes, the X-ray as the detector's texture), else matplotlib 3D (bone voxels as
    points).  ``XRAYPOSE_NO_PYVISTA=1`` forces matplotlib.
    """
    import os

    import torch

    T = torch.as_tensor(camera_to_world, dtype=torch.float64).reshape(4, 4)
    H, W = camera.height, camera.width
    corners_uv = torch.tensor([[-0.5, -0.5], [W - 0.5, -0.5], [W - 0.5, H - 0.5], [-0.5, H - 0.5]], dtype=torch.float64)
    det = camera.backproject(corners_uv, T).numpy()
    src = T[:3, 3].numpy()
    if not os.environ.get("XRAYPOSE_NO_PYVISTA"):
        import importlib.util

        if importlib.util.find_spec("pyvista") is not None:
            try:
                return _scene_pyvista(path, volume, det, src, xray, iso_hu)
            except Exception as e:  # no off-screen OpenGL here, ...: the matplotlib scene instead
                import warnings

                warnings.warn(f"PyVista could not draw the 3D scene ({e}); using matplotlib", stacklevel=2)
    data = volume.data
    step = max(1, int(round(max(data.shape) / 60)))
    sub = data[::step, ::step, ::step]
    idx = torch.nonzero(sub > iso_hu).to(torch.float64) * step
    pts = (idx @ volume.affine[:3, :3].T + volume.affine[:3, 3]).numpy()
    if len(pts) > 6000:
        pts = pts[np.random.default_rng(0).choice(len(pts), 6000, replace=False)]
    fig = plt.figure(figsize=(6, 6), dpi=100)
    ax = fig.add_subplot(projection="3d")
    if len(pts):
        ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=1.0, c="tab:blue", alpha=0.5, depthshade=False)
    d = np.vstack([det, det[:1]])
    ax.plot(d[:, 0], d[:, 1], d[:, 2], color="k")
    for c in det:
        ax.plot([src[0], c[0]], [src[1], c[1]], [src[2], c[2]], color="orange", lw=0.6)
    ax.scatter(*src, color="orange", s=30)
    if xray is not None:
        x = normalise(xray)
        n = 48
        uu, vv = np.meshgrid(np.linspace(0, W - 1, n), np.linspace(0, H - 1, n))
        uv = torch.tensor(np.stack([uu.ravel(), vv.ravel()], -1), dtype=torch.float64)
        P = camera.backproject(uv, T).numpy().reshape(n, n, 3)
        vals = x[np.round(vv).astype(int), np.round(uu).astype(int)]
        ax.plot_surface(P[..., 0], P[..., 1], P[..., 2], facecolors=plt.cm.gray(vals), shade=False, alpha=0.85)
    allp = np.vstack([det, src[None], pts]) if len(pts) else np.vstack([det, src[None]])
    mid, half = allp.mean(0), (allp.max(0) - allp.min(0)).max() / 2
    ax.set_xlim(mid[0] - half, mid[0] + half)
    ax.set_ylim(mid[1] - half, mid[1] + half)
    ax.set_zlim(mid[2] - half, mid[2] + half)
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=12, azim=-25)
    ax.set_xlabel("x (R) mm")
    ax.set_ylabel("y (A) mm")
    ax.set_zlabel("z (S) mm")
    ax.set_title("CT bone, X-ray source, frustum and detector (world RAS mm)", fontsize=9)
    return _save(fig, path)


def _scene_pyvista(path, volume: Volume, det, src, xray, iso_hu: float) -> Path:
    """The scene with PyVista, off-screen: bone iso-surface (world RAS mm), source, frustum, textured detector."""
    import pyvista as pv

    data = np.asarray(volume.data, dtype=np.float32)
    step = max(1, int(np.ceil(max(data.shape) / 128)))
    sub = data[::step, ::step, ::step]
    grid = pv.ImageData(dimensions=sub.shape)
    grid.point_data["hu"] = sub.ravel(order="F")  # VTK's x index varies fastest
    surf = grid.contour([iso_hu], scalars="hu")
    M = np.asarray(volume.affine, dtype=np.float64) @ np.diag([step, step, step, 1.0])  # index → world mm
    import contextlib

    quiet = pv.vtk_verbosity("off") if hasattr(pv, "vtk_verbosity") else contextlib.nullcontext()
    with quiet:  # VTK's own warnings (e.g. "bad X server connection" off-screen) would go to the log
        return _draw_scene_pyvista(pv, path, surf, M, det, src, xray)


def _draw_scene_pyvista(pv, path, surf, M, det, src, xray) -> Path:
    plotter = pv.Plotter(off_screen=True, window_size=(900, 900))
    plotter.set_background("white")
    if surf.n_points:
        plotter.add_mesh(surf.transform(M, inplace=False).smooth(n_iter=30), color="#e8dcc8", smooth_shading=True)
    quad = pv.PolyData(np.asarray(det, dtype=np.float64), faces=[4, 0, 1, 2, 3])
    if xray is not None:
        img = (255 * normalise(xray)).astype(np.uint8)
        quad.active_texture_coordinates = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], dtype=np.float32)  # row 0 on top
        plotter.add_mesh(quad, texture=pv.numpy_to_texture(np.ascontiguousarray(img[::-1])))
    else:
        plotter.add_mesh(quad, color="gray", opacity=0.6)
    plotter.add_mesh(pv.Sphere(radius=10.0, center=src), color="orange")
    for c in det:
        plotter.add_mesh(pv.Line(src, c), color="orange", line_width=2)
    plotter.add_mesh(pv.lines_from_points(np.vstack([det, det[:1]])), color="black", line_width=2)
    plotter.add_axes(xlabel="R", ylabel="A", zlabel="S")
    allp = np.vstack([det, src[None]])
    centre = allp.mean(0)
    normal = np.cross(det[1] - det[0], det[3] - det[0])
    side = np.cross(normal, det[3] - det[0])  # look across the source-detector axis, from the side
    side = side / (np.linalg.norm(side) + 1e-12)
    up = (det[0] - det[3]) / (np.linalg.norm(det[0] - det[3]) + 1e-12)
    # from the side, a little toward the source (the X-ray is drawn on the detector's source side)
    view = side - 0.6 * normal / (np.linalg.norm(normal) + 1e-12) + 0.3 * up
    plotter.camera_position = [tuple(centre + 1000.0 * view / np.linalg.norm(view)), tuple(centre), tuple(up)]
    plotter.reset_camera()  # keeps the direction, fits everything in view
    path = Path(path)
    img = plotter.screenshot(None, return_img=True)  # an array: written atomically below, not by VTK
    plotter.close()
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, dtype=np.uint8)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path
