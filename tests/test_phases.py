"""Tests of lljax.phases: the phase rule on hand-made grids and on the paper's measured ResNet18/CIFAR-10 grid,
and the correlation table on data with known rank correlations."""

import itertools
import math
import pathlib

import numpy as np
import pytest
import scipy.stats

from lljax import phases
from lljax.errors import LLJaxError

PAPER_GRID = pathlib.Path(__file__).parent / "data" / "paper_resnet18_cifar10_grid.csv"


# ----------------------------------------------------------------------------------------------- classify


def test_classify_covers_every_branch():
    t = phases.Thresholds(train_loss=0.1, mc_band=0.02, cka=0.6)
    cases = [  # (train_loss, mc, cka, expected)
        (0.5, -0.10, 0.9, "I"),     # not fitted, barrier
        (0.5, 0.10, 0.9, "II"),     # not fitted, curve better than endpoints
        (0.5, 0.00, 0.1, "II"),     # not fitted, flat
        (0.01, -0.10, 0.9, "III"),  # fitted, barrier
        (0.01, 0.00, 0.3, "IV-A"),  # fitted, connected, dissimilar
        (0.01, 0.01, 0.9, "IV-B"),  # fitted, connected, similar
        (0.01, 0.05, 0.9, "IV-B"),  # fitted, mc clearly > 0 still counts as connected
        # boundaries: fitted needs loss strictly below; the band is inclusive; CKA at the threshold is IV-B
        (0.1, -0.10, 0.9, "I"),
        (0.01, -0.02, 0.9, "IV-B"),
        (0.01, -0.0201, 0.9, "III"),
        (0.01, 0.0, 0.6, "IV-B"),
        (0.01, 0.0, 0.5999, "IV-A"),
    ]
    loss, mc, cka, expected = (np.array(column) for column in zip(*cases))
    labels = phases.classify(loss, mc, cka, t)
    assert labels.shape == (len(cases),)
    assert list(labels) == list(expected)
    # element-wise: every point classified alone agrees with the vectorised call
    assert [str(phases.classify(*case[:3], t)) for case in cases] == list(expected)


def test_classify_keeps_grid_shape_and_uses_defaults():
    loss = np.array([[1.0, 1.0], [0.0, 0.0]])
    mc = np.array([[-0.5, 0.5], [-0.5, 0.0]])
    cka = np.array([[np.nan, np.nan], [0.2, 0.95]])
    labels = phases.classify(loss, mc, cka)
    assert labels.shape == (2, 2)
    np.testing.assert_array_equal(labels, [["I", "II"], ["III", "IV-B"]])
    # raising the CKA threshold above 0.95 turns the IV-B point into IV-A
    assert phases.classify(loss, mc, cka, phases.Thresholds(cka=0.99))[1, 1] == "IV-A"


def test_classify_nan_rule():
    nan = math.nan
    labels = phases.classify([nan, 0.5, 0.5, 0.01, 0.01, 0.01],
                             [0.0, nan, -0.5, nan, -0.5, 0.0],
                             [0.9, 0.9, nan, 0.9, nan, nan])
    # NaN in an input the branch consults -> "?"; CKA is not consulted for I/II/III
    assert list(labels) == ["?", "?", "I", "?", "III", "?"]


def test_thresholds_are_validated():
    assert phases.Thresholds() == phases.Thresholds(train_loss=0.05, mc_band=0.01, cka=0.7)
    for bad in (dict(train_loss=0.0), dict(train_loss=math.nan), dict(mc_band=-0.01), dict(mc_band=5.0),
                dict(cka=1.5), dict(cka="high")):
        with pytest.raises(LLJaxError):
            phases.Thresholds(**bad)
    with pytest.raises(LLJaxError, match="shapes"):
        phases.classify(np.zeros(3), np.zeros(4), np.zeros(3))
    with pytest.raises(LLJaxError, match="Thresholds"):
        phases.classify(0.0, 0.0, 0.0, thresholds=(0.1, 0.01, 0.7))


