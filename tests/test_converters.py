"""Frame converters: DeepFluoro, negative-focal K, Ljubljana .rad, DiffDRR (0.3 and ≥ 0.4), C-arm angles."""

import numpy as np
import pytest
import torch
from conftest import requires_shared, shared_path

from xraypose.camera import Camera, carm_pose
from xraypose.converters import (
    LPS_TO_RAS, RadHeader, camera_from_diffdrr, camera_from_rad, camera_to_diffdrr, carm_angles_from_pose,
    deepfluoro_camera, orthonormalize, parse_rad, pose_from_carm_angles, pose_from_deepfluoro,
    pose_from_diffdrr, pose_from_negative_focal, pose_to_deepfluoro, pose_to_diffdrr, pose_to_negative_focal,
    project_deepfluoro, rad_from_camera, read_rad, write_rad,
)
from xraypose.errors import InputError
from xraypose.geometry import se3_exp
from xraypose.render.rays import world_rays

F64 = torch.float64
EXTRINSIC = np.array([
    [0.0014173902529073, 0.0000057733016248, 0.9999990957527923, -157.5822163123799555],
    [-0.9999907608500266, -0.0040758357952800, 0.0014174006256202, -2.6757496083693013],
    [0.0040758413782892, -0.9999918324063819, 0.0, -631.7764689585426368],
    [0.0, 0.0, 0.0, 1.0]])
K_DF = np.array([[-5257.73, 0.0, 767.5], [0.0, -5257.73, 767.5], [0.0, 0.0, 1.0]])


