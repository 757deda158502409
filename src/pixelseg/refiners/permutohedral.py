"""The permutohedral lattice: fast high-dimensional Gaussian filtering in PyTorch.

Adams, Baek & Davis, "Fast High-Dimensional Filtering Using the Permutohedral Lattice",
Eurographics 2010. The one idea: embed the d-dimensional feature points in the hyperplane
``sum(x) = 0`` of R^(d+1), which is tiled by simplices whose vertices form the permutohedral
lattice; *splat* each point's value onto the d+1 vertices of its simplex with barycentric weights,
*blur* the lattice with a [1/2, 1, 1/2] kernel along each of the d+1 lattice axes, and *slice* the
result back at the points. The cost is linear in the number of points and only polynomial in d.

This version follows the lattice as used by Krähenbühl & Koltun's dense CRF code (the same scale
factors, rounding, tie breaking when sorting the remainders, blur kernel and the normalising
constant ``1 / (1 + 2^-d)``) so that its output agrees with ``pydensecrf``. Instead of a hash table,
the lattice is built with sorts: points sharing a simplex are grouped (one sort of N integer codes),
and the vertices of the distinct simplices are deduplicated (one sort of (d+1) x simplices codes).
Filtering is three sparse (CSR) products and the blur's gathers:

- splat, in two steps: each simplex corner ("slot") sums the weighted values of the points of its
  simplex, ``slots = Z @ values``, then each vertex sums its slots, ``lattice = P @ slots``. Z is
  known without sorting the N(d+1) (point, vertex) pairs by vertex: with the slots numbered corner
  by corner, the rows of each corner list all the points, grouped by simplex;
- blur: ``lattice += (lattice[left] + lattice[right]) / 2`` along each axis, from gathered copies;
- slice: ``out = S @ lattice`` with the barycentric weights of each point (S is (P Z)^T).

The lattice is built once (without gradients) from the features; :meth:`PermutohedralLattice.filter`
runs on any device and is differentiable in the filtered values (its backward pass is the transposed
filter: the same products with the axes blurred in reverse order).
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
        width = d + 1
        self.num_points, self.dim = num_points, d

        # Elevate onto the hyperplane sum = 0 of R^(d+1), scaled so that the blur matches a unit
        # Gaussian (p. 5-6 of Adams et al.); float32 arithmetic in the reference's order. Points are
        # columns: (d+1, N) arrays, so that sums over a point's coordinates are vector additions.
        inv_std_dev = float(torch.tensor(math.sqrt(2.0 / 3.0) * width, dtype=torch.float32))
        scale = [float(torch.tensor(inv_std_dev / math.sqrt((i + 2) * (i + 1)), dtype=torch.float32))
                 for i in range(d)]
        elevated = torch.empty(width, num_points, device=device)
        running_sum = torch.zeros(num_points, device=device)
        for j in range(d, 0, -1):
            scaled = features[:, j - 1] * scale[j - 1]
            torch.sub(running_sum, scaled * j, out=elevated[j])
            running_sum += scaled
        elevated[0] = running_sum

        # The closest lattice point of colour 0: each coordinate rounded to a multiple of d+1 (the
        # reference's ``up - x < x - down``, ties down).
        down_factor = float(torch.tensor(1.0 / width, dtype=torch.float32))
        nearest = torch.mul(elevated, down_factor).floor_().mul_(width)
        residual = elevated - nearest
        shift = torch.add(nearest, width).sub_(elevated)
        shift.copy_(shift < residual).mul_(width)
        nearest += shift
        residual -= shift                                                # elevated - nearest, exactly
        coordinate_sum = (nearest.sum(0) * down_factor).round_().to(torch.int8)

        # Rank of each residual in decreasing order, ties to the lower index (as the reference), by
        # comparing the d+1 rows pairwise (int8: cheaper than sorting N short columns).
        rank = torch.arange(width, dtype=torch.int8, device=device)[:, None].repeat(1, num_points)
        larger = torch.empty(num_points, dtype=torch.bool, device=device)
        larger_count = larger.view(torch.int8)
        for i in range(d):
            for j in range(i + 1, width):
                torch.lt(residual[i], residual[j], out=larger)
                rank[i] += larger_count
                rank[j] -= larger_count
        rank += coordinate_sum
        # Ranks outside 0..d wrap around, moving the nearest point by d+1 along that axis.
        wrapped = rank.add(torch.lt(rank, 0).view(torch.int8), alpha=width).sub_(
            torch.gt(rank, d).view(torch.int8), alpha=width)
        nearest += wrapped - rank
        rank = wrapped

        # Barycentric coordinates (p. 10 of Adams et al.): with y_k the k-th smallest of the
        # contributions (the one of rank d - k), vertex r has weight y_r - y_(r-1), and 1 + y_0 - y_d for
        # r = 0. The contributions are sorted by a network of min/max steps (odd-even transposition).
        by_rank = list(torch.sub(elevated, nearest, out=residual).mul_(down_factor).unbind(0))
        for step in range(width):
            for k in range(step % 2, d, 2):
                by_rank[k], by_rank[k + 1] = torch.minimum(by_rank[k], by_rank[k + 1]), torch.maximum(
                    by_rank[k], by_rank[k + 1])
        weights = torch.empty(num_points, width, device=device)          # (N, d+1)
        for r in range(1, width):
            torch.sub(by_rank[r], by_rank[r - 1], out=weights[:, r])
        torch.add(by_rank[0], 1.0 - by_rank[d], out=weights[:, 0])

        # Integer codes of lattice keys (the first d coordinates: they sum to 0): mixed radix with
        # a margin, so that a vertex's code is the code of ``nearest`` plus a per-vertex shift and a
        # neighbour's code is the vertex's code plus a constant per lattice axis.
        low = nearest[:d].amin(1).to(torch.long) - 2 * width
        span = nearest[:d].amax(1).to(torch.long) + 2 * width - low + 1
        spans = [int(extent) for extent in span]
        if math.prod(spans) >= 2**62:
            raise ValueError("the features span too many lattice cells; use larger kernel bandwidths")
        stride = [math.prod(spans[i + 1:]) for i in range(d)]
        total = sum(stride)                                              # code of (1, ..., 1)
        base = torch.full((num_points,), -sum(s * int(m) for s, m in zip(stride, low, strict=True)),
                          dtype=torch.long, device=device)
        for i in range(d):
            base += nearest[i].to(torch.long) * stride[i]

        # Points with the same (nearest, rank) share their simplex: group them with one sort and
        # find the vertices of each distinct simplex once.
        permutation = torch.zeros(num_points, dtype=torch.long, device=device)
        for i in range(width):
            permutation += rank[i].to(torch.long) * width ** i
        starts_group = torch.ones(num_points, dtype=torch.bool, device=device)
        narrow = math.prod(spans) * width ** width < 2**31  # int32 codes sort faster
        if math.prod(spans) * width ** width < 2**62:  # one code for (nearest, rank)
            simplex_code = permutation.add_(base, alpha=width ** width)
            sorted_codes, order = torch.sort(simplex_code.to(torch.int32) if narrow else simplex_code)
            torch.ne(sorted_codes[1:], sorted_codes[:-1], out=starts_group[1:])
        else:  # many dimensions: sort by rank, then (stably) by nearest
            by_permutation = torch.sort(permutation, stable=True).indices
            order = by_permutation[torch.sort(base[by_permutation], stable=True).indices]
            sorted_base, sorted_permutation = base[order], permutation[order]
            starts_group[1:] = (sorted_base[1:] != sorted_base[:-1]) | (sorted_permutation[1:] != sorted_permutation[:-1])
        group_of_position = starts_group.cumsum(0) - 1
        group_start = torch.nonzero(starts_group).squeeze(1)              # (S,) into ``order``
        simplices = group_start.shape[0]
        group_size = torch.diff(group_start, append=group_start.new_tensor([num_points]))
        simplex_of_point = torch.empty_like(order).scatter_(0, order, group_of_position)
        position_of_point = torch.empty_like(order).scatter_(0, order, torch.arange(num_points, device=device))

        # Vertex r of a simplex: key_i = nearest_i + r - (d+1) [rank_i > d - r]. Slot s*(d+1) + r.
        first = order[group_start]
        first_rank = rank[:d].index_select(1, first)                      # (d, S)
        stride_column = torch.tensor(stride, device=device)[:, None]
        codes = torch.empty(simplices, width, dtype=torch.long, device=device)
        first_base = base[first]
        for r in range(width):
            codes[:, r] = first_base + (r * total) - width * ((first_rank > d - r) * stride_column).sum(0)
        sorted_vertex_codes, slots_by_vertex = torch.sort(codes.reshape(-1).to(torch.int32) if narrow
                                                          else codes.reshape(-1))
        vertex_codes, vertex_of_sorted, slots_per_vertex = torch.unique_consecutive(
            sorted_vertex_codes, return_inverse=True, return_counts=True)
        self.num_vertices = vertex_codes.shape[0]
        vertex_codes = vertex_codes.to(torch.long)
        index = torch.int32                                                # sparse indices
        vertex_of_slot = torch.empty(simplices * width, dtype=index, device=device).scatter_(
            0, slots_by_vertex, (vertex_of_sorted + 1).to(index))

        # Z (slots x N): slot s*(d+1) + r lists the points of simplex s (``order``'s run for s) with
        # their weight for vertex r; the d+1 rows of a simplex are adjacent, so that its points' values
        # are read while in cache.
        first_entry = position_of_point.add_(group_start[simplex_of_point], alpha=d)
        size_at = group_size[simplex_of_point]
        entry = torch.empty(num_points, width, dtype=torch.long, device=device)  # (point, r)
        for r in range(width):
            torch.add(first_entry, size_at, alpha=r, out=entry[:, r])
        entry = entry.reshape(-1)
        self._splat_rows = torch.cat([(width * group_start[:, None] + torch.arange(width, device=device)
                                       * group_size[:, None]).reshape(-1),
                                      group_start.new_tensor([width * num_points])]).to(index)
        self._splat_columns = torch.empty(width * num_points, dtype=index, device=device).scatter_(
            0, entry, torch.arange(num_points, dtype=index, device=device)[:, None].expand(-1, width).reshape(-1))
        self._splat_values = torch.empty(width * num_points, device=device).scatter_(0, entry, weights.reshape(-1))
        # P ((M+1) x slots): each vertex sums its slots (row 0 of the lattice is an always-empty vertex).
        self._gather_rows = torch.cat([slots_per_vertex.new_zeros(2), slots_per_vertex.cumsum(0)]).to(index)
        self._gather_columns = slots_by_vertex.to(index)
        # S (N x (M+1)): a point reads the d+1 vertices of its simplex.
        self._slice_rows = torch.arange(0, num_points * width + 1, width, device=device, dtype=index)
        self._slice_columns = vertex_of_slot.view(simplices, width).index_select(0, simplex_of_point).reshape(-1)
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))
        self._slice_values = weights.mul_(self.alpha).reshape(-1)

        # Neighbours along each of the d+1 lattice axes: all coordinates -1 and axis j +d (and mirrored).
        axis_shift = torch.tensor([width * s for s in stride] + [0], device=device)
        deltas = torch.stack([axis_shift - total, total - axis_shift], dim=1)  # (d+1, 2)
        queries = vertex_codes[None, None, :] + deltas[:, :, None]           # all in [0, prod(spans))
        if math.prod(spans) <= min(64 * self.num_vertices, 2**23):  # a small key space: a lookup table
            table = torch.zeros(math.prod(spans), dtype=torch.int32, device=device)
            table[vertex_codes] = torch.arange(1, self.num_vertices + 1, dtype=torch.int32, device=device)
            neighbours = table[queries].to(torch.long)
        else:
            position = torch.searchsorted(vertex_codes, queries).clamp_(max=self.num_vertices - 1)
            found = vertex_codes[position] == queries
            neighbours = torch.where(found, position + 1, torch.zeros_like(position))
        empty = torch.zeros(width, 2, 1, dtype=torch.long, device=device)
        self.neighbours = torch.cat([empty, neighbours], dim=2)           # (d+1, 2, M+1)
        self._operators: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor, Tensor]] = {}

    def rescale(self, point_scale: Tensor) -> None:
        """Fold a per-point factor s (N,) into both ends: the filter becomes ``diag(s) F diag(s)``."""
        scale = point_scale.detach().to(self._splat_values)
        self._splat_values.mul_(scale.index_select(0, self._splat_columns))
        self._slice_values.view(-1, self.dim + 1).mul_(scale[:, None])
        self._operators = {}

    def to(self, device: torch.device | str) -> PermutohedralLattice:
        for name in ("neighbours", "_splat_rows", "_splat_columns", "_splat_values", "_gather_rows",
                     "_gather_columns", "_slice_rows", "_slice_columns", "_slice_values"):
            setattr(self, name, getattr(self, name).to(device))
        self._operators = {}
        return self

    def filter(self, values: Tensor) -> Tensor:
        """Gaussian-filter ``values`` (N, C) over the lattice: splat, blur, slice. Differentiable."""
        self._check(values)
        if torch.is_grad_enabled() and values.requires_grad:
            return _LatticeFilter.apply(values, self)
        return self.filter_into(values)

    def filter_into(self, values: Tensor, out: Tensor | None = None, weight: float = 1.0,
                    accumulate: bool = False, reverse: bool = False,
                    workspace: dict[str, Tensor] | None = None) -> Tensor:
        """``out (+)= weight * filter(values)`` without gradients, or with ``reverse`` the transposed
        filter (the splatting matrix is the transpose of the slicing one and each axis blur is
        symmetric, so the transpose blurs the axes in reverse order). A ``workspace`` dict keeps the
        large per-slot buffer between calls (filling fresh memory costs as much as the product)."""
        splat, gather, slice_ = self._sparse_operators(values.dtype, values.device)
        with torch.no_grad():
            size = splat.shape[0] * values.shape[1]
            buffer = None if workspace is None else workspace.get("slots")
            if buffer is None or buffer.numel() < size or buffer.dtype != values.dtype:
                buffer = values.new_empty(size)
                if workspace is not None:
                    workspace["slots"] = buffer
            slots = buffer[:size].view(splat.shape[0], values.shape[1])
            lattice = gather @ torch.addmm(slots, splat, values, beta=0.0, out=slots)   # (M+1, C)
            rows, channels = lattice.shape
            gathered = lattice.new_empty(2 * rows, channels)
            halves = gathered.view(2, rows, channels)
            axes = range(self.dim + 1)
            for axis in reversed(axes) if reverse else axes:
                torch.index_select(lattice, 0, self.neighbours[axis].reshape(-1), out=gathered)
                lattice.add_(halves[0].add_(halves[1]), alpha=0.5)
            if out is None:
                return torch.mm(slice_, lattice).mul_(weight) if weight != 1.0 else slice_ @ lattice
            return torch.addmm(out, slice_, lattice, beta=1.0 if accumulate else 0.0, alpha=weight, out=out)

    def _check(self, values: Tensor) -> None:
        if values.dim() != 2 or values.shape[0] != self.num_points:
            raise ValueError(f"values must be ({self.num_points}, C), got shape {tuple(values.shape)}")

    def _sparse_operators(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """Z (slots x N), P ((M+1) x slots) and S (N x (M+1)) as sparse CSR matrices."""
        key = (dtype, device)
        if key not in self._operators:
            slots = self._splat_rows.numel() - 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
                splat = torch.sparse_csr_tensor(
                    self._splat_rows.to(device), self._splat_columns.to(device),
                    self._splat_values.to(device, dtype), (slots, self.num_points))
                gather = torch.sparse_csr_tensor(
                    self._gather_rows.to(device), self._gather_columns.to(device),
                    torch.ones(self._gather_columns.numel(), dtype=dtype, device=device),
                    (self.num_vertices + 1, slots))
                slice_ = torch.sparse_csr_tensor(
                    self._slice_rows.to(device), self._slice_columns.to(device),
                    self._slice_values.to(device, dtype), (self.num_points, self.num_vertices + 1))
            self._operators[key] = (splat, gather, slice_)
        return self._operators[key]


class _LatticeFilter(torch.autograd.Function):
    """The lattice filter as a linear map whose backward pass is its transpose (no sparse transposes)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, values: Tensor, lattice: PermutohedralLattice
                ) -> Tensor:
        ctx.lattice = lattice  # type: ignore[attr-defined]
        return lattice.filter_into(values)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        return ctx.lattice.filter_into(grad.contiguous(), reverse=True), None  # type: ignore[attr-defined]
