"""Moved to :mod:`stccl_diffusers.adapters.eat.compat`; this name stays for users' imports
(it is the same module object, so every name, private ones included, resolves as before)."""

import sys

from .eat import compat as _moved

sys.modules[__name__] = _moved
