"""benchmarks/bench_effect.py --quick runs end to end and writes its table, JSON and figure.

It checks that the benchmark runs and reports every arm and seed, never what the numbers are.
"""

from __future__ import annotations

import json
import math

from conftest import load_repo_module


def _load_bench():
    return load_repo_module("benchmarks/bench_effect.py")


def test_quick_benchmark_writes_table_json_and_figure_for_both_backends(tmp_path):
    bench = _load_bench()
    out = bench.main(["--quick", "--out", str(tmp_path), "--threads", "1"])
    run_dir = tmp_path / out["run_dir"].split("/")[-1]
    table = (run_dir / "results.md").read_text()
    payload = json.loads((run_dir / "results.json").read_text())
    assert (run_dir / "effect.png").stat().st_size > 0
    for backend in ("dice", "eat"):
        res = payload["results"][backend]
        for arm in ("without", "with"):
            assert [r["seed"] for r in res[arm]] == payload["args"]["seeds"]
            for r in res[arm]:
                assert math.isfinite(r["emotion_acc"]) and math.isfinite(r["stccl"])
                assert f"| {backend} | {arm} | {r['seed']} |" in table
        assert res["settings"]["weight"] > 0
        assert math.isfinite(res["truth"]["stccl"])  # the renderer's own pair, scored by the same metric
        assert f"| {backend} | ground truth (renderer's own pair) | - |" in table
    # base models are cached for reruns
    assert any((tmp_path / "cache" / "quick" / "dice").glob("reference_dice_*/config.json"))


def test_eval_faces_training_gives_the_speakers_of_the_training_set(tmp_path):
    from stccl_diffusers.data.synthetic import speaker_identity
    from stccl_diffusers.training.demo import ensure_synthetic_clips

    bench = _load_bench()
    data = ensure_synthetic_clips(tmp_path / "data", speakers=2, clips=1, size=64, seed=5, emotions=["happy"])
    assert bench.eval_identities(bench.parse_args(["--quick"]), data) is None
    faces = bench.eval_identities(bench.parse_args(["--quick", "--eval-faces", "training"]), data)
    assert faces == [speaker_identity(5, 0), speaker_identity(5, 1)]
