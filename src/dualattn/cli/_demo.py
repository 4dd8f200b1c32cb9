"""CLI commands: demo and report (see dualattn.cli).

``dualattn demo [--preset tiny|default|full|tiny3d|3d|3d-full] [--dataset NAME|PATH] --out DIR`` runs the whole job;
``dualattn report RESULTS.json --out report.html`` renders a results file as the HTML report.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from ._errors import fail, user_errors
from ._options import threads_option, use_threads

app = typer.Typer()


@app.command("demo")
@user_errors()
def demo_cmd(
    preset: str = typer.Option("default", "--preset", "-p", help="tiny (about 20 s on 2 CPU cores), default "
                               "(14 min on 2 idle CPU cores), full (the paper's protocol, for a GPU), tiny3d (about "
                               "40 s), 3d (3-D volumes, 18 min on 2 idle CPU cores) or 3d-full (3-D, for a GPU); "
                               "measurements in docs/demo.md."),
    dataset: str = typer.Option(None, "--dataset", "-d", help="synthetic-brain (the 2-D presets' default), "
                                "synthetic-pet, br35h, synthetic-brain-3d (the 3-D presets' default), or a folder in "
                                "the dataset folder format."),
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Output folder; re-running with the same "
                             "folder reuses finished steps."),
    training_progress: bool = typer.Option(False, "--training-progress", help="Show Lightning's progress bars."),
    threads: int = threads_option(),
) -> None:
    """Train the baseline and every attention variant, explain with every method, evaluate, write the report."""
    from rich.console import Console

    from ..pipelines.demo import run_demo

    console = Console(stderr=True)
    use_threads(threads)
    if not training_progress:  # Lightning's per-run banners drown the demo's own progress lines
        for name in ("lightning.pytorch", "lightning.fabric", "lightning", "lightning.pytorch.utilities.rank_zero",
                     "lightning.fabric.utilities.rank_zero"):
            logging.getLogger(name).setLevel(logging.WARNING)

    def show(message: str) -> None:
        style = "green" if message.startswith("[done]") else "cyan" if message.startswith("[reuse]") else "bold"
        # soft_wrap: a long line (a path) is never broken into pieces by rich at the terminal's width
        console.print(message, style=style, markup=False, highlight=False, soft_wrap=True)

    from ..train.quiet import quiet_lightning

    with quiet_lightning():
        outcome = run_demo(preset=preset, dataset=dataset, out=out, progress=show,
                           show_training_progress=training_progress,
                           show_evaluation_progress=console.is_terminal)
    import json

    for warning in json.loads(outcome.results.read_text(encoding="utf-8")).get("warnings") or []:
        console.print(f"warning: {warning}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    console.print(f"results: {outcome.results}\nreport:  {outcome.report}\nwall time: "
                  f"{outcome.wall_time_s:.0f} s", markup=False, highlight=False, soft_wrap=True)


@app.command("report")
@user_errors()
def report_cmd(
    results: Path = typer.Argument(..., help="results.json written by `dualattn evaluate` or `dualattn demo`."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write."),
    examples: Path = typer.Option(None, "--examples", help="examples.npz written by `dualattn demo` or "
                                  "`dualattn evaluate` (default: the one beside RESULTS.json, if any)."),
) -> None:
    """Render a results file as one self-contained HTML report."""
    from rich.console import Console

    from ..pipelines.examples import load_examples
    from ..report import write_report

    console = Console(stderr=True)
    try:
        data = json.loads(results.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        fail(f"cannot read {results}: {exc}")
    if examples is None and (results.parent / "examples.npz").is_file():
        examples = results.parent / "examples.npz"
    path = write_report(data, out, examples=load_examples(examples) if examples else None)
    console.print(f"report: {path}", markup=False, highlight=False, soft_wrap=True)
