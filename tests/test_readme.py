"""README.md is for users: short, no commit hashes or issue numbers, and its numbers generated from a results file."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _prose_words(text: str) -> int:
    """Words outside fenced and indented code and the generated results block."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"<!-- results:start -->.*?<!-- results:end -->", "", text, flags=re.S)
    lines = [ln for ln in text.splitlines() if not ln.startswith("    ")]
    return len(re.findall(r"\b\w[\w'./-]*\b", "\n".join(lines)))


def test_readme_is_short_and_carries_no_hash_or_issue_number():
    text = README.read_text(encoding="utf-8")
    assert _prose_words(text) <= 950, _prose_words(text)
    assert not re.search(r"\b[0-9a-f]{7,40}\b", text), "a commit hash"
    assert not re.search(r"(?i)\bissue\s*#?\d+|#\d{1,4}\b", text), "an issue number"


def test_readme_results_block_is_generated_from_the_demo_summary():
    spec = importlib.util.spec_from_file_location("readme_table", ROOT / "benchmarks" / "readme_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = json.loads((ROOT / "benchmarks" / "results" / "demo_default.json").read_text(encoding="utf-8"))
    text = README.read_text(encoding="utf-8")
    block = text.split(module.START, 1)[1].split(module.END, 1)[0].strip()
    assert block == module.tables(summary).strip()
    assert summary.get("sealed") is True and summary.get("n_patients", 0) >= 60
