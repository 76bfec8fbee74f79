"""W&B logging for comparing learning rules: runs named and grouped from what they are, the
whole resolved config in W&B's config, robustness as tables and accuracy-vs-eps curves, and
offline with one notice (``wandb sync`` uploads later) when no API key is set up.

How runs relate: a fit records its W&B run in its run folder (``wandb.json``); ``sslr test`` and
``sslr attack`` of that fit's checkpoint open a *linked* run (same group and config, job type
``test``/``attack``, the fit's id in ``fit_run_id``) rather than resuming the fit's run: an
offline run cannot be resumed, several attacks of one checkpoint may run at once, and a resumed
run's history must continue the fit's step counter, which an attack's eps axis does not.
"""

from __future__ import annotations

import json
import netrc
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from sslr.atomic import atomic_write

RUN_RECORD = "wandb.json"  # in a fit's run folder: the W&B run that attack/test link to
TABLE_COLUMNS = ("rule", "backbone", "dataset", "attack", "norm", "eps", "gradient")


def wandb_key_configured() -> bool:
    """Whether W&B has credentials here: WANDB_API_KEY or a ~/.netrc entry for its API."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger; ``offline=None`` (the default) means offline exactly when no
    API key is configured and WANDB_MODE is unset, so a run without credentials logs to
    ``<save_dir>/wandb`` (``wandb sync`` uploads it later) instead of failing or hanging.

    The sslr CLI fills ``name`` (backbone_rule_scale[_bits][_stage]), ``group``
    (dataset/backbone[/bits]), ``job_type`` (fit, test, attack) and ``tags`` from the config
    when they are not given, and puts the whole resolved config in the run's config.
    """

    def __init__(
        self,
        name: str | None = None,
        project: str = "sslr",
        save_dir: str = ".",
        group: str | None = None,
        tags: list[str] | None = None,
        entity: str | None = None,
        offline: bool | None = None,
        log_model: bool = False,
        job_type: str | None = None,
    ) -> None:
        if offline is None:
            offline = not wandb_key_configured() and not os.environ.get("WANDB_MODE")
            if offline:
                where = Path(save_dir).resolve() / "wandb"
                rank_zero_info(
                    "W&B: no API key configured (WANDB_API_KEY or `wandb login`); logging "
                    f"offline to {where}, upload later with `wandb sync {where}/offline-run-*`."
                )
        super().__init__(
            name=name,
            project=project,
            save_dir=save_dir,
            offline=offline,
            log_model=log_model,
            group=group,
            tags=tags,
            entity=entity,
            job_type=job_type,
        )
        # Lightning always passes anonymous=None, which wandb answers with a warning per run.
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    def set_run_config(self, config: Mapping[str, Any]) -> None:
        """The W&B config the run starts with (before its first log: wandb.init's ``config``)."""
        self._wandb_init["config"] = dict(config)


# ---- one logger of each kind ------------------------------------------------------------------


def one_logger_per_kind(loggers: list) -> tuple[list, list[str]]:
    """``trainer.logger`` entries (class_path/init_args) with one logger per kind: layered
    ``--config`` files can each add one (a W&B run's config.yaml holds its WandbLogger, the W&B
    overlay appends another), and two loggers of a kind log everything twice into one run.

    Entries of one kind (the class name: sslr's WandbLogger and Lightning's are one kind) become
    the first, with the options a later one sets to other than its default laid over it (the
    later ``--config`` wins, as everywhere else). Returns the entries and the kinds merged."""
    import importlib
    import inspect

    kept: dict[str, Any] = {}
    merged: list[str] = []
    out = []
    for entry in loggers:
        class_path = getattr(entry, "class_path", None)
        if not isinstance(class_path, str):
            out.append(entry)
            continue
        kind = _short(class_path)
        first = kept.get(kind)
        if first is None:
            kept[kind] = entry
            out.append(entry)
            continue
        module, _, name = class_path.rpartition(".")
        try:
            parameters = inspect.signature(
                getattr(importlib.import_module(module), name)
            ).parameters
        except (ImportError, AttributeError, TypeError, ValueError):
            parameters = {}
        given = entry.init_args or {}
        for key in list(given.keys()):
            # A key the class takes through **kwargs (Lightning's WandbLogger: group, tags)
            # has no default to compare with: None there means unset.
            default = parameters[key].default if key in parameters else None
            if given[key] != default:
                first.init_args[key] = given[key]
        if kind not in merged:
            merged.append(kind)
    return out, merged


# ---- what a run is -------------------------------------------------------------------------


def _short(class_path: Any) -> str:
    return str(class_path or "").rsplit(".", 1)[-1]


