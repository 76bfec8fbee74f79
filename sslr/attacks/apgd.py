"""APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks"): PGD with momentum and a step size that adapts per image, so
that no step size has to be tuned. Written here (rather than run through ART's
``AutoProjectedGradientDescent``, the reference the tests compare against) because ART's goes
through NumPy at every step and takes its gradients from its own classifier, while sslr's
gradient sources (rule, exact, eot, transfer) reach an attack through the model callable and
the autograd context it runs in (see :mod:`sslr.attacks.gradient`).

Per image, from a random start x^0 in the eps ball, with step eta = 2 eps:

    z = P(x^k + eta * dir(grad f(x^k)))                    dir: sign (L-inf), g/||g|| (L2)
    x^{k+1} = P(x^k + a (z - x^k) + (1 - a)(x^k - x^{k-1}))   a = 0.75 (1 at the first step)

At checkpoints the step size is checked, per image: eta is halved, and the iterate reset to
the best point found (its gradient with it), where at most rho = 0.75 of the steps since the
last checkpoint increased the loss, or where the step was not halved at the last checkpoint and
the best loss has not improved since. P projects onto the ball and [0, 1]. The checkpoints and
the checks follow the reference code (fra31/auto-attack, ``autopgd_base.py``) rather than the
paper's ceil(p_j N) formula, which places them one or more iterations later when N is not a
multiple of 50 (25 iterations: the reference checks at 5, 9, 12, 14, 15, 16, ..., 25; the
formula at 6, 11, 15, 18, 20, 22, 24, 25): the first after max(floor(0.22 N), 1) steps, each
next one max(floor(0.03 N), 1) steps sooner than the last, down to max(floor(0.06 N), 1).

Random draws are made for the whole batch and indexed, so each image's attack depends on its
own position and the seed only, not on which other images are still attacked: an ensemble that
attacks only the survivors gets, image by image, what each member would have got alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sslr.attacks.gradient import GradFn, Model, degenerate_gradients, eot_gradient
from sslr.attacks.losses import check_loss, loss_function
from sslr.attacks.threat import (
    check_batch,
    check_eps,
    check_positive,
    draw,
    make_generator,
    norm_name,
    normalized,
    project,
)

KEEP = ("adversarial", "max_loss")


@dataclass
class AttackResult:
    """What an attack returns for a batch of N images.

    Attributes:
        x_adv: (N, ...) examples, each inside its eps ball and [0, 1]; for ``keep=
            "adversarial"`` the first iterate that succeeded, else the highest-loss point.
        success: (N,) bool: the attacked model misclassified ``x_adv`` (reached the target,
            for an attack with explicit targets) when the attack evaluated it.
        queries: (N,) long: forward passes spent on each image (forward-backward for APGD).
        degenerate: (N,) bool: the image's first input gradient was all zero or not finite
            (a sign of masking); all False for query attacks.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    queries: torch.Tensor
    degenerate: torch.Tensor


def checkpoints(steps: int) -> list[int]:
    """The iterations w_1 < w_2 < ... <= steps after which APGD checks its step size, as the
    reference code places them (``n_iter_2``, ``size_decr``, ``n_iter_min``)."""
    first, shrink, shortest = (max(int(share * steps), 1) for share in (0.22, 0.03, 0.06))
    found, at, interval = [], 0, first
    while at + interval <= steps:
        at += interval
        found.append(at)
        interval = max(interval - shrink, shortest)
    return found


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    return grad.sign() if norm == "linf" else normalized(grad, norm)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, *[1] * (a.dim() - 1)), a, b)


def _random_start(x0: torch.Tensor, eps: float, norm: str, noise: torch.Tensor) -> torch.Tensor:
    """AutoAttack's start: L-inf: uniform noise rescaled so its largest entry is eps; L2: a
    Gaussian direction of length eps; clipped to [0, 1]."""
    if norm == "linf":
        noise = 2 * noise - 1
    return (x0 + eps * normalized(noise, norm)).clamp(0.0, 1.0)


