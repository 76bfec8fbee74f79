"""Gradient sources on converted networks: for bp, rule and exact coincide; for the
sign-symmetry rules they differ; brsf draws a fresh B at every step and eot averages draws;
transfer crafts on a surrogate."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from sslr.feedback import convert_model
from sslr.robustness import (
    GradientSourceClassifier,
    Norm,
    SuiteConfig,
    accuracies,
    attack_mode,
    evaluate,
    robust_accuracy,
    run_suite,
)
from sslr.robustness.attacks import pgd

CONFIG = dict(
    attacks=["fgsm", "pgd"],
    eps=[0.0, 4 / 255, 16 / 255, 32 / 255],
    gradients=["rule", "exact"],
    steps=5,
    n_samples=64,
)


@pytest.fixture
def converted(trained_cnn, make_target):
    """rule -> a target whose network is a converted copy of the trained one."""
    return lambda rule: make_target(convert_model(copy.deepcopy(trained_cnn), rule, seed=0).eval())


def _adversarial(target, x, y, source, steps=5, eps=16 / 255):
    y1 = F.one_hot(y, 10).float()
    clf = GradientSourceClassifier(target, x.shape[1:], source=source)
    with attack_mode(target.network), clf:
        gen = torch.Generator().manual_seed(0)
        return pgd(
            clf, x, y1, norm=Norm.LINF, eps=eps, step=eps / 4, steps=steps, start_random=True,
            generator=gen,
        )  # fmt: skip


def _gradients(target, x, y, source, calls=2, eot_samples=1):
    """``calls`` successive gradients at the same x within one attack context."""
    y1 = F.one_hot(y, 10).float()
    clf = GradientSourceClassifier(target, x.shape[1:], source=source, eot_samples=eot_samples)
    with attack_mode(target.network), clf:
        return [clf.loss_gradient(x, y1) for _ in range(calls)]


def _cos(a, b):
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def test_bp_rule_and_exact_coincide(converted, test_subset):
    target = converted("bp")
    x, y = test_subset
    assert torch.equal(_adversarial(target, x, y, "rule"), _adversarial(target, x, y, "exact"))
    rows = evaluate(target, x, y, SuiteConfig(**CONFIG))
    for attack in ("fgsm", "pgd"):
        rule = accuracies(rows, attack=attack, gradient="rule")
        assert rule == accuracies(rows, attack=attack, gradient="exact")
        assert rule[-1] <= 0.1  # and the attack works


@pytest.mark.parametrize("rule", ["usf", "frsf"])
def test_sign_symmetry_rule_gradient_differs_from_exact(converted, test_subset, rule):
    target = converted(rule)
    x, y = test_subset
    g_rule, _ = _gradients(target, x, y, "rule")
    g_exact, _ = _gradients(target, x, y, "exact")
    assert 0.2 < _cos(g_rule, g_exact) < 0.95  # aligned with the true gradient, not equal
    assert not torch.equal(_adversarial(target, x, y, "rule"), _adversarial(target, x, y, "exact"))
    rows = evaluate(target, x, y, SuiteConfig(**CONFIG))
    rule_acc = accuracies(rows, attack="pgd", gradient="rule")
    exact_acc = accuracies(rows, attack="pgd", gradient="exact")
    assert rule_acc != exact_acc
    assert rule_acc[0] == exact_acc[0]  # eps = 0: the same clean accuracy
    # the pseudo-gradient is the weaker attack: the gap a rule-only evaluation would hide
    assert rule_acc[2] > exact_acc[2]


def test_brsf_draws_fresh_feedback_every_step_and_eot_averages(converted, test_subset):
    target = converted("brsf")
    x, y = test_subset
    r1, r2 = _gradients(target, x, y, "rule")
    e1, e2 = _gradients(target, x, y, "exact")
    assert torch.equal(e1, e2)  # exact: deterministic
    assert not torch.equal(r1, r2)  # rule: a new B at each call within one attack
    assert torch.equal(_gradients(target, x, y, "rule")[0], r1)  # reproducible per attack
    v1, v2 = _gradients(target, x, y, "eot", eot_samples=16)
    assert _cos(v1, v2) > _cos(r1, r2) + 0.2  # the mean over draws varies much less
    assert _cos(v1, e1) > _cos(r1, e1)  # and is closer to the true gradient

    target.network.train()(torch.rand(2, 3, 16, 16))  # one training forward: draw counters 1
    target.network.eval()
    config = SuiteConfig(
        attacks=["pgd"],
        eps=[0.0, 16 / 255],
        gradients=["rule", "exact", "eot"],
        eot_samples=4,
        steps=3,
        n_samples=32,
    )
    rows = evaluate(target, x, y, config)
    assert {r.gradient for r in rows if r.attack != "worst"} == {"rule", "exact", "eot"}
    assert evaluate(target, x, y, config) == rows  # seeded: the same numbers again
    draws = [int(b) for n, b in target.network.named_buffers() if n.endswith("feedback_draws")]
    assert draws and set(draws) == {1}  # attacks leave the training sequence of B alone


def test_eot_is_skipped_with_a_warning_for_deterministic_rules(converted, test_subset):
    target = converted("usf")
    config = SuiteConfig(**{**CONFIG, "gradients": ["rule", "eot"], "eps": [0.0, 8 / 255]})
    with pytest.warns(UserWarning, match="'eot' skipped"):
        rows = evaluate(target, *test_subset, config)
    assert {r.gradient for r in rows if r.attack != "worst"} == {"rule"}


def test_the_default_gradients_skip_eot_on_deterministic_rules_without_a_warning(
    converted, test_subset
):
    """The default list holds eot for brsf models: on others it is skipped, unannounced."""
    target = converted("usf")
    given = {k: v for k, v in CONFIG.items() if k != "gradients"}  # the default gradients
    config = SuiteConfig(**{**given, "eps": [0.0, 8 / 255]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = evaluate(target, *test_subset, config)
    assert not [w for w in caught if "skipped" in str(w.message)]
    assert {r.gradient for r in rows if r.attack != "worst"} == {"rule", "exact"}


def test_transfer_from_a_surrogate_with_the_same_weights_equals_exact(
    converted, trained_cnn, make_target, test_subset
):
    """A bp surrogate with the target's own weights gives the target's true gradient."""
    target = converted("usf")
    surrogate = make_target(copy.deepcopy(trained_cnn).eval())
    x, y = test_subset
    config = SuiteConfig(**{**CONFIG, "gradients": ["rule", "exact", "transfer"]})
    rows = evaluate(target, x, y, config, surrogate=surrogate)
    for attack in ("fgsm", "pgd"):
        transfer = accuracies(rows, attack=attack, gradient="transfer")
        assert transfer == accuracies(rows, attack=attack, gradient="exact")
        assert transfer != accuracies(rows, attack=attack, gradient="rule")
    wrong = make_target(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 3)), 3)
    with pytest.raises(ValueError, match="classes"):
        evaluate(target, x, y, config, surrogate=wrong)
    with pytest.raises(ValueError, match="surrogate"):
        robust_accuracy(
            target, x, y, attack="pgd", norm="linf", eps=0.1, gradient="transfer", config=config
        )


def test_classification_task_and_surrogate_checkpoint(test_subset, target, tmp_path):
    """Through the ClassificationTask contract: the target is a usf task, the surrogate the bp
    checkpoint of the same weights, loaded from suite.surrogate_ckpt."""
    import lightning

    tasks = pytest.importorskip("sslr.tasks")
    torch.manual_seed(0)
    kwargs = dict(
        backbone="resnet18", num_classes=10, small_input=True, mean=target.mean, std=target.std
    )
    bp = tasks.ClassificationTask(rule="bp", **kwargs)
    ckpt = tmp_path / "bp.ckpt"
    torch.save(
        {
            "state_dict": bp.state_dict(),
            "hyper_parameters": dict(bp.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        ckpt,
    )
    usf = tasks.ClassificationTask(rule="usf", **kwargs)
    usf.load_state_dict(bp.state_dict())
    usf.eval()
    x, y = test_subset
    dataset = torch.utils.data.TensorDataset(x[:8], y[:8])
    config = SuiteConfig(
        attacks=["fgsm"],
        eps=[0.0, 0.05],
        gradients=["exact", "transfer"],
        n_samples=8,
        surrogate_ckpt=str(ckpt),
    )
    # The application loads the surrogate checkpoint (the engine never opens one).
    from sslr.attack_run import load_surrogate

    surrogate = load_surrogate(usf, config.surrogate_ckpt, "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = run_suite(usf, dataset, config, surrogate=surrogate, out_dir=tmp_path)
    rows = [r for r in rows if r.attack != "worst"]  # the per-image worst case comes last
    assert [r.gradient for r in rows] == ["exact", "exact", "transfer", "transfer"]
    assert rows[1].accuracy == rows[3].accuracy  # same weights: transfer = exact
    assert rows[0].accuracy == (usf(x[:8]).argmax(1) == y[:8]).float().mean().item()


def test_gradient_source_applies_only_inside_its_context(converted, test_subset):
    """Entered per call, resampling would restart brsf's stream: every step the same B."""
    target = converted("brsf")
    x, y = test_subset
    clf = GradientSourceClassifier(target, x.shape[1:], source="rule")
    with pytest.raises(RuntimeError, match="context manager"):
        clf.loss_gradient(x, F.one_hot(y, 10).float())
