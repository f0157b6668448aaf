"""PoseRegressor, its input contract (resampling, normalisation), checkpoints and predict_pose."""

import re

import pytest
import torch

from xraypose.camera import Camera, carm_pose
from xraypose.errors import InputError
from xraypose.geometry import ROTATION_PARAMETERIZATIONS, check_rigid
from xraypose.model import (
    PoseRegressor,
    checkpoint_dict,
    load_checkpoint,
    normalize_images,
    predict_pose,
    read_checkpoint,
    resample_to_camera,
    save_checkpoint,
)
from xraypose.render import DRR
from xraypose.sampling import PoseSampler
from xraypose.similarity import ncc

TINY = "test_resnet"  # timm's tiny test network: fast tests, same code path as resnet18


@pytest.fixture(scope="module")
def sampler(sample_ct):
    return PoseSampler.for_volume(sample_ct, sod=612.0)


def _meta(camera, sampler, mean=0.3, std=0.2):
    return {
        "camera": camera.to_dict(), "image_size": [camera.height, camera.width],
        "isocenter_pose": sampler.isocenter_pose.tolist(), "isocenter": sampler.isocenter.tolist(),
        "sod_mm": 612.0, "normalization": {"mean": mean, "std": std, "fill": 0.0},
    }


@pytest.mark.parametrize("parameterization", list(ROTATION_PARAMETERIZATIONS))
@pytest.mark.parametrize("pivot", [0.0, 612.0])
def test_every_parameterization_round_trips_and_outputs_a_rigid_pose(parameterization, pivot, sampler):
    model = PoseRegressor(TINY, parameterization, isocenter_pose=sampler.isocenter_pose, pivot_mm=pivot)
    poses = sampler.sample(32, torch.Generator().manual_seed(0), dtype=torch.float64)
    model.fit_output_scaling(poses)
    rot, trans = model.pose_to_params(poses)
    assert rot.shape == (32, ROTATION_PARAMETERIZATIONS[parameterization])
    back = model.params_to_pose(rot, trans)
    assert (back.double() - poses).abs()[:, :3, :3].max() < 1e-4
    assert (back.double() - poses).abs()[:, :3, 3].max() < 0.05  # mm, float32
    out = model(torch.randn(3, 1, 32, 32))
    assert out.shape == (3, 4, 4)
    check_rigid(out)
    # Heads start near zero: the first predictions are the mean training pose.
    model_mean = model.params_to_pose(model.rotation_mean[None], model.translation_mean[None])
    assert (out - model_mean)[:, :3, :3].abs().max() < 0.02 and (out - model_mean)[:, :3, 3].abs().max() < 10.0


def test_pivot_decouples_rotation_from_translation(sampler):
    poses = sampler.sample(256, torch.Generator().manual_seed(1), dtype=torch.float64)
    stds = []
    for pivot in (0.0, 612.0):
        m = PoseRegressor(TINY, isocenter_pose=sampler.isocenter_pose, pivot_mm=pivot)
        m.fit_output_scaling(poses)
        stds.append(m.translation_std[:2])
    # About the isocenter, a C-arm tilt is not a translation: x/y offsets shrink a lot.
    assert (stds[1] < 0.5 * stds[0]).all()


def test_group_norm_and_pool_grid():
    m = PoseRegressor(TINY, norm="group", pool_grid=2)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())
    assert any(isinstance(x, torch.nn.GroupNorm) for x in m.modules())
    assert m(torch.randn(1, 1, 32, 32)).shape == (1, 4, 4)  # batch of 1 works with group norm
    for bad in (dict(norm="layer"), dict(parameterization="rodrigues"), dict(pool_grid=0), dict(backbone="nope_net")):
        with pytest.raises(InputError):
            PoseRegressor(**{"backbone": TINY, **bad})


