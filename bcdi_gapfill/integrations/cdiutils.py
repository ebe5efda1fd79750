"""Gap-filling stage for cdiutils' ``BcdiPipeline``, between ``preprocess`` and ``phase_retrieval``.

cdiutils (the ID01 pipeline, tested with 0.2.1) saves the cropped detector-frame intensity
and its mask as ``<dump_dir>/pynx_phasing/S<scan>_pynx_input_data.npz`` and
``S<scan>_pynx_input_mask.npz`` (each ``numpy.savez`` with one entry, ``data``; mask 1 =
masked; the Maxipix chip cross is masked in every frame). ``phase_retrieval`` writes
``pynx-cdi-inputs.txt`` into ``pipeline.pynx_phasing_dir`` with ``data`` and ``mask`` set to
``f"{pipeline.pynx_phasing_dir}S{scan}_pynx_input_{{data,mask}}.npz"`` (unless the caller
passes ``data=``/``mask=``), and runs PyNX there; ``analyse_phasing_results``,
``select_best_candidates`` and ``mode_decomposition`` read the runs from the same directory.

So the stage writes the gap-filled pair, under cdiutils' own file names, into a sibling
directory ``<dump_dir>/pynx_phasing_gapfilled/`` and sets the pipeline's public attribute
``pynx_phasing_dir`` to it: the unchanged ``phase_retrieval(...)`` then phases the filled
data, and its runs, modes and plots land beside them, apart from any run on the original
data. Nothing private is patched and the originals are never written::

    pipeline.preprocess()
    fill_pipeline_gaps(pipeline)            # the one line
    pipeline.phase_retrieval(...)           # phases pynx_phasing_gapfilled/S<scan>_pynx_input_*.npz

* :func:`fill_pipeline_gaps` -- on a ``BcdiPipeline`` after ``preprocess``;
* :func:`fill_cdiutils_files` -- on a saved pair (e.g. from an earlier session), writing the
  filled pair and a JSON record into another directory. Point ``phase_retrieval`` at them with
  ``pipeline.pynx_phasing_dir = str(out_dir) + "/"`` or
  ``pipeline.phase_retrieval(data=paths["data"], mask=paths["mask"])``.

The gap is found from the mask as for bcdi (:func:`bcdi_gapfill.core.geometry.gap_mask_from_mask`:
long lines of detector pixels masked in every frame), filled by
:func:`bcdi_gapfill.integrations.bcdi.fill_bcdi_arrays` (which calls
:func:`bcdi_gapfill.fill.inpainting.inpaint`), and released from the mask; hot pixels and aliens stay
masked. The gap must be filled in the detector frame: with cdiutils'
``orthogonalise_before_phasing=True`` the saved pair is already regridded to q-space, where
the gap is no longer a set of detector lines, and the stage refuses it.

Arrays are (frames, rows, columns), cdiutils' detector-frame order.
"""
from __future__ import annotations

import io as _pyio
import json
import os
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import numpy as np

from bcdi_gapfill.core import io as gio
from bcdi_gapfill.integrations.bcdi import fill_bcdi_arrays

__all__ = ["fill_pipeline_gaps", "fill_cdiutils_files", "cdiutils_output_paths", "pipeline_input_paths",
           "GAPFILLED_DIR_SUFFIX"]

GAPFILLED_DIR_SUFFIX = "_gapfilled"
_RECORD_SUFFIX = "_gapfill_record.json"


def _cdiutils_version() -> str | None:
    try:
        return _metadata.version("cdiutils")
    except _metadata.PackageNotFoundError:
        return None


