"""Procedural talking faces with sound: the embedded default paired data set.

A cartoon face (identity parameters: face shape, skin tone, feature placement) says an
utterance (a sequence of visemes) with an emotion (brows, eye opening, mouth corners). The
same utterance drives the mouth (opening and width per frame) and a 16 kHz speech-like
waveform (formant bands per viseme, loudness following mouth opening), so audio and mouth
move together. Rendering the same utterance in two emotions at two tempos gives a paired
sample with a *known* time warp: the ground truth that DTW on the audio must recover
(paper §8.1).

Time model. An utterance lives in *canonical time* ``u`` (seconds at tempo 1). A clip
renders it with a per-viseme speed ``s_i``, giving a piecewise-linear warp ``t = W(u)``
with knots at viseme boundaries. Video frame ``k`` sits at clip time ``t_k = k / fps``
(the same convention as a centred STFT with ``hop = sr / fps``). The true alignment of
emotional frame ``j`` is the neutral frame ``fps * W_n(W_e^{-1}(j / fps))``.

Everything is deterministic for a seed: identities, utterances and tempos are drawn from
``numpy.random.default_rng(seed)`` and the noise of the waveform from a child generator.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ..utils.safety import UsageError
from ..utils.jsonio import dumps_strict

__all__ = [
    "EMOTIONS",
    "VISEMES",
    "Identity",
    "EmotionParams",
    "EMOTION_PARAMS",
    "Utterance",
    "SyntheticFaceConfig",
    "SyntheticClip",
    "SyntheticPair",
    "EMOTION_TEMPO",
    "prosody_tempo",
    "mouth_gain",
    "LOUDNESS_RMS",
    "normalise_loudness",
    "deployment_clip",
    "sample_identity",
    "speaker_identity",
    "speaker_identities",
    "sample_utterance",
    "emotion_params",
    "render_clip",
    "render_face",
    "make_pair",
    "pair_clip_tensors",
    "synthetic_batch",
    "synth_main",
]

# MEAD spellings, so synthetic folders read exactly like MEAD ones.
EMOTIONS: Tuple[str, ...] = ("neutral", "happy", "angry", "sad", "surprised")


# --------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Viseme:
    """One mouth shape and its sound.

    open: mouth opening in [0, 1]; width: relative mouth width (1 = rest width);
    formants: (F1, F2, F3) in Hz of the voiced part; voiced: glottal source level in [0, 1];
    noise: fricative (3.5-7.5 kHz band) level in [0, 1].
    """

    open: float
    width: float
    formants: Tuple[float, float, float]
    voiced: float
    noise: float


# Rough vowel formants (adult average) and consonant classes; "sil" is silence.
VISEMES: Dict[str, Viseme] = {
    "sil": Viseme(0.00, 1.00, (500.0, 1500.0, 2500.0), 0.0, 0.0),
    "A": Viseme(1.00, 1.05, (750.0, 1250.0, 2600.0), 1.0, 0.0),
    "E": Viseme(0.55, 1.25, (500.0, 1850.0, 2600.0), 1.0, 0.0),
    "I": Viseme(0.30, 1.35, (300.0, 2250.0, 3000.0), 0.9, 0.0),
    "O": Viseme(0.75, 0.70, (500.0, 900.0, 2500.0), 1.0, 0.0),
    "U": Viseme(0.35, 0.55, (330.0, 800.0, 2300.0), 0.85, 0.0),
    "M": Viseme(0.00, 0.95, (260.0, 1100.0, 2400.0), 0.35, 0.0),
    "F": Viseme(0.12, 1.05, (400.0, 1600.0, 2600.0), 0.0, 0.8),
    "S": Viseme(0.10, 1.20, (400.0, 1800.0, 2800.0), 0.0, 1.0),
}
_SPEECH_VISEMES: Tuple[str, ...] = tuple(v for v in VISEMES if v != "sil")
_VOWELS: Tuple[str, ...] = ("A", "E", "I", "O", "U")
_CONSONANTS: Tuple[str, ...] = ("M", "F", "S")


@dataclass(frozen=True)
class Identity:
    """Who is talking. Lengths are fractions of the image size; colours are RGB in [0, 255]."""

    face_w: float = 0.30  # half-width of the head ellipse
    face_h: float = 0.38  # half-height of the head ellipse
    face_cy: float = 0.52
    skin: Tuple[float, float, float] = (224.0, 180.0, 150.0)
    hair: Tuple[float, float, float] = (60.0, 40.0, 30.0)
    background: Tuple[float, float, float] = (90.0, 120.0, 160.0)
    iris: Tuple[float, float, float] = (70.0, 100.0, 60.0)
    lips: Tuple[float, float, float] = (180.0, 80.0, 80.0)
    eye_y: float = 0.44
    eye_dx: float = 0.11  # half the distance between eye centres
    eye_w: float = 0.065
    eye_h: float = 0.038
    brow_gap: float = 0.055  # brow height above eye centre
    brow_len: float = 0.075
    nose_len: float = 0.08
    mouth_y: float = 0.68
    mouth_w: float = 0.085  # half-width of the mouth at rest
    f0: float = 140.0  # speaking pitch in Hz
    hair_style: int = 0  # 0 short, 1 long, 2 bald-ish


@dataclass(frozen=True)
class EmotionParams:
    """How the face shows an emotion (each 0 for neutral).

    brow_raise: brows up (+) / down (-) as a fraction of the image; brow_tilt: inner brow
    ends up (+, sad/surprised) or down (-, angry); eye_open: eye height factor; mouth_curve:
    corners up (+, happy) / down (-, sad) as a fraction of the image; mouth_width: width
    factor; mouth_open: extra opening; pitch / loudness: voice factors.
    """

    brow_raise: float = 0.0
    brow_tilt: float = 0.0
    eye_open: float = 1.0
    mouth_curve: float = 0.0
    mouth_width: float = 1.0
    mouth_open: float = 0.0
    pitch: float = 1.0
    loudness: float = 1.0


EMOTION_PARAMS: Dict[str, EmotionParams] = {
    "neutral": EmotionParams(),
    "happy": EmotionParams(0.008, 0.0, 0.80, 0.030, 1.18, 0.05, 1.15, 1.10),
    "angry": EmotionParams(-0.018, -0.035, 0.75, -0.012, 0.92, 0.0, 1.05, 1.35),
    "sad": EmotionParams(-0.004, 0.030, 0.70, -0.024, 0.90, 0.0, 0.88, 0.70),
    "surprised": EmotionParams(0.030, 0.012, 1.45, 0.0, 0.85, 0.25, 1.25, 1.15),
}


#: The κ world's speaking rate per emotion (x neutral): aroused emotions speak faster, sadness
#: slower. Loudness per emotion is :attr:`EmotionParams.loudness`. Used only when the coupling
#: κ > 0 (:func:`prosody_tempo`); at κ = 0 the tempo is today's emotion-independent draw.
EMOTION_TEMPO: Dict[str, float] = {"neutral": 1.0, "happy": 1.15, "angry": 1.25, "sad": 0.78, "surprised": 1.10}


def _check_coupling(coupling: float) -> float:
    coupling = float(coupling)
    if not (math.isfinite(coupling) and coupling >= 0):
        raise ValueError(f"expected a finite coupling kappa >= 0, got {coupling}")
    return coupling


def prosody_tempo(drawn: float, emotion: str, coupling: float) -> float:
    """Base speaking rate of an emotional training clip in the κ world.

    ``drawn``: today's emotion-independent draw from ``tempo_range``; the result moves it
    geometrically towards the emotion's rate :data:`EMOTION_TEMPO` with weight ``coupling`` in
    [0, 1] (values > 1 extrapolate): ``drawn ** (1 - κ) * EMOTION_TEMPO[emotion] ** κ``. κ = 0 gives
    ``drawn`` unchanged (today's world, bit for bit: the early return avoids any float rounding).
    """
    coupling = _check_coupling(coupling)
    if coupling == 0.0:
        return drawn
    if emotion not in EMOTION_TEMPO:
        raise ValueError(f"expected an emotion in {list(EMOTION_TEMPO)}, got {emotion!r}")
    return float(drawn ** (1.0 - coupling) * EMOTION_TEMPO[emotion] ** coupling)


def mouth_gain(emotion: Union[str, EmotionParams], coupling: float, intensity: float = 1.0) -> float:
    """How much wider the mouth opens than the viseme says, in the κ world: the voice's loudness
    factor (:attr:`EmotionParams.loudness`, 1 for neutral) to the power κ. So at κ = 1 an angry clip
    (loudness 1.35) opens 1.35x, a sad one (0.70) 0.70x; at κ = 0 the gain is exactly 1 (today)."""
    coupling = _check_coupling(coupling)
    if coupling == 0.0:
        return 1.0
    return float(emotion_params(emotion, intensity).loudness ** coupling)


#: RMS of every clip's waveform in a loudness-normalised world (about a neutral clip's own level).
LOUDNESS_RMS = 0.03


def normalise_loudness(audio: np.ndarray, rms: float = LOUDNESS_RMS) -> np.ndarray:
    """``audio`` scaled to the waveform RMS ``rms`` (clipped to [-1, 1]): the loudness-normalised κ
    world (:attr:`SyntheticFaceConfig.loudness_normalised`). Recordings reach a model through gain
    control, and speech encoders are largely gain-invariant, so a clip's overall loudness is not a
    cue the model can read; the loudness *inside* the clip (syllables, the mouth's opening) stays.
    An empty or silent waveform is returned unchanged."""
    if not (math.isfinite(rms) and rms > 0):
        raise ValueError(f"expected a finite rms > 0, got {rms}")
    audio = np.asarray(audio, dtype=np.float32)
    level = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) if audio.size else 0.0
    if level <= 1e-9:
        return audio
    return np.clip(audio * (rms / level), -1.0, 1.0).astype(np.float32)


def emotion_params(emotion: Union[str, EmotionParams], intensity: float = 1.0) -> EmotionParams:
    """Parameters of ``emotion`` scaled towards neutral by ``intensity`` in [0, 1] (1 = full)."""
    if isinstance(emotion, EmotionParams):
        base = emotion
    else:
        if emotion not in EMOTION_PARAMS:
            raise ValueError(f"expected an emotion in {list(EMOTION_PARAMS)}, got {emotion!r}")
        base = EMOTION_PARAMS[emotion]
    n = EMOTION_PARAMS["neutral"]
    mix = lambda a, b: b + intensity * (a - b)  # noqa: E731
    return EmotionParams(*[mix(getattr(base, f), getattr(n, f)) for f in EmotionParams.__dataclass_fields__])


@dataclass(frozen=True)
class Utterance:
    """A sentence: viseme names and their durations in seconds at tempo 1 (canonical time)."""

    visemes: Tuple[str, ...]
    durations: Tuple[float, ...]

    def __post_init__(self):
        if len(self.visemes) != len(self.durations) or not self.visemes:
            raise ValueError(
                f"expected as many durations as visemes (>= 1), got {len(self.visemes)} visemes "
                f"and {len(self.durations)} durations"
            )
        bad = [v for v in self.visemes if v not in VISEMES]
        if bad:
            raise ValueError(f"expected visemes from {list(VISEMES)}, got {bad}")
        if min(self.durations) <= 0:
            raise ValueError(f"expected positive durations, got {self.durations}")

    @property
    def knots(self) -> np.ndarray:
        """(V + 1,) canonical times of the viseme boundaries."""
        return np.concatenate([[0.0], np.cumsum(self.durations)])

    @property
    def duration(self) -> float:
        return float(sum(self.durations))


@dataclass
class SyntheticFaceConfig:
    """Knobs of the generator (defaults give 96 px, 25 fps, 16 kHz, 1.5-3 s clips)."""

    size: int = 96
    fps: float = 25.0
    sample_rate: int = 16000
    num_visemes: Tuple[int, int] = (8, 14)  # inclusive range of spoken visemes
    tempo_range: Tuple[float, float] = (0.75, 1.33)  # emotional clip speed vs neutral
    tempo_jitter: float = 0.15  # per-viseme speed jitter (makes the warp non-linear)
    emotions: Tuple[str, ...] = EMOTIONS[1:]
    supersample: int = 2  # draw at this factor, then area-downsample (anti-aliasing)
    # κ, the coupling of the issue-22 world: emotional clips speak at their emotion's rate
    # (prosody_tempo) and their mouth opens with their loudness (mouth_gain). 0 = today's world.
    coupling: float = 0.0
    # Every clip's audio at one RMS (normalise_loudness): its overall loudness is then no cue, and
    # in the κ world only the emotion label predicts the mouth's gain. False = today's audio.
    loudness_normalised: bool = False

    def __post_init__(self):
        _check_coupling(self.coupling)


# --------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------


def _rgb(rng, lo, hi):
    return tuple(float(x) for x in rng.uniform(lo, hi))


def sample_identity(rng: np.random.Generator) -> Identity:
    """A random face: shape, skin tone, hair, feature placement and voice pitch."""
    # Skin tones along a light-to-dark line with a little hue noise.
    t = rng.uniform(0.0, 1.0)
    skin = np.array([236, 196, 170]) * (1 - t) + np.array([120, 80, 55]) * t + rng.normal(0, 6, 3)
    face_w = rng.uniform(0.25, 0.33)
    return Identity(
        face_w=float(face_w),
        face_h=float(face_w * rng.uniform(1.15, 1.40)),
        face_cy=float(rng.uniform(0.50, 0.55)),
        skin=tuple(float(x) for x in np.clip(skin, 0, 255)),
        hair=_rgb(rng, (10, 10, 10), (140, 100, 70)) if rng.uniform() < 0.85 else _rgb(rng, (150, 120, 40), (230, 200, 120)),
        background=_rgb(rng, (40, 40, 40), (210, 210, 210)),
        iris=_rgb(rng, (30, 30, 20), (120, 140, 160)),
        lips=_rgb(rng, (150, 60, 60), (210, 110, 110)),
        eye_y=float(rng.uniform(0.42, 0.47)),
        eye_dx=float(face_w * rng.uniform(0.33, 0.42)),
        eye_w=float(rng.uniform(0.05, 0.07)),
        eye_h=float(rng.uniform(0.028, 0.042)),
        brow_gap=float(rng.uniform(0.045, 0.065)),
        brow_len=float(rng.uniform(0.06, 0.085)),
        nose_len=float(rng.uniform(0.06, 0.10)),
        mouth_y=float(rng.uniform(0.66, 0.72)),
        mouth_w=float(face_w * rng.uniform(0.32, 0.42)),
        f0=float(rng.uniform(95.0, 220.0)),
        hair_style=int(rng.integers(0, 3)),
    )


def speaker_identity(seed: int, speaker: int) -> Identity:
    """Speaker ``S{speaker:03d}`` of a set written by ``stccl-synth --seed seed`` (its face and voice)."""
    return sample_identity(np.random.default_rng([seed, speaker]))


def speaker_identities(data_dir: str) -> Dict[int, Identity]:
    """{speaker index: face} of the set ``stccl-synth`` wrote into ``data_dir`` (its ``S###``
    folders, faces from the seed in its ``ground_truth.json``), in speaker order."""
    speakers = sorted(name for name in os.listdir(data_dir) if len(name) == 4 and name[0] == "S"
                      and name[1:].isdigit() and os.path.isdir(os.path.join(data_dir, name))) \
        if os.path.isdir(data_dir) else []
    truth = os.path.join(data_dir, "ground_truth.json")
    if not speakers or not os.path.isfile(truth):
        raise ValueError(f"expected a synthetic set written by stccl-synth in {data_dir} (S### speaker folders and "
                         f"ground_truth.json); found speakers {speakers}, ground_truth.json "
                         f"{'present' if os.path.isfile(truth) else 'missing'}")
    with open(truth) as f:
        seed = int(json.load(f)["seed"])
    return {int(name[1:]): speaker_identity(seed, int(name[1:])) for name in speakers}


def sample_utterance(rng: np.random.Generator, num_visemes: Union[int, Tuple[int, int]] = (8, 14)) -> Utterance:
    """A random sentence: ``num_visemes`` spoken visemes (consonant/vowel alternation,
    occasional short pause), framed by silence. Durations 60-180 ms (vowels longer)."""
    if isinstance(num_visemes, (tuple, list)):
        num_visemes = int(rng.integers(num_visemes[0], num_visemes[1] + 1))
    if num_visemes < 1:
        raise ValueError(f"expected num_visemes >= 1, got {num_visemes}")
    vis: List[str] = ["sil"]
    dur: List[float] = [float(rng.uniform(0.10, 0.16))]
    prev = None
    for k in range(num_visemes):
        if k > 0 and k % 5 == 0 and rng.uniform() < 0.3:
            vis.append("sil")
            dur.append(float(rng.uniform(0.08, 0.14)))
        pool = _VOWELS if (k % 2 == 1 or rng.uniform() < 0.3) else _CONSONANTS
        v = str(rng.choice([p for p in pool if p != prev]))
        vis.append(v)
        dur.append(float(rng.uniform(0.10, 0.18) if v in _VOWELS else rng.uniform(0.06, 0.11)))
        prev = v
    vis.append("sil")
    dur.append(float(rng.uniform(0.10, 0.16)))
    return Utterance(tuple(vis), tuple(dur))


# --------------------------------------------------------------------------------------
# Time warps and per-time articulation
# --------------------------------------------------------------------------------------


def _speeds(utterance: Utterance, tempo: Union[float, Sequence[float]]) -> np.ndarray:
    v = len(utterance.visemes)
    s = np.broadcast_to(np.asarray(tempo, dtype=np.float64), (v,)).copy()
    if np.any(s <= 0) or not np.all(np.isfinite(s)):
        raise ValueError(f"expected positive finite tempo (scalar or one per viseme), got {tempo}")
    return s


def clip_knots(utterance: Utterance, tempo: Union[float, Sequence[float]]) -> np.ndarray:
    """(V + 1,) clip times of the viseme boundaries for speed ``tempo`` (>1 is faster)."""
    return np.concatenate([[0.0], np.cumsum(np.asarray(utterance.durations) / _speeds(utterance, tempo))])


def _articulation(utterance: Utterance, u: np.ndarray) -> Dict[str, np.ndarray]:
    """Articulator targets at canonical times ``u`` (any shape).

    Coarticulation: targets sit at viseme centres and are interpolated linearly in between
    (a smoothstep would create flat plateaus that make the warp ambiguous for DTW).
    """
    knots = utterance.knots
    centres = 0.5 * (knots[:-1] + knots[1:])
    # Pin the ends so silence is silent at the boundaries.
    xs = np.concatenate([[0.0], centres, [knots[-1]]])
    table = np.array(
        [[VISEMES[v].open, VISEMES[v].width, *VISEMES[v].formants, VISEMES[v].voiced, VISEMES[v].noise] for v in utterance.visemes]
    )
    table = np.concatenate([table[:1], table, table[-1:]], axis=0)
    uu = np.clip(u, 0.0, knots[-1])
    vals = [np.interp(uu, xs, table[:, c]) for c in range(table.shape[1])]
    names = ["open", "width", "f1", "f2", "f3", "voiced", "noise"]
    out = dict(zip(names, vals))
    # A per-syllable loudness swell in canonical time gives DTW structure inside segments.
    seg = np.clip(np.searchsorted(knots, uu, side="right") - 1, 0, len(utterance.visemes) - 1)
    phase = (uu - knots[seg]) / np.asarray(utterance.durations)[seg]
    out["swell"] = 0.75 + 0.25 * np.sin(np.pi * phase)
    # Intonation: declination plus a slow contour, also in canonical time.
    out["intonation"] = 1.0 + 0.08 * np.sin(2 * np.pi * uu / 0.9) - 0.10 * uu / max(knots[-1], 1e-6)
    out["segment"] = seg
    return out


# --------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------


def _bgr(c):
    # We draw in RGB order directly; cv2 does not care about channel meaning.
    return tuple(float(x) for x in c)


def _shade(c, f):
    return tuple(float(np.clip(x * f, 0, 255)) for x in c)


def render_face(
    identity: Identity,
    emotion: Union[str, EmotionParams],
    mouth_open: float,
    mouth_width: float = 1.0,
    size: int = 96,
    supersample: int = 2,
    intensity: float = 1.0,
) -> np.ndarray:
    """Draw one frame. Returns (size, size, 3) uint8 RGB.

    mouth_open: viseme opening in [0, 1]; mouth_width: viseme width factor (1 = rest).
    """
    if size < 16:
        raise ValueError(f"expected size >= 16 pixels, got {size}")
    e = emotion_params(emotion, intensity)
    S = int(size * supersample)
    shift = 4  # sub-pixel precision for cv2 drawing
    P = lambda x, y: (int(round(x * S * (1 << shift))), int(round(y * S * (1 << shift))))  # noqa: E731
    L = lambda v: max(1, int(round(v * S * (1 << shift))))  # noqa: E731
    W = lambda v: max(1, int(round(v * S)))  # noqa: E731  (cv2 does not shift thickness)
    AA = cv2.LINE_AA
    img = np.empty((S, S, 3), np.float32)
    # Vertical background gradient.
    g = np.linspace(0.9, 1.1, S, dtype=np.float32)[:, None, None]
    img[:] = np.clip(np.asarray(identity.background, np.float32)[None, None] * g, 0, 255)
    cx, cy = 0.5, identity.face_cy
    fw, fh = identity.face_w, identity.face_h
    skin = _bgr(identity.skin)
    hair = _bgr(identity.hair)

    # Shoulders and neck.
    cv2.ellipse(img, P(cx, 1.12), (L(0.42), L(0.22)), 0, 0, 360, _shade(identity.background, 0.55), -1, AA, shift)
    cv2.rectangle(img, P(cx - fw * 0.38, cy + fh * 0.6), P(cx + fw * 0.38, 1.0), _shade(skin, 0.85), -1, AA, shift)
    # Hair behind the head.
    if identity.hair_style == 1:
        cv2.ellipse(img, P(cx, cy + 0.02), (L(fw * 1.18), L(fh * 1.12)), 0, 180, 360, hair, -1, AA, shift)
        cv2.rectangle(img, P(cx - fw * 1.18, cy), P(cx + fw * 1.18, cy + fh * 0.7), hair, -1, AA, shift)
    elif identity.hair_style == 0:
        cv2.ellipse(img, P(cx, cy - 0.02), (L(fw * 1.08), L(fh * 1.05)), 0, 180, 360, hair, -1, AA, shift)
    # Ears and head.
    for sx in (-1, 1):
        cv2.ellipse(img, P(cx + sx * fw * 0.97, identity.eye_y + 0.03), (L(0.035), L(0.055)), 0, 0, 360, _shade(skin, 0.92), -1, AA, shift)
    cv2.ellipse(img, P(cx, cy), (L(fw), L(fh)), 0, 0, 360, skin, -1, AA, shift)
    # Fringe.
    if identity.hair_style != 2:
        cv2.ellipse(img, P(cx, cy - fh * 0.62), (L(fw * 0.95), L(fh * 0.42)), 0, 180, 360, hair, -1, AA, shift)
    # Cheeks blush for happy (follows mouth_curve).
    if e.mouth_curve > 0.01:
        for sx in (-1, 1):
            cv2.ellipse(img, P(cx + sx * identity.eye_dx * 1.2, identity.mouth_y - 0.07), (L(0.035), L(0.02)), 0, 0, 360, (skin[0], skin[1] * 0.85, skin[2] * 0.85), -1, AA, shift)

    # Eyes: white, iris and pupil clipped by the eye opening.
    eh = identity.eye_h * e.eye_open
    for sx in (-1, 1):
        ex, ey = cx + sx * identity.eye_dx, identity.eye_y
        mask = np.zeros((S, S), np.uint8)
        cv2.ellipse(mask, P(ex, ey), (L(identity.eye_w), L(eh)), 0, 0, 360, 255, -1, AA, shift)
        layer = img.copy()
        cv2.ellipse(layer, P(ex, ey), (L(identity.eye_w), L(eh)), 0, 0, 360, (245.0, 245.0, 240.0), -1, AA, shift)
        r = min(identity.eye_w * 0.55, identity.eye_h * 0.95)
        cv2.circle(layer, P(ex, ey), L(r), _bgr(identity.iris), -1, AA, shift)
        cv2.circle(layer, P(ex, ey), L(r * 0.5), (15.0, 15.0, 15.0), -1, AA, shift)
        cv2.circle(layer, P(ex + r * 0.3, ey - r * 0.3), L(r * 0.18), (255.0, 255.0, 255.0), -1, AA, shift)
        a = (mask.astype(np.float32) / 255.0)[..., None]
        img = img * (1 - a) + layer * a
        # Upper lid line.
        cv2.ellipse(img, P(ex, ey), (L(identity.eye_w), L(eh)), 0, 180, 360, _shade(skin, 0.45), W(0.008), AA, shift)
        # Brow: inner end moves by brow_tilt, whole brow by brow_raise.
        by = ey - identity.brow_gap - e.brow_raise - 0.35 * (e.eye_open - 1.0) * identity.eye_h
        inner = (ex - sx * identity.brow_len * 0.45, by - e.brow_tilt)
        outer = (ex + sx * identity.brow_len * 0.55, by + 0.3 * e.brow_tilt + 0.006)
        mid = (0.5 * (inner[0] + outer[0]), 0.5 * (inner[1] + outer[1]) - 0.01)
        pts = np.array([P(*inner), P(*mid), P(*outer)], np.int32)
        cv2.polylines(img, [pts], False, _shade(hair, 0.8), W(0.016), AA, shift)

    # Nose.
    ny = identity.eye_y + identity.nose_len + 0.04
    pts = np.array([P(cx, identity.eye_y + 0.03), P(cx - 0.022, ny), P(cx + 0.015, ny + 0.004)], np.int32)
    cv2.polylines(img, [pts], False, _shade(skin, 0.7), W(0.008), AA, shift)

    # Mouth: parametric lips. Half-width w, opening o, corner lift c.
    w = identity.mouth_w * e.mouth_width * (0.55 + 0.45 * mouth_width)
    o = 0.10 * float(np.clip(mouth_open + e.mouth_open * (0.3 + mouth_open), 0.0, 1.3))
    c = e.mouth_curve
    my = identity.mouth_y
    xs = np.linspace(-1.0, 1.0, 33)
    bulge = 1.0 - xs**2
    lift = c * xs**2  # corners up for c > 0
    upper = my - 0.45 * o * bulge - lift
    lower = my + 0.55 * o * bulge - lift + 0.004 * bulge
    mouth_x = cx + w * xs
    if o > 0.004:
        inner = np.concatenate([np.stack([mouth_x, upper], 1), np.stack([mouth_x, lower], 1)[::-1]])
        cv2.fillPoly(img, [np.array([P(x, y) for x, y in inner], np.int32)], (70.0, 20.0, 25.0), AA, shift)
        # Teeth: a band under the upper lip, visible once the mouth opens.
        teeth_h = min(0.25 * o, 0.012)
        teeth = np.concatenate(
            [np.stack([mouth_x[4:-4], upper[4:-4]], 1), np.stack([mouth_x[4:-4], upper[4:-4] + teeth_h * bulge[4:-4]], 1)[::-1]]
        )
        cv2.fillPoly(img, [np.array([P(x, y) for x, y in teeth], np.int32)], (240.0, 240.0, 235.0), AA, shift)
    lip_t = W(0.012)
    cv2.polylines(img, [np.array([P(x, y) for x, y in zip(mouth_x, upper)], np.int32)], False, _bgr(identity.lips), lip_t, AA, shift)
    cv2.polylines(img, [np.array([P(x, y) for x, y in zip(mouth_x, lower)], np.int32)], False, _shade(identity.lips, 1.08), W(0.016), AA, shift)

    img = np.clip(img, 0, 255)
    if supersample > 1:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return np.round(img).astype(np.uint8)


# --------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------


def synthesize_speech(
    utterance: Utterance,
    identity: Identity,
    emotion: Union[str, EmotionParams],
    knots_t: np.ndarray,
    num_samples: int,
    sample_rate: int = 16000,
    rng: Optional[np.random.Generator] = None,
    intensity: float = 1.0,
) -> np.ndarray:
    """A speech-like waveform (num_samples,) float32 in [-1, 1].

    Additive synthesis: harmonics of f0 (identity pitch x emotion x intonation) weighted by
    three Gaussian formant bands per viseme, plus band-limited (3.5-7.5 kHz) noise for
    fricatives. Loudness follows the mouth opening, so sound and mouth move together.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    e = emotion_params(emotion, intensity)
    t = np.arange(num_samples) / sample_rate
    u = np.interp(t, knots_t, utterance.knots)  # clip time -> canonical time
    a = _articulation(utterance, u)
    f0 = identity.f0 * e.pitch * a["intonation"]
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = np.zeros(num_samples)
    nyq = 0.48 * sample_rate
    bw = (90.0, 130.0, 180.0)
    for h in range(1, int(nyq / f0.min()) + 1):
        fh = h * f0
        amp = sum(g * np.exp(-0.5 * ((fh - a[k]) / b) ** 2) for g, k, b in zip((1.0, 0.7, 0.35), ("f1", "f2", "f3"), bw))
        amp = (amp + 0.02) * (fh < nyq) / h**0.5
        voiced += amp * np.sin(h * phase)
    # Fricative noise band by FFT masking (stationary filter, time-varying level).
    spec = np.fft.rfft(rng.standard_normal(num_samples))
    freqs = np.fft.rfftfreq(num_samples, 1.0 / sample_rate)
    spec *= (freqs > 3500) & (freqs < 7500)
    noise = np.fft.irfft(spec, num_samples)
    noise /= noise.std() + 1e-9
    level = (0.35 + 0.65 * a["open"]) * a["swell"] * e.loudness
    y = 0.10 * level * a["voiced"] * voiced + 0.06 * a["noise"] * a["swell"] * e.loudness * noise
    # A faint noise floor keeps log-mel finite in silences.
    y += 1e-3 * rng.standard_normal(num_samples)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------
# Clips and pairs
# --------------------------------------------------------------------------------------


@dataclass
class SyntheticClip:
    """One rendered clip.

    frames: (T, H, W, 3) uint8 RGB; audio: (N,) float32 in [-1, 1] with N = T * sr / fps;
    mouth_open, mouth_width: (T,) per-frame ground truth; canonical_time: (T,) utterance time
    of each frame; knots: (V + 1,) clip times of the viseme boundaries.
    """

    frames: np.ndarray
    audio: np.ndarray
    fps: float
    sample_rate: int
    emotion: str
    mouth_open: np.ndarray
    mouth_width: np.ndarray
    canonical_time: np.ndarray
    knots: np.ndarray

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def _num_frames(duration: float, fps: float) -> int:
    return int(math.floor(duration * fps)) + 1


def render_clip(
    identity: Identity,
    emotion: Union[str, EmotionParams],
    utterance: Utterance,
    tempo: Union[float, Sequence[float]] = 1.0,
    fps: float = 25.0,
    size: int = 96,
    seed: int = 0,
    sample_rate: int = 16000,
    supersample: int = 2,
    intensity: float = 1.0,
    frame_indices: Optional[Sequence[int]] = None,
    with_audio: bool = True,
    mouth_gain: float = 1.0,
) -> SyntheticClip:
    """Render ``utterance`` said by ``identity`` with ``emotion`` at speed ``tempo``.

    tempo: scalar or one speed per viseme (>1 faster). frame_indices: render only these
    frames (the ground-truth arrays still cover all frames). Deterministic for ``seed``.
    mouth_gain: factor (> 0) on the viseme opening drawn and returned as ``mouth_open`` (the κ
    world's loudness coupling, :func:`mouth_gain`); the audio is not changed by it. 1 = today.
    """
    if not (math.isfinite(mouth_gain) and mouth_gain > 0):
        raise ValueError(f"expected a finite mouth_gain > 0, got {mouth_gain}")
    if fps <= 0 or sample_rate <= 0:
        raise ValueError(f"expected positive fps and sample_rate, got fps={fps}, sample_rate={sample_rate}")
    knots_t = clip_knots(utterance, tempo)
    T = _num_frames(knots_t[-1], fps)
    t = np.arange(T) / fps
    u = np.interp(t, knots_t, utterance.knots)
    art = _articulation(utterance, u)
    if mouth_gain != 1.0:  # skipped at 1 so today's world stays bit-identical
        art["open"] = art["open"] * float(mouth_gain)
    name = emotion if isinstance(emotion, str) else "custom"
    idx = range(T) if frame_indices is None else [int(i) for i in frame_indices]
    for i in idx:
        if not 0 <= i < T:
            raise ValueError(f"expected frame indices in [0, {T}), got {i}")
    frames = np.stack(
        [render_face(identity, emotion, art["open"][i], art["width"][i], size, supersample, intensity) for i in idx]
    ) if len(idx) else np.zeros((0, size, size, 3), np.uint8)
    n = int(round(T * sample_rate / fps))
    audio = (
        synthesize_speech(utterance, identity, emotion, knots_t, n, sample_rate, np.random.default_rng(seed), intensity)
        if with_audio
        else np.zeros(0, np.float32)
    )
    return SyntheticClip(frames, audio, float(fps), int(sample_rate), name, art["open"], art["width"], u, knots_t)


def deployment_clip(
    identity: Identity,
    utterance: Utterance,
    emotion: str,
    fps: float = 25.0,
    size: int = 96,
    seed: int = 0,
    sample_rate: int = 16000,
    supersample: int = 2,
    frame_indices: Optional[Sequence[int]] = None,
    loudness_normalised: bool = False,
) -> Tuple[SyntheticClip, SyntheticClip]:
    """The deployment case of the κ world and its exact ground truth: ``(neutral, truth)``.

    ``neutral``: ``utterance`` said by ``identity`` with neutral prosody (tempo 1, loudness 1); its
    audio is what the generator is given, and its frames are the perfect neutral anchor.
    ``truth``: the same frames' timing in ``emotion``'s face (brows, eyes, corners, colour, the
    emotion's static mouth shape) with the mouth driven by that neutral audio: no tempo change, no
    loudness gain (``mouth_gain`` 1), whatever κ the training data had. ``truth.audio`` is the
    neutral audio (the same array), ``truth.mouth_open`` the neutral viseme opening (T,).
    ``loudness_normalised``: the neutral audio at :data:`LOUDNESS_RMS` (:func:`normalise_loudness`),
    as in a training set written with that world.
    """
    kw = dict(fps=fps, size=size, sample_rate=sample_rate, supersample=supersample, frame_indices=frame_indices)
    neutral = render_clip(identity, "neutral", utterance, 1.0, seed=seed, **kw)
    if loudness_normalised:
        neutral.audio = normalise_loudness(neutral.audio)
    truth = render_clip(identity, emotion, utterance, 1.0, seed=seed, with_audio=False, **kw)
    truth.audio = neutral.audio
    return neutral, truth


def true_alignment(utterance: Utterance, knots_neutral: np.ndarray, knots_emotional: np.ndarray, fps: float) -> np.ndarray:
    """(T_e,) float neutral-frame index said at each emotional frame: ``fps * W_n(W_e^-1(j / fps))``."""
    T_e = _num_frames(knots_emotional[-1], fps)
    T_n = _num_frames(knots_neutral[-1], fps)
    u = np.interp(np.arange(T_e) / fps, knots_emotional, utterance.knots)
    return np.clip(np.interp(u, utterance.knots, knots_neutral) * fps, 0, T_n - 1)


@dataclass
class SyntheticPair:
    """Same identity and utterance, neutral vs emotional, at two tempos.

    alignment: (T_e,) float neutral frame index for each emotional frame (ground truth);
    path: (2, T_e) int [[neutral_idx...], [emotional_idx...]] (the manifest convention).
    """

    neutral: SyntheticClip
    emotional: SyntheticClip
    identity: Identity
    utterance: Utterance
    emotion: str
    tempo: np.ndarray
    alignment: np.ndarray

    @property
    def path(self) -> np.ndarray:
        j = np.arange(len(self.alignment))
        return np.stack([np.rint(self.alignment).astype(np.int64), j])


def _pair_plan(rng: np.random.Generator, emotion: Optional[str], config: SyntheticFaceConfig):
    identity = sample_identity(rng)
    utterance = sample_utterance(rng, config.num_visemes)
    emo = str(rng.choice(list(config.emotions))) if emotion is None else emotion
    if emo not in EMOTION_PARAMS:
        raise ValueError(f"expected an emotion in {list(EMOTION_PARAMS)}, got {emo!r}")
    base = prosody_tempo(rng.uniform(*config.tempo_range), emo, config.coupling)
    tempo = base * rng.uniform(1 - config.tempo_jitter, 1 + config.tempo_jitter, len(utterance.visemes))
    return identity, utterance, emo, tempo


def make_pair(
    seed: int,
    emotion: Optional[str] = None,
    size: Optional[int] = None,
    fps: Optional[float] = None,
    config: Optional[SyntheticFaceConfig] = None,
    with_audio: bool = True,
    identity: Optional[Identity] = None,
) -> SyntheticPair:
    """A paired sample for ``seed``: neutral at tempo 1, ``emotion`` (random non-neutral when
    None) at a random non-uniform tempo. Deterministic for ``seed``. ``identity``: this face and
    voice instead of the drawn one (e.g. :func:`speaker_identity`: a new sentence of a known speaker);
    the utterance and tempo stay those of ``seed``."""
    config = config or SyntheticFaceConfig()
    if size is not None or fps is not None:
        config = replace(config, size=size or config.size, fps=fps or config.fps)
    rng = np.random.default_rng(seed)
    drawn, utterance, emo, tempo = _pair_plan(rng, emotion, config)
    identity = drawn if identity is None else identity
    kw = dict(fps=config.fps, size=config.size, sample_rate=config.sample_rate, supersample=config.supersample, with_audio=with_audio)
    neutral = render_clip(identity, "neutral", utterance, 1.0, seed=seed * 2 + 1, **kw)
    emotional = render_clip(identity, emo, utterance, tempo, seed=seed * 2 + 2,
                            mouth_gain=mouth_gain(emo, config.coupling), **kw)
    if config.loudness_normalised and with_audio:
        neutral.audio, emotional.audio = normalise_loudness(neutral.audio), normalise_loudness(emotional.audio)
    align = true_alignment(utterance, neutral.knots, emotional.knots, config.fps)
    return SyntheticPair(neutral, emotional, identity, utterance, emo, tempo, align)


def _to_tensor(frames: np.ndarray):
    import torch

    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def pair_clip_tensors(seed: int, num_frames: int = 4, size: int = 64, emotion: Optional[str] = None, config: Optional[SyntheticFaceConfig] = None):
    """Cheap aligned training clip: ``(anchor, target)``, each (T, 3, H, W) float32 in [-1, 1].

    ``target`` is T consecutive emotional frames; ``anchor`` the neutral frames the true
    alignment maps them to. Only these 2T frames are drawn and no audio is synthesised.
    """
    if num_frames < 1:
        raise ValueError(f"expected num_frames >= 1, got {num_frames}")
    config = replace(config or SyntheticFaceConfig(), size=size)
    rng = np.random.default_rng(seed)
    identity, utterance, emo, tempo = _pair_plan(rng, emotion, config)
    fps = config.fps
    kn = clip_knots(utterance, 1.0)
    ke = clip_knots(utterance, tempo)
    align = true_alignment(utterance, kn, ke, fps)
    T_e = len(align)
    start = int(rng.integers(0, max(1, T_e - num_frames + 1)))
    j = np.clip(np.arange(start, start + num_frames), 0, T_e - 1)
    i = np.rint(align[j]).astype(int)
    kw = dict(fps=fps, size=size, supersample=config.supersample, with_audio=False)
    emotional = render_clip(identity, emo, utterance, tempo, frame_indices=j,
                            mouth_gain=mouth_gain(emo, config.coupling), **kw)
    neutral = render_clip(identity, "neutral", utterance, 1.0, frame_indices=i, **kw)
    return _to_tensor(neutral.frames), _to_tensor(emotional.frames)


def synthetic_batch(batch_size: int, num_frames: int = 4, size: int = 64, seed: int = 0, emotion: Optional[str] = None):
    """``(anchor, target)``, each (B, T, 3, H, W) float32 in [-1, 1]; anchor is neutral.

    Sample b uses seed ``seed * 100003 + b``: the same arguments give the same batch.
    """
    import torch

    pairs = [pair_clip_tensors(seed * 100003 + b, num_frames, size, emotion) for b in range(batch_size)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


# --------------------------------------------------------------------------------------
# CLI: stccl-synth
# --------------------------------------------------------------------------------------


def synth_main(argv: Optional[Sequence[str]] = None) -> int:
    """``stccl-synth --out DIR``: write a MEAD-like synthetic data set.

    Layout: ``DIR/<speaker>/video/front/<emotion>/level_1/<clip:03d>.mp4`` (H.264 + AAC),
    clip ``k`` of every emotion of a speaker being the same sentence (as MEAD's shared
    sentences), plus ``DIR/ground_truth.json`` with the true alignments. ``--format frames``
    writes ``<clip>/<idx:06d>.png`` folders plus ``<clip>.wav`` instead.
    """
    from tqdm.auto import tqdm

    from .video_io import write_frames_dir, write_video

    p = argparse.ArgumentParser(prog="stccl-synth", description=synth_main.__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--speakers", type=int, default=2)
    p.add_argument("--clips", type=int, default=3, help="sentences per speaker")
    p.add_argument("--emotions", nargs="+", default=list(EMOTIONS[1:]), help="non-neutral emotions to render")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["mp4", "frames"], default="mp4")
    p.add_argument("--coupling", type=float, default=0.0,
                   help="kappa >= 0: emotional clips speak at their emotion's rate and open the mouth with their "
                        "loudness (issue-22 world); 0 = the original world")
    p.add_argument("--normalise-loudness", action="store_true",
                   help=f"every clip's audio at one RMS ({LOUDNESS_RMS}): its overall loudness is no cue (with "
                        "--coupling > 0, only the emotion label then predicts the mouth's gain)")
    args = p.parse_args(argv)
    if not (math.isfinite(args.coupling) and args.coupling >= 0):
        raise UsageError(f"stccl-synth: expected --coupling >= 0 (kappa), got {args.coupling}")
    for emo in args.emotions:
        if emo not in EMOTION_PARAMS or emo == "neutral":
            raise UsageError(f"stccl-synth: expected non-neutral emotions from {list(EMOTIONS[1:])}, got {emo!r}")
    cfg = SyntheticFaceConfig(size=args.size, fps=args.fps, coupling=args.coupling,
                              loudness_normalised=args.normalise_loudness)
    os.makedirs(args.out, exist_ok=True)
    truth: Dict[str, Dict] = {}
    jobs = [(s, c) for s in range(args.speakers) for c in range(args.clips)]
    for s, c in tqdm(jobs, desc="stccl-synth"):
        speaker = f"S{s:03d}"
        clip = f"{c + 1:03d}"
        identity = speaker_identity(args.seed, s)
        urng = np.random.default_rng([args.seed, s, c])
        utterance = sample_utterance(urng, cfg.num_visemes)
        clips = {"neutral": render_clip(identity, "neutral", utterance, 1.0, cfg.fps, cfg.size, seed=int(urng.integers(1 << 31)))}
        for emo in args.emotions:
            tempo = prosody_tempo(urng.uniform(*cfg.tempo_range), emo, cfg.coupling) * urng.uniform(
                1 - cfg.tempo_jitter, 1 + cfg.tempo_jitter, len(utterance.visemes))
            clips[emo] = render_clip(identity, emo, utterance, tempo, cfg.fps, cfg.size, seed=int(urng.integers(1 << 31)),
                                     mouth_gain=mouth_gain(emo, cfg.coupling))
        for emo, cl in clips.items():
            if cfg.loudness_normalised:
                cl.audio = normalise_loudness(cl.audio)
            d = os.path.join(args.out, speaker, "video", "front", emo, "level_1")
            if args.format == "mp4":
                write_video(os.path.join(d, clip + ".mp4"), cl.frames, cl.fps, cl.audio, cl.sample_rate)
            else:
                write_frames_dir(os.path.join(d, clip), cl.frames, cl.audio, cl.sample_rate, fps=cl.fps)
            if emo != "neutral":
                al = true_alignment(utterance, clips["neutral"].knots, cl.knots, cfg.fps)
                truth.setdefault(speaker, {}).setdefault(emo, {})[f"{clip}_{clip}"] = al.round(3).tolist()
    with open(os.path.join(args.out, "ground_truth.json"), "w") as f:
        f.write(dumps_strict({"fps": cfg.fps, "size": cfg.size, "seed": args.seed, "coupling": cfg.coupling,
                             **({"loudness_normalised": True} if cfg.loudness_normalised else {}), "alignment": truth}))
    print(f"stccl-synth: wrote {len(jobs) * (1 + len(args.emotions))} clips to {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from ..utils.safety import cli_errors

    raise SystemExit(cli_errors(synth_main)())
