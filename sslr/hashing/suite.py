"""The hashing attack suite: every attack, norm, epsilon and gradient source of a
``HashingSuiteConfig`` on a fixed, seeded subset of the test queries, scored against the clean
database by mAP (untargeted) or t-mAP (targeted), as rows of ``robustness.csv`` (the
classification columns plus ``metric``), a PNG and logger metrics.

    from sslr.hashing.suite import HashingSuiteConfig, run_hashing_suite
    rows = run_hashing_suite(task, datamodule, HashingSuiteConfig(n_queries=500), out_dir=run_dir)
"""

from __future__ import annotations

import csv
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Literal

import torch

from sslr.hashing.attacks import (
    HashAttack,
    HashingTarget,
    anchor_codes,
    as_hashing_target,
    attack_queries,
    draw_targets,
    load_hashing_target,
)
from sslr.metrics import mean_average_precision
from sslr.robustness.config import GradientSource, Norm
from sslr.robustness.guard import attack_mode
from sslr.robustness.outputs import log_rows, write_csv
from sslr.robustness.results import COLUMNS, RobustnessRow

log = logging.getLogger(__name__)

HASHING_COLUMNS = (*COLUMNS, "metric")

HashAttackName = Literal["pgd", "hag", "p2p", "dhta"]
NormName = Literal["linf", "l2"]
GradientName = Literal["rule", "exact", "eot", "transfer"]

DEFAULT_EPS_LINF = (0.0, 2 / 255, 4 / 255, 8 / 255)
DEFAULT_EPS_L2 = (0.0, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class HashingRow(RobustnessRow):
    """A row of a hashing ``robustness.csv``: ``accuracy`` holds the ``metric``, ``mAP`` of the
    adversarial queries (untargeted attacks) or ``t-mAP`` (targeted: the target label as
    relevance), over ``n`` queries."""

    metric: str = "mAP"


def _enum_list(enum, values, what: str, allowed=None) -> tuple:
    allowed = tuple(allowed or enum)
    values = [values] if isinstance(values, str) else list(values)
    out = []
    for value in values:
        raw = value.value if isinstance(value, Enum) else str(value).lower()
        member = next((m for m in allowed if m.value == raw), None)
        if member is None:
            known = ", ".join(m.value for m in allowed)
            raise ValueError(f"Unknown {what} {value!r}: known {what}s are {known}")
        if member not in out:
            out.append(member)
    if not out:
        raise ValueError(f"{what}s is empty: name at least one")
    return tuple(out)


def _eps_list(values, name: str, upper: float | None) -> tuple[float, ...]:
    values = [values] if isinstance(values, (int, float)) else list(values)
    out = []
    for value in values:
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                f"{name} must be finite and >= 0 (pixel units of [0, 1] images), got {value}"
            )
        if upper is not None and value > upper:
            raise ValueError(
                f"{name} = {value} exceeds {upper}: epsilons are in [0, 1] pixel units "
                f"(8/255 = {8 / 255:.5f}), not in /255 units"
            )
        if value not in out:
            out.append(value)
    if not out:
        raise ValueError(f"{name} is empty: give at least one epsilon")
    return tuple(out)


