"""FAB-T (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive
boundary attack"), the targeted FAB that AutoAttack runs as its third member, L-inf and L2, on
torch tensors on any device.

FAB looks for the smallest perturbation that changes the decision. Per image x_0 with label y
and target class t, with g(x) = f_t(x) - f_y(x) (the boundary between y and t is g = 0), from
x^0 = x_0 (restarts after the first: a random point at distance eps / 2), each iteration

    pi_k = {z : g(x^k) + <grad g(x^k), z - x^k> = 0}       the boundary linearised at x^k
    d_1 = P(x^k) - x^k,   d_2 = P(x_0) - x_0                P: the shortest step onto pi_k
                                                             that stays in [0, 1]^D
    alpha = min(||d_1|| / (||d_1|| + ||d_2||), alpha_max)
    x^{k+1} = clip_[0,1]((1 - alpha)(x^k + eta d_1) + alpha (x_0 + eta d_2))

and when x^{k+1} is misclassified it is kept if it is the closest to x_0 so far, and the
iterate steps back towards x_0: x^{k+1} <- x_0 + beta (x^{k+1} - x_0). The pull towards x_0
(alpha, and beta after every success) is what makes the point found close to the nearest
misclassified one, not just some point beyond the boundary; eta > 1 overshoots pi_k so that a
step lands on the far side. AutoAttack's settings: alpha_max = 0.1, eta = 1.05, beta = 0.9,
100 iterations, one restart (no random start), targets: the classes with the 2nd to 10th
highest clean logits, each run on the images not yet broken.

P is exact: for c = <w, p> - b >= 0 (else flip w), the shortest step d with <w, d> = -c and
0 <= p + d <= 1 moves each coordinate against sign(w_i) by m_i(lambda) = min(lambda u_i, s_i),
where s_i is its room to the box (p_i where w_i > 0, 1 - p_i where w_i < 0) and u_i = 1 for
L-inf (every free coordinate moves the same amount) or |w_i| for L2 (the KKT condition: along
w). lambda >= 0 solves h(lambda) = sum_i |w_i| m_i(lambda) = c; h is nondecreasing and
piecewise linear with breakpoints r_i = s_i / u_i, so its values at the sorted breakpoints are
cumulative sums and the root is read off one sort (the reference code bisects over the same
breakpoints). When h never reaches c the box cannot reach pi_k: every coordinate goes to its
bound, the box's point deepest towards pi_k (as the reference code does).

AutoAttack runs FAB with a given eps: an image counts as broken when FAB's smallest
misclassified point lies within eps. Since that point only gets closer with more iterations,
an image leaves the attack as soon as it has one within eps (``minimize=False``, the default:
the same verdict as the reference's, with no iterations spent on an image once it is broken
within eps); ``minimize=True`` runs every target and iteration on every image and reports the
smallest perturbation found.

Random draws (restarts after the first) are made for the whole batch and indexed, as in
:mod:`sslr.attacks.apgd`, so an image's attack depends on its position and the seed only.
The Jacobian rows FAB needs (grad g) come from the caller's ``grad_fn``, so FAB follows
whatever gradient source the caller set up (see :mod:`sslr.attacks.gradient`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sslr.attacks.apgd import AttackResult
from sslr.attacks.gradient import GradFn, Model, degenerate_gradients, eot_gradient
from sslr.attacks.threat import (
    check_batch,
    check_eps,
    check_positive,
    draw,
    lp_norm,
    make_generator,
    norm_name,
    normalized,
)


@dataclass
class FABResult(AttackResult):
    """:class:`~sslr.attacks.apgd.AttackResult` plus FAB's measure.

    Attributes:
        distance: (N,) the norm of the closest misclassified point found (0 for an image
            misclassified before the attack, inf where none was found or the image was not
            attacked). With ``minimize=False`` an image stops once it is <= eps, so there it is
            an upper bound on what FAB would reach.
    """

    distance: torch.Tensor | None = None


def _view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *[1] * (like.dim() - 1))


def boundary_step(p: torch.Tensor, w: torch.Tensor, c: torch.Tensor, norm: str) -> torch.Tensor:
    """The shortest step d (in ``norm``) from each row of ``p`` (n, D) in [0, 1] onto the
    hyperplane {z : <w, z> = <w, p> - c} (``w`` (n, D), ``c`` (n,)) with p + d in [0, 1]; where
    the box does not reach the hyperplane, the box's corner deepest towards it. See the module
    docstring for the solution."""
    w = w * _view(torch.where(c < 0, -1.0, 1.0).to(w.dtype), w)  # now <w, d> = -|c| is sought
    c = c.abs().unsqueeze(1)
    size = w.abs()
    room = torch.where(w > 0, p, 1.0 - p)  # how far each coordinate can move against sign(w)
    free = size > torch.finfo(w.dtype).tiny  # below: 1 / |w| overflows; such a w_i is 0
    u = torch.ones_like(size) if norm == "linf" else size
    rate = torch.where(free, size * u, 0.0)  # dh/dlambda of a coordinate not yet at its bound
    breaks = torch.where(free, room / torch.where(free, u, 1.0), 0.0)
    breaks, order = breaks.sort(dim=1)
    rate = rate.gather(1, order)
    # after[k]: the rate still free beyond breakpoint k (a suffix sum, so it ends at exactly 0)
    suffix = rate.flip(1).cumsum(1).flip(1)
    after = torch.cat([suffix[:, 1:], torch.zeros_like(suffix[:, :1])], dim=1)
    h = (rate * breaks).cumsum(1) + breaks * after  # h at each breakpoint, nondecreasing
    # the segment holding the root: after the k-th breakpoint (k = 0: before the first)
    k = (h <= c).sum(dim=1, keepdim=True)
    zero = torch.zeros_like(c)
    start = torch.cat([zero, breaks], dim=1).gather(1, k)
    h_start = torch.cat([zero, h], dim=1).gather(1, k)
    slope = torch.cat([suffix[:, :1], after], dim=1).gather(1, k)
    lam = start + (c - h_start) / torch.where(slope > 0, slope, 1.0)
    # beyond the last breakpoint every coordinate is at its bound (also: h never reaches c)
    last = breaks[:, -1:]
    lam = torch.where(slope > 0, lam.clamp(max=last), last).clamp_min(0.0)
    move = torch.where(free, torch.minimum(lam * u, room), 0.0)
    return -w.sign() * move


def _margin(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """g = f_t - f_y per image (N,): the side of the y|t boundary (> 0: past it)."""
    picked = logits.gather(1, torch.stack([target, y], dim=1))  # (N, 2)
    return picked[:, 0] - picked[:, 1]


def _run(model, x0, x_start, y, target, *, eps, norm, steps, alpha_max, eta, beta, grad_fn,
         samples, minimize):  # fmt: skip
    """One FAB-T run towards ``target`` on the images ``x0`` (n, ...) from ``x_start``.
    Returns (x_best, distance, queries, degenerate): the closest misclassified iterate of each
    image and its norm (x_0 and inf where none), forward passes, and whether the first
    gradient was degenerate. Without ``minimize`` an image leaves once it has one <= eps."""
    n, device = x0.shape[0], x0.device
    x_best = x0.clone()
    best = torch.full((n,), float("inf"), device=device, dtype=x0.dtype)
    queries = torch.zeros(n, dtype=torch.long, device=device)
    degenerate = torch.zeros(n, dtype=torch.bool, device=device)
    idx = torch.arange(n, device=device)
    xc, x, yc, tc = x0, x_start, y, target
    for k in range(steps):
        _, g, grad = grad_fn(model, x, lambda z, yc=yc, tc=tc: _margin(z, yc, tc))
        queries[idx] += samples
        if k == 0:
            degenerate = degenerate_gradients(grad)
        w = grad.masked_fill(~grad.isfinite(), 0.0).flatten(1)
        g = torch.where(g.isfinite(), g, 0.0)  # a non-finite margin: step towards nothing
        xf, x0f = x.flatten(1), xc.flatten(1)
        # pi_k = {z : <w, z> = <w, x> - g}: its offset is g at x and g + <w, x0 - x> at x0
        offsets = torch.cat([g, g + (w * (x0f - xf)).sum(dim=1)])
        m = xf.shape[0]
        d = boundary_step(torch.cat([xf, x0f]), torch.cat([w, w]), offsets, norm)
        size = lp_norm(d, norm).clamp_min(1e-8)
        alpha = (size[:m] / (size[:m] + size[m:])).clamp(0.0, alpha_max)
        d1, d2 = d[:m].view_as(x), d[m:].view_as(x)
        alpha = _view(alpha, x)
        x = ((1 - alpha) * (x + eta * d1) + alpha * (xc + eta * d2)).clamp(0.0, 1.0)
        with torch.no_grad():
            adv = model(x).argmax(dim=1) != yc
        queries[idx] += 1
        dist = lp_norm(x - xc, norm)
        closer = adv & (dist < best[idx])
        x_best[idx[closer]] = x[closer]
        best[idx[closer]] = dist[closer]
        # after a success step back towards x_0: the next iterates approach the boundary from
        # the near side, which is where the nearest point of it lies
        x = torch.where(_view(adv, x), xc + beta * (x - xc), x)
        if not minimize and k + 1 < steps:
            stay = best[idx] > eps  # an image with a point within eps is settled
            if not bool(stay.all()):
                if not bool(stay.any()):
                    break
                idx, xc, x, yc, tc = idx[stay], xc[stay], x[stay], yc[stay], tc[stay]
    return x_best, best, queries, degenerate


def _check(model, x, y, eps, norm, steps, restarts, n_target_classes, alpha_max, eta, beta,
           eot_samples, num_classes) -> tuple[str, float, int]:  # fmt: skip
    """Validate before any work; returns (norm, eps, number of classes)."""
    norm = norm_name(norm)
    eps = check_eps(eps)
    check_positive(steps, "steps", "FAB iterations per target")
    check_positive(restarts, "restarts", "starts per image and target")
    check_positive(n_target_classes, "n_target_classes", "target classes tried per image")
    check_positive(eot_samples, "eot_samples", "gradient draws per step")
    if not 0 <= float(alpha_max) <= 1:
        raise ValueError(
            f"alpha_max must lie in [0, 1] (FAB's largest pull to x_0), got {alpha_max}"
        )
    if not float(eta) >= 1:
        raise ValueError(f"eta must be >= 1 (FAB's overshoot of the boundary), got {eta}")
    if not 0 < float(beta) < 1:
        raise ValueError(f"beta must lie in (0, 1) (FAB's step back after a success), got {beta}")
    check_batch(x, y)
    if num_classes is None:
        with torch.no_grad():
            num_classes = int(model(x[:1]).shape[1])
    if num_classes < 3:
        raise ValueError(
            f"FAB-T is a targeted attack and needs at least 3 classes (the model has "
            f"{num_classes}): on a two-class task use an untargeted attack"
        )
    return norm, eps, int(num_classes)


def fab_targeted(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 100,
    n_target_classes: int = 9,
    restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    seed: int = 0,
    generator: torch.Generator | None = None,
    eot_samples: int = 1,
    grad_fn: GradFn | None = None,
    active: torch.Tensor | None = None,
    num_classes: int | None = None,
    minimize: bool = False,
) -> FABResult:
    """FAB-T on a batch ``x`` (N, C, H, W) in [0, 1] with labels ``y`` (N,), on its device.

    For each of the ``n_target_classes`` classes with the highest clean logits after the top
    one (clipped to classes - 1), in that order, ``restarts`` runs of ``steps`` FAB iterations
    (the first from x_0, the others from a random point at distance eps / 2) on the images not
    yet broken. An image is broken (success) when FAB's closest misclassified point lies within
    ``eps``; ``x_adv`` is that point, and the image itself where there is none. Images
    misclassified before the attack, and those outside ``active`` (N,) bool, are not attacked:
    returned as they are, the former with success True, the latter with success False and 0
    queries. ``minimize=True``: every target and iteration runs on every image (none leaves
    once within eps), and ``distance`` is the smallest perturbation found.

    Gradients of f_t - f_y: ``grad_fn(model, x, objective)`` (default: autograd through
    ``model``, averaged over ``eot_samples`` passes), inside whatever gradient context the
    caller entered; success is checked with one more forward pass per iteration (``queries``
    counts both). ``generator`` (or a new one seeded with ``seed``) draws the restarts' starts.
    Bad settings raise ValueError before any model call but one (the class count, when
    ``num_classes`` is not given).
    """
    norm, eps, num_classes = _check(
        model, x, y, eps, norm, steps, restarts, n_target_classes, alpha_max, eta, beta,
        eot_samples, num_classes,
    )  # fmt: skip
    generator = make_generator(seed, generator, x.device)
    samples = eot_samples if grad_fn is None else 1
    grad_fn = grad_fn or eot_gradient(eot_samples)
    run = dict(
        eps=eps, norm=norm, steps=int(steps), alpha_max=float(alpha_max), eta=float(eta),
        beta=float(beta), grad_fn=grad_fn, samples=samples, minimize=minimize,
    )  # fmt: skip
    x0 = x.detach()
    n, device = x0.shape[0], x0.device
    y = y.to(device)
    active = torch.ones(n, dtype=torch.bool, device=device) if active is None else active.bool()
    with torch.no_grad():
        logits = model(x0)
    correct = logits.argmax(dim=1) == y
    order = logits.argsort(dim=1, descending=True)
    targets = [order[:, r] for r in range(1, min(int(n_target_classes), num_classes - 1) + 1)]
    distance = torch.where(correct, float("inf"), 0.0).to(x0.dtype)
    x_best = x0.clone()
    queries = torch.zeros(n, dtype=torch.long, device=device)
    degenerate = torch.zeros(n, dtype=torch.bool, device=device)
    seen = torch.zeros(n, dtype=torch.bool, device=device)
    for target in targets:
        for restart in range(int(restarts)):
            # drawn whatever is left to attack, so the draws do not depend on other images
            noise = None
            if restart > 0:
                noise = draw(tuple(x0.shape), generator, x0, normal=norm == "l2")
            todo = active & correct if minimize else active & correct & (distance > eps)
            index = todo.nonzero().squeeze(1)
            if index.numel() == 0:
                continue
            xi = x0[index]
            start = xi
            if noise is not None:
                noise = noise[index]
                noise = 2 * noise - 1 if norm == "linf" else noise
                start = (xi + eps / 2 * normalized(noise, norm)).clamp(0.0, 1.0)
            out, dist, q, deg = _run(model, xi, start, y[index], target[index], **run)
            queries[index] += q
            degenerate[index] |= deg & ~seen[index]
            seen[index] = True
            closer = dist < distance[index]
            x_best[index[closer]] = out[closer]
            distance[index[closer]] = dist[closer]
    success = active & (distance <= eps)
    x_adv = torch.where(_view(success & correct, x0), x_best, x0)
    return FABResult(
        x_adv=x_adv, success=success, queries=queries, degenerate=degenerate, distance=distance
    )
