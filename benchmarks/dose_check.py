"""Dose check of the κ world (issue 22): does the without-STCCL arm's mouth error grow with κ?

For each coupling κ and backend: write the κ world's training set (`stccl-synth --coupling κ`), train
the backend's base model on it from scratch (reconstruction only; cached per κ), fine-tune it for
``--ft-steps`` with the STCCL weight 0 (the without-STCCL arm of the benchmark, one run per seed),
then render the deployment case: the training speakers saying held-out sentences with *neutral*
prosody, asked for every emotion (:func:`~stccl_diffusers.eval.effect.deployment_clips`). The
mouth is scored against the exact ground truth (the emotional face with the mouth of that neutral
audio) by the frozen probe (opening range up to :data:`~benchmarks.world.PROBE_OPEN_MAX`).

Verdict (fixed before any run): the dose is present for a backend when the mean ``gt_mae`` over
seeds increases at every step of the sorted κ grid *and* gt_mae(κ_max) - gt_mae(κ_min) exceeds the
larger of the two seed standard deviations. ``gt_amp`` (generated / true mouth swing) and the per
emotion MAE are reported beside it: a model that took the emotion label as a shortcut for
loudness over-opens on angry/happy/surprised and under-opens on sad. The STCCL score is not
measured here (no STCCL term is trained; ``stccl`` is null).

    python benchmarks/dose_check.py [--kappas 0 0.5 1] [--backends dice eat] [--seeds 0]
        [--dice-vae-steps 300] [--dice-base-steps 1500] [--eat-base-steps 3000] [--ft-steps 0]
        [--sentences 3] [--frames 16] [--base-seed 0] [--loudness normalised|raw] [--threads 1]
        [--out outputs/dose_check]

``--loudness normalised`` (the default): every clip's audio at one RMS, so that only the emotion
label predicts the mouth's gain (bench_kappa.py, second amendment); ``raw``: the first κ world.

Each run writes ``<out>/run-<time>/`` (dose.json, dose.md) and never touches an older run; the
data and base models are cached in ``<out>/cache``. Every setting is written to the JSON.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import clean_json as _clean, demo_cfg as _cfg, new_run_dir, verdict, verdict_line  # noqa: E402,F401
from benchmarks.common import write_report  # noqa: E402
from stccl_diffusers.training.demo import ensure_metric  # noqa: E402
from stccl_diffusers.eval.effect import deployment_clips, ensure_probe  # noqa: E402
from stccl_diffusers.training.loop import train  # noqa: E402
from benchmarks.world import (PROBE_OPEN_MAX, dice_base, eat_base, measure_by_emotion,  # noqa: E402
                                            training_identities, world_data)

DOSE_MEASURES = ("gt_mae", "gt_amp", "gt_corr", "gt_lag", "neu_mae", "emotion_acc")


def without_arm(backend, args, kappa, cache, probe, metric, log) -> dict:
    """Base (cached) + `--ft-steps` of fine-tuning at STCCL weight 0, per seed, scored on the
    deployment clips: {"build_s", "runs": [{seed, measures...}]}."""
    norm = args.loudness == "normalised"
    if backend == "dice":
        from stccl_diffusers.adapters.dice import DiceTrainingConfig, build_callback, build_reference_adapter
        from stccl_diffusers.models.reference_dice import DICE_EMOTIONS, ReferenceDICE

        base = _cfg(DiceTrainingConfig, ROOT / "configs" / "dice_stccl_demo.yaml",
                    {"output_dir": str(cache / "dice"), "data_dir": str(cache / "dice_data"), "report_to": "none",
                     "base_train_steps": args.dice_base_steps, "vae_fit_steps": args.dice_vae_steps})
        data, data_dir = world_data(base, kappa, cache, DICE_EMOTIONS, loudness_normalised=norm)
        base_dir, build_s = dice_base(base, data, cache, kappa, log, model_seed=args.base_seed, loudness_normalised=norm)
        names, collate = list(DICE_EMOTIONS), torch.utils.data.default_collate

        def make(cfg):
            model = ReferenceDICE.from_pretrained(str(base_dir))
            return build_reference_adapter(cfg, model, build_callback(cfg, metric, decoder=model.vae))
    else:
        from stccl_diffusers.adapters.eat.build import build_backend
        from stccl_diffusers.adapters.eat.config import EATSTCCLConfig

        from stccl_diffusers.adapters.eat import EAT_EMOTION_NAMES, EATAdapter, eat_collate

        base = _cfg(EATSTCCLConfig, ROOT / "configs" / "eat_stccl_demo.yaml", {"output_dir": str(cache / "eat"), "data_dir": str(cache / "eat_data"),
                                                  "report_to": "none"})
        data, data_dir = world_data(base, kappa, cache, EAT_EMOTION_NAMES, loudness_normalised=norm)
        audio_dim = eat_collate([data[0]])["audio"].shape[-1]

        def adapter_for(cfg):
            gen, size = build_backend(cfg, audio_dim)
            return EATAdapter(gen, metric, weight=cfg.stccl_weight, warmup_steps=0, ramp_steps=0,
                              crop_size=cfg.crop_size, image_size=size, num_frames=cfg.num_frames), gen

        base_dir, build_s = eat_base(base, data, cache, kappa, args.eat_base_steps, adapter_for, log,
                                     model_seed=args.base_seed, loudness_normalised=norm)
        base = replace(base, reference_model=str(base_dir), stccl_warmup_steps=0, stccl_ramp_steps=0)
        names, collate = list(EAT_EMOTION_NAMES), eat_collate
        make = lambda cfg: adapter_for(cfg)[0]  # noqa: E731
    frames = args.frames
    clips = deployment_clips(args.sentences, frames, base.resolution, identities=training_identities(data_dir),
                             loudness_normalised=norm)
    runs = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        cfg = replace(base, output_dir=str(cache / "runs" / f"{backend}_{kappa:g}_s{seed}"), seed=seed, stccl_weight=0.0,
                      max_train_steps=args.ft_steps, checkpointing_steps=0, validation_steps=0,
                      validate_at_start=False, resume_from_checkpoint=None)
        torch.manual_seed(seed)
        adapter = make(cfg)
        if args.ft_steps > 0:
            train(adapter, data, cfg, collate_fn=None if backend == "dice" else collate)
        adapter.eval()
        r = measure_by_emotion(adapter.render_validation, clips, probe, None, names, base.resolution, collate)
        r.update(seed=seed, ft_s=time.perf_counter() - t0)
        runs.append(r)
        log(f"{backend} κ={kappa:g} seed {seed}: " + ", ".join(f"{m}={r[m]:.3f}" for m in DOSE_MEASURES)
            + " | gt_mae by emotion: " + ", ".join(f"{e} {v['gt_mae']:.3f}" for e, v in r["by_emotion"].items()))
    return {"build_s": build_s, "base_dir": str(base_dir), "data_dir": str(data_dir), "runs": runs}


def markdown(results: dict) -> str:
    lines = ["| backend | κ | seed | " + " | ".join(DOSE_MEASURES) + " | gt_mae by emotion |",
             "|" + "---|" * (4 + len(DOSE_MEASURES))]
    for backend, per in results.items():
        for k in sorted(per["kappas"], key=float):
            for r in per["kappas"][k]["runs"]:
                be = ", ".join(f"{e} {v['gt_mae']:.3f}" for e, v in r["by_emotion"].items())
                lines.append(f"| {backend} | {k} | {r['seed']} | " + " | ".join(f"{r[m]:.3f}" for m in DOSE_MEASURES)
                             + f" | {be} |")
    lines.append("")
    for backend, per in results.items():
        v = per["verdict"]
        lines.append(f"- {backend}: gt_mae by κ {v['kappas']}: " + ", ".join(
            f"{m:.3f} ± {s:.3f}" for m, s in zip(v["gt_mae_mean"], v["gt_mae_std"]))
            + f"; growth {v['growth']:+.3f} vs spread {v['spread']:.3f}: "
            + verdict_line(v))
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kappas", nargs="+", type=float, default=[0.0, 0.5, 1.0])
    ap.add_argument("--backends", nargs="+", default=["dice", "eat"], choices=["dice", "eat"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--dice-vae-steps", type=int, default=300)
    ap.add_argument("--dice-base-steps", type=int, default=1500)
    ap.add_argument("--eat-base-steps", type=int, default=3000)
    ap.add_argument("--base-seed", type=int, default=0,
                    help="training seed of the base models (the data stay seed 0's); another seed = another base")
    ap.add_argument("--ft-steps", type=int, default=0, help="fine-tuning steps of the without arm (STCCL weight 0)")
    ap.add_argument("--sentences", type=int, default=3, help="held-out sentences (each asked for 4 emotions)")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--probe-frames", type=int, default=2000)
    ap.add_argument("--probe-steps", type=int, default=400)
    ap.add_argument("--loudness", choices=["normalised", "raw"], default="normalised",
                    help="the world's audio: every clip at one RMS (normalised, the default since the second "
                         "amendment of bench_kappa.py) or each emotion at its own loudness (raw, the first world)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "outputs" / "dose_check"))
    args = ap.parse_args(argv)
    if any(k < 0 or not math.isfinite(k) for k in args.kappas) or len(set(args.kappas)) < 2:
        ap.error(f"expected at least two distinct kappas >= 0, got {args.kappas}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = Path(args.out)
    cache = out / "cache"
    run_dir = new_run_dir(out)
    log = lambda s: print(f"[{time.perf_counter() - started:6.0f} s] {s}", flush=True)  # noqa: E731
    metric, _ = ensure_metric(None, cache / "metric_12steps", backbone=[1, 1, 1, 1], input_size=64, steps=12, seed=0,
                              progress=False)  # only built so the adapters can be constructed: weight 0, never scored
    results = {}
    for backend in args.backends:
        res = 32 if backend == "dice" else 64
        probe, pinfo = ensure_probe(cache, res, args.probe_frames, args.probe_steps, open_max=PROBE_OPEN_MAX)
        log(f"{backend}: probe ({res} px, opening up to {PROBE_OPEN_MAX}x) held-out emotion acc "
            f"{pinfo['probe_val_emotion_acc']:.2f}, mouth corr {pinfo['probe_val_mouth_corr']:.2f}")
        per = {str(k): without_arm(backend, args, k, cache, probe, metric, log) for k in args.kappas}
        results[backend] = {"probe": pinfo, "kappas": per, "verdict": verdict(per)}
    table = markdown(results)
    wall = time.perf_counter() - started
    payload = _clean({"args": vars(args), "results": results, "wall_time_s": wall,
                      "note": "stccl is null: no STCCL metric scores the without arm here"})
    write_report(run_dir, "dose", payload, table, wall)
    return {"run_dir": str(run_dir), **payload}


if __name__ == "__main__":
    main()
