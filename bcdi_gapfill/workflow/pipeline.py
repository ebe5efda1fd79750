"""Ready BCDI pipelines: a bcdi output pair -> gap filling -> phase retrieval -> report.

The library side of the scripts of ``workflows/`` (``id01_maxipix.py``,
``eiger2m_highres.py``), which only name their YAML configuration::

    python workflows/id01_maxipix.py --config workflows/id01_maxipix.yml [--out DIR]
        [--set phasing.n_starts=2 ...] [--overwrite]

Steps of :func:`run_workflow`:

1. the input: bcdi's preprocessing output pair ``S<scan>_pynx*.npz`` (``data``) and
   ``S<scan>_maskpynx*.npz`` (``mask``, nonzero = masked), or, with a ``simulate:`` section,
   such a pair made here from a simulated crystal (:func:`simulate_bcdi_pair`: the gaps of
   the detector's real layout cropped to a ROI, zeroed and masked as bcdi does, plus a few
   hot pixels), so that the workflow runs without beamline data;
2. the bcdi stage (:func:`bcdi_gapfill.integrations.bcdi.fill_bcdi_files`) writes the gap-filled pair
   and its JSON record into the output directory (the inputs are only read); or, with
   ``filled_pair``, a pair the stage already filled from the same input (as
   :mod:`bcdi_gapfill.workflow.bcdi_preprocess` does at bcdi's save) is taken as it is;
3. phase retrieval (:func:`bcdi_gapfill.phasing.engine.phase_retrieval`) of the filled data and of
   two baselines, the same algorithm, starts and seeds for all: ``free_pixels`` (the gap
   left unconstrained) and ``zero_fill`` (the gap constrained to zero). Hot pixels and
   other masked voxels are free in every run. A simulated input adds ``no_gap``, the complete
   pattern, as the reference;
4. a report (``report.json`` and ``report.html``, :func:`bcdi_gapfill.validation.core.write_report`):
   for every phasing the Poisson LLK against the measured (non-masked) voxels, the same for
   all (``llk_measured``, comparable between methods), the LLK against the data it was given
   (``llk``), the support size, the time; the number of gap voxels filled. A simulated input
   also has its ground truth, so the report adds the real-space metrics of
   :func:`bcdi_gapfill.core.metrics.real_space_report` (strain RMSE, phase std, ...), the in-gap
   PCC of the filled and of the reconstructed intensity, and the figures of the validation
   report. Measured data have no ground truth: their report has the tables only.

Every output is checked to be free (or ``overwrite``) before anything is computed, and
written atomically. The configuration (YAML, or the same mapping in Python; relative paths
are taken from the current directory, as for the other configurations)::

    name: id01_maxipix           # shown in the report
    scan: 1                      # S<scan> of the simulated file names
    data: null                   # S<scan>_pynx....npz; or leave null and give simulate
    mask: null                   # S<scan>_maskpynx....npz
    out_dir: id01_maxipix_output
    overwrite: false
    simulate:                    # null when data is given
      seed: 0
      size: [64, 96, 96]         # frames, rows, columns (each >= 32 for the model)
      detector: Maxipix          # the gap layout (geometry.DETECTORS)
      roi_origin: [220, 226]     # unbinned detector pixel of the array's first row and column
      hot_pixels: 3
      ...                        # simulate_pattern options, strain q_vector and voxel_size
    gapfill: {method: model, weights: null, stride: null, detector: null, roi: null,
              binning: null, device: null, flips: false, batch_size: null}
    phasing: {algorithm: "ER**200 * (Sup * HIO**20)**30", n_starts: 4, seed: 0, n_average: 1,
              support_threshold: 0.1, device: null, backend: torch,
              baselines: [free_pixels, zero_fill], release: null}

``phasing.release``: null gives the filled gap to phase retrieval as data; a number in
(0, 1] *releases* it instead (``phase_retrieval(..., estimated_mask=gap, release=...)``): the
fill steers the first iterations and the gap is free after that share of them (0.75: free
for the 200 ER of the default algorithm). docs/benchmarks.md, "Releasing the fill during
phase retrieval", measures it against the fill as data and the free pixels.

Arrays are (frames, rows, columns).
"""
from __future__ import annotations

import copy
import datetime as _dt
import io as _pyio
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bcdi_gapfill.core import geometry, io as gio, metrics as M
from bcdi_gapfill.core.config import FILL_SETTINGS, read_yaml_mapping
from bcdi_gapfill.core.io import json_safe, software_versions
from bcdi_gapfill.core.methods import TREATMENT_OF_FILL
from bcdi_gapfill.core.metrics import diffracted_intensity, truth_support
from bcdi_gapfill.core.simulate import simulate_pattern
from bcdi_gapfill.integrations.bcdi import fill_bcdi_files, output_paths
from bcdi_gapfill.validation.report import FigureData, figure_planes, real_space_crop, write_report

