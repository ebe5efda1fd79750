"""ID01 Maxipix scan: bcdi output pair -> gap filling -> phase retrieval -> report.

Reads bcdi's preprocessing output (``S<scan>_pynx*.npz`` and ``S<scan>_maskpynx*.npz``, the
paths in the YAML), or makes such a pair from a simulated crystal on the Maxipix gap layout
when the YAML has a ``simulate:`` section (the shipped configuration does, so this runs
without beamline data); fills the chip gaps with the bcdi stage; phases the filled data and
the two baselines (gap left free, gap zero-filled) with the same settings; writes
``report.html`` and ``report.json``. Everything is done by :mod:`bcdi_gapfill.workflow.pipeline`;
this script only names its configuration.

Run: ``python workflows/id01_maxipix.py [--config workflows/id01_maxipix.yml] [--out DIR]
[--set KEY=VALUE ...] [--overwrite]``. See workflows/README.md.
"""
import sys
from pathlib import Path

from bcdi_gapfill.cli.workflow import main

if __name__ == "__main__":
    sys.exit(main(prog=Path(__file__).name, default_config=Path(__file__).with_suffix(".yml"),
                  description=__doc__.splitlines()[0]))
