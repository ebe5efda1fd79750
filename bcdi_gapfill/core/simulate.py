"""Realistic simulated 3D BCDI patterns, following the paper's supplement S2.

A faceted crystal (cube, octahedron, Wulff-like {100}+{111}(+{110}) polyhedron, optionally
truncated by a substrate plane as in a Winterbottom shape) is drawn on the array grid with a
random orientation and a random oversampling ratio per axis. Its edges and corners are
rounded, its modulus made inhomogeneous with a correlated random field, and its phase built
from a correlated displacement field, an optional dislocation and an optional surface
(core-shell) strain. The intensity is ``|FFT(obj)|**2`` with the Bragg peak at the array
centre, blurred for partial coherence, scaled to a random peak count, plus background, then
Poisson-sampled so that voxels far from the peak are empty as in a measurement.

Detector frame
--------------
A rocking curve samples reciprocal space on a non-orthogonal grid ``q = B @ index``. The
intensity of ``obj(A r)`` is ``|F(A^-T q)|**2``, so drawing the object through a general
linear map (rotation, per-axis scaling and a shear) yields exactly the pattern sampled on a
sheared reciprocal grid, with fringes not aligned with the array axes, with no
interpolation of the intensity. ``detector_frame=True`` adds such a shear; xrayutilities is
not needed for this.

Arrays are (frames, rows, columns), float32 counts, complex64 objects.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.fft as sfft
from scipy import ndimage
from scipy.spatial.transform import Rotation

from bcdi_gapfill.core import io as bio
from bcdi_gapfill.core.io import atomic_write_text

__all__ = ["SimulatedPattern", "simulate_pattern", "correlated_field", "write_dataset",
           "read_pattern", "SHAPES", "PHASES"]

SHAPES = ("cube", "octahedron", "truncated_octahedron", "wulff", "winterbottom")
PHASES = ("random", "zero", "dislocation", "core_shell", "mixed")

# Facet normals of a cubic crystal, unit length.
_N100 = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
_N111 = np.array([[a, b, c] for a in (1, -1) for b in (1, -1) for c in (1, -1)], float) / np.sqrt(3)
_N110 = np.array(
    [v for i in range(3) for j in range(i + 1, 3) for s in (1, -1) for t in (1, -1)
     for v in [np.eye(3)[i] * s + np.eye(3)[j] * t]], float) / np.sqrt(2)


@dataclass
class SimulatedPattern:
    """One simulated BCDI measurement.

    Attributes
    ----------
    counts : ndarray, float32, shape (frames, rows, columns)
        Poisson-sampled photon counts, Bragg peak near the centre.
    expected : ndarray, float32, same shape
        Noise-free expectation of ``counts`` (photons per voxel, background included).
    obj : ndarray, complex64, same shape
        The complex crystal (modulus and phase), centred, in the frame whose FFT gives
        ``expected`` (before peak offset, coherence blur, background and peak scaling).
    metadata : dict
        Seed, shape name, oversampling per axis (array size / crystal extent), peak counts,
        background, coherence blur, phase kind, and everything else that was drawn;
        ``shear`` is the detector-frame shear matrix (identity without it) and
        ``dislocation_line`` (None without a dislocation) gives a ``point`` on the line, in
        array indices (frames, rows, columns), and its unit ``direction`` in the same axes.
    """

    counts: np.ndarray
    expected: np.ndarray
    obj: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)


def correlated_field(shape: tuple[int, ...], correlation_length: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Gaussian-correlated random field of zero mean and unit standard deviation.

    White noise filtered in Fourier space by a Gaussian of real-space width
    ``correlation_length`` (voxels); periodic, which is harmless inside a crystal that sits
    well away from the array edges.
    """
    noise = rng.standard_normal(shape).astype(np.float32)
    freqs = np.meshgrid(*[sfft.fftfreq(n).astype(np.float32) for n in shape[:-1]],
                        sfft.rfftfreq(shape[-1]).astype(np.float32), indexing="ij", sparse=True)
    k2 = sum(f ** 2 for f in freqs)
    kernel = np.exp(-2.0 * (np.pi * correlation_length) ** 2 * k2)
    smooth = sfft.irfftn(sfft.rfftn(noise, workers=-1) * kernel, s=shape, workers=-1)
    std = smooth.std()
    return (smooth / std if std > 0 else smooth).astype(np.float32)


