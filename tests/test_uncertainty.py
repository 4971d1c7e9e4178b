"""lljax.uncertainty: intervals over seeds, phase stability, the best-point claim and correlation intervals, on
synthetic grids whose answers are known."""
import math

import numpy as np
import pytest

from lljax import phases, uncertainty

TH = phases.Thresholds()


def test_t_interval_has_its_coverage_on_normal_samples():
    """Below BOOTSTRAP_MIN_SEEDS the interval is Student's t: 95% coverage within Monte Carlo error."""
    rng = np.random.default_rng(0)
    trials = 4000
    for n in (2, 3, 5):
        intervals = (uncertainty.mean_interval(rng.normal(size=n)) for _ in range(trials))
        covered = sum(lo <= 0 <= hi for lo, hi in intervals)
        assert abs(covered / trials - 0.95) < 3 * math.sqrt(0.95 * 0.05 / trials), n


def test_bootstrap_interval_from_twenty_seeds_has_the_documented_coverage():
    """The percentile bootstrap's coverage at n = 20 is the module docstring's 0.93 (Monte Carlo error)."""
    rng = np.random.default_rng(1)
    trials = 1500
    covered = sum(lo <= 0 <= hi for lo, hi in (uncertainty.mean_interval(rng.normal(size=20), 0.95, rng, 1000)
                                               for _ in range(trials)))
    assert abs(covered / trials - 0.93) < 3 * math.sqrt(0.93 * 0.07 / trials) + 0.005


def test_intervals_need_two_finite_values_and_are_deterministic():
    assert all(math.isnan(v) for v in uncertainty.mean_interval([1.0, math.nan]))
    x = np.random.default_rng(2).normal(size=30)
    a = uncertainty.mean_interval(x, 0.95, uncertainty.generator(0, "interval", 3, "mc"))
    b = uncertainty.mean_interval(x, 0.95, uncertainty.generator(0, "interval", 3, "mc"))
    c = uncertainty.mean_interval(x, 0.95, uncertainty.generator(1, "interval", 3, "mc"))
    assert a == b != c


def test_well_separated_points_have_disjoint_intervals_and_stable_phases():
    rng = np.random.default_rng(3)
    fitted = 0.001 + 0.0005 * rng.random(5)  # far below 0.05 nats
    connected_mc = 0.0005 * rng.normal(size=10)  # |mc| far inside the 0.01 band
    similar, dissimilar = 0.9 + 0.01 * rng.normal(size=10), 0.3 + 0.01 * rng.normal(size=10)
    a, b = uncertainty.mean_interval(similar), uncertainty.mean_interval(dissimilar)
    assert a[0] > b[1]
    for cka, phase in ((similar, "IV-B"), (dissimilar, "IV-A")):
        assert uncertainty.phase_stability(fitted, connected_mc, cka, phase, TH, uncertainty.generator(0, "s"),
                                           500) == (1.0, 1.0)
    barrier = -0.2 + 0.01 * rng.normal(size=10)
    assert uncertainty.phase_stability(fitted, barrier, dissimilar, "III", TH, uncertainty.generator(0, "s"),
                                       500) == (1.0, 1.0)
    unknown = uncertainty.phase_stability(fitted, barrier, dissimilar, "?", TH, uncertainty.generator(0, "s"))
    assert all(math.isnan(v) for v in unknown)


def test_a_point_on_a_threshold_is_stable_about_half_the_time():
    rng = uncertainty.generator(0, "on the threshold")
    centred = lambda centre, spread, n: centre + spread * np.linspace(-1, 1, n) ** 3  # symmetric, no ties
    fitted = [0.001, 0.002, 0.001, 0.002]
    boot, _ = uncertainty.phase_stability(fitted, [0.0] * 7, centred(0.7, 0.1, 7), "IV-B", TH, rng, 4000)
    assert abs(boot - 0.5) < 0.05
    boot, _ = uncertainty.phase_stability(centred(0.05, 0.01, 7), [-0.5] * 3, [0.5] * 3, "I", TH, rng, 4000)
    assert abs(boot - 0.5) < 0.05
    # means exactly on a threshold: 4 of the 9 settings of that threshold are below it, 4 above, and the chosen
    # one keeps the rule's side (CKA >= threshold is IV-B; training loss < threshold is fitted)
    _, moved = uncertainty.phase_stability(fitted, [0.0], [0.7], "IV-B", TH, rng)
    assert moved == pytest.approx(5 / 9)
    _, moved = uncertainty.phase_stability([0.05, 0.05], [-0.5], [0.5], "I", TH, rng)
    assert moved == pytest.approx(5 / 9)


