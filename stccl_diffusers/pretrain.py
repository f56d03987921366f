"""``stccl-pretrain``: metric learning for STCCL on paired clips (paper §8.2).

    stccl-pretrain --config configs/pretrain_stccl.yaml [--key value ...]
    python -m stccl_diffusers.pretrain --config configs/pretrain_stccl_demo.yaml --max_train_steps 50

Reads top to bottom like a diffusers example: parse a flat config (any key overridable from
the command line, unknown keys are an error), build the paired data set and the metric,
``accelerator.prepare``, then the loop in plain sight: ``metric.unfreeze()`` and
``metric.contrastive_loss(neutral, emotional)`` with Adam (lr 1e-4, batch 16, 224x224,
backbone fine-tuned). Checkpoints ``checkpoint-<step>`` are written to a temporary folder
and renamed, so a killed run leaves the previous one intact; ``--resume_from_checkpoint
latest`` restores the step count, optimiser, RNG and sampler position. The final metric
is saved with ``save_pretrained(output_dir)``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import yaml

from .data.datasets import write_skipped_report
from .training.checkpoints import (
    claim_output_dir,
    check_resume_config,
    read_state,
    resolve_checkpoint as _resolve,
    save_checkpoint as _save_checkpoint,
)
from .training.config import config_from_dict, config_to_dict, converted, free, load_yaml_config, parse_config, shape
from .utils.jsonio import dumps_strict
from .utils.safety import save_pretrained_atomic

logger = logging.getLogger("stccl_diffusers.pretrain")

__all__ = ["PretrainConfig", "DEFAULT_CONFIG", "load_config", "parse_args", "EpochSampler", "build_dataset", "build_metric", "evaluate_gap", "train", "main"]

def _yaml_scalar(value: Any) -> Any:
    """A command-line string as YAML reads it (``null``, ``1e-4``, ``[1,1,1,1]``, ``true``)."""
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


def _choice(*options: Any, false_is: Optional[str] = None):
    def convert(name: str, value: Any) -> Any:
        value = _yaml_scalar(value)
        if value is False and false_is is not None:  # YAML 1.1 reads a bare `no` as false
            value = false_is
        if value not in options:
            raise ValueError(f"{name}: expected one of {list(options)}, got {value!r}")
        return value

    return convert


def _backbone(name: str, value: Any) -> Any:
    """`r18|r34|r50|r100` or four stage depths."""
    value = _yaml_scalar(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str) and "," in value:
        return [int(v) for v in value.split(",") if v.strip()]
    return value


def _int_or_ints(name: str, value: Any) -> Any:
    value = _yaml_scalar(value)
    if isinstance(value, str) and "," in value:
        value = [v for v in value.split(",") if v.strip()]
    try:
        return [int(v) for v in value] if isinstance(value, (list, tuple)) else int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected an int or a list of ints, got {value!r}") from None


@dataclass
class PretrainConfig:
    """The flat config of ``stccl-pretrain`` (paper §8.2 defaults): every field may appear in the
    YAML file and on the command line. It is read by the same machinery as the training scripts'
    configs (:mod:`stccl_diffusers.training.config`), and ``cfg["key"]`` reads a field as the dict
    config it replaced did."""

    # ---- data
    data: str = converted(_choice("synthetic", "videos", "mead", "real_pairs"), "synthetic", resume="shape")
    data_root: Optional[str] = None
    """videos: clip folder; mead: MEAD root with align_img; real_pairs: folder of tiled mp4s."""
    manifest: Optional[str] = None
    """Official-format manifest (mead: required; videos: optional, else DTW now)."""
    real_pairs_target: str = "stccl_vd"
    """real_pairs: which tile is the emotional target."""
    num_frames: int = 4
    """T consecutive aligned steps per clip (>= 2 for TCC)."""
    resolution: int = 224
    """Frames handed to the metric are resolution x resolution."""
    synthetic_pairs: int = 100000
    """synthetic: pairs per epoch (rendered on the fly)."""
    val_pairs: int = 16
    """Held-out synthetic pairs for the pos/neg gap report (0: none)."""
    val_seed: int = 7919
    """Held-out pairs use other identities and sentences than training."""
    dataloader_num_workers: int = free(0)
    face_align: Optional[str] = converted(_choice(None, "haar", "dlib", "insightface"), None)
    """Landmark backend that pose-aligns emotional onto neutral frames (§4.1); None: no alignment."""
    insightface_root: Optional[str] = None
    """Folder with models/buffalo_l/ for face_align=insightface (no downloads)."""
    face_focus: str = converted(_choice("face", "mouth"), "face")
    """Aligned crops centred on the face or on the mouth (mouth emphasis; needs face_align)."""
    holdout: Optional[list] = None
    """Clip-name prefixes (speaker ids like M003, or file names) left out of training."""
    add_synthetic_pairs: int = 0
    """videos | mead | real_pairs: this many synthetic pairs added to each epoch."""
    # ---- metric
    backbone: Any = converted(_backbone, "r50", resume="shape")
    """`r18 | r34 | r50 | r100` or [d1, d2, d3, d4]."""
    correlation: str = converted(_choice("vd", "cm"), "vd")
    input_size: int = shape(224)
    layers: Any = converted(_int_or_ints, default_factory=lambda: [1, 2, 3, 4])
    """Backbone stages that contribute (each map must be >= 4x4)."""
    use_scc: bool = True
    use_tcc: bool = True
    num_samples: Any = converted(_int_or_ints, default_factory=lambda: [32, 16, 8, 4])
    num_negatives: Optional[int] = 8
    tau: float = 0.07
    caas: bool = True
    spatial_weight: float = 1.0
    """Weight of the SCC term in the loss."""
    temporal_weight: float = 1.0
    """Weight of the TCC term in the loss."""
    time_negatives: bool = False
    """SCC negatives also from the target's other frames (speech timing; not in the paper)."""
    embedding_head: bool = shape(True)
    """Keep ArcFace's 12.8 M-parameter recognition head (only FAD needs it)."""
    arcface_weights: Optional[str] = None
    """insightface backbone.pth to start from."""
    init_from: Optional[str] = None
    """A save_pretrained metric folder to start from."""
    # ---- optimisation (paper §8.2: Adam, lr 1e-4, batch 16, 50 epochs)
    learning_rate: float = 1.0e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    adam_epsilon: float = 1.0e-8
    train_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    num_train_epochs: int = free(50)
    max_train_steps: Optional[int] = free(None)
    """Overrides num_train_epochs when set."""
    max_grad_norm: Optional[float] = 1.0
    mixed_precision: str = converted(_choice("no", "fp16", "bf16", false_is="no"), "no")
    seed: int = 0
    cpu: Optional[bool] = None
    """Force CPU; None: CPU when no CUDA (accelerate needs cpu=True for torchrun multi-CPU DDP)."""
    num_threads: Optional[int] = free(None)
    """torch CPU threads (1 is fastest on a shared, busy CPU)."""
    # ---- io
    output_dir: str = free("stccl-metric")
    checkpointing_steps: int = 500
    checkpoints_total_limit: Optional[int] = None
    resume_from_checkpoint: Optional[str] = free(None)
    """A checkpoint folder or "latest"."""
    overwrite_output_dir: bool = free(False)
    """A fresh run into a folder with another run's checkpoints refuses without it; with it they
    are moved to `output_dir/previous-<n>/` (the training scripts' rule)."""
    report_to: str = free("tensorboard")
    """tensorboard | wandb | all | none."""
    logging_dir: str = free("logs")
    logging_steps: int = free(10)
    config: Optional[str] = free(None)
    """The YAML file the values were read from (set by `parse_args` / `load_config`)."""

    # The dict config this replaced was read as cfg["key"]; so is this one.
    def __getitem__(self, key: str) -> Any:
        if key not in _FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in _FIELDS else default

    def keys(self):
        return list(_FIELDS)


