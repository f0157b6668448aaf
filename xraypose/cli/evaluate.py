"""``xraypose evaluate SOURCE -o OUTDIR``: register a case folder's or a dataset's X-rays and report the errors.

Registered in :mod:`xraypose.cli` with ``app.command("evaluate")(evaluate_command)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from xraypose.cli.config import config_option
from xraypose.cli.options import (ALLOW_OTHER_CT, MODEL, RESAMPLE_DOMAIN, SIZE_DEFAULT, Group, option_numbers,
                                  registration_options, with_groups)
from xraypose.limits import check_registrable_ct, check_registrable_xray


def file_id(path: Path) -> str:
    """A file named by its absolute path and content hash (a resume with another file is refused)."""
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "missing"
    return f"{path.resolve()} (sha256 {digest})"


@with_groups
def evaluate_command(
    source: Path = typer.Argument(..., help="A case folder (ct.*, xrays/, poses.json, fiducials.csv) or a "
                                  "DeepFluoro / Ljubljana HDF5 file (with --specimen)."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder: report.html, metrics.csv, "
                                "summary.json, cases/NAME/ (pose.json, pose.tfm, landmarks.csv, pictures)."),
    specimen: Optional[int] = typer.Option(None, "--specimen", help="DeepFluoro specimen 1-6 / Ljubljana subject 1-10."),
    model: Optional[Path] = MODEL,
    start: Optional[str] = typer.Option(
        None, "--start",
        help="model (--model) | angles (each X-ray's C-arm angles) | perturb (the true pose moved by --perturb) | "
             "pose (--pose-json for all) | ap (an AP view of the isocenter). Default: model with --model, else "
             "angles when every X-ray has them, else perturb."),
    perturb: str = typer.Option("10,40", "--perturb", help="'DEGREES,MM' for --start perturb: an exact rotation "
                                "about a random axis through the isocenter and an exact shift."),
    pose_json: Optional[Path] = typer.Option(None, "--pose-json", help='Start pose for --start pose: {"camera_to_world": 4×4}.'),
    sod: Optional[float] = typer.Option(None, "--sod", help="Source-to-isocenter distance of --start ap, mm (default 0.6 × sdd)."),
    size: int = typer.Option(SIZE_DEFAULT, "--size", help="Register images resized to at most this many rows."),
    resample_domain: str = RESAMPLE_DOMAIN,
    structure: str = typer.Option("pelvis", "--structure", help="DeepFluoro: pelvis | left-femur | right-femur."),
    cfg_kw: dict = Group(registration_options),
    pictures: bool = typer.Option(True, "--pictures/--no-pictures", help="Draw each case's pictures (slower)."),
    resume: bool = typer.Option(False, "--resume", help="Keep the cases already written in OUTDIR (the settings "
                                "must be those of its run.json, the inputs unchanged since; a difference is refused)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier evaluation in OUTDIR (refused "
                                   "without --resume or --overwrite)."),
    allow_other_ct: bool = ALLOW_OTHER_CT,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    config: Optional[Path] = config_option("evaluate"),
) -> None:
    """Register every X-ray of a case folder or a dataset and write a metrics table and a report.

    Examples:

    xraypose evaluate mycase -o eval/ --start perturb --perturb 10,40

    xraypose evaluate ipcai_2020_full_res_data.h5 --specimen 1 --model model.pt -o eval1/

    torchrun --nproc_per_node 2 -m xraypose.cli -- evaluate mycase -o eval/ --start perturb (2 processes share the X-rays)
    """
    from xraypose.evaluate import check_output_outside_xrays, evaluate, load_eval_set
    from xraypose.io import check_output_folder
    from xraypose.register import RegistrationConfig
    from xraypose.register.starts import check_start, evaluation_start
    from xraypose.shards import Shards

    check_start(start, model=model, pose_json=pose_json)
    check_output_folder(output)  # before reading the data and registering
    check_output_outside_xrays(source, output)
    shards = Shards.from_env()  # under torchrun: this rank's share of the X-rays, merged on rank 0
    deg, mm = option_numbers("perturb", perturb)
    ev = load_eval_set(source, specimen=specimen, size=size, structure=structure, resample_domain=resample_domain)
    check_registrable_ct(ev.volume)
    for c in ev.cases:
        check_registrable_xray(tuple(c.image.shape), f"{source}: X-ray {c.name}")
    start, rule, label = evaluation_start(start, ev, model=model, pose_json=pose_json, sod=sod, perturb=(deg, mm),
                                          seed=cfg_kw["seed"], allow_other_ct=allow_other_ct, source=source,
                                          foreign_steps=cfg_kw.get("foreign_steps", 12.0))
    cfg = RegistrationConfig(drr_blur=ev.blur_px, **cfg_kw)
    settings = _start_settings(start, model, pose_json, (deg, mm), sod)
    try:
        s = evaluate(ev, output, rule, config=cfg, start_label=label, pictures=pictures, resume=resume,
                     overwrite=overwrite, settings={"--specimen": specimen, "--size": size, "--structure": structure,
                                                    **settings,  # the default's order unrecorded: older runs resume
                                                    **({} if resample_domain == "auto" else
                                                       {"--resample-domain": resample_domain})},
                     quiet=quiet, shards=shards)
    finally:
        shards.close()
    if shards.is_main:
        _print_summary(s, output)


def _start_settings(start: str, model: Path | None, pose_json: Path | None, perturb: tuple, sod) -> dict:
    """What ``run.json`` records of the start (checked on a resume): the start and the options it used."""
    return {"--start": start,
            "--perturb": list(perturb) if start == "perturb" else None,
            "--model": file_id(model) if start == "model" else None,
            "--pose-json": file_id(pose_json) if start == "pose" else None,
            "--sod": sod if start == "ap" else None}


def _print_summary(s: dict, output: Path) -> None:
    """The report's path and a line of results (success rates and median mTRE when the truth is known)."""
    typer.echo(f"report: {(output / 'report.html').resolve()}")
    n = f"{s['n_cases']} X-ray{'' if s['n_cases'] == 1 else 's'}"
    if "sr_1mm" in s:
        typer.echo(f"{n}: success (mTRE < 1 mm) {100 * s['sr_1mm']:.0f} %, "
                   f"< 2 mm {100 * s['sr_2mm']:.0f} %, median mTRE {s.get('median_mtre_mm', float('nan')):.3f} mm, "
                   f"median registration {s['median_opt_s']:.2f} s")
    else:
        typer.echo(f"{n} registered (no ground truth): median {s['median_opt_s']:.2f} s")
