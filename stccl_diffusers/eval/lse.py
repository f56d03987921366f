"""LSE-D / LSE-C (lip-sync error distance and confidence) with SyncNet (facts §7).

Functional core: :func:`sync_offset_search` over precomputed features. Shell:
:func:`syncnet_features` (crops + audio -> features) and :func:`compute_lse`.

Conventions follow joonson/syncnet_python (``SyncNetInstance.evaluate`` / ``calc_pdist``):
video window v (frames v..v+4) is paired with MFCC columns 4v .. 4v+19; the audio features are
zero-padded by ``vshift`` rows on both sides and, for k = 0 .. 2*vshift,

    d[v, k]   = || f_video[v] - f_audio_padded[v + k] ||_2      (audio window v + k - vshift)
    mean_d[k] = mean_v d[v, k]
    LSE-D = min_k mean_d[k],  LSE-C = median_k mean_d[k] - LSE-D,  offset = vshift - argmin_k mean_d[k]

so a positive offset means video window v matches the audio window ``offset`` steps earlier.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .eval_io import nearest_frame_indices
from .mfcc import mfcc

__all__ = ["LSEResult", "sync_offset_search", "syncnet_features", "compute_lse", "SYNCNET_FPS", "SYNCNET_SR"]

SYNCNET_FPS = 25.0
SYNCNET_SR = 16000


@dataclass
class LSEResult:
    lse_d: float
    lse_c: float
    offset: int
    num_windows: int
    mean_dists: List[float] = field(default_factory=list)  # (2 * vshift + 1,) curve, for plots
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def sync_offset_search(video_feats: torch.Tensor, audio_feats: torch.Tensor, vshift: int = 15) -> dict:
    """Offset search over SyncNet features.

    Args:
        video_feats: (V, D) lip features, one per 5-frame window.
        audio_feats: (V, D) audio features of the same windows (same V).
        vshift: maximal shift in windows (syncnet_python's default for evaluation is 15).
    Returns:
        dict with ``dists`` (V, 2*vshift+1), ``mean_dists`` (2*vshift+1,), ``lse_d``, ``lse_c``, ``offset``.
    Distances use ``F.pairwise_distance`` (which adds eps=1e-6 to the difference) like the public code.
    """
    if video_feats.ndim != 2 or video_feats.shape != audio_feats.shape:
        raise ValueError(f"expected video and audio features (V, D) of equal shape, got {tuple(video_feats.shape)} and {tuple(audio_feats.shape)}")
    if video_feats.shape[0] < 1:
        raise ValueError("need at least one window")
    v = video_feats.double()
    a = F.pad(audio_feats.double(), (0, 0, vshift, vshift))
    win = 2 * vshift + 1
    # (V, win, D): audio rows v .. v + 2*vshift of the padded sequence for each window v.
    a_win = a.unfold(0, win, 1).transpose(1, 2)[: v.shape[0]]
    dists = F.pairwise_distance(v[:, None, :].expand_as(a_win).reshape(-1, v.shape[1]), a_win.reshape(-1, v.shape[1])).view(v.shape[0], win)
    mean_d = dists.mean(0)
    min_val, min_idx = torch.min(mean_d, 0)
    median = torch.median(mean_d)  # odd count (2*vshift+1): the true median
    return {
        "dists": dists,
        "mean_dists": mean_d,
        "lse_d": float(min_val),
        "lse_c": float(median - min_val),
        "offset": int(vshift - int(min_idx)),
    }


@torch.no_grad()
def syncnet_features(model, crops_bgr: np.ndarray, audio: np.ndarray, batch_size: int = 16, device="cpu", progress: bool = False):
    """SyncNet features of all 5-frame windows of a 25 fps clip.

    Args:
        crops_bgr: (T, 224, 224, 3) face crops, BGR, uint8 or float in [0, 255], 25 fps.
        audio: (S,) 16 kHz mono on the int16 scale.
    Returns:
        (video_feats (V, 1024), audio_feats (V, 1024)) with V = min(T, floor(S / 640)) - 5
        (syncnet_python's ``lastframe``).
    """
    crops = np.asarray(crops_bgr)
    if crops.ndim != 4 or crops.shape[1:] != (224, 224, 3):
        raise ValueError(f"expected face crops (T, 224, 224, 3) BGR in [0, 255], got {crops.shape}")
    cc = mfcc(audio).T  # (13, F)
    num = min(len(crops), len(audio) // 640) - 5
    if num < 1:
        raise ValueError(f"clip too short for SyncNet: {len(crops)} frames at 25 fps and {len(audio) / SYNCNET_SR:.2f} s of audio give no 5-frame window")
    video = torch.from_numpy(crops.astype(np.float32)).permute(3, 0, 1, 2)  # (3, T, 224, 224)
    cct = torch.from_numpy(cc.astype(np.float32))
    model.eval().to(device)
    vf, af = [], []
    starts = range(0, num, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="syncnet", leave=False)
    for i in starts:
        idx = range(i, min(num, i + batch_size))
        lips = torch.stack([video[:, j:j + 5] for j in idx]).to(device)
        mf = torch.stack([cct[:, 4 * j:4 * j + 20] for j in idx])[:, None].to(device)
        vf.append(model.forward_lip(lips).double().cpu())
        af.append(model.forward_aud(mf).double().cpu())
    return torch.cat(vf), torch.cat(af)


def compute_lse(model, crops_bgr: np.ndarray, audio: np.ndarray, fps: float = 25.0, vshift: int = 15, batch_size: int = 16, device="cpu") -> LSEResult:
    """LSE-D, LSE-C and AV offset of one clip. Frames at other rates are resampled to 25 fps by
    nearest-frame index first, and the result says so in ``notes``."""
    notes = []
    if abs(fps - SYNCNET_FPS) > 1e-6:
        idx = nearest_frame_indices(len(crops_bgr), fps, SYNCNET_FPS)
        notes.append(f"video resampled from {fps:g} fps to 25 fps by nearest-frame index ({len(crops_bgr)} -> {len(idx)} frames)")
        crops_bgr = np.asarray(crops_bgr)[idx]
    vf, af = syncnet_features(model, crops_bgr, audio, batch_size=batch_size, device=device)
    out = sync_offset_search(vf, af, vshift=vshift)
    return LSEResult(out["lse_d"], out["lse_c"], out["offset"], int(vf.shape[0]), [float(x) for x in out["mean_dists"]], notes)
