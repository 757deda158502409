"""Shared timing for the benchmarks: the median wall-clock time of a call after one warm-up call, and
interleaved rounds of several paths printed against a baseline."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median over ``repeats`` timed calls of ``function``, after one untimed warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_seconds(paths: dict[str, Callable[[Any], object]], argument: Any, rounds: int,
                        clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds of each ``path(argument)`` under ``torch.inference_mode``, the paths taking turns for ``rounds``
    rounds (so that a disturbance of the machine falls on all of them alike); ``clock`` is
    ``time.perf_counter`` (wall clock) or ``time.process_time`` (this process's CPU time)."""
    import torch

    seconds: dict[str, list[float]] = {label: [] for label in paths}
    for _ in range(rounds):
        for label, run in paths.items():
            with torch.inference_mode():
                start = clock()
                run(argument)
                seconds[label].append(clock() - start)
    return seconds


def print_against_baseline(name: str, seconds: dict[str, list[float]], baseline: str, width: int,
                           show_all: bool = False) -> None:
    """One line a path: its median and minimum seconds, each with the baseline's divided by it."""
    base_median, base_min = statistics.median(seconds[baseline]), min(seconds[baseline])
    for label, values in seconds.items():
        median, fastest = statistics.median(values), min(values)
        every = f"  (all: {', '.join(f'{v:.2f}' for v in values)})" if show_all else ""
        print(f"  {name} | {label:{width}s} median {median:6.3f} s ({base_median / median:4.2f}x)  "
              f"min {fastest:6.3f} s ({base_min / fastest:4.2f}x){every}")
