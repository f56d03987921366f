"""Moved to :mod:`stccl_diffusers.data.clips` (a data set lives in `data/`); this name stays for
users' imports (it is the same module object, so every name, private ones included, resolves as before)."""

import sys

from ..data import clips as _moved

sys.modules[__name__] = _moved
