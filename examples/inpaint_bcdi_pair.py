"""Fill the chip gaps of a bcdi preprocessing output (the npz pair) with the file stage.

bcdi's preprocessing saves ``S<scan>_pynx<comment>.npz`` (entry ``data``) and
``S<scan>_maskpynx<comment>.npz`` (entry ``mask``, 1 = masked), with the chip gaps zeroed
and masked. This example writes such a pair (from a simulated pattern, Maxipix gap cross,
a hot pixel) into a temporary directory, then runs
``bcdi_gapfill.integrations.bcdi.fill_bcdi_files``, which writes ``..._gapfilled.npz`` copies
(gap filled and unmasked, the hot pixel still masked) and a JSON record, leaving the
originals untouched. The same from a shell:
``bcdi-gapfill bcdi S1_pynx_....npz S1_maskpynx_....npz``.

Run: ``python examples/inpaint_bcdi_pair.py [OUT_DIR]`` (default: a temporary directory).
With ``BCDI_GAPFILL_EXAMPLE_FAST=1`` it uses 64^3 and the biharmonic fill (no weights).
"""
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from bcdi_gapfill.integrations.bcdi import fill_bcdi_files
from bcdi_gapfill.core.geometry import detector_gap_mask
from bcdi_gapfill.core.simulate import simulate_pattern

FAST = os.environ.get("BCDI_GAPFILL_EXAMPLE_FAST") == "1"
SIZE = 64 if FAST else 128
METHOD = "biharmonic" if FAST else "model"


def write_bcdi_pair(directory: Path) -> tuple[Path, Path]:
    """Write a pair the way bcdi's preprocessing does (np.savez_compressed, float data, int mask)."""
    counts = simulate_pattern(SIZE, seed=5, peak_counts=1e5).counts.astype(np.float64)
    roi = [258 - SIZE // 2, 258 + SIZE // 2] * 2
    mask = detector_gap_mask("Maxipix", SIZE, roi=roi).astype(int)
    mask[:, 10, 12] = 1                                   # a hot pixel
    counts[mask != 0] = 0
    comment = f"_{SIZE}_{SIZE}_{SIZE}_1_1_1"
    data_path = directory / f"S1_pynx{comment}.npz"
    mask_path = directory / f"S1_maskpynx{comment}.npz"
    np.savez_compressed(data_path, data=counts)
    np.savez_compressed(mask_path, mask=mask)
    return data_path, mask_path


def run(directory: Path) -> int:
    data_path, mask_path = write_bcdi_pair(directory)
    try:
        paths = fill_bcdi_files(data_path, mask_path, method=METHOD, overwrite=True)
    except FileNotFoundError as exc:
        print(f"{exc}\nrun with BCDI_GAPFILL_EXAMPLE_FAST=1 for the biharmonic fill", file=sys.stderr)
        return 1
    record = json.loads(paths["record"].read_text())
    with np.load(paths["data"]) as npz, np.load(paths["mask"]) as npz_mask:
        data, mask = npz["data"], npz_mask["mask"]
    print(f"filled {record['gap_voxels_filled']} gap voxels with {record['method']} "
          f"(gap found from the {record['gap_source']})")
    for role, path in paths.items():
        print(f"  {role:6s} {path.name}")
    print(f"still masked: {int(mask.sum())} voxels (the hot pixel); data finite: {bool(np.isfinite(data).all())}")
    return 0


def main() -> int:
    if len(sys.argv) > 1:
        out = Path(sys.argv[1])
        out.mkdir(parents=True, exist_ok=True)
        return run(out)
    with tempfile.TemporaryDirectory() as tmp:
        return run(Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
