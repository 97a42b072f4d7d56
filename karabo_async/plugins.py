"""Importing user code from files: device classes from plugin folders, macros from macro folders.

Each file becomes a module of its own under a package-like prefix, imported again when it changes,
so that a server or macro server picks up new and edited files without restarting.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def import_file(path: Path, prefix: str) -> ModuleType:
    """Import ``path`` as module ``<prefix>.<stem>``; what the file raises propagates unchanged."""
    name = f"{prefix}.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    # Registered before running it: schema resolution looks annotations up in the class's module.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
