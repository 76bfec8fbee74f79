"""Hashing losses against naive loops, their behaviour on good and random codes, CSQ centers,
HyP2 against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sslr.hashing import (
    CSQLoss,
    DCHLoss,
    DPSHLoss,
    HashingLoss,
    HashNetLoss,
    HyP2Loss,
    get_loss,
    hadamard,
    hash_centers,
    hashnet_beta,
    hyp2_threshold,
    list_losses,
    multilabel_centers,
    register_loss,
)

BITS, CLASSES = 6, 3


def _tiny(seed: int = 0):
    """Five samples, six bits, three classes, multi-label (with shared and disjoint pairs)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.tanh(2 * torch.randn(5, BITS, generator=g, dtype=torch.float64))
    labels = torch.tensor(
        [[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0], [0, 0, 1]], dtype=torch.float64
    )
    return u, labels


def _similar(labels, i, j) -> float:
    return 1.0 if sum(a * b for a, b in zip(labels[i], labels[j], strict=True)) > 0 else 0.0


def _pairs(n):
    return [(i, j) for i in range(n) for j in range(n) if i != j]


def _balance_weights(labels):
    pairs = _pairs(len(labels))
    n_pos = sum(_similar(labels, i, j) for i, j in pairs)
    n_neg = len(pairs) - n_pos
    return {(i, j): len(pairs) / (n_pos if _similar(labels, i, j) else n_neg) for i, j in pairs}


def naive_dpsh(u, labels, weight):
    u, labels = u.tolist(), labels.tolist()
    pair_terms = []
    for i, j in _pairs(len(u)):
        theta = 0.5 * sum(a * b for a, b in zip(u[i], u[j], strict=True))
        pair_terms.append(math.log(1 + math.exp(theta)) - _similar(labels, i, j) * theta)
    quant = [(x - math.copysign(1, x)) ** 2 for row in u for x in row]
    return sum(pair_terms) / len(pair_terms) + weight * sum(quant) / len(quant)


def naive_hashnet(u, labels, alpha):
    u, labels = u.tolist(), labels.tolist()
    w = _balance_weights(labels)
    total = 0.0
    for i, j in _pairs(len(u)):
        theta = alpha * sum(a * b for a, b in zip(u[i], u[j], strict=True))
        total += w[i, j] * (math.log(1 + math.exp(theta)) - _similar(labels, i, j) * theta)
    return total / len(w)


def _cauchy_distance(a, b):
    cos = sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )
    return len(a) / 2 * (1 - min(cos, 0.99))


def naive_dch(u, labels, gamma, weight):
    u, labels = u.tolist(), labels.tolist()
    w = _balance_weights(labels)
    total = 0.0
    for i, j in _pairs(len(u)):
        d = _cauchy_distance(u[i], u[j])
        s = _similar(labels, i, j)
        # The Cauchy cross-entropy as the paper writes it, before the rewriting in the code.
        total += w[i, j] * (
            -s * math.log(gamma / (gamma + d)) - (1 - s) * math.log(d / (gamma + d))
        )
    quant = [
        math.log(1 + _cauchy_distance([abs(x) for x in row], [1.0] * len(row)) / gamma) for row in u
    ]
    return total / len(w) + weight * sum(quant) / len(quant)


def naive_csq(u, labels, centers, tie_break, weight):
    u, labels, centers, tie = u.tolist(), labels.tolist(), centers.tolist(), tie_break.tolist()
    bce, quant = [], []
    for row, lab in zip(u, labels, strict=True):
        for k, x in enumerate(row):
            total = sum(centers[c][k] for c in range(len(lab)) if lab[c])
            target = tie[k] if total == 0 else math.copysign(1, total)
            p, t = (x + 1) / 2, (target + 1) / 2
            bce.append(-(t * math.log(p) + (1 - t) * math.log(1 - p)))
            quant.append((abs(x) - 1) ** 2)
    return sum(bce) / len(bce) + weight * sum(quant) / len(quant)


# ---------------------------------------------------------------- values


def test_dpsh_equals_naive_loop():
    u, labels = _tiny()
    value = DPSHLoss(BITS, CLASSES, quantization_weight=0.3)(u, labels)
    assert value.item() == pytest.approx(naive_dpsh(u, labels, 0.3), rel=1e-6)


