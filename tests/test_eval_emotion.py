"""Acc_emo: the Emotion-FAN loader on random weights written in the public checkpoint format,
the clip score of the published evaluation path, labels from MEAD names / a mapping file."""

import argparse
import json

import numpy as np
import pytest
import torch

from stccl_diffusers.eval.emotion import (
    EMOTION_FAN_CLASSES,
    EmotionAccuracy,
    emotion_from_name,
    load_emotion_fan,
    read_emotion_labels,
    resolve_emotion_classifier,
)

torch.set_num_threads(1)


def _public_state_dict(seed=0):
    """Emotion-FAN resnet18_at's state_dict, names and shapes written from the public networks.py
    (not from our class): 20 convs, 20 BNs, alpha/beta/pred_fc1/pred_fc2 linears = 128 keys."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def conv(name, cout, cin, k):
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5

    def bn(name, c):
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_var"] = 1 + 0.1 * torch.rand(c, generator=g)
        sd[f"{name}.num_batches_tracked"] = torch.tensor(7)

    def linear(name, cout, cin):
        sd[f"{name}.weight"] = torch.randn(cout, cin, generator=g) / cin ** 0.5
        sd[f"{name}.bias"] = 0.1 * torch.randn(cout, generator=g)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for i, w in enumerate((64, 128, 256, 512), start=1):
        for b in (0, 1):
            conv(f"layer{i}.{b}.conv1", w, cin if b == 0 else w, 3)
            bn(f"layer{i}.{b}.bn1", w)
            conv(f"layer{i}.{b}.conv2", w, w, 3)
            bn(f"layer{i}.{b}.bn2", w)
            if b == 0 and i > 1:
                conv(f"layer{i}.0.downsample.0", w, cin, 1)
                bn(f"layer{i}.0.downsample.1", w)
        cin = w
    linear("alpha.0", 1, 512)
    linear("beta.0", 1, 1024)
    linear("pred_fc1", 8, 512)
    linear("pred_fc2", 8, 1024)
    return sd


def _save_like_emotion_fan(path, sd):
    # util.save_checkpoint of the public code: the DataParallel model's state_dict ("module." keys).
    torch.save({"epoch": 34, "state_dict": {f"module.{k}": v for k, v in sd.items()}, "accuracy": torch.tensor(99.162),
                "name": "acc_testdata"}, path)


def test_loads_a_checkpoint_in_the_public_format_and_scores_a_clip_like_the_published_eval(tmp_path):
    sd = _public_state_dict()
    assert len(sd) == 128
    path = tmp_path / "self_relation-attention_33_99.162"  # save_checkpoint's file name
    _save_like_emotion_fan(path, sd)
    model = load_emotion_fan(path)
    assert model.at_type == "self_relation-attention" and model.checkpoint_meta["epoch"] == 34
    assert model.checkpoint_meta["accuracy"] == pytest.approx(99.162)
    torch.testing.assert_close(model.layer3[0].downsample[0].weight, sd["layer3.0.downsample.0.weight"])
    torch.testing.assert_close(model.pred_fc2.weight, sd["pred_fc2.weight"])

    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f, alpha = model.frame_features(x)
        logits = model(x)
    # The published eval path, computed here in numpy from the file's own tensors.
    f, a = f.double().numpy(), alpha.double().numpy()
    np.testing.assert_allclose(a, 1 / (1 + np.exp(-(f @ sd["alpha.0.weight"].double().numpy().T + sd["alpha.0.bias"].double().numpy()))), rtol=1e-5)
    vm = (f * a).sum(0) / a.sum()
    c = np.concatenate([f, np.repeat(vm[None], len(f), 0)], 1)
    beta = 1 / (1 + np.exp(-(c @ sd["beta.0.weight"].double().numpy().T + sd["beta.0.bias"].double().numpy())))
    pooled = (c * a).sum(0) / (a * beta).sum()
    expected = pooled @ sd["pred_fc2.weight"].double().numpy().T + sd["pred_fc2.bias"].double().numpy()
    np.testing.assert_allclose(logits.double().numpy(), expected, rtol=1e-4, atol=1e-5)

    # A self-attention checkpoint (file name from save_checkpoint) scores with pred_fc1 on vm.
    path1 = tmp_path / "self-attention_10_80.0"
    _save_like_emotion_fan(path1, sd)
    m1 = load_emotion_fan(path1)
    with torch.no_grad():
        l1 = m1(x).double().numpy()
    np.testing.assert_allclose(l1, vm @ sd["pred_fc1.weight"].double().numpy().T + sd["pred_fc1.bias"].double().numpy(), rtol=1e-4, atol=1e-5)


def test_older_files_without_num_batches_tracked_and_fer_plus_fc_are_accepted(tmp_path):
    sd = {k: v for k, v in _public_state_dict().items() if not k.endswith("num_batches_tracked")}
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(8, 512), torch.zeros(8)  # the FER+ pretraining head, dropped as upstream does
    path = tmp_path / "emotion_fan.pth"
    torch.save(sd, path)  # a plain state_dict
    torch.testing.assert_close(load_emotion_fan(path).conv1.weight, sd["conv1.weight"])


def test_a_wrong_checkpoint_is_refused_with_what_was_expected(tmp_path):
    sd = _public_state_dict()
    del sd["pred_fc2.bias"]
    sd["pred_fc1.weight"] = torch.zeros(7, 512)  # a 7-class head (AFEW), not MEAD's 8
    path = tmp_path / "bad.pth.tar"
    _save_like_emotion_fan(path, sd)
    with pytest.raises(ValueError) as err:
        load_emotion_fan(path)
    msg = str(err.value)
    assert "pred_fc2.bias" in msg and "pred_fc1.weight: expected (8, 512), got (7, 512)" in msg


def test_a_checkpoint_needing_unsafe_unpickling_is_refused_clearly(tmp_path):
    path = tmp_path / "pickled.pth.tar"
    torch.save({"state_dict": _public_state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ValueError, match="weights_only=True.*not loaded"):
        load_emotion_fan(path)
    with pytest.raises(FileNotFoundError, match="--emotion_weights"):
        load_emotion_fan(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="--emotion_weights"):
        resolve_emotion_classifier(None)


def test_labels_from_mead_names_and_mapping_files(tmp_path):
    assert emotion_from_name("M003_source_sad_033") == "sad"
    assert emotion_from_name("W015_source_disgusted_029") == "disgusted"
    assert emotion_from_name("M030_surprise_level3_001") == "surprised"
    assert emotion_from_name("clip_0001") is None
    with pytest.raises(ValueError, match="several emotions"):
        emotion_from_name("M003_neutral_to_happy")
    j = tmp_path / "labels.json"
    j.write_text(json.dumps({"a": "Happy", "b": "disgust"}))
    assert read_emotion_labels(j) == {"a": "happy", "b": "disgusted"}
    t = tmp_path / "labels.txt"
    t.write_text("# clip,emotion\na,angry\nb fear\n")
    assert read_emotion_labels(t) == {"a": "angry", "b": "fear"}
    t.write_text("a,bored\n")
    with pytest.raises(ValueError, match="'bored'"):
        read_emotion_labels(t)


def test_accuracy_per_emotion_with_a_plugged_in_classifier():
    from stccl_diffusers.eval.runner import ClipPair, MetricSkipped

    def clf(x):  # "happy" when the faces are bright, else "sad"
        s = torch.full((8,), -5.0)
        s[EMOTION_FAN_CLASSES.index("happy" if x.mean() > 0.5 else "sad")] = 5.0
        return s

    acc = EmotionAccuracy(clf, labels={"c3": "sad"}, aligned=True)
    bright, dark = np.full((4, 32, 32, 3), 220, np.uint8), np.full((4, 32, 32, 3), 20, np.uint8)
    rows = [acc.pair_metric(ClipPair("M1_happy_001", "A", bright, 25.0)),  # right
            acc.pair_metric(ClipPair("M1_happy_002", "A", dark, 25.0)),  # wrong
            acc.pair_metric(ClipPair("c3", "A", dark, 25.0))]  # right, label from the mapping
    assert [r["acc_emo"] for r in rows] == [1.0, 0.0, 1.0] and rows[1]["emotion_pred"] == "sad"
    assert acc.set_metric("A")["acc_emo_per_emotion"] == {"happy": {"correct": 1, "n": 2, "acc": 0.5}, "sad": {"correct": 1, "n": 1, "acc": 1.0}}
    with pytest.raises(MetricSkipped, match="no emotion label"):
        acc.pair_metric(ClipPair("clip9", "A", dark, 25.0))
    with pytest.raises(MetricSkipped, match="real clip"):
        acc.pair_metric(ClipPair("M1_sad_003", "real", dark, 25.0, is_real=True))


def test_stccl_eval_acc_emo_on_a_real_tile_with_an_emotion_fan_checkpoint(tmp_path, shared_data):
    """End to end with the default classifier: the checkpoint file in Emotion-FAN's format (random
    weights), dlib face chips of a real comparison video, the label from the MEAD file name."""
    pytest.importorskip("dlib", reason="the `landmarks` extra (dlib-bin, face_recognition_models) is not installed")
    from stccl_diffusers.eval.cli import main
    from stccl_diffusers.eval.emotion import face_chips_224
    from stccl_diffusers.eval.eval_io import read_video
    from stccl_diffusers.data.face_align import landmark_track, make_detector

    clip = sorted((shared_data / "real_pairs").glob("*.mp4"))[0]
    weights = tmp_path / "self_relation-attention_33_99.162"
    _save_like_emotion_fan(weights, _public_state_dict())
    out = tmp_path / "out"
    main(["--tiled", str(clip), "--max_frames", "6", "--metrics", "none", "--emotion_weights", str(weights),
          "--output_dir", str(out), "--no_progress", "--num_threads", "1"])
    res = json.loads((out / "results.json").read_text())
    label = emotion_from_name(clip.stem)
    rows = [c for c in res["clips"] if c["method"] in ("STCCL_VD", "NED")]
    assert len(rows) == 2 and res["unreadable"] == []
    for c in rows:
        assert c["emotion_label"] == label and c["emotion_pred"] in EMOTION_FAN_CLASSES
        assert c["acc_emo"] == float(c["emotion_pred"] == label)
        assert sum(c["emotion_probs"].values()) == pytest.approx(1.0)
    assert res["methods"]["STCCL_VD"]["acc_emo_per_emotion"][label]["n"] == 1
    assert not any(x["measure"] == "Acc_emo" for x in res["left_out"])
    # The chips are dlib face chips: 224x224, the face filling the centre (eyes in the upper half).
    frames = read_video(clip, max_frames=2)[0][:, :, 512:768]
    track = landmark_track(frames, make_detector("dlib"))
    chips, dropped = face_chips_224(frames, track.boxes)
    assert chips.shape == (2, 224, 224, 3) and dropped == 0
    boxes = track.boxes.copy()
    boxes[1] = np.nan  # no face in frame 1: left out, counted
    one, dropped = face_chips_224(frames, boxes)
    assert one.shape == (1, 224, 224, 3) and dropped == 1
    np.testing.assert_array_equal(one[0], chips[0])
    with pytest.raises(ValueError, match="no face in any frame"):
        face_chips_224(frames, np.full((2, 4), np.nan))
    again = landmark_track(chips, make_detector("dlib"))
    assert again.found.all()
    eyes_y = again.points68[:, 36:48, 1].mean()
    assert 60 < eyes_y < 112
