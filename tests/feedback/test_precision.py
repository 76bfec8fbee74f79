"""Mixed precision: feedback layers under torch.autocast (BioTorch's layers crash there)."""

from __future__ import annotations

import copy

import pytest
import torch
from feedback_helpers import NETWORK_RULES as RULES
from torch import nn

from sslr.feedback import convert_model, feedback_layers


def build() -> nn.Sequential:
    """A small net in eval mode: BatchNorm uses running statistics and brsf keeps one B, so
    the fp32 and the low-precision step are comparable."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, groups=2),
        nn.Flatten(),
        nn.Linear(8 * 7 * 7, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    ).eval()


def step(model, x, device, dtype):
    """Output and the parameters' and input's gradients of one step (autocast if dtype)."""
    x = x.clone().requires_grad_(True)
    with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = model(x)
        loss = out.float().square().mean()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()] + [x.grad]
    model.zero_grad()
    return out, grads


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    # bf16 keeps 8 significant bits: plain nn layers reach ~5% on the first layer's gradients
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def check_autocast(rule: str, device: str, dtype: torch.dtype, tolerance: float) -> None:
    plain = build().to(device)
    model = convert_model(copy.deepcopy(plain), rule, seed=0)
    x = torch.randn(4, 3, 16, 16, device=device)
    out, grads = step(model, x, device, dtype)
    out_plain, _ = step(plain, x, device, dtype)
    assert out.dtype == out_plain.dtype == dtype  # what nn.Conv2d / nn.Linear give
    if device == "cpu":
        assert torch.equal(out, out_plain)
    else:  # cuDNN may pick another algorithm for another call
        torch.testing.assert_close(out, out_plain)
    out32, grads32 = step(model, x, device, None)
    assert out32.dtype == torch.float32
    for g, g32, p in zip(grads, grads32, [*model.parameters(), x], strict=True):
        assert g.dtype == p.dtype == torch.float32
        assert torch.isfinite(g).all()
        assert relative_error(g, g32) < tolerance


@pytest.mark.parametrize("rule", RULES)
def test_autocast_bf16_cpu(rule):
    check_autocast(rule, "cpu", torch.bfloat16, tolerance=0.1)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rule", RULES)
def test_autocast_cuda(rule, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    check_autocast(rule, "cuda", dtype, tolerance=0.1 if dtype == torch.bfloat16 else 0.02)


@pytest.mark.gpu
@pytest.mark.parametrize("rule", RULES)
def test_cuda_matches_cpu(rule):
    # The same rule state on both devices: fa/frsf draw M on the CPU (device-independent).
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = convert_model(build().double(), rule, seed=0)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    _, grads_cpu = step(model, x, "cpu", None)
    _, grads_gpu = step(model.cuda(), x.cuda(), "cuda", None)
    assert all(m.weight.is_cuda for _, m in feedback_layers(model))
    for g_cpu, g_gpu in zip(grads_cpu, grads_gpu, strict=True):
        if rule == "brsf":  # its draws come from the device's generator (MT19937, Philox)
            assert torch.isfinite(g_gpu).all() and g_gpu.shape == g_cpu.shape
        else:
            torch.testing.assert_close(g_gpu.cpu(), g_cpu)
