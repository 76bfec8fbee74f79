"""The gradient-masking verdict: the signs of Athalye et al. 2018 ("Obfuscated gradients give
a false sense of security") and Carlini et al. 2019 ("On evaluating adversarial robustness"),
read from the result rows of one model instead of by eye, each with its numbers and a noise
margin. Standard library only, so that reports can run it without torch.

A row is a dict or an object with ``attack``, ``norm``, ``eps``, ``gradient``, ``accuracy`` (or
``value``) and ``n`` (images or queries behind the value), and optionally ``metric``
(``accuracy`` by default; ``map`` or ``t-map`` for hashing). The checks, one :class:`Check` each
(``check``, ``value``, ``threshold``, ``flagged``, and where it was worst):

- ``rule_vs_exact``: the rule's own gradient leaves a higher accuracy than the exact gradient
  of the same weights (value: the largest gap, rule minus exact, over attack, norm and eps).
- ``blackbox_beats_whitebox``: a black-box attack (Square, or a transfer from a surrogate)
  leaves a lower accuracy than the strongest white-box attack along the rule.
- ``iterative_vs_single_step``: an iterative attack (PGD, APGD) leaves a higher accuracy than
  single-step FGSM with the same gradient.
- ``large_eps``: the lowest accuracy at the largest eps is not near zero (only judged when that
  eps reaches ``large_eps``, e.g. 64/255 L-inf; otherwise reported as not measured).
- ``monotonic``: accuracy rises with eps somewhere along a curve (attack, norm, gradient).
- ``degenerate_gradients``: the share of input gradients that are all zero or not finite
  (given as a number by whoever computed the gradients).

The noise margin of a comparison is ``z`` binomial standard errors of ``n``, at its worst case
p = 1/2: z * 0.5 / sqrt(n) (z = 2 by default), so that two runs on the same n images are not
told apart by chance. Where the per-image outcomes of the cells are given (``outcomes``, as
``sslr attack`` has them), ``rule_vs_exact`` and ``blackbox_beats_whitebox`` use a paired test
instead, since both cells attacked the same images: the exact McNemar test on the images that
one cell broke and the other did not (hashing: Wilcoxon's signed-rank test on per-query APs),
Bonferroni-corrected over the pairs compared; flagged when the gap has the wrong sign and the
corrected p-value is below ``alpha`` (0.05). The ``test`` column says which was used. For hashing metrics (``map``, ``t-map``) only ``rule_vs_exact``,
``monotonic`` and ``large_eps`` apply; ``t-map`` (targeted: the attack raises it) is read with
the sign turned.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

SINGLE_STEP = frozenset({"fgsm"})
AGGREGATES = frozenset({"autoattack", "worst"})
BLACK_BOX = frozenset({"square"})
RAISED_BY_ATTACK = frozenset({"t-map"})  # metrics a (targeted) attack drives up
DEFAULT_LARGE_EPS = {"linf": 64 / 255, "l2": 4.0}
# the value at the largest eps above which an attack has failed "near zero"
# (for t-map, which an attack raises: the value it must at least reach)
DEFAULT_FLOOR = {"accuracy": 0.05, "map": 0.2, "t-map": 0.5}
CHECKS = (
    "rule_vs_exact",
    "blackbox_beats_whitebox",
    "iterative_vs_single_step",
    "large_eps",
    "monotonic",
    "degenerate_gradients",
)
HASHING_CHECKS = ("rule_vs_exact", "large_eps", "monotonic")


@dataclass(frozen=True)
class Check:
    """One line of the verdict (a row of ``masking.csv``): ``value`` against ``threshold``;
    ``flagged`` when it crosses it. ``where`` names the cell the value comes from (or why the
    check could not be measured, then ``value`` is NaN and ``flagged`` False)."""

    check: str
    value: float
    threshold: float
    flagged: bool
    metric: str = "accuracy"
    where: str = ""
    test: str = "2-SE margin"  # or the paired test: "exact McNemar", "Wilcoxon signed-rank"
    p_value: float | None = None  # the paired test's Bonferroni-corrected p-value

    def as_row(self) -> dict:
        return {
            "check": self.check,
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "flagged": self.flagged,
            "where": self.where,
            "test": self.test,
            "p_value": "" if self.p_value is None else self.p_value,
        }


@dataclass(frozen=True)
class _Row:
    attack: str
    norm: str
    eps: float
    gradient: str
    value: float
    n: int
    metric: str


def _field(row, name: str, default=None):
    if isinstance(row, Mapping):
        return row.get(name, default)
    return getattr(row, name, default)


def _rows(rows: Iterable) -> list[_Row]:
    out = []
    for row in rows:
        value = _field(row, "accuracy")
        if value is None:
            value = _field(row, "value")
        n = _field(row, "n")
        if value is None or n is None:
            raise ValueError(f"A result row needs an accuracy (or value) and n: got {row!r}")
        out.append(
            _Row(
                attack=str(_field(row, "attack", "")).lower(),
                norm=str(_field(row, "norm", "")).lower(),
                eps=float(_field(row, "eps", 0.0)),
                gradient=str(_field(row, "gradient", "") or "none").lower(),
                value=float(value),
                n=int(n),
                metric=str(_field(row, "metric", None) or "accuracy").lower(),
            )
        )
    return out


def noise_margin(n: int, z: float = 2.0) -> float:
    """``z`` worst-case binomial standard errors of a proportion over ``n``: z * 0.5/sqrt(n)."""
    return z * 0.5 / math.sqrt(max(int(n), 1))


def _member(attack: str) -> str:
    """An ensemble member's own name (``autoattack/square`` -> ``square``)."""
    return attack.rsplit("/", 1)[-1]


