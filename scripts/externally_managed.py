"""Exit 0 when this interpreter refuses ``pip install`` (PEP 668 "externally-managed-environment"), else 1.

Run by ``scripts/python-env.sh`` with the interpreter in question (stdlib only; nothing is installed).
An interpreter is externally managed when it runs outside a virtual environment and its standard library
folder holds an ``EXTERNALLY-MANAGED`` marker (stock Debian and Ubuntu Pythons ship one). A virtual
environment is never externally managed: PEP 668 exempts it, since pip installs into it, not into the
distribution's folders.
"""

from __future__ import annotations

import os
import sys
import sysconfig

MARKER = "EXTERNALLY-MANAGED"


def is_externally_managed(prefix: str, base_prefix: str, stdlib: str) -> bool:
    """PEP 668's rule: a marker file in ``stdlib`` counts only outside a virtual environment.

    Example:
        >>> is_externally_managed("/usr", "/usr", "/nonexistent/lib/python3")
        False
    """
    if os.path.realpath(prefix) != os.path.realpath(base_prefix):  # a virtual environment
        return False
    return os.path.isfile(os.path.join(stdlib, MARKER))


def stdlib_dir() -> str:
    """Where PEP 668 says the marker lives: ``sysconfig``'s ``stdlib`` path of the default scheme."""
    scheme = sysconfig.get_default_scheme() if hasattr(sysconfig, "get_default_scheme") else None
    return sysconfig.get_path("stdlib", scheme) if scheme else sysconfig.get_path("stdlib")


if __name__ == "__main__":
    sys.exit(0 if is_externally_managed(sys.prefix, sys.base_prefix, stdlib_dir()) else 1)
