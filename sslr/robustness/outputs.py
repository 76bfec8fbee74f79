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
    """(attack, gradient) -> [(eps, score, ci_low, ci_high)] sorted by eps, for one (metric,
    norm) panel (the interval None where a row has none)."""
    curves: dict[tuple[str, str], list] = {}
    for r in rows:
        if (r.metric, r.norm) == panel:
            point = (r.eps, r.accuracy, r.ci_low, r.ci_high)
            curves.setdefault((r.attack, r.gradient), []).append(point)
    return {k: sorted(v, key=lambda p: p[0]) for k, v in curves.items()}


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
            eps, acc, low, high = zip(*points, strict=True)
            xs = [e * scale for e in eps]
            color = _GRADIENT_COLORS.get(gradient)
            line = ax.plot(
                xs,
                acc,
                marker=_GRADIENT_MARKERS.get(gradient, "o"),
                markersize=4,
                color=color,
                linestyle=_ATTACK_STYLES.get(attack, "-"),
                label=f"{attack} / {gradient}",
            )[0]
            if None not in low and None not in high:  # the 95% interval as a band
                ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.12, linewidth=0)
        ax.set_xlabel("eps (L-inf, /255)" if norm == "linf" else "eps (L2, pixel units)")
        ax.set_ylabel(metric)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="attack / gradient", title_fontsize=7, handlelength=3.5)
        n = rows[0].n if rows else 0
        name = f"{metric}, " if metric != "accuracy" else ""
        bands = ", bands: 95% interval" if any(r.ci_low is not None for r in rows) else ""
        ax.set_title(f"{title + ': ' if title else ''}{name}{norm}, n = {n}{bands}", fontsize=9)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    return path


def log_rows(
    rows: Sequence[RobustnessRow],
    loggers: Iterable,
    *,
    step: int | None = None,
    png: str | Path | None = None,
    prefix: str = "robust",
    run_meta: dict | None = None,
) -> dict[str, float]:
    """Log the rows to Lightning loggers: ``robust/<attack>/<gradient>/eps=<eps>`` metrics to
    every logger (CSVLogger, TensorBoard, ...); to a ``WandbLogger`` also the tables of
    :func:`sslr.loggers.log_robustness` (rule, backbone, dataset, attack, norm, eps, gradient,
    the metric and n; a line chart per norm; eps curves in the history, so runs overlay on the
    dashboard) and the PNG. ``run_meta``: the model's rule, backbone and dataset
    (:func:`sslr.loggers.run_meta_of`). Returns the metrics."""
    from sslr.loggers import log_robustness

    loggers = list(loggers)
    metrics = rows_to_metrics(rows, prefix)
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
    log_robustness(loggers, rows, run_meta or {}, prefix=prefix)
    for logger in loggers:
        if _is_wandb(logger) and png is not None:
            import wandb

            logger.experiment.log({f"{prefix}/plot": wandb.Image(str(png))})
        logger.save()
    return metrics


def _is_wandb(logger) -> bool:
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return False
    return isinstance(logger, WandbLogger)
