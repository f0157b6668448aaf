"""``xraypose datasets example OUT | check CASE [--out PNG_DIR] | fixtures OUT [--full]``: case folders and
dataset files (:mod:`xraypose.datasets`).

* ``example OUT`` — write an example case folder made from the bundled CT.
* ``check CASE`` — read a case folder, print every value read (header reports), and the NCC
  between each X-ray and a DRR at its pose (ground truth, else the C-arm angles' pose).
* ``fixtures OUT`` — write layout-exact DeepFluoro and Ljubljana HDF5 files from a CT.

``python -m xraypose.datasets …`` runs these commands (:mod:`xraypose.datasets.__main__`).
"""

from __future__ import annotations

from typing import Optional

import typer

from xraypose.cli.options import option_numbers

app = typer.Typer(no_args_is_help=True, help="Case folders and dataset files: an example case, a check of a case, "
                  "layout-exact DeepFluoro / Ljubljana stand-ins.")


@app.command("example")
def example_command(
    out: str = typer.Argument(..., help="The case folder to write (new or empty)."),
) -> None:
    """Write an example case folder made from the bundled CT (a DICOM and an NPY X-ray, poses, fiducials).

    Example: xraypose datasets example mycase
    """
    from xraypose.datasets.case_folder import make_example_case

    typer.echo(f"wrote {make_example_case(out)}")


@app.command("check")
def check_command(
    case: str = typer.Argument(..., help="A case folder (ct.*, xrays/, poses.json, fiducials.csv)."),
    out: Optional[str] = typer.Option(None, "--out", help="Folder for X-ray / DRR PNGs."),
) -> None:
    """Read a case folder; print what was read and the NCC of each X-ray with a DRR at its pose.

    Example: xraypose datasets check mycase --out pngs/
    """
    from xraypose.datasets.case_folder import check_case, load_case

    loaded = load_case(case, preprocess=False)
    typer.echo(f"CT: {loaded.volume}")
    for xr in loaded.xrays:
        typer.echo(xr.report())
    typer.echo(f"fiducials: {0 if loaded.fiducials is None else len(loaded.fiducials)}; "
               f"ground-truth poses: {', '.join(loaded.poses) or 'none'}")
    for row in check_case(case, out):
        n = "n/a (no pose or no camera)" if row["ncc"] is None else f"{row['ncc']:.4f}"
        typer.echo(f"{row['xray']}: DRR vs X-ray NCC at the pose from {row['pose_from']}: {n}")


@app.command("fixtures")
def fixtures_command(
    out: str = typer.Argument(..., help="Folder for ipcai_2020_full_res_data.h5 and ljubljana.h5."),
    ct: Optional[str] = typer.Option(None, "--ct", help="CT to use (default: the bundled sample)."),
    full: bool = typer.Option(False, "--full", help="The real 1536² DeepFluoro detector."),
    specimens: str = typer.Option("1,2", "--specimens", help="DeepFluoro specimens to write, e.g. 1,2,3."),
    projections: int = typer.Option(3, "--projections", help="X-rays per DeepFluoro specimen."),
    subjects: str = typer.Option("1,2", "--subjects", help="Ljubljana subjects to write, e.g. 1,2."),
) -> None:
    """Write layout-exact DeepFluoro and Ljubljana HDF5 files (with the truth beside them) from a CT.

    Example: xraypose datasets fixtures data --full
    """
    from xraypose.datasets.fixtures import (check_fixture_target, checked_ids, write_deepfluoro_fixture,
                                            write_ljubljana_fixture)
    from xraypose.volume import read_volume

    # both lists checked before either file is written
    spec_ids = checked_ids(option_numbers("specimens", specimens), "--specimens", 6)
    subj_ids = checked_ids(option_numbers("subjects", subjects), "--subjects", 10)
    from xraypose.io import make_output_folder

    vol = read_volume(ct) if ct else None  # before the folder: a missing or unreadable CT leaves nothing behind
    folder = make_output_folder(out)  # checked: a file of that name is said so ("File exists" was all it said)
    for name in ("ipcai_2020_full_res_data.h5", "ljubljana.h5"):  # both before either is written
        check_fixture_target(folder / name)  # never a real dataset's file of that name
    write_deepfluoro_fixture(folder / "ipcai_2020_full_res_data.h5", volume=vol, detector=1536 if full else 128,
                             specimens=spec_ids, n_projections=projections,
                             principal_offset_px=(0.0, 0.0) if full else (3.0, -2.0), render_scale=4 if full else 1)
    write_ljubljana_fixture(folder / "ljubljana.h5", volume=vol, subjects=subj_ids)
    typer.echo(f"wrote {folder / 'ipcai_2020_full_res_data.h5'} and {folder / 'ljubljana.h5'}")
