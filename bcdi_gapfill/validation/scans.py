"""Held-out detector-frame scans simulated with cdiutils, and their in-gap evaluation table.

The patterns of :mod:`bcdi_gapfill.core.simulate` train the model. These scans come from another
simulator, cdiutils' ``simulation.BCDISimulator`` (ID01 diffractometer geometry, the Maxipix
mask with its 6-pixel chip cross, the rocking curve sampled in the detector frame), so they
check that the model generalises to data we did not simulate. Nothing in the training code
(:mod:`bcdi_gapfill.nn.dataset`, :mod:`bcdi_gapfill.nn.train`) reads them;
``tests/test_cdiutils_stage.py`` checks that this stays so.

How a scan is made
------------------
For each seed: a box, ellipsoid or cylinder crystal with a random orientation, a size giving
fringes 4 to 9 pixels apart (``fringe_period``), and cdiutils' correlated random phase
(``BCDISimulator.simulate_object``); a Pt 111 reflection at 9 keV with the peak placed on the
Maxipix within 10 pixels of the chip cross (``get_detector_angles`` with
``target_peak_position``); a rocking curve of ``shape[0]``
frames (``set_measurement_params``); the intensity resampled into the detector frame with
cdiutils' ``transform_volume`` and ``q_to_detector_matrix``, as ``to_detector_frame`` does,
on a crop of ``shape[1:]`` pixels centred on the peak instead of the whole 516 x 516 detector
(the same voxels: ``tests/test_cdiutils_stage.py`` compares the two); scaled to a random
peak count and Poisson-sampled; the Maxipix mask of cdiutils' ``Loader.get_mask`` applied.

The object grid is chosen so that one reciprocal-space voxel is one detector pixel at 1 m
(and one rocking step), so the simulator's linear resampling does not smooth the fringes
over several pixels, which would flatter linear interpolation across the gap.

Arrays are (frames, rows, columns): frames along the rocking curve, detector rows and columns.
"""
from __future__ import annotations

import contextlib
import io as _pyio
import time
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bcdi_gapfill.core.geometry import gap_mask_from_mask
from bcdi_gapfill.core.io import atomic_write_bytes
from bcdi_gapfill.core.metrics import pcc_gap
from bcdi_gapfill.fill.inpainting import inpaint

__all__ = ["CdiutilsScan", "simulate_cdiutils_scan", "cdiutils_scan_set", "scan_table", "format_scan_table",
           "write_id01_master_file", "MAXIPIX_NAME", "DETECTOR_SHAPE"]

MAXIPIX_NAME = "mpx1x4"          # cdiutils' (and BLISS's) name of ID01's Maxipix
DETECTOR_SHAPE = (516, 516)
ENERGY_EV = 9000.0
PT_LATTICE_M = 3.924e-10
DISTANCE_M = 1.0
PIXEL_M = 55e-6
CROSS_CENTRE = 257.5             # the Maxipix chip cross covers rows/columns 255..260
BASELINE_FILLS = ("linear", "biharmonic")


def _cdiutils():
    try:
        import cdiutils.simulation as simulation
        from cdiutils.io.loader import Loader
        from cdiutils.utils import transform_volume
    except ImportError as exc:
        raise ImportError(f"the cdiutils-simulated scans need cdiutils, which cannot be imported ({exc}); "
                          "install it with: pip install 'cdiutils>=0.2.1'") from None
    return simulation, Loader, transform_volume


@contextlib.contextmanager
def _global_numpy_seed(seed: int):
    # cdiutils' random phase draws from numpy's global generator: seed it for this scan
    # only, and give the caller's generator state back.
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


@dataclass
class CdiutilsScan:
    """One cdiutils-simulated Maxipix scan.

    Attributes
    ----------
    name : str
    counts : ndarray, float32, shape (frames, rows, columns)
        What the detector recorded: Poisson counts, 0 on masked pixels (as cdiutils' simulator
        and loader give them).
    truth : ndarray, float32, same shape
        The same Poisson draw without the mask: what the gap pixels would have counted.
    expected : ndarray, float32, same shape
        Noise-free expectation of ``truth`` (photons per voxel).
    mask : ndarray, int8, same shape
        cdiutils' Maxipix mask (1 = masked), repeated over the frames.
    gap_mask : ndarray, bool, same shape
        The chip-gap voxels, :func:`bcdi_gapfill.core.geometry.gap_mask_from_mask` of ``mask``.
    roi : tuple of 4 int
        ``(row_start, row_stop, col_start, col_stop)`` of the arrays on the detector.
    metadata : dict
        Seed, crystal, phase, peak counts and pixel, Bragg angle, diffractometer angles
        (degrees), energy (eV), detector calibration.
    """

    name: str
    counts: np.ndarray
    truth: np.ndarray
    expected: np.ndarray
    mask: np.ndarray
    gap_mask: np.ndarray
    roi: tuple[int, int, int, int]
    metadata: dict[str, Any] = field(default_factory=dict)


