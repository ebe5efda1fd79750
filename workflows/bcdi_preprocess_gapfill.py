"""bcdi's own preprocessing of a scan, with the detector-chip gap filled for PyNX, phased and reported.

Runs ``bcdi_preprocess_BCDI.py``'s work (bcdi's ConfigParser and its entry function
``preprocessing_runner.run``) on a bcdi preprocessing YAML that has an extra ``gapfill:``
section. bcdi writes ``S<scan>_pynx<comment>.npz`` / ``S<scan>_maskpynx<comment>.npz`` as
usual; right after that save, bcdi's final in-memory data and mask get the gap filled, and
``..._gapfilled.npz`` copies and a JSON record are written next to them. With a ``report:``
section (the shipped YAML has one), each scan is then phased (the filled data, the gap left
free, the gap zero-filled, same starts) and ``report.html``/``report.json`` are written, by
:func:`bcdi_gapfill.workflow.pipeline.run_workflow`. Everything is done by
:mod:`bcdi_gapfill.workflow.bcdi_preprocess` (read its docstring for the insertion point and the
``gapfill:`` and ``report:`` keys); this script only names its configuration.

Run: ``python workflows/bcdi_preprocess_gapfill.py --config_file my_scan.yml [bcdi's options,
e.g. --scans 11,12] [--overwrite]``. Without ``--config_file`` it uses the YAML next to it;
``--simulate`` first writes a simulated Maxipix scan where that YAML points, so
``python workflows/bcdi_preprocess_gapfill.py --simulate`` runs without beamline data.
See workflows/README.md.
"""
import sys
from pathlib import Path

from bcdi_gapfill.cli.bcdi_preprocess import main

if __name__ == "__main__":
    sys.exit(main(prog=Path(__file__).name, default_config=Path(__file__).with_suffix(".yml")))
