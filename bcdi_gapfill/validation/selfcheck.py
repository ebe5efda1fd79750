"""Which gap treatment to trust on a measured scan, without a truth: a self-check in the spirit
of crystallography's R-free.

Extra bands of *measured* voxels, shaped like the real gap (same width and orientation,
shifted beside it into regions of similar intensity), are hidden: left free in every phase
retrieval, their counts withheld, while each treatment applies to the real gap. The
reconstruction's intensity is scored on the hidden voxels, whose counts were measured: the
treatment whose reconstruction predicts counts it never saw best is the one the data support
best around the gap. (``hidden="treated"`` applies the treatment to gap and bands alike, as
first specified; a fill given as data then grades itself, see :func:`assess`.)

Treatments (the names of :mod:`bcdi_gapfill.validation.core`): ``free_pixels`` (gap left free by
the modulus projection), ``zero_fill`` (gap given as zero counts), ``inpaint`` (the model's
fill given as data), ``inpaint+release`` (the model's fill released over the iterations),
``biharmonic`` (the log-biharmonic fill as data).

What it measures is how well each treatment's reconstruction predicts measured voxels *next
to* the gap, not the strain error: docs/benchmarks.md ("The self-check against the truth")
says how often its choice was the treatment with the lower true strain error.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from bcdi_gapfill.core import geometry, metrics
from bcdi_gapfill.fill.inpainting import inpaint

__all__ = ["assess", "hidden_bands", "TREATMENTS", "DEFAULT_TREATMENTS", "format_assessment"]

TREATMENTS = ("free_pixels", "zero_fill", "inpaint", "inpaint+release", "biharmonic")
DEFAULT_TREATMENTS = ("free_pixels", "zero_fill", "inpaint", "inpaint+release")
#: Measured pixels kept between the gap and a hidden band (so that a band is not the gap's edge).
BAND_MARGIN = 2
#: The recommendation is "clear" when the runner-up's deviance is this much higher (relative)
#: and the winner is lower on at least CLEAR_WINS of the (band, start) pairs.
CLEAR_MARGIN = 0.10
CLEAR_WINS = 0.75


def _shift(mask: np.ndarray, d: int, axis: int) -> np.ndarray:
    """``mask`` moved by ``d`` voxels along ``axis``, without wrapping."""
    out = np.zeros_like(mask)
    src = [slice(None)] * mask.ndim
    dst = [slice(None)] * mask.ndim
    n = mask.shape[axis]
    if abs(d) >= n:
        return out
    src[axis] = slice(max(0, -d), n - max(0, d))
    dst[axis] = slice(max(0, d), n - max(0, -d))
    out[tuple(dst)] = mask[tuple(src)]
    return out


def hidden_bands(counts: np.ndarray, gap_mask: np.ndarray, *, n_bands: int = 2,
                 bad_mask: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Bands of measured voxels shaped like the gap, beside it, in regions of similar intensity.

    Each candidate is the gap moved along a detector axis (rows: its horizontal bands move,
    columns: its vertical ones; the bands along the other axis fall back onto the gap and are
    dropped) by ``width + BAND_MARGIN`` or twice that, on either side, minus the gap and its
    margin and minus ``bad_mask``. Candidates are ranked by how close their mean log1p count
    is to that of the measured voxels bordering the gap (within ``width`` pixels), and the
    ``n_bands`` closest that hold at least half the voxels of the bands they copy are returned,
    one per side of each axis before a side is used twice.

    Parameters
    ----------
    counts : ndarray, shape (frames, rows, columns)
        Photon counts (gap voxels are ignored).
    gap_mask : ndarray of bool, same shape
        The detector gap.
    n_bands : int
        Number of bands returned (fewer when fewer fit).
    bad_mask : ndarray of bool, same shape, optional
        Other unmeasured voxels (hot pixels, aliens): never hidden, never scored.

    Returns
    -------
    list of dict
        ``mask`` (bool, the hidden voxels), ``axis`` (1 rows or 2 columns), ``shift`` (pixels),
        ``voxels``, ``log_intensity`` (mean log1p count) and ``border_log_intensity``.
    """
    width = geometry.gap_width(gap_mask)
    if width == 0:
        raise ValueError("gap_mask holds no detector gap band (no pixel masked in every frame)")
    unusable = ndimage.binary_dilation(gap_mask, iterations=BAND_MARGIN)
    if bad_mask is not None:
        unusable |= bad_mask
    log_counts = np.log1p(np.clip(counts, 0, None).astype(np.float64))
    border = ndimage.binary_dilation(gap_mask, iterations=width) & ~unusable
    if not border.any():
        raise ValueError("no measured voxel borders the gap: nothing to compare a hidden band with")
    target = float(log_counts[border].mean())
    candidates = []
    for axis in (1, 2):
        moved_full = _shift(gap_mask, width + BAND_MARGIN, axis) & ~gap_mask
        copied = int(moved_full.sum())   # the voxels of the bands this axis moves
        if copied == 0:
            continue
        for step in (1, 2):
            for sign in (-1, 1):
                d = sign * step * (width + BAND_MARGIN)
                band = _shift(gap_mask, d, axis) & ~unusable
                n = int(band.sum())
                if n < copied // 2:
                    continue
                level = float(log_counts[band].mean())
                candidates.append({"mask": band, "axis": axis, "shift": d, "voxels": n, "log_intensity": level,
                                   "border_log_intensity": target})
    candidates.sort(key=lambda c: abs(c["log_intensity"] - target))
    chosen: list[dict[str, Any]] = []
    # Each side of each axis once before any is used twice: bands on both sides of the gap and
    # along both detector axes sample more of its surroundings. (Bands may overlap one another:
    # each is hidden in a phase retrieval of its own.)
    for fresh_sides_only in (True, False):
        for c in candidates:
            if len(chosen) == n_bands:
                break
            side = (c["axis"], np.sign(c["shift"]))
            if fresh_sides_only and any((o["axis"], np.sign(o["shift"])) == side for o in chosen):
                continue
            if all(c is not o for o in chosen):
                chosen.append(c)
    if not chosen:
        raise ValueError(f"no band of measured voxels shaped like the {width}-pixel gap fits beside it "
                         f"in an array of shape {gap_mask.shape}")
    return chosen


