"""Adversarial attacks on hashing retrieval: perturb a query image so its code moves away from
its own code (untargeted: PGD on the code, HAG) or towards an anchor code of a target label
(targeted: P2P, DHTA). Inputs in [0, 1], normalization inside the model, L-inf or L2 balls.

Notation: u = tanh(beta z) (N, K) the real-valued code of x + delta (beta = 1 except after
HashNet's continuation), b = sign(u(x)) the clean code, a an anchor code. Every objective is
written as the quantity the attack *ascends* (ART's ``loss_gradient`` convention):

- ``pgd`` (untargeted): L = -(1/K) u . b, pushing every bit of u against the clean code.
- ``hag`` (Yang et al. 2018, "Adversarial Examples for Hamming Space Search"): the same with
  weights w_k = 1[|u_k - b_k| < 1 + t], t = 0.5 (a constant of each step): bits already pushed
  past -t (flipped with margin) drop out, so the steps go to the bits not yet flipped.
- ``p2p`` / ``dhta`` (Bai et al. 2020, "Targeted Attack for Deep Hashing based Retrieval"):
  L = (1/K) u . a, i.e. minimising -(1/K) h(x + delta) . a, with the anchor a = sign(sum of the
  codes of n_t images of the target label) (component-wise majority vote; P2P: n_t = 1; a tied
  bit is 0 and pulls neither way).

The gradient of L comes from ART's ``PyTorchClassifier.loss_gradient`` through
:class:`~sslr.robustness.GradientSourceClassifier` with this loss and ``nb_classes = K``:
ART hands the (N, K) code targets to the loss untouched, and the gradient source (``rule``,
``exact``, ``eot``) applies exactly as for classifiers. The iterations are the engine's registered attacks
(PGD: :func:`sslr.robustness.attacks.pgd`) rather than ART's ``generate``: besides the speed reasons
given there, ART's ``generate`` scores success by argmax over the K "classes", which means
nothing for codes. Hashing attacks in the literature step by the sign of the gradient
(L-inf); the L2 ball uses the normalized gradient, as for classifiers.

This module is the hashing task of the evaluation engine (:class:`HashingEvaluation`): the
code objectives, targets and anchors an attack works with, and the score (mAP / t-mAP against
the clean database) of what it returns. The cell grid, gradient sources, bounds and outputs
are the engine's (:mod:`sslr.robustness.suite`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import torch
from torch import nn

from sslr.metrics import average_precisions, binarize, mean_average_precision
from sslr.robustness.registry import AttackSpec
from sslr.robustness.target import AttackTarget


class HashAttack(str, Enum):
    """Hashing attacks: ``pgd`` and ``hag`` are untargeted (scored by mAP with the true labels),
    ``p2p`` and ``dhta`` targeted (scored by t-mAP, with the target label as relevance)."""

    PGD = "pgd"
    HAG = "hag"
    P2P = "p2p"
    DHTA = "dhta"

    @property
    def targeted(self) -> bool:
        return self in (HashAttack.P2P, HashAttack.DHTA)

    @property
    def metric(self) -> str:
        """The ``metric`` column of this attack's rows."""
        return "t-mAP" if self.targeted else "mAP"


class CodeNetwork(nn.Module):
    """u = tanh(scale * network(x)) (N, K) for normalized input: what the attacks see."""

    def __init__(self, network: nn.Module, scale: float = 1.0) -> None:
        super().__init__()
        self.network = network
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.scale * self.network(x))


