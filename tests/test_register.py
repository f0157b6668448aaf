"""Test-time registration: convergence on a realistic synthetic case, initialisers, bad input, API, CLI."""

import json
import math

import numpy as np
import pytest
import torch

from xraypose.camera import Camera, carm_pose
from xraypose.errors import InputError
from xraypose.geometry import ROTATION_PARAMETERIZATIONS
from xraypose.metrics import pose_errors
from xraypose.register import FAST_LEVELS, Level, Registrar, RegistrationConfig
from xraypose.register.api import register_xray, write_registration
from xraypose.register.cases import CaseMaker, perturb_pose
from xraypose.register.initializers import (
    ModelInitializer,
    antipodal,
    pose_from_json,
    resample_pinhole,
    with_antipodal,
)

F64 = torch.float64
CASE_INDEX = 2  # a case whose 64² X-ray registers to ~0.3 mm with FAST_LEVELS (margin to the 2 mm bound)


@pytest.fixture(scope="module")
def maker(sample_ct):
    return CaseMaker(sample_ct, camera=Camera(sdd=1020.0, height=64, width=64, delx=280.0 / 64), collimator_px=2,
                     n_fiducials=10)


@pytest.fixture(scope="module")
def case(maker):
    return maker.case(CASE_INDEX)


@pytest.fixture(scope="module")
def registrar(sample_ct):
    return Registrar(sample_ct, RegistrationConfig(levels=FAST_LEVELS, drr_blur=1.0))


def mtre(T, c):
    return float(pose_errors(T, c.true_pose, c.fiducials, c.camera)["mtre"].max())


# ----------------------------------------------------------------------------- convergence
def test_registers_realistic_case_from_5deg_20mm(registrar, maker, case):
    T0 = maker.starts(case, 5.0, 20.0)
    assert mtre(T0, case) > 15.0
    res = registrar.register(case.image, case.camera, T0)
    assert res.poses.shape == (1, 4, 4) and bool(torch.isfinite(res.poses).all())
    assert mtre(res.poses, case) < 2.0
    assert res.status[0] in ("converged", "max_iterations")
    assert res.opt_s > 0 and res.iterations[0] > 10
    # the trajectory is recorded, per level, and its similarity improves
    tr = res.trajectories[0]
    assert {r["level"] for r in tr} == {0, 1}
    assert tr[-1]["similarity"] > tr[0]["similarity"]
    assert len(tr[0]["camera_to_world"]) == 4
    assert 0.2 <= float(res.bone_multiplier[0]) <= 5.0


def test_pyramid_blocks_never_exceed_the_ct():
    """A CT of 6e-4 mm voxels (built past the readers' spacing check) asked 8 mm levels for blocks of 13333
    voxels: a zero-padded grid of 96 TB.  A block is at most the axis."""
    from xraypose.volume import Volume

    vol = Volume(torch.linspace(-1000.0, 1500.0, 120).reshape(6, 5, 4),
                 torch.diag(torch.tensor([6e-4, 6e-4, 6e-4, 1.0], dtype=F64)))
    reg = Registrar(vol, RegistrationConfig(levels=(Level(size=16, iterations=1, volume_mm=8.0),)))
    dens, aff = reg.volume_level(8.0)
    assert tuple(dens.shape[-3:]) == (1, 1, 1)
    torch.testing.assert_close(aff[:3, :3].norm(dim=0), torch.tensor([6, 5, 4], dtype=F64) * 6e-4)


