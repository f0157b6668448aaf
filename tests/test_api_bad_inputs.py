"""Bad input to the Python API is one clear :class:`InputError` naming the argument (the command line's
refusals are in tests/test_bad_inputs.py): arrays of the wrong kind or shape, non-finite values, poses
that are no rigid transforms, objects of the wrong type."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from xraypose.camera import Camera, carm_pose
from xraypose.errors import InputError

F64 = torch.float64


@pytest.fixture(scope="module")
def cam():
    return Camera(sdd=1020.0, height=16, width=16, delx=400.0 / 16)


@pytest.fixture(scope="module")
def pose(sample_ct):
    return carm_pose(20.0, -5.0, sod=612.0, isocenter=sample_ct.get_isocenter())


@pytest.fixture(scope="module")
def image(sample_ct, cam, pose):
    from xraypose.api import render_drr

    return render_drr(sample_ct, cam, pose, n_samples=16)


@pytest.fixture(scope="module")
def registrar(sample_ct):
    from xraypose.register import Level, Registrar, RegistrationConfig

    cfg = RegistrationConfig(levels=(Level(size=16, iterations=2, n_samples=16, volume_mm=8.0),), shift_search=None,
                             foreign_steps=None, match_intensity=None)
    return Registrar(sample_ct, cfg)


def _reflected(T):
    T = T.clone()
    T[:3, 0] *= -1
    return T


def _scaled(T):
    T = T.clone()
    T[:3, :3] *= 1.3
    return T


# --------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------


@pytest.mark.parametrize("bad, words", [(_reflected, "reflection"), (_scaled, "not orthonormal")])
def test_a_start_that_is_no_rigid_transform_is_refused(sample_ct, registrar, image, cam, pose, bad, words):
    """A reflected or scaled start was optimised as it was: the 'registered pose' had det −1 or a scaled
    rotation, silently."""
    from xraypose.register import register_xray

    with pytest.raises(InputError, match=f"initial pose: not a rigid transform: .*{words}"):
        register_xray(sample_ct, image, cam, bad(pose), registrar=registrar, confidence=False)
    with pytest.raises(InputError, match=r"initial pose: .*\(pose \(0, 1\)\)"):
        registrar.register(image, cam, torch.stack([pose, bad(pose)])[None])


# --------------------------------------------------------------------------
# Camera
# --------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, words", [
    ("x0", "a", "principal-point offset x0 must be a number (mm), got 'a'"),
    ("y0", None, "principal-point offset y0 must be a number (mm), got None"),
    ("reverse_x_axis", "no", "reverse_x_axis must be True or False, got 'no'"),  # was True: mirrored
    ("reverse_x_axis", 2, "reverse_x_axis must be True or False, got 2"),
])
def test_camera_fields_of_the_wrong_kind_are_named(field, value, words):
    with pytest.raises(InputError, match=f"^{re.escape(words)}$"):
        Camera(sdd=1020.0, height=16, width=16, delx=1.0, **{field: value})


def test_camera_takes_numpy_sizes_and_flags():
    """An image's size computed with numpy (np.int64) is a whole number of pixels; np.bool_ is a flag."""
    cam = Camera(sdd=1020.0, height=np.int64(16), width=np.int32(12), delx=1.0, reverse_x_axis=np.bool_(True))
    assert (cam.height, cam.width, cam.reverse_x_axis) == (16, 12, True)
    assert type(cam.height) is int and type(cam.reverse_x_axis) is bool


@pytest.mark.parametrize("kw, words", [
    (dict(isocenter=[1.0, 2.0, float("nan")]), "isocenter must be 3 finite numbers (world RAS mm); got [1.0, 2.0, nan]"),
    (dict(isocenter=[1.0, 2.0]), "isocenter must be 3 finite numbers (world RAS mm); got [1.0, 2.0]"),
    (dict(isocenter=None), "isocenter must be 3 numbers (world RAS mm); got None"),
    (dict(primary="20"), "C-arm angles must be numbers (or tensors of one shape), got primary '20' and secondary 0.0"),
])
def test_carm_pose_names_a_bad_isocenter_or_angle(kw, words):
    """A NaN isocenter made a NaN pose silently; a short one or None raised torch's reshape error."""
    args = dict(primary=20.0, secondary=0.0, sod=600.0, isocenter=[0.0, 0.0, 0.0]) | kw
    with pytest.raises(InputError, match=f"^{re.escape(words)}$"):
        carm_pose(**args)


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


