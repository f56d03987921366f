"""The EAT adapter: online pseudo-pairing, the loss-dict hook, warm-up, shape checks, real-EAT loading.

The real EAT cannot run here. The tests write a stand-in "checkout" into a temp dir whose modules
have EAT's class names, constructor and call signatures and output shapes
(``generated['prediction']`` (B*5, 3, 256, 256) in [0, 1]) and load it through the same code a
user's checkout goes through.
"""

import textwrap

import pytest
import torch
import yaml

from stccl_diffusers import STCCLMetric
from stccl_diffusers.adapters.eat import (
    EAT_REQUIRED_FILES,
    EATAdapter,
    EATWithSTCCL,
    ReferenceEATGeneratorFull,
    check_eat_checkout,
    check_prediction,
    crop_faces,
    load_eat_generator_full,
    neutral_batch,
    stccl_on_frames,
)
from stccl_diffusers.models.reference_eat import ReferenceEATModel
from stccl_diffusers.training.warmup import warmup_weight

BBS, BS = 2, 5  # EAT: clips per batch, frames per clip

STANDIN = {
    "modules/__init__.py": "",
    "modules/generator.py": """
        import torch
        from torch import nn

        class OcclusionAwareSPADEGeneratorEam(nn.Module):
            def __init__(self, image_channel=3, pred_size=256, **kwargs):
                super().__init__()
                self.image_channel, self.pred_size = image_channel, pred_size
                self.decoder = nn.Conv2d(3, 3, 1)
                self.ea3d = nn.Linear(128, 3)

            def forward(self, source, kp_source, kp_driving, prompt):
                n = kp_driving['value'].shape[0]
                shift = kp_driving['value'].reshape(n, -1)[:, :3] - kp_source['value'].reshape(n, -1)[:, :3]
                rep = torch.repeat_interleave(prompt, n // prompt.shape[0], dim=0)
                h = self.decoder(source) + (shift + self.ea3d(rep))[:, :, None, None]
                h = nn.functional.interpolate(h, size=(self.pred_size, self.pred_size))
                return {'prediction': torch.sigmoid(h)}
        """,
    "modules/discriminator.py": """
        from torch import nn

        class MultiScaleDiscriminator(nn.Module):
            def __init__(self, scales=(1,), **kwargs):
                super().__init__()
                self.scales = scales
                self.conv = nn.Conv2d(3, 1, 1)
        """,
    "modules/keypoint_detector.py": """
        import torch
        from torch import nn

        class KPDetector(nn.Module):
            def __init__(self, num_kp=15, **kwargs):
                super().__init__()
                self.num_kp = num_kp
                self.fc = nn.Linear(3, num_kp * 3)

            def forward(self, x, with_feature=False):
                v = self.fc(x.mean(dim=(2, 3))).view(x.shape[0], self.num_kp, 3)
                return {'value': v}
        """,
    "modules/transformer.py": """
        import torch
        from torch import nn

        class Audio2kpTransformerBBoxQDeepPrompt(nn.Module):
            def __init__(self, embedding_dim=16, num_kp=15, num_w=5, face_ea=False, **kwargs):
                super().__init__()
                self.audioencoder = nn.Module()
                self.audioencoder.decode_norm = nn.LayerNorm(16)
                self.audioencoder.encode = nn.Linear(16, 16)
                self.fea = nn.Linear(128, 45)
                self.audio = nn.Linear(16, 45)

            def forward(self, x, kp_canonical, emoprompt=None, deepprompt=None, side=False):
                bbs, bs = x['deep'].shape[:2]
                a = self.audio(self.audioencoder.decode_norm(self.audioencoder.encode(x['deep'])))
                emo = a + self.fea(emoprompt)[:, None]
                return {'emo': emo.reshape(bbs * bs, 45)}, {'bbs': bbs, 'bs': bs}
        """,
    "modules/prompt.py": """
        import torch
        from torch import nn

        class EmotionDeepPrompt(nn.Module):
            def __init__(self):
                super().__init__()
                self.shared = nn.Linear(16, 64)
                self.heads = nn.ModuleList([nn.Linear(64, 7 * 128) for _ in range(8)])

            def forward(self, x):
                z, y = x['z_trg'], x['y_trg']
                h = torch.relu(self.shared(z))
                s = torch.stack([self.heads[int(i)](h[k]) for k, i in enumerate(y)]).reshape(len(y), -1, 128)
                return s[:, 0, :], s[:, 1:, :]

        class EmotionalDeformationTransformer(nn.Module):
            def __init__(self, embedding_dim=16, num_kp=15, num_w=5, **kwargs):
                super().__init__()
                self.emokp = nn.Linear(128, 45)

            def forward(self, input_st, emoprompt, deepprompt):
                bs = input_st['bs']
                return self.emokp(emoprompt + deepprompt.mean(1)).repeat_interleave(bs, dim=0)
        """,
    "modules/model_transformer.py": """
        import numpy as np
        import torch
        from torch import nn

        class GeneratorFullModelBatchDeepPromptSTEAM3D(nn.Module):
            def __init__(self, kp_extractor, audio2kptransformer, emotionprompt, sidetuning, generator,
                         discriminator, train_params, estimate_jacobian=True):
                super().__init__()
                self.kp_extractor, self.audio2kptransformer = kp_extractor, audio2kptransformer
                self.emotionprompt, self.sidetuning, self.generator = emotionprompt, sidetuning, generator
                self.loss_weights = train_params['loss_weights']
                # As EAT: a file read relative to the working directory.
                self.expmean = torch.from_numpy(np.load('./expPCAnorm_fin/mean_mead.npy'))

            def forward(self, x, train_with_img=False):
                bbs, bs = x['deep'].shape[:2]
                with torch.no_grad():
                    kp_canonical = self.kp_extractor(x['source'], with_feature=True)
                emoprompt, deepprompt = self.emotionprompt(x)
                he, input_st = self.audio2kptransformer(x, kp_canonical, emoprompt=emoprompt, deepprompt=deepprompt, side=True)
                exp = he['emo'] + self.sidetuning(input_st, emoprompt, deepprompt) + self.expmean
                kp_src = {'value': torch.repeat_interleave(kp_canonical['value'], bs, dim=0)}
                kp_drv = {'value': kp_src['value'] + exp.view(bbs * bs, 15, 3)}
                loss_values, generated = {}, {}
                if train_with_img:
                    source = torch.repeat_interleave(x['source'], bs, dim=0)
                    generated = self.generator(source, kp_source=kp_src, kp_driving=kp_drv, prompt=emoprompt)
                    x['driving'] = x['driving'].reshape([bbs * bs, 3, 256, 256])
                    pred = nn.functional.interpolate(generated['prediction'], size=(256, 256))
                    loss_values['perceptual'] = self.loss_weights['perceptual'] * (pred - x['driving']).abs().mean()
                    loss_values['expression'] = self.loss_weights['expression'] * exp.abs().mean()
                return loss_values, generated
        """,
}


