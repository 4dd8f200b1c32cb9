"""Atomic writes: the target is replaced whole, and its mode follows the umask (private files: 0600)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from dualattn._io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


@pytest.fixture
def umask():
    """Set the process umask for one test and put the old one back."""
    old = os.umask(0o022)
    try:
        yield lambda value: os.umask(value)
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600), (0o027, 0o640)])
def test_every_writer_gives_0666_less_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.txt", "text")
    atomic_write_json(tmp_path / "c.json", {"x": 1})
    with atomic_path(tmp_path / "d.npy") as tmp:
        tmp.write_bytes(b"npy")
    with atomic_path(tmp_path / "sub" / "deeper" / "e.txt") as tmp:  # missing folders are created
        tmp.write_text("e")
    for name in ("a.bin", "b.txt", "c.json", "d.npy", "sub/deeper/e.txt"):
        assert _mode(tmp_path / name) == expected, name
    # folders get 0777 less the umask, as mkdir gives
    assert _mode(tmp_path / "sub" / "deeper") == 0o777 & ~mask
    assert (tmp_path / "c.json").read_text() == '{\n  "x": 1\n}\n'


def test_private_files_stay_0600_whatever_the_umask(tmp_path, umask):
    umask(0o000)
    atomic_write_text(tmp_path / "secret.key", "k" * 64, private=True)
    atomic_write_json(tmp_path / "secret.json", {"k": 1}, private=True)
    atomic_write_text(tmp_path / "public.txt", "p")
    assert _mode(tmp_path / "secret.key") == 0o600
    assert _mode(tmp_path / "secret.json") == 0o600
    assert _mode(tmp_path / "public.txt") == 0o666


def test_overwriting_replaces_the_mode_and_leaves_no_temp_file(tmp_path, umask):
    target = tmp_path / "r.json"
    atomic_write_json(target, {"v": 1}, private=True)
    atomic_write_json(target, {"v": 2})
    assert _mode(target) == 0o644 and target.read_text().count('"v": 2') == 1
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, umask):
    target = tmp_path / "t.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_concurrent_writers_never_share_a_temp_file(tmp_path, umask):
    """32 threads write the same target: each writes its own temporary file, the last rename wins whole."""
    target = tmp_path / "same.txt"
    payloads = [str(i) * 4096 for i in range(32)]
    threads = [threading.Thread(target=atomic_write_text, args=(target, p)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_text() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["same.txt"]
    assert _mode(target) == 0o644


def test_a_writer_that_replaces_the_temp_file_still_gives_the_umask_mode(tmp_path, umask):
    """safetensors (and other writers) write their own 0600 temporary file and rename it over ours."""
    target = tmp_path / "w.bin"
    with atomic_path(target) as tmp:
        own = tmp.with_name("own.tmp")
        fd = os.open(own, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"payload")
        os.close(fd)
        os.replace(own, tmp)
    assert target.read_bytes() == b"payload" and _mode(target) == 0o644
    with atomic_path(tmp_path / "p.bin", private=True) as tmp:
        own = tmp.with_name("own.tmp")
        own.write_bytes(b"x")
        os.chmod(own, 0o644)
        os.replace(own, tmp)
    assert _mode(tmp_path / "p.bin") == 0o600


def test_weights_files_follow_the_umask(tmp_path, umask):
    from dualattn.models import create_model
    from dualattn.weights import save_model

    path = save_model(create_model("unet_encoder", variant="exact", features=4), tmp_path / "m.safetensors")
    assert _mode(path) == 0o644
