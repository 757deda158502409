"""Segmentation by k-means in XYRGB space, region merging over the region adjacency graph, and SLIC.

The one idea: describe each pixel by its position and colour, (w x, w y, r, g, b) with a spatial
weight w, and cluster these 5-D points with k-means (Lloyd 1982; k-means++ seeding, Arthur &
Vassilvitskii 2007): clusters are groups of similar colour that are also close in the image. Clusters
are then split into connected regions — so K clusters give more than K regions, often many more — and
adjacent regions of similar mean colour are merged greedily over the region adjacency graph, closest
pair first, until no adjacent pair is closer than a threshold or until a target number of regions
remains (the usual recipe: K = 50…400, then merge).

SLIC (Achanta et al., "SLIC Superpixels Compared to State-of-the-Art Superpixel Methods", PAMI 2012)
is the localised variant: each centre only competes for the pixels of a 2S x 2S window around it;
:func:`slic_segments` calls scikit-image's implementation.
"""

from __future__ import annotations

import heapq

import numpy as np
import torch

from ..errors import PixelsegError


def xyrgb_features(image: np.ndarray, spatial_weight: float = 1.0) -> np.ndarray:
    """(H*W, 2+C) features: position scaled to the colour range times ``spatial_weight``, then colour."""
    height, width = image.shape[:2]
    pixels = image.reshape(height * width, -1).astype(np.float64)
    rows, cols = np.mgrid[0:height, 0:width]
    scale = spatial_weight * 255.0 / max(height, width)
    return np.concatenate([cols.reshape(-1, 1) * scale, rows.reshape(-1, 1) * scale, pixels], axis=1)


