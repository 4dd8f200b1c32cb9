"""The paired, seed-stratified bootstrap and the ``comparisons`` records: hand-computed cases with injected
resamples, sklearn's balanced accuracy, a naive loop, and the properties a claim rests on."""

from __future__ import annotations

import json
import math
import time
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from dualattn.evaluate import metrics as M
from dualattn.evaluate.comparisons import (
    COMPARISON_KEYS,
    Curves,
    PerImage,
    Srg,
    comparisons,
    paired_bootstrap,
)
from dualattn.evaluate.specs import Direction
from dualattn.evaluate.statistics import (
    balanced_accuracy_curves,
    bootstrap_indices,
    bootstrap_p_value,
    percentile_interval,
    resample_counts,
    strata_runs,
    trapezoid_auc,
)


def _curves_from_cut(labels, cuts, n_fractions, order, n_classes=2):
    """Curves whose run r predicts image i correctly at fractions f < cuts[r, i], wrongly after."""
    cuts = np.asarray(cuts)
    f = np.arange(n_fractions)
    correct = f[None, None, :] < cuts[:, :, None]
    wrong = (np.asarray(labels)[None, :, None] + 1) % n_classes
    preds = np.where(correct, np.asarray(labels)[None, :, None], wrong)
    return Curves(preds, labels, np.linspace(0.0, 1.0, n_fractions), order)


# ------------------------------------------------------------------ building blocks
def test_resample_counts_match_bincount_per_row():
    idx = bootstrap_indices(7, 3, 11, seed=4)
    assert idx.shape == (7, 3, 11) and idx.min() >= 0 and idx.max() < 11
    c = resample_counts(idx, 11)
    for b in range(7):
        for s in range(3):
            np.testing.assert_array_equal(c[b, s], np.bincount(idx[b, s], minlength=11))
    np.testing.assert_array_equal(bootstrap_indices(7, 3, 11, seed=4), idx)  # deterministic
    assert not np.array_equal(bootstrap_indices(7, 3, 11, seed=5), idx)


def test_strata_runs_pairs_by_modulo():
    a, b = strata_runs(2, 3)
    assert a.tolist() == [0, 1, 0] and b.tolist() == [0, 1, 2]
    a, b = strata_runs(5, 5)
    assert a.tolist() == b.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "d,expected",
    [
        (np.arange(1.0, 10.0), 0.2),  # 0 of 9 <= 0: 2 * (1 + 0) / 10
        (np.array([-1.0, 1.0, 2.0, 3.0]), 0.8),  # 2 * min(2, 4) / 5
        (np.array([-3.0, -2.0, -1.0, 0.5]), 0.8),  # symmetric: 2 * min(4, 2) / 5
        (np.zeros(5), 1.0),  # 2 * 6 / 6 clipped to 1
        (np.array([-1.0, 1.0]), 1.0),  # 2 * 2 / 3 = 4/3 clipped
    ],
)
def test_bootstrap_p_value_hand_computed(d, expected):
    assert bootstrap_p_value(d) == pytest.approx(expected, abs=1e-15)


def test_percentile_interval_is_numpy_percentile():
    r = np.random.default_rng(0).normal(size=301)
    assert percentile_interval(r) == (np.percentile(r, 2.5), np.percentile(r, 97.5))
    assert percentile_interval(r, 0.9) == pytest.approx((np.percentile(r, 5), np.percentile(r, 95)), abs=1e-15)
    with pytest.raises(ValueError, match="level"):
        percentile_interval(r, 1.0)
    with pytest.raises(ValueError, match="finite"):
        percentile_interval(np.array([1.0, np.nan]))


