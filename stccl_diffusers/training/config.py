"""Flat training configuration: a YAML file of `key: value` lines plus command-line overrides.

nanoGPT-style: one flat set of values, no nesting, no framework. The shared fields carry the
argument names of diffusers' example training scripts (`--train_batch_size`,
`--gradient_accumulation_steps`, `--mixed_precision`, `--checkpoints_total_limit`,
`--resume_from_checkpoint latest`, ...), so a diffusers user already knows them. A training
script subclasses :class:`TrainingConfig` with its own fields and calls :func:`parse_config`.

Precedence: dataclass default < YAML file (``--config``) < command line. A key in the YAML file
that is not a field is an error naming the file, the key and the closest field names.

Each field declares, next to its type and docstring, what a resume with a changed value does
(:func:`resume_rules`): ``shape(...)`` fields change parameter shapes, the model or the data it
was trained on, and a resume that changes one is refused; ``free(...)`` fields (where and how long
to run) may change silently; any other change is resumed with a warning.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

_NONE_WORDS = {"none", "null", "~", ""}

#: What a resume with a changed value of a field does: refuse (`shape`), warn (the default), or nothing (`free`).
RESUME_RULES = ("shape", "warn", "free")


def shape(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A field whose change alters parameter shapes, the model or the data it was trained on: a
    resume that changes it is refused (the saved and new values named)."""
    return field(default=default, default_factory=default_factory, metadata={"resume": "shape"})


