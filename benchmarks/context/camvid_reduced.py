"""A reduced-resolution copy of CamVid for the context-model CPU benchmarks (issue 5).

Frames are box-averaged (``PIL.Image.reduce``), label maps subsampled by nearest neighbour (labels are
never blended), keeping the SegNet layout (``<split>/``, ``<split>annot/``) so that the ``camvid``
reader (``pixelseg.data.CamVid``) reads the copy unchanged. The copy goes outside the repository.

    python benchmarks/context/camvid_reduced.py --factor 2 --out /tmp/pixelseg_camvid_half
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

SPLITS = ("train", "val", "test")


def reduce_camvid(source: Path, out: Path, factor: int) -> int:
    written = 0
    for split in SPLITS:
        for folder, is_label in ((split, False), (f"{split}annot", True)):
            (out / folder).mkdir(parents=True, exist_ok=True)
            for path in sorted((source / folder).glob("*.png")):
                with Image.open(path) as picture:
                    size = (picture.width // factor, picture.height // factor)
                    small = picture.resize(size, Image.NEAREST) if is_label else picture.reduce(factor)
                    small.save(out / folder / path.name)
                written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[3] / "shared/data/camvid")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--factor", type=int, default=2)
    args = parser.parse_args()
    count = reduce_camvid(args.source, args.out, args.factor)
    print(f"{count} files written to {args.out} (1/{args.factor} resolution)")


if __name__ == "__main__":
    main()
