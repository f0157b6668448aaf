"""Registration metrics against hand-computed values; bone fiducials."""

import math
import re

import numpy as np
import pytest
import torch

from xraypose.camera import Camera, carm_pose
from xraypose.errors import InputError
from xraypose.fiducials import bone_mask, farthest_point_sampling, pick_bone_fiducials
from xraypose.geometry import make_transform, so3_exp
from xraypose.metrics import (
    double_geodesic_error,
    format_table,
    pose_errors,
    projection_error,
    reprojection_error,
    success_rate,
    summarize,
    target_registration_error,
)
from xraypose.volume import Volume

SDD, SOD = 1000.0, 600.0
ISO = torch.tensor([10.0, -20.0, 30.0], dtype=torch.float64)
CAM = Camera(sdd=SDD, height=200, width=160, delx=1.5, dely=1.25)


def true_pose():
    return carm_pose(20.0, -10.0, sod=SOD, isocenter=ISO)


def moved_in_camera(T, delta):
    """The camera moved by ``delta`` (3,) mm along its own axes."""
    return T @ make_transform(torch.eye(3, dtype=torch.float64), torch.as_tensor(delta, dtype=torch.float64))


def test_identical_poses_give_zero_errors():
    T = true_pose()
    fid = ISO + torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 30
    e = pose_errors(T, T, fid, CAM)
    for k, v in e.items():
        assert v.shape == (1,)
        assert float(v) == pytest.approx(0.0, abs=1e-9), k


def test_depth_shift_hand_values():
    # Camera moved 10 mm along its principal ray; a fiducial at the isocenter (on the ray)
    # projects to the same pixel (mPE 0), is 10 mm off in 3D (mTRE 10), and the two
    # detector planes are 10 mm apart (mRPE 10).
    T = true_pose()
    P = moved_in_camera(T, [0.0, 0.0, 10.0])
    fid = ISO[None]
    assert float(target_registration_error(P, T, fid)) == pytest.approx(10.0, abs=1e-9)
    assert float(projection_error(P, T, fid, CAM)) == pytest.approx(0.0, abs=1e-9)
    assert float(reprojection_error(P, T, fid, CAM)) == pytest.approx(10.0, abs=1e-9)
    rot, trans, dgeo = double_geodesic_error(P, T, sdr=SDD / 2)
    assert float(rot) == pytest.approx(0.0, abs=1e-6)
    assert float(trans) == pytest.approx(10.0, abs=1e-9)
    assert float(dgeo) == pytest.approx(10.0, abs=1e-6)


@pytest.mark.parametrize("axis,spacing", [(0, 1.5), (1, 1.25)])
def test_lateral_shift_hand_values(axis, spacing):
    # 6 mm along a camera axis: the isocenter's image moves 6·sdd/sod = 10 mm on the detector;
    # the back-projected points differ by 6·(1 − sdd/sod) = −4 mm.
    T = true_pose()
    d = [0.0, 0.0, 0.0]
    d[axis] = 6.0
    P = moved_in_camera(T, d)
    fid = ISO[None]
    assert float(target_registration_error(P, T, fid)) == pytest.approx(6.0, abs=1e-9)
    assert float(projection_error(P, T, fid, CAM)) == pytest.approx(10.0, abs=1e-9)
    assert float(reprojection_error(P, T, fid, CAM)) == pytest.approx(4.0, abs=1e-9)
    # mPE is physical: the same on a resampled detector
    assert float(projection_error(P, T, fid, CAM.resize(50, 40))) == pytest.approx(10.0, abs=1e-9)
    # pixel difference itself is 10 mm / spacing
    duv = CAM.project(fid, P) - CAM.project(fid, T)
    assert float(duv.abs().max()) == pytest.approx(10.0 / spacing, abs=1e-9)


