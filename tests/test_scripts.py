"""The README's two commands: scripts/*.sh parse, and pick the interpreter PEP 668 lets them install into.

On a stock Debian/Ubuntu Python ``pip install`` is refused ("externally-managed-environment"); the scripts
then make and use the repository's ``.venv``. Nothing here installs a package.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def _helper():
    spec = importlib.util.spec_from_file_location("externally_managed", SCRIPTS / "externally_managed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.sh")) + ["../.ci/run"])
def test_scripts_parse(script):
    res = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_demo_and_test_scripts_run_the_interpreter_setup_installs_into():
    for name in ("demo.sh", "test.sh"):
        text = (SCRIPTS / name).read_text()
        assert "source scripts/python-env.sh" in text and "export PYTHON" in text, name
        assert 'exec "$PYTHON" -m' in text and "exec python3" not in text, name
    setup = (SCRIPTS / "setup.sh").read_text()
    assert 'PY="$(dualattn_python)"' in setup
    # torch first, pinned to the CPU wheel, then the package
    assert setup.index('"torch==2.13.0"') < setup.index('-e ".[dev]"')


@pytest.mark.parametrize(
    ("in_venv", "marker", "expected"),
    [(False, True, True), (False, False, False), (True, True, False), (True, False, False)],
)
def test_pep668_rule(tmp_path, in_venv, marker, expected):
    """PEP 668: the marker in the stdlib folder counts only outside a virtual environment."""
    em = _helper()
    stdlib = tmp_path / "lib" / "python3"
    stdlib.mkdir(parents=True)
    if marker:
        (stdlib / em.MARKER).write_text("[externally-managed]\nError=use a venv\n")
    prefix = str(tmp_path / ("venv" if in_venv else "usr"))
    assert em.is_externally_managed(prefix, str(tmp_path / "usr"), str(stdlib)) is expected


def test_helper_reports_this_interpreter():
    """The helper as the scripts run it: this (test) interpreter's verdict is PEP 668's."""
    em = _helper()
    stdlib = sysconfig.get_path("stdlib", sysconfig.get_default_scheme())
    managed = sys.prefix == sys.base_prefix and (Path(stdlib) / "EXTERNALLY-MANAGED").is_file()
    res = subprocess.run([sys.executable, str(SCRIPTS / "externally_managed.py")])
    assert res.returncode == (0 if managed else 1)
    assert em.stdlib_dir() == stdlib


def _choose(cwd: Path, python: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHON")}
    env.update({"PYTHON": python, **(env_extra or {})})
    return subprocess.run(["bash", "-c", "source scripts/python-env.sh && dualattn_python"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    shutil.copytree(SCRIPTS, tmp_path / "scripts")
    return tmp_path


def test_unmanaged_interpreter_is_used_as_is(repo_copy):
    res = _choose(repo_copy, sys.executable)
    managed = subprocess.run([sys.executable, str(SCRIPTS / "externally_managed.py")]).returncode == 0
    if managed:
        pytest.skip("the test interpreter itself is externally managed")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == sys.executable
    assert not (repo_copy / ".venv").exists()


def test_missing_interpreter_is_a_clear_error(repo_copy):
    res = _choose(repo_copy, "no-such-python3")
    assert res.returncode == 1 and "no Python interpreter 'no-such-python3'" in res.stderr


def _managed_system_python() -> str | None:
    """A stock distribution Python with its EXTERNALLY-MANAGED marker and a working venv module, if any."""
    for candidate in ("/usr/bin/python3",):
        if not Path(candidate).is_file():
            continue
        if subprocess.run([candidate, str(SCRIPTS / "externally_managed.py")]).returncode == 0:
            return candidate
    return None


def test_externally_managed_interpreter_gets_a_local_venv_made_once(repo_copy):
    """A real PEP 668 interpreter (the distribution's python3): .venv is made, its python chosen, and a
    second call reuses it; that python is itself never externally managed (so the scripts run as before)."""
    system = _managed_system_python()
    if system is None:
        pytest.skip("no externally-managed system python3 on this machine")
    res = _choose(repo_copy, system)
    if res.returncode != 0 and "python3-venv" in res.stderr:
        pytest.skip(f"{system} has no venv module: {res.stderr}")
    assert res.returncode == 0, res.stderr
    venv_python = repo_copy / ".venv" / "bin" / "python"
    assert res.stdout.strip() == str(venv_python)
    assert "externally managed (PEP 668)" in res.stderr
    cfg = repo_copy / ".venv" / "pyvenv.cfg"
    stamp = cfg.stat().st_mtime_ns
    again = _choose(repo_copy, system)
    assert again.returncode == 0 and again.stdout.strip() == str(venv_python)
    assert cfg.stat().st_mtime_ns == stamp and "externally managed" not in again.stderr  # reused, not remade
    # the venv's python, chosen directly (as setup.sh does when demo.sh exports it), is used as is
    inside = _choose(repo_copy, str(venv_python))
    assert inside.stdout.strip() == str(venv_python)
    assert subprocess.run([str(venv_python), str(SCRIPTS / "externally_managed.py")]).returncode == 1