@dataclass
class HashingSuiteConfig:
    """A hashing attack suite, validated when constructed (before any work starts).

    Epsilons are absolute, in pixel units of [0, 1] images (8/255 is the literature's L-inf
    budget for hashing attacks). eps = 0 is not attacked: its rows are the clean mAP (or the
    clean t-mAP) of the same queries, exactly.

    Steps: ``steps`` sign-gradient steps of absolute size ``step`` (L-inf; for L2 a normalized
    gradient step of ``step * sqrt(C*H*W)``, the L-inf step's L2 length), each followed by
    the projection onto the eps ball and [0, 1]. The default, 100 steps of 1/255, is the
    common evaluation of later hashing-attack papers (SDHA, THA, CgAT); with eps <= 8/255 it
    reaches the boundary of the ball many times over. Lower ``steps`` for quick looks.

    Args:
        attacks: ``pgd`` and ``hag`` (untargeted, scored by mAP), ``p2p`` and ``dhta``
            (targeted, scored by t-mAP).
        norms: ``linf`` and/or ``l2``.
        eps: L-inf epsilons. Default (0, 2, 4, 8)/255.
        eps_l2: L2 epsilons. Default (0, 0.25, 0.5, 1).
        steps: iterations of every attack.
        step: absolute L-inf step (pixel units). Default 1/255.
        random_start: start from a uniform point of the ball (the literature starts at x).
        gradients: ``rule`` (the model's own backward), ``exact`` (B = W), ``eot`` (brsf:
            the mean over ``eot_samples`` draws of B), ``transfer`` (crafted on a BP surrogate).
        eot_samples: draws of B averaged per step for ``eot``.
        hag_margin: HAG's t in w_k = 1[|u_k - b_k| < 1 + t].
        dhta_anchors: DHTA's n_t, the target-label codes voting for the anchor (P2P: 1).
        n_queries: size of the fixed, seeded subset of the test queries.
        seed: seed of the subset, of the target labels and anchors, and of random starts.
        batch_size: images per attack batch.
        surrogate_ckpt: ``HashingTask`` checkpoint of the ``transfer`` surrogate (the bp
            fine-tuned model of the same backbone and data).
    """

    attacks: list[HashAttackName] = field(default_factory=lambda: ["pgd", "hag", "p2p", "dhta"])
    norms: list[NormName] = field(default_factory=lambda: ["linf"])
    eps: list[float] = field(default_factory=lambda: list(DEFAULT_EPS_LINF))
    eps_l2: list[float] = field(default_factory=lambda: list(DEFAULT_EPS_L2))
    steps: int = 100
    step: float = 1 / 255
    random_start: bool = False
    gradients: list[GradientName] = field(default_factory=lambda: ["rule", "exact", "eot"])
    eot_samples: int = 8
    hag_margin: float = 0.5
    dhta_anchors: int = 9
    n_queries: int = 1000
    seed: int = 0
    batch_size: int = 64
    surrogate_ckpt: str | None = None

    def __post_init__(self) -> None:
        # Every check runs here, so a bad setting fails before any work starts.
        self.attack_kinds  # noqa: B018  (validates)
        self.norm_kinds  # noqa: B018
        self.gradient_sources  # noqa: B018
        for norm in self.norm_kinds:
            self.eps_for(norm)
        for name in ("steps", "eot_samples", "dhta_anchors", "n_queries", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("step", "hag_margin"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not self.step > 0:
            raise ValueError(f"step must be > 0 (pixel units, e.g. 1/255), got {self.step}")
        if self.surrogate_ckpt is not None and not Path(self.surrogate_ckpt).is_file():
            raise ValueError(
                f"Surrogate checkpoint {self.surrogate_ckpt!r} does not exist: give the .ckpt of "
                "the bp fine-tuned hashing model (runs/<name>/version_<k>/checkpoints/best.ckpt)"
            )

    @property
    def attack_kinds(self) -> tuple[HashAttack, ...]:
        return _enum_list(HashAttack, self.attacks, "attack")

    @property
    def norm_kinds(self) -> tuple[Norm, ...]:
        return _enum_list(Norm, self.norms, "norm")

    @property
    def gradient_sources(self) -> tuple[GradientSource, ...]:
        chosen = [s for s in GradientSource if s is not GradientSource.NONE]
        return _enum_list(GradientSource, self.gradients, "gradient source", chosen)

    def eps_for(self, norm: Norm) -> tuple[float, ...]:
        if norm is Norm.LINF:
            return _eps_list(self.eps, "eps", upper=1.0)
        return _eps_list(self.eps_l2, "eps_l2", upper=None)

    def step_for(self, norm: Norm, numel: int) -> float:
        """The absolute step of ``norm`` for inputs of ``numel`` values (C*H*W)."""
        return self.step if norm is Norm.LINF else self.step * math.sqrt(numel)

    @property
    def wants_transfer(self) -> bool:
        return GradientSource.TRANSFER in self.gradient_sources


# --- the evaluated data ------------------------------------------------------------------


def select_queries(loader, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, seeded subset of ``n`` queries (x (n, C, H, W) in [0, 1], labels (n, C)) from
    a loader of ``(x, labels)`` batches; the same seed gives the same queries, in loader
    order. Read by index when the loader has a map-style dataset, else by one pass."""
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
    return x.float(), _multi_hot(labels.cpu().clone())


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
def encode_loader(target: HashingTarget, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean codes (N, K) of every image of ``loader`` and their labels (N, C), on the CPU
    (the database: encoded once per suite)."""
    codes, labels = [], []
    for x, y in loader:
        codes.append(target.encode(x.to(target.device).float()).cpu())
        labels.append(y.cpu())
    if not codes:
        raise ValueError("The database split is empty")
    return torch.cat(codes), _multi_hot(torch.cat(labels))


# --- the suite ---------------------------------------------------------------------------


def _sources(config: HashingSuiteConfig, target: HashingTarget) -> list[GradientSource]:
    sources = list(config.gradient_sources)
    if GradientSource.EOT in sources and not target.stochastic_feedback:
        sources.remove(GradientSource.EOT)
        rules = ", ".join(sorted(target.rules)) or "plain backprop"
        warnings.warn(
            f"Gradient source 'eot' skipped: the target's rule ({rules}) has a deterministic "
            "backward pass, where eot equals rule (it is for brsf)",
            UserWarning,
            stacklevel=3,
        )
    return sources


def evaluate_hashing(
    target,
    queries: tuple[torch.Tensor, torch.Tensor],
    database: tuple[torch.Tensor, torch.Tensor],
    config: HashingSuiteConfig,
    *,
    surrogate=None,
    database_images: Callable[[torch.Tensor], torch.Tensor] | None = None,
    warn_train_mode: bool = True,
) -> list[HashingRow]:
    """Run the suite on the query images and labels ``queries = (x, labels)`` against
    ``database = (codes, labels)``, the target's clean database codes (N_db, K) in {-1, +1}
    and their multi-hot labels. One row per attack, norm, gradient source and epsilon, in that
    order; eps = 0 rows are the clean mAP / t-mAP of the same queries.

    ``database_images`` (database indices -> images in [0, 1]) is needed only to attack with
    ``transfer`` on a targeted attack: the surrogate's anchors are its own codes of the anchor
    images (the target's anchors are its database codes).
    """
    target = as_hashing_target(target)
    surrogate = None if surrogate is None else as_hashing_target(surrogate)
    if config.wants_transfer and surrogate is None:
        raise ValueError(
            "gradient 'transfer' needs a surrogate: set surrogate_ckpt to the bp fine-tuned "
            "hashing model's checkpoint, or pass surrogate="
        )
    x, labels = queries
    db_codes, db_labels = database
    if db_codes.shape[1] != target.bits:
        raise ValueError(f"database codes have {db_codes.shape[1]} bits, the target {target.bits}")
    n, device = int(x.shape[0]), target.device
    sources = _sources(config, target)
    crafters = {GradientSource.TRANSFER: surrogate}  # every other source crafts on the target
    networks = {id(t.network): t.network for t in (target, surrogate) if t is not None}
    rows = []
    with attack_mode(*networks.values(), warn_train_mode=warn_train_mode):
        x = x.to(device)
        clean = _encode_all(target, x, config.batch_size).cpu()  # (N, K)
        for attack in config.attack_kinds:
            relevance, goals = _goals(
                attack,
                target,
                surrogate,
                x,
                clean,
                labels,
                db_codes,
                db_labels,
                database_images,
                config,
            )
            clean_value = mean_average_precision(clean, db_codes, relevance, db_labels)
            for norm in config.norm_kinds:
                for source in sources:
                    crafted_on = crafters.get(source, target)
                    for eps in config.eps_for(norm):
                        value = clean_value
                        if eps > 0:
                            codes = attack_queries(
                                target,
                                x,
                                goals[id(crafted_on)],
                                attack=attack,
                                norm=norm,
                                eps=eps,
                                step=config.step_for(norm, x[0].numel()),
                                steps=config.steps,
                                gradient=source,
                                batch_size=config.batch_size,
                                random_start=config.random_start,
                                seed=config.seed,
                                eot_samples=config.eot_samples,
                                margin=config.hag_margin,
                                surrogate=surrogate,
                            )
                            value = mean_average_precision(
                                codes.cpu(), db_codes, relevance, db_labels
                            )
                        row = HashingRow(
                            attack=attack.value,
                            norm=norm.value,
                            eps=float(eps),
                            steps=config.steps,
                            gradient=source.value,
                            accuracy=float(value),
                            n=n,
                            metric=attack.metric,
                        )
                        log.info("%s", row)
                        rows.append(row)
    return rows


def _goals(attack, target, surrogate, x, clean, labels, db_codes, db_labels, images, config):
    """The relevance labels of ``attack``'s metric and its code goals per crafting network
    (``id(network) -> (N, K)``): clean codes (untargeted) or anchors (targeted)."""
    goals = {}
    if not attack.targeted:
        goals[id(target)] = clean
        if surrogate is not None:  # the surrogate pushes away from its own clean codes
            goals[id(surrogate)] = _encode_all(surrogate, x, config.batch_size).cpu()
        return labels, goals
    n_anchors = 1 if attack is HashAttack.P2P else config.dhta_anchors
    target_labels, index = draw_targets(labels, db_labels, n_anchors, config.seed)  # (N, n_t)
    goals[id(target)] = anchor_codes(db_codes[index])
    if surrogate is not None:
        if images is None:
            raise ValueError(
                "a targeted transfer attack needs the database images (database_images=) for "
                "the surrogate's anchor codes"
            )
        unique, inverse = torch.unique(index.flatten(), return_inverse=True)
        codes = _encode_all(surrogate, images(unique), config.batch_size).cpu()  # (U, K')
        goals[id(surrogate)] = anchor_codes(codes[inverse].view(*index.shape, -1))
    return target_labels, goals


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


def run_hashing_suite(
    task,
    datamodule,
    config: HashingSuiteConfig | None = None,
    *,
    surrogate=None,
    out_dir: str | Path | None = None,
    loggers: Iterable = (),
    step: int | None = None,
    warn_train_mode: bool = True,
) -> list[HashingRow]:
    """What ``sslr attack`` runs on a hashing checkpoint: encode the test database once
    (clean), attack a fixed, seeded subset of ``config.n_queries`` test queries, score mAP
    (untargeted) or t-mAP (targeted), write ``robustness.csv`` (the classification columns plus
    ``metric``) and ``robustness.png`` in ``out_dir``, and log the rows to ``loggers``.

    ``task`` is a ``HashingTask`` (or :class:`HashingTarget`); ``datamodule`` a hashing
    DataModule whose ``test_dataloader()`` is ``[queries, database]``. The ``transfer``
    surrogate is ``surrogate`` (a task or target) or else loaded from
    ``config.surrogate_ckpt``. Bad settings raise ``ValueError`` before any attack runs.
    """
    config = config or HashingSuiteConfig()
    target = as_hashing_target(task)
    if surrogate is None and config.surrogate_ckpt is not None and config.wants_transfer:
        surrogate = load_hashing_target(config.surrogate_ckpt, target.device)
    if config.wants_transfer and surrogate is None:
        raise ValueError(
            "gradient 'transfer' needs a surrogate: set surrogate_ckpt to the bp fine-tuned "
            "hashing model's checkpoint, or pass surrogate="
        )
    datamodule.prepare_data()
    datamodule.setup("test")
    loaders = datamodule.test_dataloader()
    if not isinstance(loaders, (list, tuple)) or len(loaders) != 2:
        raise ValueError(
            f"{type(datamodule).__name__}.test_dataloader() must return [queries, database] "
            "(a hashing DataModule)"
        )
    query_loader, db_loader = loaders
    queries = select_queries(query_loader, config.n_queries, config.seed)
    with attack_mode(target.network, warn_train_mode=warn_train_mode):
        database = encode_loader(target, db_loader)
    rows = evaluate_hashing(
        target,
        queries,
        database,
        config,
        surrogate=surrogate,
        database_images=_database_images(db_loader),
        warn_train_mode=False,
    )
    png = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_hashing_csv(rows, out_dir / "robustness.csv")
        png = plot_hashing_curves(rows, out_dir / "robustness.png")
    log_rows(rows, loggers, step=step, png=png)
    return rows


# --- outputs -----------------------------------------------------------------------------


def write_hashing_csv(rows: Iterable[HashingRow], path: str | Path) -> Path:
    """``robustness.csv`` with exactly ``attack,norm,eps,steps,gradient,accuracy,n,metric``."""
    return write_csv(rows, path, HASHING_COLUMNS)


def read_hashing_csv(path: str | Path) -> list[HashingRow]:
    """Rows of a hashing ``robustness.csv`` (as written by :func:`write_hashing_csv`)."""
    with Path(path).open(newline="") as f:
        return [
            HashingRow(
                attack=r["attack"],
                norm=r["norm"],
                eps=float(r["eps"]),
                steps=int(r["steps"]),
                gradient=r["gradient"],
                accuracy=float(r["accuracy"]),
                n=int(r["n"]),
                metric=r["metric"],
            )
            for r in csv.DictReader(f)
        ]


_ATTACK_STYLES = {"pgd": "-", "hag": "--", "p2p": ":", "dhta": "-."}


def plot_hashing_curves(rows: Sequence[HashingRow], path: str | Path) -> Path:
    """mAP (untargeted attacks) and t-mAP (targeted) against epsilon: one panel per metric and
    norm, one line per attack and gradient source (colors and markers of
    :func:`sslr.robustness.plot_curves`, which labels its axis "accuracy")."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from sslr.robustness.outputs import _GRADIENT_COLORS, _GRADIENT_MARKERS

    path = Path(path)
    panels = list(dict.fromkeys((r.metric, r.norm) for r in rows)) or [("mAP", "linf")]
    fig = Figure(figsize=(5.2 * len(panels), 4.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (metric, norm) in zip(axes, panels, strict=True):
        scale = 255.0 if norm == "linf" else 1.0
        curves: dict[tuple[str, str], list] = {}
        for r in rows:
            if (r.metric, r.norm) == (metric, norm):
                curves.setdefault((r.attack, r.gradient), []).append((r.eps, r.accuracy))
        for (attack, gradient), points in curves.items():
            eps, value = zip(*sorted(points), strict=True)
            ax.plot(
                [e * scale for e in eps],
                value,
                marker=_GRADIENT_MARKERS.get(gradient, "o"),
                markersize=4,
                color=_GRADIENT_COLORS.get(gradient),
                linestyle=_ATTACK_STYLES.get(attack, "-"),
                label=f"{attack} / {gradient}",
            )
        ax.set_xlabel("eps (L-inf, /255)" if norm == "linf" else "eps (L2, pixel units)")
        ax.set_ylabel(metric)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="attack / gradient", title_fontsize=7, handlelength=3.5)
        n = rows[0].n if rows else 0
        kind = "targeted" if metric == "t-mAP" else "untargeted"
        ax.set_title(f"{kind} {metric}, {norm}, n = {n} queries", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
