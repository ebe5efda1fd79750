"""Fine-tune the shipped model on a measured array, keep the weights, and inpaint with them.

Shows ``bcdi_gapfill.nn.finetune``: a short second training on portions cut from the array
itself, away from its real gap, with artificial gaps of the gap's width (the paper's
section 2.7):

1. simulate a pattern unlike the training set (oversampling 8, beyond the 1.5-6 it saw) and
   cut a 6-pixel chip cross through its Bragg peak (the "real" gap);
2. ``finetune(data, gap)``: a copy of the shipped model is trained on portions of one half
   of the array and scored on held-out portions of the other half, before and after;
3. ``save_finetuned``: the weights and their model card go next to the data file
   (``<stem>_finetuned.pt``); the shipped weights are never touched;
4. inpaint the real gap with the shipped and with the tuned weights and compare both with
   the simulator's noise-free truth (which a measurement does not have).

Run: ``python examples/finetune_on_array.py [OUT_DIR]`` (about 5 minutes on one CPU core).
With ``BCDI_GAPFILL_EXAMPLE_FAST=1`` it runs in seconds on a 32x40x96 array with a few
portions and steps (the numbers then only show that it runs).
"""
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from bcdi_gapfill.nn.finetune import finetune, finetuned_weights_path, save_finetuned
from bcdi_gapfill.fill.inpainting import inpaint
from bcdi_gapfill.core.metrics import pcc_gap
from bcdi_gapfill.core.simulate import simulate_pattern

FAST = os.environ.get("BCDI_GAPFILL_EXAMPLE_FAST") == "1"


def main() -> int:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="finetune_example_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if FAST:
        shape = (32, 40, 96)
        pattern = simulate_pattern(shape, seed=5, peak_counts=1e6)
        gap = np.zeros(shape, bool)
        gap[:, :, 90:93] = True                                   # a 3-pixel band near the edge
        options = dict(n_portions=8, steps=2, batch_size=4, holdout=4)
    else:
        pattern = simulate_pattern(128, seed=900_001, shape_name="wulff", oversampling=8.0, peak_counts=1e6,
                                   phase="random", phase_amplitude=0.5)
        from bcdi_gapfill.core.geometry import synthetic_gap_mask
        gap = synthetic_gap_mask(pattern.counts.shape, "cross", 6)  # a chip cross through the peak
        options = {}                                                 # the defaults
    data = np.where(gap, 0, pattern.counts).astype(np.float32)       # what the detector gives
    data_file = out_dir / "scan.npy"
    np.save(data_file, data)
    print(f"pattern {data.shape}, {int(gap.sum())} gap voxels; data written to {data_file}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)               # the summary says it in words
        result = finetune(data, gap, revert_if_worse=False, **options)
    print(result.summary())
    weights = finetuned_weights_path(data_file)
    save_finetuned(result, weights, overwrite=True, protect=[data_file], extra={"data": str(data_file)})
    print(f"tuned weights: {weights} (reuse: bcdi-gapfill inpaint {data_file.name} --gap ... --weights "
          f"{weights.name})")

    shipped = inpaint(data, gap, num_threads=1)
    tuned = inpaint(data, gap, model=weights, num_threads=1)
    print(f"real-gap PCC (log1p) vs truth: shipped {pcc_gap(pattern.expected, shipped, gap):.5f}, "
          f"fine-tuned {pcc_gap(pattern.expected, tuned, gap):.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
