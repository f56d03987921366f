"""Does STCCL preserve the mouth where a model has a reason to lose it? The κ-world benchmark (issue 22).

PRE-REGISTERED (written before any full run; the full run is the lead's to do, from a fresh clone).

World (:mod:`stccl_diffusers.data.synthetic`, `stccl-synth --coupling κ`): in the training data,
emotional clips carry emotional prosody (speaking rate :data:`~stccl_diffusers.data.synthetic.EMOTION_TEMPO`,
loudness :attr:`~stccl_diffusers.data.synthetic.EmotionParams.loudness`) and their mouth opens with
their loudness with strength κ (gain = loudness ** κ: angry 1.35x, sad 0.70x at κ = 1). κ = 0 is the
original world, frame for frame. The emotion label then predicts the mouth's amplitude as well as the
audio does: a model can take the label as a shortcut for articulation.

Test (the deployment case, :func:`~stccl_diffusers.eval.effect.deployment_clips`): the training
speakers (the tiny models cannot draw a face they never saw) say held-out sentences with *neutral*
prosody, asked for every non-neutral emotion. Ground truth: the renderer's emotional face with the
mouth driven by that neutral audio (no gain, neutral timing), exact.

Grid: κ ∈ {0, 0.5, 1}; seeds {0, 1, 2}; both backends. Base models (one per backend and κ) are
trained from scratch on that κ's data with the demo configs' settings (DICE: 300 VAE + 1500 EDM
steps; EAT: 3000 steps) and cached; every arm fine-tunes the same base with the same data, seed
and LoRA init.

Arms (the STCCL weight is the demo configs': DICE 0.5, EAT 0.02; amended below: 12 and 0.7):

* ``without``: STCCL weight 0.
* ``single_step`` (DICE): the paper's reward (x0-hat of a noised training clip, gated t < 500).
* ``rollout`` (DICE): target and anchor sampled from one noise with the validation sampler (10
  Euler steps, guidance 3.0) every 10th step, gradient through the target's last K = 5 steps
  (sigma 1.5 and below; K = 1, sigma 0.002, passes ~0.2 % of the gradient under EDM preconditioning),
  the neutral recording of the sentence as audio (``rollout_audio: neutral``, the deployment case).
* ``with`` (EAT): EAT's STCCL hook (EAT has no diffusion: no reward modes).
* ``placebo``: the anchor's frames shuffled in time (a derangement per clip), at the same weight;
  DICE in the ``single_step`` mode (``--placebo-mode`` changes it; the default is the grid's).

Fine-tuning: DICE 120 steps (LoRA rank 8, lr 1e-2), EAT 60 steps (lr 2e-3), as bench_effect.py.

Measures (per arm, κ and seed; means over 3 sentences x 4 emotions = 12 clips of 16 (DICE) / 25
(EAT) frames), by the frozen probe (opening range up to 1.4x; :mod:`stccl_diffusers.eval.effect`):

* against the ground truth: ``gt_corr``, ``gt_mae`` (the primary measure), ``gt_amp`` (std ratio:
  > 1 over-articulates), ``gt_lag``;
* against the anchor (the model's own neutral rendering): ``neu_corr``, ``neu_mae``, ``neu_amp``, ``neu_lag``;
* ``emotion_acc`` (the probe's emotion accuracy on the targets);
* ``stccl``: the STCCL score of target vs anchor, scored the way training scores (one scoring):
  consecutive windows of the training ``num_frames`` with the training ``frame_subset``, averaged
  (:func:`~benchmarks.world.windowed_stccl`), both sampled with the validation
  guidance. The single-step training reward scores x0-hat without guidance; its level is not this one.

Metric: the STCCL metric trained here for 200 steps (`pretrain_metric_quick`, backbone (1,1,1,1),
64 px), with its held-out pos/neg gap and the sync check of bench_effect.py in the report.

Dose check (before any STCCL arm counts): the ``without`` arm's mean gt_mae must increase at every
step of the κ grid and grow by more than the larger seed std at the ends; else the report says the
world does not contain the failure yet.

Goal (reported, not a condition): at κ = 1, an arm removes ≥ half of the ``without`` arm's extra
gt_mae over κ = 0, beyond the seed spread, ahead of the placebo, with emotion_acc within 0.05 of
``without``. Reward hacking flag: an arm whose stccl is lower than ``without`` while its neu_mae is
higher, each by more than the larger seed std (and 1e-3): the reward improved, the independent
instrument worsened.

    python benchmarks/bench_kappa.py [--quick] [--backends dice eat] [--kappas 0 0.5 1] [--seeds 0 1 2]
        [--threads 2] [--jobs 1] [--out outputs/bench_kappa]

Budget (an estimate, not a measurement of this grid: it never ran in full). On the loaded 2-core
machine of its author, a dose-check base of 150 VAE + 600 EDM steps took 324-704 s (DICE) and a
1000-step EAT base 178-242 s; the grid's bases are 2.5-3x longer, so a cold build of the 6 bases is
about 1.5-2 h there. A DICE arm run (120 steps + 12 clips x 16 frames rendered with 10 guided
steps) is a few minutes, x 36 runs: the full grid likely exceeds the issue's 60 minutes even with
the bases cached. Whoever runs it measures and reports the time, and cuts the grid (written here
first) if it must fit.

AMENDMENT (2026-12-06, written before the first full run; nothing of the grid had run):

* Weights: the demo configs' weights changed with the `align` generator loss (issue 21): DICE 12.0,
  EAT 0.7, set from the measured gradient ratio (median 0.215 / 0.138, docs/loss.md). The arms use
  them (``--dice-weight`` / ``--eat-weight`` defaults).
* Cut to fit the 2-core budget: base models at the dose check's size (DICE 150 VAE + 600 EDM steps,
  EAT 1000 steps; ``--dice-vae-steps`` / ``--dice-base-steps`` / ``--eat-base-steps``), built once
  and cached (their build time is reported apart). Everything else as above.
* Order of runs: the dose check comes first, per backend. The DICE dose check at that base size
  (docs/kappa_world.md, two base seeds) found no dose (gt_mae 0.141 ± 0.024 at κ = 0, 0.137 ± 0.022
  at κ = 1), so the DICE arms do not count until the DICE world or base changes; the first full run
  is EAT's (``--backends eat``), where the dose is present over two bases (0.132 ± 0.009 →
  0.179 ± 0.013). The DICE grid is run when its dose check passes.

SECOND AMENDMENT (2026-12-06, after the first full run, EAT, and before any run of the world below):

* The first full run (``--backends eat``, docs/kappa_world.md) had no dose: the without arm's gt_mae
  was 0.127 / 0.153 / 0.127 at κ 0 / 0.5 / 1. By the rule above no arm counted. The world changes,
  not the measures: in that world every clip's audio kept its emotion's loudness and the mouth's
  gain was that loudness ** κ, so the audio level alone predicted the gain and a model needed no
  shortcut (fine-tuning on the same data removed the bases' drift). Real recordings reach a model
  through gain control, and speech encoders are largely gain-invariant: there only the emotion label
  predicts how wide an emotion's mouth opens. So now every clip's audio, training sets and the
  deployment test's neutral audio alike, is scaled to one RMS
  (:func:`~stccl_diffusers.data.synthetic.normalise_loudness`, `stccl-synth --normalise-loudness`;
  ``--loudness normalised``, the default; ``--loudness raw`` is the first world). Faces, mouths,
  tempo and ground truth are unchanged.
* Grid, seeds, arms, weights, base and fine-tuning steps, measures, dose rule and goal: unchanged.
* The reward-hacking flag is checked at every κ of the grid (it was the largest κ only, and the
  first run had a case at κ = 0 that it missed); the report names the κ where it fires.
* Order of runs: the dose check (``benchmarks/dose_check.py``, loudness normalised, the grid's base
  sizes) first, per backend; a backend's arms count only where it finds the dose.

``--quick`` (smoke run, minutes): κ {0, 1}, seed 0, tiny base models and fine-tuning, 1 sentence,
DICE sampler 4 steps (rollout K = 2).
Each run writes ``<out>/run-<time>/`` (results.json, results.md, kappa.png) and never touches an older
run; data, base models, the probe and the metric are cached in ``<out>/cache/{quick,full}``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import clean_json as _clean, demo_cfg as _cfg, metric_quality, new_run_dir  # noqa: E402
from benchmarks.common import verdict, verdict_line, write_report  # noqa: E402
from stccl_diffusers.training.demo import ensure_metric  # noqa: E402
from stccl_diffusers.eval.effect import SYNC_CHECKS, deployment_clips, ensure_probe, metric_sync_check  # noqa: E402
from stccl_diffusers.training.loop import train  # noqa: E402
from benchmarks.world import (PROBE_OPEN_MAX, dice_base, eat_base, measure_by_emotion,  # noqa: E402
                                            training_identities, world_data)

MEASURES = ("gt_mae", "gt_corr", "gt_amp", "gt_lag", "neu_mae", "neu_corr", "neu_amp", "neu_lag", "emotion_acc", "stccl")
ARMS = {"dice": ("without", "single_step", "rollout", "placebo"), "eat": ("without", "with", "placebo")}


def arm_overrides(backend: str, arm: str, args) -> dict:
    """Config fields of an arm (the only thing that differs between arms)."""
    w = args.dice_weight if backend == "dice" else args.eat_weight
    if arm == "without":
        return {"stccl_weight": 0.0}
    if arm == "placebo":
        extra = {"reward_mode": args.placebo_mode} if backend == "dice" else {}
        if backend == "dice" and args.placebo_mode == "rollout":
            extra.update(rollout_every=args.rollout_every, rollout_grad_steps=args.rollout_k, rollout_audio="neutral")
        return {"stccl_weight": w, "stccl_placebo": True, **extra}
    if arm == "rollout":
        return {"stccl_weight": w, "reward_mode": "rollout", "rollout_every": args.rollout_every,
                "rollout_grad_steps": args.rollout_k, "rollout_audio": "neutral"}
    return {"stccl_weight": w, **({"reward_mode": "single_step"} if backend == "dice" else {})}


def setup(backend, args, kappa, cache, metric, log):
    """(base config, data, make_adapter(cfg), emotion names, collate, build seconds, data dir)."""
    norm = args.loudness == "normalised"
    if backend == "dice":
        from stccl_diffusers.adapters.dice import DiceTrainingConfig, build_callback, build_reference_adapter
        from stccl_diffusers.models.reference_dice import DICE_EMOTIONS, ReferenceDICE

        base = _cfg(DiceTrainingConfig, ROOT / "configs" / "dice_stccl_demo.yaml",
                    {"output_dir": str(cache / "dice"), "data_dir": str(cache / "dice_data"), "report_to": "none",
                     "base_train_steps": args.dice_base_steps, "vae_fit_steps": args.dice_vae_steps})
        data, data_dir = world_data(base, kappa, cache, DICE_EMOTIONS, loudness_normalised=norm)
        base_dir, build_s = dice_base(base, data, cache, kappa, log, loudness_normalised=norm)
        base = replace(base, learning_rate=args.dice_lr, rank=8, num_inference_steps=args.dice_sampler_steps)

        def make(cfg):
            model = ReferenceDICE.from_pretrained(str(base_dir))
            return build_reference_adapter(cfg, model, build_callback(cfg, metric, decoder=model.vae))

        return base, data, make, list(DICE_EMOTIONS), torch.utils.data.default_collate, build_s, data_dir
    from stccl_diffusers.adapters.eat.build import build_backend
    from stccl_diffusers.adapters.eat.config import EATSTCCLConfig

    from stccl_diffusers.adapters.eat import EAT_EMOTION_NAMES, EATAdapter, eat_collate
    from stccl_diffusers.placebo import enable_placebo

    base = _cfg(EATSTCCLConfig, ROOT / "configs" / "eat_stccl_demo.yaml", {"output_dir": str(cache / "eat"), "data_dir": str(cache / "eat_data"),
                                              "report_to": "none"})
    data, data_dir = world_data(base, kappa, cache, EAT_EMOTION_NAMES, loudness_normalised=norm)
    audio_dim = eat_collate([data[0]])["audio"].shape[-1]

    def adapter_for(cfg):
        gen, size = build_backend(cfg, audio_dim)
        adapter = EATAdapter(gen, metric, weight=cfg.stccl_weight, warmup_steps=0, ramp_steps=0,
                             crop_size=cfg.crop_size, image_size=size, num_frames=cfg.num_frames)
        if cfg.stccl_placebo:
            enable_placebo(adapter.stccl, cfg.seed)
        return adapter, gen

    base_dir, build_s = eat_base(base, data, cache, kappa, args.eat_base_steps, adapter_for, log,
                                 loudness_normalised=norm)
    base = replace(base, reference_model=str(base_dir), stccl_warmup_steps=0, stccl_ramp_steps=0,
                   learning_rate=args.eat_lr)
    return base, data, lambda cfg: adapter_for(cfg)[0], list(EAT_EMOTION_NAMES), eat_collate, build_s, data_dir


def one_run(backend, args, kappa, cache, run_dir, metric, probe, arm, seed, world=None) -> dict:
    """One fine-tuning run of the grid (an arm, a κ, a seed), scored on the deployment clips.
    ``world``: :func:`setup`'s tuple and the clips, when the caller has them (else built here,
    from the cache: a worker process of ``--jobs``)."""
    if world is None:
        world = _world(backend, args, kappa, cache, metric, lambda s: None)
    (base, data, make, names, collate, _, _), clips = world
    steps = args.dice_steps if backend == "dice" else args.eat_steps
    subset = [int(i) for i in base.frame_subset] if getattr(base, "frame_subset", None) else None
    t0 = time.perf_counter()
    cfg = replace(base, output_dir=str(run_dir / backend / f"k{kappa:g}_{arm}_s{seed}"), seed=seed,
                  max_train_steps=steps, checkpointing_steps=0, validation_steps=0, validate_at_start=False,
                  resume_from_checkpoint=None, **arm_overrides(backend, arm, args))
    torch.manual_seed(seed)
    adapter = make(cfg)
    train(adapter, data, cfg, collate_fn=None if backend == "dice" else collate)
    adapter.eval()
    r = measure_by_emotion(adapter.render_validation, clips, probe, metric, names, base.resolution, collate,
                           stccl_window=base.num_frames, stccl_subset=subset)
    r.update(seed=seed, train_s=time.perf_counter() - t0)
    return r


def _world(backend, args, kappa, cache, metric, log):
    """:func:`setup` and the deployment clips of one κ."""
    got = setup(backend, args, kappa, cache, metric, log)
    frames = args.dice_frames if backend == "dice" else args.eat_frames
    clips = deployment_clips(args.sentences, frames, got[0].resolution, identities=training_identities(got[6]),
                             loudness_normalised=args.loudness == "normalised")
    return got, clips


def benchmark_metric(args, cache: Path):
    """The benchmark's STCCL metric (``args.metric_steps`` steps, cached): ``(metric, info)``."""
    return ensure_metric(None, cache / f"metric_{args.metric_steps}steps", backbone=[1, 1, 1, 1], input_size=64,
                         steps=args.metric_steps, seed=0, progress=False)