def kmeans(points: np.ndarray, k: int, iterations: int = 50, seed: int = 0, tolerance: float = 1e-4
           ) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd's k-means with k-means++ seeding; returns (labels, centres, inertia)."""
    if k < 1:
        raise PixelsegError(f"K must be at least 1, got {k}")
    data = torch.as_tensor(points, dtype=torch.float64)
    if k > data.shape[0]:
        raise PixelsegError(f"K = {k} is more than the {data.shape[0]} points to cluster")
    generator = torch.Generator().manual_seed(seed)
    centres = data[torch.randint(data.shape[0], (1,), generator=generator)]
    nearest = ((data - centres[0]) ** 2).sum(1)
    for _ in range(1, k):  # k-means++: sample the next centre with probability ~ squared distance
        chosen = torch.multinomial(nearest / nearest.sum(), 1, generator=generator) \
            if nearest.sum() > 0 else torch.randint(data.shape[0], (1,), generator=generator)
        centres = torch.cat([centres, data[chosen]])
        nearest = torch.minimum(nearest, ((data - data[chosen]) ** 2).sum(1))
    previous = float("inf")
    for _ in range(iterations):
        distances = torch.cdist(data, centres) ** 2
        inertia_now, labels = distances.min(1)
        sums = torch.zeros_like(centres).index_add_(0, labels, data)
        counts = torch.bincount(labels, minlength=k).to(data.dtype)[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
        inertia = float(inertia_now.sum())
        if previous - inertia <= tolerance * max(previous, 1e-12):
            break
        previous = inertia
    distances = torch.cdist(data, centres) ** 2
    inertia_now, labels = distances.min(1)
    return labels.numpy(), centres.numpy(), float(inertia_now.sum())


def connected_regions(labels: np.ndarray) -> np.ndarray:
    """Split a label map into 4-connected regions numbered 0..R-1."""
    from skimage.measure import label

    return label(labels + 1, connectivity=1, background=0) - 1


def merge_regions(image: np.ndarray, regions: np.ndarray, threshold: float = float("inf"), min_size: int = 0,
                  target: int | None = None) -> np.ndarray:
    """Greedy merging over the region adjacency graph: join the adjacent pair of closest mean colour
    while that distance is below ``threshold``; regions of fewer than ``min_size`` pixels join their
    closest neighbour first, whatever the distance. With ``target``, merging ignores the threshold and
    stops when ``target`` regions remain (or none are adjacent). Returns regions renumbered 0..R'-1."""
    if target is not None and target < 1:
        raise PixelsegError(f"the target number of regions must be at least 1, got {target}")
    count = int(regions.max()) + 1
    pixels = image.reshape(-1, image.shape[-1] if image.ndim == 3 else 1).astype(np.float64)
    flat = regions.reshape(-1)
    sums = np.zeros((count, pixels.shape[1]))
    np.add.at(sums, flat, pixels)
    sizes = np.bincount(flat, minlength=count).astype(np.float64)
    pairs = np.concatenate([np.stack([regions[:, :-1].reshape(-1), regions[:, 1:].reshape(-1)], 1),
                            np.stack([regions[:-1].reshape(-1), regions[1:].reshape(-1)], 1)])
    pairs = np.unique(np.sort(pairs[pairs[:, 0] != pairs[:, 1]], axis=1), axis=0)
    neighbours: list[set[int]] = [set() for _ in range(count)]
    for a, b in pairs:
        neighbours[a].add(int(b))
        neighbours[b].add(int(a))
    parent = list(range(count))
    version = [0] * count
    remaining = int((sizes > 0).sum())

    def priority(a: int, b: int) -> tuple[bool, float]:
        """Pairs with a region under ``min_size`` first, then by the distance of their mean colours."""
        gap = float(np.linalg.norm(sums[a] / sizes[a] - sums[b] / sizes[b]))
        return min(sizes[a], sizes[b]) >= min_size, gap

    heap = [(*priority(int(a), int(b)), int(a), int(b), 0, 0) for a, b in pairs]
    heapq.heapify(heap)
    while heap and (target is None or remaining > target):
        large, gap, a, b, version_a, version_b = heapq.heappop(heap)
        if parent[a] != a or parent[b] != b or version[a] != version_a or version[b] != version_b:
            continue  # stale entry: one side was merged or changed since
        if target is None and large and gap >= threshold:
            break
        parent[b] = a
        remaining -= 1
        sums[a] += sums[b]
        sizes[a] += sizes[b]
        version[a] += 1
        neighbours[a] = (neighbours[a] | neighbours[b]) - {a, b}
        for other in neighbours[a]:
            neighbours[other].discard(b)
            neighbours[other].add(a)
            heapq.heappush(heap, (*priority(a, other), a, other, version[a], version[other]))
    root = np.arange(count)
    for region in range(count):
        top = region
        while parent[top] != top:
            top = parent[top]
        root[region] = top
    _, renumbered = np.unique(root[flat], return_inverse=True)
    return renumbered.reshape(regions.shape)


def kmeans_segments(image: np.ndarray, k: int, spatial_weight: float = 1.0, merge_threshold: float = 0.0,
                    min_size: int = 0, seed: int = 0, max_points: int = 50_000, regions: int | None = None
                    ) -> np.ndarray:
    """XYRGB k-means (fitted on at most ``max_points`` pixels), then every cluster split into its
    connected regions — so K clusters usually give many more than K regions — then merging: of adjacent
    regions whose mean colours are closer than ``merge_threshold``, of regions smaller than ``min_size``
    pixels, and, with ``regions``, of the most similar adjacent regions until ``regions`` remain
    (over-segment with a large K, e.g. 50–400, then merge down). None of them set: no merging."""
    features = xyrgb_features(image, spatial_weight)
    rng = np.random.default_rng(seed)
    sample = features if features.shape[0] <= max_points else \
        features[rng.choice(features.shape[0], max_points, replace=False)]
    _, centres, _ = kmeans(sample, k, seed=seed)
    labels = (torch.cdist(torch.as_tensor(features), torch.as_tensor(centres)) ** 2).argmin(1).numpy()
    connected = connected_regions(labels.reshape(image.shape[:2]))
    if regions is not None:
        if min_size > 0 or merge_threshold > 0:
            connected = merge_regions(image, connected, merge_threshold, min_size)
        return merge_regions(image, connected, min_size=min_size, target=regions)
    if merge_threshold <= 0 and min_size <= 0:
        return connected
    return merge_regions(image, connected, merge_threshold, min_size)


def slic_segments(image: np.ndarray, k: int, compactness: float = 10.0) -> np.ndarray:
    """SLIC superpixels (scikit-image), about ``k`` of them, numbered from 0."""
    from skimage.segmentation import slic

    if k < 1:
        raise PixelsegError(f"K must be at least 1, got {k}")
    return slic(image, n_segments=k, compactness=compactness, start_label=0,
                channel_axis=-1 if image.ndim == 3 else None)
