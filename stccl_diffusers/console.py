"""Console-script entry points: the package's `main` functions behind `cli_errors`, so a user sees
one line naming the problem and its fix (`--debug` for the traceback). Library callers and tests
call the unwrapped `main` functions and get the exceptions: a mistake in the arguments is a
`UsageError` (a ValueError); no CLI module exits by itself."""

from __future__ import annotations

from .utils.safety import UsageError, cli_errors  # noqa: F401  (UsageError: for callers)


def _lazy(module: str, name: str):
    def run(argv=None):
        import importlib

        return getattr(importlib.import_module(module), name)(argv)

    run.__name__ = name
    return cli_errors(run)


synth = _lazy("stccl_diffusers.data.synthetic", "synth_main")
pair = _lazy("stccl_diffusers.data.pairing", "pair_main")
pretrain = _lazy("stccl_diffusers.pretrain", "main")
analyze = _lazy("stccl_diffusers.analysis", "analyze_main")
evaluate = _lazy("stccl_diffusers.eval.cli", "main")
merge_lora = _lazy("stccl_diffusers.merge_lora", "main")
