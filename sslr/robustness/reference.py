"""The field's reference attacks in the evaluation engine: APGD-CE, APGD-T with the DLR loss
(``apgd-dlr``), FAB-T (``fab-t``), the Square attack on the device, and the AutoAttack
ensemble, each an entry of the registry (:mod:`sslr.robustness.registry`), so each runs under
every gradient source (``rule``, ``exact``, ``eot``, ``transfer``) and both norms.

The algorithms live in :mod:`sslr.attacks` (torch only); this module adapts them to the
registry's shape. The provider is the model callable the algorithms take: ``provider(x)``
gives logits along the cell's gradient source (its context is entered around the cell), and
``provider.eot_samples`` is the number of backward passes averaged per step (``eot``).

AutoAttack's members each attack every image here (each member's own accuracy is a row of
robustness.csv) and the engine counts an image robust only if every member left it correctly
classified: the ensemble's accuracy, the same per image as AutoAttack's cascade, which stops
attacking an image once one member broke it (Croce & Hein 2020).
"""

from __future__ import annotations

import torch

from sslr.attacks.apgd import AttackResult, apgd, apgd_targeted
from sslr.attacks.autoattack import MEMBERS, MIN_CLASSES
from sslr.attacks.fab import fab_targeted
from sslr.attacks.square import square
from sslr.robustness.registry import register_attack

AUTOATTACK = "autoattack"


def _keep(provider) -> str:
    """A transfer attack's success on the surrogate means nothing: keep its highest-loss
    point rather than its first success (see :mod:`sslr.attacks.gradient`)."""
    return "max_loss" if getattr(provider, "transfer", False) else "adversarial"


def _record(provider, out: AttackResult) -> torch.Tensor:
    """Count the images whose first input gradient was zero or not finite (the masking
    verdict's share), and return the examples."""
    note = getattr(provider, "note_degenerate", None)
    if note is not None:
        note(out.degenerate, white_box=bool(out.degenerate.numel()))
    return out.x_adv


def _run(attack, provider, x, y, eps, norm, settings, generator, **options) -> AttackResult:
    """``attack`` (a function of :mod:`sslr.attacks`) on the cell's images, labels and threat,
    with the suite's restarts and the cell's generator; ``options`` are the attack's own."""
    labels, restarts = y.argmax(dim=1), settings.restarts
    return attack(
        provider,
        x,
        labels,
        eps=eps,
        norm=norm.value,
        restarts=restarts,
        generator=generator,
        **options,
    )


def _apgd_run(attack, provider, x, y, eps, norm, settings, generator, **options) -> torch.Tensor:
    """``attack`` (apgd or apgd_targeted) along the cell's gradient source, with the suite's
    steps."""
    out = _run(
        attack, provider, x, y, eps, norm, settings, generator, steps=settings.steps,
        eot_samples=provider.eot_samples, keep=_keep(provider),
        num_classes=provider.target.num_classes, **options,
    )  # fmt: skip
    return _record(provider, out)


def apgd_ce_attack(provider, x, y, *, eps, norm, settings, generator):
    """APGD (Croce & Hein 2020), untargeted, on ``settings.loss`` (cross-entropy by default),
    ``settings.steps`` iterations and ``settings.restarts`` random starts."""
    return _apgd_run(apgd, provider, x, y, eps, norm, settings, generator, loss=settings.loss_name)


def apgd_dlr_attack(provider, x, y, *, eps, norm, settings, generator):
    """AutoAttack's APGD-T: targeted DLR loss towards each of the ``settings.target_classes``
    classes with the highest clean logits after the top one, ``settings.steps`` iterations
    each; an image counts as broken when any target run misclassifies it."""
    return _apgd_run(
        apgd_targeted, provider, x, y, eps, norm, settings, generator,
        loss="dlr", n_target_classes=settings.target_classes,
    )  # fmt: skip


