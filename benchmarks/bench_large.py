"""A large array with a realistic detector gap layout: time and peak memory.

256 frames x 300 x 300 pixels of a simulated pattern, with the Eiger2M chip gaps of two
regions of interest (``bcdi_gapfill.core.geometry.detector_gap_mask("Eiger2M", 256, roi)``):

* ``narrow``: ROI rows 700:1000, columns 240:540 — one 5-pixel row gap and two 4-pixel
  column gaps cross the array (the shipped model's card allows gaps up to 12 pixels);
* ``wide``: ROI rows 400:700, columns 240:540 — adds Eiger2M's 41-pixel module gap (rows
  511:552), wider than the model serves: ``inpaint`` refuses it up front with a clear
  message, so it is reported with the biharmonic fill only.

With the shipped weights present and no ``--weights``, the model runs are
``inpaint(..., model=None)``: the shipped model with its card.

    .venv/bin/python benchmarks/bench_large.py [--quick] [--weights PATH] [--threads N]

``--quick`` uses 64 frames instead of 256.

``--huge`` (not part of ``run_all.py``) runs the memory bound instead: a 512^3 array (smooth
synthetic Poisson counts, not a simulated pattern) with a centred 6-pixel cross gap spanning
the whole array, at stride 16, with the current ``inpaint`` and with an earlier version read
from git (``--ref``, default 328abbd, whose accumulators covered the gap's bounding box: here
the whole array). Peak resident memory of each, and ``estimate_memory``'s figure.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ROIS = {"narrow": (700, 1000, 240, 540), "wide": (400, 700, 240, 540)}


def _gap(layout: str, frames: int):
    from bcdi_gapfill.core.geometry import detector_gap_mask
    return detector_gap_mask("Eiger2M", frames, roi=ROIS[layout])


def _huge_data(n: int, seed: int):
    """Smooth synthetic counts (a centred peak with a power-law tail), Poisson noise, float32."""
    import numpy as np
    rng = np.random.default_rng(seed)
    c = (np.arange(n) - n / 2) / (n / 16)
    r2_plane = c[:, None] ** 2 + c[None, :] ** 2
    data = np.empty((n, n, n), np.float32)
    for f in range(n):
        lam = 1e5 / (1.0 + r2_plane + c[f] ** 2) ** 2
        data[f] = rng.poisson(lam)
    return data


def _run_huge(args: dict) -> dict:
    import numpy as np
    from bcdi_gapfill.core.geometry import synthetic_gap_mask
    from bcdi_gapfill.fill.inpainting import estimate_memory, plan_windows

    if args["version"] == "old":
        from bench_speedup import _old_module
        module = _old_module(args["ref"])
    else:
        from bcdi_gapfill.fill import inpainting as module
    n = args["size"]
    data = _huge_data(n, args["seed"])
    gap = synthetic_gap_mask(data.shape, "cross", 6)
    data[gap] = 0
    model, _ = C.load_model(args.get("weights"))
    module.inpaint(data[:32, :32, :32], gap[:32, :32, :32], model=model)  # warm-up
    import torch
    out = {**args, "shape": [n] * 3, "n_gap": int(gap.sum()), "threads": torch.get_num_threads(),
           "n_windows": len(plan_windows(gap, 32, args["stride"])),
           "estimate_mb": round(estimate_memory(data.shape, int(gap.sum()))["total"] / 2**20)}
    _, m = C.measure(lambda: module.inpaint(data, gap, model=model, stride=args["stride"]))
    out.update(m)
    out["input_mb"] = round((data.nbytes + gap.nbytes) / 2**20)
    return out


def _run(args: dict) -> dict:
    import numpy as np
    if args.get("huge"):
        return _run_huge(args)
    from bcdi_gapfill.fill.inpainting import _bands, inpaint, plan_windows
    from bcdi_gapfill.core.metrics import pcc_gap

    shape = (args["frames"], 300, 300)
    truth = C.simulated(shape, args["seed"])
    gap = _gap(args["layout"], shape[0])
    data = truth.copy()
    data[gap] = 0
    out = {**args, "shape": list(shape), "n_gap": int(gap.sum()),
           "bands": {axis: [list(b) for b in _bands(gap, axis)] for axis in (1, 2)}}
    kwargs = {"method": args["method"]}
    if args["method"] == "model":
        from bcdi_gapfill.fill.inpainting import DEFAULT_WEIGHTS
        if args.get("weights") is None and DEFAULT_WEIGHTS.is_file():
            model = None  # inpaint's own default: the shipped weights with their card (max gap width)
        else:
            model, _ = C.load_model(args.get("weights"))
        kwargs.update(model=model, stride=args["stride"])
        out["n_windows"] = len(plan_windows(gap, 32, args["stride"]))
        inpaint(data[:32, :32, :32], gap[:32, :32, :32], **kwargs)  # warm-up
    import torch
    out["threads"] = torch.get_num_threads()
    try:
        filled, m = C.measure(lambda: inpaint(data, gap, **kwargs))
    except ValueError as exc:  # a gap wider than the model serves: inpaint refuses it up front
        out.pop("n_windows", None)
        return {**out, "refused": str(exc)}
    out.update(m)
    err = np.abs(np.log1p(filled[gap].astype(np.float64)) - np.log1p(truth[gap].astype(np.float64)))
    out["mae_log1p"] = float(err.mean())
    out["pcc"] = float(pcc_gap(truth, filled, gap))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64 frames instead of 256")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--strides", default="16", help="model strides (comma-separated; 8 takes ~4x longer)")
    ap.add_argument("--name", default="large")
    ap.add_argument("--huge", action="store_true", help="512^3 memory bound, current vs --ref (slow)")
    ap.add_argument("--ref", default="328abbd")
    ap.add_argument("--size", type=int, default=512, help="edge of the --huge array")
    opts = ap.parse_args(argv)
    if opts.huge:
        return _main_huge(opts)
    _, model_desc = C.load_model(opts.weights)
    frames = 64 if opts.quick else 256
    C.simulated((frames, 300, 300), opts.seed)
    base = {"seed": opts.seed, "weights": opts.weights, "threads": opts.threads, "frames": frames}
    rows = []
    print(f"model: {model_desc}", flush=True)
    plan = [("narrow", "linear", None), ("narrow", "biharmonic", None)]
    plan += [("narrow", "model", int(s)) for s in opts.strides.split(",")]
    plan += [("wide", "model", 8), ("wide", "biharmonic", None)]
    for layout, method, stride in plan:
        r = C.run_child(__file__, {**base, "layout": layout, "method": method, "stride": stride})
        rows.append(r)
        print(f"  {layout} {method} stride={stride}: {r.get('seconds', r.get('refused', r.get('error')))}", flush=True)
    for r in rows:
        if r.get("refused"):
            r["note"] = "model refuses: " + r["refused"].split(";")[0]
    cols = [("layout", "ROI"), ("method", "method"), ("stride", "stride"), ("n_gap", "gap voxels"),
            ("n_windows", "windows"), ("threads", "threads"), ("seconds", "time (s)"),
            ("mae_log1p", "MAE log1p"), ("pcc", "PCC"), ("numpy_peak_mb", "numpy peak (MB)"),
            ("rss_before_mb", "RSS before (MB)"), ("peak_rss_mb", "peak RSS (MB)"),
            ("load1_before", "load before"), ("load1_after", "load after"), ("note", "note")]
    t = C.table(rows, cols)
    print(f"\n### {frames}x300x300, Eiger2M gaps\n{t}")
    payload = {"benchmark": "large", "quick": opts.quick, "model": model_desc, "rois": ROIS,
               "machine": C.machine(), "rows": rows, "tables": {f"{frames}x300x300 Eiger2M": t}}
    print(f"wrote {C.save(opts.name + ('_quick' if opts.quick else ''), payload)}")
    return payload


def _main_huge(opts) -> dict:
    _, model_desc = C.load_model(opts.weights)
    rows = []
    for version in ("new", "old"):
        r = C.run_child(__file__, {"huge": True, "version": version, "ref": opts.ref, "size": opts.size,
                                   "seed": opts.seed, "stride": 16, "threads": opts.threads,
                                   "weights": opts.weights}, timeout=3600)
        r["version"] = "now" if version == "new" else opts.ref
        rows.append(r)
        print(f"  {r['version']}: {r.get('seconds', r.get('error'))} s, peak RSS {r.get('peak_rss_mb')} MB", flush=True)
    cols = [("version", "inpaint.py"), ("shape", "shape"), ("n_gap", "gap voxels"), ("n_windows", "windows"),
            ("threads", "threads"), ("seconds", "time (s)"), ("input_mb", "inputs (MB)"),
            ("rss_before_mb", "RSS before (MB)"), ("peak_rss_mb", "peak RSS (MB)"), ("numpy_peak_mb", "numpy peak (MB)"),
            ("estimate_mb", "estimate_memory (MB)"), ("load1_before", "load before"), ("load1_after", "load after")]
    t = C.table(rows, cols)
    print(f"\n### memory bound, {opts.size}^3 cross 6, stride 16\n{t}")
    payload = {"benchmark": "large_huge", "model": model_desc, "machine": C.machine(), "rows": rows,
               "tables": {f"{opts.size}^3 memory": t}}
    print(f"wrote {C.save(opts.name + '_huge', payload)}")
    return payload


if __name__ == "__main__":
    if not C.child_main(_run):
        main()
