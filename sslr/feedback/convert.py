"""Turning any model's nn.Conv2d / nn.Linear layers into feedback layers, and switching rules."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from fnmatch import fnmatchcase

from torch import nn

from .direct import DirectFeedback
from .layers import FeedbackConv2d, FeedbackLinear
from .rule_state import FeedbackLayer
from .rules import get_rule, get_scale
from .seeding import derive_seed, random_seed

# Exact types only: subclasses such as MultiheadAttention's NonDynamicallyQuantizableLinear
# are used through their .weight by their owner, so their forward (and B) would never run.
_CONVERTIBLE: dict[type[nn.Module], type[FeedbackLayer]] = {
    nn.Conv2d: FeedbackConv2d,
    nn.Linear: FeedbackLinear,
}


def _is_candidate(module: nn.Module) -> bool:
    return isinstance(module, FeedbackLayer) or type(module) in _CONVERTIBLE


def convert_model(
    model: nn.Module,
    rule: str,
    *,
    scale: str = "xavier",
    exclude: Iterable[str] | str = (),
    seed: int | None = None,
    output_dim: int | None = None,
    rank: int | None = None,
) -> nn.Module:
    """Replace every nn.Conv2d and nn.Linear of ``model`` with a feedback layer using ``rule``.

    The new layers have the same configuration and the very same weight and bias Parameters,
    so the forward output is unchanged (pretrained weights are kept) and an optimizer built
    before keeps working. Layers whose name (from ``named_modules()``), or an ancestor's,
    matches a pattern of ``exclude`` (fnmatch, e.g. ``"fc"``, ``"classifier.6"``,
    ``"layer4*"``) stay plain BP. Feedback layers already present switch rule and scale in
    place (keeping their seeds). Each new layer's seed derives from ``seed`` and the layer's
    index among the convertible layers; ``seed=None`` draws it from torch's global RNG.

    Like timm's ``convert_sync_batchnorm``, children are replaced in place and the
    (possibly new) root is returned: ``model = convert_model(model, "usf")``.

    dfa projects the network's output error (N, D) into every layer: ``output_dim`` is D,
    by default the output size of the last nn.Linear (the head); the returned root gets the
    hooks that hand its output error to the layers (:mod:`sslr.feedback.direct`), so the
    loss must read that root's output. ldfa's B has rank ``rank``, by default ``output_dim``
    (itself by default the head's output size); ``rank`` is refused for other rules.
    """
    rule_ = get_rule(rule)
    scale_ = get_scale(scale)
    patterns = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    names = [name for name, module in model.named_modules() if _is_candidate(module)]
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no nn.Conv2d or nn.Linear layer to convert to a "
            "feedback rule."
        )
    all_names = [name for name, _ in model.named_modules()]
    for pattern in patterns:
        if not any(fnmatchcase(name, pattern) for name in all_names):
            warnings.warn(
                f"exclude pattern {pattern!r} matches no module of {type(model).__name__}",
                stacklevel=2,
            )
    if seed is None:
        seed = random_seed()
    index = {name: i for i, name in enumerate(names)}
    converted: dict[int, nn.Module] = {}  # shared modules are converted once
    _check_rank(rule_, rank)
    built = "bp" if rule_.direct or rule_.low_rank else rule_  # switched once the root is known
    chosen: list[FeedbackLayer] = []

    def convert(module: nn.Module, name: str, excluded: bool) -> nn.Module:
        excluded = excluded or any(fnmatchcase(name, p) for p in patterns)
        if id(module) in converted:
            return converted[id(module)]
        new = module
        if isinstance(module, FeedbackLayer):
            module.set_rule("bp" if excluded else built, scale_)
            if not excluded:
                chosen.append(module)
        elif type(module) in _CONVERTIBLE:
            if not excluded:
                layer_seed = derive_seed(seed, index[name])
                new = _CONVERTIBLE[type(module)].from_module(module, built, scale_, layer_seed)
                chosen.append(new)
        else:
            for child_name, child in list(module._modules.items()):  # duplicates too
                if child is None:
                    continue
                new_child = convert(child, f"{name}.{child_name}" if name else child_name, excluded)
                if new_child is not child:
                    setattr(module, child_name, new_child)
        converted[id(module)] = new
        return new

    root = convert(model, "", False)
    if not any(True for _ in feedback_layers(root)):
        raise ValueError(
            f"exclude={patterns!r} leaves no layer of {type(model).__name__} to convert."
        )
    if rule_.direct or rule_.low_rank:
        _network_feedback(root, chosen, rule_, output_dim, rank)
        for layer in chosen:
            layer.set_rule(rule_, scale_)
    _drop_unused_taps(root)
    return root


def _drop_unused_taps(model: nn.Module) -> None:
    """Remove dfa's output taps from ``model`` and its submodules once no layer uses dfa."""
    if any(layer._rule.direct for _, layer in feedback_layers(model)):
        return
    for module in model.modules():
        direct = module.__dict__.pop("_sslr_direct", None)
        if direct is not None:
            direct.remove()


def _check_rank(rule, rank: int | None) -> None:
    if rank is None:
        return
    if not rule.low_rank:
        raise ValueError(
            f"a feedback rank applies to ldfa (low-rank feedback alignment), not to {rule.name}: "
            "drop feedback_rank or use rule ldfa"
        )
    if int(rank) < 1:
        raise ValueError(f"feedback_rank must be a positive integer, got {rank}")


def _output_size(root: nn.Module, output_dim: int | None, rule: str) -> int:
    if output_dim is None:
        heads = [m for m in root.modules() if isinstance(m, nn.Linear)]
        if not heads:
            raise ValueError(
                f"{rule} needs the size of {type(root).__name__}'s output and it has no "
                "nn.Linear head to read it from: pass output_dim (and convert or set_rule the "
                "network whose output the loss reads, not a part of it)"
            )
        output_dim = heads[-1].out_features
    if int(output_dim) < 1:
        raise ValueError(f"output_dim must be a positive number of outputs, got {output_dim}")
    return int(output_dim)


def _network_feedback(root, layers, rule, output_dim: int | None, rank: int | None) -> None:
    """What dfa and ldfa layers need from their network: D and the root's DirectFeedback
    (dfa), the rank (ldfa)."""
    if rule.low_rank:
        r = int(rank) if rank is not None else _output_size(root, output_dim, rule.name)
        for layer in layers:
            layer.__dict__["_rank"] = r
    if rule.direct:
        _direct_feedback(root, layers, _output_size(root, output_dim, rule.name))


def _direct_feedback(root: nn.Module, layers: list[FeedbackLayer], output_dim: int) -> None:
    """Give ``layers`` the output size D and the root's DirectFeedback (made once per root)."""
    direct = root.__dict__.get("_sslr_direct")
    if direct is None or direct.output_dim != output_dim:
        if direct is not None:
            direct.remove()
        direct = root.__dict__["_sslr_direct"] = DirectFeedback(root, int(output_dim))
    for layer in layers:
        layer.__dict__["_output_dim"] = int(output_dim)
        layer.__dict__["_direct"] = direct


def feedback_layers(model: nn.Module) -> Iterator[tuple[str, FeedbackLayer]]:
    """The (name, layer) pairs of the feedback layers of ``model`` (the root included)."""
    for name, module in model.named_modules():
        if isinstance(module, FeedbackLayer):
            yield name, module


def set_rule(
    model: nn.Module, rule: str, *, output_dim: int | None = None, rank: int | None = None
) -> nn.Module:
    """Switch every feedback layer of ``model`` to ``rule`` in place; returns ``model``.

    No module is replaced and the Parameters stay the same objects, so an optimizer and its
    state keep working (e.g. BP for some epochs, then the rule). Buffers are added or removed
    as the rule needs; fa/frsf draw M deterministically from each layer's seed. Layers left
    plain by ``convert_model(exclude=...)`` stay plain. Call it on every rank under DDP, and
    before wrapping (DDP lists the buffers it broadcasts when it wraps the model). dfa:
    ``model`` is the network whose output the loss reads (``output_dim`` as for
    ``convert_model``); ldfa: ``rank`` as for ``convert_model`` (a layer that has a rank
    keeps it unless ``rank`` is given).
    """
    rule_ = get_rule(rule)
    layers = [layer for _, layer in feedback_layers(model)]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no feedback layer: convert it first with convert_model."
        )
    _check_rank(rule_, rank)
    if rule_.direct:
        _network_feedback(model, layers, rule_, output_dim, None)
    if rule_.low_rank and (rank is not None or any(m._rank is None for m in layers)):
        _network_feedback(model, layers, rule_, output_dim, rank)
    for layer in layers:
        layer.set_rule(rule_)
    _drop_unused_taps(model)  # no dfa layer left: no tap
    return model
