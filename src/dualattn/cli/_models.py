"""CLI commands: ``dualattn models`` (backbones x variants with parameter counts)."""

from __future__ import annotations

from typing import Optional

import typer


def all_variants() -> list[str]:
    """Every variant some backbone offers, the paper's first (``CNN_VARIANTS``), then the registered designs."""
    from ..models import CNN_VARIANTS, list_models, list_variants

    return list(dict.fromkeys([*CNN_VARIANTS, *(v for name in list_models() for v in list_variants(name))]))


def _table_rows(*, in_channels: int, spatial_dims: int, img_size: int, num_classes: int, features: Optional[int]) -> list[dict]:
    """One row per backbone: parameter count per variant (None where unsupported)."""
    import torch

    from ..models import count_parameters, create_model, list_models, list_variants
    from ..models import get_entry

    rows = []
    for name in list_models():
        entry = get_entry(name)
        counts: dict[str, Optional[int]] = {}
        offered = set(list_variants(name))  # the paper's variants and the designs registered for this backbone
        for variant in all_variants():
            if variant not in offered or spatial_dims not in entry.spatial_dims:
                counts[variant] = None
                continue
            kw: dict = {"img_size": img_size}
            if features is not None and "features" in entry.defaults:
                kw["features"] = features
            with torch.device("meta"):  # count without allocating memory
                model = create_model(
                    name, variant=variant, in_channels=in_channels, num_classes=num_classes,
                    spatial_dims=spatial_dims, **kw,
                )
            counts[variant] = count_parameters(model)
        rows.append({"name": name, "description": entry.description, "params": counts})
    return rows


app = typer.Typer()


@app.command("models")
def models_cmd(
    in_channels: int = typer.Option(1, "--in-channels", help="Input channels (4 for BraTS)."),
    spatial_dims: int = typer.Option(2, "--spatial-dims", help="2 or 3."),
    img_size: int = typer.Option(224, "--img-size", help="Input size (ViTs and the dual global witness)."),
    num_classes: int = typer.Option(2, "--num-classes"),
    features: Optional[int] = typer.Option(None, "--features", help="Base width of the CNNs (default: each one's)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the backbones x variants with parameter counts (the paper's Table 3 "# Param.")."""
    import json

    from rich.console import Console
    from rich.table import Table

    try:
        rows = _table_rows(
            in_channels=in_channels, spatial_dims=spatial_dims, img_size=img_size,
            num_classes=num_classes, features=features,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"parameters per backbone x variant ({spatial_dims}D, {in_channels} input channel(s))")
    table.add_column("variant", style="bold", no_wrap=True)
    for row in rows:
        table.add_column(row["name"], justify="right", no_wrap=True)
    for v in all_variants():
        cells = [v]
        for row in rows:
            n = row["params"][v]
            cells.append("-" if n is None else (f"{n / 1e6:.3f}M" if n >= 1e5 else f"{n:,}"))
        table.add_row(*cells)
    Console(width=max(100, Console().width)).print(table)
