"""Console scripts print a package error as one line with the fix; `--debug` gives the traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stccl_diffusers import console


@pytest.mark.parametrize("entry,argv,match", [
    (console.analyze, ["--trained", "some-org/metric", "--out", "{tmp}/a"], "is not a local folder"),
    (console.pretrain, ["--init_from", "some-org/metric", "--output_dir", "{tmp}/p", "--max_train_steps", "1"],
     "is not a local folder"),
    (console.evaluate, ["--analysis_metric", "some-org/metric", "--output_dir", "{tmp}/e"], "analysis_metric"),
])
def test_console_error_is_one_line_with_the_fix(entry, argv, match, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        entry(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code not in (0, None)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("INFO", "WARNING"))]
    assert "Traceback" not in err and len(lines) == 1, err
    assert match in lines[0]


def test_debug_flag_gives_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a local folder"):
        console.analyze(["--trained", "some-org/metric", "--out", str(tmp_path / "a"), "--debug"])


def test_train_script_error_is_one_line(tmp_path):
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "train_eat_stccl.py"
    proc = subprocess.run([sys.executable, str(script), "--data_dir", str(tmp_path / "nope"),
                           "--output_dir", str(tmp_path / "out"), "--synthesize_if_missing", "false"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "--data_dir" in proc.stderr and "does not exist" in proc.stderr
