"""Paired comparisons of methods on the same clips: bootstrap interval, wins, sign test.

For two methods A and B evaluated on the same clips, per measure:

* ``mean_diff``: the mean over clips of the paired difference ``d_i = A_i - B_i`` (in the
  measure's units; a clip counts only where both methods have a finite value);
* ``ci``: a percentile bootstrap interval of that mean (``level`` 0.95 by default):
  ``n_resamples`` resamples of the clips with replacement, drawn by
  ``numpy.random.default_rng(seed)``; the seed and the resample count are written in the output;
* ``wins_a`` / ``wins_b`` / ``ties``: clips on which each method is better, by the measure's
  declared direction (:data:`MEASURE_DIRECTIONS`: lower LSE-D is better, higher LSE-C is better, ...);
* ``p_sign``: the exact two-sided binomial sign test of ``wins_a`` against ``wins_a + wins_b``
  trials at p = 1/2, ties dropped (said in the output).

Pure numpy/scipy-free core; :func:`compare_methods` works on ``run_evaluation``'s per-clip records.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["MEASURE_DIRECTIONS", "MEASURE_LABELS", "bootstrap_mean_ci", "sign_test", "paired_comparison", "compare_methods",
           "format_comparison_table", "DEFAULT_RESAMPLES"]

DEFAULT_RESAMPLES = 10000

# Which direction is better, declared per measure (True = higher is better). A per-clip key that is
# not listed here is not compared: a direction is never guessed.
MEASURE_DIRECTIONS: Dict[str, bool] = {
    "LSE-D": False,
    "LSE-C": True,
    "LSE-D_reencoded": False,
    "LSE-C_reencoded": True,
    "csim_expr": True,
    "csim_id": True,
    "PSNR": True,
    "SSIM": True,
    "M-LMD": False,
    "F-LMD": False,
    "acc_emo": True,
    "mouth_corr": True,
    "mouth_mae": False,
}

# Headers in the papers' spelling, with the arrow of the better direction.
MEASURE_LABELS: Dict[str, str] = {
    "LSE-D": "LSE-D↓", "LSE-C": "LSE-C↑", "LSE-D_reencoded": "LSE-D↓ (re-enc.)", "LSE-C_reencoded": "LSE-C↑ (re-enc.)",
    "csim_expr": "CSIM-expr↑", "csim_id": "CSIM-id↑", "PSNR": "PSNR↑", "SSIM": "SSIM↑", "M-LMD": "M-LMD↓", "F-LMD": "F-LMD↓",
    "acc_emo": "Acc_emo↑", "mouth_corr": "opening corr↑", "mouth_mae": "opening MAE↓",
}


def bootstrap_mean_ci(diffs: Sequence[float], n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = 0.95) -> tuple:
    """Percentile bootstrap interval of the mean of ``diffs`` (n,) finite floats, n >= 1.

    Returns ``(low, high)``. With n == 1 the interval is the single value (no spread to resample).
    """
    d = np.asarray(diffs, np.float64).ravel()
    if d.size < 1 or not np.isfinite(d).all():
        raise ValueError(f"expected at least one finite paired difference, got {d.size} values ({int((~np.isfinite(d)).sum())} not finite)")
    if not 0 < level < 1:
        raise ValueError(f"expected a confidence level in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError(f"expected n_resamples >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(int(n_resamples), d.size))
    means = d[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def sign_test(wins_a: int, wins_b: int) -> float:
    """Exact two-sided binomial sign test, ties already dropped: P(|X - n/2| >= |wins_a - n/2|) for
    X ~ Binomial(n = wins_a + wins_b, 1/2). Returns 1.0 when n == 0."""
    if wins_a < 0 or wins_b < 0:
        raise ValueError(f"expected non-negative win counts, got {wins_a} and {wins_b}")
    n = wins_a + wins_b
    if n == 0:
        return 1.0
    k = min(wins_a, wins_b)
    # The binomial(n, 1/2) law is symmetric: two-sided p = 2 P(X <= k), capped at 1 (k = n/2).
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return float(min(1.0, 2.0 * tail))


def paired_comparison(a: Sequence[float], b: Sequence[float], higher_is_better: bool, n_resamples: int = DEFAULT_RESAMPLES,
                      seed: int = 0, level: float = 0.95, tie_tol: float = 0.0) -> dict:
    """A vs B on paired values (n,) and (n,): mean difference A - B, its bootstrap interval, wins and
    the sign test. Pairs where either value is not finite are left out (``n_left_out``). Differences
    with ``|d| <= tie_tol`` are ties."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"expected paired values of equal length, got {a.size} and {b.size}")
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    out = {"n": int(d.size), "n_left_out": int((~ok).sum())}
    if d.size == 0:
        return {**out, "mean_diff": None, "ci": None, "wins_a": 0, "wins_b": 0, "ties": 0, "p_sign": None}
    better_a = d > tie_tol if higher_is_better else d < -tie_tol
    better_b = d < -tie_tol if higher_is_better else d > tie_tol
    wa, wb = int(better_a.sum()), int(better_b.sum())
    lo, hi = bootstrap_mean_ci(d, n_resamples, seed, level)
    return {**out, "mean_diff": float(d.mean()), "ci": [lo, hi], "wins_a": wa, "wins_b": wb, "ties": int(d.size - wa - wb),
            "p_sign": sign_test(wa, wb), "excludes_zero": bool(lo > 0 or hi < 0)}


