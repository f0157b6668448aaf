"""The input checks accept what is right: schemas, option ranges, size limits (the refusals are in
tests/test_bad_inputs.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xraypose.camera import Camera, carm_pose
from xraypose.errors import InputError


# --------------------------------------------------------------------------
# One range table for every numeric option of every command
# --------------------------------------------------------------------------


def _commands():
    """Every command by name, a group's (``datasets``) as ``datasets example`` etc."""
    import typer

    from xraypose.cli import app

    out = {}
    for name, cmd in typer.main.get_command(app).commands.items():
        subs = getattr(cmd, "commands", None)
        out.update({f"{name} {s}": c for s, c in subs.items()} if subs else {name: cmd})
    return out


def test_every_numeric_option_of_every_command_has_a_range():
    from xraypose.cli.options import LISTS, NUMERIC

    cmds = _commands()
    assert set(cmds) == {"render", "register", "train", "evaluate", "demo", "info", "track", "datasets example",
                         "datasets check", "datasets fixtures"}
    missing, seen = [], 0
    for name, cmd in cmds.items():
        for p in cmd.params:
            ann = getattr(p.type_descriptor, "annotation", None)
            if ann in (int, float):
                seen += 1
                if (cmd.name, p.name) not in NUMERIC and p.name not in NUMERIC:
                    missing.append(f"{name} --{p.name}")
    assert seen > 40 and not missing, missing
    # and every comma-separated option parses through the same table
    text_options = {p.name for c in cmds.values() for p in c.params}
    assert set(LISTS) <= text_options


def test_option_numbers_parses_and_names_the_option():
    from xraypose.cli.options import option_numbers

    assert option_numbers("pose", " 30, -10 ") == [30.0, -10.0]
    assert option_numbers("levels", "16,32,64") == [16, 32, 64]
    assert option_numbers("isocenter", "1.5,-2,3e2") == [1.5, -2.0, 300.0]
    for text, words in [("1e308,0", "1e+308"), ("nan,0", "finite"), ("0,95", "[-90, 90]"), ("1", "2")]:
        with pytest.raises(InputError, match=r"--angles") as e:
            option_numbers("angles", text)
        assert words in str(e.value)


def test_kinds_of_the_schema_are_the_readers():
    from xraypose.schema import SIDECAR, XRAY_SETTINGS
    from xraypose.xray import KINDS

    assert SIDECAR.fields["kind"].choices == KINDS == XRAY_SETTINGS.fields["kind"].choices


def test_config_values_of_the_right_type_are_kept(tmp_path):
    """A TOML integer serves a float option; the file's values reach the command."""
    from xraypose.cli.config import read_command_config

    allowed = {p.name: p for p in _commands()["register"].params}
    cfg = tmp_path / "r.toml"
    cfg.write_text('blur = 2\nsimilarity = "gncc"\nfast = true\nthreads = 1\n')
    assert read_command_config(cfg, "register", allowed) == {"blur": 2, "similarity": "gncc", "fast": True,
                                                             "threads": 1}
    cfg.write_text("threads = 1.5\n")
    with pytest.raises(InputError, match="'threads' must be a whole number, got 1.5"):
        read_command_config(cfg, "register", allowed)


def test_the_documented_shared_config_file_serves_each_of_its_commands(tmp_path):
    """docs/cli.md's settings.toml: each command reads its own table; the other commands' tables (``[track]``
    too) are not unknown tables."""
    import re
    from pathlib import Path

    from xraypose.cli.config import read_command_config

    doc = (Path(__file__).parents[1] / "docs" / "cli.md").read_text(encoding="utf-8")
    text = re.search(r"```toml\n# settings.toml\n(.*?)```", doc, re.S)[1]
    cfg = tmp_path / "settings.toml"
    cfg.write_text(text + '\n[track]\nmotion = "smooth"\n')
    commands = _commands()
    for command, key in (("register", "similarity"), ("evaluate", "start"), ("render", "sdd"), ("track", "motion")):
        allowed = {p.name: p for p in commands[command].params if p.param_type_name == "option"}
        assert key in read_command_config(cfg, command, allowed)


