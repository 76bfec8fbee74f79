"""Robustness curves for `sslr report`: each rule's accuracy (or mAP) against epsilon.

One figure per (task, dataset, backbone[, bits], attack, norm[, metric]) and one panel per
gradient source (rule, exact, eot, transfer, none), so a rule whose curve only stays high under
its own pseudo-gradient (`rule`) but falls under `exact` or `transfer` shows gradient masking at
a glance. Figures are drawn on a bare matplotlib `Figure` (Agg canvas): no pyplot state, no
display needed.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from sslr.atomic import atomic_write_with
from sslr.report_records import (
    CLEAN,
    CLEAN_METRIC,
    GRADIENT_ORDER,
    RULE_ORDER,
    Record,
    attack_label,
    format_eps,
    group_title,
    order_key,
)

RULE_STYLES = {
    "bp": {"color": "black", "marker": "o"},
    "fa": {"color": "0.55", "marker": "v"},
    "usf": {"color": "tab:blue", "marker": "s"},
    "frsf": {"color": "tab:orange", "marker": "^"},
    "brsf": {"color": "tab:green", "marker": "D"},
}
_OTHER_COLORS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")

Curves = Mapping[str, Sequence[tuple[float, float]]]  # rule -> [(eps, value)], eps ascending


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def plot_robustness(
    path: Path,
    title: str,
    panels: Mapping[str, Curves],
    *,
    ylabel: str,
    format_x: Callable[[float], str] = format_eps,
) -> Path:
    """Draw one figure: a panel per gradient source (in the given order), a line per rule."""
    rules = list(dict.fromkeys(rule for curves in panels.values() for rule in curves))
    others = iter(_OTHER_COLORS * (len(rules) // len(_OTHER_COLORS) + 1))
    styles = {r: RULE_STYLES.get(r) or {"color": next(others), "marker": "x"} for r in rules}
    figure = Figure(figsize=(max(3.4 * len(panels) + 1.2, 6.0), 3.6), layout="constrained")
    axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    handles = {}
    for ax, (gradient, curves) in zip(axes, panels.items(), strict=True):
        for rule, points in curves.items():
            xs, ys = zip(*points, strict=True)
            (handles[rule],) = ax.plot(xs, ys, label=rule, linewidth=1.5, **styles[rule])
        ticks = sorted({eps for points in curves.values() for eps, _ in points})
        ax.set_xticks(ticks, [format_x(eps) for eps in ticks], rotation=45, fontsize=8)
        ax.set_title(f"gradient: {gradient}", fontsize=10)
        ax.set_xlabel("ε")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    figure.legend(
        [handles[r] for r in rules], rules, title="rule", loc="outside right upper", fontsize=8
    )
    figure.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    return path


def draw_figures(group: tuple, records: Sequence[Record], directory: Path, stem: str) -> list[Path]:
    """The robustness figures of one table, named `<stem>_<task>_<dataset>_<backbone>_...png`.

    A curve without its own eps-0 point starts at the rule's eps-0 value of the same attack
    under another gradient source (clean on the attack subset), else, when the attack measures
    the clean metric, at the run's clean value from metrics.csv.
    """
    task, dataset, backbone, bits = group
    figures: dict[tuple, dict[str, dict[str, list]]] = defaultdict(lambda: defaultdict(dict))
    start: dict[tuple, float] = {}  # (figure, rule) -> the value at eps 0
    ordered = sorted(records, key=lambda r: order_key(r.gradient, GRADIENT_ORDER))
    for r in ordered:
        if r.attack != CLEAN:
            figure = (attack_label(r.attack, r.steps), r.norm, r.metric)
            figures[figure][r.gradient].setdefault(r.rule, []).append((r.eps, r.value))
            if r.eps == 0:
                start.setdefault((figure, r.rule), r.value)
    clean = {r.rule: r.value for r in records if r.attack == CLEAN}
    for figure in figures:
        for rule, value in clean.items():
            if figure[2] == CLEAN_METRIC[task]:
                start.setdefault((figure, rule), value)
    paths = []
    for (label, norm, metric), by_gradient in sorted(figures.items()):
        panels = {}
        for gradient in sorted(by_gradient, key=lambda g: order_key(g, GRADIENT_ORDER)):
            curves = by_gradient[gradient]
            for rule, points in curves.items():
                zero = start.get(((label, norm, metric), rule))
                if zero is not None and all(eps != 0 for eps, _ in points):
                    points.append((0.0, zero))
                points.sort()
            panels[gradient] = {
                r: curves[r] for r in sorted(curves, key=lambda r: order_key(r, RULE_ORDER))
            }
        parts = [stem, task, dataset, backbone]
        parts += [f"{bits}bits"] if task == "hashing" else []
        parts += [label, norm] + ([metric] if task == "hashing" else [])
        path = directory / ("_".join(_slug(str(p)) for p in parts) + ".png")
        title = f"{group_title(group)}\n{label} {norm}" + (
            f" ({metric})" if task == "hashing" else ""
        )
        ylabel = "accuracy" if metric == "acc" else metric
        paths.append(plot_robustness(path, title, panels, ylabel=ylabel))
    return paths