def _plain(value: Any) -> Any:
    """A config value W&B can store: class_path/init_args folded to {class, args...}."""
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, Mapping):
        if "class_path" in value:
            args = _plain(value.get("init_args") or {})
            return {"class": _short(value["class_path"]), **args}
        return {str(k): _plain(v) for k, v in value.items() if not str(k).startswith("__")}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def describe_run(config: Mapping[str, Any], job: str) -> dict[str, Any]:
    """What a run is, from its resolved CLI config: dataset, backbone, rule, scale, bits, stage,
    job, and the W&B name, group and tags made from them.

    ``stage`` is ``train`` (a fit from ImageNet or scratch weights), ``finetune`` (a fit from
    ``pretrained_ckpt``) or the job itself for test and attack.
    """
    config = _plain(config)
    model, data = config.get("model") or {}, config.get("data") or {}
    backbone, rule = model.get("backbone") or "model", model.get("rule") or "bp"
    scale, bits = model.get("scale"), model.get("bits")
    dataset = data.get("class") or "data"
    if job == "fit":
        stage = "finetune" if model.get("pretrained_ckpt") else "train"
    else:
        stage = job
    name = "_".join(
        str(p)
        for p in (backbone, rule, scale if rule != "bp" else None, bits and f"{bits}bits", stage)
        if p
    )
    group = "/".join(str(p) for p in (dataset, backbone, bits and f"{bits}bits") if p)
    tags = [str(t) for t in (rule, backbone, dataset, stage, bits and f"{bits}bits") if t]
    return {
        "dataset": dataset,
        "backbone": backbone,
        "rule": rule,
        "scale": scale,
        "bits": bits,
        "stage": stage,
        "job": job,
        "name": name,
        "group": group,
        "tags": tags,
    }


def wandb_config(config: Mapping[str, Any], job: str) -> dict[str, Any]:
    """The W&B config of a run: the whole resolved config (model, data, optimizer, lr_scheduler,
    trainer, seed) with class paths shortened, plus the run's description at the top level
    (``rule``, ``backbone``, ``dataset``, ...) so runs filter and group by them."""
    plain = _plain(config)
    plain.pop("config", None)  # the --config file list: paths, not settings
    meta = describe_run(config, job)
    return {**plain, **{k: meta[k] for k in ("dataset", "backbone", "rule", "scale", "bits")},
            "stage": meta["stage"], "job": job}  # fmt: skip


def fill_wandb_args(init_args: Any, config: Mapping[str, Any], job: str) -> None:
    """Fill a WandbLogger's name, group, job type and tags from ``describe_run`` where unset,
    or where they are what sslr filled in for the fit (a fit's saved config.yaml reused for
    ``sslr test`` / ``sslr attack`` carries them): those are re-derived for this job."""
    meta, for_fit = describe_run(config, job), describe_run(config, "fit")
    for key, field in (("name", "name"), ("group", "group"), ("job_type", "job"), ("tags", "tags")):
        value = init_args.get(key)
        if not value or value == for_fit[field]:
            init_args[key] = meta[field]


def fit_run_record(ckpt_path: str | os.PathLike | None) -> dict[str, Any] | None:
    """The W&B run recorded by the fit that wrote ``ckpt_path`` (None when it had none)."""
    if not ckpt_path:
        return None
    path = Path(ckpt_path)
    folder = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    try:
        return json.loads((folder / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return None


def wire_wandb(trainer, config: Mapping[str, Any], job: str) -> None:
    """Give every WandbLogger of ``trainer`` the run's W&B config; for ``test``/``attack`` of
    a fit that logged to W&B, link to it (its group, ``fit_run_id``); for ``fit``, record the
    W&B run in the run folder when training starts."""
    wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, _LightningWandbLogger)]
    if not wandb_loggers:
        return
    # One command, one W&B run: Lightning reuses a run still open in this process (a previous
    # command run from Python, as the grid and the demo do), which would merge the two.
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
    run_config = wandb_config(config, job)
    record = fit_run_record(config.get("ckpt_path")) if job != "fit" else None
    if record:
        run_config.update(fit_run_id=record.get("id"), fit_run_name=record.get("name"))
    for logger in wandb_loggers:
        if isinstance(logger, WandbLogger):
            logger.set_run_config(run_config)
        else:  # Lightning's own class: same config, through its documented config update
            logger.experiment.config.update(run_config, allow_val_change=True)
        if record and record.get("group"):
            logger._wandb_init["group"] = record["group"]
    if job == "fit":
        trainer.callbacks.append(RecordWandbRun())


class RecordWandbRun(Callback):
    """Writes ``wandb.json`` (id, name, group, project, offline folder) into the fit's run
    folder at fit start, so ``sslr test`` / ``sslr attack`` of its checkpoints can link to it."""

    @rank_zero_only
    def on_fit_start(self, trainer, pl_module) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, _LightningWandbLogger) and trainer.log_dir:
                run = logger.experiment
                record = {
                    "id": run.id,
                    "name": run.name,
                    "group": run.group,
                    "project": run.project,
                    "dir": str(Path(run.dir).resolve().parent),
                }
                folder = Path(trainer.log_dir)
                folder.mkdir(parents=True, exist_ok=True)
                atomic_write(folder / RUN_RECORD, json.dumps(record, indent=1) + "\n")
                return


# ---- robustness results ----------------------------------------------------------------------


