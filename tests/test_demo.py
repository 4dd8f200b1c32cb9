"""The tiny demo end to end: every table's numbers present and finite, checked against independent
recomputation; resumable; the report renders in headless Chromium; presets are data."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dualattn.pipelines.demo import PRESETS, DemoPreset, get_preset, load_examples, method_sources, run_demo

STEPS = ["data", *[f"train-{v}-seed0" for v in ("baseline", "tau_k", "tau_l", "unconstrained", "dual", "exact",
                                                "multilevel")], "evaluate", "examples"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread per test here (the shared conftest fixture restores the count afterwards)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """Run the tiny demo once for the module (one torch thread: on a shared 2-core machine oversubscribed
    intra-op threads make training many times slower, and the tiny models gain nothing from two)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    messages: list[str] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        outcome = run_demo(preset="tiny", out=out, progress=messages.append)
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    return outcome, messages, seconds


def _finite(cell) -> bool:
    mean = cell["mean"] if isinstance(cell, dict) else cell
    return mean is not None and math.isfinite(float(mean))


# ----------------------------------------------------------------------------- presets


def test_presets_are_ordered_by_cost():
    tiny, default, full = PRESETS["tiny"], PRESETS["default"], PRESETS["full"]
    assert tiny.n < default.n < full.n
    assert tiny.image_size < default.image_size < full.image_size
    assert tiny.max_epochs < default.max_epochs < full.max_epochs
    assert set(full.variants) >= {"baseline", "tau_k", "tau_l", "unconstrained", "dual", "exact", "multilevel"}
    assert len(full.seeds) == 5 and full.accelerator == "auto"
    assert len(default.seeds) >= 3  # every number a mean ± std over seeds, with an interval
    assert set(default.variants) >= {"baseline", "unconstrained", "dual", "exact", "multilevel"}
    json.dumps([p.to_dict() for p in PRESETS.values()])  # serializable


def test_default_preset_tests_on_the_sealed_draw_with_enough_patients():
    """The default demo's claims rest on a draw no study selected on, with >= 60 test patients (a cluster
    bootstrap under-covers below about 30 clusters); the split is computed as training computes it."""
    from dualattn.data import split_indices
    from dualattn.data.sealed import SEALED_DATA_SEED

    p = PRESETS["default"]
    assert p.data_seed == SEALED_DATA_SEED and p.data_options == {"slices_per_patient": 1}
    n_patients = p.n // 2  # one slice per patient, two hemisphere halves each (patient ids as the generator names them)
    patients = [f"brain{i // 2:05d}" for i in range(p.n)]
    labels = [i % 2 for i in range(p.n)]
    split = split_indices(patients, labels=labels, fractions=p.split_fractions, seed=0)
    test_patients = {patients[i] for i in split["test"]}
    assert len(test_patients) >= 60 and n_patients == 320
    assert len(split["train"]) >= 440  # as many training images as the first edition's 448


def test_preset_validation():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        get_preset("huge")
    with pytest.raises(ValueError, match=r"unknown preset field\(s\) \['epochs'\]"):
        get_preset("tiny", epochs=3)
    with pytest.raises(ValueError, match="n=0 must be >= 1"):
        get_preset("tiny", n=0)
    with pytest.raises(ValueError, match="must include 'baseline'"):
        dataclasses.replace(PRESETS["tiny"], variants=("exact",))
    with pytest.raises(ValueError, match="seeds must not be empty"):
        DemoPreset(name="x", description="", seeds=())
    assert get_preset("tiny", max_epochs=2).max_epochs == 2


def test_method_sources_follow_the_paper():
    got = method_sources(["gradcam", "exact", "cvx", "dual", "tau_l", "attention", "integrated_gradients"],
                         ["baseline", "exact", "unconstrained", "tau_l"])
    assert got == {"gradcam": "baseline", "exact": "exact", "cvx": "unconstrained", "tau_l": "tau_l",
                   "integrated_gradients": "baseline"}


def test_run_demo_rejects_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="neither an embedded dataset"):
        run_demo(preset="tiny", dataset="no-such-data", out=tmp_path)


# ----------------------------------------------------------------------------- the tiny demo


def test_tiny_demo_runs_under_budget(tiny_demo):
    outcome, messages, seconds = tiny_demo
    assert outcome.results.is_file() and outcome.report.is_file()
    assert seconds < 90, f"tiny demo took {seconds:.0f} s (budget 90 s)"
    assert any(m.startswith("[start] train 1/7: baseline") for m in messages)  # progress shown
    assert outcome.skipped_steps == []
    assert sorted(p.name for p in (outcome.out / ".steps").glob("*.json")) == sorted(f"{s}.json" for s in STEPS)


