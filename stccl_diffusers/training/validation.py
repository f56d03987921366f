"""Validation media and numbers shared by the training scripts.

- a side-by-side MP4 (target emotion | neutral anchor) with the clip's audio, and a PNG grid
  (row 1 target, row 2 anchor, one column per frame, per validation clip);
- the STCCL score between the two streams (`metric(anchor, target)`: loss, pos/neg similarity)
  with a fixed region-sampling seed, so numbers from different steps are comparable;
- a loss-curve PNG from the loop's step log and a metrics JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..metric import STCCLMetric
from ..utils.jsonio import write_json


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [-1, 1] -> (..., H, W, 3) uint8."""
    x = ((frames.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def _check_pair(target: torch.Tensor, anchor: torch.Tensor) -> None:
    if target.ndim != 5 or target.shape[2] != 3 or target.shape != anchor.shape:
        raise ValueError(
            f"expected target and anchor (B, T, 3, H, W) of one shape, got {tuple(target.shape)} and {tuple(anchor.shape)}"
        )


def side_by_side_grid(target: torch.Tensor, anchor: torch.Tensor, upscale: int = 1, gap: int = 2,
                      max_columns: int | None = 8) -> np.ndarray:
    """PNG grid (rows: clip b target, clip b anchor, ...; columns: frames) as (rows*H, T*W, 3) uint8.

    Long clips show `max_columns` evenly spaced frames (the MP4 has them all).
    """
    _check_pair(target, anchor)
    if max_columns is not None and target.shape[1] > max_columns:
        idx = torch.linspace(0, target.shape[1] - 1, max_columns).round().long()
        target, anchor = target[:, idx], anchor[:, idx]
    B, T, _, H, W = target.shape
    t8, a8 = to_uint8(target), to_uint8(anchor)
    rows = []
    for b in range(B):
        for clip in (t8[b], a8[b]):
            row = np.full((H, T * (W + gap) - gap, 3), 255, np.uint8)
            for t in range(T):
                row[:, t * (W + gap): t * (W + gap) + W] = clip[t]
            rows.append(row)
        rows.append(np.full((gap * 2, rows[-1].shape[1], 3), 255, np.uint8))
    grid = np.concatenate(rows[:-1], axis=0)
    if upscale > 1:
        grid = grid.repeat(upscale, 0).repeat(upscale, 1)
    return grid


def side_by_side_video(target: torch.Tensor, anchor: torch.Tensor, index: int = 0, upscale: int = 1) -> np.ndarray:
    """(T, H, 2W, 3) uint8: clip `index`, target on the left, neutral anchor on the right."""
    _check_pair(target, anchor)
    both = np.concatenate([to_uint8(target[index]), to_uint8(anchor[index])], axis=2)
    if upscale > 1:
        both = both.repeat(upscale, 1).repeat(upscale, 2)
    return both


def _text_bar(width: int, lines: list[str], height_per_line: int = 14, scale: float = 0.4) -> np.ndarray:
    """(n * height_per_line, width, 3) white bar with black text lines (cv2's Hershey font)."""
    import cv2

    bar = np.full((height_per_line * max(1, len(lines)), width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(bar, line, (3, height_per_line * (i + 1) - 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return bar


def labelled_grid(rows: list[tuple[str, torch.Tensor]], title: str = "", upscale: int = 4, gap: int = 2,
                  max_columns: int | None = 8, label_width: int = 150) -> np.ndarray:
    """A grid of clip 0 of each stream (one row per `(label, frames (B, T, 3, H, W))`), a label
    column on the left and `title` (emotion, step) on top, as (rows*H*upscale + bars, ..., 3) uint8."""
    if not rows:
        raise ValueError("expected at least one (label, frames) row, got none")
    shape = rows[0][1].shape
    for label, x in rows:
        if x.ndim != 5 or x.shape[2] != 3 or x.shape[1:] != shape[1:]:
            raise ValueError(f"expected every row (B, T, 3, H, W) of shape {tuple(shape)}, got {label!r}: {tuple(x.shape)}")
    body = []
    for label, x in rows:
        # one row of frames: the first half of a (clip, clip) grid
        img = side_by_side_grid(x[:1], x[:1], upscale=upscale, gap=gap, max_columns=max_columns)
        h = x.shape[-2] * upscale
        img = img[:h]
        lab = _text_bar(label_width, [w for w in label.split("\n")], height_per_line=min(16, max(12, h // 3)))
        col = np.full((h, label_width, 3), 255, np.uint8)
        col[: min(h, lab.shape[0])] = lab[:h]
        body.append(np.concatenate([col, img], axis=1))
        body.append(np.full((gap * upscale, body[-1].shape[1], 3), 255, np.uint8))
    grid = np.concatenate(body[:-1], axis=0)
    if title:
        grid = np.concatenate([_text_bar(grid.shape[1], [title], 18, 0.5), grid], axis=0)
    return grid


def labelled_video(rows: list[tuple[str, torch.Tensor]], title: str = "", upscale: int = 4) -> np.ndarray:
    """(T, H', W', 3) uint8: clip 0 of every stream side by side, each under its label, `title` on top."""
    panels = []
    for label, x in rows:
        v = to_uint8(x[0])
        if upscale > 1:
            v = v.repeat(upscale, 1).repeat(upscale, 2)
        bar = _text_bar(v.shape[2], [label.replace("\n", " ")], 14, 0.35)
        panels.append(np.concatenate([np.broadcast_to(bar, (v.shape[0], *bar.shape)), v], axis=1))
    both = np.concatenate(panels, axis=2)
    if title:
        bar = _text_bar(both.shape[2], [title], 16, 0.45)
        both = np.concatenate([np.broadcast_to(bar, (both.shape[0], *bar.shape)), both], axis=1)
    h, w = both.shape[1:3]
    return np.ascontiguousarray(both[:, : h - h % 2, : w - w % 2])  # even sides for H.264


def save_validation_media(
    target: torch.Tensor,
    anchor: torch.Tensor,
    out_dir: str | Path,
    name: str,
    fps: float,
    audio: torch.Tensor | np.ndarray | None = None,
    sample_rate: int = 16000,
    upscale: int = 4,
    emotion: str | None = None,
    step: int | None = None,
    extra_rows: list[tuple[str, torch.Tensor]] | None = None,
) -> dict[str, str]:
    """Write `{name}.png` and `{name}.mp4` (clip 0, with `audio` (N,) when given), labelled: the
    title names the emotion and step, the rows "target (<emotion>)", "neutral anchor" and any
    `extra_rows` (e.g. the same model without STCCL). Also `{name}_all.png`: every clip, unlabelled."""
    import imageio.v2 as imageio

    from ..data.video_io import write_video

    _check_pair(target, anchor)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, mp4 = out_dir / f"{name}.png", out_dir / f"{name}.mp4"
    emo = emotion or "emotion"
    rows = [(f"target\n({emo})", target), ("neutral anchor\n(same model)", anchor), *(extra_rows or [])]
    title = "  ".join(p for p in (f"emotion: {emo}" if emotion else "", f"step {step}" if step is not None else "") if p)
    imageio.imwrite(png, labelled_grid(rows, title, upscale=upscale))
    if target.shape[0] > 1:
        imageio.imwrite(out_dir / f"{name}_all.png", side_by_side_grid(target, anchor, upscale=upscale))
    if audio is not None:
        audio = np.asarray(torch.as_tensor(audio).detach().float().cpu().numpy(), np.float32).reshape(-1)
        audio = audio[: int(round(target.shape[1] * sample_rate / fps))]
    write_video(str(mp4), labelled_video(rows, title, upscale=upscale), fps, audio, sample_rate)
    return {"png": str(png), "mp4": str(mp4)}


@torch.no_grad()
def stccl_scores(metric, target: torch.Tensor, anchor: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """STCCL between the neutral anchor and the target stream (floats): ``stccl``, the loss in the
    metric's training form (``generator_loss``), and the paper InfoNCE's positive / negative
    similarity (``pos_sim``, ``neg_sim``: the positive-only forms have no negatives)."""
    _check_pair(target, anchor)
    device = next(metric.parameters()).device if isinstance(metric, torch.nn.Module) else target.device
    a, t = anchor.to(device).clamp(-1, 1), target.to(device).clamp(-1, 1)
    out = metric(a, t, generator=torch.Generator(device=device).manual_seed(seed))
    sims = out
    if isinstance(metric, STCCLMetric) and metric.config.generator_loss != "paper":
        sims = metric(a, t, generator=torch.Generator(device=device).manual_seed(seed), form="paper")
    scores = {"stccl": float(out.loss), "pos_sim": float(sims.pos_sim), "neg_sim": float(sims.neg_sim)}
    scores["pos_minus_neg"] = scores["pos_sim"] - scores["neg_sim"]
    return scores


def _to_device(value, device):
    """Tensors anywhere in nested dicts/lists/tuples moved to `device` (EAT's batch nests `he_driving`)."""
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


class RewardHackingWatch:
    """Warns when the training reward improves while an independent instrument worsens (issue 22).

    The reward is the validation ``stccl`` score (lower = target closer to its anchor, as the
    metric sees it). The instrument is ``effect_neu_mae``: the frozen probe's mouth-opening
    distance between target and anchor (lower = the mouths agree); the probe is not the metric, so
    a generator cannot lower both by fooling one. Against the first validation: reward lower by
    more than ``tol_reward`` while the instrument is higher by more than ``tol_instrument`` ->
    ``RuntimeWarning`` (each time it holds) and ``reward_hacking = 1.0`` in the scores (else 0.0).
    Scores without both keys are left alone (no flag)."""

    def __init__(self, reward: str = "stccl", instrument: str = "effect_neu_mae", tol_reward: float = 0.0,
                 tol_instrument: float = 0.0):
        self.reward, self.instrument = reward, instrument
        self.tol_reward, self.tol_instrument = tol_reward, tol_instrument
        self.first: dict[str, float] | None = None

    def __call__(self, scores: dict[str, float], step: int) -> dict[str, float]:
        r, i = scores.get(self.reward), scores.get(self.instrument)
        if r is None or i is None or not (np.isfinite(r) and np.isfinite(i)):
            return scores
        if self.first is None:
            self.first = {"reward": float(r), "instrument": float(i), "step": step}
        hacked = r < self.first["reward"] - self.tol_reward and i > self.first["instrument"] + self.tol_instrument
        if hacked:
            import warnings

            warnings.warn(f"step {step}: the reward ({self.reward}) improved from {self.first['reward']:.4f} to {r:.4f} "
                          f"since step {self.first['step']} while the independent instrument ({self.instrument}) "
                          f"worsened from {self.first['instrument']:.4f} to {i:.4f}: possible reward hacking",
                          RuntimeWarning, stacklevel=2)
        scores["reward_hacking"] = float(hacked)
        return scores


def make_validation_fn(
    batch: dict[str, Any],
    metric,
    out_dir: str | Path,
    fps: float,
    sample_rate: int = 16000,
    seed: int = 0,
    upscale: int = 4,
    audio_key: str = "audio",
    emotion: str | None = None,
    no_stccl_fn: Callable | None = None,
    effect_fn: Callable | None = None,
) -> Callable:
    """A `validation_fn(adapter, step)` for :func:`stccl_diffusers.training.loop.train`.

    Renders `batch` with `adapter.render_validation` (same seed every time), writes
    `validation/step-{step:06d}.{png,mp4}` (labelled with `emotion` and the step) and returns the
    STCCL scores of target vs anchor. `no_stccl_fn(adapter, batch, generator, step, rendered) ->
    (label, frames) | None` adds a third row: the same model without STCCL (see
    :func:`lora_off_row` and :class:`BeforeSTCCLRow`). `effect_fn(target, anchor) -> {measure:
    value}` (:func:`stccl_diffusers.eval.effect.clip_scorer`) adds the benchmark's emotion and
    mouth measures as `effect_*`, and `no_stccl_*` for the third row's target-only measures.
    """
    out_dir = Path(out_dir)
    watch = RewardHackingWatch()  # needs `stccl` (metric) and `effect_neu_mae` (effect_fn); inert otherwise

    def validation_fn(adapter, step: int) -> dict[str, float]:
        device = next(adapter.parameters()).device
        moved = _to_device(batch, device)
        g = torch.Generator(device=device).manual_seed(seed)
        rendered = adapter.render_validation(moved, generator=g)
        target, anchor = rendered["target"].float().cpu(), rendered["anchor"].float().cpu()
        audio = batch.get(audio_key)
        extra = []
        if no_stccl_fn is not None:
            row = no_stccl_fn(adapter, moved, torch.Generator(device=device).manual_seed(seed), step, rendered)
            if row is not None:
                extra.append((row[0], row[1].float().cpu()))
        save_validation_media(target, anchor, out_dir / "validation", f"step-{step:06d}", fps,
                              audio[0] if audio is not None else None, sample_rate, upscale,
                              emotion=emotion, step=step, extra_rows=extra)
        scores = {}
        if metric is not None:
            scores = stccl_scores(metric, target, anchor, seed=seed)
        # How different the two streams are, in pixels: the emotion must show, the identity stay.
        scores["target_anchor_l1"] = float((target - anchor).abs().mean())
        if effect_fn is not None:
            scores.update({f"effect_{k}": v for k, v in effect_fn(target, anchor).items()})
            if extra:
                row = effect_fn(extra[0][1], anchor)
                scores.update({f"no_stccl_{k}": row[k] for k in ("emotion_acc", "gt_corr", "gt_mae", "gt_lag")})
        return watch(scores, step)

    return validation_fn


def lora_off_row(adapter, batch, generator, step, rendered):
    """Third validation row for a LoRA run: the target rendered with the LoRA layers switched off
    (the base model, i.e. the same model without the STCCL fine-tuning)."""
    from ..callback import adapters_disabled

    model = adapter.lora_model()
    try:
        with adapters_disabled(model):
            return "no STCCL\n(base, LoRA off)", adapter.render_validation(batch, generator=generator)["target"]
    except ValueError:  # no LoRA layers (train_mode full): there is no "off" to render
        return None


class BeforeSTCCLRow:
    """Third validation row for a run that switches STCCL on after a warm-up: the target as rendered
    at the last validation while the STCCL weight was still 0 (`weight_at(step) -> float`)."""

    def __init__(self, weight_at: Callable[[int], float]):
        self.weight_at = weight_at
        self.frames: torch.Tensor | None = None
        self.step: int | None = None

    def __call__(self, adapter, batch, generator, step, rendered):
        # Validation at `step` follows optimizer steps 0 .. step-1: STCCL-free if the last of them was.
        if self.weight_at(max(step - 1, 0)) == 0.0:
            self.frames, self.step = rendered["target"].detach().float().cpu().clone(), step
        if self.frames is None:
            return None
        return f"no STCCL yet\n(step {self.step})", self.frames


def plot_loss_curves(step_log: list[dict], path: str | Path, keys: tuple[str, ...] = ("loss", "diffusion", "stccl"),
                     validations: list[dict] | None = None) -> str:
    """Training curves (one panel per key found in the log, plus validation STCCL) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in keys if any(k in r for r in step_log)]
    if validations:
        panels.append("validation")
    if not panels:
        raise ValueError(f"nothing to plot: none of {keys} in the step log and no validations")
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), squeeze=False)
    for ax, key in zip(axes[0], panels):
        if key == "validation":
            steps = [r["step"] for r in validations]
            for k in ("stccl", "pos_sim", "neg_sim"):
                if all(k in r for r in validations):
                    ax.plot(steps, [r[k] for r in validations], marker="o", label=k)
            ax.legend()
        else:
            # The STCCL loss exists only on steps where the gate let a sample through
            # (`stccl_num_scored` > 0); elsewhere the log holds 0, which is "not applied", not "zero loss".
            gated_only = key == "stccl" and any("stccl_num_scored" in r for r in step_log)
            pts = [(r["step"], r[key]) for r in step_log
                   if key in r and not (gated_only and r.get("stccl_num_scored", 1) == 0)]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if gated_only else None)
            if gated_only:
                key = f"stccl (the {len(pts)} gated steps)"
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


#: Why a measure can be NaN (written as ``null`` in metrics.json / results.json, see utils.jsonio).
NULL_REASONS = {
    "px_gt_corr": "the pixel mouth detector rejects the frames (too small, e.g. 32 px, or no flat skin colour)",
    "gt_amp": "the ground-truth mouth does not move, no amplitude to compare against",
    "neu_amp": "the anchor's mouth does not move, no amplitude to compare against",
    "gt_corr": "correlation undefined: a mouth curve does not move",
    "neu_corr": "correlation undefined: a mouth curve does not move",
    "stccl": "no STCCL metric was given to score it",
}


def run_summary(result, started: float) -> dict[str, Any]:
    """What every training script puts in its metrics JSON about the run (one place for both):
    steps, skipped steps, the checkpoint resumed from, every validation with the first and the
    last, and the wall time since `started` (`time.perf_counter()`)."""
    import time

    return {"global_step": result.global_step, "skipped_steps": result.skipped_steps,
            "resumed_from": result.resumed_from, "validations": result.validations,
            "first_validation": result.validations[0] if result.validations else None,
            "last_validation": result.validations[-1] if result.validations else None,
            "wall_time_s": time.perf_counter() - started}


def write_metrics_json(path: str | Path, payload: dict[str, Any]) -> str:
    """Write ``payload`` as strict JSON: NaN or inf become ``null``, listed with the reason under
    ``"null_values"`` (see :mod:`stccl_diffusers.utils.jsonio`)."""
    def clean(v):
        if isinstance(v, torch.Tensor):
            return v.item() if v.numel() == 1 else v.tolist()
        if isinstance(v, (np.floating, np.integer)):
            return v.item()
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return write_json(path, clean(payload), why=NULL_REASONS)
