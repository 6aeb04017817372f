"""Package attributes imported on first use (PEP 562).

A package's `__init__` names what it offers without importing it, so each subpackage pays for
its imports (the training stack, TFLite, h5py) only when used.
"""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """`__getattr__` and `__dir__` for `package`, whose attribute NAME lives in submodule
    `exports[NAME]` (relative to the package)."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def __dir__():
        return sorted(exports)

    return __getattr__, __dir__
