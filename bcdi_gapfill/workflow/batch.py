"""Gap filling of a whole scan series (an in-situ series) on Dask distributed.

``bcdi-gapfill batch --config series.yml`` and :func:`run_series` run the bcdi file stage
(:func:`bcdi_gapfill.integrations.bcdi.fill_bcdi_files`) on every ``S<scan>_pynx*.npz`` /
``S<scan>_maskpynx*.npz`` pair matched by a glob pattern, one Dask task per scan:

* on a ``LocalCluster`` on this machine by default (nothing to set up);
* on a SLURM cluster through dask-jobqueue's ``SLURMCluster`` (``cluster: {kind: slurm}``),
  each SLURM job one Dask worker process with ``cores`` threads and, with
  ``gpus_per_job``, ``--gres=gpu:N`` and N "GPU" resources (a scan takes one GPU);
* on a running Dask scheduler (``cluster: {kind: address, address: tcp://...}``), or on a
  ``distributed.Client`` passed to :func:`run_series`.

Resume: a scan whose three outputs exist and whose JSON record matches this run (same input
SHA-256s, same method, stride, gap settings, flips/blend/precision, same weights SHA-256) is
skipped. A record is written last and every output atomically, so a scan interrupted
mid-write has no record and is done again; a record that exists but differs is refused
(status ``failed``) unless ``overwrite: true``, so outputs of other settings are never
replaced silently. A scan that fails (corrupt file, no mask, no gap layout match) is
reported in the summary and does not stop the others.

At the end ``summary.json`` and ``summary.md`` (scan, status ``ok``/``skipped``/``failed``,
voxels filled, seconds, error message) are written to ``out_dir``, replacing those of an
earlier run. With ``report: true`` each scan also gets ``<output stem>_report.png``: the
brightest frame and a cut through the frames, before and after the fill.

The configuration (YAML, or the same mapping in Python); relative paths are taken from the
current directory, as for the training configuration::

    input: scans/S*_pynx*.npz      # glob of the data files; masks found by name
    out_dir: scans_gapfilled       # created when missing
    overwrite: false
    report: false
    gapfill:                       # fill_bcdi_files settings
      method: model                # or biharmonic, linear, cubic, nearest, zero
      weights: null                # default: the shipped model
      stride: null
      detector: null               # gap from the mask; or a detector name (+ roi, binning)
      roi: null
      binning: null
      device: null                 # default: cuda when present
      flips: false
      blend: hann
      precision: float32
      batch_size: null
      suffix: _gapfilled
    cluster:
      kind: local                  # local, slurm or address
      n_workers: 2                 # default: Dask's choice from the CPU count
      threads_per_worker: 1
      processes: true

``workflows/series.yml`` and ``workflows/series_slurm.yml`` are complete examples. Dask,
distributed and dask-jobqueue are imported only here (``pip install 'bcdi-gapfill[batch]'``).
"""
from __future__ import annotations

import contextlib
import io as _pyio
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from glob import glob
from pathlib import Path
from typing import Any

from bcdi_gapfill import __version__
from bcdi_gapfill.core import geometry, io as gio
from bcdi_gapfill.core.config import FILL_SETTINGS, read_yaml_mapping
from bcdi_gapfill.core.methods import CLASSICAL_FILLS, FILLS
from bcdi_gapfill.fill.inpainting import default_model_info
from bcdi_gapfill.integrations.bcdi import fill_bcdi_files, output_paths

__all__ = ["load_series_config", "find_scans", "make_cluster", "slurm_job_script", "run_series",
           "format_summary_table",]

STATUSES = ("ok", "skipped", "failed")
_TOP_KEYS = ("input", "out_dir", "overwrite", "report", "gapfill", "cluster")
_GAPFILL_DEFAULTS: dict[str, Any] = {**FILL_SETTINGS, "blend": "hann", "precision": "float32", "suffix": "_gapfilled"}
_LOCAL_KEYS = ("kind", "n_workers", "threads_per_worker", "processes", "memory_limit", "dashboard_address")
_SLURM_DEFAULTS: dict[str, Any] = {
    "kind": "slurm", "queue": None, "account": None, "cores": None, "memory": None, "walltime": "01:00:00",
    "processes": 1, "gpus_per_job": 0, "jobs": 1, "job_name": "bcdi-gapfill", "job_extra_directives": [],
    "job_script_prologue": [], "local_directory": None, "log_directory": None, "python": None,
    "interface": None}
