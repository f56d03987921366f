"""Does STCCL preserve mouth motion? The same fine-tuning with and without it, on both backends.

Synthetic talking faces (:mod:`stccl_diffusers.data.synthetic`): the renderer can draw any
utterance in any emotion, so for every evaluation clip we know exactly what the mouth should do
in the target emotion (the ground truth; training never sees it, training stays unpaired).

For each backend (``dice``: the built-in ReferenceDICE fine-tuned with LoRA through
``STCCLRewardCallback``, the path of ``train_dice_stccl.py``; ``eat``: the built-in EAT-style model
through ``EATWithSTCCL``/``EATAdapter``, the path of ``train_eat_stccl.py``) two arms differ only
in the STCCL weight (0 vs the configured one): same data, base model, seeds, steps, LoRA init.

The base models are trained here (cached) on the demo configs' data and settings: a neutral reference
image (``reference: neutral``), reconstruction weighted where frames differ from it
(``motion_weight``), DICE 300 VAE + 1500 EDM steps, EAT 3000 steps; that is what makes them render
emotion (the table's ``base`` rows say how much).

Measures per arm (mean ± std over seeds), on held-out identities/sentences
(:mod:`stccl_diffusers.eval.effect`, shared with the demos' metrics.json):

* ``emotion_acc``: accuracy of a small frozen probe (CNN trained here on rendered frames with
  random identity, emotion and mouth opening) on the generated target clips; chance is 1/5.
* ``anchor_emotion_acc``: how often the probe sees the *target* emotion in the neutral anchor
  (low when the model really renders emotion: the anchor must differ from the target).
* ``gt_corr`` / ``gt_mae`` / ``gt_lag``: mouth opening of the generated target clip (the probe's
  regression head) against the renderer's exact ``mouth_open`` parameters of the same utterance in
  the target emotion (:func:`stccl_diffusers.eval.mouth.mouth_preservation` on curves).
* ``neu_corr`` / ``neu_mae``: the same against the model's own neutral rendering (the anchor).
* ``px_gt_corr``: the pixel detector (:func:`~stccl_diffusers.eval.mouth.mouth_opening_curve`)
  against the ground-truth frames; NaN where the detector rejects generated frames.
* ``stccl``: the STCCL loss between the generated target and neutral streams (lower = closer).

The ``ground truth`` row scores the renderer's own pair (the target emotion and the same utterance
rendered neutral at the same timing) with the same probe and metric: what a perfect generator would
get, e.g. the ``stccl`` and ``neu_mae`` that a correct emotional mouth has against a correct anchor.
A second table checks the metric on those pairs: the ground-truth target's STCCL against itself,
its neutral twin in sync, shifted by 3 / 6 frames, and frozen (does the metric see mouth timing?).

Base models, data, the metric and the probe are cached under ``outputs/bench_effect/cache``
(reruns skip them); each run writes ``outputs/bench_effect/run-<time>/`` (results.json,
results.md, effect.png) and never touches an older run.

    python benchmarks/bench_effect.py [--quick] [--backends dice eat] [--seeds 0 1 2]
        [--dice-weight 0.5] [--eat-weight 0.2] [--steps N] [--dice-steps 120] [--eat-steps 60]
        [--dice-lr 1e-2] [--dice-rank 8] [--eat-lr 2e-3] [--metric-steps 12] [--eval-faces new|training]
        [--threads 2]

Honest by construction: nothing here looks at the result to choose a setting; every setting run
is written to the JSON.
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
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from stccl_diffusers.data.clips import TalkingClipDataset  # noqa: E402
from benchmarks.common import demo_cfg as _cfg, metric_quality, new_run_dir  # noqa: E402,F401
from stccl_diffusers.training.demo import ensure_metric, ensure_synthetic_clips, metric_backbone_arg  # noqa: E402
from stccl_diffusers.eval.effect import (  # noqa: E402
    MEASURES, NULL_REASONS, SYNC_CHECKS, ensure_probe, eval_clips, measure, metric_sync_check, truth_scores)
from stccl_diffusers.training.loop import train  # noqa: E402
from stccl_diffusers.utils.jsonio import nulls_to_nan, write_json  # noqa: E402


# ----------------------------------------------------------------------------- the backends


def run_arms(backend, base_cfg, weight, steps, make_adapter, data, collate_fn, evaluate, seeds, run_dir, results, log):
    """Fine-tune from the cached base once per (arm, seed): the arms differ only in the STCCL weight."""
    for arm, w in (("without", 0.0), ("with", weight)):
        for seed in seeds:
            t0 = time.perf_counter()
            cfg = replace(base_cfg, output_dir=str(run_dir / backend / f"{arm}_s{seed}"), seed=seed, stccl_weight=w,
                          max_train_steps=steps, checkpointing_steps=0, validation_steps=0, validate_at_start=False,
                          resume_from_checkpoint=None)
            torch.manual_seed(seed)
            adapter = make_adapter(cfg)
            train(adapter, data, cfg, collate_fn=collate_fn)
            adapter.eval()
            r = evaluate(adapter)
            r["train_s"] = time.perf_counter() - t0
            results.setdefault(arm, []).append({"seed": seed, **r})
            log(f"{backend} {arm} seed {seed}: " + ", ".join(f"{k}={r[k]:.3f}" for k in MEASURES))


def data_and_metric(base, emotions, cache: Path, metric_steps: int):
    """The backend's synthetic training clips (made once in the cache) and the shared cached metric
    (`pretrain_metric_quick` for `metric_steps` steps, with the demo configs' backbone)."""
    ensure_synthetic_clips(base.data_dir, base.synth_speakers, base.synth_clips, size=64, seed=base.seed)
    data = TalkingClipDataset(base.data_dir, emotions, base.num_frames, base.resolution,
                              windows_per_clip=base.windows_per_clip, progress=False, reference=base.reference)
    metric, _ = ensure_metric(None, cache / f"metric_{metric_steps}steps", backbone=metric_backbone_arg(base.metric_backbone),
                              input_size=base.metric_input_size, steps=metric_steps, seed=0, progress=False)
    return data, metric


def eval_identities(args, data_dir: Path):
    """None (``--eval-faces new``: faces training never saw) or the training speakers' faces of the
    synthetic set in `data_dir` (``--eval-faces training``: clip i is speaker i % n saying a new
    sentence)."""
    if args.eval_faces == "new":
        return None
    from stccl_diffusers.data.synthetic import speaker_identities

    return list(speaker_identities(str(data_dir)).values())


def ground_truth_rows(backend, clips, probe, metric, log) -> dict:
    """The renderer's own pairs: their measures (``truth``) and the metric's sync check on them."""
    sync = metric_sync_check(clips, metric)
    log(f"{backend}: STCCL of the ground-truth target against: " + ", ".join(f"{k} {v:.3f}" for k, v in sync.items()))
    return {"truth": truth_scores(clips, probe, metric), "metric_sync": sync}


def run_dice(args, cache: Path, run_dir: Path, probe, log) -> dict:
    from stccl_diffusers.adapters.dice import (DiceTrainingConfig, build_callback, build_reference_adapter,
                                               pretrain_reference_dice)
    from stccl_diffusers.models.reference_dice import DICE_EMOTIONS, ReferenceDICE

    base = _cfg(DiceTrainingConfig, ROOT / "configs" / "dice_stccl_demo.yaml",
                {"output_dir": str(cache / "dice"), "data_dir": str(cache / "dice_data"), "report_to": "none",
                 "base_train_steps": args.dice_base_steps, "vae_fit_steps": args.dice_vae_steps})
    data, metric = data_and_metric(base, DICE_EMOTIONS, cache, args.metric_steps)
    quality = metric_quality(metric)
    log(f"dice: metric ({args.metric_steps} steps) held-out pos/neg similarity {quality['pos_sim']:.3f} / "
        f"{quality['neg_sim']:.3f}, gap {quality['gap']:.3f}")
    base_dir = cache / "dice" / (f"reference_dice_v{args.dice_vae_steps}_b{args.dice_base_steps}_"
                                 f"{base.reference}_mw{base.motion_weight:g}_bs{base.train_batch_size}"
                                 + ("_film" if base.emotion_time_embedding else ""))
    if not (base_dir / "config.json").is_file():
        log(f"dice: pre-training the base model ({args.dice_base_steps} steps; cached in {base_dir})")
        pretrain_reference_dice(base, data, base_dir)
    clips = eval_clips(args.clips, args.dice_frames, base.resolution, identities=eval_identities(args, base.data_dir))
    collate = torch.utils.data.default_collate
    results = {"settings": {"base_steps": args.dice_base_steps, "vae_steps": args.dice_vae_steps,
                            "reference": base.reference, "motion_weight": base.motion_weight,
                            "batch_size": base.train_batch_size, "emotion_time_embedding": base.emotion_time_embedding, "guidance_scale": base.guidance_scale,
                            "steps": args.steps_dice, "weight": args.dice_weight,
                            "metric_steps": args.metric_steps, "metric_quality": quality, "gate_timestep": base.gate_timestep,
                            "eval_faces": args.eval_faces,
                            "lr": args.dice_lr or base.learning_rate, "rank": args.dice_rank or base.rank, "clips": args.clips,
                            "eval_frames": args.dice_frames}}
    results.update(ground_truth_rows("dice", clips, probe, metric, log))
    model = ReferenceDICE.from_pretrained(str(base_dir))
    results["base"] = measure(build_reference_adapter(base, model).render_validation, clips, probe, metric,
                              list(DICE_EMOTIONS), base.resolution, collate)
    def make_adapter(cfg):
        model = ReferenceDICE.from_pretrained(str(base_dir))  # the same base and LoRA init for every arm
        return build_reference_adapter(cfg, model, build_callback(cfg, metric, decoder=model.vae))

    ft = replace(base, learning_rate=args.dice_lr or base.learning_rate, rank=args.dice_rank or base.rank)
    run_arms("dice", ft, args.dice_weight, args.steps_dice, make_adapter, data, None,
             lambda a: measure(a.render_validation, clips, probe, metric, list(DICE_EMOTIONS), base.resolution,
                               collate), args.seeds, run_dir, results, log)
    return results


def run_eat(args, cache: Path, run_dir: Path, probe, log) -> dict:
    from stccl_diffusers.adapters.eat.build import build_backend
    from stccl_diffusers.adapters.eat.config import EATSTCCLConfig

    from stccl_diffusers.adapters.eat import EAT_EMOTION_NAMES, EATAdapter, eat_collate

    base = _cfg(EATSTCCLConfig, ROOT / "configs" / "eat_stccl_demo.yaml", {"output_dir": str(cache / "eat"), "data_dir": str(cache / "eat_data"),
                                              "report_to": "none"})
    data, metric = data_and_metric(base, EAT_EMOTION_NAMES, cache, args.metric_steps)
    quality = metric_quality(metric)
    log(f"eat: metric ({args.metric_steps} steps) held-out pos/neg similarity {quality['pos_sim']:.3f} / "
        f"{quality['neg_sim']:.3f}, gap {quality['gap']:.3f}")
    audio_dim = eat_collate([data[0]])["audio"].shape[-1]
    base_dir = cache / "eat" / (f"reference_eat_b{args.eat_base_steps}_{base.reference}_mw{base.motion_weight:g}_"
                                f"bs{base.train_batch_size}")

    def adapter_for(cfg):
        gen, size = build_backend(cfg, audio_dim)
        return EATAdapter(gen, metric, weight=cfg.stccl_weight, warmup_steps=cfg.stccl_warmup_steps,
                          ramp_steps=cfg.stccl_ramp_steps, crop_size=cfg.crop_size, image_size=size,
                          num_frames=cfg.num_frames), gen

    if not (base_dir / "config.json").is_file():
        log(f"eat: pre-training the base model ({args.eat_base_steps} steps, reconstruction only; cached in {base_dir})")
        bcfg = replace(base, output_dir=str(cache / "eat" / "base_run"), stccl_weight=0.0, stccl_warmup_steps=0,
                       stccl_ramp_steps=0, max_train_steps=args.eat_base_steps, checkpointing_steps=0,
                       validation_steps=0, validate_at_start=False, resume_from_checkpoint=None)
        adapter, gen = adapter_for(bcfg)
        train(adapter, data, bcfg, collate_fn=eat_collate)
        gen.model.save_pretrained(str(base_dir))
    clips = eval_clips(args.clips, args.eat_frames, base.resolution, identities=eval_identities(args, base.data_dir))
    results = {"settings": {"base_steps": args.eat_base_steps, "steps": args.steps_eat, "weight": args.eat_weight,
                            "metric_steps": args.metric_steps, "metric_quality": quality,
                            "eval_faces": args.eval_faces, "reference": base.reference, "motion_weight": base.motion_weight,
                            "batch_size": base.train_batch_size,
                            "lr": args.eat_lr or base.learning_rate, "clips": args.clips, "eval_frames": args.eat_frames}}
    ref = replace(base, reference_model=str(base_dir), stccl_warmup_steps=0, stccl_ramp_steps=0,
                  learning_rate=args.eat_lr or base.learning_rate)
    results.update(ground_truth_rows("eat", clips, probe, metric, log))
    adapter, _ = adapter_for(replace(ref, stccl_weight=0.0))
    results["base"] = measure(adapter.render_validation, clips, probe, metric, list(EAT_EMOTION_NAMES),
                              base.resolution, eat_collate)
    run_arms("eat", ref, args.eat_weight, args.steps_eat, lambda cfg: adapter_for(cfg)[0], data, eat_collate,
             lambda a: measure(a.render_validation, clips, probe, metric, list(EAT_EMOTION_NAMES), base.resolution,
                               eat_collate), args.seeds, run_dir, results, log)
    return results


# ----------------------------------------------------------------------------- report


def summarize(results: dict) -> dict:
    """{backend: {arm: {measure: (mean, std)}}} over seeds."""
    out = {}
    for backend, res in results.items():
        out[backend] = {}
        for arm in ("without", "with"):
            runs = res.get(arm, [])
            out[backend][arm] = {k: (float(np.nanmean([r[k] for r in runs])), float(np.nanstd([r[k] for r in runs])))
                                 if runs and not all(np.isnan(r[k]) for r in runs) else (float("nan"), float("nan"))
                                 for k in MEASURES}
    return out


def markdown_table(results: dict, summary: dict) -> str:
    head = "| backend | arm | seed | " + " | ".join(MEASURES) + " |"
    lines = [head, "|" + "---|" * (3 + len(MEASURES))]
    for backend, res in results.items():
        for row, name in (("truth", "ground truth (renderer's own pair)"), ("base", "base")):
            b = res[row]
            lines.append(f"| {backend} | {name} | - | " + " | ".join(f"{b[k]:.3f}" for k in MEASURES) + " |")
        for arm in ("without", "with"):
            for r in res.get(arm, []):
                lines.append(f"| {backend} | {arm} | {r['seed']} | " + " | ".join(f"{r[k]:.3f}" for k in MEASURES) + " |")
            s = summary[backend][arm]
            lines.append(f"| {backend} | **{arm} (mean ± std)** | all | "
                         + " | ".join(f"{s[k][0]:.3f} ± {s[k][1]:.3f}" for k in MEASURES) + " |")
    lines += ["", "STCCL score of the ground-truth target against: itself (the floor), its neutral twin in sync, "
              "the twin shifted by 3 / 6 frames, the twin's first frame held:", "",
              "| backend | " + " | ".join(SYNC_CHECKS) + " |", "|" + "---|" * (1 + len(SYNC_CHECKS))]
    for backend, res in results.items():
        if "metric_sync" in res:
            lines.append(f"| {backend} | " + " | ".join(f"{res['metric_sync'][k]:.3f}" for k in SYNC_CHECKS) + " |")
    return "\n".join(lines)


UNIT_MEASURES = tuple(m for m in MEASURES if m not in ("gt_lag", "neu_lag", "gt_amp", "neu_amp", "stccl"))  # all in [0, 1]


def _bars(ax, res, summary_b, measures, title):
    x = np.arange(len(measures))
    for k, (arm, col) in enumerate((("without", "C0"), ("with", "C3"))):
        s = summary_b[arm]
        ax.bar(x + (k - 0.5) * 0.38, [s[m][0] for m in measures], 0.38, yerr=[s[m][1] for m in measures],
               color=col, capsize=3, label=f"{arm} STCCL (n={len(res[arm])} seeds)")
    if "truth" in res:
        t = res["truth"]
        ax.plot(x, [t[m] for m in measures], "k_", ms=22, mew=2, ls="none", label="ground truth (renderer's own pair)")
    if "base" in res:
        b = res["base"]
        ax.plot(x, [b[m] for m in measures], "x", color="grey", ms=7, mew=1.5, ls="none", label="base (before fine-tuning)")
    ax.set_xticks(x, measures, rotation=30 if len(measures) > 2 else 0, fontsize=8)
    ax.set_title(title, fontsize=9)


def draw_figure(results: dict, summary: dict, path: Path) -> None:
    """Top: mouth opening of eval clip 0 (ground truth, without and with STCCL). Middle: the measures
    in [0, 1], mean ± std over seeds, with the ground-truth pair and the base as markers. Bottom: the
    STCCL score (own scale, zoomed to the values so a difference is visible) and the mouth lag."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(results)
    fig = plt.figure(figsize=(6.5 * len(backends), 10.5))
    grid = fig.add_gridspec(3, 2 * len(backends), height_ratios=[1, 1, 0.8])
    for j, backend in enumerate(backends):
        res = results[backend]
        ax = fig.add_subplot(grid[0, 2 * j: 2 * j + 2])
        ax.plot(res["without"][0]["curves"]["gt"], "k-", lw=2, label="ground truth (renderer, target emotion)")
        ax.plot(res["without"][0]["curves"]["target"], "C0--", label=f"without STCCL (seed {res['without'][0]['seed']})")
        ax.plot(res["with"][0]["curves"]["target"], "C3-", label=f"with STCCL (seed {res['with'][0]['seed']})")
        ax.set(title=f"{backend}: mouth opening, eval clip 0", xlabel="frame", ylabel="mouth opening")
        ax.legend(fontsize=8)
        ax = fig.add_subplot(grid[1, 2 * j: 2 * j + 2])
        _bars(ax, res, summary[backend], UNIT_MEASURES,
              f"{backend}: measures (mean ± std over seeds; dotted: emotion chance 0.2)")
        ax.axhline(0.2, color="grey", ls=":", lw=1)
        ax.set_ylim(0, 1.3)
        ax.legend(fontsize=7, ncol=2, loc="upper center")
        for k, m in enumerate(("stccl", "gt_lag")):
            ax = fig.add_subplot(grid[2, 2 * j + k])
            _bars(ax, res, summary[backend], (m,), f"{backend}: {m}" + (" (lower = target closer to anchor)"
                                                                          if m == "stccl" else " (frames)"))
            vals = [v for v in [summary[backend][a][m][0] for a in ("without", "with")]
                    + [res[r][m] for r in ("truth", "base") if r in res] if np.isfinite(v)]
            if m == "stccl" and vals:
                pad = max(0.05, 0.15 * (max(vals) - min(vals)))
                ax.set_ylim(min(vals) - pad, max(vals) + pad)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def replot(run_dir: Path) -> Path:
    """Redraw a run's figure from its results.json (e.g. after a change to the figure) into a new
    `effect-replot[-N].png` beside it; the run's own effect.png is kept."""
    run_dir = Path(run_dir)
    if not (run_dir / "results.json").is_file():
        raise SystemExit(f"--replot {run_dir}: expected a run folder of this benchmark with a results.json")
    payload = nulls_to_nan(json.loads((run_dir / "results.json").read_text()))
    summary = {b: {a: {m: tuple(v) for m, v in arms.items()} for a, arms in s.items()}
               for b, s in payload["summary"].items()}
    path, n = run_dir / "effect-replot.png", 1
    while path.exists():
        n += 1
        path = run_dir / f"effect-replot-{n}.png"
    draw_figure(payload["results"], summary, path)
    return path


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 seeds, few steps, short base schedules (smoke run)")
    ap.add_argument("--backends", nargs="+", default=["dice", "eat"], choices=["dice", "eat"])
    ap.add_argument("--seeds", nargs="+", type=int, default=None)
    ap.add_argument("--dice-weight", type=float, default=12.0, help="configs/dice_stccl_demo.yaml's stccl_weight")
    ap.add_argument("--eat-weight", type=float, default=0.7, help="configs/eat_stccl_demo.yaml's stccl_weight")
    ap.add_argument("--dice-lr", type=float, default=None, help="DICE LoRA fine-tuning learning rate (config: 1e-2)")
    ap.add_argument("--eat-lr", type=float, default=None, help="EAT fine-tuning learning rate (config: 2e-3)")
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps per arm (both backends)")
    ap.add_argument("--dice-steps", type=int, default=None, help="DICE fine-tuning steps per arm (overrides --steps)")
    ap.add_argument("--eat-steps", type=int, default=None, help="EAT fine-tuning steps per arm (overrides --steps)")
    ap.add_argument("--dice-rank", type=int, default=None, help="DICE LoRA rank (config: 8)")
    ap.add_argument("--metric-steps", type=int, default=None,
                    help="metric-learning steps of the shared STCCL metric (configs/dice_stccl_demo.yaml: 12)")
    ap.add_argument("--clips", type=int, default=None, help="held-out evaluation clips")
    ap.add_argument("--eval-faces", choices=["new", "training"], default="new",
                    help="evaluation faces: new identities (default) or the training speakers saying new sentences")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench_effect"))
    ap.add_argument("--replot", metavar="RUN_DIR", default=None,
                    help="only redraw RUN_DIR's figure from its results.json into RUN_DIR/effect-replot.png (trains nothing)")
    args = ap.parse_args(argv)
    q = args.quick
    args.seeds = args.seeds or ([0, 1] if q else [0, 1, 2])
    args.steps_dice = args.dice_steps or args.steps or (6 if q else 120)
    args.steps_eat = args.eat_steps or args.steps or (10 if q else 60)
    args.clips = args.clips or (2 if q else 4)
    args.metric_steps = args.metric_steps or 12
    args.dice_base_steps, args.dice_vae_steps = (40, 40) if q else (1500, 300)
    args.eat_base_steps = 30 if q else 3000
    args.dice_frames, args.eat_frames = (8, 10) if q else (16, 25)
    args.probe_frames, args.probe_steps = (600, 150) if q else (2000, 400)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.replot:
        print(f"redrew {replot(Path(args.replot))}")
        return {"run_dir": str(args.replot)}
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = Path(args.out)
    cache = out / "cache" / ("quick" if args.quick else "full")
    run_dir = new_run_dir(out)
    log = lambda s: print(f"[{time.perf_counter() - started:6.0f} s] {s}", flush=True)  # noqa: E731
    results, probes = {}, {}
    for backend in args.backends:
        res = 32 if backend == "dice" else 64
        probe, pinfo = ensure_probe(cache, res, args.probe_frames, args.probe_steps)
        probes[backend] = pinfo
        log(f"{backend}: probe ({res} px) held-out emotion acc {pinfo['probe_val_emotion_acc']:.2f}, "
            f"mouth corr {pinfo['probe_val_mouth_corr']:.2f}")
        results[backend] = (run_dice if backend == "dice" else run_eat)(args, cache, run_dir, probe, log)
    summary = summarize(results)
    table = markdown_table(results, summary)
    wall = time.perf_counter() - started
    payload = {"args": {k: v for k, v in vars(args).items()}, "probes": probes, "results": results,
               "summary": summary, "wall_time_s": wall, "torch_threads": args.threads}
    write_json(run_dir / "results.json", payload, indent=1, why=NULL_REASONS)
    (run_dir / "results.md").write_text(table + "\n")
    draw_figure(results, summary, run_dir / "effect.png")
    print(table)
    print(f"\nwall time {wall:.0f} s; results in {run_dir}/ (results.json, results.md, effect.png)")
    return {"run_dir": str(run_dir), **payload}


if __name__ == "__main__":
    main()
