"""Drop-in gap-filling stage for bcdi's preprocessing.

bcdi (``bcdi.preprocessing``, run by ``bcdi_preprocess_BCDI.py`` with a YAML config) zeroes
and masks the detector-chip gaps while loading each frame (``Detector.mask_detector`` calls
the detector's ``_mask_gaps``), then crops/centres/bins the stack and saves
``S<scan>_pynx<comment>.npz`` (entry ``data``) and ``S<scan>_maskpynx<comment>.npz``
(entry ``mask``, 1 = masked). This module fills the gap voxels and releases them from the
mask, leaving every other masked voxel (hot pixels, aliens, saturated pixels) masked:

* :func:`fill_bcdi_arrays` -- in a script, on bcdi's in-memory ``data`` and ``mask``
  (e.g. right after ``analysis.data``/``analysis.mask`` are final, before saving);
* :func:`fill_bcdi_files` -- on the saved npz pair, writing ``..._gapfilled.npz`` copies and a
  JSON record next to them (the originals are never written);
* :func:`cmd_bcdi` -- the ``bcdi-gapfill bcdi DATA.npz MASK.npz`` command.

Where the gap is
----------------
With a ``detector`` (a bcdi ``Detector`` object, a bcdi detector name or a
:class:`bcdi_gapfill.core.geometry.DetectorLayout`) the gap is the detector's chip layout, cropped
to the ROI and binned (:func:`bcdi_gapfill.core.geometry.detector_gap_mask`), checked against the
mask: every layout gap voxel must be masked, otherwise the ROI/binning does not describe the
array (bcdi's ``center_fft`` crops or pads the stack after loading) and the stage refuses
rather than overwrite measured voxels. Without a detector the gap is recovered from the mask
(:func:`bcdi_gapfill.core.geometry.gap_mask_from_mask`: long straight lines of detector pixels
masked in every frame), which also works after centring and cropping.

Arrays are (frames, rows, columns), bcdi's order.
"""
from __future__ import annotations

import hashlib
import io as _pyio
import json
import os
import warnings
from numbers import Integral
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bcdi_gapfill import __version__
from bcdi_gapfill.core import geometry, io as gio
from bcdi_gapfill.fill.inpainting import default_model_info, inpaint

__all__ = ["fill_bcdi_arrays", "fill_bcdi_files", "output_paths", "save_filled_pair",]


# ------------------------------------------------------------------------------- helpers
def _is_bcdi_detector(obj: Any) -> bool:
    """Duck-typed test for a ``bcdi.experiment.detector.Detector`` instance."""
    return (not isinstance(obj, (str, geometry.DetectorLayout))
            and hasattr(obj, "unbinned_pixel_number") and hasattr(obj, "name") and hasattr(obj, "roi"))


def _int_tuple(values: Sequence[Any], n: int, name: str) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of {n} integers, got {values!r}")
    try:
        items = list(values)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of {n} integers, got {values!r}") from None
    if len(items) != n or any(isinstance(v, bool) or not isinstance(v, Integral) for v in items):
        raise ValueError(f"{name} must be {n} integers, got {values!r}")
    return tuple(int(v) for v in items)


def _detector_gap(detector: Any, shape: tuple[int, int, int], roi: Any, binning: Any) -> tuple[np.ndarray, dict]:
    """Gap of a detector layout for an array of ``shape``, and what it was built from."""
    if _is_bcdi_detector(detector):
        name = str(detector.name)
        if roi is None:
            roi = detector.roi
        if binning is None:
            # bcdi tracks the binning applied so far (preprocessing binning included) in
            # current_binning; the gap is the same in every frame, so only the detector
            # plane matters and the frames are taken as they are.
            current = getattr(detector, "current_binning", None) or detector.binning
            binning = (1, int(current[1]), int(current[2]))
        layout = geometry.get_detector(name)
    else:
        layout = geometry.get_detector(detector)
    binning = (1, 1, 1) if binning is None else _int_tuple(binning, 3, "binning")
    if roi is not None:
        roi = _int_tuple(roi, 4, "roi")
    try:
        gap = geometry.detector_gap_mask(layout, shape[0] * binning[0], roi=roi, binning=binning)
    except ValueError as exc:
        raise ValueError(f"cannot place the {layout.name} gap layout on the data: {exc}; omit the detector to "
                         "find the gap from the mask instead") from None
    if gap.shape != shape:
        raise ValueError(f"the {layout.name} gap layout with roi={list(roi) if roi else None} and binning="
                         f"{list(binning)} gives shape {gap.shape}, but the data have shape {shape}; the stack was "
                         "probably cropped or padded after loading (bcdi's centring): omit the detector to find the "
                         "gap from the mask instead")
    source = {"gap_source": "detector", "detector": layout.name,
              "roi": list(roi) if roi is not None else [0, layout.shape[0], 0, layout.shape[1]],
              "binning": list(binning)}
    return gap, source


