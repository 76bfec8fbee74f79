"""No checkpoint runs code, whatever opens it; a bad or misfitting file stops with one line.

Each crafted file would create a marker file if it were unpickled without restriction (its
pickle calls ``os.system("touch <marker>")``); every entry point must refuse it with one line
naming the file and the import it asked for, and the marker must never appear.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from sslr.checkpoints import CheckpointError, load_checkpoint
from sslr.cli import main
from sslr.tasks import ClassificationTask
from sslr.tasks.hashing import HashingTask

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "configs" / "quickstart.yaml")
HASH = str(ROOT / "configs" / "hashing" / "quickstart_digits.yaml")
DEBUG = str(ROOT / "configs" / "overlays" / "debug.yaml")


class _Touch:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture(params=["torch.save", "pickle", "inside a checkpoint"])
def evil(request, tmp_path) -> tuple[Path, Path]:
    """(a crafted checkpoint, the marker it would create)."""
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    if request.param == "torch.save":
        torch.save(_Touch(marker), path)
    elif request.param == "pickle":
        path.write_bytes(pickle.dumps(_Touch(marker)))
    else:
        state = ClassificationTask(num_classes=10).state_dict()
        torch.save({"state_dict": state, "epoch": _Touch(marker), "global_step": 0}, path)
    # The file really is malicious: an unrestricted load would run it.
    assert not marker.exists()
    return path, marker


def _one_line(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("sslr: error:"), err[-3000:]
    for needle in needles:
        assert needle in last, last
    return last


def _refused(last: str, evil_path: Path) -> None:
    assert "not a checkpoint sslr can read safely" in last, last
    if evil_path.read_bytes()[:2] == b"PK":  # torch's zip format: refused at the import itself
        assert "it asks to import posix.system" in last or "nt.system" in last, last


CLI_ENTRY_POINTS = {
    "fit --ckpt_path (resume)": ["fit", "--config", QUICK, "--config", DEBUG],
    "validate --ckpt_path": ["validate", "--config", QUICK, "--config", DEBUG],
    "test --ckpt_path": ["test", "--config", QUICK, "--config", DEBUG],
    "predict --ckpt_path": ["predict", "--config", QUICK, "--config", DEBUG],
    "attack --ckpt_path": ["attack", "--config", QUICK, "--config", DEBUG],
}


@pytest.mark.parametrize("entry", sorted(CLI_ENTRY_POINTS))
def test_cli_ckpt_path_never_runs_a_checkpoint(entry, evil, capsys):
    path, marker = evil
    code = main([*CLI_ENTRY_POINTS[entry], "--ckpt_path", str(path)])
    last = _one_line(capsys, code, str(path))
    assert not marker.exists()
    _refused(last, path)


def test_pretrained_ckpt_never_runs_a_checkpoint(evil, capsys):
    path, marker = evil
    code = main(["fit", "--config", QUICK, "--config", DEBUG, "--model.pretrained_ckpt", str(path)])
    _one_line(capsys, code, str(path))
    assert not marker.exists()
    assert not Path("runs/debug/Digits/resnet18_bp/version_0/checkpoints").exists()


def test_python_entry_points_never_run_a_checkpoint(evil, tmp_path):
    from sslr.attack_run import load_surrogate
    from sslr.grid import _keep_metrics
    from sslr.tasks import HashingTask
    from sslr.tasks.backbones import checkpoint_state_dict
    from sslr.trainer import SslrTrainer

    path, marker = evil
    model = _Trainable(num_classes=10)
    trainer = SslrTrainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    data = DataLoader(TensorDataset(torch.rand(4, 3, 32, 32), torch.arange(4)), batch_size=4)
    (tmp_path / "metrics.csv").write_text("step,val/acc\n0,0.5\n")
    calls = {
        "SslrTrainer.attack": lambda: trainer.attack(model, ckpt_path=str(path)),
        "Trainer.validate": lambda: trainer.validate(model, data, ckpt_path=str(path)),
        "Trainer.fit": lambda: trainer.fit(model, data, ckpt_path=str(path)),
        "surrogate (classification)": lambda: load_surrogate(model, path, "cpu"),
        "surrogate (hashing)": lambda: load_surrogate(
            HashingTask.__new__(HashingTask), path, "cpu"
        ),
        "grid's last.ckpt": lambda: _keep_metrics(tmp_path, path).__enter__(),
        "pretrained_ckpt": lambda: checkpoint_state_dict(path),
        "load_checkpoint": lambda: load_checkpoint(path),
        "ClassificationTask.load_from_checkpoint": lambda: ClassificationTask.load_from_checkpoint(
            path
        ),
        "HashingTask.load_from_checkpoint": lambda: HashingTask.load_from_checkpoint(str(path)),
        "load_from_checkpoint(weights_only=False)": lambda: ClassificationTask.load_from_checkpoint(
            path, weights_only=False
        ),
    }
    for name, call in calls.items():
        with pytest.raises(CheckpointError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and str(path) in message, (name, message)
        assert not marker.exists(), name


def test_load_from_checkpoint_rebuilds_the_task_and_opens_unsafely_only_when_asked(tmp_path):
    import lightning

    task = ClassificationTask(num_classes=3, rule="frsf")
    hparams = {**dict(task.hparams), "_class_path": "sslr.ClassificationTask"}
    saved = {"state_dict": task.state_dict(), "hyper_parameters": hparams}
    saved["pytorch-lightning_version"] = lightning.__version__
    torch.save(saved, tmp_path / "good.ckpt")
    loaded = ClassificationTask.load_from_checkpoint(tmp_path / "good.ckpt")
    assert loaded.rule == "frsf" and loaded.hparams.num_classes == 3
    for name, tensor in task.state_dict().items():  # frsf's feedback buffers included
        assert torch.equal(loaded.state_dict()[name], tensor), name
    # Overrides as in Lightning: a saved hyperparameter replaced.
    smoothed = ClassificationTask.load_from_checkpoint(tmp_path / "good.ckpt", label_smoothing=0.1)
    assert smoothed.hparams.label_smoothing == 0.1
    with pytest.raises(CheckpointError, match="is a ClassificationTask checkpoint, not a Hash"):
        HashingTask.load_from_checkpoint(tmp_path / "good.ckpt")

    # A file from elsewhere holding a type sslr never writes: refused, unless opted in.
    saved["hyper_parameters"] = {**hparams, "where": Path("/data")}
    torch.save(saved, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="it asks to import pathlib"):
        ClassificationTask.load_from_checkpoint(tmp_path / "foreign.ckpt")
    opened = ClassificationTask.load_from_checkpoint(tmp_path / "foreign.ckpt", unsafe_pickle=True)
    assert opened.rule == "frsf"


class _Trainable(ClassificationTask):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_cached_torchvision_weights_are_opened_safely(tmp_path, monkeypatch):
    from sslr.tasks.backbones import torchvision_state_dict

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cache.parent.mkdir(parents=True)
    marker = tmp_path / "marker"
    torch.save(_Touch(marker), cache)
    with pytest.raises(CheckpointError, match="posix.system|nt.system"):
        torchvision_state_dict("resnet18", "IMAGENET1K_V1")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "is empty"),
        (b"epoch,loss\n1,0.5\n", "not a torch checkpoint"),
        ("truncated", "truncated or not a torch checkpoint"),
        ("a tensor", "holds a Tensor, not a checkpoint"),
    ],
)
def test_unreadable_files_are_one_line(content, why, tmp_path, capsys):
    path = tmp_path / "bad.ckpt"
    if content == "truncated":
        torch.save({"state_dict": ClassificationTask(num_classes=10).state_dict()}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content == "a tensor":
        torch.save(torch.zeros(3), path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=why):
        load_checkpoint(path, "--ckpt_path")
    code = main(["test", "--config", QUICK, "--config", DEBUG, "--ckpt_path", str(path)])
    _one_line(capsys, code, str(path), why)


def _fake_checkpoint(folder: Path, task) -> Path:
    """A checkpoint as `sslr fit` writes one: the task's state and its CLI hyperparameters."""
    hparams = {**dict(task.hparams), "_class_path": f"sslr.{type(task).__name__}"}
    path = folder / "other.ckpt"
    import lightning

    checkpoint = {"state_dict": task.state_dict(), "hyper_parameters": hparams}
    checkpoint.update({"pytorch-lightning_version": lightning.__version__, "global_step": 0})
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize(
    ("other", "differs"),
    [
        (lambda: ClassificationTask(backbone="resnet34", num_classes=10), "backbone 'resnet34'"),
        (lambda: HashingTask(num_classes=10, bits=16), "task HashingTask"),
        (lambda: ClassificationTask(num_classes=7), "num_classes 7 (config: 10)"),
    ],
    ids=["resnet34", "hashing", "7 classes"],
)
def test_ckpt_path_of_another_model_stops_with_what_differs(other, differs, tmp_path, capsys):
    ckpt = _fake_checkpoint(tmp_path, other())
    code = main(["test", "--config", QUICK, "--config", DEBUG, "--ckpt_path", str(ckpt)])
    _one_line(capsys, code, "does not fit the config", differs)