# ------------------------------------------------------------------ balanced accuracy and AUC
def test_balanced_accuracy_auc_against_sklearn_and_trapezoid():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 25)
    preds = rng.integers(0, 3, (2, 25, 5))
    preds[:, :, 0] = labels  # some structure: perfect at fraction 0
    for fractions in ([0.0, 0.1, 0.3, 0.6, 1.0], [0.2, 0.3, 0.5, 0.7, 0.8]):
        cur = Curves(preds, labels, fractions)
        want = []
        for r in range(2):
            bal = [balanced_accuracy_score(labels, preds[r, :, f]) for f in range(5)]
            want.append(100 * np.trapezoid(bal, fractions) / (fractions[-1] - fractions[0]))
            # the package's own curve_auc / balanced_accuracy agree too
            acc = [M.balanced_accuracy(torch.as_tensor(labels), torch.as_tensor(preds[r, :, f])) for f in range(5)]
            assert M.curve_auc(fractions, acc) == pytest.approx(want[-1], abs=1e-12)
        np.testing.assert_allclose(cur.run_statistics(), want, rtol=0, atol=1e-12)
        assert cur.value() == pytest.approx(np.mean(want), abs=1e-12)


def test_balanced_accuracy_on_resamples_against_sklearn():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 12)
    preds = rng.integers(0, 3, (2, 12, 4))
    idx = bootstrap_indices(20, 2, 12, seed=3)
    bal = balanced_accuracy_curves(preds, labels, resample_counts(idx, 12))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns when a resample lacks a predicted class
        for b in range(20):
            for s in range(2):
                i = idx[b, s]
                for f in range(4):
                    assert bal[b, s, f] == pytest.approx(balanced_accuracy_score(labels[i], preds[s, i, f]), abs=1e-12)


def test_curves_hand_computed_resamples():
    # labels 0 0 1 1; fractions 0, .5, 1; per image: correct while f < cut (cuts 2, 1, 2, 1)
    labels = np.array([0, 0, 1, 1])
    preds = np.array([[[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]]])
    cur = Curves(preds, labels, (0.0, 0.5, 1.0))
    # all images: balanced accuracy 1, 1/2, 0 -> AUC 100 * (0.5 * 1.5 / 2 + 0.5 * 0.5 / 2) = 50
    assert cur.value() == 50.0
    counts = resample_counts(np.array([[[0, 0, 0, 2]], [[1, 1, 1, 1]]]), 4)
    # [0,0,0,2]: recalls (1, 1), (1, 1), (0, 0) -> 1, 1, 0 -> AUC 75
    # [1,1,1,1]: only class 0 present: 1, 0, 0 -> AUC 25
    np.testing.assert_array_equal(cur.strata_statistics(np.array([0]), counts), [[75.0], [25.0]])


def test_trapezoid_auc_checks():
    assert trapezoid_auc([0.0, 1.0], np.array([[0.5, 0.5]])).tolist() == [50.0]
    with pytest.raises(ValueError, match="strictly increasing"):
        trapezoid_auc([0.0, 0.0], np.ones(2))


# ------------------------------------------------------------------ the paired bootstrap, by hand
def test_paired_bootstrap_hand_computed_with_injected_indices():
    a = PerImage(np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 6.0]]))
    b = PerImage(np.array([[1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 1.0, 7.0]]))
    idx = np.array(
        [
            [[0, 0, 1, 1], [3, 3, 3, 3]],  # A: (1.5 + 6) / 2 = 3.75   B: (1 + 7) / 2 = 4
            [[2, 3, 2, 3], [0, 1, 2, 3]],  # A: (3.5 + 3) / 2 = 3.25   B: (1 + 2.75) / 2 = 1.875
            [[3, 3, 3, 3], [1, 2, 1, 2]],  # A: (4 + 2) / 2 = 3        B: (1 + 1) / 2 = 1
        ]
    )
    r = paired_bootstrap(a, b, indices=idx)
    np.testing.assert_array_equal(r.replicates_a, [3.75, 3.25, 3.0])
    np.testing.assert_array_equal(r.replicates_b, [4.0, 1.875, 1.0])
    assert (r.a, r.b) == (2.75, 1.875)  # means over runs of (2.5, 3) and (1, 2.75)
    assert r.ratio == pytest.approx(22 / 15, abs=1e-15)
    assert r.difference == 0.875
    # ratio replicates 15/16, 26/15, 3; numpy's linear percentile at positions 0.05 and 1.95
    assert r.ci_low == pytest.approx(15 / 16 + 0.05 * (26 / 15 - 15 / 16), abs=1e-12)
    assert r.ci_high == pytest.approx(26 / 15 + 0.95 * (3 - 26 / 15), abs=1e-12)
    # differences -0.25, 1.375, 2
    assert r.diff_ci_low == pytest.approx(-0.25 + 0.05 * 1.625, abs=1e-12)
    assert r.diff_ci_high == pytest.approx(1.375 + 0.95 * 0.625, abs=1e-12)
    assert r.p_value == 1.0  # 2 * min(2/4, 3/4)
    assert (r.n_images, r.n_strata, r.n_boot, r.note) == (4, 2, 3, None)


