"""The commands a grid's stages run: ``sslr fit`` (pretrain, finetune) and ``sslr attack``, as
the application's Python entry points :func:`sslr.cli.run` (run one) and
:func:`sslr.cli.parse` (check one without running it) take them.

Every stage of a kind shares its configs and ``args``; the grid sets the backbone, the rule,
the seeds (the run's own for ``--seed_everything``, ``--model.seed`` and, with several seeds,
the attack's ``--suite.seed`` and ``--data.seed``), the epochs, the checkpoint it starts from or attacks, and where the run goes
(a CSV logger in the grid's layout, the configured loggers after it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import yaml

from sslr.grid.spec import Config, Grid, GridError

# Where each kind's arguments come from, for the message when they do not parse.
SOURCES = {
    "pretrain": "pretrain.args",
    "finetune": "finetune.args",
    "attack": "finetune.args, attack.suite, attack.args",
}


class StageCommands:
    """Builds the ``sslr`` arguments of a grid's stages; :meth:`check` parses one of each kind
    first (no work), so a typo in the configs or ``args`` fails before any stage runs."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.config_args = [a for c in grid.configs for a in ("--config", _config_arg(c))]
        self.settings: dict[str, dict] = {}  # per kind: the configuration it parses to

    def build(
        self,
        kind: str,
        backbone: str,
        rule: str,
        *,
        start: Path | None = None,
        ckpt: Path | None = None,
        surrogate: Path | None = None,
        seed: int | None = None,
        probe: bool = False,
    ) -> list[str]:
        """``fit`` for pretrain/finetune (from ``start``, the pretrained checkpoint), ``attack``
        for attack (of ``ckpt``, its model rebuilt from the fine-tune's own arguments, with the
        rule's suite, :meth:`Grid.attack_suite`, and ``surrogate`` the transfer surrogate);
        ``seed``: the fine-tuning's (default the first; the pretraining's is always the first).
        ``probe``: without the grid's logger and T_max (what :meth:`check` parses)."""
        grid = self.grid
        if seed is None or kind == "pretrain":
            seed = grid.seed
        args = ["attack" if kind == "attack" else "fit", *self.config_args]
        if not probe:
            args += ["--config", self._logger_overlay(kind, backbone, rule, seed)]
        args += ["--model.backbone", backbone, "--model.rule", rule]
        args += ["--seed_everything", str(seed), "--model.seed", str(seed)]
        # data.seed: the validation split, the training order and the augmentation. The test
        # split does not depend on it (a fixed split seed, or the dataset's own test set), so
        # every seed's attack draws from the same test images.
        args += ["--data.seed", str(seed)]
        if kind == "attack":
            args += [*grid.finetune_args, "--ckpt_path", str(ckpt)]
            args += ["--out_dir", str(grid.run_dir(backbone, rule, seed))]  # the run's own folder
            # bp's has no transfer; with several seeds, its seed is the run's.
            for key, value in grid.attack_suite(rule, seed).items():
                # A string as it is: JSON's quotes would be part of the value to the parser.
                text = value if isinstance(value, str) else json.dumps(value)
                args += [f"--suite.{key}", text]
            if surrogate is not None:
                args += ["--suite.surrogate_ckpt", str(surrogate)]
            return [*args, *grid.attack_args]
        epochs = grid.pretrain_epochs if kind == "pretrain" else grid.finetune_epochs
        args += ["--trainer.max_epochs", str(epochs)]
        scheduler = (self.settings.get(kind, {}).get("lr_scheduler") or {}).get("class_path")
        if not probe and str(scheduler).endswith("CosineAnnealingLR"):
            args += ["--lr_scheduler.T_max", str(epochs)]
        if grid.weights and kind == "finetune":
            args += ["--model.weights", grid.weights]
        elif start is not None:
            args += ["--model.pretrained_ckpt", str(start)]
        return [*args, *(grid.pretrain_args if kind == "pretrain" else grid.finetune_args)]

    def check(self) -> None:
        """Parse every kind of command the grid runs; a GridError names the first that fails."""
        from jsonargparse import ArgumentError

        from sslr.cli import error_message, parse

        grid = self.grid
        backbone, rule = grid.backbones[0], grid.rules[0]
        placeholder = grid.out / backbone / "pretrain" / "checkpoints" / "best.ckpt"
        kinds = ("finetune", "attack") if grid.weights else ("pretrain", "finetune", "attack")
        for kind in kinds:
            start = placeholder if kind == "finetune" else None
            args = self.build(kind, backbone, rule, start=start, ckpt=placeholder, probe=True)
            try:
                self.settings[kind] = parse(args)
            except ArgumentError as err:
                message = error_message(err).replace("<subcommand>", args[0])
                raise GridError(
                    f"the {kind} stage's command (from the configs and {SOURCES[kind]}) does "
                    f"not parse: {message}"
                ) from None

    def _logger_overlay(self, kind: str, backbone: str, rule: str, seed: int) -> str:
        """A --config (one-line YAML) putting the run in the grid's layout: a CSVLogger first,
        the configured loggers after it (TensorBoard in the same folder; others renamed)."""
        out = self.grid.out
        if kind == "pretrain":
            save_dir, name, version = out, backbone, "pretrain"
        elif kind == "attack":  # <save_dir>/<name>/<version>: the run folder's attack/
            run_dir = self.grid.run_dir(backbone, rule, seed)
            save_dir, name, version = run_dir.parent, run_dir.name, "attack"
        else:  # the run folder: <out>/<backbone>/<rule>, or its seed<k>/
            run_dir = self.grid.run_dir(backbone, rule, seed)
            save_dir, name, version = run_dir.parent.parent, run_dir.parent.name, run_dir.name
        tail = f"_seed{seed}" if self.grid.several_seeds and kind != "pretrain" else ""
        run_name = f"{backbone}_{'pretrain' if kind == 'pretrain' else rule}{tail}"
        run_name += "_attack" if kind == "attack" else ""
        configured = self.settings[kind].get("trainer", {}).get("logger")
        entries = configured if isinstance(configured, list) else [configured]
        where = {"save_dir": str(save_dir), "name": name, "version": version}
        loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": dict(where)}]
        for entry in entries:
            if not isinstance(entry, dict) or "class_path" not in entry:
                continue  # true/false/null: the CSV logger alone
            kind_ = str(entry["class_path"]).rsplit(".", 1)[-1]
            init = dict(entry.get("init_args") or {})
            if kind_ == "CSVLogger":
                continue
            if kind_ == "TensorBoardLogger":
                init |= where
            elif "name" in init:
                init["name"] = run_name
            loggers.append({"class_path": entry["class_path"], "init_args": init})
        return _flow({"trainer": {"logger": loggers}})


def fingerprint(config: Config) -> str:
    """What a marker records of a config: a hash of the file's bytes or of the mapping."""
    text = config.read_bytes() if isinstance(config, Path) else json.dumps(config, sort_keys=True)
    return hashlib.sha256(text if isinstance(text, bytes) else text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def stage_errors(label: str):
    """A stage's user errors (bad args, missing data, divergence) as one GridError line."""
    from jsonargparse import ArgumentError

    from sslr.cli import error_message
    from sslr.errors import USER_ERRORS

    try:
        yield
    except GridError:
        raise
    except (ArgumentError, *USER_ERRORS) as err:
        if os.environ.get("SSLR_DEBUG"):
            raise
        raise GridError(f"{label} failed: {error_message(err)}") from err


def _config_arg(config: Config) -> str:
    """A --config value: the file's path, or the mapping as a one-line YAML string."""
    return str(config) if isinstance(config, Path) else _flow(config)


def _flow(mapping: dict) -> str:
    return yaml.safe_dump(mapping, default_flow_style=True, width=1 << 20).strip()
