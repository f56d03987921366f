"""The κ world of issue 22 for the benchmarks: training sets, base models and the deployment-case
evaluation, per coupling κ, built once and cached.

Training data: `stccl-synth --coupling κ` (emotional clips speak at their emotion's rate and open
the mouth with their loudness; κ = 0 is the original world). The base model of each backend is
trained from scratch on that data (reconstruction only) and cached under a name that carries κ.
Evaluation: :func:`~stccl_diffusers.eval.effect.deployment_clips` (training speakers saying
sentences training never saw, with neutral prosody, asked for every emotion), scored by
:func:`~stccl_diffusers.eval.effect.measure` with a probe whose opening range covers the
κ world's loud mouths (``open_max`` :data:`PROBE_OPEN_MAX`).

Used by `benchmarks/dose_check.py` (the without-STCCL arm at each κ: does the mouth error grow
with κ?) and `benchmarks/bench_effect.py`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

#: Upper end of the probe's opening factor in the κ world (angry at κ = 1 opens 1.35x the viseme).
PROBE_OPEN_MAX = 1.4


def kappa_tag(kappa: float, loudness_normalised: bool = False) -> str:
    """Folder-safe name of the world: κ 0 -> 'k0', 0.5 -> 'k0.5'; with loudness-normalised audio
    'k0.5n'."""
    return f"k{float(kappa):g}" + ("n" if loudness_normalised else "")


def world_data(base, kappa: float, cache: Path, emotions, synth_size: int = 64, loudness_normalised: bool = False):
    """The backend's training clips in the κ world: ``(dataset, data_dir)``.

    `base`: the backend's training config (``synth_speakers``, ``synth_clips``, ``seed``,
    ``num_frames``, ``resolution``, ``windows_per_clip``, ``reference``); the set is written once
    into ``cache/<backend data>_k<κ>[n]`` and reused (a set written with another κ, or the other
    loudness, is refused). ``loudness_normalised``: every clip's audio at one RMS
    (`stccl-synth --normalise-loudness`), so that only the emotion label predicts the mouth's gain."""
    from stccl_diffusers.data.clips import TalkingClipDataset
    from stccl_diffusers.data.clips import ensure_synthetic_clips

    data_dir = Path(cache) / f"{Path(base.data_dir).name}_{kappa_tag(kappa, loudness_normalised)}"
    ensure_synthetic_clips(data_dir, base.synth_speakers, base.synth_clips, size=synth_size, seed=base.seed,
                           coupling=float(kappa), loudness_normalised=loudness_normalised)
    data = TalkingClipDataset(str(data_dir), emotions, base.num_frames, base.resolution,
                              windows_per_clip=base.windows_per_clip, progress=False, reference=base.reference)
    return data, data_dir


def dice_base(base, data, cache: Path, kappa: float, log: Callable[[str], None] = print,
              model_seed: int | None = None, loudness_normalised: bool = False) -> tuple[Path, float]:
    """The ReferenceDICE base model trained on the κ world's data: ``(folder, build seconds)`` (0 when
    cached). `base` carries ``vae_fit_steps`` and ``base_train_steps``. ``model_seed``: the base's
    own training seed (None: ``base.seed``; the data stay those of ``base.seed``); a seed other than
    0 is part of the cache name. ``loudness_normalised``: the world of `data` (part of the cache name)."""
    from stccl_diffusers.adapters.dice import pretrain_reference_dice

    seed = base.seed if model_seed is None else int(model_seed)
    base = replace(base, seed=seed)
    base_dir = Path(cache) / "dice" / (f"reference_dice_{kappa_tag(kappa, loudness_normalised)}_v{base.vae_fit_steps}_b{base.base_train_steps}_"
                                       f"{base.reference}_mw{base.motion_weight:g}_bs{base.train_batch_size}"
                                       + ("_film" if base.emotion_time_embedding else "") + (f"_s{seed}" if seed else ""))
    if (base_dir / "config.json").is_file():
        return base_dir, 0.0
    t0 = time.perf_counter()
    log(f"dice κ={kappa:g}: pre-training the base model ({base.vae_fit_steps} VAE + {base.base_train_steps} EDM steps; "
        f"cached in {base_dir})")
    pretrain_reference_dice(base, data, base_dir)
    return base_dir, time.perf_counter() - t0