# ----------------------------------------------------------------------------------------------- the paper's grid


@pytest.fixture(scope="module")
def paper():
    grid = phases.load_paper_grid(PAPER_GRID)
    labels = phases.classify(grid["train_loss_mean"], grid["mc"], grid["cka_softmax_mean"])
    return grid, labels


def test_load_paper_grid(paper):
    grid, _ = paper
    assert len(grid["batch_size"]) == 210
    assert len(np.unique(grid["batch_size"])) == 15 and len(np.unique(grid["width"])) == 14
    np.testing.assert_allclose(grid["mc"], grid["mc_tr_err"] / 100)
    assert grid["curve_tr_err_t0_t025_t05_t075_t1"].shape == (210, 5)
    assert np.isnan(grid["test_acc_mean"][grid["batch_size"] == 19]).all()  # absent in the paper's results
    with pytest.raises(LLJaxError, match="cannot read"):
        phases.load_paper_grid(PAPER_GRID.with_name("missing.csv"))


def test_default_rule_recovers_the_paper_layout(paper):
    grid, labels = paper
    batch, width, acc = grid["batch_size"], grid["width"], grid["test_acc_mean"]
    assert phases.UNKNOWN not in set(labels)
    assert set(labels) == set(phases.PHASES)  # all five phases occur

    # narrow models are poorly connected: a barrier at every batch size for width <= 2, and for width <= 4
    # once the batch is not tiny (at batch 16-19 the under-trained curves of widths 3-4 beat their endpoints)
    assert set(labels[width <= 2]) <= {"I", "III"}
    assert set(labels[(width <= 4) & (batch >= 24)]) <= {"I", "III"}
    # narrow models with large batches fit but keep the barrier: phase III
    assert set(labels[(width >= 4) & (width <= 11) & (batch >= 364)]) == {"III"}

    # small batches do not fit narrow and mid widths: I or II, and II (curve better than its endpoints) for width 11-32
    small = batch <= 32
    assert set(labels[small & (width <= 32)]) <= {"I", "II"}
    assert set(labels[small & (width >= 11) & (width <= 32)]) == {"II"}

    # the best test accuracy (89.9% at batch 44, width 128) lies in IV-B, and so do the ten best points
    best = np.nanargmax(acc)
    assert (batch[best], width[best], round(acc[best], 1)) == (44, 128, 89.9)
    assert labels[best] == "IV-B"
    top10 = np.argsort(np.where(np.isnan(acc), -np.inf, acc))[-10:]
    assert set(labels[top10]) == {"IV-B"}
    mean_acc = {p: np.nanmean(acc[labels == p]) for p in phases.PHASES}
    assert max(mean_acc, key=mean_acc.get) == "IV-B"

    # wide fitted models at very large batch are connected but dissimilar: IV-A
    assert set(labels[(width >= 23) & (batch >= 512)]) == {"IV-A"}


# ----------------------------------------------------------------------------------------------- correlation table


def _brute_kendall_tau_b(x, y):
    concordant = discordant = ties_x = ties_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif dx == dy:
            concordant += 1
        else:
            discordant += 1
    untied = concordant + discordant
    return (concordant - discordant) / math.sqrt((untied + ties_x) * (untied + ties_y))


def _brute_spearman(x, y):
    return np.corrcoef(scipy.stats.rankdata(x), scipy.stats.rankdata(y))[0, 1]


def _row(rows, metric, scope):
    (row,) = [r for r in rows if r.metric == metric and r.scope == scope]
    return row


def test_correlation_table_known_correlations():
    acc = np.arange(12.0)
    labels = np.array(["I"] * 4 + ["III"] * 4 + ["IV-B"] * 4)
    rows = phases.correlation_table({"up": acc**3, "down": -np.exp(acc)}, acc, labels)
    assert [(r.metric, r.scope) for r in rows] == [(m, s) for m in ("up", "down") for s in ("all", "I", "III", "IV-B")]
    for r in rows:
        expected = 1.0 if r.metric == "up" else -1.0
        assert r.n == (12 if r.scope == "all" else 4)
        assert r.spearman == pytest.approx(expected) and r.kendall == pytest.approx(expected)


