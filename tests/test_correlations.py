"""The correlation harness (lljax.correlations): slices, granulated Kendall, time-wise Spearman and the Simpson flag
on constructed grids whose answers are known, against scipy, and on a run."""
import csv
import itertools
import math
import types

import numpy as np
import pytest
import scipy.stats

from lljax import correlations, tables
from lljax.errors import LLJaxError


def simpson_grid():
    """width x lr, 4 x 4: within every lr (width varies) the metric rises with accuracy (+1); along lr (width
    fixed) accuracy rises and the metric falls (-1), and the lr effect dominates, so pooled they anti-correlate."""
    i, j = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")  # width index, lr index
    knobs = {"width": (2 ** (i + 2)).ravel().tolist(), "lr": (0.01 * 3.0 ** j).ravel().tolist()}
    acc = (10.0 * j + i).ravel()
    metric = (-10.0 * j + i).ravel()
    return knobs, metric, acc


def test_a_simpson_reversal_is_flagged_with_exact_slice_correlations():
    knobs, metric, acc = simpson_grid()
    width = correlations.slice_correlations(knobs, metric, acc, "width")
    lr = correlations.slice_correlations(knobs, metric, acc, "lr")
    assert width.used == lr.used == 4 and list(width.sizes) == [4] * 4
    assert [k["lr"] for k in width.keys] == sorted(set(knobs["lr"]))  # one slice per lr, width varying
    np.testing.assert_array_equal(width.spearman, 1.0)
    np.testing.assert_array_equal(width.kendall, 1.0)
    np.testing.assert_array_equal(lr.spearman, -1.0)
    assert width.median_iqr() == (1.0, 0.0) and lr.median_iqr() == (-1.0, 0.0)
    rho, tau = correlations.pooled(metric, acc)
    assert rho == pytest.approx(scipy.stats.spearmanr(metric, acc).statistic, abs=1e-12) and rho < -0.8
    assert tau == pytest.approx(scipy.stats.kendalltau(metric, acc).statistic)
    (row,) = correlations.correlation_table(knobs, {"m": metric}, {"test_acc": acc})
    assert row["simpson"] is True and row["simpson_knobs"] == "width"
    assert row["slice_spearman_median_width"] == 1.0 and row["slice_spearman_median_lr"] == -1.0
    assert row["psi_width"] == 1.0 and row["psi_lr"] == -1.0 and row["granulated_kendall"] == 0.0
    assert row["pooled_spearman"] == rho and row["points"] == 16 and "timewise_spearman" not in row
    assert math.isnan(row["pooled_spearman_lo"])  # no intervals given
    # without the reversal: a metric that tracks accuracy everywhere is not flagged
    (row,) = correlations.correlation_table(knobs, {"m": acc ** 2}, {"test_acc": acc})
    assert row["simpson"] is False and row["simpson_knobs"] == "" and row["granulated_kendall"] == 1.0


def test_granulated_kendall_against_a_hand_computed_value():
    # knobs a (3 values) x b (2 values); metric v[a, b], target t[a, b]
    a = [0, 1, 2, 0, 1, 2]
    b = [0, 0, 0, 1, 1, 1]
    v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    t = [1.0, 3.0, 2.0, 5.0, 6.0, 0.0]
    # slices of a: b=0: t 1,3,2 -> (2 - 1) / 3 = 1/3; b=1: t 5,6,0 -> (1 - 2) / 3 = -1/3; psi_a = 0
    # slices of b: a=0: (1,5) +1; a=1: (3,6) +1; a=2: (2,0) -1; psi_b = 1/3; Psi = 1/6
    psi, by_knob = correlations.granulated_kendall({"a": a, "b": b}, v, t)
    assert by_knob["a"] == pytest.approx(0.0, abs=1e-15) and by_knob["b"] == pytest.approx(1 / 3)
    assert psi == pytest.approx(1 / 6)
    s = correlations.slice_correlations({"a": a, "b": b}, v, t, "a")
    np.testing.assert_allclose(s.kendall, [scipy.stats.kendalltau(v[:3], t[:3]).statistic,
                                           scipy.stats.kendalltau(v[3:], t[3:]).statistic])
    assert correlations.granulated_kendall({"a": a, "b": b}, v, t, over=["b"]) == (pytest.approx(1 / 3),
                                                                                   {"b": pytest.approx(1 / 3)})


