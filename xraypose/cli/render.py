"""``xraypose render CT --pose A,B -o drr.png``: a DRR of a CT at a pose (:func:`xraypose.api.render_drr`)."""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from xraypose.cli.config import config_option
from xraypose.cli.options import CT, option_numbers, read_pose_json
from xraypose.errors import InputError, RunError


def render_command(
    ct: str = CT,
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
    density: str = typer.Option("hu", "--density", help="hu (DiffPose seed model) | physical (μ, 1/mm, ~70 keV) | linear (max(HU + 1000, 0), "
                                 "registration's) | raw (the voxel values)"),
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
    from xraypose.camera import Camera, check_sod
    from xraypose.io import check_output_file
    from xraypose.volume import load_ct

    check_output_file(output)  # before rendering
    if pose is not None and sod is not None:
        check_sod(sod, sdd, "--sod", "--sdd")
    cam = Camera(sdd=sdd, height=height, width=width or height, delx=delx, dely=dely, x0=x0, y0=y0,
                 reverse_x_axis=reverse_x_axis)
    with _out_of_memory_as_error(f"rendering a {cam.height} × {cam.width} DRR"):
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


@contextmanager
def _out_of_memory_as_error(what: str):
    """An allocation that fails (MemoryError, torch's "can't allocate memory" / "out of memory") as a
    one-line :class:`~xraypose.errors.RunError` instead of a traceback; render_drr's estimate refuses most
    sizes up front, this catches what it does not foresee (memory used by others, a larger CT)."""
    from xraypose.limits import human_bytes

    try:
        yield
    except MemoryError:
        raise RunError(f"{what} ran out of memory: render fewer pixels") from None
    except RuntimeError as e:  # torch's allocators (CPU, CUDA) raise RuntimeError
        text = str(e)
        if "can't allocate memory" not in text and "out of memory" not in text.lower():
            raise
        m = re.search(r"tried to allocate (\d+) bytes", text)
        asked = f" (an allocation of {human_bytes(int(m.group(1)))} failed)" if m else ""
        raise RunError(f"{what} ran out of memory{asked}: render fewer pixels") from None
