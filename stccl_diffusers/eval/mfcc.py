"""MFCC front end of SyncNet, numerically equal to ``python_speech_features.mfcc`` defaults.

SyncNet (joonson/syncnet_python) was trained on ``python_speech_features.mfcc(audio, 16000)``
of the raw int16 samples (no rescaling to [-1, 1]), so the absolute scale matters for the
energy coefficient: pass the samples as int16 values (or floats on that scale).

Defaults (facts §7): 13 cepstra, 26 mel filters, 25 ms window, 10 ms step, nfft 512,
pre-emphasis 0.97, cepstral lifter 22, c0 replaced by the log frame energy, rectangular window.
This file is a numpy re-implementation so that evaluation does not depend on that package;
``tests/test_eval_lse.py`` checks it against the package numerically.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["mfcc", "mel_filterbank", "frame_signal", "hz_to_mel", "mel_to_hz"]


def hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def _round_half_up(x: float) -> int:
    # python_speech_features rounds frame lengths half-up (decimal ROUND_HALF_UP), not banker's.
    return int(math.floor(x + 0.5))


def frame_signal(signal: np.ndarray, frame_len: int, frame_step: int) -> np.ndarray:
    """Split ``signal`` (S,) into (F, frame_len) frames; the tail is zero-padded to a whole frame.

    F = 1 if S <= frame_len else 1 + ceil((S - frame_len) / frame_step).
    """
    n = len(signal)
    num = 1 if n <= frame_len else 1 + int(math.ceil((n - frame_len) / frame_step))
    pad = (num - 1) * frame_step + frame_len
    padded = np.concatenate([signal, np.zeros(pad - n, dtype=signal.dtype)])
    idx = np.arange(frame_len)[None, :] + frame_step * np.arange(num)[:, None]
    return padded[idx]


def mel_filterbank(nfilt: int = 26, nfft: int = 512, samplerate: int = 16000, lowfreq: float = 0.0, highfreq: float | None = None) -> np.ndarray:
    """Triangular mel filters on FFT bins, (nfilt, nfft // 2 + 1); bin edges floor((nfft+1) f / sr)."""
    highfreq = highfreq or samplerate / 2
    if highfreq > samplerate / 2:
        raise ValueError(f"highfreq must be <= samplerate / 2 = {samplerate / 2}, got {highfreq}")
    mels = np.linspace(hz_to_mel(lowfreq), hz_to_mel(highfreq), nfilt + 2)
    edges = np.floor((nfft + 1) * mel_to_hz(mels) / samplerate)
    fb = np.zeros((nfilt, nfft // 2 + 1))
    bins = np.arange(nfft // 2 + 1, dtype=np.float64)
    for j in range(nfilt):
        lo, mid, hi = edges[j], edges[j + 1], edges[j + 2]
        up = (bins >= lo) & (bins < mid)
        down = (bins >= mid) & (bins < hi)
        fb[j, up] = (bins[up] - lo) / (mid - lo)
        fb[j, down] = (hi - bins[down]) / (hi - mid)
    return fb


def _dct2_ortho(x: np.ndarray) -> np.ndarray:
    """Orthonormal DCT-II along the last axis (scipy.fftpack.dct(type=2, norm='ortho'))."""
    n = x.shape[-1]
    k = np.arange(n)[:, None]
    basis = np.cos(np.pi * k * (2 * np.arange(n)[None, :] + 1) / (2 * n))
    scale = np.full((n, 1), math.sqrt(2.0 / n))
    scale[0] = math.sqrt(1.0 / n)
    return x @ (basis * scale).T


def mfcc(
    signal: np.ndarray,
    samplerate: int = 16000,
    winlen: float = 0.025,
    winstep: float = 0.01,
    numcep: int = 13,
    nfilt: int = 26,
    nfft: int = 512,
    preemph: float = 0.97,
    ceplifter: int = 22,
    append_energy: bool = True,
) -> np.ndarray:
    """MFCCs of a mono signal.

    Args:
        signal: (S,) samples, int16 scale (SyncNet convention; see module docstring).
    Returns:
        (F, numcep) float64, one row every ``winstep`` seconds (F = 1 + ceil((S - 400) / 160) at 16 kHz).
        SyncNet uses the transpose, (numcep, F), and video frame v at 25 fps reads columns 4v .. 4v+19.
    """
    sig = np.asarray(signal, dtype=np.float64)
    if sig.ndim != 1 or sig.size == 0:
        raise ValueError(f"expected a non-empty mono signal (S,), got shape {sig.shape}")
    if not np.all(np.isfinite(sig)):
        raise ValueError("audio signal contains NaN or inf")
    sig = np.append(sig[0], sig[1:] - preemph * sig[:-1])
    frames = frame_signal(sig, _round_half_up(winlen * samplerate), _round_half_up(winstep * samplerate))
    pspec = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    eps = np.finfo(float).eps
    energy = pspec.sum(axis=1)
    energy = np.where(energy == 0, eps, energy)
    feat = pspec @ mel_filterbank(nfilt, nfft, samplerate).T
    feat = np.where(feat == 0, eps, feat)
    cep = _dct2_ortho(np.log(feat))[:, :numcep]
    if ceplifter > 0:
        cep = cep * (1 + (ceplifter / 2.0) * np.sin(np.pi * np.arange(numcep) / ceplifter))
    if append_energy:
        cep[:, 0] = np.log(energy)
    return cep