__all__ = ["DEFAULT_CONFIG", "SIMULATE_DEFAULTS", "BASELINES", "SimulatedPair", "load_workflow_config",
           "simulate_bcdi_pair", "workflow_outputs", "run_workflow",]

#: The phase-retrieval baselines a workflow can compare the filled data with.
BASELINES = ("free_pixels", "zero_fill")
_SCHEMA = "bcdi_gapfill.workflow.pipeline/1"
# simulate_pattern's options that a `simulate:` section may set.
_PATTERN_OPTIONS = ("shape_name", "oversampling", "peak_counts", "phase", "phase_amplitude", "detector_frame",
                    "peak_offset", "coherence_sigma", "background")

#: Every key of a workflow configuration, with its default.
DEFAULT_CONFIG: dict[str, Any] = {
    "name": "workflow",
    "scan": 1,
    "data": None,
    "mask": None,
    "simulate": None,
    "out_dir": "workflow_output",
    "overwrite": False,
    "gapfill": dict(FILL_SETTINGS),
    "phasing": {"algorithm": "ER**200 * (Sup * HIO**20)**30", "n_starts": 4, "seed": 0, "n_average": 1,
                "support_threshold": 0.1, "device": None, "backend": "torch", "baselines": list(BASELINES),
                "release": None},
}
#: Defaults of a ``simulate:`` section: the crystal is drawn from ``seed``; the peak is centred,
#: with no coherence blur or background, so that the truth's phase is the reference of the metrics.
SIMULATE_DEFAULTS: dict[str, Any] = {
    "seed": 0, "size": [64, 96, 96], "detector": "Maxipix", "roi_origin": None, "hot_pixels": 3,
    "shape_name": None, "oversampling": 3.0, "peak_counts": 1e6, "phase": "random", "phase_amplitude": 0.5,
    "detector_frame": False, "peak_offset": [0, 0, 0], "coherence_sigma": 0.0, "background": 0.0,
    "q_vector": None, "voxel_size": 5e-9,
}
_SECTIONS = {"gapfill": DEFAULT_CONFIG["gapfill"], "phasing": DEFAULT_CONFIG["phasing"], "simulate": SIMULATE_DEFAULTS}
# The name of the filled data's phasing in the report: validate's names where they exist.


# ----------------------------------------------------------------------------- configuration
def _parse_override(item: str) -> tuple[list[str], Any]:
    import yaml

    if not isinstance(item, str) or "=" not in item:
        raise ValueError(f"an override must look like key.sub=value, got {item!r}")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"an override must look like key.sub=value, got {item!r}")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:  # e.g. "*" starting a PyNX-style algorithm reads as a YAML alias
        value = text
    return parts, value


def _merge(config: dict, parts: list[str], value: Any) -> None:
    node = config
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ValueError(f"cannot set {'.'.join(parts)}: {part} is not a section")
        node = node[part]
    node[parts[-1]] = value


