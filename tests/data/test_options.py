"""Every public DataModule's options as the CLI sees them: the loader options are declared once
(SplitDataModule), each constructor adds its own and passes the rest on as ``**kwargs``, and
jsonargparse (what LightningCLI uses) follows ``**kwargs`` to list them all, typed, with the
class's own defaults."""

from __future__ import annotations

import pytest
from jsonargparse import ArgumentParser

import sslr.data as D

LOADER = {
    "root": None,
    "batch_size": 128,
    "num_workers": 2,
    "pin_memory": True,
    "seed": 0,
    "augment": True,
    "image_size": 32,
    "on_device": False,
}
CLASSIFICATION = {"val_fraction": 0.1, "subset": None}
HASHING = {"database_size": None, "val_queries": None, "split_seed": 0}
PER_CLASS = {"query_per_class": 100, "train_per_class": 500}
DOWNLOAD = {"download": True}

EXPECTED = {
    D.Digits: {
        **LOADER,
        **CLASSIFICATION,
        "num_workers": 0,
        "test_fraction": 0.2,
        "split_seed": 0,
    },
    D.FashionMNIST: {**LOADER, **CLASSIFICATION, **DOWNLOAD},
    D.CIFAR10: {**LOADER, **CLASSIFICATION, **DOWNLOAD},
    D.CIFAR100: {**LOADER, **CLASSIFICATION, **DOWNLOAD},
    D.HashingDigits: {
        **LOADER,
        **HASHING,
        "num_workers": 0,
        "query_per_class": 20,
        "train_per_class": 100,
    },
    D.HashingFashionMNIST: {**LOADER, **HASHING, **PER_CLASS, **DOWNLOAD},
    D.HashingCIFAR10: {**LOADER, **HASHING, **PER_CLASS, **DOWNLOAD},
    D.ImageFolderData: {**LOADER, **CLASSIFICATION, "num_classes": 100, "image_size": 224},
    D.HashingListData: {
        **LOADER,
        **HASHING,  # no per-class counts: the list files fix queries and training images
        "dataset": "nuswide",
        "list_dir": None,
        "train_list": "train.txt",
        "query_list": "test.txt",
        "database_list": "database.txt",
        "image_size": 224,
    },
}
REQUIRED_ROOT = {D.ImageFolderData, D.HashingListData}


def _parser(cls) -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "data")
    return parser


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_cli_lists_every_option_with_the_class_defaults(cls):
    parser = _parser(cls)
    args = ["--data.root=/nowhere"] if cls in REQUIRED_ROOT else []
    parsed = vars(parser.parse_args(args).data)
    expected = dict(EXPECTED[cls])
    if cls in REQUIRED_ROOT:
        expected["root"] = "/nowhere"
    assert parsed == expected
    # Typed: a wrong type is refused by the parser, not passed on.
    with pytest.raises(Exception, match="batch_size"):
        parser.parse_args([*args, "--data.batch_size=many"])


def test_a_required_root_is_required():
    with pytest.raises(Exception, match="root"):
        _parser(D.ImageFolderData).parse_args([])


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_parsed_options_build_the_module_and_are_its_hyperparameters(cls, tmp_path):
    """What the CLI parses is what the constructor receives, what the attributes say and what a
    checkpoint records (no option lost on the way through **kwargs, none added), and the
    recorded options build the same module again (as load_from_checkpoint does)."""
    parser = _parser(cls)
    args = ["--data.batch_size=16", "--data.seed=3", "--data.augment=false"]
    if cls in REQUIRED_ROOT:
        args.append(f"--data.root={tmp_path}")
    parsed = vars(parser.parse_args(args).data)
    dm = cls(**parsed)
    assert dict(dm.hparams) == parsed
    for key, value in parsed.items():
        assert getattr(dm, key) == value, key
    assert (dm.batch_size, dm.seed, dm.augment) == (16, 3, False)
    again = cls(**dm.hparams)
    assert dict(again.hparams) == parsed
    assert type(again.splits) is type(dm.splits) and vars(again.splits) == vars(dm.splits)


@pytest.mark.parametrize(
    "make",
    [
        lambda: D.CIFAR10("data", 64),
        lambda: D.HashingCIFAR10("data", 64),
        lambda: D.Digits(None, 64),
        lambda: D.HashingDigits(None, 64),
        lambda: D.ImageFolderData("root", 10, 64),
        lambda: D.HashingListData("root", "coco", None, "a", "b", "c", 64),
    ],
)
def test_options_after_the_dataset_s_own_are_keyword_only(make):
    """A positional loader option would bind to another parameter now: refused instead."""
    with pytest.raises(TypeError, match="positional"):
        make()


def test_list_data_records_no_per_class_counts_it_does_not_take(tmp_path):
    dm = D.HashingListData(root=str(tmp_path), database_size=50)
    assert dm.hparams["database_size"] == 50 and dm.image_size == 224
    assert "query_per_class" not in dm.hparams and not hasattr(dm, "query_per_class")
    assert dm.splits.query_per_class is None and dm.splits.train_per_class is None
    with pytest.raises(TypeError):
        D.HashingListData(root=str(tmp_path), nonsense=1)
