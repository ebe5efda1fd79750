"""Layer 1, ``core``: arrays and files, no model. Detector geometry and gap masks
(`geometry`), reading and atomic writing of data (`io`), metrics of patterns and
reconstructions (`metrics`) and the crystal simulator (`simulate`). Imports nothing else of
the package."""