_FIELDS = tuple(f.name for f in dataclasses.fields(PretrainConfig))
#: Every key (but `config`) with its default, as the dict config had them.
DEFAULT_CONFIG: Dict[str, Any] = {k: v for k, v in config_to_dict(PretrainConfig()).items() if k != "config"}


def load_config(path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None) -> PretrainConfig:
    """Defaults <- YAML file <- overrides (command-line strings are YAML scalars). Unknown keys
    raise ValueError naming them."""
    known = [k for k in _FIELDS if k != "config"]
    values: Dict[str, Any] = {}
    layers = []
    if path is not None:
        layers.append((f"config {path!r}", load_yaml_config(path), False))
    layers.append(("command line", dict(overrides or {}), True))
    for origin, layer, from_cli in layers:
        unknown = sorted(set(layer) - set(known))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown} in {origin}; known keys: {sorted(known)}")
        values.update({k: _yaml_scalar(v) if from_cli else v for k, v in layer.items()})
    values["config"] = None if path is None else str(path)
    return config_from_dict(PretrainConfig, values, source=str(path) if path is not None else "command line")


def parse_args(argv: Optional[Sequence[str]] = None) -> PretrainConfig:
    """``--config FILE`` plus ``--key value`` / ``--key=value`` pairs for any config key, read by
    :func:`~stccl_diffusers.training.config.parse_config`; an unknown key is a ValueError."""
    argv = list(sys.argv[1:] if argv is None else argv)
    known = set(_FIELDS) - {"config"}
    unknown = []
    for i, tok in enumerate(argv):
        if tok.startswith("--"):
            key = tok[2:].split("=", 1)[0].replace("-", "_")
            if key not in ("config", "help") and key not in known:
                unknown.append(key)
            argv[i] = "--" + key + (tok[2 + len(key):] if "=" in tok else "")
        elif i == 0 or not argv[i - 1].startswith("--") or "=" in argv[i - 1]:
            if tok not in ("-h",):
                raise ValueError(f"expected --key value pairs, got {tok!r}")
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(unknown)} in command line; known keys: {sorted(known)}")
    return parse_config(PretrainConfig, argv, description=__doc__.split("\n")[0])


