"""Command-line interface: a thin layer over the library.

User errors (bad files, values, geometry) and xraypose's other own errors (an output that cannot be
written, a training that diverged: :class:`xraypose.errors.XrayposeError`) print one line
``xraypose: error: …`` and exit with status 2; ``--debug`` shows the Python traceback instead.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from xraypose.cli.config import config_option
from xraypose.cli.options import CheckedCommand, option_numbers
from xraypose.errors import InputError, XrayposeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="xraypose: find where an X-ray was taken from (CT + X-ray → 6-DoF C-arm pose).",
    pretty_exceptions_enable=False,
)

@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks for errors.")) -> None:
    """Declares --debug for the help; :func:`main` reads it from the command line (accepted anywhere)."""


def read_pose_json(path: Path):
    """(1, 4, 4) float64 camera_to_world from a pose file (:func:`xraypose.register.initializers.pose_from_json`)."""
    from xraypose.register.initializers import pose_from_json

    return pose_from_json(path)


@app.command()
def render(
    ct: str = typer.Argument(..., help="CT file (NIfTI, NRRD, MHA, DICOM folder) or 'sample' for the bundled pelvis CT."),
    output: Path = typer.Option(..., "-o", "--output", help="Output image: .npy (raw line integrals) or .png (8-bit, min–max)."),
    pose_json: Optional[Path] = typer.Option(None, "--pose-json", help='JSON file holding {"camera_to_world": 4×4} (mm).'),
    pose: Optional[str] = typer.Option(
        None, "--pose", help="C-arm angles 'PRIMARY,SECONDARY' in degrees: LAO+/RAO−, CRAN+/CAUD−. Example: --pose 30,-10"
    ),
    sod: Optional[float] = typer.Option(None, "--sod", help="Source-to-isocenter distance for --pose, mm (default 0.6·sdd)."),
    isocenter: Optional[str] = typer.Option(None, "--isocenter", help="'X,Y,Z' world RAS mm for --pose (default: volume centre)."),
    sdd: float = typer.Option(1020.0, "--sdd", help="Source-to-detector distance, mm."),
    height: int = typer.Option(256, "--height", help="Detector rows, pixels."),
    width: Optional[int] = typer.Option(None, "--width", help="Detector columns, pixels (default: height)."),
    delx: float = typer.Option(1.2, "--delx", help="Pixel spacing along columns, mm."),
    dely: Optional[float] = typer.Option(None, "--dely", help="Pixel spacing along rows, mm (default: delx)."),
    x0: float = typer.Option(0.0, "--x0", help="Principal-point offset along +u, mm."),
    y0: float = typer.Option(0.0, "--y0", help="Principal-point offset along +v, mm."),
    reverse_x_axis: bool = typer.Option(False, "--reverse-x-axis", help="Mirror the image columns (radiological display)."),
    renderer: str = typer.Option("trilinear", "--renderer", help="trilinear | siddon"),
    samples: Optional[int] = typer.Option(None, "--samples", help="Trilinear samples per ray."),
    step: Optional[float] = typer.Option(None, "--step", help="Trilinear step, mm (default: half the smallest voxel spacing)."),
    density: str = typer.Option("hu", "--density", help="hu (DiffPose seed model) | physical (μ, 1/mm, ~70 keV) | raw"),
    bone_multiplier: float = typer.Option(1.0, "--bone-multiplier", help="bone_attenuation_multiplier (hu/physical)."),
    config: Optional[Path] = config_option("render"),
) -> None:
    """Render a DRR of a CT at a pose.

    Example:

    xraypose render sample --pose 0,0 --sdd 1020 --height 256 --delx 1.2 -o drr.png
    """
    from xraypose.api import render_drr

    if samples is not None and step is not None:
        raise InputError("give --samples or --step, not both")
    if (pose_json is None) == (pose is None):
        raise InputError("give exactly one of --pose-json FILE or --pose PRIMARY,SECONDARY")
    suffix = output.suffix.lower()
    if suffix not in (".npy", ".png"):
        raise InputError(f"output must end in .npy or .png, got {output.name!r}")
    from xraypose.camera import Camera
    from xraypose.io import check_output_file
    from xraypose.volume import load_ct

    check_output_file(output)  # before rendering
    cam = Camera(sdd=sdd, height=height, width=width or height, delx=delx, dely=dely, x0=x0, y0=y0,
                 reverse_x_axis=reverse_x_axis)
    vol = load_ct(ct)
    if pose_json is not None:
        T = read_pose_json(pose_json)
    else:
        from xraypose.camera import carm_pose, default_sod

        a, b = option_numbers("pose", pose)
        iso = option_numbers("isocenter", isocenter) if isocenter else vol.get_isocenter()
        T = carm_pose(a, b, sod=sod if sod is not None else default_sod(sdd), isocenter=iso)
    img = render_drr(vol, cam, T, renderer=renderer, n_samples=samples, step=step, density=density,
                     bone_attenuation_multiplier=bone_multiplier)
    from xraypose.io import save_image

    save_image(output, img)
    typer.echo(f"wrote {output} ({cam.height}×{cam.width}, line integrals {img.min():.3g}…{img.max():.3g})")


@app.command()
def info(
    path: str = typer.Argument(..., help="A CT (file, DICOM folder or 'sample'), an X-ray (DICOM/PNG/TIFF/NPY) or a model (.pt)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show what xraypose reads from a file: sizes, spacing, intrinsics, header values and where each came from.

    Examples: xraypose info sample;  xraypose info xray.dcm;  xraypose info model.pt --json
    """
    from xraypose.info import format_info
    from xraypose.info import info as read_info

    d = read_info(path)
    typer.echo(json.dumps(d, indent=2, default=str) if as_json else format_info(d))


