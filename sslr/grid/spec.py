"""The grid file: its schema, read and checked before any stage runs.

The grid file (YAML; every key but ``base_config`` and ``backbones`` is optional)::

    name: fashion_resnet18            # default: the file's name
    out: runs/grid/fashion_resnet18   # default runs/grid/<name>; --out overrides
    base_config: ../quickstart.yaml   # the fit config all stages share (or an inline mapping)
    overlays: []                      # further --config files (or inline mappings), in order
    backbones: [resnet18]
    rules: [bp, usf, frsf, brsf]      # the default
    seed: 0                           # seed_everything, model.seed and data.seed of every fit
    # or seeds: [0, 1, 2]             # each fine-tuning (and its attack) once per seed
    pretrain: {epochs: 10, args: []}  # or {weights: IMAGENET1K_V1} for no BP pretraining
    finetune: {epochs: 5, args: ["--optimizer.lr", "0.01"]}
    attack: {suite: {n_samples: 1000, eps: [0, 4/255, 8/255]}, args: []}
    slurm:                            # only for --launcher slurm (see below)
      partition: gpu
      account: my_project
      array_parallelism: 8            # at most this many of one kind's jobs run at once
      sbatch: {qos: high}             # further #SBATCH options (--qos=high)
      setup: ["module load cuda"]     # shell lines run in the job before the stage
      finetune: {gpus: 1, cpus: 8, mem: 32G, time: 240}   # per kind; time in minutes

Paths of configs are relative to the grid file's folder; ``out`` is relative to the current
folder, as every sslr output is. ``args`` are extra command-line arguments of the stage's
command, the same for every rule so budgets are equal; ``attack.suite`` holds
``sslr.robustness.SuiteConfig`` fields (epsilons may be written ``8/255``).

``seeds`` (distinct integers >= 0; instead of ``seed``, not beside it) runs every fine-tuning
once per seed: its ``--seed_everything``, ``--model.seed`` and ``--data.seed`` (the validation
split, the training order and the augmentation; the test split does not depend on it) are that
seed, and so is its attack's ``--suite.seed`` (the attacked subset and the random starts: within
a seed every rule is attacked on the same images); the pretraining runs once per backbone with
the first seed. With
several seeds each run gets its own folder, ``<out>/<backbone>/<rule>/seed<k>/``, and its stages
are labelled ``finetune resnet18/usf seed 1``; with one seed (``seed: k`` or ``seeds: [k]``) the
layout, the labels and the commands are those of ``seed: k``, whose attacks keep
``attack.suite.seed`` (default 0), which a grid of several seeds sets itself.

``slurm`` is read by ``sslr grid --launcher slurm`` only (which refuses a grid file without it;
``slurm: {}`` takes the cluster's defaults): ``partition``, ``account``, ``array_parallelism``,
``sbatch`` (a mapping of further sbatch options), ``setup`` (shell lines), and per stage kind
(``pretrain``, ``finetune``, ``attack``, ``report``) ``gpus``, ``cpus``, ``mem`` and ``time``
(minutes); the defaults are in :data:`SLURM_DEFAULTS`. A stage whose fit asks for several
devices (``trainer.devices`` > 1) gets that many GPUs and one task per GPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import yaml

KEYS = ("name", "out", "base_config", "overlays", "backbones", "rules", "seed", "seeds", "slurm")
STAGE_KEYS = {
    "pretrain": ("epochs", "args", "weights"),
    "finetune": ("epochs", "args"),
    "attack": ("suite", "args"),
}
DEFAULT_RULES = ("bp", "usf", "frsf", "brsf")
# The rule whose fine-tuned model is the ``transfer`` surrogate of every attack stage.
SURROGATE = "bp"
TRANSFER = "transfer"
DEFAULT_EPOCHS = {"pretrain": 10, "finetune": 5}
# Set by the grid for every stage: in `args` they would break equal budgets or the layout.
OWNED = (
    *("--model.backbone", "--model.rule", "--model.seed", "--model.pretrained_ckpt"),
    *("--data.seed", "--seed_everything", "--trainer.max_epochs", "--trainer.logger"),
    *("--ckpt_path", "--suite.surrogate_ckpt", "--out_dir"),
)


Config = Path | dict  # one --config: a YAML file or an inline mapping

KINDS = ("pretrain", "finetune", "attack", "report")
SLURM_KEYS = ("partition", "account", "array_parallelism", "sbatch", "setup", *KINDS)
SLURM_KIND_KEYS = ("gpus", "cpus", "mem", "time")
# Per stage kind: GPUs, CPUs per task, memory (sbatch's --mem), time limit in minutes.
SLURM_DEFAULTS = {
    "pretrain": {"gpus": 1, "cpus": 8, "mem": "32G", "time": 240},
    "finetune": {"gpus": 1, "cpus": 8, "mem": "32G", "time": 240},
    "attack": {"gpus": 1, "cpus": 8, "mem": "32G", "time": 240},
    "report": {"gpus": 0, "cpus": 2, "mem": "8G", "time": 30},
}


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
    seed: int  # the first seed: the pretraining's seeds
    seeds: tuple[int, ...]  # the fine-tunings' (and their attacks') seeds, seed first
    pretrain_epochs: int
    pretrain_args: tuple[str, ...]
    weights: str | None  # torchvision weights instead of BP pretraining
    finetune_epochs: int
    finetune_args: tuple[str, ...]
    suite: dict  # SuiteConfig fields
    attack_args: tuple[str, ...]
    slurm: dict | None = None  # the checked slurm section (see _slurm); None: none given

    @property
    def configs(self) -> tuple[Config, ...]:
        return (self.base_config, *self.overlays)

    @property
    def several_seeds(self) -> bool:
        """Whether each fine-tuning runs once per seed, each in its own seed<k>/ folder."""
        return len(self.seeds) > 1

    def attack_suite(self, rule: str, seed: int | None = None) -> dict:
        """The suite of ``rule``'s attack stage: the grid's, but the surrogate's own (bp's)
        without the ``transfer`` gradient source, whose examples would be bp's own white-box
        ones (``exact`` again, not a transfer measurement): its report cell stays empty. With
        several seeds, ``seed`` (the fine-tuning's) is its suite's seed."""
        suite = _suite_of(self.suite, rule)
        if self.several_seeds:
            suite["seed"] = self.seed if seed is None else seed
        return suite

    def run_dir(self, backbone: str, rule: str, seed: int | None = None) -> Path:
        """The run folder of ``rule``'s fine-tuning (of ``seed``: with several seeds, each
        has its own ``seed<k>/``), where its attack writes robustness.csv too."""
        folder = self.out / backbone / rule
        if self.several_seeds:
            folder = folder / f"seed{self.seed if seed is None else seed}"
        return folder

    def label(self, kind: str, backbone: str, rule: str, seed: int | None = None) -> str:
        """A stage's label: ``finetune resnet18/usf``, with several seeds ``... seed 1``."""
        label = f"{kind} {backbone}/{rule}"
        if self.several_seeds and kind in ("finetune", "attack"):
            label += f" seed {self.seed if seed is None else seed}"
        return label


