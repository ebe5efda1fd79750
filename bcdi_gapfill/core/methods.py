"""The registry of method names: what each fill and each gap treatment is called, once.

Two vocabularies, because they name two different things:

* a **fill** is what :func:`bcdi_gapfill.inpaint` puts in the gap voxels
  (``inpaint(method=...)``): `FILLS`;
* a **treatment** is how phase retrieval sees the gap (`validate`, `assess`, the reports):
  a fill handed over as data, a fill released over the iterations, the voxels left free...:
  `TREATMENTS`. `TREATMENT_OF_FILL` and `FILL_OF_TREATMENT` translate between them.
"""
from __future__ import annotations

__all__ = ["MODEL_FILL", "CLASSICAL_FILLS", "FILLS", "TREATMENTS", "DEFAULT_TREATMENTS", "MODEL_TREATMENTS",
           "TREATMENT_OF_FILL", "FILL_OF_TREATMENT", "TREATMENT_LABELS", "TREATMENT_COLORS"]

#: The learned fill (the patching U-Net).
MODEL_FILL = "model"
#: The classical fills of `bcdi_gapfill.fill.classical.fill_gap` (``biharmonic`` in log space).
CLASSICAL_FILLS = ("biharmonic", "linear", "cubic", "nearest", "zero")
#: Every value of ``inpaint(method=...)``.
FILLS = (MODEL_FILL, *CLASSICAL_FILLS)

#: Every gap treatment `validate` knows, in the order of the report.
TREATMENTS = ("inpaint", "inpaint+release", "hybrid", "model+gp", "biharmonic", "biharmonic+gp", "gp",
              "free_pixels", "zero_fill", "linear_interp", "no_gap")
#: The treatments run when none are named: all but the uncertainty and band-limit ones.
DEFAULT_TREATMENTS = ("inpaint", "inpaint+release", "biharmonic", "free_pixels", "zero_fill", "linear_interp",
                      "no_gap")
#: Treatments that need the model (skipped together when the default weights are missing).
MODEL_TREATMENTS = ("inpaint", "inpaint+release", "hybrid", "model+gp")
#: The treatment that hands a fill to phase retrieval as data.
TREATMENT_OF_FILL = {"model": "inpaint", "biharmonic": "biharmonic", "linear": "linear_interp"}
#: The classical fill behind a fill-as-data treatment.
FILL_OF_TREATMENT = {"biharmonic": "biharmonic", "zero_fill": "zero", "linear_interp": "linear"}
#: How reports name each treatment.
TREATMENT_LABELS = {"inpaint": "DL inpainting", "inpaint+release": "DL, released in PR", "biharmonic": "biharmonic",
                    "free_pixels": "free pixels", "zero_fill": "zero fill", "linear_interp": "linear interp.",
                    "no_gap": "no gap (reference)", "hybrid": "hybrid (DL + free)", "model+gp": "DL + band limit",
                    "biharmonic+gp": "biharmonic + band limit", "gp": "band limit from zeros"}
#: The colour of each treatment in the report's figures (matplotlib names).
TREATMENT_COLORS = {"inpaint": "tab:red", "inpaint+release": "darkred", "biharmonic": "tab:blue",
                    "free_pixels": "tab:orange", "zero_fill": "tab:green", "linear_interp": "tab:purple",
                    "no_gap": "0.3", "hybrid": "tab:brown", "model+gp": "tab:pink", "biharmonic+gp": "tab:cyan",
                    "gp": "tab:olive"}
