"""ImageFolderData on a tiny generated class-per-folder tree."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from sslr.data import DatasetNotFoundError, ImageFolderData


@pytest.fixture
def tree(tmp_path):
    for split, n in (("train", 10), ("val", 3)):
        for c, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
            folder = tmp_path / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (48 + i, 40), color).save(folder / f"{i}.png")
    return tmp_path


def test_splits_shapes_and_labels(tree):
    dm = ImageFolderData(
        str(tree), num_classes=3, image_size=32, batch_size=4, num_workers=0, val_fraction=0.2
    )
    assert dm.mean == (0.485, 0.456, 0.406) and dm.image_size == 32
    dm.setup()
    assert [dm.split_size(k) for k in ("train", "val", "test")] == [24, 6, 9]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    xs, ys = zip(*dm.test_dataloader(), strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # class c is the pure colour c: its channel c is 1, the others 0
    assert torch.allclose(x.mean((2, 3)), torch.eye(3)[y], atol=1e-3)


def test_errors(tree, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="train does not exist"):
        ImageFolderData(str(tmp_path / "nothing")).setup()
    with pytest.raises(DatasetNotFoundError, match="3 class folders but num_classes is 100"):
        ImageFolderData(str(tree)).setup()
    (tree / "val" / "class9").mkdir()
    Image.new("RGB", (8, 8)).save(tree / "val" / "class9" / "0.png")
    with pytest.raises(DatasetNotFoundError, match="class9"):
        ImageFolderData(str(tree), num_classes=3).setup()
    with pytest.raises(ValueError, match="on_device"):
        ImageFolderData(str(tree), on_device=True)
