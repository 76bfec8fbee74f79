"""The ``sslr`` command: LightningCLI with sslr's tasks, data and callbacks.

    sslr fit --config configs/quickstart.yaml
    sslr test --config runs/.../config.yaml --ckpt_path runs/.../checkpoints/best.ckpt
    sslr report runs/ --out report.md

``main(args)`` is what the console script calls, so tests drive exactly the CLI users run.
Errors a user can cause end with one line on stderr and exit status 2, never a traceback
(set SSLR_DEBUG=1 to see it).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import warnings
from argparse import RawDescriptionHelpFormatter
from pathlib import Path

from jsonargparse import ArgumentError, DefaultHelpFormatter, set_parsing_settings
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, seed_everything
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info

import sslr
import sslr.callbacks  # noqa: F401  (short class names in configs)
import sslr.data  # noqa: F401
import sslr.tasks  # noqa: F401
from sslr.atomic import FolderLock, first_missing
from sslr.checkpoints import check_config_fits, check_fits, load_checkpoint, require_lightning
from sslr.errors import USER_ERRORS, UserError
from sslr.feedback.rules import rules_help
from sslr.loggers import fill_wandb_args, one_logger_per_kind, wire_wandb
from sslr.packaged import resolve_config_args
from sslr.quiet import quiet_third_party
from sslr.run_folder import (
    DONE_MARKER,
    RunCSVLogger,
    child_name,
    latest_version,
    mark_finished,
    remove_leftover_temp_files,
    resolve_ckpt_path,
    run_folder_of,
    same_config,
)
from sslr.trainer import SslrTrainer

OTHER_COMMANDS = {
    "report": ("sslr.report", "main_report", "compare run folders: table, CSV and plots"),
    "grid": ("sslr.grid", "main_grid", "the paper's protocol: pretrain, fine-tune, attack, report"),
    "demo": ("sslr.demo", "main", "the whole story on Digits, on the CPU, in a few minutes"),
}

_RULES_HELP = "Learning rules (--model.rule):\n" + rules_help()
_DESCRIPTION = (
    f"sslr {sslr.__version__}: fine-tune pretrained vision networks with sign-symmetry "
    "learning rules and measure accuracy and adversarial robustness.\n"
    + "".join(
        f"  sslr {name}: {doc} (sslr {name} --help)\n"
        for name, (_, _, doc) in OTHER_COMMANDS.items()
    )
    + _RULES_HELP
)


class SslrCLI(LightningCLI):
    """LightningCLI with the data -> model links and sslr's defaults."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        commands = LightningCLI.subcommands()
        commands["attack"] = {"model", "datamodule"}
        return commands

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key in ("num_classes", "mean", "std"):
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")  # self.subcommand is not set yet
        config = self.config[subcommand] if subcommand else self.config
        trainer = config.get("trainer") if hasattr(config, "get") else None
        loggers = trainer.get("logger") if trainer is not None else None
        if isinstance(loggers, list):
            trainer["logger"], merged = one_logger_per_kind(loggers)
            for kind in merged:
                rank_zero_info(
                    f"sslr: the --config files list a {kind} more than once: using one (later "
                    "files' options win), so nothing is logged twice"
                )

    def _parse_ckpt_path(self) -> None:
        """Resolve ``--ckpt_path last|best`` and check the file fits the config, safely.

        Lightning's version of this method replaces the configured model by the checkpoint's
        hyperparameters, silently (a hashing checkpoint turned a classification config into a
        HashingTask); sslr keeps the config and stops when the checkpoint does not fit it.
        """
        self._run_target = None
        subcommand = self.config.get("subcommand")
        if not subcommand or "ckpt_path" not in self.config[subcommand]:
            return
        config = self.config[subcommand]
        # Lightning replaces `seed_everything: true` by the seed it draws: remember it was random.
        self._random_seed = config.get("seed_everything") is True
        ckpt = resolve_ckpt_path(config.get("ckpt_path"), config.get("config") or [])
        config["ckpt_path"] = ckpt
        if not ckpt or ckpt in ("hpc", "registry"):
            return
        if not Path(ckpt).is_file():
            raise UserError(
                f"Checkpoint {ckpt!r} does not exist: give the path of a .ckpt written by "
                "`sslr fit` (runs/<name>/version_<k>/checkpoints/{best,last}.ckpt)"
            )
        checkpoint = load_checkpoint(ckpt, "--ckpt_path", mmap=True)
        require_lightning(checkpoint, ckpt)
        check_config_fits(checkpoint, config.get("model"), ckpt)
        self._ckpt_step = int(checkpoint.get("global_step", 0) or 0)
        self._checkpoint = (checkpoint, ckpt)  # checked again against the model once built
        run = run_folder_of(ckpt)
        if run is None and subcommand == "attack":
            # A checkpoint outside any run: its attack folder, metrics included, beside it.
            run = Path(ckpt).resolve().parent
        if run is not None and not _explicit_csv_version(config):
            self._run_target = (run, ckpt)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        _name_loggers(config, self.subcommand or "fit")
        _check_trainer_limits(config.get("trainer") or {})
        if self.subcommand == "fit" and not config.get("ckpt_path"):
            self._resume_unfinished(config)

    def _resume_unfinished(self, config) -> None:
        """The same ``sslr fit`` command again, after the run it started was stopped (kill -9):
        resume that run from its last.ckpt, in its folder, instead of starting a new one.

        A run counts as the same when its config.yaml equals this command's config (the
        checkpoint path aside, and the seed when Lightning drew it); a run whose fit ended is
        marked finished (``fit.done``) and the command starts a new run, as always.
        """
        import yaml

        parent = _csv_logger_parent(config)
        run = latest_version(parent) if parent is not None else None
        if run is None or (run / DONE_MARKER).is_file() or not (run / "config.yaml").is_file():
            return
        last = run / "checkpoints" / "last.ckpt"
        again = f"sslr fit --config {run / 'config.yaml'} --ckpt_path last"
        try:
            saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            saved = None
        dumped = self.parser.dump(self.config, skip_none=False, format="yaml")
        new = (yaml.safe_load(dumped) or {}).get(self.subcommand) or {}
        ignore = ("seed_everything",) if getattr(self, "_random_seed", False) else ()
        if not isinstance(saved, dict) or not same_config(saved, new, ignore):
            if last.is_file():
                rank_zero_info(
                    f"sslr fit: the run {run} stopped before it finished, with another config; "
                    f"starting a new run (to finish that one: {again})"
                )
            return
        if not last.is_file():
            rank_zero_info(
                f"sslr fit: the run {run} stopped before its first checkpoint; starting a new run"
            )
            return
        checkpoint = load_checkpoint(last, "the unfinished run's last.ckpt", mmap=True)
        require_lightning(checkpoint, last)
        check_config_fits(checkpoint, config.get("model"), last)
        self._checkpoint = (checkpoint, str(last))
        epoch = int(checkpoint.get("epoch", 0) or 0)
        if ignore and isinstance(saved.get("seed_everything"), int):
            # The run's own seed, not the one just drawn: the resumed run continues it.
            config["seed_everything"] = saved["seed_everything"]
            seed_everything(saved["seed_everything"], workers=True)
        config["ckpt_path"] = str(last)
        self._ckpt_step = int(checkpoint.get("global_step", 0) or 0)
        self._run_target = (run.resolve(), str(last))
        rank_zero_info(
            f"sslr fit: resuming the unfinished run {run} from its last.ckpt "
            f"(epoch {epoch}, step {self._ckpt_step}) (to start a new run instead: change "
            "--trainer.logger.save_dir, or delete that folder)"
        )

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, FileNotFoundError) as err:
            # Raised by a class checking the values the config gave it: the user's to fix. A
            # ValueError later, while the command runs, is a bug and keeps its traceback.
            raise UserError(_argument_message(err)) from err

    def _load_pretrained_weights(self) -> None:
        """A fresh fit's pretrained weights (``pretrained_ckpt`` or torchvision's), loaded once the
        model exists and before the trainer makes the run folder: a bad checkpoint or weights
        that cannot be downloaded stop the command with nothing written (the task would
        otherwise load them in setup)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        load = getattr(self.model, "load_pretrained_weights", None)
        if self.subcommand == "fit" and not config.get("ckpt_path") and load is not None:
            load()

    def instantiate_trainer(self, **kwargs):
        # LightningCLI has made the model, not yet the trainer (nor any folder): what can refuse
        # the command is checked now, so that a refused command leaves nothing.
        self._load_pretrained_weights()
        checkpoint, ckpt = getattr(self, "_checkpoint", None) or (None, None)
        self._checkpoint = None
        if checkpoint is not None:  # the class count and bits come from the data: now known
            check_fits(checkpoint, self.model, ckpt, "--ckpt_path")
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except MisconfigurationException as err:  # Lightning's word for a bad trainer option
            message = _first_line(err)
            if "backend" in message or "accelerator" in message.lower():
                message += " Use --trainer.accelerator cpu (or auto) on a machine without it."
            raise UserError(f"trainer: {message} (see `sslr {self.subcommand} --help`)") from err

        # A CSV logger always runs (first, so the run folder is its log_dir): every metric is
        # in the run folder whatever else is logged to.
        if trainer.loggers and not any(isinstance(lg, CSVLogger) for lg in trainer.loggers):
            first = trainer.loggers[0]
            name = getattr(first, "name", None) or "default"
            csv = CSVLogger(save_dir=trainer.default_root_dir or "runs", name=str(name))
            trainer.loggers = [csv, *trainer.loggers]
        target = getattr(self, "_run_target", None)
        if target is not None and trainer.loggers:
            run, ckpt = target
            if self.subcommand == "fit":  # a resume continues the run's own folder
                logger = RunCSVLogger(run, keep_before_step=self._ckpt_step)
            elif self.subcommand == "attack":  # one folder per attack: its results and metrics
                logger = RunCSVLogger(self._attack_folder(run, ckpt))
            else:
                logger = RunCSVLogger(run / child_name(self.subcommand, ckpt))
            others = [lg for lg in trainer.loggers if not isinstance(lg, CSVLogger)]
            trainer.loggers = [logger, *others]
        if self.subcommand == "attack" and self.config_init["attack"].get("out_dir"):
            _check_writable(Path(self.config_init["attack"]["out_dir"]), "--out_dir")
        if trainer.loggers:
            folder = trainer.loggers[0].log_dir
            _check_writable(Path(folder), self._folder_option(config_of(self)))
            if _rank() == 0:
                # What this command made is removed again if it is refused (see run()).
                held = _CommandFolder(Path(folder), first_missing(Path(folder)))
                _HELD.append(held)
            if self.subcommand == "fit" and _rank() == 0:
                # One writer per run: a second fit (the same command started twice) is refused.
                # The kernel drops the lock when this process ends, however it ends.
                held.lock = FolderLock(folder, "run folder").__enter__()
                # The lock file is the folder's first file: not the "previous logs" Lightning
                # warns it would delete (a resume keeps its rows: RunCSVLogger).
                warnings.filterwarnings("ignore", message="Experiment logs directory .* exists")
                if target is not None:  # a resume: what the interrupted writes left behind
                    for leftover in remove_leftover_temp_files(folder):
                        rank_zero_info(
                            f"sslr fit: removed {leftover}, left by an interrupted write"
                        )
            rank_zero_info(f"sslr {self.subcommand}: run folder {folder}")
        wire_wandb(trainer, self.config[self.subcommand] if self.subcommand else self.config,
                   self.subcommand or "fit")  # fmt: skip
        return trainer

    def _folder_option(self, config) -> str:
        """The option that moves this command's folder, for the unwritable-folder hint."""
        if self.subcommand == "attack":
            return "--out_dir"
        if getattr(self, "_run_target", None) is not None:
            return "--ckpt_path (a checkpoint in a run folder you can write to)"
        trainer = config.get("trainer") or {}
        parent = _csv_logger_parent(config)
        root = trainer.get("default_root_dir")
        if root and parent is not None and Path(str(root)) in parent.parents:
            return "--trainer.default_root_dir"
        return "--trainer.logger.save_dir"

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except USER_ERRORS:
            # Under DDP rank 0 says the error in one line and stops the other processes: left
            # alone they would wait for it in a collective and print tracebacks when it is gone.
            _stop_other_ranks(self.trainer)
            raise

    def _attack_folder(self, run: Path, ckpt: str) -> Path:
        """Where ``sslr attack`` writes its results (sslr.attack_run decides): its metrics too."""
        from sslr.attack_run import attack_folder, check_attack, resolved_settings
        from sslr.robustness import SuiteConfig

        given = self.config_init[self.subcommand]
        suite = given.get("suite") or SuiteConfig()
        check_attack(self.model, suite)  # before the folder is named, made or locked
        if given.get("out_dir"):
            return Path(given["out_dir"])
        task = "hashing" if "bits" in getattr(self.model, "hparams", {}) else "classification"
        return attack_folder(run, ckpt, resolved_settings(suite, task, ckpt))

    def after_fit(self) -> None:
        """Mark the run finished when its fit ended (not when a signal stopped it early)."""
        trainer = self.trainer
        if trainer.state.status.value == "finished" and trainer.is_global_zero and trainer.loggers:
            mark_finished(trainer.loggers[0].log_dir, trainer.current_epoch, trainer.global_step)


