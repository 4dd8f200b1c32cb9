"""CLI commands ``dualattn data list|make`` and ``dualattn prepare brats|msd|pet`` (see dualattn.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._errors import user_errors

data_app = typer.Typer(help="Embedded datasets: list them, write one in the folder format.", no_args_is_help=True)
prepare_app = typer.Typer(help="The paper's preprocessing: BraTS / MSD halves and volumes, PET coronal MIPs.",
                          no_args_is_help=True)
#: The ``data`` and ``prepare`` command groups, added to the root app.
app = typer.Typer()
app.add_typer(data_app, name="data")
app.add_typer(prepare_app, name="prepare")


@data_app.command("list")
def data_list() -> None:
    """List the embedded datasets with their defaults."""
    from rich.console import Console
    from rich.table import Table

    from ..data import dataset_info, list_datasets

    table = Table("name", "default n", "default size", "masks", "description")
    for name in list_datasets():
        info = dataset_info(name)
        table.add_row(name, str(info.default_n), str(info.default_size), "yes" if info.has_masks else "no", info.description)
    Console().print(table)


@data_app.command("make")
@user_errors()
def data_make(
    name: str = typer.Argument(..., help="Embedded dataset name (see `dualattn data list`)."),
    out: Path = typer.Argument(..., help="Destination folder (folder format: labels.csv + files)."),
    n: Optional[int] = typer.Option(None, "--n", help="Number of items (default: the dataset's)."),
    size: Optional[int] = typer.Option(None, "--size", help="Image side in pixels (default: the dataset's)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed -> identical files)."),
) -> None:
    """Write an embedded dataset (synthetic-brain, synthetic-pet, br35h) to OUT."""
    from ..data import make_dataset

    path = make_dataset(name, out, n=n, size=size, seed=seed)
    typer.echo(f"wrote {path}")


@prepare_app.command("brats")
@user_errors()
def prepare_brats_cmd(
    raw: Path = typer.Argument(..., help="Folder of BraTS cases: *_t1, *_t1ce, *_t2, *_flair, *_seg (BraTS 2018-2021) or "
                             "*-t1n, *-t1c, *-t2w, *-t2f, *-seg (BraTS 2023) NIfTI files."),
    out: Path = typer.Argument(..., help="Destination folder (folder format)."),
    min_area: int = typer.Option(1000, "--min-area", help="Keep axial slices whose tumor area exceeds this many pixels."),
    size: Optional[int] = typer.Option(None, "--size", help="Resize each half to SIZE x SIZE (default: keep)."),
    workers: int = typer.Option(1, "--workers", help="Parallel processes."),
) -> None:
    """BraTS volumes -> tumor / no-tumor hemisphere halves (4 channels + masks). Resumable."""
    from ..data.brats import prepare_brats

    report = prepare_brats(raw, out, min_area=min_area, size=size, workers=workers)
    typer.echo(
        f"{report['cases_done']} cases done ({report['cases_skipped_resume']} already done), "
        f"{len(report['bad_cases'])} bad, {report['items']} items -> {out} (report: {out / 'prepare_report.json'})"
    )


@prepare_app.command("msd")
@user_errors()
def prepare_msd_cmd(
    raw: Path = typer.Argument(..., help="The Medical Segmentation Decathlon's Task01_BrainTumour folder (dataset.json, "
                               "imagesTr/, labelsTr/), or its parent."),
    out: Path = typer.Argument(..., help="Destination folder (folder format)."),
    mode: str = typer.Option("2d", "--mode", help="2d: the paper's tumor / no-tumor halves of axial slices; 3d: volumes "
                             "cut around the brain."),
    size: Optional[int] = typer.Option(None, "--size", help="2d: resize each half to SIZE x SIZE (default: keep); 3d: "
                                       "output side (default 64; hemispheres SIZE/2 x SIZE x SIZE)."),
    min_area: int = typer.Option(1000, "--min-area", help="2d: keep axial slices whose tumor area exceeds this many "
                                 "pixels."),
    negatives: str = typer.Option("hemisphere", "--negatives", help="3d: 'hemisphere' (tumor and tumor-free "
                                  "hemispheres, labels 1 / 0) or 'none' (whole volumes, all with a tumor)."),
    margin: int = typer.Option(4, "--margin", help="3d: voxels kept around the brain's bounding box."),
    workers: int = typer.Option(1, "--workers", help="Parallel processes."),
) -> None:
    """MSD Task01_BrainTumour -> 4-channel (T1, T1ce, T2, FLAIR) halves or volumes + whole-tumor masks. Resumable."""
    from ..data.msd import prepare_msd

    report = prepare_msd(raw, out, mode=mode, size=size, min_area=min_area, negatives=negatives, margin=margin,
                         workers=workers)
    typer.echo(
        f"{report['cases_done']} cases done ({report['cases_skipped_resume']} already done), "
        f"{len(report['bad_cases'])} bad, {report['items']} items (no_tumor / tumor: {report['class_counts'][0]} / "
        f"{report['class_counts'][1]}) -> {out} (report: {out / 'prepare_report.json'})"
    )
    if report.get("note"):
        typer.echo(f"note: {report['note']}")


@prepare_app.command("pet")
@user_errors()
def prepare_pet_cmd(
    raw: Path = typer.Argument(..., help="Folder with one sub-folder (or more) per PET DICOM series."),
    labels: Path = typer.Argument(..., help="CSV with columns series,label (label: normal/mild/severe)."),
    out: Path = typer.Argument(..., help="Destination folder (folder format); no patient identifier is written."),
    size: int = typer.Option(512, "--size", help="Output side in pixels."),
    salt: Optional[str] = typer.Option(
        None, "--salt", help="Secret key (>= 8 characters) for the patient pseudonyms and the resume state; never "
        "written anywhere (prefer --key-file: command lines are visible to other users). Default: a random per-user "
        "key in $DUALATTN_SECRET_DIR or ~/.config/dualattn/secrets, created on first use."),
    key_file: Optional[Path] = typer.Option(
        None, "--key-file", help="File holding the secret key instead of --salt (must lie outside OUT)."),
) -> None:
    """PET DICOM series -> SUVbw -> coronal MIP -> histogram equalization -> SIZE x SIZE. Resumable.

    Re-run with the same key to resume. The output holds no patient identifier and nothing that lets
    one test a candidate patient ID without the key.
    """
    from ..data.pet import prepare_pet

    report = prepare_pet(raw, labels, out, size=size, salt=salt, key_file=key_file)
    typer.echo(f"{report['items']} series written, {len(report['bad_series'])} bad -> {out}")