_ADDRESS_KEYS = ("kind", "address")
_NO_GAP = "no detector gap found in the mask: the outputs are copies of the inputs"


def _need(module: str, extra: str = "batch") -> Any:
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"the scan-series workflow needs {module.split('.')[0]}: pip install "
                          f"'bcdi-gapfill[{extra}]' (dask[distributed], dask-jobqueue) ({exc})") from None


# ------------------------------------------------------------------------------ configuration
def _positive_int(value: Any, name: str, *, allow_none: bool = False, minimum: int = 1) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _string_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a list of strings, got {value!r}")
    return list(value)


def _check_cluster(raw: Any) -> dict[str, Any]:
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ValueError(f"cluster must be a mapping, got {raw!r}")
    kind = raw.get("kind", "local")
    if kind == "local":
        gio.check_config_keys(raw, _LOCAL_KEYS, "cluster (kind: local)")
        cluster = {"kind": "local", "n_workers": _positive_int(raw.get("n_workers"), "cluster.n_workers",
                                                               allow_none=True),
                   "threads_per_worker": _positive_int(raw.get("threads_per_worker", 1),
                                                       "cluster.threads_per_worker"),
                   "processes": _bool(raw.get("processes", True), "cluster.processes")}
        for key in ("memory_limit", "dashboard_address"):
            if key in raw:
                cluster[key] = raw[key]
        return cluster
    if kind == "slurm":
        gio.check_config_keys(raw, _SLURM_DEFAULTS, "cluster (kind: slurm)")
        cluster = {**_SLURM_DEFAULTS, **raw}
        cluster["cores"] = _positive_int(cluster["cores"], "cluster.cores")
        if not isinstance(cluster["memory"], str) or not cluster["memory"].strip():
            raise ValueError(f"cluster.memory must be a size such as '32GB', got {cluster['memory']!r}")
        for key in ("queue", "account", "walltime", "job_name", "local_directory", "log_directory", "python",
                    "interface"):
            if cluster[key] is not None and not isinstance(cluster[key], str):
                raise ValueError(f"cluster.{key} must be a string, got {cluster[key]!r}")
        cluster["processes"] = _positive_int(cluster["processes"], "cluster.processes")
        cluster["gpus_per_job"] = _positive_int(cluster["gpus_per_job"], "cluster.gpus_per_job", minimum=0)
        cluster["jobs"] = _positive_int(cluster["jobs"], "cluster.jobs")
        if cluster["gpus_per_job"] and cluster["processes"] != 1:
            # every process of a job would see all its GPUs and count them as its own
            raise ValueError(f"with gpus_per_job, a job runs one worker process (processes: 1), got processes: "
                             f"{cluster['processes']}")
        for key in ("job_extra_directives", "job_script_prologue"):
            cluster[key] = _string_list(cluster[key], f"cluster.{key}")
        return cluster
    if kind == "address":
        gio.check_config_keys(raw, _ADDRESS_KEYS, "cluster (kind: address)")
        address = raw.get("address")
        if not isinstance(address, str) or not address:
            raise ValueError(f"cluster.address must be a scheduler address such as 'tcp://host:8786', got "
                             f"{address!r}")
        return {"kind": "address", "address": address}
    raise ValueError(f"cluster.kind must be 'local', 'slurm' or 'address', got {kind!r}")


