"""Several processes of one run, as torchrun starts them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in
the environment): gloo on CPU, NCCL on CUDA. (torch is imported where it is used: the CLI's error
handler asks `is_main` without it.) Every collective also carries failures, so an error on any
process ends the run on all of them with that process's one line, and a process that died is named as such
instead of leaving the others waiting."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, TypeVar

from .errors import GtpcliError

T = TypeVar("T")
TIMEOUT = timedelta(minutes=30)  # the longest one process may wait for the others (a slow throughput point)


def launched() -> bool:
    """Whether torchrun (or the same environment) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main() -> bool:
    """Rank 0 prints and writes; the others stay silent (it reports their failures)."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def label(self, device: str) -> str:
        return f"rank {self.rank} of {self.size} ({device})"

    def gathered(self, work: Callable[[], T]) -> list[T]:
        """`work()` on every process, its results from all of them in rank order; if it failed anywhere
        (a GtpcliError), it fails everywhere with the first failing process's message."""
        value, failure = self._attempt(work)
        return self._exchange(value, failure)

    def together(self, work: Callable[[], T]) -> T:
        """`work()` on every process, each keeping its own result; a failure anywhere fails everywhere.
        (Every collective of a run is one of these two, so a process that fails between two of them
        still meets the others at their next one.)"""
        value, failure = self._attempt(work)
        self._exchange(None, failure)
        return value

    def _exchange(self, value, failure: str | None) -> list:
        everyone = self._all_gather((value, failure)) if self.size > 1 else [(value, failure)]
        first = next((failure for _, failure in everyone if failure), None)
        if first:
            raise GtpcliError(first)
        return [value for value, _ in everyone]

    def _attempt(self, work: Callable[[], T]) -> tuple[T | None, str | None]:
        try:
            return work(), None
        except GtpcliError as exc:
            return None, str(exc) if self.size == 1 or self.main else f"rank {self.rank}: {exc}"

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every process."""
        return self._exchange(value if self.main else None, None)[0]

    def _all_gather(self, value: Any) -> list[Any]:
        import torch

        out = [None] * self.size
        self._call(torch.distributed.all_gather_object, out, value)
        return out

    def _call(self, collective, *args, **kwargs) -> None:
        try:
            collective(*args, **kwargs)
        except (RuntimeError, ConnectionError) as exc:  # gloo and NCCL say a peer is gone in these
            detail = " ".join(re.sub(r"\[[^\]]*:\d+\]", "", str(exc)).split())[:160]  # no C++ source places
            raise GtpcliError(f"another process of this run stopped (it died or was killed: {detail})") from None

    def close(self) -> None:
        import torch

        if self.backend is not None and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def start(device: str) -> World:
    """The process group of a torchrun launch (a world of one otherwise). CUDA processes each take the
    GPU of their LOCAL_RANK."""
    if not launched():
        return World()
    import torch

    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    _import_group_defaults()
    try:
        torch.distributed.init_process_group(backend, rank=rank, world_size=size, timeout=TIMEOUT)
    except (RuntimeError, ValueError) as exc:
        raise GtpcliError(f"cannot join the {size} processes of this run ({backend}): "
                          f"{' '.join(str(exc).split())[:200]}") from None
    return World(rank, size, local_rank, backend)


def _import_group_defaults() -> None:
    """Import, before the process group exists, the torch modules whose functions take `group=group.WORLD`
    as a default argument (torch.distributed.nn.functional; timm imports it through torchvision and
    torch._dynamo). Such a default is evaluated once, at import: imported after init_process_group it holds
    the group itself, so destroy_process_group cannot free it and gloo's threads live on to the interpreter's
    exit, where one of them may release a finished collective's tensors after Python has begun to shut
    down; it dies taking the GIL, and the process aborts ("terminate called without an active exception",
    SIGABRT) after a run that finished. Imported first, those defaults are None (the default group)."""
    try:
        import torch.distributed.nn  # noqa: F401
    except ImportError:  # a torch without these modules has no such defaults either
        pass


def device_for(world: World, device: str) -> str:
    """Each process of a CUDA run uses cuda:LOCAL_RANK; an explicit cuda:N would put them all on one GPU."""
    if world.size == 1 or not device.startswith("cuda"):
        return device
    if device != "cuda":
        raise GtpcliError(f"--device {device} under torchrun: give --device cuda (or auto); each process uses "
                          "the GPU of its LOCAL_RANK")
    return f"cuda:{world.local_rank}"


class ShardedBatches:
    """The batches a single process would see, in its order, dealt round-robin to the processes: batch k
    goes to rank k mod world size. Every image is in exactly one batch (no padding, so uneven shards are
    counted once each), and every batch is the same batch a single process computes, so sums in batch
    order give exactly the single-process figures."""

    def __init__(self, length: int, batch_size: int, rank: int = 0, size: int = 1):
        starts = range(0, length, batch_size)
        self.batches = [(k, list(range(start, min(start + batch_size, length))))
                        for k, start in enumerate(starts) if k % size == rank]

    def __iter__(self):
        return iter([indices for _, indices in self.batches])

    def __len__(self) -> int:
        return len(self.batches)

    def numbers(self) -> list[int]:
        """Each batch's place in the single-process order."""
        return [k for k, _ in self.batches]
