"""One accelerate training loop for every talking-head backend.

It knows nothing about DICE-Talk, EAT or diffusion: a backend is a
:class:`~stccl_diffusers.training.adapter.TalkingHeadAdapter` whose ``training_step`` returns the
loss. What lives here once, for both training scripts:

- accelerate set-up (CPU, one or many GPUs, fp16/bf16), gradient accumulation, gradient
  checkpointing and xformers hooks;
- LoRA through peft on ``adapter.lora_model()`` (or named modules in full), trainable weights
  kept in fp32 under mixed precision (``cast_training_params``);
- a non-finite guard: a NaN/inf loss (on any rank) or gradient never reaches the optimizer; the
  step is skipped, counted and warned about;
- ``checkpoint-{step}`` directories written atomically with ``accelerator.save_state``,
  ``checkpoints_total_limit``, and ``resume_from_checkpoint latest`` that continues the same
  step count with the same data order and per-step noise as an uninterrupted run;
- tqdm, ``report_to`` trackers, a JSON-lines step log, periodic validation through a callable.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .adapter import TalkingHeadAdapter
from ..utils.jsonio import dumps_strict
from ..utils.safety import write_into
from .checkpoints import (  # noqa: F401  (list_checkpoints, check_resume_config: this module's API too)
    CHECKPOINT_PREFIX,
    RUN_CONFIG_FILE,
    STATE_FILE,
    check_resume_config,
    claim_output_dir,
    list_checkpoints,
    read_state,
    resolve_checkpoint,
    save_checkpoint,
)
from .config import TrainingConfig, config_to_dict

logger = logging.getLogger(__name__)

STEP_LOG = "train_log.jsonl"
VALIDATION_LOG = "validation_log.jsonl"

ValidationFn = Callable[[TalkingHeadAdapter, int], dict[str, Any]]


# ----------------------------------------------------------------------------- accelerate
def build_accelerator(cfg: TrainingConfig):
    """An `Accelerator` configured from the flat config (trackers, precision, accumulation)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    if cfg.report_to not in ("tensorboard", "wandb", "all", "none"):
        raise ValueError(f"report_to must be tensorboard, wandb, all or none, got {cfg.report_to!r}")
    if cfg.mixed_precision not in (None, "no", "fp16", "bf16"):
        raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {cfg.mixed_precision!r}")
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("--mixed_precision fp16 needs a CUDA GPU and none is available; on CPU use "
                         "--mixed_precision bf16 (CPU autocast) or --mixed_precision no")
    if cfg.report_to in ("wandb", "all"):
        try:
            import wandb  # noqa: F401
        except ImportError as err:
            raise ImportError("--report_to wandb needs `pip install wandb`") from err
    out = Path(cfg.output_dir)
    project = ProjectConfiguration(project_dir=str(out), logging_dir=str(out / cfg.logging_dir))
    kwargs = {}
    if cfg.mixed_precision is not None:
        kwargs["mixed_precision"] = cfg.mixed_precision
    # Under torchrun on a machine without CUDA, accelerate picks gloo DDP only when told `cpu=True`
    # (otherwise each process silently trains alone).
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    if multi_cpu:
        kwargs["cpu"] = True
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_config=project,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.ddp_find_unused_parameters)],
        **kwargs,
    )
    if cfg.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    return accelerator


def weight_dtype_for(accelerator) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(str(accelerator.mixed_precision), torch.float32)


# ----------------------------------------------------------------------------- trainables
def configure_trainable(adapter: TalkingHeadAdapter, cfg: TrainingConfig) -> list[torch.nn.Parameter]:
    """Freeze everything, then add LoRA (peft) or unfreeze the named modules; returns the trainables.

    LoRA: `LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian",
    target_modules=lora_target_modules)`, injected into `adapter.lora_model()` as in diffusers'
    LoRA examples.
    """
    adapter.requires_grad_(False)
    if cfg.train_mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        model = adapter.lora_model()
        if model is None:
            raise ValueError(f"{type(adapter).__name__} has no LoRA target; use train_mode: full")
        lora_config = LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.lora_alpha or cfg.rank,
            init_lora_weights="gaussian",
            target_modules=list(cfg.lora_target_modules),
        )
        inject_adapter_in_model(lora_config, model)
        adapter.mark_lora_applied()
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
    elif cfg.train_mode == "full":
        modules = dict(adapter.named_modules())
        names = list(cfg.trainable_modules)
        if not names:
            model = adapter.lora_model()
            if model is None:
                raise ValueError("train_mode: full needs trainable_modules (the adapter names no default model)")
            model.requires_grad_(True)
        for name in names:
            if name not in modules:
                raise ValueError(
                    f"trainable_modules: no module named {name!r} in {type(adapter).__name__}; "
                    f"top-level modules are {[n for n in modules if n and '.' not in n]}"
                )
            modules[name].requires_grad_(True)
    else:
        raise ValueError(f"train_mode must be 'lora' or 'full', got {cfg.train_mode!r}")
    params = adapter.trainable_parameters()
    adapter.mark_trainables_chosen()
    if not params:
        raise ValueError("nothing to train: no parameter requires grad after configuring train_mode")
    return params


