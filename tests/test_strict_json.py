"""Strict JSON everywhere: no NaN / Infinity in any file the package or its benchmarks write."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from stccl_diffusers.utils.jsonio import NULL_KEY, dumps_strict, nulls_to_nan, to_jsonable, write_json

REPO = Path(__file__).resolve().parents[1]


def _strict_load(text: str):
    """Parse as a strict parser would: NaN / Infinity are errors."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_floats_become_null_and_are_explained(tmp_path):
    payload = {"a": float("nan"), "b": [1.0, float("inf"), np.float32("-inf")], "c": {"effect_px_gt_corr": np.nan},
               "d": torch.tensor([1.5, float("nan")]), "e": np.int64(3), "f": Path("x/y"), "g": True}
    path = write_json(tmp_path / "out.json", payload, why={"px_gt_corr": "the detector rejects 32 px frames"})
    got = _strict_load(Path(path).read_text())
    assert got["a"] is None and got["b"] == [1.0, None, None] and got["c"]["effect_px_gt_corr"] is None
    assert got["d"] == [1.5, None] and got["e"] == 3 and got["f"] == "x/y" and got["g"] is True
    nulls = got[NULL_KEY]
    assert nulls["a"] == "NaN" and nulls["b/1"] == "Infinity" and nulls["b/2"] == "-Infinity"
    assert nulls["c/effect_px_gt_corr"] == "NaN: the detector rejects 32 px frames"
    assert "null" in nulls["why"]


def test_finite_payload_is_unchanged_and_has_no_null_key(tmp_path):
    payload = {"x": 1.25, "y": [1, 2, {"z": "s"}], "n": None}
    got = _strict_load(Path(write_json(tmp_path / "a.json", payload)).read_text())
    assert got == payload
    assert _strict_load(dumps_strict({"x": float("nan")})) == {"x": None}  # explain only when asked


def test_nulls_to_nan_round_trip():
    back = nulls_to_nan(to_jsonable({"a": [float("nan"), 2.0], "b": {"c": float("inf")}}))
    assert math.isnan(back["a"][0]) and back["a"][1] == 2.0 and math.isnan(back["b"]["c"])


def test_metrics_json_and_eval_results_are_strict(tmp_path):
    from stccl_diffusers.eval.report import write_json as eval_write_json
    from stccl_diffusers.training.validation import write_metrics_json

    write_metrics_json(tmp_path / "metrics.json", {"validations": [{"step": 0, "effect_px_gt_corr": float("nan"),
                                                                    "stccl": torch.tensor(4.8)}]})
    got = _strict_load((tmp_path / "metrics.json").read_text())
    assert got["validations"][0]["effect_px_gt_corr"] is None
    assert got["validations"][0]["stccl"] == pytest.approx(4.8)
    assert "pixel mouth detector" in got[NULL_KEY]["validations/0/effect_px_gt_corr"]
    eval_write_json({"PSNR": np.float64("inf"), "per_clip": np.array([1.0, np.nan])}, tmp_path / "results.json")
    got = _strict_load((tmp_path / "results.json").read_text())
    assert got["PSNR"] is None and got["per_clip"] == [1.0, None]


def test_no_writer_bypasses_the_strict_writer():
    """Every json.dump / json.dumps in the package, the scripts and the benchmarks goes through
    utils/jsonio.py or passes allow_nan=False itself."""
    offenders = []
    files = [*REPO.glob("stccl_diffusers/**/*.py"), *REPO.glob("benchmarks/*.py"), *REPO.glob("*.py")]
    for f in files:
        if f.name == "jsonio.py":
            continue
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"\bjson\.dumps?\(", line) and "allow_nan=False" not in line \
                    and not re.search(r"json\.loads\(json\.dumps\(", line):
                offenders.append(f"{f.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, "use stccl_diffusers.utils.jsonio (strict JSON):\n" + "\n".join(offenders)
