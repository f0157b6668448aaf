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
    ("x0", "1.5", "principal-point offset x0 must be a number (mm), got '1.5'"),  # was 1.5 (finite_float)
    ("y0", True, "principal-point offset y0 must be a number (mm), got True"),  # was 1.0
    ("reverse_x_axis", "no", "reverse_x_axis = 'no' must be true or false"),  # was True: mirrored
    ("reverse_x_axis", 2, "reverse_x_axis = 2 must be true or false"),
    ("sdd", "1000", "source-to-detector distance (sdd) must be a number, got '1000'"),  # was 1000 mm
    ("delx", True, "pixel spacing delx must be a number, got True"),  # was 1 mm
    ("dely", "0.5", "pixel spacing dely must be a number, got '0.5'"),
])
def test_camera_fields_of_the_wrong_kind_are_named(field, value, words):
    with pytest.raises(InputError, match=f"^{re.escape(words)}$"):
        Camera(**{"sdd": 1020.0, "height": 16, "width": 16, "delx": 1.0, field: value})


@pytest.mark.parametrize("kw, words", [
    (dict(mu_water="0.02"), "mu_water must be a number, got '0.02'"),  # was read as 0.02
    (dict(mu_bone="0.05"), "mu_bone must be a number, got '0.05'"),
    (dict(mu_bone=True), "mu_bone must be a number, got True"),  # was μ 1/mm: 50 × bone's
    (dict(hu_bone="1000"), "hu_bone must be a number, got '1000'"),
    (dict(hu_bone=np.bool_(True)), f"hu_bone must be a number, got {np.bool_(True)!r}"),
])
def test_physical_density_refuses_a_text_or_bool(kw, words):
    from xraypose.volume import volume_from_array

    vol = volume_from_array(np.linspace(-1000.0, 1500.0, 8).reshape(2, 2, 2))
    with pytest.raises(InputError, match=f"^{re.escape(words)}$"):
        vol.density("physical", **kw)
    np_kw = {k: np.float64({"mu_water": 0.02, "mu_bone": 0.05, "hu_bone": 1000.0}[k]) for k in kw}  # NumPy's: numbers
    assert torch.isfinite(vol.density("physical", **np_kw)).all()


def test_an_appearance_parameter_given_as_text_is_named(sample_ct, cam, pose):
    from xraypose.appearance import form_xray

    with pytest.raises(InputError, match="^" + re.escape("scatter: spr must be a number, got '0.3'") + "$"):  # was 0.3
        form_xray(sample_ct, cam, pose, family="scatter", generator=torch.Generator().manual_seed(0), spr="0.3")


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
    (dict(isocenter=np.array([1.0 + 2j, 0.0, 0.0])), "isocenter must be 3 real numbers (world RAS mm); got [(1+2j), 0j, "
                                                     "0j]"),  # the imaginary part dropped with a warning
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


def _sheared(T):
    T = T.clone()
    T[0, 1] += 0.3
    return T


@pytest.mark.parametrize("bad, words", [
    (_reflected, "camera_to_world: not a rigid transform: rotation part is a reflection"),  # each rendered a DRR
    (_scaled, "camera_to_world: not a rigid transform: rotation part is not orthonormal"),  # no C-arm takes,
    (_sheared, "camera_to_world: not a rigid transform: rotation part is not orthonormal"),  # silently
    (lambda T: torch.cat([T[:3], torch.tensor([[0.5, 0.0, 0.0, 1.0]], dtype=T.dtype)]),
     "camera_to_world: not a rigid transform: last row is [0.5, 0.0, 0.0, 1.0], expected [0, 0, 0, 1]"),
    (lambda T: T.to(torch.complex128), "camera_to_world must hold real numbers, got torch.complex128"),  # the
    # imaginary part dropped with a warning
])
def test_render_drr_refuses_a_pose_that_is_no_rigid_transform(sample_ct, cam, pose, bad, words):
    from xraypose.api import render_drr

    with pytest.raises(InputError, match="^" + re.escape(words)):
        render_drr(sample_ct, cam, bad(pose), n_samples=8)
    want = render_drr(sample_ct, cam, pose, n_samples=8)
    assert torch.equal(render_drr(sample_ct, cam, pose.float()[None], n_samples=8), want)  # a float32 pose's error
    assert torch.equal(render_drr(sample_ct, cam, pose.tolist(), n_samples=8), want)


@pytest.mark.parametrize("bad, words", [
    (_reflected, "pose: not a rigid transform: rotation part is a reflection"),  # a mirrored DRR, silently
    (_scaled, "pose: not a rigid transform: rotation part is not orthonormal"),  # a magnified one
    (_sheared, "pose: not a rigid transform: rotation part is not orthonormal"),
    (lambda T: torch.stack([T, _reflected(T)]), "pose: not a rigid transform: rotation part is a reflection (det = -1) "
                                                "(pose 1)"),
])
def test_drr_refuses_a_pose_that_is_no_rigid_transform(sample_ct, cam, pose, bad, words):
    """DRR (the public module) checks a given pose; the low-level render() does not (registration's hot path,
    its poses rigid by construction: the check costs about a 16-row render)."""
    from xraypose.render import DRR

    drr, T = DRR(sample_ct, cam, n_samples=8), pose.float()
    for call in (lambda P: drr(P), lambda P: drr(P.numpy()), lambda P: drr(P, mask=torch.ones(16, 16, dtype=torch.bool))):
        with pytest.raises(InputError, match="^" + re.escape(words)):
            call(bad(T))
    assert torch.equal(drr(T.requires_grad_(True)).detach(), drr(T.detach()))  # a pose being optimised renders


