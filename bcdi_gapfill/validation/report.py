"""The validation report: its HTML page, figures and tables, the one-sentence verdict, and
the atomic writing of the report's files.

`validate` (`bcdi_gapfill.validation.core`) and the workflow pipeline produce the report
dict; this module renders it and never changes a figure.
"""
from __future__ import annotations

import base64
import html
import io as _io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from bcdi_gapfill.core.io import atomic_write_text, json_safe
from bcdi_gapfill.core.methods import TREATMENT_COLORS, TREATMENT_LABELS, TREATMENTS
from bcdi_gapfill.fill.calibration import reliability_figure

__all__ = ["FigureData", "figure_planes", "real_space_crop", "verdict", "write_report", "finite_or_inf"]

#: The treatments of the report, in its order.
METHODS = TREATMENTS


@dataclass
class FigureData:
    """2D slices kept by :func:`validate` for the HTML figures (never written to JSON).

    Attributes
    ----------
    recip : dict
        ``planes``: list of ``(title, axis, index, xlabel, ylabel)``; ``truth`` and
        ``masked``: list of 2D intensity slices (one per plane, masked voxels NaN);
        ``gap``: list of 2D gap masks; ``methods``: ``{mode: {name: [slices]}}`` of the
        intensity each method puts in the gap (for free_pixels in pr mode, the intensity of
        the reconstruction).
    real : dict
        ``{mode: {name: {"modulus", "phase", "strain"}}}`` central slices of the aligned
        reconstructions, plus ``"truth"`` under each mode; ``extent`` (nm, for imshow),
        ``axes`` (x and y labels), ``plane`` (description of the slice).
    uncertainty : dict
        With ``hybrid``: ``planes`` (as ``recip``), ``uncertainty`` and ``abs_error`` (2D
        slices of the model's uncertainty and of ``|log1p(fill) - log1p(truth)|``, NaN off the
        gap) and ``freed`` (2D masks of the voxels hybrid leaves free).
    """

    recip: dict = field(default_factory=dict)
    real: dict = field(default_factory=dict)
    uncertainty: dict = field(default_factory=dict)


