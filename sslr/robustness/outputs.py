"""Where suite results go: ``robustness.csv``, the accuracy-vs-epsilon PNG, and the loggers
(metrics for every Lightning logger; for W&B also a table and line plots that overlay runs)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from sslr.atomic import atomic_write_with
from sslr.results import COLUMNS, RobustnessRow, read_rows, write_rows

_GRADIENT_COLORS = {
    "rule": "tab:red",
    "exact": "tab:blue",
    "eot": "tab:purple",
    "transfer": "tab:green",
    "none": "tab:gray",
}
_GRADIENT_MARKERS = {"rule": "o", "exact": "x", "eot": "^", "transfer": "s", "none": "d"}
_ATTACK_STYLES = {"fgsm": "--", "pgd": "-", "square": ":", "hag": "--", "p2p": ":", "dhta": "-."}


def metric_name(row: RobustnessRow, prefix: str = "robust") -> str:
    """``robust/<attack>/<gradient>/eps=<eps>`` (eps in pixel units, 4 significant digits);
    L2 attacks are named ``<attack>-l2``."""
    attack = row.attack if row.norm == "linf" else f"{row.attack}-{row.norm}"
    return f"{prefix}/{attack}/{row.gradient}/eps={row.eps:.4g}"


def rows_to_metrics(rows: Iterable[RobustnessRow], prefix: str = "robust") -> dict[str, float]:
    return {metric_name(r, prefix): float(r.accuracy) for r in rows}


def write_csv(
    rows: Iterable[RobustnessRow], path: str | Path, columns: Sequence[str] = COLUMNS
) -> Path:
    """Write ``robustness.csv`` atomically with the columns of :data:`sslr.results.COLUMNS`."""
    return write_rows(rows, path, columns)


def read_csv(path: str | Path) -> list[RobustnessRow]:
    """Rows of a ``robustness.csv`` (strictly: see :func:`sslr.results.read_rows`)."""
    return read_rows(path)


def _curves(rows: Sequence[RobustnessRow], panel: tuple) -> dict[tuple[str, str], list]:
    """(attack, gradient) -> [(eps, score)] sorted by eps, for one (metric, norm) panel."""
    curves: dict[tuple[str, str], list] = {}
    for r in rows:
        if (r.metric, r.norm) == panel:
            curves.setdefault((r.attack, r.gradient), []).append((r.eps, r.accuracy))
    return {k: sorted(v) for k, v in curves.items()}


def plot_curves(rows: Sequence[RobustnessRow], path: str | Path, title: str | None = None) -> Path:
    """Score against epsilon, one line per attack and gradient source, one panel per metric
    (accuracy; hashing mAP and t-mAP) and norm (L-inf epsilons shown in /255 units). Written
    atomically with the Agg canvas: no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    panels = list(dict.fromkeys((r.metric, r.norm) for r in rows)) or [("accuracy", "linf")]
    fig = Figure(figsize=(5.2 * len(panels), 4.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (metric, norm) in zip(axes, panels, strict=True):
        scale = 255.0 if norm == "linf" else 1.0
        for (attack, gradient), points in _curves(rows, (metric, norm)).items():
            eps, acc = zip(*points, strict=True)
            ax.plot(
                [e * scale for e in eps],
                acc,
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
        name = f"{metric}, " if metric != "accuracy" else ""
        ax.set_title(f"{title + ': ' if title else ''}{name}{norm}, n = {n}", fontsize=9)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    return path


def _log_wandb(experiment, rows: Sequence[RobustnessRow], png: Path | None, prefix: str) -> None:
    import wandb

    # The stroke names the run too: where W&B draws several runs' tables in one custom chart,
    # each run keeps its own lines instead of being joined to the others'.
    run = getattr(experiment, "name", None) or "run"
    columns = [*COLUMNS, "run", "series"]

    def table(subset):
        data = [
            [*(getattr(r, c) for c in COLUMNS), run, f"{run}: {r.attack}/{r.gradient}"]
            for r in subset
        ]
        return wandb.Table(columns=columns, data=data)

    payload = {f"{prefix}/table": table(rows)}
    for norm in dict.fromkeys(r.norm for r in rows):
        payload[f"{prefix}/curve_{norm}"] = wandb.plot.line(
            table([r for r in rows if r.norm == norm]),
            x="eps",
            y="accuracy",
            stroke="series",
            title=f"{rows[0].metric if rows else 'accuracy'} vs eps ({norm})",
        )
    if png is not None:
        payload[f"{prefix}/plot"] = wandb.Image(str(png))
    experiment.log(payload)


def log_rows(
    rows: Sequence[RobustnessRow],
    loggers: Iterable,
    *,
    step: int | None = None,
    png: str | Path | None = None,
    prefix: str = "robust",
) -> dict[str, float]:
    """Log the rows to Lightning loggers: ``robust/<attack>/<gradient>/eps=<eps>`` metrics to
    every logger (CSVLogger, TensorBoard, ...); to a ``WandbLogger`` also a ``wandb.Table``, one
    line plot per norm (``robust/curve_<norm>``, so runs overlay on the dashboard) and the PNG.
    Returns the metrics."""
    metrics = rows_to_metrics(rows, prefix)
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        if _is_wandb(logger):
            _log_wandb(logger.experiment, rows, None if png is None else Path(png), prefix)
        logger.save()
    return metrics


def _is_wandb(logger) -> bool:
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return False
    return isinstance(logger, WandbLogger)
