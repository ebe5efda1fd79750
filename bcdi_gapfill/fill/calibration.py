"""Is the inpainting uncertainty calibrated? Reliability of the per-voxel spread.

``inpaint(..., return_uncertainty=True)`` gives each gap voxel the weighted standard
deviation, in log1p(counts) units, of the predictions that covered it (overlapping windows
and, with ``flips=True``, the flipped views). An uncertainty is useful when the error grows
with it. :func:`reliability_table` bins the gap voxels by predicted uncertainty (equal-count
bins) and gives, per bin, the mean predicted uncertainty beside the mean and RMS of the
actual log error, with the Spearman rank correlation between ``|error|`` and uncertainty
over all voxels; :func:`reliability_figure` draws it (a reliability plot).
:func:`calibrate` runs the whole measurement on held-out simulations and
:func:`write_calibration` writes its JSON, Markdown table and PNG plot.

Held-out seeds
--------------
Training used the simulation seeds 0..599 and 100000.., the evaluation 200000.. (portions)
and 300000.. (whole arrays); :func:`calibrate` only accepts seeds from
:data:`HELDOUT_FIRST_SEED` (400000) on, which nothing else uses.

Errors are measured two ways: against the noisy simulated counts (what a measurement would
have given: includes the Poisson noise, which no spread of predictions can foresee) and
against the noise-free expectation (the error of the prediction itself).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from bcdi_gapfill.core.geometry import central_cross_gap
from bcdi_gapfill.core.io import atomic_write_bytes, atomic_write_text
from bcdi_gapfill.core.simulate import simulate_pattern
from bcdi_gapfill.fill.inpainting import inpaint

__all__ = ["reliability_table", "reliability_figure", "log_errors", "calibrate", "write_calibration",
           "HELDOUT_FIRST_SEED"]

#: First simulation seed that neither training nor the evaluation uses.
HELDOUT_FIRST_SEED = 400_000


def log_errors(truth: np.ndarray, filled: np.ndarray, gap_mask: np.ndarray) -> np.ndarray:
    """``log1p(filled) - log1p(truth)`` over the gap voxels, a 1D float64 array (C order).

    ``truth`` and ``filled`` are photon counts (>= 0) of the same shape; ``gap_mask`` is
    boolean of that shape.
    """
    truth = np.asarray(truth)
    filled = np.asarray(filled)
    gap = np.asarray(gap_mask)
    if gap.dtype != bool:
        raise TypeError(f"gap_mask must be a boolean array, got dtype {gap.dtype}")
    if truth.shape != filled.shape or gap.shape != truth.shape:
        raise ValueError(f"truth {truth.shape}, filled {filled.shape} and gap_mask {gap.shape} "
                         "must have the same shape")
    t = truth[gap].astype(np.float64)
    f = filled[gap].astype(np.float64)
    if (t < 0).any() or (f < 0).any():
        raise ValueError("truth and filled must be photon counts >= 0 in the gap")
    return np.log1p(f) - np.log1p(t)


def reliability_table(errors: np.ndarray, uncertainty: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Binned actual error against predicted uncertainty, and their rank correlation.

    Parameters
    ----------
    errors : array-like, any shape
        Per-voxel errors (e.g. :func:`log_errors`, log1p units); their absolute value is used.
    uncertainty : array-like, same shape
        Per-voxel predicted uncertainty (standard deviation, same units), >= 0.
    n_bins : int
        Bins of equal voxel count along increasing uncertainty (>= 1; at most one per voxel).

    Returns
    -------
    dict
        ``n_voxels``; ``spearman`` (rank correlation of ``|error|`` with the uncertainty
        over all voxels; None when either is constant); ``mean_abs_error``,
        ``rms_error``, ``mean_uncertainty`` (all voxels); ``bins``: list of dicts with
        ``count``, ``uncertainty_min``, ``uncertainty_max``, ``mean_uncertainty``,
        ``rms_uncertainty``, ``mean_abs_error``, ``rms_error``. For errors drawn from normal
        laws of the predicted standard deviations, a bin has ``rms_error`` =
        ``rms_uncertainty`` (and ``mean_abs_error`` = 0.80 ``mean_uncertainty`` when the
        bin is narrow).
    """
    err = np.asarray(errors, dtype=np.float64)
    unc = np.asarray(uncertainty, dtype=np.float64)
    if err.shape != unc.shape:
        raise ValueError(f"errors shape {err.shape} does not match uncertainty shape {unc.shape}")
    err, unc = err.ravel(), unc.ravel()
    if err.size == 0:
        raise ValueError("errors is empty: no voxel to assess")
    if not (np.isfinite(err).all() and np.isfinite(unc).all()):
        raise ValueError("errors and uncertainty must be finite")
    if (unc < 0).any():
        raise ValueError(f"uncertainty must be >= 0, got a minimum of {unc.min()}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    abs_err = np.abs(err)
    # Equal-count bins by rank: ties (e.g. many exact zeros) cannot leave a bin empty.
    order = np.argsort(unc, kind="stable")
    bins = []
    for idx in np.array_split(order, min(int(n_bins), unc.size)):
        u, a = unc[idx], abs_err[idx]
        bins.append({"count": int(idx.size), "uncertainty_min": float(u.min()), "uncertainty_max": float(u.max()),
                     "mean_uncertainty": float(u.mean()), "rms_uncertainty": float(np.sqrt(np.mean(u ** 2))),
                     "mean_abs_error": float(a.mean()),
                     "rms_error": float(np.sqrt(np.mean(a ** 2)))})
    return {"n_voxels": int(err.size), "n_bins": len(bins), "spearman": _spearman(abs_err, unc),
            "mean_abs_error": float(abs_err.mean()), "rms_error": float(np.sqrt(np.mean(abs_err ** 2))),
            "mean_uncertainty": float(unc.mean()), "bins": bins}


def reliability_figure(tables: Mapping[str, Any], *, title: str | None = None):
    """Reliability plot: mean actual error per bin against mean predicted uncertainty.

    ``tables`` is one :func:`reliability_table` result or ``{label: table}`` for several
    curves (e.g. errors against the noisy and the noise-free truth). Returns a matplotlib
    ``Figure`` (no pyplot state), with the lines of a calibrated normal error
    (RMS = sigma, mean ``|error|`` = 0.80 sigma).
    """
    from matplotlib.figure import Figure

    if "bins" in tables:
        tables = {"": tables}
    fig = Figure(figsize=(5.6, 4.2), layout="constrained")
    ax = fig.subplots()
    right = 0.0
    for (label, table), colour in zip(tables.items(), ("tab:red", "tab:blue", "tab:green", "tab:purple")):
        x = np.array([b["mean_uncertainty"] for b in table["bins"]])
        mae = np.array([b["mean_abs_error"] for b in table["bins"]])
        rms = np.array([b["rms_error"] for b in table["bins"]])
        rho = table.get("spearman")
        tag = f"{label}, " if label else ""
        rho_txt = "n/a" if rho is None else f"{rho:.2f}"
        ax.plot(x, mae, "o-", color=colour, label=f"{tag}mean |error| (Spearman {rho_txt})")
        ax.plot(x, rms, "s--", color=colour, alpha=0.6, label=f"{tag}RMS error")
        right = max(right, float(x.max()))
    # The reference lines span the predicted range only: errors far above it stay readable.
    line = np.array([0.0, right * 1.05 or 1.0])
    ax.plot(line, line, ":", color="0.3", lw=1, label="calibrated normal: RMS = $\\sigma$")
    ax.plot(line, math.sqrt(2 / math.pi) * line, ":", color="0.6", lw=1, label="mean |error| = 0.80 $\\sigma$")
    ax.set_xlabel("predicted uncertainty $\\sigma$ (log1p counts), bin mean")
    ax.set_ylabel("actual error (log1p counts)")
    ax.set_title(title or "Reliability of the inpainting uncertainty", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def calibrate(seeds: Sequence[int] = (400_000, 400_001, 400_002), *, size: int = 128, width: int = 6,
              model: Any = None, stride: int | None = None, flips: bool = True, n_bins: int = 10,
              num_threads: int | None = None, simulate_options: Mapping[str, Any] | None = None,
              progress: bool = False) -> dict[str, Any]:
    """Reliability of the model's uncertainty on held-out simulated arrays.

    Each seed gives ``simulate_pattern(size, seed, **simulate_options)`` and a cross gap of
    ``width`` pixels within 8 pixels of the centre; the gap is inpainted with
    ``inpaint(..., flips=flips, return_uncertainty=True)`` and the log errors are compared
    with the uncertainty, per array and pooled over all arrays.

    Parameters
    ----------
    seeds : sequence of int
        Simulation seeds, each >= :data:`HELDOUT_FIRST_SEED`.
    size, width : int
        Array size (voxels per axis) and gap width (pixels).
    model, stride, num_threads
        Passed to :func:`bcdi_gapfill.fill.inpainting.inpaint` (None: the shipped model and
        inpaint's default stride).
    flips : bool
        Test-time flips (the uncertainty then also holds the spread between flipped views).
    n_bins : int
        Bins of :func:`reliability_table`.
    simulate_options : dict, optional
        Extra keyword arguments of :func:`bcdi_gapfill.core.simulate.simulate_pattern`.
    progress : bool
        Print one line per array.

    Returns
    -------
    dict
        ``settings``; ``arrays``: per seed, ``oversampling``, ``peak_counts``, ``n_gap``,
        ``seconds`` and the tables ``noisy`` (errors against the Poisson-sampled counts) and
        ``expected`` (against the noise-free expectation); ``pooled``: the same two tables
        over every gap voxel of every array. Each table also has ``spearman_fill_level``,
        the rank correlation of ``|error|`` with ``log1p`` of the fill itself: a reference
        the uncertainty should beat to carry information of its own.
    """

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty: give at least one held-out simulation seed")
    early = [s for s in seeds if s < HELDOUT_FIRST_SEED]
    if early:
        raise ValueError(f"seeds {early} are below {HELDOUT_FIRST_SEED}: training and the evaluation use "
                         "those simulations, so they are not held out")
    result: dict[str, Any] = {
        "settings": {"seeds": seeds, "size": size, "width": width, "stride": stride, "flips": flips,
                     "n_bins": n_bins, "simulate_options": dict(simulate_options or {}),
                     "gap": "cross within 8 px of the centre", "errors": "log1p(filled) - log1p(truth)"},
        "arrays": []}
    pooled: dict[str, list[np.ndarray]] = {"noisy": [], "expected": [], "uncertainty": [], "level": []}
    for seed in seeds:
        pattern = simulate_pattern(size, seed, **dict(simulate_options or {}))
        gap, _ = central_cross_gap(pattern.counts.shape, width, seed)
        masked = pattern.counts.copy()
        masked[gap] = 0  # the model never sees the truth in the gap
        t0 = time.perf_counter()
        filled, spread = inpaint(masked, gap, model=model, stride=stride, flips=flips, return_uncertainty=True,
                                 num_threads=num_threads)
        seconds = time.perf_counter() - t0
        unc = spread[gap].astype(np.float64)
        row: dict[str, Any] = {"seed": seed, "oversampling": [float(v) for v in pattern.metadata["oversampling"]],
                               "peak_counts": float(pattern.metadata["peak_counts"]), "n_gap": int(gap.sum()),
                               "seconds": seconds}
        level = np.log1p(filled[gap].astype(np.float64))
        for key, truth in (("noisy", pattern.counts), ("expected", pattern.expected)):
            err = log_errors(truth, filled, gap)
            row[key] = reliability_table(err, unc, n_bins)
            # Reference: how well the filled intensity alone ranks the errors.
            row[key]["spearman_fill_level"] = _spearman(np.abs(err), level)
            pooled[key].append(err)
        pooled["uncertainty"].append(unc)
        pooled["level"].append(level)
        result["arrays"].append(row)
        if progress:
            print(f"seed {seed}: Spearman {row['noisy']['spearman']:.3f} (noisy truth), "
                  f"{row['expected']['spearman']:.3f} (noise-free), {seconds:.1f} s", flush=True)
    unc_all = np.concatenate(pooled["uncertainty"])
    level_all = np.concatenate(pooled["level"])
    result["pooled"] = {}
    for key in ("noisy", "expected"):
        err = np.concatenate(pooled[key])
        result["pooled"][key] = reliability_table(err, unc_all, n_bins)
        result["pooled"][key]["spearman_fill_level"] = _spearman(np.abs(err), level_all)
    return result


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import spearmanr

    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def _markdown(result: Mapping[str, Any]) -> str:
    s = result["settings"]
    lines = [f"## Uncertainty calibration ({s['size']}^3, {s['width']}-pixel cross, flips={s['flips']}, "
             f"seeds {', '.join(str(v) for v in s['seeds'])})", "",
             "| seed | oversampling | peak counts | gap voxels | Spearman (noisy) | Spearman (noise-free) | "
             "reference: Spearman of fill level (noisy) | s |",
             "|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for row in result["arrays"]:
        lines.append(f"| {row['seed']} | {np.mean(row['oversampling']):.2f} | {row['peak_counts']:.3g} | "
                     f"{row['n_gap']} | {fmt(row['noisy']['spearman'])} | {fmt(row['expected']['spearman'])} | "
                     f"{fmt(row['noisy']['spearman_fill_level'])} | {row['seconds']:.1f} |")
    pooled = result["pooled"]
    lines += ["", f"Pooled over all arrays: Spearman {fmt(pooled['noisy']['spearman'])} against the noisy counts, "
                  f"{fmt(pooled['expected']['spearman'])} against the noise-free expectation "
                  f"(reference, the fill level: {fmt(pooled['noisy']['spearman_fill_level'])} and "
                  f"{fmt(pooled['expected']['spearman_fill_level'])}).", "",
              "| bin | uncertainty range | mean uncertainty | mean abs error (noisy) | RMS error (noisy) | "
              "mean abs error (noise-free) | RMS error (noise-free) | voxels |",
              "|---|---|---|---|---|---|---|---|"]
    for i, (bn, be) in enumerate(zip(pooled["noisy"]["bins"], pooled["expected"]["bins"])):
        lines.append(f"| {i + 1} | {bn['uncertainty_min']:.4f}-{bn['uncertainty_max']:.4f} | "
                     f"{bn['mean_uncertainty']:.4f} | {bn['mean_abs_error']:.4f} | {bn['rms_error']:.4f} | "
                     f"{be['mean_abs_error']:.4f} | {be['rms_error']:.4f} | {bn['count']} |")
    return "\n".join(lines) + "\n"


def write_calibration(result: Mapping[str, Any], out_dir: str | Path, *, overwrite: bool = False) -> dict[str, Path]:
    """Write ``calibration.json``, ``calibration.md`` and ``reliability.png`` into ``out_dir``.

    Existing files are refused (FileExistsError, nothing written) unless ``overwrite``.
    Returns the paths by kind (``json``, ``markdown``, ``png``).
    """
    import io


    if not isinstance(result, Mapping) or "pooled" not in result or "arrays" not in result:
        raise ValueError("result must be the dict returned by calibrate() (keys 'pooled' and 'arrays')")
    out = Path(out_dir)
    paths = {"json": out / "calibration.json", "markdown": out / "calibration.md", "png": out / "reliability.png"}
    if not overwrite:
        existing = sorted(p.name for p in paths.values() if p.exists())
        if existing:
            raise FileExistsError(f"{out} already holds {', '.join(existing)}; pass overwrite=True to replace")
    fig = reliability_figure({"noisy truth": result["pooled"]["noisy"],
                              "noise-free truth": result["pooled"]["expected"]},
                             title=f"Reliability, {len(result['arrays'])} held-out arrays")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths["json"], json.dumps(result, indent=1) + "\n", overwrite=overwrite)
    atomic_write_text(paths["markdown"], _markdown(result), overwrite=overwrite)
    atomic_write_bytes(paths["png"], buf.getvalue(), overwrite=overwrite)
    return paths