def _check_shape(shape: Any) -> tuple[int, int, int]:
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or len(shape) != 3:
        raise ValueError(f"shape must be (frames, rows, columns), got {shape!r}")
    if any(isinstance(s, bool) or not isinstance(s, Integral) for s in shape):
        raise TypeError(f"shape must hold integers, got {shape!r}")
    frames, rows, cols = (int(s) for s in shape)
    if frames < 8 or rows < 32 or cols < 32 or rows % 2 or cols % 2:
        raise ValueError(f"shape must have >= 8 frames and even rows and columns >= 32 (the chip cross "
                         f"must fit with the peak 10 pixels away), got {shape!r}")
    if rows > DETECTOR_SHAPE[0] - 2 * 30 or cols > DETECTOR_SHAPE[1] - 2 * 30:
        raise ValueError(f"rows and columns must be at most {DETECTOR_SHAPE[0] - 60} to fit on the Maxipix "
                         f"around its centre, got {shape!r}")
    return frames, rows, cols


def simulate_cdiutils_scan(seed: int, shape: Sequence[int] = (128, 128, 128), *, full_detector: bool = False,
                           peak_counts: float | None = None, fringe_period: tuple[float, float] = (4.0, 9.0),
                           name: str | None = None) -> CdiutilsScan:
    """Simulate one Maxipix scan with cdiutils, the Bragg peak near the chip cross.

    Parameters
    ----------
    seed : int
        Draws the crystal, its phase, the peak position and counts, and the noise.
    shape : 3 ints
        ``(frames, rows, columns)``: frames of the rocking curve and the detector crop
        (even, at least 32) centred on the peak.
    full_detector : bool
        Return the whole 516 x 516 detector frames (what an ID01 file holds, see
        :func:`write_id01_master_file`) instead of the crop; ``roi`` is then the whole detector.
    peak_counts : float, optional
        Expected photons at the peak voxel; default log-uniform in [3e4, 1e6].
    fringe_period : (float, float)
        Range of the crystal's fringe period in pixels (object grid / crystal size), drawn
        uniformly; larger periods are smoother patterns, easier to fill.
    name : str, optional
        Default ``"cdiutils-<seed>"``.

    Returns
    -------
    CdiutilsScan
    """
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    frames, rows, cols = _check_shape(shape)
    if peak_counts is not None and not (np.isfinite(peak_counts) and peak_counts > 0):
        raise ValueError(f"peak_counts must be positive and finite, got {peak_counts!r}")
    if (isinstance(fringe_period, (str, bytes)) or len(fringe_period) != 2
            or not 2 <= float(fringe_period[0]) <= float(fringe_period[1])):
        raise ValueError("fringe_period must be (low, high) pixels with 2 <= low <= high, "
                         f"got {fringe_period!r}")
    simulation, loader, transform_volume = _cdiutils()
    rng = np.random.default_rng([int(seed), 0xCD1])

    peak = tuple(int(round(CROSS_CENTRE + rng.uniform(-10, 10))) for _ in range(2))
    calib = {"cch1": 258.0, "cch2": 258.0, "pwidth1": PIXEL_M, "pwidth2": PIXEL_M, "distance": DISTANCE_M,
             "tiltazimuth": 0.0, "tilt": 0.0, "detrot": 0.0}
    sim = simulation.BCDISimulator(energy=ENERGY_EV, lattice_parameter=PT_LATTICE_M, hkl=[1, 1, 1],
                                   det_calib_params=calib, detector_name=MAXIPIX_NAME, num_frames=frames,
                                   target_peak_position=peak)
    # One reciprocal voxel per detector pixel: the object grid spans lambda * D / pixel, with
    # a margin so that the sheared rocking-curve crop stays inside reciprocal space.
    grid = int(2 * np.ceil(0.65 * max(frames, rows, cols)))
    wavelength = float(sim.wavelength)
    voxel_size = wavelength * DISTANCE_M / (PIXEL_M * grid)

    diameter = grid / rng.uniform(float(fringe_period[0]), float(fringe_period[1]))
    crystal = str(rng.choice(["box", "ellipsoid", "cylinder"]))
    rotation = tuple(float(a) for a in rng.uniform(0, 360, 3))
    if crystal == "box":
        params: dict[str, Any] = {"dimensions": tuple(float(d) for d in diameter * rng.uniform(0.6, 1.0, 3))}
    elif crystal == "ellipsoid":
        params = {"radii": tuple(float(r) for r in diameter / 2 * rng.uniform(0.6, 1.0, 3))}
    else:
        params = {"radius": float(diameter / 2 * rng.uniform(0.6, 1.0)),
                  "height": float(diameter * rng.uniform(0.6, 1.0))}
    params["rotation"] = rotation
    phase = {"phase_std": float(rng.uniform(0.3, 1.2)),
             "correlation_length": float(rng.uniform(0.15, 0.4) * diameter)}
    with _global_numpy_seed(int(rng.integers(2**32))):
        sim.simulate_object(shape=(grid,) * 3, voxel_size=voxel_size, geometric_shape=crystal,
                            geometric_shape_params=params, phase_type="random", phase_params=phase,
                            plot=False)

    bragg = sim.lattice_parameter_to_bragg_angle()
    angles = sim.get_detector_angles(scattering_angle=2 * bragg)
    q_bragg = 4 * np.pi * np.sin(np.radians(bragg)) / wavelength
    step = float(np.degrees(sim.q_voxel_size[0] / q_bragg))
    sim.set_measurement_params(bragg_angle=bragg, rocking_range=step * (frames - 1), detector_angles=angles)
    intensity = transform_volume(sim.intensity, sim.q_to_detector_matrix, output_shape=(frames, rows, cols))
    roi = (peak[0] - rows // 2, peak[0] - rows // 2 + rows, peak[1] - cols // 2, peak[1] - cols // 2 + cols)
    if full_detector:
        intensity = sim.shift_to_target_pixel(intensity)
        roi = (0, DETECTOR_SHAPE[0], 0, DETECTOR_SHAPE[1])
    intensity = np.maximum(intensity, 0.0)

    if peak_counts is None:
        peak_counts = float(10 ** rng.uniform(np.log10(3e4), 6.0))
    expected = (intensity * (peak_counts / intensity.max())).astype(np.float32)
    truth = rng.poisson(expected).astype(np.float32)
    mask2d = np.asarray(loader.get_mask(detector_name=MAXIPIX_NAME))[roi[0]:roi[1], roi[2]:roi[3]]
    mask = np.repeat(mask2d[np.newaxis].astype(np.int8), frames, axis=0)
    counts = truth * (1 - mask)

    metadata = {"seed": int(seed), "crystal": crystal, "crystal_params": params, "phase": phase,
                "object_grid": grid, "voxel_size_m": voxel_size, "peak_counts": peak_counts,
                "peak_pixel": list(peak), "peak_to_cross_px": [float(p - CROSS_CENTRE) for p in peak],
                "bragg_angle_deg": float(bragg), "rocking_step_deg": step,
                "sample_outofplane_angle": [float(a) for a in
                                            sim.diffractometer_angles["sample_outofplane_angle"]],
                "detector_outofplane_angle": float(angles["detector_outofplane_angle"]),
                "detector_inplane_angle": float(angles["detector_inplane_angle"]),
                "energy_ev": ENERGY_EV, "lattice_parameter_m": PT_LATTICE_M, "hkl": [1, 1, 1],
                "det_calib_params": calib}
    return CdiutilsScan(name=name or f"cdiutils-{seed}", counts=counts, truth=truth, expected=expected,
                        mask=mask, gap_mask=gap_mask_from_mask(mask), roi=roi, metadata=metadata)


def cdiutils_scan_set(n: int = 3, seed: int = 0, shape: Sequence[int] = (128, 128, 128),
                      **kwargs: Any) -> list[CdiutilsScan]:
    """``n`` scans of :func:`simulate_cdiutils_scan` with seeds ``seed, seed + 1, ...``.

    Parameters
    ----------
    n : int
        Number of scans (>= 1).
    seed : int
        First seed.
    shape : 3 ints
        ``(frames, rows, columns)`` of each scan; the default 128^3 is a typical ID01 crop.
    **kwargs
        Passed to :func:`simulate_cdiutils_scan` (``peak_counts``, ``fringe_period``).
    """
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return [simulate_cdiutils_scan(int(seed) + i, shape, **kwargs) for i in range(int(n))]


def scan_table(models: dict[str, Any], scans: Sequence[CdiutilsScan], *, stride: int | None = None,
               device: str | None = None) -> dict[str, Any]:
    """In-gap log-PCC of linear, log-biharmonic and each model on each scan.

    Parameters
    ----------
    models : dict
        ``{name: model}``; each model is what :func:`bcdi_gapfill.fill.inpainting.inpaint` takes as
        ``model`` (a weights path, a ``PatchUNet``, or None for the shipped default). Names
        must differ from ``"linear"`` and ``"biharmonic"``.
    scans : sequence of CdiutilsScan
    stride, device
        Passed to ``inpaint`` for the models.

    Returns
    -------
    dict
        ``{"fills": [...], "scans": [row, ...], "mean": {...}}``. Each row holds the scan's
        ``name``, ``seed``, ``shape``, ``gap_voxels``, ``peak_counts``, ``peak_to_cross_px``,
        ``ceiling`` (PCC of the noise-free expectation against the noisy truth) and, per fill,
        ``pcc`` (:func:`bcdi_gapfill.core.metrics.pcc_gap` of log1p counts over the gap voxels,
        against the noisy truth), ``headroom`` ((pcc - linear) / (ceiling - linear): the share
        of the way from linear interpolation to the ceiling) and ``seconds`` (wall time of the
        fill). ``mean`` averages ``ceiling``, ``pcc``, ``headroom`` and ``seconds`` over scans.
    """
    if not isinstance(models, dict):
        raise TypeError(f"models must be a dict {{name: model}}, got {type(models).__name__}")
    clash = [name for name in models if name in BASELINE_FILLS]
    if clash:
        raise ValueError(f"model names must differ from {BASELINE_FILLS}, got {clash}")
    scans = list(scans)
    if not scans or not all(isinstance(s, CdiutilsScan) for s in scans):
        raise TypeError("scans must be a non-empty sequence of CdiutilsScan (from cdiutils_scan_set)")


    fills = [*BASELINE_FILLS, *models]
    rows = []
    for scan in scans:
        gap = scan.gap_mask
        row: dict[str, Any] = {"name": scan.name, "seed": scan.metadata.get("seed"),
                               "shape": list(scan.counts.shape), "gap_voxels": int(gap.sum()),
                               "peak_counts": scan.metadata.get("peak_counts"),
                               "peak_to_cross_px": scan.metadata.get("peak_to_cross_px"),
                               "ceiling": float(pcc_gap(scan.truth, scan.expected, gap)),
                               "pcc": {}, "headroom": {}, "seconds": {}}
        for fill in fills:
            kwargs: dict[str, Any] = ({"method": fill} if fill in BASELINE_FILLS else
                                      {"model": models[fill], "stride": stride, "device": device})
            t0 = time.perf_counter()
            filled = inpaint(scan.counts, gap, **kwargs)
            row["seconds"][fill] = time.perf_counter() - t0
            row["pcc"][fill] = float(pcc_gap(scan.truth, filled, gap))
        linear = row["pcc"]["linear"]
        for fill in fills:
            row["headroom"][fill] = (row["pcc"][fill] - linear) / (row["ceiling"] - linear)
        rows.append(row)
    mean = {"ceiling": float(np.mean([r["ceiling"] for r in rows]))}
    for key in ("pcc", "headroom", "seconds"):
        mean[key] = {fill: float(np.mean([r[key][fill] for r in rows])) for fill in fills}
    return {"fills": fills, "scans": rows, "mean": mean}


def format_scan_table(table: dict[str, Any]) -> str:
    """Markdown table of :func:`scan_table`'s result: PCC (headroom, seconds) per fill and scan."""
    fills = table["fills"]
    lines = ["| scan | peak counts | peak - cross (px) | Poisson ceiling | " +
             " | ".join(f"{f} PCC (headroom, s)" for f in fills) + " |",
             "|---|---|---|---|" + "---|" * len(fills)]
    for row in table["scans"]:
        offset = ", ".join(f"{v:+.0f}" for v in row["peak_to_cross_px"] or [])
        lines.append(f"| {row['name']} | {row['peak_counts']:.3g} | {offset} | {row['ceiling']:.3f} | " +
                     " | ".join(f"{row['pcc'][f]:.3f} ({row['headroom'][f]:.2f}, {row['seconds'][f]:.1f})"
                                for f in fills) + " |")
    mean = table["mean"]
    lines.append(f"| mean | | | {mean['ceiling']:.3f} | " +
                 " | ".join(f"{mean['pcc'][f]:.3f} ({mean['headroom'][f]:.2f}, {mean['seconds'][f]:.1f})"
                            for f in fills) + " |")
    return "\n".join(lines) + "\n"


def write_id01_master_file(scan: CdiutilsScan, path: str | Path, *, sample_name: str = "sim",
                           scan_number: int = 1, overwrite: bool = False) -> dict[str, Any]:
    """Write a full-detector scan as the ID01 (BLISS) HDF5 entries cdiutils' loader reads.

    Writes ``<sample>_<scan>.1/measurement/mpx1x4`` (the frames),
    ``<sample>_<scan>.1/instrument/positioners/{eta, phi, delta, nu, mononrj}`` and the
    detector calibration under ``<sample>_<scan>.1/instrument/mpx1x4/``: the entries of
    ``cdiutils.io.id01.ID01Loader``, so that ``BcdiPipeline.preprocess`` runs on it as on a
    beamline file. Written atomically.

    Parameters
    ----------
    scan : CdiutilsScan
        Made with ``full_detector=True`` (frames of 516 x 516 pixels).
    path : path
        The ``.h5`` file to write.
    sample_name, scan_number
        Name the scan's group, as BLISS does.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    dict
        The ``BcdiPipeline`` parameters that point at this scan: ``beamline_setup``,
        ``experiment_file_path``, ``scan``, ``sample_name``, ``detector_name``, ``energy``,
        ``det_calib_params``, ``hkl``.
    """
    import h5py


    if not isinstance(scan, CdiutilsScan):
        raise TypeError(f"scan must be a CdiutilsScan, got {type(scan).__name__}")
    if scan.counts.shape[1:] != DETECTOR_SHAPE:
        raise ValueError(f"scan must hold whole Maxipix frames {DETECTOR_SHAPE} (simulate_cdiutils_scan(..., "
                         f"full_detector=True)), got frames of {scan.counts.shape[1:]}")
    if isinstance(scan_number, bool) or not isinstance(scan_number, Integral) or scan_number < 0:
        raise ValueError(f"scan_number must be a non-negative integer, got {scan_number!r}")
    meta = scan.metadata
    calib = meta["det_calib_params"]
    buffer = _pyio.BytesIO()
    with h5py.File(buffer, "w") as h5:
        entry = h5.create_group(f"{sample_name}_{scan_number}.1")
        # Maxipix frames are integer counts; chunks of one frame as BLISS writes them.
        entry.create_dataset(f"measurement/{MAXIPIX_NAME}", data=scan.counts.astype(np.uint32),
                             chunks=(1, *DETECTOR_SHAPE), compression="gzip", compression_opts=1)
        positioners = entry.create_group("instrument/positioners")
        positioners["eta"] = np.asarray(meta["sample_outofplane_angle"], float)
        positioners["phi"] = 0.0
        positioners["delta"] = meta["detector_outofplane_angle"]
        positioners["nu"] = meta["detector_inplane_angle"]
        positioners["mononrj"] = meta["energy_ev"] / 1e3      # keV, as BLISS stores it
        detector = entry.create_group(f"instrument/{MAXIPIX_NAME}")
        for key, value in (("beam_center_y", calib["cch1"]), ("beam_center_x", calib["cch2"]),
                           ("y_pixel_size", calib["pwidth1"]), ("x_pixel_size", calib["pwidth2"]),
                           ("distance", calib["distance"]), ("dim_j", DETECTOR_SHAPE[0]),
                           ("dim_i", DETECTOR_SHAPE[1])):
            detector[key] = value
    written = atomic_write_bytes(path, buffer.getvalue(), overwrite=overwrite)
    return {"beamline_setup": "id01", "experiment_file_path": str(Path(written).resolve()),
            "scan": int(scan_number), "sample_name": sample_name, "detector_name": MAXIPIX_NAME,
            "energy": meta["energy_ev"], "det_calib_params": dict(calib), "hkl": list(meta["hkl"])}