def _iterative(attack: str) -> bool:
    return _member(attack) == "pgd" or _member(attack).startswith("apgd")


def _black_box(row: _Row) -> bool:
    return _member(row.attack) in BLACK_BOX or row.gradient == "transfer"


def _white_box(row: _Row) -> bool:
    return not _black_box(row) and row.attack not in AGGREGATES and row.gradient != "none"


def _cell(row: _Row) -> str:
    return f"{row.attack}/{row.gradient} {row.norm} eps={row.eps:.4g}"


def _gap(pairs, name, metric, z, outcomes, alpha) -> Check:
    """The paired test where the outcomes allow it, else the noise margin."""
    found = _paired_gap(pairs, name, metric, outcomes, alpha) if outcomes else None
    return found or _worst_gap(pairs, name, metric, z)


def _worst_gap(pairs, name, metric, z) -> Check:
    """The largest gap ``first.value - second.value`` over ``pairs`` of (first, second, label),
    where the first should not exceed the second: beyond the noise margin it is flagged."""
    best = None
    for high, low, label in pairs:
        gap = high.value - low.value
        if best is None or gap > best[0]:
            best = (gap, noise_margin(min(high.n, low.n), z), label)
    if best is None:
        return Check(name, math.nan, math.nan, False, metric, "not measured: no rows to compare")
    gap, margin, label = best
    return Check(name, gap, margin, gap > margin, metric, label)


def _paired_gap(pairs, name, metric, outcomes, alpha) -> Check | None:
    """The paired version of :func:`_worst_gap`, when every pair's cells have per-image
    outcomes (else None): each pair tested image by image, Bonferroni over the pairs; the pair
    reported is the most significant one whose gap has the wrong sign (else the largest gap)."""
    from sslr.stats import paired

    keyed = []
    for high, low, label in pairs:
        a, b = outcomes.get(_key(high)), outcomes.get(_key(low))
        if a is None or b is None or len(a) != len(b):
            return None
        if metric in RAISED_BY_ATTACK:  # read with the sign turned, as the values are
            a, b = [1.0 - v for v in a], [1.0 - v for v in b]
        keyed.append((high.value - low.value, paired(a, b, metric), label))
    if not keyed:
        return None
    m = len(keyed)
    wrong = [k for k in keyed if k[0] > 0]
    gap, test, label = (
        min(wrong, key=lambda k: k[1].p_value) if wrong else max(keyed, key=lambda k: k[0])
    )
    p = min(1.0, test.p_value * m)
    detail = f"{label}; {test.test} p = {p:.3g}" + (
        f" (Bonferroni over {m} pairs)" if m > 1 else ""
    )
    if test.only_first is not None:
        detail += (
            f"; images correct under the first cell only: {test.only_first}, under the "
            f"second only: {test.only_second}"
        )
    return Check(name, gap, alpha, gap > 0 and p < alpha, metric, detail, test.test, p)


