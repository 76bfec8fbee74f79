"""``sslr grid``: the paper's protocol for one dataset and a list of backbones, as one resumable
command.

    sslr grid --config configs/grid/digits_debug.yaml [--out DIR] [--dry-run]

For every backbone: BP pretraining once (or torchvision weights instead), fine-tuning with each
rule from that same checkpoint with the same seed and budget, the attack suite on every
fine-tuned model (the ``transfer`` surrogate is the bp fine-tuned model of the same backbone),
then one report over all of them. Each stage runs the CLI users run (``sslr fit``,
``sslr attack``, in-process) into a fixed layout that ``sslr report`` reads::

    <out>/<backbone>/pretrain/       config.yaml, metrics.csv, checkpoints/, done.json
    <out>/<backbone>/<rule>/         the same, plus robustness.csv and .png from the attack
    <out>/<backbone>/<rule>/attack/  the attack's logs and its done.json
    <out>/report.md                  with report.csv, the PNGs and its done.json beside it

Resumable: a stage is skipped when its ``done.json`` (written atomically once the stage has
finished) records the same inputs: the configs' contents, epochs, args, seed, and the checkpoint
it starts from or attacks. An interrupted fit resumes from its ``last.ckpt``; an interrupted
attack runs again; a stage whose inputs changed runs again from scratch (its folder is
replaced), and so does whatever depended on a checkpoint that changed.

The grid file (YAML; every key but ``base_config`` and ``backbones`` is optional)::

    name: fashion_resnet18            # default: the file's name
    out: runs/grid/fashion_resnet18   # default runs/grid/<name>; --out overrides
    base_config: ../quickstart.yaml   # the fit config all stages share (or an inline mapping)
    overlays: []                      # further --config files (or inline mappings), in order
    backbones: [resnet18]
    rules: [bp, usf, frsf, brsf]      # the default
    seed: 0                           # seed_everything, model.seed and data.seed of every fit
    pretrain: {epochs: 10, args: []}  # or {weights: IMAGENET1K_V1} for no BP pretraining
    finetune: {epochs: 5, args: ["--optimizer.lr", "0.01"]}
    attack: {suite: {n_samples: 1000, eps: [0, 4/255, 8/255]}, args: []}

Paths of configs are relative to the grid file's folder; ``out`` is relative to the current
folder, as every sslr output is. ``args`` are extra command-line arguments of the stage's
command, the same for every rule so budgets are equal; ``attack.suite`` holds
``sslr.robustness.SuiteConfig`` fields (epsilons may be written ``8/255``). A cosine schedule's
``T_max`` follows the stage's epochs. Every command is parsed before any stage runs, so a typo
fails at once.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import shlex
import shutil
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import yaml

from sslr.atomic import FolderLock, atomic_write
from sslr.errors import UserError

KEYS = ("name", "out", "base_config", "overlays", "backbones", "rules", "seed")
STAGE_KEYS = {
    "pretrain": ("epochs", "args", "weights"),
    "finetune": ("epochs", "args"),
    "attack": ("suite", "args"),
}
DEFAULT_RULES = ("bp", "usf", "frsf", "brsf")
DEFAULT_EPOCHS = {"pretrain": 10, "finetune": 5}
# Set by the grid for every stage: in `args` they would break equal budgets or the layout.
OWNED = (
    *("--model.backbone", "--model.rule", "--model.seed", "--model.pretrained_ckpt"),
    *("--data.seed", "--seed_everything", "--trainer.max_epochs", "--trainer.logger"),
    *("--ckpt_path", "--suite.surrogate_ckpt", "--out_dir"),
)
DONE, STARTED = "done.json", "started.json"
# Noise when the grid reuses its own folders on purpose (a resumed fit, started.json).
_QUIET = (r"Experiment logs directory .* exists and is not empty", r"Checkpoint directory .*")

Config = Path | dict  # one --config: a YAML file or an inline mapping


class GridError(ValueError):
    """A problem with a grid file, its command line or a stage: one sentence, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Grid:
    """A validated grid file (see the module docstring for the YAML)."""

    name: str
    out: Path
    base_config: Config
    overlays: tuple[Config, ...]
    backbones: tuple[str, ...]
    rules: tuple[str, ...]
    seed: int
    pretrain_epochs: int
    pretrain_args: tuple[str, ...]
    weights: str | None  # torchvision weights instead of BP pretraining
    finetune_epochs: int
    finetune_args: tuple[str, ...]
    suite: dict  # SuiteConfig fields
    attack_args: tuple[str, ...]

    @property
    def configs(self) -> tuple[Config, ...]:
        return (self.base_config, *self.overlays)


