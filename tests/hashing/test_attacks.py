"""Hashing attacks on the trained Digits hashing model: clean at eps 0, mAP falling with eps
(exact gradients), targeted attacks raising t-mAP, legal perturbations, untouched models,
eager validation, and the CSV/PNG outputs."""

from __future__ import annotations

import copy
import csv
import warnings

import pytest
import torch

from sslr.feedback import set_rule
from sslr.metrics import mean_average_precision
from sslr.results import COLUMNS
from sslr.robustness import (
    AttackBoundsError,
    GradientSource,
    GradientSourceClassifier,
    Norm,
    SuiteConfig,
    attack_mode,
    run_suite,
)
from sslr.robustness.attacks import pgd
from sslr.robustness.hashing import (
    CodeLoss,
    HashingTarget,
    anchor_codes,
    draw_targets,
    encode_loader,
    select_queries,
)
from sslr.robustness.registry import get_attack


def code_provider(target, shape, attack, source):
    """The engine's gradient provider on a hashing target with ``attack``'s code objective."""
    return GradientSourceClassifier(
        target.attack_target, shape, source, loss=CodeLoss(attack), labels="codes"
    )


# Wider than the default sweep (0, 2, 4, 8)/255: this small Digits model at 16 px barely moves
# below 4/255, where the untargeted objective first flips its least confident bits (which can
# even help retrieval a little).
EPS = [0.0, 4 / 255, 8 / 255, 16 / 255]


def snapshot(module: torch.nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in module.state_dict().items()},
        "training": [m.training for m in module.modules()],
        "requires_grad": [p.requires_grad for p in module.parameters()],
        "grad": [p.grad for p in module.parameters()],
    }


@pytest.fixture(scope="module")
def suite(trained, tmp_path_factory):
    """The suite on 32 queries: pgd (untargeted) and p2p (targeted) with exact gradients,
    5 steps of 2.5 * eps / 5, no random start; the model's state before and after, and the
    output folder."""
    task = trained.model
    before = snapshot(task)
    out = tmp_path_factory.mktemp("attack")
    config = SuiteConfig(
        attacks=["pgd", "p2p"], gradients=["exact"], eps=EPS, steps=5, random_start=False,
        n_samples=32, batch_size=64,
    )  # fmt: skip
    rows = run_suite(task, trained.datamodule, config, out_dir=out)
    return rows, config, before, snapshot(task), out


def values(rows, attack: str, gradient: str = "exact") -> list[float]:
    picked = sorted(
        (r.eps, r.accuracy) for r in rows if (r.attack, r.gradient) == (attack, gradient)
    )
    return [v for _, v in picked]


def test_eps_zero_is_the_clean_map_of_the_same_queries(trained, suite):
    rows, config, *_ = suite
    target = HashingTarget.from_task(trained.model)
    query_loader, db_loader = trained.datamodule.test_dataloader()
    x, labels = select_queries(query_loader, config.n_samples, config.seed)
    db_codes, db_labels = encode_loader(target, db_loader)
    clean = mean_average_precision(target.encode(x), db_codes, labels, db_labels)
    assert values(rows, "pgd")[0] == clean
    assert all(r.n == 32 for r in rows)


def test_untargeted_map_falls_with_eps(suite):
    maps = values(suite[0], "pgd")
    assert len(maps) == len(EPS)
    assert all(b <= a + 1e-9 for a, b in zip(maps, maps[1:], strict=False)), maps
    assert maps[-1] < maps[0] - 0.2, maps  # clearly lower at the largest eps


def test_targeted_attack_raises_t_map(suite):
    t_maps = values(suite[0], "p2p")
    assert t_maps[0] < 0.3, t_maps  # the clean queries rarely retrieve the target label
    assert t_maps[-1] > t_maps[0] + 0.1, t_maps
    assert {r.metric for r in suite[0] if r.attack == "p2p"} == {"t-mAP"}


