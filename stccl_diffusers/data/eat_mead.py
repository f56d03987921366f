"""EAT's prepared MEAD: the folder layout that EAT's stage-2 data set reads, checked and (for tests
and demos) written with synthetic content.

EAT (github yuangan/EAT_code) trains stage 2 from ``FramesWavsDatasetMEL25VoxBoxQG2ImgPrompt``
(``frames_dataset_transformer25.py``), which reads, for a clip ``{id}_{emo}_{level}_{nr}``
(``emo`` one of :data:`EAT_EMOTIONS`, e.g. ``W015_hap_3_002``)::

    {root_dir}/[train|test/]{clip}/0001.jpg ...      frames, 1-based, 256 x 256 (config dataset_params.root_dir,
                                                      .../images_evp_25/)
    {root_dir with 'images' -> 'latent'}/{clip}.npy   [kp_canonical (1, 15, 3), {yaw, pitch, roll: (N, 66),
                                                      t: (N, 3), exp: (N, 45)}] (pickled; latent_extractor.py)
    {mead_path}/deepfeature32/{clip}.npy              DeepSpeech features (N, 16, 29) float32
    {mead_path}/wav_16000/{clip}.wav                  16 kHz mono
    {mead_path}/bboxs/{clip}.npy                      per-frame face box (x1, y1, x2, y2) in 256-px pixels, or None
    {poseimg_path}/poseimg/{clip}.npy.gz              gzipped head-pose images (N, 1, 64, 64) (generate_poseimg.py)
    {vox_path}/voxselect/{Angry,...,Surprised}.txt    the VoxCeleb emotion lists (read at start; Vox clips
                                                      are drawn only with use_vox=True)

and for every clip a neutral clip ``{id}_neu_1_*`` of the same speaker in the same split (its
source frame). ``mead_path``, ``poseimg_path`` and ``vox_path`` are module constants of EAT's data
set file. This module reads none of EAT's code: :func:`check_eat_mead` names what is missing
before EAT's data set (which loops forever over clips it cannot read) is built, and
:func:`write_synthetic_eat_mead` writes a tiny set in exactly that layout.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

__all__ = ["EAT_EMOTIONS", "VOXSELECT_LISTS", "EAT_FPS", "eat_clip_emotion", "check_eat_mead",
           "write_synthetic_eat_mead"]

#: EAT's emotion codes in its label order (``y_trg``; neutral = 5).
EAT_EMOTIONS = ("ang", "con", "dis", "fea", "hap", "neu", "sad", "sur")
#: The ``voxselect`` list names EAT's data set opens (its ``emo_label_list``).
VOXSELECT_LISTS = ("Angry", "Contempt", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprised")
EAT_FPS = 25
_SAMPLE_RATE = 16000
_MEAD_NAMES = {"angry": "ang", "contempt": "con", "disgusted": "dis", "fear": "fea", "happy": "hap",
               "neutral": "neu", "sad": "sad", "surprised": "sur"}

PathLike = Union[str, os.PathLike]


def eat_clip_emotion(name: str) -> int:
    """EAT's label of a clip named ``{id}_{emo}_{level}_{nr}`` (as EAT parses it: the second field)."""
    parts = name.split("_")
    if len(parts) < 4 or parts[1] not in EAT_EMOTIONS:
        raise ValueError(f"expected a clip named {{id}}_{{emo}}_{{level}}_{{nr}} with emo in {EAT_EMOTIONS}, "
                         f"got {name!r}")
    return EAT_EMOTIONS.index(parts[1])


def _split_dirs(root_dir: Path) -> List[Path]:
    if (root_dir / "train").is_dir():
        return [root_dir / "train", root_dir / "test"]
    return [root_dir]


