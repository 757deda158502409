"""Deprecated aliases kept for one release: ``pixelseg instance-train``, ``instance-evaluate`` and
``instance-predict`` run ``pixelseg train``, ``evaluate`` and ``predict``, which serve every task."""

from __future__ import annotations

from pathlib import Path

import typer

from .base import err, fail, friendly, out


def _deprecated(old: str, new: str) -> None:
    err.print(f"warning: 'pixelseg {old}' is deprecated; use 'pixelseg {new}'", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("instance-train", hidden=True)
    @friendly
    def instance_train(
        config: Path = typer.Argument(..., help="instance YAML config (task: instance)"),
        override: list[str] = typer.Option([], "--set", help="section.key=value, repeatable"),
        resume: bool = typer.Option(False, "--resume", help="continue from out_dir/last.safetensors"),
    ) -> None:
        """Deprecated: use `pixelseg train`."""
        from ..engine.config import load_config
        from ..engine.train import train

        _deprecated("instance-train", "train")
        run_dir = train(load_config(config, list(override), require_data=True), resume=resume)
        out.print(f"run directory: {run_dir}")

    @app.command("instance-evaluate", hidden=True)
    @friendly
    def instance_evaluate(
        model_dir: Path = typer.Argument(..., help="saved model folder or run folder"),
        split: str = typer.Option("val", help="train or val"),
        output: Path = typer.Option(None, help="metrics JSON"),
    ) -> None:
        """Deprecated: use `pixelseg evaluate`."""
        from ..engine.evaluate import evaluate, write_report
        from .evaluate import print_scores

        _deprecated("instance-evaluate", "evaluate")
        scores = evaluate(model_dir, split=split)
        print_scores(scores)
        if output is not None:
            write_report(scores, output)

    @app.command("instance-predict", hidden=True)
    @friendly
    def instance_predict(
        model_dir: Path = typer.Argument(..., help="saved model folder or run folder"),
        inputs: list[Path] = typer.Argument(..., help="images or folders of images"),
        output_dir: Path = typer.Option(Path("predictions"), "--output", "-o"),
        score_threshold: float = typer.Option(0.5, help="keep instances scoring at least this"),
    ) -> None:
        """Deprecated: use `pixelseg predict`."""
        from ..engine.predict import predict
        from ..io.images import list_images

        _deprecated("instance-predict", "predict")
        files: list[Path] = []
        for item in inputs:
            files += list_images(item) if item.is_dir() else [item]
        report = predict(model_dir, files, output_dir, score_threshold=score_threshold,
                         on_error=lambda m: err.print(f"error: {m}", highlight=False, soft_wrap=True))
        for line in report.lines:
            out.print(line, highlight=False)
        if report.failed:
            fail(f"{len(report.failed)} input(s) failed (see above); the others were written")
