"""lljax.milestones and Liu et al.'s phases: steps to a threshold against a loop over a recorded curve, the
accuracies recorded inside the training loop against evaluating the trained models at those steps, and the
published grokking phase diagram reproduced from its step grid."""
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lljax import data, milestones, models, phases, tasks, train

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "liu2022_grokking_steps"


def loop_steps(curve, every, budget, threshold):
    for c, value in enumerate(curve):
        if value >= threshold:
            return (c + 1) * every
    return budget


def test_steps_to_threshold_equals_a_loop_over_the_curve():
    rng = np.random.default_rng(0)
    curves = np.clip(np.cumsum(rng.uniform(0, 0.08, (50, 40)), 1), 0, 1)
    curves[::7] *= 0.5  # some never reach it
    got = milestones.steps_to_threshold(curves, 25, 1000, 0.9)
    assert got.shape == (50,) and (got == 1000).any() and (got < 1000).any()
    np.testing.assert_array_equal(got, [loop_steps(c, 25, 1000, 0.9) for c in curves])
    assert milestones.steps_to_threshold([np.nan, 0.95], 10, 99, 0.9) == 20  # NaN (not yet checked) never counts


def test_liu_phases_reproduce_the_published_diagram_121_of_121():
    train_steps = np.loadtxt(REFERENCE / "train_steps.txt")
    test_steps = np.loadtxt(REFERENCE / "test_steps.txt")
    readme = (REFERENCE / "README.md").read_text()
    block = readme[readme.index("```\n1.00e-04") + 4:]
    rows = [line.split()[1:] for line in block[:block.index("```")].strip().splitlines()]
    published = np.asarray(rows)
    assert published.shape == (11, 11)
    letters = {"comprehension": "C", "grokking": "G", "memorization": "M", "confusion": "X"}
    got = np.vectorize(letters.get)(phases.liu_phases(train_steps, test_steps, budget=99999, threshold=1e3))
    np.testing.assert_array_equal(got, published)  # 121 of 121


def test_liu_phase_rule_and_majority():
    labels = phases.liu_phases([10, 10, 10, 500, np.nan], [500, 5000, 500, 500, 1], 500, threshold=100)
    assert labels.tolist() == ["memorization", "memorization", "memorization", "confusion", "?"]
    assert phases.liu_phases([10, 10], [50, 4000], 5000, 1000).tolist() == ["comprehension", "grokking"]
    assert phases.majority(["grokking", "memorization", "grokking"]) == "grokking"
    assert phases.majority(["memorization", "grokking"]) == "grokking"  # a tie: Liu et al.'s order
    assert phases.majority(["?"]) == "?"


@pytest.mark.parametrize("batch_size", [train.FULL_BATCH, 8])
def test_accuracies_recorded_in_the_loop_equal_evaluating_the_models_at_those_steps(batch_size):
    """A check after every epoch (full batch: every step; minibatches of 8: every 3 steps) == the plain run's
    models evaluated after each epoch; the training itself is untouched."""
    ds = data.Dataset.from_arrays("m", **tasks.generate("modular", tasks.TaskOptions(p=7, test_fraction=0.5)))
    spec = train.TrainSpec(models.ModelSpec("transformer", 16, 7, extras=(("seq_len", 3), ("vocab_size", 8))),
                           batch_size, 3, len(ds.y_train), schedule="constant", optimizer="adam", input_dtype="int32")
    spec = dataclasses.replace(spec, eval_every=spec.steps_per_epoch)
    plain = dataclasses.replace(spec, eval_every=0)
    ones = np.ones(2, np.float32)
    hyper = train.Hyper(ones * 0.01, ones * 0, ones * 0.9, np.asarray([1.0, 0.6], np.float32), ones * 0)
    keys, labels = jax.random.split(jax.random.key(0), 2), jnp.asarray(ds.y_train)
    x, x_test, y_test = jnp.asarray(ds.x_train), jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
    state, member = train.init_ensemble(spec, keys, hyper, labels, (3,))
    reference, _ = train.init_ensemble(plain, keys, hyper, labels, (3,))
    expected_train, expected_test = [], []
    for epoch in range(3):  # the plain run, its models evaluated by hand after every epoch
        reference = train.train_ensemble(plain, reference, member, x, epoch, epoch + 1)
        acc = lambda x_, y_, w: train.evaluate_ensemble(spec.model, reference.params, reference.batch_stats, x_, y_,
                                                        w, loss=spec.loss)[1]
        expected_train.append(acc(x, member.view.labels, member.view.mask))
        expected_test.append(acc(x_test, jnp.stack([y_test] * 2), None))
    state = train.train_ensemble(spec, state, member, x, 0, 3, x_test=x_test, y_test=y_test)
    assert state.curves.train_acc.shape == (2, 3)
    np.testing.assert_array_equal(state.params["readout"]["kernel"], reference.params["readout"]["kernel"])
    np.testing.assert_allclose(np.asarray(state.curves.train_acc), np.stack(expected_train, 1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(state.curves.test_acc), np.stack(expected_test, 1), rtol=1e-6)


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_milestones(tmp_path, monkeypatch):
    from lljax import pipeline
    from lljax.config import Config

    config = Config.from_dict(dict(model="transformer", dataset="modular", task_p=7, task_test_fraction=0.4,
                                   widths=(16,), batch_sizes=(0,), lrs=(0.01,), optimizer="adam", seeds=2, epochs=40,
                                   data_fractions=(0.7, 1.0), milestones_every=4, metrics=("loss",)))
    pipeline.run(config, tmp_path / "clean", progress=False)
    real, calls = train.train_ensemble, []

    def interrupted(*args, **kwargs):  # stop in the middle of training, after some checkpoints
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_ensemble", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(config, tmp_path / "resumed", progress=False, checkpoint_seconds=0)
    monkeypatch.setattr(train, "train_ensemble", real)
    pipeline.run(config, tmp_path / "resumed", progress=False)
    clean, resumed = ((tmp_path / d / "members.csv").read_text() for d in ("clean", "resumed"))
    assert clean == resumed and "steps_to_generalise" in clean
    arrays = [np.load(tmp_path / d / "groups" / "group-0.npz") for d in ("clean", "resumed")]
    np.testing.assert_array_equal(arrays[0]["member/acc_curve_test"], arrays[1]["member/acc_curve_test"])


@pytest.mark.slow
def test_the_grokking_study_script_end_to_end(tmp_path):
    """experiments/grokking.py's quick preset, shortened (400 of its 1500 steps, no curves): the Liu map, the
    accuracy curves and the cross-table land in the report (the full preset is README's run)."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "experiments" / "grokking.py"
    out = tmp_path / "grokking"
    subprocess.run([sys.executable, str(script), "--preset", "quick", "--epochs", "400", "--metrics", "loss", "cka",
                    "l2", "--out", str(out), "--no-progress"], check=True, capture_output=True)
    report = (out / "report.md").read_text()
    assert "## Liu et al.'s phases of grokking" in report and "Grid points by Yang et al.'s phase" in report
    labels = {line.split(",")[-2] for line in (out / "grid.csv").read_text().splitlines()[1:]}
    assert len(labels & set(phases.LIU_PHASES)) >= 2  # memorization at weight decay 0.1, confusion at 10
    assert (out / "figures" / "liu_phase_map.png").exists() and (out / "figures" / "accuracy_curves.png").exists()
