"""Validation grids and videos carry labels (emotion, step, row names) and an optional no-STCCL row."""

from __future__ import annotations

import numpy as np
import torch

from stccl_diffusers.training.validation import BeforeSTCCLRow, labelled_grid, labelled_video, save_validation_media


def _clip(value: float, T: int = 3, H: int = 8):
    return torch.full((1, T, 3, H, H), value)


def test_labelled_grid_has_one_row_per_stream_a_title_bar_and_dark_label_text():
    two = labelled_grid([("target\n(happy)", _clip(0.5)), ("neutral anchor", _clip(-0.5))], "", upscale=2)
    three = labelled_grid([("target\n(happy)", _clip(0.5)), ("neutral anchor", _clip(-0.5)),
                           ("no STCCL", _clip(0.0))], "emotion: happy  step 40", upscale=2)
    assert three.shape[0] > two.shape[0] + 8 * 2  # a third row of frames, plus the title bar
    assert three.shape[1] == two.shape[1]
    label_col = two[: 16, : 150]
    assert label_col.min() < 100  # text drawn in the label column (it is white otherwise)
    blank = labelled_grid([("", _clip(0.5))], "", upscale=2)
    assert blank[:16, :150].min() == 255


def test_labelled_video_puts_streams_side_by_side_with_even_sides():
    v = labelled_video([("target", _clip(0.5, T=4)), ("anchor", _clip(-0.5, T=4)), ("no STCCL", _clip(0.0, T=4))],
                       "emotion: sad  step 0", upscale=3)
    assert v.shape[0] == 4 and v.shape[1] % 2 == 0 and v.shape[2] % 2 == 0
    assert v.shape[2] >= 3 * 8 * 3 - 1


def test_save_validation_media_rejects_a_mismatched_extra_row(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="shape"):
        save_validation_media(_clip(0.5), _clip(-0.5), tmp_path, "v", fps=25.0,
                              extra_rows=[("no STCCL", _clip(0.0, T=5))], upscale=1)


def test_before_stccl_row_keeps_the_last_render_while_the_weight_was_zero():
    row = BeforeSTCCLRow(lambda step: 0.0 if step < 60 else 1.0)
    assert row(None, None, None, 0, {"target": _clip(-1.0)})[1].mean() == -1.0
    assert row(None, None, None, 40, {"target": _clip(0.25)})[0] == "no STCCL yet\n(step 40)"
    label, frames = row(None, None, None, 120, {"target": _clip(0.9)})
    assert label.endswith("(step 40)") and torch.allclose(frames, _clip(0.25))
    assert BeforeSTCCLRow(lambda s: 1.0)(None, None, None, 0, {"target": _clip(0.0)}) is None


def test_before_stccl_row_counts_the_validation_right_after_the_warmup_as_stccl_free():
    # Validation at step 60 follows optimizer steps 0..59, all with weight 0 (warm-up of 60 steps).
    row = BeforeSTCCLRow(lambda step: 0.0 if step < 60 else 1.0)
    row(None, None, None, 60, {"target": _clip(0.5)})
    label, frames = row(None, None, None, 120, {"target": _clip(0.9)})
    assert label.endswith("(step 60)") and torch.allclose(frames, _clip(0.5))


def test_the_loss_plot_draws_stccl_only_on_gated_steps(tmp_path, monkeypatch):
    import matplotlib.axes

    from stccl_diffusers.training.validation import plot_loss_curves

    drawn = {}
    real_plot = matplotlib.axes.Axes.plot

    def spy(ax, *args, **kwargs):
        drawn.setdefault(len(drawn), list(args[0]) if args else [])
        return real_plot(ax, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    log = [{"step": 1, "loss": 2.0, "stccl": 1.5, "stccl_num_scored": 1.0},
           {"step": 2, "loss": 0.2, "stccl": 0.0, "stccl_num_scored": 0.0},  # not gated: no STCCL this step
           {"step": 3, "loss": 2.1, "stccl": 1.4, "stccl_num_scored": 2.0}]
    plot_loss_curves(log, tmp_path / "curves.png")
    assert drawn[0] == [1, 2, 3]  # loss: every step
    assert drawn[1] == [1, 3]  # stccl: the gated steps only
    assert (tmp_path / "curves.png").stat().st_size > 0