# --------------------------------------------------------------------------------------
# Data and model
# --------------------------------------------------------------------------------------


class EpochSampler:
    """Shuffled indices, epoch after epoch, with a resumable position.

    Epoch ``e`` is ``randperm(n)`` under seed ``seed + e``; ``state_dict`` = (epoch, position),
    so a resumed run draws exactly the batches the uninterrupted run would have drawn.
    Process ``rank`` of ``world`` takes every ``world``-th index.
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world: int = 1):
        if n < 1:
            raise ValueError(f"expected a non-empty data set, got {n} items")
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.position = 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> List[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        return perm[self.rank :: self.world] or perm[:1]

    def next_batch(self, batch_size: int) -> List[int]:
        out = []
        while len(out) < batch_size:
            if self.position >= len(self._perm):
                self.epoch += 1
                self.position = 0
                self._perm = self._permutation()
            take = self._perm[self.position : self.position + batch_size - len(out)]
            out.extend(take)
            self.position += len(take)
        return out

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "n": self.n, "seed": self.seed}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        if state.get("n") != self.n:
            raise ValueError(f"sampler state is for {state.get('n')} items but the data set has {self.n}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._perm = self._permutation()


def build_dataset(cfg: Dict[str, Any]):
    """The training pairs: one source (``data``), real clips whose names start with a ``holdout``
    prefix left out, plus ``add_synthetic_pairs`` synthetic pairs when asked."""
    from torch.utils.data import ConcatDataset

    from .data.datasets import PairedClipDataset

    T, size = int(cfg["num_frames"]), int(cfg["resolution"])
    kind = cfg["data"]
    if kind == "synthetic":
        return PairedClipDataset.from_synthetic(int(cfg["synthetic_pairs"]), T, size, seed=int(cfg["seed"]))
    kw: Dict[str, Any] = {"exclude": cfg["holdout"] or None}
    if cfg["face_align"]:
        from .data.face_align import FaceAligner

        kw["aligner"] = FaceAligner(size, backend=cfg["face_align"], insightface_root=cfg["insightface_root"], focus=cfg["face_focus"], cache=True)
    elif cfg["face_focus"] != "face":
        raise ValueError(f"face_focus={cfg['face_focus']!r} needs face_align (a landmark backend: haar, dlib or insightface)")
    root = cfg["data_root"]
    if not root or not os.path.isdir(root):
        raise ValueError(f"data={kind!r} needs data_root to be an existing folder, got {root!r}")
    if kind == "videos":
        real = PairedClipDataset.from_videos(root, cfg["manifest"], T, size, **kw)
    elif kind == "mead":
        if not cfg["manifest"]:
            raise ValueError("data='mead' needs manifest (the official mead_aligned_path36.json or a stccl-pair output)")
        real = PairedClipDataset.from_mead(root, cfg["manifest"], T, size, **kw)
    else:
        real = PairedClipDataset.from_real_pairs(root, cfg["real_pairs_target"], T, size, **kw)
    n_syn = int(cfg["add_synthetic_pairs"] or 0)
    if n_syn <= 0:
        return real
    mixed = ConcatDataset([real, PairedClipDataset.from_synthetic(n_syn, T, size, seed=int(cfg["seed"]))])
    mixed.skipped = real.skipped  # read after training starts too (faceless windows are appended)
    return mixed


def build_metric(cfg: Dict[str, Any]):
    from .metric import STCCLMetric

    if cfg["init_from"]:
        return STCCLMetric.from_pretrained(cfg["init_from"])
    backbone = cfg["backbone"]
    metric = STCCLMetric(
        backbone=tuple(backbone) if isinstance(backbone, (list, tuple)) else backbone,
        correlation=cfg["correlation"],
        input_size=int(cfg["input_size"]),
        layers=tuple(int(l) for l in cfg["layers"]),
        use_scc=bool(cfg["use_scc"]),
        use_tcc=bool(cfg["use_tcc"]),
        num_samples=tuple(cfg["num_samples"]) if isinstance(cfg["num_samples"], (list, tuple)) else int(cfg["num_samples"]),
        num_negatives=None if cfg["num_negatives"] is None else int(cfg["num_negatives"]),
        tau=float(cfg["tau"]),
        caas=bool(cfg["caas"]),
        time_negatives=bool(cfg["time_negatives"]),
        spatial_weight=float(cfg["spatial_weight"]),
        temporal_weight=float(cfg["temporal_weight"]),
        embedding_head=bool(cfg["embedding_head"]),
    )
    if cfg["arcface_weights"]:
        metric.load_arcface_weights(cfg["arcface_weights"])
    return metric


class ContrastiveStep(torch.nn.Module):
    """``forward = metric.contrastive_loss``, so that DDP (which only syncs gradients of calls
    through the wrapped module's ``forward``) and autocast see the metric-learning loss."""

    def __init__(self, metric):
        super().__init__()
        self.metric = metric

    def forward(self, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator] = None):
        return self.metric.contrastive_loss(x, y, generator=generator)


