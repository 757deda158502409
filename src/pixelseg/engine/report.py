"""The evaluation report: ``report/index.html`` (one self-contained page, pictures inlined as PNG data URIs)
and ``report/report.md`` (the same tables, the pictures as PNG files beside it).

What it shows: the per-class table (semantic: IoU, Dice, accuracy; volumes: Dice and IoU; instance: box and
mask AP), the row-normalised confusion matrix as a heatmap, the best and worst images by their own mean IoU
as image | ground truth | prediction, the run's training curves, and for volumes the IoU of every slice.

Per-image scores come from :class:`PerImageScores`, which wraps the task's evaluator during the one
evaluation pass (one small confusion matrix per image); the few pictures are predicted again afterwards.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..io.checkpoint import atomic_write_bytes
from ..io.render import draw_instances, heatmap, legend, overlay, png_bytes, stack, titled_row, upscale
from ..metrics.base import Evaluator, Scores, markdown_table
from ..metrics.confusion import ConfusionMatrix

PANEL = 256  # the shorter side of one picture in the report, in pixels
IGNORE_COLOUR = (160, 160, 160)  # ignored pixels (e.g. padding of a crop) in ``pixelseg show``
LABEL_ALPHA = 0.75
SCORE_THRESHOLD = 0.5  # instance samples: the detections drawn (as pixelseg predict)  # how much of the class colour covers the image in a label picture


# ---- per-image scores, during the evaluation pass ------------------------------------------------------

@dataclass
class ImageScore:
    """One evaluated sample: its index in the dataset, its mean IoU (NaN for instance data) and, for a
    volume, the mean IoU of each slice along the depth axis."""

    index: int
    mean_iou: float
    slices: list[float] = field(default_factory=list)


class PerImageScores:
    """An :class:`~pixelseg.metrics.base.Evaluator` that passes every batch to ``evaluator`` and keeps one
    score per sample; ``indices`` are the dataset indices in the order the loader yields them."""

    def __init__(self, evaluator: Evaluator, indices: Sequence[int], num_classes: int,
                 ignore_index: int | None) -> None:
        self.evaluator, self.num_classes, self.ignore_index = evaluator, num_classes, ignore_index
        self.indices = list(indices)
        self.records: list[ImageScore] = []

    def reset(self) -> None:
        self.evaluator.reset()
        self.records = []

    def _mean_iou(self, prediction: Tensor, target: Tensor) -> float:
        matrix = ConfusionMatrix(self.num_classes, self.ignore_index, validate=False)
        matrix.update(prediction, target)
        return matrix.mean_iou()

    def update(self, prediction: Any, target: Any) -> None:
        self.evaluator.update(prediction, target)
        if not isinstance(target, Tensor):  # instance data: no per-pixel labels to score
            for _ in target:
                self.records.append(ImageScore(self.indices[len(self.records)], math.nan))
            return
        labels = prediction.argmax(1) if prediction.dim() == target.dim() + 1 else prediction
        for predicted, truth in zip(labels.cpu(), target.cpu(), strict=True):
            slices = [self._mean_iou(p, t) for p, t in zip(predicted, truth, strict=True)] \
                if truth.dim() == 3 else []
            self.records.append(ImageScore(self.indices[len(self.records)], self._mean_iou(predicted, truth),
                                           slices))

    def all_reduce(self, group: object | None = None) -> None:
        """Merge the evaluator's state and gather every process's per-image scores into each."""
        import torch.distributed as dist

        self.evaluator.all_reduce(group)
        if dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size(group)
            dist.all_gather_object(gathered, self.records, group=group)
            self.records = sorted((r for records in gathered for r in records), key=lambda r: r.index)

    def compute(self) -> Scores:
        return self.evaluator.compute()

    def report(self, class_names: Sequence[str]) -> str:
        return self.evaluator.report(class_names)


def best_and_worst(records: Sequence[ImageScore], count: int) -> tuple[list[ImageScore], list[ImageScore]]:
    """The ``count`` samples of highest mean IoU (best first) and the ``count`` of lowest (worst first)
    among the others; samples without a score are left out."""
    scored = sorted((r for r in records if not math.isnan(r.mean_iou)), key=lambda r: (-r.mean_iou, r.index))
    best = scored[:count]
    rest = scored[len(best):]
    worst = sorted(rest, key=lambda r: (r.mean_iou, r.index))[:count]
    return best, worst


def row_normalised(matrix: Tensor | np.ndarray) -> np.ndarray:
    """Each row of a confusion matrix divided by its sum (the fraction of a true class predicted as each
    class); rows without pixels stay NaN."""
    counts = np.asarray(matrix, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / np.where(totals > 0, totals, 1), np.nan)


class Capture:
    """An evaluator that keeps the last batch it was given (to predict the report's pictures again)."""

    prediction: Any = None
    target: Any = None

    def update(self, prediction: Any, target: Any) -> None:
        self.prediction, self.target = prediction, target


# ---- pictures ------------------------------------------------------------------------------------------

def displayable(image: Tensor, mean: Sequence[float], std: Sequence[float], normalised: bool) -> np.ndarray:
    """A model input ``(C, H, W)`` (a volume: ``(C, D, H, W)``, its middle slice) as RGB uint8 ``(H, W, 3)``:
    the normalisation undone, or (volumes, z-scored) stretched from its minimum to its maximum."""
    pixels = image.detach().float().cpu()
    if pixels.dim() == 4:
        pixels = pixels[:, pixels.shape[1] // 2]
        pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min()).clamp(min=1e-6)
    elif normalised:
        pixels = pixels * torch.as_tensor(std).view(-1, 1, 1) + torch.as_tensor(mean).view(-1, 1, 1)
    pixels = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)
    return pixels[:3].permute(1, 2, 0).numpy()


