"""Writing results atomically, checking outputs before computing, and JSON that holds no NaN/inf.

* :func:`atomic_write_bytes` writes through a temporary file in the target's
  folder and an atomic rename: a kill or a full disk mid-write never leaves a
  corrupt or half-written file, and the previous version stays intact.
  Temporary files are named ``.NAME.xraypose-PID-START-TOKEN.tmp`` (NAME cut to keep it within 255
  bytes: a target's name may have up to 255; START is the writer's process start in the kernel's clock,
  :func:`process_start`, left out where unknown: ``.NAME.xraypose-PID-TOKEN.tmp``, also an earlier
  version's name); one left by a
  killed process (its PID no longer running, or running with another START: reused by another process; or
  this process's PID on a file this process did not make: an earlier process of the same PID, as in a
  container) is *stale* and is removed by
  :func:`remove_stale_temp_files` (the commands call it on their output
  folders, and each write on its own target's; each writability probe, the empty
  ``.write-test.xraypose-PID-START-TOKEN.tmp`` of :func:`check_output_folder` and :func:`check_output_file`, on the
  stale probes of the folder it probes — a new output's parent, which nothing else sweeps).
* :func:`atomic_output` gives writers that need a file name (h5py) the same: a
  temporary path, renamed at the end or removed on failure.
* :func:`atomic_write_files` writes several files of one result together:
  all are staged first, so a write error changes none of the old ones; then
  they replace the old files and the old run's files that this run does not
  write are removed (a result folder holds only the current run's files).
  The renames are one per file, so a roll-forward *journal*, :data:`JOURNAL`, makes them all-or-nothing:
  once every file is staged (fsynced), the journal — each temporary file's rename onto its target, each
  deletion — is written atomically; only then are they done, and the journal deleted.  A kill (SIGKILL, power
  loss) between two renames leaves the journal and the temporary files not yet renamed;
  :func:`finish_interrupted_write`, which the next write into the folder, :func:`check_output_folder` (every
  command, before computing) and :func:`finish_before_reading` (a pose file read as a start) call first, does
  what is left: any later xraypose command finds the new result whole (until 2026-12-06 it found new files
  beside old ones).  A kill before the journal leaves the old files untouched.  :func:`remove_stale_temp_files`
  keeps the temporary files a journal names.  Why a journal and not a new folder swapped in: the output folder
  may hold the user's own files, which must never be moved; and rolling *forward* keeps nothing of the old
  result, so it costs no space or copy.  A file the user put, after the kill, where the journal would replace
  or delete one (it records each such file's inode, size and mtime) is refused, not lost (:class:`OutputError`
  naming it, nothing changed).  Every write fsyncs the folder after its rename(s) (and a journal's write, its
  staged files' folders before the journal): a file's fsync holds its bytes, the folder's its name, so a power
  loss keeps what a write finished (before 2026-12-06 no folder was fsynced).
  (``xraypose evaluate`` keeps its own order: a case's ``result.json``, which ``--resume`` reads,
  is written after its other files.)
* A result replaces only files xraypose wrote: :func:`atomic_write_files` with ``remove`` (a result
  folder's files) records the names it wrote in the folder's :data:`MANIFEST`, and refuses to
  replace or delete a file of those names that the manifest does not list — a user's own
  ``metrics.json`` or ``pose.json`` in the folder, or an earlier version's result (before the manifest:
  remove it, or choose another folder).  :func:`check_output_folder` (``replaces=``) says so before
  computing.  Nor does it replace part of another kind of result: a registration's trajectory.json over a
  track's, whose trajectory.csv and overlay.gif the manifest lists beside it (refused the same way; the
  manifest's ``"kind"`` is the names that kind of result writes, its ``remove``).
* Between its first rename and the manifest's (until the journal is finished), a result's write leaves
  files under a manifest that does not list them: a new ``metrics.json`` the earlier result did not have, or
  the earlier result's ``trajectory.json`` the new one lacks (deleted just before the new manifest is renamed
  in) — which the next result would refuse as the user's (were the journal left unfinished: a user's file in
  the way).  So once every file is staged, before the first rename, the
  manifest is replaced (atomically, as every file) by a *pending* one: ``"files"`` the names of both
  results (those it listed and this result's), ``"pending"`` this result's names.  A kill anywhere after
  it leaves every file xraypose wrote listed; the new manifest, renamed in last, lists this result's alone.
  A name in neither result is still the user's: refused.  A kill while the pending manifest is written
  leaves the earlier one whole (until 2026-12-05 it was written in place, and such a kill left it
  unreadable: the next result then refused the folder's own files).
* :func:`check_output_folder` / :func:`check_output_file` refuse an output
  that cannot be written **before** any computation (a read-only folder, a
  path under a file, ...); :func:`make_output_folder` checks and creates one.
* A write that fails (read-only folder, full disk) raises :class:`OutputError`
  (one of xraypose's own errors, :class:`~xraypose.errors.XrayposeError`, and an
  :class:`OSError`; not an ``InputError``: one line naming the file).
* JSON cannot hold NaN or ±inf: :func:`jsonable` writes such a value as
  ``null`` and lists it in the enclosing object's ``"non_finite"`` entry
  (``{"mpe": null, "non_finite": {"mpe": "inf"}}``); :func:`restore_non_finite`
  reads it back.  In a list, a non-finite number is written as ``null``.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import math
import os
import re
import secrets
import time
from pathlib import Path

import numpy as np

from xraypose.errors import InputError, XrayposeError

#: Marker in the names of this project's temporary files.
TEMP_MARK = ".xraypose-"

#: The file in a result folder that lists the files xraypose wrote there (:func:`atomic_write_files`).
MANIFEST = ".xraypose-result.json"
#: A result's write in progress in a folder (:func:`atomic_write_files`), finished by :func:`finish_interrupted_write`.
JOURNAL = ".xraypose-journal.json"
# (START: the writer's process start, since 2026-12-06; names without it are read as before, by the PID alone)
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.xraypose-(?P<pid>\d+)(?:-(?P<start>\d+))?-[0-9a-f]+\.tmp$")
# Temporary files of earlier versions (tempfile.mkstemp(prefix=".NAME.", suffix=".tmp")): removed when
# older than an hour (no writer of an earlier version is still at work on them by then).
_LEGACY_RE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")
_LEGACY_AGE_S = 3600.0


class OutputError(XrayposeError, OSError):
    """An output that cannot be written (read-only folder, full disk, a path under a file...).

    Not an :class:`InputError`: a full disk is no fault of the input.  One of xraypose's own errors
    (:class:`~xraypose.errors.XrayposeError`: one line, exit code 2 on the command line) and an
    :class:`OSError`."""


#: The longest file name (bytes) of the usual file systems (ext4, XFS, btrfs, APFS, NTFS's 255 characters).
_NAME_MAX = 255
# What a temporary file's name adds to its target's: ".", TEMP_MARK, a PID of up to 7 digits (Linux's
# pid_max is at most 2**22), "-", a process start of up to 20 digits (an unsigned 64-bit number) and "-",
# 8 hex digits, ".tmp".
_TEMP_EXTRA = 1 + len(TEMP_MARK) + 7 + 1 + 20 + 1 + 8 + len(".tmp")


def _temp_stem(name: str) -> str:
    """``name``, cut at a whole character where needed so that its temporary file's name fits in
    :data:`_NAME_MAX` bytes (a target of 230–255 bytes could not be written: "File name too long")."""
    while len(os.fsencode(name)) > _NAME_MAX - _TEMP_EXTRA:
        name = name[:-1]
    return name


#: The names of the temporary files this process made (:func:`_temp_path`, :func:`_probe_folder`): a temporary
#: file of this process's PID that is not among them was left by an earlier process of the same PID, killed
#: mid-write — in a container xraypose runs as the same PID (often 1) every time, and such files were kept as a
#: live writer's, one more after each kill.
_OWN_TEMPS: set[str] = set()


def process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux ``/proc/PID/stat`` field 22), or None (no
    such process, or no ``/proc``): with the PID, it tells a process from a later one that reuses its PID
    (the output lock's holder, a temporary file's writer)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text[text.rindex(")") + 2:].split()[19])  # after "comm)": field 3 onwards
    except (OSError, ValueError, IndexError):
        return None


#: This process's (pid, :func:`process_start`), read once per process (a fork's child reads its own).
_OWN_START: tuple[int, int | None] | None = None


def _own_start() -> int | None:
    global _OWN_START
    if _OWN_START is None or _OWN_START[0] != os.getpid():
        _OWN_START = (os.getpid(), process_start(os.getpid()))
    return _OWN_START[1]


def _temp_path(path: Path) -> Path:
    start = _own_start()
    writer = f"{os.getpid()}" if start is None else f"{os.getpid()}-{start}"
    p = path.with_name(f".{_temp_stem(path.name)}{TEMP_MARK}{writer}-{secrets.token_hex(4)}.tmp")
    _OWN_TEMPS.add(p.name)
    return p


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or cannot tell: keep its file
    return True


def is_stale_temp_file(path) -> bool:
    """True for a temporary file of this project whose writer is gone (killed mid-write): its PID runs no more, or
    runs another process (the name's process start is not that PID's now: the PID was reused)."""
    p = Path(path)
    m = _TEMP_RE.match(p.name)
    if m:
        pid = int(m["pid"])
        if m["start"] is not None:
            now = _own_start() if pid == os.getpid() else process_start(pid)
            if now is not None and int(m["start"]) != now:  # the writer is gone; its PID is another process's now
                return True
        if pid == os.getpid():  # ours, or an earlier process's of the same PID (_OWN_TEMPS)
            return p.name not in _OWN_TEMPS
        return not _pid_alive(pid)
    if _LEGACY_RE.match(p.name):
        try:
            return time.time() - p.stat().st_mtime > _LEGACY_AGE_S
        except OSError:
            return False
    return False


def remove_stale_temp_files(folder, name: str | None = None, recursive: bool = False) -> list[Path]:
    """Remove the stale temporary files (see :func:`is_stale_temp_file`) in ``folder``.

    Args:
        folder: where to look (a missing folder holds none).
        name: only those of the target file ``name``.
        recursive: also in sub-folders.
    Returns:
        the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f".{glob.escape(_temp_stem(name))}.*.tmp" if name else ".*.tmp"
    removed, seen, kept = [], set(), set()
    for p in (folder.rglob(pattern) if recursive else folder.glob(pattern)):
        for d in {folder, p.parent} - seen:  # a killed write's files, to be renamed when it is finished: kept
            seen.add(d)
            kept |= {d / tmp for tmp, _, _ in (_read_journal(d) or {}).get("renames", [])}
        if p in kept:
            continue
        if p.is_file() and is_stale_temp_file(p):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def _write_temp(path: Path, data: bytes) -> Path:
    """``data`` in a new temporary file beside ``path`` (fsynced); removed again on any failure."""
    tmp = _temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        _unlink_quietly(tmp)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    return tmp