def benchmark_probe(args, cache: Path, backend: str):
    """The frozen probe at the backend's resolution (cached): ``(probe, info)``."""
    return ensure_probe(cache, 32 if backend == "dice" else 64, args.probe_frames, args.probe_steps,
                        open_max=PROBE_OPEN_MAX)


def _worker_run(job):
    """A ``--jobs`` worker: one run, with the metric and probe loaded from the cache (1 thread)."""
    backend, args, kappa, cache, run_dir, arm, seed = job
    torch.set_num_threads(1)
    metric, probe = benchmark_metric(args, cache)[0], benchmark_probe(args, cache, backend)[0]
    return one_run(backend, args, kappa, cache, run_dir, metric, probe, arm, seed)


def run_backend(backend, args, cache, run_dir, metric, probe, log) -> dict:
    out = {"kappas": {}, "build_s": {}}
    worlds = {}
    for kappa in args.kappas:  # data and base models first (cached), one κ after another
        worlds[kappa] = _world(backend, args, kappa, cache, metric, log)
        out["build_s"][f"{kappa:g}"] = worlds[kappa][0][5]
        if kappa == args.kappas[0]:
            out["metric_sync"] = metric_sync_check(worlds[kappa][1], metric)
    jobs = [(kappa, arm, seed) for kappa in args.kappas for arm in ARMS[backend] for seed in args.seeds]
    done = {}

    def record(job, r):
        done[job] = r
        kappa, arm, seed = job
        log(f"{backend} κ={kappa:g} {arm} seed {seed}: " + ", ".join(f"{m}={r[m]:.3f}" for m in MEASURES))

    if args.jobs > 1:  # independent runs in worker processes; each result is the sequential one's
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from benchmarks import bench_kappa as importable  # workers unpickle the function by this name

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(importable._worker_run, (backend, args, k, cache, run_dir, a, s)): (k, a, s)
                       for k, a, s in jobs}
            for f, job in futures.items():
                record(job, f.result())
    else:
        for job in jobs:
            kappa, arm, seed = job
            record(job, one_run(backend, args, kappa, cache, run_dir, metric, probe, arm, seed, worlds[kappa]))
    for kappa, arm, seed in jobs:
        out["kappas"].setdefault(f"{kappa:g}", {}).setdefault(arm, []).append(done[(kappa, arm, seed)])
    out["dose"] = verdict({k: {"runs": v["without"]} for k, v in out["kappas"].items()})
    out["goal"] = goal(out["kappas"], backend)
    return out


