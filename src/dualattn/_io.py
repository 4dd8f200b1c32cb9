"""Atomic file output: a reader never sees a half-written JSON, CSV, PNG or safetensors file.

Every writer goes to a temporary file in the destination folder, flushes and fsyncs it, then
``os.replace``s it over the target (atomic on POSIX and Windows within one file system).

Permissions: the file gets the mode an ordinary ``open(path, "w")`` would give it, ``0o666`` less the
process umask (``0644`` under the usual umask ``022``), so a colleague on a shared server can read a
report; the temporary file is created with that mode (``os.open`` applies the umask; no global
``os.umask`` call, so threads are safe). A file that must stay private (a secret key) is written with
``private=True``: ``0600`` whatever the umask. Folders are created with ``mkdir`` as usual (umask applies).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import stat
from pathlib import Path
from typing import Any, Iterator

#: Mode bits of a public file before the umask (what ``open(path, "w")`` asks for).
PUBLIC_MODE = 0o666
#: Mode of a private file (owner read/write only), applied whatever the umask.
PRIVATE_MODE = 0o600


def _create_temp(folder: Path, name: str, *, private: bool) -> tuple[Path, int]:
    """Create an empty, new temporary file ``folder/.name.<random>.tmp``; return it and its mode.

    Public files are created with :data:`PUBLIC_MODE` (the kernel applies the umask, as for ``open``);
    private ones with :data:`PRIVATE_MODE`, ``fchmod``-ed to it. The mode read back is what the final
    file gets (:func:`atomic_path` restores it when a writer replaced the file: safetensors writes
    through its own ``0600`` temporary file).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    mode = PRIVATE_MODE if private else PUBLIC_MODE
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, flags, mode)
        except FileExistsError:
            continue
        try:
            if private and hasattr(os, "fchmod"):
                os.fchmod(fd, PRIVATE_MODE)
            created = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        return tmp, created
    raise FileExistsError(f"no free temporary name for {name!r} in {folder}")  # pragma: no cover


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, private: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The temporary file exists (empty) when the block starts; write it by name (``np.save(tmp, ...)``,
    ``open(tmp, "wb")``), which keeps its mode.

    Args:
        path: the destination file (its folder is created when missing).
        private: mode ``0600`` (secrets) instead of ``0666`` less the umask.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_path(out) as tmp:
        ...     _ = tmp.write_text("done")
        >>> out.read_text()
        'done'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp, mode = _create_temp(target.parent, target.name, private=private)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
            if os.name == "posix" and stat.S_IMODE(os.fstat(fh.fileno()).st_mode) != mode:
                os.fchmod(fh.fileno(), mode)  # the writer replaced the file (its own temp file + rename)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, private: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (mode ``0666`` less the umask, or ``0600`` when ``private``)."""
    with atomic_path(path, private=private) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, private: bool = False) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"), private=private)


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            return obj.detach().cpu().tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialize {type(obj).__name__} to JSON")


def _sanitize(obj: Any) -> Any:
    """Replace non-finite floats by None so the JSON is standard (NaN is not valid JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 2, private: bool = False) -> None:
    """Write ``obj`` as standard JSON (NaN/Inf become ``null``) atomically (see :func:`atomic_write_bytes`)."""
    text = json.dumps(_sanitize(json.loads(json.dumps(obj, default=_json_default))), indent=indent)
    atomic_write_text(path, text + "\n", private=private)
