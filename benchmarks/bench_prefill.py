"""What the model corrects on whole arrays: each window's own prefill, or the whole array's fill.

The default network adds a learnt correction to a log-domain biharmonic fill of the gap (its
prefill). ``inpaint(..., prefill="window")`` computes that fill inside each 32^3 window, as in
training; ``prefill="global"`` (the default) solves it once over the whole array and crops it
to each window. This script measures both on whole simulated 128^3 arrays with a cross gap of
each width within 8 pixels of the centre on each detector axis (the evaluation's
`bcdi_gapfill.validation.evaluate.whole_array_table` protocol), beside the linear and log-biharmonic
fills. Scores over every gap voxel: in-gap PCC of log1p against the noisy counts (the
evaluation's metric) and its headroom (share of the way from linear interpolation to the
Poisson ceiling), and PCC against the simulator's noise-free expectation.

With ``--scans N`` the same four fills also run on the N cdiutils-simulated Maxipix scans of
the evaluation (`bcdi_gapfill.validation.scans.cdiutils_scan_set(N, 0)`: another simulator, the detector
frame, the real chip cross near the peak), scored against the scan's gap-free counts.

    .venv/bin/python benchmarks/bench_prefill.py [--seeds 300000 300001 300002 300003]
        [--widths 3 6 9 12] [--stride 16] [--threads 1] [--scans 3] [--flips] [--name prefill_test]

Seeds: the evaluation's whole-array seeds start at 300000 (never seen in training); the
choice of the default was made on validation seeds 100000-100004 (``--name prefill_val``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

METHODS = ("linear", "biharmonic", "model_window", "model_global")


def _score(counts, truth, expected, gap, model, stride: int, flips: bool = False) -> dict:
    """Every fill of METHODS on one array: in-gap PCC against the noisy truth and the
    noise-free expectation, headroom, seconds."""
    from bcdi_gapfill.fill.inpainting import inpaint
    from bcdi_gapfill.core.metrics import pcc_gap

    row = {"load1_before": C.machine()["loadavg"][0], "ceiling": float(pcc_gap(truth, expected, gap))}
    for method in METHODS:
        kw = ({"method": method} if not method.startswith("model") else
              {"model": model, "stride": stride, "prefill": method.split("_")[1], "flips": flips})
        t0 = time.perf_counter()
        filled = inpaint(counts, gap, **kw)
        row[f"{method}_seconds"] = time.perf_counter() - t0
        row[method] = float(pcc_gap(truth, filled, gap))
        row[f"{method}_noise_free"] = float(pcc_gap(expected, filled, gap))
    for method in METHODS:
        row[f"{method}_headroom"] = (row[method] - row["linear"]) / (row["ceiling"] - row["linear"])
    return row


def _summary(label: str, sel: list[dict]) -> dict:
    import numpy as np
    entry = {"case": label, "arrays": len(sel)}
    for m in METHODS:
        entry[m] = float(np.mean([r[f"{m}_headroom"] for r in sel]))
        entry[f"{m}_noise_free"] = float(np.mean([r[f"{m}_noise_free"] for r in sel]))
        entry[f"{m}_s"] = float(np.mean([r[f"{m}_seconds"] for r in sel]))
    entry["global_above_biharmonic"] = sum(r["model_global"] > r["biharmonic"] for r in sel)
    entry["window_above_biharmonic"] = sum(r["model_window"] > r["biharmonic"] for r in sel)
    return entry


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="*", default=[300000, 300001, 300002, 300003],
                    help="whole-array seeds (none: only the scans)")
    ap.add_argument("--widths", type=int, nargs="+", default=[3, 6, 9, 12])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--scans", type=int, default=0, help="cdiutils-simulated Maxipix scans (needs cdiutils)")
    ap.add_argument("--flips", action="store_true", help="the model fills with test-time flips (inpaint flips=True)")
    ap.add_argument("--name", default="prefill_test")
    opts = ap.parse_args(argv)

    import torch
    from bcdi_gapfill.validation.evaluate import whole_array_gap
    from bcdi_gapfill.fill.inpainting import load_model
    from bcdi_gapfill.core.simulate import simulate_pattern

    torch.set_num_threads(opts.threads)
    model, info = load_model(opts.weights, "cpu")
    rows = []
    for seed in opts.seeds:
        pattern = simulate_pattern(opts.size, seed)
        for width in opts.widths:
            gap, _ = whole_array_gap(opts.size, width, seed)
            row = {"seed": seed, "width": width,
                   **_score(pattern.counts, pattern.counts, pattern.expected, gap, model, opts.stride, opts.flips)}
            rows.append(row)
            print(f"seed {seed} width {width:2d}: " + "  ".join(
                f"{m} {row[m + '_headroom']:.3f} ({row[m + '_seconds']:.1f} s)" for m in METHODS), flush=True)

    per_width = [_summary(f"width {w}", [r for r in rows if r["width"] == w]) for w in opts.widths if rows]
    scan_rows = []
    if opts.scans:
        from bcdi_gapfill.validation.scans import cdiutils_scan_set
        for scan in cdiutils_scan_set(opts.scans, 0):
            row = {"scan": scan.name, **_score(scan.counts, scan.truth, scan.expected, scan.gap_mask, model,
                                                opts.stride, opts.flips)}
            scan_rows.append(row)
            print(f"{scan.name}: " + "  ".join(f"{m} {row[m + '_headroom']:.3f}" for m in METHODS), flush=True)
        per_width.append(_summary("cdiutils scans", scan_rows))
    columns = [("case", "case"), ("arrays", "arrays")] + [(m, f"headroom {m}") for m in METHODS] + [
        ("window_above_biharmonic", "window > biharmonic"), ("global_above_biharmonic", "global > biharmonic")] + [
        (f"{m}_noise_free", f"PCC noise-free {m}") for m in METHODS] + [(f"{m}_s", f"s {m}") for m in METHODS]
    text = C.table(per_width, columns)
    print(text)
    payload = {"machine": C.machine(), "options": vars(opts), "weights": info.get("weights"),
               "weights_sha256": info.get("sha256"), "rows": rows, "scan_rows": scan_rows, "per_width": per_width,
               "tables": {"per_width": text}}
    C.save(opts.name, payload)
    return payload


if __name__ == "__main__":
    main()
