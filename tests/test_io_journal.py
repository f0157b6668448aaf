"""A result of several files replaces the previous one all-or-nothing (:func:`xraypose.io.atomic_write_files`'s
journal): a kill between two renames — at any of them — leaves a folder that the next xraypose write, or the
check every command makes before computing (:func:`xraypose.io.check_output_folder`), finishes as the new result.

A kill is simulated in-process as a SIGKILL would act: ``os.replace`` raises at the chosen rename and from then on
nothing of the killed write runs (its clean-up neither: ``_unlink_quietly`` does nothing); the end-to-end test kills
a real ``xraypose register`` with SIGKILL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import xraypose.io as xio
from xraypose.io import MANIFEST, OutputError, atomic_write_files, check_output_folder, remove_stale_temp_files

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("pose.json", "metrics.json", "trajectory.json", "views.png")  # the kind of result (its ``remove``)
OLD = {"pose.json": b"old pose", "metrics.json": b"old metrics", "trajectory.json": b"old trajectory"}
NEW = {"pose.json": b"new pose", "views.png": b"new views", "trajectory.json": b"new trajectory"}  # metrics.json goes
THIRD = {"pose.json": b"third pose"}
MINE = {"notes.txt": b"my notes", "sub/data.bin": b"my data"}  # the user's own files in the folder


class Killed(BaseException):
    """The simulated SIGKILL."""


def _kill(monkeypatch, at):
    """``os.replace`` killed at its ``at``-th call (an int, from 0) or at the rename onto the file named ``at``;
    nothing after it runs.  Returns a dict whose ``"dead"`` says whether the kill came."""
    state = {"n": 0, "dead": False}
    real_replace, real_unlink = os.replace, xio._unlink_quietly

    def replace(src, dst):
        if state["dead"]:
            raise Killed
        if (state["n"] == at) if isinstance(at, int) else (Path(dst).name == at):
            state["dead"] = True
            raise Killed
        state["n"] += 1
        return real_replace(src, dst)

    monkeypatch.setattr(xio.os, "replace", replace)
    monkeypatch.setattr(xio, "_unlink_quietly", lambda p: None if state["dead"] else real_unlink(p))
    return state


def _killed_write(monkeypatch, d: Path, at, files: dict, remove=NAMES) -> None:
    """``atomic_write_files(d, files, remove)`` killed at ``at`` (:func:`_kill`): its temporary files are then
    an earlier process's (stale), as after a SIGKILL."""
    _kill(monkeypatch, at)
    with pytest.raises(Killed):
        atomic_write_files(d, files, remove=remove)
    monkeypatch.undo()
    for p in d.rglob(".*.tmp"):
        xio._OWN_TEMPS.discard(p.name)


def _folder(root: Path, name: str) -> Path:
    """A folder holding the user's files and the OLD result."""
    d = root / name
    for n, b in MINE.items():
        (d / n).parent.mkdir(parents=True, exist_ok=True)
        (d / n).write_bytes(b)
    atomic_write_files(d, OLD, remove=NAMES)
    return d


def _visible(d: Path) -> dict:
    """The folder's files but the hidden ones (the manifest, a journal, temporary files)."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def _assert_whole(d: Path, result: dict) -> None:
    assert _visible(d) == {**MINE, **result}
    assert json.loads((d / MANIFEST).read_text())["files"] == sorted(result)  # lists this result alone
    assert [p.name for p in d.iterdir() if p.name.startswith(".") and p.name != MANIFEST] == []  # no debris


def _renames_of_a_write(tmp_path) -> int:
    d = _folder(tmp_path, "count")
    calls = []
    real = os.replace
    mp = pytest.MonkeyPatch()
    mp.setattr(xio.os, "replace", lambda s, t: calls.append(t) or real(s, t))
    try:
        atomic_write_files(d, NEW, remove=NAMES)
    finally:
        mp.undo()
    return len(calls)


def test_a_kill_at_any_rename_leaves_the_old_result_or_the_new_one_whole(tmp_path, monkeypatch):
    """A kill between two of atomic_write_files' renames left new files beside old ones (the new pose.json
    beside the old metrics.json, under a pending manifest listing both): the previous result was not whole,
    and neither was the new one, whatever a later command did.  Now the check every command makes first
    finishes the interrupted write: the folder is the new result, with the new bytes, none of the old
    result's other files — or, killed before its journal, the old result untouched.  A second kill while it
    is being finished changes nothing of that.  The user's files are never touched."""
    total = _renames_of_a_write(tmp_path)
    for k in range(total):
        for again in (None, 0, 1, 2):  # the finishing killed too, at its first, second, third rename
            d = _folder(tmp_path, f"k{k}-{again}")
            _killed_write(monkeypatch, d, k, NEW)
            started = {n: b for n, b in _visible(d).items() if n not in MINE} != OLD
            if again is not None:
                _kill(monkeypatch, again)
                try:
                    check_output_folder(d, replaces=NAMES)
                except Killed:
                    pass
                monkeypatch.undo()
                for p in d.rglob(".*.tmp"):
                    xio._OWN_TEMPS.discard(p.name)
            check_output_folder(d, replaces=NAMES)  # every command's check before computing
            assert _visible(d) in ({**MINE, **OLD}, {**MINE, **NEW}), (k, again)
            if started:
                _assert_whole(d, NEW)
            assert {n for n in _visible(d) if n not in MINE} <= xio.written_here(d), (k, again)  # all xraypose's
            atomic_write_files(d, THIRD, remove=NAMES)  # and the next result replaces it, as ever
            _assert_whole(d, THIRD)