def test_hashnet_equals_naive_loop():
    u, labels = _tiny()
    loss = HashNetLoss(BITS, CLASSES)
    assert loss.alpha == pytest.approx(10 / BITS)
    assert loss(u, labels).item() == pytest.approx(naive_hashnet(u, labels, 10 / BITS), rel=1e-6)


@pytest.mark.parametrize("gamma", [20.0, 2.0])
def test_dch_equals_naive_loop(gamma):
    u, labels = _tiny()
    value = DCHLoss(BITS, CLASSES, gamma=gamma, quantization_weight=0.5)(u, labels)
    assert value.item() == pytest.approx(naive_dch(u, labels, gamma, 0.5), rel=1e-6)


def test_dch_defaults_follow_the_reference_implementation():
    loss = DCHLoss(48, 10)
    assert (loss.gamma, loss.quantization_weight) == (20.0, 0.1)


def test_csq_equals_naive_loop():
    u, labels = _tiny()
    labels[3] = 0  # a sample without labels takes the tie-break code
    loss = CSQLoss(BITS, CLASSES, quantization_weight=0.2)
    expected = naive_csq(u, labels, loss.centers, loss.tie_break, 0.2)
    assert loss(u, labels).item() == pytest.approx(expected, rel=1e-6)


def test_balance_weights_with_only_one_kind_of_pair():
    """All pairs dissimilar: every weight is 1 and HashNet is the plain mean likelihood."""
    u, _ = _tiny()
    labels = torch.eye(5, dtype=torch.float64)[:, :5]
    loss = HashNetLoss(BITS, 5, alpha=0.4)
    theta = 0.4 * u @ u.T
    off = ~torch.eye(5, dtype=torch.bool)
    assert loss(u, labels).item() == pytest.approx(F.softplus(theta)[off].mean().item())


# ---------------------------------------------------------------- behaviour


