"""The ``dualattn`` command line.

``dualattn prepare | data | models | train | explain | evaluate | report | demo | bench``

Each command group lives in its own module (``_data.py``, ``_train.py`` ...) exposing
``register(app)``; heavy libraries (torch, MONAI, Captum) are imported inside the commands so
``dualattn --help`` stays fast.
"""

from __future__ import annotations

import logging

import typer

from . import _data, _demo, _evaluate, _explain, _models, _train

app = typer.Typer(
    name="dualattn",
    help="Medical-image classifiers with faithful, consistent attention maps, and their evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


for _module in (_data, _models, _train, _explain, _evaluate, _demo):
    _module.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
