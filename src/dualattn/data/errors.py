"""The one exception type of :mod:`dualattn.data`."""

from __future__ import annotations

import os

__all__ = ["DataError"]


class DataError(ValueError):
    """A data file or folder is missing, unreadable, or inconsistent.

    The message always names the offending file (or folder) and the problem, e.g.
    ``DataError("/data/x/labels.csv, row 7: image file 'a.png' does not exist")``.

    Args:
        path: the file or folder at fault (``None`` when there is none).
        problem: what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike[str] | None, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(problem if self.path is None else f"{self.path}: {problem}")
