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

from sslr.checkpoints import load_checkpoint
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
    if not cache.is_file():
        try:
            # Downloaded to torchvision's own cache path, then opened like any checkpoint
            # (torchvision's loader would unpickle it without restriction).
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(enum.url, str(cache), progress=False)
        except OSError as err:  # urllib's URLError and HTTPError are OSErrors: offline
            raise PretrainedWeightsError(
                f"Could not download {backbone} weights {weights} ({err}): they are not in the "
                f"cache at {cache}; copy the file there, or pass --model.pretrained_ckpt "
                "with a local checkpoint, or --model.weights null"
            ) from err
    return load_checkpoint(cache, f"cached {backbone} weights {weights}")


def checkpoint_state_dict(
    path: str | os.PathLike, task: str | None = None
) -> dict[str, torch.Tensor]:
    """The network's state from an sslr checkpoint or a plain state dict, opened safely.

    ``task``, the class name of the task loading it, refuses a checkpoint of another task.
    """
    what = "pretrained_ckpt"
    obj = load_checkpoint(path, what)
    written = str((obj.get("hyper_parameters") or {}).get("_class_path") or "").rsplit(".", 1)[-1]
    if task and written and written != task:
        raise PretrainedWeightsError(
            f"{what} {str(path)!r} is a {written} checkpoint, not a {task}: start from a "
            f"checkpoint of a {task} run (or a plain state dict of the backbone)"
        )
    state = obj.get("state_dict", obj)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(
            f"{what} {str(path)!r} holds no state dict: give a .ckpt written by `sslr fit` or a "
            "saved state dict"
        )
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
    extra = sorted(set(state) - set(own) - _feedback_buffers(network))
    extra = [name for name in extra if not _is_feedback_name(name)]
    if extra:
        raise PretrainedWeightsError(
            f"The pretrained state does not fit this network: {len(extra)} entries it does not "
            f"have (first: {extra[0]}); it is of another backbone: check model.backbone"
        )
    skipped = sorted(name for name in params if state[name].shape != own[name].shape)
    allowed = _replaceable(network)
    wrong = [name for name in skipped if name.rsplit(".", 1)[0] not in allowed]
    if wrong:
        raise PretrainedWeightsError(
            f"The pretrained state does not fit this network: {len(wrong)} tensors of another "
            f"shape (first: {wrong[0]}: {tuple(state[wrong[0]].shape)} vs "
            f"{tuple(own[wrong[0]].shape)}); it is of another backbone: check model.backbone"
        )
    load = {name: state[name] for name in params if name not in skipped}
    network.load_state_dict(load, strict=False)
    if skipped:
        log.warning(
            "pretrained: kept fresh initialization for %s (shape differs: a new head or stem)",
            ", ".join(skipped),
        )
    return skipped


def _replaceable(network: nn.Module) -> set[str]:
    """Modules a pretrained state may not fit on purpose: the head (another class count or bit
    width) and a ResNet's stem replaced by ``small_input``."""
    return {head_name(network), "conv1"}


def _is_feedback_name(name: str) -> bool:
    # Feedback state saved by a rule other than the network's (a usf run loaded into bp).
    return name.rsplit(".", 1)[-1].startswith("feedback_")


def _feedback_buffers(network: nn.Module) -> set[str]:
    # Plain nn.Conv2d / nn.Linear own no buffers, so any buffer of one is a feedback rule's state.
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in network.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
        for name in module._buffers
    }
