"""The DRR module: density models and bone multiplier per call, structures, sparse modes, sample CT."""

import pytest
import torch

from xraypose.camera import Camera, carm_pose
from xraypose.errors import InputError
from xraypose.render import DRR, render
from xraypose.volume import volume_from_array


def _ncc(a, b):
    a = (a - a.mean()) / a.std()
    b = (b - b.mean()) / b.std()
    return float((a * b).mean())


@pytest.mark.parametrize("model", ["hu", "physical", "raw"])
def test_per_call_multiplier_equals_rendering_the_density(sample_ct, model):
    cam = Camera(sdd=1020.0, height=24, width=20, delx=12.0)
    T = carm_pose(torch.tensor([0.0, 35.0, -20.0]), torch.tensor([0.0, 10.0, 5.0]), 620.0, sample_ct.get_isocenter())
    drr = DRR(sample_ct, cam, density=model, renderer="siddon")
    ms = torch.tensor([0.5, 2.5, 7.0], dtype=torch.float64)
    img = drr(T, bone_attenuation_multiplier=ms)
    for b, m in enumerate(ms.tolist()):
        ref = render(sample_ct.density(model, bone_attenuation_multiplier=m), sample_ct.affine, cam, T[b:b + 1],
                     renderer="siddon")
        torch.testing.assert_close(img[b:b + 1], ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    if model != "raw":
        assert not torch.allclose(drr(T[:1], bone_attenuation_multiplier=1.0), drr(T[:1], bone_attenuation_multiplier=5.0))


def test_default_multiplier_and_pose_parameters(sample_ct):
    from xraypose.geometry import pose_to_params

    cam = Camera(sdd=1020.0, height=16, width=16, delx=16.0)
    T = carm_pose(20.0, 0.0, 620.0, sample_ct.get_isocenter()).unsqueeze(0)
    drr = DRR(sample_ct, cam, bone_attenuation_multiplier=3.0, n_samples=200)
    a = drr(T)
    b = drr(T, bone_attenuation_multiplier=3.0)
    torch.testing.assert_close(a, b)
    rot, trans = pose_to_params(T, "euler_angles", convention="ZXY")
    c = drr(rotation=rot, translation=trans, parameterization="euler_angles", convention="ZXY", bone_attenuation_multiplier=3.0)
    torch.testing.assert_close(a, c)


def test_structures_are_rendered_alone():
    hu = torch.full((20, 20, 20), -1000.0)
    hu[4:9, 4:16, 4:16] = 60.0
    hu[11:16, 4:16, 4:16] = 900.0
    hu[17:19, 4:16, 4:16] = -100.0  # unlabelled fat: the soft-tissue minimum
    labels = torch.zeros(20, 20, 20, dtype=torch.int64)
    labels[4:9, 4:16, 4:16] = 1
    labels[11:16, 4:16, 4:16] = 2
    vol = volume_from_array(hu, spacing=(2.0, 2.0, 2.0), labels=labels, label_names={1: "liver", 2: "bone"})
    cam = Camera(sdd=800.0, height=12, width=12, delx=6.0)
    T = carm_pose(90.0, 0.0, 400.0, vol.get_isocenter()).unsqueeze(0)
    only_bone = DRR(vol, cam, structures=["bone"], renderer="siddon")(T)
    ref = render(vol.density("hu", structures=["bone"]), vol.affine, cam, T, renderer="siddon")
    torch.testing.assert_close(only_bone, ref.to(only_bone.dtype))
    everything = DRR(vol, cam, renderer="siddon")(T)
    assert (everything - only_bone).abs().max() > 1.0
    with pytest.raises(InputError):
        DRR(vol, cam, structures=["spleen"])


def test_mask_and_patches(sample_ct):
    cam = Camera(sdd=1020.0, height=20, width=24, delx=12.0)
    T = carm_pose(10.0, 5.0, 620.0, sample_ct.get_isocenter()).unsqueeze(0)
    drr = DRR(sample_ct, cam, n_samples=150)
    full = drr(T)
    mask = torch.zeros(20, 24, dtype=torch.bool)
    mask[3:9, 5:20] = True
    masked = drr(T, mask=mask)
    torch.testing.assert_close(masked, full * mask)
    patches = drr(T, patches=torch.tensor([[6.0, 5.0], [15.0, 12.0]]), patch_size=5)
    assert patches.shape == (1, 2, 5, 5)
    torch.testing.assert_close(patches[0, 0], full[0, 0, 3:8, 4:9])
    torch.testing.assert_close(patches[0, 1], full[0, 0, 10:15, 13:18])
    with pytest.raises(InputError, match="mask"):
        drr(T, mask=torch.ones(5, 5, dtype=torch.bool))


def test_volume_gradient(sample_ct):
    cam = Camera(sdd=1020.0, height=8, width=8, delx=30.0)
    T = carm_pose(0.0, 0.0, 620.0, sample_ct.get_isocenter()).unsqueeze(0).float()
    drr = DRR(sample_ct, cam, volume_requires_grad=True, renderer="siddon")
    drr(T).sum().backward()
    g = drr.density.grad
    assert g is not None and g.abs().sum() > 0
    # Siddon is linear in the volume: d(sum of pixels)/d(voxel) is the total ray length in it (mm).
    assert float(g.max()) < 8 * 8 * 3.0 * 3**0.5 + 1e-3
    with pytest.raises(InputError, match="fixed"):
        drr(T, bone_attenuation_multiplier=4.0)


@pytest.mark.parametrize(
    "primary, secondary, min_ncc",
    [(25.0, 10.0, 0.9985), (30.0, -10.0, 0.9985), (45.0, 20.0, 0.999), (-40.0, 20.0, 0.999), (90.0, 0.0, 0.999),
     # Near AP the rays run along the 3 mm voxel columns: Siddon (piecewise constant) is then
     # nearest-neighbour across the rays and trilinear blends four columns; their images differ
     # by voxel-scale staircase on the bowel gas (measured NCC 0.9970 at AP, 0.9983 at 20°,
     # 0.9990 at 25–30°, 0.9997 at 45° and beyond and in the lateral view).
     (0.0, 0.0, 0.9965), (20.0, 0.0, 0.998)],
)
def test_siddon_and_trilinear_agree_on_the_sample_ct(sample_ct, primary, secondary, min_ncc):
    cam = Camera(sdd=1020.0, height=96, width=96, delx=4.0)
    T = carm_pose(primary, secondary, 620.0, sample_ct.get_isocenter()).unsqueeze(0)
    sid = DRR(sample_ct, cam, renderer="siddon")(T)
    tri = DRR(sample_ct, cam, renderer="trilinear")(T)
    assert _ncc(sid, tri) > min_ncc


def test_bad_multiplier(sample_ct):
    cam = Camera(sdd=1020.0, height=8, width=8, delx=30.0)
    T = carm_pose(0.0, 0.0, 620.0, sample_ct.get_isocenter()).unsqueeze(0)
    drr = DRR(sample_ct, cam)
    with pytest.raises(InputError, match="multiplier"):
        drr(T, bone_attenuation_multiplier=-1.0)
    with pytest.raises(InputError, match="multipliers"):
        drr(T, bone_attenuation_multiplier=torch.tensor([1.0, 2.0]))
    with pytest.raises(InputError, match="density model"):
        DRR(sample_ct, cam, density="magic")


@pytest.mark.parametrize("model", ["hu", "physical", "raw"])
def test_one_number_multiplier_equals_the_tensor_path(sample_ct, model):
    """A multiplier given as one number (or the default) is normalised in Python — the same DRR as the
    per-pose tensor path, and a bad number is refused the same way."""
    cam = Camera(sdd=1020.0, height=12, width=10, delx=24.0)
    T = carm_pose(torch.tensor([0.0, 30.0]), torch.tensor([0.0, 5.0]), 620.0, sample_ct.get_isocenter())
    drr = DRR(sample_ct, cam, density=model, n_samples=64)
    for m in (1.0, 2.5):
        torch.testing.assert_close(drr(T, bone_attenuation_multiplier=m),
                                   drr(T, bone_attenuation_multiplier=torch.tensor([m, m])))
    torch.testing.assert_close(drr(T), drr(T, bone_attenuation_multiplier=torch.tensor(drr.default_multiplier)))
    for bad in (0.0, float("nan"), float("inf"), -2):
        with pytest.raises(InputError, match="multiplier"):
            drr(T, bone_attenuation_multiplier=bad)


@pytest.mark.parametrize("reverse", [False, True])
def test_k_inv_in_closed_form_is_the_inverse(reverse):
    cam = Camera(sdd=1020.0, height=31, width=40, delx=0.7, dely=0.9, x0=3.0, y0=-2.0, reverse_x_axis=reverse)
    torch.testing.assert_close(cam.K_inv(), torch.linalg.inv(cam.K()), rtol=0, atol=1e-15)
    assert cam.K_inv(torch.float32).dtype == torch.float32


def test_the_basis_is_laid_out_for_its_device(sample_ct):
    """Channels-last on the CPU (the fused kernel), channel planes elsewhere (the Triton kernel would copy
    a channels-last basis whole on every call); moving the module re-lays it out."""
    from xraypose.render.drr import _basis_layout

    drr = DRR(sample_ct, Camera(sdd=1020.0, height=8, width=8, delx=30.0))
    assert drr.basis.shape[0] == 2 and drr.basis.stride(0) == 1  # channels-last
    drr = drr.to(torch.float32)  # _apply ran: still laid out for the CPU
    assert drr.basis.stride(0) == 1 and not drr.basis.is_contiguous()
    other = _basis_layout(drr.basis.to("meta"))  # any other device: planes
    assert other.is_contiguous() and other.shape == drr.basis.shape