def run_meta_of(model, datamodule=None) -> dict[str, Any]:
    """``run_meta`` for :func:`log_robustness` from a task and its data module."""
    hparams = getattr(model, "hparams", {}) or {}
    return {
        "rule": getattr(model, "rule", None) or hparams.get("rule"),
        "backbone": hparams.get("backbone"),
        "dataset": type(datamodule).__name__ if datamodule is not None else None,
        "bits": hparams.get("bits"),
    }


def _field(row: Any, key: str, default: Any = None) -> Any:
    return row.get(key, default) if isinstance(row, Mapping) else getattr(row, key, default)


def _optional(value: Any) -> float | None:
    return None if value in (None, "") else float(value)


def robustness_tables(
    rows: Iterable[Any], run_meta: Mapping[str, Any]
) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """Per metric (``accuracy``, or ``mAP`` / ``t-mAP`` for hashing), the table's columns
    (rule, backbone, dataset, attack, norm, eps, gradient, <metric>, n, ci_low, ci_high: the 95%
    interval, empty where a row has none) and its rows, sorted by attack, norm, gradient and
    eps. A row's value is its ``accuracy`` field (``value`` also accepted), its metric its
    ``metric`` field (default ``accuracy``)."""
    tables: dict[str, tuple[list[str], list[list[Any]]]] = {}
    for row in rows:
        metric = str(_field(row, "metric") or "accuracy")
        value = _field(row, "accuracy", _field(row, "value"))
        meta = {k: _field(row, k) or run_meta.get(k) for k in ("rule", "backbone", "dataset")}
        cells = [meta["rule"], meta["backbone"], meta["dataset"], str(_field(row, "attack")),
                 str(_field(row, "norm")), float(_field(row, "eps")), str(_field(row, "gradient")),
                 float(value), int(_field(row, "n")), _optional(_field(row, "ci_low")),
                 _optional(_field(row, "ci_high"))]  # fmt: skip
        columns = [*TABLE_COLUMNS, metric, "n", "ci_low", "ci_high"]
        tables.setdefault(metric, (columns, []))[1].append(cells)
    for _, data in tables.values():
        data.sort(key=lambda c: (c[3], c[4], c[6], c[5]))
    return tables


def log_robustness(
    loggers: Iterable,
    rows: Iterable[Any],
    run_meta: Mapping[str, Any],
    *,
    prefix: str = "robust",
) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """Log robustness results to every W&B logger in ``loggers`` (others are skipped: the CSV
    and metrics go through the suite's own writers) and return the tables.

    Per metric: a ``wandb.Table`` ``<prefix>/table`` (``<prefix>/table_<metric>`` for mAP /
    t-mAP) and one line chart per norm, ``<prefix>/chart_<metric>_<norm>`` (series
    ``<rule> <attack> <gradient>``); and curves in the run history, ``<prefix>/<metric>/
    <attack>-<norm>/<gradient>`` against ``<prefix>/eps_<norm>`` (declared with
    ``define_metric``), so W&B's ordinary line panels overlay every run, one line per rule.

    Args:
        loggers: e.g. ``trainer.loggers``.
        rows: dicts or objects with ``attack``, ``norm``, ``eps``, ``gradient``, ``accuracy``
            (the metric's value), ``n`` and optionally ``metric`` (``accuracy``, ``mAP``,
            ``t-mAP``) and ``rule`` / ``backbone`` / ``dataset``.
        run_meta: ``rule``, ``backbone``, ``dataset`` of the evaluated model
            (:func:`run_meta_of`), used where a row does not say.
    """
    rows = list(rows)
    tables = robustness_tables(rows, run_meta)
    targets = [lg for lg in loggers if isinstance(lg, _LightningWandbLogger)]
    if not targets or not tables:
        return tables
    import wandb

    for logger in targets:
        run = logger.experiment
        payload: dict[str, Any] = {}
        curves: dict[tuple[str, float], dict[str, float]] = {}
        for metric, (columns, data) in tables.items():
            suffix = "" if metric == "accuracy" else f"_{metric}"
            payload[f"{prefix}/table{suffix}"] = wandb.Table(columns=columns, data=data)
            for norm in sorted({c[4] for c in data}):
                series = [[f"{c[0]} {c[3]} {c[6]}", c[5], c[7]] for c in data if c[4] == norm]
                chart = wandb.Table(columns=["series", "eps", metric], data=series)
                payload[f"{prefix}/chart_{metric}_{norm}"] = wandb.plot.line(
                    chart, "eps", metric, stroke="series", title=f"{metric} vs eps ({norm})"
                )
            for c in data:
                key = f"{prefix}/{metric}/{c[3]}-{c[4]}/{c[6]}"
                run.define_metric(key, step_metric=f"{prefix}/eps_{c[4]}")
                curves.setdefault((c[4], c[5]), {f"{prefix}/eps_{c[4]}": c[5]})[key] = c[7]
        run.log(payload)
        for _, values in sorted(curves.items()):
            run.log(values)
    return tables
