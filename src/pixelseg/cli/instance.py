"""CLI plugin: ``pixelseg instance-train``, ``instance-evaluate`` and ``instance-predict``.

``pixelseg train/evaluate/predict`` dispatch to the same functions when the config (or the model's
``config.json``) says ``task: instance``; these explicit commands work whatever the dispatch does.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    from . import friendly  # PixelsegError -> one line on stderr, exit code 2

    @app.command("instance-train")
    @friendly
    def instance_train(
        config: Path = typer.Argument(..., help="instance YAML config (task: instance)"),
        override: list[str] = typer.Option([], "--set", help="section.key=value, repeatable"),
        resume: bool = typer.Option(False, "--resume", help="continue from out_dir/last.safetensors"),
    ) -> None:
        """Train Mask R-CNN from an instance config."""
        from ..instance.train import train_from_config

        train_from_config(config, override, resume)

    @app.command("instance-evaluate")
    @friendly
    def instance_evaluate(
        model_dir: Path = typer.Argument(..., help="saved model folder (config.json + model.safetensors)"),
        config: Path = typer.Option(None, "--config", help="data config (default: the one saved with the model)"),
        override: list[str] = typer.Option([], "--set", help="section.key=value, repeatable"),
        split: str = typer.Option("val", help="train or val"),
        output: Path = typer.Option(None, help="metrics JSON (default MODEL_DIR/metrics_SPLIT.json)"),
    ) -> None:
        """COCO box and mask AP, AP50, AP75 (pycocotools)."""
        from ..instance.evaluate import evaluate_from_args

        evaluate_from_args(model_dir, config, override, split, output)

    @app.command("instance-predict")
    @friendly
    def instance_predict(
        model_dir: Path = typer.Argument(..., help="saved model folder"),
        inputs: list[Path] = typer.Argument(..., help="images or folders of images"),
        output_dir: Path = typer.Option(Path("predictions"), "--output", "-o"),
        score_threshold: float = typer.Option(0.5, help="keep instances scoring at least this"),
    ) -> None:
        """Per-instance masks as COCO JSON (RLE) plus colour overlays."""
        from ..instance.predict import predict_from_args

        predict_from_args(model_dir, inputs, output_dir, score_threshold)
