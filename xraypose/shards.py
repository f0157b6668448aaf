"""Evaluation across processes and machines: the X-rays dealt over torch.distributed ranks, merged on rank 0.

Under ``torchrun`` (``WORLD_SIZE`` > 1), ``xraypose evaluate`` runs one process per
rank; :meth:`Shards.from_env` joins them in a gloo process group and
:func:`xraypose.evaluate.evaluate` asks a :class:`Shards` at each step:

1. **prepare** (:meth:`Shards.prepare`): rank 0 checks and opens the output folder
   (``--resume`` / ``--overwrite`` rules, ``run.json``) first; then every other
   rank opens its own.  On a shared file system that is the same folder, found
   holding rank 0's ``run.json``: nothing more to do.  On another machine it is
   that machine's folder, checked as one process would check it.  An error on any
   rank is raised on every rank (one line, naming the rank).
2. **plan** (:meth:`Shards.plan`): each rank lists the cases its folder holds
   finished (``--resume``); the lists are all-gathered, every finished case is
   skipped (the lowest rank holding it speaks for it) and the others are the work.
3. **claims** (:meth:`Shards.claims`): each rank takes the next unclaimed case, in case
   order, whenever it is free — one counter in the process group's key-value store
   (``store.add``) — so a faster machine (or a rank whose X-rays happen to register
   quickly) takes more of them and no rank idles while another still has a queue;
   without a store the cases are dealt round-robin (rank r: the r-th, (r + W)-th, ...).
   Which rank registers an X-ray changes nothing in its result: registration is
   seeded per X-ray (the configuration's seed; a perturbed start by the case's
   position in the whole set), never per rank.
   Each rank registers its cases and writes their folders (atomically) on its disk.
   :meth:`Shards.check` all-gathers the ranks' outcomes: an error anywhere is raised everywhere.
4. **merge** (:meth:`Shards.merge`): in rounds, each rank sends one case (its
   metrics row, report section and the bytes of the case folder's files) to rank
   0 over the process group (``gather_object``): rank 0 writes the files it does
   not already hold byte for byte (a shared file system: none) and returns every
   case in case order; then it writes ``metrics.csv``, ``summary.json`` and the
   report exactly as one process would, and :meth:`Shards.share` gives its summary to every rank.

Nothing travels through a shared disk: several machines without a shared file
system work, each with its own output folder (the same path), and rank 0's folder
ends up with every case.  A single process (``Shards()``) does each step locally.
"""

from __future__ import annotations

import datetime
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from xraypose.errors import InputError, XrayposeError

__all__ = ["Shards", "Plan", "deal_cases", "TIMEOUT_S"]

#: Seconds a rank waits for the others at a collective (a rank done early waits for the slowest).
TIMEOUT_S = 24 * 3600.0
#: Seconds the ranks wait for each other to join the process group.
JOIN_TIMEOUT_S = 1800.0


@dataclass
class Plan:
    """What one rank does: ``mine`` the case indices it registers, ``kept`` the finished ones it speaks for."""

    mine: list = field(default_factory=list)
    kept: list = field(default_factory=list)
    todo: list = field(default_factory=list)   # every rank's unfinished cases, in case order
    key: str = ""                              # the claim counter's name in the store (one per plan)


