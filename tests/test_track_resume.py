"""`xraypose track` is crash-safe and resumable: each frame done is on disk (trajectory.partial.jsonl) as soon as it
stands, and `track --resume` goes on from those frames as if the run had not stopped.

A crash is simulated in-process (the frame's registration raises, as a kill would stop it there); the checks
run one after the other (os.cpu_count 1: no check beside the next frame), so the frames on disk are exactly
those before the crash.  The 64-row frames of the bundled CT and the 16-row schedule of tests/test_faults.py's
track tests keep each run to a second or two.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import ctrl_c_after

import xraypose.register.tracking as tracking
from xraypose.cli import main

N_FRAMES, CRASH_AT = 5, 3


class Crash(Exception):
    """A simulated crash (a kill -9, a power loss) in the middle of a frame."""


def _args(frames, out, *more) -> list:
    return ["track", "sample", str(frames), "--sdd", "1020", "--delx", "4", "--init", "angles", "--angles", "0,0",
            "--sod", "612", "--levels", "16", "--threads", "1", "-o", str(out), *more]


def _poses(out) -> np.ndarray:
    doc = json.loads((out / "trajectory.json").read_text())
    return np.array([fr["camera_to_world"] for fr in doc["frames"]])


def _partial_frames(out) -> list:
    lines = (out / "trajectory.partial.jsonl").read_text().splitlines()
    return [json.loads(x)["frame"]["frame"] for x in lines[1:]]


@pytest.fixture(autouse=True)
def one_cpu(monkeypatch):
    """Each frame checked before the next is registered: the frames on disk at a crash are those before it."""
    monkeypatch.setattr(tracking.os, "cpu_count", lambda: 1)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seq") / "frames"
    folder.mkdir()
    for i in range(N_FRAMES):
        assert main(["render", "sample", "--pose", f"{i},0", "--height", "64", "--delx", "4",
                     "-o", str(folder / f"f{i}.npy")]) == 0
    return folder


@pytest.fixture(scope="module")
def uninterrupted(frames, tmp_path_factory):
    """The sequence tracked in one run: its trajectory's poses."""
    out = tmp_path_factory.mktemp("whole") / "track"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tracking.os, "cpu_count", lambda: 1)
        assert main(_args(frames, out)) == 0
    assert not (out / "trajectory.partial.jsonl").exists()  # removed once the whole sequence's files are written
    return _poses(out)


def _crash_at(monkeypatch, frame: int) -> list:
    """Frame ``frame``'s registration raises :class:`Crash`; returns the list of frames registered (one entry
    per registration)."""
    real = tracking._register_frame
    calls = []

    def register(reg, f, *a, **k):
        calls.append(f)
        if f == frame:
            raise Crash(f"killed during frame {f}")
        return real(reg, f, *a, **k)

    monkeypatch.setattr(tracking, "_register_frame", register)
    return calls


def _crashed_run(frames, out, monkeypatch) -> None:
    _crash_at(monkeypatch, CRASH_AT)
    with pytest.raises(Crash):
        main(_args(frames, out))
    monkeypatch.undo()
    monkeypatch.setattr(tracking.os, "cpu_count", lambda: 1)


def test_a_crash_mid_sequence_leaves_the_frames_done_on_disk(tmp_path, frames, monkeypatch):
    """A crash (kill -9, power loss) lost every tracked frame: nothing was written until the end."""
    out = tmp_path / "track"
    _crashed_run(frames, out, monkeypatch)
    assert _partial_frames(out) == list(range(CRASH_AT))
    header = json.loads((out / "trajectory.partial.jsonl").read_text().splitlines()[0])
    assert header["frames"] == N_FRAMES and header["settings"]["--motion"] == "smooth"
    assert sorted(header["inputs"]["frames"]) == [f"frames/f{i}.npy" for i in range(N_FRAMES)]
    rec = json.loads((out / "trajectory.partial.jsonl").read_text().splitlines()[1])
    fr = rec["frame"]
    assert np.array(fr["camera_to_world"]).shape == (4, 4) and fr["verdict"] in ("ok", "uncertain", "failed")
    assert {"status", "seconds", "spread"} <= set(fr)
    assert not (out / "trajectory.json").exists()


def test_resume_after_a_crash_tracks_only_the_rest_and_gives_the_uninterrupted_trajectory(tmp_path, frames,
                                                                                          monkeypatch, capsys,
                                                                                          uninterrupted):
    out = tmp_path / "track"
    _crashed_run(frames, out, monkeypatch)
    calls = _crash_at(monkeypatch, -1)  # counts the registrations, crashes none
    capsys.readouterr()
    assert main(_args(frames, out, "--resume")) == 0
    assert f"{CRASH_AT} of {N_FRAMES} frames kept" in capsys.readouterr().out
    assert sorted(set(calls)) == list(range(CRASH_AT, N_FRAMES))  # the frames done are not registered again
    np.testing.assert_allclose(_poses(out), uninterrupted, atol=1e-9, rtol=0)  # as if it had not stopped
    assert not (out / "trajectory.partial.jsonl").exists()
    assert len((out / "trajectory.csv").read_text().splitlines()) == N_FRAMES + 1


