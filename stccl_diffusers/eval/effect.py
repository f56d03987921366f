"""The with/without-STCCL measures on synthetic talking faces, shared by `benchmarks/bench_effect.py`
and the demos' `metrics.json`.

- :class:`Probe`: a small frozen CNN trained here on rendered frames (random identity, emotion,
  viseme opening) that reads a frame's emotion and mouth opening (:func:`ensure_probe`, cached).
- :func:`eval_clips`: held-out synthetic clips (identities and sentences training never saw): the
  neutral first frame as the identity reference, the target emotion's audio, and the renderer's
  exact `mouth_open` for that utterance in that emotion (the ground truth, never trained on).
- :func:`measure`: render every clip as target and neutral anchor and score it (see MEASURES).
- :func:`truth_scores`: the same measures on the renderer's own pair (the target emotion and the
  neutral rendering of the same utterance at the same timing): what a perfect generator scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.datasets import frames_to_tensor
from ..data.synthetic import (EMOTIONS, VISEMES, deployment_clip, make_pair, render_clip, render_face, sample_identity,
                              sample_utterance)
from .mouth import mouth_opening_curve, mouth_preservation
from ..data.clips import _resize
from ..training.validation import NULL_REASONS, stccl_scores, to_uint8  # noqa: F401  (NULL_REASONS: these measures' nulls)
from ..utils.jsonio import write_json

EVAL_EMOTIONS = EMOTIONS[1:]  # targets: every non-neutral emotion
MEASURES = ("emotion_acc", "anchor_emotion_acc", "gt_corr", "gt_mae", "gt_lag", "gt_amp", "neu_corr", "neu_mae", "neu_lag",
            "neu_amp", "px_gt_corr", "stccl")


class Probe(torch.nn.Module):
    """Tiny CNN: frame (3, H, W) in [-1, 1] -> (emotion logits over EMOTIONS, mouth opening)."""

    def __init__(self, width: int = 24):
        super().__init__()
        c = width
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, c, 3, 2, 1), torch.nn.SiLU(), torch.nn.Conv2d(c, 2 * c, 3, 2, 1), torch.nn.SiLU(),
            torch.nn.Conv2d(2 * c, 2 * c, 3, 2, 1), torch.nn.SiLU(), torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten())
        self.emotion = torch.nn.Linear(32 * c, len(EMOTIONS))
        self.mouth = torch.nn.Linear(32 * c, 1)

    def forward(self, x):
        h = self.body(x)
        return self.emotion(h), self.mouth(h)[:, 0]


def probe_frames(n: int, resolution: int, seed: int, open_max: float = 1.1):
    """n rendered frames (random identity, emotion, viseme opening/width) and their labels.

    The opening is the viseme's times a uniform factor in [0.3, ``open_max``]: 1.1 (the default,
    the original probe) or wider for the κ world, whose loud emotions open up to 1.35x."""
    rng = np.random.default_rng(seed)
    names = [v for v in VISEMES]
    frames, emo, opening = [], [], []
    for _ in range(n):
        ident = sample_identity(rng)
        e = int(rng.integers(len(EMOTIONS)))
        vis = VISEMES[names[int(rng.integers(len(names)))]]
        o = float(np.clip(vis.open * rng.uniform(0.3, open_max), 0, 1 if open_max == 1.1 else open_max))
        frames.append(render_face(ident, EMOTIONS[e], o, vis.width, size=64))
        emo.append(e)
        opening.append(o)
    x = torch.from_numpy(_resize(np.stack(frames), resolution)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, torch.tensor(emo), torch.tensor(opening, dtype=torch.float32)


def ensure_probe(cache: Path, resolution: int, frames: int, steps: int, open_max: float = 1.1) -> tuple[Probe, dict]:
    """The frozen probe (trained once, cached under `cache`). ``open_max``: see :func:`probe_frames`
    (1.1 keeps the original probe and its cache name)."""
    cache = Path(cache)
    path = cache / (f"probe_{resolution}px_{frames}x{steps}_s0" + ("" if open_max == 1.1 else f"_open{open_max:g}") + ".pt")
    with torch.random.fork_rng(devices=[]):  # its own initial weights, whatever ran before in the process
        torch.manual_seed(0)
        probe = Probe()
    if path.is_file():
        probe.load_state_dict(torch.load(path, weights_only=True))
        info = json.loads(path.with_suffix(".json").read_text())
        return probe.eval().requires_grad_(False), info
    x, y, o = probe_frames(frames, resolution, seed=1234, open_max=open_max)
    xv, yv, ov = probe_frames(300, resolution, seed=4321, open_max=open_max)  # held-out identities
    opt = torch.optim.Adam(probe.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        logits, m = probe(x[idx])
        loss = F.cross_entropy(logits, y[idx]) + 10 * F.mse_loss(m, o[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    probe.eval().requires_grad_(False)
    with torch.no_grad():
        logits, m = probe(xv)
    info = {"probe_val_emotion_acc": float((logits.argmax(1) == yv).float().mean()),
            "probe_val_mouth_corr": float(np.corrcoef(m.numpy(), ov.numpy())[0, 1]),
            "probe_frames": frames, "probe_steps": steps, "probe_open_max": open_max}
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(probe.state_dict(), path)
    write_json(path.with_suffix(".json"), info, indent=None)
    return probe, info


def eval_clips(n: int, num_frames: int, resolution: int, seed: int = 50_000,
               emotions: tuple[str, ...] = EVAL_EMOTIONS, identities=None) -> list[dict]:
    """Held-out clips: identity + utterance, the target emotion's rendering (ground truth, audio)
    and the neutral first frame as the identity reference. Clip i is in ``emotions[i % len]``.
    ``identities``: None draws new faces (identities training never saw); a list of
    :class:`~stccl_diffusers.data.synthetic.Identity` (e.g. training speakers,
    :func:`~stccl_diffusers.data.synthetic.speaker_identity`) gives clip i ``identities[i % len]``,
    saying a sentence training never saw. ``gt_neutral_frames``: the same utterance, face and timing
    rendered neutral (the perfect neutral anchor; :func:`truth_scores`)."""
    clips = []
    for i in range(n):
        emo = emotions[i % len(emotions)]
        face = identities[i % len(identities)] if identities else None
        pair = make_pair(seed + i, emotion=emo, size=64, identity=face)
        e = pair.emotional
        T = min(num_frames, e.num_frames)
        spf = e.sample_rate / e.fps
        frames = _resize(e.frames[:T], resolution)
        calm = render_clip(pair.identity, "neutral", pair.utterance, pair.tempo, fps=e.fps, size=e.frames.shape[1],
                           frame_indices=range(T), with_audio=False)
        clips.append({
            "emotion": emo, "gt_frames": frames, "gt_open": np.asarray(e.mouth_open[:T], np.float64),
            "gt_neutral_frames": _resize(calm.frames, resolution),
            "reference": _resize(pair.neutral.frames[:1], resolution)[0],
            "audio": np.asarray(e.audio[: int(round(T * spf))], np.float32), "fps": e.fps,
        })
    return clips


def deployment_clips(n: int, num_frames: int, resolution: int, seed: int = 60_000,
                     emotions: tuple[str, ...] = EVAL_EMOTIONS, identities=None,
                     loudness_normalised: bool = False) -> list[dict]:
    """The κ world's test set (issue 22): ``n`` held-out (face, sentence) pairs, each said with
    neutral prosody and asked for every emotion in ``emotions`` (``n * len(emotions)`` clips; clip
    ``i * len(emotions) + e`` is sentence i asked for emotion e, all sharing sentence i's audio).

    Every clip has the keys of :func:`eval_clips`: ``audio`` is the neutral recording (what a user
    brings), ``gt_frames`` the exact ground truth (the emotion's face with the mouth of that neutral
    audio, :func:`~stccl_diffusers.data.synthetic.deployment_clip`), ``gt_open`` (T,) its mouth
    opening (= the neutral one), ``gt_neutral_frames`` the neutral rendering (the perfect anchor),
    ``reference`` the neutral first frame; plus ``sentence`` (i). Frames (T, R, R, 3) uint8, T =
    min(num_frames, clip length). ``identities`` as in :func:`eval_clips` (None: new faces).
    Training never sees these sentences (seeds 60000+ are not used by any training set).
    ``loudness_normalised``: the neutral audio at one RMS, as in a training set written with
    `stccl-synth --normalise-loudness` (:func:`~stccl_diffusers.data.synthetic.normalise_loudness`)."""
    if n < 1 or num_frames < 3:
        raise ValueError(f"expected n >= 1 sentences and num_frames >= 3, got n={n}, num_frames={num_frames}")
    clips = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        face = identities[i % len(identities)] if identities else sample_identity(rng)
        utterance = sample_utterance(rng)
        neutral = None
        for emo in emotions:
            if emo not in EMOTIONS:
                raise ValueError(f"expected emotions from {list(EMOTIONS)}, got {emo!r}")
            neutral, truth = deployment_clip(face, utterance, emo, size=64, seed=seed + i,
                                             loudness_normalised=loudness_normalised)
            T = min(num_frames, truth.num_frames)
            spf = truth.sample_rate / truth.fps
            clips.append({
                "emotion": emo, "sentence": i, "gt_frames": _resize(truth.frames[:T], resolution),
                "gt_open": np.asarray(truth.mouth_open[:T], np.float64),
                "gt_neutral_frames": _resize(neutral.frames[:T], resolution),
                "reference": _resize(neutral.frames[:1], resolution)[0],
                "audio": np.asarray(neutral.audio[: int(round(T * spf))], np.float32), "fps": truth.fps,
            })
    return clips




def _amp_ratio(reference: np.ndarray, generated: np.ndarray) -> float:
    """std(generated) / std(reference) over frames where both are finite: 1 = the same swing, > 1 an
    over-articulating mouth, < 1 an under-articulating one. NaN (with no division) where the
    reference does not move (std < 1e-6): no amplitude to compare against."""
    a, g = np.asarray(reference, np.float64), np.asarray(generated, np.float64)
    n = min(len(a), len(g))
    a, g = a[:n], g[:n]
    ok = np.isfinite(a) & np.isfinite(g)
    sa = float(np.std(a[ok])) if ok.sum() >= 2 else 0.0
    return float(np.std(g[ok]) / sa) if sa > 1e-6 else float("nan")


def clip_item(c: dict, emotion_index: int, resolution: int) -> dict:
    return {
        "frames": torch.from_numpy(c["gt_frames"]).permute(0, 3, 1, 2).float() / 127.5 - 1,  # shape only
        "reference": torch.from_numpy(c["reference"]).permute(2, 0, 1).float() / 127.5 - 1,
        "audio": torch.from_numpy(c["audio"]), "emotion": torch.tensor(emotion_index),
        "face_box": torch.tensor([0.0, 0.0, float(resolution), float(resolution)]), "fps": torch.tensor(c["fps"]),
    }


@torch.no_grad()
def score_clip(clip: dict, target: torch.Tensor, anchor: torch.Tensor, probe: Probe, metric=None, seed: int = 0) -> dict:
    """Every measure of one clip. target, anchor: (T, 3, H, W) in [-1, 1], the generated clip in the
    target emotion and its neutral anchor; `clip` from :func:`eval_clips`. ``stccl`` needs `metric`."""
    tgt, anc = target.float().cpu(), anchor.float().cpu()
    logits, m_t = probe(tgt.clamp(-1, 1))
    logits_a, m_a = probe(anc.clamp(-1, 1))
    label = EMOTIONS.index(clip["emotion"])
    gt = mouth_preservation(clip["gt_open"], m_t.numpy(), already_curves=True)
    neu = mouth_preservation(m_a.numpy(), m_t.numpy(), already_curves=True)
    try:
        px = mouth_preservation(mouth_opening_curve(clip["gt_frames"]), mouth_opening_curve(to_uint8(tgt)),
                                already_curves=True)["mouth_corr"]
    except ValueError:  # the detector rejects frames without a flat skin colour
        px = float("nan")
    sc = stccl_scores(metric, tgt[None], anc[None], seed=seed)["stccl"] if metric is not None else float("nan")
    return {"emotion_acc": float((logits.argmax(1) == label).float().mean()),
            "anchor_emotion_acc": float((logits_a.argmax(1) == label).float().mean()),
            "gt_corr": gt["mouth_corr"], "gt_mae": gt["mouth_mae"], "gt_lag": abs(gt["mouth_lag"]),
            "gt_amp": _amp_ratio(clip["gt_open"], m_t.numpy()),
            "neu_corr": neu["mouth_corr"], "neu_mae": neu["mouth_mae"], "neu_lag": abs(neu["mouth_lag"]),
            "neu_amp": _amp_ratio(m_a.numpy(), m_t.numpy()), "px_gt_corr": px, "stccl": sc,
            "curve_target": m_t.tolist(), "curve_gt": clip["gt_open"].tolist(), "curve_anchor": m_a.tolist()}


def mean_scores(rows: list[dict]) -> dict:
    """Mean of every measure over clips (NaNs skipped; NaN where all are NaN)."""
    return {k: float(np.nanmean([r[k] for r in rows])) if not all(np.isnan(r[k]) for r in rows) else float("nan")
            for k in MEASURES}


@torch.no_grad()
def measure(render, clips, probe, metric, emotions: list[str], resolution: int, collate) -> dict:
    """Render every clip (target + neutral anchor) and score it. ``render(batch) -> {target, anchor}``."""
    rows = []
    for k, c in enumerate(clips):
        batch = collate([clip_item(c, emotions.index(c["emotion"]), resolution)])
        out = render(batch, torch.Generator().manual_seed(k))
        rows.append(score_clip(c, out["target"][0], out["anchor"][0], probe, metric, seed=k))
    agg = mean_scores(rows)
    agg["curves"] = {"gt": rows[0]["curve_gt"], "target": rows[0]["curve_target"], "anchor": rows[0]["curve_anchor"]}
    return agg


@torch.no_grad()
def truth_scores(clips, probe, metric) -> dict:
    """Every measure for the renderer's own pair of each clip: target = the ground-truth rendering in
    the target emotion, anchor = the same utterance rendered neutral at the same timing. What a
    perfect generator would score: e.g. its ``stccl`` is the lowest target/anchor distance the metric
    can ask for on these clips, its ``neu_mae`` how much the emotion itself changes the mouth."""
    return mean_scores([score_clip(c, frames_to_tensor(c["gt_frames"]), frames_to_tensor(c["gt_neutral_frames"]),
                                   probe, metric, seed=k) for k, c in enumerate(clips)])


SYNC_CHECKS = ("itself", "in_sync", "shift_3", "shift_6", "frozen")


@torch.no_grad()
def metric_sync_check(clips, metric) -> dict:
    """Does the metric see mouth timing? Its STCCL score (mean over clips) between the ground-truth
    target and: ``itself`` (the loss's floor on this content), its neutral twin ``in_sync`` (the
    correct anchor), that twin delayed by 3 / 6 frames (``shift_3``/``shift_6``, mouth out of sync,
    rolled) and the twin's first frame held (``frozen``, no mouth motion). A metric that preserves
    mouth motion scores ``in_sync`` well below the shifted and frozen anchors."""
    rows = {k: [] for k in SYNC_CHECKS}
    for k, c in enumerate(clips):
        emo, calm = frames_to_tensor(c["gt_frames"]), frames_to_tensor(c["gt_neutral_frames"])
        anchors = {"itself": emo, "in_sync": calm, "shift_3": torch.roll(calm, 3, 0), "shift_6": torch.roll(calm, 6, 0),
                   "frozen": calm[:1].expand_as(calm)}
        for name, anchor in anchors.items():
            rows[name].append(stccl_scores(metric, emo[None], anchor[None], seed=k)["stccl"])
    return {k: float(np.mean(v)) for k, v in rows.items()}


def clip_scorer(clips: list[dict], probe: Probe, metric=None):
    """``score(target, anchor) -> {measure: mean over clips}`` for frames (B, T, 3, H, W) in [-1, 1]
    rendered from ``clips`` (clip b is row b). For validation functions (no re-rendering). Without a
    `metric` there is no ``stccl`` measure (left out, not NaN)."""

    @torch.no_grad()
    def score(target: torch.Tensor, anchor: torch.Tensor) -> dict:
        scores = mean_scores([score_clip(c, target[b], anchor[b], probe, metric, seed=b) for b, c in enumerate(clips)])
        if metric is None:
            del scores["stccl"]
        return scores

    return score


def synthetic_validation(n: int, num_frames: int, resolution: int, emotion_names: list[str], collate,
                         probe_dir: str | Path, seed: int, emotions: tuple[str, ...] = EVAL_EMOTIONS,
                         metric=None, probe_frames: int = 2000, probe_steps: int = 400, identities=None):
    """A demo's validation batch made of held-out synthetic clips (so the renderer's ground truth is
    known) and the scorer of the benchmark's measures on it: ``(batch, score, probe_info)``.
    `emotion_names`: the model's label vocabulary (clip emotions are looked up in it);
    `identities`: as in :func:`eval_clips`."""
    clips = eval_clips(n, num_frames, resolution, seed=seed, emotions=emotions, identities=identities)
    probe, info = ensure_probe(Path(probe_dir), resolution, probe_frames, probe_steps)
    batch = collate([clip_item(c, list(emotion_names).index(c["emotion"]), resolution) for c in clips])
    return batch, clip_scorer(clips, probe, metric), info
