"""FAB-T: its projection is the shortest step onto a hyperplane inside the box, on a linear
classifier it finds the minimal perturbation, every example is legal, it is seeded and image by
image, its gradients come from the caller's gradient source, it is AutoAttack's third member,
and bad settings fail before any work."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from sslr.attacks import MEMBERS, autoattack, boundary_step, fab_targeted, input_gradient
from sslr.feedback import convert_model, exact_gradients
from sslr.robustness import AttackTarget, Norm, SuiteConfig, gradient_context
from sslr.robustness.attacks import bound_excess
from sslr.robustness.reference import _member_steps, members

EPS = {"linf": 12 / 255, "l2": 0.75}
DUAL = {"linf": 1, "l2": 2}  # the dual norm of the distance to a hyperplane


def _size(v: torch.Tensor, norm: str) -> torch.Tensor:
    flat = v.flatten(1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)


# --- the projection -----------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_boundary_step_is_the_shortest_step_onto_the_hyperplane_inside_the_box(norm):
    """Against a general solver (scipy, float64) on small random cases, some with coordinates
    on the box's faces, zero weights, or a hyperplane the box does not reach."""
    from scipy.optimize import linprog, minimize

    gen = torch.Generator().manual_seed(0)
    checked = 0
    for case in range(12):
        dim = 6 + case
        p = torch.rand(1, dim, generator=gen, dtype=torch.float64)
        p[0, : case % 3] = float(case % 2)  # on a face of the box
        w = torch.randn(1, dim, generator=gen, dtype=torch.float64)
        if case % 4:
            w[0, -(case % 4) :] = 0.0
        c = torch.randn(1, generator=gen, dtype=torch.float64) * (0.3 if case % 5 else 30.0)
        d = boundary_step(p, w, c, norm)[0].numpy()
        pn, wn, cn = p[0].numpy(), w[0].numpy(), float(c)
        assert (pn + d >= -1e-12).all() and (pn + d <= 1 + 1e-12).all()
        bounds = [(-a, 1 - a) for a in pn]
        ends = [(wi * lo, wi * hi) for wi, (lo, hi) in zip(wn, bounds, strict=True)]
        if not sum(map(min, ends)) - 1e-9 <= -cn <= sum(map(max, ends)) + 1e-9:
            continue  # the box does not reach the hyperplane (checked below)
        assert abs(wn @ d + cn) < 1e-9  # on the hyperplane
        if norm == "linf":  # min s subject to |d_i| <= s, <w, d> = -c, p + d in the box
            eye = np.eye(dim)
            a_ub = np.vstack([np.c_[eye, -np.ones(dim)], np.c_[-eye, -np.ones(dim)]])
            best = linprog(
                np.r_[np.zeros(dim), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * dim),
                A_eq=np.r_[wn, 0.0][None], b_eq=[-cn], bounds=[*bounds, (0, None)],
            ).x[-1]  # fmt: skip
            assert abs(np.abs(d).max() - best) < 1e-7
        else:
            best = minimize(
                lambda v: v @ v, np.zeros(dim), method="SLSQP", bounds=bounds,
                constraints=[{"type": "eq", "fun": lambda v, wn=wn, cn=cn: wn @ v + cn}],
                options={"ftol": 1e-15, "maxiter": 500},
            ).x  # fmt: skip
            assert abs(np.linalg.norm(d) - np.linalg.norm(best)) < 1e-6
        checked += 1
    assert checked >= 6
    # a hyperplane out of the box's reach: every coordinate at its bound, towards it
    p = torch.full((1, 4), 0.5, dtype=torch.float64)
    w = torch.tensor([[1.0, -2.0, 0.0, 3.0]], dtype=torch.float64)
    d = boundary_step(p, w, torch.tensor([100.0], dtype=torch.float64), norm)
    assert torch.equal(d, torch.tensor([[-0.5, 0.5, 0.0, -0.5]], dtype=torch.float64))


# --- (a) the minimal perturbation of a linear classifier -----------------------------------