def _treated(name: str, counts: np.ndarray, hidden: np.ndarray, model: Any,
             inpaint_options: dict) -> tuple[np.ndarray, dict[str, Any]]:
    """The intensity handed to phase retrieval and its masks, for one treatment."""
    zeroed = np.where(hidden, 0.0, counts).astype(np.float32)
    if name == "free_pixels":
        return zeroed, {"free_mask": hidden}
    if name == "zero_fill":
        return zeroed, {}
    if name == "biharmonic":
        return inpaint(zeroed, hidden, method="biharmonic"), {}
    filled = inpaint(zeroed, hidden, model=model, **inpaint_options)
    return filled, ({"estimated_mask": hidden} if name == "inpaint+release" else {})


def assess(counts: np.ndarray, gap_mask: np.ndarray, *, bad_mask: np.ndarray | None = None,
           treatments: Sequence[str] = DEFAULT_TREATMENTS, hidden: str = "free", n_bands: int = 2,
           n_starts: int = 2,
           algorithm: Any = None, seed: int = 0, model: Any = None, device: Any = None,
           inpaint_options: dict | None = None, progress: bool = True) -> dict[str, Any]:
    """Score each gap treatment on measured voxels hidden like the gap; recommend one.

    Parameters
    ----------
    counts : ndarray, shape (frames, rows, columns)
        Measured photon counts, finite and >= 0, Bragg peak near the centre (as phasing wants
        it). Gap voxels are ignored.
    gap_mask : ndarray of bool, same shape
        The detector gap (True where nothing was measured).
    bad_mask : ndarray of bool, same shape, optional
        Other masked voxels (hot pixels, aliens): free in every run, never hidden or scored.
    treatments : sequence of str
        Subset of :data:`TREATMENTS`.
    hidden : {"free", "treated"}
        What the hidden band is in each run. ``"free"`` (default, R-free's rule): left free
        in every run, its counts withheld, while the treatment applies to the real gap only;
        the score is then how well each treatment's reconstruction predicts measured counts
        it never saw. ``"treated"``: the treatment applies to gap and band alike; a fill given
        as data then puts its own values in the band and the reconstruction copies them, so
        the score grades the fill beside the gap more than the reconstruction
        (docs/benchmarks.md measures both).
    n_bands : int
        Bands of measured voxels hidden, one phase retrieval each (:func:`hidden_bands`).
    n_starts : int
        Random starts per band and treatment, each scored; the lowest-LLK start is what a
        user's multi-start run would keep, and the others give the spread.
    algorithm : str or Operator, optional
        Default :data:`bcdi_gapfill.phasing.engine.DEFAULT_ALGORITHM`.
    seed : int
        Start ``k`` uses ``InitRandom(seed + k)`` for every band and treatment.
    model, device, inpaint_options
        The model's fill (``inpaint`` treatments), as in :func:`bcdi_gapfill.inpaint`.
    progress : bool
        Print the expected duration and one line per phase retrieval (stderr).

    Returns
    -------
    dict
        ``scores``: per treatment ``deviance`` (mean Poisson deviance per hidden voxel of the
        kept start, averaged over the bands: lower is better), ``deviance_starts`` (every
        start of every band), ``spread`` (their standard deviation), ``pcc_log`` (log1p PCC
        over the hidden voxels, kept start, band mean); ``recommended`` and ``runner_up``;
        ``margin`` (runner-up's deviance over the winner's, minus 1); ``wins`` (share of the
        (band, start) pairs where the winner's deviance is lower); ``confidence``
        (``"clear"`` or ``"weak"``); ``summary`` (one sentence); ``bands``; ``settings``.
    """
    from bcdi_gapfill.phasing import engine as P

    counts = np.asarray(counts)
    if counts.ndim != 3 or not np.issubdtype(counts.dtype, np.number) or np.iscomplexobj(counts):
        raise ValueError(f"counts must be a real 3D array (frames, rows, columns), got {counts.dtype} "
                         f"{counts.shape}")
    gap_mask = np.asarray(gap_mask)
    if gap_mask.dtype != bool or gap_mask.shape != counts.shape:
        raise ValueError(f"gap_mask must be a boolean array of shape {counts.shape}, got {gap_mask.dtype} "
                         f"{gap_mask.shape}")
    bad = np.zeros(counts.shape, bool) if bad_mask is None else np.asarray(bad_mask)
    if bad.dtype != bool or bad.shape != counts.shape:
        raise ValueError(f"bad_mask must be a boolean array of shape {counts.shape}")
    measured = ~(gap_mask | bad)
    if not np.all(np.isfinite(counts[measured])) or (counts[measured] < 0).any():
        raise ValueError("counts must be finite and >= 0 on the measured voxels")
    if hidden not in ("free", "treated"):
        raise ValueError(f"hidden must be 'free' or 'treated', got {hidden!r}")
    treatments = tuple(treatments)
    unknown = [t for t in treatments if t not in TREATMENTS]
    if unknown or len(treatments) < 2 or len(set(treatments)) != len(treatments):
        raise ValueError(f"treatments must be at least two distinct names of {TREATMENTS}, got {treatments!r}")
    for name, value in (("n_bands", n_bands), ("n_starts", n_starts)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    algorithm = P.DEFAULT_ALGORITHM if algorithm is None else algorithm
    operator = P.parse_algorithm(algorithm) if isinstance(algorithm, str) else algorithm
    options = dict(inpaint_options or {})

    bands = hidden_bands(counts, gap_mask, n_bands=int(n_bands), bad_mask=bad)
    data = np.where(measured, counts, 0).astype(np.float32)
    n_runs = len(bands) * len(treatments) * int(n_starts)
    if progress:
        seconds = P.estimate_phasing_seconds(counts.shape, operator, n_starts=int(n_starts),
                                             n_runs=len(bands) * len(treatments), device=device)
        print(f"assess: {n_runs} phase retrievals ({len(treatments)} treatments x {len(bands)} hidden bands x "
              f"{int(n_starts)} starts), expected about {max(1, round(seconds / 60))} min", file=sys.stderr)
    t0 = time.perf_counter()
    per: dict[str, dict[str, list]] = {t: {"kept": [], "starts": [], "pcc": []} for t in treatments}
    for b, band in enumerate(bands):
        withheld = band["mask"]
        for name in treatments:
            # The fill never sees the band's counts: it fills gap and band together.
            intensity, masks = _treated(name, data, gap_mask | withheld, model, options)
            always_free = bad
            if hidden == "free":
                always_free = bad | withheld
                intensity = np.where(withheld, 0, intensity).astype(np.float32)   # free: no value at all
                if "estimated_mask" in masks:
                    masks["estimated_mask"] = masks["estimated_mask"] & ~withheld
            free = masks.pop("free_mask", None)
            free = always_free if free is None else (free | always_free)
            runs = []
            for k in range(int(n_starts)):
                res = P.phase_retrieval(intensity, free_mask=free if free.any() else None, algorithm=operator,
                                        n_starts=1, seed=int(seed) + k, device=device, **masks)
                predicted = metrics.diffracted_intensity(res.obj)
                runs.append((res.llk, metrics.poisson_deviance(counts, predicted, withheld),
                             float(metrics.pcc_gap(counts, predicted, withheld))))
                if progress:
                    print(f"assess: band {b + 1}/{len(bands)} {name} start {k}: deviance {runs[-1][1]:.3f}",
                          file=sys.stderr)
            kept = min(runs, key=lambda r: r[0])
            per[name]["kept"].append(kept[1])
            per[name]["pcc"].append(kept[2])
            per[name]["starts"].append([r[1] for r in runs])
    scores = {name: {"deviance": float(np.mean(v["kept"])),
                     "deviance_starts": [float(x) for row in v["starts"] for x in row],
                     "spread": float(np.std([x for row in v["starts"] for x in row])),
                     "pcc_log": float(np.mean(v["pcc"])),
                     "deviance_bands": [float(x) for x in v["kept"]]}
              for name, v in per.items()}
    ranked = sorted(treatments, key=lambda t: scores[t]["deviance"])
    best, second = ranked[0], ranked[1]
    pairs = list(zip(scores[best]["deviance_starts"], scores[second]["deviance_starts"]))
    wins = float(np.mean([a < b for a, b in pairs]))
    margin = scores[second]["deviance"] / scores[best]["deviance"] - 1 if scores[best]["deviance"] > 0 else math.inf
    confidence = "clear" if margin >= CLEAR_MARGIN and wins >= CLEAR_WINS else "weak"
    summary = (f"{best} predicts the hidden measured voxels best (deviance {scores[best]['deviance']:.3f} per "
               f"voxel, {second} {scores[second]['deviance']:.3f}: {100 * margin:.0f}% higher, lower on "
               f"{100 * wins:.0f}% of band-starts); the difference is {confidence}. A diagnostic: on simulated "
               "crystals this pick was not reliably the treatment with the lowest strain error "
               "(docs/benchmarks.md).")
    return {"scores": scores, "ranking": ranked, "recommended": best, "runner_up": second, "margin": float(margin),
            "wins": wins, "confidence": confidence, "summary": summary,
            "bands": [{k: v for k, v in band.items() if k != "mask"} for band in bands],
            "settings": {"treatments": list(treatments), "hidden": hidden, "n_bands": len(bands),
                         "n_starts": int(n_starts),
                         "algorithm": str(algorithm), "seed": int(seed), "gap_voxels": int(gap_mask.sum()),
                         "gap_width": geometry.gap_width(gap_mask), "shape": list(counts.shape),
                         "seconds": time.perf_counter() - t0}}


def format_assessment(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`assess`'s scores, best first, and its summary sentence."""
    lines = [f"{'treatment':16s} {'deviance':>9s} {'spread':>8s} {'log PCC':>8s}"]
    for name in result["ranking"]:
        s = result["scores"][name]
        lines.append(f"{name:16s} {s['deviance']:9.3f} {s['spread']:8.3f} {s['pcc_log']:8.3f}")
    return "\n".join([*lines, result["summary"]])
