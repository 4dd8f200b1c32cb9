"""What a result file records about the software that produced it.

One low-level helper for every writer of ``versions`` (training summaries, demo results), so the
lookups agree.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Iterable

__all__ = ["versions", "RESULT_DISTRIBUTIONS"]

#: The distributions whose versions a results file records.
RESULT_DISTRIBUTIONS: tuple[str, ...] = ("dualattn", "torch", "monai", "captum", "lightning", "numpy", "scikit-learn")


def versions(distributions: Iterable[str] = RESULT_DISTRIBUTIONS) -> dict[str, str]:
    """Python's version and each installed distribution's, in the order given.

    A distribution that is not installed is left out, unless its module is already imported and
    has a ``__version__`` (e.g. ``dualattn`` run from a source tree).

    Args:
        distributions: distribution names as pip spells them (``"scikit-learn"``).

    Returns:
        ``{"python": "3.x.y", name: version, ...}``.

    Example:
        >>> sorted(versions(["dualattn"]))
        ['dualattn', 'python']
    """
    out = {"python": platform.python_version()}
    for dist in distributions:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            module = sys.modules.get(dist.replace("-", "_"))
            version = getattr(module, "__version__", None)
            if isinstance(version, str):
                out[dist] = version
    return out
