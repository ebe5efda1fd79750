"""Ewoks tasks (ESRF's workflow system, ``ewokscore``) for the bcdi gap-filling stage.

* :class:`GapFillTask` -- the file stage (:func:`bcdi_gapfill.integrations.bcdi.fill_bcdi_files`):
  a bcdi ``S<scan>_pynx*.npz`` / ``S<scan>_maskpynx*.npz`` pair in, the gap-filled pair and
  its JSON record out (paths), the originals untouched. Its outputs ``data_path`` and
  ``mask_path`` can feed the next node of a workflow (a PyNX phasing task, say).
* :class:`GapFillArraysTask` -- the in-memory stage
  (:func:`bcdi_gapfill.integrations.bcdi.fill_bcdi_arrays`): ``data`` and ``mask`` arrays in, the
  filled pair and the record out.

In a graph, a node names the class by its import path::

    {"id": "gapfill", "task_type": "class",
     "task_identifier": "bcdi_gapfill.integrations.ewoks.GapFillTask",
     "default_inputs": [{"name": "data_path", "value": "S12_pynx_....npz"},
                        {"name": "mask_path", "value": "S12_maskpynx_....npz"}]}

and ``ewokscore.execute_graph(graph)`` runs it. The package declares the module under the
``ewoks.tasks.class`` entry point, so ``ewoks`` task discovery lists both tasks.

Inputs left out take the defaults of the stage functions (method ``"model"`` with the
shipped weights, the gap found from the mask). Arrays are (frames, rows, columns).
Needs ``pip install 'bcdi-gapfill[ewoks]'``; ``import bcdi_gapfill`` does not.
"""
from __future__ import annotations

from typing import Any

from bcdi_gapfill.core.config import FILL_SETTINGS
from bcdi_gapfill.integrations.bcdi import fill_bcdi_arrays, fill_bcdi_files

try:
    from ewokscore import Task
except ImportError as exc:  # only this module needs ewokscore
    raise ImportError(f"bcdi_gapfill.integrations.ewoks needs ewokscore: pip install 'bcdi-gapfill[ewoks]' ({exc})") from None

__all__ = ["GapFillTask", "GapFillArraysTask"]

# The fill settings a task takes as optional inputs: the shared schema of every gapfill: section.
_FILL_SETTINGS = tuple(FILL_SETTINGS)


def _settings(task: Task) -> dict[str, Any]:
    """The gap-filling keyword arguments the task was given (missing ones keep the stage's defaults)."""
    # None (or a missing input) is the stage's own default; flips=False is too, and passing it
    # would only add it to the record's inpaint options
    kwargs = {name: task.get_input_value(name, None) for name in _FILL_SETTINGS}
    kwargs = {name: value for name, value in kwargs.items() if value is not None and not (name == "flips" and
                                                                                       value is False)}
    if "weights" in kwargs:
        kwargs["model"] = kwargs.pop("weights")
    return kwargs


class GapFillTask(
    Task,
    input_names=["data_path"],
    optional_input_names=["mask_path", "out_dir", "suffix", "overwrite", *_FILL_SETTINGS],
    output_names=["data_path", "mask_path", "record_path", "record", "voxels_filled"],
):
    """Fill the chip gaps of a saved bcdi pair (``bcdi_stage.fill_bcdi_files``).

    Parameters
    ----------
    data_path : str
        ``S<scan>_pynx<comment>.npz`` (or any file ``bcdi_gapfill.core.io`` reads).
    mask_path : str, optional
        ``S<scan>_maskpynx<comment>.npz``; default: a mask stored in the data file.
    out_dir, suffix, overwrite : optional
        Where the outputs go (default next to the data, ``_gapfilled``), and whether existing
        outputs are replaced (default: an existing output fails the task).
    detector, roi, binning, method, weights, stride, device, flips : optional
        As ``fill_bcdi_files`` (``weights`` is its ``model``: a weights file).

    Returns
    -------
    data_path, mask_path, record_path : str
        The gap-filled data and mask (gap voxels released) and the JSON record.
    record : dict
        The record's content: settings, weights SHA-256, inputs' SHA-256, voxels filled.
    voxels_filled : int
    """

    def run(self) -> None:
        import json


        options = {name: self.get_input_value(name, None) for name in ("out_dir", "suffix", "overwrite")}
        options = {name: value for name, value in options.items() if value is not None}
        paths = fill_bcdi_files(self.inputs.data_path, self.get_input_value("mask_path", None), **options,
                                **_settings(self))
        record = json.loads(paths["record"].read_text())
        self.outputs.data_path = str(paths["data"])
        self.outputs.mask_path = str(paths["mask"])
        self.outputs.record_path = str(paths["record"])
        self.outputs.record = record
        self.outputs.voxels_filled = int(record["gap_voxels_filled"])


class GapFillArraysTask(
    Task,
    input_names=["data"],
    optional_input_names=["mask", *_FILL_SETTINGS],
    output_names=["data", "mask", "record"],
):
    """Fill the chip gaps of in-memory bcdi arrays (``bcdi_stage.fill_bcdi_arrays``).

    Parameters
    ----------
    data : ndarray, shape (frames, rows, columns)
        Intensity, any real dtype.
    mask : ndarray, same shape, optional
        Nonzero where masked; may be left out only with a ``detector``.
    detector, roi, binning, method, weights, stride, device, flips : optional
        As ``fill_bcdi_arrays``.

    Returns
    -------
    data : ndarray, same shape
        Gap voxels filled, every other voxel bit-identical.
    mask : ndarray, same shape and dtype as the input mask
        Gap voxels released.
    record : dict
        Settings, gap source, voxels filled, weights SHA-256.
    """

    def run(self) -> None:

        filled, new_mask, record = fill_bcdi_arrays(self.inputs.data, self.get_input_value("mask", None),
                                                    **_settings(self))
        self.outputs.data = filled
        self.outputs.mask = new_mask
        self.outputs.record = record