# --------------------------------------------------------------------------- the grid file


def load_grid(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Grid:
    """Read and validate a grid file; ``out`` replaces its ``out``. Raises GridError."""
    path = Path(path)
    if not path.is_file():
        raise GridError(f"{path} does not exist: give a grid file such as configs/grid/*.yaml")
    raw = _load_yaml(path)
    if not isinstance(raw, dict):
        raise GridError(f"{path} must be a mapping with the keys {', '.join(_all_keys())}")
    try:
        return _parse_grid(raw, path, out)
    except GridError as err:
        raise GridError(f"{path}: {err}") from None


def _all_keys() -> tuple[str, ...]:
    return (*KEYS, *STAGE_KEYS)


def _parse_grid(raw: dict, path: Path, out) -> Grid:
    _known(raw, _all_keys(), "")
    for key in ("base_config", "backbones"):
        if raw.get(key) is None:
            raise GridError(f"{key} is missing")
    here = path.resolve().parent
    name = str(raw.get("name") or path.stem)
    stages = {key: raw.get(key) or {} for key in STAGE_KEYS}
    for key, value in stages.items():
        if not isinstance(value, dict):
            raise GridError(f"{key} must be a mapping of {', '.join(STAGE_KEYS[key])}")
        _known(value, STAGE_KEYS[key], f"{key}.")
    pretrain, attack = stages["pretrain"], stages["attack"]
    weights = pretrain.get("weights")
    if weights is not None and "epochs" in pretrain:
        raise GridError(
            "pretrain has both epochs (BP pretraining) and weights (torchvision weights, no "
            "pretraining): give one"
        )
    rules = _names(raw.get("rules", list(DEFAULT_RULES)), "rules")
    _check_rules(rules)
    suite = _suite(attack.get("suite") or {}, "bp" in rules)
    return Grid(
        name=name,
        out=Path(out or raw.get("out") or Path("runs", "grid", name)),
        base_config=_config(raw["base_config"], "base_config", here),
        overlays=tuple(
            _config(c, f"overlays[{i}]", here) for i, c in enumerate(_list(raw, "overlays"))
        ),
        backbones=_backbones(_names(raw["backbones"], "backbones")),
        rules=rules,
        seed=_int(raw.get("seed", 0), "seed", minimum=0),
        pretrain_epochs=_int(pretrain.get("epochs", DEFAULT_EPOCHS["pretrain"]), "pretrain.epochs"),
        pretrain_args=_args(pretrain, "pretrain"),
        weights=None if weights is None else str(weights),
        finetune_epochs=_int(stages["finetune"].get("epochs", DEFAULT_EPOCHS["finetune"]), "finetune.epochs"),
        finetune_args=_args(stages["finetune"], "finetune"),
        suite=suite,
        attack_args=_args(attack, "attack"),
    )  # fmt: skip


def _load_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}: {exc.problem})" if mark else ""
        raise GridError(f"{path} is not valid YAML{where}") from None


def _known(mapping: dict, keys: tuple[str, ...], where: str) -> None:
    for key in mapping:
        if key not in keys:
            raise GridError(f"unknown key '{where}{key}'; known keys: {', '.join(keys)}")


def _list(raw: dict, key: str) -> list:
    value = raw.get(key) or []
    if not isinstance(value, list):
        raise GridError(f"{key} must be a list")
    return value


def _names(value, key: str) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise GridError(f"{key} must be a non-empty list of names")
    for v in values:
        if values.count(v) > 1:
            raise GridError(f"{key} lists {v!r} twice")
    return tuple(values)


