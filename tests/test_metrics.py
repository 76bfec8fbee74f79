"""Retrieval metrics: values against a plain per-query reference, hand-worked cases, DDP."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslr import hamming_rank
from sslr.metrics import (
    MeanAveragePrecision,
    average_precisions,
    binarize,
    hamming_distance,
    mean_average_precision,
    precision_at_k,
    precision_recall_curve,
)

# ---------------------------------------------------------------- plain per-query references


def _relevant(q_label: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    if db_labels.ndim == 1:
        return db_labels == q_label
    return (db_labels @ q_label) > 0


def _ranking(q_code: np.ndarray, db_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ham = 0.5 * (db_codes.shape[1] - db_codes @ q_code)
    return ham, np.argsort(ham, kind="stable")  # ties keep database order


def reference_map(q_codes, db_codes, q_labels, db_labels, topk=None) -> float:
    k = len(db_codes) if topk is None else topk
    aps = []
    for i in range(len(q_codes)):
        _, order = _ranking(q_codes[i], db_codes)
        rel = _relevant(q_labels[i], db_labels)[order][:k]
        hits, total = 0, 0.0
        for position, relevant in enumerate(rel, start=1):
            if relevant:
                hits += 1
                total += hits / position
        aps.append(total / hits if hits else 0.0)
    return float(np.mean(aps))


def reference_precision_at_k(q_codes, db_codes, q_labels, db_labels, k) -> float:
    k = min(k, len(db_codes))
    values = []
    for i in range(len(q_codes)):
        _, order = _ranking(q_codes[i], db_codes)
        values.append(_relevant(q_labels[i], db_labels)[order][:k].sum() / k)
    return float(np.mean(values))


def reference_pr(q_codes, db_codes, q_labels, db_labels):
    bits = q_codes.shape[1]
    precision = np.zeros(bits + 1)
    recall = np.zeros(bits + 1)
    for i in range(len(q_codes)):
        ham, _ = _ranking(q_codes[i], db_codes)
        rel = _relevant(q_labels[i], db_labels)
        for r in range(bits + 1):
            inside = ham <= r
            hit = (inside & rel).sum()
            precision[r] += hit / inside.sum() if inside.sum() else 0.0
            recall[r] += hit / rel.sum() if rel.sum() else 0.0
    return precision / len(q_codes), recall / len(q_codes)


# ---------------------------------------------------------------- data


def _codes(n: int, bits: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (n, bits), generator=generator).float() * 2 - 1


def _data(multilabel: bool, n_query=40, n_db=300, bits=4, classes=5, seed=0):
    """Few bits and many items: most distances are tied, so tie-breaking is exercised."""
    g = torch.Generator().manual_seed(seed)
    q, db = _codes(n_query, bits, g), _codes(n_db, bits, g)
    if multilabel:
        ql = (torch.rand(n_query, classes, generator=g) < 0.3).float()
        dl = (torch.rand(n_db, classes, generator=g) < 0.3).float()
    else:
        ql = torch.randint(0, classes, (n_query,), generator=g)
        dl = torch.randint(0, classes, (n_db,), generator=g)
    return q, db, ql, dl


def _np(*tensors):
    return [t.numpy() for t in tensors]


# ---------------------------------------------------------------- mean_average_precision


@pytest.mark.parametrize("multilabel", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("topk", [None, 1, 37, 5000])
def test_map_equals_reference(multilabel, topk):
    q, db, ql, dl = _data(multilabel)
    expected = reference_map(*_np(q, db, ql, dl), topk=topk)
    assert mean_average_precision(q, db, ql, dl, topk=topk) == pytest.approx(expected, abs=1e-12)
    # Blocks of queries give the same value as one block.
    blocked = mean_average_precision(q, db, ql, dl, topk=topk, batch_size=7)
    assert blocked == pytest.approx(expected, abs=1e-12)


def test_torch_sort_path_equals_reference(monkeypatch):
    """The CUDA code path (torch.sort, stable), run on the CPU."""
    import sslr.metrics

    monkeypatch.setattr(sslr.metrics, "_stable_argsort", sslr.metrics._torch_stable_argsort)
    q, db, ql, dl = _data(multilabel=True)
    for topk in (None, 37):
        expected = reference_map(*_np(q, db, ql, dl), topk=topk)
        assert mean_average_precision(q, db, ql, dl, topk=topk) == pytest.approx(
            expected, abs=1e-12
        )


@pytest.fixture(params=["counting", "torch"])
def ranking_path(request, monkeypatch):
    """Run a test on the CPU counting kernels and on the torch (CUDA) path, run on the CPU."""
    import sslr.metrics

    if request.param == "counting":
        assert hamming_rank.available(), "numba is a dependency: the counting path must run"
    else:
        monkeypatch.setattr(sslr.metrics, "_packed", lambda *args: None)
    return request.param


@pytest.mark.parametrize(
    "multilabel, bits, classes",
    [(False, 5, 4), (True, 5, 6), (False, 70, 3), (True, 130, 70)],
    ids=["single", "multi", "single-2words", "multi-3words-70classes"],
)
def test_both_paths_equal_reference_on_tied_codes(ranking_path, multilabel, bits, classes):
    # 500 items over few distinct distances: long runs of ties at every distance.
    q, db, ql, dl = _data(multilabel, n_query=30, n_db=500, bits=bits, classes=classes, seed=3)
    if bits > 64:  # long codes: make most items copies of a few codes, so distances tie
        db = db[torch.randint(0, 7, (len(db),), generator=torch.Generator().manual_seed(1))]
    arrays = _np(q, db, ql, dl)
    for topk in (None, 1, 120, 499, 800):
        expected = reference_map(*arrays, topk=topk)
        assert mean_average_precision(q, db, ql, dl, topk=topk) == pytest.approx(
            expected, abs=1e-12
        )
    for k in (1, 33, 500):
        expected = reference_precision_at_k(*arrays, k)
        assert precision_at_k(q, db, ql, dl, k) == pytest.approx(expected, abs=1e-12)
    precision, recall = reference_pr(*arrays)
    curve = precision_recall_curve(q, db, ql, dl)
    np.testing.assert_allclose(curve.precision.numpy(), precision, atol=1e-12, rtol=0)
    np.testing.assert_allclose(curve.recall.numpy(), recall, atol=1e-12, rtol=0)


def test_negative_multihot_labels_keep_the_label_product_rule(ranking_path):
    # "Relevant" is a positive label product; with negative entries it is not a shared label.
    q, db, _, _ = _data(False, n_query=10, n_db=60, bits=4)
    g = torch.Generator().manual_seed(2)
    ql, dl = torch.randn(10, 3, generator=g), torch.randn(60, 3, generator=g)
    expected = reference_map(*_np(q, db, ql, dl))
    assert mean_average_precision(q, db, ql, dl) == pytest.approx(expected, abs=1e-12)


def test_map_tie_breaking_follows_database_order():
    """Moving a relevant item ahead of a tied irrelevant one in the database raises AP."""
    q = torch.tensor([[1.0, 1.0]])
    db = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # both at distance 0
    assert mean_average_precision(q, db, torch.tensor([0]), torch.tensor([1, 0])) == 0.5
    assert mean_average_precision(q, db, torch.tensor([0]), torch.tensor([0, 1])) == 1.0


def _tiny():
    """Two queries, five items, K = 2; worked out by hand in the tests below."""
    q = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    db = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])
    return q, db, torch.tensor([0, 1]), torch.tensor([0, 1, 0, 1, 0])


def test_map_hand_worked_example():
    q, db, ql, dl = _tiny()
    # Query 0 ranks items 1, 4 | 2, 3 | 0 (distances 0 | 1 | 2): relevance 0 1 1 0 1,
    # AP = (1/2 + 2/3 + 3/5) / 3 = 53/90. Query 1 ranks 0 | 2, 3 | 1, 4: relevance 0 0 1 1 0,
    # AP = (1/3 + 2/4) / 2 = 5/12.
    assert mean_average_precision(q, db, ql, dl) == pytest.approx((53 / 90 + 5 / 12) / 2)
    # Top 3: query 0 keeps 0 1 1 -> (1/2 + 2/3) / 2; query 1 keeps 0 0 1 -> 1/3.
    assert mean_average_precision(q, db, ql, dl, topk=3) == pytest.approx((7 / 12 + 1 / 3) / 2)
    # Top 1: no relevant item retrieved for either query: each counts 0.
    assert mean_average_precision(q, db, ql, dl, topk=1) == 0.0
    assert precision_at_k(q, db, ql, dl, k=2) == pytest.approx((1 / 2 + 0) / 2)
    curve = precision_recall_curve(q, db, ql, dl)
    assert curve.radius.tolist() == [0, 1, 2]
    torch.testing.assert_close(
        curve.precision, torch.tensor([1 / 4, 5 / 12, 1 / 2], dtype=torch.float64)
    )
    torch.testing.assert_close(curve.recall, torch.tensor([1 / 6, 7 / 12, 1], dtype=torch.float64))
    torch.testing.assert_close(
        hamming_distance(q, db),
        torch.tensor([[2, 0, 1, 1, 0], [0, 2, 1, 1, 2]], dtype=torch.uint8),
    )


def test_average_precisions_are_each_querys_ap(ranking_path):
    q, db, ql, dl = _tiny()
    # The hand-worked APs above, per query.
    aps = average_precisions(q, db, ql, dl)
    assert aps.dtype == torch.float64 and aps.shape == (2,)
    torch.testing.assert_close(aps, torch.tensor([53 / 90, 5 / 12], dtype=torch.float64))
    torch.testing.assert_close(
        average_precisions(q, db, ql, dl, topk=3),
        torch.tensor([7 / 12, 1 / 3], dtype=torch.float64),
    )
    # Their mean is mean_average_precision, to the bit, blocks included.
    q, db, ql, dl = _data(True, n_query=70, n_db=300, bits=6, classes=5, seed=4)
    for topk in (None, 50):
        aps = average_precisions(q, db, ql, dl, topk=topk, batch_size=16)
        assert aps.shape == (70,) and bool(((aps >= 0) & (aps <= 1)).all())
        whole = mean_average_precision(q, db, ql, dl, topk=topk, batch_size=16)
        assert float(aps.mean()) == pytest.approx(whole, abs=1e-15)
        expected = [
            reference_map(*_np(q[i : i + 1], db, ql[i : i + 1], dl), topk) for i in range(70)
        ]
        np.testing.assert_allclose(aps.numpy(), expected, atol=1e-12, rtol=0)


def test_perfect_ranking_gives_one():
    centers = torch.tensor([[1.0, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1]])
    db_labels = torch.arange(60) % 3
    q_labels = torch.tensor([2, 0, 1, 1])
    for topk in (None, 5, 20, 60):
        value = mean_average_precision(
            centers[q_labels], centers[db_labels], q_labels, db_labels, topk=topk
        )
        assert value == 1.0
    assert precision_at_k(centers[q_labels], centers[db_labels], q_labels, db_labels, 20) == 1.0


def test_query_without_relevant_items_counts_zero():
    q, db, ql, dl = _tiny()
    # A third query whose class is nowhere in the database: the mean over 3 queries.
    q3, ql3 = torch.cat([q, q[:1]]), torch.cat([ql, torch.tensor([7])])
    expected = (53 / 90 + 5 / 12 + 0) / 3
    assert mean_average_precision(q3, db, ql3, dl) == pytest.approx(expected)


def test_multihot_equals_class_indices_and_numpy_is_accepted():
    q, db, ql, dl = _data(multilabel=False)
    by_index = mean_average_precision(q, db, ql, dl, topk=50)
    by_onehot = mean_average_precision(q, db, F.one_hot(ql, 5), F.one_hot(dl, 5), topk=50)
    by_numpy = mean_average_precision(*_np(q, db, ql, dl), topk=50)
    assert by_index == by_onehot == by_numpy


@pytest.mark.parametrize("multilabel", [False, True], ids=["single", "multi"])
def test_precision_at_k_and_pr_curve_equal_reference(multilabel):
    q, db, ql, dl = _data(multilabel, bits=6)
    for k in (1, 10, 299, 1000):
        expected = reference_precision_at_k(*_np(q, db, ql, dl), k)
        assert precision_at_k(q, db, ql, dl, k) == pytest.approx(expected, abs=1e-12)
    precision, recall = reference_pr(*_np(q, db, ql, dl))
    curve = precision_recall_curve(q, db, ql, dl, batch_size=9)
    np.testing.assert_allclose(curve.precision.numpy(), precision, atol=1e-12)
    np.testing.assert_allclose(curve.recall.numpy(), recall, atol=1e-12)
    # At radius K everything is retrieved: recall is the share of queries with a relevant item.
    qn, dn = _np(ql, dl)
    has_relevant = np.mean([_relevant(qn[i], dn).any() for i in range(len(qn))])
    assert curve.recall[-1].item() == pytest.approx(has_relevant)


def test_bad_inputs_raise_one_clear_error():
    q, db, ql, dl = _tiny()
    with pytest.raises(ValueError, match="2 bits but db_codes have 3"):
        mean_average_precision(q, torch.ones(5, 3), ql, dl)
    with pytest.raises(ValueError, match="only -1 and \\+1"):
        mean_average_precision(torch.tensor([[0.3, -0.2], [1, 1]]), db, ql, dl)
    with pytest.raises(ValueError, match="one label row"):
        mean_average_precision(q, db, ql, dl[:4])
    with pytest.raises(ValueError, match="3 classes but db_labels have 4"):
        mean_average_precision(q, db, torch.ones(2, 3), torch.ones(5, 4))
    with pytest.raises(ValueError, match="both multi-hot"):
        mean_average_precision(q, db, ql, torch.ones(5, 2))
    with pytest.raises(ValueError, match="topk must be a positive integer"):
        mean_average_precision(q, db, ql, dl, topk=0)
    with pytest.raises(ValueError, match="batch_size"):
        mean_average_precision(q, db, ql, dl, batch_size=0)


def test_autocast_does_not_change_distances():
    """bf16 cannot hold distances of 512-bit codes exactly; the metrics switch autocast off."""
    q, db, ql, dl = _data(multilabel=True, n_query=10, n_db=50, bits=512)
    expected = mean_average_precision(q, db, ql, dl)
    distance = ((512 - q @ db.T) / 2).to(torch.int16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mean_average_precision(q, db, ql, dl) == expected
        torch.testing.assert_close(hamming_distance(q, db), distance)


def test_binarize_maps_zero_to_plus_one():
    assert binarize(torch.tensor([-0.2, 0.0, 0.7])).tolist() == [-1.0, 1.0, 1.0]


# ---------------------------------------------------------------- torchmetrics Metric


@pytest.mark.parametrize("topk", [None, 25])
def test_metric_equals_function(topk):
    q, db, ql, dl = _data(multilabel=True, bits=5)
    metric = MeanAveragePrecision(topk=topk)
    # Batches in any order and roles interleaved; real-valued outputs are binarized.
    for start in range(0, 300, 64):
        metric.update(db[start : start + 64] * 0.8, dl[start : start + 64], is_query=False)
        if start < 40:
            metric.update(q[start : start + 16] * 0.5, ql[start : start + 16], is_query=True)
    metric.update(q[16:], ql[16:], is_query=True)
    expected = mean_average_precision(q, db, ql, dl, topk=topk)
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)
    metric.reset()
    with pytest.raises(ValueError, match="both query and database"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics' "compute before update" warning
        metric.compute()


def test_metric_forward_only_accumulates():
    q, db, ql, dl = _tiny()
    metric = MeanAveragePrecision()
    assert metric(q, ql, is_query=True) is None
    metric(db, dl, is_query=False)
    assert metric.compute().item() == pytest.approx((53 / 90 + 5 / 12) / 2)


def test_metric_states_concatenate_across_ranks():
    """DDP in one process: a stand-in all_gather hands rank 0 both ranks' states.

    torchmetrics pre-concatenates each list state, gathers it from every rank and concatenates
    the results in rank order; rank 0 must then see every query and every database item.
    """
    q, db, ql, dl = _data(multilabel=True, n_db=90)
    ranks = [MeanAveragePrecision(topk=30) for _ in range(2)]
    ranks[0].update(db[:50], dl[:50], is_query=False)  # uneven shards
    ranks[1].update(db[50:], dl[50:], is_query=False)
    for rank, metric in enumerate(ranks):
        metric.update(q[rank::2], ql[rank::2], is_query=True)
    names = ["query_codes", "query_labels", "db_codes", "db_labels"]  # order of add_state
    calls = iter(names)

    def all_gather(tensor, group=None):
        other = getattr(ranks[1], next(calls))
        return [tensor, torch.cat(other)]

    rank0 = MeanAveragePrecision(
        topk=30, dist_sync_fn=all_gather, distributed_available_fn=lambda: True
    )
    for name in names:
        setattr(rank0, name, list(getattr(ranks[0], name)))
    rank0._update_count = 1
    # Queries arrive as evens then odds: AP is a mean over queries, so order does not matter.
    expected = mean_average_precision(q, db, ql, dl, topk=30)
    assert rank0.compute().item() == pytest.approx(expected, abs=1e-6)


def _ddp_worker(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    q, db, ql, dl = _data(multilabel=False, n_db=90)
    metric = MeanAveragePrecision(topk=30)
    # Uneven shards: rank 0 holds database items 0..49, rank 1 items 50..89.
    cut = 50
    part = slice(0, cut) if rank == 0 else slice(cut, None)
    metric.update(db[part], dl[part], is_query=False)
    metric.update(q[rank::world], ql[rank::world], is_query=True)
    value = metric.compute().item()
    if rank == 0:
        torch.save(value, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_metric_under_ddp(tmp_path):
    """Two gloo processes: states are gathered by concatenation before compute."""
    import torch.multiprocessing as mp

    out = tmp_path / "value.pt"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2)
    q, db, ql, dl = _data(multilabel=False, n_db=90)
    # Gathered order: rank 0's queries (even rows) then rank 1's (odd rows); AP is a mean over
    # queries, so only the database order matters, and it is unchanged (rank 0 then rank 1).
    expected = mean_average_precision(q, db, ql, dl, topk=30)
    assert torch.load(out) == pytest.approx(expected, abs=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("multilabel", [False, True], ids=["single", "multi"])
def test_cuda_equals_cpu(multilabel):
    q, db, ql, dl = _data(multilabel, n_query=200, n_db=3000, bits=8)
    cuda = [t.cuda() for t in (q, db, ql, dl)]
    for topk in (None, 100):
        assert mean_average_precision(*cuda, topk=topk) == pytest.approx(
            mean_average_precision(q, db, ql, dl, topk=topk), abs=1e-12
        )
    assert precision_at_k(*cuda, 50) == precision_at_k(q, db, ql, dl, 50)
    torch.testing.assert_close(
        precision_recall_curve(*cuda).precision, precision_recall_curve(q, db, ql, dl).precision
    )
