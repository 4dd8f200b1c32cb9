"""The layers of docs/ARCHITECTURE.md, checked against the imports in src/: each package imports only the
packages below it, and never another package's ``_private`` module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dualattn"

#: the lowest layer: top-level helper modules every package may use
BASE = {"_io", "_checks", "_lazy", "_env", "_optional", "_threads", "grids"}

#: package -> the packages it may import (besides itself and BASE); must match docs/ARCHITECTURE.md
ALLOWED: dict[str, set[str]] = {
    "consistency": set(),
    "attention": set(),
    "models": {"consistency", "attention"},
    "weights": {"models"},
    "data": set(),
    "runs": {"models", "weights", "data"},
    "cards": {"runs"},
    "explain": {"consistency", "attention", "models"},
    "evaluate": {"data", "models", "weights", "runs", "explain"},
    "report": {"evaluate", "explain", "models", "cards"},
    "train": {"consistency", "attention", "models", "weights", "data", "runs", "cards", "evaluate"},
    "pipelines": {"consistency", "attention", "models", "weights", "data", "runs", "cards", "explain", "evaluate",
                  "report", "train"},
    "cli": {"consistency", "attention", "models", "weights", "data", "runs", "cards", "explain", "evaluate", "report",
            "train", "pipelines"},
}


def _package_of(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    return rel.parts[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted module below ``dualattn``) for every import of a dualattn module in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    rel = path.relative_to(SRC).with_suffix("").parts
    here = list(rel[:-1]) if rel[-1] != "__init__" else list(rel[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
                names = [mod] if node.module else [".".join([*base, a.name]) for a in node.names]
                # `from . import x` may name a submodule
                if node.module:
                    names += [f"{mod}.{a.name}" for a in node.names]
                out += [(node.lineno, n) for n in names if n]
            elif node.module and node.module.startswith("dualattn"):
                mod = node.module[len("dualattn") + 1:]
                out += [(node.lineno, mod)] + [(node.lineno, f"{mod}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name[len("dualattn") + 1:]) for a in node.names if a.name.startswith("dualattn.")]
    return [(line, m) for line, m in out if m]


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if p.name != "__main__.py" and p.relative_to(SRC).parts[0] != "__init__.py")


def _real(dotted: str) -> bool:
    parts = dotted.split(".")
    return (SRC.joinpath(*parts).with_suffix(".py")).is_file() or (SRC.joinpath(*parts) / "__init__.py").is_file()


def test_every_package_is_placed_in_a_layer():
    packages = {_package_of(p) for p in _modules()} - BASE
    assert packages <= set(ALLOWED), f"packages without a layer: {sorted(packages - set(ALLOWED))}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_down_the_layers_and_never_into_another_package_private_module(path):
    pkg = _package_of(path)
    bad = []
    for line, dotted in _imports(path):
        if not _real(dotted):
            continue  # an imported name, not a module
        target = dotted.split(".")[0]
        if target != pkg and target not in BASE and target not in ALLOWED.get(pkg, set()):
            bad.append(f"line {line}: {pkg} imports {dotted} (a layer above or beside it)")
        private = [part for part in dotted.split(".")[1:] if part.startswith("_") and part != "__init__"]
        if target != pkg and private:
            bad.append(f"line {line}: imports {dotted}, a private module of package {target}")
    assert not bad, "\n".join(bad)
