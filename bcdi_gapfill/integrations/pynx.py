"""PyNX integration: a CDI operator that fills the detector gaps, and a PyNX input writer.

``InpaintGaps`` is a PyNX operator (a subclass of ``pynx.cdi.cdi.OperatorCDI``) that composes
with PyNX's own operators::

    from pynx.cdi import CDI, ER, HIO
    from bcdi_gapfill.integrations.pynx import InpaintGaps

    cdi = CDI(np.fft.fftshift(iobs), mask=np.fft.fftshift(mask))
    cdi = ER() ** 20 * HIO() ** 50 * InpaintGaps() * cdi      # InpaintGaps runs first

:func:`write_pynx_input` needs no PyNX: it writes the ``.cxi`` (or ``.npz``) input of PyNX's
command-line runner (``pynx-id01cdi.py`` in PyNX 2022.1, ``pynx-cdi-id01`` in later
releases) from an intensity and a mask, e.g. after :func:`bcdi_gapfill.fill.inpainting.inpaint`.

``import bcdi_gapfill`` never imports PyNX, and neither does importing this module:
PyNX is imported when ``InpaintGaps`` is first accessed, and a missing PyNX raises an
ImportError that says so.

How PyNX stores the mask
------------------------
PyNX's ``CDI`` keeps the mask inside ``iobs`` (float32, fft-shifted: the Bragg peak in the
array corner; ``cdi.get_iobs(shift=True)`` gives the centred, detector-frame array):

* ``iobs >= 0``: observed intensity;
* ``-1e19 < iobs < 0``: observed, kept aside for the free log-likelihood, stored as
  ``-(I + 1)``;
* ``-1e38 < iobs <= -1e19``: masked, with an *estimated* intensity stored as
  ``-(I_est + 1) * 1e19`` (:func:`encode_estimates` / :func:`decode_estimates`);
* ``iobs <= -1e38``: masked, no information (PyNX writes ``-1.05e38``).

Tested with
-----------
ESRF PyNX 2022.1, CPU build (``pynx.cdi.cpu_operator``; the wheel of ``shared/third_party``,
patched only for numpy 2), numpy 2.4, in ``tests/test_pynx_operator.py`` and
``tests/test_pynx_parity.py``. Later releases (2023.x, 2024.x) keep the ``CDI`` object and
the ``OperatorCDI`` base class this module relies on, but were not tested. What differs on
GPU builds (CUDA/OpenCL operators, not tested here):

* The estimated-value projection exists only in the GPU operators: their
  ``ApplyAmplitude``/``ER``/``HIO``/``RAAR`` (``CalcAmplitudeScale`` in PyNX's
  ``cdi/cuda/apply_amplitude_elw.cu`` and its OpenCL twin) pull a masked voxel whose
  ``iobs`` lies in ``]-1e38, -1e19]`` towards ``[confidence_interval_factor_mask_min,
  confidence_interval_factor_mask_max] * I_est`` (PyNX defaults 0.5 and 1.2) and leave it
  free inside that band; ``iobs <= -1e38`` and free-LLK voxels stay free. The CPU
  ``ApplyAmplitude`` sets the scale to 1 on every ``iobs < 0`` voxel (masked, estimated and
  free-LLK alike), so ``mode="estimate"`` changes nothing in a CPU reconstruction;
  ``mode="replace"`` does, on every build.
* GPU operators upload ``iobs`` again when the CDI object's timestamp changed, which this
  operator bumps, so the filled ``iobs`` reaches the GPU for the next operator.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from bcdi_gapfill.core import io as gio
from bcdi_gapfill.core.geometry import gap_mask_from_mask
from bcdi_gapfill.core.methods import CLASSICAL_FILLS, FILLS
from bcdi_gapfill.fill.inpainting import inpaint

__all__ = ["InpaintGaps", "write_pynx_input", "encode_estimates", "decode_estimates", "MODES",
           "PYNX_MASKED", "TESTED_PYNX_VERSIONS"]

#: Modes of :class:`InpaintGaps`.
MODES = ("replace", "estimate")
#: Value PyNX writes in ``iobs`` for a masked voxel with no estimate (``CDI.set_mask``).
PYNX_MASKED = np.float32(-1.05e38)
#: PyNX versions this module was tested with.
TESTED_PYNX_VERSIONS = ("2022.1",)
# Thresholds compared in float32, as PyNX (float32 iobs) and its GPU kernels compare them.
_MASKED_MAX = np.float32(-1e19)      # iobs <= this: masked
_NO_ESTIMATE_MAX = np.float32(-1e38)  # iobs <= this: masked without an estimate
# Largest intensity that still encodes inside ]-1e38, -1e19].
_MAX_ESTIMATE = 1e18


def encode_estimates(intensity: np.ndarray) -> np.ndarray:
    """PyNX's encoding of estimated intensities of masked voxels: ``-(I + 1) * 1e19``.

    Returns float32 values in ``]-1e38, -1e19]`` (negative intensities are read as 0).
    """
    values = np.clip(np.asarray(intensity, dtype=np.float64), 0.0, _MAX_ESTIMATE)
    encoded = (-(values + 1.0) * 1e19).astype(np.float32)
    # float32 rounding must never leave the band
    return np.clip(encoded, np.nextafter(_NO_ESTIMATE_MAX, np.float32(0)), _MASKED_MAX)


def decode_estimates(iobs: np.ndarray) -> np.ndarray:
    """Estimated intensities of values encoded by :func:`encode_estimates` (float64)."""
    return -np.asarray(iobs, dtype=np.float64) / 1e19 - 1.0


def _missing_pynx(exc: BaseException) -> ImportError:
    return ImportError(
        "bcdi_gapfill.integrations.pynx.InpaintGaps needs ESRF PyNX (pynx.cdi), which cannot be imported "
        f"({type(exc).__name__}: {exc}). Install PyNX (tested with {', '.join(TESTED_PYNX_VERSIONS)}; see "
        "http://ftp.esrf.fr/pub/scisoft/PyNX/), or phase without it: write_pynx_input() and "
        "bcdi_gapfill.fill.inpainting.inpaint() do not need PyNX.")


def _build_operator_class() -> type:
    try:
        from pynx.cdi.cdi import OperatorCDI
    except ImportError as exc:
        raise _missing_pynx(exc) from exc

    class InpaintGaps(OperatorCDI):
        """PyNX operator filling the detector-gap voxels of a ``CDI`` object's ``iobs``.

        Parameters
        ----------
        method : str
            ``"model"`` (the patching U-Net, shipped weights unless ``model`` is given) or a
            classical fill of :func:`bcdi_gapfill.fill.inpainting.inpaint` (``"biharmonic"``, ...).
        mode : {"replace", "estimate"}
            ``replace``: gap voxels become observed data (``iobs >= 0``), constraining every
            PyNX build. ``estimate``: gap voxels stay masked but carry the prediction as
            estimated values (``-(I + 1) * 1e19``), used by the GPU operators' loose
            projection only (see the module docstring).
        model : path or PatchUNet, optional
            Weights file or model for ``method="model"`` (loaded when the operator is applied).
        stride : int, optional
            Window stride along the gap (see :func:`bcdi_gapfill.fill.inpainting.inpaint`).
        uncertainty_threshold : float, optional
            With ``method="model"``: gap voxels whose prediction spread (standard deviation
            of ``log1p(counts)`` over the overlapping windows, and the flips with
            ``flips=True``) exceeds this stay fully masked (``iobs = -1.05e38``).
        gap_mask : bool ndarray, optional
            The gap, in the detector (centred) frame of ``cdi.get_iobs(shift=True)``, the
            frame of bcdi's arrays. Only voxels masked in ``iobs`` are filled. Default: the
            detector pixels masked in every frame (:func:`bcdi_gapfill.core.geometry.gap_mask_from_mask`
            on ``iobs <= -1e19``).
        **inpaint_kwargs
            Passed to :func:`bcdi_gapfill.fill.inpainting.inpaint` (``device``, ``batch_size``,
            ``blend``, ``flips``).

        Notes
        -----
        Free-LLK voxels (``-1e19 < iobs < 0``) are left exactly as they are, and the filler
        reads them as the observed intensities they encode. Masked voxels outside the gap
        are left as they are and read as 0 photons. After the operator,
        ``cdi.nb_observed_points``, ``cdi.nb_free_points`` and ``cdi.iobs_sum`` are
        recomputed, and the counts of the last application are in ``self.last_stats``.
        Applied again in ``replace`` mode it finds no gap (the voxels are observed now) and
        does nothing.

        Tested with PyNX 2022.1 (CPU build). On CPU builds every ``iobs < 0`` voxel is left
        free by the projections, so only ``mode="replace"`` changes a CPU reconstruction;
        the estimated-value projection of ``mode="estimate"`` exists only in the GPU
        (CUDA/OpenCL) operators (see the module docstring).
        """

        def __init__(self, method: str = "model", mode: str = "replace", model: Any = None,
                     stride: int | None = None, uncertainty_threshold: float | None = None,
                     gap_mask: np.ndarray | None = None, **inpaint_kwargs: Any):
            super().__init__()
            if method not in FILLS:
                raise ValueError(f"unknown method {method!r}; choose 'model' or one of {CLASSICAL_FILLS}")
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
            if uncertainty_threshold is not None:
                if method != "model":
                    raise ValueError("uncertainty_threshold needs method='model': a classical fill has no "
                                     "uncertainty")
                if not np.isfinite(uncertainty_threshold) or uncertainty_threshold < 0:
                    raise ValueError(f"uncertainty_threshold must be finite and >= 0, got {uncertainty_threshold!r}")
            if "return_uncertainty" in inpaint_kwargs:
                raise TypeError("return_uncertainty is set by InpaintGaps itself")
            if gap_mask is not None:
                gap_mask = np.asarray(gap_mask)
                if gap_mask.dtype != bool:
                    raise TypeError(f"gap_mask must be a boolean array, got dtype {gap_mask.dtype}")
                if gap_mask.ndim != 3:
                    raise ValueError(f"gap_mask must be 3D (frames, rows, columns), got shape {gap_mask.shape}")
            self.method = method
            self.mode = mode
            self.model = model
            self.stride = stride
            self.uncertainty_threshold = uncertainty_threshold
            self.gap_mask = gap_mask
            self.inpaint_kwargs = dict(inpaint_kwargs)
            self.last_stats: dict[str, int] = {}

        def op(self, cdi):

            iobs = np.asarray(cdi.get_iobs(shift=False))
            if iobs.ndim != 3:
                raise ValueError(f"InpaintGaps works on 3D data (frames, rows, columns), got iobs of shape "
                                 f"{iobs.shape}")
            # detector frame; numpy's fftshift/ifftshift pair is exact for odd sizes too
            centred = np.fft.fftshift(iobs).astype(np.float32)
            masked = centred <= _MASKED_MAX
            free = (centred > _MASKED_MAX) & (centred < 0)
            if self.gap_mask is not None:
                if self.gap_mask.shape != centred.shape:
                    raise ValueError(f"gap_mask shape {self.gap_mask.shape} differs from iobs shape {centred.shape}")
                gap = self.gap_mask & masked
            else:
                gap = gap_mask_from_mask(masked)
            stats = {"gap_voxels": int(gap.sum()), "filled": 0, "left_masked_uncertain": 0,
                     "free_voxels": int(free.sum())}
            if not gap.any():
                self.last_stats = stats
                return cdi

            counts = centred.astype(np.float32, copy=True)
            counts[free] = -(counts[free] + 1.0)
            counts[masked] = 0.0
            np.maximum(counts, 0.0, out=counts)
            filled, uncertainty = inpaint(counts, gap, method=self.method, model=self.model, stride=self.stride,
                                          return_uncertainty=True, **self.inpaint_kwargs)
            new = centred.copy()
            prediction = filled[gap]
            new[gap] = prediction if self.mode == "replace" else encode_estimates(prediction)
            uncertain = np.zeros_like(gap)
            if self.uncertainty_threshold is not None:
                uncertain = gap & (uncertainty > self.uncertainty_threshold)
                new[uncertain] = PYNX_MASKED
            cdi.set_iobs(np.ascontiguousarray(np.fft.ifftshift(new)), shift=False)
            # set_iobs sums only iobs > 0; restore the constructor's sum, free voxels included
            stored = cdi.get_iobs(shift=False)
            free_stored = (stored > _MASKED_MAX) & (stored < 0)
            cdi.iobs_sum = float(stored[stored >= 0].sum() - (stored[free_stored] + 1).sum())
            if hasattr(cdi, "_update_nb_points"):
                cdi._update_nb_points()
            stats["left_masked_uncertain"] = int(uncertain.sum())
            stats["filled"] = stats["gap_voxels"] - stats["left_masked_uncertain"]
            self.last_stats = stats
            return cdi

    InpaintGaps.__module__ = __name__
    InpaintGaps.__qualname__ = "InpaintGaps"
    return InpaintGaps


def __getattr__(name: str) -> Any:
    if name == "InpaintGaps":
        cls = _build_operator_class()
        globals()["InpaintGaps"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def write_pynx_input(path: str | os.PathLike, data: np.ndarray, mask: np.ndarray | None = None, *,
                     overwrite: bool = False, protect: Any = None) -> dict[str, Any]:
    """Write the input of PyNX's CDI command-line runner.

    Parameters
    ----------
    path : path
        ``.cxi`` (recommended): one file in the layout of PyNX's ``save_cdi_data_cxi``,
        intensity in ``entry_1/instrument_1/detector_1/data`` and the mask (int8, 1 =
        masked) in ``entry_1/instrument_1/detector_1/mask``, which the runner loads by
        itself. ``.npz``: the intensity under ``data`` in ``path`` and the mask under
        ``mask`` in ``<stem>_mask.npz`` beside it (the runner reads an npz mask only from
        its ``mask=`` argument).
    data : ndarray, shape (frames, rows, columns)
        Intensity in the detector (centred) frame, as bcdi saves it; e.g. the output of
        :func:`bcdi_gapfill.fill.inpainting.inpaint`.
    mask : ndarray, optional
        Nonzero where masked (after gap filling, the gap voxels are 0).
    overwrite : bool
        Replace existing files.
    protect : path or paths, optional
        Inputs never to write over.

    Returns
    -------
    dict ``{"data": Path, "mask": Path or None, "args": list of str}``
        ``args`` are the runner arguments, e.g. ``["data=/x/S1.cxi"]`` or
        ``["data=/x/S1.npz", "mask=/x/S1_mask.npz"]``:
        ``pynx-id01cdi.py data=/x/S1.cxi ...`` (PyNX 2022.1), ``pynx-cdi-id01 ...`` (later).
    """

    dest = Path(path)
    suffix = dest.suffix.lower()
    if suffix not in (".cxi", ".npz"):
        raise ValueError(f"{dest}: PyNX input must be .cxi or .npz, got {dest.suffix!r}")
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"data must be 3D (frames, rows, columns), got shape {data.shape}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != data.shape:
            raise ValueError(f"mask shape {mask.shape} differs from data shape {data.shape}")
    if suffix == ".cxi":
        written = gio.save_array(dest, data, mask=mask, overwrite=overwrite, protect=protect)
        return {"data": written, "mask": None, "args": [f"data={written.resolve()}"]}
    mask_dest = dest.with_name(dest.stem + "_mask.npz") if mask is not None else None
    if mask_dest is not None and not overwrite and os.path.lexists(mask_dest):
        raise FileExistsError(f"{mask_dest} exists; pass overwrite=True to replace it")
    written = gio.save_array(dest, data, overwrite=overwrite, protect=protect)
    args = [f"data={written.resolve()}"]
    if mask_dest is not None:
        import io as _pyio
        buffer = _pyio.BytesIO()
        np.savez_compressed(buffer, mask=(mask != 0).astype(np.int8))
        gio.atomic_write_bytes(mask_dest, buffer.getvalue(), overwrite=overwrite, protect=protect)
        args.append(f"mask={mask_dest.resolve()}")
    return {"data": written, "mask": mask_dest, "args": args}
