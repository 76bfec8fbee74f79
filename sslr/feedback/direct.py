"""Direct feedback alignment (dfa): every layer's error comes straight from the output error.

Nøkland 2016, "Direct Feedback Alignment Provides Learning in Deep Neural Networks", as
BioTorch defines it for convolutional and linear layers (``biotorch/layers/dfa``): a dfa
layer with input x sends down, instead of W^T times the error at its output, the network's
output error e = dL/d(output) (N, D) projected through its own fixed random matrix B of
shape (D, in) (linear: e B, the same at every position of an (N, ..., in) input) or
(D, C_in, kh, kw) (conv: e broadcast over the layer's output positions, then the transposed
convolution with B). Its weight and bias gradients stay the
local ones, from the error that reached its output (the layer above's projection, through
the activations in between). So the error reaching the network's input from its first layer
is the output error projected by that layer's B: it depends on the image only through e,
and a conv's projection of a spatially constant e is constant away from the borders.
That is what an attack along ``rule`` follows on a dfa network; ``exact`` is the true one.

The output error reaches the layers through a tap on the network's output: a forward
pre-hook on the converted root opens a slot per forward, the layers' autograd Functions keep
that slot, and the tap's backward (the first to run) stores e in it. Each forward has its
own slot, so graphs of several forwards backpropagated together do not mix. Torch has the
hooks; no library has DFA for arbitrary CNNs (BioTorch needs the targets and loss in the
forward), hence this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .functional import Feedback, autocast_inputs

_convolution_backward = torch.ops.aten.convolution_backward.default


class DirectFeedbackError(RuntimeError):
    """A dfa layer ran without the network's output error (not converted as a whole)."""


class Slot:
    """The output error of one forward, written by the tap's backward."""

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: Tensor | None = None


class DirectFeedback:
    """The root's hooks: a slot per forward, and the tap on the output that fills it."""

    def __init__(self, root: nn.Module, output_dim: int) -> None:
        self.output_dim = output_dim
        self.current: Slot | None = None
        self._handles = [
            root.register_forward_pre_hook(self._open),
            root.register_forward_hook(self._tap),
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _open(self, module, args) -> None:
        self.current = Slot()

    def _tap(self, module, args, output):
        slot, self.current = self.current, None
        if not isinstance(output, Tensor):
            raise DirectFeedbackError(
                f"dfa needs a network whose output is one tensor (N, {self.output_dim}); "
                f"{type(module).__name__} returned {type(output).__name__}"
            )
        if output.requires_grad and slot is not None:
            return _Tap.apply(output, slot)
        return output


class _Tap(torch.autograd.Function):
    @staticmethod
    def forward(ctx, output, slot):
        ctx.slot = slot
        return output.clone()  # not a view: the loss may modify the output in place

    @staticmethod
    def backward(ctx, grad_output):
        ctx.slot.error = grad_output.detach().reshape(grad_output.shape[0], -1)
        return grad_output, None


def _error(slot: Slot | None, dim: int) -> Tensor:
    if slot is None or slot.error is None:
        raise DirectFeedbackError(
            "a dfa layer's backward found no output error: dfa needs the network converted as a "
            "whole (convert_model or set_rule on the model whose output the loss reads)"
        )
    e = slot.error
    if e.shape[1] != dim:
        raise DirectFeedbackError(
            f"the network's output has {e.shape[1]} values per sample but the dfa matrices "
            f"project {dim}: convert the model with output_dim={e.shape[1]}"
        )
    return e


class _Conv2dDirect(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, master, aux, slot, feedback, conv):
        ctx.save_for_backward(x, weight, master, aux)
        ctx.slot, ctx.feedback, ctx.conv = slot, feedback, conv
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        stride, padding, dilation, groups = conv
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight, master, aux = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        stride, padding, dilation, groups = ctx.conv
        grad_x = grad_w = grad_b = None
        if need_w or (need_b and ctx.bias_sizes is not None):
            _, grad_w, grad_b = _convolution_backward(
                grad_output, x, weight, ctx.bias_sizes, stride, padding, dilation,
                False, [0, 0], groups, [False, need_w, need_b and ctx.bias_sizes is not None],
            )  # fmt: skip
        if need_x:
            rule, scale, constant = ctx.feedback
            b = rule.matrix(weight if master is None else master, aux, scale, constant)
            b = b.to(x.dtype)
            e = _error(ctx.slot, b.shape[0]).to(device=x.device, dtype=x.dtype)
            # e is the same at every output position, so e spread over them and projected
            # through B equals one kernel per sample, K_n = sum_d e_nd B_d (C_in, kh, kw),
            # transposed-convolved with a map of ones: one grouped call, no (N, D, h, w) tensor.
            n, _, h, w = grad_output.shape
            kernels = e.mm(b.flatten(1)).view(n * b.shape[1], 1, *b.shape[2:])
            ones = x.new_ones((1, n, h, w))
            flat = x.reshape(1, n * x.shape[1], *x.shape[2:])
            grad_x = _convolution_backward(
                ones, flat, kernels.view(n, b.shape[1], *b.shape[2:]), None, stride, padding,
                dilation, False, [0, 0], n, [True, False, False],
            )[0].view_as(x)  # fmt: skip
        return grad_x, grad_w, grad_b, None, None, None, None, None


class _LinearDirect(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, master, aux, slot, feedback):
        ctx.save_for_backward(x, weight, master, aux)
        ctx.slot, ctx.feedback = slot, feedback
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight, master, aux = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x:
            rule, scale, constant = ctx.feedback
            b = rule.matrix(weight if master is None else master, aux, scale, constant)
            b = b.to(x.dtype)
            e = _error(ctx.slot, b.shape[0]).to(device=x.device, dtype=x.dtype)
            # (N, in), the same at every position of an (N, ..., in) input (tokens, pixels)
            grad_x = e.mm(b).view(x.shape[0], *([1] * (x.dim() - 2)), -1).expand_as(x)
        g2 = grad_output.reshape(-1, grad_output.shape[-1])
        if need_w:
            grad_w = g2.t().mm(x.reshape(-1, x.shape[-1]))
        if need_b:
            grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b, None, None, None, None


def direct_conv2d(x, weight, bias, aux, slot, feedback: Feedback, conv) -> Tensor:
    """``F.conv2d(x, weight, bias, *conv)`` whose input gradient is the output error in
    ``slot`` projected through B = ``feedback.rule.matrix(weight, aux, ...)`` (D, C_in, kh, kw)."""
    xc, wc, bc = autocast_inputs(x, weight, bias)
    master = None if wc is weight else weight
    return _Conv2dDirect.apply(xc, wc, bc, master, aux, slot, feedback, conv)


def direct_linear(x, weight, bias, aux, slot, feedback: Feedback) -> Tensor:
    """``F.linear(x, weight, bias)`` whose input gradient is the output error in ``slot``
    projected through B (D, in)."""
    xc, wc, bc = autocast_inputs(x, weight, bias)
    master = None if wc is weight else weight
    return _LinearDirect.apply(xc, wc, bc, master, aux, slot, feedback)