def _check_gapfill(raw: Any) -> dict[str, Any]:

    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ValueError(f"gapfill must be a mapping, got {raw!r}")
    gio.check_config_keys(raw, _GAPFILL_DEFAULTS, "gapfill")
    settings = {**_GAPFILL_DEFAULTS, **raw}
    if settings["method"] not in FILLS:
        raise ValueError(f"gapfill.method must be 'model' or one of {CLASSICAL_FILLS}, got {settings['method']!r}")
    settings["stride"] = _positive_int(settings["stride"], "gapfill.stride", allow_none=True)
    settings["batch_size"] = _positive_int(settings["batch_size"], "gapfill.batch_size", allow_none=True)
    settings["flips"] = _bool(settings["flips"], "gapfill.flips")
    if settings["weights"] is not None:
        weights = Path(settings["weights"]).expanduser()
        if not weights.is_file():
            raise FileNotFoundError(f"model weights not found: {weights}")
        settings["weights"] = str(weights.resolve())
    if settings["detector"] is not None:
        settings["detector"] = geometry.get_detector(settings["detector"]).name
    elif settings["roi"] is not None or settings["binning"] is not None:
        raise ValueError("gapfill.roi and gapfill.binning describe a detector layout: set gapfill.detector too")
    for key, n in (("roi", 4), ("binning", 3)):
        value = settings[key]
        if value is not None and (not isinstance(value, (list, tuple)) or len(value) != n
                                  or any(isinstance(v, bool) or not isinstance(v, int) for v in value)):
            raise ValueError(f"gapfill.{key} must be a list of {n} integers, got {value!r}")
        settings[key] = None if value is None else list(value)
    suffix = settings["suffix"]
    if not isinstance(suffix, str) or not suffix or "/" in suffix or os.sep in suffix:
        raise ValueError(f"gapfill.suffix must be a non-empty file-name fragment, got {suffix!r}")
    return settings


