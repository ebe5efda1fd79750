"""Fine-tuning on the measured array (issue 7) applied to the cdiutils-simulated scans.

The scans of the evaluation (`bcdi_gapfill.validation.scans.cdiutils_scan_set(3, 0)`: another simulator
than training's, detector frame, the Maxipix chip cross near the peak) are the data on which
further training of the shipped model on our own simulations lost accuracy. Here each scan is
treated as a user would: `bcdi_gapfill.nn.finetune.finetune` on the scan's own counts and real
gap (default settings: 200 portions, 200 steps, Poisson deviance, 300 s budget, one thread),
then `inpaint` with the tuned model. Scores over every voxel of the real gap: in-gap PCC of
log1p against the gap-free noisy counts, headroom from log-linear interpolation to the
Poisson ceiling (the evaluation's definition), before and after, with the fine-tuning's own
held-out PCC gain (what a user sees without the truth).

    .venv/bin/python benchmarks/bench_finetune_scans.py [--scans 0 1 2] [--name finetune_scans]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _headroom(pcc: float, linear: float, ceiling: float) -> float:
    return (pcc - linear) / (ceiling - linear)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, nargs="+", default=[0, 1, 2], help="scan indices of cdiutils_scan_set(3, 0)")
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--name", default="finetune_scans")
    opts = ap.parse_args(argv)

    import torch
    from bcdi_gapfill.nn.finetune import finetune
    from bcdi_gapfill.fill.inpainting import inpaint
    from bcdi_gapfill.core.metrics import pcc_gap
    from bcdi_gapfill.validation.scans import cdiutils_scan_set

    torch.set_num_threads(1)
    scans = cdiutils_scan_set(max(opts.scans) + 1, 0)
    rows = []
    for i in opts.scans:
        scan = scans[i]
        gap, truth = scan.gap_mask, scan.truth
        ceiling = float(pcc_gap(truth, scan.expected, gap))
        linear = float(pcc_gap(truth, inpaint(scan.counts, gap, method="linear"), gap))
        row = {"scan": scan.name, "ceiling": ceiling, "linear": linear,
               "biharmonic": float(pcc_gap(truth, inpaint(scan.counts, gap, method="biharmonic"), gap)),
               "shipped": float(pcc_gap(truth, inpaint(scan.counts, gap, stride=opts.stride), gap))}
        t0 = time.perf_counter()
        result = finetune(scan.counts, gap)
        row["finetune_seconds"] = time.perf_counter() - t0
        row["tuned"] = float(pcc_gap(truth, inpaint(scan.counts, gap, model=result.model, stride=opts.stride), gap))
        row.update(holdout_pcc_gain=result.pcc_gain, holdout_pcc_gain_se=result.pcc_gain_se,
                   improved=result.improved, reverted=result.reverted, steps=result.steps)
        for name in ("biharmonic", "shipped", "tuned"):
            row[f"{name}_headroom"] = _headroom(row[name], linear, ceiling)
        rows.append(row)
        print(f"{scan.name}: headroom biharmonic {row['biharmonic_headroom']:.3f} shipped "
              f"{row['shipped_headroom']:.3f} tuned {row['tuned_headroom']:.3f} (held-out gain "
              f"{result.pcc_gain:+.4f} +- {result.pcc_gain_se:.4f}, {row['finetune_seconds']:.0f} s)", flush=True)
    columns = [("scan", "scan"), ("biharmonic_headroom", "biharmonic"), ("shipped_headroom", "shipped model"),
               ("tuned_headroom", "fine-tuned"), ("reverted", "reverted"), ("holdout_pcc_gain", "held-out PCC gain"),
               ("holdout_pcc_gain_se", "s.e."), ("finetune_seconds", "s fine-tuning")]
    text = C.table(rows, columns)
    print(text)
    C.save(opts.name, {"machine": C.machine(), "options": vars(opts), "rows": rows, "tables": {"scans": text}})
    return {"rows": rows}


if __name__ == "__main__":
    main()
