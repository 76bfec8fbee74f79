"""Robustness curves for `sslr report`: each rule's accuracy (or mAP) against epsilon, with
its 95% interval as a band.

One figure per (task, dataset, backbone[, bits], norm[, metric]) and in it one panel per
attack: the worst case first (the per-image worst over every attack and gradient source, the
number to quote), then each attack under each gradient source (`pgd-10 · rule`, `pgd-10 ·
exact`, ...), every rule overlaid, so a rule whose curve only stays high under its own
pseudo-gradient (`rule`) but falls under `exact` or `transfer` shows gradient masking at a
glance. The band is the interval robustness.csv gives (`ci_low`, `ci_high`); with several
seeds the line is the mean over seeds and the band spans every seed's interval. Figures are
drawn on a bare matplotlib `Figure` (Agg canvas): no pyplot state, no display needed.
"""

from __future__ import annotations

import math
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
    WORST,
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
    "dfa": {"color": "tab:brown", "marker": "P"},
    "ldfa": {"color": "tab:pink", "marker": "h"},
    "kp": {"color": "tab:red", "marker": "X"},
    "wm": {"color": "tab:purple", "marker": "*"},
}
_OTHER_COLORS = ("tab:olive", "tab:cyan", "gold", "navy", "teal")

# A point: (eps, value, interval low, interval high), the interval None where unknown.
Point = tuple[float, float, float | None, float | None]
Curves = Mapping[str, Sequence[Point]]  # rule -> points, eps ascending
NORM_ORDER = ("Linf", "L2", "L1")
COLUMNS = 4  # panels per row


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
    """Draw one figure: a panel per attack (in the given order), a line per rule with its
    interval band where the points have one."""
    rules = list(dict.fromkeys(rule for curves in panels.values() for rule in curves))
    others = iter(_OTHER_COLORS * (len(rules) // len(_OTHER_COLORS) + 1))
    styles = {r: RULE_STYLES.get(r) or {"color": next(others), "marker": "x"} for r in rules}
    ncols = min(COLUMNS, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    figure = Figure(figsize=(3.3 * ncols + 1.4, 2.9 * nrows + 0.8), layout="constrained")
    grid = figure.subplots(nrows, ncols, sharey=True, squeeze=False)
    axes = [ax for row in grid for ax in row]
    handles = {}
    for ax, (name, curves) in zip(axes, panels.items(), strict=False):
        for rule, points in curves.items():
            xs = [p[0] for p in points]
            (handles[rule],) = ax.plot(
                xs, [p[1] for p in points], label=rule, linewidth=1.5, **styles[rule]
            )
            banded = [p for p in points if p[2] is not None and p[3] is not None]
            if banded:
                ax.fill_between(
                    [p[0] for p in banded],
                    [p[2] for p in banded],
                    [p[3] for p in banded],
                    color=styles[rule]["color"],
                    alpha=0.15,
                    linewidth=0,
                )
        ticks = sorted({p[0] for points in curves.values() for p in points})
        ax.set_xticks(ticks, [format_x(eps) for eps in ticks], rotation=45, fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("ε")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for row in grid:
        row[0].set_ylabel(ylabel)
    figure.legend(
        [handles[r] for r in rules], rules, title="rule", loc="outside right upper", fontsize=8
    )
    figure.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    return path


def _mean_curve(by_seed: Mapping) -> list[Point]:
    """Per eps, the mean over seeds; the band one seed's interval, or the span of every
    seed's (none unless every seed has one)."""
    at: dict[float, list[Point]] = defaultdict(list)
    for points in by_seed.values():
        for point in points:
            at[point[0]].append(point)
    curve = []
    for eps in sorted(at):
        found = at[eps]
        value = sum(p[1] for p in found) / len(found)
        known = all(p[2] is not None and p[3] is not None for p in found)
        low = min(p[2] for p in found) if known else None
        high = max(p[3] for p in found) if known else None
        curve.append((eps, value, low, high))
    return curve


def draw_figures(group: tuple, records: Sequence[Record], directory: Path, stem: str) -> list[Path]:
    """The robustness figures of one table, named `<stem>_<task>_<dataset>_<backbone>[_<bits>bits]
    _<norm>[_<metric>].png`: one per norm (and hashing metric), a panel per attack.

    A curve without its own eps-0 point starts at the rule's eps-0 value of the same attack
    under another gradient source (clean on the attack subset, with its interval), else, when
    the attack measures the clean metric, at the run's clean value from metrics.csv.
    """
    task, dataset, backbone, bits = group
    # (norm, metric) -> (attack, steps, gradient) -> rule -> seed -> points
    figures: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    start: dict[tuple, Point] = {}  # (attack, steps, norm, metric, rule, seed) -> eps-0 point
    seeds: dict[str, set] = defaultdict(set)
    ordered = sorted(records, key=lambda r: order_key(r.gradient, GRADIENT_ORDER))
    for r in ordered:
        seeds[r.rule].add(r.seed)
        if r.attack == CLEAN:
            continue
        point = (r.eps, r.value, r.ci_low, r.ci_high)
        figures[r.norm, r.metric][r.attack, r.steps, r.gradient][r.rule][r.seed].append(point)
        if r.eps == 0:
            start.setdefault((r.attack, r.steps, r.norm, r.metric, r.rule, r.seed), point)
    clean = {(r.rule, r.seed): r.value for r in records if r.attack == CLEAN}
    paths = []
    norm_order = {n: i for i, n in enumerate(NORM_ORDER)}
    for norm, metric in sorted(figures, key=lambda k: (norm_order.get(k[0], 9), k)):
        by_panel = figures[norm, metric]
        panels = {}
        order = sorted(
            by_panel,
            key=lambda k: (k[0] != WORST, k[0], k[1] or 0, order_key(k[2], GRADIENT_ORDER)),
        )
        for attack, steps, gradient in order:
            curves = {}
            by_rule = by_panel[attack, steps, gradient]
            for rule in sorted(by_rule, key=lambda r: order_key(r, RULE_ORDER)):
                for seed, points in by_rule[rule].items():
                    zero = start.get((attack, steps, norm, metric, rule, seed))
                    if zero is None and metric == CLEAN_METRIC[task] and (rule, seed) in clean:
                        zero = (0.0, clean[rule, seed], None, None)
                    if zero is not None and all(p[0] != 0 for p in points):
                        points.append(zero)
                    points.sort(key=lambda p: p[0])
                curves[rule] = _mean_curve(by_rule[rule])
            label = attack_label(attack, steps)
            panels["worst case" if attack == WORST else f"{label} · {gradient}"] = curves
        parts = [stem, task, dataset, backbone]
        parts += [f"{bits}bits"] if task == "hashing" else []
        parts += [norm] + ([metric] if task == "hashing" else [])
        path = directory / ("_".join(_slug(str(p)) for p in parts) + ".png")
        several = any(len(s) > 1 for s in seeds.values())
        title = f"{group_title(group)} · {norm}" + (f" ({metric})" if task == "hashing" else "")
        title += "\nbands: 95% intervals" + (
            " (several seeds: the line their mean, the band every seed's)" if several else ""
        )
        ylabel = "accuracy" if metric == "acc" else metric
        paths.append(plot_robustness(path, title, panels, ylabel=ylabel))
    return paths
