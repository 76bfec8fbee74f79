"""Does sslr's APGD break the same images as the reference code? Image by image.

sslr's ``apgd`` (CE and DLR loss, L-inf and L2) and the reference's ``APGDAttack.attack_single_run``
(fra31/auto-attack, ``autopgd_base.py``) run from the same random start (sslr's, passed to the
reference as ``x_init``) on the same images of a small CNN trained on scikit-learn's Digits (the
attack tests' fixture model, 16 px, trained here in seconds), at 25 iterations (AutoAttack
``fast``) and 100 (``standard``). The table counts the images each leaves unbroken and those
broken by one and not the other; with the same start and the same step-size schedule both must
follow the same iterates, up to floating-point ties.

The reference is imported from a checkout of fra31/auto-attack given by ``--reference``:

    git clone https://github.com/fra31/auto-attack /tmp/auto-attack   # or any copy of autoattack/*.py
    .venv/bin/python benchmarks/apgd_reference.py --reference /tmp/auto-attack --out benchmarks/results/apgd_reference_cpu.md
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.attacks.conftest import PixelCNN, digits_tensors, train  # noqa: E402

apgd_module = importlib.import_module("sslr.attacks.apgd")  # the module (the package exports
# the function under the same name)
EPS = {"linf": 12 / 255, "l2": 0.75}


def sslr_run(model, x, y, *, eps, norm, loss, steps, seed):
    """sslr's APGD (one restart) and the random start it drew."""
    starts = []
    original = apgd_module._random_start

    def keep(*args, **kwargs):
        start = original(*args, **kwargs)
        starts.append(start.clone())
        return start

    apgd_module._random_start = keep
    try:
        out = apgd_module.apgd(
            model, x, y, eps=eps, norm=norm, loss=loss, steps=steps, seed=seed, num_classes=10
        )
    finally:
        apgd_module._random_start = original
    return out.success, starts[0]


def reference_run(model, x, y, x_init, *, eps, norm, loss, steps):
    from autoattack.autopgd_base import APGDAttack

    attack = APGDAttack(
        model, n_iter=steps, norm={"linf": "Linf", "l2": "L2"}[norm], n_restarts=1, eps=eps,
        seed=0, loss=loss, rho=0.75, device=x.device,
    )  # fmt: skip
    attack.init_hyperparam(x)
    _, robust, _, _ = attack.attack_single_run(x, y, x_init=x_init)
    return ~robust.bool()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="a checkout of fra31/auto-attack")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if not (Path(args.reference) / "autoattack" / "autopgd_base.py").is_file():
        parser.error(f"{args.reference} holds no autoattack/autopgd_base.py: pass a checkout")
    sys.path.insert(0, str(Path(args.reference).resolve()))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    (x_train, y_train), (x_test, y_test) = digits_tensors()
    model = train(PixelCNN(), x_train, y_train)
    x, y = x_test[: args.images], y_test[: args.images]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    clean = correct.float().mean().item()
    x, y = x[correct], y[correct]  # the images both attack (sslr skips misclassified ones)
    lines = [
        "# sslr's APGD against the reference code, image by image",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'CPU'}, torch {torch.__version__}, "
        f"1 thread. Digits fixture CNN, the {len(y)} correctly classified of the first {args.images} "
        f"test images (clean accuracy {clean:.3f}); the same "
        "random start for both (sslr's, seed "
        f"{args.seed}). Command: `.venv/bin/python benchmarks/apgd_reference.py --reference "
        "/tmp/auto-attack`.",
        "",
        "| loss | norm | eps | iterations | sslr robust | reference robust | broken by sslr only | by the reference only |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for loss in ("ce", "dlr"):
        for norm, eps in EPS.items():
            for steps in (25, 100):
                ours, start = sslr_run(
                    model, x, y, eps=eps, norm=norm, loss=loss, steps=steps, seed=args.seed
                )
                theirs = reference_run(
                    model, x, y, start, eps=eps, norm=norm, loss=loss, steps=steps
                )
                row = (
                    f"| {loss} | {norm} | {eps:.4g} | {steps} | {1 - ours.float().mean():.3f} | "
                    f"{1 - theirs.float().mean():.3f} | {int((ours & ~theirs).sum())} | "
                    f"{int((theirs & ~ours).sum())} |"
                )
                print(row, flush=True)
                lines.append(row)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