def _unlink_quietly(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries to the disk (the renames and new names in it), so that a power loss after a write
    keeps it: a file's own fsync holds its bytes, not its name.  Best effort: where a folder cannot be opened
    (Windows) or fsynced, nothing."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_parent(path: Path) -> None:
    parent = path.parent
    if not parent.exists():
        raise OutputError(f"output folder does not exist: {parent}")
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: {parent} is a file, not a folder")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename.

    Raises:
        OutputError: the folder is missing or not writable, or the write failed (e.g. a full
            disk); ``path`` is then unchanged and no temporary file is left.
    """
    path = Path(path)
    _check_parent(path)
    remove_stale_temp_files(path.parent, path.name)
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException as e:
        _unlink_quietly(tmp)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    _fsync_dir(path.parent)  # the new name on the disk too (a power loss)


def atomic_write_files(folder, files: dict, remove=(), keep=()) -> list[Path]:
    """Write the files of one result into ``folder`` together, replacing an earlier result all-or-nothing.

    An interrupted earlier write into ``folder`` is finished first (:func:`finish_interrupted_write`).  All
    files are then written to temporary files (the step that can fail, e.g. on a full disk: then every
    temporary file is removed and the folder is unchanged); the pending :data:`MANIFEST` is renamed in; the
    :data:`JOURNAL` is written (the write is decided from here on); then the temporary files are renamed over
    the old ones, the manifest (with ``remove``) last: just before it, the files named in ``remove`` that this
    call did not write (the previous run's) are deleted; then the journal is deleted.  A kill (or a failed
    rename) after the journal is written leaves the rest to the next write or check (module docstring).

    Args:
        folder: an existing folder.
        files: {file name: bytes}.
        remove: file names of earlier results to delete if this call does not write them; when given,
            the files are a result that replaces the folder's earlier one: a file of one of these names
            (or of ``files``') that the folder's :data:`MANIFEST` does not list is the user's, and
            :class:`OutputError` is raised before anything is written (:func:`check_replaceable`).
        keep: with ``remove``, names of this result's files written otherwise (the demo's model, which its
            training wrote): neither written nor deleted, listed in the manifest beside ``files`` where they exist.
    Raises:
        OutputError: a write failed (nothing changed; or, a rename failing once the journal was written, left
            to be finished), or a file to replace is not xraypose's.
    Returns:
        the written paths.
    """
    folder = Path(folder)
    finish_interrupted_write(folder)
    remove_stale_temp_files(folder)
    pending = None
    if remove:  # a result replacing an earlier one: never a file the user made
        check_replaceable(folder, list(files) + list(remove))
        pending = _pending_manifest(folder, files, remove)
        listed = set(files) | {n for n in keep if (folder / n).is_file()}
        files = {**files, MANIFEST: json_bytes({"written_by": "xraypose", "files": sorted(listed),  # renamed last
                                                "kind": sorted(set(remove))})}
    staged: list[tuple[Path, Path]] = []
    decided = False
    try:
        for name, data in files.items():
            target = folder / name
            _check_parent(target)
            staged.append((_write_temp(target, data), target))
        if pending is not None:  # before the first rename: both results' names listed (module docstring)
            atomic_write_bytes(folder / MANIFEST, pending)
        for d in dict.fromkeys(tmp.parent for tmp, _ in staged):  # the staged names on the disk before the journal
            _fsync_dir(d)
        gone = [n for n in dict.fromkeys(remove) if n not in files and n not in keep and (folder / n).is_file()]
        journal = {"written_by": "xraypose",
                   "renames": [[tmp.relative_to(folder).as_posix(), t.relative_to(folder).as_posix(), _identity(t)]
                               for tmp, t in staged],
                   "delete": [[n, _identity(folder / n)] for n in gone]}
        atomic_write_bytes(folder / JOURNAL, json_bytes(journal))
        decided = True
    finally:
        if not decided:  # nothing changed, no temporary file left
            for tmp, _ in staged:
                _unlink_quietly(tmp)
    _roll_forward(folder, journal)
    return [t for _, t in staged if t.name != MANIFEST]  # the result's files (not the manifest)


def _identity(p: Path) -> list | None:
    """The file ``p`` as the journal records it (inode, size, mtime), None where there is none: a file the user
    puts there later differs."""
    try:
        st = os.stat(p)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _read_journal(folder: Path) -> dict | None:
    """The :data:`JOURNAL` in ``folder``, None where there is none (or it is none of ours: names outside the
    folder, renames of other than this project's temporary files)."""
    try:
        data = json.loads((folder / JOURNAL).read_bytes())
        renames, delete = data["renames"], data["delete"]
        names = [n for tmp, target, _ in renames for n in (tmp, target)] + [n for n, _ in delete]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    inside = all(isinstance(n, str) and n and not os.path.isabs(n) and ".." not in Path(n).parts for n in names)
    if not inside or not all(_TEMP_RE.match(Path(tmp).name) for tmp, _, _ in renames):
        return None
    return data


def finish_interrupted_write(folder) -> bool:
    """Finish the write of a result into ``folder`` (:func:`atomic_write_files`) that a kill interrupted after
    its :data:`JOURNAL` was written: the renames and deletions not yet done are done, then the journal is
    deleted, so the folder holds the new result whole.  Called by every such write and by
    :func:`check_output_folder`.  Returns whether there was one.

    Raises:
        OutputError: a file the journal would replace or delete was put there since (the user's now): named,
            nothing changed; or a rename failed.
    """
    folder = Path(folder)
    journal = _read_journal(folder)
    if journal is None:
        if (folder / JOURNAL).is_file():
            _unlink_quietly(folder / JOURNAL)  # unreadable: none of ours (ours are written atomically)
        return False
    _roll_forward(folder, journal)
    return True


def finish_before_reading(path) -> None:
    """Before a command reads the file ``path`` of a result (a ``pose.json`` given as a start): a write into its
    folder that a kill interrupted is finished (:func:`finish_interrupted_write`), so the file read is the new
    result's, as the next write there would make it.  Best effort: one that cannot be finished (a read-only
    folder, a user's file in its way) leaves the file as it is."""
    folder = Path(path).parent
    if (folder / JOURNAL).is_file():
        with contextlib.suppress(OutputError):
            finish_interrupted_write(folder)


def _roll_forward(folder: Path, journal: dict) -> None:
    """Do what is left of ``journal`` in ``folder`` (:func:`finish_interrupted_write`); a temporary file no
    longer there was renamed already."""
    renames = [(folder / tmp, folder / target, ident) for tmp, target, ident in journal["renames"]]
    delete = [(folder / n, ident) for n, ident in journal["delete"]]
    todo = [(t, ident) for tmp, t, ident in renames if tmp.exists()] + delete
    changed = [t for t, ident in todo if _identity(t) not in (None, ident)]
    if changed:
        named = ", ".join(p.relative_to(folder).as_posix() for p in changed)
        raise OutputError(f"output folder {folder} holds {named}, put there after an xraypose write into it was "
                          f"interrupted, which would replace or delete {'them' if len(changed) > 1 else 'it'}: "
                          f"move {'them' if len(changed) > 1 else 'it'} away (or delete {folder / JOURNAL} to "
                          "leave the folder as the interruption did)")
    manifest_last = bool(renames) and renames[-1][1].name == MANIFEST
    for i, (tmp, target, _) in enumerate(renames):
        if manifest_last and i == len(renames) - 1:  # the last: the earlier result's files go first
            _delete(delete)
        if tmp.exists():
            try:
                os.replace(tmp, target)
            except OSError as e:
                if isinstance(e, FileNotFoundError) and not tmp.exists():
                    continue  # renamed meanwhile: the same write finished by another process (a reader's)
                raise OutputError(f"cannot write {target}: {e.strerror or e}") from None
    if not manifest_last:
        _delete(delete)
    for d in dict.fromkeys([*(t.parent for _, t, _ in renames), folder]):  # the renames on the disk, then no journal
        _fsync_dir(d)
    _unlink_quietly(folder / JOURNAL)


def _delete(files) -> None:
    for p, _ in files:
        if p.is_file():
            _unlink_quietly(p)


def _pending_manifest(folder: Path, files: dict, remove=()) -> bytes:
    """The pending :data:`MANIFEST` of a result of ``files`` (of the kind that writes ``remove``) written into
    ``folder``: the names of both results (module docstring)."""
    try:
        old = (folder / MANIFEST).read_bytes()
    except OSError:
        old = None
    return json_bytes({"written_by": "xraypose", "files": sorted(_listed(old) | set(files)), "pending": sorted(files),
                       "kind": sorted(set(remove))})


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike):
    """For writers that need a file name (h5py, ...): yields a temporary path beside ``path``, renamed to
    ``path`` when the block ends normally and removed when it raises, so ``path`` is never half-written.

    Raises:
        OutputError: as :func:`atomic_write_bytes` (``path`` unchanged, no temporary file left).
    """
    path = Path(path)
    _check_parent(path)
    remove_stale_temp_files(path.parent, path.name)
    tmp = _temp_path(path)
    try:
        yield tmp
    except BaseException:
        _unlink_quietly(tmp)
        raise
    try:
        with open(tmp, "rb+") as f:  # on the disk before the rename, as _write_temp does
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quietly(tmp)
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    _fsync_dir(path.parent)


#: The target name of the writability probes (:func:`_probe_folder`): ``.write-test.xraypose-PID-START-TOKEN.tmp``.
_PROBE = "write-test"


def _probe_folder(folder: Path, what: Path) -> None:
    """OutputError unless a file can be created in ``folder`` (made and removed at once, named as a temporary file).
    The probes of killed writers there (a kill between the two) are removed first: a new output's folder is its
    parent's, which no other sweep reaches."""
    remove_stale_temp_files(folder, _PROBE)
    probe = _temp_path(folder / _PROBE)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"cannot write the output {what}: {folder} is not writable ({e.strerror or e})") from None