def _pose(seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    xi = torch.randn(6, generator=g, dtype=F64) * torch.tensor([0.5, 0.5, 0.5, 100, 100, 100], dtype=F64) * scale
    return se3_exp(xi)


def _pts(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=F64) * 60.0


# ---------------------------------------------------------------- DeepFluoro


def test_deepfluoro_projection_formula_equals_ours():
    """DeepFluoro projects LPS X by K @ (extrinsic @ inv(C2V) @ X); ours must land on the same pixels."""
    cam, flip = deepfluoro_camera(K_DF, 1536, 1536, 0.194)
    assert cam.reverse_x_axis and cam.sdd == pytest.approx(5257.73 * 0.194)
    for seed in range(4):
        # a camera_to_world in our frame whose principal ray looks at the points
        T = carm_pose(20.0 * seed - 30.0, 10.0 - 5 * seed, 650.0, torch.zeros(3, dtype=F64)) @ _pose(seed, 0.02)
        C2V = pose_to_deepfluoro(T, EXTRINSIC)
        torch.testing.assert_close(pose_from_deepfluoro(C2V, EXTRINSIC), T)
        X_ras = _pts(seed=seed)
        X_lps = (X_ras * torch.tensor([-1.0, -1.0, 1.0], dtype=F64)).numpy()
        theirs = project_deepfluoro(X_lps, C2V, EXTRINSIC, K_DF)
        ours = cam.project(X_ras, T)
        torch.testing.assert_close(ours, theirs, atol=1e-7, rtol=0)


def test_deepfluoro_pose_is_rigid_and_world_is_ras():
    C2V = se3_exp(torch.tensor([0.1, 0.2, -0.3, 5.0, -20.0, 40.0], dtype=F64))
    T = pose_from_deepfluoro(C2V, EXTRINSIC)
    R = T[:3, :3]
    torch.testing.assert_close(R.T @ R, torch.eye(3, dtype=F64), atol=1e-6, rtol=0)
    assert torch.linalg.det(R) == pytest.approx(1.0, abs=1e-6)
    # the source (their camera origin) maps to LPS_TO_RAS @ C2V @ inv(E) @ 0
    src_lps = (C2V @ torch.linalg.inv(torch.from_numpy(EXTRINSIC)))[:3, 3]
    torch.testing.assert_close(T[:3, 3], src_lps * torch.tensor([-1.0, -1.0, 1.0], dtype=F64))
    assert torch.equal(LPS_TO_RAS @ LPS_TO_RAS, torch.eye(4, dtype=F64))


def test_negative_focal_round_trip_and_projection():
    cam = Camera(sdd=1196.0, height=96, width=124, delx=3.08, x0=24.8, y0=-0.8, reverse_x_axis=True)
    T = carm_pose(90.0, 5.0, 750.0, torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    K, E = pose_to_negative_focal(cam, T)
    assert K[0, 0] < 0 and K[1, 1] < 0
    cam2, T2 = pose_from_negative_focal(K, E, 96, 124, 3.08)
    assert cam2.reverse_x_axis
    torch.testing.assert_close(T2, T)
    assert cam2.x0 == pytest.approx(cam.x0) and cam2.y0 == pytest.approx(cam.y0)
    X = _pts() + torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    P = (E @ torch.cat([X, torch.ones(len(X), 1, dtype=F64)], 1).T)[:3]
    uvw = K @ P
    torch.testing.assert_close(cam.project(X, T), (uvw[:2] / uvw[2:]).T)
    with pytest.raises(InputError, match="mirrored"):
        pose_to_negative_focal(Camera(sdd=1000.0, height=4, width=4, delx=1.0), T)


# ---------------------------------------------------------------- .rad


RAD_AP = """Size[pixels]: 2480 1920
Step[mm]: 0.154 0.154
DataType: float
TPosition:
 0.950153 -0.001778  0.311778 -192.931770
-0.311780 -0.000776  0.950154 -253.004353
-0.001447 -0.999998 -0.001291 238.952603
0 0 0 1

SourcePosition[mm]: 337.614145 831.854878 90.219354"""


def _check_rad_geometry(header: RadHeader, cam: Camera, T: torch.Tensor):
    """Pixel (c, r) sits at TPosition @ (c·Δx, r·Δy, 0); a point on the ray source→pixel projects to (c, r)."""
    cr = torch.tensor([[0.0, 0.0], [100.0, 50.0], [2479.0, 1919.0], [1200.0, 900.0]], dtype=F64)
    det = torch.stack([cr[:, 0] * header.delx, cr[:, 1] * header.dely, torch.zeros(4, dtype=F64),
                       torch.ones(4, dtype=F64)], 1)
    world = (header.T @ det.T).T[:, :3]
    mid = header.source + 0.6 * (world - header.source)
    torch.testing.assert_close(cam.project(mid, T), cr, atol=1e-6, rtol=0)


def test_rad_header_parse_convert_and_round_trip(tmp_path):
    h = parse_rad(RAD_AP)
    assert (h.width, h.height, h.delx) == (2480, 1920, 0.154)
    cam, T = camera_from_rad(h)
    assert cam.sdd == pytest.approx(1196.4, abs=0.2)
    K = cam.K()
    assert float(K[0, 2]) == pytest.approx(1078.4, abs=0.5) and float(K[1, 2]) == pytest.approx(954.2, abs=0.5)
    _check_rad_geometry(h, cam, T)
    h2 = rad_from_camera(cam, T)
    torch.testing.assert_close(h2.T, h.T, atol=1e-9, rtol=0)
    torch.testing.assert_close(h2.source, h.source)
    write_rad(tmp_path / "x.rad", h2)
    cam3, T3 = camera_from_rad(read_rad(tmp_path / "x.rad"))
    assert cam3.sdd == pytest.approx(cam.sdd, abs=1e-3)
    torch.testing.assert_close(T3, T, atol=1e-5, rtol=0)
    # a non-mirrored camera also round-trips (source on the other side of the plane)
    cam4 = Camera(sdd=900.0, height=30, width=40, delx=0.5, x0=2.0, y0=1.0)
    T4 = carm_pose(30.0, 10.0, 500.0, torch.zeros(3, dtype=F64))
    cam5, T5 = camera_from_rad(rad_from_camera(cam4, T4))
    assert cam5 == cam4 or (cam5.sdd == pytest.approx(900.0) and not cam5.reverse_x_axis)
    torch.testing.assert_close(cam5.project(_pts(), T5), cam4.project(_pts(), T4), atol=1e-8, rtol=0)


def test_rad_bad_input(tmp_path):
    with pytest.raises(InputError, match="Step"):
        parse_rad(RAD_AP.replace("Step[mm]: 0.154 0.154", "Step[mm]: 0 0"))
    with pytest.raises(InputError, match="TPosition"):
        parse_rad(RAD_AP.split("TPosition")[0] + "SourcePosition[mm]: 1 2 3")
    with pytest.raises(InputError, match="SourcePosition"):
        parse_rad(RAD_AP.split("SourcePosition")[0])
    with pytest.raises(InputError, match="not found"):
        read_rad(tmp_path / "missing.rad")
    with pytest.raises(InputError, match="orthonormal"):
        orthonormalize(np.diag([1.0, 2.0, 1.0, 1.0]))


@requires_shared
def test_real_ljubljana_headers():
    """The real .rad headers: sdd ≈ 1196 mm, principal point ≈ (1078, 953) px for AP."""
    d = shared_path("geometry", "ljubljana_two_views")
    cam, T = camera_from_rad(d / "2D_DSA_AP.rad")
    assert cam.sdd == pytest.approx(1196, abs=1.0)
    K = cam.K()
    assert float(K[0, 2]) == pytest.approx(1078, abs=2.0)
    assert float(K[1, 2]) == pytest.approx(953, abs=2.0)
    assert (cam.height, cam.width) == (1920, 2480)
    _check_rad_geometry(read_rad(d / "2D_DSA_AP.rad"), cam, T)
    cam_l, T_l = camera_from_rad(d / "2D_DSA_LAT.rad")
    assert 1000 < cam_l.sdd < 1400
    # the two principal rays are far apart (AP and lateral: about 73° here)
    assert abs(float(T[:3, 2] @ T_l[:3, 2])) < 0.5


# ---------------------------------------------------------------- DiffDRR


def _diffdrr04_rays(M, reorient, sdd, H, W, delx, dely, x0, y0, reverse):
    """DiffDRR ≥ 0.4's rays as its Detector builds them: source at 0; pixel (r, c) at
    (Δx·s(c) + x0, Δy·((H−1)/2 − r) + y0, sdd), s(c) = c − (W−1)/2 (or reversed); world = M @ reorient."""
    r, c = torch.meshgrid(torch.arange(H, dtype=F64), torch.arange(W, dtype=F64), indexing="ij")
    s = (c - (W - 1) / 2) * (-1.0 if reverse else 1.0)
    t = (H - 1) / 2 - r
    tgt = torch.stack([delx * s + x0, dely * t + y0, torch.full_like(s, sdd), torch.ones_like(s)], -1).reshape(-1, 4)
    P = M @ reorient
    return P[:3, 3], (P @ tgt.T).T[:, :3]


def _diffdrr03_rays(M, sdd, H, W, delx, dely, x0, y0, reverse):
    """DiffDRR 0.3 (DiffPose era): source (sdd/2, 0, 0); detector x = −sdd/2; rows along +y (spacing delx),
    columns along +z (spacing dely, reversed if asked); minus (y0, x0); world = [R | t]."""
    r, c = torch.meshgrid(torch.arange(H, dtype=F64), torch.arange(W, dtype=F64), indexing="ij")
    t = (r - (H - 1) / 2) * delx
    s = (c - (W - 1) / 2) * dely * (-1.0 if reverse else 1.0)
    tgt = torch.stack([torch.full_like(s, -sdd / 2), t - y0, s - x0, torch.ones_like(s)], -1).reshape(-1, 4)
    src = (M @ torch.tensor([sdd / 2, 0.0, 0.0, 1.0], dtype=F64))[:3]
    return src, (M @ tgt.T).T[:, :3]


@pytest.mark.parametrize("reverse", [True, False])
@pytest.mark.parametrize("version", ["0.4", "0.3"])
def test_diffdrr_rays_match_ours(version, reverse):
    H, W, sdd, delx, dely, x0, y0 = 5, 7, 1000.0, 1.3, 1.1, 4.0, -3.0
    M = _pose(5)
    reorient = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=F64)
    if version == "0.4":
        src, tgt = _diffdrr04_rays(M, reorient, sdd, H, W, delx, dely, x0, y0, reverse)
        ours = pose_from_diffdrr(M, reorient=reorient)
        back = pose_to_diffdrr(ours, reorient=reorient)
    else:
        src, tgt = _diffdrr03_rays(M, sdd, H, W, delx, dely, x0, y0, reverse)
        ours = pose_from_diffdrr(M, version="0.3", sdd=sdd)
        back = pose_to_diffdrr(ours, version="0.3", sdd=sdd)
    cam = camera_from_diffdrr(sdd, H, delx, W, dely, x0, y0, reverse_x_axis=reverse, version=version)
    s2, t2 = world_rays(cam, ours[None], cam.pixel_grid(F64))
    torch.testing.assert_close(s2[0], src)
    torch.testing.assert_close(t2[0], tgt)
    torch.testing.assert_close(back, M)
    assert camera_from_diffdrr(**camera_to_diffdrr(cam, version), version=version) == cam


def test_diffdrr_world_offset_and_errors():
    M = _pose(1)
    centre = torch.tensor([3.0, 160.0, 260.0], dtype=F64)
    W = torch.eye(4, dtype=F64)
    W[:3, 3] = centre
    T = pose_from_diffdrr(M, world_from_diffdrr=W)
    torch.testing.assert_close(T[:3, 3], M[:3, 3] + centre)
    torch.testing.assert_close(pose_to_diffdrr(T, world_from_diffdrr=W), M)
    with pytest.raises(InputError, match="sdd"):
        pose_from_diffdrr(M, version="0.3")
    with pytest.raises(InputError, match="version"):
        pose_from_diffdrr(M, version="banana")
    with pytest.raises(InputError, match="4×4"):
        pose_from_diffdrr(torch.eye(3))


def test_against_installed_diffdrr():
    """Optional: DiffDRR's own Detector gives the same rays (runs only where diffdrr is installed)."""
    pytest.importorskip("diffdrr.detector")
    from diffdrr.detector import Detector
    from diffdrr.pose import RigidTransform

    reorient = torch.tensor([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float32)
    for reverse in (True, False):
        det = Detector(1000.0, 5, 7, 1.3, 1.1, 4.0, -3.0, reorient, reverse_x_axis=reverse).double()
        M = _pose(2)
        src, tgt = det(RigidTransform(M[None]), None)
        ours = pose_from_diffdrr(M, reorient=reorient)
        cam = camera_from_diffdrr(1000.0, 5, 1.3, 7, 1.1, 4.0, -3.0, reverse_x_axis=reverse)
        s2, t2 = world_rays(cam, ours[None], cam.pixel_grid(F64))
        torch.testing.assert_close(tgt[0].double(), t2[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(src[0, 0].double(), s2[0], atol=1e-6, rtol=0)


# ---------------------------------------------------------------- DICOM angles


@pytest.mark.parametrize("a,b", [(0.0, 0.0), (30.0, -20.0), (-45.0, 25.0), (90.0, 0.0), (-120.0, 40.0)])
def test_carm_angles_round_trip(a, b):
    iso = torch.tensor([5.0, -10.0, 30.0], dtype=F64)
    T = pose_from_carm_angles(a, b, 620.0, iso)
    out = carm_angles_from_pose(T, iso)
    assert out["primary"] == pytest.approx(a, abs=1e-9)
    assert out["secondary"] == pytest.approx(b, abs=1e-9)
    assert out["sod"] == pytest.approx(620.0) and out["miss"] == pytest.approx(0.0, abs=1e-9)
    assert out["roll"] == pytest.approx(0.0, abs=1e-9)
    rolled = carm_angles_from_pose(pose_from_carm_angles(a, b, 620.0, iso, roll180=True), iso)
    assert abs(rolled["roll"]) == pytest.approx(180.0, abs=1e-9)
    assert rolled["primary"] == pytest.approx(a, abs=1e-9)


def test_carm_angle_signs_follow_dicom():
    """LAO: the source moves to the patient's right-posterior, the detector to the left (DICOM PS3.3 C.8.7.5)."""
    iso = torch.zeros(3, dtype=F64)
    lao = pose_from_carm_angles(30.0, 0.0, 600.0, iso)
    assert float(lao[0, 3]) > 0 and float(lao[1, 3]) < 0  # source: +x (right), −y (posterior) in RAS
    cran = pose_from_carm_angles(0.0, 30.0, 600.0, iso)
    assert float(cran[2, 3]) < 0  # cranial tilt: detector toward the head, source toward the feet
