"""rig.json and the rig builders: views in order, rigid camera_to_rig, intrinsics, matching X-rays, bad rigs."""

import json

import numpy as np
import pytest
import torch

from conftest import requires_shared, shared_path
from xraypose.calibration import read_mayacam_camera, write_mayacam
from xraypose.camera import Camera, carm_pose
from xraypose.errors import InputError
from xraypose.rig import RIG_RIGID_TOL, Rig, RigView, read_rig, rig_from_carm, rig_from_mayacam, rig_from_xrays, write_rig
from xraypose.xray import read_xray, write_dicom_xray

EYE = np.eye(4).tolist()


def rot_z(deg, t=(0.0, 0.0, 0.0)):
    a = np.deg2rad(deg)
    T = np.eye(4)
    T[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    T[:3, 3] = t
    return T.tolist()


def write_json(tmp_path, doc, name="rig.json"):
    f = tmp_path / name
    f.write_text(json.dumps(doc))
    return f


def test_read_views_in_order_with_intrinsics(tmp_path):
    doc = {"description": "two shots", "views": {
        "b.png": {"camera_to_rig": rot_z(90, (0, 0, 10)),
                  "K": [[2000.0, 0, 63.5], [0, 2000.0, 60.0], [0, 0, 1]], "height": 128, "width": 128},
        "a.png": {"camera_to_rig": EYE,
                  "camera": {"sdd_mm": 1000.0, "delx_mm": 0.5, "height": 64, "width": 80, "x0_mm": 2.0}},
        "c.dcm": {"camera_to_rig": rot_z(-30)}}}
    rig = read_rig(write_json(tmp_path, doc))
    assert rig.names == ["b.png", "a.png", "c.dcm"] and rig.description == "two shots"
    assert torch.allclose(rig["b.png"].camera_to_rig, torch.tensor(rot_z(90, (0, 0, 10)), dtype=torch.float64))
    kb = rig["b.png"].camera.K()
    assert torch.allclose(kb, torch.tensor([[2000.0, 0, 63.5], [0, 2000.0, 60.0], [0, 0, 1]], dtype=torch.float64))
    assert rig["a.png"].camera == Camera(sdd=1000.0, height=64, width=80, delx=0.5, x0=2.0)
    assert rig["c.dcm"].camera is None
    # rig_to_world · camera_to_rig for every view
    W = torch.tensor(rot_z(15, (1, 2, 3)), dtype=torch.float64)
    C = rig.camera_to_world(W)
    assert C.shape == (3, 4, 4) and torch.allclose(C[0], W @ rig["b.png"].camera_to_rig)
    assert rig.camera_to_world(W[None].expand(2, 4, 4)).shape == (2, 3, 4, 4)


def test_write_read_round_trip(tmp_path):
    cam = Camera(sdd=900.0, height=50, width=60, delx=0.4, dely=0.41, x0=1.0, y0=-1.0)
    rig = Rig(views={"x.png": RigView("x.png", torch.tensor(rot_z(40, (5, 6, 7)), dtype=torch.float64), cam),
                     "y.png": RigView("y.png", torch.eye(4, dtype=torch.float64), None)},
              camera=Camera(sdd=1000.0, height=50, width=60, delx=0.5), description="d")
    f = tmp_path / "rig.json"
    write_rig(f, rig)
    back = read_rig(f)
    assert back.names == rig.names and back.camera == rig.camera and back["x.png"].camera == cam
    assert torch.allclose(back.camera_to_rig(), rig.camera_to_rig(), atol=1e-15)


def test_match_x_rays_both_ways(tmp_path):
    rig = read_rig(write_json(tmp_path, {"views": {"cam01": {"camera_to_rig": EYE},
                                                   "cam02.tif": {"camera_to_rig": rot_z(110)}}}))
    views = rig.match(["/data/cam02.tif", "/data/cam01.tif"])  # by file name, and by stem
    assert [v.name for v in views] == ["cam02.tif", "cam01"]
    with pytest.raises(InputError, match=r"key 'views/cam02.tif' names an X-ray that is not given"):
        rig.match(["cam01.tif"])
    with pytest.raises(InputError, match=r"no view for the X-ray 'cam03.tif'"):
        rig.match(["cam01.tif", "cam02.tif", "cam03.tif"])
    with pytest.raises(InputError, match="both match the view 'cam01'"):
        rig.match(["a/cam01.tif", "b/cam01.png", "cam02.tif"])
    # one camera's frames in its folder: the folder names the view
    assert [v.name for v in rig.match(["run/cam01/f0002.tif", "cam02.tif"])] == ["cam01", "cam02.tif"]
    with pytest.raises(InputError, match="both match the view 'cam01'"):
        rig.match(["run/cam01/f0002.tif", "run/cam01/f0003.tif", "cam02.tif"])


def test_cameras_precedence_and_sizes(tmp_path):
    own = {"sdd_mm": 1000.0, "delx_mm": 0.5, "height": 64, "width": 64}
    rig = read_rig(write_json(tmp_path, {"views": {"a": {"camera_to_rig": EYE, "camera": own},
                                                   "b": {"camera_to_rig": rot_z(90)},
                                                   "c": {"camera_to_rig": rot_z(180)}}}))
    views = rig.match(["a.png", "b.png", "c.png"])
    filecam = Camera(sdd=1200.0, height=32, width=48, delx=0.3)
    shared = Camera(sdd=800.0, height=40, width=40, delx=0.2)
    cams = rig.cameras(views, [(64, 64), (32, 48), (40, 40)], [filecam, filecam, None], default_camera=shared)
    assert cams[0].sdd == 1000.0 and cams[1] == filecam and cams[2] == shared
    with pytest.raises(InputError, match="key 'views/a' describes a 64 × 64 detector but its X-ray is 65 × 64"):
        rig.cameras(views, [(65, 64), (32, 48), (40, 40)], [None, filecam, None], default_camera=shared)
    with pytest.raises(InputError, match=r"views 'b' \(40 × 40\) and 'c' \(41 × 40\) have different sizes and no "
                                         "intrinsics of their own"):
        rig.cameras(views, [(64, 64), (40, 40), (41, 40)], default_camera=shared)
    with pytest.raises(InputError, match="no intrinsics for view 'b'"):
        rig.cameras(views, [(64, 64), (40, 40), (40, 40)])
    with pytest.raises(InputError, match="shared intrinsics describe a 40 × 40 detector"):
        rig.cameras(views, [(64, 64), (50, 50), (50, 50)], default_camera=shared)


def scaled(s):
    T = np.eye(4)
    T[:3, :3] *= s
    return T.tolist()


@pytest.mark.parametrize("doc, words", [
    ({"views": {"a": {"camera_to_rig": scaled(1.01)}}}, r"'views/a/camera_to_rig' is not a rigid transform"),
    ({"views": {"a": {"camera_to_rig": np.diag([1, 1, -1, 1.0]).tolist()}}}, "reflection"),
    ({"views": {"a": {"camera_to_rig": (np.eye(4) + np.diag([0, 0, 0, 0.5])).tolist()}}}, "last row"),
    ({"views": {"a": {"camera_to_rig": EYE[:3]}}}, r"'views/a/camera_to_rig' must be a 4×4 matrix"),
    ({"views": {"a": {"camera_to_rig": EYE, "sdd": 1000}}}, r"unknown key 'views/a/sdd'"),
    ({"views": {"a": {"camera_to_rig": EYE}}, "frame": "x"}, "unknown key 'frame'"),
    ({"views": {"a": {}}}, "lacks the key 'camera_to_rig'"),
    ({"views": []}, "key 'views' must be an object"),
    ({"views": {}}, "names no X-ray"),
    ({}, "lacks the key 'views'"),
    ({"views": {"a": {"camera_to_rig": "identity"}}}, r"'views/a/camera_to_rig' must be a 4×4"),
    ({"views": {"a": {"camera_to_rig": EYE, "K": [[1000, 0, 5], [0, 1000, 5], [0, 0, 1]]}}}, "needs 'views/a/height'"),
    ({"views": {"a": {"camera_to_rig": EYE, "height": 10}}}, "given without 'views/a/K'"),
    ({"views": {"a": {"camera_to_rig": EYE, "K": [[1000, 0, 5], [0, 1000, 5], [0, 0, 1]], "height": 10,
                      "width": 10, "camera": {"sdd_mm": 1, "delx_mm": 1, "height": 10, "width": 10}}}},
     "cannot be given with"),
    ({"views": {"a": {"camera_to_rig": EYE, "camera": {"sdd_mm": "1000", "delx_mm": 1, "height": 10, "width": 10}}}},
     r"'views/a/camera/sdd_mm' must be a number"),
    ({"views": {"a": {"camera_to_rig": EYE, "camera": {"sdd_mm": 1000, "delx_mm": 1, "height": 10, "width": 10,
                                                       "K": [[5, 0, 4.5], [0, 5, 4.5], [0, 0, 1]]}}}},
     "disagrees with the other intrinsics"),
    ({"views": {"a": {"camera_to_rig": EYE, "K": [[-1000, 0, 5], [0, -1000, 5], [0, 0, 1]], "height": 10,
                      "width": 10}}}, "negative focal lengths"),
])
def test_bad_rig_files(tmp_path, doc, words):
    f = write_json(tmp_path, doc)
    with pytest.raises(InputError, match=words) as e:
        read_rig(f)
    assert "\n" not in str(e.value) and str(f) in str(e.value)


@pytest.mark.parametrize("entry, words", [
    ({"K": [[3000.0, 0, 5000.0], [0, 3000.0, 16.0], [0, 0, 1]], "height": 32, "width": 32},
     r"key 'views/b/K' puts the principal point at \(u, v\) = \(5000, 16\) pixels, more than one detector width or "
     r"height outside the 32 × 32 detector"),
    ({"K": [[3000.0, 0, 16.0], [0, 3000.0, -40.0], [0, 0, 1]], "height": 32, "width": 32}, r"\(16, -40\) pixels"),
    ({"camera": {"sdd_mm": 1000.0, "delx_mm": 0.5, "height": 32, "width": 32, "x0_mm": 30.0}},
     r"key 'views/b/camera' puts the principal point at \(u, v\) = \(75.5, 15.5\)"),
])
def test_a_principal_point_far_outside_the_detector_is_refused_when_read(tmp_path, entry, words):
    f = write_json(tmp_path, {"views": {"a": {"camera_to_rig": EYE}, "b": {"camera_to_rig": rot_z(90), **entry}}})
    with pytest.raises(InputError, match=words) as e:
        read_rig(f)
    assert "\n" not in str(e.value) and str(f) in str(e.value)
    # off-centre, even somewhat outside (up to a detector's width beyond its edge): a real calibration's
    ok = {"views": {"a": {"camera_to_rig": EYE, "K": [[3000.0, 0, 63.0], [0, 3000.0, -32.0], [0, 0, 1]],
                          "height": 32, "width": 32},
                    "b": {"camera_to_rig": rot_z(90), "camera": {"sdd_mm": 1000.0, "delx_mm": 0.5, "height": 32,
                                                                  "width": 32, "x0_mm": -20.0, "y0_mm": 3.0}}}}
    rig = read_rig(write_json(tmp_path, ok, "ok.json"))
    assert rig["a"].camera.principal_point == pytest.approx((63.0, -32.0))


def test_rigid_tolerance_is_the_named_one(tmp_path):
    T = np.array(rot_z(30))
    T[0, 0] += 0.5 * RIG_RIGID_TOL  # within the tolerance: read, and projected onto a rotation
    rig = read_rig(write_json(tmp_path, {"views": {"a": {"camera_to_rig": T.tolist()}}}))
    R = rig["a"].camera_to_rig[:3, :3]
    assert torch.allclose(R.T @ R, torch.eye(3, dtype=torch.float64), atol=1e-12)
    T[0, 0] += 3 * RIG_RIGID_TOL
    with pytest.raises(InputError, match="not orthonormal"):
        read_rig(write_json(tmp_path, {"views": {"a": {"camera_to_rig": T.tolist()}}}, "bad.json"))
    with pytest.raises(InputError, match="not found"):
        read_rig(tmp_path / "none.json")


def test_two_views_from_one_place_are_refused_naming_both(tmp_path):
    """Two views with the same camera_to_rig (within 1e-6 mm, 1e-9 rad) add nothing: a copy-paste error."""
    T = np.array(rot_z(30, (10.0, 20.0, 600.0)))
    near = T.copy()
    near[:3, 3] += 3e-7  # 0.5 nm away: the same place
    f = write_json(tmp_path, {"views": {"ap": {"camera_to_rig": rot_z(-60)}, "cam01": {"camera_to_rig": T.tolist()},
                                        "cam02": {"camera_to_rig": near.tolist()}}})
    with pytest.raises(InputError, match=r"views 'cam01' and 'cam02' have the same camera_to_rig") as e:
        read_rig(f)
    assert "\n" not in str(e.value) and str(f) in str(e.value)
    with pytest.raises(InputError, match=r"views 'a' and 'b' have the same camera_to_rig"):
        rig_from_carm({"a": (30.0, 10.0), "b": (30.0, 10.0)}, sod=700.0)
    # views 1 µm or 1 µrad apart are two places
    apart = T.copy()
    apart[:3, 3] += [1e-3, 0.0, 0.0]
    turned = np.array(rot_z(30 + np.rad2deg(1e-6), (10.0, 20.0, 600.0)))
    rig = read_rig(write_json(tmp_path, {"views": {"a": {"camera_to_rig": T.tolist()},
                                                   "b": {"camera_to_rig": apart.tolist()},
                                                   "c": {"camera_to_rig": turned.tolist()}}}, "ok.json"))
    assert rig.names == ["a", "b", "c"]


def test_rig_from_carm_angles():
    rig = rig_from_carm({"ap": (0, 0), "lao30": {"primary": 30, "secondary": 10, "sod": 650}}, sod=700)
    assert torch.allclose(rig["ap"].camera_to_rig, carm_pose(0, 0, sod=700, isocenter=torch.zeros(3)))
    assert torch.allclose(rig["lao30"].camera_to_rig, carm_pose(30, 10, sod=650, isocenter=torch.zeros(3)))
    # the principal rays of every shot pass through the rig origin (the isocenter)
    for v in rig.views.values():
        src, z = v.camera_to_rig[:3, 3], v.camera_to_rig[:3, 2]
        assert torch.allclose(src + src.norm() * z, torch.zeros(3, dtype=torch.float64), atol=1e-9)
    iso = torch.tensor([10.0, -20.0, 30.0], dtype=torch.float64)
    W = torch.eye(4, dtype=torch.float64)
    W[:3, 3] = iso
    assert torch.allclose(rig.camera_to_world(W)[1], carm_pose(30, 10, sod=650, isocenter=iso))
    with pytest.raises(InputError, match="no source-to-isocenter distance"):
        rig_from_carm({"ap": (0, 0)})
    with pytest.raises(InputError, match="secondary angle"):
        rig_from_carm({"ap": (0, 95)}, sod=700)
    with pytest.raises(InputError, match="unknown key 'roll'"):
        rig_from_carm({"ap": {"primary": 0, "roll": 3}}, sod=700)


def test_rig_from_dicom_angles(tmp_path):
    cam = Camera(sdd=1000.0, height=32, width=32, delx=1.0)
    xrays = {}
    for name, a in (("s1.dcm", 0.0), ("s2.dcm", 35.0)):
        write_dicom_xray(tmp_path / name, np.zeros((32, 32)), camera=cam, primary=a, secondary=5.0, sod=600.0)
        xrays[name] = read_xray(tmp_path / name)
    rig = rig_from_xrays(xrays)
    assert rig["s2.dcm"].camera == cam
    assert torch.allclose(rig["s2.dcm"].camera_to_rig, carm_pose(35.0, 5.0, sod=600.0, isocenter=torch.zeros(3)))


def test_rig_from_mayacam(tmp_path):
    cams = {"v1.tif": (Camera(sdd=1000.0, height=40, width=50, delx=0.2), rot_z(0, (0, 0, -900))),
            "v2.tif": (Camera(sdd=1000.0, height=40, width=50, delx=0.2), rot_z(0, (100, 0, -900)))}
    files = {}
    for n, (c, T) in cams.items():
        files[n] = tmp_path / f"{n}.txt"
        write_mayacam(files[n], c, torch.tensor(T, dtype=torch.float64))
    rig = rig_from_mayacam(files)
    for n, f in files.items():
        c, T = read_mayacam_camera(f)
        assert torch.allclose(rig[n].camera_to_rig, T) and rig[n].camera == c


@requires_shared
def test_wrist_biplane_rig():
    d = shared_path("autoscoper_wrist", "calibration")
    rig = rig_from_mayacam({c: d / f"xr_calib_wrist_{c}.txt" for c in ("cam01", "cam02")})
    z1, z2 = rig["cam01"].camera_to_rig[:3, 2], rig["cam02"].camera_to_rig[:3, 2]
    angle = float(torch.rad2deg(torch.arccos(z1 @ z2)))
    assert 100 < angle < 120, angle  # "about 110 degrees apart" (README)


def test_the_documented_rig_json_reads(tmp_path):
    """docs/datasets.md §8.3's example is a valid rig.json (the wrist calibration, rounded)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text(encoding="utf-8")
    block = [b for b in re.findall(r"```json\n(.*?)```", text, flags=re.S) if '"camera_to_rig"' in b]
    assert len(block) == 1
    rig = read_rig(write_json(tmp_path, json.loads(block[0])))
    assert rig.names == ["cam01.tif", "cam02.tif"]
    assert rig["cam01.tif"].camera.K()[0, 0] == pytest.approx(6167.3534)
    assert rig["cam02.tif"].camera.sdd == pytest.approx(1272.296)
