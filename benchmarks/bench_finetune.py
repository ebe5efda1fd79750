"""Fine-tuning on the target array (issue 7): how few portions and steps still help.

A simulated 128^3 pattern unlike the training set of the shipped model (which saw seeds 0..599
of `simulate_pattern`'s defaults: oversampling 1.5-6, phase amplitude 0.1-1.5 rad) gets a
6-pixel chip cross through its Bragg peak (the "real" gap). For each number of training
portions, one run of `bcdi_gapfill.nn.finetune.finetune` trains up to the largest step count and
is scored at every requested step count on the way (the learning rate is constant, so the
first N steps of a long run are exactly an N-step run):

* held-out in-gap PCC: 32 portions of the other half of the array, never trained on, with
  fixed 6-pixel artificial gaps, against the noisy counts (what a user can measure);
* real-gap PCC: the whole array inpainted (stride 8) with the model of that step, in-gap PCC
  of log1p against the simulator's noise-free expectation (what only a simulation gives).

Not part of ``run_all.py`` (about 10 minutes per portion count on a shared 2-core CPU).

    .venv/bin/python benchmarks/bench_finetune.py [--case oversampling8|dislocation]
        [--portions 200 400 800] [--steps 50 100 200] [--lr LR] [--batch-size N] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

# Arrays outside the training distribution (seed 0..599 defaults): the seeds are far from it.
CASES = {
    "oversampling8": dict(seed=900_001, shape_name="wulff", oversampling=8.0, peak_counts=1e6, phase="random",
                          phase_amplitude=0.5),
    "dislocation": dict(seed=900_002, shape_name="truncated_octahedron", oversampling=3.0, peak_counts=1e6,
                        phase="dislocation", phase_amplitude=2.5),
    "oversampling2": dict(seed=900_003, shape_name="cube", oversampling=2.0, peak_counts=1e6, phase="random",
                          phase_amplitude=0.5),
}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=sorted(CASES), default="oversampling8")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--gap-width", type=int, default=6)
    ap.add_argument("--portions", type=int, nargs="+", default=[200, 400, 800])
    ap.add_argument("--steps", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument("--lr", type=float, default=None, help="default: finetune's")
    ap.add_argument("--batch-size", type=int, default=None, help="default: finetune's")
    ap.add_argument("--holdout", type=int, default=32)
    ap.add_argument("--periphery-power", type=float, default=None, help="default: finetune's")
    ap.add_argument("--loss", choices=("poisson", "paper"), default=None, help="default: finetune's")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default=None, help="result file name (default finetune_<case>)")
    opts = ap.parse_args(argv)

    import numpy as np
    import torch
    from bcdi_gapfill.nn import finetune as ft
    from bcdi_gapfill.nn.finetune import finetune
    from bcdi_gapfill.core.geometry import synthetic_gap_mask
    from bcdi_gapfill.fill.inpainting import inpaint, load_model
    from bcdi_gapfill.core.metrics import pcc_gap
    from bcdi_gapfill.core.simulate import simulate_pattern

    torch.set_num_threads(opts.threads)
    pattern = simulate_pattern(opts.size, **CASES[opts.case])
    gap = synthetic_gap_mask(pattern.counts.shape, "cross", opts.gap_width)
    data = np.where(gap, 0, pattern.counts).astype(np.float32)
    base, base_info = load_model(None, "cpu")

    def real_gap_pcc(net) -> tuple[float, float]:
        t0 = time.perf_counter()
        filled = inpaint(data, gap, model=net, stride=8, num_threads=opts.threads, device="cpu")
        return pcc_gap(pattern.expected, filled, gap), time.perf_counter() - t0

    base_pcc, inpaint_s = real_gap_pcc(base)
    bih = inpaint(data, gap, method="biharmonic")
    payload = {"case": opts.case, "simulation": CASES[opts.case], "metadata": {
        k: pattern.metadata[k]
        for k in ("oversampling", "phase", "phase_amplitude", "peak_counts", "shape_name")},
        "gap": f"cross:{opts.gap_width}", "machine": C.machine(), "options": vars(opts),
        "weights": base_info.get("weights"), "weights_sha256": base_info.get("sha256"),
        "finetune_defaults": {k: v for k, v in ft.FINETUNE_DEFAULTS.items() if k not in ("callback", "exclude_mask")},
        "real_gap_pcc_shipped": base_pcc, "real_gap_pcc_biharmonic": pcc_gap(pattern.expected, bih, gap),
        "inpaint_seconds": inpaint_s, "runs": []}
    print(json.dumps({k: payload[k] for k in ("case", "metadata", "real_gap_pcc_shipped",
                                              "real_gap_pcc_biharmonic", "inpaint_seconds")}), flush=True)
    checkpoints = sorted(set(opts.steps))
    # Options left out take finetune's defaults.
    chosen = {k: v for k, v in (("periphery_power", opts.periphery_power), ("lr", opts.lr),
                                ("batch_size", opts.batch_size), ("loss", opts.loss)) if v is not None}
    for n_portions in opts.portions:
        real = {}

        def on_step(step, net, real=real):
            if step in checkpoints:
                real[step] = real_gap_pcc(net)[0]

        load0 = os.getloadavg()[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            result = finetune(data, gap, n_portions=n_portions, steps=max(checkpoints), time_budget_s=None,
                              holdout=opts.holdout, revert_if_worse=False, num_threads=opts.threads, **chosen,
                              eval_every=int(np.gcd.reduce(checkpoints)), callback=on_step)
        for entry in result.history:
            if entry["step"] not in checkpoints:
                continue
            row = {"portions": result.n_portions, "steps": entry["step"],
                   "seconds": round(entry["seconds"], 1),
                   "cpu_seconds": round(entry["cpu_seconds"], 1),
                   "holdout_pcc_before": result.pcc_before, "holdout_pcc_after": entry["holdout_pcc"],
                   "holdout_pcc_gain": entry["holdout_pcc_gain"],
                   "holdout_pcc_gain_se": entry["holdout_pcc_gain_se"],
                   "holdout_loss_before": result.holdout_loss_before,
                   "holdout_loss_after": entry["holdout_loss"],
                   "real_gap_pcc_before": base_pcc, "real_gap_pcc_after": real.get(entry["step"]),
                   "load1": [round(load0, 2), round(os.getloadavg()[0], 2)]}
            payload["runs"].append(row)
            print(json.dumps(row), flush=True)
        payload.setdefault("losses", {})[n_portions] = result.losses
    payload["tables"] = {"fine-tuning": C.table(payload["runs"], [
        ("portions", "portions"), ("steps", "steps"), ("seconds", "wall (s)"), ("cpu_seconds", "CPU (s)"),
        ("holdout_pcc_before", "held-out PCC before"), ("holdout_pcc_after", "after"),
        ("holdout_pcc_gain", "gain"), ("holdout_pcc_gain_se", "gain s.e."),
        ("real_gap_pcc_before", "real-gap PCC before"), ("real_gap_pcc_after", "after")])}
    C.save(opts.name or f"finetune_{opts.case}", payload)
    print(payload["tables"]["fine-tuning"])
    return payload


if __name__ == "__main__":
    main()
