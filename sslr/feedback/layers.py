"""Feedback layers: nn.Conv2d and nn.Linear whose backward sends the error through B.

Drop-in subclasses (same arguments, same forward, same Parameters and state_dict keys plus
the rule's buffers, see :mod:`sslr.feedback.rule_state`), usable directly in custom models
or made from existing layers by :func:`sslr.feedback.convert_model`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .direct import direct_conv2d, direct_linear
from .functional import conv_arguments, feedback_conv2d, feedback_linear
from .rule_state import FeedbackLayer


def _share_module_state(old: nn.Module, new: nn.Module) -> None:
    """Give ``new`` the Parameters, mode and hooks of ``old`` (the same objects)."""
    new.weight = old.weight
    new.bias = old.bias
    new.train(old.training)
    for name, value in vars(old).items():
        if "_hooks" in name or name == "_is_full_backward_hook":
            setattr(new, name, value)


class FeedbackConv2d(FeedbackLayer, nn.Conv2d):
    """nn.Conv2d whose backward sends the error to the layer below through B, not W.

    Takes nn.Conv2d's arguments plus ``rule`` (see ``list_rules()``), ``scale`` (see
    ``list_scales()``) and ``seed`` (None: drawn from torch's global RNG). The forward is
    exactly nn.Conv2d's; weight and bias gradients are the ordinary local ones.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        rule: str = "bp",
        scale: str = "xavier",
        seed: int | None = None,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
            bias, padding_mode, device, dtype,
        )  # fmt: skip
        self._resolve_padding()
        self._init_feedback(rule, scale, seed)

    @classmethod
    def from_module(cls, module: nn.Conv2d, rule="bp", scale="xavier", seed=None):
        """A FeedbackConv2d with ``module``'s configuration, Parameters, mode and hooks."""
        m = module
        new = cls(
            m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
            m.groups, m.bias is not None, m.padding_mode, device="meta", scale=scale, seed=seed,
        )  # fmt: skip
        _share_module_state(module, new)
        new.set_rule(rule, scale)
        return new

    def _resolve_padding(self) -> None:
        # Numeric padding for convolution_backward, plus an explicit F.pad where nn.Conv2d
        # pads explicitly (padding modes) or aten does ("same" with an odd total padding),
        # so the forward is bitwise nn.Conv2d's.
        self._explicit_pad: list[int] | None = None
        self._pad_mode = "constant"
        if self.padding_mode != "zeros":
            self._explicit_pad = list(self._reversed_padding_repeated_twice)
            self._pad_mode, self._numeric_padding = self.padding_mode, (0, 0)
        elif self.padding == "valid":
            self._numeric_padding = (0, 0)
        elif self.padding == "same":
            left, right = [], []
            for d, k in zip(self.dilation, self.kernel_size, strict=True):
                total = d * (k - 1)
                left.append(total // 2)
                right.append(total - total // 2)
            if left != right:  # as aten's _convolution_mode: pad the extra on the right
                pad = []
                for i in reversed(range(2)):
                    pad += [0, right[i] - left[i]]
                self._explicit_pad = pad
            self._numeric_padding = tuple(left)
        else:
            self._numeric_padding = tuple(self.padding)
        # convolution_backward's arguments, built once rather than per call
        self._conv = conv_arguments(self.stride, self._numeric_padding, self.dilation, self.groups)

    def forward(self, input: Tensor) -> Tensor:
        if self._rule.exact or self._exact_depth:
            return super().forward(input)
        x = input
        if self._rule.learns == "mirror":  # wm's noise takes the shape of the last input
            self.__dict__["_input_shape"] = tuple(input.shape[1:])
        if self._explicit_pad is not None:
            x = F.pad(x, self._explicit_pad, mode=self._pad_mode)
        aux, draw = self._feedback_state()
        if self._rule.direct:
            slot = None if self._direct is None else self._direct.current
            return direct_conv2d(x, self.weight, self.bias, aux, slot, self._feedback, self._conv)
        return feedback_conv2d(x, self.weight, self.bias, aux, self._feedback, self._conv, draw)


class FeedbackLinear(FeedbackLayer, nn.Linear):
    """nn.Linear whose backward sends the error to the layer below through B, not W.

    Takes nn.Linear's arguments plus ``rule``, ``scale`` and ``seed`` (as FeedbackConv2d).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        rule: str = "bp",
        scale: str = "xavier",
        seed: int | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_feedback(rule, scale, seed)

    @classmethod
    def from_module(cls, module: nn.Linear, rule="bp", scale="xavier", seed=None):
        """A FeedbackLinear with ``module``'s configuration, Parameters, mode and hooks."""
        m = module
        new = cls(
            m.in_features,
            m.out_features,
            m.bias is not None,
            device="meta",
            scale=scale,
            seed=seed,
        )
        _share_module_state(module, new)
        new.set_rule(rule, scale)
        return new

    def forward(self, input: Tensor) -> Tensor:
        if self._rule.exact or self._exact_depth:
            return super().forward(input)
        aux, draw = self._feedback_state()
        if self._rule.direct:
            slot = None if self._direct is None else self._direct.current
            return direct_linear(input, self.weight, self.bias, aux, slot, self._feedback)
        return feedback_linear(input, self.weight, self.bias, aux, self._feedback, draw)
