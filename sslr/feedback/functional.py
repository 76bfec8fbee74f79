"""Autograd for feedback layers: the forward pass with W, the input gradient with B.

One ``torch.autograd.Function`` per layer type. Its forward is exactly ``F.conv2d`` /
``F.linear``; its backward builds B (only when the input needs a gradient) and makes one
``aten.convolution_backward`` call with B in the weight slot (the weight and bias gradients do
not depend on the weight's values, so they are the ordinary local ones), or two matmuls for
Linear. B is never a Parameter and is not kept between steps: it is rebuilt from W and the
layer's buffers by the rule, so the optimizer's updates are always reflected.

Mixed precision: under ``torch.autocast`` the input, weight and bias are cast to the autocast
dtype before the Function (as autocast does for conv2d/linear, float64 left alone), so the
output dtype is nn.Conv2d's and the saved activations are the low-precision ones. B is built
from the full-precision weight (signs of tiny weights are not flushed) and cast once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .rules import FeedbackRule, Scale
from .seeding import hashed_uniform_like


def autocast_inputs(
    x: Tensor, weight: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Cast (x, weight, bias) as autocast would for conv2d/linear; identity outside autocast."""
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):  # the common case: nothing to do
        return x, weight, bias
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t: Tensor | None) -> Tensor | None:
        if t is None or not t.is_floating_point() or t.dtype in (dtype, torch.float64):
            return t
        return t.to(dtype)

    return cast(x), cast(weight), cast(bias)


_convolution_backward = torch.ops.aten.convolution_backward.default


class Draw(NamedTuple):
    """brsf under torch.compile: draw |M| in the backward from the device-side state.

    The draw is a hash of (seed, counter) (:func:`hashed_uniform_like`); ``advance`` (a
    training forward) uses counter + 1 and stores it once B is built. Incrementing in the
    forward graph instead is miscompiled: AOTAutograd recomputes the draw in the backward
    from the already incremented buffer (pytorch/pytorch#197039).
    """

    seed: Tensor
    counter: Tensor
    bound: float
    advance: bool


class Feedback(NamedTuple):
    """What a layer's B is made of between two ``set_rule`` calls: the rule, the scale and the
    fixed magnitude s. Layers build it once and pass it whole, so a call carries few
    arguments (Function.apply's host time grows with them)."""

    rule: FeedbackRule
    scale: Scale
    constant: float


def _unpack(draw: Draw | None):
    # Function.apply gets the draw's tensors as top-level arguments (dynamo wants them so).
    if draw is None:
        return None, None, None
    return draw.seed, draw.counter, (draw.bound, draw.advance)


def _feedback(ctx, weight, master, aux, seed, counter, need_x: bool) -> Tensor | None:
    # B for this backward (None if the input needs no gradient), built from the
    # full-precision weight, in the dtype of the weight the forward used.
    source = weight if master is None else master
    if ctx.draw is not None:  # brsf under torch.compile (see Draw)
        bound, advance = ctx.draw
        drawn = counter + 1 if advance else counter
        if need_x:
            aux = hashed_uniform_like(source, bound, seed, drawn)
        if advance:
            counter.copy_(drawn)  # after the draw
    if not need_x:
        return None
    rule, scale, constant = ctx.feedback
    b = rule.matrix(source, aux, scale, constant)
    return b if master is None else b.to(weight.dtype)


class _Conv2dFeedback(torch.autograd.Function):
    # forward(ctx, ...) rather than setup_context: Function.apply binds the arguments of a
    # setup_context-style forward with inspect.signature on every call (~0.1 ms of host time).
    # ``conv`` is (stride, padding, dilation, groups) as lists, built once per layer.
    @staticmethod
    def forward(ctx, x, weight, bias, master, aux, seed, counter, draw, feedback, conv):
        ctx.save_for_backward(x, weight, master, aux, seed, counter)
        ctx.draw, ctx.feedback, ctx.conv = draw, feedback, conv
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        stride, padding, dilation, groups = conv
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight, master, aux, seed, counter = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        # Only the input gradient reads the weight slot: B goes there.
        b = _feedback(ctx, weight, master, aux, seed, counter, need_x)
        b = weight if b is None else b
        stride, padding, dilation, groups = ctx.conv
        grad_x, grad_w, grad_b = _convolution_backward(
            grad_output, x, b, ctx.bias_sizes, stride, padding, dilation,
            False, [0, 0], groups, [need_x, need_w, need_b and ctx.bias_sizes is not None],
        )  # fmt: skip
        return grad_x, grad_w, grad_b, None, None, None, None, None, None, None


class _LinearFeedback(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, master, aux, seed, counter, draw, feedback):
        ctx.save_for_backward(x, weight, master, aux, seed, counter)
        ctx.draw, ctx.feedback = draw, feedback
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):  # grad_output: (..., out)
        x, weight, master, aux, seed, counter = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        b = _feedback(ctx, weight, master, aux, seed, counter, need_x)
        if need_x:
            grad_x = grad_output.matmul(b)  # (..., in)
        g2 = grad_output.reshape(-1, grad_output.shape[-1])  # (N, out)
        if need_w:
            grad_w = g2.t().mm(x.reshape(-1, x.shape[-1]))  # (out, in)
        if need_b:
            grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


def conv_arguments(stride, padding, dilation, groups: int) -> tuple:
    """(stride, padding, dilation, groups) as convolution_backward takes them (lists)."""
    return list(stride), list(padding), list(dilation), groups


def feedback_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    aux: Tensor | None,
    feedback: Feedback,
    conv: tuple,
    draw: Draw | None = None,
) -> Tensor:
    """``F.conv2d(x, weight, bias, *conv)`` whose input gradient uses
    B = ``feedback.rule.matrix(weight, aux, ...)``; ``conv`` from :func:`conv_arguments`, with
    numeric padding (the layer resolves "same"/"valid" and padding modes). Layers build
    ``feedback`` and ``conv`` once, not per call."""
    xc, wc, bc = autocast_inputs(x, weight, bias)
    master = None if wc is weight else weight  # dynamo refuses the same tensor twice
    seed, counter, meta = _unpack(draw)
    return _Conv2dFeedback.apply(xc, wc, bc, master, aux, seed, counter, meta, feedback, conv)


def feedback_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    aux: Tensor | None,
    feedback: Feedback,
    draw: Draw | None = None,
) -> Tensor:
    """``F.linear(x, weight, bias)`` whose input gradient uses
    B = ``feedback.rule.matrix(weight, aux, ...)``."""
    xc, wc, bc = autocast_inputs(x, weight, bias)
    master = None if wc is weight else weight  # dynamo refuses the same tensor twice
    seed, counter, meta = _unpack(draw)
    return _LinearFeedback.apply(xc, wc, bc, master, aux, seed, counter, meta, feedback)
