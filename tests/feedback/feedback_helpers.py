"""Helpers for the feedback tests: read B back through the input gradient."""

from __future__ import annotations

import torch
from torch import nn

from sslr.feedback import FeedbackConv2d, FeedbackLinear, list_rules

# dfa (the output error) and ldfa (the rank) are set per network: tested in test_direct.py
RULES = [rule for rule in list_rules() if rule not in ("dfa", "ldfa")]
NETWORK_RULES = list_rules()  # every rule, for tests that convert whole networks
RANDOM_RULES = ["fa", "frsf", "brsf"]
SIGN_RULES = ["usf", "frsf", "brsf"]


def read_linear_feedback(layer: nn.Linear) -> torch.Tensor:
    """B of a Linear layer, read from the input gradient of one-hot output gradients."""
    out_features, in_features = layer.weight.shape
    x = torch.randn(out_features, in_features, dtype=layer.weight.dtype, requires_grad=True)
    y = layer(x)
    y.backward(torch.eye(out_features, dtype=y.dtype))  # row n of x.grad = e_n^T B
    return x.grad


def read_conv_feedback(layer: nn.Conv2d) -> torch.Tensor:
    """B of a Conv2d layer (padding 0), read from a one-pixel output per output channel.

    The input is exactly one receptive field, so output channel o of sample o gets gradient
    1 and x.grad[o] holds B[o] (in the input channels of o's group, zeros elsewhere).
    """
    assert layer.padding in ((0, 0), "valid")
    out_c, in_per_group, kh, kw = layer.weight.shape
    dh, dw = layer.dilation
    size = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    x = torch.randn(out_c, in_per_group * layer.groups, *size, dtype=layer.weight.dtype)
    x.requires_grad_(True)
    y = layer(x)  # (out_c, out_c, 1, 1)
    assert y.shape[-2:] == (1, 1)
    y.backward(torch.eye(out_c, dtype=y.dtype).view(out_c, out_c, 1, 1))
    g = x.grad[:, :, ::dh, ::dw]  # drop the dilation holes
    group = torch.arange(out_c) // (out_c // layer.groups)
    rows = [g[o, group[o] * in_per_group : (group[o] + 1) * in_per_group] for o in range(out_c)]
    return torch.stack(rows)


def read_feedback(layer: nn.Module) -> torch.Tensor:
    if isinstance(layer, nn.Conv2d):
        return read_conv_feedback(layer)
    return read_linear_feedback(layer)


def make_layer(kind: str, rule: str, scale: str = "xavier", seed: int = 0, **kwargs) -> nn.Module:
    """A float64 feedback layer, small enough to read B back quickly."""
    if kind == "conv":
        args = dict(in_channels=4, out_channels=6, kernel_size=3) | kwargs
        return FeedbackConv2d(**args, rule=rule, scale=scale, seed=seed, dtype=torch.float64)
    args = dict(in_features=7, out_features=5) | kwargs
    return FeedbackLinear(**args, rule=rule, scale=scale, seed=seed, dtype=torch.float64)