def _stop_other_ranks(trainer) -> None:
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    if _rank() == 0 and isinstance(launcher, _SubprocessScriptLauncher):
        launcher.kill(signal.SIGKILL)


def _rank() -> int:
    """This process's rank under a DDP launch (0 for the process the user started): Lightning's
    and torchrun's RANK / LOCAL_RANK, or SLURM's task index when srun started the tasks."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(name):
            return int(os.environ[name])
    return 0


def _csv_logger_parent(config) -> Path | None:
    """The folder holding a fresh fit's ``version_<k>`` folders (the CSV logger's save_dir/name),
    or None when the config names the version itself (the grid's stages) or logs no CSV."""
    loggers = config.trainer.get("logger")
    if loggers in (None, True):
        return None
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if hasattr(logger, "class_path") and _short(logger.class_path) == "CSVLogger":
            args = logger.init_args
            if args.get("version") is not None:
                return None
            return Path(str(args.get("save_dir") or "runs")) / str(args.get("name") or "")
    return None


_LIMITS = (
    "limit_train_batches",
    "limit_val_batches",
    "limit_test_batches",
    "limit_predict_batches",
)


def _check_trainer_limits(trainer) -> None:
    """Options Lightning checks only once training has started (after writing the run folder)."""
    for key in _LIMITS:
        value = trainer.get(key)
        if value is not None and not value >= 0:
            raise UserError(
                f"trainer.{key} must be a fraction in [0, 1] or a number of batches >= 0, got "
                f"{value}: leave it out to use every batch"
            )


def _check_writable(folder: Path, option: str) -> None:
    """Stop before any work when the run folder cannot be made (a file in the way, read-only);
    ``option`` is the one that chooses another folder."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"Cannot write the run folder {folder}: {existing} is not a writable folder; give "
            f"{option} a folder you can write to"
        )


def config_of(cli: LightningCLI):
    """The parsed config of the CLI's subcommand."""
    return cli.config[cli.subcommand] if cli.subcommand else cli.config


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _check_config_files(argv: list[str]) -> None:
    """--config files that are missing, empty or not YAML, named in one line (jsonargparse
    reports a syntax error without the file's name and an empty file as "Unexpected config")."""
    import yaml

    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        else:
            continue
        path = Path(value)
        if "\n" in value or ":" in value and not path.exists():  # inline YAML, not a file
            continue
        if not path.is_file():
            raise UserError(f"Config file {value} does not exist: give the path of a .yaml file")
        try:
            content = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or _first_line(err)
            raise UserError(
                f"Config file {value} is not valid YAML{where} ({problem}): fix that line"
            ) from err
        except UnicodeDecodeError as err:
            raise UserError(f"Config file {value} is not a text file: give a .yaml config") from err
        if content is None:
            raise UserError(
                f"Config file {value} is empty: a config sets at least model and data "
                "(see configs/quickstart.yaml)"
            )
        if not isinstance(content, dict):
            raise UserError(
                f"Config file {value} holds a {type(content).__name__}, not a mapping of options "
                "(see configs/quickstart.yaml)"
            )


def _explicit_csv_version(config) -> bool:
    """Whether the config puts its CSV logger in a named version (the grid's stages do)."""
    loggers = config.trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if hasattr(logger, "class_path") and _short(logger.class_path) == "CSVLogger":
            return logger.init_args.get("version") is not None
    return False


def _short(class_path: str | None) -> str:
    return (class_path or "").rsplit(".", 1)[-1]


def _name_loggers(config, job: str = "fit") -> None:
    """Fill in logger names from the config: runs/<Dataset>/<backbone>_<rule>/version_<k> (under
    --trainer.default_root_dir when given), and for W&B name, group, job type and tags from what
    the run is (sslr.loggers.describe_run), so runs line up whatever order the overlays came in."""
    model = config.get("model") or {}
    init = model.get("init_args") or {}
    data = _short((config.get("data") or {}).get("class_path")) or "data"
    backbone, rule = init.get("backbone", "model"), init.get("rule", "bp")
    bits = init.get("bits")
    run = f"{backbone}_{rule}" + (f"_{bits}bits" if bits else "")
    root = config.trainer.get("default_root_dir")
    loggers = config.trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if not hasattr(logger, "class_path"):
            continue
        args = logger.init_args
        kind = _short(logger.class_path)
        if kind in ("CSVLogger", "TensorBoardLogger"):
            if args.get("name") in (None, "default", "lightning_logs"):
                args["name"] = f"{data}/{run}"
            if root and args.get("save_dir") == "runs":  # the CLI's default folder
                args["save_dir"] = str(root)
        elif kind == "WandbLogger":
            fill_wandb_args(args, config, job)


def run(args: list[str]) -> SslrCLI:
    """Run a LightningCLI subcommand and return the CLI (its ``trainer`` and ``model``).

    Raises what ``main`` turns into one-line errors; for use from Python (the demo, the grid).
    """
    os.environ.setdefault("WANDB_SILENT", "true")
    quiet_third_party()
    args = _completion_args(resolve_config_args(args))
    strict = {"exit_on_error": False}
    parser_kwargs = {**_help_kwargs(), **strict}
    parser_kwargs.update({name: _subcommand_kwargs(strict) for name in SslrCLI.subcommands()})
    # The args become the command line: Lightning's DDP launcher re-executes sys.argv to start
    # the other processes, so they must see the same subcommand and options.
    argv0, sys.argv = sys.argv, [sys.argv[0], *args]
    open_run = _wandb_run()
    failed, refused = True, False
    try:
        cli = _cli(parser_kwargs)
        failed = False
        return cli
    except USER_ERRORS:
        refused = True
        raise
    finally:
        sys.argv = argv0
        _finish_wandb_run_started_since(open_run, failed)
        while _HELD:  # the command's folder and its lock, held for the command only
            _HELD.pop().release(refused=refused)


class _CommandFolder:
    """The folder a command writes (``made``: the outermost folder of it that the command made,
    None when the folder was there before) and, for a fit, the lock it holds on it."""

    def __init__(self, folder: Path, made: Path | None) -> None:
        self.folder, self.made = folder, made
        self.lock: FolderLock | None = None

    def release(self, refused: bool) -> None:
        """Drop the lock; leave nothing of a folder this command made when it was refused (a
        user error: a checkpoint that does not fit, a dataset not found) before it wrote a
        checkpoint or finished an attack batch, nor of one it left holding only the lock, nor
        the empty folders above it that it made. A folder that was there before (a resume, an
        attack run again) stays."""
        if self.lock is not None:
            self.lock.__exit__(None, None, None)
        if not self.folder.is_dir():
            return
        only_lock = [p.name for p in self.folder.iterdir()] in ([], [".sslr.lock"])
        empty = only_lock and (self.made is not None or self.lock is not None)
        # Work worth keeping: a checkpoint, or an attack's finished batches (a rerun resumes).
        kept = any(self.folder.rglob("*.ckpt")) or any(self.folder.rglob("*.pt"))
        unused = refused and self.made is not None and not kept
        if empty or unused:
            shutil.rmtree(self.folder, ignore_errors=True)
            if self.made is not None and self.made != self.folder:
                _remove_chain(self.folder.parent, self.made)


_HELD: list[_CommandFolder] = []


def _remove_chain(folder: Path, made: Path | None) -> None:
    """Remove ``folder`` if empty, then its parents up to ``made`` (the outermost one the command
    made; None: ``folder`` alone) while each is empty. Only this run's own line of folders:
    another run's folder beside it is never touched."""
    for path in (folder, *folder.parents):
        try:
            path.rmdir()
        except OSError:  # holds something (or is gone): keep it and what is above
            return
        if made is None or path == made:
            return


def _wandb_run():
    wandb = sys.modules.get("wandb")
    return getattr(wandb, "run", None) if wandb is not None else None


def _finish_wandb_run_started_since(earlier, failed: bool) -> None:
    """A W&B run this command started ends with it: Lightning leaves it open, so in one Python
    process (the demo, the grid, a notebook) the next WandbLogger would silently reuse it."""
    current = _wandb_run()
    if current is not None and current is not earlier:
        current.finish(exit_code=1 if failed else 0)


class _Parsed(Exception):
    def __init__(self, config) -> None:
        super().__init__("parsed")
        self.config = config


class _ParseOnlyCLI(SslrCLI):
    """Stops once the arguments are parsed: nothing is loaded, built or run."""

    def _parse_ckpt_path(self) -> None:
        raise _Parsed(self.config)


def parse(args: list[str]) -> dict:
    """The configuration a command (``[subcommand, *options]``) parses to, as a dict of the
    subcommand's keys, without loading a checkpoint or building anything: raises what ``run``
    raises on a bad option. For the grid, which checks every stage's command before it runs one.
    """
    quiet_third_party()
    args = resolve_config_args(args)
    strict = {"exit_on_error": False}
    parser_kwargs = {**_help_kwargs(), **strict}
    parser_kwargs.update({name: dict(strict) for name in SslrCLI.subcommands()})
    argv0, sys.argv = sys.argv, [sys.argv[0], *args]
    try:
        _cli(parser_kwargs, _ParseOnlyCLI)
    except _Parsed as parsed:
        config = parsed.config
        return config[config["subcommand"]].as_dict()
    finally:
        sys.argv = argv0
    raise AssertionError("unreachable: the parse-only CLI always stops after parsing")


def error_message(err: Exception) -> str:
    """A jsonargparse error (or any user error) as the one line ``sslr`` prints for it."""
    return _argument_message(err)


def _completion_args(args: list[str]) -> list[str]:
    """Shell completion: jsonargparse's ``--print_completion shtab-<shell>`` (needs shtab), also
    spelled ``--print_shtab <shell>`` as older jsonargparse releases named it."""
    set_parsing_settings(add_print_completion_argument=True)
    if args[:1] == ["--print_shtab"] and len(args) > 1:
        args = ["--print_completion", f"shtab-{args[1]}", *args[2:]]
    if any(a == "--print_completion" or a.startswith("--print_completion=") for a in args):
        _limit_completion_depth()
    return args


# Option nesting (dots after the leading "--") below which completion lists no value choices.
COMPLETION_DEPTH = 2


def _limit_completion_depth(depth: int = COMPLETION_DEPTH) -> None:
    """jsonargparse lists the value choices of every option by recursing through every subclass
    of every typed option and their init arguments (a strategy's accelerator's ..., a logger's
    ...): minutes of CPU for LightningCLI's trainer, and deep enough to hit Python's recursion
    limit. Below ``depth`` dots the options are still completed, only without value choices:
    about 20 s instead."""
    from jsonargparse import _completions

    full = getattr(_completions.get_typehint_choices, "__wrapped__", None)
    full = full or _completions.get_typehint_choices

    def choices(typehint, prefix, parser, skip, added_subclasses=None):
        if prefix is not None and prefix.lstrip("-").count(".") >= depth:
            return [], False
        return full(typehint, prefix, parser, skip, added_subclasses)

    choices.__wrapped__ = full
    _completions.get_typehint_choices = choices


class _HelpFormatter(RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with the description's line breaks kept."""


def _help_kwargs() -> dict:
    """``sslr --help``: a usage line naming every subcommand (LightningCLI's and report, grid,
    demo, which main() dispatches before LightningCLI sees them) and the description as written."""
    commands = ",".join([*SslrCLI.subcommands(), *OTHER_COMMANDS])
    usage = f"sslr [-h] [-c CONFIG] [--print_config] [--print_completion shtab-SHELL] {{{commands}}} ..."
    return {
        "prog": "sslr",
        "description": _DESCRIPTION,
        "usage": usage,
        "formatter_class": _HelpFormatter,
    }


def _subcommand_kwargs(strict: dict) -> dict:
    """A subcommand's parser: its --help lists the learning rules, one line each."""
    return {**strict, "description": _RULES_HELP, "formatter_class": _HelpFormatter}


def _cli(parser_kwargs: dict, cli_class: type[SslrCLI] = SslrCLI) -> SslrCLI:
    return cli_class(
        trainer_class=SslrTrainer,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": "runs", "name": "default"},
            }
        },
        parser_kwargs=parser_kwargs,
    )


