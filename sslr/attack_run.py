"""One ``sslr attack`` run, in the application layer: load the checkpoint (and the ``transfer``
surrogate), hand the models to the evaluation engine, keep the results, print their table.

Where results go: a folder per attack run, ``<run>/attacks/<checkpoint>-<key>/``, holding
``suite.yaml`` (the resolved suite settings and the checkpoint attacked), ``robustness.csv``
(with the ``worst`` rows: the robust accuracy to quote), ``robustness.png`` and
``masking.csv`` (the gradient-masking verdict, one row per check, also printed); ``<key>`` is a hash of those settings. Two attacks with different
settings keep both results; the same attack again rewrites its own folder with the same rows.
A caller that names ``out_dir`` (the grid) gets the files there instead.

Every checkpoint this command opens is opened in :func:`load_weights` and
:func:`load_surrogate`, and nowhere else.

The former hashing options (``--hashing.*``) are refused with one line naming the
``--suite.*`` key that replaced them (:class:`RetiredHashingOptions`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from sslr.atomic import FolderLock, atomic_write
from sslr.errors import UserError
from sslr.masking import format_verdict, verdict
from sslr.results import RobustnessRow, format_table
from sslr.robustness import SuiteConfig, SuiteResult, prepare_suite, run_suite
from sslr.robustness.config import RENAMED
from sslr.robustness.shards import SINGLE, BatchStore, Shard
from sslr.robustness.suite import check_suite


@dataclass
class RetiredHashingOptions:
    """The options of the former ``--hashing`` group: any of them set is one error naming the
    ``--suite`` key to use (one configuration serves both tasks)."""

    attacks: object = None
    norms: object = None
    eps: object = None
    eps_l2: object = None
    steps: object = None
    step: object = None
    random_start: object = None
    gradients: object = None
    eot_samples: object = None
    hag_margin: object = None
    dhta_anchors: object = None
    n_queries: object = None
    seed: object = None
    batch_size: object = None
    surrogate_ckpt: object = None

    def __post_init__(self) -> None:
        for old in (f.name for f in dataclasses.fields(self)):
            if getattr(self, old) is not None:
                new = RENAMED[old]
                note = " (relative: alpha = step_size * eps / steps)" if old == "step" else ""
                raise UserError(
                    f"--hashing.{old} is gone: use --suite.{new}{note}; one --suite serves "
                    "classification and hashing checkpoints"
                )


def load_weights(model, ckpt_path: str, weights_only: bool = True) -> None:
    """Load a Lightning checkpoint into ``model`` in place, rule and feedback state included
    (the one place this command opens the attacked checkpoint). The file is opened safely and
    must fit ``model`` whatever ``weights_only`` says (kept for callers)."""
    from sslr import checkpoints

    del weights_only  # no checkpoint is ever opened unsafely
    checkpoint = checkpoints.load_checkpoint(ckpt_path, "--ckpt_path")
    checkpoints.check_fits(checkpoint, model, ckpt_path, "--ckpt_path")
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])


def load_surrogate(model, ckpt_path: str, device):
    """The ``transfer`` surrogate: a model of ``model``'s task from ``ckpt_path``, in eval
    mode on ``device`` (opened safely; another task's checkpoint stops with one line)."""
    from sslr.checkpoints import load_task
    from sslr.tasks import ClassificationTask, HashingTask

    kind = HashingTask if isinstance(model, HashingTask) else ClassificationTask
    return load_task(kind, ckpt_path, "--suite.surrogate_ckpt", map_location=device).eval()


def check_attack(model, config: SuiteConfig, surrogate=None) -> None:
    """Every check the evaluation engine makes of ``config`` for ``model`` (and the loaded
    ``surrogate``), as one :class:`UserError` line: called before any folder or lock exists,
    so that a refused attack leaves nothing behind."""
    try:
        check_suite(config, model, surrogate if surrogate is not None else config.surrogate_ckpt)
    except ValueError as err:
        raise UserError(str(err)) from None


def attack_folder(run_dir: Path, ckpt_path: str, settings: dict) -> Path:
    """``<run>/attacks/<checkpoint>-<key>``: one folder per distinct attack of a run."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return run_dir / "attacks" / f"{Path(ckpt_path).stem}-{key}"


def resolved_settings(config: SuiteConfig, task: str, ckpt_path: str) -> dict:
    """What distinguishes one attack run from another: every suite setting as resolved for
    ``task`` (the default attacks spelled out) and the checkpoint."""
    settings = dataclasses.asdict(config)
    settings["attacks"] = list(config.attacks_for(task))
    settings["checkpoint"] = str(Path(ckpt_path).resolve())
    return settings


def attack_checkpoint(
    model,
    datamodule,
    ckpt_path: str,
    config: SuiteConfig | None = None,
    *,
    device=None,
    loggers: Iterable = (),
    run_dir: Path | None = None,
    out_dir: str | Path | None = None,
    weights_only: bool = True,
    say: Callable[[str], None] = print,
    result: SuiteResult | None = None,
    shard: Shard = SINGLE,
) -> list[RobustnessRow]:
    """Attack the checkpoint ``ckpt_path`` with ``model``'s architecture: load it, run the
    suite on ``datamodule``'s test split, write the results (see the module docstring), log
    them to ``loggers`` and print their table through ``say``. Returns the rows.

    ``shard``: this process's share when several run the attack (``sslr attack
    --trainer.strategy ddp``): every process attacks its batches, rank 0 alone holds the
    folder's lock, writes the files and logs. Finished batches are kept in the folder
    (``.batches/``) until the attack ends, so the same command after a kill resumes."""
    config = config or SuiteConfig()
    load_weights(model, ckpt_path, weights_only=weights_only)
    if device is not None:
        model.to(device)
    model.eval()
    task = "hashing" if "bits" in getattr(model, "hparams", {}) else "classification"
    check_attack(model, config)
    surrogate = None
    if config.wants_transfer and config.surrogate_ckpt is not None:
        surrogate = load_surrogate(model, config.surrogate_ckpt, device or "cpu")
        check_attack(model, config, surrogate)  # its class count too
    failure: Exception | None = None
    try:  # the data and each attack's targets, still before any folder or lock exists
        prepared = prepare_suite(model, datamodule, config, surrogate, shard=shard)
    except ValueError as err:
        failure = UserError(str(err))
    except Exception as err:  # said to the other processes before it stops this one
        failure = err
    settings = resolved_settings(config, task, ckpt_path)
    if out_dir is not None:
        folder = Path(out_dir)
    else:
        folder = attack_folder(Path(run_dir or Path(ckpt_path).parent), ckpt_path, settings)
    identity = json.dumps({**settings, "sha256": _sha256(ckpt_path)}, sort_keys=True)
    result = result if result is not None else SuiteResult()
    with contextlib.ExitStack() as held:
        try:  # rank 0 makes the folder, takes its lock and opens the batch store
            if shard.rank == 0 and failure is None:
                folder.mkdir(parents=True, exist_ok=True)
                held.enter_context(FolderLock(folder, "attack"))
                BatchStore(folder / BATCHES, identity)
        except Exception as err:
            failure = err
        # Every process waits for rank 0 here, and stops with one line if any has failed.
        shard.merge(failure if failure is not None else {})
        store = BatchStore(folder / BATCHES, identity, create=False)
        say(f"sslr attack: {ckpt_path} (rule {model.rule}, {task}) -> {folder}")
        rows = run_suite(
            model,
            datamodule,
            config,
            surrogate=surrogate,
            loggers=loggers,
            out_dir=folder,
            progress=say,
            result=result,
            prepared=prepared,
            shard=shard,
            store=store,
        )
        outcomes = {key[:4]: units.tolist() for key, units in result.per_unit.items()}
        checks = verdict(rows, degenerate_share=result.degenerate_share, outcomes=outcomes)
        if shard.rank == 0:
            write_masking(checks, folder / MASKING_CSV)
            atomic_write(folder / "suite.yaml", yaml.safe_dump(settings, sort_keys=False))
            store.remove()  # finished: the results are in the folder's files
    say(format_table(rows))
    say(format_verdict(checks))
    return rows


BATCHES = ".batches"  # the attack's finished batches, until it ends (sslr.robustness.shards)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


MASKING_CSV = "masking.csv"
MASKING_COLUMNS = ("check", "metric", "value", "threshold", "flagged", "where", "test", "p_value")


def write_masking(checks, path: Path) -> Path:
    """``masking.csv``: one row per check of the verdict (check, metric, value, threshold,
    flagged, where it was worst), written atomically."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(MASKING_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for check in checks:
        writer.writerow(check.as_row())
    atomic_write(path, out.getvalue())
    return path
