"""CLI commands: explain (see dualattn.cli).

``dualattn explain SCAN --run RUN [--method VARIANT] [--block 3] [--target CLASS] [--axis axial]
[--volume-rule max|mean] [--record-path] [--name STEM | --keep-name] [--json] --out OUT`` explains one
image, volume or DICOM series folder with a trained run and writes the prediction JSON, the heatmap (NPY
and NIfTI on the input's own voxel grid) and an overlay PNG (a tri-planar PNG for volumes). The terminal
gets a short summary (class, probability, deciding slice, the map's sharpness and a warning when it is
near uniform, the files); ``--json`` prints the full JSON instead. A volume given to a 2-D model is explained slice by slice as acquired
(``--axis`` overrides), background slices skipped; the JSON lists every slice's probabilities and the
deciding slice, which the overlay draws (see :mod:`dualattn.pipelines.scan`).

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
from ._options import parse_block, threads_option, use_threads

app = typer.Typer()

#: Named in ``--method``'s help; every one is accepted (tests/test_scan_volumes.py checks them against the
#: explain registry). The full list: ``dualattn.explain.list_methods()`` and ``METHOD_ALIASES``.
HELP_METHODS = ("attention", "exact", "dual", "tau_l", "gradcam", "integrated_gradients", "ig", "input_x_gradient",
                "ixg", "deeplift", "lrp", "random")


@app.command("explain")
@user_errors(typer.BadParameter)
def explain_cmd(
    scan: Path = typer.Argument(..., help="Image or volume: PNG/JPG, NPY, NIfTI (.nii/.nii.gz), DICOM file or "
                                "series folder, NRRD."),
    run: Path = typer.Option(..., "--run", help="Run folder written by `dualattn train` (or one inside a demo "
                             "folder, e.g. DEMO/runs/exact/seed0)."),
    method: str = typer.Option(None, "--method", "-m", help="Explanation method, a name or alias of the explain "
                               "registry: " + ", ".join(f"`{m}`" for m in HELP_METHODS) + ", ... (all: "
                               "dualattn.explain.list_methods() and METHOD_ALIASES). Default: the run's own "
                               "attention map (the method named after its variant: `exact`, `dual`, "
                               "`tau_l`...), or `gradcam` for a baseline run."),
    block: str = typer.Option(None, "--block", help="Block to explain: 3 or block3 (as `evaluate --blocks`). "
                              "Default: block3, the fine gate."),
    which: str = typer.Option("best", "--which", help="Checkpoint: best or last."),
    target: str = typer.Option(None, "--target", help="Class to explain, an index or a class name of the run "
                               "(default: the predicted one). Only post-hoc maps (gradcam, lrp, ig, ...) depend on "
                               "it; an attention map is the same for every class (a note says so)."),
    axis: str = typer.Option(None, "--axis", help="Volumes with a 2-D model: the axis to cut, axial, coronal, "
                             "sagittal, or 0/1/2 (axes of the array as read: canonical RAS for NIfTI/DICOM/NRRD). "
                             "Default: the axis the slices were acquired along (a DICOM series: its images; "
                             "NIfTI: the header's slice dimension, else the thickest voxels, else axial)."),
    volume_rule: str = typer.Option("max", "--volume-rule", help="Volumes with a 2-D model: max (default: the "
                                    "slice with the highest probability of the lesion class, the last class, "
                                    "decides) or mean (mean probabilities over the slices that are not background)."),
    background: float = typer.Option(0.01, "--background", help="Skip slices whose every voxel lies within this "
                                     "fraction of the volume's intensity range above its minimum (all-zero "
                                     "slices). 0 skips only slices at the minimum."),
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
    threads: int = threads_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the full prediction JSON (also written to OUT) "
                                 "instead of the short summary."),
) -> None:
    """Predict and explain one scan: class + probability, heatmap overlay PNG, NPY and NIfTI.

    Prints a short summary (class, probability, deciding slice of a volume, the map's sharpness, the files
    written); the full record is OUT/<name>.prediction.json (on stdout with --json).
    """
    from rich.console import Console
    from rich.markup import escape

    from ..pipelines.scan import _validate_stem, explain_scan, terminal_summary, write_scan_explanation

    console = Console(stderr=True)
    if name is not None:
        _validate_stem(name)  # before the model runs
    blk = None if block is None else parse_block(block, option="--block")
    use_threads(threads)
    result = explain_scan(scan, run=run, method=method, block=blk, which=which, target=target, axis=axis,
                          volume_rule=volume_rule, background=background, progress=True)
    result.record_path = record_path
    files = write_scan_explanation(result, out, stem=name, keep_name=keep_name)
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)
    if as_json:
        summary = json.loads(files["prediction_json"].read_text(encoding="utf-8"))
        summary["files"] = {k: str(p) for k, p in files.items()}
        typer.echo(json.dumps(summary, indent=2))
        return
    for line in terminal_summary(result, files):
        typer.echo(line)
