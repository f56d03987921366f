"""`stccl_diffusers.training.config`: the flat config of every training script and of
`stccl-pretrain` (parsing, types, the `--config` file, shipped configs, each field's resume rule)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from stccl_diffusers.pretrain import load_config, parse_args
from stccl_diffusers.training.config import (
    TrainingConfig,
    compare_resume_config,
    config_from_dict,
    parse_config,
    resume_rules,
)

REPO = Path(__file__).resolve().parents[1]


def test_each_field_declares_its_resume_rule_and_a_subclass_default_keeps_it():
    from stccl_diffusers.adapters.dice import DiceTrainingConfig
    from stccl_diffusers.adapters.eat.config import EATSTCCLConfig

    eat = resume_rules(EATSTCCLConfig)
    # EATSTCCLConfig gives resolution, num_frames and train_mode new defaults: the base's rule holds.
    assert {k for k in ("resolution", "num_frames", "train_mode", "reference_model", "reference_render_channels",
                        "metric_backbone", "rank") if eat[k] == "shape"} == {
        "resolution", "num_frames", "train_mode", "reference_model", "reference_render_channels", "metric_backbone",
        "rank"}
    assert eat["max_train_steps"] == eat["output_dir"] == eat["config"] == "free"
    assert eat["learning_rate"] == "warn"
    dice = resume_rules(DiceTrainingConfig)
    assert dice["backend"] == dice["pretrained_model_name_or_path"] == "shape"
    assert set(resume_rules(TrainingConfig).values()) <= {"shape", "warn", "free"}


def test_a_resume_that_changes_the_reference_eat_models_shape_is_refused(tmp_path):
    """`reference_render_channels` changes the EAT reference model's shape: refused, not warned."""
    from stccl_diffusers.adapters.eat.config import EATSTCCLConfig
    from stccl_diffusers.training.loop import RUN_CONFIG_FILE, check_resume_config

    saved = dataclasses.asdict(EATSTCCLConfig())
    refuse, warn = compare_resume_config(saved, dataclasses.asdict(EATSTCCLConfig(reference_render_channels=32)),
                                         EATSTCCLConfig)
    assert refuse == ["reference_render_channels: 16 -> 32"] and warn == []
    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    (ckpt / RUN_CONFIG_FILE).write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="reference_render_channels: 16 -> 32"):
        check_resume_config(EATSTCCLConfig(reference_render_channels=32), ckpt)
    check_resume_config(EATSTCCLConfig(max_train_steps=7), ckpt)  # free: no error, no warning


def test_the_config_file_is_a_field_set_by_parse_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train_batch_size": 3}))
    assert parse_config(TrainingConfig, ["--config", str(path)]).config == str(path)
    assert parse_config(TrainingConfig, [], default_config=path).config == str(path)
    assert parse_config(TrainingConfig, []).config is None
    path.write_text(yaml.safe_dump({"config": "other.yaml"}))
    with pytest.raises(ValueError, match="`config` names the YAML file itself"):
        parse_config(TrainingConfig, ["--config", str(path)])


# -- the training scripts' TrainingConfig
def test_config_yaml_then_cli_override_and_unknown_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"learning_rate": "1e-4", "train_batch_size": 3, "gradient_checkpointing": True}))
    cfg = parse_config(TrainingConfig, ["--config", str(path), "--train_batch_size", "5", "--lora_target_modules", "to_q,to_k"])
    assert cfg.learning_rate == pytest.approx(1e-4) and cfg.train_batch_size == 5 and cfg.gradient_checkpointing is True
    assert cfg.lora_target_modules == ["to_q", "to_k"]
    path.write_text("learning_rte: 0.1\n")
    with pytest.raises(ValueError, match=r"c.yaml: unknown key\(s\) `learning_rte` \(did you mean learning_rate"):
        parse_config(TrainingConfig, ["--config", str(path)])
    with pytest.raises(ValueError, match="train_batch_size` expects int, got 'two'"):
        config_from_dict(TrainingConfig, {"train_batch_size": "two"})
    with pytest.raises(SystemExit):
        parse_config(TrainingConfig, ["--no_such_flag", "1"])


# ------------------------------------------------------------------ gated vs ungated (DICE adapter)


# -- stccl-pretrain's PretrainConfig
def test_both_shipped_configs_load_and_keep_the_paper_defaults():
    paper = load_config(str(REPO / "configs" / "pretrain_stccl.yaml"))
    assert paper["learning_rate"] == 1e-4 and paper["train_batch_size"] == 16
    assert paper["input_size"] == 224 and paper["resolution"] == 224 and paper["backbone"] == "r50"
    assert paper["mixed_precision"] == "no"
    demo = load_config(str(REPO / "configs" / "pretrain_stccl_demo.yaml"))
    assert demo["backbone"] == [1, 1, 1, 1] and demo["input_size"] == 64


def test_cli_overrides_are_typed_and_unknown_keys_are_errors(tmp_path):
    cfg = parse_args(["--config", str(REPO / "configs" / "pretrain_stccl.yaml"), "--learning_rate", "3e-5", "--backbone=[1,1,1,1]", "--manifest", "null"])
    assert cfg["learning_rate"] == 3e-5 and cfg["backbone"] == [1, 1, 1, 1] and cfg["manifest"] is None
    with pytest.raises(ValueError, match="unknown config key.*lerning_rate"):
        parse_args(["--lerning_rate", "1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1.0e-4\nbatch: 3\n")
    with pytest.raises(ValueError, match="batch"):
        load_config(str(bad))
    with pytest.raises(ValueError, match="mixed_precision"):
        load_config(None, {"mixed_precision": "fp8"})


def test_face_align_and_face_focus_are_checked_choices():
    assert load_config(None, {"face_align": "dlib"})["face_align"] == "dlib"
    assert load_config(None, {"face_align": "null"})["face_align"] is None
    with pytest.raises(ValueError, match="face_align: expected one of"):
        load_config(None, {"face_align": "mediapipe"})
    with pytest.raises(ValueError, match="face_focus: expected one of"):
        load_config(None, {"face_focus": "eyes"})
    assert load_config(None, {"holdout": "M003,M030"})["holdout"] == ["M003", "M030"]


def test_real_face_demo_config_holds_speakers_out_and_aligns_with_dlib():
    cfg = load_config(str(REPO / "configs" / "pretrain_stccl_real_demo.yaml"))
    assert cfg["data"] == "real_pairs" and cfg["holdout"] == ["M003", "M030"]
    assert cfg["face_align"] == "dlib" and cfg["face_focus"] == "mouth" and cfg["add_synthetic_pairs"] > 0