def test_tiny_demo_results_hold_every_table(tiny_demo):
    from dualattn.pipelines.demo import _available_methods

    outcome, _, _ = tiny_demo
    results = json.loads(outcome.results.read_text())
    variants = ["baseline", "tau_k", "tau_l", "unconstrained", "dual", "exact", "multilevel"]
    methods = method_sources(_available_methods(PRESETS["tiny"]), variants)
    assert set(methods) >= {"gradcam", "input_x_gradient", "deeplift", "lrp", "integrated_gradients", "cvx",
                            "tau_k", "tau_l", "unconstrained", "dual", "exact", "multilevel"}
    seg, pert, cls = results["segmentation"], results["perturbation"], results["classification"]
    for method in methods:
        rows = [r for r in seg["rows"] if r.split(" [")[0] == method]
        assert rows, f"no segmentation row for {method}"
        for row in rows:
            assert all(_finite(seg["rows"][row][c]) for c in seg["columns"]), (row, seg["rows"][row])
            assert all(_finite(pert["rows"][row][c]) for c in pert["columns"]), (row, pert["rows"][row])
        for block, curve in results["curves"][method].items():
            assert len(curve["fractions"]) == PRESETS["tiny"].perturbation_steps + 1
            assert all(math.isfinite(v) for v in curve["least_first"]["mean"]), (method, block)
    assert set(cls["rows"]) == set(variants)
    for row in cls["rows"].values():
        assert _finite(row["balanced_accuracy"]) and _finite(row["params"])
    meta = results["meta"]
    assert meta["seeds"] == [0] and meta["wall_time_s"] > 0 and "torch" in meta["versions"]
    # the second edition of the ruler: the sealed draw, both protocols, the hiding test, the probability curves
    from dualattn.data.sealed import SEALED_DATA_SEED

    assert meta["data_seed"] == SEALED_DATA_SEED and meta["sealed"] is True and meta["n_patients"] >= 2
    assert set(results["protocols"]) == {"common_classifier", "own_model"}
    assert set(results["own_model"]["dual"]["methods"]) >= {"dual", "lrp"}
    cell = results["own_model"]["dual"]["methods"]["lrp"]["blocks"]["block3"]
    assert {"srg_prob@mean", "hidden_swap_flips@20", "kept_swap_flips@20"} <= set(cell)
    assert all(c["protocol"] in ("common_classifier", "own_model") and "p_adjusted" in c
               for c in results["comparisons"])
    # a model card in every run folder, with what the evaluation measured, and one per variant in the report
    for variant, paths in outcome.runs.items():
        for path in paths:
            card = (path / "MODEL_CARD.md").read_text()
            assert card.startswith(f"# Model card: {variant} (unet_encoder)") and "## Measured" in card
    assert "Model cards" in outcome.report.read_text()
    # the whole file is standard JSON: no NaN tokens
    assert "NaN" not in outcome.results.read_text()


def test_tiny_demo_table3_matches_independent_recomputation(tiny_demo):
    """Parameter counts and balanced accuracy recomputed from the run folders with sklearn."""
    from sklearn.metrics import balanced_accuracy_score

    from dualattn.data import FolderDataset
    from dualattn.train import load_run

    outcome, _, _ = tiny_demo
    results = json.loads(outcome.results.read_text())
    preset = PRESETS["tiny"]
    data = next((outcome.out / "data").iterdir())
    test = FolderDataset(data, split="test", size=preset.image_size, seed=0)
    count = min(len(test), preset.max_eval_images)
    items = [test[i] for i in range(count)]
    x = torch.stack([it["image"] for it in items])
    y = np.array([int(it["label"]) for it in items])
    for variant, runs in outcome.runs.items():
        model = load_run(runs[0])
        row = results["classification"]["rows"][variant]
        params = row["params"]["mean"] if isinstance(row["params"], dict) else row["params"]
        assert params == sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            pred = model(x).argmax(dim=1).numpy()
        ref = 100.0 * balanced_accuracy_score(y, pred)
        assert row["balanced_accuracy"]["mean"] == pytest.approx(ref, abs=1e-6), variant


def test_tiny_demo_examples_hold_every_method(tiny_demo):
    outcome, _, _ = tiny_demo
    examples = load_examples(outcome.out / "examples.npz")
    assert 1 <= len(examples) <= PRESETS["tiny"].n_examples
    expected = {"gradcam", "input_x_gradient", "deeplift", "lrp", "integrated_gradients", "cvx", "tau_k", "tau_l",
                "unconstrained", "dual", "exact", "multilevel"}
    for ex in examples:
        assert ex["label"] == 1 and ex["mask"].sum() > 0
        assert expected <= set(ex["maps"])
        for name, m in ex["maps"].items():
            assert m.ndim == 2 and np.isfinite(m).all(), name
        # attention maps are distributions per sample
        for name in ("tau_k", "dual", "exact", "multilevel"):
            assert ex["maps"][name].sum() == pytest.approx(1.0, abs=1e-4)