def test_strata_pair_runs_modulo_with_unequal_run_counts():
    # A's runs are constant 10, 20; B's 1, 2, 4: three strata pair A (0, 1, 0) with B (0, 1, 2)
    a = PerImage(np.array([[10.0] * 5, [20.0] * 5]))
    b = PerImage(np.array([[1.0] * 5, [2.0] * 5, [4.0] * 5]))
    r = paired_bootstrap(a, b, n_boot=50, seed=1)
    assert r.n_strata == 3
    np.testing.assert_allclose(r.replicates_a, 40 / 3, rtol=1e-15)  # (10 + 20 + 10) / 3
    np.testing.assert_allclose(r.replicates_b, 7 / 3, rtol=1e-15)
    assert (r.a, r.b) == (15.0, 7 / 3)  # point values: each method's mean over its own runs
    with pytest.raises(ValueError, match=r"indices must be \(B, 3, 5\)"):
        paired_bootstrap(a, b, indices=np.zeros((4, 2, 5), dtype=int))
    # the swapped order pairs the same way
    r2 = paired_bootstrap(b, a, n_boot=50, seed=1)
    np.testing.assert_array_equal(r2.replicates_a, r.replicates_b)


# ------------------------------------------------------------------ against a naive loop
def _naive_statistic(ev, run, images):
    if isinstance(ev, PerImage):
        vals = [ev.values[run, i] for i in images if not math.isnan(ev.values[run, i])]
        return sum(vals) / len(vals) if vals else math.nan
    if isinstance(ev, Srg):
        return _naive_statistic(ev.least, run, images) - _naive_statistic(ev.most, run, images)
    fr = ev.fractions
    bal = []
    for f in range(len(fr)):
        recalls = []
        for c in sorted({int(ev.labels[i]) for i in images}):
            mine = [i for i in images if ev.labels[i] == c]
            recalls.append(sum(1 for i in mine if ev.preds[run, i, f] == c) / len(mine))
        bal.append(sum(recalls) / len(recalls))
    area = sum((fr[k + 1] - fr[k]) * (bal[k] + bal[k + 1]) / 2 for k in range(len(fr) - 1))
    return 100 * area / (fr[-1] - fr[0])


def _naive_replicates(a, b, indices):
    s_count = max(a.n_runs, b.n_runs)
    out_a, out_b = [], []
    for rep in indices:
        sa = [_naive_statistic(a, s % a.n_runs, list(rep[s])) for s in range(s_count)]
        sb = [_naive_statistic(b, s % b.n_runs, list(rep[s])) for s in range(s_count)]
        out_a.append(sum(sa) / s_count)
        out_b.append(sum(sb) / s_count)
    return np.array(out_a), np.array(out_b)


def _evidence_pair(kind, rng):
    n = 17
    if kind == "per_image":
        va, vb = rng.normal(50, 10, (3, n)), rng.normal(45, 10, (2, n))
        va[0, 3] = vb[1, 5] = va[2, 5] = np.nan
        return PerImage(va), PerImage(vb)
    labels = rng.integers(0, 3, n)
    fr = (0.0, 0.2, 0.5, 1.0)

    def curves(r, order):
        return Curves(rng.integers(0, 3, (r, n, 4)), labels, fr, order)

    if kind == "curves":
        return curves(3, "least_first"), curves(2, "least_first")
    srg_a = Srg(curves(3, "least_first"), curves(3, "most_first"))
    return srg_a, Srg(curves(2, "least_first"), curves(2, "most_first"))