def _good_and_random(bits=16, classes=4, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    good = 0.9 * hash_centers(classes, bits)[labels]  # codes that agree with the labels
    randoms = [torch.tanh(torch.randn(n, bits, generator=g)) for _ in range(5)]
    return labels, good, randoms


@pytest.mark.parametrize("name", list_losses())
def test_codes_that_agree_with_labels_score_lower_than_random_codes(name):
    labels, good, randoms = _good_and_random()
    loss = get_loss(name, 16, 4)
    if isinstance(loss, HyP2Loss):  # agreeing with the labels means: near their proxies
        good = 0.9 * loss.proxies.detach().sign()[labels]
    assert loss(good, labels) < min(loss(r, labels) for r in randoms)


@pytest.mark.parametrize("name", list_losses())
@pytest.mark.parametrize("n", [1, 2, 9])
def test_gradients_are_finite(name, n):
    z = torch.randn(n, 12, requires_grad=True)
    with torch.no_grad():
        z[0, :3] = torch.tensor([0.0, 40.0, -40.0])  # u = 0, +1 and -1 exactly (tanh saturates)
    labels = (torch.rand(n, 5) < 0.5).float()
    value = get_loss(name, 12, 5)(torch.tanh(z), labels)
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value)
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("name", list_losses())
def test_losses_run_under_bf16_autocast(name):
    u = torch.tanh(torch.randn(6, 8))
    labels = torch.arange(6) % 3
    loss = get_loss(name, 8, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(u.bfloat16(), labels)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(loss(u.bfloat16().float(), labels).item(), rel=1e-5)


def test_class_indices_equal_one_hot():
    u, _ = _tiny()
    idx = torch.tensor([0, 2, 1, 1, 0])
    for name in list_losses():
        loss = get_loss(name, BITS, CLASSES)
        assert loss(u, idx).item() == pytest.approx(loss(u, F.one_hot(idx, 3)).item())


def test_hashnet_continuation_schedule():
    assert HashNetLoss.continuation and not DPSHLoss.continuation
    assert hashnet_beta(0) == 1.0
    assert hashnet_beta(199) == 1.0  # raised stepwise, every 200 iterations
    assert hashnet_beta(200) == pytest.approx(math.sqrt(2.0))
    assert hashnet_beta(799) == pytest.approx(math.sqrt(1 + 0.005 * 600))
    with pytest.raises(ValueError):
        hashnet_beta(-1)


# ---------------------------------------------------------------- CSQ centers


@pytest.mark.parametrize("bits", [8, 12, 16, 20, 24, 32, 48, 64])
def test_hadamard_matrices_are_orthogonal(bits):
    h = hadamard(bits)
    assert set(h.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(h @ h.T, bits * torch.eye(bits))


def test_powers_of_two_match_scipy():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    torch.testing.assert_close(hadamard(64), torch.tensor(scipy_linalg.hadamard(64)).float())


@pytest.mark.parametrize("bits,classes", [(16, 10), (16, 32), (48, 80), (12, 24)])
def test_hadamard_centers_are_at_least_half_the_bits_apart(bits, classes):
    c = hash_centers(classes, bits)
    distance = (bits - c @ c.T) / 2
    off = ~torch.eye(classes, dtype=torch.bool)
    assert distance[off].min() >= bits / 2


def test_random_centers_beyond_two_k_classes():
    bits, classes = 16, 100
    c = hash_centers(classes, bits, seed=3)
    torch.testing.assert_close(c[:32], torch.cat([hadamard(16), -hadamard(16)]))
    assert torch.equal(c, hash_centers(classes, bits, seed=3))  # deterministic
    assert (c[32:].sum(1) == 0).all()  # balanced
    distance = (bits - c @ c.T) / 2
    off = ~torch.eye(classes, dtype=torch.bool)
    assert distance[off].min() >= 2 and distance[off].mean() >= 7.5  # far on average


def test_no_hadamard_order_falls_back_to_random_centers():
    with pytest.raises(ValueError, match="no Hadamard matrix of order 36"):
        hadamard(36)
    c = hash_centers(10, 36)
    assert c.shape == (10, 36) and len({tuple(r) for r in c.tolist()}) == 10


def test_multilabel_center_is_the_sign_of_the_sum():
    centers = torch.tensor([[1.0, 1, -1, -1], [1, -1, 1, -1], [1, 1, 1, 1]])
    tie = torch.tensor([-1.0, -1, 1, 1])
    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0]])
    expected = torch.tensor([[1.0, 1, -1, -1], [1, -1, 1, -1], [1, 1, 1, -1], [-1, -1, 1, 1]])
    torch.testing.assert_close(multilabel_centers(labels, centers, tie), expected)


def test_csq_centers_are_saved_with_the_state_dict():
    state = CSQLoss(16, 10).state_dict()
    torch.testing.assert_close(state["centers"], hash_centers(10, 16))
    assert state["tie_break"].shape == (16,)


# ---------------------------------------------------------------- registry and bad input


def test_registry():
    assert list_losses() == ["csq", "dch", "dpsh", "hashnet", "hyp2"]
    assert isinstance(get_loss("hyp2", 16, 10), HyP2Loss)
    assert isinstance(get_loss("DCH", 32, 10, gamma=5.0), DCHLoss)
    with pytest.raises(ValueError, match="unknown hashing loss 'hag'; choose one of: csq, dch"):
        get_loss("hag", 32, 10)
    with pytest.raises(ValueError, match="no option gamma; its options are: quantization_weight"):
        get_loss("dpsh", 32, 10, gamma=5.0)
    with pytest.raises(ValueError, match="already registered"):
        register_loss("dpsh")(type("Other", (HashingLoss,), {}))


@pytest.mark.parametrize("name", ["dpsh", "hashnet", "dch", "csq", "hyp2"])
def test_bad_input_raises_one_clear_error(name):
    with pytest.raises(ValueError, match="bits must be a positive integer"):
        get_loss(name, 0, 10)
    loss = get_loss(name, 8, 4)
    with pytest.raises(ValueError, match="built for 8-bit codes"):
        loss(torch.zeros(3, 16), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"multi-hot \(N, 4\)"):
        loss(torch.zeros(3, 8), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="3 codes but 2 label rows"):
        loss(torch.zeros(3, 8), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="class indices must lie in"):
        loss(torch.zeros(3, 8), torch.tensor([0, 1, 4]))