# ----------------------------------------------------------------------------- data order
class EpochShuffleSampler(Sampler[int]):
    """A permutation that is a pure function of (seed, epoch), so a resumed run sees the same order."""

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True) -> None:
        if length <= 0:
            raise ValueError(f"training dataset is empty (length {length})")
        self.length, self.seed, self.shuffle, self.epoch = length, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.length))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=g).tolist())

    def __len__(self) -> int:
        return self.length


def step_generator(seed: int, process_index: int, global_step: int, micro_step: int, device) -> torch.Generator:
    """Noise for one micro-batch depends only on (seed, rank, step), not on RNG history (resume-exact)."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + process_index * 7_919 + global_step * 131 + micro_step) % (2**63 - 1))
    return g


# ----------------------------------------------------------------------------- checkpoints
def resolve_resume_path(cfg: TrainingConfig) -> Path | None:
    """`cfg.resume_from_checkpoint` resolved in `cfg.output_dir` (see `checkpoints.resolve_checkpoint`)."""
    return resolve_checkpoint(cfg.output_dir, cfg.resume_from_checkpoint)


def _register_hooks(accelerator, adapter: TalkingHeadAdapter) -> None:
    """Checkpoints hold only what is trained (LoRA / named modules), as in diffusers' examples."""

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for model in models:
                accelerator.unwrap_model(model).save_weights(output_dir)
                accelerator.unwrap_model(model).save_anchor_state(output_dir)
        while weights:
            weights.pop()

    def load_hook(models, input_dir):
        while models:
            unwrapped = accelerator.unwrap_model(models.pop())
            unwrapped.load_weights(input_dir)
            unwrapped.load_anchor_state(input_dir)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

def save_final_weights(adapter: TalkingHeadAdapter, out: Path) -> None:
    """The trained weights into `out`, each file written whole elsewhere first, then renamed in."""
    write_into(out, adapter.save_weights)


def _truncate_jsonl(path: Path, max_step: int) -> None:
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= max_step]
    path.write_text("".join(line + "\n" for line in keep))


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        return float(value.detach().float().item())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


# ----------------------------------------------------------------------------- gradient balance
#: Step-log keys that are counts of windows: summed over a step's micro-batches (not averaged), and
#: also kept as a running total `<key>_total` that survives resume.
COUNT_KEYS = ("stccl_skipped_neutral",)


def gradient_balance(
    stccl: torch.Tensor, task: torch.Tensor, params: list[torch.nn.Parameter], loss_scale: float = 1.0
) -> dict[str, float] | None:
    """How hard the STCCL term pulls against the task loss, on the trainable parameters.

    Args:
        stccl: the weighted STCCL term (scalar, with graph), as it is added to the loss.
        task: the task loss (scalar, with graph): the diffusion loss (DICE), EAT's own loss terms.
        params: the trainable parameters (the gradients are taken with respect to them jointly).
        loss_scale: fp16 gradient scale; both terms are multiplied by it before `autograd.grad` (as
            the real backward is, so small gradients do not underflow) and the norms divided by it.
    Returns:
        {"grad_norm/stccl": ||g_s||, "grad_norm/task": ||g_t||, "grad_ratio": ||g_s|| / ||g_t||,
        "grad_cos": <g_s, g_t> / (||g_s|| ||g_t||)} in fp32, where g_s, g_t are the gradients of
        `stccl` and `task` flattened over all `params`; None when a norm is not finite or 0 (no
        ratio or cosine to give). Neither `.grad` nor the graph is changed (`retain_graph=True`).
    """
    params = [p for p in params if p.requires_grad]
    if not params or not all(isinstance(t, torch.Tensor) and t.requires_grad for t in (stccl, task)):
        return None
    flat = []
    for term in (stccl, task):
        grads = torch.autograd.grad(term.float() * loss_scale, params, retain_graph=True, allow_unused=True)
        flat.append(torch.cat([(torch.zeros(p.numel(), device=p.device) if g is None else g.detach().float().reshape(-1))
                               for p, g in zip(params, grads)]) / loss_scale)
    g_s, g_t = flat
    n_s, n_t, dot = (float(v) for v in torch.stack([g_s.norm(), g_t.norm(), torch.dot(g_s, g_t)]).tolist())
    if not all(math.isfinite(v) for v in (n_s, n_t, dot)) or n_s == 0.0 or n_t == 0.0:
        return None
    return {"grad_norm/stccl": n_s, "grad_norm/task": n_t, "grad_ratio": n_s / n_t, "grad_cos": dot / (n_s * n_t)}