def _collate(items: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in ("anchor", "target")}


def evaluate_gap(metric, batches, seed: int = 0) -> Dict[str, Any]:
    """Held-out pos/neg similarity and gap, overall and per layer (see ``analysis.layer_similarities``)."""
    from .analysis import layer_similarities

    return layer_similarities(metric, batches, seed)


def _held_out_batches(cfg: Dict[str, Any]) -> List[Dict[str, torch.Tensor]]:
    from .data.datasets import PairedClipDataset

    n = int(cfg["val_pairs"])
    if n <= 0:
        return []
    ds = PairedClipDataset.from_synthetic(n, int(cfg["num_frames"]), int(cfg["resolution"]), seed=int(cfg["val_seed"]))
    bs = max(1, min(8, n))
    return [_collate([ds[i] for i in range(s, min(n, s + bs))]) for s in range(0, n, bs)]


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


def save_checkpoint(accelerator, output_dir: str, step: int, sampler: EpochSampler, total_limit: Optional[int] = None,
                    run_config: Optional[Dict[str, Any]] = None) -> str:
    """A ``checkpoint-<step>`` of the shared contract (:mod:`stccl_diffusers.training.checkpoints`):
    written as ``checkpoint-<step>.tmp`` and renamed, ``training_state.json`` holding the step and
    the sampler's position, ``run_config.json`` and a manifest."""
    state = {"global_step": step, "sampler": sampler.state_dict()}
    return str(_save_checkpoint(accelerator, output_dir, step, state, total_limit, run_config=run_config))


