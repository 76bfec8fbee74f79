"""Adversarial robustness of classifiers, measured honestly: FGSM and PGD (L-inf, L2) along a
stated gradient source (``rule``, ``exact``, ``eot``, ``transfer``), the query-based Square
attack, on a fixed, seeded subset; results as ``robustness.csv``, a PNG and logger metrics.

    from sslr.robustness import AttackTarget, SuiteConfig, run_suite
    rows = run_suite(task, datamodule, SuiteConfig(n_samples=500), out_dir=run_dir)
"""

from sslr.robustness.attacks import AttackBoundsError
from sslr.robustness.config import Attack, Backend, GradientSource, Norm, SuiteConfig
from sslr.robustness.gradients import GradientSourceClassifier, gradient_context
from sslr.robustness.guard import TrainModeWarning, attack_mode
from sslr.robustness.outputs import log_rows, metric_name, plot_curves, read_csv, write_csv
from sslr.robustness.results import COLUMNS, RobustnessRow, accuracies
from sslr.robustness.subset import select_subset
from sslr.robustness.suite import clean_accuracy, evaluate, robust_accuracy, run_suite
from sslr.robustness.target import AttackTarget, as_target, load_target

__all__ = [
    "COLUMNS",
    "Attack",
    "AttackBoundsError",
    "AttackTarget",
    "Backend",
    "GradientSource",
    "GradientSourceClassifier",
    "Norm",
    "RobustnessRow",
    "SuiteConfig",
    "TrainModeWarning",
    "accuracies",
    "as_target",
    "attack_mode",
    "clean_accuracy",
    "evaluate",
    "gradient_context",
    "load_target",
    "log_rows",
    "metric_name",
    "plot_curves",
    "read_csv",
    "robust_accuracy",
    "run_suite",
    "select_subset",
    "write_csv",
]
