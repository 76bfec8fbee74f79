"""What an attack suite runs: the attacks, norms, epsilons, gradient sources and subset, as one
validated object (strings at the edge, enums inside)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Literal


class Attack(str, Enum):
    """The classification attacks built in. FGSM and PGD are white-box (they need a gradient
    source); Square is query-based black box (Andriushchenko et al. 2020) and uses no gradient
    at all. Every attack, these and the hashing ones, is an entry of the engine's registry
    (:mod:`sslr.robustness.registry`); this enum keeps the classification names as constants."""

    FGSM = "fgsm"
    PGD = "pgd"
    SQUARE = "square"

    @property
    def white_box(self) -> bool:
        return self is not Attack.SQUARE


class Norm(str, Enum):
    """Threat-model norm of the perturbation, in [0, 1] pixel units."""

    LINF = "linf"
    L2 = "l2"


class GradientSource(str, Enum):
    """Where a white-box attack's input gradient comes from (see docs/ARCHITECTURE.md).

    - ``rule``: the model's own backward: through a feedback layer that is the pseudo-gradient
      with B (the paper's threat model); brsf draws a fresh B at every attack step.
    - ``exact``: the same weights with the true gradient (B = W during the attack).
    - ``eot``: expectation over transformation for brsf: each step's gradient is the mean over
      ``eot_samples`` draws of B (Athalye et al. 2018). Equal to ``rule`` for other rules.
    - ``transfer``: adversarial examples made on a surrogate model, evaluated on the target.
    - ``none``: query attacks (Square), which use no gradient.
    """

    RULE = "rule"
    EXACT = "exact"
    EOT = "eot"
    TRANSFER = "transfer"
    NONE = "none"


class Backend(str, Enum):
    """Who runs the FGSM/PGD iterations. ``torch``: sslr's loop on device tensors, gradients
    from ART's ``PyTorchClassifier.loss_gradient`` (the default: as fast as a plain loop).
    ``art``: ART's ``ProjectedGradientDescentPyTorch.generate`` (the reference the tests compare
    against; slower, see ``attacks.py``)."""

    TORCH = "torch"
    ART = "art"


NormName = Literal["linf", "l2"]
GradientName = Literal["rule", "exact", "eot", "transfer"]
BackendName = Literal["torch", "art"]
LossName = Literal["ce", "margin", "dlr"]
AutoAttackVersion = Literal["standard", "fast"]
LOSSES = ("ce", "margin", "dlr")
VERDICT_EPS = {"linf": 64 / 255, "l2": 4.0}  # the large eps the masking verdict adds

# Defaults a CPU user can wait for (``sslr attack`` on the quickstart checkpoint in a few
# minutes on 2 cores); the paper's curves ask for more in their configs (e.g. eps
# [0, 1/255, 2/255, 4/255, 8/255, 16/255], n_samples 1000).
DEFAULT_EPS_LINF = (0.0, 2 / 255, 8 / 255)
DEFAULT_EPS_L2 = (0.0, 0.5)
DEFAULT_N_SAMPLES = 100
DEFAULT_GRADIENTS = ("rule", "exact", "eot")


# Renamed settings of the former hashing suite (``--hashing.*``): old key -> new key.
RENAMED = {
    "n_queries": "n_samples",
    "step": "step_size",
    "attacks": "attacks",
    "norms": "norms",
    "eps": "eps",
    "eps_l2": "eps_l2",
    "steps": "steps",
    "random_start": "random_start",
    "gradients": "gradients",
    "eot_samples": "eot_samples",
    "hag_margin": "hag_margin",
    "dhta_anchors": "dhta_anchors",
    "seed": "seed",
    "batch_size": "batch_size",
    "surrogate_ckpt": "surrogate_ckpt",
}


def _parse(enum: type[Enum], values: Sequence[str], what: str, allowed=None) -> tuple:
    """Strings -> enum members (duplicates dropped, order kept), or one ValueError naming the
    known values."""
    allowed = tuple(allowed or enum)
    known = ", ".join(m.value for m in allowed)
    if isinstance(values, str):
        values = [values]
    out = []
    for value in values:
        try:
            member = enum(value.value if isinstance(value, Enum) else str(value).lower())
        except ValueError:
            member = None
        if member not in allowed:
            raise ValueError(f"Unknown {what} {value!r}: known {what}s are {known}")
        if member not in out:
            out.append(member)
    return tuple(out)


_FRACTION = re.compile(r"^\s*([0-9.]+)\s*/\s*([0-9.]+)\s*$")


def eps_value(value: float | str) -> float:
    """An epsilon as a float: a number, or a fraction written ``8/255`` (as papers write them)."""
    if isinstance(value, str):
        match = _FRACTION.match(value)
        try:
            if match:
                return float(match.group(1)) / float(match.group(2))
            return float(value)
        except (ValueError, ZeroDivisionError):
            raise ValueError(
                f"epsilon {value!r} is neither a number nor a fraction such as 8/255"
            ) from None
    return float(value)


def _check_eps(values: Sequence[float], name: str, upper: float | None) -> tuple[float, ...]:
    if isinstance(values, (int, float)):
        values = [values]
    out = []
    for value in values:
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                f"{name} must be finite and >= 0 (pixel units of [0, 1] images), got {value}"
            )
        if upper is not None and value > upper:
            raise ValueError(
                f"{name} = {value} exceeds {upper}: epsilons are in [0, 1] pixel units "
                f"(8/255 = {8 / 255:.5f}), not in /255 units"
            )
        if value not in out:
            out.append(value)
    return tuple(out)


@dataclass
class SuiteConfig:
    """An attack suite for either task (classification or hashing), validated when constructed
    (before any work starts); ``sslr attack --suite.*``.

    Epsilons are absolute, in the pixel units of [0, 1] images (8/255 = 0.0314 is the CIFAR
    L-inf standard); ``eps`` applies to L-inf and ``eps_l2`` to L2, whose scale differs.
    An eps of 0 is not attacked: its rows are the clean score of the same subset.

    One step convention for every iterative attack: alpha = step_size * eps / steps (Madry et
    al.'s 2.5 by default: the ball's radius is crossed 2.5 times). The hashing literature's
    "100 steps of 1/255" at eps = 8/255 is ``steps=100, step_size=12.5``.

    Args:
        attacks: names in the attack registry. Classification: ``fgsm``, ``pgd`` (white box),
            ``square`` (query-based black box). Hashing: ``fgsm`` and ``pgd`` on the code,
            ``hag`` (untargeted, scored by mAP), ``p2p`` and ``dhta`` (targeted, t-mAP).
            Default: the task's (classification fgsm, pgd; hashing pgd, hag, p2p, dhta).
        norms: ``linf`` and/or ``l2``, for every attack.
        eps: L-inf epsilons: numbers, or fractions such as 8/255. Default (0, 2, 8)/255 (a
            CPU run of minutes; the paper's curves set (0, 1, 2, 4, 8, 16)/255 in their configs).
        eps_l2: L2 epsilons. Default (0, 0.5).
        steps: iterations of the iterative attacks (FGSM is one step of size eps, no random
            start).
        step_size: step relative to eps: alpha = step_size * eps / steps.
        random_start: iterative attacks start from a uniform point of the eps ball.
        gradients: gradient sources of the white-box attacks: ``rule``, ``exact``, ``eot``,
            ``transfer`` (needs a surrogate). Square's gradient is ``none``, automatically.
            Default rule, exact, eot: eot runs on brsf models only, silently skipped on others
            (a list the user chose with eot says so in a warning).
        eot_samples: draws of B averaged per step for ``eot`` (brsf only).
        queries: Square's query budget (its iterations; the ``steps`` column of its rows).
        n_samples: size of the fixed, seeded subset of the evaluated split (hashing: queries).
            Default 100 (two standard errors: 0.1); the paper's runs set 1000.
        seed: seed of the subset, of random starts, of Square, of hashing targets and anchors.
        batch_size: images per attack batch.
        surrogate_ckpt: checkpoint of the ``transfer`` surrogate (by default the bp fine-tuned
            model of the same backbone and data).
        backend: ``torch`` (sslr's loop, fast) or ``art`` (ART's PGD; the reference).
        hag_margin: hashing: HAG's t in w_k = 1[|u_k - b_k| < 1 + t].
        dhta_anchors: hashing: DHTA's n_t, the target-label codes voting for the anchor.
        loss: what ``pgd`` and ``apgd-ce`` ascend on classification: ``ce`` (cross-entropy),
            ``margin`` (Carlini-Wagner: max other logit minus the true one) or ``dlr``
            (Croce & Hein's scale-free margin; needs 3 classes). ``apgd-dlr`` always uses the
            targeted DLR loss.
        restarts: random starts per image of ``apgd-ce``, ``apgd-dlr``, ``fab-t`` and
            ``square``.
        target_classes: ``apgd-dlr``'s and ``fab-t``'s target classes per image (AutoAttack's
            9; clipped to the classes - 1).
        autoattack_version: ``fast`` (APGD-CE 25 iterations, APGD-T 3 targets x 25, FAB-T 3
            targets x 25, Square 500 queries: minutes on a CPU) or ``standard`` (100, 9 x 100,
            9 x 100, 5,000: AutoAttack's standard version, all four members, for a GPU).
        square_backend: ``torch`` (sslr's Square on the device, the default) or ``art``
            (ART's NumPy Square, the reference).
        verdict: add one large eps per norm (64/255 L-inf, 4.0 L2) so that the masking
            verdict's ``large_eps`` check is measured.
    """

    attacks: list[str] | None = None
    norms: list[NormName] = field(default_factory=lambda: ["linf"])
    eps: list[float | str] = field(default_factory=lambda: list(DEFAULT_EPS_LINF))
    eps_l2: list[float | str] = field(default_factory=lambda: list(DEFAULT_EPS_L2))
    steps: int = 10
    step_size: float = 2.5
    random_start: bool = True
    gradients: list[GradientName] = field(default_factory=lambda: list(DEFAULT_GRADIENTS))
    eot_samples: int = 8
    queries: int = 1000
    n_samples: int = DEFAULT_N_SAMPLES
    seed: int = 0
    batch_size: int = 256
    surrogate_ckpt: str | None = None
    backend: BackendName = "torch"
    hag_margin: float = 0.5
    dhta_anchors: int = 9
    loss: LossName = "ce"
    restarts: int = 1
    target_classes: int = 9
    autoattack_version: AutoAttackVersion = "fast"
    square_backend: BackendName = "torch"
    verdict: bool = False

    def __post_init__(self) -> None:
        from sslr.robustness.registry import check_attacks, get_attack

        # Every check runs here, so a bad setting fails before any work starts.
        for key in ("eps", "eps_l2"):  # 8/255 given on the command line or in a config
            values = getattr(self, key)
            if isinstance(values, (list, tuple)):
                setattr(self, key, [eps_value(v) for v in values])
        if GradientSource.NONE.value in [str(g).lower() for g in self.gradients]:
            raise ValueError(
                "Gradient source 'none' cannot be chosen: it is the gradient of query attacks "
                "(square), whose rows get it automatically. Known gradient sources are "
                "rule, exact, eot, transfer"
            )
        if self.attacks is not None and not self.attack_kinds:
            raise ValueError("attacks is empty: name at least one of fgsm, pgd, apgd-ce, square")
        check_attacks(self.attack_kinds)
        if not self.norm_kinds:
            raise ValueError("norms is empty: name at least one of linf, l2")
        if not self.gradient_sources and any(get_attack(a).white_box for a in self.attack_kinds):
            raise ValueError(
                "gradients is empty but white-box attacks are asked for: name at least one of "
                "rule, exact, eot, transfer"
            )
        _parse(Backend, [self.backend], "backend")
        for norm in Norm:  # both lists, also the one of a norm not chosen now
            if not self.eps_for(norm) and norm in self.norm_kinds:
                raise ValueError(f"No epsilon given for norm {norm.value}")
        if str(self.loss).lower() not in LOSSES:
            raise ValueError(f"Unknown loss {self.loss!r}: known losses are {', '.join(LOSSES)}")
        if self.autoattack_version not in ("standard", "fast"):
            raise ValueError(
                f"Unknown autoattack_version {self.autoattack_version!r}: use standard or fast"
            )
        _parse(Backend, [self.square_backend], "square_backend")
        names = ("steps", "eot_samples", "queries", "n_samples", "batch_size", "dhta_anchors")
        for name in names + ("restarts", "target_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not math.isfinite(self.step_size) or self.step_size <= 0:
            raise ValueError(f"step_size must be > 0 (relative to eps/steps), got {self.step_size}")
        if not math.isfinite(self.hag_margin) or self.hag_margin < 0:
            raise ValueError(f"hag_margin must be a finite number >= 0, got {self.hag_margin}")
        if self.surrogate_ckpt is not None and not Path(self.surrogate_ckpt).is_file():
            raise ValueError(
                f"Surrogate checkpoint {self.surrogate_ckpt!r} does not exist: give the .ckpt of "
                "the bp fine-tuned model (runs/<name>/version_<k>/checkpoints/best.ckpt)"
            )

    @property
    def attack_kinds(self) -> tuple[str, ...]:
        """The attack names, lower case, duplicates dropped (the classification defaults when
        none were given; :meth:`attacks_for` gives a task's)."""
        names = ["fgsm", "pgd"] if self.attacks is None else self.attacks
        names = [names] if isinstance(names, str) else names
        return tuple(dict.fromkeys(str(getattr(a, "value", a)).lower() for a in names))

    def attacks_for(self, task: str) -> tuple[str, ...]:
        """The attacks of a suite on ``task`` (``classification`` or ``hashing``): the chosen
        ones, or the task's defaults. An attack the task cannot run is one ValueError."""
        from sslr.robustness.registry import DEFAULT_ATTACKS, get_attack

        names = DEFAULT_ATTACKS[task] if self.attacks is None else self.attack_kinds
        for name in names:
            spec = get_attack(name)
            if task not in spec.tasks:
                able = ", ".join(sorted(spec.tasks))
                raise ValueError(f"Attack {name!r} applies to {able} models, not to {task}")
        return tuple(names)

    @property
    def norm_kinds(self) -> tuple[Norm, ...]:
        return _parse(Norm, self.norms, "norm")

    @property
    def gradient_sources(self) -> tuple[GradientSource, ...]:
        chosen = [s for s in GradientSource if s is not GradientSource.NONE]
        return _parse(GradientSource, self.gradients, "gradient source", chosen)

    @property
    def backend_kind(self) -> Backend:
        return _parse(Backend, [self.backend], "backend")[0]

    def eps_for(self, norm: Norm) -> tuple[float, ...]:
        """The epsilons of ``norm`` (validated; duplicates dropped)."""
        if norm is Norm.LINF:
            values = _check_eps(self.eps, "eps", upper=1.0)
        else:
            values = _check_eps(self.eps_l2, "eps_l2", upper=None)
        if self.verdict and VERDICT_EPS[norm.value] not in values:
            values = values + (VERDICT_EPS[norm.value],)
        return values

    def steps_of(self, attack: str) -> int:
        """The ``steps`` column of ``attack``'s rows: 1 for FGSM, Square's query budget."""
        from sslr.robustness.registry import get_attack

        return get_attack(attack).steps(self)

    def step_of(self, attack: str, eps: float) -> float:
        """Absolute step (alpha) of a white-box attack at ``eps``."""
        return eps if attack == "fgsm" else self.step_size * eps / self.steps

    @property
    def loss_name(self) -> str:
        return str(self.loss).lower()

    @property
    def wants_transfer(self) -> bool:
        return GradientSource.TRANSFER in self.gradient_sources
