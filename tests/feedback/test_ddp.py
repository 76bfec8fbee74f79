"""DDP: two CPU processes (gloo) give the gradients of one process on the whole batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from feedback_helpers import NETWORK_RULES as RULES
from torch import nn

from sslr.feedback import convert_model

BATCH = 4


def build() -> nn.Sequential:
    torch.manual_seed(0)  # no BatchNorm: per-rank statistics would differ from one process
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.Tanh(),
        nn.Linear(8, 3),
    )  # fmt: skip


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, 8, 8, generator=generator)
    return x, torch.randint(0, 3, (BATCH,), generator=generator)


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    nn.functional.cross_entropy(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _worker(rank: int, world_size: int, directory: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{directory}/store", rank=rank, world_size=world_size
    )
    try:
        for rule in RULES:
            model = build()
            torch.manual_seed(100 + rank)  # the ranks' seeds differ: DDP must reconcile
            model = convert_model(model, rule)  # seed=None: from the global RNG
            ddp = nn.parallel.DistributedDataParallel(model)  # broadcasts rank 0's state
            if rank == 0:
                torch.save(model.state_dict(), f"{directory}/{rule}-init.pt")
            x, y = data()
            shard = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
            grads = {}
            for step in range(2):  # brsf: two draws
                ddp.zero_grad()
                train_step(ddp, x[shard], y[shard])
                grads[step] = {n: p.grad.clone() for n, p in model.named_parameters()}
            buffers = {n: b.clone() for n, b in model.named_buffers()}
            torch.save({"grads": grads, "buffers": buffers}, f"{directory}/{rule}-{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_matches_one_process(tmp_path):
    world_size = 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(world_size, str(tmp_path)), nprocs=world_size, join=True)
    x, y = data()
    for rule in RULES:
        ranks = [torch.load(tmp_path / f"{rule}-{r}.pt") for r in range(world_size)]
        for name, buffer in ranks[0]["buffers"].items():  # fa/frsf M, brsf seed and count
            assert torch.equal(buffer, ranks[1]["buffers"][name]), (rule, name)
        if rule in ("fa", "frsf"):
            assert ranks[0]["buffers"], rule
        single = convert_model(build(), rule, seed=12345)
        single.load_state_dict(torch.load(tmp_path / f"{rule}-init.pt"))
        for step in range(2):
            single.zero_grad()
            expected = train_step(single, x, y)
            for r in range(world_size):
                for name, grad in ranks[r]["grads"][step].items():
                    torch.testing.assert_close(grad, expected[name], msg=f"{rule} {name}")


@pytest.mark.parametrize("rule", ["fa", "frsf"])
def test_seed_none_differs_without_ddp(rule):
    # The control for the test above: without DDP's broadcast the ranks' M would differ.
    a, b = build(), build()
    torch.manual_seed(100)
    a = convert_model(a, rule)
    torch.manual_seed(101)
    b = convert_model(b, rule)
    assert not all(torch.equal(p, q) for p, q in zip(a.buffers(), b.buffers(), strict=True))
