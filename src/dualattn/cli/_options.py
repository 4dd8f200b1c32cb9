"""Option parsers shared by the CLI commands (one spelling of a block or a method everywhere).

``--block 3`` (``explain``) and ``--blocks 3,4`` (``evaluate``) accept the same names: a stage number or
``blockN``. Method names are the explain registry's names and aliases (``ig`` for
``integrated_gradients``). ``--threads`` is one option for every command that computes (:func:`threads_option`,
:func:`use_threads`).
"""

from __future__ import annotations

from typing import Any

import typer

__all__ = ["parse_block", "parse_blocks", "method_help_names", "threads_option", "use_threads", "THREADS_HELP"]

#: ``--threads``' help, the same on every command.
THREADS_HELP = ("CPU threads for torch. Default: OMP_NUM_THREADS when set, else the cores free when the command "
                "starts (usable cores minus the CPUs other processes keep busy, at least 1), so a shared machine "
                "is not oversubscribed (docs/demo.md, \"Threads\").")


def threads_option() -> Any:
    """The ``--threads`` option (``None`` when not given), e.g. ``threads: int = threads_option()``."""
    return typer.Option(None, "--threads", min=1, help=THREADS_HELP)


def use_threads(threads: int | None, *, processes: int = 1) -> int:
    """Apply ``--threads`` or the default rule (:func:`dualattn._threads.apply_threads`); log and return the count."""
    from .._threads import apply_threads

    return apply_threads(threads, processes=processes).threads


def _one_block(part: str, *, option: str, text: str) -> str:
    if part.isdigit():
        return f"block{int(part)}"
    if part.startswith("block") and part[5:].isdigit():
        return f"block{int(part[5:])}"
    raise typer.BadParameter(f"{option} {text!r}: use numbers such as 3,4 or names such as block3,block4")


def parse_blocks(text: str, *, option: str = "--blocks") -> list[str]:
    """``"3,4"`` or ``"block3,block4"`` -> ``["block3", "block4"]``.

    Args:
        text: comma-separated stage numbers or ``blockN`` names (spaces ignored).
        option: the option's name for the error message.

    Raises:
        typer.BadParameter: an empty list or a part that is neither an integer nor ``blockN``.

    Example:
        >>> parse_blocks("3, block4")
        ['block3', 'block4']
    """
    out = [_one_block(p, option=option, text=text) for p in (q.strip() for q in str(text).split(",")) if p]
    if not out:
        raise typer.BadParameter(f"{option} {text!r} names no block")
    return out


def parse_block(text: str, *, option: str = "--block") -> str:
    """One block: ``"3"`` or ``"block3"`` -> ``"block3"`` (the parser of :func:`parse_blocks`).

    Raises:
        typer.BadParameter: not exactly one block, or a malformed name.

    Example:
        >>> parse_block("3")
        'block3'
    """
    blocks = parse_blocks(text, option=option)
    if len(blocks) != 1:
        raise typer.BadParameter(f"{option} {text!r}: name one block (e.g. 3 or block3)")
    return blocks[0]


def method_help_names() -> str:
    """The method names for a ``--method`` help text, from the explain registry: names, then aliases.

    Imports the registry (torch): call it where the help is built lazily or in tests.
    """
    from ..explain import METHOD_ALIASES, list_methods

    names = [m for m in list_methods() if not m.startswith("raw_channel_")] + ["raw_channel_<k>"]
    aliases = [f"{a} (= {n})" for a, n in METHOD_ALIASES.items()]
    return ", ".join(names) + "; aliases: " + ", ".join(aliases)
