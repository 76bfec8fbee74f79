"""Opening checkpoints without running them, and checking that they fit the config.

A checkpoint is a pickle, and an unrestricted ``torch.load`` imports and calls whatever the file
names (``os.system`` included): opening a checkpoint someone sent must never execute it. Every
path in sslr that opens a checkpoint or weights file goes through :func:`load_checkpoint`, which
loads with ``weights_only=True`` and allows exactly the types sslr writes (:data:`SAFE_GLOBALS`,
beyond torch's tensors, containers and numbers). Lightning's own loading inside the Trainer
(``--ckpt_path`` of fit, validate, test and predict) goes through :class:`SafeCheckpointIO`,
which also writes checkpoints atomically (complete or absent after a ``kill -9``).

Whatever is wrong with a file (missing, empty, truncated, not a checkpoint, refused) becomes one
:class:`~sslr.errors.UserError` line naming the file and why.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from sslr.atomic import atomic_write_with
from sslr.errors import UserError

__all__ = [
    "SAFE_GLOBALS",
    "CheckpointError",
    "SafeCheckpointIO",
    "load_checkpoint",
    "load_task",
]

SAFE_GLOBALS: list = []
"""Types an sslr checkpoint holds beyond what torch's weights-only unpickler allows by default.

Lightning's checkpoints of sslr's tasks hold only tensors, dicts, lists, strings and numbers
(the CLI saves optimizer and scheduler as their config, HashingTask drops callables from its
hyperparameters), so the list is empty: any other global is refused. A type added here must be
one sslr itself writes; ``tests/app/test_checkpoints.py`` checks every checkpoint sslr writes
loads with exactly this list.
"""


class CheckpointError(UserError):
    """A checkpoint file that cannot be read safely, or that does not fit the config."""


def load_checkpoint(
    path: str | os.PathLike, what: str = "checkpoint", map_location: Any = "cpu", **kwargs
) -> dict:
    """The dict in ``path``, loaded without running code; one :class:`CheckpointError` line if not.

    Args:
        path: a ``.ckpt`` written by ``sslr fit`` or a saved state dict.
        what: how the user gave the file (``--ckpt_path``, ``pretrained_ckpt``, ...), for the
            message.
        map_location: passed to ``torch.load``.
        kwargs: other ``torch.load`` options (``mmap``).
    """
    file = Path(path)
    where = f"{what} {str(path)!r}"
    if not file.is_file():
        raise CheckpointError(
            f"{where} does not exist: give the path of a .ckpt written by `sslr fit` "
            "(runs/<name>/version_<k>/checkpoints/{best,last}.ckpt)"
        )
    if file.stat().st_size == 0:
        raise CheckpointError(f"{where} is empty (0 bytes): an interrupted copy? Copy it again")
    if kwargs.get("mmap") and not zipfile.is_zipfile(file):
        kwargs.pop("mmap")  # torch maps only its zip format; anything else is read and refused
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(file, map_location=map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{where} is {_refusal(err)}") from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"{where} is truncated or not a torch checkpoint ({_first_line(err)}): copy it again "
            "or give a .ckpt written by `sslr fit`"
        ) from err
    except Exception as err:  # arbitrary bytes make the unpickler fail in arbitrary ways
        raise CheckpointError(
            f"{where} is not a torch checkpoint ({type(err).__name__}: {_first_line(err)}): "
            "give a .ckpt written by `sslr fit`"
        ) from err
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{where} holds a {type(obj).__name__}, not a checkpoint or state dict: give a .ckpt "
            "written by `sslr fit`"
        )
    return obj


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _refusal(err: pickle.UnpicklingError) -> str:
    """Why torch's weights-only unpickler refused a file, as the end of a sentence."""
    text = str(err)
    found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"global[: ]+([\w.]+)", text)
    if found:
        return (
            f"not a checkpoint sslr can read safely: it asks to import {found.group(1)}, which "
            "sslr never writes; do not open it with a plain torch.load either"
        )
    if "Weights only load failed" in text:
        found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\s*\n|Check the|$)", text, re.S)
        detail = " ".join(found.group(1).split()) if found else "unknown"
        return (
            f"not a checkpoint sslr can read safely: it is not plain tensors and numbers "
            f"({detail}); give a .ckpt written by `sslr fit`"
        )
    first = text.strip().splitlines()[0] if text.strip() else "unreadable pickle"
    return f"not a torch checkpoint ({first}): give a .ckpt written by `sslr fit`"


def load_task(
    cls: type,
    path: str | os.PathLike,
    what: str,
    map_location: Any = "cpu",
    *,
    hparams_file: str | os.PathLike | None = None,
    strict: bool | None = True,
    **overrides: Any,
):
    """A task of class ``cls`` rebuilt from its checkpoint (hyperparameters and weights), safely.

    Lightning's ``load_from_checkpoint`` opens the file itself; this loads it through
    :func:`load_checkpoint` and hands the dict to Lightning's rebuilding step. As there,
    ``hparams_file`` (a .yaml) replaces the saved hyperparameters and ``overrides`` are laid
    over them.
    """
    from lightning.pytorch.core.saving import _load_state, load_hparams_from_yaml

    checkpoint = load_checkpoint(path, what, map_location=map_location)
    if "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{what} {str(path)!r} holds no state_dict: give a .ckpt written by `sslr fit`"
        )
    check_task_class(checkpoint, cls, path, what)
    if hparams_file is not None:
        if Path(hparams_file).suffix.lower() not in (".yaml", ".yml"):
            raise CheckpointError(f"hparams_file {str(hparams_file)!r} must be a .yaml file")
        checkpoint["hyper_parameters"] = load_hparams_from_yaml(hparams_file)
    checkpoint.setdefault("hyper_parameters", {}).update(overrides)
    model = _load_state(cls, checkpoint, strict=strict, **overrides)
    device = map_location if isinstance(map_location, (str, torch.device)) else None
    return model.to(device) if device is not None else model