def _key(row: _Row) -> tuple:
    return (row.attack, row.norm, row.gradient, row.eps)


def _signed(rows: list[_Row], metric: str) -> list[_Row]:
    """Rows whose value falls under a stronger attack (t-map turned: 1 - value)."""
    if metric not in RAISED_BY_ATTACK:
        return rows
    return [_Row(r.attack, r.norm, r.eps, r.gradient, 1.0 - r.value, r.n, r.metric) for r in rows]


def verdict(
    rows: Iterable,
    *,
    degenerate_share: float | None = None,
    degenerate_threshold: float = 0.05,
    z: float = 2.0,
    large_eps: Mapping[str, float] | None = None,
    floor: Mapping[str, float] | None = None,
    outcomes: Mapping[tuple, Sequence[float]] | None = None,
    alpha: float = 0.05,
) -> list[Check]:
    """The masking checks over the result rows of one model, one :class:`Check` per check and
    metric (see the module docstring). ``degenerate_share``: the share (0..1) of input
    gradients that were all zero or not finite, if measured. ``large_eps`` (per norm) and
    ``floor`` (per metric) set what counts as a large eps and as near zero. ``outcomes``: per
    cell ``(attack, norm, gradient, eps)`` its per-image values (1/0 correct; hashing: each
    query's AP), for the paired tests at level ``alpha``."""
    if z <= 0:
        raise ValueError(f"z (standard errors of the noise margin) must be > 0, got {z}")
    large_eps = {**DEFAULT_LARGE_EPS, **(large_eps or {})}
    floor = {**DEFAULT_FLOOR, **(floor or {})}
    parsed = _rows(rows)
    checks: list[Check] = []
    for metric in sorted({r.metric for r in parsed}):
        mrows = _signed([r for r in parsed if r.metric == metric], metric)
        attacked = [r for r in mrows if r.eps > 0]
        names = CHECKS if metric == "accuracy" else HASHING_CHECKS
        for name in names:
            if name == "rule_vs_exact":
                exact = {(r.attack, r.norm, r.eps): r for r in attacked if r.gradient == "exact"}
                pairs = [
                    (r, exact[k], f"{_cell(r)} vs exact")
                    for r in attacked
                    if r.gradient == "rule" and (k := (r.attack, r.norm, r.eps)) in exact
                ]
                checks.append(_gap(pairs, name, metric, z, outcomes, alpha))
            elif name == "blackbox_beats_whitebox":
                pairs = []
                for norm, eps in sorted({(r.norm, r.eps) for r in attacked}):
                    here = [r for r in attacked if (r.norm, r.eps) == (norm, eps)]
                    white = [r for r in here if _white_box(r) and r.gradient == "rule"]
                    black = [r for r in here if _black_box(r)]
                    if white and black:
                        w = min(white, key=lambda r: r.value)
                        b = min(black, key=lambda r: r.value)
                        pairs.append((w, b, f"{_cell(b)} vs {_cell(w)}"))
                checks.append(_gap(pairs, name, metric, z, outcomes, alpha))
            elif name == "iterative_vs_single_step":
                single = {
                    (r.norm, r.eps, r.gradient): r for r in attacked if r.attack in SINGLE_STEP
                }
                pairs = [
                    (r, single[k], f"{_cell(r)} vs fgsm")
                    for r in attacked
                    if _iterative(r.attack) and (k := (r.norm, r.eps, r.gradient)) in single
                ]
                checks.append(_worst_gap(pairs, name, metric, z))
            elif name == "large_eps":
                checks.append(_large_eps(attacked, metric, large_eps, floor, z))
            elif name == "monotonic":
                checks.append(_monotonic(mrows, metric, z))
            else:
                if degenerate_share is None:
                    checks.append(
                        Check(name, math.nan, degenerate_threshold, False, metric, "not measured")
                    )
                else:
                    share = float(degenerate_share)
                    checks.append(
                        Check(
                            name,
                            share,
                            degenerate_threshold,
                            share > degenerate_threshold,
                            metric,
                            "share of input gradients all zero or not finite",
                        )
                    )
    return checks


