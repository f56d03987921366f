import json
import sys

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from stccl_diffusers.eval.cli import main
from stccl_diffusers.models.iresnet import IResNet
from stccl_diffusers.utils.safety import UsageError


@pytest.fixture
def tiny_iresnet(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny_backbone.pth"
    torch.save(IResNet((1, 1, 1, 1)).state_dict(), path)  # depth is read back from the keys
    return str(path)


def _write_clip(folder, frames, audio=None):
    import cv2

    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:06d}.png"), f[..., ::-1])
    if audio is not None:
        wavfile.write(str(folder / "audio.wav"), 16000, audio)


def _make_folders(root):
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(16000) * 2000).astype(np.int16)
    ref, gen_a, gen_b = root / "real", root / "A", root / "B"
    clips = {}
    for name in ("clip1", "clip2"):
        frames = rng.integers(0, 256, (7, 48, 48, 3), dtype=np.uint8)
        clips[name] = frames
        _write_clip(ref / name, frames, audio)
        _write_clip(gen_a / name, frames, audio)  # method A reproduces the real clips exactly
        _write_clip(gen_b / name, 255 - frames // 2, audio)
    _write_clip(gen_a / "only_generated", clips["clip1"], audio)  # no real clip of that name
    (gen_b / "clip2" / "000003.png").write_bytes(b"not a png")  # unreadable generated clip
    return ref, gen_a, gen_b


def test_cli_folder_mode_writes_reports_and_lists_unreadable_clips(tmp_path, tiny_iresnet, capsys):
    ref, gen_a, gen_b = _make_folders(tmp_path)
    out = tmp_path / "out"
    rc = main([
        "--reference_dir", str(ref), "--generated", f"A={gen_a}", "--generated", f"B={gen_b}", "--aligned",
        "--arcface_weights", tiny_iresnet, "--csim_weights", tiny_iresnet, "--random_init",
        "--output_dir", str(out), "--no_progress", "--batch_size", "8", "--num_threads", "1", "--frame_stride", "3",
    ])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    a, b = res["methods"]["A"], res["methods"]["B"]
    # Identical clips: FAD 0, CSIM 1; a different method is measurably worse.
    assert a["FAD"] == pytest.approx(0.0, abs=1e-6) and a["CSIM"] == pytest.approx(1.0, abs=1e-9)
    assert b["FAD"] > 1e-3 and b["num_clips"] == 1
    assert "fewer frames than dimensions" in a["fad_note"]
    # Method A's LSE equals the real clips' LSE (same frames, same audio); 7 frames -> 2 windows.
    assert a["LSE-D"] == pytest.approx(res["methods"]["reference (real)"]["LSE-D"], rel=1e-6)
    assert all(c["lse_windows"] == 2 for c in res["clips"] if "lse_windows" in c)
    # The unreadable clip is listed by name, the unpaired one is mentioned.
    assert any(u["clip"] == "B/clip2" and "could not read image" in u["reason"] for u in res["unreadable"])
    assert any("only_generated" in n for n in res["notes"])
    md = (out / "results.md").read_text()
    assert "| Method | FAD↓ | LSE-D↓ | LSE-C↑ | CSIM↑ |" in md
    assert "RANDOM WEIGHTS (SyncNet" in md and "B/clip2" in md
    assert (out / "metrics.png").stat().st_size > 1000 and (out / "lse_offsets.png").is_file()
    assert "RANDOM WEIGHTS" in capsys.readouterr().out


@pytest.mark.parametrize("missing", ["--arcface_weights", "--syncnet_weights", "--csim_weights"])
def test_cli_missing_weights_is_an_error_naming_the_flag(tmp_path, tiny_iresnet, missing):
    ref, gen_a, _ = _make_folders(tmp_path)
    given = {"--arcface_weights": tiny_iresnet, "--syncnet_weights": None, "--csim_weights": tiny_iresnet}
    argv = ["--reference_dir", str(ref), "--generated", f"A={gen_a}", "--output_dir", str(tmp_path / "o"), "--no_progress"]
    metric = {"--arcface_weights": "fad", "--syncnet_weights": "lse", "--csim_weights": "csim"}[missing]
    argv += ["--metrics", metric]
    for flag, value in given.items():
        if flag != missing and value is not None:
            argv += [flag, value]
    with pytest.raises(UsageError) as err:
        main(argv)
    assert missing in str(err.value)
    with pytest.raises(UsageError) as err:  # a path that does not exist names the flag too
        main(argv + [missing, str(tmp_path / "nope.pth")])
    assert missing in str(err.value) and "not found" in str(err.value)


def test_cli_tiled_mode_on_a_real_comparison_video(tmp_path, tiny_iresnet, shared_data):
    clip = sorted((shared_data / "real_pairs").glob("*.mp4"))[0]
    out = tmp_path / "tiled"
    main(["--tiled", str(clip), "--max_frames", "8", "--frame_stride", "4", "--arcface_weights", tiny_iresnet,
          "--csim_weights", tiny_iresnet, "--random_init", "--output_dir", str(out), "--no_progress", "--num_threads", "1"])
    res = json.loads((out / "results.json").read_text())
    assert res["method_order"] == ["Source (real)", "STCCL_VD", "NED"]
    assert res["unreadable"] == []
    for m in ("STCCL_VD", "NED"):
        assert np.isfinite(res["methods"][m]["FAD"]) and -1 <= res["methods"][m]["CSIM"] <= 1
        assert np.isfinite(res["methods"][m]["LSE-D"])
    assert "FAD" not in res["methods"]["Source (real)"]
    assert any("resampled from 30 fps to 25 fps" in n for c in res["clips"] for n in c.get("lse_notes", []))
    assert any("--max_frames 8" in n for n in res["notes"])


def test_python_dash_m_entry_point_shows_help(capsys, monkeypatch):
    import runpy

    monkeypatch.setattr(sys, "argv", ["stccl-eval", "--help"])  # what `python -m stccl_diffusers.eval --help` runs
    with pytest.raises(SystemExit) as err:
        runpy.run_module("stccl_diffusers.eval", run_name="__main__")
    out = capsys.readouterr().out
    assert err.value.code == 0 and "--syncnet_weights" in out and "--tiled" in out


def test_cli_accepts_plugged_in_pair_and_set_metrics(tmp_path, tiny_iresnet):
    ref, gen_a, gen_b = _make_folders(tmp_path)
    seen = []

    def frame_count(pair, ctx):  # a per-clip-pair section, as the correlation analysis will be
        seen.append((pair.method, pair.name))
        return {"frames_generated": float(len(pair.generated))}

    def methods_seen(method, ctx):  # a per-method section
        return {"pairs_seen": float(sum(m == method for m, _ in seen))}

    out = tmp_path / "plug"
    main(["--reference_dir", str(ref), "--generated", f"A={gen_a}", "--aligned", "--metrics", "csim",
          "--csim_weights", tiny_iresnet, "--output_dir", str(out), "--no_progress", "--no_real_row",
          "--frame_stride", "4", "--num_threads", "1"],
         extra_pair_metrics=[frame_count], extra_set_metrics=[methods_seen])
    res = json.loads((out / "results.json").read_text())
    assert sorted(seen) == [("A", "clip1"), ("A", "clip2")]
    assert res["methods"]["A"]["frames_generated"] == 7.0 and res["methods"]["A"]["pairs_seen"] == 2.0
    assert res["random_weights"] == []
    md = (out / "results.md").read_text()
    assert "## Further measures" in md and "frames_generated" in md and "RANDOM" not in md
