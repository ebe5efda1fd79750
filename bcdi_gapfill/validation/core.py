"""Real-space validation of gap treatments (paper section 2.6 and supplement S7).

A ground-truth complex object is turned into its diffraction pattern, Poisson noise is
added, a detector gap is cut out, and every gap treatment under test is judged by the
object it leads to:

``oracle`` mode (paper section 2.6.1, Fig. 7 and Supp. Figs. 15-18)
    The object is the inverse Fourier transform of each method's modulus ``sqrt(I)``
    combined with the TRUE reciprocal-space phase. Only the gap treatment differs between
    methods, so the comparison isolates the effect of the in-gap intensity.
``pr`` mode (paper section 2.6.2, Fig. 8 and Supp. Figs. 19-21)
    Full phase retrieval from the intensities with :func:`bcdi_gapfill.phasing.engine.phase_retrieval`,
    the same algorithm, seeds and number of starts for every method, then alignment to the
    truth (:func:`bcdi_gapfill.core.metrics.align_to_reference`) and the comparison of
    :func:`bcdi_gapfill.core.metrics.real_space_report`.

Methods
-------
``inpaint``
    the deep-learning model, :func:`bcdi_gapfill.fill.inpainting.inpaint` (method "model")
``biharmonic``
    classical biharmonic fill of ``log1p(counts)`` (:func:`classical.fill_gap`)
``free_pixels``
    gap voxels left unconstrained during phase retrieval (``free_mask=gap``); it has no
    oracle counterpart (there is no modulus to put in the gap), so it is skipped in oracle
    mode and the reason is recorded in ``settings``
``inpaint+release``
    the model's fill, *released* during phase retrieval (``phase_retrieval(...,
    estimated_mask=gap)``): constrained at the first iteration, free for the last quarter;
    pr mode only (its oracle is ``inpaint``'s)
``zero_fill``
    gap set to 0
``linear_interp``
    1D linear interpolation of ``log1p(counts)`` across the gap (``fill_gap(...,
    "linear")``)
``no_gap``
    the complete noisy pattern: the reference every method should approach
``hybrid``
    the model's fill (with test-time flips) on the confident gap voxels, the
    ``hybrid_quantile`` least confident ones (largest uncertainty) left free during phase
    retrieval; pr mode only, like ``free_pixels``
``model+gp``
    the model's fill refined by the band limit of a finite crystal
    (:func:`bcdi_gapfill.fill.refine.refine_band_limited`, options ``refine_options``)
``biharmonic+gp``
    the biharmonic fill, refined the same way
``gp``
    the pure band-limit extrapolation from a zero-filled gap (a baseline)

The last four are not run by default (:data:`DEFAULT_METHODS`); name them in ``methods``.
When ``hybrid`` runs, the report also holds ``uncertainty``: the reliability of the model's
uncertainty on the main gap (:func:`bcdi_gapfill.fill.calibration.reliability_table`, errors of
``log1p`` against the noisy truth), drawn as a reliability plot in the HTML report.

Metrics per method (see :func:`validate` for the full list): ``strain_rmse``, ``phase_std``
(rad), ``mean_strain``, ``strain_std``, ``spurious_modulus``, ``overlap``, ``pcc_gap`` (paper
eq. 1: Pearson correlation of ``log1p`` intensities over the gap voxels against the noisy
truth), ``gap_intensity_ratio`` and, in pr mode, ``llk``, ``llk_measured`` and
``pcc_gap_reconstructed``.

:func:`write_report` writes ``DIR/report.json`` and one self-contained ``DIR/report.html``
(figures embedded as base64 PNG).

Example
-------
>>> from bcdi_gapfill.validation.core import validate, write_report
>>> rep = validate(seed=0, size=64, gap="cross:9", mode="oracle", widths=[3, 6, 9, 12],
...                methods=("biharmonic", "zero_fill", "linear_interp", "no_gap"))  # doctest: +SKIP
>>> write_report(rep, "validation_out")                                  # doctest: +SKIP
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from bcdi_gapfill.core import geometry as G, metrics as M
from bcdi_gapfill.core.io import json_safe, software_versions
from bcdi_gapfill.core.methods import DEFAULT_TREATMENTS, FILL_OF_TREATMENT, MODEL_TREATMENTS, TREATMENTS
from bcdi_gapfill.core.metrics import truth_support
from bcdi_gapfill.core.simulate import simulate_pattern
from bcdi_gapfill.fill import inpainting as _inp
from bcdi_gapfill.fill.calibration import log_errors, reliability_table
from bcdi_gapfill.fill.classical import fill_gap
from bcdi_gapfill.fill.refine import refine_band_limited
from bcdi_gapfill.validation.report import (FigureData, figure_planes, finite_or_inf, real_space_crop,
                                            verdict, write_report)
from bcdi_gapfill.validation.selfcheck import TREATMENTS as SELFCHECK_TREATMENTS, assess

__all__ = [
    "validate", "write_report", "verdict", "ValidationReport", "FigureData", "METHODS", "DEFAULT_METHODS",
    "MODES", "METRIC_KEYS", "NOISELESS_PEAK",
]

#: Every gap treatment :func:`validate` knows, in the order of the report (the registry's).
METHODS = TREATMENTS
#: The methods run when ``methods`` is not given: all but the uncertainty and band-limit ones.
DEFAULT_METHODS = DEFAULT_TREATMENTS
#: Default share of the gap voxels, the least confident, that ``hybrid`` leaves free.
HYBRID_QUANTILE = 0.2
MODES = ("oracle", "pr", "both")
#: Real-space metrics found for every evaluated method (both modes).
METRIC_KEYS = ("strain_rmse", "phase_std", "mean_strain", "mean_strain_true", "strain_std",
               "spurious_modulus", "overlap", "pcc_gap", "gap_intensity_ratio")
#: Extra metrics of pr mode.
PR_METRIC_KEYS = ("llk", "llk_measured", "pcc_gap_reconstructed")
#: Peak intensity (photons) of the pattern when ``counts=None`` (noiseless).
NOISELESS_PEAK = 1e6

_SCHEMA = "bcdi_gapfill.validate/1"


# ------------------------------------------------------------------------- data classes


class ValidationReport(dict):
    """The report dict of :func:`validate` (JSON-serialisable as is), with figure data.

    ``report.figures`` holds the :class:`FigureData` used by :func:`write_report`, and
    ``report.pattern`` the measurement the methods were given: ``{"counts": float32 array,
    "gap_mask": bool array}``, (frames, rows, columns), photons (e.g. to run
    :func:`bcdi_gapfill.validation.selfcheck.assess` on the same data). Both are attributes, not keys,
    so ``json.dumps(report)`` writes the report alone.
    """

    def __init__(self, *args: Any, figures: FigureData | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.figures = figures
        self.pattern: dict[str, np.ndarray] | None = None


# ----------------------------------------------------------------------------- helpers


def _centred_fft(a: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(a), norm="ortho"))


def _centred_ifft(a: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(a), norm="ortho"))


def _take(a: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(a, index, axis=axis)



def _gap_mask(gap: Any, shape: tuple[int, int, int],
              offset: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, dict]:
    """Gap mask from a spec ``kind:width``, a detector name/layout, or a boolean array.

    ``offset`` (rows, columns) moves a synthetic or detector gap away from the array centre
    (where the Bragg peak is): positive values move it to higher indices.
    """

    if isinstance(gap, np.ndarray):
        if gap.shape != shape:
            raise ValueError(f"gap mask shape {gap.shape} differs from the pattern shape {shape}")
        if gap.dtype != bool:
            raise TypeError(f"a gap mask must be boolean, got dtype {gap.dtype}")
        if any(offset):
            raise ValueError("gap_offset applies to a gap spec or a detector name, not to a mask array")
        return gap.copy(), {"gap": "array", "gap_kind": "array", "gap_width": None}
    if isinstance(gap, str) and ":" in gap:
        kind, width = G.parse_gap_spec(gap)
        col0 = (shape[2] - width) // 2 + offset[1]
        row0 = (shape[1] - width) // 2 + offset[0]
        if kind == "vertical":
            mask = G.synthetic_gap_mask(shape, kind, width, position=col0)
        elif kind == "horizontal":
            mask = G.synthetic_gap_mask(shape, kind, width, position=row0)
        else:
            mask = G.synthetic_gap_mask(shape, kind, width, position=col0, position2=row0)
        return mask, {"gap": f"{kind}:{width}", "gap_kind": kind, "gap_width": width}
    if isinstance(gap, (str, G.DetectorLayout)):
        layout = G.get_detector(gap)
        rows, cols = layout.shape
        if shape[1] > rows or shape[2] > cols:
            raise ValueError(f"a {shape[1]} x {shape[2]} crop does not fit the {layout.name} detector "
                             f"({rows} x {cols} pixels)")
        r0, c0 = (rows - shape[1]) // 2 - offset[0], (cols - shape[2]) // 2 - offset[1]
        if r0 < 0 or c0 < 0 or r0 + shape[1] > rows or c0 + shape[2] > cols:
            raise ValueError(f"gap_offset {offset} moves the {shape[1]} x {shape[2]} crop off the "
                             f"{layout.name} detector")
        roi = (r0, r0 + shape[1], c0, c0 + shape[2])
        mask = G.detector_gap_mask(layout, shape[0], roi=roi)
        return mask, {"gap": layout.name, "gap_kind": "detector", "gap_width": None,
                      "detector_roi": list(roi)}
    raise TypeError(f"gap must be a spec like 'cross:9', a detector name or a boolean array, got {gap!r}")


def _safe_pcc(truth: np.ndarray, pred: np.ndarray, gap: np.ndarray) -> float:
    if not gap.any():
        return float("nan")
    return float(M.pcc_gap(truth, np.clip(pred, 0, None), gap, log=True))


def _gap_ratio(truth: np.ndarray, pred: np.ndarray, gap: np.ndarray) -> float:
    tot = float(truth[gap].astype(np.float64).sum())
    return float(pred[gap].astype(np.float64).sum()) / tot if tot > 0 else float("nan")


def _model_info(model: Any) -> dict:
    """Provenance of the model weights used by the ``inpaint`` method."""
    info: dict[str, Any] = {}
    if model is None:
        try:
            info = dict(_inp.default_model_info())
        except Exception as exc:  # provenance must never break a validation run
            return {"model": "default", "error": f"default_model_info() failed: {exc!r}"}
        info.setdefault("model", "default")
        return info
    if isinstance(model, (str, Path)) and Path(model).is_file():
        digest = hashlib.sha256()
        with open(model, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return {"model": str(model), "weights_sha256": digest.hexdigest()}
    info = {"model": f"{type(model).__module__}.{type(model).__name__}"}
    state_dict = getattr(model, "state_dict", None)
    if callable(state_dict):
        # Hash of the parameters themselves, in key order: identifies in-memory weights.
        digest = hashlib.sha256()
        for key, tensor in sorted(state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        info["state_dict_sha256"] = digest.hexdigest()
    config = getattr(model, "config", None)
    if config is not None:
        info["config"] = repr(config)
    return info


# ------------------------------------------------------------------------- evaluation
class _Context:
    """Everything shared by the methods of one validation."""

    def __init__(self, obj_true, support, expected, noisy, q, voxel, algorithm, n_starts,
                 seed_pr, device, model, inpaint_options, support_threshold,
                 hybrid_quantile=HYBRID_QUANTILE, refine_options=None):
        self.obj_true = obj_true
        self.support = support
        self.expected = expected
        self.noisy = noisy
        self.phase_true_rec = np.angle(_centred_fft(obj_true))
        self.q = q
        self.voxel = voxel
        self.algorithm = algorithm
        self.n_starts = n_starts
        self.seed_pr = seed_pr
        self.device = device
        self.model = model
        self.inpaint_options = dict(inpaint_options or {})
        self.support_threshold = support_threshold
        self.hybrid_quantile = hybrid_quantile
        self.refine_options = dict(refine_options or {})
        # Model fills by (gap, with uncertainty): inpaint, model+gp and hybrid share them.
        self.model_fills: dict[tuple[bytes, bool], tuple[Any, float]] = {}


def _gap_key(gap: np.ndarray) -> bytes:
    return hashlib.sha256(np.packbits(gap).tobytes()).digest()


def _model_fill(noisy: np.ndarray, gap: np.ndarray, ctx: _Context, uncertainty: bool) -> tuple[Any, float]:
    """The model's fill of ``gap`` (and, with ``uncertainty``, its uncertainty map, computed
    with test-time flips), cached per gap, with the seconds it took."""
    key = (_gap_key(gap), uncertainty)
    if key not in ctx.model_fills:

        opts = dict(ctx.inpaint_options)
        if ctx.model is not None:
            opts["model"] = ctx.model
        if ctx.device is not None:
            opts.setdefault("device", ctx.device)
        if uncertainty:
            opts["flips"] = True  # the spread between flipped views is most of the uncertainty
            opts["return_uncertainty"] = True
        masked = noisy.astype(np.float32, copy=True)
        masked[gap] = 0  # the model must not see the truth in the gap
        t0 = time.perf_counter()
        result = _inp.inpaint(masked, gap, method="model", **opts)
        seconds = time.perf_counter() - t0
        out = np.asarray(result[0] if uncertainty else result, dtype=np.float32)
        if out.shape != noisy.shape:
            raise RuntimeError(f"inpaint returned shape {out.shape}, expected {noisy.shape}")
        ctx.model_fills[key] = ((out, np.asarray(result[1], dtype=np.float32)) if uncertainty else out, seconds)
    return ctx.model_fills[key]


def _least_confident(uncertainty: np.ndarray, gap: np.ndarray, quantile: float) -> np.ndarray:
    """The ``quantile`` share of the gap voxels with the largest uncertainty (ties by position)."""
    idx = np.flatnonzero(gap)
    n_free = int(round(quantile * idx.size))
    free = np.zeros(gap.shape, bool)
    if n_free:
        order = np.argsort(-uncertainty.reshape(-1)[idx], kind="stable")
        free.reshape(-1)[idx[order[:n_free]]] = True
    return free


def _fill(name: str, noisy: np.ndarray, gap: np.ndarray, ctx: _Context) -> np.ndarray:
    """The intensity a method hands to the reconstruction (gap filled)."""
    if name == "no_gap":
        return noisy.astype(np.float32, copy=True)
    if name in ("zero_fill", "free_pixels"):
        out = noisy.astype(np.float32, copy=True)
        out[gap] = 0
        return out
    if name in FILL_OF_TREATMENT:

        return fill_gap(noisy, gap, FILL_OF_TREATMENT[name])
    if name in ("inpaint", "inpaint+release"):
        return _model_fill(noisy, gap, ctx, uncertainty=False)[0]
    if name == "hybrid":
        return _model_fill(noisy, gap, ctx, uncertainty=True)[0][0]
    if name in ("model+gp", "biharmonic+gp", "gp"):

        start = {"model+gp": lambda: _model_fill(noisy, gap, ctx, uncertainty=False)[0],
                 "biharmonic+gp": lambda: _fill("biharmonic", noisy, gap, ctx),
                 "gp": lambda: None}[name]()
        masked = noisy.astype(np.float32, copy=True)
        masked[gap] = 0
        return refine_band_limited(masked, gap, start, **ctx.refine_options)
    raise ValueError(f"unknown method {name!r}")


def _analyse(obj: np.ndarray, ctx: _Context) -> tuple[dict, dict]:
    """Metrics of a reconstruction, and its central slices for the figures."""
    aligned = M.align_to_reference(obj, ctx.obj_true, ctx.support, remove_ramp=False)
    rep = M.real_space_report(aligned, ctx.obj_true, ctx.support, ctx.q, ctx.voxel)
    phase = M.unwrap_phase(np.angle(aligned), ctx.support)
    qv = np.asarray(ctx.q, dtype=float)
    eps = M.strain(M.displacement(phase, ctx.q), ctx.voxel, 0 if qv.ndim == 0 else qv, support=ctx.support)
    k = obj.shape[0] // 2
    slices = {"modulus": np.abs(aligned[k]).astype(np.float32),
              "phase": phase[k].astype(np.float32), "strain": eps[k].astype(np.float32)}
    return rep, slices


def _duration_text(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _evaluate_gap(gap: np.ndarray, methods: Sequence[str], modes: Sequence[str], ctx: _Context,
                  skipped: dict, progress_bar: Any, keep: bool) -> tuple[dict, dict]:
    """Run every method on one gap; returns ``{mode: {name: metrics}}`` and figure slices."""
    results: dict[str, dict[str, dict]] = {m: {} for m in modes}
    figs: dict[str, Any] = {"fills": {m: {} for m in modes}, "real": {m: {} for m in modes}}
    planes = figure_planes(gap)
    for name in methods:
        if name in skipped:
            continue
        cached = {k for k in ctx.model_fills}
        t0 = time.perf_counter()
        filled = _fill(name, ctx.noisy, gap, ctx)
        fill_time = time.perf_counter() - t0
        if name in MODEL_TREATMENTS:
            # The model's fill is shared (cached): count its time in every method using it.
            key = (_gap_key(gap), name == "hybrid")
            if key in cached:
                fill_time += ctx.model_fills[key][1]
        freed = None
        if name == "hybrid":
            unc = _model_fill(ctx.noisy, gap, ctx, uncertainty=True)[0][1]
            freed = _least_confident(unc, gap, ctx.hybrid_quantile)
            figs.setdefault("uncertainty", unc)
        has_fill = name != "free_pixels"
        common = {"pcc_gap": _safe_pcc(ctx.noisy, filled, gap) if has_fill else None,
                  "gap_intensity_ratio": _gap_ratio(ctx.noisy, filled, gap) if has_fill else None,
                  "fill_time_s": fill_time}
        if freed is not None:
            common["freed_voxels"] = int(freed.sum())
        for mode in modes:
            if progress_bar is not None:
                progress_bar.set_postfix_str(f"{mode}: {name}")
            if mode == "oracle":
                if name in ("free_pixels", "hybrid", "inpaint+release"):
                    skipped.setdefault("oracle", {})[name] = (
                        "no oracle counterpart: its fill is inpaint's, released only inside phase retrieval"
                        if name == "inpaint+release" else
                        "no oracle counterpart: leaving gap voxels free only has a meaning inside an "
                        "iterative phase retrieval; with the true phase it would be zero_fill"
                        + ("" if name == "free_pixels" else " on the freed voxels"))
                    if progress_bar is not None:
                        progress_bar.update(1)
                    continue
                obj = _centred_ifft(np.sqrt(np.clip(filled, 0, None)) * np.exp(1j * ctx.phase_true_rec))
                rep, sl = _analyse(obj, ctx)
                entry = {**rep, **common}
                intensity_gap = filled
            else:
                from bcdi_gapfill.phasing.engine import CDIState, phase_retrieval

                t1 = time.perf_counter()
                free_mask = gap if name == "free_pixels" else freed if name == "hybrid" else None
                res = phase_retrieval(filled, free_mask=free_mask if free_mask is None or free_mask.any() else None,
                                      estimated_mask=gap if name == "inpaint+release" else None,
                                      algorithm=ctx.algorithm, n_starts=ctx.n_starts, seed=ctx.seed_pr,
                                      device=ctx.device)
                pr_time = time.perf_counter() - t1
                rep, sl = _analyse(res.obj, ctx)
                # LLK against the same measured (non-gap) noisy voxels for every method.
                state = CDIState(ctx.noisy, free_mask=gap if gap.any() else None, device="cpu")
                state.set_obj(res.obj)
                state.set_support(res.support)
                i_rec = M.diffracted_intensity(res.obj.astype(np.complex128))
                entry = {**rep, **common, "llk": res.llk, "llk_measured": state.llk(),
                         "pcc_gap_reconstructed": _safe_pcc(ctx.noisy, i_rec, gap),
                         "phasing_time_s": pr_time, "best_start": res.best,
                         "llk_starts": [float(v) for v in res.llk_starts]}
                if name in ("free_pixels", "inpaint+release"):
                    # What the reconstruction ends with in the gap (the release frees it).
                    entry["pcc_gap"] = entry["pcc_gap_reconstructed"]
                    entry["gap_intensity_ratio"] = _gap_ratio(ctx.noisy, i_rec, gap)
                    intensity_gap = i_rec
                elif name == "hybrid":
                    # In the gap: the model on the confident voxels, the reconstruction on the freed.
                    intensity_gap = np.where(freed, i_rec, filled).astype(np.float32)
                    entry["pcc_gap"] = _safe_pcc(ctx.noisy, intensity_gap, gap)
                    entry["gap_intensity_ratio"] = _gap_ratio(ctx.noisy, intensity_gap, gap)
                else:
                    intensity_gap = filled
            results[mode][name] = entry
            if keep:
                figs["real"][mode][name] = sl
                figs["fills"][mode][name] = [_take(intensity_gap, ax, i).astype(np.float32)
                                             for _, ax, i, _, _ in planes]
            if progress_bar is not None:
                progress_bar.update(1)
    return results, figs


# ----------------------------------------------------------------------------- public
def validate(obj: np.ndarray | None = None, *, seed: int | None = None, size: int | Sequence[int] = 64,
             gap: Any = "cross:9", gap_offset: int | Sequence[int] = 0, mode: str = "pr",
             counts: float | None = 1e6,
             methods: Sequence[str] | None = None, algorithm: Any = None, n_starts: int = 4,
             seed_pr: int = 0, widths: Sequence[int] | None = None, progress: bool = True,
             q_vector: float | Sequence[float] | None = None, voxel_size: float | Sequence[float] = 5e-9,
             support_threshold: float = 0.3, model: Any = None, device: Any = None,
             inpaint_options: Mapping[str, Any] | None = None,
             simulate_options: Mapping[str, Any] | None = None,
             hybrid_quantile: float = HYBRID_QUANTILE,
             refine_options: Mapping[str, Any] | None = None, selfcheck: bool = False) -> ValidationReport:
    """Measure what each gap treatment does to the reconstructed object.

    Parameters
    ----------
    obj : ndarray, complex, shape (frames, rows, columns), optional
        Ground-truth object, centred. Default: a zero-phase particle simulated from ``seed``
        with ``simulate_pattern(size, seed, phase="zero", ...)`` (no peak offset, no
        coherence blur, no background, oversampling 3 unless ``simulate_options`` says
        otherwise), as in the paper's section 2.6.1.
    seed : int, optional
        Seed of the simulated particle and of the Poisson noise (``default_rng((seed, 1))``).
        None draws one; the seed used is recorded in ``settings``.
    size : int or 3 ints
        Shape of the simulated pattern (ignored when ``obj`` is given).
    gap : str or ndarray of bool
        ``"cross:W"``, ``"vertical:W"``, ``"horizontal:W"`` (centred bands of W pixels), a
        detector name such as ``"Maxipix"`` (the centred crop of its gap layout, every
        frame), or a boolean mask of the pattern's shape.
    gap_offset : int or (rows, columns)
        Moves a spec or detector gap from the array centre, where the Bragg peak is, by this
        many pixels (one int: both bands). Default 0: the bands cross the peak's centre,
        the worst case.
    mode : {"pr", "oracle", "both"}
        ``pr`` (default): full phase retrieval of what each method hands on, free pixels and
        zero fill among them, as a user's pipeline would run it. ``oracle``: inverse FT of
        each method's ``sqrt(I)`` with the true reciprocal phase (what the fill alone is worth,
        seconds instead of minutes). ``both``: both; ``report["methods"]`` then holds the pr
        results and ``report["results"]`` both.
    counts : float or None
        Peak photon count of the pattern, Poisson-sampled. None: noiseless, with a peak of
        :data:`NOISELESS_PEAK` photons.
    methods : sequence of str, optional
        Subset of :data:`METHODS`. Default: :data:`DEFAULT_METHODS` (all but ``hybrid`` and
        the band-limit refinements), except that ``inpaint`` is skipped with a warning (and
        the reason recorded) when :mod:`bcdi_gapfill.fill.inpainting` cannot be imported or the
        default weights are missing; named explicitly, its failure raises.
    algorithm : str or Operator, optional
        Phase-retrieval operators (default :data:`bcdi_gapfill.phasing.engine.DEFAULT_ALGORITHM`).
    n_starts : int
        Random starts of phase retrieval (the best LLK is kept), the same for every method.
    seed_pr : int
        Start ``k`` of phase retrieval uses ``InitRandom(seed_pr + k)``, for every method.
    widths : sequence of int, optional
        Gap-width sweep (paper Supp. Figs. 16-18): each method is also evaluated with gaps
        ``"<kind>:w"`` of the kind of ``gap``, giving ``report["sweep"]``.
    progress : bool
        Show a progress bar (tqdm, on stderr) and, before phase retrieval starts, its expected
        duration (from a few timed iterations on an array of this shape).
    q_vector : float or 3 floats, optional
        ``G`` (1/m) in the array frame (its direction is the strain direction), or ``|G|``
        along axis 0. Default: Pt 111 along axis 1, the detector rows: in the usual vertical
        diffraction geometry the radial direction of the Bragg peak runs mostly along the
        detector rows (the rocking-curve frames are transverse to G), so a strain along
        axis 1 is what a row gap perturbs. (A gap constant along the frames barely touches
        the strain along axis 0.)
    voxel_size : float or 3 floats
        Real-space voxel size in metres (strain scale and figure axes), default 5 nm.
    support_threshold : float
        The truth's support is its 1-voxel-smoothed modulus above this fraction of the max.
    model : optional
        Passed to ``inpaint(..., model=model)``; None uses the packaged default model.
    device : optional
        Torch device for inpainting and phase retrieval.
    inpaint_options, simulate_options : dict, optional
        Extra keyword arguments of ``inpaint`` and ``simulate_pattern``.
    hybrid_quantile : float
        Share of the gap voxels, those of largest uncertainty, that ``hybrid`` leaves free
        during phase retrieval, in [0, 1] (0: the model's fill everywhere, 1: free pixels).
    refine_options : dict, optional
        Keyword arguments of :func:`bcdi_gapfill.fill.refine.refine_band_limited` for the ``+gp``
        and ``gp`` methods (e.g. ``{"n_iter": 200, "refine_above": 0.01}``).
    selfcheck : bool
        Also run :func:`bcdi_gapfill.validation.selfcheck.assess` on the same measured pattern (the
        treatments of ``methods`` it knows, at least two; ``n_starts`` starts, the same
        algorithm) and put its scores, which use no truth, in ``report["selfcheck"]`` beside
        the truth-based ones. Costs about twice the phasing of those treatments.

    Returns
    -------
    ValidationReport
        A dict (JSON-serialisable, NaN written as None)::

            {"schema": ..., "mode": ..., "primary_mode": "pr" | "oracle",
             "methods": {name: {metric: value}},          # primary mode, main gap
             "results": {"oracle": {...}, "pr": {...}},    # the modes that ran
             "sweep": {"widths": [...], "kind": ..., "mode": ..., "methods":
                       {name: {metric: [one per width]}}, "by_mode": {mode: {...}}},  # with widths
             "settings": {...}}

        Metrics: ``strain_rmse`` (RMS strain error inside the true support, dimensionless),
        ``phase_std`` (rad), ``mean_strain``, ``mean_strain_true``, ``strain_std``,
        ``spurious_modulus`` (fraction of ``|obj|**2`` outside the dilated true support),
        ``overlap``, ``pcc_gap`` (log PCC over the gap voxels of the intensity the method
        puts in the gap, against the noisy truth; None where it is undefined, e.g. the
        constant zero fill; for free_pixels and inpaint+release in pr mode, the
        reconstruction's intensity),
        ``gap_intensity_ratio`` (photons in the gap over the truth's), ``fill_time_s``; in
        pr mode also ``llk`` (against the data the method gave to phase retrieval),
        ``llk_measured`` (against the measured, non-gap voxels: comparable between methods),
        ``pcc_gap_reconstructed``, ``phasing_time_s``, ``best_start``, ``llk_starts``.
        ``report.figures`` holds the slices for :func:`write_report`.
    """
    from bcdi_gapfill.phasing import engine as P

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    modes = ("oracle", "pr") if mode == "both" else (mode,)
    primary = "pr" if "pr" in modes else "oracle"
    explicit_methods = methods is not None
    methods = tuple(DEFAULT_METHODS if methods is None else methods)
    if isinstance(methods, str) or not methods:
        raise ValueError("methods must be a non-empty sequence of method names")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {METHODS}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods has duplicates: {methods}")
    methods = tuple(m for m in METHODS if m in methods)  # canonical order
    if selfcheck and len([m for m in methods if m in SELFCHECK_TREATMENTS]) < 2:
        raise ValueError(f"selfcheck needs at least two of {SELFCHECK_TREATMENTS} among the methods, got {methods}")
    if counts is not None and not (math.isfinite(counts) and counts > 0):
        raise ValueError(f"counts must be a positive peak photon count or None, got {counts!r}")
    if isinstance(n_starts, bool) or not isinstance(n_starts, (int, np.integer)) or n_starts < 1:
        raise ValueError(f"n_starts must be an integer >= 1, got {n_starts!r}")
    if isinstance(hybrid_quantile, bool) or not isinstance(hybrid_quantile, (int, float, np.integer, np.floating)) \
            or not 0 <= hybrid_quantile <= 1:
        raise ValueError(f"hybrid_quantile must be a number in [0, 1], got {hybrid_quantile!r}")
    if refine_options is not None and not isinstance(refine_options, Mapping):
        raise TypeError(f"refine_options must be a dict of refine_band_limited arguments, got "
                        f"{type(refine_options).__name__}")
    algorithm = P.DEFAULT_ALGORITHM if algorithm is None else algorithm
    if "pr" in modes:
        P.parse_algorithm(algorithm) if isinstance(algorithm, str) else None  # fail early
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])

    # ground truth
    sim_meta: dict[str, Any] = {}
    if obj is None:

        opts = {"peak_offset": (0, 0, 0), "coherence_sigma": 0.0, "background": 0.0, "oversampling": 3.0}
        opts.update(simulate_options or {})
        sim = simulate_pattern(size, seed, phase="zero", **opts)
        obj_true = sim.obj.astype(np.complex128)
        sim_meta = dict(sim.metadata)
        source = "simulate_pattern(phase='zero')"
    else:
        obj_true = np.asarray(obj)
        if obj_true.ndim != 3 or not np.issubdtype(obj_true.dtype, np.number):
            raise ValueError(f"obj must be a 3D numeric (complex) array, got shape {obj_true.shape} "
                             f"and dtype {obj_true.dtype}")
        obj_true = obj_true.astype(np.complex128)
        if not np.all(np.isfinite(obj_true)) or not np.any(obj_true):
            raise ValueError("obj must be finite and not identically zero")
        source = "user object"
    shape = obj_true.shape
    amp = _centred_fft(obj_true)
    peak = float(NOISELESS_PEAK if counts is None else counts)
    scale = math.sqrt(peak / float(np.max(np.abs(amp) ** 2)))
    obj_true = obj_true * scale  # |FFT(obj_true)|**2 is now the expected intensity in photons
    expected = (np.abs(amp * scale) ** 2).astype(np.float64)
    noise_seed = [int(seed), 1]
    if counts is None:
        noisy = expected.astype(np.float32)
    else:
        noisy = np.random.default_rng(noise_seed).poisson(expected).astype(np.float32)
    support = truth_support(obj_true, support_threshold)
    q = [0.0, M.bragg_q((1, 1, 1)), 0.0] if q_vector is None else q_vector
    off = np.broadcast_to(np.asarray(gap_offset), (2,))
    if not np.issubdtype(off.dtype, np.integer):
        raise TypeError(f"gap_offset must be an int or two ints, got {gap_offset!r}")
    off = (int(off[0]), int(off[1]))

    main_gap, gap_info = _gap_mask(gap, shape, off)
    sweep_specs: list[tuple[int, np.ndarray]] = []
    if widths is not None:
        if gap_info["gap_kind"] not in ("cross", "vertical", "horizontal"):
            raise ValueError("a width sweep needs a synthetic gap spec such as 'cross:9' for its kind, "
                             f"got gap={gap!r}")
        ws = [int(w) for w in widths]
        if not ws or any(w < 1 for w in ws) or len(set(ws)) != len(ws):
            raise ValueError(f"widths must be distinct positive integers, got {widths!r}")
        sweep_specs = [(w, _gap_mask(f"{gap_info['gap_kind']}:{w}", shape, off)[0]) for w in ws]

    skipped: dict[str, Any] = {}
    model_info = None
    model_methods = [m for m in methods if m in MODEL_TREATMENTS]
    if model_methods:
        try:
            if model is None:
                _inp.default_model_info()  # raises when the default weights are missing
        except (ImportError, FileNotFoundError) as exc:
            if explicit_methods:
                raise
            msg = (f"the inpaint method was skipped: {type(exc).__name__}: {exc} (name it in methods= "
                   "to make this an error)")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            for name in model_methods:
                skipped[name] = msg
        else:
            model_info = _model_info(model)

    ctx = _Context(obj_true, support, expected, noisy, q, voxel_size, algorithm, int(n_starts),
                   int(seed_pr), device, model, inpaint_options, support_threshold,
                   hybrid_quantile=float(hybrid_quantile), refine_options=refine_options)
    n_methods = len([m for m in methods if m not in skipped])
    extra = [w for w, _ in sweep_specs if not (gap_info["gap_width"] == w)]
    total = n_methods * len(modes) * (1 + len(extra))
    if progress and "pr" in modes:
        n_phased = n_methods * (1 + len(extra))
        seconds = P.estimate_phasing_seconds(shape, algorithm, n_starts=int(n_starts), n_runs=n_phased,
                                             device=device)
        print(f"validate: {n_phased} phase retrievals of {int(n_starts)} starts on {shape[0]}x{shape[1]}x"
              f"{shape[2]}, expected about {_duration_text(seconds)} on this machine", file=sys.stderr)
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="validate", file=sys.stderr, leave=False)
        except ImportError:  # pragma: no cover
            bar = None
    t_start = time.perf_counter()
    try:
        main_results, figs = _evaluate_gap(main_gap, methods, modes, ctx, skipped, bar, keep=True)
        sweep_results: dict[int, dict] = {}
        for w, g in sweep_specs:
            if gap_info["gap_width"] == w and np.array_equal(g, main_gap):
                sweep_results[w] = main_results
            else:
                sweep_results[w], _ = _evaluate_gap(g, methods, modes, ctx, skipped, bar, keep=False)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t_start

    report = ValidationReport()
    report["schema"] = _SCHEMA
    report["mode"] = mode
    report["primary_mode"] = primary
    report["methods"] = json_safe(main_results[primary])
    report["verdict"] = verdict(report)
    report["results"] = json_safe(main_results)
    checked = [m for m in methods if m in SELFCHECK_TREATMENTS and m not in skipped]
    if selfcheck and len(checked) >= 2:
        check = assess(noisy, main_gap, treatments=checked, n_starts=int(n_starts), algorithm=algorithm,
                       seed=int(seed_pr), model=model, device=device, inpaint_options=inpaint_options,
                       progress=progress)
        truth_best = min(checked, key=lambda m: finite_or_inf(main_results[primary][m].get("strain_rmse")))
        check["truth_best"] = truth_best
        check["agrees_with_truth"] = check["recommended"] == truth_best
        report["selfcheck"] = json_safe(check)
    elif selfcheck:
        report["selfcheck_skipped"] = f"fewer than two self-check treatments left after skipping {sorted(skipped)}"
    if sweep_specs:
        by_mode = {}
        for m in modes:
            names = [n for n in methods if any(n in sweep_results[w][m] for w, _ in sweep_specs)]
            by_mode[m] = {n: {k: [sweep_results[w][m][n].get(k) for w, _ in sweep_specs]
                              for k in (METRIC_KEYS + (PR_METRIC_KEYS if m == "pr" else ()))}
                          for n in names}
        report["sweep"] = json_safe({
            "widths": [w for w, _ in sweep_specs], "kind": gap_info["gap_kind"], "mode": primary,
            "methods": by_mode[primary], "by_mode": by_mode})
    settings = {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": software_versions(),
        "source": source, "shape": list(shape), "seed": seed, "noise_seed": noise_seed,
        "counts": counts, "peak_photons": peak, "noiseless": counts is None,
        "total_photons": float(noisy.astype(np.float64).sum()),
        **gap_info, "gap_offset_px": list(off), "gap_voxels": int(main_gap.sum()),
        "gap_fraction": float(main_gap.mean()),
        "modes": list(modes), "methods": [m for m in methods if m not in skipped],
        "methods_requested": list(methods),
        "skipped_methods": skipped,
        "oracle": ("inverse FFT of sqrt(I_method) with the true reciprocal phase"
                   if "oracle" in modes else None),
        # phase-retrieval settings only mean something when pr mode ran
        "algorithm": ((algorithm if isinstance(algorithm, str) else repr(algorithm))
                      if "pr" in modes else None),
        "n_starts": int(n_starts) if "pr" in modes else None,
        "seed_pr": int(seed_pr) if "pr" in modes else None,
        "q_vector_inv_m": json_safe(np.asarray(q, float).tolist()),
        "strain_direction": "array axis 0" if np.ndim(q) == 0 else
        [float(v) for v in np.asarray(q, float) / np.linalg.norm(np.asarray(q, float))],
        "voxel_size_m": json_safe(np.asarray(voxel_size, float).tolist()),
        "support_threshold": support_threshold, "support_voxels": int(support.sum()),
        "device": None if device is None else str(device),
        "model": model_info if any(m not in skipped for m in model_methods) else None,
        "hybrid_quantile": float(hybrid_quantile) if "hybrid" in methods else None,
        "refine_options": (dict(refine_options or {}) if any(m.endswith("gp") for m in methods) else None),
        "simulation": sim_meta or None,
        "elapsed_s": elapsed,
        "notes": [
            "strain_rmse, mean_strain and strain_std are dimensionless (strain along G); phase_std in rad",
            "pcc_gap is null where the Pearson correlation is undefined (a constant fill such as zero_fill)",
            "biharmonic and linear_interp fill log1p(counts) (classical.fill_gap, log=True)",
        ],
    }
    if "uncertainty" in figs:

        unc = figs["uncertainty"]
        fill = ctx.model_fills[(_gap_key(main_gap), True)][0][0]
        report["uncertainty"] = json_safe({
            "reliability": reliability_table(log_errors(noisy, fill, main_gap), unc[main_gap], 10),
            "truth": "noisy pattern", "flips": True, "hybrid_quantile": float(hybrid_quantile),
            "freed_voxels": int(round(float(hybrid_quantile) * int(main_gap.sum()))),
            "mean_uncertainty": float(unc[main_gap].mean()), "max_uncertainty": float(unc[main_gap].max())})
    report["settings"] = json_safe(settings)

    # figure data (central slices only)
    planes = figure_planes(main_gap)
    fd = FigureData()
    masked_slices = []
    for _, ax, i, _, _ in planes:
        s = _take(noisy, ax, i).astype(np.float32)
        s[_take(main_gap, ax, i)] = np.nan
        masked_slices.append(s)
    fd.recip = {"planes": planes, "truth": [_take(noisy, ax, i) for _, ax, i, _, _ in planes],
                "masked": masked_slices, "gap": [_take(main_gap, ax, i) for _, ax, i, _, _ in planes],
                "methods": figs["fills"]}
    rows, cols = real_space_crop(support)
    k = shape[0] // 2
    vox = np.broadcast_to(np.asarray(voxel_size, float), (3,)) * 1e9
    crop_real = {}
    for m in modes:
        crop_real[m] = {n: {key: v[rows, cols] for key, v in sl.items()} for n, sl in figs["real"][m].items()}
    phase_t = M.unwrap_phase(np.angle(obj_true), support)
    eps_t = M.strain(M.displacement(phase_t, q), voxel_size, 0 if np.ndim(q) == 0 else q, support=support)
    fd.real = {"modes": crop_real,
               "truth": {"modulus": np.abs(obj_true[k])[rows, cols].astype(np.float32),
                         "phase": phase_t[k][rows, cols].astype(np.float32),
                         "strain": eps_t[k][rows, cols].astype(np.float32)},
               "support": support[k][rows, cols],
               "extent": [(cols.start - shape[2] // 2 - 0.5) * vox[2],
                          (cols.stop - shape[2] // 2 - 0.5) * vox[2],
                          (rows.stop - shape[1] // 2 - 0.5) * vox[1],
                          (rows.start - shape[1] // 2 - 0.5) * vox[1]],
               "axes": ("columns (nm)", "rows (nm)"), "plane": f"central frame (index {k})"}
    if "uncertainty" in figs:
        unc = figs["uncertainty"]
        fill = ctx.model_fills[(_gap_key(main_gap), True)][0][0]
        abs_err = np.abs(np.log1p(fill.astype(np.float64)) - np.log1p(noisy.astype(np.float64)))
        freed = _least_confident(unc, main_gap, float(hybrid_quantile))

        def gap_only(a: np.ndarray, ax: int, i: int) -> np.ndarray:
            return np.where(_take(main_gap, ax, i), _take(a, ax, i), np.nan).astype(np.float32)

        fd.uncertainty = {"planes": planes,
                          "uncertainty": [gap_only(unc, ax, i) for _, ax, i, _, _ in planes],
                          "abs_error": [gap_only(abs_err, ax, i) for _, ax, i, _, _ in planes],
                          "freed": [_take(freed, ax, i) for _, ax, i, _, _ in planes]}
    report.figures = fd
    report.pattern = {"counts": noisy, "gap_mask": main_gap}
    return report