def free(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A field that may change on resume without a warning (where and how long to run)."""
    return field(default=default, default_factory=default_factory, metadata={"resume": "free"})


def converted(convert: Any, default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
              resume: str = "warn") -> Any:
    """A field read by its own `convert(name, value) -> value` (raising ValueError) instead of by
    its type: values of more than one type (`r50` or `[1, 1, 1, 1]`) or a closed set of choices."""
    return field(default=default, default_factory=default_factory, metadata={"convert": convert, "resume": resume})


def resume_rules(cls: type) -> dict[str, str]:
    """{field: "shape" | "free" | "warn"} of a config class. A subclass that only changes a field's
    default keeps the rule of the class that declared it (the nearest declared rule in the MRO)."""
    rules = {}
    for f in dataclasses.fields(cls):
        rule = "warn"
        for klass in cls.__mro__:
            declared = getattr(klass, "__dataclass_fields__", {}).get(f.name)
            if declared is not None and "resume" in declared.metadata:
                rule = declared.metadata["resume"]
                break
        rules[f.name] = rule
    return rules
_TRUE_WORDS = {"1", "true", "yes", "on", "y"}
_FALSE_WORDS = {"0", "false", "no", "off", "n"}


@dataclass
class TrainingConfig:
    """Fields shared by every STCCL training script (names as in diffusers' example scripts)."""

    # -- run -------------------------------------------------------------------------------
    config: Optional[str] = free(None)
    """The YAML file the values were read from (`--config`, or the script's embedded demo); set by
    `parse_config` (not a YAML key), recorded in the run's metrics JSON."""
    output_dir: str = free("outputs")
    """Where checkpoints, weights, validation media, logs and the metrics JSON go."""
    logging_dir: str = free("logs")
    """TensorBoard directory, relative to `output_dir`."""
    seed: int = 0
    """Seeds weights, data order and the per-step noise generator (resume-exact)."""
    report_to: str = free("tensorboard")
    """`tensorboard`, `wandb`, `all` or `none`."""
    tracker_project_name: str = "stccl"
    overwrite_output_dir: bool = free(False)
    """A fresh run into an `output_dir` holding another run's checkpoints refuses unless this is set
    (then those checkpoints are moved aside to `output_dir/previous-<n>/`, never deleted)."""

    # -- optimisation --------------------------------------------------------------------
    train_batch_size: int = 1
    """Clips per device per micro-batch."""
    max_train_steps: int = free(1000)
    """Optimizer steps (after gradient accumulation)."""
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    learning_rate: float = 1e-4
    scale_lr: bool = False
    """Multiply the learning rate by accumulation steps x batch size x processes."""
    lr_scheduler: str = "constant"
    """Any name accepted by `diffusers.optimization.get_scheduler`."""
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    grad_balance_every: int = free(50)
    """Every N optimizer steps, measure the gradient norms the STCCL term and the task loss each put
    on the trainable parameters (two extra backward passes on one micro-batch) and log
    `grad_norm/stccl`, `grad_norm/task`, `grad_ratio` (stccl / task) and `grad_cos`; a step whose
    STCCL term is off (gate, warm-up, all-neutral batch) defers it to the next one. 0 disables."""
    mixed_precision: Optional[str] = None
    """`no`, `fp16` or `bf16`; None keeps what `accelerate config` chose."""
    allow_tf32: bool = False
    dataloader_num_workers: int = free(0)
    enable_xformers_memory_efficient_attention: bool = False
    ddp_find_unused_parameters: bool = False

    # -- what is trained -----------------------------------------------------------------
    train_mode: str = shape("lora")
    """`lora` (peft LoRA on the adapter's denoiser) or `full` (named modules in full)."""
    rank: int = shape(16)
    """LoRA rank."""
    lora_alpha: Optional[int] = shape(None)
    """LoRA alpha; None means alpha = rank (the diffusers examples' choice)."""
    lora_target_modules: list = shape(default_factory=lambda: ["to_k", "to_q", "to_v", "to_out.0"])
    trainable_modules: list = shape(default_factory=list)
    """With `train_mode: full`: adapter sub-module names trained in full (empty = all of the denoiser)."""

    # -- checkpoints and validation -------------------------------------------------------
    checkpointing_steps: int = 500
    checkpoints_total_limit: Optional[int] = None
    resume_from_checkpoint: Optional[str] = free(None)
    """A `checkpoint-{step}` path or `latest`."""
    validation_steps: int = free(100)
    """Validate every N optimizer steps (and once at the end); 0 disables periodic validation."""
    validate_at_start: bool = True
    """Also validate before the first step, so the note has a 'before' number."""


@dataclass
class TalkingClipsConfig(TrainingConfig):
    """What both talking-head scripts add: labelled clips (synthesized for the demos) and the
    frozen STCCL metric. Each script subclasses it and overrides the defaults it needs."""

    # -- data ------------------------------------------------------------------------------
    data_dir: str = "outputs/demo_data"
    """Folder of .mp4 clips (with audio) under emotion-named folders (MEAD layout works)."""
    synthesize_if_missing: bool = True
    """Synthesize demo clips when `data_dir` is missing; only ever into the demo's own folders
    (under `outputs/` or the cache, see `data.clips.prepare_clip_folder`), never a user's."""
    synth_speakers: int = 3
    synth_clips: int = 2
    windows_per_clip: int = 4
    resolution: int = shape(32)
    crop: str = "center"
    """How non-square clips become square (never squashed): `center` (largest centred square) or
    `face` (a square around the clip's detected face; clips without a face are skipped and named)."""
    num_frames: int = shape(8)
    reference: str = "first_frame"
    """Identity image of a training clip: `first_frame` (the clip's own) or `neutral` (the same
    speaker's neutral recording of the sentence, MEAD layout), so the emotion must come from the
    emotion input rather than be copied from the reference."""
    validation_seed: int = 1234

    # -- the STCCL metric ------------------------------------------------------------------
    metric_path: Optional[str] = shape(None)
    """A `save_pretrained` STCCLMetric (`stccl-pretrain`); None pretrains a small one into `output_dir/metric`."""
    metric_backbone: list = shape(default_factory=lambda: ["1", "1", "1", "1"])
    """Pretrained-here metric: `r18|r34|r50|r100` or 4 stage depths."""
    metric_input_size: int = shape(64)
    metric_pretrain_steps: int = 12
    stccl_weight: float = 0.1
    generator_loss: Optional[str] = None
    """Form of the STCCL generator loss (`stccl_diffusers.metric.GENERATOR_LOSSES`): `align`
    (1 - cos of the mapped correlations; minimal at the anchor), `nce`, `relational`,
    `align+relational`, or `paper` (the paper's InfoNCE, whose minimum is not the anchor: see
    docs/loss.md). None keeps the metric's own configured form (`align` for metrics this package
    writes). Metric learning always uses the paper's contrastive form."""
    anchor: str = "frozen"
    """What renders the neutral anchor: `frozen` (the model as it started: LoRA disabled for DICE,
    a frozen copy of the trainable modules as loaded at step 0 for EAT) or `current` (the model
    being trained, under no_grad: the paper's online pseudo-pairing, which lets the anchor drift)."""
    stccl_placebo: bool = False
    """Placebo arm (issue 22): the anchor's frames shuffled in time before scoring, same weight."""

    def __post_init__(self) -> None:
        if self.anchor not in ANCHORS:
            raise ValueError(f"`anchor` expects one of {ANCHORS}, got {self.anchor!r}")
        from ..metric import GENERATOR_LOSSES

        if self.generator_loss is not None and self.generator_loss not in GENERATOR_LOSSES:
            raise ValueError(f"`generator_loss` expects one of {list(GENERATOR_LOSSES)} or null, "
                             f"got {self.generator_loss!r}")


#: Choices of `TalkingClipsConfig.anchor`.
ANCHORS = ("frozen", "current")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _convert(name: str, tp: Any, value: Any, source: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type, or raise ValueError."""
    base, optional = _unwrap_optional(tp)
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS and base is not str):
        if optional or base in (list, dict):
            return None if optional else base()
        raise ValueError(f"{source}: `{name}` expects {getattr(base, '__name__', base)}, got None")
    if isinstance(value, str) and optional and base is str and value.strip().lower() in {"none", "null", "~"}:
        return None
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            word = str(value).strip().lower()
            if word in _TRUE_WORDS:
                return True
            if word in _FALSE_WORDS:
                return False
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)  # YAML reads `1e-4` as a string; float() accepts it
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if base in (list, typing.List) or typing.get_origin(base) is list:
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if isinstance(value, (list, tuple)):
                return list(value)
            raise ValueError
        if base in (dict,) or typing.get_origin(base) is dict:
            if isinstance(value, dict):
                return dict(value)
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(
            f"{source}: `{name}` expects {getattr(base, '__name__', base)}, got {value!r} "
            f"({type(value).__name__})"
        ) from None
    return value


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML mapping with `yaml.safe_load`; anything else is a ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a flat mapping of `key: value`, got {type(data).__name__}")
    for key, value in data.items():
        if isinstance(value, dict):
            raise ValueError(f"{path}: `{key}` is a nested mapping; the config is flat (one `key: value` per line)")
    return data


def config_from_dict(cls: type, values: dict[str, Any], source: str = "config") -> Any:
    """Build `cls` from a dict, converting types; unknown keys raise ValueError with suggestions."""
    types_ = _field_types(cls)
    unknown = [k for k in values if k not in types_]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), list(types_), n=3)
            hints.append(f"`{k}`" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ValueError(f"{source}: unknown key(s) {', '.join(hints)}; known keys: {', '.join(sorted(types_))}")
    fields_ = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in values.items():
        convert = fields_[k].metadata.get("convert")
        kwargs[k] = convert(k, v) if convert is not None else _convert(k, types_[k], v, source)
    return cls(**kwargs)


def build_argument_parser(cls: type, description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    parser.add_argument("--config", type=str, default=None, help="flat YAML config; flags override it")
    for f in dataclasses.fields(cls):
        if f.name == "config":  # the field records the `--config` file itself
            continue
        tp, _ = _unwrap_optional(_field_types(cls)[f.name])
        doc = f"(type {getattr(tp, '__name__', tp)})"
        if tp is list or typing.get_origin(tp) is list:
            parser.add_argument(f"--{f.name}", type=str, nargs="+", default=argparse.SUPPRESS, help=doc)
        elif tp is bool:
            # `--flag` alone means true (diffusers style); `--flag false` is also accepted.
            parser.add_argument(f"--{f.name}", type=str, nargs="?", const="true", default=argparse.SUPPRESS, help=doc)
        else:
            parser.add_argument(f"--{f.name}", type=str, default=argparse.SUPPRESS, help=doc)
    return parser


def parse_config(
    cls: type,
    argv: Sequence[str] | None = None,
    default_config: str | Path | None = None,
    description: str | None = None,
) -> Any:
    """Parse `--config file.yaml` plus `--key value` overrides into an instance of `cls`.

    `default_config` is used when no `--config` is given (the embedded demo). Unknown
    command-line flags make argparse exit with its usual message; unknown YAML keys raise
    ValueError naming the file.
    """
    parser = build_argument_parser(cls, description)
    args = vars(parser.parse_args(argv))
    config_path = args.pop("config", None) or default_config
    values: dict[str, Any] = {}
    source = "command line"
    if config_path is not None:
        values.update(load_yaml_config(config_path))
        source = str(config_path)
        if "config" in values:
            raise ValueError(f"{source}: `config` names the YAML file itself; give it with --config")
    config_from_dict(cls, values, source=source)  # validate the file alone, so errors name it
    cli = {}
    for key, value in args.items():
        if isinstance(value, list) and len(value) == 1 and "," in value[0]:
            value = value[0]
        cli[key] = value
    config_from_dict(cls, cli, source="command line")
    merged = {**values, **cli, "config": str(config_path) if config_path is not None else None}
    return config_from_dict(cls, merged, source=source)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def compare_resume_config(saved: dict[str, Any], current: dict[str, Any],
                          cls: type | None = None) -> tuple[list[str], list[str]]:
    """(refusing, warning) lines `key: saved -> current` for a resume with a changed config of
    class `cls` (each field's rule from :func:`resume_rules`; a key `cls` lacks warns)."""
    rules = resume_rules(cls) if cls is not None else {}
    refuse, warn = [], []
    for key in sorted(set(saved) | set(current)):
        rule = rules.get(key, "warn")
        if rule == "free" or key.startswith("_"):
            continue
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if a != b:
            (refuse if rule == "shape" else warn).append(f"{key}: {a!r} -> {b!r}")
    return refuse, warn
