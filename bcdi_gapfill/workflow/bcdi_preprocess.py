"""bcdi's own preprocessing with the gap-filling stage inserted.

:func:`run_bcdi_preprocessing` takes a bcdi preprocessing YAML configuration (the one you give
``bcdi_preprocess_BCDI.py``) with one extra section, ``gapfill:``, and

1. splits ``gapfill:`` off (:func:`split_config`) and checks its keys, so bcdi never sees it;
2. parses the rest with bcdi's own ``bcdi.utils.parser.ConfigParser`` (same validation and
   command-line overrides as bcdi's script) and runs bcdi's own entry function,
   ``bcdi.preprocessing.preprocessing_runner.run``, which validates the parameters and calls
   ``process_scan`` for each scan: loading, chip-gap masking, centring, cropping, binning,
   saving ``S<scan>_pynx<comment>.npz`` and ``S<scan>_maskpynx<comment>.npz`` exactly as bcdi
   does;
3. at the moment bcdi has saved that pair, takes bcdi's final in-memory ``data`` and ``mask``
   and the ``Detector`` bcdi built, fills the gap with
   :func:`bcdi_gapfill.integrations.bcdi.fill_bcdi_arrays`, and writes
   ``S<scan>_pynx<comment>_gapfilled.npz``, ``S<scan>_maskpynx<comment>_gapfilled.npz`` and the
   JSON record ``S<scan>_pynx<comment>_gapfilled.json`` next to bcdi's pair;
4. with a ``report:`` section, once bcdi is done, runs for each scan the scan workflow of
   :func:`bcdi_gapfill.workflow.pipeline.run_workflow` on bcdi's pair and the filled pair of step 3
   (passed as ``filled_pair``, so the gap is not filled twice): phase retrieval of the filled
   data and of the ``free_pixels`` and ``zero_fill`` baselines with the same starts, then
   ``report.json`` and ``report.html``. One command thus goes from raw frames to a report.

bcdi's outputs are kept as bcdi wrote them; ours are written atomically with
:func:`bcdi_gapfill.integrations.bcdi.save_filled_pair`; the raw detector files are only read (by
bcdi).

Where the stage is inserted, and why there
------------------------------------------
bcdi's ``process_scan`` is one long function with no hook: it builds an ``Analysis`` object
with ``create_analysis``, calls its steps, and ends with ``analysis.save_data(<dir>/S<scan>_pynx
<comment>)`` then ``analysis.save_mask(<dir>/S<scan>_maskpynx<comment>)``. While bcdi runs, the
``create_analysis`` name that ``process_scan`` looks up is wrapped so that each analysis it
returns has its ``save_data``/``save_mask`` wrapped on that instance only (bcdi's classes are
not modified): bcdi saves first, then the stage runs on ``analysis.data`` and ``analysis.mask``
as they were just written, which are the final arrays (after centring, alien/hot-pixel masking,
photon threshold and binning). This is the true in-memory point between bcdi's masking and its
save, with three advantages over filling the files afterwards: the file names come from bcdi
itself (no globbing for ``S<scan>_pynx*.npz``), the gap can be taken from the ``Detector``
object bcdi built (name, ROI, current binning), and a multi-scan run fills each scan as soon
as it is saved. Filling *after* bcdi's save rather than before keeps bcdi's own pair unchanged.
The wrapper is removed when the run ends, also on error; it is not thread-safe (two runs in
threads of one process would share it).

bcdi's multiprocessing pool is not used (``multiprocessing`` is set to False): bcdi's pool
logs the error of a failed scan and goes on, so a failed fill would go unnoticed, and a
forked worker is no place for torch. Scans run one after the other in this process, as bcdi
does with ``multiprocessing: False``.

The ``gapfill:`` section (every key optional)
---------------------------------------------
``method``
    ``model`` (default), ``biharmonic``, ``linear``, ``cubic``, ``nearest`` or ``zero``.
``weights``
    Weights file of the model (default: the shipped model).
``stride``, ``batch_size``, ``device``, ``flips``
    As :func:`bcdi_gapfill.fill.inpainting.inpaint`.
``gap_from``
    ``mask`` (default): the gap is the long lines of detector pixels masked in every frame
    (works after bcdi's centring and cropping). ``detector``: the gap is the chip layout of
    the detector bcdi built, cropped to its ROI and binned as bcdi did; refused when bcdi's
    ``center_fft`` or FFT-shape crop changed the array (use ``mask`` then).
``detector``, ``roi``, ``binning``
    With ``gap_from: detector``: a layout name (e.g. ``Maxipix``) instead of bcdi's detector,
    a ROI ``[y0, y1, x0, x1]`` in unbinned pixels instead of bcdi's, and a binning
    ``[frames, rows, columns]`` instead of bcdi's current binning.
``suffix``
    Appended to bcdi's file names (default ``_gapfilled``).
``out_dir``
    Directory of our outputs (must exist; default: bcdi's save directory).
``overwrite``
    Replace our outputs of an earlier run (default False: an existing output stops the run
    before the fill). bcdi overwrites its own outputs as it always does.

A value ``None`` (the string, as bcdi's YAML files write it) reads as null, as in bcdi.

The ``report:`` section (optional; present, even empty, means run it)
----------------------------------------------------------------------
``algorithm``, ``n_starts``, ``seed``, ``n_average``, ``support_threshold``, ``device``, ``backend``, ``baselines``
    The ``phasing:`` settings of the scan workflows (``workflows/id01_maxipix.yml``,
    :data:`bcdi_gapfill.workflow.pipeline.DEFAULT_CONFIG`), with the same defaults and checks.
``out_dir``
    Directory of a scan's reconstructions and report (created when missing); ``{scan}`` in
    it is replaced by the scan number, and is required when bcdi runs several scans.
    Default: ``<directory of bcdi's pair>/gapfill_report_S{scan}``.

The pipeline gets bcdi's pair as ``data``/``mask``, the ``gapfill:`` settings it knows
(``method``, ``weights``, ``stride``, ``device``, ``flips``, ``batch_size``, and the layout
from the record with ``gap_from: detector``) and the filled pair with its record.
``gapfill.overwrite`` also lets a run replace the report outputs of an earlier run; without
it an existing report output stops the run when bcdi has saved that scan's pair, before the
fill. The report's ``fill_time_s`` is the fill time measured at bcdi's save.
"""
from __future__ import annotations