def written_here(folder) -> set:
    """The names of the files xraypose's last result wrote into ``folder`` (its :data:`MANIFEST`; empty when
    there is none or it cannot be read)."""
    try:
        return _listed((Path(folder) / MANIFEST).read_bytes())
    except OSError:
        return set()


def _listed(manifest: bytes | None) -> set:
    """The file names a :data:`MANIFEST`'s bytes list (empty for None or bytes that are no manifest)."""
    try:
        data = json.loads(manifest) if manifest is not None else None
    except (ValueError, TypeError):
        return set()
    return {str(n) for n in data.get("files", [])} if isinstance(data, dict) else set()


def _kind(folder) -> set:
    """The names the kind of result last written into ``folder`` writes (its :data:`MANIFEST`'s ``"kind"``: a
    result's ``remove``); empty where unrecorded (an earlier version's manifest, or one a command wrote before its
    result's files, as the demo's :func:`~xraypose.demo._prepare_output` does)."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return set()
    kind = data.get("kind") if isinstance(data, dict) else None
    return {str(n) for n in kind} if isinstance(kind, list) else set()


def check_replaceable(folder, names) -> None:
    """Raise :class:`OutputError` when ``folder`` holds a file named in ``names`` that xraypose did not write
    there (not listed in its :data:`MANIFEST`): a result would replace or delete it."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    ours = written_here(folder)
    names = list(dict.fromkeys(names))
    theirs = [n for n in names if n not in ours and (folder / n).exists()]
    if theirs:
        named = ", ".join(theirs[:5]) + (f" and {len(theirs) - 5} more" if len(theirs) > 5 else "")
        raise OutputError(
            f"output folder {folder} holds {named}, not written there by xraypose (a result would "
            f"replace {'them' if len(theirs) > 1 else 'it'}): choose another output folder, or move "
            f"{'them' if len(theirs) > 1 else 'it'} away")
    # another kind of result (a track's trajectory.csv and overlay.gif beside the trajectory.json a registration
    # would replace): its files would be left beside this result's, one of them replaced (the track's record lost)
    kind = _kind(folder)
    shared = [n for n in names if n in ours and (folder / n).exists()]
    other = sorted(n for n in ours if n not in names and (folder / n).exists())
    if kind and kind != set(names) and shared and other:
        named = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
        raise OutputError(
            f"output folder {folder} holds another kind of xraypose result ({named}), whose "
            f"{', '.join(shared)} this one would replace: choose another output folder")


