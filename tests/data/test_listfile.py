"""Hashing list files (NUS-WIDE style): parsing, splits, batches, and the errors a user can cause."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from sslr.data import DatasetNotFoundError, HashingListData, ListFileError

WIDTH = 21  # nuswide


def _labels(i: int) -> list[int]:
    return [1 if (i + k) % 7 == 0 else 0 for k in range(WIDTH)]  # multi-hot, 3 ones


@pytest.fixture
def list_root(tmp_path):
    """40 tiny PNGs; train = images 0..11, queries = 12..17, database = 0..11 and 18..39."""
    (tmp_path / "images").mkdir()
    for i in range(40):
        color = (i * 6, 255 - i * 6, 128)
        Image.new("RGB", (40 - i % 5, 30), color).save(tmp_path / "images" / f"{i:03d}.png")

    def write(name, ids):
        lines = [f"images/{i:03d}.png " + " ".join(map(str, _labels(i))) for i in ids]
        (tmp_path / name).write_text("\n".join(lines) + "\n")

    write("train.txt", range(12))
    write("test.txt", range(12, 18))
    write("database.txt", list(range(12)) + list(range(18, 40)))
    return tmp_path


def test_splits_and_batches(list_root):
    dm = HashingListData(str(list_root), "nuswide", image_size=32, batch_size=8, num_workers=0)
    assert dm.num_classes == 21 and dm.image_size == 32  # before any I/O
    dm.setup()
    sizes = {k: dm.split_size(k) for k in ("train", "query", "database", "val_query")}
    assert sizes == {"train": 12, "query": 6, "database": 34, "val_query": 6}
    assert dm.split_size("val_database") == 28
    val_paths = set(dm.split_dataset("val_query").paths)
    assert not val_paths & set(dm.split_dataset("train").paths)  # never a training image
    assert not val_paths & set(dm.split_dataset("val_database").paths)

    x, labels = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert labels.shape == (8, WIDTH) and labels.dtype == torch.float32

    queries, database = dm.test_dataloader()
    xq, yq = next(iter(queries))
    assert torch.equal(yq, torch.tensor([_labels(i) for i in range(12, 18)], dtype=torch.float32))
    # Solid-colour images stay that colour through resize and crop.
    assert torch.allclose(xq[0, :, 16, 16], torch.tensor([72, 183, 128]) / 255, atol=0.01)
    assert sum(len(b[1]) for b in database) == 34
    assert len(dm.val_dataloader()) == 2


def test_database_size_caps_the_database(list_root):
    dm = HashingListData(str(list_root), database_size=10, num_workers=0)
    dm.setup()
    assert dm.split_size("database") == 10 and dm.split_size("val_database") == 10
    assert dm.split_size("query") == 6


def test_missing_images_are_counted_and_named(list_root):
    (list_root / "images" / "020.png").unlink()
    (list_root / "images" / "025.png").unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        HashingListData(str(list_root)).setup()
    message = str(err.value)
    assert "database.txt" in message and "2 of 34" in message and "images/020.png" in message


def test_wrong_label_width_names_the_line(list_root):
    lines = (list_root / "test.txt").read_text().splitlines()
    lines[3] += " 0"
    (list_root / "test.txt").write_text("\n".join(lines))
    with pytest.raises(ListFileError, match=r"test.txt, line 4: expected 21 labels .* found 22"):
        HashingListData(str(list_root)).setup()
    with pytest.raises(ListFileError, match="expected 80 labels"):
        HashingListData(str(list_root), dataset="coco").setup()


def test_non_binary_labels_and_empty_lists_are_refused(list_root):
    text = (list_root / "train.txt").read_text().replace(" 1 ", " 2 ", 1)
    (list_root / "train.txt").write_text(text)
    with pytest.raises(ListFileError, match="line 1: labels must be 0 or 1, found '2'"):
        HashingListData(str(list_root)).setup()
    (list_root / "train.txt").write_text("\n\n")
    with pytest.raises(ListFileError, match="lists no images"):
        HashingListData(str(list_root)).setup()


def test_unknown_dataset_and_missing_list(list_root, tmp_path):
    with pytest.raises(ValueError, match="unknown hashing list dataset 'flickr'.*nuswide"):
        HashingListData(str(list_root), dataset="flickr")
    with pytest.raises(DatasetNotFoundError, match="list file .*train.txt does not exist"):
        HashingListData(str(list_root), list_dir=str(tmp_path / "lists")).setup()
