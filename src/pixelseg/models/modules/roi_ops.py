"""RoIPool and RoIAlign in plain, vectorised PyTorch (autograd gives the backward pass).

RoIPool (Girshick, "Fast R-CNN", 2015, arXiv:1504.08083) quantises a box onto the feature grid and
takes the maximum of each of ``output_size`` roughly equal bins. RoIAlign (He, Gkioxari, Dollár,
Girshick, "Mask R-CNN", 2017, arXiv:1703.06870) removes that quantisation, the one idea that makes
pixel-accurate masks possible: each bin is sampled at ``sampling_ratio x sampling_ratio`` regular
points by bilinear interpolation and averaged. ``sampling_ratio <= 0`` chooses ``ceil(box / bins)``
points per bin for every box separately (the adaptive default), and ``aligned=True`` shifts the box
by half a pixel so that a continuous coordinate ``x`` falls between pixel centres ``floor(x - 0.5)``
and ``floor(x - 0.5) + 1`` (Detectron2's correction).

Both functions follow the conventions of ``torchvision.ops.roi_pool`` / ``roi_align`` exactly (the
tests compare them to 1e-5, gradients included): boxes are ``(x1, y1, x2, y2)`` in input-image
coordinates, scaled by ``spatial_scale``, given either as a ``(K, 5)`` tensor whose first column is
the batch index or as a list of ``(L_i, 4)`` tensors, one per image.

The implementation gathers feature vectors at integer positions from a ``(B*H*W, C)`` view of the
map, so the memory is ``K * samples * C``; boxes are processed in groups of similar size, each
padded to its own largest window, which bounds the memory and the padding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign

# Upper bound on gathered values (K * samples * C) held at once; boxes are processed in chunks below it.
_GATHER_BUDGET = 2**24


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def boxes_to_rois(boxes: Tensor | list[Tensor]) -> Tensor:
    """``(K, 5)`` rows ``(batch_index, x1, y1, x2, y2)`` from either accepted box format."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"boxes as one tensor must have shape (K, 5), got {tuple(boxes.shape)}")
        return boxes
    if not boxes:
        raise ValueError("boxes is an empty list")
    rows = []
    for index, per_image in enumerate(boxes):
        if per_image.dim() != 2 or per_image.shape[1] != 4:
            raise ValueError(f"boxes[{index}] must have shape (L, 4), got {tuple(per_image.shape)}")
        column = torch.full_like(per_image[:, :1], index)
        rows.append(torch.cat([column, per_image], dim=1))
    return torch.cat(rows, dim=0)


def _size_groups(extent_h: Tensor, extent_w: Tensor, values_per_cell: int, max_group: int = 64) -> list[Tensor]:
    """Box indices in groups of similar window size (``extent_h x extent_w`` cells per box).

    Each group is padded only to its own largest window, and a group's gathered values stay under
    ``_GATHER_BUDGET``; sorting by size first keeps the padding small when box sizes vary a lot.
    """
    extent_h, extent_w = extent_h.clamp(min=1), extent_w.clamp(min=1)
    order = torch.argsort(extent_h * extent_w).tolist()
    heights, widths = extent_h.tolist(), extent_w.tolist()
    groups, current, top_h, top_w = [], [], 1, 1
    for index in order:
        new_h, new_w = max(top_h, heights[index]), max(top_w, widths[index])
        if current and (len(current) >= max_group
                        or (len(current) + 1) * new_h * new_w * values_per_cell > _GATHER_BUDGET):
            groups.append(torch.tensor(current, dtype=torch.long, device=extent_h.device))
            current, new_h, new_w = [], heights[index], widths[index]
        current.append(index)
        top_h, top_w = new_h, new_w
    if current:
        groups.append(torch.tensor(current, dtype=torch.long, device=extent_h.device))
    return groups


def _in_original_order(pieces: list[Tensor], groups: list[Tensor]) -> Tensor:
    order = torch.cat(groups)
    return torch.cat(pieces, dim=0).index_select(0, torch.argsort(order))


# ---- RoIAlign ------------------------------------------------------------------------------------

