"""benchmarks/bench_kappa.py and benchmarks/dose_check.py: the κ-world benchmark runs and writes its
table, JSON and figure (never checked for its numbers); the dose verdict and the one scoring."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import load_repo_module


def test_the_dose_verdict_needs_a_monotone_rise_beyond_the_seed_spread():
    dose = load_repo_module("benchmarks/dose_check.py")
    runs = lambda *v: {"runs": [{"gt_mae": x} for x in v]}  # noqa: E731
    assert dose.verdict({"0": runs(0.10, 0.11), "0.5": runs(0.13, 0.14), "1": runs(0.20, 0.21)})["dose_present"]
    assert not dose.verdict({"0": runs(0.10, 0.11), "0.5": runs(0.09, 0.10), "1": runs(0.20, 0.21)})["dose_present"]
    # a rise smaller than the seed spread is no dose
    assert not dose.verdict({"0": runs(0.05, 0.15), "1": runs(0.11, 0.12)})["dose_present"]
    one = dose.verdict({"0": runs(0.10), "1": runs(0.12)})  # one seed: no spread, not a verdict
    assert one["dose_present"] and not one["spread_known"] and "not a verdict" in dose.verdict_line(one)
    with pytest.raises(SystemExit):
        dose.parse_args(["--kappas", "1"])


def test_windowed_stccl_scores_windows_of_the_training_length():
    from _stccl_metric_for_tests import build_metric
    from stccl_diffusers.training.validation import stccl_scores
    windowed_stccl = load_repo_module("benchmarks/world.py").windowed_stccl

    metric = build_metric()[0]
    g = torch.Generator().manual_seed(0)
    t, a = torch.rand(16, 3, 32, 32, generator=g) * 2 - 1, torch.rand(16, 3, 32, 32, generator=g) * 2 - 1
    got = windowed_stccl(metric, t, a, window=8, subset=[0, 2, 4, 6], seed=1)
    want = [stccl_scores(metric, t[[s + i for i in (0, 2, 4, 6)]][None], a[[s + i for i in (0, 2, 4, 6)]][None],
                         seed=1000 + k)["stccl"] for k, s in enumerate((0, 8))]
    assert got == pytest.approx(sum(want) / 2)
    with pytest.raises(ValueError, match="2 scored frames"):
        windowed_stccl(metric, t, a, window=8, subset=[0])


def test_quick_kappa_benchmark_writes_table_json_and_figure(tmp_path):
    bench = load_repo_module("benchmarks/bench_kappa.py")
    out = bench.main(["--quick", "--out", str(tmp_path), "--threads", "1"])
    run_dir = tmp_path / out["run_dir"].split("/")[-1]
    table = (run_dir / "results.md").read_text()
    payload = json.loads((run_dir / "results.json").read_text())  # strict JSON: parsing would fail on NaN
    assert (run_dir / "kappa.png").stat().st_size > 0
    for backend in ("dice", "eat"):
        res = payload["results"][backend]
        assert set(res["kappas"]) == {"0", "1"}
        for k, arms in res["kappas"].items():
            assert set(arms) == set(bench.ARMS[backend])
            for arm, runs in arms.items():
                assert [r["seed"] for r in runs] == payload["args"]["seeds"]
                assert f"| {backend} | {k} | {arm} s0 |" in table
                assert all(r["gt_mae"] is not None and math.isfinite(r["gt_mae"]) for r in runs)
        assert "dose_present" in res["dose"] and f"- {backend}: κ=0:" in table
    assert any((tmp_path / "cache" / "quick" / "dice").glob("reference_dice_k1n_*/config.json"))


def test_the_reward_hacking_watch_warns_when_the_reward_improves_and_the_instrument_worsens():
    from stccl_diffusers.training.validation import RewardHackingWatch

    watch = RewardHackingWatch()
    assert watch({"stccl": 3.0, "effect_neu_mae": 0.05}, 0)["reward_hacking"] == 0.0
    assert watch({"stccl": 2.5, "effect_neu_mae": 0.04}, 10)["reward_hacking"] == 0.0  # both improve
    with pytest.warns(RuntimeWarning, match="reward hacking"):
        assert watch({"stccl": 2.5, "effect_neu_mae": 0.09}, 20)["reward_hacking"] == 1.0
    assert "reward_hacking" not in watch({"stccl": 2.0}, 30)  # no instrument: no verdict


def test_the_reward_hacking_flag_is_checked_at_every_kappa():
    bench = load_repo_module("benchmarks/bench_kappa.py")
    row = lambda mae, neu, stccl, acc=0.5: {"gt_mae": mae, "neu_mae": neu, "stccl": stccl, "emotion_acc": acc}  # noqa: E731
    honest = {"without": [row(0.10, 0.05, 0.20), row(0.10, 0.05, 0.20)],
              "with": [row(0.09, 0.04, 0.15), row(0.09, 0.04, 0.15)],
              "placebo": [row(0.10, 0.05, 0.20), row(0.10, 0.05, 0.20)]}
    hacked = {**honest, "with": [row(0.12, 0.09, 0.10), row(0.12, 0.09, 0.10)]}  # score down, instrument worse
    assert not bench.hacking(honest, "with") and bench.hacking(hacked, "with")
    g = bench.goal({"0": hacked, "1": honest}, "eat")["with"]
    assert g["reward_hacking_flag"] and g["reward_hacking_kappas"] == [0.0]  # the smallest kappa counts too
    assert not bench.goal({"0": honest, "1": honest}, "eat")["with"]["reward_hacking_flag"]


@pytest.mark.slow
def test_jobs_give_every_run_the_result_it_has_alone(tmp_path):
    # --jobs N runs the grid's fine-tunes in worker processes: the numbers must be the sequential run's.
    bench = load_repo_module("benchmarks/bench_kappa.py")
    common = ["--quick", "--backends", "eat", "--threads", "1", "--out", str(tmp_path)]
    one = bench.main(common)["results"]["eat"]["kappas"]
    two = bench.main(common + ["--jobs", "2"])["results"]["eat"]["kappas"]
    assert set(one) == set(two) == {"0", "1"}
    for k in one:
        for arm in bench.ARMS["eat"]:
            for a, b in zip(one[k][arm], two[k][arm]):
                assert a["seed"] == b["seed"]
                for m in bench.MEASURES:
                    assert a[m] == pytest.approx(b[m], abs=1e-9), (k, arm, m)
    with pytest.raises(SystemExit):
        bench.parse_args(["--jobs", "0"])


def test_the_gain_check_scores_the_deployment_ground_truth_at_gain_one():
    from _stccl_metric_for_tests import build_metric
    from stccl_diffusers.data.datasets import frames_to_tensor
    from stccl_diffusers.eval.effect import deployment_clips
    check = load_repo_module("benchmarks/metric_gain_check.py")
    windowed_stccl = load_repo_module("benchmarks/world.py").windowed_stccl

    metric = build_metric()[0]
    res = check.gain_check(metric, [1.0, 1.35], sentences=1, frames=6, window=3, emotions=("angry",))
    clip = deployment_clips(1, 6, 64, emotions=("angry",))[0]
    truth = windowed_stccl(metric, frames_to_tensor(clip["gt_frames"]), frames_to_tensor(clip["gt_neutral_frames"]),
                           3, None, seed=0)
    assert res["gains"][1.0][0] == pytest.approx(truth, rel=1e-5)  # g = 1 is the exact ground truth
    assert res["gains"][1.35][0] != res["gains"][1.0][0]  # a wider mouth is another target
    assert set(res["rows"][0]) == {"sentence", "emotion", "g1", "g1.35", "shift_3"}
    assert "mouth gain 1 (ground truth)" in check.markdown(res)
    with pytest.raises(ValueError, match="gains"):
        check.gain_check(metric, [0.0], sentences=1, frames=6, window=3)