def cdiutils_output_paths(data_path: str | os.PathLike, mask_path: str | os.PathLike,
                          out_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Where :func:`fill_cdiutils_files` writes: ``{"data", "mask", "record"}``.

    The filled pair keeps the input file names (cdiutils' ``S<scan>_pynx_input_data.npz`` and
    ``..._mask.npz``, which ``phase_retrieval`` looks for) in ``out_dir``, by default the
    input directory's sibling ``<dir>_gapfilled`` (``pynx_phasing`` -> ``pynx_phasing_gapfilled``).
    The record is ``<data stem>_gapfill_record.json`` beside them.
    """
    data_path, mask_path = Path(data_path), Path(mask_path)
    if data_path.name == mask_path.name:
        raise ValueError(f"the data and mask files have the same name {data_path.name!r}: the outputs keep "
                         "the input names, so give files with different names")
    if out_dir is None:
        parent = data_path.resolve().parent
        directory = parent.with_name(parent.name + GAPFILLED_DIR_SUFFIX)
    else:
        directory = Path(out_dir)
    return {"data": directory / data_path.name, "mask": directory / mask_path.name,
            "record": directory / f"{data_path.stem}{_RECORD_SUFFIX}"}


def _npz_entry(path: Path, key: str | None, role: str) -> str:
    """Name of the entry a cdiutils npz holds the array in (``data`` in both files of the pair)."""
    if key is not None:
        return key
    with np.load(path) as npz:
        names = list(npz.files)
    if role in names:
        return role
    return "data" if "data" in names else names[0]


def fill_cdiutils_files(data_path: str | os.PathLike, mask_path: str | os.PathLike, *,
                        out_dir: str | os.PathLike | None = None, overwrite: bool = False,
                        method: str = "model", model: Any = None, stride: int | None = None,
                        data_key: str | None = None, mask_key: str | None = None,
                        **inpaint_kwargs: Any) -> dict[str, Path]:
    """Fill the chip gap of a cdiutils PyNX input pair and write the filled pair elsewhere.

    Parameters
    ----------
    data_path, mask_path : path
        cdiutils' ``S<scan>_pynx_input_data.npz`` and ``S<scan>_pynx_input_mask.npz``
        (frames, rows, columns), or any ``.npz`` pair read by
        :func:`bcdi_gapfill.core.io.load_data_and_mask`.
    out_dir : path, optional
        Directory of the outputs; default the input directory's sibling ``<dir>_gapfilled``,
        created if missing. A directory given here must exist.
    overwrite : bool
        Replace existing outputs; otherwise any existing output raises FileExistsError
        before anything is computed. The inputs are never written, even with ``overwrite``.
    method, model, stride, **inpaint_kwargs
        As :func:`bcdi_gapfill.integrations.bcdi.fill_bcdi_arrays` (``method="model"`` with
        ``model=None`` is the shipped model; ``"biharmonic"`` the classical log-domain fill).
    data_key, mask_key : str, optional
        Entries to read; by default the one entry of each file, as cdiutils writes them.

    Returns
    -------
    dict ``{"data": Path, "mask": Path, "record": Path}``
        The pair is written under the input names and entry names (``numpy.savez``, as
        cdiutils does), so PyNX and cdiutils read it as they read the originals: the data
        filled in the gap (float64 for integer counts, every measured voxel unchanged), the
        mask with the gap released. The JSON record (written last) holds the settings, the
        weights' SHA-256, the inputs' paths and SHA-256 and the cdiutils version. Every file
        is written atomically.
    """
    data_path, mask_path = Path(data_path), Path(mask_path)
    for role, path in (("data", data_path), ("mask", mask_path)):
        if path.suffix.lower() != ".npz":
            raise ValueError(f"{role} file must be a cdiutils .npz (S<scan>_pynx_input_{role}.npz), "
                             f"got {path}")
    paths = cdiutils_output_paths(data_path, mask_path, out_dir)
    protect = [data_path, mask_path]
    for role, path in paths.items():
        for protected in protect:
            if gio.same_file(path, protected):
                raise ValueError(f"refusing to write the {role} output over the input {protected}: the "
                                 "outputs keep the input names, so choose another out_dir")
    if not overwrite:
        existing = [str(p) for p in paths.values() if os.path.lexists(p)]
        if existing:
            raise FileExistsError(f"outputs exist: {', '.join(existing)}; pass overwrite=True to replace "
                                  "them")
    directory = paths["data"].parent
    if out_dir is not None and not directory.is_dir():
        raise FileNotFoundError(f"output directory {directory} does not exist")

    data, mask = gio.load_data_and_mask(data_path, mask_path, data_key=data_key, mask_key=mask_key)
    entries = {"data": _npz_entry(data_path, data_key, "data"),
               "mask": _npz_entry(mask_path, mask_key, "mask")}
    filled, new_mask, record = fill_bcdi_arrays(data, mask, method=method, model=model, stride=stride,
                                                **inpaint_kwargs)
    record["stage"] = "cdiutils"
    record["cdiutils_version"] = _cdiutils_version()
    record["npz_entries"] = entries
    record["inputs"] = {"data": str(data_path.resolve()), "data_sha256": gio.file_sha256(data_path),
                        "mask": str(mask_path.resolve()), "mask_sha256": gio.file_sha256(mask_path)}
    record["outputs"] = {role: str(path.resolve()) for role, path in paths.items()}

    directory.mkdir(exist_ok=True)
    for role, array in (("data", filled), ("mask", new_mask)):
        buffer = _pyio.BytesIO()
        np.savez(buffer, **{entries[role]: array})
        gio.atomic_write_bytes(paths[role], buffer.getvalue(), overwrite=overwrite, protect=protect)
    gio.atomic_write_text(paths["record"], json.dumps(record, indent=2) + "\n", overwrite=overwrite,
                          protect=protect)
    return paths


def pipeline_input_paths(pipeline: Any) -> dict[str, Path]:
    """The PyNX input pair ``pipeline.phase_retrieval()`` reads by default: ``{"data", "mask"}``."""
    _check_pipeline(pipeline)
    directory = str(pipeline.pynx_phasing_dir)
    return {name: Path(f"{directory}S{pipeline.scan}_pynx_input_{name}.npz") for name in ("data", "mask")}


def _check_pipeline(pipeline: Any) -> None:
    missing = [a for a in ("pynx_phasing_dir", "scan", "params") if not hasattr(pipeline, a)]
    if missing:
        raise TypeError(f"pipeline must be a cdiutils BcdiPipeline, got {type(pipeline).__name__} (no "
                        f"{', '.join(missing)})")


def fill_pipeline_gaps(pipeline: Any, *, out_dir: str | os.PathLike | None = None, overwrite: bool = False,
                       method: str = "model", model: Any = None, stride: int | None = None,
                       **inpaint_kwargs: Any) -> dict[str, Path]:
    """Fill the chip gap of a preprocessed cdiutils scan and make ``phase_retrieval`` phase it.

    Call it between ``pipeline.preprocess(...)`` and ``pipeline.phase_retrieval(...)``.

    Parameters
    ----------
    pipeline : cdiutils.BcdiPipeline
        After ``preprocess`` (its PyNX input pair is on disk), with
        ``orthogonalise_before_phasing=False`` (cdiutils' default).
    out_dir : path, optional
        Where the filled pair goes; default ``<dump_dir>/pynx_phasing_gapfilled/`` (created).
    overwrite : bool
        Replace the outputs of an earlier call. Calling again on a pipeline already pointed at
        its filled pair refills from the originals named in the record.
    method, model, stride, **inpaint_kwargs
        As :func:`fill_cdiutils_files`.

    Returns
    -------
    dict ``{"data": Path, "mask": Path, "record": Path}``

    Side effect: ``pipeline.pynx_phasing_dir`` is set to the outputs' directory, so that
    ``phase_retrieval`` (which reads ``<pynx_phasing_dir>S<scan>_pynx_input_*.npz`` unless
    given ``data=``/``mask=``) phases the filled pair and writes its runs there, and the
    later analysis steps read them from there. The pipeline's in-memory
    ``cropped_detector_data`` and ``mask`` and its ``S<scan>_preprocessed_data.cxi`` keep the
    original data.
    """
    _check_pipeline(pipeline)
    if pipeline.params.get("orthogonalise_before_phasing"):
        raise ValueError("the pipeline has orthogonalise_before_phasing=True: its PyNX input is regridded to "
                         "q-space, where the detector gap is no longer a set of detector lines. Fill the gap "
                         "in the detector frame: run preprocess with orthogonalise_before_phasing=False")
    inputs = pipeline_input_paths(pipeline)
    current_dir = Path(str(pipeline.pynx_phasing_dir))
    record_path = current_dir / f"{inputs['data'].stem}{_RECORD_SUFFIX}"
    if record_path.is_file():
        # The pipeline already points at a filled pair: refill from the originals it records.
        recorded = json.loads(record_path.read_text())["inputs"]
        inputs = {"data": Path(recorded["data"]), "mask": Path(recorded["mask"])}
        if out_dir is None:
            out_dir = current_dir
    for name, path in inputs.items():
        if not path.is_file():
            raise FileNotFoundError(f"cdiutils' PyNX input {path} does not exist: run pipeline.preprocess() "
                                    "first")
    paths = fill_cdiutils_files(inputs["data"], inputs["mask"], out_dir=out_dir, overwrite=overwrite,
                                method=method, model=model, stride=stride, **inpaint_kwargs)
    # cdiutils builds its paths as f"{pynx_phasing_dir}S{scan}_...": the trailing separator matters.
    pipeline.pynx_phasing_dir = str(paths["data"].parent) + os.sep
    return paths