def test_tiny_demo_report_is_self_contained(tiny_demo):
    outcome, _, _ = tiny_demo
    page = outcome.report.read_text(encoding="utf-8")
    for heading in ("What was run", "Implicit segmentation (paper Table 2 layout)",
                    "Input perturbation (paper Table 1 layout)", "Example scans (paper Figures 4-5)",
                    "Classifiers (paper Table 3 layout)"):
        assert heading in page
    assert "<script" not in page and "<link" not in page and "http://" not in page
    assert page.count('src="data:image/png;base64,') >= 2
    assert page.count('class="best"') >= 5


def test_tiny_demo_rerun_reuses_every_step(tiny_demo):
    outcome, _, _ = tiny_demo
    before = json.loads(outcome.results.read_text())
    t0 = time.perf_counter()
    again = run_demo(preset="tiny", out=outcome.out)
    assert time.perf_counter() - t0 < 20
    assert sorted(again.skipped_steps) == sorted(STEPS)
    after = json.loads(again.results.read_text())
    for key in ("segmentation", "perturbation", "classification"):
        assert after[key] == before[key]


def test_tiny_demo_redoes_only_a_missing_step(tiny_demo):
    outcome, _, _ = tiny_demo
    (outcome.out / ".steps" / "examples.json").unlink()
    (outcome.out / "examples.npz").unlink()
    again = run_demo(preset="tiny", out=outcome.out)
    assert "examples" not in again.skipped_steps
    assert sorted(again.skipped_steps) == sorted(s for s in STEPS if s != "examples")
    assert (outcome.out / "examples.npz").is_file()


def test_tiny_demo_refuses_another_preset_in_the_same_folder(tiny_demo):
    outcome, _, _ = tiny_demo
    with pytest.raises(ValueError, match="another preset or dataset"):
        run_demo(preset=get_preset("tiny", max_epochs=2), out=outcome.out)