def _int_at_least(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def load_workflow_config(config: str | os.PathLike | Mapping[str, Any] | None = None,
                         overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a workflow configuration, apply ``key.sub=value`` overrides and fill the defaults.

    Parameters
    ----------
    config : path of a YAML file, mapping, or None
        None gives :data:`DEFAULT_CONFIG` (which then needs ``data`` or ``simulate``).
    overrides : sequence of str
        ``"phasing.n_starts=1"``, ``"simulate.size=[32, 48, 48]"``, ``"simulate=null"``: the
        value is read as YAML (a string when it is not valid YAML).

    Returns
    -------
    dict
        Every key of :data:`DEFAULT_CONFIG`; ``simulate`` is None or has every key of
        :data:`SIMULATE_DEFAULTS`.

    Raises
    ------
    ValueError
        On unknown keys, on both or neither of ``data`` and ``simulate``, and on values that
        cannot work (an unknown baseline, a malformed algorithm, a bad size or ROI origin).
    """
    if config is None:
        raw: dict[str, Any] = {}
        where = "the workflow configuration"
    elif isinstance(config, Mapping):
        raw = copy.deepcopy(dict(config))
        where = "the workflow configuration"
    else:
        path = Path(config)
        raw = read_yaml_mapping(path, "workflow config")
        where = f"workflow config {path}"
    for item in overrides:
        parts, value = _parse_override(item)
        _merge(raw, parts, value)
    gio.check_config_keys(raw, DEFAULT_CONFIG, where)
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    for key, value in raw.items():
        if key in _SECTIONS and value is not None:
            if not isinstance(value, Mapping):
                raise ValueError(f"{key} in {where} must be a section (a mapping), got {value!r}")
            gio.check_config_keys(value, _SECTIONS[key], f"the {key} section of {where}")
            base = copy.deepcopy(_SECTIONS[key]) if key == "simulate" else cfg[key]
            base.update(value)
            cfg[key] = base
        elif key in ("gapfill", "phasing") and value is None:
            continue
        else:
            cfg[key] = value

    if (cfg["data"] is None) == (cfg["simulate"] is None):
        raise ValueError("give either data (and mask), the bcdi output pair, or a simulate section, not "
                         f"{'both' if cfg['data'] is not None else 'neither'}")
    if cfg["data"] is None and cfg["mask"] is not None:
        raise ValueError("mask is given without data; with simulate, the workflow makes both")
    _int_at_least(cfg["scan"], "scan", 0)
    method = cfg["gapfill"]["method"]
    if method == "zero":
        raise ValueError("gapfill.method 'zero' is the zero_fill baseline already; choose model or a classical "
                         "fill (biharmonic, linear, cubic, nearest)")
    phasing = cfg["phasing"]
    baselines = phasing["baselines"] or []
    if isinstance(baselines, str) or any(b not in BASELINES for b in baselines) \
            or len(set(baselines)) != len(baselines):
        raise ValueError(f"phasing.baselines must be a list of distinct names from {BASELINES}, got {baselines!r}")
    n_starts = _int_at_least(phasing["n_starts"], "phasing.n_starts", 1)
    if _int_at_least(phasing["n_average"], "phasing.n_average", 1) > n_starts:
        raise ValueError(f"phasing.n_average ({phasing['n_average']}) cannot exceed phasing.n_starts ({n_starts})")
    _int_at_least(phasing["seed"], "phasing.seed", 0)
    release = phasing["release"]
    if release is not None and (isinstance(release, bool) or not isinstance(release, (int, float))
                                or not 0 < release <= 1):
        raise ValueError(f"phasing.release must be null or a number in (0, 1], got {release!r}")
    if release is not None and phasing["backend"] != "torch":
        raise ValueError("phasing.release needs phasing.backend torch (PyNX's CPU operators have no weighted "
                         "projection)")
    from bcdi_gapfill.phasing.engine import parse_algorithm
    parse_algorithm(phasing["algorithm"])  # a typo fails here, before hours of computing
    sim = cfg["simulate"]
    if sim is not None:
        size = sim["size"]
        if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
            size = [int(size)] * 3
        if (not isinstance(size, Sequence) or isinstance(size, str) or len(size) != 3
                or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 8 for n in size)):
            raise ValueError(f"simulate.size must be 3 integers >= 8 (frames, rows, columns), got {sim['size']!r}")
        sim["size"] = [int(n) for n in size]
        origin = sim["roi_origin"]
        if origin is not None and (not isinstance(origin, Sequence) or isinstance(origin, str) or len(origin) != 2
                                   or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in origin)):
            raise ValueError(f"simulate.roi_origin must be [row, column] or null, got {sim['roi_origin']!r}")
        _int_at_least(sim["hot_pixels"], "simulate.hot_pixels", 0)
    return cfg


# -------------------------------------------------------------------------------- simulation
@dataclass
class SimulatedPair:
    """A bcdi output pair made by :func:`simulate_bcdi_pair`, and the truth behind it.

    Attributes
    ----------
    data_path, mask_path : Path
        ``S<scan>_pynx_sim_<F>_<R>_<C>_1_1_1.npz`` (``data``, float64 counts, masked voxels 0)
        and ``S<scan>_maskpynx_sim_...npz`` (``mask``, int8, 1 = masked), as bcdi writes them.
    counts : ndarray, float32, (frames, rows, columns)
        The complete Poisson counts, gap included (what a gapless detector would measure).
    obj : ndarray, complex64, same shape
        The ground-truth crystal, centred, scaled so that ``sum |obj|**2`` is the expected
        photon count (unitary FFT convention of :mod:`bcdi_gapfill.phasing.engine`).
    gap, hot : ndarray of bool, same shape
        The detector-gap voxels and the hot-pixel voxels (both masked in the pair).
    roi : list of 4 int
        The crop of the detector, ``[row0, row1, col0, col1]`` in unbinned pixels.
    metadata : dict
        The simulation's settings and drawn parameters.
    """

    data_path: Path
    mask_path: Path
    counts: np.ndarray
    obj: np.ndarray
    gap: np.ndarray
    hot: np.ndarray
    roi: list[int]
    metadata: dict[str, Any] = field(default_factory=dict)


def _simulated_names(out_dir: Path, scan: int, size: Sequence[int]) -> tuple[Path, Path]:
    comment = f"_sim_{size[0]}_{size[1]}_{size[2]}_1_1_1"
    return out_dir / f"S{scan}_pynx{comment}.npz", out_dir / f"S{scan}_maskpynx{comment}.npz"


def simulate_bcdi_pair(out_dir: str | os.PathLike, *, scan: int = 1, seed: int = 0,
                       size: Sequence[int] = (64, 96, 96), detector: str = "Maxipix",
                       roi_origin: Sequence[int] | None = None, hot_pixels: int = 3, overwrite: bool = False,
                       **pattern_options: Any) -> SimulatedPair:
    """Write a bcdi-like output pair of a simulated crystal on a detector's real gap layout.

    Parameters
    ----------
    out_dir : path
        Existing directory of the two files.
    scan : int
        ``S<scan>`` of the file names.
    seed : int
        Seed of :func:`bcdi_gapfill.core.simulate.simulate_pattern` (crystal, strain, noise) and of
        the hot pixels.
    size : 3 ints
        (frames, rows, columns) of the array.
    detector : str
        Detector whose gap layout (:data:`bcdi_gapfill.core.geometry.DETECTORS`) masks the pattern.
    roi_origin : (row, column), optional
        Unbinned detector pixel of the array's first row and column; default: the array
        centred on the detector.
    hot_pixels : int
        Detector pixels masked in every frame away from the gap (as bcdi masks hot pixels).
    overwrite : bool
        Replace existing files.
    **pattern_options
        Passed to ``simulate_pattern`` (``peak_counts``, ``phase``, ``oversampling``, ...).

    Returns
    -------
    SimulatedPair
    """

    size = [int(n) for n in size]
    layout = geometry.get_detector(detector)
    if roi_origin is None:
        roi_origin = ((layout.shape[0] - size[1]) // 2, (layout.shape[1] - size[2]) // 2)
    row0, col0 = (int(v) for v in roi_origin)
    roi = [row0, row0 + size[1], col0, col0 + size[2]]
    gap = geometry.detector_gap_mask(layout, size[0], roi=roi)  # refuses a ROI off the detector
    if not gap.any():
        raise ValueError(f"the {layout.name} ROI {roi} holds no chip gap: move simulate.roi_origin onto a gap")
    if gap.all():
        raise ValueError(f"the {layout.name} ROI {roi} lies entirely in a chip gap: move simulate.roi_origin")
    unknown = sorted(set(pattern_options) - set(_PATTERN_OPTIONS))
    if unknown:
        raise TypeError(f"unknown simulate_pattern options {unknown}; known: {list(_PATTERN_OPTIONS)}")
    options = {k: v for k, v in pattern_options.items() if v is not None}
    if "peak_offset" in options:
        options["peak_offset"] = tuple(int(v) for v in options["peak_offset"])
    if isinstance(options.get("oversampling"), list):
        options["oversampling"] = tuple(options["oversampling"])
    sim = simulate_pattern(tuple(size), seed, **options)

    rng = np.random.default_rng([int(seed), 7])
    hot = np.zeros(gap.shape, bool)
    free_pixels = np.argwhere(~gap[0])
    if hot_pixels and free_pixels.size:
        chosen = free_pixels[rng.choice(len(free_pixels), size=min(int(hot_pixels), len(free_pixels)),
                                        replace=False)]
        hot[:, chosen[:, 0], chosen[:, 1]] = True
    mask = (gap | hot).astype(np.int8)
    data = sim.counts.astype(np.float64)
    data[mask != 0] = 0  # bcdi zeroes what it masks
    data_path, mask_path = _simulated_names(Path(out_dir), scan, size)
    for path, entry, array in ((data_path, "data", data), (mask_path, "mask", mask)):
        buffer = _pyio.BytesIO()
        np.savez_compressed(buffer, **{entry: array})  # bcdi's layout: a single entry per file
        gio.atomic_write_bytes(path, buffer.getvalue(), overwrite=overwrite)

    expected = sim.expected.astype(np.float64)
    obj = sim.obj.astype(np.complex128)
    scale = math.sqrt(expected.sum() / float((np.abs(obj) ** 2).sum()))
    metadata = {**sim.metadata, "detector": layout.name, "roi": roi, "hot_pixels": int(hot[0].sum())}
    return SimulatedPair(data_path=data_path, mask_path=mask_path, counts=sim.counts, obj=(obj * scale).astype(
        np.complex64), gap=gap, hot=hot, roi=roi, metadata=metadata)


# ---------------------------------------------------------------------------------- running
def _method_names(cfg: Mapping[str, Any]) -> list[str]:
    method = cfg["gapfill"]["method"]
    names = [TREATMENT_OF_FILL.get(method, method)]
    names += [b for b in BASELINES if b in (cfg["phasing"]["baselines"] or [])]
    if cfg["simulate"] is not None:
        names.append("no_gap")
    return names


def workflow_outputs(cfg: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Every file :func:`run_workflow` writes for ``cfg`` in ``out_dir``, by role."""

    out = Path(out_dir)
    paths: dict[str, Path] = {}
    if cfg["simulate"] is not None:
        paths["input_data"], paths["input_mask"] = _simulated_names(out, cfg["scan"], cfg["simulate"]["size"])
        data, mask = paths["input_data"], paths["input_mask"]
    else:
        data, mask = Path(cfg["data"]), None if cfg["mask"] is None else Path(cfg["mask"])
    for role, path in output_paths(data, mask, out_dir=out).items():
        paths[f"filled_{role}"] = path
    for name in _method_names(cfg):
        paths[f"reconstruction_{name}"] = out / f"reconstruction_{name}.npz"
    paths["report_json"] = out / "report.json"
    paths["report_html"] = out / "report.html"
    return paths


def _phasing_intensity(data: np.ndarray) -> np.ndarray:
    # bcdi keeps masked values as they are (0, or negative after background subtraction);
    # phase retrieval needs finite, non-negative photons and never reads the free voxels.
    return np.clip(np.nan_to_num(np.asarray(data, np.float32), nan=0.0, posinf=0.0, neginf=0.0), 0, None)


def _central_slices(obj: np.ndarray, truth: np.ndarray, support: np.ndarray, q, voxel) -> tuple[dict, dict]:
    """Real-space metrics of a reconstruction against the truth, and its central slices."""

    rep = M.real_space_report(obj, truth, support, q, voxel)
    aligned = M.align_to_reference(obj, truth, support, remove_ramp=False)
    phase = M.unwrap_phase(np.angle(aligned), support)
    qv = np.asarray(q, dtype=float)
    eps = M.strain(M.displacement(phase, q), voxel, 0 if qv.ndim == 0 else qv, support=support)
    k = obj.shape[0] // 2
    return rep, {"modulus": np.abs(aligned[k]).astype(np.float32), "phase": phase[k].astype(np.float32),
                 "strain": eps[k].astype(np.float32)}


def _pcc(truth: np.ndarray, pred: np.ndarray, gap: np.ndarray) -> float:

    with np.errstate(invalid="ignore", divide="ignore"):
        return float(M.pcc_gap(truth, np.clip(pred, 0, None), gap, log=True))


def _figures(sim: SimulatedPair, data: np.ndarray, mask: np.ndarray, gap: np.ndarray, given: Mapping[str, np.ndarray],
             slices: Mapping[str, dict], support: np.ndarray, q, voxel):
    """The validation report's figures (reciprocal-space cuts, real-space slices) of a simulated run."""

    planes = figure_planes(gap)
    cut = [lambda a, ax=ax, i=i: np.take(a, i, axis=ax) for _, ax, i, _, _ in planes]
    masked = []
    for take in cut:
        s = take(data).astype(np.float32)
        s[take(mask != 0)] = np.nan
        masked.append(s)
    fd = FigureData()
    fd.recip = {"planes": planes, "truth": [take(sim.counts) for take in cut], "masked": masked,
                "gap": [take(gap) for take in cut],
                "methods": {"pr": {n: [take(a).astype(np.float32) for take in cut] for n, a in given.items()}}}
    rows, cols = real_space_crop(support)
    shape = data.shape
    k = shape[0] // 2
    vox = np.broadcast_to(np.asarray(voxel, float), (3,)) * 1e9
    phase_t = M.unwrap_phase(np.angle(sim.obj), support)
    eps_t = M.strain(M.displacement(phase_t, q), voxel, 0 if np.ndim(q) == 0 else q, support=support)
    fd.real = {"modes": {"pr": {n: {key: v[rows, cols] for key, v in sl.items()} for n, sl in slices.items()}},
               "truth": {"modulus": np.abs(sim.obj[k])[rows, cols].astype(np.float32),
                         "phase": phase_t[k][rows, cols].astype(np.float32),
                         "strain": eps_t[k][rows, cols].astype(np.float32)},
               "support": support[k][rows, cols],
               "extent": [(cols.start - shape[2] // 2 - 0.5) * vox[2], (cols.stop - shape[2] // 2 - 0.5) * vox[2],
                          (rows.stop - shape[1] // 2 - 0.5) * vox[1], (rows.start - shape[1] // 2 - 0.5) * vox[1]],
               "axes": ("columns (nm)", "rows (nm)"), "plane": f"central frame (index {k})"}
    return fd


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, flush=True)


def _given_filled_pair(filled_pair: Any, cfg: Mapping[str, Any]) -> tuple[dict[str, Path], dict[str, Any]]:
    """Check a pair the bcdi stage already wrote for the configuration's data; its paths and record."""
    if cfg["simulate"] is not None:
        raise ValueError("filled_pair is a gap-filled pair of the configuration's data: give data (and mask), not a "
                         "simulate section")
    data_path, mask_path = Path(cfg["data"]), None if cfg["mask"] is None else Path(cfg["mask"])
    if not isinstance(filled_pair, Mapping) or set(filled_pair) != {"data", "mask", "record"}:
        raise ValueError(f"filled_pair must map 'data', 'mask' and 'record' to the files the bcdi stage wrote, got "
                         f"{filled_pair!r}")
    paths = {role: Path(filled_pair[role]) for role in ("data", "mask", "record")}
    for role, path in paths.items():
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path} (filled_pair {role})")
    record = json.loads(paths["record"].read_text())
    if not isinstance(record, Mapping):
        raise ValueError(f"{paths['record']} is not a record of the bcdi stage (a JSON object)")
    # The record names the pair it was filled from by content: a stale or foreign pair is refused.
    inputs = record.get("inputs") or {}
    expected = {"data_sha256": data_path} if mask_path is None else {"data_sha256": data_path,
                                                                      "mask_sha256": mask_path}
    for key, path in expected.items():
        if inputs.get(key) != gio.file_sha256(path):
            raise ValueError(f"the filled pair's record {paths['record']} was not made from {path} ({key} differs "
                             "or is missing): fill this pair again, or let the workflow fill it")
    if record.get("method") != cfg["gapfill"]["method"]:
        raise ValueError(f"the filled pair was made with method {record.get('method')!r}, but gapfill.method is "
                         f"{cfg['gapfill']['method']!r}")
    return paths, record


def run_workflow(config: str | os.PathLike | Mapping[str, Any], out_dir: str | os.PathLike | None = None, *,
                 overwrite: bool | None = None, progress: bool = False,
                 filled_pair: Mapping[str, str | os.PathLike] | None = None) -> dict[str, Any]:
    """Run a ready pipeline: bcdi pair (read or simulated) -> gap filling -> phasing -> report.

    Parameters
    ----------
    config : path or mapping
        A workflow configuration (see the module docstring), read by
        :func:`load_workflow_config` unless it already went through it.
    out_dir : path, optional
        Output directory (created when missing); default ``config["out_dir"]``.
    overwrite : bool, optional
        Replace earlier outputs; default ``config["overwrite"]``. Without it, any existing
        output raises FileExistsError before anything is computed.
    progress : bool
        Print one line per step (and the inpainting progress bar).
    filled_pair : mapping, optional
        ``{"data", "mask", "record"}``: the gap-filled pair and JSON record that the bcdi
        stage already wrote for the configuration's ``data``/``mask`` (e.g. by
        :func:`bcdi_gapfill.workflow.bcdi_preprocess.run_bcdi_preprocessing`). The fill step is then
        skipped and that pair is phased as it is (only read); its record must name the
        configuration's files by SHA-256 and ``gapfill.method``. Not with ``simulate``.

    Returns
    -------
    dict
        ``{"report": <the report dict>, "paths": {role: Path}}``; the report is also
        ``report.json`` in the output directory. With ``filled_pair``, the ``filled_*`` roles
        are the given files.
    """
    from bcdi_gapfill.phasing.engine import CDIState, phase_retrieval

    cfg = load_workflow_config(config)
    out = Path(out_dir if out_dir is not None else cfg["out_dir"])
    overwrite = bool(cfg["overwrite"] if overwrite is None else overwrite)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    paths = workflow_outputs(cfg, out)
    if cfg["data"] is not None:
        for key in ("data", "mask"):
            if cfg[key] is not None and not Path(cfg[key]).is_file():
                raise FileNotFoundError(f"no such file: {cfg[key]} ({key} of the workflow configuration)")
    if filled_pair is not None:
        given_filled, given_record = _given_filled_pair(filled_pair, cfg)
        paths.update({f"filled_{role}": path for role, path in given_filled.items()})
    written_here = {role: path for role, path in paths.items()
                    if filled_pair is None or not role.startswith("filled_")}
    existing = [str(p) for p in written_here.values() if os.path.lexists(p)]
    if existing and not overwrite:
        raise FileExistsError(f"outputs exist: {', '.join(existing)}; pass overwrite=True (--overwrite) to "
                              "replace them")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    sim = None
    n_steps = 4
    if cfg["simulate"] is not None:
        s = cfg["simulate"]
        sim = simulate_bcdi_pair(out, scan=cfg["scan"], seed=s["seed"], size=s["size"], detector=s["detector"],
                                 roi_origin=s["roi_origin"], hot_pixels=s["hot_pixels"], overwrite=overwrite,
                                 **{k: s[k] for k in _PATTERN_OPTIONS})
        data_path, mask_path = sim.data_path, sim.mask_path
        _say(progress, f"[1/{n_steps}] simulated {data_path.name} and {mask_path.name} on the {s['detector']} "
                       f"gap layout (roi {sim.roi})")
    else:
        data_path, mask_path = Path(cfg["data"]), None if cfg["mask"] is None else Path(cfg["mask"])
        _say(progress, f"[1/{n_steps}] input {data_path.name}" + (f" and {mask_path.name}" if mask_path else ""))

    g = cfg["gapfill"]
    options = {k: g[k] for k in ("device", "batch_size") if g[k] is not None}
    if g["flips"]:
        options["flips"] = True
    if g["method"] == "model" and progress:
        options["progress"] = True
    if filled_pair is None:
        t0 = time.perf_counter()
        filled_paths = fill_bcdi_files(data_path, mask_path, out_dir=out, overwrite=overwrite,
                                       detector=g["detector"], roi=g["roi"], binning=g["binning"], method=g["method"],
                                       model=g["weights"], stride=g["stride"], **options)
        fill_time = time.perf_counter() - t0
        record = json.loads(filled_paths["record"].read_text())
    else:
        filled_paths, record = given_filled, given_record
        fill_time = record.get("fill_time_s")  # measured by whoever filled it, when recorded
    data, mask = gio.load_data_and_mask(data_path, mask_path)
    mask = np.zeros(data.shape, bool) if mask is None else np.asarray(mask) != 0
    with np.load(filled_paths["data"]) as npz_data, np.load(filled_paths["mask"]) as npz_mask:
        filled, new_mask = npz_data["data"], npz_mask["mask"] != 0
    gap = mask & ~new_mask  # the voxels the stage filled and released
    if filled_pair is None:
        _say(progress, f"[2/{n_steps}] filled {int(gap.sum())} gap voxels with {g['method']} in {fill_time:.1f} s "
                       f"-> {filled_paths['data'].name}")
    else:
        _say(progress, f"[2/{n_steps}] {filled_paths['data'].name}: {int(gap.sum())} gap voxels filled with "
                       f"{g['method']} by the bcdi stage already")

    measured = _phasing_intensity(data)
    given = {}  # name -> (intensity given to phase retrieval, free voxels)
    filled_name = _method_names(cfg)[0]
    given[filled_name] = (_phasing_intensity(filled), new_mask)
    if "free_pixels" in (cfg["phasing"]["baselines"] or []):
        given["free_pixels"] = (measured, mask)
    if "zero_fill" in (cfg["phasing"]["baselines"] or []):
        zero = measured.copy()
        zero[gap] = 0
        given["zero_fill"] = (zero, new_mask)
    if sim is not None:
        given["no_gap"] = (_phasing_intensity(sim.counts), sim.hot)

    p = cfg["phasing"]
    true_support = q = voxel = None
    if sim is not None:
        # validate's default: Pt 111 along the detector rows, where a row gap perturbs the strain
        q = cfg["simulate"]["q_vector"] or [0.0, M.bragg_q((1, 1, 1)), 0.0]
        voxel = cfg["simulate"]["voxel_size"]
        true_support = truth_support(sim.obj, 0.3)
    measured_free = mask if mask.any() else None
    results: dict[str, dict] = {}
    slices: dict[str, dict] = {}
    reconstructed: dict[str, np.ndarray] = {}
    for k, (name, (intensity, free)) in enumerate(given.items(), 1):
        starts = f"{p['n_starts']} start{'s' if p['n_starts'] != 1 else ''}"
        _say(progress, f"[3/{n_steps}] phasing {k}/{len(given)}: {name} ({starts} of {p['algorithm']})")
        t1 = time.perf_counter()
        # CDIState leaves out of the estimate the voxels that are free anyway (hot pixels).
        release = ({"estimated_mask": gap, "release": p["release"]}
                   if name == filled_name and p["release"] is not None else {})
        res = phase_retrieval(intensity, free_mask=free if free.any() else None, algorithm=p["algorithm"],
                              n_starts=p["n_starts"], seed=p["seed"], n_average=p["n_average"], device=p["device"],
                              backend=p["backend"], support_threshold=p["support_threshold"], **release)
        state = CDIState(measured, free_mask=measured_free, device="cpu")
        state.set_obj(res.obj)
        state.set_support(res.support)
        entry: dict[str, Any] = {"llk_measured": state.llk(), "llk": res.llk,
                                 "support_voxels": int(res.support.sum()),
                                 "phasing_time_s": time.perf_counter() - t1, "best_start": res.best,
                                 "llk_starts": [float(v) for v in res.llk_starts]}
        if name == filled_name:
            entry.update(fill_time_s=fill_time, gap_voxels_filled=int(gap.sum()))
        if sim is not None:
            rep, slices[name] = _central_slices(res.obj, sim.obj, true_support, q, voxel)
            entry.update(rep)
            i_rec = diffracted_intensity(res.obj.astype(np.complex128))
            reconstructed[name] = i_rec
            entry["pcc_gap_reconstructed"] = _pcc(sim.counts, i_rec, gap)
            source = i_rec if name == "free_pixels" else intensity
            entry["pcc_gap"] = _pcc(sim.counts, source, gap)
            truth_in_gap = float(sim.counts[gap].astype(np.float64).sum())
            entry["gap_intensity_ratio"] = (float(source[gap].astype(np.float64).sum()) / truth_in_gap
                                            if truth_in_gap > 0 else None)
        results[name] = entry
        buffer = _pyio.BytesIO()
        np.savez_compressed(buffer, obj=res.obj, support=res.support, llk=np.float64(res.llk),
                            llk_measured=np.float64(entry["llk_measured"]))
        gio.atomic_write_bytes(paths[f"reconstruction_{name}"], buffer.getvalue(), overwrite=overwrite)

    settings = {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": software_versions(), "workflow": cfg["name"], "source": "simulated" if sim else "measured",
        "inputs": {"data": str(data_path), "mask": None if mask_path is None else str(mask_path)},
        "shape": list(data.shape), "peak_photons": float(measured.max()), "noiseless": False,
        "gap": record.get("detector") or f"from the mask ({record.get('gap_source')})",
        "gap_voxels": int(gap.sum()), "gap_fraction": float(gap.mean()),
        "masked_voxels_not_gap": int((mask & ~gap).sum()),
        "gapfill": {k: v for k, v in g.items()}, "gapfill_record": record,
        "outputs": {role: str(path) for role, path in filled_paths.items()},
        "methods": list(results), "algorithm": p["algorithm"], "n_starts": p["n_starts"], "seed_pr": p["seed"],
        "n_average": p["n_average"], "backend": p["backend"], "support_threshold": p["support_threshold"],
        "release": p["release"],
        "support_voxels_by_method": {n: r["support_voxels"] for n, r in results.items()},
        "llk_note": ("llk_measured: normalised Poisson LLK on the voxels measured in the input (mask 0), the same "
                     "for every method; llk: against the data each phasing was given"),
        "simulation": None if sim is None else {**sim.metadata, **{k: cfg["simulate"][k] for k in (
            "seed", "size", "roi_origin", "hot_pixels")}, "q_vector_inv_m": [float(v) for v in np.ravel(q)],
            "voxel_size_m": voxel, "support_voxels_truth": int(true_support.sum())},
        "elapsed_s": time.perf_counter() - t_start,
    }
    report = {"schema": _SCHEMA, "mode": "pr", "primary_mode": "pr", "methods": json_safe(results),
              "results": {"pr": json_safe(results)}, "settings": json_safe(settings)}
    figures = None
    if sim is not None:
        shown = {n: (reconstructed[n] if n == "free_pixels" else given[n][0]) for n in results}
        figures = _figures(sim, data, mask, gap, shown, slices, true_support, q, voxel)
    _say(progress, f"[4/{n_steps}] report -> {paths['report_html']}")
    written = write_report(report, out, figures=figures, overwrite=overwrite)
    paths.update(report_json=written["json"], report_html=written["html"])
    return {"report": report, "paths": paths}
