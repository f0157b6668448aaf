"""``xraypose train``: the command-line face of :func:`xraypose.train.train`.

Registered in :mod:`xraypose.cli` with ``app.command("train")(train_command)``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional

import typer

from xraypose.cli.options import CT, Group, option_flag, with_groups

#: Options that set one field of the training configuration: option → (table, key, type, help).
CONFIG_FIELDS = {
    "steps": ("run", "max_steps", int, "Maximum number of optimiser steps"),
    "backbone": ("model", "backbone", str, "timm backbone name, e.g. resnet18"),
    "parameterization": ("model", "parameterization", str, "Rotation parameterization"),
    "batch_size": ("optim", "batch_size", int, "Images per step and process"),
    "device": ("run", "device", str, "auto | cpu | cuda"),
    "seed": ("run", "seed", int, "Random seed"),
}


def _given_fields(**values) -> dict:
    """{(table, key): value} of the :data:`CONFIG_FIELDS` options given."""
    return {CONFIG_FIELDS[name][:2]: v for name, v in values.items() if v is not None}


#: The :data:`CONFIG_FIELDS` options, each help naming its field.
FIELD_OPTIONS = Group(_given_fields, [
    inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Optional[kind],
                      default=typer.Option(None, option_flag(name), help=f"{text} ({table}.{key})."))
    for name, (table, key, kind, text) in CONFIG_FIELDS.items()])


@with_groups
def train_command(
    ct: str = CT,
    output: Path = typer.Option(..., "-o", "--output", help="Model file to write (the best model), e.g. model.pt. "
                                "Beside it: NAME.last.pt (training state), NAME.log.jsonl (metrics per step)."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML training config: tables model, camera, render, "
                                          "sampler, augment, loss, optim, data, run (docs/training.md)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Start from a named configuration: diffpose "
                                         "(the defaults) or cpu-fast (best measured under a 10-minute CPU budget); "
                                         "--config tables and the options below apply on top."),
    resume: bool = typer.Option(False, "--resume", help="Continue from NAME.last.pt (model, optimiser, schedule, "
                                "step, random state); the time budget is the whole training's."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier training's files at -o (model, "
                                   "state, log); without it or --resume an existing model is never overwritten."),
    finetune: Optional[Path] = typer.Option(None, "--finetune", help="Start from the weights of another checkpoint "
                                            "(same architecture and parameterization)."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Wall-clock budget of the whole training, "
                                            "minutes, resumes included (sets run.time_budget_s; the schedule fits "
                                            "the budget; with --resume, give more to train longer)."),
    size: Optional[int] = typer.Option(None, "--size", help="Training image size in pixels (camera.height = width)."),
    fields: dict = FIELD_OPTIONS,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train a patient-specific pose regressor on DRRs of one CT.

    Example:

    xraypose train sample -o model.pt --minutes 10
    """
    from xraypose.train import TrainConfig, load_config, output_paths, train
    from xraypose.train.outputs import check_not_an_input
    from xraypose.train.run import read_training_state, saved_config

    check_not_an_input(output, {"the --config file": config})  # train() checks the CT and --finetune
    start = TrainConfig.from_dict({"preset": preset}) if preset is not None else None
    if config is not None:
        base = load_config(config, base=start)
    elif start is not None:
        base = start
    elif resume and output_paths(output)["last"].exists():
        last = output_paths(output)["last"]
        base = saved_config(read_training_state(last), last)
    else:
        base = TrainConfig()
    d = base.to_dict()
    overrides = {("run", "time_budget_s"): None if minutes is None else 60.0 * minutes, ("camera", "height"): size,
                 **fields}
    for (section, key), value in overrides.items():
        if value is not None:
            d[section][key] = value
    if size is not None:
        d["camera"]["width"] = None
    if minutes is not None and ("run", "max_steps") not in fields:
        d["run"]["max_steps"] = max(d["run"]["max_steps"], 1_000_000)  # the budget decides
    cfg = TrainConfig.from_dict(d)
    result = train(ct, output, cfg, resume=resume, overwrite=overwrite, finetune=finetune, quiet=quiet)
    typer.echo(
        f"wrote {result.model_path} (best model), {result.last_path.name}, {result.log_path.name}: "
        f"{result.steps} steps, {result.images_seen} images ({result.images_per_s:.1f}/s), "
        f"{result.elapsed_s / 60:.1f} min"
    )
    if result.best_val:
        v = result.best_val
        if "val_median_mtre_mm" in v:
            typer.echo(f"validation (DRRs of new poses): median mTRE {v['val_median_mtre_mm']:.1f} mm, "
                       f"median rotation {v['val_median_rot_deg']:.2f}°, "
                       f"{100 * v['val_frac_in_capture']:.0f}% with mTRE < {cfg.run.capture_mtre_mm:g} mm")
