"""What the embedded defaults need before fine-tuning: data and a metric, made here if absent.

Shared by `train_dice_stccl.py` and `train_eat_stccl.py`: synthesized talking-face clips
(`data.clips.ensure_synthetic_clips`, re-exported here), and pretrain a small STCCL metric on synthetic neutral/emotional pairs
(paper §8.2 metric learning, shortened) when no pretrained metric is given.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch

from ..data.clips import ensure_synthetic_clips  # noqa: F401  (its home is data.clips; the scripts import it here)
from ..utils.safety import save_pretrained_atomic


def pretrain_metric_quick(
    out_dir: str | Path,
    backbone: Sequence[int] | str = (1, 1, 1, 1),
    input_size: int = 64,
    steps: int = 12,
    batch_size: int = 2,
    num_frames: int = 4,
    size: int = 48,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
):
    """Metric learning on synthetic pairs: `metric.unfreeze()`, Adam on `contrastive_loss(neutral,
    emotional)` with the true time alignment, then `save_pretrained(out_dir)`. Returns the frozen metric.

    A shortened paper §8.2 (there: 50 epochs of MEAD at 224x224, lr 1e-4) for the demo.
    """
    from tqdm.auto import tqdm

    from ..data.synthetic import synthetic_batch
    from ..metric import STCCLMetric

    torch.manual_seed(seed)
    # No ArcFace recognition head: STCCL uses only the four stages (74 MB less on disk).
    metric = STCCLMetric(backbone=tuple(backbone) if not isinstance(backbone, str) else backbone,
                         input_size=input_size, embedding_head=False)
    metric.unfreeze()
    opt = torch.optim.Adam([p for p in metric.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(seed)
    first = last = float("nan")
    bar = tqdm(range(steps), desc="metric learning", disable=not progress)
    for i in bar:
        anchor, target = synthetic_batch(batch_size, num_frames=num_frames, size=size, seed=seed * 7919 + i)
        out = metric.contrastive_loss(anchor, target, generator=g)
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(out.loss):
            continue
        out.loss.backward()
        opt.step()
        last = float(out.loss.detach())
        first = last if i == 0 else first
        bar.set_postfix(loss=f"{last:.3f}")
    metric.freeze()
    save_pretrained_atomic(metric, out_dir)
    return metric, {"metric_loss_first": first, "metric_loss_last": last}


def metric_backbone_arg(value: Sequence[str] | str) -> str | list[int]:
    """A config's `metric_backbone` as `STCCLMetric` takes it: `["r50"]` -> "r50";
    `["1", "1", "1", "1"]` -> [1, 1, 1, 1]."""
    if isinstance(value, str):
        return value
    return value[0] if len(value) == 1 else [int(x) for x in value]


def ensure_config_metric(cfg, out_dir: str | Path, progress: bool = True):
    """The frozen STCCL metric a training config names (`metric_path`), else the one pretrained
    into `out_dir/metric` from `metric_backbone`, `metric_input_size`, `metric_pretrain_steps` and
    `seed`, trained with the config's `generator_loss` form (both training scripts)."""
    return ensure_metric(cfg.metric_path, Path(out_dir) / "metric", generator_loss=cfg.generator_loss,
                         backbone=metric_backbone_arg(cfg.metric_backbone),
                         input_size=cfg.metric_input_size, steps=cfg.metric_pretrain_steps, seed=cfg.seed,
                         progress=progress)


def ensure_metric(path: str | Path | None, fallback_dir: str | Path, generator_loss: str | None = None,
                  **pretrain_kwargs):
    """`STCCLMetric.from_pretrained(path)` when given; else the one in `fallback_dir`, pretrained now if absent.

    `generator_loss`: the form of the generator loss to train with (a training config's
    `generator_loss` field); None keeps the metric's own configured form. The info dict names the
    form in use either way (`generator_loss`)."""
    from ..metric import STCCLMetric

    if path:
        metric, info = STCCLMetric.from_pretrained(str(path)), {"metric": str(path)}
    elif (Path(fallback_dir) / "config.json").is_file():
        metric, info = STCCLMetric.from_pretrained(str(fallback_dir)), {"metric": str(fallback_dir)}
    else:
        t0 = time.perf_counter()
        metric, info = pretrain_metric_quick(Path(fallback_dir), **pretrain_kwargs)
        info.update(metric=str(fallback_dir), metric_pretrain_s=time.perf_counter() - t0)
    if generator_loss is not None:
        metric.set_generator_loss(generator_loss)
    info["generator_loss"] = metric.config.generator_loss
    return metric, info