def eat_base(base, data, cache: Path, kappa: float, base_steps: int, adapter_for,
             log: Callable[[str], None] = print, model_seed: int | None = None,
             loudness_normalised: bool = False) -> tuple[Path, float]:
    """The reference EAT base model trained (reconstruction only, `base_steps`) on the κ world's
    data: ``(folder, build seconds)``. ``adapter_for(cfg) -> (adapter, generator)`` builds the
    training adapter as `train_eat_stccl.py` does. ``model_seed``, ``loudness_normalised``: as in
    :func:`dice_base`."""
    from stccl_diffusers.adapters.eat import eat_collate
    from stccl_diffusers.training.loop import train

    seed = base.seed if model_seed is None else int(model_seed)
    base = replace(base, seed=seed)
    base_dir = Path(cache) / "eat" / (f"reference_eat_{kappa_tag(kappa, loudness_normalised)}_b{base_steps}_{base.reference}_"
                                      f"mw{base.motion_weight:g}_bs{base.train_batch_size}" + (f"_s{seed}" if seed else ""))
    if (base_dir / "config.json").is_file():
        return base_dir, 0.0
    t0 = time.perf_counter()
    log(f"eat κ={kappa:g}: pre-training the base model ({base_steps} steps, reconstruction only; cached in {base_dir})")
    bcfg = replace(base, output_dir=str(base_dir.parent / f"base_run_{kappa_tag(kappa, loudness_normalised)}_s{seed}"), stccl_weight=0.0,
                   stccl_warmup_steps=0, stccl_ramp_steps=0, max_train_steps=base_steps, checkpointing_steps=0,
                   validation_steps=0, validate_at_start=False, resume_from_checkpoint=None)
    torch.manual_seed(base.seed)
    adapter, gen = adapter_for(bcfg)
    train(adapter, data, bcfg, collate_fn=eat_collate)
    gen.model.save_pretrained(str(base_dir))
    return base_dir, time.perf_counter() - t0


def training_identities(data_dir: Path):
    """The training speakers' faces (the tiny models cannot draw a face they never saw: the test
    set gives them new sentences, in neutral prosody)."""
    from stccl_diffusers.data.synthetic import speaker_identities

    return list(speaker_identities(str(data_dir)).values())


@torch.no_grad()
def windowed_stccl(metric, target: torch.Tensor, anchor: torch.Tensor, window: int, subset=None, seed: int = 0) -> float:
    """The STCCL score as training computes it, on an evaluation clip: one scoring for both.

    target, anchor: (T, 3, H, W) in [-1, 1]. The clip is cut into consecutive windows of `window`
    frames (the training ``num_frames``; a last, shorter remainder is dropped, and a clip shorter
    than one window is one window), each window keeps the training ``frame_subset`` (None: all its
    frames), and the score is the mean over windows. So a score has the same number of frame pairs
    as the training reward's, and its level compares with it (the temporal term's level depends on
    the number of frame pairs: 16 frames and a 4-frame subset of them score differently)."""
    import numpy as np

    from stccl_diffusers.training.validation import stccl_scores

    T = target.shape[0]
    w = min(int(window), T)
    idx = list(range(w)) if subset is None else [int(i) for i in subset if int(i) < w]
    if len(idx) < 2:
        raise ValueError(f"expected at least 2 scored frames per window (window {w}, subset {subset})")
    scores = []
    for k, start in enumerate(range(0, T - w + 1, w)):
        sel = torch.tensor([start + i for i in idx])
        scores.append(stccl_scores(metric, target[sel][None], anchor[sel][None], seed=seed * 1000 + k)["stccl"])
    return float(np.mean(scores))


@torch.no_grad()
def measure_by_emotion(render, clips, probe, metric, emotion_names, resolution: int, collate,
                       stccl_window: int | None = None, stccl_subset=None, rows_out: list | None = None) -> dict:
    """:func:`~stccl_diffusers.eval.effect.measure` plus the mouth measures per target emotion:
    ``{measure: mean over clips, ..., "curves": clip 0's curves, "by_emotion": {emotion: {gt_mae,
    gt_amp, gt_corr, neu_mae}}}``. ``render(batch, generator) -> {target, anchor}`` (B=1).
    ``stccl_window``: score ``stccl`` with :func:`windowed_stccl` (the training's window and frame
    subset) instead of over the whole clip. ``rows_out``: a list that receives every clip's row
    (its measures and mouth curves), for callers that draw more than clip 0."""
    import numpy as np

    from stccl_diffusers.eval.effect import clip_item, mean_scores, score_clip

    rows = []
    for k, c in enumerate(clips):
        batch = collate([clip_item(c, list(emotion_names).index(c["emotion"]), resolution)])
        out = render(batch, torch.Generator().manual_seed(k))
        windowed = stccl_window is not None and metric is not None
        row = score_clip(c, out["target"][0], out["anchor"][0], probe, None if windowed else metric, seed=k)
        if windowed:
            row["stccl"] = windowed_stccl(metric, out["target"][0].float().cpu(), out["anchor"][0].float().cpu(),
                                          stccl_window, stccl_subset, seed=k)
        rows.append({**row, "emotion": c["emotion"]})
    if rows_out is not None:
        rows_out.extend(rows)
    agg = mean_scores(rows)
    agg["curves"] = {"gt": rows[0]["curve_gt"], "target": rows[0]["curve_target"], "anchor": rows[0]["curve_anchor"],
                     "emotion": rows[0]["emotion"]}
    by = {}
    for emo in dict.fromkeys(r["emotion"] for r in rows):
        sel = [r for r in rows if r["emotion"] == emo]
        by[emo] = {m: float(np.nanmean([r[m] for r in sel])) if not all(np.isnan(r[m]) for r in sel) else None
                   for m in ("gt_mae", "gt_amp", "gt_corr", "neu_mae", "emotion_acc")}
    agg["by_emotion"] = by
    return agg
