import pytest
import numpy as np
import torch
from PIL import Image

from xraypose import viz
from xraypose.camera import Camera, carm_pose
from xraypose.render import DRR
from xraypose.volume import load_sample_ct


def test_checkerboard_and_edges():
    a = np.zeros((16, 16))
    b = np.ones((16, 16))
    c = viz.checkerboard(a, b + np.arange(16), tiles=4)
    assert c[0, 0] == 0 and c[0, 4] > 0 and c[4, 4] == 0
    img = np.zeros((20, 20))
    img[:, 10:] = 1
    e = viz.edges(img)
    assert e[:, 9:11].all() and not e[:, :7].any()


def test_pictures_are_written(tmp_path):
    ct = load_sample_ct()
    cam = Camera(sdd=1020.0, height=32, width=40, delx=8.0)
    T = carm_pose(15.0, 0.0, 620.0, ct.get_isocenter())
    drr = DRR(ct, cam, n_samples=100)(T.unsqueeze(0))[0, 0]
    xray = drr + 0.5 * torch.rand_like(drr)
    uv = cam.project(torch.stack([ct.get_isocenter()]).double(), T)
    paths = [
        viz.save_comparison(tmp_path / "cmp.png", xray, drr),
        viz.save_overlay(tmp_path / "overlay.png", xray, drr),
        viz.save_fiducials(tmp_path / "fid.png", xray, truth=uv, estimate=uv + 2, names=["iso"]),
        viz.save_curves(tmp_path / "curves.png", {"loss": [3, 2, 1], "mTRE": [5.0, 1.0, 0.2]}, log_y={"mTRE"}),
        viz.save_scene(tmp_path / "scene.png", ct, cam, T, xray=xray),
        viz.save_gif(tmp_path / "reg.gif", [torch.roll(drr, k, 1) for k in (0, 4, 8)], xray=xray),
    ]
    for p in paths:
        im = Image.open(p)
        assert im.size[0] > 30 and im.size[1] > 30
    assert Image.open(tmp_path / "reg.gif").n_frames == 3


def test_scene_with_pyvista_and_without(tmp_path, monkeypatch):
    """The 3D scene: PyVista off-screen when installed (bone surface, textured detector), else matplotlib."""
    from PIL import Image

    ct = load_sample_ct()
    cam = Camera(sdd=1020.0, height=32, width=32, delx=9.0)
    T = carm_pose(30.0, 10.0, sod=612.0, isocenter=ct.get_isocenter())
    monkeypatch.setenv("XRAYPOSE_NO_PYVISTA", "1")
    mpl = Image.open(viz.save_scene(tmp_path / "mpl.png", ct, cam, T)).size
    monkeypatch.delenv("XRAYPOSE_NO_PYVISTA")
    pytest.importorskip("pyvista")
    xray = torch.linspace(0, 1, 32 * 32).reshape(32, 32)
    p = viz.save_scene(tmp_path / "pv.png", ct, cam, T, xray=xray)
    im = np.asarray(Image.open(p).convert("RGB"))
    assert im.shape[:2] == (900, 900) and im.shape[:2] != mpl[::-1]  # PyVista's window, not matplotlib's figure
    assert (np.abs(im.astype(int) - 255).sum(-1) > 30).mean() > 0.02  # something drawn on the white background


def _field_with_shadow(n: int = 48):
    """A line-integral image: anatomy 0.2..1.0 inside a round field, 8.0 in the shadow around it
    (after the log a dark shadow reads as a huge line integral), and the field's mask."""
    v, u = np.mgrid[:n, :n]
    inside = (u - n / 2) ** 2 + (v - n / 2) ** 2 < (0.4 * n) ** 2
    img = np.where(inside, 0.2 + 0.8 * u / (n - 1), 8.0)
    return img, inside


def test_edges_outline_a_structure_alone():
    """A bone's DRR alone (zero around it): the edges are its outline, not the whole bone."""
    v, u = np.mgrid[:64, :64]
    r = np.hypot(u - 32, v - 32)
    bone = np.where(r < 8, np.sqrt(np.clip(64 - r ** 2, 0, None)), 0.0)  # a rod's chord lengths, 5 % of the image
    e = viz.edges(bone)
    assert e[(r > 6) & (r < 9)].sum() >= 8  # the rim
    assert not e[r < 5].any()  # not the inside (the quantile of all pixels was 0: every bone pixel an edge)


def test_normalise_windows_inside_the_mask():
    img, inside = _field_with_shadow()
    plain = viz.normalise(img)
    assert plain[inside].max() < 0.15  # min-max: the shadow takes the range, the field is dark
    win = viz.normalise(img, inside)
    assert win[inside].min() == 0.0 and win[inside].max() == 1.0
    assert (win[~inside] == 1.0).all()  # clipped into the window
    # a mask that cannot apply (another size, or empty) changes nothing
    np.testing.assert_array_equal(viz.normalise(img, np.ones((3, 3))), plain)
    np.testing.assert_array_equal(viz.normalise(img, np.zeros_like(inside)), plain)


def test_track_overlay_uses_the_frames_masks():
    """xraypose track's overlay.gif takes each frame's display window inside its mask (the wrist's
    image-intensifier shadow made the whole animation dark before)."""
    import imageio.v3 as iio

    from xraypose.cli.track import _overlay_gif

    ct = load_sample_ct()
    img, inside = _field_with_shadow(48)
    cam = Camera(sdd=1020.0, height=48, width=48, delx=6.0)
    frames = torch.as_tensor(img, dtype=torch.float32)[None, None]
    mask = torch.as_tensor(inside, dtype=torch.float32)[None, None]
    T = carm_pose(0.0, 0.0, 620.0, ct.get_isocenter())

    class R:  # the fields _overlay_gif reads of a tracked frame
        index = 0
        camera_to_world = T

    rel = [torch.eye(4, dtype=torch.float64)]
    dark = iio.imread(_overlay_gif(ct, "hu", [(frames, cam, None)], [R()], rel), index=0)
    lit = iio.imread(_overlay_gif(ct, "hu", [(frames, cam, mask)], [R()], rel), index=0)
    k = dark.shape[0] // 48  # the GIF is enlarged (nearest) to be readable
    grey = lambda a: a[::k, ::k][:48, :48][..., 1][inside].astype(float)  # noqa: E731  (green: edges are orange)
    assert grey(lit).mean() > 3 * grey(dark).mean()
