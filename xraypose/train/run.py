""":func:`train`: one call from a CT to a trained model file — outputs checked, a resumed state read,
devices and processes set up, then a :class:`~xraypose.train.trainer.Trainer` run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from xraypose.errors import InputError
from xraypose.model import check_finite_weights, read_checkpoint
from xraypose.train.config import TrainConfig, as_config, training_differences
from xraypose.train.outputs import TrainResult, check_not_an_input, check_output_name, check_writable, output_paths
from xraypose.train.trainer import Trainer

__all__ = ["train"]


def train(ct, output, config=None, *, resume: bool = False, overwrite: bool = False, finetune=None, callback=None,
          quiet: bool = False) -> TrainResult:
    """Train a pose regressor on DRRs of ``ct`` and write ``output`` (best model) and its companions.

    Args:
        ct: a :class:`~xraypose.volume.Volume`, a CT path, or ``"sample"``.
        output: model file to write (e.g. ``model.pt``); see :mod:`xraypose.train` for the companions.
        config: a :class:`TrainConfig`, a dict of tables, a TOML path, or None (defaults).
        resume: continue from ``output``'s ``.last.pt`` (model, optimiser, scheduler, step,
            random state, replay buffer); the checkpoint's configuration is used, except the
            ``[run]`` table, which may change (e.g. more steps).  ``run.time_budget_s`` is the
            budget of the whole training, resumes included (the time used is in the checkpoint);
            the log keeps one row per step (rows written after the checkpoint are dropped).
        overwrite: replace an earlier training's files at ``output`` (model, state, log, crash
            dump; removed before training starts).  Without it (or ``resume``), an existing
            ``output`` or companion is an InputError: a trained model is never overwritten silently.
        finetune: start from the weights of another checkpoint (same architecture and
            parameterization); the pose frame and output scaling follow this CT and config.
        callback: called as ``callback(event, info)`` with event "step", "checkpoint" or "validation".
        quiet: no progress bar.

    ``output`` is locked while it trains (rank 0; :func:`xraypose.output_lock.output_lock`, ``model.lock``
    beside it, joining the lock of ``xraypose train -o`` that calls it): a second training into the same model
    is refused (:class:`~xraypose.output_lock.OutputInUse`) instead of interleaving its checkpoints.
    """
    import contextlib

    from xraypose.output_lock import output_lock

    lock = output_lock(output, file=True, join=True) if _dist_info()[1] == 0 else contextlib.nullcontext()
    with lock:
        return _train(ct, output, config, resume=resume, overwrite=overwrite, finetune=finetune, callback=callback,
                      quiet=quiet)


def _train(ct, output, config, *, resume: bool, overwrite: bool, finetune, callback, quiet: bool) -> TrainResult:
    """:func:`train`'s body, under its lock."""
    t_start = time.perf_counter()
    cfg = as_config(config)
    paths = output_paths(output)
    world, rank, local_rank = _dist_info()
    check_output_name(output)  # model.last.pt: its state would be model.last.last.pt
    if rank == 0:
        check_writable(output)
    check_not_an_input(output, {"the CT": ct, "the config": config, "the --finetune checkpoint": finetune,
                                "model.weights": cfg.model.weights})
    if rank == 0 and paths["best"].is_file():
        _check_is_a_model(paths["best"])
    if resume and overwrite:
        raise InputError("give --resume (continue the training) or --overwrite (start again), not both")
    if finetune is not None and not resume:  # before the CT is read (its NaN weights trained on, to NaN poses)
        check_finite_weights(read_checkpoint(finetune), finetune)
    existing = [q for q in paths.values() if q.exists()]
    if existing and not resume and not overwrite:
        if not paths["last"].exists():  # --resume would say "nothing to resume"
            raise InputError(f"{existing[0]} already exists (an earlier training, which left no {paths['last'].name} "
                             "to resume: it stopped before its first checkpoint); give --overwrite to replace it")
        raise InputError(f"{existing[0]} already exists (an earlier training); give --resume to continue it "
                         "or --overwrite to replace it")
    state = None
    if resume and existing and not paths["last"].exists():
        raise InputError(f"nothing to resume: {paths['last']} does not exist (the earlier training at {existing[0]} "
                         "stopped before its first checkpoint); give --overwrite to start again")
    if resume:
        cfg, state = _resume_state(cfg, config is not None, paths["last"], world)
    if finetune is not None and resume:
        raise InputError("give resume or finetune, not both")
    if rank == 0:
        from xraypose.io import remove_stale_temp_files

        remove_stale_temp_files(paths["best"].parent)  # left by a run killed mid-write
    replace = existing if overwrite and rank == 0 else []

    device, use_cuda = _device(cfg, local_rank)
    threads_before = torch.get_num_threads()
    _set_threads(cfg, world, use_cuda)
    ddp = world > 1
    if ddp and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    trainer = Trainer(cfg, paths, device=device, world=world, rank=rank, callback=callback,
                      quiet=quiet or rank != 0, t_start=t_start)
    try:
        return trainer.setup(ct, state=state, finetune=finetune, replace=replace).fit()
    finally:
        trainer.close()
        torch.set_num_threads(threads_before)
        if ddp and dist.is_initialized():
            dist.destroy_process_group()