def test_threshold_grid_is_the_documented_neighbourhood():
    grid = uncertainty.threshold_grid(TH)
    assert len(grid) == 729 and TH in grid
    assert min(t.train_loss for t in grid) == pytest.approx(0.025) and max(t.mc_band for t in grid) == 0.02
    assert min(t.cka for t in grid) == pytest.approx(0.4) and max(t.cka for t in grid) == pytest.approx(0.85)


def test_best_point_probability_and_the_difference_of_phases():
    rng = np.random.default_rng(4)
    scores = [0.70 + 0.001 * rng.normal(size=5), 0.60 + 0.001 * rng.normal(size=5), 0.69 + 0.02 * rng.normal(size=5)]
    p = uncertainty.best_point_probability(scores, uncertainty.generator(0, "best"), 1000)
    assert p.sum() == pytest.approx(1.0) and p[1] == 0 and 0.5 < p[0] < 1
    clear = [0.9 + 0.001 * rng.normal(size=4), 0.5 + 0.001 * rng.normal(size=4)]
    assert uncertainty.best_point_probability(clear, uncertainty.generator(0, "best"))[0] == 1.0
    diff = uncertainty.phase_difference(clear, ["IV-B", "IV-A"], "IV-B", "IV-A", uncertainty.generator(0, "d"))
    assert diff["best"][1] > 0.39 and diff["mean"][2] < 0.41
    same = [0.7 + 0.05 * rng.normal(size=3) for _ in range(4)]
    diff = uncertainty.phase_difference(same, ["IV-A", "IV-B", "IV-A", "IV-B"], "IV-A", "IV-B",
                                        uncertainty.generator(0, "d"))
    assert diff["mean"][1] < 0 < diff["mean"][2]


def test_correlation_intervals():
    rng = np.random.default_rng(5)
    x = np.arange(30.0)
    score = x + 0.1 * rng.normal(size=30)
    labels = ["IV-B"] * 15 + ["IV-A"] * 15
    v_shape = np.abs(x - 14.5)  # rank correlation with x exactly 0
    out = uncertainty.correlation_intervals({"m": x, "noise": v_shape}, score, labels,
                                            uncertainty.generator(0, "c"), 500)
    assert out[("m", "all")][0] > 0.9 and out[("m", "IV-A")][2] > 0.5
    assert out[("noise", "all")][0] < 0 < out[("noise", "all")][1]
    assert set(out) == {(m, s) for m in ("m", "noise") for s in ("all", "IV-A", "IV-B")}
    again = uncertainty.correlation_intervals({"m": x, "noise": v_shape}, score, labels,
                                              uncertainty.generator(0, "c"), 500)
    assert again[("m", "all")] == out[("m", "all")]
    from scipy import stats
    rng = np.random.default_rng(6)
    for a, b in ((x[:5], np.array([1.0, 3, 2, 5, 4])), (rng.integers(0, 4, 30), rng.integers(0, 3, 30)),
                 (rng.normal(size=12), rng.normal(size=12))):  # ties in the second
        assert phases.kendall(a, b) == pytest.approx(stats.kendalltau(a, b).statistic, rel=1e-12)
        assert phases.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, rel=1e-12)
        np.testing.assert_allclose(phases.ranks(a), stats.rankdata(a))
    batch = rng.integers(0, 5, (4, 9)).astype(float)
    np.testing.assert_allclose(phases.ranks(batch), stats.rankdata(batch, axis=-1))
