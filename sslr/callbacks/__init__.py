"""Lightning callbacks of sslr."""

from sslr.callbacks.alignment_monitor import AlignmentMonitor
from sslr.callbacks.robustness import RobustnessEvaluation
from sslr.callbacks.rule_switch import RuleSwitch

__all__ = ["AlignmentMonitor", "RobustnessEvaluation", "RuleSwitch"]
