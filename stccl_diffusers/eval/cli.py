"""``stccl-eval``: FAD, LSE-D, LSE-C, CSIM and the EAT-lineage measures for folders of generated talking-head clips.

Two input layouts:

* folders: ``--reference_dir REAL --generated NAME=DIR [--generated NAME2=DIR2 ...]``. Each
  folder holds videos (``clip.mp4`` with audio) or frame folders (``clip/000001.png ...``, audio
  from ``clip/audio.wav`` or ``clip.wav`` beside it, frame rate ``--fps``). Clips are paired by
  name; names present on one side only are listed in the output.
* ``--tiled DIR`` for comparison videos made of four 256x256 tiles, left to right
  Source | Reference | method 1 | method 2 (``../shared/data/real_pairs``): the Source tile is the
  real clip (FAD's real set, the speech), Reference the emotion reference for CSIM, the other
  tiles the generated methods; the green tile labels (y < 60) are inpainted away.

Writes ``results.json``, ``results.md`` (Table I: FAD↓ LSE-D↓ LSE-C↑ CSIM↑) and PNG plots to
``--output_dir``. Every metric needs real weights (``--arcface_weights``, ``--syncnet_weights``,
``--csim_weights``); ``--random_init`` allows missing ones for a demo, and then every output says
loudly that the numbers are meaningless.

Further measures (plug-ins, a second Markdown table and the JSON; reference/real clip = anchor,
generated = target, frames paired by index): ``--mouth`` (mouth preservation, :mod:`.mouth`: on
real faces M-LMD, F-LMD and the inner-lip opening curve from 68-point landmarks, with the frames
without a face counted; on data.synthetic faces the exact pixel detector) and
``--analysis_metric DIR [--analysis_untrained]`` (per-layer pos/neg similarity of an STCCL metric,
the paper's Fig. 3/7/8, via :mod:`stccl_diffusers.analysis`; also ``correlation_analysis.png``).
``--metrics none`` runs only these.

The trade-off STCCL claims (emotion against sync) needs both sides, named apart:

* ``--metrics csim_expr`` (alias ``csim``: the STCCL paper's expression-network similarity; the JSON
  key ``CSIM`` stays as a deprecated alias of ``csim_expr`` for one release) and ``csim_id``
  (ArcFace identity cosine, source vs generated, ``--arcface_weights``);
* ``--emotion_weights`` (Acc_emo from an Emotion-FAN checkpoint, :mod:`.emotion`; or a plug-in
  ``--emotion_classifier package.module:factory``), per emotion and overall;
* ``--reconstruction`` (self-driven setting: PSNR and SSIM against the real clip, :mod:`.reconstruction`);
* ``--sync_protocol reencode`` (LSE-D/LSE-C also after one fixed encoder pass, :mod:`.reencode`).

Results are shown in both families' tables (STCCL/MEAD: FAD, LSE-D, LSE-C, CSIM; EAT lineage:
PSNR, SSIM, M-LMD, F-LMD, Acc_emo, Sync) with the measures not computed listed (``left_out``), and,
for two or more methods, paired comparisons per measure (``comparisons``, :mod:`.stats`: mean
difference with a seeded bootstrap interval, wins, exact sign test). docs/eval.md has the details.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from .csim import build_iresnet_encoder, resolve_csim_encoder
from .eval_io import VIDEO_EXTS, extract_audio_16k, read_frame_folder, read_video, read_wav_16k
from ..data.face_align import backend_name
from .faces import find_label_mask, mask_tile_label
from .stats import format_comparison_table
from .report import EAT_FAMILY, STCCL_FAMILY, format_family_table, format_mouth_table, format_table, write_mouth_plot, random_init_banner, write_json, write_markdown, write_plots
from .runner import ClipPair, EvalConfig, EvalContext, run_evaluation
from .syncnet import build_syncnet
from ..utils.safety import UsageError

__all__ = ["main", "build_parser", "tiled_groups", "folder_groups", "CorrelationAnalysis", "TILE_NAMES"]

TILE_NAMES = ("Source", "Reference", "STCCL_VD", "NED")
TILE_SIZE = 256


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stccl-eval", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("inputs")
    src.add_argument("--tiled", type=str, help="folder (or one file) of 4-tile comparison videos Source|Reference|method|method")
    src.add_argument("--tile_names", type=str, default=",".join(TILE_NAMES), help="names of the four tiles, left to right")
    src.add_argument("--reference_dir", type=str, help="real clips (videos or frame folders)")
    src.add_argument("--generated", action="append", default=[], metavar="NAME=DIR", help="generated clips of one method (repeatable)")
    src.add_argument("--emotion_reference_dir", type=str, help="CSIM references (default: --reference_dir)")
    src.add_argument("--audio_from", choices=("generated", "reference"), default="generated", help="whose audio track drives LSE")
    src.add_argument("--fps", type=float, default=25.0, help="frame rate of frame folders")
    src.add_argument("--aligned", action="store_true", help="frames are already face crops: resize instead of detecting and aligning")
    src.add_argument("--face_backend", choices=("auto", "dlib", "insightface", "haar"), default="auto",
                     help="landmarks for FAD/CSIM alignment and --mouth: auto = dlib when the `landmarks` extra is installed, else Haar "
                          "(approximate alignment, no --mouth on real faces; said in the output)")
    src.add_argument("--insightface_root", type=str, help="local insightface model pack for --face_backend insightface "
                     "(the unpacked buffalo_l/ under models/, or the folder holding models/; never downloaded)")
    src.add_argument("--no_real_row", action="store_true", help="do not evaluate the real clips as a row of their own")
    w = p.add_argument_group("weights")
    w.add_argument("--arcface_weights", type=str, help="insightface backbone.pth for FAD (depth read from the file)")
    w.add_argument("--arcface_arch", type=str, default="r50", help="iResNet used with --random_init when no --arcface_weights")
    w.add_argument("--syncnet_weights", type=str, help="syncnet_v2.model for LSE-D/LSE-C")
    w.add_argument("--csim_encoder", type=str, default="iresnet", help="'iresnet' (default) or 'package.module:factory'")
    w.add_argument("--csim_weights", type=str, help="weights of the CSIM expression encoder")
    w.add_argument("--csim_arch", type=str, default="r50", help="iResNet used with --random_init when no --csim_weights")
    w.add_argument("--emotion_classifier", type=str, default="emotion_fan",
                   help="Acc_emo classifier: 'emotion_fan' (default; Emotion-FAN checkpoint as EAT's evaluation uses it) or 'package.module:factory'")
    w.add_argument("--emotion_weights", type=str, help="Emotion-FAN checkpoint (MEAD, 8 classes) for Acc_emo; Acc_emo is left out without it")
    w.add_argument("--emotion_at_type", choices=("self-attention", "self_relation-attention"), default=None,
                   help="Emotion-FAN attention of the checkpoint (default: from its file name, else self_relation-attention)")
    w.add_argument("--emotion_labels", type=str, help="intended emotion per clip: JSON {clip: emotion} or 'clip,emotion' lines "
                   "(default: the MEAD emotion word in the clip name)")
    w.add_argument("--random_init", action="store_true", help="DEMO ONLY: allow missing weights (random networks, meaningless numbers)")
    w.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("run")
    r.add_argument("--output_dir", type=str, required=True)
    r.add_argument("--metrics", type=str, default="fad,lse,csim", help="comma list of fad, lse, csim_expr (alias csim), csim_id "
                   "(ArcFace identity cosine source vs generated, needs --arcface_weights), or none")
    r.add_argument("--sync_protocol", choices=("given", "reencode"), default="given",
                   help="reencode: LSE also after one fixed libx264 pass (CRF 23, yuv420p, 25 fps; stated in the output), both reported")
    r.add_argument("--bootstrap_resamples", type=int, default=10000, help="comparisons: bootstrap resamples of the mean paired difference")
    r.add_argument("--bootstrap_seed", type=int, default=0, help="comparisons: seed of the bootstrap (written in the output)")
    r.add_argument("--max_frames", type=int, default=None, help="decode only the first N frames of each clip (said in the output)")
    r.add_argument("--frame_stride", type=int, default=1, help="FAD/CSIM use every k-th frame (said in the output)")
    r.add_argument("--max_clips", type=int, default=None, help="evaluate only the first N clips (said in the output)")
    r.add_argument("--csim_mode", choices=("frame", "clip"), default="frame")
    r.add_argument("--vshift", type=int, default=15)
    r.add_argument("--batch_size", type=int, default=32)
    r.add_argument("--device", type=str, default="cpu")
    r.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy shared machine)")
    r.add_argument("--no_progress", action="store_true")
    x = p.add_argument_group("further measures (reference clip = anchor, generated = target, frames paired by index)")
    x.add_argument("--mouth", action="store_true", help="mouth preservation against the real clip: M-LMD, F-LMD (pixels at 256 px height), "
                   "inner-lip opening corr / MAE / lag and landmark coverage on real faces; corr / MAE / lag on data.synthetic faces")
    x.add_argument("--mouth_detector", choices=("auto", "synthetic", "landmarks"), default="auto",
                   help="auto: the exact pixel detector when the anchor is a data.synthetic face, else 68-point landmarks")
    x.add_argument("--reconstruction", action="store_true", help="self-driven setting: the real clip is the generated clip's ground "
                   "truth; PSNR and SSIM on the aligned 112x112 face crops")
    x.add_argument("--analysis_metric", type=str, help="save_pretrained STCCLMetric folder: per-layer pos/neg similarity (paper Fig. 3/7/8)")
    x.add_argument("--analysis_untrained", action="store_true", help="also an untrained metric of the same config (fresh init, --seed)")
    x.add_argument("--analysis_frames", type=int, default=2, help="frames per analysis window (>= 2 when the metric uses TCC)")
    x.add_argument("--analysis_shifts", type=str, default=None, help="speech-timing AUC of the --analysis_metric: comma list of frame shifts "
                   "(default 2,4,8,16; 'none' to skip): the fraction of windows whose index-paired generated window scores a lower loss "
                   "than the generated clip shifted by k frames (0.5 = blind to speech timing)")
    return p


def _audio_or_note(path: Path, notes: List[str]) -> Optional[np.ndarray]:
    try:
        return extract_audio_16k(path)
    except ValueError as e:
        notes.append(str(e))
        return None


def tiled_groups(files: Sequence[Path], tile_names: Sequence[str], max_frames: Optional[int], real_row: bool = True) -> Iterator:
    """Yield, per comparison video, the ClipPairs of its generated tiles (or an error tuple)."""
    src_name, ref_name, *methods = tile_names
    for f in files:
        name = f.stem
        try:
            frames, fps = read_video(f, max_frames=max_frames)
            if frames.shape[1] != TILE_SIZE or frames.shape[2] != TILE_SIZE * len(tile_names):
                raise ValueError(f"expected {TILE_SIZE}x{TILE_SIZE * len(tile_names)} frames ({len(tile_names)} tiles), got {frames.shape[1]}x{frames.shape[2]}")
            notes: List[str] = []
            audio = _audio_or_note(f, notes)
            tiles = {}
            for k, t in enumerate(tile_names):
                tile = frames[:, :, k * TILE_SIZE:(k + 1) * TILE_SIZE]
                mask = find_label_mask(tile[0])  # labels are static: one mask per tile
                tiles[t] = np.stack([mask_tile_label(x, mask) for x in tile])
        except Exception as e:  # noqa: BLE001 -- any decode failure is reported by clip name
            yield (name, str(f), e)
            continue
        keys = {t: f"{name}/{t}" for t in tile_names}
        pairs = []
        if real_row:
            pairs.append(ClipPair(name, f"{src_name} (real)", tiles[src_name], fps, reference=tiles[ref_name], audio=audio,
                                  generated_key=keys[src_name], reference_key=keys[ref_name], is_real=True, notes=list(notes)))
        for m in methods:
            pairs.append(ClipPair(name, m, tiles[m], fps, real=tiles[src_name], reference=tiles[ref_name], audio=audio,
                                  generated_key=keys[m], real_key=keys[src_name], reference_key=keys[ref_name], notes=list(notes)))
        yield pairs


def _index_clips(folder: Path) -> Dict[str, Path]:
    if not folder.is_dir():
        raise ValueError(f"not a folder: {folder}")
    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_dir() or p.suffix.lower() in VIDEO_EXTS:
            out[p.stem if p.is_file() else p.name] = p
    return out


def _load_clip(path: Path, fps: float, max_frames: Optional[int], want_audio: bool, notes: List[str]):
    if path.is_dir():
        frames = read_frame_folder(path, max_frames=max_frames)
        audio = None
        if want_audio:
            for cand in (path / "audio.wav", path.with_suffix(".wav")):
                if cand.is_file():
                    audio = read_wav_16k(cand)
                    break
            else:
                notes.append(f"no audio for frame folder {path} (looked for {path / 'audio.wav'} and {path.with_suffix('.wav')})")
        return frames, fps, audio
    frames, vfps = read_video(path, max_frames=max_frames)
    return frames, vfps, (_audio_or_note(path, notes) if want_audio else None)


def folder_groups(ref_dir: Path, generated: Dict[str, Path], emo_dir: Optional[Path], audio_from: str, fps: float,
                  max_frames: Optional[int], names: Sequence[str], real_row: bool = True) -> Iterator:
    ref_index = _index_clips(ref_dir)
    gen_index = {m: _index_clips(d) for m, d in generated.items()}
    emo_index = _index_clips(emo_dir) if emo_dir else None
    for name in names:
        notes: List[str] = []
        try:
            real, rfps, raudio = _load_clip(ref_index[name], fps, max_frames, audio_from == "reference" or real_row, notes)
            emo = None
            if emo_index is not None:
                if name in emo_index:
                    emo = _load_clip(emo_index[name], fps, max_frames, False, notes)[0]
                else:
                    notes.append(f"no emotion reference named {name} in {emo_dir}: CSIM uses the real clip")
        except Exception as e:  # noqa: BLE001
            yield (name, str(ref_index[name]), e)
            continue
        reference = emo if emo is not None else real
        ref_key = f"emotion/{name}" if emo is not None else f"real/{name}"
        pairs = []
        if real_row:
            pairs.append(ClipPair(name, "reference (real)", real, rfps, reference=emo, audio=raudio, generated_key=f"real/{name}",
                                  reference_key=ref_key, is_real=True, notes=list(notes)))
        for m, idx in gen_index.items():
            if name not in idx:
                continue
            gnotes = list(notes)
            try:
                frames, gfps, gaudio = _load_clip(idx[name], fps, max_frames, audio_from == "generated", gnotes)
            except Exception as e:  # noqa: BLE001
                yield (f"{m}/{name}", str(idx[name]), e)
                continue
            if abs(gfps - rfps) > 1e-6:
                gnotes.append(f"generated {gfps:g} fps vs real {rfps:g} fps: FAD/CSIM pair frames by index")
            pairs.append(ClipPair(name, m, frames, gfps, real=real, reference=reference, audio=gaudio if audio_from == "generated" else raudio,
                                  generated_key=f"{m}/{name}", real_key=f"real/{name}", reference_key=ref_key, notes=gnotes))
        yield pairs


def _build_models(args, metrics) -> tuple:
    random_parts, models = [], {"arcface": None, "syncnet": None, "csim": None}
    torch.manual_seed(args.seed)
    if "fad" in metrics or "csim_id" in metrics:
        models["arcface"] = build_iresnet_encoder(args.arcface_weights, random_init=args.random_init, flag="--arcface_weights", arch=args.arcface_arch)
        if args.arcface_weights is None:
            random_parts.append(f"ArcFace {args.arcface_arch} for {'/'.join(m.upper() if m == 'fad' else m for m in metrics if m in ('fad', 'csim_id'))}: no --arcface_weights")
    if "lse" in metrics:
        models["syncnet"] = build_syncnet(args.syncnet_weights, random_init=args.random_init)
        if args.syncnet_weights is None:
            random_parts.append("SyncNet for LSE: no --syncnet_weights")
    if "csim" in metrics:
        default = args.csim_encoder in (None, "", "iresnet")
        if default and args.csim_weights is None and not args.random_init:
            raise ValueError("CSIM needs an expression encoder: pass --csim_weights /path/to/encoder.pth (default encoder 'iresnet'), "
                             "or --csim_encoder package.module:factory, or --metrics without csim (or --random_init for a demo)")
        models["csim"] = resolve_csim_encoder(args.csim_encoder, args.csim_weights, random_init=args.random_init, arch=args.csim_arch)
        if default and args.csim_weights is None:
            random_parts.append(f"CSIM encoder iResNet {args.csim_arch}: no --csim_weights")
    return models, random_parts


class CorrelationAnalysis:
    """``stccl-eval --analysis_metric``: the paper's Fig. 3/7/8 numbers per method, computed by
    :func:`stccl_diffusers.analysis.layer_similarities` (the one implementation ``stccl-analyze``
    uses). Per clip pair: the real (anchor) clip vs the generated clip, frames paired by index in
    windows of ``num_frames`` (:func:`~stccl_diffusers.analysis.frame_pair_batches`), region
    sampling seeded with ``seed`` so the untrained metric sees the same regions.

    ``pair_metric`` adds ``pos_sim``, ``neg_sim``, ``gap`` (and ``untrained_*``) plus
    ``analysis_per_layer``; ``set_metric`` adds the per-layer means of each method.
    With ``shifts``, also the speech-timing AUC (:func:`stccl_diffusers.analysis.speech_timing`):
    ``timing_auc`` per clip, and per method ``speech_timing`` pooled over all windows of its clips
    (overall, per layer, per shift).
    """

    def __init__(self, metric, untrained=None, num_frames: int = 2, batch_size: int = 8, seed: int = 0, shifts: Sequence[int] = ()):
        self.metric, self.untrained = metric, untrained
        self.num_frames, self.batch_size, self.seed = int(num_frames), int(batch_size), int(seed)
        self.shifts = [int(k) for k in shifts]
        self.size = int(metric.config.input_size)
        self.per_clip: Dict[str, Dict[str, list]] = {}  # method -> {"metric": [...], "untrained": [...]}
        self.timing: Dict[str, Dict[str, list]] = {}  # method -> {"metric": [...], "untrained": [...]}

    def pair_metric(self, pair, ctx=None) -> dict:
        from ..analysis import frame_pair_batches, layer_similarities
        from .runner import MetricSkipped

        if pair.is_real or pair.real is None:
            raise MetricSkipped("no anchor (real) clip: correlation analysis not computed")
        batches = frame_pair_batches(pair.real, pair.generated, self.size, self.num_frames, self.batch_size)
        out = {"analysis_windows": sum(len(b["anchor"]) for b in batches)}
        for prefix, m in (("", self.metric), ("untrained_", self.untrained)):
            if m is None:
                continue
            r = layer_similarities(m, batches, self.seed)
            self.per_clip.setdefault(pair.method, {}).setdefault(prefix.rstrip("_") or "metric", []).append(r)
            out.update({f"{prefix}pos_sim": r["pos_sim"], f"{prefix}neg_sim": r["neg_sim"], f"{prefix}gap": r["gap"],
                        f"{prefix}analysis_per_layer": r["per_layer"]})
            if self.shifts:
                from ..analysis import metric_window_losses, speech_timing
                from ..data.datasets import frames_to_tensor

                n = min(len(pair.real), len(pair.generated))
                a, t = frames_to_tensor(np.asarray(pair.real[:n]), self.size), frames_to_tensor(np.asarray(pair.generated[:n]), self.size)
                try:
                    st = speech_timing(metric_window_losses(m, self.seed, self.batch_size), a, t, self.num_frames, self.shifts)
                except ValueError as e:  # clip too short for the shifts: said in the row, other clips still count
                    out[f"{prefix}timing_note"] = str(e)
                    continue
                self.timing.setdefault(pair.method, {}).setdefault(prefix.rstrip("_") or "metric", []).append(st)
                out.update({f"{prefix}timing_auc": st["auc"], f"{prefix}timing_auc_per_layer": st["per_layer"]})
        return out

    def method_results(self, method: str) -> Dict[str, dict]:
        from ..analysis import mean_similarities

        return {k: mean_similarities(v) for k, v in self.per_clip.get(method, {}).items() if v}

    def set_metric(self, method: str, ctx=None) -> dict:
        from ..analysis import mean_speech_timing

        res = self.method_results(method)
        out = {("analysis_per_layer" if k == "metric" else f"{k}_analysis_per_layer"): r["per_layer"] for k, r in res.items()}
        for k, v in self.timing.get(method, {}).items():
            if v:
                out["speech_timing" if k == "metric" else f"{k}_speech_timing"] = mean_speech_timing(v)
        return out


def _extra_metrics(args, notes: List[str]):
    """Plug-ins requested by flags: (pair metrics, set metrics, CorrelationAnalysis or None)."""
    pair, per_set, analysis = [], [], None
    if args.mouth:
        from .mouth import mouth_pair_metric, mouth_set_metric

        pair.append(mouth_pair_metric)
        per_set.append(mouth_set_metric)
        notes.append("--mouth: anchor = real clip, frames paired by index, mouth_lag > 0 = generated mouth late. Real faces: 68-point "
                     "landmarks; M-LMD / F-LMD = mean distance over the mouth (48-67) / all 68 points after a per-frame similarity on "
                     "the stable points (nose, eye corners), in pixels at 256 px frame height; opening = inner-lip gap (61-67, 62-66, "
                     "63-65) / outer-eye-corner distance, mouth_mae in those units; frames without a face in either clip are left "
                     "out and counted (faceless_*, landmark_coverage). data.synthetic faces: the pixel detector of eval.mouth, "
                     "mouth_mae in face widths")
    if args.reconstruction:
        from .reconstruction import reconstruction_pair_metric

        pair.append(reconstruction_pair_metric)
        notes.append("--reconstruction: the real clip is taken as the generated clip's ground truth (self-driven setting); PSNR = mean "
                     "per-frame 10 log10(255^2 / MSE) over RGB, SSIM = Gaussian-window SSIM (11 px, sigma 1.5) on the luma, both on "
                     "the aligned 112x112 face crops (each clip aligned by its own landmarks), frames paired by index")
    if args.emotion_weights or args.emotion_classifier not in (None, "", "emotion_fan"):
        from .emotion import EmotionAccuracy, read_emotion_labels, resolve_emotion_classifier

        try:
            clf = resolve_emotion_classifier(args.emotion_classifier, args.emotion_weights, args.emotion_at_type)
            labels = read_emotion_labels(args.emotion_labels) if args.emotion_labels else {}
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(f"stccl-eval: {e}")
        acc = EmotionAccuracy(clf, labels, aligned=args.aligned, device=args.device)
        pair.append(acc.pair_metric)
        per_set.append(acc.set_metric)
        notes.append(f"Acc_emo: classifier {args.emotion_classifier} ({args.emotion_weights or 'plug-in'}, classes {list(acc.classes)}); "
                     "the intended emotion of a clip from " + ("--emotion_labels, else " if labels else "") + "the MEAD emotion word in its "
                     "name; face chips 224x224 by dlib's 5-point predictor on the track's face boxes and dlib.get_face_chip (padding 0.25), frames "
                     "without a face left out (as Emotion-FAN's face_align_cuda.py); clip prediction by "
                     "the published Emotion-FAN evaluation path; acc_emo per clip 1/0, per method the mean (overall) and "
                     "acc_emo_per_emotion")
    elif args.emotion_labels:
        raise UsageError("--emotion_labels needs --emotion_weights (or --emotion_classifier package.module:factory)")
    if args.analysis_untrained and not args.analysis_metric:
        raise UsageError("--analysis_untrained needs --analysis_metric DIR (the untrained metric copies its config)")
    if args.analysis_metric:
        from ..analysis import untrained_like
        from ..metric import STCCLMetric

        if not Path(args.analysis_metric, "config.json").is_file():
            raise UsageError(f"--analysis_metric: expected a save_pretrained STCCLMetric folder with config.json, got {args.analysis_metric!r}")
        metric = STCCLMetric.from_pretrained(args.analysis_metric).to(args.device)
        if args.analysis_frames < (2 if metric.config.use_tcc else 1):
            raise UsageError(f"--analysis_frames: expected >= {2 if metric.config.use_tcc else 1} (the metric's TCC compares frames), got {args.analysis_frames}")
        untrained = untrained_like(metric, args.seed).to(args.device) if args.analysis_untrained else None
        shifts = _analysis_shifts(args.analysis_shifts)
        analysis = CorrelationAnalysis(metric, untrained, args.analysis_frames, args.batch_size, args.seed, shifts)
        pair.append(analysis.pair_metric)
        per_set.append(analysis.set_metric)
        notes.append(f"correlation analysis (--analysis_metric {args.analysis_metric}, input_size {analysis.size}): anchor = real clip, "
                     f"target = generated clip, windows of {args.analysis_frames} frames paired by index, region sampling seed {args.seed}"
                     + ("; untrained_* = fresh init of the same config (seed " + str(args.seed) + ")" if untrained is not None else "")
                     + (f"; timing_auc = speech-timing AUC, shifts {shifts} frames (0.5 = blind to speech timing)" if shifts else ""))
    elif args.analysis_shifts is not None:
        raise UsageError("--analysis_shifts needs --analysis_metric DIR (the metric whose speech-timing AUC is measured)")
    return pair, per_set, analysis


def _left_out(args, metrics) -> List[dict]:
    """The measures of the two families' tables that this run does not compute, and why."""
    out = []

    def miss(measure, why):
        out.append({"measure": measure, "reason": why})

    if "fad" not in metrics:
        miss("FAD", "not in --metrics (needs --arcface_weights)")
    if "lse" not in metrics:
        miss("LSE-D/LSE-C (Sync)", "not in --metrics (needs --syncnet_weights)")
    elif args.sync_protocol != "reencode":
        miss("LSE-D/LSE-C re-encoded", "--sync_protocol given (add --sync_protocol reencode)")
    if "csim" not in metrics:
        miss("CSIM (csim_expr)", "not in --metrics (needs --csim_weights or --csim_encoder)")
    if "csim_id" not in metrics:
        miss("csim_id", "not in --metrics (needs --arcface_weights)")
    if not args.reconstruction:
        miss("PSNR/SSIM", "no --reconstruction (needs a ground-truth clip: the self-driven setting)")
    if not args.mouth:
        miss("M-LMD/F-LMD", "no --mouth")
    if not (args.emotion_weights or args.emotion_classifier not in (None, "", "emotion_fan")):
        miss("Acc_emo", "no --emotion_weights (Emotion-FAN checkpoint) or --emotion_classifier")
    return out


