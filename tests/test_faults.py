"""Faults: kills, failing writes, full disks, read-only outputs, old result folders, resumes that must keep
their promises, models used with another CT.

Everything here is small (the bundled CT with a 32² test backbone, a few steps) and in-process where a
fault is simulated: a full disk is ``os.fsync`` failing with ENOSPC (the data were handed to the file,
the disk refused them); a read-only folder is ``chmod 555`` (and, when the tests run as root, whom
permission bits do not stop, ``os.open`` / ``os.mkdir`` refusing to create entries in such a folder,
as the kernel does for any other user).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ctrl_c_after, tiny_train

from xraypose.cli import main
from xraypose.errors import InputError
from xraypose.io import (MANIFEST, OutputError, atomic_write_bytes, atomic_write_files, atomic_write_json,
                         check_output_folder, jsonable, remove_stale_temp_files, restore_non_finite)
from xraypose.model import OtherCTWarning, read_checkpoint
from xraypose.train import output_paths, train
from xraypose.volume import load_sample_ct

ROOT = Path(__file__).resolve().parents[1]


def _benchmark(name: str):
    """benchmarks/NAME.py loaded as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

tiny = tiny_train  # a few seconds' training (tests/helpers.py)


def _toml(d: dict) -> str:
    return "".join(f"[{s}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in t.items()) for s, t in d.items())


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob("*.tmp")]


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _one_error_line(err: str, *words) -> str:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("xraypose: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory, sample_ct):
    """A 2-step model of the bundled CT (only its files matter here)."""
    out = tmp_path_factory.mktemp("model") / "model.pt"
    train(sample_ct, out, tiny(max_steps=2))
    return out


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from xraypose.datasets import make_example_case

    return make_example_case(tmp_path_factory.mktemp("case") / "mycase", size=48)


@pytest.fixture
def full_disk(monkeypatch):
    """``fsync`` fails with ENOSPC for files whose name contains one of ``full_disk.names`` ("*": all)."""
    real = os.fsync

    class Disk:
        names: list[str] = []
        failures = 0

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if any(n == "*" or n in target for n in Disk.names):
            Disk.failures += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return Disk


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)``: chmod 555; as root, also refuse to create entries in folders without write bits."""
    made = []

    def no_write(folder) -> bool:
        try:
            return not (os.stat(folder).st_mode & stat.S_IWUSR)
        except OSError:
            return False

    if os.geteuid() == 0:
        real_open, real_mkdir = os.open, os.mkdir

        def open_(path, flags, mode=0o777, *a, **k):
            if flags & os.O_CREAT and not os.path.exists(path) and no_write(os.path.dirname(os.fspath(path)) or "."):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real_open(path, flags, mode, *a, **k)

        def mkdir_(path, mode=0o777, *a, **k):
            if no_write(os.path.dirname(os.fspath(path).rstrip("/")) or "."):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real_mkdir(path, mode, *a, **k)

        monkeypatch.setattr(os, "open", open_)
        monkeypatch.setattr(os, "mkdir", mkdir_)

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
        made.append(folder)
        return folder

    yield make
    for f in made:
        f.chmod(0o755)


def _forbid(monkeypatch, target: str):
    """Make ``module.attr`` fail loudly: the test proves the output was checked before computing."""
    module, attr = target.rsplit(".", 1)

    def computed(*a, **k):
        raise AssertionError(f"{target} ran before the output was checked")

    monkeypatch.setattr(module + "." + attr, computed)


# ----------------------------------------------------------------------------- atomic writes, temp files
def test_a_failing_write_leaves_the_old_file_and_no_temporary_file(tmp_path, full_disk):
    p = tmp_path / "a.json"
    atomic_write_json(p, {"v": 1})
    full_disk.names = ["a.json"]
    with pytest.raises(OutputError, match=r"cannot write .*a\.json: No space left on device"):
        atomic_write_json(p, {"v": 2})
    assert json.loads(p.read_text()) == {"v": 1} and _temp_files(tmp_path) == []


def test_a_result_of_several_files_is_written_all_or_nothing(tmp_path, full_disk):
    names = ["pose.json", "metrics.json", "trajectory.json"]
    atomic_write_files(tmp_path, {"pose.json": b"old pose", "metrics.json": b"old metrics"}, remove=names)
    ours = lambda: {k: v for k, v in _snapshot(tmp_path).items() if k != MANIFEST}  # noqa: E731
    full_disk.names = ["trajectory.json"]  # the second file of the new result fails
    with pytest.raises(OutputError, match="trajectory.json"):
        atomic_write_files(tmp_path, {"pose.json": b"new", "trajectory.json": b"new"}, remove=names)
    assert ours() == {"pose.json": b"old pose", "metrics.json": b"old metrics"}
    full_disk.names = []
    atomic_write_files(tmp_path, {"pose.json": b"new", "trajectory.json": b"new"}, remove=names)
    assert ours() == {"pose.json": b"new", "trajectory.json": b"new"}  # the old metrics went


def test_a_file_new_to_the_folder_left_by_a_kill_is_still_known_as_xraypose_s(tmp_path, monkeypatch):
    """A kill between atomic_write_files' renames left a new metrics.json (a file the earlier result did not
    have) under the earlier manifest, which does not list it: the next result into the folder refused it as
    "not written there by xraypose".  Before the first rename the manifest is replaced by a pending one
    listing both results' names: the file is xraypose's."""
    import xraypose.io as xio

    names = ["pose.json", "metrics.json", "trajectory.json", "views.png"]
    ours = lambda: {k: v for k, v in _snapshot(tmp_path).items() if not k.startswith(".")}  # noqa: E731 (no hidden file)
    atomic_write_files(tmp_path, {"pose.json": b"old pose"}, remove=names)
    real = os.replace

    def killed_at_pose(src, dst):
        if Path(dst).name == "pose.json":
            raise KeyboardInterrupt  # (a SIGINT; a SIGKILL would leave the same files, and the temporaries)
        return real(src, dst)

    monkeypatch.setattr(xio.os, "replace", killed_at_pose)  # metrics.json (new here) is renamed before it
    with pytest.raises(KeyboardInterrupt):
        atomic_write_files(tmp_path, {"metrics.json": b"new metrics", "pose.json": b"new pose"}, remove=names)
    monkeypatch.setattr(xio.os, "replace", real)
    assert ours() == {"pose.json": b"old pose", "metrics.json": b"new metrics"}
    check_output_folder(tmp_path, replaces=names)  # was: holds metrics.json, not written there by xraypose
    atomic_write_files(tmp_path, {"pose.json": b"2", "trajectory.json": b"2"}, remove=names)
    assert ours() == {"pose.json": b"2", "trajectory.json": b"2"}  # the stray metrics.json removed
    assert json.loads((tmp_path / MANIFEST).read_text())["files"] == ["pose.json", "trajectory.json"]
    fresh = tmp_path / "fresh"  # the first result into a folder, killed: no earlier manifest to go by
    fresh.mkdir()
    monkeypatch.setattr(xio.os, "replace", killed_at_pose)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_files(fresh, {"metrics.json": b"m", "pose.json": b"p"}, remove=names)
    monkeypatch.setattr(xio.os, "replace", real)
    assert json.loads((fresh / MANIFEST).read_text())["pending"] == ["metrics.json", "pose.json"]
    check_output_folder(fresh, replaces=names)  # was: holds metrics.json, not written there by xraypose


def test_a_kill_while_the_pending_manifest_is_written_leaves_the_earlier_one_whole(tmp_path, monkeypatch):
    """The pending manifest was written in place (opened truncated, then filled): a kill in between left it
    empty, and the next result refused the folder's own pose.json as not xraypose's.  It is renamed in now:
    the earlier manifest stays whole until then."""
    import xraypose.io as xio

    names = ["pose.json", "metrics.json"]
    atomic_write_files(tmp_path, {"pose.json": b"1"}, remove=names)
    real_open = os.open
    opened = []

    def killed_opening_the_manifest(path, flags, *a, **k):
        fd = real_open(path, flags, *a, **k)
        if MANIFEST in Path(path).name:
            opened.append(path)
            if len(opened) == 2:  # the first: the new manifest's staged copy; the second: the pending one's
                os.close(fd)  # opened (a truncating open has already emptied it), not a byte written
                raise KeyboardInterrupt
        return fd

    monkeypatch.setattr(xio.os, "open", killed_opening_the_manifest)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_files(tmp_path, {"pose.json": b"2", "metrics.json": b"2"}, remove=names)
    monkeypatch.setattr(xio.os, "open", real_open)
    assert json.loads((tmp_path / MANIFEST).read_text())["files"] == ["pose.json"]  # was: empty
    assert (tmp_path / "pose.json").read_bytes() == b"1" and not (tmp_path / "metrics.json").exists()
    atomic_write_files(tmp_path, {"pose.json": b"3"}, remove=names)  # was: holds pose.json, not written by xraypose
    assert (tmp_path / "pose.json").read_bytes() == b"3"


def test_a_kill_while_an_earlier_results_files_are_deleted_leaves_them_xraypose_s(tmp_path, monkeypatch):
    """The earlier result's files that a new one lacks were deleted after the new manifest was renamed in: a
    kill in between left trajectory.json unlisted, refused by the next result as the user's.  They are deleted
    before the new manifest now (under the pending one, which lists them); a user's own file is still
    refused, and nothing is changed."""
    import xraypose.io as xio

    names = ["pose.json", "metrics.json", "trajectory.json", "views.png"]
    ours = lambda: {k: v for k, v in _snapshot(tmp_path).items() if not k.startswith(".")}  # noqa: E731 (no hidden file)
    atomic_write_files(tmp_path, {"pose.json": b"2", "trajectory.json": b"2"}, remove=names)
    real_unlink = xio._unlink_quietly

    def killed_deleting(p):
        if Path(p).name == "trajectory.json":
            raise KeyboardInterrupt
        real_unlink(p)

    monkeypatch.setattr(xio, "_unlink_quietly", killed_deleting)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_files(tmp_path, {"pose.json": b"3"}, remove=names)
    monkeypatch.setattr(xio, "_unlink_quietly", real_unlink)
    assert ours() == {"pose.json": b"3", "trajectory.json": b"2"}
    assert json.loads((tmp_path / MANIFEST).read_text())["pending"] == ["pose.json"]  # the new pose.json's
    check_output_folder(tmp_path, replaces=names)  # was: holds trajectory.json, not written there by xraypose
    (tmp_path / "views.png").write_bytes(b"my picture")  # a user's own file: still refused, nothing changed
    before = _snapshot(tmp_path)
    with pytest.raises(OutputError, match="holds views.png, not written there by xraypose"):
        atomic_write_files(tmp_path, {"pose.json": b"4"}, remove=names)
    assert _snapshot(tmp_path) == before
    (tmp_path / "views.png").unlink()
    atomic_write_files(tmp_path, {"pose.json": b"4"}, remove=names)
    assert ours() == {"pose.json": b"4"} and json.loads((tmp_path / MANIFEST).read_text())["files"] == ["pose.json"]


def test_evaluate_resume_after_a_crash_between_a_cases_files_registers_that_case_again(tmp_path, capsys, case,
                                                                                    monkeypatch):
    """evaluate writes a case's result.json (what --resume reads) after its other files: a crash between them
    (here: pose.tfm, the second file, failing) leaves the case without result.json, and the resume registers it
    again rather than keeping its pose.json beside nothing — the design already held; this proves it."""
    import xraypose.export
    import xraypose.register.api as api

    ev = tmp_path / "ev"
    args = ["evaluate", str(case), "-o", str(ev), "--start", "perturb", "--perturb", "2,5", "--levels", "32",
            "--size", "32", "--no-pictures", "--quiet"]
    real_tfm, tfm_calls = xraypose.export.write_slicer_transform, []

    def crash_at_the_second_case(path, T):
        tfm_calls.append(Path(path).parent.name)
        if len(tfm_calls) == 2:
            raise OutputError(f"cannot write {path}: simulated crash")
        return real_tfm(path, T)

    monkeypatch.setattr(xraypose.export, "write_slicer_transform", crash_at_the_second_case)
    assert main(args) == 2
    done, broken = ev / "cases" / tfm_calls[0], ev / "cases" / tfm_calls[1]
    assert (done / "result.json").is_file() and (broken / "pose.json").is_file()
    assert not (broken / "result.json").exists() and not (broken / "pose.tfm").exists()
    assert not (ev / "metrics.csv").exists()
    monkeypatch.setattr(xraypose.export, "write_slicer_transform", real_tfm)
    kept = (done / "result.json").read_bytes()
    real_register, registered = api.register_xray, []
    monkeypatch.setattr(api, "register_xray", lambda *a, **k: registered.append(1) or real_register(*a, **k))
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    assert registered == [1]  # the broken case only
    assert (done / "result.json").read_bytes() == kept
    row = json.loads((broken / "result.json").read_text())["row"]
    pose = json.loads((broken / "pose.json").read_text())
    assert (broken / "pose.tfm").is_file()
    assert row["mTRE (mm)"] == pytest.approx(pose["metrics"]["mtre"])  # pose.json is the result.json's


def test_a_result_never_replaces_or_deletes_a_file_xraypose_did_not_write(tmp_path):
    """A result folder's files are replaced (or removed when the new result has no such file) only when the
    folder's manifest lists them as xraypose's: a user's own metrics.json or pose.json — or a file of an
    earlier version, before the manifest — is refused with the names, and nothing is written."""
    names = ["pose.json", "metrics.json", "trajectory.json"]
    (tmp_path / "metrics.json").write_bytes(b"my metrics")
    (tmp_path / "notes.txt").write_bytes(b"mine")
    before = _snapshot(tmp_path)
    for call in (lambda: atomic_write_files(tmp_path, {"pose.json": b"new"}, remove=names),  # would delete it
                 lambda: atomic_write_files(tmp_path, {"metrics.json": b"new"}, remove=names),  # would replace it
                 lambda: check_output_folder(tmp_path, replaces=names)):  # the commands' check before computing
        with pytest.raises(OutputError, match="holds metrics.json, not written there by xraypose"):
            call()
        assert _snapshot(tmp_path) == before
    (tmp_path / "metrics.json").unlink()
    atomic_write_files(tmp_path, {"pose.json": b"1", "metrics.json": b"1"}, remove=names)
    atomic_write_files(tmp_path, {"pose.json": b"2"}, remove=names)  # xraypose's own: replaced, removed
    assert {k: v for k, v in _snapshot(tmp_path).items() if k != MANIFEST} == {"pose.json": b"2", "notes.txt": b"mine"}
    check_output_folder(tmp_path, replaces=names)
    with pytest.raises(OutputError, match="empty path"):
        check_output_folder("", replaces=names)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_result_never_replaces_part_of_another_kind_of_result(tmp_path):
    """``register -o DIR`` into a track's folder replaced its trajectory.json (every frame's record), left its
    trajectory.csv and overlay.gif beside the registration's files, and a later track refused them as the user's."""
    from xraypose.cli.track import TRACK_FILES
    from xraypose.register.api import RESULT_FILES

    track = {"trajectory.csv": b"frame,...", "trajectory.json": b"the frames", "overlay.gif": b"GIF"}
    register = {"pose.json": b"pose", "trajectory.json": b"the optimiser's steps", "views.png": b"PNG"}
    for first, first_kind, second, second_kind in ((track, TRACK_FILES, register, RESULT_FILES),
                                                   (register, RESULT_FILES, track, TRACK_FILES)):
        out = tmp_path / f"after-{len(os.listdir(tmp_path))}"
        out.mkdir()
        atomic_write_files(out, first, remove=first_kind)
        atomic_write_files(out, first, remove=first_kind)  # the same kind again: replaced, as ever
        before = _snapshot(out)
        with pytest.raises(OutputError, match=r"another kind of xraypose result .*trajectory\.json this one would"):
            check_output_folder(out, replaces=second_kind)  # what the commands check before computing
        with pytest.raises(OutputError, match="another kind of xraypose result"):
            atomic_write_files(out, second, remove=second_kind)
        assert _snapshot(out) == before and _temp_files(out) == []
    # results whose names do not meet stay beside each other, as before: a registration, then the demo, twice
    from xraypose.demo import _prepare_output

    out = tmp_path / "register-then-demo"
    out.mkdir()
    atomic_write_files(out, register, remove=RESULT_FILES)
    for _ in range(2):
        _prepare_output(out, 1)
        (out / "report.html").write_text("demo's")
    assert (out / "pose.json").read_bytes() == b"pose"


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/stat").exists(), reason="no /proc: names carry no start")
def test_a_temporary_file_whose_pid_now_runs_another_process_is_stale(tmp_path):
    """A killed writer's temporary file was judged by its PID alone: once another live process had that PID, the
    file was kept as a write in progress until that process ended (a long training's or a server's: for good).  The
    name now carries the writer's process start (the kernel's, as the output lock's): another start is another
    process.  A name without it (an earlier version's) is judged by the PID as before."""
    from xraypose.io import _temp_path, is_stale_temp_file, process_start, remove_stale_temp_files

    mine = _temp_path(tmp_path / "model.pt")
    assert f".xraypose-{os.getpid()}-{process_start(os.getpid())}-" in mine.name
    for pid in (os.getppid(), 1, os.getpid()):  # live processes: another one, init, this one
        start = process_start(pid)
        if start is None:
            continue
        reused = tmp_path / f".model.last.pt.xraypose-{pid}-{start + 1}-0badc0de.tmp"  # a dead writer of that PID
        running = tmp_path / f".model.last.pt.xraypose-{pid}-{start}-0badc0de.tmp"  # that process's own
        old = tmp_path / f".model.last.pt.xraypose-{pid}-0badc0de.tmp"  # an earlier version's name
        for p in (reused, running, old):
            p.write_bytes(b"half a checkpoint")
        assert is_stale_temp_file(reused), pid
        if pid != os.getpid():  # (this process's PID on a file it did not make: stale either way)
            assert not is_stale_temp_file(running) and not is_stale_temp_file(old), pid
            assert remove_stale_temp_files(tmp_path) == [reused] and running.exists() and old.exists()
        for p in (reused, running, old):
            p.unlink(missing_ok=True)
    mine.write_bytes(b"a write in progress")
    assert not is_stale_temp_file(mine) and remove_stale_temp_files(tmp_path) == [] and mine.exists()
    dead = _dead_pid()
    gone = tmp_path / f".model.pt.xraypose-{dead}-12345-0badc0de.tmp"
    gone.write_bytes(b"x")
    assert is_stale_temp_file(gone)


def test_a_writability_probe_left_by_a_killed_run_is_removed_by_the_next_check(tmp_path):
    """Each command probes that its output can be written with an empty ``.write-test.xraypose-PID-...tmp`` in
    the output's folder (or the nearest existing parent of a folder to create), removed at once: a kill between the
    two left it there for good — nothing swept that folder (a new output's parent, the working directory).  The next
    probe of a folder now removes those of killed writers (another live run's stays)."""
    from xraypose.io import check_output_file, check_output_folder

    left = tmp_path / f".write-test.xraypose-{_dead_pid()}-0badc0de.tmp"
    live = tmp_path / f".write-test.xraypose-{os.getppid()}-0badc0de.tmp"  # a probe of a run going on: kept
    for p in (left, live):
        p.touch()
    check_output_folder(tmp_path / "new")  # not there yet: its parent is probed
    assert not left.exists() and live.exists() and not (tmp_path / "new").exists()
    left.touch()
    check_output_file(tmp_path / "model.pt")
    assert not left.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]  # no probe of its own left either


