"""lljax.timings: timings.json covers a whole process, and its parts add up to the wall time measured outside."""
import json
import os
import subprocess
import sys
import time

import numpy as np

from lljax import timings
from test_pipeline import tiny_dataset


def test_timings_json_adds_up_to_the_wall_time_measured_outside(tmp_path):
    d = tiny_dataset()
    np.savez(tmp_path / "tiny.npz", x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test)
    out = tmp_path / "run"
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "lljax", "--dataset", str(tmp_path / "tiny.npz"), "--widths", "4",
                           "--lrs", "0.05", "0.1", "--batch-sizes", "32", "--epochs", "3", "--metrics", "loss", "l2",
                           "--out", str(out), "--no-progress", "--timings"], capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
    measured = time.time() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "timings.json").read_text())
    assert abs(summary["wall"] - measured) < 0.1 * measured, (summary["wall"], measured)
    parts = summary["import"] + sum(s["wall"] for s in summary["sections"].values())
    assert abs(parts - measured) < 0.1 * measured and summary["other"] < 0.1 * measured, summary
    assert {"data", "train", "measure/loss", "measure/l2", "figures", "tables",
            "checkpoint"} <= set(summary["sections"])
    assert summary["compile_total"] > 0 and any("train_ensemble" in p for p in summary["programs"])
    for s in summary["sections"].values():
        assert abs(max(s["wall"] - s["compile"], 0) - s["execute"]) < 1e-3
    assert proc.stdout.count("time: ") == 1 and "slowest to compile" in proc.stdout


def test_nested_sections_are_not_counted_twice():
    recorder = timings.Timings()
    try:
        with recorder.section("outer"):
            time.sleep(0.05)
            with recorder.section("inner"):
                time.sleep(0.05)
        assert 0.04 < recorder.sections["outer"] < 0.08 and 0.04 < recorder.sections["inner"] < 0.08
    finally:
        recorder.close()
