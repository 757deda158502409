"""The ``pixelseg`` application object and its error boundary, shared by every command module.

Every command runs inside :func:`friendly`: an expected failure — bad input (``PixelsegError``) or the
operating system refusing (``OSError``: a read-only folder, a full disk, a path that is a file) — ends in
one line ``error: <where>: <what>`` on stderr and exit code 2. Anything else is a bug: one line naming the
exception and the file where its traceback was saved, and exit code 1. No command prints a traceback.
"""

from __future__ import annotations

import datetime
import functools
import os
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
from rich.console import Console

from ..errors import PixelsegError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="pixelseg: image segmentation on PyTorch.")
out = Console()
err = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a config key: key=value")]

INTERRUPTED = "interrupted (checkpoints written so far are intact; continue with --resume)"


def fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def os_error_line(error: OSError) -> str:
    """``<file>: <reason>`` for an ``OSError`` (``[Errno 30] Read-only file system: 'x'`` → ``x: Read-only file
    system``)."""
    where = error.filename if error.filename is not None else None
    what = error.strerror or str(error) or type(error).__name__
    return f"{where}: {what}" if where is not None else what


def save_traceback(error: BaseException) -> Path | None:
    """Write the traceback of ``error`` to a new file under the system temporary folder; its path (``None``
    when even that cannot be written)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    try:
        fd, name = tempfile.mkstemp(prefix=f"pixelseg-crash-{stamp}-", suffix=".log")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
    except OSError:
        return None
    return Path(name)


def report_bug(error: BaseException) -> None:
    """A bug in pixelseg: one line with the exception and where its traceback is, exit code 1."""
    log = save_traceback(error)
    first = (str(error).splitlines() or [""])[0]
    where = f"; traceback saved to {log}" if log is not None else ""
    err.print(f"[red]internal error:[/red] {type(error).__name__}: {first}{where} (please report it)",
              highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


def friendly(command: F) -> F:
    """The error boundary: expected failures → one line, exit 2; bugs → one line and a saved traceback, exit 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # the commands' own exits (fail) and usage errors
        except PixelsegError as error:
            fail(str(error))
        except OSError as error:
            fail(os_error_line(error))
        except KeyboardInterrupt as error:  # Ctrl-C, or SIGTERM during training (its message says what was kept)
            fail(str(error) or INTERRUPTED)
        except MemoryError:
            fail("out of memory (try a smaller data.batch_size, image size or --tile)")
        except Exception as error:  # anything else is a bug, except Pillow's refusal of a huge image
            if type(error).__name__ == "DecompressionBombError":
                fail(f"an image is larger than Pillow's safety limit ({error})")
            report_bug(error)

    return wrapper  # type: ignore[return-value]


def is_main_process() -> bool:
    """False in every torchrun process but rank 0: only rank 0 prints results and writes reports."""
    return os.environ.get("RANK", "0") in ("", "0")
