"""The checks of user input at the package's public edge, with one set of rules and messages."""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_pattern"]


def check_pattern(data: Any, gap_mask: Any) -> tuple[np.ndarray, np.ndarray]:
    """Check a diffraction pattern and its gap mask at a public entry point.

    Parameters
    ----------
    data : array_like, shape (frames, rows, columns)
        Photon counts: real numbers, finite, >= 0, within the float32 range; not a masked array.
    gap_mask : bool array_like, same shape
        True where the detector measured nothing; at least one voxel must be measured.

    Returns
    -------
    data, gap_mask : ndarray
        The inputs as arrays (not copied when they already are). Raises TypeError (wrong type
        or dtype) or ValueError (wrong shape or values) with a message naming the problem.
    """
    if not isinstance(data, np.ndarray):
        try:
            data = np.asarray(data)
        except Exception:
            raise TypeError(f"data must be a numpy array, got {type(data).__name__}") from None
    if data.dtype == object or not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)
                                    or data.dtype == bool):
        raise TypeError(f"data must hold real numbers (photon counts), got dtype {data.dtype}")
    if np.ma.isMaskedArray(data):
        raise TypeError("data must be a plain ndarray, not a masked array (its mask would be ignored): pass "
                        "data.filled(0) and put the masked voxels in gap_mask")
    if data.ndim != 3:
        raise ValueError(f"data must be 3D (frames, rows, columns), got {data.ndim}D with shape {data.shape}")
    if data.size == 0:
        raise ValueError(f"data is empty (shape {data.shape})")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise ValueError(f"data holds {bad} NaN or infinite values; replace them and mark them in gap_mask")
    if (data < 0).any():
        raise ValueError(f"data holds {int((data < 0).sum())} negative values (min {data.min()}); PyNX marks "
                         "masked pixels with negative intensities: pass them through gap_mask instead")
    if data.dtype.kind == "f" and data.dtype.itemsize > 4 and data.max() > np.finfo(np.float32).max:
        raise ValueError(f"data holds values up to {float(data.max()):.4g}, beyond the float32 range of the "
                         f"result ({float(np.finfo(np.float32).max):.4g}): rescale the data")
    gap = np.asarray(gap_mask)
    if gap.dtype != bool:
        raise TypeError(f"gap_mask must be a boolean array, got dtype {gap.dtype}")
    if gap.shape != data.shape:
        raise ValueError(f"gap_mask shape {gap.shape} does not match data shape {data.shape}")
    if gap.all():
        raise ValueError("gap_mask covers every voxel: there is nothing measured to inpaint from")
    return data, gap
