"""``make demo``: the whole story on Digits, on the CPU, in a few minutes.

The demo is the grid file configs/grid/quickstart_demo.yaml (run by ``sslr grid`` as any grid
is: resumable, with its progress lines) plus the table it prints:

1. BP pretraining of resnet18 on scikit-learn's bundled digits (configs/quickstart.yaml);
2. fine-tuning from that checkpoint with bp and with usf, same budget and seed;
3. the attack suite on both: PGD L-inf at two epsilons through each gradient source;
4. a table of clean and robust accuracy.

Into runs/demo/ (a second run skips what is done). ``python -m sslr.demo --help`` lists the
knobs, which replace the grid file's values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from sslr.errors import UserError
from sslr.packaged import config_dir
from sslr.results import read_rows

DEMO_GRID = config_dir() / "grid" / "quickstart_demo.yaml"  # in the checkout or the wheel
SOURCES = ("rule", "exact", "transfer")

HOW_TO_READ = (
    "How to read it: `rule` attacks with the model's own backward (for usf the sign-feedback\n"
    "pseudo-gradient, the paper's threat model); `exact` attacks the same weights with the\n"
    "true gradient; `transfer` uses examples made on the bp model (bp has none: its own\n"
    "would be its `exact` attack; shown as –). A usf gain that holds under `rule` but vanishes\n"
    "under `exact` is gradient masking, not robustness."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sslr demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo", help="folder of the runs (default runs/demo)")
    parser.add_argument("--pretrain-epochs", type=int, help="default: the grid file's (4)")
    parser.add_argument("--finetune-epochs", type=int, help="default: the grid file's (2)")
    parser.add_argument("--eps", type=float, nargs=2, help="in 1/255 units (default 8 16)")
    parser.add_argument("--n", type=int, help="images attacked per model (default 200)")
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    import sslr.cli  # noqa: F401  (Lightning sets its loggers' levels on import: quiet them after)
    from sslr.grid import GridError, load_grid, run_grid

    for name in ("lightning.pytorch", "lightning.fabric", "sslr"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")  # a demo prints its table, not library deprecations
    start = time.time()
    try:
        grid = _with_knobs(load_grid(DEMO_GRID, out=args.out), args)
        run_grid(grid)
    except (GridError, UserError) as err:
        print(f"sslr demo: error: {err}", file=sys.stderr)
        return 2
    print()
    print(demo_table(grid.out, grid.backbones[0], grid.rules, grid.suite["eps"]))
    print()
    print(HOW_TO_READ)
    print(
        f"\nRuns, checkpoints, robustness.csv and plots: {grid.out}  ({time.time() - start:.0f} s)"
    )
    return 0


def _with_knobs(grid, args):
    """The grid file's values, replaced by the command line's where it gives one."""
    suite = dict(grid.suite)
    if args.eps is not None:
        suite["eps"] = [0.0, *(e / 255 for e in args.eps)]
    if args.n is not None:
        suite["n_samples"] = args.n
    changes = {"suite": suite}
    if args.pretrain_epochs is not None:
        changes["pretrain_epochs"] = args.pretrain_epochs
    if args.finetune_epochs is not None:
        changes["finetune_epochs"] = args.finetune_epochs
    return dataclasses.replace(grid, **changes)


def demo_table(out: Path, backbone: str, rules, eps: list[float]) -> str:
    """Clean test accuracy (the fine-tune's marker) and PGD accuracy per gradient source and
    eps (its robustness.csv), one row per rule, as a Markdown table."""
    shown = [round(e * 255) for e in eps if e > 0]
    head = ["fine-tuning", "clean"] + [f"PGD {e}/255 {s}" for e in shown for s in SOURCES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rule in rules:
        run = Path(out) / backbone / rule
        clean = json.loads((run / "done.json").read_text())["metrics"]["test/acc"]
        robust = {
            (r.gradient, round(r.eps * 255)): r.accuracy for r in read_rows(run / "robustness.csv")
        }
        cells = [rule, f"{clean:.3f}"]
        for e in shown:
            for s in SOURCES:
                value = robust.get((s, e))  # bp has no transfer rows: its own examples
                cells.append("–" if value is None else f"{value:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