def _state_dict_sha256(net: Any) -> str:
    digest = hashlib.sha256()
    for key, value in net.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _weights_record(model: Any) -> dict:
    """Which weights filled the gap: path and SHA-256 (of the file, or of the state dict)."""
    if model is None:
        info = default_model_info()
        return {"weights": info.get("weights"), "weights_sha256": info.get("sha256"), "weights_sha256_of": "file"}
    if isinstance(model, (str, os.PathLike)):
        return {"weights": str(Path(model).resolve()), "weights_sha256": gio.file_sha256(model),
                "weights_sha256_of": "file"}
    return {"weights": f"<in-memory {type(model).__name__}>", "weights_sha256": _state_dict_sha256(model),
            "weights_sha256_of": "state_dict"}


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


# ------------------------------------------------------------------------------ in memory
def fill_bcdi_arrays(data: np.ndarray, mask: np.ndarray | None, *, detector: Any = None,
                     roi: Sequence[int] | None = None, binning: Sequence[int] | None = None,
                     method: str = "model", model: Any = None, stride: int | None = None,
                     **inpaint_kwargs: Any) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fill the chip-gap voxels of bcdi's in-memory data and release them from the mask.

    Parameters
    ----------
    data : ndarray, shape (frames, rows, columns)
        bcdi's intensity (``analysis.data``), any real dtype; gap voxels hold anything
        (bcdi sets them to 0). Negative or non-finite values are read as 0 by the filler
        but kept as they are in the output outside the gap.
    mask : ndarray, same shape, or None
        bcdi's mask, nonzero where masked. May be None only with a ``detector``.
    detector : bcdi ``Detector``, str or DetectorLayout, optional
        Take the gap from this detector's layout. A bcdi ``Detector`` object gives its
        name, ``roi`` and (detector-plane) ``current_binning`` unless ``roi`` / ``binning``
        are passed. Default: the gap is found from the mask.
    roi : 4 ints, optional
        bcdi ROI ``[y_start, y_stop, x_start, x_stop]`` in unbinned pixels (with a detector).
    binning : 3 ints, optional
        Binning (frames, rows, columns) of ``data`` relative to the raw frames (with a
        detector name); default (1, 1, 1), or the detector object's current binning.
    method, model, stride, **inpaint_kwargs
        Passed to :func:`bcdi_gapfill.fill.inpainting.inpaint` (``device``, ``batch_size``,
        ``blend``, ``flips``, ``progress``). ``method="model"`` with ``model=None`` uses the
        shipped weights.

    Returns
    -------
    filled : ndarray, same shape
        ``data`` with the gap voxels filled (finite, >= 0). Same dtype as ``data`` when it
        is floating point, else float64 (bcdi's working dtype); every other voxel is
        bit-identical to ``data``.
    new_mask : ndarray, same shape and dtype as ``mask``
        ``mask`` with the gap voxels set to 0; other masked voxels stay masked.
    record : dict
        JSON-serialisable: package version, settings, gap source, number of voxels
        filled and, for ``method="model"``, the weights and their SHA-256.

    The inputs are never modified. When no gap is found a ``UserWarning`` is issued and
    copies are returned (``record["gap_voxels_filled"] == 0``).
    """
    if "return_uncertainty" in inpaint_kwargs:
        raise TypeError("fill_bcdi_arrays does not return an uncertainty; call bcdi_gapfill.fill.inpainting.inpaint "
                        "for that")
    data = np.asarray(data)
    if data.dtype == object or data.dtype.kind not in "biuf":
        raise TypeError(f"data must be a real numeric array, got dtype {data.dtype}")
    if data.ndim != 3:
        raise ValueError(f"data must be 3D (frames, rows, columns), got shape {data.shape}")
    shape = tuple(int(n) for n in data.shape)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype == object or mask.dtype.kind not in "biuf":
            raise TypeError(f"mask must be a numeric or boolean array, got dtype {mask.dtype}")
        if mask.shape != data.shape:
            raise ValueError(f"mask shape {mask.shape} differs from data shape {data.shape}")
    elif detector is None:
        raise ValueError("without a mask, pass a detector (its gap layout gives the gap)")

    if detector is not None:
        gap, source = _detector_gap(detector, shape, roi, binning)
        if mask is not None:
            unmasked = gap & (mask == 0)
            if unmasked.any():
                raise ValueError(f"{int(unmasked.sum())} voxels of the {source['detector']} gap layout (roi="
                                 f"{source['roi']}, binning={source['binning']}) are not masked: the layout does not "
                                 "match this array (cropped, padded or shifted after loading?). Omit the detector to "
                                 "find the gap from the mask, or fix roi/binning")
    else:
        if roi is not None or binning is not None:
            raise ValueError("roi and binning describe a detector layout: pass detector= with them")
        gap = geometry.gap_mask_from_mask(mask)
        source = {"gap_source": "mask"}

    out_dtype = data.dtype if data.dtype.kind == "f" else np.dtype(np.float64)
    filled = data.astype(out_dtype, copy=True)
    new_mask = np.zeros(shape, np.int8) if mask is None else mask.copy()
    record: dict[str, Any] = {
        "bcdi_gapfill_version": __version__,
        "stage": "bcdi",
        "method": method,
        "stride": stride,
        "inpaint_options": {k: _jsonable(v) for k, v in inpaint_kwargs.items()},
        **source,
        "shape": list(shape),
        "data_dtype": str(data.dtype),
        "output_dtype": str(out_dtype),
        "gap_pixels_per_frame": int(gap[0].sum()) if gap.size else 0,
        "gap_voxels_filled": int(gap.sum()),
    }
    if not gap.any():
        warnings.warn("no detector gap found (no line of detector pixels masked in every frame); the data and "
                      "mask are returned unchanged", UserWarning, stacklevel=2)
        return filled, new_mask, record


    # What the filler reads: bcdi's values, with non-finite and negative values (e.g. after
    # background subtraction) read as 0 photons. Gap values are never read.
    work = np.nan_to_num(data.astype(np.float32, copy=True), nan=0.0, posinf=0.0, neginf=0.0)
    np.maximum(work, 0.0, out=work)
    work[gap] = 0.0
    run_info: dict[str, Any] = {}
    result = inpaint(work, gap, method=method, model=model, stride=stride, run_info=run_info, **inpaint_kwargs)
    filled[gap] = result[gap].astype(out_dtype)
    new_mask[gap] = 0
    if method == "model":
        record.update(_weights_record(model))
        record["prefill"] = run_info.get("prefill")
    return filled, new_mask, record


# -------------------------------------------------------------------------------- on files
def output_paths(data_path: str | os.PathLike, mask_path: str | os.PathLike | None = None, *,
                 out_dir: str | os.PathLike | None = None, suffix: str = "_gapfilled") -> dict[str, Path]:
    """Where :func:`fill_bcdi_files` writes: ``{"data", "mask", "record"}``.

    ``S1_pynx_64_64_64_1_1_1.npz`` -> ``S1_pynx_64_64_64_1_1_1_gapfilled.npz`` (and the
    matching ``S1_maskpynx..._gapfilled.npz`` and ``S1_pynx..._gapfilled.json``), in
    ``out_dir`` (default: the data file's directory).
    """
    if not isinstance(suffix, str) or not suffix or os.sep in suffix or (os.altsep and os.altsep in suffix):
        raise ValueError(f"suffix must be a non-empty file-name fragment, got {suffix!r}")
    data_path = Path(data_path)
    directory = Path(out_dir) if out_dir is not None else data_path.parent
    data_stem = data_path.stem
    if mask_path is not None:
        mask_stem = Path(mask_path).stem
    elif "_pynx" in data_stem:
        mask_stem = data_stem.replace("_pynx", "_maskpynx", 1)
    else:
        mask_stem = data_stem + "_mask"
    paths = {"data": directory / f"{data_stem}{suffix}.npz",
             "mask": directory / f"{mask_stem}{suffix}.npz",
             "record": directory / f"{data_stem}{suffix}.json"}
    if paths["data"] == paths["mask"]:
        raise ValueError(f"the data and mask outputs would both be {paths['data']}: give files with different names")
    return paths


def fill_bcdi_files(data_path: str | os.PathLike, mask_path: str | os.PathLike | None = None, *,
                    out_dir: str | os.PathLike | None = None, suffix: str = "_gapfilled", overwrite: bool = False,
                    detector: Any = None, roi: Sequence[int] | None = None, binning: Sequence[int] | None = None,
                    method: str = "model", model: Any = None, stride: int | None = None,
                    data_key: str | None = None, mask_key: str | None = None,
                    **inpaint_kwargs: Any) -> dict[str, Path]:
    """Fill the gaps of a saved bcdi pair and write gap-filled copies.

    Parameters
    ----------
    data_path : path
        ``S<scan>_pynx<comment>.npz`` (entry ``data``), or any file
        :func:`bcdi_gapfill.core.io.load_data_and_mask` reads.
    mask_path : path, optional
        ``S<scan>_maskpynx<comment>.npz`` (entry ``mask``). Default: a mask stored in the
        data file.
    out_dir : path, optional
        Directory of the outputs (must exist); default the data file's directory.
    suffix : str
        Appended to the input names (see :func:`output_paths`).
    overwrite : bool
        Replace existing outputs; otherwise any existing output raises FileExistsError
        before anything is computed or written. The inputs are never written.
    detector, roi, binning, method, model, stride, **inpaint_kwargs
        As :func:`fill_bcdi_arrays`.
    data_key, mask_key : str, optional
        Entries to read when they are not ``data`` / ``mask``.

    Returns
    -------
    dict ``{"data": Path, "mask": Path, "record": Path}``
        The data npz holds only ``data`` and the mask npz only ``mask``, as bcdi writes them
        (bcdi's own loader takes the first entry), so both load with ``numpy.load`` and
        PyNX. The JSON record holds the settings, the weights' SHA-256 and the inputs'
        SHA-256. Each file is written atomically; the record is written last.
    """
    paths = output_paths(data_path, mask_path, out_dir=out_dir, suffix=suffix)
    protect = [data_path] + ([mask_path] if mask_path is not None else [])
    for role, path in paths.items():
        for protected in protect:
            if gio.same_file(path, Path(protected)):
                raise ValueError(f"refusing to write the {role} output over the input {protected}: change suffix "
                                 "or out_dir")
    if not overwrite:
        existing = [str(p) for p in paths.values() if os.path.lexists(p)]
        if existing:
            raise FileExistsError(f"outputs exist: {', '.join(existing)}; pass overwrite=True to replace them")
    if not paths["data"].parent.is_dir():
        raise FileNotFoundError(f"output directory {paths['data'].parent} does not exist")

    data, mask = gio.load_data_and_mask(data_path, mask_path, data_key=data_key, mask_key=mask_key)
    filled, new_mask, record = fill_bcdi_arrays(data, mask, detector=detector, roi=roi, binning=binning,
                                                method=method, model=model, stride=stride, **inpaint_kwargs)
    record["inputs"] = {"data": str(Path(data_path).resolve()), "data_sha256": gio.file_sha256(data_path)}
    if mask_path is not None:
        record["inputs"].update(mask=str(Path(mask_path).resolve()), mask_sha256=gio.file_sha256(mask_path))
    record["outputs"] = {role: str(path.resolve()) for role, path in paths.items()}

    return save_filled_pair(paths, filled, new_mask, record, overwrite=overwrite, protect=protect)


def save_filled_pair(paths: dict[str, Path], filled: np.ndarray, new_mask: np.ndarray, record: dict, *,
                     overwrite: bool = False, protect: Sequence[str | os.PathLike] = ()) -> dict[str, Path]:
    """Write a filled pair as bcdi writes its own: ``data`` and ``mask`` npz files, and the JSON record.

    ``paths`` is :func:`output_paths`' dict. Each file is written atomically, the record last
    (its presence means the pair is complete); ``protect`` lists files never to be written
    (the inputs). Returns ``paths``.
    """
    gio.save_array(paths["data"], filled, overwrite=overwrite, protect=protect)
    buffer = _pyio.BytesIO()
    np.savez_compressed(buffer, mask=new_mask)
    gio.atomic_write_bytes(paths["mask"], buffer.getvalue(), overwrite=overwrite, protect=protect)
    gio.atomic_write_text(paths["record"], json.dumps(record, indent=2) + "\n", overwrite=overwrite,
                          protect=protect)
    return paths
