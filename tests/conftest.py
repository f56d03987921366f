import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

# Tiny tensors: one intra-op thread is faster than two, and much faster on a loaded 2-core machine.
torch.set_num_threads(int(os.environ.get("STCCL_TEST_THREADS", "1")))

REPO_ROOT = Path(__file__).resolve().parents[1]

# -- markers: `pytest -m "not slow"` runs the fast unit tests (under two minutes); README's test
# command and .ci/run run everything. `real_checkout` and `shared_data` are set here from what a
# test reads, `slow` from SLOW (measured with `pytest --durations=0` on the 2-core CI machine).

#: Test modules, or `module::test` names, that read an upstream checkout in ../shared/third_party
#: (DICE-Talk's or EAT's real source, diffusers' example scripts).
REAL_CHECKOUT = {
    "test_dice_talk_real", "test_dice_talk_train", "test_dice_talk_inference_match", "test_eat_real", "test_eat_real_train",
    "test_callback::test_lora_example_patch_applies_with_git_apply_to_diffusers_main_and_v0_29",
}
#: Test modules, or `module::test` names (any parametrization), that take more than 1.5 s (with their
#: fixtures; the EAT real-checkout modules as a whole, whose module fixtures take 7-12 s to set up).
SLOW = {
    "test_analysis::test_stccl_analyze_end_to_end_on_synthetic_pairs",
    "test_analysis::test_stccl_analyze_on_held_out_real_clips_with_dlib_pose_alignment",
    "test_analysis::test_stccl_analyze_on_real_tiled_pairs",
    "test_analysis::test_stccl_analyze_prints_the_speech_timing_auc_untrained_vs_trained",
    "test_bench_effect::test_quick_benchmark_writes_table_json_and_figure_for_both_backends",
    "test_bench_kappa::test_quick_kappa_benchmark_writes_table_json_and_figure",
    "test_callback_loops",
    "test_cli_errors::test_train_script_error_is_one_line",
    "test_datasets::test_folders_of_paired_videos_with_and_without_a_manifest",
    "test_ddp",
    "test_dice_talk_inference_match",
    "test_dice_talk_real::test_bf16_frozen_weights_cast_and_step_and_validation_run",
    "test_dice_talk_real::test_gradient_checkpointing_reaches_dice_talks_blocks_on_this_diffusers",
    "test_dice_talk_train",
    "test_eat_real",
    "test_eat_real_train",
    "test_emotion_learning_inputs::test_reference_dice_pretraining_trains_the_emotion_time_embedding",
    "test_eval_analysis::test_eval_analysis_columns_match_the_shared_implementation",
    "test_eval_analysis::test_eval_analysis_reports_the_speech_timing_auc_of_the_shared_implementation",
    "test_eval_cli::test_cli_folder_mode_writes_reports_and_lists_unreadable_clips",
    "test_eval_cli::test_cli_tiled_mode_on_a_real_comparison_video",
    "test_eval_effect::test_eval_clips_can_give_a_training_speaker_a_new_sentence",
    "test_eval_effect::test_ground_truth_frames_score_better_mouth_than_a_frozen_reference",
    "test_eval_effect::test_the_metric_sync_check_scores_every_anchor_and_sees_a_frozen_mouth",
    "test_eval_effect::test_the_truth_row_pairs_each_clip_with_its_own_neutral_rendering_at_the_same_timing",
    "test_eval_effect::test_validation_logs_the_effect_measures_for_the_target_and_the_no_stccl_row",
    "test_eval_emotion::test_stccl_eval_acc_emo_on_a_real_tile_with_an_emotion_fan_checkpoint",
    "test_eval_identity_emotion_cli::test_csim_id_and_csim_expr_are_named_apart_and_csim_stays_an_alias",
    "test_eval_mouth_real::test_stccl_eval_mouth_on_a_real_comparison_video",
    "test_eval_reencode::test_reencoding_changes_the_sync_score_and_the_report_keeps_both",
    "test_face_align::test_real_pair_tiles_are_detected_and_aligned",
    "test_kappa_world::test_at_kappa_one_the_mouth_opens_with_loudness_and_emotions_keep_their_tempo",
    "test_loss_properties",
    "test_metric::test_fresh_metric_gives_finite_features_loss_and_gradients",
    "test_metric::test_metric_learning_decreases_loss_on_a_fixed_pair",
    "test_overfit_one_clip",
    "test_pairing::test_stccl_pair_skips_bad_clips_by_name_and_counts_them",
    "test_pretrain::test_a_run_of_the_old_pretrain_layout_resumes_to_the_uninterrupted_weights",
    "test_pretrain::test_dlib_pose_alignment_warps_the_emotional_face_onto_the_neutral_one_on_real_frames",
    "test_pretrain::test_mouth_focus_centres_the_aligned_crop_on_the_mouth_of_a_real_face",
    "test_pretrain::test_overwrite_output_dir_moves_the_old_run_aside_as_the_training_scripts_do",
    "test_pretrain::test_pretrain_on_held_in_real_clips_with_dlib_pose_alignment",
    "test_pretrain::test_resume_after_kill_matches_the_uninterrupted_run",
    "test_rollout::test_the_rollout_anchor_follows_the_anchor_option",
    "test_train_dice::test_the_demo_validates_a_new_sentence_of_a_training_speaker_and_logs_the_measures",
    "test_train_dice::test_the_documented_metric_backbone_names_reach_the_metric",
    "test_train_eat::test_resume_after_kill_matches_an_uninterrupted_run",
}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than about two seconds; -m 'not slow' leaves it out")
    config.addinivalue_line(
        "markers", "real_checkout: reads an upstream checkout in ../shared/third_party (DICE-Talk, EAT, diffusers' examples)")
    config.addinivalue_line("markers", "shared_data: reads the real clips in ../shared/data")


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        name = item.originalname if hasattr(item, "originalname") else item.name
        if module in SLOW or f"{module}::{name}" in SLOW:
            item.add_marker(pytest.mark.slow)
        if module in REAL_CHECKOUT or f"{module}::{name}" in REAL_CHECKOUT:
            item.add_marker(pytest.mark.real_checkout)
        if "shared_data" in item.fixturenames:
            item.add_marker(pytest.mark.shared_data)
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def load_repo_module(relpath: str):
    """Import a top-level script of the checkout (e.g. ``train_eat_stccl.py``,
    ``benchmarks/bench_effect.py``) as a module, registered in ``sys.modules`` under its stem so
    dataclasses and pickling inside it work."""
    path = REPO_ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def shared_data():
    """The real clips and manifest beside the checkout; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (only present in the development workspace)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def two_threads():
    """Two intra-op threads for one module (`pytestmark = pytest.mark.usefixtures("two_threads")`):
    EAT's 256-px renderer runs large convolutions, where the second thread pays. Restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def eat_checkout(tmp_path_factory):
    """A user's EAT checkout for one test module: EAT's real source symlinked from
    ../shared/third_party/EAT_code plus random weights in EAT's formats (skips when absent;
    tests/_eat_real_checkout.py)."""
    from _eat_real_checkout import eat_test_checkout

    return eat_test_checkout(tmp_path_factory)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each test that builds an `Accelerator` gets a fresh process state: accelerate keeps one
    per process and refuses a second run with another `mixed_precision` (a user's run is one
    process; the suite runs many configurations in one)."""
    yield
    import sys

    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)
