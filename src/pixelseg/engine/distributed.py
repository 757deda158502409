"""Training and evaluating on many processes: the process group and how the data is shared out.

``torchrun --nnodes N --nproc-per-node M -m pixelseg train CONFIG`` starts ``N·M`` copies of the trainer;
each finds its place from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) through
:func:`init_distributed`, which joins the process group (NCCL on GPUs, Gloo on the CPU). Run alone, nothing
is initialised and :data:`SINGLE` describes the one process.

The data: every process draws the same per-epoch permutation of the training set (seeded from the run's seed
and the epoch, as a single process does). :class:`ShardedBatches` cuts it into *global* batches of
``batch_size × world_size × accumulate`` images; each is split into ``accumulate`` micro-batches and each
micro-batch into one contiguous share per process. The images of one optimizer step are therefore exactly
those a single process with the whole global batch would see, and with one process and no accumulation the
batches are those of ``DataLoader(shuffle=True)``. Validation is split with :class:`EvaluationShard`
(every ``world_size``-th image, no padding), and the evaluators' ``all_reduce`` sums the shares exactly.
"""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, RandomSampler, Sampler

from ..errors import PixelsegError


@dataclass(frozen=True)
class ProcessGroup:
    """Where this process stands: its rank among ``world_size`` and its rank on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False  # this module joined the group (and leaves it in :func:`shutdown`)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = ProcessGroup()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise PixelsegError(f"{name} must be an integer, got {value!r}") from None


def init_distributed(device: str) -> tuple[ProcessGroup, torch.device]:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 and pick this process's device.

    ``device`` is ``train.device``: ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per process, NCCL);
    anything else keeps the device and uses Gloo. Alone (no torchrun): :data:`SINGLE` and ``device``."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return SINGLE, torch.device(device)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise PixelsegError(f"RANK {rank} is not in 0..WORLD_SIZE-1 ({world - 1})")
    chosen = torch.device(device)
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise PixelsegError("train.device is cuda but this machine has no CUDA device")
        chosen = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(chosen)
    import torch.distributed as dist

    initialised_here = not dist.is_initialized()
    if initialised_here:
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo",
                                device_id=chosen if chosen.type == "cuda" else None)
    return ProcessGroup(rank, world, local_rank, initialised_here), chosen


def shutdown(group: ProcessGroup) -> None:
    """Leave the process group if :func:`init_distributed` joined it."""
    if group.initialised_here:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def all_reduce_values(values: Sequence[float], group: ProcessGroup, op: str = "sum") -> list[float]:
    """``values`` summed (``op="sum"``) or maximised (``"max"``) over the processes; unchanged alone."""
    if not group.enabled:
        return [float(v) for v in values]
    import torch.distributed as dist

    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return [float(v) for v in tensor.cpu()]


def gather_rng_states(group: ProcessGroup) -> list[str] | None:
    """Every process's torch RNG state (base64, in rank order) so that a checkpoint can restore each one;
    ``None`` alone (the checkpoint's own RNG state is the only one)."""
    if not group.enabled:
        return None
    import torch.distributed as dist

    states: list[str | None] = [None] * group.world_size
    dist.all_gather_object(states, base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode())
    return [s for s in states if s is not None]


def restore_rng_state(states: list[str] | None, group: ProcessGroup) -> None:
    """Set this process's RNG state from :func:`gather_rng_states`'s list when it was saved by as many
    processes (otherwise the checkpoint's RNG state, rank 0's, stays)."""
    if group.enabled and states is not None and len(states) == group.world_size:
        raw = base64.b64decode(states[group.rank])
        torch.set_rng_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))


def global_batch_count(length: int, batch_size: int, drop_last: bool, world_size: int = 1,
                       accumulate: int = 1) -> int:
    """Optimizer steps in one pass over ``length`` images (the padded length when the last batch is kept)."""
    per_step = batch_size * world_size * accumulate
    if drop_last:
        return length // per_step
    return math.ceil(_padded_length(length, world_size) / per_step)


def _padded_length(length: int, world_size: int) -> int:
    return math.ceil(length / world_size) * world_size


class ShardedBatches(Sampler[list[int]]):
    """This process's micro-batches of one epoch (see the module docstring), remembered in ``seen`` so that
    a failing step can name its batch's files.

    The permutation comes from ``RandomSampler(dataset, generator=generator)``: with one process and
    ``accumulate=1`` the batches are exactly ``BatchSampler(RandomSampler(...), batch_size, drop_last)``'s.
    A kept last global batch is padded to a multiple of ``world_size`` with the epoch's first images (as
    ``DistributedSampler`` pads) so that every process takes the same number of non-empty micro-batches."""

    def __init__(self, dataset: Dataset, batch_size: int, drop_last: bool, generator: torch.Generator, *,
                 rank: int = 0, world_size: int = 1, accumulate: int = 1) -> None:
        self.dataset, self.batch_size, self.drop_last, self.generator = dataset, batch_size, drop_last, generator
        self.rank, self.world_size, self.accumulate = rank, world_size, accumulate
        self.seen: list[list[int]] = []

    def global_batches(self) -> Iterator[list[int]]:
        order = list(RandomSampler(self.dataset, generator=self.generator))  # type: ignore[arg-type]
        per_step = self.batch_size * self.world_size * self.accumulate
        if not self.drop_last and len(order) % self.world_size:
            order += order[: _padded_length(len(order), self.world_size) - len(order)]
        for start in range(0, len(order), per_step):
            chunk = order[start:start + per_step]
            if len(chunk) < per_step and self.drop_last:
                return
            yield chunk

    def micro_batches(self, chunk: list[int]) -> Iterator[list[int]]:
        """This process's share of each micro-batch of a global batch."""
        per_micro = self.batch_size * self.world_size
        for start in range(0, len(chunk), per_micro):
            micro = chunk[start:start + per_micro]
            share = len(micro) // self.world_size  # a multiple of world_size: only the full one may be short
            yield micro[self.rank * share:(self.rank + 1) * share]

    def __iter__(self) -> Iterator[list[int]]:
        for chunk in self.global_batches():
            for share in self.micro_batches(chunk):
                self.seen.append(share)
                yield share

    def micro_batch_sizes(self, step: int) -> list[int]:
        """The images (over all processes) of each micro-batch of the epoch's ``step``-th global batch."""
        length = len(self.dataset)  # type: ignore[arg-type]
        if not self.drop_last:
            length = _padded_length(length, self.world_size)
        per_step, per_micro = self.batch_size * self.world_size * self.accumulate, self.batch_size * self.world_size
        size = min(per_step, length - step * per_step)
        return [min(per_micro, size - start) for start in range(0, size, per_micro)]

    def __len__(self) -> int:
        length = len(self.dataset)  # type: ignore[arg-type]
        steps = global_batch_count(length, self.batch_size, self.drop_last, self.world_size, self.accumulate)
        per_micro = self.batch_size * self.world_size
        if self.drop_last:
            return steps * self.accumulate
        full, rest = divmod(_padded_length(length, self.world_size), per_micro)
        return full + (rest > 0)


class EvaluationShard(Sampler[int]):
    """Every ``world_size``-th image from ``rank`` on, in order, without padding (no image counted twice)."""

    def __init__(self, dataset: Dataset, rank: int, world_size: int) -> None:
        self.length, self.rank, self.world_size = len(dataset), rank, world_size  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))
