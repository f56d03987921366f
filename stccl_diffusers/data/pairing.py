"""Frame pairing by DTW on the mel spectra of two utterances (paper §8.1), and the official
alignment manifest format.

Manifest (as published with the official STCCL code, ``mead_aligned_path36.json``)::

    {speaker: {emotion: {"<neutral_clip>_<emotion_clip>": [[neutral_idx...], [emotion_idx...]]}}}

Both index lists have one entry per DTW step (indices repeat where time was stretched);
frames are 0-based. Prepared MEAD keeps them at
``<root>/<speaker>/align_img/<emotion or neutral>/<clip>/<idx:06d>.jpg``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..utils.jsonio import dumps_strict
from .video_io import IMAGE_EXTS, NoAudioError, VideoReadError, list_frame_files, probe_video, read_audio
from ..utils.safety import UsageError

__all__ = [
    "KNOWN_EMOTIONS",
    "ClipPair",
    "PairingReport",
    "audio_rate_for_fps",
    "mel_features",
    "dtw_align",
    "path_to_alignment",
    "discover_pairs",
    "pair_clips",
    "read_manifest",
    "write_manifest",
    "manifest_frame_paths",
    "pair_main",
]

# MEAD's eight emotions (plus "fear"'s other spelling seen in the wild).
KNOWN_EMOTIONS: Tuple[str, ...] = ("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
AUDIO_EXTS = (".wav", ".m4a", ".mp3", ".aac", ".flac")


# --------------------------------------------------------------------------------------
# Functional core
# --------------------------------------------------------------------------------------


def audio_rate_for_fps(fps: float, base: int = 16000) -> int:
    """Sample rate near ``base`` that is an integer multiple of ``fps`` (16000 at 25 fps,
    15990 at 30 fps), so that ``hop = sr / fps`` samples is exact: one mel frame per video frame."""
    if fps <= 0:
        raise ValueError(f"expected a positive fps, got {fps}")
    return int(round(base / fps) * fps) if float(fps).is_integer() else int(base)


def mel_features(audio: np.ndarray, sample_rate: int, fps: float, num_frames: Optional[int] = None, n_mels: int = 40) -> np.ndarray:
    """Log-mel spectrogram with one column per video frame.

    audio: (N,) float in [-1, 1]. Returns (n_mels, T) float32, column k centred at time k / fps
    (librosa ``center=True``), cut or edge-padded to ``num_frames`` when given. Bands are
    z-scored over the utterance so that a louder (angry) or quieter (sad) delivery of the
    same words still matches.
    """
    import librosa

    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1 or audio.size == 0:
        raise ValueError(f"expected mono audio (N,) with N > 0, got shape {audio.shape}")
    hop = sample_rate / fps
    if abs(hop - round(hop)) > 1e-6:
        raise ValueError(f"expected sample_rate / fps to be an integer hop, got {sample_rate} / {fps} (use audio_rate_for_fps)")
    hop = int(round(hop))
    n_fft = 1 << int(np.ceil(np.log2(2 * hop)))
    m = librosa.feature.melspectrogram(y=audio, sr=sample_rate, n_fft=n_fft, hop_length=hop, win_length=min(n_fft, 2 * hop), n_mels=n_mels)
    L = np.log(m + 1e-6)
    if num_frames is not None:
        if L.shape[1] >= num_frames:
            L = L[:, :num_frames]
        else:
            L = np.pad(L, ((0, 0), (0, num_frames - L.shape[1])), mode="edge")
    L = (L - L.mean(1, keepdims=True)) / (L.std(1, keepdims=True) + 1e-6)
    return L.astype(np.float32)


def dtw_align(neutral_feats: np.ndarray, emotional_feats: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """DTW path between two feature sequences (D, T_n) and (D, T_e).

    Returns (2, L) int64 ``[[neutral_idx...], [emotional_idx...]]`` from start to end (librosa
    returns the path end-to-start; we reverse it), monotone, covering (0, 0) .. (T_n-1, T_e-1).
    """
    import librosa

    if neutral_feats.ndim != 2 or emotional_feats.ndim != 2 or neutral_feats.shape[0] != emotional_feats.shape[0]:
        raise ValueError(f"expected features (D, T_n) and (D, T_e) with the same D, got {neutral_feats.shape} and {emotional_feats.shape}")
    _, wp = librosa.sequence.dtw(X=neutral_feats, Y=emotional_feats, metric=metric)
    return np.ascontiguousarray(wp[::-1].T).astype(np.int64)


def path_to_alignment(path: np.ndarray, num_emotional: Optional[int] = None) -> np.ndarray:
    """(T_e,) float: mean neutral index matched to each emotional frame along a DTW path (2, L)."""
    path = np.asarray(path)
    T = int(path[1].max()) + 1 if num_emotional is None else int(num_emotional)
    s = np.bincount(path[1], weights=path[0], minlength=T)[:T]
    c = np.bincount(path[1], minlength=T)[:T]
    if np.any(c == 0):
        raise ValueError("expected a DTW path that visits every emotional frame")
    return s / c


# --------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------


def read_manifest(path: str) -> Dict[str, Dict[str, Dict[str, np.ndarray]]]:
    """Read an official-format manifest: ``{speaker: {emotion: {key: (2, L) int64}}}``.

    Raises ValueError naming the file and the entry when a path is malformed.
    """
    with open(path) as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"could not parse manifest {path!r}: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object {{speaker: {{emotion: {{pair: [[...], [...]]}}}}}} in {path!r}, got {type(raw).__name__}")
    out: Dict[str, Dict[str, Dict[str, np.ndarray]]] = {}
    for spk, emos in raw.items():
        for emo, pairs in emos.items():
            for key, p in pairs.items():
                try:
                    arr = np.asarray(p)
                except ValueError:  # ragged lists
                    arr = np.zeros((0,))
                if arr.ndim != 2 or arr.shape[0] != 2 or arr.shape[1] == 0 or not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0:
                    raise ValueError(
                        f"expected [[neutral_idx...], [emotion_idx...]] of equal length with non-negative ints at "
                        f"{spk}/{emo}/{key} in {path!r}, got shape {arr.shape} dtype {arr.dtype}"
                    )
                out.setdefault(spk, {}).setdefault(emo, {})[key] = arr.astype(np.int64)
    return out


def write_manifest(path: str, manifest: Dict[str, Dict[str, Dict[str, np.ndarray]]]) -> None:
    """Write the official format (plain int lists), atomically."""
    obj = {s: {e: {k: [list(map(int, v[0])), list(map(int, v[1]))] for k, v in ps.items()} for e, ps in es.items()} for s, es in manifest.items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(dumps_strict(obj))
    os.replace(tmp, path)


def split_pair_key(key: str) -> Tuple[str, str]:
    """``"001_003"`` -> ``("001", "003")``; keys whose halves contain underscores split in the middle."""
    parts = key.split("_")
    if len(parts) % 2:
        raise ValueError(f"expected a pair key '<neutral_clip>_<emotion_clip>', got {key!r}")
    h = len(parts) // 2
    return "_".join(parts[:h]), "_".join(parts[h:])


def manifest_frame_paths(root: str, speaker: str, emotion: str, key: str, path: np.ndarray, ext: str = ".jpg") -> Tuple[List[str], List[str]]:
    """Frame files of an official-layout pair: ``root/speaker/align_img/<emo>/<clip>/<idx:06d><ext>``."""
    n_clip, e_clip = split_pair_key(key)
    base = os.path.join(root, speaker, "align_img")
    n = [os.path.join(base, "neutral", n_clip, f"{int(i):06d}{ext}") for i in path[0]]
    e = [os.path.join(base, emotion, e_clip, f"{int(i):06d}{ext}") for i in path[1]]
    return n, e


# --------------------------------------------------------------------------------------
# Discovery of clip pairs
# --------------------------------------------------------------------------------------


@dataclass
class ClipPair:
    """A neutral and an emotional clip of the same speaker and sentence (files or frame folders)."""

    speaker: str
    emotion: str
    key: str
    neutral: str
    emotional: str


@dataclass
class PairingReport:
    pairs: int = 0
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (name, reason)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append((name, reason))


def _is_frames_dir(path: str) -> bool:
    try:
        return os.path.isdir(path) and any(n.lower().endswith(IMAGE_EXTS) for n in os.listdir(path))
    except OSError:
        return False


def _clips_in(directory: str) -> Dict[str, str]:
    """``{clip_id: path}`` of the videos and frame folders directly in ``directory``."""
    out = {}
    if not os.path.isdir(directory):
        return out
    for n in sorted(os.listdir(directory)):
        p = os.path.join(directory, n)
        stem, ext = os.path.splitext(n)
        if os.path.isfile(p) and ext.lower() in VIDEO_EXTS:
            out[stem] = p
        elif _is_frames_dir(p):
            out[n] = p
    return out


def _discover_mead(root: str, level: Optional[str]) -> List[ClipPair]:
    pairs = []
    for spk in sorted(os.listdir(root)):
        front = os.path.join(root, spk, "video", "front")
        if not os.path.isdir(front):
            continue
        neutral_dir = os.path.join(front, "neutral")
        levels_n = sorted(os.listdir(neutral_dir)) if os.path.isdir(neutral_dir) else []
        if not levels_n:
            continue
        neutral = _clips_in(os.path.join(neutral_dir, levels_n[0]))
        for emo in sorted(os.listdir(front)):
            if emo == "neutral" or not os.path.isdir(os.path.join(front, emo)):
                continue
            levels = sorted(os.listdir(os.path.join(front, emo)))
            lv = level if level is not None else (levels[-1] if levels else None)
            if lv is None or lv not in levels:
                continue
            for cid, p in _clips_in(os.path.join(front, emo, lv)).items():
                if cid in neutral:
                    pairs.append(ClipPair(spk, emo, f"{cid}_{cid}", neutral[cid], p))
    return pairs


_EMO_RE = re.compile(r"(?<![a-z])(" + "|".join(KNOWN_EMOTIONS) + r")(?![a-z])", re.IGNORECASE)


def _discover_plain(root: str) -> List[ClipPair]:
    """Clips anywhere under ``root`` with an emotion word in their relative path; the neutral
    partner is the same relative path with that word replaced by ``neutral``."""
    clips: Dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames:
            if os.path.splitext(n)[1].lower() in VIDEO_EXTS:
                clips[os.path.relpath(os.path.join(dirpath, n), root)] = os.path.join(dirpath, n)
        for d in list(dirnames):
            p = os.path.join(dirpath, d)
            if _is_frames_dir(p):
                clips[os.path.relpath(p, root)] = p
                dirnames.remove(d)
    pairs = []
    for rel, p in sorted(clips.items()):
        matches = list(_EMO_RE.finditer(rel))
        if not matches:
            continue
        m = matches[-1]
        emo = m.group(1).lower()
        if emo == "neutral":
            continue
        partner = rel[: m.start()] + "neutral" + rel[m.end():]
        if partner not in clips:
            continue
        # Speaker = the folder part with the emotion removed; key = the file stems.
        spk = os.path.dirname(partner).replace(os.sep, "/").strip("/") or os.path.basename(os.path.abspath(root))
        spk = re.sub(r"/?neutral/?", "/", spk).strip("/") or os.path.basename(os.path.abspath(root))
        stem_n = os.path.splitext(os.path.basename(partner))[0]
        stem_e = os.path.splitext(os.path.basename(rel))[0]
        pairs.append(ClipPair(spk, emo, f"{stem_n}_{stem_e}", clips[partner], p))
    return pairs


def discover_pairs(root: str, layout: str = "auto", level: Optional[str] = None) -> List[ClipPair]:
    """All (neutral, emotional) clip pairs under ``root``.

    layout: ``"mead"`` (``<speaker>/video/front/<emotion>/level_<k>/<clip>.mp4``; ``level``
    picks the emotional level, default the highest present; neutral uses its only level),
    ``"plain"`` (an emotion word in the path), or ``"auto"``.
    """
    if not os.path.isdir(root):
        raise ValueError(f"expected a data directory, got {root!r} (not a directory)")
    if layout not in ("auto", "mead", "plain"):
        raise ValueError(f"expected layout 'auto', 'mead' or 'plain', got {layout!r}")
    if layout in ("auto", "mead"):
        pairs = _discover_mead(root, level)
        if pairs or layout == "mead":
            return pairs
    return _discover_plain(root)


# --------------------------------------------------------------------------------------
# Reading one clip's audio and frame count
# --------------------------------------------------------------------------------------


def _mead_audio_path(video_path: str) -> Optional[str]:
    """MEAD keeps audio at ``<speaker>/audio/<emotion>/<level>/<clip>.m4a`` beside ``video/front``."""
    parts = os.path.normpath(video_path).split(os.sep)
    if "video" in parts and len(parts) >= 5:
        i = len(parts) - 1 - parts[::-1].index("video")
        if i + 1 < len(parts) and parts[i + 1] == "front":
            stem = os.path.splitext(parts[-1])[0]
            base = os.sep.join(parts[:i] + ["audio"] + parts[i + 2:-1])
            for ext in AUDIO_EXTS:
                cand = os.path.join(base, stem + ext)
                if os.path.isfile(cand):
                    return cand
    return None


def load_clip_audio(path: str, fps_hint: Optional[float] = None, base_rate: int = 16000) -> Tuple[np.ndarray, int, float, int]:
    """``(audio, sample_rate, fps, num_frames)`` of a video file or a frames folder.

    Raises VideoReadError / NoAudioError (both ValueError) naming the clip.
    """
    if os.path.isdir(path):
        n = len(list_frame_files(path))
        meta = os.path.join(path, "meta.json")
        fps = fps_hint
        if os.path.isfile(meta):
            with open(meta) as f:
                fps = float(json.load(f)["fps"])
        if not fps:
            raise VideoReadError(f"no fps for frames folder {path!r} (write meta.json or pass --fps)")
        wav = path.rstrip("/\\") + ".wav"
        if not os.path.isfile(wav):
            raise NoAudioError(f"no audio {wav!r} beside frames folder {path!r}")
        sr = audio_rate_for_fps(fps, base_rate)
        return read_audio(wav, sr), sr, float(fps), n
    import imageio_ffmpeg

    info = probe_video(path)
    fps = info["fps"]
    if fps <= 0:
        raise VideoReadError(f"could not read the frame rate of {path!r}")
    try:
        n, _ = imageio_ffmpeg.count_frames_and_secs(path)
    except Exception as e:  # noqa: BLE001
        raise VideoReadError(f"could not count frames of {path!r}: {e}") from e
    sr = audio_rate_for_fps(fps, base_rate)
    source = path if info["has_audio"] else _mead_audio_path(path)
    if source is None:
        raise NoAudioError(f"no audio stream in {path!r} and no MEAD audio file beside it")
    return read_audio(source, sr), sr, float(fps), int(n)


def pair_clips(pair: ClipPair, max_duration_ratio: float = 2.0, n_mels: int = 40, fps: Optional[float] = None) -> np.ndarray:
    """DTW path (2, L) for one clip pair. Raises ValueError naming the clip on bad input.

    fps: frame rate of frame folders that carry no ``meta.json``.
    """
    an, srn, fpsn, Tn = load_clip_audio(pair.neutral, fps)
    ae, sre, fpse, Te = load_clip_audio(pair.emotional, fps)
    if abs(fpsn - fpse) > 1e-3:
        raise ValueError(f"expected equal frame rates, got {fpsn} ({pair.neutral!r}) and {fpse} ({pair.emotional!r})")
    ratio = max(Tn, Te) / max(1, min(Tn, Te))
    if ratio > max_duration_ratio:
        raise ValueError(
            f"durations differ too much ({Tn} vs {Te} frames, ratio {ratio:.2f} > {max_duration_ratio}) for {pair.emotional!r} vs {pair.neutral!r}"
        )
    for a, p in ((an, pair.neutral), (ae, pair.emotional)):
        if np.abs(a).max() < 1e-4:
            raise NoAudioError(f"silent audio in {p!r}")
    Fn = mel_features(an, srn, fpsn, Tn, n_mels)
    Fe = mel_features(ae, sre, fpse, Te, n_mels)
    return dtw_align(Fn, Fe)


# --------------------------------------------------------------------------------------
# CLI: stccl-pair
# --------------------------------------------------------------------------------------


def pair_main(argv: Optional[Sequence[str]] = None) -> int:
    """``stccl-pair --root DIR --out manifest.json``: DTW-pair neutral and emotional clips."""
    from tqdm.auto import tqdm

    p = argparse.ArgumentParser(prog="stccl-pair", description="DTW-pair neutral and emotional clips into an official-format manifest.")
    p.add_argument("--root", required=True, help="MEAD-layout root or a folder of clips with an emotion in their names")
    p.add_argument("--out", required=True, help="manifest JSON to write")
    p.add_argument("--layout", default="auto", choices=["auto", "mead", "plain"])
    p.add_argument("--level", default=None, help="MEAD emotional level folder (default: highest present)")
    p.add_argument("--max_duration_ratio", type=float, default=2.0)
    p.add_argument("--n_mels", type=int, default=40)
    p.add_argument("--fps", type=float, default=None, help="frame rate of frame folders without meta.json")
    args = p.parse_args(argv)
    pairs = discover_pairs(args.root, args.layout, args.level)
    if not pairs:
        raise UsageError(f"stccl-pair: no (neutral, emotional) clip pairs found under {args.root!r}")
    report = PairingReport()
    manifest: Dict[str, Dict[str, Dict[str, np.ndarray]]] = {}
    for cp in tqdm(pairs, desc="stccl-pair"):
        try:
            path = pair_clips(cp, args.max_duration_ratio, args.n_mels, args.fps)
        except ValueError as e:  # VideoReadError and NoAudioError are ValueErrors
            report.skip(cp.emotional, str(e))
            tqdm.write(f"stccl-pair: skipped {cp.speaker}/{cp.emotion}/{cp.key}: {e}")
            continue
        manifest.setdefault(cp.speaker, {}).setdefault(cp.emotion, {})[cp.key] = path
        report.pairs += 1
    write_manifest(args.out, manifest)
    msg = f"stccl-pair: wrote {report.pairs} pairs to {args.out}; skipped {report.num_skipped}"
    truth_file = os.path.join(args.root, "ground_truth.json")
    if os.path.isfile(truth_file) and report.pairs:
        # Synthetic data carries its true alignment: report how well DTW recovered it.
        with open(truth_file) as f:
            truth = json.load(f)["alignment"]
        errs = []
        for s, es in manifest.items():
            for e, ps in es.items():
                for k, path in ps.items():
                    if k in truth.get(s, {}).get(e, {}):
                        gt = np.asarray(truth[s][e][k])
                        est = path_to_alignment(path, len(gt))
                        errs.append(np.abs(est - gt))
        if errs:
            msg += f"; median |alignment error| vs ground truth {np.median(np.concatenate(errs)):.3f} frames"
    print(msg)
    return 0


if __name__ == "__main__":  # pragma: no cover
    from ..utils.safety import cli_errors

    raise SystemExit(cli_errors(pair_main)())