def test_slices_pooled_and_granulated_against_scipy_on_a_random_grid_with_ties():
    rng = np.random.default_rng(0)
    points = list(itertools.product([1, 2, 3], [0.1, 0.2, 0.3, 0.4], ["ce", "mse"]))
    knobs = {"width": [p[0] for p in points], "lr": [p[1] for p in points], "loss": [p[2] for p in points]}
    metric = np.round(rng.normal(size=len(points)), 1)  # ties
    acc = np.round(rng.uniform(size=len(points)), 1)
    for knob in knobs:
        s = correlations.slice_correlations(knobs, metric, acc, knob)
        for key, rho, tau in zip(s.keys, s.spearman, s.kendall):
            chosen = np.asarray([all(knobs[k][p] == key[k] for k in key) for p in range(len(points))])
            assert chosen.sum() == len(set(knobs[knob]))
            if np.ptp(metric[chosen]) == 0 or np.ptp(acc[chosen]) == 0:
                assert math.isnan(rho) and math.isnan(tau)
                continue
            assert rho == pytest.approx(scipy.stats.spearmanr(metric[chosen], acc[chosen]).statistic, abs=1e-12)
            assert tau == pytest.approx(scipy.stats.kendalltau(metric[chosen], acc[chosen]).statistic, abs=1e-12)
        finite = s.spearman[np.isfinite(s.spearman)]
        median, iqr = s.median_iqr()
        assert median == pytest.approx(np.median(finite))
        assert iqr == pytest.approx(np.subtract(*np.percentile(finite, [75, 25])))
    rho, tau = correlations.pooled(metric, acc)
    assert rho == pytest.approx(scipy.stats.spearmanr(metric, acc).statistic, abs=1e-12)
    assert tau == pytest.approx(scipy.stats.kendalltau(metric, acc).statistic, abs=1e-12)
    psi, by_knob = correlations.granulated_kendall(knobs, metric, acc)
    assert psi == pytest.approx(np.mean(list(by_knob.values())))


def test_slices_with_one_model_or_constant_values_are_left_out():
    knobs = {"width": [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2],
             "lr": [0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.3, 0.3, 0.3, 0.4, 0.4]}
    metric = np.array([1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 1.0, 2.0, np.nan, 7.0, np.nan])
    acc = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 3.0, 1.0, 2.0, 1.0, 2.0])
    s = correlations.slice_correlations(knobs, metric, acc, "width")
    # lr 0.1: +1; lr 0.2: constant metric; lr 0.3: two finite points, (1, 3), (2, 1): -1; lr 0.4: one finite point
    assert list(s.sizes) == [3, 3, 2, 1] and s.used == 2
    np.testing.assert_array_equal(s.spearman, [1.0, np.nan, -1.0, np.nan])
    assert s.median_iqr() == (0.0, 1.0) and s.psi == 0.0
    (row,) = correlations.correlation_table(knobs, {"m": metric}, {"test_acc": acc})
    assert row["slices_width"] == 2 and row["points"] == 9
    # no usable slice at all: NaN, never an error
    flat = correlations.slice_correlations(knobs, np.ones(11), acc, "lr")
    assert flat.used == 0 and all(math.isnan(v) for v in (*flat.median_iqr(), flat.psi))
    psi, _ = correlations.granulated_kendall(knobs, np.ones(11), acc)
    assert math.isnan(psi)


