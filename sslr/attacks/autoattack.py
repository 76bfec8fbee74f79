"""AutoAttack (Croce & Hein 2020): an ensemble of parameter-free attacks run one after the
other, each only on the images the ones before it left correctly classified; an image counts as
robust only if it survives all of them. The accepted robust accuracy of the field.

Versions (``version=``):

- ``standard``: AutoAttack's standard version, its four members in its order: APGD-CE (100
  iterations), APGD-T (targeted DLR loss, the 9 classes with the highest clean logits after the
  top one, 100 iterations each), FAB-T (the same 9 targets, 100 iterations each, alpha_max
  0.1, eta 1.05, beta 0.9: :mod:`sslr.attacks.fab`), Square (5,000 queries), each with one
  restart.
- ``fast``: the same members on a smaller budget for CPU runs: APGD-CE (25 iterations),
  APGD-T (3 targets, 25 iterations each), FAB-T (3 targets, 25 iterations each), Square (500
  queries). FAB-T's budget, measured on the Digits CNN of the tests (200 images): its robust
  accuracy with 3 targets x 25 iterations was 0.73 at 8/255 L-inf and 0.78 at 0.5 L2, with
  9 x 100 (standard) 0.72 and 0.78: FAB makes most of its progress in its first iterations.

APGD-T needs 4 classes (its DLR loss uses the 4 largest logits) and FAB-T 3 (on two classes
its one target is the untargeted attack): with fewer they are left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from sslr.attacks.apgd import AttackResult, apgd, apgd_targeted
from sslr.attacks.fab import fab_targeted
from sslr.attacks.gradient import GradFn, Model
from sslr.attacks.square import square
from sslr.attacks.threat import check_batch, check_eps, check_positive, norm_name

# member name -> (function, its settings), per version
MEMBERS: dict[str, dict[str, tuple[Callable, dict]]] = {
    "standard": {
        "apgd-ce": (apgd, {"loss": "ce", "steps": 100}),
        "apgd-t": (apgd_targeted, {"loss": "dlr", "steps": 100, "n_target_classes": 9}),
        "fab-t": (fab_targeted, {"steps": 100, "n_target_classes": 9}),
        "square": (square, {"queries": 5000, "p_init": 0.8}),
    },
    "fast": {
        "apgd-ce": (apgd, {"loss": "ce", "steps": 25}),
        "apgd-t": (apgd_targeted, {"loss": "dlr", "steps": 25, "n_target_classes": 3}),
        "fab-t": (fab_targeted, {"steps": 25, "n_target_classes": 3}),
        "square": (square, {"queries": 500, "p_init": 0.8}),
    },
}


# the fewest classes a member needs (APGD-T's DLR loss: 4 logits; FAB-T: a target class)
MIN_CLASSES = {"apgd-t": 4, "fab-t": 3}


@dataclass
class AutoAttackResult:
    """The ensemble's outcome on N images.

    Attributes:
        x_adv: (N, ...) the first example that broke each image (the image itself where none
            did, or where it was misclassified to begin with).
        clean: (N,) bool: correctly classified without attack.
        robust: (N,) bool: correctly classified after every member (the ensemble's robustness).
        members: per member, in order, (N,) bool: the member's own per-image robustness on the
            images it attacked (clean-correct images; with ``cascade`` only those the members
            before it left); False elsewhere. With ``cascade=False`` every member attacks
            every clean-correct image, and this is its exact accuracy alone.
        attacked: per member, (N,) bool: the images it attacked.
        robust_after: per member, (N,) bool: robust after this member and all before it
            (AutoAttack's printed "robust accuracy after ..."); the last one is ``robust``.
        queries: per member, (N,) long: its forward passes per image.
    """

    x_adv: torch.Tensor
    clean: torch.Tensor
    robust: torch.Tensor
    members: dict[str, torch.Tensor] = field(default_factory=dict)
    attacked: dict[str, torch.Tensor] = field(default_factory=dict)
    robust_after: dict[str, torch.Tensor] = field(default_factory=dict)
    queries: dict[str, torch.Tensor] = field(default_factory=dict)


def autoattack(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    version: str = "standard",
    seed: int = 0,
    cascade: bool = True,
    eot_samples: int = 1,
    grad_fn: GradFn | None = None,
    num_classes: int | None = None,
    budget: dict[str, dict] | None = None,
    progress: Callable[[str, AttackResult], None] | None = None,
) -> AutoAttackResult:
    """AutoAttack on a batch ``x`` (N, C, H, W) in [0, 1] with labels ``y`` (N,).

    Image by image: an image that one member breaks is not attacked again (``cascade=False``
    attacks every clean-correct image with every member, to measure each member alone at the
    ensemble's cost times the members). Each member's random draws come from its own generator
    seeded with ``seed``, and depend on an image's position, not on the other images, so a
    member's verdict on an image is the same in the ensemble as alone. The APGD and FAB-T
    members follow the caller's gradient context (``eot_samples``/``grad_fn`` as in
    :func:`apgd`); Square uses no gradient. ``budget`` overrides members' settings, e.g.
    ``{"square": {"queries": 1000}}`` (then say so: it is no longer the named version).
    ``progress(member, result)`` is called after each member. Bad settings raise ValueError
    before any model call.
    """
    if version not in MEMBERS:
        raise ValueError(f"Unknown AutoAttack version {version!r}: use {' or '.join(MEMBERS)}")
    norm = norm_name(norm)
    eps = check_eps(eps)
    check_positive(eot_samples, "eot_samples", "gradient draws per step")
    check_batch(x, y)
    members = dict(MEMBERS[version])
    unknown = set(budget or {}) - set(members)
    if unknown:
        raise ValueError(
            f"Unknown AutoAttack member(s) {', '.join(sorted(unknown))} in budget: the members "
            f"are {', '.join(members)}"
        )
    for name, extra in (budget or {}).items():
        members[name] = (members[name][0], {**members[name][1], **extra})
        for key in ("steps", "queries", "n_target_classes", "restarts"):
            if key in extra:
                check_positive(extra[key], key, f"{name}'s budget")
    x0 = x.detach()
    y = y.to(x0.device)
    with torch.no_grad():
        logits = model(x0)
    num_classes = int(logits.shape[1]) if num_classes is None else int(num_classes)
    clean = logits.argmax(dim=1) == y
    for name, needs in MIN_CLASSES.items():
        if num_classes < needs:
            members.pop(name)
    result = AutoAttackResult(x_adv=x0.clone(), clean=clean, robust=clean.clone())
    for name, (fn, settings) in members.items():
        active = result.robust.clone() if cascade else clean.clone()
        kwargs = dict(settings, eps=eps, norm=norm, seed=seed, active=active)
        if fn is not square:
            kwargs.update(eot_samples=eot_samples, grad_fn=grad_fn, num_classes=num_classes)
        out = fn(model, x0, y, **kwargs)
        broke = out.success & active
        result.x_adv[broke & result.robust] = out.x_adv[broke & result.robust]
        result.members[name] = active & ~out.success
        result.attacked[name] = active
        result.robust = result.robust & ~broke
        result.robust_after[name] = result.robust.clone()
        result.queries[name] = out.queries
        if progress is not None:
            progress(name, out)
    return result