def _bilinear_taps(coords: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Low/high integer neighbours of sample coordinates along one axis and their weights.

    A sample further than one pixel outside the map contributes nothing (both weights zero); one
    within that margin is clamped onto the border, as in the reference kernels.
    """
    outside = (coords < -1.0) | (coords > size)
    coords = coords.clamp(min=0.0)
    low = coords.floor().long()
    at_last = low >= size - 1
    low = torch.where(at_last, torch.full_like(low, size - 1), low)
    high = torch.where(at_last, low, low + 1)
    coords = torch.where(at_last, low.to(coords.dtype), coords)
    frac_high = coords - low.to(coords.dtype)
    frac_low = 1.0 - frac_high
    keep = (~outside).to(coords.dtype)
    return low, high, frac_low * keep, frac_high * keep


def _sample_axis(start: Tensor, bin_size: Tensor, grid: Tensor, bins: int, max_grid: int) -> Tensor:
    """Sample coordinates along one axis, shape ``(K, bins, max_grid)``: bin ``p``, point ``i`` lies at
    ``start + p * bin + (i + 0.5) * bin / grid``; points with ``i >= grid`` are padding."""
    bin_index = torch.arange(bins, device=start.device, dtype=start.dtype).view(1, bins, 1)
    point_index = torch.arange(max_grid, device=start.device, dtype=start.dtype).view(1, 1, max_grid)
    step = (bin_size / grid.to(start.dtype)).view(-1, 1, 1)
    return start.view(-1, 1, 1) + bin_index * bin_size.view(-1, 1, 1) + (point_index + 0.5) * step


def roi_align(
    features: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign of ``features`` ``(B, C, H, W)`` over ``boxes``; returns ``(K, C, *output_size)``."""
    rois = boxes_to_rois(boxes).to(features.dtype)
    out_h, out_w = _pair(output_size)
    batch, channels, height, width = features.shape
    num_rois = rois.shape[0]
    if num_rois == 0:
        return features.new_zeros(0, channels, out_h, out_w)

    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x1
    roi_h = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:  # the legacy behaviour: boxes are at least one pixel wide
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_w, bin_h = roi_w / out_w, roi_h / out_h
    if sampling_ratio > 0:
        grid_h = torch.full((num_rois,), sampling_ratio, dtype=torch.long, device=features.device)
        grid_w = grid_h.clone()
    else:
        grid_h = torch.ceil(roi_h / out_h).long()
        grid_w = torch.ceil(roi_w / out_w).long()
    flat = features.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    outputs = []
    groups = _size_groups(grid_h, grid_w, out_h * out_w * channels * 4)
    for part in groups:
        max_gh = max(int(grid_h[part].max()), 1)
        max_gw = max(int(grid_w[part].max()), 1)
        ys = _sample_axis(y1[part], bin_h[part], grid_h[part].clamp(min=1), out_h, max_gh)
        xs = _sample_axis(x1[part], bin_w[part], grid_w[part].clamp(min=1), out_w, max_gw)
        y_low, y_high, wy_low, wy_high = _bilinear_taps(ys, height)  # (k, out_h, gh)
        x_low, x_high, wx_low, wx_high = _bilinear_taps(xs, width)  # (k, out_w, gw)
        # padding points beyond a box's own grid get zero weight
        valid_y = (torch.arange(max_gh, device=features.device).view(1, 1, -1) < grid_h[part].view(-1, 1, 1))
        valid_x = (torch.arange(max_gw, device=features.device).view(1, 1, -1) < grid_w[part].view(-1, 1, 1))
        wy_low, wy_high = wy_low * valid_y, wy_high * valid_y
        wx_low, wx_high = wx_low * valid_x, wx_high * valid_x

        # the four bilinear neighbours of every sample, gathered at once: (k, out_h, gh, out_w, gw, 4)
        base = (rois[part, 0].long() * height * width).view(-1, 1, 1, 1, 1, 1)
        rows = torch.stack([y_low, y_low, y_high, y_high], dim=-1)[:, :, :, None, None, :]
        cols = torch.stack([x_low, x_high, x_low, x_high], dim=-1)[:, None, None, :, :, :]
        weight_y = torch.stack([wy_low, wy_low, wy_high, wy_high], dim=-1)[:, :, :, None, None, :]
        weight_x = torch.stack([wx_low, wx_high, wx_low, wx_high], dim=-1)[:, None, None, :, :, :]
        index = base + rows * width + cols
        weight = weight_y * weight_x
        # index_select's backward is an index_add, much faster on CPU than advanced indexing's
        gathered = flat.index_select(0, index.reshape(-1)).view(*index.shape, channels)
        count = (grid_h[part] * grid_w[part]).clamp(min=1).to(features.dtype).view(-1, 1, 1, 1, 1, 1)
        # weighted sum over the samples of each bin and their four neighbours: (k, out_h, out_w, C)
        pooled = torch.einsum("kygxwt,kygxwtc->kyxc", weight / count, gathered)
        outputs.append(pooled.permute(0, 3, 1, 2))
    return _in_original_order(outputs, groups)


# ---- RoIPool -------------------------------------------------------------------------------------

def _round_half_away(values: Tensor) -> Tensor:
    """C's ``round``: halves go away from zero (``torch.round`` rounds them to even)."""
    return torch.sign(values) * torch.floor(values.abs() + 0.5)


def roi_pool(
    features: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoIPool (max over quantised bins) of ``features`` ``(B, C, H, W)``; returns ``(K, C, *output_size)``.

    Empty bins (entirely outside the map) give 0 and no gradient.
    """
    rois = boxes_to_rois(boxes).to(features.dtype)
    out_h, out_w = _pair(output_size)
    batch, channels, height, width = features.shape
    num_rois = rois.shape[0]
    if num_rois == 0:
        return features.new_zeros(0, channels, out_h, out_w)

    start_x = _round_half_away(rois[:, 1] * spatial_scale).long()
    start_y = _round_half_away(rois[:, 2] * spatial_scale).long()
    end_x = _round_half_away(rois[:, 3] * spatial_scale).long()
    end_y = _round_half_away(rois[:, 4] * spatial_scale).long()
    roi_w = (end_x - start_x + 1).clamp(min=1)
    roi_h = (end_y - start_y + 1).clamp(min=1)

    def bin_edges(start: Tensor, extent: Tensor, bins: int, size: int) -> tuple[Tensor, Tensor]:
        bin_size = extent.to(features.dtype).view(-1, 1) / bins
        index = torch.arange(bins, device=features.device, dtype=features.dtype).view(1, -1)
        lo = torch.floor(index * bin_size).long() + start.view(-1, 1)
        hi = torch.ceil((index + 1) * bin_size).long() + start.view(-1, 1)
        return lo.clamp(0, size), hi.clamp(0, size)

    y_lo, y_hi = bin_edges(start_y, roi_h, out_h, height)  # (K, out_h)
    x_lo, x_hi = bin_edges(start_x, roi_w, out_w, width)  # (K, out_w)
    flat = features.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    outputs = []
    bin_h, bin_w = (y_hi - y_lo).amax(dim=1), (x_hi - x_lo).amax(dim=1)
    groups = _size_groups(bin_h, bin_w, out_h * out_w * channels)
    for part in groups:
        max_kh = max(int(bin_h[part].max()), 1)
        max_kw = max(int(bin_w[part].max()), 1)
        rows = y_lo[part].unsqueeze(-1) + torch.arange(max_kh, device=features.device)  # (k, out_h, kh)
        cols = x_lo[part].unsqueeze(-1) + torch.arange(max_kw, device=features.device)  # (k, out_w, kw)
        inside_y = rows < y_hi[part].unsqueeze(-1)
        inside_x = cols < x_hi[part].unsqueeze(-1)
        rows, cols = rows.clamp(max=height - 1), cols.clamp(max=width - 1)
        base = (rois[part, 0].long() * height * width).view(-1, 1, 1, 1, 1)
        index = base + rows[:, :, :, None, None] * width + cols[:, None, None, :, :]
        inside = inside_y[:, :, :, None, None] & inside_x[:, None, None, :, :]  # (k, out_h, kh, out_w, kw)
        values = flat.index_select(0, index.reshape(-1)).view(*index.shape, channels)
        values = values.masked_fill(~inside.unsqueeze(-1), float("-inf"))
        # (k, out_h, kh, out_w, kw, C): max over the columns, then the rows, of each bin
        pooled = values.max(dim=4).values.max(dim=2).values  # (k, out_h, out_w, C)
        pooled = torch.where(torch.isinf(pooled) & (pooled < 0), torch.zeros_like(pooled), pooled)
        outputs.append(pooled.permute(0, 3, 1, 2))
    return _in_original_order(outputs, groups)


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align` (same arguments as ``torchvision.ops.RoIAlign``)."""

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float, sampling_ratio: int,
                 aligned: bool = False) -> None:
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, features: Tensor, boxes: Tensor | list[Tensor]) -> Tensor:
        return roi_align(features, boxes, self.output_size, self.spatial_scale, self.sampling_ratio,
                         self.aligned)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")


