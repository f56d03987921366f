"""The generator loss is a claim about its minimum: where ``metric(anchor, generated)`` is minimal
and which way its gradient pulls, on pixels, with no generator in between.

Every test goes through the public call ``metric(anchor, generated)`` with the metric's default
form, a fresh seeded metric (backbone 1,1,1,1, 64 px), and plain gradient steps on the pixels (no
Adam: Adam turns the tiny, noisy gradient at a minimum into full-size steps). The step size is set
so that the first step from the late clip moves the pixels by ``STEP_FRAC`` of their RMS distance
to the anchor: the minimum test then uses the same step size. Clips: synthetic (the renderer's
emotional clip and its neutral twin at the same timing, exact) and real MEAD frames (Source vs
STCCL_VD tiles, aligned by their measured motion lag: the edited tile's frame k moves with the
Source's frame k + 2, not k).
``benchmarks/loss_forms.py`` measures the same properties for every form.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from stccl_diffusers.metric import STCCLMetric

SIZE, FRAMES, LATE, STEP_FRAC = 64, 6, 3, 0.05


@pytest.fixture(scope="module")
def metric():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return STCCLMetric(backbone=(1, 1, 1, 1), input_size=SIZE, embedding_head=False)


@pytest.fixture(scope="module")
def synthetic_pair():
    """(neutral twin, emotional clip, emotional mouth_open): same face, utterance and timing."""
    from stccl_diffusers.data.datasets import frames_to_tensor
    from stccl_diffusers.data.synthetic import make_pair, render_clip

    p = make_pair(70_001, emotion="happy", size=SIZE, with_audio=False)
    e = p.emotional
    twin = render_clip(p.identity, "neutral", p.utterance, p.tempo, fps=e.fps, size=SIZE, with_audio=False)
    return frames_to_tensor(twin.frames), frames_to_tensor(e.frames)


_REAL = {}


@pytest.fixture
def real_pair(shared_data):
    if "pair" not in _REAL:
        _REAL["pair"] = _read_real_pair(shared_data / "real_pairs")
    return _REAL["pair"]


def _read_real_pair(d):
    from stccl_diffusers.data.datasets import PairedClipDataset

    files = sorted(f for f in os.listdir(d) if f.endswith(".mp4"))[:1]
    ds = PairedClipDataset.from_real_pairs(str(d), "stccl_vd", num_frames=FRAMES, size=SIZE, files=files)
    _, anchor, emotional = ds.clip(0)
    lag = _motion_lag(anchor, emotional)
    assert lag == 2, f"the tiles' measured lag changed: {lag}"
    return anchor[lag:], emotional[: len(emotional) - lag]


def _motion_lag(anchor, emotional, max_lag=6):
    """The k maximising the agreement of mouth-region motion between anchor[t + k] and emotional[t]
    (frame differences, so the emotion's constant appearance change does not count)."""
    mouth = lambda x: x[:, :, 40:60, 16:48]  # noqa: E731  (64 px crop: the lower middle of the face)
    best, lag = -2.0, 0
    for k in range(-max_lag, max_lag + 1):
        n = min(len(anchor), len(emotional)) - abs(k)
        a, e = mouth(anchor[max(0, k) : max(0, k) + n]), mouth(emotional[max(0, -k) : max(0, -k) + n])
        c = torch.nn.functional.cosine_similarity((a[1:] - a[:-1]).flatten(1), (e[1:] - e[:-1]).flatten(1), dim=1).mean()
        if float(c) > best:
            best, lag = float(c), k
    return lag


def _pair(request, name):
    return request.getfixturevalue("synthetic_pair" if name == "synthetic" else "real_pair")


def _loss(metric, anchor, x, draw):
    return metric(anchor[None], x[None], generator=torch.Generator().manual_seed(draw)).loss


def _mean_loss(metric, anchor, x, draws=4):
    with torch.no_grad():
        return float(np.mean([float(_loss(metric, anchor, x, 500 + d)) for d in range(draws)]))


def _grad(metric, anchor, x, draw):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_loss(metric, anchor, x, draw), x)
    return g


def _descend(metric, anchor, start, lr, steps):
    x = start.clone()
    for k in range(steps):
        x = (x - lr * _grad(metric, anchor, x, 1000 + k)).clamp(-1, 1)
    return x


def _step_size(metric, anchor, late):
    g = _grad(metric, anchor, late, 1000)
    rms = float(g.pow(2).mean().sqrt())
    assert rms > 0, "the loss has no gradient at the late clip"
    return STEP_FRAC * float((anchor - late).pow(2).mean().sqrt()) / rms


def _windows(clip_len, count=3):
    return [int(s) for s in np.linspace(LATE, clip_len - FRAMES - 6, count).round()]


