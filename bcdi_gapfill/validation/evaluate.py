"""Held-out evaluation of the model against classical fills (paper Table 1, Figs. 3-6, Supp. Fig. 9).

Protocol
--------
* Portions: 32^3 crops of simulated patterns whose seeds training never used (200000...),
  a vertical gap of 3, 6, 9 or 12 columns in the middle. PCC = the paper's equation 1 over
  the gap voxels, of log1p counts, against the *noisy* truth (what a measurement would
  have given). The "Poisson ceiling" is the PCC of the noise-free expectation against that
  same noisy truth: no fill can expect to do better, since the noise is unpredictable.
  ``headroom`` = (PCC - PCC_linear) / (PCC_ceiling - PCC_linear): the share of the way
  from linear interpolation to the ceiling that a fill closes.
* Whole arrays: 128^3 simulated patterns (seeds 300000...) with a cross gap of 3, 6, 9 and
  12 pixels near the peak, inpainted as a user would (`bcdi_gapfill.fill.inpainting`), PCC over all
  gap voxels, with the wall time of each method.
* Breakdowns: PCC against the mean photon count of the portion (Fig. 5) and against the
  oversampling ratio (Fig. 6); in-gap slices of truth, model and classical fills (Figs. 3, 4).

Writes ``evaluation.json``, ``evaluation.md`` and PNG figures into the output directory.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bcdi_gapfill.core.geometry import central_cross_gap, synthetic_gap_mask
from bcdi_gapfill.core.io import atomic_write_text
from bcdi_gapfill.core.metrics import pcc_gap
from bcdi_gapfill.core.simulate import simulate_pattern
from bcdi_gapfill.fill.classical import inpaint_biharmonic, interpolate_across_gap
from bcdi_gapfill.fill.inpainting import inpaint, load_model
from bcdi_gapfill.validation.scans import (cdiutils_scan_set, format_scan_table, scan_table,
                                           simulate_cdiutils_scan)

__all__ = ["portion_table", "whole_array_table", "peak_cross_gap", "peak_cross_table", "format_peak_cross_table",
           "run_evaluation", "TEST_FIRST_SEED", "ARRAY_FIRST_SEED", "PEAK_FIRST_SEED", "NEAR_PEAK_OFFSETS",
           "OFF_PEAK_OFFSETS"]

TEST_FIRST_SEED = 200_000
ARRAY_FIRST_SEED = 300_000
WIDTHS = (3, 6, 9, 12)
# The peak-position protocol (issue 21): crystals of both simulators, seeds no other table uses.
PEAK_FIRST_SEED = 320_000
CDIUTILS_PEAK_FIRST_SEED = 10
NEAR_PEAK_OFFSETS = (0, 2, 4)      # cross centre this many pixels from the Bragg peak (rows and columns)
OFF_PEAK_OFFSETS = (8, 14, 20)
# A portion is "signal-dominated" when the noise-free expectation itself correlates this well
# with the noisy truth in the gap.
SIGNAL_CEILING = 0.9


def _vertical_gap(width: int, window: int = 32) -> np.ndarray:
    return synthetic_gap_mask((window,) * 3, "vertical", width)


def _model_log_predictions(model, log_counts: np.ndarray, gap: np.ndarray, batch: int = 32) -> np.ndarray:
    """log1p predictions of a model for portions (N, 32, 32, 32) sharing one gap."""
    import torch

    from bcdi_gapfill.nn.dataset import MIN_SCALE

    out = np.empty_like(log_counts)
    gap_t = torch.from_numpy(gap)
    with torch.inference_mode():
        for i in range(0, len(log_counts), batch):
            lc = torch.from_numpy(log_counts[i:i + batch])
            g = gap_t.expand_as(lc)
            scale = (lc * ~g).flatten(1).amax(1).clamp_min(MIN_SCALE)
            log_norm = (lc * ~g) / scale[:, None, None, None]
            x = torch.stack([log_norm, g.float()], 1)[:, : model.config.in_channels]
            y = model(x.contiguous(memory_format=torch.channels_last_3d), g[:, None])
            out[i:i + batch] = (y[:, 0] * scale[:, None, None, None]).numpy()
    return out


def portion_table(bank, models: dict[str, Any], widths=WIDTHS, n_portions: int = 1000) -> dict:
    """Per-width mean PCC of every method on held-out portions (Table 1 and Supp. Fig. 9).

    Returns ``{"widths": [...], "methods": {name: {"pcc": [...], "pcc_vs_expected": [...],
    "seconds_per_portion": [...]}}, "ceiling": [...], "headroom": {name: [...]},
    "per_portion": {...}}`` (per-portion PCCs for the breakdown figures).
    """

    n = min(n_portions, len(bank))
    log_counts = bank.log_counts[:n].astype(np.float32)
    log_expected = bank.log_expected[:n].astype(np.float32)
    result: dict[str, Any] = {"widths": list(widths), "n_portions": n, "methods": {}, "ceiling": [],
                              "per_portion": {"mean_counts": bank.mean_counts[:n].tolist(),
                                              "oversampling": bank.oversampling[:n].tolist()}}
    result["ceiling_signal"] = []
    for width in widths:
        gap = _vertical_gap(width)
        ceiling = pcc_gap(log_counts, log_expected, gap, log=False)
        # Portions whose gap content is dominated by signal rather than Poisson noise: the
        # paper's experimental portions had fringes; most peripheral simulated ones do not.
        signal = ceiling >= SIGNAL_CEILING
        result["ceiling"].append(float(np.nanmean(ceiling)))
        result["ceiling_signal"].append(float(np.nanmean(ceiling[signal])) if signal.any() else None)
        result.setdefault("n_signal", []).append(int(signal.sum()))
        fills: dict[str, tuple[np.ndarray, float]] = {}
        for kind in ("linear", "cubic", "nearest"):
            t0 = time.perf_counter()
            fills[kind] = (np.stack([interpolate_across_gap(p, np.broadcast_to(gap, p.shape), kind)
                                     for p in log_counts]), time.perf_counter() - t0)
        t0 = time.perf_counter()
        # The exact (scikit-image-equivalent) log-domain biharmonic fill of each portion.
        fills["biharmonic"] = (np.stack([inpaint_biharmonic(p, gap) for p in log_counts]).astype(np.float32),
                               time.perf_counter() - t0)
        for name, model in models.items():
            t0 = time.perf_counter()
            fills[name] = (_model_log_predictions(model, log_counts, gap), time.perf_counter() - t0)
        for name, (pred, seconds) in fills.items():
            pcc = pcc_gap(log_counts, pred, gap, log=False)
            entry = result["methods"].setdefault(name, {"pcc": [], "pcc_signal": [], "pcc_vs_expected": [],
                                                        "seconds_per_portion": []})
            entry["pcc"].append(float(np.nanmean(pcc)))
            entry["pcc_signal"].append(float(np.nanmean(pcc[signal])) if signal.any() else None)
            entry["pcc_vs_expected"].append(float(np.nanmean(pcc_gap(log_expected, pred, gap, log=False))))
            entry["seconds_per_portion"].append(seconds / n)
            result["per_portion"].setdefault(name, []).append(np.nan_to_num(pcc, nan=0.0).tolist())
    lin = np.array(result["methods"]["linear"]["pcc"])
    ceiling = np.array(result["ceiling"])
    result["headroom"] = {name: ((np.array(m["pcc"]) - lin) / (ceiling - lin)).tolist()
                          for name, m in result["methods"].items()}
    return result


def whole_array_gap(size: int, width: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """The cross gap of the whole-array protocol in a ``size``^3 array:
    `bcdi_gapfill.core.geometry.central_cross_gap` (mask, [first column, first row])."""
    return central_cross_gap((size,) * 3, width, seed)


def peak_cross_gap(shape: tuple[int, int, int], width: int, peak: tuple[int, ...], offset: int) -> np.ndarray:
    """A cross gap whose two bands are centred ``offset`` pixels from the Bragg peak.

    Parameters
    ----------
    shape : 3 ints
        (frames, rows, columns) of the array.
    width : int
        Width of both bands, pixels.
    peak : 3 ints
        (frame, row, column) of the peak's maximum.
    offset : int
        Distance of each band's centre from the peak along its detector axis (rows for the
        horizontal band, columns for the vertical one); 0 puts the peak inside the cross.
    """

    row0 = int(np.clip(peak[1] + offset - width // 2, 0, shape[1] - width))
    col0 = int(np.clip(peak[2] + offset - width // 2, 0, shape[2] - width))
    return synthetic_gap_mask(shape, "cross", width, position=col0, position2=row0)


def _peak_cross_rows(models: dict[str, Any], simulator: str, name: str, truth: np.ndarray, expected: np.ndarray,
                     widths: tuple[int, ...], offsets: tuple[int, ...], stride: int | None,
                     extra: dict[str, Any]) -> list[dict[str, Any]]:

    peak = tuple(int(i) for i in np.unravel_index(int(np.argmax(expected)), expected.shape))
    rows = []
    for width in widths:
        for offset in offsets:
            gap = peak_cross_gap(truth.shape, width, peak, offset)
            counts = np.where(gap, 0, truth).astype(np.float32)   # what the detector gives
            hidden = float(truth[gap].sum())
            row: dict[str, Any] = {"simulator": simulator, "array": name, "width": width, "offset": offset,
                                   "peak": list(peak), "hidden_photons": hidden, **extra}
            for method, model in (("linear", None), ("biharmonic", None), *models.items()):
                t0 = time.perf_counter()
                if model is None:
                    filled = inpaint(counts, gap, method=method)
                else:
                    filled = inpaint(counts, gap, model=model, stride=stride)
                row[f"{method}_seconds"] = time.perf_counter() - t0
                row[f"{method}_error"] = 1.0 - float(pcc_gap(expected, filled, gap))
                row[f"{method}_photon_ratio"] = float(filled[gap].sum()) / hidden if hidden > 0 else float("nan")
            for method in ("linear", *models):
                # Share of the log-biharmonic fill's error that the method removes (< 0: adds).
                row[f"{method}_error_reduction"] = 1.0 - row[f"{method}_error"] / row["biharmonic_error"]
            rows.append(row)
    return rows


def peak_cross_table(models: dict[str, Any], *, n_arrays: int = 5, n_scans: int = 5, size: int = 128,
                     widths: tuple[int, ...] = WIDTHS, offsets: tuple[int, ...] = NEAR_PEAK_OFFSETS,
                     stride: int | None = None, first_seed: int = PEAK_FIRST_SEED,
                     first_scan_seed: int = CDIUTILS_PEAK_FIRST_SEED) -> dict[str, Any]:
    """Fill quality against the gap's distance from the Bragg peak, on both simulators.

    Held-out crystals of :func:`bcdi_gapfill.core.simulate.simulate_pattern` (``n_arrays``, seeds
    ``first_seed``..., by default :data:`PEAK_FIRST_SEED`...) and of cdiutils' simulator
    (``n_scans``, :func:`bcdi_gapfill.validation.scans.simulate_cdiutils_scan`, seeds from
    ``first_scan_seed``, by default :data:`CDIUTILS_PEAK_FIRST_SEED`; skipped with a note when
    cdiutils is missing), each
    ``size``^3, get a cross gap of each width centred ``offset`` pixels from the peak. The
    detector's counts are the Poisson truth with the gap zeroed.

    Each row holds, per method (linear, biharmonic and each model): ``error`` = 1 - log1p PCC
    over the gap voxels against the noise-free pattern; ``photon_ratio`` = photons the fill
    puts in the gap over those the gap hid (the Poisson truth's); ``error_reduction`` = the
    share of the log-biharmonic fill's error the method removes; ``seconds``.
    ``per_cell`` averages them per (simulator, width, offset).
    """

    table: dict[str, Any] = {"size": size, "widths": list(widths), "offsets": list(offsets), "stride": stride,
                             "rows": [], "notes": []}
    for i in range(n_arrays):
        seed = first_seed + i
        pattern = simulate_pattern(size, seed)
        extra = {"seed": seed, "oversampling": float(np.mean(pattern.metadata["oversampling"]))}
        table["rows"] += _peak_cross_rows(models, "bcdi_gapfill", f"sim{seed}", pattern.counts, pattern.expected,
                                          tuple(widths), tuple(offsets), stride, extra)
    if n_scans:
        try:
            for i in range(n_scans):
                scan = simulate_cdiutils_scan(first_scan_seed + i, (size,) * 3)
                table["rows"] += _peak_cross_rows(models, "cdiutils", scan.name, scan.truth, scan.expected,
                                                  tuple(widths), tuple(offsets), stride,
                                                  {"seed": first_scan_seed + i})
        except ImportError as exc:
            table["notes"].append(f"cdiutils scans skipped: {exc}")
    methods = ["linear", "biharmonic", *models]
    cells = {}
    for row in table["rows"]:
        cells.setdefault((row["simulator"], row["width"], row["offset"]), []).append(row)
    table["per_cell"] = [
        {"simulator": sim, "width": w, "offset": off, "n": len(group),
         **{f"{m}_{k}": float(np.mean([r[f"{m}_{k}"] for r in group]))
            for m in methods for k in ("error", "photon_ratio", "seconds")},
         **{f"{m}_error_reduction": float(np.mean([r[f"{m}_error_reduction"] for r in group]))
            for m in ("linear", *models)},
         **{f"{m}_above_biharmonic": int(sum(r[f"{m}_error"] < r["biharmonic_error"] for r in group))
            for m in models}}
        for (sim, w, off), group in sorted(cells.items())]
    return table


def format_peak_cross_table(table: dict[str, Any], model: str = "model") -> str:
    """Markdown of :func:`peak_cross_table`'s ``per_cell``: errors, the model's error
    reduction and how many arrays it is above the biharmonic fill on, photon ratios."""
    lines = ["| simulator | width | offset | n | error linear / biharmonic / model | model error reduction "
             "| model above biharmonic | photon ratio linear / biharmonic / model |",
             "|---|---|---|---|---|---|---|---|"]
    for c in table["per_cell"]:
        lines.append(
            f"| {c['simulator']} | {c['width']} | {c['offset']} | {c['n']} | {c['linear_error']:.4f} / "
            f"{c['biharmonic_error']:.4f} / {c[f'{model}_error']:.4f} | {c[f'{model}_error_reduction']:+.3f} | "
            f"{c[f'{model}_above_biharmonic']}/{c['n']} | {c['linear_photon_ratio']:.3f} / "
            f"{c['biharmonic_photon_ratio']:.3f} / {c[f'{model}_photon_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def whole_array_table(models: dict[str, Any], n_arrays: int = 4, size: int = 128,
                      widths: tuple[int, ...] | int = WIDTHS, first_seed: int = ARRAY_FIRST_SEED,
                      stride: int | None = None) -> tuple[dict, dict]:
    """PCC over every gap voxel of whole arrays with a cross gap near the peak, and timings.

    For each width, ``n_arrays`` simulated patterns (seeds ``first_seed``...; the same seeds
    at every width) get a cross gap of that width within 8 pixels of the centre on each
    detector axis. Returns the table (``rows``: one per (width, array); ``per_width``: mean
    PCC and headroom of each method) and, for the first array of the first width, the slices
    of the in-gap figure.
    """

    widths = (widths,) if isinstance(widths, int) else tuple(widths)
    table: dict[str, Any] = {"widths": list(widths), "size": size, "stride": stride, "rows": []}
    slices: dict[str, np.ndarray] = {}
    for i in range(n_arrays):
        seed = first_seed + i
        pattern = simulate_pattern(size, seed)
        for width in widths:
            gap, pos = whole_array_gap(size, width, seed)
            row: dict[str, Any] = {"seed": seed, "width": width,
                                   "oversampling": float(np.mean(pattern.metadata["oversampling"])),
                                   "peak_counts": pattern.metadata["peak_counts"],
                                   "ceiling": float(pcc_gap(pattern.counts, pattern.expected, gap))}
            fills = {}
            for method in ("linear", "biharmonic"):
                t0 = time.perf_counter()
                fills[method] = inpaint(pattern.counts, gap, method=method)
                row[f"{method}_seconds"] = time.perf_counter() - t0
            for name, model in models.items():
                t0 = time.perf_counter()
                fills[name] = inpaint(pattern.counts, gap, model=model, stride=stride)
                row[f"{name}_seconds"] = time.perf_counter() - t0
            for name, filled in fills.items():
                row[name] = float(pcc_gap(pattern.counts, filled, gap))
            lin = row["linear"]
            for name in fills:
                row[f"{name}_headroom"] = (row[name] - lin) / (row["ceiling"] - lin)
            table["rows"].append(row)
            if not slices:
                # The in-gap plane of the vertical band: frames x rows at its middle column.
                col = pos[0] + width // 2
                slices = {"truth": pattern.counts[:, :, col], "expected": pattern.expected[:, :, col],
                          **{k: v[:, :, col] for k, v in fills.items()},
                          "masked_frame": np.where(gap, np.nan, pattern.counts)[size // 2],
                          "width": width}
    methods = ["linear", "biharmonic", *models]
    table["per_width"] = {
        str(w): {m: {"pcc": float(np.mean([r[m] for r in table["rows"] if r["width"] == w])),
                     "headroom": float(np.mean([r[f"{m}_headroom"] for r in table["rows"] if r["width"] == w])),
                     "seconds": float(np.mean([r[f"{m}_seconds"] for r in table["rows"] if r["width"] == w]))}
                 for m in methods} for w in widths}
    return table, slices


def _figures(out: Path, portions: dict, slices: dict) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    names = []
    methods = [m for m in portions["methods"]]
    counts = np.array(portions["per_portion"]["mean_counts"])
    overs = np.array(portions["per_portion"]["oversampling"])
    for key, xs, label, fname, logx in (("counts", counts, "mean photon count in portion", "pcc_vs_counts.png", True),
                                        ("oversampling", overs, "oversampling ratio", "pcc_vs_oversampling.png", False)):
        fig, axes = plt.subplots(1, len(portions["widths"]), figsize=(4 * len(portions["widths"]), 3.4), sharey=True)
        edges = np.quantile(xs, np.linspace(0, 1, 7))
        centres = 0.5 * (edges[1:] + edges[:-1])
        for ax, (w_i, width) in zip(np.atleast_1d(axes), enumerate(portions["widths"])):
            for name in methods:
                pcc = np.array(portions["per_portion"][name][w_i])
                means = [pcc[(xs >= a) & (xs <= b)].mean() if ((xs >= a) & (xs <= b)).any() else np.nan
                         for a, b in zip(edges[:-1], edges[1:])]
                ax.plot(centres, means, "o-", label=name)
            ax.set_title(f"gap {width} px")
            ax.set_xlabel(label)
            if logx:
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
        np.atleast_1d(axes)[0].set_ylabel("in-gap PCC (log1p counts)")
        np.atleast_1d(axes)[-1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        names.append(fname)
    if slices:
        panels = [k for k in ("truth", "expected", "model", "biharmonic", "linear") if k in slices]
        fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.3 * (len(panels) + 1), 3.4))
        vmax = float(np.nanmax(slices["truth"])) or 1.0
        norm = LogNorm(vmin=0.5, vmax=max(vmax, 1.0))
        axes[0].imshow(slices["masked_frame"] + 0.5, norm=norm, cmap="turbo")
        axes[0].set_title("central frame, gap masked")
        for ax, name in zip(axes[1:], panels):
            im = ax.imshow(slices[name] + 0.5, norm=norm, cmap="turbo", aspect="auto")
            ax.set_title(f"in-gap plane ({slices['width']}-px gap): {name}")
            ax.set_xlabel("row")
            ax.set_ylabel("frame")
        fig.colorbar(im, ax=axes, shrink=0.8, label="counts + 0.5")
        fig.savefig(out / "ingap_slices.png", dpi=110)
        plt.close(fig)
        names.append("ingap_slices.png")
    return names


def _markdown(portions: dict, arrays: dict | None) -> str:
    widths = portions["widths"]
    lines = [f"## Held-out portions ({portions['n_portions']} portions of 32^3, vertical gap in the middle)", "",
             "In-gap PCC of log1p counts against the noisy truth (paper's Table 1 protocol); "
             "headroom = share of the way from linear interpolation to the Poisson ceiling.", "",
             "| method | " + " | ".join(f"PCC w={w}" for w in widths) + " | " +
             " | ".join(f"headroom w={w}" for w in widths) + " | ms/portion |",
             "|---|" + "---|" * (2 * len(widths) + 1)]
    for name, m in portions["methods"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in m["pcc"]) + " | " +
                     " | ".join(f"{v:.2f}" for v in portions["headroom"][name]) +
                     f" | {1000 * np.mean(m['seconds_per_portion']):.1f} |")
    lines.append("| Poisson ceiling | " + " | ".join(f"{v:.3f}" for v in portions["ceiling"]) + " |" +
                 " |" * (len(widths) + 1))
    lines += ["", f"Signal-dominated portions only (Poisson ceiling >= {SIGNAL_CEILING}; "
                  f"{', '.join(str(n) for n in portions['n_signal'])} portions for widths "
                  f"{', '.join(str(w) for w in widths)}): closest to the paper's experimental portions.", "",
              "| method | " + " | ".join(f"PCC w={w}" for w in widths) + " |", "|---|" + "---|" * len(widths)]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for name, m in portions["methods"].items():
        lines.append(f"| {name} | " + " | ".join(fmt(v) for v in m["pcc_signal"]) + " |")
    lines.append("| Poisson ceiling | " + " | ".join(fmt(v) for v in portions["ceiling_signal"]) + " |")
    lines.append("| paper (Table 1, experimental portions) | 0.989 | 0.977 | 0.955 | 0.946 |")

    if arrays:
        methods = [k[:-8] for k in arrays["rows"][0] if k.endswith("_seconds")]
        stride = arrays["stride"] or "default"
        lines += ["", f"## Whole arrays ({arrays['size']}^3, cross gap near the peak, model stride {stride})", "",
                  "In-gap PCC of log1p counts over every gap voxel against the noisy truth; mean over "
                  "the arrays of each width (headroom in brackets, then seconds per array).", "",
                  "| width | " + " | ".join(f"{m} PCC (headroom, s)" for m in methods) + " |",
                  "|---|" + "---|" * len(methods)]
        for w, per in arrays["per_width"].items():
            lines.append(f"| {w} | " + " | ".join(
                f"{per[m]['pcc']:.4f} ({per[m]['headroom']:.2f}, {per[m]['seconds']:.1f})" for m in methods) + " |")
        lines.append("| mean headroom | " + " | ".join(
            f"{np.mean([per[m]['headroom'] for per in arrays['per_width'].values()]):.2f}" for m in methods) + " |")
        lines += ["", "| seed | width | oversampling | peak counts | ceiling | " + " | ".join(
                      f"{m} PCC (headroom)" for m in methods) + " |",
                  "|---|---|---|---|---|" + "---|" * len(methods)]
        for row in arrays["rows"]:
            lines.append(f"| {row['seed']} | {row['width']} | {row['oversampling']:.2f} | {row['peak_counts']:.3g} | "
                         f"{row['ceiling']:.4f} | " + " | ".join(
                             f"{row[m]:.4f} ({row[m + '_headroom']:.2f})" for m in methods) + " |")
    return "\n".join(lines) + "\n"


def run_evaluation(out_dir: str | Path, *, n_portions: int = 1000, n_arrays: int = 4, weights=None,
                   paper_weights=None, overwrite: bool = False, cache_dir: str | None = "runs/cache",
                   n_test_patterns: int = 100, array_widths: tuple[int, ...] = WIDTHS,
                   stride: int | None = None, num_threads: int | None = None, n_scans: int = 3,
                   n_peak_arrays: int = 5, n_peak_scans: int = 5, size: int = 128) -> dict:
    """Run the whole evaluation and write its table, JSON and figures into ``out_dir``.

    ``n_peak_arrays`` crystals of our simulator and ``n_peak_scans`` of cdiutils' give the
    peak-position protocol (:func:`peak_cross_table`): cross gaps through or near the Bragg
    peak (:data:`NEAR_PEAK_OFFSETS`) and off it (:data:`OFF_PEAK_OFFSETS`), with the photon
    ratio and the error reduction against the log-biharmonic fill; 0 and 0 skip it. ``size``
    is the edge of every simulated array (128: the protocol's; smaller only for tests).

    ``n_scans`` cdiutils-simulated Maxipix scans (`bcdi_gapfill.validation.scans`; data the training
    never saw, from another simulator, in the detector frame, with the real chip cross) are
    added when cdiutils is installed. ``num_threads`` sets torch's CPU threads for the run (1 is much faster than 2 on a CPU
    shared with other jobs; see docs/benchmarks.md); ``stride`` is the model's window stride
    on whole arrays (None: `inpaint`'s default).
    """
    if num_threads:
        import torch
        torch.set_num_threads(num_threads)
    from bcdi_gapfill.nn.dataset import cached_portion_bank

    out = Path(out_dir)
    if out.exists() and (out / "evaluation.json").exists() and not overwrite:
        raise FileExistsError(f"{out}/evaluation.json exists; pass overwrite=True (--overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    model, info = load_model(weights, "cpu")
    models = {"model": model}
    if paper_weights:
        models["paper_model"] = load_model(paper_weights, "cpu")[0]
    bank = cached_portion_bank(n_test_patterns, TEST_FIRST_SEED, size, cache_dir)
    portions = portion_table(bank, models, n_portions=n_portions)
    arrays, slices = whole_array_table(models, n_arrays=n_arrays, size=size, widths=array_widths, stride=stride) \
        if n_arrays else (None, {})
    scans = None
    if n_scans:
        try:
            scan_set = cdiutils_scan_set(n_scans, 0)
        except ImportError as exc:
            print(f"cdiutils scans skipped: {exc}")
        else:
            scans = scan_table(models, scan_set, stride=stride)
    peak = {}
    if n_peak_arrays or n_peak_scans:
        for name, offsets in (("near_peak", NEAR_PEAK_OFFSETS), ("off_peak", OFF_PEAK_OFFSETS)):
            peak[name] = peak_cross_table(models, n_arrays=n_peak_arrays, n_scans=n_peak_scans, size=size,
                                          widths=array_widths, offsets=offsets, stride=stride)
    figures = _figures(out, portions, slices)
    summary = {"model": {k: info.get(k) for k in ("weights", "sha256")}, "portions": portions,
               "whole_arrays": arrays, "cdiutils_scans": scans, "peak_position": peak or None,
               "figures": figures}
    atomic_write_text(out / "evaluation.json", json.dumps(summary, indent=1), overwrite=True)
    markdown = _markdown(portions, arrays)
    if scans is not None:
        markdown += ("\n## cdiutils-simulated Maxipix scans (detector frame, real chip cross near the peak)\n\n"
                     "In-gap PCC of log1p counts against the noisy truth (headroom, seconds); another simulator "
                     "than training's.\n\n" + format_scan_table(scans))
    for name, table in peak.items():
        markdown += (f"\n## {name.replace('_', '-')}: cross centred {table['offsets']} px from the Bragg peak\n\n"
                     "Error = 1 - log1p PCC over the gap against the noise-free pattern; error reduction = the "
                     "share of the log-biharmonic fill's error removed; photon ratio = photons filled in the gap "
                     "over those it hid.\n\n" + format_peak_cross_table(table) + "".join(
                         f"\n{note}\n" for note in table["notes"]))
    atomic_write_text(out / "evaluation.md", markdown, overwrite=True)
    print(markdown)
    return summary
