"""The field's reference attacks, on torch tensors on any device: APGD (Croce & Hein 2020;
cross-entropy, DLR and margin losses, untargeted and AutoAttack's targeted APGD-T), FAB-T (Croce
& Hein 2020, the minimal-perturbation attack AutoAttack runs targeted), the Square attack
(Andriushchenko et al. 2020; ART's NumPy Square kept as the reference backend), their losses,
and the AutoAttack ensemble run image by image. Imports torch only (ART on demand).

Every attack takes a model callable ``x in [0, 1] -> logits`` and returns an
:class:`AttackResult`; white-box ones take their gradients through autograd, inside whatever
gradient-source context the caller entered (see :mod:`sslr.attacks.gradient`).
"""

from sslr.attacks.apgd import AttackResult, apgd, apgd_targeted, checkpoints
from sslr.attacks.autoattack import MEMBERS, AutoAttackResult, autoattack
from sslr.attacks.fab import FABResult, boundary_step, fab_targeted
from sslr.attacks.gradient import LossGradient, degenerate_gradients, eot_gradient, input_gradient
from sslr.attacks.losses import LOSSES, loss_function
from sslr.attacks.square import square, window_fraction
from sslr.attacks.square_art import square_art

__all__ = [
    "LOSSES",
    "MEMBERS",
    "AttackResult",
    "AutoAttackResult",
    "FABResult",
    "LossGradient",
    "apgd",
    "apgd_targeted",
    "autoattack",
    "boundary_step",
    "checkpoints",
    "degenerate_gradients",
    "eot_gradient",
    "fab_targeted",
    "input_gradient",
    "loss_function",
    "square",
    "square_art",
    "window_fraction",
]
