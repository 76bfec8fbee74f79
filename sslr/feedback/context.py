"""Context managers that change how feedback layers behave for a while."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from .convert import feedback_layers


@contextmanager
def exact_gradients(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every feedback layer backpropagates with B = W: the true gradient.

    For white-box attacks with the exact gradient of the same weights (the ``exact``
    gradient source) and for gradient checks. It applies to forward passes run inside the
    block; brsf draws nothing meanwhile. Restored on exit, exceptions included; nests.
    """
    layers = [layer for _, layer in feedback_layers(model)]
    for layer in layers:
        layer._exact_depth += 1
    try:
        yield model
    finally:
        for layer in layers:
            layer._exact_depth -= 1


@contextmanager
def resampling(model: nn.Module, start: int = 0) -> Iterator[nn.Module]:
    """Within the block, brsf layers draw a fresh B at every forward, eval mode included.

    The paper's threat model for attacks on brSF (the feedback is redrawn at every forward),
    and the basis of expectation over transformation: average input gradients over several
    forwards. The draws come from a stream of their own, keyed by the layer's seed, its
    current draw counter and the forward's index within the block, so an evaluation is
    reproducible and leaves the training sequence untouched. Training-mode forwards keep
    advancing the training counter as always. Restored on exit, exceptions included.
    Under torch.compile these draws run eagerly (a graph break per brsf layer). ``start``: the
    first forward's index (an attack's batch k counts from its own start, so its draws do not
    depend on the batches before it).
    """
    layers = [layer for _, layer in feedback_layers(model)]
    saved = [layer._resample_count for layer in layers]
    for layer in layers:
        layer._resample_count = int(start)
    try:
        yield model
    finally:
        for layer, count in zip(layers, saved, strict=True):
            layer._resample_count = count
