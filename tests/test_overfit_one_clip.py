"""benchmarks/overfit_one_clip.py, tiny: STCCL alone pulls the target toward the frozen anchor."""

import json

from conftest import load_repo_module


def test_stccl_alone_pulls_the_eat_target_toward_the_frozen_anchor(tmp_path):
    bench = load_repo_module("benchmarks/overfit_one_clip.py")
    out = tmp_path / "overfit.json"
    bench.main(["--backend", "eat", "--quick", "--threads", "1", "--cache", str(tmp_path / "cache"), "--out", str(out)])
    run = json.loads(out.read_text())["runs"][0]
    before, after = run["before"], run["after"]
    assert run["steps_with_stccl"] == run["steps"] > 0
    # The frozen anchor does not move, so its own score stays at the loss's floor (0) ...
    assert abs(before["floor"]) < 1e-6 and abs(after["floor"]) < 1e-6
    # ... and the target's mouth curve and score come closer to it.
    assert after["mouth_dist"] < before["mouth_dist"]
    assert after["stccl"] < before["stccl"]
