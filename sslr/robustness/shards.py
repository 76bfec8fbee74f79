"""The suite's work dealt to several processes, each image attacked exactly once, and kept batch by
batch so that a killed attack resumes.

A cell (attack, norm, gradient source, eps) runs over the subset in the batches a single process
would run (``batch_size`` images each, in order). Batch ``k`` is seeded from the suite's seed and
``k`` alone (:func:`batch_seed`: random starts, Square's squares, brsf's feedback draws), never
from what ran before on the same process, so its outcome does not depend on which process runs
it. :class:`Shard` deals batch ``k`` to rank ``k mod world_size`` and gathers every rank's
outcomes after each cell, in batch order, on every rank: 1, 2 or 16 processes give the same
numbers. (No DistributedSampler: it pads the last batch with duplicates, Lightning #12862.)

:class:`BatchStore` keeps each finished batch's outcomes in the attack's folder, written
atomically; a rerun of the same attack (with any number of processes) reads them back instead
of attacking again, so a killed attack redoes at most the batches that were in flight.

Imports torch only: the ranks meet through ``torch.distributed`` when it is initialised (Lightning's
strategy sets it up; ``sslr attack --trainer.strategy ddp`` and the callback under DDP).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sslr.errors import UserError
from sslr.feedback.seeding import derive_seed

# A brsf layer's feedback draws under attack are counted per forward; batch k counts from
# k * DRAW_STRIDE (no batch makes 2**32 forwards), batch 0 from 0 as a single batch always did.
DRAW_STRIDE = 1 << 32


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch ``batch`` of a cell: the suite's own seed for the first batch (a suite
    of one batch keeps its numbers), a seed derived from (seed, batch) for the others."""
    return seed if batch == 0 else derive_seed(seed, batch) % 2**62


class ShardError(UserError):
    """Another process of the attack failed: its message, said in one line (by rank 0)."""


@dataclass(frozen=True)
class Shard:
    """This process's share of a suite: rank ``rank`` of ``world_size``.

    ``gather`` (default: ``torch.distributed.all_gather_object`` when a process group is
    initialised and ``world_size`` > 1) collects one picklable object per rank, in rank order.
    """

    rank: int = 0
    world_size: int = 1
    gather_fn: Callable[[object], list] | None = None

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} of {self.world_size} processes is not a rank")

    def owns(self, batch: int) -> bool:
        return batch % self.world_size == self.rank

    def gather(self, local: object) -> list:
        """Every rank's ``local``, in rank order (a single process: ``[local]``)."""
        if self.world_size == 1:
            return [local]
        if self.gather_fn is not None:
            return self.gather_fn(local)
        import torch.distributed as dist

        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, local)
        return gathered

    def merge(self, local: dict | BaseException) -> dict:
        """The union of every rank's dict (their keys are disjoint: batch indices); when any
        rank passes an exception instead, every rank raises :class:`ShardError` with the first
        one's message (so no rank waits for one that has stopped)."""
        parts = self.gather(
            {"error": f"{type(local).__name__}: {local}"}
            if isinstance(local, BaseException)
            else {"done": local}
        )
        failed = [(rank, p["error"]) for rank, p in enumerate(parts) if "error" in p]
        if failed:
            if isinstance(local, BaseException):
                raise local
            rank, message = failed[0]
            raise ShardError(f"the attack stopped on process {rank}: {message}")
        merged: dict = {}
        for part in parts:
            merged.update(part["done"])
        return merged


SINGLE = Shard()


class BatchStore:
    """Finished batches of an attack, one file per (cell, batch) under ``folder``, written
    atomically; valid for one ``identity`` (the checkpoint's hash and the suite's settings): a
    store made for another is emptied first."""

    IDENTITY = "identity.txt"

    def __init__(self, folder: str | Path, identity: str, create: bool = True) -> None:
        """``create``: make (or empty a stale) store; one process does, before the others
        open it with ``create=False``."""
        self.folder = Path(folder)
        self.identity = identity
        if not create:
            return
        mark = self.folder / self.IDENTITY
        if self.folder.is_dir() and (not mark.is_file() or mark.read_text() != identity):
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not mark.is_file():
            from sslr.atomic import atomic_write

            atomic_write(mark, identity)

    def _path(self, cell: str, batch: int) -> Path:
        return self.folder / cell / f"{batch}.pt"

    def get(self, cell: str, batch: int) -> dict | None:
        """A stored batch's record, or None (never stored, or unreadable: it is redone)."""
        path = self._path(cell, batch)
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a file from a crashed disk: redo that batch
            return None

    def put(self, cell: str, batch: int, record: dict) -> None:
        from sslr.atomic import atomic_write_with

        path = self._path(cell, batch)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_with(path, lambda tmp: torch.save(record, tmp))

    def remove(self) -> None:
        """Drop the store (the attack finished: its results are in the folder's files)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def cell_key(name: str, norm: str, gradient: str, eps: float) -> str:
    """A cell's folder name in a :class:`BatchStore`: ``pgd-linf-rule-0.03137``."""
    return f"{name}-{norm}-{gradient}-{eps:.10g}"