def write_checkout(root, pred_size=256):
    for rel, text in STANDIN.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    (root / "expPCAnorm_fin").mkdir()
    for rel in EAT_REQUIRED_FILES:  # files the stand-in does not read (JDC, PCA basis, SyncNet code)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).touch()
    import numpy as np

    np.save(root / "expPCAnorm_fin" / "mean_mead.npy", np.zeros(45, np.float32))
    config = {
        "model_params": {
            "common_params": {"num_kp": 15, "image_channel": 3, "estimate_jacobian": False},
            "generator_params": {"pred_size": pred_size},
            "discriminator_params": {"scales": [1]},
            "kp_detector_params": {},
            "audio2kp_params": {"embedding_dim": 16, "num_w": 5},
        },
        "train_params": {"loss_weights": {"perceptual": 10.0, "expression": 0.1}},
    }
    (root / "config").mkdir()
    (root / "config" / "deepprompt_eam3d.yaml").write_text(yaml.safe_dump(config))
    return root / "config" / "deepprompt_eam3d.yaml"


def eat_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "source": torch.rand(BBS, 3, 256, 256, generator=g),
        "driving": torch.rand(BBS, BS, 3, 256, 256, generator=g),
        "deep": torch.randn(BBS, BS, 16, generator=g),
        "y_trg": torch.tensor([0, 4]),
        "z_trg": torch.randn(BBS, 16, generator=g),
        "bboxs": torch.tensor([40.0, 30.0, 216.0, 230.0]).expand(BBS, BS, 4).clone(),
    }


def tiny_metric():
    torch.manual_seed(0)
    return STCCLMetric(backbone=(1, 1, 1, 1), input_size=64, num_samples=(4, 4, 2, 2))


