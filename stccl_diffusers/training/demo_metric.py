"""The frozen STCCL metric for a training script: load it, or pretrain a small one for the demo.

A user passes a metric trained with ``stccl-pretrain`` (``save_pretrained`` folder). The embedded
demo has none, so it learns a small one in seconds on synthetic paired clips (paper §8.2's
metric learning, ``metric.contrastive_loss(neutral, emotional)`` with Adam), saves it, and
loads it from there on the next run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch

__all__ = ["load_or_pretrain_metric"]


def load_or_pretrain_metric(
    path: Optional[Union[str, Path]],
    demo_dir: Union[str, Path],
    backbone: Union[str, Sequence] = "r50",
    input_size: int = 224,
    steps: int = 0,
    batch_size: int = 4,
    num_frames: int = 2,
    lr: float = 1e-4,
    seed: int = 0,
    progress: bool = True,
):
    """A frozen :class:`~stccl_diffusers.STCCLMetric`.

    ``path`` given: ``STCCLMetric.from_pretrained(path)`` (a missing folder is an error naming it).
    Otherwise the metric saved in ``demo_dir`` by an earlier run, or a fresh one trained for
    ``steps`` Adam steps on synthetic neutral/emotional pairs (``steps = 0``: untrained, which
    the paper's Table III shows helps less) and saved to ``demo_dir``.
    """
    from ..metric import STCCLMetric

    if path:
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"stccl_metric: no save_pretrained STCCLMetric (config.json) in {path}")
        return STCCLMetric.from_pretrained(str(path))
    demo_dir = Path(demo_dir)
    if (demo_dir / "config.json").is_file():
        return STCCLMetric.from_pretrained(str(demo_dir))
    if isinstance(backbone, (list, tuple)) and len(backbone) == 1:
        backbone = backbone[0]
    if isinstance(backbone, (list, tuple)):
        backbone = tuple(int(d) for d in backbone)
    torch.manual_seed(seed)
    metric = STCCLMetric(backbone=backbone, input_size=input_size)
    if steps > 0:
        from tqdm.auto import tqdm

        from ..data.synthetic import synthetic_batch

        metric.unfreeze()
        opt = torch.optim.Adam([p for p in metric.parameters() if p.requires_grad], lr=lr)
        g = torch.Generator().manual_seed(seed)
        bar = tqdm(range(steps), desc="demo metric", disable=not progress)
        for step in bar:
            anchor, target = synthetic_batch(batch_size, num_frames, size=input_size, seed=seed * 7_919 + step)
            loss = metric.contrastive_loss(anchor, target, generator=g).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"demo metric: non-finite loss at step {step}")
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.set_postfix(loss=f"{float(loss):.3f}")
    metric.freeze()
    demo_dir.mkdir(parents=True, exist_ok=True)
    metric.save_pretrained(str(demo_dir))
    return metric
