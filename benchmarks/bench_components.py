"""Cost of the parts of model inference, per 32^3 window, and the prefill's agreement.

* prefill: the model's own dense biharmonic prefill (`PatchUNet.prefill`, 80 CG iterations
  on every voxel of the window) against the sparse gap-voxel prefill that `inpaint` uses
  (`bcdi_gapfill.fill.inpainting._FastPrefill`), for windows sharing one gap mask; the largest
  difference from the dense float32 prefill and from a float64 run of the same dense
  iterations (normalised log scale, 0..1);
* trunk: the network after the prefill, contiguous vs channels-last memory, batch 8/16/32;
* accumulation: adding one window's prediction into the blend, dense 32^3 slices of a
  bounding box (before) vs the gap voxels of a flat gap vector (now).

Each measurement is the best of a few repeats, at one thread by default (``--threads``): on
a CPU shared with other jobs, two threads mostly measure time spent waiting at OpenMP
barriers (see docs/benchmarks.md).

    .venv/bin/python benchmarks/bench_components.py [--quick] [--threads N]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _masks():
    import numpy as np
    from bcdi_gapfill.core.geometry import synthetic_gap_mask
    shape = (32, 32, 32)
    rng = np.random.default_rng(0)
    pixels = np.zeros(shape, bool)
    pixels[tuple(rng.integers(0, 32, (3, 500)))] = True
    edge = np.zeros(shape, bool)
    edge[:, :, :3] = True
    return {"vertical 6": synthetic_gap_mask(shape, "vertical", 6),
            "cross 6": synthetic_gap_mask(shape, "cross", 6),
            "vertical 12": synthetic_gap_mask(shape, "vertical", 12),
            "cross 12, off-centre": synthetic_gap_mask(shape, "cross", 12, position=0, position2=20),
            "edge band 3": edge, "500 dead pixels": pixels}


def main(argv=None) -> dict:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and masks")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="components")
    opts = ap.parse_args(argv)
    threads_before = torch.get_num_threads()  # run_all.py runs this in its own process
    torch.set_num_threads(opts.threads)
    try:
        return _measure(opts)
    finally:
        torch.set_num_threads(threads_before)


def _measure(opts) -> dict:
    import numpy as np
    import torch
    from bcdi_gapfill.nn.prefill import biharmonic_fill_torch
    from bcdi_gapfill.nn.dataset import log_normalise
    from bcdi_gapfill.core.geometry import synthetic_gap_mask
    from bcdi_gapfill.fill.inpainting import _FastPrefill, _MaskPlan, _taper, plan_windows
    from bcdi_gapfill.nn.model import PatchUNet, build_model

    repeat = 2 if opts.quick else 3
    torch.manual_seed(0)
    net = build_model("gapfill").eval()
    counts = C.simulated(64, 5)
    rng = np.random.default_rng(1)
    batch = 16
    tables = {}

    # Prefill.
    rows = []
    masks = _masks()
    if opts.quick:
        masks = {k: masks[k] for k in ("cross 6", "500 dead pixels")}
    for name, mask in masks.items():
        corners = rng.integers(0, 32, (batch, 3))
        c = np.stack([counts[f:f + 32, r:r + 32, q:q + 32] for f, r, q in corners]).astype(np.float32)
        g = torch.from_numpy(np.broadcast_to(mask, (batch, 32, 32, 32)).copy())
        log_norm, _ = log_normalise(torch.from_numpy(c), g)
        log_norm, g = log_norm[:, None], g[:, None]
        fast = _FastPrefill(net)
        with torch.inference_mode():
            dense = PatchUNet.prefill(net, log_norm, g)
            ref64 = biharmonic_fill_torch(log_norm.double(), g, net.config.prefill_iterations, tol=None,
                                          init=net.config.prefill_init)
            t_build = _best(lambda: _MaskPlan(mask, net.config.prefill_init, "cpu", fast.dtype), repeat)
            sparse = fast(log_norm, g)
            t_dense = _best(lambda: PatchUNet.prefill(net, log_norm, g), repeat)
            t_sparse = _best(lambda: fast(log_norm, g), repeat)
        rows.append({"mask": name, "gap_voxels": int(mask.sum()),
                     "dense_ms": round(1e3 * t_dense / batch, 2), "sparse_ms": round(1e3 * t_sparse / batch, 2),
                     "speedup": round(t_dense / t_sparse, 1),
                     "plan_build_ms": round(1e3 * t_build, 1),
                     "sparse_vs_dense": float((sparse - dense).abs().max()),
                     "dense_vs_f64": float((dense.double() - ref64).abs().max()),
                     "sparse_vs_f64": float((sparse.double() - ref64).abs().max())})
    tables["prefill"] = C.table(rows, [
        ("mask", "window gap mask"), ("gap_voxels", "gap voxels"), ("dense_ms", "dense (ms/window)"),
        ("sparse_ms", "sparse (ms/window)"), ("speedup", "speed-up"), ("plan_build_ms", "plan build (ms, once per mask)"),
        ("sparse_vs_dense", "max |sparse - dense|"), ("dense_vs_f64", "max |dense f32 - f64|"),
        ("sparse_vs_f64", "max |sparse - f64|")])
    prefill_rows = rows

    # Trunk (everything after the prefill), memory format and batch size.
    rows = []
    for fmt in ("contiguous", "channels_last"):
        model = build_model("gapfill").eval()
        memory_format = torch.channels_last_3d if fmt == "channels_last" else torch.contiguous_format
        model = model.to(memory_format=memory_format)
        for b in ((16,) if opts.quick else (8, 16, 32)):
            x = torch.rand(b, 2, 32, 32, 32).contiguous(memory_format=memory_format)
            with torch.inference_mode():
                model.head(model.final(model.trunk(x)))  # warm-up
                t = _best(lambda: model.head(model.final(model.trunk(x))), repeat)
            rows.append({"format": fmt, "batch": b, "ms_per_window": round(1e3 * t / b, 1)})
    tables["trunk"] = C.table(rows, [("format", "memory format"), ("batch", "batch"),
                                     ("ms_per_window", "trunk (ms/window)")])
    trunk_rows = rows

    # Accumulation of one window's prediction.
    gap = synthetic_gap_mask((128,) * 3, "cross", 6)
    origins = plan_windows(gap, 32, 8)
    pred = np.random.default_rng(2).random((batch, 32, 32, 32), dtype=np.float32)
    taper = _taper(32, "hann")

    def dense_box():
        lo = np.array([min(o[a] for o in origins) for a in range(3)])
        hi = np.array([max(o[a] for o in origins) + 32 for a in range(3)])
        sum_w = np.zeros(hi - lo, np.float32)
        sum_x = np.zeros_like(sum_w)
        for i, o in enumerate(origins):
            rel = tuple(slice(o[a] - lo[a], o[a] - lo[a] + 32) for a in range(3))
            sum_w[rel] += taper
            sum_x[rel] += taper * pred[i % batch]
        return sum_w.nbytes * 2

    def gap_voxels():
        gap_flat = np.flatnonzero(gap)
        strides = np.array([128 * 128, 128, 1])
        offset = (np.indices((32,) * 3).reshape(3, -1) * strides[:, None]).sum(0)
        sum_w = np.zeros(gap_flat.size, np.float32)
        sum_x = np.zeros_like(sum_w)
        flat_taper, flat_pred, cache = taper.ravel(), pred.reshape(batch, -1), {}
        for i, o in enumerate(origins):
            w = gap[o[0]:o[0] + 32, o[1]:o[1] + 32, o[2]:o[2] + 32]
            key = w.tobytes()
            idx = cache.get(key)
            if idx is None:
                idx = cache[key] = np.flatnonzero(w)
            pos = np.searchsorted(gap_flat, int(np.dot(o, strides)) + offset[idx])
            sum_w[pos] += flat_taper[idx]
            sum_x[pos] += flat_taper[idx] * flat_pred[i % batch, idx]
        return sum_w.nbytes * 2 + gap_flat.nbytes

    rows = []
    for name, fn in (("dense bounding box (before)", dense_box), ("gap voxels (now)", gap_voxels)):
        nbytes = fn()
        t = _best(fn, repeat)
        rows.append({"method": name, "windows": len(origins), "ms_per_window": round(1e3 * t / len(origins), 3),
                     "accumulator_mb": round(nbytes / 2**20, 1)})
    tables["accumulation (128^3 cross 6, stride 8)"] = C.table(rows, [
        ("method", "accumulation"), ("windows", "windows"), ("ms_per_window", "ms/window"),
        ("accumulator_mb", "accumulators (MB)")])

    machine = C.machine()
    for title, t in tables.items():
        print(f"\n### {title} (threads {torch.get_num_threads()}, load {machine['loadavg'][0]:.2f})\n{t}")
    payload = {"benchmark": "components", "quick": opts.quick, "machine": machine, "threads": torch.get_num_threads(),
               "prefill": prefill_rows, "trunk": trunk_rows, "accumulation": rows, "tables": tables}
    print(f"wrote {C.save(opts.name + ('_quick' if opts.quick else ''), payload)}")
    return payload


if __name__ == "__main__":
    main()
