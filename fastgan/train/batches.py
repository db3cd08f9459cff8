"""Endless training batches from a Tensor, a Dataset or a DataLoader, as (samples, labels or
None) on a device, with a resumable order for Tensors and Datasets."""
import torch
from torch.utils.data import (DataLoader, Dataset, DistributedSampler, TensorDataset,
                              default_collate)


def split_labels(batch):
    """A collated batch as (samples, labels or None)."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 1:
        return batch[0], None
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        samples, labels = batch
        return samples, torch.as_tensor(labels).long()
    raise TypeError("data items must be a sample tensor or a (sample, label) pair, got "
                    f"{type(batch).__name__}")


class ShuffledBatches:
    """Batches of a Tensor or a map-style Dataset, reshuffled every epoch, dropping each epoch's
    last partial batch (BatchNorm needs full batches). The state (the shuffling generator at the
    epoch's start and the position in it) reproduces the order exactly.

    Data-parallel, each of world_size processes gets every world_size-th sample of the same
    batch of batch_size, as DistributedSampler would shard it: disjoint shards that together
    are the batches of one process, whatever the number of processes."""

    def __init__(self, data, batch_size, seed, rank=0, world_size=1):
        if len(data) < batch_size:
            raise ValueError(f"batch_size ({batch_size}) is larger than the data "
                             f"({len(data)} samples)")
        if batch_size % world_size:
            raise ValueError(f"batch_size ({batch_size}) must be a multiple of the number of "
                             f"processes ({world_size})")
        self.data, self.batch_size = data, batch_size
        self.rank, self.world_size = rank, world_size
        self._generator = torch.Generator().manual_seed(seed)
        self._new_epoch()

    def _new_epoch(self):
        self._epoch_state = self._generator.get_state()
        self._order = torch.randperm(len(self.data), generator=self._generator)
        self._position = 0

    def state_dict(self):
        return {"generator": self._epoch_state, "position": self._position}

    def load_state_dict(self, state):
        self._generator.set_state(state["generator"])
        self._new_epoch()
        self._position = state["position"]

    def __next__(self):
        if self._position + self.batch_size > len(self.data):
            self._new_epoch()
        batch = self._order[self._position:self._position + self.batch_size]
        indices = batch[self.rank::self.world_size]
        self._position += self.batch_size
        if isinstance(self.data, torch.Tensor):
            return self.data[indices], None
        if isinstance(self.data, TensorDataset):
            return split_labels(tuple(tensor[indices] for tensor in self.data.tensors))
        return split_labels(default_collate([self.data[i] for i in indices.tolist()]))


class LoaderBatches:
    """A DataLoader's batches, epoch after epoch. Its order is the loader's own: resuming
    continues with a fresh pass rather than at the exact batch. Data-parallel, its sampler must
    be a DistributedSampler (told the epoch at every pass) and its batches are per process."""

    def __init__(self, loader, world_size=1):
        if world_size > 1 and not isinstance(loader.sampler, DistributedSampler):
            raise ValueError(f"data: with {world_size} processes a DataLoader needs a "
                             "DistributedSampler, or every process trains on the same batches")
        self.loader = loader
        self._epoch = 0
        self._start_epoch()

    def _start_epoch(self):
        if isinstance(self.loader.sampler, DistributedSampler):
            self.loader.sampler.set_epoch(self._epoch)
        self._epoch += 1
        self._iterator = iter(self.loader)

    def state_dict(self):
        return None

    def load_state_dict(self, state):
        pass

    def __next__(self):
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._start_epoch()
            batch = next(self._iterator)
        return split_labels(batch)


def make_batches(data, batch_size, seed, rank=0, world_size=1):
    if isinstance(data, DataLoader):
        return LoaderBatches(data, world_size)
    if isinstance(data, torch.Tensor) or isinstance(data, Dataset) and hasattr(data, "__len__"):
        return ShuffledBatches(data, batch_size, seed, rank, world_size)
    raise TypeError("data must be a Tensor, a map-style Dataset or a DataLoader, got "
                    f"{type(data).__name__}")
