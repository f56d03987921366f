"""`stccl_diffusers.training.config`: the flat config of every training script (parsing, types,
the `--config` file, and each field's resume rule)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from stccl_diffusers.training.config import TrainingConfig, compare_resume_config, parse_config, resume_rules


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