def _ms(runs, m):
    vals = [r[m] for r in runs if r[m] is not None and np.isfinite(r[m])]
    return (float(np.mean(vals)), float(np.std(vals))) if vals else (float("nan"), float("nan"))


def hacking(arms: dict, arm: str) -> bool:
    """The reward-hacking flag at one κ: ``arm``'s STCCL score is lower than the without arm's while
    its neu_mae (the independent instrument: the probe's mouth against the model's own neutral
    rendering) is higher, each beyond the larger seed std of the two arms (and 1e-3, so that float
    noise between equal arms is no flag)."""
    s_a, s_w = _ms(arms[arm], "stccl"), _ms(arms["without"], "stccl")
    n_a, n_w = _ms(arms[arm], "neu_mae"), _ms(arms["without"], "neu_mae")
    return bool((s_a[0] < s_w[0] - max(s_a[1], s_w[1], 1e-3)) and (n_a[0] > n_w[0] + max(n_a[1], n_w[1], 1e-3)))


def goal(per_kappa: dict, backend: str) -> dict:
    """The pre-registered goal, per STCCL arm, at the largest κ against the smallest; the
    reward-hacking flag is checked at every κ (:func:`hacking`)."""
    ks = sorted(per_kappa, key=float)
    lo, hi = per_kappa[ks[0]], per_kappa[ks[-1]]
    w_lo, w_hi = _ms(lo["without"], "gt_mae"), _ms(hi["without"], "gt_mae")
    extra = w_hi[0] - w_lo[0]
    res = {"extra_error": extra, "kappa_lo": float(ks[0]), "kappa_hi": float(ks[-1])}
    placebo = _ms(hi["placebo"], "gt_mae")
    acc_w = _ms(hi["without"], "emotion_acc")[0]
    for arm in ARMS[backend]:
        if arm in ("without", "placebo"):
            continue
        a = _ms(hi[arm], "gt_mae")
        removed = (w_hi[0] - a[0]) / extra if extra > 0 else float("nan")
        hacked = [float(k) for k in ks if hacking(per_kappa[k], arm)]
        res[arm] = {"removed_fraction": removed, "beyond_spread": bool(w_hi[0] - a[0] > max(a[1], w_hi[1])),
                    "ahead_of_placebo": bool(a[0] < placebo[0] - max(a[1], placebo[1])),
                    "emotion_acc_delta": _ms(hi[arm], "emotion_acc")[0] - acc_w,
                    "reward_hacking_flag": bool(hacked), "reward_hacking_kappas": hacked}
        res[arm]["met"] = bool(removed >= 0.5 and res[arm]["beyond_spread"] and res[arm]["ahead_of_placebo"]
                               and abs(res[arm]["emotion_acc_delta"]) <= 0.05)
    return res


