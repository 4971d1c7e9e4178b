"""lljax.loss_gaps: Zhou et al.'s heat map |mean test acc of a loss - cross-entropy's| per width and tracked epoch."""
import csv

import numpy as np

from lljax import loss_gaps


def trajectory_rows():
    acc = {("cross_entropy", 8, 10): (0.5, 0.6), ("focal", 8, 10): (0.4, 0.4), ("mse_onehot", 8, 10): (0.7, 0.7),
           ("cross_entropy", 64, 10): (0.8, 0.8), ("focal", 64, 10): (0.78, 0.8), ("mse_onehot", 64, 10): (0.8, 0.8)}
    rows = [dict(width=w, epoch=e, loss=loss, seed=s, test_acc=a) for (loss, w, e), pair in acc.items()
            for s, a in enumerate(pair)]
    for e, shift in ((20, 0.0), (40, 0.01)):  # later epochs: every loss gains the same -> the same gaps
        rows += [dict(r, epoch=e, test_acc=r["test_acc"] + shift) for r in rows if r["epoch"] == 10]
    return rows


def test_gaps_table_figures_and_report_section(tmp_path):
    gaps = loss_gaps.gaps(trajectory_rows())
    assert len(gaps) == 2 * 3 * 2 and {g["loss"] for g in gaps} == {"focal", "mse_onehot"}
    widths, epochs, table = loss_gaps.table(gaps)
    assert widths == [8, 64] and epochs == [10, 20, 40]
    np.testing.assert_allclose(table["focal"], [[0.15] * 3, [0.01] * 3], atol=1e-12)
    np.testing.assert_allclose(table["mse_onehot"], [[0.15] * 3, [0.0] * 3], atol=1e-12)
    np.testing.assert_allclose(table["max"], [[0.15] * 3, [0.01] * 3], atol=1e-12)
    paths = loss_gaps.write(gaps, tmp_path)
    assert sorted(p.name for p in paths) == ["loss_gaps.png", "loss_gaps_focal.png", "loss_gaps_mse_onehot.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    with open(tmp_path / "loss_gaps.csv") as f:
        assert len(list(csv.DictReader(f))) == len(gaps)
    assert "| 8 | 0.150 | 0.150 | 0.150 |" in loss_gaps.report_lines(gaps)


def test_nothing_without_cross_entropy_and_another_loss(tmp_path):
    one_loss = [dict(width=8, epoch=10, seed=0, test_acc=0.5)]
    no_ce = [dict(r, loss="focal") for r in one_loss] + [dict(r, loss="mse_onehot") for r in one_loss]
    for rows in (one_loss, no_ce):
        assert loss_gaps.gaps(rows) == [] and loss_gaps.write([], tmp_path) == [] and loss_gaps.report_lines([]) == []
    assert not (tmp_path / "loss_gaps.csv").exists()