def _large_eps(rows: list[_Row], metric: str, large_eps, floor, z) -> Check:
    """``rows`` are turned for raised metrics (1 - t-map); the check reports the metric's own
    value."""
    judged = []
    for norm in sorted({r.norm for r in rows}):
        here = [r for r in rows if r.norm == norm]
        top = max(r.eps for r in here)
        if norm in large_eps and top >= large_eps[norm] * (1 - 1e-9):
            judged.append(min((r for r in here if r.eps == top), key=lambda r: r.value))
    base = floor.get(metric, DEFAULT_FLOOR["accuracy"])
    if not judged:
        wanted = ", ".join(f"{k} eps >= {v:.4g}" for k, v in sorted(large_eps.items()))
        return Check("large_eps", math.nan, base, False, metric, f"not measured: add {wanted}")
    row = max(judged, key=lambda r: r.value)  # the norm where the attack got least far
    margin = noise_margin(row.n, z)
    if metric in RAISED_BY_ATTACK:  # the attack must raise it to at least the floor
        value, threshold = 1.0 - row.value, base - margin
        return Check("large_eps", value, threshold, value < threshold, metric, _cell(row))
    threshold = base + margin
    return Check("large_eps", row.value, threshold, row.value > threshold, metric, _cell(row))


def _monotonic(rows: list[_Row], metric: str, z) -> Check:
    """The largest rise of the value from a smaller eps to a larger one along any curve."""
    best = None
    for key in sorted({(r.attack, r.norm, r.gradient) for r in rows}):
        curve = sorted(
            (r for r in rows if (r.attack, r.norm, r.gradient) == key), key=lambda r: r.eps
        )
        low = None
        for r in curve:
            if low is not None:
                rise = r.value - low.value
                if best is None or rise > best[0]:
                    best = (
                        rise,
                        noise_margin(min(r.n, low.n), z),
                        f"{_cell(r)} vs eps={low.eps:.4g}",
                    )
            if low is None or r.value < low.value:
                low = r
    if best is None:
        return Check("monotonic", math.nan, math.nan, False, metric, "not measured: no curve")
    rise, margin, label = best
    return Check("monotonic", rise, margin, rise > margin, metric, label)


def worst_case(masks: Mapping[object, Sequence[bool]]) -> tuple[float, list[bool]]:
    """The per-image worst case over cells (attack, gradient) at one norm and eps: an image is
    robust only if every cell left it correctly classified. ``masks`` maps each cell to its
    per-image correctness (the same images, in the same order). Returns the worst-case accuracy
    and the per-image mask; it is at most every cell's accuracy."""
    if not masks:
        raise ValueError("worst_case needs at least one cell's per-image results")
    lengths = {len(m) for m in masks.values()}
    if len(lengths) != 1:
        raise ValueError(
            f"Every cell must cover the same images: got per-image results of lengths {sorted(lengths)}"
        )
    n = lengths.pop()
    robust = [all(bool(m[i]) for m in masks.values()) for i in range(n)]
    return (sum(robust) / n if n else math.nan), robust


def flagged(checks: Iterable[Check]) -> list[Check]:
    """The checks that found a sign of masking."""
    return [c for c in checks if c.flagged]


def format_verdict(checks: Sequence[Check]) -> str:
    """A plain-text table of the verdict, flagged checks marked, for the console and logs."""
    lines = [f"{'check':<26} {'metric':<9} {'value':>8} {'threshold':>9}  flag  where"]
    for c in checks:
        lines.append(
            f"{c.check:<26} {c.metric:<9} {c.value:>8.4f} {c.threshold:>9.4f}  "
            f"{'MASK' if c.flagged else ' ok '}  {c.where}"
        )
    n = len(flagged(checks))
    lines.append(
        f"{n} sign{'s' if n != 1 else ''} of gradient masking"
        if n
        else "no sign of gradient masking"
    )
    return "\n".join(lines)
