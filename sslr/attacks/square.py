"""The Square attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search"), L-inf and L2, on torch tensors on any device.

A random search on the margin loss z_y - max_{i != y} z_i: from a start on the boundary of the
eps ball (vertical stripes of +-eps for L-inf; a grid of +-"Gaussian" tiles scaled to norm eps
for L2), each iteration changes one random square window of every image still correctly
classified (L-inf: the window moves to a random vertex of the ball, one sign per channel; L2:
mass moves from a second window into the first, keeping the norm at eps) and keeps the change
if the margin falls. The window covers a fraction p of the image, p_init = 0.8 halved at the
query fractions 0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8 of the budget (the official
code's schedule). No gradient is used: run it outside any gradient context.

Written here because ART's ``SquareAttack`` (kept as the reference backend in
:mod:`sslr.attacks.square_art`) runs on NumPy, makes three model calls per iteration where
one suffices, and moves the same window on every image of a batch; this one draws a window per
image (as the paper's code does) and draws for the whole batch at every iteration, so that an
image's attack depends on its position and the seed only.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from sslr.attacks.apgd import AttackResult
from sslr.attacks.gradient import Model
from sslr.attacks.losses import margin
from sslr.attacks.threat import (
    check_batch,
    check_eps,
    check_positive,
    child_generator,
    draw,
    lp_norm,
    make_generator,
    norm_name,
    normalized,
)

# query fractions at which the window fraction p halves (the official code's schedule)
_HALVINGS = (0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)


def window_fraction(i: int, queries: int, p_init: float) -> float:
    """p at iteration ``i`` of ``queries``: p_init halved once per fraction passed."""
    it = int(i / queries * 10000)  # the official rescaling to a 10,000-query schedule
    halvings = sum(it > round(f * 10000) for f in _HALVINGS)
    return p_init / 2**halvings


@lru_cache(maxsize=64)
def _rectangle(rows: int, cols: int) -> torch.Tensor:
    """Nested rectangles of weight 1/(k+1)^2 around the centre, unit L2 norm (rows, cols)."""
    delta = torch.zeros(rows, cols, dtype=torch.float64)
    r0, c0 = rows // 2, cols // 2
    for k in range(max(rows // 2 + 1, cols // 2 + 1)):
        delta[max(r0 - k, 0) : min(r0 + k + 1, rows), max(c0 - k, 0) : min(c0 + k + 1, cols)] += (
            1.0 / (k + 1) ** 2
        )
    return delta / delta.norm()


@lru_cache(maxsize=64)
def _l2_tile(s: int) -> torch.Tensor:
    """The L2 update pattern (s, s): a rectangle pattern on the upper half, its negative on the
    lower half, unit L2 norm."""
    delta = torch.zeros(s, s, dtype=torch.float64)
    delta[: s // 2] = _rectangle(s // 2, s)
    delta[s // 2 :] = -_rectangle(s - s // 2, s)
    return delta / delta.norm()


def _tiles(s: int, flip: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(n, 1, s, s) L2 patterns, transposed where ``flip`` (n,)."""
    tile = _l2_tile(s).to(device=like.device, dtype=like.dtype)
    return torch.where(flip.view(-1, 1, 1, 1), tile.t(), tile)