def comparison(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, palette: Sequence[Sequence[int]],
               caption: str | None = None, min_side: int = PANEL, titled: bool = True) -> Image.Image:
    """image | ground truth | prediction, the class colours over a faint image, enlarged to ``min_side``."""
    picture = Image.fromarray(image)
    panels = [picture, overlay(picture, truth, palette, LABEL_ALPHA), overlay(picture, prediction, palette,
                                                                               LABEL_ALPHA)]
    titles = ["image", "ground truth", "prediction"] if titled else ["", "", ""]
    return titled_row([upscale(p, min_side) for p in panels], titles, caption=caption)


def instances_picture(image: np.ndarray, masks: np.ndarray, boxes: np.ndarray, labels: Sequence[str],
                      min_side: int) -> Image.Image:
    """Instances drawn with their labels after enlarging the image (so the text stays small and sharp)."""
    factor = max(1, -(-min_side // max(1, min(image.shape[:2]))))
    large = image.repeat(factor, 0).repeat(factor, 1)
    masks = masks.repeat(factor, 1).repeat(factor, 2) if len(masks) else \
        np.zeros((0, *large.shape[:2]), dtype=bool)
    return draw_instances(large, masks, np.asarray(boxes, dtype=np.float64) * factor, labels=labels)


def data_uri(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


# ---- the report ----------------------------------------------------------------------------------------

@dataclass
class Figure:
    """A picture of the report: its file name beside report.md, its heading and a caption."""

    name: str
    title: str
    image: Image.Image
    caption: str = ""


@dataclass
class Section:
    title: str
    markdown: str = ""
    figures: list[Figure] = field(default_factory=list)


def _fmt(value: float) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def class_table(scores: dict[str, Any]) -> str:
    """The per-class Markdown table of the scores of any task."""
    names = list(scores["classes"])
    if "box_AP_per_class" in scores:  # instance: the background has no AP row
        names = names[1:] if len(names) == len(scores["box_AP_per_class"]) + 1 else names
        return markdown_table(names, {"box AP": scores["box_AP_per_class"], "mask AP": scores["mask_AP_per_class"]},
                              {"box AP": scores["box_AP"], "mask AP": scores["mask_AP"]})
    if "volumes" in scores:
        return markdown_table(names, {"Dice": scores["dice_per_class"], "IoU": scores["iou_per_class"]},
                              {"Dice": scores["mean_dice"], "IoU": scores["mean_iou"]})
    if "accuracy_per_class" in scores:
        return markdown_table(names, {"IoU": scores["iou_per_class"], "Dice": scores["dice_per_class"],
                                      "accuracy": scores["accuracy_per_class"]},
                              {"IoU": scores["mean_iou"], "Dice": scores["mean_dice"],
                               "accuracy": scores["mean_pixel_accuracy"]})
    # any other evaluator (e.g. panoptic PQ/SQ/RQ): every per-class list that has a row per class
    columns = {key.removesuffix("_per_class"): values for key, values in scores.items()
               if key.endswith("_per_class") and isinstance(values, list) and len(values) == len(names)}
    means = {name: scores[name] for name in columns if isinstance(scores.get(name), float)}
    return markdown_table(names, columns, means) if columns else ""


def summary_lines(scores: dict[str, Any]) -> list[str]:
    skip = {"images", "volumes"}
    return [f"- {key}: {_fmt(value)}" for key, value in scores.items()
            if isinstance(value, float) and key not in skip]


def _cell(text: str | None) -> str:
    """A ``log.csv`` value: numbers to 4 significant digits."""
    try:
        return f"{float(text):.4g}" if text not in (None, "") else ""
    except ValueError:
        return str(text)


def curves_section(run_dir: Path | None) -> Section | None:
    """The run's ``curves.png`` (or, without it, a plot of ``log.csv``) and the last rows of ``log.csv``."""
    if run_dir is None:
        return None
    curves, log = run_dir / "curves.png", run_dir / "log.csv"
    section = Section("Training curves")
    if curves.is_file():
        with Image.open(curves) as picture:
            section.figures.append(Figure("curves.png", "", picture.convert("RGB")))
    if log.is_file():
        with log.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows:
            columns = list(rows[0])
            lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
            lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows[-5:]]
            section.markdown = f"The last {min(5, len(rows))} of {len(rows)} rows of `log.csv`:\n\n" + "\n".join(lines)
    return section if section.figures or section.markdown else None


def slices_section(records: Sequence[ImageScore]) -> Section | None:
    """Volumes: the mean IoU of every slice (mean over volumes) as a plot and a short table."""
    volumes = [r for r in records if r.slices]
    if not volumes:
        return None
    depth = max(len(r.slices) for r in volumes)
    table = np.full((len(volumes), depth), np.nan)
    for row, record in enumerate(volumes):
        table[row, : len(record.slices)] = record.slices
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a slice no volume scored: NaN
        means = np.nanmean(table, axis=0)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3), dpi=100)
    for row, record in enumerate(volumes[:8]):
        axes.plot(table[row], alpha=0.35, linewidth=1, label=f"volume {record.index}")
    axes.plot(means, color="black", linewidth=2, label="mean")
    axes.set(xlabel="slice", ylabel="mean IoU", ylim=(0, 1.02), title="IoU per slice")
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    buffer.seek(0)
    plot = Image.open(buffer).convert("RGB")
    step = max(1, depth // 16)
    lines = ["| slice | mean IoU |", "|---|---|"] + [f"| {d} | {_fmt(float(means[d]))} |" for d in range(0, depth, step)]
    note = f" (every {step}th slice)" if step > 1 else ""
    return Section("Scores per slice", f"Mean IoU of each slice over {len(volumes)} volumes{note}:\n\n"
                   + "\n".join(lines), [Figure("slices.png", "", plot)])


@dataclass
class ReportInputs:
    """Everything the report needs besides the scores."""

    classes: list[str]
    palette: list[list[int]]
    confusion: Tensor | None  # semantic and volumetric: the dataset's confusion matrix (rows: truth)
    records: list[ImageScore]
    samples: Callable[[int], tuple[np.ndarray, Any, Any]]  # index → (RGB image, truth, prediction)
    run_dir: Path | None = None  # the run folder (log.csv, curves.png), when there is one
    count: int = 4  # best and worst pictures each (instance: samples)


def build_sections(scores: dict[str, Any], inputs: ReportInputs) -> list[Section]:
    """The report's sections in reading order."""
    sections = [Section("Scores per class", class_table(scores) + "\n\n" + "\n".join(summary_lines(scores)))]
    key = legend(inputs.classes, inputs.palette)
    if inputs.confusion is not None:
        normalised = row_normalised(inputs.confusion)
        table = markdown_table(inputs.classes, {name: normalised[:, j].tolist() for j, name in
                                                enumerate(inputs.classes)}, {}, digits=3)
        table = table[: table.rindex("\n")]  # no mean row: each row is a distribution
        sections.append(Section(
            "Confusion matrix", "Rows: ground truth, columns: prediction; each row sums to 1.\n\n" + table,
            [Figure("confusion.png", "", heatmap(normalised, inputs.classes, inputs.classes))]))
    if scores.get("task") == "instance":
        pictures = []
        for record in inputs.records[: inputs.count]:
            image, _, output = inputs.samples(record.index)
            keep = output["scores"] >= SCORE_THRESHOLD
            output = {key: value[keep] for key, value in output.items()}
            labels = [f"{inputs.classes[int(c)] if int(c) < len(inputs.classes) else c} {float(s):.2f}"
                      for c, s in zip(output["labels"], output["scores"], strict=True)]
            masks = output["masks"][:, 0].numpy() > 0.5 if len(output["masks"]) else \
                np.zeros((0, *image.shape[:2]), dtype=bool)
            drawn = instances_picture(image, masks, output["boxes"].numpy(), labels, PANEL)
            pictures.append(titled_row([drawn], [f"sample {record.index}"]))
        if pictures:
            sections.append(Section("Sample predictions", f"Detections scoring at least {SCORE_THRESHOLD}, with class and score.",
                                    [Figure("samples.png", "", stack(pictures))]))
    else:
        best, worst = best_and_worst(inputs.records, inputs.count)
        for title, chosen in (("Best images", best), ("Worst images", worst)):
            if not chosen:
                continue
            rows = []
            for record in chosen:
                image, truth, prediction = inputs.samples(record.index)
                rows.append(comparison(image, truth, prediction, inputs.palette, titled=not rows,
                                       caption=f"#{record.index}  IoU {record.mean_iou:.3f}"))
            listing = ", ".join(f"#{r.index} (IoU {r.mean_iou:.3f})" for r in chosen)
            sections.append(Section(title, f"By the mean IoU of each image: {listing}.",
                                    [Figure(f"{title.split()[0].lower()}.png", "", stack([*rows, key]))]))
        slices = slices_section(inputs.records)
        if slices is not None:
            sections.append(slices)
    curves = curves_section(inputs.run_dir)
    if curves is not None:
        sections.append(curves)
    return sections


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;display:block;overflow-x:auto}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
h1{font-size:1.5em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}.meta{color:#666}"""


def _markdown_to_html(text: str) -> str:
    """The little Markdown the sections use: tables, ``- `` lists, paragraphs, ``code`` and **bold**."""
    import re

    def inline(value: str) -> str:
        value = html.escape(value)
        value = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", value)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", value)

    parts = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        if lines and lines[0].startswith("|"):
            cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if
                     not line.startswith("|---")]
            head = "".join(f"<th>{inline(c)}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif lines and lines[0].startswith("- "):
            parts.append("<ul>" + "".join(f"<li>{inline(line[2:])}</li>" for line in lines) + "</ul>")
        elif lines:
            parts.append(f"<p>{inline(' '.join(lines))}</p>")
    return "\n".join(parts)


def write_report(out_dir: str | Path, scores: dict[str, Any], inputs: ReportInputs) -> Path:
    """Write ``out_dir/index.html`` (self-contained) and ``out_dir/report.md`` with its PNGs; returns the
    HTML path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = build_sections(scores, inputs)
    model = Path(scores["model"])
    title = f"{model.parent.name}/{model.name} on {scores['split']}" if inputs.run_dir else f"{model.name} on {scores['split']}"
    meta = (f"model {scores['model']} · task {scores['task']} · split {scores['split']} · "
            f"{scores['images']} images")
    markdown = [f"# Evaluation: {title}", "", meta, ""]
    page = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>", f"<h1>Evaluation: {html.escape(title)}</h1>",
            f"<p class='meta'>{html.escape(meta)}</p>"]
    for section in sections:
        markdown += [f"## {section.title}", ""]
        page.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.markdown:
            markdown += [section.markdown, ""]
            page.append(_markdown_to_html(section.markdown))
        for figure in section.figures:
            atomic_write_bytes(out_dir / figure.name, png_bytes(figure.image))
            markdown += [f"![{section.title}]({figure.name})", ""]
            page.append(f"<p><img alt='{html.escape(section.title)}' src='{data_uri(figure.image)}'></p>")
    page.append("</body></html>")
    atomic_write_bytes(out_dir / "report.md", "\n".join(markdown).encode())
    atomic_write_bytes(out_dir / "index.html", "\n".join(page).encode())
    return out_dir / "index.html"



# ---- pixelseg show -------------------------------------------------------------------------------------

def sample_grid(data_config: Any, *, split: str | None = None, count: int = 8, augmented: bool = False,
                columns: int = 4, seed: int = 0) -> Image.Image:
    """``count`` samples of a split with their masks blended in, as a grid with a legend below — after the
    training augmentations with ``augmented`` (what the model is fed), otherwise as stored."""
    from ..data.build import build_data, build_eval_dataset
    from ..errors import PixelsegError

    bundle = build_data(data_config)
    info = bundle.info
    split = split or data_config.train_split
    if augmented and split != data_config.train_split:
        raise PixelsegError(f"--augmented shows the training split '{data_config.train_split}' as the model "
                            f"sees it; the augmentations do not apply to '{split}'")
    dataset = bundle.train_once if augmented else build_eval_dataset(data_config, info, split)
    if len(dataset) == 0:
        raise PixelsegError(f"split '{split}' has no samples")
    torch.manual_seed(seed)  # the same augmentations on every run
    palette = [list(c) for c in info.palette[: len(info.classes)]] + [list(IGNORE_COLOUR)]
    shown_ignore = False
    cells = []
    for index in range(min(count, len(dataset))):
        image, target = dataset[index]
        pixels = displayable(image, info.mean, info.std, normalised=bundle.kind != "instance")
        if bundle.kind == "instance":
            names = [info.classes[int(c)] for c in target["labels"]]
            drawn = instances_picture(pixels, target["masks"].numpy().astype(bool), target["boxes"].numpy(),
                                      names, 160)
            panels, titles = [upscale(Image.fromarray(pixels), 160), drawn], [f"#{index}", "instances"]
        else:
            labels = np.asarray(target)
            if labels.ndim == 3:  # a volume: its middle slice
                labels = labels[labels.shape[0] // 2]
            ignored = labels == info.ignore_index
            shown_ignore |= bool(ignored.any())
            labels = np.where(ignored, len(info.classes), labels)  # the grey after the palette
            picture = Image.fromarray(pixels)
            panels = [upscale(picture, 160), upscale(overlay(picture, labels, palette, LABEL_ALPHA), 160)]
            titles = [f"#{index}", "mask"]
        cells.append(titled_row(panels, titles))
    from ..io.render import grid, text_bar

    body = grid(cells, columns)
    what = f"{data_config.name} · split {split} · {'after the training augmentations' if augmented else 'as stored'}"
    parts = [text_bar(what, body.width), body]
    if bundle.kind != "instance":  # instance drawings name their classes on the boxes
        names = [*info.classes, f"ignored ({info.ignore_index})"] if shown_ignore else info.classes
        parts.append(legend(names, palette, width=body.width))
    return stack(parts)
