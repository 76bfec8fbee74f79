"""sslr: sign-symmetry learning rules as fine-tuners, with honest robustness evaluation.

``import sslr`` stays light: the Lightning-based names load on first use.
"""

__version__ = "0.1.0"

_LAZY = {
    "ClassificationTask": "sslr.tasks",
    "HashingTask": "sslr.tasks",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sslr' has no attribute {name!r}")


__all__ = ["ClassificationTask", "HashingTask", "__version__"]
