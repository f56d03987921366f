"""The three worked loops of docs/callback.md run as tiny scripts (tests/loops/), with and without STCCL.

Each script marks the lines that attach the callback with ``# STCCL``; the script without those lines
is the user's loop as it was. Checked: at most 5 such lines, a positive reward on steps with a gated
clip and exactly 0 on the others, and the script's own noise / timestep / sigma stream unchanged.
"""

import types
from pathlib import Path

import pytest
import torch

from _stccl_metric_for_tests import single_torch_thread  # noqa: F401 (autouse fixture)
from diffusers import EulerDiscreteScheduler
from stccl_diffusers.diffusion import gate_threshold

LOOPS = Path(__file__).resolve().parent / "loops"
STEPS = 6


def _load(name: str, strip_stccl: bool) -> types.ModuleType:
    src = (LOOPS / f"{name}.py").read_text(encoding="utf-8")
    if strip_stccl:
        src = "\n".join(l for l in src.splitlines() if not l.rstrip().endswith("# STCCL"))
    mod = types.ModuleType(name)
    exec(compile(src, str(LOOPS / f"{name}.py"), "exec"), mod.__dict__)
    return mod


def _svd_sigma_gate() -> float:
    sch = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                 prediction_type="v_prediction", timestep_type="continuous")
    return gate_threshold(sch, 500)[1]


def _gated(name, rec) -> bool:
    if name == "loop_svd_edm":
        return bool((rec["sigmas"].flatten() < _svd_sigma_gate()).any())
    return bool((rec["timesteps"] < 500).any())


@pytest.mark.parametrize("name", ["loop_sd_lora", "loop_svd_edm", "loop_unet3d"])
def test_worked_loop_attaches_in_at_most_5_lines_scores_gated_steps_and_keeps_the_rng_stream(name):
    src = (LOOPS / f"{name}.py").read_text(encoding="utf-8")
    added = [l for l in src.splitlines() if l.rstrip().endswith("# STCCL")]
    assert 1 <= len(added) <= 5

    with_stccl = _load(name, strip_stccl=False).main(steps=STEPS)
    without = _load(name, strip_stccl=True).main(steps=STEPS)
    for a, b in zip(with_stccl, without):  # STCCL never draws from the script's (global) RNG
        assert b["reward"] is None
        for key in ("noise", "timesteps", "sigmas"):
            if key in a:
                assert torch.equal(a[key], b[key]), key

    gated = [_gated(name, r) for r in with_stccl]
    assert any(gated) and not all(gated), "the seed should give both gated and ungated steps"
    for g, r in zip(gated, with_stccl):
        reward = float(r["reward"])
        if g:
            assert reward > 0 and torch.isfinite(r["reward"])
        else:
            assert reward == 0.0