def test_air_floor_zeroes_the_blocks_whose_ct_averages_to_air_and_nothing_else():
    """RegistrationConfig.air_floor_hu: a level's voxel renders as nothing where the CT averaged over its
    block reads at most the floor — all channels, that block only; the unfloored level is untouched (its
    own cache entry), and a floor that is not air is refused."""
    from xraypose.volume import Volume

    hu = torch.full((8, 8, 4), -1000.0)
    hu[0:2, 0:2, 0], hu[0:2, 0:2, 1] = -990.0, -960.0  # a 2 mm block averaging -975: floored at -975
    hu[2:4, 0:2, 0], hu[2:4, 0:2, 1] = -990.0, -940.0  # averaging -965: kept
    hu[4:8, 4:8] = 1000.0  # bone
    hu[0, 7, 0] = -1000.0 + 40.0  # a noisy air voxel: its block averages -995 and is floored
    vol = Volume(hu, torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=F64)))
    lv = Level(size=16, iterations=1, volume_mm=2.0, fit_bone=True)
    plain = Registrar(vol, RegistrationConfig(levels=(lv,)))
    floored = plain.derive(air_floor_hu=-975.0)
    d0, a0 = plain.volume_level(2.0, (0, 1))
    d1, a1 = floored.volume_level(2.0, (0, 1))
    torch.testing.assert_close(a0, a1)
    air = torch.ones(4, 4, 2, dtype=torch.bool)
    air[1, 0] = False  # the -965 block
    air[2:4, 2:4] = False  # bone
    assert bool((d0[0][air] > 0).any())  # unfloored, the noise renders
    assert bool((d1[:, air] == 0).all())
    torch.testing.assert_close(d1[:, ~air], d0[:, ~air])
    assert float(d1[0, 1, 0, 0]) > 0 and float(d1[1, 2, 2, 0]) > 0
    torch.testing.assert_close(plain.volume_level(2.0, (0, 1))[0], d0)  # the plain entry is not floored
    for bad in (-100.0, float("nan"), "-975", True, -2000.0):
        with pytest.raises(InputError, match="air_floor_hu"):
            RegistrationConfig(air_floor_hu=bad)


def test_seeded_and_batched_registration_agree(sample_ct, maker, case):
    reg = Registrar(sample_ct, RegistrationConfig(levels=(Level(size=24, iterations=40, n_samples=32, volume_mm=8.0),)))
    T0 = maker.starts(case, 5.0, 20.0)
    T1 = perturb_pose(case.true_pose, sample_ct.get_isocenter(), 3.0, 10.0, torch.Generator().manual_seed(5))[0]
    a = reg.register(case.image, case.camera, T0)
    b = reg.register(case.image, case.camera, T0)
    assert torch.equal(a.poses, b.poses)  # deterministic
    c = reg.register(case.image, case.camera, T1)
    batch = reg.register(torch.stack([case.image, case.image])[:, None], case.camera, torch.stack([T0, T1]))
    assert batch.poses.shape == (2, 4, 4) and len(batch.status) == 2
    # each element of a batch is optimised on its own: the same answers as one at a time
    # (up to the rounding of batched kernels, which the plateau decisions may amplify a little)
    assert abs(mtre(batch.poses[0], case) - mtre(a.poses, case)) < 0.5
    assert abs(mtre(batch.poses[1], case) - mtre(c.poses, case)) < 0.5
    assert mtre(batch.poses[0], case) < 0.3 * mtre(T0, case)


def test_antipodal_start_is_chosen_when_better(registrar, maker, case, sample_ct):
    near = maker.starts(case, 2.0, 5.0)
    flipped = antipodal(near, sample_ct.get_isocenter())[0]
    assert mtre(flipped, case) > 100  # the wrong side of the patient
    starts = with_antipodal(flipped, sample_ct.get_isocenter())  # (1, 2, 4, 4): flipped, and flipped back
    assert torch.allclose(starts[0, 1], near, atol=1e-9)
    res = registrar.register(case.image, case.camera, starts)
    assert res.chosen_start == [1]
    assert mtre(res.poses, case) < 2.0


def test_step_schedule_decays_rates(sample_ct, case, maker):
    cfg = RegistrationConfig(levels=(Level(size=16, iterations=60, n_samples=24, volume_mm=8.0),),
                             schedule="step", step_every=25, step_gamma=0.9)
    res = Registrar(sample_ct, cfg).register(case.image, case.camera, maker.starts(case, 5.0, 20.0))
    lrs = {r["iteration"]: r["lr_trans"] for r in res.trajectories[0]}
    assert lrs[0] == pytest.approx(7.5)
    assert lrs[26] == pytest.approx(7.5 * 0.9)
    assert lrs[51] == pytest.approx(7.5 * 0.81)
    assert res.status == ["max_iterations"]


