"""Renderer correctness: closed-form line integrals, beads, gradients, sparse and batched rendering."""

import pytest
import torch

from helpers import box_chords, gaussian_blob, gaussian_line_integrals, oblique_affine
from xraypose.camera import Camera, carm_pose
from xraypose.errors import InputError
from xraypose.render import patch_pixels, render

F64 = torch.float64
POSES = [(0.0, 0.0), (30.0, 10.0), (-65.0, -20.0), (90.0, 0.0), (140.0, 35.0)]


def _box_volume():
    shape = (30, 26, 22)
    aff = oblique_affine(spacing=(1.3, 0.9, 2.1), flip=(True, False, True))
    vol = torch.zeros(shape, dtype=F64)
    a, b = (6, 5, 4), (23, 19, 15)
    vol[a[0] : b[0], a[1] : b[1], a[2] : b[2]] = 0.7
    corners = torch.tensor([[a[0] - 0.5, a[1] - 0.5, a[2] - 0.5], [b[0] - 0.5, b[1] - 0.5, b[2] - 0.5]], dtype=F64)
    w = corners @ aff[:3, :3].T + aff[:3, 3]
    lo, hi = w.min(0).values, w.max(0).values
    return vol, aff, lo, hi


@pytest.mark.parametrize("angles", POSES)
def test_siddon_box_exact(angles):
    vol, aff, lo, hi = _box_volume()
    cam = Camera(sdd=900.0, height=12, width=14, delx=4.0, dely=3.5, x0=7.0, y0=-5.0)
    iso = 0.5 * (lo + hi) + torch.tensor([3.0, -2.0, 4.0], dtype=F64)
    T = carm_pose(*angles, sod=500.0, isocenter=iso)
    img = render(vol, aff, cam, T, renderer="siddon")[0, 0]
    uv = cam.pixel_grid(F64)
    expected = 0.7 * box_chords(T[:3, 3], cam.backproject(uv, T), lo, hi)
    assert expected.max() > 5  # the box is really crossed
    torch.testing.assert_close(img.reshape(-1), expected, rtol=1e-4, atol=1e-4 * float(expected.max()))


@pytest.mark.parametrize("angles", POSES[:3])
def test_trilinear_gaussian_blob(angles):
    shape = (80, 80, 80)
    aff = oblique_affine(spacing=(1.2, 1.0, 1.4))
    vol, c = gaussian_blob(shape, aff, (39.3, 40.1, 38.7), sigma_mm=10.0)
    cam = Camera(sdd=1000.0, height=16, width=16, delx=3.0, x0=4.0)
    T = carm_pose(*angles, sod=600.0, isocenter=c)
    img = render(vol, aff, cam, T, renderer="trilinear")[0, 0].reshape(-1)
    uv = cam.pixel_grid(F64)
    ana = gaussian_line_integrals(T[:3, 3], cam.backproject(uv, T), c, 10.0)
    err = (img - ana).abs().max() / ana.max()
    assert err < 0.005, f"trilinear off the closed form by {100 * float(err):.3f} %"
    # Siddon integrates the piecewise-constant volume: near the smooth one, with voxel staircase error.
    sid = render(vol, aff, cam, T, renderer="siddon")[0, 0].reshape(-1)
    assert (sid - ana).abs().max() / ana.max() < 0.03


