"""The one exception type for bad user input, so the CLI can print it without a traceback."""


class InputError(ValueError):
    """Bad or inconsistent input. The message names the file, the particle/image index where
    relevant, and what was expected."""
