"""Attacks leave no trace: training flags, parameters, .grad, buffers and random states are as
before; a model in train mode is evaluated in eval mode (with a warning); attacks run inside
Lightning-style inference mode."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from sslr.robustness import SuiteConfig, TrainModeWarning, accuracies, evaluate, run_suite

CONFIG = dict(
    attacks=["fgsm", "pgd", "square"],
    eps=[0.0, 0.1],
    gradients=["rule", "exact"],
    steps=3,
    queries=10,
    n_samples=32,
)


def _state(net: torch.nn.Module):
    return {
        "training": [m.training for m in net.modules()],
        "params": [p.detach().clone() for p in net.parameters()],
        "requires_grad": [p.requires_grad for p in net.parameters()],
        "grad_ids": [id(p.grad) for p in net.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in net.parameters()],
        "buffers": [b.clone() for b in net.buffers()],
    }


def _assert_same(before, after):
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["grad_ids"] == after["grad_ids"]  # the very same .grad tensors
    for a, b in zip(before["params"], after["params"], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(before["grads"], after["grads"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    for a, b in zip(before["buffers"], after["buffers"], strict=True):
        assert torch.equal(a, b)


def test_model_state_is_unchanged_after_the_suite(target, test_subset):
    net = target.network
    # A mid-training state: some .grad populated, one layer frozen, one submodule in train mode.
    loss = net(torch.rand(4, 3, 16, 16)).sum()
    loss.backward()
    net.features[0].bias.grad = None
    net.classifier.weight.requires_grad_(False)
    net.features[1].train()
    before = _state(net)
    torch_rng, numpy_rng = torch.get_rng_state(), np.random.get_state()[1].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainModeWarning)  # the root is in eval mode: no warning
        rows = evaluate(target, *test_subset, SuiteConfig(**CONFIG))
    assert len(rows) == 2 * 2 * 2 + 2 + 2  # + square, + the worst case per eps
    assert accuracies(rows, attack="pgd", gradient="exact")[1] < 0.5  # it did attack
    _assert_same(before, _state(net))
    assert torch.equal(torch.get_rng_state(), torch_rng)
    assert np.array_equal(np.random.get_state()[1], numpy_rng)


def test_train_mode_warns_and_evaluates_in_eval_mode(target, test_subset):
    x, y = test_subset
    eval_rows = evaluate(target, x, y, SuiteConfig(**CONFIG))
    target.network.train()
    before = _state(target.network)
    with pytest.warns(TrainModeWarning, match="training mode"):
        train_rows = evaluate(target, x, y, SuiteConfig(**CONFIG))
    assert train_rows == eval_rows  # BatchNorm used its running statistics: eval mode
    _assert_same(before, _state(target.network))  # back in train mode, statistics untouched
    assert target.network.training


def test_attacks_run_inside_inference_mode(target, test_subset, tmp_path):
    """Lightning validates and tests under torch.inference_mode(): data made there are inference
    tensors, and autograd is off. The suite must still attack."""
    # n_samples = all 64 images: the seeded subset is the whole set, in dataset order
    config = SuiteConfig(**{**CONFIG, "attacks": ["pgd"], "eps": [0.0, 0.25], "n_samples": 64})
    x, y = test_subset
    expected = evaluate(target, x, y, config)
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()  # inference tensors
        assert xi.is_inference()
        rows = evaluate(target, xi, yi, config)
        dataset = torch.utils.data.TensorDataset(xi, yi)
        suite_rows = run_suite(target, dataset, config, out_dir=tmp_path)
    assert rows == expected
    assert accuracies(rows, gradient="rule")[1] <= 0.05
    assert suite_rows == expected
    assert not any(p.is_inference() for p in target.network.parameters())
