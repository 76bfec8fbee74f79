"""The evaluation engine: every attack, norm, gradient source and epsilon of a ``SuiteConfig``
on a fixed, seeded subset, for classification and hashing alike, as rows of
``robustness.csv``.

A task (:class:`~sslr.robustness.classification.ClassificationEvaluation`,
:class:`~sslr.robustness.hashing.HashingEvaluation`) says what an attack optimises (its
objective and per-image target information) and how its result is scored (accuracy; mAP or
t-mAP). The engine owns the rest, once: the grid of cells, the seeded subset, the gradient
sources (``rule``, ``exact``, ``eot``, ``transfer``), bound checks, NaN counts, rows, progress,
CSV, plot and logger output. Attacks come from the registry
(:mod:`sslr.robustness.registry`). Per-image outcomes of every cell (classification: still
correct, a bool per image; hashing: the adversarial code) stay available through
:class:`SuiteResult`.

Checkpoints are not loaded here: the application hands in models (see ``sslr.attack``).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sslr.outcomes import FILE as OUTCOMES_FILE
from sslr.outcomes import write_outcomes
from sslr.robustness.attacks import bound_excess, check_bounds
from sslr.robustness.classification import ClassificationEvaluation
from sslr.robustness.config import DEFAULT_GRADIENTS, GradientSource, Norm, SuiteConfig
from sslr.robustness.gradients import GradientSourceClassifier
from sslr.robustness.guard import attack_mode
from sslr.robustness.hashing import HashingTarget, as_hashing_target, hashing_evaluation
from sslr.robustness.outputs import log_rows, plot_curves, write_csv
from sslr.robustness.registry import AttackSpec, get_attack
from sslr.robustness.results import RobustnessRow
from sslr.robustness.shards import (
    DRAW_STRIDE,
    SINGLE,
    BatchStore,
    Shard,
    batch_seed,
    cell_key,
)
from sslr.robustness.subset import draw_subset
from sslr.robustness.target import AttackTarget, as_target
from sslr.stats import interval

log = logging.getLogger(__name__)
HEARTBEAT_S = 10.0  # the longest silence while a cell runs


@dataclass
class SuiteResult:
    """The rows of a suite, and per cell ``(attack, norm, gradient, eps)`` the per-image
    outcomes (classification: bool (N,), still correct; hashing: codes (N, K)) and what each
    image adds to the cell's score (``per_unit``, keyed by ``(attack, norm, gradient, eps,
    metric)``: float64 (N,), 1/0 correct or not; hashing: each query's AP or t-AP), the worst
    case included; ``index``: the images' indices
    in their split (what ``outcomes.json`` keys them by)."""

    rows: list[RobustnessRow] = field(default_factory=list)
    per_image: dict[tuple, torch.Tensor] = field(default_factory=dict)
    per_unit: dict[tuple, torch.Tensor] = field(default_factory=dict)
    index: list[int] = field(default_factory=list)
    gradients: int = 0  # input gradients the attacks took on the attacked model
    degenerate: int = 0  # of which all zero or not finite

    @property
    def degenerate_share(self) -> float | None:
        """The share of input gradients that were all zero or not finite (None: no gradient
        was taken, e.g. query attacks only)."""
        return self.degenerate / self.gradients if self.gradients else None


class _Progress:
    """One line per finished cell with done / left / ETA, and a heartbeat inside long cells."""

    def __init__(self, total: int, say: Callable[[str], None]) -> None:
        self.total, self.done, self.say = total, 0, say
        self.start = self.last = time.monotonic()

    def beat(self, what: str, batch: int, batches: int) -> None:
        now = time.monotonic()
        if now - self.last >= HEARTBEAT_S:
            self.say(f"attack {self.done + 1}/{self.total} {what}: batch {batch}/{batches}")
            self.last = now

    def finished(self, what: str, metric: str, value: float) -> None:
        self.done += 1
        now = time.monotonic()
        left = self.total - self.done
        eta = (now - self.start) / self.done * left
        self.say(
            f"attack {self.done}/{self.total} {what}: {metric} {value:.4f} "
            f"({left} left, ETA {_duration(eta)})"
        )
        self.last = now


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _sources(spec: AttackSpec, config: SuiteConfig, target) -> list[GradientSource]:
    if not spec.white_box:
        return [GradientSource.NONE]
    sources = list(config.gradient_sources)
    if GradientSource.EOT in sources and not target.stochastic_feedback:
        sources.remove(GradientSource.EOT)
    return sources


def _warn_eot(config: SuiteConfig, specs, target) -> None:
    """Say that ``eot`` is skipped on a deterministic rule when the user asked for it (the
    default list holds it for brsf models: no warning then)."""
    asked = config.gradients is not None and tuple(config.gradients) != DEFAULT_GRADIENTS
    if asked and GradientSource.EOT in config.gradient_sources and not target.stochastic_feedback:
        if any(s.white_box for s in specs):
            rules = ", ".join(sorted(target.rules)) or "plain backprop"
            warnings.warn(
                f"Gradient source 'eot' skipped: the target's rule ({rules}) has a deterministic "
                "backward pass, where eot equals rule (it is for brsf)",
                UserWarning,
                stacklevel=3,
            )


def check_surrogate(config: SuiteConfig, specs, surrogate) -> None:
    """ValueError when ``config`` asks for transfer attacks (a white-box spec among ``specs``)
    and there is no ``surrogate`` (a model, or its checkpoint path)."""
    if config.wants_transfer and any(s.white_box for s in specs) and surrogate is None:
        raise ValueError(
            "gradient 'transfer' needs a surrogate: --suite.surrogate_ckpt (surrogate_ckpt in a "
            "config, surrogate= from Python), the model whose adversarial examples are "
            "transferred (the bp fine-tuned one); set it, or drop transfer"
        )


def attack_cell(evaluation, spec: AttackSpec, context: dict, **cell) -> torch.Tensor:
    """One cell: the per-image outcomes of ``spec`` at ``eps`` in ``norm`` along ``gradient``
    (crafted on the surrogate for ``transfer``); keywords as :func:`cell_outcomes`. Every
    example is checked to lie in its eps ball and in [0, 1]
    (:class:`~sslr.robustness.AttackBoundsError` otherwise); NaN gradient entries are treated
    as 0 with one warning per cell. For an ensemble, the ensemble's outcomes (see
    :func:`cell_outcomes` for its members')."""
    return cell_outcomes(evaluation, spec, context, **cell)[spec.name]