def _window_mask(top: torch.Tensor, left: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    """(n, 1, h, w) bool: the s x s window at (top, left) of each image."""
    rows = torch.arange(h, device=top.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=top.device).view(1, 1, 1, w)
    top, left = top.view(-1, 1, 1, 1), left.view(-1, 1, 1, 1)
    return (rows >= top) & (rows < top + s) & (cols >= left) & (cols < left + s)


def _positions(u: torch.Tensor, size: int, s: int) -> torch.Tensor:
    """Uniform draws u in [0, 1) -> window offsets in 0..size - s."""
    return (u * (size - s + 1)).long().clamp(max=size - s)


def _window_norm(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image and channel L2 norm (n, c, 1, 1) of ``v`` inside ``mask``."""
    return (v * mask).square().sum(dim=(2, 3), keepdim=True).sqrt()


def _init_linf(x: torch.Tensor, eps: float, u: torch.Tensor) -> torch.Tensor:
    signs = torch.where(u < 0.5, -1.0, 1.0).to(x.dtype)  # (N, C, 1, W): vertical stripes
    return (x + eps * signs).clamp(0.0, 1.0)


def _init_l2(x: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
    n, c, h, w = x.shape
    s = min(h, w) // 5
    top0, left0 = (h - 5 * s) // 2, (w - 5 * s) // 2
    delta = torch.zeros_like(x)
    for i in range(5):
        for j in range(5):
            signs = torch.where(draw((n, c, 1, 1), gen, x) < 0.5, -1.0, 1.0).to(x.dtype)
            flip = draw((n,), gen, x) < 0.5
            r, q = top0 + i * s, left0 + j * s
            delta[:, :, r : r + s, q : q + s] += _tiles(s, flip, x) * signs
    return (x + eps * normalized(delta, "l2")).clamp(0.0, 1.0)


def _step_linf(x, x_best, eps, p, gen, n_all, index):
    n, c, h, w = x.shape
    s = min(max(int(round(math.sqrt(p * h * w))), 1), h, w)
    u = draw((n_all, 2), gen, x)[index]
    signs = torch.where(draw((n_all, c, 1, 1), gen, x)[index] < 0.5, -1.0, 1.0).to(x.dtype)
    mask = _window_mask(_positions(u[:, 0], h, s), _positions(u[:, 1], w, s), s, h, w)
    new = torch.where(mask, x + eps * signs, x_best)  # the window jumps to a vertex
    return new.clamp(0.0, 1.0)


def _step_l2(x, x_best, eps, p, gen, n_all, index):
    n, c, h, w = x.shape
    s = max(int(round(math.sqrt(p * h * w))), 3)
    s = min(s + 1 - s % 2, h, w)  # odd, and inside the image
    u = draw((n_all, 4), gen, x)[index]
    signs = torch.where(draw((n_all, c, 1, 1), gen, x)[index] < 0.5, -1.0, 1.0).to(x.dtype)
    flip = draw((n_all,), gen, x)[index] < 0.5
    top, left = _positions(u[:, 0], h, s), _positions(u[:, 1], w, s)
    mask1 = _window_mask(top, left, s, h, w)
    mask2 = _window_mask(_positions(u[:, 2], h, s), _positions(u[:, 3], w, s), s, h, w)
    delta = x_best - x
    norm_image = lp_norm(delta, "l2").view(-1, 1, 1, 1)
    norm_w1 = _window_norm(delta, mask1)
    norm_both = _window_norm(delta, mask1 | mask2)
    # the window's content as an (n, c, s, s) block: gather rows then columns
    rows = (top.view(-1, 1) + torch.arange(s, device=x.device)).view(n, 1, s, 1)
    cols = (left.view(-1, 1) + torch.arange(s, device=x.device)).view(n, 1, 1, s)
    block = delta.gather(2, rows.expand(n, c, s, w)).gather(3, cols.expand(n, c, s, s))
    new = _tiles(s, flip, x) * signs + block / (norm_w1 + 1e-12)
    budget = (eps**2 - norm_image.square()).clamp_min(0.0) / c + norm_both.square()
    new = new / (new.square().sum(dim=(2, 3), keepdim=True).sqrt() + 1e-12) * budget.sqrt()
    delta = delta.masked_fill(mask2, 0.0)
    full = torch.zeros_like(delta)
    full.scatter_(3, cols.expand(n, c, s, s), new)  # columns in place, rows still 0..s-1
    placed = torch.zeros_like(delta)
    placed.scatter_(2, rows.expand(n, c, s, w), full[:, :, :s, :])
    delta = torch.where(mask1, placed, delta)
    return (x + eps * normalized(delta, "l2")).clamp(0.0, 1.0)


def square_settings(x, y, eps, norm, queries, restarts, p_init) -> tuple[str, float, int, int]:
    """Validate Square's settings (this one and ART's): (norm, eps, queries, restarts)."""
    norm = norm_name(norm)
    eps = check_eps(eps)
    queries = check_positive(queries, "queries", "Square iterations per image")
    restarts = check_positive(restarts, "restarts", "random starts per image")
    if not 0 < float(p_init) < 1:
        raise ValueError(
            f"p_init must lie in (0, 1) (the window's share of the image), got {p_init}"
        )
    check_batch(x, y)
    return norm, eps, queries, restarts


def square(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    queries: int = 5000,
    p_init: float = 0.8,
    restarts: int = 1,
    seed: int = 0,
    generator: torch.Generator | None = None,
    active: torch.Tensor | None = None,
) -> AttackResult:
    """Square attack on a batch ``x`` (N, C, H, W) in [0, 1] with labels ``y`` (N,).

    ``queries``: iterations per restart (the official code's ``n_queries``, ART's
    ``max_iter``); each costs one forward pass per image still correctly classified, plus one
    for the start. The result's ``queries`` counts them per image. Images misclassified before
    the attack are not attacked (success True, 0 queries); nor are those outside ``active``
    (N,) bool (success False). ``generator`` (or a new one seeded with ``seed``): the same seed
    gives the same result. Bad settings raise ValueError before any model call.
    """
    norm, eps, queries, restarts = square_settings(x, y, eps, norm, queries, restarts, p_init)
    if x.dim() != 4:
        raise ValueError(f"Square needs images (N, C, H, W), got shape {tuple(x.shape)}")
    if norm == "l2" and min(x.shape[2:]) < 5:
        raise ValueError("L2 Square needs images of at least 5 x 5 pixels")
    root = make_generator(seed, generator, x.device)
    x0 = x.detach()
    n_all, device = x0.shape[0], x0.device
    y = y.to(device)
    active = torch.ones(n_all, dtype=torch.bool, device=device) if active is None else active.bool()
    with torch.no_grad():
        success = (model(x0).argmax(dim=1) != y) & active
        x_adv = x0.clone()
        used = torch.zeros(n_all, dtype=torch.long, device=device)
        step = _step_linf if norm == "linf" else _step_l2
        for _ in range(restarts):
            gen = child_generator(root)
            if norm == "linf":
                start = _init_linf(x0, eps, draw((n_all, x0.shape[1], 1, x0.shape[3]), gen, x0))
            else:
                start = _init_l2(x0, eps, gen)
            index = (active & ~success).nonzero().squeeze(1)
            if index.numel() == 0:
                break
            x_best = start[index]
            logits = model(x_best)
            used[index] += 1
            best = -margin(logits, y[index])  # z_y - max_{i != y} z_i, to minimise
            won = logits.argmax(dim=1) != y[index]
            x_adv[index], success[index] = x_best, won
            for i in range(queries):
                keep = ~won
                if not bool(keep.any()):
                    break
                index, x_best, best = index[keep], x_best[keep], best[keep]
                p = window_fraction(i, queries, p_init)
                xi = x0[index]
                cand = step(xi, x_best, eps, p, gen, n_all, index)
                logits = model(cand)
                used[index] += 1
                loss = -margin(logits, y[index])
                won = logits.argmax(dim=1) != y[index]
                accept = won | (loss < best)
                x_best = torch.where(accept.view(-1, 1, 1, 1), cand, x_best)
                best = torch.where(accept, loss, best)
                x_adv[index] = x_best
                success[index] = won
    return AttackResult(
        x_adv=x_adv,
        success=success,
        queries=used,
        degenerate=torch.zeros(n_all, dtype=torch.bool, device=device),
    )
