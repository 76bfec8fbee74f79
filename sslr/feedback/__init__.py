"""Feedback learning rules: layers whose backward sends the error through B instead of W.

Rules (``list_rules()``): bp (B = W, the control), fa (fixed random B), usf (s*sign(W)),
frsf (|M|*sign(W), M fixed), brsf (|M|*sign(W), M redrawn per training batch), kp
(Kolen-Pollack: B takes W's updates, B - W decays) and wm (weight mirror: B learns W from the
layer's response to noise); kp and wm learn B through ``FeedbackLearning`` around an
optimizer's steps (:mod:`sslr.feedback.learning`). Convert any
torchvision model with ``convert_model`` (keeps its weights), switch with ``set_rule``, get
true gradients with ``exact_gradients``, redraw brsf per forward with ``resampling`` and
measure B against W with ``alignment``. Imports torch only.
"""

from .alignment import alignment
from .context import exact_gradients, resampling
from .convert import convert_model, feedback_layers, set_rule
from .layers import FeedbackConv2d, FeedbackLinear
from .learning import FeedbackLearning, Mirror
from .rule_state import FeedbackLayer
from .rules import RuleName, ScaleName, list_rules, list_scales

__all__ = [
    "FeedbackConv2d",
    "FeedbackLayer",
    "FeedbackLearning",
    "FeedbackLinear",
    "Mirror",
    "RuleName",
    "ScaleName",
    "alignment",
    "convert_model",
    "exact_gradients",
    "feedback_layers",
    "list_rules",
    "list_scales",
    "resampling",
    "set_rule",
]
