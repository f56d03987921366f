"""Moved to :mod:`stccl_diffusers.adapters.dice.dice_talk`; this name stays for users' imports
(it is the same module object, so every name, private ones included, resolves as before)."""

import sys

from .dice import dice_talk as _moved

sys.modules[__name__] = _moved
