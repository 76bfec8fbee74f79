"""Output a user reads: third-party notices a user of ``sslr`` cannot act on, filtered out.

Lightning advertises its cloud products on every fit ("💡 Tip: ... litlogger / litmodels"),
tells that the task's checkpoint callbacks replace its default one (sslr's tasks do that on
purpose), and torch's pytree warns about a deprecation inside Lightning. None of it is about the
user's run, so it is dropped; every other message and warning is kept. Lightning has no switch
for these (they are ``rank_zero_info`` calls), hence a logging filter.
"""

from __future__ import annotations

import logging
import os
import warnings

_DROPPED = (
    "💡 Tip:",
    "The following callbacks returned in `LightningModule.configure_callbacks` will override",
)
# The loggers Lightning's rank_zero_info writes through (the last import sets which one).
_RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)


class _DropNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_DROPPED)


_FILTER = _DropNotices()


def quiet_third_party() -> None:
    """Install the filters (idempotent)."""
    # Lightning's CLI calls jsonargparse APIs that jsonargparse has deprecated.
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )
    # sslr test / validate log into their own folder, so Lightning notes that ModelCheckpoint's
    # folder differs from the fit's: true, intended, and nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
    if not os.environ.get("SSLR_DEBUG"):
        warnings.formatwarning = _one_line  # SSLR_DEBUG=1 shows the source line as Python does


def _one_line(message, category, filename, lineno, line=None) -> str:
    # A warning as one line a user reads, without the source line Python prints under it.
    return f"warning: {message}\n"
