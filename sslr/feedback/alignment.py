"""How far B is from W: the angle between them and the ratio of their norms."""

from __future__ import annotations

import math

import torch
from torch import nn

from .convert import feedback_layers


@torch.no_grad()
def alignment(model: nn.Module) -> dict[str, tuple[float, float]]:
    """Per feedback layer: (angle in degrees between vec(B) and vec(W), ||B|| / ||W||).

    Computed on the B the layer's backward uses now (brsf: its current draw; inside
    ``exact_gradients``: W), in float64. 0 degrees means B points along W (bp: (0.0, 1.0));
    fa's random B sits near 90 degrees. BioTorch measures frSF against |M| instead of B.
    dfa layers are left out: their B projects the network's output error and has another
    shape than W, so no angle to W is defined.
    """
    result = {}
    for name, layer in feedback_layers(model):
        if layer._uses_feedback() and layer._rule.direct:
            continue
        w = layer.weight.detach().double().flatten()
        b = layer.feedback_matrix().double().flatten()
        w_norm, b_norm = w.norm(), b.norm()
        cos = (torch.dot(b, w) / (b_norm * w_norm)).clamp(-1.0, 1.0)
        result[name] = (math.degrees(math.acos(cos.item())), (b_norm / w_norm).item())
    return result
