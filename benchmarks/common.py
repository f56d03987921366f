"""What several benchmarks share (a module, not a script): configs over a demo YAML, the metric's
held-out quality, a fresh run folder, strict JSON, a run's report and the κ world's dose verdict."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from stccl_diffusers.training.config import parse_config


def demo_cfg(cls, demo_config: Path, overrides: dict):
    """A training config: the demo's YAML with `overrides` given as command-line flags."""
    argv = []
    for k, v in overrides.items():
        argv += [f"--{k}", *(str(x) for x in v)] if isinstance(v, (list, tuple)) else [f"--{k}", str(v)]
    return parse_config(cls, argv, default_config=demo_config)


def metric_quality(metric) -> dict:
    """Held-out positive/negative similarity of the metric on synthetic pairs it never saw (as
    `stccl-pretrain` reports it): a larger gap = a metric that tells matching correlations apart."""
    from stccl_diffusers.data.datasets import PairedClipDataset
    from stccl_diffusers.pretrain import evaluate_gap

    ds = PairedClipDataset.from_synthetic(8, 2, 64, seed=7919)
    batch = {k: torch.stack([ds[i][k] for i in range(len(ds))]) for k in ("anchor", "target")}
    r = evaluate_gap(metric, [batch])
    return {k: float(r[k]) for k in ("pos_sim", "neg_sim", "gap")}


def new_run_dir(out: Path) -> Path:
    """A new `out/run-<time>[-N]/` (never an existing one: two runs started in the same second each
    get their own)."""
    out.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("run-%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        run_dir = out / (stem if n == 1 else f"{stem}-{n}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run folder under {out}")


def write_report(run_dir: Path, stem: str, payload: dict, table: str, wall: float, also: tuple = ()) -> None:
    """A run's report: ``<stem>.json`` (strict JSON: `payload` must already be clean, see
    :func:`clean_json`) and ``<stem>.md`` (`table`) in `run_dir`; prints the table and where it all
    went (``also``: other files the run wrote there, e.g. its figure)."""
    import json

    (run_dir / f"{stem}.json").write_text(json.dumps(payload, indent=1, allow_nan=False))
    (run_dir / f"{stem}.md").write_text(table + "\n")
    print(table)
    print(f"\nwall time {wall:.0f} s; results in {run_dir}/ (" + ", ".join([f"{stem}.json", f"{stem}.md", *also]) + ")")


def _finite(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def clean_json(obj):
    """Strict JSON: NaN/inf -> null (a measure that could not be computed, e.g. no STCCL metric)."""
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, float):
        return _finite(obj)
    return obj


def verdict(per_kappa: dict) -> dict:
    """{kappa: {"runs": [...]}} -> the pre-registered dose verdict (see the module docstring).

    With one seed per κ there is no spread to beat: ``spread_known`` is False and ``dose_present``
    says only that the mean rose at every κ step (the report says so)."""
    ks = sorted(per_kappa, key=float)
    mean = [float(np.mean([r["gt_mae"] for r in per_kappa[k]["runs"]])) for k in ks]
    std = [float(np.std([r["gt_mae"] for r in per_kappa[k]["runs"]])) for k in ks]
    increasing = all(b > a for a, b in zip(mean, mean[1:]))
    growth = mean[-1] - mean[0]
    spread = max(std[0], std[-1])
    known = min(len(per_kappa[k]["runs"]) for k in ks) >= 2
    return {"kappas": [float(k) for k in ks], "gt_mae_mean": mean, "gt_mae_std": std, "increasing": increasing,
            "growth": growth, "spread": spread, "spread_known": known, "dose_present": bool(increasing and growth > spread)}


def verdict_line(v: dict) -> str:
    if not v["dose_present"]:
        return "dose ABSENT (the world does not contain the failure yet)"
    return "dose PRESENT" if v["spread_known"] else "rises at every κ step (one seed: no spread to beat, not a verdict)"