@pytest.mark.parametrize("kw, words", [
    (dict(camera_to_world="pose", rotation=torch.zeros(1, 3), translation=torch.tensor([[0.0, 0.0, 600.0]])),
     "give a camera_to_world pose or rotation and translation parameters, not both"),  # the parameters ignored
    (dict(rotation=torch.zeros(1, 3, dtype=torch.int64), translation=torch.tensor([[0.0, 0.0, 600.0]])),
     "rotation parameters must be a floating-point tensor, got torch.int64"),  # torch's "expected scalar type Float
    # but found Long"
    (dict(rotation=torch.zeros(1, 3), translation=torch.tensor([[0, 0, 600]])),
     "translation must be a floating-point tensor, got torch.int64"),
    (dict(rotation=torch.zeros(2, 3), translation=torch.zeros(3, 3)),
     "rotation (2, 3) and translation (3, 3) parameters must be of one batch (their leading dimensions broadcast)"),
    # (torch's "The size of tensor a (2) must match the size of tensor b (3)")
    (dict(rotation=torch.zeros(1, 3), translation=torch.tensor([[0.0, 0.0, 600.0]]), parameterization="euler_angles",
          convention="ZXY", degrees="no"), "degrees = 'no' must be true or false"),  # was true: read as degrees
])
def test_drr_names_bad_pose_parameters(sample_ct, cam, pose, kw, words):
    from xraypose.geometry import pose_from_params
    from xraypose.render import DRR

    drr = DRR(sample_ct, cam, n_samples=8)
    if kw.get("camera_to_world") == "pose":
        kw["camera_to_world"] = pose.float()
    with pytest.raises(InputError, match="^" + re.escape(words) + "$"):
        drr(**kw)
    if "camera_to_world" not in kw:
        with pytest.raises(InputError, match="^" + re.escape(words) + "$"):
            pose_from_params(kw["rotation"], kw["translation"], kw.get("parameterization", "se3_log_map"),
                             kw.get("convention"), kw.get("degrees", False))
    assert pose_from_params(torch.zeros(3), torch.zeros(2, 3), "axis_angle", degrees=np.bool_(False)).shape == (2, 4, 4)


@pytest.mark.parametrize("kw, words", [
    (dict(patches=[[float("nan"), 8.0]]), "patches: a centre has NaN or infinite coordinates"),  # a patch of NaN
    (dict(patches=[8.0, 8.0]), "patches must be (P, 2) or (B, P, 2) pixel centres (u, v), got shape (2,)"),  # torch's
    # reshape error
    (dict(patches=[[8.0, 8.0, 1.0]]), "patches must be (P, 2) or (B, P, 2) pixel centres (u, v), got shape (1, 3)"),
    (dict(patches=[[8.0, 8.0]], patch_size=2.5), "patch_size = 2.5 must be a whole number >= 1"),  # reshape's TypeError
    (dict(patches=[[8.0, 8.0]], patch_size=0), "patch_size = 0 must be a whole number >= 1"),
    (dict(patches="centres.csv"), "patches must be an array or tensor of numbers, got str"),
])
def test_drr_names_bad_patches(sample_ct, cam, pose, kw, words):
    from xraypose.render import DRR

    drr = DRR(sample_ct, cam, n_samples=8)
    with pytest.raises(InputError, match="^" + re.escape(words) + "$"):
        drr(pose.float(), **kw)
    assert torch.equal(drr(pose.float(), patches=[[8.0, 8.0]], patch_size=5.0),
                       drr(pose.float(), patches=torch.tensor([[8.0, 8.0]]), patch_size=5))


def _collinear(A):
    A = A.clone()
    A[:3, 1] = A[:3, 0]
    return A


def _nan(A):
    A = A.clone()
    A[0, 3] = float("nan")
    return A


def test_render_takes_a_numpy_affine_and_names_a_bad_one(sample_ct, cam, pose):
    """A numpy affine raised AttributeError ('ndarray' has no 'double'), a (3, 3) one rendered a garbage image, a
    singular one raised torch's LinAlgError, a NaN one 'cannot convert float NaN to integer'."""
    from xraypose.render import render

    d, A, T = sample_ct.density("hu"), sample_ct.affine, pose.float()
    assert torch.equal(render(d, A.numpy(), cam, T, n_samples=16), render(d, A, cam, T, n_samples=16))
    for affine, words in [
        (A[:3, :3].clone(), "affine must be a (4, 4) voxel-index → world matrix, got shape (3, 3)"),
        ("affine.json", "affine must be a (4, 4) voxel-index → world matrix (a tensor or an array), got str"),
        (_collinear(A), "render: singular affine (voxel axes are collinear): [["),
        (_nan(A).numpy(), "render: affine has NaN or infinite entries: [["),
    ]:
        for backend in ("auto", "reference"):
            with pytest.raises(InputError, match="^" + re.escape(words)):
                render(d, affine, cam, T, n_samples=16, backend=backend)
    big = A.clone()
    big[:3, :3] *= 200.0  # voxels of 600 mm: no CT's, but render draws any invertible affine (a box of ones)
    assert render(d, big, cam, T, n_samples=16).shape == (1, 1, 16, 16)