def _check_rules(rules: tuple[str, ...]) -> None:
    from sslr.feedback import list_rules

    for rule in rules:
        if rule not in list_rules():
            raise GridError(
                f"unknown rule {rule!r} in rules; known rules: {', '.join(list_rules())}"
            )


def _backbones(names: tuple[str, ...]) -> tuple[str, ...]:
    from sslr.tasks.backbones import check_backbone

    for name in names:
        try:
            check_backbone(name)
        except ValueError as err:
            raise GridError(f"backbones: {err}") from None
    return names


def _int(value, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GridError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _args(stage: dict, key: str) -> tuple[str, ...]:
    value = stage.get("args") or []
    if not isinstance(value, list) or any(isinstance(v, (dict, list)) for v in value):
        raise GridError(f'{key}.args must be a list of command-line arguments, e.g. ["--a.b", "1"]')
    args = tuple(json.dumps(v) if isinstance(v, bool) or v is None else str(v) for v in value)
    for arg in args:
        option = arg.split("=", 1)[0].replace(".init_args.", ".")
        if option in OWNED:
            raise GridError(f"{key}.args sets {option}, which the grid sets itself for every stage")
    return args


def _config(value, key: str, here: Path) -> Config:
    """A --config of the stages: an existing YAML file (relative to the grid file) or a mapping."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str) or not value:
        raise GridError(f"{key} must be the path of a YAML config or an inline mapping")
    path = Path(value).expanduser()
    path = Path(os.path.normpath(path if path.is_absolute() else here / path))
    if not path.is_file():
        raise GridError(
            f"{key} {value!r} not found (looked for {path}; relative paths are relative to the "
            "grid file's folder)"
        )
    if not isinstance(_load_yaml(path), dict):
        raise GridError(f"{key} {path} is not a YAML mapping (a LightningCLI config)")
    return path


_FRACTION = re.compile(r"^\s*([0-9.]+)\s*/\s*([0-9.]+)\s*$")


def _eps(value):
    """``8/255`` -> 0.0313...; numbers and anything else as given (SuiteConfig checks them)."""
    if isinstance(value, list):
        return [_eps(v) for v in value]
    match = _FRACTION.match(value) if isinstance(value, str) else None
    if match:
        try:
            return float(match.group(1)) / float(match.group(2))
        except (ValueError, ZeroDivisionError):
            return value
    return value


def _suite(suite, with_bp: bool) -> dict:
    """attack.suite checked by SuiteConfig itself, epsilons as floats."""
    from sslr.robustness import SuiteConfig, get_attack

    if not isinstance(suite, dict):
        raise GridError("attack.suite must be a mapping of SuiteConfig fields")
    fields = tuple(f.name for f in dataclasses.fields(SuiteConfig) if f.name != "surrogate_ckpt")
    if "surrogate_ckpt" in suite:
        raise GridError("attack.suite.surrogate_ckpt is set by the grid: the bp fine-tuned model")
    _known(suite, fields, "attack.suite.")
    suite = {k: _eps(v) if k in ("eps", "eps_l2") else v for k, v in suite.items()}
    try:
        config = SuiteConfig(**suite)
        wants_transfer = "transfer" in [s.value for s in config.gradient_sources] and any(
            get_attack(a).white_box for a in config.attack_kinds
        )
    except (TypeError, ValueError) as err:
        raise GridError(f"attack.suite: {err}") from None
    if wants_transfer and not with_bp:
        raise GridError(
            "attack.suite.gradients has transfer, whose surrogate is the bp fine-tuned model: "
            "add bp to rules or drop transfer"
        )
    return suite


# --------------------------------------------------------------------------- running it


class GridRun:
    """Runs (or with ``dry_run`` shows) a grid's stages in order; ``echo`` gets progress lines."""

    def __init__(self, grid: Grid, *, dry_run: bool = False, echo=print) -> None:
        self.grid = grid
        self.dry_run = dry_run
        self.echo = echo
        n_fit = len(grid.rules) * 2 + (0 if grid.weights else 1)
        self.total = len(grid.backbones) * n_fit + 1
        self.index = 0
        self.ran = 0
        self.skipped = 0
        self.config_args = [a for c in grid.configs for a in ("--config", _config_arg(c))]
        self.inputs_configs = [_fingerprint(c) for c in grid.configs]
        self.settings: dict[str, dict] = {}  # per command kind: the config it parses to
        self.began = time.perf_counter()

    # ---- commands ---------------------------------------------------------------------------

    def command(
        self,
        kind: str,
        backbone: str,
        rule: str,
        *,
        start: Path | None = None,
        ckpt: Path | None = None,
        surrogate: Path | None = None,
        probe: bool = False,
    ) -> list[str]:
        """The ``sslr`` arguments of a stage: ``fit`` for pretrain/finetune (from ``start``, the
        pretrained checkpoint), ``attack`` for attack (of ``ckpt``, its model rebuilt from the
        fine-tune's own config arguments). ``probe``: without the grid's logger and T_max."""
        grid = self.grid
        seed = str(grid.seed)
        version = {"pretrain": "pretrain", "finetune": rule, "attack": "attack"}[kind]
        where = (
            (grid.out / backbone, rule, version)
            if kind == "attack"
            else (grid.out, backbone, version)
        )
        args = ["attack" if kind == "attack" else "fit", *self.config_args]
        if not probe:
            loggers = self.settings[kind].get("trainer", {}).get("logger")
            name = f"{backbone}_{rule}_attack" if kind == "attack" else f"{backbone}_{version}"
            args += ["--config", _logger_overlay(loggers, *where, run_name=name)]
        args += ["--model.backbone", backbone, "--model.rule", rule, "--seed_everything", seed]
        args += ["--model.seed", seed, "--data.seed", seed]
        if kind == "attack":
            args += [*grid.finetune_args, "--ckpt_path", str(ckpt)]
            args += ["--out_dir", str(grid.out / backbone / rule)]  # the run's own folder
            for key, value in grid.suite.items():
                args += [f"--suite.{key}", json.dumps(value)]
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

    def validate(self) -> None:
        """Parse every kind of command (no work): a typo in args or a config fails here."""
        grid = self.grid
        backbone, rule = grid.backbones[0], grid.rules[0]
        placeholder = grid.out / backbone / "pretrain" / "checkpoints" / "best.ckpt"
        kinds = ("finetune", "attack") if grid.weights else ("pretrain", "finetune", "attack")
        for kind in kinds:
            start = placeholder if kind == "finetune" else None
            args = self.command(kind, backbone, rule, start=start, ckpt=placeholder, probe=True)
            sources = {
                "pretrain": "pretrain.args",
                "finetune": "finetune.args",
                "attack": "finetune.args, attack.suite, attack.args",
            }[kind]
            what = f"the {kind} stage's command (from the configs and {sources})"
            self.settings[kind] = _parse_only(args, what)

    # ---- stages -----------------------------------------------------------------------------

    def execute(self) -> None:
        grid = self.grid
        self.validate()
        dry = ", dry run" if self.dry_run else ""
        self.echo(
            f"sslr grid: {grid.name}: {', '.join(grid.backbones)} x {', '.join(grid.rules)} "
            f"-> {grid.out} ({self.total} stages{dry})"
        )
        results = []  # what the report summarizes: (backbone, rule, when fit, when attacked)
        for backbone in grid.backbones:
            if grid.weights:
                start: dict = {"weights": grid.weights}
            else:
                start = self._fit("pretrain", backbone, "bp")
            tuned = {rule: self._fit("finetune", backbone, rule, start) for rule in grid.rules}
            for rule in grid.rules:
                attacked = self._attack(backbone, rule, tuned[rule], tuned.get("bp"))
                results.append(
                    [backbone, rule, tuned[rule].get("finished"), attacked.get("finished")]
                )
        self._report(results)

    def _checkpoint(self, marker: dict) -> Path | None:
        return self.grid.out / marker["checkpoint"] if marker.get("checkpoint") else None

    def _say(self, label: str, what: str, new: bool = False) -> None:
        self.index += new
        if not new and self.index:  # a stage finished: what is left, and when it may end
            elapsed = time.perf_counter() - self.began
            left = self.total - self.index
            what += f"; {left} left, ETA {elapsed / self.index * left:.0f} s" if left else ""
        self.echo(f"sslr grid: [{self.index}/{self.total}] {label}: {what}")

    def _fit(self, kind: str, backbone: str, rule: str, start: dict | None = None) -> dict:
        """A pretrain or finetune stage (from ``start``, the pretrain marker or the weights);
        returns its marker: checkpoint (relative to out), sha256, test metrics."""
        grid = self.grid
        folder = grid.out / backbone / ("pretrain" if kind == "pretrain" else rule)
        label = f"{kind} {backbone}/{rule}"
        args = self.command(kind, backbone, rule, start=start and self._checkpoint(start))
        inputs = {
            "stage": kind,
            "backbone": backbone,
            "rule": rule,
            "configs": self.inputs_configs,
            "epochs": grid.pretrain_epochs if kind == "pretrain" else grid.finetune_epochs,
            "seed": grid.seed,
            "args": list(grid.pretrain_args if kind == "pretrain" else grid.finetune_args),
            "start": None if start is None else start.get("weights") or start.get("sha256"),
        }
        done = _read_json(folder / DONE)
        if done is not None and done.get("inputs") == inputs:
            self.skipped += 1
            self._say(label, f"skipped (done {done.get('finished', '')})", new=True)
            return done
        last = folder / "checkpoints" / "last.ckpt"
        resume = done is None and _read_json(folder / STARTED) == inputs and last.is_file()
        if resume:
            args = [*args, "--ckpt_path", str(last)]
        layout = {"checkpoint": f"{backbone}/{folder.name}/checkpoints/best.ckpt", "sha256": None}
        if self.dry_run:
            self._say(label, "would resume from last.ckpt" if resume else "would run", new=True)
            self.echo("    " + shlex.join(["sslr", *args]))
            return layout
        self._say(label, "resuming from last.ckpt" if resume else "running", new=True)
        if not resume and folder.exists():
            shutil.rmtree(folder)  # stale or unfinished without a checkpoint: start clean
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(folder / STARTED, inputs)
        began = time.perf_counter()
        keep = _keep_metrics(folder, last) if resume else contextlib.nullcontext()
        with _stage_errors(label), keep:
            from sslr.cli import run

            cli = run(args)
            trainer = cli.trainer
            if trainer.interrupted:
                raise GridError(f"{label} was interrupted: run sslr grid again to resume it")
            ckpt = _best_checkpoint(trainer, folder)
            # One dict per test loader (hashing tests on [queries, database]): merged.
            tested = trainer.test(
                cli.model, datamodule=cli.datamodule, ckpt_path=str(ckpt), verbose=False
            )
            metrics = {k: v for result in tested for k, v in result.items()}
        seconds = time.perf_counter() - began
        marker = {
            "stage": kind,
            "backbone": backbone,
            "rule": rule,
            "checkpoint": _relative(ckpt, grid.out),
            "sha256": _sha256(ckpt),
            "metrics": {k: float(v) for k, v in metrics.items()},
            "seconds": round(seconds, 1),
            "finished": _now(),
            "inputs": inputs,
        }
        _write_json(folder / DONE, marker)
        self.ran += 1
        shown = next(
            (f"{k} {v:.3f}" for k, v in marker["metrics"].items() if "acc" in k or "mAP" in k), ""
        )
        verb = "resumed and ran" if resume else "ran"
        self._say(label, f"{verb} in {seconds:.1f} s" + (f" ({shown})" if shown else ""))
        return marker

    def _attack(self, backbone: str, rule: str, tuned: dict, bp: dict | None) -> dict:
        grid = self.grid
        run_dir = grid.out / backbone / rule
        folder = run_dir / "attack"
        label = f"attack {backbone}/{rule}"
        inputs = {
            "checkpoint": tuned.get("sha256"),
            "surrogate": bp.get("sha256") if bp else None,
            "configs": self.inputs_configs,
            "suite": grid.suite,
            "args": [*grid.finetune_args, *grid.attack_args],
        }
        done = _read_json(folder / DONE)
        if done is not None and done.get("inputs") == inputs and inputs["checkpoint"]:
            self.skipped += 1
            self._say(label, f"skipped (done {done.get('finished', '')})", new=True)
            return done
        surrogate = self._checkpoint(bp) if bp else None
        args = self.command(
            "attack", backbone, rule, ckpt=self._checkpoint(tuned), surrogate=surrogate
        )
        if self.dry_run:
            self._say(label, "would run", new=True)
            self.echo("    " + shlex.join(["sslr", *args]))
            return {}
        self._say(label, "running", new=True)
        (folder / DONE).unlink(missing_ok=True)
        began = time.perf_counter()
        with _stage_errors(label):
            from sslr.cli import run

            run(args)
        seconds = time.perf_counter() - began
        csv_path = run_dir / "robustness.csv"
        rows = max(0, len(csv_path.read_text().splitlines()) - 1) if csv_path.is_file() else 0
        marker = {
            "stage": "attack",
            "backbone": backbone,
            "rule": rule,
            "robustness": _relative(csv_path, grid.out),
            "rows": rows,
            "seconds": round(seconds, 1),
            "finished": _now(),
            "inputs": inputs,
        }
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(folder / DONE, marker)
        self.ran += 1
        self._say(label, f"ran in {seconds:.1f} s ({rows} rows in robustness.csv)")
        return marker

    def _report(self, results: list) -> None:
        """The report over the grid's runs (not the pretrain runs: they are bp too); its marker
        is <out>/done.json, so it is rebuilt only when a run it shows changed."""
        grid = self.grid
        out = grid.out / "report.md"
        label = "report"
        done = _read_json(grid.out / DONE)
        if done is not None and done.get("inputs") == results and out.is_file():
            self.skipped += 1
            self._say(label, f"skipped (done {done.get('finished', '')})", new=True)
            return
        if self.dry_run:
            self._say(label, f"would write {out}", new=True)
            return
        self._say(label, "running", new=True)
        from sslr.report import build_report

        dirs = [grid.out / b / r for b in grid.backbones for r in grid.rules]
        with _stage_errors(label):
            report = build_report(dirs, out)
        marker = {"stage": "report", "report": out.name, "finished": _now(), "inputs": results}
        _write_json(grid.out / DONE, marker)
        self.ran += 1
        self._say(label, f"wrote {out}, {report.csv_path.name} and {len(report.figures)} figures")


# --------------------------------------------------------------------------- helpers


def _config_arg(config: Config) -> str:
    """A --config value: the file's path, or the mapping as a one-line YAML string."""
    return str(config) if isinstance(config, Path) else _flow(config)


def _flow(mapping: dict) -> str:
    return yaml.safe_dump(mapping, default_flow_style=True, width=1 << 20).strip()


def _fingerprint(config: Config) -> str:
    text = config.read_bytes() if isinstance(config, Path) else json.dumps(config, sort_keys=True)
    return hashlib.sha256(text if isinstance(text, bytes) else text.encode()).hexdigest()[:16]


def _logger_overlay(configured, save_dir: Path, name: str, version: str, run_name: str) -> str:
    """A --config (one-line YAML) putting the run in save_dir/name/version: a CSVLogger first,
    the configured loggers after it (TensorBoard in the same folder; others renamed)."""
    entries = configured if isinstance(configured, list) else [configured]
    where = {"save_dir": str(save_dir), "name": name, "version": version}
    loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": dict(where)}]
    for entry in entries:
        if not isinstance(entry, dict) or "class_path" not in entry:
            continue  # true/false/null: the CSV logger alone
        kind = str(entry["class_path"]).rsplit(".", 1)[-1]
        init = dict(entry.get("init_args") or {})
        if kind == "CSVLogger":
            continue
        if kind == "TensorBoardLogger":
            init |= where
        elif "name" in init:
            init["name"] = run_name
        loggers.append({"class_path": entry["class_path"], "init_args": init})
    return _flow({"trainer": {"logger": loggers}})


def _parse_only(args: list[str], what: str) -> dict:
    """The config a command parses to (LightningCLI's --print_config), or GridError."""
    from jsonargparse import ArgumentError

    from sslr.cli import _argument_message, run

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            run([*args, "--print_config"])
    except SystemExit:
        pass
    except ArgumentError as err:
        message = _argument_message(err).replace("<subcommand>", args[0])
        raise GridError(f"{what} does not parse: {message}") from None
    return yaml.safe_load(printed.getvalue()) or {}


@contextlib.contextmanager
def _stage_errors(label: str):
    """A stage's user errors (bad args, missing data, divergence) as one GridError line."""
    from jsonargparse import ArgumentError

    from sslr.cli import _argument_message
    from sslr.errors import USER_ERRORS

    try:
        yield
    except GridError:
        raise
    except (ArgumentError, *USER_ERRORS) as err:
        if os.environ.get("SSLR_DEBUG"):
            raise
        raise GridError(f"{label} failed: {_argument_message(err)}") from err


@contextlib.contextmanager
def _keep_metrics(folder: Path, last: Path):
    """Lightning's CSVLogger deletes metrics.csv when it reopens a run folder: put back the rows
    logged before the step the fit resumes from (later ones it logs again)."""
    path = folder / "metrics.csv"
    old = _read_rows(path)
    if old:
        from sslr.checkpoints import load_checkpoint

        step = load_checkpoint(last, "last.ckpt", mmap=True)["global_step"]
        old = [row for row in old if _float(row.get("step")) < step]
    try:
        yield
    finally:
        if old:
            rows = old + _read_rows(path)
            tmp = path.with_name(path.name + ".tmp")
            with tmp.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=sorted({k for r in rows for k in r}))
                writer.writeheader()
                writer.writerows(rows)
            os.replace(tmp, path)


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("inf")


