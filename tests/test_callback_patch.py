"""The lines docs/train_text_to_image_lora.patch adds, executed as they are against tiny real models.

The patch's setup and training-loop hunks run in a namespace holding what diffusers'
train_text_to_image_lora.py has at those points (a tiny CLIP tokenizer + text encoder, UNet with
LoRA, AutoencoderKL, DDPMScheduler, a saved tiny STCCLMetric); the script itself is never copied.
"""

import json
import textwrap
from pathlib import Path
from types import SimpleNamespace

import torch

from _stccl_metric_for_tests import single_torch_thread  # noqa: F401 (autouse fixture)
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from stccl_diffusers.metric import STCCLMetric

PATCH = Path(__file__).resolve().parents[1] / "docs" / "train_text_to_image_lora.patch"


def _added_hunks():
    hunks, cur = [], None
    for line in PATCH.read_text(encoding="utf-8").splitlines():
        if line.startswith("@@"):
            cur = []
            hunks.append(cur)
        elif cur is not None and line.startswith("+") and not line.startswith("+++"):
            cur.append(line[1:])
    return [textwrap.dedent("\n".join(h)) for h in hunks]


def _tiny_clip(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    chars = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=32)
    torch.manual_seed(0)
    enc = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, max_position_embeddings=32, bos_token_id=0,
                                       eos_token_id=1, pad_token_id=1))
    return tok, enc.requires_grad_(False)


def test_patch_lines_run_score_gated_steps_with_per_sample_neutral_captions(tmp_path):
    from peft import LoraConfig

    torch.manual_seed(0)
    metric_dir = tmp_path / "metric"
    STCCLMetric(backbone=(1, 1, 1, 1), input_size=64, embedding_head=False, use_tcc=False).save_pretrained(metric_dir)
    tokenizer, text_encoder = _tiny_clip(tmp_path)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4).requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                        layers_per_block=1).requires_grad_(False)
    hunks = _added_hunks()
    setup = next(h for h in hunks if "STCCLRewardCallback(" in h)
    step = next(h for h in hunks if "stccl.run_anchor(" in h)
    imports = next(h for h in hunks if h.startswith("from stccl_diffusers"))

    ns = {"args": SimpleNamespace(stccl_metric=str(metric_dir), stccl_weight=1.0), "torch": torch,
          "noise_scheduler": DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
          "vae": vae, "tokenizer": tokenizer, "text_encoder": text_encoder, "unet": unet,
          "accelerator": SimpleNamespace(device=torch.device("cpu"))}
    exec(imports, ns)
    exec(setup, ns)
    captions = ["a happy man", "an angry woman"]
    seen = []
    decode = tokenizer.batch_decode
    tokenizer.batch_decode = lambda ids, **kw: seen.append(decode(ids, **kw)) or seen[-1]
    ids = tokenizer(captions, max_length=32, padding="max_length", truncation=True, return_tensors="pt").input_ids
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(2, 4, 8, 8, generator=g)
    for t, gated in ((torch.tensor([900, 950]), False), (torch.tensor([100, 900]), True)):
        ns.update(batch={"input_ids": ids}, noisy_latents=noisy, timesteps=t,
                  model_pred=unet(noisy, t, text_encoder(ids, return_dict=False)[0], return_dict=False)[0],
                  loss=torch.zeros((), requires_grad=True))
        exec(step, ns)
        if gated:
            assert float(ns["loss"]) > 0 and ns["stccl"].last_stats["num_scored"] == 1
        else:
            assert float(ns["loss"]) == 0.0 and seen == []  # no anchor forward, no neutral captions built
    assert [c.strip() for c in seen[0]] == ["a happy man", "an angry woman"]  # what the tokenizer gives back
    from stccl_diffusers.callback import neutral_captions

    assert neutral_captions(seen[0]) == [c.replace("happy", "neutral").replace("angry", "neutral") for c in seen[0]]
