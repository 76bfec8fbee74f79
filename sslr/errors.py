"""Errors a user can cause: the CLI prints their message as one line, without a traceback.

Only these count: a ValueError or FileNotFoundError raised while the command runs is a bug and
keeps its traceback. (The CLI turns the ValueErrors the tasks and data modules raise on the
values a config gave them into UserErrors, where it builds them.)
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a missing resource; the message says what is wrong and what to do."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    # Lightning's own word for a bad option, raised once the run has started (after the CLI's
    # checks): the user's to fix.
    errors: list[type[BaseException]] = [UserError, MisconfigurationException]
    from sslr.data.errors import DataError  # datasets absent offline, malformed list files

    errors.append(DataError)
    return tuple(errors)


USER_ERRORS = _user_errors()