def fab_t_attack(provider, x, y, *, eps, norm, settings, generator):
    """AutoAttack's FAB-T (Croce & Hein 2020): the minimal perturbation towards each of the
    ``settings.target_classes`` classes with the highest clean logits after the top one,
    ``settings.steps`` iterations each (``settings.restarts`` starts); an image counts as
    broken when the closest misclassified point found lies within eps. Under ``transfer`` it
    runs on the surrogate and its points (near the surrogate's boundary, so they transfer less
    often than points that use the whole eps) are scored on the target."""
    out = _run(
        fab_targeted, provider, x, y, eps, norm, settings, generator, steps=settings.steps,
        n_target_classes=settings.target_classes, eot_samples=provider.eot_samples,
        num_classes=provider.target.num_classes,
    )  # fmt: skip
    return _record(provider, out)


def square_attack(provider, x, y, *, eps, norm, settings, generator):
    """The Square attack (Andriushchenko et al. 2020) on the device with ``settings.queries``
    queries; ART's NumPy Square with ``square_backend: art`` (the reference)."""
    if settings.square_backend == "art":
        from sslr.robustness.attacks import square as square_through_art

        return square_through_art(
            provider,
            x,
            y,
            norm=norm,
            eps=eps,
            queries=settings.queries,
            batch_size=settings.batch_size,
        )
    return _run(
        square, provider, x, y, eps, norm, settings, generator, queries=settings.queries
    ).x_adv


def members(settings, num_classes: int) -> dict:
    """AutoAttack's members of ``settings.autoattack_version`` (APGD-T left out below 4
    classes, as AutoAttack's DLR loss needs 4 logits; FAB-T below 3, as it needs a target other
    than the top two): name -> (function, settings)."""
    chosen = dict(MEMBERS[settings.autoattack_version])
    for name, needs in MIN_CLASSES.items():
        if num_classes < needs:
            chosen.pop(name)
    return chosen


def autoattack_attack(provider, x, y, *, eps, norm, settings, generator):
    """Every AutoAttack member on every image: ``{f"autoattack/{member}": x_adv}``; the
    engine scores each and the ensemble (an image is robust when every member failed)."""
    labels = y.argmax(dim=1)
    out = {}
    for name, (fn, kwargs) in members(settings, provider.target.num_classes).items():
        kwargs = dict(kwargs, eps=eps, norm=norm.value, seed=settings.seed)
        if fn is square:
            out[f"{AUTOATTACK}/{name}"] = fn(provider, x, labels, **kwargs).x_adv
            continue
        if fn is not fab_targeted:  # FAB keeps its closest misclassified point, nothing else
            kwargs["keep"] = _keep(provider)
        result = fn(
            provider,
            x,
            labels,
            eot_samples=provider.eot_samples,
            num_classes=provider.target.num_classes,
            **kwargs,
        )
        out[f"{AUTOATTACK}/{name}"] = _record(provider, result)
    return out


def _autoattack_steps(settings) -> int:
    return MEMBERS[settings.autoattack_version]["apgd-ce"][1]["steps"]


def _member_steps(settings, key: str) -> int:
    """The ``steps`` column of a member's row: its iterations (APGD's, and FAB-T's per target,
    both its ``steps``), or Square's queries."""
    kwargs = MEMBERS[settings.autoattack_version][key.split("/", 1)[1]][1]
    return int(kwargs.get("steps", kwargs.get("queries", 0)))


register_attack("apgd-ce", apgd_ce_attack, tasks=("classification",), min_classes=2)
register_attack("apgd-dlr", apgd_dlr_attack, tasks=("classification",), min_classes=4)
register_attack("fab-t", fab_t_attack, tasks=("classification",), min_classes=3)
register_attack(
    "square", square_attack, white_box=False, tasks=("classification",), steps=lambda s: s.queries
)
register_attack(
    AUTOATTACK,
    autoattack_attack,
    tasks=("classification",),
    steps=_autoattack_steps,
    member_steps=_member_steps,
)
