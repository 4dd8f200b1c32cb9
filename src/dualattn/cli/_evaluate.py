"""CLI command: ``dualattn evaluate`` (see dualattn.cli and dualattn.evaluate.runner)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ._options import parse_blocks, threads_option, use_threads
from ._errors import fail, user_errors

app = typer.Typer()


def parse_methods(text: str) -> str | list[str]:
    """``"all"`` or a comma-separated list of method names."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise typer.BadParameter("--methods names no method")
    return "all" if parts == ["all"] else parts


@app.command(
    "evaluate",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": False},
)
@user_errors(typer.BadParameter)
def evaluate(
    ctx: typer.Context,
    runs: List[Path] = typer.Option(
        ..., "--runs", "-r",
        help="Run folders, or folders holding runs (searched recursively). Several may follow one --runs.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: results.json, table*.md/.csv, tables.md."),
    baseline: Optional[List[Path]] = typer.Option(
        None, "--baseline", "-b",
        help="Baseline run(s): post-hoc explainers and the perturbation classifier. "
        "Default: the runs of variant 'baseline'.",
    ),
    data: Optional[str] = typer.Option(
        None, "--data", "-d", help="Dataset folder or embedded name. Default: the runs' training dataset."
    ),
    methods: str = typer.Option("all", "--methods", "-m", help="'all' or a comma list, e.g. exact,gradcam,random."),
    blocks: str = typer.Option("3,4", "--blocks", help="Blocks to explain: 3,4 or block3,block4."),
    split: str = typer.Option("test", "--split", help="Data split: test, val, train or all."),
    size: Optional[int] = typer.Option(None, "--size", help="Evaluation image size. Default: the runs' training size."),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Evaluate at most this many images."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per explain call."),
    fills: str = typer.Option(
        "mean,background,blur,road", "--fills", "--perturbation",
        help="What replaces removed pixels in the perturbation protocol, a comma list of mean (the paper's), "
        "background, blur, road (ROAD's noisy linear imputation) and zero; each gets its own AUC and SRG keys, "
        "the first also the un-suffixed ones.",
    ),
    steps: int = typer.Option(10, "--steps", help="Perturbation fractions 0, 1/steps, ..., 1."),
    protocols: str = typer.Option(
        "common_classifier,own_model", "--protocols",
        help="common_classifier (the paper's: every map scored on the baseline) and/or own_model (every map "
        "scored on the model it comes from; post-hoc explainers also explain every gated model).",
    ),
    own_model_methods: str = typer.Option(
        "all", "--own-model-methods",
        help="Post-hoc explainers and controls that also explain every gated model under own_model: 'all' or a "
        "comma list, e.g. lrp,gradcam_norelu,random.",
    ),
    hiding_ks: str = typer.Option(
        "10,20,35", "--hiding-ks",
        help="Hiding test: keep the top k % of each map's foreground cells and swap the rest with a matched "
        "healthy test image; comma list of k ('' or 0: off).",
    ),
    hiding_fills: str = typer.Option(
        "partner", "--hiding-fills",
        help="What replaces the swapped pixels: partner (matched healthy images of other patients) and/or road "
        "(ROAD's imputation, for data without registered partners).",
    ),
    sanity_images: int = typer.Option(8, "--sanity-images", help="Images for the weight-randomization check (0: off)."),
    ig_steps: int = typer.Option(32, "--ig-steps", help="Integrated-gradients steps."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random reference and the weight randomization."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    examples: int = typer.Option(
        4, "--examples", min=0,
        help="Example scans for the report's overlay grid: every method's map on N positive scans, written to "
        "OUT/examples.npz, which `dualattn report OUT/results.json` draws (0: none).",
    ),
    resume: bool = typer.Option(
        True, "--resume/--no-resume",
        help="Reuse the (method, run) units a previous, possibly interrupted, call finished: each is "
        "recorded in OUT/.partial/ with a fingerprint of the runs' weights, data and settings, and is "
        "recomputed when that fingerprint differs or the record is unreadable. --no-resume recomputes "
        "every unit and overwrites the records.",
    ),
    threads: Optional[int] = threads_option(),
) -> None:
    """Explain trained runs with every method; score implicit segmentation and input perturbation.

    Writes OUT/results.json (every metric per method and block, mean ± std over runs; schema in
    docs/evaluation.md) and the paper's Tables 1-3 (+ diagnostics) as Markdown and CSV.
    An interrupted call resumes: finished (method, run) units are kept in OUT/.partial/.
    """
    from rich.console import Console

    console = Console(stderr=True)
    extra = [a for a in ctx.args]
    bad = [a for a in extra if a.startswith("-")]
    if bad:
        fail(f"unknown option(s) {bad}")
    all_runs = [*runs, *(Path(a) for a in extra)]
    block_list = parse_blocks(blocks)
    method_arg = parse_methods(methods)
    fill_list = tuple(f.strip() for f in fills.split(",") if f.strip())
    use_threads(threads)
    from dualattn.evaluate import EvalSettings, evaluate_runs

    settings = EvalSettings(
        data=data, methods=method_arg, blocks=tuple(block_list), split=split, size=size, max_images=max_images,
        batch_size=batch_size, fills=fill_list, perturbation_steps=steps, sanity_images=sanity_images,
        ig_steps=ig_steps, seed=seed, device=device, resume=resume,
        protocols=tuple(p.strip() for p in protocols.split(",") if p.strip()),
        own_model_methods=parse_methods(own_model_methods),
        hiding_ks=tuple(int(k) for k in hiding_ks.split(",") if k.strip() and int(k) != 0),
        hiding_fills=tuple(f.strip() for f in hiding_fills.split(",") if f.strip()),
    )
    path = evaluate_runs(all_runs, out=out, settings=settings, baseline=baseline or None, progress=progress)
    results = json.loads(path.read_text(encoding="utf-8"))
    for note in results.get("notes") or []:
        console.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
    for warning in results.get("warnings") or []:
        console.print(f"[bold yellow]warning:[/bold yellow] {warning}", soft_wrap=True)
    tables = out / "tables.md"
    if tables.is_file():
        typer.echo(tables.read_text(encoding="utf-8"))
    console.print(f"wrote {path}", soft_wrap=True)
    if examples:
        from dualattn.pipelines.examples import examples_for_results

        try:
            done = examples_for_results(path, n=examples)
        except ValueError as exc:  # the evaluation is written; the grid is a bonus
            console.print(f"[bold yellow]warning:[/bold yellow] no example grid: {exc}", soft_wrap=True)
        else:
            if done.get("file"):
                console.print(f"wrote {done['file']} ({done['n']} scans, {len(done['methods'])} methods; "
                              f"`dualattn report {path}` draws them)", soft_wrap=True, markup=False)
            else:
                console.print("[bold yellow]warning:[/bold yellow] no positive scan in the split: no example grid",
                              soft_wrap=True)
