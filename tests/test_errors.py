"""The error taxonomy: one base for xraypose's own errors, InputError for bad input only."""

import pytest

import xraypose.info
from xraypose.cli import main
from xraypose.errors import InputError, RunError, XrayposeError
from xraypose.io import OutputError
from xraypose.train import TrainingDiverged


def test_own_errors_share_a_base_and_only_bad_input_is_an_input_error():
    for cls in (InputError, OutputError, TrainingDiverged, RunError):
        assert issubclass(cls, XrayposeError)
    assert issubclass(InputError, ValueError)  # generic handlers still catch bad input
    assert issubclass(OutputError, OSError) and not issubclass(OutputError, InputError)
    assert issubclass(TrainingDiverged, RuntimeError) and not issubclass(TrainingDiverged, InputError)


@pytest.mark.parametrize("error", [InputError("bad value x"), OutputError("cannot write /x: No space left on device"),
                                   TrainingDiverged("training diverged at step 3: the loss is nan")])
def test_the_cli_prints_each_own_error_on_one_line_with_exit_code_2(monkeypatch, capsys, error):
    def fail(path):
        raise error

    monkeypatch.setattr(xraypose.info, "info", fail)
    assert main(["info", "sample"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"xraypose: error: {error}"]


def test_the_cli_does_not_hide_a_bug(monkeypatch):
    def fail(path):
        raise RuntimeError("a bug")

    monkeypatch.setattr(xraypose.info, "info", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["info", "sample"])