def test_drr_takes_numpy_poses_masks_and_patches_as_render_does(sample_ct, cam, pose):
    """``render`` took a numpy pose, the ``DRR`` module raised AttributeError ('ndarray' has no 'dim')."""
    from xraypose.render import DRR

    drr = DRR(sample_ct, cam, n_samples=16)
    want = drr(pose.float())
    assert torch.equal(drr(pose.float().numpy()), want)
    assert torch.equal(drr(pose.float().numpy()[None]), want)
    mask = np.zeros((16, 16), bool)
    mask[4:12, 4:12] = True
    assert torch.equal(drr(pose.float(), mask=mask), drr(pose.float(), mask=torch.from_numpy(mask)))
    centres = np.array([[8.0, 8.0]])
    assert torch.equal(drr(pose.float(), patches=centres, patch_size=5),
                       drr(pose.float(), patches=torch.from_numpy(centres), patch_size=5))
    with pytest.raises(InputError, match=r"pose must be \(4, 4\) or \(B, 4, 4\), got shape \(1, 3, 4\)"):
        drr(pose.numpy()[:3])


@pytest.mark.parametrize("shape_of, words", [
    (lambda T: T[:3], r"camera_to_world must be one pose \(4, 4\), got shape \(3, 4\)"),  # was torch's reshape error
    (lambda T: torch.stack([T, T]), r"got shape \(2, 4, 4\) \(a batch of poses: use xraypose.render.DRR\)"),  # was
    # the first pose's DRR, the second dropped silently
])
def test_render_drr_renders_one_pose_only(sample_ct, cam, pose, shape_of, words):
    from xraypose.api import render_drr

    with pytest.raises(InputError, match=words):
        render_drr(sample_ct, cam, shape_of(pose), n_samples=8)
    with pytest.raises(InputError, match=r"dtype must be a floating torch dtype .*got torch.int64"):
        render_drr(sample_ct, cam, pose, n_samples=8, dtype=torch.int64)  # said 'the pose does not see the CT'
    assert render_drr(sample_ct, cam, pose[None].numpy(), n_samples=8).shape == (16, 16)


# --------------------------------------------------------------------------
# Objects of the wrong type (each raised AttributeError/TypeError from deep inside)
# --------------------------------------------------------------------------


def test_objects_of_the_wrong_type_are_named(sample_ct, cam, pose, image, registrar):
    from xraypose.api import render_drr
    from xraypose.preprocess import preprocess
    from xraypose.register import Registrar, register_xray
    from xraypose.render import DRR

    vol = "volume must be an xraypose Volume (volume_from_array makes one of an array), got ndarray"
    for call, words in [
        (lambda: DRR(np.zeros((4, 4, 4)), cam), vol),
        (lambda: DRR(sample_ct, None), "camera must be an xraypose Camera, got NoneType"),
        (lambda: render_drr(sample_ct, None, pose), "camera must be an xraypose Camera, got NoneType"),
        (lambda: Registrar(np.zeros((4, 4, 4))), vol),
        (lambda: Registrar(sample_ct, {"similarity": "ncc"}),
         "config must be a RegistrationConfig (RegistrationConfig(**settings) makes one of a dict), got dict"),
        (lambda: Registrar(sample_ct, isocenter=[1.0, 2.0]), "isocenter must be 3 finite numbers (world RAS mm); "
                                                             "got [1.0, 2.0]"),
        (lambda: Registrar(sample_ct, isocenter=[1.0, 2.0, float("nan")]), "isocenter must be 3 finite numbers"),
        (lambda: register_xray(sample_ct, image, None, pose, registrar=registrar),
         "camera must be an xraypose Camera, got NoneType"),
        (lambda: register_xray(sample_ct, None, cam, pose, registrar=registrar),
         "image must be an array or tensor (H, W), (B, H, W) or (B, 1, H, W), got NoneType"),
        (lambda: register_xray(sample_ct, preprocess(image, cam), cam, pose, registrar=registrar),
         "got Preprocessed: pass its .image"),
        (lambda: register_xray(sample_ct, image, cam, None, registrar=registrar),
         "init must be start poses (4, 4), (B, 4, 4) or (B, K, 4, 4), or an initialiser, got NoneType"),
        (lambda: register_xray(sample_ct, image, cam, "pose.json", registrar=registrar), "init must be start poses"),
        (lambda: preprocess(image, "cam"), "camera must be an xraypose Camera or None, got str"),
    ]:
        with pytest.raises(InputError, match=re.escape(words)):
            call()


@pytest.mark.parametrize("bad, words", [
    (lambda T: T[:3], r"true_pose must be \(4, 4\) or \(B, 4, 4\) for B = 1 X-rays, got \(3, 4\)"),  # reshape error
    (lambda T: torch.full((4, 4), float("nan")), "true_pose: not a rigid transform: contains NaN"),  # 'no bone …'
    (_reflected, "true_pose: not a rigid transform: rotation part is a reflection"),
])
def test_register_xray_names_a_bad_true_pose(sample_ct, registrar, image, cam, pose, bad, words):
    from xraypose.register import register_xray

    with pytest.raises(InputError, match=words):
        register_xray(sample_ct, image, cam, pose, registrar=registrar, confidence=False, true_pose=bad(pose))