def _robust_everywhere(parts: list[torch.Tensor]) -> torch.Tensor:
    """Per image: robust under every one of ``parts`` (bool (N,) each)."""
    robust = parts[0].clone()
    for part in parts[1:]:
        robust &= part
    return robust


def cell_outcomes(
    evaluation,
    spec: AttackSpec,
    context: dict,
    *,
    norm: Norm,
    eps: float,
    gradient: GradientSource,
    config: SuiteConfig,
    beat: Callable[[int, int], None] = lambda batch, batches: None,
    counts: dict | None = None,
    shard: Shard = SINGLE,
    store: BatchStore | None = None,
) -> dict[str, torch.Tensor]:
    """The per-image outcomes of one cell by row name: ``{spec.name: outcomes}``; for an
    ensemble (AutoAttack) also one entry per member (``autoattack/apgd-ce``, ...), the
    ensemble's being the images every member left correct. ``counts`` (a dict) receives the
    input gradients seen and those all zero or not finite (``gradients``, ``degenerate``).

    The subset runs in batches of ``config.batch_size``, batch k seeded from (seed, k) alone
    (:func:`~sslr.robustness.shards.batch_seed`); ``shard`` runs this process's batches and
    gathers the others' (:mod:`sslr.robustness.shards`), ``store`` keeps finished batches and
    gives back those a previous, interrupted run finished."""
    if eps <= 0:
        raise ValueError("eps must be > 0 here: eps = 0 is the clean score")
    if spec.white_box == (gradient is GradientSource.NONE):
        raise ValueError(f"Gradient source {gradient.value!r} does not apply to {spec.name}")
    target = evaluation.target
    if gradient is GradientSource.TRANSFER:
        if evaluation.surrogate is None:
            raise ValueError("gradient 'transfer' needs a surrogate model")
        source, crafted_on = GradientSource.RULE, evaluation.surrogate
    else:
        source, crafted_on = gradient, target
    provider = GradientSourceClassifier(
        evaluation.view(crafted_on),
        evaluation.x.shape[1:],
        source=source,
        eot_samples=config.eot_samples,
        loss=evaluation.loss(spec),
        labels=evaluation.labels,
    )
    provider.transfer = gradient is GradientSource.TRANSFER
    networks = {id(m.network): m.network for m in (target, crafted_on)}.values()
    goals = context["goals"][id(crafted_on)]
    key = cell_key(spec.name, norm.value, gradient.value, eps)
    n = evaluation.x.shape[0]
    batches = -(-n // config.batch_size)
    done: dict[int, dict] = {}
    failure: Exception | None = None
    with attack_mode(*networks, warn_train_mode=False):
        try:
            for k in range(batches):
                if not shard.owns(k):
                    continue
                record = store.get(key, k) if store is not None else None
                if record is None:
                    record = _attack_batch(
                        evaluation, spec, goals, crafted_on, provider, k, eps, norm, config
                    )
                    if store is not None:
                        store.put(key, k, record)
                done[k] = record
                beat(k + 1, batches)
        except Exception as err:  # said by every process, not only this one (see Shard.merge)
            failure = err
    records = shard.merge(failure if failure is not None else done)
    records = [records[k] for k in range(batches)]
    what = f"{spec.name} ({norm.value}, eps={eps:.4g}, gradient={gradient.value})"
    check_bounds(max(r["excess"] for r in records), what)
    nan = sum(r["nan"] for r in records)
    if nan:
        warnings.warn(
            f"{what}: {nan} NaN input-gradient entries were treated as 0",
            RuntimeWarning,
            stacklevel=2,
        )
    if counts is not None and not provider.transfer:
        counts["gradients"] = counts.get("gradients", 0) + sum(r["gradients"] for r in records)
        counts["degenerate"] = counts.get("degenerate", 0) + sum(r["degenerate"] for r in records)
    device = target.device
    names = records[0]["outcomes"].keys()
    outcomes = {
        name: torch.cat([r["outcomes"][name] for r in records]).to(device) for name in names
    }
    if spec.ensemble:
        outcomes[spec.name] = _robust_everywhere(list(outcomes.values()))
    return outcomes


def _attack_batch(evaluation, spec, goals, crafted_on, provider, k, eps, norm, config) -> dict:
    """Batch ``k`` of a cell, crafted on ``crafted_on`` towards ``goals``: its outcomes per row
    name (on the CPU), its largest bound excess, and the NaN and gradient counts it added;
    seeded from (seed, k) alone."""
    target, crafting = evaluation.target, crafted_on.device
    index = slice(k * config.batch_size, (k + 1) * config.batch_size)
    seed = batch_seed(config.seed, k)
    generator = torch.Generator(device=crafting).manual_seed(seed)
    np.random.seed(seed % 2**32)  # ART's Square and random start draw from NumPy
    before = [
        int(c) for c in (provider.nan_count, provider.gradient_count, provider.degenerate_count)
    ]
    provider.draw_start = k * DRAW_STRIDE
    xb, yb = evaluation.x[index].to(crafting), goals[index].to(crafting)
    with provider:
        adv = spec.run(provider, xb, yb, eps=eps, norm=norm, settings=config, generator=generator)
    advs = adv if isinstance(adv, dict) else {spec.name: adv}
    xb = xb.to(target.device)
    excess = torch.full((), -1.0, device=target.device)
    outcomes = {}
    for name, example in advs.items():
        example = example.to(target.device)
        excess = torch.maximum(excess, bound_excess(xb, example, eps, norm))
        outcomes[name] = evaluation.outcome(example, index).cpu()
    after = [
        int(c) for c in (provider.nan_count, provider.gradient_count, provider.degenerate_count)
    ]
    nan, gradients, degenerate = (a - b for a, b in zip(after, before, strict=True))
    return {
        "outcomes": outcomes,
        "excess": float(excess),
        "nan": nan,
        "gradients": gradients,
        "degenerate": degenerate,
    }


WORST = "worst"
WORST_GRADIENT = "any"


def _row(attack, norm, eps, steps, gradient, value, n, metric, units, seed) -> RobustnessRow:
    """A cell's row, with the 95% interval of its score from the per-image ``units``."""
    low, high = interval(metric, units.tolist(), seed)
    return RobustnessRow(
        attack=attack, norm=norm, eps=eps, steps=steps, gradient=gradient, accuracy=value, n=n,
        metric=metric, ci_low=round(low, 6), ci_high=round(high, 6),
    )  # fmt: skip


def worst_rows(result: SuiteResult, n: int, seed: int = 0) -> list[RobustnessRow]:
    """Per norm and eps, the per-image worst case over every attack and gradient source that
    ran (an image is robust only if every cell left it correctly classified): the robust
    accuracy to quote. Classification (for hashing see :func:`hashing_worst_rows`). The
    per-image masks are kept in ``result.per_image`` under ``("worst", norm, "any", eps)``."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for (attack, norm, _gradient, eps), outcomes in result.per_image.items():
        if outcomes.dtype == torch.bool and "/" not in attack:  # members are in the ensemble
            groups.setdefault((norm, eps), []).append(outcomes)
    rows = []
    for (norm, eps), parts in groups.items():
        robust = _robust_everywhere(parts)
        key = (WORST, norm, WORST_GRADIENT, eps)
        result.per_image[key] = robust
        units = robust.double().cpu()
        result.per_unit[(*key, "accuracy")] = units
        value = int(robust.sum()) / max(robust.numel(), 1)
        rows.append(_row(WORST, norm, eps, 0, WORST_GRADIENT, value, n, "accuracy", units, seed))
    return rows


def hashing_worst_rows(
    query_scores: dict[tuple, list[torch.Tensor]],
    n: int,
    result: SuiteResult | None = None,
    seed: int = 0,
) -> list:
    """Hashing's worst case, per metric, norm and eps, over every attack and gradient source
    that ran: each query's lowest AP over the untargeted cells (``mAP``) and its highest
    targeted AP over the targeted ones (``t-mAP``, which an attack drives up), averaged over
    the queries. Like classification's ``worst``, it is at least as strong as every cell.
    The per-query values go to ``result.per_unit`` when given."""
    rows = []
    for (metric, norm, eps), parts in query_scores.items():
        stacked = torch.stack(parts)
        per_query = (stacked.amax(0) if metric == "t-mAP" else stacked.amin(0)).double().cpu()
        value = float(per_query.mean()) if per_query.numel() else 0.0
        if result is not None:
            result.per_unit[(WORST, norm, WORST_GRADIENT, eps, metric)] = per_query
        rows.append(_row(WORST, norm, eps, 0, WORST_GRADIENT, value, n, metric, per_query, seed))
    return rows


def check_classes(specs, config: SuiteConfig, num_classes: int) -> None:
    """An attack (or loss) that needs more classes than the model has: one ValueError, before
    any work."""
    for spec in specs:
        if num_classes < spec.min_classes:
            raise ValueError(
                f"Attack {spec.name!r} needs at least {spec.min_classes} classes, the model has "
                f"{num_classes}: on a {num_classes}-class task use apgd-ce or pgd"
            )
    if config.loss_name == "dlr" and num_classes < 3:
        raise ValueError(
            f"The dlr loss needs at least 3 classes, the model has {num_classes}: use "
            "--suite.loss ce or margin"
        )


def begin_attacks(evaluation, config: SuiteConfig, *, warn_train_mode: bool = True) -> dict:
    """Each attack's context on ``evaluation`` (its goals: labels, clean codes, drawn targets
    and anchors), by attack name: what the data can refuse (a targeted attack with no database
    item of another label) is refused here, before any attack runs."""
    specs = [get_attack(name) for name in config.attacks_for(evaluation.task)]
    models = [m for m in (evaluation.target, evaluation.surrogate) if m is not None]
    networks = {id(m.network): m.network for m in models}.values()
    with attack_mode(*networks, warn_train_mode=warn_train_mode):
        return {spec.name: evaluation.begin(spec, config) for spec in specs}


def run_cells(
    evaluation,
    config: SuiteConfig,
    *,
    warn_train_mode: bool = True,
    progress: Callable[[str], None] | None = None,
    contexts: dict | None = None,
    shard: Shard = SINGLE,
    store: BatchStore | None = None,
) -> SuiteResult:
    """Every cell of ``config`` on ``evaluation`` (a task's evaluation), in the order attack,
    norm, gradient source, epsilon, then the ``worst`` rows. eps = 0 is not
    attacked: its rows hold the clean score of the same images. ``eot`` is skipped (with a
    warning) for a target without brsf layers, where it equals ``rule``. ``contexts``: those
    of :func:`begin_attacks`, when already made. ``shard`` and ``store``: see
    :func:`cell_outcomes` (every process returns the whole result)."""
    target = evaluation.target
    specs = [get_attack(name) for name in config.attacks_for(evaluation.task)]
    check_surrogate(config, specs, evaluation.surrogate)
    _warn_eot(config, specs, target)
    cells = [
        (spec, norm, source, float(eps))
        for spec in specs
        for norm in config.norm_kinds
        for source in _sources(spec, config, target)
        for eps in config.eps_for(norm)
    ]
    say = progress or log.info
    meter = _Progress(sum(1 for cell in cells if cell[3] > 0), say)
    result, n = SuiteResult(), int(evaluation.x.shape[0])
    models = [m for m in (target, evaluation.surrogate) if m is not None]
    networks = {id(m.network): m.network for m in models}.values()
    counts: dict[str, int] = {}
    with attack_mode(*networks, warn_train_mode=warn_train_mode):
        contexts = dict(contexts or {})
        query_scores: dict[tuple, list[torch.Tensor]] = {}  # hashing: per-query APs per cell
        for spec, norm, source, eps in cells:
            if spec.name not in contexts:
                contexts[spec.name] = evaluation.begin(spec, config)
            context = contexts[spec.name]
            what = f"{spec.name} {norm.value} eps={eps:.4g} {source.value}"
            if eps == 0.0:
                clean = evaluation.clean(config.batch_size)
                names = [spec.name]
                if spec.ensemble:
                    names = [f"{spec.name}/{m}" for m in _member_names(spec, config, target)]
                    names.append(spec.name)
                outcomes = {name: clean for name in names}
            else:
                outcomes = cell_outcomes(
                    evaluation,
                    spec,
                    context,
                    norm=norm,
                    eps=eps,
                    gradient=source,
                    config=config,
                    beat=lambda b, nb, what=what: meter.beat(what, b, nb),
                    counts=counts,
                    shard=shard,
                    store=store,
                )
            metric = evaluation.metric(spec)
            for name, per_image in outcomes.items():
                steps = spec.steps(config) if name == spec.name else spec.member_steps(config, name)
                value = evaluation.score(context, per_image)
                key = (name, norm.value, source.value, eps)
                if evaluation.task == "hashing":
                    units = evaluation.per_query(context, per_image).double().cpu()
                    if "/" not in name:
                        query_scores.setdefault((metric, norm.value, eps), []).append(units)
                else:
                    units = per_image.double().cpu()
                result.per_image[key] = per_image
                result.per_unit[(*key, metric)] = units
                row = _row(name, norm.value, eps, steps, source.value, float(value), n, metric, units, config.seed)  # fmt: skip
                result.rows.append(row)
                log.debug("%s", row)
            if eps > 0:
                value = evaluation.score(context, outcomes[spec.name])
                meter.finished(what, metric, value)
    if evaluation.task == "classification":
        result.rows.extend(worst_rows(result, n, config.seed))
    else:
        result.rows.extend(hashing_worst_rows(query_scores, n, result, config.seed))
    index = getattr(evaluation, "index", None)
    result.index = [int(i) for i in (range(n) if index is None else index)]
    result.gradients = counts.get("gradients", 0)
    result.degenerate = counts.get("degenerate", 0)
    return result


def _member_names(spec: AttackSpec, config: SuiteConfig, target) -> list[str]:
    from sslr.robustness.reference import members

    return list(members(config, target.num_classes))


def evaluate(
    target,
    x: torch.Tensor,
    y: torch.Tensor,
    config: SuiteConfig,
    *,
    surrogate=None,
    warn_train_mode: bool = True,
) -> list[RobustnessRow]:
    """Run the suite on the images ``x`` (N, C, H, W) in [0, 1] with labels ``y`` (N,) of a
    classifier: one row per attack, norm, gradient source and epsilon, in that order."""
    evaluation = classification_evaluation(target, x, y, config, surrogate)
    return run_cells(evaluation, config, warn_train_mode=warn_train_mode).rows


def classification_evaluation(target, x, y, config, surrogate=None) -> ClassificationEvaluation:
    target = as_target(target)
    surrogate = None if surrogate is None else as_target(surrogate)
    check_suite(config, target, surrogate)
    device = target.device
    return ClassificationEvaluation(target, surrogate, x.to(device), y.to(device))


def check_suite(config: SuiteConfig, target, surrogate=None) -> list[AttackSpec]:
    """Every check the engine makes of ``config`` for ``target`` (a task or target of either
    task) before it attacks: attacks the task can run, epsilons, a surrogate where ``transfer``
    needs one (a model, or its checkpoint path), class counts the attacks and loss need, the
    surrogate's class count, the code length. One ValueError; callers that make folders or
    take locks call it first, so that a refused suite leaves nothing. Returns the specs."""
    hashing = _is_hashing(target)
    task = "hashing" if hashing else "classification"
    specs = [get_attack(name) for name in config.attacks_for(task)]
    for norm in config.norm_kinds:
        config.eps_for(norm)
    check_surrogate(config, specs, surrogate)
    if hashing:
        as_hashing_target(target)  # the code length: at least 2 bits
        return specs
    target = as_target(target)
    check_classes(specs, config, target.num_classes)
    if surrogate is not None and not isinstance(surrogate, str | Path):
        classes = as_target(surrogate).num_classes
        if classes != target.num_classes:
            raise ValueError(
                f"The surrogate has {classes} classes, the target {target.num_classes}: give "
                "the bp fine-tuned model of the same dataset (--suite.surrogate_ckpt)"
            )
    return specs


def clean_accuracy(target: AttackTarget, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> int:
    """Number of correctly classified images (eval mode, no attack)."""
    evaluation = ClassificationEvaluation(as_target(target), None, x, y)
    with attack_mode(evaluation.target.network):
        return int(evaluation.clean(batch_size).sum())


def robust_accuracy(
    target: AttackTarget,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attack: str,
    norm: Norm | str,
    eps: float,
    gradient: GradientSource | str,
    config: SuiteConfig,
    surrogate: AttackTarget | None = None,
) -> int:
    """Number of images of (x, y) still correctly classified by ``target`` after ``attack`` at
    ``eps``; the examples come from ``surrogate`` for ``gradient="transfer"``."""
    spec = get_attack(attack)
    if eps <= 0:
        raise ValueError("eps must be > 0 here: eps = 0 is the clean accuracy")
    gradient = GradientSource(gradient)
    if spec.white_box == (gradient is GradientSource.NONE):
        raise ValueError(f"Gradient source {gradient.value!r} does not apply to {spec.name}")
    if gradient is GradientSource.TRANSFER and surrogate is None:
        raise ValueError("gradient 'transfer' needs a surrogate model")
    target = as_target(target)
    surrogate = None if surrogate is None else as_target(surrogate)
    evaluation = ClassificationEvaluation(target, surrogate, x.to(target.device), y)
    context = evaluation.begin(spec, config)
    outcomes = attack_cell(
        evaluation, spec, context, norm=Norm(norm), eps=eps, gradient=gradient, config=config
    )
    return int(outcomes.sum())


def _is_hashing(model) -> bool:
    if isinstance(model, HashingTarget):
        return True
    hparams = getattr(model, "hparams", None)
    return hparams is not None and "bits" in hparams


def suite_evaluation(target, data, config: SuiteConfig, surrogate=None, shard: Shard = SINGLE):
    """The task evaluation of ``target`` (a classifier or hashing model, task or target) on
    the fixed, seeded subset of ``data``'s test split (hashing: the database encoded by the
    processes of ``shard`` together)."""
    check_suite(config, target, surrogate)
    if _is_hashing(target):
        target = as_hashing_target(target)
        surrogate = None if surrogate is None else as_hashing_target(surrogate)
        return hashing_evaluation(target, data, config, surrogate, shard)
    x, y, index = draw_subset(data, config.n_samples, config.seed)
    evaluation = classification_evaluation(target, x, y, config, surrogate)
    evaluation.index = index
    return evaluation


@dataclass
class PreparedSuite:
    """A suite ready to attack: its evaluation (the subset drawn; hashing: the database
    encoded) and each attack's context (:func:`begin_attacks`)."""

    evaluation: object
    contexts: dict


