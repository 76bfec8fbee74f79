"""Files that are complete or absent, and folders with one writer.

Every file sslr writes (CSV, JSON markers, reports, plots, checkpoints) goes through
``atomic_write``: the bytes go to a temporary file in the same folder, are flushed to disk, and
the temporary file is renamed over the target (``os.replace`` is atomic on POSIX). A process
killed at any moment leaves either the old file or the new one, never half of one.

``FolderLock`` refuses a second writer on one run or grid folder. The lock is an
``fcntl.flock`` on a file in the folder: the kernel drops it when the holder dies, so a
``kill -9`` never leaves a stale lock behind. Standard library only (no torch), so the reading
side of the application can import it cheaply.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from sslr.errors import UserError

__all__ = ["FolderLock", "atomic_open", "atomic_write", "atomic_write_with"]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', not {mode!r}")
    target = Path(path)
    _check_writable(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    with _moved_in_place(tmp, target), os.fdopen(fd, mode, **kwargs) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` so it is complete or absent."""
    mode = "wb" if isinstance(data, bytes) else "w"
    kwargs = {} if mode == "wb" else {"encoding": "utf-8", "newline": ""}
    with atomic_open(path, mode, **kwargs) as handle:
        handle.write(data)


def atomic_write_with(path: str | os.PathLike, writer: Callable[[str], object]) -> None:
    """Let ``writer(tmp_path)`` write a file (``savefig``, ``torch.save``), then move it in place.

    The temporary name keeps the target's suffix, so writers that choose a format from the
    suffix (matplotlib) still do.
    """
    target = Path(path)
    _check_writable(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    with _moved_in_place(tmp, target):
        writer(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())


def _umask() -> int:
    """The process's umask: Linux says it in /proc; elsewhere reading it means setting it (and
    setting it back at once, a moment in which another thread's new file would get 0o022)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _moved_in_place(tmp: str, target: Path) -> Iterator[None]:
    """After the block, ``tmp`` replaces ``target``; on an exception ``tmp`` is removed.

    ``mkstemp`` makes its file mode 0600 whatever the umask; the file in place gets the mode a
    plain ``open`` would have given it (0666 less the umask), as every other file of the run.
    """
    try:
        yield
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _check_writable(folder: Path) -> None:
    if not folder.is_dir():
        raise UserError(
            f"Output folder {str(folder)!r} does not exist: create it or choose another"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(
            f"Output folder {str(folder)!r} is not writable: fix its permissions or choose another"
        )


class FolderLock:
    """Hold ``<folder>/.sslr.lock`` for the life of a ``with`` block; a second holder is refused.

    ``what`` names the folder in the refusal ("run folder", "grid folder").
    """

    def __init__(self, folder: str | os.PathLike, what: str = "folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self._handle: IO | None = None

    def __enter__(self) -> FolderLock:
        import fcntl  # POSIX only; imported here so that reading code never needs it

        self.folder.mkdir(parents=True, exist_ok=True)
        _check_writable(self.folder)
        handle = open(self.folder / ".sslr.lock", "a+")  # noqa: SIM115 (held until __exit__)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(
                f"The {self.what} {str(self.folder)!r} is in use by {holder}: wait for it to "
                "finish, or choose another output folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.close()  # closing releases the flock
            self._handle = None


def first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (None if ``path`` exists)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def remove_empty_folders(top: Path) -> None:
    """Remove ``top`` and the folders below it that hold no file (never a file): what a failed
    command made and left empty."""
    if not top.is_dir():
        return
    for folder, _, _ in os.walk(top, topdown=False):
        try:
            os.rmdir(folder)
        except OSError:  # not empty: keep it and what it holds
            pass