# --------------------------------------------------------------------------- the grid file


def load_grid(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Grid:
    """Read and validate a grid file; ``out`` replaces its ``out``. Raises GridError."""
    path = Path(path)
    if not path.is_file():
        raise GridError(f"{path} does not exist: give a grid file such as configs/grid/*.yaml")
    raw = load_yaml(path)
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
    seeds = _seeds(raw)
    if len(seeds) > 1 and "seed" in suite:
        raise GridError(
            "attack.suite.seed is set by the grid when it has several seeds (each attack's is "
            "its fine-tuning's seed): drop it"
        )
    return Grid(
        name=name,
        out=Path(out or raw.get("out") or Path("runs", "grid", name)),
        base_config=config_source(raw["base_config"], "base_config", here),
        overlays=tuple(
            config_source(c, f"overlays[{i}]", here) for i, c in enumerate(_list(raw, "overlays"))
        ),
        backbones=_backbones(_names(raw["backbones"], "backbones")),
        rules=rules,
        seed=seeds[0],
        seeds=seeds,
        pretrain_epochs=_int(pretrain.get("epochs", DEFAULT_EPOCHS["pretrain"]), "pretrain.epochs"),
        pretrain_args=_args(pretrain, "pretrain"),
        weights=None if weights is None else str(weights),
        finetune_epochs=_int(stages["finetune"].get("epochs", DEFAULT_EPOCHS["finetune"]), "finetune.epochs"),
        finetune_args=_args(stages["finetune"], "finetune"),
        suite=suite,
        attack_args=_args(attack, "attack"),
        slurm=None if raw.get("slurm") is None else _slurm(raw["slurm"]),
    )  # fmt: skip


def _slurm(raw) -> dict:
    """The slurm section, every key known and typed, each kind's resources filled in."""
    if not isinstance(raw, dict):
        raise GridError(f"slurm must be a mapping of {', '.join(SLURM_KEYS)}")
    _known(raw, SLURM_KEYS, "slurm.")
    slurm: dict = {}
    for key in ("partition", "account"):
        if raw.get(key) is not None:
            if not isinstance(raw[key], str) or not raw[key]:
                raise GridError(f"slurm.{key} must be a name, got {raw[key]!r}")
            slurm[key] = raw[key]
    slurm["array_parallelism"] = _int(raw.get("array_parallelism", 256), "slurm.array_parallelism")
    sbatch = raw.get("sbatch") or {}
    if not isinstance(sbatch, dict) or any(isinstance(v, (dict, list)) for v in sbatch.values()):
        raise GridError("slurm.sbatch must be a mapping of sbatch options, e.g. {qos: high}")
    slurm["sbatch"] = {str(k): str(v) for k, v in sbatch.items()}
    setup = raw.get("setup") or []
    if not isinstance(setup, list) or not all(isinstance(line, str) for line in setup):
        raise GridError('slurm.setup must be a list of shell lines, e.g. ["module load cuda"]')
    slurm["setup"] = list(setup)
    for kind in KINDS:
        given = raw.get(kind) or {}
        if not isinstance(given, dict):
            raise GridError(f"slurm.{kind} must be a mapping of {', '.join(SLURM_KIND_KEYS)}")
        _known(given, SLURM_KIND_KEYS, f"slurm.{kind}.")
        resources = {**SLURM_DEFAULTS[kind], **given}
        for key in ("gpus", "cpus", "time"):
            resources[key] = _int(
                resources[key], f"slurm.{kind}.{key}", minimum=0 if key == "gpus" else 1
            )
        if not isinstance(resources["mem"], (str, int)) or isinstance(resources["mem"], bool):
            raise GridError(
                f"slurm.{kind}.mem must be a size such as 32G, got {resources['mem']!r}"
            )
        resources["mem"] = str(resources["mem"])
        slurm[kind] = resources
    return slurm


def load_yaml(path: Path):
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


def _seeds(raw: dict) -> tuple[int, ...]:
    """``seed: k`` (default 0) or ``seeds: [k1, k2, ...]``, distinct integers >= 0."""
    if "seeds" not in raw:
        return (_int(raw.get("seed", 0), "seed", minimum=0),)
    if "seed" in raw:
        raise GridError("seed and seeds are both given: give seed: k or seeds: [k1, k2, ...]")
    seeds = raw["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise GridError(
            f"seeds must be a non-empty list of integers >= 0, e.g. [0, 1, 2], got {seeds!r}"
        )
    for seed in seeds:
        if seeds.count(seed) > 1:
            raise GridError(f"seeds lists {seed} twice")
    return tuple(seeds)


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


def config_source(value, key: str, here: Path) -> Config:
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
    if not isinstance(load_yaml(path), dict):
        raise GridError(f"{key} {path} is not a YAML mapping (a LightningCLI config)")
    return path


def _eps(value):
    """``8/255`` -> 0.0313...; numbers and anything else as given (SuiteConfig checks them)."""
    from sslr.robustness.config import eps_value

    if isinstance(value, list):
        return [_eps(v) for v in value]
    if not isinstance(value, str):
        return value
    try:
        return eps_value(value)
    except ValueError:
        return value


def _suite(suite, with_bp: bool) -> dict:
    """attack.suite checked by SuiteConfig itself, epsilons as floats."""
    from sslr.robustness import SuiteConfig

    if not isinstance(suite, dict):
        raise GridError("attack.suite must be a mapping of SuiteConfig fields")
    fields = tuple(f.name for f in dataclasses.fields(SuiteConfig) if f.name != "surrogate_ckpt")
    if "surrogate_ckpt" in suite:
        raise GridError("attack.suite.surrogate_ckpt is set by the grid: the bp fine-tuned model")
    _known(suite, fields, "attack.suite.")
    suite = {k: _eps(v) if k in ("eps", "eps_l2") else v for k, v in suite.items()}
    try:
        wants_transfer = _wants_transfer(suite)
    except (TypeError, ValueError) as err:
        raise GridError(f"attack.suite: {err}") from None
    if wants_transfer and not with_bp:
        raise GridError(
            "attack.suite.gradients has transfer, whose surrogate is the bp fine-tuned model: "
            "add bp to rules or drop transfer"
        )
    if with_bp:
        try:
            _wants_transfer(_suite_of(suite, SURROGATE))
        except ValueError:  # transfer alone: bp's own stage has no gradient source left
            raise GridError(
                "attack.suite.gradients has only transfer, which bp's own attack does not run "
                "(its surrogate is bp itself): add rule or exact for bp's row"
            ) from None
    return suite


def _suite_of(suite: dict, rule: str) -> dict:
    gradients = suite.get("gradients")
    if rule != SURROGATE or gradients is None:
        return dict(suite)
    gradients = [gradients] if isinstance(gradients, str) else list(gradients)
    return {**suite, "gradients": [g for g in gradients if str(g).lower() != TRANSFER]}


def _wants_transfer(suite: dict) -> bool:
    """Whether a suite (SuiteConfig fields) runs ``transfer``: a white-box attack along it.
    Raises what SuiteConfig raises for a bad suite."""
    from sslr.robustness import SuiteConfig, get_attack

    config = SuiteConfig(**suite)
    return config.wants_transfer and any(get_attack(a).white_box for a in config.attack_kinds)
