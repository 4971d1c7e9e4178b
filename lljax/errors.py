"""The one exception type lljax raises for bad user input (the CLI prints it as one line), and the guard that
turns an exception from user code (a model, optimiser or family check) into one."""
import contextlib


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