@pytest.mark.parametrize("where, kw, words", [
    ("render", dict(step="1"), "step = '1' must be None or a finite number > 0"),  # was a TypeError
    ("render", dict(n_samples="32"), "n_samples = '32' must be None or a whole number >= 1"),  # a ctypes ArgumentError
    ("render", dict(n_samples=2.5), "n_samples = 2.5 must be None or a whole number >= 1"),
    ("DRR", dict(bone_attenuation_multiplier="2"), "bone_attenuation_multiplier = '2' must be a finite number > 0"),
    # (was taken as 2.0)
    ("DRR call", dict(bone_attenuation_multiplier="2"), "bone_attenuation_multiplier = '2' must be a finite number "
                                                        "> 0"),  # was a TypeError of torch.as_tensor
    ("render_drr", dict(bone_attenuation_multiplier="2"), "bone_attenuation_multiplier = '2' must be"),
    ("render_drr", dict(step="1"), "step = '1' must be None or a finite number > 0"),  # was a TypeError of '>'
    ("render_drr", dict(n_samples="16"), "n_samples = '16' must be None or a whole number >= 1"),
    ("volume_from_array", dict(spacing="1,1,1"), "spacing must be 3 numbers (mm), got '1,1,1'"),  # numpy's ValueError
    ("volume_from_array", dict(spacing=["1", "1", "1"]), "spacing must be 3 numbers (mm), got ['1', '1', '1']"),
    ("volume_from_array", dict(origin="0 0 0"), "origin must be 3 numbers (mm), got '0 0 0'"),
])
def test_a_text_where_a_number_goes_is_named(sample_ct, cam, pose, where, kw, words):
    from xraypose.api import render_drr
    from xraypose.render import DRR, render
    from xraypose.volume import volume_from_array

    T = pose.float()
    call = {
        "render": lambda: render(sample_ct.density("hu"), sample_ct.affine, cam, T, **kw),
        "DRR": lambda: DRR(sample_ct, cam, **kw),
        "DRR call": lambda: DRR(sample_ct, cam, n_samples=16)(T, **kw),
        "render_drr": lambda: render_drr(sample_ct, cam, T, **({"n_samples": 16} | kw)),
        "volume_from_array": lambda: volume_from_array(np.zeros((4, 4, 4)), **kw),
    }[where]
    with pytest.raises(InputError, match="^" + re.escape(words)):
        call()


def test_volume_from_array_takes_tensors_of_every_real_dtype():
    """A bfloat16 tensor (a model's output) raised NumPy's "TypeError: Got unsupported ScalarType BFloat16"."""
    from xraypose.volume import volume_from_array

    values = torch.linspace(-1000.0, 1000.0, 64).reshape(4, 4, 4)
    for dtype in (torch.bfloat16, torch.float16, torch.float64, torch.int16):
        vol = volume_from_array(values.to(dtype))
        assert torch.equal(vol.data, values.to(dtype).float())
    with pytest.raises(InputError, match="complex voxel values are not supported"):
        volume_from_array(values.to(torch.complex64))


def test_render_takes_numpy_numbers_for_samples_and_step(sample_ct, cam, pose):
    from xraypose.render import render

    d, A, T = sample_ct.density("hu"), sample_ct.affine, pose.float()
    assert torch.equal(render(d, A, cam, T, n_samples=np.int64(16)), render(d, A, cam, T, n_samples=16))
    assert torch.equal(render(d, A, cam, T, step=np.float32(2.5)), render(d, A, cam, T, step=2.5))


@pytest.mark.parametrize("kw, words", [
    (dict(rotate_180="no"), "rotate_180 = 'no' must be true or false"),  # was True: rotated
    (dict(rotate_180=1), "rotate_180 = 1 must be true or false"),
    (dict(rescale="no"), "rescale = 'no' must be true or false"),  # was True: rescaled
    (dict(rescale=None), "rescale = None must be true or false"),  # was False
    (dict(log=1), "log = 1 must be true or false"),  # was True: the log taken
    (dict(log=0), "log = 0 must be true or false"),  # was False
    (dict(log=1.0), "log = 1.0 must be true or false"),
    (dict(log="yes"), "log = 'yes' must be true, false or one of: intensity, log-intensity, attenuation"),
])
def test_preprocess_flags_must_be_bools(image, cam, kw, words):
    from xraypose.preprocess import plan_geometry, preprocess

    with pytest.raises(InputError, match="^" + re.escape(words) + "$"):
        preprocess(image, cam, **kw)
    if "rotate_180" in kw:
        with pytest.raises(InputError, match="^" + re.escape(words) + "$"):
            plan_geometry(16, 16, cam, **kw)
    flag = next(iter(kw))  # NumPy's bools are flags
    assert torch.equal(preprocess(image, cam, **{flag: np.bool_(True)}).image, preprocess(image, cam, **{flag: True}).image)


@pytest.mark.parametrize("blur", [
    "12",  # was iterated: kernel 1, σ 2
    "1.0", (5, "1"), (True, 1.0), (5, False), (4, 1.0), (5.5, 1.0), (0, 1.0), (5, -1.0), (5, float("nan")),
    (5, 1.0, 2), (5,), -1.0, float("inf"), {"sigma": 1.0},
])
def test_preprocess_names_a_bad_blur(image, cam, blur):
    from xraypose.preprocess import BLUR_FORMS, preprocess

    with pytest.raises(InputError, match="^" + re.escape(f"blur = {blur!r} must be {BLUR_FORMS}") + "$"):
        preprocess(image, cam, blur=blur)


def test_preprocess_takes_the_blurs_its_callers_give(image, cam):
    """None, False and a σ of 0 (the command line's --blur 0): no blur; True: 5×5, σ 1; a σ (NumPy's too); a
    (kernel, σ) pair, as a list from JSON, its kernel a whole float too."""
    from xraypose.preprocess import preprocess

    def blur_step(b):
        return [s for s in preprocess(image, cam, blur=b).steps if s["step"] == "blur"]

    for none in (None, False, 0, 0.0, (5, 0.0)):
        assert blur_step(none) == []
    want = [{"step": "blur", "kernel_size": 5, "sigma": 1.0, "domain": "line-integral"}]
    for b in (True, np.bool_(True), 1.0, np.float32(1.0), (5, 1.0), [5, 1], (np.int64(5), 1.0), (5.0, 1.0)):
        assert blur_step(b) == want, b
    assert blur_step((3, 0.5))[0]["kernel_size"] == 3


