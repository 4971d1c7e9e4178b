"""lljax.errors: user code's exceptions as one line, and a command's exit status."""
import pytest

from lljax.errors import LLJaxError, exit_status, one_line


def test_one_line_keeps_the_first_line_and_names_the_type():
    with pytest.raises(LLJaxError, match=r"^model 'x' fails: KeyError: 'kernel'$"):
        with one_line("model 'x' fails"):
            raise KeyError("kernel")
    with pytest.raises(LLJaxError, match="^ours$"):  # lljax's own errors pass through unchanged
        with one_line("anything"):
            raise LLJaxError("ours")


def test_exit_status_of_a_command(capsys):
    assert exit_status(lambda: None) == 0 and exit_status(lambda: 3) == 3
    assert capsys.readouterr().err == ""

    def bad():
        raise LLJaxError("--epochs must be positive, got 0")

    assert exit_status(bad) == 2
    assert capsys.readouterr().err == "error: --epochs must be positive, got 0\n"

    def interrupted():
        raise KeyboardInterrupt

    assert exit_status(interrupted, "nothing was written") == 130
    assert capsys.readouterr().err.strip() == "interrupted: nothing was written"
    with pytest.raises(RuntimeError):  # anything else is a bug: not hidden
        exit_status(lambda: (_ for _ in ()).throw(RuntimeError("bug")))
