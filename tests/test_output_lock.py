"""One run at a time in an output folder (xraypose/output_lock.py): a second run is refused naming the first,
a lock left by a dead run is taken over, the lock goes when the run ends however it ends, train's lies beside
its model; every command that writes results takes it (xraypose/cli/__init__.py's LOCKED_OUTPUTS), and so do the
Python API's writers of results, joining the lock of the command that calls them."""

import contextlib
import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest
import typer
from helpers import tiny_train

from xraypose.cli import main
from xraypose.errors import InputError

LOCK = ".xraypose.lock"


def _dead_pid() -> int:
    """The pid of a process that has ended and been reaped."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _write_lock(path: Path, **rec) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "command": "xraypose evaluate case -o out",
                                "started": "2026-12-05T10:00:00+00:00", **rec}))


@contextlib.contextmanager
def _live_lock(path: Path, **rec):
    """The lock ``path`` held by a live process (a ``sleep``) for the block; yields its pid."""
    holder = subprocess.Popen(["sleep", "30"])
    try:
        _write_lock(path, pid=holder.pid, **rec)
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture
def fake_demo(monkeypatch):
    """``xraypose demo``'s work replaced by ``fake_demo.action(out)``; ``fake_demo.seen`` what the lock held then."""
    import xraypose.demo

    class Fake:
        seen = None
        action = None

    def run_demo(out, settings):
        lock = Path(out) / LOCK
        Fake.seen = json.loads(lock.read_text()) if lock.exists() else None
        if Fake.action is not None:
            Fake.action(Path(out))

    monkeypatch.setattr(xraypose.demo, "run_demo", run_demo)
    return Fake


def test_the_lock_is_held_while_a_run_writes_and_removed_after(tmp_path, fake_demo):
    out = tmp_path / "d"
    assert main(["demo", "-o", str(out)]) == 0
    assert fake_demo.seen is not None, "no lock while the demo ran"
    assert fake_demo.seen["pid"] == os.getpid() and fake_demo.seen["host"] == socket.gethostname()
    assert fake_demo.seen["command"] == f"xraypose demo -o {out}" and fake_demo.seen["started"]
    assert not (out / LOCK).exists()


@pytest.mark.parametrize("ending, code", [(InputError("bad"), 2), (KeyboardInterrupt(), 130),
                                          (typer.Exit(130), 130), (RuntimeError("bug"), None)])
