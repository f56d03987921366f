"""Evaluation for emotional talking heads: FAD, LSE-D / LSE-C, CSIM and the ``stccl-eval`` CLI.

Functional core (numpy / torch, no I/O): :func:`frechet_distance`, :func:`fad_from_embeddings`,
:func:`sync_offset_search`, :func:`mfcc`, :func:`cosine_similarity_score`, :func:`align_face_112`.
Shells: :class:`SyncNet` (public ``syncnet_v2.model`` layout), :func:`compute_lse`,
:func:`arcface_embeddings`, :func:`run_evaluation` (pluggable per-pair / per-method metrics).
Plug-ins: :func:`mouth_pair_metric` (``--mouth``; core :func:`mouth_opening` for synthetic faces,
:func:`landmark_distances` (M-LMD, F-LMD) and :func:`lip_opening_curve` for real ones, :func:`mouth_preservation`)
and :class:`CorrelationAnalysis` (``--analysis_metric``; core in :mod:`stccl_diffusers.analysis`),
:class:`EmotionAccuracy` (Acc_emo with an Emotion-FAN checkpoint, :func:`load_emotion_fan`),
:func:`reconstruction_pair_metric` (``--reconstruction``: PSNR, SSIM), :func:`reencode_frames`
(``--sync_protocol reencode``) and :func:`compare_methods` (paired differences with bootstrap
intervals, wins, sign test; :mod:`.stats`).
"""

from .csim import build_iresnet_encoder, cosine_similarity_score, encode_faces, resolve_csim_encoder
from .faces import ARCFACE_TEMPLATE_112, align_face_112, landmarks_from_box, syncnet_crop, umeyama_similarity
from .fad import FADResult, arcface_embeddings, fad_from_embeddings, frechet_distance
from .lse import LSEResult, compute_lse, sync_offset_search, syncnet_features
from .mfcc import mfcc
from .mouth import landmark_distances, lip_opening_curve, mouth_opening, mouth_opening_curve, mouth_pair_metric, mouth_preservation
from .runner import ClipPair, EvalConfig, EvalContext, MetricSkipped, run_evaluation
from .syncnet import SyncNet, build_syncnet, load_syncnet_state_dict
from .emotion import EMOTION_FAN_CLASSES, EmotionAccuracy, EmotionFAN, load_emotion_fan
from .reconstruction import psnr_frames, reconstruction_measures, reconstruction_pair_metric, ssim_frame
from .reencode import REENCODE_PROTOCOL, reencode_frames
from .stats import MEASURE_DIRECTIONS, bootstrap_mean_ci, compare_methods, paired_comparison, sign_test
from .cli import CorrelationAnalysis

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "EMOTION_FAN_CLASSES",
    "EmotionAccuracy",
    "EmotionFAN",
    "MEASURE_DIRECTIONS",
    "REENCODE_PROTOCOL",
    "bootstrap_mean_ci",
    "compare_methods",
    "load_emotion_fan",
    "paired_comparison",
    "psnr_frames",
    "reconstruction_measures",
    "reconstruction_pair_metric",
    "reencode_frames",
    "sign_test",
    "ssim_frame",
    "ClipPair",
    "CorrelationAnalysis",
    "EvalConfig",
    "EvalContext",
    "FADResult",
    "LSEResult",
    "MetricSkipped",
    "SyncNet",
    "align_face_112",
    "arcface_embeddings",
    "build_iresnet_encoder",
    "build_syncnet",
    "compute_lse",
    "cosine_similarity_score",
    "encode_faces",
    "fad_from_embeddings",
    "frechet_distance",
    "landmark_distances",
    "landmarks_from_box",
    "lip_opening_curve",
    "load_syncnet_state_dict",
    "mfcc",
    "mouth_opening",
    "mouth_opening_curve",
    "mouth_pair_metric",
    "mouth_preservation",
    "resolve_csim_encoder",
    "run_evaluation",
    "sync_offset_search",
    "syncnet_crop",
    "syncnet_features",
    "umeyama_similarity",
]
