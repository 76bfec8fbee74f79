"""Build torchvision classification networks by name and load pretrained weights into them.

The network is built without weights (so building is cheap and never touches the network); the
pretrained state is loaded separately by :func:`load_pretrained`, which the tasks call only when
a run starts from scratch (a resumed run or a checkpoint being evaluated brings its own weights).
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from sslr.errors import UserError

log = logging.getLogger(__name__)


class PretrainedWeightsError(UserError):
    """Pretrained weights were asked for and cannot be had (offline, unknown name, bad file)."""


def list_backbones() -> list[str]:
    """Names accepted as ``backbone``: torchvision's classification models."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_backbone(name: str) -> None:
    known = list_backbones()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown backbone {name!r}: use a torchvision classification model name "
            f"(alexnet, vgg16, resnet18, ...; see torchvision.models.list_models()).{hint}"
        )


def head_name(network: nn.Module) -> str:
    """Qualified name of the last nn.Linear: the classifier head that num_classes replaces."""
    names = [name for name, m in network.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError(f"{type(network).__name__} has no nn.Linear head to replace")
    return names[-1]


def build_network(backbone: str, num_classes: int, *, small_input: bool = False) -> nn.Module:
    """A torchvision ``backbone`` with a ``num_classes``-way head and random weights.

    ``small_input`` gives ResNet-style networks a 32-px stem (3x3 stride-1 first convolution,
    no max-pool), the usual CIFAR adaptation; other families are left as they are.
    """
    check_backbone(backbone)
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    network = torchvision.models.get_model(backbone, weights=None, num_classes=num_classes)
    if small_input:
        conv1 = getattr(network, "conv1", None)
        if not isinstance(conv1, nn.Conv2d) or not hasattr(network, "maxpool"):
            raise ValueError(
                f"small_input applies to ResNet-style networks (conv1 + maxpool); {backbone} has "
                "no such stem: resize the data instead (data.image_size)"
            )
        network.conv1 = nn.Conv2d(3, conv1.out_channels, 3, stride=1, padding=1, bias=False)
        network.maxpool = nn.Identity()
    return network


def torchvision_state_dict(backbone: str, weights: str) -> dict[str, torch.Tensor]:
    """The state dict of torchvision's ``weights`` (e.g. IMAGENET1K_V1) for ``backbone``.

    torchvision caches downloads under $TORCH_HOME/hub/checkpoints; offline, a file already
    there is used and a missing one stops with a sentence saying where to put it.
    """
    try:
        enum = torchvision.models.get_model_weights(backbone)[weights]
    except KeyError:
        known = [w.name for w in torchvision.models.get_model_weights(backbone)]
        raise PretrainedWeightsError(
            f"Unknown weights {weights!r} for {backbone}: known are {', '.join(known)}"
        ) from None
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum.url)
    try:
        return enum.get_state_dict(progress=False, check_hash=False)
    except Exception as err:  # urllib/HTTP/OS errors when offline
        raise PretrainedWeightsError(
            f"Could not load {backbone} weights {weights} ({type(err).__name__}): not in the cache "
            f"at {cache} and no download possible; copy the file there, or pass "
            "model.init_args.pretrained_ckpt with a local checkpoint, or set weights to null"
        ) from None


def checkpoint_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The network's state from an sslr checkpoint or a plain state dict (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(
            f"pretrained_ckpt {str(path)!r} does not exist: give the path of a .ckpt written by "
            "`sslr fit` (runs/<name>/version_<k>/checkpoints/last.ckpt) or of a saved state dict"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise PretrainedWeightsError(
            f"pretrained_ckpt {str(path)!r} could not be read as a weights-only checkpoint: {err}"
        ) from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"pretrained_ckpt {str(path)!r} holds no state dict")
    if any(k.startswith("network.") for k in state):  # an sslr task checkpoint
        state = {k[len("network.") :]: v for k, v in state.items() if k.startswith("network.")}
    return state


def load_pretrained(network: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load a pretrained ``state`` into ``network`` (plain or converted to a feedback rule).

    Parameters whose shape differs (a head for another number of classes, a replaced stem) are
    left at their fresh initialization; their names are returned so the caller can log them.
    Feedback buffers are the rule's own and are never taken from the pretrained state. Any
    parameter of the network missing from the state is an error: the file is for another model.
    """
    own = network.state_dict()
    params = {name for name, _ in network.named_parameters()}
    params |= {name for name, _ in network.named_buffers()} - _feedback_buffers(network)
    missing = sorted(name for name in params if name not in state)
    if missing:
        raise PretrainedWeightsError(
            f"The pretrained state does not fit this network: {len(missing)} entries missing "
            f"(first: {missing[0]}); check that backbone and small_input match the pretrained run"
        )
    skipped = sorted(name for name in params if state[name].shape != own[name].shape)
    load = {name: state[name] for name in params if name not in skipped}
    network.load_state_dict(load, strict=False)
    if skipped:
        log.info("pretrained: kept fresh initialization for %s (shape differs)", ", ".join(skipped))
    return skipped


def _feedback_buffers(network: nn.Module) -> set[str]:
    # Plain nn.Conv2d / nn.Linear own no buffers, so any buffer of one is a feedback rule's state.
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in network.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
        for name in module._buffers
    }
