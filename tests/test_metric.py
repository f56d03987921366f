import math

import pytest
import torch

from stccl_diffusers import STCCLMetric
from stccl_diffusers import correlation as corr
from stccl_diffusers.models.iresnet import IResNet, build_iresnet, load_arcface_state_dict


def tiny_metric(**kw):
    kw.setdefault("backbone", (1, 1, 1, 1))
    kw.setdefault("input_size", 64)
    kw.setdefault("embedding_head", False)
    return STCCLMetric(**kw)


def frames(b=2, t=3, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Smooth random images: structured enough that correlations mean something.
    low = torch.rand(b * t, 3, size // 8, size // 8, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 2 - 1).view(b, t, 3, size, size)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_r50_matches_insightface_key_count_and_size():
    net = build_iresnet("r50")
    assert len(net.state_dict()) == 475
    assert sum(p.numel() for p in net.parameters()) == 43_590_848


@pytest.mark.parametrize("correlation", ["vd", "cm"])
@pytest.mark.parametrize("num_negatives", [8, None])
def test_identical_pair_has_high_pos_sim_and_lower_loss_than_permuted(correlation, num_negatives):
    metric = tiny_metric(correlation=correlation, num_negatives=num_negatives)
    a = frames()
    same = metric(a, a.clone(), generator=gen())
    permuted = metric(a, a[..., torch.randperm(64, generator=gen(1)), :], generator=gen())
    assert same.pos_sim > 0.98
    assert same.loss < permuted.loss
    assert same.pos_sim > permuted.pos_sim


def test_gradient_reaches_generated_only():
    metric = tiny_metric()
    a = frames().requires_grad_(True)
    g = (frames(seed=1) * 0.9).requires_grad_(True)
    metric(a, g, generator=gen()).loss.backward()
    assert a.grad is None
    assert g.grad is not None and torch.isfinite(g.grad).all() and g.grad.abs().sum() > 0
    assert all(p.grad is None for p in metric.parameters())
    assert not any(p.requires_grad for p in metric.parameters())


def test_same_generator_seed_reproduces_sampling_and_other_seed_does_not():
    metric = tiny_metric()
    a, g = frames(), frames(seed=1)
    l1 = metric(a, g, generator=gen(5)).loss
    l2 = metric(a, g, generator=gen(5)).loss
    l3 = metric(a, g, generator=gen(6)).loss
    assert torch.equal(l1, l2)
    assert not torch.equal(l1, l3)


def test_output_fields_and_per_layer_keys():
    out = tiny_metric(layers=(2, 3))(frames(), frames(seed=1), generator=gen())
    assert set(out.per_layer) == {"scc/2", "tcc/2", "scc/3", "tcc/3"}
    assert out.sample_loss.shape == (2,)
    assert torch.allclose(out.sample_loss.mean(), out.loss)
    assert torch.allclose(out.spatial_loss + out.temporal_loss, out.loss)
    assert -1 <= out.neg_sim <= 1 and -1 <= out.pos_sim <= 1


def test_caas_weights_follow_documented_formula():
    s = torch.linspace(-3, 3, 13)
    assert torch.allclose(corr.caas_weights(s), 2 * torch.sigmoid(s) ** 2)
    assert torch.allclose(corr.caas_weights(s, lam=3.0, r=1.0), 3 * torch.sigmoid(s))
    z = torch.randn(4, 5, 8, 16)
    a = z.norm(dim=-1)
    assert torch.allclose(corr.caas_strength(z), (a - a.mean()) / (a.std(unbiased=False) + 1e-6), atol=1e-6)


def test_caas_really_weights_regions_before_the_mean():
    torch.manual_seed(0)
    metric = tiny_metric(use_tcc=False, layers=(2,))
    a, g = frames(), frames(seed=1)
    with torch.no_grad():
        fx, fy = metric.extract_features(a)[1], metric.extract_features(g)[1]
        loss, w, _, _ = metric._scc_layer(2, fx, fy, gen(3))
        out = metric(a, g, generator=gen(3), form="paper")  # _scc_layer's default form
    expected = (w * loss).flatten(1).mean(1).view(2, 3).mean(1).mean()
    assert torch.allclose(out.loss, expected, atol=1e-5)
    # Weights vary across regions (the official code's single factor on the mean would not).
    assert w.std() > 0.05
    metric_off = tiny_metric(use_tcc=False, layers=(2,), caas=False)
    metric_off.load_state_dict(metric.state_dict())
    assert torch.allclose(metric_off(a, g, generator=gen(3), form="paper").loss, loss.mean(), atol=1e-5)


def test_cm_vector_mean_is_the_correlation_matrix_entry():
    f = torch.randn(10, 32)
    fn = torch.nn.functional.normalize(f, dim=-1)
    m = fn @ fn.T
    i, j = torch.tensor([0, 3, 7]), torch.tensor([1, 9, 2])
    vec = corr.correlation_matrix_entry(f[i], f[j])
    assert vec.shape == (3, 32)
    assert torch.allclose(vec.mean(-1), m[i, j], atol=1e-6)


def test_vd_is_feature_difference():
    f_i, f_j = torch.randn(5, 8), torch.randn(5, 8)
    assert torch.equal(corr.visual_disparity(f_i, f_j), f_i - f_j)


def test_negative_locations_never_hit_the_anchor_ring():
    anchors = corr.sample_anchor_locations(4, 8, 8, 6, generator=gen())
    negs = corr.sample_negative_locations(anchors, 8, 8, 8, exclude_ring=True, generator=gen(1))
    ring = torch.cat([anchors[..., None], corr.neighbour_locations(anchors, 8)], dim=-1)
    assert not (negs[..., :, None] == ring[..., None, :]).any()


@pytest.mark.parametrize("correlation", ["vd", "cm"])
def test_metric_learning_decreases_loss_on_a_fixed_pair(correlation):
    torch.manual_seed(0)
    metric = tiny_metric(correlation=correlation).unfreeze()
    x, y = frames(seed=2), frames(seed=3)
    y = (0.6 * x + 0.4 * y).clamp(-1, 1)  # paired: shared structure plus a change
    opt = torch.optim.Adam([p for p in metric.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(6):
        out = metric.contrastive_loss(x, y, generator=gen(0))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] * 0.9, losses


def test_unfreeze_then_freeze():
    metric = tiny_metric().unfreeze()
    assert metric.training and any(p.requires_grad for p in metric.parameters())
    metric.freeze()
    assert not metric.training and not any(p.requires_grad for p in metric.parameters())


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    metric = tiny_metric(correlation="cm", num_negatives=None)
    with torch.no_grad():  # make it differ from a fresh init
        for p in metric.scc_heads.parameters():
            p.add_(0.01)
    metric.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = STCCLMetric.from_pretrained(tmp_path)
    assert loaded.config.correlation == "cm" and loaded.config.num_negatives is None
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    a, g = frames(), frames(seed=1)
    assert torch.equal(metric(a, g, generator=gen(7)).loss, loaded(a, g, generator=gen(7)).loss)


def test_load_arcface_weights_accepts_insightface_naming_with_module_prefix(tmp_path):
    src = build_iresnet("r18")
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    path = tmp_path / "backbone.pth"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, path)
    metric = STCCLMetric(backbone="r18", input_size=64).load_arcface_weights(path)
    for k, v in src.state_dict().items():
        assert torch.equal(metric.backbone.state_dict()[k], v), k


def test_load_arcface_weights_rejects_other_depth_with_clear_error(tmp_path):
    path = tmp_path / "backbone.pth"
    torch.save(build_iresnet("r18").state_dict(), path)
    metric = STCCLMetric(backbone="r34", input_size=64)
    with pytest.raises(ValueError, match="missing keys"):
        metric.load_arcface_weights(path)


def test_official_stccl_spatial_state_dict_imports_into_r50():
    metric = STCCLMetric(backbone="r50", input_size=64)
    sd = {f"resnet50.{k}": torch.randn_like(v) if v.is_floating_point() else v for k, v in build_iresnet("r50").state_dict().items()}
    for i, c in enumerate((64, 128, 256, 512)):
        sd[f"mlp.{3 * i}.weight"] = torch.randn(c, c)
        sd[f"mlp.{3 * i}.bias"] = torch.randn(c)
        sd[f"mlp.{3 * i + 2}.weight"] = torch.randn(c // 4, c)
        sd[f"mlp.{3 * i + 2}.bias"] = torch.randn(c // 4)
    metric.load_official_state_dict(sd)
    assert torch.equal(metric.scc_heads[2][2].weight, sd["mlp.8.weight"])
    assert torch.equal(metric.backbone.conv1.weight, sd["resnet50.conv1.weight"])
    with pytest.raises(ValueError, match="heads do not match"):
        STCCLMetric(backbone="r50", input_size=64, head_ratio=2).load_official_state_dict(sd)


@pytest.mark.parametrize(
    "anchor, generated, match",
    [
        (torch.zeros(2, 3, 64, 64), torch.zeros(2, 3, 64, 64), r"expected frames \(B, T, 3, H, W\)"),
        (torch.zeros(1, 2, 4, 64, 64), torch.zeros(1, 2, 4, 64, 64), r"expected frames \(B, T, 3, H, W\)"),
        (torch.zeros(1, 2, 3, 64, 64), torch.zeros(1, 3, 3, 64, 64), "same shape"),
        (torch.zeros(1, 1, 3, 64, 64), torch.zeros(1, 1, 3, 64, 64), "T >= 2"),
        (torch.full((1, 2, 3, 64, 64), 200.0), torch.zeros(1, 2, 3, 64, 64), r"values in \[-1, 1\]"),
        (torch.zeros(1, 2, 3, 64, 64), torch.full((1, 2, 3, 64, 64), math.nan), "NaN or inf"),
    ],
)
def test_bad_inputs_raise_value_error_naming_expectation(anchor, generated, match):
    with pytest.raises(ValueError, match=match):
        tiny_metric()(anchor, generated)


def test_spatial_only_metric_accepts_single_frames():
    out = tiny_metric(use_tcc=False)(frames(t=1), frames(t=1, seed=1), generator=gen())
    assert torch.isfinite(out.loss) and out.temporal_loss == 0


@pytest.mark.parametrize("input_size", [32, 48])
def test_too_small_input_size_is_rejected_at_construction(input_size):
    # 48 gives 3x3 maps at layer 4: a ring but no region left for a negative.
    with pytest.raises(ValueError, match="at least 4x4"):
        STCCLMetric(backbone=(1, 1, 1, 1), input_size=input_size)
    STCCLMetric(backbone=(1, 1, 1, 1), input_size=input_size, layers=(1, 2, 3))


def test_autocast_bf16_gives_finite_fp32_loss_and_gradient():
    metric = tiny_metric()
    g = frames(b=1, t=2, seed=1).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = metric(frames(b=1, t=2), g, generator=gen())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(g.grad).all()


def test_inputs_are_resized_to_the_metric_input_size():
    metric = tiny_metric()
    small = metric(frames(size=64), frames(size=64, seed=1), generator=gen())
    big = metric(
        torch.nn.functional.interpolate(frames(size=64).flatten(0, 1), size=96, mode="bilinear").view(2, 3, 3, 96, 96),
        torch.nn.functional.interpolate(frames(size=64, seed=1).flatten(0, 1), size=96, mode="bilinear").view(2, 3, 3, 96, 96),
        generator=gen(),
    )
    assert torch.isfinite(big.loss)
    assert abs(big.loss - small.loss) < 0.5 * small.loss


def test_frame_pairs_respect_span():
    i, j = corr.frame_pairs(5)
    assert len(i) == 10 and ((j - i) > 0).all()
    i, j = corr.frame_pairs(5, span=1)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_in_group_info_nce_matches_cross_entropy_over_the_group():
    q, k = torch.randn(3, 6, 4), torch.randn(3, 6, 4)
    loss, pos, neg = corr.info_nce(q, k, None, tau=0.5)
    qn, kn = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    sims = qn @ kn.transpose(1, 2)
    expected = torch.nn.functional.cross_entropy((sims / 0.5).flatten(0, 1), torch.arange(6).repeat(3), reduction="none")
    assert torch.allclose(loss.flatten(), expected, atol=1e-5)
    off = ~torch.eye(6, dtype=torch.bool)
    assert torch.allclose(neg, sims[:, off].view(3, 6, 5).mean(-1), atol=1e-6)


def test_neighbour_locations_are_the_3x3_ring():
    width = 7
    anchors = torch.tensor([[3 * width + 3]])
    ring = corr.neighbour_locations(anchors, width)[0, 0].tolist()
    assert ring == [(3 + dy) * width + 3 + dx for dy, dx in corr.NEIGHBOUR_OFFSETS]


def test_shared_negatives_equal_per_query_negatives():
    q, k, n = torch.randn(2, 8, 6), torch.randn(2, 8, 6), torch.randn(2, 5, 6)
    shared = corr.info_nce(q, k, n)
    per_query = corr.info_nce(q, k, n[:, None].expand(2, 8, 5, 6))
    for a, b in zip(shared, per_query):
        assert torch.allclose(a, b, atol=1e-6)


def test_metric_without_embedding_head_is_small_and_loads_arcface_stages(tmp_path):
    src = build_iresnet("r18")
    path = tmp_path / "backbone.pth"
    torch.save(src.state_dict(), path)
    metric = STCCLMetric(backbone="r18", input_size=64, embedding_head=False).load_arcface_weights(path)
    assert not hasattr(metric.backbone, "fc")
    assert torch.equal(metric.backbone.layer4[0].conv1.weight, src.layer4[0].conv1.weight)
    with pytest.raises(RuntimeError, match="embedding_head=False"):
        metric.backbone(torch.zeros(1, 3, 112, 112))
    assert torch.isfinite(metric(frames(), frames(seed=1), generator=gen()).loss)


def test_time_negatives_make_a_still_target_clip_ambiguous():
    """With time negatives, each SCC query also meets the same region in the target's other frames.
    On a still clip (every frame the same) those equal the positive, so every query's loss is at
    least log(T); the paper's negatives (other regions) leave identical clips far below that."""
    import math

    torch.manual_seed(0)
    still = torch.rand(1, 1, 3, 32, 32).mul(2).sub(1).expand(2, 3, 3, 32, 32).contiguous()
    kw = dict(backbone=(1, 1, 1, 1), input_size=32, layers=(1, 2), use_tcc=False, caas=False, num_samples=4, embedding_head=False)
    plain = STCCLMetric(**kw)
    timed = STCCLMetric(**kw, time_negatives=True)
    timed.load_state_dict(plain.state_dict())
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    with_time = timed(still, still, generator=g(), form="paper")  # the metric-learning form
    without = plain(still, still, generator=g(), form="paper")
    for layer in ("scc/1", "scc/2"):
        assert float(with_time.per_layer[layer]["loss"]) >= math.log(3) - 1e-4
        assert float(without.per_layer[layer]["loss"]) < math.log(3) - 0.1
    with pytest.raises(ValueError, match="time_negatives"):
        STCCLMetric(**kw, time_negatives=True, num_negatives=None)


# -- a fresh (unloaded) metric is finite: features, loss and gradients, eval mode, 112 and 224 px
def _fresh_clip(size, seed):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(2, 3, size // 16, size // 16, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 2 - 1).view(1, 2, 3, size, size)


@pytest.mark.parametrize("backbone,size", [("r50", 224), ("r100", 112)])
def test_fresh_metric_gives_finite_features_loss_and_gradients(backbone, size):
    torch.manual_seed(0)
    metric = STCCLMetric(backbone=backbone, input_size=size, embedding_head=False)  # frozen, eval mode
    assert not metric.training
    anchor, generated = _fresh_clip(size, 0), _fresh_clip(size, 1).requires_grad_(True)
    with torch.no_grad():
        feats = metric.backbone.forward_stages(anchor.flatten(0, 1))
    for i, f in enumerate(feats):
        assert torch.isfinite(f).all() and f.abs().max() < 1e4, (i, float(f.abs().max()))
    out = metric(anchor, generated, generator=torch.Generator().manual_seed(0))
    assert out.loss.isfinite()
    out.loss.backward()
    assert generated.grad is not None and torch.isfinite(generated.grad).all() and generated.grad.abs().sum() > 0


def test_arcface_weights_still_load_exactly_over_the_new_init():
    src = IResNet((1, 1, 1, 1), embedding_head=False)
    with torch.no_grad():
        for p in src.parameters():
            p.normal_(0, 0.05)  # insightface-like values, unlike our init
        for name, b in src.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    state = {f"module.{k}": v.clone() for k, v in src.state_dict().items()}
    dst = IResNet((1, 1, 1, 1), embedding_head=False)
    load_arcface_state_dict(dst, {k[len("module."):]: v for k, v in state.items()})
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_the_training_configs_generator_loss_reaches_the_metric_and_is_checked(tmp_path):
    from stccl_diffusers.training import config_from_dict
    from stccl_diffusers.training.config import TalkingClipsConfig
    from stccl_diffusers.training.demo import ensure_metric

    with pytest.raises(ValueError, match="generator_loss"):
        config_from_dict(TalkingClipsConfig, {"generator_loss": "infonce"})
    torch.manual_seed(0)
    STCCLMetric(backbone=(1, 1, 1, 1), input_size=64, embedding_head=False).save_pretrained(str(tmp_path / "m"))
    kept, info = ensure_metric(str(tmp_path / "m"), tmp_path / "unused")
    assert kept.config.generator_loss == "align" and info["generator_loss"] == "align"  # None: the metric's own
    cfg = config_from_dict(TalkingClipsConfig, {"generator_loss": "paper"})
    metric, info = ensure_metric(str(tmp_path / "m"), tmp_path / "unused", generator_loss=cfg.generator_loss)
    assert metric.config.generator_loss == "paper" and info["generator_loss"] == "paper"
    a, g = torch.rand(1, 2, 3, 64, 64) * 2 - 1, torch.rand(1, 2, 3, 64, 64) * 2 - 1
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(metric(a, g, generator=gen()).loss, metric(a, g, generator=gen(), form="paper").loss)
        assert not torch.allclose(metric(a, g, generator=gen()).loss, kept(a, g, generator=gen()).loss)
    with pytest.raises(ValueError, match="generator_loss"):
        metric.set_generator_loss("bogus")


@pytest.mark.parametrize("name", ["dice_stccl", "dice_stccl_demo", "eat_stccl", "eat_stccl_demo"])
def test_the_shipped_training_configs_name_the_align_form(name):
    import pathlib

    import yaml

    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    assert yaml.safe_load(path.read_text())["generator_loss"] == "align"
