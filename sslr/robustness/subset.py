"""The evaluated images: a fixed, seeded subset of a split, from whatever holds the split."""

from __future__ import annotations

import torch


def _indexable(data):
    """A map-style dataset of ``(x, y)`` items from a Dataset, DataLoader, Lightning's list of
    loaders or a DataModule (its test split); an iterable of batches without one (such as a
    device-resident loader) is read whole into a TensorDataset."""
    if hasattr(data, "test_dataloader") and hasattr(data, "setup"):  # a LightningDataModule
        data.prepare_data()
        data.setup("test")
        data = data.test_dataloader()
    if isinstance(data, (list, tuple)):  # Lightning's list of loaders
        data = data[0]
    dataset = getattr(data, "dataset", None)
    if dataset is not None:
        return dataset
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return data
    batches = [(batch[0], batch[1]) for batch in data]
    if not batches:
        raise ValueError("The evaluated split is empty")
    xs, ys = zip(*batches, strict=True)
    return torch.utils.data.TensorDataset(torch.cat(xs), torch.cat(ys))


def select_subset(data, n_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed, seeded subset: ``n_samples`` images (N, C, H, W) in [0, 1] and labels (N,)
    drawn without replacement from ``data`` (a Dataset of ``(x, y)``, a DataLoader, or a
    DataModule, whose test split is used). The same seed gives the same images, in dataset
    order; a split smaller than ``n_samples`` is used whole. Returned on the CPU, as ordinary
    tensors even under Lightning's inference mode (attacks need autograd on them)."""
    x, y, _ = draw_subset(data, n_samples, seed)
    return x, y


def draw_subset(data, n_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """:func:`select_subset`, and the images' indices in their split (ascending)."""
    with torch.inference_mode(False):
        dataset = _indexable(data)
        total = len(dataset)
        if total == 0:
            raise ValueError("The evaluated split is empty")
        order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
        index = order[: min(n_samples, total)].sort().values.tolist()
        items = [dataset[i] for i in index]
        x = torch.stack([torch.as_tensor(item[0]).cpu() for item in items]).clone()
        y = torch.stack([torch.as_tensor(item[1]).cpu() for item in items]).long()
    if not x.is_floating_point():  # uint8 pixels
        x = x.float() / 255.0
    x = x.float()
    if x.dim() != 4 or y.dim() != 1:
        raise ValueError(
            f"Expected (image (C, H, W), class index) items, got shapes {tuple(x.shape[1:])} and "
            f"{tuple(y.shape[1:])}"
        )
    return x, y, index
