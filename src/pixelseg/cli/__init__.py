"""The ``pixelseg`` command line: one module per command group, all on one ``typer`` app.

``train``, ``evaluate``, ``predict`` and ``export`` serve every task from the saved config; ``models``,
``demo``, ``show``, ``stats``, ``data``, ``segment``/``kmeans`` (classical methods), ``remove-bg``, ``serve`` and
the deprecated ``instance-*`` aliases complete it. Bad input ends in one line on stderr naming the file and the problem, and exit code 2.
"""

from __future__ import annotations

import sys

from . import (
    data,
    demo,
    evaluate,
    export,
    instance,
    models,
    predict,
    remove_bg,
    segment,
    serve,
    show,
    stats,
    train,
)
from .base import app, fail, friendly

__all__ = ["app", "fail", "friendly", "main"]

for _module in (train, evaluate, predict, export, models, demo, show, stats, data, segment, remove_bg, serve,
                instance):
    _module.register(app)


def main() -> None:
    app(prog_name="pixelseg")


if __name__ == "__main__":
    sys.exit(main())