@pytest.mark.parametrize("background, words", [
    (True, "background = True must be a finite number, 'min', 'mode' or ('percentile', p)"),  # was 1.0
    (np.bool_(False), f"background = {np.bool_(False)!r} must be a finite number, 'min', 'mode' or ('percentile', p)"),
    (float("nan"), "background = nan must be a finite number, 'min', 'mode' or ('percentile', p)"),
    (("pct", 5), "background = ('pct', 5) must be a finite number, 'min', 'mode' or ('percentile', p)"),
    ("2", "unknown background '2'; use a number, 'min', 'mode' or ('percentile', p)"),
    (("percentile", "5"), "background percentile = '5' must be a finite number in [0, 100]"),  # was 5
    (("percentile", True), "background percentile = True must be a finite number in [0, 100]"),  # was 1
    (("percentile", 101), "background percentile = 101 must be a finite number in [0, 100]"),
])
def test_a_bad_background_is_named(image, cam, background, words):
    from xraypose.preprocess import preprocess, subtract_background

    with pytest.raises(InputError, match="^" + re.escape(words) + "$"):
        subtract_background(image, background)
    with pytest.raises(InputError, match="^" + re.escape(words) + "$"):
        preprocess(image, cam, background=background)


def test_background_takes_numbers_and_its_modes(image):
    from xraypose.preprocess import subtract_background

    assert subtract_background(image, np.float32(0.5))[1] == 0.5
    assert subtract_background(image, 0)[1] == 0.0
    assert subtract_background(image, ["percentile", np.int64(0)])[1] == float(image.min())
    assert subtract_background(image, "min")[1] == float(image.min())


def test_a_channels_last_image_is_named(sample_ct, registrar, image, cam, pose):
    """An (H, W, 1) image was read as (B = H, 1, W, 1): 'X-ray is 16×1 pixels but its intrinsics describe a
    16×16 detector'."""
    from xraypose.preprocess import check_not_channels_last
    from xraypose.register import register_xray

    words = "image of shape (16, 16, 1) looks channels-last (H, W, 1): pass (H, W) or (B, 1, H, W), e.g. image[..., 0]"
    with pytest.raises(InputError, match="^" + re.escape(words) + "$"):
        register_xray(sample_ct, image[..., None], cam, pose, registrar=registrar, confidence=False)
    with pytest.raises(InputError, match=re.escape("image of shape (1, 16, 16, 1) looks channels-last (B, H, W, 1)")):
        register_xray(sample_ct, image[None, ..., None].numpy(), cam, pose, registrar=registrar, confidence=False)
    with pytest.raises(InputError, match="^" + re.escape("X-ray: " + words) + "$"):
        registrar.register(image[..., None], cam, pose[None, None])
    for rgb, layout in [(image[..., None].expand(16, 16, 3), "(H, W, 3)"),  # was 'X-ray is 16×3 pixels but its
                        (image[None, ..., None].expand(1, 16, 16, 4).numpy(), "(B, H, W, 4)")]:  # intrinsics …'
        words = (f"image of shape {tuple(rgb.shape)} looks like a colour image {layout}: pass one grey channel (H, W) "
                 "or (B, 1, H, W), e.g. image[..., 0]")
        with pytest.raises(InputError, match="^" + re.escape(words) + "$"):
            register_xray(sample_ct, rgb, cam, pose, registrar=registrar, confidence=False)
        with pytest.raises(InputError, match="^" + re.escape("X-ray: " + words) + "$"):
            registrar.register(rgb, cam, pose[None, None])
    three = Camera(sdd=1020.0, height=16, width=3, delx=25.0)  # a detector 3 pixels wide: (B, H, 3) is a batch
    check_not_channels_last(image[None, :, :3], three)


def test_an_unsigned_integer_image_registers_as_its_values(sample_ct, registrar, image, cam, pose):
    """A uint16 X-ray (a 16-bit PNG's or TIFF's, as an image library reads it) raised torch's NotImplementedError
    '"max_values_cpu" not implemented for 'UInt16'' from the constant-image check."""
    from xraypose.register import register_xray

    u16 = (image / image.max() * 60000).numpy().astype(np.uint16)
    want = register_xray(sample_ct, u16.astype(np.float32), cam, pose, registrar=registrar, confidence=False)[0]
    for x in (u16, torch.from_numpy(u16), u16.astype(np.uint32)):
        got = register_xray(sample_ct, x, cam, pose, registrar=registrar, confidence=False)[0]
        assert torch.equal(got.camera_to_world, want.camera_to_world)
    assert torch.equal(registrar.register(u16, cam, pose[None, None]).poses, registrar.register(
        u16.astype(np.float32), cam, pose[None, None]).poses)


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
         "init (start poses (4, 4), (B, 4, 4) or (B, K, 4, 4), or an initialiser) must be an array or tensor of "
         "numbers, got NoneType"),
        (lambda: register_xray(sample_ct, image, cam, "pose.json", registrar=registrar), "init (start poses"),
        (lambda: preprocess(image, "cam"), "camera must be an xraypose Camera or None, got str"),
    ]:
        with pytest.raises(InputError, match=re.escape(words)):
            call()


