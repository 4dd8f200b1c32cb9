"""CLI commands: explain (see dualattn.cli).

``dualattn explain SCAN --run RUN [--method VARIANT] [--block block3] [--record-path] [--name STEM | --keep-name]
--out OUT`` explains one image or volume with a trained run and writes the prediction JSON, the heatmap
(NPY; NIfTI in the scan's geometry) and an overlay PNG.

The output files are named ``scan-<first 12 hex digits of the content SHA-256>.*`` by default, not after
the scan: file and folder names of scans often carry patient identifiers. ``--keep-name`` names them
after the scan's file name, ``--name STEM`` explicitly. ``--record-path`` (the path in the JSON) is
independent of the file names.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ._errors import user_errors

app = typer.Typer()


@app.command("explain")
@user_errors()
def explain_cmd(
    scan: Path = typer.Argument(..., help="Image or volume: PNG/JPG, NPY, NIfTI (.nii/.nii.gz), DICOM, NRRD."),
    run: Path = typer.Option(..., "--run", help="Run folder written by `dualattn train` (or one inside a demo "
                             "folder, e.g. DEMO/runs/exact/seed0)."),
    method: str = typer.Option(None, "--method", "-m", help="Explanation method (`attention`, `exact`, "
                               "`gradcam`, `ig`, ...; see dualattn.explain.list_methods). Default: the run's "
                               "own attention map (the method named after its variant: `exact`, `dual`, "
                               "`tau_l`...), or `gradcam` for a baseline run."),
    block: str = typer.Option(None, "--block", help="Block to explain (default block3, the fine gate)."),
    which: str = typer.Option("best", "--which", help="Checkpoint: best or last."),
    target: int = typer.Option(None, "--target", help="Class to explain (default: the predicted one)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    record_path: bool = typer.Option(False, "--record-path", help="Write the scan's path into the prediction "
                                     "JSON (default: only its format and SHA-256; paths often carry patient "
                                     "identifiers). Does not change the output file names (see --keep-name)."),
    name: str = typer.Option(None, "--name", help="Output file-name stem: STEM.prediction.json, "
                             "STEM.overlay.png, ... (default: scan-<first 12 hex digits of the scan's "
                             "SHA-256>)."),
    keep_name: bool = typer.Option(False, "--keep-name", help="Name the output files after the scan's file "
                                   "name (without extension) instead of its digest. Off by default: file "
                                   "names often carry patient identifiers."),
) -> None:
    """Predict and explain one scan: class + probability (JSON), heatmap overlay PNG, NPY and NIfTI."""
    from rich.console import Console
    from rich.markup import escape

    from ..pipelines.scan import _validate_stem, explain_scan, write_scan_explanation

    console = Console(stderr=True)
    if name is not None:
        _validate_stem(name)  # before the model runs
    result = explain_scan(scan, run=run, method=method, block=block, which=which, target=target)
    result.record_path = record_path
    files = write_scan_explanation(result, out, stem=name, keep_name=keep_name)
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)
    summary = result.summary()
    summary["files"] = {k: str(p) for k, p in files.items()}
    typer.echo(json.dumps(summary, indent=2))
