"""The three-minute demo (demo.py): it runs on the shipped assets and writes its labelled outputs.

The run here is shortened (2 fine-tuning steps per arm); it checks that the demo runs and what it
writes, never its result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import demo  # noqa: E402


def test_the_shipped_assets_are_safetensors_with_a_build_record():
    names = {p.relative_to(demo.ASSETS).as_posix() for p in demo.ASSETS.rglob("*") if p.is_file()}
    assert {"eat_base_k1n/config.json", "eat_base_k1n/diffusion_pytorch_model.safetensors", "metric/config.json",
            "metric/metric_fp16.safetensors", "probe.safetensors", "BUILD.json"} <= names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".bin", ".pkl"))]  # nothing that needs pickle
    build = json.loads((demo.ASSETS / "BUILD.json").read_text())
    assert build["command"] == "python demo.py --build_assets" and build["kappa"] == 1.0
    assert build["loudness_normalised"] is demo.LOUDNESS_NORMALISED is True


def test_missing_assets_name_what_is_missing_and_how_to_rebuild(tmp_path):
    with pytest.raises(FileNotFoundError, match="probe.safetensors.*--build_assets"):
        demo.load_assets(tmp_path)


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        demo.parse_args(["--steps", "0"])


def test_the_demo_runs_and_writes_its_table_pictures_and_strict_json(tmp_path, capsys):
    out = demo.main(["--output_dir", str(tmp_path / "runs"), "--steps", "2", "--threads", "1"])
    run = Path(out["run_dir"])
    assert run.parent == tmp_path / "runs"
    for name in ("grid.png", "mouth.png", "results.md", "results.json"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    table = (run / "results.md").read_text()
    assert "| without STCCL |" in table and "| with STCCL |" in table
    payload = json.loads((run / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-strict {c}"))
    assert set(payload["summary"]) == {"without", "with"} and len(payload["per_clip"]["with"]) == 4
    assert "wall time" in capsys.readouterr().out
    again = demo.main(["--output_dir", str(tmp_path / "runs"), "--steps", "1", "--threads", "1"])
    assert Path(again["run_dir"]) != run and (run / "results.json").is_file()  # a new run never touches the old one
