"""The tasks' ``compile`` switch: validated at construction, applied once when a Trainer first
runs the task, the same weights and checkpoint keys as an eager run."""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from lightning.pytorch import Trainer
from torch import nn

from sslr.data import Digits
from sslr.tasks import ClassificationTask, HashingTask

pytestmark = pytest.mark.skipif(
    not torch._dynamo.is_dynamo_supported(), reason="torch.compile is not supported here"
)


@pytest.mark.parametrize("task", [ClassificationTask, HashingTask])
def test_an_unknown_compile_mode_is_one_line_listing_the_modes(task):
    with pytest.raises(ValueError, match="max-autotune-no-cudagraphs.*got 'fastest'"):
        task(compile="fastest")


def _fit(task, tmp_path, steps=2):
    data = Digits(batch_size=16, num_workers=0)  # a fresh one: its augmentation stream restarts
    torch.manual_seed(0)
    task.configure_optimizers = lambda: torch.optim.SGD(task.parameters(), lr=0.05)
    trainer = Trainer(
        max_steps=steps,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(task, datamodule=data)
    trainer.validate(task, datamodule=data, verbose=False)
    return {k: v.detach().clone() for k, v in task.state_dict().items()}


def _usf_pair(mode):
    """A usf resnet18 task (seed 0), an identical copy with ``compile=mode``, and its weights."""
    data = Digits(batch_size=16, num_workers=0)
    torch.manual_seed(0)
    eager = ClassificationTask(
        "resnet18", data.num_classes, rule="usf", small_input=True, mean=data.mean, std=data.std
    )
    compiled = copy.deepcopy(eager)
    compiled.hparams["compile"] = mode
    return eager, compiled, {k: v.detach().clone() for k, v in eager.state_dict().items()}


@pytest.fixture
def eager_dynamo(monkeypatch):
    """nn.Module.compile through dynamo's eager backend (tracing without code generation, fast
    on a CPU), recording the modes it was asked for."""
    modes = []
    original = nn.Module.compile

    def compile_eager(self, *args, mode=None, **kwargs):
        modes.append(mode)
        return original(self, backend="eager")

    monkeypatch.setattr(nn.Module, "compile", compile_eager)
    torch._dynamo.reset()
    yield modes
    torch._dynamo.reset()


@pytest.mark.parametrize("mode", [True, "max-autotune-no-cudagraphs"])
def test_compiled_usf_run_trains_the_same_weights_as_eager(eager_dynamo, tmp_path, mode):
    eager, compiled, initial = _usf_pair(mode)
    want = _fit(eager, tmp_path / "eager")
    assert eager_dynamo == []  # compile=False never compiles
    got = _fit(compiled, tmp_path / "compiled")
    # compiled once (fit then validate), with the mode asked for (True: torch's default)
    assert eager_dynamo == [None if mode is True else mode]
    assert got.keys() == want.keys()  # checkpoints keep their keys: no _orig_mod prefix
    moved = [k for k in want if not torch.equal(want[k], initial[k])]
    assert moved, "the run trained nothing"
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.slow
def test_inductor_compiled_usf_step_matches_eager(tmp_path):
    """The real thing: inductor's generated code (a C++ compiler on the CPU; about a minute).
    Its fused kernels round differently, so one step's update is compared, not the bits:
    measured here the weights differ by at most 6% of their layer's largest update (in
    layer4, where BP compiled differs from BP eager by 4% too), under 1% in most layers."""
    torch._dynamo.reset()
    eager, compiled, initial = _usf_pair(True)
    want = _fit(eager, tmp_path / "eager", steps=1)
    got = _fit(compiled, tmp_path / "compiled", steps=1)
    for key, value in want.items():
        if value.is_floating_point():
            update = (value - initial[key]).abs().max().item()
            diff = (got[key] - value).abs().max().item()
            assert diff <= 0.2 * update + 1e-7, (key, diff, update)
    torch._dynamo.reset()
