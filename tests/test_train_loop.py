"""The shared training loop: resume-after-kill, non-finite guard, LoRA in diffusers format, config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from stccl_diffusers.training import TalkingHeadAdapter, TrainingConfig, config_from_dict, list_checkpoints, train
from stccl_diffusers.training.adapter import LORA_WEIGHTS_NAME


class _Block(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.to_q = torch.nn.Linear(dim, dim)
        self.to_v = torch.nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.to_v(torch.tanh(self.to_q(x)))


class ToyAdapter(TalkingHeadAdapter):
    """A tiny regression 'generator'; the loss uses the per-step generator, like diffusion noise."""

    def __init__(self, dim: int = 6, nan_at_steps: tuple[int, ...] = ()) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(_Block(dim), _Block(dim))
        self.nan_at_steps = set(nan_at_steps)
        self.seen_steps: list[int] = []

    def lora_model(self):
        return self.net

    def training_step(self, batch, step, generator):
        self.seen_steps.append(step)
        x = batch["x"]
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        loss = ((self.net(x + 0.1 * noise) - batch["y"]) ** 2).mean()
        if step in self.nan_at_steps:
            loss = loss * float("nan")
        return {"loss": loss, "stccl": torch.zeros(())}

    def render_validation(self, batch, generator=None):
        frames = torch.zeros(1, 2, 3, 8, 8)
        return {"target": frames, "anchor": frames}


class ToyData(Dataset):
    def __init__(self, n: int = 12, dim: int = 6) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, dim, generator=g)
        self.y = torch.randn(n, dim, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def _cfg(out: Path, **kw) -> TrainingConfig:
    base = dict(
        output_dir=str(out), report_to="none", train_batch_size=2, max_train_steps=6, learning_rate=5e-2,
        checkpointing_steps=2, validation_steps=0, validate_at_start=False, rank=2, seed=3,
        lora_target_modules=["to_q", "to_v"], gradient_accumulation_steps=2,
    )
    base.update(kw)
    return config_from_dict(TrainingConfig, base)


def _trained(adapter) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in adapter.named_parameters() if p.requires_grad}


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    full = ToyAdapter()
    res_full = train(full, ToyData(), _cfg(tmp_path / "full"))
    assert res_full.global_step == 6

    killed = ToyAdapter()
    res_killed = train(killed, ToyData(), _cfg(tmp_path / "resumed"), stop_after_steps=3)
    assert res_killed.global_step == 3
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")] == ["checkpoint-2"]

    resumed = ToyAdapter()  # a fresh process: new weights, LoRA re-initialised, then load_state
    res = train(resumed, ToyData(), _cfg(tmp_path / "resumed", resume_from_checkpoint="latest"))
    assert res.resumed_from.endswith("checkpoint-2")
    assert res.global_step == 6
    assert resumed.seen_steps[0] == 2  # continues the step count, does not restart at 0
    a, b = _trained(full), _trained(resumed)
    assert a.keys() == b.keys() and len(a) == 8
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    steps = [r["step"] for r in res.step_log]
    assert steps == [1, 2, 3, 4, 5, 6]  # the step log was truncated to the checkpoint, no duplicates


def test_nonfinite_loss_never_reaches_the_optimizer(tmp_path):
    adapter = ToyAdapter(nan_at_steps=(1,))
    cfg = _cfg(tmp_path, max_train_steps=3, checkpointing_steps=0, gradient_accumulation_steps=1)
    with pytest.warns(UserWarning, match="non-finite"):
        res = train(adapter, ToyData(), cfg)
    assert res.skipped_steps == 1
    assert [r["nonfinite"] for r in res.step_log] == [0.0, 1.0, 0.0]
    for n, p in adapter.named_parameters():
        assert torch.isfinite(p).all(), n


def test_skipped_step_leaves_weights_untouched(tmp_path):
    # Every step is NaN: after training, the LoRA weights equal their initial values.
    adapter = ToyAdapter(nan_at_steps=(0, 1))
    from stccl_diffusers.training import configure_trainable

    cfg = _cfg(tmp_path, max_train_steps=2, checkpointing_steps=0, gradient_accumulation_steps=1)
    configure_trainable(adapter, cfg)
    init = _trained(adapter)
    with pytest.warns(UserWarning):
        res = train(adapter, ToyData(), cfg)
    assert res.skipped_steps == 2
    for k, v in _trained(adapter).items():
        torch.testing.assert_close(v, init[k], rtol=0, atol=0)


def test_checkpoints_total_limit_keeps_newest(tmp_path):
    train(ToyAdapter(), ToyData(), _cfg(tmp_path, max_train_steps=6, checkpointing_steps=1, checkpoints_total_limit=2,
                                         gradient_accumulation_steps=1))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-5", "checkpoint-6"]
    assert not list(tmp_path.glob("*.tmp"))


def test_lora_saved_in_diffusers_format_and_reloads(tmp_path):
    from safetensors.torch import load_file

    adapter = ToyAdapter()
    train(adapter, ToyData(), _cfg(tmp_path, max_train_steps=2, checkpointing_steps=0, gradient_accumulation_steps=1))
    sd = load_file(str(tmp_path / LORA_WEIGHTS_NAME))
    assert sd and all(k.startswith("unet.") for k in sd)
    assert any(".lora.down.weight" in k or "lora_A" in k for k in sd)
    fresh = ToyAdapter()
    from stccl_diffusers.training import configure_trainable

    configure_trainable(fresh, _cfg(tmp_path))
    fresh.load_weights(tmp_path)
    for k, v in _trained(adapter).items():
        torch.testing.assert_close(_trained(fresh)[k], v)


def test_full_mode_trains_named_module_only(tmp_path):
    adapter = ToyAdapter()
    cfg = _cfg(tmp_path, train_mode="full", trainable_modules=["net.1"], max_train_steps=1, checkpointing_steps=0,
               gradient_accumulation_steps=1)
    frozen = adapter.net[0].to_q.weight.detach().clone()
    train(adapter, ToyData(), cfg)
    torch.testing.assert_close(adapter.net[0].to_q.weight, frozen, rtol=0, atol=0)
    assert all(p.requires_grad for p in adapter.net[1].parameters())
    with pytest.raises(ValueError, match="no module named 'net.9'"):
        from stccl_diffusers.training import configure_trainable

        configure_trainable(ToyAdapter(), _cfg(tmp_path, train_mode="full", trainable_modules=["net.9"]))


def _dice_adapter(p_mean: float, weight: float = 1.0, anchor: str = "frozen"):
    from stccl_diffusers import STCCLMetric
    from stccl_diffusers.adapters.dice import DiceTrainingConfig, build_callback, build_reference_adapter
    from stccl_diffusers.models.reference_dice import ReferenceDICE

    torch.manual_seed(0)
    cfg = config_from_dict(DiceTrainingConfig, dict(num_frames=2, resolution=16, p_mean=p_mean, p_std=0.0,
                                                    stccl_weight=weight, drop_reference=0.0, drop_audio=0.0,
                                                    drop_emotion=0.0, anchor=anchor))
    model = ReferenceDICE(resolution=16, num_frames=2)
    metric = STCCLMetric(backbone=(1, 1, 1, 1), input_size=64, embedding_head=False)
    adapter = build_reference_adapter(cfg, model, build_callback(cfg, metric, decoder=model.vae))
    calls = []
    original = adapter.denoise

    def counting_denoise(x_t, sigma, cond):
        calls.append(torch.is_grad_enabled())
        return original(x_t, sigma, cond)

    adapter.denoise = counting_denoise
    return adapter, calls


def _dice_batch():
    g = torch.Generator().manual_seed(0)
    return {"frames": torch.rand(2, 2, 3, 16, 16, generator=g) * 2 - 1,
            "reference": torch.rand(2, 3, 16, 16, generator=g) * 2 - 1,
            "audio": torch.randn(2, 1280, generator=g) * 0.1, "emotion": torch.tensor([4, 6]),
            "face_box": torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 2)}


def test_ungated_step_skips_the_anchor_and_adds_nothing():
    adapter, calls = _dice_adapter(p_mean=3.0)  # sigma = e^3 ~ 20 > 1.62: t > 500 for every sample
    out = adapter.training_step(_dice_batch(), 0, torch.Generator().manual_seed(0))
    assert calls == [True]  # the target forward only; no neutral-anchor forward
    assert out["anchor_forward"] == 0.0 and float(out["stccl"]) == 0.0
    assert float(out["loss"].detach()) == float(out["diffusion"])
    assert out["stccl_gated_fraction"] == 0


def test_gated_step_runs_a_no_grad_neutral_anchor_and_adds_the_reward():
    # anchor "current": the whole UNet trains here (no LoRA to switch off for the frozen anchor).
    adapter, calls = _dice_adapter(p_mean=-1.0, anchor="current")  # sigma = e^-1 ~ 0.37 < 1.62: every sample gated
    adapter.requires_grad_(False)
    adapter.model.unet.requires_grad_(True)
    out = adapter.training_step(_dice_batch(), 0, torch.Generator().manual_seed(0))
    assert calls == [True, False]  # target with grad, anchor without
    assert out["anchor_forward"] == 1.0 and out["stccl_gated_fraction"] == 1.0
    assert float(out["stccl"]) > 0
    torch.testing.assert_close(out["loss"].detach(), out["diffusion"] + out["stccl"])
    # The reward's gradient reaches the denoiser (through x0-hat, the decoder and the metric).
    adapter.zero_grad()
    (out["loss"] - out["diffusion"]).backward()  # gradient of the STCCL term alone (diffusion is detached here)
    grads = [p.grad for p in adapter.model.unet.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_stccl_weight_zero_never_calls_the_callback():
    adapter, calls = _dice_adapter(p_mean=-1.0, weight=0.0)
    out = adapter.training_step(_dice_batch(), 0, torch.Generator().manual_seed(0))
    assert calls == [True] and float(out["stccl"]) == 0.0


def test_validation_media_put_target_and_anchor_side_by_side_with_audio(tmp_path):
    import imageio.v2 as imageio

    from stccl_diffusers.data.video_io import probe_video
    from stccl_diffusers.training.validation import save_validation_media, side_by_side_grid

    target = torch.full((1, 4, 3, 8, 8), 1.0)  # white
    anchor = torch.full((1, 4, 3, 8, 8), -1.0)  # black
    paths = save_validation_media(target, anchor, tmp_path, "v", fps=25.0, audio=torch.zeros(4 * 640), upscale=2)
    grid = imageio.imread(paths["png"])
    frames = grid[:, -16:]  # the frame columns (labels on the left, no title without emotion/step)
    assert grid.shape[0] == 2 * 8 * 2 + 2 * 2  # row 1 target, a gap, row 2 anchor (upscaled x2)
    assert frames[:16].min() == 255 and frames[-16:].max() == 0
    info = probe_video(paths["mp4"])
    w, h = info["size"]
    assert info["has_audio"] and w == 2 * 8 * 2 and h > 8 * 2  # the two streams side by side, a label bar on top
    assert side_by_side_grid(torch.zeros(1, 24, 3, 8, 8), torch.zeros(1, 24, 3, 8, 8)).shape[1] == 8 * 8 + 7 * 2


def test_clip_folder_reports_unreadable_and_unlabelled_clips_by_name(tmp_path):
    import numpy as np

    from stccl_diffusers.data.video_io import write_video
    from stccl_diffusers.models.reference_dice import DICE_EMOTIONS
    from stccl_diffusers.data.clips import TalkingClipDataset

    frames = np.full((10, 16, 16, 3), 128, np.uint8)
    write_video(str(tmp_path / "S1/happy/001.mp4"), frames, 25.0, np.zeros(6400, np.float32), 16000)
    (tmp_path / "S1/sad").mkdir(parents=True)
    (tmp_path / "S1/sad/002.mp4").write_bytes(b"not a video")
    write_video(str(tmp_path / "S1/other/003.mp4"), frames, 25.0, np.zeros(6400, np.float32), 16000)
    with pytest.warns(UserWarning, match="2 of 3 clips"):
        ds = TalkingClipDataset(tmp_path, DICE_EMOTIONS, num_frames=4, resolution=8, progress=False)
    skipped = dict(ds.skipped)
    assert any(k.endswith("002.mp4") for k in skipped) and any(k.endswith("003.mp4") for k in skipped)
    assert len(ds.clips) == 1 and ds.clips[0].emotion == DICE_EMOTIONS.index("happy")
    item = ds[0]
    assert item["frames"].shape == (4, 3, 8, 8) and item["audio"].shape == (2560,)
    (tmp_path / "S1/happy/001.mp4").unlink()
    with pytest.raises(ValueError, match="no usable .mp4 clip"):
        TalkingClipDataset(tmp_path, DICE_EMOTIONS, num_frames=4, resolution=8, progress=False)


# ------------------------------------------------------------------ gradient balance and counts
class _TwoTermAdapter(TalkingHeadAdapter):
    """f(x) = W x (no bias). task = mean((W x - y)^2), stccl = a * mean(W x), on identical rows, so both
    gradients have a closed form; stccl is off (None) on `off_steps`; `neutral` windows are counted."""

    def __init__(self, dim: int = 3, a: float = 0.7, off_steps=(), neutral: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(dim, dim, bias=False)
        self.a, self.off_steps, self.neutral = a, set(off_steps), neutral
        self.mark_trainables_chosen()

    def training_step(self, batch, step, generator):
        out = self.lin(batch["x"])
        task = ((out - batch["y"]) ** 2).mean()
        if step in self.off_steps:
            stccl, live = torch.zeros(()), None
        else:
            stccl = live = self.a * out.mean()
        return {"loss": task + stccl, "stccl": stccl.detach(), "stccl_skipped_neutral": self.neutral,
                "loss_terms": {"task": task, "stccl": live}}

    def render_validation(self, batch, generator=None):
        frames = torch.zeros(1, 2, 3, 8, 8)
        return {"target": frames, "anchor": frames}


class _SameRows(Dataset):
    def __init__(self, x, y, n: int = 4) -> None:
        self.x, self.y, self.n = x, y, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"x": self.x, "y": self.y}


def test_grad_balance_logs_the_ratio_and_cosine_of_the_two_gradients(tmp_path):
    import numpy as np

    x, y, a = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, 0.1, -0.4]), 0.7
    adapter = _TwoTermAdapter(a=a)
    W = adapter.lin.weight.detach().numpy().astype(np.float64).copy()
    xs, ys, d = x.numpy().astype(np.float64), y.numpy().astype(np.float64), 3
    # By hand: d task / dW = 2/d (W x - y) x^T; d stccl / dW = a/d 1 x^T.
    g_task = np.outer(2.0 / d * (W @ xs - ys), xs)
    g_stccl = np.outer(np.full(d, a / d), xs)
    n_s, n_t = np.linalg.norm(g_stccl), np.linalg.norm(g_task)
    cfg = _cfg(tmp_path, train_mode="full", gradient_accumulation_steps=1, max_train_steps=2, checkpointing_steps=0,
               grad_balance_every=5, max_grad_norm=0.0)
    result = train(adapter, _SameRows(x, y), cfg)
    first, second = result.step_log
    assert first["grad_norm/stccl"] == pytest.approx(n_s, rel=1e-5)
    assert first["grad_norm/task"] == pytest.approx(n_t, rel=1e-5)
    assert first["grad_ratio"] == pytest.approx(n_s / n_t, rel=1e-5)
    assert first["grad_cos"] == pytest.approx(float((g_stccl * g_task).sum() / (n_s * n_t)), rel=1e-5, abs=1e-7)
    assert "grad_ratio" not in second  # not due again for 5 steps


def test_grad_balance_skips_steps_without_stccl_and_never_logs_nan(tmp_path):
    x, y = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, 0.1, -0.4])
    cfg = _cfg(tmp_path, train_mode="full", gradient_accumulation_steps=1, max_train_steps=3, checkpointing_steps=0,
               grad_balance_every=100)
    result = train(_TwoTermAdapter(off_steps={0}), _SameRows(x, y), cfg)
    keys = ("grad_norm/stccl", "grad_norm/task", "grad_ratio", "grad_cos")
    assert not any(k in result.step_log[0] for k in keys)  # STCCL off at step 0: deferred, not NaN
    assert all(k in result.step_log[1] for k in keys)  # measured on the next step with the term on
    assert not any(k in result.step_log[2] for k in keys)
    lines = (tmp_path / "train_log.jsonl").read_text()
    assert "NaN" not in lines and "Infinity" not in lines
    cfg0 = _cfg(tmp_path / "off", train_mode="full", gradient_accumulation_steps=1, max_train_steps=2,
                checkpointing_steps=0, grad_balance_every=0)
    assert not any("grad_ratio" in r for r in train(_TwoTermAdapter(), _SameRows(x, y), cfg0).step_log)


def test_grad_clipped_is_logged_when_the_norm_exceeds_max_grad_norm(tmp_path):
    x, y = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, 0.1, -0.4])
    small = _cfg(tmp_path / "a", train_mode="full", gradient_accumulation_steps=1, max_train_steps=2,
                 checkpointing_steps=0, max_grad_norm=1e-6)
    assert [r["grad_clipped"] for r in train(_TwoTermAdapter(), _SameRows(x, y), small).step_log] == [1.0, 1.0]
    large = _cfg(tmp_path / "b", train_mode="full", gradient_accumulation_steps=1, max_train_steps=2,
                 checkpointing_steps=0, max_grad_norm=1e6)
    assert [r["grad_clipped"] for r in train(_TwoTermAdapter(), _SameRows(x, y), large).step_log] == [0.0, 0.0]


def test_neutral_window_counts_are_summed_per_step_and_totalled_across_resume(tmp_path):
    x, y = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, 0.1, -0.4])
    kw = dict(train_mode="full", gradient_accumulation_steps=2, max_train_steps=4, checkpointing_steps=2)
    train(_TwoTermAdapter(neutral=1.0), _SameRows(x, y), _cfg(tmp_path, **kw), stop_after_steps=2)
    result = train(_TwoTermAdapter(neutral=1.0), _SameRows(x, y),
                   _cfg(tmp_path, resume_from_checkpoint="latest", **kw))
    log = result.step_log
    assert [r["stccl_skipped_neutral"] for r in log] == [2.0] * 4  # one per micro-batch, two micro-batches a step
    assert [r["stccl_skipped_neutral_total"] for r in log] == [2.0, 4.0, 6.0, 8.0]


# ------------------------------------------------------------------ the DICE anchor and neutral windows
def _lora_dice(anchor: str, p_mean: float = -1.0):
    from stccl_diffusers.training import configure_trainable

    adapter, calls = _dice_adapter(p_mean=p_mean, anchor=anchor)
    configure_trainable(adapter, config_from_dict(TrainingConfig, dict(rank=2)))
    return adapter, calls


def _perturb_lora(module) -> None:
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "lora_B" in n:  # peft starts B at 0 (LoRA = identity): make it change the output
                p.normal_(0, 0.5)


def _anchor_pred(adapter):
    batch = _dice_batch()
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 2, 4, 8, 8, generator=g)
    sigma = torch.full((2,), 0.5)
    with torch.no_grad():
        cond = adapter.conditions(batch, adapter.neutral_prior(batch), (None, None, None))
    return adapter.anchor_denoise(x_t, sigma, cond)


@pytest.mark.parametrize("anchor", ["frozen", "current"])
def test_dice_frozen_anchor_ignores_lora_updates_and_current_follows_them(anchor):
    adapter, _ = _lora_dice(anchor)
    before = _anchor_pred(adapter)
    _perturb_lora(adapter.model.unet)
    after = _anchor_pred(adapter)
    assert not after.requires_grad
    if anchor == "frozen":
        torch.testing.assert_close(after, before, rtol=0, atol=0)  # the starting model, whatever LoRA learnt
    else:
        assert (after - before).abs().max() > 1e-4  # the paper's online anchor drifts with the model


def test_dice_frozen_anchor_through_training_step_uses_the_base_model():
    adapter, _ = _lora_dice("frozen")
    _perturb_lora(adapter.model.unet)
    seen = []
    original = adapter.callback.run_anchor

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out)
        return out

    adapter.callback.run_anchor = spy
    out = adapter.training_step(_dice_batch(), 0, torch.Generator().manual_seed(0))
    assert len(seen) == 1 and out["anchor_forward"] == 1.0  # routed through the callback's base-model anchor
    assert out["loss_terms"]["stccl"] is not None and out["loss_terms"]["stccl"].requires_grad


@pytest.mark.parametrize("anchor", ["frozen", "current"])
def test_dice_validation_anchor_follows_the_anchor_option(anchor):
    adapter, _ = _lora_dice(anchor)
    adapter.num_inference_steps = 2
    batch = _dice_batch()
    before = adapter.render_validation(batch, torch.Generator().manual_seed(0))
    _perturb_lora(adapter.model.unet)
    after = adapter.render_validation(batch, torch.Generator().manual_seed(0))
    assert (after["target"] - before["target"]).abs().max() > 1e-4
    moved = float((after["anchor"] - before["anchor"]).abs().max())
    assert (moved == 0.0) if anchor == "frozen" else (moved > 1e-4)


def test_dice_all_neutral_batch_skips_the_anchor_and_the_reward_and_counts_the_windows():
    from stccl_diffusers.models.reference_dice import NEUTRAL_INDEX

    adapter, calls = _lora_dice("frozen")
    batch = {**_dice_batch(), "emotion": torch.tensor([NEUTRAL_INDEX, NEUTRAL_INDEX])}
    out = adapter.training_step(batch, 0, torch.Generator().manual_seed(0))  # every sample gated by sigma
    assert calls == [True]  # the target forward only
    assert out["anchor_forward"] == 0.0 and float(out["stccl"]) == 0.0
    assert out["stccl_skipped_neutral"] == 2.0 and out["loss_terms"]["stccl"] is None


def test_dice_neutral_clip_of_a_mixed_batch_is_not_scored():
    from stccl_diffusers.models.reference_dice import NEUTRAL_INDEX

    adapter, _ = _lora_dice("frozen")
    batch = {**_dice_batch(), "emotion": torch.tensor([NEUTRAL_INDEX, 4])}
    out = adapter.training_step(batch, 0, torch.Generator().manual_seed(0))
    assert out["stccl_skipped_neutral"] == 1.0
    assert out["stccl_num_gated"] == 1 and out["stccl_num_scored"] == 1 and float(out["stccl"]) > 0


def test_anchor_option_is_validated_and_a_frozen_dice_anchor_needs_lora():
    from conftest import load_repo_module
    from stccl_diffusers.training import TalkingClipsConfig

    assert config_from_dict(TalkingClipsConfig, {}).anchor == "frozen"  # the default
    with pytest.raises(ValueError, match=r"`anchor` expects one of \('frozen', 'current'\), got 'online'"):
        config_from_dict(TalkingClipsConfig, {"anchor": "online"})
    script = load_repo_module("train_dice_stccl.py")
    with pytest.raises(ValueError, match="anchor: frozen .* needs train_mode: lora, got train_mode: 'full'"):
        script.main(["--train_mode", "full", "--output_dir", "/nonexistent/never-written"])


def test_balance_clipping_and_neutral_counts_reach_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x, y = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, 0.1, -0.4])
    cfg = _cfg(tmp_path, train_mode="full", gradient_accumulation_steps=1, max_train_steps=2, checkpointing_steps=0,
               grad_balance_every=1, report_to="tensorboard")
    train(_TwoTermAdapter(neutral=1.0), _SameRows(x, y), cfg)
    events = list((tmp_path / "logs").rglob("events.out.tfevents*"))
    assert events, "tensorboard event file written"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"grad_norm/stccl", "grad_norm/task", "grad_ratio", "grad_cos", "grad_clipped",
            "stccl_skipped_neutral", "stccl_skipped_neutral_total"} <= tags, tags
    assert [e.step for e in acc.Scalars("grad_ratio")] == [1, 2]
