"""The functional core of STCCL: visual correlations, region sampling, InfoNCE and CAAS weights.

Every function here is a pure function over tensors; the stateful shell is
:class:`stccl_diffusers.metric.STCCLMetric`. Notation follows the STCCL paper (journal version):

- ``x`` is the anchor side (the neutral / source clip), ``y`` the generated / emotional side
  (paper §8.2: "we designate the image with the neutral emotion as x").
- A feature map ``F`` of one layer is ``(N, C, H, W)``; a location is a flat index ``h * W + w``.
- A *visual correlation* ``Z(F, i, j)`` between regions (or frames) ``i`` and ``j`` is a vector of
  ``C`` numbers (eq. 1-3), which the mapping ``f`` (two FC layers with ReLU, eq. 9) projects before
  the InfoNCE loss (eq. 10, 13).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "NEIGHBOUR_OFFSETS",
    "visual_disparity",
    "correlation_matrix_entry",
    "correlate",
    "valid_anchor_positions",
    "sample_anchor_locations",
    "neighbour_locations",
    "sample_negative_locations",
    "gather_locations",
    "frame_pairs",
    "candidate_logits",
    "info_nce",
    "alignment_loss",
    "relational_kl",
    "caas_strength",
    "caas_weights",
]

# The 3x3 ring around a location (paper §8.2: "eight adjacent regions around it").
NEIGHBOUR_OFFSETS: Tuple[Tuple[int, int], ...] = (
    (-1, -1), (-1, 0), (-1, 1),
    (0, -1),           (0, 1),
    (1, -1), (1, 0), (1, 1),
)


def visual_disparity(f_i: torch.Tensor, f_j: torch.Tensor) -> torch.Tensor:
    """VD, eq. 1: ``V(I, i, j) = I(i) - I(j)``. ``f_i``, ``f_j``: (..., C) -> (..., C)."""
    return f_i - f_j


def correlation_matrix_entry(f_i: torch.Tensor, f_j: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """CM, eq. 2-3: the entry ``M_ij`` of ``M = F F^T``, kept as a vector.

    ``M_ij = sum_c F_c(i) F_c(j)`` is a scalar; the paper leaves open how it becomes an input for
    the mapping ``f``. We keep its per-channel terms: ``C(I, i, j) = C * F^(i) * F^(j)``
    (elementwise), with ``F^`` the channel-L2-normalised features: a C-vector whose *mean* is
    exactly the cosine-normalised ``M_ij``. Normalising keeps ``M`` scale-free across layers and
    identities, as a correlation should be; the factor ``C`` keeps entries O(1) so that ``f``'s
    bias does not swamp them. ``f_i``, ``f_j``: (..., C) -> (..., C).
    """
    c, dtype = f_i.shape[-1], f_i.dtype
    f_i = F.normalize(f_i.float(), dim=-1, eps=eps)
    f_j = F.normalize(f_j.float(), dim=-1, eps=eps)
    return (c * f_i * f_j).to(dtype)


def correlate(kind: str, f_i: torch.Tensor, f_j: torch.Tensor) -> torch.Tensor:
    """``Z(., i, j)`` for ``kind`` in ``{"vd", "cm"}`` (the paper's unified representation)."""
    if kind == "vd":
        return visual_disparity(f_i, f_j)
    if kind == "cm":
        return correlation_matrix_entry(f_i, f_j)
    raise ValueError(f"expected correlation 'vd' or 'cm', got {kind!r}")


def valid_anchor_positions(height: int, width: int, window: float = 0.95, device=None) -> torch.Tensor:
    """Flat indices of locations that may serve as SCC anchors.

    An anchor needs its full 3x3 ring inside the map, and (as in the official code, which samples
    from a central sub-window of about ``H/2 + 0.45 H``) it is drawn from the central ``window``
    fraction of the map. Returns a 1-D long tensor; raises if the map is smaller than 3x3.
    """
    if height < 3 or width < 3:
        raise ValueError(f"spatial correlation needs feature maps of at least 3x3, got {height}x{width}")

    def _range(size: int) -> torch.Tensor:
        keep = max(1, int(round(size * window)))
        lo = max(1, (size - keep) // 2)
        hi = min(size - 2, lo + keep - 1)
        if hi < lo:
            lo, hi = 1, size - 2
        return torch.arange(lo, hi + 1, device=device)

    rows, cols = _range(height), _range(width)
    return (rows[:, None] * width + cols[None, :]).reshape(-1)


def _random_subset(candidates: torch.Tensor, batch: int, count: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """``count`` distinct entries of ``candidates`` for each of ``batch`` rows: (batch, count)."""
    n = candidates.numel()
    if count > n:
        raise ValueError(f"cannot sample {count} distinct locations from {n} candidates")
    dev = generator.device if generator is not None else candidates.device
    scores = torch.rand(batch, n, generator=generator, device=dev).to(candidates.device)
    idx = scores.argsort(dim=1)[:, :count]
    return candidates[idx]


def sample_anchor_locations(
    batch: int, height: int, width: int, count: int, window: float = 0.95,
    generator: Optional[torch.Generator] = None, device=None,
) -> torch.Tensor:
    """Distinct SCC anchor locations for each of ``batch`` images: (batch, count) flat indices."""
    cand = valid_anchor_positions(height, width, window, device=device)
    return _random_subset(cand, batch, min(count, cand.numel()), generator)


def neighbour_locations(anchors: torch.Tensor, width: int) -> torch.Tensor:
    """The 8 ring neighbours of each anchor: (..., S) -> (..., S, 8) flat indices."""
    # Built with device ops (no host-to-device copy, hence no sync), in NEIGHBOUR_OFFSETS order.
    step = torch.arange(-1, 2, device=anchors.device)
    offs = (step.repeat_interleave(3) * width + step.repeat(3))
    offs = torch.cat([offs[:4], offs[5:]])
    return anchors[..., None] + offs


def sample_negative_locations(
    centres: torch.Tensor, height: int, width: int, count: int, exclude_ring: bool,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """``count`` random locations per centre, never the centre itself (nor its ring if asked).

    ``centres``: (N, S) flat indices -> (N, S, count). Used for the paper's "eight randomly
    sampled regions" ``k`` (eq. 10): excluding the ring guarantees no negative equals a positive.
    """
    n, s = centres.shape
    hw = height * width
    dev = generator.device if generator is not None else centres.device
    scores = torch.rand(n, s, hw, generator=generator, device=dev).to(centres.device)
    banned = centres[..., None]
    if exclude_ring:
        banned = torch.cat([banned, neighbour_locations(centres, width)], dim=-1)
    scores.scatter_(2, banned.clamp(0, hw - 1), float("inf"))
    available = hw - banned.shape[-1]
    if count > available:
        raise ValueError(f"cannot draw {count} negatives from a {height}x{width} map")
    return scores.topk(count, dim=2, largest=False).indices


def gather_locations(feat: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
    """Features at flat locations: feat (N, C, H, W), locations (N, *L) -> (N, *L, C)."""
    n, c = feat.shape[:2]
    # Gathering along the location axis of a channel-last view returns a contiguous (N, K, C):
    # the mapping heads then run as plain GEMMs instead of broadcast batched matmuls.
    flat = feat.flatten(2).transpose(1, 2)
    idx = locations.reshape(n, -1, 1).expand(-1, -1, c)
    return flat.gather(1, idx).view(*locations.shape, c)


def frame_pairs(num_frames: int, span: Optional[int] = None, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """All frame pairs ``(i, j)``, ``i < j <= i + span`` (TCC, eq. 5/12). Returns two (P,) tensors."""
    if num_frames < 2:
        raise ValueError(f"temporal correlation needs T >= 2 frames, got T={num_frames}")
    span = num_frames - 1 if span is None else min(num_frames - 1, max(1, int(span)))
    # Ordered by distance d = j - i; built from aranges so no boolean indexing (a host sync on GPU).
    i = torch.cat([torch.arange(num_frames - d, device=device) for d in range(1, span + 1)])
    d = torch.cat([torch.full((num_frames - d,), d, device=device) for d in range(1, span + 1)])
    return i, i + d


def candidate_logits(
    query: torch.Tensor, positive: torch.Tensor, negatives: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities of each query with its candidates: the positive first, then the negatives.

    Layouts (the same as :func:`info_nce`):

    - explicit negatives: ``query``/``positive`` (..., D), ``negatives`` (..., M, D) with one set per
      query, or (..., M, D) with ``negatives.ndim == query.ndim``: one set shared by the Q queries
      of a group (``query`` (..., Q, D)), computed as one matmul;
    - ``negatives=None`` (PatchNCE form): ``query``/``positive`` (G, Q, D); for each query the
      positives of the other ``Q - 1`` queries of the group are its negatives. Its own entry is
      masked with ``-inf``.

    Returns ``(sims, neg_sim)``: (..., 1 + M) similarities (column 0 the positive; fp32) and the
    detached mean similarity with the negatives (...,).
    """
    q = F.normalize(query.float(), dim=-1)
    k = F.normalize(positive.float(), dim=-1)
    l_pos = (q * k).sum(-1)
    if negatives is not None:
        kn = F.normalize(negatives.float(), dim=-1)
        if kn.ndim == q.ndim:  # shared by the queries of a group: no broadcast copy of the negatives
            l_neg = q @ kn.transpose(-1, -2)
        else:
            l_neg = torch.einsum("...d,...md->...m", q, kn)
        neg_sim = l_neg.mean(-1)
    else:
        if q.ndim != 3:
            raise ValueError(f"in-group negatives need (G, Q, D) queries, got {tuple(q.shape)}")
        qn = q.shape[1]
        if qn < 2:
            raise ValueError("in-group negatives need at least 2 queries per group")
        sims = q @ k.transpose(1, 2)
        eye = torch.eye(qn, dtype=torch.bool, device=q.device)
        neg_sim = (sims.sum(-1) - l_pos) / (qn - 1)
        # The diagonal holds the positives: masked out of the negatives (CUT's PatchNCE does the same).
        l_neg = sims.masked_fill(eye, float("-inf"))
    return torch.cat([l_pos[..., None], l_neg], dim=-1), neg_sim.detach()


def info_nce(
    query: torch.Tensor, positive: torch.Tensor, negatives: Optional[torch.Tensor] = None, tau: float = 0.07,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """InfoNCE of eq. 10/13 with L2-normalised embeddings, softmax in fp32.

    ``-log exp(q.k+/tau) / (exp(q.k+/tau) + sum_k exp(q.k-/tau))``

    Layouts: see :func:`candidate_logits` (explicit negatives, shared per group, or in-group).

    Its optimum is "aligned with k+ and far from every k-", not "q = k+": as a generator loss it
    keeps falling past agreement with the anchor (see :func:`alignment_loss`, :func:`relational_kl`).

    Returns ``(loss, pos_sim, neg_sim)``: the per-query loss (...,) and the cosine similarity of
    each query with its positive (...,) and its mean similarity with the negatives (...,).
    """
    sims, neg_sim = candidate_logits(query, positive, negatives)
    logits = sims / tau
    loss = torch.logsumexp(logits, dim=-1) - logits[..., 0]
    return loss, sims[..., 0].detach(), neg_sim


def alignment_loss(query: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Positive-only alignment ``1 - cos(q, k+)`` per query (BYOL-style), (..., D) -> (...,) in [0, 2].

    Exactly 0 when the two mapped correlations point the same way, so its minimum is agreement
    with the anchor (not in the paper: the paper's generator loss is InfoNCE, eq. 10/13).
    """
    return 1.0 - F.cosine_similarity(query.float(), positive.float(), dim=-1, eps=1e-8)


def relational_kl(
    query: torch.Tensor, anchor_query: torch.Tensor, negatives: Optional[torch.Tensor] = None, tau: float = 0.07,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Relational match: ``KL(p_anchor || p_generated)`` over the same anchor-side candidates.

    The candidates of one query are the anchor's correlation at the same regions (the positive,
    ``anchor_query`` itself) and the anchor's correlations at other regions (``negatives``, taken
    from the anchor). ``p_anchor = softmax(cos(anchor_query, candidates) / tau)`` is how the anchor's
    own correlation relates to them; ``p_generated`` the same with the generated clip's ``query``.
    InfoNCE with the generated clip as query is the cross-entropy against a one-hot target; this
    uses the anchor's own soft distribution as the target instead, so the loss is exactly 0 at
    ``query = anchor_query`` and never rewards moving past it (relational distillation; not in the
    paper). Layouts as :func:`candidate_logits`. Returns ``(loss (...,), neg_sim (...,))``.
    """
    sims_a, _ = candidate_logits(anchor_query.detach(), anchor_query.detach(), negatives)
    sims_g, neg_sim = candidate_logits(query, anchor_query.detach(), negatives)
    log_pa = torch.log_softmax(sims_a / tau, dim=-1)
    log_pg = torch.log_softmax(sims_g / tau, dim=-1)
    pa = log_pa.exp()
    # Masked candidates (-inf on both sides: in-group layout) have pa = 0 and contribute nothing.
    terms = torch.where(pa > 0, pa * (log_pa - log_pg), torch.zeros_like(pa))
    return terms.sum(-1), neg_sim


def caas_strength(z: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The quantity that enters CAAS's sigmoid: how strong a region's correlation is.

    ``z``: raw visual correlations on the anchor side, (..., C). The strength of one correlation is
    its magnitude ``a = ||z||_2``, standardised over all correlations of the same layer in the call,
    ``(a - mean(a)) / std(a)``. Standardising makes the weight scale-free across layers, VD and CM
    (whose magnitudes differ by orders), while keeping the paper's rule: larger correlation ->
    larger weight (mouth regions change most, eq. 15-16). Detached: CAAS weights are not trained.
    """
    a = z.detach().float().norm(dim=-1)
    return (a - a.mean()) / (a.std(unbiased=False) + eps)


def caas_weights(strength: torch.Tensor, lam: float = 2.0, r: float = 2.0) -> torch.Tensor:
    """CAAS, eq. 15: ``w = lambda * sigmoid(s) ** r`` (lambda = r = 2 in the paper), in (0, lambda)."""
    return lam * torch.sigmoid(strength) ** r