def test_a_resume_with_other_levels_names_each_level_field_that_differs_in_full():
    """`track --resume` / `evaluate --resume` with another schedule printed the two schedules' JSON cut at 60
    characters (`[{"depth_lr_scale": 0.2, "fit_air": false, ...`): no field that differs was in sight.  Each
    level field that differs is named with both values in full; one line; many differences are counted."""
    import dataclasses

    from xraypose.run_record import settings_differences
    from xraypose.register import DEFAULT_LEVELS, RegistrationConfig

    old = RegistrationConfig().to_dict()
    levels = list(DEFAULT_LEVELS)
    levels[2] = dataclasses.replace(levels[2], iterations=levels[2].iterations + 20, fit_unsharp=(3.0, 9.0))
    new = RegistrationConfig(levels=tuple(levels)).to_dict()
    it = DEFAULT_LEVELS[2].iterations
    assert settings_differences({"registration": old}, {"registration": new}) == [
        f"--levels/--fast/--metal: levels[2].iterations ({it} then, {it + 20} now), levels[2].fit_unsharp ([] then, "
        "[3.0, 9.0] now)"]
    fewer = RegistrationConfig(levels=tuple(DEFAULT_LEVELS[:-1])).to_dict()
    (d,) = settings_differences({"registration": old}, {"registration": fewer})
    n = len(DEFAULT_LEVELS)
    assert d.startswith(f"--levels/--fast/--metal: {n} levels then, {n - 1} now, levels[{n - 1}] ({{") and \
        d.endswith("} then, none now)") and "..." not in d, d
    many = [dataclasses.replace(lv, iterations=lv.iterations + 1, patch_size=lv.patch_size + 2, lr_scale=0.5)
            for lv in DEFAULT_LEVELS]
    (d,) = settings_differences({"registration": old},
                                {"registration": RegistrationConfig(levels=tuple(many)).to_dict()})
    assert d.count("levels[") == 8 and d.endswith(f" and {3 * n - 8} more level field(s)"), d


def test_a_cli_resume_with_other_levels_is_refused_naming_the_level_field(tmp_path, frames, monkeypatch, capsys):
    out = tmp_path / "track"
    _crashed_run(frames, out, monkeypatch)
    capsys.readouterr()
    assert main(_args(frames, out, "--resume", "--levels", "24")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot resume" in err and \
        "--levels/--fast/--metal: levels[0].size (16 then, 24 now)" in err and "..." not in err, err


def test_resume_with_another_option_or_changed_frames_is_refused_naming_it(tmp_path, frames, monkeypatch, capsys):
    seq = tmp_path / "frames"
    shutil.copytree(frames, seq)
    out = tmp_path / "track"
    _crashed_run(seq, out, monkeypatch)
    before = (out / "trajectory.partial.jsonl").read_bytes()
    capsys.readouterr()
    assert main(_args(seq, out, "--resume", "--motion", "filter")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot resume" in err and '--motion ("smooth" then, "filter" now)' in err
    assert main(["render", "sample", "--pose", "9,0", "--height", "64", "--delx", "4", "-o", str(seq / "f4.npy")]) == 0
    capsys.readouterr()
    assert main(_args(seq, out, "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "its frames changed" in err and "frames/f4.npy modified" in err
    assert (out / "trajectory.partial.jsonl").read_bytes() == before  # the frames done are kept for a resume


def test_resume_with_nothing_to_resume_is_one_line(tmp_path, frames, capsys, uninterrupted):
    assert main(_args(frames, tmp_path / "none", "--resume")) == 2
    assert "nothing to resume" in capsys.readouterr().err
    out = tmp_path / "done"
    assert main(_args(frames, out)) == 0
    capsys.readouterr()
    assert main(_args(frames, out, "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nothing to resume" in err and "complete (5 frames)" in err


def test_ctrl_c_keeps_the_frames_and_a_resume_completes_them(tmp_path, frames, monkeypatch, capsys, uninterrupted):
    """Ctrl-C still writes the frames tracked and exits 130 ("interrupted"); the run can then be resumed."""
    import xraypose.cli.track as track_cli

    echo = track_cli.typer.echo
    ctrl_c_after(monkeypatch, track_cli, "frame 2/")  # the user presses Ctrl-C once frame 2 is reported
    out = tmp_path / "track"
    capsys.readouterr()
    assert main(_args(frames, out)) == 130
    assert "interrupted after" in capsys.readouterr().err
    doc = json.loads((out / "trajectory.json").read_text())
    n = doc["interrupted"]["frames_tracked"]
    assert 2 <= n < N_FRAMES and _partial_frames(out) == list(range(n))
    monkeypatch.setattr(track_cli.typer, "echo", echo)
    calls = _crash_at(monkeypatch, -1)
    assert main(_args(frames, out, "--resume")) == 0
    assert sorted(set(calls)) == list(range(n, N_FRAMES))
    doc = json.loads((out / "trajectory.json").read_text())
    assert "interrupted" not in doc and len(doc["frames"]) == N_FRAMES
    np.testing.assert_allclose(_poses(out), uninterrupted, atol=1e-9, rtol=0)
    assert not (out / "trajectory.partial.jsonl").exists()


def test_a_partial_files_line_cut_short_by_a_crash_is_dropped(tmp_path):
    """A crash while a frame's line is appended leaves it cut short: the frames before it are read, and a damaged
    line before others is refused in one line."""
    from xraypose.cli.track_partial import PARTIAL, read_partial
    from xraypose.errors import InputError

    lines = [json.dumps({"xraypose": "track partial", "frames": 3}), json.dumps({"frame": {"frame": 0}}),
             json.dumps({"frame": {"frame": 1}})]
    (tmp_path / PARTIAL).write_text("\n".join(lines) + "\n" + lines[2][:17])
    header, records = read_partial(tmp_path)
    assert header["frames"] == 3 and [r["frame"]["frame"] for r in records] == [0, 1]
    (tmp_path / PARTIAL).write_text(lines[0] + "\n" + lines[1][:9] + "\n" + lines[2] + "\n")
    with pytest.raises(InputError, match="line 2 of .* is damaged"):
        read_partial(tmp_path)
    assert read_partial(tmp_path / "elsewhere") is None
