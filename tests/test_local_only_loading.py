"""Every loader is local only: with the network blocked, hub ids get a clear error and local folders load."""

from __future__ import annotations

import socket

import pytest

from stccl_diffusers import STCCLMetric


@pytest.fixture
def no_network(monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield attempts
    assert attempts == [], f"a loader tried the network: {attempts}"


HUB_ID = "some-org/eat"


def _loaders(tmp_path):
    from stccl_diffusers.analysis import analyze_main
    from stccl_diffusers.callback import STCCLRewardCallback
    from stccl_diffusers.models.reference_dice import ReferenceDICE
    from stccl_diffusers.models.reference_eat import ReferenceEATModel
    from stccl_diffusers.pretrain import DEFAULT_CONFIG, build_metric
    from stccl_diffusers.training.demo import ensure_metric
    from stccl_diffusers.utils.safety import from_pretrained_local

    return {
        "STCCLMetric.from_pretrained": lambda: STCCLMetric.from_pretrained(HUB_ID),
        "callback metric_pretrained_path": lambda: STCCLRewardCallback(metric_pretrained_path=HUB_ID),
        "stccl-analyze --trained": lambda: analyze_main(["--trained", HUB_ID, "--out", str(tmp_path / "a")]),
        "stccl-analyze --untrained": lambda: analyze_main(["--trained", str(tmp_path / "m"), "--untrained", HUB_ID,
                                                           "--out", str(tmp_path / "a")]),
        "stccl-pretrain init_from": lambda: build_metric({**DEFAULT_CONFIG, "init_from": HUB_ID}),
        "train scripts metric_path": lambda: ensure_metric(HUB_ID, tmp_path / "fallback"),
        "train_dice --pretrained_model_name_or_path": lambda: from_pretrained_local(ReferenceDICE, HUB_ID, "--pretrained_model_name_or_path"),
        "train_eat --reference_model": lambda: from_pretrained_local(ReferenceEATModel, HUB_ID, "--reference_model"),
    }


def test_every_loader_refuses_a_hub_id_without_touching_the_network(tmp_path, no_network):
    metric = STCCLMetric(backbone=(1, 1, 1, 1), input_size=64, embedding_head=False)
    metric.save_pretrained(str(tmp_path / "m"))
    for name, load in _loaders(tmp_path).items():
        with pytest.raises(FileNotFoundError, match="'some-org/eat' is not a local folder.*hub id") as err:
            load()
        assert err.value is not None, name


def test_local_folders_load_with_the_network_blocked(tmp_path, no_network):
    from stccl_diffusers.callback import STCCLRewardCallback

    metric = STCCLMetric(backbone=(1, 1, 1, 1), input_size=64, embedding_head=False)
    metric.save_pretrained(str(tmp_path / "m"))
    assert not STCCLMetric.from_pretrained(str(tmp_path / "m")).training
    assert STCCLRewardCallback(metric_pretrained_path=str(tmp_path / "m")).metric is not None


def test_folder_without_config_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty holds no config.json"):
        STCCLMetric.from_pretrained(str(tmp_path / "empty"))
