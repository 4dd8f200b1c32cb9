"""Crossed patient x seed intervals (dualattn.evaluate.intervals): resampling by hand, coverage on simulated
nulls at the sealed draw's size, Holm."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dualattn.evaluate.comparisons import BalancedAccuracy, Curves, PerImage
from dualattn.evaluate.intervals import (
    crossed_comparison,
    group_index,
    holm,
    holm_levels,
    patient_bootstrap_counts,
    t_interval,
)

# ----------------------------------------------------------------------------- resampling, by hand


def test_patient_draws_count_every_image_of_a_drawn_patient():
    group = np.array([0, 0, 1, 2, 2, 2])  # patient 0 has 2 images, 1 has 1, 2 has 3
    counts = patient_bootstrap_counts(np.array([[2, 2, 0], [1, 1, 1]]), group, 3)
    assert counts.tolist() == [[1, 1, 0, 2, 2, 2], [0, 0, 3, 0, 0, 0]]


def test_replicates_by_hand_difference_and_seed_components():
    # 2 seeds, 3 images of patients a, a, b. A - B per image and seed:
    a = PerImage(np.array([[3.0, 5.0, 10.0], [4.0, 6.0, 12.0]]))
    b = PerImage(np.array([[1.0, 1.0, 4.0], [1.0, 1.0, 4.0]]))
    draws = np.array([[0, 0], [1, 1], [0, 1], [1, 0]])  # patients in first-appearance order: a=0, b=1
    r = crossed_comparison(a, b, groups=["a", "a", "b"], patient_draws=draws)
    # per seed on all images: seed0 (6 - 2) = 4, seed1 (22/3 - 2) = 16/3; estimate their mean
    assert r.per_seed == pytest.approx((4.0, 16 / 3))
    assert r.estimate == pytest.approx((4.0 + 16 / 3) / 2)
    # replicate statistics (mean over seeds of the weighted image means) by hand:
    #   [a, a]: seed0 (3,5 -> 4) - 1 = 3; seed1 (4,6 -> 5) - 1 = 4     -> 3.5
    #   [b, b]: seed0 10 - 4 = 6;        seed1 12 - 4 = 8             -> 7
    #   [a, b] and [b, a]: the full data -> 14/3 (= r.estimate)
    boot = np.array([3.5, 7.0, r.estimate, r.estimate])
    unbias = 2 / (2 - 1)  # P / (P - 1): a bootstrap variance of a mean over P clusters is (P - 1) / P too small
    per_seed_boot = np.array([[3.0, 4.0], [6.0, 8.0], [4.0, 16 / 3], [4.0, 16 / 3]])
    v_ps = unbias * np.mean(np.var(per_seed_boot, axis=0, ddof=1))
    v_pb = unbias * np.var(boot, ddof=1)
    # the patient variation both seeds share = the cross-seed covariance of the replicates
    cov = unbias * np.cov(per_seed_boot[:, 0], per_seed_boot[:, 1])[0, 1]
    assert r.var_patients == pytest.approx(max(0.0, (2 * v_pb - v_ps) / 1)) == pytest.approx(cov)
    assert r.var_seeds == pytest.approx(np.var([4.0, 16 / 3], ddof=1) / 2)
    assert r.se == pytest.approx(np.sqrt(r.var_seeds + r.var_patients))
    assert r.resampled == ("patients", "seeds") and r.n_patients == 2 and r.n_seeds == 2


def test_ratio_is_on_the_log_scale_and_falls_back_to_the_difference():
    a = PerImage(np.array([[2.0, 4.0, 6.0, 8.0], [2.2, 4.0, 6.0, 8.2]]))
    b = PerImage(np.array([[1.0, 2.0, 3.0, 4.0], [1.1, 2.0, 3.0, 4.1]]))
    r = crossed_comparison(a, b, groups=[0, 0, 1, 1], kind="ratio", n_boot=300)
    assert r.kind == "ratio" and r.estimate == pytest.approx(2.0) and r.ci_low == pytest.approx(2.0)
    neg = PerImage(np.array([[-1.0, 2.0, -3.0, 1.0]]))
    r2 = crossed_comparison(a, PerImage(np.vstack([neg.values, neg.values])), groups=[0, 0, 1, 1], kind="ratio",
                            n_boot=200)
    assert r2.kind == "difference" and "ratio undefined" in r2.note


def test_one_seed_leaves_the_seed_variance_out_and_says_so():
    rng = np.random.default_rng(0)
    a, b = PerImage(rng.normal(5, 1, (1, 40))), PerImage(rng.normal(4, 1, (1, 40)))
    r = crossed_comparison(a, b, groups=np.repeat(np.arange(20), 2), n_boot=500)
    assert r.resampled == ("patients",) and "one seed" in r.note and r.df == pytest.approx(19)


def test_balanced_accuracy_and_curves_evidence_resample_by_patient():
    y = np.array([0, 1, 0, 1, 0, 1])
    acc = BalancedAccuracy(np.array([[0, 1, 0, 1, 1, 1], [0, 1, 0, 0, 0, 1]]), y)
    base = BalancedAccuracy(np.array([[0, 1, 0, 1, 0, 1], [0, 1, 0, 1, 0, 1]]), y)
    r = crossed_comparison(acc, base, groups=[0, 0, 1, 1, 2, 2], null=-3.0, n_boot=400)
    assert r.b == 100.0 and r.a == pytest.approx(np.mean([100 * (2 / 3 + 1) / 2, 100 * (1 + 2 / 3) / 2]))
    assert r.null == -3.0
    c = Curves(np.array([[[0, 0], [1, 0], [0, 0], [1, 1]]]), np.array([0, 1, 0, 1]), (0.0, 1.0))
    r2 = crossed_comparison(c, c, groups=[0, 0, 1, 1], n_boot=100)
    assert r2.estimate == 0.0 and r2.ci_low == r2.ci_high == 0.0


def test_group_index_and_bad_arguments():
    assert group_index(["x", "y", "x"])[0].tolist() == [0, 1, 0]
    a = PerImage(np.ones((2, 4)))
    with pytest.raises(ValueError, match="groups has 3"):
        crossed_comparison(a, a, groups=[0, 1, 2])
    with pytest.raises(ValueError, match="kind"):
        crossed_comparison(a, a, groups=[0, 1, 2, 3], kind="log")
    with pytest.raises(ValueError, match="same kind"):
        crossed_comparison(a, BalancedAccuracy(np.ones((2, 4), int), np.array([0, 1, 0, 1])), groups=[0, 1, 2, 3])


# ----------------------------------------------------------------------------- coverage on simulated nulls

#: the sealed draw's size: 64 test patients, 2 images each (the tumor half and the healthy half), 3 seeds
_P, _M, _S = 64, 2, 3


def _simulate(rng, *, sa, sb, se, sab=0.0, kind="difference", nsim=1500, n_boot=200):
    """Coverage of the 95 % interval of A vs B when the truth is A = B in expectation over seeds and patients.

    Per image i of patient p and seed s: A = 50 + a_s + b_p + d_p + ab_sp + e, B = 50 + a'_s + b_p + e' (seed
    effects a, a' ~ N(0, sa^2) drawn per method: each method is trained per seed; a shared patient effect b and
    a patient effect d of A alone; a seed x patient interaction ab; image noise e, e' ~ N(0, se^2)).
    """
    group = np.repeat(np.arange(_P), _M)
    null = 1.0 if kind == "ratio" else 0.0
    hits = 0
    for k in range(nsim):
        a_s, a_s2 = rng.normal(0, sa, _S), rng.normal(0, sa, _S)
        b, d = rng.normal(0, sb, _P), rng.normal(0, sb / 2, _P)
        ab = rng.normal(0, sab, (_S, _P))
        A = 50 + a_s[:, None] + b[group] + d[group] + ab[:, group] + rng.normal(0, se, (_S, _P * _M))
        B = 50 + a_s2[:, None] + b[group] + rng.normal(0, se, (_S, _P * _M))
        r = crossed_comparison(PerImage(A), PerImage(B), groups=group, kind=kind, n_boot=n_boot, seed=k)
        hits += r.ci_low <= null <= r.ci_high
    return hits / nsim


@pytest.mark.parametrize("scenario", [
    dict(sa=3.0, sb=1.0, se=5.0),             # the seeds dominate (a float32 rerun flipped a claim)
    dict(sa=1.5, sb=4.0, se=8.0, sab=3.0),    # mixed, with a seed x patient interaction
    dict(sa=0.0, sb=6.0, se=5.0),             # the patients dominate
    dict(sa=0.0, sb=0.0, se=10.0),            # image noise only
], ids=["seeds", "mixed", "patients", "noise"])
def test_coverage_within_two_points_of_nominal(scenario):
    cov = _simulate(np.random.default_rng(11), **scenario)
    assert abs(cov - 0.95) <= 0.02, cov


def test_ratio_coverage_within_two_points_of_nominal():
    cov = _simulate(np.random.default_rng(12), sa=1.5, sb=4.0, se=8.0, sab=3.0, kind="ratio")
    assert abs(cov - 0.95) <= 0.02, cov


def test_the_first_editions_image_bootstrap_undercovers_the_same_null():
    """The reason for this module: resampling images per seed (seeds as strata) ignores the seed variance."""
    from dualattn.evaluate.comparisons import paired_bootstrap

    rng = np.random.default_rng(13)
    group = np.repeat(np.arange(_P), _M)
    hits, nsim = 0, 300
    for k in range(nsim):
        a_s, a_s2 = rng.normal(0, 3.0, _S), rng.normal(0, 3.0, _S)
        b = rng.normal(0, 1.0, _P)
        A = 50 + a_s[:, None] + b[group] + rng.normal(0, 5.0, (_S, _P * _M))
        B = 50 + a_s2[:, None] + b[group] + rng.normal(0, 5.0, (_S, _P * _M))
        r = paired_bootstrap(PerImage(A), PerImage(B), n_boot=200, seed=k)
        hits += r.diff_ci_low <= 0.0 <= r.diff_ci_high
    assert hits / nsim < 0.6


# ----------------------------------------------------------------------------- t intervals and Holm


def test_t_interval_matches_scipy():
    from scipy import stats

    lo, hi, p = t_interval(2.0, 0.5, 3.0)
    q = stats.t.ppf(0.975, 3.0)
    assert (lo, hi) == pytest.approx((2.0 - q * 0.5, 2.0 + q * 0.5))
    assert p == pytest.approx(2 * stats.t.sf(4.0, 3.0))


def test_holm_by_hand():
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.02 (x2 = 0.04), 0.04 (x1 = 0.04)
    assert holm([0.01, 0.04, 0.005, 0.02]) == pytest.approx([0.03, 0.04, 0.02, 0.04])
    assert holm([0.5, None]) == [0.5, None]


def test_holm_levels_reject_exactly_when_the_adjusted_p_is_below_alpha():
    rng = np.random.default_rng(3)
    for _ in range(200):
        p = list(rng.uniform(0, 0.08, 5))
        adj, lev = holm(p), holm_levels(p)
        for pi, ai, li in zip(p, adj, lev):
            assert (ai <= 0.05) == (pi <= 1 - li), (p, adj, lev)
    assert math.isclose(holm_levels([0.001])[0], 0.95)


def test_module_examples_run():
    import doctest

    from dualattn.data import sealed
    from dualattn.evaluate import hiding, intervals
    from dualattn.report import claims

    for module in (intervals, hiding, sealed, claims):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_default_claims_are_what_the_val_selection_chose():
    """The primary claims are named before the sealed test draw is read: their comparators are what
    benchmarks/select_claims.py chose on a validation split (its JSON), never edited by hand."""
    import json
    from pathlib import Path

    from dualattn.data.sealed import SEALED_DATA_SEED
    from dualattn.evaluate.claims import DEFAULT_CLAIMS

    sel = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "claims_selection.json")
                     .read_text())
    assert sel["split"] == "val" and sel["data_seed"] != SEALED_DATA_SEED
    chosen = [(c["protocol"], c["metric"], c["block"], c["ours"], c["other"]) for c in sel["choices"]]
    named = [(c.protocol, c.metric, c.block, c.ours, c.other) for c in DEFAULT_CLAIMS]
    assert named == chosen
    assert len(DEFAULT_CLAIMS) <= 6