def test_timewise_spearman_is_the_median_over_points_along_epochs():
    epochs = np.arange(5.0)
    values = np.stack([epochs, -epochs, epochs ** 2, np.ones(5), [1.0, 3.0, 2.0, 5.0, 4.0]], 1)  # (E, P)
    target = np.stack([epochs, epochs, epochs, epochs, epochs], 1)
    values[0, 2] = np.nan  # left out of that point only
    rhos = [scipy.stats.spearmanr(values[:, p], target[:, p], nan_policy="omit").statistic for p in (0, 1, 2, 4)]
    assert correlations.timewise_spearman(values, target) == pytest.approx(np.median(rhos))  # constant point out
    assert math.isnan(correlations.timewise_spearman(np.ones((3, 2)), target[:3, :2]))


def test_bad_input_is_one_line_error():
    knobs, metric, acc = simpson_grid()
    for call, match in ((lambda: correlations.slice_correlations(knobs, metric, acc, "batch_size"), "not a knob"),
                        (lambda: correlations.slice_correlations(knobs, metric[:5], acc, "lr"), "one length"),
                        (lambda: correlations.slice_correlations({"lr": [1, 2]}, metric, acc, "lr"), "entries"),
                        (lambda: correlations.pooled(["a"] * 16, acc), "numeric"),
                        (lambda: correlations.timewise_spearman(np.ones(3), np.ones(3)), "epochs, points")):
        with pytest.raises(LLJaxError, match=match) as error:
            call()
        assert len(str(error.value).splitlines()) == 1


# ------------------------------------------------------------------------------------------ on a run

def fake_run(tracked: bool):
    """A run's results and grid rows (seed means) on the Simpson grid, with a gap and, optionally, three
    tracked epochs in which the metric follows the test accuracy at every point."""
    knobs, metric, acc = simpson_grid()
    grid = [{"width": w, "lr": lr, "momentum": 0.9, "test_acc_mean": a / 100, "train_acc_mean": 1.0,
             "hessian_top_eig_mean": m, "l2_mean": -a} for w, lr, a, m in zip(knobs["width"], knobs["lr"], acc, metric)]
    config = types.SimpleNamespace(seed=0, uncertainty=types.SimpleNamespace(resamples=200, level=0.9))
    results = types.SimpleNamespace(
        config=config, knob_values={"width": (4, 8, 16, 32), "lr": (0.01, 0.03, 0.09, 0.27), "momentum": (0.9,),
                                    "batch_size": (32,), "weight_decay": (0.0,), "data_fraction": (1.0,),
                                    "label_noise": (0.0,)},
        correlated=("train_loss", "hessian_top_eig", "l2"), error_metric=True, model="mlp", dataset="tiny")
    trajectories = None
    if tracked:
        epochs = {e: [{**r, "test_acc_mean": r["test_acc_mean"] * e / 3, "hessian_top_eig_mean": e + r["width"],
                       "l2_mean": -e} for r in grid] for e in (1, 2, 3)}
        epochs[2][0]["hessian_top_eig_mean"] = math.nan
        trajectories = types.SimpleNamespace(grids=epochs)
    return results, grid, trajectories