@pytest.mark.parametrize("frame", ["isocentric", "world"])
@pytest.mark.parametrize("param", sorted(ROTATION_PARAMETERIZATIONS))
def test_parameters_round_trip(sample_ct, frame, param):
    reg = Registrar(sample_ct, RegistrationConfig(parameterization=param, frame=frame))
    T = carm_pose(torch.tensor([20.0, -35.0]), torch.tensor([10.0, 5.0]), sod=600.0, isocenter=sample_ct.center)
    A, Bm = reg.frames(T)
    p = reg.params_from_pose(T, A, Bm)
    assert torch.allclose(reg.pose_from_params(p, A, Bm), T, atol=1e-7)


# ----------------------------------------------------------------------------- bad input
def test_bad_xrays_raise_clear_errors(registrar, case, maker):
    T0 = maker.starts(case, 5.0, 20.0)
    with pytest.raises(InputError, match="constant"):
        registrar.register(torch.full_like(case.image, 0.5), case.camera, T0)
    with pytest.raises(InputError, match="constant"):
        registrar.register(torch.zeros_like(case.image), case.camera, T0)
    img = case.image.clone()
    img[3, 4] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        registrar.register(img, case.camera, T0)
    with pytest.raises(InputError, match="sizes differ"):
        registrar.register(case.image, case.camera.resize(40, 40), T0)
    bad = T0.clone()
    bad[0, 3] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        registrar.register(case.image, case.camera, bad)
    away = T0.clone()
    away[:3, 2] *= -1  # looks away from the CT (and is a reflection: never sees the isocenter)
    away[:3, 0] *= -1
    with pytest.raises(InputError, match="does not see the CT"):
        registrar.register(case.image, case.camera, away)
    with pytest.raises(InputError):
        RegistrationConfig(similarity="nope")
    with pytest.raises(InputError):
        RegistrationConfig(lr_rot=float("nan"))


def test_diverging_pose_is_recovered_never_nan(sample_ct, case, maker):
    # absurd learning rates throw the pose out of the field of view: every such step is undone
    cfg = RegistrationConfig(levels=(Level(size=16, iterations=30, n_samples=24, volume_mm=8.0),),
                             lr_trans=5000.0, lr_rot=3.0, max_recoveries=2)
    T0 = maker.starts(case, 5.0, 20.0)
    res = Registrar(sample_ct, cfg).register(case.image, case.camera, T0)
    assert bool(torch.isfinite(res.poses).all())
    assert res.recoveries[0] >= 1
    assert res.status[0] in ("diverged", "recovered", "converged", "max_iterations")
    assert math.isfinite(float(res.similarity[0]))
    assert mtre(res.poses, case) < 1000  # a pose that still looks at the CT, not a NaN


# ----------------------------------------------------------------------------- initialisers
def test_resample_pinhole_matches_direct_rendering(sample_ct):
    from xraypose.render import DRR

    T = carm_pose(10.0, -5.0, sod=612.0, isocenter=sample_ct.center).float()
    src = Camera(sdd=1020.0, height=96, width=80, delx=3.2, x0=4.0, y0=-3.0)
    dst = Camera(sdd=900.0, height=40, width=48, delx=4.0, x0=-10.0, y0=6.0, reverse_x_axis=True)
    with torch.no_grad():
        a = DRR(sample_ct, src, n_samples=64)(T[None])
        b = DRR(sample_ct, dst, n_samples=64)(T[None])
    r = resample_pinhole(a, src, dst)
    assert r.shape == b.shape
    # both images cover the same rays (dst fits inside src): compare by correlation
    x, y = r.flatten() - r.mean(), b.flatten() - b.mean()
    assert float((x * y).sum() / (x.norm() * y.norm())) > 0.99


