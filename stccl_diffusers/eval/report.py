"""Writers for ``stccl-eval`` results: JSON, a Markdown table shaped like the paper's Table I, PNG plots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..utils.jsonio import write_json as _write_strict_json

__all__ = ["TABLE_COLUMNS", "MOUTH_COLUMNS", "STCCL_FAMILY", "EAT_FAMILY", "format_family_table", "format_table", "format_mouth_table", "write_mouth_plot", "write_json", "write_markdown", "write_plots", "random_init_banner"]

# (result key, header, higher is better)
TABLE_COLUMNS = [("FAD", "FAD↓", False), ("LSE-D", "LSE-D↓", False), ("LSE-C", "LSE-C↑", True), ("CSIM", "CSIM↑", True)]
# --mouth (result key, header); the keys of the mouth section are left out of the generic table.
MOUTH_COLUMNS = [("M-LMD", "M-LMD↓"), ("F-LMD", "F-LMD↓"), ("mouth_corr", "opening corr↑"), ("mouth_mae", "opening MAE↓"),
                 ("mouth_lag_median", "best lag (median)"), ("mouth_lag_corr", "corr at best lag")]
_MOUTH_KEYS = {k for k, _ in MOUTH_COLUMNS} | {"mouth_lag", "mouth_frames", "lmd_frames", "faceless_anchor", "faceless_generated",
                                               "landmark_coverage", "paired_frames", "faceless_anchor_total", "faceless_generated_total",
                                               "paired_frames_total", "landmark_coverage_total"}
_CORE_KEYS = {"num_clips", "FAD", "LSE-D", "LSE-C", "CSIM", "offset_median", "lse_curve_mean", "fad_note", "fad_eps", "lse_windows",
              "csim_expr", "csim_id", "LSE-D_reencoded", "LSE-C_reencoded", "offset_reencoded_median", "lse_reencoded_windows",
              "PSNR", "SSIM", "acc_emo", "psnr_identical_frames", "reconstruction_frames"}

# The two families' tables (result key, header, higher is better). STCCL/MEAD: the STCCL paper's
# Table I (CSIM = its expression similarity, csim_expr) plus ArcFace identity; EAT lineage: EAT's
# evaluation (Sync = SyncNet confidence, LSE-C, "Sync-C" in diffusion papers). Re-encoded sync
# columns appear beside the given ones when --sync_protocol reencode ran.
STCCL_FAMILY = [("FAD", "FAD↓", False), ("LSE-D", "LSE-D↓", False), ("LSE-D_reencoded", "LSE-D↓ re-enc.", False), ("LSE-C", "LSE-C↑", True),
                ("LSE-C_reencoded", "LSE-C↑ re-enc.", True), ("csim_expr", "CSIM↑ (expr)", True), ("csim_id", "CSIM-id↑ (ArcFace)", True)]
EAT_FAMILY = [("PSNR", "PSNR↑", True), ("SSIM", "SSIM↑", True), ("M-LMD", "M-LMD↓", False), ("F-LMD", "F-LMD↓", False),
              ("acc_emo", "Acc_emo↑", True), ("LSE-C", "Sync↑ (Sync-C)", True), ("LSE-C_reencoded", "Sync↑ re-enc.", True)]


def random_init_banner(random_parts: List[str]) -> str:
    return (
        "**WARNING: RANDOM WEIGHTS (" + ", ".join(random_parts) + "). These numbers are NOT metrics; "
        "they only show that the pipeline runs. Pass real checkpoints to evaluate a model.**"
    )


def _fmt(v) -> str:
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"


def _method_table(result: dict, columns) -> str:
    """Rows = ``result["method_order"]``, ``columns`` = (key, header, higher_is_better); the best
    value among the non-real methods in bold, where more than one method has it."""
    per, methods = result["methods"], result["method_order"]
    real_rows = set(result.get("real_methods", []))
    lines = ["| Method | " + " | ".join(h for _, h, _ in columns) + " | clips |", "|" + "---|" * (len(columns) + 2)]
    best = {}
    for key, _, higher in columns:
        vals = [per[m][key] for m in methods if m not in real_rows and per[m].get(key) is not None]
        if len(vals) > 1:
            best[key] = max(vals) if higher else min(vals)
    for m in methods:
        cells = []
        for key, _, _ in columns:
            v = per[m].get(key)
            s = _fmt(v)
            cells.append(f"**{s}**" if m not in real_rows and key in best and v == best[key] else s)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {per[m].get('num_clips', 0)} |")
    return "\n".join(lines)


def format_table(result: dict) -> str:
    """Markdown Table I: rows = methods, columns FAD↓ LSE-D↓ LSE-C↑ CSIM↑ (best non-real value in bold)."""
    return _method_table(result, TABLE_COLUMNS)


def format_family_table(result: dict, columns) -> Optional[str]:
    """Markdown table of one family: rows = methods, only the columns some method has (the
    measures left out are listed by ``result['left_out']``); best non-real value in bold."""
    per, methods = result["methods"], result["method_order"]
    cols = [c for c in columns if any(per[m].get(c[0]) is not None for m in methods)]
    return _method_table(result, cols) if cols else None


def format_mouth_table(result: dict) -> Optional[str]:
    """Markdown table of ``--mouth`` (None when no method has mouth numbers): per method the means
    over clips of M-LMD, F-LMD, opening corr / MAE / best lag, and the landmark accounting over all
    paired frames (coverage = share with a face in both clips; faceless = frames without a face in
    the real (anchor) / generated clip)."""
    per = result["methods"]
    rows = [m for m in result["method_order"] if any(per[m].get(k) is not None for k, _ in MOUTH_COLUMNS)]
    if not rows:
        return None
    lines = ["| Method | " + " | ".join(h for _, h in MOUTH_COLUMNS) + " | landmark coverage | faceless real / generated | clips |",
             "|" + "---|" * (len(MOUTH_COLUMNS) + 4)]
    for m in rows:
        r = per[m]
        cov = r.get("landmark_coverage_total")
        faceless = (f"{r['faceless_anchor_total']} / {r['faceless_generated_total']} of {r['paired_frames_total']}"
                    if "paired_frames_total" in r else "—")
        lines.append(f"| {m} | " + " | ".join(_fmt(r.get(k)) for k, _ in MOUTH_COLUMNS)
                     + f" | {'—' if cov is None else f'{100 * cov:.1f} %'} | {faceless} | {r.get('mouth_corr_n', r.get('num_clips', 0))} |")
    return "\n".join(lines)


def write_json(result: dict, path: str | os.PathLike) -> None:
    _write_strict_json(path, result)


def _extra_table(result: dict) -> Optional[str]:
    """Numbers from plug-in metrics (anything beyond Table I), one row per method."""
    per = result["methods"]
    keys = sorted({k for m in per.values() for k, v in m.items()
                   if isinstance(v, (int, float)) and not k.endswith("_n") and k not in _CORE_KEYS and k not in _MOUTH_KEYS and not k.startswith(("fad_", "lse_"))})
    if not keys:
        return None
    lines = ["| Method | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for m in result["method_order"]:
        lines.append(f"| {m} | " + " | ".join(_fmt(per[m].get(k)) if isinstance(per[m].get(k), float) else str(per[m].get(k, "—")) for k in keys) + " |")
    return "\n".join(lines)


def write_markdown(result: dict, path: str | os.PathLike) -> str:
    parts = ["# stccl-eval results", ""]
    if result.get("random_weights"):
        parts += [random_init_banner(result["random_weights"]), ""]
    parts += ["## Table I", "", format_table(result), "",
              "CSIM here is csim_expr (the STCCL paper's expression-network similarity); the key `CSIM` is its deprecated alias, "
              "kept for one release. ArcFace identity similarity is `csim_id`.", ""]
    from .stats import format_comparison_table

    for title, cols in (("STCCL / MEAD columns", STCCL_FAMILY), ("EAT-lineage columns", EAT_FAMILY)):
        table = format_family_table(result, cols)
        parts += [f"## {title}", "", table if table else "(no measure of this family was computed)", ""]
    left = result.get("left_out") or []
    if left:
        parts += ["Left out of these tables: " + "; ".join(f"{x['measure']} ({x['reason']})" for x in left) + ".", ""]
    sync = result.get("sync_protocol") or {}
    if sync.get("protocol") == "reencode":
        p = sync["reencode"]
        parts += [f"Sync protocol: LSE-D/LSE-C (aliases Sync-D/Sync-C) as given and after one fixed re-encode: {p['codec']}, CRF {p['crf']}, "
                  f"preset {p['preset']}, {p['pix_fmt']}, {p['fps']:g} fps, {p['encoder_threads']} encoder thread, {p['container']}; audio "
                  f"{p['audio']}; {p['resampling']}.", ""]
    elif any(result["methods"][m].get("LSE-D") is not None for m in result["method_order"]):
        parts += ["Sync protocol: LSE-D/LSE-C (aliases Sync-D/Sync-C) on the clips as given (their own encoding); "
                  "--sync_protocol reencode adds codec-stable numbers.", ""]
    per_emo = {m: result["methods"][m]["acc_emo_per_emotion"] for m in result["method_order"] if result["methods"][m].get("acc_emo_per_emotion")}
    if per_emo:
        emos = sorted({e for t in per_emo.values() for e in t})
        parts += ["## Acc_emo per emotion (correct / clips)", "", "| Method | " + " | ".join(emos) + " | overall |", "|" + "---|" * (len(emos) + 2)]
        for m, t in per_emo.items():
            cells = [f"{t[e]['acc']:.3f} ({t[e]['correct']}/{t[e]['n']})" if e in t else "—" for e in emos]
            parts.append(f"| {m} | " + " | ".join(cells) + f" | {_fmt(result['methods'][m].get('acc_emo'))} |")
        parts.append("")
    comp = result.get("comparisons")
    if comp:
        table = format_comparison_table(comp)
        parts += ["## Comparisons (paired over clips)", "", table or "(no measure shared by the compared methods)", ""]
    real_rows = result.get("real_methods", [])
    if real_rows:
        parts.append(f"Rows {', '.join(real_rows)} are real clips (FAD is measured against them, so it is not reported for them).")
    for m in result["method_order"]:
        note = result["methods"][m].get("fad_note")
        if note:
            parts.append(f"- FAD {m}: {note}")
    parts += [f"- {n}" for n in result.get("notes", [])]
    parts.append("")
    mouth = format_mouth_table(result)
    if mouth:
        parts += ["## Mouth (--mouth; anchor = the real clip)", "", mouth, "", "Per clip:", "",
                  "| Clip | Method | M-LMD | F-LMD | opening corr | opening MAE | best lag | corr at best lag | faceless real / generated |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in result["clips"]:
            if c.get("mouth_corr") is None and c.get("M-LMD") is None:
                continue
            faceless = f"{c['faceless_anchor']} / {c['faceless_generated']} of {c['paired_frames']}" if "paired_frames" in c else "—"
            parts.append(f"| {c['clip']} | {c['method']} | " + " | ".join(_fmt(c.get(k)) for k in ("M-LMD", "F-LMD", "mouth_corr", "mouth_mae"))
                         + f" | {c.get('mouth_lag', '—')} | {_fmt(c.get('mouth_lag_corr'))} | {faceless} |")
        parts.append("")
    extra = _extra_table(result)
    if extra:
        parts += ["## Further measures (averaged per method)", "", extra, ""]
    # Per clip: the Table I columns, then whichever new measures some clip has.
    optional = [(k, h) for k, h in (("LSE-D_reencoded", "LSE-D re-enc."), ("LSE-C_reencoded", "LSE-C re-enc."), ("csim_id", "csim_id"),
                                    ("PSNR", "PSNR"), ("SSIM", "SSIM"), ("acc_emo", "Acc_emo")) if any(c.get(k) is not None for c in result["clips"])]
    heads = ["Clip", "Method", "LSE-D", "LSE-C", "offset", "CSIM"] + [h for _, h in optional]
    parts += ["## Per clip", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for c in result["clips"]:
        extra = "".join(f" {_fmt(c.get(k))} |" if k != "acc_emo" or c.get(k) is None else f" {c['emotion_pred']} ({c['emotion_label']}) |"
                        for k, _ in optional)
        parts.append(f"| {c['clip']} | {c['method']} | {_fmt(c.get('LSE-D'))} | {_fmt(c.get('LSE-C'))} | {c.get('offset', '—')} | {_fmt(c.get('CSIM'))} |" + extra)
    parts.append("")
    unread = result.get("unreadable", [])
    parts += [f"## Unreadable or failed ({len(unread)})", ""]
    parts += [f"- {u.get('clip')} {u.get('method', '')} {u.get('metric', '')}: {u['reason']} ({u.get('path', '')})" for u in unread] or ["none"]
    skipped = result.get("skipped", [])
    if skipped:
        parts += ["", f"## Skipped metrics ({len(skipped)})", ""]
        parts += [f"- {s['clip']} {s['method']} {s['metric']}: {s['reason']}" for s in skipped]
    text = "\n".join(parts) + "\n"
    Path(path).write_text(text)
    return text


def write_plots(result: dict, out_dir: str | os.PathLike) -> List[str]:
    """``metrics.png``: Table I as bars (per-clip dots); ``lse_offsets.png``: mean SyncNet distance vs offset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    methods = result["method_order"]
    written = []
    fig, axes = plt.subplots(1, len(TABLE_COLUMNS), figsize=(4 * len(TABLE_COLUMNS), 3.6))
    for ax, (key, head, _) in zip(axes, TABLE_COLUMNS):
        vals = [result["methods"][m].get(key) for m in methods]
        xs = np.arange(len(methods))
        ax.bar(xs, [v if v is not None else 0 for v in vals], color=[f"C{i}" for i in range(len(methods))], alpha=0.7)
        for i, m in enumerate(methods):
            pts = [c[key] for c in result["clips"] if c["method"] == m and c.get(key) is not None]
            if pts:
                ax.scatter(np.full(len(pts), i) + np.random.default_rng(i).uniform(-0.15, 0.15, len(pts)), pts, s=8, color="k")
            if vals[i] is None:
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(xs, methods, rotation=20, fontsize=8)
        ax.set_title(head)
    if result.get("random_weights"):
        fig.suptitle("RANDOM WEIGHTS — not meaningful", color="red")
    fig.tight_layout()
    p = out_dir / "metrics.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    written.append(str(p))
    curves = {m: result["methods"][m].get("lse_curve_mean") for m in methods if result["methods"][m].get("lse_curve_mean")}
    if curves:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for m, c in curves.items():
            vshift = (len(c) - 1) // 2
            ax.plot(vshift - np.arange(len(c)), c, label=m)  # x = offset (vshift - k)
        ax.set_xlabel("AV offset (frames)")
        ax.set_ylabel("mean SyncNet distance")
        ax.legend(fontsize=8)
        if result.get("random_weights"):
            ax.set_title("RANDOM WEIGHTS — not meaningful", color="red")
        fig.tight_layout()
        p = out_dir / "lse_offsets.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(str(p))
    return written


