"""CLI commands: train (see dualattn.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._errors import fail, user_errors
from ._options import threads_option, use_threads

app = typer.Typer()


def _parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` (inclusive range) -> list of ints."""
    import re

    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        span = re.fullmatch(r"(\d+)-(\d+)", part)
        if span:
            seeds.extend(range(int(span.group(1)), int(span.group(2)) + 1))
        elif re.fullmatch(r"\d+", part):
            seeds.append(int(part))
        else:
            raise typer.BadParameter(f"--seeds {text!r}: use integers such as 0,1,2 or 0-4")
    if not seeds:
        raise typer.BadParameter(f"--seeds {text!r} names no seed")
    return seeds


@app.command("train")
@user_errors()
def train(
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Run folder (with --seeds: parent of seed0, seed1, ...). Required unless "
        "--print-config."
    ),
    config: Optional[str] = typer.Option(
        None,
        "--config",
        "-c",
        help="YAML config file, or the name of a shipped one (e.g. paper-dual.yaml). "
        "Default: the built-in defaults, or OUT/config.yaml with --resume.",
    ),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override a config key: --set lr=5e-4 (repeatable)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="One run per seed, e.g. 0,1,2,3,4 or 0-4."),
    init_from: Optional[Path] = typer.Option(
        None, "--init-from", help="A trained (baseline) run folder whose backbone initialises this model."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run in OUT."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config and exit."),
    threads: Optional[int] = threads_option(),
) -> None:
    """Train a classifier from a config: metrics.csv, best/last weights, summary.json in OUT."""
    from rich.console import Console

    from dualattn.train import load_config

    console = Console(stderr=True)
    source = config
    if source is None and resume and out is not None:
        saved = out / "config.yaml"
        if saved.is_file():
            source = str(saved)
    cfg = load_config(source, set_)
    if print_config:
        typer.echo(cfg.to_yaml(), nl=False)
        return
    if out is None:
        fail("missing option '--out' / '-o': the run folder to write (only --print-config runs without it)")
    _threads_for(cfg, threads)
    from dualattn.train import fit, fit_seeds
    from dualattn.train.quiet import quiet_lightning

    kwargs = dict(resume=resume, init_from=init_from, progress=progress, overwrite=overwrite)
    with quiet_lightning():  # the library's error names both the flag and the keyword argument
        if seeds is not None:
            run = fit_seeds(cfg, _parse_seeds(seeds), out, **kwargs)
        else:
            run = fit(cfg, out=out, **kwargs)
    _print_summary(console, Path(run), multi=seeds is not None)


def _processes(cfg: object) -> int:
    """Processes one run starts (DDP: one per device); they share the CPU cores."""
    devices = getattr(cfg, "devices", 1)
    if isinstance(devices, int):
        return max(1, devices)
    text = str(devices).strip()
    if "," in text:
        return max(1, len([d for d in text.split(",") if d.strip()]))
    return int(text) if text.isdigit() and int(text) > 0 else 1


def _threads_for(cfg: object, threads: Optional[int]) -> None:
    """``--threads`` (or the free cores) split over the run's processes; DDP children inherit it through
    ``OMP_NUM_THREADS`` (Lightning would otherwise give each process ``cpu_count // processes`` threads)."""
    import os

    processes = _processes(cfg)
    count = use_threads(threads, processes=processes)
    if processes > 1:
        os.environ["OMP_NUM_THREADS"] = str(count)  # per process: the children keep it


def _print_summary(console: object, run: Path, *, multi: bool) -> None:
    import json

    file = run / "summary.json"
    if not file.is_file():  # a non-zero DDP rank
        return
    s = json.loads(file.read_text(encoding="utf-8"))
    if multi:
        m = s["metrics"]
        text = (
            f"{len(s['seeds'])} seeds -> {run}: val balanced accuracy "
            f"{_fmt(m['val_balanced_accuracy']['mean'])} ± {_fmt(m['val_balanced_accuracy']['std'])}, test "
            f"{_fmt(m['test_balanced_accuracy']['mean'])} ± {_fmt(m['test_balanced_accuracy']['std'])}"
        )
    else:
        chosen = s.get("select_by", "val_balanced_accuracy")
        by = "" if chosen == "val_balanced_accuracy" else f", selected by {chosen} {_fmt(s.get('selected_value'))}"
        text = (
            f"{run}: val balanced accuracy {_fmt(s['val_balanced_accuracy'])} (epoch {s['best_epoch']}{by}), "
            f"test {_fmt(s['test_balanced_accuracy'])}, {s['epochs']} epochs, {s['wall_time_s']:.0f} s"
        )
    console.print(text, soft_wrap=True)  # type: ignore[attr-defined]


def _fmt(value: object) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"  # type: ignore[arg-type]
