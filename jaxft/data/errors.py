"""Errors raised while reading and preparing data."""

from __future__ import annotations

import os


class DataError(ValueError):
    """A problem in input data, located as ``"{path}:{line}: {message}"`` or ``"{path}: {message}"``.

    ``path`` may also be a ready-made location such as a ``Sentence.source`` ("file:12" or
    "file:row 3"), in which case ``line`` is left out.
    """

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.message = message
        location = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{location}: {message}")