def test_model_state_is_restored(suite):
    _, _, before, after, _ = suite
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert all(a is b for a, b in zip(before["grad"], after["grad"], strict=True))
    assert before["state"].keys() == after["state"].keys()
    assert all(torch.equal(before["state"][k], after["state"][k]) for k in before["state"])


def test_csv_has_the_columns_plus_metric_and_png_exists(suite):
    rows, *_, out = suite
    with open(out / "robustness.csv", newline="") as f:
        reader = csv.DictReader(f)
        records = list(reader)
    assert tuple(reader.fieldnames) == COLUMNS
    assert COLUMNS[7:] == ("metric", "ci_low", "ci_high") and len(COLUMNS) == 10
    for r in records:  # mAP's interval: a bootstrap over the queries, around the value
        assert float(r["ci_low"]) <= float(r["accuracy"]) <= float(r["ci_high"])
    assert len(records) == len(rows) == 2 * len(EPS) + 2 * len(EPS)  # + worst per metric
    assert {r["metric"] for r in records} == {"mAP", "t-mAP"}
    assert {r["gradient"] for r in records if r["attack"] != "worst"} == {"exact"}
    assert {r["gradient"] for r in records if r["attack"] == "worst"} == {"any"}
    png = out / "robustness.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"


def test_worst_case_is_each_querys_worst_over_every_cell(trained):
    """``worst`` rows: per query, the lowest AP over the untargeted cells (mAP) and the
    highest t-AP over the targeted ones, averaged; so at most every untargeted cell's mAP and
    at least every targeted cell's t-mAP, and at eps 0 the clean value."""
    from sslr.metrics import average_precisions
    from sslr.robustness.suite import run_cells, suite_evaluation

    config = SuiteConfig(
        attacks=["pgd", "hag", "p2p", "dhta"], gradients=["exact"], eps=[0.0, 8 / 255],
        steps=2, n_samples=24, batch_size=24,
    )  # fmt: skip
    target = HashingTarget.from_task(trained.model)
    evaluation = suite_evaluation(target, trained.datamodule, config, None)
    with attack_mode(target.network, warn_train_mode=False):
        result = run_cells(evaluation, config, warn_train_mode=False)
    db_codes, db_labels = evaluation.database
    for metric, attacks, pick in (("mAP", ("pgd", "hag"), min), ("t-mAP", ("p2p", "dhta"), max)):
        for eps in config.eps:
            (worst,) = [
                r for r in result.rows
                if (r.attack, r.metric, r.eps) == ("worst", metric, eps)
            ]  # fmt: skip
            assert (worst.gradient, worst.n, worst.steps) == ("any", 24, 0)
            cells = {
                r.attack: r.accuracy for r in result.rows if r.attack in attacks and r.eps == eps
            }
            assert set(cells) == set(attacks)
            # The per-query combination from the cells' codes, by hand.
            per_cell = []
            for attack in attacks:
                codes = result.per_image[(attack, "linf", "exact", eps)]
                relevance = evaluation.begin(get_attack(attack), config)["relevance"]
                per_cell.append(average_precisions(codes, db_codes, relevance, db_labels))
            by_hand = torch.stack(per_cell)
            by_hand = by_hand.amin(0) if pick is min else by_hand.amax(0)
            assert worst.accuracy == pytest.approx(float(by_hand.mean()), abs=1e-12)
            bound = pick(cells.values())
            assert (
                (worst.accuracy <= bound + 1e-12)
                if pick is min
                else (worst.accuracy >= bound - 1e-12)
            )
            if eps == 0.0:  # every cell holds the clean codes
                assert worst.accuracy == pytest.approx(cells[attacks[0]], abs=1e-12)