def check_eat_mead(root_dir: PathLike, mead_path: PathLike, poseimg_path: PathLike, vox_path: PathLike,
                   min_frames: int = 5, split: Optional[str] = None) -> Dict[str, List[str]]:
    """Check a prepared MEAD against what EAT's stage-2 data set reads; return ``{split: [clips]}``.

    ``split``: ``"train"`` or ``"test"`` checks only that folder of a ``train/`` + ``test/`` layout
    (None: all). Raises ``FileNotFoundError`` naming every missing file (at most 20, then a count)
    and ``ValueError`` for what EAT's class would crash or hang on: a ``train`` folder without
    ``test``, a root path in which 'images' occurs more than once (EAT finds latents by replacing
    every 'images' in the clip path), a clip without a neutral clip of its speaker, a split with no
    clip of ``min_frames`` frames. Shorter clips are only warned about: EAT skips them.
    """
    import warnings

    root_dir, mead, pose, vox = (Path(p) for p in (root_dir, mead_path, poseimg_path, vox_path))
    if not root_dir.is_dir():
        raise FileNotFoundError(f"EAT's dataset_params.root_dir {root_dir} is not a directory "
                                "(expected .../images_evp_25/ of EAT's prepared MEAD)")
    if (root_dir / "train").is_dir() and not (root_dir / "test").is_dir():
        raise ValueError(f"{root_dir} has train/ but no test/: EAT's data set requires both (or neither)")
    if str(root_dir).count("images") != 1:
        raise ValueError(f"EAT finds a clip's latents by replacing 'images' in its path with 'latent'; "
                         f"{root_dir} must contain 'images' exactly once (as in .../images_evp_25/)")
    missing: List[str] = [str(vox / "voxselect" / f"{e}.txt") for e in VOXSELECT_LISTS
                          if not (vox / "voxselect" / f"{e}.txt").is_file()]
    problems: List[str] = []
    clips: Dict[str, List[str]] = {}
    folders = _split_dirs(root_dir)
    if split is not None and len(folders) == 2:
        folders = [f for f in folders if f.name == split]
    for split_dir in folders:
        names = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
        if not names:
            problems.append(f"no clip folders in {split_dir}")
        clips[split_dir.name] = names
        short: List[str] = []
        # Speakers with a `{id}_neu_1_*` clip in this split (one pass, not a glob per clip: MEAD has ~30k clips).
        with_neutral = {n.split("_")[0] for n in names if n.split("_")[1:3] == ["neu", "1"]}
        for name in names:
            try:
                eat_clip_emotion(name)
            except ValueError as e:
                problems.append(str(e))
                continue
            folder = split_dir / name
            latent = Path(str(folder).replace("images", "latent") + ".npy")
            need = [latent, mead / "deepfeature32" / f"{name}.npy", mead / "wav_16000" / f"{name}.wav",
                    mead / "bboxs" / f"{name}.npy", pose / "poseimg" / f"{name}.npy.gz"]
            missing += [str(p) for p in need if not p.is_file()]
            if not (folder / "0001.jpg").is_file():
                missing.append(str(folder / "0001.jpg"))
            n = sum(1 for e in os.scandir(folder) if e.name.endswith(".jpg"))
            if n < min_frames:
                short.append(f"{name} ({n})")
            speaker = name.split("_")[0]
            if speaker not in with_neutral:
                problems.append(f"{folder}: no neutral clip {speaker}_neu_1_* in {split_dir} (EAT's source frame)")
        if names and len(short) == len(names):  # EAT would skip clip after clip, forever
            problems.append(f"no clip in {split_dir} has the {min_frames} frames EAT's windows need: "
                            f"{', '.join(short[:5])}")
        elif short:
            warnings.warn(f"{len(short)} clips in {split_dir} have fewer than {min_frames} frames; EAT's data set "
                          f"skips them: {', '.join(short[:5])}")
    if missing:
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise FileNotFoundError("EAT's prepared MEAD is missing: " + ", ".join(missing[:20]) + more)
    if problems:
        raise ValueError("EAT's prepared MEAD: " + "; ".join(problems[:20]))
    return clips


# ----------------------------------------------------------------------------- synthetic set


def _head_pose_logits(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 66) logits of EAT's 66 head-pose bins (3 degrees each, bin 33 = 0 degrees), near frontal."""
    centre = 33 + rng.normal(0, 0.5, (n, 1))
    return (-0.5 * ((np.arange(66)[None] - centre) / 1.5) ** 2).astype(np.float32)


def _speech_features(audio: np.ndarray, n: int) -> np.ndarray:
    """(n, 16, 29) stand-in for EAT's DeepSpeech features: 29-band log-mel, 16 steps per video frame.

    DeepSpeech (tensorflow 1.15) cannot run on a current stack; this keeps the shape EAT reads and
    ties the values to the clip's audio.
    """
    import librosa

    hop = _SAMPLE_RATE // EAT_FPS // 16
    mel = librosa.feature.melspectrogram(y=audio.astype(np.float32), sr=_SAMPLE_RATE, n_fft=512, hop_length=hop,
                                         n_mels=29, center=True)
    mel = np.log(mel + 1e-6).T[: n * 16]
    mel = np.pad(mel, ((0, n * 16 - len(mel)), (0, 0)), mode="edge")
    return ((mel - mel.mean()) / (mel.std() + 1e-6)).reshape(n, 16, 29).astype(np.float32)


def _pose_images(n: int) -> np.ndarray:
    """(n, 1, 64, 64) head-pose images: a frontal head box drawn at 256 px, area-downsampled (as
    EAT's generate_poseimg.py draws it, for a frontal pose)."""
    import cv2

    img = np.zeros((256, 256), np.float32)
    cv2.rectangle(img, (78, 78), (178, 178), 255.0, 2)
    cv2.rectangle(img, (98, 98), (158, 158), 255.0, 2)
    small = cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA)
    return np.broadcast_to(small, (n, 1, 64, 64)).astype(np.float32)


