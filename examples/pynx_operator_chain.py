"""Fill the detector gaps inside a PyNX phase-retrieval chain with the InpaintGaps operator.

``bcdi_gapfill.integrations.pynx.InpaintGaps`` is a PyNX CDI operator, so it composes with PyNX's own::

    cdi = ER() ** 20 * HIO() ** 50 * InpaintGaps() * cdi

It reads the mask PyNX keeps inside ``iobs``, finds the detector gap (pixels masked in every
frame), and either makes the gap voxels observed data (``mode="replace"``) or stores the
prediction as PyNX "estimated" masked values (``mode="estimate"``, used by GPU operators
only). Free-LLK pixels are left alone. The example also writes the gap-filled data as a
``.cxi`` input for PyNX's command-line runner with ``write_pynx_input``.

Needs ESRF PyNX; without it the script prints a message and exits with status 0.
Run: ``python examples/pynx_operator_chain.py``. With ``BCDI_GAPFILL_EXAMPLE_FAST=1`` it uses
64^3, the biharmonic fill and few cycles (no weights needed).
"""
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

FAST = os.environ.get("BCDI_GAPFILL_EXAMPLE_FAST") == "1"
SIZE = 64 if FAST else 128
METHOD = "biharmonic" if FAST else "model"
N_ER, N_HIO = (5, 10) if FAST else (20, 50)


def main() -> int:
    try:
        from pynx.cdi import CDI, ER, HIO, AutoCorrelationSupport
    except ImportError as exc:
        print(f"PyNX is not installed ({exc}); this example needs ESRF PyNX (pynx.cdi). Skipping.")
        return 0
    from bcdi_gapfill.core.geometry import detector_gap_mask
    from bcdi_gapfill.integrations.pynx import InpaintGaps, write_pynx_input
    from bcdi_gapfill.core.simulate import simulate_pattern

    counts = simulate_pattern(SIZE, seed=2, peak_counts=1e5).counts
    roi = [258 - SIZE // 2, 258 + SIZE // 2] * 2
    gap = detector_gap_mask("Maxipix", SIZE, roi=roi)
    iobs = counts.copy()
    iobs[gap] = 0

    # PyNX works on fft-shifted arrays (Bragg peak in the corner)
    cdi = CDI(np.fft.fftshift(iobs), mask=np.fft.fftshift(gap.astype(np.int8)))
    cdi.init_free_pixels(ratio=0.02)
    observed_before = int(cdi.nb_observed_points)
    fill = InpaintGaps(method=METHOD, mode="replace")
    cdi = AutoCorrelationSupport() * cdi
    try:
        cdi = ER() ** N_ER * HIO() ** N_HIO * fill * cdi
    except FileNotFoundError as exc:
        print(f"{exc}\nrun with BCDI_GAPFILL_EXAMPLE_FAST=1 for the biharmonic fill", file=sys.stderr)
        return 1
    print(f"chain {ER() ** N_ER * HIO() ** N_HIO * fill}: filled {fill.last_stats['filled']} gap voxels "
          f"({METHOD}); observed points {observed_before} -> {int(cdi.nb_observed_points)}; "
          f"free-LLK points kept: {int(cdi.nb_free_points)}")
    obj = cdi.get_obj(shift=True)
    print(f"object after {N_HIO} HIO + {N_ER} ER: max |obj| {np.abs(obj).max():.3g}, "
          f"support {int(cdi.get_support().sum())} voxels")

    # The same data as an input file of PyNX's command-line runner
    stored = cdi.get_iobs(shift=True)
    masked = stored <= np.float32(-1e19)
    data = np.where(stored >= 0, stored, -(stored + 1))  # free-LLK pixels hold -(I + 1)
    data[masked] = 0
    with tempfile.TemporaryDirectory() as tmp:
        written = write_pynx_input(Path(tmp) / "S2_gapfilled.cxi", data, masked.astype(np.int8))
        print("PyNX runner input written; run e.g.: pynx-id01cdi.py " + " ".join(written["args"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
