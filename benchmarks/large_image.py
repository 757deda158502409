"""A 16384 x 16384 RGB image streamed through a segmentation network: peak memory and time.

1. Writes a synthetic tiled RGB TIFF (once; tile by tile, never whole in memory).
2. Streams it through the model in a child process (``engine.tiling.stream_predict``): reads one window
   (tile + context) at a time from the TIFF via tifffile/zarr, writes the labels tile by tile into a tiled
   TIFF. Reports the child's peak RSS (``getrusage``), total time, and the sum of its tile forwards
   (ratio = total / sum of forwards; the overhead is reading, normalising, argmax and writing).
3. Tries whole-image inference with the same model in another child whose address space is capped
   (``--whole-limit-gb``, so that it cannot take the shared machine down) and reports what happens.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/large_image.py --size 16384 --tile 1024
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def build_model():
    import torch

    import pixelseg

    torch.manual_seed(0)
    model = pixelseg.create_model("unet", num_classes=2, in_channels=3, padding="same", base_channels=8, depth=3,
                                  batch_norm=True)
    return model.eval()


def write_scene(path: Path, size: int, tile: int = 512) -> None:
    """Smooth colour gradients with discs: a TIFF of ``size`` x ``size`` x 3, written tile by tile."""
    import tifffile

    yy, xx = np.mgrid[0:tile, 0:tile].astype(np.float32)

    def tiles():
        for y in range(0, size, tile):
            for x in range(0, size, tile):
                r = 127 + 120 * np.sin((xx + x) / 700.0)
                g = 127 + 120 * np.cos((yy + y) / 900.0)
                b = np.where(((xx - tile / 2) ** 2 + (yy - tile / 2) ** 2) < (tile / 3) ** 2, 230, 30)
                yield np.stack([r, g, b.astype(np.float32)], -1).astype(np.uint8)

    partial = path.with_name(path.name + ".part")
    with tifffile.TiffWriter(partial, bigtiff=True) as writer:
        writer.write(tiles(), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb")
    partial.replace(path)


def stream_child(source: Path, out: Path, tile: int, context: int) -> dict:
    import torch

    from pixelseg.inference.tiling import stream_predict

    torch.set_num_threads(1)
    model = build_model()
    report = stream_predict(model, source, out, mean=MEAN, std=STD, tile=tile, context=context)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"shape": report.shape, "tiles": report.tiles, "forward_s": report.forward_seconds,
            "total_s": report.total_seconds, "peak_rss_mb": peak_rss_mb}


def whole_child(source: Path, limit_gb: float) -> dict:
    limit = int(limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    started = time.perf_counter()
    stage = "import"
    try:
        import tifffile
        import torch

        from pixelseg.inference.forward import forward_whole

        torch.set_num_threads(1)
        model = build_model()
        stage = "read the image"
        pixels = tifffile.imread(source)
        stage = "normalise to float32"
        images = torch.from_numpy(pixels).permute(2, 0, 1)[None].float().div_(255)
        images = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        stage = "forward pass"
        with torch.inference_mode():
            labels = forward_whole(model, images).argmax(1)
        return {"outcome": "finished", "labels": list(labels.shape), "seconds": time.perf_counter() - started}
    except (MemoryError, RuntimeError) as error:
        return {"outcome": f"failed at '{stage}': {type(error).__name__}: {str(error).splitlines()[0][:160]}",
                "seconds": time.perf_counter() - started,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--context", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path("/tmp/pixelseg_large_image"))
    parser.add_argument("--whole-limit-gb", type=float, default=6.0)
    parser.add_argument("--child", choices=["stream", "whole"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    source = args.work / f"scene_{args.size}.tif"
    if args.child == "stream":
        print(json.dumps(stream_child(source, args.work / f"labels_{args.size}.tif", args.tile, args.context)))
        return
    if args.child == "whole":
        print(json.dumps(whole_child(source, args.whole_limit_gb)))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    if not source.exists():
        tick = time.perf_counter()
        write_scene(source, args.size)
        print(f"wrote {source} ({source.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - tick:.0f} s")
    base = [sys.executable, __file__, "--size", str(args.size), "--tile", str(args.tile), "--context",
            str(args.context), "--work", str(args.work), "--whole-limit-gb", str(args.whole_limit_gb)]
    stream = json.loads(subprocess.run(base + ["--child", "stream"], capture_output=True, text=True,
                                       check=True).stdout.strip().splitlines()[-1])
    print(f"streamed {stream['shape'][0]}x{stream['shape'][1]} RGB in {stream['tiles']} tiles of {args.tile}: "
          f"total {stream['total_s']:.1f} s, sum of tile forwards {stream['forward_s']:.1f} s, "
          f"ratio {stream['total_s'] / stream['forward_s']:.3f}; peak RSS {stream['peak_rss_mb']:.0f} MiB")
    whole = subprocess.run(base + ["--child", "whole"], capture_output=True, text=True)
    lines = whole.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {"outcome": f"child exited {whole.returncode}: "
                                                             f"{whole.stderr.strip().splitlines()[-1:]}"}
    print(f"whole-image inference (address space capped at {args.whole_limit_gb} GiB): {result}")


if __name__ == "__main__":
    main()
