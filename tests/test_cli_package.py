"""The CLI package (xraypose/cli/): option defaults are the library's, one command per module."""

from __future__ import annotations

import pytest
import typer


def _commands():
    from xraypose.cli import app

    return typer.main.get_command(app).commands


#: CLI option → RegistrationConfig field, for the options that set a registration's configuration.
CONFIG_FIELDS = {"similarity": "similarity", "parameterization": "parameterization", "lr_rot": "lr_rot",
                 "lr_trans": "lr_trans", "schedule": "schedule", "density": "density",
                 "bone_multiplier": "bone_multiplier", "seed": "seed", "threads": "num_threads"}


@pytest.mark.parametrize("command", ["register", "evaluate", "track"])
def test_registration_option_defaults_are_the_configs(command):
    from xraypose.register import RegistrationConfig

    cfg = RegistrationConfig()
    params = {p.name: p for p in _commands()[command].params}
    shown = {name: params[name].default for name in CONFIG_FIELDS if name in params}
    assert len(shown) >= 3, sorted(params)  # density, seed, threads at least
    if command == "track":  # its own: 2 threads where the machine has two CPUs (cli/track.py's track_threads)
        assert shown.pop("threads") is None
    assert shown == {name: getattr(cfg, CONFIG_FIELDS[name]) for name in shown}


def test_levels_help_names_the_default_schedule():
    from xraypose.register import DEFAULT_LEVELS

    sizes = ",".join(str(level.size) for level in DEFAULT_LEVELS)
    for command in ("register", "evaluate"):
        levels = next(p for p in _commands()[command].params if p.name == "levels")
        assert f"'{sizes}' (the default)" in levels.help


def test_each_command_lives_in_its_own_module():
    cmds = _commands()
    for name in ("render", "info", "demo", "train", "register", "evaluate", "track"):
        assert cmds[name].callback.__module__ == f"xraypose.cli.{name}"


def test_structure_is_a_mask_for_register_and_a_bone_for_evaluate(tmp_path, capsys):
    """register/track --structure take a mask file (they were refused as 'unknown --structure' when the
    check of evaluate's bone names applied to every command)."""
    from xraypose.cli import main

    mask = tmp_path / "no-such-mask.nii.gz"
    for command in (["register", "sample", str(tmp_path / "x.npy")], ["track", "sample", str(tmp_path / "x.npy")]):
        assert main([*command, "--structure", str(mask), "-o", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert "choose one of" not in err and err.startswith("xraypose: error: "), err
    assert main(["evaluate", str(tmp_path), "--structure", "skull", "-o", str(tmp_path / "ev")]) == 2
    assert "unknown --structure 'skull'; choose one of pelvis" in capsys.readouterr().err


def test_python_m_datasets_runs_xraypose_datasets(tmp_path, capsys):
    """``python -m xraypose.datasets …`` is ``xraypose datasets …``; its earlier ``--specimens 1 2`` form is read."""
    from xraypose.datasets.__main__ import _comma_lists, main

    assert _comma_lists(["fixtures", "out", "--specimens", "1", "2", "--full", "--subjects", "3"]) == \
        ["fixtures", "out", "--specimens", "1,2", "--full", "--subjects", "3"]
    assert _comma_lists(["fixtures", "out", "--specimens", "1,2"]) == ["fixtures", "out", "--specimens", "1,2"]
    assert main(["fixtures", str(tmp_path), "--specimens", "1", "7"]) == 2  # the option's range, named
    assert "--specimens: number 2 of '1,7' must be a whole number in [1, 6], got 7" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything is written
    assert main(["example", str(tmp_path / "case")]) == 0
    assert capsys.readouterr().out.startswith("wrote ")
    assert sorted(p.name for p in (tmp_path / "case").iterdir()) == \
        ["case.json", "ct.nii.gz", "fiducials.csv", "poses.json", "xrays"]


@pytest.mark.parametrize("argv", [[], ["datasets"]])
def test_a_group_without_a_command_prints_its_help_and_no_empty_error(argv, capsys):
    from xraypose.cli import main

    assert main(argv) == 2
    out = capsys.readouterr()
    assert "Usage" in out.out + out.err
    assert "error:" not in out.err


def test_metal_schedule_option(tmp_path, capsys):
    """register / evaluate --metal choose METAL_LEVELS (robust capture); beside --fast it is refused in one line."""
    from xraypose.cli import main

    for command in ("register", "evaluate"):
        metal = next(p for p in _commands()[command].params if p.name == "metal")
        assert metal.default is False and "metal" in metal.help
    assert main(["register", "sample", str(tmp_path / "x.npy"), "--metal", "--fast", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xraypose: error: ") and "--fast" in err and err.count("\n") == 1, err


def test_the_command_line_and_the_configuration_load_without_pytorch():
    """``xraypose --help`` and the option checks need the commands and RegistrationConfig only: none
    of them imports PyTorch (2.3 s of a 2.8 s help before); the names configurations validate
    against are the implementations' own lists."""
    import subprocess
    import sys

    code = ("import sys, xraypose.cli, xraypose.register.config as c; c.RegistrationConfig(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    from xraypose.geometry import ROTATION_PARAMETERIZATIONS
    from xraypose.names import DENSITY_MODELS, SIMILARITY_MEASURES
    from xraypose.register.measures import MEASURES
    from xraypose.render.density import DENSITY_MODELS as rendered

    assert tuple(MEASURES) == SIMILARITY_MEASURES and rendered == DENSITY_MODELS
    assert ROTATION_PARAMETERIZATIONS["se3_log_map"] == 3
