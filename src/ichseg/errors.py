"""Errors shared by every layer that reads input."""


class DatasetError(ValueError):
    """A problem with the input data; the message names every offending file."""
