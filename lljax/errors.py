"""The one exception type lljax raises for bad user input (the CLI prints it as one line), the guard that
turns an exception from user code (a model, optimiser or family check) into one, and a command's exit status."""
import contextlib
import sys
from typing import Callable


class LLJaxError(ValueError):
    """Bad input or configuration: the message names the problem in one line."""


@contextlib.contextmanager
def one_line(what: str):
    """Inside: any exception but LLJaxError becomes LLJaxError('<what>: <type>: <first line of its message>'),
    without the traceback from deep inside JAX or Flax."""
    try:
        yield
    except LLJaxError:
        raise
    except Exception as e:  # noqa: BLE001 -- the user's code: one line, not a traceback
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        message = lines[0] if lines else ""
        if "Traceback (most recent call last)" in message:  # raised in a host callback: its own last line
            message = lines[-1]
        raise LLJaxError(f"{what}: {type(e).__name__}: {message}") from None


def exit_status(command: Callable[[], int | None], interrupted: str = "run the same command again to resume") -> int:
    """Run a command-line command: its status (None: 0); bad input (LLJaxError) is one 'error: ' line on stderr
    and status 2; Ctrl-C is one line, 'interrupted: <interrupted>', and status 130."""
    try:
        status = command()
    except LLJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: {interrupted}", file=sys.stderr)
        return 130
    return 0 if status is None else status
