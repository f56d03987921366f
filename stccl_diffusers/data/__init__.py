"""Paired data for STCCL: synthetic talking faces, video I/O, DTW pairing, face alignment, datasets."""

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
    synthetic_batch,
)