def test_rotation_about_principal_ray_hand_values():
    # Camera turned by θ about its own z axis (the principal ray, through the source):
    # a fiducial at distance r from that axis moves by 2·r·sin(θ/2); the source does not move.
    T = true_pose()
    theta, r = math.radians(3.0), 40.0
    Rz = so3_exp(torch.tensor([0.0, 0.0, theta], dtype=torch.float64))
    P = T @ make_transform(Rz, torch.zeros(3, dtype=torch.float64))
    x_axis = T[:3, 0]
    fid = (ISO + r * x_axis)[None]
    assert float(target_registration_error(P, T, fid)) == pytest.approx(2 * r * math.sin(theta / 2), rel=1e-9)
    rot, trans, dgeo = double_geodesic_error(P, T, sdr=SDD / 2)
    assert float(rot) == pytest.approx(SDD / 2 * theta, rel=1e-6)
    assert float(trans) == pytest.approx(0.0, abs=1e-9)
    e = pose_errors(P, T, fid, CAM)
    assert float(e["rot_deg"]) == pytest.approx(3.0, rel=1e-6)
    assert float(e["dgeo"]) == pytest.approx(SDD / 2 * theta, rel=1e-6)  # default sdr = sdd / 2
    # image-plane distance: r·sdd/sod·2 sin(θ/2)
    assert float(e["mpe"]) == pytest.approx(2 * r * SDD / SOD * math.sin(theta / 2), rel=1e-9)


