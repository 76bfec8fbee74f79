"""sslr.atomic: files complete or absent, one writer per folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sslr.atomic import FolderLock, atomic_open, atomic_write, atomic_write_with
from sslr.errors import UserError


def test_atomic_write_text_and_bytes(tmp_path):
    atomic_write(tmp_path / "a.csv", "x,y\n1,2\n")
    atomic_write(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "a.csv").read_text() == "x,y\n1,2\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.bin"]  # no temporaries


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "r.csv"
    atomic_write(target, "old\n")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("half a ne")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]


def test_atomic_write_with_keeps_the_suffix(tmp_path):
    seen = []

    def writer(tmp):
        seen.append(os.path.splitext(tmp)[1])
        with open(tmp, "w") as handle:
            handle.write("png bytes")

    atomic_write_with(tmp_path / "plot.png", writer)
    assert seen == [".png"]
    assert (tmp_path / "plot.png").read_text() == "png bytes"


def test_unwritable_or_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        atomic_write(tmp_path / "missing" / "a.csv", "x")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that ignores permissions")
        with pytest.raises(UserError, match="not writable"):
            atomic_write(ro / "a.csv", "x")
    finally:
        ro.chmod(0o755)


def test_a_second_writer_is_refused(tmp_path):
    with FolderLock(tmp_path, "run folder"):
        # Another process cannot take it (flock locks are per open file, so use a process).
        code = (
            "import sys; from sslr.atomic import FolderLock; from sslr.errors import UserError\n"
            "try:\n"
            f"    FolderLock({str(tmp_path)!r}, 'run folder').__enter__()\n"
            "except UserError as e:\n"
            "    print(e); sys.exit(3)\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 3, done.stderr
        assert "is in use by process" in done.stdout
    # Released on exit: the next holder gets it.
    with FolderLock(tmp_path):
        pass


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_have_the_mode_a_plain_open_gives(tmp_path, umask):
    """mkstemp makes 0600 files: every result file would differ from metrics.csv (0644)."""
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "robustness.csv", "a\n")
        atomic_write_with(tmp_path / "plot.png", lambda tmp: open(tmp, "wb").close())
        with atomic_open(tmp_path / "suite.yaml") as handle:
            handle.write("a: 1\n")
        plain = tmp_path / "metrics.csv"
        plain.write_text("a\n")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert plain.stat().st_mode & 0o777 == expected
    for name in ("robustness.csv", "plot.png", "suite.yaml"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected, name
