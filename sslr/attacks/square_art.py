"""ART's ``SquareAttack`` (NumPy) behind the signature of :func:`sslr.attacks.square`: the
reference backend the tests and ``benchmarks/square_speed.py`` compare the torch Square with.
ART (and NumPy) are imported only when it is called."""

from __future__ import annotations

import inspect
import random

import torch
from torch import nn

from sslr.attacks.apgd import AttackResult
from sslr.attacks.gradient import Model
from sslr.attacks.square import square, square_settings


class _Callable(nn.Module):
    """A model callable as the ``nn.Module`` ART's classifier wants; counts forwarded images."""

    def __init__(self, fn: Model) -> None:
        super().__init__()
        self.fn = fn
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.fn(x)


def art_generate(attack, x: torch.Tensor, y_onehot: torch.Tensor) -> torch.Tensor:
    """``attack.generate`` (an ART evasion attack) on a torch batch, back as x's device and
    dtype. ART's L2 Square divides by zero-norm tiles on the way; those candidates are NaN and
    never accepted, so NumPy's warnings about them are silenced."""
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        adv = attack.generate(x.detach().cpu().numpy(), y_onehot.detach().cpu().numpy())
    return torch.from_numpy(adv).to(device=x.device, dtype=x.dtype)


def art_square_attack(
    classifier,
    *,
    norm: str,
    eps: float,
    queries: int,
    batch_size: int,
    p_init: float = 0.8,
    restarts: int = 1,
):
    """ART's ``SquareAttack`` on an ART classifier, ``max_iter=queries``, quiet."""
    import numpy as np
    from art.attacks.evasion import SquareAttack

    return SquareAttack(
        classifier,
        norm=np.inf if norm == "linf" else 2,
        eps=eps,
        max_iter=queries,
        p_init=p_init,
        nb_restarts=restarts,
        batch_size=batch_size,
        verbose=False,
    )


def square_art(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 128,
    num_classes: int | None = None,
    **options,
) -> AttackResult:
    """ART's Square attack (``max_iter=queries``) on the batch; ``options`` are
    :func:`sslr.attacks.square`'s ``eps``, ``norm``, ``queries``, ``p_init``, ``restarts`` and
    ``seed``, with its defaults. NumPy's and Python's global generators are seeded with
    ``seed`` for the call and restored afterwards. ``success`` comes from one extra forward
    pass on the result (ART does not report it); ``queries`` is the number of images ART
    forwarded, divided evenly over the batch (ART does not count per image; its iterations
    forward every image still correctly classified three times)."""
    import numpy as np
    from art.estimators.classification import PyTorchClassifier

    unsupported = set(options) & {"generator", "active"}
    if unsupported:
        raise ValueError(
            f"ART's Square takes no {', '.join(sorted(unsupported))}: seed it with seed="
        )
    bound = inspect.signature(square).bind(model, x, y, **options)  # TypeError on unknown keys
    bound.apply_defaults()
    given = bound.arguments
    norm, eps, queries, restarts = square_settings(
        x, y, given["eps"], given["norm"], given["queries"], given["restarts"], given["p_init"]
    )
    if eps == 0:
        raise ValueError("ART's Square needs eps > 0")
    seed = given["seed"]
    wrapped = _Callable(model)
    with torch.no_grad():
        if num_classes is None:
            num_classes = int(model(x[:1]).shape[1])
        classifier = PyTorchClassifier(
            model=wrapped,
            loss=nn.CrossEntropyLoss(),
            input_shape=tuple(x.shape[1:]),
            nb_classes=num_classes,
            clip_values=(0.0, 1.0),
            device_type="gpu" if x.device.type == "cuda" else "cpu",
        )
        attack = art_square_attack(
            classifier, norm=norm, eps=eps, queries=queries, batch_size=batch_size,
            p_init=given["p_init"], restarts=restarts,
        )  # fmt: skip
        np_state, py_state = np.random.get_state(), random.getstate()
        np.random.seed(seed % 2**32)
        random.seed(seed)
        wrapped.images = 0
        try:
            labels = torch.nn.functional.one_hot(y.long(), num_classes)
            x_adv = art_generate(attack, x, labels)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        forwarded = wrapped.images
        success = model(x_adv).argmax(dim=1) != y.to(x.device)
    n = x.shape[0]
    return AttackResult(
        x_adv=x_adv,
        success=success,
        queries=torch.full((n,), forwarded // max(n, 1), dtype=torch.long, device=x.device),
        degenerate=torch.zeros(n, dtype=torch.bool, device=x.device),
    )