def test_model_initializer_protocol(case):
    train_cam = Camera(sdd=1020.0, height=32, width=32, delx=280.0 / 32)
    seen = {}

    def predictor(img, cam):
        seen["shape"], seen["cam"], seen["range"] = tuple(img.shape), cam, (float(img.min()), float(img.max()))
        return case.true_pose[None].expand(img.shape[0], 4, 4)

    init = ModelInitializer(predictor, train_cam)
    T = init(case.image, case.camera)
    assert T.shape == (1, 4, 4) and T.dtype == F64
    assert seen["shape"] == (1, 1, 32, 32) and seen["cam"] == train_cam
    assert seen["range"] == pytest.approx((0.0, 1.0))
    with pytest.raises(InputError, match="NaN"):
        ModelInitializer(lambda img, cam: torch.full((1, 4, 4), float("nan")), train_cam)(case.image, case.camera)
    with pytest.raises(InputError, match="not found"):
        ModelInitializer.from_checkpoint("/nonexistent/model.pt")


def test_model_initializer_from_a_real_checkpoint(tmp_path, sample_ct, case, registrar):
    model = pytest.importorskip("xraypose.model")
    from xraypose.sampling import PoseSampler

    sampler = PoseSampler.for_volume(sample_ct, sod=612.0)
    cam = Camera(sdd=1020.0, height=32, width=32, delx=280.0 / 32)
    net = model.PoseRegressor("test_resnet", "se3_log_map", isocenter_pose=sampler.isocenter_pose, pivot_mm=612.0)
    net.eval()
    meta = {"camera": cam.to_dict(), "image_size": [32, 32], "isocenter_pose": sampler.isocenter_pose.tolist(),
            "isocenter": sampler.isocenter.tolist(), "sod_mm": 612.0,
            "normalization": {"mean": 0.3, "std": 0.2, "fill": 0.0}}
    path = tmp_path / "m.pt"
    model.save_checkpoint(path, model.checkpoint_dict(net, meta))
    init = ModelInitializer.from_checkpoint(path)
    T = init(case.image, case.camera)
    assert T.shape == (1, 4, 4) and bool(torch.isfinite(T).all())
    # an untrained head predicts (about) the isocenter pose: the start the registration gets
    # (its random head moves the translation by a few mm: 4.6 mm with the current initialisation)
    assert float((T[0, :3, :3] - sampler.isocenter_pose[:3, :3]).abs().max()) < 0.05
    assert float((T[0, :3, 3] - sampler.isocenter_pose[:3, 3]).abs().max()) < 10.0
    out = register_xray(sample_ct, case.image, case.camera, init, registrar=registrar, true_pose=case.true_pose,
                        fiducials=case.fiducials)[0]
    assert out.init_s > 0 and math.isfinite(out.metrics["mtre"])


def test_pose_from_json_accepts_results_and_poses(tmp_path):
    T = carm_pose(5.0, 5.0, sod=600.0, isocenter=[0, 0, 0])
    (tmp_path / "a.json").write_text(json.dumps({"camera_to_world": T.tolist()}))
    (tmp_path / "b.json").write_text(json.dumps({"world_to_camera": torch.linalg.inv(T).tolist()}))
    (tmp_path / "c.json").write_text("{not json")
    (tmp_path / "d.json").write_text(json.dumps({"camera_to_world": [[1, 0], [0, 1]]}))
    assert torch.allclose(pose_from_json(tmp_path / "a.json")[0], T)
    assert torch.allclose(pose_from_json(tmp_path / "b.json")[0], T, atol=1e-9)
    for name in ("c.json", "d.json", "missing.json"):
        with pytest.raises(InputError):
            pose_from_json(tmp_path / name)