def test_demo_and_report_cli(tiny_demo, tmp_path):
    from typer.testing import CliRunner

    from dualattn.cli import app

    outcome, _, _ = tiny_demo
    runner = CliRunner()
    res = runner.invoke(app, ["demo", "--preset", "tiny", "--out", str(outcome.out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["report", str(outcome.results), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Example scans" in page  # examples.npz beside results.json was picked up
    bad = runner.invoke(app, ["demo", "--preset", "nope", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2


@pytest.mark.browser
def test_tiny_demo_report_renders_in_chromium(tiny_demo, tmp_path):
    from test_report import render_in_chromium

    outcome, _, _ = tiny_demo
    console, rgb = render_in_chromium(outcome.report, tmp_path / "shot.png", tmp_path / "profile")
    assert console == [], f"console errors: {console}"
    assert rgb.std() > 10.0, "screenshot is blank"
    right = rgb[:, int(rgb.shape[1] * 0.92):]
    assert right.std() < 8.0, "content overflows to the right edge (horizontal scrolling)"


def test_evaluate_cli_accepts_a_demo_folder(tiny_demo, tmp_path):
    """`dualattn evaluate --runs DEMO_OUT --data OTHER` re-scores every model the demo trained."""
    from typer.testing import CliRunner

    from dualattn.cli import app
    from dualattn.data import make_dataset

    outcome, _, _ = tiny_demo
    other = make_dataset("synthetic-brain", tmp_path / "other", n=24, size=32, seed=7)
    res = CliRunner().invoke(app, [
        "evaluate", "--runs", str(outcome.out), "--data", str(other), "--out", str(tmp_path / "ev"),
        "--methods", "exact,gradcam", "--max-images", "6", "--steps", "2", "--sanity-images", "0",
        "--no-progress"])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert set(results["classification"]["rows"]) == set(outcome.runs)
    assert {r.split(" [")[0] for r in results["segmentation"]["rows"]} == {"exact", "gradcam"}
    res = CliRunner().invoke(app, ["report", str(tmp_path / "ev" / "results.json"), "--out",
                                   str(tmp_path / "ev" / "report.html")])
    assert res.exit_code == 0, res.output


# ----------------------------------------------------------------------------- golden results

GOLDEN = Path(__file__).parent / "golden" / "tiny_demo_results.json"
#: the machine the golden numbers were made on (see test_tiny_demo_results_match_the_golden_file)
GOLDEN_MACHINE = GOLDEN.with_name("tiny_demo_machine.json")
#: fields that legitimately differ between two runs of the same code: clocks, reuse counts, the machine
_VOLATILE = {"created", "wall_time_s", "step_seconds", "reused_steps", "cost_ms", "reused_units", "machine", "versions"}
#: free-text fields that quote numbers (they follow the numbers, which are compared where they can be)
_TEXT_WITH_NUMBERS = {"warnings", "notes", "note", "claim_blocked"}


def machine_fingerprint() -> dict:
    """What decides float32 rounding on this machine: the CPU's model and instruction-set flags, the math
    libraries torch dispatches to, and the package versions (the same code gives other low bits elsewhere:
    oneDNN and MKL pick kernels by CPU, and one tiny epoch amplifies a last-bit difference into another
    model)."""
    import platform

    import numpy

    cpu, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    cpu = cpu or platform.processor()
    return {"cpu": cpu, "flags_sha256": __import__("hashlib").sha256(flags.encode()).hexdigest()[:16],
            "torch": torch.__version__, "numpy": numpy.__version__,
            "capability": torch.backends.cpu.get_cpu_capability()}


def _normalized(obj, out: str):
    """results.json without its volatile fields, the output folder replaced by ``<OUT>``."""
    if isinstance(obj, dict):
        return {k: _normalized(v, out) for k, v in obj.items() if k not in _VOLATILE}
    if isinstance(obj, list):
        return [_normalized(v, out) for v in obj]
    if isinstance(obj, str):
        return obj.replace(out, "<OUT>")
    return obj


def _assert_same(got, want, where="results", *, numbers=True):
    """Equal structure (keys, lengths, types, every string and int) and, with ``numbers``, equal floats."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (where, sorted(set(got) ^ set(want)))
        for k in want:
            if not numbers and k in _TEXT_WITH_NUMBERS:
                assert type(got[k]) is type(want[k]) or got[k] is None or want[k] is None, f"{where}.{k}"
                continue
            _assert_same(got[k], want[k], f"{where}.{k}", numbers=numbers)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}[{i}]", numbers=numbers)
    elif isinstance(want, float) and not isinstance(want, bool):
        if numbers:
            assert got == pytest.approx(want, rel=1e-6, abs=1e-6, nan_ok=True), where
        else:
            assert got is None or isinstance(got, (int, float)), where
    elif not numbers and (isinstance(want, bool) or want is None or isinstance(got, float)):
        pass  # a claim's verdict or an undefined value follows the numbers
    else:
        assert got == want, where


def test_tiny_demo_results_match_the_golden_file(tiny_demo):
    """The tiny demo's results.json (clock, machine and path fields aside) is the one recorded in
    tests/golden/: refactors must not change a number. Regenerate the file only for an intended change
    (`python -m dualattn demo --preset tiny --threads 1 --out OUT` with OMP_NUM_THREADS=1, paths replaced by <OUT>,
    and tests/golden/tiny_demo_machine.json from `machine_fingerprint()`).

    The numbers are compared on a machine like the one that made the file (same CPU flags, libraries and
    versions): float32 kernels differ between CPUs, and training amplifies their last bits (on another CPU
    of this project's pool the same code gave the tau_k map AP 13.7 instead of 14.1). Elsewhere the layout,
    every key, string and integer still has to match."""
    outcome, _, _ = tiny_demo
    got = _normalized(json.loads(outcome.results.read_text()), str(outcome.out))
    want = _normalized(json.loads(GOLDEN.read_text()), "<OUT>")
    same_machine = json.loads(GOLDEN_MACHINE.read_text()) == machine_fingerprint()
    _assert_same(got, want, numbers=same_machine)


def test_demo_summary_script_reads_the_demo(tiny_demo):
    """benchmarks/demo_summary.py: the numbers README quotes come from this summary of a demo folder."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "demo_summary", Path(__file__).resolve().parents[1] / "benchmarks" / "demo_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    outcome, _, _ = tiny_demo
    summary = module.summarize(outcome.out)
    results = json.loads(outcome.results.read_text())
    assert summary["preset"]["name"] == "tiny" and summary["seeds"] == [0]
    assert summary["maps"]["exact [block3]"]["ap"]["mean"] == round(
        results["methods"]["exact"]["blocks"]["block3"]["ap"]["mean"], 2)
    assert {c["metric"] for c in summary["comparisons"]} >= {"ap", "srg_prob@road", "balanced_accuracy"}
    assert all(c["protocol"] in ("common_classifier", "own_model") for c in summary["comparisons"])
    assert summary["data_seed"] == results["meta"]["data_seed"] and summary["sealed"] is True
    assert summary["n_patients"] == results["meta"]["n_patients"]
    assert json.dumps(summary)  # serializable