def _check_is_a_model(best: Path) -> None:
    """InputError when the existing output ``best`` is not a checkpoint xraypose wrote: a file of the user's at -o was
    called "an earlier training", and --overwrite (which replaces an earlier training's files) replaced it."""
    try:
        read_checkpoint(best)
    except InputError as e:
        raise InputError(f"output {best} exists and is not a model xraypose wrote ({e}); training would replace it: "
                         "give another -o, or remove the file yourself") from None


def _dist_info() -> tuple[int, int, int]:
    """``(world size, rank, local rank)`` from torchrun's environment (1, 0, 0 without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def _resume_state(cfg: TrainConfig, given: bool, last: Path, world: int) -> tuple[TrainConfig, dict]:
    """The checkpoint ``last``'s state and configuration (with ``cfg``'s ``[run]`` table when a config was
    ``given``; any other difference is an error)."""
    if not last.exists():
        raise InputError(f"nothing to resume: {last} does not exist")
    state = read_training_state(last)
    saved = saved_config(state, last)
    if given:
        new = cfg.to_dict()
        old = saved.to_dict()
        diffs = training_differences(old, new)
        if diffs:
            raise InputError("cannot resume with a different configuration: " + ", ".join(diffs[:6]) +
                             " differ from the checkpoint's (only [run] may change)")
        saved.run = cfg.run
    saved_world = state.get("world_size", 1)  # a whole number; anything else (an edited file) is refused too
    if isinstance(saved_world, bool) or not isinstance(saved_world, int) or saved_world != world:
        raise InputError(f"{last} was written by {saved_world!r} processes; "
                         f"resume with the same number (got {world})")
    return saved, state


def read_training_state(last) -> dict:
    """The checkpoint ``last`` (``OUTPUT.last.pt``) when it holds a training state to resume: its optimiser and its
    configuration (a model file copied in its place has neither: ``KeyError: 'config'`` escaped the CLI)."""
    state = read_checkpoint(last)
    if "optimizer" not in state or not isinstance(state.get("config"), dict):
        raise InputError(f"{last} holds no training state to resume (no optimiser or configuration: a model file, "
                         "not the NAME.last.pt a training writes)")
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:  # a crash dump copied in its place: KeyError 'scheduler' escaped once the CT was set up
        raise InputError(f"{last} holds no whole training state to resume (it lacks {', '.join(missing)}: a crash "
                         "dump (NAME.crash.pt) or a damaged file, not the NAME.last.pt a training writes); give "
                         "--overwrite to start again")
    return state


#: What a training state (``NAME.last.pt``, :meth:`Trainer.save_last`) holds for ``--resume`` besides the model.
_STATE_KEYS = ("optimizer", "scheduler", "step", "images_seen", "renders", "buffer", "rng", "config")


def saved_config(state: dict, last) -> TrainConfig:
    """The configuration recorded in the training state ``state`` (read from ``last``); one this xraypose refuses
    (a setting of a newer version, a value out of today's range) is an InputError naming the checkpoint (it was
    "config: unknown setting ..." for a config the user had not given)."""
    try:
        return TrainConfig.from_dict(state["config"])
    except InputError as e:
        raise InputError(f"{last} records a training configuration this xraypose does not accept ({e}); written by "
                         "another version of xraypose? Resume it with that version, or give --overwrite to start "
                         "again") from None


def _device(cfg: TrainConfig, local_rank: int) -> tuple[torch.device, bool]:
    """The device ``run.device`` asks for (``auto``: this process's GPU when there is one)."""
    want = cfg.run.device
    if want == "cuda" and not torch.cuda.is_available():
        raise InputError("config: run.device = 'cuda' but no CUDA GPU is available")
    use_cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    return device, use_cuda


def _set_threads(cfg: TrainConfig, world: int, use_cuda: bool) -> None:
    """``run.threads`` CPU threads; several CPU processes on one machine share its cores."""
    if cfg.run.threads is not None:
        torch.set_num_threads(int(cfg.run.threads))
    elif world > 1 and not use_cuda:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
