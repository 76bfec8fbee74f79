"""ART's ``SquareAttack`` (NumPy) behind the signature of :func:`sslr.attacks.square`: the
reference backend the tests and ``benchmarks/square_speed.py`` compare the torch Square with.
ART (and NumPy) are imported only when it is called."""

from __future__ import annotations

import random

import torch
from torch import nn

from sslr.attacks.apgd import AttackResult
from sslr.attacks.gradient import Model
from sslr.attacks.threat import check_batch, check_eps, check_positive, norm_name


class _Callable(nn.Module):
    """A model callable as the ``nn.Module`` ART's classifier wants; counts forwarded images."""

    def __init__(self, fn: Model) -> None:
        super().__init__()
        self.fn = fn
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.fn(x)


def square_art(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    queries: int = 5000,
    p_init: float = 0.8,
    restarts: int = 1,
    seed: int = 0,
    batch_size: int = 128,
    num_classes: int | None = None,
) -> AttackResult:
    """ART's Square attack (``max_iter=queries``) on the batch, with NumPy's and Python's
    global generators seeded with ``seed`` for the call and restored afterwards. ``success``
    comes from one extra forward pass on the result (ART does not report it); ``queries`` is
    the number of images ART forwarded, divided evenly over the batch (ART does not count per
    image; its iterations forward every image still correctly classified three times)."""
    import numpy as np
    from art.estimators.classification import PyTorchClassifier

    norm = norm_name(norm)
    eps = check_eps(eps)
    queries = check_positive(queries, "queries", "Square iterations per image")
    restarts = check_positive(restarts, "restarts", "random starts per image")
    check_batch(x, y)
    if eps == 0:
        raise ValueError("ART's Square needs eps > 0")
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
        from art.attacks.evasion import SquareAttack

        attack = SquareAttack(
            classifier,
            norm=np.inf if norm == "linf" else 2,
            eps=eps,
            max_iter=queries,
            p_init=p_init,
            nb_restarts=restarts,
            batch_size=batch_size,
            verbose=False,
        )
        np_state, py_state = np.random.get_state(), random.getstate()
        np.random.seed(seed % 2**32)
        random.seed(seed)
        wrapped.images = 0
        try:
            # ART's L2 Square divides by zero-norm tiles on the way; those candidates are NaN
            # and never accepted.
            with np.errstate(divide="ignore", invalid="ignore"):
                labels = torch.nn.functional.one_hot(y.long(), num_classes).cpu().numpy()
                adv = attack.generate(x.detach().cpu().numpy(), labels)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        forwarded = wrapped.images
        x_adv = torch.from_numpy(adv).to(device=x.device, dtype=x.dtype)
        success = model(x_adv).argmax(dim=1) != y.to(x.device)
    n = x.shape[0]
    return AttackResult(
        x_adv=x_adv,
        success=success,
        queries=torch.full((n,), forwarded // max(n, 1), dtype=torch.long, device=x.device),
        degenerate=torch.zeros(n, dtype=torch.bool, device=x.device),
    )