def test_the_next_write_finishes_an_interrupted_one_before_its_own(tmp_path, monkeypatch):
    """finish_interrupted_write (what the check before computing and every write call first) makes the folder
    the new result; the next result's write, without any check first, finishes it and then replaces it."""
    d = _folder(tmp_path, "r")
    _killed_write(monkeypatch, d, "trajectory.json", NEW)  # the third of NEW's files: metrics.json not yet gone
    assert _visible(d) == {**MINE, **OLD, "pose.json": b"new pose", "views.png": b"new views"}  # the kill's mix
    xio.finish_interrupted_write(d)
    _assert_whole(d, NEW)
    d = _folder(tmp_path, "w")
    _killed_write(monkeypatch, d, "trajectory.json", NEW)
    written = atomic_write_files(d, {"pose.json": b"p", "metrics.json": b"m"}, remove=NAMES)
    assert sorted(p.name for p in written) == ["metrics.json", "pose.json"]
    _assert_whole(d, {"pose.json": b"p", "metrics.json": b"m"})


def test_a_killed_writes_temporary_files_named_in_its_journal_are_not_removed_as_stale(tmp_path, monkeypatch):
    """The temporary files of a killed write are stale (their writer is gone), and the next command removed
    them first: the half-renamed result could then never be finished.  Those its journal names are kept
    until the write is finished (then none is left); others are removed as before."""
    d = _folder(tmp_path, "r")
    _killed_write(monkeypatch, d, "trajectory.json", NEW)
    temps = sorted(p for p in d.glob(".*.tmp"))  # stale: their writer was killed (_killed_write)
    assert temps
    other = d / f".other.txt{xio.TEMP_MARK}{os.getpid()}-0badf00d.tmp"  # another killed write's: stale
    other.write_bytes(b"x")
    assert remove_stale_temp_files(d) == [other]
    assert sorted(p for p in d.glob(".*.tmp")) == temps
    check_output_folder(d, replaces=NAMES)
    _assert_whole(d, NEW)


def test_an_interrupted_write_never_replaces_or_deletes_a_file_the_user_put_there_since(tmp_path, monkeypatch):
    """After a kill, the user put their own metrics.json (which the killed write was to delete) or views.png
    (which it was to create) into the folder: finishing the write would have deleted or replaced it.  It is
    refused, naming the file, and nothing is changed."""
    for name, mine in (("metrics.json", b"my metrics"), ("views.png", b"my picture")):
        d = _folder(tmp_path, name)
        _killed_write(monkeypatch, d, "pose.json", NEW)  # the first of NEW's files: nothing new there yet
        (d / name).unlink(missing_ok=True)
        (d / name).write_bytes(mine)
        before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
        with pytest.raises(OutputError, match=name.replace(".", r"\.")):
            atomic_write_files(d, THIRD, remove=NAMES)
        assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before
        assert (d / name).read_bytes() == mine


def test_a_result_without_remove_is_all_or_nothing_too(tmp_path, monkeypatch):
    """``remove=()`` (files, no manifest): a kill between its renames is finished by the next write."""
    d = tmp_path / "r"
    d.mkdir()
    atomic_write_files(d, {"a.png": b"1", "b.png": b"1"})
    _killed_write(monkeypatch, d, "b.png", {"a.png": b"2", "b.png": b"2"}, remove=())
    atomic_write_files(d, {"c.png": b"3"})
    assert _visible(d) == {"a.png": b"2", "b.png": b"2", "c.png": b"3"}


# ----------------------------------------------------------------------------- xraypose register, SIGKILL
KILLED_AT = textwrap.dedent("""
    import os, signal, sys
    import xraypose.io as xio
    from xraypose.cli import main
    real = os.replace
    def replace(src, dst):
        if os.path.basename(dst) == sys.argv[1]:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst)
    xio.os.replace = replace
    sys.exit(main(sys.argv[2:]))
""")