def test_batches_and_per_fiducial():
    T = true_pose()
    P = torch.stack([moved_in_camera(T, [d, 0, 0]) for d in (1.0, 2.0, 3.0)])
    fid = ISO + torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 50
    mtre = target_registration_error(P, T, fid)
    assert mtre.shape == (3,)
    assert torch.allclose(mtre, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    per = target_registration_error(P, T, fid, reduce=False)
    assert per.shape == (3, 5)
    # per-case fiducials
    fids = torch.stack([fid, fid + 1, fid - 1])
    assert torch.allclose(target_registration_error(P, T.expand(3, 4, 4), fids), mtre)
    # float32 poses are accepted
    assert torch.allclose(target_registration_error(P.float(), T.float(), fid), mtre, atol=1e-3)


def test_bad_inputs_raise_not_nan():
    T = true_pose()
    P = T.clone()
    P[0, 3] = float("nan")
    fid = ISO[None]
    with pytest.raises(InputError, match="NaN"):
        pose_errors(P, T, fid, CAM)
    with pytest.raises(InputError, match="fiducials"):
        target_registration_error(T, T, torch.zeros(0, 3))
    with pytest.raises(InputError, match="NaN"):
        target_registration_error(T, T, torch.tensor([[float("nan"), 0, 0]]))
    with pytest.raises(InputError, match="sdr"):
        pose_errors(T, T, fid)
    with pytest.raises(InputError):
        target_registration_error(torch.stack([T, T]), torch.stack([T, T, T]), fid)


def _scaled(T):
    T = T.clone()
    T[:3, :3] *= 2.0
    return T


def _mirrored(T):
    T = T.clone()
    T[:3, 0] *= -1
    return T


@pytest.mark.parametrize("bad, words", [
    (_scaled, "estimated pose: not a rigid transform: rotation part is not orthonormal"),  # each gave numbers,
    (_mirrored, "estimated pose: not a rigid transform: rotation part is a reflection"),  # silently
    (lambda T: torch.stack([T, _mirrored(T)]), "reflection (det = -1) (pose 1)"),
    (lambda T: T.to(torch.complex128), "estimated pose must hold real numbers, got torch.complex128"),  # imaginary
    # part dropped with a warning
    (lambda T: "pose.json", "estimated pose must be an array or tensor of numbers, got str"),  # torch's TypeError
])
def test_errors_of_a_matrix_that_is_no_pose_are_refused(bad, words):
    T = true_pose()
    with pytest.raises(InputError, match=re.escape(words)):
        pose_errors(bad(T), T, ISO[None], CAM)
    with pytest.raises(InputError, match=re.escape(words.replace("estimated", "true"))):
        target_registration_error(T, bad(T), ISO[None])
    P = moved_in_camera(T, [1.0, 0.0, 0.0]).float()  # a float32 pose (a model's): rigid within its precision
    assert float(pose_errors(P, T, ISO[None], CAM)["mtre"]) == pytest.approx(1.0, abs=1e-3)
    assert float(pose_errors(P.tolist(), T.numpy(), ISO[None], CAM)["mtre"]) == pytest.approx(1.0, abs=1e-3)


def test_a_fiducial_behind_the_source_is_an_infinite_projection_error_not_an_exception():
    """A finite estimate never raises: a fiducial behind its source makes mPE / mRPE inf for that pose only."""
    import math

    from xraypose.metrics import reprojection_error, summarize

    T = true_pose()
    fid = torch.stack([ISO, ISO + torch.tensor([10.0, 0, 0], dtype=torch.float64)])
    # an estimate whose source moved past the first fiducial (along its viewing axis)
    P = T.clone()
    P[:3, 3] = ISO + 50 * T[:3, 2]
    e = pose_errors(torch.stack([T, P]), torch.stack([T, T]), fid, CAM)
    assert e["mpe"][0] == 0 and e["mrpe"][0] == 0  # the good estimate is untouched
    assert math.isinf(e["mpe"][1]) and math.isinf(e["mrpe"][1])
    assert math.isfinite(e["mtre"][1]) and e["mtre"][1] > 100  # 3D errors stay defined
    per_fid = projection_error(P, T, fid, CAM, reduce=False)[0]
    assert math.isinf(per_fid[0])
    assert math.isinf(reprojection_error(T, P, fid, CAM))  # the truth's side counts too
    s = summarize([{"mtre": float(e["mtre"][i]), "mpe": float(e["mpe"][i])} for i in range(2)])
    assert s["stats"]["mpe"]["n_inf"] == 1 and s["stats"]["mpe"]["max"] == math.inf
    assert s["stats"]["mpe"]["min"] == 0 and s["sr_1mm"] == 0.5


def test_summary_success_rates_and_percentiles():
    rows = [{"mtre": v, "opt_s": s, "init_s": 0.1} for v, s in [(0.2, 1.0), (0.5, 2.0), (1.5, 3.0), (3.0, 4.0)]]
    rows.append({"mtre": None, "opt_s": 5.0, "init_s": 0.1})  # a failed case
    s = summarize(rows)
    assert s["n_cases"] == 5
    assert s["sr_1mm"] == pytest.approx(2 / 5)
    assert s["sr_2mm"] == pytest.approx(3 / 5)
    assert s["n_failed"] == 1
    assert s["median_mtre_mm"] == pytest.approx(1.0)  # median of the 4 finite values
    assert s["median_opt_s"] == pytest.approx(3.0)
    assert s["stats"]["mtre"]["p25"] == pytest.approx(0.425)
    assert success_rate(torch.tensor([0.5, 0.99, 1.0])) == pytest.approx(2 / 3)
    with pytest.raises(InputError):
        summarize([])
    txt = format_table(rows[:2], ["mtre", "opt_s"])
    assert "mtre" in txt and "0.5" in txt


# ------------------------------------------------------------------ fiducials
def block_volume():
    data = torch.full((30, 24, 20), -1000.0)
    data[5:25, 4:20, 4:16] = 40.0  # soft tissue
    data[10:20, 8:16, 6:14] = 900.0  # bone block
    data[2, 2, 2] = 800.0  # an isolated bright voxel (noise): eroded away
    aff = torch.diag(torch.tensor([2.0, 2.0, 2.5, 1.0], dtype=torch.float64))
    aff[:3, 3] = torch.tensor([-30.0, -24.0, -25.0], dtype=torch.float64)
    return Volume(data, aff)


def test_bone_fiducials_inside_bone_spread_and_seeded():
    vol = block_volume()
    f = pick_bone_fiducials(vol, n=8, seed=3)
    assert f.shape == (8, 3) and f.dtype == torch.float64
    ijk = vol.world_to_voxel(f).round().long()
    assert bool((vol.data[ijk[:, 0], ijk[:, 1], ijk[:, 2]] == 900.0).all())
    # the block is i 10..19, j 8..15, k 6..13 (its corners have only 7 bone neighbours and are
    # dropped, its edges are kept): farthest-point sampling reaches its extent
    lo = vol.voxel_to_world(torch.tensor([10.0, 8.0, 6.0]))
    hi = vol.voxel_to_world(torch.tensor([19.0, 15.0, 13.0]))
    assert float((f.max(0).values - hi).abs().max()) < 1e-9
    assert float((f.min(0).values - lo).abs().max()) < 1e-9
    assert torch.equal(f, pick_bone_fiducials(vol, n=8, seed=3))
    m = bone_mask(vol)
    assert not bool(m[2, 2, 2]) and not bool(m[10, 8, 6]) and bool(m[11, 8, 6])  # noise and corners out


def test_bone_fiducials_in_field_of_view_and_errors():
    vol = block_volume()
    cam = Camera(sdd=1000.0, height=40, width=40, delx=1.0)
    T = carm_pose(0.0, 0.0, sod=600.0, isocenter=vol.center)
    f = pick_bone_fiducials(vol, n=6, camera=cam, poses=T, margin_px=2)
    uv = cam.project(f, T)
    assert bool(((uv >= 2) & (uv <= 37)).all())
    with pytest.raises(InputError, match="bone"):
        pick_bone_fiducials(Volume(torch.zeros(5, 5, 5), torch.eye(4)), n=3)
    with pytest.raises(InputError, match="both"):
        pick_bone_fiducials(vol, n=3, camera=cam)
    far = carm_pose(0.0, 0.0, sod=600.0, isocenter=vol.center + torch.tensor([500.0, 0, 0], dtype=torch.float64))
    with pytest.raises(InputError, match="detector"):
        pick_bone_fiducials(vol, n=3, camera=cam, poses=far)


@pytest.mark.parametrize("kw, words", [
    (dict(n=2.5), "number of fiducials n = 2.5 must be a whole number >= 1"),  # was 2 points
    (dict(n="5"), "number of fiducials n = '5' must be a whole number >= 1"),  # was 5
    (dict(n=0), "number of fiducials n = 0 must be a whole number >= 1"),
    (dict(seed="a"), "seed = 'a' must be a whole number"),  # int()'s ValueError
    (dict(poses=true_pose() * 2), "poses: not a rigid transform: "),  # the points of another field of view
    (dict(poses=torch.full((4, 4), float("nan"))), "poses: not a rigid transform: contains NaN"),  # was 'no bone of
    # the CT projects into the detector'
    (dict(poses=true_pose()[:3]), "poses must be (4, 4) or (B, 4, 4) camera_to_world, got shape (3, 4)"),  # torch's
    # reshape error
])
def test_bone_fiducials_name_a_bad_argument(kw, words):
    vol = block_volume()
    args = dict(n=6, camera=CAM, poses=carm_pose(0.0, 0.0, sod=600.0, isocenter=vol.center)) | kw
    with pytest.raises(InputError, match="^" + re.escape(words)):
        pick_bone_fiducials(vol, **args)
    assert torch.equal(pick_bone_fiducials(vol, n=np.int64(6), seed=np.int64(0)), pick_bone_fiducials(vol, n=6.0))


def test_farthest_point_sampling_line():
    pts = torch.linspace(0, 10, 11, dtype=torch.float64)[:, None] * torch.tensor([[1.0, 0, 0]], dtype=torch.float64)
    idx = farthest_point_sampling(pts, 3, first=5)
    assert sorted(idx.tolist()) == [0, 5, 10]


def test_a_fiducials_csv_header_may_be_x_y_z(tmp_path):
    """Both headers are skipped — ``name,x,y,z`` and ``x,y,z`` (the second was refused as 'not numbers'); a
    header-like line elsewhere is still an error."""
    from xraypose.errors import InputError
    from xraypose.fiducials import read_fiducials_file

    for header, names in (("name,x,y,z\na,1,2,3\nb,4,5,6\n", ["a", "b"]), ("x,y,z\n1,2,3\n4,5,6\n", ["p0", "p1"]),
                          ("X, Y, Z\n1,2,3\n4,5,6\n", ["p0", "p1"])):
        f = tmp_path / "f.csv"
        f.write_text(header)
        got, pts = read_fiducials_file(f)
        assert got == names and torch.equal(pts, torch.tensor([[1.0, 2, 3], [4, 5, 6]], dtype=torch.float64))
    f.write_text("1,2,3\nx,y,z\n")
    with pytest.raises(InputError, match=":2"):
        read_fiducials_file(f)


@pytest.mark.parametrize("suffix", [".csv", ".txt"])
def test_a_fiducials_header_after_comments_or_blank_lines_is_a_header(tmp_path, suffix):
    """An exporter's comment lines (or a blank line) before ``name,x,y,z`` made the header 'line 3: coordinates must
    be numbers'; it is the first line holding something. A second header-like line is still an error."""
    from xraypose.errors import InputError
    from xraypose.fiducials import read_fiducials_file

    f = tmp_path / f"f{suffix}"
    f.write_text("# exported by a planning tool\n# world RAS mm\n\nname,x,y,z\na,1,2,3\nb,4,5,6\n")
    got, pts = read_fiducials_file(f)
    assert got == ["a", "b"] and torch.equal(pts, torch.tensor([[1.0, 2, 3], [4, 5, 6]], dtype=torch.float64))
    f.write_text("# points\na,1,2,3\nname,x,y,z\n")
    with pytest.raises(InputError, match=f"f{suffix}:3"):
        read_fiducials_file(f)
