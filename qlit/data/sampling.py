"""How rows become batches: indexed a batch at a time, in an order a resumed run reproduces.

`TensorLoader` takes each batch of in-memory rows with one indexing operation per tensor, where
the standard loader fetches every row and stacks them; for qlit's small networks the standard way
costs about a third of a training step.

The order of an epoch is a function of ``(seed, epoch)`` only, never of how much randomness was
drawn before, and the train loader remembers how many batches of the current epoch it has handed
out. Lightning saves that count in every checkpoint and restores it, so training resumed from a
checkpoint written mid-epoch (on SIGTERM or Ctrl-C) continues with the very next batch, and one
resumed from an end-of-epoch checkpoint sees the same batches an uninterrupted run would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset, default_collate


def global_seed() -> int:
    """The seed of the run: the one ``seed_everything`` set (``PL_GLOBAL_SEED``), else torch's initial seed."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None else torch.initial_seed()


class EpochShuffleSampler(RandomSampler):
    """A random permutation of the rows that depends only on ``seed`` and the epoch.

    Lightning calls `set_epoch` at the start of every epoch. It is a `RandomSampler`, so under DDP
    Lightning replaces it with ``DistributedSampler(shuffle=True, seed=PL_GLOBAL_SEED)``. Both draw
    ``torch.randperm`` from a generator seeded with ``seed + epoch``, so with a per-process batch
    of ``batch_size / N`` the N processes together train on exactly the batches one process would.

    Args:
        data_source: The dataset.
        seed: Base seed; defaults to the run's global seed.
    """

    def __init__(self, data_source: Dataset, seed: int | None = None) -> None:
        super().__init__(data_source)
        self.seed = global_seed() if seed is None else int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class TensorLoader(DataLoader):
    """A DataLoader over a `TensorDataset` that indexes each batch at once.

    It takes the same arguments and yields the same batches as `DataLoader` (a list with one
    stacked tensor per field). With worker processes, pinned memory, a custom ``collate_fn`` or
    another kind of dataset it is a plain `DataLoader`.
    """

    def _indexes_batches(self) -> bool:
        return (
            isinstance(self.dataset, TensorDataset)
            and self.batch_sampler is not None
            and self.collate_fn is default_collate
            and self.num_workers == 0
            and not self.pin_memory
        )

    def __iter__(self) -> Iterator[Any]:
        if not self._indexes_batches():
            return super().__iter__()
        return self._index_batches()

    def _index_batches(self) -> Iterator[list[torch.Tensor]]:
        tensors = self.dataset.tensors
        for indices in self.batch_sampler:
            index = torch.as_tensor(indices, dtype=torch.long)
            yield [tensor[index] for tensor in tensors]


class ResumableDataLoader(TensorLoader):
    """A `TensorLoader` whose position within the epoch is saved in checkpoints.

    ``state_dict()`` records the epoch its sampler is at and how many batches it has yielded in
    that epoch; after ``load_state_dict()``, the next iteration sets the sampler back to that epoch
    and skips the batches already trained on. Lightning saves and restores this state by itself for
    any train loader that has these two methods.
    """

    def __init__(self, dataset: Dataset, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self._yielded = 0
        self._skip = 0

    def _samplers(self) -> list[Any]:
        found = [self.sampler, getattr(self.batch_sampler, "sampler", None)]
        return [s for i, s in enumerate(found) if s is not None and all(s is not t for t in found[:i])]

    def _epoch(self) -> int | None:
        return next((int(s.epoch) for s in self._samplers() if hasattr(s, "epoch")), None)

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0  # taken now, not lazily: only the first epoch after a restore skips
        self._yielded = skip
        return self._batches(super().__iter__(), skip)

    def _batches(self, iterator: Iterator[Any], skip: int) -> Iterator[Any]:
        for _ in range(skip):
            if next(iterator, StopIteration) is StopIteration:
                return
        for batch in iterator:
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch(), "batches": self._yielded}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._skip = int(state_dict.get("batches", 0))
        epoch = state_dict.get("epoch")
        if epoch is not None:
            for sampler in self._samplers():
                if callable(getattr(sampler, "set_epoch", None)):
                    sampler.set_epoch(epoch)
