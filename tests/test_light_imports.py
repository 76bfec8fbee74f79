"""Reading run folders and CSVs is torch-free: ``import sslr.report`` loads neither torch nor
ART (about 6 s between them), nor Lightning. Checked in a fresh interpreter, since this one has
imported them already."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "art", "lightning")


@pytest.mark.parametrize("module", ["sslr.report", "sslr.errors", "sslr.atomic", "sslr.results"])
def test_light_modules_import_no_torch_nor_art(module):
    code = (
        f"import json, sys, {module}\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_user_errors_are_still_there_when_asked_for():
    from sslr.data import DataError as data_error
    from sslr.errors import USER_ERRORS, DataError, UserError

    assert data_error is DataError
    assert UserError in USER_ERRORS and DataError in USER_ERRORS
    assert any(e.__name__ == "MisconfigurationException" for e in USER_ERRORS)
