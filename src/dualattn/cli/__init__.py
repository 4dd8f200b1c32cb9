"""The ``dualattn`` command line.

``dualattn prepare | data | models | train | explain | evaluate | report | demo | bench``

Each command group lives in its own module (``_data.py``, ``_train.py`` ...) as a Typer sub-app
``app``, added to the root app here; every command reports user errors through the one handler in
``_errors.py`` (``error: <message>``, exit code 2). Heavy libraries (torch, MONAI, Captum) are
imported inside the commands so ``dualattn --help`` stays fast.
"""

from __future__ import annotations

import logging
import sys

import typer

from . import _check, _data, _demo, _evaluate, _explain, _models, _train

app = typer.Typer(
    name="dualattn",
    help="Medical-image classifiers with faithful, consistent attention maps, and their evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is *now*, not the stream current when it was created.

    ``logging.basicConfig`` binds its handler to the first ``sys.stderr`` it sees; when the CLI is
    invoked repeatedly in one process (``typer.testing.CliRunner`` swaps and closes stderr each time)
    later records went to a closed stream ("--- Logging error ---").
    """

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # noqa: ANN001
        pass


def _configure_logging(*, verbose: bool) -> None:
    """basicConfig semantics (leave a logging set-up made by someone else alone), re-applied per call."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _CurrentStderrHandler)]
    if not ours and root.handlers:
        return
    if not ours:
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    _configure_logging(verbose=verbose)


# the order of the help's command list: single commands first, then the command groups
for _module in (_models, _train, _explain, _evaluate, _demo, _check, _data):
    app.add_typer(_module.app)


def main() -> None:
    """Console-script entry point (and ``python -m dualattn``).

    Idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets
    it): set here because the OpenMP runtime reads it once, when torch loads (see dualattn._threads).
    """
    from .._threads import prefer_passive_waiting

    prefer_passive_waiting()
    app()
