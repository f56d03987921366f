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
        assert set(res["metric_sync"]) == set(bench.SYNC_CHECKS) and f"| {backend} | {res['metric_sync']['itself']:.3f} |" in table
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


def test_two_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    bench = _load_bench()
    first, second = bench.new_run_dir(tmp_path), bench.new_run_dir(tmp_path)
    assert first != second and first.is_dir() and second.is_dir()
    (first / "results.json").write_text("{}")
    assert (first / "results.json").read_text() == "{}"  # the first run's folder is left alone


def test_replot_redraws_beside_the_run_and_keeps_its_figure(tmp_path):
    bench = _load_bench()
    row = {m: 0.5 for m in bench.MEASURES}
    curves = {"gt": [0.0, 0.3, 0.1], "target": [0.1, 0.2, 0.1]}
    res = {"truth": row, "base": row, "without": [{"seed": 0, **row, "curves": curves}],
           "with": [{"seed": 0, **row, "curves": curves}]}
    summary = {"dice": {a: {m: [0.5, 0.0] for m in bench.MEASURES} for a in ("without", "with")}}
    (tmp_path / "results.json").write_text(json.dumps({"results": {"dice": res}, "summary": summary}))
    (tmp_path / "effect.png").write_bytes(b"the run's own figure")
    bench.main(["--replot", str(tmp_path)])
    bench.main(["--replot", str(tmp_path)])
    assert (tmp_path / "effect.png").read_bytes() == b"the run's own figure"
    assert (tmp_path / "effect-replot.png").stat().st_size > 1000 and (tmp_path / "effect-replot-2.png").is_file()