@app.command()
def demo(
    output: Path = typer.Option(Path("xraypose-demo"), "-o", "--output", help="Folder for the report and results."),
    fast: bool = typer.Option(False, "--fast", help="A one-minute version (short training, 3 X-rays)."),
    train_seconds: Optional[float] = typer.Option(None, "--train-seconds", help="Training budget, seconds."),
    cases: Optional[int] = typer.Option(None, "--cases", help="How many synthetic X-rays to register."),
    seed: int = typer.Option(0, "--seed", help="Seed of the training and the cases."),
    config: Optional[Path] = config_option("demo"),
) -> None:
    """The whole job on the bundled pelvis CT: train a model, simulate X-rays, register them, write a report.

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


def _register_optional_commands() -> None:
    """Commands that live in their own modules (one job each)."""
    from xraypose.cli.evaluate import evaluate_command
    from xraypose.cli.register import register_command
    from xraypose.cli.train import train_command
    from xraypose.cli.track import track_command

    app.command("train")(train_command)
    app.command("register")(register_command)
    app.command("evaluate")(evaluate_command)
    app.command("track")(track_command)


_register_optional_commands()


def _check_options_when_parsed() -> None:
    """Every command checks its option values right after parsing (ranges: :mod:`xraypose.cli.options`)."""
    for command in app.registered_commands:
        command.cls = CheckedCommand


_check_options_when_parsed()


@functools.lru_cache(maxsize=1)
def _command():
    """The parser of all commands, built once (typer rebuilds it on every ``app()`` call: 0.15 s)."""
    return typer.main.get_command(app)


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line ``xraypose: warning: …`` on stderr (not Python's file:line and source)."""
    print(f"xraypose: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``xraypose`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `torchrun ... -m xraypose.cli -- evaluate ...` (some Pythons pass the "--" on)
        argv = argv[1:]
    debug = "--debug" in argv
    import warnings

    with warnings.catch_warnings():  # restores the caller's warning handling afterwards
        warnings.showwarning = _print_warning
        return _run(argv, debug)


def _run(argv: list[str], debug: bool) -> int:
    if debug:  # accepted anywhere on the line
        argv = ["--debug"] + [a for a in argv if a != "--debug"]
    try:
        _command()(args=argv, prog_name="xraypose", standalone_mode=False)
    except XrayposeError as e:  # bad input (InputError), an output that cannot be written, a failed run
        if debug:
            raise
        print(f"xraypose: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        if debug:
            raise
        print(f"xraypose: error: file not found: {e.filename or e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output that cannot be written, a full disk, ... (one line, no traceback)
        if debug:
            raise
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"xraypose: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xraypose: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # typer's own exits
        return int(e.code or 0)
    except Exception as e:
        # Usage errors of the command-line parser (typer's click): bad option, missing argument...
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            if type(e).__name__ == "Abort":
                return 1
            if debug:
                raise
            print(f"xraypose: error: {e.format_message()}", file=sys.stderr)
            return 2
        raise
    return 0