def test_meta_tensors_are_named_where_they_enter(sample_ct, cam, pose, image, registrar):
    """A tensor on PyTorch's meta device holds no values: torch's 'Tensor.item() cannot be called on meta tensors'
    escaped from deep inside render_drr and register_xray."""
    from xraypose.api import render_drr
    from xraypose.register import register_xray
    from xraypose.volume import Volume

    meta = "is a tensor on PyTorch's 'meta' device (a shape without values)"
    data, affine = sample_ct.data, sample_ct.affine
    for call, what in [
        (lambda: Volume(data=data.to("meta"), affine=affine), "Volume data"),
        (lambda: Volume(data=data, affine=affine.to("meta")), "Volume affine"),
        (lambda: Volume(data=data, affine=affine, isocenter=torch.zeros(3, device="meta")), "isocenter"),
        (lambda: Volume(data=data, affine=affine, labels=torch.zeros(data.shape, dtype=torch.int64, device="meta")),
         "labels"),
        (lambda: render_drr(sample_ct, cam, pose.to("meta"), n_samples=16), "camera_to_world"),
        (lambda: register_xray(sample_ct, image.to("meta"), cam, pose, registrar=registrar), "image"),
        (lambda: register_xray(sample_ct, image, cam, pose.to("meta"), registrar=registrar),
         "init (start poses (4, 4), (B, 4, 4) or (B, K, 4, 4), or an initialiser)"),
        (lambda: register_xray(sample_ct, image, cam, pose, registrar=registrar, confidence=False,
                               true_pose=pose.to("meta")), "true_pose"),
        (lambda: register_xray(sample_ct, image, cam, pose, registrar=registrar, confidence=False,
                               masks=torch.ones(image.shape, device="meta")), "masks"),
    ]:
        with pytest.raises(InputError, match="^" + re.escape(f"{what} {meta}")):
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


def test_register_xray_names_fiducials_of_a_bad_shape(sample_ct, registrar, image, cam, pose):
    """(N, 2) fiducials raised torch's "shape '[-1, 3]' is invalid for input of size 10"; one X-ray's points as
    (1, N, 3) beside two X-rays raised an IndexError after both registrations."""
    from xraypose.register import register_xray

    iso = sample_ct.get_isocenter().to(F64)
    for fid, got in [(torch.zeros(5, 2), "(5, 2)"), (iso.expand(2, 5, 3), "(2, 5, 3)"), (iso.expand(5, 1, 3, 3), "(5, 1, 3, 3)")]:
        with pytest.raises(InputError, match="^" + re.escape("fiducials must be (N, 3) or (B, N, 3) world points for "
                                                             f"B = 1 X-rays, got {got}") + "$"):
            register_xray(sample_ct, image, cam, pose, registrar=registrar, confidence=False, true_pose=pose,
                          fiducials=fid)
    two = register_xray(sample_ct, torch.stack([image, image]), cam, pose, registrar=registrar, confidence=False,
                        true_pose=pose, fiducials=iso.expand(1, 5, 3))
    one = register_xray(sample_ct, image, cam, pose, registrar=registrar, confidence=False, true_pose=pose,
                        fiducials=iso.expand(5, 3))[0]
    assert [r.metrics["mtre"] for r in two] == [one.metrics["mtre"]] * 2


