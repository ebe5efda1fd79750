"""Square artefacts of the window blending (issue 5): the in-gap slice at a large stride.

The 128^3 pattern of `bench_inpaint_strides.py` with its 6-pixel cross gap is inpainted at
stride 16 (half the 32^3 window) with ``blend="hann"`` and ``blend="mean"``. The slice shown
is the middle column of the vertical gap band, ``filled[:, :, c]``: every voxel of it is
predicted, and the windows sliding along the band tile it in 16-pixel steps, so seams would
show as squares. The figure (``results/seams_stride16.png``) shows log1p of the truth, of
both fills and of their errors.

A number for the seams: windows start and end on multiples of the stride along both
in-plane axes, so a seam is a jump between neighbouring voxels across such a line.
``seam_ratio`` is the mean |log1p(fill) difference| between neighbours across window edges
divided by the same mean over all other neighbour pairs of the slice: about 1 without seams
(the truth itself, noisy, scores about 1 too).

    .venv/bin/python benchmarks/bench_seams.py [--quick] [--weights PATH] [--stride 16]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

WIDTH = 6


def seam_ratio(img, window: int = 32, origin_sets=None) -> float:
    """Mean jump of ``img`` (2D) across window edges over the mean jump elsewhere."""
    import numpy as np
    ratios = []
    for axis in (0, 1):
        jumps = np.abs(np.diff(img, axis=axis))  # jump between i and i+1
        n = img.shape[axis]
        edges = set()
        for o in origin_sets[axis]:
            for e in (o, o + window):  # window spans o..o+window-1: edges between o-1|o and o+w-1|o+w
                if 0 < e < n:
                    edges.add(e - 1)
        mask = np.zeros(n - 1, bool)
        mask[sorted(edges)] = True
        shape = [1, 1]
        shape[axis] = n - 1
        mask = np.broadcast_to(mask.reshape(shape), jumps.shape)
        ratios.append((jumps[mask].mean(), jumps[~mask].mean()))
    seam = np.mean([a for a, _ in ratios])
    other = np.mean([b for _, b in ratios])
    return float(seam / other)


def main(argv=None) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from bcdi_gapfill.core.geometry import synthetic_gap_mask
    from bcdi_gapfill.fill.inpainting import inpaint, plan_windows

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64^3 pattern")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--name", default="seams")
    opts = ap.parse_args(argv)
    model, model_desc = C.load_model(opts.weights)
    size = 64 if opts.quick else 128
    truth = C.simulated(size, opts.seed)
    gap = synthetic_gap_mask(truth.shape, "cross", WIDTH)
    data = truth.copy()
    data[gap] = 0
    col = int(np.flatnonzero(gap[0, 0])[WIDTH // 2])  # middle column of the vertical band
    origins = [o for o in plan_windows(gap, 32, opts.stride) if o[2] <= col < o[2] + 32]
    origin_sets = [sorted({o[0] for o in origins}), sorted({o[1] for o in origins})]
    fills, rows = {}, []
    for blend in ("hann", "mean"):
        filled, m = C.measure(lambda: inpaint(data, gap, model=model, stride=opts.stride, blend=blend,
                                              num_threads=opts.threads))
        fills[blend] = filled
        img = np.log1p(filled[:, :, col].astype(np.float64))
        import torch
        rows.append({"blend": blend, "stride": opts.stride, "threads": opts.threads or torch.get_num_threads(),
                     "seconds": m["seconds"],
                     "mae_log1p_slice": float(np.abs(img - np.log1p(truth[:, :, col])).mean()),
                     "seam_ratio": round(seam_ratio(img, origin_sets=origin_sets), 3),
                     "load1_before": m["load1_before"]})
    rows.append({"blend": "(truth)", "stride": None,
                 "seam_ratio": round(seam_ratio(np.log1p(truth[:, :, col].astype(np.float64)),
                                                origin_sets=origin_sets), 3)})
    lt = np.log1p(truth[:, :, col])
    vmax = float(lt.max())
    fig, axes = plt.subplots(2, 3, figsize=(12, 8))
    panels = [(lt, "truth (noisy counts)", "viridis", (0, vmax))]
    for blend in ("hann", "mean"):
        panels.append((np.log1p(fills[blend][:, :, col]), f"blend={blend!r}, stride {opts.stride}", "viridis", (0, vmax)))
    lim = max(float(np.abs(np.log1p(fills[b][:, :, col]) - lt).max()) for b in fills)
    panels.append((np.log1p(fills["hann"][:, :, col]) - np.log1p(fills["mean"][:, :, col]), "hann - mean",
                   "RdBu_r", (-lim / 4, lim / 4)))
    for blend in ("hann", "mean"):
        panels.append((np.log1p(fills[blend][:, :, col]) - lt, f"error, {blend}", "RdBu_r", (-lim, lim)))
    for ax, (img, title, cmap, (lo, hi)) in zip(axes.ravel(), panels):
        im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, origin="lower", aspect="auto")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("detector row")
        ax.set_ylabel("frame")
        for o in origin_sets[1]:
            ax.axvline(o - 0.5, color="w", lw=0.3, alpha=0.5)
        for o in origin_sets[0]:
            ax.axhline(o - 0.5, color="w", lw=0.3, alpha=0.5)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"In-gap slice filled[:, :, {col}] (middle of the {WIDTH}-px column gap), {size}^3, "
                 f"log1p; thin lines: window starts\nmodel: {model_desc}", fontsize=9)
    fig.tight_layout()
    C.RESULTS.mkdir(parents=True, exist_ok=True)
    png = C.RESULTS / f"seams_stride{opts.stride}{'_quick' if opts.quick else ''}.png"
    fig.savefig(png, dpi=90)
    cols = [("blend", "blend"), ("stride", "stride"), ("threads", "threads"), ("seconds", "time (s)"), ("mae_log1p_slice", "slice MAE log1p"),
            ("seam_ratio", "seam ratio (1 = none)"), ("load1_before", "load before")]
    t = C.table(rows, cols)
    print(f"\n### seams at stride {opts.stride} ({size}^3, slice filled[:, :, {col}])\n{t}\nfigure: {png}")
    payload = {"benchmark": "seams", "quick": opts.quick, "model": model_desc, "column": col, "png": str(png),
               "machine": C.machine(), "rows": rows, "tables": {"seams": t}}
    print(f"wrote {C.save(opts.name + ('_quick' if opts.quick else ''), payload)}")
    return payload


if __name__ == "__main__":
    main()