def _run(
    model: Model,
    x0: torch.Tensor,
    x_start: torch.Tensor,
    objective,
    succeeded,
    *,
    eps: float,
    norm: str,
    steps: int,
    rho: float,
    momentum: float,
    grad_fn: GradFn,
    samples: int,
    keep: str,
):
    """One APGD run from ``x_start`` on the images ``x0`` (n, ...). Returns (x_out, success,
    queries, degenerate, loss_best); ``objective(logits, index)`` and ``succeeded(logits,
    index)`` take the positions ``index`` of the rows in ``x0`` (images that succeed leave the
    batch at the next checkpoint when ``keep == "adversarial"``)."""
    n, device = x0.shape[0], x0.device
    idx = torch.arange(n, device=device)
    out = x_start.clone()
    out_success = torch.zeros(n, dtype=torch.bool, device=device)
    queries = torch.zeros(n, dtype=torch.long, device=device)
    out_loss = torch.full((n,), float("-inf"), device=device)

    def evaluate(x, index):
        logits, loss, grad = grad_fn(model, x, lambda z: objective(z, index))
        queries[index] += samples
        return logits, loss, grad

    xc = x0
    x = x_start
    logits, f, grad = evaluate(x, idx)
    degenerate = degenerate_gradients(grad)
    grad = grad.masked_fill(~grad.isfinite(), 0.0)
    success = succeeded(logits, idx)
    x_adv = _where(success, x, xc)
    x_best, f_best, g_best, s_best = x.clone(), f.clone(), grad.clone(), success.clone()
    # As the reference: the first step's loss is compared with 0 (its loss history starts
    # zeroed), and no image is halved for "no improvement" at the first checkpoint.
    x_prev, f_prev = x.clone(), torch.zeros_like(f)
    eta = torch.full((n,), 2.0 * eps, device=device, dtype=x.dtype)
    increases = torch.zeros(n, device=device)
    f_best_check = f_best.clone()
    reduced_check = torch.ones(n, dtype=torch.bool, device=device)
    last_check = 0
    checks = set(checkpoints(steps))

    def store(mask=None):
        """Write the images of ``idx`` (those in ``mask``) into the outputs."""
        sel = slice(None) if mask is None else mask
        i = idx[sel]
        if keep == "adversarial":
            out[i] = torch.where(
                success[sel].view(-1, *[1] * (x.dim() - 1)), x_adv[sel], x_best[sel]
            )
            out_success[i] = success[sel]
        else:
            out[i] = x_best[sel]
            out_success[i] = s_best[sel]
        out_loss[i] = f_best[sel]

    for k in range(steps):
        a = 1.0 if k == 0 else momentum
        step = eta.view(-1, *[1] * (x.dim() - 1))
        z = project(xc, x + step * _direction(grad, norm), eps, norm)
        x_new = project(xc, x + a * (z - x) + (1 - a) * (x - x_prev), eps, norm)
        x_prev, x = x, x_new
        logits, f, grad = evaluate(x, idx)
        grad = grad.masked_fill(~grad.isfinite(), 0.0)
        now = succeeded(logits, idx)
        newly = now & ~success
        x_adv = _where(newly, x, x_adv)
        success = success | now
        increases += (f > f_prev).float()
        f_prev = f
        better = f > f_best
        x_best, g_best = _where(better, x, x_best), _where(better, grad, g_best)
        f_best, s_best = torch.where(better, f, f_best), torch.where(better, now, s_best)
        if k + 1 not in checks:
            continue
        reduce = (increases <= rho * (k + 1 - last_check)) | (
            ~reduced_check & (f_best <= f_best_check)
        )
        eta = torch.where(reduce, eta / 2, eta)
        # The momentum term and the loss history go on from the iterate before the reset.
        x, grad = _where(reduce, x_best, x), _where(reduce, g_best, grad)
        increases.zero_()
        f_best_check, reduced_check, last_check = f_best.clone(), reduce, k + 1
        if keep == "adversarial" and k + 1 < steps:
            done = success
            if bool(done.all()):
                break
            if bool(done.any()):  # the broken images leave the batch: they are finished
                store(done)
                stay = ~done
                idx, xc, x, x_prev, grad, x_adv = (
                    t[stay] for t in (idx, xc, x, x_prev, grad, x_adv)
                )
                x_best, f_best, g_best, s_best, f_prev, eta = (
                    t[stay] for t in (x_best, f_best, g_best, s_best, f_prev, eta)
                )
                increases, f_best_check, reduced_check, success = (
                    t[stay] for t in (increases, f_best_check, reduced_check, success)
                )
    store()
    return out, out_success, queries, degenerate, out_loss