@pytest.mark.parametrize("norm,eps", [(Norm.LINF, 4 / 255), (Norm.L2, 0.5)])
def test_perturbations_stay_in_the_ball_and_the_box(trained, norm, eps):
    target = HashingTarget.from_task(trained.model)
    x = trained.datamodule.split("query")[0][:8]
    goal = target.encode(x)
    with attack_mode(target.network):
        with code_provider(target, x.shape[1:], "hag", GradientSource.EXACT) as clf:
            gen = torch.Generator().manual_seed(0)
            step = 2 / 255 if norm is Norm.LINF else 0.25
            adv = pgd(
                clf,
                x,
                goal,
                norm=norm,
                eps=eps,
                step=step,
                steps=3,
                start_random=True,
                generator=gen,
            )
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm is Norm.LINF else delta.norm(dim=1)
    assert bool((size <= eps + 1e-6).all()) and bool((size > 0).any())
    assert adv.min() >= 0 and adv.max() <= 1


def test_an_illegal_example_is_caught_at_runtime(trained, monkeypatch):
    monkeypatch.setattr(
        "sslr.robustness.attacks.pgd", lambda clf, x, *a, **k: (x + 0.1).clamp(0, 1)
    )
    config = SuiteConfig(attacks=["pgd"], gradients=["exact"], eps=[2 / 255], steps=1, n_samples=4)
    with pytest.raises(AttackBoundsError, match="outside"):
        run_suite(trained.model, trained.datamodule, config)


def test_art_gradient_is_the_gradient_of_the_objective(trained):
    # ART's loss_gradient with the custom loss and nb_classes = K equals autograd on pixels.
    target = HashingTarget.from_task(trained.model)
    x = trained.datamodule.split("query")[0][:4]
    goal = target.encode(x)
    with attack_mode(target.network):
        with code_provider(target, x.shape[1:], "pgd", GradientSource.EXACT) as clf:
            art = clf.loss_gradient(x.clone(), goal)
        xr = x.clone().requires_grad_(True)
        u = target.codes(target.attack_target.normalize(xr))
        (expected,) = torch.autograd.grad(CodeLoss("pgd")(u, goal), xr)
    assert art.shape == x.shape and art.abs().sum() > 0
    torch.testing.assert_close(art, expected, rtol=1e-4, atol=1e-7)


def test_hag_weights_drop_bits_flipped_past_the_margin():
    b = torch.ones(1, 4)
    u = torch.tensor([[0.9, 0.2, -0.4, -0.8]], requires_grad=True)  # |u - b| = .1 .8 1.4 1.8
    (grad,) = torch.autograd.grad(CodeLoss("hag", margin=0.5)(u, b), u)
    assert torch.equal(grad != 0, torch.tensor([[True, True, True, False]]))
    (plain,) = torch.autograd.grad(CodeLoss("pgd")(u, b), u)
    assert torch.allclose(plain, torch.full((1, 4), -0.25))


def test_anchor_is_the_componentwise_majority():
    codes = torch.tensor([[[1.0, -1, 1], [1, 1, -1], [-1, 1, 1]]])  # (1, n_t=3, K=3)
    assert torch.equal(anchor_codes(codes), torch.tensor([[1.0, 1, 1]]))
    assert torch.equal(anchor_codes(codes[:, :1]), codes[:, 0])  # P2P: the code itself


def test_targets_avoid_the_query_label_and_anchors_carry_it():
    db = torch.nn.functional.one_hot(torch.arange(40) % 4, 4).float()
    queries = db[:6]
    labels, index = draw_targets(queries, db, n_anchors=3, seed=1)
    assert ((labels * queries).sum(1) == 0).all()
    assert ((db[index] * labels[:, None]).sum(-1) > 0).all()  # every anchor has the target label
    again = draw_targets(queries, db, n_anchors=3, seed=1)
    assert torch.equal(again[0], labels) and torch.equal(again[1], index)