def test_the_lock_is_removed_after_an_error_or_an_interrupt(tmp_path, fake_demo, ending, code):
    out = tmp_path / "d"

    def fail(_):
        raise ending

    fake_demo.action = fail
    if code is None:  # an unexpected exception escapes main (a traceback), the lock released on the way
        with pytest.raises(RuntimeError):
            main(["demo", "-o", str(out)])
    else:
        assert main(["demo", "-o", str(out)]) == code
    assert fake_demo.seen is not None and fake_demo.seen["pid"] == os.getpid()
    assert not (out / LOCK).exists()
    assert not out.exists()  # made only to hold the lock: a failed run leaves no empty folder behind


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_first(tmp_path, fake_demo, capsys):
    out = tmp_path / "d"

    def second_run(_):
        assert main(["evaluate", "case", "-o", str(out)]) == 2

    fake_demo.action = second_run
    assert main(["demo", "-o", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"output folder {out} is in use by another xraypose run (pid {os.getpid()}, started " in err[0]
    assert f"xraypose demo -o {out}" in err[0] and f"delete {out / LOCK}" in err[0]
    assert not (out / LOCK).exists()  # the refused run did not remove the first run's lock


def test_a_lock_of_another_live_process_is_refused(tmp_path, fake_demo, capsys):
    with _live_lock(tmp_path / "d" / LOCK) as pid:
        assert main(["demo", "-o", str(tmp_path / "d")]) == 2
    assert fake_demo.seen is None  # nothing ran
    err = capsys.readouterr().err
    assert f"pid {pid}, started 2026-12-05 10:00:00+00:00: xraypose evaluate case -o out" in err
    assert (tmp_path / "d" / LOCK).exists()  # not the refused run's to remove


def test_a_lock_left_by_a_dead_run_is_taken_over(tmp_path, fake_demo, capsys):
    out = tmp_path / "d"
    dead = _dead_pid()
    _write_lock(out / LOCK, pid=dead)
    assert main(["demo", "-o", str(out)]) == 0
    assert fake_demo.seen is not None and fake_demo.seen["pid"] == os.getpid()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"xraypose: note: {out / LOCK} was left by an xraypose run that "
                                               f"is no longer running (pid {dead}, ")
    assert err[0].endswith("taken over")
    assert not (out / LOCK).exists()


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/stat").exists(), reason="needs Linux /proc")
def test_a_lock_whose_pid_now_belongs_to_another_process_is_stale(tmp_path, fake_demo):
    from xraypose.output_lock import _process_start

    _write_lock(tmp_path / "d" / LOCK, pid=os.getpid(), process_start=_process_start(os.getpid()) - 1)
    assert main(["demo", "-o", str(tmp_path / "d")]) == 0
    assert fake_demo.seen["process_start"] == _process_start(os.getpid())


def test_a_lock_from_another_host_is_refused_naming_the_host_and_the_file(tmp_path, fake_demo, capsys):
    out = tmp_path / "d"
    _write_lock(out / LOCK, pid=_dead_pid(), host="node-7.invalid")
    assert main(["demo", "-o", str(out)]) == 2
    assert fake_demo.seen is None
    err = capsys.readouterr().err
    assert "locked by an xraypose run on host node-7.invalid" in err and f"delete {out / LOCK}" in err


def test_train_locks_beside_its_model_file(tmp_path, monkeypatch, capsys):
    import xraypose.train
    from xraypose.train.outputs import TrainResult

    model = tmp_path / "model.pt"
    seen = {}

    def train(ct, output, cfg, **kw):
        lock = tmp_path / "model.lock"  # named by the model's stem, as model.last.pt is
        seen["lock"] = json.loads(lock.read_text()) if lock.exists() else None
        seen["folder lock"] = (tmp_path / LOCK).exists()
        assert main(["train", "sample", "-o", str(model)]) == 2  # a second training of that model
        # -o model (no suffix) writes the same model.last.pt and model.log.jsonl: the same lock
        assert main(["train", "sample", "-o", str(tmp_path / "model")]) == 2
        return TrainResult(model, model.with_name("model.last.pt"), model.with_name("model.log.jsonl"), 1, 1, 1,
                           1.0, 1.0, None)

    monkeypatch.setattr(xraypose.train, "train", train)
    assert main(["train", "sample", "-o", str(model)]) == 0
    assert seen["lock"] is not None and seen["lock"]["pid"] == os.getpid() and not seen["folder lock"]
    assert f"output {model} is in use by another xraypose run (pid {os.getpid()}" in capsys.readouterr().err
    assert not (tmp_path / "model.lock").exists()



def test_the_python_apis_train_locks_its_model_file(tmp_path, monkeypatch):
    """``xraypose.train.train`` (a script's) took no lock: it wrote checkpoints beside the model a running
    ``xraypose train -o`` was training.  Now a live run's ``model.lock`` refuses it before anything is read or
    written; inside the command's own lock it joins (the lock stays the command's)."""
    import xraypose.train.run as run

    from xraypose.output_lock import OutputInUse, output_lock
    from xraypose.train import train

    model = tmp_path / "model.pt"
    with _live_lock(tmp_path / "model.lock", command="xraypose train sample -o model.pt") as pid:
        with pytest.raises(OutputInUse, match=f"output {model} is in use by another xraypose run "
                                              rf"\(pid {pid}"):
            train("sample", model, tiny_train(), quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.lock"]
    (tmp_path / "model.lock").unlink()
    seen = []
    monkeypatch.setattr(run, "_train", lambda *a, **kw: seen.append((tmp_path / "model.lock").read_bytes()))
    with output_lock(model, file=True) as lock:
        held = lock.read_bytes()
        train("sample", model, tiny_train(), quiet=True)
        assert seen == [held] and lock.read_bytes() == held
    train("sample", model, tiny_train(), quiet=True)  # alone: its own lock, removed after
    assert len(seen) == 2 and not (tmp_path / "model.lock").exists()  # held while it ran (read above)


def test_an_output_inside_a_folder_another_run_holds_is_refused(tmp_path):
    """A lock covered its own folder only: a script's ``write_registration`` into ``out/cases/x`` (or a
    ``train -o out/model.pt``) went ahead while ``evaluate -o out`` ran, whose ``--overwrite`` or final write
    would mix with it.  Now refused, naming the enclosing folder, before anything is created; a stale enclosing
    lock is left alone and not in the way; this process's own command lock on ``out`` lets it write inside."""
    from xraypose.output_lock import OutputInUse, output_lock
    from xraypose.register.api import write_registration
    from xraypose.train import train

    out = tmp_path / "out"
    with _live_lock(out / LOCK) as pid:
        with pytest.raises(OutputInUse, match=f"output folder {out / 'cases' / 'x'} lies inside {out}, which another "
                                              rf"xraypose run is using \(pid {pid}"):
            write_registration(out / "cases" / "x", _registration())
        with pytest.raises(OutputInUse, match=f"lies inside {out}, which another xraypose run is using"):
            train("sample", out / "model.pt", tiny_train(), quiet=True)
        assert main(["register", "sample", "x.npy", "-o", str(out / "sub")]) == 2  # the command too
    assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing created inside
    write_registration(out / "cases" / "x", _registration())  # that run is gone: its lock is not in the way
    assert (out / "cases" / "x" / "pose.json").is_file() and (out / LOCK).exists()  # (and not taken over)
    (out / LOCK).unlink()
    with output_lock(out):  # a command of this process: its own subfolders are its to write
        write_registration(out / "cases" / "y", _registration())
    assert (out / "cases" / "y" / "pose.json").is_file()

# Every command that writes results, with inputs that do not exist: the lock is checked before anything else.
WRITERS = {
    "demo": ["demo", "-o", "{out}"],
    "register": ["register", "sample", "x.npy", "-o", "{out}"],
    "register --rig": ["register", "sample", "a.npy", "b.npy", "--rig", "rig.json", "-o", "{out}"],
    "evaluate": ["evaluate", "case", "-o", "{out}"],
    "evaluate --resume": ["evaluate", "case", "-o", "{out}", "--resume"],
    "track": ["track", "sample", "frames", "-o", "{out}"],
    "train": ["train", "sample", "-o", "{out}/model.pt"],
    "train --resume": ["train", "sample", "-o", "{out}/model.pt", "--resume"],
    "datasets example": ["datasets", "example", "{out}"],
    "datasets check": ["datasets", "check", "case", "--out", "{out}"],
    "datasets fixtures": ["datasets", "fixtures", "{out}"],
}


@pytest.fixture
def no_work(monkeypatch):
    """The commands' long work (training, the demo, writing example files) stops the test if reached."""
    import xraypose.datasets.case_folder
    import xraypose.datasets.fixtures
    import xraypose.demo
    import xraypose.train

    def ran(*args, **kwargs):
        raise AssertionError("the command ran")

    for module, name in [(xraypose.demo, "run_demo"), (xraypose.train, "train"),
                         (xraypose.datasets.case_folder, "make_example_case"),
                         (xraypose.datasets.fixtures, "write_deepfluoro_fixture")]:
        monkeypatch.setattr(module, name, ran)


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_command_that_writes_is_refused_in_a_locked_output(tmp_path, name, capsys, no_work):
    from xraypose.output_lock import lock_path, output_lock

    out = tmp_path / "out"
    out.mkdir()
    train = name.startswith("train")
    with output_lock(out / "model.pt" if train else out, file=train):
        assert main([a.format(out=out) for a in WRITERS[name]]) == 2
    assert "is in use by another xraypose run" in capsys.readouterr().err
    assert not lock_path(out / "model.pt" if train else out, file=train).exists()


def test_reading_and_rendering_do_not_lock(tmp_path, capsys):
    from xraypose.output_lock import output_lock

    with output_lock(tmp_path):
        assert main(["info", "sample"]) == 0
        assert main(["render", "sample", "--pose", "0,0", "--sdd", "1020", "--height", "16", "--delx", "20",
                     "-o", str(tmp_path / "drr.npy")]) == 0
    assert "in use" not in capsys.readouterr().err


def test_a_stale_lock_does_not_make_a_folder_look_used(tmp_path, capsys):
    """``datasets example`` wants a new or empty folder: a lock (its own, or a dead run's) does not count."""
    _write_lock(tmp_path / "ex" / LOCK, pid=_dead_pid())
    assert main(["datasets", "example", str(tmp_path / "ex")]) == 0
    assert (tmp_path / "ex" / "poses.json").is_file() and not (tmp_path / "ex" / LOCK).exists()


def test_of_runs_starting_at_once_one_holds_the_lock(tmp_path):
    from xraypose.output_lock import OutputInUse, output_lock

    n = 8
    start, held = threading.Barrier(n), threading.Barrier(n)
    won, refused = [], []

    def run():
        start.wait()
        try:
            with output_lock(tmp_path / "out"):
                won.append(1)
                held.wait()
        except OutputInUse:
            refused.append(1)
            held.wait()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(won) == 1 and len(refused) == n - 1
    assert not (tmp_path / "out" / LOCK).exists()


# ----------------------------------------------------------------------------- the Python API
def _registration():
    """A small :class:`~xraypose.register.api.Registration` (no render needed to write it)."""
    import torch

    from xraypose.camera import Camera, carm_pose
    from xraypose.register.api import Registration

    T = carm_pose(0.0, 0.0, sod=612.0, isocenter=torch.zeros(3)).to(torch.float64)
    return Registration(camera_to_world=T, camera=Camera(sdd=1020.0, height=16, width=16, delx=17.5),
                        initial_pose=T, similarity=0.5, status="converged", iterations=3, bone_multiplier=1.0,
                        init_s=0.0, opt_s=0.1, batch_opt_s=0.1, batch_size=1, cpu_s=0.1)


def test_an_api_write_into_a_folder_another_run_uses_is_refused(tmp_path):
    """The Python API took no lock: ``write_registration`` (a script's) wrote its pose.json into a folder a
    running ``xraypose register`` or ``evaluate`` was writing, and the two runs' files mixed.  Now it is refused,
    naming that run, and writes nothing; the other run's lock stays."""
    from xraypose.output_lock import OutputInUse
    from xraypose.register.api import write_registration

    out = tmp_path / "res"
    with _live_lock(out / LOCK) as pid:
        with pytest.raises(OutputInUse, match=f"output folder {out} is in use by another xraypose run "
                                              rf"\(pid {pid}, started 2026-12-05 10:00:00\+00:00"):
            write_registration(out, _registration())
    assert sorted(p.name for p in out.iterdir()) == [LOCK] and json.loads((out / LOCK).read_text())["pid"] == pid
    write_registration(out, _registration())  # the run is gone: its lock is taken over, and released after
    assert (out / "pose.json").is_file() and not (out / LOCK).exists()


def test_an_api_write_inside_a_command_joins_its_lock(tmp_path):
    """A command holds its output's lock and calls the API writers into it (``register -o out`` writes through
    ``write_registration``): they join that lock — not refused as another run's — and leave it held: the
    command's lock is removed when the command ends, not by the inner write."""
    from xraypose.output_lock import output_lock
    from xraypose.register.api import write_registration

    out = tmp_path / "res"
    with output_lock(out) as lock:
        held = lock.read_bytes()
        write_registration(out, _registration())
        write_registration(out, _registration())
        assert lock.read_bytes() == held  # still the command's lock
    assert (out / "pose.json").is_file() and not (out / LOCK).exists()


def test_a_second_lock_of_the_same_process_without_join_is_still_refused(tmp_path):
    """Joining is for the API's writers only: a second command run in the same process (``main`` inside a
    command: the tests' second run) is refused as before, and a thread's writer joins the process's lock."""
    from xraypose.output_lock import OutputInUse, output_lock

    with output_lock(tmp_path / "o"):
        with pytest.raises(OutputInUse, match=f"pid {os.getpid()}"):
            with output_lock(tmp_path / "o"):
                pass
        with output_lock(tmp_path / "o", join=True) as inner:
            assert inner == tmp_path / "o" / LOCK
        assert (tmp_path / "o" / LOCK).exists()
    assert not (tmp_path / "o").exists()


def test_every_api_writer_is_refused_in_a_folder_another_run_uses(tmp_path):
    """The API's other writers of results lock their folder: a live run's lock refuses them (evaluate and the
    demo before reading their inputs, never looked at here; the rig's writer before writing its files)."""
    from types import SimpleNamespace

    from xraypose.demo import run_demo
    from xraypose.evaluate import evaluate
    from xraypose.output_lock import OutputInUse
    from xraypose.register.multiview import write_rig_registration

    out = tmp_path / "out"
    rig = SimpleNamespace(pose_json=lambda: {"camera_to_world": [[1.0, 0, 0, 0]]}, views=[], metrics=None,
                          trajectory=[], level_stats=[])
    with _live_lock(out / LOCK) as pid:
        for write in (lambda: write_rig_registration(out, rig), lambda: evaluate(None, out, None),
                      lambda: run_demo(out, quiet=True)):
            with pytest.raises(OutputInUse, match=f"in use by another xraypose run \\(pid {pid}"):
                write()
    assert sorted(p.name for p in out.iterdir()) == [LOCK]