def markdown(results: dict) -> str:
    lines = ["| backend | κ | arm | " + " | ".join(MEASURES) + " |", "|" + "---|" * (3 + len(MEASURES))]
    for backend, res in results.items():
        for k, arms in res["kappas"].items():
            for arm, runs in arms.items():
                for r in runs:
                    lines.append(f"| {backend} | {k} | {arm} s{r['seed']} | "
                                 + " | ".join(f"{r[m]:.3f}" for m in MEASURES) + " |")
                lines.append(f"| {backend} | {k} | **{arm} (mean ± std)** | "
                             + " | ".join("{:.3f} ± {:.3f}".format(*_ms(runs, m)) for m in MEASURES) + " |")
    lines += ["", "Dose check (without arm, gt_mae by κ) and goal at the largest κ:", ""]
    for backend, res in results.items():
        d = res["dose"]
        lines.append(f"- {backend}: " + ", ".join(f"κ={k:g}: {m:.3f} ± {s:.3f}" for k, m, s in
                                                   zip(d["kappas"], d["gt_mae_mean"], d["gt_mae_std"]))
                     + f"; growth {d['growth']:+.3f} vs spread {d['spread']:.3f}: "
                     + verdict_line(d))
        for arm, g in res["goal"].items():
            if isinstance(g, dict):
                lines.append(f"  - {arm}: removes {g['removed_fraction']:.2f} of the extra error "
                             f"({res['goal']['extra_error']:+.3f}); beyond spread {g['beyond_spread']}, ahead of placebo "
                             f"{g['ahead_of_placebo']}, emotion acc {g['emotion_acc_delta']:+.3f} vs without; "
                             f"reward-hacking flag {g['reward_hacking_flag']}"
                             + (f" (κ = {', '.join(f'{k:g}' for k in g['reward_hacking_kappas'])})"
                                if g["reward_hacking_kappas"] else "") + f"; goal met {g['met']}")
    lines += ["", "STCCL metric sync check on the ground-truth target (lower = closer): "
              + " | ".join(SYNC_CHECKS), ""]
    for backend, res in results.items():
        if "metric_sync" in res:
            lines.append(f"- {backend}: " + ", ".join(f"{k} {v:.3f}" for k, v in res["metric_sync"].items()))
    return "\n".join(lines)


