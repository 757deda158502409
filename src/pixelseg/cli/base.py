"""The ``pixelseg`` application object and its error boundary, shared by every command module.

Bad input ends in one line on stderr naming the file and the problem, and exit code 2 — no traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from ..errors import PixelsegError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="pixelseg: image segmentation on PyTorch.")
out = Console()
err = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a config key: key=value")]


def fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def friendly(command: F) -> F:
    """Turn ``PixelsegError`` into one line and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except PixelsegError as error:
            fail(str(error))
        except KeyboardInterrupt:
            fail("interrupted (checkpoints written so far are intact; continue with --resume)")

    return wrapper  # type: ignore[return-value]
