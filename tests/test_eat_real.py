"""EATWithSTCCL / EATAdapter against EAT's REAL source (../shared/third_party/EAT_code).

The checkout is EAT's code symlinked into a temporary folder plus random weights in EAT's formats
(tests/_eat_real_checkout.py). EAT renders 256-px frames whatever the widths (its decoder's widths
are fixed), so the forward tests use one frame per clip and SyncNet off (SyncNet needs 5).
"""

from __future__ import annotations

import contextlib
import os
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

from _eat_real_checkout import eat_batch, load_with_eats_demo

pytestmark = pytest.mark.usefixtures("two_threads")


class _MSEMetric(nn.Module):
    """Metric-shaped loss (the adapter is under test here, not STCCL)."""

    def forward(self, anchor, generated, generator=None):
        loss = (generated - anchor).pow(2).mean()
        return SimpleNamespace(loss=loss, pos_sim=torch.tensor(0.0), neg_sim=torch.tensor(0.0))



@pytest.fixture(scope="module")
def full(eat_checkout, tmp_path_factory):
    from stccl_diffusers.adapters.eat import load_eat_generator_full

    # From outside the checkout (finding 1), from a stage-1 checkpoint (finding 5), and without
    # contextlib.chdir (finding 6: Python 3.10 has none).
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.delattr(contextlib, "chdir", raising=False)
            model = load_eat_generator_full(eat_checkout["root"], eat_checkout["stage1"], eat_checkout["config_1frame"])
        assert os.getcwd() == str(elsewhere)
    finally:
        os.chdir(cwd)
    return model


