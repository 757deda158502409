"""RoIPool and RoIAlign in plain, vectorised PyTorch (RoIPool with its own argmax backward pass).

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

RoIAlign's bilinear weights are separable: a bin's value is ``sum_y sum_x wy[y] * wx[x] * F[y, x]``,
so the rows and their weights (summed over the bin's samples) are worked out along each axis alone,
and every bin reads the outer product of its few rows and columns. The reads are done by
``embedding_bag`` (a weighted sum of table rows per bin; the reads are never materialised) over a
channels-last table of only the pixels some box reads; a feature pyramid is pooled in one pass, every
box on its own level. RoIPool gathers feature vectors at integer positions from a ``(B*H*W, C)`` view
of the map; its boxes are processed in groups of similar size, each padded to its own largest window,
which bounds the memory and the padding, and its backward pass sends each bin's gradient to the input
it took the maximum from (the argmax is kept from the forward pass, as in the paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign

from ...errors import PixelsegError

# Upper bound on gathered values (K * samples * C) held at once; boxes are processed in chunks below it.
_GATHER_BUDGET = 2**21


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

# Largest number of (bin, pixel) reads worked out at once; more RoIs than that are pooled in chunks.
_TAP_BUDGET = 2**22
# Values of channels-last output pooled at once when no gradient is needed (a few MB: stays in the cache).
_OUTPUT_PIECE = 2**19


def _axis_taps(start: Tensor, bin_size: Tensor, grid: Tensor, bins: int, size: Tensor) -> tuple[Tensor, Tensor]:
    """RoIAlign along one axis: for every RoI and bin, the map rows (or columns) its samples read and
    their bilinear weights summed over the samples and divided by the samples per bin.

    Returns ``(taps, weights)``, both ``(K, bins, n)``; a bin that reads fewer than ``n`` rows has zero
    weights in its last slots. Bin ``p``'s ``grid`` samples lie at ``start + p * bin + (i + 0.5) * bin /
    grid`` (evaluated in torchvision's order, so that the coordinates agree to the last bit); a sample
    more than one pixel outside the map reads nothing, one within that margin reads the border row.
    Neighbouring samples of a bin often read the same row (small boxes, the last row): such reads share
    one slot, so that each bin reads as few rows as it can.
    """
    device, dtype = start.device, start.dtype
    max_grid = max(int(grid.max()), 1)
    index = torch.arange(max_grid, device=device)
    valid = (index < grid.view(-1, 1)).unsqueeze(1)  # (K, 1, G)
    # samples past a box's own grid repeat its last one (with zero weight), so they merge into its slots
    sample = torch.minimum(index, (grid - 1).clamp(min=0).view(-1, 1)).to(dtype).unsqueeze(1)
    bin_index = torch.arange(bins, device=device, dtype=dtype).view(1, -1, 1)
    start, bin_size, size = start.view(-1, 1, 1), bin_size.view(-1, 1, 1), size.view(-1, 1, 1)
    per_bin = grid.clamp(min=1).to(dtype).view(-1, 1, 1)
    coords = (start + bin_index * bin_size) + (sample + 0.5) * bin_size / per_bin  # (K, bins, G)
    outside = (coords < -1.0) | (coords > size)
    coords = coords.clamp(min=0.0)
    low = coords.floor().long()
    at_last = low >= size - 1
    low = torch.where(at_last, size - 1, low)
    high = torch.where(at_last, low, low + 1)
    frac_high = torch.where(at_last, 0.0, coords - low.to(dtype))
    keep = (valid & ~outside).to(dtype) / per_bin
    taps = torch.stack([low, high], dim=-1).flatten(2)  # (K, bins, 2G): low_0, high_0, low_1, ...
    weights = torch.stack([(1.0 - frac_high) * keep, frac_high * keep], dim=-1).flatten(2)
    # the taps of a bin never decrease (unless the box is inverted), so equal ones are neighbours
    slot = torch.cat([torch.zeros_like(taps[..., :1]), (taps[..., 1:] != taps[..., :-1]).cumsum(-1)], dim=-1)
    slots = int(slot[..., -1].max()) + 1
    slot_weights = weights.new_zeros(*slot.shape[:2], slots).scatter_add_(-1, slot, weights)
    slot_taps = taps.new_zeros(*slot.shape[:2], slots).scatter_(-1, slot, taps)
    return slot_taps, slot_weights


def _slots_used(weights: Tensor) -> Tensor:
    """``(K,)``: how many leading slots of :func:`_axis_taps` some bin of each RoI uses."""
    position = torch.arange(1, weights.shape[-1] + 1, device=weights.device)
    return (position * (weights != 0).any(dim=1)).amax(dim=-1)


def _pixel_table(levels: list[Tensor], level_start: list[int], touched: Tensor,
                 needs_grad: bool) -> tuple[Tensor, Tensor]:
    """The feature vectors of the touched pixels, ``(P, C)`` rows in pixel order, and the row of every
    pixel in that table (``-1`` for pixels not touched).

    Pixels are numbered level after level, image after image, in raster order (``level_start`` is the
    first number of each level). Only the touched pixels are copied to this channels-last table: a
    pooler reads a part of the large, fine levels, and the copy of a whole level would cost more than
    the pooling itself.
    """
    row_of_pixel = touched.cumsum(0) - 1
    pixels = torch.nonzero(touched).squeeze(1)
    segment_start = [level_start[index] + image * level.shape[2] * level.shape[3]
                     for index, level in enumerate(levels) for image in range(level.shape[0])]
    bounds = torch.tensor([*segment_start, touched.numel()], device=touched.device)
    cuts = torch.searchsorted(pixels, bounds).tolist()
    # without autograd each piece is written in place; with it, the pieces are concatenated
    table = None if needs_grad else levels[0].new_empty(len(pixels), levels[0].shape[1])
    pieces, segment = [], 0
    for level in levels:
        for image in range(level.shape[0]):
            lo, hi = cuts[segment], cuts[segment + 1]
            if hi > lo:
                # (C, H*W) -> (H*W, C) is a view, for NCHW and channels-last maps alike
                plane = level[image].reshape(level.shape[1], -1).t()
                chosen = pixels[lo:hi] - segment_start[segment]
                if table is None:
                    pieces.append(plane.index_select(0, chosen))
                else:
                    torch.index_select(plane, 0, chosen, out=table[lo:hi])
            segment += 1
    if table is None:
        table = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    return table, row_of_pixel


def _roi_align_levels(levels: list[Tensor], scales: list[float], rois: Tensor, level_of_box: Tensor,
                      output_size: tuple[int, int], sampling_ratio: int, aligned: bool) -> Tensor:
    """RoIAlign of each row of ``rois`` ``(K, 5)`` on the map ``levels[level_of_box[k]]`` (scale
    ``scales[...]``), all RoIs at once; returns ``(K, C, *output_size)``.

    RoIAlign's bilinear weights are separable, so each axis is worked out on its own (:func:`_axis_taps`)
    and every bin reads the outer product of its rows and columns: one bag of ``embedding_bag`` (a
    weighted sum of table rows, the reads never materialised) per bin, over a channels-last table of
    the pixels read (:func:`_pixel_table`). Autograd's backward of ``embedding_bag`` adds the weighted
    output gradients into the table, which passes them on to the maps.
    """
    out_h, out_w = output_size
    first = levels[0]
    channels, device, dtype = first.shape[1], first.device, first.dtype
    num_rois = rois.shape[0]
    if num_rois == 0:
        return first.new_zeros(0, channels, out_h, out_w)
    rois = rois.detach().to(dtype)  # as torchvision's kernel, no gradient flows to the boxes
    batch_index = rois[:, 0].long()
    batch = first.shape[0]
    if int(batch_index.min()) < 0 or int(batch_index.max()) >= batch:
        raise PixelsegError(f"RoI batch indices must lie in [0, {batch - 1}] (the feature map's batch), "
                            f"got {int(batch_index.min())}..{int(batch_index.max())}")
    level_start = [0]  # pixels are numbered level after level (and the total at the end)
    for level in levels:
        level_start.append(level_start[-1] + level.shape[0] * level.shape[2] * level.shape[3])
    height = torch.tensor([level.shape[2] for level in levels], device=device)[level_of_box]
    width = torch.tensor([level.shape[3] for level in levels], device=device)[level_of_box]
    scale = torch.tensor(scales, dtype=dtype, device=device)[level_of_box]
    first_pixel = torch.tensor(level_start[:-1], device=device)[level_of_box] + batch_index * height * width

    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * scale - offset
    y1 = rois[:, 2] * scale - offset
    roi_w = rois[:, 3] * scale - offset - x1
    roi_h = rois[:, 4] * scale - offset - y1
    if not aligned:  # the legacy behaviour: boxes are at least one pixel wide
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = grid_w = torch.full((num_rois,), sampling_ratio, dtype=torch.long, device=device)
    else:  # adaptive: ceil(box / bins) samples per bin, none for an empty or inverted box
        grid_h = torch.ceil(roi_h / out_h).long().clamp(min=0)
        grid_w = torch.ceil(roi_w / out_w).long().clamp(min=0)
    rows, row_weights = _axis_taps(y1, roi_h / out_h, grid_h, out_h, height)  # (K, out_h, ny)
    cols, col_weights = _axis_taps(x1, roi_w / out_w, grid_w, out_w, width)  # (K, out_w, nx)
    rows_used, cols_used = _slots_used(row_weights), _slots_used(col_weights)

    def reads(lo: int, hi: int) -> tuple[Tensor, Tensor]:
        """Pixel numbers and weights of the reads of RoIs ``lo:hi``: ``(k * out_h * out_w, ny * nx)``,
        one row per bin (the outer product of its rows and columns)."""
        ny, nx = max(int(rows_used[lo:hi].max()), 1), max(int(cols_used[lo:hi].max()), 1)
        row_start = first_pixel[lo:hi, None, None] + rows[lo:hi, :, :ny] * width[lo:hi, None, None]
        pixel = row_start[:, :, None, :, None] + cols[lo:hi, None, :, None, :nx]  # (k, out_h, out_w, ny, nx)
        weight = row_weights[lo:hi, :, None, :ny, None] * col_weights[lo:hi, None, :, None, :nx]
        return pixel.reshape(-1, ny * nx), weight.reshape(-1, ny * nx)

    # RoIs in chunks whose reads stay under _TAP_BUDGET (a detector's RoIs make one chunk)
    step = max(1, _TAP_BUDGET // (out_h * out_w * row_weights.shape[-1] * col_weights.shape[-1]))
    chunks = [(lo, min(lo + step, num_rois)) for lo in range(0, num_rois, step)]
    single = reads(0, num_rois) if len(chunks) == 1 else None

    def chunk_reads(lo: int, hi: int) -> tuple[Tensor, Tensor]:
        return single if single is not None else reads(lo, hi)

    needs_grad = torch.is_grad_enabled() and any(level.requires_grad for level in levels)
    as_rows = first.permute(0, 2, 3, 1)
    if len(levels) == 1 and as_rows.is_contiguous():  # a channels-last map (or one channel) is its own table
        table, row_of_pixel = as_rows.reshape(-1, channels), None
    else:
        touched = torch.zeros(level_start[-1], dtype=torch.bool, device=device)
        for lo, hi in chunks:
            touched[chunk_reads(lo, hi)[0].flatten()] = True
        table, row_of_pixel = _pixel_table(levels, level_start, touched, needs_grad)

    def table_rows(pixel: Tensor) -> Tensor:
        return pixel if row_of_pixel is None else row_of_pixel[pixel]

    bins = out_h * out_w
    if needs_grad:
        pooled = [F.embedding_bag(table_rows(pixel), table, mode="sum", per_sample_weights=weight)
                  for pixel, weight in (chunk_reads(lo, hi) for lo, hi in chunks)]
        pooled = pooled[0] if len(pooled) == 1 else torch.cat(pooled)
        return pooled.view(num_rois, out_h, out_w, channels).permute(0, 3, 1, 2).contiguous()
    # without autograd, a few RoIs at a time are pooled (channels last, small enough to stay in the
    # cache) and written in place into the NCHW output: no large temporary is allocated
    output = first.new_empty(num_rois, channels, out_h, out_w)
    rois_at_once = max(1, _OUTPUT_PIECE // (bins * channels))
    for lo, hi in chunks:
        pixel, weight = chunk_reads(lo, hi)
        rows_read = table_rows(pixel)
        for start in range(lo, hi, rois_at_once):
            end = min(start + rois_at_once, hi)
            part = slice((start - lo) * bins, (end - lo) * bins)
            pooled = F.embedding_bag(rows_read[part], table, mode="sum", per_sample_weights=weight[part])
            output[start:end].copy_(pooled.view(end - start, out_h, out_w, channels).permute(0, 3, 1, 2))
    return output


def roi_align(
    features: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign of ``features`` ``(B, C, H, W)`` over ``boxes``; returns ``(K, C, *output_size)``."""
    if features.dim() != 4:
        raise ValueError(f"features must have shape (B, C, H, W), got {tuple(features.shape)}")
    rois = boxes_to_rois(boxes)
    level_of_box = torch.zeros(rois.shape[0], dtype=torch.long, device=features.device)
    return _roi_align_levels([features], [spatial_scale], rois, level_of_box, _pair(output_size),
                             sampling_ratio, aligned)


# ---- RoIPool -------------------------------------------------------------------------------------

def _round_half_away(values: Tensor) -> Tensor:
    """C's ``round``: halves go away from zero (``torch.round`` rounds them to even)."""
    return torch.sign(values) * torch.floor(values.abs() + 0.5)


def _roi_pool_bins(features: Tensor, rois: Tensor, out_h: int, out_w: int,
                   spatial_scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Each box's bins as clamped ``[lo, hi)`` row and column ranges ``(K, out_h)`` / ``(K, out_w)``:
    the box rounded onto the grid (C's ``round``), cut into ``floor``/``ceil`` bins as torchvision does."""
    height, width = features.shape[-2:]
    start_x = _round_half_away(rois[:, 1] * spatial_scale).long()
    start_y = _round_half_away(rois[:, 2] * spatial_scale).long()
    end_x = _round_half_away(rois[:, 3] * spatial_scale).long()
    end_y = _round_half_away(rois[:, 4] * spatial_scale).long()

    def bin_edges(start: Tensor, end: Tensor, bins: int, size: int) -> tuple[Tensor, Tensor]:
        bin_size = (end - start + 1).clamp(min=1).to(features.dtype).view(-1, 1) / bins
        index = torch.arange(bins, device=features.device, dtype=features.dtype).view(1, -1)
        lo = torch.floor(index * bin_size).long() + start.view(-1, 1)
        hi = torch.ceil((index + 1) * bin_size).long() + start.view(-1, 1)
        return lo.clamp(0, size), hi.clamp(0, size)

    y_lo, y_hi = bin_edges(start_y, end_y, out_h, height)
    x_lo, x_hi = bin_edges(start_x, end_x, out_w, width)
    return y_lo, y_hi, x_lo, x_hi


def _roi_pool_forward(features: Tensor, rois: Tensor, out_h: int, out_w: int, spatial_scale: float,
                      with_argmax: bool) -> tuple[Tensor, Tensor | None]:
    """Bin maxima ``(K, C, out_h, out_w)`` and, if asked, where each was read ``(K, out_h, out_w, C)``: its
    index in the channels-last table of the map, whose last row (-inf) is read by empty bins (which give 0)."""
    batch, channels, height, width = features.shape
    y_lo, y_hi, x_lo, x_hi = _roi_pool_bins(features, rois, out_h, out_w, spatial_scale)
    # A channels-last table of the map plus one row of -inf that every read outside a bin points to.
    sentinel = batch * height * width
    table = torch.cat([features.permute(0, 2, 3, 1).reshape(sentinel, channels),
                       features.new_full((1, channels), float("-inf"))])
    bin_h, bin_w = (y_hi - y_lo).amax(dim=1), (x_hi - x_lo).amax(dim=1)
    groups = _size_groups(bin_h, bin_w, out_h * out_w * channels)
    pooled_parts, argmax_parts = [], []
    for part in groups:
        kh, kw = max(int(bin_h[part].max()), 1), max(int(bin_w[part].max()), 1)
        rows = y_lo[part].unsqueeze(-1) + torch.arange(kh, device=features.device)  # (k, out_h, kh)
        cols = x_lo[part].unsqueeze(-1) + torch.arange(kw, device=features.device)  # (k, out_w, kw)
        inside = (rows < y_hi[part].unsqueeze(-1))[:, :, None, :, None] & \
            (cols < x_hi[part].unsqueeze(-1))[:, None, :, None, :]  # (k, out_h, out_w, kh, kw)
        base = (rois[part, 0].long() * height * width).view(-1, 1, 1, 1, 1)
        pixel = base + rows.clamp(max=height - 1)[:, :, None, :, None] * width \
            + cols.clamp(max=width - 1)[:, None, :, None, :]
        index = torch.where(inside, pixel, sentinel)
        # (k, out_h, out_w, window, C): each bin's window of kh x kw reads, channels innermost
        values = table.index_select(0, index.reshape(-1)).view(*index.shape[:3], kh * kw, channels)
        pooled = values.amax(dim=3)  # (k, out_h, out_w, C)
        if with_argmax:  # the table entry each maximum was read from (an empty bin's is the -inf row)
            pixel_read = index.view(*index.shape[:3], kh * kw).gather(3, _first_maximum(values, pooled))
            argmax_parts.append(pixel_read * channels + torch.arange(channels, device=features.device))
        pooled_parts.append(pooled.masked_fill(torch.isneginf(pooled), 0.0).permute(0, 3, 1, 2))
    pooled = _in_original_order(pooled_parts, groups)
    return pooled, (_in_original_order(argmax_parts, groups) if with_argmax else None)


def _first_maximum(values: Tensor, maxima: Tensor) -> Tensor:
    """Index along dim 3 of ``values`` of the first entry equal to ``maxima`` (``torch.max``'s index, found
    with one comparison and one ``amax`` over descending weights: several times faster on CPU)."""
    window = values.shape[3]
    dtype = torch.uint8 if window < 2**8 else torch.int16 if window < 2**15 else torch.int32
    weights = torch.arange(window, 0, -1, dtype=dtype, device=values.device).view(1, 1, 1, -1, 1)
    first = ((values == maxima.unsqueeze(3)).to(dtype) * weights).amax(dim=3)
    return window - first.long()


class _RoIPoolFunction(torch.autograd.Function):
    """RoIPool with the backward pass of the paper: each bin's gradient goes to the one input it took its
    maximum from (autograd through the gathered windows would scatter zeros over all of them)."""

    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, out_h: int, out_w: int,  # type: ignore[override]
                spatial_scale: float) -> Tensor:
        pooled, argmax = _roi_pool_forward(features, rois, out_h, out_w, spatial_scale,
                                           with_argmax=ctx.needs_input_grad[0])
        if argmax is not None:
            ctx.save_for_backward(argmax)
        ctx.feature_shape = features.shape
        return pooled

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None, None, None]:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        (argmax,) = ctx.saved_tensors
        batch, channels, height, width = ctx.feature_shape
        # the channels-last table with its -inf row, where empty bins' gradients land and are dropped
        grad_table = grad.new_zeros((batch * height * width + 1) * channels)
        grad_table.index_add_(0, argmax.reshape(-1), grad.permute(0, 2, 3, 1).reshape(-1))
        grad_features = grad_table[:-channels].view(batch, height, width, channels).permute(0, 3, 1, 2)
        return grad_features.contiguous(), None, None, None, None


def roi_pool(
    features: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoIPool (max over quantised bins) of ``features`` ``(B, C, H, W)``; returns ``(K, C, *output_size)``.

    Empty bins (entirely outside the map) give 0 and no gradient; a bin's gradient goes to its maximum.
    """
    rois = boxes_to_rois(boxes).to(features.dtype)
    out_h, out_w = _pair(output_size)
    if rois.shape[0] == 0:
        return features.new_zeros(0, features.shape[1], out_h, out_w)
    return _RoIPoolFunction.apply(features, rois.detach(), out_h, out_w, float(spatial_scale))


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

    def level_scales(self, levels: list[Tensor], image_shapes: list[tuple[int, int]]) -> list[float]:
        """The scale of each level: the power of two closest to its size over the (largest) image's."""
        image_h = max(shape[0] for shape in image_shapes)
        image_w = max(shape[1] for shape in image_shapes)
        scales = []
        for level in levels:
            approx = min(level.shape[-2] / image_h, level.shape[-1] / image_w)
            scales.append(2.0 ** round(float(torch.tensor(approx).log2())))
        return scales

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:
        levels = [features[name] for name in self.featmap_names]
        rois = boxes_to_rois(boxes)
        scales = self.level_scales(levels, image_shapes)
        if len(levels) == 1:
            level_of_box = torch.zeros(rois.shape[0], dtype=torch.long, device=rois.device)
        else:
            lowest = -round(torch.tensor(scales[0]).log2().item())
            highest = -round(torch.tensor(scales[-1]).log2().item())
            side = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
            target = torch.floor(self.canonical_level + torch.log2(side / self.canonical_scale) + 1e-6)
            level_of_box = (target.clamp(lowest, highest) - lowest).long()
        if self.implementation == "pixelseg":
            return _roi_align_levels(levels, scales, rois, level_of_box, self.output_size, self.sampling_ratio,
                                     self.aligned)
        result = levels[0].new_zeros(rois.shape[0], levels[0].shape[1], *self.output_size)
        for index, (level, scale) in enumerate(zip(levels, scales, strict=True)):
            chosen = torch.nonzero(level_of_box == index).squeeze(1)
            result = result.index_copy(0, chosen, self._pool(level, rois[chosen], scale))
        return result


__all__ = ["MultiLevelRoIAlign", "RoIAlign", "RoIPool", "boxes_to_rois", "roi_align", "roi_pool"]
