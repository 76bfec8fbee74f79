"""Two CPU processes under Lightning's DDP: each trains on its own half of every epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys, torch, lightning as L, torch.nn.functional as F
from torch import nn
from sslr.data import Digits
torch.set_num_threads(1)

class Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3 * 16 * 16, 10)
        self.seen = []
    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append(y)
        return F.cross_entropy(self.lin(x.flatten(1)), y)
    def on_train_end(self):
        with open(f"rank{self.global_rank}.json", "w") as f:
            json.dump(torch.cat(self.seen).tolist(), f)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

dm = Digits(batch_size=64, image_size=16, on_device=sys.argv[1] == "1")
L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
          limit_val_batches=0, num_sanity_val_steps=0).fit(Recorder(), datamodule=dm)
"""


@pytest.mark.slow
@pytest.mark.parametrize("on_device", ["0", "1"])
def test_ddp_ranks_share_one_permutation(on_device, tmp_path):
    from sslr.data import Digits
    from sslr.data.loaders import EpochBatchSampler

    script = tmp_path / "ddp_digits.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    out = subprocess.run(
        [sys.executable, str(script), on_device],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = {r: json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)}
    dm = Digits(image_size=16)
    dm.setup()
    y_train = dm.split("train")[1]
    for rank in (0, 1):
        sampler = EpochBatchSampler(y_train.numel(), 64, seed=0, num_replicas=2, rank=rank)
        assert seen[rank] == y_train[sampler.indices()].tolist()
    assert len(seen[0]) == len(seen[1]) == -(-y_train.numel() // 2)  # equal halves
    # Together the two halves are the whole training split (plus one wrap-around example).
    both = torch.bincount(torch.tensor(seen[0] + seen[1]), minlength=10)
    assert int((both - torch.bincount(y_train, minlength=10)).sum()) == -y_train.numel() % 2