def test_antipodal_is_an_involution_about_the_isocenter():
    iso = torch.tensor([10.0, -20.0, 30.0], dtype=F64)
    T = carm_pose(15.0, -5.0, sod=600.0, isocenter=iso)
    A = antipodal(T, iso)[0]
    assert torch.allclose(antipodal(A, iso)[0], T, atol=1e-9)
    # the source goes to the other side, at the same distance from the isocenter
    assert torch.allclose(A[:3, 3] - iso, -(T[:3, 3] - iso), atol=1e-9)
    assert torch.allclose(A[:3, 1], T[:3, 1], atol=1e-12)  # rows axis kept, columns mirrored
    assert torch.allclose(A[:3, 0], -T[:3, 0], atol=1e-12)


# ----------------------------------------------------------------------------- API and files
def test_register_xray_writes_pose_metrics_trajectory(tmp_path, sample_ct, registrar, maker, case):
    T0 = maker.starts(case, 5.0, 20.0)
    out = register_xray(sample_ct, case.image, case.camera, T0, registrar=registrar, true_pose=case.true_pose,
                        fiducials=case.fiducials)[0]
    assert out.metrics["mtre"] < 2.0 and out.initial_metrics["mtre"] > 15.0
    files = write_registration(tmp_path / "res", out)
    assert {f.name for f in files} == {"pose.json", "metrics.json", "trajectory.json"}
    pose = json.loads((tmp_path / "res" / "pose.json").read_text())
    C = torch.tensor(pose["camera_to_world"], dtype=F64)
    W = torch.tensor(pose["world_to_camera"], dtype=F64)
    assert torch.allclose(C @ W, torch.eye(4, dtype=F64), atol=1e-9)
    assert Camera.from_dict(pose["intrinsics"]) == case.camera
    assert pose["timing"]["opt_s"] > 0 and pose["timing"]["init_s"] == 0
    m = json.loads((tmp_path / "res" / "metrics.json").read_text())
    assert m["final"]["mtre"] == pytest.approx(out.metrics["mtre"])
    tr = json.loads((tmp_path / "res" / "trajectory.json").read_text())
    assert len(tr["records"]) == len(out.trajectory) > 0
    # an initialiser callable is timed separately
    quick = Registrar(sample_ct, RegistrationConfig(levels=(Level(size=16, iterations=5, n_samples=16),)))
    out2 = register_xray(sample_ct, case.image, case.camera, lambda img, cam: T0[None], registrar=quick)[0]
    assert out2.init_s > 0 and out2.metrics is None
    # never a NaN in a written result
    out.similarity = float("nan")
    with pytest.raises(InputError, match="non-finite"):
        write_registration(tmp_path / "bad", out)


def test_register_xray_reports_its_spread_which_grows_with_the_noise(tmp_path, sample_ct, registrar):
    """Registration.spread: the pose's own standard deviations (the last Levenberg–Marquardt level's curvature
    and residual, ×4): along the beam far above across it (one view sees depth only as magnification), larger
    on a noisier X-ray of the same view, written into pose.json; None without a Levenberg–Marquardt level."""
    cam = Camera(sdd=1020.0, height=64, width=64, delx=280.0 / 64)
    spreads = {}
    for photons in (1e3, 1e6):
        c = CaseMaker(sample_ct, camera=cam, collimator_px=2, n_fiducials=10, photons=photons).case(CASE_INDEX)
        out = register_xray(sample_ct, c.image, c.camera, c.true_pose, registrar=registrar, confidence=False)[0]
        sp = out.spread
        assert set(sp) == {"along_beam_mm", "across_beam_mm", "rotation_deg", "noise_scale"} and sp["noise_scale"] == 4
        assert all(math.isfinite(v) and v > 0 for v in sp.values())
        assert sp["along_beam_mm"] > 5 * sp["across_beam_mm"]
        spreads[photons] = sp
    assert spreads[1e3]["along_beam_mm"] > 3 * spreads[1e6]["along_beam_mm"]
    assert spreads[1e3]["rotation_deg"] > 3 * spreads[1e6]["rotation_deg"]
    write_registration(tmp_path / "res", out)
    assert json.loads((tmp_path / "res" / "pose.json").read_text())["spread"] == pytest.approx(out.spread)
    adam_only = Registrar(sample_ct, RegistrationConfig(levels=(Level(size=16, iterations=5, n_samples=16),)))
    assert register_xray(sample_ct, c.image, c.camera, c.true_pose, registrar=adam_only,
                         confidence=False)[0].spread is None