def test_top_level_keys_beside_a_commands_table_are_read_and_the_table_wins(tmp_path):
    """A file with top-level keys and a [register] table: both reach `register` (the top-level keys were
    silently dropped before 2026-12-05), the table's value wins (whatever the key's spelling), and a
    top-level key that is no option of the command is still named."""
    from xraypose.cli.config import read_command_config

    commands = _commands()
    allowed = {p.name: p for p in commands["register"].params if p.param_type_name == "option"}
    cfg = tmp_path / "s.toml"
    cfg.write_text('threads = 1\nlr-rot = 0.5\n[register]\nsimilarity = "gncc"\nlr_rot = 0.25\n'
                   '[render]\nsdd = 1000.0\n')
    assert read_command_config(cfg, "register", allowed) == {"threads": 1, "similarity": "gncc", "lr_rot": 0.25}
    cfg.write_text('no-such-option = 1\n[register]\nsimilarity = "gncc"\n')
    with pytest.raises(InputError, match="'no-such-option' is not an option of 'xraypose register'"):
        read_command_config(cfg, "register", allowed)


# --------------------------------------------------------------------------
# JSON files: what the schemas accept
# --------------------------------------------------------------------------


def test_read_json_refuses_a_repeated_key_and_reads_utf8_whatever_the_locale(tmp_path):
    from xraypose.schema import read_json

    p = tmp_path / "a.json"
    p.write_bytes('{"name": "\u00e9t\u00e9", "n": 1}'.encode("utf-8"))
    assert read_json(p) == {"name": "\u00e9t\u00e9", "n": 1}
    p.write_bytes(b'\xef\xbb\xbf{"n": 2}')  # a UTF-8 byte-order mark (Windows editors)
    assert read_json(p) == {"n": 2}
    p.write_text('{"n": 1, "m": {"k": 1, "k": 2}}')
    with pytest.raises(InputError, match="'k' is given twice"):
        read_json(p)


def _npy_xray(tmp_path, arr, sidecar):
    p = tmp_path / "x.npy"
    np.save(p, arr)
    (tmp_path / "x.json").write_text(json.dumps(sidecar))
    return p


def test_a_sidecar_written_by_camera_to_dict_is_read_back(tmp_path):
    from xraypose.xray import read_xray

    cam = Camera(sdd=1010.0, height=20, width=24, delx=1.5, dely=1.25, x0=3.0, y0=-2.0, reverse_x_axis=True)
    p = _npy_xray(tmp_path, np.ones((20, 24), np.float32), {**cam.to_dict(), "kind": "attenuation"})
    xr = read_xray(p)
    assert xr.camera.to_dict() == cam.to_dict()
    assert any("K is not used" in n for n in xr.notes)


def test_reverse_x_axis_false_is_false(tmp_path):
    from xraypose.xray import read_xray

    p = _npy_xray(tmp_path, np.ones((8, 8), np.float32), {"sdd_mm": 1000, "delx_mm": 1, "reverse_x_axis": False})
    assert read_xray(p).camera.reverse_x_axis is False


def test_rgb_like_npy_with_equal_channels_is_greyscale_and_stacks_stay_frames(tmp_path):
    from xraypose.xray import read_xray

    img = np.random.default_rng(0).random((40, 30)).astype(np.float32)
    side = {"sdd_mm": 1000, "delx_mm": 1}
    xr = read_xray(_npy_xray(tmp_path, np.repeat(img[..., None], 3, axis=-1), side))
    assert xr.shape == (40, 30) and torch.equal(xr.image, torch.from_numpy(img))
    assert any("greyscale RGB" in n for n in xr.notes)
    stack = np.stack([img, 2 * img, 3 * img])  # (3, 40, 30): three frames
    xr = read_xray(_npy_xray(tmp_path, stack, side), frames=2)
    assert torch.allclose(xr.image, torch.from_numpy(3 * img))