class Shards:
    """A process's place among the ranks of an evaluation (``rank`` of ``world``); ``Shards()`` is one process."""

    def __init__(self, rank: int = 0, world: int = 1, group=None):
        if not (0 <= rank < world):
            raise InputError(f"rank {rank} is not in 0..{world - 1}")
        self.rank, self.world, self.group = int(rank), int(world), group
        self._owns_group = False
        self._plan: Plan | None = None

    @classmethod
    def from_env(cls, timeout_s: float = TIMEOUT_S) -> "Shards":
        """This process's shard from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...).

        With ``WORLD_SIZE`` > 1 it joins (or creates) the default gloo process group; otherwise one process."""
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return cls()
        import torch.distributed as dist

        created = False
        if not dist.is_initialized():  # ranks that never show up are waited for JOIN_TIMEOUT_S
            dist.init_process_group(backend="gloo", timeout=datetime.timedelta(seconds=JOIN_TIMEOUT_S))
            created = True
        # the evaluation's own group: gloo on CPU whatever the default group is, and a long timeout
        # (a rank that finished its share waits for the slowest; a rank that dies is noticed at once)
        group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
        s = cls(dist.get_rank(), dist.get_world_size(), group)
        s._owns_group = created
        return s

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def label(self, text: str) -> str:
        """``text`` with the rank named when there are several."""
        return f"{text} (rank {self.rank} of {self.world})" if self.distributed else text

    def close(self) -> None:
        """Leave the process group (if :meth:`from_env` created it)."""
        if self._owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._owns_group = False

    # ------------------------------------------------------------------ collectives
    def _all_gather(self, obj) -> list:
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def _broadcast(self, obj):
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def _raise_any(self, outcomes: list) -> None:
        """Raise the first rank's error (``None`` = fine): an :class:`InputError` stays one, another of
        xraypose's own errors (:class:`~xraypose.errors.XrayposeError`: an output that cannot be written, ...)
        is raised as that base (both one line and exit code 2 on the command line), anything else as a
        RuntimeError."""
        for r, o in enumerate(outcomes):
            if o is not None:
                kind, text = o
                msg = text if not self.distributed else f"rank {r}: {text}"
                raise {"input": InputError, "xraypose": XrayposeError}.get(kind, RuntimeError)(msg)

    @staticmethod
    def _outcome(e: BaseException | None):
        if e is None:
            return None
        kind = "input" if isinstance(e, InputError) else "xraypose" if isinstance(e, XrayposeError) else "other"
        return (kind, str(e) or type(e).__name__)

    # ------------------------------------------------------------------ steps
    def prepare(self, out: Path, record: dict, open_output: Callable[[], None]) -> None:
        """Open the output folder on every rank: ``open_output()`` (check, create, write ``run.json``)
        runs on rank 0 first, then on each other rank whose folder does not already hold ``record`` in
        its ``run.json`` (a shared folder does, once rank 0 wrote it)."""
        if not self.distributed:
            open_output()
            return
        err = None
        if self.is_main:
            try:
                open_output()
            except Exception as e:  # noqa: BLE001 - sent to every rank, raised below
                err = e
        first = self._broadcast(self._outcome(err))
        if first is not None:
            if err is not None:
                raise err
            self._raise_any([first] + [None] * (self.world - 1))
        if not self.is_main:
            try:
                if not _holds_record(out, record):
                    open_output()
            except Exception as e:  # noqa: BLE001
                err = e
        outcomes = self._all_gather(self._outcome(err))
        if err is not None:
            raise err
        self._raise_any(outcomes)

    def plan(self, n: int, held) -> Plan:
        """Deal ``n`` cases: those in ``held`` (indices this rank's folder holds finished) are kept by
        the lowest rank holding them; the others are ``plan.todo`` (claimed as the ranks are free,
        :meth:`claims`) and, for the static deal, round-robin in case order over the ranks (``plan.mine``)."""
        held = sorted(set(int(i) for i in held))
        nonce = uuid.uuid4().hex  # rank 0's names this evaluation's claim counter
        every = self._all_gather((held, nonce)) if self.distributed else [(held, nonce)]
        deal, kept = deal_cases(n, [h for h, _ in every])
        p = Plan(mine=deal[self.rank], kept=kept[self.rank], todo=sorted(i for d in deal for i in d),
                 key=f"xraypose/evaluate/claims/{every[0][1]}")
        self._plan = p
        return p

    def claims(self, plan: Plan):
        """The case indices this rank registers, one at a time: under several ranks the next unclaimed
        case of ``plan.todo`` each time it asks (a counter in the process group's store, so the ranks
        share the work as they are free); one process, or no store: ``plan.mine`` (the static deal)."""
        store = self._store() if self.distributed else None
        if store is None:
            yield from plan.mine
            return
        while True:
            k = int(store.add(plan.key, 1)) - 1
            if k >= len(plan.todo):
                return
            yield plan.todo[k]

    @staticmethod
    def _store():
        """The default process group's key-value store, or None where torch does not expose it."""
        try:
            from torch.distributed import distributed_c10d

            return distributed_c10d._get_default_store()
        except Exception:  # noqa: BLE001 - a private accessor: fall back to the static deal
            return None

    def check(self, error: BaseException | None) -> None:
        """After registering: raise this rank's ``error``, or any other rank's, on every rank."""
        if not self.distributed:
            if error is not None:
                raise error
            return
        outcomes = self._all_gather(self._outcome(error))
        if error is not None:
            raise error
        self._raise_any(outcomes)

    def merge(self, out: Path, names: list, results: dict, files: tuple) -> dict | None:
        """Every case's ``(row, section)`` on rank 0 (``None`` elsewhere), by index.

        ``results``: this rank's cases, ``{index: (row, section)}``; section = ``{"heading", "figures":
        [(path, caption)]}`` with the pictures in ``out/cases/NAME/``.  The other ranks' case files
        (names in ``files``) are written into rank 0's ``out/cases/NAME/`` unless already there byte
        for byte, and their figures point there."""
        if not self.distributed:
            return dict(results)
        import torch.distributed as dist

        from xraypose.io import atomic_write_bytes

        plan = self._plan
        if plan is None:
            raise RuntimeError("Shards.merge before Shards.plan")
        mine = sorted(results) if not self.is_main else []
        rounds = max(self._all_gather(len(mine)))  # claims are dynamic: how many each rank holds
        merged = dict(results) if self.is_main else None
        for k in range(rounds):
            payload = None
            if k < len(mine):
                i = mine[k]
                row, section = results[i]
                d = Path(out) / "cases" / names[i]
                payload = {"index": i, "row": row, "heading": section["heading"],
                           "figures": [(Path(p).name, c) for p, c in section["figures"]],
                           "files": {f: (d / f).read_bytes() for f in files if (d / f).is_file()}}
            got = [None] * self.world if self.is_main else None
            dist.gather_object(payload, got, dst=0, group=self.group)
            if not self.is_main:
                continue
            for item in got[1:]:
                if item is None:
                    continue
                i = int(item["index"])
                d = Path(out) / "cases" / names[i]
                d.mkdir(parents=True, exist_ok=True)
                for f, data in item["files"].items():
                    if Path(f).name != f or f not in files:
                        raise RuntimeError(f"rank sent an unexpected file name {f!r}")
                    p = d / f
                    if not (p.is_file() and p.read_bytes() == data):
                        atomic_write_bytes(p, data)
                merged[i] = (item["row"], {"heading": item["heading"],
                                           "figures": [(d / f, c) for f, c in item["figures"]]})
        if self.is_main and len(merged) != len(names):
            missing = [names[i] for i in range(len(names)) if i not in merged]
            raise RuntimeError(f"the merge lacks {len(missing)} case(s): {', '.join(missing[:5])}")
        return merged

    def share(self, value=None):
        """Rank 0's ``value`` on every rank (e.g. the summary)."""
        return self._broadcast(value) if self.distributed else value


def deal_cases(n: int, held: list) -> tuple[list, list]:
    """Who does what among ``len(held)`` ranks: ``held[r]`` the case indices (of ``0..n-1``) rank r holds
    finished.  Returns (to register, to speak for) per rank: each finished case is spoken for by the
    lowest rank holding it; the others are dealt round-robin in case order (rank r: the r-th, (r+W)-th, ...)."""
    world = len(held)
    owner = {}
    for r, hs in enumerate(held):
        for i in hs:
            if 0 <= int(i) < n:
                owner.setdefault(int(i), r)
    todo = [i for i in range(n) if i not in owner]
    return ([todo[r::world] for r in range(world)],
            [sorted(i for i, o in owner.items() if o == r) for r in range(world)])


def _holds_record(out: Path, record: dict) -> bool:
    """``out/run.json`` holds ``record`` (the same settings, as JSON)."""
    from xraypose.evaluate import RUN_FILE
    from xraypose.io import restore_non_finite

    p = Path(out) / RUN_FILE
    try:
        old = restore_non_finite(json.loads(p.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return old == restore_non_finite(json.loads(json.dumps(record, default=str)))
