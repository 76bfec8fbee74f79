"""Does sslr's FAB-T break the same images as the reference code? Image by image.

sslr's ``fab_targeted`` and the reference's targeted FAB (fra31/auto-attack, ``fab_pt.py``'s
``FABAttack_PT(targeted=True).perturb``) run with AutoAttack's standard settings (9 targets,
100 iterations each, one restart, alpha_max 0.1, eta 1.05, beta 0.9) on the same images of a
small CNN trained on scikit-learn's Digits (the attack tests' fixture model, 16 px, trained here
in seconds), L-inf and L2 at two eps each. With one restart FAB draws nothing, so both follow
the same iterates up to floating point (sslr computes the projection exactly where the
reference bisects, and lets an image go once it is broken within eps, which changes no
verdict). The table gives each one's robust accuracy over all the images (misclassified ones
count as broken), the difference with its binomial standard error, the images broken by one and
not the other, and the time each took.

The reference is imported from a checkout of fra31/auto-attack given by ``--reference``:

    mkdir -p /tmp/auto-attack && git -C <mirror of fra31/auto-attack> archive HEAD \\
        'autoattack/*.py' | tar -x -C /tmp/auto-attack   # or a clone, or any copy of them
    .venv/bin/python benchmarks/fab_reference.py --reference /tmp/auto-attack \\
        --out benchmarks/results/fab_reference_cpu.md
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sslr.atomic import atomic_write  # noqa: E402
from sslr.attacks import fab_targeted  # noqa: E402
from tests.attacks.conftest import PixelCNN, digits_tensors, train  # noqa: E402

CASES = "linf:8/255,linf:12/255,l2:0.5,l2:0.75"


def _eps(text: str) -> float:
    top, _, bottom = text.partition("/")
    return float(top) / float(bottom or 1)


def sslr_robust(model, x, y, *, eps, norm, steps, targets):
    out = fab_targeted(model, x, y, eps=eps, norm=norm, steps=steps, n_target_classes=targets)
    with torch.no_grad():
        return model(out.x_adv).argmax(dim=1) == y


def reference_robust(model, x, y, *, eps, norm, steps, targets):
    from autoattack.fab_pt import FABAttack_PT

    attack = FABAttack_PT(
        model, norm={"linf": "Linf", "l2": "L2"}[norm], n_restarts=1, n_iter=steps, eps=eps,
        seed=0, targeted=True, n_target_classes=targets, device=x.device,
    )  # fmt: skip
    adv = attack.perturb(x, y)
    with torch.no_grad():
        return model(adv).argmax(dim=1) == y


def timed(fn, **kwargs):
    start = time.perf_counter()
    result = fn(**kwargs)
    return result, time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="a checkout of fra31/auto-attack")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--targets", type=int, default=9)
    parser.add_argument("--cases", default=CASES, help="norm:eps pairs, comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if not (Path(args.reference) / "autoattack" / "fab_pt.py").is_file():
        parser.error(f"{args.reference} holds no autoattack/fab_pt.py: pass a checkout")
    sys.path.insert(0, str(Path(args.reference).resolve()))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    (x_train, y_train), (x_test, y_test) = digits_tensors()
    model = train(PixelCNN(), x_train, y_train)
    x, y = x_test[: args.images], y_test[: args.images]
    n = len(y)
    with torch.no_grad():
        clean = (model(x).argmax(dim=1) == y).float().mean().item()
    rows = []
    for case in args.cases.split(","):
        norm, given = case.split(":")
        eps = _eps(given)
        run = dict(model=model, x=x, y=y, eps=eps, norm=norm, steps=args.steps)
        ours, ours_s = timed(sslr_robust, targets=args.targets, **run)
        theirs, theirs_s = timed(reference_robust, targets=args.targets, **run)
        a, b = ours.float().mean().item(), theirs.float().mean().item()
        p = (a + b) / 2
        se = math.sqrt(2 * max(p * (1 - p), 1 / n) / n)
        rows.append(
            f"| {norm} | {given} ({eps:.4g}) | {a:.3f} | {b:.3f} | {a - b:+.3f} ({se:.3f}) | "
            f"{int((~ours & theirs).sum())} | {int((ours & ~theirs).sum())} | "
            f"{ours_s:.0f} | {theirs_s:.0f} |"
        )
        print(rows[-1], flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    command = " ".join(["benchmarks/fab_reference.py", *(argv or sys.argv[1:])])
    lines = [
        "# sslr's FAB-T against the reference code, image by image",
        "",
        f"- command: `.venv/bin/python {command}`",
        f"- machine: {platform.machine()} CPU, {os.cpu_count()} cores, {args.threads} "
        f"thread(s), torch {torch.__version__}; load average {load:.1f} at the end (other work "
        "shared the machine: the times are indicative only)",
        f"- model: the Digits fixture CNN (16 px), the first {n} test images, clean accuracy "
        f"{clean:.3f}; robust accuracy over all {n} images (misclassified ones count as broken)",
        f"- both: targeted FAB, {args.targets} targets, {args.steps} iterations each, one "
        "restart, alpha_max 0.1, eta 1.05, beta 0.9 (AutoAttack's standard FAB-T)",
        "- difference: sslr minus reference, with its binomial standard error "
        "sqrt(2 p (1 - p) / n) (as if the two were independent; the counts of images broken "
        "by one only are the paired comparison)",
        "",
        "| norm | eps | sslr robust | reference robust | difference (SE) | broken by sslr only "
        "| by the reference only | sslr s | reference s |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|",
        *rows,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        atomic_write(args.out, text)


if __name__ == "__main__":
    main()
