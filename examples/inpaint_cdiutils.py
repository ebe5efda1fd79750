"""Fill the Maxipix chip gap of a cdiutils ``BcdiPipeline`` scan, between preprocess and phasing.

1. cdiutils' own simulator (``BCDISimulator``: ID01 geometry, the Maxipix mask with its chip
   cross) makes a scan with the Bragg peak a few pixels from the cross, written as the ID01
   (BLISS) file entries cdiutils reads (``bcdi_gapfill.validation.scans``; no download);
2. the real ``BcdiPipeline.preprocess()`` crops it and saves ``pynx_phasing/S1_pynx_input_*.npz``;
3. the one line ``fill_pipeline_gaps(pipeline)`` writes the gap-filled pair into
   ``pynx_phasing_gapfilled/`` (originals kept) and points the pipeline at it;
4. ``pipeline.phase_retrieval(...)`` then phases the filled data: it runs here only where
   cdiutils' PyNX command ``pynx-cdi-id01`` is installed; otherwise the example prints what
   it would read.

Run: ``python examples/inpaint_cdiutils.py [OUT_DIR]`` (default: a temporary directory); needs
``pip install cdiutils``. With ``BCDI_GAPFILL_EXAMPLE_FAST=1`` it uses a 32 x 64 x 64 crop
and the biharmonic fill (no weights), instead of 64 x 128 x 128 and the shipped model.
"""
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

FAST = os.environ.get("BCDI_GAPFILL_EXAMPLE_FAST") == "1"
SHAPE = (32, 64, 64) if FAST else (64, 128, 128)
METHOD = "biharmonic" if FAST else "model"


def run(directory: Path) -> int:
    import matplotlib
    matplotlib.use("Agg")                       # preprocess saves its figures as PNG
    from cdiutils.pipeline import BcdiPipeline

    from bcdi_gapfill.integrations.cdiutils import fill_pipeline_gaps, pipeline_input_paths
    from bcdi_gapfill.core.geometry import gap_mask_from_mask
    from bcdi_gapfill.fill.inpainting import inpaint
    from bcdi_gapfill.core.metrics import pcc_gap
    from bcdi_gapfill.validation.scans import simulate_cdiutils_scan, write_id01_master_file

    scan = simulate_cdiutils_scan(3, SHAPE, full_detector=True)
    params = write_id01_master_file(scan, directory / "sim.h5", overwrite=True)
    pipeline = BcdiPipeline({**params, "dump_dir": str(directory / "S1"), "preprocess_shape": SHAPE,
                             "voxel_reference_methods": ["max"], "show": False})
    pipeline.preprocess()
    originals = pipeline_input_paths(pipeline)

    paths = fill_pipeline_gaps(pipeline, method=METHOD, overwrite=True)        # the stage

    # The filled voxels against what the simulator counted in the gap.
    r0, r1, c0, c1 = pipeline.converter.roi
    truth = scan.truth[:, r0:r1, c0:c1]
    with np.load(originals["data"]) as data, np.load(originals["mask"]) as mask:
        original, gap = data["data"], gap_mask_from_mask(mask["data"])
    with np.load(paths["data"]) as out:
        filled = out["data"]
    linear = inpaint(original, gap, method="linear")
    print(f"filled {int(gap.sum())} gap voxels with {METHOD}; in-gap PCC (log1p) vs the simulator's "
          f"counts: {METHOD} {pcc_gap(truth, filled, gap):.3f}, linear {pcc_gap(truth, linear, gap):.3f}")
    print(f"phase_retrieval now reads {pipeline.pynx_phasing_dir}S1_pynx_input_data.npz "
          f"(originals kept in {originals['data'].parent})")
    if shutil.which("pynx-cdi-id01"):
        pipeline.phase_retrieval(nb_run=1, nb_run_keep=1)
    else:
        print("pynx-cdi-id01 not found: skipping pipeline.phase_retrieval()")
    return 0


def main() -> int:
    try:
        import cdiutils  # noqa: F401
    except ImportError:
        print("cdiutils is not installed (pip install 'cdiutils>=0.2.1'); nothing to run")
        return 0
    if len(sys.argv) > 1:
        out = Path(sys.argv[1])
        out.mkdir(parents=True, exist_ok=True)
        return run(out)
    with tempfile.TemporaryDirectory() as tmp:
        return run(Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
