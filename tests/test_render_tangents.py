"""DRRs with their directional pose derivatives (:func:`xraypose.render.render_with_tangents`)."""

import pytest
import torch

from xraypose.camera import Camera
from xraypose.errors import InputError
from xraypose.geometry import se3_exp, se3_hat
from xraypose.register.cases import CaseMaker
from xraypose.register.optimizer import registration_density
from xraypose.render import render, render_with_tangents
from xraypose.volume import load_sample_ct

F64 = torch.float64


@pytest.fixture(scope="module")
def scene():
    vol = load_sample_ct()
    cam = Camera(sdd=1020.0, height=24, width=20, delx=280.0 / 24)
    case = CaseMaker(vol, camera=cam, n_fiducials=4).case(1)
    T = case.true_pose.to(F64)
    F = T.clone()
    F[:3, 3] = vol.get_isocenter().to(F64)
    tangents = (F @ se3_hat(torch.eye(6, dtype=F64)) @ torch.linalg.inv(F) @ T)[None]  # (1, 6, 4, 4)
    return registration_density(vol), vol.affine, cam, T, tangents


def test_se3_hat_is_the_first_order_term_of_se3_exp():
    g = torch.Generator().manual_seed(0)
    xi = torch.randn(5, 6, generator=g, dtype=F64)
    eps = 1e-6
    fd = (se3_exp(eps * xi) - se3_exp(-eps * xi)) / (2 * eps)
    assert torch.allclose(fd, se3_hat(xi), atol=1e-8)
    assert se3_hat(xi)[:, 3].abs().max() == 0  # the bottom row of a twist is zero


def test_fused_tangents_equal_the_kernels_pose_gradient(scene):
    """Σ_pixels w·dimg_k equals the autograd gradient of Σ w·img contracted with tangent k (same kernel)."""
    dens, aff, cam, T, tangents = scene
    img, dimg = render_with_tangents(dens, aff, cam, T[None].float(), tangents.float())
    assert img.shape == (1, 3, 24, 20) and dimg.shape == (1, 6, 3, 24, 20)
    assert torch.equal(img, render(dens, aff, cam, T[None].float()))
    w = torch.randn(1, 3, 24, 20, generator=torch.Generator().manual_seed(1))
    P = T[None].float().clone().requires_grad_(True)
    (render(dens, aff, cam, P) * w).sum().backward()
    want = torch.einsum("kij,ij->k", tangents[0], P.grad[0].to(F64))
    got = (dimg[0].to(F64) * w.to(F64)).flatten(1).sum(-1)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-3 * float(want.abs().max()))


def test_tangents_match_the_float64_reference(scene):
    """The fused kernel's analytic derivatives against central differences of the float64 reference
    renderer (trilinear interpolation has kinks at voxel planes: a few per cent apart)."""
    dens, aff, cam, T, tangents = scene
    _, d = render_with_tangents(dens, aff, cam, T[None].float(), tangents.float())
    img64, d64 = render_with_tangents(dens.double(), aff, cam, T[None], tangents, backend="reference")
    assert img64.dtype == F64 and d64.shape == d.shape
    for k in range(6):
        rel = float((d[0, k].double() - d64[0, k]).norm() / d64[0, k].norm())
        assert rel < 0.06, (k, rel)
    # and the linearisation predicts the image at a nearby pose: DRR(pose·small motion) ≈ img + dimg·ε
    eps = 1e-3
    moved = render(dens, aff, cam, (T + eps * tangents[0, 4])[None].float())
    base = render(dens, aff, cam, T[None].float())
    lin = base + eps * d[:, 4]
    assert float((moved - lin).norm()) < 0.1 * float((moved - base).norm())


def test_sparse_pixels_and_bad_tangents(scene):
    dens, aff, cam, T, tangents = scene
    uv = torch.tensor([[3.0, 4.0], [10.0, 12.0], [15.5, 2.25]])
    img, d = render_with_tangents(dens, aff, cam, T[None].float(), tangents.float(), uv=uv, n_samples=64)
    full_img, full_d = render_with_tangents(dens, aff, cam, T[None].float(), tangents.float(), n_samples=64)
    assert img.shape == (1, 3, 3) and d.shape == (1, 6, 3, 3)
    assert torch.allclose(img[..., 0], full_img[..., 4, 3]) and torch.allclose(d[..., 1], full_d[..., 12, 10])
    with pytest.raises(InputError, match="tangents"):
        render_with_tangents(dens, aff, cam, T[None].float(), tangents[0].float())
    with pytest.raises(InputError, match="tangents"):
        render_with_tangents(dens, aff, cam, T[None].float(), tangents.float().repeat(2, 1, 1, 1))