def resolve_checkpoint(output_dir: str, which: Optional[str]) -> Optional[str]:
    """The checkpoint to resume from (``latest`` or a folder), verified against its manifest; warnings
    go to this module's logger. Checkpoints of older runs (``trainer_state.json``) resolve too."""
    path = _resolve(output_dir, which, warn=logger.warning)
    return None if path is None else str(path)


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def train(cfg: PretrainConfig) -> Dict[str, Any]:
    """Run metric learning; returns a summary (steps, held-out gap before/after, wall time)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    if isinstance(cfg, dict):  # the dict config of older callers
        cfg = load_config(None, cfg)
    t0 = time.time()
    if cfg["num_threads"]:
        torch.set_num_threads(int(cfg["num_threads"]))
    out_dir = cfg["output_dir"]
    report_to = None if str(cfg["report_to"]).lower() in ("none", "null", "") else cfg["report_to"]
    use_cpu = bool(cfg["cpu"]) if cfg["cpu"] is not None else not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=use_cpu,
        gradient_accumulation_steps=int(cfg["gradient_accumulation_steps"]),
        mixed_precision=cfg["mixed_precision"],
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=out_dir, logging_dir=os.path.join(out_dir, cfg["logging_dir"])),
        # The ArcFace fc/embedding head is not used by STCCL: its parameters get no gradient.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # The training scripts' contract: resolve (manifest-checked), check the config, lock the folder
    # and refuse (or, with overwrite_output_dir, move aside) another run's checkpoints.
    ckpt = resolve_checkpoint(out_dir, cfg["resume_from_checkpoint"])
    if ckpt is not None:
        check_resume_config(cfg, Path(ckpt), warn=logger.warning)
    lock = claim_output_dir(out_dir, bool(cfg["overwrite_output_dir"]), None if ckpt is None else Path(ckpt),
                            is_main=accelerator.is_main_process, logs=("pretrain_summary.json",), warn=logger.warning)
    try:
        return _train(cfg, accelerator, ckpt, report_to, t0)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: PretrainConfig, accelerator, ckpt: Optional[str], report_to: Optional[str], t0: float) -> Dict[str, Any]:
    from tqdm.auto import tqdm
    from accelerate.utils import set_seed

    out_dir = cfg["output_dir"]
    set_seed(int(cfg["seed"]))
    if accelerator.is_main_process:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "pretrain_config.yaml"), "w") as f:
            yaml.safe_dump({k: v for k, v in config_to_dict(cfg).items() if k != "config"}, f, sort_keys=False)

    dataset = build_dataset(cfg)
    if dataset.skipped:
        report = write_skipped_report(dataset.skipped, out_dir) if accelerator.is_main_process else None
        logger.warning("skipped %d clip pairs (all listed in %s): %s", len(dataset.skipped), report,
                       "; ".join(f"{n}: {r}" for n, r in dataset.skipped[:10]))
    metric = build_metric(cfg)
    if cfg["use_tcc"] and int(cfg["num_frames"]) < 2:
        raise ValueError(f"use_tcc needs num_frames >= 2, got {cfg['num_frames']}")
    val_batches = _held_out_batches(cfg) if accelerator.is_main_process else []
    before = evaluate_gap(metric, val_batches, seed=int(cfg["val_seed"])) if val_batches else None

    metric.unfreeze()
    params = [p for p in metric.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(
        params, lr=float(cfg["learning_rate"]), betas=(float(cfg["adam_beta1"]), float(cfg["adam_beta2"])),
        weight_decay=float(cfg["adam_weight_decay"]), eps=float(cfg["adam_epsilon"]),
    )
    step_module, optimizer = accelerator.prepare(ContrastiveStep(metric), optimizer)

    bs = int(cfg["train_batch_size"])
    accum = int(cfg["gradient_accumulation_steps"])
    steps_per_epoch = max(1, math.ceil(len(dataset) / (bs * accelerator.num_processes * accum)))
    max_steps = int(cfg["max_train_steps"]) if cfg["max_train_steps"] is not None else int(cfg["num_train_epochs"]) * steps_per_epoch
    sampler = EpochSampler(len(dataset), int(cfg["seed"]), accelerator.process_index, accelerator.num_processes)

    global_step = 0
    if ckpt is not None:
        accelerator.load_state(ckpt)
        state = read_state(ckpt)  # training_state.json, or trainer_state.json of an older run
        global_step = int(state["global_step"])
        sampler.load_state_dict(state["sampler"])
        logger.info("resumed from %s at step %d", ckpt, global_step)

    if report_to and accelerator.is_main_process:
        accelerator.init_trackers("stccl-pretrain", config={k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in config_to_dict(cfg).items()})

    progress = tqdm(total=max_steps, initial=global_step, desc="stccl-pretrain", disable=not accelerator.is_local_main_process)
    skipped_nonfinite = 0
    logs: Dict[str, float] = {}
    while global_step < max_steps:
        for _ in range(accum):
            batch = _collate([dataset[i] for i in sampler.next_batch(bs)])
            # Region sampling seeded by (seed, step, micro-batch): resumed runs draw the same regions.
            gen = torch.Generator(device="cpu").manual_seed(int(cfg["seed"]) * 1_000_003 + global_step * 97 + sampler.position)
            with accelerator.accumulate(step_module):
                with accelerator.autocast():
                    out = step_module(batch["anchor"].to(accelerator.device), batch["target"].to(accelerator.device), generator=gen)
                loss = out.loss.float()
                if not torch.isfinite(loss):
                    # A NaN never reaches the optimiser: drop this micro-batch's gradient.
                    skipped_nonfinite += 1
                    optimizer.zero_grad(set_to_none=True)
                    logger.warning("non-finite loss at step %d (skipped, %d so far)", global_step, skipped_nonfinite)
                    if skipped_nonfinite > 10:
                        raise RuntimeError("more than 10 non-finite losses: lower the learning rate or use fp32")
                    continue
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg["max_grad_norm"]:
                    accelerator.clip_grad_norm_(params, float(cfg["max_grad_norm"]))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        global_step += 1
        progress.update(1)
        logs = {
            "loss": float(out.loss.detach()), "spatial_loss": float(out.spatial_loss.detach()), "temporal_loss": float(out.temporal_loss.detach()),
            "pos_sim": float(out.pos_sim), "neg_sim": float(out.neg_sim), "gap": float(out.pos_sim - out.neg_sim),
        }
        progress.set_postfix(loss=f"{logs['loss']:.3f}", gap=f"{logs['gap']:.3f}")
        if report_to and (global_step % int(cfg["logging_steps"]) == 0 or global_step == max_steps):
            accelerator.log({f"train/{k}": v for k, v in logs.items()}, step=global_step)
        if int(cfg["checkpointing_steps"]) > 0 and global_step % int(cfg["checkpointing_steps"]) == 0:
            save_checkpoint(accelerator, out_dir, global_step, sampler, cfg["checkpoints_total_limit"],
                            run_config=config_to_dict(cfg))
    progress.close()

    accelerator.wait_for_everyone()
    summary: Dict[str, Any] = {"global_step": global_step, "last": logs, "skipped_nonfinite": skipped_nonfinite}
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(step_module).metric
        final.freeze()
        save_pretrained_atomic(final, out_dir)
        after = evaluate_gap(final, val_batches, seed=int(cfg["val_seed"])) if val_batches else None
        summary.update({"held_out_before": before, "held_out_after": after, "wall_time_s": time.time() - t0})
        with open(os.path.join(out_dir, "pretrain_summary.json"), "w") as f:
            f.write(dumps_strict(summary, indent=2, explain_nulls=True))
        if before and after:
            logger.info("held-out synthetic pos-neg gap: %.4f before -> %.4f after", before["gap"], after["gap"])
            if report_to:
                accelerator.log({"val/gap_before": before["gap"], "val/gap_after": after["gap"]}, step=global_step)
    accelerator.end_training()
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        cfg = parse_args(argv)
    except ValueError as e:
        print(f"stccl-pretrain: {e}", file=sys.stderr)
        return 2
    summary = train(cfg)  # locks output_dir itself
    if int(os.environ.get("RANK", "0")) != 0:  # one summary line per run, not per process
        return 0
    if summary.get("held_out_before") and summary.get("held_out_after"):
        print(
            f"stccl-pretrain: {summary['global_step']} steps; held-out pos-neg gap "
            f"{summary['held_out_before']['gap']:.4f} -> {summary['held_out_after']['gap']:.4f}; "
            f"metric saved to {cfg['output_dir']}"
        )
    else:
        print(f"stccl-pretrain: {summary['global_step']} steps; metric saved to {cfg['output_dir']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from .utils.safety import cli_errors

    raise SystemExit(cli_errors(main)())
