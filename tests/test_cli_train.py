"""``dualattn train`` and ``dualattn demo`` at the door: --print-config without --out, errors that name the
CLI flag, Lightning's log lines once and without noise, progress lines never wrapped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dualattn.cli import app

SRC = Path(__file__).resolve().parents[1] / "src"


def _blobs(root: Path, n: int = 24) -> Path:
    from dualattn.data import FolderWriter

    rng = np.random.default_rng(0)
    with FolderWriter(root, class_names=["no", "yes"]) as w:
        for i in range(n):
            img = rng.normal(0.0, 1.0, (1, 16, 16)).astype(np.float32)
            mask = np.zeros((16, 16), np.uint8)
            if i % 2:
                img[0, 4:9, 4:9] += 3.0
                mask[4:9, 4:9] = 1
            w.add(f"img{i:03d}", image=img, label=i % 2, patient=f"p{i:03d}", mask=mask)
    return root


TINY = ["--set", "max_epochs=1", "--set", "accelerator=cpu", "--set", "devices=1", "--set", "batch_size=8",
        "--set", "model_kwargs.features=4", "--no-progress"]


def test_print_config_needs_no_out():
    res = CliRunner().invoke(app, ["train", "--print-config", "--set", "lr=5e-4"])
    assert res.exit_code == 0, res.output
    assert re.search(r"^lr: 0\.0005$", res.output, re.M), res.output


def test_train_without_out_is_refused_naming_the_option():
    res = CliRunner().invoke(app, ["train", "--set", "lr=5e-4"])
    assert res.exit_code == 2
    assert "--out" in res.output and "Traceback" not in res.output, res.output


def test_train_subprocess_logs_each_lightning_line_once_without_noise(tmp_path):
    """A fresh process as a user runs it: each Lightning INFO line once (it printed twice: Lightning's own
    ``INFO: ...`` handler and the CLI's), no litlogger advertisement, no LeafSpec deprecation warning.
    Then a second call into the same folder: the error names the flag --overwrite, not ``overwrite=True``."""
    data = _blobs(tmp_path / "blobs")
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "default"}
    cmd = [sys.executable, "-m", "dualattn", "train", "--out", str(tmp_path / "run"), "--set", f"dataset={data}", *TINY]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    text = res.stdout + res.stderr
    assert "GPU available" in text  # Lightning's INFO lines are shown ...
    messages = Counter(re.sub(r"^(\S+ \S+ INFO \S+: |INFO: )", "", line) for line in text.splitlines()
                       if "INFO" in line and "lightning" in line.lower() or line.startswith("INFO: "))
    assert messages and all(n == 1 for n in messages.values()), messages  # ... each once
    assert "litlogger" not in text, text
    assert "LeafSpec" not in text, text
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 2
    assert "--overwrite" in again.stderr and "overwrite=True" not in again.stderr, again.stderr


def test_quiet_lightning_restores_everything():
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  (its import attaches the handlers compared below)

    from dualattn.train.quiet import LIGHTNING_LOGGERS, quiet_lightning

    loggers = [logging.getLogger(n) for n in LIGHTNING_LOGGERS]
    before = [(list(lg.handlers), list(lg.filters)) for lg in loggers]
    filters = list(warnings.filters)
    with quiet_lightning():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
            warnings.warn("another FutureWarning", FutureWarning)
        # the inner catch_warnings re-enables all: the narrow filter is checked below without it
        with warnings.catch_warnings(record=True) as inner:
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
            warnings.warn("another FutureWarning, still shown", FutureWarning)
    assert [str(w.message) for w in inner] == ["another FutureWarning, still shown"]
    assert len(caught) == 2
    assert [(list(lg.handlers), list(lg.filters)) for lg in loggers] == before
    assert list(warnings.filters) == filters


def test_demo_progress_lines_are_not_wrapped(tmp_path, monkeypatch):
    """rich wrapped the demo's long ``[done]`` line at the terminal's width, breaking the path in two."""
    import dualattn.pipelines.demo as demo

    long_path = tmp_path / ("a-rather-long-folder-name-" * 3) / "results.json"
    results = tmp_path / "results.json"
    results.write_text("{}")

    def fake_run_demo(*, progress, **_kw):
        progress(f"[done]  {long_path} and {long_path.with_suffix('.html')} (1.0 s)")
        return demo.DemoOutcome(out=tmp_path, results=results, report=long_path.with_suffix(".html"), runs={},
                                wall_time_s=1.0, skipped_steps=[])

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    monkeypatch.setenv("COLUMNS", "40")
    res = CliRunner().invoke(app, ["demo", "--preset", "tiny", "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    done = [line for line in res.output.splitlines() if line.startswith("[done]")]
    assert done == [f"[done]  {long_path} and {long_path.with_suffix('.html')} (1.0 s)"], res.output
    assert f"report:  {long_path.with_suffix('.html')}" in res.output.splitlines()