def test_transfer_from_a_surrogate_and_eot_on_brsf(trained):
    # The target: the trained weights switched to brsf; the surrogate: the bp model itself.
    # eot runs on brsf and is skipped, with a warning, on bp.
    task = trained.model
    network = copy.deepcopy(task.network)
    set_rule(network, "brsf")
    target = HashingTarget(network, task.mean, task.std, bits=16)
    config = SuiteConfig(
        attacks=["pgd"], gradients=["rule", "eot", "transfer"], eps=[0, 8 / 255], steps=2,
        step_size=1.0, random_start=False, n_samples=8, eot_samples=2,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = run_suite(target, trained.datamodule, config, surrogate=task)
    assert not [w for w in caught if "skipped" in str(w.message)]
    by_source = {(r.gradient, r.eps): r.accuracy for r in rows if r.attack != "worst"}
    assert set(by_source) == {(g, e) for g in ("rule", "eot", "transfer") for e in (0, 8 / 255)}
    assert by_source[("transfer", 8 / 255)] < by_source[("transfer", 0.0)]

    bp_only_eot = SuiteConfig(attacks=["pgd"], gradients=["eot"], eps=[0], n_samples=4)
    with pytest.warns(UserWarning, match="eot' skipped"):
        assert run_suite(task, trained.datamodule, bp_only_eot) == []


BAD = {
    "negative eps": ({"eps": [0, -2 / 255]}, "eps must be finite and >= 0"),
    "eps in /255 units": ({"eps": [8]}, "not in /255 units"),
    "unknown attack": ({"attacks": ["pgd", "pgdd"]}, "Unknown attack 'pgdd'"),
    "zero steps": ({"steps": 0}, "steps must be a positive integer"),
    "zero step": ({"step_size": 0.0}, "step_size must be > 0"),
    "no queries": ({"n_samples": 0}, "n_samples must be a positive integer"),
    "gradient none": ({"gradients": ["none"]}, "Gradient source 'none' cannot be chosen"),
    "negative margin": ({"hag_margin": -1.0}, "hag_margin must be a finite number >= 0"),
    "zero anchors": ({"dhta_anchors": 0}, "dhta_anchors must be a positive integer"),
    "empty attacks": ({"attacks": []}, "attacks is empty"),
    "missing surrogate": ({"surrogate_ckpt": "nowhere.ckpt"}, "does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_settings_fail_eagerly_with_one_clear_error(case):
    kwargs, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        SuiteConfig(**kwargs)


def test_transfer_without_a_surrogate_fails_before_any_work(trained):
    config = SuiteConfig(gradients=["transfer"])
    with pytest.raises(ValueError, match="needs a surrogate"):
        run_suite(trained.model, object(), config)  # the data is never touched


def test_a_classification_attack_on_a_hashing_model_fails_before_any_work(trained):
    config = SuiteConfig(attacks=["square"], gradients=[])
    with pytest.raises(ValueError, match="applies to classification models, not to hashing"):
        run_suite(trained.model, object(), config)  # the data is never touched


def test_the_robustness_callback_evaluates_a_hashing_model(trained, tmp_path):
    """RobustnessEvaluation serves hashing runs as classification ones: mAP / t-mAP rows of
    the split's queries against its database, files and logged metrics."""
    from types import SimpleNamespace

    from sslr.callbacks import RobustnessEvaluation

    config = SuiteConfig(
        attacks=["pgd", "p2p"], gradients=["exact"], eps=[0, 8 / 255], steps=3, n_samples=8
    )
    callback = RobustnessEvaluation(suite=config)
    logged = []
    logger = SimpleNamespace(log_metrics=lambda m, step: logged.append(m), save=lambda: None)
    trainer = SimpleNamespace(
        is_global_zero=True, global_rank=0, world_size=1, sanity_checking=False, global_step=5,
        log_dir=str(tmp_path),
        default_root_dir=str(tmp_path), loggers=[logger],
    )  # fmt: skip
    callback._run(trainer, trained.model, "test", trained.datamodule.test_dataloader())
    ((stage, step, rows),) = callback.results
    assert (stage, step) == ("test", 5)
    assert {(r.attack, r.metric) for r in rows} == {
        ("pgd", "mAP"), ("p2p", "t-mAP"), ("worst", "mAP"), ("worst", "t-mAP")
    }  # fmt: skip
    assert (tmp_path / "robustness" / "test_step=5.csv").is_file()
    assert logged and all(0.0 <= v <= 1.0 for v in logged[0].values())
