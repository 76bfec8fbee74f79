"""Shared fixtures: one short hashing run of the quickstart config through the CLI users run
(resnet18, 16 bits, DCH, BP from scratch) on a small Digits protocol at 16 px, and what the
task and attack tests need from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "configs" / "hashing" / "quickstart_digits.yaml")

# The quickstart protocol shrunk for tests: 300 training images (30 per class), 100 test
# queries, a 300-image database, 16 px, 5 epochs validated once at the end (~15 s on a quiet
# 2-core machine).
SMALL = [
    *("--data.init_args.train_per_class", "30", "--data.init_args.query_per_class", "10"),
    *("--data.init_args.database_size", "300", "--data.init_args.val_queries", "50"),
    *("--data.init_args.image_size", "16", "--data.init_args.batch_size", "50"),
    *("--trainer.max_epochs", "5", "--trainer.check_val_every_n_epoch", "5"),
    *("--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false"),
    *("--trainer.enable_model_summary", "false"),
]


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """One intra-op thread: on a small shared CPU, OpenMP's spinning threads make these small
    models slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def quick_args() -> list[str]:
    """``--config`` of the quickstart and the overrides of the small protocol."""
    return ["--config", QUICK, *SMALL]


@pytest.fixture(scope="session")
def trained(tmp_path_factory, quick_args):
    """The CLI after ``sslr fit`` of the small quickstart: ``.model`` (HashingTask, eval mode),
    ``.datamodule``, ``.trainer``; its run folder is ``trained.run_dir``. Do not modify the
    model: tests that change it take a copy."""
    from sslr.cli import run

    runs = tmp_path_factory.mktemp("hashing") / "runs"
    cli = run(["fit", *quick_args, "--trainer.logger.init_args.save_dir", str(runs)])
    cli.run_dir = Path(cli.trainer.log_dir)
    cli.model.eval()
    return cli
