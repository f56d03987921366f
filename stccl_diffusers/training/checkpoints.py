"""Checkpoints of every training run (the shared loop and `stccl-pretrain`): one contract.

- ``checkpoint-{step}/`` is written as ``checkpoint-{step}.tmp/`` and renamed, so a kill never leaves
  a half checkpoint; it holds ``accelerator.save_state``, ``training_state.json`` (the step and
  what the run needs to continue), ``run_config.json`` and ``manifest.json`` (each file's size and
  sha256, checked on resume).
- ``resume_from_checkpoint: latest`` falls back from a damaged newest checkpoint to the newest
  complete one, naming the damaged file; a named damaged checkpoint is an error. A resume whose
  config changes a shape-changing field is refused (each field's rule: ``training.config``).
- A run locks its ``output_dir``; a fresh run refuses a folder holding another run's checkpoints
  unless ``overwrite_output_dir``, and then moves them to ``previous-<n>/`` (never deletes them).

Checkpoints written by ``stccl-pretrain`` before it used this module (``trainer_state.json``,
``.tmp-checkpoint-N`` temporaries) are still found and resumed.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

from ..utils.jsonio import dumps_strict
from ..utils.safety import RunLock, verify_manifest, write_manifest
from .config import compare_resume_config, config_to_dict

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "training_state.json"
#: The state file of checkpoints written by `stccl-pretrain` before it shared this module.
LEGACY_STATE_FILE = "trainer_state.json"
RUN_CONFIG_FILE = "run_config.json"

Warn = Callable[[str], Any]


def state_file(checkpoint: str | Path) -> Path | None:
    """The checkpoint's state file (`training_state.json`, or an old pretrain run's
    `trainer_state.json`); None when it has neither (an incomplete checkpoint)."""
    for name in (STATE_FILE, LEGACY_STATE_FILE):
        path = Path(checkpoint) / name
        if path.is_file():
            return path
    return None


def read_state(checkpoint: str | Path) -> dict[str, Any]:
    path = state_file(checkpoint)
    if path is None:
        raise FileNotFoundError(f"{checkpoint} is not a complete checkpoint (no {STATE_FILE})")
    return json.loads(path.read_text())


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete `checkpoint-{step}` directories, oldest first (temporary `.tmp` ones ignored)."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit():
            if state_file(p) is not None:
                found.append(p)
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def resolve_checkpoint(output_dir: str | Path, which: str | None, warn: Warn = warnings.warn) -> Path | None:
    """The checkpoint to resume from (`which`: a `checkpoint-{step}` path or `latest`), each file
    verified against its manifest.

    `latest` falls back from a damaged newest checkpoint to the newest complete one, naming the
    damaged file; an explicitly named damaged checkpoint is an error.
    """
    if not which:
        return None
    if which == "latest":
        ckpts = list_checkpoints(output_dir)
        if not ckpts:
            warn(f"resume_from_checkpoint=latest: no checkpoint in {output_dir}; starting fresh")
            return None
        damaged = []
        for ckpt in reversed(ckpts):
            problem = verify_manifest(ckpt)
            if problem is None:
                if damaged:
                    warn(f"resume_from_checkpoint=latest: skipping damaged {'; '.join(damaged)}; "
                         f"resuming from {ckpt.name}, the newest complete checkpoint")
                return ckpt
            damaged.append(f"{ckpt.name} ({problem})")
        raise ValueError(f"resume_from_checkpoint=latest: every checkpoint in {output_dir} is damaged: "
                         + "; ".join(damaged))
    path = Path(which)
    if not path.is_absolute() and not path.exists():
        path = Path(output_dir) / path
    if state_file(path) is None:
        raise FileNotFoundError(f"resume_from_checkpoint: {path} is not a complete checkpoint (no {STATE_FILE})")
    problem = verify_manifest(path)
    if problem is not None:
        raise ValueError(f"resume_from_checkpoint: {path} is damaged: {problem}; pass `latest` or an earlier checkpoint")
    return path


def check_resume_config(cfg: Any, checkpoint: Path, warn: Warn = warnings.warn) -> None:
    """Refuse a resume whose config changes shapes or the model (naming the keys); warn for the rest."""
    saved_path = Path(checkpoint) / RUN_CONFIG_FILE
    if not saved_path.is_file():
        warn(f"{checkpoint} stores no {RUN_CONFIG_FILE}; the resumed config is not checked")
        return
    refuse, changed = compare_resume_config(json.loads(saved_path.read_text()),
                                            json.loads(json.dumps(config_to_dict(cfg), default=str)), type(cfg))
    if refuse:
        raise ValueError(
            f"cannot resume from {checkpoint}: the config changes the model or its shapes ({'; '.join(refuse)}); "
            "resume with the saved values, or start a fresh run in another --output_dir"
        )
    if changed:
        warn(f"resuming from {checkpoint} with a changed config: {'; '.join(changed)}")


def claim_output_dir(output_dir: str | Path, overwrite: bool, resume_path: Path | None, is_main: bool = True,
                     logs: Iterable[str] = (), warn: Warn = warnings.warn) -> RunLock | None:
    """Make `output_dir` this run's: lock it, and refuse a fresh run over another run's checkpoints.

    With `overwrite` the old checkpoints (and the run's `logs`, file names in `output_dir`) are
    moved to `previous-<n>/`, never deleted.
    """
    out = Path(output_dir)
    lock = RunLock(out).acquire() if is_main else None
    try:
        old = [p for p in sorted(out.glob(f"{CHECKPOINT_PREFIX}*")) if p.is_dir()] if out.is_dir() else []
        if resume_path is None and old:
            if not overwrite:
                raise FileExistsError(
                    f"{out} holds another run's checkpoints ({', '.join(p.name for p in old)}); pass "
                    "--resume_from_checkpoint latest to continue it, --overwrite_output_dir to start over "
                    "(the old ones are kept in previous-<n>/), or another --output_dir"
                )
            if is_main:
                n = 0
                while (out / f"previous-{n}").exists():
                    n += 1
                aside = out / f"previous-{n}"
                aside.mkdir()
                for p in old + [out / name for name in logs]:
                    if p.exists():
                        os.replace(p, aside / p.name)
                warn(f"--overwrite_output_dir: moved the previous run's checkpoints and logs to {aside}")
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


def save_checkpoint(
    accelerator, output_dir: str | Path, global_step: int, state: dict, total_limit: int | None,
    run_config: dict | None = None,
) -> Path:
    """Write `checkpoint-{step}.tmp` then rename it, so a kill never leaves a half checkpoint.

    `state` goes into `training_state.json`, the run's config into `run_config.json`, and
    `manifest.json` records every file's size and sha256 (checked on resume). Every rank writes its
    RNG state into the temporary folder: it is renamed only once all are done.
    """
    out = Path(output_dir)
    final = out / f"{CHECKPOINT_PREFIX}{global_step}"
    tmp = out / f"{CHECKPOINT_PREFIX}{global_step}.tmp"
    if accelerator.is_main_process:
        if total_limit is not None and total_limit > 0:
            ckpts = list_checkpoints(out)
            excess = len(ckpts) - (total_limit - 1)
            for old in ckpts[: max(0, excess)]:
                shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(dumps_strict(state))
        if run_config is not None:
            (tmp / RUN_CONFIG_FILE).write_text(dumps_strict(run_config, indent=1))
        write_manifest(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final
