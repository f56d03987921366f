"""``STCCLMetric``: the frozen spatial-temporal coherent correlation metric, as a diffusers model.

The module is a thin shell around :mod:`stccl_diffusers.correlation`: an ArcFace iResNet gives the
multi-scale features ``eps_l`` (eq. 8), per-layer mapping heads ``f`` project visual correlations
(eq. 9, 12), and InfoNCE with CAAS weights gives the loss (eq. 10-16).

Two uses:

- as a loss (``metric(anchor, generated)``): the metric is frozen, the anchor side (neutral /
  source frames) is computed without gradient, and the gradient reaches ``generated`` only;
- as a metric to learn (``metric.unfreeze(); metric.contrastive_loss(x, y)``), on paired clips
  (paper §8.2), with backbone and heads trainable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from . import correlation as corr
from .models.iresnet import ARCFACE_DEPTHS, IResNet, load_arcface_state_dict, read_state_dict, strip_prefix

__all__ = ["STCCLMetric", "STCCLOutput", "GENERATOR_LOSSES"]

# The generator-loss forms (``STCCLMetric(generator_loss=...)``), anchor side x, generated side y:
#   "paper":      InfoNCE, query f(Z(x)), positive f(Z(y)), negatives from y (eq. 10/13 as written
#                 for metric learning). Not minimal at y = x: it also pushes y's regions apart.
#   "nce":        InfoNCE, query f(Z(y)), positive and negatives from x (CUT's PatchNCE / CCPL sides).
#   "align":      1 - cos(f(Z(y)), f(Z(x))): positive-only, exactly 0 at agreement.
#   "relational": KL of the anchor's soft distribution over anchor candidates vs the generated one's.
#   "align+relational": the sum of the two.
GENERATOR_LOSSES = ("paper", "nce", "align", "relational", "align+relational")


def _check_form(form: str, name: str) -> str:
    """`form` if it is one of :data:`GENERATOR_LOSSES`, else a ValueError naming `name` and the choices."""
    if form not in GENERATOR_LOSSES:
        raise ValueError(f"{name}: expected one of {list(GENERATOR_LOSSES)}, got {form!r}")
    return form

# Inputs further than this outside [-1, 1] are rejected: they are almost surely [0, 255] or
# un-normalised latents, and the metric would silently score garbage.
_RANGE_TOLERANCE = 0.5


@dataclass
class STCCLOutput(BaseOutput):
    """What one call of the metric returns.

    Args:
        loss: scalar ``L_stccl`` (eq. 16), mean over clips of ``sample_loss``.
        spatial_loss: scalar, the SCC part (summed over layers, mean over clips).
        temporal_loss: scalar, the TCC part.
        pos_sim: detached scalar, mean cosine similarity of corresponding correlations (Fig. 3).
        neg_sim: detached scalar, the same for non-corresponding correlations.
        sample_loss: (B,) loss per clip.
        per_layer: ``{"scc/1": {"loss", "pos_sim", "neg_sim", "sample_loss"}, ..., "tcc/4": {...}}``
            (detached; ``sample_loss`` is that layer's (B,) loss per clip, ``loss`` its mean).
    """

    loss: torch.Tensor
    spatial_loss: torch.Tensor
    temporal_loss: torch.Tensor
    pos_sim: torch.Tensor
    neg_sim: torch.Tensor
    sample_loss: torch.Tensor
    per_layer: Dict[str, Dict[str, torch.Tensor]] = field(default_factory=dict)


def _mapping_head(channels: int, ratio: int) -> nn.Sequential:
    """``f``: two fully connected layers with ReLU (eq. 9); official sizes C -> C -> C / 4."""
    return nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, max(1, channels // ratio)))


def _per_layer_tuple(value, name: str) -> Tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * 4
    value = tuple(int(v) for v in value)
    if len(value) != 4:
        raise ValueError(f"{name}: expected 4 per-layer values (layers 1..4), got {list(value)}")
    return value


class STCCLMetric(ModelMixin, ConfigMixin):
    """The STCCL metric (SCC + TCC with CAAS), frozen on construction and ready to use as a loss.

    Args:
        backbone: ArcFace iResNet depth, ``"r18" | "r34" | "r50" | "r100"``, or a list of 4 stage
            depths (e.g. ``(1, 1, 1, 1)`` for tiny tests).
        correlation: ``"vd"`` (visual disparity, eq. 1) or ``"cm"`` (correlation matrix, eq. 2-3).
        input_size: frames are resized to ``input_size x input_size`` (224 in the paper, §8.2).
        layers: which of the 4 stages contribute.
        use_scc / use_tcc: spatial / temporal term.
        num_samples: SCC anchor locations per image and layer (official: 32, 16, 8, 4), each with
            its 8 neighbours.
        temporal_samples: TCC locations per clip and layer (default: ``num_samples``).
        temporal_span: TCC frame pairs ``(i, j)`` with ``0 < j - i <= span`` (default: all pairs).
        num_negatives: negatives per positive. An int (paper: 8) draws that many random regions
            (SCC: ``y_ik`` for random ``k`` outside ``i``'s ring; TCC: the same frame pair at other
            locations). ``None`` uses every other sampled correlation of the same image / frame
            pair as a negative (the official code's PatchNCE form).
        tau: InfoNCE temperature (0.07).
        caas: use the correlation-aware adaptive strategy (eq. 15-16), ``caas_lambda``, ``caas_r``.
        sample_window: central fraction of each map that anchors are drawn from.
        head_ratio: output width of ``f`` is ``C / head_ratio`` (official: 4).
        spatial_weight / temporal_weight: weights of the two terms in ``loss``.
        embedding_head: keep ArcFace's recognition head (``fc``: 12.8 M parameters), needed only
            for 512-d embeddings (evaluation); STCCL itself uses the four stages alone.
        time_negatives: SCC also draws negatives from the *other frames* of the same target clip at
            the same region ``(i, j)`` (T - 1 more per query, needs ``num_negatives`` set), so the
            metric must tell the mouth at this instant from the same mouth a few frames away: the
            speech timing. Not in the paper (its negatives are other regions of the same frame).
        generator_loss: the form of the loss when the metric scores a generated clip against its
            anchor (``metric(anchor, generated)``), one of :data:`GENERATOR_LOSSES`. Deviation from
            the paper: its eq. 10/13 (``"paper"``) is the metric-learning loss, whose minimum is not
            ``generated = anchor``; the default is a loss that is 0 there. Metric learning
            (:meth:`contrastive_loss`) always uses the paper's InfoNCE.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        backbone: Union[str, Sequence[int]] = "r50",
        correlation: str = "vd",
        input_size: int = 224,
        layers: Sequence[int] = (1, 2, 3, 4),
        use_scc: bool = True,
        use_tcc: bool = True,
        num_samples: Union[int, Sequence[int]] = (32, 16, 8, 4),
        temporal_samples: Optional[Union[int, Sequence[int]]] = None,
        temporal_span: Optional[int] = None,
        num_negatives: Optional[int] = 8,
        tau: float = 0.07,
        caas: bool = True,
        caas_lambda: float = 2.0,
        caas_r: float = 2.0,
        sample_window: float = 0.95,
        head_ratio: int = 4,
        spatial_weight: float = 1.0,
        temporal_weight: float = 1.0,
        embedding_head: bool = True,
        time_negatives: bool = False,
        generator_loss: str = "align",
    ):
        super().__init__()
        _check_form(generator_loss, "generator_loss")
        if correlation not in ("vd", "cm"):
            raise ValueError(f"correlation: expected 'vd' or 'cm', got {correlation!r}")
        if not (use_scc or use_tcc):
            raise ValueError("at least one of use_scc / use_tcc must be on")
        layers = tuple(int(l) for l in layers)
        if not layers or any(l not in (1, 2, 3, 4) for l in layers):
            raise ValueError(f"layers: expected a non-empty subset of (1, 2, 3, 4), got {list(layers)}")
        if num_negatives is not None and int(num_negatives) < 1:
            raise ValueError(f"num_negatives: expected a positive int or None, got {num_negatives}")
        if time_negatives and (num_negatives is None or not use_scc):
            raise ValueError("time_negatives: needs use_scc and an int num_negatives (they extend SCC's sampled negatives)")
        if isinstance(backbone, str):
            key = backbone.lower().replace("iresnet", "r")
            if key not in ARCFACE_DEPTHS:
                raise ValueError(f"backbone: expected one of {sorted(ARCFACE_DEPTHS)} or 4 stage depths, got {backbone!r}")
            depths = ARCFACE_DEPTHS[key]
        else:
            depths = _per_layer_tuple(backbone, "backbone")
        self._num_samples = _per_layer_tuple(num_samples, "num_samples")
        self._temporal_samples = _per_layer_tuple(
            num_samples if temporal_samples is None else temporal_samples, "temporal_samples"
        )
        for l in layers:
            size = input_size // (2 ** l)
            # SCC needs a 3x3 ring plus at least one region outside it to draw a negative from.
            if size < 4:
                raise ValueError(
                    f"input_size={input_size} gives {size}x{size} maps at layer {l}; "
                    f"STCCL needs at least 4x4 (use input_size >= {4 * 2 ** l} or drop layer {l})"
                )
            if num_negatives is None and min(self._num_samples[l - 1], self._temporal_samples[l - 1]) < 2 and use_tcc:
                raise ValueError("num_negatives=None needs at least 2 sampled locations per layer")

        # Not named `backbone`: that name is the config entry (ModelMixin resolves config first).
        self.arcface = IResNet(depths, embedding_head=embedding_head)
        chans = IResNet.stage_channels
        self.scc_heads = nn.ModuleList([_mapping_head(c, head_ratio) for c in chans])
        self.tcc_heads = nn.ModuleList([_mapping_head(c, head_ratio) for c in chans])
        self.validate_inputs = True
        self.freeze()

    @property
    def backbone(self) -> IResNet:
        """The ArcFace iResNet (``forward_stages`` for STCCL, ``forward`` for 112x112 embeddings)."""
        return self.arcface

    # ------------------------------------------------------------------ state
    def freeze(self) -> "STCCLMetric":
        """Frozen, eval mode: the metric as a loss (paper §4.3: the learned metric is fixed)."""
        self.requires_grad_(False)
        self.eval()
        return self

    def unfreeze(self) -> "STCCLMetric":
        """Trainable backbone and heads, train mode: for metric learning (paper §8.2)."""
        self.requires_grad_(True)
        # insightface keeps the embedding BN scale fixed; the STCCL loss does not touch it anyway.
        if self.backbone.has_embedding_head:
            self.backbone.features.weight.requires_grad_(False)
        self.train()
        return self

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "STCCLMetric":
        """Load a `save_pretrained` folder: local only (a hub id is an error; nothing downloads), frozen."""
        from .utils.safety import local_dir

        path = local_dir(pretrained_model_name_or_path, "STCCL metric")
        kwargs["local_files_only"] = True
        return super().from_pretrained(str(path), *args, **kwargs).freeze()

    def load_arcface_weights(self, path: Union[str, os.PathLike], strict: bool = True) -> "STCCLMetric":
        """Load an insightface ``arcface_torch`` ``backbone.pth`` (``module.`` prefix allowed)."""
        load_arcface_state_dict(self.backbone, read_state_dict(path), strict=strict)
        return self

    def load_official_state_dict(self, state_dict: Union[Dict[str, torch.Tensor], str, os.PathLike]) -> "STCCLMetric":
        """Import the official STCCL spatial model (``resnet50.*`` + ``mlp.{3i,3i+2}.*`` heads).

        The official heads are ``Linear(C, C), ReLU, Linear(C, C/4)`` per layer, stored flat in one
        list; they map onto ``scc_heads[i]``. Needs ``backbone="r50"`` and ``head_ratio=4``.
        """
        if not isinstance(state_dict, dict):
            state_dict = read_state_dict(state_dict)
        sd = strip_prefix(state_dict)
        backbone = {k[len("resnet50."):]: v for k, v in sd.items() if k.startswith("resnet50.")}
        if not backbone:
            raise ValueError("official STCCL state_dict: expected keys starting with 'resnet50.', found none")
        load_arcface_state_dict(self.backbone, backbone, strict=False)
        heads = {}
        for k, v in sd.items():
            if not k.startswith("mlp."):
                continue
            _, idx, param = k.split(".", 2)
            layer, pos = divmod(int(idx), 3)
            if pos == 1 or layer > 3:
                raise ValueError(f"official STCCL state_dict: unexpected head key {k!r}")
            heads[f"{layer}.{pos}.{param}"] = v
        own = self.scc_heads.state_dict()
        if set(heads) != set(own) or any(own[k].shape != v.shape for k, v in heads.items()):
            raise ValueError(
                f"official STCCL heads do not match scc_heads: expected {sorted(own)} with shapes "
                f"{[tuple(v.shape) for v in own.values()]}, got {sorted(heads)}"
            )
        self.scc_heads.load_state_dict(heads)
        return self

    # ------------------------------------------------------------------ checks
    def _check_inputs(self, anchor: torch.Tensor, generated: torch.Tensor) -> None:
        for name, t in (("anchor", anchor), ("generated", generated)):
            if not isinstance(t, torch.Tensor) or t.ndim != 5 or t.shape[2] != 3:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name}: expected frames (B, T, 3, H, W) in [-1, 1], got {got}")
        if anchor.shape != generated.shape:
            raise ValueError(
                f"anchor and generated must have the same shape (B, T, 3, H, W), got "
                f"{tuple(anchor.shape)} and {tuple(generated.shape)}"
            )
        if self.config.use_tcc and anchor.shape[1] < 2:
            raise ValueError(f"temporal correlation (use_tcc=True) needs T >= 2 frames, got T={anchor.shape[1]}")
        if not self.validate_inputs:
            return
        # One host sync for all value checks; switch off with `metric.validate_inputs = False`.
        stats = torch.stack(
            [s for t in (anchor, generated) for s in (t.isfinite().all().float(), t.detach().amin().float(), t.detach().amax().float())]
        ).tolist()
        for name, (finite, lo, hi) in zip(("anchor", "generated"), (stats[:3], stats[3:])):
            if finite < 1:
                raise ValueError(f"{name}: expected finite values in [-1, 1], got NaN or inf")
            if lo < -1 - _RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
                raise ValueError(f"{name}: expected values in [-1, 1], got range [{lo:.3g}, {hi:.3g}]")

    # ------------------------------------------------------------------ features
    def _prepare(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.flatten(0, 1)
        size = self.config.input_size
        if x.shape[-2:] != (size, size):
            down = x.shape[-2] > size or x.shape[-1] > size
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=down)
        return x.to(dtype=next(self.backbone.parameters()).dtype) if not torch.is_autocast_enabled() else x

    def extract_features(self, frames: torch.Tensor) -> List[torch.Tensor]:
        """``frames``: (B, T, 3, H, W) in [-1, 1] -> the 4 stage maps, each (B*T, C_l, h_l, w_l)."""
        return self.backbone.forward_stages(self._prepare(frames))

    # ------------------------------------------------------------------ losses
    def forward(
        self, anchor: torch.Tensor, generated: torch.Tensor, generator: Optional[torch.Generator] = None,
        form: Optional[str] = None,
    ) -> STCCLOutput:
        """STCCL loss of ``generated`` against ``anchor``, both (B, T, 3, H, W) in [-1, 1].

        The anchor side is computed without gradient; the gradient reaches ``generated`` only.
        ``generator`` makes the region sampling reproducible. ``form`` overrides the configured
        ``generator_loss`` (one of :data:`GENERATOR_LOSSES`).
        """
        form = self.config.generator_loss if form is None else form
        _check_form(form, "form")
        self._check_inputs(anchor, generated)
        with torch.no_grad():
            fx = self.extract_features(anchor)
        fy = self.extract_features(generated)
        return self._stccl(fx, fy, anchor.shape[0], anchor.shape[1], generator, form)

    def set_generator_loss(self, form: str) -> None:
        """Set the configured ``generator_loss`` (one of :data:`GENERATOR_LOSSES`), as the training
        configs' ``generator_loss`` field does; it is saved with the metric's config."""
        self.register_to_config(generator_loss=_check_form(form, "generator_loss"))

    def contrastive_loss(
        self, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> STCCLOutput:
        """Metric learning (paper §8.2): the loss between paired clips ``x`` (neutral) and ``y``
        (emotional), (B, T, 3, H, W) in [-1, 1], with gradient through both sides. Call
        :meth:`unfreeze` first to train the backbone and heads.

        Always the paper's InfoNCE (eq. 10/13): the neutral clip's correlation is the query, and the
        positive and the negatives come from the emotional clip. The negatives are the emotional
        clip's other regions because that is what the metric must learn to tell apart: which
        region of the *emotional* face corresponds to a neutral region's correlation (and, with
        ``time_negatives``, which instant). As a generator loss this form is not minimal at
        agreement; :meth:`forward` uses ``generator_loss`` instead."""
        self._check_inputs(x, y)
        both = self.extract_features(torch.cat([x, y], dim=0))
        b = x.shape[0]
        fx = [f[: b * x.shape[1]] for f in both]
        fy = [f[b * x.shape[1]:] for f in both]
        return self._stccl(fx, fy, b, x.shape[1], generator, "paper")

    def _stccl(self, fx, fy, batch: int, frames: int, generator, form: str = "paper") -> STCCLOutput:
        cfg = self.config
        device = fx[0].device
        zero = torch.zeros((), device=device)
        spatial = torch.zeros(batch, device=device)
        temporal = torch.zeros(batch, device=device)
        per_layer: Dict[str, Dict[str, torch.Tensor]] = {}
        for l in cfg.layers:
            x, y = fx[l - 1], fy[l - 1]
            if cfg.use_scc:
                loss, w, pos, neg = self._scc_layer(l, x, y, generator, frames, form)
                clip = (w * loss).flatten(1).mean(1).view(batch, frames).mean(1)
                spatial = spatial + clip
                per_layer[f"scc/{l}"] = {"loss": clip.detach().mean(), "pos_sim": pos.mean(), "neg_sim": neg.mean(), "sample_loss": clip.detach()}
            if cfg.use_tcc:
                loss, w, pos, neg = self._tcc_layer(l, x, y, batch, frames, generator, form)
                clip = (w * loss).flatten(1).mean(1)
                temporal = temporal + clip
                per_layer[f"tcc/{l}"] = {"loss": clip.detach().mean(), "pos_sim": pos.mean(), "neg_sim": neg.mean(), "sample_loss": clip.detach()}
        sample_loss = cfg.spatial_weight * spatial + cfg.temporal_weight * temporal
        pos_sim = torch.stack([v["pos_sim"] for v in per_layer.values()]).mean() if per_layer else zero
        neg_sim = torch.stack([v["neg_sim"] for v in per_layer.values()]).mean() if per_layer else zero
        return STCCLOutput(
            loss=sample_loss.mean(),
            spatial_loss=spatial.mean(),
            temporal_loss=temporal.mean(),
            pos_sim=pos_sim,
            neg_sim=neg_sim,
            sample_loss=sample_loss,
            per_layer=per_layer,
        )

    def _weights(self, z_anchor: torch.Tensor) -> torch.Tensor:
        if not self.config.caas:
            return torch.ones(z_anchor.shape[:-1], device=z_anchor.device)
        return corr.caas_weights(corr.caas_strength(z_anchor), self.config.caas_lambda, self.config.caas_r)

    def _pair_loss(self, form: str, hx: torch.Tensor, hy: torch.Tensor, neg: Optional[torch.Tensor]):
        """The per-query loss of ``form`` for mapped correlations ``hx`` (anchor) and ``hy`` (generated)
        with ``neg`` (from y for ``"paper"``, else from x; layouts of :func:`correlation.candidate_logits`).
        ``neg=None`` is the in-group layout (G, Q, D). Returns ``(loss, pos_sim, neg_sim)``."""
        tau = self.config.tau
        if form == "paper":
            return corr.info_nce(hx, hy, neg, tau)
        if form == "nce":
            return corr.info_nce(hy, hx, neg, tau)
        pos = F.cosine_similarity(hy.detach().float(), hx.detach().float(), dim=-1)
        loss = torch.zeros_like(pos)
        neg_sim = torch.zeros_like(pos)
        if "align" in form:
            loss = loss + corr.alignment_loss(hy, hx)
        if "relational" in form:
            rel, neg_sim = corr.relational_kl(hy, hx, neg, tau)
            loss = loss + rel
        return loss, pos, neg_sim

    def _scc_layer(self, l: int, x: torch.Tensor, y: torch.Tensor, generator, frames: int = 1, form: str = "paper"):
        """SCC at layer ``l`` (eq. 9-11). x, y: (N, C, h, w), N = B * frames. Returns per-(i, j)
        loss (N, S, 8), CAAS weights, positive and negative similarities. ``form``: one of
        :data:`GENERATOR_LOSSES`; the negatives come from ``y`` for ``"paper"`` and from the
        anchor ``x`` otherwise."""
        cfg = self.config
        n, _, h, w = x.shape
        kind, head = cfg.correlation, self.scc_heads[l - 1]
        anchors = corr.sample_anchor_locations(n, h, w, self._num_samples[l - 1], cfg.sample_window, generator, x.device)
        neigh = corr.neighbour_locations(anchors, w)
        xa, xn = corr.gather_locations(x, anchors), corr.gather_locations(x, neigh)
        ya, yn = corr.gather_locations(y, anchors), corr.gather_locations(y, neigh)
        zx = corr.correlate(kind, xa[:, :, None].expand_as(xn), xn)  # (N, S, 8, C)
        zy = corr.correlate(kind, ya[:, :, None].expand_as(yn), yn)
        hx, hy = head(zx), head(zy)
        src, src_a = (y, ya) if form == "paper" else (x, xa)
        if cfg.num_negatives is not None:
            # Drawn for every form, so that all forms score the same regions for one generator state.
            m = min(int(cfg.num_negatives), h * w - 9)
            kloc = corr.sample_negative_locations(anchors, h, w, m, exclude_ring=True, generator=generator)
            if form == "align":  # positive-only: no negatives to map
                loss, pos, negs = self._pair_loss(form, hx, hy, None)
                return loss, self._weights(zx), pos, negs
            sk = corr.gather_locations(src, kloc)  # (N, S, m, C)
            neg = head(corr.correlate(kind, src_a[:, :, None].expand_as(sk), sk))
            if cfg.time_negatives and frames > 1:
                # The same (i, j) in the other frames of the clip that gives the negatives: frame t + r, r = 1..T-1.
                clip = src.view(-1, frames, *src.shape[1:])
                later = []
                for r in range(1, frames):
                    sr = clip.roll(-r, dims=1).flatten(0, 1)
                    sra, srn = corr.gather_locations(sr, anchors), corr.gather_locations(sr, neigh)
                    later.append(head(corr.correlate(kind, sra[:, :, None].expand_as(srn), srn)))  # (N, S, 8, D)
                neg = torch.cat([neg[:, :, None].expand(-1, -1, 8, -1, -1), torch.stack(later, dim=3)], dim=3)
            loss, pos, negs = self._pair_loss(form, hx, hy, neg)  # without time negatives, shared by the 8 j's of anchor i
        else:
            s = anchors.shape[1]
            loss, pos, negs = self._pair_loss(form, hx.reshape(n, s * 8, -1), hy.reshape(n, s * 8, -1), None)
            loss, pos, negs = (t.view(n, s, 8) for t in (loss, pos, negs))
        return loss, self._weights(zx), pos, negs

    def _tcc_layer(self, l: int, x: torch.Tensor, y: torch.Tensor, batch: int, frames: int, generator, form: str = "paper"):
        """TCC at layer ``l`` (eq. 12-14): one location across frame pairs. x, y: (B*T, C, h, w).
        Returns per-(location, pair) loss (B, P, pairs), CAAS weights and similarities. The
        negatives (the same frame pair at other locations) come from ``y`` for ``"paper"`` and from
        the anchor ``x`` otherwise."""
        cfg = self.config
        _, c, h, w = x.shape
        kind, head = cfg.correlation, self.tcc_heads[l - 1]
        xs, ys = x.reshape(batch, frames * c, h, w), y.reshape(batch, frames * c, h, w)
        locs = corr.sample_anchor_locations(batch, h, w, self._temporal_samples[l - 1], cfg.sample_window, generator, x.device)
        i, j = corr.frame_pairs(frames, cfg.temporal_span, device=x.device)
        xp = corr.gather_locations(xs, locs).view(batch, -1, frames, c)  # (B, P, T, C)
        yp = corr.gather_locations(ys, locs).view(batch, -1, frames, c)
        zx = corr.correlate(kind, xp[:, :, i], xp[:, :, j])  # (B, P, pairs, C)
        zy = corr.correlate(kind, yp[:, :, i], yp[:, :, j])
        hx, hy = head(zx), head(zy)
        p = locs.shape[1]
        src = ys if form == "paper" else xs
        if cfg.num_negatives is not None:
            m = min(int(cfg.num_negatives), h * w - 1)
            qloc = corr.sample_negative_locations(locs, h, w, m, exclude_ring=False, generator=generator)
            if form == "align":
                loss, pos, negs = self._pair_loss(form, hx, hy, None)
            else:
                sq = corr.gather_locations(src, qloc).view(batch, p, m, frames, c)
                neg = head(corr.correlate(kind, sq[:, :, :, i], sq[:, :, :, j]))  # (B, P, m, pairs, D)
                loss, pos, negs = self._pair_loss(form, hx, hy, neg.transpose(2, 3))
        else:
            npairs = i.numel()
            hxx = hx.permute(0, 2, 1, 3).reshape(batch * npairs, p, -1)
            hyy = hy.permute(0, 2, 1, 3).reshape(batch * npairs, p, -1)
            loss, pos, negs = self._pair_loss(form, hxx, hyy, None)
            loss, pos, negs = (t.view(batch, npairs, p).transpose(1, 2) for t in (loss, pos, negs))
        return loss, self._weights(zx), pos, negs
