"""``python -m pixelseg`` (also under ``torchrun``) runs the CLI."""

from .cli import main

main()