def _polyhedron(shape_name: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Facet normals and distances of a crystal of unit inscribed size."""
    if shape_name == "cube":
        normals, dists = _N100, np.ones(6)
    elif shape_name == "octahedron":
        normals, dists = _N111, np.ones(8)
    elif shape_name == "truncated_octahedron":
        normals = np.vstack([_N100, _N111])
        dists = np.concatenate([np.ones(6), np.full(8, rng.uniform(0.62, 0.95))])
    else:  # wulff and winterbottom: random {100}+{111}(+{110}) facet distances
        d111 = rng.uniform(0.65, 1.0)
        parts_n, parts_d = [_N100, _N111], [np.ones(6), np.full(8, d111)]
        if rng.random() < 0.5:
            parts_n.append(_N110)
            parts_d.append(np.full(12, rng.uniform(0.8, 1.05)))
        normals, dists = np.vstack(parts_n), np.concatenate(parts_d)
        # Facet distances vary slightly facet by facet, as in real particles.
        dists = dists * rng.uniform(0.92, 1.08, size=dists.shape)
    if shape_name == "winterbottom":
        # Substrate plane: a random direction truncating the particle.
        sub = rng.standard_normal(3)
        normals = np.vstack([normals, sub / np.linalg.norm(sub)])
        dists = np.append(dists, rng.uniform(0.2, 0.7))
    return normals, dists


def simulate_pattern(size: int | tuple[int, int, int] = 128, seed: int | None = None, *,
                     shape_name: str | None = None,
                     oversampling: float | tuple[float, float, float] | None = None,
                     peak_counts: float | None = None,
                     phase: str | None = None,
                     phase_amplitude: float | None = None,
                     detector_frame: bool | None = None,
                     peak_offset: tuple[int, int, int] | None = None,
                     coherence_sigma: float | None = None,
                     background: float | None = None) -> SimulatedPattern:
    """Simulate one realistic 3D BCDI pattern, reproducible from ``seed``.

    Every argument left as None is drawn at random from the seed's generator.

    Parameters
    ----------
    size : int or (frames, rows, columns)
        Array shape.
    seed : int
        Seed of the random generator; the same seed gives the same pattern.
    shape_name : one of SHAPES
        Crystal shape.
    oversampling : float or 3 floats
        Linear oversampling ratio per axis, array size over crystal extent (1.5 to 6 when
        drawn). The value measured on the final support is in ``metadata``.
    peak_counts : float
        Expected photons in the brightest voxel (drawn log-uniform in 1e3..1e7).
    phase : one of PHASES
        ``random``: smooth correlated displacement; ``zero``: flat phase (the paper's
        real-space test); ``dislocation``: random field plus a phase vortex around a line;
        ``core_shell``: random field plus a surface strain; ``mixed``: all of these.
    phase_amplitude : float
        Standard deviation of the random phase field, radians.
    detector_frame : bool
        Shear the sampling as a rocking curve does (see module docstring).
    peak_offset : 3 ints
        Shift of the Bragg peak from the array centre, voxels.
    coherence_sigma : float
        Gaussian blur of the intensity (partial coherence), voxels.
    background : float
        Expected background photons per voxel.

    Returns
    -------
    SimulatedPattern
    """
    dims = (size,) * 3 if np.isscalar(size) else tuple(size)
    if (len(dims) != 3 or not all(isinstance(s, (int, float, np.integer, np.floating))
                                  and not isinstance(s, bool) and float(s).is_integer() for s in dims)
            or min(dims) < 8):
        raise ValueError(f"size must be an int or 3 ints >= 8, got {size!r}")
    dims = tuple(int(s) for s in dims)
    if shape_name is not None and shape_name not in SHAPES:
        raise ValueError(f"unknown shape_name {shape_name!r}; choose one of {SHAPES}")
    if phase is not None and phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; choose one of {PHASES}")
    if peak_offset is not None and len(tuple(peak_offset)) != 3:
        raise ValueError(f"peak_offset must be 3 ints (frames, rows, columns), got {peak_offset!r}")
    rng = np.random.default_rng(seed)

    shape_name = shape_name or str(rng.choice(SHAPES, p=[0.15, 0.15, 0.2, 0.3, 0.2]))
    if oversampling is None:
        base = rng.uniform(1.5, 6.0)
        # Axes differ (different angular and detector steps), within a factor ~1.5.
        oversampling = tuple(float(np.clip(base * rng.uniform(0.8, 1.25), 1.5, 6.0)) for _ in range(3))
    elif np.isscalar(oversampling):
        oversampling = (float(oversampling),) * 3
    oversampling = tuple(float(o) for o in oversampling)
    if len(oversampling) != 3 or not all(np.isfinite(oversampling)) or min(oversampling) < 1.0:
        raise ValueError(f"oversampling must be >= 1 on every axis (one number or 3), got {oversampling}")
    detector_frame = bool(rng.random() < 0.5) if detector_frame is None else bool(detector_frame)
    phase = phase or str(rng.choice(PHASES, p=[0.4, 0.1, 0.15, 0.15, 0.2]))
    if phase_amplitude is None:
        phase_amplitude = 0.0 if phase == "zero" else float(rng.uniform(0.1, 1.5))
    if peak_counts is None:
        peak_counts = float(10 ** rng.uniform(3, 7))
    if coherence_sigma is None:
        coherence_sigma = float(rng.uniform(0.0, 0.8))
    if background is None:
        background = float(10 ** rng.uniform(-4, -1.5))
    if peak_offset is None:
        peak_offset = tuple(int(v) for v in rng.integers(-3, 4, size=3)) if rng.random() < 0.5 else (0, 0, 0)

    # Linear map from grid voxels to crystal coordinates (unit inscribed size).
    rotation = Rotation.random(random_state=rng).as_matrix()
    half_extent = np.array([d / o / 2.0 for d, o in zip(dims, oversampling)])
    shear = np.eye(3)
    if detector_frame:
        shear[0, 1], shear[0, 2] = rng.uniform(-0.35, 0.35, size=2)
    normals, dists = _polyhedron(shape_name, rng)

    dislocation_line = None

    def crystal_body(step: int, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grid_to_crystal = rotation @ np.linalg.inv(shear) @ np.diag(1.0 / (half_extent * scale))
        axes = [np.arange(0, n, step, dtype=np.float32) - (n - 1) / 2.0 for n in dims]
        coords = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (F, R, C, 3)
        facet_dist = (coords @ grid_to_crystal.T.astype(np.float32)) @ normals.T.astype(np.float32)
        return (facet_dist - dists.astype(np.float32)).max(axis=-1) <= 0, coords

    # Per-axis scaling of the grid map scales the body's extent per axis by the same factor,
    # so a coarse first pass tells how to rescale for the drawn oversampling exactly.
    coarse, _ = crystal_body(2, np.ones(3))
    coarse_extent = np.array([2.0 * (np.ptp(np.nonzero(coarse.any(axis=tuple(a for a in range(3) if a != ax)))[0]) + 1)
                              if coarse.any() else 1.0 for ax in range(3)])
    scale = (2.0 * half_extent) / coarse_extent
    body, coords = crystal_body(1, scale)

    # Rounded edges and corners: blur then threshold, then soften the surface.
    corner_radius = rng.uniform(0.8, 2.5)
    rounded = ndimage.gaussian_filter(body.astype(np.float32), corner_radius) > 0.5
    if rounded.sum() < 8:
        rounded = body
    edge_sigma = rng.uniform(0.4, 1.2)
    modulus = ndimage.gaussian_filter(rounded.astype(np.float32), edge_sigma)
    support = modulus > 0.05
    modulus *= support
    inhomogeneity = rng.uniform(0.0, 0.25)
    modulus *= np.clip(1.0 + inhomogeneity * correlated_field(dims, rng.uniform(2, 10), rng), 0.2, None)

    phase_map = np.zeros(dims, np.float32)
    if phase != "zero":
        phase_map += phase_amplitude * correlated_field(dims, rng.uniform(4, 20), rng)
    if phase in ("dislocation", "mixed"):
        direction = rotation.T @ rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        centre = rng.uniform(-0.3, 0.3, 3) * half_extent
        rel = coords - centre.astype(np.float32)
        # Two axes perpendicular to the dislocation line; the phase winds once around it
        # (G.b = 2 pi), the signature of a dislocation in a Bragg phase.
        e1 = np.cross(direction, [1.0, 0, 0] if abs(direction[0]) < 0.9 else [0, 1.0, 0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(direction, e1)
        phase_map += np.arctan2(rel @ e2.astype(np.float32), rel @ e1.astype(np.float32))
        # The line in array indices (frames, rows, columns): a point on it and its direction.
        dislocation_line = {"point": [float(c + (n - 1) / 2.0) for c, n in zip(centre, dims)],
                            "direction": [float(v) for v in direction]}
    if phase in ("core_shell", "mixed"):
        depth = ndimage.distance_transform_edt(support)
        shell = rng.uniform(1.5, 5.0)
        phase_map += rng.uniform(-1.0, 1.0) * np.exp(-depth / shell).astype(np.float32)
    del coords

    obj = (modulus * np.exp(1j * phase_map * support)).astype(np.complex64)
    amplitude = sfft.fftshift(sfft.fftn(sfft.ifftshift(obj), workers=-1))
    intensity = (amplitude.real ** 2 + amplitude.imag ** 2).astype(np.float32)
    del amplitude
    if any(peak_offset):
        intensity = np.roll(intensity, peak_offset, axis=(0, 1, 2))
    if coherence_sigma > 0.05:
        intensity = ndimage.gaussian_filter(intensity, coherence_sigma)
    expected = intensity * np.float32(peak_counts / intensity.max()) + np.float32(background)
    counts = rng.poisson(expected).astype(np.float32)

    extent = [int(np.ptp(np.nonzero(support.any(axis=tuple(a for a in range(3) if a != ax)))[0])) + 1
              for ax in range(3)]
    metadata = {
        "seed": seed, "size": list(dims), "shape_name": shape_name,
        "oversampling_drawn": list(oversampling),
        "oversampling": [float(d / e) for d, e in zip(dims, extent)],
        "peak_counts": peak_counts, "background": background, "coherence_sigma": coherence_sigma,
        "phase": phase, "phase_amplitude": phase_amplitude, "detector_frame": detector_frame,
        "peak_offset": list(peak_offset), "corner_radius": corner_radius, "edge_sigma": edge_sigma,
        "modulus_inhomogeneity": inhomogeneity, "total_counts": float(counts.sum()),
        "shear": shear.tolist(), "dislocation_line": dislocation_line,
    }
    return SimulatedPattern(counts=counts, expected=expected.astype(np.float32), obj=obj, metadata=metadata)


# --- writing and reading simulated datasets --------------------------------------------------

INDEX_NAME = "index.json"
_INDEX_VERSION = 1


def pattern_path(out_dir: str | Path, seed: int) -> Path:
    """Where :func:`write_dataset` writes the pattern of ``seed``."""
    return Path(out_dir) / f"pattern_{seed:06d}.h5"


def _save_pattern(path: Path, pattern: SimulatedPattern, overwrite: bool) -> Path:
    """Write one pattern atomically: ``data`` (counts), ``expected`` and ``obj`` datasets.

    ``bcdi_gapfill.core.io.save_array`` holds a single array (plus a mask), so the three arrays are
    written with h5py through the same atomic machinery (temporary file in the destination
    directory, fsync, then a no-clobber link or ``os.replace``). The metadata is the JSON root
    attribute ``metadata``; it is also stored as attributes of ``data`` in io's convention, so
    ``bcdi_gapfill.core.io.load_array`` / ``load_metadata`` read the counts and the metadata.
    """

    attrs = bio.check_attrs(pattern.metadata)  # JSON-serialisable, numpy values as Python

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as h5:
            h5.attrs["metadata"] = json.dumps(attrs)
            h5.attrs["creator"] = "bcdi_gapfill.core.simulate.write_dataset"
            for name, array in (("data", pattern.counts), ("expected", pattern.expected),
                                ("obj", pattern.obj)):
                dataset = h5.create_dataset(name, data=array, **bio.h5_storage(array))
                if name == "data":
                    bio.write_h5_attrs(dataset, attrs)

    return bio.atomic_write(path, write, overwrite=overwrite, protect=None)


def _simulate_and_save(job: tuple[str, int, Any, bool]) -> tuple[int, str, dict[str, Any]]:
    """Worker: simulate the pattern of one seed and write it (module level for spawn pools)."""
    out_dir, seed, size, overwrite = job
    pattern = simulate_pattern(size, seed)
    path = _save_pattern(pattern_path(out_dir, seed), pattern, overwrite)
    return seed, str(path), pattern.metadata


def _read_index(index: Path, overwrite: bool) -> dict[str, dict[str, Any]]:
    """Entries of an existing index.json by file name; {} when there is none."""
    if not index.exists():
        return {}
    try:
        content = json.loads(index.read_text(encoding="utf-8"))
        entries = content["patterns"]
        return {str(entry["file"]): entry for entry in entries}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if overwrite:
            return {}
        raise ValueError(f"{index} exists but is not a valid dataset index ({type(exc).__name__}: "
                         f"{exc}); remove it or pass overwrite=True to replace it") from None


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def write_dataset(out_dir: str | Path, n: int, *, size: int | tuple[int, int, int] = 128,
                  first_seed: int = 0, overwrite: bool = False, progress: bool = True,
                  workers: int = 1) -> list[Path]:
    """Simulate ``n`` patterns (seeds ``first_seed`` .. ``first_seed + n - 1``) and write them.

    Each pattern goes to ``out_dir/pattern_{seed:06d}.h5``, written atomically, holding the
    datasets ``data`` (Poisson counts, float32), ``expected`` (float32) and ``obj``
    (complex64), arrays (frames, rows, columns), with the metadata as the JSON root attribute
    ``metadata`` (and as attributes of ``data``, read by ``bcdi_gapfill.core.io.load_metadata``).
    ``out_dir/index.json`` (written atomically) lists every pattern file of the directory with
    its seed and metadata; entries of an earlier call whose files still exist are kept, so a
    dataset can be written in several seed ranges (one call at a time per directory).
    Read a pattern back with :func:`read_pattern`.

    Parameters
    ----------
    out_dir : str or Path
        Output directory, created if missing.
    n : int
        Number of patterns.
    size : int or (frames, rows, columns)
        Array shape, as for :func:`simulate_pattern`.
    first_seed : int
        Seed of the first pattern; every other parameter is drawn from the seed.
    overwrite : bool
        Replace existing pattern files; without it an existing file is refused before
        anything is simulated.
    progress : bool
        Show a tqdm progress bar.
    workers : int
        Processes simulating in parallel (1: in this process).

    Returns
    -------
    list of Path
        The files written, in seed order.

    Raises
    ------
    FileExistsError
        If a pattern file exists and ``overwrite`` is False.
    ValueError
        On invalid arguments or an existing ``index.json`` that cannot be read.
    """
    from tqdm import tqdm


    n = _check_int(n, "n", 0)
    first_seed = _check_int(first_seed, "first_seed", 0)
    workers = _check_int(workers, "workers", 1)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} exists and is not a directory")
    seeds = list(range(first_seed, first_seed + n))
    if not overwrite:
        existing = [pattern_path(out, seed).name for seed in seeds
                    if pattern_path(out, seed).exists() or pattern_path(out, seed).is_symlink()]
        if existing:
            shown = ", ".join(existing[:3]) + (", ..." if len(existing) > 3 else "")
            raise FileExistsError(f"{len(existing)} pattern file(s) already exist in {out} "
                                  f"({shown}); pass overwrite=True to replace them")
    index_path = out / INDEX_NAME
    entries = _read_index(index_path, overwrite)
    out.mkdir(parents=True, exist_ok=True)

    jobs = [(str(out), seed, size, overwrite) for seed in seeds]
    results: list[tuple[int, str, dict[str, Any]]] = []
    with tqdm(total=n, disable=not progress, desc="simulating", unit="pattern") as bar:
        if workers > 1 and n > 1:
            from multiprocessing import get_context
            with get_context("spawn").Pool(min(workers, n)) as pool:
                for result in pool.imap_unordered(_simulate_and_save, jobs):
                    results.append(result)
                    bar.update()
        else:
            for job in jobs:
                results.append(_simulate_and_save(job))
                bar.update()
    results.sort(key=lambda result: result[0])

    # Drop entries whose files are gone, then add (or replace) this call's patterns.
    entries = {name: entry for name, entry in entries.items() if (out / name).exists()}
    for seed, path, metadata in results:
        entries[Path(path).name] = {"file": Path(path).name, "seed": seed, "metadata": metadata}
    index = {
        "description": "Simulated BCDI patterns (bcdi_gapfill.core.simulate.write_dataset). Each file "
                       "holds 'data' (Poisson counts, float32), 'expected' (noise-free counts, "
                       "float32) and 'obj' (complex64), arrays (frames, rows, columns); its "
                       "metadata is the JSON root attribute 'metadata'.",
        "version": _INDEX_VERSION,
        "patterns": [entries[name] for name in sorted(entries)],
    }
    atomic_write_text(index_path, json.dumps(index, indent=1) + "\n", overwrite=True)
    return [Path(path) for _, path, _ in results]


def read_pattern(path: str | Path) -> SimulatedPattern:
    """Read a pattern written by :func:`write_dataset`.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not a readable pattern file (the message names the path and what is missing).
    """
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"no such file: {file}")
    try:
        with h5py.File(file, "r") as h5:
            missing = [name for name in ("data", "expected", "obj") if name not in h5]
            if missing or "metadata" not in h5.attrs:
                what = missing + ([] if "metadata" in h5.attrs else ["the 'metadata' attribute"])
                raise ValueError(f"{file} is not a simulated pattern file: missing {', '.join(what)}")
            counts, expected, obj = (np.asarray(h5[name][()]) for name in ("data", "expected", "obj"))
            raw = h5.attrs["metadata"]
        metadata = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
    except OSError as exc:
        raise ValueError(f"cannot read {file} as an HDF5 pattern file: {exc}") from exc
    return SimulatedPattern(counts=counts, expected=expected, obj=obj, metadata=metadata)
