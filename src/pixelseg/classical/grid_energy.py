"""Multi-label energy minimisation on the 4- or 8-connected pixel grid.

E(x) = sum_p U_p(x_p) + sum_{(p,q)} w_pq V(x_p, x_q), with unaries U (H, W, L), per-edge weights
w_pq >= 0 (e.g. contrast-sensitive) and a label cost V (L, L) (Potts, truncated linear, ...).

Solvers, each started from a labelling (by default the unary minimum):

* :func:`alpha_expansion` and :func:`alpha_beta_swap` — Boykov, Veksler & Zabih, "Fast Approximate
  Energy Minimization via Graph Cuts", PAMI 2001: the one idea is a *large move* — every pixel may
  switch to label alpha (expansion) or the pixels of alpha and beta may swap (swap) in one step, and
  the best such move is an s–t minimum cut. For a metric V the expansion result is within
  2 max V / min V (2x for Potts) of the global optimum.
* :func:`loopy_belief_propagation` — min-sum message passing (Pearl 1988; Felzenszwalb &
  Huttenlocher 2006 for grids), exact on trees, a good approximation on loopy grids.
* :func:`simulated_annealing` — Gibbs sampling (Geman & Geman 1984) or Metropolis–Hastings at a
  decreasing temperature, keeping the best labelling seen.
* :func:`icm` — iterated conditional modes (Besag 1986): each pixel greedily takes its best label
  given its neighbours; the baseline every other solver should beat.
* :func:`brute_force` — the exact optimum by enumeration, for tiny grids (tests).

All solvers update pixels of one colour of a proper grid colouring at once (2 colours for 4-connected,
4 for 8-connected grids): pixels of one colour share no edge, so this equals the sequential sweep.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

OFFSETS = {4: [(0, 1), (1, 0)], 8: [(0, 1), (1, 0), (1, 1), (1, -1)]}


@dataclass
class GridEnergy:
    """An energy on an H x W grid: unaries, edges (first, second pixel, weight) and label costs V."""

    unary: np.ndarray            # (H, W, L)
    first: np.ndarray            # (E,) flat pixel indices
    second: np.ndarray           # (E,)
    weight: np.ndarray           # (E,)
    label_cost: np.ndarray       # (L, L)
    connectivity: int = 4

    @property
    def shape(self) -> tuple[int, int]:
        return self.unary.shape[0], self.unary.shape[1]

    @property
    def num_labels(self) -> int:
        return self.unary.shape[2]

    def __call__(self, labels: np.ndarray) -> float:
        """The energy of an (H, W) labelling."""
        flat = labels.reshape(-1)
        unary = self.unary.reshape(-1, self.num_labels)[np.arange(flat.size), flat].sum()
        pairwise = (self.weight * self.label_cost[flat[self.first], flat[self.second]]).sum()
        return float(unary + pairwise)

    def local_costs(self, labels: np.ndarray) -> np.ndarray:
        """(N, L): the energy terms involving each pixel, for every label it could take."""
        flat = labels.reshape(-1)
        costs = self.unary.reshape(-1, self.num_labels).astype(np.float64).copy()
        np.add.at(costs, self.first, self.weight[:, None] * self.label_cost[:, flat[self.second]].T)
        np.add.at(costs, self.second, self.weight[:, None] * self.label_cost[flat[self.first], :])
        return costs

    def colour_classes(self) -> list[np.ndarray]:
        """Flat pixel indices of each colour of a grid colouring without edges inside a colour."""
        height, width = self.shape
        rows, cols = np.mgrid[0:height, 0:width]
        colour = (rows + cols) % 2 if self.connectivity == 4 else (rows % 2) * 2 + cols % 2
        return [np.flatnonzero(colour.reshape(-1) == c) for c in np.unique(colour)]


def grid_energy(unary: np.ndarray, label_cost: np.ndarray | None = None, smoothness: float = 1.0,
                connectivity: int = 4, image: np.ndarray | None = None, beta: float | None = None
                ) -> GridEnergy:
    """Build a :class:`GridEnergy`. Potts costs by default; ``image`` makes the edge weights
    contrast sensitive, w_pq = smoothness * exp(-beta |I_p - I_q|^2) / dist(p, q) (Boykov & Jolly)."""
    if connectivity not in OFFSETS:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    height, width, labels = unary.shape
    if label_cost is None:
        label_cost = 1.0 - np.eye(labels)
    index = np.arange(height * width).reshape(height, width)
    first, second, weight = [], [], []
    differences = []
    for dy, dx in OFFSETS[connectivity]:
        rows = slice(0, height - dy)
        cols = slice(max(0, -dx), width - max(0, dx))
        a = index[rows, cols]
        b = index[dy:, max(0, dx): width - max(0, -dx)]
        first.append(a.reshape(-1))
        second.append(b.reshape(-1))
        weight.append(np.full(a.size, smoothness / np.hypot(dy, dx)))
        if image is not None:
            pixels = image.reshape(height * width, -1).astype(np.float64)
            differences.append(((pixels[a.reshape(-1)] - pixels[b.reshape(-1)]) ** 2).sum(1))
    weights = np.concatenate(weight)
    if image is not None:
        squared = np.concatenate(differences)
        beta = beta if beta is not None else 1.0 / (2.0 * max(squared.mean(), 1e-12))
        weights = weights * np.exp(-beta * squared)
    return GridEnergy(unary.astype(np.float64), np.concatenate(first), np.concatenate(second), weights,
                      np.asarray(label_cost, dtype=np.float64), connectivity)


def _start(energy: GridEnergy, labels: np.ndarray | None) -> np.ndarray:
    return energy.unary.argmin(2) if labels is None else labels.copy()


def icm(energy: GridEnergy, labels: np.ndarray | None = None, max_sweeps: int = 50) -> np.ndarray:
    """Iterated conditional modes: sweep until no pixel changes (never increases the energy)."""
    current = _start(energy, labels).reshape(-1)
    for _ in range(max_sweeps):
        changed = False
        for pixels in energy.colour_classes():
            costs = energy.local_costs(current)[pixels]
            best = costs.argmin(1)
            rows = np.arange(pixels.size)
            new = np.where(costs[rows, current[pixels]] <= costs[rows, best], current[pixels], best)
            changed |= bool((new != current[pixels]).any())
            current[pixels] = new
        if not changed:
            break
    return current.reshape(energy.shape)


def binary_min_cut(cost0: np.ndarray, cost1: np.ndarray, first: np.ndarray, second: np.ndarray,
                e00: np.ndarray, e01: np.ndarray, e10: np.ndarray, e11: np.ndarray) -> np.ndarray:
    """Minimise sum cost_x(p) + sum E_{x_p x_q} over binary x with an s–t min cut (Kolmogorov &
    Zabih 2004); requires e00 + e11 <= e01 + e10 on every edge. Returns x (True = 1)."""
    import maxflow

    count = cost0.size
    cost0, cost1 = cost0.astype(np.float64).copy(), cost1.astype(np.float64).copy()
    # E(xp, xq) = e00 + (e10 - e00) xp + (e11 - e10) xq + (e01 + e10 - e00 - e11) (1 - xp) xq
    np.add.at(cost1, first, e10 - e00)
    np.add.at(cost1, second, e11 - e10)
    coupling = e01 + e10 - e00 - e11
    if (coupling < -1e-9).any():
        raise ValueError("the move energy is not submodular: the label costs must be a metric")
    graph = maxflow.Graph[float](count, first.size)
    nodes = graph.add_nodes(count)
    lowest = np.minimum(cost0, cost1)
    # A node on the sink side takes label 1 and cuts its source edge (capacity = cost of label 1).
    graph.add_grid_tedges(nodes, cost1 - lowest, cost0 - lowest)
    keep = coupling > 0
    if keep.any():
        graph.add_edges(first[keep], second[keep], np.maximum(coupling[keep], 0), np.zeros(keep.sum()))
    graph.maxflow()
    return graph.get_grid_segments(nodes)


def alpha_expansion(energy: GridEnergy, labels: np.ndarray | None = None, max_cycles: int = 10
                    ) -> np.ndarray:
    """Expansion moves over all labels until a cycle brings no decrease (V must be a metric)."""
    current = _start(energy, labels).reshape(-1)
    unary = energy.unary.reshape(-1, energy.num_labels)
    v, w = energy.label_cost, energy.weight
    best_energy = energy(current)
    for _ in range(max_cycles):
        improved = False
        for alpha in range(energy.num_labels):
            a, b = current[energy.first], current[energy.second]
            move = binary_min_cut(unary[np.arange(current.size), current], unary[:, alpha],
                               energy.first, energy.second,
                               w * v[a, b], w * v[a, alpha], w * v[alpha, b], w * v[alpha, alpha])
            proposal = np.where(move, alpha, current)
            proposal_energy = energy(proposal)
            if proposal_energy < best_energy - 1e-9:
                current, best_energy, improved = proposal, proposal_energy, True
        if not improved:
            break
    return current.reshape(energy.shape)


def alpha_beta_swap(energy: GridEnergy, labels: np.ndarray | None = None, max_cycles: int = 10
                    ) -> np.ndarray:
    """Swap moves over all label pairs until a cycle brings no decrease (V a semi-metric)."""
    current = _start(energy, labels).reshape(-1)
    unary = energy.unary.reshape(-1, energy.num_labels)
    v = energy.label_cost
    best_energy = energy(current)
    for _ in range(max_cycles):
        improved = False
        for alpha, beta in itertools.combinations(range(energy.num_labels), 2):
            members = np.flatnonzero((current == alpha) | (current == beta))
            if members.size == 0:
                continue
            position = np.full(current.size, -1)
            position[members] = np.arange(members.size)
            cost0, cost1 = unary[members, alpha].copy(), unary[members, beta].copy()
            pf, ps = position[energy.first], position[energy.second]
            inside = (pf >= 0) & (ps >= 0)
            # Edges to pixels outside the swap are unary terms of the member end.
            for other_end, member_pos in ((energy.second, pf), (energy.first, ps)):
                boundary = (member_pos >= 0) & ~inside
                other = current[other_end[boundary]]
                weights = energy.weight[boundary]
                np.add.at(cost0, member_pos[boundary], weights * v[alpha, other])
                np.add.at(cost1, member_pos[boundary], weights * v[beta, other])
            w = energy.weight[inside]
            ones = np.ones_like(w)
            move = binary_min_cut(cost0, cost1, pf[inside], ps[inside], w * v[alpha, alpha] * ones,
                               w * v[alpha, beta], w * v[beta, alpha], w * v[beta, beta] * ones)
            proposal = current.copy()
            proposal[members] = np.where(move, beta, alpha)
            proposal_energy = energy(proposal)
            if proposal_energy < best_energy - 1e-9:
                current, best_energy, improved = proposal, proposal_energy, True
        if not improved:
            break
    return current.reshape(energy.shape)


def loopy_belief_propagation(energy: GridEnergy, iterations: int = 50, damping: float = 0.5
                             ) -> np.ndarray:
    """Min-sum loopy BP with parallel, damped message updates; the lowest-energy decoding seen."""
    unary = energy.unary.reshape(-1, energy.num_labels)
    count, labels = unary.shape
    # Directed edges: e -> (source, target) for both directions of every undirected edge.
    source = np.concatenate([energy.first, energy.second])
    target = np.concatenate([energy.second, energy.first])
    weight = np.concatenate([energy.weight, energy.weight])
    edges = energy.first.size
    reverse = np.concatenate([np.arange(edges) + edges, np.arange(edges)])
    cost = np.concatenate([np.broadcast_to(energy.label_cost, (edges, labels, labels)),
                           np.broadcast_to(energy.label_cost.T, (edges, labels, labels))])
    messages = np.zeros((2 * edges, labels))
    best, best_energy = unary.argmin(1), np.inf
    for _ in range(iterations):
        incoming = np.zeros((count, labels))
        np.add.at(incoming, target, messages)
        # h(x_s) = U_s + all messages into s except the one from the target of this edge.
        h = unary[source] + incoming[source] - messages[reverse]
        new = (h[:, :, None] + weight[:, None, None] * cost).min(1)
        new -= new.min(1, keepdims=True)
        messages = damping * messages + (1 - damping) * new
        beliefs = unary.copy()
        np.add.at(beliefs, target, messages)
        decoded = beliefs.argmin(1)
        decoded_energy = energy(decoded)
        if decoded_energy < best_energy:
            best, best_energy = decoded, decoded_energy
    return best.reshape(energy.shape)


def simulated_annealing(energy: GridEnergy, labels: np.ndarray | None = None, sweeps: int = 200,
                        start_temperature: float = 2.0, end_temperature: float = 0.01,
                        sampler: str = "gibbs", seed: int = 0) -> np.ndarray:
    """Gibbs sampling or Metropolis–Hastings at a geometrically decreasing temperature.

    Returns the best labelling seen, quenched at zero temperature (greedy sweeps until stable).
    """
    if sampler not in ("gibbs", "metropolis"):
        raise ValueError(f"sampler must be 'gibbs' or 'metropolis', got {sampler!r}")
    rng = np.random.default_rng(seed)
    current = _start(energy, labels).reshape(-1)
    best, best_energy = current.copy(), energy(current)
    classes = energy.colour_classes()
    for temperature in np.geomspace(start_temperature, end_temperature, sweeps):
        for pixels in classes:
            costs = energy.local_costs(current)[pixels]
            if sampler == "gibbs":
                logits = -(costs - costs.min(1, keepdims=True)) / temperature
                probabilities = np.exp(logits)
                probabilities /= probabilities.sum(1, keepdims=True)
                cumulative = probabilities.cumsum(1)
                draw = rng.random((pixels.size, 1))
                current[pixels] = np.minimum((draw > cumulative).sum(1), energy.num_labels - 1)
            else:
                proposal = rng.integers(0, energy.num_labels, pixels.size)
                rows = np.arange(pixels.size)
                delta = costs[rows, proposal] - costs[rows, current[pixels]]
                accept = rng.random(pixels.size) < np.exp(-np.maximum(delta, 0) / temperature)
                current[pixels] = np.where(accept, proposal, current[pixels])
        current_energy = energy(current)
        if current_energy < best_energy:
            best, best_energy = current.copy(), current_energy
    # The zero-temperature limit: a greedy quench of the best state seen.
    return icm(energy, best.reshape(energy.shape))


def brute_force(energy: GridEnergy) -> np.ndarray:
    """The exact minimum by enumerating all L^N labellings (tiny grids only)."""
    count = energy.shape[0] * energy.shape[1]
    if energy.num_labels ** count > 2_000_000:
        raise ValueError(f"{energy.num_labels}^{count} labellings are too many to enumerate")
    all_labels = np.array(list(itertools.product(range(energy.num_labels), repeat=count)))
    unary = energy.unary.reshape(-1, energy.num_labels)
    totals = unary[np.arange(count)[None, :], all_labels].sum(1)
    totals = totals + (energy.weight[None, :] * energy.label_cost[all_labels[:, energy.first],
                                                                  all_labels[:, energy.second]]).sum(1)
    return all_labels[totals.argmin()].reshape(energy.shape)
