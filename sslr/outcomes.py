"""Per-image outcomes of an attack suite: ``outcomes.json`` in each attack folder, beside
``robustness.csv``, what paired comparisons between runs are made from.

For every cell (attack, norm, eps, gradient; the ``worst`` case included) it keeps what each
image of the seeded subset added to the cell's score, keyed by the image's index in its split:
classification, whether the image was still correctly classified (a string of ``0``/``1``, one
character per image); hashing, each query's AP (``mAP`` cells) or targeted AP (``t-mAP``).
Two runs attacked on the same images (the same split, ``n_samples`` and suite seed) have the
same ``index``, and their cells can be compared image by image (:mod:`sslr.stats`).

Standard library only, like :mod:`sslr.results`: ``sslr report`` reads it without torch.
Written atomically (complete or absent); read strictly (one :class:`ResultsError` naming the
file for anything malformed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sslr.atomic import atomic_write
from sslr.results import ResultsError

FILE = "outcomes.json"
FORMAT = "sslr-outcomes/1"


@dataclass
class Outcomes:
    """The per-image outcomes of one suite: ``index`` (the images' indices in their split,
    ascending) and per cell ``(attack, norm, gradient, eps, metric)`` one value per image, in
    ``index`` order."""

    index: list[int]
    cells: dict[tuple, list[float]] = field(default_factory=dict)
    seed: int | None = None
    path: Path | None = None

    def values(
        self, attack: str, norm: str, gradient: str, eps: float, metric: str | None = None
    ) -> list[float] | None:
        """A cell's per-image values (None when the suite did not run it); eps matched to
        within 1e-9; ``metric`` tells hashing's two worst cases (mAP, t-mAP) apart."""
        for (a, n, g, e, m), found in self.cells.items():
            if (a, n, g) == (attack, norm, gradient) and abs(e - eps) <= 1e-9:
                if metric is None or m == metric:
                    return found
        return None


def write_outcomes(
    path: str | Path,
    index: Sequence[int],
    cells: Mapping[tuple, Sequence[float]],
    seed: int | None = None,
) -> Path:
    """Write ``outcomes.json``: ``cells`` maps (attack, norm, gradient, eps, metric) to the
    per-image values in ``index`` order."""
    path = Path(path)
    records = []
    for (attack, norm, gradient, eps, metric), values in cells.items():
        values = [float(v) for v in values]
        if len(values) != len(index):
            raise ValueError(
                f"cell {attack}/{norm}/{gradient}/eps={eps} has {len(values)} values for "
                f"{len(index)} images"
            )
        if metric == "accuracy":
            encoded: str | list[float] = "".join("1" if v > 0.5 else "0" for v in values)
        else:
            encoded = [round(v, 6) for v in values]
        records.append(
            {"attack": attack, "norm": norm, "gradient": gradient, "eps": float(eps),
             "metric": metric, "values": encoded}
        )  # fmt: skip
    body = {"format": FORMAT, "seed": seed, "index": [int(i) for i in index], "cells": records}
    atomic_write(path, json.dumps(body, separators=(",", ":")) + "\n")
    return path


def read_outcomes(path: str | Path) -> Outcomes:
    """The outcomes of an ``outcomes.json`` (see the module docstring)."""
    path = Path(path)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultsError(
            f"{path} cannot be read as per-image outcomes ({err}): rerun the attack"
        ) from err
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise ResultsError(f"{path} is not an sslr outcomes file (format {FORMAT!r} expected)")
    index = body.get("index")
    if not isinstance(index, list) or not all(isinstance(i, int) for i in index):
        raise ResultsError(f"{path}: 'index' must be a list of image indices")
    found = Outcomes(index=index, seed=body.get("seed"), path=path)
    for k, record in enumerate(body.get("cells") or []):
        try:
            values = record["values"]
            if isinstance(values, str):
                if set(values) - {"0", "1"}:
                    raise ValueError("a string of 0 and 1 expected")
                values = [float(c) for c in values]
            else:
                values = [float(v) for v in values]
            if len(values) != len(index):
                raise ValueError(f"{len(values)} values for {len(index)} images")
            key = (
                str(record["attack"]),
                str(record["norm"]),
                str(record["gradient"]),
                float(record["eps"]),
                str(record["metric"]),
            )
            found.cells[key] = values
        except (KeyError, TypeError, ValueError) as err:
            raise ResultsError(f"{path}: cell {k} is malformed ({err}): rerun the attack") from err
    return found
