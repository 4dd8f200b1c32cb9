"""README.md is for users: short, no commit hashes or issue numbers, and its numbers generated from a results file."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _prose_words(text: str) -> int:
    """Words outside fenced and indented code and the generated results block."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"<!-- results(3d)?:start -->.*?<!-- results(3d)?:end -->", "", text, flags=re.S)
    lines = [ln for ln in text.splitlines() if not ln.startswith("    ")]
    return len(re.findall(r"\b\w[\w'./-]*\b", "\n".join(lines)))


def test_readme_is_short_and_carries_no_hash_or_issue_number():
    text = README.read_text(encoding="utf-8")
    assert _prose_words(text) <= 950, _prose_words(text)
    assert not re.search(r"\b[0-9a-f]{7,40}\b", text), "a commit hash"
    assert not re.search(r"(?i)\bissue\s*#?\d+|#\d{1,4}\b", text), "an issue number"


def _readme_table():
    spec = importlib.util.spec_from_file_location("readme_table", ROOT / "benchmarks" / "readme_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("summary_file, markers, render", [
    ("demo_default.json", ("START", "END"), "tables"),
    ("demo_3d.json", ("START_3D", "END_3D"), "tables_3d"),
])
def test_readme_results_blocks_are_generated_from_the_demo_summaries(summary_file, markers, render):
    module = _readme_table()
    summary = json.loads((ROOT / "benchmarks" / "results" / summary_file).read_text(encoding="utf-8"))
    start, end = (getattr(module, m) for m in markers)
    block = README.read_text(encoding="utf-8").split(start, 1)[1].split(end, 1)[0].strip()
    assert block == getattr(module, render)(summary).strip()
    assert summary.get("sealed") is True
    if summary_file == "demo_default.json":
        assert summary.get("n_patients", 0) >= 60


def _stat(mean, std=1.0):
    return {"mean": mean, "std": std, "n": 3}


def test_3d_targets_are_judged_from_the_numbers():
    module = _readme_table()
    good = {"command": "c", "n_images": 4, "n_positive_with_mask": 2, "seeds": [0, 1, 2], "wall_time_s": 1.0,
            "balanced_accuracy": {"baseline": _stat(90), "dual": _stat(95, 4.9)},
            "maps": {"dual [block3]": {"ap": _stat(70), "activation_precision": _stat(55)},
                     "raw_channel_3 [block3]": {"ap": _stat(60, 0), "activation_precision": _stat(20, 0)}},
            "own_model": {"dual": {"dual [block3]": {"hidden_swap_flips@20": _stat(1.5)}}}}
    verdicts = [ln for ln in module.tables_3d(good).splitlines() if ln.startswith("- ")]
    assert len(verdicts) == 4 and all(ln.endswith("met by every variant") for ln in verdicts), verdicts
    bad = json.loads(json.dumps(good))
    bad["balanced_accuracy"]["baseline"] = _stat(90, 5.1)           # std over the limit
    bad["maps"]["dual [block3]"]["ap"] = _stat(59.9)                 # below raw FLAIR
    del bad["own_model"]                                             # not measured is not "met"
    out = module.tables_3d(bad)
    assert "missed by baseline" in out and "(60.0): missed by dual" in out
    assert "not measured for dual" in out and "| raw FLAIR | | 60.0 | 20.0 | |" in out