def random_checkpoint(root, path, pred_size=256):
    """Random weights in EAT's checkpoint layout (one state_dict per module name); returns the modules."""
    import importlib
    import sys

    sys.path.insert(0, str(root))
    try:
        for name in [n for n in sys.modules if n == "modules" or n.startswith("modules.")]:
            del sys.modules[name]
        prompt = importlib.import_module("modules.prompt")
        mods = {
            "generator": importlib.import_module("modules.generator").OcclusionAwareSPADEGeneratorEam(pred_size=pred_size),
            "kp_detector": importlib.import_module("modules.keypoint_detector").KPDetector(),
            "audio2kptransformer": importlib.import_module("modules.transformer").Audio2kpTransformerBBoxQDeepPrompt(),
            "emotionprompt": prompt.EmotionDeepPrompt(),
            "sidetuning": prompt.EmotionalDeformationTransformer(),
        }
    finally:
        sys.path.remove(str(root))
    torch.save({**{k: m.state_dict() for k, m in mods.items()}, "epoch": 313}, path)
    return mods


@pytest.fixture
def eat_checkout(tmp_path):
    torch.manual_seed(0)
    root = tmp_path / "EAT_code"
    config = write_checkout(root)
    ckpt = tmp_path / "deepprompt_eam3d_all_final_313.pth.tar"
    return root, ckpt, config, random_checkpoint(root, ckpt)


