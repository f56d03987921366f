"""Synthesis happens only in the demo's own folders; a user's folder is never written to."""

from __future__ import annotations

import pytest

from stccl_diffusers.data.clips import SYNTHETIC_MARKER, prepare_clip_folder


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_users_folder_of_avi_clips_is_left_unchanged_and_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    user = tmp_path / "my_clips"
    (user / "happy").mkdir(parents=True)
    (user / "happy" / "001.avi").write_bytes(b"not ours")
    (user / "notes.txt").write_text("mine")
    before = _snapshot(user)
    with pytest.raises(ValueError, match=r"--data_dir .*my_clips holds no \.mp4 clip \(found: .*1 \.avi"):
        prepare_clip_folder(user, synthesize=True, speakers=1, clips=1, size=32)
    assert _snapshot(user) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_clips"]  # no `<dir>_val` sibling either


def test_mistyped_data_dir_is_an_error_not_a_synthetic_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="--data_dir .*/data/meda does not exist"):
        prepare_clip_folder(tmp_path / "data" / "meda", synthesize=True, speakers=1, clips=1, size=32)
    assert not (tmp_path / "data").exists()


def test_non_empty_unmarked_folder_under_outputs_is_not_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "outputs" / "mine"
    folder.mkdir(parents=True)
    (folder / "a.mov").write_bytes(b"x")
    with pytest.raises(ValueError, match="found: 1 .mov"):
        prepare_clip_folder("outputs/mine", synthesize=True, speakers=1, clips=1, size=32)
    assert _snapshot(folder) == {"a.mov": b"x"}


def test_demo_folder_under_outputs_is_synthesized_and_marked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert prepare_clip_folder("outputs/demo_data", synthesize=True, speakers=1, clips=1, size=32) is True
    folder = tmp_path / "outputs" / "demo_data"
    assert (folder / SYNTHETIC_MARKER).is_file() and list(folder.rglob("*.mp4"))
    before = _snapshot(folder)
    assert prepare_clip_folder("outputs/demo_data", synthesize=True, speakers=1, clips=1, size=32) is True
    assert _snapshot(folder) == before  # second run reuses, rewrites nothing


def test_train_script_pointed_at_a_users_folder_leaves_it_unchanged(tmp_path, monkeypatch):
    from test_train_eat import load_script

    from stccl_diffusers.training import parse_config

    monkeypatch.chdir(tmp_path)
    user = tmp_path / "MEAD_clips"
    (user / "angry").mkdir(parents=True)
    (user / "angry" / "001.avi").write_bytes(b"user data")
    before = _snapshot(user)
    script = load_script()
    cfg = parse_config(script.EATSTCCLConfig, ["--data_dir", str(user), "--output_dir", str(tmp_path / "out")],
                       default_config=script.DEMO_CONFIG)
    assert cfg.synthesize_if_missing  # the demo default: still never writes into a user's folder
    with pytest.raises(ValueError, match="MEAD_clips holds no .mp4 clip"):
        script.build_data(cfg, progress=False)
    assert _snapshot(user) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MEAD_clips"]  # no MEAD_clips_val either