def test_stale_temporary_files_of_killed_writers_are_recognised_and_removed(tmp_path):
    dead, alive = _dead_pid(), os.getppid()  # (this process's PID on a file it did not make: test_crash_points.py)
    stale = tmp_path / f".model.last.pt.xraypose-{dead}-0badc0de.tmp"
    live = tmp_path / f".model.last.pt.xraypose-{alive}-0badc0de.tmp"  # another process's write in progress: kept
    legacy = tmp_path / ".model.pt.k3j4h5g6.tmp"  # an earlier version's name, two hours old
    user = tmp_path / "notes.tmp"  # not ours
    for p in (stale, live, legacy, user):
        p.write_bytes(b"x" * 1000)
    os.utime(legacy, (time.time() - 7200, time.time() - 7200))
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted([stale, legacy])
    assert live.exists() and user.exists()
    # each write also clears its own target's stale files
    stale.write_bytes(b"x")
    atomic_write_bytes(tmp_path / "model.last.pt", b"new")
    assert not stale.exists() and live.exists()


def test_a_file_name_of_up_to_255_bytes_is_written_and_its_stale_temporary_files_are_found(tmp_path):
    """The temporary file's name adds ~31 bytes to the target's: a target of 225–255 bytes (a long name,
    or fewer characters of a script of 3 bytes each) failed with "File name too long" after the work."""
    dead = _dead_pid()
    for name in ("d" * 251 + ".png", "ü" * 125 + ".npy", "Ω" * 80 + "-" * 90 + ".png"):
        assert len(os.fsencode(name)) <= 255
        p = tmp_path / name
        atomic_write_bytes(p, b"old")
        atomic_write_bytes(p, b"new")
        assert p.read_bytes() == b"new" and _temp_files(tmp_path) == []
    # a killed writer's temporary file of such a target is cleared by the next write of it
    from xraypose.io import _temp_path

    stale = _temp_path(p).with_name(_temp_path(p).name.replace(f"-{os.getpid()}-", f"-{dead}-"))
    stale.write_bytes(b"x")
    atomic_write_bytes(p, b"newer")
    assert not stale.exists() and p.read_bytes() == b"newer"


