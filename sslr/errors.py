"""Errors a user can cause: the CLI prints their message as one line, without a traceback.

Only these count: a ValueError or FileNotFoundError raised while the command runs is a bug and
keeps its traceback. (The CLI turns the ValueErrors the tasks and data modules raise on the
values a config gave them into UserErrors, where it builds them.)

This module sits on the bottom floor and imports neither torch nor Lightning, so that the
torch-free side of the application (``sslr report``, :mod:`sslr.atomic`) can import it:
``USER_ERRORS``, which names a Lightning exception, is computed on first use.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a missing resource; the message says what is wrong and what to do."""


class DataError(Exception):
    """Base class of the data errors a user can cause (datasets absent offline, malformed list
    files); :mod:`sslr.data.errors` derives its errors from it and exports it."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    # Lightning's own word for a bad option, raised once the run has started (after the CLI's
    # checks): the user's to fix.
    return (UserError, MisconfigurationException, DataError)


def __getattr__(name: str):
    """``USER_ERRORS``, built when first imported (it imports Lightning)."""
    if name == "USER_ERRORS":
        value = globals()["USER_ERRORS"] = _user_errors()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