# ---------------------------------------------------------------- HyP2


def _cos(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def hand_hyp2(u, labels, proxies, zeta, pair_weight):
    """HyP2 written out (the authors' model.py, HyP.forward): means over positive and negative
    (sample, proxy) entries, plus the mean over irrelevant ordered pairs of multi-label
    samples."""
    u, labels, proxies = u.tolist(), labels.tolist(), proxies.tolist()
    pos, neg, pair = [], [], []
    for i, code in enumerate(u):
        for c, proxy in enumerate(proxies):
            cos = _cos(code, proxy)
            if labels[i][c]:
                pos.append(1 - cos)
            else:
                neg.append(max(cos - zeta, 0.0))
    multi = [i for i in range(len(u)) if sum(labels[i]) > 1]
    for i in multi:
        for j in multi:
            if i != j and _similar(labels, i, j) == 0:
                pair.append(max(_cos(u[i], u[j]) - zeta, 0.0))
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    return mean(pos) + mean(neg) + pair_weight * mean(pair), neg, pair


def _hyp2_with(proxies, **options):
    loss = HyP2Loss(proxies.shape[1], proxies.shape[0], **options).double()
    with torch.no_grad():
        loss.proxies.copy_(proxies)
    return loss


# Three 4-bit codes, three classes, two of the samples multi-label.
HYP2_U = torch.tensor(
    [[0.5, -0.2, 0.8, 0.1], [-0.3, 0.6, 0.4, -0.7], [0.9, 0.1, -0.5, 0.3]], dtype=torch.float64
)
HYP2_LABELS = torch.tensor([[1, 1, 0], [0, 0, 1], [1, 0, 1]], dtype=torch.float64)
HYP2_PROXIES = torch.tensor(
    [[1.0, 0.5, -0.5, 0.0], [0.0, 1.0, 1.0, -1.0], [-1.0, 0.5, 0.0, 1.0]], dtype=torch.float64
)


@pytest.mark.parametrize("zeta", [None, -0.2, 0.1])
def test_hyp2_equals_hand_computation_multilabel(zeta):
    loss = _hyp2_with(HYP2_PROXIES, threshold=zeta)
    zeta = 0.0 if zeta is None else zeta  # 4 bits, 2^2 >= 3 classes: d = 2, 1 - 2 * 2 / 4
    assert loss.threshold == zeta
    expected, neg, pair = hand_hyp2(HYP2_U, HYP2_LABELS, HYP2_PROXIES, zeta, 0.5)
    # Some negative proxies lie above the threshold and some below; with three classes any
    # two multi-label samples share a label, so there is no irrelevant pair.
    assert 0 < sum(v > 0 for v in neg) < len(neg) and pair == []
    assert loss(HYP2_U, HYP2_LABELS).item() == pytest.approx(expected, abs=1e-6)


def test_hyp2_pair_term_counts_irrelevant_multilabel_pairs_only():
    # Four classes: samples 0 and 1 are multi-label and irrelevant, close in angle (cos > zeta):
    # the pair term. Samples 2 and 3 are single-label, irrelevant and identical: no pair term.
    u = torch.tensor(
        [
            [0.6, 0.5, -0.4, 0.2],
            [0.5, 0.7, -0.1, 0.3],
            [-0.8, 0.2, 0.3, 0.5],
            [-0.8, 0.2, 0.3, 0.5],
        ],
        dtype=torch.float64,
    )
    labels = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 0], [0, 0, 0, 1]]).double()
    proxies = torch.tensor(
        [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]], dtype=torch.float64
    )
    for weight, zeta in [(0.5, 0.1), (2.0, -0.3)]:
        loss = _hyp2_with(proxies, threshold=zeta, pair_weight=weight)
        expected, _, pair = hand_hyp2(u, labels, proxies, zeta, weight)
        assert len(pair) == 2 and pair[0] > 0.5  # (0, 1) and (1, 0)
        assert loss(u, labels).item() == pytest.approx(expected, abs=1e-6)
        without_pairs = _hyp2_with(proxies, threshold=zeta, pair_weight=0.0)(u, labels)
        assert (loss(u, labels) - without_pairs).item() == pytest.approx(weight * pair[0], abs=1e-6)