def test_correlation_table_pooled_vs_within_phase_and_references():
    r = np.random.default_rng(0)
    # Simpson's paradox: across phases the metric rises with accuracy, within each phase it falls
    acc, metric, labels = [], [], []
    for offset, phase in ((0.0, "I"), (10.0, "II"), (20.0, "IV-A")):
        a = offset + r.uniform(0, 5, size=15)
        acc.append(a)
        metric.append(2 * offset - a + 0.3 * r.normal(size=15))
        labels += [phase] * 15
    acc, metric, labels = np.concatenate(acc), np.concatenate(metric), np.array(labels)
    metric[3] = np.round(metric[4], 0)  # a tie
    metric[4] = np.round(metric[4], 0)
    rows = phases.correlation_table({"m": metric}, acc, labels)
    assert _row(rows, "m", "all").spearman > 0.5
    for phase in ("I", "II", "IV-A"):
        assert _row(rows, "m", phase).spearman < -0.5
    for row in rows:
        chosen = np.ones_like(acc, bool) if row.scope == "all" else labels == row.scope
        assert row.spearman == pytest.approx(_brute_spearman(metric[chosen], acc[chosen]), abs=1e-12)
        assert row.kendall == pytest.approx(_brute_kendall_tau_b(metric[chosen], acc[chosen]), abs=1e-12)


def test_correlation_table_is_nan_safe():
    acc = np.array([1.0, 2.0, 3.0, 4.0, np.nan, 6.0, 7.0, 8.0])
    metric = np.array([2.0, 4.0, np.nan, 8.0, 10.0, 12.0, 14.0, 1.0])
    labels = np.array(["III", "III", "III", "III", "IV-A", "IV-A", "?", "IV-B"])
    rows = phases.correlation_table({"m": metric, "flat": np.ones(8)}, acc, labels)
    assert [r.scope for r in rows if r.metric == "m"] == ["all", "III", "IV-A", "IV-B"]  # "?" only counts in all
    everything = _row(rows, "m", "all")
    keep = np.isfinite(acc) & np.isfinite(metric)
    assert everything.n == 6
    assert everything.spearman == pytest.approx(scipy.stats.spearmanr(metric[keep], acc[keep]).statistic)
    assert _row(rows, "m", "III").n == 3 and _row(rows, "m", "III").spearman == pytest.approx(1.0)
    for scope in ("IV-A", "IV-B"):  # fewer than 3 usable points
        row = _row(rows, "m", scope)
        assert row.n < 3 and math.isnan(row.spearman) and math.isnan(row.kendall)
    assert math.isnan(_row(rows, "flat", "all").spearman)  # a constant metric has no rank information
    with pytest.raises(LLJaxError, match="shape"):
        phases.correlation_table({"m": metric[:5]}, acc, labels)


def test_correlation_table_on_the_paper_grid_and_markdown(paper):
    grid, labels = paper
    metrics = {"cka_softmax": grid["cka_softmax_mean"], "log_hess_top_eig": grid["log_hess_top_eig"]}
    rows = phases.correlation_table(metrics, grid["test_acc_mean"], labels)
    # pooled, the paper's metrics look strongly predictive: CKA up, sharpness down
    assert _row(rows, "cka_softmax", "all").spearman > 0.8
    assert _row(rows, "log_hess_top_eig", "all").spearman < -0.8
    # within the well-trained phases the Hessian tells much less (the paper's point about pooled correlations)
    assert abs(_row(rows, "log_hess_top_eig", "IV-B").spearman) < 0.5
    text = phases.format_correlation_table(rows)
    assert text.count("\n") == len(rows) + 1 and "| cka_softmax | IV-B |" in text
