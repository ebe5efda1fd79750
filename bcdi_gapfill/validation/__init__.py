"""Layer 5, ``validation``: how well a gap treatment serves phase retrieval. `core.validate`
(simulated crystal or the user's object, with the report), the per-scan self-check
(`selfcheck.assess`), the evaluation tables (`evaluate`) and the cdiutils-simulated scans
(`scans`). Imports ``core``, ``nn``, ``fill`` and ``phasing``."""
