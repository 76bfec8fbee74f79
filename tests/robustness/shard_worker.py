"""One process of a sharded suite, for tests/robustness/test_robustness_shards.py:
``python shard_worker.py <inputs.pt> <outputs.pt>`` with RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT set (gloo on the CPU). Rank 0 saves every case's rows and per-image outcomes."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sslr.feedback import convert_model
from sslr.robustness import AttackTarget, HashingTarget, SuiteConfig, SuiteResult, run_suite
from sslr.robustness.shards import Shard


def small_cnn(num_outputs: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, num_outputs),
    )


def build(spec: dict):
    """(target, surrogate, data) of one case of the inputs file."""
    mean, std = spec["mean"], spec["std"]
    torch.manual_seed(0)  # what the state does not set (a hashing head) is the same everywhere
    if spec["task"] == "classification":
        bp = small_cnn(10)
        bp.load_state_dict(spec["state"])
        network = convert_model(small_cnn(10), spec["rule"], seed=3)
        network.load_state_dict(spec["state"], strict=False)  # feedback state: from seed 3
        target = AttackTarget(network.eval(), mean, std, 10)
        surrogate = AttackTarget(bp.eval(), mean, std, 10)
        return target, surrogate, TensorDataset(spec["x"], spec["y"])
    network = convert_model(small_cnn(spec["bits"]), spec["rule"], seed=3)
    network.load_state_dict(spec["state"], strict=False)
    target = HashingTarget(network.eval(), mean, std, spec["bits"])
    queries = DataLoader(TensorDataset(spec["x"], spec["labels"]), batch_size=8)
    database = DataLoader(TensorDataset(spec["db_x"], spec["db_labels"]), batch_size=8)
    return target, None, [queries, database]


def main(inputs: str, outputs: str) -> None:
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    shard = Shard(rank, world)
    results = {}
    for name, case in torch.load(inputs, weights_only=False).items():
        target, surrogate, data = build(case["model"])
        result = SuiteResult()
        config = SuiteConfig(**case["config"])
        run_suite(target, data, config, surrogate=surrogate, result=result, shard=shard)
        results[name] = {
            "rows": [r.__dict__ for r in result.rows],
            "per_image": {k: v.cpu() for k, v in result.per_image.items()},
            "gradients": result.gradients,
            "degenerate": result.degenerate,
        }
    if rank == 0:
        torch.save(results, outputs)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
