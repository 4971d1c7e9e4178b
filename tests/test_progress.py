"""lljax.progress: a line every few seconds off a terminal, rich's bar on one, nothing when disabled."""
import io

from lljax.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_off_a_terminal_a_line_every_few_seconds_and_the_last():
    stream = io.StringIO()
    bar = Progress(10, stream=stream)
    for i in range(10):
        bar.update(1, f"step {i}")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert 1 <= len(lines) <= 2 and lines[-1].startswith("[" + "#" * 30 + "] 100.0%") and "step 9" in lines[-1]


def test_disabled_prints_nothing_and_a_terminal_gets_a_bar():
    quiet = io.StringIO()
    bar = Progress(3, enabled=False, stream=quiet)
    bar.update(3, "done")
    bar.close()
    assert quiet.getvalue() == "" and bar.done == 3
    tty = Terminal()
    bar = Progress(4, stream=tty)
    bar.update(2, "half way")
    bar.close()
    assert "half way" in tty.getvalue() and "50%" in tty.getvalue()