# --------------------------------------------------------------------------
# RegistrationConfig and Level: every field checked at construction
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kw, words", [
    (dict(patience=-1), "config: patience = -1 must be a whole number >= 1"),
    (dict(patience=0), "config: patience = 0 must be a whole number >= 1"),  # reduced the rates every iteration
    (dict(num_threads=-1), "config: num_threads = -1 must be None or a whole number >= 0"),
    (dict(num_threads=1.5), "config: num_threads = 1.5 must be None or a whole number >= 0"),
    (dict(drr_blur=-1), "config: drr_blur = -1 must be None or a finite number >= 0"),
    (dict(mix_alpha=float("nan")), "config: mix_alpha = nan must be a finite number in [0, 1]"),
    (dict(mix_alpha=1.5), "config: mix_alpha = 1.5 must be a finite number in [0, 1]"),
    (dict(ncc_patch=0), "config: ncc_patch = 0 must be a whole number >= 3"),
    (dict(ncc_weights=(0.5,)), "config: ncc_weights = (0.5,) must be (whole image, patches), two numbers >= 0"),
    (dict(ncc_weights=(-1, 1)), "config: ncc_weights[0] = -1 must be a finite number >= 0"),
    (dict(ncc_weights=(0, 0)), "config: ncc_weights = (0, 0) must not be both 0"),
    (dict(rel_tol=-1), "config: rel_tol = -1 must be a finite number >= 0"),
    (dict(max_recoveries=-2), "config: max_recoveries = -2 must be a whole number >= 0"),
    (dict(max_reductions=-1), "config: max_reductions = -1 must be a whole number >= 0"),
    (dict(seed="a"), "config: seed = 'a' must be a whole number in [0, 4294967295]"),
    (dict(seed=-1), "config: seed = -1 must be a whole number in [0, 4294967295]"),
    (dict(adam_betas=(2, 2)), "config: adam_betas[0] = 2 must be a finite number in [0, 1)"),
    (dict(adam_betas=(0.9, 1.0)), "config: adam_betas[1] = 1.0 must be a finite number in [0, 1)"),  # 1/(1 − β²ᵗ)
    (dict(adam_betas=0.9), "config: adam_betas = 0.9 must be (β1, β2), two numbers in [0, 1)"),
    (dict(step_gamma=0), "config: step_gamma = 0 must be a finite number in (0, 1]"),
    (dict(step_every=0), "config: step_every = 0 must be a whole number >= 1"),  # a modulo by zero
    (dict(plateau_factor=-0.5), "config: plateau_factor = -0.5 must be a finite number in (0, 1]"),
    (dict(adam_tol_px=float("inf")), "config: adam_tol_px = inf must be a finite number >= 0"),
    (dict(adam_patience=0), "config: adam_patience = 0 must be a whole number >= 1"),
    (dict(lm_hessian_every=0), "config: lm_hessian_every = 0 must be a whole number >= 1"),
    (dict(record_trajectory="no"), "config: record_trajectory = 'no' must be true or false"),
    (dict(lm_linearised=1), "config: lm_linearised = 1 must be true or false"),
    (dict(revisit=None), "config: revisit = None must be true or false"),
    (dict(convention="ABC"), "config: convention = 'ABC' must be None or an Euler axis sequence"),
    (dict(convention="XYZ"), "config: convention = 'XYZ' is the axis sequence of Euler angles, but "
                             "parameterization = 'se3_log_map' (it would be ignored)"),
    (dict(lr_rot=True), "config: lr_rot = True must be a finite number > 0"),
    (dict(levels=16), "config: levels = 16 must be a list of Level objects"),
    (dict(levels=[{"size": 16, "speed": 2}]), "config: levels = {'size': 16, 'speed': 2} is not a level: "),
    (dict(levels=[{"size": "16"}]), "config: Level.size = '16' must be a whole number >= 4"),
])
def test_registration_config_names_a_bad_field(kw, words):
    from xraypose.register import RegistrationConfig

    with pytest.raises(InputError, match="^" + re.escape(words)) as e:
        RegistrationConfig(**kw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("field, value, words", [
    ("levels", (), "a registration needs at least one level"),  # the start was returned as the registered pose
    ("patience", -5, "config: patience = -5 must be a whole number >= 1"),
    ("similarity", "mi", "unknown similarity 'mi'"),
])
def test_a_config_field_set_after_construction_is_checked_too(sample_ct, image, cam, pose, field, value, words):
    from xraypose.register import Level, Registrar, RegistrationConfig, register_xray

    cfg = RegistrationConfig(levels=(Level(size=16, iterations=2, n_samples=16, volume_mm=8.0),), shift_search=None,
                             foreign_steps=None, match_intensity=None)
    setattr(cfg, field, value)
    with pytest.raises(InputError, match="^" + re.escape(words)):
        register_xray(sample_ct, image, cam, pose, config=cfg, confidence=False)
    with pytest.raises(InputError, match="^" + re.escape(words)):
        Registrar(sample_ct, cfg)


def test_levels_whose_size_gets_smaller_are_refused():
    from xraypose.register import Level, RegistrationConfig

    with pytest.raises(InputError, match=re.escape("config: level sizes = [16, 32, 16] must not get smaller")):
        RegistrationConfig(levels=(Level(size=16), Level(size=32), Level(size=16)))


@pytest.mark.parametrize("kw, words", [
    (dict(size="16"), "config: Level.size = '16' must be a whole number >= 4"),  # was a TypeError of '<'
    (dict(size=2), "config: Level.size = 2 must be a whole number >= 4"),
    (dict(iterations=2.5), "config: Level.iterations = 2.5 must be a whole number >= 0"),
    (dict(iterations=-1), "config: Level.iterations = -1 must be a whole number >= 0"),
    (dict(n_samples=0), "config: Level.n_samples = 0 must be None or a whole number >= 1"),
    (dict(volume_mm=-4.0), "config: Level.volume_mm = -4.0 must be None or a finite number > 0"),
    (dict(step_mm=0), "config: Level.step_mm = 0 must be None or a finite number > 0"),
    (dict(patches=0), "config: Level.patches = 0 must be None or a whole number >= 1"),
    (dict(patch_size=2), "config: Level.patch_size = 2 must be a whole number >= 3"),
    (dict(lr_scale=0), "config: Level.lr_scale = 0 must be a finite number > 0"),
    (dict(depth_lr_scale=float("nan")), "config: Level.depth_lr_scale = nan must be a finite number >= 0"),
    (dict(robust_c=-1.0), "config: Level.robust_c = -1.0 must be a finite number > 0"),
    (dict(fit_bone="yes"), "config: Level.fit_bone = 'yes' must be true or false"),
    (dict(robust=1), "config: Level.robust = 1 must be true or false"),
    (dict(optimizer="newton"), "config: Level.optimizer = 'newton' is not one of: adam, lm"),
    (dict(similarity="mi"), "config: Level.similarity = 'mi' is not one of: mncc, ncc, gncc, mixed"),
    (dict(fit_unsharp=(0.0,)), "config: Level.fit_unsharp = (0.0,) must be a list of blur widths in mm, each > 0"),
])
def test_level_names_a_bad_field(kw, words):
    from xraypose.register import Level

    with pytest.raises(InputError, match="^" + re.escape(words)) as e:
        Level(**{"size": 16, **kw})
    assert "\n" not in str(e.value)


def test_config_checks_keep_what_the_code_base_uses():
    """The values used on purpose pass: a level of 0 iterations (the confidence check's), 4 rows, two levels of one
    size, None or 0 threads (torch's own), no blur as 0, NumPy numbers; a config read back from its JSON (lists for
    tuples) is the same config."""
    import dataclasses
    import json

    from xraypose.register import DEFAULT_LEVELS, Level, RegistrationConfig
    from xraypose.register.confidence import CHECK_LEVEL
    from xraypose.register.tracking import TRACKING_LEVELS

    assert CHECK_LEVEL.iterations == 0 and dataclasses.replace(DEFAULT_LEVELS[0], iterations=0).iterations == 0
    cfg = RegistrationConfig(levels=(Level(size=4), Level(size=16), Level(size=16, optimizer="lm")), num_threads=0,
                             drr_blur=0.0, seed=np.int64(3), max_recoveries=0, rel_tol=0, mix_alpha=1)
    assert cfg.num_threads == 0 and type(cfg.seed) is int and cfg.seed == 3
    assert RegistrationConfig(num_threads=None, drr_blur=None, levels=TRACKING_LEVELS).num_threads is None
    lv = Level(size=np.int64(32), iterations=2.0, fit_bone=np.bool_(True), fit_unsharp=[3.0, 9])
    assert (lv.size, lv.iterations, lv.fit_bone, lv.fit_unsharp) == (32, 2, True, (3.0, 9))
    assert type(lv.size) is int and type(lv.iterations) is int and type(lv.fit_bone) is bool
    assert RegistrationConfig(parameterization="euler_angles", convention="zxz").convention == "zxz"
    for c in (RegistrationConfig(), cfg, RegistrationConfig(levels=(lv,), adam_betas=[0.0, 0.5])):
        assert RegistrationConfig(**json.loads(json.dumps(c.to_dict()))) == c


# --------------------------------------------------------------------------
# register_xray, Registrar.register_views and track_sequence: arguments of the wrong kind
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kw, words", [
    (dict(antipodal="no"), "antipodal = 'no' must be true or false"),  # was true: antipodal starts added
    (dict(confidence="no"), "confidence = 'no' must be true or false"),  # was true: checked
    (dict(hypotheses=0), "hypotheses = 0 must be true or false"),
    (dict(registrar="fast"), "registrar must be an xraypose Registrar, got str"),  # AttributeError ('register')
    (dict(image=np.array([[None] * 16] * 16)), "image must be an array or tensor of numbers, got ndarray of object"),
    (dict(image="complex"), "image must hold real numbers, got torch.complex64"),  # NotImplementedError ('max_values')
    (dict(init="complex"), "init (start poses (4, 4), (B, 4, 4) or (B, K, 4, 4), or an initialiser) must hold "
                          "real numbers, got torch.complex64"),  # the imaginary part
    # dropped with a warning, registered
    (dict(masks="mask.png"), "masks must be an array or tensor of numbers, got str"),  # torch's TypeError
    (dict(true_pose="truth.json"), "true_pose must be an array or tensor of numbers, got str"),
    (dict(fiducials="f.csv"), "fiducials must be an array or tensor of numbers, got str"),  # TypeError, after the
    # registration
])
def test_register_xray_names_an_argument_of_the_wrong_kind(sample_ct, registrar, image, cam, pose, kw, words):
    from xraypose.register import register_xray

    args = dict(image=image, init=pose, registrar=registrar, confidence=False)
    if "fiducials" in kw:
        args["true_pose"] = pose
    for k in ("image", "init"):
        if isinstance(kw.get(k), str) and kw[k] == "complex":
            kw = {k: args[k].to(torch.complex64)}
    args |= kw
    with pytest.raises(InputError, match="^" + re.escape(words) + "$"):
        register_xray(sample_ct, args.pop("image"), cam, args.pop("init"), **args)


