"""Emotion accuracy (Acc_emo) with an Emotion-FAN classifier, as EAT's evaluation reports it.

EAT's evaluation (yuangan/evaluation_eat, ``_acc_test.py``) classifies each generated video with
Emotion-FAN (Open-Debin/Emotion-FAN, Meng et al. 2019) fine-tuned on MEAD and reports the share of
videos whose predicted class is the intended emotion, overall and per emotion. This module
rebuilds that classifier from its published architecture and reads its checkpoint:

* **Network** ``resnet18_at``: a ResNet-18 trunk (conv1 7x7/2 + BN + ReLU + max-pool,
  ``layer1``-``layer4`` of two BasicBlocks, global average pool -> f (512,)), an attention
  ``alpha = Sequential(Linear(512, 1), Sigmoid)``, a relation attention
  ``beta = Sequential(Linear(1024, 1), Sigmoid)`` and two heads ``pred_fc1`` (512 -> 8) and
  ``pred_fc2`` (1024 -> 8). State-dict names are those of the public code (128 keys).
* **Checkpoint** (``util.save_checkpoint``, files named ``<at_type>_<epoch>_<accuracy>``):
  ``torch.save({"epoch": int, "state_dict": <DataParallel state_dict, keys "module.*">,
  "accuracy": tensor, "name": str})``. It holds tensors, numbers and strings only, so it is read
  with ``torch.load(weights_only=True)``; a file that needs other pickled objects is refused with a
  clear error (it cannot be read safely). A plain state_dict is accepted too.
* **Classes** (EAT's MEAD mapping ``cate2label['MEAD']``): 0 happy, 1 angry, 2 disgusted,
  3 fear, 4 sad, 5 neutral, 6 surprised, 7 contempt (:data:`EMOTION_FAN_CLASSES`).
* **Input**: face chips of 224x224 RGB in [0, 1] (``transforms.Resize(224), ToTensor()``, no
  mean/std), cut like Emotion-FAN's ``face_align_cuda.py``: dlib's 5-point predictor on the face
  box, ``dlib.get_face_chip(img, shape, size=224, padding=0.25)``; frames without a face are left
  out (:func:`face_chips_224`).
* **Video score** (the evaluation path of the public code, ``phrase='eval'``): per frame f_i and
  alpha_i; ``vm = sum_i alpha_i f_i / sum_i alpha_i``. ``self-attention``: logits =
  ``pred_fc1(vm)``. ``self_relation-attention`` (EAT's choice, ``--at_type 1``):
  ``c_i = [f_i, vm]`` (1024), ``beta_i = beta(c_i)``, logits =
  ``pred_fc2(sum_i alpha_i c_i / sum_i alpha_i beta_i)``. The numerator is weighted by alpha
  only, the denominator by alpha * beta: that is what the published evaluation computes, kept as is.

The classifier is pluggable (``--emotion_classifier package.module:factory``):
``factory(weights=<path or None>)`` returns a callable ``clf(faces) -> (C,)`` clip scores, faces
(T, 3, 224, 224) float RGB in [0, 1]; its class names are ``clf.classes`` (default
:data:`EMOTION_FAN_CLASSES`).
"""

from __future__ import annotations

import json
import os
import re
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..models.checkpoints import state_dict_mismatch, strip_prefix
from .csim import load_plugin

__all__ = ["EMOTION_FAN_CLASSES", "EMOTION_ALIASES", "EmotionFAN", "load_emotion_fan", "read_emotion_fan_checkpoint",
           "resolve_emotion_classifier", "emotion_from_name", "read_emotion_labels", "face_chips_224", "classify_clip",
           "EmotionAccuracy"]

