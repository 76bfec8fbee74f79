"""The attack registry: every attack the engine runs, classification and hashing alike, is one
entry here, written once.

An attack is a function ``attack(provider, x, y, *, eps, norm, settings, generator) -> x_adv``:

- ``provider``: the gradient source the attack may use (a
  :class:`~sslr.robustness.gradients.GradientSourceClassifier`, entered): ``provider(x)`` gives
  the model's outputs on [0, 1] pixels (logits, or the codes u of a hashing model),
  differentiable along the gradient source; ``provider.loss_gradient(x, y)`` the gradient of
  the task's objective (cross-entropy, a code objective) along it, EOT and NaN counting
  included; ``provider.gradient(x, loss)`` the same for any ``loss(outputs, y)`` of the
  attack's own (margin, DLR). Query attacks call ``provider.predict`` or ``provider(x)`` only.
- ``x`` (N, C, H, W) in [0, 1] and ``y`` the task's per-image target information: one-hot
  labels (N, K) for classification, code targets (N, bits) for hashing (the clean codes for
  untargeted attacks, the anchors for targeted ones).
- ``eps`` in pixel units and ``norm`` (:class:`~sslr.robustness.config.Norm`);
- ``settings``: the :class:`~sslr.robustness.config.SuiteConfig` (steps, step_size,
  random_start, queries, ...), and ``generator``: a torch.Generator on the crafting device,
  seeded with ``settings.seed`` once per cell (NumPy's global generator is seeded too).

The built-in attacks register themselves when ``sslr.robustness`` is imported (its
``attacks`` module). It returns adversarial images of x's shape; the engine checks every one against its eps ball
and [0, 1], scores it, counts NaN gradients and writes the rows. Adding an attack::

    from sslr.robustness import register_attack

    def apgd_ce(provider, x, y, *, eps, norm, settings, generator):
        ...  # e.g. sslr.attacks.apgd(provider, x, y.argmax(1), eps=eps, norm=norm, ...)

    register_attack("apgd-ce", apgd_ce, steps=lambda s: s.steps)

after which ``--suite.attacks '[apgd-ce]'`` runs it under every gradient source and norm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

TASKS = ("classification", "hashing")
DEFAULT_ATTACKS = {"classification": ("fgsm", "pgd"), "hashing": ("pgd", "hag", "p2p", "dhta")}


@dataclass(frozen=True)
class AttackSpec:
    """An entry of the registry.

    Args:
        name: what ``--suite.attacks`` calls it (lower case).
        run: the attack function (see the module docstring).
        white_box: whether it needs a gradient source (rows per source); a query attack runs
            once, with gradient ``none``.
        tasks: the tasks it applies to.
        steps: the ``steps`` column of its rows from the settings.
        objective: the task objective it ascends; for hashing ``pgd`` (push away from the
            clean code), ``hag``, ``p2p`` / ``dhta`` (pull to an anchor of n_t codes); for
            classification ``ce``.
        targeted: whether it aims at a target (hashing: scored by t-mAP).
        min_classes: the fewest classes a classifier must have for it (APGD-T's DLR loss
            needs 4); checked before any work.
        member_steps: for an ensemble (AutoAttack), whose function returns
            ``{member name: x_adv}``: the ``steps`` column of a member's row,
            ``member_steps(settings, name)``. The engine writes a row per member and one for
            the ensemble (an image is robust when every member left it correct).
    """

    name: str
    run: Callable
    white_box: bool = True
    tasks: frozenset[str] = frozenset(TASKS)
    steps: Callable = lambda settings: settings.steps  # noqa: E731
    objective: str = "pgd"
    targeted: bool = False
    min_classes: int = 2
    member_steps: Callable | None = None

    @property
    def ensemble(self) -> bool:
        return self.member_steps is not None


_REGISTRY: dict[str, AttackSpec] = {}


def register_attack(
    name: str,
    run: Callable,
    *,
    white_box: bool = True,
    tasks: tuple[str, ...] | frozenset[str] = TASKS,
    steps: Callable | None = None,
    objective: str = "pgd",
    targeted: bool = False,
    min_classes: int = 2,
    member_steps: Callable | None = None,
) -> AttackSpec:
    """Add (or replace) an attack; returns its entry."""
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"Unknown tasks {sorted(unknown)}: known tasks are {', '.join(TASKS)}")
    spec = AttackSpec(
        name=name.lower(),
        run=run,
        white_box=white_box,
        tasks=frozenset(tasks),
        steps=steps or (lambda settings: settings.steps),
        objective=objective,
        targeted=targeted,
        min_classes=min_classes,
        member_steps=member_steps,
    )
    _REGISTRY[spec.name] = spec
    return spec


def list_attacks() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_attack(name: str) -> AttackSpec:
    """The entry of ``name``, or one ValueError naming the known attacks."""
    key = str(getattr(name, "value", name)).lower()
    if key not in _REGISTRY:
        known = ", ".join(_REGISTRY)
        raise ValueError(f"Unknown attack {name!r}: known attacks are {known}")
    return _REGISTRY[key]


def check_attacks(names) -> None:
    for name in names:
        get_attack(name)