def test_a_runs_harness_writes_the_table_the_figure_and_the_report_section(tmp_path):
    results, grid, trajectories = fake_run(tracked=True)
    harness = correlations.of_run(results, grid, trajectories)
    assert harness.knobs == ["width", "lr"] and harness.targets == ["test_acc", "gap"]
    assert [(r["metric"], r["target"]) for r in harness.rows] == \
        [(m, t) for m in ("hessian_top_eig", "l2") for t in ("test_acc", "gap")]  # train_loss not in the grid
    row = harness.rows[0]
    assert row["simpson"] and row["simpson_knobs"] == "width" and row["granulated_kendall"] == 0.0
    assert row["pooled_spearman_lo"] <= row["pooled_spearman"] <= row["pooled_spearman_hi"] < 0
    assert row["timewise_spearman"] == 1.0  # rises with the accuracy along training at every point
    gap = harness.rows[1]  # gap = 1 - acc: every correlation flips its sign
    assert gap["pooled_spearman"] == pytest.approx(-row["pooled_spearman"])
    assert gap["slice_spearman_median_width"] == -1.0 and gap["timewise_spearman"] == -1.0
    assert harness.rows[2]["timewise_spearman"] == -1.0  # l2 falls along training while the accuracy rises
    paths = correlations.write(results, harness, tmp_path)
    assert paths == [tmp_path / "figures" / "slice_correlations.png"] and paths[0].stat().st_size > 0
    with open(tmp_path / "correlations.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and rows[0]["simpson"] == "True" and rows[0]["slice_spearman_median_width"] == "1"
    assert list(rows[0])[:4] == ["metric", "target", "points", "pooled_spearman"]
    lines = correlations.report_lines(results, harness)
    assert lines[0] == "## Correlations by one-knob slices"
    assert "| hessian_top_eig | test_acc | -0.88 [" in "\n".join(lines) and "yes (width)" in "\n".join(lines)
    assert "(figures/slice_correlations.png)" in "\n".join(lines)
    untracked = correlations.of_run(results, grid, None)
    assert "timewise_spearman" not in untracked.rows[0]
    assert correlations.report_lines(results, None) == [] and correlations.write(results, None, tmp_path) == []


def test_no_swept_knob_or_no_metric_gives_no_harness():
    results, grid, _ = fake_run(tracked=False)
    results.knob_values = {**results.knob_values, "width": (4,), "lr": (0.01,)}
    assert correlations.of_run(results, grid[:1], None) is None
    results, grid, _ = fake_run(tracked=False)
    results.correlated = ("nc1",)
    assert correlations.of_run(results, grid, None) is None


@pytest.mark.slow
def test_a_tiny_run_writes_correlations_csv_and_its_report_section(tmp_path):
    from lljax import pipeline
    from test_pipeline import tiny_config, tiny_dataset

    out = tmp_path / "run"
    pipeline.run(tiny_config(metrics=("loss", "l2")), out, progress=False, dataset=tiny_dataset())
    with open(out / "correlations.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["metric"], r["target"]) for r in rows] == [(m, t) for m in ("train_loss", "l2")
                                                          for t in ("test_acc", "gap")]
    assert {"slices_width", "slice_spearman_median_lr", "psi_lr", "granulated_kendall", "simpson"} <= set(rows[0])
    with open(out / "grid.csv") as f:  # the rows are the harness on grid.csv's seed means
        grid = list(csv.DictReader(f))
    column = lambda name: [float(r[name]) for r in grid]  # noqa: E731
    again = correlations.correlation_table(
        {k: column(k) for k in ("width", "lr")}, {m: column(f"{m}_mean") for m in ("train_loss", "l2")},
        {"test_acc": column("test_acc_mean"),
         "gap": np.subtract(column("train_acc_mean"), column("test_acc_mean"))})
    for row, expected in zip(rows, again):
        assert int(row["slices_width"]) <= 2 and int(row["slices_lr"]) <= 2  # a 2 x 2 grid: two slices a knob
        for key in ("slices_width", "slice_spearman_median_lr", "psi_width", "granulated_kendall", "simpson"):
            assert str(row[key]) == tables.to_csv([expected]).splitlines()[1].split(",")[list(expected).index(key)]
    text = (out / "report.md").read_text()
    assert "## Correlations by one-knob slices" in text and "(figures/slice_correlations.png)" in text
    # the pooled Spearman with test accuracy is the report's pooled correlation table's
    for row in rows[::2]:
        pooled = next(line for line in text.splitlines() if line.startswith(f"| {row['metric']} | all |"))
        value = float(row["pooled_spearman"])
        assert pooled.split("|")[4].strip().startswith("–" if math.isnan(value) else f"{value:+.2f}")
    assert (out / "figures" / "slice_correlations.png").exists()