WRITER = textwrap.dedent("""
    import sys, torch
    from xraypose.model import save_checkpoint
    i = 1
    while True:
        save_checkpoint(sys.argv[1], {"format": "xraypose.pose_regressor", "version": 1, "model": {},
                                      "meta": {"i": i}, "x": torch.full((3_000_000,), float(i))})
        if i == 1:
            print("written", flush=True)
        i += 1
""")


def test_sigkill_during_a_checkpoint_write_keeps_the_last_checkpoint_and_the_debris_is_cleared(tmp_path):
    path = tmp_path / "model.last.pt"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(path)], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    time.sleep(0.15)  # in the middle of a later write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ck = read_checkpoint(path)  # whole
    assert bool((ck["x"] == ck["meta"]["i"]).all())
    debris = [p for p in _temp_files(tmp_path)]
    remove_stale_temp_files(tmp_path)
    assert _temp_files(tmp_path) == []
    assert all(".xraypose-" in p.name for p in debris)  # a killed write is recognisable as ours


# ----------------------------------------------------------------------------- training
KILLED = textwrap.dedent("""
    import json, sys
    from xraypose.train import train
    train("sample", sys.argv[1], json.loads(sys.argv[2]))
""")


def test_sigkill_during_training_loses_little_and_resume_logs_each_step_once(tmp_path, sample_ct):
    """The first checkpoint comes after run.first_checkpoint_s (not checkpoint_every_s); a SIGKILL later
    loses only the steps since; the resumed run ends where an unbroken one would, one log row per step."""
    out = tmp_path / "model.pt"
    cfg = tiny(max_steps=200, val_size=0, first_checkpoint_s=0.3, checkpoint_every_s=1000.0)
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(out), json.dumps(cfg)], env=env,
                            stderr=subprocess.PIPE, text=True)
    paths = output_paths(out)
    t0 = time.time()
    try:
        while True:  # wait for the first checkpoint and a few steps logged after it
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() - t0 < 120, "no checkpoint within 120 s"
            if paths["last"].exists() and paths["log"].exists():
                logged = [json.loads(x)["step"] for x in paths["log"].read_text().splitlines()[:-1] if '"loss"' in x]
                if logged and logged[-1] >= read_checkpoint(paths["last"])["step"] + 2:
                    break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = read_checkpoint(paths["last"])
    assert 1 <= saved["step"] < 200 and saved["elapsed_s"] > 0
    assert not paths["best"].exists() or read_checkpoint(paths["best"])  # whatever exists is whole
    # a debris temp file as a kill mid-write leaves it
    (tmp_path / f".model.last.pt.xraypose-{_dead_pid()}-00.tmp").write_bytes(b"half a checkpoint")
    cfg["run"]["max_steps"] = saved["step"] + 3
    r = train(sample_ct, out, cfg, resume=True)
    assert r.steps == saved["step"] + 3
    rows = [json.loads(x) for x in paths["log"].read_text().splitlines()]
    steps = [x["step"] for x in rows if "loss" in x]
    assert steps == list(range(1, r.steps + 1))  # each step once, none lost, none twice
    assert [x["event"] for x in rows if "event" in x] == ["resume", "end"]
    assert _temp_files(tmp_path) == []


def test_ctrl_c_during_training_writes_the_state_and_resume_continues_from_it(tmp_path, sample_ct, capsys):
    """Ctrl-C before the first checkpoint lost every step trained (only the log was left, and `--resume` said
    "nothing to resume"); now the step under way ends, OUTPUT.last.pt is written at it, and a resume goes on
    from there with each step logged once.  The caller's SIGINT handler is back afterwards."""
    out = tmp_path / "model.pt"
    cfg = tiny(max_steps=50, val_size=0, first_checkpoint_s=1000.0, checkpoint_every_s=1000.0)
    handler_before = signal.getsignal(signal.SIGINT)

    def ctrl_c_at_step_3(event, info):
        if event == "step" and info.get("step") == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as a terminal's Ctrl-C: mid-run, between two steps' work

    with pytest.raises(KeyboardInterrupt):
        train(sample_ct, out, cfg, callback=ctrl_c_at_step_3)
    assert signal.getsignal(signal.SIGINT) is handler_before
    paths = output_paths(out)
    assert read_checkpoint(paths["last"])["step"] == 3 and not paths["best"].exists()
    assert "interrupted at step 3" in capsys.readouterr().err
    cfg["run"]["max_steps"] = 6
    r = train(sample_ct, out, cfg, resume=True)
    assert r.steps == 6
    rows = [json.loads(x) for x in paths["log"].read_text().splitlines()]
    assert [x["step"] for x in rows if "loss" in x] == [1, 2, 3, 4, 5, 6]
    assert [x["event"] for x in rows if "event" in x] == ["interrupted", "resume", "end"]
    assert _temp_files(tmp_path) == []


def test_a_checkpoint_write_that_fails_midway_stops_training_and_keeps_the_previous_one(tmp_path, sample_ct,
                                                                                      full_disk):
    out = tmp_path / "model.pt"
    paths = output_paths(out)
    calls = []

    def fail_at_second_checkpoint(event, info):
        if event == "checkpoint":
            calls.append(info["step"])
            full_disk.names = ["model.last.pt"]  # the disk fills up after the first checkpoint

    with pytest.raises(OutputError, match=r"cannot write .*model\.last\.pt: No space left on device"):
        train(sample_ct, out, tiny(max_steps=6, val_size=0, checkpoint_every_steps=2),
              callback=fail_at_second_checkpoint)
    assert calls == [2]
    assert read_checkpoint(paths["last"])["step"] == 2  # the previous checkpoint, whole
    assert _temp_files(tmp_path) == []
    full_disk.names = []
    r = train(sample_ct, out, None, resume=True)
    assert r.steps == 6


def test_train_never_overwrites_an_earlier_model_without_being_told(tmp_path, capsys):
    cfg = tmp_path / "t.toml"
    cfg.write_text(_toml(tiny(max_steps=1, val_size=0)))
    out = tmp_path / "model.pt"
    assert main(["train", "sample", "-o", str(out), "--config", str(cfg), "--quiet"]) == 0
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert main(["train", "sample", "-o", str(out), "--config", str(cfg), "--quiet"]) == 2
    _one_error_line(capsys.readouterr().err, "already exists", "--resume", "--overwrite")
    assert _snapshot(tmp_path) == before  # nothing the user had was changed
    assert main(["train", "sample", "-o", str(out), "--config", str(cfg), "--quiet", "--resume",
                 "--overwrite"]) == 2
    output_paths(out)["crash"].write_bytes(b"an old crash dump")
    assert main(["train", "sample", "-o", str(out), "--config", str(cfg), "--steps", "2", "--quiet",
                 "--overwrite"]) == 0
    steps = [json.loads(x)["step"] for x in output_paths(out)["log"].read_text().splitlines() if '"loss"' in x]
    assert steps == [1, 2] and not output_paths(out)["crash"].exists()  # the earlier run's files are gone


def test_train_never_takes_its_ct_for_an_earlier_model(tmp_path, monkeypatch, capsys, case):
    """``train ct.nii.gz -o ct.nii.gz`` called the CT "an earlier training", and --overwrite replaced it by the model."""
    import shutil

    ct = shutil.copy(case / "ct.nii.gz", tmp_path / "ct.nii.gz")
    before = _snapshot(tmp_path)
    _forbid(monkeypatch, "xraypose.train.trainer.Trainer.setup")
    for flag in ([], ["--overwrite"], ["--resume"]):
        capsys.readouterr()
        assert main(["train", str(ct), "-o", str(ct), *flag]) == 2, flag
        _one_error_line(capsys.readouterr().err, "is the CT", "training would replace it", "another file")
    assert _snapshot(tmp_path) == before


def test_the_time_budget_is_the_whole_trainings_across_resumes(tmp_path, sample_ct):
    out = tmp_path / "model.pt"
    last = output_paths(out)["last"]
    r1 = train(sample_ct, out, tiny(max_steps=10**6, time_budget_s=5.0, val_size=0))
    used = read_checkpoint(last)["elapsed_s"]  # the time used is recorded in the checkpoint
    assert r1.steps >= 1 and used == pytest.approx(r1.elapsed_s, abs=0.5)
    # resuming once the budget is spent trains no more steps (it does not get a fresh budget)
    r2 = train(sample_ct, out, tiny(max_steps=10**6, time_budget_s=used, val_size=0), resume=True)
    assert r2.steps == r1.steps
    used2 = read_checkpoint(last)["elapsed_s"]
    assert used2 >= used  # the resume's own setup time adds up
    # a larger budget gives what is left of it, and the time used keeps adding up
    r3 = train(sample_ct, out, tiny(max_steps=10**6, time_budget_s=used2 + 8.0, val_size=0), resume=True)
    assert r3.steps > r2.steps
    assert used2 < r3.elapsed_s < used2 + 8.0 + 30  # (+ slack for a loaded machine)
    assert read_checkpoint(last)["elapsed_s"] == pytest.approx(r3.elapsed_s, abs=0.5)


