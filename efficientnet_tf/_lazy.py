"""Package attributes imported on first use, and names that moved to another module (PEP 562).

A package's `__init__` names what it offers without importing it, so each subpackage pays for
its imports (the training stack, TFLite, h5py) only when used.
"""

from __future__ import annotations

import importlib
import warnings


def lazy_exports(package: str, exports: dict[str, str], namespace: dict, fallback: tuple[str, ...] = ()):
    """`__getattr__` and `__dir__` for `package` (whose globals are `namespace`): attribute NAME
    lives in submodule `exports[NAME]` (relative to the package); other names are looked up in
    the `fallback` submodules, in order."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        for module in fallback:
            loaded = importlib.import_module(f"{package}.{module}")
            if hasattr(loaded, name):
                return getattr(loaded, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__


def moved_names(module: str, moved: dict[str, str], namespace: dict):
    """`__getattr__` and `__dir__` for `module` (whose globals are `namespace`): attribute NAME
    now lives in module `moved[NAME]`; getting it from `module` warns (FutureWarning, naming
    the new home), then returns it. For one release after a module was split."""

    def __getattr__(name: str):
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(f"{module}.{name} moved to {moved[name]}.{name}", FutureWarning, stacklevel=2)
        return getattr(importlib.import_module(moved[name]), name)

    def __dir__():
        return sorted(set(namespace) | set(moved))

    return __getattr__, __dir__