def _object_array(*items) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


def write_synthetic_eat_mead(
    root: PathLike,
    speakers: int = 1,
    train_emotions: Sequence[str] = ("neutral", "happy"),
    test_emotions: Sequence[str] = ("neutral", "sad"),
    max_frames: int = 12,
    size: int = 256,
    seed: int = 0,
) -> Dict[str, Path]:
    """Write a tiny prepared MEAD in EAT's layout (see the module docstring) with synthetic content.

    Frames and 16 kHz audio are synthetic talking faces (:mod:`stccl_diffusers.data.synthetic`);
    head-pose latents are near-frontal, deep features a log-mel stand-in for DeepSpeech, pose
    images a frontal head box, face boxes from the frames; the ``voxselect`` lists are empty (no
    VoxCeleb clips). Clips are cut to ``max_frames``. Returns ``{"root_dir", "mead_path",
    "poseimg_path", "vox_path"}``: the config value and EAT's three module constants.
    Refuses a ``root`` that already exists (a user's folder is never written into).
    """
    import cv2
    import soundfile as sf

    from .face_align import clip_face_box
    from .synthetic import render_clip, sample_identity, sample_utterance

    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} exists; write_synthetic_eat_mead writes only a new folder")
    for e in (*train_emotions, *test_emotions):
        if e not in _MEAD_NAMES:
            raise ValueError(f"expected emotions from {list(_MEAD_NAMES)}, got {e!r}")
    rng = np.random.default_rng(seed)
    images = root / "images_evp_25"
    for sub in ("deepfeature32", "wav_16000", "bboxs", "poseimg", "voxselect", "latent_evp_25/train",
                "latent_evp_25/test"):
        (root / sub).mkdir(parents=True)
    for name in VOXSELECT_LISTS:
        (root / "voxselect" / f"{name}.txt").write_text("")
    for s in range(speakers):
        identity = sample_identity(rng)
        speaker = f"S{s + 1:03d}"
        for split, emotions in (("train", train_emotions), ("test", test_emotions)):
            for k, emotion in enumerate(emotions):
                utterance = sample_utterance(rng, (4, 6))
                plan = render_clip(identity, emotion, utterance, fps=EAT_FPS, size=8, with_audio=False,
                                   frame_indices=[])
                n = min(max_frames, len(plan.mouth_open))  # its length in frames, none drawn
                clip = render_clip(identity, emotion, utterance, fps=EAT_FPS, size=size, frame_indices=range(n),
                                   seed=int(rng.integers(1 << 30)))
                name = f"{speaker}_{_MEAD_NAMES[emotion]}_{1 if emotion == 'neutral' else 3}_{k + 1:03d}"
                folder = images / split / name
                folder.mkdir(parents=True)
                for i in range(n):
                    cv2.imwrite(str(folder / f"{i + 1:04d}.jpg"), clip.frames[i][..., ::-1])
                audio = clip.audio[: n * _SAMPLE_RATE // EAT_FPS]
                sf.write(str(root / "wav_16000" / f"{name}.wav"), audio, _SAMPLE_RATE, subtype="PCM_16")
                np.save(root / "deepfeature32" / f"{name}.npy", _speech_features(audio, n))
                box = clip_face_box(clip.frames[:n])
                x, y, w, h = (box if box is not None else (size / 4, size / 4, size / 2, size / 2))
                # EAT's bboxs are in 256-px pixels (its model divides them by 256).
                scale = 256.0 / size
                xyxy = np.round(np.array([x, y, x + w, y + h]) * scale).astype(np.int64)
                np.save(root / "bboxs" / f"{name}.npy", np.tile(xyxy, (n, 1)))
                he = {"yaw": _head_pose_logits(n, rng), "pitch": _head_pose_logits(n, rng),
                      "roll": _head_pose_logits(n, rng), "t": rng.normal(0, 0.01, (n, 3)).astype(np.float32),
                      "exp": rng.normal(0, 0.01, (n, 45)).astype(np.float32)}
                kp = rng.uniform(-0.5, 0.5, (1, 15, 3)).astype(np.float32)
                np.save(root / "latent_evp_25" / split / f"{name}.npy", _object_array(kp, he), allow_pickle=True)
                with gzip.GzipFile(root / "poseimg" / f"{name}.npy.gz", "w") as f:
                    np.save(f, _pose_images(n))
    return {"root_dir": images, "mead_path": root, "poseimg_path": root, "vox_path": root}