def test_register_killed_between_its_files_renames_is_finished_by_the_next_command(tmp_path):
    """``xraypose register -o OUT`` SIGKILLed after renaming its new pose.json, before its views.png (an
    earlier result with metrics.json and trajectory.json in OUT): the next command into OUT found the new
    pose beside the old picture, metrics and trajectory.  It finishes the write: OUT holds the new result."""
    from xraypose.cli import main
    from xraypose.datasets import make_example_case

    case = make_example_case(tmp_path / "case", size=48)
    xray = str(case / "xrays" / "lao20_caud10.dcm")
    res = tmp_path / "result"
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"camera_to_world": json.loads((case / "poses.json").read_text())["lao20_caud10.dcm"]}))
    base = ["register", str(case / "ct.nii.gz"), xray, "-o", str(res), "--levels", "32", "--size", "32"]
    assert main(base + ["--true-pose", str(truth)]) == 0
    (res / "notes.txt").write_text("mine")
    old = {p.name: p.read_bytes() for p in res.iterdir() if p.is_file()}
    assert {"metrics.json", "trajectory.json", "views.png"} <= set(old)
    script = tmp_path / "killed.py"
    script.write_text(KILLED_AT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), "views.png", *base, "--no-trajectory", "--seed", "1",
                           "--threads", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    new_views = [p.read_bytes() for p in res.glob(".views.png.*.tmp")]
    assert len(new_views) == 1 and new_views[0] != old["views.png"]
    assert (res / "pose.json").read_bytes() != old["pose.json"] and (res / "metrics.json").exists()  # the kill's mix
    new_pose = (res / "pose.json").read_bytes()
    check_output_folder(res, replaces=["pose.json", "metrics.json", "trajectory.json", "views.png"])
    assert {p.name: p.read_bytes() for p in res.iterdir() if p.name != ".xraypose.lock"} == {  # (the killed run's)
        "pose.json": new_pose, "views.png": new_views[0], "notes.txt": b"mine",
        MANIFEST: (res / MANIFEST).read_bytes()}
    assert json.loads((res / MANIFEST).read_text())["files"] == ["pose.json", "views.png"]


def _pose(x: float) -> bytes:
    return json.dumps({"camera_to_world": [[1, 0, 0, x], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}).encode()


def test_a_pose_file_read_as_a_start_is_the_interrupted_results_new_one(tmp_path, monkeypatch):
    """``--pose-json OUT/pose.json`` (a start for register, track, render) read the old pose.json of a result a
    kill had left half-replaced (its views.png already the new one's).  The read finishes the write first."""
    from xraypose.cli.steps import read_start_file
    from xraypose.register.initializers import pose_from_json

    for read in (lambda p: pose_from_json(p)[0], lambda p: read_start_file(p)[1]):
        d = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        atomic_write_files(d, {"pose.json": _pose(1.0), "metrics.json": b"{}"}, remove=NAMES)
        _killed_write(monkeypatch, d, "pose.json", {"views.png": b"new views", "pose.json": _pose(2.0)})
        assert (d / "views.png").read_bytes() == b"new views"  # the kill's mix: the new picture, the old pose
        assert float(read(d / "pose.json")[0, 3]) == 2.0
        assert _visible(d) == {"views.png": b"new views", "pose.json": _pose(2.0)}


def test_a_write_finished_meanwhile_by_another_process_is_no_error(tmp_path, monkeypatch):
    """A command reading a pose file (which holds no lock on its folder) may finish a write while its writer
    still renames: the writer finds its temporary file gone, renamed already, and goes on."""
    d = _folder(tmp_path, "r")
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == "views.png":  # between the writer's check that its file is there and its rename
            monkeypatch.setattr(xio.os, "replace", real)
            assert xio.finish_interrupted_write(d)
        return real(src, dst)

    monkeypatch.setattr(xio.os, "replace", replace)
    atomic_write_files(d, NEW, remove=NAMES)
    _assert_whole(d, NEW)


def _record_renames_and_folder_fsyncs(monkeypatch) -> list:
    """``os.replace`` and ``os.fsync`` recorded in order: ``("replace", target)`` and ``("fsync_dir", inode)`` for an
    fsync of a folder (a file's fsync is not recorded)."""
    events, real_replace, real_fsync = [], os.replace, os.fsync

    def replace(src, dst, *a, **k):
        real_replace(src, dst, *a, **k)
        events.append(("replace", Path(dst).name))

    def fsync(fd):
        real_fsync(fd)
        st = os.fstat(fd)
        if os.path.stat.S_ISDIR(st.st_mode):
            events.append(("fsync_dir", st.st_ino))

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    return events


def test_a_write_puts_the_folders_entries_on_the_disk_after_its_renames(tmp_path, monkeypatch):
    """A file's fsync holds its bytes; only the folder's fsync holds its new name: without it a power loss after
    the write may find the old file (or none).  Every write fsyncs the folder after its last rename, and a several-
    file write also before its journal (the staged names on the disk before the renames it commits)."""
    events = _record_renames_and_folder_fsyncs(monkeypatch)
    folder = tmp_path / "out"
    folder.mkdir()
    ino = folder.stat().st_ino

    xio.atomic_write_bytes(folder / "one.json", b"{}")
    assert events[-2:] == [("replace", "one.json"), ("fsync_dir", ino)]

    events.clear()
    atomic_write_files(folder, NEW, remove=NAMES)
    last_replace = max(i for i, e in enumerate(events) if e[0] == "replace")
    assert ("fsync_dir", ino) in events[last_replace:]
    journal_at = events.index(("replace", xio.JOURNAL))
    assert ("fsync_dir", ino) in events[:journal_at]

    events.clear()
    with xio.atomic_output(folder / "two.h5") as tmp:
        Path(tmp).write_bytes(b"h5")
    assert events[-2:] == [("replace", "two.h5"), ("fsync_dir", ino)]
