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

import json
import logging
import math
import os
import shutil
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml

from .data.datasets import write_skipped_report
from .utils.jsonio import dumps_strict
from .utils.safety import RunLock, save_pretrained_atomic, verify_manifest, write_manifest

logger = logging.getLogger("stccl_diffusers.pretrain")

__all__ = ["DEFAULT_CONFIG", "load_config", "parse_args", "EpochSampler", "build_dataset", "build_metric", "evaluate_gap", "train", "main"]

# The flat config: every key may appear in the YAML and on the command line.
DEFAULT_CONFIG: Dict[str, Any] = {
    # ---- data
    "data": "synthetic",  # synthetic | videos | mead | real_pairs
    "data_root": None,  # videos: clip folder; mead: MEAD root with align_img; real_pairs: folder of tiled mp4s
    "manifest": None,  # official-format manifest (mead: required; videos: optional, else DTW now)
    "real_pairs_target": "stccl_vd",  # real_pairs: which tile is the emotional target
    "num_frames": 4,  # T consecutive aligned steps per clip (>= 2 for TCC)
    "resolution": 224,  # frames handed to the metric are resolution x resolution
    "synthetic_pairs": 100000,  # synthetic: pairs per epoch (rendered on the fly)
    "val_pairs": 16,  # held-out synthetic pairs for the pos/neg gap report (0: none)
    "val_seed": 7919,  # held-out pairs use other identities and sentences than training
    "dataloader_num_workers": 0,
    "face_align": None,  # None | haar | dlib | insightface: landmark backend that pose-aligns emotional onto neutral frames (§4.1)
    "insightface_root": None,  # folder with models/buffalo_l/ for face_align=insightface (no downloads)
    "face_focus": "face",  # face | mouth: aligned crops centred on the face or on the mouth (mouth emphasis; needs face_align)
    "holdout": None,  # clip-name prefixes (speaker ids like M003, or file names) left out of training
    "add_synthetic_pairs": 0,  # videos | mead | real_pairs: this many synthetic pairs added to each epoch
    # ---- metric
    "backbone": "r50",  # r18 | r34 | r50 | r100 | [d1, d2, d3, d4]
    "correlation": "vd",  # vd | cm
    "input_size": 224,
    "layers": [1, 2, 3, 4],  # backbone stages that contribute (each map must be >= 4x4)
    "use_scc": True,
    "use_tcc": True,
    "num_samples": [32, 16, 8, 4],
    "num_negatives": 8,
    "tau": 0.07,
    "caas": True,
    "spatial_weight": 1.0,  # weight of the SCC term in the loss
    "temporal_weight": 1.0,  # weight of the TCC term in the loss
    "time_negatives": False,  # SCC negatives also from the target's other frames (speech timing; not in the paper)
    "embedding_head": True,  # keep ArcFace's 12.8 M-parameter recognition head (only FAD needs it)
    "arcface_weights": None,  # insightface backbone.pth to start from
    "init_from": None,  # a save_pretrained metric folder to start from
    # ---- optimisation (paper §8.2: Adam, lr 1e-4, batch 16, 50 epochs)
    "learning_rate": 1.0e-4,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_weight_decay": 0.0,
    "adam_epsilon": 1.0e-8,
    "train_batch_size": 16,
    "gradient_accumulation_steps": 1,
    "num_train_epochs": 50,
    "max_train_steps": None,  # overrides num_train_epochs when set
    "max_grad_norm": 1.0,
    "mixed_precision": "no",  # no | fp16 | bf16
    "seed": 0,
    "cpu": None,  # force CPU; None: CPU when no CUDA (accelerate needs cpu=True for torchrun multi-CPU DDP)
    "num_threads": None,  # torch CPU threads (1 is fastest on a shared, busy CPU)
    # ---- io
    "output_dir": "stccl-metric",
    "checkpointing_steps": 500,
    "checkpoints_total_limit": None,
    "resume_from_checkpoint": None,  # a checkpoint folder or "latest"
    "overwrite_output_dir": False,  # a fresh run into a folder with another run's checkpoints refuses without it
    "report_to": "tensorboard",  # tensorboard | wandb | all | none
    "logging_dir": "logs",
    "logging_steps": 10,
}

_CHOICES = {
    "data": ("synthetic", "videos", "mead", "real_pairs"),
    "face_align": (None, "haar", "dlib", "insightface"),
    "face_focus": ("face", "mouth"),
    "correlation": ("vd", "cm"),
    "mixed_precision": ("no", "fp16", "bf16"),
}


def _coerce(key: str, value: Any, from_cli: bool) -> Any:
    """CLI strings are YAML scalars (``null``, ``1e-4``, ``[1,1,1,1]``, ``true``)."""
    if from_cli and isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    if isinstance(value, str):
        # YAML 1.1 reads `3e-5` (no dot) as a string.
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    if key == "mixed_precision" and value is False:  # YAML 1.1 reads a bare `no` as false
        value = "no"
    if key == "holdout" and isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ValueError(f"{key}: expected one of {list(_CHOICES[key])}, got {value!r}")
    return value