@pytest.mark.parametrize("data", ["synthetic", "real"])
def test_the_anchor_is_the_minimum_and_descending_from_it_stays_there(metric, request, data):
    neutral, emotional = _pair(request, data)
    s = _windows(len(emotional))[1]
    anchor, late = neutral[s : s + FRAMES], emotional[s - LATE : s - LATE + FRAMES]
    # 1. No pull at the anchor: its gradient is negligible next to the late clip's (the paper's
    #    InfoNCE keeps a gradient of the same order there: it pushes the clip's regions apart).
    g_anchor = float(_grad(metric, anchor, anchor, 1000).norm())
    g_late = float(_grad(metric, anchor, late, 1000).norm())
    assert g_anchor < 1e-3 * g_late, (g_anchor, g_late)
    # 2. Nothing nearby scores lower: random perturbations of the pixels only raise the loss.
    at_anchor, scale = _mean_loss(metric, anchor, anchor), _mean_loss(metric, anchor, late)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        noisy = (anchor + 0.02 * torch.randn(anchor.shape, generator=gen)).clamp(-1, 1)
        assert _mean_loss(metric, anchor, noisy) >= at_anchor - 1e-6
    # 3. Plain descent at the step size that pulls the late clip neither lowers the loss below its
    #    value at the anchor (by 2 % of the late clip's) nor moves the pixels (by 5 % of that distance).
    end = _descend(metric, anchor, anchor, _step_size(metric, anchor, late), steps=5)
    assert _mean_loss(metric, anchor, end) >= at_anchor - 0.02 * scale
    assert float((end - anchor).abs().mean()) < 0.05 * float((late - anchor).abs().mean())


@pytest.mark.parametrize("data", ["synthetic", "real"])
def test_descent_direction_from_a_late_clip_points_toward_the_anchor(metric, request, data):
    neutral, emotional = _pair(request, data)
    coss = []
    for s in _windows(len(emotional)):
        anchor, late = neutral[s : s + FRAMES], emotional[s - LATE : s - LATE + FRAMES]
        g = _grad(metric, anchor, late, 1000)
        coss.append(float(torch.nn.functional.cosine_similarity(-g.flatten(), (anchor - late).flatten(), dim=0)))
    assert np.mean(coss) > 0.02, coss


def test_descent_from_a_late_real_clip_gets_closer_to_the_anchor(metric, real_pair):
    """Real frames, plain steps of a fixed RMS size (0.005 per pixel), 25 of them: the paper's InfoNCE
    ends farther than it started (1.02x in benchmarks/loss_forms.py), the default closer."""
    neutral, emotional = real_pair
    ratios = []
    for s in _windows(len(emotional), count=2):
        anchor, late = neutral[s : s + FRAMES], emotional[s - LATE : s - LATE + FRAMES]
        g = _grad(metric, anchor, late, 1000)
        end = _descend(metric, anchor, late, 0.005 / float(g.pow(2).mean().sqrt()), steps=25)
        ratios.append(float((end - anchor).abs().mean() / (late - anchor).abs().mean()))
    assert np.mean(ratios) < 0.99, ratios


def test_descent_from_a_late_clip_brings_the_mouth_back_in_sync(metric, synthetic_pair):
    from stccl_diffusers.eval.mouth import mouth_opening_curve

    def curve(x):
        return mouth_opening_curve(((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())

    neutral, emotional = synthetic_pair
    before, after = [], []
    for s in _windows(len(emotional)):
        anchor, late = neutral[s : s + FRAMES], emotional[s - LATE : s - LATE + FRAMES]
        sync = curve(emotional[s : s + FRAMES])
        end = _descend(metric, anchor, late, _step_size(metric, anchor, late), steps=15)
        before.append(np.corrcoef(curve(late), sync)[0, 1])
        after.append(np.corrcoef(curve(end), sync)[0, 1])
    assert np.mean(after) > np.mean(before), (before, after)


def test_loss_grows_with_the_anchor_shift_on_real_frames(metric, real_pair):
    """The in-sync real pair scores lowest, then 3 and 6 frames of shift, on average over windows.
    (On synthetic clips an untrained metric does not order 3 and 6: their syllables repeat every
    ~6 frames; benchmarks/loss_forms.py reports it.)"""
    neutral, emotional = real_pair
    rows = []
    for s in _windows(len(emotional), count=4):
        sync = emotional[s : s + FRAMES]
        rows.append([_mean_loss(metric, neutral[s + d : s + d + FRAMES], sync) for d in (0, 3, 6)])
    l0, l3, l6 = np.mean(rows, axis=0)
    assert l0 < l3 < l6, rows
