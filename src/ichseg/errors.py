"""Errors shared by every layer that reads input."""


class DatasetError(ValueError):
    """A problem with the input data; the message names every offending file."""


class EngineUnavailable(RuntimeError):
    """An optional engine (an extra such as ``ichseg[ray]``) is not installed; the message says
    how to install it. Raised instead of the bare ImportError so that the command line can
    print it as one line without also hiding unrelated ImportErrors."""