def test_pose_file_forms(tmp_path):
    from xraypose.register.initializers import pose_from_json

    T = carm_pose(20.0, -5.0, sod=600.0, isocenter=[1.0, 2.0, 3.0])
    p = tmp_path / "p.json"
    for doc in ({"camera_to_world": T.tolist()}, {"world_to_camera": torch.linalg.inv(T).tolist()},
                {"camera_to_world": T.tolist(), "world_to_camera": torch.linalg.inv(T).tolist(), "status": "x"},
                {"pose": {"camera_to_world": T.tolist(), "other": 1}}):
        p.write_text(json.dumps(doc))
        assert torch.allclose(pose_from_json(p)[0], T, atol=1e-9), doc


def test_case_json_settings_reach_the_xrays(tmp_path):
    import nibabel as nib

    from xraypose.datasets import load_case

    root = tmp_path / "case"
    (root / "xrays").mkdir(parents=True)
    a = np.full((8, 8, 8), -1000, np.int16)
    a[2:6, 2:6, 2:6] = 500
    nib.save(nib.Nifti1Image(a, np.diag([5.0, 5.0, 5.0, 1.0])), str(root / "ct.nii.gz"))
    np.save(root / "xrays" / "a.npy", np.ones((16, 16), np.float32) + np.eye(16, dtype=np.float32))
    (root / "case.json").write_text(json.dumps({
        "description": "test", "isocenter": [1, 2, 3],
        "xrays": {"a.npy": {"sdd": 900, "delx": 2, "reverse_x_axis": True, "frames": 0, "kind": "attenuation"}}}))
    case = load_case(root, preprocess=False)
    cam = case.xrays[0].camera
    assert (cam.sdd, cam.delx, cam.reverse_x_axis) == (900.0, 2.0, True)
    assert case.isocenter.tolist() == [1.0, 2.0, 3.0]


# --------------------------------------------------------------------------
# CTs: what is still read
# --------------------------------------------------------------------------


def test_nifti_without_sform_and_qform_uses_a_positive_pixdim(tmp_path):
    import nibabel as nib

    from xraypose.volume import read_volume

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((6, 6, 6))
    hdr.set_data_dtype(np.int16)
    hdr.set_zooms((2.0, 3.0, 4.0))
    img = nib.Nifti1Image(np.zeros((6, 6, 6), np.int16), None, header=hdr)
    img.header.set_sform(None, code=0)
    img.header.set_qform(None, code=0)
    nib.save(img, str(tmp_path / "a.nii"))
    vol = read_volume(tmp_path / "a.nii")
    np.testing.assert_allclose(vol.spacing.numpy(), [2.0, 3.0, 4.0])


def test_voxel_values_of_ct_range_pass_and_the_first_bad_one_is_named():
    from xraypose.volume import check_voxel_values

    a = np.zeros((4, 5, 6), np.int32)
    a[0, 0, 0], a[1, 1, 1] = -32768, 65535  # padding values of real scanners
    check_voxel_values(a, "ct")
    a[2, 3, 4] = 5_000_000
    with pytest.raises(InputError, match=r"ct: voxel value 5e\+06 at \(2, 3, 4\) is beyond"):
        check_voxel_values(a, "ct")


def test_size_limits():
    from xraypose.limits import check_allocation, check_registrable_xray, check_xray_size, memory_bytes

    check_xray_size(4096, 4096, "x")
    check_allocation((512, 512, 2000), 6, "ct")  # a large CT: 3 GiB
    with pytest.raises(InputError, match=r"20000 × 20000 × 20000 voxels"):
        check_allocation((20000,) * 3, 6, "ct")
    assert memory_bytes() > 2**28
    check_registrable_xray((16, 16), "x")
    with pytest.raises(InputError, match=r"after --crop 2"):
        check_registrable_xray((16, 40), "x", crop=2)
    # a crop past the image: no negative sizes ("-1840 × -1840 after --crop 1000" before)
    with pytest.raises(InputError, match=r"--crop 1000 takes 2000 pixels from each axis: nothing is left") as e:
        check_registrable_xray((160, 160), "x", crop=1000)
    assert "-" not in str(e.value).split("pixels")[0]
