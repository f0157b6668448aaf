"""One run at a time in an output folder: an advisory lock file, ``.xraypose.lock``.

Each file xraypose writes is atomic (:mod:`xraypose.io`), but a run's *set* of files is not: two runs
writing into one folder at once (``evaluate -o out/`` started twice, ``register`` and ``track`` into one
``-o``, ``train -o model.pt`` twice) left a ``run.json`` of one beside the ``metrics.csv`` and case folders
of the other, a model beside another training's ``model.last.pt``, and ``--overwrite`` of one deleted the
files of the other while it ran.  The commands that write results therefore hold :func:`output_lock` on
their output while they run (:mod:`xraypose.cli` wraps them), and so do the Python API's writers of results
(:func:`~xraypose.register.api.write_registration`, :func:`~xraypose.register.multiview.write_rig_registration`,
:func:`~xraypose.evaluate.evaluate`, :func:`~xraypose.datasets.case_folder.check_case` with ``out``,
:func:`~xraypose.demo.run_demo`, and :func:`~xraypose.train.train` on its model file while it trains): a script's
write raced a command's into the same folder.  They *join* a lock
their own process already holds on that output (``join=True``: the command that called them): their block runs
under it, and it is removed when the last block of the process holding it ends — never by the inner one, early.
A second run (a command, or a writer that holds no lock of its own there) is refused as below, in the same
process too:

* a folder's lock is ``FOLDER/.xraypose.lock`` (hidden: nothing that lists a folder reads it — case
  folders, frame folders, an evaluation's inputs skip hidden files); a model file's (``train -o model.pt``)
  lies beside it, named by its stem as its companions are: ``model.lock``.  It is created with ``O_CREAT | O_EXCL`` (two runs cannot both
  create it) and holds, as JSON, the run's pid, host, command line, start time and the process's start
  in the kernel's clock (Linux ``/proc``: a pid reused by another process is told apart).  It is removed
  when the run ends: normally, on an error, on Ctrl-C (exit 130).
* Found held by a run still going on this host: refused in one line (:class:`OutputInUse`, exit 2) naming
  the folder, that run's pid, command and start, and the file to delete if that run is in fact gone.
* Left by a run that is no longer running on this host (killed, crashed, the machine rebooted): taken over,
  with a one-line note (that run's results there may be unfinished).
* Left by a run on another host (a shared file system): refused, naming the host and the file — this host
  cannot tell whether that run still goes, and trainings and evaluations may rightly run for days, so no
  age makes it stale; whoever knows it ended deletes the file.
* An output inside a folder another run holds (a script's ``write_registration`` into ``out/cases/x``, a
  ``train -o out/model.pt``, while ``evaluate -o out`` or ``demo -o out`` runs; that run's ``--overwrite`` or
  final write would mix with it): refused the same way, naming the enclosing folder.  Checked when the lock is
  taken, upward only (a run started on ``out`` later does not look for locks inside it); the enclosing folder
  held by this process (a command writing into its own output's subfolders) is not another run's.
* A lock that cannot be created at all (a read-only folder, a path under a file, a missing parent of a
  model file) is not taken: the command's own output checks refuse that output before computing, naming
  the problem as before.  A missing output folder is created to hold the lock, and removed again at the
  end when it is still empty (a run refused on bad input leaves nothing behind).

Advisory: it keeps xraypose runs apart, not other programs.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shlex
import socket
import sys
import threading
import time
from pathlib import Path

from xraypose.io import OutputError, _pid_alive, json_bytes
from xraypose.io import process_start as _process_start  # (io's: temporary files' names carry it too)

__all__ = ["LOCK_NAME", "OutputInUse", "lock_path", "output_lock"]

#: The lock file's name in an output folder.
LOCK_NAME = ".xraypose.lock"
#: A lock file whose content cannot be read yet may be one being written: read again for this long.
_UNREADABLE_WAIT_S = 2.0


class OutputInUse(OutputError):
    """The output is locked by another run (:func:`output_lock`); one line naming it and the way on."""


def lock_path(output, file: bool = False) -> Path:
    """The lock of the output folder ``output`` (``output/.xraypose.lock``), or with ``file`` of the model file
    ``output``: ``STEM.lock`` beside it, named by its stem as its companions are (``model.pt`` → ``model.lock``,
    beside ``model.last.pt`` and ``model.log.jsonl``: ``-o model`` and ``-o model.pt`` share those, so they share
    the lock too)."""
    p = Path(output).expanduser()
    if not file:
        return p / LOCK_NAME
    from xraypose.train.outputs import output_paths

    stem = output_paths(p)["last"].name[: -len(".last.pt")]
    return p.with_name(stem + ".lock")


def _record(command: list[str] | None) -> dict:
    argv = command if command is not None else [Path(sys.argv[0]).name, *sys.argv[1:]]
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join(str(a) for a in argv),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "process_start": _process_start(os.getpid())}


def _read(path: Path) -> tuple[bytes, dict | None]:
    """The lock's bytes and record (None: not a lock's JSON). Raises FileNotFoundError when it is gone."""
    raw = path.read_bytes()
    try:
        rec = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw, None
    return raw, rec if isinstance(rec, dict) and isinstance(rec.get("pid"), int) else None


def _holder_running(rec: dict) -> bool | None:
    """Whether the run that wrote ``rec`` still runs: None when it ran on another host (cannot tell)."""
    if rec.get("host") != socket.gethostname():
        return None
    pid = rec["pid"]
    if pid <= 0 or not _pid_alive(pid):
        return False
    then, now = rec.get("process_start"), _process_start(pid)
    return not (isinstance(then, int) and now is not None and then != now)  # else: the pid is another process's now


def _who(rec: dict) -> str:
    return f"pid {rec.get('pid')}, started {str(rec.get('started', '?')).replace('T', ' ')}: {rec.get('command', '?')}"


def _take_over(path: Path, raw: bytes) -> None:
    """Remove the stale lock ``path`` if it still holds ``raw``: moved aside first (atomic), so that of two runs
    taking it over at once only one removes it, and a fresh lock moved aside by mistake is put back."""
    aside = path.with_name(f"{path.name}.{os.getpid()}-{time.monotonic_ns()}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another run took it over first
    try:
        if aside.read_bytes() != raw:  # a new lock, created since it was read: back in place (never over another)
            with contextlib.suppress(OSError):
                os.link(aside, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(aside)


def _acquire(path: Path, what: str, record: dict, say) -> bytes | None:
    """Create the lock ``path`` holding ``record``; its bytes, or None when it cannot be created (module docstring).
    Raises :class:`OutputInUse` when another run holds it."""
    data = json_bytes(record)
    unreadable_since = None
    for _ in range(100):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                raw, rec = _read(path)
            except FileNotFoundError:
                continue  # released meanwhile: try again
            except OSError as e:  # a folder of that name, unreadable, ...
                raise OutputInUse(f"{what} cannot be locked: {path} exists and cannot be read "
                                  f"({e.strerror or e}); move it away") from None
            if rec is None:  # empty or not JSON: being written (a moment), or left by a run killed as it wrote it
                unreadable_since = unreadable_since or time.monotonic()
                if time.monotonic() - unreadable_since < _UNREADABLE_WAIT_S:
                    time.sleep(0.05)
                    continue
                say(f"{path} holds no readable lock (a run killed as it wrote it?); taken over")
                _take_over(path, raw)
                continue
            running = _holder_running(rec)
            if running is None:
                raise OutputInUse(
                    f"{what} is locked by an xraypose run on host {rec.get('host')} ({_who(rec)}); "
                    f"this host cannot tell whether it still runs: if it has ended, delete {path}")
            if running:
                raise OutputInUse(
                    f"{what} is in use by another xraypose run ({_who(rec)}); wait for it to end or "
                    f"choose another output — if that run is no longer going, delete {path}")
            say(f"{path} was left by an xraypose run that is no longer running ({_who(rec)}; its results there may "
                "be unfinished); taken over")
            _take_over(path, raw)
            continue
        except OSError:
            return None  # cannot be created: the command's own output checks name why
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except OSError:  # a full disk: no lock (the run cannot write its results either)
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        return data
    raise OutputInUse(f"{what} cannot be locked: {path} keeps changing (many runs starting at once?)")


def _check_enclosing(path: Path, file: bool, what: str) -> None:
    """Raise :class:`OutputInUse` when a folder enclosing the output of the lock ``path`` (the model file's own
    folder with ``file``, else the output folder's parents) is locked by another run that still goes, or by
    one on another host (module docstring); stale and unreadable locks there are left alone (not this run's)."""
    folder = Path(os.path.realpath(path.parent if file else path.parent.parent))
    for a in (folder, *folder.parents):
        lk = a / LOCK_NAME
        try:
            _, rec = _read(lk)
        except OSError:
            continue
        if rec is None:
            continue
        if (os.getpid(), str(lk)) in _HELD:
            return  # this process's own run holds it: writing into its own output
        running = _holder_running(rec)
        if running is False:
            continue
        where = f"on host {rec.get('host')} " if running is None else ""
        raise OutputInUse(f"{what} lies inside {a}, which another xraypose run {where}is using ({_who(rec)}); "
                          f"choose an output outside it — if that run is no longer going, delete {lk}")


def _release(path: Path, data: bytes) -> None:
    """Remove the lock ``path`` if it is still this run's (not one another run made after it was deleted)."""
    with contextlib.suppress(OSError):
        if path.read_bytes() == data:
            os.unlink(path)


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the folders this call created, outermost first (none when
    it exists, or cannot be created: the lock is then not taken)."""
    missing = []
    p = folder
    while not os.path.lexists(p) and p.parent != p:
        missing.append(p)
        p = p.parent
    made = []
    for d in reversed(missing):
        try:
            d.mkdir()
            made.append(d)
        except FileExistsError:
            continue  # another run made it: not ours to remove
        except OSError:
            break
    return made


#: The locks this process holds: {(pid, the lock file's real path): [blocks using it, its bytes, its path]}
#: (:func:`output_lock`; a fork's child holds none of its parent's).
_HELD: dict[tuple[int, str], list] = {}
#: Taking a lock and joining one are one step (two threads of a process: one takes it, the other joins or is refused).
_HELD_GUARD = threading.Lock()


def _leave(key: tuple[int, str], entry: list) -> None:
    """One block using the held lock ``entry`` (:data:`_HELD`'s ``key``) ends; the last one removes the lock file."""
    with _HELD_GUARD:
        entry[0] -= 1
        if entry[0]:
            return
        if _HELD.get(key) is entry:
            del _HELD[key]
    _release(entry[2], entry[1])


def _note(text: str) -> None:
    print(f"xraypose: note: {text}", file=sys.stderr)


@contextlib.contextmanager
def output_lock(output, *, file: bool = False, command: list[str] | None = None, say=_note, join: bool = False):
    """Hold the lock of the output folder ``output`` (``file``: of the output file ``output``) for the block
    (module docstring).

    Args:
        output: the output folder (created when missing, removed again at the end if still empty), or the file.
        file: ``output`` is a model file: the lock is ``STEM.lock`` beside it (:func:`lock_path`).
        command: the command line to record (default ``sys.argv``).
        say: prints the one-line note of a stale lock taken over.
        join: where this process holds the lock already (a command that calls an API writer), run the block
            under it (it stays held until that holder's block ends); without ``join`` that is refused as another
            run's.
    Yields:
        the lock file's path, or None when it could not be created (the output cannot be written: the
        command's own checks refuse it).
    Raises:
        OutputInUse: another run holds it (still running on this host, or on another host).
    """
    if not str(output).strip():  # the commands' own checks name an empty output path
        yield None
        return
    path = lock_path(output, file)
    key = (os.getpid(), os.path.realpath(path))
    made = []
    try:
        with _HELD_GUARD:
            entry = _HELD.get(key) if join else None
            if entry is not None:
                entry[0] += 1
            else:
                what = f"output {Path(output).expanduser()}" if file else f"output folder {path.parent}"
                _check_enclosing(path, file, what)
                made = [] if file else _make_folder(path.parent)
                data = _acquire(path, what, _record(command), say)
                if data is not None:
                    entry = _HELD[key] = [1, data, path]
        try:
            yield path if entry is not None else None
        finally:
            if entry is not None:
                _leave(key, entry)
    finally:
        for d in reversed(made):  # a refused or failed run leaves no empty folder behind
            try:
                d.rmdir()
            except OSError:
                break
