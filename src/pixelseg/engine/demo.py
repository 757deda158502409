"""``make demo``: a small U-Net on the built-in Shapes set, trained, evaluated and applied on CPU."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..data.config import DataConfig
from ..data.shapes import Shapes
from .config import Config, ModelConfig, OptimConfig, TrainConfig
from .evaluate import evaluate
from .predict import predict


def demo_config(out_dir: Path, epochs: int, samples: int) -> Config:
    return Config(
        model=ModelConfig(name="unet", kwargs={"padding": "same", "base_channels": 16, "batch_norm": True}),
        data=DataConfig(name="shapes", num_samples=samples, val_samples=64, image_size=96, batch_size=8,
                        val_batch_size=16),
        optim=OptimConfig(name="adamw", lr=3e-3, weight_decay=1e-4),
        train=TrainConfig(epochs=epochs, out_dir=str(out_dir / "run"), seed=0),
    )


def run_demo(out_dir: Path, *, epochs: int, samples: int, console: Console) -> dict:
    from .train import train

    out_dir = Path(out_dir)
    config = demo_config(out_dir, epochs, samples)
    resume = (Path(config.train.out_dir) / "last.safetensors").exists()
    run_dir = train(config, resume=resume)
    scores = evaluate(run_dir, split="test", data_overrides={"val_samples": 64})
    inputs = out_dir / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    test_set = Shapes(4, size=96, split="test")
    for index in range(len(test_set)):
        image, _ = test_set.load(index)
        image.save(inputs / f"shape_{index}.png")
    report = predict(run_dir, inputs, out_dir / "predictions")
    console.print(f"test mIoU {scores['mean_iou']:.3f}, pixel accuracy {scores['pixel_accuracy']:.3f} "
                  f"on {scores['images']} unseen Shapes images")
    console.print(f"run directory:  {run_dir} (config.yaml, log.csv, curves.png, last.safetensors)")
    console.print(f"best model:     {run_dir / 'best'} (config.json + model.safetensors)")
    console.print(f"predictions:    {out_dir / 'predictions'} ({len(report.written) // 2} index PNGs + overlays)")
    return scores