def check_task_class(checkpoint: dict, cls: type, path, what: str) -> None:
    """Stop when a checkpoint is of another task than ``cls`` (hashing vs classification)."""
    written = _written_class(checkpoint)
    if written and written != cls.__name__:
        raise CheckpointError(
            f"{what} {str(path)!r} is a {written} checkpoint, not a {cls.__name__}: give a "
            f"checkpoint of a {cls.__name__} run"
        )


FITTING_HPARAMS = ("backbone", "num_classes", "bits", "small_input")
"""Hyperparameters that fix the network's shape: a checkpoint must agree on every one."""


def check_fits(checkpoint: dict, model, path=None, what: str = "--ckpt_path") -> None:
    """Stop with one line saying what differs when ``checkpoint`` is not of ``model``'s config.

    Compares the task class, :data:`FITTING_HPARAMS` and then every tensor name and shape, so
    that a checkpoint of another task, backbone, class count or bit width never silently
    replaces the configured model.
    """
    where = f"{what} {str(path)!r}" if path else f"the {what} checkpoint"
    saved = checkpoint.get("hyper_parameters") or {}
    own = getattr(model, "hparams", {}) or {}
    diffs = []
    written = _written_class(checkpoint)
    if written and written != type(model).__name__:
        diffs.append(f"task {written} (config: {type(model).__name__})")
    for key in FITTING_HPARAMS:
        if key in saved and key in own and saved[key] != own[key]:
            diffs.append(f"{key} {saved[key]!r} (config: {own[key]!r})")
    state = checkpoint.get("state_dict")
    if not diffs and isinstance(state, dict):
        mine = model.state_dict()
        missing = sorted(mine.keys() - state.keys())
        extra = sorted(state.keys() - mine.keys())
        shapes = sorted(
            k
            for k in mine.keys() & state.keys()
            if isinstance(state[k], torch.Tensor) and state[k].shape != mine[k].shape
        )
        for label, names in (
            ("missing", missing),
            ("unexpected", extra),
            ("of other shape", shapes),
        ):
            if names:
                diffs.append(f"{len(names)} tensors {label} (first: {names[0]})")
    if diffs:
        raise CheckpointError(
            f"{where} does not fit the config: {'; '.join(diffs)}. Give a checkpoint of a run "
            "with this config, or that run's own config (--config <run>/config.yaml)"
        )


def check_config_fits(checkpoint: dict, model_config, path) -> None:
    """The early, cheap form of :func:`check_fits`: against the parsed ``model`` config, before
    any class is built (class count is linked from the data, so it is checked later)."""
    if model_config is None or not hasattr(model_config, "get"):
        return
    saved = checkpoint.get("hyper_parameters") or {}
    wanted = str(model_config.get("class_path") or "").rsplit(".", 1)[-1]
    init = model_config.get("init_args") or {}
    diffs = []
    written = _written_class(checkpoint)
    if written and wanted and written != wanted:
        diffs.append(f"task {written} (config: {wanted})")
    for key in ("backbone", "bits", "small_input"):
        if key in saved and init.get(key) is not None and saved[key] != init.get(key):
            diffs.append(f"{key} {saved[key]!r} (config: {init.get(key)!r})")
    if diffs:
        raise CheckpointError(
            f"--ckpt_path {str(path)!r} does not fit the config: {'; '.join(diffs)}. Give a "
            "checkpoint of a run with this config, or that run's own config "
            "(--config <run>/config.yaml)"
        )


def _written_class(checkpoint: dict) -> str:
    hparams = checkpoint.get("hyper_parameters") or {}
    return str(hparams.get("_class_path") or "").rsplit(".", 1)[-1]


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reading and writing, made safe: loads through
    :func:`load_checkpoint` (never runs code) and saves atomically (complete or absent)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_with(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None):
        # weights_only=False from a caller is ignored on purpose: no checkpoint runs code.
        location = map_location if map_location is not None else (lambda storage, _: storage)
        checkpoint = load_checkpoint(path, "--ckpt_path", map_location=location)
        require_lightning(checkpoint, path)
        return checkpoint


def require_lightning(checkpoint: dict, path, what: str = "--ckpt_path") -> None:
    """Stop unless ``checkpoint`` is a Lightning checkpoint (a plain state dict is not)."""
    if "state_dict" not in checkpoint or "pytorch-lightning_version" not in checkpoint:
        raise CheckpointError(
            f"{what} {str(path)!r} is not a checkpoint written by `sslr fit` (no state_dict or "
            "Lightning version in it); a plain state dict can start a run as "
            "--model.pretrained_ckpt"
        )
