"""FAD: Frechet distance between ArcFace embeddings of real and generated faces (facts §7).

    FAD = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^{1/2})

The functional core (:func:`frechet_distance`, :func:`fad_from_embeddings`) works on numpy
arrays in float64. :func:`arcface_embeddings` is the thin shell that runs the ArcFace iResNet
(``stccl_diffusers.models.iresnet``) on 112x112 aligned faces (``faces.align_face_112``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
from scipy import linalg

__all__ = ["FADResult", "frechet_distance", "fad_from_embeddings", "arcface_embeddings", "gaussian_stats"]


@dataclass
class FADResult:
    fad: float
    n_real: int
    n_generated: int
    dim: int
    eps: float  # added to both covariance diagonals (0.0 when not needed)
    note: str

    def to_dict(self) -> dict:
        return asdict(self)


def gaussian_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of ``x`` (N, D), float64. N >= 2."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"expected embeddings (N >= 2, D), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("embeddings contain NaN or inf")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _blas_single_thread():
    """One BLAS thread for the D x D eigensolves: at D = 512 they take ~0.2 s single-threaded, while
    multi-threaded OpenBLAS on a busy machine was measured 50x slower (threads spinning)."""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1, user_api="blas")
    except ImportError:  # optional dependency
        import contextlib

        return contextlib.nullcontext()


def _sqrtm_product_trace(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr((S1 S2)^{1/2}) for symmetric PSD S1, S2, computed stably.

    Uses Tr((S1 S2)^{1/2}) = Tr((A S2 A)^{1/2}) with A = S1^{1/2}: both square roots are of
    symmetric PSD matrices, so an eigendecomposition with negative round-off eigenvalues clipped
    to 0 is exact up to float64 precision and never produces imaginary parts (scipy's general
    ``sqrtm`` of the non-symmetric product can return tiny imaginary components).
    """
    w1, v1 = np.linalg.eigh((s1 + s1.T) / 2)
    a = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T
    m = a @ s2 @ a
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 0.0, method: str = "eigh") -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), float64.

    Args:
        mu1, mu2: (D,) means. sigma1, sigma2: (D, D) covariances.
        eps: added to both diagonals before the square root (regularises singular covariances).
        method: "eigh" (symmetric eigen route, default) or "scipy" (``scipy.linalg.sqrtm`` of
            S1 S2, imaginary parts below 1e-3 relative are dropped, larger ones raise).
    Returns:
        ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}) >= 0 (clipped at 0 against round-off).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"expected means (D,) and covariances (D, D), got {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    if eps:
        s1 = s1 + eps * np.eye(d)
        s2 = s2 + eps * np.eye(d)
    if method == "eigh":
        with _blas_single_thread():
            tr_covmean = _sqrtm_product_trace(s1, s2)
    elif method == "scipy":
        with _blas_single_thread():
            covmean = linalg.sqrtm(s1 @ s2)
        if np.iscomplexobj(covmean):
            imag = np.abs(covmean.imag).max()
            if imag > 1e-3 * max(1.0, np.abs(covmean.real).max()):
                raise ValueError(f"sqrtm returned a significant imaginary part ({imag:.3g}); increase eps")
            covmean = covmean.real
        tr_covmean = float(np.trace(covmean))
    else:
        raise ValueError(f"method must be 'eigh' or 'scipy', got {method!r}")
    diff = mu1 - mu2
    return max(0.0, float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean))


def fad_from_embeddings(real: np.ndarray, generated: np.ndarray, eps: Optional[float] = None) -> FADResult:
    """FAD between two embedding sets (N_r, D) and (N_g, D).

    ``eps=None`` (default) adds 1e-6 to the covariance diagonals only when either set has fewer
    samples than dimensions (the covariance is then singular); the result says so in ``note``.
    """
    real = np.asarray(real, np.float64)
    generated = np.asarray(generated, np.float64)
    if real.ndim != 2 or generated.ndim != 2 or real.shape[1] != generated.shape[1]:
        raise ValueError(f"expected embeddings (N_r, D) and (N_g, D) with equal D, got {real.shape} and {generated.shape}")
    mu1, s1 = gaussian_stats(real)
    mu2, s2 = gaussian_stats(generated)
    d = real.shape[1]
    few = min(len(real), len(generated)) < d
    if eps is None:
        eps = 1e-6 if few else 0.0
    note = ""
    if few:
        note = f"fewer frames than dimensions ({len(real)} real, {len(generated)} generated, D={d}): covariances are singular"
        note += f"; eps={eps:g} added to the diagonals" if eps else "; no eps added"
    elif eps:
        note = f"eps={eps:g} added to the diagonals"
    return FADResult(frechet_distance(mu1, s1, mu2, s2, eps=eps), len(real), len(generated), d, float(eps), note)


@torch.no_grad()
def arcface_embeddings(model: torch.nn.Module, faces: np.ndarray, batch_size: int = 64, device: str | torch.device = "cpu") -> np.ndarray:
    """ArcFace embeddings of aligned faces.

    Args:
        faces: (N, 112, 112, 3) uint8 RGB, insightface-aligned (``faces.align_face_112``).
    Returns:
        (N, 512) float64 raw (un-normalised) embeddings, as FID-style statistics use them.
    """
    faces = np.asarray(faces)
    if faces.ndim != 4 or faces.shape[1:] != (112, 112, 3):
        raise ValueError(f"expected aligned faces (N, 112, 112, 3) uint8 RGB, got {faces.shape}")
    model.eval().to(device)
    out = []
    for i in range(0, len(faces), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(faces[i:i + batch_size])).to(device).permute(0, 3, 1, 2).float()
        x = (x / 255.0 - 0.5) / 0.5  # insightface normalisation (facts §3)
        out.append(model(x).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 512))