def main(args: list[str] | None = None) -> int:
    """Run the ``sslr`` command line; returns the exit status (0 on success)."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in OTHER_COMMANDS:
        module, func, _ = OTHER_COMMANDS[argv[0]]
        import importlib

        return getattr(importlib.import_module(module), func)(argv[1:])
    try:
        _check_config_files(resolve_config_args(argv))  # packaged configs by name first
        cli = run(argv)
    except ArgumentError as err:
        subcommand = next((a for a in argv if not a.startswith("-")), "<subcommand>")
        return _fail(_argument_message(err).replace("<subcommand>", subcommand))
    except USER_ERRORS as err:
        if os.environ.get("SSLR_DEBUG"):
            raise
        return _fail(" ".join(str(err).split()) or type(err).__name__)
    except SystemExit as exit_:  # --help, --print_config
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else _fail(exit_.code)
    trainer = getattr(cli, "trainer", None)
    if trainer is not None and trainer.loggers and trainer.is_global_zero:
        if cli.subcommand == "fit":
            said = _final_validation(trainer)
            if said:
                print(f"sslr fit: last validation: {said}")
        print(f"sslr {cli.subcommand}: done; run folder {trainer.loggers[0].log_dir}")
    return 0


def _final_validation(trainer) -> str:
    """The validation metrics a fit ended with (``val/acc 0.9431, val/loss 0.2100``), or ''."""
    found = {
        key: float(value)
        for key, value in trainer.callback_metrics.items()
        if key.startswith("val/") and getattr(value, "numel", lambda: 1)() == 1
    }
    return ", ".join(f"{key} {value:.4f}" for key, value in sorted(found.items()))


_NOISE = (
    "Does not validate against",
    "Subtypes:",
    "Errors:",
    "Given value",
    "Expected a <class 'NoneType'>",
    "Problem with given class_path",
    "Expected a path but",
)


def _argument_message(err: Exception) -> str:
    """jsonargparse's nested message reduced to one line: the key and what is wrong with it."""
    keys, details, given = [], [], None
    for raw in str(err).splitlines():
        line = raw.strip().lstrip("-").strip()
        match = re.match(r'Parser key "([^"]+)":?\s*(.*)', line)
        if match:
            keys.append(match.group(1))
            line = match.group(2)
        if line.startswith("Given value:") and given is None:  # the innermost comes first
            given = line.split(":", 1)[1].strip()
        if line and not line.startswith(_NOISE):
            details.append(line)
    key = ".".join(keys)
    detail = details[-1] if details else str(err).strip().splitlines()[0]
    if keys in (["data"], ["model"]) and "import path" in detail and given:
        package = {"data": sslr.data, "model": sslr.tasks}[keys[0]]
        base = {"data": LightningDataModule, "model": LightningModule}[keys[0]]
        known = [n for n in package.__all__ if _is_subclass(getattr(package, n), base)]
        known = [n for n in known if "DataModule" not in n]
        detail = f"unknown class {given!r}; known: {', '.join(known)}"
    literal = re.search(r"Expected a typing\.Literal\[(.*)\](?:\. Got value: (.*))?", detail)
    if literal:
        choices = literal.group(1).replace("'", "")
        if "Expected a <class 'bool'>" in details:  # a union with bool: name its two values
            choices = f"true, false, {choices}"
        value = literal.group(2) or given
        detail = f"{value!r} is not one of {choices}" if value else f"choose one of {choices}"
    as_list = re.search(r"Expected a <class 'list'>(?:\. Got value: (.*))?", detail)
    if as_list and (as_list.group(1) or given):
        value = as_list.group(1) or given
        detail = f"{value!r} must be a list, e.g. [{value}]"
    if not isinstance(err, ArgumentError):
        return detail
    where = f"{key}: " if key else ""
    return f"{where}{detail} (see `sslr <subcommand> --help`)"


def _is_subclass(obj, base: type) -> bool:
    return isinstance(obj, type) and issubclass(obj, base)


def _fail(message: str) -> int:
    # Under DDP every process meets the same error: only rank 0 says it.
    if _rank() == 0:
        print(f"sslr: error: {message}", file=sys.stderr)
    return 2