import contextlib
import difflib
import io as pyio
import json
import logging
import os
import tempfile
import time
from numbers import Integral
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from bcdi_gapfill.core import io as gio
from bcdi_gapfill.core.config import FILL_SETTINGS, INPAINT_SETTINGS, read_yaml_mapping
from bcdi_gapfill.core.errors import UnsupportedBcdiError
from bcdi_gapfill.core.methods import FILLS
from bcdi_gapfill.core.simulate import simulate_pattern
from bcdi_gapfill.integrations import bcdi as bcdi_stage
from bcdi_gapfill.workflow import pipeline

__all__ = ["GAPFILL_DEFAULTS", "REPORT_DEFAULTS", "load_config", "split_config", "check_gapfill_settings",
           "check_report_settings", "run_bcdi_preprocessing", "write_simulated_id01bliss_scan", "UnsupportedBcdiError"]

#: The keys of the ``gapfill:`` section and their defaults.
GAPFILL_DEFAULTS: dict[str, Any] = {**FILL_SETTINGS, "gap_from": "mask", "suffix": "_gapfilled", "out_dir": None,
                                    "overwrite": False}


#: The keys of the ``report:`` section and their defaults: the scan workflows' phasing settings
#: and the output directory.
REPORT_DEFAULTS: dict[str, Any] = {**pipeline.DEFAULT_CONFIG["phasing"], "out_dir": None}
# The gapfill: settings that the pipeline's bcdi stage takes (its layout keys come from the record).
BCDI_INSTALL_HINT = ("pip install --no-deps --ignore-requires-python bcdi==0.3.1 and pip install 'bcdi-gapfill[bcdi]' "
                 "(its dependencies), or `make install`")


