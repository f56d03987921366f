"""Paired data for STCCL: synthetic talking faces, video I/O, DTW pairing, face alignment, datasets."""

from .datasets import PairedClipDataset, frames_to_tensor
from .face_align import FaceAligner, HaarLandmarkDetector, InsightFaceLandmarkDetector, Landmarks, NoFaceError
from .pairing import ClipPair, discover_pairs, dtw_align, mel_features, pair_clips, path_to_alignment, read_manifest, write_manifest
from .synthetic import (
    EMOTIONS,
    Identity,
    SyntheticClip,
    SyntheticFaceConfig,
    SyntheticPair,
    Utterance,
    make_pair,
    pair_clip_tensors,
    render_clip,
    sample_identity,
    sample_utterance,
    synth_main,
    synthetic_batch,
)
from .video_io import NoAudioError, VideoClip, VideoReadError, read_audio, read_video, write_video

__all__ = [
    "PairedClipDataset", "frames_to_tensor",
    "FaceAligner", "HaarLandmarkDetector", "InsightFaceLandmarkDetector", "Landmarks", "NoFaceError",
    "ClipPair", "discover_pairs", "dtw_align", "mel_features", "pair_clips", "path_to_alignment", "read_manifest", "write_manifest",
    "EMOTIONS", "Identity", "SyntheticClip", "SyntheticFaceConfig", "SyntheticPair", "Utterance", "make_pair",
    "pair_clip_tensors", "render_clip", "sample_identity", "sample_utterance", "synth_main", "synthetic_batch",
    "NoAudioError", "VideoClip", "VideoReadError", "read_audio", "read_video", "write_video",
]