EMOTION_FAN_CLASSES: Tuple[str, ...] = ("happy", "angry", "disgusted", "fear", "sad", "neutral", "surprised", "contempt")
# Spellings found in MEAD names and label files -> the canonical class name.
EMOTION_ALIASES: Dict[str, str] = {
    "happy": "happy", "happiness": "happy", "angry": "angry", "anger": "angry", "disgusted": "disgusted", "disgust": "disgusted",
    "fear": "fear", "fearful": "fear", "sad": "sad", "sadness": "sad", "neutral": "neutral", "surprised": "surprised",
    "surprise": "surprised", "contempt": "contempt", "contemptuous": "contempt",
}
AT_TYPES = ("self-attention", "self_relation-attention")


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class EmotionFAN(nn.Module):
    """Emotion-FAN ``resnet18_at`` in the public state-dict layout. ``forward(faces)`` scores one
    clip: faces (T, 3, 224, 224) float RGB in [0, 1] -> logits (8,) (classes
    :data:`EMOTION_FAN_CLASSES`), by the evaluation path of the public code (module docstring)."""

    classes = EMOTION_FAN_CLASSES

    def __init__(self, at_type: str = "self_relation-attention", num_classes: int = 8):
        super().__init__()
        if at_type not in AT_TYPES:
            raise ValueError(f"expected at_type one of {AT_TYPES}, got {at_type!r}")
        self.at_type = at_type
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, cin = (64, 128, 256, 512), 64
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(_BasicBlock(cin, w, stride), _BasicBlock(w, w)))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.alpha = nn.Sequential(nn.Linear(512, 1), nn.Sigmoid())
        self.beta = nn.Sequential(nn.Linear(1024, 1), nn.Sigmoid())
        self.pred_fc1 = nn.Linear(512, num_classes)
        self.pred_fc2 = nn.Linear(1024, num_classes)

    def frame_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(T, 3, 224, 224) [0, 1] RGB -> (f (T, 512), alpha (T, 1))."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected face chips (T, 3, 224, 224) RGB in [0, 1], got {tuple(x.shape)}")
        f = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f = self.layer4(self.layer3(self.layer2(self.layer1(f))))
        f = self.avgpool(f).flatten(1)
        return f, self.alpha(f)  # dropout before alpha is the identity in eval mode

    def head(self, f: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Clip logits (C,) from all frames' f (T, 512) and alpha (T, 1) (module docstring)."""
        vm = (f * alpha).sum(0, keepdim=True) / alpha.sum()
        if self.at_type == "self-attention":
            return self.pred_fc1(vm)[0]
        c = torch.cat([f, vm.expand_as(f)], dim=1)
        beta = self.beta(c)
        return self.pred_fc2((c * alpha).sum(0, keepdim=True) / (alpha * beta).sum())[0]

    def forward(self, faces: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        fs, alphas = [], []
        for i in range(0, len(faces), batch_size):
            f, a = self.frame_features(faces[i:i + batch_size])
            fs.append(f)
            alphas.append(a)
        return self.head(torch.cat(fs), torch.cat(alphas))


def read_emotion_fan_checkpoint(path: Union[str, os.PathLike]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """(state_dict without ``module.``, metadata {epoch, accuracy, name}) of an Emotion-FAN file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--emotion_weights: file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- pickle errors come in several types
        # torch's message spans many lines; the "Unsupported global" line names the offending object.
        why = next((ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln), str(e).splitlines()[0] if str(e) else "")
        raise ValueError(f"{path}: could not be read with torch.load(weights_only=True) ({type(e).__name__}: {why}). Emotion-FAN's "
                         "checkpoints hold only tensors, numbers and strings; this file needs other pickled objects and is not "
                         "loaded (unsafe). Re-save its state_dict: torch.save(torch.load(f)['state_dict'], 'emotion_fan.pth')") from e
    meta = {}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        meta = {k: (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v) for k, v in obj.items() if k != "state_dict"}
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected Emotion-FAN's checkpoint {{'epoch', 'state_dict', 'accuracy', 'name'}} or a state_dict, "
                         f"got {type(obj).__name__}")
    return strip_prefix(obj, "module."), meta


def load_emotion_fan(path: Union[str, os.PathLike], at_type: Optional[str] = None) -> EmotionFAN:
    """An :class:`EmotionFAN` in eval mode from a checkpoint in the public format.

    ``at_type``: the attention the checkpoint was trained with; None reads it from the file name
    (``self-attention_*`` or ``self_relation-attention_*``, as ``save_checkpoint`` names them) and
    falls back to ``self_relation-attention`` (EAT's setting). A FER+ pretraining file's ``fc.*``
    (the ImageNet-style head Emotion-FAN drops too) is ignored; every other key must fit."""
    sd, meta = read_emotion_fan_checkpoint(path)
    if at_type is None:
        base = os.path.basename(os.fspath(path))
        at_type = "self-attention" if base.startswith("self-attention") else "self_relation-attention"
    model = EmotionFAN(at_type)
    sd = {k: v for k, v in sd.items() if k not in ("fc.weight", "fc.bias")}
    own = model.state_dict()
    # Files saved by older PyTorch carry no num_batches_tracked buffers.
    optional = [k for k in own if k.endswith("num_batches_tracked")]
    problem = state_dict_mismatch(own, sd, f"{os.fspath(path)} does not match Emotion-FAN resnet18_at", optional)
    if problem:
        raise ValueError(problem)
    model.load_state_dict(sd, strict=False)
    model.checkpoint_meta = meta
    return model.eval()


def resolve_emotion_classifier(spec: Union[None, str, Callable], weights=None, at_type: Optional[str] = None) -> Callable:
    """``--emotion_classifier``: ``"emotion_fan"`` (default; ``weights`` required) or
    ``"package.module:factory"`` (``factory(weights=...)``) or a callable."""
    if callable(spec):
        return spec
    if spec in (None, "", "emotion_fan"):
        if weights is None:
            raise ValueError("Acc_emo needs an emotion classifier: pass --emotion_weights /path/to/emotion_fan_checkpoint "
                             "(Emotion-FAN fine-tuned on MEAD, as EAT's evaluation), or --emotion_classifier package.module:factory")
        return load_emotion_fan(weights, at_type)
    return load_plugin(spec, weights, "--emotion_classifier", "--emotion_weights", "emotion_fan", "classifier")


def emotion_from_name(name: str) -> Optional[str]:
    """The MEAD emotion word in a clip name (``M003_source_sad_033`` -> ``sad``), canonical
    spelling; None when there is none. Two different emotion words -> ValueError (ambiguous)."""
    found = {EMOTION_ALIASES[t] for t in re.split(r"[^a-z]+", name.lower()) if t in EMOTION_ALIASES}
    if len(found) > 1:
        raise ValueError(f"clip name {name!r} names several emotions {sorted(found)}: give the label in --emotion_labels")
    return found.pop() if found else None


def read_emotion_labels(path: Union[str, os.PathLike]) -> Dict[str, str]:
    """``--emotion_labels``: a JSON object ``{clip name: emotion}`` or a text file of ``name,emotion``
    (or whitespace-separated) lines; emotions in any spelling of :data:`EMOTION_ALIASES`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--emotion_labels: file not found: {path}")
    text = open(path, encoding="utf-8").read()
    if path.lower().endswith(".json"):
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"--emotion_labels {path}: expected a JSON object {{clip name: emotion}}, got {type(raw).__name__}")
        items = list(raw.items())
    else:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = [p for p in re.split(r"[,\s]+", line.strip()) if p]
            if len(parts) != 2:
                raise ValueError(f"--emotion_labels {path}:{n}: expected 'clip_name,emotion', got {line!r}")
            items.append((parts[0], parts[1]))
    out = {}
    for name, emo in items:
        key = str(emo).strip().lower()
        if key not in EMOTION_ALIASES:
            raise ValueError(f"--emotion_labels {path}: clip {name!r} has emotion {emo!r}; expected one of {sorted(set(EMOTION_ALIASES))}")
        out[str(name)] = EMOTION_ALIASES[key]
    return out


def face_chips_224(frames: np.ndarray, boxes: Optional[np.ndarray], aligned: bool = False) -> Tuple[np.ndarray, int]:
    """Emotion-FAN face chips (N, 224, 224, 3) uint8 RGB and the number of frames left out (no face).

    Emotion-FAN's ``face_align_cuda.py``: dlib's 5-point predictor on the face box, then
    ``dlib.get_face_chip(img, shape, size=224, padding=0.25)``; a frame without a face is left out
    (it writes no chip). Here the boxes come from the clip's landmark track (dlib's HOG detector
    with the dlib backend); the 5-point predictor is the one ``face_recognition_models`` ships
    (``shape_predictor_5_face_landmarks.dat``, the file Emotion-FAN's script loads). Emotion-FAN's
    CNN-detector and histogram-equalisation retries for missed faces are not repeated.

    frames: (T, H, W, 3) uint8 RGB; boxes: (T, 4) (x, y, w, h) pixels, NaN rows = no face.
    ``aligned``: frames are already face crops, resized to 224 instead (nothing left out)."""
    import cv2

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected frames (T, H, W, 3) uint8 RGB, got {frames.shape} {frames.dtype}")
    if aligned:
        return np.stack([cv2.resize(f, (224, 224), interpolation=cv2.INTER_AREA) for f in frames]), 0
    boxes = None if boxes is None else np.asarray(boxes, np.float64)
    if boxes is None or boxes.shape != (len(frames), 4):
        raise ValueError(f"expected face boxes (T, 4) = ({len(frames)}, 4) for Acc_emo face chips, got {None if boxes is None else boxes.shape}")
    ok = np.nonzero(np.isfinite(boxes).all(1))[0]
    if not len(ok):
        raise ValueError("no face in any frame: Acc_emo not computed")
    import dlib

    from ..data.face_align import _face_recognition_models_dir

    predictor = _five_point_predictor(os.path.join(_face_recognition_models_dir(), "shape_predictor_5_face_landmarks.dat"))
    chips = []
    for t in ok:
        x, y, w, h = boxes[t]
        rect = dlib.rectangle(int(round(x)), int(round(y)), int(round(x + w)), int(round(y + h)))
        img = np.ascontiguousarray(frames[t])
        chips.append(np.asarray(dlib.get_face_chip(img, predictor(img, rect), size=224, padding=0.25)))
    return np.stack(chips), int(len(frames) - len(ok))


_PREDICTORS: Dict[str, object] = {}


def _five_point_predictor(path: str):
    if path not in _PREDICTORS:  # loading the model file costs ~0.1 s: once per process
        import dlib

        if not os.path.isfile(path):
            raise ValueError(f"expected dlib's 5-point predictor at {path!r} (from face_recognition_models), it is missing")
        _PREDICTORS[path] = dlib.shape_predictor(path)
    return _PREDICTORS[path]


@torch.no_grad()
def classify_clip(classifier: Callable, chips224: np.ndarray, device="cpu") -> np.ndarray:
    """(T, 224, 224, 3) uint8 RGB chips -> (C,) float64 class probabilities (softmax of the scores)."""
    x = torch.from_numpy(np.ascontiguousarray(chips224)).permute(0, 3, 1, 2).float().div(255.0).to(device)
    if isinstance(classifier, nn.Module):
        classifier.eval().to(device)
    scores = classifier(x)
    if not isinstance(scores, torch.Tensor) or scores.ndim != 1:
        raise ValueError(f"emotion classifier must return (C,) clip scores, got {getattr(scores, 'shape', type(scores))}")
    return torch.softmax(scores.double().cpu(), 0).numpy()


class EmotionAccuracy:
    """``stccl-eval --emotion_weights`` plug-in: per generated clip, the predicted emotion against the
    intended one (``labels[clip]``, else the MEAD emotion word of the clip name); ``acc_emo`` = 1.0 /
    0.0 per clip, so the per-method mean is the accuracy. ``set_metric`` adds the per-emotion table
    ``acc_emo_per_emotion`` {emotion: {"correct", "n", "acc"}}. Real rows are skipped."""

    def __init__(self, classifier: Callable, labels: Optional[Dict[str, str]] = None, aligned: bool = False, device="cpu"):
        self.classifier, self.labels, self.aligned, self.device = classifier, dict(labels or {}), aligned, device
        self.classes = tuple(getattr(classifier, "classes", EMOTION_FAN_CLASSES))
        self.tally: Dict[str, Dict[str, list]] = {}  # method -> emotion -> [correct, n]

    def pair_metric(self, pair, ctx=None) -> dict:
        from .runner import MetricSkipped

        if pair.is_real:
            raise MetricSkipped("real clip: Acc_emo is measured on generated clips")
        label = self.labels.get(pair.name) or emotion_from_name(pair.name)
        if label is None:
            raise MetricSkipped(f"no emotion label for {pair.name!r} (no MEAD emotion word in the name, not in --emotion_labels)")
        if label not in self.classes:
            raise MetricSkipped(f"emotion {label!r} is not a class of the classifier {self.classes}")
        boxes = None
        if not self.aligned:
            boxes = ctx.landmarks(pair.generated_key, pair.generated).boxes
        chips, dropped = face_chips_224(pair.generated, boxes, self.aligned)
        probs = classify_clip(self.classifier, chips, self.device)
        if len(probs) != len(self.classes):
            raise ValueError(f"emotion classifier returned {len(probs)} scores for {len(self.classes)} classes {self.classes}")
        pred = self.classes[int(np.argmax(probs))]
        t = self.tally.setdefault(pair.method, {}).setdefault(label, [0, 0])
        t[0] += int(pred == label)
        t[1] += 1
        out = {"acc_emo": float(pred == label), "emotion_label": label, "emotion_pred": pred,
               "emotion_probs": {c: float(p) for c, p in zip(self.classes, probs)}}
        if dropped:
            out["emotion_note"] = f"no face in {dropped} of {len(chips) + dropped} frames: left out of the clip score (as Emotion-FAN does)"
        return out

    def set_metric(self, method: str, ctx=None) -> dict:
        t = self.tally.get(method)
        if not t:
            return {}
        return {"acc_emo_per_emotion": {e: {"correct": c, "n": n, "acc": c / n} for e, (c, n) in sorted(t.items())}}
