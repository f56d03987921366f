"""Overfit one clip with STCCL alone, against the frozen starting model's neutral anchor.

No task loss (no diffusion, no reconstruction): only ``stccl_weight * STCCL(anchor, target)`` trains,
with the anchor rendered by the frozen starting model (``anchor: frozen``: LoRA off for DICE, the
step-0 copy of the trainable weights for EAT). It shows what the STCCL term alone does to a model.
The loss must pull the target toward its anchor (the mouth curves converge) without being able to
lower the anchor's own score, which stays at the floor because the anchor does not move.

Printed before and after, on one held-out synthetic clip in a target emotion rendered by the
backend's validation path (DICE: sampled from fixed noise with the demo's sampler and guidance):

- ``stccl``: the metric's score of the target against the anchor (the training form);
- ``floor``: the anchor scored against itself (0 for a loss whose minimum is the anchor);
- ``mouth_dist``: mean |target - anchor| of the probe's mouth-opening curves (the pull);
- ``recon``: the task loss on the clip, not trained here (DICE: the EDM loss at 4 fixed noise
  draws; EAT: its reconstruction terms); it shows what the STCCL term alone costs the image;
- ``emotion_acc``: the emotion probe's accuracy on the target's frames (the emotion kept).

    python benchmarks/overfit_one_clip.py --backend both --dice_base DIR --eat_base DIR
    python benchmarks/overfit_one_clip.py --backend eat --quick      # tiny random models, seconds

Without ``--dice_base`` / ``--eat_base`` a small untrained model is used (``--quick``), which says
only whether the term pulls, not what it does to a trained model. Base models come from the demos:
``outputs/<run>/reference_dice`` of ``train_dice_stccl.py`` and ``outputs/<run>/reference_eat`` of
``train_eat_stccl.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stccl_diffusers.metric import GENERATOR_LOSSES, STCCLMetric  # noqa: E402
from stccl_diffusers.eval.effect import clip_item, ensure_probe, eval_clips  # noqa: E402
from stccl_diffusers.training.validation import stccl_scores  # noqa: E402
from stccl_diffusers.utils.jsonio import write_json  # noqa: E402
from stccl_diffusers.utils.safety import from_pretrained_local  # noqa: E402

MEASURES = ("stccl", "floor", "mouth_dist", "recon", "emotion_acc")


def _metric(path, size: int) -> STCCLMetric:
    if path:
        return STCCLMetric.from_pretrained(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return STCCLMetric(backbone=(1, 1, 1, 1), input_size=size, embedding_head=False)


def measure(adapter, batch, metric, probe, recon_fn, emotion_index: int) -> dict:
    """The five measures of one state of the model (no gradient)."""
    with torch.no_grad():
        r = adapter.render_validation(batch, generator=torch.Generator().manual_seed(7))
        target, anchor = r["target"][0].float().clamp(-1, 1), r["anchor"][0].float().clamp(-1, 1)
        logits, m_t = probe(target)
        _, m_a = probe(anchor)
        return {
            "stccl": stccl_scores(metric, target[None], anchor[None])["stccl"],
            "floor": stccl_scores(metric, anchor[None], anchor[None])["stccl"],
            "mouth_dist": float((m_t - m_a).abs().mean()),
            "recon": float(recon_fn()),
            "emotion_acc": float((logits.argmax(1) == emotion_index).float().mean()),
        }


def overfit(adapter, batch, metric, probe, recon_fn, emotion_index: int, params, steps: int, lr: float, log) -> dict:
    before = measure(adapter, batch, metric, probe, recon_fn, emotion_index)
    opt = torch.optim.Adam(params, lr=lr)
    used = 0
    for step in range(steps):
        out = adapter.training_step(batch, step, torch.Generator().manual_seed(100 + step))
        term = out["loss_terms"]["stccl"]
        if term is None or not torch.isfinite(term):  # ungated step (DICE t >= 500) or a non-finite score
            continue
        opt.zero_grad(set_to_none=True)
        term.backward()
        opt.step()
        used += 1
        if step % max(1, steps // 5) == 0:
            log(f"  step {step}: stccl term {float(term.detach()):.4f}")
    after = measure(adapter, batch, metric, probe, recon_fn, emotion_index)
    return {"before": before, "after": after, "steps": steps, "steps_with_stccl": used}


# ----------------------------------------------------------------------------------------- DICE
def run_dice(args, metric, probe, log) -> dict:
    from stccl_diffusers.adapters.dice import DiceTrainingConfig, build_callback, build_reference_adapter
    from stccl_diffusers.models.reference_dice import DICE_EMOTIONS, ReferenceDICE
    from stccl_diffusers.training import configure_trainable, parse_config

    cfg = parse_config(DiceTrainingConfig, [], default_config=ROOT / "configs" / "dice_stccl_demo.yaml")
    if args.dice_base:
        model = from_pretrained_local(ReferenceDICE, args.dice_base, "--dice_base")
    else:
        torch.manual_seed(0)
        model = ReferenceDICE(resolution=cfg.resolution, num_frames=cfg.num_frames)
    res, frames = model.config.resolution, args.frames or model.config.num_frames
    cfg = replace(cfg, resolution=res, num_frames=frames, anchor="frozen", stccl_weight=args.weight or cfg.stccl_weight,
                  gate_timestep=args.gate or cfg.gate_timestep)
    adapter = build_reference_adapter(cfg, model, build_callback(cfg, metric, decoder=model.vae))
    params = configure_trainable(adapter, cfg)
    clip = eval_clips(1, frames, res, seed=60_000, emotions=(args.emotion,))[0]
    emo = DICE_EMOTIONS.index(args.emotion)
    item = clip_item(clip, emo, res)
    item["frames"] = torch.from_numpy(clip["gt_frames"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    batch = torch.utils.data.default_collate([item])

    def recon():
        cb, adapter.callback = adapter.callback, None  # the EDM loss alone
        try:
            with torch.no_grad():
                return np.mean([float(adapter.training_step(batch, 0, torch.Generator().manual_seed(900 + k))["loss"])
                                for k in range(4)])
        finally:
            adapter.callback = cb

    from stccl_diffusers.data.synthetic import EMOTIONS

    return overfit(adapter, batch, metric, probe, recon, EMOTIONS.index(args.emotion), params, args.steps,
                   args.dice_lr, log) | {"backend": "dice", "weight": cfg.stccl_weight, "gate_timestep": cfg.gate_timestep,
                                         "base": args.dice_base or "untrained"}


# ------------------------------------------------------------------------------------------ EAT
def run_eat(args, metric, probe, log) -> dict:
    from stccl_diffusers.adapters.eat import EATAdapter, ReferenceEATGeneratorFull, eat_collate
    from stccl_diffusers.models.reference_eat import ReferenceEATModel

    if args.eat_base:
        model = from_pretrained_local(ReferenceEATModel, args.eat_base, "--eat_base")
    else:
        torch.manual_seed(0)
        model = ReferenceEATModel(image_size=64, audio_dim=60)  # eat_collate's 20 mels x 3 frames of context
    res = model.config.image_size
    frames = args.frames or 5
    clips = eval_clips(1, frames, res, seed=60_000, emotions=(args.emotion,))
    batch = eat_validation_like(clips, res, eat_collate, args.emotion)
    model.requires_grad_(True)
    adapter = EATAdapter(ReferenceEATGeneratorFull(model), metric, weight=args.weight or 1.0, warmup_steps=0,
                         crop_size=None, image_size=res, num_frames=frames, anchor="frozen")
    params = [p for p in adapter.parameters() if p.requires_grad]

    def recon():
        with torch.no_grad():
            out = adapter.training_step(batch, 0, torch.Generator().manual_seed(900))
            return float(out["loss_terms"]["task"])

    from stccl_diffusers.data.synthetic import EMOTIONS

    return overfit(adapter, batch, metric, probe, recon, EMOTIONS.index(args.emotion), params, args.steps, args.eat_lr,
                   log) | {"backend": "eat", "weight": args.weight or 1.0, "base": args.eat_base or "untrained"}


def eat_validation_like(clips, res, collate, emotion):
    """The EAT reference model's batch for synthetic clips (what `synthetic_validation` builds)."""
    from stccl_diffusers.adapters.eat import EAT_EMOTION_NAMES
    from stccl_diffusers.eval.effect import clip_item

    items = []
    for c in clips:
        it = clip_item(c, EAT_EMOTION_NAMES.index(emotion), res)
        it["frames"] = torch.from_numpy(c["gt_frames"]).permute(0, 3, 1, 2).float() / 127.5 - 1
        items.append(it)
    return collate(items)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("dice", "eat", "both"), default="both")
    ap.add_argument("--dice_base", default=None, help="a ReferenceDICE save_pretrained folder (default: untrained)")
    ap.add_argument("--eat_base", default=None, help="a ReferenceEATModel save_pretrained folder (default: untrained)")
    ap.add_argument("--metric", default=None, help="a trained STCCL metric folder (default: fresh, seeded)")
    ap.add_argument("--form", choices=GENERATOR_LOSSES, default=None, help="generator loss form (default: the metric's)")
    ap.add_argument("--emotion", default="happy")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--weight", type=float, default=None, help="STCCL weight (default: the backend's demo weight; EAT 1.0)")
    ap.add_argument("--gate", type=int, default=None, help="DICE: the t < gate timestep (default: the demo config's)")
    ap.add_argument("--dice_lr", type=float, default=1e-2)
    ap.add_argument("--eat_lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default="outputs/overfit_one_clip/cache", help="where the mouth/emotion probe is cached")
    ap.add_argument("--quick", action="store_true", help="tiny untrained models, 15 steps")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps = min(args.steps, 15)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    results = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "runs": []}
    for backend in (("dice", "eat") if args.backend == "both" else (args.backend,)):
        base = args.dice_base if backend == "dice" else args.eat_base
        res = 64
        if base:
            res = json.loads((Path(base) / "config.json").read_text()).get("resolution" if backend == "dice" else "image_size", 64)
        metric = _metric(args.metric, 64)
        if args.form:
            metric.register_to_config(generator_loss=args.form)
        # The demos' probe (synthetic_validation's 2000 frames x 400 steps); --quick a smaller one.
        probe, _ = ensure_probe(Path(args.cache), res, *((300, 60) if args.quick else (2000, 400)))
        print(f"{backend}: STCCL only ({metric.config.generator_loss}), frozen anchor, {args.steps} steps")
        run = (run_dice if backend == "dice" else run_eat)(args, metric, probe, print)
        results["runs"].append(run)
        print(table(run))
    results["seconds"] = round(time.time() - t0, 1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, results)
    print(f"({results['seconds']} s)")
    return 0


def table(run) -> str:
    b, a = run["before"], run["after"]
    lines = [f"| {run['backend']} | " + " | ".join(MEASURES) + " |", "|---|" + "---|" * len(MEASURES)]
    lines.append("| before | " + " | ".join(f"{b[k]:.4f}" for k in MEASURES) + " |")
    lines.append("| after | " + " | ".join(f"{a[k]:.4f}" for k in MEASURES) + " |")
    return "\n".join(lines) + f"\n({run['steps_with_stccl']} of {run['steps']} steps had an STCCL term)"


if __name__ == "__main__":
    raise SystemExit(main())
