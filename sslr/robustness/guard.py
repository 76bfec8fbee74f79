"""Attacks without side effects: a context that puts networks in the state an attack needs and
gives everything back afterwards."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import numpy as np
import torch
from torch import nn


class TrainModeWarning(UserWarning):
    """A network was handed to an attack in training mode; it is evaluated in eval mode."""


@contextmanager
def attack_mode(*networks: nn.Module, warn_train_mode: bool = True) -> Iterator[None]:
    """Run attacks on ``networks`` with gradients on and no lasting effect on them.

    Inside: gradients are enabled even under Lightning's ``torch.inference_mode()`` (tensors
    made here are ordinary tensors; inputs made under inference mode must be cloned), every
    network is in eval mode, and parameters do not require grad, so a backward pass computes the
    input gradient only (no wasted weight gradients, nothing accumulates in ``.grad``).

    On exit, whatever happened (ART's ``loss_gradient`` calls ``zero_grad`` and ``train()``):
    each module's training flag, each parameter's ``requires_grad`` and ``.grad`` (the same
    tensor), the buffers (BatchNorm statistics, brsf draw counters) and the torch and NumPy
    global random states are as they were. A network in training mode triggers a
    :class:`TrainModeWarning` and is attacked in eval mode.
    """
    with ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        devices = sorted(
            {p.device.index or 0 for net in networks for p in net.parameters() if p.is_cuda}
        )
        stack.enter_context(torch.random.fork_rng(devices=devices))
        numpy_state = np.random.get_state()
        stack.callback(np.random.set_state, numpy_state)

        for net in networks:
            if net.training and warn_train_mode:
                warnings.warn(
                    f"{type(net).__name__} is in training mode; it is attacked and evaluated in "
                    "eval mode (call .eval() first to silence this warning)",
                    TrainModeWarning,
                    stacklevel=3,
                )
            stack.callback(_restore(net))
            net.eval()
            for p in net.parameters():
                p.requires_grad_(False)
        yield


# Buffers up to this size are copied and compared by value (BatchNorm statistics, counters:
# native kernels update those in place without bumping their version counter). Larger ones (fa
# and frsf keep weight-sized feedback buffers) are only checked by version counter, not copied.
_COPY_LIMIT = 1 << 20


def _restore(net: nn.Module):
    """Snapshot ``net``'s mutable state; the returned function puts it back."""
    training = [(m, m.training) for m in net.modules()]
    # .grad by reference: inside attack_mode nothing accumulates into it (parameters do not
    # require grad), ART's zero_grad only drops the reference (set_to_none).
    params = [(p, p.requires_grad, p.grad) for p in net.parameters()]
    small = [(b, b.detach().clone()) for b in net.buffers() if b.numel() <= _COPY_LIMIT]
    large = [(n, b, b._version) for n, b in net.named_buffers() if b.numel() > _COPY_LIMIT]

    def restore() -> None:
        with torch.no_grad():
            # one device sync for all buffers rather than one per buffer
            flags: dict[torch.device, list[torch.Tensor]] = {}
            for b, saved in small:
                flags.setdefault(b.device, []).append((b != saved).any())
            if any(bool(torch.stack(f).any()) for f in flags.values()):
                for b, saved in small:
                    if not torch.equal(b, saved):
                        b.copy_(saved)
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad
        for m, flag in training:
            m.training = flag
        changed = [n for n, b, version in large if b._version != version]
        if changed:
            raise RuntimeError(f"An attack modified the buffers {changed} of the model in place")

    return restore