def test_hashing_bits_differ(tmp_path, capsys):
    ckpt = _fake_checkpoint(tmp_path, HashingTask(num_classes=10, bits=32))
    code = main(["test", "--config", HASH, "--config", DEBUG, "--ckpt_path", str(ckpt)])
    _one_line(capsys, code, "does not fit the config", "bits 32 (config: 16)")


@pytest.mark.parametrize(
    ("other", "says"),
    [
        (lambda: ClassificationTask(backbone="resnet34", num_classes=10), "another backbone"),
        (lambda: HashingTask(num_classes=10, bits=16), "is a HashingTask checkpoint"),
    ],
    ids=["resnet34", "hashing"],
)
def test_pretrained_ckpt_of_another_model_stops(other, says, tmp_path, capsys):
    ckpt = _fake_checkpoint(tmp_path, other())
    args = ["fit", "--config", QUICK, "--config", DEBUG, "--model.pretrained_ckpt", str(ckpt)]
    _one_line(capsys, main(args), says)


def test_pretrained_ckpt_with_a_new_head_names_the_fresh_tensors(tmp_path, caplog):
    ckpt = _fake_checkpoint(tmp_path, ClassificationTask(num_classes=7))
    task = ClassificationTask(num_classes=10, pretrained_ckpt=str(ckpt))
    with caplog.at_level("WARNING", logger="sslr.tasks.backbones"):
        task.load_pretrained_weights()
    assert "fc.weight" in caplog.text and "fc.bias" in caplog.text
    source = torch.load(ckpt, weights_only=True)["state_dict"]
    torch.testing.assert_close(
        task.state_dict()["network.layer1.0.conv1.weight"], source["network.layer1.0.conv1.weight"]
    )


def test_ckpt_path_last_without_a_run_stops(capsys):
    code = main(["test", "--config", QUICK, "--config", DEBUG, "--ckpt_path", "last"])
    _one_line(capsys, code, "--ckpt_path last", "run folder")
