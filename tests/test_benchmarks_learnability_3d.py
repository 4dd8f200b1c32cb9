"""benchmarks/learnability_3d.py: its selection rule on hand-built cases, the sealed draw refused, and a tiny
screening that trains as the demo does and writes the fields docs/demo.md quotes."""

from __future__ import annotations

import doctest
import json
import math
from pathlib import Path

import pytest
import torch

from dualattn.data.sealed import SEALED_DATA_SEED

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def _bench_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    torch.set_num_threads(1)


@pytest.fixture
def l3d():
    import learnability_3d

    return learnability_3d


def _stat(mean, std, n=3):
    return {"mean": mean, "std": std, "n": n}


def test_judge_needs_every_variant_at_the_mean_and_the_std(l3d):
    v = ("baseline", "dual", "exact")
    ok = l3d.judge({"baseline": _stat(88.0, 5.0), "dual": _stat(95, 1), "exact": _stat(90, 2)}, variants=v)
    assert ok["admissible"] and ok["misses"] == [] and ok["score"] == pytest.approx(83.0)  # min(83, 94, 88)
    low = l3d.judge({"baseline": _stat(87.9, 1), "dual": _stat(95, 1), "exact": _stat(90, 2)}, variants=v)
    assert not low["admissible"] and low["misses"] == ["baseline: mean 87.9 < 88"]
    wide = l3d.judge({"baseline": _stat(95, 1), "dual": _stat(95, 5.1), "exact": _stat(90, 2)}, variants=v)
    assert not wide["admissible"] and wide["misses"] == ["dual: std 5.1 > 5"]
    assert wide["score"] == pytest.approx(88.0)  # dual: 95 - 5.1 = 89.9; exact: 88; baseline: 94
    short = l3d.judge({"baseline": _stat(95, 1, n=2), "dual": _stat(95, 1), "exact": _stat(95, 1)}, variants=v)
    assert not short["admissible"] and math.isnan(short["score"]) and short["misses"] == ["baseline: 2 of 3 runs"]
    missing = l3d.judge({"baseline": _stat(95, 1), "dual": _stat(95, 1)}, variants=v)
    assert not missing["admissible"] and missing["misses"] == ["exact: 0 of 3 runs"]


def test_choose_takes_the_cheapest_admissible_else_the_best_score(l3d):
    cands = [{"key": "cheap-bad", "admissible": False, "score": 70.0, "cost_s": 20.0},
             {"key": "mid-ok", "admissible": True, "score": 85.0, "cost_s": 40.0},
             {"key": "dear-ok", "admissible": True, "score": 93.0, "cost_s": 60.0}]
    assert l3d.choose(cands) == "mid-ok"  # cheapest admissible, though another scores higher
    none_ok = [{**c, "admissible": False} for c in cands]
    assert l3d.choose(none_ok) == "dear-ok"  # the best score
    tie = none_ok + [{"key": "dear-ok-cheaper", "admissible": False, "score": 93.0, "cost_s": 50.0}]
    assert l3d.choose(tie) == "dear-ok-cheaper"  # ties: the cheaper
    assert l3d.choose([{"key": "x", "admissible": False, "score": math.nan, "cost_s": 1.0}]) is None


def test_ladder_pairs_are_the_two_best_scored_pairs_at_the_base_size(l3d):
    base = l3d.BASE_SIZE

    def c(norm, policy, score, **size):
        return {**base, **size, "norm": norm, "augment_policy": policy, "score": score, "cost_s": 1.0,
                "key": f"{norm}-{policy}-{size}"}

    cands = [c("batch", "anatomy", 80), c("group", "anatomy", 86), c("instance", "lr-flip-affine", 84),
             c("group", "lr-flip-affine", math.nan), c("batch", "lr-flip-affine", 99, n=640)]  # not the base size
    assert l3d.ladder_pairs(cands) == [("group", "anatomy"), ("instance", "lr-flip-affine")]


def test_confirmation_needs_all_five_variants_and_the_budget(l3d):
    good = {v: _stat(92, 2) for v in l3d.DEMO_VARIANTS}
    assert l3d.confirmation_passes({"val_balanced_accuracy": good, "wall_time_s": 899.0})
    assert not l3d.confirmation_passes({"val_balanced_accuracy": good, "wall_time_s": 901.0})
    assert not l3d.confirmation_passes({"val_balanced_accuracy": {**good, "multilevel": _stat(80, 2)},
                                        "wall_time_s": 600.0})


def test_rule_examples_run(l3d):
    result = doctest.testmod(l3d)
    assert result.attempted > 0 and result.failed == 0


def test_the_sealed_draw_is_refused_before_any_data(l3d, tmp_path, monkeypatch):
    monkeypatch.setattr(l3d, "_data", lambda *a, **k: pytest.fail("data generated before the refusal"))
    with pytest.raises(ValueError, match="sealed test draw"):
        l3d.main(["--out", str(tmp_path / "l.json"), "--work", str(tmp_path), "--data-seed", str(SEALED_DATA_SEED)])
    with pytest.raises(ValueError, match="sealed test draw"):
        l3d.main(["--out", str(tmp_path / "l.json"), "--work", str(tmp_path), "--data-seed", str(SEALED_DATA_SEED),
                  "--confirm"])
    assert not (tmp_path / "l.json").exists()


