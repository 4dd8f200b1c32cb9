"""CLI logging: repeated invocations in one process log to the current stderr (no "Logging error");
a logging setup made by someone else is left alone."""

from __future__ import annotations

import logging


def test_repeated_cli_invocations_log_to_the_current_stderr(tmp_path, monkeypatch):
    """Without pytest's capture handlers (as in a script driving CliRunner), the second invocation's
    log records used to go to the first invocation's closed stream ("--- Logging error ---")."""
    from typer.testing import CliRunner

    from dualattn.cli import app

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    level = root.level
    raw = tmp_path / "raw"
    raw.mkdir()
    labels = tmp_path / "labels.csv"
    labels.write_text("series,label\nnope,mild\n")
    try:
        outputs = []
        for i in range(3):
            args = (["-v"] if i == 1 else []) + ["prepare", "pet", str(raw), str(labels), str(tmp_path / f"o{i}"),
                                                 "--salt", "0123456789"]
            res = CliRunner().invoke(app, args)
            assert res.exit_code == 0, res.output
            outputs.append(res.output)
        for out in outputs:
            assert "Logging error" not in out and "closed file" not in out, out
            assert "WARNING dualattn.data.pet: LABELS.csv row 2 skipped" in out, out
        assert len(root.handlers) == 1  # one handler, re-used
        assert root.level == logging.INFO  # -v of the second call did not stick
    finally:
        root.setLevel(level)


def test_cli_leaves_a_foreign_logging_setup_alone(monkeypatch):
    from dualattn.cli import _configure_logging

    root = logging.getLogger()
    mine = logging.NullHandler()
    monkeypatch.setattr(root, "handlers", [mine])
    level = root.level
    try:
        _configure_logging(verbose=True)
        assert root.handlers == [mine] and root.level == level
    finally:
        root.setLevel(level)