def figure_planes(gap: np.ndarray) -> list[tuple[str, int, int, str, str]]:
    """Reciprocal-space slices for the figures: the central frame and a plane in the gap."""
    nf, nr, nc = gap.shape
    planes = [("central frame", 0, nf // 2, "detector column (px)", "detector row (px)")]
    full_cols = np.flatnonzero(gap.all(axis=(0, 1)))
    full_rows = np.flatnonzero(gap.all(axis=(0, 2)))
    if full_cols.size:
        c = int(full_cols[np.argmin(np.abs(full_cols - nc // 2))])
        planes.append((f"in-gap plane, column {c}", 2, c, "detector row (px)", "frame"))
    elif full_rows.size:
        r = int(full_rows[np.argmin(np.abs(full_rows - nr // 2))])
        planes.append((f"in-gap plane, row {r}", 1, r, "detector column (px)", "frame"))
    elif gap.any():
        idx = np.argwhere(gap)
        centre = np.array(gap.shape) // 2
        c = int(idx[np.argmin(np.abs(idx - centre).sum(axis=1))][2])
        planes.append((f"plane through the gap, column {c}", 2, c, "detector row (px)", "frame"))
    return planes


def _take(a: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(a, index, axis=axis)


def real_space_crop(support: np.ndarray) -> tuple[slice, slice]:
    """Rows/columns window of the central-frame real-space slice: the particle plus margin."""
    proj = support.any(axis=0)
    out = []
    for ax in (0, 1):
        idx = np.flatnonzero(proj.any(axis=1 - ax))
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        margin = max(6, (hi - lo) // 2)
        out.append(slice(max(0, lo - margin), min(proj.shape[ax], hi + margin)))
    return out[0], out[1]


def _png(fig: Any) -> str:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v: Any, key: str = "") -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, float):
        if key in ("strain_rmse", "mean_strain", "mean_strain_true", "strain_std"):
            return f"{v * 1e4:.3f}"
        if key == "spurious_modulus":
            return f"{v * 100:.3f}"
        if key in ("fill_time_s", "phasing_time_s"):
            return f"{v:.2f}"
        return f"{v:.4g}"
    return html.escape(str(v))


_TABLE_COLUMNS = [
    ("strain_rmse", "strain RMSE (10<sup>&minus;4</sup>)", "low"),
    ("mean_strain", "mean strain (10<sup>&minus;4</sup>)", "zero"),
    ("strain_std", "strain std (10<sup>&minus;4</sup>)", "low"),
    ("phase_std", "phase std (rad)", "low"),
    ("spurious_modulus", "spurious modulus (%)", "low"),
    ("overlap", "overlap", "high"),
    ("pcc_gap", "PCC in gap (log)", "high"),
    ("gap_intensity_ratio", "gap photons / truth", "one"),
    ("freed_voxels", "freed voxels", None),
    ("llk_measured", "LLK (measured voxels)", "low"),
    ("pcc_gap_reconstructed", "PCC in gap, recon. (log)", "high"),
    ("fill_time_s", "fill time (s)", None),
    ("phasing_time_s", "PR time (s)", None),
]


def _table(results: Mapping[str, Mapping[str, Any]]) -> str:
    cols = [c for c in _TABLE_COLUMNS if any(c[0] in r for r in results.values())]
    best: dict[str, str] = {}
    contenders = {n: r for n, r in results.items() if n != "no_gap"}
    for key, _, rule in cols:
        vals = {n: r.get(key) for n, r in contenders.items() if isinstance(r.get(key), (int, float))}
        if rule and len(vals) > 1:
            score = {"low": lambda v: v, "high": lambda v: -v, "zero": abs, "one": lambda v: abs(v - 1)}[rule]
            best[key] = min(vals, key=lambda n: score(vals[n]))
    head = "".join(f"<th>{label}</th>" for _, label, _ in cols)
    rows = []
    for name, r in results.items():
        cells = []
        for key, _, _ in cols:
            txt = _fmt(r.get(key), key)
            cells.append(f"<td class='best'>{txt}</td>" if best.get(key) == name else f"<td>{txt}</td>")
        cls = " class='ref'" if name == "no_gap" else ""
        rows.append(f"<tr{cls}><th>{html.escape(TREATMENT_LABELS.get(name, name))}</th>{''.join(cells)}</tr>")
    return (f"<table><thead><tr><th>method</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            "<p class='cap'>Bold: best among the gap treatments (no_gap is the reference). Strain values "
            "are dimensionless strain along G &times;10<sup>4</sup>; spurious modulus is the share of "
            "|&rho;|<sup>2</sup> outside the 1-voxel-dilated true support.</p>")


def _recip_figure(recip: Mapping[str, Any], mode: str) -> Any:
    import matplotlib
    from matplotlib import colors
    from matplotlib.figure import Figure

    planes = recip["planes"]
    items = [("truth (no gap)", recip["truth"]), ("masked", recip["masked"])]
    for name, sl in recip["methods"].get(mode, {}).items():
        if name == "no_gap":
            continue
        label = TREATMENT_LABELS.get(name, name) + {"free_pixels": " (PR intensity)",
                                           "inpaint+release": " (PR intensity)",
                                           "hybrid": " (PR on freed)"}.get(name, "")
        items.append((label, sl))
    ncol, nrow = len(items), len(planes)
    fig = Figure(figsize=(2.3 * ncol + 0.8, 2.5 * nrow + 0.4))
    axs = fig.subplots(nrow, ncol, squeeze=False)
    vmax = math.log10(1 + float(np.nanmax(recip["truth"][0])))
    cmap = matplotlib.colormaps["turbo"].with_extremes(bad="0.75")
    im = None
    for j, (label, slices) in enumerate(items):
        for i, (ptitle, _, _, xl, yl) in enumerate(planes):
            ax = axs[i, j]
            data = np.log10(1 + np.clip(slices[i], 0, None))
            im = ax.imshow(data, cmap=cmap, norm=colors.Normalize(0, vmax), origin="upper",
                           interpolation="nearest", aspect="auto")
            g = recip["gap"][i]
            if j >= 2 and g.any() and not g.all():
                ax.contour(g.astype(float), levels=[0.5], colors="w", linewidths=0.6, linestyles="--")
            if i == 0:
                ax.set_title(label, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{ptitle}\n{yl}", fontsize=8)
            ax.set_xlabel(xl, fontsize=7)
            ax.tick_params(labelsize=6)
    cb = fig.colorbar(im, ax=axs, shrink=0.85, pad=0.01)
    cb.set_label("log$_{10}$(1 + photons)")
    return fig


def _real_figure(real: Mapping[str, Any], mode: str) -> Any:
    import matplotlib
    from matplotlib import colors
    from matplotlib.figure import Figure

    sets = [("ground truth", real["truth"])] + [
        (TREATMENT_LABELS.get(n, n), sl) for n, sl in real["modes"].get(mode, {}).items()]
    sup = real["support"]
    modmax = float(np.max(real["truth"]["modulus"])) or 1.0

    def inside(a: np.ndarray) -> np.ndarray:
        return np.where(sup, a, np.nan)

    def sym_lim(key: str, floor: float) -> float:
        vals = [np.abs(inside(s[key]) - (np.nanmean(inside(s[key])) if key == "phase" else 0))
                for _, s in sets]
        vals = np.concatenate([v[np.isfinite(v)] for v in vals]) if vals else np.array([floor])
        # 97th percentile: a few surface voxels of a poor reconstruction (phase-unwrapping
        # failures where the modulus vanishes) must not wash out every other panel.
        return max(floor, float(np.percentile(vals, 97)) if vals.size else floor)

    plim = sym_lim("phase", 0.02)
    slim = sym_lim("strain", 1e-5)
    ncol = len(sets)
    fig = Figure(figsize=(1.9 * ncol + 1.3, 6.9), layout="constrained")
    axs = fig.subplots(3, ncol, squeeze=False, sharex=True, sharey=True)
    ext = real["extent"]
    xl, yl = real["axes"]
    rows = [("modulus", "gray", colors.PowerNorm(0.5, 0, 1),
             "|$\\rho$| / max|$\\rho_{true}$|\n(square-root scale)"),
            ("phase", "RdBu_r", colors.Normalize(-plim, plim), "phase (rad)"),
            ("strain", "coolwarm", colors.Normalize(-slim * 1e4, slim * 1e4), "strain along G ($10^{-4}$)")]
    for i, (key, cmap_name, norm, cblabel) in enumerate(rows):
        cmap = matplotlib.colormaps[cmap_name].with_extremes(bad="0.85")
        im = None
        for j, (label, s) in enumerate(sets):
            if key == "modulus":
                data = s["modulus"] / modmax
            elif key == "phase":
                data = inside(s["phase"]) - np.nanmean(inside(s["phase"]))
            else:
                data = inside(s["strain"]) * 1e4
            ax = axs[i, j]
            im = ax.imshow(data, cmap=cmap, norm=norm, extent=ext, interpolation="nearest")
            ax.contour(sup.astype(float), levels=[0.5], colors="k" if key != "modulus" else "y",
                       linewidths=0.5, extent=[ext[0], ext[1], ext[3], ext[2]], origin="upper")
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(label, fontsize=9)
            if i == 2:
                ax.set_xlabel(xl, fontsize=8)
            if j == 0:
                ax.set_ylabel(yl, fontsize=8)
        cb = fig.colorbar(im, ax=axs[i, :], shrink=0.9, pad=0.01, aspect=15)
        cb.set_label(cblabel, fontsize=8)
        cb.ax.tick_params(labelsize=7)
    return fig


def _sweep_figure(sweep: Mapping[str, Any], mode: str) -> Any:
    from matplotlib.figure import Figure

    data = sweep["by_mode"][mode]
    widths = np.asarray(sweep["widths"], float)
    fig = Figure(figsize=(11, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    markers = dict(zip(METHODS, "os^vDx<>ph"))
    n = max(len(data), 1)
    span = float(np.ptp(widths)) if widths.size > 1 else 1.0
    for k, (name, vals) in enumerate(data.items()):
        def arr(key: str) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in vals.get(key, [])], float)

        rm, ms, sd = arr("strain_rmse"), arr("mean_strain"), arr("strain_std")
        lab = TREATMENT_LABELS.get(name, name)
        ls = ":" if name == "no_gap" else "-"
        col = TREATMENT_COLORS.get(name)
        ax1.plot(widths, rm * 1e4, ls, marker=markers.get(name, "o"), color=col, label=lab)
        off = (k - (n - 1) / 2) * 0.012 * span  # keep the error bars apart
        ax2.errorbar(widths + off, ms * 1e4, yerr=sd * 1e4, ls=ls, marker=markers.get(name, "o"),
                     color=col, capsize=3, label=lab)
    ax1.set_xlabel("gap width (pixels)")
    ax1.set_ylabel("strain RMSE ($10^{-4}$)")
    ax1.set_title(f"strain RMSE vs gap width ({mode}; Supp. Fig. 18)", fontsize=10)
    ax2.axhline(0, color="k", lw=0.6)
    ax2.set_xlabel("gap width (pixels)")
    ax2.set_ylabel("mean strain ($10^{-4}$), bars: std")
    ax2.set_title(f"mean strain vs gap width ({mode}; Supp. Fig. 17)", fontsize=10)
    for ax in (ax1, ax2):
        ax.set_xticks(widths)
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    return fig


def _uncertainty_figure(unc: Mapping[str, Any]) -> Any:
    import matplotlib
    from matplotlib import colors
    from matplotlib.figure import Figure

    planes = unc["planes"]
    fig = Figure(figsize=(10, 3.2 * len(planes) + 0.4), layout="constrained")
    axs = fig.subplots(len(planes), 2, squeeze=False)
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="0.85")
    for j, (key, label) in enumerate((("uncertainty", "predicted uncertainty"),
                                      ("abs_error", "actual |error| (noisy truth)"))):
        values = np.concatenate([a[np.isfinite(a)] for a in unc[key]])
        # Own scale per column (the error also holds the Poisson noise, far larger); the 99th
        # percentile keeps a few extreme voxels from washing out the rest.
        top = float(np.percentile(values, 99)) if values.size else 1.0
        norm = colors.Normalize(0, top if top > 0 else 1.0)
        im = None
        for i, (ptitle, _, _, xl, yl) in enumerate(planes):
            ax = axs[i, j]
            im = ax.imshow(unc[key][i], cmap=cmap, norm=norm, interpolation="nearest", aspect="auto")
            freed = unc["freed"][i]
            if freed.any():
                ax.contour(freed.astype(float), levels=[0.5], colors="c", linewidths=0.6)
            ax.set_title(f"{label}, {ptitle}", fontsize=9)
            ax.set_xlabel(xl, fontsize=7)
            ax.set_ylabel(yl, fontsize=7)
            ax.tick_params(labelsize=6)
        cb = fig.colorbar(im, ax=axs[:, j], shrink=0.85, pad=0.01)
        cb.set_label(f"{label} (log1p counts)", fontsize=8)
    return fig


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1180px;margin:1.5em auto;
color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}sup{white-space:nowrap}
thead th{background:#f0f0f0;text-align:center}
tbody th{text-align:left;background:#fafafa}td.best{font-weight:bold;background:#e8f4e8}
tr.ref td,tr.ref th{color:#666;font-style:italic}
img{max-width:100%;display:block;margin:.5em 0}.cap{font-size:.85em;color:#555;margin-top:0}
.kv td{text-align:left;font-family:monospace;font-size:.95em}.kv th{text-align:left}
.warn{color:#a40}
"""


def _offset_text(settings: Mapping[str, Any]) -> str:
    off = settings.get("gap_offset_px")
    if not off or not any(off):
        return ""
    return f", offset ({off[0]}, {off[1]}) px (rows, columns) from the peak"


def finite_or_inf(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.inf


def _selfcheck_html(check: Mapping[str, Any]) -> str:
    """The self-check's scores (no truth used) beside the truth's pick."""
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{check['scores'][name]['deviance']:.3f}</td>"
        f"<td>{check['scores'][name]['spread']:.3f}</td><td>{check['scores'][name]['pcc_log']:.3f}</td></tr>"
        for name in check["ranking"])
    agree = ("agrees with" if check.get("agrees_with_truth") else "differs from") + \
        f" the truth's pick ({html.escape(str(check.get('truth_best')))}, lowest strain RMSE above)"
    return (f"<h2>Self-check (no truth used)</h2><p class='cap'>{html.escape(check['summary'])} It {agree}. "
            + ("Measured bands withheld beside the gap (free in every run), each treatment applied to the gap, "
               if check.get("settings", {}).get("hidden", "free") == "free" else
               "Measured bands hidden beside the gap, each treatment applied to gap and bands, ") +
            "phased; "
            "Poisson deviance per hidden voxel (lower is better), its spread over bands and starts, and "
            "the log1p PCC of the hidden counts.</p><table><tr><th>treatment</th><th>deviance</th>"
            f"<th>spread</th><th>log PCC</th></tr>{rows}</table>")


def verdict(report: Mapping[str, Any]) -> str:
    """One sentence: which treatment gave the lowest strain RMSE against the truth, by how much.

    Read from ``report["methods"]`` (the primary mode); ``no_gap`` is the reference, not a
    contender.
    """
    methods = report["methods"]
    scored = {n: m["strain_rmse"] for n, m in methods.items()
              if n != "no_gap" and m.get("strain_rmse") is not None and math.isfinite(m["strain_rmse"])}
    if not scored:
        return "No treatment gave a finite strain error."
    ranked = sorted(scored, key=scored.get)
    best = ranked[0]
    text = f"{best} gave the lowest strain RMSE ({scored[best]:.2g})"
    if len(ranked) > 1:
        second = ranked[1]
        ratio = scored[second] / scored[best] if scored[best] > 0 else math.inf
        text += f", {ratio:.2g}x below the next, {second} ({scored[second]:.2g})"
    reference = methods.get("no_gap", {}).get("strain_rmse")
    if reference is not None and math.isfinite(reference):
        text += f"; without the gap: {reference:.2g}"
    mode = "phase retrieval" if report.get("primary_mode") == "pr" else "the true phases (oracle)"
    return text + f" ({mode})."


def _render_html(report: Mapping[str, Any], figures: FigureData | None) -> str:
    s = report.get("settings", {})
    modes = list(report.get("results", {}) or {report.get("primary_mode", "oracle"): report["methods"]})
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>bcdi-gapfill validation report</title><style>{_CSS}</style></head><body>",
             "<h1>Real-space validation of detector-gap treatments</h1>",
             f"<p class='verdict'><b>{html.escape(verdict(report))}</b></p>",
             "<p class='cap'>bcdi-gapfill {v} &middot; {created} &middot; gap <b>{gap}</b>{off} "
             "({gv} voxels, {gf:.2%}) &middot; shape {shape} &middot; peak {peak} photons{noise} "
             "&middot; modes: {modes}</p>"
             .format(v=html.escape(str(s.get("versions", {}).get("bcdi_gapfill", "?"))),
                     created=html.escape(str(s.get("created_utc", ""))), gap=html.escape(str(s.get("gap"))),
                     off=_offset_text(s),
                     gv=s.get("gap_voxels", 0), gf=s.get("gap_fraction") or 0.0,
                     shape=" &times; ".join(str(x) for x in s.get("shape", [])),
                     peak=f"{s.get('peak_photons', 0):.3g}",
                     noise=" (noiseless)" if s.get("noiseless") else " (Poisson noise)",
                     modes=", ".join(modes))]
    skipped = s.get("skipped_methods") or {}
    if skipped:
        items = []
        for k, v in skipped.items():
            if isinstance(v, dict):
                items += [f"<li>{html.escape(n)} ({html.escape(k)} mode): {html.escape(str(r))}</li>"
                          for n, r in v.items()]
            else:
                items.append(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>")
        parts.append(f"<p class='warn'>Skipped:</p><ul class='warn'>{''.join(items)}</ul>")
    desc = {"oracle": "Oracle (paper &sect;2.6.1): inverse Fourier transform of each method's modulus "
                      "&radic;I with the <i>true</i> reciprocal-space phase.",
            "pr": "Phase retrieval (paper &sect;2.6.2): {algo}, {n} random starts from seed {sp}, identical "
                  "for every method; reconstructions aligned to the truth (twin, shift, global phase; the "
                  "phase ramp is kept since it is a uniform strain).".format(
                      algo=html.escape(str(s.get("algorithm"))), n=s.get("n_starts"), sp=s.get("seed_pr"))}
    fig_no = 1
    for m in modes:
        parts.append(f"<h2>Metrics &mdash; {html.escape(m)} mode</h2><p class='cap'>{desc.get(m, '')}</p>")
        parts.append(_table(report["results"][m] if "results" in report else report["methods"]))
    if report.get("selfcheck"):
        parts.append(_selfcheck_html(report["selfcheck"]))
    if figures is not None and figures.real:
        for m in modes:
            if m not in figures.real.get("modes", {}):
                continue
            fig = _real_figure(figures.real, m)
            parts.append(f"<h2>Figure {fig_no}. Reconstructed object, {html.escape(m)} mode</h2>")
            parts.append(f"<img alt='real-space slices {html.escape(m)}' "
                         f"src='data:image/png;base64,{_png(fig)}'>")
            parts.append(f"<p class='cap'>Central slices ({html.escape(figures.real['plane'])}) of "
                         "the modulus (top), phase (middle) and strain along G (bottom), cf. paper Figs. 7 "
                         "and 8. Phase and strain are shown inside the true support (contour) with colour "
                         "limits shared by all columns; the modulus, normalised to the truth's maximum, "
                         "uses a square-root scale so that the artefacts outside the particle are "
                         "visible.</p>")
            fig_no += 1
    if figures is not None and figures.recip:
        for m in modes:
            fig = _recip_figure(figures.recip, m)
            parts.append(f"<h2>Figure {fig_no}. Reciprocal space in the gap, {html.escape(m)} mode</h2>")
            parts.append(f"<img alt='reciprocal-space slices {html.escape(m)}' "
                         f"src='data:image/png;base64,{_png(fig)}'>")
            parts.append("<p class='cap'>Intensity slices (cf. paper Figs. 3, 4 and Supp. Fig. 15): the "
                         "noisy truth, the masked data (gap in grey) and the intensity each method puts in "
                         "the gap (gap outlined, dashed). Top: central frame; bottom: a plane inside the "
                         "gap. For free pixels (pr mode) the intensity is that of the reconstruction.</p>")
            fig_no += 1
    uncertainty = report.get("uncertainty")
    if uncertainty:

        rel = uncertainty["reliability"]
        rho = rel.get("spearman")
        fig = reliability_figure({"noisy truth": rel}, title="Reliability of the model's uncertainty (main gap)")
        parts.append(f"<h2>Figure {fig_no}. Uncertainty of the model and its reliability</h2>")
        parts.append(f"<img alt='reliability plot' src='data:image/png;base64,{_png(fig)}'>")
        parts.append("<p class='cap'>Gap voxels in {n} equal-count bins of the uncertainty predicted by the model "
                     "(weighted standard deviation of the overlapping windows and test-time flips, log1p "
                     "units): mean and RMS of the actual error of log1p(fill) against the noisy truth per bin. "
                     "Spearman rank correlation of |error| with the uncertainty over {v} voxels: {r}. The "
                     "error includes the Poisson noise of the truth, which no spread of predictions "
                     "foresees. Hybrid leaves the {q:.0%} least confident gap voxels free.</p>".format(
                         n=rel.get("n_bins"), v=rel.get("n_voxels"),
                         r="n/a" if rho is None else f"{rho:.3f}", q=uncertainty.get("hybrid_quantile") or 0.0))
        fig_no += 1
        if figures is not None and figures.uncertainty:
            fig = _uncertainty_figure(figures.uncertainty)
            parts.append(f"<h2>Figure {fig_no}. Uncertainty map in the gap</h2>")
            parts.append(f"<img alt='uncertainty map' src='data:image/png;base64,{_png(fig)}'>")
            parts.append("<p class='cap'>Predicted uncertainty (left) and actual |log1p error| against the "
                         "noisy truth (right) on the gap voxels of the planes of the reciprocal-space figure; "
                         "cyan contours: the voxels hybrid leaves free.</p>")
            fig_no += 1
    sweep = report.get("sweep")
    if sweep:
        for m in sweep.get("by_mode", {}):
            fig = _sweep_figure(sweep, m)
            parts.append(f"<h2>Figure {fig_no}. Gap-width sweep, {html.escape(m)} mode</h2>")
            parts.append(f"<img alt='gap width sweep {html.escape(m)}' "
                         f"src='data:image/png;base64,{_png(fig)}'>")
            parts.append(f"<p class='cap'>{html.escape(str(sweep.get('kind')))} gaps of widths "
                         f"{', '.join(str(w) for w in sweep['widths'])} pixels{_offset_text(s)}. "
                         "Left: RMS strain error inside the support; right: mean strain (the truth is "
                         "strain-free) with the strain standard deviation as error bars.</p>")
            fig_no += 1
    rows = []
    for k, v in s.items():
        if k in ("versions", "simulation", "model", "skipped_methods") and isinstance(v, dict):
            v = json.dumps(v, sort_keys=True)
        rows.append(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>")
    parts.append(f"<h2>Settings</h2><table class='kv'>{''.join(rows)}</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: Mapping[str, Any], out_dir: str | Path, *, figures: FigureData | None = None,
                 overwrite: bool = False) -> dict[str, Path]:
    """Write ``DIR/report.json`` and a self-contained ``DIR/report.html``.

    Parameters
    ----------
    report : dict
        The result of :func:`validate` (or a report loaded back from ``report.json``, which
        gives the tables and the sweep plots but no slices).
    out_dir : path
        Created if missing.
    figures : FigureData, optional
        Default ``report.figures``.
    overwrite : bool
        Replace existing ``DIR/report.*`` files; otherwise their presence raises
        FileExistsError before anything is written.

    Returns
    -------
    dict ``{"json": path, "html": path}``
    """

    if not isinstance(report, Mapping) or "methods" not in report or "settings" not in report:
        raise ValueError("report must be the dict returned by validate() (keys 'methods' and 'settings')")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    if not overwrite and out.is_dir():
        existing = sorted(p.name for p in out.glob("report.*"))
        if existing:
            raise FileExistsError(f"{out} already holds {', '.join(existing)}; "
                                  "pass overwrite=True to replace")
    figures = figures if figures is not None else getattr(report, "figures", None)
    text = json.dumps(json_safe(dict(report)), indent=2, allow_nan=False, sort_keys=False) + "\n"
    page = _render_html(report, figures)  # render before writing anything
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "html": out / "report.html"}
    atomic_write_text(paths["json"], text, overwrite=overwrite)
    atomic_write_text(paths["html"], page, overwrite=overwrite)
    return paths
