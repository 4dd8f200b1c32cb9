"""CLI command ``dualattn check DATA`` (see dualattn.cli and dualattn.data.check)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ._errors import user_errors

app = typer.Typer()


@app.command("check")
@user_errors()
def check(
    data: Path = typer.Argument(..., help="Dataset folder (labels.csv + files)."),
    in_channels: Optional[int] = typer.Option(
        None, "--in-channels", help="Channels the model takes (default: dataset.json's, else most images')."),
    same_size: bool = typer.Option(
        False, "--same-size", help="Every image must have the same size (training without image_size)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Read every image, mask and labels.csv row once; list every problem. Exit code 2 when any."""
    from dualattn.data.check import check_dataset

    if in_channels is not None and in_channels < 1:
        raise typer.BadParameter(f"--in-channels {in_channels} must be >= 1")
    if progress and not as_json:
        from rich.progress import Progress

        with Progress(transient=True, console=_stderr()) as bar:
            task = bar.add_task("reading", total=None)
            report = check_dataset(data, in_channels=in_channels, same_size=same_size,
                                   on_item=lambda done, total: bar.update(task, completed=done, total=total))
    else:
        report = check_dataset(data, in_channels=in_channels, same_size=same_size)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        typer.echo(report.format())
    if not report.ok:
        raise typer.Exit(code=2)


def _stderr():  # noqa: ANN202
    from rich.console import Console

    return Console(stderr=True)