def _import_bcdi() -> tuple[Any, Any, Any, type]:
    """bcdi's ConfigParser, runner module, process_scan module and ParameterError, or a clear ImportError."""
    try:
        from bcdi.preprocessing import preprocessing_runner, process_scan as process_scan_module
        from bcdi.utils.parameters import ParameterError
        from bcdi.utils.parser import ConfigParser
    except ImportError as exc:
        raise ImportError(f"the bcdi preprocessing workflow needs bcdi 0.3.1, which cannot be imported ({exc}); "
                          f"install it with: {BCDI_INSTALL_HINT}") from None
    return ConfigParser, preprocessing_runner, process_scan_module, ParameterError


# --------------------------------------------------------------------------- configuration
def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a bcdi preprocessing YAML file (with or without a ``gapfill:`` section) as a dict."""
    path = Path(gio.as_path(path, "config"))
    if path.is_file() and path.suffix not in (".yml", ".yaml"):
        raise ValueError(f"{path}: a bcdi configuration is a YAML file (.yml), got suffix '{path.suffix}'")
    return read_yaml_mapping(path, "configuration")


def _none(value: Any) -> Any:
    return None if isinstance(value, str) and value.strip().lower() == "none" else value


def _positive_int_or_none(settings: dict, key: str) -> None:
    value = settings[key]
    if value is not None and (isinstance(value, bool) or not isinstance(value, Integral) or value < 1):
        raise ValueError(f"gapfill.{key} must be a positive integer or null, got {value!r}")


def _int_list_or_none(settings: dict, key: str, n: int) -> None:
    value = settings[key]
    if value is None:
        return
    if (not isinstance(value, (list, tuple)) or len(value) != n
            or any(isinstance(v, bool) or not isinstance(v, Integral) for v in value)):
        raise ValueError(f"gapfill.{key} must be a list of {n} integers or null, got {value!r}")
    settings[key] = [int(v) for v in value]


def _section_settings(section: Mapping[str, Any] | None, defaults: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A section of our own in the bcdi YAML, its keys checked, completed with ``defaults``."""
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise TypeError(f"the {name} section must be a mapping of settings, got {type(section).__name__}: "
                        f"{section!r}")
    gio.check_config_keys(section, defaults, f"the {name} section")
    return {**defaults, **{key: _none(value) for key, value in section.items()}}