def _best_checkpoint(trainer, folder: Path) -> Path:
    callback = trainer.checkpoint_callback
    found = callback and (callback.best_model_path or callback.last_model_path)
    path = Path(found) if found else folder / "checkpoints" / "best.ckpt"
    if not path.is_file():
        raise GridError(f"the fit in {folder} wrote no checkpoint (is checkpointing disabled?)")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), root.resolve())).as_posix()


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: Path, value: dict) -> None:
    """Atomically: a marker is either absent or complete."""
    atomic_write(path, json.dumps(value, indent=2) + "\n")


# --------------------------------------------------------------------------- the command


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise GridError(f"{message} (see sslr grid --help)")


def main_grid(argv: list[str] | None = None) -> int:
    """``sslr grid --config GRID.yaml [--out DIR] [--dry-run]``; returns the exit status."""
    parser = _Parser(
        prog="sslr grid",
        description="The paper's protocol for one dataset and a list of backbones: BP "
        "pretraining, fine-tuning with each rule, the attack suite, the report. Resumable: "
        "finished stages are skipped.",
    )
    parser.add_argument("--config", required=True, type=Path, help="the grid file (YAML)")
    parser.add_argument("--out", type=Path, help="the grid's folder (default: the file's out)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the stages and commands, run nothing"
    )
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    try:
        args = parser.parse_args(argv)
        grid = load_grid(args.config, out=args.out)
        os.environ.setdefault("WANDB_SILENT", "true")
        lightning_log.setLevel(logging.WARNING)
        began = time.perf_counter()
        with warnings.catch_warnings():
            for message in _QUIET:
                warnings.filterwarnings("ignore", message=message)
            runner = GridRun(grid, dry_run=args.dry_run, echo=print)
            # One grid per folder: a second one on the same --out is refused, not merged.
            lock = contextlib.nullcontext() if args.dry_run else FolderLock(grid.out, "grid folder")
            with lock:
                runner.execute()
    except SystemExit as exit_:  # --help
        return exit_.code if isinstance(exit_.code, int) else 0
    except (GridError, UserError) as err:
        print(f"sslr grid: error: {err}", file=sys.stderr)
        return 2
    finally:
        lightning_log.setLevel(level)
    if not args.dry_run:
        print(
            f"sslr grid: done in {time.perf_counter() - began:.0f} s ({runner.ran} stages ran, "
            f"{runner.skipped} skipped): {grid.out / 'report.md'}"
        )
    return 0