def test_cli_register_end_to_end(tmp_path, sample_ct, maker, case):
    typer = pytest.importorskip("typer")
    from typer.testing import CliRunner

    from xraypose.cli.register import register_command

    app = typer.Typer()
    app.command("register")(register_command)
    app.command("noop")(lambda: None)  # keep "register" a sub-command
    raw = case.raw.numpy().astype(np.float32)
    np.save(tmp_path / "xray.npy", raw)
    cam = case.raw_camera
    (tmp_path / "xray.json").write_text(json.dumps({**cam.to_dict(), "kind": "intensity"}))
    T0 = maker.starts(case, 5.0, 20.0)
    (tmp_path / "start.json").write_text(json.dumps({"camera_to_world": T0.tolist()}))
    (tmp_path / "truth.json").write_text(json.dumps({"camera_to_world": case.true_pose.tolist()}))
    (tmp_path / "fid.json").write_text(json.dumps(case.fiducials.tolist()))
    args = ["register", "sample", str(tmp_path / "xray.npy"), "-o", str(tmp_path / "out"),
            "--pose-json", str(tmp_path / "start.json"), "--true-pose", str(tmp_path / "truth.json"),
            "--fiducials", str(tmp_path / "fid.json"), "--crop", "4", "--i0", "65000", "--fast"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "mTRE" in r.output and "spread (1 sd):" in r.output and "mm along the beam" in r.output
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["final"]["mtre"] < 2.0
    pose = json.loads((tmp_path / "out" / "pose.json").read_text())
    assert pose["init"]["kind"] == "pose" and pose["xray"]["camera"]["height"] == 56
    # restart from the previous result: starts where it ended
    r = CliRunner().invoke(app, ["register", "sample", str(tmp_path / "xray.npy"), "-o", str(tmp_path / "out2"),
                                 "--pose-json", str(tmp_path / "out" / "pose.json"), "--crop", "4", "--fast",
                                 "--no-trajectory"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert not (tmp_path / "out2" / "trajectory.json").exists()
    # bad input: a constant X-ray, no start, mismatched intrinsics -> InputError (one line in xraypose's CLI)
    np.save(tmp_path / "flat.npy", np.full_like(raw, 1000.0))
    (tmp_path / "flat.json").write_text(json.dumps({**cam.to_dict(), "kind": "intensity"}))
    for extra, what in ((["--pose-json", str(tmp_path / "start.json")], "every pixel is 1000"), ([], "no C-arm angles")):
        r = CliRunner().invoke(app, ["register", "sample", str(tmp_path / "flat.npy"), "-o", str(tmp_path / "o3"),
                                     *extra])
        assert isinstance(r.exception, InputError) and what in str(r.exception), r.output
    (tmp_path / "xray.json").write_text(json.dumps({**cam.to_dict(), "height": 50, "kind": "intensity"}))
    r = CliRunner().invoke(app, args)
    assert isinstance(r.exception, InputError) and "sizes differ" in str(r.exception)


def test_cli_register_counts_refines_on_the_raw_counts(tmp_path, maker, case, capsys):
    """--counts: the registered pose refined on the X-ray's photon counts (the blur and scatter chosen by their
    likelihood), the registered pose and metrics kept beside the refined ones; the result no worse than the
    registration's.  Bad input: one line each."""
    from xraypose.cli import main

    np.save(tmp_path / "xray.npy", case.raw.numpy().astype(np.float32))
    (tmp_path / "xray.json").write_text(json.dumps({**case.raw_camera.to_dict(), "kind": "intensity"}))
    T0 = maker.starts(case, 5.0, 20.0)
    (tmp_path / "start.json").write_text(json.dumps({"camera_to_world": T0.tolist()}))
    (tmp_path / "truth.json").write_text(json.dumps({"camera_to_world": case.true_pose.tolist()}))
    (tmp_path / "fid.json").write_text(json.dumps(case.fiducials.tolist()))
    base = ["register", "sample", str(tmp_path / "xray.npy"), "--pose-json", str(tmp_path / "start.json"),
            "--crop", "4", "--i0", "65000", "--fast"]
    code = main(base + ["-o", str(tmp_path / "out"), "--true-pose", str(tmp_path / "truth.json"), "--fiducials",
                        str(tmp_path / "fid.json"), "--counts", "--counts-renderer", "siddon",
                        "--counts-air-hu", "-1000"])
    text = capsys.readouterr()
    assert code == 0, text.err
    assert any(ln.startswith("counts: moved ") for ln in text.out.splitlines()), text.out
    pose = json.loads((tmp_path / "out" / "pose.json").read_text())
    c = pose["counts"]
    assert c["refined"] and c["bin"] == 1 and c["formation"]["renderer"] == "siddon"
    assert c["chosen"] == {"renderer": False, "air_hu": False, "blur": True, "scatter_mm": True}
    assert c["formation"]["scatter_mm"] == 0.0  # the simulator adds no scatter: none is modelled
    assert c["camera_to_world"] != c["registered_camera_to_world"]
    # pose.json's pose is the refined raw pose (the crop moves no camera); metrics.json follows it
    assert torch.allclose(torch.tensor(pose["camera_to_world"], dtype=F64), torch.tensor(c["camera_to_world"], dtype=F64))
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["final"]["mtre"] == pytest.approx(pose["metrics"]["mtre"])
    assert m["final"]["mtre"] != c["registered_metrics"]["mtre"]
    assert m["final"]["mtre"] < max(1.0, c["registered_metrics"]["mtre"] + 0.3)
    # bad input: one line each
    for extra, what in ((["--counts-blur", "0.5"], "go with --counts"),
                        (["--counts", "--counts-renderer", "raycast"], "--counts-renderer must be auto or one of"),
                        (["--counts", "--label-map", str(tmp_path / "none.nii.gz"), "--label", "1"], "structure alone")):
        code = main(base + ["-o", str(tmp_path / "bad")] + extra)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and what in err, err
    (tmp_path / "xray.json").write_text(json.dumps({**case.raw_camera.to_dict(), "kind": "attenuation"}))
    code = main(base + ["-o", str(tmp_path / "bad"), "--counts"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--counts needs raw detector intensities" in err, err
    code = main(["register", "sample", str(tmp_path / "xray.npy"), str(tmp_path / "xray.npy"), "--rig", "angles",
                 "-o", str(tmp_path / "bad"), "--counts"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "a rig's joint counts are not modelled" in err, err


def test_register_counts_turns_an_ok_moved_more_than_2_mm_uncertain(monkeypatch, capsys):
    """register --counts: a refinement moving the registered pose more than COUNTS_MOVED_UNCERTAIN_MM near the
    isocenter makes an ok result uncertain (the two measures disagree); a small move keeps it ok; a failed
    result is refined and takes its refined pose, uncertain, only where the fit converged and explains the counts
    (χ² a pixel ≤ COUNTS_EXPLAINED_CHI2); else it stays failed with its registered pose."""
    from types import SimpleNamespace

    import xraypose.register.counts as counts_mod
    from xraypose.cli import register as cli_register
    from xraypose.register.counts import CountsFit, CountsFormation, CountsRefinement

    T = torch.eye(4, dtype=F64)
    T[:3, 3] = torch.tensor([0.0, 0.0, -700.0], dtype=F64)
    cam = Camera(sdd=1020.0, height=16, width=16, delx=2.0)
    calls, sides = [], []

    def fake(volume, camera, raw, pose, **kw):
        calls.append(pose)
        sides.append(kw.get("max_side"))
        P = pose.clone()
        P[:3, 3] += torch.tensor([shift, 0.0, 0.0], dtype=F64)
        fit = CountsFit(pose=P, coefficients=torch.zeros(3, dtype=F64), scale=1.0, nll=0.0, nll_start=1.0,
                        iterations=3, converged=converged, moved_mm=shift, chi2_per_pixel=chi2)
        return CountsRefinement(fit=fit, formation=CountsFormation("siddon", -1000.0, 0.5), bin=1, camera=cam,
                                per_photon=1.0, tried=[], seconds=0.1,
                                search_bin=2 if kw.get("max_side") == 256 else None)

    monkeypatch.setattr(counts_mod, "refine_xray_on_counts", fake)
    kw = {"renderer": None, "air_hu": None, "blur": None, "scatter_mm": None, "supersample": 2, "max_side": None}
    cts = SimpleNamespace(volume=None, isocenter=torch.zeros(3, dtype=F64))
    px = SimpleNamespace(steps=[])
    xr = SimpleNamespace(camera=cam, image=torch.ones(16, 16))
    converged, chi2 = True, 0.9
    for shift, verdict in ((1.5, "ok"), (2.5, "uncertain")):
        out = SimpleNamespace(verdict="ok", reason="fine", camera_to_world=T.clone(), metrics=None, camera=cam)
        rec = cli_register._refine_on_counts(out, xr, px, cts, 0, kw)
        assert out.verdict == verdict and rec["moved_mm"] == pytest.approx(shift)
        assert float(out.camera_to_world[0, 3]) == pytest.approx(shift) and rec["registered_camera_to_world"] == T.tolist()
    assert "the counts moved the registered pose 2.5 mm" in out.reason and rec["explained"]
    shift, chi2 = 1.5, 2.0  # an ok whose counts are not explained: said, the verdict not changed by it
    out = SimpleNamespace(verdict="ok", reason="fine", camera_to_world=T.clone(), metrics=None, camera=cam)
    capsys.readouterr()
    rec = cli_register._refine_on_counts(out, xr, px, cts, 0, {**kw})
    assert out.verdict == "ok" and not rec["explained"]
    assert "note: the counts' model leaves more than photon noise (χ² 2.00" in capsys.readouterr().out
    chi2 = 0.9
    assert sides == [None, None, None]  # no --counts-max-side: None, counts_bin_for's default
    out = SimpleNamespace(verdict="ok", reason="fine", camera_to_world=T.clone(), metrics=None, camera=cam)
    cli_register._refine_on_counts(out, xr, px, cts, 0, {**kw, "max_side": 64})
    assert sides[-1] == 64  # --counts-max-side 64 reaches the refinement
    capsys.readouterr()
    rec = cli_register._refine_on_counts(out, xr, px, cts, 0, {**kw, "max_side": 256})
    assert "1×1 pixels binned, the formation chosen at 2×2;" in capsys.readouterr().out  # searched coarser: said
    assert (rec["bin"], rec["search_bin"]) == (1, 2)
    from xraypose.register.counts import COUNTS_EXPLAINED_CHI2

    shift = 3.0
    for converged, chi2, admitted in ((True, 0.9, True), (True, COUNTS_EXPLAINED_CHI2 + 0.1, False),
                                      (False, 0.9, False)):
        n = len(calls)
        out = SimpleNamespace(verdict="failed", reason="bad", camera_to_world=T.clone(), metrics=None, camera=cam)
        rec = cli_register._refine_on_counts(out, xr, px, cts, 0, kw)
        said = capsys.readouterr().out
        assert len(calls) == n + 1 and rec["refined"] and rec["admitted"] is admitted and rec["chi2_per_pixel"] == chi2
        if admitted:
            assert out.verdict == "uncertain" and "the check alone said failed (bad)" in out.reason
            assert float(out.camera_to_world[0, 3]) == pytest.approx(shift)
            assert rec["camera_to_world"] == out.camera_to_world.tolist()
        else:
            assert out.verdict == "failed" and torch.equal(out.camera_to_world, T) and rec["camera_to_world"] == T.tolist()
            assert rec["refined_camera_to_world"][0][3] == pytest.approx(shift)
            assert "the verdict stays failed" in said and ("did not converge" if not converged else "χ² 1.60") in said
