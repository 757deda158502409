"""The permutohedral lattice: fast high-dimensional Gaussian filtering in PyTorch.

Adams, Baek & Davis, "Fast High-Dimensional Filtering Using the Permutohedral Lattice",
Eurographics 2010. The one idea: embed the d-dimensional feature points in the hyperplane
``sum(x) = 0`` of R^(d+1), which is tiled by simplices whose vertices form the permutohedral
lattice; *splat* each point's value onto the d+1 vertices of its simplex with barycentric weights,
*blur* the lattice with a [1/2, 1, 1/2] kernel along each of the d+1 lattice axes, and *slice* the
result back at the points. The cost is linear in the number of points and only polynomial in d.

This version follows the lattice as used by Krähenbühl & Koltun's dense CRF code (the same scale
factors, rounding, tie breaking when sorting the remainders, blur kernel and the normalising
constant ``1 / (1 + 2^-d)``) so that its output agrees with ``pydensecrf``. The lattice is built once
(without gradients) from the features; :meth:`PermutohedralLattice.filter` is made of gathers and
index-adds only, so it runs on any device and is differentiable with respect to the filtered values.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor


class PermutohedralLattice:
    """A lattice built from ``features`` (N, d); ``filter(values)`` Gaussian-filters (N, C) values.

    The Gaussian has unit standard deviation in feature space: scale the features by the inverse of
    the wanted bandwidths before building the lattice (``x / sigma_xy`` and so on).
    """

    def __init__(self, features: Tensor) -> None:
        if features.dim() != 2:
            raise ValueError(f"features must be (N, d), got shape {tuple(features.shape)}")
        with torch.no_grad():
            self._build(features.detach().to(torch.float32))

    def _build(self, features: Tensor) -> None:
        device = features.device
        num_points, d = features.shape
        self.num_points, self.dim = num_points, d

        # Elevate onto the hyperplane sum = 0 of R^(d+1), scaled so that the blur matches a unit
        # Gaussian (p. 5-6 of Adams et al.); float32 arithmetic in the reference's order.
        inv_std_dev = float(torch.tensor(math.sqrt(2.0 / 3.0) * (d + 1), dtype=torch.float32))
        scale = [float(torch.tensor(inv_std_dev / math.sqrt((i + 2) * (i + 1)), dtype=torch.float32))
                 for i in range(d)]
        elevated = torch.empty(num_points, d + 1, device=device)
        running_sum = torch.zeros(num_points, device=device)
        for j in range(d, 0, -1):
            scaled = features[:, j - 1] * scale[j - 1]
            elevated[:, j] = running_sum - j * scaled
            running_sum = running_sum + scaled
        elevated[:, 0] = running_sum

        # The closest lattice point of colour 0: round each coordinate to a multiple of d+1.
        down_factor = float(torch.tensor(1.0 / (d + 1), dtype=torch.float32))
        scaled_down = elevated * down_factor
        up = torch.ceil(scaled_down) * (d + 1)
        down = torch.floor(scaled_down) * (d + 1)
        nearest = torch.where(up - elevated < elevated - down, up, down)   # exact integers in float32
        coordinate_sum = (nearest.sum(1, keepdim=True) * down_factor).round()

        # Rank of each remainder in decreasing order, ties to the lower index (as the reference), by
        # comparing the d+1 columns pairwise: cheaper than sorting many short rows.
        columns = (elevated - nearest).T.contiguous()                   # (d+1, N) remainders
        rank_t = torch.zeros(d + 1, num_points, device=device)
        for i in range(d + 1):
            for j in range(i + 1, d + 1):
                i_first = columns[i] >= columns[j]
                rank_t[j] += i_first
                rank_t[i] += ~i_first
        rank = rank_t.T + coordinate_sum
        # Ranks outside 0..d wrap around, moving the nearest point by d+1 along that axis.
        shift = ((rank < 0).to(torch.float32) - (rank > d).to(torch.float32)) * (d + 1)
        rank = (rank + shift).long()
        nearest = nearest + shift

        # Barycentric coordinates (p. 10 of Adams et al.).
        contribution = (elevated - nearest) * down_factor
        nearest = nearest.round().long()
        barycentric = torch.zeros(num_points, d + 2, device=device)
        barycentric.scatter_add_(1, d - rank, contribution)
        barycentric.scatter_add_(1, d - rank + 1, -contribution)
        barycentric[:, 0] += 1.0 + barycentric[:, d + 1]
        self.weights = barycentric[:, : d + 1].contiguous()               # (N, d+1)

        # The d+1 vertices of each point's simplex: vertex r has key_i = nearest_i + r - (d+1)[rank_i > d-r]
        # (only the first d coordinates: they sum to 0). Keys are handled as mixed-radix int64 codes,
        # so a vertex's code is the code of ``nearest`` plus a per-vertex shift, and a neighbour's code
        # is the vertex's code plus a constant per lattice axis.
        nearest_keys = nearest[:, :d]
        low = nearest_keys.min(0).values - 2 * (d + 1)
        span = nearest_keys.max(0).values + 2 * (d + 1) - low + 1
        if math.prod(int(extent) for extent in span) >= 2**62:
            raise ValueError("the features span too many lattice cells; use larger kernel bandwidths")
        stride = torch.ones(d, dtype=torch.long, device=device)
        for i in range(d - 2, -1, -1):
            stride[i] = stride[i + 1] * span[i + 1]
        base = ((nearest_keys - low) * stride).sum(1)
        total = stride.sum()

        # Points with the same (nearest, rank) share their simplex: group them (a lexicographic
        # sort of the N points) and find the vertices of each distinct simplex only once.
        permutation_code = (rank * (d + 1) ** torch.arange(d + 1, device=device)).sum(1)
        by_permutation = torch.sort(permutation_code, stable=True).indices
        order = by_permutation[torch.sort(base[by_permutation], stable=True).indices]
        sorted_base, sorted_permutation = base[order], permutation_code[order]
        starts_group = torch.ones(num_points, dtype=torch.bool, device=device)
        starts_group[1:] = (sorted_base[1:] != sorted_base[:-1]) | (sorted_permutation[1:] != sorted_permutation[:-1])
        group_start = torch.nonzero(starts_group).squeeze(1)               # (S,) into ``order``
        group_size = torch.diff(group_start, append=group_start.new_tensor([num_points]))
        simplex_of_point = torch.empty_like(order).scatter_(0, order, starts_group.long().cumsum(0) - 1)

        # Codes of the d+1 vertices of each simplex, from one point of it.
        first = order[group_start]
        simplices = first.shape[0]
        stride_of_rank = torch.zeros(simplices, d + 1, dtype=torch.long, device=device)
        stride_of_rank.scatter_(1, rank[first], torch.cat([stride, stride.new_zeros(1)]).expand(simplices, -1))
        suffix = stride_of_rank.flip(1).cumsum(1).flip(1)                # sum over ranks >= k
        wrapped = torch.cat([suffix.new_zeros(simplices, 1), suffix[:, 1:].flip(1)], dim=1)
        codes = base[first, None] + remainders_times(total, d, device) - (d + 1) * wrapped
        sorted_codes, slots_by_vertex = torch.sort(codes.reshape(-1))
        vertex_codes, vertex_of_sorted = torch.unique_consecutive(sorted_codes, return_inverse=True)
        vertex_of_slot = torch.empty_like(vertex_of_sorted).scatter_(0, slots_by_vertex, vertex_of_sorted)
        self.num_vertices = vertex_codes.shape[0]
        self.offsets = vertex_of_slot.reshape(simplices, d + 1)[simplex_of_point] + 1  # 0: the empty vertex

        # The (point, vertex) entries grouped by vertex, for splatting: slot by slot in vertex order,
        # the points of the slot's simplex (consecutive in ``order``).
        slot_size = group_size[slots_by_vertex // (d + 1)]
        slot_first = group_start[slots_by_vertex // (d + 1)]
        shift = torch.repeat_interleave(slot_first - (slot_size.cumsum(0) - slot_size), slot_size)
        position = shift + torch.arange(shift.shape[0], device=device)
        axis = torch.repeat_interleave(slots_by_vertex % (d + 1), slot_size)
        self._entries_by_vertex = order[position] * (d + 1) + axis
        self._entries_per_vertex = torch.zeros(self.num_vertices, dtype=torch.long, device=device).index_add_(
            0, vertex_of_slot, group_size.repeat_interleave(d + 1))

        # Neighbours along each of the d+1 lattice axes: all coordinates -1 and axis j +d (and mirrored).
        axis_shift = torch.cat([(d + 1) * stride, stride.new_zeros(1)])
        deltas = torch.stack([-total + axis_shift, total - axis_shift], dim=1)  # (d+1, 2)
        queries = vertex_codes[None, None, :] + deltas[:, :, None]
        position = torch.searchsorted(vertex_codes, queries).clamp(max=self.num_vertices - 1)
        found = vertex_codes[position] == queries
        neighbours = torch.where(found, position + 1, torch.zeros_like(position))
        empty = torch.zeros(d + 1, 2, 1, dtype=torch.long, device=device)
        self.neighbours = torch.cat([empty, neighbours], dim=2)           # (d+1, 2, M+1)
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))
        self._operators_key: tuple[torch.dtype, torch.device] | None = None
        self._operators: tuple[Tensor, Tensor] = ()  # type: ignore[assignment]

    def to(self, device: torch.device | str) -> PermutohedralLattice:
        for name in ("weights", "offsets", "neighbours", "_entries_by_vertex", "_entries_per_vertex"):
            setattr(self, name, getattr(self, name).to(device))
        self._operators_key = None
        return self

    def filter(self, values: Tensor) -> Tensor:
        """Gaussian-filter ``values`` (N, C) over the lattice: splat, blur, slice. Differentiable."""
        if values.dim() != 2 or values.shape[0] != self.num_points:
            raise ValueError(f"values must be ({self.num_points}, C), got shape {tuple(values.shape)}")
        if torch.is_grad_enabled() and values.requires_grad:
            return _LatticeFilter.apply(values, self)
        return self._apply(values)

    def _apply(self, values: Tensor, reverse: bool = False) -> Tensor:
        """The filter, or with ``reverse`` its transpose: the splatting matrix is the transpose of the
        slicing one and each axis blur is symmetric, so the transpose blurs the axes in reverse order."""
        splat, slice_ = self._sparse_operators(values.dtype, values.device)
        lattice = splat @ values                                          # (M+1, C)
        for axis in reversed(range(self.dim + 1)) if reverse else range(self.dim + 1):
            lattice = lattice + 0.5 * (lattice.index_select(0, self.neighbours[axis, 0])
                                       + lattice.index_select(0, self.neighbours[axis, 1]))
        return (slice_ @ lattice) * self.alpha

    def _sparse_operators(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """Splatting (M+1, N) and slicing (N, M+1) as sparse CSR matrices of barycentric weights."""
        key = (dtype, device)
        if self._operators_key != key:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
                width = self.dim + 1
                vertices = self.num_vertices + 1
                offsets = self.offsets.to(device).reshape(-1)
                weights = self.weights.to(device, dtype).reshape(-1)
                row_starts = torch.arange(0, self.num_points * width + 1, width, device=device)
                slice_ = torch.sparse_csr_tensor(row_starts, offsets, weights, (self.num_points, vertices))
                by_vertex = self._entries_by_vertex.to(device)               # entries grouped by vertex
                counts = torch.cat([self._entries_per_vertex.new_zeros(2), self._entries_per_vertex])
                vertex_starts = counts.to(device).cumsum(0)
                splat = torch.sparse_csr_tensor(vertex_starts, by_vertex // width, weights[by_vertex],
                                                (vertices, self.num_points))
            self._operators = (splat, slice_)
            self._operators_key = key
        return self._operators


class _LatticeFilter(torch.autograd.Function):
    """The lattice filter as a linear map whose backward pass is its transpose (no sparse transposes)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, values: Tensor, lattice: PermutohedralLattice
                ) -> Tensor:
        ctx.lattice = lattice  # type: ignore[attr-defined]
        return lattice._apply(values)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        return ctx.lattice._apply(grad.contiguous(), reverse=True), None  # type: ignore[attr-defined]


def remainders_times(total: Tensor, d: int, device: torch.device) -> Tensor:
    """``r * total`` for the remainders r = 0..d, as a (1, d+1) int64 row."""
    return (torch.arange(d + 1, device=device) * total)[None, :]