def test_hyp2_single_label_is_the_proxy_loss_alone():
    u = HYP2_U[[0, 1, 2, 2]]  # codes 2 and 3 identical with different labels
    idx = torch.tensor([0, 2, 1, 0])
    one_hot = F.one_hot(idx, 3).double()
    loss = _hyp2_with(HYP2_PROXIES, threshold=-0.1)
    expected, neg, pair = hand_hyp2(u, one_hot, HYP2_PROXIES, -0.1, 0.5)
    assert pair == [] and any(v > 0 for v in neg)
    pos = [1 - _cos(u[i].tolist(), HYP2_PROXIES[c].tolist()) for i, c in enumerate(idx.tolist())]
    assert expected == pytest.approx(sum(pos) / 4 + sum(neg) / 8)
    assert loss(u, idx).item() == pytest.approx(expected, abs=1e-6)
    assert loss(u, one_hot).item() == pytest.approx(expected, abs=1e-6)


def test_hyp2_gradients_reach_codes_and_proxies():
    z = HYP2_U.clone().requires_grad_(True)
    labels = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 0]]).double()
    loss = HyP2Loss(4, 4, threshold=-0.5).double()
    value = loss(torch.tanh(z), labels)
    value.backward()
    for grad in (z.grad, loss.proxies.grad):
        assert torch.isfinite(grad).all() and (grad.abs() > 1e-8).all()

    # They are the gradients of the formula: finite differences in float64, through the
    # module itself with its proxies swapped for the checked input.
    def f(u, proxies):
        return torch.func.functional_call(loss, {"proxies": proxies}, (u, labels))

    proxies = loss.proxies.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (torch.tanh(z).detach().requires_grad_(True), proxies))


@pytest.mark.parametrize(
    "bits,classes,zeta",
    [
        # Cosines as codetable.xlsx of the authors' code stores them (row K, column m).
        (48, 20, 0.0),  # VOC at 48 bits
        (12, 38, 0.3333333333333334),  # Flickr-25K at 12 bits, m = 6
        (32, 3, -0.3125),
        (24, 5, -0.08333333333333326),
        (64, 200, 0.09375),
        (36, 21, 0.05555555555555558),  # NUS-WIDE at 36 bits
        (24, 4096, 1 / 3),  # the [24, 12, 8] Golay code
        (8, 16, 0.0),  # the [8, 4, 4] extended Hamming code
        (16, 2, -1.0),  # two classes: antipodal codes
        (16, 1, -1.0),
    ],
)
def test_hyp2_threshold_follows_the_authors_table(bits, classes, zeta):
    assert hyp2_threshold(bits, classes) == pytest.approx(zeta, abs=1e-12)


def test_hyp2_threshold_bad_sizes_say_what_to_do():
    with pytest.raises(ValueError, match="10 classes need at least 4 bits"):
        hyp2_threshold(3, 10)
    with pytest.raises(ValueError, match="pass loss option threshold"):
        hyp2_threshold(256, 10)
    assert HyP2Loss(256, 10, threshold=0.2).threshold == 0.2
    with pytest.raises(ValueError, match="threshold is a cosine"):
        HyP2Loss(16, 10, threshold=1.5)
    with pytest.raises(ValueError, match="pair_weight must be >= 0"):
        HyP2Loss(16, 10, pair_weight=-1.0)


def test_hyp2_proxies_are_kaiming_initialized_parameters_saved_with_the_state_dict():
    loss = HyP2Loss(128, 10, seed=3)
    assert isinstance(loss.proxies, torch.nn.Parameter) and loss.proxies.shape == (10, 128)
    # kaiming_normal_ with mode fan_out on (C, K): std = sqrt(2 / C), as the authors' code.
    assert loss.proxies.std().item() == pytest.approx(math.sqrt(2 / 10), rel=0.1)
    torch.testing.assert_close(HyP2Loss(128, 10, seed=3).proxies, loss.proxies)
    assert not torch.equal(HyP2Loss(128, 10, seed=4).proxies, loss.proxies)
    state = loss.state_dict()
    other = HyP2Loss(128, 10, seed=5)
    other.load_state_dict(state)
    torch.testing.assert_close(other.proxies, loss.proxies)
