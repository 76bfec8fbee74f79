"""The threat model shared by the attacks of this package: L-inf or L2 balls of radius eps
around images in [0, 1], the projection onto them, and the settings checks every attack runs
before any work (one ValueError sentence each: the CLI prints it as one line).

Norms are given as strings (``"linf"``, ``"l2"``) or as ``sslr.robustness.Norm`` members (a
``str`` enum), so that this package imports torch only.
"""

from __future__ import annotations

import math

import torch

NORMS = ("linf", "l2")


def norm_name(norm) -> str:
    """``"linf"`` or ``"l2"`` from a string or a Norm enum member."""
    name = str(getattr(norm, "value", norm)).lower()
    if name not in NORMS:
        raise ValueError(f"Unknown norm {norm!r}: use linf or l2")
    return name


def check_eps(eps: float) -> float:
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be finite and >= 0 (pixel units of [0, 1] images), got {eps}")
    return eps


def check_positive(value: int, name: str, what: str) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a whole number >= 1 ({what}), got {value!r}")
    return int(value)


def check_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() < 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"Expected images (N, ...) and class indices (N,), got shapes {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise ValueError("Images must lie in [0, 1] (the model normalizes them itself)")


def _view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *[1] * (like.dim() - 1))


def lp_norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-image norm (N,) of ``v`` (N, ...)."""
    flat = v.flatten(1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(p=2, dim=1)


def normalized(v: torch.Tensor, norm: str) -> torch.Tensor:
    """``v`` scaled per image to unit ``norm`` (a zero image stays zero)."""
    return v / (_view(lp_norm(v, norm), v) + 1e-12)


def project(x0: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The point of the eps ball around ``x0`` (and of [0, 1]) nearest ``x``: clip to the ball,
    then to [0, 1]. Clipping to [0, 1] only moves coordinates toward ``x0`` (which lies in
    [0, 1]), so the result stays in the ball."""
    delta = x - x0
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        scale = (eps / lp_norm(delta, norm).clamp_min(1e-30)).clamp(max=1.0)
        delta = delta * _view(scale, delta)
    return (x0 + delta).clamp(0.0, 1.0)


def draw(
    shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor, normal: bool = False
) -> torch.Tensor:
    """Uniform [0, 1) (or standard normal) draws of ``shape`` on ``like``'s device and dtype."""
    fn = torch.randn if normal else torch.rand
    return fn(shape, generator=generator, device=like.device, dtype=like.dtype)


def make_generator(seed: int, generator: torch.Generator | None, device) -> torch.Generator:
    """``generator`` if given, else a new one on ``device`` seeded with ``seed``."""
    if generator is not None:
        return generator
    return torch.Generator(device=device).manual_seed(int(seed))


def child_generator(generator: torch.Generator) -> torch.Generator:
    """A new generator seeded from ``generator`` (on its device): one per restart, so that a
    restart's draws do not depend on when the previous one stopped."""
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)
    return torch.Generator(device=generator.device).manual_seed(int(seed))
