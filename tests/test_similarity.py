import pytest
import torch

from xraypose.errors import InputError
from xraypose.similarity import check_image, gradient_ncc, make_similarity, multiscale_ncc, ncc, patch_ncc


def _img(seed=0, B=2, H=40, W=36):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 1, H, W, generator=g, dtype=torch.float64)


def test_ncc_invariances_and_range():
    x, y = _img(0), _img(1)
    torch.testing.assert_close(ncc(x, 3.0 * x + 2.0), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(ncc(x, -x), -torch.ones(2, dtype=torch.float64))
    assert (ncc(x, y).abs() < 0.2).all()
    torch.testing.assert_close(patch_ncc(x, 2 * x - 1, 13), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(multiscale_ncc(x, x), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(gradient_ncc(x, 5 * x), torch.ones(2, dtype=torch.float64))


def test_patch_ncc_is_local():
    # A per-patch contrast change leaves patch NCC at 1 but lowers global NCC.
    x = _img(2, B=1, H=26, W=26)
    y = x.clone()
    y[..., :13, :13] = 4 * y[..., :13, :13] + 3
    assert patch_ncc(x, y, 13).item() == pytest.approx(1.0, abs=1e-6)
    assert ncc(x, y).item() < 0.9


def test_ncc_matches_numpy_corrcoef():
    import numpy as np

    x, y = _img(3, B=1), _img(4, B=1)
    y = 0.5 * x + y
    ref = np.corrcoef(x.flatten().numpy(), y.flatten().numpy())[0, 1]
    assert ncc(x, y).item() == pytest.approx(ref, rel=1e-6)


def test_gradients_flow_and_are_finite_for_constant_images():
    x = _img(5).requires_grad_()
    for name in ("mncc", "ncc", "gncc", "mixed"):
        s = make_similarity(name)(x, _img(6)).sum()
        (g,) = torch.autograd.grad(s, x)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    c = torch.zeros(1, 1, 20, 20, requires_grad=True)
    s = multiscale_ncc(c, _img(7, B=1, H=20, W=20).float())
    assert torch.isfinite(s).all()


def test_bad_inputs():
    with pytest.raises(InputError, match="constant"):
        check_image(torch.zeros(1, 1, 8, 8))
    with pytest.raises(InputError, match="NaN"):
        check_image(torch.tensor([[1.0, float("nan")], [0.0, 2.0]]))
    with pytest.raises(InputError, match="empty"):
        check_image(torch.zeros(0, 5))
    with pytest.raises(InputError, match="different shapes"):
        ncc(_img(0), _img(1, H=20))
    with pytest.raises(InputError, match="similarity"):
        make_similarity("mutual_information")
    check_image(_img(0))


@pytest.mark.parametrize("call, words", [
    (lambda x: ncc(x.numpy(), x), "images to compare must be floating-point tensors (B, C, H, W), got ndarray for x"),
    # (AttributeError: 'numpy.ndarray' object has no attribute 'dim')
    (lambda x: ncc(x, (x * 100).int()), "images to compare must be floating-point tensors (B, C, H, W), got a tensor "
                                        "of torch.int32 for y"),  # torch's "mean(): could not infer output dtype"
    (lambda x: multiscale_ncc(x > 0.5, x), "images to compare must be floating-point tensors (B, C, H, W), got a "
                                          "tensor of torch.bool for x"),
    (lambda x: patch_ncc(x, x, 0), "patch_size = 0 must be a whole number >= 1"),  # torch's "kernel size should be
    (lambda x: patch_ncc(x, x, -3), "patch_size = -3 must be a whole number >= 1"),  # greater than zero"
    (lambda x: patch_ncc(x, x, 2.5), "patch_size = 2.5 must be a whole number >= 1"),  # im2col's TypeError
    (lambda x: gradient_ncc(x, x, patch_size="5"), "patch_size = '5' must be a whole number >= 1"),
    (lambda x: gradient_ncc(x[..., :2, :], x[..., :2, :]), "gradient NCC needs images of at least 3 × 3 pixels (its "
                                                           "Sobel filter's), got 2 × 36"),  # torch's conv2d error
])
def test_similarities_name_a_bad_argument(call, words):
    import re

    with pytest.raises(InputError, match="^" + re.escape(words)):
        call(_img(0))


def test_similarities_keep_the_arguments_they_take():
    x, y = _img(0), _img(1)
    assert torch.equal(patch_ncc(x, y, 13.0), patch_ncc(x, y, 13))  # a whole float, as a JSON config gives it
    assert torch.equal(gradient_ncc(x[..., :3, :3], y[..., :3, :3]).isfinite(), torch.tensor([True, True]))
    assert ncc(x.half(), y.half()).dtype == torch.float16