def _settings(
    model, x, y, eps, norm, loss, steps, restarts, rho, momentum, seed, generator, eot_samples,
    grad_fn, keep, targeted, num_classes,
):  # fmt: skip
    """Validate before any work; returns (loss name, number of classes, the run's settings for
    :func:`_attack`). Positional: both public attacks pass their whole signature through."""
    norm = norm_name(norm)
    eps = check_eps(eps)
    check_positive(steps, "steps", "APGD iterations")
    check_positive(restarts, "restarts", "random starts per image")
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {', '.join(KEEP)}, got {keep!r}")
    check_batch(x, y)
    if num_classes is None:
        with torch.no_grad():
            num_classes = int(model(x[:1]).shape[1])
    if targeted and num_classes < 3:
        raise ValueError(
            f"A targeted attack needs at least 3 classes (the model has {num_classes}): on a "
            "two-class task the untargeted attack is the same attack"
        )
    check_positive(eot_samples, "eot_samples", "gradient draws per step")
    run = dict(
        eps=eps, norm=norm, steps=steps, rho=rho, momentum=momentum, restarts=restarts,
        generator=make_generator(seed, generator, x.device),
        grad_fn=grad_fn or eot_gradient(eot_samples),
        samples=eot_samples if grad_fn is None else 1,
    )  # fmt: skip
    return check_loss(loss, num_classes, targeted), num_classes, run


