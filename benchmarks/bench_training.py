"""Training throughput on CPU: portions (32^3 windows) per second for the default config.

The step is `bcdi_gapfill.nn.train.train`'s: channels-last model, forward with the biharmonic
prefill, `gap_loss` (MAE + SSIM + gradient), backward, gradient clipping, Adam. Batches of
16 portions cut from simulated 128^3 patterns with the training gap widths; one warm-up
step, then the median of the timed steps.

    .venv/bin/python benchmarks/bench_training.py [--quick] [--steps N] [--batch 16] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _run(args: dict) -> dict:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from bcdi_gapfill.nn.dataset import GapPortionDataset, PortionBank, portions_from_array
    from bcdi_gapfill.nn.model import build_model
    from bcdi_gapfill.core.simulate import simulate_pattern
    from bcdi_gapfill.nn.train import TrainConfig, gap_loss

    cfg = TrainConfig()
    torch.manual_seed(0)
    banks = []
    for seed in range(args["patterns"]):
        p = simulate_pattern(args["size"], seed)
        banks.append(portions_from_array(p.counts, p.expected, 10, np.random.default_rng(seed)))
    bank = PortionBank.concatenate(banks)
    dataset = GapPortionDataset(bank, cfg.widths, cross_probability=cfg.cross_probability, augment=True, seed=0)
    loader = DataLoader(dataset, batch_size=args["batch"], shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    batches = []
    while len(batches) < args["steps"] + 1:
        batches += list(loader)
    model = build_model(cfg.model if isinstance(cfg.model, str) else cfg.model)
    model = model.to(memory_format=torch.channels_last_3d).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    times = []
    C._reset_peak_rss()  # the peak below is the training steps', not the simulation's
    for inputs, target, gap in batches[:args["steps"] + 1]:
        t0 = time.perf_counter()
        pred = model(inputs.to(memory_format=torch.channels_last_3d), gap)
        loss, _ = gap_loss(pred, target, gap, inputs[:, :1], cfg.w_mae, cfg.w_ssim, cfg.w_grad)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimiser.step()
        times.append(time.perf_counter() - t0)
    timed = times[1:]
    med = statistics.median(timed)
    return {**args, "threads": torch.get_num_threads(), "step_times_s": [round(t, 3) for t in timed],
            "median_step_s": round(med, 3), "portions_per_s": round(args["batch"] / med, 2),
            "rss_mb": C.rss_mb(), "peak_rss_mb": C._proc_status_mb("VmHWM")}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 timed steps, 64^3 source patterns")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 8, quick 3)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--name", default="training")
    opts = ap.parse_args(argv)
    steps = opts.steps or (3 if opts.quick else 8)
    rows = []
    thread_settings = [opts.threads] if opts.threads else [1, 2]
    for t in thread_settings:
        load0 = C.os.getloadavg()[0]
        r = C.run_child(__file__, {"threads": t, "batch": opts.batch, "steps": steps,
                                   "size": 64 if opts.quick else 128, "patterns": 2})
        r["load1_before"] = round(load0, 2)
        r["load1_after"] = round(C.os.getloadavg()[0], 2)
        rows.append(r)
        print(f"  threads={t}: {r.get('portions_per_s', r.get('error'))} portions/s", flush=True)
    cols = [("threads", "threads"), ("batch", "batch"), ("steps", "timed steps"), ("median_step_s", "median step (s)"),
            ("portions_per_s", "portions/s"), ("peak_rss_mb", "peak RSS (MB)"), ("load1_before", "load before"),
            ("load1_after", "load after")]
    t = C.table(rows, cols)
    print(f"\n### training throughput (default config, CPU)\n{t}")
    payload = {"benchmark": "training", "quick": opts.quick, "machine": C.machine(), "rows": rows,
               "tables": {"training": t}}
    print(f"wrote {C.save(opts.name + ('_quick' if opts.quick else ''), payload)}")
    return payload


if __name__ == "__main__":
    if not C.child_main(_run):
        main()