def compare_methods(clips: List[dict], methods: Sequence[str], measures: Optional[Sequence[str]] = None,
                    n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = 0.95) -> dict:
    """Every pair of ``methods`` (in order: A = the earlier one) on every measure of
    :data:`MEASURE_DIRECTIONS` that both have on at least one clip. ``clips``: per-clip records
    ``{"clip", "method", <measure>: float or None, ...}``; clips are paired by ``clip`` name.

    Returns the JSON section ``{"protocol": {...}, "pairs": [{"a", "b", "measures": {key: ...}}]}``."""
    measures = [m for m in (measures or MEASURE_DIRECTIONS) if m in MEASURE_DIRECTIONS]
    by = {m: {c["clip"]: c for c in clips if c.get("method") == m} for m in methods}
    pairs = []
    for i, ma in enumerate(methods):
        for mb in methods[i + 1:]:
            names = [n for n in by[ma] if n in by[mb]]
            res = {}
            for key in measures:
                va = [by[ma][n].get(key) for n in names]
                vb = [by[mb][n].get(key) for n in names]
                if not any(v is not None for v in va) or not any(v is not None for v in vb):
                    continue
                to_f = lambda vs: [np.nan if v is None else float(v) for v in vs]  # noqa: E731
                res[key] = paired_comparison(to_f(va), to_f(vb), MEASURE_DIRECTIONS[key], n_resamples, seed, level)
            pairs.append({"a": ma, "b": mb, "clips": len(names), "measures": res})
    return {
        "protocol": {
            "difference": "A - B per clip (clips paired by name; a clip counts where both have a finite value)",
            "interval": f"{round(100 * level)} % percentile bootstrap of the mean paired difference",
            "bootstrap_resamples": int(n_resamples),
            "bootstrap_seed": int(seed),
            "rng": "numpy.random.default_rng",
            "sign_test": "exact two-sided binomial sign test, p = 1/2, ties dropped",
            "directions": {k: ("higher is better" if v else "lower is better") for k, v in MEASURE_DIRECTIONS.items() if k in measures},
        },
        "pairs": pairs,
    }


def _g(v: Optional[float]) -> str:
    return "—" if v is None else f"{v:+.3f}"


def format_comparison_table(comparison: dict) -> Optional[str]:
    """Markdown, laid out like Table I (rows = comparisons, columns = measures): per cell the mean
    paired difference A - B, its interval, the wins of A / B (ties) and the sign-test p-value."""
    pairs = [p for p in comparison.get("pairs", []) if p["measures"]]
    if not pairs:
        return None
    keys = [k for k in MEASURE_DIRECTIONS if any(k in p["measures"] for p in pairs)]
    lines = ["| A vs B | " + " | ".join(MEASURE_LABELS.get(k, k) for k in keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for p in pairs:
        cells = []
        for k in keys:
            r = p["measures"].get(k)
            if r is None or r["mean_diff"] is None:
                cells.append("—")
                continue
            lo, hi = r["ci"]
            cells.append(f"{_g(r['mean_diff'])} [{_g(lo)}, {_g(hi)}]; wins {r['wins_a']}/{r['wins_b']}"
                         + (f" ({r['ties']} tied)" if r["ties"] else "") + f"; p={r['p_sign']:.3g}")
        lines.append(f"| {p['a']} vs {p['b']} (n={p['clips']}) | " + " | ".join(cells) + " |")
    proto = comparison["protocol"]
    lines += ["", f"Cells: mean paired difference A - B [{proto['interval']}, {proto['bootstrap_resamples']} resamples, "
                  f"seed {proto['bootstrap_seed']}]; wins A/B = clips on which each method is better by the measure's arrow; "
                  f"p = {proto['sign_test']}."]
    return "\n".join(lines)