@dataclass
class HashingTarget:
    """A hashing network under attack: ``network`` maps normalized images to the pre-tanh
    output z (N, bits); codes are sign(tanh(scale * z)). A ``HashingTask`` gives one through
    :meth:`from_task` (its ``code_scale`` is HashNet's last beta, 1 otherwise)."""

    network: nn.Module
    mean: Sequence[float]
    std: Sequence[float]
    bits: int
    scale: float = 1.0
    codes: CodeNetwork = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or self.bits < 2:
            raise ValueError(f"hashing attacks need codes of at least 2 bits, got {self.bits!r}")
        self.codes = CodeNetwork(self.network, self.scale)
        # The normalization and the ART view: AttackTarget validates mean/std.
        self._attack_target = AttackTarget(self.codes, self.mean, self.std, self.bits)
        self.mean, self.std = self._attack_target.mean, self._attack_target.std

    @classmethod
    def from_task(cls, task) -> HashingTarget:
        """The target of a ``HashingTask`` (``.network``, ``.mean``, ``.std``, ``.bits``)."""
        scale = float(getattr(task, "code_scale", 1.0))
        return cls(task.network, task.mean, task.std, int(task.hparams.bits), scale)

    @property
    def attack_target(self) -> AttackTarget:
        """The :class:`AttackTarget` view (network = :attr:`codes`, ``num_classes`` = bits)."""
        return self._attack_target

    # The network's device and rules are those of its AttackTarget view (the same layers).
    device = property(lambda self: self._attack_target.device)
    rules = property(lambda self: self._attack_target.rules)
    stochastic_feedback = property(lambda self: self._attack_target.stochastic_feedback)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Binary codes (N, bits) in {-1, +1} of [0, 1] images; forward only, so the rule plays
        no part (brsf draws nothing in a forward)."""
        return binarize(self.codes(self._attack_target.normalize(x)))


def anchor_codes(codes: torch.Tensor) -> torch.Tensor:
    """DHTA's anchor: component-wise majority vote of (N, n_t, K) codes -> (N, K) in {-1, 0, 1}
    (0 where the vote ties, possible for even n_t; P2P's n_t = 1 gives the code itself)."""
    if codes.dim() != 3:
        raise ValueError(f"codes must be (N, n_t, K), got shape {tuple(codes.shape)}")
    return codes.sum(dim=1).sign()


def draw_targets(
    query_labels: torch.Tensor, db_labels: torch.Tensor, n_anchors: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query, a target label and ``n_anchors`` database items of that label (the anchor
    set), drawn with ``seed``.

    The target label is the label row of a random database item that shares no label with
    the query (so the target differs from the query's own label); the anchor set is drawn
    without replacement from the database items sharing a label with it (all of them when
    fewer exist). Returns target labels (N, C) and anchor indices (N, n_anchors) into the
    database, a row padded by repeating its draws when the label has fewer items.
    """
    generator = torch.Generator().manual_seed(seed + 7919)  # a stream apart from the subset's
    db = db_labels.float()
    targets, anchors = [], []
    for row in query_labels.float():
        foreign = ((db @ row) == 0) & (db.sum(1) > 0)  # (N_db,) items with none of its labels
        candidates = foreign.nonzero().flatten()
        if candidates.numel() == 0:
            raise ValueError(
                "a targeted attack needs, for every query, a database item of another label"
            )
        pick = candidates[torch.randint(candidates.numel(), (1,), generator=generator)]
        target = db[pick[0]]
        members = ((db @ target) > 0).nonzero().flatten()
        chosen = members[torch.randperm(members.numel(), generator=generator)[:n_anchors]]
        chosen = chosen.repeat(math.ceil(n_anchors / chosen.numel()))[:n_anchors]
        targets.append(target)
        anchors.append(chosen)
    return torch.stack(targets), torch.stack(anchors)


def as_hashing_target(model) -> HashingTarget:
    """A :class:`HashingTarget`, or one made from a ``HashingTask``."""
    if isinstance(model, HashingTarget):
        return model
    if hasattr(model, "network") and hasattr(model, "hparams") and "bits" in model.hparams:
        return HashingTarget.from_task(model)
    raise TypeError(
        f"Cannot attack a {type(model).__name__} as a hashing model: give a HashingTask or a "
        "HashingTarget(network, mean, std, bits)"
    )


class CodeLoss(nn.Module):
    """The objective an attack ascends, on u (N, K) and code targets (N, K) (see the module
    docstring): ``pgd``/``hag`` take the clean codes b, ``p2p``/``dhta`` the anchors a. Summed
    over the batch, so a sample's gradient does not depend on the batch size."""

    def __init__(self, attack: HashAttack | str, margin: float = 0.5) -> None:
        super().__init__()
        self.attack = HashAttack(attack)
        if not margin >= 0:
            raise ValueError(f"the HAG margin t must be >= 0, got {margin}")
        self.margin = float(margin)

    def forward(self, u: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(u.dtype)
        agreement = u * target  # (N, K)
        if self.attack.targeted:
            return agreement.sum() / u.shape[1]
        if self.attack is HashAttack.HAG:
            weight = ((u - target).abs() < 1 + self.margin).to(u.dtype).detach()
            agreement = weight * agreement
        return -agreement.sum() / u.shape[1]


def select_queries(loader, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, seeded subset of ``n`` queries (x (n, C, H, W) in [0, 1], labels (n, C)) from
    a loader of ``(x, labels)`` batches; the same seed gives the same queries, in loader
    order. Read by index when the loader has a map-style dataset, else by one pass."""
    x, labels, _ = draw_queries(loader, n, seed)
    return x, labels


def draw_queries(loader, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """:func:`select_queries`, and the queries' indices in their split (ascending)."""
    with torch.inference_mode(False):
        dataset = getattr(loader, "dataset", None)
        if _map_style(dataset):
            total = len(dataset)
            index = _subset_index(total, n, seed)
            items = [dataset[i] for i in index.tolist()]
            x = torch.stack([torch.as_tensor(item[0]) for item in items])
            labels = torch.stack([torch.as_tensor(item[1]) for item in items])
        else:
            batches = [(b[0].cpu(), b[1].cpu()) for b in loader]
            x, labels = (torch.cat(part) for part in zip(*batches, strict=True))
            index = _subset_index(x.shape[0], n, seed)
            x, labels = x[index], labels[index]
        x = x.cpu().clone()
    if not x.is_floating_point():  # uint8 pixels
        x = x / 255.0
    return x.float(), _multi_hot(labels.cpu().clone()), index.tolist()


def _map_style(dataset) -> bool:
    iterable = isinstance(dataset, torch.utils.data.IterableDataset)
    return dataset is not None and not iterable and hasattr(dataset, "__len__")


def _subset_index(total: int, n: int, seed: int) -> torch.Tensor:
    if total == 0:
        raise ValueError("The query split is empty")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return order[: min(n, total)].sort().values


def _multi_hot(labels: torch.Tensor) -> torch.Tensor:
    if labels.dim() != 2:
        raise ValueError(
            f"hashing labels must be multi-hot (N, C), got shape {tuple(labels.shape)}"
        )
    return labels.float()


@torch.no_grad()
def encode_loader(target: HashingTarget, loader, shard=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean codes (N, K) of every image of ``loader`` and their labels (N, C), on the CPU
    (the database: encoded once per suite). ``shard`` (:class:`~sslr.robustness.shards.Shard`):
    this process encodes its share of the loader's batches, and every process gets them all,
    in order (the codes of a single process)."""
    from sslr.robustness.shards import SINGLE

    shard = shard or SINGLE
    done: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    failure = None
    try:
        for k, (x, y) in enumerate(loader):
            if shard.owns(k):
                done[k] = (target.encode(x.to(target.device).float()).cpu(), y.cpu())
    except Exception as err:  # every process stops, not only this one
        failure = err
    parts = shard.merge(failure if failure is not None else done)
    if not parts:
        raise ValueError("The database split is empty")
    codes, labels = zip(*(parts[k] for k in sorted(parts)), strict=True)
    return torch.cat(codes), _multi_hot(torch.cat(labels))


def _encode_all(target: HashingTarget, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    parts = [
        target.encode(x[i : i + batch_size].to(target.device)) for i in range(0, len(x), batch_size)
    ]
    return torch.cat(parts)


def _database_images(loader) -> Callable[[torch.Tensor], torch.Tensor]:
    """Database indices -> images (n, C, H, W) in [0, 1], by index when the loader has a
    map-style dataset, else by one pass over the loader."""
    dataset = getattr(loader, "dataset", None)

    def fetch(index: torch.Tensor) -> torch.Tensor:
        wanted = index.tolist()
        with torch.inference_mode(False):
            if _map_style(dataset):
                x = torch.stack([torch.as_tensor(dataset[i][0]) for i in wanted])
            else:
                x = torch.cat([b[0].cpu() for b in loader])[index]
        return (x / 255.0 if not x.is_floating_point() else x).float()

    return fetch


# --- the hashing task of the engine --------------------------------------------------------


@dataclass
class HashingEvaluation:
    """What the engine needs from a hashing model: per attack the code targets of every
    crafting network (clean codes or anchors) and the relevance labels of its metric; per
    image the binary code of an adversarial query; per cell its mAP / t-mAP against the clean
    database.

    Args:
        target: the attacked model; ``surrogate`` the ``transfer`` source (or None).
        queries: the query images (N, C, H, W) in [0, 1] and their multi-hot labels (N, C).
        database: the target's clean database codes (N_db, K) and labels (N_db, C).
        database_images: database indices -> images, for the surrogate's anchors of a
            targeted transfer attack.
    """

    target: HashingTarget
    surrogate: HashingTarget | None
    queries: tuple[torch.Tensor, torch.Tensor]
    database: tuple[torch.Tensor, torch.Tensor]
    database_images: Callable[[torch.Tensor], torch.Tensor] | None = None
    task: str = "hashing"
    labels: str = "codes"
    margin: float = 0.5  # HAG's t, set from the suite's settings per attack
    index: list[int] | None = None  # the queries' indices in their split (None: 0..N-1)

    def __post_init__(self) -> None:
        db_codes = self.database[0]
        if db_codes.shape[1] != self.target.bits:
            raise ValueError(
                f"database codes have {db_codes.shape[1]} bits, the target {self.target.bits}"
            )
        self._clean: torch.Tensor | None = None

    @property
    def x(self) -> torch.Tensor:
        return self.queries[0]

    def view(self, model: HashingTarget) -> AttackTarget:
        """The network an attack's provider wraps: the codes u of ``model``."""
        return model.attack_target

    def loss(self, spec: AttackSpec) -> nn.Module:
        return CodeLoss(spec.objective, self.margin)

    def metric(self, spec: AttackSpec) -> str:
        return "t-mAP" if spec.targeted else "mAP"

    def clean(self, batch_size: int) -> torch.Tensor:
        """The clean codes (N, K) of the queries (cached)."""
        if self._clean is None:
            self._clean = _encode_all(self.target, self.x.to(self.target.device), batch_size).cpu()
        return self._clean

    def begin(self, spec: AttackSpec, config) -> dict:
        """Relevance labels of ``spec``'s metric and its code goals per crafting network."""
        self.margin = config.hag_margin
        x, labels = self.queries
        db_codes, db_labels = self.database
        clean = self.clean(config.batch_size)
        goals = {}
        if not spec.targeted:
            goals[id(self.target)] = clean
            if self.surrogate is not None:  # the surrogate pushes away from its own codes
                goals[id(self.surrogate)] = _encode_all(self.surrogate, x, config.batch_size).cpu()
            return {"relevance": labels, "goals": goals}
        n_anchors = 1 if spec.objective == "p2p" else config.dhta_anchors
        target_labels, index = draw_targets(labels, db_labels, n_anchors, config.seed)
        goals[id(self.target)] = anchor_codes(db_codes[index])
        if self.surrogate is not None:
            if self.database_images is None:
                raise ValueError(
                    "a targeted transfer attack needs the database images (database_images=) "
                    "for the surrogate's anchor codes"
                )
            unique, inverse = torch.unique(index.flatten(), return_inverse=True)
            images = self.database_images(unique)
            codes = _encode_all(self.surrogate, images, config.batch_size).cpu()  # (U, K')
            goals[id(self.surrogate)] = anchor_codes(codes[inverse].view(*index.shape, -1))
        return {"relevance": target_labels, "goals": goals}

    def outcome(self, adv: torch.Tensor, index: slice) -> torch.Tensor:
        """The target's binary codes of adversarial queries (kept per image)."""
        return self.target.encode(adv).cpu()

    def score(self, context: dict, outcomes: torch.Tensor) -> float:
        db_codes, db_labels = self.database
        return float(
            mean_average_precision(outcomes.cpu(), db_codes, context["relevance"], db_labels)
        )

    def per_query(self, context: dict, outcomes: torch.Tensor) -> torch.Tensor:
        """Each query's AP (t-AP for targeted cells): what ``score`` averages."""
        db_codes, db_labels = self.database
        return average_precisions(outcomes.cpu(), db_codes, context["relevance"], db_labels)


def hashing_evaluation(target, data, config, surrogate=None, shard=None) -> HashingEvaluation:
    """Encode the database once (clean; shared among the processes of ``shard``) and draw the
    fixed, seeded query subset: from a hashing DataModule (``test_dataloader()`` = ``[queries,
    database]``) or from such a pair of loaders (the validation split during fit)."""
    from sslr.robustness.guard import attack_mode

    if hasattr(data, "test_dataloader") and hasattr(data, "setup"):
        data.prepare_data()
        data.setup("test")
        loaders = data.test_dataloader()
    else:
        loaders = data
    if not isinstance(loaders, (list, tuple)) or len(loaders) != 2:
        raise ValueError(
            f"{type(data).__name__}.test_dataloader() must return [queries, database] "
            "(a hashing DataModule)"
        )
    query_loader, db_loader = loaders
    x, labels, index = draw_queries(query_loader, config.n_samples, config.seed)
    with attack_mode(target.network, warn_train_mode=False):
        database = encode_loader(target, db_loader, shard)
    return HashingEvaluation(
        target, surrogate, (x, labels), database, database_images=_database_images(db_loader),
        index=index,
    )  # fmt: skip