# ----------------------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    global_step: int
    skipped_steps: int
    resumed_from: str | None
    wall_time_s: float
    validations: list[dict] = field(default_factory=list)
    step_log: list[dict] = field(default_factory=list)


def train(
    adapter: TalkingHeadAdapter,
    train_dataset: Dataset,
    cfg: TrainingConfig,
    *,
    accelerator=None,
    collate_fn: Callable | None = None,
    validation_fn: ValidationFn | None = None,
    stop_after_steps: int | None = None,
) -> TrainResult:
    """Train `adapter` (see `_train`) in an output folder claimed for this run (lock, no overwrite)."""
    accelerator = accelerator or build_accelerator(cfg)
    resume_path = resolve_resume_path(cfg)
    if resume_path is not None:
        check_resume_config(cfg, resume_path)
    lock = claim_output_dir(cfg.output_dir, cfg.overwrite_output_dir, resume_path, is_main=accelerator.is_main_process,
                            logs=(STEP_LOG, VALIDATION_LOG))
    try:
        return _train(adapter, train_dataset, cfg, accelerator=accelerator, collate_fn=collate_fn,
                      validation_fn=validation_fn, stop_after_steps=stop_after_steps, resume_path=resume_path)
    finally:
        if lock is not None:
            lock.release()


def _train(
    adapter: TalkingHeadAdapter,
    train_dataset: Dataset,
    cfg: TrainingConfig,
    *,
    accelerator=None,
    collate_fn: Callable | None = None,
    validation_fn: ValidationFn | None = None,
    stop_after_steps: int | None = None,
    resume_path: Path | None = None,
) -> TrainResult:
    """Train `adapter` on `train_dataset` for `cfg.max_train_steps` optimizer steps.

    `validation_fn(unwrapped_adapter, step) -> dict` runs on the main process at step 0 (if
    `validate_at_start`), every `validation_steps` and at the end; its scalars are logged.
    `stop_after_steps` ends the run early as a kill would (tests use it for resume checks).
    """
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from tqdm.auto import tqdm

    started = time.perf_counter()
    accelerator = accelerator or build_accelerator(cfg)
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)

    if not adapter.trainables_chosen:
        configure_trainable(adapter, cfg)
    if cfg.gradient_checkpointing:
        adapter.enable_gradient_checkpointing()
    if cfg.enable_xformers_memory_efficient_attention:
        from diffusers.utils.import_utils import is_xformers_available

        if not is_xformers_available():
            raise ValueError(
                "--enable_xformers_memory_efficient_attention was given but xformers is not installed; "
                "`pip install xformers` (CUDA only) or drop the flag"
            )
        adapter.enable_xformers()

    weight_dtype = weight_dtype_for(accelerator)
    adapter.to(accelerator.device)
    adapter.set_weight_dtype(weight_dtype)
    if weight_dtype != torch.float32:
        cast_training_params(adapter, dtype=torch.float32)  # fp32 master copies of what is trained

    lr = cfg.learning_rate
    if cfg.scale_lr:
        lr *= cfg.gradient_accumulation_steps * cfg.train_batch_size * accelerator.num_processes
    # A backend may bring its own param groups (EAT: one group per module at EAT's learning rates).
    params = adapter.optimizer_param_groups(lr) or adapter.trainable_parameters()
    optimizer = torch.optim.AdamW(
        params, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon
    )
    sampler = EpochShuffleSampler(len(train_dataset), seed=cfg.seed)
    loader = DataLoader(
        train_dataset,
        batch_size=cfg.train_batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=cfg.dataloader_num_workers,
        drop_last=len(train_dataset) >= cfg.train_batch_size * accelerator.num_processes,
    )
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=cfg.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=cfg.max_train_steps * accelerator.num_processes,
    )
    _register_hooks(accelerator, adapter)
    model, optimizer, loader, lr_scheduler = accelerator.prepare(adapter, optimizer, loader, lr_scheduler)
    if len(loader) == 0:
        raise ValueError(
            f"no full batch: {len(train_dataset)} clips for batch size {cfg.train_batch_size} x "
            f"{accelerator.num_processes} processes"
        )

    if accelerator.is_main_process and cfg.report_to != "none":
        tracker_cfg = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in config_to_dict(cfg).items()}
        accelerator.init_trackers(cfg.tracker_project_name, config=tracker_cfg)

    anchor_bytes = adapter.anchor_copy_bytes()
    if anchor_bytes:
        accelerator.print(f"anchor: frozen copy of the trainable weights as loaded, {anchor_bytes / 2**20:.2f} MiB "
                          f"({anchor_bytes} bytes) beside the model")
        accelerator.log({"anchor/copy_bytes": anchor_bytes}, step=0)

    global_step, skipped_steps, resumed_from = 0, 0, None
    totals: dict[str, float] = {k: 0.0 for k in COUNT_KEYS}
    if resume_path is not None:
        accelerator.print(f"Resuming from {resume_path}")
        accelerator.load_state(str(resume_path))
        state = read_state(resume_path)
        global_step, skipped_steps = int(state["global_step"]), int(state.get("skipped_steps", 0))
        totals.update({k: float(v) for k, v in state.get("totals", {}).items() if k in totals})
        resumed_from = str(resume_path)
        if accelerator.is_main_process:
            _truncate_jsonl(out / STEP_LOG, global_step)
            _truncate_jsonl(out / VALIDATION_LOG, global_step)
    elif accelerator.is_main_process:
        for name in (STEP_LOG, VALIDATION_LOG):
            (out / name).unlink(missing_ok=True)

    def run_validation(step: int) -> None:
        if validation_fn is None:
            return
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            was_training = unwrapped.training
            unwrapped.eval()
            with torch.no_grad():
                result = validation_fn(unwrapped, step) or {}
            unwrapped.train(was_training)
            record = {"step": step, **{k: v for k, v in result.items() if _scalar(v) is not None}}
            record = {k: (_scalar(v) if k != "step" else v) for k, v in record.items()}
            with open(out / VALIDATION_LOG, "a") as f:
                f.write(dumps_strict(record) + "\n")
            accelerator.log({f"validation/{k}": v for k, v in record.items() if k != "step"}, step=step)
            accelerator.print(f"validation @ step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "step"))
        accelerator.wait_for_everyone()

    if global_step == 0 and cfg.validate_at_start:
        run_validation(0)

    micro_per_epoch = len(loader)
    micro_done = global_step * cfg.gradient_accumulation_steps
    epoch, skip = divmod(micro_done, micro_per_epoch)
    progress = tqdm(
        total=cfg.max_train_steps, initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    trainables = [p for p in model.parameters() if p.requires_grad]
    model.train()
    bad_cycle = False
    micro_index = 0
    sums: dict[str, float] = {}
    counts = 0
    stop_at = cfg.max_train_steps if stop_after_steps is None else min(cfg.max_train_steps, stop_after_steps)
    # Gradient balance: due every `grad_balance_every` steps, measured on the first micro-batch of a
    # due step whose STCCL term is on (a gated / warmed-up / non-neutral one), then due again N later.
    balance_every = max(0, int(cfg.grad_balance_every or 0))
    balance_next = global_step
    balance: dict[str, float] | None = None

    while global_step < stop_at:
        sampler.set_epoch(epoch)
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        iterator = accelerator.skip_first_batches(loader, skip) if skip else loader
        skip = 0
        for batch in iterator:
            with accelerator.accumulate(model):
                generator = step_generator(cfg.seed, accelerator.process_index, global_step, micro_index, accelerator.device)
                outputs = model(batch, global_step, generator)
                loss = outputs["loss"]
                # All ranks must agree, or DDP would wait forever for a rank that skipped backward.
                finite = torch.isfinite(loss.detach().float()).all().to(accelerator.device).float().reshape(1)
                finite = bool(accelerator.gather(finite).min().item() > 0)
                terms = outputs.get("loss_terms")
                if (finite and balance_every and balance is None and global_step >= balance_next
                        and isinstance(terms, dict) and terms.get("stccl") is not None and terms.get("task") is not None):
                    scaler = getattr(accelerator, "scaler", None)
                    balance = gradient_balance(terms["stccl"], terms["task"], trainables,
                                               float(scaler.get_scale()) if scaler is not None else 1.0)
                    if balance is not None:  # this rank's micro-batch; not all-reduced (a diagnostic)
                        balance_next = global_step + balance_every
                if finite:
                    accelerator.backward(loss)
                else:
                    bad_cycle = True
                    # Touch every trainable with a zero gradient so DDP's reducer completes.
                    accelerator.backward(sum((p * 0).sum() for p in trainables))
                for k, v in outputs.items():
                    s = _scalar(v)
                    if s is not None:
                        sums[k] = sums.get(k, 0.0) + s
                counts += 1
                micro_index += 1
                if accelerator.sync_gradients:
                    grad_norm, clipped = None, None
                    if not bad_cycle:  # a backend's own clipping (EAT's); None: the loop clips below
                        grad_norm = adapter.clip_gradients(accelerator, cfg.max_grad_norm)
                        clipped = adapter.last_clipped if grad_norm is not None else None
                    if not bad_cycle and grad_norm is None and cfg.max_grad_norm and cfg.max_grad_norm > 0:
                        grad_norm = accelerator.clip_grad_norm_(trainables, cfg.max_grad_norm)
                        # clip_grad_norm_ returns the norm before clipping: it clipped when that exceeds the limit.
                        clipped = float(torch.as_tensor(grad_norm).float().item() > cfg.max_grad_norm)
                        # fp16's GradScaler skips inf steps itself; elsewhere a non-finite gradient is ours to stop.
                        if accelerator.mixed_precision != "fp16" and not torch.isfinite(torch.as_tensor(grad_norm)).all():
                            bad_cycle = True
                    if bad_cycle:
                        skipped_steps += 1
                        warnings.warn(
                            f"step {global_step}: non-finite loss or gradient; optimizer step skipped "
                            f"({skipped_steps} skipped so far)"
                        )
                    else:
                        optimizer.step()
                        lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
            if accelerator.sync_gradients:
                global_step += 1
                micro_index = 0
                logs = {k: (v if k in COUNT_KEYS else v / max(counts, 1)) for k, v in sums.items()}
                for k in COUNT_KEYS:
                    if k in logs:
                        totals[k] += logs[k]
                        logs[f"{k}_total"] = totals[k]
                logs["lr"] = lr_scheduler.get_last_lr()[0]
                logs["skipped_steps"] = skipped_steps
                logs["nonfinite"] = float(bad_cycle)
                if grad_norm is not None:
                    logs["grad_norm"] = float(torch.as_tensor(grad_norm).float().item())
                if clipped is not None:
                    logs["grad_clipped"] = float(clipped)
                if balance is not None:
                    logs.update(balance)
                sums, counts, bad_cycle, balance = {}, 0, False, None
                progress.update(1)
                progress.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}", stccl=f"{logs.get('stccl', 0.0):.4f}")
                accelerator.log(logs, step=global_step)
                if accelerator.is_main_process:
                    with open(out / STEP_LOG, "a") as f:
                        f.write(dumps_strict({"step": global_step, **logs}) + "\n")
                if cfg.checkpointing_steps and global_step % cfg.checkpointing_steps == 0:
                    save_checkpoint(
                        accelerator,
                        out,
                        global_step,
                        {"global_step": global_step, "skipped_steps": skipped_steps, "totals": totals},
                        cfg.checkpoints_total_limit,
                        run_config=config_to_dict(cfg),
                    )
                if (
                    cfg.validation_steps
                    and global_step % cfg.validation_steps == 0
                    and global_step < cfg.max_train_steps
                ):
                    run_validation(global_step)
                if global_step >= stop_at:
                    break
        epoch += 1
    progress.close()

    finished = global_step >= cfg.max_train_steps
    if finished:
        run_validation(global_step)
        if accelerator.is_main_process:
            save_final_weights(accelerator.unwrap_model(model), out)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(
        global_step=global_step,
        skipped_steps=skipped_steps,
        resumed_from=resumed_from,
        wall_time_s=time.perf_counter() - started,
        validations=read_jsonl(out / VALIDATION_LOG),
        step_log=read_jsonl(out / STEP_LOG),
    )
