"""Physics-consistent refinement of a gap fill: the band limit of a finite crystal's intensity.

The intensity of a crystal of finite size is band-limited: its inverse Fourier transform, the
autocorrelation of the object (the Patterson map), vanishes outside the object's support
minus itself, twice the crystal's extent. A gap fill that is consistent with the measured
voxels *and* with that band limit is the Gerchberg-Papoulis fixed point: alternately keep the
measured voxels and cut the autocorrelation to its support. :func:`refine_band_limited` runs
that refinement from any fill (the network's, a classical one) or from zeros (the pure
version, a baseline).

Two solvers reach the same fixed point:

``solver="gp"``
    The plain alternating projections (Gerchberg-Papoulis): ``x[gap] <- max(B x, 0)[gap]``
    with ``B`` the band-limit projection. Each step can only lower ``||x - truth||`` for a
    pattern that is band-limited with that support, but the steps shrink fast: on simulated
    128^3 patterns with a 6-pixel cross gap, 200 steps lowered the in-gap intensity error
    by 0-10 %.
``solver="cg"`` (default)
    Conjugate gradients on the least-squares problem whose minimiser the alternating
    projections approach, ``min ||(1 - B) x||^2`` over the refined gap voxels (clipped to
    >= 0 at the end): the same fixed point in far fewer FFTs.

Which voxels are refined
------------------------
Band-limited extrapolation across a gap is ill-conditioned (a gap of ``w`` pixels and an
autocorrelation spanning a fraction ``2 / oversampling`` of the array leave about
``2 w / oversampling`` poorly constrained modes per line), and the Poisson noise of the
measured voxels is not band-limited. The refinement works on intensities, where the bright
voxels near the Bragg peak dominate: refining every gap voxel lowered the intensity error
there but spread errors onto the weak voxels, and the in-gap PCC of log intensities fell
from about 0.96 to 0.4-0.86 on simulated 128^3 patterns (docs/benchmarks.md, "Uncertainty
and band-limit refinement").
``refine_above`` therefore restricts the refinement to the gap voxels whose starting fill is
at least that fraction of the pattern's maximum (default 0.1): the bright voxels, where a
fill's absolute error is large and where phase retrieval is most sensitive; the other gap
voxels keep the starting fill and act as known values. ``refine_above=None`` refines every
gap voxel (always so when starting from zeros).

Autocorrelation support
-----------------------
When ``support`` is not given it is estimated by :func:`autocorrelation_support` from the
starting pattern (measured voxels plus the fill): the modulus of its autocorrelation,
smoothed, above a fraction of its maximum; the connected region around zero shift, holes
filled, dilated and made centrosymmetric (an autocorrelation support always is).

Arrays are (frames, rows, columns) photon counts; the autocorrelation support is given in
the centred layout (zero shift at index ``n // 2`` of each axis, as ``numpy.fft.fftshift``
puts it).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from bcdi_gapfill.core.geometry import central_cross_gap
from bcdi_gapfill.core.metrics import pcc_gap
from bcdi_gapfill.core.simulate import simulate_pattern
from bcdi_gapfill.fill.calibration import HELDOUT_FIRST_SEED
from bcdi_gapfill.fill.classical import fill_gap
from bcdi_gapfill.fill.inpainting import inpaint

__all__ = ["refine_band_limited", "autocorrelation_support", "band_limit_residual", "refinement_table",
           "refinement_markdown", "amplitude_error", "SOLVERS", "REFINE_METHODS"]

SOLVERS = ("cg", "gp")
#: Fills compared by :func:`refinement_table`.
REFINE_METHODS = ("model", "model+gp", "biharmonic", "biharmonic+gp", "gp")


def _check_3d_real(name: str, value: Any) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except Exception:
            raise TypeError(f"{name} must be a numpy array, got {type(value).__name__}") from None
    if np.ma.isMaskedArray(value):
        raise TypeError(f"{name} must be a plain ndarray, not a masked array")
    if value.dtype == bool or not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)):
        raise TypeError(f"{name} must hold real numbers (photon counts), got dtype {value.dtype}")
    if value.ndim != 3:
        raise ValueError(f"{name} must be 3D (frames, rows, columns), got {value.ndim}D with shape {value.shape}")
    if value.size == 0:
        raise ValueError(f"{name} is empty (shape {value.shape})")
    return value


def _check_values(name: str, values: np.ndarray) -> None:
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(values)).sum())} NaN or infinite values")
    if values.size and values.min() < 0:
        raise ValueError(f"{name} holds {int((values < 0).sum())} negative values (min {values.min()})")


def _check_mask(name: str, mask: Any, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise TypeError(f"{name} must be a boolean array, got dtype {mask.dtype}")
    if mask.shape != shape:
        raise ValueError(f"{name} shape {mask.shape} does not match the data shape {shape}")
    return mask


def _centrosymmetric(mask: np.ndarray) -> np.ndarray:
    """``mask`` or its point reflection through the centre (index ``n // 2`` is zero shift)."""
    reflected = mask[::-1, ::-1, ::-1]
    # Reversing maps index i to n - 1 - i; zero shift at n // 2 needs i -> 2 (n // 2) - i.
    shift = tuple(2 * (n // 2) - (n - 1) for n in mask.shape)
    return mask | np.roll(reflected, shift, axis=(0, 1, 2))


def autocorrelation_support(intensity: np.ndarray, *, threshold: float = 1e-2, sigma: float = 1.0,
                            dilation: int = 3) -> np.ndarray:
    """Support of the autocorrelation (Patterson map) of a 3D intensity, centred layout.

    Parameters
    ----------
    intensity : ndarray, shape (frames, rows, columns)
        A complete (gap-filled) intensity, photons, >= 0.
    threshold : float
        Fraction of the maximum (at zero shift) above which the smoothed modulus of the
        autocorrelation counts as support, in (0, 1).
    sigma : float
        Gaussian smoothing of the modulus, voxels (>= 0); it keeps the Poisson-noise
        speckle of the autocorrelation from punching holes near the threshold.
    dilation : int
        Voxels added around the thresholded region (>= 0): the autocorrelation of a crystal
        falls to zero at its edge, so a threshold alone cuts the outer shell.

    Returns
    -------
    ndarray of bool, same shape
        True where the autocorrelation may be non-zero; zero shift at index ``n // 2`` of
        each axis. The region is connected, has no holes and is centrosymmetric.
    """
    intensity = _check_3d_real("intensity", intensity)
    _check_values("intensity", intensity)
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0 voxels, got {sigma}")
    if isinstance(dilation, bool) or not isinstance(dilation, (int, np.integer)) or dilation < 0:
        raise ValueError(f"dilation must be an integer >= 0, got {dilation!r}")
    if not intensity.any():
        raise ValueError("intensity is identically zero: its autocorrelation has no support")
    modulus = sfft.fftshift(np.abs(sfft.fftn(intensity.astype(np.float64))))
    if sigma > 0:
        modulus = ndimage.gaussian_filter(modulus, sigma, mode="wrap")
    above = modulus > threshold * modulus.max()
    labels, _ = ndimage.label(above)
    centre = tuple(n // 2 for n in intensity.shape)
    # The zero-shift voxel holds the total intensity, the maximum: it is always above.
    support = ndimage.binary_fill_holes(labels == labels[centre])
    if dilation:
        support = ndimage.binary_dilation(support, ndimage.generate_binary_structure(3, 1),
                                          iterations=int(dilation))
    return _centrosymmetric(support)


def _half_spectrum_mask(support: np.ndarray) -> np.ndarray:
    """The centred support in the layout of ``rfftn`` (zero shift at index 0, last axis halved).

    The forward FFT of a real intensity at frequency k is the autocorrelation at shift -k
    (times the array size); the support is centrosymmetric, so it is the same mask.
    """
    unshifted = sfft.ifftshift(support)
    return unshifted[..., : support.shape[2] // 2 + 1]


def band_limit_residual(intensity: np.ndarray, support: np.ndarray) -> float:
    """Fraction of an intensity's energy outside the band limit: ``||(1 - B) I|| / ||I||``.

    ``B`` cuts the autocorrelation to ``support`` (centred layout). 0 for an intensity whose
    autocorrelation lies inside the support.
    """
    intensity = _check_3d_real("intensity", intensity).astype(np.float64)
    support = _check_mask("support", support, intensity.shape)
    norm = float(np.linalg.norm(intensity))
    if norm == 0:
        return 0.0
    kept = sfft.irfftn(sfft.rfftn(intensity) * _half_spectrum_mask(support), s=intensity.shape)
    return float(np.linalg.norm(intensity - kept)) / norm


def refine_band_limited(counts: np.ndarray, gap_mask: np.ndarray, initial: np.ndarray | None = None, *,
                        support: np.ndarray | None = None, n_iter: int = 100, solver: str = "cg",
                        refine_above: float | None = 0.1, tol: float = 1e-6,
                        support_threshold: float = 1e-2, support_sigma: float = 1.0,
                        support_dilation: int = 3, return_support: bool = False,
                        workers: int | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Refine the gap of a diffraction pattern so that its autocorrelation fits a finite crystal.

    Parameters
    ----------
    counts : ndarray, shape (frames, rows, columns)
        Measured photon counts, finite and >= 0 outside the gap; gap values are ignored (they
        may be NaN).
    gap_mask : ndarray of bool, same shape
        True where nothing was measured.
    initial : ndarray, same shape, optional
        The fill to start from (e.g. ``inpaint(counts, gap_mask)``), photons; only its gap
        voxels are read, which must be finite and >= 0. None starts from zeros (the pure
        band-limit extrapolation) and refines every gap voxel.
    support : ndarray of bool, same shape, optional
        Support of the autocorrelation, centred layout (zero shift at index ``n // 2``).
        Default: :func:`autocorrelation_support` of the starting pattern.
    n_iter : int
        Iterations (>= 1): alternating projections (``gp``) or conjugate-gradient steps
        (``cg``), two FFTs each.
    solver : {"cg", "gp"}
        See the module docstring.
    refine_above : float or None
        Refine only the gap voxels whose starting fill is at least this fraction of the
        pattern's maximum, in [0, 1); the others keep the starting fill. None: every gap
        voxel. Ignored (every gap voxel refined) when ``initial`` is None.
    tol : float
        ``cg`` stops early when the residual norm falls below ``tol`` times its start (>= 0).
    support_threshold, support_sigma, support_dilation
        Parameters of :func:`autocorrelation_support` when ``support`` is None.
    return_support : bool
        Also return the support used.
    workers : int, optional
        Threads of scipy's FFTs (default scipy's, one).

    Returns
    -------
    refined : ndarray float32, same shape
        Measured voxels bit-identical to ``counts.astype(float32)``, gap voxels refined,
        finite and >= 0. The inputs are not modified.
    support : ndarray of bool (only with ``return_support``)
    """
    counts = _check_3d_real("counts", counts)
    gap = _check_mask("gap_mask", gap_mask, counts.shape)
    if gap.all():
        raise ValueError("gap_mask covers every voxel: there is nothing measured to refine from")
    _check_values("counts (measured voxels)", counts[~gap])
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    if isinstance(n_iter, bool) or not isinstance(n_iter, (int, np.integer)) or n_iter < 1:
        raise ValueError(f"n_iter must be an integer >= 1, got {n_iter!r}")
    if refine_above is not None and not 0 <= refine_above < 1:
        raise ValueError(f"refine_above must be in [0, 1) or None, got {refine_above}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")

    start = counts.astype(np.float64)
    start[gap] = 0.0
    if initial is not None:
        initial = _check_3d_real("initial", initial)
        if initial.shape != counts.shape:
            raise ValueError(f"initial shape {initial.shape} does not match the data shape {counts.shape}")
        _check_values("initial (gap voxels)", initial[gap])
        start[gap] = initial[gap]
    if support is None:
        support = autocorrelation_support(start, threshold=support_threshold, sigma=support_sigma,
                                          dilation=support_dilation)
    else:
        support = _check_mask("support", support, counts.shape)
        if not support.any():
            raise ValueError("support is empty: the band limit would remove the whole pattern")

    free = gap
    if initial is not None and refine_above is not None:
        free = gap & (start >= refine_above * start.max())
    out = counts.astype(np.float32, copy=True)
    if free.any():
        if solver == "gp":
            values = _solve_gp(start, free, _half_spectrum_mask(support), int(n_iter), workers)
        else:
            values = _solve_cg(start, free, _half_spectrum_mask(support), int(n_iter), tol, workers)
        start[free] = values
    # Voxels below refine_above keep the starting fill.
    out[gap] = np.clip(start[gap], 0.0, np.finfo(np.float32).max).astype(np.float32)
    return (out, support) if return_support else out


def _band_limit(x: np.ndarray, half_mask: np.ndarray, workers: int | None) -> np.ndarray:
    return sfft.irfftn(sfft.rfftn(x, workers=workers) * half_mask, s=x.shape, workers=workers)


def _solve_gp(start: np.ndarray, free: np.ndarray, half_mask: np.ndarray, n_iter: int,
              workers: int | None) -> np.ndarray:
    """Alternating projections: band limit, then measured (and fixed) voxels and positivity."""
    x = start.copy()
    for _ in range(n_iter):
        x[free] = np.maximum(_band_limit(x, half_mask, workers)[free], 0.0)
    return x[free]


def _solve_cg(start: np.ndarray, free: np.ndarray, half_mask: np.ndarray, n_iter: int, tol: float,
              workers: int | None) -> np.ndarray:
    """Conjugate gradients on ``min_g ||(1 - B)(fixed + E g)||^2``, ``E`` embedding the free voxels.

    ``1 - B`` is an orthogonal projection, so the normal matrix ``E^T (1 - B) E`` is
    symmetric positive semi-definite and CG applies as is.
    """
    work = np.zeros_like(start)

    def outside(values: np.ndarray) -> np.ndarray:
        work[free] = values
        return (work - _band_limit(work, half_mask, workers))[free]

    fixed = start.copy()
    fixed[free] = 0.0
    rhs = -(fixed - _band_limit(fixed, half_mask, workers))[free]
    values = start[free].copy()
    residual = rhs - outside(values)
    direction = residual.copy()
    rr = float(residual @ residual)
    stop = (tol ** 2) * rr
    for _ in range(n_iter):
        if rr <= stop or rr == 0.0:
            break
        a_dir = outside(direction)
        curvature = float(direction @ a_dir)
        if curvature <= 0.0:  # a direction the band limit does not see: nothing left to fit
            break
        alpha = rr / curvature
        values += alpha * direction
        residual -= alpha * a_dir
        rr_new = float(residual @ residual)
        direction = residual + (rr_new / rr) * direction
        rr = rr_new
    return np.maximum(values, 0.0)


def amplitude_error(truth: np.ndarray, filled: np.ndarray, gap_mask: np.ndarray) -> float:
    """Relative L2 error of the amplitudes ``sqrt(I)`` over the gap voxels (what phase retrieval fits)."""
    a = np.sqrt(np.clip(truth[gap_mask].astype(np.float64), 0, None))
    b = np.sqrt(np.clip(filled[gap_mask].astype(np.float64), 0, None))
    norm = float(np.linalg.norm(a))
    return float(np.linalg.norm(a - b)) / norm if norm > 0 else float("nan")


def refinement_table(oversamplings: tuple[float, ...] = (3.0, 4.5, 6.0), widths: tuple[int, ...] = (3, 6, 9, 12),
                     seeds: tuple[int, ...] = (400_100,), *, size: int = 128, model: Any = None,
                     stride: int | None = None, refine_options: dict | None = None,
                     num_threads: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Does the band-limit refinement help? In-gap scores of :data:`REFINE_METHODS` on simulations.

    For each oversampling ratio and seed, ``simulate_pattern(size, seed + k, oversampling=os)``
    (``k`` the index of the ratio; the other parameters drawn from the seed) gets, for each
    width, a cross gap within 8 pixels of the centre (the evaluation's placement). Scores over
    the gap voxels: ``pcc`` (Pearson correlation of log1p counts against the noisy truth, the
    paper's equation 1, as :mod:`bcdi_gapfill.validation.evaluate`), ``amplitude_error`` (relative L2
    error of ``sqrt(I)`` against the noise-free expectation, what phase retrieval fits) and
    ``seconds``; ``ceiling`` is the PCC of the noise-free expectation itself.

    Seeds must be >= 400000 (held out: training and the evaluation use lower ones).
    Returns ``{"settings": ..., "rows": [{"oversampling", "seed", "width", "ceiling",
    "oversampling_measured", "peak_counts", name: {"pcc", "amplitude_error", "seconds"}}]}``.
    """
    import time


    if any(int(s) < HELDOUT_FIRST_SEED for s in seeds):
        raise ValueError(f"seeds must be >= {HELDOUT_FIRST_SEED} (held-out simulations), got {list(seeds)}")
    options = dict(refine_options or {})
    rows = []
    for k, ratio in enumerate(oversamplings):
        for seed in seeds:
            pattern = simulate_pattern(size, int(seed) + k, oversampling=float(ratio))
            for width in widths:
                gap, _ = central_cross_gap(pattern.counts.shape, int(width), int(seed) + k)
                masked = pattern.counts.copy()
                masked[gap] = 0
                fills: dict[str, tuple[np.ndarray, float]] = {}

                def timed(name, fn):
                    t0 = time.perf_counter()
                    fills[name] = (fn(), time.perf_counter() - t0)

                timed("model", lambda: inpaint(masked, gap, model=model, stride=stride, num_threads=num_threads))
                timed("model+gp", lambda: refine_band_limited(masked, gap, fills["model"][0], **options))
                timed("biharmonic", lambda: fill_gap(masked, gap, "biharmonic"))
                timed("biharmonic+gp", lambda: refine_band_limited(masked, gap, fills["biharmonic"][0], **options))
                timed("gp", lambda: refine_band_limited(masked, gap, None, **options))
                row: dict[str, Any] = {
                    "oversampling": float(ratio), "seed": int(seed) + k, "width": int(width),
                    "oversampling_measured": [float(v) for v in pattern.metadata["oversampling"]],
                    "peak_counts": float(pattern.metadata["peak_counts"]),
                    "ceiling": float(pcc_gap(pattern.counts, pattern.expected, gap))}
                for name, (filled, seconds) in fills.items():
                    refined = name.endswith("gp")
                    # A refinement's time includes the fill it starts from.
                    start = fills[name[:-3]][1] if refined and name != "gp" else 0.0
                    row[name] = {"pcc": float(pcc_gap(pattern.counts, filled, gap)),
                                 "amplitude_error": amplitude_error(pattern.expected, filled, gap),
                                 "seconds": seconds + start}
                rows.append(row)
                if progress:
                    print(f"os {ratio} seed {int(seed) + k} width {width}: " + ", ".join(
                        f"{n} {row[n]['pcc']:.4f}/{row[n]['amplitude_error']:.3f}" for n in REFINE_METHODS),
                        flush=True)
    return {"settings": {"oversamplings": list(oversamplings), "widths": list(widths), "seeds": list(seeds),
                         "size": size, "stride": stride, "refine_options": options,
                         "gap": "cross within 8 px of the centre"}, "rows": rows}


def refinement_markdown(table: dict[str, Any]) -> str:
    """Markdown tables of :func:`refinement_table` (means over seeds): PCC, then amplitude error."""
    rows = table["rows"]
    keys = sorted({(r["oversampling"], r["width"]) for r in rows})
    lines = []
    for metric, title in (("pcc", "in-gap PCC of log1p counts vs noisy truth (higher is better)"),
                          ("amplitude_error", "in-gap relative error of sqrt(I) vs noise-free truth (lower is better)")):
        lines += [f"{title}:", "", "| oversampling | width | " + " | ".join(REFINE_METHODS) +
                  (" | Poisson ceiling |" if metric == "pcc" else " |"),
                  "|---|---|" + "---|" * (len(REFINE_METHODS) + (metric == "pcc"))]
        for ratio, width in keys:
            sel = [r for r in rows if r["oversampling"] == ratio and r["width"] == width]
            vals = [f"{np.mean([r[n][metric] for r in sel]):.3f}" for n in REFINE_METHODS]
            best = (max if metric == "pcc" else min)(vals, key=float)
            cells = [f"**{v}**" if v == best else v for v in vals]  # ties at this precision: all bold
            extra = f" | {np.mean([r['ceiling'] for r in sel]):.3f} |" if metric == "pcc" else " |"
            lines.append(f"| {ratio:g} | {width} | " + " | ".join(cells) + extra)
        lines.append("")
    secs = {n: np.mean([r[n]["seconds"] for r in rows]) for n in REFINE_METHODS}
    lines.append("Mean seconds per array: " + ", ".join(f"{n} {v:.1f}" for n, v in secs.items()) + ".")
    return "\n".join(lines) + "\n"
