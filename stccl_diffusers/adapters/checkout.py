"""Importing an upstream project's own source from the user's checkout (DICE-Talk, EAT).

Their code is never vendored: each backend imports it from the folder the user names. Both do it
the same way, here:

- the checkout goes onto ``sys.path`` only for the import (:func:`on_path`), and is taken off again;
- a cached top-level package of the same name from somewhere else (another checkout, another
  project's ``src`` or ``modules``) is forgotten first (:func:`purge_foreign_modules`);
- the imported module must come from inside the checkout (its origin is checked), or the import
  is an ``ImportError`` naming where it came from.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from pathlib import Path
from typing import Union

__all__ = ["on_path", "working_directory", "purge_foreign_modules", "import_from_checkout"]


@contextlib.contextmanager
def on_path(root: Union[str, os.PathLike]):
    """``root`` first on ``sys.path`` for the block (upstream modules import each other from the
    checkout root, e.g. EAT's ``modules.x``, DICE-Talk's ``src.x``), then removed."""
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(root))


@contextlib.contextmanager
def working_directory(path: Union[str, os.PathLike]):
    """``chdir`` into ``path`` for the block (``contextlib.chdir`` needs Python 3.11)."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _inside(root: Union[str, os.PathLike], file: Union[str, os.PathLike]) -> bool:
    # Not only resolved: a checkout may symlink its files (the path it was found under counts too).
    here, there = Path(os.path.abspath(root)), Path(os.path.abspath(file))
    if here in there.parents:
        return True
    return Path(root).resolve() in Path(file).resolve().parents


def purge_foreign_modules(root: Union[str, os.PathLike], package: str) -> None:
    """Forget every cached ``package`` (sub)module when any of them does not live in ``root``.

    Submodules are checked one by one: a parent package can leave ``sys.modules`` while its
    submodules stay (a test's monkeypatch, an importer's cleanup), and a stale ``modules.syncnet``
    from another checkout would then be returned as it is."""
    names = [n for n in sys.modules if n == package or n.startswith(package + ".")]

    def foreign(mod) -> bool:
        files = [getattr(mod, "__file__", None)] + list(getattr(mod, "__path__", []) or [])
        files = [f for f in files if f]
        return bool(files) and not any(_inside(root, f) for f in files)

    if any(foreign(sys.modules[n]) for n in names):
        for n in names:
            del sys.modules[n]


def import_from_checkout(root: Union[str, os.PathLike], module: str, project: str = "the checkout"):
    """``importlib.import_module(module)`` with ``root`` on ``sys.path`` for the import only, after
    forgetting foreign cached modules of its top-level package; refuses a module from elsewhere."""
    package = module.split(".")[0]
    purge_foreign_modules(root, package)
    with on_path(root):
        mod = importlib.import_module(module)
    origin = getattr(mod, "__file__", "") or ""
    if not _inside(root, origin):
        raise ImportError(f"{module} was imported from {Path(os.path.abspath(origin))}, not from {project} {root}; "
                          f"another package named '{package}' shadows it")
    return mod
