"""The attack suite: every attack, norm, epsilon and gradient source of a ``SuiteConfig`` on a
fixed, seeded subset of a split, as rows of ``robustness.csv``."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sslr.robustness.attacks import bound_excess, check_bounds, pgd, pgd_art, square
from sslr.robustness.config import Attack, Backend, GradientSource, Norm, SuiteConfig
from sslr.robustness.gradients import GradientSourceClassifier
from sslr.robustness.guard import attack_mode
from sslr.robustness.outputs import log_rows, plot_curves, write_csv
from sslr.robustness.results import RobustnessRow
from sslr.robustness.subset import select_subset
from sslr.robustness.target import AttackTarget, as_target, load_target

log = logging.getLogger(__name__)


def _batches(x: torch.Tensor, y: torch.Tensor, batch_size: int):
    for i in range(0, x.shape[0], batch_size):
        yield x[i : i + batch_size], y[i : i + batch_size]


def clean_accuracy(target: AttackTarget, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> int:
    """Number of correctly classified images (eval mode, no attack)."""
    device = target.device
    correct = torch.zeros((), dtype=torch.long, device=device)
    with attack_mode(target.network):
        for xb, yb in _batches(x, y, batch_size):
            xb, yb = xb.to(device), yb.to(device)
            correct += (target.predict(xb) == yb).sum()
    return int(correct)


def robust_accuracy(
    target: AttackTarget,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attack: Attack | str,
    norm: Norm | str,
    eps: float,
    gradient: GradientSource | str,
    config: SuiteConfig,
    surrogate: AttackTarget | None = None,
) -> int:
    """Number of images of (x, y) still correctly classified by ``target`` after ``attack`` at
    ``eps``; the examples come from ``surrogate`` for ``gradient="transfer"``. Every example is
    checked to lie in its eps ball and in [0, 1] (:class:`AttackBoundsError` otherwise)."""
    attack, norm, gradient = Attack(attack), Norm(norm), GradientSource(gradient)
    if eps <= 0:
        raise ValueError("eps must be > 0 here: eps = 0 is the clean accuracy")
    if attack.white_box == (gradient is GradientSource.NONE):
        raise ValueError(f"Gradient source {gradient.value!r} does not apply to {attack.value}")
    if gradient is GradientSource.TRANSFER:
        if surrogate is None:
            raise ValueError("gradient 'transfer' needs a surrogate model")
        source, crafted_on = GradientSource.RULE, surrogate
    else:
        source, crafted_on = gradient, target
    device = target.device
    networks = {id(n): n for n in (target.network, crafted_on.network)}.values()
    classifier = GradientSourceClassifier(
        crafted_on, x.shape[1:], source=source, eot_samples=config.eot_samples
    )
    # One gradient context for the whole run: brsf's draws go on from step to step.
    with attack_mode(*networks), classifier:
        generator = torch.Generator(device=crafted_on.device).manual_seed(config.seed)
        np.random.seed(config.seed % 2**32)  # Square and ART's random start draw from NumPy
        correct = torch.zeros((), dtype=torch.long, device=device)
        excess = torch.full((), -1.0, device=device)
        nan_count = torch.zeros((), dtype=torch.long, device=crafted_on.device)
        for xb, yb in _batches(x, y, config.batch_size):
            xb, yb = xb.to(crafted_on.device), yb.to(crafted_on.device)
            y_onehot = F.one_hot(yb, crafted_on.num_classes).float()  # (N, K): what ART expects
            if attack is Attack.SQUARE:
                adv = square(
                    classifier,
                    xb,
                    y_onehot,
                    norm=norm,
                    eps=eps,
                    queries=config.queries,
                    batch_size=config.batch_size,
                )
            else:
                kwargs = dict(
                    norm=norm,
                    eps=eps,
                    step=config.step_of(attack, eps),
                    steps=config.steps_of(attack),
                    start_random=config.random_start and attack is Attack.PGD,
                )
                if config.backend_kind is Backend.ART:
                    adv = pgd_art(classifier, xb, y_onehot, **kwargs)
                else:
                    adv = pgd(
                        classifier, xb, y_onehot, generator=generator, nan_count=nan_count, **kwargs
                    )
            xb, yb, adv = xb.to(device), yb.to(device), adv.to(device)
            excess = torch.maximum(excess, bound_excess(xb, adv, eps, norm))
            correct += (target.predict(adv) == yb).sum()
        what = f"{attack.value} ({norm.value}, eps={eps:.4g}, gradient={gradient.value})"
        check_bounds(excess, what)
        if int(nan_count):
            warnings.warn(
                f"{what}: {int(nan_count)} NaN input-gradient entries were treated as 0",
                RuntimeWarning,
                stacklevel=2,
            )
    return int(correct)


def _sources(attack: Attack, config: SuiteConfig, target: AttackTarget) -> list[GradientSource]:
    if not attack.white_box:
        return [GradientSource.NONE]
    sources = list(config.gradient_sources)
    if GradientSource.EOT in sources and not target.stochastic_feedback:
        sources.remove(GradientSource.EOT)
    return sources


def evaluate(
    target,
    x: torch.Tensor,
    y: torch.Tensor,
    config: SuiteConfig,
    *,
    surrogate=None,
    warn_train_mode: bool = True,
) -> list[RobustnessRow]:
    """Run the suite on the images ``x`` (N, C, H, W) in [0, 1] with labels ``y`` (N,): one row
    per attack, norm, epsilon and gradient source, in that order. eps = 0 is not attacked: its
    rows hold the clean accuracy of the same images. ``eot`` is skipped (with a warning) for a
    target without brsf layers, where it equals ``rule``."""
    target = as_target(target)
    surrogate = None if surrogate is None else as_target(surrogate)
    _check_surrogate(config, target, surrogate)
    if GradientSource.EOT in config.gradient_sources and not target.stochastic_feedback:
        if any(a.white_box for a in config.attack_kinds):
            rules = ", ".join(sorted(target.rules)) or "plain backprop"
            warnings.warn(
                f"Gradient source 'eot' skipped: the target's rule ({rules}) has a deterministic "
                "backward pass, where eot equals rule (it is for brsf)",
                UserWarning,
                stacklevel=2,
            )
    n = int(x.shape[0])
    device = target.device
    with attack_mode(target.network, warn_train_mode=warn_train_mode):
        x = x.to(device)  # the whole subset on the device once (a few MB for CIFAR-sized data)
        y = y.to(device)
        clean = None
        if any(0.0 in config.eps_for(norm) for norm in config.norm_kinds):
            clean = clean_accuracy(target, x, y, config.batch_size)
        rows = []
        for attack in config.attack_kinds:
            for norm in config.norm_kinds:
                for source in _sources(attack, config, target):
                    for eps in config.eps_for(norm):
                        if eps == 0.0:
                            correct = clean
                        else:
                            correct = robust_accuracy(
                                target,
                                x,
                                y,
                                attack=attack,
                                norm=norm,
                                eps=eps,
                                gradient=source,
                                config=config,
                                surrogate=surrogate,
                            )
                        row = RobustnessRow(
                            attack=attack.value,
                            norm=norm.value,
                            eps=float(eps),
                            steps=config.steps_of(attack),
                            gradient=source.value,
                            accuracy=correct / n,
                            n=n,
                        )
                        log.info("%s", row)
                        rows.append(row)
    return rows


def _check_surrogate(
    config: SuiteConfig, target: AttackTarget, surrogate: AttackTarget | None
) -> None:
    if not _wants_transfer(config):
        return
    if surrogate is None:
        raise ValueError(
            "gradient 'transfer' needs a surrogate: set surrogate_ckpt to the bp fine-tuned "
            "model's checkpoint, or pass surrogate="
        )
    if surrogate.num_classes != target.num_classes:
        raise ValueError(
            f"The surrogate has {surrogate.num_classes} classes, the target {target.num_classes}"
        )


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
) -> list[RobustnessRow]:
    """What ``sslr attack`` runs: the suite on the fixed, seeded subset of ``data`` (a Dataset,
    DataLoader or DataModule; a DataModule's test split), writing ``robustness.csv`` and
    ``robustness.png`` in ``out_dir`` and logging rows, metrics and the curve to ``loggers``.

    ``target`` is an :class:`AttackTarget` or a ``ClassificationTask``. The ``transfer``
    surrogate is ``surrogate`` (a target or task) or else loaded from
    ``config.surrogate_ckpt``. Bad settings raise ``ValueError`` before any attack runs.
    """
    config = config or SuiteConfig()
    target = as_target(target)
    if surrogate is None and config.surrogate_ckpt is not None and _wants_transfer(config):
        surrogate = load_target(config.surrogate_ckpt, target.device)
    surrogate = None if surrogate is None else as_target(surrogate)
    _check_surrogate(config, target, surrogate)
    x, y = select_subset(data, config.n_samples, config.seed)
    rows = evaluate(target, x, y, config, surrogate=surrogate, warn_train_mode=warn_train_mode)
    png = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_csv(rows, out_dir / "robustness.csv")
        png = plot_curves(rows, out_dir / "robustness.png")
    log_rows(rows, loggers, step=step, png=png)
    return rows


def _wants_transfer(config: SuiteConfig) -> bool:
    return GradientSource.TRANSFER in config.gradient_sources and any(
        a.white_box for a in config.attack_kinds
    )
