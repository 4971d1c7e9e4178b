import csv
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lljax import cli, config, experiment, metrics, options


@pytest.mark.parametrize("args,match", [
    (["--widths", "0", "8"], "width must be a positive integer, got 0"),
    (["--widths", "-4"], "width must be a positive integer"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--model", "vgg"], "unknown model 'vgg'"),
    (["--model", "no_such_package.nets:wide"], "module 'no_such_package.nets' does not import"),
    (["--model", "lljax.models:nothing_here"], "'lljax.models' has no attribute 'nothing_here'"),
    (["--model", "lljax.data:subset_size"], "returned a .*, not a flax.linen.Module"),
    (["--model", "lljax.models:MODELS"], "is a dict, not a callable factory"),
    (["--model", "lljax.models:count_params"], "model factory 'lljax.models:count_params' failed"),
    (["--loss", "hinge"], "unknown loss 'hinge'"),
    (["--losses", "cross_entropy", "hinge"], "argument --losses: invalid choice: 'hinge'"),
    (["--optimizer", "lbfgs"], "unknown optimizer 'lbfgs'"),
    (["--schedule", "linear"], "invalid choice: 'linear'"),
    (["--dataset", "/nonexistent/data.npz"], "dataset file not found"),
    (["--batch-sizes", "5000"], "batch size 5000 is larger than the training set"),
    (["--label-noise", "1.2"], r"label-noise fraction must be in \[0, 1\]"),
    (["--data-fractions", "-0.1"], r"data fraction must be in \(0, 1\]"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "CIFAR-10 folder not found"),
    (["--dataset", "mnist"], "pass --data-dir"),
    (["--metrics", "nope"], "unknown metric 'nope'"),
    (["--widths"], "expected at least one argument"),
    (["--epochs", "ten"], "invalid int value"),
])
def test_bad_input_is_one_line_and_creates_nothing(tmp_path, capsys, args, match):
    out = tmp_path / "out"
    try:
        code = cli.main([*args, "--out", str(out), "--no-progress"])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert re.search(match, err), err
    assert not out.exists()


def test_error_from_a_fresh_process_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "experiments/phase_diagram.py", "--widths", "0", "--out",
                           str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: width must be a positive integer, got 0" and "Traceback" not in proc.stdout
    assert not (tmp_path / "o").exists()


def test_options_override_the_preset():
    args = cli.parser("x", {"quick": dict(widths=(1, 2), epochs=3)}).parse_args(
        ["--out", "o", "--epochs", "7", "--lrs", "0.1", "0.2"])
    config = cli.config_from_args(args, {"quick": dict(widths=(1, 2), epochs=3)})
    assert config.widths == (1, 2) and config.epochs == 7 and config.lrs == (0.1, 0.2)


STUDIES = sorted(p for p in (Path(__file__).resolve().parents[1] / "experiments").glob("*.py")
                 if p.name not in ("paper_grid_phases.py", "baselines.py"))


@pytest.mark.parametrize("script", STUDIES, ids=lambda p: p.stem)
def test_every_study_preset_is_a_valid_configuration(script):
    presets = runpy.run_path(str(script)).get("PRESETS", experiment.PRESETS)
    assert "quick" in presets
    for name, values in presets.items():
        config = cli.config_from_args(cli.parser("study", presets).parse_args(["--out", "x", "--preset", name]),
                                      presets)
        experiment.validate(config)
        swept = [k for k, v in config.knob_values().items() if len(v) > 1]
        assert len(swept) >= 1 and config.seeds >= 2, name


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("option,value,get,expected", [
    ("--phase-mc-band", "0.02", lambda c: c.phase.mc_band, 0.02), ("--phase-cka", "0.5", lambda c: c.phase.cka, 0.5),
    ("--hessian-samples", "300", lambda c: c.options("hessian").samples, 300),
    ("--max-pairs", "1", lambda c: c.max_pairs, 1),
    ("--max-members-per-chunk", "4", lambda c: c.max_members_per_chunk, 4),
    ("--curve-lr", "0.1", lambda c: c.options("curves").lr, 0.1),
])
def test_metric_and_phase_options_reach_the_configuration(option, value, get, expected):
    args = cli.parser("study", experiment.PRESETS).parse_args(["--out", "x", option, value])
    assert get(cli.config_from_args(args, experiment.PRESETS)) == expected


@pytest.mark.parametrize("args,match", [
    (["--phase-mc-band", "1.5"], r"mc_band must be in \[0, 1\)"),
    (["--hessian-samples", "0"], "hessian samples must be a positive integer, got 0"),
    (["--hessian-top-k", "40"], "top_k=40 needs at least as many Lanczos steps"),
    (["--curve-points", "1"], "curve points must be at least 2"),
    (["--cka-samples", "0"], "cka samples must be a positive integer"),
    (["--max-members-per-chunk", "0"], "max members per chunk must be a positive integer"),
    (["--sam-rho", "0", "-0.1"], r"SAM radius \(--sam-rho\) must be a non-negative number"),
    (["--losses", "focal", "--focal-gamma", "-1"], "focal gamma must be non-negative"),
    (["--losses", "label_smoothing", "--label-smoothing", "1"], r"label smoothing must be in \[0, 1\), got 1"),
    (["--losses", "label_smoothing", "--label-smoothing", "-0.1"], r"label smoothing must be in \[0, 1\)"),
    (["--losses", "focal", "mse_onehot", "--fitted-error", "0"], "fitted error must be above 0"),
])
def test_bad_metric_options_are_one_line_errors(tmp_path, capsys, args, match):
    code = cli.main([*args, "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and re.search(match, err) and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_classification_loss_on_a_regression_file_is_one_line_and_creates_nothing(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "wave.npz", x_train=rng.normal(size=(64, 4)), y_train=rng.normal(size=(64, 2)),
             x_test=rng.normal(size=(16, 4)), y_test=rng.normal(size=(16, 2)))
    code = cli.main(["--dataset", str(tmp_path / "wave.npz"), "--losses", "cross_entropy", "focal", "--widths", "4",
                     "--epochs", "1", "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "float targets but the loss needs integer class labels" in err
    assert not (tmp_path / "out").exists()


def test_every_configuration_field_has_a_flag_and_help_groups_them_by_section():
    """The flags are generated from the configuration: every core field and every section's field has one."""
    p = cli.parser("study", experiment.PRESETS)
    flags = {a for action in p._actions for a in action.option_strings}
    for f in options.fields(config.Config):
        assert (f.metadata.get("negate") or f.metadata.get("flag") or "--" + f.name.replace("_", "-")) in flags, f.name
    for section, (cls, prefix) in config.sections().items():
        for f in options.fields(cls):
            assert f"--{prefix}-{f.name}".replace('_', '-') in flags, (section, f.name)
    titles = [g.title for g in p._action_groups]
    assert "phase rule (see lljax/phases.py)" in titles
    assert {f"metric family {name!r}" for name, fam in metrics.FAMILIES.items() if fam.options} <= set(titles)
    text = p.format_help()
    assert "--curve-lr" in text and "(default: 0.2)" in text


def test_flags_reach_the_sections_of_the_configuration():
    args = cli.parser("study", experiment.PRESETS).parse_args(
        ["--out", "x", "--hessian-top-k", "2", "--hessian-trace-method", "hutchpp", "--curve-batch-size", "64",
         "--per-seed-data", "--loss", "mse", "--optimizer", "adam", "--depth", "3"])
    c = cli.config_from_args(args, experiment.PRESETS)
    assert c.options("hessian").top_k == 2 and c.options("hessian").trace_method == "hutchpp"
    assert c.options("hessian").samples == 500  # the quick preset's, untouched
    assert c.options("curves").batch_size == 64 and c.options("curves").epochs == 60
    assert not c.shared_data and c.loss == "mse" and c.optimizer == "adam" and c.depth == 3
