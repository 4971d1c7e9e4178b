"""Metrics along training (lljax.tracking): tracking does not change training, the last epoch's rows are the
run's tables, the phase trajectory is the rule on each epoch's means, and a run killed while tracking resumes to
identical trajectories."""
import csv
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from lljax import phases, pipeline, tracking
from lljax.config import Config
from lljax.errors import LLJaxError
from test_pipeline import TINY, tiny_dataset

TRACKED = dict(widths=(3, 6), lrs=(0.05, 0.2), batch_sizes=(32,), seeds=2, epochs=6, hessian_samples=32,
               hessian_top_k=1, hessian_lanczos_steps=6, hessian_density_runs=0, curve_epochs=2, curve_points=5,
               cka_samples=32, metrics=("loss", "hessian", "curves", "cka", "l2"))


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    untracked = Config.from_dict(TRACKED)
    tracked = untracked.replace(track_epochs=(2, 4), track_metrics=("hessian", "curves", "cka", "l2"))
    for name, config in (("plain", untracked), ("tracked", tracked), ("again", tracked)):
        pipeline.run(config, root / name, progress=False, dataset=tiny_dataset())
    return root


@pytest.mark.slow
def test_tracking_leaves_the_final_numbers_unchanged(runs):
    for name in ("members.csv", "pairs.csv", "grid.csv"):
        assert (runs / "plain" / name).read_text() == (runs / "tracked" / name).read_text(), name


def test_the_last_epochs_rows_are_the_runs_tables(runs):
    out = runs / "tracked"
    for trajectory, table in (("trajectory", "members"), ("pair_trajectory", "pairs")):
        last = [r for r in read_csv(out / f"{trajectory}.csv") if r["epoch"] == "6"]
        rows = read_csv(out / f"{table}.csv")
        assert len(last) == len(rows) > 0 and {r["epoch"] for r in read_csv(out / f"{trajectory}.csv")} == \
            {"2", "4", "6"}
        for a, b in zip(last, rows):
            assert {k: v for k, v in a.items() if k != "epoch"} == {k: b[k] for k in a if k != "epoch"}
    grid = read_csv(out / "grid.csv")
    assert [r["phase"] for r in read_csv(out / "phase_trajectory.csv") if r["epoch"] == "6"] == \
        [r["phase"] for r in grid]


def test_the_phase_trajectory_is_the_rule_on_each_epochs_means(runs):
    for r in read_csv(runs / "tracked" / "phase_trajectory.csv"):
        expected = phases.classify(float(r["train_loss_mean"]), float(r["mc_mean"]), float(r["cka_softmax_mean"]),
                                   phases.Thresholds())
        assert r["phase"] == str(expected), r


def test_trajectories_are_deterministic_and_reported(runs):
    for name in ("trajectory.csv", "pair_trajectory.csv", "phase_trajectory.csv"):
        assert (runs / "tracked" / name).read_text() == (runs / "again" / name).read_text(), name
    report = (runs / "tracked" / "report.md").read_text()
    assert "## Along training" in report and "| hessian_top_eig |" in report
    figures = {p.name for p in (runs / "tracked" / "figures").iterdir()}
    assert {"phase_trajectory.png", "trajectory_hessian_top_eig.png", "trajectory_mc.png"} <= figures
    assert (runs / "tracked" / "checkpoints" / "group-0" / "track" / "2").is_dir()  # snapshots kept


def test_tracked_epochs_and_families():
    config = Config.from_dict(dict(epochs=10, track_epochs=(3,), track_every=4))
    assert tracking.tracked_epochs(config) == (3, 4, 8, 10)
    assert tracking.tracked_families(config) == ("loss", "hessian", "cka", "l2")  # the defaults the run computes
    assert tracking.tracked_epochs(Config.from_dict(dict(epochs=10))) == ()


@pytest.mark.parametrize("values,match", [
    (dict(epochs=5, track_epochs=(7,)), "track epoch 7 is outside the run's epochs 1..5"),
    (dict(track_metrics=("spectra",)), "tracked metric 'spectra' is not computed by the run"),
    (dict(track_every=0), "track every must be a positive integer"),
])
def test_bad_tracking_options(tmp_path, values, match):
    with pytest.raises(LLJaxError, match=match):
        pipeline.run(Config.from_dict({**TRACKED, **values}), tmp_path / "out", progress=False,
                     dataset=tiny_dataset())
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_with_a_constant_schedule_a_tracked_epoch_is_a_run_of_that_length(tmp_path):
    """The width x training-length map from one tracked run (experiments/losses.py): with --schedule constant the
    snapshot at epoch 2 of a 4-epoch run is a 2-epoch run, number for number; with the step schedule (decay at 75% of
    training) it is not."""
    base = dict(widths=(3,), lrs=(0.1,), batch_sizes=(32,), seeds=2, metrics=("loss",), track_metrics=("loss",))
    for schedule, same in (("constant", True), ("step", False)):
        long, short = (tmp_path / f"{schedule}-{e}" for e in (4, 2))
        pipeline.run(Config.from_dict(dict(base, schedule=schedule, epochs=4, track_epochs=(2,))), long,
                     progress=False, dataset=tiny_dataset())
        pipeline.run(Config.from_dict(dict(base, schedule=schedule, epochs=2)), short, progress=False,
                     dataset=tiny_dataset())
        snapshot = [r for r in read_csv(long / "trajectory.csv") if r["epoch"] == "2"]
        members = read_csv(short / "members.csv")
        assert len(snapshot) == len(members) == 2
        columns = ("seed", "train_loss", "train_acc", "test_loss", "test_acc")
        assert ([[r[c] for c in columns] for r in snapshot] == [[r[c] for c in columns] for r in members]) == same


@pytest.mark.slow
def test_a_run_killed_while_tracking_resumes_to_identical_trajectories(tmp_path):
    script = TINY + textwrap.dedent(f"""
        import sys
        from lljax import experiment
        experiment.enable_compilation_cache()
        config = experiment.Config.from_dict({{**{TRACKED!r}, "widths": (3, 6), "epochs": 9,
                                               "track_epochs": (3, 6)}})
        experiment.run(config, sys.argv[1], progress=False, dataset=tiny_dataset(), checkpoint_seconds=0)
    """)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen([sys.executable, "-c", script, str(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "groups" / "group-1.epoch-3.npz").exists() and time.time() < deadline and \
            proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "trajectory.csv").exists(), "the run finished before it could be killed"
    env = dict(os.environ)
    subprocess.run([sys.executable, "-c", script, str(killed)], env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-c", script, str(clean)], env=env, check=True, capture_output=True)
    for name in ("trajectory.csv", "pair_trajectory.csv", "phase_trajectory.csv", "members.csv"):
        assert (killed / name).read_text() == (clean / name).read_text(), name