def _clean_logits(model: Model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def apgd(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    loss: str = "ce",
    steps: int = 100,
    restarts: int = 1,
    target: torch.Tensor | None = None,
    rho: float = 0.75,
    momentum: float = 0.75,
    seed: int = 0,
    generator: torch.Generator | None = None,
    eot_samples: int = 1,
    grad_fn: GradFn | None = None,
    active: torch.Tensor | None = None,
    keep: str = "adversarial",
    num_classes: int | None = None,
) -> AttackResult:
    """APGD on a batch ``x`` (N, C, H, W) in [0, 1] with labels ``y`` (N,), on its device.

    Untargeted (``target=None``): success is a misclassification; with ``target`` (N,) class
    indices: reaching them. ``loss``: ``ce``, ``dlr`` or ``margin`` (:mod:`sslr.attacks.losses`;
    targeted forms when ``target`` is given). ``restarts`` random starts per image, each only on
    the images not yet broken. Images misclassified (at the target) before the attack, and those
    outside ``active`` (N,) bool, are not attacked: returned as they are, the former with
    success True, the latter with success False and 0 queries.

    Gradients: ``grad_fn(model, x, objective)`` (default: autograd through ``model``, averaged
    over ``eot_samples`` passes), inside whatever gradient context the caller entered.
    ``generator`` (or a new one seeded with ``seed``) draws the random starts: the same seed
    gives the same result. ``keep="max_loss"`` returns the highest-loss points instead of the
    first successes (for transfer attacks, whose success on the surrogate means nothing).
    Bad settings raise ValueError before any model call but one (the class count, when
    ``num_classes`` is not given).
    """
    targeted = target is not None
    loss, num_classes, run = _settings(
        model, x, y, eps, norm, loss, steps, restarts, rho, momentum, seed, generator,
        eot_samples, grad_fn, keep, targeted, num_classes,
    )  # fmt: skip
    return _attack(
        model, x, y, [target], loss_function(loss, targeted), run, active, keep, targeted
    )


def apgd_targeted(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    loss: str = "dlr",
    steps: int = 100,
    restarts: int = 1,
    n_target_classes: int = 9,
    rho: float = 0.75,
    momentum: float = 0.75,
    seed: int = 0,
    generator: torch.Generator | None = None,
    eot_samples: int = 1,
    grad_fn: GradFn | None = None,
    active: torch.Tensor | None = None,
    keep: str = "adversarial",
    num_classes: int | None = None,
) -> AttackResult:
    """AutoAttack's APGD-T: for each of the ``n_target_classes`` classes with the highest clean
    logits after the top one (clipped to classes - 1), in that order, ``restarts`` targeted runs
    (targeted DLR loss by default) on the images not yet misclassified. Success is any
    misclassification: the targets are a search strategy for untargeted robustness. Other
    arguments as :func:`apgd`."""
    check_positive(n_target_classes, "n_target_classes", "target classes tried per image")
    loss, num_classes, run = _settings(
        model, x, y, eps, norm, loss, steps, restarts, rho, momentum, seed, generator,
        eot_samples, grad_fn, keep, True, num_classes,
    )  # fmt: skip
    n_targets = min(int(n_target_classes), num_classes - 1)
    order = _clean_logits(model, x).argsort(dim=1, descending=True)  # (N, K)
    targets = [order[:, r] for r in range(1, n_targets + 1)]
    return _attack(model, x, y, targets, loss_function(loss, True), run, active, keep, False)


def _attack(model, x, y, targets, fn, run, active, keep, explicit) -> AttackResult:
    """Every target (None: untargeted) and restart in turn, each on the images left; ``run``
    from :func:`_settings`. ``explicit``: success is reaching the (single) target."""
    run = dict(run)
    restarts, generator = run.pop("restarts"), run.pop("generator")
    x0 = x.detach()
    n, device = x0.shape[0], x0.device
    y = y.to(device)
    active = torch.ones(n, dtype=torch.bool, device=device) if active is None else active.bool()
    clean = _clean_logits(model, x0).argmax(dim=1)
    goal = targets[0] if explicit else None
    clean_success = ((clean == goal) if explicit else (clean != y)) & active
    success = clean_success.clone()
    x_adv = x0.clone()
    queries = torch.zeros(n, dtype=torch.long, device=device)
    degenerate = torch.zeros(n, dtype=torch.bool, device=device)
    seen = torch.zeros(n, dtype=torch.bool, device=device)
    best_loss = torch.full((n,), float("-inf"), device=device)
    for target in targets:
        for _ in range(restarts):
            noise = draw(tuple(x0.shape), generator, x0, normal=run["norm"] == "l2")
            todo = active & ~(success if keep == "adversarial" else clean_success)
            index = todo.nonzero().squeeze(1)
            if index.numel() == 0:
                continue
            yi, ti = y[index], None if target is None else target.to(device)[index]

            def objective(logits, rows, yi=yi, ti=ti):
                return fn(logits, yi[rows], None if ti is None else ti[rows])

            def succeeded(logits, rows, yi=yi, ti=ti):
                pred = logits.argmax(dim=1)
                return pred == ti[rows] if explicit else pred != yi[rows]

            xi = x0[index]
            start = _random_start(xi, run["eps"], run["norm"], noise[index])
            out, ok, q, deg, loss = _run(model, xi, start, objective, succeeded, keep=keep, **run)
            queries[index] += q
            degenerate[index] |= deg & ~seen[index]
            seen[index] = True
            if keep == "adversarial":
                better = ok | (loss > best_loss[index])
                x_adv[index] = _where(better, out, x_adv[index])
                best_loss[index] = torch.where(better, loss, best_loss[index])
                success[index] = ok
            else:
                better = loss > best_loss[index]
                x_adv[index] = _where(better, out, x_adv[index])
                best_loss[index] = torch.where(better, loss, best_loss[index])
                success[index] = torch.where(better, ok, success[index])
    return AttackResult(x_adv=x_adv, success=success, queries=queries, degenerate=degenerate)
