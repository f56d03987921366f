"""Training conditioning == DICE-Talk's inference conditioning, on the same clip.

DICE-Talk's own preprocessing is run from its checkout: `image_audio_emo_to_tensor` and
`get_audio_feature` (src/dataset/test_preprocess.py) and `test()` (dice_talk.py), whose per-frame
audio/emotion tensors are captured by a recording pipe. Those functions are read from the files
and executed as they are (their modules import torchvision/omegaconf/RIFE, which this
environment does not need: torchvision's ToTensor/Normalize are supplied by a few-line
equivalent, and the inference `"cuda"` moves are no-ops). Nothing of DICE-Talk is copied.
"""

from __future__ import annotations

import ast
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.test_dice_talk_real import DICE_ROOT, _metric, dice_weights  # noqa: F401  (module fixture)

pytestmark = pytest.mark.skipif(not (DICE_ROOT / "dice_talk.py").is_file(),
                                reason=f"DICE-Talk's source is not at {DICE_ROOT}")
SIZE, T, START = 128, 3, 2
CLIP = DICE_ROOT.parent.parent / "data" / "real_pairs" / "M012_source_happy_037.mp4"


def _dice_functions(path: Path, names, env: dict) -> dict:
    """DICE-Talk's top-level functions `names` from `path`, executed in `env` (their own source)."""
    tree = ast.parse(path.read_text())
    mod = ast.Module(body=[n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names], type_ignores=[])
    exec(compile(mod, str(path), "exec"), env)
    return env


class _NoCuda(torch.Tensor):
    """dice_talk.test() moves the batch to "cuda"; on this CPU machine that move is a no-op."""

    def to(self, *args, **kwargs):
        if kwargs.get("device") == "cuda" or (args and args[0] == "cuda"):
            kwargs.pop("device", None)
            args = tuple(a for a in args if a != "cuda")
            if not args and not kwargs:
                return self
        return super().to(*args, **kwargs)


def _transforms():
    def to_tensor(img):
        a = np.asarray(img, dtype=np.float32) / 255.0
        return torch.from_numpy(a.reshape(*a.shape[:2], -1)).permute(2, 0, 1).contiguous()

    def normalize(mean, std):
        return lambda x: (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)

    def compose(fs):
        def run(x):
            for f in fs:
                x = f(x)
            return x
        return run

    return types.SimpleNamespace(Compose=compose, ToTensor=lambda: to_tensor, Normalize=normalize)


@pytest.mark.skipif(not CLIP.is_file(), reason=f"real MEAD clip not at {CLIP}")
def test_audio_emotion_mask_and_time_ids_match_dice_talks_inference(dice_weights, tmp_path):  # noqa: F811
    import cv2
    import librosa
    import soundfile
    from PIL import Image
    from transformers import CLIPImageProcessor
    from tqdm import tqdm

    from stccl_diffusers.adapters.dice.dice_talk import build_dice_talk_adapter, dice_face_box
    from stccl_diffusers.data.video_io import read_video
    from stccl_diffusers.eval.faces import detect_face_box

    adapter = build_dice_talk_adapter(dice_weights, metric=None)
    clip = read_video(str(CLIP), sample_rate=16000, require_audio=True)
    face = cv2.resize(clip.frames[0][:, :256], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    image_path, wav_path = tmp_path / "ref.png", tmp_path / "clip.wav"
    Image.fromarray(face).save(image_path)
    soundfile.write(str(wav_path), clip.audio[:12800], 16000)  # 0.8 s: 10 frames at 12.5 fps
    config = yaml.safe_load((DICE_ROOT / "config/inference/dice_talk.yaml").read_text())

    def align(image_bgr, maxface=True):  # DICE-Talk's AlignImage interface, the package's detector
        box = detect_face_box(np.ascontiguousarray(image_bgr[:, :, ::-1]))
        return None, None, [] if box is None else [box]

    env = _dice_functions(DICE_ROOT / "src/dataset/test_preprocess.py", {"get_audio_feature", "image_audio_emo_to_tensor"},
                          dict(np=np, torch=torch, Image=Image, librosa=librosa, CLIPImageProcessor=CLIPImageProcessor,
                               transforms=_transforms()))
    data = env["image_audio_emo_to_tensor"](align, adapter.feature_extractor, str(image_path), str(wav_path),
                                            str(DICE_ROOT / "examples/emo/happy.npy"), limit=config["frame_num"],
                                            image_size=SIZE, area=config["area"])
    captured = {}

    class Pipe:
        def __call__(self, ref, clip_img, poses, audios, uncond_audios, emos, uncond_emos, **kw):
            captured.update(poses=poses, audios=audios, uncond_audios=uncond_audios, emos=emos, kw=kw)
            return types.SimpleNamespace(frames=torch.zeros(1, 3, 1, 2, 2).as_subclass(_NoCuda))

    run = _dice_functions(DICE_ROOT / "dice_talk.py", {"test"}, dict(torch=torch, tqdm=tqdm))["test"]
    batch = {k: (v.as_subclass(_NoCuda) if isinstance(v, torch.Tensor) else v) for k, v in data.items()}
    with torch.no_grad():
        run(Pipe(), types.SimpleNamespace(**config), adapter.whisper, adapter.audio_linear, adapter.emo_model,
            SIZE, SIZE, batch)

    # The training side: the same clip at 12.5 fps, whole-clip audio, frames START..START+T.
    ref = torch.from_numpy(face).permute(2, 0, 1).float()[None] / 127.5 - 1
    train_batch = {"reference": ref, "frames": torch.zeros(1, T, 3, SIZE, SIZE), "emotion": torch.tensor([1]),
                   "clip_audio": torch.from_numpy(librosa.load(str(wav_path), sr=16000)[0])[None],
                   "start_frame": torch.tensor([START])}
    train_batch["clip_audio_len"] = torch.tensor([train_batch["clip_audio"].shape[1]])
    from stccl_diffusers.models.reference_dice import DICE_EMOTIONS

    train_batch["emotion"] = torch.tensor([DICE_EMOTIONS.index("happy")])
    with torch.no_grad():
        cond = adapter.conditions(train_batch, adapter.target_prior(train_batch), (None, None, None))
    torch.testing.assert_close(cond.audio_tokens, torch.stack(captured["audios"][START:START + T]).float(),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cond.emo_tokens, torch.stack(captured["emos"][START:START + T]).float(), atol=1e-5, rtol=1e-4)
    # Face mask: DICE-Talk's mask image (same for every frame) vs ours from the same detector.
    theirs = captured["poses"][0].float()
    assert theirs.shape == (3, SIZE, SIZE) and theirs.sum() > 0
    torch.testing.assert_close(cond.face_mask[0, 0], theirs[0])
    ours_box = dice_face_box(face, config["area"])
    assert ours_box is not None
    # Time ids: what dice_talk.test() hands its pipeline, through DicePipeline._get_add_time_ids' order.
    kw = captured["kw"]
    assert adapter.time_ids == (kw["fps"], kw["motion_bucket_id"], kw["motion_bucket_id_exp"])
    assert (config["step"], config["retrieval"]) == (adapter.audio_step, adapter.retrieval)