def load_series_config(config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Read and check a series configuration; returns it complete, with defaults filled in.

    Parameters
    ----------
    config : path of a YAML file, or a mapping
        The keys of the module docstring. ``input`` and ``out_dir`` are required; unknown
        keys are an error (a misspelt key would otherwise be ignored silently).

    Returns
    -------
    dict
        ``input`` (absolute glob pattern), ``out_dir`` (absolute), ``overwrite``, ``report``,
        ``gapfill`` (every setting, detector name canonical, weights path absolute) and
        ``cluster`` (the settings of its kind).
    """
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        raw = read_yaml_mapping(path, "series config")
        where = str(path)
    elif isinstance(config, Mapping):
        raw, where = config, "the series config"
    else:
        raise TypeError(f"config must be a YAML path or a mapping, got {type(config).__name__}")
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} must hold a mapping of settings, got {type(raw).__name__}")
    gio.check_config_keys(raw, _TOP_KEYS, where)
    for key in ("input", "out_dir"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ValueError(f"{where}: '{key}' must be given as a path string, got {raw.get(key)!r}")
    return {"input": os.path.abspath(os.path.expanduser(raw["input"])),
            "out_dir": os.path.abspath(os.path.expanduser(raw["out_dir"])),
            "overwrite": _bool(raw.get("overwrite", False), "overwrite"),
            "report": _bool(raw.get("report", False), "report"),
            "gapfill": _check_gapfill(raw.get("gapfill")),
            "cluster": _check_cluster(raw.get("cluster"))}


# ---------------------------------------------------------------------------------- the scans
def _natural_key(path: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", Path(path).name)]


def find_scans(pattern: str, suffix: str = "_gapfilled") -> list[dict[str, Any]]:
    """The scans a glob pattern names, in scan-number order.

    Parameters
    ----------
    pattern : str
        Glob of the data files, e.g. ``"scans/S*_pynx*.npz"``.
    suffix : str
        Output suffix of the stage: files whose name ends with it (earlier outputs lying
        with the inputs) are not scans.

    Returns
    -------
    list of dict
        ``{"scan": label, "data": path, "mask": path or None, "mask_missing": bool}``. The
        label is the name before ``_pynx`` (``S12``), or the whole stem when two data files
        share it. The mask is the data name with ``_pynx`` replaced by ``_maskpynx`` (bcdi's
        naming); a data file without ``_pynx`` in its name is read with the mask it holds.
    """
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern must be a non-empty glob string, got {pattern!r}")
    found = [p for p in glob(pattern)
             if Path(p).is_file() and Path(p).suffix.lower() in gio.SUPPORTED_SUFFIXES
             and "_maskpynx" not in Path(p).name and not Path(p).stem.endswith(suffix)]
    if not found:
        raise ValueError(f"no scan file matches {pattern!r}")
    scans = []
    for data in sorted(found, key=_natural_key):
        path = Path(data)
        mask = None
        if "_pynx" in path.name:
            mask = path.with_name(path.name.replace("_pynx", "_maskpynx", 1))
        scans.append({"scan": path.stem.split("_pynx", 1)[0], "data": str(path.resolve()),
                      "mask": None if mask is None else str(mask.resolve()),
                      "mask_missing": mask is not None and not mask.is_file()})
    labels = [s["scan"] for s in scans]
    for scan in scans:
        if labels.count(scan["scan"]) > 1:
            scan["scan"] = Path(scan["data"]).stem
    return scans


# ------------------------------------------------------------------------------- resume check
def _effective_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The inpaint options that change the result, defaults filled in (device and batch size do not)."""
    return {"flips": bool(options.get("flips", False)), "blend": options.get("blend", "hann"),
            "precision": options.get("precision", "float32")}


def _expected_record(settings: Mapping[str, Any]) -> dict[str, Any]:
    """What a matching stage record holds for these settings (the inputs' hashes come per scan)."""
    expected: dict[str, Any] = {"method": settings["method"], "stride": settings["stride"],
                                "options": _effective_options(settings)}
    if settings["detector"] is None:
        expected["gap"] = {"gap_source": "mask"}
    else:
        layout = geometry.get_detector(settings["detector"])
        expected["gap"] = {"gap_source": "detector", "detector": layout.name,
                           "roi": settings["roi"] or [0, layout.shape[0], 0, layout.shape[1]],
                           "binning": settings["binning"] or [1, 1, 1]}
    if settings["method"] == "model":
        if settings["weights"] is None:
            expected["weights_sha256"] = default_model_info()["sha256"]
        else:
            expected["weights_sha256"] = gio.file_sha256(settings["weights"])
    return expected


def _record_differences(record: Mapping[str, Any], expected: Mapping[str, Any], scan: Mapping[str, Any]) -> list[str]:
    """Why an existing record does not describe this run's result for ``scan`` (empty: it does)."""
    differences = []
    for key in ("method", "stride"):
        if record.get(key) != expected[key]:
            differences.append(f"{key} {record.get(key)!r} != {expected[key]!r}")
    options = _effective_options(record.get("inpaint_options") or {})
    if options != expected["options"]:
        differences.append(f"inpaint options {options} != {expected['options']}")
    gap = {key: record.get(key) for key in expected["gap"]}
    if gap != expected["gap"]:
        differences.append(f"gap {gap} != {expected['gap']}")
    if "weights_sha256" in expected and record.get("weights_sha256") != expected["weights_sha256"]:
        differences.append("weights SHA-256 differs")
    inputs = record.get("inputs") or {}
    if inputs.get("data_sha256") != gio.file_sha256(scan["data"]):
        differences.append("data file SHA-256 differs")
    if scan["mask"] is not None and inputs.get("mask_sha256") != gio.file_sha256(scan["mask"]):
        differences.append("mask file SHA-256 differs")
    return differences


# ------------------------------------------------------------------------ one scan, on a worker
_GPU_LOCK = threading.Lock()
_GPU_USERS: dict[int, int] = {}


def _cuda_device_count() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextlib.contextmanager
def _device_for_scan(requested: str | None, method: str):
    """The device one scan runs on: the requested one, else the least used GPU of this process.

    A worker with several GPUs runs several scans at once (one per GPU, through Dask
    resources); without this each would take ``cuda``, i.e. GPU 0.
    """
    if requested is not None or method != "model":
        yield requested
        return
    count = _cuda_device_count()
    if count < 2:
        yield None
        return
    with _GPU_LOCK:
        index = min(range(count), key=lambda i: _GPU_USERS.get(i, 0))
        _GPU_USERS[index] = _GPU_USERS.get(index, 0) + 1
    try:
        yield f"cuda:{index}"
    finally:
        with _GPU_LOCK:
            _GPU_USERS[index] -= 1


def _report_figure(data_path: str, mask_path: str | None, paths: Mapping[str, Path], title: str) -> bytes:
    """PNG of the brightest frame and a (frames, columns) cut through its peak, before and after."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm

    data, mask = gio.load_data_and_mask(data_path, mask_path)
    filled, new_mask = gio.load_data_and_mask(paths["data"], paths["mask"])
    old_mask = np.zeros(data.shape, bool) if mask is None else np.asarray(mask) != 0
    filled_voxels = old_mask & (np.asarray(new_mask) == 0)
    frame = int(np.argmax(np.asarray(filled, np.float64).sum(axis=(1, 2))))
    row = int(np.unravel_index(np.argmax(filled[frame]), filled[frame].shape)[0])
    before = np.where(old_mask, np.nan, np.asarray(data, np.float64))
    panels = {f"frame {frame}, measured": before[frame], f"frame {frame}, gap filled": filled[frame],
              f"row {row}, measured": before[:, row, :], f"row {row}, gap filled": filled[:, row, :]}
    norm = LogNorm(vmin=0.5, vmax=max(float(np.nanmax(filled)), 1.0) + 0.5)
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6), constrained_layout=True)
    for ax, (name, image) in zip(axes, panels.items()):
        shown = ax.imshow(np.asarray(image, np.float64) + 0.5, norm=norm, cmap="turbo", aspect="auto")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("detector column")
        ax.set_ylabel("detector row" if name.startswith("frame") else "frame")
    fig.suptitle(f"{title}: {int(filled_voxels.sum())} voxels filled", fontsize=10)
    fig.colorbar(shown, ax=axes, shrink=0.85, label="photon counts + 0.5")
    buffer = _pyio.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def _process_scan(scan: Mapping[str, Any], settings: Mapping[str, Any], expected: Mapping[str, Any],
                  out_dir: str, overwrite: bool, report: bool) -> dict[str, Any]:
    """Gap-fill one scan on a worker; every error becomes a ``failed`` row, never an exception."""

    start = time.perf_counter()
    row: dict[str, Any] = {"scan": scan["scan"], "data": scan["data"], "mask": scan["mask"], "status": "failed",
                           "voxels_filled": None, "seconds": None, "error": None, "warnings": [], "outputs": None,
                           "report": None}
    try:
        if scan["mask_missing"]:
            raise FileNotFoundError(f"no mask file {scan['mask']} next to {scan['data']}")
        paths = output_paths(scan["data"], scan["mask"], out_dir=out_dir, suffix=settings["suffix"])
        row["outputs"] = {role: str(path) for role, path in paths.items()}
        existing = {role for role, path in paths.items() if path.exists()}
        redo = bool(existing)  # leftovers of an interrupted scan are replaced
        if existing == set(paths):
            try:
                record = json.loads(paths["record"].read_text())
                differences = _record_differences(record, expected, scan)
            except (OSError, ValueError, AttributeError) as exc:
                differences = [f"the record cannot be read ({type(exc).__name__}: {exc})"]
            if not differences:
                row.update(status="skipped", voxels_filled=record.get("gap_voxels_filled"))
            elif not overwrite:
                raise FileExistsError(f"outputs exist from another run ({'; '.join(differences)}); set overwrite: "
                                      "true (--overwrite) to replace them, or choose another out_dir")
        if row["status"] != "skipped":
            kwargs = {key: settings[key] for key in ("flips", "blend", "precision")}
            if settings["batch_size"] is not None:
                kwargs["batch_size"] = settings["batch_size"]
            with _device_for_scan(settings["device"], settings["method"]) as device:
                if device is not None:
                    kwargs["device"] = device
                fill_bcdi_files(scan["data"], scan["mask"], out_dir=out_dir, suffix=settings["suffix"],
                                overwrite=redo, detector=settings["detector"], roi=settings["roi"],
                                binning=settings["binning"], method=settings["method"], model=settings["weights"],
                                stride=settings["stride"], **kwargs)
            record = json.loads(paths["record"].read_text())
            row.update(status="ok", voxels_filled=record["gap_voxels_filled"])
        if row["voxels_filled"] == 0:
            # read from the record rather than caught with warnings.catch_warnings, which is not
            # thread-safe and worker threads share the warning filters
            row["warnings"].append(_NO_GAP)
        if report:
            png = paths["record"].with_name(paths["record"].stem + "_report.png")
            if row["status"] == "ok" or not png.exists():
                gio.atomic_write_bytes(png, _report_figure(scan["data"], scan["mask"], paths, row["scan"]),
                                       overwrite=True, protect=[p for p in (scan["data"], scan["mask"]) if p])
            row["report"] = str(png)
    except Exception as exc:  # one bad scan must not stop the series: it becomes a row of the summary
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


# ------------------------------------------------------------------------------------ clusters
def make_cluster(cluster: Mapping[str, Any], **cluster_kwargs: Any) -> Any:
    """Build the Dask cluster a (checked) ``cluster`` section describes.

    Returns a ``distributed.LocalCluster`` (``kind: local``) or a
    ``dask_jobqueue.SLURMCluster`` with no job submitted yet (``kind: slurm``; call
    ``.scale(jobs=n)`` to submit). The caller closes it. ``kind: address`` has no cluster
    object: connect a ``distributed.Client`` to the address instead. ``cluster_kwargs`` go
    to the cluster class as they are (e.g. ``scheduler_options`` of a SLURMCluster).
    """
    cluster = _check_cluster(cluster)
    if cluster["kind"] == "local":
        distributed = _need("distributed")
        kwargs = {key: cluster[key] for key in ("threads_per_worker", "processes", "memory_limit",
                                                "dashboard_address") if key in cluster}
        if cluster["n_workers"] is not None:
            kwargs["n_workers"] = cluster["n_workers"]
        # Dask's own warnings (e.g. a busy worker process killed after 4 s at shutdown) would
        # bury the summary; its errors still show
        kwargs["silence_logs"] = logging.ERROR
        return distributed.LocalCluster(**{**kwargs, **cluster_kwargs})
    if cluster["kind"] == "slurm":
        jobqueue = _need("dask_jobqueue")
        directives = list(cluster["job_extra_directives"])
        worker_args = []
        if cluster["gpus_per_job"]:
            directives.append(f"--gres=gpu:{cluster['gpus_per_job']}")
            worker_args = ["--resources", f"GPU={cluster['gpus_per_job']}"]
        kwargs = {"queue": cluster["queue"], "account": cluster["account"], "cores": cluster["cores"],
                  "memory": cluster["memory"], "walltime": cluster["walltime"], "processes": cluster["processes"],
                  "job_name": cluster["job_name"], "job_extra_directives": directives,
                  "job_script_prologue": cluster["job_script_prologue"], "worker_extra_args": worker_args}
        for key in ("local_directory", "log_directory", "interface", "python"):
            if cluster[key] is not None:
                kwargs[key] = cluster[key]
        return jobqueue.SLURMCluster(**kwargs, **cluster_kwargs)
    raise ValueError("cluster kind 'address' connects to a running scheduler; there is no cluster to build")


def slurm_job_script(cluster: Mapping[str, Any]) -> str:
    """The sbatch script one SLURM job of this ``cluster`` section runs (nothing is submitted)."""
    checked = _check_cluster(cluster)
    if checked["kind"] != "slurm":
        raise ValueError(f"a job script needs cluster kind 'slurm', got {checked['kind']!r}")
    # the scheduler started with the object only lives for this call: any free port
    slurm = make_cluster(checked, scheduler_options={"dashboard_address": ":0"})
    try:
        return slurm.job_script()
    finally:
        slurm.close()


@contextlib.contextmanager
def _client_for(cluster: Mapping[str, Any]):
    distributed = _need("distributed")
    if cluster["kind"] == "address":
        with distributed.Client(cluster["address"]) as client:
            yield client
        return
    with make_cluster(cluster) as dask_cluster:
        if cluster["kind"] == "slurm":
            dask_cluster.scale(jobs=cluster["jobs"])
        with distributed.Client(dask_cluster) as client:
            yield client


# -------------------------------------------------------------------------------------- summary
def format_summary_table(rows: list[Mapping[str, Any]], *, markdown: bool = False) -> str:
    """The summary as a text (or Markdown) table: scan, status, voxels filled, seconds, error."""
    header = ["scan", "status", "voxels filled", "seconds", "error"]
    cells = [[str(row["scan"]), str(row["status"]),
              "" if row.get("voxels_filled") is None else str(row["voxels_filled"]),
              "" if row.get("seconds") is None else f"{row['seconds']:.2f}",
              (row.get("error") or "").replace("|", "\\|" if markdown else "|").replace("\n", " ")]
             for row in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells]) + "\n"
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(header)]
    widths[-1] = 0  # the error message is last and not padded
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header).rstrip(), fmt.format(*("-" * len(h) for h in header)).rstrip()]
    return "\n".join(lines + [fmt.format(*c).rstrip() for c in cells]) + "\n"


def _write_summary(out_dir: Path, summary: Mapping[str, Any]) -> dict[str, Path]:
    counts = summary["counts"]
    markdown = (f"# Gap filling of {summary['input']}\n\n"
                f"bcdi-gapfill {summary['bcdi_gapfill_version']}, method {summary['gapfill']['method']}, "
                f"finished {summary['finished']} in {summary['wall_seconds']:.1f} s: "
                + ", ".join(f"{counts[s]} {s}" for s in STATUSES) + "\n\n" + format_summary_table(summary["scans"],
                                                                                            markdown=True))
    return {"json": gio.atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n",
                                          overwrite=True),
            "md": gio.atomic_write_text(out_dir / "summary.md", markdown, overwrite=True)}


# ------------------------------------------------------------------------------------- the run
def run_series(config: str | os.PathLike | Mapping[str, Any], *, client: Any = None, progress: bool = True,
               overwrite: bool | None = None) -> dict[str, Any]:
    """Gap-fill every scan of a series, one Dask task per scan, and write the summary.

    Parameters
    ----------
    config : path of a YAML file, or a mapping
        See :func:`load_series_config` and the module docstring.
    client : distributed.Client, optional
        Run on this client's cluster instead of the one the config describes.
    progress : bool
        A tqdm progress bar over the scans as they complete (on stderr).
    overwrite : bool, optional
        Overrides the config's ``overwrite``: replace outputs whose record differs.

    Returns
    -------
    dict
        What ``summary.json`` holds: ``scans`` (one row per scan: ``scan``, ``data``,
        ``status`` in ``ok``/``skipped``/``failed``, ``voxels_filled``, ``seconds``,
        ``error``, ``warnings``, ``outputs``, ``report``), ``counts`` per status, the
        settings, times, and ``summary_files`` (the paths of summary.json and summary.md).
        Failed scans do not raise: check ``counts["failed"]``.
    """
    from tqdm import tqdm

    cfg = load_series_config(config)
    if overwrite is not None:
        cfg["overwrite"] = _bool(overwrite, "overwrite")
    scans = find_scans(cfg["input"], cfg["gapfill"]["suffix"])
    out_dir = Path(cfg["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    expected = _expected_record(cfg["gapfill"])
    started, t0 = datetime.now(timezone.utc), time.perf_counter()

    # SLURM workers with GPUs declare "GPU" resources: one scan per GPU at a time
    resources = ({"GPU": 1} if client is None and cfg["cluster"]["kind"] == "slurm"
                 and cfg["cluster"]["gpus_per_job"] else None)
    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(_client_for(cfg["cluster"]))
        distributed = _need("distributed")
        futures = {client.submit(_process_scan, scan, cfg["gapfill"], expected, str(out_dir), cfg["overwrite"],
                                 cfg["report"], key=f"gapfill-{scan['scan']}-{uuid.uuid4().hex[:8]}",
                                 resources=resources): index
                   for index, scan in enumerate(scans)}
        rows: list[dict[str, Any] | None] = [None] * len(scans)
        bar = tqdm(distributed.as_completed(futures), total=len(scans), desc="scans", unit="scan",
                   disable=not progress, file=sys.stderr)
        for future in bar:
            index = futures[future]
            try:
                rows[index] = future.result()
            except Exception as exc:  # the worker itself died (memory, node lost): the scan failed
                scan = scans[index]
                rows[index] = {"scan": scan["scan"], "data": scan["data"], "mask": scan["mask"], "status": "failed",
                               "voxels_filled": None, "seconds": None, "error": f"{type(exc).__name__}: {exc}",
                               "warnings": [], "outputs": None, "report": None}
            bar.set_postfix(failed=sum(1 for r in rows if r is not None and r["status"] == "failed"))
        bar.close()

    finished = datetime.now(timezone.utc)
    summary: dict[str, Any] = {
        "bcdi_gapfill_version": __version__, "input": cfg["input"], "out_dir": str(out_dir),
        "gapfill": cfg["gapfill"], "cluster": cfg["cluster"], "overwrite": cfg["overwrite"],
        "started": started.isoformat(timespec="seconds"), "finished": finished.isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "counts": {status: sum(1 for r in rows if r["status"] == status) for status in STATUSES},
        "scans": rows}
    summary["summary_files"] = {k: str(v) for k, v in _write_summary(out_dir, summary).items()}
    return summary
