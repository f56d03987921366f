import math

import numpy as np
import pytest

from stccl_diffusers.eval.stats import (
    MEASURE_DIRECTIONS,
    bootstrap_mean_ci,
    compare_methods,
    format_comparison_table,
    paired_comparison,
    sign_test,
)


@pytest.mark.parametrize("wa,wb", [(12, 1), (7, 6), (0, 5), (10, 0), (3, 3), (1, 0)])
def test_sign_test_equals_the_exact_binomial_two_sided_p(wa, wb):
    n = wa + wb
    # Independent: sum over all outcomes at least as unlikely as the observed one.
    probs = [math.comb(n, i) / 2 ** n for i in range(n + 1)]
    expected = min(1.0, sum(p for p in probs if p <= probs[wa] * (1 + 1e-12)))
    assert sign_test(wa, wb) == pytest.approx(expected, rel=1e-12)
    scipy_stats = pytest.importorskip("scipy.stats")
    assert sign_test(wa, wb) == pytest.approx(scipy_stats.binomtest(wa, n, 0.5).pvalue, rel=1e-9)


def test_sign_test_edge_cases():
    assert sign_test(0, 0) == 1.0
    assert sign_test(12, 1) == pytest.approx(14 / 4096)  # 2 * (1 + 13) / 2^13
    with pytest.raises(ValueError, match="non-negative"):
        sign_test(-1, 2)


def test_bootstrap_interval_covers_a_known_difference_and_excludes_zero_only_when_it_should():
    rng = np.random.default_rng(1)
    n, true = 40, 0.5
    a_better = true + rng.standard_normal(n) * 0.6  # differences with mean 0.5
    lo, hi = bootstrap_mean_ci(a_better, n_resamples=4000, seed=0)
    assert lo < true < hi and lo > 0
    no_effect = rng.standard_normal(n) * 0.6 - rng.standard_normal(n) * 0.0
    no_effect -= no_effect.mean()  # true mean difference exactly 0 in the sample
    lo0, hi0 = bootstrap_mean_ci(no_effect, n_resamples=4000, seed=0)
    assert lo0 < 0 < hi0
    # Over many synthetic studies the 95 % interval covers the truth about 95 % of the time.
    covered = 0
    for s in range(200):
        d = true + np.random.default_rng(100 + s).standard_normal(n) * 0.6
        lo_s, hi_s = bootstrap_mean_ci(d, n_resamples=1000, seed=s)
        covered += lo_s <= true <= hi_s
    assert 0.88 <= covered / 200 <= 0.99


def test_bootstrap_is_seeded_and_checks_its_input():
    d = np.random.default_rng(0).standard_normal(13)
    assert bootstrap_mean_ci(d, 500, seed=3) == bootstrap_mean_ci(d, 500, seed=3)
    assert bootstrap_mean_ci(d, 500, seed=3) != bootstrap_mean_ci(d, 500, seed=4)
    assert bootstrap_mean_ci([2.5], 100) == (2.5, 2.5)
    with pytest.raises(ValueError, match="finite"):
        bootstrap_mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_mean_ci([])


def test_wins_follow_the_declared_direction_and_ties_are_dropped():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    b = np.array([2.0, 1.0, 1.0, 4.0, 1.0])
    lower = paired_comparison(a, b, higher_is_better=False, n_resamples=200)
    higher = paired_comparison(a, b, higher_is_better=True, n_resamples=200)
    assert (lower["wins_a"], lower["wins_b"], lower["ties"]) == (1, 3, 1)
    assert (higher["wins_a"], higher["wins_b"], higher["ties"]) == (3, 1, 1)
    assert higher["p_sign"] == pytest.approx(sign_test(3, 1)) and higher["mean_diff"] == pytest.approx(1.2)
    with_nan = paired_comparison(np.append(a, np.nan), np.append(b, 1.0), True, n_resamples=200)
    assert with_nan["n"] == 5 and with_nan["n_left_out"] == 1 and with_nan["mean_diff"] == pytest.approx(1.2)


def test_compare_methods_pairs_clips_by_name_and_only_declared_measures():
    rng = np.random.default_rng(0)
    clips = []
    for i in range(13):
        base = rng.uniform(2, 4)
        clips.append({"clip": f"c{i}", "method": "real", "M-LMD": None})
        clips.append({"clip": f"c{i}", "method": "A", "M-LMD": base - 0.8 + 0.1 * rng.standard_normal(), "LSE-C": 5.0, "made_up": 1.0})
        clips.append({"clip": f"c{i}", "method": "B", "M-LMD": base, "LSE-C": 5.0, "made_up": 2.0})
    clips.append({"clip": "only_a", "method": "A", "M-LMD": 100.0})  # no partner: not paired
    res = compare_methods(clips, ["A", "B"], n_resamples=2000, seed=7)
    (pair,) = res["pairs"]
    m = pair["measures"]["M-LMD"]
    assert pair["clips"] == 13 and m["n"] == 13 and m["wins_a"] == 13 and m["p_sign"] == pytest.approx(2 / 2 ** 13)
    assert m["ci"][0] < -0.8 + 0.15 and m["ci"][1] > -0.8 - 0.15 and m["ci"][1] < 0 and m["excludes_zero"]
    lse = pair["measures"]["LSE-C"]
    assert lse["ties"] == 13 and lse["p_sign"] == 1.0 and lse["ci"] == [0.0, 0.0] and not lse["excludes_zero"]
    assert "made_up" not in pair["measures"]  # no declared direction: never compared
    assert res["protocol"]["bootstrap_seed"] == 7 and res["protocol"]["bootstrap_resamples"] == 2000
    assert "ties dropped" in res["protocol"]["sign_test"]
    md = format_comparison_table(res)
    assert md.startswith("| A vs B | LSE-C↑ | M-LMD↓ |") and "wins 13/0" in md and "2000 resamples, seed 7" in md


def test_every_declared_measure_has_a_direction():
    assert MEASURE_DIRECTIONS["LSE-D"] is False and MEASURE_DIRECTIONS["LSE-C"] is True
    assert MEASURE_DIRECTIONS["M-LMD"] is False and MEASURE_DIRECTIONS["acc_emo"] is True