class RoIPool(nn.Module):
    """Module form of :func:`roi_pool` (same arguments as ``torchvision.ops.RoIPool``)."""

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float) -> None:
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = spatial_scale

    def forward(self, features: Tensor, boxes: Tensor | list[Tensor]) -> Tensor:
        return roi_pool(features, boxes, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"



class MultiLevelRoIAlign(MultiScaleRoIAlign):
    """RoIAlign over a feature pyramid: each box reads the level that matches its size.

    The level of a box of area ``w*h`` is ``floor(k0 + log2(sqrt(w*h) / 224))`` clamped to the
    pyramid (Lin et al., "Feature Pyramid Networks", 2017, arXiv:1612.03144, Eq. 1, ``k0 = 4``). The
    scale of each level is the power of two closest to ``feature size / image size``. A drop-in for
    ``torchvision.ops.MultiScaleRoIAlign`` (same call signature and results) whose pooling is
    :func:`roi_align` here, or torchvision's kernel with ``implementation="torchvision"``. It subclasses
    torchvision's class only because torchvision's ``MaskRCNN`` checks that type; none of its code runs.
    """

    def __init__(self, featmap_names: list[str], output_size: int | tuple[int, int], sampling_ratio: int,
                 *, canonical_scale: int = 224, canonical_level: int = 4, aligned: bool = False,
                 implementation: str = "pixelseg") -> None:
        super().__init__(featmap_names, output_size, sampling_ratio, canonical_scale=canonical_scale,
                         canonical_level=canonical_level)
        if implementation not in ("pixelseg", "torchvision"):
            raise ValueError(f"implementation must be 'pixelseg' or 'torchvision', got {implementation!r}")
        self.featmap_names = list(featmap_names)
        self.output_size = _pair(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale, self.canonical_level = canonical_scale, canonical_level
        self.aligned = aligned
        self.implementation = implementation

    def _pool(self, features: Tensor, rois: Tensor, scale: float) -> Tensor:
        if self.implementation == "torchvision":
            from torchvision.ops import roi_align as torchvision_roi_align

            return torchvision_roi_align(features, rois, self.output_size, scale, self.sampling_ratio,
                                         self.aligned)
        return roi_align(features, rois, self.output_size, scale, self.sampling_ratio, self.aligned)

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:
        levels = [features[name] for name in self.featmap_names]
        rois = boxes_to_rois(boxes)
        image_h = max(shape[0] for shape in image_shapes)
        image_w = max(shape[1] for shape in image_shapes)
        scales = []
        for level in levels:
            approx = min(level.shape[-2] / image_h, level.shape[-1] / image_w)
            scales.append(2.0 ** round(float(torch.tensor(approx).log2())))
        if len(levels) == 1:
            return self._pool(levels[0], rois, scales[0])
        lowest = -round(torch.tensor(scales[0]).log2().item())
        highest = -round(torch.tensor(scales[-1]).log2().item())
        side = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        target = torch.floor(self.canonical_level + torch.log2(side / self.canonical_scale) + 1e-6)
        level_of_box = (target.clamp(lowest, highest) - lowest).long()
        channels = levels[0].shape[1]
        result = levels[0].new_zeros(rois.shape[0], channels, *self.output_size)
        for index, (level, scale) in enumerate(zip(levels, scales, strict=True)):
            chosen = torch.nonzero(level_of_box == index).squeeze(1)
            result = result.index_copy(0, chosen, self._pool(level, rois[chosen], scale))
        return result


__all__ = ["MultiLevelRoIAlign", "RoIAlign", "RoIPool", "boxes_to_rois", "roi_align", "roi_pool"]