def check_gapfill_settings(section: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``gapfill:`` section checked and completed with :data:`GAPFILL_DEFAULTS`.

    Raises ValueError naming an unknown key (with the closest known one), or a value of the
    wrong kind; TypeError when the section is not a mapping.
    """
    settings = _section_settings(section, GAPFILL_DEFAULTS, "gapfill")
    if settings["method"] not in FILLS:
        raise ValueError(f"gapfill.method must be one of {list(FILLS)}, got {settings['method']!r}")
    if settings["gap_from"] not in ("mask", "detector"):
        raise ValueError(f"gapfill.gap_from must be 'mask' or 'detector', got {settings['gap_from']!r}")
    for key in ("stride", "batch_size"):
        _positive_int_or_none(settings, key)
    _int_list_or_none(settings, "roi", 4)
    _int_list_or_none(settings, "binning", 3)
    for key in ("flips", "overwrite"):
        if not isinstance(settings[key], bool):
            raise ValueError(f"gapfill.{key} must be true or false, got {settings[key]!r}")
    for key in ("weights", "device", "detector", "out_dir"):
        if settings[key] is not None and not isinstance(settings[key], str):
            raise ValueError(f"gapfill.{key} must be a string or null, got {settings[key]!r}")
    if not isinstance(settings["suffix"], str) or not settings["suffix"] or "/" in settings["suffix"]:
        raise ValueError(f"gapfill.suffix must be a non-empty file-name fragment, got {settings['suffix']!r}")
    if settings["gap_from"] == "mask":
        given = [key for key in ("detector", "roi", "binning") if settings[key] is not None]
        if given:
            raise ValueError(f"gapfill.{given[0]} describes a detector layout: set gapfill.gap_from: detector with "
                             "it, or remove it to find the gap from bcdi's mask")
    if settings["method"] != "model" and settings["weights"] is not None:
        raise ValueError(f"gapfill.weights is for method 'model', but method is {settings['method']!r}")
    if settings["weights"] is not None and not Path(settings["weights"]).is_file():
        raise FileNotFoundError(f"no such weights file: {settings['weights']} (gapfill.weights)")
    if settings["out_dir"] is not None and not Path(settings["out_dir"]).is_dir():
        raise FileNotFoundError(f"gapfill.out_dir {settings['out_dir']} is not an existing directory")
    return settings


def _pipeline_config(report: Mapping[str, Any], gapfill: Mapping[str, Any], *, data: str, mask: str | None,
                     scan: int, record: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The scan-workflow configuration (:mod:`bcdi_gapfill.workflow.pipeline`) of one scan's report."""
    layout = {"detector": None, "roi": None, "binning": None}
    if record is not None and record.get("gap_source") == "detector":
        layout = {key: record.get(key) for key in layout}
    return {"name": f"bcdi_preprocess S{scan}", "scan": int(scan), "data": data, "mask": mask,
            "gapfill": {**{key: gapfill[key] for key in INPAINT_SETTINGS}, **layout},
            "phasing": {key: value for key, value in report.items() if key != "out_dir"}}


def check_report_settings(section: Mapping[str, Any] | None,
                          gapfill: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``report:`` section checked and completed with :data:`REPORT_DEFAULTS`.

    ``gapfill`` is the checked ``gapfill:`` section (default: its defaults): the report
    refuses ``gapfill.method: zero``, which is its ``zero_fill`` baseline already. The
    phasing values get the checks of :func:`bcdi_gapfill.workflow.pipeline.load_workflow_config`
    (a malformed ``algorithm`` fails here, before bcdi runs). Raises ValueError naming an
    unknown key (with the closest known one) or a bad value; TypeError when the section is
    not a mapping.
    """
    settings = _section_settings(section, REPORT_DEFAULTS, "report")
    settings["baselines"] = list(settings["baselines"]) if isinstance(settings["baselines"], (list, tuple)) \
        else settings["baselines"]
    out_dir = settings["out_dir"]
    if out_dir is not None:
        if not isinstance(out_dir, str) or not out_dir:
            raise ValueError(f"report.out_dir must be a directory path or null, got {out_dir!r}")
        try:
            out_dir.format(scan=0)
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"report.out_dir may hold {{scan}} and no other braces, got {out_dir!r}") from None
    try:
        pipeline.load_workflow_config(_pipeline_config(settings, gapfill or GAPFILL_DEFAULTS, data="S0_pynx.npz",
                                                       mask=None, scan=0))
    except ValueError as exc:
        # the pipeline names these settings phasing.<key>; here they are report.<key>
        raise ValueError(str(exc).replace("phasing.", "report.")) from None
    return settings


def _report_dir(report: Mapping[str, Any], bcdi_data: Path, scan: int) -> Path:
    if report["out_dir"] is None:
        return bcdi_data.parent / f"gapfill_report_S{scan}"
    return Path(report["out_dir"].format(scan=scan))


def split_config(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a configuration into bcdi's parameters and the checked ``gapfill`` settings.

    Returns ``(bcdi_parameters, gapfill_settings)``; the first is the configuration without
    ``gapfill`` and ``report`` (a new dict, ``config`` is not modified; the ``report``
    section is checked by :func:`check_report_settings`). A missing ``gapfill`` section
    gives the defaults. A top-level key that looks like a misspelt ``gapfill`` or ``report``
    (``gap_fill``, ``GapFill``, ``reports``) is refused, since bcdi would silently ignore it.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping of bcdi parameters, got {type(config).__name__}")
    bcdi_parameters = {key: value for key, value in config.items() if key not in ("gapfill", "report")}
    for key in bcdi_parameters:
        normalised = str(key).lower().replace("_", "").replace("-", "").replace(" ", "")
        for section in ("gapfill", "report"):
            if normalised == section or difflib.get_close_matches(normalised, [section], n=1, cutoff=0.85):
                raise ValueError(f"top-level key {key!r} looks like a misspelt {section!r} section; name it "
                                 f"{section!r}")
    if bcdi_parameters.get("detector_on_goniometer") is False:
        raise ValueError("detector_on_goniometer is false: that is bcdi's forward-CDI preprocessing "
                         "(process_scan_cdi), which this BCDI workflow does not cover")
    save_to_npz = _none(bcdi_parameters.get("save_to_npz", True))
    if save_to_npz is False or (isinstance(save_to_npz, str) and save_to_npz.strip().lower() == "false"):
        raise ValueError("save_to_npz is false: bcdi would write no S<scan>_pynx*.npz pair for the gap-filled "
                         "pair to go with; set save_to_npz: true")
    return bcdi_parameters, check_gapfill_settings(config.get("gapfill"))


def _parse_with_bcdi(config_parser: Any, bcdi_parameters: dict[str, Any],
                     command_line_args: Mapping[str, Any] | None) -> dict[str, Any]:
    """bcdi's ConfigParser on the parameters (it reads a .yml file: a temporary copy)."""
    import yaml

    with tempfile.TemporaryDirectory(prefix="bcdi_gapfill_") as tmp:
        path = Path(tmp) / "bcdi_config.yml"
        path.write_text(yaml.safe_dump(bcdi_parameters, sort_keys=False), encoding="utf-8")
        parser = config_parser(str(path), dict(command_line_args) if command_line_args else None)
        return parser.load_arguments()


# ------------------------------------------------------------------------------ the hook
@contextlib.contextmanager
def _stage_after_bcdi_save(process_scan_module: Any, on_saved: Callable[[Any, Path, Path], None]) -> Iterator[None]:
    """While active, ``on_saved(analysis, data_path, mask_path)`` runs right after bcdi saves its pair."""
    original = process_scan_module.create_analysis

    def create_analysis(*args: Any, **kwargs: Any) -> Any:
        analysis = original(*args, **kwargs)
        bcdi_save_data, bcdi_save_mask = analysis.save_data, analysis.save_mask
        saved: dict[str, str] = {}

        def save_data(filename: str) -> None:
            bcdi_save_data(filename)
            saved["data"] = filename      # the last call is the PyNX data (save_rawdata saves earlier)

        def save_mask(filename: str) -> None:
            bcdi_save_mask(filename)
            if "data" not in saved:
                raise UnsupportedBcdiError("bcdi saved a mask before its data: this bcdi version is not "
                                           "supported")
            # numpy.savez_compressed adds .npz to a name without it
            on_saved(analysis, _npz_path(saved["data"]), _npz_path(filename))

        analysis.save_data, analysis.save_mask = save_data, save_mask
        return analysis

    process_scan_module.create_analysis = create_analysis
    try:
        yield
    finally:
        process_scan_module.create_analysis = original


def _npz_path(filename: str) -> Path:
    return Path(filename if filename.endswith(".npz") else filename + ".npz")


def _fill_saved_scan(analysis: Any, data_path: Path, mask_path: Path, settings: dict[str, Any],
                     provenance: dict[str, Any]) -> dict[str, Any]:
    """The stage on bcdi's final arrays of one scan; writes and returns the output paths and record."""
    paths = bcdi_stage.output_paths(data_path, mask_path, out_dir=settings["out_dir"], suffix=settings["suffix"])
    if not settings["overwrite"]:
        existing = [str(p) for p in paths.values() if os.path.lexists(p)]
        if existing:
            raise FileExistsError(f"outputs exist: {', '.join(existing)}; set gapfill.overwrite: true to replace them")
    detector = analysis.setup.detector
    detector_kwargs: dict[str, Any] = {}
    if settings["gap_from"] == "detector":
        current = getattr(detector, "current_binning", None) or detector.binning
        detector_kwargs = {
            "detector": settings["detector"] or detector,
            "roi": settings["roi"] or [int(v) for v in detector.roi],
            "binning": settings["binning"] or [1, int(current[1]), int(current[2])],
        }
    inpaint_kwargs = {key: settings[key] for key in ("batch_size", "device") if settings[key] is not None}
    if settings["flips"]:
        inpaint_kwargs["flips"] = True
    # bcdi writes the mask as int (Analysis.save_mask): the stage gets it as saved.
    data = np.asarray(analysis.data)
    mask = np.asarray(analysis.mask).astype(int)
    t0 = time.perf_counter()
    filled, new_mask, record = bcdi_stage.fill_bcdi_arrays(
        data, mask, method=settings["method"], model=settings["weights"], stride=settings["stride"],
        **detector_kwargs, **inpaint_kwargs)
    record["fill_time_s"] = time.perf_counter() - t0
    record["stage"] = "bcdi-preprocess"
    record["inputs"] = {"data": str(data_path.resolve()), "data_sha256": gio.file_sha256(data_path),
                        "mask": str(mask_path.resolve()), "mask_sha256": gio.file_sha256(mask_path)}
    record["bcdi"] = {**provenance, "scan": int(analysis.scan_nb), "detector": str(detector.name),
                      "roi": [int(v) for v in detector.roi],
                      "current_binning": [int(v) for v in (getattr(detector, "current_binning", None)
                                                           or detector.binning)]}
    record["gapfill_settings"] = dict(settings)
    record["outputs"] = {role: str(path.resolve()) for role, path in paths.items()}
    bcdi_stage.save_filled_pair(paths, filled, new_mask, record, overwrite=settings["overwrite"],
                                protect=[data_path, mask_path])
    return {"scan": int(analysis.scan_nb), "bcdi_data": data_path, "bcdi_mask": mask_path, **paths,
            "gap_voxels_filled": int(record["gap_voxels_filled"])}


# ---------------------------------------------------------------------------- entry point
def run_bcdi_preprocessing(config: str | os.PathLike | Mapping[str, Any], *,
                           command_line_args: Mapping[str, Any] | None = None,
                           gapfill: Mapping[str, Any] | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """Run bcdi's preprocessing with the gap-filling stage after each scan's save.

    Parameters
    ----------
    config : path or mapping
        A bcdi preprocessing YAML file (``.yml``), or its parameters as a dict, with
        optional ``gapfill:`` and ``report:`` sections (see the module docstring for their
        keys). With ``report:``, each scan is then phased and reported.
    command_line_args : mapping, optional
        bcdi's command-line overrides (``bcdi.utils.parser.add_cli_parameters``), as
        ``vars(parser.parse_args())``; None values are ignored, as in bcdi.
    gapfill : mapping, optional
        Settings that replace those of the ``gapfill:`` section, key by key.
    progress : bool
        Print one line per step of the report workflow.

    Returns
    -------
    list of dict, one per scan, in bcdi's order
        ``scan``; ``bcdi_data``, ``bcdi_mask`` (bcdi's pair, as bcdi wrote it); ``data``,
        ``mask``, ``record`` (our gap-filled pair and its JSON record, Paths);
        ``gap_voxels_filled``; ``report_dir``, ``report_json``, ``report_html`` (Paths of
        the report, None without a ``report:`` section).

    Raises
    ------
    ImportError
        bcdi is not installed.
    ValueError, TypeError, FileNotFoundError
        Unreadable configuration, unknown or bad ``gapfill`` keys; bcdi's own errors on its
        parameters and data pass through unchanged.
    FileExistsError
        One of our outputs (report outputs included) exists and ``gapfill.overwrite`` is
        false (bcdi's pair of that scan is written by then, as bcdi always does).
    """
    if isinstance(config, Mapping):
        raw = dict(config)
        source = "<dict>"
    else:
        raw = load_config(config)
        source = str(Path(config).resolve())
    if gapfill is not None:
        if not isinstance(gapfill, Mapping):
            raise TypeError(f"gapfill must be a mapping of settings, got {type(gapfill).__name__}")
        section = raw.get("gapfill") or {}
        if not isinstance(section, Mapping):
            raise TypeError(f"the gapfill section must be a mapping of settings, got {type(section).__name__}: "
                            f"{section!r}")
        raw["gapfill"] = {**section, **gapfill}
    bcdi_parameters, settings = split_config(raw)
    report = check_report_settings(raw["report"], settings) if "report" in raw else None

    config_parser, runner, process_scan_module, parameter_error = _import_bcdi()
    import bcdi

    try:
        prm = _parse_with_bcdi(config_parser, bcdi_parameters, command_line_args)
    except parameter_error as exc:      # not a ValueError in bcdi: made one, so callers catch one type
        raise ValueError(f"bcdi rejected the configuration: {exc}") from exc
    prm["multiprocessing"] = False            # see the module docstring
    provenance = {"bcdi_version": getattr(bcdi, "__version__", "unknown"), "config": source}
    if (report is not None and report["out_dir"] is not None and "{scan}" not in report["out_dir"]
            and len(prm["scans"]) > 1):
        raise ValueError(f"report.out_dir {report['out_dir']!r} would hold the reports of {len(prm['scans'])} "
                         "scans: put {scan} in it, or leave it null")

    results: list[dict[str, Any]] = []

    def on_saved(analysis: Any, data_path: Path, mask_path: Path) -> None:
        if report is not None and not settings["overwrite"]:
            # refused before the fill, as our other outputs are; run_workflow checks again
            scan = int(analysis.scan_nb)
            cfg = pipeline.load_workflow_config(_pipeline_config(report, settings, data=str(data_path),
                                                                 mask=str(mask_path), scan=scan))
            outputs = pipeline.workflow_outputs(cfg, _report_dir(report, data_path, scan))
            existing = [str(p) for role, p in outputs.items() if not role.startswith("filled_") and os.path.lexists(p)]
            if existing:
                raise FileExistsError(f"report outputs exist: {', '.join(existing)}; set gapfill.overwrite: true to "
                                      "replace them")
        results.append(_fill_saved_scan(analysis, data_path, mask_path, settings, provenance))

    # process_scan adds a log-file handler that it removes only on success; remove it on error
    # too, so that a failed run leaves no open log file behind.
    bcdi_logger = getattr(process_scan_module, "logger", logging.getLogger("bcdi.preprocessing.process_scan"))
    handlers_before = list(bcdi_logger.handlers)
    import matplotlib.pyplot as plt
    was_interactive = plt.isinteractive()     # process_scan switches interactive mode on
    try:
        with _stage_after_bcdi_save(process_scan_module, on_saved):
            runner.run(prm=prm)
    except parameter_error as exc:
        raise ValueError(f"bcdi rejected the configuration: {exc}") from exc
    finally:
        for handler in [h for h in bcdi_logger.handlers if h not in handlers_before]:
            bcdi_logger.removeHandler(handler)
            handler.close()
        plt.interactive(was_interactive)
    if len(results) != len(prm["scans"]):
        raise UnsupportedBcdiError(f"bcdi processed {len(prm['scans'])} scans but saved {len(results)} PyNX "
                                   "pairs: the stage could not be inserted (unsupported bcdi version?)")
    for result in results:
        result.update(report_dir=None, report_json=None, report_html=None)
        if report is not None:
            result.update(_report_scan(result, report, settings, progress))
    return results


def _report_scan(result: Mapping[str, Any], report: Mapping[str, Any], settings: Mapping[str, Any],
                 progress: bool) -> dict[str, Path]:
    """The scan workflow on bcdi's pair and our filled pair: phasing, baselines, report."""
    record = json.loads(Path(result["record"]).read_text())
    cfg = _pipeline_config(report, settings, data=str(result["bcdi_data"]), mask=str(result["bcdi_mask"]),
                           scan=result["scan"], record=record)
    out = _report_dir(report, Path(result["bcdi_data"]), result["scan"])
    done = pipeline.run_workflow(cfg, out, overwrite=settings["overwrite"], progress=progress,
                                 filled_pair={role: result[role] for role in ("data", "mask", "record")})
    return {"report_dir": out, "report_json": done["paths"]["report_json"],
            "report_html": done["paths"]["report_html"]}


# ------------------------------------------------------------------ a raw scan without a beamline
#: Maxipix frame size (rows, columns) and its chip-gap cross (bcdi 0.3.1 ``Maxipix._mask_gaps``).
MAXIPIX_SHAPE = (516, 516)


def write_simulated_id01bliss_scan(path: str | os.PathLike, *, shape: tuple[int, int, int] = (32, 32, 32),
                                   roi_origin: tuple[int, int] = (240, 236), seed: int = 0,
                                   peak_counts: float = 1e5, sample_name: str = "S", scan: int = 1,
                                   eta: tuple[float, float] = (10.0, 0.01), delta: float = 35.0, nu: float = 0.5,
                                   overwrite: bool = False) -> Path:
    """Write a simulated Maxipix rocking scan as ESRF ID01's BLISS HDF5 file, which bcdi reads.

    A simulated Bragg peak (:func:`bcdi_gapfill.core.simulate.simulate_pattern`, Poisson counts) of
    ``shape`` (frames, rows, columns) is placed on full 516 x 516 Maxipix frames with its first
    pixel at ``roi_origin``; the default origin puts the chip-gap cross (rows and columns
    255-260) across the peak. The file holds what bcdi 0.3.1's ``LoaderID01BLISS`` reads, for
    beamline ``ID01BLISS``, detector ``Maxipix``, ``template_imagefile`` the file name and
    ``rocking_angle: outofplane``: ``<sample_name>_<scan>.1/measurement/mpx1x4`` (frames, uint32),
    ``.../measurement/{eta, imon}`` and ``.../instrument/positioners/{eta, phi, nu, delta, mu}``
    (degrees; ``eta`` = start, step). Only for demonstrations and tests: real frames are not
    this clean. Returns the path; an existing file is refused unless ``overwrite``.
    """
    import h5py


    path = Path(gio.as_path(path, "path"))
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be 3 positive integers (frames, rows, columns), got {shape}")
    row0, col0 = (int(v) for v in roi_origin)
    if row0 < 0 or col0 < 0 or row0 + shape[1] > MAXIPIX_SHAPE[0] or col0 + shape[2] > MAXIPIX_SHAPE[1]:
        raise ValueError(f"a {shape[1]} x {shape[2]} region at roi_origin {roi_origin} does not fit on the "
                         f"{MAXIPIX_SHAPE[0]} x {MAXIPIX_SHAPE[1]} Maxipix")
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    counts = simulate_pattern(shape, seed, peak_counts=peak_counts).counts
    frames = np.zeros((shape[0], *MAXIPIX_SHAPE), np.uint32)
    frames[:, row0:row0 + shape[1], col0:col0 + shape[2]] = np.rint(counts).astype(np.uint32)
    eta_values = eta[0] + eta[1] * np.arange(shape[0])
    entry = f"{sample_name}_{scan}.1" if sample_name else f"{scan}.1"
    buffer = pyio.BytesIO()
    with h5py.File(buffer, "w") as h5:
        group = h5.create_group(entry)
        group.create_dataset("measurement/mpx1x4", data=frames, chunks=(1, *MAXIPIX_SHAPE), compression="gzip")
        group.create_dataset("measurement/eta", data=eta_values)
        group.create_dataset("measurement/imon", data=np.ones(shape[0]))
        positioners = group.create_group("instrument/positioners")
        positioners["eta"] = eta_values
        for name, value in (("phi", 0.0), ("nu", nu), ("delta", delta), ("mu", 0.0)):
            positioners[name] = float(value)
    gio.atomic_write_bytes(path, buffer.getvalue(), overwrite=overwrite)
    return path