def _analysis_shifts(text: Optional[str]) -> List[int]:
    from ..analysis import DEFAULT_SHIFTS

    if text is None:
        return list(DEFAULT_SHIFTS)
    if text.strip().lower() in ("none", ""):
        return []
    try:
        shifts = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        shifts = [0]
    if not shifts or 0 in shifts:
        raise UsageError(f"--analysis_shifts: expected a comma list of non-zero frame shifts (or 'none'), got {text!r}")
    return shifts


def main(argv: Optional[Sequence[str]] = None, extra_pair_metrics: Sequence = (), extra_set_metrics: Sequence = ()) -> int:
    """Entry point of ``stccl-eval``. ``extra_pair_metrics`` (``fn(pair, ctx) -> dict``) and
    ``extra_set_metrics`` (``fn(method, ctx) -> dict``) add sections after the built-in ones;
    their numbers appear in the JSON and in a second Markdown table."""
    args = build_parser().parse_args(argv)
    threads = torch.get_num_threads()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    try:
        return _run(args, list(extra_pair_metrics), list(extra_set_metrics))
    finally:
        torch.set_num_threads(threads)  # main() may be called in-process (tests, notebooks)


def _run(args, extra_pair: list, extra_set: list) -> int:
    t0 = time.time()
    metrics = tuple(m.strip().lower() for m in args.metrics.split(",") if m.strip() and m.strip().lower() != "none")
    # csim_expr is the new name of csim (the STCCL paper's expression similarity); both select it.
    metrics = tuple(dict.fromkeys("csim" if m == "csim_expr" else m for m in metrics))
    bad = [m for m in metrics if m not in ("fad", "lse", "csim", "csim_id")]
    notes: List[str] = []
    flag_pair, flag_set, analysis = _extra_metrics(args, notes)
    extra_pair, extra_set = flag_pair + extra_pair, flag_set + extra_set
    if bad or not (metrics or extra_pair or extra_set):
        raise UsageError(f"--metrics: expected a comma list of fad, lse, csim_expr (alias csim), csim_id (or none with --mouth / "
                         f"--reconstruction / --emotion_weights / --analysis_metric), got {args.metrics!r}")
    if args.sync_protocol == "reencode" and "lse" not in metrics:
        raise UsageError("--sync_protocol reencode needs lse in --metrics (and --syncnet_weights)")
    if bool(args.tiled) == bool(args.reference_dir):
        raise UsageError("give either --tiled DIR or --reference_dir DIR with --generated NAME=DIR")
    try:
        models, random_parts = _build_models(args, metrics)
    except (ValueError, FileNotFoundError) as e:
        further = [f for f, on in (("--mouth", args.mouth), ("--reconstruction", args.reconstruction),
                                   ("--emotion_weights", args.emotion_weights), ("--analysis_metric", args.analysis_metric)) if on]
        hint = (f"; or add --metrics none to run only {' / '.join(further)}" if further
                else "; or add --metrics none to run only the plugged-in measures" if (extra_pair or extra_set) else "")
        raise UsageError(f"stccl-eval: {e}{hint}")
    cfg = EvalConfig(metrics=metrics, frame_stride=args.frame_stride, aligned=args.aligned, vshift=args.vshift,
                     csim_mode=args.csim_mode, batch_size=args.batch_size, device=args.device, face_backend=args.face_backend,
                     insightface_root=args.insightface_root, mouth_detector=args.mouth_detector, sync_protocol=args.sync_protocol)
    ctx = EvalContext(cfg, arcface=models["arcface"], syncnet=models["syncnet"], csim_encoder=models["csim"])
    if not args.aligned and (metrics or args.mouth or args.reconstruction or args.emotion_weights):
        try:
            backend = backend_name(ctx.face_detector())
        except (ImportError, ValueError) as e:
            raise UsageError(f"stccl-eval --face_backend {args.face_backend}: {e}")
        if backend == "haar":
            why = "--face_backend haar" if args.face_backend == "haar" else "the `landmarks` extra (dlib) is not installed"
            notes.append(f"faces: Haar backend ({why}): FAD/CSIM alignment places the 5-point template in one Haar box per clip "
                         "(APPROXIMATE); --mouth on real faces needs 68-point landmarks and is reported as failed")
        else:
            notes.append(f"faces: {backend} landmarks; FAD/CSIM frames aligned by their own 5 points (eye centres, nose tip, mouth "
                         "corners) onto insightface's 112x112 template; frames without landmarks use the nearest frame's (counted per clip)")

    real_row = not args.no_real_row
    if args.tiled:
        tiled = Path(args.tiled)
        files = sorted(p for p in tiled.iterdir() if p.suffix.lower() in VIDEO_EXTS) if tiled.is_dir() else [tiled]
        if not files:
            raise UsageError(f"--tiled: no videos ({', '.join(VIDEO_EXTS)}) in {tiled}")
        if args.max_clips:
            notes.append(f"--max_clips {args.max_clips}: {min(args.max_clips, len(files))} of {len(files)} clips evaluated")
            files = files[: args.max_clips]
        tile_names = [t.strip() for t in args.tile_names.split(",")]
        if len(tile_names) < 3:
            raise UsageError(f"--tile_names: expected Source,Reference,method[,method...], got {args.tile_names!r}")
        groups, total = tiled_groups(files, tile_names, args.max_frames, real_row), len(files)
        real_methods = [f"{tile_names[0]} (real)"] if real_row else []
        methods = real_methods + tile_names[2:]
        notes.append("tiled input: the green tile labels (y < 60) are inpainted before face detection")
        if args.reconstruction:
            notes.append("--reconstruction on tiled input: the Source tile says the same speech with another emotion, so it is not a "
                         "pixel ground truth of the emotion-edited tiles; PSNR/SSIM here measure closeness to the source, not "
                         "reconstruction quality")
    else:
        if not args.generated:
            raise UsageError("--reference_dir needs at least one --generated NAME=DIR")
        generated = {}
        for spec in args.generated:
            if "=" not in spec:
                raise UsageError(f"--generated: expected NAME=DIR, got {spec!r}")
            k, v = spec.split("=", 1)
            generated[k] = Path(v)
        try:
            ref_names = set(_index_clips(Path(args.reference_dir)))
            gen_names = {m: set(_index_clips(d)) for m, d in generated.items()}
        except ValueError as e:
            raise UsageError(f"stccl-eval: {e}")
        names = sorted(n for n in ref_names if any(n in g for g in gen_names.values()))
        for m, g in gen_names.items():
            if g - ref_names:
                notes.append(f"{m}: {len(g - ref_names)} clips without a real clip of the same name (not evaluated): {sorted(g - ref_names)[:10]}")
        if not names:
            raise UsageError("no clip name appears both in --reference_dir and a --generated folder")
        if args.max_clips:
            notes.append(f"--max_clips {args.max_clips}: {min(args.max_clips, len(names))} of {len(names)} clips evaluated")
            names = names[: args.max_clips]
        emo = Path(args.emotion_reference_dir) if args.emotion_reference_dir else None
        groups, total = folder_groups(Path(args.reference_dir), generated, emo, args.audio_from, args.fps, args.max_frames, names, real_row), len(names)
        real_methods = ["reference (real)"] if real_row else []
        methods = real_methods + list(generated)
    if args.max_frames:
        notes.append(f"--max_frames {args.max_frames}: only the first {args.max_frames} frames of each clip are decoded")
    if args.frame_stride > 1:
        notes.append(f"--frame_stride {args.frame_stride}: FAD and CSIM use every {args.frame_stride}th frame")
    if "lse" in metrics:
        notes.append("LSE: video resampled to 25 fps by nearest-frame index where the clip has another frame rate; SyncNet crops from the clip's face box")

    from .runner import DEFAULT_PAIR_METRICS, DEFAULT_SET_METRICS

    pair_metrics = [DEFAULT_PAIR_METRICS[m] for m in metrics] + extra_pair
    set_metrics = [DEFAULT_SET_METRICS[m] for m in metrics if m in DEFAULT_SET_METRICS] + extra_set
    result = run_evaluation(groups, ctx, pair_metrics=pair_metrics, set_metrics=set_metrics, methods=methods,
                            progress=not args.no_progress, total=total)
    from .reencode import REENCODE_PROTOCOL
    from .stats import compare_methods

    compared = [m for m in result["method_order"] if m not in real_methods]
    result.update({
        "real_methods": real_methods,
        "random_weights": random_parts,
        "notes": notes,
        "left_out": _left_out(args, metrics),
        "sync_protocol": {"protocol": args.sync_protocol, **({"reencode": REENCODE_PROTOCOL} if args.sync_protocol == "reencode" else {})},
        "aliases": {"CSIM": "csim_expr (deprecated alias, kept for one release)", "Sync-C": "LSE-C", "Sync-D": "LSE-D"},
        "comparisons": compare_methods(result["clips"], compared, n_resamples=args.bootstrap_resamples, seed=args.bootstrap_seed)
        if len(compared) >= 2 else None,
        "weights": {"arcface": args.arcface_weights, "syncnet": args.syncnet_weights, "csim_encoder": args.csim_encoder, "csim": args.csim_weights,
                    "emotion_classifier": args.emotion_classifier, "emotion": args.emotion_weights},
        "config": vars(args),
        "wall_seconds": time.time() - t0,
    })
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(result, out / "results.json")
    write_markdown(result, out / "results.md")
    plots = write_plots(result, out)
    if args.mouth:
        mouth_png = write_mouth_plot(result, out)
        plots += [mouth_png] if mouth_png else []
    if analysis is not None:
        from ..analysis import plot_similarities

        curves = {f"{m}{'' if k == 'metric' else ' (untrained)'}": r for m in result["method_order"] for k, r in analysis.method_results(m).items()}
        if curves:
            plot_similarities(curves, str(out / "correlation_analysis.png"), "pos/neg similarity per layer (anchor = real clip)")
            plots.append(str(out / "correlation_analysis.png"))
    result["wall_seconds"] = time.time() - t0
    write_json(result, out / "results.json")
    if random_parts:
        print("\n" + random_init_banner(random_parts) + "\n")
    print(format_table(result))
    for title, cols in (("STCCL / MEAD columns", STCCL_FAMILY), ("EAT-lineage columns", EAT_FAMILY)):
        table = format_family_table(result, cols)
        if table:
            print(f"\n{title}:\n{table}")
    if result["left_out"]:
        print("\nLeft out: " + "; ".join(f"{x['measure']} ({x['reason']})" for x in result["left_out"]))
    mouth = format_mouth_table(result)
    if mouth:
        print("\nMouth (anchor = the real clip):\n" + mouth)
    comparison = format_comparison_table(result["comparisons"]) if result.get("comparisons") else None
    if comparison:
        print("\nComparisons (paired, per clip):\n" + comparison)
    n_bad = len(result["unreadable"])
    print(f"\n{len(result['clips'])} clip pairs, {n_bad} unreadable/failed{' (see results.md)' if n_bad else ''}; "
          f"wrote {out / 'results.json'}, {out / 'results.md'}, {', '.join(Path(p).name for p in plots)}; {result['wall_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
