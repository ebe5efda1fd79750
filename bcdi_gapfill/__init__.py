"""bcdi-gapfill: restore the intensity lost in detector-chip gaps of 3D BCDI patterns.

Arrays follow bcdi's (frames, rows, columns) order throughout: axis 0 is the rocking-curve
frame, axes 1 and 2 are the detector rows and columns.

The public entry points are imported lazily so that ``import bcdi_gapfill`` stays light
(no torch import until a model is needed). No module of the package is named like a name
exported here: importing a submodule binds its name on the package, so a module
``bcdi_gapfill/inpaint.py`` would replace the function ``bcdi_gapfill.inpaint`` as soon as
anything imported it (``tests/test_public_api.py`` checks this for every exported name).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# exported name -> (module, attribute); a module's name must never be one of the keys
_LAZY = {
    "inpaint": ("bcdi_gapfill.fill.inpainting", "inpaint"),
    "simulate_pattern": ("bcdi_gapfill.core.simulate", "simulate_pattern"),
    "detector_gap_mask": ("bcdi_gapfill.core.geometry", "detector_gap_mask"),
    "synthetic_gap_mask": ("bcdi_gapfill.core.geometry", "synthetic_gap_mask"),
    "gap_mask_from_mask": ("bcdi_gapfill.core.geometry", "gap_mask_from_mask"),
    "fill_gap": ("bcdi_gapfill.fill.classical", "fill_gap"),
    "validate": ("bcdi_gapfill.validation.core", "validate"),
    "fill_bcdi_arrays": ("bcdi_gapfill.integrations.bcdi", "fill_bcdi_arrays"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # later accesses skip __getattr__
        return value
    raise AttributeError(f"module 'bcdi_gapfill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
