"""Time, in-gap error and peak memory of the model at several strides, against the classical fills.

A simulated 128^3 pattern (``simulate_pattern(128, seed)``) with a centred 6-pixel cross gap
(``synthetic_gap_mask(shape, "cross", 6)``). For the model, stride s is the paper's skip
k = s - 1 (Supp. Figs 10, 12); linear and biharmonic (``inpaint(..., method=...)``) run in the
same job so that the ratios compare like with like.

Stride 1 (skip 0) at 128^3 means ~19 000 windows (several minutes on a 2-core CPU), so the
stride-1 reference is measured on the central 64^3 crop of the same pattern (the cross runs
through its centre), where every stride is also run: the "vs stride 1" column comes from
that crop (run at one thread unless ``--threads`` is given). At 128^3 the default strides
are 8, 16 and 30; ``--small-strides`` adds 2 and 4, ``--full-stride1`` adds 1.

Errors are on the gap voxels against the noisy simulated counts (the data the gap hid):
mean absolute error of log1p, and the Pearson correlation of log1p
(`bcdi_gapfill.core.metrics.pcc_gap`, the paper's equation 1).

    .venv/bin/python benchmarks/bench_inpaint_strides.py [--quick] [--weights PATH] [--threads N]
        [--small-strides] [--full-stride1]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

WIDTH = 6


def _run(args: dict) -> dict:
    import numpy as np
    from bcdi_gapfill.core.geometry import synthetic_gap_mask
    from bcdi_gapfill.fill.inpainting import inpaint, plan_windows
    from bcdi_gapfill.core.metrics import pcc_gap

    truth = C.simulated(args["size"], args["seed"])
    if args.get("crop"):
        lo, hi = args["crop"]
        truth = np.ascontiguousarray(truth[lo:hi, lo:hi, lo:hi])
    gap = synthetic_gap_mask(truth.shape, "cross", WIDTH)
    data = truth.copy()
    data[gap] = 0  # nothing of the truth inside the gap reaches the fill
    kwargs = {"method": args["method"]}
    out = {**args, "shape": list(truth.shape), "n_gap": int(gap.sum())}
    if args["method"] == "model":
        model, _ = C.load_model(args.get("weights"))
        kwargs.update(model=model, stride=args["stride"], blend=args.get("blend", "hann"))
        if args.get("batch_size"):
            kwargs["batch_size"] = args["batch_size"]
        out["n_windows"] = len(plan_windows(gap, 32, args["stride"]))
        inpaint(data[:32, :32, :32], gap[:32, :32, :32], **kwargs)  # warm-up: oneDNN primitives, imports
    import torch
    out["threads"] = torch.get_num_threads()
    filled, m = C.measure(lambda: inpaint(data, gap, **kwargs))
    out.update(m)
    err = np.abs(np.log1p(filled[gap].astype(np.float64)) - np.log1p(truth[gap].astype(np.float64)))
    out["mae_log1p"] = float(err.mean())
    out["pcc"] = float(pcc_gap(truth, filled, gap))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64^3 pattern, strides 2, 8, 16, 30 (about a minute)")
    ap.add_argument("--weights", default=None, help="weights file or training checkpoint (default: shipped "
                                                    "weights, else an untrained model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--small-strides", action="store_true",
                    help="also strides 2 and 4 at 128^3 (~3.5 min at 1 thread)")
    ap.add_argument("--full-stride1", action="store_true", help="also stride 1 at 128^3 (~12 min at 1 thread)")
    ap.add_argument("--name", default="inpaint_strides", help="results/<name>.json")
    opts = ap.parse_args(argv)
    _, model_desc = C.load_model(opts.weights)
    base = {"seed": opts.seed, "weights": opts.weights, "threads": opts.threads}
    size = 64 if opts.quick else 128
    C.simulated(size, opts.seed)
    rows = []

    def run(**kw):
        r = C.run_child(__file__, {**base, **kw})
        rows.append(r)
        print(f"  {r.get('method')} stride={r.get('stride')} crop={r.get('crop')} threads={r.get('threads')}: "
              f"{r.get('seconds', r.get('error'))} s", flush=True)
        return r

    print(f"model: {model_desc}", flush=True)
    # Full array: classical fills and the model at strides >= 2.
    full_strides = [2, 8, 16, 30] if opts.quick else [8, 16, 30]
    if opts.small_strides and not opts.quick:
        full_strides = [2, 4] + full_strides
    if opts.full_stride1:
        full_strides = [1] + full_strides
    for method in ("linear", "biharmonic"):
        run(size=size, method=method)
    for s in full_strides:
        run(size=size, method="model", stride=s)
    # Thread count, at the default stride.
    main_threads = opts.threads or C.default_threads()
    for t in sorted({1, 2, main_threads}):
        if t != main_threads:
            run(size=size, method="model", stride=8, threads=t, tag="threads")
    # Stride-1 reference on the central 64^3 crop (the whole array in --quick mode).
    crop_rows = []
    if not opts.quick:
        # Quality runs: one thread unless --threads says otherwise (faster on a busy CPU; the
        # results do not depend on it).
        crop_threads = opts.threads or 1
        for s in (1, 2, 4, 8, 16, 30):
            crop_rows.append(run(size=size, crop=[32, 96], method="model", stride=s, threads=crop_threads))
        for method in ("linear", "biharmonic"):
            crop_rows.append(run(size=size, crop=[32, 96], method=method, threads=crop_threads))
    else:
        crop_rows = [r for r in rows if r.get("tag") is None]

    def annotate(group):
        models = [r for r in group if r.get("method") == "model" and "error" not in r]
        ref = min(models, key=lambda r: r["stride"]) if models else None
        lin = next((r for r in group if r.get("method") == "linear" and "error" not in r), None)
        bih = next((r for r in group if r.get("method") == "biharmonic" and "error" not in r), None)
        for r in group:
            if "error" in r:
                continue
            if ref:
                r["ref_stride"] = ref["stride"]
                r["mae_vs_ref_pct"] = round(100 * (r["mae_log1p"] / ref["mae_log1p"] - 1), 2)
            if lin:
                r["time_vs_linear"] = round(r["seconds"] / lin["seconds"], 1)
            if bih:
                r["time_vs_biharmonic"] = round(r["seconds"] / bih["seconds"], 2)
    main_rows = [r for r in rows if r.get("tag") is None and not r.get("crop")]
    annotate(main_rows)
    if not opts.quick:
        annotate(crop_rows)
    cols = [("method", "method"), ("stride", "stride"), ("n_windows", "windows"), ("threads", "threads"),
            ("seconds", "time (s)"), ("time_vs_linear", "x linear"), ("time_vs_biharmonic", "x biharmonic"),
            ("mae_log1p", "MAE log1p"), ("mae_vs_ref_pct", "MAE vs smallest stride (%)"), ("pcc", "PCC"),
            ("numpy_peak_mb", "numpy peak (MB)"), ("rss_before_mb", "RSS before (MB)"),
            ("peak_rss_mb", "peak RSS (MB)"),
            ("load1_before", "load before"), ("load1_after", "load after")]
    tables = {f"{size}^3 cross {WIDTH}": C.table(main_rows, cols),
              "threads (stride 8)": C.table([r for r in rows if r.get("tag") == "threads"] +
                                            [r for r in main_rows if r.get("stride") == 8], cols)}
    if not opts.quick:
        tables["central 64^3 crop (stride-1 reference)"] = C.table(crop_rows, cols)
    # Largest stride within 2% of the smallest stride run (stride 1 on the crop; the whole
    # array's smallest stride in --quick mode).
    ok = [r["stride"] for r in crop_rows if r.get("method") == "model" and "mae_vs_ref_pct" in r
          and r["mae_vs_ref_pct"] <= 2.0]
    ref_stride = min((r["stride"] for r in crop_rows if r.get("method") == "model" and "error" not in r),
                     default=None)
    best = max(ok) if ok else None
    for title, t in tables.items():
        print(f"\n### {title}\n{t}")
    print(f"\nlargest stride with in-gap MAE within 2% of stride {ref_stride}: {best}")
    payload = {"benchmark": "inpaint_strides", "quick": opts.quick, "model": model_desc, "gap": f"cross {WIDTH}",
               "machine": C.machine(), "rows": rows, "reference_stride": ref_stride, "largest_stride_within_2pct": best, "tables": tables}
    print(f"wrote {C.save(opts.name + ('_quick' if opts.quick else ''), payload)}")
    return payload


if __name__ == "__main__":
    if not C.child_main(_run):
        main()
