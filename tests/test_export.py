import csv
import json

import numpy as np
import pytest
import torch

from xraypose.camera import Camera, carm_pose
from xraypose.errors import InputError
from xraypose.export import (
    read_slicer_transform, slicer_matrix, write_landmarks_csv, write_pose_json, write_slicer_transform,
)


def _pose():
    return carm_pose(25.0, -10.0, 600.0, isocenter=[10.0, -20.0, 30.0])


def test_pose_json(tmp_path):
    cam = Camera(sdd=1020.0, height=64, width=80, delx=2.0)
    p = write_pose_json(tmp_path / "pose.json", _pose(), cam, mtre_mm=0.2)
    d = json.loads(p.read_text())
    T = np.array(d["camera_to_world"])
    np.testing.assert_allclose(np.array(d["world_to_camera"]) @ T, np.eye(4), atol=1e-12)
    assert d["intrinsics"]["sdd_mm"] == 1020.0 and d["units"]["length"] == "mm" and d["mtre_mm"] == 0.2


@pytest.mark.parametrize("suffix", [".tfm", ".h5"])
def test_slicer_transform_round_trip(tmp_path, suffix):
    T = _pose()
    path = write_slicer_transform(tmp_path / f"pose{suffix}", T)
    torch.testing.assert_close(read_slicer_transform(path), T, atol=1e-9, rtol=0)
    # The file holds the LPS resampling transform: it maps the source (camera origin, in LPS) to 0.
    M = slicer_matrix(T)
    src_lps = np.array([-T[0, 3], -T[1, 3], T[2, 3], 1.0])
    np.testing.assert_allclose(M @ src_lps, [0, 0, 0, 1], atol=1e-9)
    with pytest.raises(InputError):
        write_slicer_transform(tmp_path / "pose.json", T)


def test_landmarks_csv(tmp_path):
    p = write_landmarks_csv(tmp_path / "lm.csv", ["a", "b"], torch.tensor([[1.0, 2, 3], [4, 5, 6]]),
                            torch.tensor([[10.5, 20.25], [1, 2]]))
    rows = list(csv.DictReader(p.open()))
    assert rows[0]["name"] == "a" and float(rows[1]["z_mm"]) == 6.0 and float(rows[0]["v_px"]) == 20.25
    with pytest.raises(InputError, match="counts differ"):
        write_landmarks_csv(tmp_path / "x.csv", ["a"], torch.zeros(2, 3), torch.zeros(2, 2))
