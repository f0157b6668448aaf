"""Camera intrinsics, projection, resampling, mirrored detectors, K conversion and C-arm angles."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xraypose.camera import Camera, camera_from_K, carm_pose
from xraypose.errors import InputError

F64 = torch.float64


def test_intrinsics_from_carm_parameters():
    cam = Camera(sdd=1020.0, height=100, width=200, delx=0.5, dely=0.25, x0=2.0, y0=-1.0)
    K = cam.K()
    assert K[0, 0] == pytest.approx(2040.0)
    assert K[1, 1] == pytest.approx(4080.0)
    assert K[0, 2] == pytest.approx(99.5 + 4.0)
    assert K[1, 2] == pytest.approx(49.5 - 4.0)


def test_isocenter_projects_to_principal_point_and_axes():
    iso = torch.tensor([10.0, -5.0, 30.0], dtype=F64)
    cam = Camera(sdd=1000.0, height=101, width=81, delx=1.0)
    T = carm_pose(0.0, 0.0, sod=600.0, isocenter=iso)
    torch.testing.assert_close(T[:3, 3], iso - torch.tensor([0.0, 600.0, 0.0], dtype=F64))
    pts = torch.stack([iso, iso + torch.tensor([0.0, 0.0, -10.0], dtype=F64), iso + torch.tensor([10.0, 0, 0], dtype=F64)])
    uv = cam.project(pts, T)
    torch.testing.assert_close(uv[0], torch.tensor([40.0, 50.0], dtype=F64))
    assert uv[1, 1] > uv[0, 1]  # feet toward +v (down the image)
    assert uv[2, 0] > uv[0, 0]  # patient's right toward +u seen from the source
    # magnification sdd/sod
    assert uv[1, 1] - uv[0, 1] == pytest.approx(10.0 * 1000 / 600)
    mirrored = Camera(sdd=1000.0, height=101, width=81, delx=1.0, reverse_x_axis=True)
    uv_m = mirrored.project(pts, T)
    torch.testing.assert_close(uv_m[:, 0], 80 - uv[:, 0])
    torch.testing.assert_close(uv_m[:, 1], uv[:, 1])


def test_carm_angles_directions():
    iso = torch.zeros(3, dtype=F64)
    lao90 = carm_pose(90.0, 0.0, sod=500.0, isocenter=iso)
    torch.testing.assert_close(lao90[:3, 2], torch.tensor([-1.0, 0.0, 0.0], dtype=F64), atol=1e-12, rtol=0)
    cran30 = carm_pose(0.0, 30.0, sod=500.0, isocenter=iso)
    assert cran30[2, 2] == pytest.approx(0.5)  # detector tilted toward the head
    Rs = carm_pose(torch.linspace(-180, 180, 7), torch.linspace(-60, 60, 7), sod=500.0, isocenter=iso)
    for T in Rs:
        R = T[:3, :3]
        torch.testing.assert_close(R.T @ R, torch.eye(3, dtype=F64))
        assert torch.linalg.det(R) == pytest.approx(1.0)
        torch.testing.assert_close(T[:3, 3] + 500.0 * R[:, 2], iso, atol=1e-9, rtol=0)
    assert carm_pose(math.pi / 2, 0.0, 500.0, iso, degrees=False).allclose(lao90)


@settings(max_examples=60, deadline=None)
@given(
    st.floats(-180, 180), st.floats(-60, 60), st.floats(200, 1500),
    st.floats(0.1, 2.0), st.floats(0.1, 2.0), st.floats(-20, 20), st.floats(-20, 20), st.booleans(),
    st.lists(st.floats(-100, 600), min_size=2, max_size=2),
)
def test_backproject_then_project_roundtrip(a, b, sdd, dx, dy, x0, y0, mirror, uv):
    cam = Camera(sdd=sdd, height=50, width=70, delx=dx, dely=dy, x0=x0, y0=y0, reverse_x_axis=mirror)
    T = carm_pose(a, b, sod=sdd * 0.6, isocenter=[1.0, 2.0, 3.0])
    uv = torch.tensor([uv], dtype=F64)
    X = cam.backproject(uv, T)
    assert cam.depth(X, T)[0] == pytest.approx(sdd)
    torch.testing.assert_close(cam.project(X, T), uv, atol=1e-7, rtol=0)


@pytest.mark.parametrize("mirror", [False, True])
def test_resize_and_crop_follow_the_image(mirror):
    cam = Camera(sdd=1000.0, height=120, width=160, delx=0.4, dely=0.5, x0=3.0, y0=-2.0, reverse_x_axis=mirror)
    T = carm_pose(20.0, 10.0, sod=600.0, isocenter=[0.0, 0.0, 0.0])
    X = torch.tensor([[5.0, 3.0, -8.0], [-20.0, 1.0, 15.0]], dtype=F64)
    uv = cam.project(X, T)
    small = cam.resize(30, 40)
    torch.testing.assert_close(small.project(X, T), (uv + 0.5) * torch.tensor([0.25, 0.25], dtype=F64) - 0.5)
    assert small.detector_size_mm == pytest.approx(cam.detector_size_mm)
    assert cam.rescale(0.5).height == 60
    crop = cam.crop(top=10, left=25, height=90, width=100)
    torch.testing.assert_close(crop.project(X, T), uv - torch.tensor([25.0, 10.0], dtype=F64))


def test_negative_focal_K_is_converted_explicitly():
    # DeepFluoro: K with negative focal, camera +z toward the source.
    K = torch.tensor([[-5257.73, 0, 767.5], [0, -5257.73, 760.0], [0, 0, 1]], dtype=F64)
    cam, flip = camera_from_K(K, 1536, 1536, delx=0.194)
    assert cam.sdd == pytest.approx(5257.73 * 0.194)
    assert cam.reverse_x_axis
    torch.testing.assert_close(cam.K(), K * torch.tensor([[1, 0, 1], [0, -1, 1], [0, 0, 1]], dtype=F64))
    # A world -> camera extrinsic in their frame, and a point in front of their camera (z < 0).
    ang = 0.3
    Rz = torch.tensor([[math.cos(ang), -math.sin(ang), 0], [math.sin(ang), math.cos(ang), 0], [0, 0, 1]], dtype=F64)
    E = torch.eye(4, dtype=F64)
    E[:3, :3] = Rz
    E[:3, 3] = torch.tensor([5.0, -3.0, -600.0], dtype=F64)
    X = torch.tensor([[10.0, 20.0, -30.0], [-40.0, 5.0, 12.0]], dtype=F64)
    P = (X @ E[:3, :3].T + E[:3, 3]) @ K.T
    theirs = P[:, :2] / P[:, 2:]
    ours = cam.project(X, torch.linalg.inv(E) @ flip)
    torch.testing.assert_close(ours, theirs)
    pos_cam, pos_flip = camera_from_K(cam.K() * torch.tensor([[-1, 0, 1], [0, 1, 1], [0, 0, 1]], dtype=F64), 1536, 1536, 0.194)
    assert not pos_cam.reverse_x_axis and torch.equal(pos_flip, torch.eye(4, dtype=F64))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sdd=0.0, height=10, width=10, delx=1.0), "source-to-detector"),
        (dict(sdd=-5.0, height=10, width=10, delx=1.0), "source-to-detector"),
        (dict(sdd=1000.0, height=0, width=10, delx=1.0), "zero-size"),
        (dict(sdd=1000.0, height=10, width=10, delx=0.0), "spacing"),
        (dict(sdd=1000.0, height=10, width=10, delx=1.0, dely=float("nan")), "spacing"),
        (dict(sdd=1000.0, height=10.5, width=10, delx=1.0), "whole number"),
        (dict(sdd=1000.0, height=torch.tensor(10.5), width=10, delx=1.0), "whole number"),
        (dict(sdd=1000.0, height=torch.tensor(True), width=10, delx=1.0), "whole number"),
        (dict(sdd=1000.0, height=torch.tensor([10, 10]), width=10, delx=1.0), "whole number"),
    ],
)
def test_bad_camera(kwargs, match):
    with pytest.raises(InputError, match=match):
        Camera(**kwargs)


def test_bad_K():
    with pytest.raises(InputError, match="singular"):
        camera_from_K(torch.zeros(3, 3), 10, 10, 1.0)
    with pytest.raises(InputError, match="3×3"):
        camera_from_K(torch.eye(4), 10, 10, 1.0)
    with pytest.raises(InputError, match="NaN"):
        camera_from_K(torch.full((3, 3), float("nan")), 10, 10, 1.0)
    with pytest.raises(InputError, match="opposite signs"):
        camera_from_K([[100.0, 0, 5], [0, -100.0, 5], [0, 0, 1]], 10, 10, 1.0)
    with pytest.raises(InputError, match="sod|source-to-isocenter"):
        carm_pose(0.0, 0.0, sod=0.0, isocenter=[0, 0, 0])


def test_a_one_number_tensor_is_a_size_as_it_is_a_distance():
    """``Camera(sdd=torch.tensor(1000.))`` was taken while ``height=torch.tensor(16)`` (an image's shape entry)
    was refused."""
    import numpy as np

    cam = Camera(sdd=torch.tensor(1000.0), height=torch.tensor(16), width=np.int64(12), delx=torch.tensor(1.0))
    assert (cam.height, cam.width) == (16, 12) and type(cam.height) is int


def test_project_names_points_and_poses_of_the_wrong_shape():
    """torch's matmul error named neither the points nor the pose."""
    cam = Camera(sdd=1000.0, height=16, width=16, delx=1.0)
    T = torch.eye(4, dtype=F64)
    T[2, 3] = -600.0
    X = torch.zeros(5, 3, dtype=F64)
    assert cam.project(X, T).shape == (5, 2) and cam.depth(X, T).shape == (5,)
    with pytest.raises(InputError, match=r"points \(world mm\) must be \(\.\.\., N, 3\), got shape \(5, 2\)"):
        cam.project(X[:, :2], T)
    with pytest.raises(InputError, match=r"camera_to_world must be \(\.\.\., 4, 4\), got shape \(3, 4\)"):
        cam.project(X, T[:3])
    with pytest.raises(InputError, match="must be a floating-point tensor"):
        cam.depth(X.long(), T)
    with pytest.raises(InputError, match="must be a torch tensor"):
        cam.project(X.tolist(), T)
    with pytest.raises(InputError, match=r"pixels \(u, v\) must be \(\.\.\., N, 2\)"):
        cam.backproject(X, T)
