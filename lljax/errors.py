"""The one exception type lljax raises for bad user input (the CLI prints it as one line)."""


class LLJaxError(ValueError):
    """Bad input or configuration: the message names the problem in one line."""
