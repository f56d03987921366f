"""How hard does STCCL pull against the task loss? The gradient balance of both demos, at their defaults.

Runs each training script on its embedded demo config (``train_dice_stccl.py``: ReferenceDICE,
LoRA, 40 steps; ``train_eat_stccl.py``: the EAT-style reference model, 3000 reconstruction steps,
a 20-step ramp, 100 steps at the full weight), changed only so that the balance is measured every
step (``--grad_balance_every 1``) and no periodic validation or checkpoint is written. It then
reads ``train_log.jsonl`` and prints, over the steps where the STCCL term was on at its full weight:

* ``grad_ratio``: ||grad(stccl_weight * STCCL)|| / ||grad(task loss)|| on the trainable
  parameters (median and quartiles), and ``grad_cos``, the cosine between the two gradients;
* how often gradient clipping was active (``grad_clipped``) on those steps;
* the ``stccl_weight`` that would put the median ratio at ``--target_ratio`` (the ratio is
  linear in the weight: ``w * target / ratio``).

    python benchmarks/grad_balance.py                    # both backends, CPU, DICE ~minutes, EAT longer
    python benchmarks/grad_balance.py --backend eat --eat_stccl_weight 0.1

Outputs go to ``outputs/grad_balance/{dice,eat}/`` (the DICE base model and the data are reused on a
rerun); a summary is written to ``outputs/grad_balance/summary.json``.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from stccl_diffusers.utils.jsonio import write_json  # noqa: E402


def _quartiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        v = values[0] if values else float("nan")
        return {"median": v, "q1": v, "q3": v}
    q = statistics.quantiles(values, n=4)
    return {"median": statistics.median(values), "q1": q[0], "q3": q[2]}


def summarise(step_log: list[dict], weight: float, target_ratio: float) -> dict:
    """Balance over the steps that measured it with the STCCL weight at `weight` (after any ramp)."""
    full = [r for r in step_log if r.get("stccl_weight", weight) == weight]
    measured = [r for r in full if "grad_ratio" in r]
    ratios = [r["grad_ratio"] for r in measured]
    out = {
        "weight": weight, "steps": len(full), "measured_steps": len(measured),
        "grad_ratio": _quartiles(ratios), "grad_cos": _quartiles([r["grad_cos"] for r in measured]),
        "grad_norm_stccl_median": statistics.median([r["grad_norm/stccl"] for r in measured]) if measured else None,
        "grad_norm_task_median": statistics.median([r["grad_norm/task"] for r in measured]) if measured else None,
        "clipped_fraction": (sum(r.get("grad_clipped", 0.0) for r in full) / len(full)) if full else None,
        "skipped_neutral_windows": sum(r.get("stccl_skipped_neutral", 0.0) for r in step_log),
    }
    med = out["grad_ratio"]["median"]
    out["weight_for_target"] = weight * target_ratio / med if ratios and med > 0 else None
    return out


def run(backend: str, steps: int | None, weight: float | None, out_root: Path, extra: list[str]) -> dict:
    script = {"dice": "train_dice_stccl.py", "eat": "train_eat_stccl.py"}[backend]
    out = out_root / backend
    argv = ["--output_dir", str(out), "--grad_balance_every", "1", "--validation_steps", "0",
            "--validate_at_start", "false", "--checkpointing_steps", "0", "--report_to", "none",
            "--overwrite_output_dir"]
    if steps is not None:
        argv += ["--max_train_steps", str(steps)]
    if weight is not None:
        argv += ["--stccl_weight", str(weight)]
    # The script runs as a user runs it (a script is not imported); its config is read back the same way.
    subprocess.run([sys.executable, str(REPO / script), *argv, *extra], check=True)
    from stccl_diffusers.adapters.dice import DiceTrainingConfig
    from stccl_diffusers.adapters.eat.config import EATSTCCLConfig
    from stccl_diffusers.training.config import parse_config

    cfg = parse_config(DiceTrainingConfig if backend == "dice" else EATSTCCLConfig, argv + list(extra),
                       default_config=REPO / "configs" / f"{backend}_stccl_demo.yaml")
    from stccl_diffusers.training.loop import read_jsonl

    return {"command": f"python {script} " + " ".join(argv + list(extra)),
            **summarise(read_jsonl(out / "train_log.jsonl"), cfg.stccl_weight, 0.0)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["dice", "eat", "both"], default="both")
    p.add_argument("--dice_steps", type=int, default=None, help="default: the demo's max_train_steps (40)")
    p.add_argument("--eat_steps", type=int, default=None, help="default: the demo's max_train_steps (3120)")
    p.add_argument("--dice_stccl_weight", type=float, default=None, help="default: the demo config's")
    p.add_argument("--eat_stccl_weight", type=float, default=None, help="default: the demo config's")
    p.add_argument("--target_ratio", type=float, default=0.25,
                   help="grad_ratio to suggest a weight for (docs: 0.1-0.5 of the task gradient)")
    p.add_argument("--output_dir", default=str(REPO / "outputs" / "grad_balance"))
    p.add_argument("--dice_args", default="", help="more train_dice_stccl.py flags, one string (e.g. "
                   "'--pretrained_model_name_or_path DIR --metric_path DIR' to reuse a base model and metric)")
    p.add_argument("--eat_args", default="", help="more train_eat_stccl.py flags, one string")
    args = p.parse_args(argv)
    out_root = Path(args.output_dir)
    results = {}
    for backend in (["dice", "eat"] if args.backend == "both" else [args.backend]):
        steps = args.dice_steps if backend == "dice" else args.eat_steps
        weight = args.dice_stccl_weight if backend == "dice" else args.eat_stccl_weight
        res = run(backend, steps, weight, out_root, shlex.split(args.dice_args if backend == "dice" else args.eat_args))
        med = res["grad_ratio"]["median"]
        res["weight_for_target"] = res["weight"] * args.target_ratio / med if med and med > 0 else None
        results[backend] = res
    out_root.mkdir(parents=True, exist_ok=True)
    write_json(out_root / "summary.json", results, indent=1)
    for backend, r in results.items():
        gr, gc = r["grad_ratio"], r["grad_cos"]
        print(f"{backend}: stccl_weight {r['weight']:g}, {r['measured_steps']} of {r['steps']} full-weight steps "
              f"measured; grad_ratio median {gr['median']:.3g} (q1 {gr['q1']:.3g}, q3 {gr['q3']:.3g}); "
              f"grad_cos median {gc['median']:.3g} (q1 {gc['q1']:.3g}, q3 {gc['q3']:.3g}); clipped on "
              f"{100 * (r['clipped_fraction'] or 0):.0f}% of those steps; weight for grad_ratio {args.target_ratio:g}: "
              f"{r['weight_for_target']:.3g}" if r["weight_for_target"] else f"{backend}: no measurement")
        print(f"  command: {r['command']}")
    return results


if __name__ == "__main__":
    main()
