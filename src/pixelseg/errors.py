"""One exception type for problems with the user's input (files, configs, names).

The CLI turns a ``PixelsegError`` into a single line on stderr and a non-zero exit code, so that bad
input never ends in a traceback from deep inside the library.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class PixelsegError(Exception):
    """A problem with user input, stated in one line that names the file (or key) and the problem."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


def closest(name: str, choices: Iterable[str]) -> str:
    """A ``" (did you mean 'x'?)"`` suffix naming the closest valid choice, or ``""``."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.4)
    return f" (did you mean '{match[0]}'?)" if match else ""
