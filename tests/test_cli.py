import re
import subprocess
import sys

import pytest

from lljax import cli


@pytest.mark.parametrize("args,match", [
    (["--widths", "0", "8"], "width must be a positive integer, got 0"),
    (["--widths", "-4"], "width must be a positive integer"),
    (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["--model", "vgg"], "invalid choice: 'vgg'"),
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
