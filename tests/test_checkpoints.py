"""An output folder belongs to one run; checkpoints are verified; damaged ones are named and skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_train_loop import ToyAdapter, ToyData, _cfg

from stccl_diffusers.training import list_checkpoints, train
from stccl_diffusers.utils.safety import LOCK_FILE, RunLock, atomic_dir


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fresh_run_refuses_a_folder_holding_another_runs_checkpoints(tmp_path):
    train(ToyAdapter(), ToyData(), _cfg(tmp_path, max_train_steps=4, checkpoints_total_limit=1))
    before = {k: v for k, v in _snapshot(tmp_path).items() if k.startswith("checkpoint-")}
    assert before
    with pytest.raises(FileExistsError, match="checkpoint-4.*--overwrite_output_dir"):
        train(ToyAdapter(), ToyData(), _cfg(tmp_path, max_train_steps=4, checkpoints_total_limit=1, seed=9))
    after = {k: v for k, v in _snapshot(tmp_path).items() if k.startswith("checkpoint-")}
    assert after == before


def test_overwrite_output_dir_moves_the_old_checkpoints_aside_untouched(tmp_path):
    train(ToyAdapter(), ToyData(), _cfg(tmp_path, max_train_steps=4, checkpoints_total_limit=1))
    before = {k: v for k, v in _snapshot(tmp_path).items() if k.startswith("checkpoint-")}
    with pytest.warns(UserWarning, match="previous-0"):
        train(ToyAdapter(), ToyData(), _cfg(tmp_path, max_train_steps=2, checkpoints_total_limit=1,
                                            overwrite_output_dir=True))
    kept = {k[len("previous-0/"):]: v for k, v in _snapshot(tmp_path).items() if k.startswith("previous-0/checkpoint-")}
    assert kept == before
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2"]


def test_second_concurrent_run_on_one_folder_is_refused(tmp_path):
    # Another live process holds the lock.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename}))
        with pytest.raises(RuntimeError, match=f"in use by another run \\(pid {holder.pid}"):
            train(ToyAdapter(), ToyData(), _cfg(tmp_path, max_train_steps=2))
        assert not list_checkpoints(tmp_path)
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_killed_run_is_cleared(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    res = train(ToyAdapter(), ToyData(), _cfg(tmp_path, max_train_steps=2))
    assert res.global_step == 2
    assert not (tmp_path / LOCK_FILE).exists()  # released at the end


class _Crashing(ToyAdapter):
    def training_step(self, batch, step, generator):
        raise RuntimeError("boom")


def test_lock_is_released_when_training_fails(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        train(_Crashing(), ToyData(), _cfg(tmp_path, max_train_steps=2))
    assert not (tmp_path / LOCK_FILE).exists()
    with RunLock(tmp_path):  # and can be taken again
        assert (tmp_path / LOCK_FILE).exists()


def test_truncated_latest_checkpoint_is_named_and_resume_falls_back(tmp_path):
    train(ToyAdapter(), ToyData(), _cfg(tmp_path, max_train_steps=6), stop_after_steps=4)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    weights = sorted((tmp_path / "checkpoint-4").glob("*.safetensors"))
    assert weights
    data = weights[0].read_bytes()
    weights[0].write_bytes(data[: len(data) // 2])
    adapter = ToyAdapter()
    with pytest.warns(UserWarning, match=f"checkpoint-4 \\(.*{weights[0].name} has {len(data) // 2} bytes.*checkpoint-2"):
        res = train(adapter, ToyData(), _cfg(tmp_path, max_train_steps=6, resume_from_checkpoint="latest"))
    assert res.resumed_from.endswith("checkpoint-2")
    assert adapter.seen_steps[0] == 2


def test_explicit_damaged_checkpoint_is_an_error_naming_the_file(tmp_path):
    train(ToyAdapter(), ToyData(), _cfg(tmp_path, max_train_steps=6), stop_after_steps=2)
    opt = tmp_path / "checkpoint-2" / "optimizer.bin"
    assert opt.is_file()
    opt.write_bytes(b"\0" * opt.stat().st_size)  # same size, other content
    with pytest.raises(ValueError, match="optimizer.bin has a different checksum"):
        train(ToyAdapter(), ToyData(), _cfg(tmp_path, max_train_steps=6, resume_from_checkpoint="checkpoint-2"))


def test_resume_refuses_a_shape_change_and_warns_for_the_learning_rate(tmp_path):
    train(ToyAdapter(), ToyData(), _cfg(tmp_path, max_train_steps=6), stop_after_steps=2)
    saved = json.loads((tmp_path / "checkpoint-2" / "run_config.json").read_text())
    assert saved["rank"] == 2 and saved["learning_rate"] == 5e-2
    with pytest.raises(ValueError, match="rank: 2 -> 4"):
        train(ToyAdapter(), ToyData(), _cfg(tmp_path, max_train_steps=6, resume_from_checkpoint="latest", rank=4))
    with pytest.warns(UserWarning, match="learning_rate: 0.05 -> 0.01"):
        res = train(ToyAdapter(), ToyData(), _cfg(tmp_path, max_train_steps=6, resume_from_checkpoint="latest",
                                                  learning_rate=1e-2))
    assert res.global_step == 6


def test_atomic_dir_leaves_the_old_folder_when_the_write_fails(tmp_path):
    target = tmp_path / "metric"
    target.mkdir()
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "config.json").write_text('{"new": 1}')
            raise KeyboardInterrupt  # a kill between config.json and the weights
    assert _snapshot(target) == {"config.json": b"{}", "model.safetensors": b"old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metric"]