def test_registrar_names_views_and_cameras_of_the_wrong_kind(registrar, image, cam, pose):
    for call, words in [
        (lambda: registrar.register(image, None, pose[None]), "camera must be an xraypose Camera, got NoneType"),
        # (AttributeError 'height')
        (lambda: registrar.register_views(image[None, None], pose[None]), "views must be a list of (images, camera, "
                                                                           "camera_to_rig) or (images, camera, "
                                                                           "camera_to_rig, masks) tuples, got Tensor"),
        # (RuntimeError: Boolean value of Tensor with more than one value is ambiguous)
        (lambda: registrar.register_views([(image, cam)], pose[None]), "view 0 must be (images, camera, camera_to_rig)"
                                                                        " or (images, camera, camera_to_rig, masks), "
                                                                        "got 2 elements"),  # a TypeError
    ]:
        with pytest.raises(InputError, match="^" + re.escape(words) + "$"):
            call()


@pytest.mark.parametrize("kw, words", [
    (dict(start="3x4"), "start must be one pose (4, 4) (of frame 0), got shape (3, 4)"),  # torch's reshape error
    (dict(start="2 poses"), "start must be one pose (4, 4) (of frame 0), got shape (2, 4, 4)"),
    (dict(frames="seq.tif"), "frames must be an array or tensor of numbers, got str"),  # torch's TypeError
    (dict(confidence="no"), "confidence = 'no' must be true or false"),  # was true
    (dict(overlap_check="no"), "overlap_check = 'no' must be true or false"),  # was true
    (dict(vouch_failed="no"), "vouch_failed = 'no' must be true or false"),  # was true
    (dict(tracking_levels=5), "tracking_levels must be a list of Level objects, got int"),  # TypeError
    (dict(progress=5), "progress must be None or a callable progress(FrameResult), got int"),  # TypeError after a
    # frame's registration
    (dict(registrar="reg"), "registrar must be an xraypose Registrar, got str"),  # AttributeError ('config')
    (dict(views="frames too"), "give frames and their camera, or views, not both"),  # the frames passed over
])
def test_track_sequence_names_an_argument_of_the_wrong_kind(registrar, image, cam, pose, kw, words):
    from xraypose.register.tracking import track_sequence

    frames = torch.stack([image, image])
    args = dict(registrar=registrar, frames=frames, camera=cam, start=pose, confidence=False, overlap_check=False)
    args |= kw
    if isinstance(args["start"], str):
        args["start"] = {"3x4": pose[:3], "2 poses": torch.stack([pose, pose])}[args["start"]]
    if args.get("views") == "frames too":
        args["views"] = [(frames[:, None], cam, torch.eye(4))]
    with pytest.raises(InputError, match="^" + re.escape(words) + "$"):
        track_sequence(args.pop("registrar"), args.pop("frames"), args.pop("camera"), args.pop("start"), **args)