def draw_figure(results: dict, path: Path) -> None:
    """Per backend: gt_mae against κ per arm (mean ± std over seeds), and the mouth curves of
    deployment clip 0 at the largest κ (ground truth, anchor, each arm's target, seed 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(6.5 * len(results), 8.5), squeeze=False)
    for j, (backend, res) in enumerate(results.items()):
        ks = sorted(res["kappas"], key=float)
        ax = axes[0, j]
        for n, arm in enumerate(ARMS[backend]):
            ms = [_ms(res["kappas"][k][arm], "gt_mae") for k in ks]
            x = np.array([float(k) for k in ks]) + (n - 1.5) * 0.012
            ax.errorbar(x, [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", capsize=3, label=arm)
        ax.set(title=f"{backend}: mouth error vs ground truth (deployment case)", xlabel="coupling κ",
               ylabel="gt_mae (probe opening), mean ± std over seeds")
        ax.legend(fontsize=8)
        ax = axes[1, j]
        hi = res["kappas"][ks[-1]]
        first = hi["without"][0]["curves"]
        ax.plot(first["gt"], "k-", lw=2, label="ground truth (emotional face, neutral-audio mouth)")
        ax.plot(first["anchor"], "k:", label="anchor (without, seed 0)")
        for arm in ARMS[backend]:
            ax.plot(hi[arm][0]["curves"]["target"], "--" if arm == "placebo" else "-", label=f"{arm} target")
        ax.set(title=f"{backend}: clip 0 ({first['emotion']}) at κ={ks[-1]}", xlabel="frame", ylabel="mouth opening")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: κ {0, 1}, seed 0, tiny models, 1 sentence")
    ap.add_argument("--backends", nargs="+", default=["dice", "eat"], choices=["dice", "eat"])
    ap.add_argument("--kappas", nargs="+", type=float, default=None)
    ap.add_argument("--seeds", nargs="+", type=int, default=None)
    ap.add_argument("--dice-weight", type=float, default=12.0, help="the DICE demo config's weight (align form)")
    ap.add_argument("--eat-weight", type=float, default=0.7, help="the EAT demo config's weight (align form)")
    ap.add_argument("--dice-vae-steps", type=int, default=None, help="DICE base VAE fit steps (full: 150)")
    ap.add_argument("--dice-base-steps", type=int, default=None, help="DICE base EDM steps (full: 600)")
    ap.add_argument("--eat-base-steps", type=int, default=None, help="EAT base steps (full: 1000)")
    ap.add_argument("--placebo-mode", choices=["single_step", "rollout"], default="single_step")
    ap.add_argument("--rollout-every", type=int, default=None)
    ap.add_argument("--rollout-k", type=int, default=5)
    ap.add_argument("--loudness", choices=["normalised", "raw"], default="normalised",
                    help="the world's audio (second amendment): every clip at one RMS (normalised) or each emotion "
                         "at its own loudness (raw, the world of the first full run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=1,
                    help="fine-tuning runs at once, in worker processes of 1 thread each (the bases are built first, "
                         "in this process); every run's result is the one it has alone")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench_kappa"))
    args = ap.parse_args(argv)
    q = args.quick
    args.kappas = args.kappas or ([0.0, 1.0] if q else [0.0, 0.5, 1.0])
    if len(set(args.kappas)) < 2 or any(k < 0 or not math.isfinite(k) for k in args.kappas):
        ap.error(f"expected at least two distinct kappas >= 0, got {args.kappas}")
    args.kappas = sorted(args.kappas)
    if args.jobs < 1:
        ap.error(f"expected --jobs >= 1, got {args.jobs}")
    args.seeds = args.seeds or ([0] if q else [0, 1, 2])
    args.rollout_every = args.rollout_every or (2 if q else 10)
    args.dice_sampler_steps = 4 if q else 10  # the demo config's 10; quick: fewer (render + rollout cost)
    if q and args.rollout_k > args.dice_sampler_steps:
        args.rollout_k = 2
    args.dice_steps, args.eat_steps = (4, 6) if q else (120, 60)
    args.dice_lr, args.eat_lr = 1e-2, 2e-3
    vae, edm_steps, eat = (30, 30, 30) if q else (150, 600, 1000)  # the amendment's cut (was 300, 1500, 3000)
    args.dice_vae_steps = args.dice_vae_steps or vae
    args.dice_base_steps = args.dice_base_steps or edm_steps
    args.eat_base_steps = args.eat_base_steps or eat
    args.sentences = 1 if q else 3
    args.dice_frames, args.eat_frames = (8, 10) if q else (16, 25)
    args.probe_frames, args.probe_steps = (300, 60) if q else (2000, 400)
    args.metric_steps = 12 if q else 200
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = Path(args.out)
    cache = out / "cache" / ("quick" if args.quick else "full")
    run_dir = new_run_dir(out)
    log = lambda s: print(f"[{time.perf_counter() - started:6.0f} s] {s}", flush=True)  # noqa: E731
    metric, minfo = benchmark_metric(args, cache)
    quality = metric_quality(metric)
    log(f"metric ({args.metric_steps} steps): held-out gap {quality['gap']:.3f}")
    results, probes = {}, {}
    for backend in args.backends:
        probe, probes[backend] = benchmark_probe(args, cache, backend)
        results[backend] = run_backend(backend, args, cache, run_dir, metric, probe, log)
    table = markdown(results)
    wall = time.perf_counter() - started
    payload = _clean({"args": vars(args), "metric": {"steps": args.metric_steps, **quality, **minfo}, "probes": probes,
                      "results": results, "wall_time_s": wall, "torch_threads": args.threads,
                      "null_means": "a measure that could not be computed (e.g. a mouth curve that does not move)"})
    draw_figure(results, run_dir / "kappa.png")
    write_report(run_dir, "results", payload, table, wall, also=("kappa.png",))
    return {"run_dir": str(run_dir), **payload}


if __name__ == "__main__":
    main()