@pytest.mark.parametrize("kind", ["per_image", "curves", "srg"])
def test_vectorized_replicates_equal_a_naive_loop(kind):
    a, b = _evidence_pair(kind, np.random.default_rng(7))
    idx = bootstrap_indices(40, 3, 17, seed=11)
    r = paired_bootstrap(a, b, indices=idx)
    na, nb = _naive_replicates(a, b, idx)
    np.testing.assert_allclose(r.replicates_a, na, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(r.replicates_b, nb, rtol=1e-12, atol=1e-12)
    # drawing with the seed is the same as injecting bootstrap_indices(seed)
    r_seed = paired_bootstrap(a, b, n_boot=40, seed=11)
    np.testing.assert_array_equal(r_seed.replicates_a, r.replicates_a)
    np.testing.assert_array_equal(r_seed.replicates_b, r.replicates_b)


def test_vectorized_is_fast_at_the_demo_size():
    # 2000 replicates x 3 strata x 128 images x 11 fractions x 3 classes, both orders (SRG)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 128)
    fr = np.linspace(0, 1, 11)

    def srg():
        return Srg(*(Curves(rng.integers(0, 3, (3, 128, 11)), labels, fr, o) for o in ("least_first", "most_first")))

    a, b = srg(), srg()
    t = time.perf_counter()
    r = paired_bootstrap(a, b, n_boot=2000)
    assert time.perf_counter() - t < 2.0
    assert r.n_boot == 2000


# ------------------------------------------------------------------ properties
def test_bootstrap_spread_matches_the_plug_in_standard_error_and_is_paired():
    # one stratum: the bootstrap sd of a mean is std(values, ddof=0) / sqrt(n); for the paired difference,
    # std(a_i - b_i) / sqrt(n), far below the unpaired sqrt(var a + var b) / sqrt(n)
    rng = np.random.default_rng(3)
    base = rng.normal(50, 15, 200)
    va, vb = base + rng.normal(0, 1, 200), base
    r = paired_bootstrap(PerImage(va[None]), PerImage(vb[None]), n_boot=4000, seed=2)
    n = 200
    assert np.std(r.replicates_a) == pytest.approx(np.std(va) / math.sqrt(n), rel=0.05)
    sd_diff = np.std(r.replicates_a - r.replicates_b)
    assert sd_diff == pytest.approx(np.std(va - vb) / math.sqrt(n), rel=0.05)
    assert sd_diff < 0.2 * math.sqrt(np.var(va) + np.var(vb)) / math.sqrt(n)


def test_identical_images_give_a_zero_width_interval():
    a = PerImage(np.full((3, 40), 40.0))
    b = PerImage(np.full((3, 40), 20.0))
    r = paired_bootstrap(a, b, n_boot=300, seed=0)
    assert (r.ratio, r.ci_low, r.ci_high) == (2.0, 2.0, 2.0)
    assert (r.difference, r.diff_ci_low, r.diff_ci_high) == (20.0, 20.0, 20.0)
    assert r.p_value == pytest.approx(2 / 301)  # every difference > 0
    # curves: every image has the same label and the same predictions
    preds_a = np.tile(np.array([1, 1, 0]), (2, 30, 1))
    preds_b = np.tile(np.array([1, 0, 0]), (2, 30, 1))
    labels = np.ones(30, dtype=int)
    ra = paired_bootstrap(Curves(preds_a, labels, (0, 0.5, 1)), Curves(preds_b, labels, (0, 0.5, 1)), n_boot=100)
    assert (ra.a, ra.b) == (75.0, 25.0)
    assert (ra.ci_low, ra.ci_high) == (3.0, 3.0)


@pytest.mark.parametrize("kind", ["per_image", "curves", "srg"])
def test_a_method_against_itself(kind):
    a, _ = _evidence_pair(kind, np.random.default_rng(5))
    r = paired_bootstrap(a, a, n_boot=500, seed=0)
    if kind != "srg" or r.ratio is not None:
        assert (r.ratio, r.ci_low, r.ci_high) == (1.0, 1.0, 1.0)
    assert (r.difference, r.diff_ci_low, r.diff_ci_high, r.p_value) == (0.0, 0.0, 0.0, 1.0)
    recs = comparisons(
        {"ours": {"block3": {"m": a}}, "them": {"block3": {"m": a}}},
        ours=["ours"], others=["them"], directions={"m": "higher"}, n_boot=500,
    )
    assert len(recs) == 1 and recs[0]["holds"] is False and recs[0]["p_value"] == 1.0


def test_nan_images_are_ignored_and_undefined_replicates_dropped():
    a = PerImage(np.array([[np.nan, 2.0, 4.0]]))
    b = PerImage(np.array([[1.0, np.nan, 3.0]]))
    idx = np.array(
        [
            [[0, 1, 1]],  # A nanmean(nan, 2, 2) = 2; B nanmean(1, nan, nan) = 1
            [[0, 0, 2]],  # A 4; B (1 + 1 + 3) / 3 = 5/3
            [[1, 1, 1]],  # A 2; B undefined -> dropped
        ]
    )
    r = paired_bootstrap(a, b, indices=idx)
    assert (r.a, r.b) == (3.0, 2.0)
    np.testing.assert_array_equal(r.replicates_a, [2.0, 4.0, 2.0])
    np.testing.assert_allclose(r.replicates_b, [1.0, 5 / 3, np.nan], rtol=1e-15)
    assert r.n_boot == 2 and "1 of 3 replicates" in r.note
    assert r.ci_low == pytest.approx(2.0 + 0.025 * (2.4 - 2.0), abs=1e-12)  # ratios 2 and 12/5
    # a method whose every image is undefined has no evidence: no record, and the bootstrap refuses it
    empty = PerImage(np.full((1, 3), np.nan))
    assert comparisons({"o": {"b": {"m": empty}}, "p": {"b": {"m": b}}}, ours=["o"], others=["p"],
                       directions={"m": "higher"}) == []
    with pytest.raises(ValueError, match="point values"):
        paired_bootstrap(empty, b)


# ------------------------------------------------------------------ SRG
def test_srg_with_a_negative_denominator_has_no_ratio_and_holds_by_the_difference():
    n, nf = 40, 6
    labels = np.arange(n) % 2
    rng = np.random.default_rng(0)
    # ours: kept long when least important go first, lost fast when the most important go -> SRG > 0
    ours = Srg(_curves_from_cut(labels, rng.integers(4, 7, (3, n)), nf, "least_first"),
               _curves_from_cut(labels, rng.integers(0, 3, (3, n)), nf, "most_first"))
    # theirs: the reverse -> SRG < 0
    theirs = Srg(_curves_from_cut(labels, rng.integers(1, 3, (3, n)), nf, "least_first"),
                 _curves_from_cut(labels, rng.integers(3, 5, (3, n)), nf, "most_first"))
    assert ours.value() > 0 > theirs.value()
    [rec] = comparisons({"dual": {"block3": {"srg@road": ours}}, "ig": {"block3": {"srg@road": theirs}}},
                        ours=["dual"], others=["ig"], directions={"srg@road": "higher"}, n_boot=500)
    assert rec["ratio"] is None and rec["ci_low"] is None and rec["ci_high"] is None
    assert "ratio undefined" in rec["note"]
    assert rec["diff_ci_low"] > 0 and rec["holds"] is True
    assert rec["difference"] == pytest.approx(ours.value() - theirs.value())
    # reversed roles: the denominator (ours' SRG) is positive, the ratio is defined and negative
    [rev] = comparisons({"dual": {"block3": {"srg@road": theirs}}, "ig": {"block3": {"srg@road": ours}}},
                        ours=["dual"], others=["ig"], directions={"srg@road": "higher"}, n_boot=500)
    assert rev["ratio"] < 0 and rev["ci_high"] < 1 and rev["holds"] is False


def test_srg_whose_difference_interval_contains_zero_does_not_hold():
    # two SRGs near 0 that differ on a few images in both directions: the ratio is undefined and the
    # difference's interval straddles 0
    labels = np.arange(30) % 2
    rng = np.random.default_rng(1)
    least, most = rng.integers(0, 6, (2, 30)), rng.integers(0, 6, (2, 30))
    nudge = np.zeros((2, 30), dtype=int)
    nudge[:, :4], nudge[:, 4:9] = 1, -1  # b loses a little more than it gains: ours ahead on the point value
    a = Srg(_curves_from_cut(labels, least, 6, "least_first"), _curves_from_cut(labels, most, 6, "most_first"))
    b = Srg(_curves_from_cut(labels, np.clip(least + nudge, 0, 6), 6, "least_first"),
            _curves_from_cut(labels, most, 6, "most_first"))
    r = paired_bootstrap(a, b, n_boot=1000)
    assert r.ratio is None and r.difference > 0 and r.diff_ci_low < 0 < r.diff_ci_high
    [rec] = comparisons({"x": {"block4": {"s": a}}, "y": {"block4": {"s": b}}}, ours=["x"], others=["y"],
                        directions={"s": "higher"}, n_boot=1000)
    assert rec["holds"] is False and rec["ratio"] is None


def test_lower_is_better_with_an_undefined_ratio_holds_by_the_difference():
    # the other's values are around 0 (some replicates <= 0): no ratio; ours is clearly lower
    rng = np.random.default_rng(9)
    other = PerImage(rng.normal(0.0, 1.0, (2, 50)))
    ours = PerImage(rng.normal(-5.0, 1.0, (2, 50)))
    [rec] = comparisons({"exact": {"block3": {"d": ours}}, "lrp": {"block3": {"d": other}}},
                        ours=["exact"], others=["lrp"], directions={"d": "lower"}, n_boot=500)
    assert rec["ratio"] is None and rec["diff_ci_high"] < 0 and rec["holds"] is True
    [rev] = comparisons({"exact": {"block3": {"d": other}}, "lrp": {"block3": {"d": ours}}},
                        ours=["exact"], others=["lrp"], directions={"d": "lower"}, n_boot=500)
    assert rev["ratio"] is None and rev["diff_ci_low"] > 0 and rev["holds"] is False


# ------------------------------------------------------------------ comparisons
def _spread(center, rng, runs=3, n=60):
    return PerImage(center + rng.normal(0, 5, (runs, n)))


def test_comparisons_pick_the_best_per_side_and_respect_direction():
    rng = np.random.default_rng(4)
    ev = {
        "dual": {"block3": {"x": _spread(30, rng)}},
        "exact": {"block3": {"x": _spread(20, rng)}},
        "gradcam": {"block3": {"x": _spread(40, rng)}},
        "deeplift": {"block3": {"x": _spread(50, rng)}},
    }
    kw = dict(ours=["dual", "exact"], others=["gradcam", "deeplift"], n_boot=500)
    [low] = comparisons(ev, directions={"x": "lower"}, **kw)
    assert (low["ours"], low["best_other"], low["direction"]) == ("exact", "gradcam", "lower")
    assert low["ours_value"] == pytest.approx(ev["exact"]["block3"]["x"].value())
    assert low["ratio"] == pytest.approx(low["ours_value"] / low["other_value"])
    assert low["ci_high"] < 1 and low["holds"] is True and low["p_value"] == pytest.approx(2 / 501)
    [high] = comparisons(ev, directions={"x": Direction.HIGHER}, **kw)
    assert (high["ours"], high["best_other"], high["direction"]) == ("dual", "deeplift", "higher")
    assert high["ci_high"] < 1 and high["holds"] is False  # ours is worse: the claim does not hold
    assert high["diff_ci_high"] < 0


def test_a_better_point_value_alone_is_not_a_claim():
    # ours beats the other by 0.25 on average, but image by image it is +6 or -5.5: the interval
    # contains 1, so the claim does not hold although the point ratio is above 1
    other = np.random.default_rng(8).normal(50, 5, (3, 60))
    ours = other + np.where(np.arange(60) % 2 == 0, 6.0, -5.5)
    [rec] = comparisons({"dual": {"block3": {"ap": PerImage(ours)}}, "ig": {"block3": {"ap": PerImage(other)}}},
                        ours=["dual"], others=["ig"], directions={"ap": "higher"}, n_boot=1000)
    assert rec["difference"] == pytest.approx(0.25)
    assert rec["ratio"] > 1 and rec["ci_low"] < 1 < rec["ci_high"]
    assert rec["holds"] is False and rec["p_value"] > 0.05


def test_comparison_records_schema_determinism_and_coverage_of_blocks():
    rng = np.random.default_rng(6)
    labels = np.arange(20) % 2
    cur = lambda: Curves(rng.integers(0, 2, (2, 20, 3)), labels, (0.0, 0.5, 1.0))  # noqa: E731
    ev = {
        "dual": {"block3": {"ap": _spread(60, rng), "auc_most_first": cur(), "sharpness": _spread(1, rng)},
                 "block4": {"ap": _spread(60, rng)}},
        "gradcam": {"block3": {"ap": _spread(50, rng), "auc_most_first": cur(), "sharpness": _spread(1, rng)}},
        "random": {"block4": {"ap": _spread(10, rng)}},  # a control: on neither side
    }
    dirs = {"ap": "higher", "auc_most_first": "lower", "sharpness": "none", "iou@90": "higher"}
    recs = comparisons(ev, ours=["dual", "exact"], others=["gradcam"], directions=dirs, n_boot=300, seed=3)
    assert [(r["metric"], r["block"]) for r in recs] == [("ap", "block3"), ("auc_most_first", "block3")]
    for r in recs:
        assert tuple(r) == COMPARISON_KEYS
        assert (r["n_strata"], r["n_boot"]) == (3 if r["metric"] == "ap" else 2, 300)
        assert isinstance(r["holds"], bool)
    assert recs[0]["n_images"] == 60 and recs[1]["n_images"] == 20
    json.dumps(recs, allow_nan=False)
    again = comparisons(ev, ours=["dual", "exact"], others=["gradcam"], directions=dirs, n_boot=300, seed=3)
    assert again == recs
    other_seed = comparisons(ev, ours=["dual", "exact"], others=["gradcam"], directions=dirs, n_boot=300, seed=4)
    assert other_seed[0]["ci_low"] != recs[0]["ci_low"]
    assert other_seed[0]["ours_value"] == recs[0]["ours_value"]


# ------------------------------------------------------------------ argument checks
def test_argument_checks_name_the_value():
    labels = np.array([0, 1, 0])
    ok = Curves(np.zeros((1, 3, 2), dtype=int), labels, (0.0, 1.0))
    with pytest.raises(ValueError, match=r"\(R, P\)"):
        PerImage(np.ones(3))
    with pytest.raises(ValueError, match="integer array"):
        Curves(np.zeros((1, 3, 2)), labels, (0.0, 1.0))
    with pytest.raises(ValueError, match="labels"):
        Curves(np.zeros((1, 3, 2), dtype=int), np.array([0, 1]), (0.0, 1.0))
    with pytest.raises(ValueError, match="strictly increasing"):
        Curves(np.zeros((1, 3, 2), dtype=int), labels, (1.0, 0.0))
    with pytest.raises(ValueError, match="'sideways'"):
        Curves(np.zeros((1, 3, 2), dtype=int), labels, (0.0, 1.0), "sideways")
    with pytest.raises(ValueError, match="least_first and a most_first"):
        Srg(ok, ok)
    with pytest.raises(ValueError, match="same kind"):
        paired_bootstrap(ok, PerImage(np.ones((1, 3))))
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(PerImage(np.ones((1, 3))), PerImage(np.ones((1, 4))))
    with pytest.raises(ValueError, match="labels differ"):
        paired_bootstrap(ok, Curves(np.zeros((1, 3, 2), dtype=int), np.array([1, 1, 0]), (0.0, 1.0)))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        paired_bootstrap(ok, ok, indices=np.full((2, 1, 3), 3))
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap(ok, ok, n_boot=0)
    ev = {"a": {"b": {"m": ok}}, "c": {"b": {"m": ok}}}
    with pytest.raises(ValueError, match="disjoint"):
        comparisons(ev, ours=["a"], others=["a", "c"], directions={"m": "higher"})
    with pytest.raises(ValueError, match="'up'"):
        comparisons(ev, ours=["a"], others=["c"], directions={"m": "up"})
    with pytest.raises(ValueError, match=r"evidence\['a'\]\['b'\]\['m'\]"):
        comparisons({"a": {"b": {"m": [1.0]}}}, ours=["a"], others=["c"], directions={"m": "higher"})
    with pytest.raises(ValueError, match="sequence of method names"):
        comparisons(ev, ours="a", others=["c"], directions={"m": "higher"})
