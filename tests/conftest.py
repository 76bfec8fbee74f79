"""Hermetic tests: no W&B traffic or files unless a test asks for offline mode itself."""

import os

os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("WANDB_SILENT", "true")


import contextlib  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _chdir(folder: Path):
    old = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


@pytest.fixture(scope="session")
def bp_digits_run(tmp_path_factory) -> Path:
    """The run folder of resnet18 trained with BP on Digits by the quickstart (4 epochs, about
    a minute on the CPU), made once per session.

    Tests that need a model that has learned start from its checkpoints/best.ckpt (read it, or
    fine-tune from it with --model.pretrained_ckpt) instead of training one from scratch: their
    outcome must not hinge on the floating-point path of a short from-scratch run.
    """
    from sslr.cli import main

    folder = tmp_path_factory.mktemp("bp_digits")
    args = ["fit", "--config", str(ROOT / "configs" / "quickstart.yaml")]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.logger.save_dir", "runs"]
    with _chdir(folder):
        assert main(args) == 0
    run = folder / "runs" / "Digits" / "resnet18_bp" / "version_0"
    # All 4 epochs ran (Lightning ends a fit early, with status 0, on SIGTERM).
    from sslr.checkpoints import load_checkpoint

    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 3
    return run