def test_a_tiny_screening_trains_as_the_demo_does_and_writes_its_json(l3d, tmp_path, monkeypatch):
    monkeypatch.setattr(l3d, "BASE_SIZE", {"n": 24, "epochs": 1, "features": 2})
    monkeypatch.setattr(l3d, "NORMS", ("group",))
    monkeypatch.setattr(l3d, "POLICIES", ("anatomy",))
    monkeypatch.setattr(l3d, "SCREEN_VARIANTS", ("baseline",))
    monkeypatch.setattr(l3d, "SEEDS", (0,))
    monkeypatch.setattr(l3d, "SIZE_LADDER", ())
    monkeypatch.setattr(l3d, "PRECISE_BN_SIZES", ({"n": 24, "epochs": 1, "features": 2},))
    out = tmp_path / "l.json"
    l3d.main(["--out", str(out), "--work", str(tmp_path / "w"), "--workers", "1", "--data-seed", "5"])
    rep = json.loads(out.read_text())
    assert rep["data_seed"] == 5 and rep["rule"] == l3d.RULE
    assert set(rep["candidates"]) == {"n24_e1_f2_group_anatomy", "n24_e1_f2_batch_lr-flip-affine_pbn64"}
    key = "n24_e1_f2_group_anatomy"
    cand = rep["candidates"][key]
    assert cand["stage"] == "policy" and cand["runs"] == 1
    # amendment 2 (nothing admissible at 1 epoch): the precise-BN candidate trains with the statistics recomputed
    pbn = rep["candidates"]["n24_e1_f2_batch_lr-flip-affine_pbn64"]
    assert pbn["stage"] == "precise_bn" and pbn["precise_bn"] == 64 and pbn["runs"] == 1
    assert cand["cost_s"] > 0 and set(cand["val_balanced_accuracy"]) == {"baseline"}
    run = tmp_path / "w" / key / "runs" / "baseline" / "seed0"
    from dualattn.runs import RunDir

    cfg = RunDir(run).config
    assert cfg["augment_policy"] == "anatomy" and cfg["model_kwargs"]["norm"] == "group"  # the demo's own config
    assert cfg["max_epochs"] == 1 and cfg["split_fractions"] == [0.7, 0.15, 0.15]
    pbn_run = tmp_path / "w" / "n24_e1_f2_batch_lr-flip-affine_pbn64" / "runs" / "baseline" / "seed0"
    assert RunDir(pbn_run).config["precise_bn"] == 64
    # a second call reuses the finished runs (no new row)
    l3d.main(["--out", str(out), "--work", str(tmp_path / "w"), "--workers", "1", "--data-seed", "5"])
    assert len(json.loads(out.read_text())["runs"]) == 2


def test_the_3d_preset_is_the_candidate_the_stored_screening_chose(l3d):
    """The ``3d`` preset's size, norm, augmentation and batch are what ``benchmarks/results/learnability_3d.json``
    chose on val (docs/demo.md quotes that file); retuning one without the other fails here."""
    from dualattn.pipelines.demo import get_preset

    stored = json.loads((BENCH / "results" / "learnability_3d.json").read_text(encoding="utf-8"))
    assert stored["data_seed"] != SEALED_DATA_SEED
    chosen = stored["candidates"][stored["chosen"]]
    assert l3d.choose(list(stored["candidates"].values())) == stored["chosen"]
    preset = get_preset("3d")
    assert (preset.n, preset.max_epochs, preset.batch_size) == (chosen["n"], chosen["epochs"],
                                                                chosen.get("batch", l3d.BASE_BATCH))
    assert preset.model_kwargs.get("features") == chosen["features"]
    assert preset.model_kwargs.get("norm", "batch") == chosen["norm"]
    assert preset.augment_policy == chosen["augment_policy"]
    assert preset.precise_bn == chosen.get("precise_bn", 0)


def test_ladder_pairs_ignore_the_amendments_batch_8_candidates(l3d):
    base = {**l3d.BASE_SIZE, "admissible": False, "cost_s": 1.0}
    cands = [{**base, "key": "a", "norm": "batch", "augment_policy": "anatomy", "score": 70.0},
             {**base, "key": "b", "norm": "group", "augment_policy": "anatomy", "score": 60.0},
             {**base, "key": "c", "norm": "instance", "augment_policy": "anatomy", "score": 90.0, "batch": 8}]
    assert l3d.ladder_pairs(cands) == [("batch", "anatomy"), ("group", "anatomy")]
    assert l3d.candidate_key(cands[2]) == "n320_e6_f8_instance_anatomy_b8"
    assert l3d.candidate_key(cands[0]) == "n320_e6_f8_batch_anatomy"


def test_explore_never_writes_into_the_rules_screening_and_parses_its_fields(l3d, tmp_path):
    rule_file = tmp_path / "rule.json"
    rule_file.write_text(json.dumps({"data_seed": 3, "rule": l3d.RULE, "runs": [], "candidates": {}}), encoding="utf-8")
    with pytest.raises(SystemExit, match="file of its own"):
        l3d.main(["--out", str(rule_file), "--work", str(tmp_path), "--explore",
                  "n=16,epochs=1,features=2,norm=batch,augment_policy=none"])
    with pytest.raises(SystemExit, match="unknown field"):
        l3d.parse_candidate("n=16,epochs=1,features=2,norm=batch,augment_policy=none,momentum=0.9")
    with pytest.raises(SystemExit, match="lacks"):
        l3d.parse_candidate("n=16,epochs=1")
    c = l3d.parse_candidate("n=16,epochs=1,features=2,norm=batch,augment_policy=none,batch=4,lr=0.003")
    assert l3d.candidate_key(c) == "n16_e1_f2_batch_none_b4_lr0.003"
    assert l3d._preset(c, 3).lr == 0.003 and l3d._preset(c, 3).batch_size == 4