def test_training_progress_in_a_log_is_plain_lines_not_a_redrawn_bar(tmp_path, sample_ct, capsys, monkeypatch):
    from xraypose.progress import LineProgress

    monkeypatch.setattr(LineProgress, "_last_line_t", -float("inf"))
    train(sample_ct, tmp_path / "m.pt", tiny(max_steps=12, val_size=0, progress=True))
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b[" not in err
    lines = [x for x in err.splitlines() if x.startswith("epoch")]
    assert 1 <= len(lines) <= 3 and "steps" in lines[0]  # a line every 10 s, not one per step


def test_line_progress_writes_a_line_every_few_seconds(monkeypatch):
    import io

    from xraypose import progress as pg

    clock = [0.0]
    monkeypatch.setattr(pg.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(pg.LineProgress, "_last_line_t", -float("inf"))
    buf = io.StringIO()
    bar = pg.progress(total=1000, desc="epoch 0", unit="steps", file=buf)
    assert isinstance(bar, pg.LineProgress)  # not a terminal
    for _ in range(1000):
        clock[0] += 0.1  # 100 s in all
        bar.update(1)
    bar.close()
    lines = buf.getvalue().splitlines()
    assert 10 <= len(lines) <= 12 and lines[-1].startswith("epoch 0: 1000/1000 steps (100 %)")


# ----------------------------------------------------------------------------- outputs checked first
def test_outputs_that_cannot_be_written_are_refused_before_computing(tmp_path, monkeypatch, capsys, case, model,
                                                                     read_only):
    ro = read_only(tmp_path / "ro")
    a_file = tmp_path / "FILE"
    a_file.write_text("user data")
    xray = str(case / "xrays" / "lao20_caud10.dcm")
    _forbid(monkeypatch, "xraypose.register.Registrar.register")
    _forbid(monkeypatch, "xraypose.api.render_drr")
    _forbid(monkeypatch, "xraypose.train.trainer.Trainer.setup")
    _forbid(monkeypatch, "xraypose.evaluate.load_eval_set")
    _forbid(monkeypatch, "xraypose.volume.load_sample_ct")
    runs = [
        (["register", "sample", xray, "-o", str(a_file / "result")], "is a file, not a folder"),
        (["register", "sample", xray, "-o", str(ro / "result")], "not writable"),
        (["register", "sample", xray, "-o", str(ro)], "not writable"),
        (["render", "sample", "--pose", "0,0", "-o", str(ro / "drr.png")], "not writable"),
        (["render", "sample", "--pose", "0,0", "-o", str(a_file / "drr.png")], "is a file, not a folder"),
        (["evaluate", str(case), "-o", str(ro / "eval")], "not writable"),
        (["train", "sample", "-o", str(ro / "model.pt")], "not writable"),
        (["demo", "-o", str(ro / "demo")], "not writable"),
    ]
    for args, words in runs:
        capsys.readouterr()
        assert main(args) == 2, args
        _one_error_line(capsys.readouterr().err, words)
    assert a_file.read_text() == "user data" and list(ro.iterdir()) == []


def test_evaluate_into_the_case_folders_xrays_is_refused_before_reading(tmp_path, monkeypatch, capsys, case):
    """Its report.html was read as an X-ray by every later evaluation of the case ("not a DICOM file")."""
    import shutil

    mine = shutil.copytree(case, tmp_path / "mycase")
    before = _snapshot(mine)
    _forbid(monkeypatch, "xraypose.evaluate.load_eval_set")
    for out in (mine / "xrays", Path(f"{mine}/xrays/"), mine / "cases" / ".." / "xrays"):
        capsys.readouterr()
        assert main(["evaluate", str(mine), "-o", str(out), "--start", "perturb"]) == 2
        _one_error_line(capsys.readouterr().err, "is the case folder's xrays/", "choose another folder")
    assert _snapshot(mine) == before


def test_a_result_that_would_be_an_x_rays_sidecar_is_refused_before_computing(tmp_path, monkeypatch, capsys):
    """``register … -o DIR`` beside ``DIR/pose.npy`` wrote DIR/pose.json, which every later read of pose.npy took as
    its sidecar ("unknown key 'camera_to_world'"); ``track -o`` a folder holding trajectory.npy, the same."""
    folder = tmp_path / "xrays"
    folder.mkdir()
    img = np.random.default_rng(0).uniform(1, 2, (64, 64)).astype(np.float32)
    for name in ("pose.npy", "lat.npy", "notes.txt"):
        np.save(folder / name, img) if name.endswith(".npy") else (folder / name).write_text("mine")
    _forbid(monkeypatch, "xraypose.register.Registrar.register")
    _forbid(monkeypatch, "xraypose.cli.track.read_sequences")
    common = ["--sdd", "1020", "--delx", "4", "--init", "angles", "--angles", "0,0", "--sod", "612", "-o", str(folder)]
    before = _snapshot(folder)
    for x in ("pose.npy", "lat.npy"):  # the X-ray registered, or another one in the folder
        capsys.readouterr()
        assert main(["register", "sample", str(folder / x), *common]) == 2
        _one_error_line(capsys.readouterr().err, "holds pose.npy", "pose.json as its sidecar", "another output folder")
    (folder / "pose.npy").rename(folder / "trajectory.npy")
    assert main(["track", "sample", str(folder), *common]) == 2
    _one_error_line(capsys.readouterr().err, "holds trajectory.npy", "trajectory.json as its sidecar")
    before["trajectory.npy"] = before.pop("pose.npy")
    assert _snapshot(folder) == before


def _again_on_a_full_disk(args, out, name, full_disk, capsys):
    """``args`` run once (writing ``out``), then again with ``name`` failing to write (a full disk): the second
    run's one error line says so and that the result is printed on stdout; (its capture, ``out`` before it)."""
    assert main(args) == 0
    before = _snapshot(out)
    full_disk.names = [name]
    capsys.readouterr()
    assert main(args) == 2
    cap = capsys.readouterr()
    _one_error_line(cap.err, name, "No space left on device", "printed on stdout")
    return cap, before


def test_a_full_disk_when_register_writes_keeps_the_earlier_result_and_prints_the_pose(tmp_path, capsys, case,
                                                                                      full_disk):
    xray = str(case / "xrays" / "lao20_caud10.dcm")
    res = tmp_path / "result"
    args = ["register", str(case / "ct.nii.gz"), xray, "-o", str(res), "--levels", "32", "--size", "32"]
    cap, before = _again_on_a_full_disk(args, res, "pose.json", full_disk, capsys)
    T = torch.tensor(json.loads(cap.out.strip().splitlines()[-1])["camera_to_world"])
    assert T.shape == (4, 4) and bool(torch.isfinite(T).all())  # the computed pose is not lost
    assert _snapshot(res) == before and _temp_files(res) == []


def test_a_full_disk_when_track_writes_keeps_the_earlier_trajectory_and_prints_the_new_one(tmp_path, capsys,
                                                                                         full_disk):
    """The tracked poses of a sequence (minutes to hours of work) were lost when its files could not be written."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        assert main(["render", "sample", "--pose", f"{2 * i},0", "--height", "64", "--delx", "4",
                     "-o", str(frames / f"f{i}.npy")]) == 0
    out = tmp_path / "track"
    args = ["track", "sample", str(frames), "--sdd", "1020", "--delx", "4", "--init", "angles", "--angles", "0,0",
            "--sod", "612", "--levels", "16", "--threads", "1", "-o", str(out)]
    cap, before = _again_on_a_full_disk(args, out, "trajectory.json", full_disk, capsys)
    lines = cap.out.splitlines()
    head = next(i for i, x in enumerate(lines) if x.startswith("frame,"))
    rows = lines[head + 1:]
    assert [r.split(",")[0] for r in rows] == ["0", "1", "2"]  # every frame's pose is not lost
    assert lines[head] == before["trajectory.csv"].decode().splitlines()[0]  # trajectory.csv's columns
    after = _snapshot(out)
    partial = after.pop("trajectory.partial.jsonl").decode().splitlines()  # the frames done stay for --resume
    assert len(partial) == 1 + 3
    assert after == before and _temp_files(out) == []


def test_a_full_disk_in_evaluate_is_one_line(tmp_path, capsys, case, full_disk):
    full_disk.names = ["pose.json"]
    assert main(["evaluate", str(case), "-o", str(tmp_path / "ev"), "--start", "perturb", "--perturb", "2,5",
                 "--levels", "32", "--size", "32", "--no-pictures", "--quiet"]) == 2
    _one_error_line(capsys.readouterr().err, "pose.json", "No space left on device")
    assert _temp_files(tmp_path) == []


# ----------------------------------------------------------------------------- old result folders
def test_register_into_an_old_result_folder_keeps_only_the_new_results_files(tmp_path, case):
    xray = str(case / "xrays" / "lao20_caud10.dcm")
    res = tmp_path / "result"
    poses = json.loads((case / "poses.json").read_text())
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"camera_to_world": poses["lao20_caud10.dcm"]}))
    base = ["register", str(case / "ct.nii.gz"), xray, "-o", str(res), "--levels", "32", "--size", "32"]
    assert main(base + ["--true-pose", str(truth)]) == 0
    (res / "notes.txt").write_text("mine")
    assert {p.name for p in res.iterdir()} == {"pose.json", "metrics.json", "trajectory.json", "views.png",
                                               "notes.txt", MANIFEST}
    from PIL import Image

    with Image.open(res / "views.png") as im:  # the X-ray, the DRR at the result, its edges: a picture to look at
        assert im.size[0] > 100 and im.size[1] > 200
    old_pose = (res / "pose.json").read_bytes()
    assert main(base + ["--no-trajectory", "--seed", "1"]) == 0
    assert {p.name for p in res.iterdir()} == {"pose.json", "views.png", "notes.txt", MANIFEST}  # no stale metrics
    (res / "metrics.json").write_text("my own")  # a file of a result's name that xraypose did not write: refused
    assert main(base + ["--seed", "2"]) == 2 and (res / "metrics.json").read_text() == "my own"
    assert (res / "pose.json").read_bytes() != old_pose


def test_evaluate_into_an_old_folder_is_refused_or_replaced_when_told(tmp_path, capsys, case):
    ev = tmp_path / "ev"
    args = ["evaluate", str(case), "-o", str(ev), "--start", "perturb", "--perturb", "2,5", "--levels", "32", "--size", "32",
            "--no-pictures", "--quiet"]
    assert main(args) == 0
    (ev / "cases" / "old-case").mkdir()
    (ev / "cases" / "old-case" / "pose.json").write_text("{}")  # a case of an earlier run
    (ev / "notes.txt").write_text("mine")
    before = _snapshot(ev)
    capsys.readouterr()
    assert main(args) == 2
    _one_error_line(capsys.readouterr().err, "earlier evaluation", "--resume", "--overwrite")
    assert _snapshot(ev) == before
    assert main(args + ["--overwrite"]) == 0
    assert not (ev / "cases" / "old-case").exists() and (ev / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (ev / "cases").iterdir()) == ["lao20_caud10.dcm", "lateral.npy"]


def test_evaluate_never_takes_a_users_files_of_its_names_for_an_earlier_evaluation(tmp_path, monkeypatch, capsys,
                                                                                   case):
    """A folder holding the user's own metrics.csv / report.html / training.png (no run.json, no cases/) was
    called "an earlier evaluation", and --overwrite deleted them."""
    ev = tmp_path / "results"
    ev.mkdir()
    (ev / "metrics.csv").write_text("my spreadsheet")
    (ev / "report.html").write_text("<p>my notes</p>")
    (ev / "run.json").write_text('{"my": "own settings"}')
    before = _snapshot(ev)
    _forbid(monkeypatch, "xraypose.register.Registrar.register")
    args = ["evaluate", str(case), "-o", str(ev), "--start", "perturb", "--levels", "32", "--size", "32",
            "--no-pictures", "--quiet"]
    for flag in ([], ["--overwrite"], ["--resume"]):
        capsys.readouterr()
        assert main(args + flag) == 2, flag
        _one_error_line(capsys.readouterr().err, "report.html, metrics.csv", "not written there by xraypose")
        assert _snapshot(ev) == before


def test_evaluate_resume_refuses_other_settings_and_names_them(tmp_path, capsys, case):
    ev = tmp_path / "ev"
    args = ["evaluate", str(case), "-o", str(ev), "--start", "perturb", "--levels", "32", "--size", "32", "--no-pictures",
            "--quiet"]
    assert main(args + ["--perturb", "2,5"]) == 0
    before = _snapshot(ev)
    for extra, words in [(["--perturb", "3,5"], ["--perturb", "[2.0, 5.0]", "[3.0, 5.0]"]),
                         (["--perturb", "2,5", "--lr-rot", "0.01"], ["--lr-rot", "0.0075", "0.01"]),
                         (["--perturb", "2,5", "--size", "40"], ["--size"]),
                         (["--perturb", "2,5", "--seed", "3"], ["--seed"]),
                         # each level field that differs, in full (the two schedules were cut at 60 characters)
                         (["--perturb", "2,5", "--levels", "48"], ["--levels/--fast/--metal: levels[0].size (32 then, "
                                                                   "48 now)"])]:
        capsys.readouterr()
        assert main(args + extra + ["--resume"]) == 2, extra
        _one_error_line(capsys.readouterr().err, "cannot resume", *words)
    assert _snapshot(ev) == before
    # the same settings resume (threads may change: they only change the speed)
    assert main(args + ["--perturb", "2, 5", "--resume", "--threads", "2"]) == 0
    assert _snapshot(ev)["cases/lateral.npy/result.json"] == before["cases/lateral.npy/result.json"]


def test_evaluate_resume_refuses_another_source_of_the_same_name(tmp_path, capsys, case):
    """A resume reads the source from the same path only: another folder (or file) of the same name, with X-rays
    of the same names, was accepted (run.json held the name only) and its cases mixed with the earlier ones."""
    import shutil

    other = tmp_path / "elsewhere" / case.name
    shutil.copytree(case, other)
    ev = tmp_path / "ev"
    args = ["-o", str(ev), "--start", "perturb", "--perturb", "2,5", "--levels", "32", "--size", "32",
            "--no-pictures", "--quiet"]
    assert main(["evaluate", str(case), *args]) == 0
    before = _snapshot(ev)
    capsys.readouterr()
    assert main(["evaluate", str(other), *args, "--resume"]) == 2
    _one_error_line(capsys.readouterr().err, "cannot resume", "source_path")
    assert _snapshot(ev) == before  # (the same source resumes: the test above)


def test_evaluate_resume_refuses_an_x_ray_preprocessed_otherwise_than_in_the_earlier_run(tmp_path, capsys, case):
    """run.json records each case folder X-ray's preprocessing order: a resume after xraypose's preprocessing
    changed (2026-12-05: few photons shrunk after the log, no longer before it) kept the earlier cases' results
    beside new ones made otherwise, silently.  Now refused naming the X-ray and both orders; a run.json from
    before the record is refused only for X-rays the old default shrank before the log."""
    import shutil

    src = tmp_path / "lowdose"
    shutil.copytree(case, src)
    npy = src / "xrays" / "lateral.npy"
    a = np.load(npy)  # a low-dose raw X-ray: ~0–400 photons of 10 grey levels each
    np.save(npy, (np.random.default_rng(0).poisson(a / a.max() * 400) * 10.0 + 0.25).astype(np.float32))
    ev = tmp_path / "ev"
    args = ["evaluate", str(src), "-o", str(ev), "--start", "perturb", "--perturb", "2,5", "--levels", "32",
            "--size", "32", "--no-pictures", "--quiet"]
    assert main(args) == 0
    run = json.loads((ev / "run.json").read_text())
    assert run["preprocessing"]["lateral.npy"] == ["beer_lambert", "blur (line-integral)", "rescale01",
                                                   "resize (line-integral)"]
    assert main(args + ["--resume"]) == 0  # the same order resumes

    def refused(*words):
        before = _snapshot(ev)
        capsys.readouterr()
        assert main(args + ["--resume"]) == 2
        line = _one_error_line(capsys.readouterr().err, "cannot resume", "lateral.npy", *words, "--overwrite")
        assert _snapshot(ev) == before
        return line

    then = {**run, "preprocessing": {**run["preprocessing"], "lateral.npy": ["resize (intensity)", "beer_lambert",
                                                                             "blur (line-integral)", "rescale01"]}}
    (ev / "run.json").write_text(json.dumps(then))
    refused("resize (intensity) → beer_lambert", "resize (line-integral) now")
    del then["preprocessing"]  # a run.json from before the record: this X-ray was binned before the log then
    (ev / "run.json").write_text(json.dumps(then))
    assert "lao20_caud10.dcm" not in refused("1 X-ray(s)", "before it if the run began before 2026-12-05")
    (ev / "run.json").write_text(json.dumps(run))
    assert main(args + ["--resume"]) == 0


def test_evaluate_resume_refuses_inputs_changed_since_and_names_the_file(tmp_path, capsys, case):
    """run.json fingerprints the case folder (each file's size, mtime_ns and SHA-256): an X-ray replaced, added or removed
    between a run and its --resume was accepted silently, the earlier cases' results kept for the new inputs.
    The same files (bytes and times) resume; a run.json from before the fingerprint resumes unchecked."""
    import shutil

    src = tmp_path / "mycase"
    shutil.copytree(case, src)
    ev = tmp_path / "ev"
    args = ["evaluate", str(src), "-o", str(ev), "--start", "perturb", "--perturb", "2,5", "--levels", "32",
            "--size", "32", "--no-pictures", "--quiet"]
    assert main(args) == 0
    run = json.loads((ev / "run.json").read_text())
    assert run["inputs"]["xrays/lateral.npy"][0] == (src / "xrays" / "lateral.npy").stat().st_size
    assert {"ct.nii.gz", "poses.json", "xrays/lateral.json", "xrays/lao20_caud10.dcm"} <= set(run["inputs"])
    before = _snapshot(ev)
    npy = src / "xrays" / "lateral.npy"
    data, st = npy.read_bytes(), npy.stat()

    def refused(*words):
        capsys.readouterr()
        assert main(args + ["--resume"]) == 2
        _one_error_line(capsys.readouterr().err, "cannot resume", "inputs changed", *words, "--overwrite")
        assert _snapshot(ev) == before

    a = np.load(npy)
    np.save(npy, a[:, ::-1].copy())  # another image, the same name and size
    refused("xrays/lateral.npy modified")
    npy.write_bytes(data)
    os.utime(npy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the very file again, touched (or copied back
    # without its times): resumes — it was refused as modified when only sizes and times were compared
    assert main(args + ["--resume"]) == 0
    assert _snapshot(ev)["cases/lateral.npy/result.json"] == before["cases/lateral.npy/result.json"]
    before = _snapshot(ev)
    poses_json = src / "poses.json"
    poses_bytes, poses_st = poses_json.read_bytes(), poses_json.stat()
    shutil.copy(npy, src / "xrays" / "extra.npy")  # another case: an X-ray, its sidecar, its true pose
    shutil.copy(src / "xrays" / "lateral.json", src / "xrays" / "extra.json")
    poses_json.write_text(json.dumps({**json.loads(poses_bytes), "extra.npy": json.loads(poses_bytes)["lateral.npy"]}))
    refused("poses.json modified, xrays/extra.json added, xrays/extra.npy added")
    (src / "xrays" / "extra.npy").unlink()
    (src / "xrays" / "extra.json").unlink()
    poses_json.write_bytes(poses_bytes)
    os.utime(poses_json, ns=(poses_st.st_atime_ns, poses_st.st_mtime_ns))
    dcm = src / "xrays" / "lao20_caud10.dcm"  # a case taken out (its X-ray and its true pose)
    dcm.rename(tmp_path / "away.dcm")
    poses_json.write_text(json.dumps({"lateral.npy": json.loads(poses_bytes)["lateral.npy"]}))
    refused("poses.json modified, xrays/lao20_caud10.dcm removed")
    (tmp_path / "away.dcm").rename(dcm)
    poses_json.write_bytes(poses_bytes)
    os.utime(poses_json, ns=(poses_st.st_atime_ns, poses_st.st_mtime_ns))
    assert main(args + ["--resume"]) == 0
    assert _snapshot(ev)["cases/lateral.npy/result.json"] == before["cases/lateral.npy/result.json"]
    # a run.json written before the fingerprint existed resumes (unchecked), and records it from then on
    del run["inputs"]
    (ev / "run.json").write_text(json.dumps(run))
    os.utime(npy, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    assert main(args + ["--resume"]) == 0
    assert json.loads((ev / "run.json").read_text())["inputs"]["xrays/lateral.npy"][1] == st.st_mtime_ns + 2 * 10**9
    # a run.json of [size, time] entries (before the content was recorded): compared by size and time
    run = json.loads((ev / "run.json").read_text())
    run["inputs"] = {k: v[:2] for k, v in run["inputs"].items()}
    (ev / "run.json").write_text(json.dumps(run))
    os.utime(npy, ns=(st.st_atime_ns, st.st_mtime_ns))
    before = _snapshot(ev)
    refused("xrays/lateral.npy modified")
    os.utime(npy, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    assert main(args + ["--resume"]) == 0
    # an evaluation written into the case folder itself leaves its own files out of the fingerprint
    inside = args[:3] + [str(src)] + args[4:]
    assert main(inside) == 0 and main(inside + ["--resume"]) == 0
    assert "run.json" not in json.loads((src / "run.json").read_text())["inputs"]


# ----------------------------------------------------------------------------- a model from another CT
def _other_ct(path: Path, ct, *, same_geometry: bool = False) -> Path:
    import nibabel as nib

    if same_geometry:  # same shape and place, other voxels (another patient on the same protocol)
        data, aff = np.flip(ct.data.numpy(), axis=2).copy(), ct.affine.numpy().copy()
    else:
        data = ct.data.numpy()[::2, ::2, ::2].copy()
        aff = ct.affine.numpy().copy()
        aff[:3, :3] *= 2
    nib.Nifti1Image(data.astype(np.float32), aff).to_filename(str(path))
    return path


def test_a_model_is_refused_with_another_ct_unless_allowed(tmp_path, capsys, case, model, sample_ct):
    from xraypose.register.initializers import ModelInitializer
    from xraypose.volume import read_volume

    xray = str(case / "xrays" / "lao20_caud10.dcm")
    other = _other_ct(tmp_path / "other.nii.gz", sample_ct)
    twin = _other_ct(tmp_path / "twin.nii.gz", sample_ct, same_geometry=True)
    # CLI: register
    for c in (other, twin):
        capsys.readouterr()
        assert main(["register", str(c), xray, "--model", str(model), "-o", str(tmp_path / "r"), "--levels", "16",
                     "--size", "32"]) == 2
        _one_error_line(capsys.readouterr().err, "trained on another CT", "--allow-other-ct")
    assert not (tmp_path / "r").exists()
    capsys.readouterr()
    assert main(["register", str(other), xray, "--model", str(model), "-o", str(tmp_path / "r"), "--levels", "16",
                 "--size", "32", "--allow-other-ct"]) == 0
    err = capsys.readouterr().err
    assert "xraypose: warning:" in err and "trained on another CT" in err and "Traceback" not in err
    # the CT it was trained on (the same file, or the case's copy of it) is accepted silently
    assert main(["register", str(case / "ct.nii.gz"), xray, "--model", str(model), "-o", str(tmp_path / "s"),
                 "--levels", "16", "--size", "32"]) == 0
    assert "warning" not in capsys.readouterr().err
    # CLI: evaluate (a case folder whose CT is another)
    import shutil

    other_case = tmp_path / "othercase"
    shutil.copytree(case, other_case)
    (other_case / "ct.nii.gz").unlink()
    shutil.copy(other, other_case / "ct.nii.gz")
    capsys.readouterr()
    assert main(["evaluate", str(other_case), "--model", str(model), "-o", str(tmp_path / "ev"), "--levels", "16",
                 "--size", "32", "--no-pictures", "--quiet"]) == 2
    _one_error_line(capsys.readouterr().err, "trained on another CT")
    # API
    with pytest.raises(InputError, match="trained on another CT.*voxels"):
        ModelInitializer.from_checkpoint(model, read_volume(other))
    with pytest.raises(InputError, match="other voxel values"):
        ModelInitializer.from_checkpoint(model, read_volume(twin))
    with pytest.warns(OtherCTWarning, match="using it anyway"):
        ModelInitializer.from_checkpoint(model, read_volume(other), allow_other_ct=True)
    ModelInitializer.from_checkpoint(model, sample_ct)  # its own CT: no error, no warning


def test_an_old_checkpoint_without_its_ct_record_warns_and_resume_with_another_ct_is_refused(tmp_path, model,
                                                                                               sample_ct):
    from xraypose.model import save_checkpoint
    from xraypose.register.initializers import ModelInitializer

    ck = read_checkpoint(model)
    del ck["meta"]["volume"]
    old = tmp_path / "old.pt"
    save_checkpoint(old, ck)
    with pytest.warns(OtherCTWarning, match="cannot be checked"):
        ModelInitializer.from_checkpoint(old, sample_ct)
    # resuming a training with another CT
    out = tmp_path / "m.pt"
    train(sample_ct, out, tiny(max_steps=1, val_size=0))
    small = load_sample_ct()
    small.data = small.data.flip(0)
    with pytest.raises(InputError, match="trained on another CT"):
        train(small, out, tiny(max_steps=2, val_size=0), resume=True)


def test_the_registration_benchmark_uses_a_bare_model_only_with_its_ct(tmp_path, model, sample_ct):

    bench = _benchmark("register")
    logged = []
    small = load_sample_ct()
    small.data = small.data[::2, ::2, ::2].contiguous()
    small.affine[:3, :3] *= 2
    assert bench.model_for("pelvis", "pelvis", sample_ct, {"*": str(model)}, False, logged.append) is not None
    assert bench.model_for("abdomen", "abdomen", small, {"*": str(model)}, False, logged.append) is None
    assert "no model start" in logged[-1] and "trained on another CT" in logged[-1]
    with pytest.raises(SystemExit, match="trained on another CT"):
        bench.model_for("abdomen", "abdomen", small, {"abdomen": str(model)}, False, logged.append)
    with pytest.warns(OtherCTWarning):
        assert bench.model_for("abdomen", "abdomen", small, {"*": str(model)}, True, logged.append) is not None


# ----------------------------------------------------------------------------- infinite metrics
def test_an_estimate_behind_a_fiducial_is_a_failed_case_in_the_benchmark_and_in_json(tmp_path, sample_ct):
    import math
    from types import SimpleNamespace

    from xraypose.camera import Camera, carm_pose
    from xraypose.metrics import summarize
    from xraypose.register.cases import SyntheticCase

    bench = _benchmark("register")
    iso = sample_ct.get_isocenter()
    T = carm_pose(0.0, 0.0, sod=612.0, isocenter=iso).to(torch.float64)
    cam = Camera(sdd=1020.0, height=16, width=16, delx=17.5)
    fid = torch.stack([iso, iso + torch.tensor([20.0, 0, 0], dtype=torch.float64)])
    bad = T.clone()
    bad[:3, 3] = iso + 30 * T[:3, 2]  # the estimate's source lies past the fiducials

    class Registrar:  # returns the bad estimate for the first case, the truth for the second
        def register(self, imgs, camera, T0):
            n = imgs.shape[0]
            poses = torch.stack([bad, T][:n])
            return SimpleNamespace(poses=poses, opt_s=0.1, cpu_s=0.1, iterations=[1] * n, status=["converged"] * n,
                                   similarity=[0.5] * n, bone_multiplier=[1.0] * n, level_stats=[])

    cases = [SyntheticCase(raw=torch.zeros(16, 16), raw_camera=cam, image=torch.zeros(16, 16), camera=cam,
                           true_pose=T, fiducials=fid, index=i, preprocessing=[]) for i in range(2)]
    rows = bench.run_group("pelvis", sample_ct, cases, "5,20", Registrar(), 2, 0, log=lambda s: None)
    assert math.isinf(rows[0]["mpe"]) and math.isinf(rows[0]["mrpe"]) and math.isfinite(rows[0]["mtre"])
    s = summarize(rows, keys=bench.KEYS)
    out = tmp_path / "bench.json"
    atomic_write_json(out, {"summary": s, "cases": rows})
    text = out.read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))  # strict JSON
    assert data["cases"][0]["mpe"] is None and data["cases"][0]["non_finite"]["mpe"] == "inf"
    assert math.isinf(restore_non_finite(data)["cases"][0]["mpe"])
    assert jsonable({"a": [math.inf]}) == {"a": [None]}


def test_a_result_with_infinite_metrics_is_written_as_strict_json_and_read_back(tmp_path, sample_ct):
    import math

    from xraypose.camera import Camera, carm_pose
    from xraypose.evaluate import write_case_outputs
    from xraypose.register.api import Registration, write_registration

    T = carm_pose(0.0, 0.0, sod=612.0, isocenter=sample_ct.get_isocenter()).to(torch.float64)
    cam = Camera(sdd=1020.0, height=16, width=16, delx=17.5)
    m = {"mtre": 250.0, "mpe": math.inf, "mrpe": math.inf, "rot_mm": 1.0, "trans_mm": 1.0, "dgeo": 1.4,
         "rot_deg": 0.1}
    reg = Registration(camera_to_world=T, camera=cam, initial_pose=T, similarity=0.5, status="converged",
                       iterations=3, bone_multiplier=1.0, init_s=0.0, opt_s=0.1, batch_opt_s=0.1, batch_size=1,
                       cpu_s=0.1, metrics=m, initial_metrics=dict(m))
    write_registration(tmp_path / "r", reg)
    strict = {"parse_constant": lambda c: pytest.fail(f"{c} in JSON")}
    pose = json.loads((tmp_path / "r" / "pose.json").read_text(), **strict)
    assert pose["metrics"]["mpe"] is None and pose["metrics"]["non_finite"] == {"mpe": "inf", "mrpe": "inf"}
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text(), **strict)
    assert math.isinf(restore_non_finite(metrics)["final"]["mpe"]) and metrics["success_1mm"] is False
    reg.similarity = float("nan")  # a NaN is never written, inside or outside the metrics
    with pytest.raises(InputError, match="non-finite"):
        write_registration(tmp_path / "r", reg)
    reg.similarity, reg.metrics = 0.5, {**m, "mpe": float("nan")}
    with pytest.raises(InputError, match="non-finite"):
        write_registration(tmp_path / "r", reg)
    # an evaluation's case: result.json strict, its row read back (by a resume) with inf
    reg.metrics = m
    row, _ = write_case_outputs(tmp_path / "case", sample_ct, torch.zeros(16, 16), cam, reg, name="c", pictures=False)
    saved = json.loads((tmp_path / "case" / "result.json").read_text(), **strict)
    assert math.isinf(restore_non_finite(saved)["row"]["mPE (mm)"]) and math.isinf(row["mPE (mm)"])


def _appearance_run(tmp_path, levels: str, *extra: str) -> dict:
    """benchmarks/appearance.py on one pelvis `ours` X-ray at 64², started at the truth, with ``--levels
    levels`` and ``extra`` options: its JSON report."""
    import json

    out = tmp_path / "a.json"
    assert _benchmark("appearance").main(["--json", str(out), "--ct", "pelvis", "--families", "ours", "--cases", "1",
                                          "--starts", "truth", "--detector", "64", "--levels", levels, *extra,
                                          "--cache", str(tmp_path / "cache")]) == 0
    return json.loads(out.read_text())


def test_the_appearance_benchmark_runs_with_a_levels_schedule_and_records_it(tmp_path):
    """benchmarks/appearance.py --levels wrote Level objects into its JSON's settings and crashed at the
    first save; the sizes are recorded as given."""
    doc = _appearance_run(tmp_path, "16,32")
    assert doc["settings"]["levels"] == "16,32" and doc["config"]["levels"][-1]["size"] == 32
    assert doc["groups"]["pelvis/ours/truth"]["n"] == 1 and doc["cases"][0]["mtre"] < 5.0


def test_the_appearance_benchmarks_lm_set_reaches_the_fine_levels_and_is_recorded(tmp_path):
    """benchmarks/appearance.py --lm-set FIELD=JSON changes the Levenberg–Marquardt levels only; the
    report records the change as given and the levels in its config (it once crashed writing them)."""
    doc = _appearance_run(tmp_path, "16,48", "--lm-set", "fit_unsharp=[3, 9]")
    assert doc["settings"]["lm_set"] == ["fit_unsharp=[3, 9]"] and doc["settings"]["levels"] == "16,48"
    assert [lv["fit_unsharp"] for lv in doc["config"]["levels"]] == [[], [3, 9]]


def test_the_appearance_benchmarks_scatter_and_hypotheses_are_recorded(tmp_path):
    """benchmarks/appearance.py --scatter puts the scatter fit on every level and says so in the settings;
    with --hypotheses each case's row lists the starts tried with their p_success and verdicts."""
    doc = _appearance_run(tmp_path, "16,48", "--scatter", "--hypotheses")
    assert doc["settings"]["scatter"] is True
    assert all(lv["fit_scatter"] == [25.0, 60.0] for lv in doc["config"]["levels"])
    row = doc["cases"][0]
    tried = row["hypotheses"]  # none when the given start's result is ok, else the given start first
    assert (tried == []) if row["verdict"] == "ok" else (tried[0]["start"] == "given start" and len(tried) > 1)
    assert all(0.0 <= h["p_success"] <= 1.0 for h in tried)
    assert tried, row["verdict"]  # this start is not ok: the hypotheses ran
    for h in tried:  # each result's distance from the kept one and its own error against the truth
        assert h["from_kept_mm"] >= 0.0 and h["mtre"] >= 0.0
        assert 0.0 <= h["p_scatter"] <= 1.0 and h["p_ranked"] == max(h["p_success"], h["p_scatter"])
        if h["start"] == row["kept"]:
            assert h["from_kept_mm"] == pytest.approx(0.0, abs=1e-9) and h["mtre"] == pytest.approx(row["mtre"])


def test_the_benchmarks_set_values_are_json_and_a_bad_one_is_named():
    """benchmarks' --set / --lm-set FIELD=JSON (one parser for appearance, register, tracking, multiview)."""

    bench = _benchmark("appearance")
    assert bench.json_sets(["shift_search=null", "fit_unsharp=[3, 9]", "similarity=\"gncc\""]) == {
        "shift_search": None, "fit_unsharp": [3, 9], "similarity": "gncc"}
    with pytest.raises(SystemExit, match="similarity=gncc: the value is not JSON"):
        bench.json_sets(["similarity=gncc"])


def test_the_tracking_benchmark_keeps_one_processing_for_a_sequence_and_fixes_given_parameters(tmp_path):
    """benchmarks/tracking.py --same-params draws the family's parameters once (frame 0's) and keeps
    them for every frame, as a fluoroscopy system's processing is; --param fixes one for every frame."""
    import json

    bench = _benchmark("tracking")
    out = tmp_path / "t.json"
    assert bench.main(["--json", str(out), "--family", "display", "--frames", "3", "--detector", "32",
                       "--jump-at", "0", "--no-confidence", "--same-params", "--param", "photons=3000",
                       "--set", "match_capture=true", "--lm-set", "fit_unsharp=[3]"]) == 0  # both schedules run
    doc = json.loads(out.read_text())
    assert doc["settings"]["set"] == ["match_capture=true"] and doc["settings"]["lm_set"] == ["fit_unsharp=[3]"]
    formed = doc["formed"]
    assert len(formed) == 3 and formed[0]["photons"] == 3000
    assert all(f == formed[0] for f in formed[1:]), formed
    out2 = tmp_path / "t2.json"
    assert bench.main(["--json", str(out2), "--family", "display", "--frames", "2", "--detector", "32",
                       "--jump-at", "0", "--no-confidence"]) == 0
    formed2 = json.loads(out2.read_text())["formed"]
    assert formed2[0]["gamma"] != formed2[1]["gamma"]  # drawn anew per frame without --same-params
    with pytest.raises(SystemExit):
        bench._parse_param("photons")


def test_the_tracking_benchmark_gives_the_frames_masks_as_xraypose_track_does():
    """benchmarks/tracking.py dropped each frame's preprocessing mask (a display's saturated plateau), which
    `xraypose track` passes to track_sequence; frames without one weigh every pixel."""

    bench = _benchmark("tracking")
    m = torch.ones(4, 5)
    m[:, :2] = 0.0
    assert bench.sequence_weights([None, None], []) is None
    w = bench.sequence_weights([None, m, None], [])
    assert w.shape == (3, 1, 4, 5) and torch.equal(w[1, 0], m) and bool((w[0] == 1).all())
    noise = [torch.full((4, 5), 0.5)] * 3
    w = bench.sequence_weights([None, m, None], noise)
    assert torch.equal(w[1, 0], 0.5 * m) and bool((w[2] == 0.5).all())


def test_the_tracking_benchmarks_nofits_variants_leave_out_only_the_curve_and_tissue_fits():
    """benchmarks/tracking.py --tracking nofits128 / nofits (stop 64's measurement): the later frames' levels with
    the closed-form curve and tissue fits off at the finest level / at both, every other setting as shipped."""
    import dataclasses

    from xraypose.register.tracking import TRACKING_LEVELS

    bench = _benchmark("tracking")
    off = lambda lv: dataclasses.replace(lv, fit_curve=False, fit_tissue=False)
    assert all(lv.fit_curve and lv.fit_tissue for lv in TRACKING_LEVELS)  # what the variants leave out
    assert bench.TRACKING_VARIANTS["default"]() == TRACKING_LEVELS
    assert bench.TRACKING_VARIANTS["nofits128"]() == (TRACKING_LEVELS[0], off(TRACKING_LEVELS[1]))
    assert bench.TRACKING_VARIANTS["nofits"]() == tuple(off(lv) for lv in TRACKING_LEVELS)


def test_the_tracking_benchmarks_biplane_sequence_is_a_second_view_turned_about_the_isocenter(tmp_path):
    """benchmarks/tracking.py --biplane DEG films the same moments from a second view, view 0 turned DEG
    about the CT's isocenter around its image-vertical axis, and tracks both jointly; options the rig form
    does not take are refused."""
    import json
    import math

    from xraypose.volume import load_sample_ct

    bench = _benchmark("tracking")
    out = tmp_path / "b.json"
    assert bench.main(["--json", str(out), "--frames", "2", "--detector", "32", "--jump-at", "0",
                       "--no-confidence", "--biplane", "75"]) == 0
    doc = json.loads(out.read_text())
    C = torch.tensor(doc["biplane"]["camera_to_rig_1"], dtype=torch.float64)
    cos = float((torch.trace(C[:3, :3]) - 1) / 2)
    assert math.degrees(math.acos(max(-1.0, min(1.0, cos)))) == pytest.approx(75.0, abs=0.01)
    assert C[:3, :3][:, 1] @ torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64) == pytest.approx(1.0, abs=1e-6)
    # the isocenter stays where it was in the rig: equally far from both sources
    vol = load_sample_ct()
    _, truth = bench.benchmark_trajectory(vol, 0, 1, 32)
    iso = torch.cat([vol.get_isocenter().to(torch.float64), torch.ones(1, dtype=torch.float64)])
    p = torch.linalg.inv(truth[0].to(torch.float64)) @ iso
    assert float(p[:3].norm()) == pytest.approx(float((torch.linalg.inv(C) @ p)[:3].norm()), rel=1e-3)
    assert len(doc["frames"]) == 2 and all(math.isfinite(r["mtre"]) for r in doc["frames"])
    with pytest.raises(SystemExit, match="--biplane"):
        bench.main(["--json", str(tmp_path / "x.json"), "--frames", "2", "--biplane", "90", "--blur", "-0.03"])


def test_the_tracking_benchmarks_counts_treat_a_failed_frame_as_xraypose_track_does(monkeypatch):
    """benchmarks/tracking.py --counts refined every frame, while `xraypose track --counts` left a frame the
    check judged failed as tracked (its start None): the benchmark's 100 % on abdomen s2 was 98 % as the
    command ran it.  Now (gated, the default) the failed frame is refined, flagged doubtful, and counts only
    where admit_doubtful admits it, else keeps its tracked mTRE; --counts-failed leave never refines it;
    refine pools it like any other."""
    from types import SimpleNamespace

    import xraypose.register.counts as counts
    from xraypose.camera import Camera

    bench = _benchmark("tracking")
    cam = Camera(sdd=1020.0, height=16, width=16, delx=2.0)
    seen = {}

    def fake_refine(vol, camera, raws, starts, progress=None, doubtful=None, **kw):
        seen["starts"], seen["doubtful"] = starts, doubtful
        fits = [None if T is None else SimpleNamespace(pose=truth, iterations=0, to_dict=dict) for T in starts]
        for i, f in enumerate(fits):
            progress(i, f)
        return SimpleNamespace(to_dict=dict, blur_px=0.7, supersample=2), fits

    monkeypatch.setattr(counts, "refine_sequence", fake_refine)
    monkeypatch.setattr(counts, "pool_fits", lambda fits, iso, motion: [None if f is None else f.pose for f in fits])
    admit = {"failed": False}  # what the fake admit_doubtful does with the failed frame's fit
    monkeypatch.setattr(counts, "admit_doubtful", lambda fits, doubtful, iso, motion: [
        None if d and not admit["failed"] else f for f, d in zip(fits, doubtful)])
    truth = torch.eye(4, dtype=torch.float64)
    truth[2, 3] = 800.0
    moved = truth.clone()
    moved[0, 3] += 3.0  # the tracked pose: 3 mm off
    out = [SimpleNamespace(index=i, verdict=v, camera_to_world=moved) for i, v in enumerate(["ok", "failed", "ok"])]
    raws = [(torch.ones(16, 16), cam, torch.eye(4, dtype=torch.float64), 0, 0.7)] * 3
    fid = torch.tensor([[0.0, 0.0, 0.0], [10.0, 5.0, -4.0]], dtype=torch.float64)
    vol = SimpleNamespace(get_isocenter=lambda: torch.zeros(3, dtype=torch.float64))
    for rule, admitted, started, used in (("leave", False, [True, False, True], [True, False, True]),
                                          ("refine", False, [True] * 3, [True] * 3),
                                          ("gated", False, [True] * 3, [True, False, True]),
                                          ("gated", True, [True] * 3, [True] * 3)):
        admit["failed"] = admitted
        rows = [{"mtre": 3.0, "depth_error_mm": 0.0} for _ in out]
        args = SimpleNamespace(counts_every=1, counts_max_side=128, counts_blur="0.7", counts_air="-1000",
                               counts="auto", counts_supersample=None, counts_failed=rule)
        summary = bench.refine_counts(vol, rows, out, raws, [truth] * 3, fid, cam, args)
        assert [s is not None for s in seen["starts"]] == started
        assert seen["doubtful"] == ([False, True, False] if rule == "gated" else None)
        assert summary["left_as_tracked"] == used.count(False) and summary["failed"] == 1
        for row, s, u in zip(rows, started, used):  # a frame is scored at its fit (the truth) where it counts
            assert row["mtre_counts"] == pytest.approx(0.0 if s else 3.0, abs=1e-9)  # the fit alone, if refined
            assert row["mtre_counts_pooled"] == pytest.approx(0.0 if u else 3.0, abs=1e-9)  # else as tracked
            assert ("counts" in row) == s


def test_the_confidence_benchmarks_moved_poses_are_measured_once_and_cached(tmp_path):
    """benchmarks/confidence.py --moved: each good result moved as MOVES says, checked there (the case
    loaded once per record), the rows appended to the cache; a second call reads them back unchanged."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    bench = _benchmark("confidence")
    appearance = _benchmark("appearance")
    from xraypose.register import Registrar, RegistrationConfig
    from xraypose.volume import load_sample_ct

    vol = load_sample_ct()
    case = appearance.make_case(vol, appearance._case_maker(vol, 64, 0), "ours", 0, 0)
    loads = []

    class Run:
        iso = vol.get_isocenter().to(torch.float64)

        def case(self, r):
            loads.append(r["case"])
            return case

        def registrar(self, blur):
            return Registrar(vol, RegistrationConfig(drr_blur=blur))

    rec = {"ct": "pelvis", "family": "ours", "case": 0, "start": "truth", "mtre": 0.1, "start_mtre": 0.0,
           "pose": case["true_pose"].tolist(), "start_pose": case["true_pose"].tolist()}
    cache = tmp_path / "moved.jsonl"
    rows = bench.moved_records([rec], {"pelvis": Run()}, cache)
    assert [r["moved"] for r in rows] == ["across3", "across6", "turn2"] and loads == [0]
    assert rows[0]["mtre"] == pytest.approx(3.0, abs=0.01) and rows[1]["mtre"] == pytest.approx(6.0, abs=0.01)
    assert all(set(bench.SIGNALS) <= set(r["signals"]) for r in rows)
    again = bench.moved_records([rec], {"pelvis": Run()}, cache)
    assert again == rows and loads == [0]  # read from the cache: nothing loaded or measured again


def test_register_views_png_is_titled_with_the_xray(tmp_path, case, monkeypatch):
    """views.png of one X-ray names the X-ray's file above its column (and the verdict above all)."""
    import xraypose.register.multiview as M

    seen = {}
    real = M.views_picture
    monkeypatch.setattr(M, "views_picture", lambda *a, **k: seen.update(names=a[2], title=k.get("title")) or real(*a, **k))
    xray = case / "xrays" / "lao20_caud10.dcm"
    assert main(["register", str(case / "ct.nii.gz"), str(xray), "-o", str(tmp_path / "r"), "--levels", "16",
                 "--size", "32"]) in (0, 3)
    # the X-ray's column; a second one only for a rival result, named as such
    assert seen["names"][0] == "lao20_caud10.dcm" and seen["title"].startswith("verdict: ")
    assert all(n.startswith("lao20_caud10.dcm, rival: ") and "mm away" in n for n in seen["names"][1:])
    assert len(seen["names"]) <= 2


def test_a_picture_that_cannot_be_drawn_never_costs_the_result(tmp_path, case, monkeypatch, capsys):
    """views.png failing to draw (as a 32 × 1-pixel X-ray once made the edge filter fail, after registering)
    warns and leaves it out; the pose and the rest are written.  And such a size is refused up front."""
    import numpy as np

    import xraypose.register.multiview as M

    def broken(*a, **k):
        raise IndexError("too many indices for array")

    monkeypatch.setattr(M, "views_picture", broken)
    xray = case / "xrays" / "lao20_caud10.dcm"
    code = main(["register", str(case / "ct.nii.gz"), str(xray), "-o", str(tmp_path / "r"), "--levels", "16",
                 "--size", "32"])
    assert "warning: views.png not drawn (IndexError" in capsys.readouterr().err
    assert code in (0, 3) and {p.name for p in (tmp_path / "r").iterdir()} == {"pose.json", "trajectory.json", MANIFEST}
    tall = tmp_path / "tall.npy"
    np.save(tall, np.random.default_rng(0).uniform(100, 1000, (1200, 40)).astype("f4"))
    (tmp_path / "tall.json").write_text(json.dumps({"sdd_mm": 1020.0, "delx_mm": 0.3}))
    assert main(["register", str(case / "ct.nii.gz"), str(tall), "-o", str(tmp_path / "t"), "--levels", "16",
                 "--size", "32", "--init", "ap"]) == 2
    assert "give --size 480 or more" in capsys.readouterr().err and not (tmp_path / "t").exists()


def test_register_says_which_frame_of_a_multi_frame_file_it_registered(tmp_path, case, capsys):
    """A multi-frame file registers frame 0; the command says so on its output, not only in pose.json."""
    import numpy as np

    frames = tmp_path / "frames.npy"
    np.save(frames, np.random.default_rng(1).uniform(100, 1000, (3, 40, 40)).astype("f4"))
    (tmp_path / "frames.json").write_text(json.dumps({"sdd_mm": 1020.0, "delx_mm": 2.0}))
    main(["register", str(case / "ct.nii.gz"), str(frames), "-o", str(tmp_path / "r"), "--levels", "16",
          "--size", "32", "--init", "ap", "--no-hypotheses"])
    out = capsys.readouterr().out
    assert "note: " in out and "multi-frame image (3 frames" in out and "frame 0" in out, out


def test_demo_never_replaces_a_users_files_in_its_folder(tmp_path, monkeypatch, capsys):
    """`demo -o DIR` replaces an earlier demo's files only: a user's report.html and model.pt in DIR were
    deleted / overwritten (the demo cleared TOP_FILES and trained into DIR/model.pt regardless)."""
    out = tmp_path / "demo"
    (out / "cases" / "000").mkdir(parents=True)
    mine = {"report.html": "my report", "model.pt": "my model", "notes.txt": "notes",
            "cases/000/pose.json": "my pose"}
    for name, text in mine.items():
        (out / name).write_text(text)
    _forbid(monkeypatch, "xraypose.volume.load_sample_ct")
    assert main(["demo", "-o", str(out), "--fast"]) == 2
    _one_error_line(capsys.readouterr().err, "report.html", "model.pt", "cases/000/pose.json",
                    "not written there by xraypose")
    assert {n: (out / n).read_text() for n in mine} == mine
    # an earlier demo's files (its manifest lists them) are replaced, as one set with the new results (those the new
    # ones lack removed), the model's kept for its training to resume or reuse; the user's others stay
    from xraypose.demo import _prepare_output, _write_results
    from xraypose.io import written_here

    for name in ("report.html", "model.pt", "cases/000/pose.json"):
        (out / name).unlink()
    _prepare_output(out, 3)
    for name in ("report.html", "model.pt", "model.last.pt", "cases/001/pose.json"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("demo's")
    out, earlier = _prepare_output(out, 1)
    assert (out / "report.html").read_text() == "demo's"  # until the new results replace it
    assert {"report.html", "cases/001/pose.json"} <= set(earlier)
    assert {"report.html", "cases/001/pose.json", "model.last.pt"} <= written_here(out)
    stage = tmp_path / "stage"
    (stage / "cases" / "000").mkdir(parents=True)
    (stage / "report.html").write_text("new report")
    (stage / "cases" / "000" / "pose.json").write_text("new pose")
    _write_results(out, stage, 1, earlier)
    assert (out / "report.html").read_text() == "new report" and not (out / "cases" / "001").exists()
    assert (out / "model.last.pt").read_text() == "demo's" and "model.last.pt" in written_here(out)
    assert (out / "notes.txt").read_text() == "notes"
    # a demo folder from before the manifest (the README's `xraypose demo` run again after an update): its files
    # are the demo's — its training log and curves and a summary with the model's start error say so
    old = tmp_path / "old-demo"
    (old / "cases" / "000").mkdir(parents=True)
    for name in ("report.html", "model.pt", "model.log.jsonl", "training.png", "cases/000/pose.json", "metrics.csv"):
        (old / name).write_text("demo's")
    (old / "summary.json").write_text(json.dumps({"success_rate_1mm": 1.0, "median_start_mtre_mm": 18.1}))
    _prepare_output(old, 3)
    assert "report.html" in written_here(old) and (old / "cases").is_dir()
    # without those marks such files are the user's: refused, the list cut after five names
    other = tmp_path / "other"
    (other / "cases" / "000").mkdir(parents=True)
    for name in ("report.html", "model.pt", "model.log.jsonl", "cases/000/pose.json", "metrics.csv", "summary.json",
                 "cases/000/result.json"):
        (other / name).write_text("mine")
    with pytest.raises(OutputError, match=r"holds .* and 2 more, not written there by xraypose"):
        _prepare_output(other, 3)
    assert (other / "report.html").read_text() == "mine"


def test_ctrl_c_during_track_writes_the_frames_tracked_and_exits_130(tmp_path, capsys, monkeypatch):
    """Ctrl-C in `track` lost every tracked frame (nothing is written until the end): now the frame under way ends,
    the frames tracked so far are written (trajectory.json says it was interrupted) and the exit code is 130."""
    import signal

    import xraypose.cli.track as track_cli

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(6):
        assert main(["render", "sample", "--pose", f"{i},0", "--height", "64", "--delx", "4",
                     "-o", str(frames / f"f{i}.npy")]) == 0
    ctrl_c_after(monkeypatch, track_cli, "frame 2/")  # the user presses Ctrl-C once frame 2 is reported
    out = tmp_path / "track"
    capsys.readouterr()
    before = signal.getsignal(signal.SIGINT)  # (SIG_IGN where the suite runs as a shell's background job)
    code = main(["track", "sample", str(frames), "--sdd", "1020", "--delx", "4", "--init", "angles", "--angles", "0,0",
                 "--sod", "612", "--levels", "16", "--threads", "1", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 130, err
    assert "interrupted after" in err and "of 6 frames" in err
    doc = json.loads((out / "trajectory.json").read_text())
    n = doc["interrupted"]["frames_tracked"]
    assert 2 <= n < 6 and doc["interrupted"]["frames"] == 6 and len(doc["frames"]) == n
    rows = (out / "trajectory.csv").read_text().splitlines()
    assert len(rows) == n + 1  # the header and one row per frame tracked
    assert signal.getsignal(signal.SIGINT) is before  # the handler before it is back