def test_camera_resize_and_from_dict_name_a_bad_value():
    """resize(8.5, 8) was an 8×8 detector, resize('8', 8) too (int() of either); from_dict of a text raised
    'string indices must be integers', and a reverse_x_axis 'false' was bool('false'): mirrored."""
    cam = Camera(sdd=1020.0, height=16, width=16, delx=25.0)
    for h, w in [(8.5, 8), ("8", 8), (8, True)]:
        with pytest.raises(InputError, match="^" + re.escape(f"cannot resize the detector to {h!r}×{w!r} pixels "
                                                             "(whole numbers of pixels)") + "$"):
            cam.resize(h, w)
    assert cam.resize(np.int64(8), 8.0) == cam.resize(8, 8)  # NumPy's and whole floats: numbers of pixels
    with pytest.raises(InputError, match=r"^camera description must be a dict of intrinsics \(sdd_mm, delx_mm, "
                                         r"height, width\), got str$"):
        Camera.from_dict("camera.json")
    with pytest.raises(InputError, match="^" + re.escape("reverse_x_axis = 'false' must be true or false") + "$"):
        Camera.from_dict({**cam.to_dict(), "reverse_x_axis": "false"})
    assert Camera.from_dict(cam.to_dict()) == cam


@pytest.mark.parametrize("bad, words", [
    (_scaled, "camera_to_world: not a rigid transform: rotation part is not orthonormal"),  # written, then refused
    (_reflected, "camera_to_world: not a rigid transform: rotation part is a reflection"),  # by read_pose_json
    (lambda T: torch.full((4, 4), float("nan"), dtype=F64), "camera_to_world: not a rigid transform: contains NaN"),
    # (a file of NaN: not JSON)
    (lambda T: T[:3], "camera_to_world must be one pose (4, 4), got shape (3, 4)"),  # torch's reshape error
    (lambda T: torch.stack([T, T]), "camera_to_world must be one pose (4, 4), got shape (2, 4, 4)"),
    (lambda T: T.to(torch.complex128), "camera_to_world must hold real numbers, got torch.complex128"),
])
def test_pose_exports_refuse_a_matrix_that_is_no_pose(tmp_path, cam, pose, bad, words):
    from xraypose.export import write_pose_json, write_slicer_transform

    for write, name in [(write_pose_json, "pose.json"), (write_slicer_transform, "pose.tfm")]:
        with pytest.raises(InputError, match="^" + re.escape(words)):
            write(tmp_path / name, bad(pose))
        assert not (tmp_path / name).exists()
    write_pose_json(tmp_path / "pose.json", pose.float()[None].numpy(), cam)  # a float32 pose, as an array
    write_slicer_transform(tmp_path / "pose.tfm", pose.tolist())


@pytest.mark.parametrize("kw, words", [
    (dict(photons=-1.0), "photons = -1.0 must be a finite number >= 0"),  # each turned the noise off, silently
    (dict(photons=float("nan")), "photons = nan must be a finite number >= 0"),
    (dict(photons="1e5"), "photons = '1e5' must be a finite number >= 0"),  # was read as 1e5
    (dict(blur_px=-0.7), "blur_px = -0.7 must be a finite number >= 0"),  # the blur turned off
    (dict(supersample=1.5), "supersample = 1.5 must be a whole number >= 1"),  # was 1
    (dict(collimator_px=2.5), "collimator_px = 2.5 must be a whole number >= 0"),  # was 2
    (dict(i0="65000"), "i0 = '65000' must be a finite number in (0, 65535]"),  # a TypeError of '<'
    (dict(camera=None), "camera must be an xraypose Camera, got NoneType"),  # AttributeError ('height')
    (dict(pose="3x4"), "camera_to_world must be (4, 4) or (B, 4, 4), got shape (3, 4)"),  # torch's reshape error
])
def test_xray_simulator_names_a_bad_setting(sample_ct, cam, pose, kw, words):
    from xraypose.synthetic import XraySimulator

    args = dict(camera=cam, supersample=1) | kw
    T = args.pop("pose", pose)
    with pytest.raises(InputError, match="^" + re.escape(words) + "$"):
        XraySimulator(sample_ct, **args)(pose[:3] if isinstance(T, str) else T)
    sim = XraySimulator(sample_ct, cam, supersample=np.int64(1), photons=0, blur_px=0)  # 0: no noise, no blur
    assert torch.equal(sim(pose.numpy()).raw, sim(pose).raw)


def test_render_drr_refuses_negative_line_integrals_but_not_a_mu_maps_noise(cam):
    """The "raw" density takes voxel values as attenuations: a HU CT rendered with it (air −1000) is refused, a
    μ map (mm⁻¹) whose air holds slightly negative reconstruction noise renders."""
    from xraypose.api import render_drr
    from xraypose.volume import volume_from_array

    rng = np.random.default_rng(0)
    mu = rng.normal(0.0, 2e-4, (40, 40, 40)).astype(np.float32)  # air: noise about 0
    mu[10:30, 10:30, 10:30] += 0.02  # water-like block
    vol = volume_from_array(mu, spacing=(2.0, 2.0, 2.0))
    T = carm_pose(0.0, 0.0, sod=600.0, isocenter=vol.get_isocenter())
    img = render_drr(vol, cam, T, n_samples=64, density="raw")
    assert float(img.min()) < 0 < float(img.max())  # the noise does reach below zero somewhere
    hu = volume_from_array(np.where(mu > 0.01, 0.0, -1000.0).astype(np.float32), spacing=(2.0, 2.0, 2.0))
    with pytest.raises(InputError, match="negative line integrals"):
        render_drr(hu, cam, T, n_samples=64, density="raw")