class Recorder(torch.nn.Module):
    """Wraps a generator-full model and records what each call saw."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = []

    def forward(self, x, train_with_img=False):
        self.calls.append({"y_trg": x["y_trg"].clone(), "z_trg": x["z_trg"], "grad": torch.is_grad_enabled()})
        return self.inner(x, train_with_img)


# ----------------------------------------------------------------------------- real-EAT path


def test_loader_builds_eat_from_the_checkout_with_its_weights_and_trainables(eat_checkout):
    root, ckpt, config, holder = eat_checkout
    full = load_eat_generator_full(root, ckpt, config)
    assert type(full).__name__ == "GeneratorFullModelBatchDeepPromptSTEAM3D"
    assert torch.equal(full.generator.decoder.weight, holder["generator"].decoder.weight)
    assert torch.equal(full.emotionprompt.shared.weight, holder["emotionprompt"].shared.weight)
    # EAT's stage-2 choice: emotional adaptation, decode norms, fea, prompt and side-tuning train.
    assert full.generator.ea3d.weight.requires_grad and not full.generator.decoder.weight.requires_grad
    assert full.audio2kptransformer.audioencoder.decode_norm.weight.requires_grad
    assert not full.audio2kptransformer.audioencoder.encode.weight.requires_grad
    assert full.audio2kptransformer.fea.weight.requires_grad
    assert all(p.requires_grad for p in full.sidetuning.parameters())
    assert not any(p.requires_grad for p in full.kp_extractor.parameters())


def test_stccl_is_added_to_eats_loss_dict_without_changing_other_terms(eat_checkout):
    root, ckpt, config, _ = eat_checkout
    full = load_eat_generator_full(root, ckpt, config)
    metric = tiny_metric()
    wrapped = EATWithSTCCL(full, metric, weight=0.5, crop_size=64, image_size=256)
    x = eat_batch()
    plain_losses, plain_gen = full(dict(x), True)
    losses, gen = wrapped(dict(x), True, generator=torch.Generator().manual_seed(3))
    assert set(losses) == set(plain_losses) | {"stccl"}
    for k in plain_losses:
        assert torch.equal(losses[k], plain_losses[k]), k
    assert torch.equal(gen["prediction"], plain_gen["prediction"])
    # The added term is the weighted metric loss between the cropped neutral and target streams.
    with torch.no_grad():
        _, neutral = full(neutral_batch(dict(x)), True)
    expected = stccl_on_frames(
        metric, plain_gen["prediction"].view(BBS, BS, 3, 256, 256), neutral["prediction"].view(BBS, BS, 3, 256, 256),
        x["bboxs"], 64, torch.Generator().manual_seed(3),
    ).loss
    assert torch.allclose(losses["stccl"], 0.5 * expected, rtol=1e-5, atol=1e-7)
    assert float(losses["stccl"].detach()) > 0
    # EAT's loop sums the dict and back-propagates: the STCCL gradient reaches EAT's trainables only.
    sum(v.mean() for v in losses.values()).backward()
    assert full.emotionprompt.shared.weight.grad is not None
    assert all(p.grad is None for p in metric.parameters())


def test_neutral_stream_has_no_gradient_label_5_and_the_same_z_trg(eat_checkout):
    root, ckpt, config, _ = eat_checkout
    rec = Recorder(load_eat_generator_full(root, ckpt, config))
    wrapped = EATWithSTCCL(rec, tiny_metric(), weight=1.0, crop_size=64)
    x = eat_batch()
    wrapped(x, True)
    assert len(rec.calls) == 2
    target, neutral = rec.calls
    assert target["grad"] and torch.equal(target["y_trg"], torch.tensor([0, 4]))
    assert not neutral["grad"] and torch.equal(neutral["y_trg"], torch.tensor([5, 5]))
    assert neutral["z_trg"] is target["z_trg"] is x["z_trg"]
    assert torch.equal(x["y_trg"], torch.tensor([0, 4]))  # the caller's batch is not modified


def test_wrong_prediction_shape_from_eat_is_a_clear_error(tmp_path):
    torch.manual_seed(0)
    root = tmp_path / "EAT_small"
    config = write_checkout(root, pred_size=128)
    ckpt = tmp_path / "small.pth.tar"
    random_checkpoint(root, ckpt, pred_size=128)
    full = load_eat_generator_full(root, ckpt, config)
    wrapped = EATWithSTCCL(full, tiny_metric(), weight=1.0, crop_size=64, image_size=256)
    with pytest.raises(ValueError, match=r"\(2\*5, 3, 256, 256\) in \[0, 1\], got \(10, 3, 128, 128\)"):
        wrapped(eat_batch(), True)


def test_predictions_out_of_range_or_not_tensors_are_rejected():
    good = torch.rand(10, 3, 256, 256)
    assert check_prediction(good, 2, 5, 256).shape == (2, 5, 3, 256, 256)
    with pytest.raises(ValueError, match=r"got values in \[-0\.5"):
        check_prediction(good - 0.5, 2, 5, 256)
    with pytest.raises(ValueError, match="got NoneType"):
        check_prediction(None, 2, 5, 256)
    with pytest.raises(ValueError, match=r"got \(8, 3, 256, 256\)"):
        check_prediction(good[:8], 2, 5, 256)


def test_missing_checkout_files_are_named(tmp_path):
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "prompt.py").write_text("")
    with pytest.raises(FileNotFoundError) as err:
        check_eat_checkout(tmp_path, tmp_path / "nope.pth.tar")
    msg = str(err.value)
    for rel in EAT_REQUIRED_FILES:
        assert (rel in msg) == (rel != "modules/prompt.py"), rel
    assert "nope.pth.tar (--eat_checkpoint)" in msg
    with pytest.raises(FileNotFoundError, match="not a directory"):
        check_eat_checkout(tmp_path / "absent")


# ----------------------------------------------------------------------------- warm-up


def test_warmup_weight_schedule():
    w = [warmup_weight(s, 2.0, warmup_steps=3, ramp_steps=4) for s in range(9)]
    assert w == [0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert [warmup_weight(s, 1.0, 2, 0) for s in range(4)] == [0.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="warmup_steps >= 0"):
        warmup_weight(0, 1.0, -1, 0)


def test_adapter_warmup_skips_the_anchor_then_ramps_the_weight():
    torch.manual_seed(0)
    model = ReferenceEATModel(image_size=32, audio_dim=8, dim=16, num_layers=1, num_heads=2, num_kp=4, render_channels=8)
    rec = Recorder(ReferenceEATGeneratorFull(model))
    adapter = EATAdapter(rec, tiny_metric(), weight=2.0, warmup_steps=2, ramp_steps=4, crop_size=None, image_size=32,
                         num_frames=3)
    batch = {"source": torch.rand(2, 3, 32, 32), "audio": torch.randn(2, 3, 8), "y_trg": torch.tensor([0, 6]),
             "driving": torch.rand(2, 3, 3, 32, 32)}
    seen = []
    for step in (0, 1, 2, 7):  # warm-up, warm-up, first ramp step, past the ramp
        rec.calls.clear()
        out = adapter.training_step(batch, step, torch.Generator().manual_seed(step))
        seen.append((len(rec.calls), out["stccl_weight"], float(out["stccl"])))
        if out["stccl_weight"] > 0:
            assert torch.allclose(out["stccl"], out["stccl_weight"] * torch.tensor(out["stccl_raw"]), rtol=1e-5)
        assert torch.allclose(out["loss"], out["rec"] + out["exp_reg"] + out["stccl"], rtol=1e-6)
    assert [s[0] for s in seen] == [1, 1, 2, 2]  # no neutral render during warm-up
    assert [s[1] for s in seen] == [0.0, 0.0, 0.5, 2.0]
    assert seen[0][2] == 0.0 and seen[2][2] > 0.0
    # z_trg was drawn by the adapter once per step and shared by both streams.
    assert rec.calls[0]["z_trg"] is rec.calls[1]["z_trg"]


def test_render_validation_returns_target_and_neutral_anchor_in_minus_one_one():
    torch.manual_seed(0)
    model = ReferenceEATModel(image_size=32, audio_dim=8, dim=16, num_layers=1, num_heads=2, num_kp=4, render_channels=8)
    with torch.no_grad():
        model.audio2exp.film.weight.normal_(0, 1.0)
    adapter = EATAdapter(ReferenceEATGeneratorFull(model), tiny_metric(), image_size=32, num_frames=3, crop_size=None)
    batch = {"source": torch.rand(1, 3, 32, 32), "audio": torch.randn(1, 3, 8), "y_trg": torch.tensor([4])}
    out = adapter.render_validation(batch, torch.Generator().manual_seed(0))
    assert out["target"].shape == out["anchor"].shape == (1, 3, 3, 32, 32)
    assert float(out["target"].min()) >= -1 and float(out["target"].max()) <= 1
    assert (out["target"] - out["anchor"]).abs().max() > 1e-4  # different emotion, different frames


# ----------------------------------------------------------------------------- face crops


def test_crop_faces_resamples_exactly_the_box():
    img = torch.arange(64 * 64, dtype=torch.float32).view(1, 1, 64, 64).expand(2, 3, 64, 64).contiguous()
    boxes = torch.tensor([[16.0, 8.0, 48.0, 40.0], [0.0, 0.0, 64.0, 64.0]])
    crops = crop_faces(img, boxes, 32)
    assert torch.allclose(crops[0], img[0, :, 8:40, 16:48], atol=1e-3)
    assert torch.allclose(crops[1], img[1, :, ::2, ::2] * 0.5 + img[1, :, 1::2, 1::2] * 0.5, atol=1e-2)
    with pytest.raises(ValueError, match=r"x1 > x0"):
        crop_faces(img, torch.tensor([[10.0, 0.0, 5.0, 10.0]] * 2), 8)


def test_a_stale_submodule_of_another_checkout_is_forgotten_even_without_its_parent(tmp_path, monkeypatch):
    """Two checkouts in one process: `modules.syncnet` of the first may outlive its `modules` parent in
    sys.modules; importing from the second must not get it back."""
    import sys
    import types

    from stccl_diffusers.adapters.checkout import purge_foreign_modules

    first, second = tmp_path / "first", tmp_path / "second"
    stale = types.ModuleType("modules.syncnet")
    stale.__file__ = str(first / "modules" / "syncnet.py")
    for name in [n for n in sys.modules if n == "modules" or n.startswith("modules.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "modules.syncnet", stale)
    purge_foreign_modules(second, "modules")
    assert "modules.syncnet" not in sys.modules

    own = types.ModuleType("modules.syncnet")
    own.__file__ = str(second / "modules" / "syncnet.py")
    monkeypatch.setitem(sys.modules, "modules.syncnet", own)
    purge_foreign_modules(second, "modules")
    assert sys.modules["modules.syncnet"] is own  # the checkout's own modules stay cached


# ----------------------------------------------------------------------------- the anchor and neutral clips


def _tiny_eat_adapter(anchor="frozen", weight=1.0, seed=0):
    torch.manual_seed(seed)
    model = ReferenceEATModel(image_size=32, audio_dim=8, dim=16, num_layers=1, num_heads=2, num_kp=4, render_channels=8)
    with torch.no_grad():
        model.audio2exp.film.weight.normal_(0, 1.0)
    return EATAdapter(ReferenceEATGeneratorFull(model), tiny_metric(), weight=weight, crop_size=None, image_size=32,
                      num_frames=3, anchor=anchor)


def _eat_ref_batch(y=(0, 6)):
    g = torch.Generator().manual_seed(1)
    return {"source": torch.rand(len(y), 3, 32, 32, generator=g), "audio": torch.randn(len(y), 3, 8, generator=g),
            "y_trg": torch.tensor(y), "driving": torch.rand(len(y), 3, 3, 32, 32, generator=g),
            "z_trg": torch.randn(len(y), 16, generator=g)}


def _perturb_trainables(adapter):
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.5)


@pytest.mark.parametrize("anchor", ["frozen", "current"])
def test_eat_frozen_anchor_keeps_the_step_0_weights_and_current_follows_training(anchor):
    adapter = _tiny_eat_adapter(anchor)
    batch = _eat_ref_batch()
    before = adapter.stccl.render_anchor(batch)
    target_before = adapter.stccl.render(batch)
    _perturb_trainables(adapter)
    after = adapter.stccl.render_anchor(batch)
    assert (adapter.stccl.render(batch) - target_before).abs().max() > 1e-4  # the live model did change
    if anchor == "frozen":
        torch.testing.assert_close(after, before, rtol=0, atol=0)
        n_trainable = sum(p.numel() for p in adapter.trainable_parameters())
        assert adapter.anchor_copy_bytes() == 4 * n_trainable  # fp32: the trainable weights' bytes, once
        assert not any(t.requires_grad for t in adapter.stccl.frozen_params.values())
    else:
        assert (after - before).abs().max() > 1e-4
        assert adapter.anchor_copy_bytes() == 0
    # Validation shows the anchor that training scores against.
    val = adapter.render_validation(batch)
    torch.testing.assert_close(val["anchor"], after * 2 - 1)


def test_eat_neutral_clips_are_left_out_and_an_all_neutral_batch_renders_no_anchor():
    rec_adapter = _tiny_eat_adapter()
    rec = Recorder(rec_adapter.stccl.generator_full)
    rec_adapter.stccl.generator_full = rec
    rec_adapter.stccl.snapshot_anchor()
    out = rec_adapter.training_step(_eat_ref_batch(y=(5, 5)), 0, torch.Generator().manual_seed(0))
    assert len(rec.calls) == 1  # the target render only
    assert float(out["stccl"]) == 0.0 and out["stccl_skipped_neutral"] == 2.0
    assert out["loss_terms"]["stccl"] is None
    rec.calls.clear()
    out = rec_adapter.training_step(_eat_ref_batch(y=(5, 4)), 0, torch.Generator().manual_seed(0))
    assert len(rec.calls) == 2 and out["stccl_skipped_neutral"] == 1.0 and float(out["stccl"]) > 0
    assert out["loss_terms"]["stccl"].requires_grad
    # Scored on the emotional clip alone: the same loss as a batch of that clip only.
    alone = {k: v[1:] for k, v in _eat_ref_batch(y=(5, 4)).items()}
    rec.calls.clear()
    out_alone = rec_adapter.training_step(alone, 0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out["stccl"], out_alone["stccl"], rtol=1e-4, atol=1e-6)


class _EATClips(torch.utils.data.Dataset):
    def __init__(self, n=4):
        b = _eat_ref_batch(y=tuple([0, 4, 6, 2][:n]))
        self.items = [{k: v[i] for k, v in b.items() if k != "z_trg"} for i in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_eat_resume_restores_the_step_0_anchor_not_the_resumed_weights(tmp_path):
    from stccl_diffusers.training import config_from_dict, train
    from stccl_diffusers.training.config import TrainingConfig

    cfg = dict(output_dir=str(tmp_path), report_to="none", train_batch_size=2, max_train_steps=3, learning_rate=5e-2,
               checkpointing_steps=1, validation_steps=0, validate_at_start=False, train_mode="full",
               grad_balance_every=0)
    first = _tiny_eat_adapter(seed=0)
    step0 = {k: v.clone() for k, v in first.stccl.frozen_params.items()}
    train(first, _EATClips(), config_from_dict(TrainingConfig, cfg), stop_after_steps=1)
    trained = {n: p.detach().clone() for n, p in first.generator_full.named_parameters() if p.requires_grad}
    assert any((trained[k] - step0[k]).abs().max() > 0 for k in step0)  # the step moved the weights
    # The resumed run rebuilds its model from another starting point (a reference model's random init).
    resumed = _tiny_eat_adapter(seed=5)
    assert any((resumed.stccl.frozen_params[k] - step0[k]).abs().max() > 0 for k in step0)
    train(resumed, _EATClips(), config_from_dict(TrainingConfig, {**cfg, "resume_from_checkpoint": "latest"}),
          stop_after_steps=1)  # loads checkpoint-1, trains nothing more
    for k, v in step0.items():
        torch.testing.assert_close(resumed.stccl.frozen_params[k], v, rtol=0, atol=0)