def write_mouth_plot(result: dict, out_dir: str | os.PathLike, max_clips: int = 16) -> Optional[str]:
    """``mouth_curves.png``: per clip, the real (anchor) clip's mouth-opening curve and each
    method's, with the opening correlation in the legend; gaps are frames without a face."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_clip: Dict[str, list] = {}
    for c in result["clips"]:
        if c.get("anchor_curve") is not None and c.get("generated_curve") is not None:
            by_clip.setdefault(c["clip"], []).append(c)
    if not by_clip:
        return None
    names = list(by_clip)[:max_clips]
    cols = min(3, len(names))
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 2.4 * rows), squeeze=False)
    to_arr = lambda v: np.array([np.nan if x is None else x for x in v], float)  # noqa: E731
    for ax, name in zip(axes.ravel(), names):
        recs = by_clip[name]
        ax.plot(to_arr(recs[0]["anchor_curve"]), color="k", lw=1.6, label="real (anchor)")
        for i, c in enumerate(recs):
            ax.plot(to_arr(c["generated_curve"]), lw=1.0, color=f"C{i}", label=f"{c['method']} (corr {_fmt(c.get('mouth_corr'))})")
        ax.set_title(name, fontsize=8)
        ax.legend(fontsize=6, loc="upper right")
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    unit = "inner-lip gap / inter-ocular distance" if any("LMD" in k for c in result["clips"] for k in c) else "face widths"
    fig.supxlabel("frame", fontsize=8)
    fig.supylabel(f"mouth opening ({unit})", fontsize=8)
    fig.tight_layout()
    p = Path(out_dir) / "mouth_curves.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return str(p)
