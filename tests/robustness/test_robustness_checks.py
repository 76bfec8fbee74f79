"""Every check the engine makes of a suite comes before any attack: for every attack x task x
class count (or code length) x loss, either :func:`check_suite` refuses the suite, or preparing
and running it raises no ValueError. A check made only later would refuse ``sslr attack`` after
its folder and lock exist (it did: apgd-dlr on a 2-class model)."""

from __future__ import annotations

import lightning
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sslr.errors import UserError
from sslr.robustness import AttackTarget, HashingTarget, SuiteConfig, list_attacks, run_suite
from sslr.robustness.config import LOSSES
from sslr.robustness.registry import get_attack
from sslr.robustness.suite import check_suite, prepare_suite

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
# A small budget: the sweep checks what is refused, not how strong the attacks are.
BUDGET = dict(n_samples=4, steps=1, queries=2, eps=[0.0, 8 / 255], batch_size=4)


def _network(outputs: int) -> nn.Module:
    torch.manual_seed(outputs)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, outputs)).eval()


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _classifier(num_classes: int):
    target = AttackTarget(_network(num_classes), MEAN, STD, num_classes)
    y = torch.arange(8) % num_classes
    return target, TensorDataset(_images(8, 0), y)


def _hashing(bits: int, labels: int, database_labels: int | None = None):
    """A hashing model and [queries, database] loaders with one-hot labels (``database_labels``:
    the database holds only that many of them)."""
    target = HashingTarget(_network(bits), MEAN, STD, bits)

    def loader(n: int, seed: int, kinds: int) -> DataLoader:
        y = nn.functional.one_hot(torch.arange(n) % kinds, labels).float()
        return DataLoader(TensorDataset(_images(n, seed), y), batch_size=4)

    return target, [loader(4, 1, labels), loader(12, 2, database_labels or labels)]


def _verdict(config: SuiteConfig, target, data) -> str | None:
    """check_suite's refusal (None: accepted); an accepted suite must then prepare and run."""
    try:
        check_suite(config, target)
    except ValueError as err:
        return str(err)
    prepared = prepare_suite(target, data, config, warn_train_mode=False)
    rows = run_suite(target, data, config, prepared=prepared, warn_train_mode=False)
    assert rows and all(0.0 <= r.accuracy <= 1.0 for r in rows)
    return None


CLASSIFICATION = [n for n in list_attacks() if "classification" in get_attack(n).tasks]
HASHING = [n for n in list_attacks() if "hashing" in get_attack(n).tasks]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("num_classes", [2, 3, 4, 10])
@pytest.mark.parametrize("attack", CLASSIFICATION)
def test_a_classification_suite_is_refused_up_front_or_runs(attack, num_classes, loss):
    config = SuiteConfig(attacks=[attack], loss=loss, gradients=["rule", "exact"], **BUDGET)
    refusal = _verdict(config, *_classifier(num_classes))
    needs = get_attack(attack).min_classes
    # What is refused, and why: too few classes for the attack (APGD-T's DLR) or the dlr loss.
    expected = num_classes < needs or (loss == "dlr" and num_classes < 3)
    assert (refusal is not None) == expected, refusal
    if refusal is not None:
        assert f"the model has {num_classes}" in refusal


@pytest.mark.parametrize("attack", CLASSIFICATION)
def test_an_attack_a_task_cannot_run_is_refused_up_front(attack):
    hashing_only = [n for n in HASHING if n not in CLASSIFICATION]
    target, data = _classifier(10)
    for name in hashing_only:
        refusal = _verdict(SuiteConfig(attacks=[name], **BUDGET), target, data)
        assert refusal is not None and "not to classification" in refusal
    if attack not in HASHING:
        refusal = _verdict(SuiteConfig(attacks=[attack], **BUDGET), *_hashing(8, 3))
        assert refusal is not None and "not to hashing" in refusal


@pytest.mark.parametrize("labels", [2, 3])
@pytest.mark.parametrize("bits", [2, 8])
@pytest.mark.parametrize("attack", HASHING)
def test_a_hashing_suite_is_refused_up_front_or_runs(attack, bits, labels):
    config = SuiteConfig(attacks=[attack], gradients=["rule", "exact"], **BUDGET)
    assert _verdict(config, *_hashing(bits, labels)) is None


def test_a_suite_the_data_refuses_is_refused_while_preparing(tmp_path):
    """A targeted hashing attack needs, for every query, a database item of another label:
    the data says so in prepare_suite, before sslr attack makes its folder."""
    target, data = _hashing(8, 3, database_labels=1)  # the database: label 0 only
    config = SuiteConfig(attacks=["p2p"], gradients=["exact"], **BUDGET)
    check_suite(config, target)  # the settings are fine ...
    with pytest.raises(ValueError, match="database item of another label"):
        prepare_suite(target, data, config)  # ... the data is not


def test_sslr_attacks_python_entry_leaves_no_folder_when_refused(tmp_path):
    """attack_checkpoint (what ``sslr attack`` runs) with a suite the model refuses: one
    UserError, and neither the attack folder nor its lock."""
    from sslr.attack_run import attack_checkpoint
    from sslr.tasks import ClassificationTask

    task = ClassificationTask(num_classes=2, backbone="resnet18")
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    hparams = {**dict(task.hparams), "_class_path": "sslr.ClassificationTask"}
    torch.save(
        {
            "state_dict": task.state_dict(),
            "hyper_parameters": hparams,
            "pytorch-lightning_version": lightning.__version__,
        },
        ckpt,
    )
    data = TensorDataset(_images(4, 0), torch.tensor([0, 1, 0, 1]))
    config = SuiteConfig(attacks=["apgd-dlr"], **BUDGET)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(UserError, match="needs at least 4 classes, the model has 2"):
        attack_checkpoint(task, data, str(ckpt), config, run_dir=tmp_path / "run", say=str)
    assert sorted(tmp_path.rglob("*")) == before