def load_config(path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Defaults <- YAML file <- overrides. Unknown keys raise ValueError naming them."""
    cfg = dict(DEFAULT_CONFIG)
    layers = []
    if path is not None:
        with open(path) as f:
            file_cfg = yaml.safe_load(f) or {}
        if not isinstance(file_cfg, dict):
            raise ValueError(f"expected a flat mapping of keys in {path!r}, got {type(file_cfg).__name__}")
        layers.append((f"config {path!r}", file_cfg, False))
    layers.append(("command line", overrides or {}, True))
    for origin, values, from_cli in layers:
        unknown = sorted(set(values) - set(DEFAULT_CONFIG))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown} in {origin}; known keys: {sorted(DEFAULT_CONFIG)}")
        for k, v in values.items():
            cfg[k] = _coerce(k, v, from_cli)
    return cfg


def parse_args(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``--config FILE`` plus ``--key value`` / ``--key=value`` pairs for any config key."""
    argv = list(sys.argv[1:] if argv is None else argv)
    path, overrides, i = None, {}, 0
    while i < len(argv):
        tok = argv[i]
        if tok in ("-h", "--help"):
            print(__doc__)
            print("keys (defaults):\n" + "\n".join(f"  --{k} {v!r}" for k, v in DEFAULT_CONFIG.items()))
            raise SystemExit(0)
        if not tok.startswith("--"):
            raise ValueError(f"expected --key value pairs, got {tok!r}")
        if "=" in tok:
            key, val = tok[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ValueError(f"expected a value after {tok}")
            key, val = tok[2:], argv[i + 1]
            i += 2
        key = key.replace("-", "_")
        if key == "config":
            path = val
        else:
            overrides[key] = val
    return load_config(path, overrides)


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


def _checkpoints(output_dir: str) -> List[Tuple[int, str]]:
    """Complete checkpoints (``checkpoint-<step>`` folders; temporary ``.tmp-`` ones ignored)."""
    if not os.path.isdir(output_dir):
        return []
    out = []
    for n in os.listdir(output_dir):
        if n.startswith("checkpoint-") and n[len("checkpoint-"):].isdigit():
            p = os.path.join(output_dir, n)
            if os.path.isfile(os.path.join(p, "trainer_state.json")):
                out.append((int(n[len("checkpoint-"):]), p))
    return sorted(out)


def save_checkpoint(accelerator, output_dir: str, step: int, sampler: EpochSampler, total_limit: Optional[int] = None) -> str:
    """``accelerator.save_state`` into ``.tmp-checkpoint-<step>``, then an atomic rename: a kill
    mid-write leaves only a temporary folder that resuming ignores."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    tmp = os.path.join(output_dir, f".tmp-checkpoint-{step}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    # Every rank writes its RNG state into tmp: rename only once all are done.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            f.write(dumps_strict({"global_step": step, "sampler": sampler.state_dict()}))
        write_manifest(tmp)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        if total_limit:
            for _, old in _checkpoints(output_dir)[: -int(total_limit)]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve_checkpoint(output_dir: str, which: Optional[str]) -> Optional[str]:
    """The checkpoint to resume from, every file verified against its manifest; `latest` falls back
    from a damaged newest checkpoint to the newest complete one, naming the damaged file."""
    if not which:
        return None
    if which == "latest":
        damaged = []
        for _, path in reversed(_checkpoints(output_dir)):
            problem = verify_manifest(path)
            if problem is None:
                if damaged:
                    logger.warning("skipping damaged %s; resuming from %s, the newest complete checkpoint",
                                   "; ".join(damaged), path)
                return path
            damaged.append(f"{os.path.basename(path)} ({problem})")
        if damaged:
            raise ValueError(f"resume_from_checkpoint=latest: every checkpoint in {output_dir} is damaged: {'; '.join(damaged)}")
        return None
    if not os.path.isfile(os.path.join(which, "trainer_state.json")):
        raise ValueError(f"resume_from_checkpoint: expected a checkpoint folder with trainer_state.json or 'latest', got {which!r}")
    problem = verify_manifest(which)
    if problem is not None:
        raise ValueError(f"resume_from_checkpoint: {which} is damaged: {problem}; pass `latest` or an earlier checkpoint")
    return which


def check_fresh_output_dir(cfg: Dict[str, Any], resuming: bool) -> None:
    """A fresh run refuses an `output_dir` holding another run's checkpoints (unless overwriting)."""
    old = [os.path.basename(p) for _, p in _checkpoints(cfg["output_dir"])]
    if old and not resuming and not cfg.get("overwrite_output_dir"):
        raise FileExistsError(
            f"{cfg['output_dir']} holds another run's checkpoints ({', '.join(old)}); pass --resume_from_checkpoint "
            "latest to continue it, --overwrite_output_dir true to start over, or another --output_dir"
        )


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def train(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Run metric learning; returns a summary (steps, held-out gap before/after, wall time)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

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
    set_seed(int(cfg["seed"]))
    if accelerator.is_main_process:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "pretrain_config.yaml"), "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)

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
    ckpt = resolve_checkpoint(out_dir, cfg["resume_from_checkpoint"])
    check_fresh_output_dir(cfg, resuming=ckpt is not None)
    if cfg["resume_from_checkpoint"] and ckpt is None:
        logger.info("resume_from_checkpoint=%s: no checkpoint in %s, starting fresh", cfg["resume_from_checkpoint"], out_dir)
    if ckpt is not None:
        accelerator.load_state(ckpt)
        with open(os.path.join(ckpt, "trainer_state.json")) as f:
            state = json.load(f)
        global_step = int(state["global_step"])
        sampler.load_state_dict(state["sampler"])
        logger.info("resumed from %s at step %d", ckpt, global_step)

    if report_to and accelerator.is_main_process:
        accelerator.init_trackers("stccl-pretrain", config={k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in cfg.items()})

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
            save_checkpoint(accelerator, out_dir, global_step, sampler, cfg["checkpoints_total_limit"])
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
    lock = RunLock(cfg["output_dir"]).acquire() if int(os.environ.get("RANK", "0")) == 0 else None
    try:
        summary = train(cfg)
    finally:
        if lock is not None:
            lock.release()
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
