"""The suite sharded across processes: every image attacked exactly once, the same numbers
whatever the number of processes, and finished batches kept so an interrupted attack resumes."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslr.feedback import convert_model
from sslr.robustness import AttackTarget, SuiteConfig, SuiteResult, run_suite
from sslr.robustness.shards import BatchStore, Shard, ShardError, batch_seed

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MEAN, STD = (0.3, 0.3, 0.3), (0.4, 0.4, 0.4)
# 12 images in batches of 4: rank 0 of 2 runs batches 0 and 2, rank 1 batch 1.
SMALL = dict(n_samples=12, batch_size=4, steps=2, queries=10, eps=[0.0, 8 / 255], eot_samples=2)
CLASSIFICATION = dict(
    attacks=["fgsm", "pgd", "apgd-ce", "apgd-dlr", "square", "autoattack"],
    gradients=["rule", "exact", "eot", "transfer"],
    **SMALL,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(inputs: Path, out: Path, world: int) -> dict:
    port = str(_free_port())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WORLD_SIZE": str(world)}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WANDB_MODE="disabled")
    cmd = [sys.executable, str(HERE / "shard_worker.py"), str(inputs), str(out)]
    procs = [
        subprocess.Popen(cmd, env={**env, "RANK": str(r)}, stderr=subprocess.PIPE, text=True)
        for r in range(world)
    ]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    for p, err in zip(procs, errors, strict=True):
        assert p.returncode == 0, err[-3000:]
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def sharded_and_single(trained_cnn, digits, tmp_path_factory):
    """The same cases run by one process and by two (gloo): their results."""
    folder = tmp_path_factory.mktemp("shards")
    _, (x_test, y_test) = digits
    generator = torch.Generator().manual_seed(0)
    db_labels = torch.nn.functional.one_hot(torch.arange(24) % 4, 4).float()
    # The trained CNN's features under a new 8-bit head (seeded in the worker).
    hashing_state = {k: v for k, v in trained_cnn.state_dict().items() if "classifier" not in k}
    cases = {
        "classification brsf": {
            "model": {
                "task": "classification",
                "rule": "brsf",
                "state": _flat(trained_cnn.state_dict()),
                "mean": MEAN,
                "std": STD,
                "x": x_test[:12].clone(),
                "y": y_test[:12].clone(),
            },
            "config": CLASSIFICATION,
        },
        "hashing usf": {
            "model": {
                "task": "hashing",
                "rule": "usf",
                "bits": 8,
                "state": _flat(hashing_state),
                "mean": MEAN,
                "std": STD,
                "x": x_test[:12].clone(),
                "labels": torch.nn.functional.one_hot(torch.arange(12) % 4, 4).float(),
                "db_x": torch.rand(24, 3, 16, 16, generator=generator),
                "db_labels": db_labels,
            },
            "config": dict(
                attacks=["pgd", "hag", "p2p", "dhta"], gradients=["rule", "exact"], **SMALL
            ),
        },
    }
    inputs = folder / "inputs.pt"
    torch.save(cases, inputs)
    single = _run_workers(inputs, folder / "one.pt", 1)
    double = _run_workers(inputs, folder / "two.pt", 2)
    return single, double


def _flat(state: dict) -> dict:
    """The SmallCNN's state dict as the worker's nn.Sequential names it."""
    names = {"features.0": "0", "features.1": "1", "features.4": "4", "classifier": "8"}
    out = {}
    for key, value in state.items():
        prefix, _, rest = key.rpartition(".")
        out[f"{names.get(prefix, prefix)}.{rest}"] = value
    return out


@pytest.mark.parametrize("case", ["classification brsf", "hashing usf"])
def test_two_processes_give_the_numbers_of_one(sharded_and_single, case):
    single, double = (r[case] for r in sharded_and_single)
    assert single["rows"] == double["rows"]  # every row, every float, the same
    assert single["per_image"].keys() == double["per_image"].keys()
    for key, outcome in single["per_image"].items():
        assert torch.equal(outcome, double["per_image"][key]), key
    assert (single["gradients"], single["degenerate"]) == (
        double["gradients"],
        double["degenerate"],
    )
    cells = {(r["attack"], r["gradient"]) for r in single["rows"]}
    if case.startswith("classification"):
        assert {("apgd-dlr", "eot"), ("square", "none"), ("autoattack", "transfer")} <= cells
        clean = next(r["accuracy"] for r in single["rows"] if r["eps"] == 0)
        worst = next(
            r["accuracy"] for r in single["rows"] if r["attack"] == "worst" and r["eps"] > 0
        )
        assert worst < clean  # the attacks did something: the comparison is not of no-ops
    else:
        assert {("p2p", "rule"), ("dhta", "exact"), ("hag", "rule")} <= cells
    assert all(r["n"] == 12 for r in single["rows"])  # every image once, no padding


def test_batch_seeds_depend_on_the_batch_alone():
    assert batch_seed(7, 0) == 7  # a one-batch suite keeps its numbers
    seeds = [batch_seed(7, k) for k in range(1, 50)]
    assert len(set(seeds)) == 49 and 7 not in seeds
    assert seeds == [batch_seed(7, k) for k in range(1, 50)]


def test_a_rerun_redoes_only_the_batches_it_lacks(trained_cnn, test_subset, tmp_path):
    """An interrupted attack keeps its finished batches: the rerun (here on 2 shards of one
    process, as if with another number of processes) redoes only the missing ones and ends
    with the uninterrupted numbers."""
    target = AttackTarget(convert_model(copy.deepcopy(trained_cnn), "brsf", seed=1), MEAN, STD, 10)
    x, y = test_subset[0][:12], test_subset[1][:12]
    data = torch.utils.data.TensorDataset(x, y)
    config = SuiteConfig(attacks=["pgd"], gradients=["rule", "exact"], **SMALL)
    plain = SuiteResult()
    run_suite(target, data, config, result=plain, warn_train_mode=False)

    class Counting(BatchStore):
        puts: list = []

        def put(self, cell, batch, record):
            self.puts.append((cell, batch))
            super().put(cell, batch, record)

    store = Counting(tmp_path / "batches", "id")
    run_suite(target, data, config, store=store, warn_train_mode=False)
    assert len(store.puts) == 2 * 3  # 2 cells (rule, exact at 8/255) x 3 batches
    files = sorted((tmp_path / "batches").rglob("*.pt"))
    assert len(files) == 6
    files[0].unlink()  # in flight when killed: never written
    files[-1].write_bytes(files[-1].read_bytes()[:10])  # a torn file is redone too
    store.puts.clear()
    resumed = SuiteResult()
    run_suite(target, data, config, store=Counting(tmp_path / "batches", "id"), result=resumed)
    assert len(store.puts) == 2
    assert resumed.rows == plain.rows
    for key, outcome in plain.per_image.items():
        assert torch.equal(outcome, resumed.per_image[key]), key
    # A store made for another checkpoint or suite is not reused.
    stale = Counting(tmp_path / "batches", "another identity")
    store.puts.clear()
    run_suite(target, data, config, store=stale, warn_train_mode=False)
    assert len(store.puts) == 6


def test_a_failure_on_one_process_stops_every_process_with_its_message():
    """Shard.merge: the process that failed raises its own error, the others one line."""
    parts = [{"error": "ValueError: the data ran out"}, {"done": {}}]
    healthy = Shard(1, 2, gather_fn=lambda local: [parts[0], local])
    with pytest.raises(ShardError, match="stopped on process 0: ValueError: the data ran out"):
        healthy.merge({})
    failed = Shard(0, 2, gather_fn=lambda local: [local, parts[1]])
    with pytest.raises(ValueError, match="the data ran out"):
        failed.merge(ValueError("the data ran out"))
    whole = Shard(0, 2, gather_fn=lambda local: [local, {"done": {1: "b"}}]).merge({0: "a"})
    assert whole == {0: "a", 1: "b"}
