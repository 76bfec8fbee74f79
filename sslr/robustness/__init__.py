"""The evaluation engine: adversarial robustness of classifiers and hashing models, measured
honestly. One loop (attack x norm x gradient source x eps on a fixed, seeded subset) for both
tasks; attacks from a registry (FGSM, PGD, Square; hashing PGD/HAG/P2P/DHTA), each along a
stated gradient source (``rule``, ``exact``, ``eot``, ``transfer``); results as
``robustness.csv``, a PNG and logger metrics. Checkpoints are loaded by the application
(``sslr.attack_run``), never here.

    from sslr.robustness import SuiteConfig, run_suite
    rows = run_suite(task, datamodule, SuiteConfig(n_samples=500), out_dir=run_dir)
"""

from sslr.results import COLUMNS, RobustnessRow, accuracies

# The built-in attacks register when imported: FGSM, PGD, Square and the hashing attacks, then
# the field's reference attacks (APGD-CE, APGD-T, device Square, AutoAttack), so that
# list_attacks() and error messages name them in this order.
from sslr.robustness import attacks, reference  # noqa: F401
from sslr.robustness.attacks import AttackBoundsError
from sslr.robustness.config import Attack, Backend, GradientSource, Norm, SuiteConfig
from sslr.robustness.gradients import GradientSourceClassifier, gradient_context
from sslr.robustness.guard import TrainModeWarning, attack_mode
from sslr.robustness.hashing import HashingTarget
from sslr.robustness.outputs import log_rows, metric_name, plot_curves, read_csv, write_csv
from sslr.robustness.registry import AttackSpec, get_attack, list_attacks, register_attack
from sslr.robustness.subset import select_subset
from sslr.robustness.suite import (
    PreparedSuite,
    SuiteResult,
    clean_accuracy,
    evaluate,
    prepare_suite,
    robust_accuracy,
    run_cells,
    run_suite,
    suite_evaluation,
)
from sslr.robustness.target import AttackTarget, as_target

__all__ = [
    "COLUMNS",
    "Attack",
    "AttackBoundsError",
    "AttackSpec",
    "AttackTarget",
    "Backend",
    "GradientSource",
    "GradientSourceClassifier",
    "HashingTarget",
    "Norm",
    "RobustnessRow",
    "SuiteConfig",
    "SuiteResult",
    "TrainModeWarning",
    "accuracies",
    "as_target",
    "attack_mode",
    "clean_accuracy",
    "evaluate",
    "get_attack",
    "gradient_context",
    "list_attacks",
    "log_rows",
    "metric_name",
    "plot_curves",
    "read_csv",
    "register_attack",
    "robust_accuracy",
    "run_cells",
    "PreparedSuite",
    "prepare_suite",
    "run_suite",
    "select_subset",
    "suite_evaluation",
    "write_csv",
]
