"""``xraypose demo``: the whole job on the bundled pelvis CT (:func:`xraypose.demo.run_demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from xraypose.cli.config import config_option


def demo_command(
    output: Path = typer.Option(Path("xraypose-demo"), "-o", "--output", help="Folder for the report and results."),
    fast: bool = typer.Option(False, "--fast", help="A one-minute version (short training, 3 X-rays)."),
    train_seconds: Optional[float] = typer.Option(None, "--train-seconds", help="Training budget, seconds."),
    cases: Optional[int] = typer.Option(None, "--cases", help="How many synthetic X-rays to register."),
    seed: int = typer.Option(0, "--seed", help="Seed of the training and the cases."),
    config: Optional[Path] = config_option("demo"),
) -> None:
    """The whole job on the bundled pelvis CT: train a model, simulate X-rays, register them, write a report.

    Run again into the same folder: resumes an interrupted training (model.last.pt), reuses a finished one.

    Example: xraypose demo            (≈ 10 min on 2 CPU cores)
             xraypose demo --fast     (≈ 1 min)
    """
    from dataclasses import replace

    from xraypose.demo import DemoSettings, run_demo

    s = DemoSettings.fast() if fast else DemoSettings()
    if train_seconds is not None:  # ranges: xraypose.cli.options
        s = replace(s, train_seconds=train_seconds)
    if cases is not None:
        s = replace(s, cases=cases)
    run_demo(output, replace(s, seed=seed))