def _tilted_affine(kind: str) -> torch.Tensor:
    """(4, 4) voxel → world with voxel axes rotated 23° about world z, or the slice axis sheared (a CT from a
    tilted gantry: its k axis leans 14° toward j)."""
    import math

    S = torch.diag(torch.tensor([1.2, 1.0, 1.4], dtype=F64))
    if kind == "rotated":
        c, s = math.cos(0.4), math.sin(0.4)
        M = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=F64) @ S
    else:
        M = torch.tensor([[1.2, 0.0, 0.0], [0.0, 1.0, 0.35], [0.0, 0.0, 1.4]], dtype=F64)
    aff = torch.eye(4, dtype=F64)
    aff[:3, :3], aff[:3, 3] = M, torch.tensor([10.0, -20.0, 5.0], dtype=F64)
    return aff


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("kind", ["rotated", "sheared"])
def test_a_ct_with_rotated_or_sheared_voxel_axes_renders_its_line_integrals(kind, backend):
    """Tilted-gantry CTs (sheared affines) are read as they are, not resampled: every renderer must follow the
    full voxel → world affine, not only its diagonal (the other tests' affines are diagonal)."""
    from xraypose.render.backends import cpu

    if backend == "cpu" and not cpu.available():
        pytest.skip("the CPU kernel does not build here")
    aff = _tilted_affine(kind)
    vol, c = gaussian_blob((80, 80, 80), aff, (39.3, 40.1, 38.7), sigma_mm=10.0)
    cam = Camera(sdd=1000.0, height=16, width=16, delx=3.0, x0=4.0)
    for angles in POSES[:3]:
        T = carm_pose(*angles, sod=600.0, isocenter=c)
        ana = gaussian_line_integrals(T[:3, 3], cam.backproject(cam.pixel_grid(F64), T), c, 10.0)
        for renderer, tol in (("trilinear", 0.005), ("siddon", 0.03)):
            img = render(vol, aff, cam, T, renderer=renderer, backend=backend)[0, 0].reshape(-1)
            err = float((img - ana).abs().max() / ana.max())
            assert err < tol, f"{kind} {renderer} ({backend}) at {angles}: {100 * err:.2f} % off the closed form"


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("renderer", ["trilinear", "siddon"])
def test_bead_lands_where_camera_projects_it(mirror, renderer):
    shape = (48, 48, 48)
    aff = oblique_affine(spacing=(1.0, 1.0, 1.0), flip=(False, True, False))
    vol, c = gaussian_blob(shape, aff, (21.3, 26.6, 24.2), sigma_mm=1.2)
    cam = Camera(sdd=1000.0, height=64, width=48, delx=0.8, dely=0.9, x0=6.0, y0=-9.0, reverse_x_axis=mirror)
    iso = c + torch.tensor([4.0, -3.0, 2.5], dtype=F64)
    T = carm_pose(25.0, -15.0, sod=500.0, isocenter=iso)
    img = render(vol, aff, cam, T, renderer=renderer)[0, 0]
    expected = cam.project(c.reshape(1, 3), T)[0]
    v, u = torch.meshgrid(torch.arange(64, dtype=F64), torch.arange(48, dtype=F64), indexing="ij")
    w = img.clamp_min(0)
    w = torch.where(w > 0.05 * w.max(), w, torch.zeros_like(w))
    centroid = torch.stack([(w * u).sum() / w.sum(), (w * v).sum() / w.sum()])
    assert (centroid - expected).norm() < 0.5, (centroid, expected)
    peak = torch.nonzero(img == img.max())[0]
    assert (torch.stack([peak[1], peak[0]]).to(F64) - expected).abs().max() <= 1.0


def _pose_fn(T0):
    from xraypose.geometry import se3_exp

    def f(xi):
        return T0 @ se3_exp(xi)

    return f


@pytest.mark.parametrize("renderer", ["trilinear", "siddon"])
def test_gradcheck_pose(renderer):
    torch.manual_seed(0)
    shape = (26, 24, 22)
    aff = oblique_affine(spacing=(1.0, 1.1, 1.2))
    # Smooth data that vanishes at the box faces: the trilinear interpolant's derivative jumps
    # at voxel planes by the data's second difference, which finite differences would straddle
    # on a random volume.
    vol = gaussian_blob(shape, aff, (12.0, 12.5, 10.2), sigma_mm=4.0)[0] + 0.5 * gaussian_blob(shape, aff, (13.5, 10.0, 11.0), 3.0)[0]
    cam = Camera(sdd=600.0, height=3, width=4, delx=3.0)
    centre = aff[:3, :3] @ torch.tensor([12.5, 12.0, 10.5], dtype=F64) + aff[:3, 3]
    T0 = carm_pose(20.0, 10.0, sod=300.0, isocenter=centre)
    pose = _pose_fn(T0)
    xi = (0.01 * torch.randn(6, dtype=F64)).requires_grad_()
    kw = dict(renderer=renderer, n_samples=64) if renderer == "trilinear" else dict(renderer=renderer)

    def fn(x):
        return render(vol, aff, cam, pose(x), **kw)

    assert torch.autograd.gradcheck(fn, (xi,), eps=1e-6, atol=1e-5, rtol=1e-3)
    g = torch.autograd.grad(fn(xi).sum(), xi)[0]
    assert g.abs().sum() > 0


@pytest.mark.parametrize("renderer", ["trilinear", "siddon"])
def test_gradcheck_volume(renderer):
    torch.manual_seed(1)
    aff = oblique_affine(spacing=(2.0, 2.0, 2.0))
    vol = torch.rand((5, 6, 4), dtype=F64, requires_grad=True)
    cam = Camera(sdd=500.0, height=2, width=3, delx=5.0)
    centre = aff[:3, :3] @ torch.tensor([2.0, 2.5, 1.5], dtype=F64) + aff[:3, 3]
    T = carm_pose(10.0, 5.0, sod=250.0, isocenter=centre)
    kw = dict(n_samples=16) if renderer == "trilinear" else {}
    assert torch.autograd.gradcheck(lambda v: render(v, aff, cam, T, renderer=renderer, **kw), (vol,))


def _scene(dtype=F64):
    aff = oblique_affine(spacing=(2.0, 1.5, 2.5))
    torch.manual_seed(2)
    vol = torch.rand((20, 24, 16), dtype=dtype)
    cam = Camera(sdd=800.0, height=10, width=12, delx=4.0)
    centre = aff[:3, :3] @ torch.tensor([10.0, 12.0, 8.0], dtype=F64) + aff[:3, 3]
    return vol, aff, cam, centre


