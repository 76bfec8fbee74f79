"""The configs that ship with sslr, found by name: ``sslr fit --config quickstart``.

In a source checkout they are ``configs/`` at the repository root; an installed wheel carries
the same files as ``sslr/configs/`` (setup.py maps the package ``sslr.configs`` to ``configs/``),
so ``sslr demo`` and ``--config quickstart`` work from any folder after ``pip install``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The folder of the shipped configs: ``sslr/configs`` when installed, else ``configs``."""
    installed = _PACKAGE / "configs"
    return installed if installed.is_dir() else _PACKAGE.parent / "configs"


def packaged_config(name: str) -> Path | None:
    """The shipped config called ``name`` (``quickstart``, ``overlays/debug``,
    ``hashing/quickstart_digits.yaml``), or None when there is none."""
    if not name or "\n" in name or ":" in name or name.startswith(("/", "{", ".")):
        return None  # a path (absolute or relative) or inline YAML/JSON, not a name
    base = config_dir().resolve()
    for candidate in (base / name, base / f"{name}.yaml"):
        candidate = candidate.resolve()
        if _is_path(candidate, file=True) and base in candidate.parents:
            return candidate
    return None


def _is_path(text: str | Path, file: bool = False) -> bool:
    """Whether ``text`` names an existing file (or folder); False for text no file system takes
    as a name (too long, a NUL), as inline YAML given to --config can be."""
    try:
        return Path(text).is_file() if file else Path(text).exists()
    except (OSError, ValueError):
        return False


def resolve_config_args(args: list[str]) -> list[str]:
    """``--config NAME`` (or ``--config=NAME``) for a NAME that is no file here but a shipped
    config becomes that config's path; everything else is left as it is."""
    out, expect = [], False
    for arg in args:
        if expect:
            expect = False
            if (found := packaged_config(arg)) and not _is_path(arg):
                arg = str(found)
        elif arg in ("--config", "-c"):
            expect = True
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
            if (found := packaged_config(value)) and not _is_path(value):
                arg = f"--config={found}"
        out.append(arg)
    return out
