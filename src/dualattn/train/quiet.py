"""Lightning's console output without its noise, for the span of a call into Lightning.

:func:`quiet_lightning` removes three things and nothing else:

* every Lightning INFO line printed twice: ``import lightning`` attaches its own console handler
  (``INFO: ...``) to the ``lightning`` logger, and its records also reach the root logger's handler when
  the application (the ``dualattn`` CLI) has configured logging. While the root logger has a handler,
  Lightning's own console handlers are detached, so each line is printed once, in the application's format;
* Lightning's advertisement for ``litlogger`` (an INFO "Tip" logged by every ``Trainer``);
* the ``isinstance(treespec, LeafSpec)`` ``FutureWarning`` that recent torch raises inside Lightning's
  ``_pytree`` helper (a deprecation inside Lightning, nothing the caller can act on); only that warning,
  only inside the block.

Everything is restored on exit; the process-wide warning filters are left as they were.

Example:
    >>> from dualattn.train.quiet import quiet_lightning
    >>> with quiet_lightning():
    ...     pass  # trainer.fit(...)
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

__all__ = ["quiet_lightning", "LIGHTNING_LOGGERS", "LEAFSPEC_WARNING"]

#: The loggers Lightning attaches console handlers to or logs its rank-zero messages through.
LIGHTNING_LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)

#: The message (a regular expression, matched at the start) of the one warning silenced.
LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class _DropAdvertisement(logging.Filter):
    """Drops Lightning's "Tip: ... try installing litlogger" record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Inside the block: each Lightning log line once, no ``litlogger`` tip, no ``LeafSpec`` warning.

    See the module docstring. Safe to nest; restores handlers, filters and warning filters on exit.
    Imports Lightning first: the handlers it attaches on import must exist to be detached.
    """
    import lightning.pytorch  # noqa: F401

    root_has_handler = bool(logging.getLogger().handlers)
    detached: list[tuple[logging.Logger, logging.Handler]] = []
    drop = _DropAdvertisement()
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    for lg in loggers:
        lg.addFilter(drop)
        if root_has_handler and lg.propagate:
            for handler in list(lg.handlers):
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                    lg.removeHandler(handler)
                    detached.append((lg, handler))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=LEAFSPEC_WARNING, category=FutureWarning)
            yield
    finally:
        for lg in loggers:
            lg.removeFilter(drop)
        for lg, handler in detached:
            lg.addHandler(handler)
