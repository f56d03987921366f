"""The three-minute demo: does STCCL keep the mouth on the speech when a model has learnt to drift?

    python demo.py [--output_dir outputs/stccl_demo] [--train_base] [--steps 60] [--threads 2]

The world is the benchmark's κ world at κ = 1 (docs/kappa_world.md), with its second amendment: in
the training clips, emotional speech is faster or slower and the mouth opens wider or less with the
emotion's loudness, while every recording reaches the model at one level (loudness-normalised audio).
Only the emotion label tells the model how wide to open: it is a shortcut for articulation. The test is the deployment case: the training faces say
a sentence they never said, with *neutral* speech, asked for an emotion; the ground truth is the
emotional face with the mouth of that neutral speech (the renderer draws it exactly).

The demo fine-tunes the shipped tiny EAT-style base model (trained on the κ = 1 clips) twice from
the same start, seed and data: without STCCL and with it (weight 0.7, the `align` form, against the
frozen base model's neutral rendering, the anchor). It renders the test clips with both, measures
the mouth with the frozen probe, and writes to a new ``<output_dir>/run-<time>/``:

* ``grid.png``: frames of one test clip; rows ground truth, anchor, without STCCL, with STCCL;
* ``mouth.png``: the mouth-opening curves of every test clip (ground truth, anchor, without, with);
* ``results.md`` / ``results.json`` (strict JSON): the measures per arm, and the run's settings.

Shipped assets (``stccl_diffusers/assets/demo/``, about 13 MB, safetensors): the base model
(``eat_base_k1n``: 1000 reconstruction steps on the κ = 1 clips), the STCCL metric (200 metric-learning steps, stored
in fp16) and the mouth/emotion probe. ``--train_base`` rebuilds all three into the run folder first
(about 10 minutes on 2 cores) and uses them; ``python demo.py --build_assets`` rebuilds the shipped
files themselves (the only command that writes into the package).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

ASSETS = ROOT / "stccl_diffusers" / "assets" / "demo"
KAPPA = 1.0
#: The κ world of bench_kappa.py's second amendment: every clip's audio at one RMS, so that only the
#: emotion label predicts the mouth's gain (docs/kappa_world.md).
LOUDNESS_NORMALISED = True
BASE_NAME = "eat_base_k1n"
BASE_STEPS, METRIC_STEPS, PROBE_FRAMES, PROBE_STEPS = 1000, 200, 2000, 400
ARMS = ("without", "with")


def base_config(out: Path, steps: int, weight: float, seed: int):
    """The EAT demo config (configs/eat_stccl_demo.yaml) for one fine-tuning run of the demo."""
    from stccl_diffusers.adapters.eat import EATSTCCLConfig
    from stccl_diffusers.training import parse_config

    cfg = parse_config(EATSTCCLConfig, ["--report_to", "none"], default_config=ROOT / "configs" / "eat_stccl_demo.yaml")
    return replace(cfg, output_dir=str(out), data_dir=str(out / "eat_data"), seed=seed, max_train_steps=steps,
                   stccl_weight=weight, stccl_warmup_steps=0, stccl_ramp_steps=0, checkpointing_steps=0,
                   validation_steps=0, validate_at_start=False, resume_from_checkpoint=None, grad_balance_every=0)


def make_adapter(cfg, metric, base_dir: Path | None, audio_dim: int):
    from stccl_diffusers.adapters.eat import EATAdapter
    from stccl_diffusers.adapters.eat.build import build_backend

    cfg = replace(cfg, reference_model=str(base_dir) if base_dir else None)
    gen, size = build_backend(cfg, audio_dim)
    adapter = EATAdapter(gen, metric, weight=cfg.stccl_weight, warmup_steps=0, ramp_steps=0, crop_size=cfg.crop_size,
                         image_size=size, num_frames=cfg.num_frames)
    return adapter, gen


# ----------------------------------------------------------------------------- assets
def build_assets(dest: Path, data, cfg, log) -> None:
    """Train the base model, the metric and the probe; write them to `dest` as safetensors."""
    from safetensors.torch import save_file

    from stccl_diffusers.training.demo import pretrain_metric_quick
    from stccl_diffusers.eval.effect import ensure_probe
    from benchmarks.world import PROBE_OPEN_MAX
    from stccl_diffusers.utils.jsonio import write_json

    dest.mkdir(parents=True, exist_ok=True)
    scratch = dest / "_build"
    t0 = time.perf_counter()
    log(f"metric: {METRIC_STEPS} metric-learning steps")
    metric, info = pretrain_metric_quick(scratch / "metric", backbone=[1, 1, 1, 1], input_size=64, steps=METRIC_STEPS,
                                         seed=0, progress=True)
    (dest / "metric").mkdir(exist_ok=True)
    write_json(dest / "metric" / "config.json", dict(metric.config), indent=1, explain_nulls=False)
    save_file({k: v.half().contiguous() for k, v in metric.state_dict().items()},
              str(dest / "metric" / "metric_fp16.safetensors"))
    log(f"base model: {BASE_STEPS} reconstruction steps on the κ = {KAPPA:g} clips ({time.perf_counter() - t0:.0f} s so far)")
    base_s = build_base(dest, data, cfg, metric, log)
    log("probe: mouth opening and emotion from one frame")
    probe, pinfo = ensure_probe(scratch, 64, PROBE_FRAMES, PROBE_STEPS, open_max=PROBE_OPEN_MAX)
    save_file({k: v.contiguous() for k, v in probe.state_dict().items()}, str(dest / "probe.safetensors"))
    write_json(dest / "probe.json", pinfo, indent=1)
    write_json(dest / "BUILD.json", {
        "command": "python demo.py --build_assets", "kappa": KAPPA, "loudness_normalised": LOUDNESS_NORMALISED,
        "base_steps": BASE_STEPS, "base_build_s": round(base_s, 1),
        "metric_steps": METRIC_STEPS, "metric_loss_first": info.get("metric_loss_first"),
        "metric_loss_last": info.get("metric_loss_last"), "probe": pinfo,
        "build_s": round(time.perf_counter() - t0, 1)}, indent=1)
    shutil.rmtree(scratch, ignore_errors=True)  # our own scratch folder, created above


def build_base(dest: Path, data, cfg, metric, log) -> float:
    """The base model only (`BASE_NAME` in `dest`): the benchmarks' base builder (weight 0: the metric
    is never called). Returns its build seconds."""
    from stccl_diffusers.adapters.eat import eat_collate
    from benchmarks.world import eat_base

    scratch = dest / "_build"
    audio_dim = eat_collate([data[0]])["audio"].shape[-1]
    base_dir, seconds = eat_base(cfg, data, scratch, KAPPA, BASE_STEPS, lambda c: make_adapter(c, metric, None, audio_dim),
                                 log, loudness_normalised=LOUDNESS_NORMALISED)
    shutil.copytree(base_dir, dest / BASE_NAME, dirs_exist_ok=True)
    return seconds


def load_assets(src: Path):
    """(base model folder, metric, probe) from `src` (the shipped folder or a --train_base build)."""
    from safetensors.torch import load_file

    from stccl_diffusers.metric import STCCLMetric
    from stccl_diffusers.eval.effect import Probe

    missing = [p for p in (f"{BASE_NAME}/config.json", "metric/config.json", "metric/metric_fp16.safetensors",
                           "probe.safetensors") if not (src / p).is_file()]
    if missing:
        raise FileNotFoundError(f"expected the demo assets in {src} (missing: {', '.join(missing)}); "
                                "rebuild them with `python demo.py --build_assets` or run with --train_base")
    config = {k: v for k, v in json.loads((src / "metric" / "config.json").read_text()).items() if not k.startswith("_")}
    metric = STCCLMetric(**config)
    metric.load_state_dict({k: v.float() for k, v in load_file(str(src / "metric" / "metric_fp16.safetensors")).items()})
    metric.eval().requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        probe = Probe()
    probe.load_state_dict(load_file(str(src / "probe.safetensors")))
    return src / BASE_NAME, metric, probe.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- pictures
def draw_grid(path: Path, clip: dict, renders: dict, frames: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = clip["gt_frames"].shape[0]
    idx = np.linspace(0, T - 1, min(frames, T)).round().astype(int)
    to_img = lambda x: ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()  # noqa: E731
    rows = [("ground truth\n(emotional face,\nneutral-speech mouth)", clip["gt_frames"]),
            ("anchor\n(frozen base,\nneutral emotion)", to_img(renders["without"]["anchor"])),
            ("without STCCL", to_img(renders["without"]["target"])),
            ("with STCCL", to_img(renders["with"]["target"]))]
    fig, axes = plt.subplots(len(rows), len(idx), figsize=(1.3 * len(idx) + 1.6, 1.4 * len(rows)))
    for r, (label, img) in enumerate(rows):
        for c, t in enumerate(idx):
            ax = axes[r, c]
            ax.imshow(img[t])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"frame {t}", fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    world = f"κ = {KAPPA:g} world" + (", loudness-normalised audio" if LOUDNESS_NORMALISED else "")
    fig.suptitle(f"asked for '{clip['emotion']}', said with neutral speech ({world})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_curves(path: Path, rows: dict, clips: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(clips)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.0), squeeze=False)
    for k, c in enumerate(clips):
        ax = axes[0, k]
        w, s = rows["without"][k], rows["with"][k]
        ax.plot(w["curve_gt"], "k-", lw=2, label="ground truth")
        ax.plot(w["curve_anchor"], "k:", label="anchor")
        ax.plot(w["curve_target"], "C0-", label=f"without (MAE {w['gt_mae']:.3f})")
        ax.plot(s["curve_target"], "C1-", label=f"with (MAE {s['gt_mae']:.3f})")
        ax.set(title=f"asked for {c['emotion']}", xlabel="frame", ylabel="mouth opening" if k == 0 else None)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output_dir", default="outputs/stccl_demo", help="runs go to <output_dir>/run-<time>/")
    ap.add_argument("--train_base", action="store_true", help="rebuild the base model, metric and probe first (~10 min)")
    ap.add_argument("--build_assets", action="store_true", help="rebuild the shipped assets in stccl_diffusers/assets/demo")
    ap.add_argument("--steps", type=int, default=60, help="fine-tuning steps per arm")
    ap.add_argument("--weight", type=float, default=0.7, help="STCCL weight of the with arm (the EAT demo config's)")
    ap.add_argument("--sentences", type=int, default=1, help="test sentences (each asked for 4 emotions)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.sentences < 1 or args.weight <= 0:
        ap.error(f"expected --steps >= 1, --sentences >= 1, --weight > 0; got {args.steps}, {args.sentences}, {args.weight}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from benchmarks.common import new_run_dir
    from benchmarks.world import measure_by_emotion, training_identities, world_data
    from stccl_diffusers.adapters.eat import EAT_EMOTION_NAMES, eat_collate
    from stccl_diffusers.eval.effect import deployment_clips
    from stccl_diffusers.training.loop import train
    from stccl_diffusers.utils.jsonio import write_json

    started = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - started:5.0f} s] {s}", flush=True)  # noqa: E731
    out = Path(args.output_dir)
    cache = out / "cache"
    run_dir = new_run_dir(out) if not args.build_assets else None
    cfg = base_config(run_dir or cache, args.steps, args.weight, args.seed)
    log(f"training clips of the κ = {KAPPA:g} world (written once into {cache})")
    data, data_dir = world_data(cfg, KAPPA, cache, EAT_EMOTION_NAMES, loudness_normalised=LOUDNESS_NORMALISED)
    if args.build_assets:
        build_assets(ASSETS, data, cfg, log)
        log(f"assets written to {ASSETS}")
        return {}
    assets = ASSETS
    if args.train_base:
        assets = run_dir / "assets"
        build_assets(assets, data, cfg, log)
    base_dir, metric, probe = load_assets(assets)
    audio_dim = eat_collate([data[0]])["audio"].shape[-1]
    clips = deployment_clips(args.sentences, 25, cfg.resolution, identities=training_identities(data_dir),
                             loudness_normalised=LOUDNESS_NORMALISED)
    names = list(EAT_EMOTION_NAMES)
    rows, renders, summary = {}, {}, {}
    for arm in ARMS:
        t0 = time.perf_counter()
        acfg = replace(cfg, output_dir=str(run_dir / arm), stccl_weight=args.weight if arm == "with" else 0.0)
        log(f"fine-tuning {arm} STCCL ({args.steps} steps from the shipped base)")
        torch.manual_seed(args.seed)
        adapter, _ = make_adapter(acfg, metric, base_dir, audio_dim)
        train(adapter, data, acfg, collate_fn=eat_collate)
        adapter.eval()
        rows[arm], first = [], {}

        def render(batch, generator, first=first, adapter=adapter):
            out = adapter.render_validation(batch, generator)
            if not first:  # the grid shows clip 0
                first.update(target=out["target"][0].float(), anchor=out["anchor"][0].float())
            return out

        agg = measure_by_emotion(render, clips, probe, metric, names, cfg.resolution, eat_collate,
                                 stccl_window=cfg.num_frames, rows_out=rows[arm])
        renders[arm] = first
        summary[arm] = {m: agg[m] for m in ("gt_mae", "gt_corr", "gt_amp", "neu_mae", "emotion_acc", "stccl")}
        summary[arm]["seconds"] = round(time.perf_counter() - t0, 1)
    draw_grid(run_dir / "grid.png", clips[0], renders)
    draw_curves(run_dir / "mouth.png", rows, clips)
    head = ("| arm | mouth error vs ground truth (gt_mae, lower is better) | mouth corr. vs ground truth | "
            "amplitude vs ground truth (1 = right) | mouth error vs anchor | emotion accuracy | STCCL score | seconds |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        s = summary[arm]
        lines.append(f"| {arm} STCCL | {s['gt_mae']:.3f} | {s['gt_corr']:.3f} | {s['gt_amp']:.3f} | {s['neu_mae']:.3f} | "
                     f"{s['emotion_acc']:.3f} | {s['stccl']:.3f} | {s['seconds']:.0f} |")
    table = "\n".join(lines)
    wall = time.perf_counter() - started
    (run_dir / "results.md").write_text(table + "\n")
    write_json(run_dir / "results.json", {
        "summary": summary, "per_clip": {a: [{k: v for k, v in r.items() if not k.startswith("curve")} for r in rows[a]]
                                         for a in ARMS},
        "args": vars(args), "assets": str(assets), "kappa": KAPPA,
        "loudness_normalised": LOUDNESS_NORMALISED, "wall_time_s": round(wall, 1)})
    print("\n" + table)
    print(f"\nwall time {wall:.0f} s. Pictures: {run_dir / 'grid.png'} and {run_dir / 'mouth.png'}; "
          f"numbers: {run_dir / 'results.json'}")
    return {"run_dir": str(run_dir), "summary": summary}


if __name__ == "__main__":
    main()
