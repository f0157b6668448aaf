"""``xraypose info PATH``: what xraypose reads from a CT, an X-ray or a model (:mod:`xraypose.info`)."""

from __future__ import annotations

import json

import typer

from xraypose.cli.options import Group, intrinsics_options, with_groups


@with_groups
def info_command(
    path: str = typer.Argument(..., help="A CT (file, DICOM folder or 'sample'), an X-ray (DICOM/PNG/TIFF/NPY) or a model (.pt)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    read_kw: dict = Group(intrinsics_options),
) -> None:
    """Show what xraypose reads from a file: sizes, spacing, intrinsics, header values and where each came from.

    An X-ray's header values can be overridden as `register` and `track` do (--sdd, --delx, --dely, --x0, --y0,
    --kind): the output then shows what those commands would read.

    Examples: xraypose info sample;  xraypose info xray.dcm;  xraypose info xray.png --sdd 1020 --delx 0.3 --dely 0.3;
    xraypose info model.pt --json
    """
    from xraypose.info import format_info
    from xraypose.info import info as read_info

    d = read_info(path, **{k: v for k, v in read_kw.items() if v is not None})
    typer.echo(json.dumps(d, indent=2, default=str) if as_json else format_info(d))