@pytest.mark.parametrize("renderer", ["trilinear", "siddon"])
def test_batch_equals_single(renderer):
    vol, aff, cam, centre = _scene()
    T = carm_pose(torch.tensor([0.0, 40.0, -70.0]), torch.tensor([0.0, 15.0, -5.0]), sod=400.0, isocenter=centre)
    batch = render(vol, aff, cam, T, renderer=renderer, n_samples=100)
    for b in range(3):
        single = render(vol, aff, cam, T[b], renderer=renderer, n_samples=100)
        torch.testing.assert_close(batch[b], single[0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_drr_sampled_by_step_does_not_depend_on_its_batch(dtype):
    """Sampling by a step, each pose takes the sample count its own longest chord needs: a pose rendered beside
    another whose rays are longer gets the DRR it gets alone (the fused CPU path in float32, the reference in
    float64; the tangents too).  Before, the batch's longest chord set every pose's count."""
    from xraypose.render import render_with_tangents

    vol, aff, cam, centre = _scene()
    T = carm_pose(torch.tensor([0.0, 35.0]), torch.tensor([0.0, 60.0]), sod=400.0, isocenter=centre).to(dtype)
    v = vol.to(dtype)
    batch = render(v, aff, cam, T, step=2.5)
    tang = torch.zeros(2, 1, 4, 4, dtype=dtype)
    tang[:, 0, 0, 3] = 1.0  # along world x
    img_b, d_b = render_with_tangents(v, aff, cam, T, tang, step=2.5)
    for b in range(2):
        assert torch.equal(batch[b], render(v, aff, cam, T[b], step=2.5)[0])
        img, d = render_with_tangents(v, aff, cam, T[b:b + 1], tang[b:b + 1], step=2.5)
        assert torch.equal(img_b[b], img[0]) and torch.equal(d_b[b], d[0])
    sparse = render(v, aff, cam, T, uv=torch.tensor([[[3.0, 4.0]], [[5.0, 6.0]]], dtype=dtype), step=2.5)
    assert torch.equal(sparse[1, :, 0], batch[1, :, 6, 5])


@pytest.mark.parametrize("renderer", ["trilinear", "siddon"])
def test_sparse_pixels_match_full_image(renderer):
    vol, aff, cam, centre = _scene()
    T = carm_pose(30.0, 5.0, sod=400.0, isocenter=centre)
    full = render(vol, aff, cam, T, renderer=renderer, n_samples=80)[0, 0]
    uv = torch.tensor([[0, 0], [11, 9], [5, 3], [7, 8]], dtype=F64)
    sparse = render(vol, aff, cam, T, uv=uv, renderer=renderer, n_samples=80)[0, 0]
    torch.testing.assert_close(sparse, full[uv[:, 1].long(), uv[:, 0].long()])
    pts = patch_pixels(torch.tensor([[5.0, 4.0]]), 3)
    patch = render(vol, aff, cam, T, uv=pts, renderer=renderer, n_samples=80)[0, 0].reshape(3, 3)
    torch.testing.assert_close(patch, full[3:6, 4:7])


def test_float32_matches_float64():
    vol, aff, cam, centre = _scene()
    T = carm_pose(30.0, 5.0, sod=400.0, isocenter=centre)
    a = render(vol, aff, cam, T, n_samples=80)
    b = render(vol.float(), aff, cam, T.float(), n_samples=80)
    torch.testing.assert_close(b.double(), a, rtol=1e-4, atol=1e-4)


def test_step_controls_samples():
    vol, aff, cam, centre = _scene()
    T = carm_pose(30.0, 5.0, sod=400.0, isocenter=centre)
    fine = render(vol, aff, cam, T, step=0.1)
    coarse = render(vol, aff, cam, T, step=3.0)
    exact = render(vol, aff, cam, T, n_samples=2000)
    assert (fine - exact).abs().max() < (coarse - exact).abs().max()


def test_ray_missing_volume_is_zero():
    vol, aff, cam, centre = _scene()
    T = carm_pose(0.0, 0.0, sod=400.0, isocenter=centre + torch.tensor([500.0, 0.0, 0.0], dtype=F64))
    for r in ("trilinear", "siddon"):
        assert render(vol, aff, cam, T, renderer=r).abs().max() == 0


def test_bad_inputs():
    vol, aff, cam, centre = _scene()
    T = carm_pose(0.0, 0.0, sod=400.0, isocenter=centre)
    with pytest.raises(InputError, match="renderer"):
        render(vol, aff, cam, T, renderer="joseph")
    with pytest.raises(InputError, match="backend"):
        render(vol, aff, cam, T, backend="tpu")
    with pytest.raises(InputError, match="NaN"):
        render(vol, aff, cam, T * float("nan"))
    with pytest.raises(InputError, match="shape"):
        render(vol, aff, cam, torch.eye(3, dtype=F64))
    with pytest.raises(InputError, match="samples"):
        render(vol, aff, cam, T, n_samples=0)
    with pytest.raises(InputError, match="zero-size"):
        render(torch.zeros(0, 3, 3, dtype=F64), aff, cam, T)