def test_local_weights_file(tmp_path):
    import timm

    src = timm.create_model(TINY, in_chans=3, num_classes=0)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    m = PoseRegressor(TINY, weights=tmp_path / "w.pt")
    w_rgb = src.state_dict()["conv1.0.weight"] if "conv1.0.weight" in src.state_dict() else None
    key = next(k for k, v in m.backbone.state_dict().items() if v.dim() == 4)
    assert torch.allclose(m.backbone.state_dict()[key], src.state_dict()[key].sum(1, keepdim=True))
    del w_rgb
    torch.save({"x": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="another architecture"):
        PoseRegressor(TINY, weights=tmp_path / "other.pt")
    with pytest.raises(InputError, match="not found"):
        PoseRegressor(TINY, weights=tmp_path / "missing.pt")


def test_resample_follows_physical_detector_geometry(sample_ct):
    """A DRR on another detector (sdd, spacing, size, offset, mirror) resampled to the training grid = its DRR."""
    T = carm_pose(10, 5, 612, sample_ct.get_isocenter()).float()[None]
    train = Camera(sdd=1020, height=48, width=48, delx=400 / 48)
    other = Camera(sdd=1100, height=150, width=130, delx=3.3, dely=3.0, x0=20, y0=-10, reverse_x_axis=True)
    a = DRR(sample_ct, train, n_samples=150)(T)
    b = DRR(sample_ct, other, n_samples=150)(T)
    r, mask = resample_to_camera(b, other, train)
    assert 0.7 < float(mask.float().mean()) < 1.0  # part of the training field is off the other detector
    assert float(ncc(a * mask, r)) > 0.999
    # The same camera is an identity resampling.
    r2, m2 = resample_to_camera(a, train, train)
    assert bool(m2.all()) and torch.allclose(r2, a, atol=1e-4)
    with pytest.raises(InputError):
        resample_to_camera(b[..., :-1], other, train)


def test_normalize_images_ignores_invalid_pixels():
    x = torch.rand(2, 1, 8, 8) * 5 + 3
    valid = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    valid[..., :2, :] = False
    x[..., :2, :] = 1000.0  # e.g. a collimator border: must not set the range
    y = normalize_images(x, valid, mean=0.5, std=0.25)
    z = y * 0.25 + 0.5
    assert torch.allclose(z[..., :2, :], torch.zeros(1))
    inner = z[..., 2:, :].reshape(2, -1)
    assert torch.allclose(inner.amin(1), torch.zeros(2), atol=1e-6) and torch.allclose(inner.amax(1), torch.ones(2))


def test_checkpoint_round_trip_and_predict_pose(tmp_path, sample_ct, sampler):
    cam = Camera(sdd=1020, height=32, width=32, delx=400 / 32)
    model = PoseRegressor(TINY, "quaternion", isocenter_pose=sampler.isocenter_pose, pivot_mm=612.0)
    model.fit_output_scaling(sampler.sample(64, torch.Generator().manual_seed(0), dtype=torch.float64))
    model.eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, checkpoint_dict(model, _meta(cam, sampler), step=3))
    torch.load(path, weights_only=True)  # loads with weights_only
    loaded, meta = load_checkpoint(path)
    assert meta["parameterization"] == "quaternion" and meta["architecture"]["backbone"] == TINY
    assert Camera.from_dict(meta["camera"]) == cam and read_checkpoint(path)["step"] == 3
    # predict_pose on an X-ray of another detector = the model applied to the resampled, normalised image.
    xcam = Camera(sdd=1050, height=90, width=80, delx=5.0, x0=5.0)
    T = sampler.sample(2, torch.Generator().manual_seed(3))
    img = DRR(sample_ct, xcam, n_samples=60)(T)
    pred = predict_pose(loaded, meta, img, xcam)
    assert pred.shape == (2, 4, 4) and pred.dtype == torch.float64
    check_rigid(pred)
    x, valid = resample_to_camera(img, xcam, cam)
    with torch.no_grad():
        direct = model(normalize_images(x, valid, 0.3, 0.2))
    assert torch.allclose(pred.float(), direct, atol=1e-4)
    with pytest.raises(InputError, match="constant"):
        predict_pose(loaded, meta, torch.ones(1, 1, 90, 80), xcam)
    far = Camera(sdd=1050, height=90, width=80, delx=5.0, x0=3000.0)
    with pytest.raises(InputError, match="field of view"):
        predict_pose(loaded, meta, img, far)


def test_bad_checkpoints_are_refused(tmp_path):
    p = tmp_path / "junk.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable"):
        load_checkpoint(p)
    torch.save({"some": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(InputError, match="not an xraypose"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")


def test_a_checkpoint_with_an_euler_convention_but_another_parameterization_is_refused(tmp_path, sampler):
    """A checkpoint's architecture (or a PoseRegressor's arguments) with convention "XYZ" and parameterization
    "quaternion": the convention was dropped without a word.  It is a one-line error naming both fields."""
    cam = Camera(sdd=1020, height=32, width=32, delx=400 / 32)
    model = PoseRegressor(TINY, "quaternion", isocenter_pose=sampler.isocenter_pose, pivot_mm=612.0)
    ck = checkpoint_dict(model, _meta(cam, sampler))
    ck["meta"]["architecture"]["convention"] = "XYZ"  # a hand-edited or foreign file
    path = tmp_path / "m.pt"
    save_checkpoint(path, ck)
    words = ("convention 'XYZ' is the axis sequence of Euler angles, but the parameterization is 'quaternion' (it "
             "would be ignored): leave convention unset, or use parameterization 'euler_angles'")
    with pytest.raises(InputError, match="^" + re.escape(f"checkpoint {path}: {words}") + "$"):
        load_checkpoint(path)
    with pytest.raises(InputError, match="^" + re.escape(words) + "$"):
        PoseRegressor(TINY, "quaternion", "XYZ")
    assert PoseRegressor(TINY, "euler_angles", "XYZ").convention == "XYZ"
    assert PoseRegressor(TINY, "quaternion").convention is None


def test_geometry_stays_float32_under_mixed_precision(sampler):
    model = PoseRegressor(TINY, isocenter_pose=sampler.isocenter_pose, pivot_mm=612.0).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, rot, trans = model(x, return_params=True)
    assert out.dtype == rot.dtype == trans.dtype == torch.float32
    check_rigid(out, atol=1e-5)
    assert (out[:, :3, 3] - ref[:, :3, 3]).abs().max() < 5.0  # mm: only the backbone ran in bfloat16


def test_an_architecture_holds_exactly_the_keys_checkpoints_are_checked_on():
    """PoseRegressor.architecture() and _ARCHITECTURE_KEYS (build_model's and check_compatible's list) agree."""
    from xraypose.model import _ARCHITECTURE_KEYS, PoseRegressor

    assert sorted(PoseRegressor(TINY).architecture()) == sorted(_ARCHITECTURE_KEYS)


def test_a_model_with_an_unknown_euler_convention_is_refused_when_made():
    """``PoseRegressor(..., "euler_angles", "QQQ")``: accepted, then failed at its first forward pass deep in the
    geometry; a one-line error naming the convention and the valid ones when the model is made (a checkpoint's
    architecture goes through the same constructor)."""
    with pytest.raises(InputError, match=r"^convention 'QQQ' is not an Euler axis sequence: one of .*ZYX") as e:
        PoseRegressor(TINY, "euler_angles", "QQQ")
    assert "\n" not in str(e.value)
    assert PoseRegressor(TINY, "euler_angles", "zyx").convention == "zyx"  # lowercase: extrinsic
