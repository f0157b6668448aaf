"""``xraypose info PATH``: what xraypose reads from a CT, an X-ray or a model (:mod:`xraypose.info`)."""

from __future__ import annotations

import json

import typer


def info_command(
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