@pytest.fixture(scope="module")
def linear():
    """f(x) = W x + b on flattened (3, 8, 8) inputs drawn in [0.4, 0.6], labelled by f: the
    minimal perturbations stay well inside [0, 1], so the box does not bind."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(3 * 8 * 8, 10)
    for p in layer.parameters():
        p.requires_grad_(False)
    x = 0.4 + 0.2 * torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = layer(x.flatten(1)).argmax(dim=1)
    return (lambda z: layer(z.flatten(1))), layer, x, y


@pytest.mark.parametrize("targets", [3, 9])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_on_a_linear_classifier_fab_finds_the_minimal_perturbation(linear, norm, targets):
    """The distance from x to the boundary between y and t is (f_y - f_t) / ||w_y - w_t||_q
    (q the dual norm: 1 for L-inf, 2 for L2). FAB-T (minimize) lands within 5% of the smallest
    over the targets it tries, and no closer than the smallest over every class (no point
    nearer than that is misclassified)."""
    model, layer, x, y = linear
    with torch.no_grad():
        f = model(x)
    w = layer.weight
    gap = f.gather(1, y.view(-1, 1)) - f  # (N, K) f_y - f_k
    scale = (w[y].unsqueeze(1) - w.unsqueeze(0)).norm(p=DUAL[norm], dim=2)  # (N, K)
    distance = (gap / scale).scatter(1, y.view(-1, 1), math.inf)  # (N, K), inf at y
    tried = f.argsort(dim=1, descending=True)[:, 1 : targets + 1]
    nearest_tried = distance.gather(1, tried).amin(dim=1)
    nearest = distance.amin(dim=1)
    eps = 10.0  # more than enough: every image is broken
    result = fab_targeted(
        model, x, y, eps=eps, norm=norm, steps=20, n_target_classes=targets, minimize=True
    )
    assert result.success.all()
    found = _size(result.x_adv - x, norm)
    assert torch.allclose(found, result.distance, rtol=1e-5)
    assert (found <= 1.05 * nearest_tried).all(), (found / nearest_tried).tolist()
    assert (found >= (1 - 1e-4) * nearest).all(), (found / nearest).tolist()
    assert (x.min() - 0.2 < result.x_adv.min()) and (result.x_adv.max() < x.max() + 0.2)
    with torch.no_grad():
        assert (model(result.x_adv).argmax(dim=1) != y).all()


def test_with_a_given_eps_an_image_stops_at_its_first_point_within_it(linear):
    """Without ``minimize`` FAB-T stops an image once it has a point within eps (AutoAttack's
    use): the verdict is the same, the point need not be the closest, and it costs less."""
    model, _, x, y = linear
    full = fab_targeted(model, x, y, eps=10.0, steps=20, n_target_classes=3, minimize=True)
    first = fab_targeted(model, x, y, eps=10.0, steps=20, n_target_classes=3)
    assert first.success.all()
    assert (first.distance >= full.distance * (1 - 1e-5)).all()
    assert (first.queries < full.queries).all()
    # at an eps between the two: the minimal points are within it, no image stops early
    eps = float(full.distance.max()) * 1.001
    both = fab_targeted(model, x, y, eps=eps, steps=20, n_target_classes=3)
    assert both.success.all() and (both.distance <= eps).all()


# --- (b) legal examples, the model's verdict ----------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_example_lies_in_the_eps_ball_and_the_unit_box(model, subset, norm):
    x, y = subset[0][:32], subset[1][:32]
    eps = EPS[norm]
    result = fab_targeted(model, x, y, eps=eps, norm=norm, steps=10, n_target_classes=3, restarts=2)
    assert bound_excess(x, result.x_adv, eps, Norm(norm)).item() <= 0  # the engine's check
    assert (_size(result.x_adv - x, norm) <= eps + 1e-6).all()
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    with torch.no_grad():
        clean = model(x).argmax(dim=1) == y
        wrong = model(result.x_adv).argmax(dim=1) != y
    assert 0.2 < result.success.float().mean().item() < 0.9  # it breaks some, not all
    # the success reported is the model's verdict on the example (up to float rounding of a
    # point FAB put right at the boundary, evaluated in another batch)
    assert (wrong == result.success).float().mean().item() >= 0.95
    assert torch.equal(result.x_adv[~result.success], x[~result.success])
    assert (result.distance[result.success] <= eps).all()
    assert (result.distance[~result.success] > eps).all()
    assert (result.distance[~clean] == 0).all() and result.success[~clean].all()
    assert (result.queries[~clean] == 0).all()


# --- (c) seeds, and each image on its own -------------------------------------------------


class Recording(torch.nn.Module):
    """The model, recording every input it is given (the attack's iterates)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.model(x)


def test_the_same_seed_gives_the_same_result_and_another_seed_another(model, subset):
    """Restarts after the first start at random points: the same seed (or a generator seeded
    alike) gives the same iterates and result, another seed other iterates."""
    x, y = subset[0][:24], subset[1][:24]
    run = dict(eps=EPS["linf"], steps=5, n_target_classes=2, restarts=2)
    a, b, c = Recording(model), Recording(model), Recording(model)
    ra = fab_targeted(a, x, y, seed=3, **run)
    rb = fab_targeted(b, x, y, generator=torch.Generator().manual_seed(3), **run)
    fab_targeted(c, x, y, seed=4, **run)
    assert torch.equal(ra.x_adv, rb.x_adv) and torch.equal(ra.success, rb.success)
    assert len(a.inputs) == len(b.inputs) > 2 * 5 * 2
    assert all(torch.equal(s, t) for s, t in zip(a.inputs, b.inputs, strict=True))
    assert not all(
        s.shape == t.shape and torch.equal(s, t) for s, t in zip(a.inputs, c.inputs, strict=False)
    )


def test_an_image_gets_the_same_attack_alone_as_in_the_batch(model, subset):
    """No draws with one restart: an image attacked alone gets what the batch gave it. With
    restarts, draws are made for the whole batch and indexed: attacking a subset (``active``)
    gives those images what the full batch gave them. Exact up to the float rounding of
    differently sized batches, hence the margins."""
    x, y = subset[0][:24], subset[1][:24]
    run = dict(eps=EPS["linf"], steps=10, n_target_classes=3)
    full = fab_targeted(model, x, y, **run)
    for i in (0, 5, 11, 17):
        alone = fab_targeted(model, x[i : i + 1], y[i : i + 1], **run)
        assert alone.success.item() == full.success[i].item()
        assert math.isclose(alone.distance.item(), full.distance[i].item(), rel_tol=1e-3)
        assert (alone.x_adv[0] - full.x_adv[i]).abs().max().item() < 1e-3
    restarts = fab_targeted(model, x, y, restarts=2, minimize=True, **run)
    active = torch.zeros(24, dtype=torch.bool)
    active[::3] = True
    part = fab_targeted(model, x, y, restarts=2, minimize=True, active=active, **run)
    agree = torch.isclose(part.distance[active], restarts.distance[active], rtol=1e-3)
    assert agree.float().mean().item() >= 0.9
    assert not part.success[~active].any() and (part.queries[~active] == 0).all()
    assert torch.equal(part.x_adv[~active], x[~active])


# --- gradient sources ----------------------------------------------------------------------


def _usf(model):
    net = convert_model(copy.deepcopy(model), "usf", seed=0).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def test_the_gradients_come_from_the_callers_gradient_source(model, subset):
    """The Jacobian rows are taken through autograd on the model callable, inside the caller's
    context: under ``exact`` a usf network is attacked as its BP twin, under ``rule`` not."""
    x, y = subset[0][:24], subset[1][:24]
    run = dict(eps=EPS["linf"], steps=10, n_target_classes=2, minimize=True)
    usf = _usf(model)
    plain = fab_targeted(model, x, y, **run)
    with exact_gradients(usf):
        same = fab_targeted(usf, x, y, **run)
    with gradient_context(usf, "rule"):
        other = fab_targeted(usf, x, y, **run)
    close = torch.isclose(same.distance, plain.distance, rtol=1e-3)
    assert close.float().mean().item() >= 0.9
    assert not torch.isclose(other.distance, plain.distance, rtol=1e-3).all()


def test_a_grad_fn_replaces_the_gradient_and_eot_averages_draws(model, subset):
    x, y = subset[0][:8], subset[1][:8]
    calls = []

    def zero(m, z, objective):
        calls.append(z.shape[0])
        logits, loss, grad = input_gradient(m, z, objective)
        return logits, loss, torch.zeros_like(grad)

    # a zero gradient (a masked model): FAB cannot move, nothing is broken, it is reported
    result = fab_targeted(model, x, y, eps=0.5, steps=4, n_target_classes=2, grad_fn=zero)
    attacked = model(x).argmax(dim=1) == y
    assert len(calls) == 2 * 4 and result.degenerate[attacked].all()
    assert not result.success[attacked].any()
    assert torch.equal(result.x_adv, x)
    # eot: each gradient is the mean of that many passes, plus one pass to check success
    passes = []

    def counting(z):
        passes.append(z.shape[0])
        return model(z)

    tiny = fab_targeted(
        counting, x, y, eps=0.1 / 255, steps=3, n_target_classes=2, eot_samples=3, num_classes=10
    )
    assert (tiny.queries[attacked] == 2 * 3 * (3 + 1)).all()
    assert len(passes) == 1 + 2 * 3 * (3 + 1)  # the clean pass, then per target and step
    assert not tiny.degenerate.any()


# --- (d) AutoAttack's third member ---------------------------------------------------------


def test_fab_t_is_autoattacks_third_member_with_its_settings():
    assert list(MEMBERS["standard"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert list(MEMBERS["fast"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    fn, settings = MEMBERS["standard"]["fab-t"]
    assert fn is fab_targeted and settings == {"steps": 100, "n_target_classes": 9}
    # the engine's rows: FAB-T's steps column is its iterations; left out below 3 classes
    for version, steps in (("standard", 100), ("fast", 25)):
        config = SuiteConfig(attacks=["autoattack"], autoattack_version=version)
        assert _member_steps(config, "autoattack/fab-t") == steps
    config = SuiteConfig(attacks=["autoattack"])
    assert list(members(config, 3)) == ["apgd-ce", "fab-t", "square"]
    assert list(members(config, 2)) == ["apgd-ce", "square"]


def test_autoattack_standard_is_at_most_every_member_and_the_ensemble_without_fab_t(model, subset):
    """AutoAttack's standard version on 16 images: its robust accuracy is at most every
    member's alone and at most the ensemble of the three others; FAB-T alone breaks images.
    Square runs 500 queries, not 5,000: on the images every member leaves those would take
    most of a minute here, and the claims do not depend on Square's budget (the three
    gradient members run AutoAttack's standard settings)."""
    x, y = subset[0][:16], subset[1][:16]
    eps, budget = 10 / 255, {"square": {"queries": 500}}
    cascade = autoattack(model, x, y, eps=eps, version="standard", budget=budget)
    alone = autoattack(model, x, y, eps=eps, version="standard", budget=budget, cascade=False)
    assert list(cascade.members) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    clean = cascade.clean.float().mean().item()
    robust = cascade.robust.float().mean().item()
    for name, member in alone.members.items():
        assert robust <= member.float().mean().item(), name
    without = alone.clean.clone()
    for name, member in alone.members.items():
        if name != "fab-t":
            without &= member
    assert (cascade.robust <= without).all()  # image by image, so also in accuracy
    fab = alone.members["fab-t"].float().mean().item()
    assert clean > 0.9 and fab < clean - 0.2, (clean, fab)
    assert bound_excess(x, cascade.x_adv, eps, Norm.LINF).item() <= 0
    with torch.no_grad():
        assert torch.equal(model(cascade.x_adv).argmax(dim=1) == y, cascade.robust)


# --- the engine: every gradient source and norm --------------------------------------------


def test_the_engine_runs_fab_t_under_every_gradient_source_and_norm(model, subset):
    from sslr.robustness.suite import classification_evaluation, run_cells

    x, y = subset[0][:8], subset[1][:8]
    brsf = convert_model(copy.deepcopy(model), "brsf", seed=0).eval()
    for p in brsf.parameters():
        p.requires_grad_(False)
    identity = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    target = AttackTarget(brsf, *identity, 10)
    surrogate = AttackTarget(model, *identity, 10)
    config = SuiteConfig(
        attacks=["fab-t"], norms=["linf", "l2"], eps=[0.0, 16 / 255], eps_l2=[0.0, 1.0],
        gradients=["rule", "exact", "eot", "transfer"], steps=4, target_classes=2,
        eot_samples=2, n_samples=8, batch_size=8,
    )  # fmt: skip
    evaluation = classification_evaluation(target, x, y, config, surrogate)
    rows = run_cells(evaluation, config, progress=lambda s: None).rows
    cells = {(r.norm, r.gradient) for r in rows if r.attack == "fab-t" and r.eps > 0}
    assert cells == {(n, g) for n in ("linf", "l2") for g in ("rule", "exact", "eot", "transfer")}
    assert all(r.steps == 4 for r in rows if r.attack == "fab-t" and r.eps > 0)
    clean = [r.accuracy for r in rows if r.attack == "fab-t" and r.eps == 0]
    attacked = [r.accuracy for r in rows if r.attack == "fab-t" and r.eps > 0]
    assert max(attacked) <= max(clean) and min(attacked) < max(clean)


# --- (e) bad settings -----------------------------------------------------------------------


class Counting:
    """A linear 'model' that counts its calls."""

    def __init__(self, classes: int = 10) -> None:
        self.calls = 0
        self.w = torch.randn(3 * 8 * 8, classes, generator=torch.Generator().manual_seed(0))

    def __call__(self, z):
        self.calls += 1
        return z.flatten(1) @ self.w


X = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 1, 0, 1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_classes=2), "needs at least 3 classes \\(the model has 2\\)"),
        (dict(norm="l1"), "Unknown norm"),
        (dict(eps=-0.1), "eps must be finite and >= 0"),
        (dict(steps=0), "steps must be a whole number >= 1"),
        (dict(restarts=0), "restarts must be a whole number >= 1"),
        (dict(n_target_classes=0), "n_target_classes must be"),
        (dict(eot_samples=0), "eot_samples must be"),
        (dict(alpha_max=1.5), "alpha_max must lie in"),
        (dict(eta=0.5), "eta must be >= 1"),
        (dict(beta=1.0), "beta must lie in"),
    ],
)
def test_bad_settings_raise_one_sentence_before_any_model_call(kwargs, message):
    model = Counting()
    settings = {"eps": 0.1, "num_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=message) as info:
        fab_targeted(model, X, Y, **settings)
    assert model.calls == 0
    assert "\n" not in str(info.value)


def test_a_two_class_model_is_refused_after_one_probing_call():
    model = Counting(classes=2)
    with pytest.raises(ValueError, match="FAB-T is a targeted attack") as info:
        fab_targeted(model, X, Y, eps=0.1)
    assert model.calls == 1 and "\n" not in str(info.value)