def prepare_suite(
    target,
    data,
    config: SuiteConfig,
    surrogate=None,
    *,
    warn_train_mode: bool = True,
    shard: Shard = SINGLE,
) -> PreparedSuite:
    """Everything of a suite that can refuse it, before any attack runs: the settings
    (:func:`check_suite`), the data (an empty split, a dataset not found) and each attack's
    targets. A caller that makes a folder for the results prepares first, so that a refused
    suite leaves nothing behind; :func:`run_suite` takes the result as ``prepared``."""
    evaluation = suite_evaluation(target, data, config, surrogate, shard)
    contexts = begin_attacks(evaluation, config, warn_train_mode=warn_train_mode)
    return PreparedSuite(evaluation, contexts)


def run_suite(
    target,
    data,
    config: SuiteConfig | None = None,
    *,
    surrogate=None,
    loggers: Iterable = (),
    out_dir: str | Path | None = None,
    step: int | None = None,
    warn_train_mode: bool = True,
    progress: Callable[[str], None] | None = None,
    result: SuiteResult | None = None,
    prepared: PreparedSuite | None = None,
    shard: Shard = SINGLE,
    store: BatchStore | None = None,
) -> list[RobustnessRow]:
    """What ``sslr attack`` runs: the suite on the fixed, seeded subset of ``data`` (a Dataset,
    DataLoader or DataModule, its test split; hashing: a hashing DataModule, whose test
    database is encoded once), writing ``robustness.csv`` and ``robustness.png`` in ``out_dir``
    and logging rows, metrics and the curve to ``loggers``.

    ``target`` is an :class:`AttackTarget`, a :class:`HashingTarget`, or a task. The
    ``transfer`` surrogate is ``surrogate`` (a model of the same task, loaded by the caller).
    Bad settings raise ``ValueError`` before any attack runs. ``result``, when given, receives
    the per-image outcomes. ``prepared``: the suite's :func:`prepare_suite`, already made
    (then ``surrogate`` is the one it was prepared with). ``shard``: this process's share of
    the work when several run it (:mod:`sslr.robustness.shards`); only rank 0 writes files and
    logs. ``store``: finished batches kept for a rerun after an interruption.
    """
    config = config or SuiteConfig()
    if prepared is None:
        prepared = prepare_suite(
            target, data, config, surrogate, warn_train_mode=warn_train_mode, shard=shard
        )
    done = run_cells(
        prepared.evaluation,
        config,
        warn_train_mode=warn_train_mode,
        progress=progress,
        contexts=prepared.contexts,
        shard=shard,
        store=store,
    )
    if result is not None:
        result.rows[:], result.per_image = done.rows, done.per_image
        result.per_unit, result.index = done.per_unit, done.index
        result.gradients, result.degenerate = done.gradients, done.degenerate
    rows = done.rows
    if shard.rank != 0:  # every process holds the rows; one writes and logs them
        return rows
    png = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_csv(rows, out_dir / "robustness.csv")
        write_outcomes_of(done, out_dir / OUTCOMES_FILE, config.seed)
        png = plot_curves(rows, out_dir / "robustness.png")
    log_rows(rows, loggers, step=step, png=png, run_meta=_run_meta(target, data))
    return rows


def write_outcomes_of(result: SuiteResult, path: Path, seed: int) -> Path:
    """``outcomes.json`` (:mod:`sslr.outcomes`) of a suite's result: every cell's per-image
    values, keyed by the images' indices in their split."""
    cells = {key: units.tolist() for key, units in result.per_unit.items()}
    return write_outcomes(path, result.index, cells, seed)


def _run_meta(target, data) -> dict:
    """Rule, backbone and dataset of a task for the W&B tables (an AttackTarget has none)."""
    from sslr.loggers import run_meta_of

    if getattr(target, "hparams", None) is None:
        return {}
    datamodule = data if hasattr(data, "test_dataloader") else None
    return run_meta_of(target, datamodule)