def check_output_folder(path, replaces=()) -> Path:
    """Check, before computing, that the output folder ``path`` can be created or written.

    Nothing is created (a result's write into ``path`` that a kill interrupted is finished:
    :func:`finish_interrupted_write`).  Raises :class:`OutputError` naming the problem: ``path`` is empty, is a file,
    lies under a file, or its folder (or nearest existing parent) is not writable; or it holds a file
    named in ``replaces`` (the result's files) that xraypose did not write there (:func:`check_replaceable`).
    """
    if not str(path).strip():
        raise OutputError("the output folder is an empty path; give a folder name")
    p = Path(path).expanduser()
    if p.is_dir():
        finish_interrupted_write(p)  # a result's write a kill interrupted: the folder holds it whole
    check_replaceable(p, replaces)
    if p.exists() and not p.is_dir():
        raise OutputError(f"output {p} exists and is not a folder")
    anc = p
    while not anc.exists() and anc.parent != anc:
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(f"cannot create the output folder {p}: {anc} is a file, not a folder")
    _probe_folder(anc, p)
    return p


def make_output_folder(path) -> Path:
    """The output folder ``path``, checked (:func:`check_output_folder`) and created with its
    parents.  Raises :class:`OutputError` naming the folder when it cannot be created."""
    out = check_output_folder(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the output folder {out}: {e.strerror or e}") from None
    return out


def check_output_file(path) -> Path:
    """Check, before computing, that the file ``path`` can be written (its folder exists and is writable)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise OutputError(f"output {p} is a folder; give a file name")
    _check_parent(p)
    _probe_folder(p.parent, p)
    return p


def jsonable(obj):
    """``obj`` with every NaN/±inf float replaced as described in the module docstring."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        out, flags = {}, {}
        for k, v in obj.items():
            if isinstance(v, float) and not math.isfinite(v):
                flags[k] = "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
            out[k] = jsonable(v)
        if flags:
            out["non_finite"] = {**(out.get("non_finite") or {}), **flags}
        return out
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def restore_non_finite(obj):
    """The inverse of :func:`jsonable` for objects: ``null`` values listed in ``"non_finite"`` get their value back."""
    if isinstance(obj, dict):
        out = {k: restore_non_finite(v) for k, v in obj.items() if k != "non_finite"}
        flags = obj.get("non_finite")
        if isinstance(flags, dict):
            for k, v in flags.items():
                if out.get(k) is None and v in ("inf", "-inf", "nan"):
                    out[k] = float(v)
        elif "non_finite" in obj:
            out["non_finite"] = obj["non_finite"]
        return out
    if isinstance(obj, list):
        return [restore_non_finite(v) for v in obj]
    return obj


def json_bytes(obj) -> bytes:
    """Strict JSON (no NaN/Infinity tokens: see :func:`jsonable`), indented, with a final newline."""
    return (json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n").encode()


def atomic_write_json(path, obj) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Min–max scale an image to 0…255 (a constant image gives zeros)."""
    img = np.asarray(img, dtype=np.float64)
    lo, hi = np.nanmin(img), np.nanmax(img)
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(img.shape, dtype=np.uint8)
    return np.round(255 * (img - lo) / (hi - lo)).astype(np.uint8)


def save_image(path, img) -> None:
    """Save an (H, W) image: .npy keeps float values; .png is 8-bit min–max."""
    path = Path(path)
    img = _as_array(img)
    while img.ndim > 2 and img.shape[0] == 1:  # (1, 1, H, W) → (H, W); never H or W, which may be 1
        img = img[0]
    if img.ndim != 2:
        raise InputError(f"expected a single 2D image to save, got shape {img.shape}")
    buf = io.BytesIO()
    if path.suffix.lower() == ".npy":
        np.save(buf, img.astype(np.float32))
    elif path.suffix.lower() == ".png":
        return atomic_write_bytes(path, png_bytes(img))
    else:
        raise InputError(f"unsupported image type {path.suffix!r}; use .npy or .png")
    atomic_write_bytes(path, buf.getvalue())


def _as_array(img) -> np.ndarray:
    """A tensor (detached, on the CPU) or array as a numpy array."""
    return np.asarray(img.detach().cpu() if hasattr(img, "detach") else img)


def png_bytes(img) -> bytes:
    """An (H, W) image (tensor or array) as the bytes of an 8-bit min–max PNG (:func:`save_image`'s .png)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(to_uint8(_as_array(img))).save(buf, format="PNG")
    return buf.getvalue()


def open_pil_image(p: Path, unreadable: str, cannot_open: str):
    """PIL's (lazy) image of the file ``p``, without PIL's decompression-bomb limit: callers check the size
    themselves, before decoding, with a message of their own.  InputError ``"{p}: {unreadable}"`` when PIL
    knows no such format, ``"{p}: {cannot_open} (PIL's reason)"`` when the file cannot be opened."""
    from PIL import Image, UnidentifiedImageError

    from xraypose._checks import one_line

    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        return Image.open(str(p))
    except UnidentifiedImageError:
        raise InputError(f"{p}: {unreadable}{_tiff_samples_pil_lacks(p)}") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(f"{p}: {cannot_open} ({one_line(e)})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def tiff_sample_format(fr, a: np.ndarray) -> np.ndarray:
    """A TIFF page's values as its SampleFormat (339) and BitsPerSample (258) say: Pillow reads signed 8-bit pages as
    unsigned (−1 read as 255) and unsigned 32-bit ones as signed (2³¹ and more read negative); the same bits, viewed
    as the file's type (X-rays and TIFF stacks alike)."""
    tags = getattr(fr, "tag_v2", None)
    if tags is None:
        return a
    fmt, bits = (tags.get(k, (d,)) for k, d in ((339, 1), (258, 0)))
    fmt, bits = (int(v[0] if isinstance(v, tuple) else v) for v in (fmt, bits))
    if a.dtype == np.uint8 and fmt == 2 and bits == 8:
        return a.view(np.int8)
    if a.dtype == np.int32 and fmt == 1 and bits == 32:
        return a.view(np.uint32)
    return a


#: TIFF SampleFormat (339) values, named.
_TIFF_SAMPLE_FORMATS = {1: "unsigned integer", 2: "signed integer", 3: "floating-point", 6: "complex floating-point"}


def _tiff_samples_pil_lacks(p: Path) -> str:
    """Why PIL could not identify a TIFF file (it names no reason): its first page's samples, from the page's own
    tags (BitsPerSample, SampleFormat, SamplesPerPixel), e.g. 64- or 16-bit floats, which PIL
    does not decode; "" for a file that is no TIFF or whose tags cannot be read."""
    from PIL import TiffImagePlugin

    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
            if head[:4] not in (b"II*\0", b"MM\0*"):
                return ""
            ifd = TiffImagePlugin.ImageFileDirectory_v2(head)
            fh.seek(ifd.next)
            ifd.load(fh)
        bits = tuple(ifd.get(258, (1,)))
        fmt = int(tuple(ifd.get(339, (1,)))[0])
        spp = int(ifd.get(277, 1))
    except Exception:  # noqa: BLE001 - a damaged directory: the plain message stands
        return ""
    kind = _TIFF_SAMPLE_FORMATS.get(fmt, f"SampleFormat {fmt}")
    per = f", {spp} samples per pixel" if spp != 1 else ""
    return (f" (its samples are {bits[0]}-bit {kind}{per}, which Pillow does not decode: save it with 8-, 16- or "
            "32-bit greyscale samples, float32 for floats)")


@contextlib.contextmanager
def pil_warnings(p: Path):
    """PIL's warnings while the image ``p`` is opened and decoded (``Corrupt EXIF data…`` of a cut TIFF):
    held back, and dropped when the reading fails — its one-line error says the file is damaged; when it
    succeeds, each is warned once, naming the file."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen = set()
    for w in caught:
        text = f"{p}: {str(w.message).strip()}"
        if text not in seen:
            seen.add(text)
            warnings.warn(text, w.category, stacklevel=3)


_SPECIAL_FILES = (("S_ISFIFO", "a named pipe (FIFO)"), ("S_ISSOCK", "a socket"),
                  ("S_ISCHR", "a character device"), ("S_ISBLK", "a block device"))


def check_input_path(p, what: str, missing: str | None = None) -> None:
    """Refuse, as :class:`~xraypose.errors.InputError`, an input path ``p`` that is neither a regular file
    nor a folder, before anything opens it: a named pipe (FIFO), socket or device (reading one would wait
    forever for a writer, or read endless bytes), a symbolic link loop, or a link to a missing target
    (named as such, not "not found").  ``missing``: the message for a path that does not exist
    (default ``WHAT not found: P``).  Folders pass: the caller says whether it takes one."""
    import errno
    import stat

    p = Path(p)
    try:
        st = os.stat(p)
    except OSError as e:
        if e.errno == errno.ELOOP:
            try:
                is_link = stat.S_ISLNK(os.lstat(p).st_mode)
            except OSError:
                is_link = False
            if is_link:
                raise InputError(f"{what} {p} is a symbolic link loop (its links lead back to themselves); "
                                 "point it at a file") from None
            raise InputError(f"{what} {p}: its path runs through a symbolic link loop") from None
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            if os.path.islink(p):
                target = os.readlink(p)
                if os.path.lexists(os.path.join(os.path.dirname(p), target)):  # a chain of links
                    target = os.path.realpath(p)
                raise InputError(f"{what} {p} is a symbolic link to {target}, which does not exist") from None
            raise InputError(missing or f"{what} not found: {p}") from None
        raise InputError(f"cannot read the {what} {p} ({e.strerror or e})") from None
    for test, name in _SPECIAL_FILES:
        if getattr(stat, test)(st.st_mode):
            raise InputError(f"{what} {p} is {name}, not a regular file; give a file (copy the data "
                             "into one first)")


def check_input_file(p: Path, what: str, kind: str = "a file") -> None:
    """Refuse, as :class:`~xraypose.errors.InputError`, an input file ``p`` that is missing
    (``WHAT not found: P``), not a regular file (:func:`check_input_path`: a FIFO, a device, a
    symbolic link loop, ...) or a folder (``WHAT P is a folder, not KIND``)."""
    check_input_path(p, what)
    if p.is_dir():
        raise InputError(f"{what} {p} is a folder, not {kind}")


def read_input_bytes(p: Path, what: str, kind: str = "a file") -> bytes:
    """The bytes of the input file ``p`` (checked by :func:`check_input_file`); an unreadable one
    is an :class:`~xraypose.errors.InputError` ``cannot read the WHAT P (why)``."""
    check_input_file(p, what, kind)
    try:
        return p.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read the {what} {p} ({e.strerror or e})") from None


def read_toml(path) -> dict:
    """A TOML config file as a dict; a missing or malformed file is an :class:`InputError` naming it."""
    import tomllib

    from xraypose.errors import InputError

    p = Path(path).expanduser()
    check_input_path(p, "config file")
    if p.is_dir():
        raise InputError(f"config file {p} is a folder, not a TOML file")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # TOML files are UTF-8 whatever the locale
    except UnicodeDecodeError as e:
        raise InputError(f"config file {p} is not UTF-8 text (byte 0x{raw[e.start]:02x} at position {e.start}); "
                         "save it as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"config file {p} is not valid TOML ({e})") from None