def test_check_eat_checkout_names_jdc_pca_and_syncnet_files(eat_checkout, tmp_path):
    from stccl_diffusers.adapters.eat import check_eat_checkout

    check_eat_checkout(eat_checkout["root"], eat_checkout["stage1"], eat_checkout["config"])
    bare = tmp_path / "EAT_code"
    for rel in ("modules", "sync_batchnorm", "Utils/JDC/model.py"):
        (bare / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(eat_checkout["root"] / rel, bare / rel)
    with pytest.raises(FileNotFoundError) as e:
        check_eat_checkout(bare, eat_config=eat_checkout["config"])
    msg = str(e.value)
    for name in ("Utils/JDC/bst.t7", "expPCAnorm_fin/U_mead.npy", "expPCAnorm_fin/mean_mead.npy", "checkpoint_epoch02600"):
        assert name in msg
    assert "Utils/JDC/model.py" not in msg


def test_stage1_checkpoint_initialises_sidetuning_from_audio2kp(full, eat_checkout):
    state = torch.load(eat_checkout["stage1"], weights_only=True)
    assert "sidetuning" not in state and "emotionprompt" not in state
    a2kp = state["audio2kptransformer"]
    shared = [k for k in full.sidetuning.state_dict() if k in a2kp and "decodefeature_extract" not in k
              and a2kp[k].shape == full.sidetuning.state_dict()[k].shape]
    assert shared, "expected side-tuning parameters named as in audio2kp"
    assert all(torch.equal(full.sidetuning.state_dict()[k], a2kp[k]) for k in shared)
    assert torch.equal(full.kp_extractor.state_dict()["kp.weight"], state["kp_detector"]["kp.weight"])


def test_load_rejects_a_checkpoint_without_stage1_modules(eat_checkout, tmp_path):
    from stccl_diffusers.adapters.eat import load_eat_generator_full

    bad = tmp_path / "bad.pth.tar"
    torch.save({"generator": {}, "epoch": 1}, bad)
    with pytest.raises(ValueError, match="kp_detector"):
        load_eat_generator_full(eat_checkout["root"], bad, eat_checkout["config_1frame"])


def _bn_training(module):
    return sum(m.training for m in module.modules() if "BatchNorm" in type(m).__name__)


def test_adapter_train_keeps_eats_eval_choices(full):
    from stccl_diffusers.adapters.eat import EATAdapter

    assert _bn_training(full.generator) == 0 and _bn_training(full.audio2kptransformer) == 0
    adapter = EATAdapter(full, _MSEMetric(), image_size=256, num_frames=1)
    adapter.train()
    assert _bn_training(full.generator) == 0
    assert _bn_training(full.audio2kptransformer) == 0
    assert not full.kp_extractor.training
    assert full.emotionprompt.training and full.sidetuning.training  # what EAT trains does train
    adapter.eval()
    assert not full.emotionprompt.training


def test_module_is_eats_model_with_and_without_dataparallelwithcallback(full, eat_checkout):
    from stccl_diffusers.adapters.checkout import import_from_checkout, on_path
    from stccl_diffusers.adapters.eat import EATWithSTCCL

    with on_path(eat_checkout["root"]):
        dp = import_from_checkout(eat_checkout["root"], "sync_batchnorm").DataParallelWithCallback
    for inner in (full, dp(full)):
        wrapped = EATWithSTCCL(inner, _MSEMetric())
        # EAT's train_transformer.py, lines 278-279:
        torch.nn.utils.clip_grad_norm_(wrapped.module.audio2kptransformer.parameters(), 0.05)
        assert wrapped.module is full


def test_optimizer_groups_and_clipping_follow_eats_stage2(full):
    from stccl_diffusers.adapters.eat import EATAdapter

    adapter = EATAdapter(full, _MSEMetric(), image_size=256, num_frames=1)
    groups = {g["name"]: g for g in adapter.optimizer_param_groups(lr=1.0)}
    assert set(groups) == {"generator", "audio2kptransformer", "emotionprompt", "sidetuning"}
    assert groups["audio2kptransformer"]["lr"] == pytest.approx(1.5e-4)
    assert groups["generator"]["lr"] == pytest.approx(2e-4) and groups["generator"]["betas"] == (0.5, 0.999)
    trainable = {id(p) for p in adapter.trainable_parameters()}
    assert {id(p) for g in groups.values() for p in g["params"]} == trainable
    for p in adapter.trainable_parameters():
        p.grad = torch.ones_like(p)
    adapter.clip_gradients(SimpleNamespace(unscale_gradients=lambda: None), max_norm=1.0)
    norm = lambda m: torch.stack([p.grad.norm() for p in m.parameters() if p.grad is not None]).norm()  # noqa: E731
    assert float(norm(full.audio2kptransformer)) == pytest.approx(0.05, rel=1e-3)
    assert float(norm(full.sidetuning)) == pytest.approx(0.05, rel=1e-3)
    assert float(norm(full.emotionprompt)) > 1.0  # EAT does not clip the prompt or the generator
    adapter.zero_grad(set_to_none=True)
    assert EATAdapter(full, _MSEMetric(), eat_optimization=False).optimizer_param_groups(1.0) is None


def test_neutral_anchor_on_real_eat_twice_on_one_batch(full):
    from stccl_diffusers.adapters.eat import EATAdapter

    adapter = EATAdapter(full, _MSEMetric(), weight=1.0, image_size=256, num_frames=1, crop_size=None)
    adapter.train()
    seen = []

    def spy(module, args):
        x = args[0]
        seen.append(dict(y=x["y_trg"].clone(), z=x["z_trg"], grad=torch.is_grad_enabled(),
                         sync=full.loss_weights["sync"], img_l1=full.loss_weights["img_l1"],
                         latent=full.loss_weights["latent"]))

    batch = eat_batch(b=1, t=1)
    before = {k: (v.shape, v.clone()) for k, v in batch["he_source"].items()}
    driving_shape = batch["driving"].shape
    handle = full.emotionprompt.register_forward_pre_hook(spy)
    try:
        for _ in range(2):  # twice on one batch: the second used to see EAT's in-place unsqueeze_ (finding 3)
            logs = adapter.training_step(batch, step=5, generator=torch.Generator().manual_seed(0))
            logs["loss"].backward()
    finally:
        handle.remove()
    assert len(seen) == 4
    target, anchor = seen[2], seen[3]
    assert target["grad"] and not anchor["grad"]
    assert int(target["y"]) == 0 and int(anchor["y"]) == 5
    assert anchor["z"] is target["z"] is batch["z_trg"]
    assert target["img_l1"] != 0 and anchor["img_l1"] == 0 and anchor["latent"] == 0  # finding 9
    assert full.loss_weights["img_l1"] != 0  # restored
    assert {"img_l1", "latent_emo", "stccl"} <= set(logs)
    assert any(p.grad is not None for p in full.sidetuning.parameters())
    for k, (shape, value) in before.items():  # the caller's batch is unchanged after both passes
        assert batch["he_source"][k].shape == shape and torch.equal(batch["he_source"][k], value)
    assert batch["driving"].shape == driving_shape
    adapter.zero_grad(set_to_none=True)
    # Validation renders on the real model (finding 2) are run by train_eat_stccl.py in
    # tests/test_eat_real_train.py, window by window.


def test_validation_moves_nested_eat_tensors_to_the_device():
    from stccl_diffusers.training import validation

    batch = eat_batch(b=1, t=1)
    moved = validation._to_device(batch, torch.device("meta"))
    assert moved["he_driving"]["yaw"].device.type == "meta" and moved["he_source"]["t"].device.type == "meta"
    assert moved["source"].device.type == "meta" and moved["name"] == batch["name"]


def test_saved_weights_include_a_checkpoint_eats_demo_loader_accepts(full, eat_checkout, tmp_path, monkeypatch):
    from stccl_diffusers.adapters.eat import EAT_EXPORT_NAME, EATAdapter

    adapter = EATAdapter(full, _MSEMetric(), image_size=256, num_frames=1)
    with torch.no_grad():
        full.sidetuning.state_dict()[next(iter(full.sidetuning.state_dict()))].add_(1.0)  # "trained"
    adapter.save_weights(tmp_path)
    assert (tmp_path / "trainable_weights.safetensors").is_file()
    loaded = load_with_eats_demo(eat_checkout["root"], eat_checkout["config_1frame"], tmp_path / EAT_EXPORT_NAME, monkeypatch)
    for name, value in loaded["sidetuning"].state_dict().items():
        assert torch.equal(value, full.sidetuning.state_dict()[name])


def test_eats_own_stage2_training_function_runs_with_eatwithstccl(full, eat_checkout, tmp_path, monkeypatch):
    """docs/eat.md's recipe inside EAT's own train_batch_deepprompt_eam3d_sidetuning."""
    from torch.utils.data import DataLoader

    from stccl_diffusers.adapters.checkout import import_from_checkout, on_path
    from stccl_diffusers.adapters.eat import EATWithSTCCL

    root = eat_checkout["root"]
    cfg = yaml.safe_load(eat_checkout["config_1frame"].read_text())
    cfg["train_params"].update(num_epochs=1, batch_size=1, num_repeats=1, checkpoint_freq=1)
    batch = eat_batch(b=1, t=1)
    item = {k: ({kk: vv[0] for kk, vv in v.items()} if isinstance(v, dict) else v[0]) for k, v in batch.items()}
    monkeypatch.chdir(root)
    with on_path(root):
        tt = import_from_checkout(root, "train_transformer")
        disc = import_from_checkout(root, "modules.discriminator").MultiScaleDiscriminator(
            **cfg["model_params"]["discriminator_params"], **cfg["model_params"]["common_params"])
    real_cls, made = tt.GeneratorFullModelBatchDeepPromptSTEAM3D, []

    def with_stccl(*args, **kwargs):  # what docs/eat.md tells users to write around EAT's model
        made.append(EATWithSTCCL(real_cls(*args, **kwargs), _MSEMetric(), weight=1.0, image_size=256,
                                 num_frames=1, crop_size=None))
        return made[-1]

    monkeypatch.setattr(tt, "GeneratorFullModelBatchDeepPromptSTEAM3D", with_stccl)
    # EAT's DataLoader uses 16 workers; its epoch-end visualiser draws 5-frame keypoint grids.
    monkeypatch.setattr(tt, "DataLoader", lambda ds, **kw: DataLoader(ds, batch_size=1))
    monkeypatch.setattr(tt.Logger, "visualize_rec", lambda self, inp, out: None)
    before = {k: v.clone() for k, v in full.sidetuning.state_dict().items()}
    tt.train_batch_deepprompt_eam3d_sidetuning(cfg, full.generator, disc, full.kp_extractor,
                                               full.audio2kptransformer, full.emotionprompt, full.sidetuning,
                                               None, str(tmp_path / "log"), [item], [0])
    assert made and made[0].num_updates == 1
    log = (tmp_path / "log" / "log.txt").read_text()
    assert "stccl" in log
    saved = torch.load(tmp_path / "log" / "00000000-checkpoint.pth.tar", weights_only=True)
    assert {"generator", "audio2kptransformer", "emotionprompt", "sidetuning"} <= set(saved)
    assert any(not torch.equal(before[k], v) for k, v in full.sidetuning.state_dict().items())


def test_frozen_anchor_on_real_eat_keeps_the_weights_as_loaded(full):
    from stccl_diffusers.adapters.eat import EATAdapter

    adapter = EATAdapter(full, _MSEMetric(), weight=1.0, image_size=256, num_frames=1, crop_size=None)
    batch = eat_batch(b=1, t=1)
    trainable = [p for p in full.parameters() if p.requires_grad]
    assert adapter.anchor_copy_bytes() == sum(p.numel() * p.element_size() for p in trainable)
    saved = [p.detach().clone() for p in trainable]
    with torch.no_grad():
        before, target_before = adapter.stccl.render_anchor(batch), adapter.stccl.render(batch)
        try:
            for p in full.sidetuning.parameters():
                p.add_(torch.randn_like(p) * 0.5)
            after, target_after = adapter.stccl.render_anchor(batch), adapter.stccl.render(batch)
        finally:
            for p, v in zip(trainable, saved):  # the module-scoped model goes back as it was
                p.copy_(v)
    assert (target_after - target_before).abs().max() > 0  # the live model moved
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # the anchor did not
