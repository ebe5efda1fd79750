"""Fill quality against the gap's distance from the Bragg peak (issue 21's protocol), on both
simulators: `bcdi_gapfill.validation.evaluate.peak_cross_table`.

Held-out 128^3 crystals of our simulator (seeds 320000...) and of cdiutils' (seeds 10...),
a cross gap of 3/6/9/12 px centred 0/2/4 px (near-peak) and 8/14/20 px (off-peak) from the
peak's maximum. Per method (linear, log-biharmonic, the model): error = 1 - log1p PCC over
the gap against the noise-free pattern, the model's error reduction against the
log-biharmonic fill (issue 21's off-peak target: >= 0.5), and the photon ratio = photons the
fill puts in the gap over those the gap hid (near-peak target: 0.8-1.25).

    .venv/bin/python benchmarks/bench_peak_position.py [--arrays 5] [--scans 5] [--weights PATH]
        [--threads 2] [--quick]

``--quick``: 1 array, 1 scan, widths 3 and 9, 64^3. Writes ``results/peak_position.json``
(``peak_position_quick.json``) with the weights' SHA-256, the command and the machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arrays", type=int, default=5)
    ap.add_argument("--scans", type=int, default=5)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    opts = ap.parse_args(argv)
    import torch

    from bcdi_gapfill.validation.evaluate import (NEAR_PEAK_OFFSETS, OFF_PEAK_OFFSETS, format_peak_cross_table,
                                       peak_cross_table)
    from bcdi_gapfill.core.io import file_sha256

    if opts.threads:
        torch.set_num_threads(opts.threads)
    model, description = C.load_model(opts.weights)
    weights = opts.weights or str(Path(__file__).resolve().parents[1] / "bcdi_gapfill" / "weights"
                                  / "gapfill_default.pt")
    size, widths = (64, (3, 9)) if opts.quick else (128, (3, 6, 9, 12))
    n_arrays, n_scans = (1, 1) if opts.quick else (opts.arrays, opts.scans)
    payload = {"command": " ".join(["benchmarks/bench_peak_position.py", *(argv or sys.argv[1:])]),
               "machine": C.machine(), "model": description, "weights_sha256": file_sha256(weights),
               "torch_threads": torch.get_num_threads(), "tables": {}}
    t0 = time.perf_counter()
    for name, offsets in (("near_peak", NEAR_PEAK_OFFSETS), ("off_peak", OFF_PEAK_OFFSETS)):
        table = peak_cross_table({"model": model}, n_arrays=n_arrays, n_scans=n_scans, size=size,
                                 widths=widths, offsets=offsets)
        payload["tables"][name] = table
        print(f"\n## {name}: cross centred {list(offsets)} px from the peak ({size}^3)\n")
        print(format_peak_cross_table(table), flush=True)
        for note in table["notes"]:
            print(note)
    payload["seconds"] = time.perf_counter() - t0
    payload["machine_after"] = C.machine()["loadavg"]
    path = C.save("peak_position_quick" if opts.quick else "peak_position", payload)
    print(f"wrote {path} ({payload['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
